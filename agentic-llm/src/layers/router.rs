//! [`Router`]: picks providers for a request by rules, and falls back along a chain.
//!
//! - **Chain**: routes are tried in order; a retryable failure (5xx, overload, rate limit,
//!   timeout, dropped connection, open circuit) moves on to the next route, any other error
//!   is returned at once (a malformed request fails everywhere). When every route failed,
//!   the last error is returned, so an outer retry can honour its `retry_after`.
//! - **Privacy**: a request with `metadata.sensitive` only goes to routes whose provider
//!   reports `capabilities().local`; if there is none it fails with
//!   [`LlmError::NoProvider`] and nothing leaves the machine.
//! - **Tiers**: a request with `metadata.tier = "small"` uses the chain registered for that
//!   tier (its own providers and models), and the default chain when the tier is unknown.
//!
//! A route may set the model, which then replaces the request's: model names belong to a
//! vendor, so a chain that mixes vendors should give each route its model.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::stream::first_event;
use crate::{ChatRequest, ChatResponse, EventStream, LlmError, LlmProvider, ProviderCapabilities};

/// One place a request can go: a provider, and optionally the model to ask it for.
#[derive(Clone)]
pub struct Route {
    provider: Arc<dyn LlmProvider>,
    model: Option<String>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("provider", &self.provider.name())
            .field("model", &self.model)
            .finish()
    }
}

impl Route {
    /// A route to `provider` with the request's own model.
    pub fn new(provider: impl LlmProvider + 'static) -> Self {
        Route {
            provider: Arc::new(provider),
            model: None,
        }
    }

    /// A route to a shared provider.
    pub fn shared(provider: Arc<dyn LlmProvider>) -> Self {
        Route {
            provider,
            model: None,
        }
    }

    /// Asks this route's provider for `model`.
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }
}

/// A provider that routes requests over other providers. See the [module docs](self).
///
/// ```
/// use agentic_llm::layers::{Route, Router};
/// use agentic_llm::{ChatRequest, ChatResponse, LlmProvider, ScriptedProvider};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), agentic_llm::LlmError> {
/// let cloud = ScriptedProvider::new().with_name("cloud").respond_with(|_| Ok(ChatResponse::text("cloud")));
/// let local = ScriptedProvider::new().with_name("local").local(true).respond_with(|_| Ok(ChatResponse::text("local")));
/// let router = Router::new().route(Route::new(cloud)).route(Route::new(local));
///
/// assert_eq!(router.complete(ChatRequest::user("hi")).await?.text_content(), "cloud");
/// let private = ChatRequest::user("my medical record").sensitive(true);
/// assert_eq!(router.complete(private).await?.text_content(), "local");
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Router {
    name: String,
    chain: Vec<Route>,
    tiers: HashMap<String, Vec<Route>>,
}

impl Router {
    /// An empty router named `"router"`.
    pub fn new() -> Self {
        Router {
            name: "router".to_owned(),
            ..Router::default()
        }
    }

    /// Sets the router's name.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Appends a route to the default chain.
    pub fn route(mut self, route: Route) -> Self {
        self.chain.push(route);
        self
    }

    /// Appends a route to the chain of `tier`.
    pub fn tier(mut self, tier: impl Into<String>, route: Route) -> Self {
        self.tiers.entry(tier.into()).or_default().push(route);
        self
    }

