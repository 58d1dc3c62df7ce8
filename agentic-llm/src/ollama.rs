//! Ollama's native chat API (`POST /api/chat`), streaming newline-delimited JSON.
//!
//! | Capability        | Ollama                                                              |
//! |-------------------|---------------------------------------------------------------------|
//! | streaming         | yes: NDJSON, one object per line, ending with `done: true`          |
//! | tools             | yes: `tools`, `tool_calls` (arguments arrive whole); no `tool_choice` (ignored) |
//! | structured output | yes: `format` with the JSON schema                                  |
//! | images            | base64 only (`images` of a message); URL images are refused         |
//! | prompt caching    | none to configure (`cache_control` is not sent)                     |
//! | thinking          | on/off: `think: true` when the request has a thinking budget        |
//! | local             | yes (configurable, e.g. for a shared remote Ollama)                 |
//!
//! Ollama gives no message or tool-call ids: messages get `ollama-<created_at>`, tool calls
//! `ollama_call_<n>` (unique in the process) unless the server sends its own. Tool results
//! are sent as `role: "tool"` messages with the `tool_name` of the call they answer. Usage:
//! `prompt_eval_count` is `input_tokens`, `eval_count` is `output_tokens`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::decode::{Blocks, FrameDecoder, Wire, decoder_methods, frame_json};
use crate::error::ErrorBody;
use crate::http::{Endpoint, HttpOptions, encode_value, http_provider};
use crate::ndjson::NdjsonSplitter;
use crate::stream::{BlockStart, StreamEvent};
use crate::{
    ApiKey, ChatRequest, ChatResponse, ContentBlock, EventStream, ImageSource, LlmError,
    LlmProvider, ProviderCapabilities, Role, StopReason, ToolChoice, Usage,
};

/// Where Ollama listens by default.
pub const DEFAULT_BASE_URL: &str = "http://localhost:11434";
/// The model used when neither the request nor the configuration names one.
pub const DEFAULT_MODEL: &str = "llama3.2";

/// How to reach Ollama.
#[derive(Debug, Clone)]
pub struct OllamaConfig {
    /// The provider's name in logs, errors and routing (default `"ollama"`).
    pub name: String,
    /// Scheme, host and port (default [`DEFAULT_BASE_URL`]).
    pub base_url: String,
    /// Sent as `Authorization: Bearer` when set (Ollama behind an authenticating proxy, or
    /// ollama.com).
    pub api_key: Option<ApiKey>,
    /// Model for requests that name none (default [`DEFAULT_MODEL`]).
    pub default_model: String,
    /// How long the server keeps the model loaded after a call (`keep_alive`, e.g. `"10m"`).
    pub keep_alive: Option<String>,
    /// Whether the server runs on infrastructure you control (default true).
    pub local: bool,
    /// Timeouts and extra headers.
    pub http: HttpOptions,
}

impl Default for OllamaConfig {
    fn default() -> Self {
        OllamaConfig {
            name: "ollama".to_owned(),
            base_url: DEFAULT_BASE_URL.to_owned(),
            api_key: None,
            default_model: DEFAULT_MODEL.to_owned(),
            keep_alive: None,
            local: true,
            http: HttpOptions::default(),
        }
    }
}

impl OllamaConfig {
    /// The defaults: `http://localhost:11434`, `llama3.2`, local.
    pub fn new() -> Self {
        Self::default()
    }

