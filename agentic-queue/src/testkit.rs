//! The conformance suite: one test body per guarantee, run unchanged against every backend.
//!
//! A backend's test file is one macro call. It expands to one `#[test]` per case, each on
//! its own multi-threaded tokio runtime (two workers), so the backend crate needs no tokio
//! macros of its own:
//!
//! ```
//! # fn main() {}
//! mod memory {
//!     agentic_queue::queue_conformance_suite!(
//!         make = async { agentic_queue::MemoryQueue::new() },
//!         prefix = "memory",
//!     );
//! }
//! ```
//!
//! `make` is an expression that evaluates to a future (an `async` block or a call of an
//! `async fn`); it is evaluated afresh in every test, inside the test's runtime, so it may
//! connect to a broker. Its output can be any [`TaskQueue`] (`MemoryQueue`,
//! `Arc<dyn TaskQueue>`, …) or an `Option` of one: `None` skips every case with a printed
//! `SKIP` line, which is how a backend test without its environment variable (say
//! `REDIS_URL`) stays green without pretending to have run. `prefix` (optional, default
//! `"agq"`) starts every queue name the suite creates (`<prefix>-<case>-<16 hex digits>`,
//! the case names being `[a-z_]`); keep it to `[a-z0-9-]` so that every broker accepts
//! it. The tests are named after the cases; expand the macro inside a module per backend
//! when one file tests several.
//!
//! Each case is also a plain `pub async fn` (`case(queue, prefix)`), listed in [`CASES`],
//! for callers that drive the suite themselves ([`run_all`]).
//!
//! # Rules the cases follow
//!
//! - Real time, not `tokio::time::pause`: a broker's clock cannot be paused. Leases are
//!   300–600 ms, "must not arrive" windows 200 ms, "must arrive" waits up to 2 s (they
//!   return as soon as the job comes). Each case takes well under 3 s.
//! - A consumer already waiting must get a job that falls due during its wait (delay
//!   passed, lease expired) within [`LATENESS`] of it, not only when its wait ends.
//! - Bounds in the "not early" direction allow [`CLOCK_SLACK`] for brokers whose timers
//!   have coarse granularity; the "not late" bounds are generous so a loaded machine does
//!   not fail them.
//! - Every case uses its own queue (prefix, case name, random suffix), so cases run in
//!   parallel, against a shared broker, without seeing each other. Each one acks what it
//!   enqueued (requeueing its dead letters first) and checks that the queue's stats are all
//!   zero at the end, so a passing run leaves nothing behind.
//! - A case that needs a capability the backend lacks ([`QueueCapabilities`]) prints
//!   `SKIP queue conformance <case>: backend has no <capability>` and reports
//!   [`CaseOutcome::Skipped`]; it never passes silently.
//! - A broken guarantee fails the test with a message naming the case; an error from the
//!   backend fails it with that error.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};

use crate::{
    DeadLetter, Delivery, Enqueued, JobId, Lease, NackOutcome, NewJob, QueueCapabilities,
    QueueError, QueueStats, Retry, TaskQueue,
};

/// The lease used where a case wants it to run out.
pub const SHORT_LEASE: Duration = Duration::from_millis(300);
/// The lease used where a case needs it to outlive the case.
pub const LONG_LEASE: Duration = Duration::from_secs(10);
/// How long a case waits for something that must arrive.
pub const PATIENCE: Duration = Duration::from_secs(2);
/// How long a case watches for something that must not arrive.
pub const QUIET: Duration = Duration::from_millis(200);
/// How late a consumer already waiting may receive a job that fell due during its wait
/// (a delay passed, a lease expired). Generous, for brokers that move due jobs on a timer
/// of their own; it still tells "woke when the job fell due" from "woke at the end of
/// its wait".
pub const LATENESS: Duration = Duration::from_secs(1);
/// Allowed earliness of a timer measured on the broker's clock (granularity, rounding).
pub const CLOCK_SLACK: Duration = Duration::from_millis(25);
/// The queue-name prefix when the macro is given none.
pub const DEFAULT_PREFIX: &str = "agq";

/// How a case ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaseOutcome {
    /// Every check held.
    Passed,
    /// The backend lacks a capability the case needs; nothing was checked.
    Skipped {
        /// The capability, in words ("delays", "idempotency", "10 priority levels").
        missing: &'static str,
    },
}

/// What a case returns: its outcome, or the backend error that stopped it. Broken
/// guarantees panic (they are test failures) rather than return.
pub type CaseResult = Result<CaseOutcome, QueueError>;

/// A case as a value: its name and a function that runs it on a queue with a prefix.
#[derive(Clone, Copy)]
pub struct Case {
    /// The case's name, which is also the name of its `pub async fn` and of its test.
    pub name: &'static str,
    /// Runs the case.
    pub run: fn(Arc<dyn TaskQueue>, String) -> BoxFuture<'static, CaseResult>,
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Case").field("name", &self.name).finish()
    }
}

