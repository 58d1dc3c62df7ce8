//! LLM layer overhead and SSE parsing throughput.
//!
//! ```sh
//! cargo bench -p agentic-benches --bench llm
//! ```
//!
//! 1. **Layer overhead.** One non-streamed Anthropic call per iteration against a local
//!    HTTP/1.1 server that answers a recorded Messages API response, through the full layer
//!    stack (response cache, always a miss; cost meter with a budget; router; retry; circuit
//!    breaker; rate limiter), versus a bare `reqwest` POST of the same body in the same run.
//!    Target: at most 10 % more time per call. Before criterion runs, an interleaved
//!    measurement (bare and stacked calls alternating, so that drift on a shared machine
//!    hits both alike) prints the medians and the overhead.
//! 2. **SSE parsing.** Bytes per second through `SseParser` alone (framing) and through the
//!    Anthropic stream decoder (framing and JSON), fed in 4 KiB chunks. Target: 200 MB/s for
//!    the parser.
//!
//! Environment:
//!
//! - `AGENTIC_BENCH_LLM_PROFILE=<n>`: run the no-I/O layer stack `n` times and exit, nothing
//!   else (no server calls, no criterion); for `valgrind --tool=callgrind`, whose instruction
//!   counts a busy machine does not disturb. With `AGENTIC_BENCH_LLM_PART=bare|provider|stack`
//!   it runs that call against the local server instead (`no-io`, the default, is the
//!   above).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::convert::Infallible;
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agentic_core::llm::anthropic::parse_response;
use agentic_core::llm::anthropic::{AnthropicConfig, AnthropicProvider, StreamDecoder};
use agentic_core::llm::layers::{
    BreakerConfig, Budgets, CacheConfig, LayerExt, PriceTable, RateLimit, RetryPolicy, Route,
    Router,
};
use agentic_core::llm::sse::SseParser;
use agentic_core::llm::{ChatRequest, ChatResponse, LlmError, LlmProvider, ProviderCapabilities};
use criterion::{Criterion, Throughput};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

const KEY: &str = "sk-ant-bench";

/// A recorded Messages API answer (anthropic-sdk-go `tool_runner_basic.yaml`, the same bytes
/// as `fixtures/llm-wire/anthropic/message_text.json`).
const ANSWER: &str = r#"{"model":"claude-3-7-sonnet-20250219","id":"msg_014SddXAzPYwR72fa37nJ8N2","type":"message","role":"assistant","content":[{"type":"text","text":"The current temperature in San Francisco is 68 degrees Fahrenheit."}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":514,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"cache_creation":{"ephemeral_5m_input_tokens":0,"ephemeral_1h_input_tokens":0},"output_tokens":19,"service_tier":"standard"}}"#;

/// A local server answering every request with [`ANSWER`]. It reads the whole request body
/// first, as a real server does.
async fn serve() -> SocketAddr {
    // `net` comes with reqwest's tokio features; the bench relies on it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            stream.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let service = service_fn(|request: Request<Incoming>| async move {
                    use http_body_util::BodyExt;
                    let _ = request.into_body().collect().await;
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from_static(ANSWER.as_bytes())))
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// The request of iteration `n`: deterministic (so the cache computes a key and looks it
/// up) and unique (so it always misses).
fn request(n: u64) -> ChatRequest {
    ChatRequest::user(format!(
        "What's the weather in San Francisco? Use fahrenheit. (question {n})"
    ))
    .model("claude-3-7-sonnet-latest")
    .max_tokens(512)
    .temperature(0.0)
    .tag("goal", "bench")
}

/// A provider that answers at once with a parsed copy of [`ANSWER`]: the layers over it
/// cost only CPU, which isolates what they add from the network.
struct Fixed(ChatResponse);

