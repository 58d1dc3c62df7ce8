//! The conformance suite: the guarantees of [`StateStore`], checked the same way on every
//! backend.
//!
//! A backend's test file is one macro call. The expression after `make =` is evaluated inside
//! each (async) test, so it may `.await`, and each case gets its own store:
//!
//! ```ignore
//! // tests/memory.rs
//! agentic_store::store_conformance_suite!(
//!     make = std::sync::Arc::new(agentic_store::MemoryStore::new())
//! );
//! ```
//!
//! The test crate needs `tokio` (features `macros`, `rt-multi-thread`) as a dev-dependency,
//! because the expansion uses `#[tokio::test]`.
//!
//! Each case is also a public `async fn(Arc<dyn StateStore>, &str)` taking the store and a key
//! prefix that nobody else uses, so a harness can run them its own way. [`run_case`] is what
//! the macro calls: it makes a fresh random prefix, runs the case, and deletes every key under
//! the prefix afterwards, even when the case fails. Every key and lock name a case touches
//! starts with its prefix, so cases can run in parallel against one shared server.
//!
//! The suite uses real time (servers cannot pause their clocks): TTL and lock-expiry cases
//! wait a few hundred milliseconds, and every case finishes well under three seconds.
//! Cases that need a capability the backend lacks ([`StoreCapabilities`]) print
//! `SKIP store conformance <case>: <reason>` and return, so a skip is visible in
//! `cargo test -- --nocapture` instead of passing silently.
//!
//! Failures panic with a message naming the step, like any test assertion.
//!
//! [`StoreCapabilities`]: crate::StoreCapabilities

// This module is test code shipped for other crates' tests: a broken guarantee has to fail
// the test loudly, which is what these lints forbid in library code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};

use crate::{
    Expect, PutOptions, ScopedStore, StateStore, StoreError, TypedStore, Versioned, WatchEvent,
};

/// A store that runs a clean-up when it is dropped: when the test that owns its last handle
/// ends, passed or failed (a panic unwinds through the owner). For backend tests that must
/// leave nothing behind on a shared server: delete the test's namespace or buckets there.
/// Every [`StateStore`] call goes to the wrapped store.
pub struct CleanupOnDrop<S> {
    store: S,
    cleanup: Option<Cleanup<S>>,
}

/// What [`CleanupOnDrop`] runs on drop.
type Cleanup<S> = Box<dyn FnOnce(&S) + Send + Sync>;

impl<S> CleanupOnDrop<S> {
    /// Wraps `store`; `cleanup` runs once, on drop. It cannot await: a clean-up that needs
    /// async calls runs them on a thread of its own with its own small runtime.
    pub fn new(store: S, cleanup: impl FnOnce(&S) + Send + Sync + 'static) -> Self {
        CleanupOnDrop {
            store,
            cleanup: Some(Box::new(cleanup)),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.store
    }
}

impl<S> Drop for CleanupOnDrop<S> {
    fn drop(&mut self) {
        if let Some(cleanup) = self.cleanup.take() {
            cleanup(&self.store);
        }
    }
}

#[async_trait::async_trait]
impl<S: StateStore> StateStore for CleanupOnDrop<S> {
    fn capabilities(&self) -> crate::StoreCapabilities {
        self.store.capabilities()
    }
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        self.store.get(key).await
    }
    async fn put(&self, key: &str, value: Vec<u8>, opts: PutOptions) -> Result<u64, StoreError> {
        self.store.put(key, value, opts).await
    }
    async fn delete(&self, key: &str, expect: Expect) -> Result<bool, StoreError> {
        self.store.delete(key, expect).await
    }
    async fn scan(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<crate::ScanPage, StoreError> {
        self.store.scan(prefix, cursor, limit).await
    }
    async fn lock(
        &self,
        name: &str,
        ttl: Duration,
    ) -> Result<Option<crate::LockGuard>, StoreError> {
        self.store.lock(name, ttl).await
    }
    async fn extend_lock(
        &self,
        guard: &crate::LockGuard,
        ttl: Duration,
    ) -> Result<crate::LockGuard, StoreError> {
        self.store.extend_lock(guard, ttl).await
    }
    async fn unlock(&self, guard: &crate::LockGuard) -> Result<(), StoreError> {
        self.store.unlock(guard).await
    }
    async fn watch(
        &self,
        prefix: &str,
    ) -> Result<futures::stream::BoxStream<'static, Result<WatchEvent, StoreError>>, StoreError>
    {
        self.store.watch(prefix).await
    }
}

/// A short TTL the TTL and lock cases wait out; long enough for a networked backend to act
/// on a write before it expires.
const SHORT_TTL: Duration = Duration::from_millis(300);

/// How long past [`SHORT_TTL`] the cases wait before expecting expiry: allows for clock
/// granularity and server-side expiry sweeps.
const EXPIRY_WAIT: Duration = Duration::from_millis(700);

/// A TTL long enough that nothing expires during a case.
const LONG_TTL: Duration = Duration::from_secs(10);

/// How long a watch case waits for an event before failing.
const EVENT_WAIT: Duration = Duration::from_secs(2);

/// Generates one `#[tokio::test]` per conformance case, each running against the store that
/// `make` produces (an expression of type `Arc<dyn StateStore>`, or one that coerces to it,
/// evaluated inside the async test so it may `.await`).
///
/// ```ignore
/// agentic_store::store_conformance_suite!(
///     make = std::sync::Arc::new(agentic_store::MemoryStore::new())
/// );
/// ```
///
/// Invoke it once per module (wrap it in `mod name { ... }` to run several backends from one
/// file). The tests are named after the case functions in [`testkit`](crate::testkit).
#[macro_export]
macro_rules! store_conformance_suite {
    (make = $make:expr $(,)?) => {
        $crate::store_conformance_suite!(@cases ($make)
            put_get_roundtrip,
            empty_key_is_invalid,
            versions_increase,
            create_only_once,
            update_with_version,
            delete_with_expectation,
            ttl_expiry_hides_key,
            scan_pages_in_order,
            lock_is_exclusive,
            locks_are_not_keys,
            lock_tokens_increase,
            expired_lock_taken_over,
            extend_keeps_lock,
            unbounded_ttls_do_not_overflow,
            watch_sees_prefix_changes,
            concurrent_cas_loses_no_update,
            typed_roundtrip_and_codec_error,
            scoped_stores_are_isolated,
        );
    };
    (@cases ($make:expr) $($case:ident),+ $(,)?) => {$(
        // Multi-threaded so the concurrency cases really run in parallel.
        #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let store: ::std::sync::Arc<dyn $crate::StateStore> = $make;
            $crate::testkit::run_case(::core::stringify!($case), store, $crate::testkit::$case)
                .await;
        }
    )+};
}

