//! Batching: the puts that callers make at the same time go to Redis as one call, and the
//! gets as one `MGET`.
//!
//! A Lua script costs Redis several times what a plain command does (the call into Lua, the
//! `KEYS`/`ARGV` tables, every argument it is passed, and every `redis.call` inside it), and
//! that cost, not the network, is what limits a versioned put. So a
//! [`RedisStore::put`](super::RedisStore) joins the puts waiting for a call (up to
//! [`MAX_BATCH`] puts or [`MAX_BATCH_BYTES`] of values), with at most [`IN_FLIGHT`] calls
//! outstanding (see [`Batcher`]). A lone put goes out at once; under load, the puts that
//! gather while calls run share the next one instead of queueing behind each other. Each put
//! is still atomic on its own and gets its own result (version, conflict, or error).
//!
//! The call is one of two kinds. A batch of unconditional puts without TTL (and watch off),
//! the common write, is a `MULTI`/`EXEC` transaction: a plain `MSET` of the values, then
//! `put_plain.lua` for the versions, so no value passes through Lua (a 256-byte argument
//! costs a script about 0.34 µs; the `MSET` writes it for a fraction of that). Any other
//! batch is one run of `put.lua`, which needs the values to decide (a compare-and-set, a
//! TTL, a change to publish). Gets are batched the same way into one `MGET`, up to
//! [`READ_IN_FLIGHT`] calls at a time.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use redis::Value;
use redis::aio::ConnectionManager;
use tokio::sync::oneshot;

use super::{Repeat, Shared, StoreKey, eval};
use crate::{Expect, StoreError};

/// Puts per script call, at most.
pub(super) const MAX_BATCH: usize = 64;
/// Value bytes after which a call takes no more puts (the put that crosses it still goes).
pub(super) const MAX_BATCH_BYTES: usize = 1 << 20;
/// Put calls outstanding at once. More than one lets Redis run a batch while the client
/// answers the last and gathers the next; fewer make bigger batches, which cost Redis and the
/// client less per put. Measured on a quiet 2-core machine, 16 busy callers, 200,000 ops
/// per figure, put and CAS against raw `SET` and `GET`+`SET`, with a batching task of its
/// own (before [`Batcher`]): two calls 0.73x and 0.66x, three 0.73x and 0.71x, four 0.71x
/// and 0.71x; with [`Batcher`], four put calls or three get calls measured the same as
/// three and two, within the 0.03 a median moves between runs. What matters more is the
/// `yield_now` before a batch is taken: without it, put fell to 0.44x.
const IN_FLIGHT: usize = 3;
/// `MGET` calls outstanding at once: a compare-and-set waits for a get before its put, so
/// gets in flight two at a time keep its pipeline fuller (measured with the figures above).
const READ_IN_FLIGHT: usize = 2;

/// One caller's put.
pub(super) struct PutRequest {
    pub(super) key: String,
    pub(super) value: Vec<u8>,
    pub(super) expect: Expect,
    pub(super) ttl_ms: u64,
    /// The script's answer for this put: a version (> 0) or a conflict code (<= 0).
    pub(super) reply: oneshot::Sender<Result<i64, StoreError>>,
}

