//! The Anthropic Messages API (`POST /v1/messages`), streaming over SSE.
//!
//! | Capability        | Anthropic                                                         |
//! |-------------------|-------------------------------------------------------------------|
//! | streaming         | yes: SSE, every event type; unknown events ignored                |
//! | tools             | yes: `tools` with `input_schema`, `tool_choice`, parallel calls   |
//! | structured output | yes, emulated: a forced tool whose input is the answer (no tools) |
//! | images            | yes: base64 and URL sources                                       |
//! | prompt caching    | yes: `cache_control` on system, message blocks, tool results, tools |
//! | thinking          | yes: `thinking.budget_tokens`; signatures and redacted thinking kept |
//! | local             | no                                                                |
//!
//! Usage maps one to one: `input_tokens`, `output_tokens`, `cache_creation_input_tokens`
//! (our `cache_write_tokens`) and `cache_read_input_tokens` (`cache_read_tokens`). The usage
//! of a streamed `message_delta` is cumulative on the wire; it is turned into the increment
//! our [`StreamEvent::MessageDelta`] carries.
//!
//! ```no_run
//! use agentic_llm::anthropic::{AnthropicConfig, AnthropicProvider};
//! use agentic_llm::{ChatRequest, LlmProvider};
//!
//! # async fn run() -> Result<(), agentic_llm::LlmError> {
//! // Reads ANTHROPIC_API_KEY (and ANTHROPIC_BASE_URL when set).
//! let claude = AnthropicProvider::new(AnthropicConfig::from_env()?.default_model("claude-sonnet-4-5"))?;
//! let answer = claude.complete(ChatRequest::user("Say hi")).await?;
//! println!("{}", answer.text_content());
//! # Ok(())
//! # }
//! ```

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::decode::{FrameDecoder, Wire, decoder_methods, frame_json};
use crate::error::ErrorBody;
use crate::http::{Endpoint, HttpOptions, encode, encode_value};
use crate::sse::{SseEvent, SseParser};
use crate::stream::{BlockStart, StreamEvent};
use crate::{
    ApiKey, ChatRequest, ChatResponse, ContentBlock, EventStream, LlmError, LlmProvider,
    ProviderCapabilities, StopReason, ToolChoice, Usage,
};

/// The API version header we speak.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";
/// The public endpoint.
pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
/// The model used when neither the request nor the configuration names one.
pub const DEFAULT_MODEL: &str = "claude-sonnet-4-5";

/// How to reach Anthropic. `Debug` never shows the key.
#[derive(Debug, Clone)]
pub struct AnthropicConfig {
    /// The provider's name in logs, errors and routing (default `"anthropic"`).
    pub name: String,
    /// Scheme and host, without `/v1` (default [`DEFAULT_BASE_URL`]).
    pub base_url: String,
    /// The `x-api-key`.
    pub api_key: Option<ApiKey>,
    /// Model for requests that name none (default [`DEFAULT_MODEL`]).
    pub default_model: String,
    /// The `anthropic-version` header (default [`ANTHROPIC_VERSION`]).
    pub version: String,
    /// `anthropic-beta` flags, joined with commas (default none).
    pub beta: Vec<String>,
    /// Timeouts and extra headers.
    pub http: HttpOptions,
}

impl AnthropicConfig {
    /// A configuration with this key and every default.
    pub fn new(api_key: impl Into<ApiKey>) -> Self {
        AnthropicConfig {
            name: "anthropic".to_owned(),
            base_url: DEFAULT_BASE_URL.to_owned(),
            api_key: Some(api_key.into()),
            default_model: DEFAULT_MODEL.to_owned(),
            version: ANTHROPIC_VERSION.to_owned(),
            beta: Vec::new(),
            http: HttpOptions::default(),
        }
    }

