//! The NATS backend: a JetStream key-value bucket for values, a second bucket for locks.
//!
//! # Layout (one store)
//!
//! | bucket | stream | holds |
//! |---|---|---|
//! | `<bucket>` | `KV_<bucket>` | every key; the KV revision (the stream sequence) is the [`Versioned::version`] |
//! | `<bucket>_locks` | `KV_<bucket>_locks` | one entry per held lock: `{"deadline_ms", "token"}` |
//!
//! Both buckets keep one revision per key (`history = 1`), file storage, and are created on
//! [`NatsStore::connect_with`] if missing.
//!
//! # Keys
//!
//! NATS KV keys are subjects: `[-/_=.A-Za-z0-9]`, `.` separates tokens, no empty token. Our
//! keys are any non-empty string, so they are mapped, injectively:
//!
//! - the key is split at `/`; each part becomes one subject token, joined with `.`
//!   (so `plan/42/state` is stored as `plan.42.state`, and a prefix that ends at a `/` is a
//!   subject wildcard `plan.42.>` the server can filter on);
//! - inside a part, `[A-Za-z0-9_-]` stay as they are and every other byte of the UTF-8
//!   encoding becomes `=XX` (upper-case hex): `a.b c` → `a=2Eb=20c`;
//! - an empty part (leading, trailing or doubled `/`) becomes a lone `=`.
//!
//! Keys longer than [`MAX_ENCODED_KEY`] bytes once encoded are refused with
//! [`StoreError::Invalid`]. Entries whose subject does not decode (written by another tool)
//! are ignored by `scan` and `watch`.
//!
//! # Versions and compare-and-set
//!
//! A revision is the bucket stream's sequence number, so it grows with every write of any
//! key, also across delete and re-create. Compare-and-set is the server's
//! `Nats-Expected-Last-Subject-Sequence` check: [`Expect::Version`] is `update(key,
//! revision)`, [`Expect::Absent`] is an update expecting "no message" (or, for a deleted
//! key, expecting its delete marker), so two writers can never both win.
//!
//! # Scan
//!
//! KV has no ordered index. `scan` creates a short-lived consumer over the subjects of the
//! prefix's complete `/` parts (last value per key), keeps the smallest `limit + 1` keys after
//! the cursor that start with the prefix, and deletes the consumer. One page therefore reads
//! every key under the prefix's last `/`: fine for the hundreds of keys of a plan or a
//! tenant, slow for millions. The cursor is the last key returned.
//!
//! # TTL
//!
//! NATS 2.9 has no per-key TTL (2.11 adds it). The bucket-wide maximum age
//! ([`NatsStoreConfig::max_age`]) is what is possible: every key expires that long after its
//! last write. A `put` with a TTL is refused with [`StoreError::Unsupported`] rather than
//! silently kept forever, and [`StoreCapabilities::per_key_ttl`] is `false`, so the
//! conformance suite prints a named skip for its TTL case.
//!
//! # Locks
//!
//! A lock is an entry in the lock bucket holding its deadline (wall-clock milliseconds since
//! the epoch) and its token. Acquiring is a create (or, when the deadline has passed, an
//! update expecting the expired entry's revision); the revision that create returns is the
//! fencing token. Revisions are stream sequences, so every acquisition's token is greater
//! than any before it, across release and expiry. Extending rewrites the entry with the same
//! token (kept in the value), expecting the revision it read; releasing deletes it expecting
//! that revision. Expiry is judged on the wall clocks of the processes involved: keep them
//! synchronised (NTP) to well under the lock TTLs you use.
//!
//! # Watch
//!
//! `watch` is a KV watch (an ordered push consumer, new changes only) on the prefix's subject
//! filter. The ordered consumer recreates itself after a reconnect and continues from the
//! last revision it delivered, so no change is skipped while the client is connected again
//! within the server's limits; a failure it cannot recover from ends the stream with an
//! error item.
//!
//! # Failures
//!
//! The client reconnects by itself. A call that fails (timeout, disconnected) returns a
//! retryable [`StoreError::Backend`]; writes are not retried here, because a write whose
//! acknowledgement was lost may have been applied and a blind retry of a compare-and-set
//! would then report a conflict with itself. Callers re-read and decide.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, consumer, kv, stream};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::{
    Expect, LockGuard, PutOptions, ScanPage, StateStore, StoreCapabilities, StoreError, Versioned,
    WatchEvent,
};

