//! The Anthropic provider against the recorded wire format: every file of
//! `fixtures/anthropic` is served byte for byte by a local server, and both what we send
//! (path, headers, JSON body) and what we parse are asserted.

#![cfg(feature = "anthropic")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use agentic_llm::HttpOptions;
use agentic_llm::anthropic::{AnthropicConfig, AnthropicProvider, StreamDecoder};
use agentic_llm::retry_hint::{parse_rfc3339, retry_after};
use agentic_llm::tool::{FnTool, ToolSet, run_with_tools};
use agentic_llm::{
    ChatRequest, ChatResponse, ContentBlock, LlmError, LlmProvider, StopReason, StreamEvent,
    ToolDefinition, Usage, collect_stream,
};
use futures::StreamExt;
use proptest::prelude::*;
use serde_json::json;
use support::{
    Reply, Server, assemble, assert_ended_early, check_fixture_list, complete_fixture,
    complete_with, decode_pieces, fixture, fixture_json, fixtures, header_blocks, stream_items,
    stream_with, tokens,
};

const KEY: &str = "sk-ant-test-0123456789-secret";
const P: &str = "anthropic";

/// Every file of `fixtures/anthropic` and the test that checks it. A new file fails
/// `every_fixture_file_is_checked` until it is added here with its own assertions.
const CHECKED: &[(&str, &str)] = &[
    (
        "error_400_invalid_request_error.json",
        "error_400_is_invalid_request_with_the_message_verbatim",
    ),
    (
        "error_429_rate_limit_error.json",
        "error_429_is_rate_limited_with_the_message_verbatim",
    ),
    (
        "error_529_overloaded_error.json",
        "error_529_is_overloaded_and_honours_retry_after_zero",
    ),
    ("headers.txt", "recorded_headers_give_the_right_waits"),
    ("message_text.json", "message_text_parses"),
    (
        "message_tool_use.json",
        "tool_use_request_is_sent_as_recorded_and_its_answer_parses",
    ),
    (
        "message_tool_use_two_blocks.json",
        "two_tool_calls_run_in_one_step_and_go_back_as_results",
    ),
    (
        "message_usage_cache_fields.json",
        "usage_with_cache_fields_parses",
    ),
    (
        "request.json",
        "tool_use_request_is_sent_as_recorded_and_its_answer_parses",
    ),
    (
        "stream_error_event_only.sse",
        "an_error_event_first_is_the_calls_error",
    ),
    (
        "stream_error_overloaded.sse",
        "an_error_event_after_message_start_ends_the_stream_with_overloaded",
    ),
    (
        "stream_text_and_tool_use.request.json",
        "streamed_text_and_tool_use_request_and_answer",
    ),
    (
        "stream_text_and_tool_use.sse",
        "streamed_text_and_tool_use_request_and_answer",
    ),
    (
        "stream_tool_use_fixture.sse",
        "stream_without_final_newline_still_completes",
    ),
    (
        "stream_tool_use_recorded.sse",
        "recorded_tool_stream_in_ten_pieces",
    ),
];

fn root() -> Option<PathBuf> {
    fixtures()
}

fn provider(server: &Server) -> AnthropicProvider {
    AnthropicProvider::new(AnthropicConfig::new(KEY).base_url(server.url())).unwrap()
}

fn weather_tool() -> ToolDefinition {
    ToolDefinition::new(
        "get_weather",
        "Get weather",
        json!({
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "units": {"type": "string", "enum": ["celsius", "fahrenheit"]}
            },
            "required": ["city"]
        }),
    )
}

/// Decodes a whole body, fed in pieces cut at `cuts`.
fn decode(body: &[u8], cuts: &[usize]) -> Result<Vec<StreamEvent>, LlmError> {
    let mut decoder = StreamDecoder::new(P);
    decode_pieces(body, cuts, |piece, out| match piece {
        Some(piece) => decoder.push(piece, out),
        None => decoder.finish(out),
    })
}

fn assert_sent_headers(server: &Server) {
    for received in server.received() {
        assert_eq!(received.method, "POST");
        assert_eq!(received.path, "/v1/messages");
        assert_eq!(received.header("x-api-key"), Some(KEY));
        assert_eq!(received.header("anthropic-version"), Some("2023-06-01"));
        assert_eq!(received.header("content-type"), Some("application/json"));
        assert_eq!(received.header("authorization"), None);
    }
}

