//! Throughput runner: `AmqpQueue` beside raw `lapin` doing the minimal equivalent work,
//! on the same broker in the same run, printed with the ratio.
//!
//! ```sh
//! AGENTIC_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f \
//!     cargo bench -p agentic-benches --bench amqp_throughput
//! ```
//!
//! Both sides: a durable quorum queue, 256-byte persistent messages, publishers keeping
//! about `PRODUCERS x batch` (400) publishes awaiting their confirms, and consumers
//! running at the same time with a prefetch of `PREFETCH`; a job counts when it is acked.
//!
//! Raw lapin, tuned (what a hand-written client on this broker would do): a sliding window
//! of 400 confirms in flight on a publishing connection, one `basic_consume` stream on a
//! connection of its own, and one `basic.ack` with `multiple` per 50 deliveries. Measured
//! here, `multiple` acks are what matters (5.7k -> 13.4k jobs/s); the window (100 vs 400
//! vs 2,000), separate connections (+10-15%) and the queue type (classic was not faster
//! than quorum) much less. `AGENTIC_BENCH_RAW_IN_FLIGHT`, `AGENTIC_BENCH_RAW_ACK_EVERY`,
//! `AGENTIC_BENCH_RAW_CONNECTIONS` (1 or 2) and `AGENTIC_BENCH_RAW_QUEUE_TYPE=classic`
//! change it, to see what each is worth.
//!
//! Ours: `PRODUCERS` tasks calling `enqueue_batch` (batches of 100), `CONSUMERS` tasks
//! calling `dequeue(max = 100)` and `ack_batch` (one AMQP consumer per queue and process,
//! as in a worker). `AGENTIC_BENCH_JOBS` overrides the job count (default 50,000, rounded
//! to whole batches per producer); `AGENTIC_BENCH_ROUNDS` the number of alternating rounds
//! (default 3; printed: best of each, and the median of the per-round ratios);
//! `AGENTIC_BENCH_BATCH` the batch size (100); `AGENTIC_BENCH_ONLY=ours|raw` runs one
//! side. Every queue it declares is deleted at the end.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agentic_core::queue::{AmqpQueue, AmqpQueueConfig, NewJob, TaskQueue};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties};

const CONSUMERS: usize = 4;
/// Tasks calling `enqueue_batch` at once on our side: their batches' confirms overlap,
/// as the raw side's window of `PRODUCERS x batch` confirms in flight does.
const PRODUCERS: usize = 4;
const PAYLOAD: usize = 256;
const PREFETCH: u16 = 256;

fn main() {
    // `cargo bench` passes `--bench`; a filter argument could follow. Neither matters here.
    let Ok(url) = std::env::var("AGENTIC_AMQP_URL") else {
        println!("SKIP amqp throughput: AGENTIC_AMQP_URL is not set");
        return;
    };
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let batch = env("AGENTIC_BENCH_BATCH", 100).max(1);
    let jobs = env("AGENTIC_BENCH_JOBS", 50_000) / (batch * PRODUCERS) * (batch * PRODUCERS);
    let rounds = env("AGENTIC_BENCH_ROUNDS", 3).max(1);
    let only = std::env::var("AGENTIC_BENCH_ONLY").unwrap_or_default();
    let tuning = RawTuning::from_env(batch);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let prefix = format!("agentic-bench-{:x}.", fastrand::u64(..));
        let warm = 2_000 / (batch * PRODUCERS) * (batch * PRODUCERS);
        // Warm up both paths once (connections, queue creation, the broker's caches).
        if only != "raw" {
            queue_ours(&url, &prefix, warm.max(batch * PRODUCERS), batch).await;
        }
        if only != "ours" {
            queue_raw(&url, &prefix, warm.max(batch * PRODUCERS), &tuning).await;
        }
        // Alternate the two, so a neighbour's load on the shared machine hits both alike.
        let (mut ours, mut raw) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            if only != "raw" {
                ours.push(queue_ours(&url, &prefix, jobs, batch).await);
            }
            if only != "ours" {
                raw.push(queue_raw(&url, &prefix, jobs, &tuning).await);
            }
        }
        let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
        let (o, r) = (best(&ours), best(&raw));
        println!(
            "amqp queue (RabbitMQ), {jobs} jobs x {rounds} rounds, {PAYLOAD} B payloads, batches of {batch}, prefetch {PREFETCH}:"
        );
        println!("  raw: {}", tuning.describe());
        println!("  AmqpQueue enqueue+dequeue+ack    : {o:>9.0} jobs/s (rounds: {})", fmt(&ours));
        println!("  raw publish+confirm, consume+ack : {r:>9.0} jobs/s (rounds: {})", fmt(&raw));
        if ours.is_empty() || raw.is_empty() {
            return;
        }
        // Each round runs ours then raw back to back, so a round's ratio compares the two
        // under the same neighbours' load; the median of those is robust to a noisy round.
        let mut paired: Vec<f64> = ours.iter().zip(&raw).map(|(o, r)| o / r).collect();
        paired.sort_by(f64::total_cmp);
        let median = paired[paired.len() / 2];
        println!("  ratio, best / best               : {:.2}x (target >= 0.80x)", o / r);
        println!(
            "  ratio, median of rounds          : {median:.2}x (rounds: {})",
            paired.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(", ")
        );
    });
}

