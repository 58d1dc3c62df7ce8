//! Throughput runner: `NatsQueue` and `NatsStore` beside raw `async-nats` JetStream doing the
//! minimal equivalent work, on the same server in the same run, printed with the ratio.
//!
//! ```sh
//! AGENTIC_NATS_URL=nats://127.0.0.1:4222 cargo bench -p agentic-benches --bench nats_throughput
//! ```
//!
//! Queue: 256-byte payloads, batches of `BATCH`, one producer and `CONSUMERS` consumers
//! running at once, each on its own connection; a job counts when it is acked, the clock
//! stops at the last ack. Ours: `enqueue_batch`, `dequeue` with a lease equal to the
//! consumer's `ack_wait` (so no per-delivery Nak), `ack_many` (acks the server confirms).
//! Raw: a work-queue stream with one durable pull consumer, `publish` with every ack of a
//! batch in flight, no-wait `fetch` of a batch, plain explicit `ack` per message (not
//! confirmed). Store: `OPS` operations from `CLIENTS` concurrent tasks for get, put and
//! compare-and-set against raw KV `entry`, `put` and `update`. `AGENTIC_BENCH_JOBS`
//! overrides the job count (100,000), `AGENTIC_BENCH_ROUNDS` the alternating rounds of
//! each queue path (5, the median is reported); `AGENTIC_NATS_SERVER_PID` adds the
//! server's CPU per job to each round's line. Everything it creates is deleted at the end.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agentic_queue::{NatsQueue, NatsQueueConfig, NewJob, TaskQueue};
use agentic_store::{Expect, NatsStore, NatsStoreConfig, PutOptions, StateStore};
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures::StreamExt;

const BATCH: usize = 256;
const CONSUMERS: usize = 2;
const PAYLOAD: usize = 256;
const CLIENTS: usize = 16;
const OPS: usize = 20_000;
const LEASE: Duration = Duration::from_secs(30);