/// Lists every case, once, for both [`CASES`] and
/// [`queue_conformance_suite!`](crate::queue_conformance_suite): it calls back the macro
/// named first with the given tokens followed by the case names, so adding a case here
/// adds it to both.
#[doc(hidden)]
#[macro_export]
macro_rules! __queue_conformance_cases {
    ($callback:ident ! { $($input:tt)* }) => {
        $crate::$callback! {
            [$($input)*]
            roundtrip,
            batch_enqueue_order_and_dequeue_max,
            priorities_higher_first,
            fifo_within_priority,
            delayed_job_not_delivered_early,
            dequeue_waits_for_arrival,
            dequeue_returns_empty_after_wait,
            lease_expiry_redelivers,
            fencing_refuses_old_lease,
            extend_lease_prevents_redelivery,
            nack_retry_after_redelivers,
            nack_dead_letter,
            max_attempts_dead_letters_last_error,
            lease_expiry_on_last_attempt_dead_letters,
            requeue_dead_fresh_attempts,
            idempotent_enqueue,
            invalid_jobs_refused,
            stats_counts_by_state,
            acked_job_is_gone,
            unbounded_durations_do_not_overflow,
            ack_batch_acks_each,
            ack_batch_refuses_stale_leases,
            binary_payloads_roundtrip,
            concurrent_consumers_no_double_delivery,
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __queue_conformance_case_table {
    ([] $($case:ident),* $(,)?) => {
        /// Every case of the suite, in a stable order.
        pub const CASES: &[Case] = &[$(
            Case {
                name: stringify!($case),
                run: |queue, prefix| Box::pin(async move { $case(queue, &prefix).await }),
            }
        ),*];
    };
}

crate::__queue_conformance_cases!(__queue_conformance_case_table! {});

#[doc(hidden)]
#[macro_export]
macro_rules! __queue_conformance_tests {
    // `prefix` is one bracketed token tree (`[]` or `["name"]`), so it can be repeated
    // inside the case repetition, which an optional fragment cannot.
    ([make = ($make:expr), prefix = $prefix:tt] $($case:ident),* $(,)?) => {$(
        #[test]
        fn $case() -> ::core::result::Result<(), $crate::QueueError> {
            $crate::testkit::__run_test(
                ::core::stringify!($case),
                $crate::testkit::__prefix(&$prefix),
                async { $make.await },
            )
        }
    )*};
}

/// Expands to one `#[test]` per conformance case, run against the queue `make` builds.
///
/// `make` is evaluated (and awaited) in every test; its output is anything that
/// implements [`IntoQueueUnderTest`]. `prefix` is optional. See the [module docs](self).
///
/// ```
/// # fn main() {}
/// agentic_queue::queue_conformance_suite!(make = async {
///     std::sync::Arc::new(agentic_queue::MemoryQueue::new())
/// });
/// ```
#[macro_export]
macro_rules! queue_conformance_suite {
    (make = $make:expr $(, prefix = $prefix:expr)? $(,)?) => {
        $crate::__queue_conformance_cases!(
            __queue_conformance_tests! { make = ($make), prefix = [$($prefix)?] }
        );
    };
}

/// What `make` in [`queue_conformance_suite!`](crate::queue_conformance_suite) may
/// produce: a queue to test, or `None` to skip (printed) because the backend is not
/// available here.
pub trait IntoQueueUnderTest {
    /// The queue, or `None` to skip.
    fn into_queue_under_test(self) -> Option<Arc<dyn TaskQueue>>;
}

impl<T: TaskQueue + 'static> IntoQueueUnderTest for T {
    fn into_queue_under_test(self) -> Option<Arc<dyn TaskQueue>> {
        Some(Arc::new(self))
    }
}

impl<T: TaskQueue + 'static> IntoQueueUnderTest for Option<T> {
    fn into_queue_under_test(self) -> Option<Arc<dyn TaskQueue>> {
        self.map(|queue| Arc::new(queue) as Arc<dyn TaskQueue>)
    }
}

/// A queue under test that remembers the names of the queues used through it and, when
/// dropped, hands them to a clean-up function: a backend's tests wrap their queue in it so
/// that every case leaves nothing behind on the broker, even a case that fails.
///
/// ```
/// use agentic_queue::{MemoryQueue, testkit::Tracked};
///
/// let queue = Tracked::new(MemoryQueue::new(), |_queue, names| {
///     // Delete `names` on the broker here.
///     let _ = names;
/// });
/// # drop(queue);
/// ```
pub struct Tracked<Q> {
    /// The queue itself; calls made on it directly are not tracked.
    pub inner: Q,
    used: std::sync::Mutex<std::collections::BTreeSet<String>>,
    on_drop: Option<OnDrop<Q>>,
}

type OnDrop<Q> = Box<dyn FnOnce(&Q, Vec<String>) + Send + Sync>;

impl<Q> Tracked<Q> {
    /// Wraps `inner`; `on_drop` gets it and the queue names used, once, when this is dropped.
    pub fn new(inner: Q, on_drop: impl FnOnce(&Q, Vec<String>) + Send + Sync + 'static) -> Self {
        Tracked {
            inner,
            used: std::sync::Mutex::new(std::collections::BTreeSet::new()),
            on_drop: Some(Box::new(on_drop)),
        }
    }

    /// Remembers `queue` for the clean-up, for a queue used only through another handle.
    pub fn track(&self, queue: &str) {
        if !queue.is_empty() {
            let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
            used.insert(queue.to_owned());
        }
    }
}

impl<Q> Drop for Tracked<Q> {
    fn drop(&mut self) {
        let names: Vec<String> =
            std::mem::take(&mut *self.used.lock().unwrap_or_else(|e| e.into_inner()))
                .into_iter()
                .collect();
        if let Some(on_drop) = self.on_drop.take()
            && !names.is_empty()
        {
            on_drop(&self.inner, names);
        }
    }
}

#[async_trait::async_trait]
impl<Q: TaskQueue> TaskQueue for Tracked<Q> {
    fn capabilities(&self) -> QueueCapabilities {
        self.inner.capabilities()
    }
    fn consumer_concurrency(&self, queue: &str, concurrency: usize) {
        self.track(queue);
        self.inner.consumer_concurrency(queue, concurrency)
    }
    async fn enqueue_batch(
        &self,
        queue: &str,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<Enqueued>, QueueError> {
        self.track(queue);
        self.inner.enqueue_batch(queue, jobs).await
    }
    async fn dequeue(
        &self,
        queue: &str,
        max: usize,
        lease: Duration,
        wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        self.track(queue);
        self.inner.dequeue(queue, max, lease, wait).await
    }
    async fn ack(&self, lease: &Lease) -> Result<(), QueueError> {
        self.inner.ack(lease).await
    }
    async fn ack_batch(&self, leases: &[Lease]) -> Result<Vec<Result<(), QueueError>>, QueueError> {
        self.inner.ack_batch(leases).await
    }
    async fn nack(
        &self,
        lease: &Lease,
        retry: Retry,
        reason: &str,
    ) -> Result<NackOutcome, QueueError> {
        self.inner.nack(lease, retry, reason).await
    }
    async fn extend_lease(&self, lease: &Lease, lease_for: Duration) -> Result<Lease, QueueError> {
        self.inner.extend_lease(lease, lease_for).await
    }
    async fn dead_letters(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        self.track(queue);
        self.inner.dead_letters(queue, limit).await
    }
    async fn requeue_dead(&self, queue: &str, ids: &[JobId]) -> Result<usize, QueueError> {
        self.track(queue);
        self.inner.requeue_dead(queue, ids).await
    }
    async fn stats(&self, queue: &str) -> Result<QueueStats, QueueError> {
        self.track(queue);
        self.inner.stats(queue).await
    }
}

#[doc(hidden)]
pub fn __prefix<'a>(given: &[&'a str]) -> &'a str {
    given.first().copied().unwrap_or(DEFAULT_PREFIX)
}

/// Runs one case by name on a fresh runtime; what the tests of
/// [`queue_conformance_suite!`](crate::queue_conformance_suite) call.
#[doc(hidden)]
pub fn __run_test<F>(case: &'static str, prefix: &str, make: F) -> Result<(), QueueError>
where
    F: Future,
    F::Output: IntoQueueUnderTest,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| QueueError::Backend {
            message: "could not build the test runtime".to_owned(),
            retryable: false,
            source: Some(Box::new(e)),
        })?;
    runtime.block_on(async {
        let Some(queue) = make.await.into_queue_under_test() else {
            println!("SKIP queue conformance {case}: no backend to test (make returned None)");
            return Ok(());
        };
        run_case(case, queue, prefix).await.map(|_| ())
    })
}

/// Runs the case named `name` (see [`CASES`]).
pub async fn run_case(name: &str, queue: Arc<dyn TaskQueue>, prefix: &str) -> CaseResult {
    let case = CASES
        .iter()
        .find(|case| case.name == name)
        .ok_or_else(|| QueueError::backend_msg(format!("no conformance case named {name:?}")))?;
    (case.run)(queue, prefix.to_owned()).await
}

/// Runs every case one after the other (about 20 s) and reports how each ended. Stops
/// at the first backend error; a broken guarantee panics.
pub async fn run_all(
    queue: Arc<dyn TaskQueue>,
    prefix: &str,
) -> Result<Vec<(&'static str, CaseOutcome)>, QueueError> {
    let mut outcomes = Vec::with_capacity(CASES.len());
    for case in CASES {
        let outcome = (case.run)(queue.clone(), prefix.to_owned()).await?;
        outcomes.push((case.name, outcome));
    }
    Ok(outcomes)
}

/// A queue name of the form `<prefix>-<case>-<random hex>`, unique per run.
pub fn queue_name(prefix: &str, case: &str) -> String {
    format!("{prefix}-{case}-{:016x}", fastrand::u64(..))
}

fn skip(case: &str, missing: &'static str) -> CaseResult {
    println!("SKIP queue conformance {case}: backend has no {missing}");
    Ok(CaseOutcome::Skipped { missing })
}

fn has_priorities(caps: &QueueCapabilities) -> bool {
    usize::from(caps.priority_levels) > usize::from(crate::MAX_PRIORITY)
}

/// `wanted`, or the backend's longest lease if that is shorter.
fn lease_for(caps: &QueueCapabilities, wanted: Duration) -> Duration {
    caps.max_lease.map_or(wanted, |max| max.min(wanted))
}

/// Dequeues until `n` jobs came or [`PATIENCE`] ran out; returns what came.
async fn take(
    queue: &dyn TaskQueue,
    q: &str,
    n: usize,
    lease: Duration,
) -> Result<Vec<Delivery>, QueueError> {
    let deadline = Instant::now() + PATIENCE;
    let mut out: Vec<Delivery> = Vec::with_capacity(n);
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let got = queue.dequeue(q, n - out.len(), lease, left).await?;
        if got.is_empty() && left.is_zero() {
            break;
        }
        out.extend(got);
    }
    Ok(out)
}

/// [`take`] for exactly one job, failing the case when it does not come.
async fn take_one(
    queue: &dyn TaskQueue,
    q: &str,
    lease: Duration,
    case: &str,
) -> Result<Delivery, QueueError> {
    let mut got = take(queue, q, 1, lease).await?;
    assert_eq!(
        got.len(),
        1,
        "{case}: expected one delivery within {PATIENCE:?}, got {}",
        got.len()
    );
    Ok(got.remove(0))
}

/// Waits (in one dequeue) for the one job that falls due `due` after `start`, and fails
/// the case if it comes before `due` or more than [`LATENESS`] after it.
async fn take_when_due(
    queue: &dyn TaskQueue,
    q: &str,
    lease: Duration,
    start: Instant,
    due: Duration,
    case: &str,
) -> Result<Delivery, QueueError> {
    let wait = (due + LATENESS + Duration::from_millis(500)).saturating_sub(start.elapsed());
    let mut got = queue.dequeue(q, 1, lease, wait).await?;
    let elapsed = start.elapsed();
    assert_eq!(got.len(), 1, "{case}: expected the job due after {due:?}");
    assert!(
        elapsed + CLOCK_SLACK >= due,
        "{case}: delivered after {elapsed:?}, before it was due ({due:?})"
    );
    assert!(
        elapsed <= due + LATENESS,
        "{case}: delivered after {elapsed:?}, though due after {due:?} and the consumer was waiting"
    );
    Ok(got.remove(0))
}

