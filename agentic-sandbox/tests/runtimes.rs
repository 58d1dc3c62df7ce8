//! Python and JavaScript source through the runtimes the sandbox is given: output, inputs,
//! exit codes, and each limit naming the right reason. Skips (printed) when the runtimes are
//! not installed; `.ci/install-sandbox-deps` installs them.

#![cfg(feature = "wasm")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::OnceLock;
use std::time::Duration;

use agentic_sandbox::{
    ExecOutcome, ExecRequest, Language, Limits, Sandbox, SandboxError, Termination, WasmSandbox,
    WasmSandboxConfig,
};

/// One sandbox per test binary: the runtimes are compiled (or loaded from the on-disk cache)
/// once, then every test only instantiates them. Not tied to any test's Tokio runtime.
fn sandbox(language: Language, test: &str) -> Option<&'static WasmSandbox> {
    static SANDBOX: OnceLock<Option<WasmSandbox>> = OnceLock::new();
    let sandbox = SANDBOX.get_or_init(|| {
        let mut config = WasmSandboxConfig::default().cache_dir(support::cache_dir());
        config.python_wasm = support::python_wasm();
        config.javascript_wasm = support::qjs_wasm();
        Some(WasmSandbox::new(config).unwrap())
    });
    let sandbox = sandbox.as_ref()?;
    if sandbox.capabilities().languages.contains(&language) {
        Some(sandbox)
    } else {
        support::skip(test, &format!("no {language:?} runtime found"));
        None
    }
}

fn limits() -> Limits {
    Limits {
        wall_time: Duration::from_secs(20),
        ..Limits::default()
    }
}

async fn py(test: &str, code: &str, limits: Limits) -> Option<ExecOutcome> {
    let sandbox = sandbox(Language::Python, test)?;
    Some(
        sandbox
            .execute(ExecRequest::source(Language::Python, code).limits(limits))
            .await
            .unwrap(),
    )
}

async fn js(test: &str, code: &str, limits: Limits) -> Option<ExecOutcome> {
    let sandbox = sandbox(Language::JavaScript, test)?;
    Some(
        sandbox
            .execute(ExecRequest::source(Language::JavaScript, code).limits(limits))
            .await
            .unwrap(),
    )
}

// ---------------------------------------------------------------------------------- Python

#[tokio::test]
async fn python_prints_and_exits_zero() {
    let Some(outcome) = py("python_prints_and_exits_zero", "print('hi')", limits()).await else {
        return;
    };
    assert_eq!(
        outcome.termination,
        Termination::Exited { code: 0 },
        "{}",
        outcome.stderr_text()
    );
    assert_eq!(outcome.stdout_text(), "hi\n");
    assert!(outcome.usage.fuel_used.unwrap() > 0);
    assert!(outcome.usage.peak_memory_bytes.unwrap() > 0);
}

#[tokio::test]
async fn python_gets_args_env_and_stdin_and_nothing_else() {
    let Some(sandbox) = sandbox(Language::Python, "python_gets_args_env_and_stdin") else {
        return;
    };
    let code = "import os, sys\n\
                print(sys.argv[1:])\n\
                print(sorted(k for k in os.environ))\n\
                print(os.environ.get('GREETING'))\n\
                print(sys.stdin.read().upper())";
    let outcome = sandbox
        .execute(
            ExecRequest::source(Language::Python, code)
                .arg("one")
                .arg("--two")
                .env("GREETING", "hello")
                .stdin("from stdin")
                .limits(limits()),
        )
        .await
        .unwrap();
    assert!(outcome.success(), "{}", outcome.stderr_text());
    assert_eq!(
        outcome.stdout_text(),
        "['one', '--two']\n['GREETING']\nhello\nFROM STDIN\n"
    );
}