#[test]
fn every_fixture_file_is_checked() {
    let Some(root) = root() else { return };
    // And every file parses as what its name says it is.
    check_fixture_list(&root, P, CHECKED, |name, bytes| {
        if name.ends_with(".json") {
            serde_json::from_slice::<serde_json::Value>(bytes).unwrap();
        } else if name.ends_with(".sse") {
            let result = decode(bytes, &[]);
            if name.contains("error") {
                assert!(matches!(result, Err(LlmError::Overloaded { .. })), "{name}");
            } else {
                assert!(result.is_ok(), "{name}: {result:?}");
            }
        } else {
            assert_eq!(name, "headers.txt");
        }
    });
}

#[tokio::test]
async fn message_text_parses() {
    let Some(root) = root() else { return };
    let (server, answer) = complete_fixture(
        &root,
        P,
        "message_text.json",
        provider,
        ChatRequest::user("What's the weather?"),
    )
    .await;
    assert_eq!(answer.id, "msg_014SddXAzPYwR72fa37nJ8N2");
    assert_eq!(answer.model, "claude-3-7-sonnet-20250219");
    assert_eq!(
        answer.content,
        vec![ContentBlock::text(
            "The current temperature in San Francisco is 68 degrees Fahrenheit."
        )]
    );
    assert_eq!(answer.stop_reason, StopReason::EndTurn);
    assert_eq!(answer.stop_sequence, None);
    assert_eq!(
        answer.usage,
        Usage {
            input_tokens: 514,
            output_tokens: 19,
            cache_read_tokens: 0,
            cache_write_tokens: 0
        }
    );
    assert_sent_headers(&server);
    // The configured default model is used when the request names none.
    assert_eq!(server.received()[0].json()["model"], "claude-sonnet-4-5");
}

#[tokio::test]
async fn tool_use_request_is_sent_as_recorded_and_its_answer_parses() {
    let Some(root) = root() else { return };
    let blocks = header_blocks(&String::from_utf8(fixture(&root, P, "headers.txt")).unwrap());
    // [A] is the recording of this very exchange's response headers.
    let mut reply = Reply::json(200, fixture(&root, P, "message_tool_use.json"));
    reply.headers = blocks["[A]"].headers.clone();
    let server = Server::start(vec![reply]).await;
    let request = ChatRequest::user("What's the weather in San Francisco? Use fahrenheit.")
        .model("claude-3-7-sonnet-latest")
        .max_tokens(512)
        .tool(weather_tool());
    let answer = provider(&server).complete(request).await.unwrap();

    assert_sent_headers(&server);
    assert_eq!(
        server.received()[0].json(),
        fixture_json(&root, P, "request.json"),
        "the body must be what the Go SDK sent in the recording"
    );
    assert_eq!(answer.id, "msg_01VLZuPg94y7NULJySZhEDJY");
    assert_eq!(answer.stop_reason, StopReason::ToolUse);
    assert_eq!(
        answer.content,
        vec![
            ContentBlock::text(
                "I'll get the current weather in San Francisco for you in Fahrenheit."
            ),
            ContentBlock::ToolUse {
                id: "toolu_01TZR6ZrLHdpAWdmhVPuDfjQ".into(),
                name: "get_weather".into(),
                input: json!({"city": "San Francisco", "units": "fahrenheit"}),
            },
        ]
    );
    assert_eq!(tokens(&answer), (402, 89));
}

