//! The orchestrator: accepts plans, drives goals through their DAG, and answers status,
//! wait, cancel, approvals and emergency stop.
//!
//! Each goal is driven by the orchestrator that holds its lock in the store. The driver
//! keeps a small in-memory index of the goal (dependents, unmet dependency counts); the
//! store stays the truth, so any orchestrator can rebuild that index and take over when the
//! driver disappears (its lock runs out). Workers report through pokes on the control
//! queue; a poke only says which task to look at.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentic_queue::{NewJob, Retry};
use agentic_store::{Expect, LockGuard, PutOptions};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::task::AbortOnDropHandle;

use crate::event::{EventKind, now_ms};
use crate::plan::{FailurePolicy, Plan, resolve_references};
use crate::records::{self, Modified};
use crate::state::{
    ApprovalRecord, Decision, GoalRecord, Keys, Poke, StopRecord, TaskEnvelope, TaskRecord,
    TaskState,
};
use crate::worker::{TASK_JOB_MAX_DELIVERIES, send_poke};
use crate::{Error, FastMap, GoalId, Parts, TaskId};

/// Where a goal is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GoalStatus {
    /// Tasks are running or waiting.
    Running,
    /// Every task succeeded.
    Completed,
    /// Continue-on-failure: some tasks failed or were skipped; the rest succeeded.
    PartiallyCompleted,
    /// A task failed for good under fail-fast.
    Failed,
    /// Cancelled by a user.
    Cancelled,
}

impl GoalStatus {
    /// True for the final states.
    pub fn is_terminal(self) -> bool {
        self != GoalStatus::Running
    }
}

/// The result of a finished goal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoalResult {
    /// The goal.
    pub goal: GoalId,
    /// How it ended.
    pub status: GoalStatus,
    /// Why it failed or was cancelled.
    pub reason: Option<String>,
    /// Outputs of the tasks that succeeded.
    pub outputs: BTreeMap<TaskId, Value>,
    /// Errors of the tasks that failed.
    pub errors: BTreeMap<TaskId, String>,
    /// Every task's final state.
    pub states: BTreeMap<TaskId, TaskState>,
}

impl GoalResult {
    /// The output of one task.
    pub fn output(&self, task: &str) -> Option<&Value> {
        self.outputs.get(task)
    }
}

/// A goal's current state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoalReport {
    /// The goal's record.
    pub goal: GoalRecord,
    /// Each task's state.
    pub tasks: BTreeMap<TaskId, TaskState>,
}

/// Orchestrator settings.
#[derive(Debug, Clone)]
pub struct OrchestratorConfig {
    /// TTL of the per-goal lock; it is renewed every third. A dead orchestrator's goals are
    /// taken over by another within about this long.
    pub lock_ttl: Duration,
    /// Pokes taken from the control queue at once.
    pub control_batch: usize,
    /// Longest one dequeue of the control queue waits.
    pub poll_wait: Duration,
    /// How often `wait` re-reads a goal driven by another orchestrator.
    pub wait_poll: Duration,
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        OrchestratorConfig {
            lock_ttl: Duration::from_secs(15),
            control_batch: 256,
            poll_wait: Duration::from_secs(1),
            wait_poll: Duration::from_millis(250),
        }
    }
}

/// Builds an [`Orchestrator`].
#[derive(Debug)]
pub struct OrchestratorBuilder {
    parts: Parts,
    config: OrchestratorConfig,
}

impl OrchestratorBuilder {
    /// Replaces the settings.
    pub fn config(mut self, config: OrchestratorConfig) -> Self {
        self.config = config;
        self
    }

    /// Sets the goal lock TTL.
    pub fn lock_ttl(mut self, ttl: Duration) -> Self {
        self.config.lock_ttl = ttl;
        self
    }

    /// Starts the orchestrator's loops on the current tokio runtime. It immediately looks
    /// for unfinished goals in the store and resumes those nobody drives.
    pub fn start(self) -> Orchestrator {
        let inner = Arc::new(Inner {
            keys: Keys::new(&self.parts.namespace),
            parts: self.parts,
            config: self.config,
            goals: Mutex::new(FastMap::default()),
            finished: Notify::new(),
        });
        let control = AbortOnDropHandle::new(tokio::spawn(control_loop(Arc::clone(&inner))));
        let upkeep = AbortOnDropHandle::new(tokio::spawn(upkeep_loop(Arc::clone(&inner))));
        Orchestrator {
            inner,
            _loops: vec![control, upkeep],
        }
    }
}

/// Accepts plans and drives goals. Any number may run over the same store and queue;
/// each goal is driven by one at a time.
///
/// Dropping an orchestrator stops its loops at once, like a crash: its goals are taken over
/// by another orchestrator once their locks run out. [`Orchestrator::shutdown`] releases
/// them at once instead.
pub struct Orchestrator {
    inner: Arc<Inner>,
    _loops: Vec<AbortOnDropHandle<()>>,
}

impl std::fmt::Debug for Orchestrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orchestrator").finish_non_exhaustive()
    }
}

struct Inner {
    parts: Parts,
    keys: Keys,
    config: OrchestratorConfig,
    /// Goals this orchestrator drives. A std mutex guards only the map; each goal has its
    /// own async mutex because applying an event awaits the store.
    goals: Mutex<FastMap<GoalId, Arc<tokio::sync::Mutex<GoalRuntime>>>>,
    /// Woken whenever a goal driven here finishes.
    finished: Notify,
}

impl Orchestrator {
    /// A builder over `parts`.
    pub fn builder(parts: Parts) -> OrchestratorBuilder {
        OrchestratorBuilder {
            parts,
            config: OrchestratorConfig::default(),
        }
    }

    /// Starts an orchestrator with default settings.
    pub fn start(parts: Parts) -> Orchestrator {
        Self::builder(parts).start()
    }

