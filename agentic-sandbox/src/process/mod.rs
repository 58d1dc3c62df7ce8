//! [`ProcessSandbox`]: native commands (`cargo test`, `python3 -m pytest`, a compiler) under
//! Linux resource limits, a network namespace and Landlock. No container engine.
//!
//! # What confines a command
//!
//! | Resource | Mechanism | Outcome when hit | `enforced` entry |
//! |---|---|---|---|
//! | CPU time | `RLIMIT_CPU` from [`Limits::cpu_time`] (per process) | [`Termination::CpuLimit`] | `rlimit_cpu` |
//! | Memory | `RLIMIT_AS` from [`Limits::memory_bytes`] (address space, per process) | allocations fail; [`Termination::OutOfMemory`] when the program then fails saying so | `rlimit_as` |
//! | File size | `RLIMIT_FSIZE` from [`Limits::file_size_bytes`] | [`Termination::Trap`] (`SIGXFSZ`) | `rlimit_fsize` |
//! | Processes | `RLIMIT_NPROC` from [`Limits::max_processes`] (per user; not for root, hence the drop below) | `fork` fails in the guest | `rlimit_nproc` |
//! | Wall-clock time | a host timer; the whole process group is killed | [`Termination::Timeout`] | `process_group` |
//! | Output | stdout and stderr each kept up to [`Limits::output_bytes`]; past it the group is killed | [`Termination::OutputLimit`] | — |
//! | Network | a new, empty network namespace (`unshare --net`, in a user namespace when not root) | connections fail | `netns`, `userns` |
//! | Privileges | as root, the guest runs as an unprivileged user ([`ProcessSandboxConfig::run_as`]) | — | `uid:<n>` |
//! | Files | Landlock: read/execute only [`ProcessSandboxConfig::read_paths`] and the program; write only the working directory and a read-write [`Mount`] | `EACCES` in the guest | `landlock_fs` |
//! | TCP, signals | Landlock (ABI 4 and 6): no TCP bind/connect; no signals or abstract sockets outside the sandbox | `EACCES`/`EPERM` | `landlock_net`, `landlock_scope` |
//! | Environment | exactly [`ExecRequest::env`], plus `PATH`, `HOME` and `TMPDIR` when it does not set them | — | `scrubbed_env` |
//!
//! Isolation is best effort where the kernel decides: each outcome's
//! [`ExecOutcome::enforced`] lists what actually held for that run, and
//! [`ProcessSandboxConfig::require_isolation`] turns a missing namespace or Landlock into an
//! error instead. The mount is seen at its host path (there is no mount namespace), so
//! [`Mount::guest_path`] is ignored; the working directory defaults to the mount, or to a
//! fresh empty directory that is removed afterwards.
//!
//! Known limits: a guest process that leaves the process group (`setsid`) survives the
//! group kill, though it stays inside the namespace, the rlimits and Landlock; CPU time and
//! memory are limited per process, not per tree (a cgroup would be needed for that, and would
//! need privileges these machines' users do not have).
//!
//! [`Limits::cpu_time`]: crate::Limits::cpu_time
//! [`Limits::memory_bytes`]: crate::Limits::memory_bytes
//! [`Limits::file_size_bytes`]: crate::Limits::file_size_bytes
//! [`Limits::max_processes`]: crate::Limits::max_processes
//! [`Limits::output_bytes`]: crate::Limits::output_bytes

mod confine;
mod launch;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use self::confine::Rules;
use self::launch::{Identity, Tools};
use crate::{
    ExecOutcome, ExecRequest, Mount, MountMode, Program, ResourceUsage, Sandbox,
    SandboxCapabilities, SandboxError, Termination,
};

/// Where the sandbox looks for `unshare` and `prlimit` (never the caller's `PATH`).
const SYSTEM_PATH: &str = "/usr/bin:/bin:/usr/sbin:/sbin";

/// How long output may still arrive after the program exited or was killed (from processes
/// that escaped the group and still hold the pipes) before the outcome is returned.
const DRAIN: Duration = Duration::from_millis(200);

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
    /// Fail a run (with [`SandboxError::Setup`]) rather than run it without the network
    /// namespace or Landlock when they are enabled here but unavailable on this kernel.
    pub require_isolation: bool,
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
        }
    }
}

