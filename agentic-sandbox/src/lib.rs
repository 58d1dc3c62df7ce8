//! Run untrusted, agent-written code under limits, behind one trait, [`Sandbox`].
//!
//! What goes in is hostile; what comes out is the truth about what happened: how the run
//! ended ([`Termination`]), its output (truncated at the limit, and saying so) and the
//! resources it used. Backends come behind features (`wasm`: wasmtime with WASI and Python /
//! JavaScript runtimes; `process`: a Linux process sandbox). Without a backend,
//! [`NoSandbox`] refuses every request with a clear error.
//!
//! ```
//! use agentic_sandbox::{ExecRequest, Limits, NoSandbox, Sandbox, SandboxError};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let sandbox = NoSandbox;
//! let request = ExecRequest::source(agentic_sandbox::Language::Python, "print('hi')")
//!     .limits(Limits::default());
//! let err = sandbox.execute(request).await.unwrap_err();
//! assert!(matches!(err, SandboxError::Unavailable(_)));
//! # }
//! ```
//!
//! # Features
//!
//! | feature | backend | runs |
//! |---|---|---|
//! | `wasm` | `WasmSandbox` (wasmtime 48, WASI preview 1) | WebAssembly command modules; Python and JavaScript source when their runtimes are configured |
//! | `process` (Linux) | `ProcessSandbox` (rlimits, network and PID namespaces, Landlock) | native commands |
//! | (always) | [`NoSandbox`] | nothing: [`SandboxError::Unavailable`] |
//!
//! # Guarantees
//!
//! - A request that cannot start is an `Err`; a run that starts always yields an
//!   [`ExecOutcome`] whose [`Termination`] says why it ended, whatever the guest did.
//! - Output is kept up to [`Limits::output_bytes`] per stream, and truncation is reported.
//! - [`ExecOutcome::enforced`] lists the protections that actually held for the run:
//!   best-effort isolation is never reported as the real thing.
//! - [`Limits`] fields left `None` mean the backend's default, never unlimited.
//! - Dropping the `execute` future stops the run.
//!
//! See `docs/backends/sandbox.md` for each backend's mechanisms and the escape suite.

#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "wasm")]
#[cfg_attr(docsrs, doc(cfg(feature = "wasm")))]
pub mod wasm;
#[cfg(feature = "wasm")]
#[cfg_attr(docsrs, doc(cfg(feature = "wasm")))]
pub use wasm::{PoolingOptions, WasmSandbox, WasmSandboxConfig};

#[cfg(all(feature = "process", target_os = "linux"))]
#[cfg_attr(docsrs, doc(cfg(all(feature = "process", target_os = "linux"))))]
pub mod process;
#[cfg(all(feature = "process", target_os = "linux"))]
#[cfg_attr(docsrs, doc(cfg(all(feature = "process", target_os = "linux"))))]
pub use process::{ProcessSandbox, ProcessSandboxConfig};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// A language whose source a sandbox can run through a runtime it ships.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Language {
    /// Python 3.
    Python,
    /// JavaScript (ECMAScript).
    JavaScript,
}

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Program {
    /// A WebAssembly command module (binary `.wasm` or text `.wat`).
    Wasm {
        /// The module's bytes.
        module: Vec<u8>,
    },
    /// Source code for a runtime the sandbox ships.
    Source {
        /// The language.
        language: Language,
        /// The code.
        code: String,
    },
    /// A native program (process sandbox only).
    Command {
        /// Program path or name looked up on the sandbox's `PATH`.
        program: String,
    },
}

/// Whether the guest may write into a mounted directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MountMode {
    /// Read only.
    ReadOnly,
    /// Read and write.
    ReadWrite,
}

/// A host directory made visible to the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// The directory on the host.
    pub host_path: PathBuf,
    /// Where the guest sees it (e.g. `/work`).
    pub guest_path: String,
    /// Read-only or read-write.
    pub mode: MountMode,
}

