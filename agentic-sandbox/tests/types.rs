//! The sandbox's types without a backend: `NoSandbox` refuses honestly, the request
//! builders set what they say, and requests and outcomes survive JSON (they travel in task
//! payloads and decision logs).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::error::Error as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use agentic_sandbox::{
    ExecOutcome, ExecRequest, Language, Limits, Mount, MountMode, NoSandbox, Program,
    ResourceUsage, Sandbox, SandboxError, Termination,
};
use serde_json::json;

fn every_kind_of_request() -> Vec<ExecRequest> {
    vec![
        ExecRequest::wasm(b"\0asm\x01\0\0\0".to_vec()),
        ExecRequest::source(Language::Python, "print('hi')"),
        ExecRequest::source(Language::JavaScript, "console.log('hi')"),
        ExecRequest::command("ls"),
    ]
}

#[tokio::test]
async fn no_sandbox_refuses_every_request_as_unavailable() {
    let sandboxes: Vec<Arc<dyn Sandbox>> = vec![Arc::new(NoSandbox), Arc::new(Box::new(NoSandbox))];
    for sandbox in sandboxes {
        for request in every_kind_of_request() {
            match sandbox.execute(request).await {
                Err(SandboxError::Unavailable(message)) => {
                    // The message tells the user how to get a sandbox.
                    assert!(message.contains("feature"), "{message}");
                }
                other => panic!("expected Unavailable, got {other:?}"),
            }
        }
    }
}

#[test]
fn no_sandbox_claims_no_capabilities() {
    let caps = NoSandbox.capabilities();
    assert!(!caps.wasm);
    assert!(!caps.native);
    assert!(caps.languages.is_empty());
}

#[test]
fn new_request_has_empty_inputs_and_default_limits() {
    let request = ExecRequest::command("true");
    assert_eq!(
        request.program,
        Program::Command {
            program: "true".into()
        }
    );
    assert!(request.args.is_empty());
    assert!(request.env.is_empty(), "nothing is inherited from the host");
    assert!(request.stdin.is_empty());
    assert_eq!(request.mount, None);
    assert_eq!(request.working_dir, None);
    assert_eq!(request.limits, Limits::default());
}

#[test]
fn builders_set_their_fields() {
    let mount = Mount {
        host_path: PathBuf::from("/tmp/work"),
        guest_path: "/work".into(),
        mode: MountMode::ReadOnly,
    };
    let limits = Limits {
        fuel: Some(5),
        wall_time: Duration::from_millis(250),
        output_bytes: 64,
        ..Limits::default()
    };
    let request = ExecRequest::command("grep")
        .arg("-n")
        .arg("needle")
        .env("LANG", "C")
        .env("LANG", "C.UTF-8")
        .env("HOME", "/work")
        .stdin("hay\nneedle\n")
        .mount(mount.clone())
        .limits(limits);

    assert_eq!(request.args, ["-n", "needle"]);
    assert_eq!(request.env.len(), 2);
    assert_eq!(
        request.env["LANG"], "C.UTF-8",
        "a later value replaces an earlier one"
    );
    assert_eq!(request.env["HOME"], "/work");
    assert_eq!(request.stdin, b"hay\nneedle\n");
    assert_eq!(request.mount, Some(mount));
    assert_eq!(request.limits, limits);

    assert_eq!(
        ExecRequest::source(Language::Python, "x = 1").program,
        Program::Source {
            language: Language::Python,
            code: "x = 1".into()
        }
    );
    assert_eq!(
        ExecRequest::wasm(vec![1, 2, 3]).program,
        Program::Wasm {
            module: vec![1, 2, 3]
        }
    );
}

#[test]
fn default_limits_are_finite() {
    // "None means the backend's default, never unlimited"; the defaults themselves are set.
    let limits = Limits::default();
    assert!(limits.fuel.is_some());
    assert!(limits.cpu_time.is_some());
    assert!(limits.memory_bytes.is_some());
    assert!(limits.max_processes.is_some());
    assert!(limits.file_size_bytes.is_some());
    assert!(limits.wall_time > Duration::ZERO);
    assert!(limits.output_bytes > 0);
}