/// Dequeues for [`QUIET`] and fails the case if anything is delivered.
async fn expect_nothing(
    queue: &dyn TaskQueue,
    q: &str,
    case: &str,
    why: &str,
) -> Result<(), QueueError> {
    let got = queue.dequeue(q, 10, SHORT_LEASE, QUIET).await?;
    let payloads: Vec<_> = got.iter().map(|d| d.payload.clone()).collect();
    assert!(got.is_empty(), "{case}: {why}, but got {payloads:?}");
    Ok(())
}

fn expect_lease_lost<T: std::fmt::Debug>(result: Result<T, QueueError>, case: &str, what: &str) {
    assert!(
        matches!(result, Err(QueueError::LeaseLost { .. })),
        "{case}: {what} must be refused with LeaseLost, got {result:?}"
    );
}

async fn ack_all(queue: &dyn TaskQueue, deliveries: &[Delivery]) -> Result<(), QueueError> {
    for delivery in deliveries {
        queue.ack(&delivery.lease).await?;
    }
    Ok(())
}

/// Requeues every dead letter of `q` and acks it, so the case leaves nothing behind.
async fn clear_dead(queue: &dyn TaskQueue, q: &str, case: &str) -> Result<(), QueueError> {
    let dead = queue.dead_letters(q, 10_000).await?;
    let ids: Vec<JobId> = dead.into_iter().map(|d| d.job_id).collect();
    if ids.is_empty() {
        return Ok(());
    }
    let moved = queue.requeue_dead(q, &ids).await?;
    assert_eq!(
        moved,
        ids.len(),
        "{case}: requeue_dead moved {moved} of {}",
        ids.len()
    );
    let back = take(queue, q, ids.len(), LONG_LEASE).await?;
    ack_all(queue, &back).await
}

/// Fails the case unless `q` is empty in every state.
async fn assert_drained(queue: &dyn TaskQueue, q: &str, case: &str) -> Result<(), QueueError> {
    let stats = queue.stats(q).await?;
    assert_eq!(
        stats,
        QueueStats::default(),
        "{case}: the queue should be empty at the end"
    );
    Ok(())
}

async fn join<T>(handle: JoinHandle<T>) -> Result<T, QueueError> {
    match handle.await {
        Ok(value) => Ok(value),
        // A failed check inside a spawned task fails the case with its own message.
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(QueueError::backend_msg(format!(
            "conformance task was cancelled: {e}"
        ))),
    }
}

fn payload_of(delivery: &Delivery) -> &[u8] {
    delivery.payload.as_ref()
}

/// A job's payload, headers, priority and max attempts arrive exactly as enqueued, with
/// attempt 1, no last error, and a lease naming the queue and job.
pub async fn roundtrip(queue: Arc<dyn TaskQueue>, prefix: &str) -> CaseResult {
    const CASE: &str = "roundtrip";
    let queue = &*queue;
    let q = queue_name(prefix, CASE);
    let caps = queue.capabilities();
    let priority = if has_priorities(&caps) { 5 } else { 0 };
    let lease = lease_for(&caps, LONG_LEASE);
    let job = NewJob::new(b"hello, queue".to_vec())
        .priority(priority)
        .max_attempts(4)
        .header("content-type", "text/plain")
        .header("trace-id", "4bf92f3577b34da6");
    let enqueued = queue.enqueue(&q, job.clone()).await?;
    assert!(
        !enqueued.duplicate,
        "{CASE}: a job without a key is never a duplicate"
    );

    let d = take_one(queue, &q, lease, CASE).await?;
    assert_eq!(d.job_id(), &enqueued.id, "{CASE}: job id");
    assert_eq!(d.payload, job.payload, "{CASE}: payload");
    assert_eq!(d.headers, job.headers, "{CASE}: headers");
    assert_eq!(d.priority, priority, "{CASE}: priority");
    assert_eq!(d.attempt, 1, "{CASE}: attempt");
    assert_eq!(d.max_attempts, 4, "{CASE}: max_attempts");
    assert_eq!(d.last_error, None, "{CASE}: last_error");
    assert!(
        !d.is_last_attempt(),
        "{CASE}: attempt 1 of 4 is not the last"
    );
    assert_eq!(d.lease.queue, q, "{CASE}: lease names the queue");
    assert_eq!(&d.lease.job_id, &enqueued.id, "{CASE}: lease names the job");
    let remaining = d.lease.remaining();
    assert!(
        !remaining.is_zero() && remaining <= lease,
        "{CASE}: lease remaining {remaining:?} should be in (0, {lease:?}]"
    );
    queue.ack(&d.lease).await?;
    assert_drained(queue, &q, CASE).await?;
    Ok(CaseOutcome::Passed)
}

/// A batch gets one result per job in order, with distinct ids; `dequeue` never returns
/// more than `max`; and the batch comes out in the order it went in.
pub async fn batch_enqueue_order_and_dequeue_max(
    queue: Arc<dyn TaskQueue>,
    prefix: &str,
) -> CaseResult {
    const CASE: &str = "batch_enqueue_order_and_dequeue_max";
    let queue = &*queue;
    let q = queue_name(prefix, CASE);
    let lease = lease_for(&queue.capabilities(), LONG_LEASE);

    assert!(
        queue.enqueue_batch(&q, Vec::new()).await?.is_empty(),
        "{CASE}: an empty batch gives no results"
    );
    let jobs: Vec<NewJob> = (0..5)
        .map(|i| NewJob::new(format!("batch-{i}").into_bytes()))
        .collect();
    let results = queue.enqueue_batch(&q, jobs).await?;
    assert_eq!(results.len(), 5, "{CASE}: one result per job");
    assert!(
        results.iter().all(|r| !r.duplicate),
        "{CASE}: no duplicates without keys"
    );
    let ids: Vec<&JobId> = results.iter().map(|r| &r.id).collect();
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        5,
        "{CASE}: ids are distinct"
    );

    let first = queue.dequeue(&q, 3, lease, PATIENCE).await?;
    assert_eq!(
        first.len(),
        3,
        "{CASE}: dequeue(max = 3) with 5 ready jobs returns 3"
    );
    let rest = take(queue, &q, 2, lease).await?;
    assert_eq!(rest.len(), 2, "{CASE}: the other two follow");
    let all: Vec<&Delivery> = first.iter().chain(&rest).collect();
    let got_ids: Vec<&JobId> = all.iter().map(|d| d.job_id()).collect();
    assert_eq!(got_ids, ids, "{CASE}: delivered in batch order");
    for (i, d) in all.iter().enumerate() {
        assert_eq!(
            payload_of(d),
            format!("batch-{i}").as_bytes(),
            "{CASE}: payload {i}"
        );
    }
    expect_nothing(queue, &q, CASE, "all five were delivered").await?;
    ack_all(queue, &first).await?;
    ack_all(queue, &rest).await?;
    assert_drained(queue, &q, CASE).await?;
    Ok(CaseOutcome::Passed)
}

/// Higher priorities are delivered first; equal priorities in enqueue order.
pub async fn priorities_higher_first(queue: Arc<dyn TaskQueue>, prefix: &str) -> CaseResult {
    const CASE: &str = "priorities_higher_first";
    let caps = queue.capabilities();
    if !has_priorities(&caps) {
        return skip(CASE, "10 priority levels");
    }
    let queue = &*queue;
    let q = queue_name(prefix, CASE);
    let lease = lease_for(&caps, LONG_LEASE);
    let priorities = [0u8, 9, 3, 5, 9, 1, 7, 0, 2, 4, 6, 8];
    for (i, &p) in priorities.iter().enumerate() {
        queue
            .enqueue(&q, NewJob::new(format!("{i}").into_bytes()).priority(p))
            .await?;
    }
    let mut expected: Vec<(u8, usize)> = priorities.iter().copied().zip(0..).collect();
    // Stable: equal priorities keep their enqueue order.
    expected.sort_by_key(|&(p, _)| std::cmp::Reverse(p));
    let expected: Vec<(u8, Vec<u8>)> = expected
        .into_iter()
        .map(|(p, i)| (p, format!("{i}").into_bytes()))
        .collect();

    let mut got = Vec::new();
    // Several small dequeues: the order must hold across calls too.
    while got.len() < priorities.len() {
        let batch = take(queue, &q, 5.min(priorities.len() - got.len()), lease).await?;
        assert!(!batch.is_empty(), "{CASE}: jobs went missing");
        got.extend(batch);
    }
    let order: Vec<(u8, Vec<u8>)> = got
        .iter()
        .map(|d| (d.priority, d.payload.to_vec()))
        .collect();
    assert_eq!(
        order, expected,
        "{CASE}: (priority, payload) in delivery order"
    );
    ack_all(queue, &got).await?;
    assert_drained(queue, &q, CASE).await?;
    Ok(CaseOutcome::Passed)
}