/// A key prefix no other run uses: `conformance/<case>/<random hex>/`.
///
/// Only `[A-Za-z0-9_/]` (plus the case name), so it is a valid key on backends with
/// restrictive key syntax such as NATS KV.
pub fn unique_prefix(case: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // `RandomState` is seeded randomly per process; hashing a counter and the time with it
    // gives distinct prefixes within a run and across runs sharing a server.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let random = RandomState::new().hash_one((nanos, n, std::process::id()));
    format!("conformance/{case}/{random:016x}/")
}

/// Runs one case the way [`store_conformance_suite!`](crate::store_conformance_suite) does:
/// with a fresh [`unique_prefix`], then [`cleanup`] of that prefix whether the case passed or
/// panicked, then the case's panic (if any) passed on.
///
/// Await it directly (as the macro's tests do) or join several in one task: the compiler
/// cannot yet prove this future `Send` for a case with a borrowed prefix, so it cannot be
/// passed to `tokio::spawn`. The cases spawn their own tasks where they need parallelism.
pub async fn run_case<F>(name: &str, store: Arc<dyn StateStore>, case: F)
where
    F: AsyncFnOnce(Arc<dyn StateStore>, &str),
{
    let prefix = unique_prefix(name);
    let outcome = AssertUnwindSafe(case(Arc::clone(&store), &prefix))
        .catch_unwind()
        .await;
    cleanup(store.as_ref(), &prefix).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Deletes every key under `prefix`. Errors are printed, not raised: cleanup must not hide
/// the case's own outcome.
pub async fn cleanup(store: &dyn StateStore, prefix: &str) {
    // Collect first, then delete, so deleting does not disturb the scan's cursor.
    let mut keys = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        match store.scan(prefix, cursor.as_deref(), 100).await {
            Ok(page) => {
                keys.extend(page.items.into_iter().map(|(k, _)| k));
                match page.next_cursor {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
            Err(e) => {
                eprintln!("store conformance cleanup of {prefix:?}: scan failed: {e}");
                break;
            }
        }
    }
    for key in keys {
        if let Err(e) = store.delete(&key, Expect::Any).await {
            eprintln!("store conformance cleanup: delete {key:?} failed: {e}");
        }
    }
}

/// Prints the named skip of a case the backend cannot run.
fn skip(case: &str, reason: &str) {
    println!("SKIP store conformance {case}: {reason}");
}

async fn must_get(store: &dyn StateStore, key: &str) -> Option<Versioned> {
    store
        .get(key)
        .await
        .unwrap_or_else(|e| panic!("get {key:?} failed: {e}"))
}

async fn must_put(store: &dyn StateStore, key: &str, value: &[u8], opts: PutOptions) -> u64 {
    store
        .put(key, value.to_vec(), opts)
        .await
        .unwrap_or_else(|e| panic!("put {key:?} with {opts:?} failed: {e}"))
}

#[track_caller]
fn assert_conflict<T: std::fmt::Debug>(
    result: Result<T, StoreError>,
    key: &str,
    found: Option<u64>,
    step: &str,
) {
    match result {
        Err(StoreError::Conflict {
            key: k, found: f, ..
        }) => {
            assert_eq!(k, key, "{step}: conflict names the wrong key");
            assert_eq!(f, found, "{step}: conflict reports the wrong found version");
        }
        other => panic!("{step}: expected a conflict, got {other:?}"),
    }
}

#[track_caller]
fn assert_lock_lost<T: std::fmt::Debug>(result: Result<T, StoreError>, step: &str) {
    assert!(
        matches!(result, Err(StoreError::LockLost { .. })),
        "{step}: expected LockLost, got {result:?}"
    );
}

/// Every key with `prefix`, paging with `limit`; checks each page's size and order.
async fn scan_all(store: &dyn StateStore, prefix: &str, limit: usize) -> Vec<(String, Versioned)> {
    let mut all: Vec<(String, Versioned)> = Vec::new();
    let mut cursor: Option<String> = None;
    // Bounds the loop so a backend whose cursor never ends fails instead of hanging.
    for _ in 0..1000 {
        let page = store
            .scan(prefix, cursor.as_deref(), limit)
            .await
            .unwrap_or_else(|e| panic!("scan {prefix:?} after {cursor:?} failed: {e}"));
        assert!(
            page.items.len() <= limit,
            "scan returned {} items, more than the limit {limit}",
            page.items.len()
        );
        for (key, _) in &page.items {
            assert!(
                key.starts_with(prefix),
                "scan {prefix:?} returned {key:?}, outside the prefix"
            );
            if let Some((last, _)) = all.last() {
                assert!(
                    key > last,
                    "scan out of order or repeated: {key:?} after {last:?}"
                );
            }
        }
        all.extend(page.items);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return all,
        }
    }
    panic!("scan {prefix:?} did not finish within 1000 pages of {limit}");
}

async fn next_event(
    events: &mut futures::stream::BoxStream<'static, Result<WatchEvent, StoreError>>,
    step: &str,
) -> WatchEvent {
    match tokio::time::timeout(EVENT_WAIT, events.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(e))) => panic!("{step}: watch yielded an error: {e}"),
        Ok(None) => panic!("{step}: watch stream ended"),
        Err(_) => panic!("{step}: no watch event within {EVENT_WAIT:?}"),
    }
}