/// The longest key accepted, in bytes after encoding (see the [module docs](self)).
pub const MAX_ENCODED_KEY: usize = 2048;

/// How often a lock or delete operation re-reads after losing a compare-and-set race before
/// giving up with an error: enough for heavy contention, bounded so it cannot spin forever.
const CAS_ROUNDS: usize = 64;

/// Messages per fetch of a scan.
const SCAN_BATCH: usize = 512;

/// Settings of [`NatsStore`].
#[derive(Debug, Clone)]
pub struct NatsStoreConfig {
    /// `nats://host:port` (several comma-separated URLs for a cluster).
    pub url: String,
    /// The bucket's name (`[A-Za-z0-9_-]`); locks live in `<bucket>_locks`.
    pub bucket: String,
    /// Every key expires this long after its last write (the bucket's `max_age`); `None`
    /// keeps keys until deleted. NATS 2.9 offers no per-key TTL.
    pub max_age: Option<Duration>,
    /// Replicas of each bucket (1 on a single server).
    pub replicas: usize,
    /// Timeout of one request to the server.
    pub request_timeout: Duration,
    /// Timeout of one connection attempt.
    pub connection_timeout: Duration,
}

impl NatsStoreConfig {
    /// Defaults for `url`: bucket `agentic`, no max age, one replica, 5 s requests.
    pub fn new(url: impl Into<String>) -> Self {
        NatsStoreConfig {
            url: url.into(),
            bucket: "agentic".to_owned(),
            max_age: None,
            replicas: 1,
            request_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(5),
        }
    }

    /// Sets the bucket.
    pub fn bucket(mut self, bucket: impl Into<String>) -> Self {
        self.bucket = bucket.into();
        self
    }

    /// Sets the bucket-wide maximum age of a key.
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = Some(max_age);
        self
    }
}

/// A [`StateStore`] on a NATS JetStream KV bucket. See the [module docs](self) for the
/// layout, the key mapping and the limits.
///
/// # Capabilities
///
/// | capability | `NatsStore` |
/// |---|---|
/// | per-key TTL | no (NATS 2.9); a bucket-wide `max_age` instead |
/// | watch | yes (ordered consumer, resumes after reconnects) |
/// | compare-and-set | yes, on the server (expected last subject sequence) |
/// | scan | yes; cost grows with the keys under the prefix's last `/` |
/// | fencing | yes, tokens are stream sequences of the lock bucket |
/// | persistence | file storage, replicas as configured |
#[derive(Clone)]
pub struct NatsStore {
    inner: Arc<Inner>,
}

struct Inner {
    js: jetstream::Context,
    kv: kv::Store,
    locks: kv::Store,
    config: NatsStoreConfig,
}

impl fmt::Debug for NatsStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsStore")
            .field("bucket", &self.inner.config.bucket)
            .finish_non_exhaustive()
    }
}

/// The lock entry's value.
#[derive(Debug, Serialize, Deserialize)]
struct LockValue {
    /// Wall-clock milliseconds since the epoch after which the lock is free.
    deadline_ms: u64,
    /// The fencing token; 0 means "the revision of the entry that holds this value", which
    /// is how an acquisition names a token it cannot know before the server assigns it.
    token: u64,
}

