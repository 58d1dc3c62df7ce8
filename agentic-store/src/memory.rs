//! The in-process backend: a hash map with an ordered key index, behind a std `Mutex`.
//!
//! Everything lives in two small structs, one for keys and one for locks, each behind its own
//! mutex so that lock traffic (leader election, heartbeats) never queues behind key traffic.
//! Expired keys are removed lazily: every write removes a bounded batch of keys whose TTL has
//! passed, found through an index ordered by expiry time, so memory stays bounded without a
//! background task, and no single call pays for a large backlog.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::{
    Expect, LockGuard, PutOptions, ScanPage, StateStore, StoreCapabilities, StoreError, Versioned,
    WatchEvent,
};

/// How many events a watcher may fall behind before it sees a "missed events" error.
const DEFAULT_WATCH_CAPACITY: usize = 1024;

/// How many expired keys one write removes at most. Each write adds at most one key, so
/// removing up to this many keeps expired keys from piling up, while capping the work any
/// one call does when a large batch of keys expires at once.
const PRUNE_BATCH: usize = 32;

/// Lock entries are swept (expired ones dropped) when the table reaches this size, and after
/// a sweep when it doubles again; the doubling keeps the sweep's cost amortised O(1) per lock.
const LOCK_SWEEP_MIN: usize = 64;

/// The in-process [`StateStore`]: fast, exact, and gone when the process exits.
///
/// Meant for tests, single-process deployments and benchmarks. Every operation takes a std
/// mutex for a few map operations and never waits on anything else, so a call costs well
/// under a microsecond plus the `async_trait` allocation.
///
/// | capability | support |
/// |---|---|
/// | per-key TTL | yes (checked on every read; expired keys are removed lazily by later writes) |
/// | watch | yes (`tokio::sync::broadcast`; a watcher that falls more than the channel capacity behind gets a retryable [`StoreError::Backend`] item saying events were missed, then continues) |
/// | expiry events | no (a key whose TTL passes produces no [`WatchEvent::Delete`]) |
/// | persistence | none: everything is lost when the store is dropped |
/// | fencing | yes: tokens come from one store-wide counter, so they grow with every acquisition of any name, including after release |
/// | sharing | one process; share it as `Arc<MemoryStore>` or `Arc<dyn StateStore>` |
///
/// Versions come from one store-wide counter too, so a key that is deleted and created again
/// never gets a version it had before. Time is tokio's clock ([`tokio::time::Instant`]), so
/// tests can drive TTLs and lock expiry with `tokio::time::pause` and `advance`.
///
/// Arguments it refuses with [`StoreError::Invalid`]: an empty key or lock name, a zero TTL
/// (it would write a key nobody can ever read, or a lock nobody holds; almost always a bug),
/// a TTL so large the clock would overflow, and a scan `limit` of 0.
///
/// Dropping the store ends every watch stream.
pub struct MemoryStore {
    // Two mutexes rather than one: keys and locks never need to change together, and an
    // orchestrator heartbeating its goal locks should not contend with task-state writes.
    //
    // A std `Mutex` rather than `tokio::sync::Mutex`: the critical sections are a handful
    // of map operations and are never held across an `.await`, which is the only thing an
    // async mutex buys. An uncontended std mutex is a single atomic operation; the async one
    // costs far more on every call. (Same reasoning as tokio-rs/mini-redis `src/db.rs`.)
    keys: Mutex<Keys>,
    locks: Mutex<Locks>,
    // Outside the mutex because `Sender` is `Sync` and `subscribe` needs no exclusive access;
    // but every `send` happens while `keys` is held, so watchers see changes in the order
    // they were committed.
    events: broadcast::Sender<WatchEvent>,
}

/// Key-value state.
#[derive(Default)]
struct Keys {
    /// Every entry (live, or expired and not yet pruned) by key. Point reads and writes, the
    /// hot path, are one hash lookup: keys such as `ns/goal/<id>/task/<id>` share long
    /// prefixes, and an ordered map compares those prefixes again at every level.
    entries: HashMap<Arc<str>, Entry, foldhash::fast::RandomState>,
    /// The same keys in order, for prefix scans; shares each key's allocation with `entries`.
    order: BTreeSet<Arc<str>>,
    /// Keys with a TTL, ordered by when they expire. The version makes the map key unique
    /// (versions are never reused) and lets an overwrite or delete remove exactly its own
    /// index entry, so the index never holds more than one entry per key.
    expiry: BTreeMap<(Instant, u64), Arc<str>>,
    /// The last version handed out, by any key.
    last_version: u64,
}

