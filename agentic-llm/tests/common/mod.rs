//! Proptest strategies for the provider-neutral types, shared by the property tests.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;

use agentic_llm::{
    CacheControl, ChatRequest, ChatResponse, ContentBlock, Cost, ImageSource, Message,
    RequestMetadata, ResponseFormat, Role, StopReason, ThinkingConfig, ToolChoice, ToolDefinition,
    Usage,
};
use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use serde_json::Value;

/// Short strings with some non-ASCII and JSON-special characters, so that escaping and
/// character boundaries are exercised.
pub fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9 ,.!?\n\t\"\\\\{}:é中😀]{0,40}",
        any::<String>().prop_map(|s| s.chars().take(20).collect()),
    ]
}

/// Any JSON value without floats: serde_json does not promise to round-trip every `f64`
/// bit for bit without its `float_roundtrip` feature, and tool arguments rarely need it.
pub fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map(text(), inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Tool arguments: a JSON object, as providers send them.
pub fn tool_input() -> impl Strategy<Value = Value> {
    btree_map("[a-z_]{1,8}", json_value(), 0..4)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

pub fn cache_control() -> impl Strategy<Value = Option<CacheControl>> {
    option::of(option::of("[0-9]{1,2}[mh]").prop_map(|ttl| CacheControl::Ephemeral { ttl }))
}

pub fn image_source() -> impl Strategy<Value = ImageSource> {
    prop_oneof![
        ("image/(png|jpeg)", "[A-Za-z0-9+/]{0,40}={0,2}")
            .prop_map(|(media_type, data)| ImageSource::Base64 { media_type, data }),
        "https://[a-z]{1,10}\\.example/[a-z]{0,10}\\.png".prop_map(|url| ImageSource::Url { url }),
    ]
}

/// Blocks a model can send back: text (without cache hints), tool calls, thinking
/// (without signature). These are what streaming can carry.
pub fn output_block() -> impl Strategy<Value = ContentBlock> {
    prop_oneof![
        text().prop_map(ContentBlock::text),
        ("[a-z]{1,6}_[A-Za-z0-9]{1,10}", "[a-z_]{1,12}", tool_input())
            .prop_map(|(id, name, input)| ContentBlock::ToolUse { id, name, input }),
        (text(), option::of("[A-Za-z0-9+/=]{1,30}")).prop_map(|(thinking, signature)| {
            ContentBlock::Thinking {
                thinking,
                signature,
            }
        }),
        "[A-Za-z0-9+/=]{1,30}".prop_map(|data| ContentBlock::RedactedThinking { data }),
    ]
}

/// Every kind of block, with every optional field.
pub fn any_block() -> impl Strategy<Value = ContentBlock> {
    let leaf = prop_oneof![
        (text(), cache_control()).prop_map(|(text, cache_control)| ContentBlock::Text {
            text,
            cache_control
        }),
        image_source().prop_map(|source| ContentBlock::Image { source }),
        ("[a-z_0-9]{1,12}", "[a-z_]{1,12}", json_value())
            .prop_map(|(id, name, input)| ContentBlock::ToolUse { id, name, input }),
        (text(), option::of("[A-Za-z0-9+/=]{1,30}")).prop_map(|(thinking, signature)| {
            ContentBlock::Thinking {
                thinking,
                signature,
            }
        }),
        "[A-Za-z0-9+/=]{1,30}".prop_map(|data| ContentBlock::RedactedThinking { data }),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        (
            "[a-z_0-9]{1,12}",
            vec(inner, 0..3),
            any::<bool>(),
            cache_control(),
        )
            .prop_map(|(tool_use_id, content, is_error, cache_control)| {
                ContentBlock::ToolResult {
                    tool_use_id,
                    content,
                    is_error,
                    cache_control,
                }
            })
    })
}

pub fn stop_reason() -> impl Strategy<Value = StopReason> {
    prop_oneof![
        Just(StopReason::EndTurn),
        Just(StopReason::MaxTokens),
        Just(StopReason::StopSequence),
        Just(StopReason::ToolUse),
        Just(StopReason::ContentFilter),
        Just(StopReason::Refusal),
        Just(StopReason::PauseTurn),
        text().prop_map(StopReason::Other),
    ]
}

/// Token counts small enough that adding start and end usage cannot overflow.
pub fn usage() -> impl Strategy<Value = Usage> {
    (0..1u64 << 40, 0..1u64 << 40, 0..1u64 << 40, 0..1u64 << 40).prop_map(
        |(input_tokens, output_tokens, cache_read_tokens, cache_write_tokens)| Usage {
            input_tokens,
            output_tokens,
            cache_read_tokens,
            cache_write_tokens,
        },
    )
}

/// A response as a model streams it: no cost (a cost meter adds it afterwards).
pub fn streamable_response() -> impl Strategy<Value = ChatResponse> {
    (
        "[a-z_0-9]{0,12}",
        "[a-z0-9.-]{0,12}",
        vec(output_block(), 0..5),
        stop_reason(),
        option::of(text()),
        usage(),
    )
        .prop_map(
            |(id, model, content, stop_reason, stop_sequence, usage)| ChatResponse {
                id,
                model,
                content,
                stop_reason,
                stop_sequence,
                usage,
                cost: None,
            },
        )
}

/// Dollar amounts that are exact in binary (whole multiples of 1/1024), for the reason
/// given at [`json_value`].
pub fn cost() -> impl Strategy<Value = Option<Cost>> {
    option::of((0u32..10_000_000).prop_map(|n| Cost {
        usd: f64::from(n) / 1024.0,
    }))
}

pub fn any_response() -> impl Strategy<Value = ChatResponse> {
    (streamable_response(), vec(any_block(), 0..4), cost()).prop_map(
        |(mut response, content, cost)| {
            response.content.extend(content);
            response.cost = cost;
            response
        },
    )
}

pub fn message() -> impl Strategy<Value = Message> {
    (
        prop_oneof![Just(Role::User), Just(Role::Assistant)],
        vec(any_block(), 0..4),
    )
        .prop_map(|(role, content)| Message { role, content })
}

pub fn tool_choice() -> impl Strategy<Value = ToolChoice> {
    prop_oneof![
        Just(ToolChoice::Auto),
        Just(ToolChoice::Any),
        Just(ToolChoice::None),
        "[a-z_]{1,10}".prop_map(|name| ToolChoice::Tool { name }),
    ]
}

pub fn tool() -> impl Strategy<Value = ToolDefinition> {
    (
        "[a-z_]{1,12}",
        text(),
        json_value(),
        cache_control(),
        any::<bool>(),
    )
        .prop_map(
            |(name, description, input_schema, cache_control, strict)| ToolDefinition {
                name,
                description,
                input_schema,
                cache_control,
                strict,
            },
        )
}

/// Sampling parameters that are exact in binary (see [`cost`]).
pub fn unit_f32() -> impl Strategy<Value = Option<f32>> {
    option::of((0u16..=256).prop_map(|n| f32::from(n) / 128.0))
}

pub fn metadata() -> impl Strategy<Value = RequestMetadata> {
    (
        any::<bool>(),
        option::of("[a-z]{1,8}"),
        any::<bool>(),
        btree_map("[a-z_]{1,8}", text(), 0..3),
    )
        .prop_map(|(sensitive, tier, cacheable, tags)| RequestMetadata {
            sensitive,
            tier,
            cacheable,
            tags: tags.into_iter().collect::<BTreeMap<_, _>>(),
        })
}

pub fn request() -> impl Strategy<Value = ChatRequest> {
    (
        (
            option::of("[a-z0-9.-]{1,16}"),
            vec(
                (text(), cache_control()).prop_map(|(text, cache_control)| ContentBlock::Text {
                    text,
                    cache_control,
                }),
                0..3,
            ),
            vec(message(), 0..4),
            vec(tool(), 0..3),
            option::of(tool_choice()),
            any::<u32>(),
        ),
        (
            unit_f32(),
            unit_f32(),
            vec(text(), 0..3),
            option::of(
                (
                    "[a-z_]{1,10}",
                    option::of(text()),
                    json_value(),
                    any::<bool>(),
                )
                    .prop_map(|(name, description, schema, strict)| {
                        ResponseFormat {
                            name,
                            description,
                            schema,
                            strict,
                        }
                    }),
            ),
            metadata(),
            option::of(
                (1024u32..32_000).prop_map(|budget_tokens| ThinkingConfig { budget_tokens }),
            ),
        ),
    )
        .prop_map(
            |(
                (model, system, messages, tools, tool_choice, max_tokens),
                (temperature, top_p, stop_sequences, response_format, metadata, thinking),
            )| ChatRequest {
                model,
                system,
                messages,
                tools,
                tool_choice,
                max_tokens,
                temperature,
                top_p,
                stop_sequences,
                response_format,
                thinking,
                metadata,
            },
        )
}
