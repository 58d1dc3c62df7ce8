use std::time::Duration;

use crate::JobId;

/// Everything a [`TaskQueue`](crate::TaskQueue) operation can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The lease is no longer valid: it expired and the job was (or may be) delivered
    /// again, or the job was already acked. The caller must not act as the owner.
    #[error("lease lost for job {job_id} (token {token}): it expired or the job was redelivered")]
    LeaseLost {
        /// The job.
        job_id: JobId,
        /// The token the caller presented.
        token: u64,
    },
    /// The job is refused before anything is written.
    #[error("invalid job: {0}")]
    InvalidJob(String),
    /// The payload is larger than the backend's configured maximum.
    #[error("payload of {size} bytes exceeds the maximum of {max} bytes")]
    PayloadTooLarge {
        /// Payload size in bytes.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The queue name is not acceptable to the backend.
    #[error("invalid queue name {name:?}: {reason}")]
    InvalidQueueName {
        /// The name given.
        name: String,
        /// Why it is refused.
        reason: String,
    },
    /// The backend does not offer this operation.
    #[error("unsupported by this backend: {0}")]
    Unsupported(&'static str),
    /// The backend (broker, network) failed; `retryable` says whether trying again may help.
    #[error("queue backend error: {message}")]
    Backend {
        /// What went wrong, in words.
        message: String,
        /// True for transient faults (connection dropped, timeout, broker busy).
        retryable: bool,
        /// The backend's own error.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    },
}

impl QueueError {
    /// A non-retryable backend error with only a message.
    pub fn backend_msg(message: impl Into<String>) -> Self {
        QueueError::Backend {
            message: message.into(),
            retryable: false,
            source: None,
        }
    }

    /// A retryable backend error wrapping its cause.
    pub fn transient(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        QueueError::Backend {
            message: message.into(),
            retryable: true,
            source: Some(Box::new(source)),
        }
    }

    /// True when the same call may succeed later (a transient backend fault).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            QueueError::Backend {
                retryable: true,
                ..
            }
        )
    }

    /// How long to wait before retrying, when the backend said so.
    pub fn retry_after(&self) -> Option<Duration> {
        None
    }
}
