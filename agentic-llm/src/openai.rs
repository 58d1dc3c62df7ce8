//! OpenAI Chat Completions (`POST {base}/v1/chat/completions`) and every server that speaks
//! it: vLLM, llama.cpp's server, LM Studio, Ollama's `/v1`. Point
//! [`OpenAiConfig::compatible`] at one of them and it is the local-model path for hybrid
//! routing.
//!
//! | Capability        | OpenAI (and compatible servers, as far as they implement it)        |
//! |-------------------|---------------------------------------------------------------------|
//! | streaming         | yes: SSE chunks with deltas, `[DONE]`, `stream_options.include_usage` |
//! | tools             | yes: `tools`/`tool_calls` (function calling, parallel calls), `tool_choice`, `strict` |
//! | structured output | yes: `response_format` `json_schema`                                |
//! | images            | yes: `image_url` parts (base64 sent as a data URL)                  |
//! | prompt caching    | automatic on OpenAI's side; `cache_control` is not sent; cached prompt tokens are reported as `cache_read_tokens` |
//! | thinking          | not sent (reasoning models take `reasoning_effort`; add it with an extra body field of your gateway). Compatible servers' `reasoning_content` is read as thinking |
//! | local             | no for `api.openai.com`; yes for [`OpenAiConfig::compatible`] (configurable) |
//!
//! Usage: `prompt_tokens` includes cached tokens on the wire; ours does not, so
//! `input_tokens = prompt_tokens - cached_tokens` and `cache_read_tokens = cached_tokens`.
//! Tool results are sent as `role: "tool"` messages (one per result, before the rest of the
//! user turn); a failed result is prefixed with `[tool error] ` since the API has no flag.

use std::borrow::Cow;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::decode::{Blocks, FrameDecoder, Wire, decoder_methods, frame_json};
use crate::error::ErrorBody;
use crate::http::{Endpoint, HttpOptions, encode_value, http_provider};
use crate::sse::{SseEvent, SseParser};
use crate::stream::{BlockStart, StreamEvent};
use crate::{
    ApiKey, ChatRequest, ChatResponse, ContentBlock, EventStream, ImageSource, LlmError,
    LlmProvider, ProviderCapabilities, Role, StopReason, ToolChoice, Usage,
};

/// The public endpoint.
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com";
/// The model used when neither the request nor the configuration names one.
pub const DEFAULT_MODEL: &str = "gpt-4o-mini";

/// Which field carries `max_tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MaxTokensField {
    /// `max_completion_tokens`: what OpenAI requires for reasoning models (default for
    /// `api.openai.com`).
    MaxCompletionTokens,
    /// `max_tokens`: the older name, which every compatible server understands (default for
    /// [`OpenAiConfig::compatible`]).
    MaxTokens,
}

/// How to reach OpenAI or a compatible server. `Debug` never shows the key.
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// The provider's name in logs, errors and routing (default `"openai"`).
    pub name: String,
    /// Scheme, host and any path prefix, without `/v1` (default [`DEFAULT_BASE_URL`]).
    pub base_url: String,
    /// Sent as `Authorization: Bearer`; optional for local servers.
    pub api_key: Option<ApiKey>,
    /// Model for requests that name none (default [`DEFAULT_MODEL`]).
    pub default_model: String,
    /// Which field carries `max_tokens`.
    pub max_tokens_field: MaxTokensField,
    /// Ask for usage in streams (`stream_options.include_usage`, default true). Turn it off
    /// for a server that rejects the option; streamed answers then report no usage.
    pub include_usage: bool,
    /// Whether the server runs on infrastructure you control (routers send sensitive
    /// requests only to local providers).
    pub local: bool,
    /// Timeouts and extra headers (`OpenAI-Organization`, `OpenAI-Project`, a gateway's).
    pub http: HttpOptions,
}

impl OpenAiConfig {
    /// `api.openai.com` with this key.
    pub fn new(api_key: impl Into<ApiKey>) -> Self {
        OpenAiConfig {
            name: "openai".to_owned(),
            base_url: DEFAULT_BASE_URL.to_owned(),
            api_key: Some(api_key.into()),
            default_model: DEFAULT_MODEL.to_owned(),
            max_tokens_field: MaxTokensField::MaxCompletionTokens,
            include_usage: true,
            local: false,
            http: HttpOptions::default(),
        }
    }

