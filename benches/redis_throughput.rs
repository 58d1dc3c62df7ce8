//! Throughput runner: `RedisQueue` and `RedisStore` beside the raw `redis` client doing the
//! minimal equivalent work, on the same server in the same run, printed with the ratio.
//!
//! ```sh
//! AGENTIC_REDIS_URL=redis://127.0.0.1:6379 cargo bench -p agentic-benches --bench redis_throughput
//! ```
//!
//! Queue: 256-byte payloads, batches of 100, one producer and `CONSUMERS` consumers running
//! at once; a job counts when it is acked. Raw: pipelined `LPUSH`, `LMOVE` to a processing
//! list, `LREM` from it (the minimal reliable-queue pattern). Store: `OPS` operations from
//! `CLIENTS` concurrent tasks for get, put and compare-and-set, against raw `GET`/`SET`.
//! `AGENTIC_BENCH_JOBS` overrides the job count.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agentic_core::queue::{NewJob, RedisQueue, RedisQueueConfig, TaskQueue};
use agentic_core::store::{Expect, PutOptions, RedisStore, RedisStoreConfig, StateStore};

const BATCH: usize = 100;
const CONSUMERS: usize = 4;
const PAYLOAD: usize = 256;
const CLIENTS: usize = 16;
const OPS: usize = 40_000;

fn main() {
    // `cargo bench` passes `--bench`; a filter argument could follow. Neither matters here.
    let Ok(url) = std::env::var("AGENTIC_REDIS_URL") else {
        println!("SKIP redis throughput: AGENTIC_REDIS_URL is not set");
        return;
    };
    let jobs: usize = std::env::var("AGENTIC_BENCH_JOBS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let prefix = format!("agentic-bench-{:x}", fastrand::u64(..));
        // Warm up both paths once (connections, script cache).
        queue_ours(&url, &prefix, 2_000).await;
        queue_raw(&url, &prefix, 2_000).await;
        let ours = queue_ours(&url, &prefix, jobs).await;
        let raw = queue_raw(&url, &prefix, jobs).await;
        println!("redis queue, {jobs} jobs, {PAYLOAD} B payloads, batches of {BATCH}, {CONSUMERS} consumers:");
        println!("  RedisQueue enqueue+dequeue+ack : {ours:>9.0} jobs/s");
        println!("  raw LPUSH + LMOVE + LREM       : {raw:>9.0} jobs/s");
        println!("  ratio                          : {:.2}x (target >= 0.50x)", ours / raw);

        let store = RedisStore::connect_with(RedisStoreConfig::new(&url).key_prefix(&prefix).namespace("bench"))
            .await
            .unwrap();
        let store = Arc::new(store);
        let client = redis::Client::open(url.as_str()).unwrap();
        let raw_conn = client.get_multiplexed_async_connection().await.unwrap();
        let value = vec![7u8; PAYLOAD];
        for i in 0..CLIENTS * 8 {
            store.put(&format!("k{i}"), value.clone(), PutOptions::new()).await.unwrap();
        }
        let st = Arc::clone(&store);
        let get = rate(move |i| {
            let s = Arc::clone(&st);
            async move {
                s.get(&format!("k{}", i % (CLIENTS * 8))).await.unwrap();
            }
        })
        .await;
        let (st, val) = (Arc::clone(&store), value.clone());
        let put = rate(move |i| {
            let (s, v) = (Arc::clone(&st), val.clone());
            async move {
                s.put(&format!("k{}", i % (CLIENTS * 8)), v, PutOptions::new()).await.unwrap();
            }
        })
        .await;
        // Compare-and-set on a key per client, so every CAS succeeds (a conflict is not work).
        let (st, val) = (Arc::clone(&store), value.clone());
        let cas = rate(move |i| {
            let (s, v) = (Arc::clone(&st), val.clone());
            async move {
                let key = format!("cas{}", i % CLIENTS);
                loop {
                    let expect = match s.get(&key).await.unwrap() {
                        Some(cur) => Expect::Version(cur.version),
                        None => Expect::Absent,
                    };
                    match s.put(&key, v.clone(), PutOptions::new().expect(expect)).await {
                        Ok(_) => break,
                        Err(e) if e.is_conflict() => continue,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        })
        .await;
        let (rc, pf) = (raw_conn.clone(), prefix.clone());
        let raw_get = rate(move |i| {
            let (mut c, p) = (rc.clone(), pf.clone());
            async move {
                let _: Option<Vec<u8>> = redis::cmd("GET").arg(format!("{p}:raw:k{}", i % (CLIENTS * 8))).query_async(&mut c).await.unwrap();
            }
        })
        .await;
        let (rc, pf, val) = (raw_conn.clone(), prefix.clone(), value.clone());
        let raw_set = rate(move |i| {
            let (mut c, p, v) = (rc.clone(), pf.clone(), val.clone());
            async move {
                let _: () = redis::cmd("SET").arg(format!("{p}:raw:k{}", i % (CLIENTS * 8))).arg(v).query_async(&mut c).await.unwrap();
            }
        })
        .await;
        println!("redis store, {OPS} ops from {CLIENTS} concurrent clients, {PAYLOAD} B values:");
        println!("  RedisStore get : {get:>9.0} ops/s   raw GET {raw_get:>9.0} ops/s   ratio {:.2}x (target >= 0.70x)", get / raw_get);
        println!("  RedisStore put : {put:>9.0} ops/s   raw SET {raw_set:>9.0} ops/s   ratio {:.2}x (target >= 0.70x)", put / raw_set);
        println!("  RedisStore CAS (get + conditional put): {cas:>9.0} ops/s   vs raw GET+SET {:>9.0} ops/s   ratio {:.2}x", 1.0 / (1.0 / raw_get + 1.0 / raw_set), cas * (1.0 / raw_get + 1.0 / raw_set));

        // Leave nothing behind.
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut c).await.unwrap();
        for chunk in keys.chunks(500) {
            let _: i64 = redis::cmd("DEL").arg(chunk).query_async(&mut c).await.unwrap();
        }
    });
}

/// Operations per second of `op(i)` for `OPS` operations from `CLIENTS` concurrent tasks.
async fn rate<F, Fut>(op: F) -> f64
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (op, next) = (Arc::clone(&op), Arc::clone(&next));
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= OPS {
                        break;
                    }
                    op(i).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    OPS as f64 / start.elapsed().as_secs_f64()
}