fn fmt(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn queue_ours(url: &str, prefix: &str, jobs: usize, batch: usize) -> f64 {
    let name = format!("ours-{:x}", fastrand::u64(..));
    let queue = Arc::new(
        AmqpQueue::connect_with(
            AmqpQueueConfig::new(url)
                .queue_prefix(prefix)
                .connection_name("agentic-bench-ours")
                .prefetch(PREFETCH),
        )
        .await
        .unwrap(),
    );
    let payload = bytes::Bytes::from(vec![b'x'; PAYLOAD]);
    let done = Arc::new(AtomicUsize::new(0));
    // Declare first (on both sides), so queue creation is not measured.
    queue.stats(&name).await.unwrap();
    let start = Instant::now();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|_| {
            let (queue, name, payload) = (Arc::clone(&queue), name.clone(), payload.clone());
            tokio::spawn(async move {
                for _ in 0..jobs / batch / PRODUCERS {
                    let jobs_of_batch = (0..batch).map(|_| NewJob::new(payload.clone())).collect();
                    queue.enqueue_batch(&name, jobs_of_batch).await.unwrap();
                }
            })
        })
        .collect();
    let consumers: Vec<_> = (0..CONSUMERS)
        .map(|_| {
            let (queue, name, done) = (Arc::clone(&queue), name.clone(), Arc::clone(&done));
            tokio::spawn(async move {
                while done.load(Ordering::Relaxed) < jobs {
                    let got = queue
                        .dequeue(
                            &name,
                            batch,
                            Duration::from_secs(60),
                            Duration::from_millis(50),
                        )
                        .await
                        .unwrap();
                    let leases: Vec<_> = got.into_iter().map(|d| d.lease).collect();
                    for acked in queue.ack_batch(&leases).await.unwrap() {
                        acked.unwrap();
                    }
                    done.fetch_add(leases.len(), Ordering::Relaxed);
                }
            })
        })
        .collect();
    for p in producers {
        p.await.unwrap();
    }
    for c in consumers {
        c.await.unwrap();
    }
    let rate = jobs as f64 / start.elapsed().as_secs_f64();
    queue.delete_queue(&name).await.unwrap();
    rate
}

/// How the raw side is driven (defaults: the tuned workload; each overridable to see
/// what it is worth).
struct RawTuning {
    /// Publishes awaiting their confirm at most (a sliding window).
    in_flight: usize,
    /// Deliveries acked at once (`multiple`).
    ack_every: usize,
    /// Publisher and consumer on connections of their own.
    separate_connections: bool,
    queue_type: String,
}

impl RawTuning {
    fn from_env(batch: usize) -> Self {
        let env = |name: &str, default: usize| {
            std::env::var(name)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(default)
        };
        RawTuning {
            in_flight: env("AGENTIC_BENCH_RAW_IN_FLIGHT", PRODUCERS * batch).max(1),
            ack_every: env("AGENTIC_BENCH_RAW_ACK_EVERY", 50).max(1),
            separate_connections: env("AGENTIC_BENCH_RAW_CONNECTIONS", 2) > 1,
            queue_type: std::env::var("AGENTIC_BENCH_RAW_QUEUE_TYPE")
                .unwrap_or_else(|_| "quorum".to_owned()),
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} queue, {} confirms in flight, ack every {}, {} connection(s)",
            self.queue_type,
            self.in_flight,
            self.ack_every,
            if self.separate_connections { 2 } else { 1 }
        )
    }
}

async fn queue_raw(url: &str, prefix: &str, jobs: usize, tuning: &RawTuning) -> f64 {
    let name = format!("{prefix}raw-{:x}", fastrand::u64(..));
    let connect = |role: &'static str| async move {
        Connection::connect(
            url,
            ConnectionProperties::default()
                .with_connection_name(format!("agentic-bench-raw-{role}").into()),
        )
        .await
        .unwrap()
    };
    let conn = connect("publisher").await;
    let consumer_conn = if tuning.separate_connections {
        Some(connect("consumer").await)
    } else {
        None
    };
    let publisher = conn.create_channel().await.unwrap();
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from(tuning.queue_type.as_str())),
    );
    publisher
        .queue_declare(
            name.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .unwrap();
    let consumer_channel = consumer_conn
        .as_ref()
        .unwrap_or(&conn)
        .create_channel()
        .await
        .unwrap();
    consumer_channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = consumer_channel
        .basic_consume(
            name.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let payload = vec![b'x'; PAYLOAD];
    let in_flight = tuning.in_flight;
    let start = Instant::now();
    let producer = {
        let (publisher, name) = (publisher.clone(), name.clone());
        tokio::spawn(async move {
            let props = BasicProperties::default().with_delivery_mode(2);
            // A sliding window: publish on while fewer than `in_flight` await their
            // confirm; then wait for the oldest.
            let mut confirms = std::collections::VecDeque::with_capacity(in_flight);
            for _ in 0..jobs {
                if confirms.len() >= in_flight {
                    let c: lapin::PublisherConfirm = confirms.pop_front().unwrap();
                    assert!(c.await.unwrap().is_ack());
                }
                confirms.push_back(
                    publisher
                        .basic_publish(
                            "".into(),
                            name.as_str().into(),
                            BasicPublishOptions::default(),
                            &payload,
                            props.clone(),
                        )
                        .await
                        .unwrap(),
                );
            }
            for c in confirms {
                assert!(c.await.unwrap().is_ack());
            }
        })
    };
    let mut acked = 0;
    let mut unacked = 0;
    while acked < jobs {
        let d = consumer.next().await.unwrap().unwrap();
        unacked += 1;
        if unacked >= tuning.ack_every || acked + unacked == jobs {
            d.ack(BasicAckOptions {
                multiple: unacked > 1,
            })
            .await
            .unwrap();
            acked += unacked;
            unacked = 0;
        }
    }
    producer.await.unwrap();
    let rate = jobs as f64 / start.elapsed().as_secs_f64();
    publisher
        .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    let _ = conn.close(200, "done".into()).await;
    if let Some(c) = consumer_conn {
        let _ = c.close(200, "done".into()).await;
    }
    rate
}