/// Runs one call for `batch` and answers every caller.
///
/// A batch of unconditional puts without TTL (and watch off) is a transaction: a plain
/// `MSET` of the values, then `put_plain.lua` for the versions, so no value enters Lua.
/// Any other batch is one run of `put.lua`, which needs the values to decide.
async fn put_batch(shared: &Shared, batch: Vec<PutRequest>) {
    let plain = !shared.config.publish_changes
        && batch
            .iter()
            .all(|p| p.expect == Expect::Any && p.ttl_ms == 0);
    let reply: Result<Value, StoreError> = if plain {
        let mut tx = redis::pipe();
        tx.atomic().cmd("MSET");
        for put in &batch {
            tx.arg(StoreKey(&shared.base, b"v:", &put.key))
                .arg(put.value.as_slice());
        }
        tx.ignore()
            .cmd("EVAL")
            .arg(shared.scripts.put_plain.as_str())
            .arg(1 + batch.len())
            .arg(&*shared.base);
        for put in &batch {
            tx.arg(StoreKey(&shared.base, b"n:", &put.key));
        }
        let tx = &tx;
        shared
            .run("put", |mut conn: ConnectionManager| async move {
                let (reply,): (Value,) = tx.query_async(&mut conn).await?;
                Ok(reply)
            })
            .await
    } else {
        // Whether a key repeats in this call: only then does the script track what it wrote.
        let mut keys: Vec<&str> = batch.iter().map(|p| p.key.as_str()).collect();
        keys.sort_unstable();
        let repeats = if keys.windows(2).any(|w| w[0] == w[1]) {
            "1"
        } else {
            "0"
        };
        let script = &shared.scripts.put;
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash())
            .arg(1 + 2 * batch.len())
            .arg(&*shared.base);
        for put in &batch {
            cmd.arg(StoreKey(&shared.base, b"n:", &put.key))
                .arg(StoreKey(&shared.base, b"v:", &put.key));
        }
        cmd.arg(if shared.config.publish_changes {
            "1"
        } else {
            "0"
        });
        cmd.arg(repeats);
        for put in &batch {
            cmd.arg(put.value.as_slice())
                .arg(Condition(put.expect, put.ttl_ms));
        }
        let cmd = &cmd;
        // A batch with a conditional put is not sent twice when the first try may have run:
        // its own write would come back as a conflict.
        let repeat = if batch.iter().all(|p| p.expect == Expect::Any) {
            Repeat::Safe
        } else {
            Repeat::Once
        };
        shared
            .run_with("put", repeat, |mut conn: ConnectionManager| async move {
                eval(&mut conn, script, cmd).await
            })
            .await
    };
    match reply {
        Ok(Value::Array(items)) if items.len() == batch.len() => {
            for (put, item) in batch.into_iter().zip(items) {
                let answer = match item {
                    Value::Int(n) => Ok(n),
                    other => Err(super::backend(format!(
                        "Redis refused the put of {:?}: {}",
                        put.key,
                        super::string(&other).unwrap_or_else(|_| format!("{other:?}"))
                    ))),
                };
                put.reply.send(answer).ok();
            }
        }
        Ok(other) => {
            let message = format!("unexpected reply to a batch of puts: {other:?}");
            for put in batch {
                put.reply.send(Err(super::backend(message.clone()))).ok();
            }
        }
        Err(e) => {
            // One error for the whole call (connection, timeout, a server refusing scripts):
            // every put in it gets it, with the same retryability.
            for put in batch {
                put.reply.send(Err(copy_error(&e))).ok();
            }
        }
    }
}

/// A put's condition as `put.lua` reads it, two arguments: `any`, `absent` or the version,
/// then `;<ttl ms>` when the put sets a TTL; and for a compare-and-set without TTL the
/// version it writes (the expected one plus one), else an empty string. Written straight
/// into the command.
struct Condition(Expect, u64);

impl redis::ToRedisArgs for Condition {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        use std::io::Write;
        {
            let mut w = out.writer_for_next_arg();
            // Writing into the command's own buffer cannot fail.
            let _ = match self.0 {
                Expect::Any => w.write_all(b"any"),
                Expect::Absent => w.write_all(b"absent"),
                Expect::Version(v) => write!(w, "{v}"),
            };
            if self.1 > 0 {
                let _ = write!(w, ";{}", self.1);
            }
        }
        let mut w = out.writer_for_next_arg();
        if let (Expect::Version(v), 0) = (self.0, self.1)
            && let Some(next) = v.checked_add(1)
        {
            let _ = write!(w, "{next}");
        }
    }

    fn num_of_args(&self) -> usize {
        2
    }
}

/// The error of a whole call, once per caller in it (`StoreError` is not `Clone`, so the
/// copies carry its message and retryability, not its source).
fn copy_error(e: &StoreError) -> StoreError {
    let (message, retryable) = match e {
        StoreError::Backend {
            message, retryable, ..
        } => (message.clone(), *retryable),
        other => (other.to_string(), false),
    };
    StoreError::Backend {
        message,
        retryable,
        source: None,
    }
}

/// A key's version and value strings as Redis holds them (`None`: absent).
pub(super) type RawEntry = (Option<Vec<u8>>, Option<Vec<u8>>);

/// One caller's get.
pub(super) struct GetRequest {
    pub(super) key: String,
    pub(super) reply: oneshot::Sender<Result<RawEntry, StoreError>>,
}

/// Gets per `MGET`, at most.
const MAX_READ_BATCH: usize = 256;

async fn get_batch(shared: &Shared, batch: Vec<GetRequest>) {
    let mut cmd = redis::cmd("MGET");
    for get in &batch {
        cmd.arg(StoreKey(&shared.base, b"n:", &get.key))
            .arg(StoreKey(&shared.base, b"v:", &get.key));
    }
    let cmd = &cmd;
    let reply: Result<Vec<Option<Vec<u8>>>, StoreError> = shared
        .run("get", |mut conn: ConnectionManager| async move {
            cmd.query_async(&mut conn).await
        })
        .await;
    match reply {
        Ok(items) if items.len() == 2 * batch.len() => {
            let mut items = items.into_iter();
            for get in batch {
                let pair = (items.next().flatten(), items.next().flatten());
                get.reply.send(Ok(pair)).ok();
            }
        }
        Ok(items) => {
            let message = format!(
                "Redis answered {} values to an MGET of {} keys",
                items.len(),
                2 * batch.len()
            );
            for get in batch {
                get.reply.send(Err(super::backend(message.clone()))).ok();
            }
        }
        Err(e) => {
            for get in batch {
                get.reply.send(Err(copy_error(&e))).ok();
            }
        }
    }
}

