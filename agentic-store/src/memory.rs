//! STUB: being implemented.
use std::time::Duration;

use async_trait::async_trait;

use crate::*;

/// In-process store.
#[derive(Debug, Default)]
pub struct MemoryStore {}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl StateStore for MemoryStore {
    fn capabilities(&self) -> StoreCapabilities {
        StoreCapabilities::full()
    }
    async fn get(&self, _key: &str) -> Result<Option<Versioned>, StoreError> {
        Err(StoreError::Unsupported("stub"))
    }
    async fn put(&self, _key: &str, _value: Vec<u8>, _opts: PutOptions) -> Result<u64, StoreError> {
        Err(StoreError::Unsupported("stub"))
    }
    async fn delete(&self, _key: &str, _expect: Expect) -> Result<bool, StoreError> {
        Err(StoreError::Unsupported("stub"))
    }
    async fn scan(
        &self,
        _prefix: &str,
        _cursor: Option<&str>,
        _limit: usize,
    ) -> Result<ScanPage, StoreError> {
        Err(StoreError::Unsupported("stub"))
    }
    async fn lock(&self, _name: &str, _ttl: Duration) -> Result<Option<LockGuard>, StoreError> {
        Err(StoreError::Unsupported("stub"))
    }
    async fn extend_lock(
        &self,
        _guard: &LockGuard,
        _ttl: Duration,
    ) -> Result<LockGuard, StoreError> {
        Err(StoreError::Unsupported("stub"))
    }
    async fn unlock(&self, _guard: &LockGuard) -> Result<(), StoreError> {
        Err(StoreError::Unsupported("stub"))
    }
}
