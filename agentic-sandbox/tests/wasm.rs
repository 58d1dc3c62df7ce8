//! `WasmSandbox` with hand-written WAT guests: each limit stops the guest and the outcome
//! names the right reason, output is kept up to the limit, inputs reach the guest and nothing
//! else does, and compiled modules are reused.

#![cfg(feature = "wasm")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use agentic_sandbox::{
    ExecOutcome, ExecRequest, Language, Limits, PoolingOptions, Sandbox, SandboxError, Termination,
    WasmSandbox, WasmSandboxConfig,
};

const WASI: &str = r#"
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
"#;

/// A command module with the WASI imports above, one page of memory, and `body` as `_start`.
fn guest(extra: &str, body: &str) -> Vec<u8> {
    format!(
        r#"(module {WASI}
             (memory (export "memory") 1)
             {extra}
             (func (export "_start") {body}))"#
    )
    .into_bytes()
}

/// Writes `len` bytes at `ptr` to `fd` (iovec at 0, count at 8).
fn write_call(fd: u32, ptr: u32, len: u32) -> String {
    format!(
        "(i32.store (i32.const 0) (i32.const {ptr}))
         (i32.store (i32.const 4) (i32.const {len}))
         (drop (call $fd_write (i32.const {fd}) (i32.const 0) (i32.const 1) (i32.const 8)))"
    )
}