    /// The key from `ANTHROPIC_API_KEY` (an error naming the variable when it is unset) and
    /// the base URL from `ANTHROPIC_BASE_URL` when set.
    pub fn from_env() -> Result<Self, LlmError> {
        let key = ApiKey::from_env("ANTHROPIC_API_KEY").ok_or_else(|| {
            LlmError::Config(
                "ANTHROPIC_API_KEY is not set: export it or use AnthropicConfig::new(key)"
                    .to_owned(),
            )
        })?;
        let mut config = AnthropicConfig::new(key);
        if let Ok(url) = std::env::var("ANTHROPIC_BASE_URL")
            && !url.trim().is_empty()
        {
            config.base_url = url.trim().to_owned();
        }
        Ok(config)
    }

    /// Sets the base URL (a proxy, a gateway, a test server).
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = url.into();
        self
    }

    /// Sets the default model.
    pub fn default_model(mut self, model: impl Into<String>) -> Self {
        self.default_model = model.into();
        self
    }

    /// Sets the provider's name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Adds an `anthropic-beta` flag.
    pub fn beta(mut self, flag: impl Into<String>) -> Self {
        self.beta.push(flag.into());
        self
    }

    /// Adds a header to every request.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.http.extra_headers.push((name.into(), value.into()));
        self
    }

    /// Sets the timeouts and extra headers.
    pub fn http(mut self, http: HttpOptions) -> Self {
        self.http = http;
        self
    }
}

/// The Anthropic provider. Cheap to share behind an `Arc`; one connection pool per provider.
pub struct AnthropicProvider {
    endpoint: Endpoint,
    default_model: String,
}

impl std::fmt::Debug for AnthropicProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnthropicProvider")
            .field("name", &self.endpoint.provider)
            .field("url", &self.endpoint.url())
            .field("default_model", &self.default_model)
            .finish_non_exhaustive()
    }
}

impl AnthropicProvider {
    /// A provider for `config`; fails when the key is missing or a header is invalid.
    pub fn new(config: AnthropicConfig) -> Result<Self, LlmError> {
        let key = config.api_key.as_ref().ok_or_else(|| {
            LlmError::Config(format!(
                "{}: no API key (set ANTHROPIC_API_KEY or AnthropicConfig::api_key)",
                config.name
            ))
        })?;
        let url = format!("{}/v1/messages", config.base_url.trim_end_matches('/'));
        let beta = config.beta.join(",");
        let mut plain = vec![("anthropic-version", config.version.as_str())];
        if !beta.is_empty() {
            plain.push(("anthropic-beta", beta.as_str()));
        }
        let endpoint = Endpoint::new(
            &config.name,
            &url,
            &config.http,
            &[("x-api-key", key.expose().to_owned())],
            &plain,
        )?;
        Ok(AnthropicProvider {
            endpoint,
            default_model: config.default_model,
        })
    }

    /// A provider configured from the environment ([`AnthropicConfig::from_env`]).
    pub fn from_env() -> Result<Self, LlmError> {
        Self::new(AnthropicConfig::from_env()?)
    }

    /// The JSON body this provider sends for `request` (public so that tests and tools can
    /// see exactly what goes on the wire).
    pub fn request_body(&self, request: &ChatRequest, stream: bool) -> Result<Value, LlmError> {
        encode_value(&self.to_wire(request, stream)?)
    }

    fn to_wire<'a>(
        &'a self,
        request: &'a ChatRequest,
        stream: bool,
    ) -> Result<WireRequest<'a>, LlmError> {
        to_wire(
            request,
            &self.default_model,
            stream,
            &self.endpoint.provider,
        )
    }
}

impl AnthropicProvider {
    /// A non-streamed call: the request is only read (serialized), so it is borrowed.
    async fn call(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
        let body = encode(&self.to_wire(request, false)?)?;
        let structured = structured_tool(request);
        let provider = &self.endpoint.provider;
        self.endpoint
            .complete(body, |bytes| parse_response(bytes, structured, provider))
            .await
    }
}

