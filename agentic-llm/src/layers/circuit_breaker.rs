//! [`CircuitBreaker`]: stops calling a provider that keeps failing, and fails fast with a
//! typed [`LlmError::CircuitOpen`] until a cool-down has passed.
//!
//! States: **closed** (calls go through; outcomes are recorded in a sliding time window),
//! **open** (calls fail at once, without touching the provider), **half-open** (after the
//! cool-down a few probe calls go through: a success closes the circuit, a failure opens it
//! again for another cool-down).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use tokio::time::Instant;

use crate::stream::StreamEvent;
use crate::{ChatRequest, ChatResponse, EventStream, LlmError, LlmProvider, ProviderCapabilities};

/// When a [`CircuitBreaker`] opens and for how long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Open when at least this share of the calls in the window failed (default 0.5).
    pub failure_rate: f64,
    /// ... and the window holds at least this many calls (default 5), so that one failure
    /// out of one call does not open it.
    pub minimum_calls: usize,
    /// How far back outcomes count (default 30 s; kept in tenths of it, so outcomes age out
    /// to within a tenth of the window).
    pub window: Duration,
    /// How long the circuit stays open before probing (default 30 s).
    pub cool_down: Duration,
    /// Calls let through at once while half-open (default 1).
    pub half_open_probes: usize,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_rate: 0.5,
            minimum_calls: 5,
            window: Duration::from_secs(30),
            cool_down: Duration::from_secs(30),
            half_open_probes: 1,
        }
    }
}

/// The state of a [`CircuitBreaker`], for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Calls go through.
    Closed,
    /// Calls fail fast.
    Open,
    /// Probe calls go through.
    HalfOpen,
}

#[derive(Debug)]
enum Mode {
    Closed,
    Open { until: Instant },
    HalfOpen { probes: usize },
}

/// Outcomes of the calls that started in one tenth of the window.
#[derive(Debug, Clone, Copy)]
struct Slot {
    start: Instant,
    calls: usize,
    failures: usize,
}

/// Outcomes of recent calls while closed, in slots of a tenth of the window, oldest first,
/// with running totals: recording is O(1) and the memory is bounded whatever the call
/// rate (a list of every outcome grew with it, and counting it cost a scan per call).
#[derive(Debug, Default)]
struct Window {
    slots: VecDeque<Slot>,
    calls: usize,
    failures: usize,
}

impl Window {
    fn record(&mut self, now: Instant, failed: bool, window: Duration) {
        let slot_length = (window / 10).max(Duration::from_millis(1));
        while let Some(oldest) = self.slots.front() {
            if now.duration_since(oldest.start) < window {
                break;
            }
            self.calls -= oldest.calls;
            self.failures -= oldest.failures;
            self.slots.pop_front();
        }
        let failures = usize::from(failed);
        match self.slots.back_mut() {
            Some(slot) if now.duration_since(slot.start) < slot_length => {
                slot.calls += 1;
                slot.failures += failures;
            }
            _ => self.slots.push_back(Slot {
                start: now,
                calls: 1,
                failures,
            }),
        }
        self.calls += 1;
        self.failures += failures;
    }

    fn clear(&mut self) {
        *self = Window::default();
    }
}

#[derive(Debug)]
struct Breaker {
    mode: Mode,
    outcomes: Window,
}

/// What a call was admitted as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ticket {
    Normal,
    Probe,
}

/// A provider guarded by a circuit breaker. See the [module docs](self).
///
/// A failure is an error the provider's health explains: [`LlmError::is_retryable`] ones
/// (5xx, overload, rate limits, timeouts, dropped connections). A 400 or 401 is the caller's
/// problem and counts as a success: the provider answered. A stream counts when it ends: a
/// `MessageStop` is a success, an error item a failure; a stream dropped before either does
/// not count.
///
/// Clones share the breaker state.
#[derive(Debug, Clone)]
pub struct CircuitBreaker<P> {
    inner: P,
    config: BreakerConfig,
    // A std `Mutex`: each critical section is a few comparisons and a push, never held
    // across an `.await`, so an async mutex would only add overhead.
    state: Arc<Mutex<Breaker>>,
}

impl<P: LlmProvider> CircuitBreaker<P> {
    /// Wraps `inner`, closed.
    pub fn new(inner: P, config: BreakerConfig) -> Self {
        CircuitBreaker {
            inner,
            config,
            state: Arc::new(Mutex::new(Breaker {
                mode: Mode::Closed,
                outcomes: Window::default(),
            })),
        }
    }

