//! Agents, plans and a distributed orchestrator/worker runtime over pluggable parts.
//!
//! You write [`Agent`]s; you describe a goal as a [`Plan`] (a DAG of tasks); an
//! [`Orchestrator`] drives the plan and [`Worker`]s run the agents. Both are built only on
//! four traits — [`TaskQueue`](queue::TaskQueue), [`StateStore`](store::StateStore),
//! [`LlmProvider`](llm::LlmProvider) and [`Sandbox`](sandbox::Sandbox) — so the same code
//! runs in one process on in-memory parts and on many machines over Redis, RabbitMQ or NATS.
//!
//! ```
//! use agentic_core::prelude::*;
//! use serde_json::json;
//!
//! struct Shout;
//!
//! #[async_trait]
//! impl Agent for Shout {
//!     fn card(&self) -> AgentCard {
//!         AgentCard::new("shout", "shout").concurrency(4)
//!     }
//!     async fn run(&self, task: &Task, _cx: &AgentContext) -> Result<TaskOutput, AgentError> {
//!         let text = task.input["text"].as_str().unwrap_or_default().to_uppercase();
//!         Ok(json!(text).into())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), agentic_core::Error> {
//! let parts = Parts::in_memory();
//! let orchestrator = Orchestrator::start(parts.clone());
//! let _worker = Worker::builder(parts).agent(Shout).start();
//!
//! let plan = Plan::builder("greet")
//!     .task(TaskSpec::new("a", "shout").input(json!({ "text": "hello" })))
//!     .task(TaskSpec::new("b", "shout").input(json!({ "text": "world" })))
//!     .build()?;
//! let result = orchestrator.run(plan).await?;
//! assert_eq!(result.status, GoalStatus::Completed);
//! assert_eq!(result.output("a"), Some(&json!("HELLO")));
//! # Ok(())
//! # }
//! ```
//!
//! # Guarantees
//!
//! - Tasks are delivered at least once and completed at most once: a task's record changes
//!   only by compare-and-set, and a run whose lease was taken over cannot record a result.
//! - A worker that dies mid-task loses nothing: its lease expires, the task runs again, and
//!   the abandoned run counts against the task's retry policy.
//! - Goal state lives in the store. An orchestrator that dies is replaced by any other over
//!   the same store within the goal lock's TTL; an orchestrator that starts resumes every
//!   unfinished goal nobody drives.
//! - Emergency stop cancels running agents and gives their tasks back without counting a
//!   failure; nothing runs until [`Orchestrator::resume`].
//! - Undecodable jobs are dead-lettered with the reason, never dropped or fatal.
//!
//! # Features
//!
//! | feature | what it adds |
//! |---|---|
//! | `test-kit` | the queue and store conformance suites (`queue::testkit`, `store::testkit`) |
//! | `redis` | `queue::RedisQueue` and `store::RedisStore` |
//! | `amqp` | `queue::AmqpQueue` (RabbitMQ) |
//! | `nats` | `queue::NatsQueue` and `store::NatsStore` (NATS JetStream) |

#![cfg_attr(docsrs, feature(doc_cfg))]

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

mod agent;
pub mod event;
mod orchestrator;
pub mod plan;
mod records;
mod retry;
mod serde_ms;
pub mod state;
mod worker;

/// The runtime's in-process maps (goal and task ids): a fast hasher, seeded per map.
type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

pub use agentic_llm as llm;
pub use agentic_queue as queue;
pub use agentic_sandbox as sandbox;
pub use agentic_store as store;

pub use agent::{Agent, AgentCard, AgentContext, AgentError, Approval, Task, TaskOutput};
pub use event::{Event, EventBus, EventKind, EventSink, JsonlSink, TracingSink};
pub use orchestrator::{
    GoalReport, GoalResult, GoalStatus, Orchestrator, OrchestratorBuilder, OrchestratorConfig,
};
pub use plan::{FailurePolicy, Plan, PlanBuilder, PlanError, TaskId, TaskSpec};
pub use retry::RetryPolicy;
pub use state::TaskState;
pub use worker::{TASK_JOB_MAX_DELIVERIES, Worker, WorkerBuilder, WorkerConfig};

// The README's examples are compiled and run as doctests, so they cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;

/// What most programs need: `use agentic_core::prelude::*;`.
pub mod prelude {
    pub use crate::plan::{from, from_pointer};
    pub use crate::{
        Agent, AgentCard, AgentContext, AgentError, FailurePolicy, GoalId, GoalResult, GoalStatus,
        Orchestrator, Parts, Plan, RetryPolicy, Task, TaskOutput, TaskSpec, TaskState, Worker,
    };
    pub use agentic_llm::{ChatRequest, ChatResponse, LlmProvider, Message, ScriptedProvider};
    pub use agentic_store::{PutOptions, StateStore};
    pub use async_trait::async_trait;
}