#[tokio::test]
async fn python_exit_codes_and_exceptions() {
    let Some(outcome) = py("python_exit_codes", "import sys; sys.exit(3)", limits()).await else {
        return;
    };
    assert_eq!(outcome.termination, Termination::Exited { code: 3 });

    let outcome = py("python_exit_codes", "raise ValueError('boom')", limits())
        .await
        .unwrap();
    assert_eq!(outcome.termination, Termination::Exited { code: 1 });
    let stderr = outcome.stderr_text();
    assert!(
        stderr.contains("Traceback") && stderr.contains("ValueError: boom"),
        "{stderr}"
    );
}

#[tokio::test]
async fn python_busy_loop_runs_out_of_fuel() {
    let limits = Limits {
        // Startup takes about 250 million units; this leaves some for the loop.
        fuel: Some(600_000_000),
        ..limits()
    };
    let Some(outcome) = py("python_busy_loop_fuel", "while True: pass", limits).await else {
        return;
    };
    assert_eq!(outcome.termination, Termination::OutOfFuel);
    assert_eq!(outcome.usage.fuel_used, Some(600_000_000));
}

#[tokio::test]
async fn python_busy_loop_hits_the_wall_clock() {
    let limits = Limits {
        fuel: Some(u64::MAX),
        wall_time: Duration::from_secs(2),
        ..limits()
    };
    let Some(outcome) = py("python_busy_loop_wall", "while True: pass", limits).await else {
        return;
    };
    assert_eq!(outcome.termination, Termination::Timeout);
    assert!(outcome.usage.wall_time < Duration::from_secs(4));
}

#[tokio::test]
async fn python_sleeping_past_the_limit_times_out() {
    let limits = Limits {
        wall_time: Duration::from_secs(2),
        ..limits()
    };
    let Some(outcome) = py("python_sleep", "import time; time.sleep(3600)", limits).await else {
        return;
    };
    assert_eq!(outcome.termination, Termination::Timeout);
    assert!(outcome.usage.wall_time < Duration::from_secs(4));
}

#[tokio::test]
async fn python_memory_bomb_is_out_of_memory() {
    let limits = Limits {
        memory_bytes: Some(64 * 1024 * 1024),
        ..limits()
    };
    let code = "chunks = []\nwhile True: chunks.append(bytearray(8 * 1024 * 1024))";
    let Some(outcome) = py("python_memory_bomb", code, limits).await else {
        return;
    };
    assert_eq!(
        outcome.termination,
        Termination::OutOfMemory,
        "{}",
        outcome.stderr_text()
    );
    assert!(
        outcome.stderr_text().contains("MemoryError"),
        "{}",
        outcome.stderr_text()
    );
    assert!(outcome.usage.peak_memory_bytes.unwrap() <= 64 * 1024 * 1024);
}

#[tokio::test]
async fn python_deep_recursion_is_contained() {
    // Python-level recursion stops at the interpreter's limit...
    let code = "def f(n): return f(n + 1) + 1\nf(0)";
    let Some(outcome) = py("python_recursion", code, limits()).await else {
        return;
    };
    assert_eq!(outcome.termination, Termination::Exited { code: 1 });
    assert!(
        outcome.stderr_text().contains("RecursionError"),
        "{}",
        outcome.stderr_text()
    );

    // ...and with the limit lifted, recursion through C stops at the sandbox's limits
    // (whichever the interpreter meets first), never in the host.
    let code = "import sys\nsys.setrecursionlimit(10**8)\nx = []\n\
                for _ in range(10**5): x = [x]\nprint(repr(x)[:10])";
    let generous = Limits {
        fuel: Some(20_000_000_000),
        ..limits()
    };
    let outcome = py("python_recursion", code, generous).await.unwrap();
    match &outcome.termination {
        Termination::Trap { message } => assert!(message.contains("stack"), "{message}"),
        Termination::Exited { code } => {
            assert_ne!(*code, 0);
            assert!(
                outcome.stderr_text().contains("RecursionError"),
                "{}",
                outcome.stderr_text()
            );
        }
        Termination::OutOfMemory => {}
        other => panic!("unexpected {other:?}: {}", outcome.stderr_text()),
    }
}

