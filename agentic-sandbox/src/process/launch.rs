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
//! - the rlimits are set in the guest alone, after the drop, right before `exec`. All four
//!   are always set ([`Rlimits`]): a [`Limits`] field left `None` gets the sandbox's default
//!   ([`DefaultLimits`]), never "no limit".
//!
//! Only namespaces the probe at [`ProcessSandbox::new`](super::ProcessSandbox::new) saw work
//! are asked for; the init's report says which held for each run.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::process::{Resource, getrlimit};

use super::DefaultLimits;
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

/// The rlimits of one run, every one of them set: what the request asked for, else the
/// default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rlimits {
    /// `RLIMIT_CPU` soft limit in whole seconds (the hard limit is one second more).
    pub(crate) cpu_secs: u64,
    /// `RLIMIT_AS` in bytes.
    pub(crate) address_space: u64,
    /// `RLIMIT_FSIZE` in bytes.
    pub(crate) file_size: u64,
    /// `RLIMIT_NPROC`.
    pub(crate) processes: u64,
}

/// The CPU time a run gets when [`Limits::cpu_time`] is `None`: its wall time times the CPUs
/// available, plus one second. `RLIMIT_CPU` counts every thread of a process, so a process
/// using all `cpus` for the whole wall time stays under it, and the wall clock (which also
/// stops the whole run) is what ends it: the default only stops what the wall clock would not
/// (more CPUs than `cpus`, after the host changed its affinity or quota). The second covers the
/// rounding to whole seconds and the moment between the wall clock and the kill.
pub(crate) fn default_cpu_time(wall_time: Duration, cpus: u32) -> Duration {
    wall_time
        .saturating_mul(cpus.max(1))
        .saturating_add(Duration::from_secs(1))
}

/// The largest `RLIMIT_CPU` soft limit asked for (about 31,700 years): the init sets the hard
/// limit one second above it, and that must stay below `RLIM_INFINITY`.
const MAX_CPU_SECS: u64 = 1 << 40;

impl Rlimits {
    /// The rlimits for `limits`, with `defaults` for the fields left `None` (the CPU default
    /// from the wall time and `cpus`). A default above the host's own hard limit is lowered
    /// to it (the guest could not be given more, and would otherwise fail to start); a limit
    /// the request set is passed as is.
    pub(crate) fn resolve(limits: &Limits, defaults: &DefaultLimits, cpus: u32) -> Self {
        let host_max = |resource| getrlimit(resource).maximum.unwrap_or(u64::MAX);
        let cpu = limits.cpu_time.unwrap_or_else(|| {
            let host = host_max(Resource::Cpu).saturating_sub(1);
            default_cpu_time(limits.wall_time, cpus).min(Duration::from_secs(host))
        });
        Rlimits {
            // RLIMIT_CPU counts whole seconds: round up, and at least one.
            cpu_secs: (cpu.as_secs() + u64::from(cpu.subsec_nanos() > 0)).clamp(1, MAX_CPU_SECS),
            address_space: limits
                .memory_bytes
                .unwrap_or_else(|| defaults.memory_bytes.min(host_max(Resource::As))),
            file_size: limits
                .file_size_bytes
                .unwrap_or_else(|| defaults.file_size_bytes.min(host_max(Resource::Fsize))),
            processes: limits.max_processes.map_or_else(
                || u64::from(defaults.max_processes).min(host_max(Resource::Nproc)),
                u64::from,
            ),
        }
    }
}