/// Runs native commands confined by rlimits, namespaces and Landlock (Linux only).
///
/// Cheap to clone. Requires util-linux's `unshare` and `prlimit` (present on every Debian
/// and Ubuntu) for the namespace and the limits; without them the outcome's `enforced` list
/// says what is missing. Must be used from a Tokio runtime with I/O and time enabled.
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
    tools: Tools,
    identity: Identity,
}

impl ProcessSandbox {
    /// Finds `unshare` and `prlimit` and checks (by running `true` through them once) that
    /// this kernel lets us create the namespaces.
    ///
    /// # Errors
    ///
    /// [`SandboxError::Setup`] when [`ProcessSandboxConfig::require_isolation`] is set and the
    /// network namespace cannot be created here.
    pub fn new(config: ProcessSandboxConfig) -> Result<Self, SandboxError> {
        let identity = if rustix::process::geteuid().is_root() {
            match config.run_as {
                Some((uid, gid)) => Identity::Drop { uid, gid },
                None => Identity::KeepRoot,
            }
        } else {
            Identity::Unprivileged
        };
        let prlimit = launch::resolve("prlimit", SYSTEM_PATH);
        let unshare = launch::resolve("unshare", SYSTEM_PATH)
            .filter(|unshare| config.isolate_network && namespaces_work(unshare, identity));
        if config.isolate_network && config.require_isolation && unshare.is_none() {
            return Err(SandboxError::Setup {
                message: "cannot create a network namespace here (util-linux `unshare` missing, \
                          or user namespaces disabled) and require_isolation is set"
                    .into(),
                source: None,
            });
        }
        Ok(ProcessSandbox {
            inner: Arc::new(Inner {
                config,
                tools: Tools { unshare, prlimit },
                identity,
            }),
        })
    }

    /// The configuration this sandbox was built with.
    pub fn config(&self) -> &ProcessSandboxConfig {
        &self.inner.config
    }

    /// True when runs get their own network namespace on this host.
    pub fn network_isolated(&self) -> bool {
        self.inner.tools.unshare.is_some()
    }
}

