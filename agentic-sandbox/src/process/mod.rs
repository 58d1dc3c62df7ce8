//! [`ProcessSandbox`]: native commands (`cargo test`, `python3 -m pytest`, a compiler) under
//! Linux resource limits, network and PID namespaces and Landlock. No container engine.
//!
//! # How a command is started
//!
//! The crate forbids `unsafe`, so it cannot run code between `fork` and `exec`. A small C
//! program does that work: the run's *init* (`init.c`, built by `build.rs`, embedded in the
//! library, installed at [`ProcessSandbox::new`] into [`ProcessSandboxConfig::init_dir`]). It
//! is spawned in its own process group from a thread that first confined itself with Landlock;
//! it creates the namespaces, forks PID 1 of the new PID namespace, which forks the guest; the
//! guest drops root, sets its rlimits and `exec`s the program. PID 1 `wait`s for the program
//! (its exact exit status, not a wrapper's), reaps every orphan meanwhile, and when the program
//! exits or the host says stop (timeout, output limit) kills every process of the namespace,
//! reaps them, and reports the status and the tree's resource usage back over a socket only it
//! holds.
//!
//! # What confines a command
//!
//! | Resource | Mechanism | Outcome when hit | `enforced` entry |
//! |---|---|---|---|
//! | CPU time | `RLIMIT_CPU` from [`Limits::cpu_time`] (per process); `None`: wall time × available CPUs + 1 s | [`Termination::CpuLimit`] (`SIGXCPU`) | `rlimit_cpu` |
//! | Memory | `RLIMIT_AS` from [`Limits::memory_bytes`] (address space, per process); `None`: 32 GiB | allocations fail; [`Termination::OutOfMemory`] when the failure is attributed to memory (below) | `rlimit_as` |
//! | File size | `RLIMIT_FSIZE` from [`Limits::file_size_bytes`]; `None`: 4 GiB | [`Termination::Trap`] (`SIGXFSZ`) | `rlimit_fsize` |
//! | Processes | `RLIMIT_NPROC` from [`Limits::max_processes`] (per user, threads included; not for root, hence the drop below); `None`: 1024 | `fork` fails in the guest | `rlimit_nproc` |
//! | Wall-clock time | a host timer; the init kills the whole PID namespace, then the host the process group | [`Termination::Timeout`] | `pidns`, `process_group` |
//! | Output | stdout and stderr each kept up to [`Limits::output_bytes`]; past it, as for the wall clock | [`Termination::OutputLimit`] | — |
//! | Leftovers | when the program exits, every process it started is killed, `setsid` or not (PID namespace); without one, its process group | — | `pidns`, `process_group` |
//! | Network | a new, empty network namespace (in a user namespace when not root) | connections fail | `netns`, `userns` |
//! | Privileges | as root, the guest runs as an unprivileged user ([`ProcessSandboxConfig::run_as`]) | — | `uid:<n>` |
//! | Files | Landlock: read/execute only [`ProcessSandboxConfig::read_paths`], the program and the init; write only the working directory and a read-write [`Mount`] | `EACCES` in the guest | `landlock_fs` |
//! | TCP, signals | Landlock (ABI 4 and 6): no TCP bind/connect; no signals or abstract sockets outside the sandbox | `EACCES`/`EPERM` | `landlock_net`, `landlock_scope` |
//! | Environment | exactly [`ExecRequest::env`], plus `PATH`, `HOME` and `TMPDIR` when it does not set them | — | `scrubbed_env` |
//!
//! The four rlimits are set for every run: a [`Limits`] field left `None` gets the sandbox's
//! default ([`ProcessSandboxConfig::default_limits`], see [`DefaultLimits`]), never "no
//! limit", and the `rlimit_*` entry is there either way. The CPU default lets a process keep
//! every available CPU busy for the whole wall time, so the wall clock, not it, stops such a
//! run ([`Termination::Timeout`]). Only a guest kept as root
//! ([`ProcessSandboxConfig::run_as`] `None`) has no `rlimit_nproc`: the kernel exempts root.
//!
//! Isolation is best effort where the kernel decides: each outcome's
//! [`ExecOutcome::enforced`] lists what actually held for that run, and
//! [`ProcessSandboxConfig::require_isolation`] turns a missing namespace (network or PID) or
//! Landlock into an error instead. The mount is seen at its host path (there is no mount
//! namespace), so [`Mount::guest_path`] is ignored; the working directory defaults to the
//! mount, or to a fresh empty directory that is removed afterwards. Stdin reaches the guest as
//! a sealed in-memory file (a `memfd`), not a pipe: reads behave the same, and it can seek.
//!
//! # What the outcome measures
//!
//! - The [`Termination`] comes from the program's own wait status: exact.
//! - [`ResourceUsage::cpu_time`](crate::ResourceUsage::cpu_time): user + system time of
//!   every process of the run (`getrusage(RUSAGE_CHILDREN)` of the init once all are reaped;
//!   tick-sampled on most kernels, so a few percent off). `peak_memory_bytes`: the largest
//!   peak resident set of any single process of the run (`ru_maxrss`), not their sum. Both are
//!   `None` when the init could not report (killed from outside after the grace period).
//! - [`Termination::OutOfMemory`] is inferred, since the kernel does not report hitting
//!   `RLIMIT_AS` (allocations just fail with `ENOMEM`). A run that failed (non-zero exit or a
//!   signal) is out of memory when: it was killed by `SIGKILL` (or exited 137, a shell
//!   reporting that) which the sandbox did not send while the kernel's OOM-kill counter
//!   (`/proc/vmstat`) rose; or some process of it had a peak resident set of at least 90 % of
//!   the address-space limit; or its stderr says so in a common runtime's words (CPython
//!   `MemoryError`, `Cannot allocate memory`, Rust `memory allocation of`, `std::bad_alloc`,
//!   V8, Java).
//!
//! Known limits: CPU time and memory are limited per process, not per tree (a cgroup would be
//! needed for that, and would need privileges these machines' users do not have). Without a
//! PID namespace (`pidns` missing from `enforced`: user namespaces disabled, or seccomp), a
//! guest process that leaves the process group (`setsid`) survives the run, though inside the
//! network namespace, the rlimits and Landlock; and usage then covers only processes reaped
//! before the program ended.
//!
//! [`Limits`]: crate::Limits
//! [`Limits::cpu_time`]: crate::Limits::cpu_time
//! [`Limits::memory_bytes`]: crate::Limits::memory_bytes
//! [`Limits::file_size_bytes`]: crate::Limits::file_size_bytes
//! [`Limits::max_processes`]: crate::Limits::max_processes
//! [`Limits::output_bytes`]: crate::Limits::output_bytes

