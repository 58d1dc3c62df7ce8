//! [`WasmSandbox`]: WebAssembly guests on wasmtime, with WASI preview 1 and, when their
//! `.wasm` files are configured, Python and JavaScript runtimes.
//!
//! # What confines a guest
//!
//! | Resource | Mechanism | Outcome when hit |
//! |---|---|---|
//! | Instructions | wasmtime fuel from [`Limits::fuel`] | [`Termination::OutOfFuel`] |
//! | Wall-clock time | epoch interruption (a ticker thread), plus a host-side timeout for guests blocked in a host call such as `poll_oneoff` | [`Termination::Timeout`] |
//! | Linear memory | `StoreLimits` from [`Limits::memory_bytes`]; one instance, one memory, bounded tables | [`Termination::OutOfMemory`] when a refused growth ends the run |
//! | Native stack | `max_wasm_stack` ([`WasmSandboxConfig::max_wasm_stack`]) | [`Termination::Trap`] ("call stack exhausted") |
//! | Output | stdout and stderr each kept up to [`Limits::output_bytes`] | [`Termination::OutputLimit`], with what fit |
//! | Files | nothing but the one optional [`Mount`], preopened read-only or read-write | the guest sees an error (`ENOTCAPABLE`/`EPERM`) |
//! | Network | none: WASI preview 1 has no socket creation, and TCP, UDP and name lookup are denied | the guest sees an error |
//! | Environment | exactly [`ExecRequest::env`]; nothing is inherited | — |
//!
//! The outcome reports fuel used (except after a [`Termination::Timeout`]: wasmtime does not
//! write the fuel counter back when an epoch interrupt stops a loop, so the figure would be
//! too low), wall time, and the peak linear memory.
//!
//! [`Limits::cpu_time`], [`Limits::max_processes`] and [`Limits::file_size_bytes`] do not apply
//! to wasm guests (fuel is the CPU measure; a guest cannot create processes; file writes are
//! confined to the mount). [`ExecRequest::working_dir`] is not used: WASI preview 1 has no
//! working directory, guests address the mount by its guest path.
//!
//! # Speed
//!
//! Modules are compiled once per content hash and kept as `InstancePre` (linked, ready to
//! instantiate), so a warm run costs an instantiation and the guest's own work. Compiled
//! code can also be kept on disk across processes ([`WasmSandboxConfig::cache_dir`]; wasmtime
//! checks each entry against its version and settings and recompiles on a mismatch), and the
//! pooling allocator ([`WasmSandboxConfig::pooling`]) makes instantiation cheaper still.
//! Guests run on Tokio's blocking pool, never on the runtime's core threads. The wall-clock
//! limit covers instantiation and execution, not the first compilation of a module.
//!
//! [`Limits`]: crate::Limits
//! [`Limits::fuel`]: crate::Limits::fuel
//! [`Limits::memory_bytes`]: crate::Limits::memory_bytes
//! [`Limits::output_bytes`]: crate::Limits::output_bytes
//! [`Limits::cpu_time`]: crate::Limits::cpu_time
//! [`Limits::max_processes`]: crate::Limits::max_processes
//! [`Limits::file_size_bytes`]: crate::Limits::file_size_bytes

mod cache;
mod limiter;
mod output;
mod runtimes;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use wasmtime::{
    Cache, CacheConfig, Config, Engine, ExternType, InstanceAllocationStrategy, Linker, Module,
    PoolConcurrencyLimitError, PoolingAllocationConfig, Store, Trap, UpdateDeadline,
};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

use self::cache::{Compiled, ModuleCache, ModuleKind};
use self::limiter::MemoryGuard;
use self::output::{CappedPipe, OutputLimitExceeded};
use crate::{
    ExecOutcome, ExecRequest, Language, Mount, MountMode, Program, ResourceUsage, Sandbox,
    SandboxCapabilities, SandboxError, Termination,
};

