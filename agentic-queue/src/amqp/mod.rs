//! The RabbitMQ backend: [`AmqpQueue`], a [`TaskQueue`] over AMQP 0-9-1 with `lapin`, on
//! durable quorum queues with publisher confirms.
//!
//! # Topology (one queue `q`, names under [`AmqpQueueConfig::queue_prefix`], `agentic.`)
//!
//! Every message goes through the default exchange (it routes by queue name), so there are
//! no exchanges or bindings to declare or to get wrong; dead-lettering, too, targets the
//! default exchange with the destination queue's name as routing key.
//!
//! | queue | type | arguments | holds |
//! |---|---|---|---|
//! | `agentic.q` | quorum | `x-delivery-limit`, `x-dead-letter-exchange: ""`, `x-dead-letter-routing-key: agentic.q~dead`, `x-dead-letter-strategy: at-least-once`, `x-overflow: reject-publish` | jobs ready, and delivered but unacked (the leases) |
//! | `agentic.q~dead` | quorum | | dead letters, with the reason in headers |
//! | `agentic.q~delay~<ms>` | quorum | `x-message-ttl: <ms>`, dead-letter into `agentic.q` (at-least-once), `x-expires` | delayed jobs and retry backoffs, one queue per delay (rounded up to two significant digits) |
//! | `agentic.q~idem~<digest>` | classic | `x-max-length: 1`, `x-overflow: reject-publish`, `x-message-ttl` and `x-expires` from the dedupe window | the record of one idempotency key (only with [`AmqpQueueConfig::dedupe`] on) |
//! | `agentic.q~lease~<digest>` | quorum | dead-letter into `agentic.q` (at-least-once), `x-expires` | the copy of one lease parked past the broker's consumer timeout (per-message TTL) |
//!
//! # How the trait maps onto AMQP
//!
//! | operation | AMQP |
//! |---|---|
//! | `enqueue` | `basic.publish` (persistent, mandatory) on a confirm channel; returns once the broker confirmed every message |
//! | `dequeue` | one consumer per queue and process (`basic.qos` prefetch: the concurrency the process's workers said with `TaskQueue::consumer_concurrency`, else configured, 64 by default; experimentally derived from what the process asks for and holds); deliveries wait in a local buffer until a `dequeue` takes them, and go back (copy, then ack: no attempt counted) if they wait until near the broker's `consumer_timeout` |
//! | lease | the unacked delivery, plus a local expiry: an expired lease is `basic.nack`ed with requeue (or dead-lettered on its last attempt) |
//! | long lease | before the broker's `consumer_timeout` would close the channel, the lease is parked: a copy with a TTL, then ack (see `lease.rs`) |
//! | fencing | a lease is valid only while its delivery is unacked on the channel that received it; the token is `(epoch, attempt)` in the high bits and a per-process delivery number in the low ones |
//! | attempts | the quorum queue's `x-delivery-count` (every return) plus the deliveries of earlier copies (`x-agentic-attempts`) |
//! | `nack` retry | publish a copy (attempts, last error) to the delay queue, then ack the delivery |
//! | dead-letter | publish a copy with reason, attempts and time to the dead queue, then ack |
//! | `dead_letters` / `requeue_dead` | `basic.get` on the dead queue, then nack (requeue) what is kept |
//! | `stats` | `queue.declare` message counts, plus this process's buffer and leases |
//!
//! Every "copy, then ack" is ordered so that a crash in between duplicates a job, never
//! loses it.
//!
//! # Capabilities
//!
//! | capability | `AmqpQueue` |
//! |---|---|
//! | priorities | 1 level (FIFO): quorum queues have no priorities before RabbitMQ 4.0 (which has two, not ten); the job's priority is kept and delivered as given |
//! | delays | yes, on the broker's clock, rounded up to two significant digits of milliseconds, at most 49 days |
//! | dedupe | off by default (`idempotency: false`, keys ignored); with [`AmqpQueueConfig::dedupe`], one small classic queue per key for the window |
//! | max lease | unbounded (49 days): past the broker's `consumer_timeout` ([`AmqpQueueConfig::consumer_timeout`]) a lease is parked |
//! | persistence | quorum queues (Raft, fsynced); confirms only after a majority stored the message |
//! | waiting | pushed by the broker: a waiting `dequeue` wakes when a delivery arrives |
//!
//! See `docs/backends/amqp.md` for the server settings this relies on.

mod envelope;
mod lease;
mod link;
mod topology;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use lapin::Acker;
use lapin::message::Delivery as AmqpDelivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicQosOptions, QueuePurgeOptions,
};
use lapin::types::{FieldTable, ShortString};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use self::envelope::Job;
use self::lease::{Held, Place};
use self::link::{Confirmed, Connector, Outgoing, bounded, lock, map_err};
use self::topology::{MAX_DELAY, Names, QueueSpec, delay_bucket_ms};
use crate::{
    DeadLetter, Delivery, Enqueued, JobId, Lease, NackOutcome, NewJob, QueueCapabilities,
    QueueError, QueueStats, Retry, TaskQueue,
};