    /// An OpenAI-compatible server at `base_url` (e.g. `http://localhost:8000` for vLLM,
    /// `http://localhost:11434` for Ollama's `/v1`): no key, `max_tokens`, marked local, and
    /// named `"openai-compatible"`.
    pub fn compatible(base_url: impl Into<String>) -> Self {
        OpenAiConfig {
            name: "openai-compatible".to_owned(),
            base_url: base_url.into(),
            api_key: None,
            default_model: String::new(),
            max_tokens_field: MaxTokensField::MaxTokens,
            include_usage: true,
            local: true,
            http: HttpOptions::default(),
        }
    }

    /// From the environment: the key from `OPENAI_API_KEY` and the base URL from
    /// `OPENAI_BASE_URL` (a trailing `/v1`, as the official SDKs write it, is accepted). Fails
    /// when neither is set; with only a base URL it is a compatible server.
    pub fn from_env() -> Result<Self, LlmError> {
        let key = ApiKey::from_env("OPENAI_API_KEY");
        let base = std::env::var("OPENAI_BASE_URL")
            .ok()
            .map(|url| url.trim().trim_end_matches('/').to_owned())
            .filter(|url| !url.is_empty())
            .map(|url| url.strip_suffix("/v1").map(str::to_owned).unwrap_or(url));
        match (key, base) {
            (Some(key), None) => Ok(OpenAiConfig::new(key)),
            (Some(key), Some(base)) => Ok(OpenAiConfig {
                base_url: base,
                ..OpenAiConfig::new(key)
            }),
            (None, Some(base)) => Ok(OpenAiConfig::compatible(base)),
            (None, None) => Err(LlmError::Config(
                "OPENAI_API_KEY is not set (nor OPENAI_BASE_URL for a compatible server)"
                    .to_owned(),
            )),
        }
    }

