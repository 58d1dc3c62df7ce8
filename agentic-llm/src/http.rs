//! What the HTTP providers share: the client, the request settings every provider has,
//! turning an error answer into a typed [`LlmError`], and driving a response body through a
//! provider's stream decoder.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::decode::{FrameDecoder, Wire};
use crate::error::ErrorBody;
use crate::stream::StreamEvent;
use crate::{EventStream, LlmError, retry_hint};

/// Connection settings every HTTP provider has.
#[derive(Clone)]
pub struct HttpOptions {
    /// Longest wait for a complete non-streamed answer (default 10 minutes: long answers
    /// from large models take minutes).
    pub timeout: Duration,
    /// Longest wait for the TCP and TLS handshake (default 10 s).
    pub connect_timeout: Duration,
    /// Longest silence between two reads of a response body (default 120 s). This is what
    /// bounds a stream: streams have no total timeout, since a long answer is not a fault.
    pub read_timeout: Duration,
    /// Headers added to every request (a proxy's auth, an organization id, a beta flag).
    /// Their values are never shown by `Debug`: they may be credentials too.
    pub extra_headers: Vec<(String, String)>,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            timeout: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(120),
            extra_headers: Vec::new(),
        }
    }
}

impl fmt::Debug for HttpOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.extra_headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("HttpOptions")
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("extra_headers", &names)
            .finish()
    }
}

/// A provider's HTTP side: a client, the endpoint, and the headers of every request.
pub(crate) struct Endpoint {
    pub(crate) provider: String,
    client: reqwest::Client,
    /// Parsed once: reqwest would parse a string URL again on every call.
    url: reqwest::Url,
    timeout: Duration,
    connect_timeout: Duration,
    read_timeout: Duration,
}

impl Endpoint {
    /// Builds the client and the fixed headers. `secret_headers` carry the API key: they are
    /// marked sensitive so that reqwest and hyper never print them.
    pub(crate) fn new(
        provider: &str,
        url: &str,
        options: &HttpOptions,
        secret_headers: &[(&str, String)],
        plain_headers: &[(&str, &str)],
    ) -> Result<Self, LlmError> {
        // The URL is not quoted in the error: a gateway's URL may carry a key.
        let url = reqwest::Url::parse(url)
            .map_err(|e| LlmError::Config(format!("{provider}: invalid base URL: {e}")))?;
        let mut headers = HeaderMap::new();
        headers.insert(
            reqwest::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        for (name, value) in plain_headers {
            insert(&mut headers, provider, name, value, false)?;
        }
        for (name, value) in &options.extra_headers {
            insert(&mut headers, provider, name, value, true)?;
        }
        for (name, value) in secret_headers {
            insert(&mut headers, provider, name, value, true)?;
        }
        // The fixed headers are the client's defaults rather than copied into every request.
        // No `timeout` or `read_timeout` on the client: a client-wide read timeout also
        // bounds the wait for the response head, which would cut a non-streamed answer that
        // takes longer than it to generate (the head only comes when the answer is done),
        // and it costs two timers per call. The calls set their own bound instead.
        let client = reqwest::Client::builder()
            .connect_timeout(options.connect_timeout)
            .user_agent(concat!("agentic-llm/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers)
            .build()
            .map_err(|e| {
                LlmError::Config(format!("{provider}: cannot build the HTTP client: {e}"))
            })?;
        Ok(Endpoint {
            provider: provider.to_owned(),
            client,
            url,
            timeout: options.timeout,
            connect_timeout: options.connect_timeout,
            read_timeout: options.read_timeout,
        })
    }

    /// The endpoint's URL.
    pub(crate) fn url(&self) -> &str {
        self.url.as_str()
    }

    /// POSTs `body`; a non-2xx answer becomes its typed error (its body read whole).
    async fn post(&self, body: Vec<u8>) -> Result<reqwest::Response, LlmError> {
        let response = self
            .client
            .post(self.url.clone())
            .body(body)
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = retry_hint::retry_after(
            response
                .headers()
                .iter()
                .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?))),
            SystemTime::now(),
        );
        let body = response.bytes().await.unwrap_or_default();
        let body = ErrorBody::parse(&body);
        Err(LlmError::from_http(
            &self.provider,
            status.as_u16(),
            &body,
            retry_after,
        ))
    }

    /// A non-streamed call: POSTs `body`, reads the whole answer within the call's
    /// `timeout`, and parses it with `parse` (on reqwest's buffer, without a copy).
    pub(crate) async fn complete<T>(
        &self,
        body: Vec<u8>,
        parse: impl FnOnce(&[u8]) -> Result<T, LlmError>,
    ) -> Result<T, LlmError> {
        let exchange = async {
            let response = self.post(body).await?;
            response.bytes().await.map_err(|e| self.transport_error(e))
        };
        let bytes = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| LlmError::Timeout(self.timeout))??;
        parse(&bytes)
    }

    /// A streamed call: POSTs `body`, waits at most `read_timeout` for the response head,
    /// and drives the body through `decoder`, each read again bounded by `read_timeout`.
    pub(crate) async fn stream<W: Wire>(
        &self,
        body: Vec<u8>,
        decoder: FrameDecoder<W>,
    ) -> Result<EventStream, LlmError> {
        let response = tokio::time::timeout(self.read_timeout, self.post(body))
            .await
            .map_err(|_| LlmError::Timeout(self.read_timeout))??;
        Ok(drive(
            Box::pin(response.bytes_stream()),
            decoder,
            self.provider.clone(),
            self.read_timeout,
        ))
    }

    /// A transport failure as a typed error, without the URL (it could carry a key in a
    /// query string on some gateways). reqwest's error, with its chain of causes, is kept as
    /// the source.
    fn transport_error(&self, error: reqwest::Error) -> LlmError {
        // The client's only timeout is the connect timeout; the calls' own are tokio's.
        if error.is_timeout() {
            return LlmError::Timeout(self.connect_timeout);
        }
        let error = error.without_url();
        LlmError::Connection {
            provider: self.provider.clone(),
            message: error.to_string(),
            source: Some(Box::new(error)),
        }
    }
}

