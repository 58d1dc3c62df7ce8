//! A leased, at-least-once job queue behind one trait, [`TaskQueue`].
//!
//! Bytes go in, bytes come out: the queue knows nothing of agents. Every backend
//! (in-memory here; Redis, RabbitMQ and NATS JetStream behind features) gives the
//! same guarantees, proven by one conformance suite ([`testkit`], feature `test-kit`).
//!
//! ```
//! use std::time::Duration;
//! use agentic_queue::{MemoryQueue, NewJob, TaskQueue, Retry};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), agentic_queue::QueueError> {
//! let queue = MemoryQueue::new();
//! queue.enqueue("emails", NewJob::new(b"hello".to_vec()).priority(7)).await?;
//!
//! // Take up to 10 jobs, leased for 30 s, waiting at most 1 s for work to arrive.
//! let jobs = queue.dequeue("emails", 10, Duration::from_secs(30), Duration::from_secs(1)).await?;
//! for job in jobs {
//!     if job.payload.as_ref() == b"hello" {
//!         queue.ack(&job.lease).await?;
//!     } else {
//!         queue.nack(&job.lease, Retry::After(Duration::from_secs(5)), "not a greeting").await?;
//!     }
//! }
//! assert_eq!(queue.stats("emails").await?.ready, 0);
//! # Ok(())
//! # }
//! ```
//!
//! # Guarantees (every backend)
//!
//! | guarantee | meaning |
//! |---|---|
//! | at-least-once | a job is delivered until it is acked or dead-lettered; nothing is dropped silently |
//! | leases | a delivery is leased; [`TaskQueue::extend_lease`] is the heartbeat; an expired lease makes the job deliverable again with `attempt + 1` |
//! | fencing | [`TaskQueue::ack`], [`TaskQueue::nack`] and [`TaskQueue::extend_lease`] carry the lease's token; once a lease expired and the job was redelivered, the old token is refused with [`QueueError::LeaseLost`] |
//! | attempts | after `max_attempts` deliveries the job is dead-lettered with its last error |
//! | dead letters | [`TaskQueue::dead_letters`] lists them with the reason; [`TaskQueue::requeue_dead`] puts them back |
//! | priorities | `0..=9`, higher first, FIFO inside one level (see [`QueueCapabilities::priority_levels`]) |
//! | delays | a job with a delay is not delivered before it |
//! | idempotency | the same idempotency key inside the dedupe window yields the same job id |
//!
//! # Backends
//!
//! | backend | feature | priorities | delays | dedupe | max lease | persistence |
//! |---|---|---|---|---|---|---|
//! | [`MemoryQueue`] | always built | 10 levels | yes | yes | unbounded | none |
//!
//! # Features
//!
//! | feature | what it adds |
//! |---|---|
//! | `test-kit` | [`testkit`]: the conformance suite, generic over any [`TaskQueue`], and the `queue_conformance_suite!` macro that runs it |

#![cfg_attr(docsrs, feature(doc_cfg))]

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

mod error;
mod memory;

/// Stand-in for "never" when a duration is too long to add to an instant (a lease or
/// wait of `Duration::MAX`). Thirty years, as tokio uses for its own far future.
const FAR_FUTURE: std::time::Duration = std::time::Duration::from_secs(86_400 * 365 * 30);

/// `now + d`, or thirty years from now when that does not fit in an `Instant`: a lease or
/// a wait of `Duration::MAX` is the caller's to ask for, and must not panic a backend.
pub(crate) fn later(now: tokio::time::Instant, d: std::time::Duration) -> tokio::time::Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(FAR_FUTURE))
        .unwrap_or(now)
}

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;

#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub mod nats;

#[cfg(feature = "amqp")]
#[cfg_attr(docsrs, doc(cfg(feature = "amqp")))]
pub mod amqp;

#[cfg(feature = "test-kit")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-kit")))]
pub mod testkit;

pub use error::QueueError;
pub use memory::{MemoryQueue, MemoryQueueConfig};

#[cfg(feature = "amqp")]
pub use crate::amqp::{AmqpQueue, AmqpQueueConfig};
#[cfg(feature = "nats")]
pub use crate::nats::{NatsQueue, NatsQueueConfig};
#[cfg(feature = "redis")]
pub use crate::redis::{RedisQueue, RedisQueueConfig};

/// The highest priority a job can carry. Priorities run `0..=MAX_PRIORITY`, higher first.
pub const MAX_PRIORITY: u8 = 9;