#[async_trait]
impl LlmProvider for AnthropicProvider {
    fn name(&self) -> &str {
        &self.endpoint.provider
    }

    fn capabilities(&self) -> ProviderCapabilities {
        ProviderCapabilities::all_remote()
    }

    async fn complete(&self, request: ChatRequest) -> Result<ChatResponse, LlmError> {
        self.call(&request).await
    }

    async fn complete_ref(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
        self.call(request).await
    }

    async fn stream(&self, request: ChatRequest) -> Result<EventStream, LlmError> {
        let body = encode(&self.to_wire(&request, true)?)?;
        let mut decoder = StreamDecoder::new(&self.endpoint.provider);
        decoder.0.wire.structured = structured_tool(&request);
        self.endpoint.stream(body, decoder.0).await
    }
}

// ---- request ------------------------------------------------------------------------------

#[derive(Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    max_tokens: u32,
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<WireSystem<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<ToolChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop_sequences: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<WireThinking>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: crate::Role,
    // Our content blocks serialize exactly as Anthropic's (the neutral model follows the
    // Messages API), so they are sent as they are.
    content: &'a [ContentBlock],
}

#[derive(Serialize)]
#[serde(untagged)]
enum WireSystem<'a> {
    Text(&'a str),
    Blocks(&'a [ContentBlock]),
}

#[derive(Serialize)]
struct WireTool<'a> {
    name: &'a str,
    description: &'a str,
    input_schema: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_control: Option<&'a crate::CacheControl>,
}

#[derive(Serialize)]
struct WireThinking {
    #[serde(rename = "type")]
    kind: &'static str,
    budget_tokens: u32,
}

/// The name of the forced tool that carries a structured answer, when the request asks for
/// one.
fn structured_tool(request: &ChatRequest) -> Option<String> {
    request.response_format.as_ref().map(|f| f.name.clone())
}

const STRUCTURED_DESCRIPTION: &str =
    "Give your answer by calling this tool: its input is the answer.";

fn to_wire<'a>(
    request: &'a ChatRequest,
    default_model: &'a str,
    stream: bool,
    provider: &str,
) -> Result<WireRequest<'a>, LlmError> {
    let system = match request.system.as_slice() {
        [] => None,
        [
            ContentBlock::Text {
                text,
                cache_control: None,
            },
        ] => Some(WireSystem::Text(text)),
        blocks => Some(WireSystem::Blocks(blocks)),
    };
    let mut tools: Vec<WireTool<'a>> = request
        .tools
        .iter()
        .map(|t| WireTool {
            name: &t.name,
            description: &t.description,
            input_schema: &t.input_schema,
            cache_control: t.cache_control.as_ref(),
        })
        .collect();
    let mut tool_choice = request.tool_choice.clone();
    // Structured output, emulated: the Messages API has no schema-constrained text, but a
    // forced tool call's input is constrained to the tool's schema. The answer comes back as
    // that tool's input and is turned into text (see `parse_response` and the decoder).
    if let Some(format) = &request.response_format {
        if !request.tools.is_empty() {
            return Err(LlmError::InvalidRequest {
                provider: provider.to_owned(),
                status: 400,
                message: "response_format together with tools is not supported: Anthropic's structured output is emulated with a forced tool call".to_owned(),
            });
        }
        tools.push(WireTool {
            name: &format.name,
            description: format
                .description
                .as_deref()
                .unwrap_or(STRUCTURED_DESCRIPTION),
            input_schema: &format.schema,
            cache_control: None,
        });
        tool_choice = Some(ToolChoice::Tool {
            name: format.name.clone(),
        });
    }
    Ok(WireRequest {
        model: request.model.as_deref().unwrap_or(default_model),
        max_tokens: request.max_tokens,
        messages: request
            .messages
            .iter()
            .map(|m| WireMessage {
                role: m.role,
                content: &m.content,
            })
            .collect(),
        system,
        tools,
        tool_choice,
        temperature: request.temperature,
        top_p: request.top_p,
        stop_sequences: &request.stop_sequences,
        thinking: request.thinking.map(|t| WireThinking {
            kind: "enabled",
            budget_tokens: t.budget_tokens,
        }),
        stream,
    })
}

