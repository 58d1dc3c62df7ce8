//! The layers on scripted providers, on the paused tokio clock: every wait and bound is
//! asserted exactly.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentic_llm::layers::*;
use agentic_llm::stream::{BlockStart, StreamEvent};
use agentic_llm::{
    CacheControl, ChatRequest, ChatResponse, ContentBlock, Cost, EventStream, LlmError,
    LlmProvider, ProviderCapabilities, ScriptedProvider, ToolDefinition, Usage, collect_stream,
};
use async_trait::async_trait;
use futures::StreamExt;
use proptest::prelude::*;
use tokio::time::Instant;

fn overloaded() -> LlmError {
    LlmError::Overloaded {
        provider: "scripted".into(),
        message: "Overloaded".into(),
        retry_after: None,
    }
}

fn rate_limited(after: Option<Duration>) -> LlmError {
    LlmError::RateLimited {
        provider: "scripted".into(),
        message: "slow down".into(),
        retry_after: after,
    }
}

fn bad_request() -> LlmError {
    LlmError::InvalidRequest {
        provider: "scripted".into(),
        status: 400,
        message: "bad".into(),
    }
}

fn ok() -> ChatResponse {
    ChatResponse::text("ok")
}

/// One scripted stream: each item after its pause.
type Script = Vec<(Duration, Result<StreamEvent, LlmError>)>;

/// A provider whose streams are scripted event by event, with pauses.
#[derive(Default)]
struct Streams {
    scripts: Mutex<VecDeque<Script>>,
    calls: AtomicUsize,
}

impl Streams {
    fn then(self, script: Script) -> Self {
        self.scripts.lock().unwrap().push_back(script);
        self
    }
}

fn text_events(text: &str) -> Script {
    agentic_llm::stream::events_for(&ChatResponse::text(text))
        .into_iter()
        .map(|e| (Duration::ZERO, Ok(e)))
        .collect()
}

#[async_trait]
impl LlmProvider for Streams {
    fn name(&self) -> &str {
        "streams"
    }
    fn capabilities(&self) -> ProviderCapabilities {
        ProviderCapabilities::all_remote()
    }
    async fn complete(&self, request: ChatRequest) -> Result<ChatResponse, LlmError> {
        collect_stream(self.stream(request).await?).await
    }
    async fn stream(&self, _request: ChatRequest) -> Result<EventStream, LlmError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let script = self
            .scripts
            .lock()
            .unwrap()
            .pop_front()
            .expect("no scripted stream left");
        Ok(futures::stream::iter(script)
            .then(|(pause, item)| async move {
                tokio::time::sleep(pause).await;
                item
            })
            .boxed())
    }
}

// ---- retry --------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn retry_waits_what_the_provider_asked_then_succeeds() {
    let llm = ScriptedProvider::new()
        .then_error(|| rate_limited(Some(Duration::from_secs(3))))
        .then(ok());
    let retry = llm.clone().with_retry(RetryPolicy::default());
    let started = Instant::now();
    assert_eq!(
        retry
            .complete(ChatRequest::user("x"))
            .await
            .unwrap()
            .text_content(),
        "ok"
    );
    let waited = started.elapsed();
    // The hint, plus at most 10 % of the first backoff (500 ms) as jitter.
    assert!(waited >= Duration::from_secs(3), "{waited:?}");
    assert!(waited <= Duration::from_millis(3050), "{waited:?}");
    assert_eq!(llm.call_count(), 2);
}

