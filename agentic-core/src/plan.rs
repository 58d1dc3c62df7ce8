//! Plans: a DAG of task specs, its builder, JSON form and validation.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::retry::RetryPolicy;

/// A task's id, unique inside its plan.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(pub String);

impl TaskId {
    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for TaskId {
    fn from(s: &str) -> Self {
        TaskId(s.to_owned())
    }
}

impl From<String> for TaskId {
    fn from(s: String) -> Self {
        TaskId(s)
    }
}

impl std::borrow::Borrow<str> for TaskId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// What to do with the rest of the goal when a task fails for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// Fail the goal at the first task that fails for good; cancel what has not run.
    #[default]
    FailFast,
    /// Keep going: tasks that depend on a failed task are skipped, the rest run, and the
    /// goal ends with a partial result.
    ContinueOnFailure,
}

/// One task of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Unique inside the plan; no `/` (it is part of store keys).
    pub id: TaskId,
    /// Which agents can run it (the queue it goes to).
    pub capability: String,
    /// The task's input. Any object of the form `{"$from": "<task id>"}` (optionally with
    /// `"pointer": "/json/pointer"`) is replaced by that dependency's output before the
    /// task runs.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub input: Value,
    /// Tasks that must succeed first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<TaskId>,
    /// `0..=9`, higher first.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: u8,
    /// Attempts and backoff.
    #[serde(default, skip_serializing_if = "RetryPolicy::is_default")]
    pub retry: RetryPolicy,
    /// Longest a single attempt may run before it is cancelled and counted as failed.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::serde_ms::option"
    )]
    pub deadline: Option<Duration>,
    /// Hold the task until a human approves it (see `Orchestrator::approve`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub requires_approval: bool,
}

// Fields at their defaults are left out of the stored plan: it stays readable, and storing
// a 10,000-task plan does not write the same retry policy 10,000 times.
fn is_zero(v: &u8) -> bool {
    *v == 0
}

impl TaskSpec {
    /// A task `id` for agents with `capability`, no input and no dependencies.
    pub fn new(id: impl Into<TaskId>, capability: impl Into<String>) -> Self {
        TaskSpec {
            id: id.into(),
            capability: capability.into(),
            input: Value::Null,
            depends_on: Vec::new(),
            priority: 0,
            retry: RetryPolicy::default(),
            deadline: None,
            requires_approval: false,
        }
    }

    /// Sets the input.
    pub fn input(mut self, input: Value) -> Self {
        self.input = input;
        self
    }

    /// Adds dependencies.
    pub fn after<I, T>(mut self, deps: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<TaskId>,
    {
        self.depends_on.extend(deps.into_iter().map(Into::into));
        self
    }

    /// Sets the priority.
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = priority;
        self
    }

    /// Sets the retry policy.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets the per-attempt deadline.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Requires approval before the task runs.
    pub fn requires_approval(mut self) -> Self {
        self.requires_approval = true;
        self
    }
}

/// A goal's plan: tasks, their dependencies, and what to do on failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// A name for logs and events.
    pub name: String,
    /// The tenant whose store scope the agents use.
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// Fail fast or continue.
    #[serde(default)]
    pub on_failure: FailurePolicy,
    /// The tasks.
    pub tasks: Vec<TaskSpec>,
}

fn default_tenant() -> String {
    "default".to_owned()
}

/// Why a plan is not valid. Each variant names the tasks involved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// The plan has no tasks.
    #[error("the plan has no tasks")]
    Empty,
    /// Two tasks share an id.
    #[error("duplicate task id {0:?}")]
    DuplicateTask(TaskId),
    /// A task id is empty or contains `/`.
    #[error("invalid task id {0:?}: it must be non-empty and contain no '/'")]
    InvalidTaskId(TaskId),
    /// A task names no capability.
    #[error("task {0:?} has an empty capability")]
    EmptyCapability(TaskId),
    /// A dependency names a task that does not exist.
    #[error("task {task:?} depends on {missing:?}, which is not in the plan")]
    UnknownDependency {
        /// The task.
        task: TaskId,
        /// The missing dependency.
        missing: TaskId,
    },
    /// The dependencies form a cycle; `members` lists it in order (each depends on the next,
    /// the last on the first).
    #[error("dependency cycle: {}", display_cycle(members))]
    Cycle {
        /// The tasks of the cycle.
        members: Vec<TaskId>,
    },
    /// An input refers to the output of a task that is not one of its dependencies.
    #[error(
        "task {task:?} refers to the output of {reference:?}, which is not one of its dependencies"
    )]
    InvalidReference {
        /// The task.
        task: TaskId,
        /// The referenced task.
        reference: TaskId,
    },
    /// A priority is out of range.
    #[error("task {task:?} has priority {priority}, outside 0..=9")]
    InvalidPriority {
        /// The task.
        task: TaskId,
        /// The priority.
        priority: u8,
    },
    /// A retry policy is unusable.
    #[error("task {task:?}: {reason}")]
    InvalidRetry {
        /// The task.
        task: TaskId,
        /// Why.
        reason: String,
    },
}