fn hello() -> Vec<u8> {
    guest(r#"(data (i32.const 64) "hello\n")"#, &write_call(1, 64, 6))
}

fn sandbox() -> WasmSandbox {
    WasmSandbox::new(WasmSandboxConfig::default()).unwrap()
}

async fn run(sandbox: &WasmSandbox, request: ExecRequest) -> ExecOutcome {
    sandbox.execute(request).await.unwrap()
}

fn limits() -> Limits {
    Limits {
        wall_time: Duration::from_secs(10),
        ..Limits::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_world_exits_zero_with_its_output() {
    let sandbox = sandbox();
    let outcome = run(&sandbox, ExecRequest::wasm(hello())).await;
    assert_eq!(outcome.termination, Termination::Exited { code: 0 });
    assert_eq!(outcome.stdout_text(), "hello\n");
    assert!(outcome.stderr.is_empty());
    assert!(!outcome.stdout_truncated);
    let fuel = outcome.usage.fuel_used.unwrap();
    assert!(fuel > 0 && fuel < 1_000, "fuel used: {fuel}");
    assert_eq!(outcome.usage.peak_memory_bytes, Some(65_536));
    for protection in [
        "wasm",
        "fuel",
        "epoch_deadline",
        "memory_limit",
        "no_network",
        "no_filesystem",
    ] {
        assert!(
            outcome.enforced.iter().any(|p| p == protection),
            "{protection}: {:?}",
            outcome.enforced
        );
    }
}

#[tokio::test]
async fn stderr_is_captured_separately() {
    let module = guest(r#"(data (i32.const 64) "oops")"#, &write_call(2, 64, 4));
    let outcome = run(&sandbox(), ExecRequest::wasm(module)).await;
    assert!(outcome.success());
    assert_eq!(outcome.stderr_text(), "oops");
    assert!(outcome.stdout.is_empty());
}

#[tokio::test]
async fn text_and_binary_modules_are_both_accepted() {
    // The smallest command module, in binary: type () -> (), one function, exported as _start.
    let binary = vec![
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
        0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type section
        0x03, 0x02, 0x01, 0x00, // function section
        0x07, 0x0a, 0x01, 0x06, b'_', b's', b't', b'a', b'r', b't', 0x00, 0x00, // export
        0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b, // code: empty body
    ];
    let sandbox = sandbox();
    assert!(run(&sandbox, ExecRequest::wasm(binary)).await.success());
    assert!(
        run(
            &sandbox,
            ExecRequest::wasm(b"(module (func (export \"_start\")))".to_vec())
        )
        .await
        .success()
    );
}

#[tokio::test]
async fn a_nonzero_exit_is_reported_as_an_exit() {
    let module = guest("", "(call $proc_exit (i32.const 7))");
    let outcome = run(&sandbox(), ExecRequest::wasm(module)).await;
    assert_eq!(outcome.termination, Termination::Exited { code: 7 });
    assert!(!outcome.success());
}

#[tokio::test]
async fn args_and_env_reach_the_guest_and_nothing_is_inherited() {
    // Exit code = argc * 10 + number of environment variables (WASI exit codes stop at 125).
    let module = guest(
        "",
        "(drop (call $args_sizes_get (i32.const 0) (i32.const 4)))
         (drop (call $environ_sizes_get (i32.const 8) (i32.const 12)))
         (call $proc_exit (i32.add
             (i32.mul (i32.load (i32.const 0)) (i32.const 10))
             (i32.load (i32.const 8))))",
    );
    // The test process has PATH, HOME, ...; none of it may leak in.
    assert!(std::env::vars().count() > 0);
    let sandbox = sandbox();
    let outcome = run(&sandbox, ExecRequest::wasm(module.clone())).await;
    assert_eq!(
        outcome.termination,
        Termination::Exited { code: 10 },
        "argv[0] only, no env"
    );
    let outcome = run(
        &sandbox,
        ExecRequest::wasm(module)
            .arg("a")
            .arg("b")
            .env("K", "v")
            .env("L", "w"),
    )
    .await;
    assert_eq!(outcome.termination, Termination::Exited { code: 32 });
}

#[tokio::test]
async fn stdin_bytes_reach_the_guest() {
    // cat: read stdin into 1 KiB at 64, write what was read, until EOF.
    let module = guest(
        "",
        "(block $done (loop $more
            (i32.store (i32.const 0) (i32.const 64))
            (i32.store (i32.const 4) (i32.const 1024))
            (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
            (br_if $done (i32.eqz (i32.load (i32.const 8))))
            (i32.store (i32.const 4) (i32.load (i32.const 8)))
            (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
            (br $more)))",
    );
    let input: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let outcome = run(&sandbox(), ExecRequest::wasm(module).stdin(input.clone())).await;
    assert!(outcome.success(), "{outcome:?}");
    assert_eq!(outcome.stdout, input);
}

fn busy_loop() -> Vec<u8> {
    guest("", "(loop $forever (br $forever))")
}

#[tokio::test]
async fn a_busy_loop_runs_out_of_fuel() {
    let limits = Limits {
        fuel: Some(5_000_000),
        ..limits()
    };
    let outcome = run(&sandbox(), ExecRequest::wasm(busy_loop()).limits(limits)).await;
    assert_eq!(outcome.termination, Termination::OutOfFuel);
    assert_eq!(outcome.usage.fuel_used, Some(5_000_000));
    assert!(outcome.usage.wall_time < Duration::from_secs(5));
}

#[tokio::test]
async fn a_busy_loop_with_fuel_to_spare_hits_the_wall_clock() {
    let limits = Limits {
        fuel: Some(u64::MAX),
        wall_time: Duration::from_millis(300),
        ..limits()
    };
    let outcome = run(&sandbox(), ExecRequest::wasm(busy_loop()).limits(limits)).await;
    assert_eq!(outcome.termination, Termination::Timeout);
    assert_eq!(
        outcome.usage.fuel_used, None,
        "not known after an epoch interrupt"
    );
    let wall = outcome.usage.wall_time;
    assert!(
        wall >= Duration::from_millis(300) && wall < Duration::from_secs(2),
        "stopped after {wall:?}"
    );
}

#[tokio::test]
async fn a_guest_asleep_in_a_host_call_is_stopped_at_the_wall_clock() {
    // poll_oneoff on a relative monotonic clock of one hour: the guest is parked in the host,
    // where epochs cannot reach it.
    let module = guest(
        "",
        "(i64.store (i32.const 64) (i64.const 0))          ;; userdata
         (i32.store8 (i32.const 72) (i32.const 0))          ;; tag: clock
         (i32.store (i32.const 80) (i32.const 1))           ;; clock id: monotonic
         (i64.store (i32.const 88) (i64.const 3600000000000)) ;; timeout: 1 h in ns
         (i64.store (i32.const 96) (i64.const 0))           ;; precision
         (i32.store16 (i32.const 104) (i32.const 0))        ;; flags: relative
         (drop (call $poll_oneoff (i32.const 64) (i32.const 256) (i32.const 1) (i32.const 512)))",
    );
    let limits = Limits {
        wall_time: Duration::from_millis(300),
        ..limits()
    };
    let started = Instant::now();
    let outcome = run(&sandbox(), ExecRequest::wasm(module).limits(limits)).await;
    assert_eq!(outcome.termination, Termination::Timeout);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_memory_bomb_is_out_of_memory() {
    // Grow one page at a time until refused, then trap as a C program's abort would.
    let module = guest(
        "",
        "(loop $grow
            (br_if $grow (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
         unreachable",
    );
    let limits = Limits {
        memory_bytes: Some(4 * 1024 * 1024),
        ..limits()
    };
    let outcome = run(&sandbox(), ExecRequest::wasm(module).limits(limits)).await;
    assert_eq!(outcome.termination, Termination::OutOfMemory);
    assert_eq!(outcome.usage.peak_memory_bytes, Some(4 * 1024 * 1024));
}

#[tokio::test]
async fn a_module_asking_for_too_much_memory_up_front_is_out_of_memory() {
    let module = br#"(module (memory 1000) (func (export "_start")))"#.to_vec(); // 62.5 MiB
    let limits = Limits {
        memory_bytes: Some(16 * 1024 * 1024),
        ..limits()
    };
    let outcome = run(&sandbox(), ExecRequest::wasm(module).limits(limits)).await;
    assert_eq!(outcome.termination, Termination::OutOfMemory);
}

#[tokio::test]
async fn a_guest_that_handles_a_refused_growth_succeeds() {
    let module = guest(
        "",
        "(if (i32.ne (memory.grow (i32.const 10000)) (i32.const -1)) (then unreachable))",
    );
    let limits = Limits {
        memory_bytes: Some(1024 * 1024),
        ..limits()
    };
    let outcome = run(&sandbox(), ExecRequest::wasm(module).limits(limits)).await;
    assert_eq!(outcome.termination, Termination::Exited { code: 0 });
}

#[tokio::test]
async fn unbounded_recursion_traps_on_the_stack_limit() {
    let module = br#"(module
        (func $down (param i32) (result i32)
            (i32.add (call $down (i32.add (local.get 0) (i32.const 1))) (i32.const 1)))
        (func (export "_start") (drop (call $down (i32.const 0)))))"#
        .to_vec();
    let outcome = run(&sandbox(), ExecRequest::wasm(module)).await;
    match &outcome.termination {
        Termination::Trap { message } => {
            assert!(message.contains("call stack exhausted"), "{message}")
        }
        other => panic!("expected a stack-overflow trap, got {other:?}"),
    }
}

#[tokio::test]
async fn a_trap_says_what_happened() {
    let module = guest("", "unreachable");
    let outcome = run(&sandbox(), ExecRequest::wasm(module)).await;
    match &outcome.termination {
        Termination::Trap { message } => assert!(message.contains("unreachable"), "{message}"),
        other => panic!("expected a trap, got {other:?}"),
    }
}

#[tokio::test]
async fn an_output_flood_stops_at_the_limit_and_keeps_what_fit() {
    let module = guest(
        r#"(data (i32.const 64) "0123456789")"#,
        &format!("(loop $again {} (br $again))", write_call(1, 64, 10)),
    );
    let limits = Limits {
        output_bytes: 1_005,
        ..limits()
    };
    let outcome = run(&sandbox(), ExecRequest::wasm(module).limits(limits)).await;
    assert_eq!(outcome.termination, Termination::OutputLimit);
    assert!(outcome.stdout_truncated);
    assert!(!outcome.stderr_truncated);
    assert_eq!(outcome.stdout.len(), 1_005);
    assert!(outcome.stdout_text().starts_with("01234567890123456789"));
    assert!(outcome.stdout_text().ends_with("01234"));
}

#[tokio::test]
async fn a_flood_on_stderr_is_stopped_too() {
    let module = guest(
        r#"(data (i32.const 64) "eeeeeeeeee")"#,
        &format!("(loop $again {} (br $again))", write_call(2, 64, 10)),
    );
    let limits = Limits {
        output_bytes: 100,
        ..limits()
    };
    let outcome = run(&sandbox(), ExecRequest::wasm(module).limits(limits)).await;
    assert_eq!(outcome.termination, Termination::OutputLimit);
    assert!(outcome.stderr_truncated);
    assert_eq!(outcome.stderr.len(), 100);
}

#[tokio::test]
async fn output_of_exactly_the_limit_is_not_truncated() {
    let outcome = run(
        &sandbox(),
        ExecRequest::wasm(hello()).limits(Limits {
            output_bytes: 6,
            ..limits()
        }),
    )
    .await;
    assert_eq!(outcome.termination, Termination::Exited { code: 0 });
    assert!(!outcome.stdout_truncated);
}

#[tokio::test]
async fn huge_argv_and_env_do_not_hurt_the_host() {
    // 4 MiB of arguments and environment against a guest with one page of memory: WASI
    // copies them only when the guest asks, into memory the guest provides.
    let big = "x".repeat(1024 * 1024);
    let module = guest(
        "",
        "(drop (call $args_sizes_get (i32.const 0) (i32.const 4)))
         (call $proc_exit (i32.load (i32.const 0)))",
    );
    let mut request = ExecRequest::wasm(module);
    for i in 0..2 {
        request = request.arg(big.clone()).env(format!("BIG{i}"), big.clone());
    }
    let outcome = run(&sandbox(), request).await;
    assert_eq!(outcome.termination, Termination::Exited { code: 3 });
}

#[tokio::test]
async fn something_that_is_not_wasm_is_an_invalid_program() {
    let sandbox = sandbox();
    for bytes in [
        b"#!/bin/sh\necho pwned\n".to_vec(),
        b"\0asm\x01\0\0\0garbage".to_vec(),
        Vec::new(),
    ] {
        match sandbox.execute(ExecRequest::wasm(bytes)).await {
            Err(SandboxError::InvalidProgram(_)) => {}
            other => panic!("expected InvalidProgram, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn imports_beyond_wasi_are_refused_before_running() {
    let module = br#"(module
        (import "env" "system" (func (param i32) (result i32)))
        (func (export "_start")))"#
        .to_vec();
    match sandbox().execute(ExecRequest::wasm(module)).await {
        Err(SandboxError::InvalidProgram(message)) => {
            assert!(message.contains("system"), "{message}")
        }
        other => panic!("expected InvalidProgram, got {other:?}"),
    }
}

#[tokio::test]
async fn a_module_without_start_is_refused() {
    let module = br#"(module (func (export "_initialize")))"#.to_vec();
    assert!(matches!(
        sandbox().execute(ExecRequest::wasm(module)).await,
        Err(SandboxError::InvalidProgram(_))
    ));
    let module = br#"(module (func (export "main")))"#.to_vec();
    assert!(matches!(
        sandbox().execute(ExecRequest::wasm(module)).await,
        Err(SandboxError::InvalidProgram(_))
    ));
}

#[tokio::test]
async fn native_commands_and_unconfigured_languages_are_unsupported() {
    let sandbox = sandbox();
    assert!(matches!(
        sandbox.execute(ExecRequest::command("true")).await,
        Err(SandboxError::Unsupported(_))
    ));
    for language in [Language::Python, Language::JavaScript] {
        match sandbox.execute(ExecRequest::source(language, "1")).await {
            Err(SandboxError::Unsupported(message)) => {
                assert!(message.contains("docs/backends/sandbox.md"), "{message}")
            }
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }
    let caps = sandbox.capabilities();
    assert!(caps.wasm && !caps.native && caps.languages.is_empty());
}

#[tokio::test]
async fn invalid_requests_are_refused() {
    let sandbox = sandbox();
    let zero_time = ExecRequest::wasm(hello()).limits(Limits {
        wall_time: Duration::ZERO,
        ..limits()
    });
    let nul_arg = ExecRequest::wasm(hello()).arg("a\0b");
    let bad_env = ExecRequest::wasm(hello()).env("A=B", "c");
    let relative_mount = ExecRequest::wasm(hello()).mount(agentic_sandbox::Mount {
        host_path: std::env::temp_dir(),
        guest_path: "work".into(),
        mode: agentic_sandbox::MountMode::ReadOnly,
    });
    for request in [zero_time, nul_arg, bad_env, relative_mount] {
        assert!(matches!(
            sandbox.execute(request).await,
            Err(SandboxError::InvalidRequest(_))
        ));
    }
}

#[tokio::test]
async fn a_module_is_compiled_once_and_reused() {
    let sandbox = sandbox();
    assert_eq!(sandbox.cached_modules(), 0);
    for _ in 0..3 {
        assert!(run(&sandbox, ExecRequest::wasm(hello())).await.success());
    }
    assert_eq!(sandbox.cached_modules(), 1);
    run(
        &sandbox,
        ExecRequest::wasm(busy_loop()).limits(Limits {
            fuel: Some(1000),
            ..limits()
        }),
    )
    .await;
    assert_eq!(sandbox.cached_modules(), 2);
    // A module that fails to compile is not kept.
    let _ = sandbox.execute(ExecRequest::wasm(b"nope".to_vec())).await;
    assert_eq!(sandbox.cached_modules(), 2);
}

#[tokio::test]
async fn the_in_memory_cache_is_bounded() {
    let mut config = WasmSandboxConfig::default();
    config.module_cache_capacity = 2;
    let sandbox = WasmSandbox::new(config).unwrap();
    for code in 0..4 {
        let module = guest("", &format!("(call $proc_exit (i32.const {code}))"));
        let outcome = run(&sandbox, ExecRequest::wasm(module)).await;
        assert_eq!(outcome.termination, Termination::Exited { code });
    }
    assert_eq!(sandbox.cached_modules(), 2);
}

#[tokio::test]
async fn compiled_code_survives_on_disk_and_bad_entries_are_recompiled() {
    let dir = tempfile::tempdir().unwrap();
    let config = WasmSandboxConfig::default().cache_dir(dir.path());
    {
        let first = WasmSandbox::new(config.clone()).unwrap();
        assert!(run(&first, ExecRequest::wasm(hello())).await.success());
    }
    let files = cache_files(dir.path());
    assert!(!files.is_empty(), "nothing was written to the disk cache");

    // A second sandbox (as a second process would) finds it.
    let second = WasmSandbox::new(config.clone()).unwrap();
    assert_eq!(
        run(&second, ExecRequest::wasm(hello())).await.stdout_text(),
        "hello\n"
    );

    // Entries that do not deserialize (another wasmtime build, a torn write) are ignored.
    for file in &files {
        std::fs::write(file, b"not a compiled module").unwrap();
    }
    let third = WasmSandbox::new(config).unwrap();
    assert_eq!(
        run(&third, ExecRequest::wasm(hello())).await.stdout_text(),
        "hello\n"
    );
}

fn cache_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if !path
                .extension()
                .is_some_and(|e| e == "stats" || e == "lock")
            {
                files.push(path);
            }
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pooling_allocator_runs_guests_and_caps_memory() {
    let sandbox = WasmSandbox::new(
        WasmSandboxConfig::default().pooling(PoolingOptions::new(4, 8 * 1024 * 1024)),
    )
    .unwrap();
    let runs = (0..8).map(|_| {
        let sandbox = sandbox.clone();
        tokio::spawn(async move { sandbox.execute(ExecRequest::wasm(hello())).await })
    });
    for run in runs {
        let outcome = run.await.unwrap().unwrap();
        assert_eq!(outcome.stdout_text(), "hello\n");
    }
    // The pool's slot size caps memory below what Limits allow.
    let module = guest(
        "",
        "(loop $grow
            (br_if $grow (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
         unreachable",
    );
    let outcome = run(
        &sandbox,
        ExecRequest::wasm(module).limits(Limits {
            memory_bytes: Some(64 * 1024 * 1024),
            ..limits()
        }),
    )
    .await;
    assert_eq!(outcome.termination, Termination::OutOfMemory);
    assert!(outcome.usage.peak_memory_bytes.unwrap() <= 8 * 1024 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_do_not_block_the_runtime() {
    // Two busy guests run while a timer on the runtime keeps ticking on time.
    let sandbox = sandbox();
    let busy = Limits {
        fuel: Some(u64::MAX),
        wall_time: Duration::from_millis(3000),
        ..limits()
    };
    let guests: Vec<_> = (0..2)
        .map(|_| {
            let sandbox = sandbox.clone();
            tokio::spawn(async move {
                sandbox
                    .execute(ExecRequest::wasm(busy_loop()).limits(busy))
                    .await
            })
        })
        .collect();
    let started = Instant::now();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Had the guests been on the two core threads, no timer would fire for 3 s; 200 ms of
    // timers get up to 2 s, for a loaded machine.
    assert!(
        started.elapsed() < Duration::from_millis(2000),
        "{:?}",
        started.elapsed()
    );
    for guest in guests {
        assert_eq!(
            guest.await.unwrap().unwrap().termination,
            Termination::Timeout
        );
    }
}

#[tokio::test]
async fn the_sandbox_works_behind_a_trait_object() {
    let sandbox: std::sync::Arc<dyn Sandbox> = std::sync::Arc::new(sandbox());
    assert!(
        sandbox
            .execute(ExecRequest::wasm(hello()))
            .await
            .unwrap()
            .success()
    );
}

#[test]
fn a_guest_whose_caller_gives_up_is_stopped() {
    // Dropping `execute`'s future (an aborted task) must stop the guest at its next epoch
    // tick, not leave it spinning to its 30 s limit. A runtime waits for its blocking tasks
    // when it shuts down, so the shutdown time shows how long the guest ran on.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let sandbox = sandbox();
    let task = rt.spawn(async move {
        sandbox
            .execute(ExecRequest::wasm(busy_loop()).limits(Limits {
                fuel: Some(u64::MAX),
                wall_time: Duration::from_secs(30),
                ..limits()
            }))
            .await
    });
    std::thread::sleep(Duration::from_millis(300));
    task.abort();
    let started = Instant::now();
    drop(rt);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_says_busy_rather_than_blaming_the_guest() {
    let sandbox = WasmSandbox::new(
        WasmSandboxConfig::default().pooling(PoolingOptions::new(1, 8 * 1024 * 1024)),
    )
    .unwrap();
    let spin = Limits {
        fuel: Some(u64::MAX),
        wall_time: Duration::from_millis(800),
        ..limits()
    };
    let first = {
        let sandbox = sandbox.clone();
        tokio::spawn(async move {
            sandbox
                .execute(ExecRequest::wasm(busy_loop()).limits(spin))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    match sandbox.execute(ExecRequest::wasm(hello())).await {
        Err(error @ SandboxError::Busy(_)) => assert!(error.is_retryable(), "{error}"),
        other => panic!("expected Busy, got {other:?}"),
    }
    assert_eq!(
        first.await.unwrap().unwrap().termination,
        Termination::Timeout
    );
    // Once the slot is free again, the same request runs.
    assert!(
        sandbox
            .execute(ExecRequest::wasm(hello()))
            .await
            .unwrap()
            .success()
    );
}