#[tokio::test]
async fn two_tool_calls_run_in_one_step_and_go_back_as_results() {
    let Some(root) = root() else { return };
    let server = Server::start(vec![
        Reply::json(200, fixture(&root, P, "message_tool_use_two_blocks.json")),
        Reply::json(200, fixture(&root, P, "message_text.json")),
    ])
    .await;
    let tools = ToolSet::new().with(FnTool::new(
        "test_tool",
        "Counts.",
        json!({"type": "object", "properties": {"count": {"type": "integer"}}}),
        |args| async move { Ok(format!("counted {}", args["count"])) },
    ));
    let run = run_with_tools(
        &provider(&server),
        ChatRequest::user("Use the test tool twice").model("claude-opus-4-8"),
        &tools,
        4,
    )
    .await
    .unwrap();
    assert_eq!(run.steps, 2);
    assert_eq!(run.usage.input_tokens, 418 + 514);
    let second = server.received()[1].json();
    let messages = second["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 3);
    // The assistant turn goes back verbatim, text and both calls.
    assert_eq!(messages[1]["role"], "assistant");
    assert_eq!(
        messages[1]["content"][1]["id"],
        "toolu_01L8GVQapA1HmggQcrwboukH"
    );
    assert_eq!(messages[1]["content"][2]["input"], json!({"count": 2}));
    assert_eq!(
        messages[2]["content"],
        json!([
            {"type": "tool_result", "tool_use_id": "toolu_01L8GVQapA1HmggQcrwboukH",
             "content": [{"type": "text", "text": "counted 1"}], "is_error": false},
            {"type": "tool_result", "tool_use_id": "toolu_01J5Fvzxu7DP1Uh59c1kr5JD",
             "content": [{"type": "text", "text": "counted 2"}], "is_error": false}
        ])
    );
    assert_eq!(second["tools"][0]["name"], "test_tool");
}

#[tokio::test]
async fn usage_with_cache_fields_parses() {
    let Some(root) = root() else { return };
    let (_, answer) = complete_fixture(
        &root,
        P,
        "message_usage_cache_fields.json",
        provider,
        ChatRequest::user("x"),
    )
    .await;
    assert_eq!(answer.model, "claude-sonnet-4-5-20250929");
    assert_eq!(
        answer.text_content(),
        "{\"product_name\": \"Green Tea\", \"price\": 5.50, \"quantity\": 2}"
    );
    assert_eq!(
        answer.usage,
        Usage {
            input_tokens: 249,
            output_tokens: 26,
            cache_read_tokens: 0,
            cache_write_tokens: 0
        }
    );
}

#[tokio::test]
async fn nonzero_cache_usage_maps_to_read_and_write() {
    // No recording with non-zero cache counts exists (see SOURCES.md); this is the recorded
    // body with only the two counts changed, to pin the field mapping.
    let Some(root) = root() else { return };
    let mut body = fixture_json(&root, P, "message_usage_cache_fields.json");
    body["usage"]["cache_creation_input_tokens"] = json!(1200);
    body["usage"]["cache_read_input_tokens"] = json!(3400);
    let (_, answer) = complete_with(
        vec![Reply::json(200, body.to_string())],
        provider,
        ChatRequest::user("x"),
    )
    .await;
    let answer = answer.unwrap();
    assert_eq!(answer.usage.cache_write_tokens, 1200);
    assert_eq!(answer.usage.cache_read_tokens, 3400);
}

#[tokio::test]
async fn error_400_is_invalid_request_with_the_message_verbatim() {
    let Some(root) = root() else { return };
    let blocks = header_blocks(&String::from_utf8(fixture(&root, P, "headers.txt")).unwrap());
    let mut reply = Reply::json(
        400,
        fixture(&root, P, "error_400_invalid_request_error.json"),
    );
    reply.headers = blocks["[C]"].headers.clone();
    reply.headers.retain(|(n, _)| n != "content-length");
    let (_, error) = complete_with(vec![reply], provider, ChatRequest::user("x")).await;
    let error = error.unwrap_err();
    match &error {
        LlmError::InvalidRequest {
            provider,
            status,
            message,
        } => {
            assert_eq!(provider, "anthropic");
            assert_eq!(*status, 400);
            assert_eq!(
                message,
                "messages.0.content.1: unexpected `tool_use_id` found in `tool_result` blocks: toolu_01GHndag5wQmbzNihYmV2UBj. Each `tool_result` block must have a corresponding `tool_use` block in the previous message."
            );
        }
        other => panic!("expected InvalidRequest, got {other:?}"),
    }
    assert!(!error.is_retryable());
    assert!(!error.to_string().contains(KEY));
}

#[tokio::test]
async fn error_429_is_rate_limited_with_the_message_verbatim() {
    let Some(root) = root() else { return };
    let blocks = header_blocks(&String::from_utf8(fixture(&root, P, "headers.txt")).unwrap());
    let mut reply = Reply::json(429, fixture(&root, P, "error_429_rate_limit_error.json"));
    reply.headers = blocks["[B]"].headers.clone();
    reply
        .headers
        .retain(|(n, _)| n != "content-length" && n != "connection");
    let (_, error) = complete_with(vec![reply], provider, ChatRequest::user("x")).await;
    let error = error.unwrap_err();
    match &error {
        LlmError::RateLimited {
            message,
            retry_after,
            ..
        } => {
            assert!(message.starts_with(
                "This request would exceed your organization's rate limit of 20,000,000 prompt bytes per hour"
            ));
            assert!(message.ends_with("to discuss your options for a rate limit increase."));
            // The recorded 429 carried no retry-after and no rate-limit headers.
            assert_eq!(*retry_after, None);
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    assert!(error.is_retryable());
}

#[tokio::test]
async fn error_529_is_overloaded_and_honours_retry_after_zero() {
    let Some(root) = root() else { return };
    let blocks = header_blocks(&String::from_utf8(fixture(&root, P, "headers.txt")).unwrap());
    let mut reply = Reply::json(529, fixture(&root, P, "error_529_overloaded_error.json"));
    reply.headers.extend(blocks["[D]"].headers.clone());
    let (_, error) = complete_with(vec![reply], provider, ChatRequest::user("x")).await;
    let error = error.unwrap_err();
    match &error {
        LlmError::Overloaded {
            provider,
            message,
            retry_after,
        } => {
            assert_eq!(provider, "anthropic");
            assert_eq!(message, "Overloaded");
            assert_eq!(*retry_after, Some(Duration::ZERO));
        }
        other => panic!("expected Overloaded, got {other:?}"),
    }
    assert!(error.is_retryable());
    // The compact form a live 529 has (75 bytes) reads the same.
    let compact = br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    assert_eq!(compact.len(), 75);
    let (_, error) = complete_with(
        vec![Reply::json(529, compact.to_vec())],
        provider,
        ChatRequest::user("x"),
    )
    .await;
    let error = error.unwrap_err();
    assert!(
        matches!(error, LlmError::Overloaded { ref message, retry_after: None, .. } if message == "Overloaded")
    );
}

#[test]
fn recorded_headers_give_the_right_waits() {
    let Some(root) = root() else { return };
    let blocks = header_blocks(&String::from_utf8(fixture(&root, P, "headers.txt")).unwrap());
    assert_eq!(
        blocks.keys().map(String::as_str).collect::<Vec<_>>(),
        ["[A]", "[B]", "[C]", "[D]"]
    );
    let a = &blocks["[A]"];
    assert_eq!(a.status, Some(200));
    assert_eq!(
        a.get("anthropic-ratelimit-requests-remaining"),
        Some("3997")
    );
    assert_eq!(a.get("anthropic-ratelimit-tokens-limit"), Some("280000"));
    let reset = parse_rfc3339(a.get("anthropic-ratelimit-requests-reset").unwrap()).unwrap();
    let recorded_at = parse_rfc3339("2025-10-30T16:17:37Z").unwrap(); // its Date header
    assert_eq!(
        reset
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
        1_761_841_055
    );
    // Nothing is exhausted on this 200: no wait.
    assert_eq!(retry_after(a.pairs(), recorded_at), None);
    // Had the request limit been exhausted, its reset would be the wait (here: past, so 0).
    let mut exhausted = a.pairs();
    exhausted.retain(|(n, _)| *n != "Anthropic-Ratelimit-Requests-Remaining");
    exhausted.push(("Anthropic-Ratelimit-Requests-Remaining", "0"));
    assert_eq!(
        retry_after(exhausted.clone(), recorded_at),
        Some(Duration::ZERO)
    );
    assert_eq!(
        retry_after(exhausted, parse_rfc3339("2025-10-30T16:17:30Z").unwrap()),
        Some(Duration::from_secs(5))
    );
    let b = &blocks["[B]"];
    assert_eq!(b.status, Some(429));
    assert_eq!(b.get("x-should-retry"), Some("true"));
    assert_eq!(retry_after(b.pairs(), recorded_at), None);
    assert_eq!(blocks["[C]"].status, Some(400));
    assert_eq!(blocks["[C]"].get("x-should-retry"), Some("false"));
    let d = &blocks["[D]"];
    assert_eq!(d.status, None);
    assert_eq!(retry_after(d.pairs(), recorded_at), Some(Duration::ZERO));
}

#[tokio::test]
async fn streamed_text_and_tool_use_request_and_answer() {
    let Some(root) = root() else { return };
    let body = fixture(&root, P, "stream_text_and_tool_use.sse");
    // The whole body in one write: many events arrive in one read.
    let server = Server::start(vec![Reply::sse(body.clone())]).await;
    let request = ChatRequest::user("Weather in SF?")
        .model("claude-3-7-sonnet-latest")
        .max_tokens(512)
        .tool(weather_tool());
    let events = provider(&server).stream(request).await.unwrap();
    let answer = collect_stream(events).await.unwrap();

    assert_sent_headers(&server);
    assert_eq!(
        server.received()[0].json(),
        fixture_json(&root, P, "stream_text_and_tool_use.request.json")
    );
    let expected = ChatResponse {
        id: "msg_01P7nF1bmxyzFZjF8zwbUDBM".into(),
        model: "claude-3-7-sonnet-20250219".into(),
        content: vec![
            ContentBlock::text(
                "I'd be happy to check the weather in San Francisco for you. Let me get that information for you right away.",
            ),
            ContentBlock::ToolUse {
                id: "toolu_017QoD96fYwGzCWvLfaPADWg".into(),
                name: "get_weather".into(),
                input: json!({"city": "San Francisco"}),
            },
        ],
        stop_reason: StopReason::ToolUse,
        stop_sequence: None,
        // message_delta's usage is a running total: 394 in, 79 out (not 394 * 2, not 80).
        usage: Usage {
            input_tokens: 394,
            output_tokens: 79,
            ..Usage::default()
        },
        cost: None,
    };
    assert_eq!(answer, expected);

    // Split at every byte: the same events.
    let whole = decode(&body, &[]).unwrap();
    assert_eq!(assemble(&whole), expected);
    for cut in 1..body.len() {
        assert_eq!(decode(&body, &[cut]).unwrap(), whole, "cut at {cut}");
    }
    // The tool arguments came in pieces, the ping was dropped.
    let pieces: Vec<&str> = whole
        .iter()
        .filter_map(|e| match e {
            StreamEvent::ToolInputDelta { partial_json, .. } => Some(partial_json.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(pieces, ["{\"city\": \"Sa", "n Francis", "co\"}"]);
}

#[tokio::test]
async fn stream_without_final_newline_still_completes() {
    let Some(root) = root() else { return };
    let body = fixture(&root, P, "stream_tool_use_fixture.sse");
    assert!(!body.ends_with(b"\n"));
    let (_, answer) = stream_with(vec![Reply::sse(body)], provider, ChatRequest::user("x")).await;
    let answer = answer.unwrap();
    assert_eq!(answer.id, "msg_019Q1hrJbZG26Fb9BQhrkHEr");
    assert_eq!(answer.model, "claude-sonnet-4-20250514");
    assert_eq!(
        answer.text_content(),
        "I'll check the current weather in Paris for you."
    );
    assert_eq!(
        answer.tool_calls().collect::<Vec<_>>(),
        vec![(
            "toolu_01NRLabsLyVHZPKxbKvkfSMn",
            "get_weather",
            &json!({"location": "Paris"})
        )]
    );
    assert_eq!(tokens(&answer), (377, 65));
}

#[tokio::test]
async fn recorded_tool_stream_in_ten_pieces() {
    let Some(root) = root() else { return };
    let body = fixture(&root, P, "stream_tool_use_recorded.sse");
    // Served in small pieces with pauses, so that reads really are split.
    let cuts: Vec<usize> = (1..body.len()).step_by(97).collect();
    let server = Server::start(vec![Reply::sse(body.clone()).split_at(&cuts)]).await;
    let events: Vec<StreamEvent> = provider(&server)
        .stream(ChatRequest::user("x"))
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    let pieces = events
        .iter()
        .filter(|e| matches!(e, StreamEvent::ToolInputDelta { .. }))
        .count();
    // Ten pieces on the wire; the first is empty and carries nothing.
    assert_eq!(pieces, 9);
    let answer = assemble(&events);
    assert_eq!(answer.model, "claude-haiku-4-5-20251001");
    assert_eq!(
        answer.content,
        vec![ContentBlock::ToolUse {
            id: "toolu_018acGYLtfR52q9yDbWaEdQZ".into(),
            name: "get_weather".into(),
            input: json!({"location": "San Francisco, CA", "units": "f"}),
        }]
    );
    assert_eq!(tokens(&answer), (656, 74));
    assert_eq!(answer.stop_reason, StopReason::ToolUse);
}

#[tokio::test]
async fn an_error_event_first_is_the_calls_error() {
    let Some(root) = root() else { return };
    let server = Server::start(vec![Reply::sse(fixture(
        &root,
        P,
        "stream_error_event_only.sse",
    ))])
    .await;
    let mut events = provider(&server)
        .stream(ChatRequest::user("x"))
        .await
        .unwrap();
    let first = events.next().await.unwrap().unwrap_err();
    assert!(
        matches!(&first, LlmError::Overloaded { message, .. } if message == "Overloaded"),
        "{first:?}"
    );
    assert!(events.next().await.is_none());
}

#[tokio::test]
async fn an_error_event_after_message_start_ends_the_stream_with_overloaded() {
    let Some(root) = root() else { return };
    let server = Server::start(vec![Reply::sse(fixture(
        &root,
        P,
        "stream_error_overloaded.sse",
    ))])
    .await;
    let events = stream_items(&provider(&server), ChatRequest::user("x")).await;
    assert_eq!(events.len(), 2);
    assert_eq!(
        events[0].as_ref().unwrap(),
        &StreamEvent::MessageStart {
            id: "msg_test".into(),
            model: "claude-opus-4-6".into(),
            usage: Usage {
                input_tokens: 11,
                output_tokens: 1,
                ..Usage::default()
            }
        }
    );
    assert!(matches!(events[1], Err(LlmError::Overloaded { .. })));
}

#[tokio::test]
async fn a_stream_cut_before_message_stop_is_a_retryable_error() {
    let Some(root) = root() else { return };
    let body = fixture(&root, P, "stream_text_and_tool_use.sse");
    let text = String::from_utf8(body).unwrap();
    let cut = text.find("event: message_stop").unwrap();
    for reply in [
        // The server ends the body cleanly, but early.
        Reply::sse(text.as_bytes()[..cut].to_vec()),
        // The connection breaks mid-event.
        Reply::sse(text.as_bytes()[..cut + 30].to_vec()).aborted(),
    ] {
        let (_, error) = stream_with(vec![reply], provider, ChatRequest::user("x")).await;
        let error = error.unwrap_err();
        assert_ended_early(&error);
    }
}

#[tokio::test]
async fn malformed_json_is_a_decode_error() {
    let server = Server::start(vec![
        Reply::json(200, b"{\"id\": \"msg_1\", \"content\": [".to_vec()),
        Reply::sse(
            b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\n\n"
                .to_vec(),
        ),
    ])
    .await;
    let p = provider(&server);
    let error = p.complete(ChatRequest::user("x")).await.unwrap_err();
    assert!(
        matches!(error, LlmError::Decode(ref m) if m.contains("anthropic")),
        "{error:?}"
    );
    let error = collect_stream(p.stream(ChatRequest::user("x")).await.unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(error, LlmError::Decode(ref m) if m.contains("message_start")),
        "{error:?}"
    );
    assert!(!error.is_retryable());
}

#[test]
fn request_mapping_covers_system_cache_thinking_images_and_results() {
    let p = AnthropicProvider::new(AnthropicConfig::new(KEY)).unwrap();
    let mut request = ChatRequest::new(vec![
        agentic_llm::Message {
            role: agentic_llm::Role::User,
            content: vec![
                ContentBlock::text("look"),
                ContentBlock::Image {
                    source: agentic_llm::ImageSource::Base64 {
                        media_type: "image/png".into(),
                        data: "iVBORw0KGgo=".into(),
                    },
                },
            ],
        },
        agentic_llm::Message {
            role: agentic_llm::Role::Assistant,
            content: vec![
                ContentBlock::Thinking {
                    thinking: "hmm".into(),
                    signature: Some("sig".into()),
                },
                ContentBlock::RedactedThinking { data: "enc".into() },
                ContentBlock::ToolUse {
                    id: "t1".into(),
                    name: "get_weather".into(),
                    input: json!({"city": "Paris"}),
                },
            ],
        },
        agentic_llm::Message {
            role: agentic_llm::Role::User,
            content: vec![ContentBlock::ToolResult {
                tool_use_id: "t1".into(),
                content: vec![ContentBlock::text("sunny")],
                is_error: false,
                cache_control: Some(agentic_llm::CacheControl::Ephemeral { ttl: None }),
            }],
        },
    ]);
    request.system = vec![ContentBlock::Text {
        text: "be brief".into(),
        cache_control: Some(agentic_llm::CacheControl::Ephemeral {
            ttl: Some("1h".into()),
        }),
    }];
    request.tools =
        vec![weather_tool().cache_control(agentic_llm::CacheControl::Ephemeral { ttl: None })];
    request.tool_choice = Some(agentic_llm::ToolChoice::Any);
    request.temperature = Some(0.5);
    request.stop_sequences = vec!["END".into()];
    request.thinking = Some(agentic_llm::ThinkingConfig {
        budget_tokens: 2048,
    });
    request.max_tokens = 4096;
    let body = p.request_body(&request, true).unwrap();
    assert_eq!(
        body,
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 4096,
            "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
                ]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "redacted_thinking", "data": "enc"},
                    {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "Paris"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "sunny"}],
                     "is_error": false, "cache_control": {"type": "ephemeral"}}
                ]}
            ],
            "tools": [{"name": "get_weather", "description": "Get weather",
                       "input_schema": weather_tool().input_schema, "cache_control": {"type": "ephemeral"}}],
            "tool_choice": {"type": "any"},
            "temperature": 0.5,
            "stop_sequences": ["END"],
            "thinking": {"type": "enabled", "budget_tokens": 2048},
            "stream": true
        })
    );
    // A plain system prompt is a string.
    let body = p
        .request_body(&ChatRequest::user("x").system("sys"), false)
        .unwrap();
    assert_eq!(body["system"], "sys");
    assert!(body.get("stream").is_none());
}

