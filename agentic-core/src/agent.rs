//! Agents: what users write. An [`Agent`] runs one [`Task`] with an [`AgentContext`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentic_llm::{LlmError, LlmProvider};
use agentic_queue::{Lease, NewJob, QueueError, TaskQueue};
use agentic_sandbox::{Sandbox, SandboxError};
use agentic_store::{ScopedStore, StateStore, StoreError};
use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::event::{EventBus, EventKind};
use crate::records;
use crate::retry::RetryPolicy;
use crate::state::{ApprovalRecord, Keys, TaskEnvelope, TaskRecord, TaskState};
use crate::{GoalId, TaskId};

/// What an agent is and what it can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentCard {
    /// A name for logs and events.
    pub name: String,
    /// The capabilities (queues) it serves.
    pub capabilities: Vec<String>,
    /// Most tasks one worker runs with this agent at once.
    pub max_concurrency: usize,
}

impl AgentCard {
    /// A card for `name` serving `capability`, one task at a time.
    pub fn new(name: impl Into<String>, capability: impl Into<String>) -> Self {
        AgentCard {
            name: name.into(),
            capabilities: vec![capability.into()],
            max_concurrency: 1,
        }
    }

    /// Adds a capability.
    pub fn capability(mut self, capability: impl Into<String>) -> Self {
        self.capabilities.push(capability.into());
        self
    }

    /// Sets the per-worker concurrency.
    pub fn concurrency(mut self, max: usize) -> Self {
        self.max_concurrency = max.max(1);
        self
    }
}

/// One task as an agent sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// The goal it belongs to.
    pub goal: GoalId,
    /// Its id in the plan.
    pub id: TaskId,
    /// The capability it was queued for.
    pub capability: String,
    /// The input, with references to dependency outputs already resolved.
    pub input: Value,
    /// 1 on the first run.
    pub attempt: u32,
    /// Runs before it fails for good.
    pub max_attempts: u32,
    /// The tenant.
    pub tenant: String,
}

impl Task {
    /// Decodes the input as `T`; a mismatch is a non-retryable [`AgentError`].
    pub fn input_as<T: DeserializeOwned>(&self) -> Result<T, AgentError> {
        serde_json::from_value(self.input.clone()).map_err(|e| {
            AgentError::fatal(format!("task {} has an unexpected input: {e}", self.id))
        })
    }
}

/// What an agent returns: any JSON value.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TaskOutput(pub Value);

impl TaskOutput {
    /// Serializes `value` as the output.
    pub fn json<T: Serialize>(value: &T) -> Result<Self, AgentError> {
        serde_json::to_value(value)
            .map(TaskOutput)
            .map_err(|e| AgentError::fatal(format!("output does not serialize: {e}")))
    }
}

impl From<Value> for TaskOutput {
    fn from(v: Value) -> Self {
        TaskOutput(v)
    }
}

/// Why an agent's run failed. `retryable` decides whether the task's retry policy applies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AgentError {
    /// What went wrong.
    pub message: String,
    /// Whether another run may succeed.
    pub retryable: bool,
}

impl AgentError {
    /// A failure another run may fix (network, rate limit, flaky tool).
    pub fn retryable(message: impl Into<String>) -> Self {
        AgentError {
            message: message.into(),
            retryable: true,
        }
    }

    /// A failure no retry will fix (bad input, refused content): the task fails now.
    pub fn fatal(message: impl Into<String>) -> Self {
        AgentError {
            message: message.into(),
            retryable: false,
        }
    }

    /// The run was cancelled.
    pub fn cancelled() -> Self {
        AgentError::retryable("cancelled")
    }
}

impl From<LlmError> for AgentError {
    fn from(e: LlmError) -> Self {
        AgentError {
            retryable: e.is_retryable(),
            message: format!("LLM: {e}"),
        }
    }
}

impl From<StoreError> for AgentError {
    fn from(e: StoreError) -> Self {
        AgentError {
            retryable: e.is_retryable(),
            message: format!("store: {e}"),
        }
    }
}

impl From<QueueError> for AgentError {
    fn from(e: QueueError) -> Self {
        AgentError {
            retryable: e.is_retryable(),
            message: format!("queue: {e}"),
        }
    }
}

impl From<SandboxError> for AgentError {
    fn from(e: SandboxError) -> Self {
        AgentError::fatal(format!("sandbox: {e}"))
    }
}

