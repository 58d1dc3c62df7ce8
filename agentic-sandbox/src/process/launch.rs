//! The command line that starts a native program through the run's init (`init.c`).
//!
//! The crate has no `unsafe` (the workspace forbids it), so it cannot run code between `fork`
//! and `exec` the way a `pre_exec` hook would. The init, a small C program built by `build.rs`,
//! does that work:
//!
//! ```text
//! agentic-sandbox-init [--user] --net --pid [--require] [--uid=U --gid=G]
//!     --cpu=S --as=B --fsize=B --nproc=N -- <program> <args>
//! ```
//!
//! - new network and PID namespaces (as a normal user inside a new user namespace, which is
//!   what makes them possible without privileges); the init is PID 1 of the PID namespace, so
//!   when the run ends every process of it dies, `setsid` or not;
//! - as root, the guest drops to an unprivileged user (root would be exempt from
//!   `RLIMIT_NPROC` and could read root's files and write sysctls);
//! - the rlimits are set in the guest alone, after the drop, right before `exec`.
//!
//! Only namespaces the probe at [`ProcessSandbox::new`](super::ProcessSandbox::new) saw work
//! are asked for; the init's report says which held for each run.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::Limits;

/// The namespaces this kernel lets us create, as the probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Namespaces {
    /// A network namespace.
    pub(crate) net: bool,
    /// A PID namespace.
    pub(crate) pid: bool,
}

/// Who the guest runs as: dropping from root needs `--uid`/`--gid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Identity {
    /// We are root and the guest runs as this unprivileged user and group.
    Drop { uid: u32, gid: u32 },
    /// We are root and the configuration keeps the guest root (not recommended).
    KeepRoot,
    /// We are not root; the guest runs as us (namespaces need a user namespace).
    Unprivileged,
}

/// The program and arguments to spawn, and the limits they put in place (the namespaces
/// that held come from the init's report).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Launch {
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<OsString>,
    pub(crate) enforced: Vec<String>,
}

/// The init's options asking for `namespaces` (the probe asks for all of them).
pub(crate) fn namespace_args(namespaces: Namespaces, identity: Identity) -> Vec<String> {
    let mut args = Vec::new();
    if identity == Identity::Unprivileged && (namespaces.net || namespaces.pid) {
        args.push("--user".to_owned());
    }
    if namespaces.net {
        args.push("--net".to_owned());
    }
    if namespaces.pid {
        args.push("--pid".to_owned());
    }
    args
}

pub(crate) fn build(
    init: &Path,
    namespaces: Namespaces,
    identity: Identity,
    require: bool,
    limits: &Limits,
    program: &Path,
    args: &[String],
) -> Launch {
    let mut argv: Vec<OsString> = namespace_args(namespaces, identity)
        .into_iter()
        .map(OsString::from)
        .collect();
    let mut enforced = vec!["process_group".to_owned(), "scrubbed_env".to_owned()];
    if require {
        argv.push("--require".into());
    }
    if let Identity::Drop { uid, gid } = identity {
        argv.push(format!("--uid={uid}").into());
        argv.push(format!("--gid={gid}").into());
    }
    if let Some(cpu) = limits.cpu_time {
        // Soft limit: SIGXCPU, which the outcome reports as CpuLimit; the hard limit one
        // second later is SIGKILL for a program that catches SIGXCPU.
        // RLIMIT_CPU counts whole seconds: round up, and at least one.
        let soft = (cpu.as_secs() + u64::from(cpu.subsec_nanos() > 0)).max(1);
        argv.push(format!("--cpu={soft}").into());
        enforced.push("rlimit_cpu".to_owned());
    }
    if let Some(bytes) = limits.memory_bytes {
        argv.push(format!("--as={bytes}").into());
        enforced.push("rlimit_as".to_owned());
    }
    if let Some(bytes) = limits.file_size_bytes {
        argv.push(format!("--fsize={bytes}").into());
        enforced.push("rlimit_fsize".to_owned());
    }
    // The kernel does not apply RLIMIT_NPROC to root, so it only counts when the guest
    // is not root.
    if let (Some(processes), false) = (limits.max_processes, identity == Identity::KeepRoot) {
        argv.push(format!("--nproc={processes}").into());
        enforced.push("rlimit_nproc".to_owned());
    }
    argv.push("--".into());
    argv.push(program.as_os_str().to_owned());
    argv.extend(args.iter().map(OsString::from));
    Launch {
        program: init.to_path_buf(),
        args: argv,
        enforced,
    }
}

