#![allow(clippy::panic)]
//! The store conformance suite, unchanged, against a real Redis at `AGENTIC_REDIS_URL`
//! (`.ci/run` sets it). Without the variable every case prints a skip and passes.
//!
//! All cases share one namespace; each case works under its own random key prefix and
//! deletes its keys, so only the namespace's two counters (`ver`, `fence`) stay behind.

use std::sync::Arc;

use agentic_store::{RedisStore, RedisStoreConfig, StateStore};

async fn redis_store() -> Option<Arc<dyn StateStore>> {
    let Ok(url) = std::env::var("AGENTIC_REDIS_URL") else {
        eprintln!("SKIP redis store: AGENTIC_REDIS_URL is not set");
        return None;
    };
    let config = RedisStoreConfig::new(url)
        .namespace("agentic-test-conformance")
        .with_watch();
    match RedisStore::connect_with(config).await {
        Ok(s) => Some(Arc::new(s)),
        // The variable is set, so Redis is meant to be there: fail loudly, never skip.
        Err(e) => panic!("AGENTIC_REDIS_URL is set but Redis cannot be reached: {e}"),
    }
}

agentic_store::store_conformance_suite!(
    make = match redis_store().await {
        Some(store) => store,
        None => return,
    }
);