#[async_trait::async_trait]
impl LlmProvider for Fixed {
    fn name(&self) -> &str {
        "anthropic"
    }
    fn capabilities(&self) -> ProviderCapabilities {
        ProviderCapabilities::all_remote()
    }
    async fn complete(&self, _request: ChatRequest) -> Result<ChatResponse, LlmError> {
        Ok(self.0.clone())
    }
    // As the HTTP providers do: the request is only read, so `Retry` lends it.
    async fn complete_ref(&self, _request: &ChatRequest) -> Result<ChatResponse, LlmError> {
        Ok(self.0.clone())
    }
}

/// The layer stack of the benchmark over `provider`.
fn stack(provider: impl LlmProvider + 'static) -> Box<dyn LlmProvider> {
    let budgets = Budgets::new();
    budgets.set("goal", "bench", 1e12);
    Box::new(
        Router::new()
            .route(Route::new(
                provider
                    .with_rate_limit(RateLimit::per_minute(u32::MAX, u64::MAX))
                    .with_circuit_breaker(BreakerConfig::default())
                    .with_retry(RetryPolicy::default()),
            ))
            .with_cost_meter(PriceTable::builtin())
            .with_budgets(budgets)
            .with_cache(CacheConfig {
                ttl: Duration::from_secs(600),
                max_entries: 10_000,
            }),
    )
}

struct Calls {
    runtime: tokio::runtime::Runtime,
    bare: reqwest::Client,
    url: String,
    bare_body: Vec<u8>,
    provider: AnthropicProvider,
    stack: Box<dyn LlmProvider>,
    cpu_stack: Box<dyn LlmProvider>,
    counter: AtomicU64,
}

impl Calls {
    fn new() -> Calls {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let addr = runtime.block_on(serve());
        let base = format!("http://{addr}");
        let provider =
            || AnthropicProvider::new(AnthropicConfig::new(KEY).base_url(base.clone())).unwrap();
        Calls {
            runtime,
            bare: reqwest::Client::new(),
            url: format!("{base}/v1/messages"),
            bare_body: serde_json::to_vec(&provider().request_body(&request(0), false).unwrap())
                .unwrap(),
            stack: stack(provider()),
            cpu_stack: stack(Fixed(
                parse_response(ANSWER.as_bytes(), None, "anthropic").unwrap(),
            )),
            provider: provider(),
            counter: AtomicU64::new(0),
        }
    }

    fn next(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }

    /// The bare call: the body the provider sends for a request like the stack's, built once
    /// (so the bare side pays for no JSON work at all: the most conservative baseline),
    /// posted with the same headers, the answer read whole and not parsed.
    fn bare(&self) {
        self.runtime.block_on(async {
            let response = self
                .bare
                .post(&self.url)
                .header("x-api-key", KEY)
                .header("anthropic-version", "2023-06-01")
                .header("content-type", "application/json")
                .body(self.bare_body.clone())
                .send()
                .await
                .unwrap();
            assert!(response.status().is_success());
            black_box(response.bytes().await.unwrap());
        });
    }

    /// The provider alone, no layers.
    fn provider_only(&self, n: u64) {
        self.runtime.block_on(async {
            black_box(self.provider.complete(request(n)).await.unwrap());
        });
    }