mod confine;
mod init;
mod launch;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use self::confine::Rules;
use self::init::{Report, Usage};
use self::launch::{Identity, Namespaces, Rlimits};
use crate::{
    ExecOutcome, ExecRequest, Mount, MountMode, Program, ResourceUsage, Sandbox,
    SandboxCapabilities, SandboxError, Termination,
};

/// How long output may still arrive after the program exited or was killed (from processes
/// that escaped the group and still hold the pipes, possible only without a PID namespace)
/// before the outcome is returned.
const DRAIN: Duration = Duration::from_millis(200);

/// How long the init has, once told to stop (timeout, output limit), to kill the run's
/// processes, reap them and report, before the whole process group is killed from outside
/// (the report, and with it the resource usage, is then lost).
const GRACE: Duration = Duration::from_millis(500);

/// The largest report the init writes is a few lines; more is not a report.
const MAX_REPORT: u64 = 4096;

/// Settings of a [`ProcessSandbox`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProcessSandboxConfig {
    /// Where commands are looked up, and the guest's `PATH` unless the request sets one.
    pub path: String,
    /// What the guest may read and execute (Landlock). Directories include everything
    /// beneath them. The program itself is always added.
    pub read_paths: Vec<PathBuf>,
    /// Run the guest in a new network namespace (no network at all).
    pub isolate_network: bool,
    /// Confine the guest's file access, TCP and signals with Landlock.
    pub landlock: bool,
    /// When the host runs as root, run the guest as this `(uid, gid)` instead; `None` keeps
    /// root (not recommended: root ignores `RLIMIT_NPROC` and file permissions).
    pub run_as: Option<(u32, u32)>,
    /// Fail (with [`SandboxError::Setup`]) rather than run without the network namespace
    /// (when [`isolate_network`](Self::isolate_network) is set), the PID namespace, or
    /// Landlock (when [`landlock`](Self::landlock) is set) when this kernel does not offer
    /// them.
    pub require_isolation: bool,
    /// Where the run's init (a small executable embedded in the crate) is installed: a
    /// directory owned by this user, writable by nobody else, on a filesystem that allows
    /// executing files. `None`: `$XDG_RUNTIME_DIR/agentic-sandbox`, else
    /// `<temp dir>/agentic-sandbox-<uid>`. Set it when the temporary directory is `noexec`.
    pub init_dir: Option<PathBuf>,
    /// The address-space, file-size and process limits of a run whose [`Limits`] leave them
    /// `None` (the CPU-time default follows from the wall time, see [`DefaultLimits`]).
    ///
    /// [`Limits`]: crate::Limits
    pub default_limits: DefaultLimits,
}

/// The rlimits a run gets for the [`Limits`] fields it leaves `None`: `None` means these,
/// never "no limit". They are meant to let native tools work unhindered (`cargo test`, a
/// compiler, `python3 -m pytest`, Node, a JVM) while still bounding a runaway guest; a caller
/// that knows its workload sets [`Limits`] instead.
///
/// | [`Limits`] field | rlimit | default |
/// |---|---|---|
/// | `cpu_time` | `RLIMIT_CPU` | the wall time × the CPUs available to the host process ([`std::thread::available_parallelism`]) + 1 s, rounded up to whole seconds |
/// | `memory_bytes` | `RLIMIT_AS` | [`memory_bytes`](Self::memory_bytes): 32 GiB |
/// | `file_size_bytes` | `RLIMIT_FSIZE` | [`file_size_bytes`](Self::file_size_bytes): 4 GiB |
/// | `max_processes` | `RLIMIT_NPROC` | [`max_processes`](Self::max_processes): 1024 |
///
/// `RLIMIT_CPU` counts the threads of a process together, hence the CPUs in its default: a
/// compiler busy on every CPU for the whole run is stopped by the wall clock
/// ([`Termination::Timeout`]), not by this default. A default above the host process's own
/// hard limit is lowered to that limit (the guest could not be given more). A value of
/// `u64::MAX` (`RLIM_INFINITY`), here or in [`Limits`], is no limit: only a caller can ask for
/// that, and the outcome's `enforced` then leaves the `rlimit_*` entry out.
///
/// ```
/// use agentic_sandbox::ProcessSandboxConfig;
///
/// let mut config = ProcessSandboxConfig::default();
/// config.default_limits.max_processes = 4096;
/// # assert_eq!(config.default_limits.memory_bytes, 32 << 30);
/// ```
///
/// [`Limits`]: crate::Limits
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DefaultLimits {
    /// Address space of each process (`RLIMIT_AS`), in bytes. Default
    /// [`MEMORY_BYTES`](Self::MEMORY_BYTES).
    pub memory_bytes: u64,
    /// Largest file a process may write (`RLIMIT_FSIZE`), in bytes. Default
    /// [`FILE_SIZE_BYTES`](Self::FILE_SIZE_BYTES).
    pub file_size_bytes: u64,
    /// Processes and threads of the guest's user (`RLIMIT_NPROC`). Default
    /// [`MAX_PROCESSES`](Self::MAX_PROCESSES).
    pub max_processes: u32,
}

