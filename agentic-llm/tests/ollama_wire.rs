//! The Ollama provider against the documented wire format: every file of `fixtures/ollama`
//! is served by a local server, and both what we send and what we parse are asserted.

#![cfg(feature = "ollama")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};

use agentic_llm::ndjson::NdjsonSplitter;
use agentic_llm::ollama::{OllamaConfig, OllamaProvider, StreamDecoder};
use agentic_llm::{
    ChatRequest, ContentBlock, LlmError, LlmProvider, Message, Role, StopReason, StreamEvent,
    ToolDefinition, Usage,
};
use proptest::prelude::*;
use serde_json::{Value, json};
use support::{
    Reply, Server, assemble, check_fixture_list, complete_fixture, decode_pieces, fixture,
    fixture_json, fixtures, stream_items, stream_with, take, tokens,
};

const P: &str = "ollama";

/// Every file of `fixtures/ollama` and the test that checks it.
const CHECKED: &[(&str, &str)] = &[
    ("chat.json", "documented_answer_parses"),
    (
        "chat_stream.test-fixture.ndjson",
        "server_test_fixture_stream_parses",
    ),
    (
        "chat_stream_chunk.json",
        "documented_stream_objects_as_ndjson_lines",
    ),
    (
        "chat_stream_final.json",
        "documented_stream_objects_as_ndjson_lines",
    ),
    (
        "chat_stream_tool_calls_chunk.json",
        "documented_tool_stream_as_ndjson_lines",
    ),
    (
        "chat_stream_tool_calls_final.json",
        "documented_tool_stream_as_ndjson_lines",
    ),
    (
        "chat_tool_calls.json",
        "tool_request_is_sent_as_documented_and_its_answer_parses",
    ),
    (
        "error.json",
        "error_body_is_a_server_error_with_the_message_verbatim",
    ),
    ("generate_stream.ndjson", "generate_stream_lines_split"),
    (
        "generate_stream_error.ndjson",
        "an_error_line_mid_stream_ends_it_with_that_error",
    ),
    (
        "request.json",
        "tool_request_is_sent_as_documented_and_its_answer_parses",
    ),
];

fn root() -> Option<PathBuf> {
    fixtures()
}

fn provider(server: &Server) -> OllamaProvider {
    OllamaProvider::new(OllamaConfig::new().base_url(server.url())).unwrap()
}

/// A documented (pretty-printed) object as the one NDJSON line it is on the wire.
fn line(root: &Path, name: &str) -> String {
    let value = fixture_json(root, P, name);
    let mut text = serde_json::to_string(&value).unwrap();
    text.push('\n');
    text
}

/// Decodes a whole body, fed in pieces cut at `cuts`.
fn decode(body: &[u8], cuts: &[usize]) -> Result<Vec<StreamEvent>, LlmError> {
    let mut decoder = StreamDecoder::new(P);
    decode_pieces(body, cuts, |piece, out| match piece {
        Some(piece) => decoder.push(piece, out),
        None => decoder.finish(out),
    })
}

fn assert_sent(server: &Server) {
    for received in server.received() {
        assert_eq!(received.method, "POST");
        assert_eq!(received.path, "/api/chat");
        assert_eq!(received.header("authorization"), None);
        assert_eq!(received.header("content-type"), Some("application/json"));
    }
}

#[test]
fn every_fixture_file_is_checked() {
    let Some(root) = root() else { return };
    check_fixture_list(&root, P, CHECKED, |name, bytes| {
        if name.ends_with(".json") {
            serde_json::from_slice::<Value>(bytes).unwrap();
        } else {
            assert!(name.ends_with(".ndjson"), "{name}");
            let mut lines = Vec::new();
            let mut splitter = NdjsonSplitter::new();
            splitter.push(bytes, &mut lines);
            splitter.finish(&mut lines);
            for line in lines {
                serde_json::from_slice::<Value>(&line).unwrap();
            }
        }
    });
}

#[tokio::test]
async fn documented_answer_parses() {
    let Some(root) = root() else { return };
    let (server, answer) = complete_fixture(
        &root,
        P,
        "chat.json",
        provider,
        ChatRequest::user("why is the sky blue?"),
    )
    .await;
    assert_sent(&server);
    assert_eq!(answer.model, "llama3.2");
    assert_eq!(answer.id, "ollama-2023-12-12T14:13:43.416799Z");
    assert_eq!(
        answer.content,
        vec![ContentBlock::text("Hello! How are you today?")]
    );
    assert_eq!(answer.stop_reason, StopReason::EndTurn);
    assert_eq!(
        answer.usage,
        Usage {
            input_tokens: 26,
            output_tokens: 298,
            ..Usage::default()
        }
    );
    let sent = server.received()[0].json();
    assert_eq!(sent["stream"], false);
    assert_eq!(sent["model"], "llama3.2");
    assert_eq!(sent["options"], json!({"num_predict": 1024}));
}

