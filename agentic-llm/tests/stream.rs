//! `StreamAccumulator`: any chunking (and interleaving) of a response's deltas reassembles
//! to the same response, and malformed streams are `Decode` errors, not panics or silent
//! corruption.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use agentic_llm::stream::{BlockStart, StreamEvent, events_for};
use agentic_llm::{
    ChatRequest, ChatResponse, ContentBlock, LlmError, LlmProvider, ScriptedProvider,
    StreamAccumulator, Usage, collect_stream,
};
use futures::StreamExt;
use proptest::prelude::*;
use serde_json::json;

fn accumulate(events: &[StreamEvent]) -> Result<ChatResponse, LlmError> {
    let mut acc = StreamAccumulator::new();
    for event in events {
        acc.push(event)?;
    }
    acc.finish()
}

fn decode_message(result: Result<impl std::fmt::Debug, LlmError>) -> String {
    match result {
        Err(LlmError::Decode(message)) => message,
        other => panic!("expected LlmError::Decode, got {other:?}"),
    }
}

fn start(index: usize, block: BlockStart) -> StreamEvent {
    StreamEvent::BlockStart { index, block }
}

fn tool_start(index: usize) -> StreamEvent {
    start(
        index,
        BlockStart::ToolUse {
            id: "toolu_9".into(),
            name: "run_query".into(),
        },
    )
}

#[test]
fn text_delta_for_a_tool_block_is_a_decode_error() {
    let mut acc = StreamAccumulator::new();
    acc.push(&tool_start(0)).unwrap();
    let message = decode_message(acc.push(&StreamEvent::TextDelta {
        index: 0,
        text: "hi".into(),
    }));
    assert!(
        message.contains("text delta") && message.contains("block 0"),
        "{message}"
    );
}

#[test]
fn tool_input_delta_for_a_text_or_missing_block_is_a_decode_error() {
    let mut acc = StreamAccumulator::new();
    acc.push(&start(0, BlockStart::Text)).unwrap();
    let message = decode_message(acc.push(&StreamEvent::ToolInputDelta {
        index: 0,
        partial_json: "{".into(),
    }));
    assert!(message.contains("tool input delta"), "{message}");

    // A tool input delta cannot start a block: without BlockStart there is no id or name.
    let mut acc = StreamAccumulator::new();
    decode_message(acc.push(&StreamEvent::ToolInputDelta {
        index: 3,
        partial_json: "{}".into(),
    }));
}

#[test]
fn thinking_delta_for_a_text_block_is_a_decode_error() {
    let mut acc = StreamAccumulator::new();
    acc.push(&start(1, BlockStart::Text)).unwrap();
    decode_message(acc.push(&StreamEvent::ThinkingDelta {
        index: 1,
        thinking: "hmm".into(),
    }));
}

#[test]
fn malformed_tool_json_is_a_decode_error_naming_the_tool() {
    let events = [
        tool_start(0),
        StreamEvent::ToolInputDelta {
            index: 0,
            partial_json: "{\"sql\": \"select".into(),
        },
        StreamEvent::BlockStop { index: 0 },
        StreamEvent::MessageStop,
    ];
    let message = decode_message(accumulate(&events));
    assert!(message.contains("run_query"), "{message}");
    assert!(message.contains("toolu_9"), "{message}");
}

#[test]
fn empty_tool_input_becomes_an_empty_object() {
    let events = [tool_start(0), StreamEvent::BlockStop { index: 0 }];
    let response = accumulate(&events).unwrap();
    let (_, name, input) = response.tool_calls().next().unwrap();
    assert_eq!(name, "run_query");
    assert_eq!(input, &json!({}));
}

#[test]
fn text_deltas_without_block_start_make_a_text_block() {
    // OpenAI-style streams have no block starts for text.
    let events = [
        StreamEvent::TextDelta {
            index: 0,
            text: "Hel".into(),
        },
        StreamEvent::TextDelta {
            index: 0,
            text: "lo".into(),
        },
    ];
    assert_eq!(accumulate(&events).unwrap().text_content(), "Hello");
}

#[test]
fn usage_from_start_and_end_is_added_and_completion_is_tracked() {
    let mut acc = StreamAccumulator::new();
    acc.push(&StreamEvent::MessageStart {
        id: "m".into(),
        model: "x".into(),
        usage: Usage {
            input_tokens: 10,
            cache_read_tokens: 4,
            ..Usage::default()
        },
    })
    .unwrap();
    acc.push(&StreamEvent::MessageDelta {
        stop_reason: None,
        stop_sequence: None,
        usage: Usage {
            output_tokens: 5,
            ..Usage::default()
        },
    })
    .unwrap();
    assert!(!acc.is_complete());
    acc.push(&StreamEvent::MessageStop).unwrap();
    assert!(acc.is_complete());
    let response = acc.finish().unwrap();
    assert_eq!(
        response.usage,
        Usage {
            input_tokens: 10,
            output_tokens: 5,
            cache_read_tokens: 4,
            cache_write_tokens: 0,
        }
    );
    // No stop reason in the delta keeps the default.
    assert_eq!(response.stop_reason, agentic_llm::StopReason::EndTurn);
}

