//! Workers: take tasks off the queues, run agents under a lease heartbeat, record results.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use agentic_queue::{Delivery, NewJob, Retry};
use agentic_store::ScopedStore;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::agent::{Agent, AgentContext, AgentError, Task};
use crate::event::EventKind;
use crate::orchestrator::GoalStatus;
use crate::records::{self, Modified};
use crate::state::{GoalRecord, Keys, Poke, StopRecord, TaskEnvelope, TaskRecord, TaskState};
use crate::{Error, FastMap, GoalId, Parts, TaskId};

/// Deliveries a task job may have on its queue. Runs and failures are counted in the task's
/// record, not by the queue (an emergency stop gives jobs back without counting a failure),
/// so this only guards against a job that cycles forever.
pub const TASK_JOB_MAX_DELIVERIES: u32 = 1000;

/// Worker settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// A name for events and records (default: `worker-<random>`).
    pub name: String,
    /// Lease of each task; the worker heartbeats every third of it.
    pub lease: Duration,
    /// Longest one dequeue call waits for work.
    pub poll_wait: Duration,
    /// How often the emergency-stop flag is read.
    pub stop_poll: Duration,
    /// Most jobs taken in one dequeue (bounded also by free concurrency).
    pub batch: usize,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            name: format!("worker-{:08x}", fastrand::u32(..)),
            lease: Duration::from_secs(30),
            poll_wait: Duration::from_secs(1),
            stop_poll: Duration::from_millis(200),
            batch: 64,
        }
    }
}

/// Builds a [`Worker`].
pub struct WorkerBuilder {
    parts: Parts,
    config: WorkerConfig,
    agents: Vec<Arc<dyn Agent>>,
}

impl std::fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("config", &self.config)
            .field("agents", &self.agents.len())
            .finish()
    }
}

impl WorkerBuilder {
    /// Registers an agent for the capabilities on its card.
    pub fn agent(mut self, agent: impl Agent) -> Self {
        self.agents.push(Arc::new(agent));
        self
    }

    /// Registers a shared agent.
    pub fn agent_arc(mut self, agent: Arc<dyn Agent>) -> Self {
        self.agents.push(agent);
        self
    }

    /// Replaces the settings.
    pub fn config(mut self, config: WorkerConfig) -> Self {
        self.config = config;
        self
    }

    /// Sets the task lease.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.config.lease = lease;
        self
    }

    /// Sets the worker's name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// Starts the worker's loops on the current tokio runtime.
    pub fn start(self) -> Worker {
        let keys = Keys::new(&self.parts.namespace);
        let shutdown = CancellationToken::new();
        let (stop_tx, stop_rx) = watch::channel(false);
        let inner = Arc::new(WorkerInner {
            parts: self.parts,
            keys,
            config: self.config,
            stopped: stop_rx,
            shutdown: shutdown.clone(),
            running_goals: Mutex::new(FastMap::default()),
        });
        let mut handles = Vec::new();
        handles.push(AbortOnDropHandle::new(tokio::spawn(watch_stop_flag(
            Arc::clone(&inner),
            stop_tx,
        ))));
        for agent in self.agents {
            let card = agent.card();
            // One semaphore per agent, shared by its capabilities: the card's concurrency is
            // per agent on this worker, whatever queue the work comes from.
            let permits = Arc::new(Semaphore::new(card.max_concurrency.max(1)));
            for capability in &card.capabilities {
                // Before the first dequeue: a broker that pushes deliveries (RabbitMQ) sizes
                // this process's prefetch for the queue by it.
                inner.parts.queue.consumer_concurrency(
                    &inner.keys.task_queue(capability),
                    card.max_concurrency.max(1),
                );
                handles.push(AbortOnDropHandle::new(tokio::spawn(consume(
                    Arc::clone(&inner),
                    Arc::clone(&agent),
                    card.name.clone(),
                    capability.clone(),
                    Arc::clone(&permits),
                ))));
            }
        }
        Worker {
            inner,
            handles: Mutex::new(handles),
        }
    }
}

/// Runs agents. Dropping a `Worker` aborts its loops and running agents at once, like a
/// crash: their leases expire and the tasks are redelivered elsewhere. Call
/// [`Worker::shutdown`] to stop gracefully (running tasks are given back to the queue).
pub struct Worker {
    inner: Arc<WorkerInner>,
    handles: Mutex<Vec<AbortOnDropHandle<()>>>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("name", &self.inner.config.name)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A builder over `parts`.
    pub fn builder(parts: Parts) -> WorkerBuilder {
        WorkerBuilder {
            parts,
            config: WorkerConfig::default(),
            agents: Vec::new(),
        }
    }

