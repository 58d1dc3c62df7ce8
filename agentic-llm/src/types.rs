//! The provider-neutral request/response model.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Who wrote a message. The system prompt is not a message: see [`ChatRequest::system`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The user (and tool results, which are sent as user content).
    User,
    /// The model.
    Assistant,
}

/// Prompt-caching hint attached to a block (Anthropic `cache_control`; ignored elsewhere).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CacheControl {
    /// Cache the prompt up to and including this block.
    Ephemeral {
        /// Optional TTL such as `"5m"` or `"1h"`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl: Option<String>,
    },
}

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ImageSource {
    /// Inline bytes, base64-encoded.
    Base64 {
        /// MIME type, e.g. `image/png`.
        media_type: String,
        /// Base64 data.
        data: String,
    },
    /// A URL the provider fetches.
    Url {
        /// The URL.
        url: String,
    },
}

/// One piece of a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ContentBlock {
    /// Plain text.
    Text {
        /// The text.
        text: String,
        /// Prompt-caching hint.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cache_control: Option<CacheControl>,
    },
    /// An image input.
    Image {
        /// The image.
        source: ImageSource,
    },
    /// The model asks to call a tool.
    ToolUse {
        /// Provider-assigned call id; echo it in the [`ContentBlock::ToolResult`].
        id: String,
        /// The tool's name.
        name: String,
        /// Arguments as JSON.
        input: Value,
    },
    /// The result of a tool call, sent back to the model.
    ToolResult {
        /// The id of the [`ContentBlock::ToolUse`] it answers.
        tool_use_id: String,
        /// The result (text or images).
        content: Vec<ContentBlock>,
        /// True when the tool failed and `content` is the error.
        #[serde(default)]
        is_error: bool,
        /// Prompt-caching hint (Anthropic caches the prompt up to and including this block).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cache_control: Option<CacheControl>,
    },
    /// Model reasoning (extended thinking), kept so it can be sent back verbatim.
    Thinking {
        /// The reasoning text.
        thinking: String,
        /// Provider signature that must accompany it when sent back.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signature: Option<String>,
    },
    /// Reasoning the provider encrypted (Anthropic `redacted_thinking`): opaque, but it must
    /// be sent back verbatim in the next turn of a tool-use loop.
    RedactedThinking {
        /// The encrypted reasoning.
        data: String,
    },
}

impl ContentBlock {
    /// A text block.
    pub fn text(text: impl Into<String>) -> Self {
        ContentBlock::Text {
            text: text.into(),
            cache_control: None,
        }
    }

    /// A successful tool result with text content.
    pub fn tool_result(tool_use_id: impl Into<String>, text: impl Into<String>) -> Self {
        ContentBlock::ToolResult {
            tool_use_id: tool_use_id.into(),
            content: vec![ContentBlock::text(text)],
            is_error: false,
            cache_control: None,
        }
    }

    /// A failed tool result: `message` tells the model what went wrong.
    pub fn tool_error(tool_use_id: impl Into<String>, message: impl Into<String>) -> Self {
        ContentBlock::ToolResult {
            tool_use_id: tool_use_id.into(),
            content: vec![ContentBlock::text(message)],
            is_error: true,
            cache_control: None,
        }
    }

    /// The text of a text block.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            ContentBlock::Text { text, .. } => Some(text),
            _ => None,
        }
    }
}

/// A message: a role and its content blocks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// What it says.
    pub content: Vec<ContentBlock>,
}

impl Message {
    /// A user message with one text block.
    pub fn user(text: impl Into<String>) -> Self {
        Message {
            role: Role::User,
            content: vec![ContentBlock::text(text)],
        }
    }

    /// An assistant message with one text block.
    pub fn assistant(text: impl Into<String>) -> Self {
        Message {
            role: Role::Assistant,
            content: vec![ContentBlock::text(text)],
        }
    }

    /// All text blocks joined.
    pub fn text(&self) -> String {
        self.content
            .iter()
            .filter_map(ContentBlock::as_text)
            .collect()
    }
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolDefinition {
    /// Name the model uses to call it.
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// JSON Schema of the arguments object.
    pub input_schema: Value,
    /// Prompt-caching hint (Anthropic: cache the tool list up to and including this tool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<CacheControl>,
    /// Ask the provider to enforce the schema exactly (OpenAI `strict`; the schema must then
    /// follow OpenAI's strict-mode subset). Ignored by providers without the option.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strict: bool,
}

impl ToolDefinition {
    /// A tool definition without caching hint or strict mode.
    pub fn new(
        name: impl Into<String>,
        description: impl Into<String>,
        input_schema: Value,
    ) -> Self {
        ToolDefinition {
            name: name.into(),
            description: description.into(),
            input_schema,
            cache_control: None,
            strict: false,
        }
    }

    /// Sets the prompt-caching hint.
    pub fn cache_control(mut self, cache_control: CacheControl) -> Self {
        self.cache_control = Some(cache_control);
        self
    }

    /// Sets strict schema enforcement.
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }
}

