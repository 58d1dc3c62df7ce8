//! The run's init (`init.c`, built by `build.rs`): installing the embedded binary, and reading
//! the report it writes on the control socket.
//!
//! See the comment at the top of `init.c` for the process tree and the protocol. In short: the
//! host spawns the init with a Unix socket as fd 0, sends the guest's stdin through it, and
//! later reads back one report (how the guest ended, the resources the run used, which
//! namespaces held). Shutting the host's end down for writing asks the init to stop the run.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::SandboxError;

/// The init binary, built by `build.rs` from `init.c`.
const BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/agentic-sandbox-init"));
/// A hash of [`BINARY`], part of the installed file's name.
const HASH: &str = include_str!(concat!(env!("OUT_DIR"), "/agentic-sandbox-init.hash"));

/// The directory the init is installed into when the configuration does not name one: the
/// user's runtime directory (`$XDG_RUNTIME_DIR`, private and usually a tmpfs) or else a
/// per-user directory in the temporary directory.
pub(crate) fn default_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir.join("agentic-sandbox"),
        _ => std::env::temp_dir().join(format!(
            "agentic-sandbox-{}",
            rustix::process::geteuid().as_raw()
        )),
    }
}

/// Writes the init into `dir` (once per build of the crate: the name carries its hash) and
/// returns its path. The directory must be ours and not writable by others, since root may
/// execute what is in it; an installed file that differs from the embedded one in any byte is
/// replaced.
pub(crate) fn install(dir: &Path) -> Result<PathBuf, SandboxError> {
    let me = rustix::process::geteuid().as_raw();
    let setup = |what: &str, e: std::io::Error| SandboxError::Setup {
        message: format!("{what} {} for the sandbox's init", dir.display()),
        source: Some(Box::new(e)),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| setup("cannot create the directory", e))?;
    let meta = std::fs::symlink_metadata(dir).map_err(|e| setup("cannot inspect", e))?;
    if !meta.is_dir() || meta.uid() != me || meta.mode() & 0o022 != 0 {
        return Err(SandboxError::Setup {
            message: format!(
                "{} is not a private directory (it must be a directory owned by uid {me} and \
                 writable by nobody else); set ProcessSandboxConfig::init_dir to one",
                dir.display()
            ),
            source: None,
        });
    }
    let path = dir.join(format!("agentic-sandbox-init-{}", HASH.trim()));
    let current = std::fs::symlink_metadata(&path).is_ok_and(|m| {
        m.is_file() && m.uid() == me && m.mode() & 0o022 == 0 && m.mode() & 0o100 != 0
    }) && std::fs::read(&path).is_ok_and(|bytes| bytes == BINARY);
    if !current {
        // Written beside and renamed into place: a concurrent `new` never runs a half-written
        // file, and a stale or tampered one is replaced atomically.
        let mut file = tempfile::Builder::new()
            .prefix(".agentic-sandbox-init-")
            .tempfile_in(dir)
            .map_err(|e| setup("cannot write into", e))?;
        file.write_all(BINARY)
            .and_then(|()| {
                file.as_file()
                    .set_permissions(std::fs::Permissions::from_mode(0o700))
            })
            .and_then(|()| file.as_file().sync_all())
            .map_err(|e| setup("cannot write into", e))?;
        file.persist(&path)
            .map_err(|e| setup("cannot install into", e.error))?;
    }
    Ok(path)
}

/// Resources used by a run, as the init measured them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Usage {
    /// User plus system CPU time of every process the init reaped.
    pub(crate) cpu_time: Duration,
    /// The largest peak resident set of any one of those processes (`ru_maxrss`).
    pub(crate) peak_rss_bytes: u64,
}

/// What the init reported.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Report {
    /// What held: `netns`, `pidns`, `userns`, `subreaper`, `uid:N`.
    pub(crate) held: Vec<String>,
    /// The guest's raw wait status, when it ran.
    pub(crate) status: Option<i32>,
    /// Resources used, when the guest ran.
    pub(crate) usage: Option<Usage>,
    /// A setup step that failed (`netns`, `drop-privileges`, `rlimit`, ...) and its errno; the
    /// program did not run.
    pub(crate) error: Option<(String, i32)>,
}