/// Jobs of one priority come out in the order they went in, across many dequeues.
pub async fn fifo_within_priority(queue: Arc<dyn TaskQueue>, prefix: &str) -> CaseResult {
    const CASE: &str = "fifo_within_priority";
    let queue = &*queue;
    let q = queue_name(prefix, CASE);
    let caps = queue.capabilities();
    let lease = lease_for(&caps, LONG_LEASE);
    let priority = if has_priorities(&caps) { 4 } else { 0 };
    let mut ids = Vec::new();
    for i in 0..20 {
        let e = queue
            .enqueue(
                &q,
                NewJob::new(format!("fifo-{i}").into_bytes()).priority(priority),
            )
            .await?;
        ids.push(e.id);
    }
    let mut got = Vec::new();
    while got.len() < ids.len() {
        let batch = take(queue, &q, 7.min(ids.len() - got.len()), lease).await?;
        assert!(!batch.is_empty(), "{CASE}: jobs went missing");
        got.extend(batch);
    }
    let got_ids: Vec<JobId> = got.iter().map(|d| d.job_id().clone()).collect();
    assert_eq!(got_ids, ids, "{CASE}: delivered in enqueue order");
    ack_all(queue, &got).await?;
    assert_drained(queue, &q, CASE).await?;
    Ok(CaseOutcome::Passed)
}

/// A delayed job is not delivered before its delay, is counted as delayed meanwhile, and
/// is delivered once it passed; a job without delay enqueued after it goes first.
pub async fn delayed_job_not_delivered_early(
    queue: Arc<dyn TaskQueue>,
    prefix: &str,
) -> CaseResult {
    const CASE: &str = "delayed_job_not_delivered_early";
    let caps = queue.capabilities();
    if !caps.delays {
        return skip(CASE, "delays");
    }
    let queue = &*queue;
    let q = queue_name(prefix, CASE);
    let lease = lease_for(&caps, LONG_LEASE);
    let delay = Duration::from_millis(600);

    let start = Instant::now();
    queue
        .enqueue(&q, NewJob::new(b"later".to_vec()).delay(delay))
        .await?;
    queue.enqueue(&q, NewJob::new(b"now".to_vec())).await?;
    let stats = queue.stats(&q).await?;
    if start.elapsed() < delay {
        assert_eq!(
            (stats.ready, stats.delayed),
            (1, 1),
            "{CASE}: one ready, one delayed"
        );
    }
    let now = take_one(queue, &q, lease, CASE).await?;
    assert_eq!(payload_of(&now), b"now", "{CASE}: the undelayed job first");
    queue.ack(&now.lease).await?;

    let later = take_when_due(queue, &q, lease, start, delay, CASE).await?;
    assert_eq!(payload_of(&later), b"later", "{CASE}: then the delayed one");
    queue.ack(&later.lease).await?;
    assert_drained(queue, &q, CASE).await?;
    Ok(CaseOutcome::Passed)
}

/// A dequeue waiting on an empty queue returns as soon as a job arrives, not at the end of
/// its wait.
pub async fn dequeue_waits_for_arrival(queue: Arc<dyn TaskQueue>, prefix: &str) -> CaseResult {
    const CASE: &str = "dequeue_waits_for_arrival";
    let q = queue_name(prefix, CASE);
    let lease = lease_for(&queue.capabilities(), LONG_LEASE);
    let wait = Duration::from_millis(2500);

    let producer = {
        let queue = queue.clone();
        let q = q.clone();
        tokio::spawn(async move {
            sleep(Duration::from_millis(300)).await;
            queue.enqueue(&q, NewJob::new(b"arrived".to_vec())).await
        })
    };
    let start = Instant::now();
    let got = queue.dequeue(&q, 1, lease, wait).await?;
    let elapsed = start.elapsed();
    join(producer).await??;
    assert_eq!(got.len(), 1, "{CASE}: the job that arrived during the wait");
    assert_eq!(payload_of(&got[0]), b"arrived", "{CASE}: payload");
    assert!(
        elapsed < Duration::from_secs(2),
        "{CASE}: returned after {elapsed:?}; it should return when the job arrives (~300 ms)"
    );
    queue.ack(&got[0].lease).await?;
    assert_drained(&*queue, &q, CASE).await?;
    Ok(CaseOutcome::Passed)
}

/// On an empty queue, dequeue returns an empty vector once its wait is over (not much
/// sooner, not much later), and at once when the wait is zero.
pub async fn dequeue_returns_empty_after_wait(
    queue: Arc<dyn TaskQueue>,
    prefix: &str,
) -> CaseResult {
    const CASE: &str = "dequeue_returns_empty_after_wait";
    let queue = &*queue;
    let q = queue_name(prefix, CASE);
    let wait = Duration::from_millis(300);

    let start = Instant::now();
    let got = queue.dequeue(&q, 5, SHORT_LEASE, wait).await?;
    let elapsed = start.elapsed();
    assert!(got.is_empty(), "{CASE}: nothing was enqueued");
    assert!(
        elapsed + CLOCK_SLACK >= wait,
        "{CASE}: returned after {elapsed:?}, before its wait of {wait:?}"
    );
    assert!(
        elapsed < wait + Duration::from_secs(2),
        "{CASE}: returned after {elapsed:?}, long after its wait of {wait:?}"
    );

    let start = Instant::now();
    let got = queue.dequeue(&q, 5, SHORT_LEASE, Duration::ZERO).await?;
    let elapsed = start.elapsed();
    assert!(got.is_empty(), "{CASE}: nothing was enqueued");
    assert!(
        elapsed < Duration::from_secs(1),
        "{CASE}: a zero wait took {elapsed:?}"
    );
    assert_drained(queue, &q, CASE).await?;
    Ok(CaseOutcome::Passed)
}

/// A lease that runs out makes the job deliverable again, with `attempt + 1`, a greater
/// fencing token, and not before the lease ended.
pub async fn lease_expiry_redelivers(queue: Arc<dyn TaskQueue>, prefix: &str) -> CaseResult {
    const CASE: &str = "lease_expiry_redelivers";
    let queue = &*queue;
    let q = queue_name(prefix, CASE);
    let caps = queue.capabilities();
    queue
        .enqueue(&q, NewJob::new(b"redeliver me".to_vec()))
        .await?;

    let start = Instant::now();
    let first = take_one(queue, &q, SHORT_LEASE, CASE).await?;
    assert_eq!(first.attempt, 1, "{CASE}: first attempt");
    let lease = lease_for(&caps, LONG_LEASE);
    let second = take_when_due(queue, &q, lease, start, SHORT_LEASE, CASE).await?;
    assert_eq!(second.job_id(), first.job_id(), "{CASE}: the same job");
    assert_eq!(
        second.attempt, 2,
        "{CASE}: attempt + 1 after the lease expired"
    );
    assert_eq!(second.payload, first.payload, "{CASE}: payload");
    assert!(
        second.lease.token > first.lease.token,
        "{CASE}: the fencing token grows with every delivery ({} then {})",
        first.lease.token,
        second.lease.token
    );
    queue.ack(&second.lease).await?;
    assert_drained(queue, &q, CASE).await?;
    Ok(CaseOutcome::Passed)
}