/// Whether and which tool the model must call.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToolChoice {
    /// The model decides.
    #[default]
    Auto,
    /// The model must call some tool.
    Any,
    /// The model must not call tools.
    None,
    /// The model must call this tool.
    Tool {
        /// The tool's name.
        name: String,
    },
}

/// Structured output: the answer must be JSON matching a schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseFormat {
    /// A name for the schema (OpenAI requires one).
    pub name: String,
    /// What the schema describes, for the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON Schema the answer must match.
    pub schema: Value,
    /// Ask the provider to enforce the schema strictly where it can.
    #[serde(default)]
    pub strict: bool,
}

/// Extended thinking (reasoning) for models that support it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ThinkingConfig {
    /// Most tokens the model may spend reasoning before it answers (Anthropic
    /// `budget_tokens`, at least 1024 there and below `max_tokens`). Providers with an on/off
    /// switch only (Ollama `think`) turn thinking on.
    pub budget_tokens: u32,
}

/// Routing and accounting hints that are not sent to the provider.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RequestMetadata {
    /// Contains data that must not leave local providers.
    #[serde(default)]
    pub sensitive: bool,
    /// A complexity or cost tier for routing (`"small"`, `"large"`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// The request is deterministic and may be served from a cache even if temperature > 0.
    #[serde(default)]
    pub cacheable: bool,
    /// Who pays: a goal id, a tenant, a user.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

/// A chat request, provider-neutral.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ChatRequest {
    /// Model name; `None` lets the provider use its configured default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// System prompt blocks (text, optionally with cache control).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub system: Vec<ContentBlock>,
    /// The conversation.
    pub messages: Vec<Message>,
    /// Tools the model may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolDefinition>,
    /// Tool choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    /// Upper bound on output tokens.
    pub max_tokens: u32,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// Stop generating at any of these strings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop_sequences: Vec<String>,
    /// Structured output schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    /// Extended thinking; `None` leaves it off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking: Option<ThinkingConfig>,
    /// Routing and accounting hints (never sent to the provider).
    #[serde(default)]
    pub metadata: RequestMetadata,
}

/// Default `max_tokens` of [`ChatRequest::new`].
pub const DEFAULT_MAX_TOKENS: u32 = 1024;

impl ChatRequest {
    /// A request with the given messages and [`DEFAULT_MAX_TOKENS`].
    pub fn new(messages: Vec<Message>) -> Self {
        ChatRequest {
            messages,
            max_tokens: DEFAULT_MAX_TOKENS,
            ..ChatRequest::default()
        }
    }

    /// A request with one user message.
    pub fn user(text: impl Into<String>) -> Self {
        ChatRequest::new(vec![Message::user(text)])
    }

    /// Sets the model.
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// Sets a text system prompt.
    pub fn system(mut self, text: impl Into<String>) -> Self {
        self.system = vec![ContentBlock::text(text)];
        self
    }

    /// Adds a tool.
    pub fn tool(mut self, tool: ToolDefinition) -> Self {
        self.tools.push(tool);
        self
    }

    /// Sets `max_tokens`.
    pub fn max_tokens(mut self, max_tokens: u32) -> Self {
        self.max_tokens = max_tokens;
        self
    }

    /// Sets the temperature.
    pub fn temperature(mut self, temperature: f32) -> Self {
        self.temperature = Some(temperature);
        self
    }

    /// Sets the tool choice.
    pub fn tool_choice(mut self, choice: ToolChoice) -> Self {
        self.tool_choice = Some(choice);
        self
    }

    /// Sets a metadata tag (`goal`, `tenant`, ...) used by budgets and logs.
    pub fn tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.tags.insert(key.into(), value.into());
        self
    }

    /// Marks the request as sensitive: routers send it to local providers only.
    pub fn sensitive(mut self, sensitive: bool) -> Self {
        self.metadata.sensitive = sensitive;
        self
    }

    /// Sets the routing tier (`"small"`, `"large"`, ...).
    pub fn tier(mut self, tier: impl Into<String>) -> Self {
        self.metadata.tier = Some(tier.into());
        self
    }

    /// A rough count of the prompt's tokens (about four characters per token, images a flat
    /// 1 600), for rate limits and worst-case budgets before the provider reports the real
    /// number. Never zero.
    pub fn estimated_input_tokens(&self) -> u64 {
        let chars = self.system.iter().map(block_chars).sum::<usize>()
            + self
                .messages
                .iter()
                .flat_map(|m| &m.content)
                .map(block_chars)
                .sum::<usize>()
            + self
                .tools
                .iter()
                .map(|t| t.name.len() + t.description.len() + t.input_schema.to_string().len())
                .sum::<usize>()
            + self
                .response_format
                .as_ref()
                .map_or(0, |f| f.schema.to_string().len());
        estimate_tokens(chars)
    }

    /// Text of the last user message (handy for matching scripted responses).
    pub fn last_user_text(&self) -> Option<String> {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(Message::text)
    }
}

