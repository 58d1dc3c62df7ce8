//! Throughput runner: `RedisQueue` and `RedisStore` beside the raw `redis` client doing the
//! minimal equivalent work, on the same server in the same run, printed with the ratio.
//!
//! ```sh
//! AGENTIC_REDIS_URL=redis://127.0.0.1:6379 cargo bench -p agentic-benches --bench redis_throughput
//! ```
//!
//! Queue: 256-byte payloads, batches of 100, one producer and `CONSUMERS` consumers running
//! at once; a job counts when it is acked. Raw: pipelined `LPUSH`, `LMOVE` to a processing
//! list, `LREM` from it (the minimal reliable-queue pattern). Store: 40,000 operations from
//! `CLIENTS` concurrent tasks for get, put and compare-and-set, against raw `GET`/`SET`.
//! `AGENTIC_BENCH_JOBS` overrides the job count (default 100,000), `AGENTIC_BENCH_OPS` the
//! store operations per measurement (default 40,000; more give steadier figures); `AGENTIC_BENCH_ROUNDS`
//! the number of rounds (default 3). Each round runs ours and raw back to back (queue, then
//! get, put and CAS beside GET and SET, and a raw `GET` then `SET` per client as a check of
//! the CAS baseline), so a round's ratio compares the two under the same
//! neighbours' load on a shared machine; printed are each round's figures, and the median
//! of the per-round ratios, which a single noisy round cannot move. `AGENTIC_BENCH_PART`
//! `queue` or `store` runs only that half, `queue-ours` or `queue-raw` only one side of the
//! queue (for profiling).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use agentic_core::queue::{NewJob, RedisQueue, RedisQueueConfig, TaskQueue};
use agentic_core::store::{Expect, PutOptions, RedisStore, RedisStoreConfig, StateStore};

const BATCH: usize = 100;
const CONSUMERS: usize = 4;
const PAYLOAD: usize = 256;
const CLIENTS: usize = 16;
/// Store operations per measurement, unless `AGENTIC_BENCH_OPS` says otherwise.
const DEFAULT_OPS: usize = 40_000;
static OPS_SETTING: OnceLock<usize> = OnceLock::new();

/// Store operations per measurement.
fn ops() -> usize {
    *OPS_SETTING.get_or_init(|| {
        std::env::var("AGENTIC_BENCH_OPS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(DEFAULT_OPS)
            .max(1)
    })
}

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
    let rounds: usize = std::env::var("AGENTIC_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
        .max(1);
    let part = std::env::var("AGENTIC_BENCH_PART").unwrap_or_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let prefix = format!("agentic-bench-{:x}", fastrand::u64(..));
        // Warm up both paths once (connections, script cache).
        queue_ours(&url, &prefix, 2_000).await;
        queue_raw(&url, &prefix, 2_000).await;
        let store = RedisStore::connect_with(RedisStoreConfig::new(&url).key_prefix(&prefix).namespace("bench"))
            .await
            .unwrap();
        let store = Arc::new(store);
        let client = redis::Client::open(url.as_str()).unwrap();
        let raw_conn = client.get_multiplexed_async_connection().await.unwrap();
        find_redis_process(&mut raw_conn.clone()).await;
        let value = vec![7u8; PAYLOAD];
        for i in 0..CLIENTS * 8 {
            store.put(&format!("k{i}"), value.clone(), PutOptions::new()).await.unwrap();
        }
        // Per round: [queue ours, queue raw, get, raw get, put, raw set, cas, raw get+set].
        let mut figures: Vec<[f64; 8]> = Vec::new();
        for _ in 0..rounds {
            let (mut ours, mut raw) = (f64::NAN, f64::NAN);
            if part != "store" {
                if part != "queue-raw" {
                    ours = cpu_span("queue ours", jobs, queue_ours(&url, &prefix, jobs)).await;
                }
                if part != "queue-ours" {
                    raw = cpu_span("queue raw", jobs, queue_raw(&url, &prefix, jobs)).await;
                }
            }
            let (mut get, mut raw_get, mut put, mut raw_set, mut cas, mut raw_cas) = (f64::NAN, f64::NAN, f64::NAN, f64::NAN, f64::NAN, f64::NAN);
            if !part.starts_with("queue") {
                (get, raw_get, put, raw_set, cas, raw_cas) = store_round(&store, &raw_conn, &prefix, &value).await;
            }
            figures.push([ours, raw, get, raw_get, put, raw_set, cas, raw_cas]);
        }
        let col = |i: usize| figures.iter().map(|f| f[i]).collect::<Vec<_>>();
        let ratio = |a: usize, b: usize| figures.iter().map(|f| f[a] / f[b]).collect::<Vec<_>>();
        // A CAS is a get and then a put, so its raw baseline is a GET and then a SET: the
        // rate of the two run one after the other, 1 / (1 / GET rate + 1 / SET rate). The
        // raw GET-then-SET loop measures the same thing directly, as a check of the formula.
        let cas_ratio = figures
            .iter()
            .map(|f| f[6] * (1.0 / f[3] + 1.0 / f[5]))
            .collect::<Vec<_>>();
        println!("redis queue, {jobs} jobs x {rounds} rounds, {PAYLOAD} B payloads, batches of {BATCH}, {CONSUMERS} consumers:");
        println!("  RedisQueue enqueue+dequeue+ack : {} jobs/s", rates(&col(0)));
        println!("  raw LPUSH + LMOVE + LREM       : {} jobs/s", rates(&col(1)));
        println!("  ratio, median of rounds        : {} (target >= 0.50x)", ratios(&ratio(0, 1)));
        println!("redis store, {} ops from {CLIENTS} concurrent clients x {rounds} rounds, {PAYLOAD} B values:", ops());
        println!("  RedisStore get : {} ops/s   raw GET {} ops/s", rates(&col(2)), rates(&col(3)));
        println!("                   ratio {} (target >= 0.70x)", ratios(&ratio(2, 3)));
        println!("  RedisStore put : {} ops/s   raw SET {} ops/s", rates(&col(4)), rates(&col(5)));
        println!("                   ratio {} (target >= 0.70x)", ratios(&ratio(4, 5)));
        println!("  RedisStore CAS (get + conditional put): {} ops/s", rates(&col(6)));
        println!("                   vs raw GET+SET ratio {} (target >= 0.70x)", ratios(&cas_ratio));
        println!("                   raw GET then SET per client: {} ops/s, ratio {}", rates(&col(7)), ratios(&ratio(6, 7)));
        println!("                   conflicts met: {} (0 expected)", CAS_CONFLICTS.load(Ordering::Relaxed));
        print_cpu();

        // Leave nothing behind.
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut c).await.unwrap();
        for chunk in keys.chunks(500) {
            let _: i64 = redis::cmd("DEL").arg(chunk).query_async(&mut c).await.unwrap();
        }
    });
}