/// Once a lease expired, its ack, nack and extend are refused with `LeaseLost`, before
/// and after the job was redelivered; the new lease acks; an acked lease is refused.
pub async fn fencing_refuses_old_lease(queue: Arc<dyn TaskQueue>, prefix: &str) -> CaseResult {
    const CASE: &str = "fencing_refuses_old_lease";
    let queue = &*queue;
    let q = queue_name(prefix, CASE);
    let caps = queue.capabilities();
    queue.enqueue(&q, NewJob::new(b"fenced".to_vec())).await?;

    let old = take_one(queue, &q, SHORT_LEASE, CASE).await?;
    sleep(SHORT_LEASE + Duration::from_millis(200)).await;
    expect_lease_lost(queue.ack(&old.lease).await, CASE, "ack of an expired lease");

    let new = take_one(queue, &q, lease_for(&caps, LONG_LEASE), CASE).await?;
    assert_eq!(new.job_id(), old.job_id(), "{CASE}: the same job");
    assert_eq!(new.attempt, 2, "{CASE}: redelivered");
    expect_lease_lost(
        queue.ack(&old.lease).await,
        CASE,
        "ack with the old lease after redelivery",
    );
    expect_lease_lost(
        queue
            .nack(&old.lease, Retry::After(Duration::ZERO), "stale worker")
            .await,
        CASE,
        "nack with the old lease",
    );
    expect_lease_lost(
        queue.extend_lease(&old.lease, LONG_LEASE).await,
        CASE,
        "extend_lease with the old lease",
    );
    // The refused calls changed nothing: the new owner still holds the job.
    let stats = queue.stats(&q).await?;
    assert_eq!(
        (stats.leased, stats.ready, stats.dead),
        (1, 0, 0),
        "{CASE}: still leased to the new owner"
    );
    queue.ack(&new.lease).await?;
    expect_lease_lost(
        queue.ack(&new.lease).await,
        CASE,
        "a second ack of an acked job",
    );
    assert_drained(queue, &q, CASE).await?;
    Ok(CaseOutcome::Passed)
}

/// Heartbeats (`extend_lease`) keep a job from being redelivered past its first lease, and
/// the extended lease acks.
pub async fn extend_lease_prevents_redelivery(
    queue: Arc<dyn TaskQueue>,
    prefix: &str,
) -> CaseResult {
    const CASE: &str = "extend_lease_prevents_redelivery";
    let queue = &*queue;
    let q = queue_name(prefix, CASE);
    // A beat every quarter lease: one may come up to three quarters of a lease (750 ms)
    // late on a loaded machine before the job is redelivered.
    let lease = lease_for(&queue.capabilities(), Duration::from_millis(1_000));
    let beat = lease / 4;
    queue
        .enqueue(&q, NewJob::new(b"long task".to_vec()))
        .await?;

    let d = take_one(queue, &q, lease, CASE).await?;
    let mut current = d.lease.clone();
    // Six beats: 1.5 times the lease, so without the extensions it would have expired.
    for beat_no in 0..6 {
        sleep(beat).await;
        let extended = queue.extend_lease(&current, lease).await?;
        assert_eq!(&extended.job_id, d.job_id(), "{CASE}: same job");
        assert!(
            extended.expires_at >= current.expires_at,
            "{CASE}: beat {beat_no} moved the expiry earlier"
        );
        current = extended;
    }
    expect_nothing(queue, &q, CASE, "the lease was extended").await?;
    let stats = queue.stats(&q).await?;
    assert_eq!(stats.leased, 1, "{CASE}: still leased");
    queue.ack(&current).await?;
    assert_drained(queue, &q, CASE).await?;
    Ok(CaseOutcome::Passed)
}

/// `nack(Retry::After(d))` redelivers after `d` (immediately without delay support) with
/// `attempt + 1` and the reason as `last_error`.
pub async fn nack_retry_after_redelivers(queue: Arc<dyn TaskQueue>, prefix: &str) -> CaseResult {
    const CASE: &str = "nack_retry_after_redelivers";
    let queue = &*queue;
    let q = queue_name(prefix, CASE);
    let caps = queue.capabilities();
    let lease = lease_for(&caps, LONG_LEASE);
    let delay = if caps.delays {
        Duration::from_millis(400)
    } else {
        Duration::ZERO
    };
    queue.enqueue(&q, NewJob::new(b"flaky".to_vec())).await?;

    let first = take_one(queue, &q, lease, CASE).await?;
    let start = Instant::now();
    let outcome = queue
        .nack(&first.lease, Retry::After(delay), "boom: transient")
        .await?;
    assert_eq!(outcome, NackOutcome::Retrying { delay }, "{CASE}: outcome");
    let second = take_when_due(queue, &q, lease, start, delay, CASE).await?;
    assert_eq!(second.job_id(), first.job_id(), "{CASE}: the same job");
    assert_eq!(second.attempt, 2, "{CASE}: attempt + 1");
    assert_eq!(
        second.last_error.as_deref(),
        Some("boom: transient"),
        "{CASE}: last_error is the nack's reason"
    );
    queue.ack(&second.lease).await?;
    assert_drained(queue, &q, CASE).await?;
    Ok(CaseOutcome::Passed)
}

/// `nack(Retry::DeadLetter)` moves the job to the dead letters with the reason, intact,
/// and it is not delivered again.
pub async fn nack_dead_letter(queue: Arc<dyn TaskQueue>, prefix: &str) -> CaseResult {
    const CASE: &str = "nack_dead_letter";
    let queue = &*queue;
    let q = queue_name(prefix, CASE);
    let caps = queue.capabilities();
    let priority = if has_priorities(&caps) { 6 } else { 0 };
    let job = NewJob::new(b"poison".to_vec())
        .priority(priority)
        .header("origin", "conformance");
    let enqueued = queue.enqueue(&q, job.clone()).await?;

    let d = take_one(queue, &q, lease_for(&caps, LONG_LEASE), CASE).await?;
    let outcome = queue
        .nack(&d.lease, Retry::DeadLetter, "bad input: not JSON")
        .await?;
    assert_eq!(outcome, NackOutcome::DeadLettered, "{CASE}: outcome");
    expect_nothing(queue, &q, CASE, "a dead letter is not delivered").await?;

    let dead = queue.dead_letters(&q, 10).await?;
    assert_eq!(dead.len(), 1, "{CASE}: one dead letter");
    let dl = &dead[0];
    assert_eq!(dl.job_id, enqueued.id, "{CASE}: job id");
    assert_eq!(dl.payload, job.payload, "{CASE}: payload");
    assert_eq!(dl.headers, job.headers, "{CASE}: headers");
    assert_eq!(dl.priority, priority, "{CASE}: priority");
    assert_eq!(dl.attempts, 1, "{CASE}: attempts");
    assert!(
        dl.reason.contains("bad input: not JSON"),
        "{CASE}: reason {:?} should carry the nack's reason",
        dl.reason
    );
    let stats = queue.stats(&q).await?;
    assert_eq!(
        stats,
        QueueStats {
            dead: 1,
            ..QueueStats::default()
        },
        "{CASE}: stats"
    );
    expect_lease_lost(
        queue.ack(&d.lease).await,
        CASE,
        "ack of a dead-lettered delivery",
    );
    clear_dead(queue, &q, CASE).await?;
    assert_drained(queue, &q, CASE).await?;
    Ok(CaseOutcome::Passed)
}

/// After `max_attempts` deliveries, a nack that asks for a retry dead-letters the job with
/// that last error instead.
pub async fn max_attempts_dead_letters_last_error(
    queue: Arc<dyn TaskQueue>,
    prefix: &str,
) -> CaseResult {
    const CASE: &str = "max_attempts_dead_letters_last_error";
    let queue = &*queue;
    let q = queue_name(prefix, CASE);
    let lease = lease_for(&queue.capabilities(), LONG_LEASE);
    queue
        .enqueue(&q, NewJob::new(b"doomed".to_vec()).max_attempts(2))
        .await?;

    let first = take_one(queue, &q, lease, CASE).await?;
    assert!(!first.is_last_attempt(), "{CASE}: 1 of 2 is not the last");
    let outcome = queue
        .nack(&first.lease, Retry::After(Duration::ZERO), "first failure")
        .await?;
    assert_eq!(
        outcome,
        NackOutcome::Retrying {
            delay: Duration::ZERO
        },
        "{CASE}: attempts left, so retrying"
    );
    let second = take_one(queue, &q, lease, CASE).await?;
    assert_eq!(second.attempt, 2, "{CASE}: attempt");
    assert!(second.is_last_attempt(), "{CASE}: 2 of 2 is the last");
    assert_eq!(
        second.last_error.as_deref(),
        Some("first failure"),
        "{CASE}: last_error"
    );
    let outcome = queue
        .nack(
            &second.lease,
            Retry::After(Duration::ZERO),
            "second failure",
        )
        .await?;
    assert_eq!(
        outcome,
        NackOutcome::DeadLettered,
        "{CASE}: attempts spent, so dead-lettered"
    );
    expect_nothing(queue, &q, CASE, "the job's attempts are spent").await?;
    let dead = queue.dead_letters(&q, 10).await?;
    assert_eq!(dead.len(), 1, "{CASE}: one dead letter");
    assert_eq!(&dead[0].job_id, first.job_id(), "{CASE}: job id");
    assert_eq!(dead[0].attempts, 2, "{CASE}: attempts");
    assert!(
        dead[0].reason.contains("second failure"),
        "{CASE}: reason {:?} should be the last error",
        dead[0].reason
    );
    clear_dead(queue, &q, CASE).await?;
    assert_drained(queue, &q, CASE).await?;
    Ok(CaseOutcome::Passed)
}

