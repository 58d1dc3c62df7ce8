//! Layers: providers that wrap a provider, tower-style. Each is one small module that knows
//! nothing of the others, so they compose in any order.
//!
//! | Layer                | Does                                                               |
//! |----------------------|--------------------------------------------------------------------|
//! | [`Retry`]            | retries retryable errors: exponential backoff, full jitter, `retry_after`, bounded attempts and time |
//! | [`CircuitBreaker`]   | closed / open / half-open on the failure rate in a window; fails fast with `CircuitOpen` |
//! | [`RateLimiter`]      | requests and tokens per minute; waits up to a bound; slows down on 429 |
//! | [`Timeout`]          | bounds a call and a stream's time to first token                   |
//! | [`ResponseCache`]    | answers repeated deterministic requests; TTL, bounded size         |
//! | [`CostMeter`]        | prices every answer; enforces [`Budgets`] per tag with the worst case |
//! | [`Router`]           | fallback chain; sensitive requests to local providers only; tiers  |
//!
//! A sensible order, outermost first: cache (hits cost nothing), cost meter (one price per
//! answer, whichever route served it), router, and per route: retry, circuit breaker, rate
//! limiter, timeout, provider. With the breaker inside the retry, an open circuit ends the
//! retries of that route quickly (the router then falls back); with the timeout innermost,
//! every attempt gets the full time.
//!
//! ```
//! use std::time::Duration;
//! use agentic_llm::layers::*;
//! use agentic_llm::{ChatRequest, ChatResponse, LlmProvider, ScriptedProvider};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), agentic_llm::LlmError> {
//! let provider = ScriptedProvider::new().respond_with(|_| Ok(ChatResponse::text("hi")));
//! let guarded = provider
//!     .with_timeout(Timeouts::call(Duration::from_secs(60)))
//!     .with_rate_limit(RateLimit::per_minute(50, 40_000))
//!     .with_circuit_breaker(BreakerConfig::default())
//!     .with_retry(RetryPolicy::default());
//! let llm = Router::new()
//!     .route(Route::new(guarded))
//!     .with_cost_meter(PriceTable::builtin())
//!     .with_cache(CacheConfig::default());
//! assert_eq!(llm.complete(ChatRequest::user("hello")).await?.text_content(), "hi");
//! # Ok(())
//! # }
//! ```

pub mod cache;
pub mod circuit_breaker;
pub mod cost;
pub mod rate_limit;
pub mod retry;
pub mod router;
pub mod timeout;

pub use cache::{CacheConfig, ResponseCache, request_key};
pub use circuit_breaker::{BreakerConfig, CircuitBreaker, CircuitState};
pub use cost::{Budgets, CostMeter, ModelPrice, PRICES_AS_OF, PriceTable, UnknownModel};
pub use rate_limit::{RateLimit, RateLimiter};
pub use retry::{Retry, RetryPolicy};
pub use router::{Route, Router};
pub use timeout::{Timeout, Timeouts};

use crate::LlmProvider;

/// `now + d`, or thirty years from now (tokio's own far future) when that does not fit in an
/// `Instant`: a TTL, timeout or cool-down of `Duration::MAX` from a config, or a provider's
/// absurd `Retry-After`, must not panic a call.
pub(crate) fn later(now: tokio::time::Instant, d: std::time::Duration) -> tokio::time::Instant {
    const FAR_FUTURE: std::time::Duration = std::time::Duration::from_secs(86_400 * 365 * 30);
    now.checked_add(d)
        .or_else(|| now.checked_add(FAR_FUTURE))
        .unwrap_or(now)
}

/// Wraps any provider in a layer: `provider.with_retry(RetryPolicy::default())`.
pub trait LayerExt: LlmProvider + Sized {
    /// See [`Retry`].
    fn with_retry(self, policy: RetryPolicy) -> Retry<Self> {
        Retry::new(self, policy)
    }

    /// See [`CircuitBreaker`].
    fn with_circuit_breaker(self, config: BreakerConfig) -> CircuitBreaker<Self> {
        CircuitBreaker::new(self, config)
    }

    /// See [`RateLimiter`].
    fn with_rate_limit(self, limit: RateLimit) -> RateLimiter<Self> {
        RateLimiter::new(self, limit)
    }

    /// See [`Timeout`].
    fn with_timeout(self, timeouts: Timeouts) -> Timeout<Self> {
        Timeout::new(self, timeouts)
    }

    /// See [`ResponseCache`].
    fn with_cache(self, config: CacheConfig) -> ResponseCache<Self> {
        ResponseCache::new(self, config)
    }

    /// See [`CostMeter`].
    fn with_cost_meter(self, prices: PriceTable) -> CostMeter<Self> {
        CostMeter::new(self, prices)
    }
}

impl<P: LlmProvider + Sized> LayerExt for P {}