/// The default number of deliveries before a job is dead-lettered.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// The identifier a queue gives a job. Stable across redeliveries.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub String);

impl JobId {
    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for JobId {
    fn from(s: String) -> Self {
        JobId(s)
    }
}

impl From<&str> for JobId {
    fn from(s: &str) -> Self {
        JobId(s.to_owned())
    }
}

/// A job to enqueue. Build one with [`NewJob::new`] and the builder methods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    /// The opaque payload.
    pub payload: Bytes,
    /// `0..=9`, higher is delivered first. Out of range is refused with [`QueueError::InvalidJob`].
    pub priority: u8,
    /// Not delivered before this much time has passed since the enqueue.
    ///
    /// Relative rather than absolute so that no two clocks have to agree: each backend
    /// measures it on its own clock (the in-memory queue on tokio's, Redis on the server's).
    pub delay: Duration,
    /// Deliveries before the job is dead-lettered (at least 1).
    pub max_attempts: u32,
    /// Jobs with the same key inside the dedupe window are enqueued once.
    pub idempotency_key: Option<String>,
    /// Free-form metadata, delivered with the job.
    pub headers: BTreeMap<String, String>,
}

impl NewJob {
    /// A job with default priority (0), no delay, [`DEFAULT_MAX_ATTEMPTS`] and no key.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        NewJob {
            payload: payload.into(),
            priority: 0,
            delay: Duration::ZERO,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            idempotency_key: None,
            headers: BTreeMap::new(),
        }
    }

    /// Sets the priority (`0..=9`, higher first).
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = priority;
        self
    }

    /// Delays the first delivery by `delay`.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Not delivered before `at` (converted to a delay from now; a time in the past means now).
    pub fn not_before(mut self, at: SystemTime) -> Self {
        self.delay = at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        self
    }

    /// Sets how many deliveries the job gets before it is dead-lettered.
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// Sets the idempotency key.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Checks the job against the limits every backend enforces.
    pub fn validate(&self, max_payload_bytes: usize) -> Result<(), QueueError> {
        if self.priority > MAX_PRIORITY {
            return Err(QueueError::InvalidJob(format!(
                "priority {} is out of range 0..={MAX_PRIORITY}",
                self.priority
            )));
        }
        if self.max_attempts == 0 {
            return Err(QueueError::InvalidJob(
                "max_attempts must be at least 1".to_owned(),
            ));
        }
        if self.payload.len() > max_payload_bytes {
            return Err(QueueError::PayloadTooLarge {
                size: self.payload.len(),
                max: max_payload_bytes,
            });
        }
        Ok(())
    }
}

/// What [`TaskQueue::enqueue`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    /// The job's id (the existing job's id when `duplicate`).
    pub id: JobId,
    /// True when the idempotency key matched a job enqueued earlier inside the window:
    /// nothing new was enqueued.
    pub duplicate: bool,
}

/// The right to finish one delivery of a job: pass it to ack, nack or extend.
///
/// The `token` is a fencing number that grows with every delivery of the job, so a
/// lease from an earlier delivery is refused once the job was delivered again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The queue the job came from.
    pub queue: String,
    /// The job.
    pub job_id: JobId,
    /// The fencing token of this delivery.
    pub token: u64,
    /// When the lease runs out, on this process's clock (conservative: measured from
    /// before the request that granted it).
    pub expires_at: tokio::time::Instant,
}

impl Lease {
    /// Time left on the lease (zero once expired).
    pub fn remaining(&self) -> Duration {
        self.expires_at
            .saturating_duration_since(tokio::time::Instant::now())
    }
}

/// One delivery of a job.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Ack, nack or extend with this.
    pub lease: Lease,
    /// The payload as enqueued.
    pub payload: Bytes,
    /// The headers as enqueued.
    pub headers: BTreeMap<String, String>,
    /// The job's priority.
    pub priority: u8,
    /// 1 on the first delivery, then one more for each redelivery.
    pub attempt: u32,
    /// Deliveries the job gets before it is dead-lettered.
    pub max_attempts: u32,
    /// The error recorded by the last nack or lease expiry, if any.
    pub last_error: Option<String>,
}

impl Delivery {
    /// The job's id.
    pub fn job_id(&self) -> &JobId {
        &self.lease.job_id
    }

    /// True when this is the job's last permitted delivery.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }
}

/// How to give a job back with [`TaskQueue::nack`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Deliver it again after this delay, unless its attempts are spent (then it is
    /// dead-lettered with the reason).
    After(Duration),
    /// Do not retry: dead-letter it now with the reason.
    DeadLetter,
}