impl DefaultLimits {
    /// 32 GiB of address space per process. Address space is not memory used: runtimes
    /// reserve far more than they touch. Node 20 starts with 8 GiB but reserves about 10 GiB
    /// more for each WebAssembly memory (guard regions), so 16 GiB fits only one of them, and
    /// 32 GiB three; a JVM sizes its default heap to half the limit; glibc reserves 64 MiB per
    /// thread arena. What a run actually uses is measured in
    /// [`ResourceUsage::peak_memory_bytes`](crate::ResourceUsage::peak_memory_bytes).
    pub const MEMORY_BYTES: u64 = 32 << 30;
    /// 4 GiB per file: above what builds and tests write (debug executables and their
    /// debug information, test databases), and it still stops a guest writing one file
    /// without end.
    pub const FILE_SIZE_BYTES: u64 = 4 << 30;
    /// 1024 processes. `RLIMIT_NPROC` counts threads too: a parallel build (a job per CPU,
    /// each compiler with threads of its own) or a JVM (dozens of threads) needs hundreds on a
    /// many-core machine, while a fork bomb still stops at 1024. Counted within the run's
    /// user namespace when it has one; a guest dropped from root counts every process of its
    /// user on the host, concurrent runs included.
    pub const MAX_PROCESSES: u32 = 1024;
}

impl Default for DefaultLimits {
    fn default() -> Self {
        DefaultLimits {
            memory_bytes: Self::MEMORY_BYTES,
            file_size_bytes: Self::FILE_SIZE_BYTES,
            max_processes: Self::MAX_PROCESSES,
        }
    }
}

impl Default for ProcessSandboxConfig {
    fn default() -> Self {
        ProcessSandboxConfig {
            path: "/usr/local/bin:/usr/bin:/bin".to_owned(),
            read_paths: [
                "/usr",
                "/bin",
                "/sbin",
                "/lib",
                "/lib32",
                "/lib64",
                "/libx32",
                "/etc/ld.so.cache",
                "/etc/ld.so.conf",
                "/etc/ld.so.conf.d",
                "/etc/alternatives",
                "/etc/localtime",
                "/etc/ssl/certs",
                "/dev/null",
                "/dev/zero",
                "/dev/random",
                "/dev/urandom",
            ]
            .map(PathBuf::from)
            .to_vec(),
            isolate_network: true,
            landlock: true,
            // nobody:nogroup on Debian and most distributions.
            run_as: Some((65534, 65534)),
            require_isolation: false,
            init_dir: None,
            default_limits: DefaultLimits::default(),
        }
    }
}

/// Runs native commands confined by rlimits, namespaces and Landlock (Linux only).
///
/// Cheap to clone. The namespaces, the drop from root and the rlimits are applied by the run's
/// init, a small C program built with the crate and installed at [`ProcessSandbox::new`] (see
/// [`ProcessSandboxConfig::init_dir`]); the outcome's `enforced` list says what held for each
/// run. Must be used from a Tokio runtime with I/O and time enabled.
///
/// ```no_run
/// use agentic_sandbox::{ExecRequest, ProcessSandbox, ProcessSandboxConfig, Sandbox};
///
/// # async fn run() -> Result<(), agentic_sandbox::SandboxError> {
/// let sandbox = ProcessSandbox::new(ProcessSandboxConfig::default())?;
/// let outcome = sandbox.execute(ExecRequest::command("echo").arg("hi")).await?;
/// assert_eq!(outcome.stdout_text(), "hi\n");
/// assert!(outcome.enforced.iter().any(|p| p == "netns"));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ProcessSandbox {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: ProcessSandboxConfig,
    /// The installed init.
    init: PathBuf,
    /// The namespaces the probe saw work (only those are asked for).
    namespaces: Namespaces,
    identity: Identity,
    /// The CPUs available to this process when the sandbox was created (the CPU-time
    /// default).
    cpus: u32,
}

