//! A streamed answer with a tool call.
//!
//! ```sh
//! cargo run --example llm_chat                                   # offline: a scripted model
//! ANTHROPIC_API_KEY=sk-ant-... cargo run --example llm_chat --features anthropic
//! OPENAI_API_KEY=sk-...        cargo run --example llm_chat --features openai
//! ```
//!
//! The model is asked about the weather, calls the `get_weather` tool, gets its result and
//! streams its answer, which is printed as it arrives. The provider is wrapped in a timeout,
//! a retry and a cost meter, so the run ends with its token usage and its price.
//!
//! Without a key (or without the provider's feature) it explains how to set one up and runs
//! against a `ScriptedProvider` that plays the same conversation, so it always exits 0
//! offline.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use agentic_core::llm::layers::{LayerExt, PriceTable, RetryPolicy, Timeouts, UnknownModel};
use agentic_core::llm::stream::StreamEvent;
use agentic_core::llm::tool::{FnTool, ToolRunStop, ToolSet, run_with_tools_streaming};
use agentic_core::llm::{ChatRequest, ChatResponse, LlmProvider, ScriptedProvider};
use serde_json::json;

/// The tool the model may call. A real one would ask a weather service.
fn weather_tool() -> FnTool {
    FnTool::new(
        "get_weather",
        "Current weather for a city: temperature in Celsius and conditions.",
        json!({
            "type": "object",
            "properties": {
                "city": { "type": "string", "description": "City name, e.g. \"Lisbon\"" }
            },
            "required": ["city"]
        }),
        |args| async move {
            let city = args["city"].as_str().unwrap_or("somewhere").to_owned();
            println!("\n  [tool] get_weather({city:?})");
            Ok(
                json!({ "city": city, "celsius": 21, "conditions": "sunny, light breeze" })
                    .to_string(),
            )
        },
    )
}

/// The offline stand-in: asks for the tool, then answers from its result.
fn scripted() -> ScriptedProvider {
    ScriptedProvider::new()
        .with_name("scripted")
        .then(ChatResponse::tool_call(
            "call_1",
            "get_weather",
            json!({ "city": "Lisbon" }),
        ))
        .respond_with(|request| {
            // Answer from whatever the tool returned, as a model would.
            let result = request
                .messages
                .last()
                .map(|m| format!("{:?}", m.content))
                .unwrap_or_default();
            let sunny = result.contains("sunny");
            Ok(ChatResponse::text(if sunny {
                "It is 21 °C and sunny in Lisbon, with a light breeze: a good day for a walk by the river."
            } else {
                "I could not get the weather for Lisbon."
            }))
        })
}

/// A real provider when a key and its feature are there; otherwise why not, and `None`.
fn real_provider() -> Option<(Arc<dyn LlmProvider>, String)> {
    #[cfg(feature = "anthropic")]
    if std::env::var_os("ANTHROPIC_API_KEY").is_some() {
        use agentic_core::llm::anthropic::{AnthropicConfig, AnthropicProvider};
        match AnthropicConfig::from_env().and_then(AnthropicProvider::new) {
            Ok(provider) => return Some((Arc::new(provider), "claude-haiku-4-5".to_owned())),
            Err(error) => eprintln!("Anthropic is not usable: {error}"),
        }
    }
    #[cfg(feature = "openai")]
    if std::env::var_os("OPENAI_API_KEY").is_some() {
        use agentic_core::llm::openai::{OpenAiConfig, OpenAiProvider};
        match OpenAiConfig::from_env().and_then(OpenAiProvider::new) {
            Ok(provider) => return Some((Arc::new(provider), "gpt-4o-mini".to_owned())),
            Err(error) => eprintln!("OpenAI is not usable: {error}"),
        }
    }
    let features = [
        (
            "ANTHROPIC_API_KEY",
            "anthropic",
            cfg!(feature = "anthropic"),
        ),
        ("OPENAI_API_KEY", "openai", cfg!(feature = "openai")),
    ];
    for (var, feature, on) in features {
        if std::env::var_os(var).is_some() && !on {
            println!(
                "{var} is set, but the `{feature}` feature is off: add `--features {feature}`."
            );
        }
    }
    None
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (provider, model) = match real_provider() {
        Some(found) => found,
        None => {
            println!(
                "No usable LLM provider (key and feature), so this runs against a scripted model.\n\
                 To talk to a real one, set a key and turn on its provider:\n  \
                 ANTHROPIC_API_KEY=sk-ant-... cargo run --example llm_chat --features anthropic\n  \
                 OPENAI_API_KEY=sk-...        cargo run --example llm_chat --features openai\n"
            );
            (
                Arc::new(scripted()) as Arc<dyn LlmProvider>,
                "scripted".to_owned(),
            )
        }
    };
    println!("provider: {} (model {model})\n", provider.name());

    // Resilience and accounting around whichever provider it is. The scripted model is
    // free; a real model missing from the price table is priced like the dearest one.
    let unknown = if model == "scripted" {
        UnknownModel::Free
    } else {
        UnknownModel::MostExpensive
    };
    let llm = provider
        .with_timeout(Timeouts::call(Duration::from_secs(120)).first_token(Duration::from_secs(30)))
        .with_retry(RetryPolicy::default())
        .with_cost_meter(PriceTable::builtin())
        .unknown_models(unknown);

    let tools = ToolSet::new().with(weather_tool());
    let request =
        ChatRequest::user("What's the weather like in Lisbon right now? Answer in one sentence.")
            .model(model)
            .system("You are a concise assistant. Use the tools you have when they help.")
            .max_tokens(400);

    print!("assistant: ");
    let run = run_with_tools_streaming(&llm, request, &tools, 4, |event| {
        if let StreamEvent::TextDelta { text, .. } = event {
            print!("{text}");
            let _ = std::io::stdout().flush();
        }
    })
    .await?;
    println!();

    if run.stop == ToolRunStop::StepLimit {
        println!("(stopped at the step limit)");
    }
    println!(
        "\n{} model call(s), {} tokens in, {} out; cost: {}",
        run.steps,
        run.usage.input_tokens + run.usage.cache_read_tokens + run.usage.cache_write_tokens,
        run.usage.output_tokens,
        run.cost
            .map_or("unknown".to_owned(), |c| format!("${:.6}", c.usd)),
    );
    Ok(())
}
