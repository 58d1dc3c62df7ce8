//! Compiled modules by content hash, so a module (or a language runtime) is compiled once and
//! every later run only instantiates it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use sha2::{Digest, Sha256};
use wasmtime::InstancePre;

use super::HostState;

/// How a module is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ModuleKind {
    /// A WASI command: `_start` runs the program and returns (or calls `proc_exit`).
    Command,
    /// A WASI reactor: `_initialize`, then the exports a driver knows how to call.
    Reactor,
}

/// A module compiled and linked against WASI, ready to instantiate.
pub(crate) struct Compiled {
    pub(crate) pre: InstancePre<HostState>,
    pub(crate) kind: ModuleKind,
}

/// A module's content hash (SHA-256 of its bytes, text modules included as written).
pub(crate) type ModuleHash = [u8; 32];

pub(crate) fn hash(bytes: &[u8]) -> ModuleHash {
    Sha256::digest(bytes).into()
}

type Slot = Arc<OnceLock<Result<Arc<Compiled>, String>>>;

#[derive(Default)]
struct Entries {
    slots: HashMap<ModuleHash, Slot>,
    /// Insertion order, for eviction: oldest first.
    order: VecDeque<ModuleHash>,
}

/// A bounded map from content hash to compiled module.
///
/// Each entry is a `OnceLock`, so two runs of the same new module compile it once: the second
/// waits for the first (on a blocking thread, never a runtime core). Failed compilations are
/// not kept: the error goes back to the caller and the slot is dropped.
pub(crate) struct ModuleCache {
    capacity: usize,
    entries: Mutex<Entries>,
}

impl ModuleCache {
    pub(crate) fn new(capacity: usize) -> Self {
        ModuleCache {
            capacity: capacity.max(1),
            entries: Mutex::new(Entries::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        // Held only for map operations, never while compiling; the map stays consistent if a
        // holder panicked, so a poisoned lock is taken over.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The compiled module for `key`, compiling it with `compile` on a miss.
    pub(crate) fn get_or_compile(
        &self,
        key: ModuleHash,
        compile: impl FnOnce() -> Result<Compiled, String>,
    ) -> Result<Arc<Compiled>, String> {
        let slot = {
            let mut entries = self.lock();
            if let Some(slot) = entries.slots.get(&key) {
                slot.clone()
            } else {
                // FIFO eviction keeps this simple and predictable; a sandbox serving an agent
                // sees a handful of distinct modules (its runtimes and a few tools), far fewer
                // than the capacity.
                while entries.slots.len() >= self.capacity {
                    match entries.order.pop_front() {
                        Some(old) => {
                            entries.slots.remove(&old);
                        }
                        None => break,
                    }
                }
                let slot = Slot::default();
                entries.slots.insert(key, slot.clone());
                entries.order.push_back(key);
                slot
            }
        };
        let result = slot
            .get_or_init(|| compile().map(Arc::new))
            .as_ref()
            .map(Arc::clone)
            .map_err(Clone::clone);
        if result.is_err() {
            let mut entries = self.lock();
            if entries
                .slots
                .get(&key)
                .is_some_and(|current| Arc::ptr_eq(current, &slot))
            {
                entries.slots.remove(&key);
                entries.order.retain(|k| *k != key);
            }
        }
        result
    }

    /// Number of modules held.
    pub(crate) fn len(&self) -> usize {
        self.lock().slots.len()
    }
}
