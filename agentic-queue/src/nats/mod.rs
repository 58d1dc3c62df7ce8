//! The NATS JetStream backend: one work-queue stream per queue, one shared durable pull
//! consumer per priority level used by every worker, dead letters in a stream of their own.
//!
//! # Streams, subjects, consumers
//!
//! Names are encoded so that any queue name is safe (`topology.rs`). Per queue `q` (prefix
//! `agq`):
//!
//! | stream | retention | subjects | holds |
//! |---|---|---|---|
//! | `agq_q` | WorkQueue, file, duplicate window | `agq.q.p.0` … `agq.q.p.9`, `agq.q.delayed` | jobs; a message is removed when acked or terminated |
//! | `agq_q_DLQ` | limits, one message per subject | `agq.q.dead.<job id>` | dead letters with their reason |
//! | `agq_q_ERR` | limits, one message per subject, max age | `agq.q.err.<stream seq>` | the last error of a job that is retrying |
//!
//! | consumer (durable, pull, on `agq_q`) | filter | settings |
//! |---|---|---|
//! | `level-<n>` | `agq.q.p.<n>` | explicit ack, `ack_wait` = [`NatsQueueConfig::ack_wait`], unlimited `max_deliver`, `max_ack_pending` = [`NatsQueueConfig::max_ack_pending`] |
//! | `delayed` | `agq.q.delayed` | explicit ack, unlimited `max_ack_pending` (every delayed job sits in it until due) |
//!
//! The consumers are named after what they read, never after a worker: every worker of every
//! process pulls from the same consumer and the server hands each message to one of them.
//!
//! # Leases
//!
//! The trait passes a lease per `dequeue`; a consumer has one `ack_wait`. They are
//! reconciled with the one JetStream feature that sets a single message's deadline:
//! `AckKind::Nak(Some(d))` keeps the message pending and redelivers it `d` from now, and an
//! ack that arrives before then still counts. So a delivery whose lease differs from the
//! consumer's `ack_wait` is sent a delayed Nak with the lease right after the fetch (shorter
//! leases fire and forget, since a lost Nak only delays redelivery; longer ones wait for the
//! server's confirmation, since a lost one would redeliver early). A heartbeat
//! ([`TaskQueue::extend_lease`]) is `AckKind::Progress` when the new lease equals `ack_wait`
//! and a delayed Nak otherwise, both confirmed. Leases are therefore unbounded and exact.
//!
//! # Fencing
//!
//! JetStream does not fence: an ack sent on an old delivery's reply subject removes the
//! message even after it was redelivered to someone else (checked against nats-server 2.9).
//! Fencing is therefore done before anything is sent. The token is `stream sequence << 16 |
//! delivery count`, which grows with every delivery (and with a requeue, which publishes a
//! new message). Each `NatsQueue` (and its clones) keeps the deliveries it handed out; `ack`,
//! `nack` and `extend_lease` look the token up there and refuse with
//! [`QueueError::LeaseLost`] when it is unknown (already acked or nacked, or another
//! process's), or when less than [`NatsQueueConfig::fence_margin`] of the lease is left. The
//! lease's clock starts before the fetch and the server's after it, so the server never
//! redelivers before the lease we reported has ended; the margin covers the trip of the
//! ack itself. A lease is honoured only by the `NatsQueue` that issued it.
//!
//! # Attempts and dead letters
//!
//! The attempt is the delivery count (`msg.info().delivered`). `max_attempts` is per job (a
//! header), so the consumers' `max_deliver` is unlimited and the queue dead-letters itself:
//! a nack on the last attempt, `Retry::DeadLetter`, a delivery whose count is past
//! `max_attempts` (the last attempt's lease expired) and an undecodable message are each
//! published to the dead-letter stream with the reason, the publish acknowledged, and only
//! then terminated (`AckKind::Term`): a crash in between redelivers rather than loses.
//!
//! # Last errors
//!
//! A message cannot be changed, so the reason of a `nack` that retries is written to the
//! error stream under the message's sequence (with the attempt it belongs to) before the
//! Nak. A redelivery reads it back; when there is none for the previous attempt, that
//! attempt's lease expired and `last_error` says so.
//!
//! # Priorities and delays
//!
//! One subject and consumer per level. A dequeue asks the stream how many messages each
//! subject holds, then fetches (no-wait pulls) from the non-empty levels, highest first. The
//! counts are reused for [`NatsQueueConfig::level_scan_interval`] unless this process
//! enqueued, nacked, requeued or was woken since, so a busy consumer does not ask on every
//! call; a job another process puts on a level seen empty waits at most that long.
//! NATS 2.9 has no scheduled messages, so a job with a delay goes to the `delayed` subject
//! with its due time (enqueuer's wall clock) in a header. Dequeues move due ones to their
//! level (publish, await the ack, then ack the delayed message; the copy is deduped by
//! `Nats-Msg-Id` if a crash repeats the move) and Nak the others until they are due. A
//! retry delay is a delayed Nak on the job's own message.
//!
//! # Waiting
//!
//! A waiting `dequeue` subscribes to the queue's wake-up subject (core NATS, published after
//! every enqueue) and otherwise rescans every [`NatsQueueConfig::poll_interval`]: new jobs
//! arrive at once, redeliveries (expired leases, retry delays, due delayed jobs) within one
//! interval.
//!
//! # Stats (approximations)
//!
//! `ready` and `leased` per level are the level consumer's pending and ack-pending counts
//! (the subject's message count before anyone dequeued); `delayed` is the `delayed`
//! subject's count; `dead` the dead-letter stream's. A job waiting out a retry delay is
//! pending on its consumer, so it counts as `leased`, not `delayed`; a job whose lease
//! expired counts as `leased` until it is redelivered (the trait allows this).
//!
//! # Jobs without a key
//!
//! carry no id header: their id is their stream sequence (`s<seq>`), so with default
//! settings a job is a bare message, as cheap for the server as a plain publish, and any
//! NATS client can enqueue by publishing to a level subject. Jobs with an idempotency key
//! carry it (hashed) as `Nats-Msg-Id`, which is also their id.
//!
//! # Reconnects
//!
//! async-nats reconnects by itself and the durable consumers live on the server, so workers
//! resume. A fetch in flight when the connection drops is bounded by
//! [`NatsQueueConfig::request_timeout`] and fails with a retryable error; messages the
//! server had already sent to it are lost with the connection and stay pending, so they are
//! redelivered after `ack_wait` with the next attempt. Publishes that fail with a timeout, a
//! broken connection or an API error with a server-side code (>= 500) are retried: a keyed
//! job with the same `Nats-Msg-Id`, so a retry the server had already stored is a
//! duplicate, not a second job; an unkeyed job has no id to dedupe on, so a retry after a
//! lost publish ack may store it twice (two jobs, each run at least once, which
//! at-least-once allows). The first use of a queue (its streams) and of a level (its
//! consumer) is retried with backoff for up to 3 × `request_timeout`: a loaded server that
//! times out one of these idempotent setup requests does not fail the caller's first
//! enqueue or dequeue. A server killed without a clean shutdown may come back holding
//! messages its consumer already acked; see `repair_level`.

mod envelope;
mod topology;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, UNIX_EPOCH};

use async_nats::HeaderMap;
use async_nats::header::HeaderValue;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::{self, consumer};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use self::envelope::{ATTEMPTS, DEAD_AT, DUE, Job, REASON, millis, now_ms};
use self::topology::Names;
use crate::{
    DeadLetter, Delivery, Enqueued, JobId, Lease, NackOutcome, NewJob, QueueCapabilities,
    QueueError, QueueStats, Retry, TaskQueue,
};