#[tokio::test]
async fn structured_output_is_emulated_with_a_forced_tool() {
    let Some(root) = root() else { return };
    // A forced-tool answer, as message_tool_use.json records one, named after the format.
    let mut body = fixture_json(&root, P, "message_tool_use.json");
    body["content"] = json!([{"type": "tool_use", "id": "toolu_x", "name": "weather",
                                "input": {"city": "San Francisco", "units": "fahrenheit"}}]);
    let server = Server::start(vec![Reply::json(200, body.to_string())]).await;
    let mut request = ChatRequest::user("Weather in SF as JSON");
    request.response_format = Some(agentic_llm::ResponseFormat {
        name: "weather".into(),
        description: None,
        schema: json!({"type": "object"}),
        strict: true,
    });
    let answer = provider(&server).complete(request.clone()).await.unwrap();
    assert_eq!(answer.stop_reason, StopReason::EndTurn);
    let parsed: serde_json::Value = serde_json::from_str(&answer.text_content()).unwrap();
    assert_eq!(
        parsed,
        json!({"city": "San Francisco", "units": "fahrenheit"})
    );
    let sent = server.received()[0].json();
    assert_eq!(
        sent["tool_choice"],
        json!({"type": "tool", "name": "weather"})
    );
    assert_eq!(sent["tools"][0]["name"], "weather");
    // With tools of its own the emulation cannot work: refused before sending.
    let error = provider(&server)
        .complete(request.tool(weather_tool()))
        .await
        .unwrap_err();
    assert!(matches!(error, LlmError::InvalidRequest { .. }));
    assert_eq!(server.count(), 1);
}