struct Entry {
    value: Bytes,
    version: u64,
    expires_at: Option<Instant>,
}

impl Entry {
    fn is_live(&self, clock: &mut Clock) -> bool {
        match self.expires_at {
            None => true,
            Some(at) => at > clock.now(),
        }
    }

    fn versioned(&self) -> Versioned {
        Versioned {
            // `Bytes` clones are a reference-count increment, not a copy of the value.
            value: self.value.clone(),
            version: self.version,
        }
    }
}

/// Lock state. A name is in `held` from acquisition until it is released, or until a sweep
/// finds it expired; an expired entry is just a free lock.
#[derive(Default)]
struct Locks {
    held: HashMap<String, Held>,
    /// The last fencing token handed out, by any name. One counter for all names keeps every
    /// name's tokens increasing without remembering names after their locks are released.
    last_token: u64,
    /// Sweep expired entries when `held` reaches this size.
    sweep_at: usize,
}

struct Held {
    token: u64,
    expires_at: Instant,
}

/// Reads tokio's clock at most once per operation, and only if some TTL needs it: most
/// keys have no TTL, and reading the clock is the most expensive part of a `get`.
#[derive(Default)]
struct Clock(Option<Instant>);

impl Clock {
    fn now(&mut self) -> Instant {
        *self.0.get_or_insert_with(Instant::now)
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No map contents: taking the mutexes from `Debug` could stall a hot path.
        f.debug_struct("MemoryStore")
            .field("watchers", &self.events.receiver_count())
            .finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty store whose watchers may fall 1024 events behind before they miss any.
    pub fn new() -> Self {
        MemoryStore::with_watch_capacity(DEFAULT_WATCH_CAPACITY)
    }

    /// An empty store whose watchers may fall `capacity` events behind (at least 1) before
    /// they see a "missed events" error. Each buffered event holds a reference to its value.
    pub fn with_watch_capacity(capacity: usize) -> Self {
        // `broadcast::channel` refuses 0 and absurd capacities; clamp rather than fail.
        let (events, _) = broadcast::channel(capacity.clamp(1, usize::MAX / 4));
        MemoryStore {
            keys: Mutex::new(Keys::default()),
            locks: Mutex::new(Locks {
                sweep_at: LOCK_SWEEP_MIN,
                ..Locks::default()
            }),
            events,
        }
    }

    fn keys(&self) -> MutexGuard<'_, Keys> {
        // Poisoning means a thread panicked while holding the mutex. Nothing in the critical
        // sections panics (short of an allocation failure, which aborts), and every section
        // leaves the maps consistent between statements that can fail, so carry on.
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn locks(&self) -> MutexGuard<'_, Locks> {
        // See `keys` for why poisoning is ignored.
        self.locks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends a watch event built by `event`, if anyone is watching. Checking first skips
    /// cloning the key on the (common) path with no watchers. Called with `keys` held.
    fn notify(&self, event: impl FnOnce() -> WatchEvent) {
        if self.events.receiver_count() > 0 {
            // An error only means every receiver went away since the check; nothing to do.
            let _ = self.events.send(event());
        }
    }
}

impl Keys {
    /// The entry at `key` if it exists and has not expired.
    fn live(&self, key: &str, clock: &mut Clock) -> Option<&Entry> {
        self.entries.get(key).filter(|e| e.is_live(clock))
    }

    /// Removes up to [`PRUNE_BATCH`] expired keys.
    fn prune(&mut self, clock: &mut Clock) {
        for _ in 0..PRUNE_BATCH {
            // Peek before reading the clock: with no TTL'd keys this costs no clock read.
            let Some(entry) = self.expiry.first_entry() else {
                return;
            };
            let (at, version) = *entry.key();
            if at > clock.now() {
                return;
            }
            let key = entry.remove();
            // The index is kept in step with the entries, so the version always matches;
            // checking anyway means a bug there can never delete a newer write.
            if self
                .entries
                .get(&*key)
                .is_some_and(|e| e.version == version)
            {
                self.entries.remove(&*key);
                self.order.remove(&*key);
            }
        }
    }

