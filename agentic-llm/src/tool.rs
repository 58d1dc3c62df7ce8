//! Tool calling: the [`Tool`] trait (typed arguments, schema generated with `schemars`), a
//! [`ToolSet`], and the tool-use loop [`run_with_tools`].
//!
//! ```
//! use agentic_llm::tool::{Tool, ToolError, ToolSet, run_with_tools};
//! use agentic_llm::{ChatRequest, ChatResponse, LlmProvider, ScriptedProvider};
//! use async_trait::async_trait;
//! use serde_json::json;
//!
//! #[derive(serde::Deserialize, schemars::JsonSchema)]
//! struct AddArgs {
//!     /// First term.
//!     a: i64,
//!     /// Second term.
//!     b: i64,
//! }
//!
//! struct Add;
//!
//! #[async_trait]
//! impl Tool for Add {
//!     type Args = AddArgs;
//!     type Output = i64;
//!     fn name(&self) -> &str { "add" }
//!     fn description(&self) -> &str { "Adds two integers." }
//!     async fn call(&self, args: AddArgs) -> Result<i64, ToolError> {
//!         Ok(args.a + args.b)
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), agentic_llm::LlmError> {
//! let llm = ScriptedProvider::new()
//!     .then(ChatResponse::tool_call("call_1", "add", json!({ "a": 2, "b": 40 })))
//!     .then(ChatResponse::text("2 + 40 = 42"));
//! let tools = ToolSet::new().with(Add);
//! let run = run_with_tools(&llm, ChatRequest::user("What is 2 + 40?"), &tools, 5).await?;
//! assert_eq!(run.response.text_content(), "2 + 40 = 42");
//! assert_eq!(run.steps, 2);
//! // The model saw the tool's result.
//! assert!(format!("{:?}", llm.calls()[1].messages).contains("42"));
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::stream::StreamEvent;
use crate::{
    ChatRequest, ChatResponse, ContentBlock, Cost, LlmError, LlmProvider, Message, Role,
    ToolDefinition, Usage, collect_stream_with,
};

/// Why a tool failed. It goes back to the model as an error result (so it can correct its
/// arguments or try something else), not to the caller of the loop.
///
/// Any `std::error::Error` converts into it, so a tool can use `?`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolError(pub String);

impl ToolError {
    /// A failure with this message.
    pub fn new(message: impl Into<String>) -> Self {
        ToolError(message.into())
    }
}

impl fmt::Display for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<E: std::error::Error> From<E> for ToolError {
    fn from(error: E) -> Self {
        ToolError(error.to_string())
    }
}

/// A tool with typed arguments. Its JSON Schema is generated from `Args` (doc comments
/// become descriptions), and the model's JSON arguments are deserialized into `Args` before
/// [`Tool::call`]; arguments that do not fit go back to the model as an error result.
#[async_trait]
pub trait Tool: Send + Sync + 'static {
    /// The arguments.
    type Args: DeserializeOwned + JsonSchema + Send;
    /// The result; a string is sent as it is, anything else as JSON.
    type Output: Serialize + Send;

    /// The name the model calls it by.
    fn name(&self) -> &str;

    /// What it does, for the model.
    fn description(&self) -> &str;

    /// Runs the tool.
    async fn call(&self, args: Self::Args) -> Result<Self::Output, ToolError>;

    /// The definition sent to the model (name, description, schema of `Args`).
    fn definition(&self) -> ToolDefinition {
        ToolDefinition::new(self.name(), self.description(), schema_of::<Self::Args>())
    }
}

/// The JSON Schema of `T`'s arguments object, as providers take it: without the `$schema`
/// and `title` keys (OpenAI's strict mode and some local servers reject unknown top-level
/// keys; the tool's name already says what the title would).
pub fn schema_of<T: JsonSchema>() -> Value {
    let mut schema = schemars::schema_for!(T).to_value();
    if let Value::Object(map) = &mut schema {
        map.remove("$schema");
        map.remove("title");
    }
    schema
}

