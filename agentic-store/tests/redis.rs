#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]
//! The store conformance suite, unchanged, against a real Redis at `AGENTIC_REDIS_URL`
//! (`.ci/run` sets it), twice: with watch on (every write takes the put script's general
//! path, which publishes) and off (updates take its fast paths). Without the variable every
//! case prints a skip and passes.
//!
//! Each case runs on a namespace of its own, and every key of it goes when the case ends,
//! passed or failed (`testkit::CleanupOnDrop`): nothing stays behind in the shared Redis.

use std::sync::Arc;

use agentic_store::testkit::CleanupOnDrop;
use agentic_store::{PutOptions, RedisStore, RedisStoreConfig, StateStore};

fn url() -> Option<String> {
    let url = std::env::var("AGENTIC_REDIS_URL").ok();
    if url.is_none() {
        eprintln!("SKIP redis store: AGENTIC_REDIS_URL is not set");
    }
    url
}

async fn redis_store(watch: bool) -> Option<Arc<dyn StateStore>> {
    let url = url()?;
    let ns = format!("agentic-test-conformance-{:x}", fastrand::u64(..));
    let mut config = RedisStoreConfig::new(url.clone()).namespace(&ns);
    if watch {
        config = config.with_watch();
    }
    let base = format!("agentic:{{{ns}}}:");
    match RedisStore::connect_with(config).await {
        Ok(store) => Some(Arc::new(CleanupOnDrop::new(store, move |_| {
            delete_namespace(&url, &base)
        }))),
        // The variable is set, so Redis is meant to be there: fail loudly, never skip.
        Err(e) => panic!("AGENTIC_REDIS_URL is set but Redis cannot be reached: {e}"),
    }
}

/// Deletes every key under `base` (a namespace's `agentic:{<ns>}:`), without awaiting: it runs
/// when a test's store is dropped.
fn delete_namespace(url: &str, base: &str) {
    let deleted = redis::Client::open(url)
        .and_then(|client| client.get_connection())
        .and_then(|mut c| {
            let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{base}*")).query(&mut c)?;
            if !keys.is_empty() {
                redis::cmd("DEL").arg(keys).query::<()>(&mut c)?;
            }
            Ok(())
        });
    if let Err(e) = deleted {
        eprintln!("cleanup: could not delete the keys under {base}: {e}");
    }
}

/// Deletes every key of a test's namespace when dropped: when the test ends, passed or failed.
type Cleanup = CleanupOnDrop<()>;

/// A namespace of this test's own, its key base `agentic:{<ns>}:`, a plain connection for
/// writing and checking keys behind the store's back, and the guard that deletes every key
/// of the namespace when the test ends (keep it bound, as `_clean`, until then).
async fn private_namespace(
    url: &str,
    tag: &str,
) -> (String, String, redis::aio::MultiplexedConnection, Cleanup) {
    let ns = format!("agentic-test-{tag}-{:x}", fastrand::u64(..));
    let base = format!("agentic:{{{ns}}}:");
    let clean = CleanupOnDrop::new((), {
        let (url, base) = (url.to_owned(), base.clone());
        move |_| delete_namespace(&url, &base)
    });
    let client = redis::Client::open(url).expect("Redis URL");
    let raw = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    (ns, base, raw, clean)
}

/// A store on a private namespace (see [`private_namespace`]), with the namespace's key base,
/// a raw connection and the clean-up guard.
async fn private_store(
    url: &str,
    tag: &str,
) -> (
    RedisStore,
    String,
    redis::aio::MultiplexedConnection,
    Cleanup,
) {
    let (ns, base, raw, clean) = private_namespace(url, tag).await;
    let store = RedisStore::connect_with(RedisStoreConfig::new(url).namespace(&ns))
        .await
        .expect("connect the store");
    (store, base, raw, clean)
}

mod with_watch {
    use super::*;

    agentic_store::store_conformance_suite!(
        make = match redis_store(true).await {
            Some(store) => store,
            None => return,
        }
    );
}

mod without_watch {
    use super::*;

    agentic_store::store_conformance_suite!(
        make = match redis_store(false).await {
            Some(store) => store,
            None => return,
        }
    );
}