    /// The worker's name.
    pub fn name(&self) -> &str {
        &self.inner.config.name
    }

    /// Stops taking work, cancels running agents and gives their tasks back to the queue
    /// (no failure counted), then waits for the loops to end.
    pub async fn shutdown(self) {
        self.inner.shutdown.cancel();
        let handles = match self.handles.lock() {
            Ok(mut h) => std::mem::take(&mut *h),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        };
        for h in handles {
            let _ = h.await;
        }
    }
}

struct WorkerInner {
    parts: Parts,
    keys: Keys,
    config: WorkerConfig,
    stopped: watch::Receiver<bool>,
    shutdown: CancellationToken,
    /// Goals recently seen running, so a burst of tasks of one goal reads its record once per
    /// `stop_poll` instead of once per task. A cancel is still seen within `stop_poll` at
    /// pickup, and by running tasks at their next heartbeat.
    running_goals: Mutex<FastMap<GoalId, tokio::time::Instant>>,
}

impl WorkerInner {
    /// The goal's status: `None` if the goal does not exist.
    async fn goal_status(&self, goal: &GoalId) -> Result<Option<GoalStatus>, Error> {
        let now = tokio::time::Instant::now();
        let fresh = lock(&self.running_goals)
            .get(goal)
            .is_some_and(|seen| now.duration_since(*seen) < self.config.stop_poll);
        if fresh {
            return Ok(Some(GoalStatus::Running));
        }
        let status = records::read::<GoalRecord>(&*self.parts.store, &self.keys.goal(goal))
            .await?
            .map(|(g, _)| g.status);
        let mut seen = lock(&self.running_goals);
        if status == Some(GoalStatus::Running) {
            // Bounded: entries are only useful for `stop_poll`, so drop them all when many.
            if seen.len() >= 4096 {
                seen.clear();
            }
            seen.insert(goal.clone(), now);
        } else {
            seen.remove(goal);
        }
        Ok(status)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Mirrors the store's emergency-stop flag into a watch channel, so every loop and running
/// task reacts to it without reading the store itself.
async fn watch_stop_flag(inner: Arc<WorkerInner>, tx: watch::Sender<bool>) {
    let key = inner.keys.stop();
    loop {
        match records::read::<StopRecord>(&*inner.parts.store, &key).await {
            Ok(rec) => {
                let stopped = rec.is_some_and(|(r, _)| r.stopped);
                tx.send_if_modified(|v| {
                    let changed = *v != stopped;
                    *v = stopped;
                    changed
                });
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the emergency-stop flag"),
        }
        tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            _ = tokio::time::sleep(inner.config.stop_poll) => {}
        }
    }
}

async fn consume(
    inner: Arc<WorkerInner>,
    agent: Arc<dyn Agent>,
    agent_name: String,
    capability: String,
    permits: Arc<Semaphore>,
) {
    let queue_name = inner.keys.task_queue(&capability);
    let mut stopped = inner.stopped.clone();
    // Runs live in this set: when the loop is aborted (the Worker dropped) the set is
    // dropped too and every run is aborted with it, exactly like a crashed process.
    let mut runs = JoinSet::new();
    let mut backoff = Duration::from_millis(50);
    loop {
        // Let the runs spawned last time (and the orchestrator) go first: the next dequeue
        // then takes what they made ready as one batch instead of one job at a time. On an
        // idle runtime this costs one trip through the scheduler.
        tokio::task::yield_now().await;
        while let Some(done) = runs.try_join_next() {
            if let Err(e) = done
                && e.is_panic()
            {
                tracing::error!(queue = %queue_name, "an agent panicked; its job will be redelivered after its lease");
            }
        }
        if inner.shutdown.is_cancelled() {
            break;
        }
        if *stopped.borrow_and_update() {
            tokio::select! {
                _ = inner.shutdown.cancelled() => break,
                _ = stopped.changed() => continue,
            }
        }
        let first = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = inner.shutdown.cancelled() => break,
        };
        let mut held = vec![first];
        while held.len() < inner.config.batch.max(1) {
            match Arc::clone(&permits).try_acquire_owned() {
                Ok(p) => held.push(p),
                Err(_) => break,
            }
        }
        let result = tokio::select! {
            r = inner.parts.queue.dequeue(&queue_name, held.len(), inner.config.lease, inner.config.poll_wait) => r,
            _ = inner.shutdown.cancelled() => break,
            _ = stopped.changed() => continue,
        };
        match result {
            Ok(deliveries) => {
                backoff = Duration::from_millis(50);
                // Each run starts here, in this loop's task. A run that finishes at its first
                // poll (an agent that answers at once, over in-process parts) then costs no
                // task spawn and no wake-up of another thread, which on a small machine cost
                // more than the run. A run that has to wait (network, an LLM call) is spawned
                // at that point and goes on by itself. Once one run has held the loop for
                // longer than `INLINE_BUDGET` (an agent computing without awaiting), the rest
                // of the batch is spawned straight away, so such agents still run in parallel.
                let mut inline = true;
                for (delivery, permit) in deliveries.into_iter().zip(held.drain(..)) {
                    let inner = Arc::clone(&inner);
                    let agent = Arc::clone(&agent);
                    let agent_name = agent_name.clone();
                    // Boxed: the run's state is a few KB; a box is allocated once and moves
                    // into a spawned task without copying that state.
                    let mut run: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async move {
                        handle_delivery(&inner, &*agent, &agent_name, delivery).await;
                        drop(permit);
                    });
                    if inline {
                        let started = std::time::Instant::now();
                        let polled = std::future::poll_fn(|cx| {
                            Poll::Ready(std::panic::catch_unwind(AssertUnwindSafe(|| {
                                run.as_mut().poll(cx)
                            })))
                        })
                        .await;
                        inline = started.elapsed() < INLINE_BUDGET;
                        match polled {
                            Ok(Poll::Ready(())) => continue,
                            // Spawned below; its first poll there registers its own waker.
                            Ok(Poll::Pending) => {}
                            Err(_) => {
                                // As for a spawned run that panics: the job stays leased
                                // and is delivered again when its lease runs out.
                                tracing::error!(queue = %queue_name, "an agent panicked; its job will be redelivered after its lease");
                                continue;
                            }
                        }
                    }
                    runs.spawn(run);
                }
            }
            Err(e) => {
                // A broker hiccup must never end the loop: log, back off, try again.
                tracing::warn!(queue = %queue_name, error = %e, "dequeue failed; retrying");
                tokio::select! {
                    _ = inner.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    // Graceful shutdown: let running tasks see the cancellation and give their jobs back.
    while runs.join_next().await.is_some() {}
}

/// Longest a run may take at its first poll, inside the consume loop, before the loop stops
/// running the rest of its batch inline and spawns them instead (see `consume`).
const INLINE_BUDGET: Duration = Duration::from_micros(200);

/// Why a run was cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CutShort {
    Stop,
    Shutdown,
    GoalEnded,
    LeaseLost,
}

async fn handle_delivery(
    inner: &WorkerInner,
    agent: &dyn Agent,
    agent_name: &str,
    delivery: Delivery,
) {
    let queue = &inner.parts.queue;
    let events = &inner.parts.events;
    let lease = &delivery.lease;
    let mut envelope: TaskEnvelope = match serde_json::from_slice(&delivery.payload) {
        Ok(e) => e,
        Err(e) => {
            let reason = format!("undecodable task payload: {e}");
            events.emit_with(None, None, || EventKind::PoisonMessage {
                queue: lease.queue.clone(),
                reason: reason.clone(),
            });
            if let Err(e) = queue.nack(lease, Retry::DeadLetter, &reason).await {
                tracing::warn!(error = %e, "could not dead-letter a poison task job");
            }
            return;
        }
    };
    if let Err(e) = run_task(inner, agent, agent_name, &delivery, &mut envelope).await {
        // Store or queue trouble: give the job back for a later try rather than lose it.
        tracing::warn!(goal = %envelope.goal, task = %envelope.task, error = %e, "task handling failed; job returned to the queue");
        let _ = queue
            .nack(
                lease,
                Retry::After(Duration::from_millis(500)),
                &e.to_string(),
            )
            .await;
    }
}

async fn run_task(
    inner: &WorkerInner,
    agent: &dyn Agent,
    agent_name: &str,
    delivery: &Delivery,
    env: &mut TaskEnvelope,
) -> Result<(), Error> {
    let store = &*inner.parts.store;
    let queue = &inner.parts.queue;
    let events = &inner.parts.events;
    let lease = &delivery.lease;
    if *inner.stopped.borrow() {
        queue
            .nack(lease, Retry::After(Duration::ZERO), "emergency stop")
            .await?;
        return Ok(());
    }
    let task_key = inner.keys.task(&env.goal, &env.task);
    let Some(goal_status) = inner.goal_status(&env.goal).await? else {
        let reason = format!("goal {} does not exist", env.goal);
        queue.nack(lease, Retry::DeadLetter, &reason).await?;
        events.emit_with(Some(&env.goal), Some(&env.task), || {
            EventKind::TaskDeadLettered { reason }
        });
        return Ok(());
    };
    if goal_status != GoalStatus::Running {
        let reason = format!("goal is {goal_status:?}");
        cancel_record(store, &task_key, &reason).await?;
        queue.ack(lease).await.or_else(ignore_lease_lost)?;
        poke(inner, env, None).await?;
        return Ok(());
    }

    // Claim the task. A record still `Running` means the previous run's worker stopped
    // heartbeating (it died or stalled past its lease): that run counts as a failure, when
    // this delivery is that run's job coming back. A delivery of another job for the running
    // task, first or repeated, is a duplicate (an orchestrator that took the goal over
    // re-enqueued it after the queue's dedupe window had passed, or on a queue without
    // dedupe): it must not take the task over. If the run's own worker died, its own job
    // comes back when its lease expires, and that takes over.
    let max_attempts = env.retry.max_attempts.max(1);
    let worker_name = &inner.config.name;
    let job_id = lease.job_id.as_str();
    let duplicate = |r: &TaskRecord| r.job.as_deref().is_some_and(|j| j != job_id);
    let claimed = records::modify::<TaskRecord, _>(store, &task_key, |r| match r.state {
        TaskState::Queued => {
            r.state = TaskState::Running;
            r.runs += 1;
            r.worker = Some(worker_name.clone());
            r.job = Some(job_id.to_owned());
            r.updated_ms = crate::event::now_ms();
            true
        }
        TaskState::Running if duplicate(r) => false,
        TaskState::Running => {
            r.failures += 1;
            r.error = Some(format!(
                "run {} was abandoned: its worker {} stopped heartbeating and the lease expired",
                r.runs,
                r.worker.as_deref().unwrap_or("?")
            ));
            if r.failures >= max_attempts {
                r.state = TaskState::Failed;
            } else {
                r.runs += 1;
                r.worker = Some(worker_name.clone());
                r.job = Some(job_id.to_owned());
            }
            r.updated_ms = crate::event::now_ms();
            true
        }
        _ => false,
    })
    .await?;
    let (record, version) = match claimed {
        Modified::Missing => {
            let reason = format!("task {} has no record in goal {}", env.task, env.goal);
            queue.nack(lease, Retry::DeadLetter, &reason).await?;
            events.emit_with(Some(&env.goal), Some(&env.task), || {
                EventKind::TaskDeadLettered { reason }
            });
            return Ok(());
        }
        Modified::Unchanged(r) if r.state.is_terminal() => {
            // A duplicate delivery of a finished task (e.g. the ack was lost): finish the job
            // and repeat the poke in case the first one was lost too.
            queue.ack(lease).await.or_else(ignore_lease_lost)?;
            poke(inner, env, Some(r.state)).await?;
            return Ok(());
        }
        Modified::Unchanged(r) if r.state == TaskState::Running && duplicate(&r) => {
            // Dedupe by the task record: the run in progress owns the task.
            tracing::info!(goal = %env.goal, task = %env.task, job = %job_id, "duplicate job of a running task dropped");
            queue.ack(lease).await.or_else(ignore_lease_lost)?;
            return Ok(());
        }
        Modified::Unchanged(r) => {
            let reason = format!("task is {:?}, not queued: the job is stale", r.state);
            queue.nack(lease, Retry::DeadLetter, &reason).await?;
            events.emit_with(Some(&env.goal), Some(&env.task), || {
                EventKind::TaskDeadLettered { reason }
            });
            return Ok(());
        }
        Modified::Written(r, v) => (r, v),
    };
    if record.state == TaskState::Failed {
        let error = record.error.clone().unwrap_or_default();
        finish_failed(inner, env, lease, record.runs, &error).await?;
        return Ok(());
    }
    let my_run = record.runs;
    // The record as this run claimed it: the result is written against this version, so no
    // read is needed unless someone changed the record meanwhile.
    let claimed_record = record;
    events.emit_with(Some(&env.goal), Some(&env.task), || {
        EventKind::TaskStarted {
            agent: agent_name.to_owned(),
            attempt: my_run,
        }
    });

    // Run the agent under a heartbeat, the stop flag and the deadline.
    let cancel = inner.shutdown.child_token();
    let cut_short: Arc<Mutex<Option<CutShort>>> = Arc::new(Mutex::new(None));
    let shared_lease = Arc::new(Mutex::new(lease.clone()));
    let cx = AgentContext {
        llm: Arc::clone(&inner.parts.llm),
        store: ScopedStore::new(
            Arc::clone(&inner.parts.store),
            inner.keys.tenant_prefix(&env.tenant),
        ),
        sandbox: Arc::clone(&inner.parts.sandbox),
        cancel: cancel.clone(),
        events: events.clone(),
        goal: env.goal.clone(),
        task: env.task.clone(),
        tenant: env.tenant.clone(),
        queue: Arc::clone(queue),
        root_store: Arc::clone(&inner.parts.store),
        keys: inner.keys.clone(),
        lease: Arc::clone(&shared_lease),
        lease_duration: inner.config.lease,
        delegations: Mutex::new(0),
        poll_interval: Duration::from_millis(200),
    };
    // The task lends its fields to the agent's `Task` for the run (moved, not copied) and
    // gets them back after it.
    let mut task = Task {
        goal: std::mem::replace(&mut env.goal, GoalId(String::new())),
        id: std::mem::replace(&mut env.task, TaskId(String::new())),
        capability: std::mem::take(&mut env.capability),
        input: std::mem::take(&mut env.input),
        attempt: my_run,
        max_attempts,
        tenant: std::mem::take(&mut env.tenant),
    };
    let started = tokio::time::Instant::now();
    let deadline = env.deadline_ms.map(Duration::from_millis);
    let outcome = {
        let mut run = std::pin::pin!(run_with_deadline(agent, &task, &cx, deadline));
        // An agent that finishes at its first poll needs no heartbeat: the guard (and its
        // timers) is only set up, on the heap, for runs that wait. That keeps the per-delivery
        // task small and cheap to spawn.
        match futures::poll!(run.as_mut()) {
            Poll::Ready(r) => r,
            Poll::Pending => {
                // The guard runs in this task beside the agent (no spawn per delivery): it
                // heartbeats, watches the stop flag and the goal, and ends the select when it
                // cancels the run.
                let guard = Box::pin(guard_run(
                    Arc::clone(&inner.parts.queue),
                    Arc::clone(&inner.parts.store),
                    inner.keys.goal(&task.goal),
                    Arc::clone(&shared_lease),
                    inner.config.lease,
                    inner.stopped.clone(),
                    cancel.clone(),
                    Arc::clone(&cut_short),
                    inner.shutdown.clone(),
                ));
                tokio::select! {
                    biased;
                    r = run.as_mut() => r,
                    () = guard => Err(AgentError::cancelled()),
                    _ = cancel.cancelled() => Err(AgentError::cancelled()),
                }
            }
        }
    };
    let elapsed = started.elapsed();
    env.goal = std::mem::replace(&mut task.goal, GoalId(String::new()));
    env.task = std::mem::replace(&mut task.id, TaskId(String::new()));
    env.capability = std::mem::take(&mut task.capability);
    env.tenant = std::mem::take(&mut task.tenant);
    let lease = match shared_lease.lock() {
        Ok(l) => l.clone(),
        Err(p) => p.into_inner().clone(),
    };
    let reason = match cut_short.lock() {
        Ok(r) => *r,
        Err(p) => *p.into_inner(),
    }
    .or_else(|| inner.shutdown.is_cancelled().then_some(CutShort::Shutdown));

    let mine = |r: &TaskRecord| r.state == TaskState::Running && r.runs == my_run;
    match (outcome, reason) {
        (_, Some(CutShort::LeaseLost)) => {
            // Another worker owns the task now; whatever this run produced is discarded.
            tracing::warn!(goal = %env.goal, task = %env.task, "lease lost; run discarded");
        }
        (_, Some(cut @ (CutShort::Stop | CutShort::Shutdown))) => {
            // Give the task back without counting a failure: it runs again after resume.
            records::modify_known(
                store,
                &task_key,
                claimed_record,
                version,
                |r: &mut TaskRecord| {
                    if !mine(r) {
                        return false;
                    }
                    r.state = TaskState::Queued;
                    r.runs -= 1;
                    r.updated_ms = crate::event::now_ms();
                    true
                },
            )
            .await?;
            let why = if cut == CutShort::Stop {
                "emergency stop"
            } else {
                "worker shutting down"
            };
            queue
                .nack(&lease, Retry::After(Duration::ZERO), why)
                .await
                .or_else(ignore_lease_lost_nack)?;
            events.emit_with(Some(&env.goal), Some(&env.task), || {
                EventKind::TaskCancelled {
                    reason: format!("{why}; the task will run again"),
                }
            });
        }
        (_, Some(CutShort::GoalEnded)) => {
            cancel_record(store, &task_key, "the goal ended while the task ran").await?;
            queue.ack(&lease).await.or_else(ignore_lease_lost)?;
            poke(inner, env, None).await?;
        }
        (Ok(output), None) => {
            let written = records::modify_known(
                store,
                &task_key,
                claimed_record,
                version,
                |r: &mut TaskRecord| {
                    if !mine(r) {
                        return false;
                    }
                    r.state = TaskState::Succeeded;
                    r.output = Some(output.0.clone());
                    r.error = None;
                    r.updated_ms = crate::event::now_ms();
                    true
                },
            )
            .await?;
            if let Modified::Written(..) = written {
                queue.ack(&lease).await.or_else(ignore_lease_lost)?;
                events.emit_with(Some(&env.goal), Some(&env.task), || {
                    EventKind::TaskCompleted {
                        agent: agent_name.to_owned(),
                        elapsed_ms: elapsed.as_millis() as u64,
                    }
                });
                poke(inner, env, Some(TaskState::Succeeded)).await?;
            }
        }
        (Err(err), None) => {
            let mut retry_in = None;
            let written = records::modify_known(
                store,
                &task_key,
                claimed_record,
                version,
                |r: &mut TaskRecord| {
                    if !mine(r) {
                        return false;
                    }
                    r.failures += 1;
                    r.error = Some(err.message.clone());
                    r.updated_ms = crate::event::now_ms();
                    if err.retryable && r.failures < max_attempts {
                        r.state = TaskState::Queued;
                        retry_in = Some(env.retry.delay_after(r.failures));
                    } else {
                        r.state = TaskState::Failed;
                        retry_in = None;
                    }
                    true
                },
            )
            .await?;
            if let Modified::Written(r, _) = written {
                match retry_in {
                    Some(delay) => {
                        queue
                            .nack(&lease, Retry::After(delay), &err.message)
                            .await
                            .or_else(ignore_lease_lost_nack)?;
                        events.emit_with(Some(&env.goal), Some(&env.task), || {
                            EventKind::TaskRetried {
                                attempt: my_run,
                                error: err.message.clone(),
                                delay_ms: delay.as_millis() as u64,
                            }
                        });
                    }
                    None => finish_failed(inner, env, &lease, r.runs, &err.message).await?,
                }
            }
        }
    }
    Ok(())
}

async fn run_with_deadline(
    agent: &dyn Agent,
    task: &Task,
    cx: &AgentContext,
    deadline: Option<Duration>,
) -> Result<crate::TaskOutput, AgentError> {
    match deadline {
        None => agent.run(task, cx).await,
        Some(d) => match tokio::time::timeout(d, agent.run(task, cx)).await {
            Ok(r) => r,
            Err(_) => {
                cx.cancel.cancel();
                Err(AgentError::retryable(format!("deadline of {d:?} exceeded")))
            }
        },
    }
}

/// Heartbeats the lease, watches the stop flag and the goal's status while an agent runs;
/// cancels the run (recording why) when any of them says stop.
#[allow(clippy::too_many_arguments)]
async fn guard_run(
    queue: Arc<dyn agentic_queue::TaskQueue>,
    store: Arc<dyn agentic_store::StateStore>,
    goal_key: String,
    lease: Arc<Mutex<agentic_queue::Lease>>,
    lease_for: Duration,
    mut stopped: watch::Receiver<bool>,
    cancel: CancellationToken,
    cut_short: Arc<Mutex<Option<CutShort>>>,
    shutdown: CancellationToken,
) {
    let set = |why: CutShort| {
        match cut_short.lock() {
            Ok(mut r) => *r = Some(why),
            Err(p) => *p.into_inner() = Some(why),
        }
        cancel.cancel();
    };
    let beat = (lease_for / 3).max(Duration::from_millis(10));
    loop {
        if *stopped.borrow_and_update() {
            return set(CutShort::Stop);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return set(CutShort::Shutdown),
            _ = stopped.changed() => continue,
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(beat) => {}
        }
        let current = match lease.lock() {
            Ok(l) => l.clone(),
            Err(p) => p.into_inner().clone(),
        };
        match queue.extend_lease(&current, lease_for).await {
            Ok(extended) => match lease.lock() {
                Ok(mut l) => *l = extended,
                Err(p) => *p.into_inner() = extended,
            },
            Err(agentic_queue::QueueError::LeaseLost { .. }) => return set(CutShort::LeaseLost),
            // A transient failure: the next beat tries again, well inside the lease.
            Err(e) => tracing::warn!(error = %e, "lease heartbeat failed"),
        }
        match records::read::<GoalRecord>(&*store, &goal_key).await {
            Ok(Some((g, _))) if g.status != GoalStatus::Running => return set(CutShort::GoalEnded),
            Ok(None) => return set(CutShort::GoalEnded),
            _ => {}
        }
    }
}

async fn finish_failed(
    inner: &WorkerInner,
    env: &TaskEnvelope,
    lease: &agentic_queue::Lease,
    runs: u32,
    error: &str,
) -> Result<(), Error> {
    let reason = format!("failed after {runs} run(s): {error}");
    inner
        .parts
        .queue
        .nack(lease, Retry::DeadLetter, &reason)
        .await
        .or_else(ignore_lease_lost_nack)?;
    let events = &inner.parts.events;
    events.emit_with(Some(&env.goal), Some(&env.task), || EventKind::TaskFailed {
        attempts: runs,
        error: error.to_owned(),
    });
    events.emit_with(Some(&env.goal), Some(&env.task), || {
        EventKind::TaskDeadLettered { reason }
    });
    poke(inner, env, Some(TaskState::Failed)).await
}

async fn cancel_record(
    store: &dyn agentic_store::StateStore,
    key: &str,
    reason: &str,
) -> Result<(), Error> {
    records::modify::<TaskRecord, _>(store, key, |r| {
        if r.state.is_terminal() {
            return false;
        }
        r.state = TaskState::Cancelled;
        r.error = Some(reason.to_owned());
        r.updated_ms = crate::event::now_ms();
        true
    })
    .await?;
    Ok(())
}

/// Tells the orchestrators that a plan task changed. Subtasks are awaited by their
/// delegating agent, not by the orchestrator.
/// `state` is the task's terminal state when this worker just recorded it (or found it
/// recorded): the orchestrator can then skip reading the record back.
async fn poke(
    inner: &WorkerInner,
    env: &TaskEnvelope,
    state: Option<TaskState>,
) -> Result<(), Error> {
    if env.delegated {
        return Ok(());
    }
    send_poke(
        &inner.parts,
        &inner.keys,
        Poke {
            goal: env.goal.clone(),
            task: Some(env.task.clone()),
            state: state.filter(|s| s.is_terminal()),
        },
    )
    .await
}

pub(crate) async fn send_poke(parts: &Parts, keys: &Keys, poke: Poke) -> Result<(), Error> {
    let payload = serde_json::to_vec(&poke).map_err(|e| Error::InvalidInput(e.to_string()))?;
    parts
        .queue
        .enqueue(
            &keys.control_queue(),
            NewJob::new(payload).max_attempts(TASK_JOB_MAX_DELIVERIES),
        )
        .await?;
    Ok(())
}

fn ignore_lease_lost(e: agentic_queue::QueueError) -> Result<(), agentic_queue::QueueError> {
    match e {
        // The result is already recorded in the store by compare-and-set; a lost ack only
        // means the queue may deliver the job once more, and that delivery will find the
        // task finished.
        agentic_queue::QueueError::LeaseLost { .. } => Ok(()),
        e => Err(e),
    }
}

fn ignore_lease_lost_nack(
    e: agentic_queue::QueueError,
) -> Result<agentic_queue::NackOutcome, agentic_queue::QueueError> {
    match e {
        agentic_queue::QueueError::LeaseLost { .. } => Ok(agentic_queue::NackOutcome::DeadLettered),
        e => Err(e),
    }
}