    /// Validates and stores the plan, then starts driving it. Returns the goal's id.
    pub async fn submit(&self, plan: Plan) -> Result<GoalId, Error> {
        plan.validate()?;
        let inner = &self.inner;
        let store = &*inner.parts.store;
        let goal = GoalId::generate();
        records::write(store, &inner.keys.plan(&goal), &plan, Expect::Absent).await?;
        // Remember each record's version: the first change (queueing the task) can then be a
        // compare-and-set against it without reading the record back.
        // Every task starts as the same record: encode it once.
        let pending = serde_json::to_vec(&TaskRecord::new(TaskState::Pending))
            .map_err(|e| Error::InvalidInput(format!("cannot encode a task record: {e}")))?;
        let mut versions = Vec::with_capacity(plan.tasks.len());
        for task in &plan.tasks {
            let v = store
                .put(
                    &inner.keys.task(&goal, &task.id),
                    pending.clone(),
                    PutOptions::new().expect(Expect::Absent),
                )
                .await?;
            versions.push(Some(v));
        }
        let record = GoalRecord {
            id: goal.clone(),
            name: plan.name.clone(),
            status: GoalStatus::Running,
            tasks: plan.tasks.len(),
            reason: None,
            created_ms: now_ms(),
            finished_ms: None,
        };
        records::write(store, &inner.keys.goal(&goal), &record, Expect::Absent).await?;
        // The index entry goes last: an orchestrator that finds it can rely on the records.
        store
            .put(&inner.keys.active(&goal), Vec::new(), Default::default())
            .await?;
        inner
            .parts
            .events
            .emit_with(Some(&goal), None, || EventKind::GoalSubmitted {
                name: plan.name.clone(),
                tasks: plan.tasks.len(),
            });
        let Some(lock) = store
            .lock(&inner.keys.goal_lock(&goal), inner.config.lock_ttl)
            .await?
        else {
            // Another orchestrator raced to adopt the fresh goal from the index; it drives it.
            return Ok(goal);
        };
        let mut runtime = GoalRuntime::new(goal.clone(), Arc::new(plan), lock);
        runtime.versions = versions;
        let cell = Arc::new(tokio::sync::Mutex::new(runtime));
        let mut rt = cell.lock().await;
        lock_map(&inner.goals).insert(goal.clone(), Arc::clone(&cell));
        rt.start_roots(inner).await?;
        rt.flush(inner).await?;
        rt.check_finished(inner).await?;
        Ok(goal)
    }

    /// Submits the plan and waits for its result.
    pub async fn run(&self, plan: Plan) -> Result<GoalResult, Error> {
        let goal = self.submit(plan).await?;
        self.wait(&goal).await
    }

    /// Waits until the goal finishes, and returns its result (whoever drives it).
    pub async fn wait(&self, goal: &GoalId) -> Result<GoalResult, Error> {
        let inner = &self.inner;
        loop {
            let notified = inner.finished.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (record, _) =
                records::read::<GoalRecord>(&*inner.parts.store, &inner.keys.goal(goal))
                    .await?
                    .ok_or_else(|| Error::GoalNotFound(goal.clone()))?;
            if record.status.is_terminal() {
                return self.result(goal, record).await;
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(inner.config.wait_poll) => {}
            }
        }
    }

    async fn result(&self, goal: &GoalId, record: GoalRecord) -> Result<GoalResult, Error> {
        let tasks = self.task_records(goal).await?;
        // Collected into vectors first: the scan returns keys in order, and a map built
        // from a sorted vector is built in one pass instead of by a search per insert.
        let mut states = Vec::with_capacity(tasks.len());
        let mut outputs = Vec::with_capacity(tasks.len());
        let mut errors = Vec::new();
        for (id, rec) in tasks {
            states.push((id.clone(), rec.state));
            match rec.state {
                TaskState::Succeeded => outputs.push((id, rec.output.unwrap_or(Value::Null))),
                TaskState::Failed => errors.push((id, rec.error.unwrap_or_default())),
                _ => {}
            }
        }
        Ok(GoalResult {
            goal: goal.clone(),
            status: record.status,
            reason: record.reason,
            outputs: outputs.into_iter().collect(),
            errors: errors.into_iter().collect(),
            states: states.into_iter().collect(),
        })
    }

    /// Every task record of a goal (plan tasks only, not delegated subtasks).
    async fn task_records(&self, goal: &GoalId) -> Result<Vec<(TaskId, TaskRecord)>, Error> {
        scan_tasks(&self.inner, goal).await.map(|v| {
            v.into_iter()
                .filter(|(id, _)| !id.0.contains('~'))
                .collect()
        })
    }

    /// The goal's record and each task's state.
    pub async fn status(&self, goal: &GoalId) -> Result<GoalReport, Error> {
        let inner = &self.inner;
        let (record, _) = records::read::<GoalRecord>(&*inner.parts.store, &inner.keys.goal(goal))
            .await?
            .ok_or_else(|| Error::GoalNotFound(goal.clone()))?;
        let tasks = self
            .task_records(goal)
            .await?
            .into_iter()
            .map(|(id, r)| (id, r.state))
            .collect();
        Ok(GoalReport {
            goal: record,
            tasks,
        })
    }

    /// Cancels a running goal: tasks that have not started are cancelled, running agents
    /// are cancelled at their next heartbeat. Returns false if the goal had already ended.
    pub async fn cancel(&self, goal: &GoalId, reason: &str) -> Result<bool, Error> {
        let inner = &self.inner;
        let changed = set_goal_status(inner, goal, GoalStatus::Cancelled, reason).await?;
        if changed {
            send_poke(
                &inner.parts,
                &inner.keys,
                Poke {
                    goal: goal.clone(),
                    task: None,
                    state: None,
                },
            )
            .await?;
        }
        Ok(changed)
    }