/// Values come back byte for byte: arbitrary non-UTF-8 bytes, an empty value, and 64 KiB.
pub async fn put_get_roundtrip(store: Arc<dyn StateStore>, prefix: &str) {
    let store = store.as_ref();
    let all_bytes: Vec<u8> = (0..=255u8).rev().collect();
    let large: Vec<u8> = (0..64 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let cases: [(&str, &[u8]); 4] = [
        ("binary", &all_bytes),
        ("invalid_utf8", &[0xff, 0xfe, 0x00, 0xc3, 0x28, 0x80]),
        ("empty", &[]),
        ("large", &large),
    ];
    assert_eq!(
        must_get(store, &format!("{prefix}missing")).await,
        None,
        "a key never written reads as None"
    );
    for (name, value) in cases {
        let key = format!("{prefix}{name}");
        let version = must_put(store, &key, value, PutOptions::new()).await;
        assert!(version > 0, "{name}: version must not be 0");
        let got = must_get(store, &key)
            .await
            .unwrap_or_else(|| panic!("{name}: written key reads as None"));
        assert_eq!(
            got.value.as_ref(),
            value,
            "{name}: value changed in the store"
        );
        assert_eq!(got.version, version, "{name}: get returns another version");
    }
}

/// An empty key is refused with [`StoreError::Invalid`] by `get`, `put` and `delete`.
pub async fn empty_key_is_invalid(store: Arc<dyn StateStore>, _prefix: &str) {
    let r = store.get("").await;
    assert!(matches!(r, Err(StoreError::Invalid(_))), "get(\"\"): {r:?}");
    let r = store.put("", b"x".to_vec(), PutOptions::new()).await;
    assert!(matches!(r, Err(StoreError::Invalid(_))), "put(\"\"): {r:?}");
    let r = store.delete("", Expect::Any).await;
    assert!(
        matches!(r, Err(StoreError::Invalid(_))),
        "delete(\"\"): {r:?}"
    );
}

/// Every write returns a version greater than any the key had before, including after the
/// key was deleted and created again.
pub async fn versions_increase(store: Arc<dyn StateStore>, prefix: &str) {
    let store = store.as_ref();
    let key = format!("{prefix}k");
    let mut last = 0;
    for i in 0..5u8 {
        let v = must_put(store, &key, &[i], PutOptions::new()).await;
        assert!(v > last, "write {i}: version {v} not greater than {last}");
        last = v;
    }
    let got = must_get(store, &key).await.expect("key just written");
    assert_eq!(got.version, last, "get returns the latest version");
    assert_eq!(got.value.as_ref(), &[4]);

    assert!(store.delete(&key, Expect::Any).await.expect("delete"));
    let v = must_put(store, &key, b"again", PutOptions::create()).await;
    assert!(
        v > last,
        "recreated key got version {v}, not greater than its old {last}: versions reused"
    );
}

/// [`Expect::Absent`] creates once; the second create conflicts and changes nothing.
pub async fn create_only_once(store: Arc<dyn StateStore>, prefix: &str) {
    let store = store.as_ref();
    let key = format!("{prefix}k");
    let v1 = must_put(store, &key, b"first", PutOptions::create()).await;
    let second = store
        .put(&key, b"second".to_vec(), PutOptions::create())
        .await;
    assert_conflict(second, &key, Some(v1), "second create");
    let got = must_get(store, &key).await.expect("created key");
    assert_eq!(
        got.value.as_ref(),
        b"first",
        "a refused create wrote its value"
    );
    assert_eq!(got.version, v1, "a refused create changed the version");
}

/// [`Expect::Version`] writes when the version matches; a stale or absent version conflicts
/// and changes nothing.
pub async fn update_with_version(store: Arc<dyn StateStore>, prefix: &str) {
    let store = store.as_ref();
    let key = format!("{prefix}k");
    let v1 = must_put(store, &key, b"one", PutOptions::new()).await;
    let v2 = must_put(store, &key, b"two", PutOptions::expect_version(v1)).await;
    assert!(v2 > v1, "update version {v2} not greater than {v1}");

    let stale = store
        .put(&key, b"stale".to_vec(), PutOptions::expect_version(v1))
        .await;
    assert_conflict(stale, &key, Some(v2), "update with a stale version");
    let got = must_get(store, &key).await.expect("key exists");
    assert_eq!(
        got.value.as_ref(),
        b"two",
        "a refused update wrote its value"
    );
    assert_eq!(got.version, v2);

    let missing = format!("{prefix}missing");
    let r = store
        .put(&missing, b"x".to_vec(), PutOptions::expect_version(v2))
        .await;
    assert_conflict(r, &missing, None, "update of an absent key");
    assert_eq!(
        must_get(store, &missing).await,
        None,
        "a refused update created the key"
    );
}

/// `delete` reports whether a live key was deleted; expectations that do not hold conflict
/// and delete nothing.
pub async fn delete_with_expectation(store: Arc<dyn StateStore>, prefix: &str) {
    let store = store.as_ref();
    let key = format!("{prefix}k");

    let r = store
        .delete(&key, Expect::Any)
        .await
        .expect("delete absent");
    assert!(!r, "deleting an absent key reports true");
    let r = store
        .delete(&key, Expect::Absent)
        .await
        .expect("delete absent expecting absent");
    assert!(!r, "delete expecting absent on an absent key reports true");
    let r = store.delete(&key, Expect::Version(1)).await;
    assert_conflict(r, &key, None, "delete expecting a version of an absent key");

    let v1 = must_put(store, &key, b"x", PutOptions::new()).await;
    assert!(store.delete(&key, Expect::Any).await.expect("delete"));
    assert_eq!(must_get(store, &key).await, None, "deleted key still reads");

    let v2 = must_put(store, &key, b"y", PutOptions::new()).await;
    let r = store.delete(&key, Expect::Version(v1)).await;
    assert_conflict(r, &key, Some(v2), "delete with a stale version");
    let r = store.delete(&key, Expect::Absent).await;
    assert_conflict(
        r,
        &key,
        Some(v2),
        "delete expecting absent on a present key",
    );
    assert_eq!(
        must_get(store, &key).await.map(|v| v.version),
        Some(v2),
        "a refused delete removed or changed the key"
    );
    let r = store
        .delete(&key, Expect::Version(v2))
        .await
        .expect("delete with the right version");
    assert!(r, "delete with the right version reports false");
    assert_eq!(must_get(store, &key).await, None);
}

/// A key past its TTL is gone from `get` and `scan` and counts as absent for a create;
/// a key without TTL (or whose TTL was removed by an overwrite) stays.
pub async fn ttl_expiry_hides_key(store: Arc<dyn StateStore>, prefix: &str) {
    const CASE: &str = "ttl_expiry_hides_key";
    if !store.capabilities().per_key_ttl {
        return skip(CASE, "backend has no per-key TTL");
    }
    let store = store.as_ref();
    let short = format!("{prefix}short");
    let rewritten = format!("{prefix}rewritten");
    let long = format!("{prefix}long");
    let plain = format!("{prefix}plain");
    let v_short = must_put(store, &short, b"s", PutOptions::new().ttl(SHORT_TTL)).await;
    must_put(store, &rewritten, b"r", PutOptions::new().ttl(SHORT_TTL)).await;
    // Overwriting without a TTL keeps the key until deleted.
    must_put(store, &rewritten, b"r2", PutOptions::new()).await;
    must_put(store, &long, b"l", PutOptions::new().ttl(LONG_TTL)).await;
    must_put(store, &plain, b"p", PutOptions::new()).await;
    assert!(
        must_get(store, &short).await.is_some(),
        "a key with a TTL is missing before the TTL passed"
    );

    tokio::time::sleep(EXPIRY_WAIT).await;

    assert_eq!(
        must_get(store, &short).await,
        None,
        "get returns a key whose TTL passed"
    );
    let keys: Vec<String> = scan_all(store, prefix, 10)
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        keys,
        [long.clone(), plain.clone(), rewritten.clone()],
        "scan after expiry"
    );
    assert_eq!(
        must_get(store, &rewritten).await.map(|v| v.value.to_vec()),
        Some(b"r2".to_vec()),
        "an overwrite without TTL still expired with the old TTL"
    );
    let v = must_put(store, &short, b"again", PutOptions::create()).await;
    assert!(v > v_short, "recreated expired key reuses an old version");
}

