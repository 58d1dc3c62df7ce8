//! The in-process backend: every queue is a few collections behind one mutex.
//!
//! # Layout of one queue
//!
//! A job lives in exactly one place at a time, and each place answers one question
//! cheaply:
//!
//! - `ready`: one `VecDeque` per priority level. "What is next?" is a pop from the
//!   highest non-empty level, so a dequeue never scans.
//! - `delayed`: a `BTreeSet` of `(due, seq)`. "What became due?" is a walk from the front.
//! - `leased`: a `BTreeSet` of `(expiry, seq)`, so expired leases are found the same way,
//!   and ack / nack / extend remove one entry in `O(log n)`.
//! - `dead`: a `VecDeque`, oldest first, which is the order `dead_letters` promises.
//!
//! The job's data itself sits in `jobs`, keyed by its sequence number; the places above
//! only hold that number.
//!
//! Time is tokio's clock, so tests can pause and advance it. Nothing runs in the
//! background: every operation first moves what became due (delays that passed, leases
//! that expired) — see [`State::promote`] — and only then does its own work. A queue
//! nobody touches does no work at all.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::{
    DeadLetter, Delivery, Enqueued, JobId, Lease, MAX_PRIORITY, NackOutcome, NewJob,
    QueueCapabilities, QueueError, QueueStats, Retry, TaskQueue, later,
};

/// Number of priority levels, one ready deque each.
const LEVELS: usize = MAX_PRIORITY as usize + 1;

/// Settings of [`MemoryQueue`].
#[derive(Debug, Clone)]
pub struct MemoryQueueConfig {
    /// Largest payload accepted.
    pub max_payload_bytes: usize,
    /// How long an idempotency key dedupes after its job was enqueued.
    pub dedupe_window: Duration,
    /// Dead letters kept per queue (oldest dropped first, with a warning); `None` keeps all.
    pub dead_letter_retention: Option<usize>,
}

impl Default for MemoryQueueConfig {
    fn default() -> Self {
        MemoryQueueConfig {
            max_payload_bytes: 16 * 1024 * 1024,
            dedupe_window: Duration::from_secs(24 * 3600),
            dead_letter_retention: None,
        }
    }
}

/// An in-process [`TaskQueue`]: fast, exact, and gone when the process ends.
///
/// Use it for tests, for single-process deployments, and as the reference the other
/// backends are compared with. Any number of named queues live in one `MemoryQueue`;
/// a queue comes into being on its first enqueue or dequeue.
///
/// # Capabilities
///
/// | capability | `MemoryQueue` |
/// |---|---|
/// | priorities | 10 levels (`0..=9`), higher first, FIFO inside a level |
/// | delays | yes, measured on tokio's clock (so `tokio::time::pause` applies) |
/// | dedupe (idempotency keys) | yes, for [`MemoryQueueConfig::dedupe_window`] after the first enqueue, even after the job was acked |
/// | max lease | unbounded |
/// | max payload | [`MemoryQueueConfig::max_payload_bytes`] (16 MiB by default) |
/// | persistence | none: everything is lost when the value is dropped |
///
/// # Guarantees and behaviour
///
/// - Every guarantee of the [crate docs](crate), exactly: a lease is valid until its
///   expiry and not one moment longer, and an expired lease is refused even before the
///   job was delivered again.
/// - FIFO inside a priority level means the order in which jobs *became ready*: a job
///   whose delay passed, whose lease expired, or that was nacked or requeued goes to the
///   back of its level.
/// - Fencing tokens grow by one with every delivery of a job and never reset, not even
///   when a dead letter is requeued.
/// - A lease that expires on the job's last attempt dead-letters it with the reason
///   `lease expired after N attempts`; an earlier expiry records `lease expired on attempt N`
///   as the job's last error.
/// - [`TaskQueue::dequeue`] sleeps until a job arrives, a delayed job falls due, a lease
///   expires, or the wait ends, whichever is first. It never polls. It is cancel-safe:
///   dropping the future takes nothing.
/// - Memory is bounded by what is live: an acked job is removed entirely, idempotency
///   keys are dropped once their window has passed, and
///   [`MemoryQueueConfig::dead_letter_retention`] bounds the dead letters (dropping the
///   oldest with a `tracing` warning). An empty queue keeps only its name and a few
///   empty collections.
/// - Job ids are decimal numbers, unique within one `MemoryQueue` across all its queues.
///
/// Waiting in `dequeue` needs a tokio runtime with the time driver enabled.
pub struct MemoryQueue {
    config: MemoryQueueConfig,
    /// Queues by name. A `RwLock` because after a queue's first use every access is a
    /// lookup; the write lock is only taken to create a queue.
    queues: RwLock<HashMap<String, Arc<Shared>, foldhash::fast::RandomState>>,
    /// Source of job sequence numbers (and so job ids). One counter for all queues so an id
    /// names one job even without its queue name.
    next_seq: AtomicU64,
}

impl MemoryQueue {
    /// A queue with default settings.
    pub fn new() -> Self {
        Self::with_config(MemoryQueueConfig::default())
    }

    /// A queue with the given settings.
    pub fn with_config(config: MemoryQueueConfig) -> Self {
        MemoryQueue {
            config,
            queues: RwLock::new(HashMap::default()),
            next_seq: AtomicU64::new(1),
        }
    }

    /// The settings this queue was built with.
    pub fn config(&self) -> &MemoryQueueConfig {
        &self.config
    }

    fn existing(&self, name: &str) -> Option<Arc<Shared>> {
        // Poisoning can only come from a panic while the map was being read or grown,
        // which leaves the map itself intact, so carrying on is safe.
        self.queues
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    fn existing_or_new(&self, name: &str) -> Arc<Shared> {
        if let Some(shared) = self.existing(name) {
            return shared;
        }
        self.queues
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(Shared::new(name)))
            .clone()
    }