/// Resource limits of one execution. `None` means the backend's default, never "unlimited"
/// (the process sandbox's address-space, file-size and process defaults are its
/// `ProcessSandboxConfig::default_limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Instructions (wasm fuel) the guest may use.
    pub fuel: Option<u64>,
    /// CPU time (process sandbox: `RLIMIT_CPU`; `None`: wall time × available CPUs + 1 s).
    pub cpu_time: Option<Duration>,
    /// Memory in bytes (wasm linear memory; process sandbox: address space, `None` there:
    /// 32 GiB).
    pub memory_bytes: Option<u64>,
    /// Wall-clock time before the run is stopped.
    pub wall_time: Duration,
    /// Bytes kept of stdout and of stderr each; more is discarded and reported.
    pub output_bytes: usize,
    /// Processes the guest may have (process sandbox: `RLIMIT_NPROC`, threads included;
    /// `None`: 1024).
    pub max_processes: Option<u32>,
    /// Largest file the guest may write (process sandbox: `RLIMIT_FSIZE`; `None`: 4 GiB).
    pub file_size_bytes: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: Some(1_000_000_000),
            cpu_time: Some(Duration::from_secs(10)),
            memory_bytes: Some(256 * 1024 * 1024),
            wall_time: Duration::from_secs(10),
            output_bytes: 1024 * 1024,
            max_processes: Some(32),
            file_size_bytes: Some(64 * 1024 * 1024),
        }
    }
}

/// One execution request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// What to run.
    pub program: Program,
    /// Arguments (not including the program name).
    pub args: Vec<String>,
    /// The whole environment: nothing is inherited from the host.
    pub env: BTreeMap<String, String>,
    /// Bytes on stdin.
    pub stdin: Vec<u8>,
    /// An optional host directory.
    pub mount: Option<Mount>,
    /// Working directory inside the guest (process sandbox: on the host).
    pub working_dir: Option<String>,
    /// Limits.
    pub limits: Limits,
}

impl ExecRequest {
    /// A request for `program` with no args, empty env and stdin, default limits.
    pub fn new(program: Program) -> Self {
        ExecRequest {
            program,
            args: Vec::new(),
            env: BTreeMap::new(),
            stdin: Vec::new(),
            mount: None,
            working_dir: None,
            limits: Limits::default(),
        }
    }

    /// Run a WebAssembly module.
    pub fn wasm(module: impl Into<Vec<u8>>) -> Self {
        Self::new(Program::Wasm {
            module: module.into(),
        })
    }

    /// Run source code in `language`.
    pub fn source(language: Language, code: impl Into<String>) -> Self {
        Self::new(Program::Source {
            language,
            code: code.into(),
        })
    }

    /// Run a native command.
    pub fn command(program: impl Into<String>) -> Self {
        Self::new(Program::Command {
            program: program.into(),
        })
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(name.into(), value.into());
        self
    }

    /// Sets stdin.
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = bytes.into();
        self
    }

    /// Mounts a host directory.
    pub fn mount(mut self, mount: Mount) -> Self {
        self.mount = Some(mount);
        self
    }

    /// Sets the limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }
}

/// Why a run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Termination {
    /// The guest exited by itself with this code.
    Exited {
        /// The exit code.
        code: i32,
    },
    /// The wall-clock limit was reached.
    Timeout,
    /// The fuel (instruction) limit was reached.
    OutOfFuel,
    /// The CPU-time limit was reached.
    CpuLimit,
    /// The memory limit was reached.
    OutOfMemory,
    /// The guest trapped (or was killed by a signal) for another reason.
    Trap {
        /// What the runtime said.
        message: String,
    },
    /// The guest was stopped because its output passed the limit.
    OutputLimit,
}

/// Resources used by a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ResourceUsage {
    /// Fuel consumed (wasm).
    pub fuel_used: Option<u64>,
    /// Wall-clock time.
    pub wall_time: Duration,
    /// CPU time, where measured.
    pub cpu_time: Option<Duration>,
    /// Peak memory in bytes, where measured.
    pub peak_memory_bytes: Option<u64>,
}

