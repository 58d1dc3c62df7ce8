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
    /// A 5xx from the provider (also 408 and 409, which the vendors' own SDKs retry as
    /// transient, and a server-side failure reported inside a streamed answer, given as 500).
    /// Retryable.
    #[error("{provider} server error {status}: {message}")]
    Server {
        /// Provider name.
        provider: String,
        /// HTTP status (500 for a failure reported mid-stream).
        status: u16,
        /// The provider's message.
        message: String,
    },
    /// The call (or the first token of a stream) took too long. Retryable.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The connection failed or dropped. Retryable.
    ///
    /// `Display` says which provider and what failed; the cause (the transport's error,
    /// with its own chain down to the OS error) is the [`source`](std::error::Error::source),
    /// not repeated in the message: walk the chain (or print with `{:#}` in `anyhow`) to see
    /// why.
    #[error("connection to {provider} failed: {message}")]
    Connection {
        /// Provider name.
        provider: String,
        /// What happened.
        message: String,
        /// Why, when a lower layer reported it (`None` for a stream that simply ended
        /// before its terminal event).
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
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
    /// The provider is misconfigured (no API key, bad base URL or header): fix the
    /// configuration. Not retryable.
    #[error("configuration: {0}")]
    Config(String),
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

/// What a provider's error body says, whichever of the three shapes it has:
/// Anthropic `{"type":"error","error":{"type":..,"message":..}}`, OpenAI
/// `{"error":{"message":..,"type":..,"code":..}}` or Ollama `{"error":".."}`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorBody {
    /// The error's type (`rate_limit_error`, `invalid_request_error`, ...), when given.
    pub kind: Option<String>,
    /// The error's code (OpenAI `code`, e.g. `context_length_exceeded`), when given.
    pub code: Option<String>,
    /// The provider's message, verbatim.
    pub message: String,
}

impl ErrorBody {
    /// Reads an error body. A body that is not one of the known JSON shapes is kept as text
    /// (trimmed, and cut at 2 000 characters so an HTML error page cannot flood a log).
    pub fn parse(body: &[u8]) -> ErrorBody {
        match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(value) => ErrorBody::from_json(&value).unwrap_or_else(|| ErrorBody {
                message: value.to_string(),
                ..ErrorBody::default()
            }),
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                ErrorBody {
                    message: text.trim().chars().take(2000).collect(),
                    ..ErrorBody::default()
                }
            }
        }
    }

    /// Reads an already-parsed error object; `None` when it has no `error` member.
    pub fn from_json(value: &serde_json::Value) -> Option<ErrorBody> {
        let error = value.get("error")?;
        if let Some(message) = error.as_str() {
            return Some(ErrorBody {
                message: message.to_owned(),
                ..ErrorBody::default()
            });
        }
        let text = |key: &str| {
            error.get(key).and_then(|v| match v {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Null => None,
                other => Some(other.to_string()),
            })
        };
        Some(ErrorBody {
            kind: text("type"),
            code: text("code"),
            message: text("message").unwrap_or_else(|| error.to_string()),
        })
    }

    fn mentions(&self, needle: &str) -> bool {
        self.kind.as_deref() == Some(needle) || self.code.as_deref() == Some(needle)
    }

    fn is_context_too_long(&self) -> bool {
        let message = self.message.to_ascii_lowercase();
        self.mentions("context_length_exceeded")
            || self.mentions("request_too_large")
            || message.contains("prompt is too long")
            || message.contains("maximum context length")
            || message.contains("context window")
            || message.contains("context length")
    }

    fn is_content_filtered(&self) -> bool {
        self.mentions("content_filter")
            || self.mentions("content_policy_violation")
            || self.mentions("refusal")
    }
}

impl LlmError {
    /// The typed error for an HTTP error answer: `status`, the parsed body, and the wait the
    /// response headers asked for (see [`crate::retry_hint`]).
    ///
    /// 429 is [`LlmError::RateLimited`]; 529 (or an `overloaded_error` body) is
    /// [`LlmError::Overloaded`]; 408, 409 and 5xx are [`LlmError::Server`]; 401 and 403 are
    /// [`LlmError::Authentication`]; 404 is [`LlmError::NotFound`]; other 4xx are
    /// [`LlmError::InvalidRequest`], or [`LlmError::ContextTooLong`] /
    /// [`LlmError::ContentFiltered`] when the body says so. The message is the provider's.
    pub fn from_http(
        provider: &str,
        status: u16,
        body: &ErrorBody,
        retry_after: Option<Duration>,
    ) -> LlmError {
        let provider = provider.to_owned();
        let message = body.message.clone();
        match status {
            429 => LlmError::RateLimited {
                provider,
                message,
                retry_after,
            },
            529 => LlmError::Overloaded {
                provider,
                message,
                retry_after,
            },
            _ if body.mentions("overloaded_error") => LlmError::Overloaded {
                provider,
                message,
                retry_after,
            },
            408 | 409 | 500..=599 => LlmError::Server {
                provider,
                status,
                message,
            },
            401 | 403 => LlmError::Authentication {
                provider,
                status,
                message,
            },
            404 => LlmError::NotFound { provider, message },
            _ if body.is_context_too_long() => LlmError::ContextTooLong(message),
            _ if body.is_content_filtered() => LlmError::ContentFiltered(message),
            _ => LlmError::InvalidRequest {
                provider,
                status,
                message,
            },
        }
    }

    /// The typed error for an error reported inside a stream (an Anthropic `error` event, an
    /// OpenAI chunk with `error`, an Ollama line with `error`): there is no HTTP status, so
    /// the body's type decides, and an untyped error counts as a server failure.
    pub fn from_stream_error(provider: &str, body: &ErrorBody) -> LlmError {
        let status = match body.kind.as_deref().or(body.code.as_deref()) {
            Some("rate_limit_error" | "rate_limit_exceeded") => 429,
            Some("overloaded_error") => 529,
            Some("invalid_request_error") => 400,
            Some("authentication_error") => 401,
            Some("permission_error") => 403,
            Some("not_found_error") => 404,
            Some("request_too_large") => 413,
            _ => 500,
        };
        LlmError::from_http(provider, status, body, None)
    }
}
