//! The command line that confines a native program, built from util-linux tools.
//!
//! The crate has no `unsafe` (the workspace forbids it), so it cannot run code between `fork`
//! and `exec` the way a `pre_exec` hook would. Instead the child is started through two small,
//! ubiquitous programs that do exactly that work and then `exec` the next stage:
//!
//! ```text
//! unshare --net [--user | --setuid U --setgid G] --
//!   prlimit --cpu=S:S+1 --as=B --fsize=B --nproc=N --core=0 --
//!     <program> <args>
//! ```
//!
//! - `unshare` gives the program an empty network namespace (only a down loopback). As root it
//!   also drops to an unprivileged user (root would be exempt from `RLIMIT_NPROC` and could
//!   read root's files and write sysctls); as a normal user it first creates a user namespace,
//!   which is what makes a network namespace possible without privileges.
//! - `prlimit` sets the resource limits on itself and then `exec`s the program, which inherits
//!   them.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::Limits;

/// What the host found usable when the sandbox was created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tools {
    /// `unshare`, when it can create a network namespace at our privilege level.
    pub(crate) unshare: Option<PathBuf>,
    /// `prlimit`.
    pub(crate) prlimit: Option<PathBuf>,
}

/// Who the guest runs as: dropping from root needs `unshare --setuid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Identity {
    /// We are root and the guest runs as this unprivileged user and group.
    Drop { uid: u32, gid: u32 },
    /// We are root and the configuration keeps the guest root (not recommended).
    KeepRoot,
    /// We are not root; the guest runs as us.
    Unprivileged,
}

/// The program and arguments to spawn, and the protections they put in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Launch {
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<OsString>,
    pub(crate) enforced: Vec<String>,
}

pub(crate) fn build(
    tools: &Tools,
    identity: Identity,
    isolate_network: bool,
    limits: &Limits,
    program: &Path,
    args: &[String],
) -> Launch {
    let mut argv: Vec<OsString> = Vec::new();
    let mut enforced = vec!["process_group".to_owned(), "scrubbed_env".to_owned()];

    if let (Some(unshare), true) = (&tools.unshare, isolate_network) {
        argv.push(unshare.clone().into());
        // No `--pid --fork`: a PID namespace would make the guest PID 1, which ignores
        // SIGXCPU, and util-linux 2.38's `unshare --fork` reports a child killed by SIGKILL as
        // "exit 1". Without `--fork`, `unshare` execs the next stage, so the guest is our
        // direct child and its exit status is exact.
        argv.push("--net".into());
        enforced.push("netns".to_owned());
        match identity {
            Identity::Drop { uid, gid } => {
                argv.extend([
                    OsString::from("--setuid"),
                    uid.to_string().into(),
                    "--setgid".into(),
                    gid.to_string().into(),
                ]);
                enforced.push(format!("uid:{uid}"));
            }
            Identity::KeepRoot => {}
            Identity::Unprivileged => {
                argv.push("--user".into());
                enforced.push("userns".to_owned());
            }
        }
        argv.push("--".into());
    }

    if let Some(prlimit) = &tools.prlimit {
        argv.push(prlimit.clone().into());
        if let Some(cpu) = limits.cpu_time {
            // Soft limit: SIGXCPU, which the outcome reports as CpuLimit; the hard limit one
            // second later is SIGKILL for a program that catches SIGXCPU.
            // RLIMIT_CPU counts whole seconds: round up, and at least one.
            let soft = (cpu.as_secs() + u64::from(cpu.subsec_nanos() > 0)).max(1);
            argv.push(format!("--cpu={soft}:{}", soft + 1).into());
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
        // No core files: they would be written into the working directory.
        argv.push("--core=0".into());
        argv.push("--".into());
    }

    argv.push(program.as_os_str().to_owned());
    argv.extend(args.iter().map(OsString::from));
    let mut argv = argv.into_iter();
    let first = argv.next().map(PathBuf::from).unwrap_or_default();
    Launch {
        program: first,
        args: argv.collect(),
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

    fn tools() -> Tools {
        Tools {
            unshare: Some("/usr/bin/unshare".into()),
            prlimit: Some("/usr/bin/prlimit".into()),
        }
    }

    fn strings(launch: &Launch) -> Vec<String> {
        std::iter::once(launch.program.to_string_lossy().into_owned())
            .chain(launch.args.iter().map(|a| a.to_string_lossy().into_owned()))
            .collect()
    }

    #[test]
    fn root_drops_to_the_configured_user_inside_new_namespaces() {
        let limits = Limits {
            cpu_time: Some(Duration::from_secs(3)),
            memory_bytes: Some(1 << 30),
            file_size_bytes: Some(1 << 20),
            max_processes: Some(16),
            ..Limits::default()
        };
        let launch = build(
            &tools(),
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
                "/usr/bin/unshare",
                "--net",
                "--setuid",
                "65534",
                "--setgid",
                "65534",
                "--",
                "/usr/bin/prlimit",
                "--cpu=3:4",
                "--as=1073741824",
                "--fsize=1048576",
                "--nproc=16",
                "--core=0",
                "--",
                "/usr/bin/python3",
                "-c",
                "print(1)",
            ]
        );
        for p in [
            "netns",
            "uid:65534",
            "rlimit_cpu",
            "rlimit_as",
            "rlimit_nproc",
        ] {
            assert!(launch.enforced.iter().any(|e| e == p), "{p}");
        }
    }

    #[test]
    fn a_normal_user_gets_a_user_namespace_and_root_kept_gets_no_nproc() {
        let launch = build(
            &tools(),
            Identity::Unprivileged,
            true,
            &Limits::default(),
            Path::new("/bin/true"),
            &[],
        );
        assert!(strings(&launch).contains(&"--user".to_owned()));
        let launch = build(
            &tools(),
            Identity::KeepRoot,
            true,
            &Limits::default(),
            Path::new("/bin/true"),
            &[],
        );
        assert!(!strings(&launch).iter().any(|a| a.starts_with("--nproc")));
        assert!(!launch.enforced.iter().any(|e| e == "rlimit_nproc"));
    }

    #[test]
    fn missing_tools_are_not_claimed() {
        let none = Tools {
            unshare: None,
            prlimit: None,
        };
        let launch = build(
            &none,
            Identity::Unprivileged,
            true,
            &Limits::default(),
            Path::new("/bin/true"),
            &["x".into()],
        );
        assert_eq!(strings(&launch), ["/bin/true", "x"]);
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
