//! The OpenAI provider against the recorded wire format: every file of `fixtures/openai` is
//! served byte for byte by a local server, and both what we send (path, headers, JSON body)
//! and what we parse are asserted.

#![cfg(feature = "openai")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use agentic_llm::openai::{MaxTokensField, OpenAiConfig, OpenAiProvider, StreamDecoder};
use agentic_llm::retry_hint::{parse_go_duration, retry_after};
use agentic_llm::tool::{FnTool, ToolSet, run_with_tools};
use agentic_llm::{
    ChatRequest, ContentBlock, ImageSource, LlmError, LlmProvider, Message, ResponseFormat, Role,
    StopReason, StreamEvent, ToolChoice, ToolDefinition, Usage, collect_stream,
};
use proptest::prelude::*;
use serde_json::{Value, json};
use support::{
    Reply, Server, assemble, assert_ended_early, check_fixture_list, complete_fixture,
    complete_with, decode_pieces, fixture, fixture_json, fixtures, header_blocks, stream_with,
    take, tokens,
};

const KEY: &str = "sk-proj-test-0123456789-secret";
const P: &str = "openai";

/// Every file of `fixtures/openai` and the test that checks it.
const CHECKED: &[(&str, &str)] = &[
    (
        "chat_completion_json_schema.dotnet.json",
        "json_schema_request_is_sent_as_recorded_and_its_answer_parses",
    ),
    (
        "chat_completion_json_schema.json",
        "json_schema_answer_of_openai_python_parses",
    ),
    ("chat_completion_text.json", "documented_text_answer_parses"),
    (
        "chat_completion_text.recorded.json",
        "parallel_tool_calls_loop_as_recorded",
    ),
    (
        "chat_completion_tool_calls.json",
        "parallel_tool_calls_loop_as_recorded",
    ),
    (
        "chat_completion_tool_calls.openai-python.json",
        "two_tool_calls_of_openai_python_parse",
    ),
    (
        "chat_completion_tool_calls.single.json",
        "documented_function_request_and_answer",
    ),
    ("chat_stream_text.openai-python.sse", "streamed_text_parses"),
    (
        "chat_stream_text_include_usage.sse",
        "long_stream_with_usage_parses",
    ),
    (
        "chat_stream_tool_calls.sse",
        "streamed_parallel_tool_calls_parse",
    ),
    (
        "error_400_invalid_request_error.json",
        "error_400_is_invalid_request_with_the_message_verbatim",
    ),
    (
        "error_401_invalid_api_key.json",
        "error_401_is_authentication_with_the_message_verbatim",
    ),
    ("headers.txt", "recorded_headers_give_the_right_waits"),
    ("request.json", "documented_function_request_and_answer"),
    (
        "request.recorded.json",
        "parallel_tool_calls_loop_as_recorded",
    ),
    (
        "request_json_schema.recorded.json",
        "json_schema_request_is_sent_as_recorded_and_its_answer_parses",
    ),
];

fn root() -> Option<PathBuf> {
    fixtures()
}

fn provider(server: &Server) -> OpenAiProvider {
    OpenAiProvider::new(OpenAiConfig::new(KEY).base_url(server.url())).unwrap()
}

/// What we send, minus the one field the recorded requests lack (they left the limit to the
/// server; we always send one). Asserts its value.
fn without_max_tokens(mut body: Value, field: &str, expected: u32) -> Value {
    assert_eq!(take(&mut body, field), Some(json!(expected)), "{field}");
    body
}

fn assert_sent_headers(server: &Server) {
    for received in server.received() {
        assert_eq!(received.method, "POST");
        assert_eq!(received.path, "/v1/chat/completions");
        assert_eq!(
            received.header("authorization"),
            Some(&*format!("Bearer {KEY}"))
        );
        assert_eq!(received.header("content-type"), Some("application/json"));
        assert_eq!(received.header("x-api-key"), None);
    }
}

/// Decodes a whole body, fed in pieces cut at `cuts`.
fn decode(body: &[u8], cuts: &[usize]) -> Result<Vec<StreamEvent>, LlmError> {
    let mut decoder = StreamDecoder::new(P);
    decode_pieces(body, cuts, |piece, out| match piece {
        Some(piece) => decoder.push(piece, out),
        None => decoder.finish(out),
    })
}

