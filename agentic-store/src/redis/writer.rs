//! Batching of puts: the puts that callers make at the same time go to Redis as one run of
//! the put script.
//!
//! A Lua script costs Redis several times what a plain command does (the call into Lua, the
//! `KEYS`/`ARGV` tables, and every `redis.call` inside it), and that cost, not the network,
//! is what limits a versioned put. So every [`RedisStore::put`](super::RedisStore) hands its
//! put to one task per store, which takes whatever puts are waiting (up to [`MAX_BATCH`] puts
//! or [`MAX_BATCH_BYTES`] of values) and runs them in one script call, one call at a time. A
//! lone put goes out at once; under load, the puts that gather while a call runs share the
//! next one instead of queueing behind each other. (One call at a time makes the batches
//! larger than two would: from 16 busy callers about 7 puts per call against about 4, and Redis
//! spends less per put.) Each put is still atomic on its own and gets its own result (version,
//! conflict, or error).

use std::sync::Arc;

use redis::Value;
use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot};

use super::{Shared, StoreKey, eval};
use crate::{Expect, StoreError};

/// Puts per script call, at most.
pub(super) const MAX_BATCH: usize = 64;
/// Value bytes after which a call takes no more puts (the put that crosses it still goes).
pub(super) const MAX_BATCH_BYTES: usize = 1 << 20;
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
    // While a call runs, puts gather in the queue, and the next call takes them all.
    while let Some(first) = rx.recv().await {
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
        put_batch(&shared, batch).await;
    }
}

/// Runs one script call for `batch` and answers every caller.
async fn put_batch(shared: &Shared, batch: Vec<PutRequest>) {
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