impl ProcessSandbox {
    /// Installs the run's init (once per build of the crate) and checks, by running `true`
    /// through it, that it can be executed and which namespaces this kernel lets us create.
    ///
    /// # Errors
    ///
    /// [`SandboxError::Setup`] when the init cannot be installed in or executed from
    /// [`ProcessSandboxConfig::init_dir`] (a directory others can write, a `noexec` mount),
    /// or when [`ProcessSandboxConfig::require_isolation`] is set and the network namespace
    /// (with [`ProcessSandboxConfig::isolate_network`]) or the PID namespace cannot be
    /// created here.
    pub fn new(config: ProcessSandboxConfig) -> Result<Self, SandboxError> {
        let identity = if rustix::process::geteuid().is_root() {
            match config.run_as {
                Some((uid, gid)) => Identity::Drop { uid, gid },
                None => Identity::KeepRoot,
            }
        } else {
            Identity::Unprivileged
        };
        let dir = config.init_dir.clone().unwrap_or_else(init::default_dir);
        let init = init::install(&dir)?;
        let wanted = Namespaces {
            net: config.isolate_network,
            pid: true,
        };
        // The kernel may forbid namespaces (user namespaces disabled by sysctl, seccomp in a
        // container): ask once, then ask runs only for what works.
        let report = init::probe(&init, &launch::namespace_args(wanted, identity))?;
        let namespaces = Namespaces {
            net: wanted.net && report.held("netns"),
            pid: report.held("pidns"),
        };
        if config.require_isolation
            && ((config.isolate_network && !namespaces.net) || !namespaces.pid)
        {
            return Err(setup_msg(
                "cannot create a network and a PID namespace here (user namespaces disabled, \
                 or a seccomp filter) and require_isolation is set",
            ));
        }
        Ok(ProcessSandbox {
            inner: Arc::new(Inner {
                config,
                init,
                namespaces,
                identity,
                cpus: std::thread::available_parallelism()
                    .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX)),
            }),
        })
    }

    /// The configuration this sandbox was built with.
    pub fn config(&self) -> &ProcessSandboxConfig {
        &self.inner.config
    }

    /// True when runs get their own network namespace on this host.
    pub fn network_isolated(&self) -> bool {
        self.inner.namespaces.net
    }

    /// True when runs get their own PID namespace on this host: then nothing a run starts
    /// outlives it, not even a process that left the process group (`setsid`).
    pub fn processes_isolated(&self) -> bool {
        self.inner.namespaces.pid
    }

    /// Where the run's init is installed.
    pub fn init_path(&self) -> &Path {
        &self.inner.init
    }
}

#[async_trait]
impl Sandbox for ProcessSandbox {
    fn capabilities(&self) -> SandboxCapabilities {
        SandboxCapabilities {
            wasm: false,
            languages: Vec::new(),
            native: true,
        }
    }

    async fn execute(&self, request: ExecRequest) -> Result<ExecOutcome, SandboxError> {
        self.inner.run(request).await
    }
}

/// Why the wait ended.
enum Ended {
    /// The init's report ended: the program exited and the run is over.
    Reported,
    TimedOut,
    OutputLimit,
}

impl Inner {
    async fn run(&self, request: ExecRequest) -> Result<ExecOutcome, SandboxError> {
        let ExecRequest {
            program,
            args,
            env,
            stdin,
            mount,
            working_dir,
            limits,
        } = request;
        let Program::Command { program } = program else {
            return Err(SandboxError::Unsupported(
                "the process sandbox runs native commands; use WasmSandbox for WebAssembly \
                 modules and Python/JavaScript source"
                    .into(),
            ));
        };
        if limits.wall_time.is_zero() {
            return Err(SandboxError::InvalidRequest(
                "limits.wall_time must be greater than zero".into(),
            ));
        }
        if env
            .keys()
            .any(|k| k.is_empty() || k.contains('=') || k.contains('\0'))
            || env.values().chain(args.iter()).any(|v| v.contains('\0'))
        {
            return Err(SandboxError::InvalidRequest(
                "env names must be non-empty without '=' and nothing may contain NUL bytes".into(),
            ));
        }
        let path = env.get("PATH").cloned();
        let resolved = launch::resolve(&program, &self.config.path).ok_or_else(|| {
            SandboxError::InvalidProgram(format!(
                "command `{program}` not found (or not executable) on the sandbox's PATH {}",
                self.config.path
            ))
        })?;
        if let Some(mount) = &mount
            && !mount.host_path.is_dir()
        {
            return Err(SandboxError::InvalidRequest(format!(
                "mount.host_path {} is not a directory",
                mount.host_path.display()
            )));
        }

        // The working directory: as asked, else the mount, else a fresh empty directory the
        // guest owns (removed when `scratch` drops, after the run).
        let mut scratch = None;
        let workdir = match (&working_dir, &mount) {
            (Some(dir), _) => {
                let dir = PathBuf::from(dir);
                if !dir.is_dir() {
                    return Err(SandboxError::InvalidRequest(format!(
                        "working_dir {} is not a directory",
                        dir.display()
                    )));
                }
                dir
            }
            (None, Some(mount)) => mount.host_path.clone(),
            (None, None) => {
                let dir = tempfile::Builder::new()
                    .prefix("agentic-sandbox-")
                    .tempdir()
                    .map_err(|e| setup("cannot create a working directory", e))?;
                if let Identity::Drop { uid, gid } = self.identity {
                    std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                        .map_err(|e| setup("cannot hand the working directory to the guest", e))?;
                }
                let path = dir.path().to_path_buf();
                scratch = Some(dir);
                path
            }
        };

        let rules = self.rules(&resolved, &workdir, scratch.is_some(), mount.as_ref());
        // Every rlimit is set: a `None` in the request is the default, never no limit.
        let rlimits = Rlimits::resolve(&limits, &self.config.default_limits, self.cpus);
        let launched = launch::build(
            &self.init,
            self.namespaces,
            self.identity,
            self.config.require_isolation,
            &rlimits,
            &resolved,
            &args,
        );

        // The control socket: the guest's stdin goes to the init through it, the request to
        // stop goes the same way, and the init's report comes back. The guest never holds it.
        let (control, init_end) = std::os::unix::net::UnixStream::pair()
            .map_err(|e| setup("cannot create the control socket", e))?;
        let control = control
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixStream::from_std(control))
            .map_err(|e| setup("cannot register the control socket", e))?;
        let mut command = tokio::process::Command::new(&launched.program);
        command
            .args(&launched.args)
            .env_clear()
            .envs(&env)
            .current_dir(&workdir)
            // Its own process group, so the whole group can be killed at once.
            .process_group(0)
            .kill_on_drop(true)
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(init_end)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if path.is_none() {
            command.env("PATH", &self.config.path);
        }
        for (name, value) in [("HOME", &workdir), ("TMPDIR", &workdir)] {
            if !env.contains_key(name) {
                command.env(name, value);
            }
        }