/// Paging through a prefix with a cursor returns every key under it exactly once, in order,
/// and nothing outside it.
pub async fn scan_pages_in_order(store: Arc<dyn StateStore>, prefix: &str) {
    let store = store.as_ref();
    let base = format!("{prefix}s/");
    let mut expected = Vec::new();
    // Written out of order; the scan must sort.
    for i in (0..23).rev() {
        let key = format!("{base}{i:03}");
        let v = must_put(store, &key, format!("v{i}").as_bytes(), PutOptions::new()).await;
        expected.push((key, v));
    }
    expected.sort();
    // Neighbours that share characters with the prefix but are not under it: "s." sorts
    // just before "s/", "s0" just after every "s/..." key, and "s" is the prefix minus '/'.
    for outside in ["s", "s.", "s0", "r/1", "t/1"] {
        must_put(
            store,
            &format!("{prefix}{outside}"),
            b"out",
            PutOptions::new(),
        )
        .await;
    }

    for limit in [1, 5, 7, 23, 100] {
        let got = scan_all(store, &base, limit).await;
        let got_keys: Vec<(String, u64)> =
            got.iter().map(|(k, v)| (k.clone(), v.version)).collect();
        assert_eq!(got_keys, expected, "scan with limit {limit}");
        for (key, v) in &got {
            let i: u32 = key[base.len()..].parse().expect("key written by this case");
            let want = format!("v{i}");
            assert_eq!(v.value.as_ref(), want.as_bytes(), "value of {key}");
        }
    }

    // The cursor is exclusive: scanning after key 005 starts at 006.
    let after = format!("{base}005");
    let page = store.scan(&base, Some(&after), 3).await.expect("scan");
    let keys: Vec<&str> = page.items.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            format!("{base}006"),
            format!("{base}007"),
            format!("{base}008")
        ],
        "scan after a cursor"
    );
    assert!(
        page.next_cursor.is_some(),
        "more keys follow, yet no cursor"
    );

    let empty = store
        .scan(&format!("{prefix}nothing/"), None, 10)
        .await
        .expect("scan empty prefix");
    assert!(empty.items.is_empty());
    assert_eq!(empty.next_cursor, None, "an empty scan returns a cursor");
}