    fn stacked(&self, n: u64) {
        self.runtime.block_on(async {
            let answer = self.stack.complete(request(n)).await.unwrap();
            assert!(answer.cost.is_some());
            black_box(answer);
        });
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Bare, provider-only and stacked calls in rotation; prints medians and the overheads.
fn interleaved(calls: &Calls, rounds: usize) {
    for _ in 0..200 {
        calls.bare();
        calls.provider_only(calls.next());
        calls.stacked(calls.next());
    }
    let mut bare = Vec::with_capacity(rounds);
    let mut provider = Vec::with_capacity(rounds);
    let mut stacked = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        calls.bare();
        bare.push(started.elapsed());
        let n = calls.next();
        let started = Instant::now();
        calls.provider_only(n);
        provider.push(started.elapsed());
        let n = calls.next();
        let started = Instant::now();
        calls.stacked(n);
        stacked.push(started.elapsed());
    }
    let (bare, provider, stacked) = (median(bare), median(provider), median(stacked));
    let over = |x: Duration| (x.as_secs_f64() / bare.as_secs_f64() - 1.0) * 100.0;
    println!(
        "llm interleaved ({rounds} rounds), medians: bare reqwest POST {:.1} µs; provider alone {:.1} µs ({:+.1} %); full layer stack {:.1} µs ({:+.1} %)",
        bare.as_secs_f64() * 1e6,
        provider.as_secs_f64() * 1e6,
        over(provider),
        stacked.as_secs_f64() * 1e6,
        over(stacked),
    );
}

fn bench_calls(c: &mut Criterion, calls: &Calls) {
    let mut group = c.benchmark_group("llm_call");
    group.bench_function("bare_reqwest_post", |b| b.iter(|| calls.bare()));
    group.bench_function("provider_alone", |b| {
        b.iter(|| calls.provider_only(calls.next()))
    });
    group.bench_function("full_layer_stack", |b| {
        b.iter(|| calls.stacked(calls.next()))
    });
    group.finish();
    // The layers' own CPU per call: the same stack over a provider that answers at once.
    let mut group = c.benchmark_group("llm_layers_cpu");
    group.bench_function("full_layer_stack_no_io", |b| {
        b.iter(|| {
            let n = calls.next();
            calls
                .runtime
                .block_on(async { black_box(calls.cpu_stack.complete(request(n)).await.unwrap()) })
        })
    });
    group.finish();
}

/// About 1 MiB of Anthropic text deltas, the most frequent event of a streamed answer.
fn sse_body() -> Vec<u8> {
    let mut body = String::new();
    body.push_str("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\n");
    body.push_str("event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n");
    let mut i = 0;
    while body.len() < 1 << 20 {
        body.push_str(&format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\" token {i} of a long answer\"}}}}\n\n"
        ));
        i += 1;
    }
    body.push_str(
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    );
    body.push_str("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":9000}}\n\n");
    body.push_str("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    body.into_bytes()
}

fn bench_sse(c: &mut Criterion) {
    let body = sse_body();
    let mut group = c.benchmark_group("sse");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("parser_4k_chunks", |b| {
        let mut events = Vec::with_capacity(16_384);
        b.iter(|| {
            let mut parser = SseParser::new();
            events.clear();
            for chunk in body.chunks(4096) {
                parser.push(chunk, &mut events);
            }
            parser.finish(&mut events);
            black_box(events.len())
        })
    });
    group.bench_function("anthropic_decoder_4k_chunks", |b| {
        let mut events = Vec::with_capacity(16_384);
        b.iter(|| {
            let mut decoder = StreamDecoder::new("anthropic");
            events.clear();
            for chunk in body.chunks(4096) {
                decoder.push(chunk, &mut events).unwrap();
            }
            decoder.finish(&mut events).unwrap();
            black_box(events.len())
        })
    });
    group.finish();
}

fn main() {
    if let Ok(n) = std::env::var("AGENTIC_BENCH_LLM_PROFILE") {
        let n: u64 = n
            .parse()
            .expect("AGENTIC_BENCH_LLM_PROFILE: a number of calls");
        let part = std::env::var("AGENTIC_BENCH_LLM_PART").unwrap_or_else(|_| "no-io".into());
        let calls = Calls::new();
        for _ in 0..n {
            let i = calls.next();
            match part.as_str() {
                "no-io" => calls.runtime.block_on(async {
                    black_box(calls.cpu_stack.complete(request(i)).await.unwrap());
                }),
                "bare" => calls.bare(),
                "provider" => calls.provider_only(i),
                "stack" => calls.stacked(i),
                other => {
                    panic!("AGENTIC_BENCH_LLM_PART: no-io, bare, provider or stack, not {other}")
                }
            }
        }
        return;
    }
    let mut criterion = Criterion::default().configure_from_args();
    let calls = Calls::new();
    // `cargo bench -- <filter>` still prints the interleaved figure: it is the one that
    // answers the 10 % question on a noisy machine.
    interleaved(&calls, 2000);
    bench_calls(&mut criterion, &calls);
    bench_sse(&mut criterion);
    criterion.final_summary();
}