/// Roughly four characters per token, and at least one token so that a call never looks
/// free.
pub(crate) fn estimate_tokens(chars: usize) -> u64 {
    u64::try_from(chars.div_ceil(4)).unwrap_or(u64::MAX).max(1)
}

/// Characters a block contributes to a token estimate.
pub(crate) fn block_chars(block: &ContentBlock) -> usize {
    match block {
        ContentBlock::Text { text, .. } => text.chars().count(),
        ContentBlock::ToolUse { name, input, .. } => name.len() + input.to_string().len(),
        ContentBlock::ToolResult { content, .. } => content.iter().map(block_chars).sum(),
        ContentBlock::Thinking { thinking, .. } => thinking.chars().count(),
        ContentBlock::RedactedThinking { data } => data.len(),
        // Providers price images by their size (Anthropic: width * height / 750 tokens, about
        // 1 600 for a typical screenshot); the estimate uses that typical size.
        ContentBlock::Image { .. } => 6400,
    }
}

/// Why the model stopped.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StopReason {
    /// A natural end of turn.
    #[default]
    EndTurn,
    /// `max_tokens` reached.
    MaxTokens,
    /// A stop sequence matched.
    StopSequence,
    /// The model wants tool results.
    ToolUse,
    /// The provider filtered the content.
    ContentFilter,
    /// The model refused.
    Refusal,
    /// The provider paused a long turn.
    PauseTurn,
    /// Anything else, verbatim.
    Other(String),
}

/// Tokens used by one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens (not counting cache reads and writes where the provider separates them).
    pub input_tokens: u64,
    /// Generated tokens.
    pub output_tokens: u64,
    /// Prompt tokens read from the provider's cache.
    #[serde(default)]
    pub cache_read_tokens: u64,
    /// Prompt tokens written to the provider's cache.
    #[serde(default)]
    pub cache_write_tokens: u64,
}

impl Usage {
    /// Adds another call's usage.
    pub fn add(&mut self, other: &Usage) {
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cache_read_tokens += other.cache_read_tokens;
        self.cache_write_tokens += other.cache_write_tokens;
    }

    /// All tokens.
    pub fn total(&self) -> u64 {
        self.input_tokens + self.output_tokens + self.cache_read_tokens + self.cache_write_tokens
    }
}

/// Money spent, in US dollars.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Cost {
    /// Cost in USD.
    pub usd: f64,
}

/// A complete answer.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ChatResponse {
    /// Provider's message id.
    pub id: String,
    /// The model that answered.
    pub model: String,
    /// The answer's content blocks.
    pub content: Vec<ContentBlock>,
    /// Why it stopped.
    pub stop_reason: StopReason,
    /// The stop sequence that matched, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_sequence: Option<String>,
    /// Tokens used.
    pub usage: Usage,
    /// Cost, when a cost meter priced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<Cost>,
}

impl ChatResponse {
    /// A response with one text block and `EndTurn`.
    pub fn text(text: impl Into<String>) -> Self {
        ChatResponse {
            content: vec![ContentBlock::text(text)],
            ..ChatResponse::default()
        }
    }

    /// A response that asks for one tool call.
    pub fn tool_call(id: impl Into<String>, name: impl Into<String>, input: Value) -> Self {
        ChatResponse {
            content: vec![ContentBlock::ToolUse {
                id: id.into(),
                name: name.into(),
                input,
            }],
            stop_reason: StopReason::ToolUse,
            ..ChatResponse::default()
        }
    }

    /// All text blocks joined.
    pub fn text_content(&self) -> String {
        self.content
            .iter()
            .filter_map(ContentBlock::as_text)
            .collect()
    }

    /// True when the answer asks for at least one tool call.
    pub fn has_tool_calls(&self) -> bool {
        self.content
            .iter()
            .any(|b| matches!(b, ContentBlock::ToolUse { .. }))
    }

    /// The tool calls the model asked for: `(id, name, input)`.
    pub fn tool_calls(&self) -> impl Iterator<Item = (&str, &str, &Value)> {
        self.content.iter().filter_map(|b| match b {
            ContentBlock::ToolUse { id, name, input } => Some((id.as_str(), name.as_str(), input)),
            _ => None,
        })
    }

    /// The answer as an assistant message (to append to the conversation).
    pub fn to_message(&self) -> Message {
        Message {
            role: Role::Assistant,
            content: self.content.clone(),
        }
    }
}

/// What a provider supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ProviderCapabilities {
    /// Native streaming.
    pub streaming: bool,
    /// Tool calling.
    pub tools: bool,
    /// Structured output with a JSON schema.
    pub structured_output: bool,
    /// Image input.
    pub images: bool,
    /// Runs on infrastructure the user controls (eligible for sensitive requests).
    pub local: bool,
}

impl ProviderCapabilities {
    /// Everything, remote.
    pub const fn all_remote() -> Self {
        ProviderCapabilities {
            streaming: true,
            tools: true,
            structured_output: true,
            images: true,
            local: false,
        }
    }
}
