/// Everything a [`StateStore`](crate::StateStore) operation can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A compare-and-set expectation did not hold; nothing was written.
    #[error("conflict on {key:?}: expected {expected}, found {}", found.map_or_else(|| "absent".to_owned(), |v| format!("version {v}")))]
    Conflict {
        /// The key.
        key: String,
        /// What the caller expected, in words.
        expected: String,
        /// The version found (`None`: absent).
        found: Option<u64>,
    },
    /// The lock is held by someone else (used by helpers that require a lock).
    #[error("lock is held by another holder")]
    LockHeld,
    /// The lock expired or was taken over; the token is stale.
    #[error("lock {name:?} lost (token {token} is no longer current)")]
    LockLost {
        /// The lock's name.
        name: String,
        /// The stale token.
        token: u64,
    },
    /// A typed value could not be encoded or decoded.
    #[error("could not {action} value at {key:?}: {source}")]
    Codec {
        /// `encode` or `decode`.
        action: &'static str,
        /// The key.
        key: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// The key, prefix or argument is not acceptable.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The backend does not offer this operation.
    #[error("unsupported by this backend: {0}")]
    Unsupported(&'static str),
    /// The backend (server, network) failed; `retryable` says whether trying again may help.
    #[error("store backend error: {message}")]
    Backend {
        /// What went wrong, in words.
        message: String,
        /// True for transient faults.
        retryable: bool,
        /// The backend's own error.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    },
}

impl StoreError {
    /// True when the same call may succeed later (a transient backend fault).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Backend {
                retryable: true,
                ..
            }
        )
    }

    /// True for a compare-and-set conflict.
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }
}
