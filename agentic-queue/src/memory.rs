//! STUB: being implemented.
use std::time::Duration;

use async_trait::async_trait;

use crate::*;

/// Settings of [`MemoryQueue`].
#[derive(Debug, Clone)]
pub struct MemoryQueueConfig {
    /// Largest payload accepted.
    pub max_payload_bytes: usize,
    /// How long an idempotency key dedupes after its job was enqueued.
    pub dedupe_window: Duration,
    /// Dead letters kept per queue (oldest dropped first, with a warning); `None` keeps all.
    pub dead_letter_retention: Option<usize>,
}

impl Default for MemoryQueueConfig {
    fn default() -> Self {
        MemoryQueueConfig {
            max_payload_bytes: 16 * 1024 * 1024,
            dedupe_window: Duration::from_secs(24 * 3600),
            dead_letter_retention: None,
        }
    }
}

/// In-process queue.
#[derive(Debug, Default)]
pub struct MemoryQueue {}

impl MemoryQueue {
    /// A queue with default settings.
    pub fn new() -> Self {
        Self::default()
    }
    /// A queue with the given settings.
    pub fn with_config(_config: MemoryQueueConfig) -> Self {
        Self::default()
    }
}

#[async_trait]
impl TaskQueue for MemoryQueue {
    fn capabilities(&self) -> QueueCapabilities {
        QueueCapabilities::full(0)
    }
    async fn enqueue_batch(
        &self,
        _queue: &str,
        _jobs: Vec<NewJob>,
    ) -> Result<Vec<Enqueued>, QueueError> {
        Err(QueueError::Unsupported("stub"))
    }
    async fn dequeue(
        &self,
        _queue: &str,
        _max: usize,
        _lease: Duration,
        _wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        Err(QueueError::Unsupported("stub"))
    }
    async fn ack(&self, _lease: &Lease) -> Result<(), QueueError> {
        Err(QueueError::Unsupported("stub"))
    }
    async fn nack(
        &self,
        _lease: &Lease,
        _retry: Retry,
        _reason: &str,
    ) -> Result<NackOutcome, QueueError> {
        Err(QueueError::Unsupported("stub"))
    }
    async fn extend_lease(
        &self,
        _lease: &Lease,
        _lease_for: Duration,
    ) -> Result<Lease, QueueError> {
        Err(QueueError::Unsupported("stub"))
    }
    async fn dead_letters(
        &self,
        _queue: &str,
        _limit: usize,
    ) -> Result<Vec<DeadLetter>, QueueError> {
        Err(QueueError::Unsupported("stub"))
    }
    async fn requeue_dead(&self, _queue: &str, _ids: &[JobId]) -> Result<usize, QueueError> {
        Err(QueueError::Unsupported("stub"))
    }
    async fn stats(&self, _queue: &str) -> Result<QueueStats, QueueError> {
        Err(QueueError::Unsupported("stub"))
    }
}
