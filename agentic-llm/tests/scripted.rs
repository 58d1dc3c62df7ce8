//! Behaviour of `ScriptedProvider`: order of rules, sequence and fallback, errors, the
//! record of calls, and streaming that reassembles to what `complete` returns.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use agentic_llm::stream::StreamEvent;
use agentic_llm::{
    ChatRequest, ChatResponse, ContentBlock, LlmError, LlmProvider, Message, ScriptedProvider,
    ScriptedReply, StopReason, ToolDefinition, Usage, collect_stream,
};
use futures::StreamExt;
use serde_json::json;

fn script_message(err: LlmError) -> String {
    match err {
        LlmError::Script(message) => message,
        other => panic!("expected LlmError::Script, got {other:?}"),
    }
}

#[tokio::test]
async fn sequence_is_consumed_in_order_then_runs_out() {
    let llm = ScriptedProvider::new()
        .then(ChatResponse::text("one"))
        .then(ChatResponse::text("two"));
    assert_eq!(llm.remaining(), 2);

    let first = llm.complete(ChatRequest::user("a")).await.unwrap();
    let second = llm.complete(ChatRequest::user("b")).await.unwrap();
    assert_eq!(first.text_content(), "one");
    assert_eq!(second.text_content(), "two");
    assert_eq!(llm.remaining(), 0);

    let err = llm.complete(ChatRequest::user("c")).await.unwrap_err();
    let message = script_message(err);
    assert!(
        message.starts_with("no scripted reply for request 3"),
        "{message}"
    );
    assert!(
        message.contains("\"c\""),
        "describes the request: {message}"
    );
}

#[tokio::test]
async fn empty_script_fails_with_a_description_of_the_request() {
    let llm = ScriptedProvider::new();
    let request = ChatRequest::user("x".repeat(500))
        .model("big-model")
        .tool(ToolDefinition::new(
            "search",
            "Search the web",
            json!({"type": "object"}),
        ));
    let message = script_message(llm.complete(request).await.unwrap_err());
    assert!(message.contains("1 message"), "{message}");
    assert!(message.contains("tools [search]"), "{message}");
    assert!(message.contains("\"big-model\""), "{message}");
    // Long prompts are cut so the error stays readable.
    assert!(message.len() < 300, "{message}");
    assert!(!LlmError::Script(message).is_retryable());
}

#[tokio::test]
async fn rules_come_before_the_sequence_and_are_reusable() {
    let llm = ScriptedProvider::new()
        .then(ChatResponse::text("from sequence"))
        .on_contains("weather", ChatResponse::text("sunny"))
        .on_contains(
            "weather in Paris",
            ChatResponse::text("never: the first rule wins"),
        );

    for _ in 0..3 {
        let answer = llm
            .complete(ChatRequest::user("what's the weather in Paris?"))
            .await
            .unwrap();
        assert_eq!(answer.text_content(), "sunny");
    }
    // Rule matches did not consume the sequence.
    assert_eq!(llm.remaining(), 1);
    let answer = llm.complete(ChatRequest::user("hello")).await.unwrap();
    assert_eq!(answer.text_content(), "from sequence");
}

#[tokio::test]
async fn on_contains_looks_at_the_last_user_message_only() {
    let llm = ScriptedProvider::new().on_contains("secret", ChatResponse::text("matched"));
    let request = ChatRequest::new(vec![
        Message::user("the secret is 42"),
        Message::assistant("noted"),
        Message::user("what now?"),
    ]);
    let err = llm.complete(request).await.unwrap_err();
    assert!(matches!(err, LlmError::Script(_)));

    // Assistant text after the last user message does not count either.
    let request = ChatRequest::new(vec![
        Message::user("what now?"),
        Message::assistant("a secret"),
    ]);
    assert!(llm.complete(request).await.is_err());
}

#[tokio::test]
async fn predicate_rules_see_the_whole_request() {
    let llm = ScriptedProvider::new()
        .on(
            |r: &ChatRequest| r.model.as_deref() == Some("small"),
            ChatResponse::text("small model"),
        )
        .on(|r: &ChatRequest| !r.tools.is_empty(), {
            ChatResponse::tool_call("call_1", "search", json!({"q": "x"}))
        });

    let small = llm
        .complete(ChatRequest::user("hi").model("small"))
        .await
        .unwrap();
    assert_eq!(small.text_content(), "small model");

    let with_tools = ChatRequest::user("hi").tool(ToolDefinition::new("search", "", json!({})));
    let tool = llm.complete(with_tools).await.unwrap();
    assert_eq!(tool.stop_reason, StopReason::ToolUse);
    assert_eq!(tool.tool_calls().next().unwrap().1, "search");
}

