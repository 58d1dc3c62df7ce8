//! `NatsQueue` against a real NATS JetStream: the conformance suite unchanged on the shared
//! server at `AGENTIC_NATS_URL`, then the faults (several workers, a worker that dies, poison
//! payloads) and a server restart on a private `nats-server` started on a free port, so the
//! shared server is never restarted.
//!
//! Every test uses its own queue names and deletes their streams at the end. Without
//! `AGENTIC_NATS_URL` every test prints a skip and passes; with it, an unreachable server or
//! a missing `nats-server` binary fails loudly.
#![cfg(all(feature = "test-kit", feature = "nats"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentic_queue::testkit::Tracked;
use agentic_queue::{
    DeadLetter, Delivery, JobId, Lease, NackOutcome, NatsQueue, NatsQueueConfig, NewJob,
    QueueError, QueueStats, Retry, TaskQueue,
};
use tokio::time::Instant;

/// The request timeout of the tests' queues: above the 5 s default, because the tests run in
/// parallel on a loaded machine beside other users of the shared server.
const TEST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The tests' settings: their own prefix, a generous request timeout.
fn test_config(url: String) -> NatsQueueConfig {
    let mut config = NatsQueueConfig::new(url).prefix("agqtest");
    config.request_timeout = TEST_REQUEST_TIMEOUT;
    config
}