#[tokio::test]
async fn tool_request_is_sent_as_documented_and_its_answer_parses() {
    let Some(root) = root() else { return };
    let server = Server::start(vec![Reply::json(
        200,
        fixture(&root, P, "chat_tool_calls.json"),
    )])
    .await;
    let request = ChatRequest::user("what is the weather in tokyo?")
        .model("llama3.2")
        .tool(ToolDefinition::new(
            "get_weather",
            "Get the weather in a given city",
            json!({
                "type": "object",
                "properties": {"city": {"type": "string", "description": "The city to get the weather for"}},
                "required": ["city"]
            }),
        ));
    let answer = provider(&server).complete(request).await.unwrap();
    // The documented request, plus the output limit we always send.
    let mut sent = server.received()[0].json();
    assert_eq!(
        take(&mut sent, "options"),
        Some(json!({"num_predict": 1024}))
    );
    assert_eq!(sent, fixture_json(&root, P, "request.json"));
    assert_eq!(answer.stop_reason, StopReason::ToolUse);
    let calls: Vec<_> = answer.tool_calls().collect();
    assert_eq!(calls.len(), 1);
    assert!(calls[0].0.starts_with("ollama_call_"));
    assert_eq!(calls[0].1, "get_weather");
    assert_eq!(calls[0].2, &json!({"city": "Tokyo"}));
    assert_eq!(tokens(&answer), (169, 18));
}

#[tokio::test]
async fn documented_stream_objects_as_ndjson_lines() {
    let Some(root) = root() else { return };
    let body = format!(
        "{}{}",
        line(&root, "chat_stream_chunk.json"),
        line(&root, "chat_stream_final.json")
    );
    let (server, answer) =
        stream_with(vec![Reply::ndjson(body)], provider, ChatRequest::user("x")).await;
    let answer = answer.unwrap();
    assert_eq!(server.received()[0].json()["stream"], true);
    assert_eq!(answer.text_content(), "The");
    assert_eq!(answer.stop_reason, StopReason::EndTurn);
    assert_eq!(tokens(&answer), (26, 282));
}

#[tokio::test]
async fn documented_tool_stream_as_ndjson_lines() {
    let Some(root) = root() else { return };
    let body = format!(
        "{}{}",
        line(&root, "chat_stream_tool_calls_chunk.json"),
        line(&root, "chat_stream_tool_calls_final.json")
    );
    let (_, answer) = stream_with(
        vec![Reply::ndjson(body.clone())],
        provider,
        ChatRequest::user("x"),
    )
    .await;
    let answer = answer.unwrap();
    assert_eq!(answer.stop_reason, StopReason::ToolUse);
    let calls: Vec<_> = answer.tool_calls().collect();
    assert_eq!(
        (calls[0].1, calls[0].2),
        ("get_weather", &json!({"city": "Tokyo"}))
    );
    assert_eq!(tokens(&answer), (169, 15));
    // Every split point gives the same message (ids aside: they are handed out per decode).
    let strip = |r: agentic_llm::ChatResponse| {
        r.tool_calls()
            .map(|(_, n, i)| (n.to_owned(), i.clone()))
            .collect::<Vec<_>>()
    };
    let whole = strip(assemble(&decode(body.as_bytes(), &[]).unwrap()));
    for cut in 1..body.len() {
        assert_eq!(
            strip(assemble(&decode(body.as_bytes(), &[cut]).unwrap())),
            whole
        );
    }
}

#[tokio::test]
async fn server_test_fixture_stream_parses() {
    let Some(root) = root() else { return };
    let body = fixture(&root, P, "chat_stream.test-fixture.ndjson");
    let (_, answer) = stream_with(
        vec![Reply::ndjson(body.clone()).split_at(&[5, 60, 130])],
        provider,
        ChatRequest::user("x"),
    )
    .await;
    let answer = answer.unwrap();
    assert_eq!(answer.model, "gpt-oss:120b");
    assert_eq!(answer.text_content(), "Hello");
    assert_eq!(answer.stop_reason, StopReason::EndTurn);
    let whole = decode(&body, &[]).unwrap();
    for cut in 1..body.len() {
        assert_eq!(decode(&body, &[cut]).unwrap(), whole, "cut at {cut}");
    }
}

#[test]
fn generate_stream_lines_split() {
    // /api/generate, not /api/chat: only the line splitting applies to it.
    let Some(root) = root() else { return };
    let body = fixture(&root, P, "generate_stream.ndjson");
    let mut lines = Vec::new();
    let mut splitter = NdjsonSplitter::new();
    for piece in body.chunks(13) {
        splitter.push(piece, &mut lines);
    }
    splitter.finish(&mut lines);
    assert_eq!(lines.len(), 7);
    let objects: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    let text: String = objects
        .iter()
        .map(|o| o["response"].as_str().unwrap())
        .collect();
    assert_eq!(text, "That's a fantastic question!");
    assert_eq!(objects[6]["done"], true);
    assert_eq!(objects[6]["done_reason"], "stop");
    assert!(objects[..6].iter().all(|o| o["done"] == false));
}