// ---- response -----------------------------------------------------------------------------

#[derive(Deserialize)]
struct WireResponse {
    id: String,
    model: String,
    content: Vec<WireBlock>,
    stop_reason: Option<String>,
    stop_sequence: Option<String>,
    usage: WireUsage,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireBlock {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    Thinking {
        thinking: String,
        #[serde(default)]
        signature: Option<String>,
    },
    RedactedThinking {
        data: String,
    },
    /// Server tools' blocks, citations containers and whatever comes next: not part of the
    /// neutral model, skipped.
    #[serde(other)]
    Other,
}

/// Usage as Anthropic reports it; every field may be missing or null (the streamed
/// `message_delta` carries only some of them).
#[derive(Deserialize, Default, Clone, Copy)]
struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

impl WireUsage {
    fn to_usage(self) -> Usage {
        Usage {
            input_tokens: self.input_tokens.unwrap_or(0),
            output_tokens: self.output_tokens.unwrap_or(0),
            cache_read_tokens: self.cache_read_input_tokens.unwrap_or(0),
            cache_write_tokens: self.cache_creation_input_tokens.unwrap_or(0),
        }
    }
}

/// Anthropic's `stop_reason` as ours.
pub fn stop_reason(reason: &str) -> StopReason {
    match reason {
        "end_turn" => StopReason::EndTurn,
        "max_tokens" => StopReason::MaxTokens,
        "stop_sequence" => StopReason::StopSequence,
        "tool_use" => StopReason::ToolUse,
        "pause_turn" => StopReason::PauseTurn,
        "refusal" => StopReason::Refusal,
        other => StopReason::Other(other.to_owned()),
    }
}

/// Parses a non-streamed Messages API answer. `structured` names the forced tool of an
/// emulated structured output, whose input becomes the answer's text.
pub fn parse_response(
    body: &[u8],
    structured: Option<String>,
    provider: &str,
) -> Result<ChatResponse, LlmError> {
    let wire: WireResponse = crate::decode::json_from_bytes(body)
        .map_err(|e| LlmError::Decode(format!("{provider}: malformed Messages API answer: {e}")))?;
    let mut stop = wire
        .stop_reason
        .as_deref()
        .map(stop_reason)
        .unwrap_or_default();
    let mut content = Vec::with_capacity(wire.content.len());
    for block in wire.content {
        content.push(match block {
            WireBlock::Text { text } => ContentBlock::text(text),
            WireBlock::ToolUse { name, input, .. } if Some(&name) == structured.as_ref() => {
                stop = StopReason::EndTurn;
                ContentBlock::text(input.to_string())
            }
            WireBlock::ToolUse { id, name, input } => ContentBlock::ToolUse { id, name, input },
            WireBlock::Thinking {
                thinking,
                signature,
            } => ContentBlock::Thinking {
                thinking,
                signature,
            },
            WireBlock::RedactedThinking { data } => ContentBlock::RedactedThinking { data },
            WireBlock::Other => continue,
        });
    }
    Ok(ChatResponse {
        id: wire.id,
        model: wire.model,
        content,
        stop_reason: stop,
        stop_sequence: wire.stop_sequence,
        usage: wire.usage.to_usage(),
        cost: None,
    })
}

// ---- streaming ----------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireEvent {
    MessageStart {
        message: WireMessageStart,
    },
    ContentBlockStart {
        index: usize,
        content_block: WireBlockStart,
    },
    ContentBlockDelta {
        index: usize,
        delta: WireDelta,
    },
    ContentBlockStop {
        index: usize,
    },
    MessageDelta {
        delta: WireMessageDelta,
        #[serde(default)]
        usage: Option<WireUsage>,
    },
    MessageStop,
    Ping,
    Error {
        error: Value,
    },
    #[serde(other)]
    Unknown,
}