    /// The queue a lease points into, with the job's sequence number; `LeaseLost` when
    /// either cannot exist (such a lease was never handed out by this queue).
    fn leased_queue(&self, lease: &Lease) -> Result<(Arc<Shared>, u64), QueueError> {
        check_name(&lease.queue)?;
        let seq = parse_seq(&lease.job_id).ok_or_else(|| lease_lost(lease))?;
        let shared = self
            .existing(&lease.queue)
            .ok_or_else(|| lease_lost(lease))?;
        Ok((shared, seq))
    }

    #[cfg(test)]
    fn key_records(&self, name: &str) -> usize {
        self.existing(name).map_or(0, |shared| {
            let state = shared.lock();
            debug_assert_eq!(state.keys.len(), state.key_expiry.len());
            state.keys.len()
        })
    }
}

impl Default for MemoryQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryQueue {
    // Not derived: a derived impl would print every job of every queue.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let queues = self
            .queues
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        f.debug_struct("MemoryQueue")
            .field("config", &self.config)
            .field("queues", &queues)
            .finish_non_exhaustive()
    }
}

/// One named queue: its state and the signal its waiting consumers sleep on.
struct Shared {
    /// A std `Mutex`, not tokio's: every critical section is short, synchronous and never
    /// held across an `.await` (the waiting in `dequeue` happens after the guard is
    /// dropped). An uncontended std mutex is a few nanoseconds; tokio's would cost an
    /// async acquire per operation and buy nothing here.
    state: Mutex<State>,
    /// Wakes consumers waiting in `dequeue` when something may have become deliverable
    /// sooner than they planned to look: a ready job arrived, or a delay or lease now ends
    /// earlier than the earliest one they knew of.
    changed: Notify,
}

