//! The runtime over the RabbitMQ and NATS queue backends: an orchestrator and a worker that
//! talk only through the broker (the store is shared in-process). This is the path the
//! conformance suites do not take: every task job carries an idempotency key, pokes go
//! through the control queue, and a worker's death is recovered by the broker's redelivery.
//! Each backend skips, printed, without its `AGENTIC_*_URL`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use agentic_core::WorkerConfig;
use agentic_core::prelude::*;
use agentic_core::queue::{
    AmqpQueue, AmqpQueueConfig, NatsQueue, NatsQueueConfig, QueueError, TaskQueue,
};
use agentic_core::store::MemoryStore;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

/// Answers with its task id and input.
struct Echo;

#[async_trait]
impl Agent for Echo {
    fn card(&self) -> AgentCard {
        AgentCard::new("echo", "echo").concurrency(4)
    }
    async fn run(&self, task: &Task, _cx: &AgentContext) -> Result<TaskOutput, AgentError> {
        Ok(json!({ "task": task.id.as_str(), "input": task.input }).into())
    }
}

/// Blocks until cancelled the first time it runs; succeeds afterwards.
struct Stubborn(Arc<AtomicU32>);

#[async_trait]
impl Agent for Stubborn {
    fn card(&self) -> AgentCard {
        AgentCard::new("stubborn", "stubborn")
    }
    async fn run(&self, _task: &Task, cx: &AgentContext) -> Result<TaskOutput, AgentError> {
        if self.0.fetch_add(1, Ordering::SeqCst) == 0 {
            cx.cancelled().await;
            return Err(AgentError::cancelled());
        }
        Ok(json!("done").into())
    }
}

fn fan_plan() -> Plan {
    Plan::builder("broker-fan")
        .task(TaskSpec::new("a", "echo").input(json!(1)))
        .task(
            TaskSpec::new("b", "echo")
                .after(["a"])
                .input(json!({ "from_a": from("a") })),
        )
        .task(TaskSpec::new("c", "echo").after(["a"]))
        .task(
            TaskSpec::new("d", "echo")
                .after(["b", "c"])
                .input(json!([from("b"), from("c")])),
        )
        .build()
        .unwrap()
}

/// Runs the fan-out/fan-in goal and a worker-dies-mid-task goal over `queue`, then deletes
/// the queues the runtime used.
async fn exercise<Q, F>(queue: Q, delete: F)
where
    Q: TaskQueue + Clone + 'static,
    F: AsyncFn(&Q, &str) -> Result<(), QueueError>,
{
    let namespace = format!("rt{:x}", fastrand::u32(..));
    let store = Arc::new(MemoryStore::new());
    let parts = Parts::new(Arc::new(queue.clone()), store).with_namespace(namespace.clone());

    let orchestrator = Orchestrator::start(parts.clone());
    let echo_worker = Worker::builder(parts.clone()).agent(Echo).start();
    let result = tokio::time::timeout(WAIT, orchestrator.run(fan_plan()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result.status, GoalStatus::Completed, "{:?}", result.reason);
    assert_eq!(
        result.output("b").unwrap()["input"]["from_a"]["input"],
        json!(1)
    );
    assert_eq!(result.output("d").unwrap()["input"][1]["task"], json!("c"));
    echo_worker.shutdown().await;

    // A worker that dies mid-task: the broker redelivers once the lease is gone.
    let runs = Arc::new(AtomicU32::new(0));
    let config = WorkerConfig {
        lease: Duration::from_millis(1500),
        poll_wait: Duration::from_millis(100),
        ..WorkerConfig::default()
    };
    let first = Worker::builder(parts.clone())
        .config(config.clone())
        .agent(Stubborn(runs.clone()))
        .start();
    let plan = Plan::builder("crash")
        .task(TaskSpec::new("t", "stubborn"))
        .build()
        .unwrap();
    let goal = orchestrator.submit(plan).await.unwrap();
    tokio::time::timeout(WAIT, async {
        while runs.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    drop(first);
    let second = Worker::builder(parts.clone())
        .config(config)
        .agent(Stubborn(runs.clone()))
        .start();
    let result = tokio::time::timeout(WAIT, orchestrator.wait(&goal))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result.status, GoalStatus::Completed, "{:?}", result.reason);
    assert_eq!(result.output("t"), Some(&json!("done")));
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    second.shutdown().await;
    orchestrator.shutdown().await;

    for name in ["task.echo", "task.stubborn", "control"] {
        let q = format!("{namespace}.{name}");
        if let Err(e) = delete(&queue, &q).await {
            eprintln!("cleanup: could not delete {q}: {e}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_runs_on_rabbitmq() {
    let Ok(url) = std::env::var("AGENTIC_AMQP_URL") else {
        eprintln!("SKIP broker runtime on RabbitMQ: AGENTIC_AMQP_URL is not set");
        return;
    };
    let mut config = AmqpQueueConfig::new(url).queue_prefix("agentic-test-rt.");
    // Backstops in case the test process dies before it deletes its queues.
    config.queue_expires = Some(Duration::from_secs(600));
    config.dedupe_window = Duration::from_secs(60);
    let queue = AmqpQueue::connect_with(config).await.unwrap();
    exercise(queue, async |q: &AmqpQueue, name: &str| {
        q.delete_queue(name).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_runs_on_nats() {
    let Ok(url) = std::env::var("AGENTIC_NATS_URL") else {
        eprintln!("SKIP broker runtime on NATS: AGENTIC_NATS_URL is not set");
        return;
    };
    let mut config = NatsQueueConfig::new(url).prefix("agqrt");
    config.request_timeout = Duration::from_secs(10);
    let queue = NatsQueue::connect_with(config).await.unwrap();
    exercise(queue, async |q: &NatsQueue, name: &str| {
        q.delete_queue(name).await
    })
    .await;
}
