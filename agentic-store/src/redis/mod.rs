//! The Redis backend: versioned values changed by Lua scripts, an ordered index for prefix
//! scans, `SET NX PX` locks with fencing tokens from `INCR`, and pub/sub for `watch`.
//!
//! # Key layout (one namespace)
//!
//! Every key carries the hash tag `{<namespace>}`, so a namespace lives in one Redis
//! Cluster slot: the value, the ordered index and the version counter change together in
//! one script. Scale out across slots with several namespaces.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `<prefix>:{ns}:n:<key>` | string | the key's version (digits; `t` and digits when the key has a TTL, which both its keys carry) |
//! | `<prefix>:{ns}:v:<key>` | string | the key's value |
//! | `<prefix>:{ns}:idx` | sorted set | every key, score 0, so `ZRANGEBYLEX` pages through a prefix in key order |
//! | `<prefix>:{ns}:exp` | sorted set | keys with a TTL by expiry, so writes prune index entries of expired keys |
//! | `<prefix>:{ns}:ver` | counter | a new key's first version; kept at or above every version of every key that was deleted or can expire, so a key's version grows even across delete, expiry and re-create |
//! | `<prefix>:{ns}:lock:<name>` | string | the holder's fencing token, with the lock's TTL (`SET NX PX`) |
//! | `<prefix>:{ns}:fence` | counter | fencing tokens (`INCR`): strictly increasing for every lock |
//! | `<prefix>:{ns}:layout` | string | `2` once values of earlier releases (a hash per key) were moved to this layout, at connect |
//! | channel `<prefix>:{ns}:watch` | pub/sub | every change, published by the writing script |
//!
//! # Why a sorted index and not `SCAN MATCH`
//!
//! `SCAN` walks the whole keyspace, returns keys in hash order and may return a key twice,
//! so it cannot promise what [`StateStore::scan`] promises (key order, each key once, a
//! cursor that is simply the last key). The index costs one `ZADD` when a key is created
//! and one `ZREM` when it is deleted; entries of expired keys are dropped lazily (on writes
//! and during scans).
//!
//! # Watch
//!
//! Each write publishes `op, version, key, value` on the namespace's channel; `watch`
//! subscribes on its own connection and filters by prefix. Pub/sub is at-most-once: when
//! the watch connection drops, the stream yields an error item and ends, and the caller
//! re-reads and re-watches.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use redis::Value;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::{
    Expect, LockGuard, PutOptions, ScanPage, StateStore, StoreCapabilities, StoreError, Versioned,
    WatchEvent,
};

mod writer;

const COMMON: &str = include_str!("common.lua");

/// Settings of [`RedisStore`].
#[derive(Debug, Clone)]
pub struct RedisStoreConfig {
    /// `redis://host:port/db`.
    pub url: String,
    /// First part of every key.
    pub key_prefix: String,
    /// The namespace (the hash tag): one Redis Cluster slot per namespace.
    pub namespace: String,
    /// Publish every change for [`StateStore::watch`] (off by default: it costs a `PUBLISH`
    /// with the value on every write, and watch is optional). Without it, `capabilities()`
    /// reports no watch and `watch` returns `Unsupported`.
    pub publish_changes: bool,
    /// Reply timeout of one call.
    pub response_timeout: Duration,
    /// Timeout of one connection attempt.
    pub connection_timeout: Duration,
    /// Tries of one operation on transient failures.
    pub retries: u32,
}

impl RedisStoreConfig {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        RedisStoreConfig {
            url: url.into(),
            key_prefix: "agentic".to_owned(),
            namespace: "store".to_owned(),
            publish_changes: false,
            response_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(2),
            retries: 6,
        }
    }

    /// Sets the namespace.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Sets the key prefix.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// Publishes every change so [`StateStore::watch`] works.
    pub fn with_watch(mut self) -> Self {
        self.publish_changes = true;
        self
    }
}

struct Scripts {
    put: redis::Script,
    /// `put_plain.lua` without comment lines and indentation: sent as `EVAL` text (see
    /// `writer.rs`), so every byte is read and hashed by Redis on every call.
    put_plain: String,
    delete: redis::Script,
    scan: redis::Script,
    lock: redis::Script,
    extend_lock: redis::Script,
    unlock: redis::Script,
    migrate: redis::Script,
}