#[tokio::test]
async fn keys_never_show_in_debug_or_errors() {
    let config = AnthropicConfig::new(KEY);
    assert!(!format!("{config:?}").contains(KEY));
    assert!(format!("{config:?}").contains("<redacted>"));
    let server = Server::start(vec![Reply::json(
        401,
        br#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#.to_vec(),
    )])
    .await;
    let p = provider(&server);
    assert!(!format!("{p:?}").contains(KEY));
    let error = p.complete(ChatRequest::user("x")).await.unwrap_err();
    assert!(matches!(
        error,
        LlmError::Authentication { status: 401, .. }
    ));
    assert!(!format!("{error:?}").contains(KEY));
    assert!(!error.to_string().contains(KEY));
    // A dead port: the connection error does not quote the key either.
    let dead =
        AnthropicProvider::new(AnthropicConfig::new(KEY).base_url("http://127.0.0.1:9")).unwrap();
    let error = dead.complete(ChatRequest::user("x")).await.unwrap_err();
    assert!(matches!(error, LlmError::Connection { .. }), "{error:?}");
    assert!(!format!("{error:?}").contains(KEY));
    // Without a key there is no provider.
    let mut keyless = AnthropicConfig::new(KEY);
    keyless.api_key = None;
    assert!(matches!(
        AnthropicProvider::new(keyless),
        Err(LlmError::Config(_))
    ));
}

