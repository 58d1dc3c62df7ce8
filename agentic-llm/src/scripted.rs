//! [`ScriptedProvider`]: an [`LlmProvider`] that replays a script, for tests, examples and
//! offline development.
//!
//! How a reply is chosen is documented on the type; the comments here say why it works
//! the way it does.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;

use crate::stream::{StreamEvent, events_for};
use crate::{
    ChatRequest, ChatResponse, ContentBlock, EventStream, LlmError, LlmProvider,
    ProviderCapabilities, Role, Usage,
};

type Matcher = Arc<dyn Fn(&ChatRequest) -> bool + Send + Sync>;
type Fallback = Arc<dyn Fn(&ChatRequest) -> Result<ChatResponse, LlmError> + Send + Sync>;

/// The name and model a [`ScriptedProvider`] reports unless told otherwise.
const SCRIPTED: &str = "scripted";

/// Longest piece of a tool call's JSON arguments sent in one streamed fragment, in
/// characters. Small on purpose: fragments should cut through keys and strings so that
/// consumers which parse each fragment on its own fail in tests, not in production.
const JSON_FRAGMENT_CHARS: usize = 7;

/// One scripted reply: a response, or an error.
#[derive(Clone)]
pub enum ScriptedReply {
    /// Answer with this response.
    Response(ChatResponse),
    /// Fail with the error this makes, called once per use of the reply: a factory rather
    /// than a value because [`LlmError`] is not `Clone` and a rule may fire many times.
    Error(Arc<dyn Fn() -> LlmError + Send + Sync>),
}

impl ScriptedReply {
    /// A reply that fails with the error `make` returns, each time it is used.
    pub fn error(make: impl Fn() -> LlmError + Send + Sync + 'static) -> Self {
        ScriptedReply::Error(Arc::new(make))
    }
}

impl From<ChatResponse> for ScriptedReply {
    fn from(response: ChatResponse) -> Self {
        ScriptedReply::Response(response)
    }
}

impl fmt::Debug for ScriptedReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScriptedReply::Response(response) => f.debug_tuple("Response").field(response).finish(),
            // Calling the factory here could have side effects the test counts on, so the
            // error is not shown.
            ScriptedReply::Error(_) => f.write_str("Error(<fn>)"),
        }
    }
}

/// A reusable rule: when `matcher` accepts a request, answer with `reply`.
struct Rule {
    matcher: Matcher,
    reply: ScriptedReply,
}

/// The state every clone of one [`ScriptedProvider`] shares.
#[derive(Default)]
struct Script {
    // Kept behind `Arc`s so a call can copy the list out and run user matchers without
    // holding the lock (see `ScriptedProvider::reply_for`).
    rules: Vec<Arc<Rule>>,
    sequence: VecDeque<ScriptedReply>,
    fallback: Option<Fallback>,
    calls: Vec<ChatRequest>,
}

/// An [`LlmProvider`] that replays a script.
///
/// A reply is chosen for each call in this order:
///
/// 1. the first **rule** (added with [`ScriptedProvider::on_contains`] or
///    [`ScriptedProvider::on`]) whose matcher accepts the request; rules are reusable;
/// 2. otherwise the next reply of the **sequence** ([`ScriptedProvider::then`],
///    [`ScriptedProvider::then_error`]), each consumed by one call;
/// 3. otherwise the **fallback** function ([`ScriptedProvider::respond_with`]);
/// 4. otherwise the call fails with [`LlmError::Script`] describing the request.
///
/// Rules come before the sequence so a test can script "whenever the agent asks X, say Y"
/// without having to predict on which turn X is asked.
///
/// | Capability        | Scripted provider                                                  |
/// |-------------------|--------------------------------------------------------------------|
/// | streaming         | yes: text in word-sized deltas, tool input in small JSON fragments |
/// | tools             | yes (whatever the script returns)                                  |
/// | structured output | yes (whatever the script returns)                                  |
/// | images            | yes (accepted, never looked at)                                    |
/// | local             | no, unless [`ScriptedProvider::local`]`(true)`                     |
///
/// Clones share the script and the record of calls, so a test can keep a clone and inspect
/// [`ScriptedProvider::calls`] after handing the provider to an orchestrator as
/// `Arc<dyn LlmProvider>`. The name, capabilities and latency belong to each handle.
///
/// Responses whose `id` or `model` is empty get `msg_scripted_N` (N counts calls from 1)
/// and `scripted`; responses with all-zero usage get a rough estimate (about four
/// characters per token) so cost and budget code sees numbers.
///
/// ```
/// use agentic_llm::{ChatRequest, ChatResponse, LlmError, LlmProvider, ScriptedProvider};
/// use serde_json::json;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), LlmError> {
/// let llm = ScriptedProvider::new()
///     .then(ChatResponse::tool_call("call_1", "search", json!({ "q": "rust" })))
///     .then_error(|| LlmError::Timeout(std::time::Duration::from_secs(30)))
///     .then(ChatResponse::text("Rust is a language."));
/// let handle = llm.clone();
///
/// let first = llm.complete(ChatRequest::user("What is Rust?")).await?;
/// assert_eq!(first.tool_calls().count(), 1);
/// assert!(llm.complete(ChatRequest::user("again")).await.unwrap_err().is_retryable());
/// assert_eq!(llm.complete(ChatRequest::user("again")).await?.text_content(), "Rust is a language.");
/// assert_eq!(handle.call_count(), 3);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ScriptedProvider {
    name: String,
    capabilities: ProviderCapabilities,
    latency: Option<Duration>,
    script: Arc<Mutex<Script>>,
}