/// Moves a namespace's values from an earlier release's layout (one hash per key) to the
/// current one, once: a marker key says it is done, so later connects cost one `GET`.
/// Idempotent and safe to run from several processes at once.
async fn migrate(shared: &Shared) -> Result<(), StoreError> {
    const LAYOUT: &str = "2";
    let marker = format!("{}layout", shared.base);
    let marker = &marker;
    let done: Option<String> = shared
        .run("read the layout marker", |mut conn| async move {
            redis::cmd("GET").arg(marker).query_async(&mut conn).await
        })
        .await?;
    if done.as_deref() == Some(LAYOUT) {
        return Ok(());
    }
    let script = &shared.scripts.migrate;
    let base = &*shared.base;
    let mut cursor = String::new();
    loop {
        let from = &cursor;
        let next: String = shared
            .run("move values to the current layout", |mut conn| async move {
                script
                    .key(base)
                    .arg(from.as_str())
                    .arg(500)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        if next.is_empty() {
            break;
        }
        cursor = next;
    }
    shared
        .run("write the layout marker", |mut conn| async move {
            redis::cmd("SET")
                .arg(marker)
                .arg(LAYOUT)
                .query_async::<()>(&mut conn)
                .await
        })
        .await
}

/// A [`StateStore`] on Redis. See the [module docs](self) for the layout.
///
/// # Capabilities
///
/// | capability | `RedisStore` |
/// |---|---|
/// | per-key TTL | yes (`PEXPIRE`) |
/// | watch | opt-in with [`RedisStoreConfig::with_watch`] (pub/sub, at-most-once: a dropped watch connection ends the stream with an error) |
/// | persistence | whatever the server is configured for |
/// | fencing | yes, tokens from one `INCR` counter per namespace |
///
/// Puts that callers make at the same time share one call, and gets one `MGET` (see
/// [`writer`]); a lone call goes out at once. The calls run as tasks on the Tokio runtime
/// the store was connected on, as does the connection: if that runtime shuts down, calls
/// fail with a (non-retryable) backend error.
#[derive(Clone)]
pub struct RedisStore {
    client: redis::Client,
    shared: Arc<Shared>,
    writer: Arc<writer::Batcher<writer::PutRequest>>,
    reader: Arc<writer::Batcher<writer::GetRequest>>,
}

/// What the store's calls and its batched calls share.
struct Shared {
    conn: ConnectionManager,
    config: RedisStoreConfig,
    base: Arc<str>,
    scripts: Scripts,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("base", &self.shared.base)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects with default settings.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(RedisStoreConfig::new(url)).await
    }

    /// Connects with the given settings. The connection reconnects by itself afterwards.
    pub async fn connect_with(config: RedisStoreConfig) -> Result<Self, StoreError> {
        if config.namespace.is_empty() || config.namespace.contains(['{', '}']) {
            return Err(StoreError::Invalid(format!(
                "namespace {:?} must be non-empty and contain no '{{' or '}}'",
                config.namespace
            )));
        }
        // Batched calls run on this runtime (see `writer::Batcher`).
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            backend(format!(
                "RedisStore::connect must run on a Tokio runtime: {e}"
            ))
        })?;
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| map_err("open the Redis URL", e))?;
        let manager = ConnectionManagerConfig::new()
            .set_response_timeout(Some(config.response_timeout))
            .set_connection_timeout(Some(config.connection_timeout))
            .set_number_of_retries(config.retries as usize)
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_with_config(client.clone(), manager)
            .await
            .map_err(|e| map_err("connect to Redis", e))?;
        let s = |body: &str| redis::Script::new(&format!("{COMMON}\n{body}"));
        let base: Arc<str> = format!("{}:{{{}}}:", config.key_prefix, config.namespace).into();
        let shared = Arc::new(Shared {
            conn,
            base,
            config,
            scripts: Scripts {
                put: s(include_str!("put.lua")),
                put_plain: include_str!("put_plain.lua")
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with("--"))
                    .collect::<Vec<_>>()
                    .join("\n"),
                delete: s(include_str!("delete.lua")),
                scan: s(include_str!("scan.lua")),
                lock: s(include_str!("lock.lua")),
                extend_lock: s(include_str!("extend_lock.lua")),
                unlock: s(include_str!("unlock.lua")),
                migrate: s(include_str!("migrate.lua")),
            },
        });
        migrate(&shared).await?;
        Ok(RedisStore {
            client,
            writer: writer::Batcher::new(Arc::clone(&shared), runtime.clone()),
            reader: writer::Batcher::new(Arc::clone(&shared), runtime),
            shared,
        })
    }

    async fn run<T, F, Fut>(&self, what: &'static str, op: F) -> Result<T, StoreError>
    where
        F: FnMut(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, redis::RedisError>>,
    {
        self.shared.run(what, op).await
    }

    fn check_key(key: &str) -> Result<(), StoreError> {
        if key.is_empty() {
            return Err(StoreError::Invalid("empty key".to_owned()));
        }
        Ok(())
    }

    fn ttl_ms(ttl: Duration) -> Result<u64, StoreError> {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        if ms == 0 {
            return Err(StoreError::Invalid(
                "a TTL must be at least 1 ms".to_owned(),
            ));
        }
        // Redis refuses expiries that overflow its clock; keep well inside.
        if ms > i64::MAX as u64 / 4 {
            return Err(StoreError::Invalid(format!("TTL of {ttl:?} is too large")));
        }
        Ok(ms)
    }
}

/// Whether a failed call may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repeat {
    /// Running it twice gives the same answer (a read, an unconditional write, extending
    /// a lock): every transient failure is retried.
    Safe,
    /// A second run would misreport the first one's effect (a compare-and-set finding its
    /// own write and calling it a conflict; a lock finding itself held; an unlock or a
    /// delete finding nothing to do). Retried only when the call surely never ran (see
    /// [`surely_not_run`]); otherwise the outcome is unknown, and the caller is told so.
    Once,
}

