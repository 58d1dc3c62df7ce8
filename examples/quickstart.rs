//! Quickstart: a four-agent goal with fan-out and fan-in, on in-memory parts.
//!
//! An architect splits a feature into two modules, two coders write them in parallel, a
//! reviewer joins their work. The LLM is a `ScriptedProvider`, so no key and no server is
//! needed. Run it with:
//!
//! ```sh
//! cargo run --example quickstart
//! ```

use std::time::Instant;

use agentic_core::prelude::*;
use agentic_core::{EventKind, JsonlSink};
use serde_json::{Value, json};

/// Splits the feature into parts (one LLM call).
struct Architect;

#[async_trait]
impl Agent for Architect {
    fn card(&self) -> AgentCard {
        AgentCard::new("architect", "design")
    }

    async fn run(&self, task: &Task, cx: &AgentContext) -> Result<TaskOutput, AgentError> {
        let feature = task.input["feature"].as_str().unwrap_or("a feature");
        let answer = cx
            .llm()
            .complete(
                ChatRequest::user(format!("Split this feature into two modules: {feature}"))
                    .system("You are a software architect. Answer with one module per line."),
            )
            .await?;
        let modules: Vec<String> = answer
            .text_content()
            .lines()
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect();
        cx.progress(format!("designed {} modules", modules.len()));
        Ok(json!({ "feature": feature, "modules": modules }).into())
    }
}

/// Writes one module (one LLM call); two of these run in parallel.
struct Coder;

#[async_trait]
impl Agent for Coder {
    fn card(&self) -> AgentCard {
        AgentCard::new("coder", "code").concurrency(2)
    }

    async fn run(&self, task: &Task, cx: &AgentContext) -> Result<TaskOutput, AgentError> {
        let module = task.input["module"].as_str().unwrap_or("module");
        let answer = cx
            .llm()
            .complete(ChatRequest::user(format!(
                "Write the module `{module}` in Rust."
            )))
            .await?;
        // Keep a draft in the tenant's scoped store, as a real agent might.
        cx.store()
            .put(
                &format!("drafts/{module}"),
                answer.text_content().into_bytes(),
                Default::default(),
            )
            .await?;
        Ok(json!({ "module": module, "code": answer.text_content() }).into())
    }
}

/// Joins both modules and reviews them (one LLM call with both drafts).
struct Reviewer;

#[async_trait]
impl Agent for Reviewer {
    fn card(&self) -> AgentCard {
        AgentCard::new("reviewer", "review")
    }

    async fn run(&self, task: &Task, cx: &AgentContext) -> Result<TaskOutput, AgentError> {
        let drafts: Vec<&Value> = task.input["drafts"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default();
        let listing: String = drafts
            .iter()
            .map(|d| {
                format!(
                    "// {}\n{}\n",
                    d["module"].as_str().unwrap_or("?"),
                    d["code"].as_str().unwrap_or("")
                )
            })
            .collect();
        let answer = cx
            .llm()
            .complete(ChatRequest::new(vec![Message::user(format!(
                "Review this code:\n{listing}"
            ))]))
            .await?;
        Ok(json!({ "verdict": answer.text_content(), "modules_reviewed": drafts.len() }).into())
    }
}

fn scripted_llm() -> ScriptedProvider {
    ScriptedProvider::new()
        .on_contains(
            "Split this feature",
            ChatResponse::text("tokenizer\nparser"),
        )
        .on_contains(
            "`tokenizer`",
            ChatResponse::text(
                "pub fn tokenize(s: &str) -> Vec<&str> { s.split_whitespace().collect() }",
            ),
        )
        .on_contains(
            "`parser`",
            ChatResponse::text("pub fn parse(tokens: &[&str]) -> usize { tokens.len() }"),
        )
        .on_contains(
            "Review this code",
            ChatResponse::text("LGTM: both modules are small, pure and tested by construction."),
        )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    // A decision log next to the build output; every event is one JSON line.
    let log_path = std::env::temp_dir().join("agentic-quickstart.jsonl");
    let _ = std::fs::remove_file(&log_path);
    let parts = Parts::in_memory()
        .with_llm(scripted_llm())
        .with_sink(JsonlSink::append(&log_path)?);

    // Print a timeline of what happens, live.
    let mut events = parts.events.subscribe();
    let timeline = tokio::spawn(async move {
        while let Ok(ev) = events.recv().await {
            let who = ev
                .task
                .as_ref()
                .map(|t| t.to_string())
                .unwrap_or_else(|| "goal".into());
            let what = match &ev.kind {
                EventKind::GoalSubmitted { name, tasks } => {
                    format!("submitted {name:?} with {tasks} tasks")
                }
                EventKind::TaskQueued { capability } => format!("queued for {capability}"),
                EventKind::TaskStarted { agent, attempt } => {
                    format!("started by {agent} (attempt {attempt})")
                }
                EventKind::Progress { message, .. } => format!("progress: {message}"),
                EventKind::TaskCompleted { agent, elapsed_ms } => {
                    format!("completed by {agent} in {elapsed_ms} ms")
                }
                EventKind::GoalFinished { status } => format!("finished: {status:?}"),
                other => format!("{other:?}"),
            };
            println!(
                "  {:>5} ms  {who:<10} {what}",
                started.elapsed().as_millis()
            );
            if matches!(ev.kind, EventKind::GoalFinished { .. }) {
                break;
            }
        }
    });

    let orchestrator = Orchestrator::start(parts.clone());
    let worker = Worker::builder(parts)
        .agent(Architect)
        .agent(Coder)
        .agent(Reviewer)
        .start();

    // design -> (code-tokenizer, code-parser) -> review
    let plan = Plan::builder("tiny-compiler")
        .task(
            TaskSpec::new("design", "design")
                .input(json!({ "feature": "a tiny compiler front end" })),
        )
        .task(
            TaskSpec::new("code-a", "code")
                .after(["design"])
                .input(json!({ "module": from_pointer("design", "/modules/0") })),
        )
        .task(
            TaskSpec::new("code-b", "code")
                .after(["design"])
                .input(json!({ "module": from_pointer("design", "/modules/1") })),
        )
        .task(
            TaskSpec::new("review", "review")
                .after(["code-a", "code-b"])
                .input(json!({ "drafts": [from("code-a"), from("code-b")] })),
        )
        .build()?;

    println!("agentic quickstart: 4 agents, fan-out and fan-in, in-memory parts\n");
    let result = orchestrator.run(plan).await?;
    let _ = timeline.await;
    worker.shutdown().await;

    println!("\nresult: {:?}", result.status);
    println!("  modules: {}", result.outputs["design"]["modules"]);
    println!("  review:  {}", result.outputs["review"]["verdict"]);
    println!("decision log: {}", log_path.display());
    println!("done in {} ms", started.elapsed().as_millis());
    if result.status != GoalStatus::Completed {
        return Err(format!("goal ended {:?}: {:?}", result.status, result.reason).into());
    }
    Ok(())
}