    /// The current state (an open circuit whose cool-down is over reports half-open).
    pub fn state(&self) -> CircuitState {
        let breaker = lock(&self.state);
        match breaker.mode {
            Mode::Closed => CircuitState::Closed,
            Mode::Open { until } if Instant::now() < until => CircuitState::Open,
            Mode::Open { .. } | Mode::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// The wrapped provider.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    fn admit(&self) -> Result<Ticket, LlmError> {
        let mut breaker = lock(&self.state);
        match breaker.mode {
            // The common case reads no clock.
            Mode::Closed => Ok(Ticket::Normal),
            Mode::Open { until } => {
                let now = Instant::now();
                if now < until {
                    return Err(LlmError::CircuitOpen {
                        provider: self.inner.name().to_owned(),
                        retry_after: Some(until - now),
                    });
                }
                breaker.mode = Mode::HalfOpen { probes: 1 };
                Ok(Ticket::Probe)
            }
            Mode::HalfOpen { probes } if probes < self.config.half_open_probes => {
                breaker.mode = Mode::HalfOpen { probes: probes + 1 };
                Ok(Ticket::Probe)
            }
            Mode::HalfOpen { .. } => Err(LlmError::CircuitOpen {
                provider: self.inner.name().to_owned(),
                retry_after: None,
            }),
        }
    }
}

impl<P: LlmProvider> CircuitBreaker<P> {
    /// Admits a call, makes it (`call` is only invoked once admitted) and records how it
    /// ended.
    async fn guarded<F, Fut>(&self, call: F) -> Result<ChatResponse, LlmError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<ChatResponse, LlmError>>,
    {
        let ticket = self.admit()?;
        // Dropped mid-call (the caller gave up): no verdict, but a probe slot is released.
        let mut outcome = StreamOutcome {
            state: Arc::clone(&self.state),
            config: self.config,
            ticket,
            recorded: false,
        };
        let result = call().await;
        outcome.record(result.as_ref().err().is_some_and(is_failure));
        result
    }
}

fn lock(state: &Mutex<Breaker>) -> MutexGuard<'_, Breaker> {
    // Every update leaves the state consistent, so a poisoned lock is still usable.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether an error says something about the provider's health.
fn is_failure(error: &LlmError) -> bool {
    // An inner breaker's fast failure is not a new observation of the provider.
    error.is_retryable() && !matches!(error, LlmError::CircuitOpen { .. })
}

/// Records one outcome; `None` means "no verdict" (a stream dropped midway).
fn record(state: &Mutex<Breaker>, config: &BreakerConfig, ticket: Ticket, failed: Option<bool>) {
    let mut breaker = lock(state);
    let now = Instant::now();
    if ticket == Ticket::Probe {
        match failed {
            Some(true) => {
                breaker.mode = Mode::Open {
                    until: super::later(now, config.cool_down),
                };
            }
            Some(false) => {
                breaker.mode = Mode::Closed;
                breaker.outcomes.clear();
            }
            None => {
                if let Mode::HalfOpen { probes } = &mut breaker.mode {
                    *probes = probes.saturating_sub(1);
                }
            }
        }
        return;
    }
    let Some(failed) = failed else { return };
    // Outcomes of calls admitted before the circuit opened do not reopen it or count later.
    if !matches!(breaker.mode, Mode::Closed) {
        return;
    }
    breaker.outcomes.record(now, failed, config.window);
    let calls = breaker.outcomes.calls;
    #[allow(clippy::cast_precision_loss)]
    let rate = breaker.outcomes.failures as f64 / calls.max(1) as f64;
    if failed && calls >= config.minimum_calls && rate >= config.failure_rate {
        breaker.mode = Mode::Open {
            until: super::later(now, config.cool_down),
        };
        breaker.outcomes.clear();
    }
}

/// Records the outcome of a stream when it ends, or "no verdict" when it is dropped.
struct StreamOutcome {
    state: Arc<Mutex<Breaker>>,
    config: BreakerConfig,
    ticket: Ticket,
    recorded: bool,
}

impl StreamOutcome {
    fn record(&mut self, failed: bool) {
        if !self.recorded {
            self.recorded = true;
            record(&self.state, &self.config, self.ticket, Some(failed));
        }
    }
}

impl Drop for StreamOutcome {
    fn drop(&mut self) {
        if !self.recorded {
            record(&self.state, &self.config, self.ticket, None);
        }
    }
}

#[async_trait]
impl<P: LlmProvider> LlmProvider for CircuitBreaker<P> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn capabilities(&self) -> ProviderCapabilities {
        self.inner.capabilities()
    }

    async fn complete(&self, request: ChatRequest) -> Result<ChatResponse, LlmError> {
        self.guarded(|| self.inner.complete(request)).await
    }

    async fn complete_ref(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
        self.guarded(|| self.inner.complete_ref(request)).await
    }

    async fn stream(&self, request: ChatRequest) -> Result<EventStream, LlmError> {
        let ticket = self.admit()?;
        let mut outcome = StreamOutcome {
            state: Arc::clone(&self.state),
            config: self.config,
            ticket,
            recorded: false,
        };
        let events = match self.inner.stream(request).await {
            Ok(events) => events,
            Err(error) => {
                outcome.record(is_failure(&error));
                return Err(error);
            }
        };
        Ok(events
            .map(move |item| {
                match &item {
                    Ok(StreamEvent::MessageStop) => outcome.record(false),
                    Err(error) => outcome.record(is_failure(error)),
                    Ok(_) => {}
                }
                item
            })
            .boxed())
    }
}