/// At most one holder: a second `lock` of the same name (by anyone, including the holder)
/// gets `None` until it is released; other names are independent. Of eight racing
/// acquirers exactly one wins.
pub async fn lock_is_exclusive(store: Arc<dyn StateStore>, prefix: &str) {
    let name = format!("{prefix}lock");
    let other = format!("{prefix}other");
    let guard = store
        .lock(&name, LONG_TTL)
        .await
        .expect("lock")
        .expect("a free lock is taken");
    assert!(guard.token > 0, "fencing token 0");
    assert_eq!(guard.name, name);
    assert!(
        store.lock(&name, LONG_TTL).await.expect("lock").is_none(),
        "a held lock was taken again"
    );
    let g_other = store
        .lock(&other, LONG_TTL)
        .await
        .expect("lock")
        .expect("another name is independent");
    store.unlock(&guard).await.expect("unlock");
    store.unlock(&g_other).await.expect("unlock other");

    let race = format!("{prefix}race");
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = Arc::clone(&store);
            let race = race.clone();
            tokio::spawn(async move { store.lock(&race, LONG_TTL).await })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        if let Some(g) = task.await.expect("task").expect("lock") {
            winners.push(g);
        }
    }
    assert_eq!(winners.len(), 1, "racing acquirers: {winners:?}");
    for g in winners {
        store.unlock(&g).await.expect("unlock");
    }
}