    /// Approves a task that waits for approval (held by `requires_approval`, or asked for by
    /// its agent with `request_approval`). The decision is stored, so it survives restarts.
    pub async fn approve(
        &self,
        goal: &GoalId,
        task: &TaskId,
        by: &str,
        note: Option<&str>,
    ) -> Result<(), Error> {
        self.decide(
            goal,
            task,
            Decision {
                approved: true,
                by: by.to_owned(),
                note: note.map(str::to_owned),
            },
        )
        .await
    }

    /// Rejects a task that waits for approval: a held task fails (and the goal follows its
    /// failure policy); an agent waiting in `request_approval` gets the rejection.
    pub async fn reject(
        &self,
        goal: &GoalId,
        task: &TaskId,
        by: &str,
        note: Option<&str>,
    ) -> Result<(), Error> {
        self.decide(
            goal,
            task,
            Decision {
                approved: false,
                by: by.to_owned(),
                note: note.map(str::to_owned),
            },
        )
        .await
    }

    async fn decide(&self, goal: &GoalId, task: &TaskId, decision: Decision) -> Result<(), Error> {
        let inner = &self.inner;
        let store = &*inner.parts.store;
        let task_key = inner.keys.task(goal, task);
        let approved = decision.approved;
        let d = decision.clone();
        let held = records::modify::<TaskRecord, _>(store, &task_key, |r| {
            if r.state != TaskState::AwaitingApproval {
                return false;
            }
            r.decision = Some(d.clone());
            if d.approved {
                r.state = TaskState::Pending;
            } else {
                r.state = TaskState::Failed;
                r.error = Some(format!(
                    "rejected by {}{}",
                    d.by,
                    d.note
                        .as_deref()
                        .map(|n| format!(": {n}"))
                        .unwrap_or_default()
                ));
            }
            r.updated_ms = now_ms();
            true
        })
        .await?;
        let decided = match held {
            Modified::Written(..) => true,
            Modified::Missing => {
                return Err(Error::TaskNotFound {
                    goal: goal.clone(),
                    task: task.clone(),
                });
            }
            Modified::Unchanged(r) => {
                // Not held by the plan: maybe its agent asked inside a run.
                let key = inner.keys.approval(goal, task);
                let d = decision.clone();
                match records::modify::<ApprovalRecord, _>(store, &key, |a| {
                    if a.decision.is_some() {
                        return false;
                    }
                    a.decision = Some(d.clone());
                    true
                })
                .await?
                {
                    Modified::Written(..) => false,
                    _ => {
                        return Err(Error::NotAwaitingApproval {
                            goal: goal.clone(),
                            task: task.clone(),
                            state: r.state,
                        });
                    }
                }
            }
        };
        inner
            .parts
            .events
            .emit_with(Some(goal), Some(task), || EventKind::ApprovalGiven {
                approved,
                by: decision.by.clone(),
                note: decision.note.clone(),
            });
        if decided {
            send_poke(
                &inner.parts,
                &inner.keys,
                Poke {
                    goal: goal.clone(),
                    task: Some(task.clone()),
                    state: None,
                },
            )
            .await?;
        }
        Ok(())
    }

    /// Emergency stop for everything on this namespace: workers stop taking work and cancel
    /// running agents, whose tasks go back to their queues without counting a failure.
    /// Nothing is lost; [`Orchestrator::resume`] continues.
    pub async fn emergency_stop(&self, reason: &str) -> Result<(), Error> {
        self.set_stop(true, reason).await?;
        self.inner
            .parts
            .events
            .emit_with(None, None, || EventKind::EmergencyStop {
                reason: reason.to_owned(),
            });
        Ok(())
    }

    /// Ends an emergency stop.
    pub async fn resume(&self) -> Result<(), Error> {
        self.set_stop(false, "resumed").await?;
        self.inner
            .parts
            .events
            .emit_with(None, None, || EventKind::Resumed);
        Ok(())
    }

    /// True while an emergency stop is in force.
    pub async fn is_stopped(&self) -> Result<bool, Error> {
        Ok(
            records::read::<StopRecord>(&*self.inner.parts.store, &self.inner.keys.stop())
                .await?
                .is_some_and(|(r, _)| r.stopped),
        )
    }

    async fn set_stop(&self, stopped: bool, reason: &str) -> Result<(), Error> {
        let record = StopRecord {
            stopped,
            reason: reason.to_owned(),
            at_ms: now_ms(),
        };
        records::write(
            &*self.inner.parts.store,
            &self.inner.keys.stop(),
            &record,
            Expect::Any,
        )
        .await?;
        Ok(())
    }

    /// Stops the loops and releases the locks of the goals driven here, so another
    /// orchestrator takes them over at once.
    pub async fn shutdown(self) {
        let goals: Vec<_> = lock_map(&self.inner.goals)
            .drain()
            .map(|(_, g)| g)
            .collect();
        drop(self._loops);
        for g in goals {
            let rt = g.lock().await;
            if let Err(e) = self.inner.parts.store.unlock(&rt.lock).await {
                tracing::debug!(error = %e, "goal lock already gone at shutdown");
            }
        }
    }

    /// Deletes a finished goal's records (plan, tasks, approvals, goal record) and returns
    /// whether it existed. Goals are kept after they finish so `wait` and `status` can read
    /// them; a long-running orchestrator should forget them once their results are consumed,
    /// or the store grows with every goal. A running goal is refused: cancel it first.
    pub async fn forget(&self, goal: &GoalId) -> Result<bool, Error> {
        let inner = &self.inner;
        let store = &*inner.parts.store;
        let Some((record, _)) = records::read::<GoalRecord>(store, &inner.keys.goal(goal)).await?
        else {
            return Ok(false);
        };
        if !record.status.is_terminal() {
            return Err(Error::InvalidInput(format!(
                "goal {goal} is still running; cancel it before forgetting it"
            )));
        }
        for prefix in [
            inner.keys.tasks_prefix(goal),
            inner.keys.approvals_prefix(goal),
        ] {
            loop {
                // Always from the start: the keys of the previous page are gone.
                let page = store.scan(&prefix, None, 1000).await?;
                if page.items.is_empty() {
                    break;
                }
                for (key, _) in page.items {
                    store.delete(&key, Expect::Any).await?;
                }
            }
        }
        store.delete(&inner.keys.plan(goal), Expect::Any).await?;
        store.delete(&inner.keys.goal(goal), Expect::Any).await?;
        Ok(true)
    }