fn display_cycle(members: &[TaskId]) -> String {
    let mut s: Vec<&str> = members.iter().map(TaskId::as_str).collect();
    if let Some(first) = members.first() {
        s.push(first.as_str());
    }
    s.join(" -> ")
}

/// The key that marks an input reference.
pub const FROM_KEY: &str = "$from";

impl Plan {
    /// Starts a plan.
    pub fn builder(name: impl Into<String>) -> PlanBuilder {
        PlanBuilder {
            plan: Plan {
                name: name.into(),
                tenant: default_tenant(),
                on_failure: FailurePolicy::FailFast,
                tasks: Vec::new(),
            },
        }
    }

    /// Parses a plan from JSON and validates it.
    pub fn from_json(json: &str) -> Result<Plan, crate::Error> {
        let plan: Plan = serde_json::from_str(json)
            .map_err(|e| crate::Error::InvalidInput(format!("plan JSON: {e}")))?;
        plan.validate()?;
        Ok(plan)
    }

    /// The plan as JSON.
    pub fn to_json(&self) -> Result<String, crate::Error> {
        serde_json::to_string_pretty(self)
            .map_err(|e| crate::Error::InvalidInput(format!("plan JSON: {e}")))
    }

    /// Checks the plan and returns its tasks' indices in an order that respects the
    /// dependencies (every task after all of its dependencies).
    pub fn validate(&self) -> Result<Vec<usize>, PlanError> {
        if self.tasks.is_empty() {
            return Err(PlanError::Empty);
        }
        let mut index: crate::FastMap<&str, usize> =
            crate::FastMap::with_capacity_and_hasher(self.tasks.len(), Default::default());
        for (i, t) in self.tasks.iter().enumerate() {
            if t.id.0.is_empty() || t.id.0.contains('/') {
                return Err(PlanError::InvalidTaskId(t.id.clone()));
            }
            if t.capability.is_empty() {
                return Err(PlanError::EmptyCapability(t.id.clone()));
            }
            if t.priority > agentic_queue::MAX_PRIORITY {
                return Err(PlanError::InvalidPriority {
                    task: t.id.clone(),
                    priority: t.priority,
                });
            }
            if t.retry.max_attempts == 0 {
                return Err(PlanError::InvalidRetry {
                    task: t.id.clone(),
                    reason: "max_attempts must be at least 1".to_owned(),
                });
            }
            if index.insert(t.id.as_str(), i).is_some() {
                return Err(PlanError::DuplicateTask(t.id.clone()));
            }
        }
        let mut deps: Vec<Vec<usize>> = Vec::with_capacity(self.tasks.len());
        for t in &self.tasks {
            let mut d = Vec::with_capacity(t.depends_on.len());
            for dep in &t.depends_on {
                match index.get(dep.as_str()) {
                    Some(&j) => d.push(j),
                    None => {
                        return Err(PlanError::UnknownDependency {
                            task: t.id.clone(),
                            missing: dep.clone(),
                        });
                    }
                }
            }
            d.sort_unstable();
            d.dedup();
            deps.push(d);
        }
        for t in &self.tasks {
            let mut refs = BTreeSet::new();
            collect_references(&t.input, &mut refs);
            for r in refs {
                if !t.depends_on.iter().any(|d| d.as_str() == r) {
                    return Err(PlanError::InvalidReference {
                        task: t.id.clone(),
                        reference: TaskId(r.to_owned()),
                    });
                }
            }
        }
        topological_order(&deps).map_err(|cycle| PlanError::Cycle {
            members: cycle
                .into_iter()
                .map(|i| self.tasks[i].id.clone())
                .collect(),
        })
    }
}

