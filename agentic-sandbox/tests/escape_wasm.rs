//! The escape and abuse suite against `WasmSandbox`: a C guest (compiled here with clang-14
//! for wasm32-wasi) and Python source try to read host files (absolute path, `..` from the
//! mount, symlinks planted in the mount or made by the guest), write into a read-only mount,
//! use a socket, spin, allocate, recurse, flood, and pass huge inputs. Each attack must be
//! contained and the outcome must name the right reason.

#![cfg(feature = "wasm")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use agentic_sandbox::{
    ExecOutcome, ExecRequest, Language, Limits, Mount, MountMode, Sandbox, SandboxError,
    Termination, WasmSandbox, WasmSandboxConfig,
};

fn sandbox() -> &'static WasmSandbox {
    static SANDBOX: OnceLock<WasmSandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| {
        let mut config = WasmSandboxConfig::default().cache_dir(support::cache_dir());
        config.python_wasm = support::python_wasm();
        WasmSandbox::new(config).unwrap()
    })
}

fn probe(test: &str) -> Option<Vec<u8>> {
    static PROBE: OnceLock<Option<Vec<u8>>> = OnceLock::new();
    let probe = PROBE
        .get_or_init(|| support::compile_c("probe", include_str!("guests/probe.c")))
        .clone();
    if probe.is_none() {
        support::skip(test, "clang-14 and wasi-libc are not installed");
    }
    probe
}

fn limits() -> Limits {
    Limits {
        wall_time: Duration::from_secs(20),
        ..Limits::default()
    }
}

/// A host directory laid out for the attacks:
///
/// ```text
/// root/secret.txt              outside the mount, right next to it
/// root/work/data.txt           inside the mount
/// root/work/sub/               a subdirectory
/// root/work/passwd-link   ->   /etc/passwd
/// root/work/etc-link      ->   /etc
/// root/work/secret-link   ->   ../secret.txt
/// ```
struct Layout {
    _root: tempfile::TempDir,
    work: PathBuf,
    secret: PathBuf,
}

fn layout() -> Layout {
    let root = tempfile::tempdir().unwrap();
    let work = root.path().join("work");
    std::fs::create_dir_all(work.join("sub")).unwrap();
    std::fs::write(work.join("data.txt"), "inside\n").unwrap();
    let secret = root.path().join("secret.txt");
    std::fs::write(&secret, "SECRET\n").unwrap();
    symlink("/etc/passwd", work.join("passwd-link")).unwrap();
    symlink("/etc", work.join("etc-link")).unwrap();
    symlink("../secret.txt", work.join("secret-link")).unwrap();
    Layout {
        _root: root,
        work,
        secret,
    }
}

fn mount(path: &Path, mode: MountMode) -> Mount {
    Mount {
        host_path: path.to_path_buf(),
        guest_path: "/work".into(),
        mode,
    }
}

async fn run_probe(
    module: &[u8],
    args: &[&str],
    mount: Option<Mount>,
    limits: Limits,
) -> ExecOutcome {
    let mut request = ExecRequest::wasm(module.to_vec()).limits(limits);
    for arg in args {
        request = request.arg(*arg);
    }
    if let Some(mount) = mount {
        request = request.mount(mount);
    }
    sandbox().execute(request).await.unwrap()
}

/// The guest reported no escape: it exited 0, and printed no READ/WROTE/ACCEPTED line.
fn assert_contained(outcome: &ExecOutcome) {
    let stdout = outcome.stdout_text();
    assert_eq!(
        outcome.termination,
        Termination::Exited { code: 0 },
        "stdout: {stdout}\nstderr: {}",
        outcome.stderr_text()
    );
    for word in ["READ", "WROTE", "ACCEPTED", "root:", "SECRET"] {
        assert!(!stdout.contains(word), "escape ({word}): {stdout}");
    }
}