/// Values written by the release that kept each key in one hash (`v`, and the version in
/// `ver`, with `t` marking a key with a TTL) are moved to the current layout at connect, with
/// their versions and TTLs, and writes continue above their versions: an update without TTL
/// makes such a key permanent.
#[tokio::test]
async fn values_in_the_earlier_layout_are_read_and_updated() {
    let Some(url) = url() else { return };
    let (ns, base, mut raw, _clean) = private_namespace(&url, "layout").await;
    // As the earlier release left them: the counter, a plain key and a key with a TTL.
    let _: () = redis::pipe()
        .cmd("SET")
        .arg(format!("{base}ver"))
        .arg(50)
        .cmd("HSET")
        .arg(format!("{base}kv:plain"))
        .arg("v")
        .arg("p")
        .arg("ver")
        .arg(41)
        .cmd("HSET")
        .arg(format!("{base}kv:timed"))
        .arg("v")
        .arg("t")
        .arg("ver")
        .arg(42)
        .arg("t")
        .arg(1)
        .cmd("PEXPIRE")
        .arg(format!("{base}kv:timed"))
        .arg(60_000)
        .cmd("ZADD")
        .arg(format!("{base}idx"))
        .arg(0)
        .arg("plain")
        .arg(0)
        .arg("timed")
        .cmd("ZADD")
        .arg(format!("{base}exp"))
        .arg(i64::MAX / 2)
        .arg("timed")
        .query_async(&mut raw)
        .await
        .expect("write the earlier layout");

    let store = RedisStore::connect_with(RedisStoreConfig::new(&url).namespace(&ns))
        .await
        .expect("connect the store");
    let plain = store
        .get("plain")
        .await
        .expect("get")
        .expect("plain is there");
    assert_eq!((plain.value.as_ref(), plain.version), (&b"p"[..], 41));
    let timed = store
        .get("timed")
        .await
        .expect("get")
        .expect("timed is there");
    assert_eq!((timed.value.as_ref(), timed.version), (&b"t"[..], 42));
    let pttl_conn = raw.clone();
    let pttl = |key: String| {
        let mut raw = pttl_conn.clone();
        async move {
            redis::cmd("PTTL")
                .arg(key)
                .query_async::<i64>(&mut raw)
                .await
                .expect("PTTL")
        }
    };
    assert!(
        pttl(format!("{base}v:timed")).await > 0,
        "the move lost the TTL"
    );
    let old: i64 = redis::cmd("EXISTS")
        .arg(format!("{base}kv:plain"))
        .arg(format!("{base}kv:timed"))
        .query_async(&mut raw)
        .await
        .expect("EXISTS");
    assert_eq!(old, 0, "the earlier hashes are left behind");

    let v = store
        .put("plain", b"p2".to_vec(), PutOptions::new())
        .await
        .expect("update plain");
    assert!(
        v > 41,
        "update of an earlier-layout key went back to version {v}"
    );
    let v2 = store
        .put("plain", b"p3".to_vec(), PutOptions::expect_version(v))
        .await
        .expect("compare-and-set plain");
    assert!(v2 > v);
    let t = store
        .put("timed", b"t2".to_vec(), PutOptions::new())
        .await
        .expect("update timed");
    assert!(
        t > 42,
        "update of an earlier-layout key went back to version {t}"
    );
    for part in ["n", "v"] {
        assert_eq!(
            pttl(format!("{base}{part}:timed")).await,
            -1,
            "an update without TTL left the earlier TTL on the key"
        );
    }
    let page = store.scan("", None, 10).await.expect("scan");
    let seen: Vec<(String, Vec<u8>, u64)> = page
        .items
        .into_iter()
        .map(|(k, v)| (k, v.value.to_vec(), v.version))
        .collect();
    assert_eq!(
        seen,
        [
            ("plain".to_owned(), b"p3".to_vec(), v2),
            ("timed".to_owned(), b"t2".to_vec(), t)
        ]
    );

    // A deleted key comes back above every version it had.
    assert!(
        store
            .delete("plain", agentic_store::Expect::Any)
            .await
            .expect("delete")
    );
    let again = store
        .put("plain", b"new".to_vec(), PutOptions::new())
        .await
        .expect("re-create");
    assert!(again > v2, "re-created key got {again}, not above {v2}");
}

