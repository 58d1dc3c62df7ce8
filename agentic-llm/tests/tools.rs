//! Tool calling: schemas generated from argument types, the tool-use loop (parallel calls,
//! errors fed back to the model, step limit), streaming or not.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use agentic_llm::stream::StreamEvent;
use agentic_llm::tool::{
    FnTool, Tool, ToolError, ToolRunStop, ToolSet, run_with_tools, run_with_tools_streaming,
    schema_of,
};
use agentic_llm::{ChatRequest, ChatResponse, ContentBlock, Cost, Role, ScriptedProvider, Usage};
use async_trait::async_trait;
use serde_json::json;
use tokio::time::Instant;

/// Arguments of the weather tool.
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[allow(dead_code)]
struct WeatherArgs {
    /// The city, e.g. "Paris".
    city: String,
    /// Units; Celsius when absent.
    units: Option<Units>,
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
enum Units {
    Celsius,
    Fahrenheit,
}

/// Answers after a pause, so that concurrency shows in elapsed time.
struct Weather {
    calls: Arc<AtomicUsize>,
}

#[async_trait]
impl Tool for Weather {
    type Args = WeatherArgs;
    type Output = serde_json::Value;

    fn name(&self) -> &str {
        "get_weather"
    }

    fn description(&self) -> &str {
        "Current weather of a city."
    }

    async fn call(&self, args: WeatherArgs) -> Result<serde_json::Value, ToolError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(1)).await;
        if args.city == "Atlantis" {
            return Err(ToolError::new("no such city"));
        }
        let degrees = match args.units {
            Some(Units::Fahrenheit) => 68,
            _ => 20,
        };
        Ok(json!({ "city": args.city, "degrees": degrees }))
    }
}

fn weather() -> (Weather, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    (
        Weather {
            calls: Arc::clone(&calls),
        },
        calls,
    )
}

fn calls(response_calls: &[(&str, &str, serde_json::Value)]) -> ChatResponse {
    ChatResponse {
        content: response_calls
            .iter()
            .map(|(id, name, input)| ContentBlock::ToolUse {
                id: (*id).into(),
                name: (*name).into(),
                input: input.clone(),
            })
            .collect(),
        stop_reason: agentic_llm::StopReason::ToolUse,
        usage: Usage {
            input_tokens: 10,
            output_tokens: 5,
            ..Usage::default()
        },
        cost: Some(Cost { usd: 0.25 }),
        ..ChatResponse::default()
    }
}

#[test]
fn the_schema_comes_from_the_argument_type() {
    let schema = schema_of::<WeatherArgs>();
    assert_eq!(schema["type"], "object");
    assert_eq!(schema["required"], json!(["city"]));
    assert_eq!(schema["properties"]["city"]["type"], "string");
    assert_eq!(
        schema["properties"]["city"]["description"],
        "The city, e.g. \"Paris\"."
    );
    assert!(schema.get("$schema").is_none());
    assert!(schema.get("title").is_none());
    let (tool, _) = weather();
    let definition = Tool::definition(&tool);
    assert_eq!(definition.name, "get_weather");
    assert_eq!(definition.description, "Current weather of a city.");
    assert_eq!(definition.input_schema, schema);
    // The enum's values are in the schema (inline or under $defs).
    assert!(schema.to_string().contains("fahrenheit"));
}