        let oom_kills_before = oom_kills();
        let started = Instant::now();
        let (mut child, landlock) = self.spawn(command, rules).await?;
        if self.config.landlock && self.config.require_isolation && landlock.is_empty() {
            let _ = child.start_kill();
            return Err(setup_msg(
                "Landlock is not available and require_isolation is set",
            ));
        }
        let group = child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .and_then(rustix::process::Pid::from_raw);
        // Should this future be dropped mid-run (the caller cancelled), the whole group is
        // killed: the init, PID 1 of the run's namespace, is in it, and the kernel kills the
        // rest of the namespace with it. (The init also stops the run when the host's end of
        // the control socket closes, which dropping this future does too.)
        let mut guard = KillGroupOnDrop(group);

        let (report_reader, mut control_writer) = control.into_split();
        let (stop, stop_requested) = tokio::sync::oneshot::channel::<()>();
        // A task, so that a large stdin never blocks the wait below. The init reads all of
        // stdin before it starts the guest; the length comes first so it knows where it ends.
        tokio::spawn(async move {
            let header = u64::try_from(stdin.len()).unwrap_or(u64::MAX).to_le_bytes();
            if control_writer.write_all(&header).await.is_ok() {
                let _ = control_writer.write_all(&stdin).await;
            }
            // Sent or dropped: either way the run is over for the host. Dropping the write
            // half shuts the socket down for writing, which tells the init to stop.
            let _ = stop_requested.await;
            drop(control_writer);
        });
        let stdout = Capture::new(limits.output_bytes);
        let stderr = Capture::new(limits.output_bytes);
        let overflow = Arc::new(tokio::sync::Notify::new());
        let readers = [
            child
                .stdout
                .take()
                .map(|p| spawn_reader(p, stdout.clone(), overflow.clone())),
            child
                .stderr
                .take()
                .map(|p| spawn_reader(p, stderr.clone(), overflow.clone())),
        ];

        // The init writes its report once the program exited and everything of the run is
        // dead, then exits: the end of the report is the end of the run. (The process the
        // host spawned exits as soon as the init is running.)
        let reported = async move {
            let mut report = Vec::new();
            let _ = report_reader
                .take(MAX_REPORT)
                .read_to_end(&mut report)
                .await;
            report
        };
        tokio::pin!(reported);
        let mut report = None;
        let ended = tokio::select! {
            // In this order when several are ready at once: an overflow we are about to act
            // on wins over the exit it may cause.
            biased;
            () = overflow.notified() => Ended::OutputLimit,
            bytes = &mut reported => {
                report = Some(bytes);
                Ended::Reported
            }
            () = tokio::time::sleep(limits.wall_time) => Ended::TimedOut,
        };
        // Whatever ended the run, nothing of it may outlive it. Ask the init to stop: it kills
        // every process of the run (all of its PID namespace), reaps them, reports and exits.
        // Give it a moment, then kill the whole group from outside in any case: that is what
        // stops a run whose init cannot (no PID namespace here, or stuck).
        drop(stop);
        let report = match report {
            Some(report) => report,
            None => tokio::time::timeout(GRACE, &mut reported)
                .await
                .unwrap_or_default(),
        };
        guard.kill_now();
        let launcher = child.wait().await;
        let wall_time = started.elapsed();
        let report = Report::parse(&report);
        for reader in readers.into_iter().flatten() {
            // Stragglers that left the group may still hold the pipes open (only without a
            // PID namespace); do not wait for them longer than the drain allowance.
            let _ = tokio::time::timeout(DRAIN, reader).await;
        }
        drop(scratch);