/// Settings of [`AmqpQueue`].
#[derive(Clone)]
#[non_exhaustive]
pub struct AmqpQueueConfig {
    /// `amqp://user:password@host:port/vhost` (the vhost URL-encoded, `%2f` for `/`).
    pub url: String,
    /// Starts every queue name, so several deployments can share a vhost.
    pub queue_prefix: String,
    /// The connection's name as shown by `rabbitmqctl list_connections name` (and closed
    /// by `rabbitmqctl close_all_connections` only if chosen so).
    pub connection_name: String,
    /// Largest payload accepted.
    pub max_payload_bytes: usize,
    /// Whether idempotency keys dedupe (off by default; see
    /// [`AmqpQueueConfig::dedupe`]). RabbitMQ has no dedupe of its own, so each key
    /// costs a small classic queue on the broker for [`AmqpQueueConfig::dedupe_window`],
    /// and a keyed enqueue a declare and a confirmed publish more. Off, keys are
    /// ignored: every job is new (its own id, `duplicate: false`) and
    /// [`TaskQueue::capabilities`] reports `idempotency: false`.
    pub dedupe: bool,
    /// How long an idempotency key dedupes when [`AmqpQueueConfig::dedupe`] is on (10
    /// minutes by default). The broker keeps one queue per key for this long (plus two
    /// minutes), so keep it as short as the use allows.
    pub dedupe_window: Duration,
    /// Most deliveries unacked on this process's consumer of one queue (`basic.qos`):
    /// the leases being worked on plus those waiting in the local buffer for a
    /// `dequeue`. `Some(64)` by default; size it with
    /// [`AmqpQueueConfig::prefetch_for_concurrency`] to the jobs this process runs at a
    /// time from the queue, so the buffer holds at most what the workers can take as
    /// their running jobs finish. `None` (experimental, not the default) derives it from
    /// the callers: the consumer is started with a prefetch equal to the jobs this
    /// process asks for and holds on that queue (the `max` of the `dequeue` calls in
    /// progress plus the leases held; a [worker](https://docs.rs/agentic-core) asks for
    /// its free concurrency, so this is its concurrency), and restarted on its channel
    /// with a larger one when that grows. In some test runs under load such a restart
    /// lost the leases of the channel (`LeaseLost`, the jobs delivered again), which is
    /// why it is not the default yet. A larger prefetch keeps jobs
    /// waiting in this process that idle processes could run, and every buffered
    /// delivery costs its job an attempt if the connection is lost. Buffered deliveries
    /// that near the broker's consumer timeout are handed back without costing an
    /// attempt (copy, then ack); leases parked past that timeout no longer count
    /// against the prefetch, so a worker busy with parked long tasks can have up to
    /// `prefetch` deliveries waiting.
    pub prefetch: Option<u16>,
    /// When a worker says how many jobs of a queue it runs at a time
    /// ([`TaskQueue::consumer_concurrency`], which `agentic-core`'s worker calls before it
    /// consumes), start that queue's consumer with that prefetch instead of
    /// [`AmqpQueueConfig::prefetch`]: derived from the worker's concurrency, so the process
    /// holds no more deliveries than it can run. On by default; [`AmqpQueueConfig::prefetch`]
    /// (the builder) turns it off. Said after the consumer started (a second worker started
    /// later in the same process), it does not change the running consumer: start workers
    /// before they consume, or fix the prefetch.
    pub prefetch_from_workers: bool,
    /// The quorum queue's `x-delivery-limit`: returns (lease expiries, lost consumers)
    /// after which the broker itself dead-letters a message. A backstop for jobs that kill
    /// their workers; `max_attempts` is enforced before it. Keep it above every job's
    /// `max_attempts`.
    pub delivery_limit: u32,
    /// The broker's delivery acknowledgement timeout (`consumer_timeout` in
    /// `rabbitmq.conf`, 30 minutes by default). A delivery unacked for longer closes its
    /// channel (returning every delivery on it), so a lease that must last longer is
    /// parked shortly before (a tenth, at most a minute): its job is copied into a queue
    /// of its own with a TTL and the delivery acked. Set this to the server's value; a
    /// value larger than the server's loses leases, a smaller one parks sooner than
    /// needed.
    pub consumer_timeout: Duration,
    /// Sets `x-consumer-timeout` to [`AmqpQueueConfig::consumer_timeout`] on every
    /// consumer. Only RabbitMQ 3.12 and newer honour it (3.11.15 for the queue argument);
    /// older servers ignore it, and then the server-wide setting applies.
    pub consumer_timeout_argument: bool,
    /// `x-expires` of the work and dead queues: the broker deletes them after this long
    /// without consumers or declares. `None` (the default) keeps them forever.
    pub queue_expires: Option<Duration>,
    /// Timeout of one connection attempt.
    pub connect_timeout: Duration,
    /// How long an operation keeps reconnecting after the connection was lost.
    pub reconnect_timeout: Duration,
    /// How long a publish waits for the broker's confirm (a memory alarm blocks
    /// publishers; this turns the block into an error).
    pub confirm_timeout: Duration,
    /// Tries of one publish whose confirm was lost with the connection.
    pub retries: u32,
    /// How often expired leases are looked for (and nacked).
    pub reap_interval: Duration,
}

impl std::fmt::Debug for AmqpQueueConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpQueueConfig")
            .field("url", &redact(&self.url))
            .field("queue_prefix", &self.queue_prefix)
            .field("connection_name", &self.connection_name)
            .field("max_payload_bytes", &self.max_payload_bytes)
            .field("dedupe", &self.dedupe)
            .field("dedupe_window", &self.dedupe_window)
            .field("prefetch", &self.prefetch)
            .field("delivery_limit", &self.delivery_limit)
            .field("consumer_timeout", &self.consumer_timeout)
            .field("consumer_timeout_argument", &self.consumer_timeout_argument)
            .field("queue_expires", &self.queue_expires)
            .field("connect_timeout", &self.connect_timeout)
            .field("reconnect_timeout", &self.reconnect_timeout)
            .field("confirm_timeout", &self.confirm_timeout)
            .field("retries", &self.retries)
            .field("reap_interval", &self.reap_interval)
            .finish()
    }
}

/// The URL without its password, for logs and `Debug`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:***@{host}{}", &rest[authority_end..])
        }
        None => url.to_owned(),
    }
}

impl AmqpQueueConfig {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        AmqpQueueConfig {
            url: url.into(),
            queue_prefix: "agentic.".to_owned(),
            connection_name: "agentic-queue".to_owned(),
            max_payload_bytes: 8 * 1024 * 1024,
            dedupe: false,
            dedupe_window: Duration::from_secs(600),
            prefetch: Some(64),
            prefetch_from_workers: true,
            delivery_limit: 50,
            consumer_timeout: Duration::from_secs(30 * 60),
            consumer_timeout_argument: false,
            queue_expires: None,
            connect_timeout: Duration::from_secs(5),
            reconnect_timeout: Duration::from_secs(30),
            confirm_timeout: Duration::from_secs(30),
            retries: 8,
            reap_interval: Duration::from_millis(50),
        }
    }

    /// Sets the queue-name prefix.
    pub fn queue_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.queue_prefix = prefix.into();
        self
    }

    /// Sets the connection name.
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = name.into();
        self
    }

    /// Fixes the prefetch (most deliveries unacked per queue on this process's consumer)
    /// instead of deriving it from the callers (see [`AmqpQueueConfig::prefetch`]).
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = Some(prefetch.max(1));
        self.prefetch_from_workers = false;
        self
    }

    /// Turns dedupe by idempotency key on, with the given window (see
    /// [`AmqpQueueConfig::dedupe`]).
    pub fn dedupe(mut self, window: Duration) -> Self {
        self.dedupe = true;
        self.dedupe_window = window;
        self
    }

    /// Sets the prefetch for a process that runs `concurrency` jobs of one queue at a
    /// time (see [`AmqpQueueConfig::prefetch`]): at least 1, at most `u16::MAX`.
    pub fn prefetch_for_concurrency(mut self, concurrency: usize) -> Self {
        self.prefetch = Some(u16::try_from(concurrency.max(1)).unwrap_or(u16::MAX));
        self.prefetch_from_workers = false;
        self
    }

    /// The longest lease: the broker's consumer timeout minus a margin (a tenth, at most
    /// a minute) for clock skew and the time a nack takes to arrive.
    fn max_lease(&self) -> Duration {
        let margin = (self.consumer_timeout / 10).min(Duration::from_secs(60));
        self.consumer_timeout.saturating_sub(margin)
    }
}

/// A [`TaskQueue`] on RabbitMQ 3.10 or newer. See the [module docs](self).
///
/// Cheap to clone: clones share one connection, its consumers and its leases.
#[derive(Clone)]
pub struct AmqpQueue {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AmqpQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpQueue")
            .field("queue_prefix", &self.inner.config.queue_prefix)
            .field("generation", &self.inner.connector.generation())
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: Arc<AmqpQueueConfig>,
    connector: Connector,
    /// Per queue: consumer, buffer and leases. A std mutex: held only to look up.
    queues: Mutex<HashMap<String, Arc<QueueState>>>,
    /// The low half of every token: distinct for every delivery this process hands out,
    /// so two copies of one job (a publish retried after a lost confirm) never share a
    /// lease.
    deliveries: AtomicU64,
    reaper: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(reaper) = lock(&self.reaper).take() {
            reaper.abort();
        }
        for state in lock(&self.queues).values() {
            state.stop_consumer();
        }
        // Closing the connection returns every unacked delivery to its queue now, rather
        // than when the broker notices the socket is gone.
        self.connector.close();
    }
}

