//! The Redis backend: every state change is one Lua script, so a crash between two
//! commands cannot lose or duplicate a job.
//!
//! # Key layout (one queue)
//!
//! All keys of a queue share the hash tag `{<queue>}` so the backend works on Redis Cluster
//! (one slot per queue):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `<prefix>:{q}:ready:<0..9>` | list | ids ready to deliver, one list per priority (FIFO) |
//! | `<prefix>:{q}:delayed` | sorted set | ids by the server time (ms) they become due (delays and retry backoffs) |
//! | `<prefix>:{q}:leased` | sorted set | ids by lease expiry (ms): the per-job leases |
//! | `<prefix>:{q}:dead` | list | dead-lettered ids, oldest first (trimmed to `dead_letter_max`) |
//! | `<prefix>:{q}:job:<id>` | hash | payload, headers, priority, attempts, max_attempts, token, last_error, reason, dead_at |
//! | `<prefix>:{q}:idem:<key>` | string | the job id for an idempotency key, expiring after `dedupe_window` |
//!
//! # Scripts
//!
//! | script | job |
//! |---|---|
//! | `enqueue` | a batch: dedupe by idempotency key, write hashes, push to ready or delayed |
//! | `dequeue` | promote due delays, reclaim expired leases (redeliver or dead-letter), pop by priority, bump attempts and the fencing token, record per-job leases |
//! | `ack` | a batch of (id, token): checked against the token and expiry, then the job is deleted |
//! | `extend` | checked against the token, moves the lease's expiry |
//! | `nack` | checked against the token: retry after a delay, or dead-letter with the reason |
//! | `dead_letters`, `requeue_dead`, `stats` | inspection and repair |
//!
//! # Waiting
//!
//! `dequeue` polls with a bounded, adaptive interval (5 ms doubling to
//! [`RedisQueueConfig::max_poll_interval`], 100 ms by default), never a blocking command:
//! a blocking command would stall every other command multiplexed on the same connection.
//! Worst-case pickup latency of an idle consumer is therefore `max_poll_interval`; a busy
//! consumer picks up the next job on its next call.
//!
//! # Failures
//!
//! The connection is a [`redis::aio::ConnectionManager`], which reconnects by itself. A
//! failed or timed-out call is retried with backoff ([`RedisQueueConfig::retries`]); the
//! scripts are safe to repeat: enqueue ids are made by the client (a repeat finds its job),
//! ack/nack/extend are fenced by the token, and a dequeue whose reply was lost leaves its
//! jobs leased until the lease expires and they are redelivered.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use redis::Value;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::{
    DeadLetter, Delivery, Enqueued, JobId, Lease, NackOutcome, NewJob, QueueCapabilities,
    QueueError, QueueStats, Retry, TaskQueue,
};

const COMMON: &str = include_str!("common.lua");

/// Jobs per enqueue script call: keeps each call (and Lua's argument stack) bounded.
const ENQUEUE_CHUNK: usize = 500;
/// Delays promoted and leases reclaimed per script call.
const PROMOTE_LIMIT: usize = 1000;

/// Settings of [`RedisQueue`].
#[derive(Debug, Clone)]
pub struct RedisQueueConfig {
    /// `redis://host:port/db` (or `rediss://` with a TLS-enabled build of `redis`).
    pub url: String,
    /// First part of every key, so several deployments can share one Redis.
    pub key_prefix: String,
    /// Largest payload accepted.
    pub max_payload_bytes: usize,
    /// How long an idempotency key dedupes.
    pub dedupe_window: Duration,
    /// Dead letters kept per queue; the oldest beyond it are deleted. `0` keeps all.
    pub dead_letter_max: usize,
    /// Longest an idle `dequeue` sleeps between polls: the worst-case pickup latency.
    pub max_poll_interval: Duration,
    /// Reply timeout of one call.
    pub response_timeout: Duration,
    /// Timeout of one connection attempt.
    pub connection_timeout: Duration,
    /// Tries of one operation on transient failures (timeouts, dropped connections).
    pub retries: u32,
}

impl RedisQueueConfig {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        RedisQueueConfig {
            url: url.into(),
            key_prefix: "agentic".to_owned(),
            max_payload_bytes: 8 * 1024 * 1024,
            dedupe_window: Duration::from_secs(24 * 3600),
            dead_letter_max: 100_000,
            max_poll_interval: Duration::from_millis(100),
            response_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(2),
            retries: 6,
        }
    }

    /// Sets the key prefix.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }
}

