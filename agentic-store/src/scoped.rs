use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;

use crate::{
    Expect, LockGuard, PutOptions, ScanPage, StateStore, StoreCapabilities, StoreError, Versioned,
    WatchEvent,
};

/// A [`StateStore`] seen through a key prefix: every key, scan and lock name is namespaced,
/// so one tenant (or one test) cannot read or clobber another's keys.
///
/// Keys returned by [`StateStore::scan`] and [`StateStore::watch`] have the prefix removed.
#[derive(Clone)]
pub struct ScopedStore {
    inner: Arc<dyn StateStore>,
    prefix: String,
}

impl std::fmt::Debug for ScopedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScopedStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl ScopedStore {
    /// Scopes `inner` to keys under `prefix` (conventionally ending in `/`).
    pub fn new(inner: Arc<dyn StateStore>, prefix: impl Into<String>) -> Self {
        ScopedStore {
            inner,
            prefix: prefix.into(),
        }
    }

    /// The prefix added to every key.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn full(&self, key: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + key.len());
        k.push_str(&self.prefix);
        k.push_str(key);
        k
    }

    fn strip<'a>(&self, key: &'a str) -> &'a str {
        key.strip_prefix(self.prefix.as_str()).unwrap_or(key)
    }

    fn unscope_guard(&self, mut guard: LockGuard) -> LockGuard {
        guard.name = self.strip(&guard.name).to_owned();
        guard
    }

    fn scope_guard(&self, guard: &LockGuard) -> LockGuard {
        LockGuard {
            name: self.full(&guard.name),
            ..guard.clone()
        }
    }
}

#[async_trait]
impl StateStore for ScopedStore {
    fn capabilities(&self) -> StoreCapabilities {
        self.inner.capabilities()
    }

    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        self.inner.get(&self.full(key)).await
    }

    async fn put(&self, key: &str, value: Vec<u8>, opts: PutOptions) -> Result<u64, StoreError> {
        self.inner
            .put(&self.full(key), value, opts)
            .await
            .map_err(|e| self.unscope_err(e))
    }

    async fn delete(&self, key: &str, expect: Expect) -> Result<bool, StoreError> {
        self.inner
            .delete(&self.full(key), expect)
            .await
            .map_err(|e| self.unscope_err(e))
    }

    async fn scan(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<ScanPage, StoreError> {
        let cursor = cursor.map(|c| self.full(c));
        let page = self
            .inner
            .scan(&self.full(prefix), cursor.as_deref(), limit)
            .await?;
        Ok(ScanPage {
            items: page
                .items
                .into_iter()
                .map(|(k, v)| (self.strip(&k).to_owned(), v))
                .collect(),
            next_cursor: page.next_cursor.map(|c| self.strip(&c).to_owned()),
        })
    }

    async fn lock(&self, name: &str, ttl: Duration) -> Result<Option<LockGuard>, StoreError> {
        Ok(self
            .inner
            .lock(&self.full(name), ttl)
            .await?
            .map(|g| self.unscope_guard(g)))
    }

    async fn extend_lock(&self, guard: &LockGuard, ttl: Duration) -> Result<LockGuard, StoreError> {
        self.inner
            .extend_lock(&self.scope_guard(guard), ttl)
            .await
            .map(|g| self.unscope_guard(g))
            .map_err(|e| self.unscope_err(e))
    }

    async fn unlock(&self, guard: &LockGuard) -> Result<(), StoreError> {
        self.inner
            .unlock(&self.scope_guard(guard))
            .await
            .map_err(|e| self.unscope_err(e))
    }

    async fn watch(
        &self,
        prefix: &str,
    ) -> Result<BoxStream<'static, Result<WatchEvent, StoreError>>, StoreError> {
        let strip = self.prefix.clone();
        let unscope = move |key: String| -> String {
            key.strip_prefix(strip.as_str())
                .map(str::to_owned)
                .unwrap_or(key)
        };
        let stream = self.inner.watch(&self.full(prefix)).await?;
        Ok(stream
            .map(move |ev| {
                ev.map(|ev| match ev {
                    WatchEvent::Put { key, value } => WatchEvent::Put {
                        key: unscope(key),
                        value,
                    },
                    WatchEvent::Delete { key } => WatchEvent::Delete { key: unscope(key) },
                })
            })
            .boxed())
    }
}

impl ScopedStore {
    fn unscope_err(&self, err: StoreError) -> StoreError {
        match err {
            StoreError::Conflict {
                key,
                expected,
                found,
            } => StoreError::Conflict {
                key: self.strip(&key).to_owned(),
                expected,
                found,
            },
            StoreError::LockLost { name, token } => StoreError::LockLost {
                name: self.strip(&name).to_owned(),
                token,
            },
            other => other,
        }
    }
}