#[test]
fn every_fixture_file_is_checked() {
    let Some(root) = root() else { return };
    check_fixture_list(&root, P, CHECKED, |name, bytes| {
        if name.ends_with(".json") {
            serde_json::from_slice::<Value>(bytes).unwrap();
        } else if name.ends_with(".sse") {
            assemble(&decode(bytes, &[]).unwrap());
        } else {
            assert_eq!(name, "headers.txt");
        }
    });
}

fn weather_for_city_tool() -> ToolDefinition {
    ToolDefinition::new(
        "get_weather_for_city",
        "gets the current weather for a given city",
        json!({
            "type": "object",
            "properties": {
                "city_name": {
                    "type": "string",
                    "description": "the name of a city, e.g. Johannesburg or Ho Chi Minh City."
                }
            },
            "required": ["city_name"]
        }),
    )
}

#[tokio::test]
async fn parallel_tool_calls_loop_as_recorded() {
    let Some(root) = root() else { return };
    let server = Server::start(vec![
        Reply::json(200, fixture(&root, P, "chat_completion_tool_calls.json")),
        Reply::json(200, fixture(&root, P, "chat_completion_text.recorded.json")),
    ])
    .await;
    let tools = ToolSet::new().with(FnTool::new(
        "get_weather_for_city",
        "gets the current weather for a given city",
        weather_for_city_tool().input_schema,
        |args| async move {
            Ok(match args["city_name"].as_str() {
                Some("Santiago") => "Rainy".to_owned(),
                Some("Karachi") => "Sunny".to_owned(),
                other => return Err(format!("unknown city {other:?}")),
            })
        },
    ));
    let request = ChatRequest::user(
        "Tell me what's the current weather in the following cities: Santiago and Karachi.",
    )
    .model("gpt-4o-mini");
    let run = run_with_tools(&provider(&server), request, &tools, 3)
        .await
        .unwrap();

    assert_sent_headers(&server);
    let sent = server.received();
    assert_eq!(
        without_max_tokens(sent[0].json(), "max_completion_tokens", 1024),
        fixture_json(&root, P, "request.recorded.json")
    );
    // The second request: the assistant's two calls, then one `tool` message per result.
    let second = sent[1].json();
    let messages = second["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 4);
    assert_eq!(
        messages[1],
        json!({"role": "assistant", "tool_calls": [
            {"id": "call_SKQEHo7QVlJRoCtEzcrYZM9C", "type": "function",
             "function": {"name": "get_weather_for_city", "arguments": "{\"city_name\":\"Santiago\"}"}},
            {"id": "call_CkjljlLr7IebPc4hnvetfiZ8", "type": "function",
             "function": {"name": "get_weather_for_city", "arguments": "{\"city_name\":\"Karachi\"}"}}
        ]})
    );
    assert_eq!(
        messages[2],
        json!({"role": "tool", "tool_call_id": "call_SKQEHo7QVlJRoCtEzcrYZM9C", "content": "Rainy"})
    );
    assert_eq!(
        messages[3],
        json!({"role": "tool", "tool_call_id": "call_CkjljlLr7IebPc4hnvetfiZ8", "content": "Sunny"})
    );

    assert_eq!(run.steps, 2);
    assert_eq!(
        run.response.text_content(),
        "The current weather is as follows:\n- Santiago: Rainy\n- Karachi: Sunny"
    );
    assert_eq!(run.response.id, "chatcmpl-CGSWzKKuB0tOwJH5DSxx02kDDPh0C");
    assert_eq!(run.response.model, "gpt-4o-mini-2024-07-18");
    assert_eq!(run.response.stop_reason, StopReason::EndTurn);
    assert_eq!(run.usage.input_tokens, 81 + 151);
    assert_eq!(run.usage.output_tokens, 52 + 18);
}

#[tokio::test]
async fn documented_function_request_and_answer() {
    let Some(root) = root() else { return };
    let server = Server::start(vec![Reply::json(
        200,
        fixture(&root, P, "chat_completion_tool_calls.single.json"),
    )])
    .await;
    let request = ChatRequest::user("What is the weather like in Boston today?")
        .model("gpt-5.4")
        .tool(ToolDefinition::new(
            "get_current_weather",
            "Get the current weather in a given location",
            json!({
                "type": "object",
                "properties": {
                    "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}
                },
                "required": ["location"]
            }),
        ))
        .tool_choice(ToolChoice::Auto);
    let answer = provider(&server).complete(request).await.unwrap();
    assert_eq!(
        without_max_tokens(server.received()[0].json(), "max_completion_tokens", 1024),
        fixture_json(&root, P, "request.json")
    );
    assert_eq!(answer.id, "chatcmpl-abc123");
    assert_eq!(answer.stop_reason, StopReason::ToolUse);
    // `arguments` is a string of JSON with newlines in it.
    assert_eq!(
        answer.content,
        vec![ContentBlock::ToolUse {
            id: "call_abc123".into(),
            name: "get_current_weather".into(),
            input: json!({"location": "Boston, MA"}),
        }]
    );
    assert_eq!(tokens(&answer), (82, 17));
}

#[tokio::test]
async fn two_tool_calls_of_openai_python_parse() {
    let Some(root) = root() else { return };
    let (_, answer) = complete_fixture(
        &root,
        P,
        "chat_completion_tool_calls.openai-python.json",
        provider,
        ChatRequest::user("x"),
    )
    .await;
    assert_eq!(
        answer.tool_calls().collect::<Vec<_>>(),
        vec![
            (
                "call_fdNz3vOBKYgOIpMdWotB9MjY",
                "GetWeatherArgs",
                &json!({"city": "Edinburgh", "country": "GB", "units": "c"})
            ),
            (
                "call_h1DWI1POMJLb0KwIyQHWXD4p",
                "get_stock_price",
                &json!({"ticker": "AAPL", "exchange": "NASDAQ"})
            ),
        ]
    );
    assert_eq!(answer.text_content(), "");
    assert_eq!(tokens(&answer), (149, 60));
}

#[tokio::test]
async fn json_schema_request_is_sent_as_recorded_and_its_answer_parses() {
    let Some(root) = root() else { return };
    let server = Server::start(vec![Reply::json(
        200,
        fixture(&root, P, "chat_completion_json_schema.dotnet.json"),
    )])
    .await;
    let mut request =
        ChatRequest::user("What's heavier, a pound of feathers or sixteen ounces of steel?")
            .model("gpt-4o-mini");
    request.response_format = Some(ResponseFormat {
        name: "test_schema".into(),
        description: Some("a single final answer with a supporting collection of steps".into()),
        schema: json!({
            "type": "object",
            "properties": {
                "answer": {"type": "string"},
                "steps": {"type": "array", "items": {"type": "string"}}
            },
            "required": ["answer", "steps"],
            "additionalProperties": false
        }),
        strict: true,
    });
    let answer = provider(&server).complete(request).await.unwrap();
    assert_eq!(
        without_max_tokens(server.received()[0].json(), "max_completion_tokens", 1024),
        fixture_json(&root, P, "request_json_schema.recorded.json")
    );
    let parsed: Value = serde_json::from_str(&answer.text_content()).unwrap();
    assert_eq!(
        parsed["answer"],
        "A pound of feathers and sixteen ounces of steel weigh the same."
    );
    assert_eq!(parsed["steps"].as_array().unwrap().len(), 5);
    assert_eq!(tokens(&answer), (75, 91));
    assert_eq!(answer.model, "gpt-4o-mini-2024-07-18");
}

#[tokio::test]
async fn json_schema_answer_of_openai_python_parses() {
    let Some(root) = root() else { return };
    let (_, answer) = complete_fixture(
        &root,
        P,
        "chat_completion_json_schema.json",
        provider,
        ChatRequest::user("x"),
    )
    .await;
    assert_eq!(
        answer.text_content(),
        "{\"city\":\"San Francisco\",\"temperature\":65,\"units\":\"f\"}"
    );
    assert_eq!(answer.id, "chatcmpl-ABfvbtVnTu5DeC4EFnRYj8mtfOM99");
    assert_eq!(tokens(&answer), (79, 14));
}

#[tokio::test]
async fn documented_text_answer_parses() {
    let Some(root) = root() else { return };
    let (server, answer) = complete_fixture(
        &root,
        P,
        "chat_completion_text.json",
        provider,
        ChatRequest::user("Hello!"),
    )
    .await;
    assert_eq!(answer.id, "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT");
    assert_eq!(answer.model, "gpt-5.4");
    assert_eq!(
        answer.content,
        vec![ContentBlock::text("Hello! How can I assist you today?")]
    );
    assert_eq!(answer.stop_reason, StopReason::EndTurn);
    assert_eq!(
        answer.usage,
        Usage {
            input_tokens: 19,
            output_tokens: 10,
            ..Usage::default()
        }
    );
    assert_sent_headers(&server);
    assert_eq!(server.received()[0].json()["model"], "gpt-4o-mini");
}

#[tokio::test]
async fn cached_prompt_tokens_are_cache_reads() {
    // The recorded answers all have cached_tokens 0; one changed count pins the mapping.
    let Some(root) = root() else { return };
    let mut body = fixture_json(&root, P, "chat_completion_text.json");
    body["usage"]["prompt_tokens_details"]["cached_tokens"] = json!(12);
    let (_, answer) = complete_with(
        vec![Reply::json(200, body.to_string())],
        provider,
        ChatRequest::user("x"),
    )
    .await;
    let answer = answer.unwrap();
    assert_eq!(answer.usage.input_tokens, 19 - 12);
    assert_eq!(answer.usage.cache_read_tokens, 12);
}

#[tokio::test]
async fn streamed_text_parses() {
    let Some(root) = root() else { return };
    let body = fixture(&root, P, "chat_stream_text.openai-python.sse");
    let (server, answer) = stream_with(
        vec![Reply::sse(body.clone())],
        provider,
        ChatRequest::user("x"),
    )
    .await;
    let answer = answer.unwrap();
    assert_eq!(
        answer.text_content(),
        "I'm unable to provide real-time weather updates. To get the current weather in San Francisco, I recommend checking a reliable weather website or a weather app."
    );
    assert_eq!(answer.id, "chatcmpl-ABfw031mOJeYCSHe4yI2ZjOA6kMJL");
    assert_eq!(answer.stop_reason, StopReason::EndTurn);
    assert_eq!(tokens(&answer), (14, 30));
    // What we sent: a streaming request that asks for usage.
    let sent = server.received()[0].json();
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));
    // Every split point gives the same events.
    let whole = decode(&body, &[]).unwrap();
    for cut in 1..body.len() {
        assert_eq!(decode(&body, &[cut]).unwrap(), whole, "cut at {cut}");
    }
}