/// The Redis server's `/proc/<pid>/stat`, when it runs on this machine.
static REDIS_STAT: OnceLock<Option<String>> = OnceLock::new();
/// CPU time per operation of each measured part: (label, bench process µs, Redis µs).
static CPU: Mutex<Vec<(&'static str, f64, f64)>> = Mutex::new(Vec::new());

/// Finds the server's process through `INFO server` (only meaningful for a local server).
async fn find_redis_process(conn: &mut redis::aio::MultiplexedConnection) {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(conn)
        .await
        .unwrap_or_default();
    let pid = info
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .map(|p| p.trim().to_owned());
    let stat = pid
        .map(|p| format!("/proc/{p}/stat"))
        .filter(|path| std::fs::metadata(path).is_ok());
    REDIS_STAT.get_or_init(|| stat);
}

/// User + system CPU time of a process from its `stat` file, in µs.
fn cpu_us(stat_path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // Linux reports these in clock ticks of 100 Hz (USER_HZ).
    Some(ticks as f64 * 10_000.0)
}

/// Runs `work` (which does `ops` operations) and records the CPU time it took per operation
/// in this process and in the Redis server. Throughput on a shared 2-core machine moves with
/// whatever else runs; CPU time per operation mostly does not, so it shows where the cost is.
async fn cpu_span<T>(
    label: &'static str,
    ops: usize,
    work: impl std::future::Future<Output = T>,
) -> T {
    let redis = REDIS_STAT.get().cloned().flatten();
    let before = (cpu_us("/proc/self/stat"), redis.as_deref().and_then(cpu_us));
    let out = work.await;
    let after = (cpu_us("/proc/self/stat"), redis.as_deref().and_then(cpu_us));
    let per_op = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => (b - a) / ops as f64,
        _ => f64::NAN,
    };
    if let Ok(mut log) = CPU.lock() {
        log.push((label, per_op(before.0, after.0), per_op(before.1, after.1)));
    }
    out
}

fn print_cpu() {
    let Ok(log) = CPU.lock() else { return };
    let mut labels: Vec<&str> = log.iter().map(|(l, _, _)| *l).collect();
    labels.dedup();
    labels.sort();
    labels.dedup();
    if labels.is_empty() {
        return;
    }
    println!(
        "CPU time per operation, median of rounds (bench process + Redis server, us; 10 ms ticks):"
    );
    for label in labels {
        let client: Vec<f64> = log.iter().filter(|e| e.0 == label).map(|e| e.1).collect();
        let server: Vec<f64> = log.iter().filter(|e| e.0 == label).map(|e| e.2).collect();
        let (c, r) = (median(&client), median(&server));
        println!("  {label:<10}: {:>6.2} + {:>6.2} = {:>6.2}", c, r, c + r);
    }
}