/// Fuel when [`Limits::fuel`](crate::Limits::fuel) is `None`: about a second of guest work.
pub const DEFAULT_FUEL: u64 = 1_000_000_000;
/// Linear memory when [`Limits::memory_bytes`](crate::Limits::memory_bytes) is `None`.
pub const DEFAULT_MEMORY_BYTES: u64 = 256 * 1024 * 1024;

/// Settings of a [`WasmSandbox`]; the defaults run WebAssembly modules only.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WasmSandboxConfig {
    /// CPython for WASI (`python-3.12.0.wasm`, a WASI command module with its standard library
    /// inside). Enables [`Language::Python`]. The crate never downloads it: see the docs
    /// (`docs/backends/sandbox.md`) for where to get it.
    pub python_wasm: Option<PathBuf>,
    /// QuickJS-NG's reactor build (`qjs-wasi-reactor.wasm`). Enables [`Language::JavaScript`].
    pub javascript_wasm: Option<PathBuf>,
    /// Keep compiled code on disk here, across processes (wasmtime's cache; entries from
    /// another wasmtime version or other settings are ignored and recompiled).
    pub cache_dir: Option<PathBuf>,
    /// Use the pooling instance allocator (faster instantiation, memory reserved up front).
    pub pooling: Option<PoolingOptions>,
    /// Native stack a guest may use, in bytes; deeper recursion traps.
    pub max_wasm_stack: usize,
    /// How often the epoch advances; the wall-clock limit is enforced to about this precision.
    pub epoch_tick: Duration,
    /// Compiled modules kept in memory (by content hash); the oldest is evicted beyond this.
    pub module_cache_capacity: usize,
    /// Largest module accepted, in bytes (compilation time grows with size).
    pub max_module_bytes: usize,
    /// Largest table a guest may have, in elements.
    pub max_table_elements: usize,
}

impl Default for WasmSandboxConfig {
    fn default() -> Self {
        WasmSandboxConfig {
            python_wasm: None,
            javascript_wasm: None,
            cache_dir: None,
            pooling: None,
            max_wasm_stack: 1024 * 1024,
            epoch_tick: Duration::from_millis(5),
            module_cache_capacity: 64,
            max_module_bytes: 64 * 1024 * 1024,
            max_table_elements: 100_000,
        }
    }
}

impl WasmSandboxConfig {
    /// Enables Python with the runtime at `path`.
    pub fn python(mut self, path: impl Into<PathBuf>) -> Self {
        self.python_wasm = Some(path.into());
        self
    }

    /// Enables JavaScript with the QuickJS-NG reactor at `path`.
    pub fn javascript(mut self, path: impl Into<PathBuf>) -> Self {
        self.javascript_wasm = Some(path.into());
        self
    }

    /// Keeps compiled code on disk in `dir`.
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// Uses the pooling allocator.
    pub fn pooling(mut self, options: PoolingOptions) -> Self {
        self.pooling = Some(options);
        self
    }
}

/// Sizing of the pooling allocator: slots are reserved when the sandbox is created, and a run
/// that finds every slot taken fails to instantiate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolingOptions {
    /// Guests that may run at once.
    pub max_instances: u32,
    /// Largest linear memory of one guest, in bytes; caps [`Limits::memory_bytes`](crate::Limits::memory_bytes).
    pub max_memory_bytes: usize,
}

impl Default for PoolingOptions {
    fn default() -> Self {
        PoolingOptions {
            max_instances: 16,
            max_memory_bytes: 512 * 1024 * 1024,
        }
    }
}

impl PoolingOptions {
    /// `max_instances` concurrent guests of at most `max_memory_bytes` each.
    pub fn new(max_instances: u32, max_memory_bytes: usize) -> Self {
        PoolingOptions {
            max_instances,
            max_memory_bytes,
        }
    }
}

/// What a store carries: the guest's WASI state and its memory guard.
pub(crate) struct HostState {
    wasi: WasiP1Ctx,
    guard: MemoryGuard,
}