/// A tool with JSON in and text out: what a [`ToolSet`] holds. Every [`Tool`] is one; write
/// one directly (or use [`FnTool`]) when the schema is hand-written.
#[async_trait]
pub trait DynTool: Send + Sync {
    /// The definition sent to the model.
    fn definition(&self) -> ToolDefinition;

    /// Runs the tool on the model's JSON arguments; `Err` is sent to the model as an error
    /// result.
    async fn call_json(&self, input: Value) -> Result<String, String>;
}

#[async_trait]
impl<T: Tool> DynTool for T {
    fn definition(&self) -> ToolDefinition {
        Tool::definition(self)
    }

    async fn call_json(&self, input: Value) -> Result<String, String> {
        let args: T::Args = serde_json::from_value(input)
            .map_err(|e| format!("invalid arguments for tool {}: {e}", self.name()))?;
        let output = self.call(args).await.map_err(|e| e.0)?;
        match serde_json::to_value(output) {
            Ok(Value::String(text)) => Ok(text),
            Ok(value) => Ok(value.to_string()),
            Err(e) => Err(format!(
                "tool {} returned an unserializable result: {e}",
                self.name()
            )),
        }
    }
}

type BoxedFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;

/// A tool from a closure and a hand-written schema.
///
/// ```
/// use agentic_llm::tool::FnTool;
/// use serde_json::json;
///
/// let clock = FnTool::new(
///     "now",
///     "The current time, ISO 8601.",
///     json!({ "type": "object", "properties": {} }),
///     |_args| async { Ok("2026-01-01T12:00:00Z".to_owned()) },
/// );
/// ```
pub struct FnTool {
    definition: ToolDefinition,
    call: Arc<dyn Fn(Value) -> BoxedFuture + Send + Sync>,
}

impl FnTool {
    /// A tool named `name` with the argument `schema`, running `call`.
    pub fn new<F, Fut>(
        name: impl Into<String>,
        description: impl Into<String>,
        schema: Value,
        call: F,
    ) -> Self
    where
        F: Fn(Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, String>> + Send + 'static,
    {
        FnTool {
            definition: ToolDefinition::new(name, description, schema),
            call: Arc::new(move |input| Box::pin(call(input))),
        }
    }
}

impl fmt::Debug for FnTool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnTool")
            .field("name", &self.definition.name)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl DynTool for FnTool {
    fn definition(&self) -> ToolDefinition {
        self.definition.clone()
    }

    async fn call_json(&self, input: Value) -> Result<String, String> {
        (self.call)(input).await
    }
}

/// Tools by name. Cheap to clone (the tools are shared).
#[derive(Clone, Default)]
pub struct ToolSet {
    tools: BTreeMap<String, Arc<dyn DynTool>>,
}

impl fmt::Debug for ToolSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.tools.keys()).finish()
    }
}

impl ToolSet {
    /// No tools.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a tool (replacing one of the same name).
    pub fn with(mut self, tool: impl DynTool + 'static) -> Self {
        self.add(tool);
        self
    }

    /// Adds a tool (replacing one of the same name).
    pub fn add(&mut self, tool: impl DynTool + 'static) {
        let tool: Arc<dyn DynTool> = Arc::new(tool);
        self.tools.insert(tool.definition().name, tool);
    }

    /// The definitions, by name.
    pub fn definitions(&self) -> Vec<ToolDefinition> {
        self.tools.values().map(|t| t.definition()).collect()
    }

    /// The tools' names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tools.keys().map(String::as_str)
    }

    /// Runs tool `name` on `input` and returns the result block for call `id`: unknown
    /// tools and failures are error results the model can read.
    pub async fn call(&self, id: &str, name: &str, input: Value) -> ContentBlock {
        let Some(tool) = self.tools.get(name) else {
            let known: Vec<&str> = self.names().collect();
            return ContentBlock::tool_error(
                id,
                format!("unknown tool {name:?}; available: {}", known.join(", ")),
            );
        };
        match tool.call_json(input).await {
            Ok(text) => ContentBlock::tool_result(id, text),
            Err(message) => ContentBlock::tool_error(id, message),
        }
    }
}