#[tokio::test]
async fn python_output_flood_stops_at_the_limit() {
    let limits = Limits {
        output_bytes: 10_000,
        ..limits()
    };
    let code = "import sys\nwhile True: sys.stdout.write('x' * 1000 + '\\n')";
    let Some(outcome) = py("python_output_flood", code, limits).await else {
        return;
    };
    assert_eq!(outcome.termination, Termination::OutputLimit);
    assert_eq!(outcome.stdout.len(), 10_000);
    assert!(outcome.stdout_truncated);
}

#[tokio::test]
async fn python_sees_no_host_files_and_no_network() {
    let code = "import os\n\
                for p in ['/etc/passwd', '/../etc/passwd', '/proc/self/environ']:\n\
                \x20   try:\n\
                \x20       print(p, open(p).read()[:20])\n\
                \x20   except OSError as e:\n\
                \x20       print(p, 'denied', type(e).__name__)\n\
                try:\n\
                \x20   import socket\n\
                \x20   s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n\
                \x20   s.connect(('127.0.0.1', 22))\n\
                \x20   print('socket connected')\n\
                except Exception as e:\n\
                \x20   print('socket denied', type(e).__name__)";
    let Some(outcome) = py("python_no_files_no_network", code, limits()).await else {
        return;
    };
    let stdout = outcome.stdout_text();
    assert!(outcome.success(), "{stdout}{}", outcome.stderr_text());
    assert!(!stdout.contains("root:"), "{stdout}");
    assert_eq!(stdout.matches("denied").count(), 4, "{stdout}");
}

#[tokio::test]
async fn python_second_run_is_warm() {
    let Some(first) = py("python_warm", "print(1)", limits()).await else {
        return;
    };
    let second = py("python_warm", "print(2)", limits()).await.unwrap();
    assert_eq!(first.stdout_text(), "1\n");
    assert_eq!(second.stdout_text(), "2\n");
    // Only instantiation and interpreter start-up: no compilation on the second run. Debug
    // builds on a loaded machine are slow, hence the loose bound.
    assert!(
        second.usage.wall_time < Duration::from_secs(3),
        "{:?}",
        second.usage.wall_time
    );
}

// ------------------------------------------------------------------------------ JavaScript

#[tokio::test]
async fn javascript_prints_and_exits_zero() {
    let Some(outcome) = js("javascript_prints", "console.log('hi', 6 * 7)", limits()).await else {
        return;
    };
    assert_eq!(
        outcome.termination,
        Termination::Exited { code: 0 },
        "{}",
        outcome.stderr_text()
    );
    assert_eq!(outcome.stdout_text(), "hi 42\n");
}

#[tokio::test]
async fn javascript_gets_args_and_stdin() {
    let Some(sandbox) = sandbox(Language::JavaScript, "javascript_args_stdin") else {
        return;
    };
    let code = "console.log(JSON.stringify(scriptArgs));\
                console.log(std.getenv('GREETING'));\
                console.log(std.in.readAsString().toUpperCase())";
    let outcome = sandbox
        .execute(
            ExecRequest::source(Language::JavaScript, code)
                .arg("-e")
                .arg("two")
                .env("GREETING", "hello")
                .stdin("from stdin")
                .limits(limits()),
        )
        .await
        .unwrap();
    assert!(outcome.success(), "{}", outcome.stderr_text());
    assert_eq!(
        outcome.stdout_text(),
        "[\"-e\",\"two\"]\nhello\nFROM STDIN\n",
        "the user's args are not parsed as qjs options"
    );
}

#[tokio::test]
async fn javascript_exit_codes_and_exceptions() {
    let Some(outcome) = js("javascript_exit_codes", "std.exit(4)", limits()).await else {
        return;
    };
    assert_eq!(outcome.termination, Termination::Exited { code: 4 });

    let outcome = js(
        "javascript_exit_codes",
        "throw new TypeError('boom')",
        limits(),
    )
    .await
    .unwrap();
    assert_eq!(outcome.termination, Termination::Exited { code: 1 });
    assert!(
        outcome.stderr_text().contains("TypeError: boom"),
        "{}",
        outcome.stderr_text()
    );

    let outcome = js("javascript_exit_codes", "this is not javascript", limits())
        .await
        .unwrap();
    assert_eq!(outcome.termination, Termination::Exited { code: 1 });
    assert!(
        outcome.stderr_text().contains("SyntaxError"),
        "{}",
        outcome.stderr_text()
    );
}