/// The error the epoch callback stops a guest with when its wall-clock time is up.
#[derive(Debug, thiserror::Error)]
#[error("wall-clock limit reached")]
struct WallClockExceeded;

/// The error the epoch callback stops a guest with when nobody waits for its outcome.
#[derive(Debug, thiserror::Error)]
#[error("the caller stopped waiting for the run")]
struct Abandoned;

/// Sets the flag when dropped: `execute`'s future was dropped, or finished.
struct AbandonOnDrop(Arc<AtomicBool>);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The error a driver stops with when the guest's allocator has no memory left for the
/// driver's own arguments (the runtime itself ran out, not the host).
#[derive(Debug, thiserror::Error)]
#[error("the guest's allocator returned null")]
struct GuestAllocationFailed;

/// Runs WebAssembly (WASI preview 1 command modules, as binary or text) and, when configured,
/// Python and JavaScript source, each run in a fresh instance under [`Limits`](crate::Limits).
///
/// Cheap to clone; clones share the engine, the compiled-module cache and the epoch ticker.
///
/// ```no_run
/// use agentic_sandbox::{ExecRequest, Language, Limits, Sandbox, WasmSandbox, WasmSandboxConfig};
///
/// # async fn run() -> Result<(), agentic_sandbox::SandboxError> {
/// let sandbox = WasmSandbox::new(
///     WasmSandboxConfig::default().python("/opt/runtimes/python-3.12.0.wasm"),
/// )?;
/// let outcome = sandbox
///     .execute(ExecRequest::source(Language::Python, "print(6 * 7)").limits(Limits::default()))
///     .await?;
/// assert_eq!(outcome.stdout_text(), "42\n");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct WasmSandbox {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for WasmSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmSandbox")
            .field("config", &self.inner.config)
            .field("cached_modules", &self.inner.modules.len())
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: WasmSandboxConfig,
    engine: Engine,
    linker: Linker<HostState>,
    modules: ModuleCache,
    /// The runtimes, compiled on first use. A std mutex held while compiling on purpose: a
    /// second Python run arriving during the (seconds-long) first compilation waits for it
    /// instead of compiling the same 26 MB again. Only blocking-pool threads take it.
    python: Mutex<Option<Arc<Compiled>>>,
    javascript: Mutex<Option<Arc<Compiled>>>,
    _ticker: EpochTicker,
}