/// A lease that expires on the job's last attempt dead-letters the job (with a reason)
/// instead of redelivering it.
pub async fn lease_expiry_on_last_attempt_dead_letters(
    queue: Arc<dyn TaskQueue>,
    prefix: &str,
) -> CaseResult {
    const CASE: &str = "lease_expiry_on_last_attempt_dead_letters";
    let queue = &*queue;
    let q = queue_name(prefix, CASE);
    let enqueued = queue
        .enqueue(&q, NewJob::new(b"worker dies".to_vec()).max_attempts(1))
        .await?;

    let d = take_one(queue, &q, SHORT_LEASE, CASE).await?;
    assert!(d.is_last_attempt(), "{CASE}: 1 of 1 is the last");
    sleep(SHORT_LEASE + Duration::from_millis(100)).await;
    expect_nothing(queue, &q, CASE, "the only attempt's lease expired").await?;

    // A backend may move it on its own schedule; give it until PATIENCE.
    let deadline = Instant::now() + PATIENCE;
    let dead = loop {
        let dead = queue.dead_letters(&q, 10).await?;
        if !dead.is_empty() || Instant::now() >= deadline {
            break dead;
        }
        sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        dead.len(),
        1,
        "{CASE}: dead-lettered after its lease expired"
    );
    assert_eq!(dead[0].job_id, enqueued.id, "{CASE}: job id");
    assert_eq!(dead[0].attempts, 1, "{CASE}: attempts");
    assert!(!dead[0].reason.is_empty(), "{CASE}: a dead letter says why");
    expect_lease_lost(queue.ack(&d.lease).await, CASE, "ack of the expired lease");
    clear_dead(queue, &q, CASE).await?;
    assert_drained(queue, &q, CASE).await?;
    Ok(CaseOutcome::Passed)
}

/// `requeue_dead` moves named dead letters back with fresh attempts, ignores ids that are
/// not dead, and counts only what it moved.
pub async fn requeue_dead_fresh_attempts(queue: Arc<dyn TaskQueue>, prefix: &str) -> CaseResult {
    const CASE: &str = "requeue_dead_fresh_attempts";
    let queue = &*queue;
    let q = queue_name(prefix, CASE);
    let lease = lease_for(&queue.capabilities(), LONG_LEASE);
    let job = NewJob::new(b"second chance".to_vec())
        .max_attempts(2)
        .header("k", "v");
    let enqueued = queue.enqueue(&q, job.clone()).await?;

    let first = take_one(queue, &q, lease, CASE).await?;
    queue
        .nack(&first.lease, Retry::After(Duration::ZERO), "first failure")
        .await?;
    let second = take_one(queue, &q, lease, CASE).await?;
    let outcome = queue
        .nack(&second.lease, Retry::DeadLetter, "gave up")
        .await?;
    assert_eq!(outcome, NackOutcome::DeadLettered, "{CASE}: outcome");

    let moved = queue
        .requeue_dead(&q, &[enqueued.id.clone(), JobId::from("no-such-job")])
        .await?;
    assert_eq!(
        moved, 1,
        "{CASE}: one dead letter moved, the unknown id ignored"
    );
    assert!(
        queue.dead_letters(&q, 10).await?.is_empty(),
        "{CASE}: no dead letters left"
    );
    let third = take_one(queue, &q, lease, CASE).await?;
    assert_eq!(third.job_id(), &enqueued.id, "{CASE}: the same job");
    assert_eq!(third.attempt, 1, "{CASE}: fresh attempts");
    assert_eq!(third.max_attempts, 2, "{CASE}: max_attempts kept");
    assert_eq!(third.payload, job.payload, "{CASE}: payload");
    assert_eq!(third.headers, job.headers, "{CASE}: headers");
    assert!(
        third.lease.token > second.lease.token,
        "{CASE}: fencing tokens keep growing after a requeue"
    );
    expect_lease_lost(
        queue.ack(&second.lease).await,
        CASE,
        "ack with a lease from before the requeue",
    );
    queue.ack(&third.lease).await?;
    assert_eq!(
        queue
            .requeue_dead(&q, std::slice::from_ref(&enqueued.id))
            .await?,
        0,
        "{CASE}: an acked job is not dead"
    );
    assert_drained(queue, &q, CASE).await?;
    Ok(CaseOutcome::Passed)
}

/// The same idempotency key inside the window yields the same id with `duplicate: true`
/// (also inside one batch, and after the job was acked) and only one delivery.
pub async fn idempotent_enqueue(queue: Arc<dyn TaskQueue>, prefix: &str) -> CaseResult {
    const CASE: &str = "idempotent_enqueue";
    let caps = queue.capabilities();
    if !caps.idempotency {
        return skip(CASE, "idempotency");
    }
    let queue = &*queue;
    let q = queue_name(prefix, CASE);
    let lease = lease_for(&caps, LONG_LEASE);
    let key = format!("{q}-order-42");
    let batch_key = format!("{q}-order-43");

    let first = queue
        .enqueue(&q, NewJob::new(b"original".to_vec()).idempotency_key(&key))
        .await?;
    assert!(!first.duplicate, "{CASE}: the first enqueue is new");
    let again = queue
        .enqueue(
            &q,
            NewJob::new(b"retry of the request".to_vec()).idempotency_key(&key),
        )
        .await?;
    assert!(again.duplicate, "{CASE}: same key, so a duplicate");
    assert_eq!(again.id, first.id, "{CASE}: same key, same id");

    let batch = queue
        .enqueue_batch(
            &q,
            vec![
                NewJob::new(b"batch original".to_vec()).idempotency_key(&batch_key),
                NewJob::new(b"batch copy".to_vec()).idempotency_key(&batch_key),
            ],
        )
        .await?;
    assert!(
        !batch[0].duplicate && batch[1].duplicate,
        "{CASE}: the second of a batch with one key is a duplicate"
    );
    assert_eq!(
        batch[0].id, batch[1].id,
        "{CASE}: one id for one key in a batch"
    );
    assert_ne!(
        batch[0].id, first.id,
        "{CASE}: different keys, different jobs"
    );
    assert_eq!(
        queue.stats(&q).await?.ready,
        2,
        "{CASE}: two jobs, not four"
    );

    let got = take(queue, &q, 2, lease).await?;
    let payloads: HashSet<&[u8]> = got.iter().map(payload_of).collect();
    assert_eq!(
        payloads,
        HashSet::from([&b"original"[..], &b"batch original"[..]]),
        "{CASE}: the first payload of each key is the one kept"
    );
    expect_nothing(queue, &q, CASE, "duplicates must not be delivered").await?;
    ack_all(queue, &got).await?;

    let after_ack = queue
        .enqueue(
            &q,
            NewJob::new(b"late retry".to_vec()).idempotency_key(&key),
        )
        .await?;
    assert!(
        after_ack.duplicate && after_ack.id == first.id,
        "{CASE}: the key dedupes for the whole window, even after the ack"
    );
    expect_nothing(
        queue,
        &q,
        CASE,
        "a duplicate after the ack must not run again",
    )
    .await?;
    assert_drained(queue, &q, CASE).await?;
    Ok(CaseOutcome::Passed)
}