/// A goal's id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GoalId(pub String);

impl GoalId {
    /// A fresh random id: 128 bits, hex, so ids from many machines never collide.
    pub fn generate() -> Self {
        GoalId(format!(
            "g{:016x}{:016x}",
            fastrand::u64(..),
            fastrand::u64(..)
        ))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GoalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for GoalId {
    fn from(s: &str) -> Self {
        GoalId(s.to_owned())
    }
}

/// Everything the runtime's calls can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The plan is not valid.
    #[error("invalid plan: {0}")]
    InvalidPlan(#[from] PlanError),
    /// An argument or document is not acceptable.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// No such goal.
    #[error("goal {0} not found")]
    GoalNotFound(GoalId),
    /// No such task in the goal.
    #[error("task {task} not found in goal {goal}")]
    TaskNotFound {
        /// The goal.
        goal: GoalId,
        /// The task.
        task: TaskId,
    },
    /// Approve/reject on a task that waits for no decision.
    #[error("task {task} of goal {goal} is not awaiting approval (it is {state:?})")]
    NotAwaitingApproval {
        /// The goal.
        goal: GoalId,
        /// The task.
        task: TaskId,
        /// Its state.
        state: TaskState,
    },
    /// A stored record does not decode: written by an incompatible version, or damaged.
    #[error("corrupt record at {key}: {reason}")]
    Corrupt {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The queue failed.
    #[error(transparent)]
    Queue(#[from] agentic_queue::QueueError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] agentic_store::StoreError),
}

impl Error {
    /// True when trying again may help (a transient backend fault).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Queue(e) => e.is_retryable(),
            Error::Store(e) => e.is_retryable(),
            _ => false,
        }
    }
}

/// The parts a runtime is built from. Cheap to clone; an orchestrator and its workers share
/// one (in one process) or each build their own over the same backends (distributed).
#[derive(Clone)]
pub struct Parts {
    /// The queue of tasks and control messages.
    pub queue: Arc<dyn agentic_queue::TaskQueue>,
    /// Goal, task and agent state.
    pub store: Arc<dyn agentic_store::StateStore>,
    /// The LLM agents use.
    pub llm: Arc<dyn agentic_llm::LlmProvider>,
    /// Where agents run untrusted code.
    pub sandbox: Arc<dyn agentic_sandbox::Sandbox>,
    /// Where events go.
    pub events: EventBus,
    /// Prefix of every key and queue name, so several runtimes can share one backend.
    pub namespace: String,
}

impl fmt::Debug for Parts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Parts")
            .field("llm", &self.llm.name())
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl Parts {
    /// In-memory queue and store, no LLM (calls fail with a clear error until
    /// [`Parts::with_llm`]), no sandbox.
    pub fn in_memory() -> Self {
        Parts::new(
            Arc::new(agentic_queue::MemoryQueue::new()),
            Arc::new(agentic_store::MemoryStore::new()),
        )
    }

    /// Parts over the given queue and store.
    pub fn new(
        queue: Arc<dyn agentic_queue::TaskQueue>,
        store: Arc<dyn agentic_store::StateStore>,
    ) -> Self {
        Parts {
            queue,
            store,
            llm: Arc::new(NoLlm),
            sandbox: Arc::new(agentic_sandbox::NoSandbox),
            events: EventBus::new(),
            namespace: "agentic".to_owned(),
        }
    }

    /// Sets the LLM provider.
    pub fn with_llm(mut self, llm: impl agentic_llm::LlmProvider + 'static) -> Self {
        self.llm = Arc::new(llm);
        self
    }

    /// Sets the sandbox.
    pub fn with_sandbox(mut self, sandbox: impl agentic_sandbox::Sandbox + 'static) -> Self {
        self.sandbox = Arc::new(sandbox);
        self
    }

    /// Adds an event sink.
    pub fn with_sink(self, sink: impl EventSink + 'static) -> Self {
        self.events.add_sink(Arc::new(sink));
        self
    }

    /// Sets the namespace (default `agentic`).
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }
}

/// The provider used until one is configured.
struct NoLlm;

#[async_trait::async_trait]
impl agentic_llm::LlmProvider for NoLlm {
    fn name(&self) -> &str {
        "none"
    }
    fn capabilities(&self) -> agentic_llm::ProviderCapabilities {
        agentic_llm::ProviderCapabilities::default()
    }
    async fn complete(
        &self,
        _request: agentic_llm::ChatRequest,
    ) -> Result<agentic_llm::ChatResponse, agentic_llm::LlmError> {
        Err(agentic_llm::LlmError::NoProvider(
            "no LLM provider is configured: use Parts::with_llm".to_owned(),
        ))
    }
}
