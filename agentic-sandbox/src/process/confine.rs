//! Landlock: which files the guest may read, execute and write, no TCP, and no signals or
//! abstract sockets outside its own domain.
//!
//! Landlock confines the *calling thread* and everything it later starts. So each run is
//! spawned from a fresh thread that confines itself first and then ends: the rules reach the
//! whole process tree (the init and the guest) and never the host's own threads.
//! It is best effort: on a kernel without Landlock (or with an older ABI) the run goes on
//! with what is available, and the outcome's `enforced` list says exactly which parts held.

use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, AccessNet, LandlockStatus, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope,
};

/// The newest ABI this code was written and tested against. Asking for more than we vetted
/// could restrict things we did not mean to.
const TESTED_ABI: ABI = ABI::V6;

/// Files and directories the guest may use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Rules {
    /// Read and execute (and list, for directories).
    pub(crate) read: Vec<PathBuf>,
    /// Everything: read, write, create, remove.
    pub(crate) write: Vec<PathBuf>,
}

/// Confines the calling thread (and its future children) to `rules`; returns the names of
/// what is now enforced (empty when Landlock is unavailable).
pub(crate) fn restrict_current_thread(
    rules: &Rules,
) -> Result<Vec<String>, landlock::RulesetError> {
    let read = AccessFs::from_read(TESTED_ABI);
    let all = AccessFs::from_all(TESTED_ABI);
    let mut ruleset = Ruleset::default()
        .handle_access(all)?
        .handle_access(AccessNet::from_all(TESTED_ABI))?
        .scope(Scope::from_all(TESTED_ABI))?
        .create()?;
    for (paths, access) in [(&rules.read, read), (&rules.write, all)] {
        for path in paths {
            // Paths that do not exist on this host (say /lib64) are simply not granted.
            let Ok(fd) = PathFd::new(path) else { continue };
            let access = if is_dir(path) {
                access
            } else {
                access & AccessFs::from_file(TESTED_ABI)
            };
            ruleset = ruleset.add_rule(PathBeneath::new(fd, access))?;
        }
    }
    let status = ruleset.restrict_self()?;
    let abi = match status.landlock {
        LandlockStatus::Available { effective_abi, .. } => effective_abi,
        _ => ABI::Unsupported,
    };
    let mut enforced = Vec::new();
    if status.ruleset != RulesetStatus::NotEnforced && abi >= ABI::V1 {
        enforced.push("landlock_fs".to_owned());
        if abi >= ABI::V4 {
            enforced.push("landlock_net".to_owned());
        }
        if abi >= ABI::V6 {
            enforced.push("landlock_scope".to_owned());
        }
    }
    Ok(enforced)
}

fn is_dir(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_dir())
}