/// Invalid jobs (priority out of range, zero attempts, payload over the limit, empty
/// queue name) are refused with typed errors, and a batch with one of them writes nothing.
pub async fn invalid_jobs_refused(queue: Arc<dyn TaskQueue>, prefix: &str) -> CaseResult {
    const CASE: &str = "invalid_jobs_refused";
    let queue = &*queue;
    let q = queue_name(prefix, CASE);
    let caps = queue.capabilities();
    let valid = || NewJob::new(b"valid".to_vec());

    let result = queue.enqueue(&q, valid().priority(10)).await;
    assert!(
        matches!(result, Err(QueueError::InvalidJob(_))),
        "{CASE}: priority 10 must be InvalidJob, got {result:?}"
    );
    let result = queue.enqueue(&q, valid().max_attempts(0)).await;
    assert!(
        matches!(result, Err(QueueError::InvalidJob(_))),
        "{CASE}: max_attempts 0 must be InvalidJob, got {result:?}"
    );
    // Past 64 MiB the test would spend its time allocating; such limits are not checked.
    let max = caps.max_payload_bytes;
    if max < 64 * 1024 * 1024 {
        let result = queue.enqueue(&q, NewJob::new(vec![0u8; max + 1])).await;
        let refused = matches!(
            result,
            Err(QueueError::PayloadTooLarge { size, max: limit }) if size == max + 1 && limit == max
        );
        assert!(
            refused,
            "{CASE}: a payload of max + 1 bytes must be PayloadTooLarge, got {result:?}"
        );
    } else {
        println!("{CASE}: payload limit of {max} bytes not checked (too large to allocate)");
    }
    let result = queue.enqueue("", valid()).await;
    assert!(
        matches!(result, Err(QueueError::InvalidQueueName { .. })),
        "{CASE}: enqueue to an empty queue name must be InvalidQueueName, got {result:?}"
    );
    let result = queue.dequeue("", 1, SHORT_LEASE, Duration::ZERO).await;
    assert!(
        matches!(result, Err(QueueError::InvalidQueueName { .. })),
        "{CASE}: dequeue from an empty queue name must be InvalidQueueName, got {result:?}"
    );

    let key = format!("{q}-key");
    let mut first = valid();
    if caps.idempotency {
        first = first.idempotency_key(&key);
    }
    let result = queue
        .enqueue_batch(&q, vec![first.clone(), valid().priority(10)])
        .await;
    assert!(
        matches!(result, Err(QueueError::InvalidJob(_))),
        "{CASE}: a batch with an invalid job must fail, got {result:?}"
    );
    assert_eq!(
        queue.stats(&q).await?,
        QueueStats::default(),
        "{CASE}: nothing of the refused jobs was written"
    );
    expect_nothing(queue, &q, CASE, "every enqueue was refused").await?;

    if caps.idempotency {
        let e = queue.enqueue(&q, first).await?;
        assert!(
            !e.duplicate,
            "{CASE}: the refused batch must not have recorded its idempotency key"
        );
        let d = take_one(queue, &q, lease_for(&caps, LONG_LEASE), CASE).await?;
        queue.ack(&d.lease).await?;
    }
    assert_drained(queue, &q, CASE).await?;
    Ok(CaseOutcome::Passed)
}

/// `stats` counts jobs by state: ready, delayed (with delay support), leased, dead.
pub async fn stats_counts_by_state(queue: Arc<dyn TaskQueue>, prefix: &str) -> CaseResult {
    const CASE: &str = "stats_counts_by_state";
    let queue = &*queue;
    let q = queue_name(prefix, CASE);
    let caps = queue.capabilities();
    let lease = lease_for(&caps, LONG_LEASE);
    let delay = Duration::from_secs(1);

    assert_eq!(
        queue.stats(&q).await?,
        QueueStats::default(),
        "{CASE}: an unused queue is empty"
    );
    let start = Instant::now();
    let jobs = (0..4)
        .map(|i| NewJob::new(format!("s{i}").into_bytes()))
        .collect();
    queue.enqueue_batch(&q, jobs).await?;
    if caps.delays {
        queue
            .enqueue(&q, NewJob::new(b"delayed".to_vec()).delay(delay))
            .await?;
    }
    let taken = take(queue, &q, 2, lease).await?;
    assert_eq!(taken.len(), 2, "{CASE}: took two");
    queue
        .nack(&taken[1].lease, Retry::DeadLetter, "for the count")
        .await?;
    let stats = queue.stats(&q).await?;
    if start.elapsed() < delay {
        let expected = QueueStats {
            ready: 2,
            delayed: u64::from(caps.delays),
            leased: 1,
            dead: 1,
        };
        assert_eq!(stats, expected, "{CASE}: counts by state");
    }

    queue.ack(&taken[0].lease).await?;
    clear_dead(queue, &q, CASE).await?;
    let total = if caps.delays { 3 } else { 2 };
    let rest = take(queue, &q, total, lease).await?;
    assert_eq!(rest.len(), total, "{CASE}: the remaining jobs");
    ack_all(queue, &rest).await?;
    assert_drained(queue, &q, CASE).await?;
    Ok(CaseOutcome::Passed)
}

/// An acked job is gone: not counted anywhere, not a dead letter, not redelivered after
/// its lease would have run out.
pub async fn acked_job_is_gone(queue: Arc<dyn TaskQueue>, prefix: &str) -> CaseResult {
    const CASE: &str = "acked_job_is_gone";
    let queue = &*queue;
    let q = queue_name(prefix, CASE);
    queue.enqueue(&q, NewJob::new(b"done".to_vec())).await?;
    let d = take_one(queue, &q, SHORT_LEASE, CASE).await?;
    queue.ack(&d.lease).await?;
    assert_drained(queue, &q, CASE).await?;
    sleep(SHORT_LEASE).await;
    expect_nothing(queue, &q, CASE, "an acked job must not come back").await?;
    assert!(
        queue.dead_letters(&q, 10).await?.is_empty(),
        "{CASE}: an acked job is not a dead letter"
    );
    assert_drained(queue, &q, CASE).await?;
    Ok(CaseOutcome::Passed)
}

/// A lease and a wait of `Duration::MAX` (as far as the backend's `max_lease` allows)
/// are the caller's to ask for: `dequeue` hands out the job, `extend_lease` extends it,
/// and nothing overflows or panics on the way.
pub async fn unbounded_durations_do_not_overflow(
    queue: Arc<dyn TaskQueue>,
    prefix: &str,
) -> CaseResult {
    const CASE: &str = "unbounded_durations_do_not_overflow";
    let queue = &*queue;
    let q = queue_name(prefix, CASE);
    let lease = lease_for(&queue.capabilities(), Duration::MAX);
    queue.enqueue(&q, NewJob::new(b"forever".to_vec())).await?;
    // The job is there, so an unbounded wait returns it; the timeout only keeps a broken
    // backend from hanging the suite.
    let got = tokio::time::timeout(PATIENCE * 5, queue.dequeue(&q, 1, lease, Duration::MAX))
        .await
        .map_err(|_| {
            QueueError::backend_msg(format!(
                "{CASE}: dequeue with an unbounded wait did not return the waiting job"
            ))
        })??;
    assert_eq!(got.len(), 1, "{CASE}: the waiting job comes");
    assert!(
        got[0].lease.remaining() >= lease.min(LONG_LEASE),
        "{CASE}: an unbounded lease is at least a long one"
    );
    let extended = queue.extend_lease(&got[0].lease, lease).await?;
    queue.ack(&extended).await?;
    assert_drained(queue, &q, CASE).await?;
    Ok(CaseOutcome::Passed)
}

/// `ack_batch` acks leases from several queues in one call, one result per lease in
/// order: a lease listed twice is acked once and refused (`LeaseLost`) the second time;
/// the acked jobs are gone; the same leases again are all refused; an empty batch is an
/// empty answer.
pub async fn ack_batch_acks_each(queue: Arc<dyn TaskQueue>, prefix: &str) -> CaseResult {
    const CASE: &str = "ack_batch_acks_each";
    let queue = &*queue;
    let (q1, q2) = (queue_name(prefix, CASE), queue_name(prefix, CASE));
    let caps = queue.capabilities();
    let lease = lease_for(&caps, LONG_LEASE);
    let jobs = |tag: &str, n: usize| -> Vec<NewJob> {
        (0..n)
            .map(|i| NewJob::new(format!("{tag}{i}").into_bytes()))
            .collect()
    };
    queue.enqueue_batch(&q1, jobs("a", 5)).await?;
    queue.enqueue_batch(&q2, jobs("b", 3)).await?;
    let first = take(queue, &q1, 5, lease).await?;
    let second = take(queue, &q2, 3, lease).await?;
    assert_eq!(
        (first.len(), second.len()),
        (5, 3),
        "{CASE}: every job delivered"
    );

    // Interleave the queues and list one lease twice.
    let mut leases = Vec::new();
    for (i, d) in first.iter().enumerate() {
        leases.push(d.lease.clone());
        if let Some(other) = second.get(i) {
            leases.push(other.lease.clone());
        }
    }
    let dup = leases.len();
    leases.push(first[2].lease.clone());
    let results = queue.ack_batch(&leases).await?;
    assert_eq!(results.len(), leases.len(), "{CASE}: one result per lease");
    for (i, result) in results.into_iter().enumerate() {
        if i == dup {
            expect_lease_lost(result, CASE, "the second ack of a lease listed twice");
        } else {
            assert!(
                result.is_ok(),
                "{CASE}: lease {i} ({:?}) must ack, got {result:?}",
                leases[i].job_id
            );
        }
    }
    assert_drained(queue, &q1, CASE).await?;
    assert_drained(queue, &q2, CASE).await?;

    let again = queue.ack_batch(&leases[..dup]).await?;
    assert_eq!(again.len(), dup, "{CASE}: one result per lease");
    for result in again {
        expect_lease_lost(result, CASE, "ack_batch of leases already acked");
    }
    assert!(
        queue.ack_batch(&[]).await?.is_empty(),
        "{CASE}: an empty batch has no results"
    );
    expect_nothing(queue, &q1, CASE, "acked jobs must not come back").await?;
    assert_drained(queue, &q1, CASE).await?;
    assert_drained(queue, &q2, CASE).await?;
    Ok(CaseOutcome::Passed)
}