pub(crate) fn build(
    init: &Path,
    namespaces: Namespaces,
    identity: Identity,
    require: bool,
    rlimits: &Rlimits,
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
    // Soft limit: SIGXCPU, which the outcome reports as CpuLimit; the hard limit one second
    // later is SIGKILL for a program that catches SIGXCPU.
    argv.push(format!("--cpu={}", rlimits.cpu_secs).into());
    enforced.push("rlimit_cpu".to_owned());
    // The kernel does not apply RLIMIT_NPROC to root, so it only counts when the guest
    // is not root.
    let nproc = (identity != Identity::KeepRoot).then_some(rlimits.processes);
    for (option, value, name) in [
        ("as", Some(rlimits.address_space), "rlimit_as"),
        ("fsize", Some(rlimits.file_size), "rlimit_fsize"),
        ("nproc", nproc, "rlimit_nproc"),
    ] {
        if let Some(value) = value {
            argv.push(format!("--{option}={value}").into());
            // u64::MAX is RLIM_INFINITY, no limit, which is not claimed as one (only a caller
            // can ask for it, in the request or in the defaults).
            if value != u64::MAX {
                enforced.push(name.to_owned());
            }
        }
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
            &Rlimits::resolve(&limits, &DefaultLimits::default(), 8),
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
            &Rlimits::resolve(&Limits::default(), &DefaultLimits::default(), 1),
            Path::new("/bin/true"),
            &[],
        );
        assert_eq!(strings(&launch)[1..4], ["--user", "--net", "--pid"]);
        let launch = build(
            Path::new("/run/init"),
            ALL,
            Identity::KeepRoot,
            false,
            &Rlimits::resolve(&Limits::default(), &DefaultLimits::default(), 1),
            Path::new("/bin/true"),
            &[],
        );
        assert!(!strings(&launch).iter().any(|a| a.starts_with("--nproc")));
        assert!(!strings(&launch).iter().any(|a| a.starts_with("--uid")));
        assert!(!launch.enforced.iter().any(|e| e == "rlimit_nproc"));
    }

    #[test]
    fn namespaces_that_do_not_work_are_not_asked_for() {
        let rlimits = Rlimits {
            cpu_secs: 3,
            address_space: 4096,
            file_size: 512,
            processes: 7,
        };
        let launch = build(
            Path::new("/run/init"),
            Namespaces::default(),
            Identity::Unprivileged,
            false,
            &rlimits,
            Path::new("/bin/true"),
            &["x".into()],
        );
        assert_eq!(
            strings(&launch),
            [
                "/run/init",
                "--cpu=3",
                "--as=4096",
                "--fsize=512",
                "--nproc=7",
                "--",
                "/bin/true",
                "x"
            ]
        );
        assert_eq!(
            launch.enforced,
            [
                "process_group",
                "scrubbed_env",
                "rlimit_cpu",
                "rlimit_as",
                "rlimit_fsize",
                "rlimit_nproc"
            ]
        );
    }

    #[test]
    fn an_explicit_infinity_is_not_claimed_as_a_limit() {
        let rlimits = Rlimits {
            cpu_secs: 3,
            address_space: u64::MAX,
            file_size: u64::MAX,
            processes: u64::MAX,
        };
        let launch = build(
            Path::new("/run/init"),
            Namespaces::default(),
            Identity::Unprivileged,
            false,
            &rlimits,
            Path::new("/bin/true"),
            &[],
        );
        assert_eq!(
            launch.enforced,
            ["process_group", "scrubbed_env", "rlimit_cpu"]
        );
    }

    /// What the host itself is limited to (`None`: unlimited), as the defaults are lowered to
    /// it.
    fn host_max(resource: Resource) -> u64 {
        getrlimit(resource).maximum.unwrap_or(u64::MAX)
    }

    #[test]
    fn limits_left_none_get_the_defaults_never_no_limit() {
        let none = Limits {
            cpu_time: None,
            memory_bytes: None,
            file_size_bytes: None,
            max_processes: None,
            wall_time: Duration::from_millis(2500),
            ..Limits::default()
        };
        let defaults = DefaultLimits::default();
        let rlimits = Rlimits::resolve(&none, &defaults, 4);
        assert_eq!(
            rlimits,
            Rlimits {
                // 2.5 s of wall time on 4 CPUs is 10 s of CPU time, plus 1 s.
                cpu_secs: 11.min(host_max(Resource::Cpu).saturating_sub(1)).max(1),
                address_space: DefaultLimits::MEMORY_BYTES.min(host_max(Resource::As)),
                file_size: DefaultLimits::FILE_SIZE_BYTES.min(host_max(Resource::Fsize)),
                processes: u64::from(DefaultLimits::MAX_PROCESSES).min(host_max(Resource::Nproc)),
            }
        );
        assert!(rlimits.address_space < u64::MAX);
        assert!(rlimits.file_size < u64::MAX);
        assert!(rlimits.processes < u64::MAX);

        // Another sandbox's defaults.
        let small = DefaultLimits {
            memory_bytes: 1 << 30,
            file_size_bytes: 1 << 20,
            max_processes: 10,
        };
        let rlimits = Rlimits::resolve(&none, &small, 1);
        assert_eq!(rlimits.address_space, (1 << 30).min(host_max(Resource::As)));
        assert_eq!(rlimits.file_size, (1 << 20).min(host_max(Resource::Fsize)));
        assert_eq!(rlimits.processes, 10.min(host_max(Resource::Nproc)));

        // What the request sets wins over every default.
        let set = Limits {
            cpu_time: Some(Duration::from_millis(1)),
            memory_bytes: Some(5),
            file_size_bytes: Some(6),
            max_processes: Some(7),
            ..none
        };
        assert_eq!(
            Rlimits::resolve(&set, &defaults, 4),
            Rlimits {
                cpu_secs: 1,
                address_space: 5,
                file_size: 6,
                processes: 7,
            }
        );
    }

    #[test]
    fn the_cpu_default_outlasts_the_wall_clock_on_every_cpu() {
        assert_eq!(
            default_cpu_time(Duration::from_millis(700), 2),
            Duration::from_millis(2400)
        );
        assert_eq!(
            default_cpu_time(Duration::from_secs(10), 0),
            Duration::from_secs(11),
            "at least one CPU"
        );
        assert_eq!(
            default_cpu_time(Duration::MAX, 64),
            Duration::MAX,
            "saturates"
        );
        let huge = Limits {
            cpu_time: None,
            wall_time: Duration::MAX,
            ..Limits::default()
        };
        let cpu_secs = Rlimits::resolve(&huge, &DefaultLimits::default(), 64).cpu_secs;
        assert!(cpu_secs <= MAX_CPU_SECS, "{cpu_secs}");
        assert!(
            cpu_secs < u64::MAX,
            "the init's hard limit (soft + 1) must not overflow"
        );
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
