//! Orchestrator overhead per task: `Orchestrator::run` of a random DAG of no-op agent tasks
//! (1,000 and 10,000 tasks, each depending on about two random earlier tasks) on in-memory
//! parts, one orchestrator and one worker in the process.
//!
//! Targets (see `docs/benchmarks.md`): at most 10 µs per task, and the 10,000-task run at
//! most 1.3x the per-task cost of the 1,000-task run.
//!
//! ```sh
//! cargo bench -p agentic-benches --bench orchestrator
//! # only the summary:
//! cargo bench -p agentic-benches --bench orchestrator -- nothing-matches
//! ```
//!
//! `AGENTIC_BENCH_THREADS` sets the tokio runtime's worker threads (default 2).
//!
//! Each iteration builds fresh in-memory parts, an orchestrator and a worker (untimed), then
//! submits a fresh copy of the plan (a new goal) and times `run` (submit + wait).
//! After criterion, a short summary runs each size a few more times on a fresh runtime and
//! prints the median per-task time and the 10k/1k ratio.

// A benchmark is a program, not library code: a failed setup or a goal that does not
// complete must stop the run loudly rather than be measured, so `unwrap`/`expect` are the
// right tools here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use agentic_core::prelude::*;
use criterion::{Criterion, SamplingMode, Throughput, criterion_group};
use serde_json::json;

/// The sizes measured.
const SIZES: [usize; 2] = [1_000, 10_000];
/// Dependencies per task (fewer for the first tasks, which have fewer predecessors).
const DEPS_PER_TASK: usize = 2;
/// Timed runs per size in the closing summary (after one untimed warm-up run).
const SUMMARY_RUNS: [usize; 2] = [15, 7];
/// Fixed seed: every run measures the same DAGs.
const SEED: u64 = 0x5EED_0000_0000_0001;

/// A no-op agent: returns `null` at once.
struct Noop;

#[async_trait]
impl Agent for Noop {
    fn card(&self) -> AgentCard {
        AgentCard::new("noop", "noop").concurrency(64)
    }

    async fn run(&self, _task: &Task, _cx: &AgentContext) -> Result<TaskOutput, AgentError> {
        Ok(json!(null).into())
    }
}

/// A random DAG of `n` no-op tasks; task `i` depends on up to [`DEPS_PER_TASK`] distinct
/// random tasks among `0..i`.
fn random_dag(n: usize, seed: u64) -> Plan {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut builder = Plan::builder(format!("dag-{n}"));
    for i in 0..n {
        let mut deps: Vec<usize> = Vec::with_capacity(DEPS_PER_TASK);
        while deps.len() < DEPS_PER_TASK.min(i) {
            let d = rng.usize(..i);
            if !deps.contains(&d) {
                deps.push(d);
            }
        }
        builder = builder.task(
            TaskSpec::new(format!("t{i}"), "noop").after(deps.iter().map(|d| format!("t{d}"))),
        );
    }
    builder.build().expect("the generated DAG is a valid plan")
}

/// An orchestrator and one worker over fresh in-memory parts, on the current runtime.
fn start_runtime() -> (Orchestrator, Worker) {
    let parts = Parts::in_memory();
    let orchestrator = Orchestrator::start(parts.clone());
    let worker = Worker::builder(parts).agent(Noop).start();
    (orchestrator, worker)
}

/// Runs `plan` and checks that every task succeeded; returns the wall time of `run`.
async fn timed_run(orchestrator: &Orchestrator, plan: Plan) -> Duration {
    let n = plan.tasks.len();
    let started = Instant::now();
    let result = orchestrator.run(plan).await.expect("run");
    let elapsed = started.elapsed();
    assert_eq!(result.status, GoalStatus::Completed, "{:?}", result.reason);
    assert_eq!(result.outputs.len(), n);
    // A long-running orchestrator forgets goals whose results it consumed; without this the
    // store grows with every iteration and later iterations measure a bigger store.
    orchestrator.forget(&result.goal).await.expect("forget");
    elapsed
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(
            std::env::var("AGENTIC_BENCH_THREADS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(2),
        )
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn bench_orchestrator(c: &mut Criterion) {
    let mut group = c.benchmark_group("orchestrator_run");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(10));
    for n in SIZES {
        let plan = random_dag(n, SEED);
        let rt = runtime();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(format!("noop_dag_{n}"), |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let plan = &plan;
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        // Fresh parts for every run (untimed), as the summary below: the
                        // in-memory queue remembers each job's idempotency key for its dedupe
                        // window (24 h), and hundreds of runs on one set of parts would
                        // measure a table of a million remembered keys rather than the
                        // orchestrator (docs/benchmarks.md has that figure too).
                        let (orchestrator, worker) = start_runtime();
                        // A new plan (and so a new goal) per iteration; copying it is not timed.
                        let fresh = plan.clone();
                        total += timed_run(&orchestrator, fresh).await;
                        worker.shutdown().await;
                        orchestrator.shutdown().await;
                    }
                    total
                }
            });
        });
    }
    group.finish();
}

