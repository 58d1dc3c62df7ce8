use std::marker::PhantomData;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Expect, PutOptions, StateStore, StoreError};

/// A decoded value and the version it was read at (pass it back as [`Expect::Version`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Typed<T> {
    /// The decoded value.
    pub value: T,
    /// The version it was read at.
    pub version: u64,
}

/// A typed view of a [`StateStore`]: values are JSON-encoded `T`.
///
/// ```
/// use std::sync::Arc;
/// use agentic_store::{MemoryStore, PutOptions, TypedStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), agentic_store::StoreError> {
/// let counters: TypedStore<u64> = TypedStore::new(Arc::new(MemoryStore::new()));
/// let v = counters.put("visits", &1, PutOptions::create()).await?;
/// let read = counters.get("visits").await?.expect("just written");
/// assert_eq!((read.value, read.version), (1, v));
/// # Ok(())
/// # }
/// ```
pub struct TypedStore<T> {
    store: Arc<dyn StateStore>,
    _marker: PhantomData<fn() -> T>,
}

impl<T> Clone for TypedStore<T> {
    fn clone(&self) -> Self {
        TypedStore {
            store: Arc::clone(&self.store),
            _marker: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for TypedStore<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TypedStore").finish_non_exhaustive()
    }
}

impl<T: Serialize + DeserializeOwned> TypedStore<T> {
    /// A typed view over `store`.
    pub fn new(store: Arc<dyn StateStore>) -> Self {
        TypedStore {
            store,
            _marker: PhantomData,
        }
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn StateStore> {
        &self.store
    }

    /// Reads and decodes `key`. A value that does not decode is a [`StoreError::Codec`].
    pub async fn get(&self, key: &str) -> Result<Option<Typed<T>>, StoreError> {
        match self.store.get(key).await? {
            None => Ok(None),
            Some(v) => {
                let value =
                    serde_json::from_slice(&v.value).map_err(|source| StoreError::Codec {
                        action: "decode",
                        key: key.to_owned(),
                        source,
                    })?;
                Ok(Some(Typed {
                    value,
                    version: v.version,
                }))
            }
        }
    }

    /// Encodes and writes `value`; returns the new version.
    pub async fn put(&self, key: &str, value: &T, opts: PutOptions) -> Result<u64, StoreError> {
        let bytes = serde_json::to_vec(value).map_err(|source| StoreError::Codec {
            action: "encode",
            key: key.to_owned(),
            source,
        })?;
        self.store.put(key, bytes, opts).await
    }

    /// Deletes `key` if `expect` holds.
    pub async fn delete(&self, key: &str, expect: Expect) -> Result<bool, StoreError> {
        self.store.delete(key, expect).await
    }

    /// Read-modify-write with compare-and-set, retried on conflict up to `max_tries` times.
    /// `f` gets the current value (`None` if absent) and returns the new one, or `None` to
    /// leave the key as it is. Returns what was written (or `None` when nothing was).
    pub async fn update<F>(
        &self,
        key: &str,
        max_tries: usize,
        mut f: F,
    ) -> Result<Option<Typed<T>>, StoreError>
    where
        F: FnMut(Option<&T>) -> Option<T> + Send,
        T: Send + Sync,
    {
        let mut tries = 0;
        loop {
            tries += 1;
            let current = self.get(key).await?;
            let expect = match &current {
                Some(c) => Expect::Version(c.version),
                None => Expect::Absent,
            };
            let Some(next) = f(current.as_ref().map(|c| &c.value)) else {
                return Ok(None);
            };
            match self.put(key, &next, PutOptions::new().expect(expect)).await {
                Ok(version) => {
                    return Ok(Some(Typed {
                        value: next,
                        version,
                    }));
                }
                Err(e) if e.is_conflict() && tries < max_tries => continue,
                Err(e) => return Err(e),
            }
        }
    }
}