/// Jobs published before their acks are awaited, per round of a batch.
const ENQUEUE_CHUNK: usize = 1000;
/// Delayed messages looked at per dequeue.
const PROMOTE_BATCH: usize = 256;
/// Largest `max_attempts`: the delivery count has 16 bits in the fencing token.
pub const MAX_ATTEMPTS: u32 = 65_000;
/// Room left for our headers below the server's `max_payload`.
const HEADER_ALLOWANCE: usize = 16 * 1024;
/// `last_error` of a redelivery whose previous lease ran out without a nack.
const LEASE_EXPIRED: &str = "lease expired";

/// How long the setup of a queue (its streams, its consumers) is retried on transient
/// failures, in units of `request_timeout` (15 s with the default 5 s).
const SETUP_DEADLINE_TIMEOUTS: u32 = 3;
const ACK: &[u8] = b"+ACK";
const TERM: &[u8] = b"+TERM";
const PROGRESS: &[u8] = b"+WPI";

/// Settings of [`NatsQueue`].
#[derive(Debug, Clone)]
pub struct NatsQueueConfig {
    /// `nats://host:port` (several comma-separated URLs for a cluster).
    pub url: String,
    /// First part of every stream name and subject (`[A-Za-z0-9-]`, at most 32).
    pub prefix: String,
    /// Largest payload accepted (capped below the server's `max_payload`).
    pub max_payload_bytes: usize,
    /// The work stream's duplicate window: how long an idempotency key dedupes. The server
    /// keeps every message id of the window in memory.
    pub dedupe_window: Duration,
    /// The consumers' `ack_wait`. A lease of exactly this length costs no extra message per
    /// delivery; any other length costs one delayed Nak.
    pub ack_wait: Duration,
    /// The level consumers' `max_ack_pending`: deliveries in flight per level, across
    /// every worker.
    pub max_ack_pending: i64,
    /// Dead letters kept per queue; the oldest beyond it are dropped. `0` keeps all.
    pub dead_letter_max: usize,
    /// How long a retrying job's last error is kept.
    pub error_record_max_age: Duration,
    /// How often a waiting `dequeue` rescans for redeliveries and due delayed jobs.
    pub poll_interval: Duration,
    /// How long a dequeue may reuse the per-level message counts an earlier one read
    /// (one stream-info request less per dequeue on a busy queue). Enqueues, requeues and
    /// wake-ups seen by this process discard them at once; a job another process puts on
    /// a level this process saw empty waits at most this long. `ZERO` reads every time.
    pub level_scan_interval: Duration,
    /// Leases with less than this left are refused (see the module docs, fencing): at least
    /// the one-way latency to the server.
    pub fence_margin: Duration,
    /// Replicas of each stream (1 on a single server).
    pub replicas: usize,
    /// Timeout of one request (stream info, fetch, publish ack).
    pub request_timeout: Duration,
    /// Timeout of one connection attempt.
    pub connection_timeout: Duration,
    /// Tries of one publish on transient failures.
    pub retries: u32,
}

impl NatsQueueConfig {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        NatsQueueConfig {
            url: url.into(),
            prefix: "agq".to_owned(),
            max_payload_bytes: 1024 * 1024,
            dedupe_window: Duration::from_secs(120),
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 20_000,
            dead_letter_max: 100_000,
            error_record_max_age: Duration::from_secs(7 * 24 * 3600),
            poll_interval: Duration::from_millis(200),
            level_scan_interval: Duration::from_millis(50),
            fence_margin: Duration::from_millis(20),
            replicas: 1,
            request_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(5),
            retries: 8,
        }
    }

    /// Sets the prefix of stream names and subjects.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }
}

/// A [`TaskQueue`] on NATS JetStream (2.9 or newer). See the [module docs](self) for the
/// design.
///
/// # Capabilities
///
/// | capability | `NatsQueue` |
/// |---|---|
/// | priorities | 10 levels (a subject and consumer each), FIFO inside a level |
/// | delays | yes: a `delayed` subject moved by dequeues (wall clock of the enqueuer), retry delays by delayed Nak |
/// | dedupe | jobs with an idempotency key: `Nats-Msg-Id`, window = the stream's duplicate window (2 min by default) |
/// | max lease | unbounded (delayed Nak sets any deadline) |
/// | fencing | client-side, per `NatsQueue` (see the module docs) |
/// | persistence | file storage, replicas as configured |
/// | waiting | wake-up subject for new jobs; redeliveries within `poll_interval` |
#[derive(Clone)]
pub struct NatsQueue {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    config: NatsQueueConfig,
    max_payload: usize,
    /// Queues whose streams this process has made sure of. A std `Mutex`: held only to
    /// look up or insert, never across an await.
    queues: Mutex<HashMap<String, Arc<QueueState>>>,
    /// The deliveries handed out and not yet finished: the fencing table.
    leases: Mutex<Leases>,
}

impl std::fmt::Debug for NatsQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsQueue")
            .field("prefix", &self.inner.config.prefix)
            .finish_non_exhaustive()
    }
}

struct QueueState {
    names: Names,
    levels: [OnceCell<Level>; 10],
    delayed: OnceCell<Level>,
    /// When each level was last checked for acked messages the stream still holds.
    repaired: Mutex<[Option<Instant>; 10]>,
    /// The last subject counts and when they were read (see
    /// [`NatsQueueConfig::level_scan_interval`]).
    counts: Mutex<Option<(Instant, HashMap<String, u64>)>>,
}

impl QueueState {
    /// Forget the cached counts: something changed that this process knows of.
    fn stale(&self) {
        *lock(&self.counts) = None;
    }
}

struct Level {
    consumer: consumer::PullConsumer,
    ack_wait: Duration,
}

/// One delivery handed out by this process.
struct Held {
    reply: String,
    expires_at: Instant,
    job: Job,
    stream_sequence: u64,
    attempt: u32,
}

#[derive(Default)]
struct Leases {
    by_queue: HashMap<String, HashMap<u64, Held>>,
    inserts: u64,
}

impl Leases {
    fn insert(&mut self, queue: &str, token: u64, held: Held) {
        self.inserts += 1;
        // Entries of workers that never came back would pile up; sweep now and then.
        if self.inserts.is_multiple_of(4096) {
            let now = Instant::now();
            for m in self.by_queue.values_mut() {
                m.retain(|_, h| h.expires_at > now);
            }
            self.by_queue.retain(|_, m| !m.is_empty());
        }
        // Look up before `entry`: it would allocate the queue's name on every insert.
        match self.by_queue.get_mut(queue) {
            Some(m) => {
                m.insert(token, held);
            }
            None => {
                self.by_queue
                    .insert(queue.to_owned(), HashMap::from([(token, held)]));
            }
        }
    }

    fn take(&mut self, lease: &Lease) -> Option<Held> {
        self.by_queue
            .get_mut(&lease.queue)
            .and_then(|m| m.remove(&lease.token))
    }

    fn get_mut(&mut self, lease: &Lease) -> Option<&mut Held> {
        self.by_queue
            .get_mut(&lease.queue)
            .and_then(|m| m.get_mut(&lease.token))
    }
}

/// The fencing token of one delivery: grows with the delivery count and, across requeues
/// and delayed moves, with the stream sequence (see the module docs).
fn token(stream_sequence: u64, delivered: u64) -> u64 {
    (stream_sequence << 16) | delivered.min(0xFFFF)
}

