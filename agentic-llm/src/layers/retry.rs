//! [`Retry`]: calls again after retryable failures, with exponential backoff and full
//! jitter, honouring the provider's `retry_after`, within bounded attempts and total time.

use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::stream::first_event;
use crate::{ChatRequest, ChatResponse, EventStream, LlmError, LlmProvider, ProviderCapabilities};

/// When and how often [`Retry`] tries again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Most calls in total, the first included (default 4). 1 disables retrying.
    pub max_attempts: u32,
    /// Upper bound of the first backoff (default 500 ms); it doubles for each retry.
    pub initial_backoff: Duration,
    /// Cap on one backoff (default 30 s).
    pub max_backoff: Duration,
    /// Cap on the time from the first call to the start of the last retry (default 2 min): a
    /// retry whose wait would end past it is not made, and the error is returned at once.
    pub max_total: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_total: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (0 for the first retry), given the provider's
    /// `retry_after` and a random number `unit` in `[0, 1)`.
    ///
    /// Without a hint: "full jitter" (uniform in `[0, min(max_backoff, initial * 2^retry)]`),
    /// which spreads clients that failed together better than a fixed or equal-jitter
    /// backoff. With a hint: the hint, since waiting less is known to fail, plus a small
    /// jitter (up to 10 % of the base backoff) so that clients told the same instant do not
    /// come back in lockstep.
    pub fn backoff(&self, retry: u32, retry_after: Option<Duration>, unit: f64) -> Duration {
        let exponential = self
            .initial_backoff
            .saturating_mul(2u32.saturating_pow(retry.min(30)))
            .min(self.max_backoff);
        let unit = unit.clamp(0.0, 1.0);
        match retry_after {
            Some(hint) => hint.saturating_add(exponential.mul_f64(unit * 0.1)),
            None => exponential.mul_f64(unit),
        }
    }
}

/// A provider that retries its inner provider. See [`RetryPolicy`].
///
/// Only [`LlmError::is_retryable`] errors are retried. For streams, a failure before the
/// first event (the HTTP status, or an `error` event that comes first) is retried; once an
/// event was handed to the caller the stream is theirs, and a later failure ends it (a
/// transparent restart would repeat text the caller already showed).
#[derive(Debug, Clone)]
pub struct Retry<P> {
    inner: P,
    policy: RetryPolicy,
}

impl<P: LlmProvider> Retry<P> {
    /// Wraps `inner`.
    pub fn new(inner: P, policy: RetryPolicy) -> Self {
        Retry { inner, policy }
    }

    /// The wrapped provider.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    /// Calls `call` until it succeeds, fails for good, or the policy says stop. It lends the
    /// request to each attempt: with `complete_ref` underneath, no attempt copies it (a copy
    /// per call, in case the call fails, was about a tenth of the layers' CPU per call).
    async fn run<'r, T, F, Fut>(&self, request: &'r ChatRequest, call: F) -> Result<T, LlmError>
    where
        F: Fn(&'r ChatRequest) -> Fut + Send + Sync,
        Fut: std::future::Future<Output = Result<T, LlmError>> + Send,
        T: Send,
    {
        let started = Instant::now();
        let mut attempt = 1;
        loop {
            let error = match call(request).await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            if !error.is_retryable() || attempt >= self.policy.max_attempts {
                return Err(error);
            }
            let wait = self
                .policy
                .backoff(attempt - 1, error.retry_after(), fastrand::f64());
            if started.elapsed().saturating_add(wait) > self.policy.max_total {
                return Err(error);
            }
            tracing::debug!(
                provider = self.inner.name(),
                attempt,
                wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                %error,
                "retrying LLM call"
            );
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }
}

#[async_trait]
impl<P: LlmProvider> LlmProvider for Retry<P> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn capabilities(&self) -> ProviderCapabilities {
        self.inner.capabilities()
    }

    async fn complete(&self, request: ChatRequest) -> Result<ChatResponse, LlmError> {
        self.run(&request, |r| self.inner.complete_ref(r)).await
    }

    async fn complete_ref(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
        self.run(request, |r| self.inner.complete_ref(r)).await
    }

    async fn stream(&self, request: ChatRequest) -> Result<EventStream, LlmError> {
        // A stream is opened with an owned request, so each attempt gets a copy.
        self.run(&request, |r| async move {
            first_event(self.inner.stream(r.clone()).await?).await
        })
        .await
    }
}