    /// Sets the key.
    pub fn api_key(mut self, key: impl Into<ApiKey>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Sets the base URL.
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

    /// Marks the server local or remote.
    pub fn local(mut self, local: bool) -> Self {
        self.local = local;
        self
    }

    /// Chooses the `max_tokens` field.
    pub fn max_tokens_field(mut self, field: MaxTokensField) -> Self {
        self.max_tokens_field = field;
        self
    }

    /// Turns `stream_options.include_usage` on or off.
    pub fn include_usage(mut self, include: bool) -> Self {
        self.include_usage = include;
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

/// The OpenAI (or compatible) provider.
pub struct OpenAiProvider {
    endpoint: Endpoint,
    default_model: String,
    max_tokens_field: MaxTokensField,
    include_usage: bool,
    local: bool,
}

impl std::fmt::Debug for OpenAiProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiProvider")
            .field("name", &self.endpoint.provider)
            .field("url", &self.endpoint.url())
            .field("default_model", &self.default_model)
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl OpenAiProvider {
    /// A provider for `config`. `api.openai.com` without a key is refused here rather than
    /// on the first call.
    pub fn new(config: OpenAiConfig) -> Result<Self, LlmError> {
        let base = config.base_url.trim_end_matches('/');
        if config.api_key.is_none() && base == DEFAULT_BASE_URL {
            return Err(LlmError::Config(format!(
                "{}: no API key for {DEFAULT_BASE_URL} (set OPENAI_API_KEY)",
                config.name
            )));
        }
        let secret: Vec<(&str, String)> = config
            .api_key
            .iter()
            .map(|key| ("authorization", format!("Bearer {}", key.expose())))
            .collect();
        let endpoint = Endpoint::new(
            &config.name,
            &format!("{base}/v1/chat/completions"),
            &config.http,
            &secret,
            &[],
        )?;
        Ok(OpenAiProvider {
            endpoint,
            default_model: config.default_model,
            max_tokens_field: config.max_tokens_field,
            include_usage: config.include_usage,
            local: config.local,
        })
    }

    /// A provider configured from the environment ([`OpenAiConfig::from_env`]).
    pub fn from_env() -> Result<Self, LlmError> {
        Self::new(OpenAiConfig::from_env()?)
    }

    /// The JSON body this provider sends for `request`.
    pub fn request_body(&self, request: &ChatRequest, stream: bool) -> Result<Value, LlmError> {
        encode_value(&self.to_wire(request, stream)?)
    }

    fn to_wire<'a>(
        &'a self,
        request: &'a ChatRequest,
        stream: bool,
    ) -> Result<WireRequest<'a>, LlmError> {
        let model = request
            .model
            .as_deref()
            .unwrap_or(self.default_model.as_str());
        if model.is_empty() {
            return Err(LlmError::Config(format!(
                "{}: no model: set one on the request or with OpenAiConfig::default_model",
                self.endpoint.provider
            )));
        }
        let (max_completion_tokens, max_tokens) = match self.max_tokens_field {
            MaxTokensField::MaxCompletionTokens => (Some(request.max_tokens), None),
            MaxTokensField::MaxTokens => (None, Some(request.max_tokens)),
        };
        Ok(WireRequest {
            model,
            messages: messages(request),
            tools: request
                .tools
                .iter()
                .map(|t| WireTool {
                    kind: "function",
                    function: WireFunction {
                        name: &t.name,
                        description: (!t.description.is_empty()).then_some(t.description.as_str()),
                        parameters: &t.input_schema,
                        strict: t.strict.then_some(true),
                    },
                })
                .collect(),
            tool_choice: request.tool_choice.as_ref().map(tool_choice),
            response_format: request
                .response_format
                .as_ref()
                .map(|f| WireResponseFormat {
                    kind: "json_schema",
                    json_schema: WireJsonSchema {
                        name: &f.name,
                        description: f.description.as_deref(),
                        schema: &f.schema,
                        strict: f.strict,
                    },
                }),
            temperature: request.temperature,
            top_p: request.top_p,
            stop: &request.stop_sequences,
            max_completion_tokens,
            max_tokens,
            stream,
            stream_options: (stream && self.include_usage).then_some(WireStreamOptions {
                include_usage: true,
            }),
        })
    }
}

http_provider!(OpenAiProvider);

// ---- request ------------------------------------------------------------------------------

#[derive(Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<WireResponseFormat<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<WireStreamOptions>,
}

#[derive(Serialize)]
struct WireStreamOptions {
    include_usage: bool,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    // `null` is how the API writes "no text" next to tool calls.
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<WireContent<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<WireToolCallOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum WireContent<'a> {
    Text(Cow<'a, str>),
    Parts(Vec<WirePart<'a>>),
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WirePart<'a> {
    Text { text: &'a str },
    ImageUrl { image_url: WireImageUrl<'a> },
}

#[derive(Serialize)]
struct WireImageUrl<'a> {
    url: Cow<'a, str>,
}

#[derive(Serialize)]
struct WireToolCallOut<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireFunctionCallOut<'a>,
}

#[derive(Serialize)]
struct WireFunctionCallOut<'a> {
    name: &'a str,
    arguments: String,
}

#[derive(Serialize)]
struct WireTool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireFunction<'a>,
}

#[derive(Serialize)]
struct WireFunction<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    parameters: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    strict: Option<bool>,
}

#[derive(Serialize)]
struct WireResponseFormat<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    json_schema: WireJsonSchema<'a>,
}

#[derive(Serialize)]
struct WireJsonSchema<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    schema: &'a Value,
    strict: bool,
}

fn tool_choice(choice: &ToolChoice) -> Value {
    match choice {
        ToolChoice::Auto => Value::from("auto"),
        ToolChoice::Any => Value::from("required"),
        ToolChoice::None => Value::from("none"),
        ToolChoice::Tool { name } => {
            serde_json::json!({ "type": "function", "function": { "name": name } })
        }
    }
}

