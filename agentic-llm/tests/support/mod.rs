//! What the wire tests share: finding the recorded fixtures, and a local HTTP server that
//! replays them byte for byte and records what the client sent.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentic_llm::{
    ChatRequest, ChatResponse, LlmError, LlmProvider, StreamAccumulator, StreamEvent,
    collect_stream,
};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;

/// The fixture directory: `AGENTIC_LLM_FIXTURES`, else `../shared/fixtures/llm-wire` next to
/// the workspace; `None` (after printing the skip) when neither exists.
pub fn fixtures() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("AGENTIC_LLM_FIXTURES")
        && !dir.trim().is_empty()
    {
        let dir = PathBuf::from(dir.trim());
        // Set but wrong is a broken CI, not a reason to skip.
        assert!(
            dir.is_dir(),
            "AGENTIC_LLM_FIXTURES={} is not a directory",
            dir.display()
        );
        return Some(dir);
    }
    let fallback = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/fixtures/llm-wire"
    ));
    if fallback.is_dir() {
        return Some(fallback.to_path_buf());
    }
    println!(
        "SKIP llm fixtures: AGENTIC_LLM_FIXTURES not set and ../shared/fixtures/llm-wire absent"
    );
    None
}

/// The files of `fixtures/<provider>`, sorted, so a test can insist that it checked each.
pub fn fixture_files(root: &Path, provider: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root.join(provider))
        .unwrap_or_else(|e| panic!("{}/{provider}: {e}", root.display()))
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// The bytes of `fixtures/<provider>/<name>`.
pub fn fixture(root: &Path, provider: &str, name: &str) -> Vec<u8> {
    std::fs::read(root.join(provider).join(name))
        .unwrap_or_else(|e| panic!("{provider}/{name}: {e}"))
}

/// A fixture parsed as JSON.
pub fn fixture_json(root: &Path, provider: &str, name: &str) -> Value {
    serde_json::from_slice(&fixture(root, provider, name))
        .unwrap_or_else(|e| panic!("{provider}/{name}: {e}"))
}

/// One block of a `headers.txt` file.
#[derive(Debug, Default, Clone)]
pub struct HeaderBlock {
    /// The `[A]`, `[B]`, ... tag of its provenance comment.
    pub tag: String,
    pub status: Option<u16>,
    /// `(name, value)` in file order.
    pub headers: Vec<(String, String)>,
}

impl HeaderBlock {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn pairs(&self) -> Vec<(&str, &str)> {
        self.headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect()
    }
}

/// Parses a fixtures `headers.txt`: blocks separated by blank lines, each with a `# [X]`
/// provenance comment, an optional `HTTP/1.1 <status>` line and `Name: value` lines.
pub fn header_blocks(text: &str) -> BTreeMap<String, HeaderBlock> {
    let mut blocks = BTreeMap::new();
    let mut current = HeaderBlock::default();
    let mut flush = |block: &mut HeaderBlock| {
        if !block.tag.is_empty() {
            blocks.insert(block.tag.clone(), std::mem::take(block));
        }
        *block = HeaderBlock::default();
    };
    for line in text.lines() {
        if line.trim().is_empty() {
            flush(&mut current);
        } else if let Some(comment) = line.strip_prefix('#') {
            let comment = comment.trim();
            if comment.starts_with('[') && current.tag.is_empty() {
                current.tag = comment[..=comment.find(']').unwrap()].to_owned();
            }
        } else if let Some(status) = line.strip_prefix("HTTP/1.1 ") {
            current.status = Some(status.split(' ').next().unwrap().parse().unwrap());
        } else if let Some((name, value)) = line.split_once(": ") {
            current.headers.push((name.to_owned(), value.to_owned()));
        } else {
            panic!("unexpected header line {line:?}");
        }
    }
    flush(&mut current);
    blocks
}

/// What the server answers to one request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Body pieces, each sent as its own chunk (one piece: the whole body in one write).
    pub chunks: Vec<Vec<u8>>,
    /// Pause between pieces, so that they reach the client as separate reads.
    pub pause: Option<Duration>,
    /// Abort the connection after the pieces instead of ending the body cleanly.
    pub abort: bool,
    /// Wait this long before sending the head (a model still generating).
    pub delay: Option<Duration>,
}