        if let Some(Report {
            error: Some((stage, errno)),
            ..
        }) = &report
        {
            return Err(SandboxError::Setup {
                message: format!("the sandbox's init could not set up the run ({stage})"),
                source: Some(Box::new(std::io::Error::from_raw_os_error(*errno))),
            });
        }
        let (stdout, stdout_truncated) = stdout.take();
        let (stderr, stderr_truncated) = stderr.take();
        let usage = report.as_ref().and_then(|r| r.usage);
        let termination = match (&ended, report.as_ref().and_then(|r| r.status)) {
            (Ended::TimedOut, _) => Termination::Timeout,
            (Ended::OutputLimit, _) => Termination::OutputLimit,
            (Ended::Reported, Some(status)) => {
                let status = ExitStatus::from_raw(status);
                let sigkill =
                    status.signal() == Some(libc_signal::SIGKILL) || status.code() == Some(137);
                classify(&Evidence {
                    status,
                    stderr: &stderr,
                    usage,
                    memory_limit: Some(rlimits.address_space),
                    oom_kills: if sigkill {
                        oom_kills_before
                            .zip(oom_kills())
                            .map(|(before, after)| after.saturating_sub(before))
                    } else {
                        None
                    },
                })
            }
            (Ended::Reported, None) => Termination::Trap {
                message: match launcher {
                    Ok(status) if !status.success() => {
                        format!("the sandbox's init failed without a report ({status})")
                    }
                    _ => "the sandbox's init ended without a report".to_owned(),
                },
            },
        };
        let mut enforced = launched.enforced;
        if let Some(report) = &report {
            enforced.extend(report.held.iter().filter(|h| *h != "subreaper").cloned());
        }
        enforced.extend(landlock);
        Ok(ExecOutcome {
            termination,
            stdout,
            stderr,
            stdout_truncated,
            stderr_truncated,
            usage: ResourceUsage {
                fuel_used: None,
                wall_time,
                cpu_time: usage.map(|u| u.cpu_time),
                peak_memory_bytes: usage.map(|u| u.peak_rss_bytes),
            },
            enforced,
        })
    }

    /// Landlock rules for one run.
    fn rules(&self, program: &Path, workdir: &Path, scratch: bool, mount: Option<&Mount>) -> Rules {
        let mut rules = Rules {
            read: self.config.read_paths.clone(),
            write: vec![PathBuf::from("/dev/null")],
        };
        rules.read.push(program.to_path_buf());
        rules.read.push(self.init.clone());
        match mount {
            Some(Mount {
                host_path,
                mode: MountMode::ReadWrite,
                ..
            }) => rules.write.push(host_path.clone()),
            Some(Mount { host_path, .. }) => rules.read.push(host_path.clone()),
            None => {}
        }
        if scratch {
            rules.write.push(workdir.to_path_buf());
        } else {
            // A working directory the caller chose is readable; it is writable only when it
            // lies in a read-write mount (covered above).
            rules.read.push(workdir.to_path_buf());
        }
        rules
    }

    /// Spawns `command` from a fresh thread that first confines itself with Landlock (the
    /// restriction is per thread and inherited by children; the thread then ends, so no
    /// host thread is ever left confined).
    async fn spawn(
        &self,
        mut command: tokio::process::Command,
        rules: Rules,
    ) -> Result<(tokio::process::Child, Vec<String>), SandboxError> {
        let handle = tokio::runtime::Handle::current();
        let use_landlock = self.config.landlock;
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("agentic-sandbox-spawn".into())
            .spawn(move || {
                let result = (|| {
                    let enforced = if use_landlock {
                        confine::restrict_current_thread(&rules)
                            .map_err(|e| setup("cannot set up Landlock", e))?
                    } else {
                        Vec::new()
                    };
                    // The caller gave up while this thread was starting (a loaded machine):
                    // start nothing.
                    if tx.is_closed() {
                        return Err(setup_msg("the run was cancelled before it started"));
                    }
                    // The child's pipes and reaping belong to the caller's runtime.
                    let _runtime = handle.enter();
                    let child = spawn_retrying(|| command.spawn()).map_err(|e| {
                        if e.raw_os_error() == Some(7) {
                            // E2BIG: argv and environment together exceed the kernel's limit.
                            SandboxError::InvalidRequest(format!(
                                "arguments and environment are too large to execute: {e}"
                            ))
                        } else {
                            setup("cannot start the guest", e)
                        }
                    })?;
                    Ok((child, enforced))
                })();
                if let Err(Ok((child, _))) = tx.send(result) {
                    // Cancelled just now: the child goes with its group (and the init's PID
                    // namespace with it), not only the direct child `kill_on_drop` would kill.
                    let group = child
                        .id()
                        .and_then(|pid| i32::try_from(pid).ok())
                        .and_then(rustix::process::Pid::from_raw);
                    drop(KillGroupOnDrop(group));
                }
            })
            .map_err(|e| setup("cannot start the spawning thread", e))?;
        rx.await
            .map_err(|e| setup("the spawning thread ended without an answer", e))?
    }
}

/// Runs `spawn`, again while it fails with `ETXTBSY`. Right after the init was installed, a
/// process that another thread of this program forks (for any reason) holds the installer's
/// write descriptor until it `exec`s, and Linux refuses to execute a file open for writing.
/// That lasts microseconds to milliseconds; a short, bounded retry is the usual cure.
pub(crate) fn spawn_retrying<T>(
    mut spawn: impl FnMut() -> std::io::Result<T>,
) -> std::io::Result<T> {
    const ETXTBSY: i32 = 26;
    let mut attempts = 0;
    loop {
        match spawn() {
            Err(e) if e.raw_os_error() == Some(ETXTBSY) && attempts < 50 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(2 * attempts));
            }
            other => return other,
        }
    }
}

