//! The layers over real HTTP providers talking to local servers that replay the recorded
//! answers: a 429 with `retry-after` then success, a 529 storm tripping the breaker,
//! fallback to a second provider, budget refusal, a cache hit, and a sensitive request routed
//! to the local provider.

#![cfg(all(feature = "anthropic", feature = "openai", feature = "ollama"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use agentic_llm::anthropic::{AnthropicConfig, AnthropicProvider};
use agentic_llm::layers::*;
use agentic_llm::ollama::{OllamaConfig, OllamaProvider};
use agentic_llm::openai::{OpenAiConfig, OpenAiProvider};
use agentic_llm::{ChatRequest, LlmError, LlmProvider, collect_stream};
use support::{Reply, Server, fixture, fixtures};

fn root() -> Option<PathBuf> {
    fixtures()
}

fn anthropic(server: &Server) -> AnthropicProvider {
    AnthropicProvider::new(AnthropicConfig::new("sk-ant-test").base_url(server.url())).unwrap()
}

fn openai(server: &Server) -> OpenAiProvider {
    OpenAiProvider::new(OpenAiConfig::new("sk-test").base_url(server.url())).unwrap()
}

fn ollama(server: &Server) -> OllamaProvider {
    OllamaProvider::new(OllamaConfig::new().base_url(server.url())).unwrap()
}