impl Reply {
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Reply {
            status,
            headers: vec![("content-type".into(), content_type.into())],
            chunks: vec![body.into()],
            pause: None,
            abort: false,
            delay: None,
        }
    }

    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Reply::new(status, "application/json", body)
    }

    pub fn sse(body: impl Into<Vec<u8>>) -> Self {
        Reply::new(200, "text/event-stream", body)
    }

    pub fn ndjson(body: impl Into<Vec<u8>>) -> Self {
        Reply::new(200, "application/x-ndjson", body)
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The body cut into pieces at `cuts` (byte offsets).
    pub fn split_at(mut self, cuts: &[usize]) -> Self {
        let body: Vec<u8> = self.chunks.concat();
        let mut pieces = Vec::new();
        let mut start = 0;
        for &cut in cuts {
            let cut = cut.clamp(start, body.len());
            pieces.push(body[start..cut].to_vec());
            start = cut;
        }
        pieces.push(body[start..].to_vec());
        self.chunks = pieces.into_iter().filter(|p| !p.is_empty()).collect();
        self.pause = Some(Duration::from_millis(2));
        self
    }

    pub fn aborted(mut self) -> Self {
        self.abort = true;
        self
    }

    /// The head (and everything after it) sent only after `delay`.
    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }
}

/// A request the server received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// Header names lower-cased.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

#[derive(Default)]
struct State {
    replies: VecDeque<Reply>,
    /// Answer with this once the queue is empty.
    repeat: Option<Reply>,
    received: Vec<Received>,
}

/// A local HTTP/1.1 server on 127.0.0.1 that answers with scripted replies in order.
#[derive(Clone)]
pub struct Server {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl Server {
    pub async fn start(replies: Vec<Reply>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            replies: replies.into(),
            ..State::default()
        }));
        let shared = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = service_fn(move |request| handle(Arc::clone(&state), request));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Server { addr, state }
    }

    /// A server that gives the same reply to every request.
    pub async fn always(reply: Reply) -> Server {
        let server = Server::start(Vec::new()).await;
        server.state.lock().unwrap().repeat = Some(reply);
        server
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    pub fn count(&self) -> usize {
        self.state.lock().unwrap().received.len()
    }

    pub fn push(&self, reply: Reply) {
        self.state.lock().unwrap().replies.push_back(reply);
    }
}

type Body = BoxBody<Bytes, std::io::Error>;

async fn handle(
    state: Arc<Mutex<State>>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let headers = request
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let reply = {
        let mut state = state.lock().unwrap();
        state.received.push(Received {
            method,
            path,
            headers,
            body,
        });
        state.replies.pop_front().or_else(|| state.repeat.clone())
    };
    let Some(reply) = reply else {
        let body = Full::new(Bytes::from_static(b"{\"error\":\"no scripted reply\"}"))
            .map_err(|never| match never {})
            .boxed();
        return Ok(Response::builder().status(599).body(body).unwrap());
    };
    if let Some(delay) = reply.delay {
        tokio::time::sleep(delay).await;
    }
    let mut builder = Response::builder().status(StatusCode::from_u16(reply.status).unwrap());
    for (name, value) in &reply.headers {
        builder = builder.header(name, value);
    }
    let pause = reply.pause;
    let abort = reply.abort;
    let chunks = reply.chunks;
    let frames = futures::stream::unfold(
        (chunks.into_iter(), true, abort),
        move |(mut chunks, first, abort)| async move {
            match chunks.next() {
                Some(chunk) => {
                    if let (Some(pause), false) = (pause, first) {
                        tokio::time::sleep(pause).await;
                    }
                    Some((Ok(Frame::data(Bytes::from(chunk))), (chunks, false, abort)))
                }
                None if abort => {
                    // Let the head and the data reach the client before breaking off.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Some((
                        Err(std::io::Error::other("aborted by the test server")),
                        (chunks, false, false),
                    ))
                }
                None => None,
            }
        },
    );
    Ok(builder
        .body(BodyExt::boxed(StreamBody::new(frames)))
        .unwrap())
}

/// Removes `key` from a JSON object and returns it.
pub fn take(value: &mut Value, key: &str) -> Option<Value> {
    value.as_object_mut().and_then(|m| m.remove(key))
}