fn image_url(source: &ImageSource) -> Cow<'_, str> {
    match source {
        ImageSource::Url { url } => Cow::Borrowed(url),
        ImageSource::Base64 { media_type, data } => {
            Cow::Owned(format!("data:{media_type};base64,{data}"))
        }
    }
}

/// The text of blocks (tool results, system prompts), joined by newlines.
fn joined_text(blocks: &[ContentBlock]) -> String {
    let texts: Vec<&str> = blocks.iter().filter_map(ContentBlock::as_text).collect();
    texts.join("\n")
}

fn messages(request: &ChatRequest) -> Vec<WireMessage<'_>> {
    let mut out = Vec::with_capacity(request.messages.len() + 1);
    if !request.system.is_empty() {
        let content = match request.system.as_slice() {
            [ContentBlock::Text { text, .. }] => Cow::Borrowed(text.as_str()),
            blocks => Cow::Owned(joined_text(blocks)),
        };
        out.push(WireMessage {
            role: "system",
            content: Some(WireContent::Text(content)),
            tool_calls: Vec::new(),
            tool_call_id: None,
        });
    }
    for message in &request.messages {
        match message.role {
            Role::Assistant => {
                let text = joined_text(&message.content);
                let tool_calls: Vec<WireToolCallOut<'_>> = message
                    .content
                    .iter()
                    .filter_map(|b| match b {
                        ContentBlock::ToolUse { id, name, input } => Some(WireToolCallOut {
                            id,
                            kind: "function",
                            function: WireFunctionCallOut {
                                name,
                                arguments: input.to_string(),
                            },
                        }),
                        _ => None,
                    })
                    .collect();
                out.push(WireMessage {
                    role: "assistant",
                    content: (!text.is_empty() || tool_calls.is_empty())
                        .then_some(WireContent::Text(Cow::Owned(text))),
                    tool_calls,
                    tool_call_id: None,
                });
            }
            Role::User => {
                // Tool results first: the API wants them right after the assistant message
                // that asked for them.
                for block in &message.content {
                    if let ContentBlock::ToolResult {
                        tool_use_id,
                        content,
                        is_error,
                        ..
                    } = block
                    {
                        let text = joined_text(content);
                        let text = if *is_error {
                            format!("[tool error] {text}")
                        } else {
                            text
                        };
                        out.push(WireMessage {
                            role: "tool",
                            content: Some(WireContent::Text(Cow::Owned(text))),
                            tool_calls: Vec::new(),
                            tool_call_id: Some(tool_use_id),
                        });
                    }
                }
                let parts: Vec<WirePart<'_>> = message
                    .content
                    .iter()
                    .filter_map(|b| match b {
                        ContentBlock::Text { text, .. } => Some(WirePart::Text { text }),
                        ContentBlock::Image { source } => Some(WirePart::ImageUrl {
                            image_url: WireImageUrl {
                                url: image_url(source),
                            },
                        }),
                        _ => None,
                    })
                    .collect();
                let content = match parts.as_slice() {
                    [] => continue,
                    [WirePart::Text { text }] => WireContent::Text(Cow::Borrowed(text)),
                    _ => WireContent::Parts(parts),
                };
                out.push(WireMessage {
                    role: "user",
                    content: Some(content),
                    tool_calls: Vec::new(),
                    tool_call_id: None,
                });
            }
        }
    }
    out
}

// ---- response -----------------------------------------------------------------------------