/// Puts made at the same time share one script call; a key that cannot be written (its
/// version key holds another Redis type) fails its own put with a clear error and no other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_key_fails_only_its_own_put_in_a_batch() {
    let Some(url) = url() else { return };
    let (ns, base, mut raw, _clean) = private_namespace(&url, "batch").await;
    let _: () = redis::cmd("HSET")
        .arg(format!("{base}n:bad"))
        .arg("f")
        .arg("not a version")
        .query_async(&mut raw)
        .await
        .expect("plant a hash");
    let store = RedisStore::connect_with(RedisStoreConfig::new(&url).namespace(&ns))
        .await
        .expect("connect the store");

    let puts = (0..32).map(|i| {
        let store = store.clone();
        async move {
            let key = if i == 16 {
                "bad".to_owned()
            } else {
                format!("good{i}")
            };
            (
                key.clone(),
                store.put(&key, vec![b'x'; 64], PutOptions::new()).await,
            )
        }
    });
    for (key, result) in futures::future::join_all(puts).await {
        if key == "bad" {
            let err = result.expect_err("a put onto a string key must fail");
            assert!(
                err.to_string().contains("WRONGTYPE"),
                "the error does not say why: {err}"
            );
        } else {
            let v = result.unwrap_or_else(|e| panic!("put {key} failed beside the bad key: {e}"));
            assert!(v > 0);
        }
    }
    assert_eq!(
        store
            .get("good3")
            .await
            .expect("get")
            .map(|v| v.value.len()),
        Some(64)
    );
}

/// Unconditional puts to one key made at the same time share a transaction (values by
/// `MSET`, versions by `put_plain.lua`), with the key repeated in it: each put still gets
/// its own version, and the value left is the one of the put that got the highest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_plain_puts_to_one_key_keep_value_and_version_together() {
    let Some(url) = url() else { return };
    let (store, _, _, _clean) = private_store(&url, "hot").await;
    let first = store
        .put("hot", b"start".to_vec(), PutOptions::new())
        .await
        .expect("first put");

    let puts = (0..48u32).map(|i| {
        let store = store.clone();
        async move {
            let value = format!("value {i}").into_bytes();
            let version = store
                .put("hot", value.clone(), PutOptions::new())
                .await
                .unwrap_or_else(|e| panic!("put {i} failed: {e}"));
            (version, value)
        }
    });
    let mut results = futures::future::join_all(puts).await;
    results.sort();
    let versions: Vec<u64> = results.iter().map(|(v, _)| *v).collect();
    let expected: Vec<u64> = (first + 1..=first + 48).collect();
    assert_eq!(versions, expected, "every put gets its own next version");
    let (top, value) = results.pop().expect("48 results");
    let now = store
        .get("hot")
        .await
        .expect("get")
        .expect("the key exists");
    assert_eq!(now.version, top, "the version left is the highest answered");
    assert_eq!(
        now.value.to_vec(),
        value,
        "the value left is the one of the put that got the highest version"
    );
}

/// Batched calls run on the runtime the store was connected on, so a caller on another
/// runtime (here a current-thread one on a thread of its own) is served as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_on_another_runtime_is_served() {
    let Some(url) = url() else { return };
    let (store, _, _, _clean) = private_store(&url, "elsewhere").await;
    let other = store.clone();
    let (version, got) = tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a second runtime");
        rt.block_on(async move {
            let version = other
                .put("k", b"from elsewhere".to_vec(), PutOptions::new())
                .await
                .expect("put from the other runtime");
            let got = other.get("k").await.expect("get from the other runtime");
            (version, got)
        })
    })
    .await
    .expect("the other runtime's thread");
    let got = got.expect("the key exists");
    assert_eq!(
        (got.version, got.value.to_vec()),
        (version, b"from elsewhere".to_vec())
    );
}

/// In the transaction of unconditional puts the values are written before the versions; a
/// new key whose version cannot be taken (the namespace's counter holds another type) fails
/// its own put, its value is removed again, and the other puts are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_key_failing_after_the_values_are_written_stays_absent() {
    let Some(url) = url() else { return };
    let (store, base, mut raw, _clean) = private_store(&url, "counter").await;
    let before = store
        .put("old", b"1".to_vec(), PutOptions::new())
        .await
        .expect("first put");
    let _: () = redis::cmd("DEL")
        .arg(format!("{base}ver"))
        .query_async(&mut raw)
        .await
        .expect("drop the counter");
    let _: () = redis::cmd("HSET")
        .arg(format!("{base}ver"))
        .arg("f")
        .arg("not a counter")
        .query_async(&mut raw)
        .await
        .expect("plant a hash");

    let (old, fresh) = tokio::join!(
        store.put("old", b"2".to_vec(), PutOptions::new()),
        store.put("fresh", b"x".to_vec(), PutOptions::new()),
    );
    assert_eq!(old.expect("the existing key's put"), before + 1);
    let err = fresh.expect_err("a new key cannot take a version from a hash");
    assert!(
        err.to_string().contains("WRONGTYPE"),
        "the error does not say why: {err}"
    );
    assert_eq!(store.get("fresh").await.expect("get"), None);
    let left: i64 = redis::cmd("EXISTS")
        .arg(format!("{base}v:fresh"))
        .query_async(&mut raw)
        .await
        .expect("EXISTS");
    assert_eq!(left, 0, "the failed put's value stayed behind");
    let old = store.get("old").await.expect("get").expect("old exists");
    assert_eq!(
        (old.version, old.value.to_vec()),
        (before + 1, b"2".to_vec())
    );
}