impl Default for ScriptedProvider {
    fn default() -> Self {
        ScriptedProvider {
            name: SCRIPTED.to_owned(),
            capabilities: ProviderCapabilities {
                // Remote by default so that privacy routing has to be opted into in tests,
                // like it has to be configured for real providers.
                local: false,
                ..ProviderCapabilities::all_remote()
            },
            latency: None,
            script: Arc::default(),
        }
    }
}

impl fmt::Debug for ScriptedProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let script = self.lock();
        f.debug_struct("ScriptedProvider")
            .field("name", &self.name)
            .field("capabilities", &self.capabilities)
            .field("latency", &self.latency)
            .field("rules", &script.rules.len())
            .field("sequence", &script.sequence)
            .field("fallback", &script.fallback.is_some())
            .field("calls", &script.calls.len())
            .finish()
    }
}

impl ScriptedProvider {
    /// An empty script: every call fails with [`LlmError::Script`] until replies are added.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a reply to the sequence; each call that no rule answers consumes one.
    pub fn then(self, reply: impl Into<ScriptedReply>) -> Self {
        self.lock().sequence.push_back(reply.into());
        self
    }

    /// Appends a failing reply to the sequence.
    pub fn then_error(self, make: impl Fn() -> LlmError + Send + Sync + 'static) -> Self {
        self.then(ScriptedReply::error(make))
    }

    /// Adds a reusable rule: requests whose last user message contains `needle` get `reply`.
    pub fn on_contains(self, needle: impl Into<String>, reply: impl Into<ScriptedReply>) -> Self {
        let needle = needle.into();
        self.on(
            move |request: &ChatRequest| {
                request
                    .last_user_text()
                    .is_some_and(|text| text.contains(&needle))
            },
            reply,
        )
    }

    /// Adds a reusable rule: requests `predicate` accepts get `reply`. Rules are tried in
    /// the order they were added. The predicate runs without any lock held and after the
    /// request was recorded, so it may call [`ScriptedProvider::call_count`] on a clone
    /// (which then counts the current call) to answer differently on later turns.
    pub fn on(
        self,
        predicate: impl Fn(&ChatRequest) -> bool + Send + Sync + 'static,
        reply: impl Into<ScriptedReply>,
    ) -> Self {
        self.lock().rules.push(Arc::new(Rule {
            matcher: Arc::new(predicate),
            reply: reply.into(),
        }));
        self
    }

    /// Sets the function that answers when no rule matches and the sequence is empty.
    /// Replaces an earlier fallback.
    pub fn respond_with(
        self,
        f: impl Fn(&ChatRequest) -> Result<ChatResponse, LlmError> + Send + Sync + 'static,
    ) -> Self {
        self.lock().fallback = Some(Arc::new(f));
        self
    }

    /// Sets the name returned by [`LlmProvider::name`] (default `"scripted"`), e.g. to
    /// tell providers apart in routing tests.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Marks the provider as local (eligible for sensitive requests) or remote (default).
    pub fn local(mut self, local: bool) -> Self {
        self.capabilities.local = local;
        self
    }

    /// Replaces the reported capabilities (default: everything, remote). The script is
    /// not checked against them; this only changes what routers see.
    pub fn with_capabilities(mut self, capabilities: ProviderCapabilities) -> Self {
        self.capabilities = capabilities;
        self
    }