#[tokio::test]
async fn javascript_busy_loop_fuel_and_wall_clock() {
    let fuel = Limits {
        fuel: Some(50_000_000),
        ..limits()
    };
    let Some(outcome) = js("javascript_busy_loop", "for (;;) {}", fuel).await else {
        return;
    };
    assert_eq!(outcome.termination, Termination::OutOfFuel);

    let wall = Limits {
        fuel: Some(u64::MAX),
        wall_time: Duration::from_secs(1),
        ..limits()
    };
    let outcome = js("javascript_busy_loop", "for (;;) {}", wall)
        .await
        .unwrap();
    assert_eq!(outcome.termination, Termination::Timeout);
}

#[tokio::test]
async fn javascript_memory_bomb_is_out_of_memory() {
    // Fuel to spare, so that memory is what ends it (filling arrays in an interpreter is
    // slow work).
    let limits = Limits {
        memory_bytes: Some(32 * 1024 * 1024),
        fuel: Some(20_000_000_000),
        ..limits()
    };
    let code = "const keep = []; for (;;) keep.push(new Array(1 << 20).fill(1.5));";
    let Some(outcome) = js("javascript_memory_bomb", code, limits).await else {
        return;
    };
    assert_eq!(
        outcome.termination,
        Termination::OutOfMemory,
        "{}",
        outcome.stderr_text()
    );
}

#[tokio::test]
async fn javascript_deep_recursion_is_contained() {
    let code = "function f(n) { return f(n + 1) + 1 } f(0)";
    let Some(outcome) = js("javascript_recursion", code, limits()).await else {
        return;
    };
    match &outcome.termination {
        Termination::Exited { code: 1 } => {
            assert!(
                outcome.stderr_text().contains("stack"),
                "{}",
                outcome.stderr_text()
            )
        }
        Termination::Trap { message } => assert!(message.contains("stack"), "{message}"),
        other => panic!("unexpected {other:?}: {}", outcome.stderr_text()),
    }
}

#[tokio::test]
async fn javascript_output_flood_stops_at_the_limit() {
    let limits = Limits {
        output_bytes: 5_000,
        ..limits()
    };
    let code = "for (;;) console.log('y'.repeat(99))";
    let Some(outcome) = js("javascript_output_flood", code, limits).await else {
        return;
    };
    assert_eq!(outcome.termination, Termination::OutputLimit);
    assert_eq!(outcome.stdout.len(), 5_000);
}

#[tokio::test]
async fn javascript_sees_no_host_files() {
    let code = "for (const p of ['/etc/passwd', '/../etc/passwd']) {\
                  const f = std.open(p, 'r');\
                  console.log(p, f === null ? 'denied' : f.readAsString().slice(0, 20));\
                }\
                console.log(typeof os.exec);";
    let Some(outcome) = js("javascript_no_files", code, limits()).await else {
        return;
    };
    let stdout = outcome.stdout_text();
    assert!(outcome.success(), "{stdout}{}", outcome.stderr_text());
    assert!(!stdout.contains("root:"), "{stdout}");
    assert_eq!(stdout.matches("denied").count(), 2, "{stdout}");
}

#[tokio::test]
async fn source_with_nul_bytes_is_refused() {
    let Some(sandbox) = sandbox(Language::JavaScript, "source_with_nul") else {
        return;
    };
    assert!(matches!(
        sandbox
            .execute(ExecRequest::source(Language::JavaScript, "1\0"))
            .await,
        Err(SandboxError::InvalidRequest(_))
    ));
}
