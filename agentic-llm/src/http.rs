//! What the HTTP providers share: the client, the request settings every provider has,
//! turning an error answer into a typed [`LlmError`], and driving a response body through a
//! provider's stream decoder.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

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
    pub(crate) client: reqwest::Client,
    pub(crate) url: String,
    pub(crate) timeout: Duration,
    pub(crate) read_timeout: Duration,
}

impl Endpoint {
    /// Builds the client and the fixed headers. `secret_headers` carry the API key: they are
    /// marked sensitive so that reqwest and hyper never print them.
    pub(crate) fn new(
        provider: &str,
        url: String,
        options: &HttpOptions,
        secret_headers: &[(&str, String)],
        plain_headers: &[(&str, &str)],
    ) -> Result<Self, LlmError> {
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
        let client = reqwest::Client::builder()
            .connect_timeout(options.connect_timeout)
            .read_timeout(options.read_timeout)
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
            read_timeout: options.read_timeout,
        })
    }

    /// POSTs `body`; a non-2xx answer becomes its typed error. `whole_call` bounds the whole
    /// exchange (for non-streamed calls); streams rely on the read timeout instead.
    pub(crate) async fn post(
        &self,
        body: Vec<u8>,
        whole_call: bool,
    ) -> Result<reqwest::Response, LlmError> {
        let mut request = self.client.post(&self.url).body(body);
        if whole_call {
            request = request.timeout(self.timeout);
        }
        let response = request
            .send()
            .await
            .map_err(|e| self.transport_error(e, whole_call))?;
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

    /// POSTs `body`, reads the whole answer and parses it with `parse` (on reqwest's buffer,
    /// without a copy).
    pub(crate) async fn post_and_parse<T>(
        &self,
        body: Vec<u8>,
        parse: impl FnOnce(&[u8]) -> Result<T, LlmError>,
    ) -> Result<T, LlmError> {
        let response = self.post(body, true).await?;
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(e, true))?;
        parse(&bytes)
    }

    /// A transport failure as a typed error, without the URL (it could carry a key in a
    /// query string on some gateways) and with the causes that reqwest keeps as sources.
    pub(crate) fn transport_error(&self, error: reqwest::Error, whole_call: bool) -> LlmError {
        if error.is_timeout() {
            return LlmError::Timeout(if whole_call {
                self.timeout
            } else {
                self.read_timeout
            });
        }
        let error = error.without_url();
        let mut message = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        LlmError::Connection {
            provider: self.provider.clone(),
            message,
        }
    }
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

/// A provider's incremental stream decoder: bytes in, events out.
pub(crate) trait Decode: Send + 'static {
    /// Feeds bytes; events decoded before an error are still appended to `out`.
    fn push(&mut self, chunk: &[u8], out: &mut Vec<StreamEvent>) -> Result<(), LlmError>;
    /// The body ended: flushes, and fails when the terminal event never came.
    fn finish(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), LlmError>;
    /// The terminal event was decoded: the rest of the body is not needed.
    fn is_done(&self) -> bool;
}

struct BodyState<D, S> {
    body: std::pin::Pin<Box<S>>,
    decoder: D,
    pending: VecDeque<StreamEvent>,
    error: Option<LlmError>,
    finished: bool,
    provider: String,
    read_timeout: Duration,
}

/// Drives the response body through `decoder`, yielding events as they are decoded and
/// stopping after the terminal event or the first error.
pub(crate) fn event_stream<D: Decode>(
    endpoint: &Endpoint,
    response: reqwest::Response,
    decoder: D,
) -> EventStream {
    drive(
        Box::pin(response.bytes_stream()),
        decoder,
        endpoint.provider.clone(),
        endpoint.read_timeout,
    )
}

fn drive<D, S, B>(
    body: std::pin::Pin<Box<S>>,
    decoder: D,
    provider: String,
    read_timeout: Duration,
) -> EventStream
where
    D: Decode,
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
            match state.body.next().await {
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
                    state.error = Some(if error.is_timeout() {
                        LlmError::Timeout(state.read_timeout)
                    } else {
                        crate::stream::ended_early(
                            &state.provider,
                            &format!("the connection failed: {}", error.without_url()),
                        )
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
