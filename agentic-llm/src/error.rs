use std::time::Duration;

/// Everything an [`LlmProvider`](crate::LlmProvider) call can fail with.
///
/// The provider's own error message is kept verbatim in `message`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LlmError {
    /// 429: too many requests or tokens. Retryable, after `retry_after` when known.
    #[error("rate limited by {provider}: {message}")]
    RateLimited {
        /// Provider name.
        provider: String,
        /// The provider's message.
        message: String,
        /// How long the provider asked us to wait.
        retry_after: Option<Duration>,
    },
    /// The provider is overloaded (Anthropic 529). Retryable.
    #[error("{provider} is overloaded: {message}")]
    Overloaded {
        /// Provider name.
        provider: String,
        /// The provider's message.
        message: String,
        /// How long the provider asked us to wait.
        retry_after: Option<Duration>,
    },
    /// A 5xx from the provider. Retryable.
    #[error("{provider} server error {status}: {message}")]
    Server {
        /// Provider name.
        provider: String,
        /// HTTP status.
        status: u16,
        /// The provider's message.
        message: String,
    },
    /// The call (or the first token of a stream) took too long. Retryable.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The connection failed or dropped. Retryable.
    #[error("connection to {provider} failed: {message}")]
    Connection {
        /// Provider name.
        provider: String,
        /// What happened.
        message: String,
    },
    /// 400: the request is malformed or unsupported. Not retryable.
    #[error("{provider} rejected the request ({status}): {message}")]
    InvalidRequest {
        /// Provider name.
        provider: String,
        /// HTTP status.
        status: u16,
        /// The provider's message.
        message: String,
    },
    /// 401/403: bad key or no permission. Not retryable.
    #[error("{provider} refused the credentials ({status}): {message}")]
    Authentication {
        /// Provider name.
        provider: String,
        /// HTTP status.
        status: u16,
        /// The provider's message.
        message: String,
    },
    /// 404: unknown model or endpoint. Not retryable.
    #[error("{provider}: not found: {message}")]
    NotFound {
        /// Provider name.
        provider: String,
        /// The provider's message.
        message: String,
    },
    /// The prompt exceeds the model's context window. Not retryable.
    #[error("context too long: {0}")]
    ContextTooLong(String),
    /// The provider filtered or the model refused the content. Not retryable.
    #[error("content refused or filtered: {0}")]
    ContentFiltered(String),
    /// The answer could not be parsed.
    #[error("could not decode the provider's answer: {0}")]
    Decode(String),
    /// A budget would be exceeded by this call's worst case.
    #[error("budget exceeded: {0}")]
    BudgetExceeded(String),
    /// The circuit breaker is open for this provider.
    #[error("circuit open for {provider}; retry after {retry_after:?}")]
    CircuitOpen {
        /// Provider name.
        provider: String,
        /// When the breaker will let a probe through.
        retry_after: Option<Duration>,
    },
    /// No provider can serve the request (routing rules or all fallbacks failed).
    #[error("no provider available: {0}")]
    NoProvider(String),
    /// A scripted provider ran out of responses or matched none.
    #[error("script: {0}")]
    Script(String),
    /// The call was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

impl LlmError {
    /// True when the same call may succeed later: rate limits, overload, 5xx, timeouts,
    /// connection faults and an open circuit.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            LlmError::RateLimited { .. }
                | LlmError::Overloaded { .. }
                | LlmError::Server { .. }
                | LlmError::Timeout(_)
                | LlmError::Connection { .. }
                | LlmError::CircuitOpen { .. }
        )
    }

    /// How long the provider asked us to wait, when it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            LlmError::RateLimited { retry_after, .. }
            | LlmError::Overloaded { retry_after, .. }
            | LlmError::CircuitOpen { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}