/// `"<median> (rounds: a, b, c)"` of rates.
fn rates(v: &[f64]) -> String {
    format!(
        "{:>7.0} (rounds: {})",
        median(v),
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// `"<median>x (rounds: a, b, c)"` of ratios.
fn ratios(v: &[f64]) -> String {
    format!(
        "{:.2}x (rounds: {})",
        median(v),
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One round of the store: get, raw GET, put, raw SET, CAS (ops/s each).
async fn store_round(
    store: &Arc<RedisStore>,
    raw_conn: &redis::aio::MultiplexedConnection,
    prefix: &str,
    value: &[u8],
) -> (f64, f64, f64, f64, f64, f64) {
    let value = value.to_vec();
    let st = Arc::clone(store);
    let get = rate("get", move |_, i| {
        let s = Arc::clone(&st);
        async move {
            s.get(&format!("k{}", i % (CLIENTS * 8))).await.unwrap();
        }
    })
    .await;
    let (rc, pf) = (raw_conn.clone(), prefix.to_owned());
    let raw_get = rate("raw GET", move |_, i| {
        let (mut c, p) = (rc.clone(), pf.clone());
        async move {
            let _: Option<Vec<u8>> = redis::cmd("GET")
                .arg(format!("{p}:raw:k{}", i % (CLIENTS * 8)))
                .query_async(&mut c)
                .await
                .unwrap();
        }
    })
    .await;
    let (st, val) = (Arc::clone(store), value.clone());
    let put = rate("put", move |_, i| {
        let (s, v) = (Arc::clone(&st), val.clone());
        async move {
            s.put(&format!("k{}", i % (CLIENTS * 8)), v, PutOptions::new())
                .await
                .unwrap();
        }
    })
    .await;
    let (rc, pf, val) = (raw_conn.clone(), prefix.to_owned(), value.clone());
    let raw_set = rate("raw SET", move |_, i| {
        let (mut c, p, v) = (rc.clone(), pf.clone(), val.clone());
        async move {
            let _: () = redis::cmd("SET")
                .arg(format!("{p}:raw:k{}", i % (CLIENTS * 8)))
                .arg(v)
                .query_async(&mut c)
                .await
                .unwrap();
        }
    })
    .await;
    // Compare-and-set on a key per client, so every CAS succeeds (a conflict is not work;
    // conflicts are counted and printed all the same).
    let (st, val) = (Arc::clone(store), value.clone());
    let cas = rate("CAS", move |client, _| {
        let (s, v) = (Arc::clone(&st), val.clone());
        async move {
            let key = format!("cas{client}");
            loop {
                let expect = match s.get(&key).await.unwrap() {
                    Some(cur) => Expect::Version(cur.version),
                    None => Expect::Absent,
                };
                match s
                    .put(&key, v.clone(), PutOptions::new().expect(expect))
                    .await
                {
                    Ok(_) => break,
                    Err(e) if e.is_conflict() => {
                        CAS_CONFLICTS.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }
    })
    .await;
    // The raw client doing what a compare-and-set client does: a `GET` of its key, then a
    // `SET` of it, one after the other.
    let (rc, pf, val) = (raw_conn.clone(), prefix.to_owned(), value.clone());
    let raw_cas = rate("raw GET+SET", move |client, _| {
        let (mut c, p, v) = (rc.clone(), pf.clone(), val.clone());
        async move {
            let key = format!("{p}:raw:cas{client}");
            let _: Option<Vec<u8>> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut c)
                .await
                .unwrap();
            let _: () = redis::cmd("SET")
                .arg(&key)
                .arg(v)
                .query_async(&mut c)
                .await
                .unwrap();
        }
    })
    .await;
    (get, raw_get, put, raw_set, cas, raw_cas)
}

/// Conflicts the CAS clients met (none expected: each client has a key of its own).
static CAS_CONFLICTS: AtomicUsize = AtomicUsize::new(0);

/// Operations per second of `op(client, i)` for [`ops`] operations (`i` counts them) from
/// `CLIENTS` concurrent tasks (`client` numbers them).
async fn rate<F, Fut>(label: &'static str, op: F) -> f64
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    cpu_span(label, ops(), rate_inner(op)).await
}

async fn rate_inner<F, Fut>(op: F) -> f64
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (op, next) = (Arc::clone(&op), Arc::clone(&next));
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= ops() {
                        break;
                    }
                    op(client, i).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    ops() as f64 / start.elapsed().as_secs_f64()
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
                    for r in queue.ack_batch(&leases).await.unwrap() {
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
