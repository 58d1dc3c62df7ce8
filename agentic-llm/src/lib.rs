//! One provider-neutral chat model behind one trait, [`LlmProvider`], with real providers,
//! tool calling, and the layers that make LLM calls dependable.
//!
//! Messages are made of content blocks (text, images, tool calls, tool results, thinking);
//! requests carry tools with JSON Schema, a tool choice and an optional structured-output
//! schema; answers carry a stop reason, token [`Usage`] and, once priced, a [`Cost`].
//! Streaming yields provider-neutral [`StreamEvent`]s that [`StreamAccumulator`] reassembles.
//! [`ScriptedProvider`] replays a script for tests, examples and offline development.
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
//!
//! # Features
//!
//! | Feature     | Adds                                                                      |
//! |-------------|---------------------------------------------------------------------------|
//! | (always)    | the model, [`ScriptedProvider`], [`tool`] calling, every [`layers`] layer, the [`sse`] and [`ndjson`] parsers |
//! | `anthropic` | [`anthropic::AnthropicProvider`]: Messages API, SSE streaming             |
//! | `openai`    | [`openai::OpenAiProvider`]: Chat Completions, for OpenAI and every compatible server (vLLM, llama.cpp, LM Studio, Ollama `/v1`) |
//! | `ollama`    | [`ollama::OllamaProvider`]: Ollama's native `/api/chat`, NDJSON streaming |
//!
//! The HTTP providers use `reqwest` with rustls (no OpenSSL). A default build has no HTTP
//! client at all.
//!
//! # Guarantees
//!
//! - **Typed errors.** Every failure is one [`LlmError`]; [`LlmError::is_retryable`] and
//!   [`LlmError::retry_after`] tell policies what to do. The provider's own error message is
//!   kept verbatim.
//! - **No silent truncation.** A stream that ends before its terminal event (`message_stop`,
//!   `[DONE]`, `done: true`) is a retryable "stream ended early" error, from the provider
//!   and again from [`collect_stream`].
//! - **Keys stay secret.** API keys are [`ApiKey`]s: `Debug` shows `<redacted>`, they are
//!   sent as sensitive headers, and errors never quote them.
//! - **Deterministic time.** Every layer uses the tokio clock, so `tokio::time::pause` makes
//!   retry, breaker, limiter, timeout and cache tests exact.

#![cfg_attr(docsrs, feature(doc_cfg))]

use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;

#[cfg(feature = "anthropic")]
#[cfg_attr(docsrs, doc(cfg(feature = "anthropic")))]
pub mod anthropic;
#[cfg(any(feature = "anthropic", feature = "openai", feature = "ollama"))]
mod decode;
mod error;
#[cfg(any(feature = "anthropic", feature = "openai", feature = "ollama"))]
mod http;
pub mod layers;
pub mod ndjson;
#[cfg(feature = "ollama")]
#[cfg_attr(docsrs, doc(cfg(feature = "ollama")))]
pub mod ollama;
#[cfg(feature = "openai")]
#[cfg_attr(docsrs, doc(cfg(feature = "openai")))]
pub mod openai;
pub mod retry_hint;
mod scripted;
mod secret;
pub mod sse;
pub mod stream;
pub mod tool;
mod types;

pub use error::{ErrorBody, LlmError};
#[cfg(any(feature = "anthropic", feature = "openai", feature = "ollama"))]
#[cfg_attr(
    docsrs,
    doc(cfg(any(feature = "anthropic", feature = "openai", feature = "ollama")))
)]
pub use http::HttpOptions;
pub use schemars;
pub use scripted::{ScriptedProvider, ScriptedReply};
pub use secret::ApiKey;
pub use stream::{BlockStart, StreamAccumulator, StreamEvent};
pub use tool::{Tool, ToolError, ToolSet, run_with_tools};
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

    /// [`LlmProvider::complete`] of a borrowed request. The default clones the request and
    /// calls `complete`.
    ///
    /// Layers that may need the request again after the call ([`layers::Retry`]) call this,
    /// so that a provider that only reads the request (every HTTP provider: it serializes
    /// it) and the layers between pass it down without a copy per call. Override it when
    /// the request is only read; a layer overrides it by calling its inner provider's
    /// `complete_ref`.
    async fn complete_ref(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
        self.complete(request.clone()).await
    }

    /// Sends the request and streams the answer. The default calls [`LlmProvider::complete`]
    /// and replays the answer as events.
    async fn stream(&self, request: ChatRequest) -> Result<EventStream, LlmError> {
        let response = self.complete(request).await?;
        Ok(futures::stream::iter(stream::events_for(&response).into_iter().map(Ok)).boxed())
    }
}

/// Collects a stream into the complete answer.
///
/// A stream that ends without [`StreamEvent::MessageStop`] is an error (a retryable
/// [`LlmError::Connection`] "stream ended early"), never a silently truncated answer.
pub async fn collect_stream(events: EventStream) -> Result<ChatResponse, LlmError> {
    collect_stream_with(events, |_| {}).await
}

/// Like [`collect_stream`], and calls `on_event` with every event as it arrives (to show
/// text while it is generated).
pub async fn collect_stream_with(
    mut events: EventStream,
    mut on_event: impl FnMut(&StreamEvent) + Send,
) -> Result<ChatResponse, LlmError> {
    let mut acc = StreamAccumulator::new();
    while let Some(event) = events.next().await {
        let event = event?;
        on_event(&event);
        acc.push(&event)?;
        if acc.is_complete() {
            break;
        }
    }
    if !acc.is_complete() {
        return Err(stream::ended_early("stream", "no message_stop"));
    }
    acc.finish()
}

/// The boxed future an `#[async_trait]` method returns.
type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

// Written out rather than with `#[async_trait]`: that would wrap the inner provider's boxed
// future in a second box (one more allocation and one more indirection per call, for every
// provider held as `Arc<dyn LlmProvider>` or `Box<dyn LlmProvider>`); these hand it back as is.
macro_rules! forward_llm {
    ($($ty:ty),*) => {$(
        impl<T: LlmProvider + ?Sized> LlmProvider for $ty {
            fn name(&self) -> &str {
                (**self).name()
            }
            fn capabilities(&self) -> ProviderCapabilities {
                (**self).capabilities()
            }
            fn complete<'life0, 'async_trait>(
                &'life0 self,
                request: ChatRequest,
            ) -> BoxFuture<'async_trait, Result<ChatResponse, LlmError>>
            where
                'life0: 'async_trait,
                Self: 'async_trait,
            {
                (**self).complete(request)
            }
            fn complete_ref<'life0, 'life1, 'async_trait>(
                &'life0 self,
                request: &'life1 ChatRequest,
            ) -> BoxFuture<'async_trait, Result<ChatResponse, LlmError>>
            where
                'life0: 'async_trait,
                'life1: 'async_trait,
                Self: 'async_trait,
            {
                (**self).complete_ref(request)
            }
            fn stream<'life0, 'async_trait>(
                &'life0 self,
                request: ChatRequest,
            ) -> BoxFuture<'async_trait, Result<EventStream, LlmError>>
            where
                'life0: 'async_trait,
                Self: 'async_trait,
            {
                (**self).stream(request)
            }
        }
    )*};
}

forward_llm!(Arc<T>, Box<T>);