impl WasmSandbox {
    /// Creates the engine (and starts its epoch ticker). Runtimes are read and compiled on
    /// first use, or ahead of time with [`WasmSandbox::warm_up`].
    ///
    /// # Errors
    ///
    /// [`SandboxError::Setup`] when the engine cannot be configured (cache directory not
    /// writable, pooling reservation refused by the OS).
    pub fn new(config: WasmSandboxConfig) -> Result<Self, SandboxError> {
        let mut wasmtime_config = Config::new();
        wasmtime_config
            .consume_fuel(true)
            .epoch_interruption(true)
            .max_wasm_stack(config.max_wasm_stack)
            // Trap messages go to an agent as one line ("wasm trap: call stack exhausted");
            // a backtrace of unnamed guest functions adds noise, and capturing it costs time
            // on every trap.
            .wasm_backtrace_max_frames(None)
            // Host calls run on the same fiber stack as the guest: give them room above the
            // guest's own budget so a guest at its stack limit cannot crash a host function.
            .async_stack_size(config.max_wasm_stack.saturating_add(1024 * 1024));

        if let Some(dir) = &config.cache_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| setup(format!("cannot create cache dir {}", dir.display()), e))?;
            let mut cache_config = CacheConfig::new();
            cache_config.with_directory(dir);
            let cache = Cache::new(cache_config)
                .map_err(|e| setup_msg(format!("cannot open module cache: {e}")))?;
            wasmtime_config.cache(Some(cache));
        }

        if let Some(pooling) = config.pooling {
            let slots = pooling.max_instances.max(1);
            let mut pool = PoolingAllocationConfig::new();
            pool.total_core_instances(slots)
                .total_memories(slots)
                .total_tables(slots.saturating_mul(4))
                .total_stacks(slots)
                .max_memories_per_module(1)
                .max_tables_per_module(4)
                .max_memory_size(pooling.max_memory_bytes)
                .table_elements(config.max_table_elements);
            wasmtime_config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }

        let engine = Engine::new(&wasmtime_config)
            .map_err(|e| setup_msg(format!("cannot create the wasm engine: {e}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, |state: &mut HostState| {
            &mut state.wasi
        })
        .map_err(|e| setup_msg(format!("cannot link WASI: {e}")))?;
        let ticker = EpochTicker::start(&engine, config.epoch_tick)?;

        Ok(WasmSandbox {
            inner: Arc::new(Inner {
                modules: ModuleCache::new(config.module_cache_capacity),
                config,
                engine,
                linker,
                python: Mutex::new(None),
                javascript: Mutex::new(None),
                _ticker: ticker,
            }),
        })
    }

    /// The configuration this sandbox was built with.
    pub fn config(&self) -> &WasmSandboxConfig {
        &self.inner.config
    }

    /// Number of compiled modules held in memory (language runtimes not counted).
    pub fn cached_modules(&self) -> usize {
        self.inner.modules.len()
    }

    /// Reads and compiles the runtime for `language` now, so the first request does not pay
    /// for it (Python's compilation takes seconds without an on-disk cache).
    ///
    /// # Errors
    ///
    /// [`SandboxError::Unsupported`] when no runtime is configured for `language`;
    /// [`SandboxError::Setup`] when the file cannot be read or compiled.
    pub async fn warm_up(&self, language: Language) -> Result<(), SandboxError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.runtime(language).map(drop))
            .await
            .map_err(|e| setup("the compiling thread panicked", e))?
    }
}

#[async_trait]
impl Sandbox for WasmSandbox {
    fn capabilities(&self) -> SandboxCapabilities {
        let mut languages = Vec::new();
        if self.inner.config.python_wasm.is_some() {
            languages.push(Language::Python);
        }
        if self.inner.config.javascript_wasm.is_some() {
            languages.push(Language::JavaScript);
        }
        SandboxCapabilities {
            wasm: true,
            languages,
            native: false,
        }
    }

    async fn execute(&self, request: ExecRequest) -> Result<ExecOutcome, SandboxError> {
        validate(&request)?;
        let handle = tokio::runtime::Handle::try_current().map_err(|e| SandboxError::Setup {
            message: "WasmSandbox::execute must be called from within a Tokio runtime".into(),
            source: Some(Box::new(e)),
        })?;
        let inner = self.inner.clone();
        // If the caller stops waiting (drops this future: a cancelled task, a lost race), the
        // guest is stopped at its next epoch tick instead of running on to its limits.
        let abandoned = AbandonOnDrop(Arc::new(AtomicBool::new(false)));
        let flag = abandoned.0.clone();
        // Off the core threads: compilation and guest code are CPU-bound, and the sync parts
        // of WASI would otherwise block a worker. The guest itself runs on wasmtime's async
        // API inside `block_on`, so a guest parked in a host call (a long `poll_oneoff`) can
        // still be cancelled by the timeout.
        let outcome = tokio::task::spawn_blocking(move || inner.run(request, &handle, flag))
            .await
            .map_err(|e| setup("the guest thread panicked", e))?;
        drop(abandoned);
        outcome
    }
}