/// An unconditional put over a key with a TTL (its version is `t<digits>`, so the plain
/// path's `INCR` refuses it) counts on from that version, makes both of the key's Redis keys
/// permanent and takes it out of the expiry index; one over a corrupt version string takes
/// a fresh version from the namespace counter, as a new key does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_put_over_a_ttl_key_or_a_corrupt_version_takes_the_long_way() {
    let Some(url) = url() else { return };
    let (store, base, mut raw, _clean) = private_store(&url, "ttl-then-plain").await;
    let with_ttl = store
        .put(
            "k",
            b"short".to_vec(),
            PutOptions::new().ttl(std::time::Duration::from_secs(60)),
        )
        .await
        .expect("put with a TTL");
    let plain = store
        .put("k", b"kept".to_vec(), PutOptions::new())
        .await
        .expect("plain put over it");
    assert_eq!(plain, with_ttl + 1, "counts on from the TTL version");
    for k in ["n:k", "v:k"] {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(format!("{base}{k}"))
            .query_async(&mut raw)
            .await
            .expect("PTTL");
        assert_eq!(ttl, -1, "{k} still has a TTL");
    }
    let in_exp: Option<f64> = redis::cmd("ZSCORE")
        .arg(format!("{base}exp"))
        .arg("k")
        .query_async(&mut raw)
        .await
        .expect("ZSCORE");
    assert_eq!(in_exp, None, "still in the expiry index");
    let got = store.get("k").await.expect("get").expect("k exists");
    assert_eq!((got.version, got.value.to_vec()), (plain, b"kept".to_vec()));

    let _: () = redis::cmd("SET")
        .arg(format!("{base}n:k"))
        .arg("garbage")
        .query_async(&mut raw)
        .await
        .expect("corrupt the version");
    let fresh = store
        .put("k", b"mended".to_vec(), PutOptions::new())
        .await
        .expect("plain put over a corrupt version");
    let got = store.get("k").await.expect("get").expect("k exists");
    assert_eq!(
        (got.version, got.value.to_vec()),
        (fresh, b"mended".to_vec())
    );
    let counter: u64 = redis::cmd("GET")
        .arg(format!("{base}ver"))
        .query_async(&mut raw)
        .await
        .expect("GET ver");
    assert_eq!(
        fresh, counter,
        "a fresh version comes from the namespace counter"
    );
}

/// A TCP proxy to Redis that can lose a reply: armed, it forwards the next request it gets
/// from the client, lets the server run it and answer, throws the answer away and closes
/// the connection. The client sees its connection drop after the write was applied.
struct ReplyLoser {
    url: String,
    armed: Arc<std::sync::atomic::AtomicBool>,
}

