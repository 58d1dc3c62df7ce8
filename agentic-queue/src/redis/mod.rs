//! The Redis backend: every state change is atomic, one Lua script or (for an enqueue that
//! needs no decision) one `MULTI`/`EXEC` transaction, so a crash between two commands
//! cannot lose or duplicate a job.
//!
//! # Key layout (one queue)
//!
//! All keys of a queue share the hash tag `{<queue>}`, so the layout fits Redis Cluster (one
//! slot per queue); the client itself is single-node for now (see `docs/backends/redis.md`):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `<prefix>:{q}:ready:<0..9>` | list | entries ready to deliver, one list per priority (FIFO): `<id>`, or `<id>:<attempts>` once a delivery ended without an ack |
//! | `<prefix>:{q}:delayed` | sorted set | entries by the server time (ms) they become due (delays and retry backoffs) |
//! | `<prefix>:{q}:leased` | sorted set | `<id>:<token>` by lease expiry (ms): the per-job leases; plus a permanent sentinel at `+inf` that keeps the set in skiplist encoding (see `common.lua`) |
//! | `<prefix>:{q}:dead` | list | dead-lettered ids, oldest first (trimmed to `dead_letter_max`) |
//! | `<prefix>:{q}:job:<id>` | string | the job, written once: `<priority>,<max_attempts>,<headers length>;`, the headers (JSON) and the payload |
//! | `<prefix>:{q}:state` | hash | per job whose delivery ended without an ack: `<attempts>,<dead_at>;<last error>` (absent while there is none) |
//! | `<prefix>:{q}:seq` | counter | fencing tokens: every delivery of any job of the queue takes the next one |
//! | `<prefix>:{q}:idem:<key>` | string | the job id for an idempotency key, expiring after `dedupe_window` |
//!
//! # Scripts
//!
//! | script | job |
//! |---|---|
//! | `enqueue` | a batch with idempotency keys or delays, or a repeated call: dedupe by idempotency key, write the jobs, push to ready or delayed. A batch of jobs with neither is a transaction instead: `MULTI`, one `MSET` of the jobs, one `RPUSH` per priority, `EXEC` (no decision to make, and Lua would cost Redis more than the writes) |
//! | `dequeue` | promote due delays, reclaim expired leases (redeliver or dead-letter), pop by priority, take one fencing token for the call's deliveries from `seq`, record per-job leases |
//! | `ack` | a batch of (id, token): the lease `<id>:<token>` must be in `leased` and unexpired, then the job is deleted |
//! | `extend` | checked against the token, moves the lease's expiry |
//! | `nack` | checked against the token: count the attempt, retry after a delay, or dead-letter with the reason |
//! | `dead_letters`, `requeue_dead`, `stats` | inspection and repair |
//!
//! # Fencing and cost per job
//!
//! A delivery's token comes from the queue's `seq` counter: one `INCR` per dequeue call,
//! shared by that call's deliveries (a job is delivered at most once per call), so a job's
//! tokens grow with every delivery and are never reused, and nothing is written to the job
//! on delivery. The lease is the member `<id>:<token>` of `leased`: a lease is
//! current exactly when that member is there with an expiry in the future. The job itself
//! is one string the client encodes and decodes, so whatever the batch size an enqueue is
//! one `MSET` (plus an `RPUSH` per priority; payloads enter Lua only when the script must
//! decide), a dequeue one `LPOP`, one `INCR` and one `ZADD` in its script and then a plain
//! `MGET` of the jobs (payloads never enter Lua), and an ack one `ZMSCORE`, one `ZREM`, one
//! `DEL` and one `EXISTS`. The
//! attempt count lives in the ready entry and in `state`, which is written only when a
//! delivery ends without an ack (nack or expired lease).
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
/// Payload and header bytes per enqueue call, after which a call takes no more jobs (the job
/// that crosses it still goes): 500 jobs of the default 8 MiB would be 4 GiB in one
/// command, past Redis's 1 GiB `client-query-buffer-limit`, which drops the connection.
const ENQUEUE_CHUNK_BYTES: usize = 16 * 1024 * 1024;
/// Leases per ack script call, for the same reason.
const ACK_CHUNK: usize = 1000;
/// Most jobs one dequeue returns (a larger `max` gets this many).
const DEQUEUE_MAX: usize = 1000;
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
            return Err(invalid_name(queue));
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
        let mut cmd = evalsha(script, base);
        cmd.arg(max.min(DEQUEUE_MAX))
            .arg(lease_ms)
            .arg(self.config.dead_letter_max)
            .arg(PROMOTE_LIMIT);
        let cmd = &cmd;
        let reply: Value = self
            .run("dequeue", |mut conn, _| async move {
                eval(&mut conn, script, cmd).await
            })
            .await?;
        let mut items = array(reply)?.into_iter();
        let token = match items.next() {
            Some(v) => int(&v)?,
            None => return Ok(Vec::new()),
        };
        let mut heads = Vec::with_capacity(items.len());
        while let Some(entry) = items.next() {
            let entry = into_string(entry)?;
            // `<id>` for a first delivery; `<id>:<attempts>` (then the last error) after one
            // that ended without an ack.
            let (id, attempt, last_error) = match entry.split_once(':') {
                None => (entry, 1, None),
                Some((id, attempts)) => {
                    let attempts: u32 = attempts.parse().map_err(|_| {
                        QueueError::backend_msg(format!("malformed ready entry {entry:?}"))
                    })?;
                    let last_error = match items.next() {
                        None | Some(Value::Nil) => None,
                        Some(v) => Some(into_string(v)?).filter(|e| !e.is_empty()),
                    };
                    (id.to_owned(), attempts.saturating_add(1), last_error)
                }
            };
            heads.push((id, attempt, last_error));
        }
        if heads.is_empty() {
            return Ok(Vec::new());
        }
        // The jobs are leased to us now: read them with a plain MGET, outside Lua.
        let mut mget = redis::cmd("MGET");
        for (id, _, _) in &heads {
            mget.arg(JobKey(base, id));
        }
        let mget = &mget;
        let jobs: Vec<Option<Vec<u8>>> = self
            .run("dequeue (read jobs)", |mut conn, _| async move {
                mget.query_async(&mut conn).await
            })
            .await?;
        let queue = self.queue_name(base);
        let expires_at = crate::later(started, lease);
        let mut out = Vec::with_capacity(heads.len());
        for ((id, attempt, last_error), job) in heads.into_iter().zip(jobs) {
            // Missing: not expected (the job is leased to us); its lease expires unused.
            let Some(job) = job else { continue };
            let lease = Lease {
                queue: queue.clone(),
                job_id: JobId(id),
                token: token as u64,
                expires_at,
            };
            let job = match decode_job(job) {
                Ok(job) => job,
                Err(e) => {
                    // A record that cannot be read (written behind our back, or by an
                    // incompatible release) goes to the dead letters with the reason, its raw
                    // bytes kept; the rest of the batch is delivered.
                    let reason = format!("unreadable job record; {e}");
                    if let Err(e) = self.nack(&lease, Retry::DeadLetter, &reason).await {
                        tracing::warn!(queue = %queue, job = %lease.job_id, error = %e, "could not dead-letter an unreadable job; its lease will expire");
                    }
                    continue;
                }
            };
            out.push(Delivery {
                lease,
                payload: job.payload,
                headers: job.headers,
                priority: job.priority,
                attempt,
                max_attempts: job.max_attempts,
                last_error,
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
        for chunk in enqueue_chunks(&jobs) {
            // Ids are made here, once, so a retried call repeats the same ids.
            let ids: Vec<String> = chunk.iter().map(|_| new_id()).collect();
            let encoded: Vec<Vec<u8>> = chunk.iter().map(encode_job).collect::<Result<_, _>>()?;
            let script = &self.scripts.enqueue;
            // Jobs that need no decision (no idempotency key, no delay) are written by a
            // transaction of plain commands (see `enqueue_plain`); the script takes the rest,
            // and every repeat, since only it can tell a job that is already there.
            let plain = chunk
                .iter()
                .all(|j| j.idempotency_key.is_none() && j.delay.is_zero());
            let (ids, encoded, base) = (&ids, &encoded, &base);
            let reply: Value = self
                .run("enqueue", |mut conn, repeat| async move {
                    if plain && !repeat {
                        return enqueue_plain(&mut conn, base, chunk, ids, encoded).await;
                    }
                    let mut cmd = evalsha(script, base);
                    cmd.arg(window)
                        .arg(chunk.len())
                        .arg(if repeat { "1" } else { "0" });
                    for (k, job) in chunk.iter().enumerate() {
                        cmd.arg(ids[k].as_str())
                            .arg(job.priority)
                            .arg(millis(job.delay))
                            .arg(job.idempotency_key.as_deref().unwrap_or(""))
                            .arg(encoded[k].as_slice());
                    }
                    eval(&mut conn, script, &cmd).await
                })
                .await?;
            let done = out.len();
            out.extend(ids.iter().map(|id| Enqueued {
                id: JobId(id.clone()),
                duplicate: false,
            }));
            // The reply names only the duplicates: (index in the chunk, the existing id).
            for f in array(reply)?.chunks_exact(2) {
                let k = usize::try_from(int(&f[0])?).unwrap_or(usize::MAX);
                let slot = out
                    .get_mut(done + k)
                    .filter(|_| k < chunk.len())
                    .ok_or_else(|| {
                        QueueError::backend_msg("enqueue script named a job out of range")
                    })?;
                *slot = Enqueued {
                    id: JobId(string(&f[1])?),
                    duplicate: true,
                };
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
        let deadline = crate::later(tokio::time::Instant::now(), wait);
        let max_pause = self.config.max_poll_interval.max(Duration::from_millis(1));
        let mut pause = Duration::from_millis(5).min(max_pause);
        loop {
            let got = self.dequeue_once(&base, max, lease).await?;
            let now = tokio::time::Instant::now();
            if !got.is_empty() || now >= deadline {
                return Ok(got);
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(max_pause);
        }
    }

    async fn ack(&self, lease: &Lease) -> Result<(), QueueError> {
        self.ack_batch(std::slice::from_ref(lease))
            .await?
            .pop()
            .unwrap_or_else(|| Err(QueueError::backend_msg("ack result missing")))
    }

    /// One script call per queue (per 1,000 leases): a `ZMSCORE` checks every lease, then
    /// one `ZREM` and one `DEL` finish all the current ones. A call that still fails after
    /// the retries fails the batch (`Err`); leases of queues done before it were acked.
    async fn ack_batch(&self, leases: &[Lease]) -> Result<Vec<Result<(), QueueError>>, QueueError> {
        let mut by_queue: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, l) in leases.iter().enumerate() {
            by_queue.entry(l.queue.as_str()).or_default().push(i);
        }
        let mut out: Vec<Option<Result<(), QueueError>>> =
            (0..leases.len()).map(|_| None).collect();
        for (queue, idx) in by_queue {
            let Ok(base) = self.base(queue) else {
                for i in idx {
                    out[i] = Some(Err(invalid_name(queue)));
                }
                continue;
            };
            let script = &self.scripts.ack;
            // A lease listed twice is acked once: the later copies are refused here, so the
            // script needs no table of the leases it has seen.
            let mut seen = std::collections::HashSet::with_capacity(idx.len());
            let idx: Vec<usize> = idx
                .into_iter()
                .filter(|&i| {
                    let first = seen.insert((leases[i].job_id.as_str(), leases[i].token));
                    if !first {
                        out[i] = Some(Err(lease_lost(&leases[i])));
                    }
                    first
                })
                .collect();
            for chunk in idx.chunks(ACK_CHUNK) {
                let mut cmd = evalsha(script, &base);
                cmd.arg(chunk.len());
                for &i in chunk {
                    cmd.arg(LeaseMember(leases[i].job_id.as_str(), leases[i].token));
                }
                for &i in chunk {
                    cmd.arg(JobKey(&base, leases[i].job_id.as_str()));
                }
                let cmd = &cmd;
                let (codes, repeat) = self
                    .run("ack", |mut conn, repeat| async move {
                        let codes: Vec<i64> = eval(&mut conn, script, cmd).await?;
                        Ok((codes, repeat))
                    })
                    .await?;
                for (k, &i) in chunk.iter().enumerate() {
                    out[i] = Some(match codes.get(k).copied().unwrap_or(0) {
                        1 => Ok(()),
                        // Gone after a repeated call: our first try deleted it.
                        -1 if repeat => Ok(()),
                        _ => Err(lease_lost(&leases[i])),
                    });
                }
            }
        }
        Ok(out
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(QueueError::backend_msg("ack result missing"))))
            .collect())
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
        let mut cmd = evalsha(script, &base);
        cmd.arg(lease.job_id.as_str())
            .arg(lease.token)
            .arg(mode)
            .arg(millis(delay))
            .arg(reason)
            .arg(self.config.dead_letter_max);
        let cmd = &cmd;
        let (code, repeat): (i64, bool) = self
            .run("nack", |mut conn, repeat| async move {
                let code: i64 = eval(&mut conn, script, cmd).await?;
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
        let mut cmd = evalsha(script, &base);
        cmd.arg(lease.job_id.as_str())
            .arg(lease.token)
            .arg(millis(lease_for).max(1));
        let cmd = &cmd;
        let code: i64 = self
            .run("extend_lease", |mut conn, _| async move {
                eval(&mut conn, script, cmd).await
            })
            .await?;
        if code == 1 {
            Ok(Lease {
                expires_at: crate::later(started, lease_for),
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
        for f in array(reply)?.chunks_exact(5) {
            let dead_at_ms = string(&f[4])?.parse::<u64>().unwrap_or(0);
            let raw = bytes(&f[1])?;
            // An unreadable record is listed all the same, its raw bytes as the payload.
            let (payload, headers, priority) = match decode_job(raw.clone()) {
                Ok(job) => (job.payload, job.headers, job.priority),
                Err(_) => (Bytes::from(raw), BTreeMap::new(), 0),
            };
            out.push(DeadLetter {
                job_id: JobId(string(&f[0])?),
                payload,
                headers,
                priority,
                attempts: string(&f[2])?.parse().unwrap_or(0),
                reason: string(&f[3])?,
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

/// Enqueues jobs without idempotency key or delay as one `MULTI`/`EXEC` transaction: one
/// `MSET` of the jobs and one `RPUSH` per priority, in the order given. It is atomic like a
/// script (a crash or a lost connection applies all of it or none), but the jobs never pass
/// through Lua, which for these jobs would decide nothing and cost Redis more than the
/// writes themselves (it interns every argument and copies every job in and out again).
/// Replies like the script does when no job was a duplicate: an empty array.
async fn enqueue_plain(
    conn: &mut ConnectionManager,
    base: &str,
    jobs: &[NewJob],
    ids: &[String],
    encoded: &[Vec<u8>],
) -> redis::RedisResult<Value> {
    let mut tx = redis::pipe();
    tx.atomic();
    tx.cmd("MSET");
    for (id, job) in ids.iter().zip(encoded) {
        tx.arg(JobKey(base, id)).arg(job.as_slice());
    }
    tx.ignore();
    let mut priorities: Vec<u8> = jobs.iter().map(|j| j.priority).collect();
    priorities.sort_unstable();
    priorities.dedup();
    for p in priorities {
        tx.cmd("RPUSH").arg(format!("{base}ready:{p}"));
        for (id, job) in ids.iter().zip(jobs) {
            if job.priority == p {
                tx.arg(id.as_str());
            }
        }
        tx.ignore();
    }
    tx.query_async::<()>(conn).await?;
    Ok(Value::Array(Vec::new()))
}

/// `EVALSHA <script> 1 <base>`; add the arguments, then run it with [`eval`]. Built
/// directly as one command buffer rather than through `redis::ScriptInvocation`, which
/// holds every argument in a vector of its own and copies them all again per call.
fn evalsha(script: &redis::Script, base: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(1).arg(base);
    cmd
}

/// Runs an [`evalsha`] command; when the server does not know the script (restarted,
/// `SCRIPT FLUSH`), loads it and runs the command again.
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

/// The `leased` member of a delivery, `<id>:<token>`, written straight into the command.
struct LeaseMember<'a>(&'a str, u64);

impl redis::ToRedisArgs for LeaseMember<'_> {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        use std::io::Write;
        let mut w = out.writer_for_next_arg();
        // Writing into the command's own buffer cannot fail.
        let _ = write!(w, "{}:{}", self.0, self.1);
    }
}

/// A job's key, `<base>job:<id>`, written straight into the command.
struct JobKey<'a>(&'a str, &'a str);

impl redis::ToRedisArgs for JobKey<'_> {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        use std::io::Write;
        let mut w = out.writer_for_next_arg();
        let _ = write!(w, "{}job:{}", self.0, self.1);
    }
}

fn invalid_name(queue: &str) -> QueueError {
    QueueError::InvalidQueueName {
        name: queue.to_owned(),
        reason:
            "must be non-empty and contain no '{' or '}' (they delimit the Redis Cluster hash tag)"
                .to_owned(),
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

/// A job as stored: `<priority>,<max_attempts>,<headers length>;`, the headers (JSON,
/// empty when there are none), then the payload.
fn encode_job(job: &NewJob) -> Result<Vec<u8>, QueueError> {
    let headers = encode_headers(&job.headers)?;
    let head = format!("{},{},{};", job.priority, job.max_attempts, headers.len());
    let mut out = Vec::with_capacity(head.len() + headers.len() + job.payload.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(headers.as_bytes());
    out.extend_from_slice(&job.payload);
    Ok(out)
}

/// What [`decode_job`] reads back.
struct StoredJob {
    priority: u8,
    max_attempts: u32,
    headers: BTreeMap<String, String>,
    payload: Bytes,
}

/// `jobs` in calls of at most [`ENQUEUE_CHUNK`] jobs and about [`ENQUEUE_CHUNK_BYTES`] bytes.
fn enqueue_chunks(jobs: &[NewJob]) -> impl Iterator<Item = &[NewJob]> {
    let mut rest = jobs;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0usize;
        let n = rest
            .iter()
            .take(ENQUEUE_CHUNK)
            .take_while(|job| {
                let room = bytes < ENQUEUE_CHUNK_BYTES;
                bytes = bytes.saturating_add(
                    job.payload.len()
                        + job
                            .headers
                            .iter()
                            .map(|(k, v)| k.len() + v.len())
                            .sum::<usize>(),
                );
                room
            })
            .count()
            .max(1);
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        Some(chunk)
    })
}

fn decode_job(raw: Vec<u8>) -> Result<StoredJob, QueueError> {
    let bad = || QueueError::backend_msg("stored job has no valid header");
    let end = raw
        .iter()
        .take(64)
        .position(|&b| b == b';')
        .ok_or_else(bad)?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad())?;
    let mut fields = head.split(',').map(|f| f.parse::<u64>().map_err(|_| bad()));
    let (Some(priority), Some(max_attempts), Some(headers_len), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(bad());
    };
    let headers_end = (end + 1)
        .checked_add(usize::try_from(headers_len?).map_err(|_| bad())?)
        .filter(|&e| e <= raw.len())
        .ok_or_else(bad)?;
    let headers = decode_headers(&raw[end + 1..headers_end])?;
    Ok(StoredJob {
        priority: u8::try_from(priority?).map_err(|_| bad())?,
        max_attempts: u32::try_from(max_attempts?).map_err(|_| bad())?,
        headers,
        payload: Bytes::from(raw).slice(headers_end..),
    })
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

fn into_bytes(v: Value) -> Result<Vec<u8>, QueueError> {
    match v {
        Value::BulkString(b) => Ok(b),
        other => bytes(&other),
    }
}

fn into_string(v: Value) -> Result<String, QueueError> {
    String::from_utf8(into_bytes(v)?)
        .map_err(|e| QueueError::backend_msg(format!("non-UTF-8 field in script reply: {e}")))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enqueue_calls_are_bounded_in_jobs_and_bytes() {
        let sizes = |jobs: &[NewJob]| {
            enqueue_chunks(jobs)
                .map(<[NewJob]>::len)
                .collect::<Vec<_>>()
        };
        let small: Vec<NewJob> = (0..1200).map(|_| NewJob::new("x")).collect();
        assert_eq!(sizes(&small), [500, 500, 200]);
        // 10 MiB each: the second job crosses 16 MiB and still goes; the third waits.
        let big: Vec<NewJob> = (0..3).map(|_| NewJob::new(vec![0u8; 10 << 20])).collect();
        assert_eq!(sizes(&big), [2, 1]);
        // A job larger than the limit goes alone.
        let huge = vec![NewJob::new(vec![0u8; 20 << 20]), NewJob::new("y")];
        assert_eq!(sizes(&huge), [1, 1]);
        assert_eq!(sizes(&[]), Vec::<usize>::new());
    }
}