#[tokio::test]
async fn fallback_answers_when_nothing_else_does() {
    let llm = ScriptedProvider::new()
        .on_contains("ping", ChatResponse::text("pong"))
        .then(ChatResponse::text("first"))
        .respond_with(|request| {
            Ok(ChatResponse::text(format!(
                "echo: {}",
                request.last_user_text().unwrap_or_default()
            )))
        });

    let texts = [
        llm.complete(ChatRequest::user("hello")).await.unwrap(),
        llm.complete(ChatRequest::user("ping")).await.unwrap(),
        llm.complete(ChatRequest::user("hello")).await.unwrap(),
        llm.complete(ChatRequest::user("again")).await.unwrap(),
    ]
    .map(|r| r.text_content());
    assert_eq!(texts, ["first", "pong", "echo: hello", "echo: again"]);
}

#[tokio::test]
async fn fallback_errors_are_returned() {
    let llm = ScriptedProvider::new().respond_with(|_| Err(LlmError::Cancelled));
    assert!(matches!(
        llm.complete(ChatRequest::user("x")).await,
        Err(LlmError::Cancelled)
    ));
}

#[tokio::test]
async fn scripted_errors_are_made_fresh_each_time() {
    let llm = ScriptedProvider::new()
        .then_error(|| LlmError::RateLimited {
            provider: "scripted".into(),
            message: "slow down".into(),
            retry_after: Some(Duration::from_secs(2)),
        })
        .on_contains(
            "forbidden",
            ScriptedReply::error(|| LlmError::ContentFiltered("no".into())),
        )
        .then(ChatResponse::text("ok"));

    let err = llm.complete(ChatRequest::user("hi")).await.unwrap_err();
    assert!(err.is_retryable());
    assert_eq!(err.retry_after(), Some(Duration::from_secs(2)));
    assert_eq!(
        llm.complete(ChatRequest::user("hi"))
            .await
            .unwrap()
            .text_content(),
        "ok"
    );
    for _ in 0..2 {
        let err = llm
            .complete(ChatRequest::user("forbidden words"))
            .await
            .unwrap_err();
        assert!(matches!(err, LlmError::ContentFiltered(_)));
        assert!(!err.is_retryable());
    }
}

#[tokio::test]
async fn responses_get_an_id_a_model_and_usage() {
    let given = ChatResponse {
        id: "msg_given".into(),
        model: "claude-x".into(),
        usage: Usage {
            input_tokens: 7,
            output_tokens: 3,
            ..Usage::default()
        },
        ..ChatResponse::text("kept as is")
    };
    let llm = ScriptedProvider::new()
        .then(ChatResponse::text("a fairly long answer of several words"))
        .then(given.clone());

    let filled = llm
        .complete(ChatRequest::user("a question of some length").system("be brief"))
        .await
        .unwrap();
    assert_eq!(filled.id, "msg_scripted_1");
    assert_eq!(filled.model, "scripted");
    assert!(filled.usage.input_tokens >= 8, "{:?}", filled.usage);
    assert!(filled.usage.output_tokens >= 9, "{:?}", filled.usage);

    let kept = llm.complete(ChatRequest::user("q")).await.unwrap();
    assert_eq!(kept, given);
}

#[tokio::test]
async fn calls_are_recorded_in_order_and_shared_by_clones() {
    let llm = ScriptedProvider::new().respond_with(|_| Ok(ChatResponse::text("ok")));
    let handle = llm.clone();
    let shared: Arc<dyn LlmProvider> = Arc::new(llm);

    shared.complete(ChatRequest::user("first")).await.unwrap();
    let mut events = shared.stream(ChatRequest::user("second")).await.unwrap();
    while events.next().await.is_some() {}

    assert_eq!(handle.call_count(), 2);
    let texts: Vec<String> = handle
        .calls()
        .iter()
        .map(|r| r.last_user_text().unwrap())
        .collect();
    assert_eq!(texts, ["first", "second"]);
    assert_eq!(
        handle.last_call().unwrap().last_user_text().as_deref(),
        Some("second")
    );

    // Failed calls are recorded too.
    let empty = ScriptedProvider::new();
    assert!(empty.complete(ChatRequest::user("x")).await.is_err());
    assert_eq!(empty.call_count(), 1);
}