/// What one process holds for one queue.
struct QueueState {
    names: Names,
    /// Deliveries pushed by the broker that no `dequeue` took yet. A std mutex: never
    /// held across an await.
    buffer: Mutex<VecDeque<(Instant, AmqpDelivery)>>,
    /// Wakes waiting `dequeue`s when the buffer grows or the consumer stops.
    arrived: Notify,
    /// The leases handed out, by (job, token).
    leases: Mutex<HashMap<(JobId, u64), Held>>,
    /// Leases taken out of `leases` while they move (parked, or their parked copy
    /// renewed; see `lease`): an operation on one waits for the move to end instead of
    /// taking the lease for lost. Locked after `leases` when both are.
    moving: Mutex<HashSet<(JobId, u64)>>,
    /// Wakes operations waiting for a move to end.
    moved: Notify,
    consumer: Mutex<Option<ConsumerRun>>,
    /// Serialises consumer restarts (held across the awaits of a restart).
    starting: tokio::sync::Mutex<()>,
    /// Delay buckets (ms) used through this process: the delay queues `stats` counts.
    delays: Mutex<BTreeSet<u64>>,
    /// Idempotency record queues used through this process, for `delete_queue`.
    records: Mutex<BTreeSet<String>>,
    /// Park queues of this process's leases (see `lease`) not known to be deleted, for
    /// `delete_queue`.
    parked: Mutex<BTreeSet<String>>,
    /// Deliveries received by this queue's consumers so far.
    received: AtomicU64,
    /// The `max` of the `dequeue` calls in progress, summed.
    asking: AtomicUsize,
    /// The most jobs this process asked for and held at once (see
    /// [`AmqpQueueConfig::prefetch`]): the prefetch when it is derived.
    wanted: AtomicUsize,
    /// The concurrency workers of this process said they run this queue with
    /// ([`TaskQueue::consumer_concurrency`]), summed.
    workers: AtomicUsize,
}

struct ConsumerRun {
    channel: lapin::Channel,
    /// The broker's name of the consumer, to cancel it.
    tag: ShortString,
    /// Its `basic.qos` prefetch.
    prefetch: u16,
    task: JoinHandle<()>,
    /// The backlog the queue reported when the consumer started arrives in a burst
    /// right after; until it has (or this deadline passes) a `dequeue` that got fewer
    /// than `max` waits for the rest rather than return a short batch.
    primed_until: Instant,
    /// `received` once that backlog (up to the prefetch) has arrived.
    primed_total: u64,
}

impl ConsumerRun {
    fn running(&self) -> bool {
        !self.task.is_finished() && self.channel.status().connected()
    }
}

/// How long a fresh consumer's backlog may take to arrive before `dequeue` stops waiting
/// for it.
const PRIMING: Duration = Duration::from_millis(250);

impl QueueState {
    fn new(names: Names) -> Self {
        QueueState {
            names,
            buffer: Mutex::new(VecDeque::new()),
            arrived: Notify::new(),
            leases: Mutex::new(HashMap::new()),
            moving: Mutex::new(HashSet::new()),
            moved: Notify::new(),
            consumer: Mutex::new(None),
            starting: tokio::sync::Mutex::new(()),
            delays: Mutex::new(BTreeSet::new()),
            records: Mutex::new(BTreeSet::new()),
            parked: Mutex::new(BTreeSet::new()),
            received: AtomicU64::new(0),
            asking: AtomicUsize::new(0),
            wanted: AtomicUsize::new(0),
            workers: AtomicUsize::new(0),
        }
    }

    /// The deadline until which a short batch should wait for the consumer's initial
    /// backlog, if it is still arriving.
    fn priming_until(&self, now: Instant) -> Option<Instant> {
        let consumer = lock(&self.consumer);
        let run = consumer.as_ref()?;
        (run.primed_until > now && self.received.load(Ordering::Acquire) < run.primed_total)
            .then_some(run.primed_until)
    }

    /// The consumer's prefetch, if it runs.
    fn running_prefetch(&self) -> Option<u16> {
        lock(&self.consumer)
            .as_ref()
            .filter(|run| run.running())
            .map(|run| run.prefetch)
    }

    /// Records that a `dequeue` asks for `max` jobs until the guard is dropped, and
    /// raises `wanted` to what this process now asks for and holds.
    fn ask(&self, max: usize) -> Asking<'_> {
        let asking = self
            .asking
            .fetch_add(max, Ordering::AcqRel)
            .saturating_add(max);
        let held = {
            let leases = lock(&self.leases);
            leases.len() + lock(&self.moving).len()
        };
        self.wanted
            .fetch_max(asking.saturating_add(held), Ordering::AcqRel);
        Asking { state: self, max }
    }

    fn stop_consumer(&self) {
        if let Some(run) = lock(&self.consumer).take() {
            close_consumer(run.channel, run.task, "consumer stopped");
        }
    }

    /// Takes out of the buffer, oldest first, the deliveries whose broker deadline
    /// (`max_lease` after they arrived) falls at or before `by`; those whose channel
    /// closed are dropped (the broker has them back already).
    fn take_aged(&self, max_lease: Duration, by: Instant) -> Vec<(Instant, AmqpDelivery)> {
        let mut buffer = lock(&self.buffer);
        let mut aged = Vec::new();
        // Arrival order: the oldest are at the front.
        while buffer
            .front()
            .is_some_and(|(received, _)| crate::later(*received, max_lease) <= by)
        {
            if let Some((received, d)) = buffer.pop_front()
                && d.acker.usable()
            {
                aged.push((received, d));
            }
        }
        aged
    }

    /// Returns deliveries taken by [`QueueState::take_aged`] to the front of the buffer,
    /// in their order.
    fn put_back(&self, aged: Vec<(Instant, AmqpDelivery)>) {
        if aged.is_empty() {
            return;
        }
        {
            let mut buffer = lock(&self.buffer);
            for entry in aged.into_iter().rev() {
                buffer.push_front(entry);
            }
        }
        self.arrived.notify_waiters();
    }

    /// Deliveries unacked on the consumer's channel as far as this process knows: the
    /// buffer and the leases not parked.
    fn unacked(&self) -> u64 {
        let leased = lock(&self.leases)
            .values()
            .filter(|h| matches!(h.place, Place::Delivered { .. }) && h.usable())
            .count() as u64;
        leased + self.buffered()
    }

    /// Deliveries in the buffer that can still be acked (their channel is open).
    fn buffered(&self) -> u64 {
        lock(&self.buffer)
            .iter()
            .filter(|(_, d)| d.acker.usable())
            .count() as u64
    }
}

/// Closes a consumer's channel, then ends its task.
///
/// In this order: aborting the task first drops the lapin consumer, whose drop sends a
/// `basic.cancel` while the channel looks open; that frame could reach the broker after
/// the `channel.close`, and a frame on a closed channel is a connection error ("expected
/// 'channel.open'") that closes every channel of the connection, leases and all. Seen in
/// the broker's log while the tests ran.
fn close_consumer(channel: lapin::Channel, task: JoinHandle<()>, why: &'static str) {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn(async move {
                let _ = channel.close(200, why.into()).await;
                task.abort();
            });
        }
        Err(_) => task.abort(),
    }
}