/// Locks live apart from keys: a lock is not a key (not read by `get`, not listed by `scan`),
/// and a key of the same name does not affect the lock.
pub async fn locks_are_not_keys(store: Arc<dyn StateStore>, prefix: &str) {
    let name = format!("{prefix}same");
    let guard = store
        .lock(&name, LONG_TTL)
        .await
        .expect("lock")
        .expect("free lock");
    assert_eq!(
        must_get(store.as_ref(), &name).await,
        None,
        "a lock reads as a key"
    );
    let page = store.scan(prefix, None, 10).await.expect("scan");
    assert!(page.items.is_empty(), "scan lists locks: {:?}", page.items);
    must_put(store.as_ref(), &name, b"v", PutOptions::create()).await;
    assert!(store.delete(&name, Expect::Any).await.expect("delete"));
    store
        .unlock(&guard)
        .await
        .expect("the lock survives a key of the same name");
}

/// Fencing tokens grow with every acquisition of a name, across release and expiry; a
/// released guard can no longer be extended or released.
pub async fn lock_tokens_increase(store: Arc<dyn StateStore>, prefix: &str) {
    let name = format!("{prefix}lock");
    let mut last = 0;
    for round in 0..3 {
        let g = store
            .lock(&name, LONG_TTL)
            .await
            .expect("lock")
            .unwrap_or_else(|| panic!("round {round}: released lock is not free"));
        assert!(
            g.token > last,
            "round {round}: token {} not greater than {last}",
            g.token
        );
        last = g.token;
        store.unlock(&g).await.expect("unlock");
        assert_lock_lost(store.unlock(&g).await, "second unlock of a released lock");
        assert_lock_lost(
            store.extend_lock(&g, LONG_TTL).await,
            "extend of a released lock",
        );
    }
    // And across expiry without release (lock TTLs are not optional, unlike key TTLs).
    let g = store
        .lock(&name, SHORT_TTL)
        .await
        .expect("lock")
        .expect("free lock");
    assert!(g.token > last, "token after unlock did not grow");
    tokio::time::sleep(EXPIRY_WAIT).await;
    let g2 = store
        .lock(&name, LONG_TTL)
        .await
        .expect("lock")
        .expect("expired lock is free");
    assert!(g2.token > g.token, "token after expiry did not grow");
    store.unlock(&g2).await.expect("unlock");
}

/// A lock whose TTL passed is taken by another holder with a greater token; the old holder's
/// extend and unlock fail with [`StoreError::LockLost`] and leave the new holder's lock alone.
pub async fn expired_lock_taken_over(store: Arc<dyn StateStore>, prefix: &str) {
    let name = format!("{prefix}lock");
    let old = store
        .lock(&name, SHORT_TTL)
        .await
        .expect("lock")
        .expect("free lock");
    tokio::time::sleep(EXPIRY_WAIT).await;
    let new = store
        .lock(&name, LONG_TTL)
        .await
        .expect("lock")
        .expect("an expired lock can be taken");
    assert!(new.token > old.token, "takeover token did not grow");
    assert_lock_lost(
        store.extend_lock(&old, LONG_TTL).await,
        "extend by the old holder",
    );
    assert_lock_lost(store.unlock(&old).await, "unlock by the old holder");
    assert!(
        store.lock(&name, LONG_TTL).await.expect("lock").is_none(),
        "the old holder's refused unlock released the new holder's lock"
    );
    let new = store
        .extend_lock(&new, LONG_TTL)
        .await
        .expect("the new holder still holds the lock");
    store.unlock(&new).await.expect("unlock by the new holder");
}

/// Extending a lock keeps it past its original TTL, with the same token and a later expiry.
pub async fn extend_keeps_lock(store: Arc<dyn StateStore>, prefix: &str) {
    let name = format!("{prefix}lock");
    let g = store
        .lock(&name, Duration::from_millis(1_000))
        .await
        .expect("lock")
        .expect("free lock");
    // Well inside the TTL, even on a loaded machine.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let g2 = store
        .extend_lock(&g, Duration::from_millis(3_000))
        .await
        .expect("extend a held lock");
    assert_eq!(g2.token, g.token, "extend changed the token");
    assert_eq!(g2.name, g.name);
    assert!(
        g2.expires_at > g.expires_at,
        "extend did not move expires_at"
    );
    // Past the original second: still held.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert!(
        store.lock(&name, LONG_TTL).await.expect("lock").is_none(),
        "an extended lock was free after its original TTL"
    );
    store.unlock(&g2).await.expect("unlock the extended lock");
}

