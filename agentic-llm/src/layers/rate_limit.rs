//! [`RateLimiter`]: keeps calls under requests-per-minute and tokens-per-minute limits by
//! waiting (up to a bound) rather than failing, and slows down when the provider says 429.
//!
//! Each limit is a token bucket that holds one minute's allowance and refills continuously.
//! A call takes its share up front and, if the bucket goes below zero, waits until the debt
//! is repaid; later calls queue behind it, so waiting is fair. Tokens are not known before
//! the call: it reserves `prompt estimate + max_tokens` (the most it can use, which is also
//! how OpenAI counts a request against its limit) and the difference to the reported usage
//! is given back (or taken) when the answer arrives.
//!
//! On a 429 the limiter stops all calls until the provider's `retry_after` (1 s if it gave
//! none) and lowers its rates to 75 %; each success brings them back up by 2 % of the
//! configured rate (additive increase, multiplicative decrease), down to 10 % at most.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use tokio::time::Instant;

use crate::stream::StreamEvent;
use crate::{
    ChatRequest, ChatResponse, EventStream, LlmError, LlmProvider, ProviderCapabilities, Usage,
};

/// The limits of a [`RateLimiter`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Requests per minute; `None` for no limit.
    pub requests_per_minute: Option<u32>,
    /// Tokens (prompt + output) per minute; `None` for no limit.
    pub tokens_per_minute: Option<u64>,
    /// Longest a call waits for its turn (default 30 s); a call that would wait longer fails
    /// at once with a retryable [`LlmError::RateLimited`] whose `retry_after` is the wait.
    pub max_wait: Duration,
}

impl RateLimit {
    /// Requests and tokens per minute, waiting up to 30 s.
    pub fn per_minute(requests: u32, tokens: u64) -> Self {
        RateLimit {
            requests_per_minute: Some(requests),
            tokens_per_minute: Some(tokens),
            max_wait: Duration::from_secs(30),
        }
    }

    /// Sets the longest wait.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }
}

/// Lowest share of the configured rates the limiter slows down to after 429s.
const MIN_FACTOR: f64 = 0.1;
const DECREASE: f64 = 0.75;
const INCREASE: f64 = 0.02;
/// Pause after a 429 without `retry_after`.
const DEFAULT_PAUSE: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Bucket {
    /// Units per minute (configured).
    per_minute: f64,
    /// What is available now; negative while callers wait for their reservation.
    level: f64,
    refilled: Instant,
}

impl Bucket {
    fn new(per_minute: f64, now: Instant) -> Self {
        Bucket {
            per_minute,
            level: per_minute,
            refilled: now,
        }
    }

    fn refill(&mut self, now: Instant, factor: f64) {
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        let capacity = self.per_minute * factor;
        self.level = (self.level + elapsed * capacity / 60.0).min(capacity);
        self.refilled = now;
    }

    /// How long until a level of `level` is back to zero at the current rate.
    fn wait_for(&self, level: f64, factor: f64) -> Duration {
        if level >= 0.0 {
            return Duration::ZERO;
        }
        let per_second = self.per_minute * factor / 60.0;
        Duration::try_from_secs_f64(-level / per_second).unwrap_or(Duration::MAX)
    }
}

#[derive(Debug)]
struct Limiter {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
    paused_until: Option<Instant>,
    factor: f64,
}

/// A provider whose calls are kept under rate limits. See the [module docs](self).
///
/// Clones share the buckets, so one limiter can guard a provider used from many tasks.
#[derive(Debug, Clone)]
pub struct RateLimiter<P> {
    inner: P,
    limit: RateLimit,
    state: Arc<Mutex<Limiter>>,
}