/// A `dequeue` in progress, counted in [`QueueState::asking`] until dropped.
struct Asking<'a> {
    state: &'a QueueState,
    max: usize,
}

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        self.state.asking.fetch_sub(self.max, Ordering::AcqRel);
    }
}

/// A job handed to `dequeue`'s caller, or a message that has to be dealt with first.
enum Admitted {
    Deliver(Delivery),
    /// Over its attempts (its last holder died) or undecodable: dead-letter it.
    DeadLetter {
        acker: Acker,
        job: Job,
        payload: Bytes,
        attempts: u32,
        reason: String,
    },
}

impl AmqpQueue {
    /// Connects with default settings.
    pub async fn connect(url: &str) -> Result<Self, QueueError> {
        Self::connect_with(AmqpQueueConfig::new(url)).await
    }

    /// Connects with the given settings. A broker that cannot be reached now is an error;
    /// a connection lost later is re-established by the operations that need it.
    pub async fn connect_with(config: AmqpQueueConfig) -> Result<Self, QueueError> {
        let config = Arc::new(config);
        let connector = Connector::new(config.clone());
        connector.connect_first().await?;
        let inner = Arc::new(Inner {
            config,
            connector,
            queues: Mutex::new(HashMap::new()),
            deliveries: AtomicU64::new(0),
            reaper: Mutex::new(None),
        });
        let reaper = tokio::spawn(reap(Arc::downgrade(&inner)));
        *lock(&inner.reaper) = Some(reaper);
        Ok(AmqpQueue { inner })
    }