fn validate(request: &ExecRequest) -> Result<(), SandboxError> {
    if let Program::Command { program } = &request.program {
        return Err(SandboxError::Unsupported(format!(
            "the wasm sandbox runs WebAssembly modules and Python/JavaScript source, not native \
             commands (`{program}`); use ProcessSandbox for those"
        )));
    }
    if request.limits.wall_time.is_zero() {
        return Err(SandboxError::InvalidRequest(
            "limits.wall_time must be greater than zero".into(),
        ));
    }
    if let Some(mount) = &request.mount {
        if !mount.guest_path.starts_with('/') {
            return Err(SandboxError::InvalidRequest(format!(
                "mount.guest_path must be absolute, got {:?}",
                mount.guest_path
            )));
        }
        if !mount.host_path.is_dir() {
            return Err(SandboxError::InvalidRequest(format!(
                "mount.host_path {} is not a directory",
                mount.host_path.display()
            )));
        }
    }
    // WASI passes args and env as C strings: an interior NUL would silently cut them short.
    let strings = request
        .args
        .iter()
        .chain(request.env.keys())
        .chain(request.env.values());
    for s in strings {
        if s.contains('\0') {
            return Err(SandboxError::InvalidRequest(
                "args and env must not contain NUL bytes".into(),
            ));
        }
    }
    if request.env.keys().any(|k| k.is_empty() || k.contains('=')) {
        return Err(SandboxError::InvalidRequest(
            "env names must be non-empty and must not contain '='".into(),
        ));
    }
    if let Program::Source { code, .. } = &request.program
        && code.contains('\0')
    {
        return Err(SandboxError::InvalidRequest(
            "source code must not contain NUL bytes".into(),
        ));
    }
    Ok(())
}

/// How the prepared module is driven.
enum Entry {
    /// Call `_start`.
    Command,
    /// QuickJS-NG reactor: `_initialize`, then `qjs_init_argv(argv)`.
    QuickJs { argv: Vec<String> },
}

