//! JSON records in the store, read and changed only by compare-and-set.

use agentic_store::{Expect, PutOptions, StateStore, StoreError};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;

/// Reads and decodes `key`. A record that does not decode is [`Error::Corrupt`], never a panic.
pub(crate) async fn read<T: DeserializeOwned>(
    store: &dyn StateStore,
    key: &str,
) -> Result<Option<(T, u64)>, Error> {
    match store.get(key).await? {
        None => Ok(None),
        Some(v) => {
            let value = serde_json::from_slice(&v.value).map_err(|e| Error::Corrupt {
                key: key.to_owned(),
                reason: e.to_string(),
            })?;
            Ok(Some((value, v.version)))
        }
    }
}

/// Encodes and writes `value` if `expect` holds.
pub(crate) async fn write<T: Serialize>(
    store: &dyn StateStore,
    key: &str,
    value: &T,
    expect: Expect,
) -> Result<u64, Error> {
    let bytes = serde_json::to_vec(value).map_err(|e| Error::Corrupt {
        key: key.to_owned(),
        reason: format!("cannot encode: {e}"),
    })?;
    Ok(store
        .put(key, bytes, PutOptions::new().expect(expect))
        .await?)
}

/// The result of [`modify`].
pub(crate) enum Modified<T> {
    /// `f` changed the record and it was written at this version.
    Written(T, u64),
    /// `f` declined to change the record as it is now.
    Unchanged(T),
    /// No such record.
    Missing,
}

/// How many compare-and-set rounds [`modify`] tries before giving up. Conflicts on one task
/// record come from at most a worker and an orchestrator, so a handful is plenty.
const MAX_CAS_ROUNDS: usize = 32;

/// Read-modify-write with compare-and-set, retried on conflict. `f` mutates the record and
/// returns whether it changed anything; it runs again on the fresh value after a conflict,
/// so it must decide from the record alone.
pub(crate) async fn modify<T, F>(
    store: &dyn StateStore,
    key: &str,
    mut f: F,
) -> Result<Modified<T>, Error>
where
    T: Serialize + DeserializeOwned,
    F: FnMut(&mut T) -> bool,
{
    for _ in 0..MAX_CAS_ROUNDS {
        let Some((mut value, version)) = read::<T>(store, key).await? else {
            return Ok(Modified::Missing);
        };
        if !f(&mut value) {
            return Ok(Modified::Unchanged(value));
        }
        match write(store, key, &value, Expect::Version(version)).await {
            Ok(v) => return Ok(Modified::Written(value, v)),
            Err(Error::Store(e)) if e.is_conflict() => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Error::Store(StoreError::Conflict {
        key: key.to_owned(),
        expected: format!("a quiet record within {MAX_CAS_ROUNDS} compare-and-set rounds"),
        found: None,
    }))
}

/// [`modify`] starting from a value and version the caller already holds (it wrote or read
/// them itself), saving the read when nobody changed the record since. On a conflict it
/// falls back to [`modify`], which reads the fresh record and applies `f` again.
pub(crate) async fn modify_known<T, F>(
    store: &dyn StateStore,
    key: &str,
    mut value: T,
    version: u64,
    mut f: F,
) -> Result<Modified<T>, Error>
where
    T: Serialize + DeserializeOwned,
    F: FnMut(&mut T) -> bool,
{
    if !f(&mut value) {
        return Ok(Modified::Unchanged(value));
    }
    match write(store, key, &value, Expect::Version(version)).await {
        Ok(v) => Ok(Modified::Written(value, v)),
        Err(Error::Store(e)) if e.is_conflict() => modify(store, key, f).await,
        Err(e) => Err(e),
    }
}