// ---- what the three wire tests do alike ------------------------------------------------------

/// Checks the fixture directory of `provider` against `checked` (file, test that asserts it):
/// every file is listed (a new recording fails until a test asserts it), every listed file
/// exists, and `parses` accepts each file's bytes as what its name says it is.
pub fn check_fixture_list(
    root: &Path,
    provider: &str,
    checked: &[(&str, &str)],
    mut parses: impl FnMut(&str, &[u8]),
) {
    let files = fixture_files(root, provider);
    for name in &files {
        assert!(
            checked.iter().any(|(file, _)| file == name),
            "fixtures/{provider}/{name} is new: add a test with assertions for it to CHECKED"
        );
        parses(name, &fixture(root, provider, name));
    }
    for (file, test) in checked {
        assert!(
            files.iter().any(|f| f == file),
            "{file} (checked by {test}) is gone"
        );
    }
}

/// Feeds `body` to a stream decoder in pieces cut at `cuts` (byte offsets): `step` pushes
/// `Some(piece)` and finishes on `None`. The events, or the first error.
pub fn decode_pieces(
    body: &[u8],
    cuts: &[usize],
    mut step: impl FnMut(Option<&[u8]>, &mut Vec<StreamEvent>) -> Result<(), LlmError>,
) -> Result<Vec<StreamEvent>, LlmError> {
    let mut events = Vec::new();
    let mut start = 0;
    for &cut in cuts {
        let cut = cut.clamp(start, body.len());
        step(Some(&body[start..cut]), &mut events)?;
        start = cut;
    }
    step(Some(&body[start..]), &mut events)?;
    step(None, &mut events)?;
    Ok(events)
}

/// The answer `events` make, which must be complete.
pub fn assemble(events: &[StreamEvent]) -> ChatResponse {
    let mut acc = StreamAccumulator::new();
    for event in events {
        acc.push(event).unwrap();
    }
    assert!(acc.is_complete());
    acc.finish().unwrap()
}

/// Serves `replies` and sends `request` once through the provider `connect` makes for the
/// server: the server (to see what was sent) and the answer.
pub async fn complete_with<P: LlmProvider>(
    replies: Vec<Reply>,
    connect: impl FnOnce(&Server) -> P,
    request: ChatRequest,
) -> (Server, Result<ChatResponse, LlmError>) {
    let server = Server::start(replies).await;
    let answer = connect(&server).complete(request).await;
    (server, answer)
}

/// Like [`complete_with`], streamed and collected; opening the stream must succeed.
pub async fn stream_with<P: LlmProvider>(
    replies: Vec<Reply>,
    connect: impl FnOnce(&Server) -> P,
    request: ChatRequest,
) -> (Server, Result<ChatResponse, LlmError>) {
    let server = Server::start(replies).await;
    let events = connect(&server).stream(request).await.unwrap();
    (server, collect_stream(events).await)
}

/// Every item of the stream `provider` opens for `request` (which must open).
pub async fn stream_items(
    provider: &impl LlmProvider,
    request: ChatRequest,
) -> Vec<Result<StreamEvent, LlmError>> {
    provider.stream(request).await.unwrap().collect().await
}

/// A stream that stopped before its terminal event: a retryable "stream ended early".
pub fn assert_ended_early(error: &LlmError) {
    assert!(
        matches!(error, LlmError::Connection { message, .. } if message.contains("stream ended early")),
        "{error:?}"
    );
    assert!(error.is_retryable());
}

/// Input and output tokens of `answer`.
pub fn tokens(answer: &ChatResponse) -> (u64, u64) {
    (answer.usage.input_tokens, answer.usage.output_tokens)
}

/// [`complete_with`] a recorded 200 answer, `fixtures/<dir>/<name>`, which must parse.
pub async fn complete_fixture<P: LlmProvider>(
    root: &Path,
    dir: &str,
    name: &str,
    connect: impl FnOnce(&Server) -> P,
    request: ChatRequest,
) -> (Server, ChatResponse) {
    let reply = Reply::json(200, fixture(root, dir, name));
    let (server, answer) = complete_with(vec![reply], connect, request).await;
    (server, answer.unwrap())
}