impl NatsStore {
    /// Connects with default settings.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(NatsStoreConfig::new(url)).await
    }

    /// Connects with the given settings and creates the buckets if they are missing. The
    /// client reconnects by itself afterwards.
    pub async fn connect_with(config: NatsStoreConfig) -> Result<Self, StoreError> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(config.connection_timeout)
            .request_timeout(Some(config.request_timeout))
            .connect(config.url.as_str())
            .await
            .map_err(|e| backend("connect to NATS", e, true))?;
        Self::with_client(client, config).await
    }

    /// Uses an existing connection (shared with other users of the client). Creates the
    /// buckets if they are missing; `config.url` is not used.
    pub async fn with_client(
        client: async_nats::Client,
        config: NatsStoreConfig,
    ) -> Result<Self, StoreError> {
        let valid = |b: &str| {
            !b.is_empty()
                && b.len() <= 200
                && b.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
        };
        if !valid(&config.bucket) {
            return Err(StoreError::Invalid(format!(
                "bucket {:?} must be 1-200 characters of [A-Za-z0-9_-]",
                config.bucket
            )));
        }
        let js = jetstream::ContextBuilder::new()
            .timeout(config.request_timeout)
            .build(client);
        let kv = open_bucket(&js, &config.bucket, &config).await?;
        let locks = open_bucket(&js, &format!("{}_locks", config.bucket), &config).await?;
        Ok(NatsStore {
            inner: Arc::new(Inner {
                js,
                kv,
                locks,
                config,
            }),
        })
    }

    /// Deletes both buckets with everything in them. For teardown and tests; the store is
    /// unusable afterwards.
    pub async fn delete_buckets(&self) -> Result<(), StoreError> {
        let bucket = &self.inner.config.bucket;
        for name in [bucket.clone(), format!("{bucket}_locks")] {
            match self.inner.js.delete_key_value(&name).await {
                Ok(_) => {}
                // Already gone is what we wanted.
                Err(e) if e.to_string().contains("not found") => {}
                Err(e) => return Err(backend("delete bucket", e, true)),
            }
        }
        Ok(())
    }

    /// The current entry of `key` in `store` (any operation), or `None`.
    async fn entry(store: &kv::Store, key: &str) -> Result<Option<kv::Entry>, StoreError> {
        store
            .entry(key)
            .await
            .map_err(|e| backend("read an entry", e, true))
    }

    /// Writes `value` expecting the subject's last revision to be `revision` (0: none).
    /// `Ok(None)` when the expectation did not hold.
    async fn update(
        store: &kv::Store,
        key: &str,
        value: Bytes,
        revision: u64,
    ) -> Result<Option<u64>, StoreError> {
        match store.update(key, value, revision).await {
            Ok(rev) => Ok(Some(rev)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => {
                let retryable = e.kind() == kv::UpdateErrorKind::TimedOut;
                Err(backend("write", e, retryable))
            }
        }
    }

    /// Deletes expecting `revision`. `Ok(false)` when the expectation did not hold.
    async fn delete_at(store: &kv::Store, key: &str, revision: u64) -> Result<bool, StoreError> {
        match store.delete_expect_revision(key, Some(revision)).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(e) => {
                let retryable = e.kind() == kv::UpdateErrorKind::TimedOut;
                Err(backend("delete", e, retryable))
            }
        }
    }

    /// Creates `key`, also over a delete marker. `Err(found)` when a live value exists.
    async fn create(
        store: &kv::Store,
        key: &str,
        value: Bytes,
    ) -> Result<Result<u64, Option<u64>>, StoreError> {
        let mut expected = 0;
        for _ in 0..CAS_ROUNDS {
            if let Some(rev) = Self::update(store, key, value.clone(), expected).await? {
                return Ok(Ok(rev));
            }
            // Something is there: a live value (conflict) or a delete marker, which a
            // create may replace by expecting exactly that marker.
            match live(Self::entry(store, key).await?) {
                Live::Value(entry) => return Ok(Err(Some(entry.revision))),
                Live::Marker(rev) => expected = rev,
                Live::Nothing => expected = 0,
            }
        }
        Err(contended(key))
    }

    async fn get_lock(&self, key: &str) -> Result<Option<(kv::Entry, LockValue, u64)>, StoreError> {
        match live(Self::entry(&self.inner.locks, key).await?) {
            Live::Value(entry) => {
                let value: LockValue =
                    serde_json::from_slice(&entry.value).map_err(|e| StoreError::Backend {
                        message: format!("lock entry {key:?} does not decode: {e}"),
                        retryable: false,
                        source: Some(Box::new(e)),
                    })?;
                let token = if value.token == 0 {
                    entry.revision
                } else {
                    value.token
                };
                Ok(Some((entry, value, token)))
            }
            Live::Marker(_) | Live::Nothing => Ok(None),
        }
    }

    /// The held lock entry of `guard`, or `LockLost` when the entry is gone, expired or
    /// another acquisition's.
    async fn held(&self, guard: &LockGuard) -> Result<(String, kv::Entry), StoreError> {
        let key = encode_key(&guard.name)?;
        match self.get_lock(&key).await? {
            Some((entry, value, token)) if token == guard.token && value.deadline_ms > now_ms() => {
                Ok((key, entry))
            }
            _ => Err(lock_lost(guard)),
        }
    }
}