struct Scripts {
    enqueue: redis::Script,
    dequeue: redis::Script,
    ack: redis::Script,
    extend: redis::Script,
    nack: redis::Script,
    dead_letters: redis::Script,
    requeue_dead: redis::Script,
    stats: redis::Script,
}

impl Scripts {
    fn new() -> Self {
        let s = |body: &str| redis::Script::new(&format!("{COMMON}\n{body}"));
        Scripts {
            enqueue: s(include_str!("enqueue.lua")),
            dequeue: s(include_str!("dequeue.lua")),
            ack: s(include_str!("ack.lua")),
            extend: s(include_str!("extend.lua")),
            nack: s(include_str!("nack.lua")),
            dead_letters: s(include_str!("dead_letters.lua")),
            requeue_dead: s(include_str!("requeue_dead.lua")),
            stats: s(include_str!("stats.lua")),
        }
    }
}

/// A [`TaskQueue`] on Redis (6.2 or newer). See the [module docs](self) for the layout.
///
/// # Capabilities
///
/// | capability | `RedisQueue` |
/// |---|---|
/// | priorities | 10 levels, FIFO inside a level |
/// | delays | yes, on the server's clock |
/// | dedupe | yes, window configurable (24 h) |
/// | max lease | unbounded |
/// | persistence | whatever the server is configured for (AOF `everysec` recommended) |
/// | waiting | bounded adaptive poll, worst case `max_poll_interval` |
#[derive(Clone)]
pub struct RedisQueue {
    conn: ConnectionManager,
    config: Arc<RedisQueueConfig>,
    scripts: Arc<Scripts>,
}

impl std::fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQueue")
            .field("key_prefix", &self.config.key_prefix)
            .finish_non_exhaustive()
    }
}

impl RedisQueue {
    /// Connects with default settings.
    pub async fn connect(url: &str) -> Result<Self, QueueError> {
        Self::connect_with(RedisQueueConfig::new(url)).await
    }

    /// Connects with the given settings. The connection reconnects by itself afterwards.
    pub async fn connect_with(config: RedisQueueConfig) -> Result<Self, QueueError> {
        let client = redis::Client::open(config.url.as_str()).map_err(|e| QueueError::Backend {
            message: format!("invalid Redis URL: {e}"),
            retryable: false,
            source: Some(Box::new(e)),
        })?;
        let manager = ConnectionManagerConfig::new()
            .set_response_timeout(Some(config.response_timeout))
            .set_connection_timeout(Some(config.connection_timeout))
            .set_number_of_retries(config.retries as usize)
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_with_config(client, manager)
            .await
            .map_err(|e| map_err("connect to Redis", e))?;
        Ok(RedisQueue {
            conn,
            config: Arc::new(config),
            scripts: Arc::new(Scripts::new()),
        })
    }

    fn base(&self, queue: &str) -> Result<String, QueueError> {
        if queue.is_empty() || queue.contains(['{', '}']) {
            return Err(QueueError::InvalidQueueName {
                name: queue.to_owned(),
                reason: "must be non-empty and contain no '{' or '}' (they delimit the Redis Cluster hash tag)".to_owned(),
            });
        }
        Ok(format!("{}:{{{}}}:", self.config.key_prefix, queue))
    }