/// The truth about one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecOutcome {
    /// Why it ended.
    pub termination: Termination,
    /// Captured stdout (at most `Limits::output_bytes`).
    pub stdout: Vec<u8>,
    /// Captured stderr (at most `Limits::output_bytes`).
    pub stderr: Vec<u8>,
    /// True when stdout was cut at the limit.
    pub stdout_truncated: bool,
    /// True when stderr was cut at the limit.
    pub stderr_truncated: bool,
    /// Resources used.
    pub usage: ResourceUsage,
    /// The protections actually enforced for this run (e.g. `"netns"`, `"landlock"`),
    /// so best-effort isolation is never mistaken for the real thing.
    pub enforced: Vec<String>,
}

impl ExecOutcome {
    /// True when the guest exited with code 0.
    pub fn success(&self) -> bool {
        self.termination == Termination::Exited { code: 0 }
    }

    /// Stdout as UTF-8 (lossy).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Stderr as UTF-8 (lossy).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Why a request could not be run at all (a run that starts always yields an
/// [`ExecOutcome`], whatever the guest did).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// This sandbox cannot run this kind of program (e.g. no Python runtime configured).
    #[error("unsupported program: {0}")]
    Unsupported(String),
    /// The program is invalid (not a wasm module, unknown command).
    #[error("invalid program: {0}")]
    InvalidProgram(String),
    /// The request is invalid (bad mount path, limits out of range).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// No sandbox is configured.
    #[error("no sandbox available: {0}")]
    Unavailable(String),
    /// The sandbox is at capacity (every pooled instance slot is in use); retry later.
    #[error("sandbox busy: {0}")]
    Busy(String),
    /// The host failed to set the run up.
    #[error("sandbox setup failed: {message}")]
    Setup {
        /// What failed.
        message: String,
        /// The cause.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    },
}

impl SandboxError {
    /// True when the same request may succeed if retried later ([`SandboxError::Busy`]);
    /// every other error would fail again.
    pub fn is_retryable(&self) -> bool {
        matches!(self, SandboxError::Busy(_))
    }
}

/// What a sandbox can run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct SandboxCapabilities {
    /// Runs wasm modules.
    pub wasm: bool,
    /// Languages it has runtimes for.
    pub languages: Vec<Language>,
    /// Runs native commands.
    pub native: bool,
}

/// Runs untrusted code. Dyn-compatible: hold it as `Arc<dyn Sandbox>`.
#[async_trait]
pub trait Sandbox: Send + Sync {
    /// What this sandbox can run.
    fn capabilities(&self) -> SandboxCapabilities;

    /// Runs the request to completion (or to a limit) and reports what happened.
    async fn execute(&self, request: ExecRequest) -> Result<ExecOutcome, SandboxError>;
}

/// The sandbox used when none is configured: refuses everything with
/// [`SandboxError::Unavailable`].
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSandbox;

#[async_trait]
impl Sandbox for NoSandbox {
    fn capabilities(&self) -> SandboxCapabilities {
        SandboxCapabilities::default()
    }

    async fn execute(&self, _request: ExecRequest) -> Result<ExecOutcome, SandboxError> {
        Err(SandboxError::Unavailable(
            "no sandbox backend is configured; enable the `wasm` or `process` feature".to_owned(),
        ))
    }
}

macro_rules! forward_sandbox {
    ($($ty:ty),*) => {$(
        #[async_trait]
        impl<T: Sandbox + ?Sized> Sandbox for $ty {
            fn capabilities(&self) -> SandboxCapabilities {
                (**self).capabilities()
            }
            async fn execute(&self, request: ExecRequest) -> Result<ExecOutcome, SandboxError> {
                (**self).execute(request).await
            }
        }
    )*};
}

forward_sandbox!(Arc<T>, Box<T>);