    /// Deletes everything the backend made for `queue` on the broker (work and dead
    /// queues, and the delay and idempotency queues this process used), with their
    /// messages. For tests and decommissioning; leases held on it are lost.
    pub async fn delete_queue(&self, queue: &str) -> Result<(), QueueError> {
        let state = self.inner.state(queue)?;
        state.stop_consumer();
        lock(&state.buffer).clear();
        lock(&state.leases).clear();
        // Queues that dead-letter into the work queue go first: a message they moved
        // into a deleted work queue would wait for it (at-least-once) until they expire.
        let mut names: Vec<String> = lock(&state.parked).iter().cloned().collect();
        for ms in lock(&state.delays).iter() {
            names.push(state.names.delay(*ms).name().to_owned());
        }
        names.extend(lock(&state.records).iter().cloned());
        names.push(state.names.work.clone());
        names.push(state.names.dead.clone());
        // Every queue is tried, each twice (a quorum queue's delete can time out under
        // load); the first error is reported after all were tried.
        let mut first_error = None;
        for name in names {
            let mut outcome = Ok(0);
            for _ in 0..2 {
                outcome = self.inner.delete(&name).await;
                if outcome.is_ok() {
                    break;
                }
            }
            if let Err(e) = outcome {
                first_error.get_or_insert(e);
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        lock(&self.inner.queues).remove(queue);
        Ok(())
    }
}

impl Inner {
    fn state(&self, queue: &str) -> Result<Arc<QueueState>, QueueError> {
        let mut queues = lock(&self.queues);
        if let Some(s) = queues.get(queue) {
            return Ok(s.clone());
        }
        let names = Names::new(&self.config, queue)?;
        let state = Arc::new(QueueState::new(names));
        queues.insert(queue.to_owned(), state.clone());
        Ok(state)
    }

    async fn publish(&self, messages: &[Outgoing]) -> Result<Vec<Confirmed>, QueueError> {
        link::publish(&self.connector, &self.config, messages).await
    }

    /// Publishes messages that must be stored: a nack is an error.
    async fn publish_all(&self, messages: &[Outgoing]) -> Result<(), QueueError> {
        let confirms = self.publish(messages).await?;
        if let Some(i) = confirms.iter().position(|c| *c == Confirmed::Nack) {
            return Err(QueueError::Backend {
                message: format!(
                    "RabbitMQ refused (nacked) a publish to {}: it was not stored",
                    messages[i].queue.name()
                ),
                retryable: true,
                source: None,
            });
        }
        Ok(())
    }

    /// The prefetch the queue's consumer should have: the configured one, or what this
    /// process asks for and holds (see [`AmqpQueueConfig::prefetch`]).
    fn prefetch_for(&self, state: &QueueState) -> u16 {
        if let Some(workers) = self.workers_prefetch(state) {
            return workers;
        }
        self.config
            .prefetch
            .unwrap_or_else(|| {
                u16::try_from(state.wanted.load(Ordering::Acquire)).unwrap_or(u16::MAX)
            })
            .max(1)
    }

    /// The prefetch the workers of this process asked for with
    /// [`TaskQueue::consumer_concurrency`], when they did and the configuration lets them.
    fn workers_prefetch(&self, state: &QueueState) -> Option<u16> {
        let workers = state.workers.load(Ordering::Acquire);
        (self.config.prefetch_from_workers && workers > 0)
            .then(|| u16::try_from(workers).unwrap_or(u16::MAX).max(1))
    }

    /// Starts the queue's consumer unless it runs, and restarts it with a larger prefetch
    /// when the derived one grew. A prefetch the workers gave is taken when the consumer
    /// starts and never restarts it.
    async fn ensure_consumer(&self, state: &Arc<QueueState>) -> Result<(), QueueError> {
        let running = state.running_prefetch();
        if running.is_some() && self.workers_prefetch(state).is_some() {
            return Ok(());
        }
        if running.is_some_and(|p| p >= self.prefetch_for(state)) {
            return Ok(());
        }
        let _starting = state.starting.lock().await;
        let prefetch = self.prefetch_for(state);
        if let Some(running) = state.running_prefetch()
            && (running >= prefetch || self.raise_prefetch(state, prefetch).await?)
        {
            return Ok(());
        }
        state.stop_consumer();
        // Deliveries of the old channel went back to the queue with it.
        lock(&state.buffer).retain(|(_, d)| d.acker.usable());
        let link = self.connector.get().await?;
        let backlog = link.declare(&state.names.work_spec(), &self.config).await?;
        let channel = bounded("open a consumer channel", link.connection.create_channel()).await?;
        let primed_total =
            state.received.load(Ordering::Acquire) + u64::from(backlog.min(u32::from(prefetch)));
        self.consume_on(state, channel, prefetch, primed_total)
            .await
    }

    /// Starts a consumer on `channel` with `prefetch` (`basic.qos` applies to the
    /// consumers a channel starts after it) and the task that moves its deliveries into
    /// the buffer.
    async fn consume_on(
        &self,
        state: &Arc<QueueState>,
        channel: lapin::Channel,
        prefetch: u16,
        primed_total: u64,
    ) -> Result<(), QueueError> {
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| map_err("set the prefetch", e))?;
        let mut args = FieldTable::default();
        if self.config.consumer_timeout_argument {
            args.insert(
                "x-consumer-timeout".into(),
                lapin::types::AMQPValue::LongLongInt(
                    i64::try_from(topology::millis(self.config.consumer_timeout))
                        .unwrap_or(i64::MAX),
                ),
            );
        }
        let consumer = channel
            .basic_consume(
                ShortString::from(state.names.work.as_str()),
                ShortString::from(""),
                BasicConsumeOptions::default(),
                args,
            )
            .await
            .map_err(|e| map_err("start a consumer", e))?;
        let tag = consumer.tag();
        let task = tokio::spawn(consume(Arc::downgrade(state), consumer));
        *lock(&state.consumer) = Some(ConsumerRun {
            channel,
            tag,
            prefetch,
            task,
            primed_until: Instant::now() + PRIMING,
            primed_total,
        });
        Ok(())
    }

    /// Replaces the running consumer by one with a larger prefetch, on the same channel.
    ///
    /// A live consumer's prefetch cannot be raised (`basic.qos` with `global = false`
    /// applies to consumers started after it; the per-channel `global = true` is refused
    /// by quorum queues), so the consumer is cancelled and started again. The channel
    /// stays open: what it delivered stays unacked on it, so the leases and the buffer
    /// keep their deliveries (no attempt counted, nothing redelivered). The old
    /// consumer's task ends once the broker confirmed the cancel, after every delivery
    /// sent before it reached the buffer; only then does the new consumer start, so
    /// arrival order is kept. False when the old consumer could not be cancelled
    /// cleanly: the caller then starts over on a new channel.
    async fn raise_prefetch(
        &self,
        state: &Arc<QueueState>,
        prefetch: u16,
    ) -> Result<bool, QueueError> {
        // Taken out: whoever looks meanwhile finds no consumer and waits for `starting`,
        // which the caller holds.
        let Some(run) = lock(&state.consumer).take() else {
            return Ok(false);
        };
        let ConsumerRun {
            channel,
            tag,
            mut task,
            ..
        } = run;
        let give_up = |task: JoinHandle<()>, channel: lapin::Channel| {
            close_consumer(channel, task, "consumer restarted");
            false
        };
        if let Err(e) = channel
            .basic_cancel(tag, BasicCancelOptions::default())
            .await
        {
            tracing::warn!(queue = %state.names.queue, error = %e, "could not cancel the consumer to raise its prefetch; starting over");
            return Ok(give_up(task, channel));
        }
        if tokio::time::timeout(self.config.confirm_timeout, &mut task)
            .await
            .is_err()
            || !channel.status().connected()
        {
            tracing::warn!(queue = %state.names.queue, "the cancelled consumer did not end cleanly; starting over");
            return Ok(give_up(task, channel));
        }
        // Like a fresh consumer, the new one is sent a burst of what is ready (up to its
        // credit): a `dequeue` waits briefly for it rather than return a short batch.
        let backlog = match self.connector.get().await {
            Ok(link) => link
                .declare(&state.names.work_spec(), &self.config)
                .await
                .unwrap_or(0),
            Err(_) => 0,
        };
        let primed_total =
            state.received.load(Ordering::Acquire) + u64::from(backlog.min(u32::from(prefetch)));
        match self
            .consume_on(state, channel.clone(), prefetch, primed_total)
            .await
        {
            Ok(()) => {
                tracing::debug!(queue = %state.names.queue, prefetch, "consumer restarted with a larger prefetch");
                Ok(true)
            }
            Err(e) => {
                let _ = channel.close(200, "consumer restarted".into()).await;
                Err(e)
            }
        }
    }

    /// Takes up to `max` deliveries from the buffer and turns them into leases.
    fn take(
        self: &Arc<Self>,
        state: &Arc<QueueState>,
        max: usize,
        lease: Duration,
        started: Instant,
    ) -> Vec<Admitted> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some((received, d)) = lock(&state.buffer).pop_front() else {
                break;
            };
            if !d.acker.usable() {
                // Its channel closed: the broker already put it back in the queue.
                continue;
            }
            out.push(self.admit(state, d, received, lease, started));
        }
        out
    }

    fn admit(
        self: &Arc<Self>,
        state: &Arc<QueueState>,
        d: AmqpDelivery,
        received: Instant,
        lease: Duration,
        started: Instant,
    ) -> Admitted {
        if let Some(park_queue) = envelope::park_queue(&d.properties) {
            // A parked lease's copy came back: its worker is gone.
            self.forget_park_queue(state, park_queue);
        }
        let payload = Bytes::from(d.data);
        let (job, attempt, last_error) = match inspect(&d.properties, d.delivery_tag) {
            Inspected::Job {
                job,
                attempt,
                last_error,
            } => (job, attempt, last_error),
            Inspected::Dead {
                job,
                attempts,
                reason,
            } => {
                return Admitted::DeadLetter {
                    acker: d.acker,
                    job,
                    payload,
                    attempts,
                    reason,
                };
            }
        };
        let serial = self.deliveries.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff;
        let token = (u64::from(job.epoch.min(0xffff)) << 48)
            | (u64::from(attempt.min(0xffff)) << 32)
            | serial;
        let expires_at = crate::later(started, lease);
        let delivery = Delivery {
            lease: Lease {
                queue: state.names.queue.clone(),
                job_id: job.id.clone(),
                token,
                expires_at,
            },
            payload: payload.clone(),
            headers: job.headers.clone(),
            priority: job.priority,
            attempt,
            max_attempts: job.max_attempts,
            last_error,
        };
        lock(&state.leases).insert(
            (job.id.clone(), token),
            Held {
                place: Place::Delivered {
                    acker: d.acker,
                    // The broker's timer started when it sent the delivery.
                    deadline: crate::later(received, self.config.max_lease()),
                },
                job,
                payload,
                attempt,
                expires_at,
            },
        );
        Admitted::Deliver(delivery)
    }

    /// Claims the idempotency keys of a batch at once: one record per distinct key,
    /// published together (one wait for all their confirms). A confirm means the key was
    /// free and is now held for the window; a nack (the record queue is full) that
    /// another job holds it. A later job of the batch with the key of an earlier one is
    /// a duplicate of it.
    async fn claim_keys(
        &self,
        state: &QueueState,
        jobs: &[NewJob],
        ids: &[JobId],
    ) -> Result<Claims, QueueError> {
        let mut claims = Claims::default();
        let mut first: HashMap<&str, usize> = HashMap::new();
        let mut records = Vec::new();
        let mut owners = Vec::new();
        for (i, job) in jobs.iter().enumerate() {
            let Some(key) = job.idempotency_key.as_deref() else {
                continue;
            };
            if first.insert(key, i).is_some() {
                claims.duplicate.insert(i);
                continue;
            }
            let spec = state.names.idempotency(key);
            lock(&state.records).insert(spec.name().to_owned());
            records.push(Outgoing {
                queue: spec,
                payload: Bytes::copy_from_slice(ids[i].as_str().as_bytes()),
                properties: lapin::BasicProperties::default().with_delivery_mode(2),
            });
            owners.push(i);
        }
        if records.is_empty() {
            return Ok(claims);
        }
        let confirms = self.publish(&records).await?;
        for ((record, i), confirm) in records.into_iter().zip(owners).zip(confirms) {
            if confirm == Confirmed::Ack {
                claims.claimed.push(record.queue);
            } else {
                claims.duplicate.insert(i);
            }
        }
        Ok(claims)
    }

    /// Undoes claimed keys after the jobs could not be published, so a retry of the
    /// enqueue is not taken for a duplicate. Best effort: a failure leaves the key
    /// claimed until the window ends (logged).
    async fn release_keys(&self, specs: &[QueueSpec]) {
        let Ok(link) = self.connector.get().await else {
            return;
        };
        let Ok(admin) = link.admin().await else {
            return;
        };
        for spec in specs {
            if let Err(e) = admin
                .queue_purge(ShortString::from(spec.name()), QueuePurgeOptions::default())
                .await
            {
                tracing::warn!(error = %e, record = spec.name(), "could not release an idempotency key");
            }
        }
    }
}

