//! Throughput of the in-memory job queue: `enqueue_batch` + `dequeue` + `ack` in batches of
//! 100 jobs with 256-byte payloads, reported in jobs per second.
//!
//! Target: at least 1,000,000 jobs/s (see `docs/benchmarks.md`).
//!
//! ```sh
//! cargo bench -p agentic-benches --bench queue
//! ```

// A benchmark is a program, not library code: a failed setup or a queue error must stop the
// run loudly rather than be measured, so `unwrap`/`expect` are the right tools here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use agentic_core::queue::{MemoryQueue, NewJob, TaskQueue};
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// Jobs per enqueue_batch / dequeue round.
const BATCH: usize = 100;
/// Payload size of every job.
const PAYLOAD_BYTES: usize = 256;
/// The queue's name.
const QUEUE: &str = "bench";
/// Lease of each delivery: long enough that nothing ever expires during the run.
const LEASE: Duration = Duration::from_secs(60);

/// One round: 100 jobs in, 100 jobs out, 100 acks.
async fn round(queue: &MemoryQueue, payloads: &[Bytes]) {
    let jobs = payloads.iter().cloned().map(NewJob::new).collect();
    let enqueued = queue.enqueue_batch(QUEUE, jobs).await.unwrap();
    debug_assert_eq!(enqueued.len(), BATCH);
    let deliveries = queue
        .dequeue(QUEUE, BATCH, LEASE, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(deliveries.len(), BATCH, "every job enqueued must come back");
    for d in &deliveries {
        queue.ack(&d.lease).await.unwrap();
    }
}

fn payloads() -> Vec<Bytes> {
    (0..BATCH)
        .map(|i| Bytes::from(vec![(i % 251) as u8; PAYLOAD_BYTES]))
        .collect()
}

fn bench_queue(c: &mut Criterion) {
    let payloads = payloads();
    let mut group = c.benchmark_group("memory_queue");
    group.throughput(Throughput::Elements(BATCH as u64));

    // The primary figure: one thread, no cross-thread wake-ups.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let queue = MemoryQueue::new();
    group.bench_function("enqueue_dequeue_ack_batch100_current_thread", |b| {
        b.to_async(&rt).iter(|| round(&queue, &payloads));
    });
    // The queue must be empty afterwards: every job was acked.
    let stats = rt.block_on(queue.stats(QUEUE)).unwrap();
    assert_eq!((stats.ready, stats.leased, stats.dead), (0, 0, 0));

    // The same on a two-thread runtime (futures hop threads; the mutex stays uncontended).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let queue = MemoryQueue::new();
    group.bench_function("enqueue_dequeue_ack_batch100_multi_thread", |b| {
        b.to_async(&rt).iter(|| round(&queue, &payloads));
    });
    group.finish();
}

criterion_group!(benches, bench_queue);
criterion_main!(benches);