    /// Looks for unfinished goals nobody drives and takes them over now (this also runs
    /// periodically on its own). Returns how many were taken over.
    pub async fn resume_unfinished(&self) -> Result<usize, Error> {
        sweep(&self.inner).await
    }
}

fn lock_map<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

async fn scan_tasks(inner: &Inner, goal: &GoalId) -> Result<Vec<(TaskId, TaskRecord)>, Error> {
    let prefix = inner.keys.tasks_prefix(goal);
    let mut cursor: Option<String> = None;
    let mut out = Vec::new();
    loop {
        let page = inner
            .parts
            .store
            .scan(&prefix, cursor.as_deref(), 1000)
            .await?;
        for (key, v) in page.items {
            let id = TaskId(key[prefix.len()..].to_owned());
            let rec: TaskRecord = serde_json::from_slice(&v.value).map_err(|e| Error::Corrupt {
                key: key.clone(),
                reason: e.to_string(),
            })?;
            out.push((id, rec));
        }
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return Ok(out),
        }
    }
}

async fn set_goal_status(
    inner: &Inner,
    goal: &GoalId,
    status: GoalStatus,
    reason: &str,
) -> Result<bool, Error> {
    match records::modify::<GoalRecord, _>(&*inner.parts.store, &inner.keys.goal(goal), |g| {
        if g.status.is_terminal() {
            return false;
        }
        g.status = status;
        g.reason = (!reason.is_empty()).then(|| reason.to_owned());
        g.finished_ms = Some(now_ms());
        true
    })
    .await?
    {
        Modified::Written(..) => Ok(true),
        Modified::Unchanged(..) => Ok(false),
        Modified::Missing => Err(Error::GoalNotFound(goal.clone())),
    }
}

/// The jobs of one flush bound for one capability's queue, and the (task, dispatch) each
/// job runs.
type Batch<'a> = (&'a str, Vec<NewJob>, Vec<(usize, u32)>);

/// Most jobs one `enqueue_batch` of a flush carries, so a goal that makes thousands of tasks
/// ready at once does not send one huge request to a networked queue.
const FLUSH_BATCH: usize = 256;

/// What handling a poke came to.
enum Handled {
    Done,
    /// Another live orchestrator drives the goal: give the poke back for it.
    NotMine,
}

