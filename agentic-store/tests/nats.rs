//! `NatsStore` against a real NATS (JetStream) at `AGENTIC_NATS_URL`: the store conformance
//! suite unchanged, plus the NATS-specific behaviour (key mapping, refused per-key TTL).
//!
//! Each test works in its own pair of buckets (`agt_<random>` and `agt_<random>_locks`),
//! deleted when the test's store is dropped, so runs leave nothing behind on the shared
//! server. Without `AGENTIC_NATS_URL` every test prints a skip and passes; with it, an
//! unreachable server fails loudly.
#![cfg(all(feature = "test-kit", feature = "nats"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use agentic_store::testkit::CleanupOnDrop;
use agentic_store::{Expect, NatsStore, NatsStoreConfig, PutOptions, StateStore, StoreError};

fn nats_url() -> Option<String> {
    std::env::var("AGENTIC_NATS_URL").ok()
}

/// A `NatsStore` in fresh buckets that are deleted when the last handle is dropped.
type TestStore = CleanupOnDrop<NatsStore>;

/// Wraps `store` so its buckets go when it is dropped. Drop cannot await and may run inside
/// the test's runtime: the deletion runs on a thread of its own with its own small runtime,
/// waited for, so nothing outlives the test.
fn deleted_on_drop(store: NatsStore) -> TestStore {
    CleanupOnDrop::new(store, |store| {
        let store = store.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            if let Err(e) = rt.block_on(store.delete_buckets()) {
                eprintln!("could not delete the test buckets: {e}");
            }
        })
        .join();
    })
}

async fn test_store(skip_name: &str) -> Option<Arc<TestStore>> {
    let Some(url) = nats_url() else {
        println!("SKIP nats {skip_name}: AGENTIC_NATS_URL is not set");
        return None;
    };
    let bucket = format!("agt_{:016x}", fastrand_u64());
    let store = NatsStore::connect_with(NatsStoreConfig::new(url).bucket(bucket))
        .await
        // The variable is set, so NATS is meant to be there: fail loudly, never skip.
        .unwrap_or_else(|e| panic!("AGENTIC_NATS_URL is set but NATS cannot be used: {e}"));
    Some(Arc::new(deleted_on_drop(store)))
}

fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one((std::process::id(), std::time::SystemTime::now()))
}

mod conformance {
    agentic_store::store_conformance_suite!(
        make = match super::test_store("store conformance").await {
            Some(store) => store,
            None => return,
        }
    );
}

/// Keys outside the NATS KV character set (spaces, dots, unicode, empty `/` parts) are
/// stored, read, scanned and watched under their own names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awkward_keys_roundtrip() {
    let Some(store) = test_store("awkward_keys_roundtrip").await else {
        return;
    };
    let keys = [
        "tenant a/plan.1",
        "tenant a/plan 1",
        "tenant a//empty part",
        "tenant a/\u{1F980}/\u{e9}t\u{e9}",
        "tenant a/=2E",
        "tenant a/trailing/",
    ];
    let mut versions = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let v = store
            .put(key, vec![i as u8], PutOptions::create())
            .await
            .unwrap();
        versions.push(v);
        let got = store.get(key).await.unwrap().unwrap();
        assert_eq!(
            (got.value.as_ref(), got.version),
            (&[i as u8][..], v),
            "{key}"
        );
    }
    let page = store.scan("tenant a/", None, 100).await.unwrap();
    let mut want: Vec<&str> = keys.to_vec();
    want.sort();
    let got: Vec<&str> = page.items.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(got, want, "scan returns the original keys, sorted");
    // A prefix that ends inside a part is filtered exactly.
    let page = store.scan("tenant a/plan", None, 100).await.unwrap();
    let got: Vec<&str> = page.items.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(got, ["tenant a/plan 1", "tenant a/plan.1"]);
    for key in keys {
        assert!(store.delete(key, Expect::Any).await.unwrap());
    }
}

/// A TTL on `put` is refused as unsupported (NATS 2.9 has no per-key TTL), and nothing is
/// written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_ttl_is_refused() {
    let Some(store) = test_store("per_key_ttl_is_refused").await else {
        return;
    };
    assert!(!store.capabilities().per_key_ttl);
    let r = store
        .put(
            "ttl/k",
            b"v".to_vec(),
            PutOptions::new().ttl(Duration::from_secs(1)),
        )
        .await;
    assert!(matches!(r, Err(StoreError::Unsupported(_))), "{r:?}");
    assert_eq!(store.get("ttl/k").await.unwrap(), None);
}

/// The bucket-wide `max_age` is the TTL NATS 2.9 offers: a key disappears after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_max_age_expires_keys() {
    let Some(url) = nats_url() else {
        println!("SKIP nats bucket_max_age_expires_keys: AGENTIC_NATS_URL is not set");
        return;
    };
    let bucket = format!("agt_{:016x}", fastrand_u64());
    let store = NatsStore::connect_with(
        NatsStoreConfig::new(url)
            .bucket(bucket)
            .max_age(Duration::from_secs(1)),
    )
    .await
    .unwrap();
    let store = deleted_on_drop(store);
    store
        .put("k", b"v".to_vec(), PutOptions::new())
        .await
        .unwrap();
    assert!(store.get("k").await.unwrap().is_some());
    // The server sweeps expired messages about once a second; allow two sweeps.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    while store.get("k").await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "key outlived the bucket's max_age by 3 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Without the variable: connecting to nothing fails with a backend error rather than
/// hanging (run only when the variable is set, to keep the skip path trivial).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_fails() {
    if nats_url().is_none() {
        println!("SKIP nats unreachable_server_fails: AGENTIC_NATS_URL is not set");
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = NatsStoreConfig::new(format!("nats://127.0.0.1:{port}"));
    config.connection_timeout = Duration::from_millis(500);
    let r = NatsStore::connect_with(config).await;
    assert!(matches!(r, Err(StoreError::Backend { .. })), "{r:?}");
}
