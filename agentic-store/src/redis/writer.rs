//! Batching of puts: the puts that callers make at the same time go to Redis as one run of
//! the put script.
//!
//! A Lua script costs Redis several times what a plain command does (the call into Lua, the
//! `KEYS`/`ARGV` tables, and every `redis.call` inside it), and that cost, not the network,
//! is what limits a versioned put. So every [`RedisStore::put`](super::RedisStore) hands its
//! put to one task per store, which takes whatever puts are waiting (up to [`MAX_BATCH`] puts
//! or [`MAX_BATCH_BYTES`] of values) and runs them in one script call, with at most
//! [`IN_FLIGHT`] calls outstanding. A lone put goes out at once; under load, puts share calls
//! instead of queueing behind each other. Each put is still atomic on its own and gets its own
//! result (version, conflict, or error).

use std::sync::Arc;

use redis::Value;
use redis::aio::ConnectionManager;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::{KvKey, Shared, eval};
use crate::{Expect, StoreError};

/// Puts per script call, at most.
pub(super) const MAX_BATCH: usize = 64;
/// Value bytes per script call, at most (a single larger value still goes alone).
pub(super) const MAX_BATCH_BYTES: usize = 1 << 20;
/// Script calls outstanding at once. One: while it runs, the next batch gathers, which under
/// load makes batches larger (measured: about 7 puts per call from 16 busy callers, against
/// about 4 with two calls in flight) and Redis spends less per put.
pub(super) const IN_FLIGHT: usize = 1;
/// Puts waiting for a call, at most; callers wait for room beyond that.
const QUEUE: usize = 4096;

/// One caller's put.
pub(super) struct PutRequest {
    pub(super) key: String,
    pub(super) value: Vec<u8>,
    pub(super) expect: Expect,
    pub(super) ttl_ms: u64,
    /// The script's answer for this put: a version (> 0) or a conflict code (<= 0).
    pub(super) reply: oneshot::Sender<Result<i64, StoreError>>,
}

/// Starts the batching task for a store; it ends when every sender is dropped.
pub(super) fn start(shared: Arc<Shared>) -> mpsc::Sender<PutRequest> {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(run(shared, rx));
    tx
}

async fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<PutRequest>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        // Wait for a free slot first: while every slot is busy, puts gather in the queue
        // and the next call takes them all.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut bytes = first.value.len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(next) => {
                    bytes += next.value.len();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            put_batch(&shared, batch).await;
            drop(slot);
        });
    }
}

/// Runs one script call for `batch` and answers every caller.
async fn put_batch(shared: &Shared, batch: Vec<PutRequest>) {
    let script = &shared.scripts.put;
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash())
        .arg(1 + batch.len())
        .arg(&*shared.base);
    for put in &batch {
        cmd.arg(KvKey(&shared.base, &put.key));
    }
    cmd.arg(if shared.config.publish_changes {
        "1"
    } else {
        "0"
    });
    for put in &batch {
        cmd.arg(put.key.as_str()).arg(put.value.as_slice());
        match put.expect {
            Expect::Any => cmd.arg("any"),
            Expect::Absent => cmd.arg("absent"),
            Expect::Version(v) => cmd.arg(v),
        };
        cmd.arg(put.ttl_ms);
    }
    let cmd = &cmd;
    let reply: Result<Value, StoreError> = shared
        .run("put", |mut conn: ConnectionManager| async move {
            eval(&mut conn, script, cmd).await
        })
        .await;
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
            let (message, retryable) = match &e {
                StoreError::Backend {
                    message, retryable, ..
                } => (message.clone(), *retryable),
                other => (other.to_string(), false),
            };
            for put in batch {
                put.reply
                    .send(Err(StoreError::Backend {
                        message: message.clone(),
                        retryable,
                        source: None,
                    }))
                    .ok();
            }
        }
    }
}