impl Inner {
    /// One execution, on a blocking-pool thread.
    fn run(
        &self,
        request: ExecRequest,
        handle: &tokio::runtime::Handle,
        abandoned: Arc<AtomicBool>,
    ) -> Result<ExecOutcome, SandboxError> {
        let ExecRequest {
            program,
            args,
            env,
            stdin,
            mount,
            working_dir: _,
            limits,
        } = request;

        let (compiled, argv, entry) = match program {
            Program::Wasm { module } => {
                let compiled = self.module(&module)?;
                let mut argv = vec!["main.wasm".to_owned()];
                argv.extend(args);
                (compiled, argv, Entry::Command)
            }
            Program::Source { language, code } => {
                let compiled = self.runtime(language)?;
                match language {
                    Language::Python => {
                        let mut argv = vec!["python".to_owned(), "-c".to_owned(), code];
                        argv.extend(args);
                        (compiled, argv, Entry::Command)
                    }
                    Language::JavaScript => {
                        let argv = runtimes::quickjs_argv(code, args);
                        (compiled, argv.clone(), Entry::QuickJs { argv })
                    }
                }
            }
            Program::Command { program } => {
                return Err(SandboxError::Unsupported(format!(
                    "native command `{program}` in the wasm sandbox"
                )));
            }
        };

        let stdout = CappedPipe::new(limits.output_bytes);
        let stderr = CappedPipe::new(limits.output_bytes);
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdin(MemoryInputPipe::new(stdin))
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .args(&argv)
            // Preview 1 cannot create sockets, but say so explicitly: if a later wasmtime
            // changes a default, this sandbox still has no network.
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        for (name, value) in &env {
            wasi.env(name, value);
        }
        let mut enforced = vec![
            "wasm".to_owned(),
            "fuel".to_owned(),
            "epoch_deadline".to_owned(),
            "memory_limit".to_owned(),
            "no_network".to_owned(),
        ];
        if let Some(Mount {
            host_path,
            guest_path,
            mode,
        }) = &mount
        {
            let perms = match mode {
                MountMode::ReadOnly => FsPerms::ReadOnly,
                MountMode::ReadWrite => FsPerms::ReadWrite,
            };
            wasi.preopened_dir(host_path, guest_path, perms)
                .map_err(|e| {
                    setup_msg(format!("cannot open mount {}: {e}", host_path.display()))
                })?;
            enforced.push(match mode {
                MountMode::ReadOnly => "mount_read_only".to_owned(),
                MountMode::ReadWrite => "mount_read_write".to_owned(),
            });
        } else {
            enforced.push("no_filesystem".to_owned());
        }

        let mut memory = usize::try_from(limits.memory_bytes.unwrap_or(DEFAULT_MEMORY_BYTES))
            .unwrap_or(usize::MAX);
        if let Some(pooling) = self.config.pooling {
            // A pool slot cannot hold more; refusing in the limiter (rather than letting the
            // slot fail the growth) keeps the accounting exact.
            memory = memory.min(pooling.max_memory_bytes);
        }
        let guard = MemoryGuard::new(memory, self.config.max_table_elements);
        let mut store = Store::new(
            &self.engine,
            HostState {
                wasi: wasi.build_p1(),
                guard,
            },
        );
        store.limiter(|state| &mut state.guard);
        let fuel = limits.fuel.unwrap_or(DEFAULT_FUEL);
        store
            .set_fuel(fuel)
            .map_err(|e| setup_msg(format!("cannot set fuel: {e}")))?;

        let started = Instant::now();
        // A wall time too long to add to the clock is no limit at all.
        let deadline = started.checked_add(limits.wall_time);
        // Check the clock at every epoch tick: cheap (one comparison per tick), and exact to a
        // tick whatever the tick length, unlike counting ticks, which drift when the ticker
        // thread is descheduled on a loaded machine.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                Err(wasmtime::Error::new(WallClockExceeded))
            } else if abandoned.load(Ordering::Relaxed) {
                Err(wasmtime::Error::new(Abandoned))
            } else {
                Ok(UpdateDeadline::Continue(1))
            }
        });
        // The epoch only interrupts wasm code; a guest parked in a host call (sleeping in
        // `poll_oneoff`) is stopped by dropping its future. The grace lets the epoch fire
        // first in the common case, so the same limit gives the same reason either way.
        let grace = self
            .config
            .epoch_tick
            .saturating_mul(4)
            .max(Duration::from_millis(50));
        let result = handle.block_on(async {
            tokio::time::timeout(
                limits.wall_time.saturating_add(grace),
                drive(&mut store, &compiled, &entry),
            )
            .await
        });
        let wall_time = started.elapsed();
        if let Ok(Err(error)) = &result
            && error.is::<PoolConcurrencyLimitError>()
        {
            // Not the guest's doing: every pool slot is taken by other runs.
            return Err(SandboxError::Busy(format!(
                "all pooled instance slots are in use: {}",
                describe(error)
            )));
        }

        let refused = store.data().guard.refused();
        let termination = classify(result, stdout.overflowed() || stderr.overflowed(), refused);
        // Fuel is only known when the guest was not stopped by its wall clock: compiled code
        // keeps the fuel counter in a register and wasmtime 48 does not write it back before
        // an epoch interrupt, so after a timeout the store's counter undercounts, sometimes to
        // zero. No figure is better than a wrong one.
        let fuel_used = (termination != Termination::Timeout)
            .then(|| fuel.saturating_sub(store.get_fuel().unwrap_or(0)));
        let peak = store.data().guard.peak_memory();
        drop(store);

        let (stdout, stdout_truncated) = stdout.take();
        let (stderr, stderr_truncated) = stderr.take();
        Ok(ExecOutcome {
            termination,
            stdout,
            stderr,
            stdout_truncated,
            stderr_truncated,
            usage: ResourceUsage {
                fuel_used,
                wall_time,
                cpu_time: None,
                peak_memory_bytes: Some(u64::try_from(peak).unwrap_or(u64::MAX)),
            },
            enforced,
        })
    }

    /// The compiled form of a module given in a request, from the cache or compiled now.
    fn module(&self, bytes: &[u8]) -> Result<Arc<Compiled>, SandboxError> {
        if bytes.len() > self.config.max_module_bytes {
            return Err(SandboxError::InvalidProgram(format!(
                "module is {} bytes, more than the {} allowed",
                bytes.len(),
                self.config.max_module_bytes
            )));
        }
        let key = cache::hash(bytes);
        self.modules
            .get_or_compile(key, || self.compile(bytes))
            .map_err(SandboxError::InvalidProgram)
            .and_then(|compiled| {
                if compiled.kind == ModuleKind::Command {
                    Ok(compiled)
                } else {
                    Err(SandboxError::InvalidProgram(
                        "the module has no `_start` export: only WASI command modules can be \
                         run directly"
                            .into(),
                    ))
                }
            })
    }

    /// The compiled runtime for `language`, compiled on first use.
    fn runtime(&self, language: Language) -> Result<Arc<Compiled>, SandboxError> {
        let (slot, path, expected) = match language {
            Language::Python => (&self.python, &self.config.python_wasm, ModuleKind::Command),
            Language::JavaScript => (
                &self.javascript,
                &self.config.javascript_wasm,
                ModuleKind::Reactor,
            ),
        };
        let Some(path) = path else {
            return Err(SandboxError::Unsupported(format!(
                "no {language:?} runtime is configured: set WasmSandboxConfig::{} to its .wasm \
                 file (see docs/backends/sandbox.md for where to get it)",
                match language {
                    Language::Python => "python_wasm",
                    Language::JavaScript => "javascript_wasm",
                }
            )));
        };
        let mut slot = lock(slot);
        if let Some(compiled) = slot.as_ref() {
            return Ok(compiled.clone());
        }
        let bytes = read_runtime(path)?;
        let compiled = self.compile(&bytes).map_err(|e| {
            setup_msg(format!(
                "the {language:?} runtime {} does not compile: {e}",
                path.display()
            ))
        })?;
        if compiled.kind != expected {
            return Err(setup_msg(format!(
                "{} is not the expected kind of module for {language:?} (expected a WASI {})",
                path.display(),
                match expected {
                    ModuleKind::Command => "command exporting `_start`",
                    ModuleKind::Reactor => "reactor exporting `_initialize`",
                }
            )));
        }
        let compiled = Arc::new(compiled);
        *slot = Some(compiled.clone());
        Ok(compiled)
    }

    fn compile(&self, bytes: &[u8]) -> Result<Compiled, String> {
        let module = Module::new(&self.engine, bytes).map_err(|e| describe(&e))?;
        let exports_func =
            |name: &str| matches!(module.get_export(name), Some(ExternType::Func(_)));
        let kind = if exports_func("_start") {
            ModuleKind::Command
        } else if exports_func("_initialize") {
            ModuleKind::Reactor
        } else {
            return Err("the module exports neither `_start` (a WASI command) nor \
                        `_initialize` (a WASI reactor)"
                .into());
        };
        // Linking now, once, is what makes a warm run cheap; it also rejects a module that
        // imports anything but WASI preview 1 before it ever runs.
        let pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(|e| describe(&e))?;
        Ok(Compiled { pre, kind })
    }
}