fn outcome(termination: Termination) -> ExecOutcome {
    ExecOutcome {
        termination,
        stdout: b"out \xff".to_vec(),
        stderr: b"err".to_vec(),
        stdout_truncated: true,
        stderr_truncated: false,
        usage: ResourceUsage {
            fuel_used: Some(1234),
            wall_time: Duration::from_millis(15),
            cpu_time: Some(Duration::from_micros(900)),
            peak_memory_bytes: None,
        },
        enforced: vec!["netns".into(), "landlock".into()],
    }
}

fn every_termination() -> Vec<Termination> {
    vec![
        Termination::Exited { code: 0 },
        Termination::Exited { code: 1 },
        Termination::Exited { code: -9 },
        Termination::Timeout,
        Termination::OutOfFuel,
        Termination::CpuLimit,
        Termination::OutOfMemory,
        Termination::Trap {
            message: "unreachable".into(),
        },
        Termination::OutputLimit,
    ]
}

#[test]
fn success_means_exit_code_zero_only() {
    for termination in every_termination() {
        let expected = termination == Termination::Exited { code: 0 };
        assert_eq!(
            outcome(termination.clone()).success(),
            expected,
            "{termination:?}"
        );
    }
}

#[test]
fn output_text_is_lossy_utf8() {
    let outcome = outcome(Termination::Exited { code: 0 });
    assert_eq!(outcome.stdout_text(), "out \u{fffd}");
    assert_eq!(outcome.stderr_text(), "err");
}

#[test]
fn requests_round_trip_through_json() {
    let mut requests = every_kind_of_request();
    let mut full = ExecRequest::command("python3")
        .arg("-c")
        .arg("print(1)")
        .env("PATH", "/usr/bin")
        .stdin(vec![0, 159, 146, 150])
        .mount(Mount {
            host_path: PathBuf::from("/srv/data"),
            guest_path: "/data".into(),
            mode: MountMode::ReadWrite,
        })
        .limits(Limits {
            fuel: None,
            cpu_time: None,
            memory_bytes: None,
            wall_time: Duration::new(3, 500),
            output_bytes: 1,
            max_processes: None,
            file_size_bytes: None,
        });
    full.working_dir = Some("/data".into());
    requests.push(full);

    for request in requests {
        let json = serde_json::to_string(&request).unwrap();
        let back: ExecRequest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, request, "{json}");
    }
}

#[test]
fn outcomes_round_trip_through_json() {
    for termination in every_termination() {
        let outcome = outcome(termination);
        let json = serde_json::to_string(&outcome).unwrap();
        let back: ExecOutcome = serde_json::from_str(&json).unwrap();
        assert_eq!(back, outcome, "{json}");
    }
}

#[test]
fn json_is_tagged_readably() {
    assert_eq!(
        serde_json::to_value(Program::Source {
            language: Language::Python,
            code: "1".into()
        })
        .unwrap(),
        json!({"kind": "source", "language": "python", "code": "1"})
    );
    assert_eq!(
        serde_json::to_value(Termination::Exited { code: 3 }).unwrap(),
        json!({"reason": "exited", "code": 3})
    );
    assert_eq!(
        serde_json::to_value(Termination::OutOfFuel).unwrap(),
        json!({"reason": "out_of_fuel"})
    );
    assert_eq!(
        serde_json::to_value(MountMode::ReadOnly).unwrap(),
        json!("read_only")
    );
}

#[test]
fn setup_errors_keep_their_source() {
    let err = SandboxError::Setup {
        message: "could not create cgroup".into(),
        source: Some(Box::new(std::io::Error::other("permission denied"))),
    };
    assert_eq!(
        err.to_string(),
        "sandbox setup failed: could not create cgroup"
    );
    assert_eq!(err.source().unwrap().to_string(), "permission denied");
    assert_eq!(
        SandboxError::Unavailable("none".into()).to_string(),
        "no sandbox available: none"
    );
}

#[test]
fn only_busy_is_retryable() {
    assert!(SandboxError::Busy("pool full".into()).is_retryable());
    for error in [
        SandboxError::Unsupported("x".into()),
        SandboxError::InvalidProgram("x".into()),
        SandboxError::InvalidRequest("x".into()),
        SandboxError::Unavailable("x".into()),
        SandboxError::Setup {
            message: "x".into(),
            source: None,
        },
    ] {
        assert!(!error.is_retryable(), "{error}");
    }
}