/// An agent: the unit users write. Implement it in your own crate and register it with a
/// [`Worker`](crate::Worker).
///
/// ```
/// use agentic_core::prelude::*;
/// use serde_json::json;
///
/// struct Echo;
///
/// #[async_trait]
/// impl Agent for Echo {
///     fn card(&self) -> AgentCard {
///         AgentCard::new("echo", "echo")
///     }
///     async fn run(&self, task: &Task, cx: &AgentContext) -> Result<TaskOutput, AgentError> {
///         cx.progress("echoing");
///         Ok(json!({ "echo": task.input }).into())
///     }
/// }
/// ```
#[async_trait]
pub trait Agent: Send + Sync + 'static {
    /// Name, capabilities, concurrency.
    fn card(&self) -> AgentCard;

    /// Runs one task. Check `cx.is_cancelled()` (or select on `cx.cancelled()`) in long work:
    /// a cancelled run's result is discarded.
    async fn run(&self, task: &Task, cx: &AgentContext) -> Result<TaskOutput, AgentError>;
}

#[async_trait]
impl<A: Agent + ?Sized> Agent for Arc<A> {
    fn card(&self) -> AgentCard {
        (**self).card()
    }
    async fn run(&self, task: &Task, cx: &AgentContext) -> Result<TaskOutput, AgentError> {
        (**self).run(task, cx).await
    }
}

/// A decision on an approval an agent asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    /// Approved or rejected.
    pub approved: bool,
    /// Who decided.
    pub by: String,
    /// Their note.
    pub note: Option<String>,
}

/// Everything an agent may use while it runs one task.
pub struct AgentContext {
    pub(crate) llm: Arc<dyn LlmProvider>,
    pub(crate) store: ScopedStore,
    pub(crate) sandbox: Arc<dyn Sandbox>,
    pub(crate) cancel: CancellationToken,
    pub(crate) events: EventBus,
    pub(crate) goal: GoalId,
    pub(crate) task: TaskId,
    pub(crate) tenant: String,
    pub(crate) queue: Arc<dyn TaskQueue>,
    pub(crate) root_store: Arc<dyn StateStore>,
    pub(crate) keys: Keys,
    pub(crate) lease: Arc<Mutex<Lease>>,
    pub(crate) lease_duration: Duration,
    pub(crate) delegations: Mutex<u32>,
    pub(crate) poll_interval: Duration,
}

impl std::fmt::Debug for AgentContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentContext")
            .field("goal", &self.goal)
            .field("task", &self.task)
            .finish_non_exhaustive()
    }
}

impl AgentContext {
    /// The LLM provider (with whatever layers the runtime was given).
    pub fn llm(&self) -> &Arc<dyn LlmProvider> {
        &self.llm
    }

    /// A store scoped to the task's tenant: keys cannot reach other tenants or the runtime's
    /// own records.
    pub fn store(&self) -> &ScopedStore {
        &self.store
    }

    /// The sandbox for running untrusted code.
    pub fn sandbox(&self) -> &Arc<dyn Sandbox> {
        &self.sandbox
    }

    /// The goal this task belongs to.
    pub fn goal(&self) -> &GoalId {
        &self.goal
    }

    /// The task's id.
    pub fn task_id(&self) -> &TaskId {
        &self.task
    }