#[tokio::test]
async fn an_error_line_mid_stream_ends_it_with_that_error() {
    let Some(root) = root() else { return };
    let server = Server::start(vec![Reply::ndjson(fixture(
        &root,
        P,
        "generate_stream_error.ndjson",
    ))])
    .await;
    let events = stream_items(&provider(&server), ChatRequest::user("x")).await;
    // The lines before are /api/generate lines without a chat message: a start, no text.
    assert!(
        matches!(events[0], Ok(StreamEvent::MessageStart { ref model, .. }) if model == "gemma4")
    );
    let error = events.last().unwrap().as_ref().unwrap_err();
    assert!(
        matches!(error, LlmError::Server { status: 500, message, .. } if message == "an error was encountered while running the model"),
        "{error:?}"
    );
    assert!(error.is_retryable());
}

#[tokio::test]
async fn error_body_is_a_server_error_with_the_message_verbatim() {
    let Some(root) = root() else { return };
    let server = Server::start(vec![
        Reply::json(500, fixture(&root, P, "error.json")),
        Reply::json(
            404,
            br#"{"error":"model \"nope\" not found, try pulling it first"}"#.to_vec(),
        ),
    ])
    .await;
    let p = provider(&server);
    let error = p.complete(ChatRequest::user("x")).await.unwrap_err();
    assert!(
        matches!(&error, LlmError::Server { status: 500, message, provider } if message == "the model failed to generate a response" && provider == "ollama"),
        "{error:?}"
    );
    let error = p
        .complete(ChatRequest::user("x").model("nope"))
        .await
        .unwrap_err();
    assert!(matches!(error, LlmError::NotFound { .. }), "{error:?}");
    assert!(!error.is_retryable());
}

#[tokio::test]
async fn a_stream_without_done_is_a_retryable_error() {
    let Some(root) = root() else { return };
    let (_, error) = stream_with(
        vec![Reply::ndjson(line(&root, "chat_stream_chunk.json"))],
        provider,
        ChatRequest::user("x"),
    )
    .await;
    let error = error.unwrap_err();
    assert!(
        matches!(&error, LlmError::Connection { message, .. } if message.contains("stream ended early"))
    );
    assert!(error.is_retryable());
}

#[test]
fn request_mapping_covers_system_tool_results_images_and_options() {
    let p = OllamaProvider::new(OllamaConfig::new()).unwrap();
    assert!(p.capabilities().local);
    let mut request = ChatRequest::new(vec![
        Message {
            role: Role::User,
            content: vec![
                ContentBlock::text("what is in this picture?"),
                ContentBlock::Image {
                    source: agentic_llm::ImageSource::Base64 {
                        media_type: "image/png".into(),
                        data: "iVBORw0KGgo=".into(),
                    },
                },
            ],
        },
        Message {
            role: Role::Assistant,
            content: vec![ContentBlock::ToolUse {
                id: "ollama_call_7".into(),
                name: "get_weather".into(),
                input: json!({"city": "Tokyo"}),
            }],
        },
        Message {
            role: Role::User,
            content: vec![ContentBlock::tool_result("ollama_call_7", "22 degrees")],
        },
    ])
    .system("be brief")
    .temperature(0.0)
    .max_tokens(64);
    request.stop_sequences = vec!["END".into()];
    request.response_format = Some(agentic_llm::ResponseFormat {
        name: "w".into(),
        description: None,
        schema: json!({"type": "object"}),
        strict: true,
    });
    request.thinking = Some(agentic_llm::ThinkingConfig {
        budget_tokens: 1024,
    });
    assert_eq!(
        p.request_body(&request, true).unwrap(),
        json!({
            "model": "llama3.2",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "what is in this picture?", "images": ["iVBORw0KGgo="]},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}}
                ]},
                {"role": "tool", "content": "22 degrees", "tool_name": "get_weather"}
            ],
            "stream": true,
            "format": {"type": "object"},
            "options": {"num_predict": 64, "temperature": 0.0, "stop": ["END"]},
            "think": true
        })
    );
    // URL images cannot be sent to Ollama.
    let url = ChatRequest::new(vec![Message {
        role: Role::User,
        content: vec![ContentBlock::Image {
            source: agentic_llm::ImageSource::Url {
                url: "https://x.example/a.png".into(),
            },
        }],
    }]);
    assert!(matches!(
        p.request_body(&url, false),
        Err(LlmError::InvalidRequest { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any chunking of a stream assembles into the same message.
    #[test]
    fn any_chunking_assembles_the_same_message(
        sizes in proptest::collection::vec(1usize..40, 1..40),
    ) {
        let Some(root) = root() else { return Ok(()) };
        let body = format!(
            "{}{}{}",
            line(&root, "chat_stream_chunk.json"),
            line(&root, "chat_stream_chunk.json"),
            line(&root, "chat_stream_final.json")
        );
        let body = body.as_bytes();
        let mut cuts = Vec::new();
        let mut at = 0;
        for size in sizes {
            at += size;
            if at >= body.len() { break }
            cuts.push(at);
        }
        let whole = assemble(&decode(body, &[]).unwrap());
        prop_assert_eq!(whole.text_content(), "TheThe");
        prop_assert_eq!(assemble(&decode(body, &cuts).unwrap()), whole);
    }
}