/// The outcome of [`Inner::claim_keys`].
#[derive(Default)]
struct Claims {
    /// Record queues of the keys this batch claimed (released if the jobs cannot be
    /// published).
    claimed: Vec<QueueSpec>,
    /// Jobs (by index) whose key another job holds: not published.
    duplicate: HashSet<usize>,
}

/// What a delivered message is, before it is handed out.
enum Inspected {
    /// A job on its `attempt`-th delivery.
    Job {
        job: Job,
        attempt: u32,
        /// What the worker is told went wrong last time.
        last_error: Option<String>,
    },
    /// Over its attempts (its last holder died) or undecodable: dead-letter it.
    Dead {
        job: Job,
        attempts: u32,
        reason: String,
    },
}

/// Reads a delivered message: its job, which attempt this delivery is (the deliveries of
/// earlier copies plus the broker's returns of this one, plus one), or why it has to be
/// dead-lettered instead.
fn inspect(props: &lapin::BasicProperties, delivery_tag: u64) -> Inspected {
    let returns = envelope::delivery_count(props);
    let job = match Job::parse(props, delivery_tag) {
        Ok(job) => job,
        Err(reason) => {
            let job = Job::new(
                props
                    .message_id()
                    .as_ref()
                    .map(|id| JobId(id.as_str().to_owned()))
                    .unwrap_or_else(|| JobId(format!("amqp-{:016x}", fastrand::u64(..)))),
                &NewJob::new(Bytes::new()),
            );
            return Inspected::Dead {
                job,
                attempts: returns + 1,
                reason: format!("undecodable job: {reason}"),
            };
        }
    };
    let attempt = job.prior_attempts.saturating_add(returns).saturating_add(1);
    if attempt > job.max_attempts {
        // Its last holder went away with the delivery unacked (process died, connection
        // lost) on the last permitted attempt.
        let spent = attempt - 1;
        return Inspected::Dead {
            reason: format!("lease expired after {spent} {}", noun(spent)),
            attempts: spent,
            job,
        };
    }
    let last_error = if returns > 0 {
        // Returned unacked since this copy was published: the lease ran out (here or with
        // a process or connection that is gone).
        Some(format!("lease expired on attempt {}", attempt - 1))
    } else {
        job.last_error.clone()
    };
    Inspected::Job {
        job,
        attempt,
        last_error,
    }
}

/// The consumer task: moves deliveries into the buffer until the channel ends.
async fn consume(state: Weak<QueueState>, mut consumer: lapin::Consumer) {
    while let Some(item) = consumer.next().await {
        let Some(state) = state.upgrade() else {
            return;
        };
        match item {
            Ok(delivery) => {
                let was_empty = {
                    let mut buffer = lock(&state.buffer);
                    buffer.push_back((Instant::now(), delivery));
                    buffer.len() == 1
                };
                state.received.fetch_add(1, Ordering::AcqRel);
                // Only an empty buffer has waiters (a `dequeue` waits only after finding it
                // empty, and registers before it looks); they were all woken by the push
                // that made it non-empty. Waking them per delivery would cost a wake-up
                // of every waiting task per message.
                if was_empty {
                    state.arrived.notify_waiters();
                }
            }
            Err(e) => {
                tracing::warn!(queue = %state.names.queue, error = %e, "consumer stopped");
                break;
            }
        }
    }
    // Wake waiting dequeues so they restart the consumer (and reconnect if needed).
    if let Some(state) = state.upgrade() {
        state.arrived.notify_waiters();
    }
}

/// The lease reaper: returns jobs whose lease ran out, parks long leases and hands back
/// buffered deliveries before the broker's consumer timeout.
async fn reap(inner: Weak<Inner>) {
    loop {
        let interval = match inner.upgrade() {
            Some(inner) => {
                inner.reap_once().await;
                inner.config.reap_interval
            }
            None => return,
        };
        tokio::time::sleep(interval).await;
    }
}

#[async_trait]
impl TaskQueue for AmqpQueue {
    fn capabilities(&self) -> QueueCapabilities {
        let mut caps = QueueCapabilities::full(self.inner.config.max_payload_bytes);
        // Quorum queues have no priorities before RabbitMQ 4.0 (which has two levels, not ten).
        caps.priority_levels = 1;
        // A lease that must outlive the broker's consumer timeout is parked (see `lease`)
        // under a message TTL, which RabbitMQ caps at 32 bits of milliseconds: one lease is
        // at most `MAX_DELAY`, and `extend_lease` renews it for as long as the job runs.
        caps.max_lease = Some(MAX_DELAY);
        // Off by default: see `AmqpQueueConfig::dedupe`.
        caps.idempotency = self.inner.config.dedupe;
        caps
    }

    fn consumer_concurrency(&self, queue: &str, concurrency: usize) {
        // A name the queue refuses is reported by the first `dequeue`.
        if let Ok(state) = self.inner.state(queue) {
            state.workers.fetch_add(concurrency, Ordering::AcqRel);
        }
    }