    /// From the environment: the server from `OLLAMA_HOST` (`host:port` or a URL, as the
    /// Ollama CLI reads it) and a key from `OLLAMA_API_KEY`, each when set.
    pub fn from_env() -> Self {
        let mut config = OllamaConfig::new();
        if let Ok(host) = std::env::var("OLLAMA_HOST") {
            let host = host.trim().trim_end_matches('/');
            if !host.is_empty() {
                config.base_url = if host.contains("://") {
                    host.to_owned()
                } else {
                    format!("http://{host}")
                };
            }
        }
        config.api_key = ApiKey::from_env("OLLAMA_API_KEY");
        config
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

    /// Sets the key.
    pub fn api_key(mut self, key: impl Into<ApiKey>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Marks the server local or remote.
    pub fn local(mut self, local: bool) -> Self {
        self.local = local;
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

/// The Ollama provider.
pub struct OllamaProvider {
    endpoint: Endpoint,
    default_model: String,
    keep_alive: Option<String>,
    local: bool,
}

impl std::fmt::Debug for OllamaProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OllamaProvider")
            .field("name", &self.endpoint.provider)
            .field("url", &self.endpoint.url())
            .field("default_model", &self.default_model)
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl OllamaProvider {
    /// A provider for `config`.
    pub fn new(config: OllamaConfig) -> Result<Self, LlmError> {
        let secret: Vec<(&str, String)> = config
            .api_key
            .iter()
            .map(|key| ("authorization", format!("Bearer {}", key.expose())))
            .collect();
        let endpoint = Endpoint::new(
            &config.name,
            &format!("{}/api/chat", config.base_url.trim_end_matches('/')),
            &config.http,
            &secret,
            &[],
        )?;
        Ok(OllamaProvider {
            endpoint,
            default_model: config.default_model,
            keep_alive: config.keep_alive,
            local: config.local,
        })
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
        // Ollama has no `tool_choice`; "none" is honoured by not offering the tools.
        let tools = if request.tool_choice == Some(ToolChoice::None) {
            Vec::new()
        } else {
            request
                .tools
                .iter()
                .map(|t| WireTool {
                    kind: "function",
                    function: WireFunction {
                        name: &t.name,
                        description: &t.description,
                        parameters: &t.input_schema,
                    },
                })
                .collect()
        };
        Ok(WireRequest {
            model: request
                .model
                .as_deref()
                .unwrap_or(self.default_model.as_str()),
            messages: messages(request, &self.endpoint.provider)?,
            tools,
            stream,
            format: request.response_format.as_ref().map(|f| &f.schema),
            options: WireOptions {
                num_predict: request.max_tokens,
                temperature: request.temperature,
                top_p: request.top_p,
                stop: &request.stop_sequences,
            },
            think: request.thinking.map(|_| true),
            keep_alive: self.keep_alive.as_deref(),
        })
    }
}

http_provider!(OllamaProvider);

// ---- request ------------------------------------------------------------------------------

#[derive(Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool<'a>>,
    // Always written: Ollama streams unless told not to.
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<&'a Value>,
    options: WireOptions<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    think: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keep_alive: Option<&'a str>,
}

#[derive(Serialize)]
struct WireOptions<'a> {
    num_predict: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    images: Vec<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<WireToolCallOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<&'a str>,
}

impl WireMessage<'_> {
    fn new(role: &'static str, content: String) -> Self {
        WireMessage {
            role,
            content,
            images: Vec::new(),
            tool_calls: Vec::new(),
            tool_name: None,
            thinking: None,
        }
    }
}

#[derive(Serialize)]
struct WireToolCallOut<'a> {
    function: WireFunctionCallOut<'a>,
}

#[derive(Serialize)]
struct WireFunctionCallOut<'a> {
    name: &'a str,
    arguments: &'a Value,
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
    description: &'a str,
    parameters: &'a Value,
}

fn joined_text(blocks: &[ContentBlock]) -> String {
    let texts: Vec<&str> = blocks.iter().filter_map(ContentBlock::as_text).collect();
    texts.join("\n")
}

