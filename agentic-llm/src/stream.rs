//! Streaming events and their reassembly into a [`ChatResponse`].

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{ChatResponse, Cost, LlmError, StopReason, Usage};

/// The start of a content block in a stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum BlockStart {
    /// A text block (its text arrives as [`StreamEvent::TextDelta`]).
    Text,
    /// A tool call (its arguments arrive as [`StreamEvent::ToolInputDelta`] JSON fragments).
    ToolUse {
        /// Call id.
        id: String,
        /// Tool name.
        name: String,
    },
    /// Reasoning (arrives as [`StreamEvent::ThinkingDelta`], then a
    /// [`StreamEvent::SignatureDelta`]).
    Thinking,
    /// Encrypted reasoning, complete in the start event.
    RedactedThinking {
        /// The opaque data to send back verbatim.
        data: String,
    },
}

/// One event of a streamed answer, provider-neutral.
///
/// Order: `MessageStart`, then per block `BlockStart`, deltas, `BlockStop`, then
/// `MessageDelta` (stop reason, final usage), optionally `Cost` (added by a cost meter) and
/// `MessageStop`. A stream that ends without `MessageStop` was cut off: providers report
/// that as a retryable [`LlmError::Connection`] and [`crate::collect_stream`] refuses it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum StreamEvent {
    /// The answer begins.
    MessageStart {
        /// Provider's message id.
        id: String,
        /// Model name.
        model: String,
        /// Usage known at the start (input tokens).
        usage: Usage,
    },
    /// A content block begins at `index`.
    BlockStart {
        /// Block index in the answer.
        index: usize,
        /// What kind of block.
        block: BlockStart,
    },
    /// More text for the block at `index`.
    TextDelta {
        /// Block index.
        index: usize,
        /// The text fragment.
        text: String,
    },
    /// A fragment of a tool call's JSON arguments for the block at `index`.
    ToolInputDelta {
        /// Block index.
        index: usize,
        /// A JSON fragment (not valid JSON on its own).
        partial_json: String,
    },
    /// More reasoning for the block at `index`.
    ThinkingDelta {
        /// Block index.
        index: usize,
        /// The fragment.
        thinking: String,
    },
    /// The signature of the thinking block at `index` (sent once, after its text).
    SignatureDelta {
        /// Block index.
        index: usize,
        /// The signature, to send back with the thinking block.
        signature: String,
    },
    /// The block at `index` is complete.
    BlockStop {
        /// Block index.
        index: usize,
    },
    /// Final message-level data.
    MessageDelta {
        /// Why it stopped.
        stop_reason: Option<StopReason>,
        /// The stop sequence that matched.
        stop_sequence: Option<String>,
        /// Usage reported at the end (added to the start's).
        usage: Usage,
    },
    /// What the answer cost, priced by a cost meter (added to the response's cost).
    Cost {
        /// The cost.
        cost: Cost,
    },
    /// The answer is complete.
    MessageStop,
}

/// Reassembles a stream of [`StreamEvent`]s into a [`ChatResponse`].
///
/// Feed every event to [`StreamAccumulator::push`], then call [`StreamAccumulator::finish`].
#[derive(Debug, Default)]
pub struct StreamAccumulator {
    response: ChatResponse,
    blocks: Vec<Option<PartialBlock>>,
    stopped: bool,
}

#[derive(Debug)]
enum PartialBlock {
    Text(String),
    ToolUse {
        id: String,
        name: String,
        json: String,
    },
    Thinking {
        thinking: String,
        signature: Option<String>,
    },
    RedactedThinking(String),
}

impl StreamAccumulator {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// True once `MessageStop` was seen.
    pub fn is_complete(&self) -> bool {
        self.stopped
    }

    /// Takes one event into account.
    pub fn push(&mut self, event: &StreamEvent) -> Result<(), LlmError> {
        match event {
            StreamEvent::MessageStart { id, model, usage } => {
                self.response.id.clone_from(id);
                self.response.model.clone_from(model);
                self.response.usage.add(usage);
            }
            StreamEvent::BlockStart { index, block } => {
                let slot = self.slot(*index);
                *slot = Some(match block {
                    BlockStart::Text => PartialBlock::Text(String::new()),
                    BlockStart::ToolUse { id, name } => PartialBlock::ToolUse {
                        id: id.clone(),
                        name: name.clone(),
                        json: String::new(),
                    },
                    BlockStart::Thinking => PartialBlock::Thinking {
                        thinking: String::new(),
                        signature: None,
                    },
                    BlockStart::RedactedThinking { data } => {
                        PartialBlock::RedactedThinking(data.clone())
                    }
                });
            }
            StreamEvent::TextDelta { index, text } => match self.slot(*index) {
                Some(PartialBlock::Text(t)) => t.push_str(text),
                slot @ None => *slot = Some(PartialBlock::Text(text.clone())),
                Some(_) => return Err(mismatch(*index, "text delta")),
            },
            StreamEvent::ToolInputDelta {
                index,
                partial_json,
            } => match self.slot(*index) {
                Some(PartialBlock::ToolUse { json, .. }) => json.push_str(partial_json),
                _ => return Err(mismatch(*index, "tool input delta")),
            },
            StreamEvent::ThinkingDelta { index, thinking } => match self.slot(*index) {
                Some(PartialBlock::Thinking { thinking: t, .. }) => t.push_str(thinking),
                slot @ None => {
                    *slot = Some(PartialBlock::Thinking {
                        thinking: thinking.clone(),
                        signature: None,
                    });
                }
                Some(_) => return Err(mismatch(*index, "thinking delta")),
            },
            StreamEvent::SignatureDelta { index, signature } => match self.slot(*index) {
                Some(PartialBlock::Thinking { signature: s, .. }) => {
                    s.get_or_insert_with(String::new).push_str(signature);
                }
                _ => return Err(mismatch(*index, "signature delta")),
            },
            StreamEvent::BlockStop { .. } => {}
            StreamEvent::MessageDelta {
                stop_reason,
                stop_sequence,
                usage,
            } => {
                if let Some(r) = stop_reason {
                    self.response.stop_reason = r.clone();
                }
                if stop_sequence.is_some() {
                    self.response.stop_sequence.clone_from(stop_sequence);
                }
                self.response.usage.add(usage);
            }
            StreamEvent::Cost { cost } => {
                let total = self.response.cost.get_or_insert_with(Cost::default);
                total.usd += cost.usd;
            }
            StreamEvent::MessageStop => self.stopped = true,
        }
        Ok(())
    }