/// What [`TaskQueue::nack`] did with the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NackOutcome {
    /// The job will be delivered again after the delay.
    Retrying {
        /// The delay before the next delivery.
        delay: Duration,
    },
    /// The job went to the dead-letter place.
    DeadLettered,
}

/// A job that will not be delivered again until it is requeued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The job.
    pub job_id: JobId,
    /// The payload as enqueued.
    pub payload: Bytes,
    /// The headers as enqueued.
    pub headers: BTreeMap<String, String>,
    /// The job's priority.
    pub priority: u8,
    /// Deliveries made before it was dead-lettered.
    pub attempts: u32,
    /// Why: the last error, the nack's reason or "lease expired".
    pub reason: String,
    /// When it was dead-lettered (wall clock).
    pub dead_at: SystemTime,
}

/// Counts of a queue's jobs by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    /// Deliverable now.
    pub ready: u64,
    /// Waiting for a delay or a retry backoff.
    pub delayed: u64,
    /// Delivered and not yet acked (leases that expired but were not reclaimed yet count here).
    pub leased: u64,
    /// In the dead-letter place.
    pub dead: u64,
}

/// What a backend can do; the conformance suite skips (and prints) what it cannot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueCapabilities {
    /// Distinct priority levels honoured (1 means FIFO only).
    pub priority_levels: u8,
    /// Delayed jobs and retry delays are honoured.
    pub delays: bool,
    /// Idempotency keys dedupe.
    pub idempotency: bool,
    /// The longest lease the backend can hold, if bounded.
    pub max_lease: Option<Duration>,
    /// Largest payload accepted, in bytes.
    pub max_payload_bytes: usize,
}

impl QueueCapabilities {
    /// Everything supported, with the given payload limit.
    pub const fn full(max_payload_bytes: usize) -> Self {
        QueueCapabilities {
            priority_levels: MAX_PRIORITY + 1,
            delays: true,
            idempotency: true,
            max_lease: None,
            max_payload_bytes,
        }
    }
}

/// A leased, at-least-once job queue. See the [crate docs](crate) for the guarantees.
///
/// Dyn-compatible: hold it as `Arc<dyn TaskQueue>` and pick the backend at run time.
#[async_trait]
pub trait TaskQueue: Send + Sync {
    /// What this backend supports.
    fn capabilities(&self) -> QueueCapabilities;