fn nak(delay: Duration) -> Bytes {
    if delay.is_zero() {
        return Bytes::from_static(b"-NAK");
    }
    Bytes::from(format!("-NAK {{\"delay\":{}}}", delay.as_nanos()))
}

/// The reply of a `STREAM.INFO` request, only what we read.
#[derive(Deserialize)]
struct StreamInfoReply {
    state: Option<StreamState>,
    error: Option<ApiError>,
}

#[derive(Deserialize)]
struct StreamState {
    messages: u64,
    #[serde(default)]
    subjects: Option<HashMap<String, u64>>,
}

#[derive(Deserialize, Default)]
struct ConsumerInfoReply {
    #[serde(default)]
    num_ack_pending: u64,
    #[serde(default)]
    num_pending: u64,
    #[serde(default)]
    ack_floor: AckFloor,
    error: Option<ApiError>,
}

#[derive(Deserialize, Default)]
struct AckFloor {
    #[serde(default)]
    stream_seq: u64,
}

#[derive(Deserialize, Debug)]
struct ApiError {
    #[serde(default)]
    code: u16,
    #[serde(default)]
    description: String,
}

impl NatsQueue {
    /// Connects with default settings.
    pub async fn connect(url: &str) -> Result<Self, QueueError> {
        Self::connect_with(NatsQueueConfig::new(url)).await
    }

