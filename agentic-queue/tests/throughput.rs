//! A rough throughput check of `MemoryQueue` (the criterion bench lives in `benches/`):
//! enqueue_batch + dequeue + ack in batches of 100, 256-byte payloads.
//!
//! ```sh
//! cargo test -p agentic-queue --release --test throughput -- --ignored --nocapture
//! ```
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentic_queue::{MemoryQueue, NewJob, TaskQueue};
use bytes::Bytes;

const BATCH: usize = 100;
const ROUNDS: usize = 20_000;
const LEASE: Duration = Duration::from_secs(60);

fn payloads() -> Vec<Bytes> {
    (0..BATCH)
        .map(|i| Bytes::from(vec![(i % 251) as u8; 256]))
        .collect()
}

async fn rounds(queue: &MemoryQueue, name: &str, payloads: &[Bytes], n: usize) {
    for _ in 0..n {
        let jobs = payloads.iter().cloned().map(NewJob::new).collect();
        queue.enqueue_batch(name, jobs).await.unwrap();
        let got = queue
            .dequeue(name, BATCH, LEASE, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(got.len(), BATCH);
        for d in &got {
            queue.ack(&d.lease).await.unwrap();
        }
    }
}

#[test]
#[ignore = "a measurement; run in release with --ignored --nocapture"]
fn jobs_per_second() {
    let payloads = payloads();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let queue = MemoryQueue::new();
    rt.block_on(rounds(&queue, "warm", &payloads, 1000));
    let start = Instant::now();
    rt.block_on(rounds(&queue, "bench", &payloads, ROUNDS));
    let rate = (ROUNDS * BATCH) as f64 / start.elapsed().as_secs_f64();
    println!("one thread: {:.0} jobs/s", rate);

    // Two workers on one queue instance (two queue names, then one shared name).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for shared_name in [false, true] {
        let queue = Arc::new(MemoryQueue::new());
        let start = Instant::now();
        rt.block_on(async {
            let tasks: Vec<_> = (0..2)
                .map(|i| {
                    let queue = queue.clone();
                    let payloads = payloads.clone();
                    let name = if shared_name {
                        "shared".to_owned()
                    } else {
                        format!("q{i}")
                    };
                    tokio::spawn(async move { rounds(&queue, &name, &payloads, ROUNDS / 2).await })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        });
        let rate = (ROUNDS * BATCH) as f64 / start.elapsed().as_secs_f64();
        println!(
            "two workers, shared queue name {shared_name}: {:.0} jobs/s",
            rate
        );
    }
}
