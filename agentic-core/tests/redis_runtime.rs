//! The runtime over Redis: an orchestrator and a worker that share nothing but the Redis
//! server (each with its own connections, as on two machines). Skips, printed, without
//! `AGENTIC_REDIS_URL`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use agentic_core::prelude::*;
use agentic_core::queue::{NewJob, RedisQueue, RedisQueueConfig, TaskQueue};
use agentic_core::store::{RedisStore, RedisStoreConfig};
use agentic_core::{TaskId, WorkerConfig};
use serde_json::json;

/// Removes every key of one test run when dropped.
struct Cleanup {
    url: String,
    prefix: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(self.url.as_str()) else {
            return;
        };
        let Ok(mut c) = client.get_connection() else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.prefix))
            .query(&mut c)
            .unwrap_or_default();
        for k in keys {
            let _: Result<i64, _> = redis::cmd("DEL").arg(k).query(&mut c);
        }
    }
}

async fn parts(url: &str, prefix: &str) -> Parts {
    let mut qc = RedisQueueConfig::new(url).key_prefix(prefix);
    qc.max_poll_interval = Duration::from_millis(20);
    let queue = RedisQueue::connect_with(qc).await.unwrap();
    let store = RedisStore::connect_with(
        RedisStoreConfig::new(url)
            .key_prefix(prefix)
            .namespace("rt"),
    )
    .await
    .unwrap();
    Parts::new(Arc::new(queue), Arc::new(store))
}

fn setup() -> Option<(String, String, Cleanup)> {
    let Ok(url) = std::env::var("AGENTIC_REDIS_URL") else {
        eprintln!("SKIP redis runtime: AGENTIC_REDIS_URL is not set");
        return None;
    };
    let prefix = format!("agentic-test-rt-{:x}", fastrand::u64(..));
    let cleanup = Cleanup {
        url: url.clone(),
        prefix: prefix.clone(),
    };
    Some((url, prefix, cleanup))
}

struct Echo;

#[async_trait]
impl Agent for Echo {
    fn card(&self) -> AgentCard {
        AgentCard::new("echo", "echo").concurrency(4)
    }
    async fn run(&self, task: &Task, cx: &AgentContext) -> Result<TaskOutput, AgentError> {
        cx.store()
            .put(
                &format!("seen/{}", task.id),
                b"1".to_vec(),
                PutOptions::new(),
            )
            .await?;
        Ok(json!({ "task": task.id.as_str(), "input": task.input }).into())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_goal_runs_across_processes_on_redis() {
    let Some((url, prefix, _cleanup)) = setup() else {
        return;
    };
    let orchestrator = Orchestrator::start(parts(&url, &prefix).await);
    let _worker = Worker::builder(parts(&url, &prefix).await)
        .agent(Echo)
        .start();
    let plan = Plan::builder("redis-fan")
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
        .unwrap();
    let result = tokio::time::timeout(Duration::from_secs(30), orchestrator.run(plan))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result.status, GoalStatus::Completed);
    assert_eq!(
        result.output("b").unwrap()["input"]["from_a"]["input"],
        json!(1)
    );
    assert_eq!(result.output("d").unwrap()["input"][1]["task"], json!("c"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_on_redis_is_dead_lettered_and_the_worker_goes_on() {
    let Some((url, prefix, _cleanup)) = setup() else {
        return;
    };
    let p = parts(&url, &prefix).await;
    let orchestrator = Orchestrator::start(p.clone());
    let _worker = Worker::builder(parts(&url, &prefix).await)
        .agent(Echo)
        .start();
    p.queue
        .enqueue("agentic.task.echo", NewJob::new(&b"\x00garbage"[..]))
        .await
        .unwrap();
    let plan = Plan::builder("after-poison")
        .task(TaskSpec::new("t", "echo"))
        .build()
        .unwrap();
    let result = tokio::time::timeout(Duration::from_secs(30), orchestrator.run(plan))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result.status, GoalStatus::Completed);
    let dead = p.queue.dead_letters("agentic.task.echo", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].reason.starts_with("undecodable task payload"),
        "{}",
        dead[0].reason
    );
}

/// Blocks until cancelled the first time it runs; succeeds afterwards.
struct Stubborn(Arc<std::sync::atomic::AtomicU32>);

#[async_trait]
impl Agent for Stubborn {
    fn card(&self) -> AgentCard {
        AgentCard::new("stubborn", "stubborn")
    }
    async fn run(&self, _task: &Task, cx: &AgentContext) -> Result<TaskOutput, AgentError> {
        if self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            cx.cancelled().await;
            return Err(AgentError::cancelled());
        }
        Ok(json!("done").into())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_dying_on_redis_loses_nothing() {
    let Some((url, prefix, _cleanup)) = setup() else {
        return;
    };
    let orchestrator = Orchestrator::start(parts(&url, &prefix).await);
    let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let config = WorkerConfig {
        lease: Duration::from_millis(400),
        poll_wait: Duration::from_millis(100),
        ..WorkerConfig::default()
    };
    let first = Worker::builder(parts(&url, &prefix).await)
        .config(config.clone())
        .agent(Stubborn(runs.clone()))
        .start();
    let plan = Plan::builder("crash")
        .task(TaskSpec::new("t", "stubborn"))
        .build()
        .unwrap();
    let goal = orchestrator.submit(plan).await.unwrap();
    while runs.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(first);
    let _second = Worker::builder(parts(&url, &prefix).await)
        .config(config)
        .agent(Stubborn(runs.clone()))
        .start();
    let result = tokio::time::timeout(Duration::from_secs(30), orchestrator.wait(&goal))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result.status, GoalStatus::Completed);
    assert_eq!(result.states[&TaskId::from("t")], TaskState::Succeeded);
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 2);
}