    /// Connects with the given settings. The client reconnects by itself afterwards.
    pub async fn connect_with(config: NatsQueueConfig) -> Result<Self, QueueError> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(config.connection_timeout)
            .request_timeout(Some(config.request_timeout))
            .connect(config.url.as_str())
            .await
            .map_err(|e| QueueError::transient("connect to NATS", e))?;
        Self::with_client(client, config)
    }

    /// Uses an existing connection (shared with other users of the client); `config.url`
    /// is not used.
    pub fn with_client(
        client: async_nats::Client,
        config: NatsQueueConfig,
    ) -> Result<Self, QueueError> {
        topology::check_prefix(&config.prefix)?;
        let server_max = client.server_info().max_payload;
        let max_payload = if server_max > HEADER_ALLOWANCE {
            config.max_payload_bytes.min(server_max - HEADER_ALLOWANCE)
        } else {
            config.max_payload_bytes
        };
        let js = jetstream::ContextBuilder::new()
            .timeout(config.request_timeout)
            .build(client.clone());
        Ok(NatsQueue {
            inner: Arc::new(Inner {
                client,
                js,
                config,
                max_payload,
                queues: Mutex::new(HashMap::new()),
                leases: Mutex::new(Leases::default()),
            }),
        })
    }

    /// The underlying client (for metrics, or to share the connection).
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    /// Deletes the queue's three streams with everything in them (jobs, dead letters,
    /// error records) and its consumers. For teardown and tests.
    pub async fn delete_queue(&self, queue: &str) -> Result<(), QueueError> {
        let names = self.names(queue)?;
        lock(&self.inner.queues).remove(queue);
        for stream in [&names.work, &names.dlq, &names.err] {
            if let Err(e) = self.inner.js.delete_stream(stream).await
                && !topology::is_not_found(&e.to_string())
            {
                return Err(QueueError::transient(
                    format!("NATS: delete stream {stream}"),
                    e,
                ));
            }
        }
        Ok(())
    }

    /// Acks several deliveries with one round trip to the server; one result per lease,
    /// in order.
    pub async fn ack_many(&self, leases: &[Lease]) -> Vec<Result<(), QueueError>> {
        let mut out: Vec<Result<(), QueueError>> = Vec::with_capacity(leases.len());
        let mut taken: Vec<(usize, Held)> = Vec::new();
        {
            let mut table = lock(&self.inner.leases);
            for (i, l) in leases.iter().enumerate() {
                match table.take(l) {
                    Some(h) if self.valid(h.expires_at) => {
                        out.push(Ok(()));
                        taken.push((i, h));
                    }
                    _ => out.push(Err(lease_lost(l))),
                }
            }
        }
        let acks: Vec<(String, Bytes)> = taken
            .iter()
            .map(|(_, h)| (h.reply.clone(), Bytes::from_static(ACK)))
            .collect();
        if let Err(e) = self.confirm_in_order(acks).await {
            // Unknown which arrived; put them back so the caller can ack again (an ack of
            // a message already acked is a no-op on the server).
            let msg = e.to_string();
            let mut table = lock(&self.inner.leases);
            for (i, h) in taken {
                out[i] = Err(QueueError::Backend {
                    message: msg.clone(),
                    retryable: true,
                    source: None,
                });
                table.insert(&leases[i].queue, leases[i].token, h);
            }
            return out;
        }
        for (i, h) in &taken {
            if h.attempt > 1 {
                self.forget_error(&leases[*i].queue, h.stream_sequence)
                    .await;
            }
        }
        out
    }

    fn names(&self, queue: &str) -> Result<Names, QueueError> {
        Names::new(&self.inner.config.prefix, queue)
    }

    fn valid(&self, expires_at: Instant) -> bool {
        Instant::now() + self.inner.config.fence_margin < expires_at
    }

    /// The queue's state, making sure of its streams the first time.
    async fn state(&self, queue: &str) -> Result<Arc<QueueState>, QueueError> {
        if let Some(s) = lock(&self.inner.queues).get(queue) {
            return Ok(s.clone());
        }
        let names = self.names(queue)?;
        // Up to six API requests, each of which can time out on a loaded server: retried
        // (they are idempotent: an existing stream is used as it is) rather than failing
        // the caller's first enqueue or dequeue of the queue.
        self.retry_setup("create streams", || {
            topology::ensure_streams(&self.inner.js, &names, &self.inner.config)
        })
        .await?;
        let state = Arc::new(QueueState {
            names,
            levels: Default::default(),
            delayed: OnceCell::new(),
            repaired: Mutex::new([None; 10]),
            counts: Mutex::new(None),
        });
        Ok(lock(&self.inner.queues)
            .entry(queue.to_owned())
            .or_insert(state)
            .clone())
    }

    /// Runs a setup step (stream or consumer creation) until it succeeds, fails with an
    /// error that is not retryable, or [`SETUP_DEADLINE_TIMEOUTS`] × `request_timeout` has
    /// passed; backoff 50 ms doubling to 2 s. The last error is returned as it is (still
    /// retryable when it was).
    async fn retry_setup<T, F, Fut>(&self, what: &str, mut step: F) -> Result<T, QueueError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, QueueError>>,
    {
        let deadline = crate::later(
            Instant::now(),
            self.inner
                .config
                .request_timeout
                .saturating_mul(SETUP_DEADLINE_TIMEOUTS),
        );
        let mut delay = Duration::from_millis(50);
        loop {
            match step().await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() && Instant::now() + delay < deadline => {
                    tracing::warn!(what, error = %e, "NATS setup failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn level<'a>(&self, st: &'a QueueState, priority: u8) -> Result<&'a Level, QueueError> {
        let cell = st
            .levels
            .get(usize::from(priority))
            .ok_or_else(|| QueueError::backend_msg("priority out of range"))?;
        cell.get_or_try_init(|| async {
            let durable = format!("level-{priority}");
            let consumer = self
                .retry_setup("create consumer", || {
                    topology::ensure_consumer(
                        &self.inner.js,
                        &st.names,
                        &durable,
                        st.names.level(priority),
                        &self.inner.config,
                    )
                })
                .await?;
            let ack_wait = topology::ack_wait_of(&consumer, self.inner.config.ack_wait);
            Ok(Level { consumer, ack_wait })
        })
        .await
    }

    async fn delayed_level<'a>(&self, st: &'a QueueState) -> Result<&'a Level, QueueError> {
        st.delayed
            .get_or_try_init(|| async {
                let mut config = self.inner.config.clone();
                // Every delayed job is pending on this consumer until due; a bound would
                // hide the newest (possibly earliest-due) ones.
                config.max_ack_pending = -1;
                let consumer = self
                    .retry_setup("create consumer", || {
                        topology::ensure_consumer(
                            &self.inner.js,
                            &st.names,
                            "delayed",
                            st.names.delayed(),
                            &config,
                        )
                    })
                    .await?;
                let ack_wait = topology::ack_wait_of(&consumer, config.ack_wait);
                Ok(Level { consumer, ack_wait })
            })
            .await
    }

    /// Message counts per subject of the work stream; `None` when it does not exist.
    async fn subject_counts(
        &self,
        names: &Names,
    ) -> Result<Option<HashMap<String, u64>>, QueueError> {
        let reply: StreamInfoReply = self
            .inner
            .js
            .request(
                format!("STREAM.INFO.{}", names.work),
                &serde_json::json!({ "subjects_filter": format!("{}.>", names.base) }),
            )
            .await
            .map_err(|e| QueueError::transient("NATS: stream info", e))?;
        if let Some(err) = reply.error {
            return not_found_or(err);
        }
        Ok(Some(
            reply.state.and_then(|s| s.subjects).unwrap_or_default(),
        ))
    }

    /// Messages in a stream; 0 when it does not exist.
    async fn stream_messages(&self, stream: &str) -> Result<u64, QueueError> {
        let reply: StreamInfoReply = self
            .inner
            .js
            .request(format!("STREAM.INFO.{stream}"), &serde_json::json!({}))
            .await
            .map_err(|e| QueueError::transient("NATS: stream info", e))?;
        if let Some(err) = reply.error {
            return not_found_or(err).map(|_: Option<()>| 0);
        }
        Ok(reply.state.map_or(0, |s| s.messages))
    }

    /// A level consumer's counts; `None` when it does not exist (nobody dequeued yet).
    async fn consumer_info(
        &self,
        names: &Names,
        durable: &str,
    ) -> Result<Option<ConsumerInfoReply>, QueueError> {
        let mut reply: ConsumerInfoReply = self
            .inner
            .js
            .request(
                format!("CONSUMER.INFO.{}.{durable}", names.work),
                &serde_json::json!({}),
            )
            .await
            .map_err(|e| QueueError::transient("NATS: consumer info", e))?;
        if let Some(err) = reply.error.take() {
            return not_found_or(err);
        }
        Ok(Some(reply))
    }

    /// Removes messages a level consumer has already acked but the stream still holds.
    ///
    /// A server killed without a clean shutdown can come back with its stream missing
    /// some of its last deletes while the consumer's ack floor remembers the acks (seen
    /// with nats-server 2.9): those messages are finished jobs, below the floor, that no
    /// consumer will ever deliver again. They would sit in the stream for good and count
    /// as ready, so they are purged: everything on the subject below the ack floor is acked
    /// by definition. Runs when a level holds messages but a fetch found none, at most
    /// once per `poll_interval * 5` per level.
    async fn repair_level(&self, st: &QueueState, priority: u8, held: u64) {
        {
            let mut last = lock(&st.repaired);
            let Some(at) = last.get_mut(usize::from(priority)) else {
                return;
            };
            let now = Instant::now();
            if at.is_some_and(|t| {
                now < crate::later(t, self.inner.config.poll_interval.saturating_mul(5))
            }) {
                return;
            }
            *at = Some(now);
        }
        let info = match self
            .consumer_info(&st.names, &format!("level-{priority}"))
            .await
        {
            Ok(Some(info)) => info,
            _ => return,
        };
        if held <= info.num_pending + info.num_ack_pending || info.ack_floor.stream_seq == 0 {
            return;
        }
        let Ok(stream) = self.inner.js.get_stream_no_info(&st.names.work).await else {
            return;
        };
        match stream
            .purge()
            .filter(st.names.level(priority))
            .sequence(info.ack_floor.stream_seq + 1)
            .await
        {
            Ok(r) => tracing::warn!(
                queue = %st.names.work,
                priority,
                purged = r.purged,
                "NATS: removed messages already acked (below the consumer's ack floor) that the stream still held"
            ),
            Err(e) => tracing::debug!(error = %e, "NATS: could not purge acked messages"),
        }
    }

    /// Up to `n` messages available now (a no-wait pull), bounded by the request timeout.
    async fn fetch(
        &self,
        consumer: &consumer::PullConsumer,
        n: usize,
    ) -> Result<Vec<jetstream::Message>, QueueError> {
        let work = async {
            let mut batch = consumer
                .fetch()
                .max_messages(n)
                .messages()
                .await
                .map_err(|e| QueueError::transient("NATS: fetch", e))?;
            let mut out = Vec::with_capacity(n);
            while let Some(m) = batch.next().await {
                match m {
                    Ok(m) => out.push(m),
                    // 409: the consumer's max_ack_pending is reached; nothing more here now.
                    Err(e) if e.to_string().contains("409") => break,
                    Err(e) => {
                        if out.is_empty() {
                            return Err(QueueError::Backend {
                                message: format!("NATS: fetch: {e}"),
                                retryable: true,
                                source: None,
                            });
                        }
                        break;
                    }
                }
            }
            Ok(out)
        };
        tokio::time::timeout(self.inner.config.request_timeout, work)
            .await
            .map_err(|_| QueueError::Backend {
                message: "NATS: fetch timed out (its messages will be redelivered)".to_owned(),
                retryable: true,
                source: None,
            })?
    }

    /// Publishes and waits for the stream's ack, retrying transient failures with the
    /// same message id (so a retry of a stored message is a duplicate, not a second one).
    async fn publish_acked(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<jetstream::publish::PublishAck, QueueError> {
        let mut delay = Duration::from_millis(50);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent = async {
                self.inner
                    .js
                    .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                    .await?
                    .await
            };
            match sent.await {
                Ok(ack) => return Ok(ack),
                Err(e) if publish_transient(&e) && attempt < self.inner.config.retries => {
                    tracing::warn!(subject, attempt, error = %e, "NATS publish failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    let retryable = publish_transient(&e);
                    return Err(QueueError::Backend {
                        message: format!("NATS: publish to {subject} failed: {e}"),
                        retryable,
                        source: Some(Box::new(e)),
                    });
                }
            }
        }
    }

    /// Sends acks/naks/progress on their reply subjects and waits until the server has
    /// processed every one (it answers each on our inbox after acting on it). Uses the
    /// client's shared request inbox, so no subscription is made per call.
    async fn confirm(&self, acks: &[(String, Bytes)]) -> Result<(), QueueError> {
        let client = &self.inner.client;
        let timeout = self.inner.config.request_timeout;
        let replies = futures::future::join_all(acks.iter().map(|(reply, body)| {
            tokio::time::timeout(timeout, client.request(reply.clone(), body.clone()))
        }))
        .await;
        let failed = replies.iter().filter(|r| !matches!(r, Ok(Ok(_)))).count();
        if failed > 0 {
            return Err(QueueError::Backend {
                message: format!(
                    "NATS: {failed} of {} acks were not confirmed in time",
                    acks.len()
                ),
                retryable: true,
                source: None,
            });
        }
        Ok(())
    }

    /// Like [`confirm`](Self::confirm), with one reply per consumer instead of one per ack.
    ///
    /// The server handles the acks of one consumer in the order they arrive (one queue,
    /// one goroutine per consumer), and ours arrive in the order we send them on our one
    /// connection; so once it has answered the last ack sent to a consumer, it has acted
    /// on every earlier one. The others go out plain, sparing the server a reply each.
    async fn confirm_in_order(&self, acks: Vec<(String, Bytes)>) -> Result<(), QueueError> {
        // The consumer is the ack subject up to its 4th dot: `$JS.ACK.<stream>.<consumer>.`.
        fn consumer_of(reply: &str) -> &str {
            reply
                .match_indices('.')
                .nth(3)
                .map_or(reply, |(i, _)| reply.get(..i).unwrap_or(reply))
        }
        let mut last: HashMap<&str, usize> = HashMap::new();
        for (i, (reply, _)) in acks.iter().enumerate() {
            last.insert(consumer_of(reply), i);
        }
        let confirmed: HashSet<usize> = last.into_values().collect();
        let mut plain = Vec::with_capacity(acks.len());
        let mut tail = Vec::with_capacity(confirmed.len());
        for (i, ack) in acks.into_iter().enumerate() {
            if confirmed.contains(&i) {
                tail.push(ack);
            } else {
                plain.push(ack);
            }
        }
        for (reply, body) in plain {
            self.inner
                .client
                .publish(reply, body)
                .await
                .map_err(|e| QueueError::transient("NATS: ack", e))?;
        }
        self.confirm(&tail).await
    }

    /// Fire-and-forget acks (a lost one only delays a redelivery).
    async fn send(&self, acks: Vec<(String, Bytes)>) {
        for (reply, body) in acks {
            if let Err(e) = self.inner.client.publish(reply, body).await {
                tracing::debug!(error = %e, "NATS: could not send an ack");
            }
        }
    }

    /// Tells waiting dequeues of this queue to look now.
    async fn wake(&self, names: &Names) {
        if let Err(e) = self.inner.client.publish(names.wake(), Bytes::new()).await {
            tracing::debug!(error = %e, "NATS: could not publish a wake-up");
        }
    }

    /// Removes the error record of a message (best effort; records also age out).
    async fn forget_error(&self, queue: &str, stream_sequence: u64) {
        let Ok(names) = self.names(queue) else {
            return;
        };
        if let Ok(stream) = self.inner.js.get_stream_no_info(&names.err).await
            && let Err(e) = stream.purge().filter(names.error(stream_sequence)).await
        {
            tracing::debug!(error = %e, "NATS: could not remove an error record");
        }
    }

    /// The last error of the attempt before `delivered`.
    async fn last_error(
        &self,
        names: &Names,
        stream_sequence: u64,
        delivered: u64,
    ) -> Result<String, QueueError> {
        let stream = self
            .inner
            .js
            .get_stream_no_info(&names.err)
            .await
            .map_err(|e| QueueError::transient("NATS: error stream", e))?;
        match stream
            .get_last_raw_message_by_subject(&names.error(stream_sequence))
            .await
        {
            Ok(m) => {
                let attempt: Option<u64> = m
                    .headers
                    .get(ATTEMPTS)
                    .and_then(|v| v.as_str().parse().ok());
                if attempt == Some(delivered - 1) {
                    Ok(String::from_utf8_lossy(&m.payload).into_owned())
                } else {
                    Ok(LEASE_EXPIRED.to_owned())
                }
            }
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
                Ok(LEASE_EXPIRED.to_owned())
            }
            Err(e) => Err(QueueError::transient("NATS: read an error record", e)),
        }
    }

    /// Publishes the job to the dead-letter stream with `reason`, waits for the stream's
    /// ack, then terminates the delivery: in that order, so a crash in between leaves the
    /// job deliverable (and a repeat replaces the dead letter, one per job).
    async fn dead_letter(
        &self,
        names: &Names,
        job: &Job,
        stream_sequence: u64,
        attempts: u32,
        reason: &str,
        reply: &str,
    ) -> Result<(), QueueError> {
        let mut h = job.work_headers(
            Some(&format!("{}:d{stream_sequence}:{attempts}", job.id)),
            true,
        )?;
        h.insert(ATTEMPTS, HeaderValue::from(u64::from(attempts)));
        h.insert(REASON, envelope::text(reason)?);
        h.insert(DEAD_AT, HeaderValue::from(now_ms()));
        self.publish_acked(names.dead(job.id.as_str()), h, job.payload.clone())
            .await?;
        self.confirm(&[(reply.to_owned(), Bytes::from_static(TERM))])
            .await?;
        if attempts > 1
            && let Ok(stream) = self.inner.js.get_stream_no_info(&names.err).await
        {
            // Best effort: error records also age out.
            let _ = stream.purge().filter(names.error(stream_sequence)).await;
        }
        tracing::info!(job = %job.id, attempts, reason, "NATS: job dead-lettered");
        Ok(())
    }

    /// Moves due delayed jobs to their level; naks the others until they are due. Returns
    /// the levels that received jobs.
    async fn promote_delayed(&self, st: &QueueState) -> Result<[bool; 10], QueueError> {
        let mut promoted = [false; 10];
        let level = self.delayed_level(st).await?;
        let msgs = self.fetch(&level.consumer, PROMOTE_BATCH).await?;
        let now = now_ms();
        let mut acks = Vec::new();
        let mut naks = Vec::new();
        for m in msgs {
            let Some(reply) = m.reply.as_ref().map(|r| r.to_string()) else {
                continue;
            };
            let (sseq, delivered) = match m.info() {
                Ok(i) => (i.stream_sequence, i.delivered.max(1) as u64),
                Err(_) => continue,
            };
            let due: Result<u64, String> = envelope::parse(
                m.headers
                    .as_ref()
                    .and_then(|h| h.get(DUE))
                    .map(|v| v.as_str()),
                DUE,
            );
            let job =
                Job::decode(m.headers.as_ref(), m.payload.clone(), None, sseq).and_then(checked_id);
            match (job, due) {
                (Ok(job), Ok(due)) if due <= now => {
                    let h = job.work_headers(Some(&format!("{}:m{sseq}", job.id)), false)?;
                    self.publish_acked(st.names.level(job.priority), h, job.payload.clone())
                        .await?;
                    if let Some(p) = promoted.get_mut(usize::from(job.priority)) {
                        *p = true;
                    }
                    acks.push((reply, Bytes::from_static(ACK)));
                }
                // Not due: come back when it is (a little late rather than early).
                (Ok(_), Ok(due)) => naks.push((reply, nak(Duration::from_millis(due - now + 2)))),
                (Err(why), _) | (_, Err(why)) => {
                    let job = poison(sseq, m.payload.clone(), 0);
                    let reason = format!("undecodable delayed message: {why}");
                    self.dead_letter(&st.names, &job, sseq, delivered as u32, &reason, &reply)
                        .await?;
                }
            }
        }
        // Ack only after every copy is stored: a crash in between repeats the move, and the
        // copy's message id makes the repeat a duplicate.
        self.confirm(&acks).await?;
        self.send(naks).await;
        Ok(promoted)
    }

    /// One pass over the queue: promote due delayed jobs, then take up to `max` jobs from
    /// the non-empty levels, highest first.
    async fn sweep(
        &self,
        queue: &str,
        st: &QueueState,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        let cached = lock(&st.counts)
            .as_ref()
            .filter(|(at, _)| at.elapsed() < self.inner.config.level_scan_interval)
            .map(|(_, c)| c.clone());
        let fresh = cached.is_none();
        let counts = match cached {
            Some(c) => c,
            None => {
                let c = self.subject_counts(&st.names).await?.unwrap_or_default();
                *lock(&st.counts) = Some((Instant::now(), c.clone()));
                c
            }
        };
        let count = |subject: &str| counts.get(subject).copied().unwrap_or(0);
        let promoted = if count(&st.names.delayed()) > 0 {
            self.promote_delayed(st).await?
        } else {
            [false; 10]
        };
        let mut out = Vec::new();
        let mut naks = Vec::new();
        let mut confirmed_naks = Vec::new();
        for priority in (0..=crate::MAX_PRIORITY).rev() {
            if out.len() >= max {
                break;
            }
            let level_promoted = promoted
                .get(usize::from(priority))
                .copied()
                .unwrap_or(false);
            if count(&st.names.level(priority)) == 0 && !level_promoted {
                continue;
            }
            let level = self.level(st, priority).await?;
            let mut first = true;
            loop {
                let want = max - out.len();
                if want == 0 {
                    break;
                }
                // The lease starts before the fetch, the server's clock after it.
                let started = Instant::now();
                let msgs = self.fetch(&level.consumer, want).await?;
                let n = msgs.len();
                for m in msgs {
                    if let Some(d) = self.admit(queue, st, priority, m, lease, started).await? {
                        if lease != level.ack_wait {
                            let body = nak(lease.max(Duration::from_millis(1)));
                            let reply = d.1;
                            if lease > level.ack_wait {
                                confirmed_naks.push((reply, body));
                            } else {
                                naks.push((reply, body));
                            }
                        }
                        out.push(d.0);
                    }
                }
                if n == 0 && first && fresh {
                    self.repair_level(st, priority, count(&st.names.level(priority)))
                        .await;
                }
                first = false;
                if n < want {
                    // Drained (as of now): until the counts are read again, do not ask.
                    if let Some((_, c)) = lock(&st.counts).as_mut() {
                        c.insert(st.names.level(priority), 0);
                    }
                    break;
                }
            }
        }
        self.send(naks).await;
        if let Err(e) = self.confirm(&confirmed_naks).await {
            // Without the confirmation the server may redeliver after `ack_wait`, before
            // the lease we would report: hand nothing out; they come back on their own.
            let mut table = lock(&self.inner.leases);
            for d in &out {
                table.take(&d.lease);
            }
            return Err(e);
        }
        Ok(out)
    }

    /// Turns a fetched message into a delivery, or dead-letters it (undecodable, or its last
    /// attempt's lease expired). Returns the delivery and its reply subject.
    async fn admit(
        &self,
        queue: &str,
        st: &QueueState,
        priority: u8,
        m: jetstream::Message,
        lease: Duration,
        started: Instant,
    ) -> Result<Option<(Delivery, String)>, QueueError> {
        let Some(reply) = m.reply.as_ref().map(|r| r.to_string()) else {
            return Ok(None);
        };
        let info = m
            .info()
            .map_err(|e| QueueError::backend_msg(format!("NATS: message metadata: {e}")))?;
        let (sseq, delivered) = (info.stream_sequence, info.delivered.max(1) as u64);
        let job = match Job::decode(m.headers.as_ref(), m.payload.clone(), Some(priority), sseq)
            .and_then(checked_id)
        {
            Ok(job) => job,
            Err(why) => {
                let job = poison(sseq, m.payload.clone(), priority);
                let reason = format!("undecodable message: {why}");
                self.dead_letter(&st.names, &job, sseq, delivered as u32, &reason, &reply)
                    .await?;
                return Ok(None);
            }
        };
        if delivered > u64::from(job.max_attempts) {
            // Delivered again after its last attempt: that attempt's lease expired.
            let attempts = job.max_attempts;
            let last = self.last_error(&st.names, sseq, delivered).await?;
            let reason = if last == LEASE_EXPIRED {
                format!("lease expired on the last attempt ({attempts})")
            } else {
                format!("lease expired on the last attempt ({attempts}); last error: {last}")
            };
            self.dead_letter(&st.names, &job, sseq, attempts, &reason, &reply)
                .await?;
            return Ok(None);
        }
        let last_error = if delivered > 1 {
            Some(self.last_error(&st.names, sseq, delivered).await?)
        } else {
            None
        };
        let token = token(sseq, delivered);
        let expires_at = crate::later(started, lease);
        let attempt = delivered as u32;
        let delivery = Delivery {
            lease: Lease {
                queue: queue.to_owned(),
                job_id: job.id.clone(),
                token,
                expires_at,
            },
            payload: job.payload.clone(),
            headers: job.headers.clone(),
            priority,
            attempt,
            max_attempts: job.max_attempts,
            last_error,
        };
        lock(&self.inner.leases).insert(
            queue,
            token,
            Held {
                reply: reply.clone(),
                expires_at,
                job,
                stream_sequence: sseq,
                attempt,
            },
        );
        Ok(Some((delivery, reply)))
    }

    /// Takes a valid lease out of the table.
    fn take_valid(&self, lease: &Lease) -> Result<Held, QueueError> {
        match lock(&self.inner.leases).take(lease) {
            Some(h) if self.valid(h.expires_at) => Ok(h),
            _ => Err(lease_lost(lease)),
        }
    }

    fn put_back(&self, lease: &Lease, held: Held) {
        lock(&self.inner.leases).insert(&lease.queue, lease.token, held);
    }
}