/// Runs `op` again while it fails with a retryable error, as a worker loop would (a
/// request that timed out on a loaded server is not a broken guarantee), for up to 60 s;
/// any other error fails the test. Jobs enqueued through it carry idempotency keys, so a
/// retried publish whose first try was stored is deduplicated, not stored twice.
async fn retrying<T, F, Fut>(what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, QueueError>>,
{
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        match op().await {
            Ok(v) => return v,
            Err(e) if e.is_retryable() && Instant::now() < until => {
                eprintln!("{what} failed, retrying: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

fn nats_url(test: &str) -> Option<String> {
    match std::env::var("AGENTIC_NATS_URL") {
        Ok(url) => Some(url),
        Err(_) => {
            println!("SKIP nats {test}: AGENTIC_NATS_URL is not set");
            None
        }
    }
}

/// A `NatsQueue` that remembers the queues it touched and deletes their streams when
/// dropped, so a run leaves nothing on the shared server.
type TestQueue = Tracked<NatsQueue>;

async fn test_queue(url: String, tweak: impl FnOnce(&mut NatsQueueConfig)) -> TestQueue {
    let mut config = test_config(url);
    tweak(&mut config);
    let queue = NatsQueue::connect_with(config)
        .await
        // The variable is set, so NATS is meant to be there: fail loudly, never skip.
        .unwrap_or_else(|e| panic!("AGENTIC_NATS_URL is set but NATS cannot be used: {e}"));
    Tracked::new(queue, |queue, queues| {
        // Drop cannot await and runs inside the test's runtime: clean up on a thread with
        // a runtime of its own, and wait for it.
        let queue = queue.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                for q in queues {
                    if let Err(e) = queue.delete_queue(&q).await {
                        eprintln!("could not delete the streams of {q}: {e}");
                    }
                }
            });
        })
        .join();
    })
}

async fn shared_queue() -> Option<TestQueue> {
    let url = nats_url("queue conformance")?;
    Some(test_queue(url, |_| {}).await)
}

mod conformance {
    agentic_queue::queue_conformance_suite!(make = super::shared_queue(), prefix = "nats");
}

fn unique(name: &str) -> String {
    format!("{name}-{:016x}", rand_u64())
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one((std::process::id(), std::time::SystemTime::now()))
}

/// `workers` workers, each on its own connection (as separate processes would be), share
/// one queue of `jobs` jobs. No job is ever held by two workers at once (leases are long
/// enough never to expire), and every job is acked exactly once.
async fn workers_share_no_job(test: &str, workers: usize, jobs: usize) {
    let Some(url) = nats_url(test) else {
        return;
    };
    let admin = test_queue(url.clone(), |_| {}).await;
    let q = unique(&format!("fault-{workers}w"));
    admin.track(&q);
    let mut ids = HashSet::new();
    for chunk in 0..jobs / 100 {
        let batch: Vec<NewJob> = (0..100)
            .map(|i| {
                let n = chunk * 100 + i;
                NewJob::new(format!("job-{n}").into_bytes()).idempotency_key(format!("job-{n}"))
            })
            .collect();
        for e in retrying("enqueue", || admin.enqueue_batch(&q, batch.clone())).await {
            ids.insert(e.id);
        }
    }
    assert_eq!(ids.len(), jobs);

    let holding: Arc<Mutex<HashMap<JobId, usize>>> = Arc::default();
    let acked: Arc<Mutex<HashMap<JobId, usize>>> = Arc::default();
    let done = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut tasks = Vec::new();
    for w in 0..workers {
        let url = url.clone();
        let (q, holding, acked, done) = (q.clone(), holding.clone(), acked.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let queue = NatsQueue::connect_with(test_config(url)).await.unwrap();
            while done.load(Ordering::SeqCst) < jobs && Instant::now() < deadline {
                let got = match queue
                    .dequeue(&q, 7, Duration::from_secs(20), Duration::from_millis(200))
                    .await
                {
                    Ok(got) => got,
                    // A loaded server: try again, as a worker does.
                    Err(e) => {
                        assert!(e.is_retryable(), "dequeue: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                for d in &got {
                    let other = holding.lock().unwrap().insert(d.job_id().clone(), w);
                    assert!(
                        other.is_none(),
                        "job {} held by workers {w} and {other:?} at once",
                        d.job_id()
                    );
                }
                // "Work": long enough for the other workers to race for the same jobs.
                tokio::time::sleep(Duration::from_millis(fastrand_ms())).await;
                for d in &got {
                    holding.lock().unwrap().remove(d.job_id());
                    // A failed ack keeps its lease: acking again is safe.
                    retrying("ack", || queue.ack(&d.lease)).await;
                    *acked.lock().unwrap().entry(d.job_id().clone()).or_default() += 1;
                    done.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), jobs, "{test}: every job acked");
    assert!(
        acked.values().all(|&n| n == 1),
        "{test}: a job was acked twice"
    );
    assert_eq!(acked.keys().cloned().collect::<HashSet<_>>(), ids);
    assert_eq!(admin.stats(&q).await.unwrap(), QueueStats::default());
}

fn fastrand_ms() -> u64 {
    rand_u64() % 4
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_no_job() {
    workers_share_no_job("two_workers_share_no_job", 2, 500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_workers_share_no_job() {
    workers_share_no_job("four_workers_share_no_job", 4, 1000).await;
}

/// A worker that dies holding jobs (its connection closes without acks) loses nothing:
/// after the lease (here the consumer's `ack_wait`, so no Nak was even sent) another
/// worker gets every job with attempt 2. A worker that only stalls past its lease has its
/// late ack refused and the job stays with the new owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_worker_jobs_are_redelivered() {
    let Some(url) = nats_url("dead_worker_jobs_are_redelivered") else {
        return;
    };
    let lease = Duration::from_secs(2);
    let config = |url: String| {
        let mut c = test_config(url);
        c.ack_wait = lease;
        c
    };
    let admin = test_queue(url.clone(), |c| c.ack_wait = lease).await;
    let q = unique("fault-dead");
    admin.track(&q);
    let jobs: Vec<NewJob> = (0..10)
        .map(|i| NewJob::new(format!("d{i}").into_bytes()).idempotency_key(format!("d{i}")))
        .collect();
    let ids: HashSet<JobId> = retrying("enqueue", || admin.enqueue_batch(&q, jobs.clone()))
        .await
        .into_iter()
        .map(|e| e.id)
        .collect();

    let doomed = NatsQueue::connect_with(config(url.clone())).await.unwrap();
    // Before the dequeue: the server's ack_wait starts when it delivers, after this, so a
    // redelivery can never come sooner than `lease` after it (after the dequeue returned,
    // a slow client would make an on-time redelivery look early).
    let started = Instant::now();
    let held = doomed
        .dequeue(&q, 10, lease, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(held.len(), 10);
    let stalled_lease = held[0].lease.clone();
    drop(held);
    // The "crash": the only handle goes away and the connection with it. (Keep a clone to
    // play the stalled worker, which does not touch the jobs until too late.)
    let stalled = doomed.clone();
    drop(doomed);

    let survivor = NatsQueue::connect_with(config(url)).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 10 && started.elapsed() < Duration::from_secs(10) {
        match survivor
            .dequeue(&q, 10, Duration::from_secs(20), Duration::from_secs(1))
            .await
        {
            Ok(d) => got.extend(d),
            Err(e) => assert!(e.is_retryable(), "dequeue: {e}"),
        }
    }
    let elapsed = started.elapsed();
    assert_eq!(got.len(), 10, "every job of the dead worker came back");
    assert!(
        elapsed + Duration::from_millis(25) >= lease,
        "redelivered after {elapsed:?}, before the lease ended"
    );
    assert!(
        got.iter().all(|d| d.attempt == 2),
        "attempt 2 after the lease expired"
    );
    assert!(
        got.iter()
            .all(|d| d.last_error.as_deref() == Some("lease expired"))
    );
    assert_eq!(
        got.iter()
            .map(|d| d.job_id().clone())
            .collect::<HashSet<_>>(),
        ids
    );

    let late = stalled.ack(&stalled_lease).await;
    assert!(
        matches!(late, Err(QueueError::LeaseLost { .. })),
        "a stalled worker's late ack: {late:?}"
    );
    assert_eq!(
        admin.stats(&q).await.unwrap().leased,
        10,
        "the late ack did not take the job from its new owner"
    );
    for d in &got {
        retrying("ack", || survivor.ack(&d.lease)).await;
    }
    assert_eq!(admin.stats(&q).await.unwrap(), QueueStats::default());
}

/// The lease paths the conformance suite (leases shorter than the 30 s `ack_wait`) does not
/// take: a lease equal to `ack_wait` (no Nak; heartbeats are `AckKind::Progress`) and a lease
/// longer than `ack_wait` (a confirmed delayed Nak). Another worker must not get the job
/// while the lease holds, and must get it once it ran out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_equal_to_and_longer_than_ack_wait() {
    let Some(url) = nats_url("leases_equal_to_and_longer_than_ack_wait") else {
        return;
    };
    let ack_wait = Duration::from_secs(1);
    let owner = test_queue(url.clone(), |c| c.ack_wait = ack_wait).await;
    let mut config = test_config(url);
    config.ack_wait = ack_wait;
    let other = NatsQueue::connect_with(config).await.unwrap();
    let q = unique("lease-paths");
    let beats = NewJob::new(b"beats".to_vec()).idempotency_key("beats");
    retrying("enqueue", || owner.enqueue(&q, beats.clone())).await;

    // Lease = ack_wait, kept for 2.5 s by Progress heartbeats.
    let d = owner
        .dequeue(&q, 1, ack_wait, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(d.len(), 1);
    let mut lease = d[0].lease.clone();
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(2500) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        lease = owner.extend_lease(&lease, ack_wait).await.unwrap();
        let stolen = other
            .dequeue(&q, 1, ack_wait, Duration::ZERO)
            .await
            .unwrap();
        assert!(
            stolen.is_empty(),
            "redelivered while heartbeats kept the lease"
        );
    }
    owner.ack(&lease).await.unwrap();

    // Lease = 2.5 × ack_wait, no heartbeat: held past ack_wait, redelivered after the lease.
    let long = NewJob::new(b"long".to_vec()).idempotency_key("long");
    retrying("enqueue", || owner.enqueue(&q, long.clone())).await;
    let start = Instant::now();
    let d = owner
        .dequeue(&q, 1, Duration::from_millis(2500), Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(d.len(), 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        other
            .dequeue(&q, 1, ack_wait, Duration::ZERO)
            .await
            .unwrap()
            .is_empty(),
        "redelivered after ack_wait, inside a longer lease"
    );
    let mut again = Vec::new();
    while again.is_empty() && start.elapsed() < Duration::from_secs(6) {
        again = other
            .dequeue(&q, 1, ack_wait, Duration::from_millis(500))
            .await
            .unwrap();
    }
    let elapsed = start.elapsed();
    assert_eq!(again.len(), 1, "redelivered once the long lease ran out");
    assert!(
        elapsed >= Duration::from_millis(2500),
        "redelivered after {elapsed:?}"
    );
    assert_eq!(again[0].attempt, 2);
    let late = owner.ack(&d[0].lease).await;
    assert!(
        matches!(late, Err(QueueError::LeaseLost { .. })),
        "{late:?}"
    );
    other.ack(&again[0].lease).await.unwrap();
    assert_eq!(owner.stats(&q).await.unwrap(), QueueStats::default());
}

/// Messages whose headers do not decode (an id that cannot be one, a non-numeric attempt
/// limit, headers that are not JSON) are dead-lettered with the reason instead of blocking
/// the queue or being dropped; a job a worker cannot use is dead-lettered with the worker's
/// reason. A plain message any NATS client publishes on a level subject is a job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_payloads_are_dead_lettered() {
    let Some(url) = nats_url("poison_payloads_are_dead_lettered") else {
        return;
    };
    let queue = test_queue(url, |_| {}).await;
    let q = unique("fault-poison");
    let fine = NewJob::new(b"fine".to_vec()).idempotency_key("fine");
    retrying("enqueue", || queue.enqueue(&q, fine.clone())).await;
    // Foreign publishers write straight to the level subject.
    let js = async_nats::jetstream::new(queue.inner.client().clone());
    let subject = format!("agqtest.{q}.p.0");
    let plain = js
        .publish(subject.clone(), "plain publish".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let mut bad_id = async_nats::HeaderMap::new();
    bad_id.insert("Agq-Id", "not.a.valid.id");
    let mut bad_max = async_nats::HeaderMap::new();
    bad_max.insert("Agq-Max", "many");
    let mut bad_hdr = async_nats::HeaderMap::new();
    bad_hdr.insert("Agq-Hdr", "{not json");
    for (h, body) in [
        (bad_id, "bad id"),
        (bad_max, "bad max"),
        (bad_hdr, "bad headers"),
    ] {
        js.publish_with_headers(subject.clone(), h, body.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let not_json = NewJob::new(b"{not json".to_vec()).idempotency_key("not-json");
    retrying("enqueue", || queue.enqueue(&q, not_json.clone())).await;

    let mut got = Vec::new();
    let until = Instant::now() + Duration::from_secs(3);
    while got.len() < 3 && Instant::now() < until {
        got.extend(
            queue
                .dequeue(&q, 10, Duration::from_secs(10), Duration::from_millis(300))
                .await
                .unwrap(),
        );
    }
    let payloads: Vec<&[u8]> = got.iter().map(|d| d.payload.as_ref()).collect();
    assert_eq!(
        payloads,
        [&b"fine"[..], b"plain publish", b"{not json"],
        "only the decodable jobs are delivered, in order"
    );
    assert_eq!(got[1].job_id().as_str(), format!("s{}", plain.sequence));
    queue.ack(&got[0].lease).await.unwrap();
    queue.ack(&got[1].lease).await.unwrap();
    let outcome = queue
        .nack(&got[2].lease, Retry::DeadLetter, "payload is not JSON")
        .await
        .unwrap();
    assert_eq!(outcome, NackOutcome::DeadLettered);

    let dead = queue.dead_letters(&q, 10).await.unwrap();
    let by_payload: HashMap<&[u8], &DeadLetter> =
        dead.iter().map(|d| (d.payload.as_ref(), d)).collect();
    assert_eq!(dead.len(), 4, "{dead:?}");
    for raw in [&b"bad id"[..], b"bad max", b"bad headers"] {
        let dl = by_payload[raw];
        assert!(dl.reason.contains("undecodable"), "reason {:?}", dl.reason);
        assert_eq!(dl.attempts, 1);
    }
    assert!(
        by_payload[&b"{not json"[..]]
            .reason
            .contains("payload is not JSON")
    );
    assert_eq!(
        queue.stats(&q).await.unwrap(),
        QueueStats {
            dead: 4,
            ..QueueStats::default()
        }
    );
}

/// A private `nats-server -js` on a free port with its own store directory, killed (and the
/// directory removed) on drop. The shared server is never touched.
struct PrivateNats {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl PrivateNats {
    fn start() -> PrivateNats {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("agentic-nats-{port}-{:x}", rand_u64()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut me = PrivateNats {
            child: None,
            port,
            dir,
        };
        me.spawn();
        me
    }

    fn spawn(&mut self) {
        let bin = if std::path::Path::new("/usr/sbin/nats-server").exists() {
            "/usr/sbin/nats-server"
        } else {
            "nats-server"
        };
        let child = Command::new(bin)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "AGENTIC_NATS_URL is set, so nats-server must be installed for the restart test",
            );
        self.child = Some(child);
        for _ in 0..400 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("private nats-server on port {} did not come up", self.port);
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: no shutdown, no goodbye to clients.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The first use of a queue creates its streams and consumers; when those requests time
/// out (here: the server is down for 3 s, longer than one request's 2 s) they are retried within
/// 3 × `request_timeout`, so the caller's first enqueue and dequeue succeed instead of
/// failing on the first timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_use_of_a_queue_outlasts_a_server_restart() {
    if nats_url("first_use_of_a_queue_outlasts_a_server_restart").is_none() {
        return;
    }
    let mut server = PrivateNats::start();
    let mut config = NatsQueueConfig::new(server.url()).prefix("agqtest");
    config.request_timeout = Duration::from_secs(2);
    // Reconnect attempts every 100 ms (the default backs off to seconds), so the test
    // measures the queue's retry, not the client's reconnect backoff.
    let client = async_nats::ConnectOptions::new()
        .request_timeout(Some(config.request_timeout))
        .reconnect_delay_callback(|_| Duration::from_millis(100))
        .connect(server.url())
        .await
        .unwrap();
    let queue = NatsQueue::with_client(client, config).unwrap();
    let q = unique("setup-retry");
    server.kill();
    let started = Instant::now();
    let enqueue = {
        let (queue, q) = (queue.clone(), q.clone());
        tokio::spawn(async move {
            queue
                .enqueue(&q, NewJob::new(b"first".to_vec()).idempotency_key("first"))
                .await
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    server.spawn();
    let enqueued = enqueue.await.unwrap();
    assert!(
        enqueued.is_ok(),
        "first enqueue after {:?}: {enqueued:?}",
        started.elapsed()
    );
    let got = retrying("dequeue", || {
        queue.dequeue(&q, 1, Duration::from_secs(10), Duration::from_secs(2))
    })
    .await;
    assert_eq!(got.len(), 1);
    retrying("ack", || queue.ack(&got[0].lease)).await;
    queue.delete_queue(&q).await.unwrap();
}

/// 10,000 jobs, two workers, and the server killed (SIGKILL) and restarted on the same port
/// and store in the middle of the run: every job is completed at least once, none is lost
/// or dead-lettered, and the queue drains to empty. Jobs in flight at the kill come back
/// after their lease; acks the killed server had confirmed but not yet written come back as
/// already-acked messages, which the workers' sweeps purge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_loses_no_job() {
    const JOBS: usize = 10_000;
    if nats_url("server_restart_loses_no_job").is_none() {
        return;
    }
    let mut server = PrivateNats::start();
    let lease = Duration::from_secs(3);
    let config = |url: String| {
        let mut c = NatsQueueConfig::new(url).prefix("agqtest");
        c.ack_wait = lease;
        c.request_timeout = Duration::from_secs(2);
        c
    };
    let admin = NatsQueue::connect_with(config(server.url())).await.unwrap();
    let q = unique("fault-restart");
    let mut all = HashSet::new();
    for chunk in 0..JOBS / 500 {
        // Keyed: a publish retried after its ack was lost is a duplicate, not a second job
        // (which would never let `completed` reach exactly `JOBS` ids).
        let batch: Vec<NewJob> = (0..500)
            .map(|i| {
                let n = format!("r{}", chunk * 500 + i);
                NewJob::new(n.clone().into_bytes()).idempotency_key(n)
            })
            .collect();
        for e in retrying("enqueue", || admin.enqueue_batch(&q, batch.clone())).await {
            all.insert(e.id);
        }
    }
    assert_eq!(all.len(), JOBS);

    // Completed: processed by a worker and acked. An ack whose confirmation was lost with
    // the server is retried while the lease lasts; if the lease ends first, the job was
    // still processed and its ack sent, and the server either applied it or redelivers.
    let completed: Arc<Mutex<HashMap<JobId, usize>>> = Arc::default();
    let unconfirmed = Arc::new(AtomicUsize::new(0));
    let deliveries = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut workers = Vec::new();
    for _ in 0..2 {
        let queue = NatsQueue::connect_with(config(server.url())).await.unwrap();
        let (q, completed, unconfirmed, deliveries, stop) = (
            q.clone(),
            completed.clone(),
            unconfirmed.clone(),
            deliveries.clone(),
            stop.clone(),
        );
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                let got = match queue
                    .dequeue(&q, 50, lease, Duration::from_millis(500))
                    .await
                {
                    Ok(got) => got,
                    // The server is away: try again until it is back.
                    Err(e) => {
                        assert!(
                            e.is_retryable(),
                            "a non-retryable error during the restart: {e}"
                        );
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                deliveries.fetch_add(got.len(), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await; // the "work"
                let mut pending: Vec<&Delivery> = got.iter().collect();
                while !pending.is_empty() {
                    let leases: Vec<Lease> = pending.iter().map(|d| d.lease.clone()).collect();
                    let results = queue.ack_many(&leases).await;
                    let mut retry = Vec::new();
                    for (d, r) in pending.into_iter().zip(results) {
                        match r {
                            Ok(()) => {
                                *completed
                                    .lock()
                                    .unwrap()
                                    .entry(d.job_id().clone())
                                    .or_default() += 1;
                            }
                            Err(e) if e.is_retryable() => retry.push(d),
                            // The lease ran out while the server was away: the ack was sent
                            // (maybe applied); otherwise the job is redelivered.
                            Err(QueueError::LeaseLost { .. }) => {
                                unconfirmed.fetch_add(1, Ordering::SeqCst);
                                *completed
                                    .lock()
                                    .unwrap()
                                    .entry(d.job_id().clone())
                                    .or_default() += 1;
                            }
                            Err(e) => panic!("ack failed: {e}"),
                        }
                    }
                    pending = retry;
                    if !pending.is_empty() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }));
    }
    while completed.lock().unwrap().len() < 2000 {
        assert!(Instant::now() < deadline, "workers made no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let at_kill = completed.lock().unwrap().len();
    server.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.spawn();

    // Done when every job was completed and the stream is empty (stats and raw message
    // count): whatever the killed server forgot must have been run again or purged.
    let js = async_nats::jetstream::new(admin.client().clone());
    let stream_name = format!("agqtest_{q}");
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let done = completed.lock().unwrap().len();
        let stats = admin.stats(&q).await;
        let held = match js.get_stream(&stream_name).await {
            Ok(s) => Some(s.cached_info().state.messages),
            Err(_) => None,
        };
        if done == JOBS && matches!(stats, Ok(s) if s == QueueStats::default()) && held == Some(0) {
            break;
        }
        if Instant::now() >= deadline {
            let c: Result<serde_json::Value, _> = js
                .request(
                    format!("CONSUMER.INFO.{stream_name}.level-0"),
                    &serde_json::json!({}),
                )
                .await;
            panic!(
                "the queue did not drain after the restart: {done} of {JOBS} completed, stats {stats:?}, {held:?} messages in the stream, consumer {c:?}"
            );
        }
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    let completed = completed.lock().unwrap().clone();
    println!(
        "restart: killed after {at_kill} of {JOBS} completed; {} deliveries in all, {} jobs completed more than once, {} acks unconfirmed when their lease ended",
        deliveries.load(Ordering::SeqCst),
        completed.values().filter(|&&n| n > 1).count(),
        unconfirmed.load(Ordering::SeqCst),
    );
    assert!(at_kill < JOBS, "the kill happened mid-run");
    let done: HashSet<JobId> = completed.keys().cloned().collect();
    assert_eq!(all.difference(&done).count(), 0, "jobs never completed");
    assert!(
        admin.dead_letters(&q, 10).await.unwrap().is_empty(),
        "nothing dead-lettered"
    );
    admin.delete_queue(&q).await.unwrap();
}