async fn open_bucket(
    js: &jetstream::Context,
    bucket: &str,
    config: &NatsStoreConfig,
) -> Result<kv::Store, StoreError> {
    if let Ok(store) = js.get_key_value(bucket).await {
        return Ok(store);
    }
    // The stream a KV bucket is, written out rather than through `create_key_value`: that
    // call first queries account limits in a shape a 2.9 server does not answer with.
    let created = js
        .create_stream(stream::Config {
            name: format!("KV_{bucket}"),
            description: Some("agentic StateStore".to_owned()),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_age: config.max_age.unwrap_or(Duration::ZERO),
            storage: stream::StorageType::File,
            num_replicas: config.replicas.max(1),
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await;
    if let Err(e) = created {
        // Another process may have created it in between; if so, `get` below finds it.
        tracing::debug!(bucket, error = %e, "creating the bucket failed");
    }
    js.get_key_value(bucket)
        .await
        .map_err(|e| backend("open bucket", e, true))
}

enum Live {
    Value(kv::Entry),
    Marker(u64),
    Nothing,
}

fn live(entry: Option<kv::Entry>) -> Live {
    match entry {
        Some(e) if e.operation == kv::Operation::Put => Live::Value(e),
        Some(e) => Live::Marker(e.revision),
        None => Live::Nothing,
    }
}

#[async_trait]
impl StateStore for NatsStore {
    fn capabilities(&self) -> StoreCapabilities {
        StoreCapabilities {
            per_key_ttl: false,
            watch: true,
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let key = encode_key(key)?;
        Ok(match live(Self::entry(&self.inner.kv, &key).await?) {
            Live::Value(e) => Some(Versioned {
                value: e.value,
                version: e.revision,
            }),
            Live::Marker(_) | Live::Nothing => None,
        })
    }

    async fn put(&self, key: &str, value: Vec<u8>, opts: PutOptions) -> Result<u64, StoreError> {
        let encoded = encode_key(key)?;
        if opts.ttl.is_some() {
            return Err(StoreError::Unsupported(
                "per-key TTL (NATS 2.9 KV has only the bucket-wide max_age; per-key TTL needs 2.11)",
            ));
        }
        let kv = &self.inner.kv;
        let value = Bytes::from(value);
        let conflict = |found: Option<u64>| StoreError::Conflict {
            key: key.to_owned(),
            expected: expected_words(opts.expect),
            found,
        };
        match opts.expect {
            Expect::Any => kv
                .put(&encoded, value)
                .await
                .map_err(|e| backend("put", e, true)),
            Expect::Absent => Self::create(kv, &encoded, value).await?.map_err(conflict),
            Expect::Version(v) => {
                // A delete marker's revision is never handed out as a version, so an update
                // expecting `v` cannot resurrect a deleted key.
                if let Some(rev) = Self::update(kv, &encoded, value, v).await? {
                    return Ok(rev);
                }
                let found = match live(Self::entry(kv, &encoded).await?) {
                    Live::Value(e) => Some(e.revision),
                    Live::Marker(_) | Live::Nothing => None,
                };
                Err(conflict(found))
            }
        }
    }

    async fn delete(&self, key: &str, expect: Expect) -> Result<bool, StoreError> {
        let encoded = encode_key(key)?;
        let kv = &self.inner.kv;
        let conflict = |found: Option<u64>| StoreError::Conflict {
            key: key.to_owned(),
            expected: expected_words(expect),
            found,
        };
        for _ in 0..CAS_ROUNDS {
            let current = match live(Self::entry(kv, &encoded).await?) {
                Live::Value(e) => Some(e.revision),
                Live::Marker(_) | Live::Nothing => None,
            };
            let rev = match (expect, current) {
                (Expect::Version(_), None) => return Err(conflict(None)),
                (Expect::Any | Expect::Absent, None) => return Ok(false),
                (Expect::Absent, Some(rev)) => return Err(conflict(Some(rev))),
                (Expect::Version(v), Some(rev)) if v != rev => return Err(conflict(Some(rev))),
                (_, Some(rev)) => rev,
            };
            // Expect the revision we read, so "true" means we deleted that live value.
            if Self::delete_at(kv, &encoded, rev).await? {
                return Ok(true);
            }
        }
        Err(contended(key))
    }

    async fn scan(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<ScanPage, StoreError> {
        if limit == 0 {
            return Ok(ScanPage::default());
        }
        let filter = format!("{}{}", self.inner.kv.prefix, filter_for(prefix)?);
        let consumer: consumer::PullConsumer = self
            .inner
            .kv
            .stream
            .create_consumer(consumer::pull::Config {
                deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                ack_policy: consumer::AckPolicy::None,
                filter_subject: filter,
                // Cleaned up by the server if we die before deleting it.
                inactive_threshold: Duration::from_secs(30),
                memory_storage: true,
                ..Default::default()
            })
            .await
            .map_err(|e| backend("create a scan consumer", e, true))?;
        let result = self.collect_page(&consumer, prefix, cursor, limit).await;
        let name = consumer.cached_info().name.clone();
        if let Err(e) = self.inner.kv.stream.delete_consumer(&name).await {
            // Harmless: the inactivity threshold removes it.
            tracing::debug!(consumer = %name, error = %e, "could not delete a scan consumer");
        }
        result
    }

    async fn lock(&self, name: &str, ttl: Duration) -> Result<Option<LockGuard>, StoreError> {
        let key = encode_key(name)?;
        let ttl_ms = ttl_ms(ttl)?;
        let locks = &self.inner.locks;
        for _ in 0..CAS_ROUNDS {
            let started = tokio::time::Instant::now();
            let value = lock_value(now_ms().saturating_add(ttl_ms), 0)?;
            let expected = match live(Self::entry(locks, &key).await?) {
                Live::Value(entry) => {
                    let current: Option<LockValue> = serde_json::from_slice(&entry.value).ok();
                    match current {
                        Some(c) if c.deadline_ms > now_ms() => return Ok(None),
                        // Expired (or unreadable): take it over from exactly this entry.
                        _ => entry.revision,
                    }
                }
                Live::Marker(rev) => rev,
                Live::Nothing => 0,
            };
            match Self::update(locks, &key, value, expected).await? {
                Some(token) => {
                    return Ok(Some(LockGuard {
                        name: name.to_owned(),
                        token,
                        expires_at: crate::later(started, ttl),
                    }));
                }
                // Someone else wrote in between: look again (they may hold it now).
                None => continue,
            }
        }
        Err(contended(name))
    }

    async fn extend_lock(&self, guard: &LockGuard, ttl: Duration) -> Result<LockGuard, StoreError> {
        let ttl_ms = ttl_ms(ttl)?;
        for _ in 0..CAS_ROUNDS {
            let started = tokio::time::Instant::now();
            let (key, entry) = self.held(guard).await?;
            let value = lock_value(now_ms().saturating_add(ttl_ms), guard.token)?;
            if Self::update(&self.inner.locks, &key, value, entry.revision)
                .await?
                .is_some()
            {
                return Ok(LockGuard {
                    expires_at: crate::later(started, ttl),
                    ..guard.clone()
                });
            }
        }
        Err(lock_lost(guard))
    }

    async fn unlock(&self, guard: &LockGuard) -> Result<(), StoreError> {
        for _ in 0..CAS_ROUNDS {
            let (key, entry) = self.held(guard).await?;
            if Self::delete_at(&self.inner.locks, &key, entry.revision).await? {
                return Ok(());
            }
        }
        Err(lock_lost(guard))
    }

    async fn watch(
        &self,
        prefix: &str,
    ) -> Result<BoxStream<'static, Result<WatchEvent, StoreError>>, StoreError> {
        let watch = self
            .inner
            .kv
            .watch(filter_for(prefix)?)
            .await
            .map_err(|e| backend("watch", e, true))?;
        let prefix = prefix.to_owned();
        let events = watch.filter_map(move |item| {
            let out = match item {
                Err(e) => Some(Err(backend("watch", e, true))),
                Ok(entry) => match decode_key(&entry.key) {
                    Some(key) if key.starts_with(&prefix) => Some(Ok(match entry.operation {
                        kv::Operation::Put => WatchEvent::Put {
                            key,
                            value: Versioned {
                                value: entry.value,
                                version: entry.revision,
                            },
                        },
                        kv::Operation::Delete | kv::Operation::Purge => WatchEvent::Delete { key },
                    })),
                    _ => None,
                },
            };
            std::future::ready(out)
        });
        Ok(events.boxed())
    }
}

impl NatsStore {
    /// Reads every last value under the consumer's filter and keeps the first `limit + 1`
    /// keys after `cursor` that start with `prefix`.
    async fn collect_page(
        &self,
        consumer: &consumer::PullConsumer,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<ScanPage, StoreError> {
        // Bounded by what existed when the consumer was made, so a scan under a stream of
        // concurrent writes still ends.
        let mut remaining = consumer.cached_info().num_pending;
        let mut page: BTreeMap<String, Versioned> = BTreeMap::new();
        let timeout = self.inner.config.request_timeout;
        while remaining > 0 {
            let fetched = tokio::time::timeout(timeout, async {
                let mut batch = consumer
                    .fetch()
                    .max_messages(SCAN_BATCH)
                    .messages()
                    .await
                    .map_err(|e| backend("scan", e, true))?;
                let mut got = Vec::new();
                while let Some(message) = batch.next().await {
                    got.push(message.map_err(|e| StoreError::Backend {
                        message: format!("scan: {e}"),
                        retryable: true,
                        source: None,
                    })?);
                }
                Ok::<_, StoreError>(got)
            })
            .await
            .map_err(|_| StoreError::Backend {
                message: "scan: fetch timed out".to_owned(),
                retryable: true,
                source: None,
            })??;
            if fetched.is_empty() {
                break;
            }
            remaining = remaining.saturating_sub(fetched.len() as u64);
            for message in fetched {
                let is_put = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("KV-Operation"))
                    .is_none_or(|op| op.as_str() == "PUT");
                if !is_put {
                    continue;
                }
                let Some(key) = message
                    .subject
                    .as_str()
                    .strip_prefix(self.inner.kv.prefix.as_str())
                    .and_then(decode_key)
                else {
                    continue;
                };
                if !key.starts_with(prefix) || cursor.is_some_and(|c| key.as_str() <= c) {
                    continue;
                }
                let version = message.info().map_or(0, |i| i.stream_sequence);
                page.insert(
                    key,
                    Versioned {
                        value: message.payload.clone(),
                        version,
                    },
                );
                // Keep one more than a page to know whether another page follows.
                if page.len() > limit + 1 {
                    page.pop_last();
                }
            }
        }
        let more = page.len() > limit;
        let items: Vec<(String, Versioned)> = page.into_iter().take(limit).collect();
        let next_cursor = if more {
            items.last().map(|(k, _)| k.clone())
        } else {
            None
        };
        Ok(ScanPage { items, next_cursor })
    }
}

/// Maps a key to a KV key (see the [module docs](self)).
fn encode_key(key: &str) -> Result<String, StoreError> {
    if key.is_empty() {
        return Err(StoreError::Invalid("empty key".to_owned()));
    }
    let encoded = key
        .split('/')
        .map(encode_part)
        .collect::<Vec<_>>()
        .join(".");
    if encoded.len() > MAX_ENCODED_KEY {
        return Err(StoreError::Invalid(format!(
            "key of {} bytes is {} bytes once encoded for NATS KV, over the {MAX_ENCODED_KEY} limit",
            key.len(),
            encoded.len()
        )));
    }
    Ok(encoded)
}

fn encode_part(part: &str) -> String {
    if part.is_empty() {
        return "=".to_owned();
    }
    let mut out = String::with_capacity(part.len());
    for b in part.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

/// The inverse of [`encode_key`]; `None` for a subject it cannot have produced.
fn decode_key(encoded: &str) -> Option<String> {
    let mut parts = Vec::new();
    for token in encoded.split('.') {
        if token == "=" {
            parts.push(String::new());
            continue;
        }
        let mut bytes = Vec::with_capacity(token.len());
        let mut it = token.bytes();
        while let Some(b) = it.next() {
            if b == b'=' {
                let hi = hex(it.next()?)?;
                let lo = hex(it.next()?)?;
                bytes.push(hi << 4 | lo);
            } else if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
                bytes.push(b);
            } else {
                return None;
            }
        }
        if bytes.is_empty() {
            return None;
        }
        parts.push(String::from_utf8(bytes).ok()?);
    }
    Some(parts.join("/"))
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The KV key filter that covers every key starting with `prefix`: its complete `/` parts
/// followed by `>`, or `>` alone. A superset; callers check the prefix themselves.
fn filter_for(prefix: &str) -> Result<String, StoreError> {
    match prefix.rfind('/') {
        None => Ok(">".to_owned()),
        Some(i) => {
            let head = prefix.get(..i).unwrap_or_default();
            let tokens: Vec<String> = head.split('/').map(encode_part).collect();
            let filter = format!("{}.>", tokens.join("."));
            if filter.len() > MAX_ENCODED_KEY {
                return Err(StoreError::Invalid(format!(
                    "prefix {prefix:?} is too long once encoded"
                )));
            }
            Ok(filter)
        }
    }
}

fn lock_value(deadline_ms: u64, token: u64) -> Result<Bytes, StoreError> {
    serde_json::to_vec(&LockValue { deadline_ms, token })
        .map(Bytes::from)
        .map_err(|e| StoreError::Backend {
            message: format!("encode a lock entry: {e}"),
            retryable: false,
            source: Some(Box::new(e)),
        })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn ttl_ms(ttl: Duration) -> Result<u64, StoreError> {
    let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return Err(StoreError::Invalid(
            "a lock TTL must be at least 1 ms".to_owned(),
        ));
    }
    Ok(ms)
}

fn expected_words(expect: Expect) -> String {
    match expect {
        Expect::Any => "anything".to_owned(),
        Expect::Absent => "absent".to_owned(),
        Expect::Version(v) => format!("version {v}"),
    }
}

fn lock_lost(guard: &LockGuard) -> StoreError {
    StoreError::LockLost {
        name: guard.name.clone(),
        token: guard.token,
    }
}

fn contended(key: &str) -> StoreError {
    StoreError::Backend {
        message: format!("{key:?}: lost {CAS_ROUNDS} compare-and-set races in a row"),
        retryable: true,
        source: None,
    }
}

fn backend(
    what: &str,
    e: impl std::error::Error + Send + Sync + 'static,
    retryable: bool,
) -> StoreError {
    StoreError::Backend {
        message: format!("NATS {what} failed: {e}"),
        retryable,
        source: Some(Box::new(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_roundtrip_and_stay_valid() {
        for key in [
            "plan/42/state",
            "a",
            "/",
            "//x//",
            "a.b c",
            "=",
            "=2E",
            "s.",
            "\u{1F980}/\u{e9}t\u{e9}",
            "conformance/scan/0123abcd/s/005",
        ] {
            let enc = encode_key(key).unwrap_or_default();
            assert!(
                !enc.is_empty() && !enc.starts_with('.') && !enc.ends_with('.'),
                "{key:?} -> {enc:?}"
            );
            assert!(
                enc.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_=./".contains(&b)),
                "{key:?} -> {enc:?}"
            );
            assert!(!enc.contains(".."), "{key:?} -> {enc:?}");
            assert_eq!(decode_key(&enc).as_deref(), Some(key), "{enc:?}");
        }
        assert!(encode_key("").is_err());
        assert_ne!(encode_key("a/b").ok(), encode_key("a.b").ok());
    }

    #[test]
    fn filters_cover_their_prefix() {
        assert_eq!(filter_for("").ok().as_deref(), Some(">"));
        assert_eq!(filter_for("plan").ok().as_deref(), Some(">"));
        assert_eq!(filter_for("a/b/").ok().as_deref(), Some("a.b.>"));
        assert_eq!(filter_for("a/b/c").ok().as_deref(), Some("a.b.>"));
        assert_eq!(filter_for("/x").ok().as_deref(), Some("=.>"));
    }
}