    /// Removes `key` and its expiry index entry; returns the removed entry.
    fn remove(&mut self, key: &str) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        self.order.remove(key);
        if let Some(at) = entry.expires_at {
            self.expiry.remove(&(at, entry.version));
        }
        Some(entry)
    }
}

impl Locks {
    /// Drops expired locks once the table has grown to `sweep_at`, so names that are taken
    /// and never released (a crashed holder) do not accumulate.
    fn maybe_sweep(&mut self, now: Instant) {
        if self.held.len() < self.sweep_at {
            return;
        }
        self.held.retain(|_, h| h.expires_at > now);
        self.sweep_at = (self.held.len() * 2).max(LOCK_SWEEP_MIN);
    }
}

fn check_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::Invalid("key must not be empty".to_owned()));
    }
    Ok(())
}

/// The instant `ttl` from `now`, refusing a zero TTL and one that overflows the clock.
fn deadline(now: Instant, ttl: Duration, what: &str) -> Result<Instant, StoreError> {
    if ttl.is_zero() {
        return Err(StoreError::Invalid(format!(
            "{what} ttl must be greater than zero"
        )));
    }
    now.checked_add(ttl)
        .ok_or_else(|| StoreError::Invalid(format!("{what} ttl {ttl:?} is too large")))
}

fn describe(expect: Expect) -> String {
    match expect {
        Expect::Any => "any".to_owned(),
        Expect::Absent => "absent".to_owned(),
        Expect::Version(v) => format!("version {v}"),
    }
}

/// Checks `expect` against the live version (`None`: absent or expired).
fn check_expect(key: &str, expect: Expect, found: Option<u64>) -> Result<(), StoreError> {
    let holds = match expect {
        Expect::Any => true,
        Expect::Absent => found.is_none(),
        Expect::Version(v) => found == Some(v),
    };
    if holds {
        Ok(())
    } else {
        Err(StoreError::Conflict {
            key: key.to_owned(),
            expected: describe(expect),
            found,
        })
    }
}

fn lock_lost(guard: &LockGuard) -> StoreError {
    StoreError::LockLost {
        name: guard.name.clone(),
        token: guard.token,
    }
}