    /// The routes a request may take, in order, and how many there are (counted first, so
    /// that the last can be given the request itself; no list is built per call).
    fn routes_for<'a>(
        &'a self,
        request: &ChatRequest,
    ) -> Result<(impl Iterator<Item = &'a Route> + use<'a>, usize), LlmError> {
        let chain = request
            .metadata
            .tier
            .as_ref()
            .and_then(|tier| self.tiers.get(tier))
            .unwrap_or(&self.chain);
        let sensitive = request.metadata.sensitive;
        let routes = chain
            .iter()
            .filter(move |r| !sensitive || r.provider.capabilities().local);
        let count = routes.clone().count();
        if count == 0 {
            return Err(LlmError::NoProvider(if request.metadata.sensitive {
                format!(
                    "{}: the request is marked sensitive and no local provider is configured for it",
                    self.name
                )
            } else {
                format!("{}: no route for this request", self.name)
            }));
        }
        Ok((routes, count))
    }

    /// `complete` on each route until one succeeds or fails for good. Routes are lent the
    /// request (`complete_ref`), so a fallback needs no copy; the last route of an owned
    /// request is given it. A route that sets the model gets a copy with that model.
    async fn complete_on_routes(
        &self,
        request: Cow<'_, ChatRequest>,
    ) -> Result<ChatResponse, LlmError> {
        let (routes, count) = self.routes_for(&request)?;
        let mut last = None;
        let mut request = Some(request);
        for (i, route) in routes.enumerate() {
            let provider = route.provider.as_ref();
            let result = match (&route.model, i + 1 == count) {
                (Some(model), is_last) => {
                    let mut attempt = if is_last {
                        request.take()
                    } else {
                        request.clone()
                    }
                    .ok_or_else(|| LlmError::NoProvider(self.name.clone()))?
                    .into_owned();
                    attempt.model = Some(model.clone());
                    provider.complete(attempt).await
                }
                (None, true) => match request.take() {
                    Some(Cow::Owned(r)) => provider.complete(r).await,
                    Some(Cow::Borrowed(r)) => provider.complete_ref(r).await,
                    None => Err(LlmError::NoProvider(self.name.clone())),
                },
                (None, false) => match &request {
                    Some(r) => provider.complete_ref(r).await,
                    None => Err(LlmError::NoProvider(self.name.clone())),
                },
            };
            match result {
                Ok(value) => return Ok(value),
                Err(error) if error.is_retryable() => {
                    tracing::warn!(
                        router = %self.name,
                        provider = provider.name(),
                        %error,
                        "LLM provider failed; falling back to the next route"
                    );
                    last = Some(error);
                }
                Err(error) => return Err(error),
            }
        }
        Err(last.unwrap_or_else(|| LlmError::NoProvider(self.name.clone())))
    }

    /// Tries `call` on each route until one succeeds or fails for good (streams).
    async fn run<'a, T, F, Fut>(&'a self, request: ChatRequest, call: F) -> Result<T, LlmError>
    where
        F: Fn(&'a dyn LlmProvider, ChatRequest) -> Fut + Send + Sync,
        Fut: std::future::Future<Output = Result<T, LlmError>> + Send,
        T: Send,
    {
        let (routes, count) = self.routes_for(&request)?;
        let mut last = None;
        let mut request = Some(request);
        for (i, route) in routes.enumerate() {
            // The last route may have the request itself; the others get a copy, since a
            // fallback needs the original.
            let mut attempt = if i + 1 == count {
                request.take()
            } else {
                request.clone()
            }
            .ok_or_else(|| LlmError::NoProvider(self.name.clone()))?;
            if let Some(model) = &route.model {
                attempt.model = Some(model.clone());
            }
            match call(route.provider.as_ref(), attempt).await {
                Ok(value) => return Ok(value),
                Err(error) if error.is_retryable() => {
                    tracing::warn!(
                        router = %self.name,
                        provider = route.provider.name(),
                        %error,
                        "LLM provider failed; falling back to the next route"
                    );
                    last = Some(error);
                }
                Err(error) => return Err(error),
            }
        }
        Err(last.unwrap_or_else(|| LlmError::NoProvider(self.name.clone())))
    }
}

#[async_trait]
impl LlmProvider for Router {
    fn name(&self) -> &str {
        &self.name
    }

    /// What every route supports (a request may end up on any of them); `local` only when
    /// every route is local.
    fn capabilities(&self) -> ProviderCapabilities {
        let mut routes = self.chain.iter().chain(self.tiers.values().flatten());
        let Some(first) = routes.next() else {
            return ProviderCapabilities::default();
        };
        routes.fold(first.provider.capabilities(), |acc, route| {
            let c = route.provider.capabilities();
            ProviderCapabilities {
                streaming: acc.streaming && c.streaming,
                tools: acc.tools && c.tools,
                structured_output: acc.structured_output && c.structured_output,
                images: acc.images && c.images,
                local: acc.local && c.local,
            }
        })
    }

    async fn complete(&self, request: ChatRequest) -> Result<ChatResponse, LlmError> {
        self.complete_on_routes(Cow::Owned(request)).await
    }

    async fn complete_ref(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
        self.complete_on_routes(Cow::Borrowed(request)).await
    }

    /// Falls back when opening the stream fails or its first item is an error; once an
    /// event reached the caller the stream stays with its provider.
    async fn stream(&self, request: ChatRequest) -> Result<EventStream, LlmError> {
        self.run(request, |provider, r| async move {
            first_event(provider.stream(r).await?).await
        })
        .await
    }
}