/// Instantiates and runs the guest; `Ok(code)` when it exited by itself.
async fn drive(
    store: &mut Store<HostState>,
    compiled: &Compiled,
    entry: &Entry,
) -> wasmtime::Result<i32> {
    let result = async {
        let instance = compiled.pre.instantiate_async(&mut *store).await?;
        match entry {
            Entry::Command => {
                let start = instance.get_typed_func::<(), ()>(&mut *store, "_start")?;
                start.call_async(&mut *store, ()).await?;
                Ok(0)
            }
            Entry::QuickJs { argv } => runtimes::run_quickjs(store, &instance, argv).await,
        }
    }
    .await;
    match result {
        Err(e) => match e.downcast_ref::<I32Exit>() {
            // `proc_exit` unwinds the guest with this error: it is an exit, not a trap.
            Some(exit) => Ok(exit.0),
            None => Err(e),
        },
        ok => ok,
    }
}

/// Why the run ended, from what the guest returned and what the host observed.
fn classify(
    result: Result<wasmtime::Result<i32>, tokio::time::error::Elapsed>,
    output_overflowed: bool,
    memory_refused: bool,
) -> Termination {
    let error = match result {
        Err(_elapsed) => return Termination::Timeout,
        // A refused growth followed by a failing exit is the guest's allocator giving up
        // (CPython's MemoryError, a C program checking malloc): out of memory, honestly.
        Ok(Ok(code)) if code != 0 && memory_refused => return Termination::OutOfMemory,
        Ok(Ok(code)) => return Termination::Exited { code },
        Ok(Err(error)) => error,
    };
    if output_overflowed || error.is::<OutputLimitExceeded>() {
        return Termination::OutputLimit;
    }
    if error.is::<WallClockExceeded>() {
        return Termination::Timeout;
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => return Termination::OutOfFuel,
        Some(Trap::Interrupt) => return Termination::Timeout,
        _ => {}
    }
    if memory_refused || error.is::<GuestAllocationFailed>() {
        return Termination::OutOfMemory;
    }
    Termination::Trap {
        message: describe(&error),
    }
}