#[tokio::test]
async fn c_reads_etc_passwd_by_absolute_path() {
    let Some(module) = probe("c_reads_etc_passwd_by_absolute_path") else {
        return;
    };
    // Without any mount, and with one: neither gives the host's root.
    let outcome = run_probe(
        &module,
        &["read", "/etc/passwd", "/proc/self/environ"],
        None,
        limits(),
    )
    .await;
    assert_contained(&outcome);
    let layout = layout();
    let outcome = run_probe(
        &module,
        &["read", "/etc/passwd", "/work/data.txt"],
        Some(mount(&layout.work, MountMode::ReadWrite)),
        limits(),
    )
    .await;
    // The mount itself is readable (so the denial above is not a broken mount)...
    assert!(
        outcome
            .stdout_text()
            .contains("READ /work/data.txt: inside"),
        "{}",
        outcome.stdout_text()
    );
    // ...and /etc/passwd is not.
    assert!(
        outcome.stdout_text().contains("denied read /etc/passwd"),
        "{}",
        outcome.stdout_text()
    );
}

#[tokio::test]
async fn c_climbs_out_of_the_mount_with_dotdot() {
    let Some(module) = probe("c_climbs_out_of_the_mount_with_dotdot") else {
        return;
    };
    let layout = layout();
    let outcome = run_probe(
        &module,
        &[
            "read",
            "/work/../secret.txt",
            "/work/sub/../../secret.txt",
            "/work/../../../../etc/passwd",
            "../secret.txt",
        ],
        Some(mount(&layout.work, MountMode::ReadWrite)),
        limits(),
    )
    .await;
    assert_contained(&outcome);
    assert_eq!(outcome.stdout_text().matches("denied read").count(), 4);
    assert!(layout.secret.exists());
}

#[tokio::test]
async fn c_follows_symlinks_planted_in_the_mount() {
    let Some(module) = probe("c_follows_symlinks_planted_in_the_mount") else {
        return;
    };
    let layout = layout();
    let outcome = run_probe(
        &module,
        &[
            "read",
            "/work/passwd-link",
            "/work/etc-link/passwd",
            "/work/secret-link",
        ],
        Some(mount(&layout.work, MountMode::ReadOnly)),
        limits(),
    )
    .await;
    assert_contained(&outcome);
    assert_eq!(outcome.stdout_text().matches("denied read").count(), 3);
}

#[tokio::test]
async fn c_plants_its_own_symlink_and_follows_it() {
    let Some(module) = probe("c_plants_its_own_symlink") else {
        return;
    };
    let layout = layout();
    for target in [
        "/etc/passwd",
        "../secret.txt",
        "../../../../../../etc/passwd",
    ] {
        let outcome = run_probe(
            &module,
            &["symlink", "/work/evil", target],
            Some(mount(&layout.work, MountMode::ReadWrite)),
            limits(),
        )
        .await;
        assert_contained(&outcome);
        let _ = std::fs::remove_file(layout.work.join("evil"));
    }
}

#[tokio::test]
async fn c_writes_into_a_read_only_mount() {
    let Some(module) = probe("c_writes_into_a_read_only_mount") else {
        return;
    };
    let layout = layout();
    let outcome = run_probe(
        &module,
        &["write", "/work/new.txt", "/work/data.txt", "/work/sub/x"],
        Some(mount(&layout.work, MountMode::ReadOnly)),
        limits(),
    )
    .await;
    assert_contained(&outcome);
    assert!(!layout.work.join("new.txt").exists());
    assert!(!layout.work.join("sub/x").exists());
    assert_eq!(
        std::fs::read_to_string(layout.work.join("data.txt")).unwrap(),
        "inside\n"
    );

    // The same writes succeed read-write (the denial above is the mode, not a broken guest),
    // but never outside the mount.
    let outcome = run_probe(
        &module,
        &["write", "/work/new.txt", "/work/../outside.txt"],
        Some(mount(&layout.work, MountMode::ReadWrite)),
        limits(),
    )
    .await;
    assert!(
        outcome.stdout_text().contains("WROTE /work/new.txt"),
        "{}",
        outcome.stdout_text()
    );
    assert!(
        outcome
            .stdout_text()
            .contains("denied write /work/../outside.txt")
    );
    assert_eq!(
        std::fs::read_to_string(layout.work.join("new.txt")).unwrap(),
        "pwned\n"
    );
    assert!(!layout.work.parent().unwrap().join("outside.txt").exists());
}