/// Runs `true` through `unshare` as a run would: the kernel may forbid namespaces (user
/// namespaces disabled by sysctl, seccomp in a container).
fn namespaces_work(unshare: &Path, identity: Identity) -> bool {
    let launch = launch::build(
        &Tools {
            unshare: Some(unshare.to_path_buf()),
            prlimit: None,
        },
        identity,
        true,
        &crate::Limits::default(),
        Path::new("/bin/true"),
        &[],
    );
    std::process::Command::new(&launch.program)
        .args(&launch.args)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
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
    Exited(ExitStatus),
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
        let launched = launch::build(
            &self.tools,
            self.identity,
            self.config.isolate_network,
            &limits,
            &resolved,
            &args,
        );
        if self.config.require_isolation
            && self.config.isolate_network
            && !launched.enforced.iter().any(|e| e == "netns")
        {
            return Err(setup_msg(
                "no network namespace available and require_isolation is set",
            ));
        }

        let mut command = tokio::process::Command::new(&launched.program);
        command
            .args(&launched.args)
            .env_clear()
            .envs(&env)
            .current_dir(&workdir)
            // Its own process group, so the whole group can be killed at once.
            .process_group(0)
            .kill_on_drop(true)
            .stdin(Stdio::piped())
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
        // killed, not just the direct child (which `kill_on_drop` covers).
        let mut guard = KillGroupOnDrop(group);

        if let Some(mut pipe) = child.stdin.take() {
            // A guest that never reads stdin must not block us: write from a task, and
            // ignore a broken pipe (the guest may exit without reading).
            tokio::spawn(async move {
                let _ = pipe.write_all(&stdin).await;
            });
        }
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

        let ended = tokio::select! {
            // In this order when several are ready at once: an overflow we are about to act
            // on wins over the exit it may cause.
            biased;
            () = overflow.notified() => Ended::OutputLimit,
            status = child.wait() => match status {
                Ok(status) => Ended::Exited(status),
                Err(e) => return Err(setup("cannot wait for the guest", e)),
            },
            () = tokio::time::sleep(limits.wall_time) => Ended::TimedOut,
        };
        // Whatever ended the run, nothing of it may outlive it: kill the whole group (the
        // program's background children included), then reap the program.
        guard.kill_now();
        let status = match ended {
            Ended::Exited(status) => Some(status),
            Ended::TimedOut | Ended::OutputLimit => {
                let _ = child.wait().await;
                None
            }
        };
        let wall_time = started.elapsed();
        for reader in readers.into_iter().flatten() {
            // Stragglers that left the group may still hold the pipes open; do not wait for
            // them longer than the drain allowance.
            let _ = tokio::time::timeout(DRAIN, reader).await;
        }
        drop(scratch);

        let (stdout, stdout_truncated) = stdout.take();
        let (stderr, stderr_truncated) = stderr.take();
        let termination = match ended {
            Ended::TimedOut => Termination::Timeout,
            Ended::OutputLimit => Termination::OutputLimit,
            Ended::Exited(_) => classify(status, &stderr),
        };
        let mut enforced = launched.enforced;
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
                cpu_time: None,
                peak_memory_bytes: None,
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
        rules.read.extend(self.tools.unshare.iter().cloned());
        rules.read.extend(self.tools.prlimit.iter().cloned());
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
                    // The child's pipes and reaping belong to the caller's runtime.
                    let _runtime = handle.enter();
                    let child = command.spawn().map_err(|e| {
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
                let _ = tx.send(result);
            })
            .map_err(|e| setup("cannot start the spawning thread", e))?;
        rx.await
            .map_err(|e| setup("the spawning thread ended without an answer", e))?
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

/// Why the program ended, from its exit status and what it said.
fn classify(status: Option<ExitStatus>, stderr: &[u8]) -> Termination {
    let Some(status) = status else {
        return Termination::Timeout;
    };
    if let Some(code) = status.code() {
        if code != 0 && says_out_of_memory(stderr) {
            return Termination::OutOfMemory;
        }
        return Termination::Exited { code };
    }
    match status.signal() {
        Some(signal) if signal == libc_signal::SIGXCPU => Termination::CpuLimit,
        Some(signal) if says_out_of_memory(stderr) => {
            let _ = signal;
            Termination::OutOfMemory
        }
        Some(signal) => Termination::Trap {
            message: format!("killed by signal {signal} ({})", libc_signal::name(signal)),
        },
        None => Termination::Trap {
            message: format!("ended with status {status}"),
        },
    }
}

/// `RLIMIT_AS` makes allocations fail; programs then die in their own words. This recognises
/// the common ones (CPython, glibc/strerror, Rust's allocator, C++, Node/V8, Go, Java). It is a
/// heuristic, applied only to runs that failed.
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

    #[test]
    fn statuses_are_classified() {
        let exited = |code: i32| Some(ExitStatus::from_raw(code << 8));
        let signalled = |signal: i32| Some(ExitStatus::from_raw(signal));
        assert_eq!(classify(exited(0), b""), Termination::Exited { code: 0 });
        assert_eq!(
            classify(exited(2), b"usage"),
            Termination::Exited { code: 2 }
        );
        assert_eq!(
            classify(exited(1), b"Traceback...\nMemoryError\n"),
            Termination::OutOfMemory
        );
        assert_eq!(
            classify(exited(0), b"MemoryError handled"),
            Termination::Exited { code: 0 },
            "a success is a success, whatever it printed"
        );
        assert_eq!(classify(signalled(24), b""), Termination::CpuLimit);
        assert_eq!(
            classify(signalled(6), b"memory allocation of 1024 bytes failed\n"),
            Termination::OutOfMemory
        );
        assert_eq!(
            classify(signalled(11), b""),
            Termination::Trap {
                message: "killed by signal 11 (SIGSEGV)".into()
            }
        );
        assert_eq!(classify(None, b""), Termination::Timeout);
    }

    #[test]
    fn capture_keeps_the_prefix_and_flags_the_rest() {
        let capture = Capture::new(4);
        assert!(capture.push(b"ab"));
        assert!(!capture.push(b"cdef"));
        assert_eq!(capture.take(), (b"abcd".to_vec(), true));
    }
}
