//! `AmqpQueue` against the real RabbitMQ at `AGENTIC_AMQP_URL`: the conformance suite
//! unchanged, then the faults.
//!
//! Without `AGENTIC_AMQP_URL` every test prints a skip and passes; with it, a broker that
//! cannot be reached fails loudly. Every test uses queue names with a random suffix and
//! deletes what it created on the broker when it ends (pass or fail).
#![cfg(all(feature = "test-kit", feature = "amqp"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use agentic_queue::{
    AmqpQueue, AmqpQueueConfig, DeadLetter, Delivery, Enqueued, JobId, Lease, NackOutcome, NewJob,
    QueueCapabilities, QueueError, QueueStats, Retry, TaskQueue,
};
use async_trait::async_trait;

fn amqp_url() -> Option<String> {
    match std::env::var("AGENTIC_AMQP_URL") {
        Ok(url) => Some(url),
        Err(_) => {
            println!("SKIP amqp queue: AGENTIC_AMQP_URL is not set");
            None
        }
    }
}

fn test_config(url: String) -> AmqpQueueConfig {
    let mut config = AmqpQueueConfig::new(url)
        .queue_prefix("agentic-test.")
        .connection_name("agentic-queue-test");
    // Backstops in case a test process is killed before it deletes its queues.
    config.queue_expires = Some(Duration::from_secs(600));
    config.dedupe_window = Duration::from_secs(60);
    config
}

/// An `AmqpQueue` that remembers every queue name it was used with and deletes them on
/// the broker when dropped, so a test leaves nothing behind even when it fails.
struct Cleanup {
    queue: AmqpQueue,
    used: Mutex<HashSet<String>>,
}

impl Cleanup {
    fn new(queue: AmqpQueue) -> Self {
        Cleanup {
            queue,
            used: Mutex::new(HashSet::new()),
        }
    }

    fn track(&self, name: &str) {
        if !name.is_empty() {
            self.used.lock().unwrap().insert(name.to_owned());
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let names: Vec<String> = self.used.lock().unwrap().drain().collect();
        if names.is_empty() {
            return;
        }
        let queue = self.queue.clone();
        // Drop cannot await; a thread with its own runtime deletes the queues while the
        // test's runtime (which drives the connection) keeps running.
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                for name in names {
                    if let Err(e) = queue.delete_queue(&name).await {
                        eprintln!("cleanup: could not delete queue {name}: {e}");
                    }
                }
            });
        });
        let _ = done.join();
    }
}

#[async_trait]
impl TaskQueue for Cleanup {
    fn capabilities(&self) -> QueueCapabilities {
        self.queue.capabilities()
    }
    async fn enqueue_batch(
        &self,
        queue: &str,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<Enqueued>, QueueError> {
        self.track(queue);
        self.queue.enqueue_batch(queue, jobs).await
    }
    async fn dequeue(
        &self,
        queue: &str,
        max: usize,
        lease: Duration,
        wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        self.track(queue);
        self.queue.dequeue(queue, max, lease, wait).await
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
    async fn dead_letters(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        self.track(queue);
        self.queue.dead_letters(queue, limit).await
    }
    async fn requeue_dead(&self, queue: &str, ids: &[JobId]) -> Result<usize, QueueError> {
        self.track(queue);
        self.queue.requeue_dead(queue, ids).await
    }
    async fn stats(&self, queue: &str) -> Result<QueueStats, QueueError> {
        self.track(queue);
        self.queue.stats(queue).await
    }
}

async fn connect(config: AmqpQueueConfig) -> AmqpQueue {
    AmqpQueue::connect_with(config)
        .await
        .expect("AGENTIC_AMQP_URL is set but RabbitMQ cannot be reached")
}

async fn shared_queue() -> Option<Cleanup> {
    let url = amqp_url()?;
    Some(Cleanup::new(connect(test_config(url)).await))
}

mod conformance {
    agentic_queue::queue_conformance_suite!(make = super::shared_queue(), prefix = "amqp");
}
