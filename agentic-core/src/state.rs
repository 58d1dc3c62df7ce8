//! What the runtime keeps in the [`StateStore`](agentic_store::StateStore) and on the queues.
//!
//! Layout under the namespace `ns` (default `agentic`):
//!
//! | key | value | written by |
//! |---|---|---|
//! | `ns/goal/{goal}` | [`GoalRecord`] (small: status and counts, never the plan) | orchestrator |
//! | `ns/goal/{goal}/plan` | the [`Plan`](crate::Plan), written once | orchestrator |
//! | `ns/goal/{goal}/task/{task}` | [`TaskRecord`]: state, runs, output or error | both, by compare-and-set |
//! | `ns/goal/{goal}/approval/{task}` | [`ApprovalRecord`] for approvals asked for inside a run | worker, orchestrator |
//! | `ns/active/{goal}` | empty: the index of unfinished goals, scanned on resume | orchestrator |
//! | `ns/control/stop` | [`StopRecord`]: the emergency-stop flag | orchestrator |
//! | lock `ns/goal/{goal}` | whoever holds it drives the goal | orchestrator |
//!
//! Queues: `ns.task.{capability}` carries [`TaskEnvelope`]s to workers;
//! `ns.control` carries [`Poke`]s to orchestrators.
//!
//! Each task event touches only that task's record and its dependents' records: the work
//! per event does not grow with the size of the goal.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::orchestrator::GoalStatus;
use crate::retry::RetryPolicy;
use crate::{GoalId, TaskId};

/// The life of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting for dependencies.
    Pending,
    /// Ready, but held until a human approves.
    AwaitingApproval,
    /// On its queue (first run or a retry).
    Queued,
    /// A worker runs it.
    Running,
    /// Done, with an output.
    Succeeded,
    /// Failed for good.
    Failed,
    /// Not run because a dependency failed.
    Skipped,
    /// Not run (or stopped) because the goal failed or was cancelled.
    Cancelled,
}

impl TaskState {
    /// True for the states a task never leaves.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Failed | TaskState::Skipped | TaskState::Cancelled
        )
    }
}

/// A human's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Approved or rejected.
    pub approved: bool,
    /// Who decided.
    pub by: String,
    /// Their note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A task's state in the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Where it is in its life.
    pub state: TaskState,
    /// Runs started (a run that a dead worker abandoned counts).
    #[serde(default)]
    pub runs: u32,
    /// Runs that failed.
    #[serde(default)]
    pub failures: u32,
    /// How many times the orchestrator put it on a queue; part of the idempotency key so a
    /// re-enqueue after a crash is deduplicated by the queue.
    #[serde(default)]
    pub dispatch: u32,
    /// The output, once succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// The last error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The approval decision, for tasks that require one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    /// The worker that runs (or last ran) it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// The queue job of the current (or last) run, so a duplicate job of a running task is
    /// told apart from that run's own job coming back after its lease expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Last change, ms since the epoch.
    #[serde(default)]
    pub updated_ms: u64,
}

impl TaskRecord {
    pub(crate) fn new(state: TaskState) -> Self {
        TaskRecord {
            state,
            runs: 0,
            failures: 0,
            dispatch: 0,
            output: None,
            error: None,
            decision: None,
            worker: None,
            job: None,
            updated_ms: crate::event::now_ms(),
        }
    }
}

/// A goal's small, frequently read record (the plan lives under its own key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoalRecord {
    /// The goal.
    pub id: GoalId,
    /// The plan's name.
    pub name: String,
    /// Where it is.
    pub status: GoalStatus,
    /// Number of tasks.
    pub tasks: usize,
    /// Why it failed or was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Submitted, ms since the epoch.
    pub created_ms: u64,
    /// Finished, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
}

/// The emergency-stop flag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopRecord {
    /// True while stopped.
    pub stopped: bool,
    /// Why.
    pub reason: String,
    /// When it changed, ms since the epoch.
    pub at_ms: u64,
}

/// An approval an agent asked for inside a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRecord {
    /// What is to be approved.
    pub prompt: String,
    /// The decision, once made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
}

/// The job a worker receives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEnvelope {
    /// The goal.
    pub goal: GoalId,
    /// The task (for delegated subtasks: `{parent}~{n}`).
    pub task: TaskId,
    /// The capability.
    pub capability: String,
    /// The tenant whose store scope the agent gets.
    pub tenant: String,
    /// The input, references already resolved.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub input: Value,
    /// Attempts and backoff.
    #[serde(default, skip_serializing_if = "RetryPolicy::is_default")]
    pub retry: RetryPolicy,
    /// Per-run deadline, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// True for subtasks created by `AgentContext::delegate` (not part of the plan).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delegated: bool,
}

/// A nudge to the orchestrator: something about this goal (or task) changed in the store;
/// the store is the truth, the poke only says where to look.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Poke {
    /// The goal.
    pub goal: GoalId,
    /// The task, or `None` for the goal record itself (e.g. a cancel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskId>,
    /// The task's terminal state, when the sender just recorded it. Terminal states never
    /// change, so the receiver may trust it instead of reading the record back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<TaskState>,
}

/// Key and queue names under one namespace.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    ns: String,
}

impl Keys {
    pub(crate) fn new(ns: &str) -> Self {
        Keys { ns: ns.to_owned() }
    }

    pub(crate) fn goal(&self, goal: &GoalId) -> String {
        concat(&[&self.ns, "/goal/", &goal.0])
    }

    pub(crate) fn plan(&self, goal: &GoalId) -> String {
        concat(&[&self.ns, "/goal/", &goal.0, "/plan"])
    }

    pub(crate) fn task(&self, goal: &GoalId, task: &TaskId) -> String {
        concat(&[&self.ns, "/goal/", &goal.0, "/task/", &task.0])
    }

    pub(crate) fn tasks_prefix(&self, goal: &GoalId) -> String {
        concat(&[&self.ns, "/goal/", &goal.0, "/task/"])
    }

    pub(crate) fn approval(&self, goal: &GoalId, task: &TaskId) -> String {
        concat(&[&self.ns, "/goal/", &goal.0, "/approval/", &task.0])
    }

    pub(crate) fn approvals_prefix(&self, goal: &GoalId) -> String {
        concat(&[&self.ns, "/goal/", &goal.0, "/approval/"])
    }

    pub(crate) fn active(&self, goal: &GoalId) -> String {
        concat(&[&self.ns, "/active/", &goal.0])
    }

    pub(crate) fn active_prefix(&self) -> String {
        concat(&[&self.ns, "/active/"])
    }

    pub(crate) fn stop(&self) -> String {
        concat(&[&self.ns, "/control/stop"])
    }

    pub(crate) fn goal_lock(&self, goal: &GoalId) -> String {
        concat(&[&self.ns, "/goal/", &goal.0])
    }

    pub(crate) fn tenant_prefix(&self, tenant: &str) -> String {
        concat(&[&self.ns, "/tenant/", tenant, "/"])
    }

    pub(crate) fn task_queue(&self, capability: &str) -> String {
        concat(&[&self.ns, ".task.", capability])
    }

    pub(crate) fn control_queue(&self) -> String {
        concat(&[&self.ns, ".control"])
    }
}

/// Joins `parts` into one string with a single allocation (`format!` with `Display` costs
/// several times more, and keys are built for every store call on the hot path).
pub(crate) fn concat(parts: &[&str]) -> String {
    let mut out = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        out.push_str(p);
    }
    out
}