fn messages<'a>(
    request: &'a ChatRequest,
    provider: &str,
) -> Result<Vec<WireMessage<'a>>, LlmError> {
    // Tool results name the tool, not the call: find each call's tool by its id.
    let tool_names: HashMap<&str, &str> = request
        .messages
        .iter()
        .flat_map(|m| &m.content)
        .filter_map(|b| match b {
            ContentBlock::ToolUse { id, name, .. } => Some((id.as_str(), name.as_str())),
            _ => None,
        })
        .collect();
    let mut out = Vec::with_capacity(request.messages.len() + 1);
    if !request.system.is_empty() {
        out.push(WireMessage::new("system", joined_text(&request.system)));
    }
    for message in &request.messages {
        match message.role {
            Role::Assistant => {
                let mut wire = WireMessage::new("assistant", joined_text(&message.content));
                for block in &message.content {
                    match block {
                        ContentBlock::ToolUse { name, input, .. } => {
                            wire.tool_calls.push(WireToolCallOut {
                                function: WireFunctionCallOut {
                                    name,
                                    arguments: input,
                                },
                            });
                        }
                        ContentBlock::Thinking { thinking, .. } => wire.thinking = Some(thinking),
                        _ => {}
                    }
                }
                out.push(wire);
            }
            Role::User => {
                for block in &message.content {
                    if let ContentBlock::ToolResult {
                        tool_use_id,
                        content,
                        is_error,
                        ..
                    } = block
                    {
                        let text = joined_text(content);
                        let mut wire = WireMessage::new(
                            "tool",
                            if *is_error {
                                format!("[tool error] {text}")
                            } else {
                                text
                            },
                        );
                        wire.tool_name = tool_names.get(tool_use_id.as_str()).copied();
                        out.push(wire);
                    }
                }
                let mut images = Vec::new();
                for block in &message.content {
                    match block {
                        ContentBlock::Image {
                            source: ImageSource::Base64 { data, .. },
                        } => images.push(data.as_str()),
                        ContentBlock::Image {
                            source: ImageSource::Url { .. },
                        } => {
                            return Err(LlmError::InvalidRequest {
                                provider: provider.to_owned(),
                                status: 400,
                                message: "Ollama takes base64 images only, not URLs".to_owned(),
                            });
                        }
                        _ => {}
                    }
                }
                let text = joined_text(&message.content);
                if text.is_empty() && images.is_empty() {
                    continue;
                }
                let mut wire = WireMessage::new("user", text);
                wire.images = images;
                out.push(wire);
            }
        }
    }
    Ok(out)
}

// ---- response -----------------------------------------------------------------------------

#[derive(Deserialize)]
struct WireLine {
    #[serde(default)]
    model: String,
    #[serde(default)]
    created_at: String,
    #[serde(default)]
    message: Option<WireAssistant>,
    #[serde(default)]
    done: bool,
    #[serde(default)]
    done_reason: Option<String>,
    #[serde(default)]
    prompt_eval_count: Option<u64>,
    #[serde(default)]
    eval_count: Option<u64>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize, Default)]
struct WireAssistant {
    #[serde(default)]
    content: String,
    #[serde(default)]
    thinking: Option<String>,
    #[serde(default)]
    tool_calls: Vec<WireToolCall>,
}

#[derive(Deserialize)]
struct WireToolCall {
    #[serde(default)]
    id: Option<String>,
    function: WireFunctionCall,
}

#[derive(Deserialize)]
struct WireFunctionCall {
    name: String,
    #[serde(default)]
    arguments: Value,
}

/// Tool-call ids handed out in this process, so that ids never repeat across turns.
static NEXT_CALL: AtomicU64 = AtomicU64::new(1);

fn call_id(id: Option<String>) -> String {
    id.filter(|id| !id.is_empty())
        .unwrap_or_else(|| format!("ollama_call_{}", NEXT_CALL.fetch_add(1, Ordering::Relaxed)))
}

fn arguments(value: Value) -> Value {
    match value {
        Value::Null => Value::Object(serde_json::Map::new()),
        // Some models emit the arguments as a JSON string.
        Value::String(text) => serde_json::from_str(&text).unwrap_or(Value::String(text)),
        other => other,
    }
}

fn stop_reason(reason: Option<&str>, called_tools: bool) -> StopReason {
    match reason {
        // Ollama says "stop" after tool calls too.
        _ if called_tools => StopReason::ToolUse,
        Some("stop") | None => StopReason::EndTurn,
        Some("length") => StopReason::MaxTokens,
        Some(other) => StopReason::Other(other.to_owned()),
    }
}

impl WireLine {
    fn usage(&self) -> Usage {
        Usage {
            input_tokens: self.prompt_eval_count.unwrap_or(0),
            output_tokens: self.eval_count.unwrap_or(0),
            ..Usage::default()
        }
    }

    fn id(&self) -> String {
        format!("ollama-{}", self.created_at)
    }
}

fn line_error(provider: &str, line: &WireLine) -> Option<LlmError> {
    let error = line.error.as_ref()?;
    let body = ErrorBody::from_json(&serde_json::json!({ "error": error })).unwrap_or_default();
    Some(LlmError::from_stream_error(provider, &body))
}