#[tokio::test]
async fn c_looks_for_a_socket() {
    let Some(module) = probe("c_looks_for_a_socket") else {
        return;
    };
    let outcome = run_probe(&module, &["socket"], None, limits()).await;
    assert_contained(&outcome);
    assert!(outcome.stdout_text().contains("no socket to use"));
}

#[tokio::test]
async fn a_module_importing_socket_functions_is_refused() {
    // WASI preview 1 has no way to open a socket; extensions that add one (WasmEdge's
    // `sock_open`, WASIX) are not linked, so such a module never starts.
    let module = br#"(module
        (import "wasi_snapshot_preview1" "sock_open" (func (param i32 i32 i32) (result i32)))
        (func (export "_start")))"#
        .to_vec();
    match sandbox().execute(ExecRequest::wasm(module)).await {
        Err(SandboxError::InvalidProgram(message)) => {
            assert!(message.contains("sock_open"), "{message}")
        }
        other => panic!("expected InvalidProgram, got {other:?}"),
    }
}

#[tokio::test]
async fn c_busy_loop_is_stopped_by_fuel_and_by_the_wall_clock() {
    let Some(module) = probe("c_busy_loop") else {
        return;
    };
    let fuel = Limits {
        fuel: Some(20_000_000),
        ..limits()
    };
    let outcome = run_probe(&module, &["spin"], None, fuel).await;
    assert_eq!(outcome.termination, Termination::OutOfFuel);

    let wall = Limits {
        fuel: Some(u64::MAX),
        wall_time: Duration::from_millis(500),
        ..limits()
    };
    let outcome = run_probe(&module, &["spin"], None, wall).await;
    assert_eq!(outcome.termination, Termination::Timeout);
    assert!(outcome.usage.wall_time < Duration::from_secs(3));
}

#[tokio::test]
async fn c_memory_bomb_is_out_of_memory() {
    let Some(module) = probe("c_memory_bomb") else {
        return;
    };
    let limits = Limits {
        memory_bytes: Some(32 * 1024 * 1024),
        ..limits()
    };
    let outcome = run_probe(&module, &["malloc"], None, limits).await;
    assert_eq!(outcome.termination, Termination::OutOfMemory, "{outcome:?}");
    assert!(outcome.stderr_text().contains("malloc failed"));
    let peak = outcome.usage.peak_memory_bytes.unwrap();
    assert!(
        peak <= 32 * 1024 * 1024 && peak > 16 * 1024 * 1024,
        "{peak}"
    );
}

#[tokio::test]
async fn c_deep_recursion_traps() {
    let Some(module) = probe("c_deep_recursion") else {
        return;
    };
    // Calls alone exhaust wasmtime's stack limit...
    let outcome = run_probe(&module, &["recurse"], None, limits()).await;
    match &outcome.termination {
        Termination::Trap { message } => {
            assert!(message.contains("call stack exhausted"), "{message}")
        }
        other => panic!("expected a stack-overflow trap, got {other:?}"),
    }
    // ...and big frames exhaust the C stack in linear memory, which runs off its bottom
    // (placed first in memory) and traps rather than corrupting anything.
    let outcome = run_probe(&module, &["recurse-frames"], None, limits()).await;
    match &outcome.termination {
        Termination::Trap { message } => {
            assert!(
                message.contains("out of bounds") || message.contains("stack"),
                "{message}"
            )
        }
        other => panic!("expected a trap, got {other:?}"),
    }
}

#[tokio::test]
async fn c_output_flood_stops_at_the_limit() {
    let Some(module) = probe("c_output_flood") else {
        return;
    };
    let limits = Limits {
        output_bytes: 64 * 1024,
        ..limits()
    };
    let outcome = run_probe(&module, &["flood"], None, limits).await;
    assert_eq!(outcome.termination, Termination::OutputLimit);
    assert!(outcome.stdout_truncated);
    assert_eq!(outcome.stdout.len(), 64 * 1024);
    assert!(outcome.stdout_text().starts_with("flood flood"));
}

