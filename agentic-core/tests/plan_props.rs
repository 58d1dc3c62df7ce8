//! Property tests: plan validation, execution order, retry backoff, and plan JSON.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentic_core::prelude::*;
use agentic_core::{Event, EventKind, PlanError, TaskId};
use proptest::prelude::*;
use serde_json::json;

/// A random DAG: task `i` depends only on tasks `< i` (so it is acyclic by construction).
fn dag(max_tasks: usize) -> impl Strategy<Value = Vec<Vec<usize>>> {
    (1..=max_tasks).prop_flat_map(|n| {
        (0..n)
            .map(|i| {
                if i == 0 {
                    Just(Vec::new()).boxed()
                } else {
                    proptest::collection::vec(0..i, 0..=3.min(i)).boxed()
                }
            })
            .collect::<Vec<_>>()
    })
}

fn plan_of(deps: &[Vec<usize>], capability: &str) -> Plan {
    Plan {
        name: "prop".into(),
        tenant: "default".into(),
        on_failure: FailurePolicy::FailFast,
        tasks: deps
            .iter()
            .enumerate()
            .map(|(i, d)| {
                TaskSpec::new(format!("t{i}").as_str(), capability)
                    .after(d.iter().map(|j| format!("t{j}")))
            })
            .collect(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    /// Every DAG validates, and the order it returns puts each task after its dependencies.
    #[test]
    fn dags_validate_in_dependency_order(deps in dag(40)) {
        let plan = plan_of(&deps, "x");
        let order = plan.validate().unwrap();
        prop_assert_eq!(order.len(), deps.len());
        let pos: HashMap<usize, usize> = order.iter().enumerate().map(|(p, &i)| (i, p)).collect();
        for (i, d) in deps.iter().enumerate() {
            for &j in d {
                prop_assert!(pos[&j] < pos[&i], "t{} ran before its dependency t{}", i, j);
            }
        }
    }

    /// Adding a back edge makes a cycle; the error names a real cycle of the graph.
    #[test]
    fn cycles_are_found_and_named(deps in dag(30), a in 0usize..30, b in 0usize..30) {
        let n = deps.len();
        let (lo, hi) = (a % n, b % n);
        let (lo, hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
        let mut deps = deps;
        // Make hi depend (transitively or directly) on lo, and lo on hi.
        if !deps[hi].contains(&lo) && lo != hi {
            deps[hi].push(lo);
        }
        deps[lo].push(hi);
        let plan = plan_of(&deps, "x");
        match plan.validate() {
            Err(PlanError::Cycle { members }) => {
                prop_assert!(!members.is_empty());
                let idx = |t: &TaskId| t.as_str()[1..].parse::<usize>().unwrap();
                // Each member depends on the next one, the last on the first.
                for w in 0..members.len() {
                    let from = idx(&members[w]);
                    let to = idx(&members[(w + 1) % members.len()]);
                    prop_assert!(deps[from].contains(&to), "t{} does not depend on t{}", from, to);
                }
            }
            other => prop_assert!(false, "expected a cycle, got {:?}", other),
        }
    }

    /// Backoff stays within its bounds: at most the cap, at least half the un-jittered delay.
    #[test]
    fn backoff_is_bounded(failures in 1u32..100, initial_ms in 1u64..5_000, max_ms in 1u64..120_000, mult in 1.0f64..4.0) {
        let policy = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(initial_ms),
            max_backoff: Duration::from_millis(max_ms),
            multiplier: mult,
            jitter: true,
        };
        let raw = (initial_ms as f64 / 1000.0 * mult.powi(failures as i32 - 1)).min(max_ms as f64 / 1000.0);
        let d = policy.delay_after(failures).as_secs_f64();
        prop_assert!(d <= raw + 1e-9, "{} > {}", d, raw);
        prop_assert!(d >= raw / 2.0 - 1e-9, "{} < {}", d, raw / 2.0);
        let exact = RetryPolicy { jitter: false, ..policy }.delay_after(failures).as_secs_f64();
        prop_assert!((exact - raw).abs() < 1e-6);
    }

    /// Plans survive a JSON round trip unchanged.
    #[test]
    fn plan_json_round_trips(deps in dag(20), prio in 0u8..=9, approval in any::<bool>()) {
        let mut plan = plan_of(&deps, "cap");
        for t in &mut plan.tasks {
            t.priority = prio;
            t.requires_approval = approval;
            t.deadline = Some(Duration::from_millis(1500));
            t.input = json!({ "x": [1, 2, { "y": "z" }] });
        }
        let text = plan.to_json().unwrap();
        let back = Plan::from_json(&text).unwrap();
        prop_assert_eq!(back, plan);
    }
}

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Event>>>);

impl agentic_core::EventSink for Log {
    fn emit(&self, event: &Event) {
        self.0.lock().unwrap().push(event.clone());
    }
}

struct Noop;

#[async_trait]
impl Agent for Noop {
    fn card(&self) -> AgentCard {
        AgentCard::new("noop", "noop").concurrency(8)
    }
    async fn run(&self, task: &Task, _cx: &AgentContext) -> Result<TaskOutput, AgentError> {
        // Yield so that runs interleave and a wrong order would show.
        tokio::task::yield_now().await;
        Ok(json!(task.id.as_str()).into())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// Running any DAG starts each task only after all of its dependencies completed, runs
    /// each task exactly once, and completes the goal.
    #[test]
    fn execution_respects_dependencies(deps in dag(25)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let log = Log::default();
        let events = rt.block_on(async {
            let parts = Parts::in_memory().with_sink(log.clone());
            let orchestrator = Orchestrator::start(parts.clone());
            let _worker = Worker::builder(parts).agent(Noop).start();
            let result = tokio::time::timeout(Duration::from_secs(30), orchestrator.run(plan_of(&deps, "noop")))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(result.status, GoalStatus::Completed);
            assert_eq!(result.outputs.len(), deps.len());
            log.0.lock().unwrap().clone()
        });
        let mut completed: HashSet<String> = HashSet::new();
        let mut started: HashSet<String> = HashSet::new();
        for e in &events {
            let Some(task) = &e.task else { continue };
            let i: usize = task.as_str()[1..].parse().unwrap();
            match e.kind {
                EventKind::TaskStarted { .. } => {
                    prop_assert!(started.insert(task.to_string()), "{} started twice", task);
                    for &j in &deps[i] {
                        prop_assert!(completed.contains(&format!("t{j}")), "{} started before t{} completed", task, j);
                    }
                }
                EventKind::TaskCompleted { .. } => {
                    prop_assert!(completed.insert(task.to_string()), "{} completed twice", task);
                }
                _ => {}
            }
        }
        prop_assert_eq!(completed.len(), deps.len());
    }
}

#[test]
fn validation_names_each_problem() {
    let err = Plan::builder("p").build().unwrap_err();
    assert_eq!(err, PlanError::Empty);

    let err = Plan::builder("p")
        .task(TaskSpec::new("a", "x"))
        .task(TaskSpec::new("a", "y"))
        .build()
        .unwrap_err();
    assert_eq!(err, PlanError::DuplicateTask("a".into()));

    let err = Plan::builder("p")
        .task(TaskSpec::new("a", "x").after(["ghost"]))
        .build()
        .unwrap_err();
    assert_eq!(
        err,
        PlanError::UnknownDependency {
            task: "a".into(),
            missing: "ghost".into()
        }
    );
    assert_eq!(
        err.to_string(),
        "task TaskId(\"a\") depends on TaskId(\"ghost\"), which is not in the plan"
    );

    let err = Plan::builder("p")
        .task(TaskSpec::new("a", "x"))
        .task(TaskSpec::new("b", "x").input(json!({ "v": from("a") })))
        .build()
        .unwrap_err();
    assert_eq!(
        err,
        PlanError::InvalidReference {
            task: "b".into(),
            reference: "a".into()
        }
    );

    let err = Plan::builder("p")
        .task(TaskSpec::new("a/b", "x"))
        .build()
        .unwrap_err();
    assert!(matches!(err, PlanError::InvalidTaskId(_)));

    let err = Plan::builder("p")
        .task(TaskSpec::new("a", "x").after(["a"]))
        .build()
        .unwrap_err();
    assert_eq!(
        err,
        PlanError::Cycle {
            members: vec!["a".into()]
        }
    );
    assert_eq!(err.to_string(), "dependency cycle: a -> a");

    let err = Plan::builder("p")
        .task(TaskSpec::new("a", "x").priority(10))
        .build()
        .unwrap_err();
    assert!(matches!(
        err,
        PlanError::InvalidPriority { priority: 10, .. }
    ));

    let err = Plan::from_json("{ not json").unwrap_err();
    assert!(
        err.to_string().starts_with("invalid input: plan JSON"),
        "{err}"
    );
}