#[tokio::test]
async fn builders_on_a_clone_extend_the_shared_script() {
    let llm = ScriptedProvider::new();
    let _ = llm.clone().then(ChatResponse::text("added later"));
    assert_eq!(
        llm.complete(ChatRequest::user("x"))
            .await
            .unwrap()
            .text_content(),
        "added later"
    );
}

#[tokio::test]
async fn matchers_may_inspect_the_provider_without_deadlocking() {
    let llm = ScriptedProvider::new();
    let handle = llm.clone();
    let llm = llm.on(
        move |_| handle.call_count() > 1,
        ChatResponse::text("second call or later"),
    );
    let llm = llm.respond_with(|_| Ok(ChatResponse::text("first call")));

    let first = llm.complete(ChatRequest::user("x")).await.unwrap();
    let second = llm.complete(ChatRequest::user("x")).await.unwrap();
    assert_eq!(first.text_content(), "first call");
    assert_eq!(second.text_content(), "second call or later");
}

#[tokio::test]
async fn name_and_capabilities() {
    let default = ScriptedProvider::new();
    assert_eq!(default.name(), "scripted");
    let caps = default.capabilities();
    assert!(caps.streaming && caps.tools && caps.structured_output && caps.images);
    assert!(!caps.local);

    let local = ScriptedProvider::new().with_name("ollama-fake").local(true);
    assert_eq!(local.name(), "ollama-fake");
    assert!(local.capabilities().local);
    let dynamic: Box<dyn LlmProvider> = Box::new(local);
    assert_eq!(dynamic.name(), "ollama-fake");
}

#[tokio::test(start_paused = true)]
async fn latency_is_observed_on_the_tokio_clock() {
    let llm = ScriptedProvider::new()
        .then(ChatResponse::text("late"))
        .with_latency(Duration::from_secs(5));
    let started = tokio::time::Instant::now();
    let timed_out =
        tokio::time::timeout(Duration::from_secs(1), llm.complete(ChatRequest::user("x"))).await;
    assert!(timed_out.is_err());
    // The call was abandoned before it was recorded or consumed a reply.
    assert_eq!(llm.call_count(), 0);
    assert_eq!(llm.remaining(), 1);

    let answer = llm.complete(ChatRequest::user("x")).await.unwrap();
    assert_eq!(answer.text_content(), "late");
    assert!(started.elapsed() >= Duration::from_secs(6));
}

#[test]
fn reply_debug_does_not_call_the_factory() {
    let reply = ScriptedReply::error(|| panic!("must not be called by Debug"));
    assert_eq!(format!("{reply:?}"), "Error(<fn>)");
    let reply = ScriptedReply::from(ChatResponse::text("hi"));
    assert!(format!("{reply:?}").starts_with("Response(ChatResponse"));
    let llm = ScriptedProvider::new().then(reply);
    assert!(format!("{llm:?}").contains("ScriptedProvider"));
}

fn mixed_response() -> ChatResponse {
    ChatResponse {
        content: vec![
            ContentBlock::Thinking {
                thinking: "The user wants the weather; I should call the tool.".into(),
                signature: None,
            },
            ContentBlock::text("Let me check the weather for you, one moment."),
            ContentBlock::ToolUse {
                id: "toolu_01".into(),
                name: "get_weather".into(),
                input: json!({"city": "Zürich", "units": "metric", "days": [1, 2, 3]}),
            },
        ],
        stop_reason: StopReason::ToolUse,
        ..ChatResponse::default()
    }
}

#[tokio::test]
async fn stream_reassembles_to_what_complete_returns() {
    let llm = ScriptedProvider::new()
        .then(mixed_response())
        .then(mixed_response());
    let request = ChatRequest::user("Weather in Zürich?");

    let completed = llm.complete(request.clone()).await.unwrap();
    let streamed = collect_stream(llm.stream(request).await.unwrap())
        .await
        .unwrap();

    // Ids differ by call number; everything else is identical.
    assert_eq!(completed.id, "msg_scripted_1");
    assert_eq!(streamed.id, "msg_scripted_2");
    assert_eq!(
        ChatResponse {
            id: String::new(),
            ..streamed.clone()
        },
        ChatResponse {
            id: String::new(),
            ..completed
        }
    );
    assert_eq!(
        streamed.text_content(),
        "Let me check the weather for you, one moment."
    );
    let (id, name, input) = streamed.tool_calls().next().unwrap();
    assert_eq!((id, name), ("toolu_01", "get_weather"));
    assert_eq!(input["city"], "Zürich");
}