impl<P: LlmProvider> RateLimiter<P> {
    /// Wraps `inner`, with full buckets.
    pub fn new(inner: P, limit: RateLimit) -> Self {
        let now = Instant::now();
        #[allow(clippy::cast_precision_loss)]
        let state = Limiter {
            requests: limit
                .requests_per_minute
                .map(|r| Bucket::new(f64::from(r), now)),
            tokens: limit.tokens_per_minute.map(|t| Bucket::new(t as f64, now)),
            paused_until: None,
            factor: 1.0,
        };
        RateLimiter {
            inner,
            limit,
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// The wrapped provider.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    /// The share of the configured rates currently allowed (1.0 until a 429 lowers it).
    pub fn rate_factor(&self) -> f64 {
        lock(&self.state).factor
    }

    /// Takes the call's share and waits for its turn, or fails if that is too long.
    async fn acquire(&self, tokens: u64) -> Result<(), LlmError> {
        let wait = {
            let mut guard = lock(&self.state);
            // Reborrow once so the two buckets can be borrowed separately.
            let limiter = &mut *guard;
            let now = Instant::now();
            let factor = limiter.factor;
            let mut wait = limiter
                .paused_until
                .map_or(Duration::ZERO, |until| until.saturating_duration_since(now));
            #[allow(clippy::cast_precision_loss)]
            let tokens = tokens as f64;
            for (bucket, cost) in [
                (limiter.requests.as_mut(), 1.0),
                (limiter.tokens.as_mut(), tokens),
            ] {
                if let Some(bucket) = bucket {
                    bucket.refill(now, factor);
                    wait = wait.max(bucket.wait_for(bucket.level - cost, factor));
                }
            }
            if wait > self.limit.max_wait {
                return Err(LlmError::RateLimited {
                    provider: self.inner.name().to_owned(),
                    message: format!(
                        "local rate limit: the call would wait {wait:?}, more than the {:?} allowed",
                        self.limit.max_wait
                    ),
                    retry_after: Some(wait),
                });
            }
            if let Some(bucket) = limiter.requests.as_mut() {
                bucket.level -= 1.0;
            }
            if let Some(bucket) = limiter.tokens.as_mut() {
                bucket.level -= tokens;
            }
            wait
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }
}

impl<P: LlmProvider> RateLimiter<P> {
    /// Reserves `reserved` tokens, waits its turn, makes the call (`call` is only invoked
    /// once admitted) and settles the reservation.
    async fn limited<F, Fut>(&self, reserved: u64, call: F) -> Result<ChatResponse, LlmError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<ChatResponse, LlmError>>,
    {
        self.acquire(reserved).await?;
        let result = call().await;
        let outcome = match &result {
            Ok(response) => Outcome::Answered(response.usage),
            Err(error) => Outcome::Failed(error),
        };
        settle(&self.state, reserved, outcome);
        result
    }
}

fn lock(state: &Mutex<Limiter>) -> MutexGuard<'_, Limiter> {
    // Every update leaves the buckets consistent, so a poisoned lock is still usable.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How a call ended, for the limiter.
enum Outcome<'a> {
    /// Answered, with this usage.
    Answered(Usage),
    /// Failed (the provider bills nothing).
    Failed(&'a LlmError),
    /// A stream dropped midway: what it reported so far, and no verdict on the rate.
    Abandoned(Usage),
}

/// Settles a call: corrects the token reservation to the real usage and adapts to 429s.
fn settle(state: &Mutex<Limiter>, reserved: u64, outcome: Outcome<'_>) {
    let mut guard = lock(state);
    let limiter = &mut *guard;
    let used = match outcome {
        Outcome::Answered(usage) => {
            limiter.factor = (limiter.factor + INCREASE).min(1.0);
            usage.total()
        }
        Outcome::Abandoned(usage) => usage.total(),
        Outcome::Failed(error) => {
            if let LlmError::RateLimited { retry_after, .. } = error {
                let until = super::later(Instant::now(), retry_after.unwrap_or(DEFAULT_PAUSE));
                limiter.paused_until = Some(limiter.paused_until.map_or(until, |u| u.max(until)));
                limiter.factor = (limiter.factor * DECREASE).max(MIN_FACTOR);
            }
            0
        }
    };
    if let Some(bucket) = limiter.tokens.as_mut() {
        #[allow(clippy::cast_precision_loss)]
        let correction = reserved as f64 - used as f64;
        let capacity = bucket.per_minute * limiter.factor;
        bucket.level = (bucket.level + correction).min(capacity);
    }
}

/// Settles a stream when it ends (or with what it reported when it is dropped).
struct StreamSettlement {
    state: Arc<Mutex<Limiter>>,
    reserved: u64,
    usage: Usage,
    settled: bool,
}

impl StreamSettlement {
    fn settle(&mut self, error: Option<&LlmError>) {
        if !self.settled {
            self.settled = true;
            let outcome = match error {
                Some(error) => Outcome::Failed(error),
                None => Outcome::Answered(self.usage),
            };
            settle(&self.state, self.reserved, outcome);
        }
    }
}

impl Drop for StreamSettlement {
    fn drop(&mut self) {
        if !self.settled {
            self.settled = true;
            settle(&self.state, self.reserved, Outcome::Abandoned(self.usage));
        }
    }
}

#[async_trait]
impl<P: LlmProvider> LlmProvider for RateLimiter<P> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn capabilities(&self) -> ProviderCapabilities {
        self.inner.capabilities()
    }

    async fn complete(&self, request: ChatRequest) -> Result<ChatResponse, LlmError> {
        let reserved = request.estimated_input_tokens() + u64::from(request.max_tokens);
        self.limited(reserved, || self.inner.complete(request))
            .await
    }

    async fn complete_ref(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
        let reserved = request.estimated_input_tokens() + u64::from(request.max_tokens);
        self.limited(reserved, || self.inner.complete_ref(request))
            .await
    }

    async fn stream(&self, request: ChatRequest) -> Result<EventStream, LlmError> {
        let reserved = request.estimated_input_tokens() + u64::from(request.max_tokens);
        self.acquire(reserved).await?;
        let events = match self.inner.stream(request).await {
            Ok(events) => events,
            Err(error) => {
                settle(&self.state, reserved, Outcome::Failed(&error));
                return Err(error);
            }
        };
        let mut settlement = StreamSettlement {
            state: Arc::clone(&self.state),
            reserved,
            usage: Usage::default(),
            settled: false,
        };
        Ok(events
            .map(move |item| {
                match &item {
                    Ok(StreamEvent::MessageStart { usage, .. })
                    | Ok(StreamEvent::MessageDelta { usage, .. }) => settlement.usage.add(usage),
                    Ok(StreamEvent::MessageStop) => settlement.settle(None),
                    Err(error) => settlement.settle(Some(error)),
                    Ok(_) => {}
                }
                item
            })
            .boxed())
    }
}