/// Parses a non-streamed `/api/chat` answer.
pub fn parse_response(body: &[u8], provider: &str) -> Result<ChatResponse, LlmError> {
    let line: WireLine = crate::decode::json_from_bytes(body)
        .map_err(|e| LlmError::Decode(format!("{provider}: malformed chat answer: {e}")))?;
    if let Some(error) = line_error(provider, &line) {
        return Err(error);
    }
    let usage = line.usage();
    let id = line.id();
    let message = line.message.unwrap_or_default();
    let mut content = Vec::new();
    if let Some(thinking) = message.thinking.filter(|t| !t.is_empty()) {
        content.push(ContentBlock::Thinking {
            thinking,
            signature: None,
        });
    }
    if !message.content.is_empty() {
        content.push(ContentBlock::text(message.content));
    }
    let called_tools = !message.tool_calls.is_empty();
    for call in message.tool_calls {
        content.push(ContentBlock::ToolUse {
            id: call_id(call.id),
            name: call.function.name,
            input: arguments(call.function.arguments),
        });
    }
    Ok(ChatResponse {
        id,
        model: line.model,
        content,
        stop_reason: stop_reason(line.done_reason.as_deref(), called_tools),
        stop_sequence: None,
        usage,
        cost: None,
    })
}

/// Decodes an Ollama NDJSON body into [`StreamEvent`]s, incrementally.
///
/// Text and thinking open a block the first time they appear; each tool call is a complete
/// block of its own (Ollama sends arguments whole); the `done: true` line closes the blocks,
/// reports usage and ends the stream. A line with `error` becomes a typed [`LlmError`] (a
/// server error when untyped, since the HTTP status was already 200); a body that ends before
/// `done: true` is a retryable "stream ended early" error.
#[derive(Debug)]
pub struct StreamDecoder(FrameDecoder<Lines>);

/// What the NDJSON stream needs remembered between lines.
#[derive(Debug)]
struct Lines {
    started: bool,
    blocks: Blocks,
    text: Option<usize>,
    thinking: Option<usize>,
    called_tools: bool,
}

impl StreamDecoder {
    /// A decoder for one answer; `provider` names it in errors.
    pub fn new(provider: &str) -> Self {
        StreamDecoder(FrameDecoder::new(
            provider,
            NdjsonSplitter::new(),
            Lines {
                started: false,
                blocks: Blocks::default(),
                text: None,
                thinking: None,
                called_tools: false,
            },
        ))
    }

    decoder_methods!("the `done: true` line");
}

impl Wire for Lines {
    type Framing = NdjsonSplitter;
    const TERMINAL: &'static str = "line with done: true";

    fn frame(
        &mut self,
        provider: &str,
        line: &Vec<u8>,
        out: &mut Vec<StreamEvent>,
        at_eof: bool,
    ) -> Result<bool, LlmError> {
        let line: WireLine = frame_json(
            crate::decode::json_from_bytes(line),
            provider,
            at_eof,
            "line",
            || "line".to_owned(),
        )?;
        if let Some(error) = line_error(provider, &line) {
            return Err(error);
        }
        if !self.started {
            self.started = true;
            out.push(StreamEvent::MessageStart {
                id: line.id(),
                model: line.model.clone(),
                usage: Usage::default(),
            });
        }
        let usage = line.usage();
        let message = line.message.unwrap_or_default();
        if let Some(thinking) = message.thinking.filter(|t| !t.is_empty()) {
            let index = self
                .blocks
                .open_once(&mut self.thinking, BlockStart::Thinking, out);
            out.push(StreamEvent::ThinkingDelta { index, thinking });
        }
        if !message.content.is_empty() {
            let index = self.blocks.open_once(&mut self.text, BlockStart::Text, out);
            out.push(StreamEvent::TextDelta {
                index,
                text: message.content,
            });
        }
        for call in message.tool_calls {
            self.called_tools = true;
            let index = self.blocks.open(
                BlockStart::ToolUse {
                    id: call_id(call.id),
                    name: call.function.name,
                },
                out,
            );
            out.push(StreamEvent::ToolInputDelta {
                index,
                partial_json: arguments(call.function.arguments).to_string(),
            });
            self.blocks.close(index, out);
        }
        if line.done {
            self.blocks.close_all(out);
            out.push(StreamEvent::MessageDelta {
                stop_reason: Some(stop_reason(line.done_reason.as_deref(), self.called_tools)),
                stop_sequence: None,
                usage,
            });
            out.push(StreamEvent::MessageStop);
            return Ok(true);
        }
        Ok(false)
    }
}