    /// The token cancelled when this run must stop (goal cancelled or failed, emergency
    /// stop, lease lost, deadline passed, worker shutting down).
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }

    /// True once the run must stop.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Resolves when the run must stop.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    /// Reports progress (an event; cheap when nobody listens).
    pub fn progress(&self, message: impl Into<String>) {
        let message = message.into();
        self.events
            .emit_with(Some(&self.goal), Some(&self.task), || EventKind::Progress {
                message,
                data: None,
            });
    }

    /// Reports progress with data.
    pub fn progress_with(&self, message: impl Into<String>, data: Value) {
        let message = message.into();
        self.events
            .emit_with(Some(&self.goal), Some(&self.task), || EventKind::Progress {
                message,
                data: Some(data),
            });
    }

    /// Extends the lease now. The worker already heartbeats on its own every third of the
    /// lease; call this before a long blocking step. A lost lease cancels the run.
    pub async fn heartbeat(&self) -> Result<(), AgentError> {
        let current = match self.lease.lock() {
            Ok(l) => l.clone(),
            Err(p) => p.into_inner().clone(),
        };
        match self.queue.extend_lease(&current, self.lease_duration).await {
            Ok(extended) => {
                match self.lease.lock() {
                    Ok(mut l) => *l = extended,
                    Err(p) => *p.into_inner() = extended,
                }
                Ok(())
            }
            Err(e @ QueueError::LeaseLost { .. }) => {
                self.cancel.cancel();
                Err(AgentError::retryable(format!("{e}")))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Runs `input` as a subtask on agents with `capability` and waits for its output.
    /// The subtask is queued like any task (same retries, leases and dead letters) and is
    /// recorded under this goal as `{task}~{n}`.
    pub async fn delegate(&self, capability: &str, input: Value) -> Result<Value, AgentError> {
        self.delegate_with(capability, input, RetryPolicy::default())
            .await
    }

    /// [`AgentContext::delegate`] with an explicit retry policy.
    pub async fn delegate_with(
        &self,
        capability: &str,
        input: Value,
        retry: RetryPolicy,
    ) -> Result<Value, AgentError> {
        let n = {
            let mut n = match self.delegations.lock() {
                Ok(n) => n,
                Err(p) => p.into_inner(),
            };
            *n += 1;
            *n
        };
        let sub = TaskId(format!("{}~{}", self.task, n));
        let key = self.keys.task(&self.goal, &sub);
        // A retried parent reuses its subtask: create-if-absent keeps one record, and the
        // idempotency key keeps one job.
        let mut record = TaskRecord::new(TaskState::Queued);
        record.dispatch = 1;
        match records::write(
            &*self.root_store,
            &key,
            &record,
            agentic_store::Expect::Absent,
        )
        .await
        {
            Ok(_) => {}
            Err(crate::Error::Store(e)) if e.is_conflict() => {}
            Err(e) => return Err(AgentError::retryable(e.to_string())),
        }
        let envelope = TaskEnvelope {
            goal: self.goal.clone(),
            task: sub.clone(),
            capability: capability.to_owned(),
            tenant: self.tenant.clone(),
            input,
            retry,
            deadline_ms: None,
            delegated: true,
        };
        let payload = serde_json::to_vec(&envelope)
            .map_err(|e| AgentError::fatal(format!("subtask input does not serialize: {e}")))?;
        self.queue
            .enqueue(
                &self.keys.task_queue(capability),
                NewJob::new(payload)
                    .max_attempts(crate::worker::TASK_JOB_MAX_DELIVERIES)
                    .idempotency_key(format!("{}/{}/1", self.goal, sub)),
            )
            .await?;
        self.events
            .emit_with(Some(&self.goal), Some(&sub), || EventKind::TaskQueued {
                capability: capability.to_owned(),
            });
        // Poll the record: delegation is rare and coarse-grained, and polling works the same
        // on every store (watch is optional).
        let mut wait = Duration::from_millis(5);
        loop {
            if let Some((rec, _)) = records::read::<TaskRecord>(&*self.root_store, &key)
                .await
                .map_err(|e| AgentError::retryable(e.to_string()))?
            {
                match rec.state {
                    TaskState::Succeeded => return Ok(rec.output.unwrap_or(Value::Null)),
                    TaskState::Failed | TaskState::Cancelled | TaskState::Skipped => {
                        return Err(AgentError::fatal(format!(
                            "subtask {sub} ({capability}) failed: {}",
                            rec.error.unwrap_or_else(|| format!("{:?}", rec.state))
                        )));
                    }
                    _ => {}
                }
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return Err(AgentError::cancelled()),
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(self.poll_interval);
        }
    }

    /// Asks a human to approve something mid-run and waits for the decision
    /// (`Orchestrator::approve` / `reject` with this task's id). The wait keeps the lease.
    pub async fn request_approval(
        &self,
        prompt: impl Into<String>,
    ) -> Result<Approval, AgentError> {
        let prompt = prompt.into();
        let key = self.keys.approval(&self.goal, &self.task);
        let record = ApprovalRecord {
            prompt: prompt.clone(),
            decision: None,
        };
        match records::write(
            &*self.root_store,
            &key,
            &record,
            agentic_store::Expect::Absent,
        )
        .await
        {
            Ok(_) => {
                self.events
                    .emit_with(Some(&self.goal), Some(&self.task), || {
                        EventKind::ApprovalRequested { prompt }
                    });
            }
            // Asked already (a retried run): wait for the same decision.
            Err(crate::Error::Store(e)) if e.is_conflict() => {}
            Err(e) => return Err(AgentError::retryable(e.to_string())),
        }
        let mut wait = Duration::from_millis(5);
        loop {
            if let Some((rec, _)) = records::read::<ApprovalRecord>(&*self.root_store, &key)
                .await
                .map_err(|e| AgentError::retryable(e.to_string()))?
                && let Some(d) = rec.decision
            {
                return Ok(Approval {
                    approved: d.approved,
                    by: d.by,
                    note: d.note,
                });
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return Err(AgentError::cancelled()),
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(self.poll_interval);
        }
    }
}