#[tokio::test]
async fn a_connection_error_keeps_its_cause() {
    let dead =
        AnthropicProvider::new(AnthropicConfig::new(KEY).base_url("http://127.0.0.1:9")).unwrap();
    let error = dead.complete(ChatRequest::user("x")).await.unwrap_err();
    assert!(matches!(error, LlmError::Connection { .. }), "{error:?}");
    assert!(error.is_retryable());
    // The chain can be walked down to the OS error...
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        causes.push(cause);
        source = cause.source();
    }
    assert!(
        causes.iter().any(|c| c
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)),
        "{causes:?}"
    );
    // ...and the message names the provider without repeating the causes.
    let message = error.to_string();
    assert!(
        message.starts_with("connection to anthropic failed: "),
        "{message}"
    );
    let root = causes.last().unwrap().to_string();
    assert!(!message.contains(&root), "{message} repeats {root}");
    assert!(!format!("{error:?}").contains(KEY));
}

#[tokio::test]
async fn a_slow_answer_is_bounded_by_the_call_timeout_not_the_read_timeout() {
    let Some(root) = root() else { return };
    let answer = fixture(&root, P, "message_text.json");
    let http = HttpOptions {
        timeout: Duration::from_secs(5),
        read_timeout: Duration::from_millis(100),
        ..HttpOptions::default()
    };
    // The head comes after 300 ms, as from a model that generates the whole answer first:
    // longer than the read timeout, well within the call's.
    let server = Server::always(Reply::json(200, answer).delayed(Duration::from_millis(300))).await;
    let slow = AnthropicProvider::new(
        AnthropicConfig::new(KEY)
            .base_url(server.url())
            .http(http.clone()),
    )
    .unwrap();
    let text = slow.complete(ChatRequest::user("x")).await.unwrap();
    assert_eq!(text.id, "msg_014SddXAzPYwR72fa37nJ8N2");
    // A call timeout shorter than the wait ends the call.
    let short = AnthropicProvider::new(AnthropicConfig::new(KEY).base_url(server.url()).http(
        HttpOptions {
            timeout: Duration::from_millis(100),
            ..http.clone()
        },
    ))
    .unwrap();
    let error = short.complete(ChatRequest::user("x")).await.unwrap_err();
    assert!(
        matches!(error, LlmError::Timeout(d) if d == Duration::from_millis(100)),
        "{error:?}"
    );
    // A stream's silence is bounded by the read timeout: here the head.
    let error = slow.stream(ChatRequest::user("x")).await.err().unwrap();
    assert!(
        matches!(error, LlmError::Timeout(d) if d == Duration::from_millis(100)),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_silent_stream_times_out_between_reads() {
    let Some(root) = root() else { return };
    let body = fixture(&root, P, "stream_text_and_tool_use.sse");
    let cut = body.len() / 2;
    let mut reply = Reply::sse(body).split_at(&[cut]);
    reply.pause = Some(Duration::from_millis(400));
    let server = Server::always(reply).await;
    let provider = AnthropicProvider::new(AnthropicConfig::new(KEY).base_url(server.url()).http(
        HttpOptions {
            read_timeout: Duration::from_millis(100),
            ..HttpOptions::default()
        },
    ))
    .unwrap();
    let mut events = provider.stream(ChatRequest::user("x")).await.unwrap();
    let mut seen = 0;
    let error = loop {
        match events.next().await {
            Some(Ok(_)) => seen += 1,
            Some(Err(error)) => break error,
            None => panic!("the stream ended without the rest of the body"),
        }
    };
    assert!(seen > 0);
    assert!(
        matches!(error, LlmError::Timeout(d) if d == Duration::from_millis(100)),
        "{error:?}"
    );
}

fn fixture_root_or_skip() -> Option<PathBuf> {
    root()
}

fn chunked(body: &[u8], sizes: &[usize]) -> Vec<usize> {
    let mut cuts = Vec::new();
    let mut at = 0;
    for size in sizes {
        at += size;
        if at >= body.len() {
            break;
        }
        cuts.push(at);
    }
    cuts
}

fn stream_fixtures(root: &Path) -> Vec<Vec<u8>> {
    [
        "stream_text_and_tool_use.sse",
        "stream_tool_use_fixture.sse",
        "stream_tool_use_recorded.sse",
    ]
    .iter()
    .map(|name| fixture(root, P, name))
    .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any chunking of a recorded stream assembles into the same message.
    #[test]
    fn any_chunking_assembles_the_same_message(
        which in 0usize..3,
        sizes in proptest::collection::vec(1usize..200, 1..60),
    ) {
        let Some(root) = fixture_root_or_skip() else { return Ok(()) };
        let body = &stream_fixtures(&root)[which];
        let whole = assemble(&decode(body, &[]).unwrap());
        let pieces = decode(body, &chunked(body, &sizes)).unwrap();
        prop_assert_eq!(assemble(&pieces), whole);
    }
}