impl Shared {
    fn new(name: &str) -> Self {
        Shared {
            state: Mutex::new(State::new(name)),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a thread panicked inside a critical section. Ours contain
        // no panicking code, and refusing every later call on the queue would turn one
        // bug into an outage, so take the state as it is.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Where a live job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Ready,
    Delayed(Instant),
    Leased(Instant),
}

struct Job {
    payload: Bytes,
    headers: BTreeMap<String, String>,
    priority: u8,
    max_attempts: u32,
    /// Deliveries made since the job was enqueued (or requeued from the dead letters).
    attempts: u32,
    /// The fencing token of the latest delivery; 0 before the first.
    token: u64,
    last_error: Option<String>,
    place: Place,
}

struct DeadJob {
    seq: u64,
    /// Kept whole so `requeue_dead` can put it back as it was.
    job: Job,
    reason: String,
    dead_at: SystemTime,
}

/// What `dequeue` collects under the lock; turned into a [`Delivery`] after the lock is
/// released, so the allocations for the id and queue name happen outside it.
struct Taken {
    seq: u64,
    token: u64,
    expires_at: Instant,
    payload: Bytes,
    headers: BTreeMap<String, String>,
    priority: u8,
    attempt: u32,
    max_attempts: u32,
    last_error: Option<String>,
}

/// Job sequence numbers are handed out in order, so hashing them with SipHash (the std
/// default, built to resist attacker-chosen keys) buys nothing. A multiplicative hash
/// spreads consecutive numbers over the table well enough and costs one multiplication.
#[derive(Default)]
struct SeqHasher(u64);

impl Hasher for SeqHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used for `u64` keys; this keeps the hasher correct for any key.
        for &b in bytes {
            let mixed = self.0.rotate_left(5) ^ u64::from(b);
            self.0 = mixed.wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type SeqMap<V> = HashMap<u64, V, BuildHasherDefault<SeqHasher>>;

struct State {
    /// For log messages only.
    name: String,
    jobs: SeqMap<Job>,
    ready: [VecDeque<u64>; LEVELS],
    delayed: BTreeSet<(Instant, u64)>,
    leased: BTreeSet<(Instant, u64)>,
    dead: VecDeque<DeadJob>,
    /// Idempotency key -> sequence number of the job it created. Every task of a goal
    /// has one, so this is on the hot path: a fast (per-map seeded) hasher, and the key
    /// string shared with `key_expiry` rather than copied.
    keys: HashMap<Arc<str>, u64, foldhash::fast::RandomState>,
    /// The keys in `keys` in order of expiry. The window is the same for every key, so
    /// that is also the order they were recorded in: pruning only ever looks at the front.
    key_expiry: VecDeque<(Instant, Arc<str>)>,
}

impl State {
    fn new(name: &str) -> Self {
        State {
            name: name.to_owned(),
            jobs: SeqMap::default(),
            ready: Default::default(),
            delayed: BTreeSet::new(),
            leased: BTreeSet::new(),
            dead: VecDeque::new(),
            keys: HashMap::default(),
            key_expiry: VecDeque::new(),
        }
    }

    /// Moves everything that fell due by `now` into place: delayed jobs whose time came
    /// become ready, expired leases make their job ready again (or dead, on its last
    /// attempt).
    ///
    /// Runs first in every operation, which is what makes the lazy scheme exact: no
    /// operation can observe a lease as valid after its expiry, and events are applied in
    /// the order of their due time (ties by sequence number) whichever operation happens to
    /// apply them, so FIFO order does not depend on who looked first.
    fn promote(&mut self, now: Instant, retention: Option<usize>) {
        loop {
            let delayed = self.delayed.first().copied().filter(|&(t, _)| t <= now);
            let leased = self.leased.first().copied().filter(|&(t, _)| t <= now);
            match (delayed, leased) {
                (None, None) => return,
                (Some(d), l) if l.is_none_or(|l| d < l) => {
                    self.delayed.remove(&d);
                    self.make_ready(d.1);
                }
                (_, Some(l)) => {
                    self.leased.remove(&l);
                    self.lease_expired(l.1, retention);
                }
                // Unreachable: the first arm takes (Some, None) and the second (_, Some).
                (Some(_), None) => return,
            }
        }
    }

    fn make_ready(&mut self, seq: u64) {
        if let Some(job) = self.jobs.get_mut(&seq) {
            job.place = Place::Ready;
            self.ready[usize::from(job.priority)].push_back(seq);
        }
    }

    fn lease_expired(&mut self, seq: u64, retention: Option<usize>) {
        let Some(job) = self.jobs.get_mut(&seq) else {
            return;
        };
        let attempts = job.attempts;
        if attempts >= job.max_attempts {
            if let Some(job) = self.jobs.remove(&seq) {
                let noun = if attempts == 1 { "attempt" } else { "attempts" };
                let reason = format!("lease expired after {attempts} {noun}");
                self.dead_letter(seq, job, reason, retention);
            }
        } else {
            job.last_error = Some(format!("lease expired on attempt {attempts}"));
            self.make_ready(seq);
        }
    }

    fn dead_letter(&mut self, seq: u64, mut job: Job, reason: String, retention: Option<usize>) {
        // The reason travels in `DeadJob::reason`; `requeue_dead` moves it back into
        // `last_error`, so the string is never copied.
        job.last_error = None;
        self.dead.push_back(DeadJob {
            seq,
            job,
            reason,
            dead_at: SystemTime::now(),
        });
        if let Some(keep) = retention {
            while self.dead.len() > keep {
                let Some(dropped) = self.dead.pop_front() else {
                    break;
                };
                tracing::warn!(
                    queue = %self.name,
                    job_id = dropped.seq,
                    reason = %dropped.reason,
                    retention = keep,
                    "dropping the oldest dead letter: dead_letter_retention reached"
                );
            }
        }
    }

    /// Forgets idempotency keys whose window has passed, so the key table is bounded by
    /// the keys recorded inside one window.
    fn prune_keys(&mut self, now: Instant) {
        while let Some((expires, _)) = self.key_expiry.front()
            && *expires <= now
        {
            if let Some((_, key)) = self.key_expiry.pop_front() {
                self.keys.remove(&*key);
            }
        }
    }

    /// The earliest time something is due (a delay or a lease ending), if anything is.
    fn next_due(&self) -> Option<Instant> {
        let delayed = self.delayed.first().map(|&(t, _)| t);
        let leased = self.leased.first().map(|&(t, _)| t);
        match (delayed, leased) {
            (Some(d), Some(l)) => Some(d.min(l)),
            (d, l) => d.or(l),
        }
    }

    fn take(&mut self, max: usize, lease: Duration, now: Instant, out: &mut Vec<Taken>) {
        let expires_at = later(now, lease);
        for level in self.ready.iter_mut().rev() {
            while out.len() < max {
                let Some(seq) = level.pop_front() else {
                    break;
                };
                let Some(job) = self.jobs.get_mut(&seq) else {
                    continue;
                };
                job.attempts = job.attempts.saturating_add(1);
                job.token += 1;
                job.place = Place::Leased(expires_at);
                self.leased.insert((expires_at, seq));
                out.push(Taken {
                    seq,
                    token: job.token,
                    expires_at,
                    payload: job.payload.clone(),
                    headers: job.headers.clone(),
                    priority: job.priority,
                    attempt: job.attempts,
                    max_attempts: job.max_attempts,
                    last_error: job.last_error.clone(),
                });
            }
            if out.len() >= max {
                break;
            }
        }
    }

    /// The lease's expiry if `token` is the current, unexpired lease of job `seq`.
    /// Call after [`State::promote`], which has already taken back every expired lease.
    fn current_lease(&self, seq: u64, token: u64) -> Option<Instant> {
        match self.jobs.get(&seq) {
            Some(Job {
                place: Place::Leased(expiry),
                token: current,
                ..
            }) if *current == token => Some(*expiry),
            _ => None,
        }
    }

    fn stats(&self) -> QueueStats {
        QueueStats {
            ready: self.ready.iter().map(|level| level.len() as u64).sum(),
            delayed: self.delayed.len() as u64,
            leased: self.leased.len() as u64,
            dead: self.dead.len() as u64,
        }
    }
}

/// True when `after` is earlier than `before`: the earliest due time moved forward, and
/// consumers sleeping until `before` must be told.
fn moved_earlier(before: Option<Instant>, after: Option<Instant>) -> bool {
    match (before, after) {
        (Some(b), Some(a)) => a < b,
        (None, Some(_)) => true,
        (_, None) => false,
    }
}

fn check_name(name: &str) -> Result<(), QueueError> {
    if name.is_empty() {
        return Err(QueueError::InvalidQueueName {
            name: String::new(),
            reason: "a queue name must not be empty".to_owned(),
        });
    }
    Ok(())
}

fn job_id(seq: u64) -> JobId {
    JobId(seq.to_string())
}

/// The sequence number in a job id, accepting only the exact form [`job_id`] writes (no
/// sign, no leading zeros), so one job has one id.
fn parse_seq(id: &JobId) -> Option<u64> {
    let s = id.as_str();
    let canonical = !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_digit())
        && !(s.len() > 1 && s.starts_with('0'));
    if canonical { s.parse().ok() } else { None }
}

fn lease_lost(lease: &Lease) -> QueueError {
    QueueError::LeaseLost {
        job_id: lease.job_id.clone(),
        token: lease.token,
    }
}

#[async_trait]
impl TaskQueue for MemoryQueue {
    fn capabilities(&self) -> QueueCapabilities {
        QueueCapabilities::full(self.config.max_payload_bytes)
    }

    async fn enqueue_batch(
        &self,
        queue: &str,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<Enqueued>, QueueError> {
        check_name(queue)?;
        // All of them before any is written: the batch is all-or-nothing.
        for job in &jobs {
            job.validate(self.config.max_payload_bytes)?;
        }
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let shared = self.existing_or_new(queue);
        let mut results: Vec<(u64, bool)> = Vec::with_capacity(jobs.len());
        let wake = {
            let mut state = shared.lock();
            let now = Instant::now();
            state.promote(now, self.config.dead_letter_retention);
            state.prune_keys(now);
            let due_before = state.next_due();
            let mut any_ready = false;
            // Taken under the lock so sequence numbers follow the order jobs entered this
            // queue; they break ties between jobs due at the same instant.
            let first = self
                .next_seq
                .fetch_add(jobs.len() as u64, Ordering::Relaxed);
            for (seq, job) in (first..).zip(jobs) {
                if let Some(key) = job.idempotency_key {
                    if let Some(&existing) = state.keys.get(key.as_str()) {
                        results.push((existing, true));
                        continue;
                    }
                    let expires = later(now, self.config.dedupe_window);
                    let key: Arc<str> = Arc::from(key);
                    state.key_expiry.push_back((expires, Arc::clone(&key)));
                    state.keys.insert(key, seq);
                }
                let place = if job.delay.is_zero() {
                    any_ready = true;
                    state.ready[usize::from(job.priority)].push_back(seq);
                    Place::Ready
                } else {
                    let due = later(now, job.delay);
                    state.delayed.insert((due, seq));
                    Place::Delayed(due)
                };
                state.jobs.insert(
                    seq,
                    Job {
                        payload: job.payload,
                        headers: job.headers,
                        priority: job.priority,
                        max_attempts: job.max_attempts,
                        attempts: 0,
                        token: 0,
                        last_error: None,
                        place,
                    },
                );
                results.push((seq, false));
            }
            any_ready || moved_earlier(due_before, state.next_due())
        };
        if wake {
            shared.changed.notify_waiters();
        }
        Ok(results
            .into_iter()
            .map(|(seq, duplicate)| Enqueued {
                id: job_id(seq),
                duplicate,
            })
            .collect())
    }

    async fn dequeue(
        &self,
        queue: &str,
        max: usize,
        lease: Duration,
        wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        check_name(queue)?;
        if max == 0 {
            return Ok(Vec::new());
        }
        let shared = self.existing_or_new(queue);
        let deadline = later(Instant::now(), wait);
        let mut taken = Vec::new();
        loop {
            // Created before looking at the state: `notify_waiters` reaches every
            // `Notified` that exists when it is called, polled or not, so a job enqueued
            // between our look and our sleep still wakes us.
            let notified = pin!(shared.changed.notified());
            let (now, next_due, wake_others) = {
                let mut state = shared.lock();
                let now = Instant::now();
                state.promote(now, self.config.dead_letter_retention);
                let due_before = state.next_due();
                state.take(max, lease, now, &mut taken);
                let next_due = state.next_due();
                // Our new leases may end before anything other sleepers know of; they
                // must wake then to redeliver if we die.
                (now, next_due, moved_earlier(due_before, next_due))
            };
            if wake_others {
                shared.changed.notify_waiters();
            }
            if !taken.is_empty() {
                return Ok(taken
                    .into_iter()
                    .map(|t| Delivery {
                        lease: Lease {
                            queue: queue.to_owned(),
                            job_id: job_id(t.seq),
                            token: t.token,
                            expires_at: t.expires_at,
                        },
                        payload: t.payload,
                        headers: t.headers,
                        priority: t.priority,
                        attempt: t.attempt,
                        max_attempts: t.max_attempts,
                        last_error: t.last_error,
                    })
                    .collect());
            }
            if now >= deadline {
                return Ok(Vec::new());
            }
            // Sleep until something can change without anyone telling us: the wait ends,
            // a delayed job falls due, or a lease expires. Everything else notifies.
            let wake_at = next_due.map_or(deadline, |due| due.min(deadline));
            let sleep = pin!(tokio::time::sleep_until(wake_at));
            futures::future::select(notified, sleep).await;
        }
    }

    async fn ack(&self, lease: &Lease) -> Result<(), QueueError> {
        let (shared, seq) = self.leased_queue(lease)?;
        let mut state = shared.lock();
        state.promote(Instant::now(), self.config.dead_letter_retention);
        let expiry = state
            .current_lease(seq, lease.token)
            .ok_or_else(|| lease_lost(lease))?;
        state.leased.remove(&(expiry, seq));
        // Removed entirely: an acked job costs no memory. Its idempotency key, if any,
        // stays in `keys` until its window ends.
        state.jobs.remove(&seq);
        Ok(())
    }

    /// Takes each queue's lock once per run of consecutive leases of that queue.
    async fn ack_batch(&self, leases: &[Lease]) -> Result<Vec<Result<(), QueueError>>, QueueError> {
        let mut out = Vec::with_capacity(leases.len());
        for run in leases.chunk_by(|a, b| a.queue == b.queue) {
            let shared = check_name(&run[0].queue)
                .ok()
                .and_then(|()| self.existing(&run[0].queue));
            let Some(shared) = shared else {
                for l in run {
                    out.push(Err(match check_name(&l.queue) {
                        Err(e) => e,
                        Ok(()) => lease_lost(l),
                    }));
                }
                continue;
            };
            let mut state = shared.lock();
            state.promote(Instant::now(), self.config.dead_letter_retention);
            for l in run {
                let current = parse_seq(&l.job_id)
                    .and_then(|seq| Some((seq, state.current_lease(seq, l.token)?)));
                out.push(match current {
                    Some((seq, expiry)) => {
                        state.leased.remove(&(expiry, seq));
                        state.jobs.remove(&seq);
                        Ok(())
                    }
                    None => Err(lease_lost(l)),
                });
            }
        }
        Ok(out)
    }

    async fn nack(
        &self,
        lease: &Lease,
        retry: Retry,
        reason: &str,
    ) -> Result<NackOutcome, QueueError> {
        let (shared, seq) = self.leased_queue(lease)?;
        let retention = self.config.dead_letter_retention;
        let (outcome, wake) = {
            let mut state = shared.lock();
            let now = Instant::now();
            state.promote(now, retention);
            let expiry = state
                .current_lease(seq, lease.token)
                .ok_or_else(|| lease_lost(lease))?;
            let due_before = state.next_due();
            state.leased.remove(&(expiry, seq));
            let Some(job) = state.jobs.get_mut(&seq) else {
                return Err(lease_lost(lease));
            };
            let spent = job.attempts >= job.max_attempts;
            match retry {
                Retry::After(delay) if !spent => {
                    job.last_error = Some(reason.to_owned());
                    let ready = delay.is_zero();
                    if ready {
                        state.make_ready(seq);
                    } else {
                        let due = later(now, delay);
                        job.place = Place::Delayed(due);
                        state.delayed.insert((due, seq));
                    }
                    let wake = ready || moved_earlier(due_before, state.next_due());
                    (NackOutcome::Retrying { delay }, wake)
                }
                Retry::After(_) | Retry::DeadLetter => {
                    if let Some(job) = state.jobs.remove(&seq) {
                        state.dead_letter(seq, job, reason.to_owned(), retention);
                    }
                    (NackOutcome::DeadLettered, false)
                }
            }
        };
        if wake {
            shared.changed.notify_waiters();
        }
        Ok(outcome)
    }

    async fn extend_lease(&self, lease: &Lease, lease_for: Duration) -> Result<Lease, QueueError> {
        let (shared, seq) = self.leased_queue(lease)?;
        let (expires_at, wake) = {
            let mut state = shared.lock();
            let now = Instant::now();
            state.promote(now, self.config.dead_letter_retention);
            let expiry = state
                .current_lease(seq, lease.token)
                .ok_or_else(|| lease_lost(lease))?;
            let due_before = state.next_due();
            let expires_at = later(now, lease_for);
            state.leased.remove(&(expiry, seq));
            state.leased.insert((expires_at, seq));
            if let Some(job) = state.jobs.get_mut(&seq) {
                job.place = Place::Leased(expires_at);
            }
            // Extending to a shorter lease than before moves an expiry earlier.
            (expires_at, moved_earlier(due_before, state.next_due()))
        };
        if wake {
            shared.changed.notify_waiters();
        }
        Ok(Lease {
            queue: lease.queue.clone(),
            job_id: lease.job_id.clone(),
            token: lease.token,
            expires_at,
        })
    }

    async fn dead_letters(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        check_name(queue)?;
        let Some(shared) = self.existing(queue) else {
            return Ok(Vec::new());
        };
        let mut state = shared.lock();
        state.promote(Instant::now(), self.config.dead_letter_retention);
        Ok(state
            .dead
            .iter()
            .take(limit)
            .map(|dead| DeadLetter {
                job_id: job_id(dead.seq),
                payload: dead.job.payload.clone(),
                headers: dead.job.headers.clone(),
                priority: dead.job.priority,
                attempts: dead.job.attempts,
                reason: dead.reason.clone(),
                dead_at: dead.dead_at,
            })
            .collect())
    }

    async fn requeue_dead(&self, queue: &str, ids: &[JobId]) -> Result<usize, QueueError> {
        check_name(queue)?;
        // Ids this queue cannot have written name no dead letter here; they are skipped,
        // and counted out of the result, like ids of jobs that are not dead.
        let wanted: HashSet<u64> = ids.iter().filter_map(parse_seq).collect();
        if wanted.is_empty() {
            return Ok(0);
        }
        let Some(shared) = self.existing(queue) else {
            return Ok(0);
        };
        let moved = {
            let mut state = shared.lock();
            state.promote(Instant::now(), self.config.dead_letter_retention);
            let mut moved = 0;
            // One pass, keeping the rest in their order (oldest first). Requeued jobs go
            // to the back of their level in that same order.
            for dead in std::mem::take(&mut state.dead) {
                if !wanted.contains(&dead.seq) {
                    state.dead.push_back(dead);
                    continue;
                }
                let DeadJob {
                    seq,
                    mut job,
                    reason,
                    ..
                } = dead;
                job.attempts = 0;
                job.last_error = Some(reason);
                job.place = Place::Ready;
                state.ready[usize::from(job.priority)].push_back(seq);
                state.jobs.insert(seq, job);
                moved += 1;
            }
            moved
        };
        if moved > 0 {
            shared.changed.notify_waiters();
        }
        Ok(moved)
    }

    async fn stats(&self, queue: &str) -> Result<QueueStats, QueueError> {
        check_name(queue)?;
        let Some(shared) = self.existing(queue) else {
            return Ok(QueueStats::default());
        };
        let mut state = shared.lock();
        state.promote(Instant::now(), self.config.dead_letter_retention);
        Ok(state.stats())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const Q: &str = "q";
    const SEC: Duration = Duration::from_secs(1);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    async fn one(queue: &MemoryQueue, lease: Duration) -> Delivery {
        let mut got = queue.dequeue(Q, 1, lease, Duration::ZERO).await.unwrap();
        assert_eq!(got.len(), 1, "expected one delivery");
        got.remove(0)
    }

    async fn none(queue: &MemoryQueue) {
        let got = queue.dequeue(Q, 10, SEC, Duration::ZERO).await.unwrap();
        assert!(got.is_empty(), "expected nothing, got {} jobs", got.len());
    }

    #[tokio::test(start_paused = true)]
    async fn lease_expiry_redelivers_with_attempt_plus_one_and_records_why() {
        let queue = MemoryQueue::new();
        queue.enqueue(Q, NewJob::new("a")).await.unwrap();
        let first = one(&queue, 10 * SEC).await;
        assert_eq!((first.attempt, first.lease.token), (1, 1));

        tokio::time::advance(10 * SEC - ms(1)).await;
        none(&queue).await;
        assert_eq!(queue.stats(Q).await.unwrap().leased, 1);

        tokio::time::advance(ms(1)).await;
        // Expired exactly at its expiry, even before anyone redelivered it.
        assert!(matches!(
            queue.ack(&first.lease).await,
            Err(QueueError::LeaseLost { .. })
        ));
        let second = one(&queue, 10 * SEC).await;
        assert_eq!(second.job_id(), first.job_id());
        assert_eq!((second.attempt, second.lease.token), (2, 2));
        assert_eq!(
            second.last_error.as_deref(),
            Some("lease expired on attempt 1")
        );
        queue.ack(&second.lease).await.unwrap();
        assert_eq!(queue.stats(Q).await.unwrap(), QueueStats::default());
    }

    #[tokio::test(start_paused = true)]
    async fn lease_expiry_on_last_attempt_dead_letters() {
        let queue = MemoryQueue::new();
        queue
            .enqueue(Q, NewJob::new("a").max_attempts(2))
            .await
            .unwrap();
        let _ = one(&queue, SEC).await;
        tokio::time::advance(SEC).await;
        let second = one(&queue, SEC).await;
        assert!(second.is_last_attempt());
        tokio::time::advance(SEC).await;
        none(&queue).await;
        let dead = queue.dead_letters(Q, 10).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].reason, "lease expired after 2 attempts");
        assert_eq!(dead[0].attempts, 2);
        assert!(matches!(
            queue.ack(&second.lease).await,
            Err(QueueError::LeaseLost { .. })
        ));

        // Requeued with fresh attempts; the fencing token keeps growing.
        let n = queue
            .requeue_dead(Q, &[dead[0].job_id.clone()])
            .await
            .unwrap();
        assert_eq!(n, 1);
        let third = one(&queue, SEC).await;
        assert_eq!((third.attempt, third.lease.token), (1, 3));
        assert_eq!(
            third.last_error.as_deref(),
            Some("lease expired after 2 attempts")
        );
        assert!(matches!(
            queue.nack(&second.lease, Retry::DeadLetter, "late").await,
            Err(QueueError::LeaseLost { .. })
        ));
        queue.ack(&third.lease).await.unwrap();
    }

    fn spawn_waiter(
        queue: &Arc<MemoryQueue>,
        wait: Duration,
    ) -> tokio::task::JoinHandle<(Vec<Delivery>, Duration)> {
        let queue = queue.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let got = queue.dequeue(Q, 1, SEC, wait).await.unwrap();
            (got, start.elapsed())
        })
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_dequeue_returns_when_a_job_arrives() {
        let queue = Arc::new(MemoryQueue::new());
        let waiter = spawn_waiter(&queue, 60 * SEC);
        tokio::time::sleep(5 * SEC).await;
        queue.enqueue(Q, NewJob::new("a")).await.unwrap();
        let (got, elapsed) = waiter.await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(elapsed, 5 * SEC);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_consumer_gets_a_job_another_consumer_took_and_abandoned() {
        let queue = Arc::new(MemoryQueue::new());
        let waiter = spawn_waiter(&queue, 60 * SEC);
        tokio::task::yield_now().await;
        // On this current-thread runtime the waiter cannot run between these two calls
        // (neither awaits anything that is pending), so the second one takes the job.
        queue.enqueue(Q, NewJob::new("y")).await.unwrap();
        let mine = queue.dequeue(Q, 1, 2 * SEC, Duration::ZERO).await.unwrap();
        assert_eq!(mine.len(), 1);
        let (got, elapsed) = waiter.await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].payload.as_ref(), got[0].attempt), (&b"y"[..], 2));
        assert!(
            elapsed >= 2 * SEC && elapsed < 2 * SEC + ms(5),
            "{elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn sleeping_consumer_redelivers_a_lease_that_appeared_during_its_sleep() {
        let queue = Arc::new(MemoryQueue::new());
        let waiter = spawn_waiter(&queue, 60 * SEC);
        // The waiter is asleep with nothing due. Behind its back (no enqueue to wake it),
        // a job appears and is leased for 5 s by a consumer that then dies.
        tokio::task::yield_now().await;
        let shared = queue.existing_or_new(Q);
        {
            let mut state = shared.lock();
            state.jobs.insert(
                999,
                Job {
                    payload: Bytes::from_static(b"x"),
                    headers: BTreeMap::new(),
                    priority: 0,
                    max_attempts: 3,
                    attempts: 0,
                    token: 0,
                    last_error: None,
                    place: Place::Ready,
                },
            );
            state.ready[0].push_back(999);
            let mut taken = Vec::new();
            state.take(1, 5 * SEC, Instant::now(), &mut taken);
            assert_eq!(taken.len(), 1);
        }
        // What `dequeue` does after creating the earliest expiry (tested below).
        shared.changed.notify_waiters();
        let (got, elapsed) = waiter.await.unwrap();
        assert_eq!((got.len(), got[0].attempt), (1, 2));
        assert!(
            elapsed >= 5 * SEC && elapsed < 5 * SEC + ms(5),
            "{elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn dequeue_tells_sleepers_only_when_it_creates_the_earliest_expiry() {
        use futures::FutureExt as _;

        let queue = MemoryQueue::new();
        queue.enqueue(Q, NewJob::new("a")).await.unwrap();
        queue.enqueue(Q, NewJob::new("b")).await.unwrap();
        let shared = queue.existing_or_new(Q);

        let mut sleeper = pin!(shared.changed.notified());
        let _a = one(&queue, 2 * SEC).await;
        assert!(
            sleeper.as_mut().now_or_never().is_some(),
            "first lease is the earliest"
        );

        let mut sleeper = pin!(shared.changed.notified());
        let _b = one(&queue, 10 * SEC).await;
        assert!(
            sleeper.as_mut().now_or_never().is_none(),
            "a later lease changes nothing"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_dequeue_wakes_exactly_when_a_delayed_job_falls_due() {
        let queue = MemoryQueue::new();
        queue
            .enqueue(Q, NewJob::new("later").delay(3 * SEC))
            .await
            .unwrap();
        let start = Instant::now();
        let got = queue.dequeue(Q, 5, SEC, 10 * SEC).await.unwrap();
        assert_eq!(got.len(), 1);
        let elapsed = start.elapsed();
        assert!(
            elapsed >= 3 * SEC && elapsed < 3 * SEC + ms(5),
            "{elapsed:?}"
        );

        let start = Instant::now();
        let got = queue.dequeue(Q, 5, SEC, 2 * SEC).await.unwrap();
        // The lease of the first delivery expires at 1 s: redelivered then.
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].attempt, 2);
        let elapsed = start.elapsed();
        assert!(elapsed >= SEC && elapsed < SEC + ms(5), "{elapsed:?}");
        queue.ack(&got[0].lease).await.unwrap();

        let start = Instant::now();
        assert!(queue.dequeue(Q, 5, SEC, 2 * SEC).await.unwrap().is_empty());
        assert!(start.elapsed() >= 2 * SEC);
    }

    #[tokio::test(start_paused = true)]
    async fn extend_lease_moves_the_expiry_and_old_expiry_does_nothing() {
        let queue = MemoryQueue::new();
        queue.enqueue(Q, NewJob::new("a")).await.unwrap();
        let d = one(&queue, SEC).await;
        tokio::time::advance(ms(900)).await;
        let extended = queue.extend_lease(&d.lease, 2 * SEC).await.unwrap();
        assert_eq!(extended.token, d.lease.token);
        assert_eq!(extended.expires_at, Instant::now() + 2 * SEC);
        tokio::time::advance(ms(1500)).await;
        none(&queue).await;
        assert_eq!(queue.stats(Q).await.unwrap().leased, 1);
        tokio::time::advance(ms(500)).await;
        assert!(matches!(
            queue.extend_lease(&extended, SEC).await,
            Err(QueueError::LeaseLost { .. })
        ));
        let again = one(&queue, SEC).await;
        assert_eq!(again.attempt, 2);
        queue.ack(&again.lease).await.unwrap();
        // Ack of an acked job is refused too.
        assert!(matches!(
            queue.ack(&again.lease).await,
            Err(QueueError::LeaseLost { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn nack_retries_after_the_delay_then_dead_letters_when_spent() {
        let queue = MemoryQueue::new();
        queue
            .enqueue(Q, NewJob::new("a").max_attempts(2))
            .await
            .unwrap();
        let d = one(&queue, SEC).await;
        let out = queue
            .nack(&d.lease, Retry::After(ms(500)), "flaky")
            .await
            .unwrap();
        assert_eq!(out, NackOutcome::Retrying { delay: ms(500) });
        assert_eq!(queue.stats(Q).await.unwrap().delayed, 1);
        tokio::time::advance(ms(499)).await;
        none(&queue).await;
        tokio::time::advance(ms(1)).await;
        let d = one(&queue, SEC).await;
        assert_eq!((d.attempt, d.last_error.as_deref()), (2, Some("flaky")));
        let out = queue
            .nack(&d.lease, Retry::After(ms(500)), "still flaky")
            .await
            .unwrap();
        assert_eq!(out, NackOutcome::DeadLettered);
        let dead = queue.dead_letters(Q, 10).await.unwrap();
        assert_eq!(dead[0].reason, "still flaky");
        assert_eq!(dead[0].attempts, 2);
        assert_eq!(
            queue.stats(Q).await.unwrap(),
            QueueStats {
                dead: 1,
                ..QueueStats::default()
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn priorities_then_fifo_by_time_of_becoming_ready() {
        let queue = MemoryQueue::new();
        queue
            .enqueue_batch(
                Q,
                vec![
                    NewJob::new("low-1").priority(1),
                    NewJob::new("high-1").priority(9),
                    NewJob::new("delayed-low").priority(1).delay(SEC),
                    NewJob::new("low-2").priority(1),
                    NewJob::new("high-2").priority(9),
                ],
            )
            .await
            .unwrap();
        tokio::time::advance(SEC).await;
        let got = queue.dequeue(Q, 10, SEC, Duration::ZERO).await.unwrap();
        let order: Vec<&[u8]> = got.iter().map(|d| d.payload.as_ref()).collect();
        assert_eq!(
            order,
            [
                &b"high-1"[..],
                b"high-2",
                b"low-1",
                b"low-2",
                b"delayed-low"
            ]
        );
        for d in got {
            queue.ack(&d.lease).await.unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idempotency_key_outlives_the_ack_and_is_pruned_after_the_window() {
        let queue = MemoryQueue::with_config(MemoryQueueConfig {
            dedupe_window: 10 * SEC,
            ..MemoryQueueConfig::default()
        });
        let first = queue
            .enqueue(Q, NewJob::new("a").idempotency_key("k"))
            .await
            .unwrap();
        assert!(!first.duplicate);
        let d = one(&queue, SEC).await;
        queue.ack(&d.lease).await.unwrap();
        tokio::time::advance(9 * SEC).await;
        let again = queue
            .enqueue(Q, NewJob::new("b").idempotency_key("k"))
            .await
            .unwrap();
        assert_eq!(
            (again.id.clone(), again.duplicate),
            (first.id.clone(), true)
        );
        none(&queue).await;

        tokio::time::advance(SEC).await;
        let fresh = queue
            .enqueue(Q, NewJob::new("c").idempotency_key("k"))
            .await
            .unwrap();
        assert!(!fresh.duplicate);
        assert_ne!(fresh.id, first.id);
        assert_eq!(queue.key_records(Q), 1);

        // Many keys, each pruned once its window passed: the table stays bounded.
        for round in 0..5 {
            for i in 0..100 {
                queue
                    .enqueue(Q, NewJob::new("x").idempotency_key(format!("{round}-{i}")))
                    .await
                    .unwrap();
            }
            tokio::time::advance(10 * SEC).await;
        }
        queue.enqueue(Q, NewJob::new("y")).await.unwrap();
        assert_eq!(queue.key_records(Q), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn batch_is_all_or_nothing_and_keys_in_one_batch_dedupe() {
        let queue = MemoryQueue::with_config(MemoryQueueConfig {
            max_payload_bytes: 4,
            ..MemoryQueueConfig::default()
        });
        let err = queue
            .enqueue_batch(
                Q,
                vec![
                    NewJob::new("ok").idempotency_key("k"),
                    NewJob::new("too long"),
                ],
            )
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            QueueError::PayloadTooLarge { size: 8, max: 4 }
        ));
        assert_eq!(queue.stats(Q).await.unwrap(), QueueStats::default());
        let out = queue
            .enqueue_batch(
                Q,
                vec![
                    NewJob::new("a").idempotency_key("k"),
                    NewJob::new("b").idempotency_key("k"),
                ],
            )
            .await
            .unwrap();
        assert!(!out[0].duplicate && out[1].duplicate);
        assert_eq!(out[0].id, out[1].id);
        assert_eq!(queue.stats(Q).await.unwrap().ready, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn dead_letter_retention_drops_the_oldest() {
        let queue = MemoryQueue::with_config(MemoryQueueConfig {
            dead_letter_retention: Some(2),
            ..MemoryQueueConfig::default()
        });
        for name in ["a", "b", "c"] {
            queue.enqueue(Q, NewJob::new(name)).await.unwrap();
            let d = one(&queue, SEC).await;
            queue.nack(&d.lease, Retry::DeadLetter, name).await.unwrap();
        }
        let dead = queue.dead_letters(Q, 10).await.unwrap();
        let reasons: Vec<&str> = dead.iter().map(|d| d.reason.as_str()).collect();
        assert_eq!(reasons, ["b", "c"]);
        assert_eq!(queue.dead_letters(Q, 1).await.unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn names_ids_and_edge_durations() {
        let queue = MemoryQueue::new();
        assert!(matches!(
            queue.enqueue("", NewJob::new("a")).await,
            Err(QueueError::InvalidQueueName { .. })
        ));
        assert!(matches!(
            queue.dequeue("", 1, SEC, SEC).await,
            Err(QueueError::InvalidQueueName { .. })
        ));
        assert!(matches!(
            queue.stats("").await,
            Err(QueueError::InvalidQueueName { .. })
        ));
        // Unknown queue: nothing to count and nothing created.
        assert_eq!(queue.stats("nope").await.unwrap(), QueueStats::default());
        assert!(queue.dead_letters("nope", 5).await.unwrap().is_empty());
        assert_eq!(format!("{queue:?}").matches("queues: 0").count(), 1);

        queue.enqueue(Q, NewJob::new("a")).await.unwrap();
        assert!(
            queue
                .dequeue(Q, 0, SEC, Duration::MAX)
                .await
                .unwrap()
                .is_empty()
        );
        // Unbounded lease and wait must not overflow.
        let d = queue
            .dequeue(Q, 1, Duration::MAX, Duration::MAX)
            .await
            .unwrap();
        assert_eq!(d.len(), 1);
        let forged = Lease {
            job_id: JobId(format!("0{}", d[0].job_id())),
            ..d[0].lease.clone()
        };
        assert!(matches!(
            queue.ack(&forged).await,
            Err(QueueError::LeaseLost { .. })
        ));
        let other_queue = Lease {
            queue: "other".to_owned(),
            ..d[0].lease.clone()
        };
        assert!(matches!(
            queue.ack(&other_queue).await,
            Err(QueueError::LeaseLost { .. })
        ));
        queue.ack(&d[0].lease).await.unwrap();
        assert_eq!(
            queue
                .requeue_dead(Q, &[JobId::from("x"), d[0].job_id().clone()])
                .await
                .unwrap(),
            0
        );
    }

    #[test]
    fn parse_seq_accepts_only_what_job_id_writes() {
        assert_eq!(parse_seq(&job_id(0)), Some(0));
        assert_eq!(parse_seq(&job_id(42)), Some(42));
        for bad in ["", "+1", "01", "-1", "1a", " 1"] {
            assert_eq!(parse_seq(&JobId::from(bad)), None, "{bad:?}");
        }
    }
}