impl ReplyLoser {
    /// A proxy to the server of `redis_url` (`redis://[user:password@]host[:port][/db]`).
    async fn start(redis_url: &str) -> ReplyLoser {
        let rest = redis_url.split_once("://").map_or(redis_url, |(_, r)| r);
        let (userinfo, rest) = rest.rsplit_once('@').map_or(("", rest), |(u, r)| (u, r));
        let (host_port, path) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
        let target = if host_port.contains(':') {
            host_port.to_owned()
        } else {
            format!("{host_port}:6379")
        };
        let url_of = {
            let (userinfo, path) = (userinfo.to_owned(), path.to_owned());
            move |port: u16| {
                let at = if userinfo.is_empty() {
                    String::new()
                } else {
                    format!("{userinfo}@")
                };
                format!("redis://{at}127.0.0.1:{port}/{path}")
            }
        };
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let arm = Arc::clone(&armed);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                    continue;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let lose = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let (arm, lose_up) = (Arc::clone(&arm), Arc::clone(&lose));
                let up = tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n @ 1..) = cr.read(&mut buf).await {
                        let cut = arm.swap(false, Ordering::SeqCst);
                        if cut {
                            lose_up.store(true, Ordering::SeqCst);
                        }
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        if cut {
                            // The server runs it and answers; the answer is dropped below.
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                            break;
                        }
                    }
                });
                let down = tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n @ 1..) = sr.read(&mut buf).await {
                        if lose.load(Ordering::SeqCst) || cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                // Either side ending closes both (the halves drop with their tasks).
                tokio::spawn(async move {
                    let _ = up.await;
                    down.abort();
                });
            }
        });
        ReplyLoser {
            url: url_of(port),
            armed,
        }
    }

    /// The URL to connect through the proxy.
    fn url(&self) -> String {
        self.url.clone()
    }

    /// Loses the answer to the next request.
    fn lose_next_reply(&self) {
        self.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A compare-and-set, a lock and an unlock that Redis applied but whose replies were lost
/// are not sent again and misreported: the caller gets a retryable error saying the
/// outcome is unknown, never a conflict with its own write, its own lock reported as
/// someone else's, or its own unlock reported as a lost lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_reply_is_lost_is_not_misreported() {
    let Some(url) = url() else { return };
    let proxy = ReplyLoser::start(&url).await;
    let (ns, base, mut raw, _clean) = private_namespace(&url, "lost-reply").await;
    let store = RedisStore::connect_with(RedisStoreConfig::new(proxy.url()).namespace(&ns))
        .await
        .expect("connect the store");
    // Each call is made once unarmed first, so the armed one is not the EVALSHA that meets
    // an empty script cache (its NOSCRIPT answer would be the one lost, and nothing applied).
    let v0 = store
        .put("k", b"zero".to_vec(), PutOptions::new())
        .await
        .expect("put");
    let v1 = store
        .put(
            "k",
            b"one".to_vec(),
            PutOptions::new().expect(agentic_store::Expect::Version(v0)),
        )
        .await
        .expect("an unarmed compare-and-set");
    let warm = store
        .lock("warm", std::time::Duration::from_secs(30))
        .await
        .expect("lock")
        .expect("free");
    store.unlock(&warm).await.expect("unlock");

    proxy.lose_next_reply();
    let cas = store
        .put(
            "k",
            b"two".to_vec(),
            PutOptions::new().expect(agentic_store::Expect::Version(v1)),
        )
        .await;
    let now = store.get("k").await.expect("get").expect("present");
    assert_eq!(&now.value[..], b"two", "the CAS was applied");
    assert_eq!(now.version, v1 + 1, "once");
    match cas {
        Ok(v) => assert_eq!(v, now.version),
        Err(e) => {
            assert!(
                !e.is_conflict(),
                "a CAS whose reply was lost came back as a conflict with its own write: {e}"
            );
            assert!(e.is_retryable(), "an unknown outcome is retryable: {e}");
        }
    }

    proxy.lose_next_reply();
    let lock = store.lock("l", std::time::Duration::from_secs(30)).await;
    match lock {
        Ok(Some(_)) => {}
        Ok(None) => panic!("a lock whose reply was lost was reported held by someone else"),
        Err(e) => assert!(e.is_retryable(), "an unknown outcome is retryable: {e}"),
    }
    let held: Option<String> = redis::cmd("GET")
        .arg(format!("{base}lock:l"))
        .query_async(&mut raw)
        .await
        .expect("GET");
    let token: u64 = held
        .as_deref()
        .and_then(|t| t.parse().ok())
        .expect("the lock was applied, with its token");
    let guard = agentic_store::LockGuard {
        name: "l".to_owned(),
        token,
        expires_at: tokio::time::Instant::now() + std::time::Duration::from_secs(30),
    };
    // The lock's lost answer dropped the connection: a call through the store reconnects
    // now, so the armed request below is the unlock, not the new connection's handshake.
    store.get("k").await.expect("get");

    proxy.lose_next_reply();
    match store.unlock(&guard).await {
        Ok(()) => {}
        Err(e) => {
            assert!(
                !matches!(e, agentic_store::StoreError::LockLost { .. }),
                "an unlock whose reply was lost came back as a lost lock: {e}"
            );
            assert!(e.is_retryable(), "an unknown outcome is retryable: {e}");
        }
    }
    let gone: Option<String> = redis::cmd("GET")
        .arg(format!("{base}lock:l"))
        .query_async(&mut raw)
        .await
        .expect("GET");
    assert_eq!(gone, None, "the unlock was applied");
}