    async fn enqueue_batch(
        &self,
        queue: &str,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<Enqueued>, QueueError> {
        let inner = &self.inner;
        let state = inner.state(queue)?;
        for job in &jobs {
            job.validate(inner.config.max_payload_bytes)?;
            if job.delay > MAX_DELAY {
                return Err(QueueError::InvalidJob(format!(
                    "delay {:?} is longer than RabbitMQ's message TTL allows ({MAX_DELAY:?})",
                    job.delay
                )));
            }
        }
        let dedupe = inner.config.dedupe;
        let ids: Vec<JobId> = jobs
            .iter()
            .map(|job| match &job.idempotency_key {
                // Derived from the key, so a duplicate can answer with the original's id
                // without reading the broker's record back.
                Some(key) if dedupe => {
                    JobId(format!("key-{}", topology::key_id(&state.names.work, key)))
                }
                // Without dedupe a keyed job gets an id of its own, like any job: two jobs
                // of one key are two jobs, and a consumer that tells a duplicate by its id
                // (the orchestrator's task records do) sees them as two.
                _ => JobId(new_id()),
            })
            .collect();
        let claims = if dedupe {
            inner.claim_keys(&state, &jobs, &ids).await?
        } else {
            Claims::default()
        };
        let mut out = Vec::with_capacity(jobs.len());
        let mut messages = Vec::with_capacity(jobs.len());
        for (i, (job, id)) in jobs.iter().zip(ids).enumerate() {
            if claims.duplicate.contains(&i) {
                out.push(Enqueued {
                    id,
                    duplicate: true,
                });
                continue;
            }
            let bucket = delay_bucket_ms(job.delay);
            let target = if bucket == 0 {
                state.names.work_spec()
            } else {
                lock(&state.delays).insert(bucket);
                state.names.delay(bucket)
            };
            messages.push(Outgoing {
                queue: target,
                payload: job.payload.clone(),
                properties: Job::new(id.clone(), job).properties()?,
            });
            out.push(Enqueued {
                id,
                duplicate: false,
            });
        }
        if let Err(e) = inner.publish_all(&messages).await {
            inner.release_keys(&claims.claimed).await;
            return Err(e);
        }
        Ok(out)
    }

    async fn dequeue(
        &self,
        queue: &str,
        max: usize,
        lease: Duration,
        wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        let inner = &self.inner;
        let state = inner.state(queue)?;
        if lease > MAX_DELAY {
            return Err(lease::lease_too_long(lease));
        }
        if max == 0 {
            return Ok(Vec::new());
        }
        // Counted while this call runs: what the process asks for sizes a derived prefetch.
        let _asking = state.ask(max);
        let started = Instant::now();
        let deadline = crate::later(started, wait);
        let mut out = Vec::new();
        let mut pause = Duration::from_millis(50);
        loop {
            if let Err(e) = inner.ensure_consumer(&state).await {
                // What was taken already is leased: hand it out, report the fault next time.
                if !out.is_empty() {
                    return Ok(out);
                }
                // A connection that died under the call (closed by the broker between the
                // check and the declare) is replaced on the next round: inside the wait,
                // such a fault is waited out like an empty queue.
                if e.is_retryable() && Instant::now() + pause < deadline {
                    tracing::debug!(queue = %state.names.queue, error = %e, "consumer not ready; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                    continue;
                }
                return Err(e);
            }
            // Registered before looking at the buffer, so an arrival between the look and
            // the wait is not missed.
            let arrived = state.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            for admitted in inner.take(&state, max - out.len(), lease, started) {
                match admitted {
                    Admitted::Deliver(d) => out.push(d),
                    Admitted::DeadLetter {
                        acker,
                        job,
                        payload,
                        attempts,
                        reason,
                    } => {
                        // On failure the delivery was given back to the queue; the jobs
                        // already taken are still handed out rather than left to expire.
                        if let Err(e) = inner
                            .dead_letter_delivery(&state, &acker, &job, &payload, attempts, &reason)
                            .await
                        {
                            tracing::warn!(error = %e, job = %job.id, "could not dead-letter a delivery; returned it");
                        }
                    }
                }
            }
            let now = Instant::now();
            if out.len() >= max || now >= deadline {
                return Ok(out);
            }
            let nap = if out.is_empty() {
                // Bounded sleeps as well: a consumer that died without a wake-up (it
                // cannot notify once its state is gone) is restarted within a second.
                (deadline - now).min(Duration::from_secs(1))
            } else {
                match state.priming_until(now) {
                    Some(until) => until.min(deadline) - now,
                    None => return Ok(out),
                }
            };
            let _ = tokio::time::timeout(nap, arrived).await;
        }
    }

    async fn ack(&self, lease: &Lease) -> Result<(), QueueError> {
        let (state, held) = self.inner.claim(lease).await?;
        if self.inner.finish(&state, &held).await {
            Ok(())
        } else {
            // The channel closed (or the parked copy expired) after the claim: the broker
            // gives the job back.
            Err(lease_lost(lease))
        }
    }

    /// Acks every lease at once: the `basic.ack`s go out back to back instead of one
    /// after the other's round trip through the connection's I/O loop. Not one
    /// `basic.ack` with `multiple`: that would also ack every older delivery of the
    /// channel, including leases of other workers and the buffer.
    async fn ack_batch(&self, leases: &[Lease]) -> Result<Vec<Result<(), QueueError>>, QueueError> {
        Ok(futures::future::join_all(leases.iter().map(|lease| self.ack(lease))).await)
    }

    async fn nack(
        &self,
        lease: &Lease,
        retry: Retry,
        reason: &str,
    ) -> Result<NackOutcome, QueueError> {
        if let Retry::After(d) = retry
            && d > MAX_DELAY
        {
            return Err(QueueError::InvalidJob(format!(
                "retry delay {d:?} is longer than RabbitMQ's message TTL allows ({MAX_DELAY:?})"
            )));
        }
        let inner = &self.inner;
        let (state, held) = inner.claim(lease).await?;
        let spent = held.attempt >= held.job.max_attempts;
        let (published, outcome) = match retry {
            Retry::After(delay) if !spent => {
                let mut next = held.job.clone();
                next.prior_attempts = held.attempt;
                next.last_error = Some(reason.to_owned());
                let bucket = delay_bucket_ms(delay);
                let target = if bucket == 0 {
                    state.names.work_spec()
                } else {
                    lock(&state.delays).insert(bucket);
                    state.names.delay(bucket)
                };
                let message = Outgoing {
                    queue: target,
                    payload: held.payload.clone(),
                    properties: next.properties()?,
                };
                (
                    inner.publish_all(std::slice::from_ref(&message)).await,
                    NackOutcome::Retrying { delay },
                )
            }
            _ => (
                inner
                    .publish_dead(&state, &held.job, &held.payload, held.attempt, reason)
                    .await,
                NackOutcome::DeadLettered,
            ),
        };
        if let Err(e) = published {
            // The copy is not stored: give the original back instead, so the job is
            // retried (without the reason) rather than lost.
            inner.release(&held).await;
            return Err(e);
        }
        // If this fails, the original comes back too: a duplicate, never a loss.
        inner.finish(&state, &held).await;
        Ok(outcome)
    }

    async fn extend_lease(&self, lease: &Lease, lease_for: Duration) -> Result<Lease, QueueError> {
        self.inner.extend(lease, lease_for).await
    }

    async fn dead_letters(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let inner = &self.inner;
        let state = inner.state(queue)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let link = inner.connector.get().await?;
        let ready = link
            .declare(&state.names.dead_spec(), &inner.config)
            .await?;
        // A channel of its own: the browse holds what it read unacked until the end, and
        // closing the channel returns anything a failure left behind.
        let channel = bounded("open a channel", link.connection.create_channel()).await?;
        let result = browse_dead(&channel, &state.names.dead, limit.min(ready as usize)).await;
        let _ = channel.close(200, "browsed".into()).await;
        settle(&link, &inner.config, &state.names.dead_spec(), ready).await;
        result
    }

    async fn requeue_dead(&self, queue: &str, ids: &[JobId]) -> Result<usize, QueueError> {
        let inner = &self.inner;
        let state = inner.state(queue)?;
        if ids.is_empty() {
            return Ok(0);
        }
        let wanted: HashSet<&JobId> = ids.iter().collect();
        let link = inner.connector.get().await?;
        link.ensure(&state.names.work_spec(), &inner.config).await?;
        let ready = link
            .declare(&state.names.dead_spec(), &inner.config)
            .await?;
        let channel = bounded("open a channel", link.connection.create_channel()).await?;
        let result = requeue_from_dead(inner, &state, &channel, &wanted, ready).await;
        let _ = channel.close(200, "requeued".into()).await;
        if let Ok((moved, _)) = &result {
            let kept = ready.saturating_sub(*moved);
            settle(&link, &inner.config, &state.names.dead_spec(), kept).await;
        }
        result.map(|(_, distinct)| distinct)
    }

    async fn stats(&self, queue: &str) -> Result<QueueStats, QueueError> {
        let inner = &self.inner;
        let state = inner.state(queue)?;
        let link = inner.connector.get().await?;
        let ready = settled_ready(inner, &state, &link).await?;
        let dead = link
            .declare(&state.names.dead_spec(), &inner.config)
            .await?;
        let buckets: Vec<u64> = lock(&state.delays).iter().copied().collect();
        let mut delayed = 0u64;
        for ms in buckets {
            delayed += u64::from(link.declare(&state.names.delay(ms), &inner.config).await?);
        }
        let leased = {
            let leases = lock(&state.leases);
            (leases.len() + lock(&state.moving).len()) as u64
        };
        Ok(QueueStats {
            ready,
            delayed,
            leased,
            dead: u64::from(dead),
        })
    }
}

/// The work queue's ready jobs: the broker's ready count plus this process's buffer,
/// without the deliveries on the wire in between (counted neither by the broker, which
/// sent them, nor here, where they have not arrived).
///
/// While the consumer has credit left (fewer unacked deliveries than its prefetch) and
/// the broker holds ready messages, more are on their way: wait until the credit is used
/// up. With nothing ready on the broker, a round trip on the consumer's channel lets what
/// the broker sent before it arrive (a channel keeps order). Bounded (1 s), then the
/// figure is taken as it is.
async fn settled_ready(
    inner: &Inner,
    state: &QueueState,
    link: &link::Link,
) -> Result<u64, QueueError> {
    let give_up = Instant::now() + Duration::from_secs(1);
    loop {
        let held_before = state.unacked();
        let ready = link
            .declare(&state.names.work_spec(), &inner.config)
            .await?;
        let buffered = state.buffered();
        let total = u64::from(ready) + buffered;
        let run = lock(&state.consumer)
            .as_ref()
            .filter(|run| run.running())
            .map(|run| (run.channel.clone(), run.prefetch));
        let Some((channel, prefetch)) = run else {
            return Ok(total);
        };
        if held_before >= u64::from(prefetch) || Instant::now() >= give_up {
            return Ok(total);
        }
        if ready == 0 {
            let received = state.received.load(Ordering::Acquire);
            // Any `basic.qos` is a round trip; it changes only consumers started later,
            // and every consumer start sets its own.
            let synced = channel
                .basic_qos(prefetch, BasicQosOptions::default())
                .await
                .is_ok();
            tokio::time::sleep(Duration::from_millis(2)).await;
            if !synced || state.received.load(Ordering::Acquire) == received {
                return Ok(total);
            }
        } else {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Reads up to `limit` dead letters, then returns them all to the dead queue in order.
async fn browse_dead(
    channel: &lapin::Channel,
    dead: &str,
    limit: usize,
) -> Result<Vec<DeadLetter>, QueueError> {
    let mut out = Vec::new();
    let mut last_tag = None;
    while out.len() < limit {
        let got = channel
            .basic_get(ShortString::from(dead), BasicGetOptions { no_ack: false })
            .await
            .map_err(|e| map_err("read a dead letter", e))?;
        let Some(message) = got else { break };
        let d = message.delivery;
        last_tag = Some(d.delivery_tag);
        out.push(
            envelope::parse_dead(&d.properties, d.data.clone(), d.delivery_tag).unwrap_or_else(
                |reason| DeadLetter {
                    job_id: JobId(
                        d.properties
                            .message_id()
                            .as_ref()
                            .map(|s| s.as_str().to_owned())
                            .unwrap_or_default(),
                    ),
                    payload: Bytes::from(d.data),
                    headers: Default::default(),
                    priority: 0,
                    attempts: 0,
                    reason: format!("undecodable dead letter: {reason}"),
                    dead_at: std::time::SystemTime::now(),
                },
            ),
        );
    }
    if let Some(tag) = last_tag {
        channel
            .basic_nack(
                tag,
                BasicNackOptions {
                    multiple: true,
                    requeue: true,
                },
            )
            .await
            .map_err(|e| map_err("return browsed dead letters", e))?;
    }
    Ok(out)
}

/// Moves the wanted dead letters back to the work queue (fresh attempts, next epoch):
/// publish first, ack after, so a failure in between duplicates rather than loses.
async fn requeue_from_dead(
    inner: &Inner,
    state: &QueueState,
    channel: &lapin::Channel,
    wanted: &HashSet<&JobId>,
    ready: u32,
) -> Result<(u32, usize), QueueError> {
    let mut moved: HashSet<JobId> = HashSet::new();
    let mut copies = 0u32;
    let mut kept_tag = None;
    for _ in 0..ready {
        let got = channel
            .basic_get(
                ShortString::from(state.names.dead.as_str()),
                BasicGetOptions { no_ack: false },
            )
            .await
            .map_err(|e| map_err("read a dead letter", e))?;
        let Some(message) = got else { break };
        let d = message.delivery;
        let job = Job::parse(&d.properties, d.delivery_tag).ok();
        match job {
            Some(mut job) if wanted.contains(&job.id) => {
                job.prior_attempts = 0;
                job.epoch = job.epoch.saturating_add(1);
                job.last_error = None;
                let message = Outgoing {
                    queue: state.names.work_spec(),
                    payload: Bytes::from(d.data),
                    properties: job.properties()?,
                };
                inner.publish_all(std::slice::from_ref(&message)).await?;
                channel
                    .basic_ack(d.delivery_tag, BasicAckOptions::default())
                    .await
                    .map_err(|e| map_err("remove a requeued dead letter", e))?;
                moved.insert(job.id);
                copies += 1;
            }
            _ => kept_tag = Some(d.delivery_tag),
        }
    }
    if let Some(tag) = kept_tag {
        channel
            .basic_nack(
                tag,
                BasicNackOptions {
                    multiple: true,
                    requeue: true,
                },
            )
            .await
            .map_err(|e| map_err("return kept dead letters", e))?;
    }
    Ok((copies, moved.len()))
}

/// Waits (briefly) until messages this process returned with a nack are back in the
/// queue's ready count. A quorum queue applies a return asynchronously, after the
/// channel's nack; without this, a `stats` or `requeue_dead` right after a
/// `dead_letters` would not see the letters that were only browsed.
async fn settle(link: &link::Link, config: &AmqpQueueConfig, spec: &QueueSpec, expected: u32) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        match link.declare(spec, config).await {
            Ok(ready) if ready < expected => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            _ => return,
        }
    }
}

fn requeue() -> BasicNackOptions {
    BasicNackOptions {
        multiple: false,
        requeue: true,
    }
}

fn noun(n: u32) -> &'static str {
    if n == 1 { "attempt" } else { "attempts" }
}

fn new_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

fn lease_lost(lease: &Lease) -> QueueError {
    QueueError::LeaseLost {
        job_id: lease.job_id.clone(),
        token: lease.token,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password() {
        let config = AmqpQueueConfig::new("amqp://guest:secret@127.0.0.1:5672/%2f");
        let shown = format!("{config:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(
            shown.contains("amqp://guest:***@127.0.0.1:5672/%2f"),
            "{shown}"
        );
        assert_eq!(redact("amqp://host/%2f"), "amqp://host/%2f");
    }
}