#[tokio::test]
async fn stream_splits_text_and_tool_input_into_several_deltas() {
    let llm = ScriptedProvider::new().then(mixed_response());
    let events: Vec<StreamEvent> = llm
        .stream(ChatRequest::user("x"))
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;

    let text_deltas: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::TextDelta { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    let json_fragments: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::ToolInputDelta { partial_json, .. } => Some(partial_json.as_str()),
            _ => None,
        })
        .collect();
    let thinking_deltas = events
        .iter()
        .filter(|e| matches!(e, StreamEvent::ThinkingDelta { .. }))
        .count();

    assert!(text_deltas.len() >= 5, "{text_deltas:?}");
    assert_eq!(
        text_deltas.concat(),
        "Let me check the weather for you, one moment."
    );
    assert!(json_fragments.len() >= 3, "{json_fragments:?}");
    // Fragments are not JSON on their own: consumers must buffer them.
    assert!(
        json_fragments
            .iter()
            .any(|f| serde_json::from_str::<serde_json::Value>(f).is_err())
    );
    assert!(thinking_deltas >= 3);

    assert!(matches!(
        events.first(),
        Some(StreamEvent::MessageStart { .. })
    ));
    assert!(matches!(events.last(), Some(StreamEvent::MessageStop)));
}

#[tokio::test]
async fn stream_of_a_scripted_error_fails_before_any_event() {
    let llm = ScriptedProvider::new().then_error(|| LlmError::Overloaded {
        provider: "scripted".into(),
        message: "busy".into(),
        retry_after: None,
    });
    let err = llm.stream(ChatRequest::user("x")).await.err().unwrap();
    assert!(matches!(err, LlmError::Overloaded { .. }));
    assert_eq!(llm.call_count(), 1);
}

#[tokio::test]
async fn stream_usage_matches_complete_usage() {
    let response = ChatResponse {
        usage: Usage {
            input_tokens: 100,
            output_tokens: 20,
            cache_read_tokens: 50,
            cache_write_tokens: 10,
        },
        stop_sequence: Some("END".into()),
        stop_reason: StopReason::StopSequence,
        ..ChatResponse::text("done")
    };
    let llm = ScriptedProvider::new().then(response.clone());
    let streamed = collect_stream(llm.stream(ChatRequest::user("x")).await.unwrap())
        .await
        .unwrap();
    assert_eq!(streamed.usage, response.usage);
    assert_eq!(streamed.stop_reason, StopReason::StopSequence);
    assert_eq!(streamed.stop_sequence.as_deref(), Some("END"));
}

#[tokio::test]
async fn collect_stream_passes_stream_errors_through() {
    let events: agentic_llm::EventStream = futures::stream::iter(vec![
        Ok(StreamEvent::MessageStart {
            id: "m".into(),
            model: "x".into(),
            usage: Usage::default(),
        }),
        Err(LlmError::Connection {
            provider: "p".into(),
            message: "reset".into(),
            source: None,
        }),
    ])
    .boxed();
    let err = collect_stream(events).await.unwrap_err();
    assert!(matches!(err, LlmError::Connection { .. }));
    assert!(err.is_retryable());
}

#[tokio::test]
async fn default_stream_of_a_plain_provider_replays_complete() {
    // A provider that only implements `complete` streams through the trait's default.
    struct Fixed;
    #[async_trait::async_trait]
    impl LlmProvider for Fixed {
        fn name(&self) -> &str {
            "fixed"
        }
        fn capabilities(&self) -> agentic_llm::ProviderCapabilities {
            agentic_llm::ProviderCapabilities::default()
        }
        async fn complete(&self, _: ChatRequest) -> Result<ChatResponse, LlmError> {
            Ok(ChatResponse {
                id: "m1".into(),
                model: "fixed".into(),
                ..mixed_response()
            })
        }
    }
    let streamed = collect_stream(Fixed.stream(ChatRequest::user("x")).await.unwrap())
        .await
        .unwrap();
    assert_eq!(
        streamed,
        Fixed.complete(ChatRequest::user("x")).await.unwrap()
    );
}