    /// Runs `op` with retries on transient errors. The flag tells the op whether this is a
    /// repeat (so an ambiguous "already done" can be read as success).
    async fn run<T, F, Fut>(&self, what: &'static str, mut op: F) -> Result<T, QueueError>
    where
        F: FnMut(ConnectionManager, bool) -> Fut,
        Fut: Future<Output = Result<T, redis::RedisError>>,
    {
        let mut delay = Duration::from_millis(25);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match op(self.conn.clone(), attempt > 1).await {
                Ok(v) => return Ok(v),
                Err(e) if is_transient(&e) && attempt < self.config.retries.max(1) => {
                    tracing::warn!(operation = what, attempt, error = %e, "Redis call failed; retrying");
                    // Full jitter keeps many workers from retrying in lockstep after a restart.
                    tokio::time::sleep(delay.mul_f64(0.5 + fastrand::f64() / 2.0)).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(map_err(what, e)),
            }
        }
    }

    async fn dequeue_once(
        &self,
        base: &str,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        let started = tokio::time::Instant::now();
        let lease_ms = millis(lease).max(1);
        let script = &self.scripts.dequeue;
        let dead_max = self.config.dead_letter_max;
        let reply: Value = self
            .run("dequeue", |mut conn, _| async move {
                script
                    .key(base)
                    .arg(max)
                    .arg(lease_ms)
                    .arg(dead_max)
                    .arg(PROMOTE_LIMIT)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        let items = array(reply)?;
        let mut out = Vec::with_capacity(items.len() / 8);
        let queue = self.queue_name(base);
        let expires_at = started + lease;
        for f in items.chunks_exact(8) {
            let id = string(&f[0])?;
            let headers = decode_headers(&bytes(&f[2])?)?;
            let last_error = string(&f[7])?;
            out.push(Delivery {
                lease: Lease {
                    queue: queue.clone(),
                    job_id: JobId(id),
                    token: int(&f[6])? as u64,
                    expires_at,
                },
                payload: Bytes::from(bytes(&f[1])?),
                headers,
                priority: int(&f[3])? as u8,
                attempt: int(&f[4])? as u32,
                max_attempts: int(&f[5])? as u32,
                last_error: (!last_error.is_empty()).then_some(last_error),
            });
        }
        Ok(out)
    }

    fn queue_name(&self, base: &str) -> String {
        // base = "<prefix>:{<queue>}:"
        base.get(self.config.key_prefix.len() + 2..base.len().saturating_sub(2))
            .unwrap_or_default()
            .to_owned()
    }

    async fn stats_raw(&self, base: &str) -> Result<(QueueStats, Option<Duration>), QueueError> {
        let script = &self.scripts.stats;
        let dead_max = self.config.dead_letter_max;
        let reply: Value = self
            .run("stats", |mut conn, _| async move {
                script
                    .key(base)
                    .arg(dead_max)
                    .arg(PROMOTE_LIMIT)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        let f = array(reply)?;
        if f.len() < 5 {
            return Err(QueueError::backend_msg(
                "stats script returned too few fields",
            ));
        }
        let next_due = int(&f[4])?;
        Ok((
            QueueStats {
                ready: int(&f[0])? as u64,
                delayed: int(&f[1])? as u64,
                leased: int(&f[2])? as u64,
                dead: int(&f[3])? as u64,
            },
            (next_due >= 0).then(|| Duration::from_millis(next_due as u64)),
        ))
    }

    /// Acks several deliveries in one round trip; one result per lease, in order.
    pub async fn ack_many(&self, leases: &[Lease]) -> Vec<Result<(), QueueError>> {
        let mut by_queue: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, l) in leases.iter().enumerate() {
            by_queue.entry(l.queue.as_str()).or_default().push(i);
        }
        let mut out: Vec<Option<Result<(), QueueError>>> =
            (0..leases.len()).map(|_| None).collect();
        for (queue, idx) in by_queue {
            let base = match self.base(queue) {
                Ok(b) => b,
                Err(e) => {
                    let msg = e.to_string();
                    for i in idx {
                        out[i] = Some(Err(QueueError::InvalidQueueName {
                            name: queue.to_owned(),
                            reason: msg.clone(),
                        }));
                    }
                    continue;
                }
            };
            let script = &self.scripts.ack;
            let idx_ref = &idx;
            let reply = self
                .run("ack", |mut conn, repeat| {
                    let base = base.clone();
                    async move {
                        let mut inv = script.key(base);
                        for &i in idx_ref {
                            inv.arg(leases[i].job_id.as_str()).arg(leases[i].token);
                        }
                        let codes: Vec<i64> = inv.invoke_async(&mut conn).await?;
                        Ok((codes, repeat))
                    }
                })
                .await;
            match reply {
                Ok((codes, repeat)) => {
                    for (k, &i) in idx.iter().enumerate() {
                        let code = codes.get(k).copied().unwrap_or(0);
                        out[i] = Some(match code {
                            1 => Ok(()),
                            // Gone after a repeated call: our first try deleted it.
                            -1 if repeat => Ok(()),
                            _ => Err(lease_lost(&leases[i])),
                        });
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    for i in idx {
                        out[i] = Some(Err(QueueError::Backend {
                            message: msg.clone(),
                            retryable: true,
                            source: None,
                        }));
                    }
                }
            }
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(QueueError::backend_msg("ack result missing"))))
            .collect()
    }
}

#[async_trait]
impl TaskQueue for RedisQueue {
    fn capabilities(&self) -> QueueCapabilities {
        QueueCapabilities::full(self.config.max_payload_bytes)
    }

    async fn enqueue_batch(
        &self,
        queue: &str,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<Enqueued>, QueueError> {
        let base = self.base(queue)?;
        for job in &jobs {
            job.validate(self.config.max_payload_bytes)?;
        }
        let window = millis(self.config.dedupe_window).max(1);
        let mut out = Vec::with_capacity(jobs.len());
        for chunk in jobs.chunks(ENQUEUE_CHUNK) {
            // Ids are made here, once, so a retried call repeats the same ids.
            let ids: Vec<String> = chunk.iter().map(|_| new_id()).collect();
            let headers: Vec<String> = chunk
                .iter()
                .map(|j| encode_headers(&j.headers))
                .collect::<Result<_, _>>()?;
            let script = &self.scripts.enqueue;
            let (ids, headers, base) = (&ids, &headers, &base);
            let reply: Value = self
                .run("enqueue", |mut conn, repeat| async move {
                    let mut inv = script.key(base.as_str());
                    inv.arg(window)
                        .arg(chunk.len())
                        .arg(if repeat { "1" } else { "0" });
                    for (k, job) in chunk.iter().enumerate() {
                        inv.arg(ids[k].as_str())
                            .arg(job.payload.as_ref())
                            .arg(job.priority)
                            .arg(millis(job.delay))
                            .arg(job.max_attempts)
                            .arg(job.idempotency_key.as_deref().unwrap_or(""))
                            .arg(headers[k].as_str());
                    }
                    inv.invoke_async(&mut conn).await
                })
                .await?;
            for f in array(reply)?.chunks_exact(2) {
                out.push(Enqueued {
                    id: JobId(string(&f[0])?),
                    duplicate: int(&f[1])? == 1,
                });
            }
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
        let base = self.base(queue)?;
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = tokio::time::Instant::now() + wait;
        let mut pause = Duration::from_millis(5);
        loop {
            let got = self.dequeue_once(&base, max, lease).await?;
            let now = tokio::time::Instant::now();
            if !got.is_empty() || now >= deadline {
                return Ok(got);
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(self.config.max_poll_interval.max(Duration::from_millis(1)));
        }
    }

    async fn ack(&self, lease: &Lease) -> Result<(), QueueError> {
        self.ack_many(std::slice::from_ref(lease))
            .await
            .pop()
            .unwrap_or_else(|| Err(QueueError::backend_msg("ack result missing")))
    }

    async fn nack(
        &self,
        lease: &Lease,
        retry: Retry,
        reason: &str,
    ) -> Result<NackOutcome, QueueError> {
        let base = self.base(&lease.queue)?;
        let (mode, delay) = match retry {
            Retry::After(d) => ("retry", d),
            Retry::DeadLetter => ("dead", Duration::ZERO),
        };
        let script = &self.scripts.nack;
        let dead_max = self.config.dead_letter_max;
        let base = &base;
        let (code, repeat): (i64, bool) = self
            .run("nack", |mut conn, repeat| async move {
                let code: i64 = script
                    .key(base.as_str())
                    .arg(lease.job_id.as_str())
                    .arg(lease.token)
                    .arg(mode)
                    .arg(millis(delay))
                    .arg(reason)
                    .arg(dead_max)
                    .invoke_async(&mut conn)
                    .await?;
                Ok((code, repeat))
            })
            .await?;
        match code {
            1 => Ok(NackOutcome::Retrying { delay }),
            2 => Ok(NackOutcome::DeadLettered),
            // A repeat that finds the lease moved on: the first try did it. Which outcome it
            // had is unknown; report the one asked for.
            0 | -1 if repeat => Ok(match retry {
                Retry::After(delay) => NackOutcome::Retrying { delay },
                Retry::DeadLetter => NackOutcome::DeadLettered,
            }),
            _ => Err(lease_lost(lease)),
        }
    }

    async fn extend_lease(&self, lease: &Lease, lease_for: Duration) -> Result<Lease, QueueError> {
        let base = self.base(&lease.queue)?;
        let started = tokio::time::Instant::now();
        let script = &self.scripts.extend;
        let ms = millis(lease_for).max(1);
        let base = &base;
        let code: i64 = self
            .run("extend_lease", |mut conn, _| async move {
                script
                    .key(base.as_str())
                    .arg(lease.job_id.as_str())
                    .arg(lease.token)
                    .arg(ms)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        if code == 1 {
            Ok(Lease {
                expires_at: started + lease_for,
                ..lease.clone()
            })
        } else {
            Err(lease_lost(lease))
        }
    }

    async fn dead_letters(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let base = self.base(queue)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let script = &self.scripts.dead_letters;
        let base = &base;
        let reply: Value = self
            .run("dead_letters", |mut conn, _| async move {
                script
                    .key(base.as_str())
                    .arg(limit)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        let mut out = Vec::new();
        for f in array(reply)?.chunks_exact(7) {
            let dead_at_ms = string(&f[6])?.parse::<u64>().unwrap_or(0);
            out.push(DeadLetter {
                job_id: JobId(string(&f[0])?),
                payload: Bytes::from(bytes(&f[1])?),
                headers: decode_headers(&bytes(&f[2])?)?,
                priority: string(&f[3])?.parse().unwrap_or(0),
                attempts: string(&f[4])?.parse().unwrap_or(0),
                reason: string(&f[5])?,
                dead_at: UNIX_EPOCH + Duration::from_millis(dead_at_ms),
            });
        }
        Ok(out)
    }

    async fn requeue_dead(&self, queue: &str, ids: &[JobId]) -> Result<usize, QueueError> {
        let base = self.base(queue)?;
        if ids.is_empty() {
            return Ok(0);
        }
        let script = &self.scripts.requeue_dead;
        let base = &base;
        let moved: i64 = self
            .run("requeue_dead", |mut conn, _| async move {
                let mut inv = script.key(base.as_str());
                for id in ids {
                    inv.arg(id.as_str());
                }
                inv.invoke_async(&mut conn).await
            })
            .await?;
        Ok(moved.max(0) as usize)
    }

    async fn stats(&self, queue: &str) -> Result<QueueStats, QueueError> {
        let base = self.base(queue)?;
        Ok(self.stats_raw(&base).await?.0)
    }
}

fn new_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn lease_lost(lease: &Lease) -> QueueError {
    QueueError::LeaseLost {
        job_id: lease.job_id.clone(),
        token: lease.token,
    }
}

fn is_transient(e: &redis::RedisError) -> bool {
    e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_io_error()
        || !matches!(e.retry_method(), redis::RetryMethod::NoRetry)
}

fn map_err(what: &str, e: redis::RedisError) -> QueueError {
    QueueError::Backend {
        message: format!("Redis {what} failed: {e}"),
        retryable: is_transient(&e),
        source: Some(Box::new(e)),
    }
}

fn encode_headers(headers: &BTreeMap<String, String>) -> Result<String, QueueError> {
    if headers.is_empty() {
        return Ok(String::new());
    }
    serde_json::to_string(headers).map_err(|e| QueueError::InvalidJob(format!("headers: {e}")))
}

fn decode_headers(raw: &[u8]) -> Result<BTreeMap<String, String>, QueueError> {
    if raw.is_empty() {
        return Ok(BTreeMap::new());
    }
    serde_json::from_slice(raw)
        .map_err(|e| QueueError::backend_msg(format!("stored headers do not decode: {e}")))
}

fn array(v: Value) -> Result<Vec<Value>, QueueError> {
    match v {
        Value::Array(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        other => Err(QueueError::backend_msg(format!(
            "unexpected script reply: {other:?}"
        ))),
    }
}

fn bytes(v: &Value) -> Result<Vec<u8>, QueueError> {
    match v {
        Value::BulkString(b) => Ok(b.clone()),
        Value::SimpleString(s) => Ok(s.as_bytes().to_vec()),
        Value::Int(i) => Ok(i.to_string().into_bytes()),
        Value::Nil | Value::Boolean(false) => Ok(Vec::new()),
        other => Err(QueueError::backend_msg(format!(
            "unexpected field in script reply: {other:?}"
        ))),
    }
}

fn string(v: &Value) -> Result<String, QueueError> {
    String::from_utf8(bytes(v)?)
        .map_err(|e| QueueError::backend_msg(format!("non-UTF-8 field in script reply: {e}")))
}

fn int(v: &Value) -> Result<i64, QueueError> {
    match v {
        Value::Int(i) => Ok(*i),
        other => string(other)?.parse().map_err(|e| {
            QueueError::backend_msg(format!("non-integer field in script reply: {e}"))
        }),
    }
}