/// Kills a process group with SIGKILL, once: explicitly at the end of a run, or on drop if
/// the run never got there.
struct KillGroupOnDrop(Option<rustix::process::Pid>);

impl KillGroupOnDrop {
    fn kill_now(&mut self) {
        // Taken, so it is never signalled again: after the leader is reaped its number may
        // be reused, and a later kill could hit an unrelated group.
        if let Some(group) = self.0.take() {
            // ESRCH (the group is already gone) is the expected, harmless case.
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
    }
}

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// What the classification of a run that ended by itself looks at.
struct Evidence<'a> {
    /// The program's own wait status, from the init.
    status: ExitStatus,
    /// What it wrote on stderr (as kept).
    stderr: &'a [u8],
    /// What the run used.
    usage: Option<Usage>,
    /// The address-space limit of each process.
    memory_limit: Option<u64>,
    /// Processes the kernel's OOM killer killed, anywhere on this host, during the run; read
    /// only when the program was killed by `SIGKILL`.
    oom_kills: Option<u64>,
}

/// Why the program ended. The status is exact (the init `wait`s for the program itself);
/// only [`Termination::OutOfMemory`] is an inference, see [`out_of_memory`].
fn classify(evidence: &Evidence<'_>) -> Termination {
    let status = evidence.status;
    if status.success() {
        return Termination::Exited { code: 0 };
    }
    if status.signal() == Some(libc_signal::SIGXCPU) {
        return Termination::CpuLimit;
    }
    if out_of_memory(evidence) {
        return Termination::OutOfMemory;
    }
    match (status.code(), status.signal()) {
        (Some(code), _) => Termination::Exited { code },
        (None, Some(signal)) => Termination::Trap {
            message: format!("killed by signal {signal} ({})", libc_signal::name(signal)),
        },
        (None, None) => Termination::Trap {
            message: format!("ended with status {status}"),
        },
    }
}

/// True when a failed run most likely failed for lack of memory. The kernel does not say so
/// directly (hitting `RLIMIT_AS` just makes `mmap`/`brk` fail with `ENOMEM`), so this infers
/// it from three pieces of evidence, any of which suffices:
///
/// 1. the program was killed by `SIGKILL`, or exited with 137 (a shell reporting a child
///    killed by `SIGKILL`), which the sandbox did not send (it had not stopped the run), while
///    the kernel's OOM-kill counter (`oom_kill` in `/proc/vmstat`) went up;
/// 2. some process of the run had a peak resident set of at least 90 % of the address-space
///    limit: it had used nearly all the memory it was allowed;
/// 3. its stderr says so, in the words of a common runtime (see [`says_out_of_memory`]).
fn out_of_memory(evidence: &Evidence<'_>) -> bool {
    let status = evidence.status;
    let sigkill = status.signal() == Some(libc_signal::SIGKILL) || status.code() == Some(137);
    if sigkill && evidence.oom_kills.is_some_and(|kills| kills > 0) {
        return true;
    }
    if let (Some(limit), Some(usage)) = (evidence.memory_limit, evidence.usage)
        && usage.peak_rss_bytes >= limit / 10 * 9
    {
        return true;
    }
    says_out_of_memory(evidence.stderr)
}

/// The kernel's count of processes killed by the OOM killer since boot (`None` where
/// `/proc/vmstat` cannot be read).
fn oom_kills() -> Option<u64> {
    let vmstat = std::fs::read_to_string("/proc/vmstat").ok()?;
    vmstat
        .lines()
        .find_map(|line| line.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

/// `RLIMIT_AS` makes allocations fail; programs then die in their own words. This recognises
/// the common ones (CPython, glibc's `strerror(ENOMEM)`, Rust's allocator, C++, Node/V8, Go,
/// Java). It is a heuristic, applied only to runs that failed.
fn says_out_of_memory(stderr: &[u8]) -> bool {
    let text = String::from_utf8_lossy(stderr).to_ascii_lowercase();
    [
        "memoryerror",
        "cannot allocate memory",
        "out of memory",
        "memory allocation of",
        "std::bad_alloc",
        "javascript heap out of memory",
        "outofmemoryerror",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

/// The few signal numbers the classification needs (Linux, all architectures we build for).
mod libc_signal {
    pub(super) const SIGXCPU: i32 = rustix::process::Signal::XCPU.as_raw();
    pub(super) const SIGKILL: i32 = rustix::process::Signal::KILL.as_raw();

    pub(super) fn name(signal: i32) -> &'static str {
        match signal {
            1 => "SIGHUP",
            2 => "SIGINT",
            3 => "SIGQUIT",
            4 => "SIGILL",
            5 => "SIGTRAP",
            6 => "SIGABRT",
            7 => "SIGBUS",
            8 => "SIGFPE",
            9 => "SIGKILL",
            11 => "SIGSEGV",
            13 => "SIGPIPE",
            14 => "SIGALRM",
            15 => "SIGTERM",
            24 => "SIGXCPU",
            25 => "SIGXFSZ (file size limit)",
            31 => "SIGSYS",
            _ => "signal",
        }
    }
}

/// Output kept up to a limit; shared with the reader task so that what was read survives a
/// reader that is abandoned at the drain deadline.
#[derive(Clone)]
struct Capture {
    limit: usize,
    inner: Arc<Mutex<(Vec<u8>, bool)>>,
}

impl Capture {
    fn new(limit: usize) -> Self {
        Capture {
            limit,
            inner: Arc::new(Mutex::new((Vec::new(), false))),
        }
    }

    fn lock(&self) -> MutexGuard<'_, (Vec<u8>, bool)> {
        // Held for a memcpy only; a poisoned buffer is still a valid prefix of the output.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps what fits; false once something did not.
    fn push(&self, bytes: &[u8]) -> bool {
        let mut inner = self.lock();
        let room = self.limit.saturating_sub(inner.0.len());
        let take = room.min(bytes.len());
        inner.0.extend_from_slice(&bytes[..take]);
        if take < bytes.len() {
            inner.1 = true;
        }
        !inner.1
    }

    fn take(&self) -> (Vec<u8>, bool) {
        let mut inner = self.lock();
        (std::mem::take(&mut inner.0), inner.1)
    }
}

fn spawn_reader(
    mut pipe: impl AsyncRead + Unpin + Send + 'static,
    capture: Capture,
    overflow: Arc<tokio::sync::Notify>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut notified = false;
        loop {
            match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if !capture.push(&buf[..n]) && !notified {
                        // `notify_one` stores a permit, so the run sees it even if it is not
                        // waiting yet. Keep reading (and discarding) until the group is
                        // killed: closing the pipe now would kill the guest with SIGPIPE
                        // first, and the outcome would blame a signal, not the output.
                        overflow.notify_one();
                        notified = true;
                    }
                }
            }
        }
    })
}