#[derive(Deserialize)]
struct WireResponse {
    id: String,
    model: String,
    choices: Vec<WireChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireChoice {
    message: WireAssistant,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireAssistant {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCall>>,
    #[serde(default)]
    refusal: Option<String>,
    /// Reasoning text of compatible servers (vLLM, DeepSeek-style APIs).
    #[serde(default)]
    reasoning_content: Option<String>,
}

#[derive(Deserialize)]
struct WireToolCall {
    id: String,
    function: WireFunctionCall,
}

#[derive(Deserialize)]
struct WireFunctionCall {
    name: String,
    #[serde(default)]
    arguments: String,
}

#[derive(Deserialize, Default, Clone, Copy)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<WirePromptDetails>,
}

#[derive(Deserialize, Default, Clone, Copy)]
struct WirePromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

impl WireUsage {
    fn to_usage(self) -> Usage {
        let cached = self
            .prompt_tokens_details
            .and_then(|d| d.cached_tokens)
            .unwrap_or(0);
        Usage {
            input_tokens: self.prompt_tokens.saturating_sub(cached),
            output_tokens: self.completion_tokens,
            cache_read_tokens: cached,
            cache_write_tokens: 0,
        }
    }
}

/// OpenAI's `finish_reason` as our stop reason.
pub fn stop_reason(reason: &str) -> StopReason {
    match reason {
        "stop" => StopReason::EndTurn,
        "length" => StopReason::MaxTokens,
        "tool_calls" | "function_call" => StopReason::ToolUse,
        "content_filter" => StopReason::ContentFilter,
        other => StopReason::Other(other.to_owned()),
    }
}

fn arguments(provider: &str, name: &str, id: &str, arguments: &str) -> Result<Value, LlmError> {
    if arguments.trim().is_empty() {
        return Ok(Value::Object(serde_json::Map::new()));
    }
    serde_json::from_str(arguments).map_err(|e| {
        LlmError::Decode(format!(
            "{provider}: tool call {name} ({id}) arguments are not valid JSON: {e}"
        ))
    })
}

/// Parses a non-streamed Chat Completions answer (the first choice).
pub fn parse_response(body: &[u8], provider: &str) -> Result<ChatResponse, LlmError> {
    let wire: WireResponse = crate::decode::json_from_bytes(body)
        .map_err(|e| LlmError::Decode(format!("{provider}: malformed chat completion: {e}")))?;
    let choice =
        wire.choices.into_iter().next().ok_or_else(|| {
            LlmError::Decode(format!("{provider}: chat completion without choices"))
        })?;
    let mut content = Vec::new();
    if let Some(reasoning) = choice.message.reasoning_content.filter(|r| !r.is_empty()) {
        content.push(ContentBlock::Thinking {
            thinking: reasoning,
            signature: None,
        });
    }
    let mut stop = choice
        .finish_reason
        .as_deref()
        .map(stop_reason)
        .unwrap_or_default();
    if let Some(refusal) = choice.message.refusal.filter(|r| !r.is_empty()) {
        stop = StopReason::Refusal;
        content.push(ContentBlock::text(refusal));
    }
    if let Some(text) = choice.message.content.filter(|t| !t.is_empty()) {
        content.push(ContentBlock::text(text));
    }
    for call in choice.message.tool_calls.unwrap_or_default() {
        let input = arguments(
            provider,
            &call.function.name,
            &call.id,
            &call.function.arguments,
        )?;
        content.push(ContentBlock::ToolUse {
            id: call.id,
            name: call.function.name,
            input,
        });
    }
    Ok(ChatResponse {
        id: wire.id,
        model: wire.model,
        content,
        stop_reason: stop,
        stop_sequence: None,
        usage: wire.usage.map(WireUsage::to_usage).unwrap_or_default(),
        cost: None,
    })
}

// ---- streaming ----------------------------------------------------------------------------

#[derive(Deserialize)]
struct WireChunk {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    choices: Vec<WireChunkChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct WireChunkChoice {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    delta: WireDelta,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct WireDelta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    tool_calls: Vec<WireToolCallDelta>,
}

#[derive(Deserialize)]
struct WireToolCallDelta {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<WireFunctionDelta>,
}

#[derive(Deserialize)]
struct WireFunctionDelta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

/// Decodes an OpenAI Chat Completions SSE body into [`StreamEvent`]s, incrementally.
///
/// Each kind of content opens a block the first time it appears (text, reasoning, each tool
/// call by its `index`), in order of appearance; `finish_reason` closes them; the usage
/// chunk of `include_usage` becomes a [`StreamEvent::MessageDelta`]; `data: [DONE]` is
/// [`StreamEvent::MessageStop`]. A chunk with `error` becomes its typed [`LlmError`]; a body
/// that ends before `[DONE]` is a retryable "stream ended early" error. Only the first
/// choice is read (`n` > 1 is not supported).
#[derive(Debug)]
pub struct StreamDecoder(FrameDecoder<Chunks>);

/// What the Chat Completions stream needs remembered between chunks.
#[derive(Debug)]
struct Chunks {
    started: bool,
    blocks: Blocks,
    text: Option<usize>,
    reasoning: Option<usize>,
    /// `(tool call index on the wire, our block index)`.
    tools: Vec<(u32, usize)>,
    refused: bool,
}

impl StreamDecoder {
    /// A decoder for one answer; `provider` names it in errors.
    pub fn new(provider: &str) -> Self {
        StreamDecoder(FrameDecoder::new(
            provider,
            SseParser::new(),
            Chunks {
                started: false,
                blocks: Blocks::default(),
                text: None,
                reasoning: None,
                tools: Vec::new(),
                refused: false,
            },
        ))
    }