    /// Waits `latency` (on the tokio clock, so `tokio::time::pause` applies) before each
    /// reply, to exercise timeouts and concurrency.
    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = Some(latency);
        self
    }

    /// The requests seen so far, in order, including those that failed.
    pub fn calls(&self) -> Vec<ChatRequest> {
        self.lock().calls.clone()
    }

    /// The most recent request, if any.
    pub fn last_call(&self) -> Option<ChatRequest> {
        self.lock().calls.last().cloned()
    }

    /// How many requests were seen.
    pub fn call_count(&self) -> usize {
        self.lock().calls.len()
    }

    /// How many replies of the sequence are still unused (to assert a script was played out).
    pub fn remaining(&self) -> usize {
        self.lock().sequence.len()
    }

    // A std `Mutex`: the critical sections are a few pushes and pops, never held across an
    // `.await`, and never around user closures. A poisoned lock (a panic elsewhere while it
    // was held) still guards consistent data, since every section leaves the script valid
    // after each step, so it is recovered rather than turned into a panic here too.
    fn lock(&self) -> MutexGuard<'_, Script> {
        self.script.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records `request` and produces its reply (the response already filled in).
    async fn reply_for(&self, request: ChatRequest) -> Result<ChatResponse, LlmError> {
        if let Some(latency) = self.latency {
            tokio::time::sleep(latency).await;
        }
        // Record first and copy the rules out, then run matchers and factories with the
        // lock released: they are user code and may call `calls()` on a clone of this
        // provider, which would deadlock on a non-reentrant std `Mutex`.
        let (number, rules) = {
            let mut script = self.lock();
            script.calls.push(request.clone());
            (script.calls.len(), script.rules.clone())
        };
        let reply = match rules.iter().find(|rule| (rule.matcher)(&request)) {
            Some(rule) => Reply::Scripted(rule.reply.clone()),
            None => {
                let mut script = self.lock();
                match script.sequence.pop_front() {
                    Some(reply) => Reply::Scripted(reply),
                    None => match script.fallback.clone() {
                        Some(fallback) => Reply::Fallback(fallback),
                        None => Reply::Nothing,
                    },
                }
            }
        };
        let response = match reply {
            Reply::Scripted(ScriptedReply::Response(response)) => response,
            Reply::Scripted(ScriptedReply::Error(make)) => return Err(make()),
            Reply::Fallback(fallback) => fallback(&request)?,
            Reply::Nothing => {
                return Err(LlmError::Script(format!(
                    "no scripted reply for request {number} ({})",
                    describe(&request)
                )));
            }
        };
        Ok(fill_in(response, &request, number))
    }
}

/// Where a call's reply comes from, decided under the lock and used after it is released.
enum Reply {
    Scripted(ScriptedReply),
    Fallback(Fallback),
    Nothing,
}

#[async_trait]
impl LlmProvider for ScriptedProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> ProviderCapabilities {
        self.capabilities
    }

    async fn complete(&self, request: ChatRequest) -> Result<ChatResponse, LlmError> {
        self.reply_for(request).await
    }

    /// Replays the reply as events, with text split into word-sized deltas and tool input
    /// into small JSON fragments, the way real providers stream, so consumers exercise
    /// reassembly. A scripted error fails the call before any event.
    async fn stream(&self, request: ChatRequest) -> Result<EventStream, LlmError> {
        let response = self.reply_for(request).await?;
        Ok(futures::stream::iter(chunked_events(&response).into_iter().map(Ok)).boxed())
    }
}

/// Gives a scripted response the id, model and usage a real provider would have set.
fn fill_in(mut response: ChatResponse, request: &ChatRequest, number: usize) -> ChatResponse {
    if response.id.is_empty() {
        response.id = format!("msg_scripted_{number}");
    }
    if response.model.is_empty() {
        response.model = SCRIPTED.to_owned();
    }
    if response.usage == Usage::default() {
        let prompt_chars = request.system.iter().map(block_chars).sum::<usize>()
            + request
                .messages
                .iter()
                .flat_map(|m| &m.content)
                .map(block_chars)
                .sum::<usize>()
            + request
                .tools
                .iter()
                .map(|t| t.name.len() + t.description.len() + t.input_schema.to_string().len())
                .sum::<usize>();
        let answer_chars = response.content.iter().map(block_chars).sum::<usize>();
        response.usage = Usage {
            input_tokens: estimate_tokens(prompt_chars),
            output_tokens: estimate_tokens(answer_chars),
            ..Usage::default()
        };
    }
    response
}

/// Roughly four characters per token, and at least one token so that a call never looks
/// free.
fn estimate_tokens(chars: usize) -> u64 {
    u64::try_from(chars.div_ceil(4)).unwrap_or(u64::MAX).max(1)
}