fn setup(
    message: impl Into<String>,
    source: impl std::error::Error + Send + Sync + 'static,
) -> SandboxError {
    SandboxError::Setup {
        message: message.into(),
        source: Some(Box::new(source)),
    }
}

fn setup_msg(message: &str) -> SandboxError {
    SandboxError::Setup {
        message: message.to_owned(),
        source: None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn evidence(status: i32, stderr: &[u8]) -> Evidence<'_> {
        Evidence {
            status: ExitStatus::from_raw(status),
            stderr,
            usage: Some(Usage {
                cpu_time: Duration::from_millis(5),
                peak_rss_bytes: 10 << 20,
            }),
            memory_limit: Some(256 << 20),
            oom_kills: None,
        }
    }

    #[test]
    fn statuses_are_classified() {
        let exited = |code: i32| code << 8;
        let classify_raw = |status: i32, stderr: &[u8]| classify(&evidence(status, stderr));
        assert_eq!(
            classify_raw(exited(0), b""),
            Termination::Exited { code: 0 }
        );
        assert_eq!(
            classify_raw(exited(2), b"usage"),
            Termination::Exited { code: 2 }
        );
        assert_eq!(
            classify_raw(exited(1), b"Traceback...\nMemoryError\n"),
            Termination::OutOfMemory
        );
        assert_eq!(
            classify_raw(exited(0), b"MemoryError handled"),
            Termination::Exited { code: 0 },
            "a success is a success, whatever it printed"
        );
        assert_eq!(classify_raw(24, b""), Termination::CpuLimit);
        assert_eq!(
            classify_raw(6, b"memory allocation of 1024 bytes failed\n"),
            Termination::OutOfMemory
        );
        assert_eq!(
            classify_raw(11, b""),
            Termination::Trap {
                message: "killed by signal 11 (SIGSEGV)".into()
            }
        );
        assert_eq!(
            classify_raw(9, b""),
            Termination::Trap {
                message: "killed by signal 9 (SIGKILL)".into()
            },
            "a SIGKILL with no OOM kill on the host is just a signal"
        );
    }

    #[test]
    fn out_of_memory_is_inferred_from_the_oom_killer_and_from_peak_memory() {
        let oom_killed = |status: i32| Evidence {
            oom_kills: Some(1),
            ..evidence(status, b"")
        };
        assert_eq!(classify(&oom_killed(9)), Termination::OutOfMemory);
        assert_eq!(classify(&oom_killed(137 << 8)), Termination::OutOfMemory);
        // The OOM killer struck somewhere, but this program died otherwise.
        assert_eq!(
            classify(&oom_killed(11)).clone(),
            classify(&evidence(11, b""))
        );
        assert_eq!(
            classify(&oom_killed(1 << 8)),
            Termination::Exited { code: 1 }
        );

        let near_the_limit = |status: i32, rss: u64| Evidence {
            usage: Some(Usage {
                cpu_time: Duration::ZERO,
                peak_rss_bytes: rss,
            }),
            ..evidence(status, b"")
        };
        assert_eq!(
            classify(&near_the_limit(1 << 8, 250 << 20)),
            Termination::OutOfMemory
        );
        assert_eq!(
            classify(&near_the_limit(1 << 8, 100 << 20)),
            Termination::Exited { code: 1 }
        );
        assert_eq!(
            classify(&near_the_limit(0, 250 << 20)),
            Termination::Exited { code: 0 },
            "using the memory is not failing for lack of it"
        );
    }

    #[test]
    fn capture_keeps_the_prefix_and_flags_the_rest() {
        let capture = Capture::new(4);
        assert!(capture.push(b"ab"));
        assert!(!capture.push(b"cdef"));
        assert_eq!(capture.take(), (b"abcd".to_vec(), true));
    }
}