/// `LlmProvider` for an OpenAI-shaped provider type of the calling module: one with an
/// `endpoint: Endpoint`, a `local: bool`, a `to_wire(&request, stream)` method, and a
/// module-level `parse_response(bytes, provider)` and `StreamDecoder` (OpenAI, Ollama;
/// Anthropic differs by its emulated structured output).
#[cfg(any(feature = "openai", feature = "ollama"))]
macro_rules! http_provider {
    ($provider:ty) => {
        impl $provider {
            /// A non-streamed call: the request is only read (serialized), so it is borrowed
            /// (`complete_ref`; `Retry` need not copy it).
            async fn call(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
                let body = crate::http::encode(&self.to_wire(request, false)?)?;
                let provider = &self.endpoint.provider;
                self.endpoint
                    .complete(body, |bytes| parse_response(bytes, provider))
                    .await
            }
        }

        #[async_trait]
        impl LlmProvider for $provider {
            fn name(&self) -> &str {
                &self.endpoint.provider
            }

            fn capabilities(&self) -> ProviderCapabilities {
                ProviderCapabilities {
                    local: self.local,
                    ..ProviderCapabilities::all_remote()
                }
            }

            async fn complete(&self, request: ChatRequest) -> Result<ChatResponse, LlmError> {
                self.call(&request).await
            }

            async fn complete_ref(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
                self.call(request).await
            }

            async fn stream(&self, request: ChatRequest) -> Result<EventStream, LlmError> {
                let body = crate::http::encode(&self.to_wire(&request, true)?)?;
                self.endpoint
                    .stream(body, StreamDecoder::new(&self.endpoint.provider).0)
                    .await
            }
        }
    };
}
#[cfg(any(feature = "openai", feature = "ollama"))]
pub(crate) use http_provider;

/// Encodes a provider's wire request as the JSON bytes it sends.
pub(crate) fn encode(wire: &impl serde::Serialize) -> Result<Vec<u8>, LlmError> {
    serde_json::to_vec(wire).map_err(|e| LlmError::Other(format!("encode: {e}")))
}

/// A provider's wire request as a JSON value (`request_body`, for tests and tools).
pub(crate) fn encode_value(wire: &impl serde::Serialize) -> Result<serde_json::Value, LlmError> {
    serde_json::to_value(wire).map_err(|e| LlmError::Other(format!("encode: {e}")))
}

fn insert(
    headers: &mut HeaderMap,
    provider: &str,
    name: &str,
    value: &str,
    sensitive: bool,
) -> Result<(), LlmError> {
    let header_name = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| LlmError::Config(format!("{provider}: invalid header name {name:?}")))?;
    // The value is not quoted in the error: it may be a key.
    let mut header_value = HeaderValue::from_str(value)
        .map_err(|_| LlmError::Config(format!("{provider}: invalid value for header {name}")))?;
    header_value.set_sensitive(sensitive);
    headers.insert(header_name, header_value);
    Ok(())
}

struct BodyState<W: Wire, S> {
    body: std::pin::Pin<Box<S>>,
    decoder: FrameDecoder<W>,
    pending: VecDeque<StreamEvent>,
    error: Option<LlmError>,
    finished: bool,
    provider: String,
    read_timeout: Duration,
}

/// Drives a response body through `decoder`, yielding events as they are decoded and
/// stopping after the terminal event or the first error. Each read waits at most
/// `read_timeout`.
fn drive<W, S, B>(
    body: std::pin::Pin<Box<S>>,
    decoder: FrameDecoder<W>,
    provider: String,
    read_timeout: Duration,
) -> EventStream
where
    W: Wire,
    S: futures::Stream<Item = Result<B, reqwest::Error>> + Send + 'static,
    B: AsRef<[u8]>,
{
    let state = BodyState {
        body,
        decoder,
        pending: VecDeque::new(),
        error: None,
        finished: false,
        provider,
        read_timeout,
    };
    futures::stream::unfold(state, |mut state| async move {
        let mut decoded = Vec::new();
        loop {
            if let Some(event) = state.pending.pop_front() {
                return Some((Ok(event), state));
            }
            if let Some(error) = state.error.take() {
                return Some((Err(error), state));
            }
            if state.finished {
                return None;
            }
            let Ok(next) = tokio::time::timeout(state.read_timeout, state.body.next()).await else {
                state.finished = true;
                state.error = Some(LlmError::Timeout(state.read_timeout));
                continue;
            };
            match next {
                Some(Ok(chunk)) => {
                    let result = state.decoder.push(chunk.as_ref(), &mut decoded);
                    state.pending.extend(decoded.drain(..));
                    if let Err(error) = result {
                        state.error = Some(error);
                        state.finished = true;
                    } else if state.decoder.is_done() {
                        state.finished = true;
                    }
                }
                Some(Err(error)) => {
                    state.finished = true;
                    let error = error.without_url();
                    state.error = Some(LlmError::Connection {
                        provider: state.provider.clone(),
                        message: "stream ended early: the connection failed".to_owned(),
                        source: Some(Box::new(error)),
                    });
                }
                None => {
                    state.finished = true;
                    let result = state.decoder.finish(&mut decoded);
                    state.pending.extend(decoded.drain(..));
                    state.error = result.err();
                }
            }
        }
    })
    .boxed()
}