/// A TTL of `Duration::MAX` is the caller's to ask for: a lock, its extension and a put
/// with it either work or are refused with `StoreError::Invalid`, and nothing overflows
/// or panics on the way.
pub async fn unbounded_ttls_do_not_overflow(store: Arc<dyn StateStore>, prefix: &str) {
    let name = format!("{prefix}forever");
    match store.lock(&name, Duration::MAX).await {
        Ok(Some(g)) => {
            match store.extend_lock(&g, Duration::MAX).await {
                Ok(g2) => assert_eq!(g2.token, g.token, "extend changed the token"),
                Err(StoreError::Invalid(_)) => {}
                Err(e) => panic!("extend_lock(Duration::MAX): {e}"),
            }
            store.unlock(&g).await.expect("unlock");
        }
        Ok(None) => panic!("a fresh lock was held"),
        Err(StoreError::Invalid(_)) => {}
        Err(e) => panic!("lock(Duration::MAX): {e}"),
    }
    if store.capabilities().per_key_ttl {
        let key = format!("{prefix}forever-key");
        match store
            .put(&key, b"v".to_vec(), PutOptions::new().ttl(Duration::MAX))
            .await
        {
            Ok(_) => {
                let got = store.get(&key).await.expect("get").expect("present");
                assert_eq!(&got.value[..], b"v");
            }
            Err(StoreError::Invalid(_)) => {}
            Err(e) => panic!("put with ttl Duration::MAX: {e}"),
        }
    }
}

/// `watch` reports puts (with value and version) and deletes under its prefix, in order,
/// and nothing outside it.
pub async fn watch_sees_prefix_changes(store: Arc<dyn StateStore>, prefix: &str) {
    const CASE: &str = "watch_sees_prefix_changes";
    if !store.capabilities().watch {
        return skip(CASE, "backend has no watch");
    }
    let store = store.as_ref();
    let watched = format!("{prefix}w/");
    let mut events = store.watch(&watched).await.expect("watch");

    let a = format!("{watched}a");
    let outside = format!("{prefix}x/a");
    let end = format!("{watched}end");
    let va = must_put(store, &a, b"1", PutOptions::new()).await;
    must_put(store, &outside, b"out", PutOptions::new()).await;
    assert!(store.delete(&outside, Expect::Any).await.expect("delete"));
    assert!(store.delete(&a, Expect::Any).await.expect("delete"));
    let vend = must_put(store, &end, b"end", PutOptions::new()).await;

    let expected = [
        WatchEvent::Put {
            key: a.clone(),
            value: Versioned {
                value: bytes::Bytes::from_static(b"1"),
                version: va,
            },
        },
        WatchEvent::Delete { key: a.clone() },
        WatchEvent::Put {
            key: end.clone(),
            value: Versioned {
                value: bytes::Bytes::from_static(b"end"),
                version: vend,
            },
        },
    ];
    for (i, want) in expected.iter().enumerate() {
        let got = next_event(&mut events, &format!("event {i}")).await;
        assert_eq!(&got, want, "event {i}");
    }
}

/// Eight tasks increment one counter by read-modify-write with compare-and-set, retrying on
/// conflict: no increment is lost, and versions grow with the value.
pub async fn concurrent_cas_loses_no_update(store: Arc<dyn StateStore>, prefix: &str) {
    const TASKS: u64 = 8;
    const PER_TASK: u64 = 25;
    let key = format!("{prefix}counter");
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let store = Arc::clone(&store);
            let key = key.clone();
            tokio::spawn(async move {
                let mut written = Vec::new();
                for _ in 0..PER_TASK {
                    loop {
                        let current = store.get(&key).await.expect("get");
                        let (n, expect) = match &current {
                            None => (0, Expect::Absent),
                            Some(v) => {
                                let n: u64 = std::str::from_utf8(&v.value)
                                    .ok()
                                    .and_then(|s| s.parse().ok())
                                    .expect("counter holds a number");
                                (n, Expect::Version(v.version))
                            }
                        };
                        let next = n + 1;
                        let opts = PutOptions::new().expect(expect);
                        match store.put(&key, next.to_string().into_bytes(), opts).await {
                            Ok(version) => {
                                written.push((next, version));
                                break;
                            }
                            Err(e) if e.is_conflict() => {
                                // Someone else won this round; yield so they can finish.
                                tokio::task::yield_now().await;
                            }
                            Err(e) => panic!("put failed: {e}"),
                        }
                    }
                }
                written
            })
        })
        .collect();
    let mut written = Vec::new();
    for task in tasks {
        written.extend(task.await.expect("increment task panicked"));
    }
    let total = TASKS * PER_TASK;
    let got = must_get(store.as_ref(), &key).await.expect("counter");
    assert_eq!(
        std::str::from_utf8(&got.value).ok(),
        Some(total.to_string().as_str()),
        "increments were lost"
    );
    written.sort();
    let values: Vec<u64> = written.iter().map(|&(n, _)| n).collect();
    assert_eq!(
        values,
        (1..=total).collect::<Vec<_>>(),
        "each value must be written exactly once"
    );
    assert!(
        written.windows(2).all(|w| w[0].1 < w[1].1),
        "versions do not grow with the counter"
    );
}