impl Shared {
    /// Runs `op`, retrying transient failures with backoff up to `config.retries` tries
    /// (only those that surely did not run it, when `repeat` is [`Repeat::Once`]).
    async fn run<T, F, Fut>(&self, what: &'static str, op: F) -> Result<T, StoreError>
    where
        F: FnMut(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, redis::RedisError>>,
    {
        self.run_with(what, Repeat::Safe, op).await
    }

    async fn run_with<T, F, Fut>(
        &self,
        what: &'static str,
        repeat: Repeat,
        mut op: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, redis::RedisError>>,
    {
        let mut delay = Duration::from_millis(25);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match op(self.conn.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) if repeat == Repeat::Once && is_transient(&e) && !surely_not_run(&e) => {
                    return Err(StoreError::Backend {
                        message: format!(
                            "Redis {what}: no answer ({e}); it may or may not have been \
                             applied, so it was not sent again: read the key (or lock) to \
                             see which"
                        ),
                        retryable: true,
                        source: Some(Box::new(e)),
                    });
                }
                Err(e) if is_transient(&e) && attempt < self.config.retries.max(1) => {
                    tracing::warn!(operation = what, attempt, error = %e, "Redis call failed; retrying");
                    tokio::time::sleep(delay.mul_f64(0.5 + fastrand::f64() / 2.0)).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(map_err(what, e)),
            }
        }
    }
}

/// A key's Redis key, `<base><part><key>` (`n:` for its version, `v:` for its value),
/// written straight into the command buffer.
struct StoreKey<'a>(&'a str, &'static [u8], &'a str);

impl redis::ToRedisArgs for StoreKey<'_> {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        let mut w = out.writer_for_next_arg();
        std::io::Write::write_all(&mut w, self.0.as_bytes()).ok();
        std::io::Write::write_all(&mut w, self.1).ok();
        std::io::Write::write_all(&mut w, self.2.as_bytes()).ok();
    }
}