/// The error and its causes on one line ("wasm trap: call stack exhausted").
fn describe(error: &wasmtime::Error) -> String {
    let mut message = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}

fn read_runtime(path: &Path) -> Result<Vec<u8>, SandboxError> {
    std::fs::read(path).map_err(|e| {
        setup(
            format!(
                "cannot read the runtime {} (install it as described in docs/backends/sandbox.md)",
                path.display()
            ),
            e,
        )
    })
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded values are replaced whole or not at all, so a poisoned lock holds a
    // consistent value and is taken over.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
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

fn setup_msg(message: String) -> SandboxError {
    SandboxError::Setup {
        message,
        source: None,
    }
}

/// Advances the engine's epoch every tick on its own thread, for as long as the sandbox lives.
///
/// The thread holds only a weak reference to the engine and a stop flag, so dropping the last
/// sandbox clone ends it within one tick; nothing joins it, because a drop must not block.
struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    fn start(engine: &Engine, tick: Duration) -> Result<Self, SandboxError> {
        let stop = Arc::new(AtomicBool::new(false));
        let weak = engine.weak();
        let flag = stop.clone();
        let tick = tick.max(Duration::from_micros(100));
        std::thread::Builder::new()
            .name("agentic-sandbox-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| setup("cannot start the epoch ticker thread", e))?;
        Ok(EpochTicker { stop })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn exit_codes_and_reasons() {
        assert_eq!(
            classify(Ok(Ok(0)), false, false),
            Termination::Exited { code: 0 }
        );
        assert_eq!(
            classify(Ok(Ok(3)), false, false),
            Termination::Exited { code: 3 }
        );
        assert_eq!(classify(Ok(Ok(1)), false, true), Termination::OutOfMemory);
        assert_eq!(
            classify(Ok(Ok(0)), false, true),
            Termination::Exited { code: 0 },
            "a guest that handled a refused growth and succeeded is a success"
        );
        assert_eq!(
            classify(Ok(Err(wasmtime::Error::new(Trap::OutOfFuel))), false, false),
            Termination::OutOfFuel
        );
        assert_eq!(
            classify(
                Ok(Err(wasmtime::Error::new(WallClockExceeded))),
                false,
                false
            ),
            Termination::Timeout
        );
        assert_eq!(
            classify(Ok(Err(wasmtime::Error::new(Trap::OutOfFuel))), true, false),
            Termination::OutputLimit,
            "the output flag wins: the guest was stopped by its output"
        );
        assert!(matches!(
            classify(Ok(Err(wasmtime::Error::new(Trap::StackOverflow))), false, false),
            Termination::Trap { message } if message.contains("call stack exhausted")
        ));
    }
}