/// Characters a block contributes to a token estimate.
fn block_chars(block: &ContentBlock) -> usize {
    match block {
        ContentBlock::Text { text, .. } => text.chars().count(),
        ContentBlock::ToolUse { name, input, .. } => name.len() + input.to_string().len(),
        ContentBlock::ToolResult { content, .. } => content.iter().map(block_chars).sum(),
        ContentBlock::Thinking { thinking, .. } => thinking.chars().count(),
        ContentBlock::RedactedThinking { data } => data.len(),
        // Images are priced by size by real providers; a flat guess is enough here.
        _ => 1000,
    }
}

/// A short description of a request for the "no reply" error, so a failing test shows
/// which call the script did not expect.
fn describe(request: &ChatRequest) -> String {
    const MAX_CHARS: usize = 80;
    let mut parts = vec![format!(
        "{} message{}",
        request.messages.len(),
        if request.messages.len() == 1 { "" } else { "s" }
    )];
    if !request.tools.is_empty() {
        let names: Vec<&str> = request.tools.iter().map(|t| t.name.as_str()).collect();
        parts.push(format!("tools [{}]", names.join(", ")));
    }
    if let Some(model) = &request.model {
        parts.push(format!("model {model:?}"));
    }
    let last_is_tool_result = request.messages.last().is_some_and(|m| {
        m.role == Role::User
            && m.content
                .iter()
                .any(|b| matches!(b, ContentBlock::ToolResult { .. }))
    });
    if last_is_tool_result {
        parts.push("last message carries tool results".to_owned());
    }
    match request.last_user_text() {
        Some(text) if text.chars().count() > MAX_CHARS => {
            let cut: String = text.chars().take(MAX_CHARS).collect();
            parts.push(format!("last user text {cut:?}..."));
        }
        Some(text) => parts.push(format!("last user text {text:?}")),
        None => parts.push("no user text".to_owned()),
    }
    parts.join(", ")
}

/// The events of `response` (from [`events_for`]) with each delta split into several.
fn chunked_events(response: &ChatResponse) -> Vec<StreamEvent> {
    let mut events = Vec::new();
    for event in events_for(response) {
        match event {
            StreamEvent::TextDelta { index, text } => {
                events.extend(split_words(&text).map(|text| StreamEvent::TextDelta {
                    index,
                    text: text.to_owned(),
                }));
            }
            StreamEvent::ThinkingDelta { index, thinking } => {
                events.extend(
                    split_words(&thinking).map(|thinking| StreamEvent::ThinkingDelta {
                        index,
                        thinking: thinking.to_owned(),
                    }),
                );
            }
            StreamEvent::ToolInputDelta {
                index,
                partial_json,
            } => {
                events.extend(
                    split_chars(&partial_json, JSON_FRAGMENT_CHARS).map(|fragment| {
                        StreamEvent::ToolInputDelta {
                            index,
                            partial_json: fragment.to_owned(),
                        }
                    }),
                );
            }
            other => events.push(other),
        }
    }
    events
}

/// Splits `text` before each run of whitespace that follows a word (`"a b  c"` becomes
/// `"a"`, `" b"`, `"  c"`), the way token streams usually look. Concatenating the pieces
/// gives `text` back; empty text gives no pieces.
fn split_words(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut seen_word = false;
        let mut end = rest.len();
        for (at, c) in rest.char_indices() {
            if c.is_whitespace() {
                if seen_word {
                    end = at;
                    break;
                }
            } else {
                seen_word = true;
            }
        }
        let (piece, tail) = rest.split_at(end);
        rest = tail;
        Some(piece)
    })
}

/// Splits `text` into pieces of at most `max` characters (cut on character boundaries).
fn split_chars(text: &str, max: usize) -> impl Iterator<Item = &str> {
    let max = max.max(1);
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = rest
            .char_indices()
            .nth(max)
            .map_or(rest.len(), |(at, _)| at);
        let (piece, tail) = rest.split_at(end);
        rest = tail;
        Some(piece)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn split_words_keeps_every_character() {
        let text = "  Hello, wide\n\nworld!  ";
        let pieces: Vec<&str> = split_words(text).collect();
        assert_eq!(pieces, vec!["  Hello,", " wide", "\n\nworld!", "  "]);
        assert_eq!(pieces.concat(), text);
        assert_eq!(split_words("").count(), 0);
    }

    #[test]
    fn split_chars_respects_char_boundaries() {
        let text = "{\"k\":\"héllo wörld\"}";
        let pieces: Vec<&str> = split_chars(text, 3).collect();
        assert!(pieces.iter().all(|p| p.chars().count() <= 3));
        assert_eq!(pieces.concat(), text);
    }

    #[test]
    fn estimate_is_never_zero() {
        assert_eq!(estimate_tokens(0), 1);
        assert_eq!(estimate_tokens(9), 3);
    }
}
