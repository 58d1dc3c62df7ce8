//! JSON round trips of the provider-neutral types (they are stored in caches, decision
//! logs and task state), and the shape of the JSON where other code depends on it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use agentic_llm::{
    CacheControl, ChatRequest, ChatResponse, ContentBlock, DEFAULT_MAX_TOKENS, ImageSource,
    StopReason, ToolChoice,
};
use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

fn round_trip<T: Serialize + DeserializeOwned>(value: &T) -> T {
    let json = serde_json::to_string(value).unwrap();
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"))
}

proptest! {
    #[test]
    fn content_blocks_round_trip(block in common::any_block()) {
        prop_assert_eq!(round_trip(&block), block);
    }

    #[test]
    fn requests_round_trip(request in common::request()) {
        prop_assert_eq!(round_trip(&request), request);
    }

    #[test]
    fn responses_round_trip(response in common::any_response()) {
        prop_assert_eq!(round_trip(&response), response);
    }

    #[test]
    fn pretty_and_value_forms_agree(response in common::any_response()) {
        let pretty = serde_json::to_string_pretty(&response).unwrap();
        let from_pretty: ChatResponse = serde_json::from_str(&pretty).unwrap();
        let value = serde_json::to_value(&response).unwrap();
        let from_value: ChatResponse = serde_json::from_value(value).unwrap();
        prop_assert_eq!(&from_pretty, &response);
        prop_assert_eq!(from_value, response);
    }
}

#[test]
fn content_block_json_is_tagged_by_type() {
    assert_eq!(
        serde_json::to_value(ContentBlock::text("hi")).unwrap(),
        json!({"type": "text", "text": "hi"})
    );
    assert_eq!(
        serde_json::to_value(ContentBlock::Text {
            text: "sys".into(),
            cache_control: Some(CacheControl::Ephemeral { ttl: None }),
        })
        .unwrap(),
        json!({"type": "text", "text": "sys", "cache_control": {"type": "ephemeral"}})
    );
    assert_eq!(
        serde_json::to_value(ContentBlock::tool_result("toolu_1", "42")).unwrap(),
        json!({
            "type": "tool_result",
            "tool_use_id": "toolu_1",
            "content": [{"type": "text", "text": "42"}],
            "is_error": false
        })
    );
    assert_eq!(
        serde_json::to_value(ContentBlock::Image {
            source: ImageSource::Url {
                url: "https://x.example/a.png".into()
            }
        })
        .unwrap(),
        json!({"type": "image", "source": {"type": "url", "url": "https://x.example/a.png"}})
    );
}

#[test]
fn optional_fields_may_be_omitted_when_reading() {
    let block: ContentBlock =
        serde_json::from_value(json!({"type": "tool_result", "tool_use_id": "t", "content": []}))
            .unwrap();
    assert_eq!(
        block,
        ContentBlock::ToolResult {
            tool_use_id: "t".into(),
            content: vec![],
            is_error: false,
            cache_control: None,
        }
    );

    let request: ChatRequest = serde_json::from_value(json!({
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "max_tokens": DEFAULT_MAX_TOKENS
    }))
    .unwrap();
    assert_eq!(request, ChatRequest::user("hi"));

    let response: ChatResponse = serde_json::from_value(json!({
        "id": "m", "model": "x", "content": [], "stop_reason": "end_turn",
        "usage": {"input_tokens": 1, "output_tokens": 2}
    }))
    .unwrap();
    assert_eq!(response.usage.total(), 3);
    assert_eq!(response.cost, None);
}

#[test]
fn empty_request_fields_are_not_written() {
    let value = serde_json::to_value(ChatRequest::user("hi")).unwrap();
    let keys: Vec<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["max_tokens", "messages", "metadata"]);
}

#[test]
fn stop_reasons_and_tool_choices_are_snake_case() {
    assert_eq!(
        serde_json::to_value(StopReason::MaxTokens).unwrap(),
        json!("max_tokens")
    );
    assert_eq!(
        serde_json::to_value(StopReason::Other("weird".into())).unwrap(),
        json!({"other": "weird"})
    );
    assert_eq!(
        serde_json::to_value(ToolChoice::Tool {
            name: "search".into()
        })
        .unwrap(),
        json!({"type": "tool", "name": "search"})
    );
    assert_eq!(
        serde_json::to_value(ToolChoice::default()).unwrap(),
        json!({"type": "auto"})
    );
}