/// Finds `name` in `path` (a `PATH`-style list), or checks it when it contains a slash.
pub(crate) fn resolve(name: &str, path: &str) -> Option<PathBuf> {
    if name.is_empty() {
        return None;
    }
    if name.contains('/') {
        let candidate = PathBuf::from(name);
        return is_executable(&candidate).then_some(candidate);
    }
    std::env::split_paths(path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::time::Duration;

    use super::*;

    const ALL: Namespaces = Namespaces {
        net: true,
        pid: true,
    };

    fn strings(launch: &Launch) -> Vec<String> {
        std::iter::once(launch.program.to_string_lossy().into_owned())
            .chain(launch.args.iter().map(|a| a.to_string_lossy().into_owned()))
            .collect()
    }

    #[test]
    fn root_drops_to_the_configured_user_inside_new_namespaces() {
        let limits = Limits {
            cpu_time: Some(Duration::from_millis(2500)),
            memory_bytes: Some(1 << 30),
            file_size_bytes: Some(1 << 20),
            max_processes: Some(16),
            ..Limits::default()
        };
        let launch = build(
            Path::new("/run/init"),
            ALL,
            Identity::Drop {
                uid: 65534,
                gid: 65534,
            },
            true,
            &limits,
            Path::new("/usr/bin/python3"),
            &["-c".into(), "print(1)".into()],
        );
        assert_eq!(
            strings(&launch),
            [
                "/run/init",
                "--net",
                "--pid",
                "--require",
                "--uid=65534",
                "--gid=65534",
                "--cpu=3",
                "--as=1073741824",
                "--fsize=1048576",
                "--nproc=16",
                "--",
                "/usr/bin/python3",
                "-c",
                "print(1)",
            ]
        );
        for p in ["rlimit_cpu", "rlimit_as", "rlimit_fsize", "rlimit_nproc"] {
            assert!(launch.enforced.iter().any(|e| e == p), "{p}");
        }
    }

    #[test]
    fn a_normal_user_gets_a_user_namespace_and_root_kept_gets_no_nproc() {
        let launch = build(
            Path::new("/run/init"),
            ALL,
            Identity::Unprivileged,
            false,
            &Limits::default(),
            Path::new("/bin/true"),
            &[],
        );
        assert_eq!(strings(&launch)[1..4], ["--user", "--net", "--pid"]);
        let launch = build(
            Path::new("/run/init"),
            ALL,
            Identity::KeepRoot,
            false,
            &Limits::default(),
            Path::new("/bin/true"),
            &[],
        );
        assert!(!strings(&launch).iter().any(|a| a.starts_with("--nproc")));
        assert!(!strings(&launch).iter().any(|a| a.starts_with("--uid")));
        assert!(!launch.enforced.iter().any(|e| e == "rlimit_nproc"));
    }

    #[test]
    fn namespaces_that_do_not_work_are_not_asked_for() {
        let launch = build(
            Path::new("/run/init"),
            Namespaces::default(),
            Identity::Unprivileged,
            false,
            &Limits {
                cpu_time: None,
                memory_bytes: None,
                file_size_bytes: None,
                max_processes: None,
                ..Limits::default()
            },
            Path::new("/bin/true"),
            &["x".into()],
        );
        assert_eq!(strings(&launch), ["/run/init", "--", "/bin/true", "x"]);
        assert_eq!(launch.enforced, ["process_group", "scrubbed_env"]);
    }

    #[test]
    fn commands_resolve_on_the_given_path_only() {
        assert_eq!(
            resolve("sh", "/nonexistent:/bin"),
            Some(PathBuf::from("/bin/sh"))
        );
        assert_eq!(resolve("sh", "/nonexistent"), None);
        assert_eq!(resolve("/bin/sh", ""), Some(PathBuf::from("/bin/sh")));
        assert_eq!(resolve("/etc/passwd", ""), None, "not executable");
        assert_eq!(resolve("", "/bin"), None);
    }
}