    /// The assembled response. Tool-call arguments that are not valid JSON are an
    /// [`LlmError::Decode`]; an empty argument string becomes `{}`.
    pub fn finish(self) -> Result<ChatResponse, LlmError> {
        let mut response = self.response;
        for block in self.blocks.into_iter().flatten() {
            response.content.push(match block {
                PartialBlock::Text(text) => crate::ContentBlock::text(text),
                PartialBlock::Thinking {
                    thinking,
                    signature,
                } => crate::ContentBlock::Thinking {
                    thinking,
                    signature,
                },
                PartialBlock::RedactedThinking(data) => {
                    crate::ContentBlock::RedactedThinking { data }
                }
                PartialBlock::ToolUse { id, name, json } => {
                    let input = if json.trim().is_empty() {
                        Value::Object(Default::default())
                    } else {
                        serde_json::from_str(&json).map_err(|e| {
                            LlmError::Decode(format!(
                                "tool call {name} ({id}) arguments are not valid JSON: {e}"
                            ))
                        })?
                    };
                    crate::ContentBlock::ToolUse { id, name, input }
                }
            });
        }
        Ok(response)
    }

    fn slot(&mut self, index: usize) -> &mut Option<PartialBlock> {
        if self.blocks.len() <= index {
            self.blocks.resize_with(index + 1, || None);
        }
        &mut self.blocks[index]
    }
}

fn mismatch(index: usize, what: &str) -> LlmError {
    LlmError::Decode(format!(
        "{what} for block {index}, which is not of that kind"
    ))
}

/// The events a provider without native streaming would have sent for `response`.
pub fn events_for(response: &ChatResponse) -> Vec<StreamEvent> {
    let mut events = vec![StreamEvent::MessageStart {
        id: response.id.clone(),
        model: response.model.clone(),
        usage: Usage {
            input_tokens: response.usage.input_tokens,
            cache_read_tokens: response.usage.cache_read_tokens,
            cache_write_tokens: response.usage.cache_write_tokens,
            output_tokens: 0,
        },
    }];
    for (index, block) in response.content.iter().enumerate() {
        match block {
            crate::ContentBlock::Text { text, .. } => {
                events.push(StreamEvent::BlockStart {
                    index,
                    block: BlockStart::Text,
                });
                events.push(StreamEvent::TextDelta {
                    index,
                    text: text.clone(),
                });
            }
            crate::ContentBlock::ToolUse { id, name, input } => {
                events.push(StreamEvent::BlockStart {
                    index,
                    block: BlockStart::ToolUse {
                        id: id.clone(),
                        name: name.clone(),
                    },
                });
                events.push(StreamEvent::ToolInputDelta {
                    index,
                    partial_json: input.to_string(),
                });
            }
            crate::ContentBlock::Thinking {
                thinking,
                signature,
            } => {
                events.push(StreamEvent::BlockStart {
                    index,
                    block: BlockStart::Thinking,
                });
                events.push(StreamEvent::ThinkingDelta {
                    index,
                    thinking: thinking.clone(),
                });
                if let Some(signature) = signature {
                    events.push(StreamEvent::SignatureDelta {
                        index,
                        signature: signature.clone(),
                    });
                }
            }
            crate::ContentBlock::RedactedThinking { data } => {
                events.push(StreamEvent::BlockStart {
                    index,
                    block: BlockStart::RedactedThinking { data: data.clone() },
                });
            }
            // Inputs only; a response never carries them, but keep indices stable.
            _ => continue,
        }
        events.push(StreamEvent::BlockStop { index });
    }
    events.push(StreamEvent::MessageDelta {
        stop_reason: Some(response.stop_reason.clone()),
        stop_sequence: response.stop_sequence.clone(),
        usage: Usage {
            output_tokens: response.usage.output_tokens,
            ..Usage::default()
        },
    });
    if let Some(cost) = response.cost {
        events.push(StreamEvent::Cost { cost });
    }
    events.push(StreamEvent::MessageStop);
    events
}

/// The error for a stream that ended before its terminal event: the connection (or the
/// server) gave up mid-answer, so the same call may well succeed if retried.
pub fn ended_early(provider: &str, what: &str) -> LlmError {
    LlmError::Connection {
        provider: provider.to_owned(),
        message: format!("stream ended early: {what}"),
        source: None,
    }
}

/// Waits for the first item of `events`: an error there becomes the call's error (so a retry
/// or fallback can act on it before anything reached the caller), anything else is put back
/// in front of the rest.
pub(crate) async fn first_event(
    mut events: crate::EventStream,
) -> Result<crate::EventStream, LlmError> {
    use futures::StreamExt;
    match events.next().await {
        Some(Err(e)) => Err(e),
        Some(Ok(first)) => Ok(futures::stream::once(async move { Ok(first) })
            .chain(events)
            .boxed()),
        None => Ok(futures::stream::empty().boxed()),
    }
}