#[tokio::test]
async fn a_429_with_retry_after_then_success_through_retry() {
    let Some(root) = root() else { return };
    let server = Server::start(vec![
        Reply::json(
            429,
            fixture(&root, "anthropic", "error_429_rate_limit_error.json"),
        )
        .header("retry-after", "1"),
        Reply::json(200, fixture(&root, "anthropic", "message_text.json")),
    ])
    .await;
    let llm = anthropic(&server).with_retry(RetryPolicy::default());
    let started = Instant::now();
    let answer = llm.complete(ChatRequest::user("weather?")).await.unwrap();
    assert_eq!(
        answer.text_content(),
        "The current temperature in San Francisco is 68 degrees Fahrenheit."
    );
    assert_eq!(server.count(), 2);
    // The second request came no earlier than the server asked.
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_streamed_call_is_retried_when_the_stream_opens_with_overloaded() {
    let Some(root) = root() else { return };
    let server = Server::start(vec![
        Reply::sse(fixture(&root, "anthropic", "stream_error_event_only.sse")),
        Reply::sse(fixture(&root, "anthropic", "stream_tool_use_fixture.sse")),
    ])
    .await;
    let llm = anthropic(&server).with_retry(RetryPolicy {
        initial_backoff: Duration::from_millis(10),
        ..RetryPolicy::default()
    });
    let answer = collect_stream(llm.stream(ChatRequest::user("x")).await.unwrap())
        .await
        .unwrap();
    assert_eq!(
        answer.text_content(),
        "I'll check the current weather in Paris for you."
    );
    assert_eq!(server.count(), 2);
}

#[tokio::test]
async fn a_529_storm_trips_the_breaker() {
    let Some(root) = root() else { return };
    let server = Server::always(Reply::json(
        529,
        fixture(&root, "anthropic", "error_529_overloaded_error.json"),
    ))
    .await;
    let llm = anthropic(&server).with_circuit_breaker(BreakerConfig {
        minimum_calls: 4,
        cool_down: Duration::from_secs(30),
        ..BreakerConfig::default()
    });
    for _ in 0..4 {
        let error = llm.complete(ChatRequest::user("x")).await.unwrap_err();
        assert!(matches!(error, LlmError::Overloaded { .. }), "{error:?}");
    }
    assert_eq!(llm.state(), CircuitState::Open);
    for _ in 0..20 {
        let error = llm.complete(ChatRequest::user("x")).await.unwrap_err();
        assert!(
            matches!(error, LlmError::CircuitOpen { ref provider, .. } if provider == "anthropic")
        );
    }
    assert_eq!(
        server.count(),
        4,
        "the open circuit kept the storm off the provider"
    );
}

#[tokio::test]
async fn fallback_to_the_second_provider() {
    let Some(root) = root() else { return };
    let down = Server::always(Reply::json(
        529,
        fixture(&root, "anthropic", "error_529_overloaded_error.json"),
    ))
    .await;
    let up = Server::always(Reply::json(
        200,
        fixture(&root, "openai", "chat_completion_text.json"),
    ))
    .await;
    let router = Router::new()
        .route(Route::new(anthropic(&down)).model("claude-sonnet-4-5"))
        .route(Route::new(openai(&up)).model("gpt-4o-mini"));
    let answer = router.complete(ChatRequest::user("Hello!")).await.unwrap();
    assert_eq!(answer.text_content(), "Hello! How can I assist you today?");
    assert_eq!((down.count(), up.count()), (1, 1));
    assert_eq!(down.received()[0].json()["model"], "claude-sonnet-4-5");
    assert_eq!(up.received()[0].json()["model"], "gpt-4o-mini");
}

#[tokio::test]
async fn a_budget_refuses_before_anything_is_sent() {
    let Some(root) = root() else { return };
    let server = Server::always(Reply::json(
        200,
        fixture(&root, "anthropic", "message_text.json"),
    ))
    .await;
    let budgets = Budgets::new();
    budgets.set("tenant", "acme", 0.01);
    let llm = anthropic(&server)
        .with_cost_meter(PriceTable::builtin())
        .with_budgets(budgets.clone())
        .default_model("claude-sonnet-4-5");
    // message_text.json: claude-3-7-sonnet, 514 in, 19 out = $0.001827.
    let small = ChatRequest::user("weather?")
        .max_tokens(200)
        .tag("tenant", "acme");
    let answer = llm.complete(small).await.unwrap();
    let cost = answer.cost.unwrap().usd;
    assert!((cost - (514.0 * 3.0 + 19.0 * 15.0) / 1e6).abs() < 1e-12);
    assert!((budgets.spent("tenant", "acme") - cost).abs() < 1e-12);
    // 4 096 output tokens at $15/M is $0.061: more than the $0.008 left.
    let big = ChatRequest::user("an essay")
        .max_tokens(4096)
        .tag("tenant", "acme");
    let error = llm.complete(big).await.unwrap_err();
    assert!(matches!(error, LlmError::BudgetExceeded(_)), "{error:?}");
    assert_eq!(server.count(), 1);
}

#[tokio::test]
async fn a_cache_hit_does_not_reach_the_server() {
    let Some(root) = root() else { return };
    let server = Server::always(Reply::json(
        200,
        fixture(&root, "anthropic", "message_text.json"),
    ))
    .await;
    let llm = anthropic(&server).with_cache(CacheConfig::default());
    let request = ChatRequest::user("weather?").temperature(0.0);
    let first = llm.complete(request.clone()).await.unwrap();
    let second = llm.complete(request).await.unwrap();
    assert_eq!(first, second);
    assert_eq!(server.count(), 1);
    assert_eq!(llm.hits(), 1);
}

#[tokio::test]
async fn a_sensitive_request_goes_to_the_local_provider() {
    let Some(root) = root() else { return };
    let cloud = Server::always(Reply::json(
        200,
        fixture(&root, "anthropic", "message_text.json"),
    ))
    .await;
    let local = Server::always(Reply::json(200, fixture(&root, "ollama", "chat.json"))).await;
    let router = Router::new()
        .route(Route::new(anthropic(&cloud)).model("claude-sonnet-4-5"))
        .route(Route::new(ollama(&local)).model("llama3.2"));
    let private = ChatRequest::user("my diagnosis is ...").sensitive(true);
    let answer = router.complete(private).await.unwrap();
    assert_eq!(answer.text_content(), "Hello! How are you today?");
    assert_eq!((cloud.count(), local.count()), (0, 1));
    // The same router sends ordinary requests to the first route.
    router.complete(ChatRequest::user("hi")).await.unwrap();
    assert_eq!((cloud.count(), local.count()), (1, 1));
    // OpenAI-compatible local servers count as local too.
    let vllm = Server::always(Reply::json(
        200,
        fixture(&root, "openai", "chat_completion_text.json"),
    ))
    .await;
    let router = Router::new()
        .route(Route::new(anthropic(&cloud)))
        .route(Route::new(
            OpenAiProvider::new(OpenAiConfig::compatible(vllm.url()).default_model("qwen"))
                .unwrap(),
        ));
    router
        .complete(ChatRequest::user("secret").sensitive(true))
        .await
        .unwrap();
    assert_eq!((cloud.count(), vllm.count()), (1, 1));
}
