//! Versioned key-value state behind one trait, [`StateStore`].
//!
//! Values are bytes with a version that grows on every write, so writers coordinate with
//! compare-and-set ([`Expect`]) instead of locks. Locks exist too, for leadership, and carry a
//! fencing token that grows with every acquisition so a holder that lost its lock is refused.
//! The in-memory backend is always compiled; Redis and NATS KV come behind features. Every
//! backend passes one conformance suite ([`testkit`], feature `test-kit`).
//!
//! ```
//! use std::time::Duration;
//! use agentic_store::{Expect, MemoryStore, PutOptions, StateStore, StoreError};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), StoreError> {
//! let store = MemoryStore::new();
//! let v1 = store.put("plan/1", b"draft".to_vec(), PutOptions::create()).await?;
//! // A second create of the same key is refused: compare-and-set.
//! let err = store.put("plan/1", b"other".to_vec(), PutOptions::create()).await;
//! assert!(matches!(err, Err(StoreError::Conflict { .. })));
//! // Update only if nobody changed it since we read version v1.
//! store.put("plan/1", b"final".to_vec(), PutOptions::expect_version(v1)).await?;
//! assert_eq!(store.get("plan/1").await?.map(|v| v.value.to_vec()), Some(b"final".to_vec()));
//!
//! let lock = store.lock("leader", Duration::from_secs(10)).await?.ok_or(StoreError::LockHeld)?;
//! assert!(lock.token > 0);
//! store.unlock(&lock).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Guarantees (every backend)
//!
//! | guarantee | meaning |
//! |---|---|
//! | versions | every successful write returns a version greater than any the key had before |
//! | compare-and-set | [`Expect::Absent`] / [`Expect::Version`] writes fail with [`StoreError::Conflict`] when the expectation does not hold; nothing is written |
//! | TTL | an expired key is never returned by `get` or `scan` |
//! | scan | [`StateStore::scan`] pages through keys with a prefix in key order; a cursor continues after the last key returned |
//! | locks | at most one live holder; the fencing token grows with every acquisition of a name; extend and unlock with an old token fail with [`StoreError::LockLost`] |
//!
//! # Backends
//!
//! | backend | where | notes |
//! |---|---|---|
//! | [`MemoryStore`] | always compiled | in-process, no persistence; see its capability table |
//!
//! # Features
//!
//! | feature | what it adds |
//! |---|---|
//! | `test-kit` | [`testkit`]: the conformance suite, generic over any [`StateStore`] |

#![cfg_attr(docsrs, feature(doc_cfg))]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

mod error;
mod memory;

/// `now + d`, or thirty years from now (tokio's own far future) when that does not fit in
/// an `Instant`: a TTL of `Duration::MAX` is the caller's to ask for, and must not panic.
#[cfg_attr(not(any(feature = "redis", feature = "nats")), allow(dead_code))]
pub(crate) fn later(now: tokio::time::Instant, d: Duration) -> tokio::time::Instant {
    const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);
    now.checked_add(d)
        .or_else(|| now.checked_add(FAR_FUTURE))
        .unwrap_or(now)
}
mod scoped;
mod typed;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;

#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub mod nats;

#[cfg(feature = "test-kit")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-kit")))]
pub mod testkit;

pub use error::StoreError;
pub use memory::MemoryStore;
pub use scoped::ScopedStore;
pub use typed::{Typed, TypedStore};

#[cfg(feature = "redis")]
pub use crate::redis::{RedisStore, RedisStoreConfig};

#[cfg(feature = "nats")]
pub use crate::nats::{NatsStore, NatsStoreConfig};

/// A value and the version it was written at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The stored bytes.
    pub value: Bytes,
    /// Grows with every write of the key; never 0 for a stored value.
    pub version: u64,
}

/// The condition a write depends on (compare-and-set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Expect {
    /// Write unconditionally.
    #[default]
    Any,
    /// Only if the key does not exist (or has expired).
    Absent,
    /// Only if the key exists at exactly this version.
    Version(u64),
}

/// Options of [`StateStore::put`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PutOptions {
    /// Expire the key after this long; `None` keeps it until deleted.
    pub ttl: Option<Duration>,
    /// The compare-and-set condition.
    pub expect: Expect,
}

impl PutOptions {
    /// Unconditional write without TTL.
    pub fn new() -> Self {
        PutOptions::default()
    }

    /// Write only if the key is absent.
    pub fn create() -> Self {
        PutOptions {
            ttl: None,
            expect: Expect::Absent,
        }
    }

    /// Write only if the key is at `version`.
    pub fn expect_version(version: u64) -> Self {
        PutOptions {
            ttl: None,
            expect: Expect::Version(version),
        }
    }

    /// Sets the TTL.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Sets the expectation.
    pub fn expect(mut self, expect: Expect) -> Self {
        self.expect = expect;
        self
    }
}