#[tokio::test]
async fn long_stream_with_usage_parses() {
    let Some(root) = root() else { return };
    let body = fixture(&root, P, "chat_stream_text_include_usage.sse");
    let (_, answer) = stream_with(vec![Reply::sse(body)], provider, ChatRequest::user("x")).await;
    let answer = answer.unwrap();
    let text = answer.text_content();
    assert_eq!(text.chars().count(), 3300);
    assert!(text.starts_with("The best pizza toppings can vary depending on personal preference"));
    assert!(text.ends_with("Combining various toppings can also create unique flavors and enhance the pizza experience."));
    assert_eq!(answer.model, "gpt-4o-mini-2024-07-18");
    assert_eq!(answer.id, "chatcmpl-D8dUAJuyyWxWUFRdcu8FB6Vi6yfLu");
    assert_eq!(tokens(&answer), (22, 712));
    assert_eq!(answer.stop_reason, StopReason::EndTurn);
}

#[tokio::test]
async fn streamed_parallel_tool_calls_parse() {
    let Some(root) = root() else { return };
    let body = fixture(&root, P, "chat_stream_tool_calls.sse");
    let cuts: Vec<usize> = (1..body.len()).step_by(251).collect();
    let (_, answer) = stream_with(
        vec![Reply::sse(body.clone()).split_at(&cuts)],
        provider,
        ChatRequest::user("x"),
    )
    .await;
    let answer = answer.unwrap();
    assert_eq!(answer.stop_reason, StopReason::ToolUse);
    assert_eq!(
        answer.tool_calls().collect::<Vec<_>>(),
        vec![
            (
                "call_JMW1whyEaYG438VE1OIflxA2",
                "GetWeatherArgs",
                &json!({"city": "Edinburgh", "country": "GB", "units": "c"})
            ),
            (
                "call_DNYTawLBoN8fj3KN6qU9N1Ou",
                "get_stock_price",
                &json!({"ticker": "AAPL", "exchange": "NASDAQ"})
            ),
        ]
    );
    assert_eq!(tokens(&answer), (149, 60));
    // The arguments arrived in pieces, each its own delta.
    let events = decode(&body, &[]).unwrap();
    let pieces = events
        .iter()
        .filter(|e| matches!(e, StreamEvent::ToolInputDelta { .. }))
        .count();
    assert_eq!(pieces, 20);
    for cut in 1..body.len() {
        assert_eq!(decode(&body, &[cut]).unwrap(), events, "cut at {cut}");
    }
}