/// The version in an `n:<key>` string: digits, after a `t` when the key has a TTL.
fn parse_version(s: &[u8]) -> Option<u64> {
    let digits = s.strip_prefix(b"t").unwrap_or(s);
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Runs an `EVALSHA` command built by hand (one command buffer, rather than through
/// `redis::ScriptInvocation`, which copies every argument again per call); when the
/// server does not know the script (restarted, `SCRIPT FLUSH`), loads it and runs the
/// command again.
async fn eval<T: redis::FromRedisValue>(
    conn: &mut ConnectionManager,
    script: &redis::Script,
    cmd: &redis::Cmd,
) -> redis::RedisResult<T> {
    match cmd.query_async(conn).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            script.load_async(conn).await?;
            cmd.query_async(conn).await
        }
        other => other,
    }
}

fn expect_arg(expect: Expect) -> String {
    match expect {
        Expect::Any => "any".to_owned(),
        Expect::Absent => "absent".to_owned(),
        Expect::Version(v) => v.to_string(),
    }
}

fn expected_words(expect: Expect) -> String {
    match expect {
        Expect::Any => "anything".to_owned(),
        Expect::Absent => "absent".to_owned(),
        Expect::Version(v) => format!("version {v}"),
    }
}

/// Reads `{ 'ok', n }` or `{ 'conflict', found }`.
fn outcome(key: &str, expect: Expect, reply: Value) -> Result<i64, StoreError> {
    let items = match reply {
        Value::Array(items) if items.len() == 2 => items,
        other => return Err(backend(format!("unexpected script reply: {other:?}"))),
    };
    let tag = string(&items[0])?;
    let n = int(&items[1])?;
    match tag.as_str() {
        "ok" => Ok(n),
        "conflict" => Err(StoreError::Conflict {
            key: key.to_owned(),
            expected: expected_words(expect),
            found: (n >= 0).then_some(n as u64),
        }),
        other => Err(backend(format!("unexpected script reply tag {other:?}"))),
    }
}