#[tokio::test]
async fn c_huge_argv_and_env_are_delivered_or_refused_cleanly() {
    let Some(module) = probe("c_huge_argv") else {
        return;
    };
    let chunk = "a".repeat(4096);
    let build = || {
        let mut request = ExecRequest::wasm(module.clone()).arg("args");
        for i in 0..512 {
            request = request
                .arg(chunk.clone())
                .env(format!("V{i}"), chunk.clone());
        }
        request
    };
    // 4 MiB of input fits in 64 MiB of guest memory...
    let outcome = sandbox()
        .execute(build().limits(Limits {
            memory_bytes: Some(64 * 1024 * 1024),
            ..limits()
        }))
        .await
        .unwrap();
    assert!(outcome.success(), "{outcome:?}");
    assert!(
        outcome.stdout_text().starts_with("argc=514 "),
        "{}",
        outcome.stdout_text()
    );
    // ...and not in 1 MiB: the guest's start-up cannot allocate it and gives up.
    let outcome = sandbox()
        .execute(build().limits(Limits {
            memory_bytes: Some(1024 * 1024),
            ..limits()
        }))
        .await
        .unwrap();
    assert_eq!(outcome.termination, Termination::OutOfMemory, "{outcome:?}");
}

#[tokio::test]
async fn c_guest_exiting_nonzero_is_an_exit() {
    let Some(module) = probe("c_guest_exiting_nonzero") else {
        return;
    };
    let outcome = run_probe(&module, &["exit", "42"], None, limits()).await;
    assert_eq!(outcome.termination, Termination::Exited { code: 42 });
}

#[tokio::test]
async fn a_native_executable_is_not_a_module() {
    let elf = std::fs::read("/bin/true").unwrap();
    assert!(matches!(
        sandbox().execute(ExecRequest::wasm(elf)).await,
        Err(SandboxError::InvalidProgram(_))
    ));
}

#[tokio::test]
async fn python_attacks_through_the_mount_are_contained() {
    if !sandbox()
        .capabilities()
        .languages
        .contains(&Language::Python)
    {
        return support::skip(
            "python_attacks_through_the_mount",
            "no Python runtime found",
        );
    }
    let layout = layout();
    let code = r#"
import os
for p in ['/etc/passwd', '/work/../secret.txt', '/work/sub/../../secret.txt',
          '/work/passwd-link', '/work/etc-link/passwd', '/work/secret-link']:
    try:
        print('READ', p, open(p).read()[:10])
    except OSError as e:
        print('denied read', p, type(e).__name__)
for p in ['/work/new.txt', '/work/data.txt']:
    try:
        with open(p, 'w') as f:
            f.write('pwned')
        print('WROTE', p)
    except OSError as e:
        print('denied write', p, type(e).__name__)
try:
    os.symlink('/etc/passwd', '/work/evil')
    print('READ', open('/work/evil').read()[:10])
except OSError as e:
    print('denied symlink', type(e).__name__)
print(open('/work/data.txt').read().strip())
"#;
    let outcome = sandbox()
        .execute(
            ExecRequest::source(Language::Python, code)
                .mount(mount(&layout.work, MountMode::ReadOnly))
                .limits(limits()),
        )
        .await
        .unwrap();
    assert_contained(&outcome);
    let stdout = outcome.stdout_text();
    assert_eq!(stdout.matches("denied read").count(), 6, "{stdout}");
    assert_eq!(stdout.matches("denied write").count(), 2, "{stdout}");
    assert!(stdout.contains("denied symlink"), "{stdout}");
    assert!(
        stdout.ends_with("inside\n"),
        "the mount is readable: {stdout}"
    );
    assert_eq!(
        std::fs::read_to_string(layout.work.join("data.txt")).unwrap(),
        "inside\n"
    );
}