#[tokio::test]
async fn error_400_is_invalid_request_with_the_message_verbatim() {
    let Some(root) = root() else { return };
    let blocks = header_blocks(&String::from_utf8(fixture(&root, P, "headers.txt")).unwrap());
    let mut reply = Reply::json(
        400,
        fixture(&root, P, "error_400_invalid_request_error.json"),
    );
    reply.headers = blocks["[A]"].headers.clone();
    reply
        .headers
        .retain(|(n, _)| n != "Content-Length" && n != "Connection");
    let (_, error) = complete_with(vec![reply], provider, ChatRequest::user("x")).await;
    let error = error.unwrap_err();
    match &error {
        LlmError::InvalidRequest {
            provider,
            status,
            message,
        } => {
            assert_eq!((provider.as_str(), *status), ("openai", 400));
            assert_eq!(
                message,
                "Invalid schema for function 'get_favorite_color_for_day_of_week': In context=(), 'additionalProperties' is required to be supplied and to be false."
            );
        }
        other => panic!("expected InvalidRequest, got {other:?}"),
    }
    assert!(!error.is_retryable());
}

#[tokio::test]
async fn error_401_is_authentication_with_the_message_verbatim() {
    let Some(root) = root() else { return };
    let (_, error) = complete_with(
        vec![Reply::json(
            401,
            fixture(&root, P, "error_401_invalid_api_key.json"),
        )],
        provider,
        ChatRequest::user("x"),
    )
    .await;
    let error = error.unwrap_err();
    match &error {
        LlmError::Authentication {
            status, message, ..
        } => {
            assert_eq!(*status, 401);
            assert_eq!(
                message,
                "Incorrect API key provided: not-a-re**************************ized. You can find your API key at https://platform.openai.com/account/api-keys."
            );
        }
        other => panic!("expected Authentication, got {other:?}"),
    }
    assert!(!error.is_retryable());
    assert!(!format!("{error:?}").contains(KEY));
}