/// Why a tool-use loop stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolRunStop {
    /// The model answered without asking for tools.
    FinalAnswer,
    /// The step limit was reached while the model still asked for tools (they were not run).
    StepLimit,
}

/// The outcome of [`run_with_tools`].
#[derive(Debug, Clone, PartialEq)]
pub struct ToolRun {
    /// The last answer (the final one, or the last tool request at the step limit).
    pub response: ChatResponse,
    /// The whole conversation: the request's messages, then each answer and tool results.
    pub messages: Vec<Message>,
    /// Model calls made.
    pub steps: usize,
    /// Tokens of all calls.
    pub usage: Usage,
    /// Cost of all calls, when they were priced.
    pub cost: Option<Cost>,
    /// Why the loop stopped.
    pub stop: ToolRunStop,
}

/// The tool-use loop: sends `request` (with the tool set's definitions added), runs the
/// tools the model asks for (concurrently when it asks for several), sends the results back,
/// and repeats until the model answers without tools or `max_steps` model calls were made.
///
/// Works with any provider. Tool failures go back to the model as error results; provider
/// errors end the loop with that error.
pub async fn run_with_tools<P: LlmProvider + ?Sized>(
    provider: &P,
    request: ChatRequest,
    tools: &ToolSet,
    max_steps: usize,
) -> Result<ToolRun, LlmError> {
    run(provider, request, tools, max_steps, None).await
}

/// [`run_with_tools`] over streams: each model call is streamed and `on_event` sees every
/// event as it arrives (to show text while it is generated).
pub async fn run_with_tools_streaming<P: LlmProvider + ?Sized>(
    provider: &P,
    request: ChatRequest,
    tools: &ToolSet,
    max_steps: usize,
    mut on_event: impl FnMut(&StreamEvent) + Send,
) -> Result<ToolRun, LlmError> {
    run(provider, request, tools, max_steps, Some(&mut on_event)).await
}

async fn run<P: LlmProvider + ?Sized>(
    provider: &P,
    mut request: ChatRequest,
    tools: &ToolSet,
    max_steps: usize,
    mut on_event: Option<&mut (dyn FnMut(&StreamEvent) + Send)>,
) -> Result<ToolRun, LlmError> {
    for definition in tools.definitions() {
        if !request.tools.iter().any(|t| t.name == definition.name) {
            request.tools.push(definition);
        }
    }
    let mut usage = Usage::default();
    let mut cost: Option<Cost> = None;
    let mut steps = 0;
    loop {
        let response = match on_event.as_mut() {
            Some(on_event) => {
                let events = provider.stream(request.clone()).await?;
                collect_stream_with(events, |event| on_event(event)).await?
            }
            None => provider.complete(request.clone()).await?,
        };
        steps += 1;
        usage.add(&response.usage);
        if let Some(c) = response.cost {
            cost.get_or_insert_with(Cost::default).usd += c.usd;
        }
        request.messages.push(response.to_message());
        let calls: Vec<(String, String, Value)> = response
            .tool_calls()
            .map(|(id, name, input)| (id.to_owned(), name.to_owned(), input.clone()))
            .collect();
        if calls.is_empty() || steps >= max_steps {
            let stop = if calls.is_empty() {
                ToolRunStop::FinalAnswer
            } else {
                ToolRunStop::StepLimit
            };
            return Ok(ToolRun {
                response,
                messages: request.messages,
                steps,
                usage,
                cost,
                stop,
            });
        }
        // Concurrently, in the order the model asked (results are matched by id, but the
        // order keeps the transcript readable and deterministic).
        let results = futures::future::join_all(
            calls
                .iter()
                .map(|(id, name, input)| tools.call(id, name, input.clone())),
        )
        .await;
        request.messages.push(Message {
            role: Role::User,
            content: results,
        });
    }
}