async fn control_loop(inner: Arc<Inner>) {
    let queue_name = inner.keys.control_queue();
    let queue = Arc::clone(&inner.parts.queue);
    let mut backoff = Duration::from_millis(50);
    loop {
        // Let the tasks that are ready run first (workers finishing runs, which poke): the
        // next dequeue then takes their pokes as one batch instead of one at a time. On an
        // idle runtime this costs one trip through the scheduler.
        tokio::task::yield_now().await;
        let deliveries = match queue
            .dequeue(
                &queue_name,
                inner.config.control_batch,
                Duration::from_secs(60),
                inner.config.poll_wait,
            )
            .await
        {
            Ok(d) => {
                backoff = Duration::from_millis(50);
                d
            }
            Err(e) => {
                tracing::warn!(error = %e, "control queue dequeue failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        // Decode, then group by goal (in arrival order), so each goal is locked once per
        // batch and the tasks its pokes make ready go out in one enqueue per queue.
        let mut groups: Vec<(GoalId, Vec<Poke>, Vec<agentic_queue::Lease>)> = Vec::new();
        for d in deliveries {
            let poke: Poke = match serde_json::from_slice(&d.payload) {
                Ok(p) => p,
                Err(e) => {
                    let reason = format!("undecodable control message: {e}");
                    inner
                        .parts
                        .events
                        .emit_with(None, None, || EventKind::PoisonMessage {
                            queue: queue_name.clone(),
                            reason: reason.clone(),
                        });
                    let _ = queue.nack(&d.lease, Retry::DeadLetter, &reason).await;
                    continue;
                }
            };
            match groups.iter_mut().find(|(g, ..)| *g == poke.goal) {
                Some((_, pokes, leases)) => {
                    pokes.push(poke);
                    leases.push(d.lease);
                }
                None => groups.push((poke.goal.clone(), vec![poke], vec![d.lease])),
            }
        }
        let mut done = Vec::new();
        for (goal, pokes, leases) in groups {
            let outcome = handle_pokes(&inner, &goal, &pokes).await;
            let (retry, why) = match outcome {
                Ok(Handled::Done) => {
                    done.extend(leases);
                    continue;
                }
                Ok(Handled::NotMine) => (
                    Duration::from_millis(50),
                    "goal driven by another orchestrator".to_owned(),
                ),
                Err(e) => {
                    tracing::warn!(goal = %goal, error = %e, "applying task events failed; will retry");
                    (Duration::from_millis(200), e.to_string())
                }
            };
            for lease in &leases {
                if let Err(e) = queue.nack(lease, Retry::After(retry), &why).await {
                    tracing::warn!(error = %e, "could not settle a control message; it will be redelivered");
                }
            }
        }
        // Settled together: one round trip (one lock, for the memory queue) per batch.
        if !done.is_empty() {
            let failed = match queue.ack_batch(&done).await {
                Ok(results) => results.into_iter().filter_map(Result::err).next(),
                Err(e) => Some(e),
            };
            if let Some(e) = failed {
                // Applying a poke twice is harmless: the redelivery finds nothing new.
                tracing::warn!(error = %e, "could not ack control messages; they will be redelivered");
            }
        }
    }
}

/// Applies the pokes of one goal, in order, then queues what they made ready.
async fn handle_pokes(inner: &Arc<Inner>, goal: &GoalId, pokes: &[Poke]) -> Result<Handled, Error> {
    let existing = lock_map(&inner.goals).get(goal).cloned();
    let cell = match existing {
        Some(c) => c,
        None => match adopt(inner, goal).await? {
            // Adopting rebuilt the goal from the store, which includes this poke's change.
            Adopted::Now => return Ok(Handled::Done),
            Adopted::Finished => return Ok(Handled::Done),
            Adopted::Elsewhere => return Ok(Handled::NotMine),
        },
    };
    let mut rt = cell.lock().await;
    let mut applied = Ok(());
    for poke in pokes {
        if rt.done {
            break;
        }
        applied = match &poke.task {
            Some(task) => rt.on_task(inner, task, poke.state).await,
            None => rt.on_goal(inner).await,
        };
        if applied.is_err() {
            break;
        }
    }
    // Queue what the applied pokes made ready even when a later one failed: those records
    // say `Queued` already. (The failed pokes come back; applying one twice is harmless.)
    let flushed = rt.flush(inner).await;
    applied?;
    flushed?;
    rt.check_finished(inner).await?;
    Ok(Handled::Done)
}

enum Adopted {
    Now,
    Finished,
    Elsewhere,
}

/// Takes over a goal if nobody drives it: lock, rebuild from the store, continue.
async fn adopt(inner: &Arc<Inner>, goal: &GoalId) -> Result<Adopted, Error> {
    let store = &*inner.parts.store;
    let Some((record, _)) = records::read::<GoalRecord>(store, &inner.keys.goal(goal)).await?
    else {
        // A stale poke or index entry of a goal that no longer exists.
        store.delete(&inner.keys.active(goal), Expect::Any).await?;
        return Ok(Adopted::Finished);
    };
    let Some(lock) = store
        .lock(&inner.keys.goal_lock(goal), inner.config.lock_ttl)
        .await?
    else {
        return Ok(Adopted::Elsewhere);
    };
    if record.status.is_terminal() {
        // Finished, but the driver died before cleaning up: do it now, then release.
        cancel_open_tasks(inner, goal, "the goal ended").await?;
        store.delete(&inner.keys.active(goal), Expect::Any).await?;
        let _ = store.unlock(&lock).await;
        return Ok(Adopted::Finished);
    }
    let Some((plan, _)) = records::read::<Plan>(store, &inner.keys.plan(goal)).await? else {
        let _ = store.unlock(&lock).await;
        return Err(Error::Corrupt {
            key: inner.keys.plan(goal),
            reason: "the goal has no plan".to_owned(),
        });
    };
    let cell = Arc::new(tokio::sync::Mutex::new(GoalRuntime::new(
        goal.clone(),
        Arc::new(plan),
        lock,
    )));
    let mut rt = cell.lock().await;
    lock_map(&inner.goals).insert(goal.clone(), Arc::clone(&cell));
    inner
        .parts
        .events
        .emit_with(Some(goal), None, || EventKind::GoalResumed {
            name: rt.plan.name.clone(),
        });
    rt.rebuild(inner).await?;
    rt.flush(inner).await?;
    rt.check_finished(inner).await?;
    Ok(Adopted::Now)
}

/// Renews the locks of goals driven here and adopts orphaned goals.
async fn upkeep_loop(inner: Arc<Inner>) {
    let period = (inner.config.lock_ttl / 3).max(Duration::from_millis(10));
    loop {
        if let Err(e) = sweep(&inner).await {
            tracing::warn!(error = %e, "looking for unfinished goals failed");
        }
        tokio::time::sleep(period).await;
        let goals: Vec<_> = lock_map(&inner.goals)
            .iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect();
        for (id, cell) in goals {
            let mut rt = cell.lock().await;
            if rt.done {
                continue;
            }
            match inner
                .parts
                .store
                .extend_lock(&rt.lock, inner.config.lock_ttl)
                .await
            {
                Ok(l) => rt.lock = l,
                Err(agentic_store::StoreError::LockLost { .. }) => {
                    // Someone else drives it now (we stalled past the TTL). Let go.
                    tracing::warn!(goal = %id, "goal lock lost; another orchestrator drives it");
                    rt.done = true;
                    lock_map(&inner.goals).remove(&id);
                }
                Err(e) => tracing::warn!(goal = %id, error = %e, "renewing a goal lock failed"),
            }
        }
    }
}

async fn sweep(inner: &Arc<Inner>) -> Result<usize, Error> {
    let prefix = inner.keys.active_prefix();
    let mut cursor: Option<String> = None;
    let mut adopted = 0;
    loop {
        let page = inner
            .parts
            .store
            .scan(&prefix, cursor.as_deref(), 500)
            .await?;
        for (key, _) in &page.items {
            let goal = GoalId(key[prefix.len()..].to_owned());
            if lock_map(&inner.goals).contains_key(&goal) {
                continue;
            }
            if let Adopted::Now = adopt(inner, &goal).await? {
                adopted += 1;
            }
        }
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return Ok(adopted),
        }
    }
}

/// Marks every not-yet-running task of a goal cancelled (running ones stop at their next
/// heartbeat when they see the goal ended).
async fn cancel_open_tasks(inner: &Inner, goal: &GoalId, reason: &str) -> Result<(), Error> {
    for (id, rec) in scan_tasks(inner, goal).await? {
        if !matches!(
            rec.state,
            TaskState::Pending | TaskState::Queued | TaskState::AwaitingApproval
        ) {
            continue;
        }
        let written = records::modify::<TaskRecord, _>(
            &*inner.parts.store,
            &inner.keys.task(goal, &id),
            |r| {
                if !matches!(
                    r.state,
                    TaskState::Pending | TaskState::Queued | TaskState::AwaitingApproval
                ) {
                    return false;
                }
                r.state = TaskState::Cancelled;
                r.error = Some(reason.to_owned());
                r.updated_ms = now_ms();
                true
            },
        )
        .await?;
        if let Modified::Written(..) = written {
            inner
                .parts
                .events
                .emit_with(Some(goal), Some(&id), || EventKind::TaskCancelled {
                    reason: reason.to_owned(),
                });
        }
    }
    Ok(())
}

/// The in-memory index of one driven goal. Rebuilt from the store on takeover.
struct GoalRuntime {
    id: GoalId,
    plan: Arc<Plan>,
    index: FastMap<TaskId, usize>,
    dependents: Vec<Vec<usize>>,
    deps: Vec<Vec<usize>>,
    /// Dependencies of each task not yet succeeded.
    unmet: Vec<u32>,
    /// Last state seen of each task.
    state: Vec<TaskState>,
    terminal: usize,
    failed: usize,
    unsuccessful: usize,
    /// Versions of the records as `submit` wrote them (`None` once used, or after a rebuild).
    versions: Vec<Option<u64>>,
    /// Tasks marked `Queued` (with their dispatch number) and not yet on their queue; see
    /// [`GoalRuntime::flush`].
    to_enqueue: Vec<(usize, u32)>,
    lock: LockGuard,
    done: bool,
}

impl GoalRuntime {
    fn new(id: GoalId, plan: Arc<Plan>, lock: LockGuard) -> Self {
        let n = plan.tasks.len();
        let index: FastMap<TaskId, usize> = plan
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| (t.id.clone(), i))
            .collect();
        let mut deps = vec![Vec::new(); n];
        let mut dependents = vec![Vec::new(); n];
        for (i, t) in plan.tasks.iter().enumerate() {
            for d in &t.depends_on {
                if let Some(&j) = index.get(d)
                    && !deps[i].contains(&j)
                {
                    deps[i].push(j);
                    dependents[j].push(i);
                }
            }
        }
        let unmet = deps.iter().map(|d| d.len() as u32).collect();
        GoalRuntime {
            id,
            plan,
            index,
            dependents,
            deps,
            unmet,
            state: vec![TaskState::Pending; n],
            terminal: 0,
            failed: 0,
            unsuccessful: 0,
            versions: Vec::new(),
            to_enqueue: Vec::new(),
            lock,
            done: false,
        }
    }

    async fn start_roots(&mut self, inner: &Inner) -> Result<(), Error> {
        for i in 0..self.plan.tasks.len() {
            if self.unmet[i] == 0 {
                self.make_ready(inner, i).await?;
            }
        }
        Ok(())
    }

    /// Rebuilds the index from the store and repairs whatever a crash left half-done.
    async fn rebuild(&mut self, inner: &Inner) -> Result<(), Error> {
        let mut found: HashMap<TaskId, TaskRecord> =
            scan_tasks(inner, &self.id).await?.into_iter().collect();
        let order = self.plan.validate()?;
        for &i in &order {
            let id = self.plan.tasks[i].id.clone();
            let rec = match found.remove(&id) {
                Some(r) => r,
                None => {
                    // Submit died before writing this record.
                    let rec = TaskRecord::new(TaskState::Pending);
                    let key = inner.keys.task(&self.id, &id);
                    match records::write(&*inner.parts.store, &key, &rec, Expect::Absent).await {
                        Ok(_) => rec,
                        Err(Error::Store(e)) if e.is_conflict() => {
                            records::read::<TaskRecord>(&*inner.parts.store, &key)
                                .await?
                                .map(|(r, _)| r)
                                .unwrap_or(rec)
                        }
                        Err(e) => return Err(e),
                    }
                }
            };
            self.state[i] = rec.state;
            if rec.state.is_terminal() {
                self.count_terminal(rec.state);
            }
            if rec.state == TaskState::Succeeded {
                for k in self.dependents[i].clone() {
                    self.unmet[k] = self.unmet[k].saturating_sub(1);
                }
            }
        }
        if self.failed > 0 && self.plan.on_failure == FailurePolicy::FailFast {
            return self
                .fail_fast(inner, "a task failed before this orchestrator took over")
                .await;
        }
        for &i in &order {
            match self.state[i] {
                TaskState::Pending => {
                    if let Some(&bad) = self.deps[i].iter().find(|&&d| {
                        matches!(
                            self.state[d],
                            TaskState::Failed | TaskState::Skipped | TaskState::Cancelled
                        )
                    }) {
                        self.skip_from(inner, bad).await?;
                    } else if self.unmet[i] == 0 {
                        self.make_ready(inner, i).await?;
                    }
                }
                // The crash may have come between marking it queued and enqueueing it; the
                // same idempotency key makes the repeat harmless if it did not.
                TaskState::Queued => {
                    let key = inner.keys.task(&self.id, &self.plan.tasks[i].id);
                    let dispatch = records::read::<TaskRecord>(&*inner.parts.store, &key)
                        .await?
                        .map_or(1, |(r, _)| r.dispatch);
                    self.to_enqueue.push((i, dispatch));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn count_terminal(&mut self, state: TaskState) {
        self.terminal += 1;
        if state == TaskState::Failed {
            self.failed += 1;
        }
        if state != TaskState::Succeeded {
            self.unsuccessful += 1;
        }
    }

    /// A task's record changed: apply it.
    /// `hint` is the terminal state the poke carried: a success needs no read-back (terminal
    /// states never change); anything else is read from the store, the truth.
    async fn on_task(
        &mut self,
        inner: &Inner,
        task: &TaskId,
        hint: Option<TaskState>,
    ) -> Result<(), Error> {
        let Some(&i) = self.index.get(task) else {
            return Ok(());
        };
        if self.state[i].is_terminal() {
            return Ok(());
        }
        let rec = if hint == Some(TaskState::Succeeded) {
            TaskRecord::new(TaskState::Succeeded)
        } else {
            let key = inner.keys.task(&self.id, task);
            let Some((rec, _)) = records::read::<TaskRecord>(&*inner.parts.store, &key).await?
            else {
                return Ok(());
            };
            rec
        };
        self.state[i] = rec.state;
        match rec.state {
            TaskState::Succeeded => {
                self.count_terminal(rec.state);
                for k in self.dependents[i].clone() {
                    self.unmet[k] = self.unmet[k].saturating_sub(1);
                    if self.unmet[k] == 0 && self.state[k] == TaskState::Pending {
                        self.make_ready(inner, k).await?;
                    }
                }
            }
            TaskState::Failed => {
                self.count_terminal(rec.state);
                match self.plan.on_failure {
                    FailurePolicy::FailFast => {
                        let reason = format!(
                            "task {} failed: {}",
                            task,
                            rec.error.as_deref().unwrap_or("unknown error")
                        );
                        self.fail_fast(inner, &reason).await?;
                    }
                    FailurePolicy::ContinueOnFailure => self.skip_from(inner, i).await?,
                }
            }
            TaskState::Skipped | TaskState::Cancelled => self.count_terminal(rec.state),
            // Approved: it waited only for the decision.
            TaskState::Pending
                if rec.decision.as_ref().is_some_and(|d| d.approved) && self.unmet[i] == 0 =>
            {
                self.make_ready(inner, i).await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// The goal record changed (a cancel).
    async fn on_goal(&mut self, inner: &Inner) -> Result<(), Error> {
        let Some((record, _)) =
            records::read::<GoalRecord>(&*inner.parts.store, &inner.keys.goal(&self.id)).await?
        else {
            return Ok(());
        };
        if record.status.is_terminal() {
            let reason = record
                .reason
                .unwrap_or_else(|| format!("goal {:?}", record.status));
            self.close(inner, &reason).await?;
        }
        Ok(())
    }

    /// Makes task `i` runnable: holds it for approval, or resolves its input and queues it.
    async fn make_ready(&mut self, inner: &Inner, i: usize) -> Result<(), Error> {
        let spec = &self.plan.tasks[i];
        let key = inner.keys.task(&self.id, &spec.id);
        let needs_approval = spec.requires_approval;
        let mut held = false;
        let decide = |r: &mut TaskRecord| {
            if r.state != TaskState::Pending {
                return false;
            }
            if needs_approval && r.decision.is_none() {
                r.state = TaskState::AwaitingApproval;
                held = true;
            } else {
                r.state = TaskState::Queued;
                r.dispatch += 1;
                held = false;
            }
            r.updated_ms = now_ms();
            true
        };
        let store = &*inner.parts.store;
        let written = match self.versions.get_mut(i).and_then(Option::take) {
            // Unchanged since submit wrote it, unless an approval or a cancel came between.
            Some(v) => {
                records::modify_known(store, &key, TaskRecord::new(TaskState::Pending), v, decide)
                    .await?
            }
            None => records::modify(store, &key, decide).await?,
        };
        let Modified::Written(rec, _) = written else {
            return Ok(());
        };
        self.state[i] = rec.state;
        if held {
            let prompt = format!("approve task {} ({})", spec.id, spec.capability);
            inner
                .parts
                .events
                .emit_with(Some(&self.id), Some(&spec.id), || {
                    EventKind::ApprovalRequested { prompt }
                });
            return Ok(());
        }
        self.to_enqueue.push((i, rec.dispatch));
        Ok(())
    }

    /// Puts the tasks made ready since the last flush on their queues: one `enqueue_batch`
    /// per queue (and per [`FLUSH_BATCH`] jobs), in the order they became ready. The
    /// idempotency key names the task's dispatch, so repeating a flush after a failure or a
    /// crash does not queue a task twice. Tasks not queued because of an error stay for the
    /// next flush, and the error is returned.
    async fn flush(&mut self, inner: &Inner) -> Result<(), Error> {
        if self.to_enqueue.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.to_enqueue);
        let mut first_error = None;
        let mut enqueue_failed = false;
        // (capability, jobs, tasks) per queue; plans use few capabilities.
        let mut batches: Vec<Batch<'_>> = Vec::new();
        let plan = Arc::clone(&self.plan);
        for (i, dispatch) in pending {
            let job = match self.job(inner, i, dispatch).await {
                Ok(job) => job,
                Err(e) => {
                    self.to_enqueue.push((i, dispatch));
                    first_error.get_or_insert(e);
                    continue;
                }
            };
            let capability = plan.tasks[i].capability.as_str();
            match batches.iter_mut().find(|(c, ..)| *c == capability) {
                Some((_, jobs, tasks)) => {
                    jobs.push(job);
                    tasks.push((i, dispatch));
                }
                None => batches.push((capability, vec![job], vec![(i, dispatch)])),
            }
        }
        for (capability, jobs, tasks) in batches {
            let queue = inner.keys.task_queue(capability);
            let mut jobs = jobs.into_iter();
            for tasks in tasks.chunks(FLUSH_BATCH) {
                let chunk: Vec<NewJob> = jobs.by_ref().take(tasks.len()).collect();
                if enqueue_failed {
                    // The queue refused a batch: what is left waits for the next flush
                    // rather than being tried against a queue that is failing now.
                    self.to_enqueue.extend_from_slice(tasks);
                    continue;
                }
                match inner.parts.queue.enqueue_batch(&queue, chunk).await {
                    Ok(_) => {
                        for &(i, _) in tasks {
                            let spec = &plan.tasks[i];
                            inner
                                .parts
                                .events
                                .emit_with(Some(&self.id), Some(&spec.id), || {
                                    EventKind::TaskQueued {
                                        capability: spec.capability.clone(),
                                    }
                                });
                        }
                    }
                    Err(e) => {
                        self.to_enqueue.extend_from_slice(tasks);
                        enqueue_failed = true;
                        first_error.get_or_insert(e.into());
                    }
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The job that runs dispatch `dispatch` of task `i`: its input with `$from` references
    /// resolved from the outputs of the tasks it names.
    async fn job(&self, inner: &Inner, i: usize, dispatch: u32) -> Result<NewJob, Error> {
        let spec = &self.plan.tasks[i];
        let store = &*inner.parts.store;
        let mut outputs: HashMap<&str, Value> = HashMap::new();
        let mut refs = std::collections::BTreeSet::new();
        crate::plan::collect_references(&spec.input, &mut refs);
        for r in refs {
            let dep = TaskId(r.to_owned());
            if let Some((rec, _)) =
                records::read::<TaskRecord>(store, &inner.keys.task(&self.id, &dep)).await?
            {
                outputs.insert(r, rec.output.unwrap_or(Value::Null));
            }
        }
        let input = if outputs.is_empty() {
            spec.input.clone()
        } else {
            resolve_references(&spec.input, &|name| outputs.get(name).cloned()).map_err(
                |reason| Error::Corrupt {
                    key: inner.keys.task(&self.id, &spec.id),
                    reason,
                },
            )?
        };
        let envelope = TaskEnvelope {
            goal: self.id.clone(),
            task: spec.id.clone(),
            capability: spec.capability.clone(),
            tenant: self.plan.tenant.clone(),
            input,
            retry: spec.retry,
            deadline_ms: spec.deadline.map(|d| d.as_millis() as u64),
            delegated: false,
        };
        let mut payload = Vec::with_capacity(256);
        serde_json::to_writer(&mut payload, &envelope)
            .map_err(|e| Error::InvalidInput(e.to_string()))?;
        let dispatch = dispatch.to_string();
        Ok(NewJob::new(payload)
            .priority(spec.priority)
            .max_attempts(TASK_JOB_MAX_DELIVERIES)
            .idempotency_key(crate::state::concat(&[
                &self.id.0, "/", &spec.id.0, "/", &dispatch,
            ])))
    }

    /// Continue-on-failure: every task downstream of `failed` is skipped.
    async fn skip_from(&mut self, inner: &Inner, failed: usize) -> Result<(), Error> {
        let because = self.plan.tasks[failed].id.clone();
        let mut stack = self.dependents[failed].clone();
        while let Some(k) = stack.pop() {
            if self.state[k].is_terminal() {
                continue;
            }
            let id = self.plan.tasks[k].id.clone();
            let written = records::modify::<TaskRecord, _>(
                &*inner.parts.store,
                &inner.keys.task(&self.id, &id),
                |r| {
                    if !matches!(r.state, TaskState::Pending | TaskState::AwaitingApproval) {
                        return false;
                    }
                    r.state = TaskState::Skipped;
                    r.error = Some(format!("dependency {because} did not succeed"));
                    r.updated_ms = now_ms();
                    true
                },
            )
            .await?;
            if let Modified::Written(..) = written {
                self.state[k] = TaskState::Skipped;
                self.count_terminal(TaskState::Skipped);
                inner.parts.events.emit_with(Some(&self.id), Some(&id), || {
                    EventKind::TaskSkipped {
                        because_of: because.clone(),
                    }
                });
                stack.extend(self.dependents[k].iter().copied());
            }
        }
        Ok(())
    }

    /// Fail-fast: the goal fails now; what has not started is cancelled.
    async fn fail_fast(&mut self, inner: &Inner, reason: &str) -> Result<(), Error> {
        set_goal_status(inner, &self.id, GoalStatus::Failed, reason).await?;
        self.close(inner, reason).await
    }

    /// The goal ended (failed or cancelled): cancel open tasks, clean up, tell waiters.
    async fn close(&mut self, inner: &Inner, reason: &str) -> Result<(), Error> {
        cancel_open_tasks(inner, &self.id, reason).await?;
        self.finish(inner).await
    }

    async fn check_finished(&mut self, inner: &Inner) -> Result<(), Error> {
        if self.done || self.terminal < self.plan.tasks.len() {
            return Ok(());
        }
        let status = if self.unsuccessful == 0 {
            GoalStatus::Completed
        } else if self.plan.on_failure == FailurePolicy::ContinueOnFailure {
            GoalStatus::PartiallyCompleted
        } else {
            GoalStatus::Failed
        };
        let reason = if self.failed > 0 {
            format!("{} task(s) failed", self.failed)
        } else {
            String::new()
        };
        set_goal_status(inner, &self.id, status, &reason).await?;
        self.finish(inner).await
    }

    async fn finish(&mut self, inner: &Inner) -> Result<(), Error> {
        if self.done {
            return Ok(());
        }
        let store = &*inner.parts.store;
        let status = records::read::<GoalRecord>(store, &inner.keys.goal(&self.id))
            .await?
            .map_or(GoalStatus::Failed, |(g, _)| g.status);
        store
            .delete(&inner.keys.active(&self.id), Expect::Any)
            .await?;
        self.done = true;
        // The goal ended: what was not queued yet was cancelled in the store (or finished).
        self.to_enqueue.clear();
        lock_map(&inner.goals).remove(&self.id);
        if let Err(e) = store.unlock(&self.lock).await {
            tracing::debug!(goal = %self.id, error = %e, "goal lock already gone");
        }
        inner
            .parts
            .events
            .emit_with(Some(&self.id), None, || EventKind::GoalFinished { status });
        inner.finished.notify_waiters();
        Ok(())
    }
}