#[test]
fn recorded_headers_give_the_right_waits() {
    let Some(root) = root() else { return };
    let blocks = header_blocks(&String::from_utf8(fixture(&root, P, "headers.txt")).unwrap());
    assert_eq!(
        blocks.keys().map(String::as_str).collect::<Vec<_>>(),
        ["[A]", "[B]", "[C]", "[D]", "[E]"]
    );
    let now = SystemTime::now();
    let a = &blocks["[A]"];
    assert_eq!(a.status, Some(400));
    assert_eq!(a.get("x-ratelimit-reset-requests"), Some("6ms"));
    assert_eq!(
        parse_go_duration(a.get("x-ratelimit-reset-requests").unwrap()),
        Some(Duration::from_millis(6))
    );
    assert_eq!(
        parse_go_duration(a.get("x-ratelimit-reset-tokens").unwrap()),
        Some(Duration::ZERO)
    );
    // 9999 requests left: nothing to wait for.
    assert_eq!(retry_after(a.pairs(), now), None);
    // Had the requests been exhausted, their reset is the wait.
    let mut exhausted = a.pairs();
    exhausted.retain(|(n, _)| *n != "x-ratelimit-remaining-requests");
    exhausted.push(("x-ratelimit-remaining-requests", "0"));
    assert_eq!(retry_after(exhausted, now), Some(Duration::from_millis(6)));
    assert_eq!(blocks["[B]"].status, Some(401));
    assert_eq!(blocks["[B]"].get("Content-Length"), Some("288"));
    let c = &blocks["[C]"];
    assert_eq!(c.status, Some(200));
    assert_eq!(c.get("x-ratelimit-remaining-tokens"), Some("149999975"));
    assert_eq!(
        parse_go_duration(c.get("x-ratelimit-reset-requests").unwrap()),
        Some(Duration::from_millis(2))
    );
    let d = &blocks["[D]"];
    assert_eq!(
        d.get("Content-Type"),
        Some("text/event-stream; charset=utf-8")
    );
    assert_eq!(retry_after(d.pairs(), now), None);
    // [E] only quotes the documentation of Retry-After (integer seconds, at least 1).
    assert!(blocks["[E]"].headers.is_empty());
    assert_eq!(
        retry_after([("Retry-After", "1")], now),
        Some(Duration::from_secs(1))
    );
}