impl Report {
    /// Parses a complete report (one that ends with `end`); anything else is `None`.
    pub(crate) fn parse(bytes: &[u8]) -> Option<Report> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut lines = text.lines();
        if lines.next()? != "agentic-sandbox-init 1" {
            return None;
        }
        let mut report = Report::default();
        for line in lines {
            let mut words = line.split(' ');
            match words.next()? {
                "held" => {
                    report.held = words.filter(|w| !w.is_empty()).map(str::to_owned).collect()
                }
                "status" => report.status = Some(words.next()?.parse().ok()?),
                "usage" => {
                    let mut number = || words.next().and_then(|w| w.parse::<u64>().ok());
                    let (user, system, rss_kib) = (number()?, number()?, number()?);
                    report.usage = Some(Usage {
                        cpu_time: Duration::from_micros(user.saturating_add(system)),
                        peak_rss_bytes: rss_kib.saturating_mul(1024),
                    });
                }
                "error" => {
                    let stage = words.next()?.to_owned();
                    report.error = Some((stage, words.next()?.parse().ok()?));
                }
                "end" => return Some(report),
                _ => return None,
            }
        }
        None
    }

    /// True when `what` held for the run.
    pub(crate) fn held(&self, what: &str) -> bool {
        self.held.iter().any(|h| h == what)
    }
}

/// Runs `/bin/true` through the init with `args` (options only), synchronously, and returns
/// its report: which namespaces this kernel lets us create, and proof that the installed init
/// can be executed at all (it cannot from a `noexec` mount).
pub(crate) fn probe(init: &Path, args: &[String]) -> Result<Report, SandboxError> {
    let failed = |e: std::io::Error| SandboxError::Setup {
        message: format!(
            "cannot run the sandbox's init {} (is its directory on a noexec filesystem? set \
             ProcessSandboxConfig::init_dir to another)",
            init.display()
        ),
        source: Some(Box::new(e)),
    };
    let (mut host, guest) = std::os::unix::net::UnixStream::pair().map_err(failed)?;
    let mut command = std::process::Command::new(init);
    command
        .args(args)
        .args(["--", "/bin/true"])
        .env_clear()
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(guest)))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = super::spawn_retrying(|| command.spawn()).map_err(failed)?;
    drop(command);
    // No stdin; the host end stays open until the init is done (closing it would mean stop).
    let sent = host.write_all(&0u64.to_le_bytes());
    let waited = child.wait();
    sent.map_err(failed)?;
    waited.map_err(failed)?;
    let mut bytes = Vec::new();
    host.set_read_timeout(Some(Duration::from_secs(5)))
        .and_then(|()| host.take(64 * 1024).read_to_end(&mut bytes))
        .map_err(failed)?;
    Report::parse(&bytes).ok_or_else(|| SandboxError::Setup {
        message: format!(
            "the sandbox's init {} gave no report ({:?})",
            init.display(),
            String::from_utf8_lossy(&bytes)
        ),
        source: None,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn reports_parse_and_incomplete_ones_do_not() {
        let report = Report::parse(
            b"agentic-sandbox-init 1\nheld netns pidns uid:65534\nstatus 768\n\
              usage 3040 960 1692\nend\n",
        )
        .unwrap();
        assert_eq!(report.held, ["netns", "pidns", "uid:65534"]);
        assert!(report.held("pidns") && !report.held("userns"));
        assert_eq!(report.status, Some(768));
        assert_eq!(
            report.usage,
            Some(Usage {
                cpu_time: Duration::from_micros(4000),
                peak_rss_bytes: 1692 * 1024
            })
        );
        assert_eq!(report.error, None);

        let report = Report::parse(b"agentic-sandbox-init 1\nheld\nerror netns 1\nend\n").unwrap();
        assert!(report.held.is_empty());
        assert_eq!(report.error, Some(("netns".into(), 1)));
        assert_eq!(report.status, None);

        for bad in [
            &b""[..],
            b"agentic-sandbox-init 1\nheld netns\nstatus 0\n",
            b"agentic-sandbox-init 2\nend\n",
            b"agentic-sandbox-init 1\nstatus x\nend\n",
            b"agentic-sandbox-init 1\nsurprise\nend\n",
        ] {
            assert_eq!(
                Report::parse(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn the_init_is_installed_once_and_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("init");
        let path = install(&target).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), BINARY);
        let mode = std::fs::metadata(&target).unwrap().mode();
        assert_eq!(mode & 0o777, 0o700);
        // Tampered with: replaced.
        std::fs::write(&path, b"#!/bin/sh\necho pwned\n").unwrap();
        assert_eq!(install(&target).unwrap(), path);
        assert_eq!(std::fs::read(&path).unwrap(), BINARY);
    }

    #[test]
    fn a_shared_or_foreign_directory_is_refused_with_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            install(dir.path()),
            Err(SandboxError::Setup { .. })
        ));
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(matches!(install(&file), Err(SandboxError::Setup { .. })));
    }
}