    /// Enqueues a batch; one result per job, in order. All-or-nothing where the backend
    /// allows it; a job that fails validation fails the whole batch before anything is written.
    async fn enqueue_batch(
        &self,
        queue: &str,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<Enqueued>, QueueError>;

    /// Takes up to `max` jobs, each leased for `lease`. Waits up to `wait` for the first
    /// job to arrive (without busy polling) and returns an empty vector if none did.
    async fn dequeue(
        &self,
        queue: &str,
        max: usize,
        lease: Duration,
        wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError>;

    /// Finishes a delivery: the job is gone. Refused with [`QueueError::LeaseLost`] when
    /// the lease expired and the job was (or can be) delivered again.
    async fn ack(&self, lease: &Lease) -> Result<(), QueueError>;

    /// Says that this process will run up to `concurrency` jobs of `queue` at a time. A
    /// worker calls it for each queue it consumes, before its first [`dequeue`]; calls for
    /// one queue add up (several workers in one process). Backends whose broker pushes
    /// deliveries to a consumer size its prefetch with it (`AmqpQueue`: `basic.qos`), so a
    /// process holds no more deliveries than it can run and the rest stay on the broker for
    /// other processes. The others ignore it (the default does nothing).
    ///
    /// [`dequeue`]: TaskQueue::dequeue
    fn consumer_concurrency(&self, queue: &str, concurrency: usize) {
        let _ = (queue, concurrency);
    }

    /// Finishes several deliveries at once: one result per lease, in order, each what
    /// [`ack`](TaskQueue::ack) would have returned for it alone.
    ///
    /// Backends that can carry a whole batch in one round trip override this (the Redis
    /// backend acks a batch per queue with one script call); the provided implementation
    /// acks one lease after the other. Leases may come from different queues. A lease
    /// listed twice is acked once and refused ([`QueueError::LeaseLost`]) the second time,
    /// as two calls of `ack` would be. An empty slice returns an empty vector.
    ///
    /// The outer `Err` means the batch failed as a whole (for example the backend stayed
    /// unreachable through its retries): which leases were acked before the failure is
    /// unknown, exactly as after a failed `ack`. Acking them again is safe: a lease that
    /// was acked is then refused with [`QueueError::LeaseLost`] and its job stays done.
    ///
    /// ```
    /// use std::time::Duration;
    /// use agentic_queue::{MemoryQueue, NewJob, TaskQueue};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), agentic_queue::QueueError> {
    /// let queue = MemoryQueue::new();
    /// queue.enqueue_batch("q", vec![NewJob::new(b"a".to_vec()), NewJob::new(b"b".to_vec())]).await?;
    /// let jobs = queue.dequeue("q", 10, Duration::from_secs(30), Duration::ZERO).await?;
    /// let leases: Vec<_> = jobs.into_iter().map(|d| d.lease).collect();
    /// for result in queue.ack_batch(&leases).await? {
    ///     result?; // or log a `LeaseLost`: another worker owns that job now
    /// }
    /// # Ok(())
    /// # }
    /// ```
    async fn ack_batch(&self, leases: &[Lease]) -> Result<Vec<Result<(), QueueError>>, QueueError> {
        let mut out = Vec::with_capacity(leases.len());
        for lease in leases {
            out.push(self.ack(lease).await);
        }
        Ok(out)
    }

    /// Gives a delivery back: retry after a delay or dead-letter it, recording `reason`
    /// as its last error.
    async fn nack(
        &self,
        lease: &Lease,
        retry: Retry,
        reason: &str,
    ) -> Result<NackOutcome, QueueError>;

    /// Heartbeat: extends the lease to `lease` from now. Returns the extended lease.
    async fn extend_lease(&self, lease: &Lease, lease_for: Duration) -> Result<Lease, QueueError>;

    /// Up to `limit` dead letters, oldest first.
    async fn dead_letters(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>, QueueError>;

    /// Moves the named dead letters back to ready with fresh attempts; returns how many moved.
    async fn requeue_dead(&self, queue: &str, ids: &[JobId]) -> Result<usize, QueueError>;

    /// Counts by state.
    async fn stats(&self, queue: &str) -> Result<QueueStats, QueueError>;

    /// Enqueues one job.
    async fn enqueue(&self, queue: &str, job: NewJob) -> Result<Enqueued, QueueError> {
        let mut out = self.enqueue_batch(queue, vec![job]).await?;
        out.pop()
            .ok_or_else(|| QueueError::backend_msg("enqueue_batch returned no result"))
    }
}

macro_rules! forward_queue {
    ($($ty:ty),*) => {$(
        #[async_trait]
        impl<T: TaskQueue + ?Sized> TaskQueue for $ty {
            fn capabilities(&self) -> QueueCapabilities {
                (**self).capabilities()
            }
            fn consumer_concurrency(&self, queue: &str, concurrency: usize) {
                (**self).consumer_concurrency(queue, concurrency)
            }
            async fn enqueue_batch(&self, queue: &str, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>, QueueError> {
                (**self).enqueue_batch(queue, jobs).await
            }
            async fn dequeue(&self, queue: &str, max: usize, lease: Duration, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
                (**self).dequeue(queue, max, lease, wait).await
            }
            async fn ack(&self, lease: &Lease) -> Result<(), QueueError> {
                (**self).ack(lease).await
            }
            async fn ack_batch(&self, leases: &[Lease]) -> Result<Vec<Result<(), QueueError>>, QueueError> {
                (**self).ack_batch(leases).await
            }
            async fn nack(&self, lease: &Lease, retry: Retry, reason: &str) -> Result<NackOutcome, QueueError> {
                (**self).nack(lease, retry, reason).await
            }
            async fn extend_lease(&self, lease: &Lease, lease_for: Duration) -> Result<Lease, QueueError> {
                (**self).extend_lease(lease, lease_for).await
            }
            async fn dead_letters(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
                (**self).dead_letters(queue, limit).await
            }
            async fn requeue_dead(&self, queue: &str, ids: &[JobId]) -> Result<usize, QueueError> {
                (**self).requeue_dead(queue, ids).await
            }
            async fn stats(&self, queue: &str) -> Result<QueueStats, QueueError> {
                (**self).stats(queue).await
            }
            async fn enqueue(&self, queue: &str, job: NewJob) -> Result<Enqueued, QueueError> {
                (**self).enqueue(queue, job).await
            }
        }
    )*};
}

forward_queue!(Arc<T>, Box<T>);