#[derive(Deserialize)]
struct WireMessageStart {
    id: String,
    model: String,
    #[serde(default)]
    usage: WireUsage,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireBlockStart {
    Text {
        #[serde(default)]
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
    },
    Thinking {
        #[serde(default)]
        thinking: String,
    },
    RedactedThinking {
        data: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireDelta {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    ThinkingDelta {
        thinking: String,
    },
    SignatureDelta {
        signature: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct WireMessageDelta {
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    stop_sequence: Option<String>,
}

/// Decodes an Anthropic SSE body into [`StreamEvent`]s, incrementally: feed it the bytes as
/// they arrive, in any chunking.
///
/// `ping` and unknown event types are ignored; blocks of unknown types (server tools) are
/// skipped with their deltas; an `error` event becomes its typed [`LlmError`]; a body that
/// ends before `message_stop` is a retryable "stream ended early" error.
///
/// ```
/// use agentic_llm::anthropic::StreamDecoder;
/// use agentic_llm::StreamEvent;
///
/// let mut decoder = StreamDecoder::new("anthropic");
/// let mut events = Vec::new();
/// decoder.push(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n", &mut events)?;
/// assert_eq!(events, vec![StreamEvent::MessageStop]);
/// assert!(decoder.is_done());
/// # Ok::<(), agentic_llm::LlmError>(())
/// ```
#[derive(Debug)]
pub struct StreamDecoder(FrameDecoder<Messages>);

/// What the Messages API stream needs remembered between events.
#[derive(Debug)]
struct Messages {
    /// Usage reported so far: Anthropic's `message_delta` usage is a running total, ours an
    /// increment, so each delta is reported minus what was already counted.
    counted: Usage,
    /// Indices of blocks of unknown types, whose deltas are dropped with them.
    skipped: Vec<usize>,
    /// The forced tool of an emulated structured output, and its block once it started.
    structured: Option<String>,
    structured_block: Option<usize>,
}

impl StreamDecoder {
    /// A decoder for one answer; `provider` names it in errors.
    pub fn new(provider: &str) -> Self {
        StreamDecoder(FrameDecoder::new(
            provider,
            SseParser::new(),
            Messages {
                counted: Usage::default(),
                skipped: Vec::new(),
                structured: None,
                structured_block: None,
            },
        ))
    }

    decoder_methods!("`message_stop`");
}

impl Wire for Messages {
    type Framing = SseParser;
    const TERMINAL: &'static str = "message_stop event";

    fn frame(
        &mut self,
        provider: &str,
        frame: &SseEvent,
        out: &mut Vec<StreamEvent>,
        at_eof: bool,
    ) -> Result<bool, LlmError> {
        let event: WireEvent = frame_json(
            serde_json::from_str(&frame.data),
            provider,
            at_eof,
            "event",
            || format!("in `{}` event", frame.event_type()),
        )?;
        match event {
            WireEvent::MessageStart { message } => {
                let usage = message.usage.to_usage();
                self.counted = usage;
                out.push(StreamEvent::MessageStart {
                    id: message.id,
                    model: message.model,
                    usage,
                });
            }
            WireEvent::ContentBlockStart {
                index,
                content_block,
            } => match content_block {
                WireBlockStart::Text { text } => {
                    out.push(StreamEvent::BlockStart {
                        index,
                        block: BlockStart::Text,
                    });
                    if !text.is_empty() {
                        out.push(StreamEvent::TextDelta { index, text });
                    }
                }
                WireBlockStart::ToolUse { name, .. } if Some(&name) == self.structured.as_ref() => {
                    self.structured_block = Some(index);
                    out.push(StreamEvent::BlockStart {
                        index,
                        block: BlockStart::Text,
                    });
                }
                WireBlockStart::ToolUse { id, name } => out.push(StreamEvent::BlockStart {
                    index,
                    block: BlockStart::ToolUse { id, name },
                }),
                WireBlockStart::Thinking { thinking } => {
                    out.push(StreamEvent::BlockStart {
                        index,
                        block: BlockStart::Thinking,
                    });
                    if !thinking.is_empty() {
                        out.push(StreamEvent::ThinkingDelta { index, thinking });
                    }
                }
                WireBlockStart::RedactedThinking { data } => out.push(StreamEvent::BlockStart {
                    index,
                    block: BlockStart::RedactedThinking { data },
                }),
                WireBlockStart::Other => self.skipped.push(index),
            },
            WireEvent::ContentBlockDelta { index, delta } => {
                if self.skipped.contains(&index) {
                    return Ok(false);
                }
                match delta {
                    WireDelta::TextDelta { text } => {
                        out.push(StreamEvent::TextDelta { index, text })
                    }
                    WireDelta::InputJsonDelta { partial_json }
                        if self.structured_block == Some(index) =>
                    {
                        if !partial_json.is_empty() {
                            out.push(StreamEvent::TextDelta {
                                index,
                                text: partial_json,
                            });
                        }
                    }
                    // The first fragment is usually empty: it carries nothing.
                    WireDelta::InputJsonDelta { partial_json } if partial_json.is_empty() => {}
                    WireDelta::InputJsonDelta { partial_json } => {
                        out.push(StreamEvent::ToolInputDelta {
                            index,
                            partial_json,
                        });
                    }
                    WireDelta::ThinkingDelta { thinking } => {
                        out.push(StreamEvent::ThinkingDelta { index, thinking });
                    }
                    WireDelta::SignatureDelta { signature } => {
                        out.push(StreamEvent::SignatureDelta { index, signature });
                    }
                    // Citations and future delta types: not in the neutral model.
                    WireDelta::Other => {}
                }
            }
            WireEvent::ContentBlockStop { index } => {
                if !self.skipped.contains(&index) {
                    out.push(StreamEvent::BlockStop { index });
                }
            }
            WireEvent::MessageDelta { delta, usage } => {
                let total = usage.unwrap_or_default();
                let increment = Usage {
                    input_tokens: increment(total.input_tokens, &mut self.counted.input_tokens),
                    output_tokens: increment(total.output_tokens, &mut self.counted.output_tokens),
                    cache_read_tokens: increment(
                        total.cache_read_input_tokens,
                        &mut self.counted.cache_read_tokens,
                    ),
                    cache_write_tokens: increment(
                        total.cache_creation_input_tokens,
                        &mut self.counted.cache_write_tokens,
                    ),
                };
                let mut stop = delta.stop_reason.as_deref().map(stop_reason);
                if self.structured_block.is_some() && stop == Some(StopReason::ToolUse) {
                    stop = Some(StopReason::EndTurn);
                }
                out.push(StreamEvent::MessageDelta {
                    stop_reason: stop,
                    stop_sequence: delta.stop_sequence,
                    usage: increment,
                });
            }
            WireEvent::MessageStop => {
                out.push(StreamEvent::MessageStop);
                return Ok(true);
            }
            WireEvent::Ping | WireEvent::Unknown => {}
            WireEvent::Error { error } => {
                let body = ErrorBody::from_json(&serde_json::json!({ "error": error }))
                    .unwrap_or_default();
                return Err(LlmError::from_stream_error(provider, &body));
            }
        }
        Ok(false)
    }
}

/// The part of a running total not counted yet; updates the count.
fn increment(total: Option<u64>, counted: &mut u64) -> u64 {
    match total {
        Some(total) if total > *counted => {
            let more = total - *counted;
            *counted = total;
            more
        }
        _ => 0,
    }
}
