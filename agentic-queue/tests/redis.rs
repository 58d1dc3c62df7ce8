//! `RedisQueue` against real Redis: the conformance suite unchanged (on the shared server
//! at `AGENTIC_REDIS_URL`), then the faults, each on a private `redis-server` started on a
//! free port so the shared one is never restarted or disturbed.
//!
//! Without `AGENTIC_REDIS_URL` every test prints a skip and passes; with it, a missing
//! server or `redis-server` binary fails loudly.
#![cfg(all(feature = "test-kit", feature = "redis"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use agentic_queue::testkit::Tracked;
use agentic_queue::{
    DeadLetter, JobId, NewJob, QueueError, RedisQueue, RedisQueueConfig, Retry, TaskQueue,
};

fn redis_url() -> Option<String> {
    match std::env::var("AGENTIC_REDIS_URL") {
        Ok(url) => Some(url),
        Err(_) => {
            eprintln!("SKIP redis queue: AGENTIC_REDIS_URL is not set");
            None
        }
    }
}

async fn shared_queue() -> Option<Tracked<RedisQueue>> {
    let url = redis_url()?;
    // Every case uses its own queue name under this prefix and drains what it made.
    // Idempotency keys outlive their jobs until the dedupe window ends (by design); a short
    // window makes the tests' keys expire soon after the run instead of in 24 hours.
    let mut config = RedisQueueConfig::new(url.clone()).key_prefix("agentic-test");
    config.dedupe_window = Duration::from_secs(60);
    let queue = RedisQueue::connect_with(config)
        .await
        .expect("AGENTIC_REDIS_URL is set but Redis cannot be reached");
    // A drained queue still has its token counter and the `leased` sentinel (by design);
    // when the case ends, pass or fail, every key of the queues it used goes.
    Some(Tracked::new(queue, move |_, names| {
        delete_queue_keys(&url, "agentic-test", &names)
    }))
}

/// Deletes every key of the queues `names` under `prefix` (`<prefix>:{<name>}:*`).
fn delete_queue_keys(url: &str, prefix: &str, names: &[String]) {
    let deleted = redis::Client::open(url)
        .and_then(|client| client.get_connection())
        .and_then(|mut conn| {
            for name in names {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{prefix}:{{{name}}}:*"))
                    .query(&mut conn)?;
                if !keys.is_empty() {
                    redis::cmd("DEL").arg(keys).query::<()>(&mut conn)?;
                }
            }
            Ok(())
        });
    if let Err(e) = deleted {
        eprintln!("cleanup: could not delete the keys of {names:?}: {e}");
    }
}

mod conformance {
    agentic_queue::queue_conformance_suite!(make = super::shared_queue(), prefix = "redis");
}