/// One page of [`StateStore::scan`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScanPage {
    /// Keys with the prefix, in ascending key order, with their values.
    pub items: Vec<(String, Versioned)>,
    /// Pass this as the next call's cursor; `None` when the scan is complete.
    pub next_cursor: Option<String>,
}

/// A held lock. Not released on drop (release is async): call
/// [`StateStore::unlock`], or let the TTL run out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockGuard {
    /// The lock's name.
    pub name: String,
    /// The fencing token: greater than every token handed out for this name before.
    pub token: u64,
    /// When the lock runs out on this process's clock, unless extended.
    pub expires_at: tokio::time::Instant,
}

/// A change seen by [`StateStore::watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// The key was written.
    Put {
        /// The key.
        key: String,
        /// The new value.
        value: Versioned,
    },
    /// The key was deleted (or expired, where the backend reports expiry).
    Delete {
        /// The key.
        key: String,
    },
}

/// What a backend can do; the conformance suite skips (and prints) what it cannot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreCapabilities {
    /// Per-key TTL on `put`.
    pub per_key_ttl: bool,
    /// [`StateStore::watch`] works.
    pub watch: bool,
}

impl StoreCapabilities {
    /// Everything supported.
    pub const fn full() -> Self {
        StoreCapabilities {
            per_key_ttl: true,
            watch: true,
        }
    }
}

/// Versioned key-value state with compare-and-set, TTL, prefix scan and fenced locks.
///
/// Dyn-compatible: hold it as `Arc<dyn StateStore>` and pick the backend at run time.
#[async_trait]
pub trait StateStore: Send + Sync {
    /// What this backend supports.
    fn capabilities(&self) -> StoreCapabilities;

    /// The value and version of `key`, or `None` if absent or expired.
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError>;

    /// Writes `value` if `opts.expect` holds; returns the new version.
    async fn put(&self, key: &str, value: Vec<u8>, opts: PutOptions) -> Result<u64, StoreError>;

    /// Deletes `key` if `expect` holds. Returns whether a live key was deleted.
    /// With [`Expect::Version`] or [`Expect::Absent`] a mismatch is a [`StoreError::Conflict`].
    async fn delete(&self, key: &str, expect: Expect) -> Result<bool, StoreError>;

    /// Up to `limit` keys starting with `prefix`, in key order, after `cursor`.
    async fn scan(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<ScanPage, StoreError>;

    /// Tries to take the lock `name` for `ttl`. `None` if someone else holds it.
    async fn lock(&self, name: &str, ttl: Duration) -> Result<Option<LockGuard>, StoreError>;

    /// Extends a held lock to `ttl` from now; [`StoreError::LockLost`] if it is no longer ours.
    async fn extend_lock(&self, guard: &LockGuard, ttl: Duration) -> Result<LockGuard, StoreError>;

    /// Releases a held lock; [`StoreError::LockLost`] if it was no longer ours.
    async fn unlock(&self, guard: &LockGuard) -> Result<(), StoreError>;

    /// Changes under `prefix` from now on. Backends without watch return
    /// [`StoreError::Unsupported`].
    async fn watch(
        &self,
        prefix: &str,
    ) -> Result<BoxStream<'static, Result<WatchEvent, StoreError>>, StoreError> {
        let _ = prefix;
        Err(StoreError::Unsupported("watch"))
    }
}

macro_rules! forward_store {
    ($($ty:ty),*) => {$(
        #[async_trait]
        impl<T: StateStore + ?Sized> StateStore for $ty {
            fn capabilities(&self) -> StoreCapabilities {
                (**self).capabilities()
            }
            async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
                (**self).get(key).await
            }
            async fn put(&self, key: &str, value: Vec<u8>, opts: PutOptions) -> Result<u64, StoreError> {
                (**self).put(key, value, opts).await
            }
            async fn delete(&self, key: &str, expect: Expect) -> Result<bool, StoreError> {
                (**self).delete(key, expect).await
            }
            async fn scan(&self, prefix: &str, cursor: Option<&str>, limit: usize) -> Result<ScanPage, StoreError> {
                (**self).scan(prefix, cursor, limit).await
            }
            async fn lock(&self, name: &str, ttl: Duration) -> Result<Option<LockGuard>, StoreError> {
                (**self).lock(name, ttl).await
            }
            async fn extend_lock(&self, guard: &LockGuard, ttl: Duration) -> Result<LockGuard, StoreError> {
                (**self).extend_lock(guard, ttl).await
            }
            async fn unlock(&self, guard: &LockGuard) -> Result<(), StoreError> {
                (**self).unlock(guard).await
            }
            async fn watch(&self, prefix: &str) -> Result<BoxStream<'static, Result<WatchEvent, StoreError>>, StoreError> {
                (**self).watch(prefix).await
            }
        }
    )*};
}

forward_store!(Arc<T>, Box<T>);