/// Kahn's algorithm over `deps[i]` = indices task `i` depends on. On a cycle, returns
/// one cycle's members in dependency order.
pub(crate) fn topological_order(deps: &[Vec<usize>]) -> Result<Vec<usize>, Vec<usize>> {
    let n = deps.len();
    let mut indegree = vec![0usize; n];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, d) in deps.iter().enumerate() {
        indegree[i] = d.len();
        for &j in d {
            dependents[j].push(i);
        }
    }
    let mut ready: Vec<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop() {
        order.push(i);
        for &k in &dependents[i] {
            indegree[k] -= 1;
            if indegree[k] == 0 {
                ready.push(k);
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    // Every task left over has an unfinished dependency that is also left over, so
    // following dependencies from any of them must revisit a task: that loop is a cycle.
    let Some(start) = (0..n).find(|&i| indegree[i] > 0) else {
        return Err(Vec::new());
    };
    let mut seen_at: HashMap<usize, usize> = HashMap::new();
    let mut path = Vec::new();
    let mut cur = start;
    loop {
        if let Some(&pos) = seen_at.get(&cur) {
            return Err(path[pos..].to_vec());
        }
        seen_at.insert(cur, path.len());
        path.push(cur);
        match deps[cur].iter().copied().find(|&j| indegree[j] > 0) {
            Some(next) => cur = next,
            None => return Err(path),
        }
    }
}

/// Collects the task ids named by `$from` references in `value`.
pub(crate) fn collect_references<'a>(value: &'a Value, out: &mut BTreeSet<&'a str>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(from)) = map.get(FROM_KEY) {
                out.insert(from.as_str());
            } else {
                for v in map.values() {
                    collect_references(v, out);
                }
            }
        }
        Value::Array(items) => {
            for v in items {
                collect_references(v, out);
            }
        }
        _ => {}
    }
}

/// Replaces every `$from` reference in `value` by the referenced output.
/// `lookup` returns a dependency's output; a pointer that matches nothing yields `null`.
pub(crate) fn resolve_references(
    value: &Value,
    lookup: &dyn Fn(&str) -> Option<Value>,
) -> Result<Value, String> {
    Ok(match value {
        Value::Object(map) => {
            if let Some(Value::String(from)) = map.get(FROM_KEY) {
                let output = lookup(from)
                    .ok_or_else(|| format!("the output of {from:?} is not available"))?;
                match map.get("pointer") {
                    Some(Value::String(p)) => output.pointer(p).cloned().unwrap_or(Value::Null),
                    _ => output,
                }
            } else {
                let mut out = serde_json::Map::with_capacity(map.len());
                for (k, v) in map {
                    out.insert(k.clone(), resolve_references(v, lookup)?);
                }
                Value::Object(out)
            }
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| resolve_references(v, lookup))
                .collect::<Result<_, _>>()?,
        ),
        other => other.clone(),
    })
}

/// Builds a [`Plan`].
#[derive(Debug, Clone)]
pub struct PlanBuilder {
    plan: Plan,
}

impl PlanBuilder {
    /// Adds a task.
    pub fn task(mut self, task: TaskSpec) -> Self {
        self.plan.tasks.push(task);
        self
    }

    /// Sets the tenant.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.plan.tenant = tenant.into();
        self
    }

    /// Keep going when a task fails; dependents of the failed task are skipped.
    pub fn continue_on_failure(mut self) -> Self {
        self.plan.on_failure = FailurePolicy::ContinueOnFailure;
        self
    }

    /// Sets the failure policy.
    pub fn on_failure(mut self, policy: FailurePolicy) -> Self {
        self.plan.on_failure = policy;
        self
    }

    /// Validates and returns the plan.
    pub fn build(self) -> Result<Plan, PlanError> {
        self.plan.validate()?;
        Ok(self.plan)
    }
}

/// A reference to another task's output, for building inputs:
/// `json!({"spec": from("design")})`.
pub fn from(task: &str) -> Value {
    serde_json::json!({ FROM_KEY: task })
}

/// A reference to part of another task's output, by JSON pointer.
pub fn from_pointer(task: &str, pointer: &str) -> Value {
    serde_json::json!({ FROM_KEY: task, "pointer": pointer })
}