/// A value for the typed case; nested and with text that needs escaping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Sample {
    name: String,
    count: u64,
    tags: Vec<String>,
    note: Option<String>,
}

/// [`TypedStore`] round-trips a serde value with its version, and reading bytes that do not
/// decode is a [`StoreError::Codec`] error naming the key.
pub async fn typed_roundtrip_and_codec_error(store: Arc<dyn StateStore>, prefix: &str) {
    let typed: TypedStore<Sample> = TypedStore::new(Arc::clone(&store));
    let key = format!("{prefix}typed");
    let sample = Sample {
        name: "plan \"α\"\n".to_owned(),
        count: 3,
        tags: vec!["a".to_owned(), String::new()],
        note: None,
    };
    let v = typed
        .put(&key, &sample, PutOptions::create())
        .await
        .expect("typed put");
    let got = typed
        .get(&key)
        .await
        .expect("typed get")
        .expect("typed value");
    assert_eq!(got.value, sample);
    assert_eq!(got.version, v);

    let updated = typed
        .update(&key, 3, |cur| {
            cur.cloned().map(|mut s| {
                s.count += 1;
                s
            })
        })
        .await
        .expect("typed update")
        .expect("update wrote");
    assert_eq!(updated.value.count, 4);
    assert!(updated.version > v);

    let bad = format!("{prefix}bad");
    must_put(store.as_ref(), &bad, &[0xff, 0x00, 0x7b], PutOptions::new()).await;
    match typed.get(&bad).await {
        Err(StoreError::Codec { action, key, .. }) => {
            assert_eq!(action, "decode");
            assert_eq!(key, bad);
        }
        other => panic!("undecodable bytes: expected a Codec error, got {other:?}"),
    }
}

/// Two [`ScopedStore`]s over one store are independent: the same key holds different values,
/// scans and conflicts see only their own scope with the scope prefix stripped, and the same
/// lock name is held twice.
pub async fn scoped_stores_are_isolated(store: Arc<dyn StateStore>, prefix: &str) {
    let a = ScopedStore::new(Arc::clone(&store), format!("{prefix}a/"));
    let b = ScopedStore::new(Arc::clone(&store), format!("{prefix}b/"));

    let va = must_put(&a, "k", b"from a", PutOptions::create()).await;
    // The same key in the other scope is a different key: creating it succeeds.
    must_put(&b, "k", b"from b", PutOptions::create()).await;
    must_put(&b, "only_b", b"b", PutOptions::new()).await;
    assert_eq!(
        must_get(&a, "k").await.map(|v| v.value.to_vec()),
        Some(b"from a".to_vec())
    );
    assert_eq!(
        must_get(&b, "k").await.map(|v| v.value.to_vec()),
        Some(b"from b".to_vec())
    );
    assert_eq!(must_get(&a, "only_b").await, None, "scope a sees b's key");
    // Scoping is prefixing: the key is visible under its full name in the inner store.
    assert_eq!(
        must_get(store.as_ref(), &format!("{prefix}a/k"))
            .await
            .map(|v| v.version),
        Some(va)
    );

    let keys_a: Vec<String> = scan_all(&a, "", 10)
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys_a, ["k"], "scan of scope a");
    let keys_b: Vec<String> = scan_all(&b, "", 1)
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys_b, ["k", "only_b"], "scan of scope b");

    let r = a.put("k", b"again".to_vec(), PutOptions::create()).await;
    assert_conflict(r, "k", Some(va), "create in a scope");

    assert!(a.delete("k", Expect::Any).await.expect("delete in a"));
    assert_eq!(must_get(&a, "k").await, None);
    assert!(
        must_get(&b, "k").await.is_some(),
        "deleting in scope a deleted b's key"
    );

    let la = a
        .lock("leader", LONG_TTL)
        .await
        .expect("lock")
        .expect("free in a");
    let lb = b
        .lock("leader", LONG_TTL)
        .await
        .expect("lock")
        .expect("the same lock name in another scope is another lock");
    assert_eq!(la.name, "leader", "lock name keeps the scope prefix");
    a.unlock(&la).await.expect("unlock a");
    b.unlock(&lb).await.expect("unlock b");
}