fn main() {
    let Ok(url) = std::env::var("AGENTIC_NATS_URL") else {
        println!("SKIP nats throughput: AGENTIC_NATS_URL is not set");
        return;
    };
    let jobs: usize = std::env::var("AGENTIC_BENCH_JOBS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let jobs = jobs / BATCH * BATCH;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let tag = format!("{:x}", fastrand::u64(..));
        // Warm both paths (connections, streams, consumers) on queues of their own.
        queue_ours(&url, &format!("warm-{tag}"), 5 * BATCH).await;
        queue_raw(&url, &format!("warm{tag}"), 5 * BATCH).await;
        let mut ours = Vec::new();
        let mut raw = Vec::new();
        // Alternate, so drift on a shared machine hits both alike.
        let rounds: usize = std::env::var("AGENTIC_BENCH_ROUNDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(5);
        for round in 0..rounds {
            let (c0, s0) = cpu();
            ours.push(queue_ours(&url, &format!("b{round}-{tag}"), jobs).await);
            let (c1, s1) = cpu();
            raw.push(queue_raw(&url, &format!("r{round}{tag}"), jobs).await);
            let (c2, s2) = cpu();
            let per_job = |secs: f64| secs * 1e6 / jobs as f64;
            println!(
                "  round {round}: CPU per job, NatsQueue: client {:.1} µs, server {:.1} µs | raw: client {:.1} µs, server {:.1} µs",
                per_job(c1 - c0),
                per_job(s1 - s0),
                per_job(c2 - c1),
                per_job(s2 - s1)
            );
        }
        let (o, r) = (median(&mut ours), median(&mut raw));
        println!(
            "nats queue, {jobs} jobs, {PAYLOAD} B payloads, batches of {BATCH}, {CONSUMERS} consumers (median of {rounds}):"
        );
        println!("  NatsQueue enqueue+dequeue+ack      : {o:>9.0} jobs/s   runs {ours:.0?}");
        println!("  raw publish + fetch + explicit ack : {r:>9.0} jobs/s   runs {raw:.0?}");
        println!("  ratio                              : {:.2}x (target >= 0.80x)", o / r);

        store(&url, &tag).await;
    });
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn queue_ours(url: &str, queue: &str, jobs: usize) -> f64 {
    let config = || {
        let mut c = NatsQueueConfig::new(url).prefix("agqbench");
        c.ack_wait = LEASE;
        c
    };
    let producer_q = NatsQueue::connect_with(config()).await.unwrap();
    // Streams exist before the clock starts, as they would in a running system.
    producer_q.stats(queue).await.unwrap();
    producer_q
        .enqueue_batch(queue, vec![NewJob::new(vec![0u8; PAYLOAD])])
        .await
        .unwrap();
    let warm = producer_q
        .dequeue(queue, 1, LEASE, Duration::from_secs(1))
        .await
        .unwrap();
    producer_q.ack(&warm[0].lease).await.unwrap();

    let payload = Bytes::from(vec![b'x'; PAYLOAD]);
    let done = Arc::new(AtomicUsize::new(0));
    let mut consumers = Vec::new();
    for _ in 0..CONSUMERS {
        consumers.push(NatsQueue::connect_with(config()).await.unwrap());
    }
    let start = Instant::now();
    let producer = {
        let (q, name, payload) = (producer_q.clone(), queue.to_owned(), payload.clone());
        tokio::spawn(async move {
            for _ in 0..jobs / BATCH {
                let batch = (0..BATCH).map(|_| NewJob::new(payload.clone())).collect();
                q.enqueue_batch(&name, batch).await.unwrap();
            }
        })
    };
    let tasks: Vec<_> = consumers
        .into_iter()
        .map(|q| {
            let (name, done) = (queue.to_owned(), Arc::clone(&done));
            tokio::spawn(async move {
                while done.load(Ordering::Relaxed) < jobs {
                    let got = q
                        .dequeue(&name, BATCH, LEASE, Duration::from_millis(50))
                        .await
                        .unwrap();
                    let leases: Vec<_> = got.iter().map(|d| d.lease.clone()).collect();
                    for r in q.ack_many(&leases).await {
                        r.unwrap();
                    }
                    done.fetch_add(got.len(), Ordering::Relaxed);
                }
            })
        })
        .collect();
    producer.await.unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let rate = jobs as f64 / start.elapsed().as_secs_f64();
    producer_q.delete_queue(queue).await.unwrap();
    rate
}

async fn queue_raw(url: &str, name: &str, jobs: usize) -> f64 {
    let stream_name = format!("RAWBENCH_{name}");
    let subject = format!("rawbench.{name}");
    let producer = jetstream::new(async_nats::connect(url).await.unwrap());
    let s = producer
        .create_stream(stream::Config {
            name: stream_name.clone(),
            subjects: vec![subject.clone()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .unwrap();
    s.create_consumer(consumer::pull::Config {
        durable_name: Some("workers".to_owned()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: LEASE,
        max_ack_pending: 20_000,
        ..Default::default()
    })
    .await
    .unwrap();
    let payload = Bytes::from(vec![b'x'; PAYLOAD]);
    let done = Arc::new(AtomicUsize::new(0));
    let mut consumers = Vec::new();
    for _ in 0..CONSUMERS {
        let js = jetstream::new(async_nats::connect(url).await.unwrap());
        let c: consumer::PullConsumer = js
            .get_stream(&stream_name)
            .await
            .unwrap()
            .get_consumer("workers")
            .await
            .unwrap();
        consumers.push(c);
    }
    let start = Instant::now();
    let prod = {
        let (js, subject, payload) = (producer.clone(), subject.clone(), payload.clone());
        tokio::spawn(async move {
            for _ in 0..jobs / BATCH {
                let mut acks = Vec::with_capacity(BATCH);
                for _ in 0..BATCH {
                    acks.push(js.publish(subject.clone(), payload.clone()).await.unwrap());
                }
                for a in acks {
                    a.await.unwrap();
                }
            }
        })
    };
    let tasks: Vec<_> = consumers
        .into_iter()
        .map(|c| {
            let done = Arc::clone(&done);
            tokio::spawn(async move {
                while done.load(Ordering::Relaxed) < jobs {
                    let mut batch = c.fetch().max_messages(BATCH).messages().await.unwrap();
                    let mut n = 0;
                    while let Some(m) = batch.next().await {
                        m.unwrap().ack().await.unwrap();
                        n += 1;
                    }
                    if n == 0 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    done.fetch_add(n, Ordering::Relaxed);
                }
            })
        })
        .collect();
    prod.await.unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let rate = jobs as f64 / start.elapsed().as_secs_f64();
    producer.delete_stream(&stream_name).await.unwrap();
    rate
}

async fn store(url: &str, tag: &str) {
    let bucket = format!("agtbench_{tag}");
    let ours = Arc::new(
        NatsStore::connect_with(NatsStoreConfig::new(url).bucket(&bucket))
            .await
            .unwrap(),
    );
    // Raw KV on the same kind of bucket (NatsStore made it; a second one for raw keys).
    let raw_bucket = format!("agtbenchraw_{tag}");
    let raw_store = NatsStore::connect_with(NatsStoreConfig::new(url).bucket(&raw_bucket))
        .await
        .unwrap();
    let js = jetstream::new(async_nats::connect(url).await.unwrap());
    let kv = Arc::new(js.get_key_value(&raw_bucket).await.unwrap());
    let value = vec![7u8; PAYLOAD];
    let keys = CLIENTS * 8;
    for i in 0..keys {
        ours.put(&format!("bench/k{i}"), value.clone(), PutOptions::new())
            .await
            .unwrap();
        kv.put(format!("bench.k{i}"), Bytes::from(value.clone()))
            .await
            .unwrap();
    }
    let o = Arc::clone(&ours);
    let get = rate(move |i| {
        let s = Arc::clone(&o);
        async move {
            s.get(&format!("bench/k{}", i % keys))
                .await
                .unwrap()
                .unwrap();
        }
    })
    .await;
    let k = Arc::clone(&kv);
    let raw_get = rate(move |i| {
        let kv = Arc::clone(&k);
        async move {
            kv.entry(format!("bench.k{}", i % keys))
                .await
                .unwrap()
                .unwrap();
        }
    })
    .await;
    let (o, val) = (Arc::clone(&ours), value.clone());
    let put = rate(move |i| {
        let (s, v) = (Arc::clone(&o), val.clone());
        async move {
            s.put(&format!("bench/k{}", i % keys), v, PutOptions::new())
                .await
                .unwrap();
        }
    })
    .await;
    let (k, val) = (Arc::clone(&kv), Bytes::from(value.clone()));
    let raw_put = rate(move |i| {
        let (kv, v) = (Arc::clone(&k), val.clone());
        async move {
            kv.put(format!("bench.k{}", i % keys), v).await.unwrap();
        }
    })
    .await;
    // Compare-and-set on a key per client, so every CAS succeeds (a conflict is not work).
    let (o, val) = (Arc::clone(&ours), value.clone());
    let cas = rate(move |i| {
        let (s, v) = (Arc::clone(&o), val.clone());
        async move {
            let key = format!("bench/cas{}", i % CLIENTS);
            // Another task may draw the same key: retry a conflict, as a caller would.
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
                    Err(e) if e.is_conflict() => continue,
                    Err(e) => panic!("{e}"),
                }
            }
        }
    })
    .await;
    let (k, val) = (Arc::clone(&kv), Bytes::from(value.clone()));
    let raw_cas = rate(move |i| {
        let (kv, v) = (Arc::clone(&k), val.clone());
        async move {
            let key = format!("bench.cas{}", i % CLIENTS);
            loop {
                let revision = kv
                    .entry(key.clone())
                    .await
                    .unwrap()
                    .map_or(0, |e| e.revision);
                match kv.update(key.clone(), v.clone(), revision).await {
                    Ok(_) => break,
                    Err(e)
                        if e.kind()
                            == async_nats::jetstream::kv::UpdateErrorKind::WrongLastRevision =>
                    {
                        continue;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }
    })
    .await;
    println!("nats store, {OPS} ops from {CLIENTS} concurrent clients, {PAYLOAD} B values:");
    println!(
        "  NatsStore get : {get:>9.0} ops/s   raw KV entry  {raw_get:>9.0} ops/s   ratio {:.2}x",
        get / raw_get
    );
    println!(
        "  NatsStore put : {put:>9.0} ops/s   raw KV put    {raw_put:>9.0} ops/s   ratio {:.2}x",
        put / raw_put
    );
    println!(
        "  NatsStore CAS : {cas:>9.0} ops/s   raw entry+update {raw_cas:>6.0} ops/s   ratio {:.2}x",
        cas / raw_cas
    );
    ours.delete_buckets().await.unwrap();
    raw_store.delete_buckets().await.unwrap();
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

/// CPU seconds used so far by this process and by the server (when
/// `AGENTIC_NATS_SERVER_PID` names it; 0 otherwise), from `/proc/<pid>/stat`: on a
/// shared machine, CPU per job says more about the cost than wall-clock rate.
fn cpu() -> (f64, f64) {
    fn seconds(pid: &str) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command name: utime and stime are the 12th and 13th.
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (ticks(11) + ticks(12)) / 100.0
    }
    let server = std::env::var("AGENTIC_NATS_SERVER_PID").unwrap_or_default();
    let server = if server.is_empty() {
        0.0
    } else {
        seconds(&server)
    };
    (seconds("self"), server)
}
