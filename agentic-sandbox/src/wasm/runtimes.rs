//! Drivers for the language runtimes.
//!
//! Python (`python-3.12.0.wasm`) is an ordinary WASI command: it runs as
//! `python -c <code> <args>` through `_start`, nothing special. QuickJS-NG's
//! `qjs-wasi-reactor.wasm` is a reactor: it has no `_start`, only `_initialize` (the C
//! runtime's constructors) and `qjs_init_argv(argc, argv)`, which parses a `qjs` command line,
//! creates the runtime and evaluates `-e <code>`. This module builds that `argv` inside the
//! guest's memory with the guest's own `malloc` and calls it.

use wasmtime::{Instance, Store};

use super::{GuestAllocationFailed, HostState};

/// The `qjs` command line for `code`: `--std` gives scripts `std`/`os` (for `std.exit`,
/// `std.in`, `std.out.flush`), and `--` keeps the user's args from being parsed as options
/// (they reach the script as `scriptArgs`).
pub(super) fn quickjs_argv(code: String, args: Vec<String>) -> Vec<String> {
    let mut argv = Vec::with_capacity(5 + args.len());
    argv.extend(["qjs", "--std", "-e"].map(String::from));
    argv.push(code);
    argv.push("--".to_owned());
    argv.extend(args);
    argv
}

/// Runs QuickJS-NG's reactor: `_initialize`, then `qjs_init_argv(argv)`. Returns 0 when the
/// script evaluated without an uncaught exception and 1 otherwise (what the `qjs` command
/// returns); `std.exit(n)` ends the guest through `proc_exit` like any WASI program.
pub(super) async fn run_quickjs(
    store: &mut Store<HostState>,
    instance: &Instance,
    argv: &[String],
) -> wasmtime::Result<i32> {
    let initialize = instance.get_typed_func::<(), ()>(&mut *store, "_initialize")?;
    initialize.call_async(&mut *store, ()).await?;

    let malloc = instance.get_typed_func::<u32, u32>(&mut *store, "malloc")?;
    let init_argv = instance.get_typed_func::<(i32, u32), i32>(&mut *store, "qjs_init_argv")?;
    let memory = instance
        .get_memory(&mut *store, "memory")
        .ok_or_else(|| wasmtime::format_err!("the QuickJS runtime exports no memory"))?;

    // One allocation: the NUL-terminated strings, then the pointer array (4-byte aligned,
    // NULL-terminated as C's argv is).
    let strings_len: usize = argv.iter().map(|arg| arg.len() + 1).sum();
    let table_offset = strings_len.next_multiple_of(4);
    let total = table_offset + 4 * (argv.len() + 1);
    let argc = i32::try_from(argv.len())?;
    let base = malloc
        .call_async(&mut *store, u32::try_from(total)?)
        .await?;
    if base == 0 {
        return Err(wasmtime::Error::new(GuestAllocationFailed));
    }

    let mut block = vec![0u8; total];
    let mut cursor = 0usize;
    for (i, arg) in argv.iter().enumerate() {
        block[cursor..cursor + arg.len()].copy_from_slice(arg.as_bytes());
        let pointer = base + u32::try_from(cursor)?;
        let slot = table_offset + 4 * i;
        block[slot..slot + 4].copy_from_slice(&pointer.to_le_bytes());
        cursor += arg.len() + 1;
    }
    memory.write(&mut *store, usize::try_from(base)?, &block)?;

    let status = init_argv
        .call_async(&mut *store, (argc, base + u32::try_from(table_offset)?))
        .await?;
    Ok(if status == 0 { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn args_come_after_the_separator() {
        assert_eq!(
            quickjs_argv("print(1)".into(), vec!["-e".into(), "x".into()]),
            ["qjs", "--std", "-e", "print(1)", "--", "-e", "x"]
        );
    }
}