async fn queue_ours(url: &str, prefix: &str, jobs: usize) -> f64 {
    let queue_name = format!("ours-{jobs}");
    let queue = Arc::new(
        RedisQueue::connect_with(RedisQueueConfig::new(url).key_prefix(prefix))
            .await
            .unwrap(),
    );
    let payload = vec![b'x'; PAYLOAD];
    let done = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let producer = {
        let (queue, name) = (Arc::clone(&queue), queue_name.clone());
        tokio::spawn(async move {
            for _ in 0..jobs / BATCH {
                let batch = (0..BATCH).map(|_| NewJob::new(payload.clone())).collect();
                queue.enqueue_batch(&name, batch).await.unwrap();
            }
        })
    };
    let consumers: Vec<_> = (0..CONSUMERS)
        .map(|_| {
            let (queue, name, done) = (Arc::clone(&queue), queue_name.clone(), Arc::clone(&done));
            tokio::spawn(async move {
                while done.load(Ordering::Relaxed) < jobs / BATCH * BATCH {
                    let got = queue
                        .dequeue(
                            &name,
                            BATCH,
                            Duration::from_secs(60),
                            Duration::from_millis(50),
                        )
                        .await
                        .unwrap();
                    let leases: Vec<_> = got.iter().map(|d| d.lease.clone()).collect();
                    for r in queue.ack_many(&leases).await {
                        r.unwrap();
                    }
                    done.fetch_add(got.len(), Ordering::Relaxed);
                }
            })
        })
        .collect();
    producer.await.unwrap();
    for c in consumers {
        c.await.unwrap();
    }
    (jobs / BATCH * BATCH) as f64 / start.elapsed().as_secs_f64()
}

async fn queue_raw(url: &str, prefix: &str, jobs: usize) -> f64 {
    let client = redis::Client::open(url).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    let (list, processing) = (
        format!("{prefix}:raw:{jobs}:q"),
        format!("{prefix}:raw:{jobs}:p"),
    );
    let payload = vec![b'x'; PAYLOAD];
    let done = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let producer = {
        let (mut c, list) = (conn.clone(), list.clone());
        tokio::spawn(async move {
            for _ in 0..jobs / BATCH {
                let mut pipe = redis::pipe();
                for _ in 0..BATCH {
                    pipe.cmd("LPUSH").arg(&list).arg(&payload).ignore();
                }
                let _: () = pipe.query_async(&mut c).await.unwrap();
            }
        })
    };
    let consumers: Vec<_> = (0..CONSUMERS)
        .map(|_| {
            let (mut c, list, processing, done) = (
                conn.clone(),
                list.clone(),
                processing.clone(),
                Arc::clone(&done),
            );
            tokio::spawn(async move {
                while done.load(Ordering::Relaxed) < jobs / BATCH * BATCH {
                    let mut pipe = redis::pipe();
                    for _ in 0..BATCH {
                        pipe.cmd("LMOVE")
                            .arg(&list)
                            .arg(&processing)
                            .arg("RIGHT")
                            .arg("LEFT");
                    }
                    let got: Vec<Option<Vec<u8>>> = pipe.query_async(&mut c).await.unwrap();
                    let got: Vec<Vec<u8>> = got.into_iter().flatten().collect();
                    if got.is_empty() {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                    let mut pipe = redis::pipe();
                    for item in &got {
                        pipe.cmd("LREM").arg(&processing).arg(1).arg(item).ignore();
                    }
                    let _: () = pipe.query_async(&mut c).await.unwrap();
                    done.fetch_add(got.len(), Ordering::Relaxed);
                }
            })
        })
        .collect();
    producer.await.unwrap();
    for c in consumers {
        c.await.unwrap();
    }
    (jobs / BATCH * BATCH) as f64 / start.elapsed().as_secs_f64()
}