#[tokio::test(start_paused = true)]
async fn several_calls_run_concurrently_and_results_go_back_in_order() {
    let (tool, count) = weather();
    let llm = ScriptedProvider::new()
        .then(calls(&[
            ("c1", "get_weather", json!({"city": "Paris"})),
            (
                "c2",
                "get_weather",
                json!({"city": "Boston", "units": "fahrenheit"}),
            ),
            ("c3", "get_weather", json!({"city": "Lima"})),
        ]))
        .then(ChatResponse {
            usage: Usage {
                input_tokens: 20,
                output_tokens: 7,
                ..Usage::default()
            },
            cost: Some(Cost { usd: 0.5 }),
            ..ChatResponse::text("Paris 20, Boston 68, Lima 20.")
        });
    let tools = ToolSet::new().with(tool);
    let started = Instant::now();
    let run = run_with_tools(&llm, ChatRequest::user("weather?"), &tools, 5)
        .await
        .unwrap();
    // Three one-second tools in one second: they ran concurrently.
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    assert_eq!(count.load(Ordering::SeqCst), 3);
    assert_eq!(run.stop, ToolRunStop::FinalAnswer);
    assert_eq!(run.steps, 2);
    assert_eq!(run.response.text_content(), "Paris 20, Boston 68, Lima 20.");
    assert_eq!(run.usage.input_tokens, 30);
    assert_eq!(run.usage.output_tokens, 12);
    assert_eq!(run.cost, Some(Cost { usd: 0.75 }));
    // user, assistant (calls), user (results), assistant (answer)
    assert_eq!(run.messages.len(), 4);
    let second = &llm.calls()[1];
    assert_eq!(
        second.tools.len(),
        1,
        "the tool set's definitions were sent"
    );
    let results = &second.messages[2];
    assert_eq!(results.role, Role::User);
    assert_eq!(
        results.content,
        vec![
            ContentBlock::tool_result("c1", "{\"city\":\"Paris\",\"degrees\":20}"),
            ContentBlock::tool_result("c2", "{\"city\":\"Boston\",\"degrees\":68}"),
            ContentBlock::tool_result("c3", "{\"city\":\"Lima\",\"degrees\":20}"),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn failures_go_back_to_the_model_as_error_results() {
    let (tool, _) = weather();
    let llm = ScriptedProvider::new()
        .then(calls(&[
            ("c1", "get_weather", json!({"city": "Atlantis"})),
            ("c2", "get_weather", json!({"town": "Paris"})),
            ("c3", "teleport", json!({})),
        ]))
        .then(ChatResponse::text("sorry"));
    let tools = ToolSet::new().with(tool).with(FnTool::new(
        "echo",
        "Echoes.",
        json!({"type": "object"}),
        |args| async move { Ok(args.to_string()) },
    ));
    let run = run_with_tools(&llm, ChatRequest::user("x"), &tools, 5)
        .await
        .unwrap();
    assert_eq!(run.response.text_content(), "sorry");
    let results = &llm.calls()[1].messages[2].content;
    let text = |i: usize| match &results[i] {
        ContentBlock::ToolResult {
            content, is_error, ..
        } => {
            assert!(*is_error, "result {i} is an error");
            content[0].as_text().unwrap().to_owned()
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(text(0), "no such city");
    assert!(
        text(1).starts_with("invalid arguments for tool get_weather: missing field `city`"),
        "{}",
        text(1)
    );
    assert_eq!(
        text(2),
        "unknown tool \"teleport\"; available: echo, get_weather"
    );
}

#[tokio::test]
async fn the_loop_stops_at_the_step_limit() {
    let llm =
        ScriptedProvider::new().respond_with(|_| Ok(calls(&[("again", "echo", json!({"n": 1}))])));
    let tools = ToolSet::new().with(FnTool::new(
        "echo",
        "Echoes.",
        json!({"type": "object"}),
        |args| async move { Ok(args.to_string()) },
    ));
    let run = run_with_tools(&llm, ChatRequest::user("loop"), &tools, 3)
        .await
        .unwrap();
    assert_eq!(run.stop, ToolRunStop::StepLimit);
    assert_eq!(run.steps, 3);
    assert_eq!(llm.call_count(), 3);
    // The last request for tools was not executed: the transcript ends with it.
    assert_eq!(run.messages.last().unwrap().role, Role::Assistant);
}

#[tokio::test(start_paused = true)]
async fn the_streaming_loop_shows_every_event() {
    let (tool, _) = weather();
    let llm = ScriptedProvider::new()
        .then(calls(&[("c1", "get_weather", json!({"city": "Oslo"}))]))
        .then(ChatResponse::text("It is 20 degrees in Oslo."));
    let mut text = String::new();
    let mut tool_fragments = 0;
    let run = run_with_tools_streaming(
        &llm,
        ChatRequest::user("weather in Oslo?"),
        &ToolSet::new().with(tool),
        4,
        |event| match event {
            StreamEvent::TextDelta { text: t, .. } => text.push_str(t),
            StreamEvent::ToolInputDelta { .. } => tool_fragments += 1,
            _ => {}
        },
    )
    .await
    .unwrap();
    assert_eq!(text, "It is 20 degrees in Oslo.");
    assert!(tool_fragments > 1, "arguments were streamed in pieces");
    assert_eq!(run.steps, 2);
    assert_eq!(run.response.text_content(), text);
}

#[test]
fn tool_errors_convert_from_std_errors() {
    fn parse(s: &str) -> Result<i32, ToolError> {
        Ok(s.parse::<i32>()?)
    }
    assert_eq!(parse("12"), Ok(12));
    assert_eq!(
        parse("x").unwrap_err().to_string(),
        "invalid digit found in string"
    );
}
