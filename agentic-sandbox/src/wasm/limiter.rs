//! Memory and table limits for one store, with a record of what happened.
//!
//! `StoreLimits` enforces the limits but forgets that it refused anything; the outcome needs
//! to know (a guest whose `memory.grow` was refused and that then aborts ran *out of memory*,
//! it did not merely "exit 1"), and wants the peak linear memory too.

use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};

/// Instances, memories and tables one run may create: a WASI command module is one instance
/// with one memory; the slack for tables covers toolchains that emit a second one.
const MAX_INSTANCES: usize = 1;
const MAX_MEMORIES: usize = 1;
const MAX_TABLES: usize = 4;

#[derive(Debug)]
pub(crate) struct MemoryGuard {
    limits: StoreLimits,
    peak_memory: usize,
    /// The peak before the growth in flight, restored if that growth fails after we allowed
    /// it (growths of one store are sequential, so one slot is enough).
    peak_before_growth: usize,
    refused: bool,
}

impl MemoryGuard {
    pub(crate) fn new(memory_bytes: usize, table_elements: usize) -> Self {
        MemoryGuard {
            limits: StoreLimitsBuilder::new()
                .memory_size(memory_bytes)
                .table_elements(table_elements)
                .instances(MAX_INSTANCES)
                .memories(MAX_MEMORIES)
                .tables(MAX_TABLES)
                .build(),
            peak_memory: 0,
            peak_before_growth: 0,
            refused: false,
        }
    }

    /// The largest linear memory the guest was granted, in bytes.
    pub(crate) fn peak_memory(&self) -> usize {
        self.peak_memory
    }

    /// True when a memory (or table) growth was refused during the run.
    pub(crate) fn refused(&self) -> bool {
        self.refused
    }
}

impl ResourceLimiter for MemoryGuard {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        if allowed {
            self.peak_before_growth = self.peak_memory;
            self.peak_memory = self.peak_memory.max(desired);
        } else {
            self.refused = true;
        }
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        // The host could not back a growth we allowed (mmap failed, pooling slot too small):
        // from the guest's side that is the same refusal, and the memory never got that big.
        self.peak_memory = self.peak_before_growth;
        self.refused = true;
        Ok(())
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.table_growing(current, desired, maximum)?;
        if !allowed {
            self.refused = true;
        }
        Ok(allowed)
    }

    fn table_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.refused = true;
        Ok(())
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}
