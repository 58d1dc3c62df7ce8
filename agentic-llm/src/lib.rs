//! One provider-neutral chat model behind one trait, [`LlmProvider`].
//!
//! Messages are made of content blocks (text, images, tool calls, tool results); requests
//! carry tools with JSON Schema, a tool choice and an optional structured-output schema;
//! answers carry a stop reason and token [`Usage`]. Streaming yields provider-neutral
//! [`StreamEvent`]s that [`StreamAccumulator`] reassembles. HTTP providers (Anthropic,
//! OpenAI-compatible, Ollama) come behind features; [`ScriptedProvider`] replays a script
//! for tests, examples and offline development.
//!
//! ```
//! use agentic_llm::{ChatRequest, ChatResponse, LlmProvider, ScriptedProvider};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), agentic_llm::LlmError> {
//! let llm = ScriptedProvider::new()
//!     .on_contains("capital of France", ChatResponse::text("Paris"))
//!     .then(ChatResponse::text("I don't know"));
//! let answer = llm.complete(ChatRequest::user("What is the capital of France?")).await?;
//! assert_eq!(answer.text_content(), "Paris");
//! assert_eq!(llm.calls().len(), 1);
//! # Ok(())
//! # }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;

mod error;
mod scripted;
pub mod stream;
mod types;

pub use error::LlmError;
pub use scripted::{ScriptedProvider, ScriptedReply};
pub use stream::{BlockStart, StreamAccumulator, StreamEvent};
pub use types::*;

/// A stream of events of one answer.
pub type EventStream = BoxStream<'static, Result<StreamEvent, LlmError>>;

/// A chat model. Dyn-compatible: hold it as `Arc<dyn LlmProvider>`.
///
/// Layers (retry, circuit breaker, rate limit, cache, cost, routing) wrap a provider and
/// are providers themselves.
#[async_trait]
pub trait LlmProvider: Send + Sync {
    /// A short name for logs, errors and routing (`"anthropic"`, `"scripted"`, ...).
    fn name(&self) -> &str;

    /// What the provider supports.
    fn capabilities(&self) -> ProviderCapabilities;

    /// Sends the request and waits for the whole answer.
    async fn complete(&self, request: ChatRequest) -> Result<ChatResponse, LlmError>;

    /// Sends the request and streams the answer. The default calls [`LlmProvider::complete`]
    /// and replays the answer as events.
    async fn stream(&self, request: ChatRequest) -> Result<EventStream, LlmError> {
        let response = self.complete(request).await?;
        Ok(futures::stream::iter(stream::events_for(&response).into_iter().map(Ok)).boxed())
    }
}

/// Collects a stream into the complete answer.
pub async fn collect_stream(mut events: EventStream) -> Result<ChatResponse, LlmError> {
    let mut acc = StreamAccumulator::new();
    while let Some(event) = events.next().await {
        acc.push(&event?)?;
    }
    acc.finish()
}

macro_rules! forward_llm {
    ($($ty:ty),*) => {$(
        #[async_trait]
        impl<T: LlmProvider + ?Sized> LlmProvider for $ty {
            fn name(&self) -> &str {
                (**self).name()
            }
            fn capabilities(&self) -> ProviderCapabilities {
                (**self).capabilities()
            }
            async fn complete(&self, request: ChatRequest) -> Result<ChatResponse, LlmError> {
                (**self).complete(request).await
            }
            async fn stream(&self, request: ChatRequest) -> Result<EventStream, LlmError> {
                (**self).stream(request).await
            }
        }
    )*};
}

forward_llm!(Arc<T>, Box<T>);
