//! STUB: being implemented.
use std::sync::Arc;

use async_trait::async_trait;

use crate::*;

/// One scripted reply.
#[derive(Clone)]
pub enum ScriptedReply {
    /// Answer with this response.
    Response(ChatResponse),
    /// Fail with the error this makes.
    Error(Arc<dyn Fn() -> LlmError + Send + Sync>),
}

/// Replays scripted responses.
#[derive(Default)]
pub struct ScriptedProvider {}

impl ScriptedProvider {
    /// An empty script.
    pub fn new() -> Self {
        Self::default()
    }
    /// Answers requests whose last user message contains `needle`.
    pub fn on_contains(self, _needle: impl Into<String>, _reply: impl Into<ScriptedReply>) -> Self {
        self
    }
    /// Appends a reply to the sequence.
    pub fn then(self, _reply: impl Into<ScriptedReply>) -> Self {
        self
    }
    /// Requests seen so far.
    pub fn calls(&self) -> Vec<ChatRequest> {
        Vec::new()
    }
}

impl From<ChatResponse> for ScriptedReply {
    fn from(r: ChatResponse) -> Self {
        ScriptedReply::Response(r)
    }
}

#[async_trait]
impl LlmProvider for ScriptedProvider {
    fn name(&self) -> &str {
        "scripted"
    }
    fn capabilities(&self) -> ProviderCapabilities {
        ProviderCapabilities::default()
    }
    async fn complete(&self, _request: ChatRequest) -> Result<ChatResponse, LlmError> {
        Err(LlmError::Script("stub".into()))
    }
}