#[test]
fn events_for_skips_input_only_blocks_but_keeps_indices() {
    let response = ChatResponse {
        content: vec![
            ContentBlock::tool_result("t1", "not an output block"),
            ContentBlock::text("after"),
        ],
        ..ChatResponse::default()
    };
    let events = events_for(&response);
    assert!(events.iter().any(|e| matches!(
        e,
        StreamEvent::BlockStart {
            index: 1,
            block: BlockStart::Text
        }
    )));
    assert_eq!(
        accumulate(&events).unwrap().content,
        vec![ContentBlock::text("after")]
    );
}

/// Cuts `s` into pieces whose lengths (in characters) come from `sizes`, cycled; a size of
/// 0 is an empty delta, which providers do send.
fn chunk(s: &str, sizes: &[usize], cursor: &mut usize) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    let mut pieces = Vec::new();
    let mut at = 0;
    let mut after_empty = false;
    while at < chars.len() {
        let mut size = sizes[*cursor % sizes.len()];
        *cursor += 1;
        if size == 0 && after_empty {
            size = 1; // two empty deltas in a row could cycle forever on an all-zero `sizes`
        }
        after_empty = size == 0;
        let end = (at + size).min(chars.len());
        pieces.push(chars[at..end].iter().collect());
        at = end;
    }
    pieces
}

/// `events_for(response)` with every delta re-chunked and the blocks' events interleaved
/// (each block's own order kept), as a provider streaming parallel tool calls might.
fn rechunk(
    response: &ChatResponse,
    sizes: &[usize],
    picks: &[usize],
    interleave: bool,
) -> Vec<StreamEvent> {
    let mut head = Vec::new();
    let mut tail = Vec::new();
    let mut blocks: Vec<Vec<StreamEvent>> = Vec::new();
    let mut cursor = 0;
    for event in events_for(response) {
        match event {
            StreamEvent::MessageStart { .. } => head.push(event),
            StreamEvent::MessageDelta { .. } | StreamEvent::MessageStop => tail.push(event),
            StreamEvent::BlockStart { .. } => blocks.push(vec![event]),
            StreamEvent::TextDelta { index, text } => {
                let block = blocks.last_mut().unwrap();
                for text in chunk(&text, sizes, &mut cursor) {
                    block.push(StreamEvent::TextDelta { index, text });
                }
            }
            StreamEvent::ThinkingDelta { index, thinking } => {
                let block = blocks.last_mut().unwrap();
                for thinking in chunk(&thinking, sizes, &mut cursor) {
                    block.push(StreamEvent::ThinkingDelta { index, thinking });
                }
            }
            StreamEvent::ToolInputDelta {
                index,
                partial_json,
            } => {
                let block = blocks.last_mut().unwrap();
                for partial_json in chunk(&partial_json, sizes, &mut cursor) {
                    block.push(StreamEvent::ToolInputDelta {
                        index,
                        partial_json,
                    });
                }
            }
            other => blocks.last_mut().unwrap().push(other),
        }
    }
    let mut events = head;
    if interleave {
        let mut queues: Vec<std::collections::VecDeque<StreamEvent>> =
            blocks.into_iter().map(Into::into).collect();
        let mut pick = 0;
        loop {
            let open: Vec<usize> = (0..queues.len())
                .filter(|&i| !queues[i].is_empty())
                .collect();
            if open.is_empty() {
                break;
            }
            let chosen = open[picks[pick % picks.len()] % open.len()];
            pick += 1;
            events.extend(queues[chosen].pop_front());
        }
    } else {
        events.extend(blocks.into_iter().flatten());
    }
    events.extend(tail);
    events
}

proptest! {
    #[test]
    fn any_chunking_reassembles_to_the_same_response(
        response in common::streamable_response(),
        sizes in proptest::collection::vec(0usize..9, 1..20),
        picks in proptest::collection::vec(any::<usize>(), 1..20),
        interleave in any::<bool>(),
    ) {
        let events = rechunk(&response, &sizes, &picks, interleave);
        prop_assert_eq!(accumulate(&events)?, response);
    }

    #[test]
    fn scripted_stream_reassembles_to_scripted_complete(
        response in common::streamable_response(),
    ) {
        // Two providers with the same script, so both answers are call 1 and get the same
        // generated id.
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (completed, streamed) = runtime.block_on(async {
            let a = ScriptedProvider::new().then(response.clone());
            let b = ScriptedProvider::new().then(response.clone());
            let request = ChatRequest::user("go");
            let completed = a.complete(request.clone()).await.unwrap();
            let streamed = collect_stream(b.stream(request).await.unwrap()).await.unwrap();
            (completed, streamed)
        });
        prop_assert_eq!(streamed, completed);
    }

    #[test]
    fn stream_events_round_trip_through_json(response in common::streamable_response()) {
        for event in events_for(&response) {
            let json = serde_json::to_string(&event).unwrap();
            let back: StreamEvent = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(back, event);
        }
    }
}

#[tokio::test]
async fn collect_stream_reassembles_a_chunked_stream() {
    let response = ChatResponse {
        id: "msg_1".into(),
        model: "m".into(),
        ..ChatResponse::tool_call("call_1", "lookup", json!({"key": "value with spaces"}))
    };
    let events = rechunk(&response, &[1, 0, 3], &[0], false);
    let stream = futures::stream::iter(events.into_iter().map(Ok)).boxed();
    assert_eq!(collect_stream(stream).await.unwrap(), response);
}