#[tokio::test]
async fn a_stream_cut_before_done_is_a_retryable_error() {
    let Some(root) = root() else { return };
    let text = String::from_utf8(fixture(&root, P, "chat_stream_tool_calls.sse")).unwrap();
    let cut = text.find("data: [DONE]").unwrap();
    let (_, error) = stream_with(
        vec![Reply::sse(text.as_bytes()[..cut].to_vec())],
        provider,
        ChatRequest::user("x"),
    )
    .await;
    let error = error.unwrap_err();
    assert_ended_early(&error);
}

#[tokio::test]
async fn malformed_json_and_error_chunks() {
    let server = Server::start(vec![
        Reply::json(200, b"{\"id\": \"x\", \"choices\": [{\"message\": ".to_vec()),
        Reply::sse(b"data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"hi\"}\n\ndata: [DONE]\n\n".to_vec()),
        Reply::sse(
            b"data: {\"error\":{\"message\":\"The server had an error\",\"type\":\"server_error\",\"code\":null}}\n\n".to_vec(),
        ),
    ])
    .await;
    let p = provider(&server);
    assert!(matches!(
        p.complete(ChatRequest::user("x")).await,
        Err(LlmError::Decode(_))
    ));
    let error = collect_stream(p.stream(ChatRequest::user("x")).await.unwrap())
        .await
        .unwrap_err();
    assert!(matches!(error, LlmError::Decode(_)), "{error:?}");
    let error = collect_stream(p.stream(ChatRequest::user("x")).await.unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(&error, LlmError::Server { message, .. } if message == "The server had an error"),
        "{error:?}"
    );
}