#[tokio::test(start_paused = true)]
async fn retry_gives_up_after_max_attempts_and_skips_client_errors() {
    let llm = ScriptedProvider::new().respond_with(|_| Err(overloaded()));
    let retry = llm.clone().with_retry(RetryPolicy {
        max_attempts: 3,
        ..RetryPolicy::default()
    });
    let started = Instant::now();
    assert!(matches!(
        retry.complete(ChatRequest::user("x")).await,
        Err(LlmError::Overloaded { .. })
    ));
    assert_eq!(llm.call_count(), 3);
    // Two backoffs, each at most 500 ms then 1 s (full jitter).
    assert!(started.elapsed() <= Duration::from_millis(1500));

    let llm = ScriptedProvider::new().respond_with(|_| Err(bad_request()));
    let retry = llm.clone().with_retry(RetryPolicy::default());
    assert!(matches!(
        retry.complete(ChatRequest::user("x")).await,
        Err(LlmError::InvalidRequest { .. })
    ));
    assert_eq!(llm.call_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn retry_does_not_wait_past_its_total_time() {
    let llm =
        ScriptedProvider::new().respond_with(|_| Err(rate_limited(Some(Duration::from_secs(600)))));
    let retry = llm.clone().with_retry(RetryPolicy {
        max_total: Duration::from_secs(60),
        ..RetryPolicy::default()
    });
    let started = Instant::now();
    let error = retry.complete(ChatRequest::user("x")).await.unwrap_err();
    assert_eq!(error.retry_after(), Some(Duration::from_secs(600)));
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(llm.call_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn retry_retries_a_stream_whose_first_item_is_an_error() {
    let streams = Arc::new(
        Streams::default()
            .then(vec![(Duration::ZERO, Err(overloaded()))])
            .then(text_events("second time lucky")),
    );
    let retry = Arc::clone(&streams).with_retry(RetryPolicy::default());
    let answer = collect_stream(retry.stream(ChatRequest::user("x")).await.unwrap())
        .await
        .unwrap();
    assert_eq!(answer.text_content(), "second time lucky");
    assert_eq!(streams.calls.load(Ordering::SeqCst), 2);
}

proptest! {
    /// Backoffs stay within full-jitter bounds, and never under a provider's hint.
    #[test]
    fn backoff_is_bounded(
        retry in 0u32..40,
        unit in 0.0f64..1.0,
        initial_ms in 1u64..2_000,
        max_ms in 1u64..120_000,
        hint_ms in proptest::option::of(0u64..100_000),
    ) {
        let policy = RetryPolicy {
            initial_backoff: Duration::from_millis(initial_ms),
            max_backoff: Duration::from_millis(max_ms),
            ..RetryPolicy::default()
        };
        let cap = Duration::from_millis(initial_ms)
            .saturating_mul(2u32.saturating_pow(retry.min(30)))
            .min(Duration::from_millis(max_ms));
        let wait = policy.backoff(retry, hint_ms.map(Duration::from_millis), unit);
        match hint_ms {
            None => prop_assert!(wait <= cap),
            Some(hint) => {
                let hint = Duration::from_millis(hint);
                prop_assert!(wait >= hint);
                prop_assert!(wait <= hint + cap.mul_f64(0.1) + Duration::from_nanos(1));
            }
        }
    }
}

// ---- circuit breaker ------------------------------------------------------------------------

fn switchable() -> (ScriptedProvider, Arc<AtomicBool>) {
    let healthy = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&healthy);
    let llm = ScriptedProvider::new().respond_with(move |_| {
        if flag.load(Ordering::SeqCst) {
            Ok(ok())
        } else {
            Err(overloaded())
        }
    });
    (llm, healthy)
}

fn breaker_config() -> BreakerConfig {
    BreakerConfig {
        failure_rate: 0.5,
        minimum_calls: 3,
        window: Duration::from_secs(30),
        cool_down: Duration::from_secs(10),
        half_open_probes: 1,
    }
}

#[tokio::test(start_paused = true)]
async fn breaker_opens_fails_fast_probes_and_closes() {
    let (llm, healthy) = switchable();
    let breaker = llm.clone().with_circuit_breaker(breaker_config());
    for _ in 0..3 {
        assert!(matches!(
            breaker.complete(ChatRequest::user("x")).await,
            Err(LlmError::Overloaded { .. })
        ));
    }
    assert_eq!(breaker.state(), CircuitState::Open);
    let error = breaker.complete(ChatRequest::user("x")).await.unwrap_err();
    assert!(
        matches!(error, LlmError::CircuitOpen { ref provider, retry_after: Some(d) } if provider == "scripted" && d == Duration::from_secs(10))
    );
    assert!(error.is_retryable());
    assert_eq!(
        llm.call_count(),
        3,
        "an open circuit does not call the provider"
    );

    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(breaker.state(), CircuitState::HalfOpen);
    // A failed probe opens it again for a full cool-down.
    assert!(breaker.complete(ChatRequest::user("x")).await.is_err());
    assert_eq!(breaker.state(), CircuitState::Open);
    tokio::time::advance(Duration::from_secs(10)).await;
    healthy.store(true, Ordering::SeqCst);
    assert!(breaker.complete(ChatRequest::user("x")).await.is_ok());
    assert_eq!(breaker.state(), CircuitState::Closed);
    assert_eq!(llm.call_count(), 5);
}

#[tokio::test(start_paused = true)]
async fn breaker_ignores_client_errors_and_old_failures() {
    let llm = ScriptedProvider::new().respond_with(|_| Err(bad_request()));
    let breaker = llm.with_circuit_breaker(breaker_config());
    for _ in 0..10 {
        let _ = breaker.complete(ChatRequest::user("x")).await;
    }
    assert_eq!(breaker.state(), CircuitState::Closed);

    let (llm, _) = switchable();
    let breaker = llm.with_circuit_breaker(breaker_config());
    for _ in 0..2 {
        let _ = breaker.complete(ChatRequest::user("x")).await;
    }
    tokio::time::advance(Duration::from_secs(31)).await;
    let _ = breaker.complete(ChatRequest::user("x")).await;
    // Only one failure is still in the window: fewer than the minimum of three calls.
    assert_eq!(breaker.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn breaker_counts_stream_outcomes() {
    let failing = || {
        vec![
            (
                Duration::ZERO,
                Ok(StreamEvent::MessageStart {
                    id: "m".into(),
                    model: "x".into(),
                    usage: Usage::default(),
                }),
            ),
            (Duration::ZERO, Err(overloaded())),
        ]
    };
    let streams = Streams::default()
        .then(failing())
        .then(failing())
        .then(failing());
    let breaker = streams.with_circuit_breaker(breaker_config());
    for _ in 0..3 {
        assert!(
            collect_stream(breaker.stream(ChatRequest::user("x")).await.unwrap())
                .await
                .is_err()
        );
    }
    assert_eq!(breaker.state(), CircuitState::Open);
    assert!(matches!(
        breaker.stream(ChatRequest::user("x")).await,
        Err(LlmError::CircuitOpen { .. })
    ));
}

// ---- rate limiter ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn limiter_spaces_requests_per_minute() {
    let llm = ScriptedProvider::new().respond_with(|_| Ok(ok()));
    let limiter = llm.with_rate_limit(RateLimit {
        requests_per_minute: Some(60),
        tokens_per_minute: None,
        max_wait: Duration::from_secs(30),
    });
    let started = Instant::now();
    for _ in 0..60 {
        limiter.complete(ChatRequest::user("x")).await.unwrap();
    }
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "a full minute's allowance is available at once"
    );
    limiter.complete(ChatRequest::user("x")).await.unwrap();
    limiter.complete(ChatRequest::user("x")).await.unwrap();
    // One request per second after that.
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1999) && waited <= Duration::from_millis(2001),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn limiter_refuses_a_wait_beyond_its_bound() {
    let llm = ScriptedProvider::new().respond_with(|_| Ok(ok()));
    let limiter = llm.clone().with_rate_limit(RateLimit {
        requests_per_minute: Some(1),
        tokens_per_minute: None,
        max_wait: Duration::from_secs(5),
    });
    limiter.complete(ChatRequest::user("x")).await.unwrap();
    let error = limiter.complete(ChatRequest::user("x")).await.unwrap_err();
    let wait = error.retry_after().unwrap();
    assert!(
        wait > Duration::from_secs(59) && wait <= Duration::from_secs(60),
        "{wait:?}"
    );
    assert!(
        matches!(error, LlmError::RateLimited { ref message, .. } if message.starts_with("local rate limit"))
    );
    assert_eq!(llm.call_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn limiter_reserves_tokens_and_corrects_them_with_usage() {
    let llm = ScriptedProvider::new().respond_with(|_| {
        Ok(ChatResponse {
            usage: Usage {
                input_tokens: 10,
                output_tokens: 10,
                ..Usage::default()
            },
            ..ok()
        })
    });
    let limiter = llm.with_rate_limit(RateLimit {
        requests_per_minute: None,
        tokens_per_minute: Some(1_000),
        max_wait: Duration::from_secs(120),
    });
    let started = Instant::now();
    // Each call reserves about 400 (prompt + max_tokens) but uses 20: the rest comes back,
    // so ten calls fit in a minute's 1 000 tokens without waiting.
    for _ in 0..10 {
        limiter
            .complete(ChatRequest::user("x").max_tokens(400))
            .await
            .unwrap();
    }
    assert_eq!(started.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn limiter_pauses_and_slows_down_after_a_429() {
    let llm = ScriptedProvider::new()
        .then_error(|| rate_limited(Some(Duration::from_secs(2))))
        .respond_with(|_| Ok(ok()));
    let limiter = llm.with_rate_limit(RateLimit::per_minute(600, 1_000_000));
    assert!(limiter.complete(ChatRequest::user("x")).await.is_err());
    assert!((limiter.rate_factor() - 0.75).abs() < 1e-9);
    let started = Instant::now();
    limiter.complete(ChatRequest::user("x")).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(limiter.rate_factor() > 0.75);
}

#[tokio::test(start_paused = true)]
async fn absurd_durations_do_not_panic_the_layers() {
    // A provider's Retry-After can be any number: a huge one pauses the limiter (as long as
    // the clock can say), it does not overflow the clock.
    let llm = ScriptedProvider::new()
        .then_error(|| rate_limited(Some(Duration::MAX)))
        .respond_with(|_| Ok(ok()));
    let limiter = llm.with_rate_limit(RateLimit::per_minute(600, 1_000_000));
    assert!(limiter.complete(ChatRequest::user("x")).await.is_err());
    // The retry layer gives up on such a hint (past its total budget) instead of overflowing.
    let retried = ScriptedProvider::new()
        .respond_with(|_| Err(rate_limited(Some(Duration::MAX))))
        .with_retry(RetryPolicy::default());
    let error = retried.complete(ChatRequest::user("x")).await.unwrap_err();
    assert!(matches!(error, LlmError::RateLimited { .. }), "{error}");
    // Config durations of Duration::MAX mean "no limit" in effect.
    let unbounded = ScriptedProvider::new()
        .respond_with(|_| Ok(ok()))
        .with_timeout(Timeouts::call(Duration::MAX));
    assert!(unbounded.complete(ChatRequest::user("x")).await.is_ok());
}

// ---- timeout --------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn timeout_bounds_a_call() {
    let llm = ScriptedProvider::new()
        .respond_with(|_| Ok(ok()))
        .with_latency(Duration::from_secs(5));
    let bounded = llm
        .clone()
        .with_timeout(Timeouts::call(Duration::from_secs(1)));
    let started = Instant::now();
    let error = bounded.complete(ChatRequest::user("x")).await.unwrap_err();
    assert!(matches!(error, LlmError::Timeout(d) if d == Duration::from_secs(1)));
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    assert!(error.is_retryable());
    let patient = llm.with_timeout(Timeouts::call(Duration::from_secs(6)));
    assert!(patient.complete(ChatRequest::user("x")).await.is_ok());
}

fn slow_first_token(pause: Duration) -> Script {
    vec![
        (
            Duration::ZERO,
            Ok(StreamEvent::MessageStart {
                id: "m".into(),
                model: "x".into(),
                usage: Usage::default(),
            }),
        ),
        (
            Duration::ZERO,
            Ok(StreamEvent::BlockStart {
                index: 0,
                block: BlockStart::Text,
            }),
        ),
        (
            pause,
            Ok(StreamEvent::TextDelta {
                index: 0,
                text: "late".into(),
            }),
        ),
        (
            Duration::from_secs(1),
            Ok(StreamEvent::TextDelta {
                index: 0,
                text: " and slow".into(),
            }),
        ),
        (
            Duration::ZERO,
            Ok(StreamEvent::MessageDelta {
                stop_reason: None,
                stop_sequence: None,
                usage: Usage::default(),
            }),
        ),
        (Duration::ZERO, Ok(StreamEvent::MessageStop)),
    ]
}

#[tokio::test(start_paused = true)]
async fn timeout_bounds_the_first_token_and_the_whole_stream() {
    let streams = Streams::default()
        .then(slow_first_token(Duration::from_secs(3)))
        .then(slow_first_token(Duration::from_secs(3)))
        .then(slow_first_token(Duration::from_secs(3)));
    let streams = Arc::new(streams);
    let ttft =
        Arc::clone(&streams).with_timeout(Timeouts::default().first_token(Duration::from_secs(2)));
    let items: Vec<_> = ttft
        .stream(ChatRequest::user("x"))
        .await
        .unwrap()
        .collect()
        .await;
    // message_start and the block start arrived; then nothing for 2 s.
    assert_eq!(items.len(), 3);
    assert!(matches!(items[2], Err(LlmError::Timeout(d)) if d == Duration::from_secs(2)));

    // A first-token bound that is met does not cut the rest of the stream.
    let ok_ttft =
        Arc::clone(&streams).with_timeout(Timeouts::default().first_token(Duration::from_secs(4)));
    let answer = collect_stream(ok_ttft.stream(ChatRequest::user("x")).await.unwrap())
        .await
        .unwrap();
    assert_eq!(answer.text_content(), "late and slow");

    // The call bound covers the whole stream: 3.5 s is not enough for 4 s of stream.
    let whole = streams.with_timeout(Timeouts::call(Duration::from_millis(3500)));
    let error = collect_stream(whole.stream(ChatRequest::user("x")).await.unwrap())
        .await
        .unwrap_err();
    assert!(matches!(error, LlmError::Timeout(d) if d == Duration::from_millis(3500)));
}

// ---- cache ----------------------------------------------------------------------------------

fn counting() -> ScriptedProvider {
    let n = Arc::new(AtomicUsize::new(0));
    ScriptedProvider::new().respond_with(move |_| {
        Ok(ChatResponse::text(format!(
            "answer {}",
            n.fetch_add(1, Ordering::SeqCst) + 1
        )))
    })
}

#[tokio::test(start_paused = true)]
async fn cache_answers_deterministic_requests_only() {
    let llm = counting();
    let cache = llm.clone().with_cache(CacheConfig::default());
    let request = ChatRequest::user("2+2?").temperature(0.0);
    let first = cache.complete(request.clone()).await.unwrap();
    // Tags and other metadata do not change the answer, so they do not change the key.
    let second = cache
        .complete(request.clone().tag("goal", "g-1"))
        .await
        .unwrap();
    assert_eq!(first, second);
    assert_eq!((cache.hits(), cache.misses(), llm.call_count()), (1, 1, 1));
    // A different request is a different key.
    cache
        .complete(ChatRequest::user("3+3?").temperature(0.0))
        .await
        .unwrap();
    assert_eq!(llm.call_count(), 2);
    // Sampling requests are never cached...
    cache.complete(ChatRequest::user("2+2?")).await.unwrap();
    cache.complete(ChatRequest::user("2+2?")).await.unwrap();
    assert_eq!(llm.call_count(), 4);
    // ...unless marked cacheable.
    let mut marked = ChatRequest::user("a poem").temperature(1.0);
    marked.metadata.cacheable = true;
    cache.complete(marked.clone()).await.unwrap();
    cache.complete(marked).await.unwrap();
    assert_eq!(llm.call_count(), 5);
}

#[tokio::test(start_paused = true)]
async fn cache_entries_expire_and_the_least_recently_used_goes() {
    let llm = counting();
    let cache = llm.clone().with_cache(CacheConfig {
        ttl: Duration::from_secs(60),
        max_entries: 2,
    });
    let a = ChatRequest::user("a").temperature(0.0);
    let b = ChatRequest::user("b").temperature(0.0);
    let c = ChatRequest::user("c").temperature(0.0);
    cache.complete(a.clone()).await.unwrap();
    cache.complete(b.clone()).await.unwrap();
    cache.complete(a.clone()).await.unwrap(); // a is now more recent than b
    cache.complete(c.clone()).await.unwrap(); // evicts b
    assert_eq!(cache.len(), 2);
    assert_eq!(llm.call_count(), 3);
    cache.complete(a.clone()).await.unwrap();
    assert_eq!(llm.call_count(), 3, "a survived");
    cache.complete(b.clone()).await.unwrap();
    assert_eq!(llm.call_count(), 4, "b was evicted");
    tokio::time::advance(Duration::from_secs(61)).await;
    cache.complete(b).await.unwrap();
    assert_eq!(llm.call_count(), 5, "expired");
}

#[tokio::test(start_paused = true)]
async fn cache_stores_completed_streams_and_replays_them() {
    let llm = counting();
    let cache = llm.clone().with_cache(CacheConfig::default());
    let request = ChatRequest::user("stream me").temperature(0.0);
    let streamed = collect_stream(cache.stream(request.clone()).await.unwrap())
        .await
        .unwrap();
    let replayed = collect_stream(cache.stream(request.clone()).await.unwrap())
        .await
        .unwrap();
    let completed = cache.complete(request).await.unwrap();
    assert_eq!(streamed, replayed);
    assert_eq!(streamed, completed);
    assert_eq!(llm.call_count(), 1);
}

#[test]
fn request_keys_are_stable_and_ignore_key_order() {
    let a = ChatRequest::user("x")
        .temperature(0.0)
        .tool(ToolDefinition::new(
            "t",
            "d",
            serde_json::from_str(
                r#"{"type":"object","properties":{"a":{"type":"string"},"b":{"type":"integer"}}}"#,
            )
            .unwrap(),
        ));
    let b = ChatRequest::user("x")
        .temperature(0.0)
        .tool(ToolDefinition::new(
            "t",
            "d",
            serde_json::from_str(
                r#"{"properties":{"b":{"type":"integer"},"a":{"type":"string"}},"type":"object"}"#,
            )
            .unwrap(),
        ));
    assert_eq!(request_key("p", &a), request_key("p", &b));
    assert_ne!(request_key("p", &a), request_key("q", &a));
    assert_ne!(
        request_key("p", &a),
        request_key("p", &a.clone().max_tokens(5))
    );
    // Pinned: the key must not change between runs, processes or compiler versions.
    assert_eq!(
        request_key("anthropic", &ChatRequest::user("hello").temperature(0.0)),
        request_key("anthropic", &ChatRequest::user("hello").temperature(0.0))
    );
    assert_eq!(
        format!(
            "{:032x}",
            request_key("anthropic", &ChatRequest::user("hello").temperature(0.0))
        ),
        PINNED_KEY
    );
}

/// The key of `("anthropic", user "hello", temperature 0)`, computed once (serde_json without
/// `preserve_order`, as this workspace builds it). Changed deliberately once, when the key
/// went from FNV-1a-128 over the request's JSON text (`c33926965f9fd98bf8b8312abbeda4db`) to
/// XXH3-128 over its canonical binary encoding: a third of the layers' CPU per call was that
/// hash. A change here means every key a shared cache holds changes: do it on purpose only.
const PINNED_KEY: &str = "6c74f47956a87cbb183ce9c442d1e71b";

// ---- cost meter and budgets -----------------------------------------------------------------

#[test]
fn a_user_price_table_from_json_overrides_the_builtin_one() {
    let builtin = PriceTable::builtin();
    let listed = builtin.price("claude-sonnet-4-5").unwrap();
    let changed = ModelPrice::new(listed.input * 2.0, listed.output, listed.cache_write, 0.0);
    let json = serde_json::json!({
        "claude-sonnet-4-5": changed,
        "my-model": {"input": 1.0, "output": 2.0, "cache_write": 1.0, "cache_read": 0.5},
    });
    let mine: PriceTable = serde_json::from_value(json).unwrap();
    assert_eq!(
        mine.models().collect::<Vec<_>>(),
        ["claude-sonnet-4-5", "my-model"]
    );
    // Round trip.
    let text = serde_json::to_string(&mine).unwrap();
    assert_eq!(serde_json::from_str::<PriceTable>(&text).unwrap(), mine);
    let merged = builtin.clone().extend(mine);
    assert_eq!(merged.price("claude-sonnet-4-5"), Some(changed));
    // Snapshot names follow the overridden price too.
    assert_eq!(merged.price("claude-sonnet-4-5-20250929"), Some(changed));
    assert_eq!(
        merged.price("my-model"),
        Some(ModelPrice::new(1.0, 2.0, 1.0, 0.5))
    );
    // The rest of the built-in table is untouched.
    assert_eq!(merged.price("gpt-4o"), builtin.price("gpt-4o"));
    assert_eq!(merged.models().count(), builtin.models().count() + 1);
    // A field left out is an error, not a silent zero.
    assert!(serde_json::from_str::<PriceTable>(r#"{"m": {"input": 1.0}}"#).is_err());
}

#[test]
fn prices_match_names_and_dated_snapshots_only() {
    let table = PriceTable::builtin();
    let sonnet = table.price("claude-sonnet-4-5").unwrap();
    assert_eq!(table.price("claude-sonnet-4-5-20250929"), Some(sonnet));
    assert_eq!(
        table.price("claude-3-7-sonnet-latest"),
        table.price("claude-3-7-sonnet")
    );
    assert_eq!(
        table.price("gpt-4o-mini-2024-07-18"),
        table.price("gpt-4o-mini")
    );
    assert_ne!(table.price("gpt-4o-mini"), table.price("gpt-4o"));
    // A newer version is not an older one's snapshot.
    assert_eq!(table.price("claude-opus-4-8"), None);
    assert_eq!(table.price("gpt-5.4"), None);
    let custom = table.with("llama3.2", ModelPrice::default());
    assert_eq!(custom.price("llama3.2"), Some(ModelPrice::default()));
    assert!(PRICES_AS_OF.starts_with("2025-11"));
}

#[tokio::test]
async fn every_answer_gets_its_cost() {
    let llm = ScriptedProvider::new().respond_with(|_| {
        Ok(ChatResponse {
            model: "claude-sonnet-4-5-20250929".into(),
            usage: Usage {
                input_tokens: 1_000,
                output_tokens: 500,
                cache_read_tokens: 2_000,
                cache_write_tokens: 100,
            },
            ..ok()
        })
    });
    let meter = llm.with_cost_meter(PriceTable::builtin());
    let answer = meter.complete(ChatRequest::user("x")).await.unwrap();
    let expected = (1_000.0 * 3.0 + 500.0 * 15.0 + 2_000.0 * 0.30 + 100.0 * 3.75) / 1e6;
    assert!((answer.cost.unwrap().usd - expected).abs() < 1e-12);
    // Streams carry it as an event before MessageStop.
    let events: Vec<_> = meter
        .stream(ChatRequest::user("x"))
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    let n = events.len();
    assert!(
        matches!(events[n - 2], StreamEvent::Cost { cost } if (cost.usd - expected).abs() < 1e-12)
    );
    assert_eq!(events[n - 1], StreamEvent::MessageStop);
    assert!((meter.total_usd() - 2.0 * expected).abs() < 1e-12);
}

#[tokio::test]
async fn a_call_whose_worst_case_exceeds_the_budget_is_refused() {
    let llm = ScriptedProvider::new().respond_with(|_| {
        Ok(ChatResponse {
            model: "claude-sonnet-4-5".into(),
            usage: Usage {
                input_tokens: 100,
                output_tokens: 100,
                ..Usage::default()
            },
            ..ok()
        })
    });
    let budgets = Budgets::new();
    budgets.set("goal", "g-1", 0.02);
    let meter = llm
        .clone()
        .with_cost_meter(PriceTable::builtin())
        .with_budgets(budgets.clone())
        .default_model("claude-sonnet-4-5");
    // Worst case: ~1 prompt token at $3/M + 1 000 output tokens at $15/M = $0.015.
    let request = ChatRequest::user("hi").max_tokens(1_000).tag("goal", "g-1");
    meter.complete(request.clone()).await.unwrap();
    let spent = budgets.spent("goal", "g-1");
    assert!((spent - (100.0 * 3.0 + 100.0 * 15.0) / 1e6).abs() < 1e-12);
    // $0.0182 left: another worst case of $0.015 fits...
    meter.complete(request.clone()).await.unwrap();
    // ...but with $0.0164 left, one of $0.030 (2 000 output tokens) does not.
    let error = meter
        .complete(request.clone().max_tokens(2_000))
        .await
        .unwrap_err();
    assert!(
        matches!(error, LlmError::BudgetExceeded(ref m) if m.contains("goal=g-1")),
        "{error:?}"
    );
    assert!(!error.is_retryable());
    assert_eq!(
        llm.call_count(),
        2,
        "a refused call never reaches the provider"
    );
    // Requests of other goals are not affected.
    meter
        .complete(ChatRequest::user("hi").max_tokens(2_000).tag("goal", "g-2"))
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn concurrent_calls_cannot_overspend_together() {
    let llm = ScriptedProvider::new()
        .respond_with(|_| {
            Ok(ChatResponse {
                model: "gpt-4o".into(),
                ..ok()
            })
        })
        .with_latency(Duration::from_secs(1));
    let budgets = Budgets::new();
    // One worst case (1 000 output tokens at $10/M = $0.01, plus the prompt) fits, two do not.
    budgets.set("tenant", "acme", 0.015);
    let meter = llm
        .clone()
        .with_cost_meter(PriceTable::builtin())
        .with_budgets(budgets);
    let request = ChatRequest::user("x")
        .model("gpt-4o")
        .max_tokens(1_000)
        .tag("tenant", "acme");
    let (a, b) = tokio::join!(meter.complete(request.clone()), meter.complete(request));
    assert!(a.is_ok() != b.is_ok(), "{a:?} {b:?}");
    assert_eq!(llm.call_count(), 1);
}

#[tokio::test]
async fn unknown_models_follow_the_policy() {
    let llm = ScriptedProvider::new().respond_with(|_| {
        Ok(ChatResponse {
            model: "my-local-model".into(),
            usage: Usage {
                input_tokens: 1_000_000,
                output_tokens: 0,
                ..Usage::default()
            },
            ..ok()
        })
    });
    let dearest = PriceTable::builtin().most_expensive().unwrap();
    let meter = llm.clone().with_cost_meter(PriceTable::builtin());
    let cost = meter
        .complete(ChatRequest::user("x"))
        .await
        .unwrap()
        .cost
        .unwrap();
    assert_eq!(cost, Cost { usd: dearest.input });
    let free = llm
        .clone()
        .with_cost_meter(PriceTable::builtin())
        .unknown_models(UnknownModel::Free);
    assert_eq!(
        free.complete(ChatRequest::user("x")).await.unwrap().cost,
        Some(Cost { usd: 0.0 })
    );
    let budgets = Budgets::new();
    budgets.set("goal", "g", 100.0);
    let strict = llm
        .with_cost_meter(PriceTable::builtin())
        .unknown_models(UnknownModel::Refuse)
        .with_budgets(budgets);
    assert_eq!(
        strict.complete(ChatRequest::user("x")).await.unwrap().cost,
        None
    );
    assert!(matches!(
        strict
            .complete(ChatRequest::user("x").tag("goal", "g"))
            .await,
        Err(LlmError::BudgetExceeded(_))
    ));
}

#[tokio::test]
async fn caching_prompts_makes_the_worst_case_dearer() {
    let llm = ScriptedProvider::new().respond_with(|_| Ok(ok()));
    let budgets = Budgets::new();
    let meter = llm
        .with_cost_meter(PriceTable::builtin())
        .with_budgets(budgets.clone());
    let long = "word ".repeat(4_000); // about 5 000 tokens
    let plain = ChatRequest::user(long.clone())
        .model("claude-sonnet-4-5")
        .max_tokens(1)
        .tag("goal", "c");
    let mut cached = plain.clone();
    cached.system = vec![ContentBlock::Text {
        text: "sys".into(),
        cache_control: Some(CacheControl::Ephemeral { ttl: None }),
    }];
    // 5 000 tokens: $0.015 at the input price, $0.01875 at the cache-write price.
    budgets.set("goal", "c", 0.017);
    assert!(meter.complete(plain).await.is_ok());
    budgets.set("goal", "c", 0.017 + budgets.spent("goal", "c"));
    assert!(matches!(
        meter.complete(cached).await,
        Err(LlmError::BudgetExceeded(_))
    ));
}

// ---- router ---------------------------------------------------------------------------------

#[tokio::test]
async fn router_falls_back_on_retryable_errors_only() {
    let first = ScriptedProvider::new()
        .with_name("first")
        .respond_with(|_| Err(overloaded()));
    let second = ScriptedProvider::new()
        .with_name("second")
        .respond_with(|_| Ok(ChatResponse::text("from second")));
    let router = Router::new()
        .route(Route::new(first.clone()))
        .route(Route::new(second.clone()));
    let answer = router.complete(ChatRequest::user("x")).await.unwrap();
    assert_eq!(answer.text_content(), "from second");
    assert_eq!((first.call_count(), second.call_count()), (1, 1));

    let picky = ScriptedProvider::new().respond_with(|_| Err(bad_request()));
    let router = Router::new()
        .route(Route::new(picky.clone()))
        .route(Route::new(second.clone()));
    assert!(matches!(
        router.complete(ChatRequest::user("x")).await,
        Err(LlmError::InvalidRequest { .. })
    ));
    assert_eq!(
        second.call_count(),
        1,
        "a bad request is not sent elsewhere"
    );

    // Every route failing: the last error, with its wait, for an outer retry.
    let also_down =
        ScriptedProvider::new().respond_with(|_| Err(rate_limited(Some(Duration::from_secs(7)))));
    let router = Router::new()
        .route(Route::new(first))
        .route(Route::new(also_down));
    let error = router.complete(ChatRequest::user("x")).await.unwrap_err();
    assert_eq!(error.retry_after(), Some(Duration::from_secs(7)));
}

/// Through `complete_ref` (what `Retry` and `ResponseCache` call): the router lends the
/// request to each route, falls back the same way, and a route's model still replaces the
/// request's.
#[tokio::test]
async fn router_lends_the_request_and_still_sets_a_routes_model() {
    let first = ScriptedProvider::new()
        .with_name("first")
        .respond_with(|_| Err(overloaded()));
    let echo = |name: &str| {
        ScriptedProvider::new()
            .with_name(name)
            .respond_with(|r| Ok(ChatResponse::text(r.model.clone().unwrap_or_default())))
    };
    let (plain, renamed) = (echo("plain"), echo("renamed"));
    let request = ChatRequest::user("x").model("asked-for");

    let router = Router::new()
        .route(Route::new(first.clone()))
        .route(Route::new(plain.clone()));
    let answer = router.complete_ref(&request).await.unwrap();
    assert_eq!(answer.text_content(), "asked-for");
    assert_eq!((first.call_count(), plain.call_count()), (1, 1));

    let router = Router::new()
        .route(Route::new(first.clone()).model("first-model"))
        .route(Route::new(renamed.clone()).model("route-model"));
    let answer = router.complete_ref(&request).await.unwrap();
    assert_eq!(answer.text_content(), "route-model");
    assert_eq!(
        request.model.as_deref(),
        Some("asked-for"),
        "the lent request is unchanged"
    );
    // The same through a cache (a miss lends the request) and an owned call.
    let cached = Router::new()
        .route(Route::new(first))
        .route(Route::new(renamed).model("route-model"))
        .with_cache(CacheConfig::default());
    let answer = cached.complete(request.temperature(0.0)).await.unwrap();
    assert_eq!(answer.text_content(), "route-model");
}

#[tokio::test(start_paused = true)]
async fn router_falls_back_past_an_open_circuit_without_calling_it() {
    let (flaky, _) = switchable();
    let guarded = flaky.clone().with_circuit_breaker(breaker_config());
    let backup = ScriptedProvider::new().respond_with(|_| Ok(ChatResponse::text("backup")));
    let router = Router::new()
        .route(Route::new(guarded))
        .route(Route::new(backup.clone()));
    for _ in 0..5 {
        assert_eq!(
            router
                .complete(ChatRequest::user("x"))
                .await
                .unwrap()
                .text_content(),
            "backup"
        );
    }
    assert_eq!(
        flaky.call_count(),
        3,
        "after three failures the circuit opened"
    );
    assert_eq!(backup.call_count(), 5);
}

#[tokio::test]
async fn sensitive_requests_only_go_to_local_providers() {
    let cloud = ScriptedProvider::new()
        .with_name("cloud")
        .respond_with(|_| Ok(ChatResponse::text("cloud")));
    let local = ScriptedProvider::new()
        .with_name("local")
        .local(true)
        .respond_with(|_| Ok(ChatResponse::text("local")));
    let router = Router::new()
        .route(Route::new(cloud.clone()))
        .route(Route::new(local.clone()));
    assert_eq!(
        router
            .complete(ChatRequest::user("x"))
            .await
            .unwrap()
            .text_content(),
        "cloud"
    );
    let secret = ChatRequest::user("patient record").sensitive(true);
    assert_eq!(
        router
            .complete(secret.clone())
            .await
            .unwrap()
            .text_content(),
        "local"
    );
    assert_eq!(cloud.call_count(), 1);
    assert!(!router.capabilities().local);

    let cloud_only = Router::new().route(Route::new(cloud.clone()));
    assert!(matches!(
        cloud_only.complete(secret).await,
        Err(LlmError::NoProvider(_))
    ));
    assert_eq!(cloud.call_count(), 1, "nothing left the machine");
}

#[tokio::test]
async fn tiers_pick_the_provider_and_model() {
    let cloud = ScriptedProvider::new()
        .with_name("cloud")
        .respond_with(|r| {
            Ok(ChatResponse::text(format!(
                "cloud:{}",
                r.model.clone().unwrap_or_default()
            )))
        });
    let local = ScriptedProvider::new()
        .with_name("local")
        .local(true)
        .respond_with(|r| {
            Ok(ChatResponse::text(format!(
                "local:{}",
                r.model.clone().unwrap_or_default()
            )))
        });
    let router = Router::new()
        .route(Route::new(cloud.clone()).model("claude-sonnet-4-5"))
        .tier("small", Route::new(local).model("llama3.2"))
        .tier("large", Route::new(cloud).model("claude-opus-4-5"));
    let ask = |tier: Option<&str>| {
        let mut request = ChatRequest::user("x").model("ignored");
        request.metadata.tier = tier.map(str::to_owned);
        request
    };
    assert_eq!(
        router.complete(ask(None)).await.unwrap().text_content(),
        "cloud:claude-sonnet-4-5"
    );
    assert_eq!(
        router
            .complete(ask(Some("small")))
            .await
            .unwrap()
            .text_content(),
        "local:llama3.2"
    );
    assert_eq!(
        router
            .complete(ask(Some("large")))
            .await
            .unwrap()
            .text_content(),
        "cloud:claude-opus-4-5"
    );
    assert_eq!(
        router
            .complete(ask(Some("unknown")))
            .await
            .unwrap()
            .text_content(),
        "cloud:claude-sonnet-4-5"
    );
}

#[tokio::test]
async fn router_falls_back_when_a_stream_fails_first() {
    let broken = Streams::default().then(vec![(Duration::ZERO, Err(overloaded()))]);
    let backup =
        ScriptedProvider::new().respond_with(|_| Ok(ChatResponse::text("streamed backup")));
    let router = Router::new()
        .route(Route::new(broken))
        .route(Route::new(backup));
    let answer = collect_stream(router.stream(ChatRequest::user("x")).await.unwrap())
        .await
        .unwrap();
    assert_eq!(answer.text_content(), "streamed backup");
}

#[tokio::test]
async fn layers_compose_in_any_order() {
    let llm = ScriptedProvider::new().respond_with(|_| {
        Ok(ChatResponse {
            model: "gpt-4o-mini".into(),
            ..ChatResponse::text("composed")
        })
    });
    let budgets = Budgets::new();
    budgets.set("goal", "g", 1.0);
    let stack = Router::new()
        .route(Route::new(
            llm.clone()
                .with_timeout(Timeouts::call(Duration::from_secs(5)))
                .with_rate_limit(RateLimit::per_minute(100, 100_000))
                .with_circuit_breaker(BreakerConfig::default())
                .with_retry(RetryPolicy::default()),
        ))
        .with_cost_meter(PriceTable::builtin())
        .with_budgets(budgets.clone())
        .with_cache(CacheConfig::default());
    let request = ChatRequest::user("x").temperature(0.0).tag("goal", "g");
    let first = stack.complete(request.clone()).await.unwrap();
    let second = stack.complete(request).await.unwrap();
    assert_eq!(first, second);
    assert!(first.cost.is_some());
    assert_eq!(llm.call_count(), 1);
    assert!(budgets.spent("goal", "g") > 0.0);
    let inverted = llm
        .clone()
        .with_cache(CacheConfig::default())
        .with_retry(RetryPolicy::default())
        .with_cost_meter(PriceTable::builtin());
    let answer = collect_stream(inverted.stream(ChatRequest::user("y")).await.unwrap())
        .await
        .unwrap();
    assert_eq!(answer.text_content(), "composed");
    assert!(answer.cost.is_some());
}