/// Per-task times of one summary run: submit, wait (drive to the end and collect the
/// result), and their sum (= `Orchestrator::run`).
#[derive(Clone, Copy)]
struct Split {
    submit: Duration,
    wait: Duration,
}

impl Split {
    fn total(self) -> Duration {
        self.submit + self.wait
    }
}

/// `runs` timed runs of an `n`-task DAG, each split into submit and wait, per task. One
/// untimed warm-up run first. With `fresh`, every timed run gets fresh parts, orchestrator and
/// worker (built untimed); without, all runs share one set, which then remembers the
/// idempotency keys of every earlier run's jobs (the in-memory queue's 24 h dedupe window).
fn summary_runs(n: usize, runs: usize, fresh: bool) -> Vec<Split> {
    let plan = random_dag(n, SEED);
    let rt = runtime();
    rt.block_on(async {
        let (mut orchestrator, mut worker) = start_runtime();
        timed_run(&orchestrator, plan.clone()).await;
        let mut splits = Vec::with_capacity(runs);
        for _ in 0..runs {
            if fresh {
                worker.shutdown().await;
                orchestrator.shutdown().await;
                (orchestrator, worker) = start_runtime();
            }
            let copy = plan.clone();
            let started = Instant::now();
            let goal = orchestrator.submit(copy).await.expect("submit");
            let submitted = started.elapsed();
            let result = orchestrator.wait(&goal).await.expect("wait");
            let total = started.elapsed();
            assert_eq!(result.status, GoalStatus::Completed, "{:?}", result.reason);
            orchestrator.forget(&goal).await.expect("forget");
            splits.push(Split {
                submit: submitted / n as u32,
                wait: (total - submitted) / n as u32,
            });
        }
        worker.shutdown().await;
        orchestrator.shutdown().await;
        splits
    })
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Median per-task time of `splits`, printed with its spread and split.
fn report(label: &str, splits: &[Split], target: bool) -> Duration {
    let total = median(splits.iter().map(|s| s.total()).collect());
    let submit = median(splits.iter().map(|s| s.submit).collect());
    let wait = median(splits.iter().map(|s| s.wait).collect());
    let (min, max) = splits
        .iter()
        .map(|s| s.total())
        .fold((Duration::MAX, Duration::ZERO), |(lo, hi), d| {
            (lo.min(d), hi.max(d))
        });
    let verdict = if !target {
        "(not a target)"
    } else if total <= Duration::from_micros(10) {
        "target <= 10 µs: met"
    } else {
        "target <= 10 µs: MISSED"
    };
    println!(
        "  {label}: {:>6.2} µs/task (min {:.2}, max {:.2}; {} runs)  of which submit {:.2}, wait {:.2}  {verdict}",
        micros(total),
        micros(min),
        micros(max),
        splits.len(),
        micros(submit),
        micros(wait),
    );
    total
}

/// Prints per-task cost and the 10k/1k ratio against the targets.
fn summary() {
    println!("\nsummary: per-task wall time of Orchestrator::run (median; fresh parts per run)");
    let mut medians = Vec::new();
    for (n, runs) in SIZES.into_iter().zip(SUMMARY_RUNS) {
        let splits = summary_runs(n, runs, true);
        medians.push(report(&format!("{n:>6} tasks"), &splits, true));
    }
    let ratio = medians[1].as_secs_f64() / medians[0].as_secs_f64();
    println!(
        "  10k/1k per-task ratio: {ratio:.2}  target <= 1.30: {}",
        if ratio <= 1.3 { "met" } else { "MISSED" }
    );
    // The same on one long-lived set of parts: each run adds 10,000 idempotency keys to the
    // in-memory queue's dedupe table, so later runs work against a bigger table.
    let aged = summary_runs(SIZES[1], SUMMARY_RUNS[1], false);
    report(
        &format!("{:>6} tasks, one set of parts for all runs", SIZES[1]),
        &aged,
        false,
    );
}

criterion_group!(benches, bench_orchestrator);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and there the
    // benchmarks run once each as a smoke test, without the (slow) summary. Profiling runs
    // (`--profile-time`) skip it too.
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--profile-time") {
        summary();
    }
}