/// A private `redis-server` on a free port, killed (and its files removed) on drop.
struct PrivateRedis {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl PrivateRedis {
    /// Starts one with append-only persistence fsynced on every write, so a `SIGKILL`
    /// loses nothing the server acknowledged.
    fn start() -> PrivateRedis {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("agentic-redis-{port}-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let mut me = PrivateRedis {
            child: None,
            port,
            dir,
        };
        me.spawn();
        me
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            // For DEBUG SLEEP in the slow-reply test (Redis 7 refuses it otherwise).
            .args(["--enable-debug-command", "local"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "AGENTIC_REDIS_URL is set, so redis-server must be installed for the fault tests",
            );
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        for _ in 0..200 {
            if let Ok(client) = redis::Client::open(self.url())
                && let Ok(mut c) = client.get_connection()
                && redis::cmd("PING").query::<String>(&mut c).is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("private redis-server on port {} did not come up", self.port);
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: no shutdown save, no goodbye to clients.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn command(&self, cmd: &mut redis::Cmd) -> redis::Value {
        let client = redis::Client::open(self.url()).unwrap();
        let mut c = client.get_connection().unwrap();
        cmd.query(&mut c).unwrap()
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn private_queue(server: &PrivateRedis, response_timeout: Duration) -> RedisQueue {
    let mut config = RedisQueueConfig::new(server.url());
    config.response_timeout = response_timeout;
    config.max_poll_interval = Duration::from_millis(20);
    RedisQueue::connect_with(config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_dies_holding_a_lease_loses_nothing() {
    let Some(queue) = shared_queue().await else {
        return;
    };
    let name = format!("faults-dies-{}", fastrand::u64(..));
    queue
        .enqueue(&name, NewJob::new(&b"work"[..]))
        .await
        .unwrap();
    let dead_worker = queue
        .dequeue(&name, 1, Duration::from_millis(300), Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(dead_worker.len(), 1);
    // The worker "dies": no ack, no heartbeat. Another worker gets the job once the lease expires.
    let second = queue
        .dequeue(&name, 1, Duration::from_secs(5), Duration::from_secs(3))
        .await
        .unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].attempt, 2);
    assert_eq!(second[0].last_error.as_deref(), Some("lease expired"));
    let stale = queue.ack(&dead_worker[0].lease).await.unwrap_err();
    assert!(matches!(stale, QueueError::LeaseLost { .. }), "{stale}");
    queue.ack(&second[0].lease).await.unwrap();
    let stats = queue.stats(&name).await.unwrap();
    assert_eq!(
        (stats.ready, stats.leased, stats.delayed, stats.dead),
        (0, 0, 0, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_mid_run_loses_no_job() {
    if redis_url().is_none() {
        return;
    }
    let mut server = PrivateRedis::start();
    let queue = private_queue(&server, Duration::from_secs(2)).await;
    const N: usize = 10_000;
    let jobs: Vec<NewJob> = (0..N)
        .map(|i| NewJob::new(i.to_string().into_bytes()))
        .collect();
    for chunk in jobs.chunks(1000) {
        queue
            .enqueue_batch("restart", chunk.to_vec())
            .await
            .unwrap();
    }
    let mut done: HashSet<usize> = HashSet::new();
    // Consume part, leaving some jobs leased (unacked) when the server dies.
    let first = queue
        .dequeue(
            "restart",
            500,
            // Long enough for the acks below on a loaded machine (every write waits for an
            // fsync); the unacked half comes back after it, well within the deadline.
            Duration::from_secs(5),
            Duration::from_secs(1),
        )
        .await
        .unwrap();
    let leases: Vec<_> = first[..250].iter().map(|d| d.lease.clone()).collect();
    for r in queue.ack_batch(&leases).await.unwrap() {
        r.unwrap();
    }
    for d in &first[..250] {
        done.insert(std::str::from_utf8(&d.payload).unwrap().parse().unwrap());
    }

    server.kill();
    server.spawn(); // same port, same directory: the AOF is replayed

    // The same queue handle carries on: the connection manager reconnects by itself.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while done.len() < N {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {N} jobs completed",
            done.len()
        );
        let batch = match queue
            .dequeue(
                "restart",
                500,
                Duration::from_secs(10),
                Duration::from_millis(500),
            )
            .await
        {
            Ok(b) => b,
            // A worker loop logs and tries again; it never dies of a broker restart.
            Err(e) if e.is_retryable() => continue,
            Err(e) => panic!("non-retryable error after restart: {e}"),
        };
        let leases: Vec<_> = batch.iter().map(|d| d.lease.clone()).collect();
        for r in queue.ack_batch(&leases).await.unwrap() {
            r.unwrap();
        }
        for d in batch {
            done.insert(std::str::from_utf8(&d.payload).unwrap().parse().unwrap());
        }
    }
    assert_eq!(done.len(), N, "every job completed at least once");
    let stats = queue.stats("restart").await.unwrap();
    assert_eq!(
        (stats.ready, stats.delayed, stats.leased, stats.dead),
        (0, 0, 0, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_killed_while_workers_wait() {
    if redis_url().is_none() {
        return;
    }
    let server = PrivateRedis::start();
    let queue = Arc::new(private_queue(&server, Duration::from_secs(2)).await);
    let mut waiters = Vec::new();
    for _ in 0..3 {
        let q = Arc::clone(&queue);
        waiters.push(tokio::spawn(async move {
            let mut got = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while got.len() < 10 && tokio::time::Instant::now() < deadline {
                match q
                    .dequeue(
                        "killed",
                        10,
                        Duration::from_secs(10),
                        Duration::from_millis(300),
                    )
                    .await
                {
                    Ok(batch) => {
                        for d in batch {
                            q.ack(&d.lease).await.unwrap();
                            got.push(d.payload);
                        }
                    }
                    Err(e) => assert!(e.is_retryable(), "{e}"),
                }
                if got.len() >= 10 {
                    break;
                }
            }
            got
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Drop every client connection of the private server while the consumers wait.
    server.command(
        redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .arg("SKIPME")
            .arg("yes"),
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let jobs: Vec<NewJob> = (0..10)
        .map(|i| NewJob::new(format!("job-{i}").into_bytes()))
        .collect();
    queue.enqueue_batch("killed", jobs).await.unwrap();
    let mut total = 0;
    for w in waiters {
        total += w.await.unwrap().len();
    }
    assert_eq!(
        total, 10,
        "every job is consumed exactly once after the connections were killed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_slower_than_the_timeout_is_retried_not_fatal() {
    if redis_url().is_none() {
        return;
    }
    let server = PrivateRedis::start();
    let queue = private_queue(&server, Duration::from_millis(200)).await;
    // The server stalls for longer than the client's timeout.
    let url = server.url();
    let stall = std::thread::spawn(move || {
        let client = redis::Client::open(url).unwrap();
        let mut c = client.get_connection().unwrap();
        let _: redis::Value = redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg("0.6")
            .query(&mut c)
            .unwrap();
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let enqueued = queue
        .enqueue("slow", NewJob::new(&b"patience"[..]))
        .await
        .unwrap();
    stall.join().unwrap();
    // Retried after the timeout, the enqueue happened once: the client-made id dedupes it.
    let got = queue
        .dequeue(
            "slow",
            10,
            Duration::from_secs(5),
            Duration::from_millis(500),
        )
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].job_id(), &enqueued.id);
    queue.ack(&got[0].lease).await.unwrap();
    let stats = queue.stats("slow").await.unwrap();
    assert_eq!((stats.ready, stats.delayed, stats.leased), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_jobs_are_refused_and_poison_is_dead_lettered() {
    let Some(queue) = shared_queue().await else {
        return;
    };
    let name = format!("faults-poison-{}", fastrand::u64(..));
    let max = queue.capabilities().max_payload_bytes;
    let err = queue
        .enqueue(&name, NewJob::new(vec![0u8; max + 1]))
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::PayloadTooLarge { .. }), "{err}");
    // A configured maximum is the one enforced.
    let mut config = RedisQueueConfig::new(redis_url().unwrap()).key_prefix("agentic-test");
    config.max_payload_bytes = 1024;
    let small = RedisQueue::connect_with(config).await.unwrap();
    assert_eq!(small.capabilities().max_payload_bytes, 1024);
    let err = small
        .enqueue(&name, NewJob::new(vec![0u8; 1025]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            QueueError::PayloadTooLarge {
                size: 1025,
                max: 1024
            }
        ),
        "{err}"
    );
    small
        .enqueue(&name, NewJob::new(vec![0u8; 1024]))
        .await
        .unwrap();
    let fits = queue
        .dequeue(&name, 1, Duration::from_secs(5), Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(fits.len(), 1, "a job of exactly the maximum goes in");
    queue.ack(&fits[0].lease).await.unwrap();
    assert_eq!(
        queue.stats(&name).await.unwrap().ready,
        0,
        "nothing of a refused job is written"
    );

    queue
        .enqueue(&name, NewJob::new(&b"\xff\xfe not what anyone expects"[..]))
        .await
        .unwrap();
    let got = queue
        .dequeue(&name, 1, Duration::from_secs(5), Duration::from_secs(1))
        .await
        .unwrap();
    queue
        .nack(
            &got[0].lease,
            Retry::DeadLetter,
            "undecodable payload: expected JSON",
        )
        .await
        .unwrap();
    let dead = queue.dead_letters(&name, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, "undecodable payload: expected JSON");
    assert_eq!(
        dead[0].payload.as_ref(),
        b"\xff\xfe not what anyone expects"
    );
    // Clean up: requeue, take and ack it.
    queue
        .requeue_dead(&name, &[dead[0].job_id.clone()])
        .await
        .unwrap();
    let again = queue
        .dequeue(&name, 1, Duration::from_secs(5), Duration::from_secs(1))
        .await
        .unwrap();
    queue.ack(&again[0].lease).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_names_with_braces_are_refused() {
    let Some(queue) = shared_queue().await else {
        return;
    };
    let err = queue
        .enqueue("a{b}", NewJob::new(&b"x"[..]))
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::InvalidQueueName { .. }), "{err}");
}

/// A stored job record that cannot be read (written behind the queue's back) goes to the
/// dead letters with the reason and its raw bytes; the jobs dequeued with it are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_job_record_is_dead_lettered_and_spares_its_batch() {
    let Some(queue) = shared_queue().await else {
        return;
    };
    let url = redis_url().unwrap();
    let name = format!("faults-corrupt-{}", fastrand::u64(..));
    let mut ids = Vec::new();
    for payload in ["first", "second", "third"] {
        ids.push(queue.enqueue(&name, NewJob::new(payload)).await.unwrap().id);
    }
    let client = redis::Client::open(url).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("agentic-test:{{{name}}}:job:{}", ids[1]))
        .arg(&b"no header here"[..])
        .query_async(&mut raw)
        .await
        .unwrap();
    let got = queue
        .dequeue(&name, 10, Duration::from_secs(5), Duration::from_secs(1))
        .await
        .unwrap();
    let payloads: Vec<&[u8]> = got.iter().map(|d| d.payload.as_ref()).collect();
    assert_eq!(payloads, [&b"first"[..], &b"third"[..]]);
    let dead = queue.dead_letters(&name, 10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].job_id, ids[1]);
    assert!(
        dead[0].reason.contains("unreadable job record"),
        "{}",
        dead[0].reason
    );
    assert_eq!(dead[0].payload.as_ref(), b"no header here");
    for d in &got {
        queue.ack(&d.lease).await.unwrap();
    }

    // The same when the record goes bad while leased: the expired lease is reclaimed into
    // the dead letters, not dropped.
    let id = queue
        .enqueue(&name, NewJob::new("fourth"))
        .await
        .unwrap()
        .id;
    let leased = queue
        .dequeue(&name, 1, Duration::from_millis(100), Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(leased.len(), 1);
    let _: () = redis::cmd("SET")
        .arg(format!("agentic-test:{{{name}}}:job:{id}"))
        .arg(&b"garbage"[..])
        .query_async(&mut raw)
        .await
        .unwrap();
    let fourth = reclaimed_as_unreadable(&queue, &name, &id, 2).await;
    assert_eq!(fourth.payload.as_ref(), b"garbage");
    // A job key holding another Redis type stops nothing: the job is dead-lettered too.
    let id = queue.enqueue(&name, NewJob::new("fifth")).await.unwrap().id;
    let key = format!("agentic-test:{{{name}}}:job:{id}");
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut raw)
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(&key)
        .arg("f")
        .arg("v")
        .query_async(&mut raw)
        .await
        .unwrap();
    let none = queue
        .dequeue(
            &name,
            1,
            Duration::from_millis(100),
            Duration::from_millis(100),
        )
        .await
        .unwrap();
    assert!(none.is_empty(), "{none:?}");
    reclaimed_as_unreadable(&queue, &name, &id, 3).await;
    // Requeueing such a dead letter moves nothing and keeps it listed: it cannot run.
    let moved = queue
        .requeue_dead(&name, &[ids[1].clone(), fourth.job_id.clone()])
        .await
        .unwrap();
    assert_eq!(moved, 0);
    assert_eq!(queue.dead_letters(&name, 10).await.unwrap().len(), 3);
}

/// Waits out the 100 ms lease of job `id` (leased, unreadable), lets a dequeue reclaim it,
/// and checks it is now the `count`th dead letter, as an unreadable record; returns it.
async fn reclaimed_as_unreadable(
    queue: &dyn TaskQueue,
    name: &str,
    id: &JobId,
    count: usize,
) -> DeadLetter {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let none = queue
        .dequeue(name, 1, Duration::from_secs(5), Duration::from_millis(100))
        .await
        .unwrap();
    assert!(none.is_empty(), "{none:?}");
    let mut dead = queue.dead_letters(name, 10).await.unwrap();
    assert_eq!(dead.len(), count, "{dead:?}");
    let last = dead.remove(count - 1);
    assert_eq!(&last.job_id, id);
    assert!(
        last.reason.contains("unreadable job record"),
        "{}",
        last.reason
    );
    last
}

/// A TCP proxy to Redis that can lose a reply: armed, it forwards the next request it gets
/// from the client, lets the server run it and answer, throws the answer away and closes
/// the connection. The client sees its connection drop after the write was applied.
struct ReplyLoser {
    url: String,
    armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
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
        let armed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let arm = std::sync::Arc::clone(&armed);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                    continue;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let lose = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                let (arm, lose_up) = (std::sync::Arc::clone(&arm), std::sync::Arc::clone(&lose));
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

/// An enqueue with an idempotency key whose reply is lost after Redis applied it is sent
/// again, finds its own job under the key, and reports it as enqueued (not a duplicate),
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_enqueue_finds_its_own_job_not_a_duplicate() {
    let Some(url) = redis_url() else { return };
    let proxy = ReplyLoser::start(&url).await;
    let config = RedisQueueConfig::new(proxy.url()).key_prefix("agentic-test");
    let queue = RedisQueue::connect_with(config).await.unwrap();
    let name = format!("faults-repeat-{}", fastrand::u64(..));
    let tracked = Tracked::new(queue, {
        let url = url.clone();
        move |_, names| delete_queue_keys(&url, "agentic-test", &names)
    });
    // Once unarmed first, so the armed call is not the EVALSHA that meets an empty script
    // cache (the client would then load the script and send a fresh repeat, and the branch
    // under test would never run).
    tracked
        .enqueue(&name, NewJob::new("warm").idempotency_key("k0"))
        .await
        .unwrap();
    let warm = tracked
        .dequeue(&name, 1, Duration::from_secs(5), Duration::from_secs(1))
        .await
        .unwrap();
    tracked.ack(&warm[0].lease).await.unwrap();
    proxy.lose_next_reply();
    let enqueued = tracked
        .enqueue(&name, NewJob::new("once").idempotency_key("k1"))
        .await
        .unwrap();
    assert!(
        !enqueued.duplicate,
        "its own job is not a duplicate: {enqueued:?}"
    );
    let got = tracked
        .dequeue(
            &name,
            10,
            Duration::from_secs(5),
            Duration::from_millis(300),
        )
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "enqueued once");
    assert_eq!(got[0].job_id(), &enqueued.id);
    tracked.ack(&got[0].lease).await.unwrap();
}

/// Memory stays bounded on Redis itself: an acked job leaves no key behind, an idempotency
/// key goes when its window ends, and dead letters are trimmed to `dead_letter_max` with
/// the trimmed jobs deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_jobs_expired_keys_and_trimmed_dead_letters_leave_nothing() {
    let Some(url) = redis_url() else { return };
    let mut config = RedisQueueConfig::new(url.clone()).key_prefix("agentic-test");
    config.dedupe_window = Duration::from_secs(2);
    config.dead_letter_max = 2;
    let queue = Tracked::new(RedisQueue::connect_with(config).await.unwrap(), {
        let url = url.clone();
        move |_, names| delete_queue_keys(&url, "agentic-test", &names)
    });
    let name = format!("faults-memory-{}", fastrand::u64(..));
    let client = redis::Client::open(url).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let pattern = format!("agentic-test:{{{name}}}:*");
    let prefix = format!("agentic-test:{{{name}}}:");
    let mut keys = async || -> Vec<String> {
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(&pattern)
            .query_async(&mut raw)
            .await
            .unwrap();
        keys.iter_mut()
            .for_each(|k| *k = k.replacen(&prefix, "", 1));
        keys.sort();
        keys
    };

    queue
        .enqueue(&name, NewJob::new("a").idempotency_key("once"))
        .await
        .unwrap();
    let got = queue
        .dequeue(&name, 1, Duration::from_secs(5), Duration::from_secs(1))
        .await
        .unwrap();
    queue.ack(&got[0].lease).await.unwrap();
    assert_eq!(
        keys().await,
        ["idem:once", "leased", "seq"],
        "after the ack"
    );
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(keys().await, ["leased", "seq"], "after the dedupe window");

    for payload in ["d1", "d2", "d3"] {
        queue.enqueue(&name, NewJob::new(payload)).await.unwrap();
    }
    let got = queue
        .dequeue(&name, 3, Duration::from_secs(5), Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(got.len(), 3);
    for d in &got {
        queue.nack(&d.lease, Retry::DeadLetter, "no").await.unwrap();
    }
    let dead = queue.dead_letters(&name, 10).await.unwrap();
    let payloads: Vec<&[u8]> = dead.iter().map(|d| d.payload.as_ref()).collect();
    assert_eq!(payloads, [&b"d2"[..], &b"d3"[..]], "the oldest is trimmed");
    let jobs = keys()
        .await
        .iter()
        .filter(|k| k.starts_with("job:"))
        .count();
    assert_eq!(jobs, 2, "the trimmed job is deleted");
}