#[tokio::test]
async fn context_length_and_content_filter_are_typed() {
    let server = Server::start(vec![
        Reply::json(400, br#"{"error":{"message":"This model's maximum context length is 128000 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#.to_vec()),
        Reply::json(400, br#"{"error":{"message":"filtered","type":"invalid_request_error","param":null,"code":"content_filter"}}"#.to_vec()),
        Reply::json(503, b"<html>upstream down</html>".to_vec()).header("retry-after", "3"),
        Reply::json(429, br#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#.to_vec())
            .header("x-ratelimit-remaining-requests", "0")
            .header("x-ratelimit-reset-requests", "1.5s"),
    ])
    .await;
    let p = provider(&server);
    let e = p.complete(ChatRequest::user("x")).await.unwrap_err();
    assert!(
        matches!(e, LlmError::ContextTooLong(ref m) if m.contains("128000")),
        "{e:?}"
    );
    assert!(!e.is_retryable());
    let e = p.complete(ChatRequest::user("x")).await.unwrap_err();
    assert!(matches!(e, LlmError::ContentFiltered(_)), "{e:?}");
    assert!(!e.is_retryable());
    let e = p.complete(ChatRequest::user("x")).await.unwrap_err();
    assert!(
        matches!(e, LlmError::Server { status: 503, ref message, .. } if message == "<html>upstream down</html>"),
        "{e:?}"
    );
    assert!(e.is_retryable());
    let e = p.complete(ChatRequest::user("x")).await.unwrap_err();
    assert_eq!(e.retry_after(), Some(Duration::from_millis(1500)));
}

#[test]
fn request_mapping_covers_system_images_results_and_choices() {
    let p = OpenAiProvider::new(OpenAiConfig::new(KEY)).unwrap();
    let mut request = ChatRequest::new(vec![
        Message {
            role: Role::User,
            content: vec![
                ContentBlock::text("what is this?"),
                ContentBlock::Image {
                    source: ImageSource::Base64 {
                        media_type: "image/png".into(),
                        data: "AAAA".into(),
                    },
                },
            ],
        },
        Message {
            role: Role::Assistant,
            content: vec![
                ContentBlock::Thinking {
                    thinking: "not sent".into(),
                    signature: None,
                },
                ContentBlock::text("Let me look."),
                ContentBlock::ToolUse {
                    id: "call_1".into(),
                    name: "zoom".into(),
                    input: json!({"x": 1}),
                },
            ],
        },
        Message {
            role: Role::User,
            content: vec![
                ContentBlock::tool_error("call_1", "out of range"),
                ContentBlock::text("and now?"),
            ],
        },
    ])
    .system("be brief")
    .tool(ToolDefinition::new("zoom", "Zooms.", json!({"type": "object"})).strict(true))
    .tool_choice(ToolChoice::Tool {
        name: "zoom".into(),
    })
    .temperature(0.25)
    .max_tokens(300);
    request.stop_sequences = vec!["END".into()];
    assert_eq!(
        p.request_body(&request, false).unwrap(),
        json!({
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
                ]},
                {"role": "assistant", "content": "Let me look.", "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "zoom", "arguments": "{\"x\":1}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "[tool error] out of range"},
                {"role": "user", "content": "and now?"}
            ],
            "tools": [{"type": "function", "function": {"name": "zoom", "description": "Zooms.",
                       "parameters": {"type": "object"}, "strict": true}}],
            "tool_choice": {"type": "function", "function": {"name": "zoom"}},
            "temperature": 0.25,
            "stop": ["END"],
            "max_completion_tokens": 300
        })
    );
    let any = p
        .request_body(&ChatRequest::user("x").tool_choice(ToolChoice::Any), true)
        .unwrap();
    assert_eq!(any["tool_choice"], "required");
    assert_eq!(any["stream_options"], json!({"include_usage": true}));
    // A compatible server: no key, `max_tokens`, local.
    let local = OpenAiProvider::new(
        OpenAiConfig::compatible("http://localhost:8000").default_model("qwen2.5"),
    )
    .unwrap();
    assert!(local.capabilities().local);
    assert!(!p.capabilities().local);
    let body = local.request_body(&ChatRequest::user("x"), false).unwrap();
    assert_eq!(body["max_tokens"], 1024);
    assert!(body.get("max_completion_tokens").is_none());
    let off = OpenAiProvider::new(
        OpenAiConfig::compatible("http://x")
            .default_model("m")
            .include_usage(false)
            .max_tokens_field(MaxTokensField::MaxCompletionTokens),
    )
    .unwrap();
    let body = off.request_body(&ChatRequest::user("x"), true).unwrap();
    assert!(body.get("stream_options").is_none());
    assert_eq!(body["max_completion_tokens"], 1024);
    // api.openai.com without a key is refused at construction.
    assert!(matches!(
        OpenAiProvider::new(OpenAiConfig::compatible("https://api.openai.com")),
        Err(LlmError::Config(_))
    ));
}

#[tokio::test]
async fn a_compatible_server_without_key_sends_no_authorization() {
    let Some(root) = root() else { return };
    let server = Server::start(vec![Reply::json(
        200,
        fixture(&root, P, "chat_completion_text.json"),
    )])
    .await;
    let p = OpenAiProvider::new(OpenAiConfig::compatible(server.url()).default_model("llama3.2"))
        .unwrap();
    let answer = p.complete(ChatRequest::user("hi")).await.unwrap();
    assert_eq!(answer.text_content(), "Hello! How can I assist you today?");
    let received = &server.received()[0];
    assert_eq!(received.path, "/v1/chat/completions");
    assert_eq!(received.header("authorization"), None);
    assert!(!format!("{p:?}").contains("Bearer"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Any chunking of a recorded stream assembles into the same message.
    #[test]
    fn any_chunking_assembles_the_same_message(
        which in 0usize..3,
        sizes in proptest::collection::vec(1usize..400, 1..80),
    ) {
        let Some(root) = root() else { return Ok(()) };
        let name = ["chat_stream_tool_calls.sse", "chat_stream_text.openai-python.sse", "chat_stream_text_include_usage.sse"][which];
        let body = fixture(&root, P, name);
        let whole = assemble(&decode(&body, &[]).unwrap());
        let mut cuts = Vec::new();
        let mut at = 0;
        for size in sizes {
            at += size;
            if at >= body.len() { break }
            cuts.push(at);
        }
        prop_assert_eq!(assemble(&decode(&body, &cuts).unwrap()), whole);
    }
}