#[async_trait]
impl StateStore for MemoryStore {
    fn capabilities(&self) -> StoreCapabilities {
        StoreCapabilities::full()
    }

    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        check_key(key)?;
        let mut clock = Clock::default();
        // Reads do not prune: only writes add keys, so pruning on writes alone bounds memory,
        // and reads stay free of index work.
        let keys = self.keys();
        Ok(keys.live(key, &mut clock).map(Entry::versioned))
    }

    async fn put(&self, key: &str, value: Vec<u8>, opts: PutOptions) -> Result<u64, StoreError> {
        check_key(key)?;
        // Outside the mutex: converting is cheap, but the critical section should be minimal.
        let value = Bytes::from(value);
        let mut clock = Clock::default();
        let expires_at = match opts.ttl {
            Some(ttl) => Some(deadline(clock.now(), ttl, "key")?),
            None => None,
        };

        let mut keys = self.keys();
        keys.prune(&mut clock);
        let found = keys.live(key, &mut clock).map(|e| e.version);
        check_expect(key, opts.expect, found)?;

        keys.last_version += 1;
        let version = keys.last_version;
        let entry = Entry {
            value: value.clone(),
            version,
            expires_at,
        };
        // Replace in place when the key exists (live or expired-but-unpruned), so an update,
        // the common write, does not allocate a new key string.
        let keys = &mut *keys;
        let old_expiry = match keys.entries.get_mut(key) {
            Some(slot) => {
                let old = std::mem::replace(slot, entry);
                old.expires_at.map(|at| (at, old.version))
            }
            None => {
                let shared: Arc<str> = Arc::from(key);
                keys.order.insert(Arc::clone(&shared));
                keys.entries.insert(shared, entry);
                None
            }
        };
        if let Some(old) = old_expiry {
            keys.expiry.remove(&old);
        }
        if let Some(at) = expires_at
            && let Some((shared, _)) = keys.entries.get_key_value(key)
        {
            keys.expiry.insert((at, version), Arc::clone(shared));
        }
        // Sent with `keys` held, so events reach watchers in commit order.
        self.notify(|| WatchEvent::Put {
            key: key.to_owned(),
            value: Versioned { value, version },
        });
        Ok(version)
    }

    async fn delete(&self, key: &str, expect: Expect) -> Result<bool, StoreError> {
        check_key(key)?;
        let mut clock = Clock::default();
        let mut keys = self.keys();
        keys.prune(&mut clock);
        let found = keys.live(key, &mut clock).map(|e| e.version);
        check_expect(key, expect, found)?;
        // Also drops an expired-but-unpruned entry; that was not a live key, so it reports
        // `false` and no event.
        let removed = keys.remove(key).is_some();
        let deleted = removed && found.is_some();
        if deleted {
            self.notify(|| WatchEvent::Delete {
                key: key.to_owned(),
            });
        }
        Ok(deleted)
    }

    async fn scan(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<ScanPage, StoreError> {
        if limit == 0 {
            return Err(StoreError::Invalid(
                "scan limit must be at least 1".to_owned(),
            ));
        }
        // Keys sharing a prefix are contiguous in key order, so the page is one range walk:
        // start after the cursor (or at the prefix, if the cursor sorts before it) and stop
        // at the first key without the prefix.
        let start = match cursor {
            Some(c) if c >= prefix => Bound::Excluded(c),
            _ => Bound::Included(prefix),
        };
        let mut clock = Clock::default();
        let keys = self.keys();
        let mut items = Vec::with_capacity(limit.min(256));
        let mut next_cursor = None;
        for key in keys
            .order
            .range::<str, _>((start, Bound::Unbounded))
            .take_while(|k| k.starts_with(prefix))
        {
            // `order` and `entries` hold the same keys; a miss would be a bug, not data.
            let Some(entry) = keys.entries.get(&**key) else {
                continue;
            };
            if !entry.is_live(&mut clock) {
                continue;
            }
            if items.len() == limit {
                // A further live key exists, so the caller must come back; otherwise the
                // page ends the scan and `next_cursor` stays `None` (no empty last page).
                next_cursor = items.last().map(|(k, _): &(String, Versioned)| k.clone());
                break;
            }
            items.push((key.to_string(), entry.versioned()));
        }
        Ok(ScanPage { items, next_cursor })
    }

    async fn lock(&self, name: &str, ttl: Duration) -> Result<Option<LockGuard>, StoreError> {
        if name.is_empty() {
            return Err(StoreError::Invalid(
                "lock name must not be empty".to_owned(),
            ));
        }
        let now = Instant::now();
        let expires_at = deadline(now, ttl, "lock")?;
        let mut locks = self.locks();
        if let Some(held) = locks.held.get(name)
            && held.expires_at > now
        {
            return Ok(None);
        }
        locks.last_token += 1;
        let token = locks.last_token;
        let held = Held { token, expires_at };
        match locks.held.get_mut(name) {
            // Taking over an expired lock: reuse the entry (and its key string).
            Some(slot) => *slot = held,
            None => {
                locks.maybe_sweep(now);
                locks.held.insert(name.to_owned(), held);
            }
        }
        Ok(Some(LockGuard {
            name: name.to_owned(),
            token,
            expires_at,
        }))
    }

    async fn extend_lock(&self, guard: &LockGuard, ttl: Duration) -> Result<LockGuard, StoreError> {
        let now = Instant::now();
        let expires_at = deadline(now, ttl, "lock")?;
        let mut locks = self.locks();
        match locks.held.get_mut(guard.name.as_str()) {
            // Our token and not yet expired. An expired lock is lost even if nobody took it
            // yet: for a while somebody could have, so the holder cannot claim it was
            // exclusive throughout.
            Some(held) if held.token == guard.token && held.expires_at > now => {
                held.expires_at = expires_at;
                Ok(LockGuard {
                    expires_at,
                    ..guard.clone()
                })
            }
            _ => Err(lock_lost(guard)),
        }
    }

    async fn unlock(&self, guard: &LockGuard) -> Result<(), StoreError> {
        let now = Instant::now();
        let mut locks = self.locks();
        let Some(held) = locks.held.get(guard.name.as_str()) else {
            return Err(lock_lost(guard));
        };
        if held.token != guard.token {
            return Err(lock_lost(guard));
        }
        let live = held.expires_at > now;
        // Our entry either way: remove it, and report whether it was still ours to release.
        locks.held.remove(guard.name.as_str());
        if live { Ok(()) } else { Err(lock_lost(guard)) }
    }

    async fn watch(
        &self,
        prefix: &str,
    ) -> Result<BoxStream<'static, Result<WatchEvent, StoreError>>, StoreError> {
        // Subscribing is synchronous, so every change committed after this call returns is
        // seen (the "from now on" of the trait). Receivers do not keep the sender alive:
        // dropping the store ends the stream.
        let rx = self.events.subscribe();
        let prefix = prefix.to_owned();
        let stream = futures::stream::unfold((rx, prefix), |(mut rx, prefix)| async move {
            loop {
                let item = match rx.recv().await {
                    Ok(event) => {
                        let key = match &event {
                            WatchEvent::Put { key, .. } | WatchEvent::Delete { key } => key,
                        };
                        if !key.starts_with(prefix.as_str()) {
                            continue;
                        }
                        Ok(event)
                    }
                    // Say so rather than skip silently: a watcher that missed events must
                    // re-read (scan) to learn the current state. The stream goes on after.
                    Err(broadcast::error::RecvError::Lagged(missed)) => Err(StoreError::Backend {
                        message: format!(
                            "watch fell behind and missed {missed} events; re-read the state under the prefix"
                        ),
                        retryable: true,
                        source: None,
                    }),
                    Err(broadcast::error::RecvError::Closed) => return None,
                };
                return Some((item, (rx, prefix)));
            }
        });
        Ok(stream.boxed())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn put_ttl(ttl_ms: u64) -> PutOptions {
        PutOptions::new().ttl(Duration::from_millis(ttl_ms))
    }

    async fn value(store: &MemoryStore, key: &str) -> Option<Vec<u8>> {
        store.get(key).await.unwrap().map(|v| v.value.to_vec())
    }

    #[tokio::test(start_paused = true)]
    async fn ttl_expires_exactly_at_deadline() {
        let store = MemoryStore::new();
        store.put("k", b"v".to_vec(), put_ttl(100)).await.unwrap();
        tokio::time::advance(Duration::from_millis(99)).await;
        assert_eq!(value(&store, "k").await, Some(b"v".to_vec()));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(value(&store, "k").await, None);
        let page = store.scan("", None, 10).await.unwrap();
        assert!(page.items.is_empty());
        assert_eq!(page.next_cursor, None);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_key_counts_as_absent() {
        let store = MemoryStore::new();
        let v1 = store.put("k", b"a".to_vec(), put_ttl(10)).await.unwrap();
        tokio::time::advance(Duration::from_millis(10)).await;
        // Version expectations fail against an expired key, creates succeed.
        let err = store
            .put("k", b"b".to_vec(), PutOptions::expect_version(v1))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict { found: None, .. }));
        assert!(!store.delete("k", Expect::Any).await.unwrap());
        let v2 = store
            .put("k", b"c".to_vec(), PutOptions::create())
            .await
            .unwrap();
        assert!(v2 > v1);
        // The new write has no TTL: it outlives the old deadline.
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(value(&store, "k").await, Some(b"c".to_vec()));
    }

    #[tokio::test(start_paused = true)]
    async fn overwrite_replaces_ttl() {
        let store = MemoryStore::new();
        store.put("k", b"a".to_vec(), put_ttl(10)).await.unwrap();
        store.put("k", b"b".to_vec(), put_ttl(1000)).await.unwrap();
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(value(&store, "k").await, Some(b"b".to_vec()));
        // The index holds one entry per key, not one per write.
        assert_eq!(store.keys().expiry.len(), 1);
        store
            .put("k", b"c".to_vec(), PutOptions::new())
            .await
            .unwrap();
        assert!(store.keys().expiry.is_empty());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(value(&store, "k").await, Some(b"c".to_vec()));
    }

    #[tokio::test(start_paused = true)]
    async fn expired_keys_are_pruned_by_later_writes() {
        let store = MemoryStore::new();
        for i in 0..1000 {
            store
                .put(&format!("tmp/{i}"), vec![0; 16], put_ttl(10))
                .await
                .unwrap();
        }
        tokio::time::advance(Duration::from_millis(10)).await;
        // Each write removes up to PRUNE_BATCH expired keys, so the backlog drains.
        for i in 0..(1000 / PRUNE_BATCH + 1) {
            store
                .put(&format!("keep/{i}"), vec![1], PutOptions::new())
                .await
                .unwrap();
        }
        let keys = store.keys();
        assert!(keys.expiry.is_empty());
        assert!(keys.entries.keys().all(|k| k.starts_with("keep/")));
    }

    #[tokio::test(start_paused = true)]
    async fn scan_skips_expired_keys_and_counts_only_live_ones() {
        let store = MemoryStore::new();
        for i in 0..6 {
            let opts = if i % 2 == 0 {
                put_ttl(10)
            } else {
                PutOptions::new()
            };
            store.put(&format!("p/{i}"), vec![i], opts).await.unwrap();
        }
        tokio::time::advance(Duration::from_millis(10)).await;
        let page = store.scan("p/", None, 2).await.unwrap();
        let keys: Vec<_> = page.items.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["p/1", "p/3"]);
        assert_eq!(page.next_cursor.as_deref(), Some("p/3"));
        let page = store.scan("p/", Some("p/3"), 2).await.unwrap();
        let keys: Vec<_> = page.items.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["p/5"]);
        assert_eq!(page.next_cursor, None);
    }

    #[tokio::test]
    async fn scan_exact_last_page_has_no_cursor() {
        let store = MemoryStore::new();
        for k in ["a/1", "a/2", "b/1"] {
            store.put(k, vec![], PutOptions::new()).await.unwrap();
        }
        let page = store.scan("a/", None, 2).await.unwrap();
        assert_eq!(page.items.len(), 2);
        assert_eq!(page.next_cursor, None);
        // A cursor before the prefix starts at the prefix; one after it ends the scan.
        let page = store.scan("b/", Some("a/9"), 5).await.unwrap();
        assert_eq!(page.items.len(), 1);
        let page = store.scan("a/", Some("a/9"), 5).await.unwrap();
        assert!(page.items.is_empty());
    }

    #[tokio::test]
    async fn versions_are_never_reused() {
        let store = MemoryStore::new();
        let v1 = store.put("k", vec![1], PutOptions::new()).await.unwrap();
        assert!(v1 > 0);
        assert!(store.delete("k", Expect::Version(v1)).await.unwrap());
        let v2 = store.put("k", vec![2], PutOptions::create()).await.unwrap();
        assert!(v2 > v1);
    }

    #[tokio::test]
    async fn invalid_arguments() {
        let store = MemoryStore::new();
        let invalid = |r: Result<_, StoreError>| matches!(r, Err(StoreError::Invalid(_)));
        assert!(invalid(store.get("").await.map(|_| ())));
        assert!(invalid(
            store.put("", vec![], PutOptions::new()).await.map(|_| ())
        ));
        assert!(invalid(store.delete("", Expect::Any).await.map(|_| ())));
        assert!(invalid(
            store.put("k", vec![], put_ttl(0)).await.map(|_| ())
        ));
        assert!(invalid(
            store
                .put("k", vec![], PutOptions::new().ttl(Duration::MAX))
                .await
                .map(|_| ())
        ));
        assert!(invalid(store.scan("", None, 0).await.map(|_| ())));
        assert!(invalid(
            store.lock("", Duration::from_secs(1)).await.map(|_| ())
        ));
        assert!(invalid(store.lock("l", Duration::ZERO).await.map(|_| ())));
        // Nothing was written by the refused calls.
        assert_eq!(store.get("k").await.unwrap(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn lock_expiry_and_takeover() {
        let store = MemoryStore::new();
        let ttl = Duration::from_secs(5);
        let a = store.lock("l", ttl).await.unwrap().unwrap();
        assert_eq!(a.expires_at, Instant::now() + ttl);
        assert!(store.lock("l", ttl).await.unwrap().is_none());

        tokio::time::advance(Duration::from_secs(4)).await;
        let a = store.extend_lock(&a, ttl).await.unwrap();
        tokio::time::advance(Duration::from_secs(4)).await;
        // Eight seconds in, still held thanks to the extension.
        assert!(store.lock("l", ttl).await.unwrap().is_none());

        tokio::time::advance(Duration::from_secs(1)).await;
        // Expired but not taken: the holder has still lost it.
        assert!(matches!(
            store.extend_lock(&a, ttl).await,
            Err(StoreError::LockLost { .. })
        ));
        let b = store.lock("l", ttl).await.unwrap().unwrap();
        assert!(b.token > a.token);
        assert!(matches!(
            store.unlock(&a).await,
            Err(StoreError::LockLost { .. })
        ));
        store.unlock(&b).await.unwrap();
        assert!(matches!(
            store.unlock(&b).await,
            Err(StoreError::LockLost { .. })
        ));
        let c = store.lock("l", ttl).await.unwrap().unwrap();
        assert!(c.token > b.token);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_locks_are_swept() {
        let store = MemoryStore::new();
        for i in 0..(LOCK_SWEEP_MIN * 4) {
            store
                .lock(&format!("l{i}"), Duration::from_millis(10))
                .await
                .unwrap()
                .unwrap();
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        assert!(store.locks().held.len() <= LOCK_SWEEP_MIN);
    }

    #[tokio::test]
    async fn locks_and_keys_are_separate() {
        let store = MemoryStore::new();
        let g = store
            .lock("same", Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(store.get("same").await.unwrap(), None);
        store
            .put("same", vec![1], PutOptions::create())
            .await
            .unwrap();
        assert!(store.delete("same", Expect::Any).await.unwrap());
        store.unlock(&g).await.unwrap();
    }

    #[tokio::test]
    async fn watch_reports_lag_then_continues() {
        let store = MemoryStore::with_watch_capacity(2);
        let mut events = store.watch("w/").await.unwrap();
        for i in 0..5u8 {
            store.put("w/k", vec![i], PutOptions::new()).await.unwrap();
        }
        let err = events.next().await.unwrap().unwrap_err();
        assert!(err.is_retryable(), "{err}");
        assert!(err.to_string().contains("missed 3 events"), "{err}");
        // The two newest events are still delivered.
        for i in 3..5u8 {
            match events.next().await.unwrap().unwrap() {
                WatchEvent::Put { value, .. } => assert_eq!(value.value.as_ref(), &[i]),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn watch_filters_and_ends_when_store_dropped() {
        let store = MemoryStore::new();
        let events = store.watch("w/").await.unwrap();
        store.put("x/k", vec![1], PutOptions::new()).await.unwrap();
        let v = store.put("w/k", vec![2], PutOptions::new()).await.unwrap();
        // Deleting an absent key is not a change.
        assert!(!store.delete("w/none", Expect::Any).await.unwrap());
        assert!(store.delete("w/k", Expect::Any).await.unwrap());
        drop(store);
        let got: Vec<_> = events.map(Result::unwrap).collect().await;
        assert_eq!(
            got,
            [
                WatchEvent::Put {
                    key: "w/k".to_owned(),
                    value: Versioned {
                        value: Bytes::from_static(&[2]),
                        version: v
                    }
                },
                WatchEvent::Delete {
                    key: "w/k".to_owned()
                }
            ]
        );
    }

    #[tokio::test]
    async fn failed_cas_writes_nothing_and_sends_nothing() {
        let store = MemoryStore::new();
        let mut events = store.watch("").await.unwrap();
        let v = store.put("k", vec![1], PutOptions::create()).await.unwrap();
        let before = store.keys().last_version;
        let err = store
            .put("k", vec![2], PutOptions::create())
            .await
            .unwrap_err();
        match err {
            StoreError::Conflict {
                key,
                expected,
                found,
            } => {
                assert_eq!(
                    (key.as_str(), expected.as_str(), found),
                    ("k", "absent", Some(v))
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(store.delete("k", Expect::Version(v + 1)).await.is_err());
        // No version was consumed by the refused writes.
        assert_eq!(store.keys().last_version, before);
        assert_eq!(value(&store, "k").await, Some(vec![1]));
        assert!(matches!(
            events.next().await,
            Some(Ok(WatchEvent::Put { .. }))
        ));
        store.put("k", vec![3], PutOptions::new()).await.unwrap();
        match events.next().await {
            Some(Ok(WatchEvent::Put { value, .. })) => assert_eq!(value.value.as_ref(), &[3]),
            other => panic!("unexpected {other:?}"),
        }
    }
}
