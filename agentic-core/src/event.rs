//! Events: what happened to goals and tasks, sent to [`EventSink`]s.
//!
//! Three sinks ship: [`JsonlSink`] (an append-only decision log, one JSON object per line),
//! [`TracingSink`] (structured `tracing` events) and the broadcast channel behind
//! [`EventBus::subscribe`] (for live UIs and tests).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::broadcast;

use crate::orchestrator::GoalStatus;
use crate::{GoalId, TaskId};

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Wall-clock time in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The goal, if the event belongs to one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goal: Option<GoalId>,
    /// The task, if the event belongs to one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskId>,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// A goal was accepted.
    GoalSubmitted {
        /// The plan's name.
        name: String,
        /// Number of tasks.
        tasks: usize,
    },
    /// An orchestrator took over driving a goal it found unfinished.
    GoalResumed {
        /// The plan's name.
        name: String,
    },
    /// A task was put on its capability's queue.
    TaskQueued {
        /// The capability.
        capability: String,
    },
    /// A worker started running a task.
    TaskStarted {
        /// The agent's name.
        agent: String,
        /// 1 for the first run.
        attempt: u32,
    },
    /// An agent reported progress.
    Progress {
        /// In words.
        message: String,
        /// Optional data.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<Value>,
    },
    /// A task succeeded.
    TaskCompleted {
        /// The agent's name.
        agent: String,
        /// How long the successful run took.
        elapsed_ms: u64,
    },
    /// A run failed and the task will be retried.
    TaskRetried {
        /// The run that failed.
        attempt: u32,
        /// Why.
        error: String,
        /// Delay before the next run.
        delay_ms: u64,
    },
    /// A task failed for good.
    TaskFailed {
        /// Runs made.
        attempts: u32,
        /// The last error.
        error: String,
    },
    /// A job went to the dead-letter place.
    TaskDeadLettered {
        /// The reason recorded with it.
        reason: String,
    },
    /// A task will not run because a dependency failed.
    TaskSkipped {
        /// The dependency that failed.
        because_of: TaskId,
    },
    /// A task was cancelled (goal failed or cancelled, or emergency stop).
    TaskCancelled {
        /// Why.
        reason: String,
    },
    /// A task (or an agent inside its run) waits for a human decision.
    ApprovalRequested {
        /// What is to be approved.
        prompt: String,
    },
    /// A human decided.
    ApprovalGiven {
        /// Approved or rejected.
        approved: bool,
        /// Who decided.
        by: String,
        /// Their note.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    /// A goal reached a final state.
    GoalFinished {
        /// The final state.
        status: GoalStatus,
    },
    /// Emergency stop: workers stop taking work and cancel running agents.
    EmergencyStop {
        /// Why.
        reason: String,
    },
    /// Work resumes after an emergency stop.
    Resumed,
    /// A job could not be decoded and was dead-lettered.
    PoisonMessage {
        /// The queue.
        queue: String,
        /// The reason recorded with it.
        reason: String,
    },
}

impl Event {
    /// An event stamped now.
    pub fn new(goal: Option<&GoalId>, task: Option<&TaskId>, kind: EventKind) -> Self {
        Event {
            at_ms: now_ms(),
            goal: goal.cloned(),
            task: task.cloned(),
            kind,
        }
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

/// Receives events. Called synchronously on the emitting task: keep it quick and never
/// block on I/O for long (buffer, or hand off to a channel).
pub trait EventSink: Send + Sync {
    /// Handles one event.
    fn emit(&self, event: &Event);
}

/// Writes each event as one JSON line: an append-only decision log.
///
/// Every line is flushed as it is written, so a crash loses at most the line being written.
pub struct JsonlSink {
    out: Mutex<BufWriter<File>>,
}

impl std::fmt::Debug for JsonlSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonlSink").finish_non_exhaustive()
    }
}

impl JsonlSink {
    /// Appends to the file at `path`, creating it if needed.
    pub fn append(path: impl AsRef<Path>) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(JsonlSink {
            out: Mutex::new(BufWriter::new(file)),
        })
    }
}

impl EventSink for JsonlSink {
    fn emit(&self, event: &Event) {
        let Ok(line) = serde_json::to_string(event) else {
            return;
        };
        // A poisoned lock only means another thread panicked mid-write; the file is still
        // usable, and losing the decision log would be worse than a torn line.
        let mut out = match self.out.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
            tracing::warn!(error = %e, "could not write to the JSONL decision log");
        }
    }
}

/// Logs every event through `tracing` (target `agentic::events`).
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingSink;

impl EventSink for TracingSink {
    fn emit(&self, event: &Event) {
        let goal = event.goal.as_ref().map(|g| g.0.as_str()).unwrap_or("");
        let task = event.task.as_ref().map(|t| t.0.as_str()).unwrap_or("");
        match &event.kind {
            EventKind::TaskFailed { .. }
            | EventKind::TaskDeadLettered { .. }
            | EventKind::PoisonMessage { .. }
            | EventKind::EmergencyStop { .. } => {
                tracing::warn!(target: "agentic::events", goal, task, event = ?event.kind)
            }
            _ => tracing::info!(target: "agentic::events", goal, task, event = ?event.kind),
        }
    }
}

struct BusInner {
    sinks: RwLock<Vec<Arc<dyn EventSink>>>,
    tx: broadcast::Sender<Event>,
}

/// Fans events out to sinks and to broadcast subscribers. Cheap to clone.
#[derive(Clone)]
pub struct EventBus {
    inner: Arc<BusInner>,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus").finish_non_exhaustive()
    }
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    /// A bus with no sinks; subscribers may join any time.
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(4096);
        EventBus {
            inner: Arc::new(BusInner {
                sinks: RwLock::new(Vec::new()),
                tx,
            }),
        }
    }

    /// Adds a sink.
    pub fn add_sink(&self, sink: Arc<dyn EventSink>) {
        match self.inner.sinks.write() {
            Ok(mut s) => s.push(sink),
            Err(p) => p.into_inner().push(sink),
        }
    }

    /// A live feed of events from now on. A subscriber that falls more than 4096 events
    /// behind gets `RecvError::Lagged` and continues with newer events.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.tx.subscribe()
    }

    /// True when somebody listens (so callers can skip building events nobody reads).
    pub fn is_observed(&self) -> bool {
        self.inner.tx.receiver_count() > 0
            || self
                .inner
                .sinks
                .read()
                .map(|s| !s.is_empty())
                .unwrap_or(true)
    }

    /// Emits an event to every sink and subscriber.
    pub fn emit(&self, event: Event) {
        {
            let sinks = match self.inner.sinks.read() {
                Ok(s) => s,
                Err(p) => p.into_inner(),
            };
            for sink in sinks.iter() {
                sink.emit(&event);
            }
        }
        // No subscribers is fine: events are best-effort notifications, the store is the truth.
        let _ = self.inner.tx.send(event);
    }

    /// Builds and emits an event, only if somebody listens.
    pub fn emit_with(
        &self,
        goal: Option<&GoalId>,
        task: Option<&TaskId>,
        kind: impl FnOnce() -> EventKind,
    ) {
        if self.is_observed() {
            self.emit(Event::new(goal, task, kind()));
        }
    }
}
