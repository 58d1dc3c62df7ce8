//! Builds the process sandbox's init (`src/process/init.c`) when the `process` feature is on
//! and the target is Linux. The crate forbids `unsafe` Rust, so what must run between `fork`
//! and `exec` (namespaces, dropping root, rlimits, reaping) lives in this small C program; the
//! library embeds the binary and writes it to disk once, at `ProcessSandbox::new`.
//!
//! It is linked statically when the C library allows (no dynamic loader to run, and no shared
//! libraries to allow through Landlock), dynamically otherwise. Only a C compiler is needed:
//! `$CC`, else `cc` (gcc or clang; present wherever Rust links on Linux).

use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCE: &str = "src/process/init.c";

fn main() -> Result<(), String> {
    println!("cargo::rerun-if-changed={SOURCE}");
    println!("cargo::rerun-if-env-changed=CC");
    let process = std::env::var_os("CARGO_FEATURE_PROCESS").is_some();
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    if !(process && linux) {
        return Ok(());
    }
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);
    let binary = out_dir.join("agentic-sandbox-init");
    let compiler = std::env::var_os("CC").unwrap_or_else(|| "cc".into());
    let compile = |extra: &[&str]| -> Result<(), String> {
        let output = Command::new(&compiler)
            .args(["-std=gnu11", "-O2", "-Wall", "-Wextra", "-s"])
            .args(extra)
            .arg("-o")
            .arg(&binary)
            .arg(SOURCE)
            .output()
            .map_err(|e| format!("cannot run the C compiler {compiler:?}: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{compiler:?} failed to build {SOURCE}: {}",
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    };
    if let Err(static_error) = compile(&["-static"]) {
        println!(
            "cargo::warning=agentic-sandbox: linking the process sandbox's init dynamically \
             (static linking failed: {})",
            static_error.lines().next().unwrap_or_default()
        );
        compile(&[])?;
    }
    write_hash(&binary, &out_dir.join("agentic-sandbox-init.hash"))
}

/// FNV-1a (64 bits) of the binary, in hex: the installed file's name carries it, so that two
/// builds of the crate never use each other's init. (Not a security measure: the installed
/// file is compared byte for byte with the embedded one anyway.)
fn write_hash(binary: &Path, hash_file: &Path) -> Result<(), String> {
    let bytes = std::fs::read(binary).map_err(|e| format!("cannot read {binary:?}: {e}"))?;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    std::fs::write(hash_file, format!("{hash:016x}"))
        .map_err(|e| format!("cannot write {hash_file:?}: {e}"))
}