/// In an `ack_batch`, a lease that expired and whose job was redelivered is refused with
/// `LeaseLost` while the current leases beside it ack; the refused one changes nothing
/// (the new owner still holds its job and acks it).
pub async fn ack_batch_refuses_stale_leases(queue: Arc<dyn TaskQueue>, prefix: &str) -> CaseResult {
    const CASE: &str = "ack_batch_refuses_stale_leases";
    let queue = &*queue;
    let q = queue_name(prefix, CASE);
    let caps = queue.capabilities();
    let lease = lease_for(&caps, LONG_LEASE);
    queue.enqueue(&q, NewJob::new(b"stale".to_vec())).await?;
    let old = take_one(queue, &q, SHORT_LEASE, CASE).await?;
    sleep(SHORT_LEASE + Duration::from_millis(200)).await;
    let new = take_one(queue, &q, lease, CASE).await?;
    assert_eq!(
        new.job_id(),
        old.job_id(),
        "{CASE}: the same job, redelivered"
    );
    queue.enqueue(&q, NewJob::new(b"fresh".to_vec())).await?;
    let fresh = take_one(queue, &q, lease, CASE).await?;
    assert_eq!(payload_of(&fresh), b"fresh", "{CASE}: the second job");

    let results = queue
        .ack_batch(&[old.lease.clone(), fresh.lease.clone()])
        .await?;
    assert_eq!(results.len(), 2, "{CASE}: one result per lease");
    let mut results = results.into_iter();
    expect_lease_lost(
        results.next().unwrap_or(Ok(())),
        CASE,
        "the expired, redelivered lease in a batch",
    );
    let fresh_result = results.next();
    assert!(
        matches!(fresh_result, Some(Ok(()))),
        "{CASE}: the current lease beside it must ack, got {fresh_result:?}"
    );
    let stats = queue.stats(&q).await?;
    assert_eq!(
        (stats.leased, stats.ready, stats.dead),
        (1, 0, 0),
        "{CASE}: still leased to the new owner"
    );
    let results = queue.ack_batch(std::slice::from_ref(&new.lease)).await?;
    assert!(
        matches!(results.as_slice(), [Ok(())]),
        "{CASE}: the new owner's lease acks, got {results:?}"
    );
    assert_drained(queue, &q, CASE).await?;
    Ok(CaseOutcome::Passed)
}

/// Arbitrary bytes (invalid UTF-8, NULs, every byte value, empty) and non-ASCII headers
/// arrive unchanged.
pub async fn binary_payloads_roundtrip(queue: Arc<dyn TaskQueue>, prefix: &str) -> CaseResult {
    const CASE: &str = "binary_payloads_roundtrip";
    let queue = &*queue;
    let q = queue_name(prefix, CASE);
    let lease = lease_for(&queue.capabilities(), LONG_LEASE);
    let payloads: Vec<Vec<u8>> = vec![
        vec![0xff, 0xfe, 0xfd, 0x00, 0x80],
        b"\xc3\x28 is not UTF-8".to_vec(),
        vec![0; 32],
        (0..=255u8).collect(),
        (0..=255u8).rev().cycle().take(4096).collect(),
        Vec::new(),
        "\u{1F980} crab, \u{00e9}t\u{00e9}, \r\n\t\"quoted\""
            .as_bytes()
            .to_vec(),
    ];
    let headers = BTreeMap::from([
        (
            "x-unicode".to_owned(),
            "\u{65e5}\u{672c}\u{8a9e} \u{1F600}".to_owned(),
        ),
        ("x-empty".to_owned(), String::new()),
        ("x-spaces and=signs".to_owned(), " a=b; c ".to_owned()),
    ]);
    let jobs = payloads
        .iter()
        .map(|p| {
            let mut job = NewJob::new(p.clone());
            job.headers = headers.clone();
            job
        })
        .collect();
    let ids: Vec<JobId> = queue
        .enqueue_batch(&q, jobs)
        .await?
        .into_iter()
        .map(|e| e.id)
        .collect();
    let got = take(queue, &q, payloads.len(), lease).await?;
    assert_eq!(got.len(), payloads.len(), "{CASE}: all delivered");
    for d in &got {
        let i = ids
            .iter()
            .position(|id| id == d.job_id())
            .unwrap_or(usize::MAX);
        assert!(i < payloads.len(), "{CASE}: unknown job {}", d.job_id());
        assert_eq!(payload_of(d), &payloads[i][..], "{CASE}: payload {i}");
        assert_eq!(d.headers, headers, "{CASE}: headers of payload {i}");
    }
    ack_all(queue, &got).await?;
    assert_drained(queue, &q, CASE).await?;
    Ok(CaseOutcome::Passed)
}

/// Four consumers dequeuing 200 jobs concurrently (with leases that do not run out) never
/// receive the same job twice, and together process all of them.
pub async fn concurrent_consumers_no_double_delivery(
    queue: Arc<dyn TaskQueue>,
    prefix: &str,
) -> CaseResult {
    const CASE: &str = "concurrent_consumers_no_double_delivery";
    const JOBS: usize = 200;
    const CONSUMERS: usize = 4;
    let q = queue_name(prefix, CASE);
    let lease = lease_for(&queue.capabilities(), LONG_LEASE);

    let acked = Arc::new(AtomicUsize::new(0));
    // Generous for a loaded machine (200 acks, one round trip each); the consumers stop as
    // soon as every job is acked.
    let deadline = Instant::now() + Duration::from_secs(20);
    type Seen = Vec<(JobId, Vec<u8>)>;
    let consumers: Vec<JoinHandle<Result<Seen, QueueError>>> = (0..CONSUMERS)
        .map(|_| {
            let queue = queue.clone();
            let q = q.clone();
            let acked = acked.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while acked.load(Ordering::SeqCst) < JOBS && Instant::now() < deadline {
                    let got = queue
                        .dequeue(&q, 7, lease, Duration::from_millis(100))
                        .await?;
                    for d in got {
                        seen.push((d.job_id().clone(), d.payload.to_vec()));
                        queue.ack(&d.lease).await?;
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                }
                Ok(seen)
            })
        })
        .collect();
    // Enqueue while the consumers already run, in batches, so they race on arrivals too.
    let mut ids = HashSet::new();
    for chunk in 0..(JOBS / 50) {
        let jobs = (0..50)
            .map(|i| NewJob::new(format!("job-{}", chunk * 50 + i).into_bytes()))
            .collect();
        for e in queue.enqueue_batch(&q, jobs).await? {
            ids.insert(e.id);
        }
    }
    assert_eq!(ids.len(), JOBS, "{CASE}: distinct ids");

    let mut delivered: Seen = Vec::new();
    for consumer in consumers {
        delivered.extend(join(consumer).await??);
    }
    let mut seen_ids = HashSet::new();
    for (id, _) in &delivered {
        assert!(
            seen_ids.insert(id.clone()),
            "{CASE}: job {id} was delivered twice while its lease was valid"
        );
    }
    assert_eq!(
        seen_ids,
        ids,
        "{CASE}: every job processed exactly once ({} of {JOBS})",
        delivered.len()
    );
    let payloads: HashSet<Vec<u8>> = delivered.into_iter().map(|(_, p)| p).collect();
    assert_eq!(payloads.len(), JOBS, "{CASE}: every payload once");
    assert_drained(&*queue, &q, CASE).await?;
    Ok(CaseOutcome::Passed)
}