    decoder_methods!("`[DONE]`");
}

impl Wire for Chunks {
    type Framing = SseParser;
    const TERMINAL: &'static str = "[DONE]";

    fn frame(
        &mut self,
        provider: &str,
        frame: &SseEvent,
        out: &mut Vec<StreamEvent>,
        at_eof: bool,
    ) -> Result<bool, LlmError> {
        let data = frame.data.trim();
        if data == "[DONE]" {
            self.blocks.close_all(out);
            out.push(StreamEvent::MessageStop);
            return Ok(true);
        }
        let chunk: WireChunk = frame_json(
            serde_json::from_str(data),
            provider,
            at_eof,
            "chunk",
            || "in a stream chunk".to_owned(),
        )?;
        if let Some(error) = chunk.error {
            let body =
                ErrorBody::from_json(&serde_json::json!({ "error": error })).unwrap_or_default();
            return Err(LlmError::from_stream_error(provider, &body));
        }
        if !self.started {
            self.started = true;
            out.push(StreamEvent::MessageStart {
                id: chunk.id,
                model: chunk.model,
                usage: Usage::default(),
            });
        }
        for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
            let delta = choice.delta;
            if let Some(thinking) = delta.reasoning_content.filter(|t| !t.is_empty()) {
                let index = self
                    .blocks
                    .open_once(&mut self.reasoning, BlockStart::Thinking, out);
                out.push(StreamEvent::ThinkingDelta { index, thinking });
            }
            let refusal = delta.refusal.filter(|r| !r.is_empty());
            self.refused |= refusal.is_some();
            for text in [refusal, delta.content.filter(|t| !t.is_empty())]
                .into_iter()
                .flatten()
            {
                let index = self.blocks.open_once(&mut self.text, BlockStart::Text, out);
                out.push(StreamEvent::TextDelta { index, text });
            }
            for call in delta.tool_calls {
                let function = call.function.unwrap_or(WireFunctionDelta {
                    name: None,
                    arguments: None,
                });
                let index = match self.tools.iter().find(|(wire, _)| *wire == call.index) {
                    Some((_, index)) => *index,
                    None => {
                        let id = call.id.unwrap_or_else(|| format!("call_{}", call.index));
                        let name = function.name.clone().unwrap_or_default();
                        let index = self.blocks.open(BlockStart::ToolUse { id, name }, out);
                        self.tools.push((call.index, index));
                        index
                    }
                };
                if let Some(partial_json) = function.arguments.filter(|a| !a.is_empty()) {
                    out.push(StreamEvent::ToolInputDelta {
                        index,
                        partial_json,
                    });
                }
            }
            if let Some(reason) = choice.finish_reason {
                self.blocks.close_all(out);
                let stop = if self.refused {
                    StopReason::Refusal
                } else {
                    stop_reason(&reason)
                };
                out.push(StreamEvent::MessageDelta {
                    stop_reason: Some(stop),
                    stop_sequence: None,
                    usage: Usage::default(),
                });
            }
        }
        if let Some(usage) = chunk.usage {
            out.push(StreamEvent::MessageDelta {
                stop_reason: None,
                stop_sequence: None,
                usage: usage.to_usage(),
            });
        }
        Ok(false)
    }
}