/// A request that is batched: how many calls of its kind run at once, how a batch is taken
/// off the queue, and how it runs.
pub(super) trait Batched: Sized + Send + 'static {
    /// Calls of this kind running at once, at most.
    const IN_FLIGHT: usize;
    /// Takes the next batch off the front of `queue` (never empty when called).
    fn take(queue: &mut VecDeque<Self>) -> Vec<Self>;
    /// Runs one call for `batch` and answers every caller in it.
    fn run(shared: &Shared, batch: Vec<Self>) -> impl Future<Output = ()> + Send + '_;
}

impl Batched for PutRequest {
    const IN_FLIGHT: usize = IN_FLIGHT;

    fn take(queue: &mut VecDeque<Self>) -> Vec<Self> {
        let mut bytes = 0;
        let n = queue
            .iter()
            .take(MAX_BATCH)
            .take_while(|put| {
                // The put that crosses the byte limit still goes.
                let room = bytes < MAX_BATCH_BYTES;
                bytes += put.value.len();
                room
            })
            .count();
        queue.drain(..n.max(1)).collect()
    }

    fn run(shared: &Shared, batch: Vec<Self>) -> impl Future<Output = ()> + Send + '_ {
        put_batch(shared, batch)
    }
}

impl Batched for GetRequest {
    const IN_FLIGHT: usize = READ_IN_FLIGHT;

    fn take(queue: &mut VecDeque<Self>) -> Vec<Self> {
        let n = queue.len().min(MAX_READ_BATCH);
        queue.drain(..n).collect()
    }

    fn run(shared: &Shared, batch: Vec<Self>) -> impl Future<Output = ()> + Send + '_ {
        get_batch(shared, batch)
    }
}

/// Batches requests of one kind without a task of its own. A caller puts its request in
/// the queue; when a call slot is free and no call is about to take the queue, it starts
/// one. That call first lets the callers that are running submit too (`yield_now`: most of
/// the callers the last call just answered call again at once, and join this call instead
/// of waiting for the next), then takes the queue, and when it is answered goes on with
/// whatever gathered meanwhile, or gives its slot back. A request thus passes one task (the
/// call's) on its way to the connection, not a batching task and then the call's.
pub(super) struct Batcher<R> {
    shared: Arc<Shared>,
    /// The runtime the store was connected on: calls run there, whichever executor the
    /// caller is on.
    runtime: tokio::runtime::Handle,
    state: Mutex<BatchState<R>>,
}

struct BatchState<R> {
    /// Requests waiting for a call, oldest first.
    queue: VecDeque<R>,
    /// Calls running (at most `R::IN_FLIGHT`).
    in_flight: usize,
    /// A call is about to take the queue: the next request joins it instead of starting one.
    pending: bool,
}

impl<R: Batched> Batcher<R> {
    pub(super) fn new(shared: Arc<Shared>, runtime: tokio::runtime::Handle) -> Arc<Self> {
        Arc::new(Batcher {
            shared,
            runtime,
            state: Mutex::new(BatchState {
                queue: VecDeque::new(),
                in_flight: 0,
                pending: false,
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, BatchState<R>> {
        // Nothing panics while holding the lock, so a poisoned one still holds a consistent
        // state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `request`; its answer comes on the request's own channel.
    pub(super) fn submit(self: &Arc<Self>, request: R) {
        let start = {
            let mut st = self.state();
            st.queue.push_back(request);
            let start = st.in_flight < R::IN_FLIGHT && !st.pending;
            if start {
                st.in_flight += 1;
                st.pending = true;
            }
            start
        };
        if start {
            self.runtime.spawn(Arc::clone(self).drive());
        }
    }

    /// One call slot: runs batches while requests are waiting and nobody else is about to
    /// take them. Every change to the queue and the counters happens under the one lock, so a
    /// request is never left queued with no call to take it.
    async fn drive(self: Arc<Self>) {
        loop {
            tokio::task::yield_now().await;
            let batch = {
                let mut st = self.state();
                st.pending = false;
                if st.queue.is_empty() {
                    Vec::new()
                } else {
                    R::take(&mut st.queue)
                }
            };
            if !batch.is_empty() {
                R::run(&self.shared, batch).await;
            }
            let more = {
                let mut st = self.state();
                let more = !st.queue.is_empty() && !st.pending;
                if more {
                    st.pending = true;
                } else {
                    st.in_flight -= 1;
                }
                more
            };
            if !more {
                return;
            }
        }
    }
}