#[async_trait]
impl TaskQueue for NatsQueue {
    fn capabilities(&self) -> QueueCapabilities {
        QueueCapabilities::full(self.inner.max_payload)
    }

    async fn enqueue_batch(
        &self,
        queue: &str,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<Enqueued>, QueueError> {
        // The name first: an invalid name is refused even for a valid job.
        self.names(queue)?;
        for job in &jobs {
            job.validate(self.inner.max_payload)?;
            if job.max_attempts > MAX_ATTEMPTS {
                return Err(QueueError::InvalidJob(format!(
                    "max_attempts {} is over this backend's {MAX_ATTEMPTS}",
                    job.max_attempts
                )));
            }
        }
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let st = self.state(queue).await?;
        let now = now_ms();
        let mut out = Vec::with_capacity(jobs.len());
        for chunk in jobs.chunks(ENQUEUE_CHUNK) {
            let mut sent = Vec::with_capacity(chunk.len());
            // Publish the whole chunk, then collect the acks: one round trip per chunk
            // rather than per job. Order is kept: one connection, one stream.
            for new in chunk {
                // With a key: the id is the key's, and the key dedupes on the server.
                // Without: no id header at all; the id is the stream sequence.
                let key_id = new.idempotency_key.as_deref().map(envelope::id_for_key);
                let job = Job {
                    id: JobId(key_id.clone().unwrap_or_default()),
                    payload: new.payload.clone(),
                    headers: new.headers.clone(),
                    priority: new.priority,
                    max_attempts: new.max_attempts,
                };
                let delayed = !new.delay.is_zero();
                let mut headers = job.work_headers(key_id.as_deref(), delayed)?;
                let subject = if delayed {
                    headers.insert(
                        DUE,
                        HeaderValue::from(now.saturating_add(millis(new.delay))),
                    );
                    st.names.delayed()
                } else {
                    st.names.level(new.priority)
                };
                let js = &self.inner.js;
                let ack = if headers.is_empty() {
                    js.publish(subject.clone(), job.payload.clone()).await
                } else {
                    js.publish_with_headers(subject.clone(), headers.clone(), job.payload.clone())
                        .await
                };
                sent.push((ack, subject, headers, job, key_id));
            }
            for (ack, subject, headers, job, key_id) in sent {
                let first = match ack {
                    Ok(fut) => fut.await,
                    Err(e) => Err(e),
                };
                let ack = match first {
                    Ok(ack) => ack,
                    Err(e) if publish_transient(&e) => {
                        // With a key, the same message id makes a retry of a stored
                        // message a duplicate. Without one, a retry after a lost ack may
                        // store the job twice: two jobs, each run at least once.
                        self.publish_acked(subject, headers, job.payload.clone())
                            .await?
                    }
                    Err(e) => {
                        return Err(QueueError::Backend {
                            message: format!("NATS: enqueue failed: {e}"),
                            retryable: false,
                            source: Some(Box::new(e)),
                        });
                    }
                };
                out.push(match key_id {
                    Some(id) => Enqueued {
                        id: JobId(id),
                        duplicate: ack.duplicate,
                    },
                    None => Enqueued {
                        id: JobId(envelope::sequence_id(ack.sequence)),
                        duplicate: false,
                    },
                });
            }
        }
        st.stale();
        self.wake(&st.names).await;
        Ok(out)
    }

    async fn dequeue(
        &self,
        queue: &str,
        max: usize,
        lease: Duration,
        wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        let st = self.state(queue).await?;
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = crate::later(Instant::now(), wait);
        let mut wake = None;
        loop {
            let got = self.sweep(queue, &st, max, lease).await?;
            let now = Instant::now();
            if !got.is_empty() || now >= deadline {
                return Ok(got);
            }
            let Some(sub) = wake.as_mut() else {
                // Subscribed only once we have to wait (a busy queue never pays for it),
                // and before the next look, so an enqueue between that look and the wait
                // still wakes us.
                wake = Some(
                    self.inner
                        .client
                        .subscribe(st.names.wake())
                        .await
                        .map_err(|e| QueueError::transient("NATS: subscribe", e))?,
                );
                continue;
            };
            let nap = (deadline - now).min(self.inner.config.poll_interval);
            if let Ok(Some(_)) = tokio::time::timeout(nap, sub.next()).await {
                // Someone enqueued: look at the stream, not at our cached counts.
                st.stale();
            }
        }
    }

    async fn ack(&self, lease: &Lease) -> Result<(), QueueError> {
        self.ack_many(std::slice::from_ref(lease))
            .await
            .pop()
            .unwrap_or_else(|| Err(QueueError::backend_msg("ack result missing")))
    }

    /// [`NatsQueue::ack_many`]: the whole batch in one round trip.
    async fn ack_batch(&self, leases: &[Lease]) -> Result<Vec<Result<(), QueueError>>, QueueError> {
        Ok(self.ack_many(leases).await)
    }

    async fn nack(
        &self,
        lease: &Lease,
        retry: Retry,
        reason: &str,
    ) -> Result<NackOutcome, QueueError> {
        let st = self.state(&lease.queue).await?;
        let held = self.take_valid(lease)?;
        // The job stays (or comes back) on its level: counts cached as empty are wrong now.
        st.stale();
        let give_up = match retry {
            Retry::DeadLetter => true,
            Retry::After(_) => held.attempt >= held.job.max_attempts,
        };
        let result = if give_up {
            self.dead_letter(
                &st.names,
                &held.job,
                held.stream_sequence,
                held.attempt,
                reason,
                &held.reply,
            )
            .await
            .map(|()| NackOutcome::DeadLettered)
        } else {
            let delay = match retry {
                Retry::After(d) => d,
                Retry::DeadLetter => Duration::ZERO,
            };
            // The reason first: the redelivery reads it.
            let mut h = HeaderMap::new();
            h.insert(ATTEMPTS, HeaderValue::from(u64::from(held.attempt)));
            let recorded = self
                .publish_acked(
                    st.names.error(held.stream_sequence),
                    h,
                    Bytes::copy_from_slice(reason.as_bytes()),
                )
                .await;
            match recorded {
                Ok(_) => self
                    .confirm(&[(held.reply.clone(), nak(delay))])
                    .await
                    .map(|()| NackOutcome::Retrying { delay }),
                Err(e) => Err(e),
            }
        };
        match result {
            Ok(outcome) => {
                if outcome
                    == (NackOutcome::Retrying {
                        delay: Duration::ZERO,
                    })
                {
                    self.wake(&st.names).await;
                }
                Ok(outcome)
            }
            Err(e) => {
                // Not done (or not known to be): the caller may try again while the lease
                // lasts.
                self.put_back(lease, held);
                Err(e)
            }
        }
    }

    async fn extend_lease(&self, lease: &Lease, lease_for: Duration) -> Result<Lease, QueueError> {
        let st = self.state(&lease.queue).await?;
        let started = Instant::now();
        let (reply, priority) = {
            let mut table = lock(&self.inner.leases);
            match table.get_mut(lease) {
                Some(h) if self.valid(h.expires_at) => (h.reply.clone(), h.job.priority),
                _ => return Err(lease_lost(lease)),
            }
        };
        let ack_wait = self.level(&st, priority).await?.ack_wait;
        let body = if lease_for == ack_wait {
            Bytes::from_static(PROGRESS)
        } else {
            nak(lease_for.max(Duration::from_millis(1)))
        };
        self.confirm(&[(reply, body)]).await?;
        let expires_at = crate::later(started, lease_for);
        match lock(&self.inner.leases).get_mut(lease) {
            Some(h) => {
                h.expires_at = expires_at;
                Ok(Lease {
                    expires_at,
                    ..lease.clone()
                })
            }
            // Acked or nacked meanwhile by another task of ours.
            None => Err(lease_lost(lease)),
        }
    }

    async fn dead_letters(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let names = self.names(queue)?;
        if limit == 0 || self.stream_messages(&names.dlq).await? == 0 {
            return Ok(Vec::new());
        }
        let stream = self
            .inner
            .js
            .get_stream_no_info(&names.dlq)
            .await
            .map_err(|e| QueueError::transient("NATS: dead-letter stream", e))?;
        let consumer: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::None,
                filter_subject: format!("{}.dead.*", names.base),
                inactive_threshold: Duration::from_secs(30),
                memory_storage: true,
                ..Default::default()
            })
            .await
            .map_err(|e| QueueError::transient("NATS: dead-letter listing", e))?;
        let mut remaining = consumer.cached_info().num_pending;
        let mut out = Vec::new();
        let mut failure = None;
        while remaining > 0 && out.len() < limit {
            let want = (limit - out.len()).min(1000);
            match self.fetch(&consumer, want).await {
                Ok(msgs) if msgs.is_empty() => break,
                Ok(msgs) => {
                    remaining = remaining.saturating_sub(msgs.len() as u64);
                    out.extend(msgs.iter().map(|m| read_dead_letter(&names, m)));
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let name = consumer.cached_info().name.clone();
        if let Err(e) = stream.delete_consumer(&name).await {
            tracing::debug!(error = %e, "NATS: could not delete a listing consumer");
        }
        match failure {
            Some(e) => Err(e),
            None => {
                out.truncate(limit);
                Ok(out)
            }
        }
    }

    async fn requeue_dead(&self, queue: &str, ids: &[JobId]) -> Result<usize, QueueError> {
        let names = self.names(queue)?;
        if ids.is_empty() || self.stream_messages(&names.dlq).await? == 0 {
            return Ok(0);
        }
        let st = self.state(queue).await?;
        let dlq = self
            .inner
            .js
            .get_stream_no_info(&names.dlq)
            .await
            .map_err(|e| QueueError::transient("NATS: dead-letter stream", e))?;
        let mut moved = 0;
        let mut seen = HashSet::new();
        for id in ids {
            if !envelope::is_job_id(id.as_str()) || !seen.insert(id.as_str()) {
                continue;
            }
            let m = match dlq
                .get_last_raw_message_by_subject(&names.dead(id.as_str()))
                .await
            {
                Ok(m) => m,
                Err(e)
                    if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
                {
                    continue;
                }
                Err(e) => return Err(QueueError::transient("NATS: read a dead letter", e)),
            };
            let job = match Job::decode(Some(&m.headers), m.payload.clone(), None, m.sequence) {
                Ok(job) => job,
                Err(_) => poison(m.sequence, m.payload.clone(), 0),
            };
            // A new message: fresh delivery count, a greater sequence (so greater tokens).
            let h = job.work_headers(Some(&format!("{}:r{}", job.id, m.sequence)), false)?;
            self.publish_acked(st.names.level(job.priority), h, job.payload.clone())
                .await?;
            match dlq.delete_message(m.sequence).await {
                Ok(_) => moved += 1,
                Err(e) => {
                    return Err(QueueError::transient(
                        "NATS: remove a requeued dead letter",
                        e,
                    ));
                }
            }
        }
        if moved > 0 {
            st.stale();
            self.wake(&st.names).await;
        }
        Ok(moved)
    }

    async fn stats(&self, queue: &str) -> Result<QueueStats, QueueError> {
        let names = self.names(queue)?;
        let mut stats = QueueStats::default();
        if let Some(counts) = self.subject_counts(&names).await? {
            let count = |s: &str| counts.get(s).copied().unwrap_or(0);
            stats.delayed = count(&names.delayed());
            for priority in 0..=crate::MAX_PRIORITY {
                let n = count(&names.level(priority));
                if n == 0 {
                    continue;
                }
                // From the consumer when there is one: it knows what is delivered, and
                // ignores acked messages a crashed server failed to delete (see
                // `repair_level`). Before the first dequeue, every message is ready.
                match self
                    .consumer_info(&names, &format!("level-{priority}"))
                    .await?
                {
                    Some(info) => {
                        stats.leased += info.num_ack_pending;
                        stats.ready += info.num_pending;
                    }
                    None => stats.ready += n,
                }
            }
        }
        stats.dead = self.stream_messages(&names.dlq).await?;
        Ok(stats)
    }
}

fn read_dead_letter(names: &Names, m: &jetstream::Message) -> DeadLetter {
    let h = m.headers.as_ref();
    let get = |name: &str| h.and_then(|h| h.get(name)).map(|v| v.as_str());
    let from_subject = m
        .subject
        .as_str()
        .strip_prefix(&format!("{}.dead.", names.base))
        .unwrap_or_default()
        .to_owned();
    let sseq = m.info().map_or(0, |i| i.stream_sequence);
    let job = Job::decode(h, m.payload.clone(), None, sseq).ok();
    let dead_at_ms: u64 = get(DEAD_AT).and_then(|v| v.parse().ok()).unwrap_or(0);
    DeadLetter {
        job_id: job
            .as_ref()
            .map_or_else(|| JobId(from_subject), |j| j.id.clone()),
        payload: m.payload.clone(),
        headers: job.as_ref().map(|j| j.headers.clone()).unwrap_or_default(),
        priority: job.as_ref().map_or(0, |j| j.priority),
        attempts: get(ATTEMPTS).and_then(|v| v.parse().ok()).unwrap_or(0),
        reason: envelope::read_text(get(REASON)),
        dead_at: UNIX_EPOCH + Duration::from_millis(dead_at_ms),
    }
}

/// A job made up for a message that does not decode, so it can be dead-lettered (and
/// inspected, and requeued) like any other. Its id names the message's stream sequence.
fn poison(stream_sequence: u64, payload: Bytes, priority: u8) -> Job {
    Job {
        id: JobId(format!("s{stream_sequence}")),
        payload,
        headers: BTreeMap::new(),
        priority,
        max_attempts: crate::DEFAULT_MAX_ATTEMPTS,
    }
}

/// Refuses ids that cannot be a subject token (a foreign publisher's header).
fn checked_id(job: Job) -> Result<Job, String> {
    if envelope::is_job_id(job.id.as_str()) {
        Ok(job)
    } else {
        Err(format!(
            "job id {:?} is not [A-Za-z0-9_-]{{1,64}}",
            job.id.as_str()
        ))
    }
}

fn not_found_or<T>(err: ApiError) -> Result<Option<T>, QueueError> {
    if err.code == 404 || topology::is_not_found(&err.description) {
        Ok(None)
    } else {
        Err(QueueError::Backend {
            message: format!("NATS API error {}: {}", err.code, err.description),
            retryable: err.code >= 500,
            source: None,
        })
    }
}

/// True for a publish failure worth another try: no answer in time, a broken connection,
/// "no responders" (the stream's server is (re)starting), too many acks in flight, and a
/// JetStream API error reply with a server-side code (>= 500: the server could not store
/// the message now, e.g. it is catching up or out of resources for a moment). A 4xx reply
/// (wrong expected sequence, a message the stream refuses) is final.
fn publish_transient(e: &PublishError) -> bool {
    match e.kind() {
        PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::MaxAckPending
        | PublishErrorKind::StreamNotFound => true,
        PublishErrorKind::Other => std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<jetstream::Error>())
            .is_some_and(|api| api.code() >= 500),
        _ => false,
    }
}

fn lease_lost(lease: &Lease) -> QueueError {
    QueueError::LeaseLost {
        job_id: lease.job_id.clone(),
        token: lease.token,
    }
}

/// Locks a std mutex, recovering from poisoning: the tables stay consistent (every
/// critical section is a single insert/remove), so a panic elsewhere must not take the
/// queue down with it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_grow_with_deliveries_and_sequences() {
        assert!(token(10, 2) > token(10, 1));
        assert!(token(11, 1) > token(10, 0xFFFF));
        assert_eq!(token(1, 1), 0x1_0001);
    }

    #[test]
    fn server_side_publish_errors_are_transient() {
        let api = |code: u16| {
            serde_json::from_value::<jetstream::Error>(serde_json::json!({
                "code": code, "err_code": 10008, "description": "temporarily unavailable"
            }))
            .map(|e| PublishError::with_source(PublishErrorKind::Other, e))
        };
        assert!(api(503).is_ok_and(|e| publish_transient(&e)));
        assert!(api(500).is_ok_and(|e| publish_transient(&e)));
        assert!(api(400).is_ok_and(|e| !publish_transient(&e)));
        assert!(!publish_transient(&PublishError::new(
            PublishErrorKind::Other
        )));
        assert!(publish_transient(&PublishError::new(
            PublishErrorKind::TimedOut
        )));
        assert!(!publish_transient(&PublishError::new(
            PublishErrorKind::WrongLastSequence
        )));
    }

    #[test]
    fn nak_bodies() {
        assert_eq!(nak(Duration::ZERO).as_ref(), b"-NAK");
        assert_eq!(
            nak(Duration::from_millis(5)).as_ref(),
            b"-NAK {\"delay\":5000000}"
        );
    }
}