#[async_trait]
impl StateStore for RedisStore {
    fn capabilities(&self) -> StoreCapabilities {
        StoreCapabilities {
            per_key_ttl: true,
            watch: self.shared.config.publish_changes,
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        Self::check_key(key)?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let request = writer::GetRequest {
            key: key.to_owned(),
            reply,
        };
        let stopped =
            || backend("the store's get call was dropped (runtime shut down?)".to_owned());
        self.reader.submit(request);
        match answer.await.map_err(|_| stopped())?? {
            (Some(n), Some(v)) => {
                let version = parse_version(&n).ok_or_else(|| {
                    backend(format!(
                        "the version of {key:?} in Redis is not a number: {:?}",
                        String::from_utf8_lossy(&n)
                    ))
                })?;
                Ok(Some(Versioned {
                    value: Bytes::from(v),
                    version,
                }))
            }
            _ => Ok(None),
        }
    }

    async fn put(&self, key: &str, value: Vec<u8>, opts: PutOptions) -> Result<u64, StoreError> {
        Self::check_key(key)?;
        let ttl = opts.ttl.map(Self::ttl_ms).transpose()?.unwrap_or(0);
        let (reply, answer) = tokio::sync::oneshot::channel();
        let request = writer::PutRequest {
            key: key.to_owned(),
            value,
            expect: opts.expect,
            ttl_ms: ttl,
            reply,
        };
        let stopped =
            || backend("the store's put call was dropped (runtime shut down?)".to_owned());
        self.writer.submit(request);
        let n = answer.await.map_err(|_| stopped())??;
        if n > 0 {
            return Ok(n as u64);
        }
        Err(StoreError::Conflict {
            key: key.to_owned(),
            expected: expected_words(opts.expect),
            found: (n < 0).then_some(n.unsigned_abs()),
        })
    }

    async fn delete(&self, key: &str, expect: Expect) -> Result<bool, StoreError> {
        Self::check_key(key)?;
        let script = &self.shared.scripts.delete;
        let (base, exp) = (&*self.shared.base, expect_arg(expect));
        let publish = if self.shared.config.publish_changes {
            "1"
        } else {
            "0"
        };
        let exp = &exp;
        let reply: Value = self
            .shared
            .run_with("delete", Repeat::Once, |mut conn| async move {
                script
                    .key(base)
                    .arg(key)
                    .arg(exp.as_str())
                    .arg(publish)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        outcome(key, expect, reply).map(|n| n == 1)
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
        let script = &self.shared.scripts.scan;
        let base = &*self.shared.base;
        let cursor = cursor.unwrap_or("");
        let reply: Value = self
            .run("scan", |mut conn| async move {
                script
                    .key(base)
                    .arg(prefix)
                    .arg(cursor)
                    .arg(limit)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        let mut items = match reply {
            Value::Array(items) if !items.is_empty() => items,
            other => return Err(backend(format!("unexpected scan reply: {other:?}"))),
        };
        let next = items
            .pop()
            .map(|v| string(&v))
            .transpose()?
            .unwrap_or_default();
        let mut page = ScanPage {
            items: Vec::with_capacity(items.len() / 3),
            next_cursor: (!next.is_empty()).then_some(next),
        };
        for f in items.chunks_exact(3) {
            page.items.push((
                string(&f[0])?,
                Versioned {
                    value: Bytes::from(bytes(&f[1])?),
                    version: int(&f[2])? as u64,
                },
            ));
        }
        Ok(page)
    }

    async fn lock(&self, name: &str, ttl: Duration) -> Result<Option<LockGuard>, StoreError> {
        Self::check_key(name)?;
        let ms = Self::ttl_ms(ttl)?;
        let started = tokio::time::Instant::now();
        let script = &self.shared.scripts.lock;
        let base = &*self.shared.base;
        let token: i64 = self
            .shared
            .run_with("lock", Repeat::Once, |mut conn| async move {
                script
                    .key(base)
                    .arg(name)
                    .arg(ms)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok((token > 0).then(|| LockGuard {
            name: name.to_owned(),
            token: token as u64,
            expires_at: crate::later(started, ttl),
        }))
    }

    async fn extend_lock(&self, guard: &LockGuard, ttl: Duration) -> Result<LockGuard, StoreError> {
        let ms = Self::ttl_ms(ttl)?;
        let started = tokio::time::Instant::now();
        let script = &self.shared.scripts.extend_lock;
        let base = &*self.shared.base;
        let ok: i64 = self
            .run("extend_lock", |mut conn| async move {
                script
                    .key(base)
                    .arg(guard.name.as_str())
                    .arg(guard.token)
                    .arg(ms)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        if ok == 1 {
            Ok(LockGuard {
                expires_at: crate::later(started, ttl),
                ..guard.clone()
            })
        } else {
            Err(StoreError::LockLost {
                name: guard.name.clone(),
                token: guard.token,
            })
        }
    }

    async fn unlock(&self, guard: &LockGuard) -> Result<(), StoreError> {
        let script = &self.shared.scripts.unlock;
        let base = &*self.shared.base;
        let ok: i64 = self
            .shared
            .run_with("unlock", Repeat::Once, |mut conn| async move {
                script
                    .key(base)
                    .arg(guard.name.as_str())
                    .arg(guard.token)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        if ok == 1 {
            Ok(())
        } else {
            Err(StoreError::LockLost {
                name: guard.name.clone(),
                token: guard.token,
            })
        }
    }

    async fn watch(
        &self,
        prefix: &str,
    ) -> Result<BoxStream<'static, Result<WatchEvent, StoreError>>, StoreError> {
        if !self.shared.config.publish_changes {
            return Err(StoreError::Unsupported("watch (publish_changes is off)"));
        }
        let mut pubsub = self
            .client
            .get_async_pubsub()
            .await
            .map_err(|e| map_err("open the watch connection", e))?;
        pubsub
            .subscribe(format!("{}watch", self.shared.base))
            .await
            .map_err(|e| map_err("subscribe for watch", e))?;
        let prefix = prefix.to_owned();
        let messages = pubsub.into_on_message();
        let events = messages.filter_map(move |msg| {
            let decoded = decode_change(msg.get_payload_bytes());
            let keep = match &decoded {
                Ok(ev) => event_key(ev).starts_with(&prefix),
                Err(_) => true,
            };
            futures::future::ready(keep.then_some(decoded))
        });
        // When the subscription ends (connection lost), say so: pub/sub cannot replay.
        let end = futures::stream::once(async {
            Err(StoreError::Backend {
                message: "watch connection closed; changes after this point were not seen"
                    .to_owned(),
                retryable: true,
                source: None,
            })
        });
        Ok(events.chain(end).boxed())
    }
}

fn event_key(ev: &WatchEvent) -> &str {
    match ev {
        WatchEvent::Put { key, .. } | WatchEvent::Delete { key } => key,
    }
}

/// Parses `op \n version \n keylen \n key value`.
fn decode_change(payload: &[u8]) -> Result<WatchEvent, StoreError> {
    let bad = || backend("malformed watch message".to_owned());
    let mut parts = payload.splitn(4, |&b| b == b'\n');
    let op = parts.next().ok_or_else(bad)?;
    let version: u64 = std::str::from_utf8(parts.next().ok_or_else(bad)?)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let key_len: usize = std::str::from_utf8(parts.next().ok_or_else(bad)?)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let rest = parts.next().ok_or_else(bad)?;
    if rest.len() < key_len {
        return Err(bad());
    }
    let (key, value) = rest.split_at(key_len);
    let key = String::from_utf8(key.to_vec()).map_err(|_| bad())?;
    match op {
        b"P" => Ok(WatchEvent::Put {
            key,
            value: Versioned {
                value: Bytes::copy_from_slice(value),
                version,
            },
        }),
        b"D" => Ok(WatchEvent::Delete { key }),
        _ => Err(bad()),
    }
}

/// A failure that shows the command did not run: the connection was refused, or Redis
/// answered with an error (`LOADING`, `BUSY`, `TRYAGAIN`, …). After anything else (a
/// timeout, a connection broken while waiting, a reply that could not be parsed) it may
/// have run.
fn surely_not_run(e: &redis::RedisError) -> bool {
    e.is_connection_refusal() || matches!(e.kind(), redis::ErrorKind::Server(_))
}

fn is_transient(e: &redis::RedisError) -> bool {
    e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_io_error()
        || !matches!(e.retry_method(), redis::RetryMethod::NoRetry)
}

fn map_err(what: &str, e: redis::RedisError) -> StoreError {
    StoreError::Backend {
        message: format!("Redis {what} failed: {e}"),
        retryable: is_transient(&e),
        source: Some(Box::new(e)),
    }
}

fn backend(message: String) -> StoreError {
    StoreError::Backend {
        message,
        retryable: false,
        source: None,
    }
}

fn bytes(v: &Value) -> Result<Vec<u8>, StoreError> {
    match v {
        Value::BulkString(b) => Ok(b.clone()),
        Value::SimpleString(s) => Ok(s.as_bytes().to_vec()),
        Value::Int(i) => Ok(i.to_string().into_bytes()),
        Value::Nil => Ok(Vec::new()),
        other => Err(backend(format!(
            "unexpected field in script reply: {other:?}"
        ))),
    }
}

fn string(v: &Value) -> Result<String, StoreError> {
    String::from_utf8(bytes(v)?)
        .map_err(|e| backend(format!("non-UTF-8 field in script reply: {e}")))
}

fn int(v: &Value) -> Result<i64, StoreError> {
    match v {
        Value::Int(i) => Ok(*i),
        other => string(other)?
            .parse()
            .map_err(|e| backend(format!("non-integer field in script reply: {e}"))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn change_messages_decode() {
        let ev = decode_change(b"P\n7\n5\nhello\x00\xffbin").unwrap();
        assert_eq!(
            ev,
            WatchEvent::Put {
                key: "hello".into(),
                value: Versioned {
                    value: Bytes::from_static(b"\x00\xffbin"),
                    version: 7
                }
            }
        );
        assert!(decode_change(b"D\n3\n1\nk").is_ok());
        assert!(decode_change(b"X\n3\n1\nk").is_err());
        assert!(decode_change(b"P\n3\n9\nk").is_err());
        assert!(decode_change(b"").is_err());
    }
}
