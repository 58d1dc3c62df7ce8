//! `AmqpQueue` against the real RabbitMQ at `AGENTIC_AMQP_URL`: the conformance suite
//! unchanged, then the faults.
//!
//! Without `AGENTIC_AMQP_URL` every test prints a skip and passes; with it, a broker that
//! cannot be reached fails loudly. Every test uses queue names with a random suffix and
//! deletes what it created on the broker when it ends (pass or fail).
#![cfg(all(feature = "test-kit", feature = "amqp"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentic_queue::{
    AmqpQueue, AmqpQueueConfig, DeadLetter, Delivery, Enqueued, JobId, Lease, NackOutcome, NewJob,
    QueueCapabilities, QueueError, QueueStats, Retry, TaskQueue,
};
use async_trait::async_trait;

fn amqp_url() -> Option<String> {
    match std::env::var("AGENTIC_AMQP_URL") {
        Ok(url) => Some(url),
        Err(_) => {
            println!("SKIP amqp queue: AGENTIC_AMQP_URL is not set");
            None
        }
    }
}

fn test_config(url: String) -> AmqpQueueConfig {
    let mut config = AmqpQueueConfig::new(url)
        .queue_prefix("agentic-test.")
        .connection_name("agentic-queue-test");
    // Backstops in case a test process is killed before it deletes its queues.
    config.queue_expires = Some(Duration::from_secs(600));
    config.dedupe_window = Duration::from_secs(60);
    config
}

/// An `AmqpQueue` that remembers every queue name it was used with and deletes them on
/// the broker when dropped, so a test leaves nothing behind even when it fails.
struct Cleanup {
    queue: AmqpQueue,
    used: Mutex<HashSet<String>>,
}

impl Cleanup {
    fn new(queue: AmqpQueue) -> Self {
        Cleanup {
            queue,
            used: Mutex::new(HashSet::new()),
        }
    }

    fn track(&self, name: &str) {
        if !name.is_empty() {
            self.used.lock().unwrap().insert(name.to_owned());
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let names: Vec<String> = self.used.lock().unwrap().drain().collect();
        if names.is_empty() {
            return;
        }
        let queue = self.queue.clone();
        // Drop cannot await; a thread with its own runtime deletes the queues while the
        // test's runtime (which drives the connection) keeps running.
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                for name in names {
                    if let Err(e) = queue.delete_queue(&name).await {
                        eprintln!("cleanup: could not delete queue {name}: {e}");
                    }
                }
            });
        });
        let _ = done.join();
    }
}

#[async_trait]
impl TaskQueue for Cleanup {
    fn capabilities(&self) -> QueueCapabilities {
        self.queue.capabilities()
    }
    async fn enqueue_batch(
        &self,
        queue: &str,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<Enqueued>, QueueError> {
        self.track(queue);
        self.queue.enqueue_batch(queue, jobs).await
    }
    async fn dequeue(
        &self,
        queue: &str,
        max: usize,
        lease: Duration,
        wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        self.track(queue);
        self.queue.dequeue(queue, max, lease, wait).await
    }
    async fn ack(&self, lease: &Lease) -> Result<(), QueueError> {
        self.queue.ack(lease).await
    }
    async fn nack(
        &self,
        lease: &Lease,
        retry: Retry,
        reason: &str,
    ) -> Result<NackOutcome, QueueError> {
        self.queue.nack(lease, retry, reason).await
    }
    async fn extend_lease(&self, lease: &Lease, lease_for: Duration) -> Result<Lease, QueueError> {
        self.queue.extend_lease(lease, lease_for).await
    }
    async fn dead_letters(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        self.track(queue);
        self.queue.dead_letters(queue, limit).await
    }
    async fn requeue_dead(&self, queue: &str, ids: &[JobId]) -> Result<usize, QueueError> {
        self.track(queue);
        self.queue.requeue_dead(queue, ids).await
    }
    async fn stats(&self, queue: &str) -> Result<QueueStats, QueueError> {
        self.track(queue);
        self.queue.stats(queue).await
    }
}

async fn connect(config: AmqpQueueConfig) -> AmqpQueue {
    AmqpQueue::connect_with(config)
        .await
        .expect("AGENTIC_AMQP_URL is set but RabbitMQ cannot be reached")
}

async fn shared_queue() -> Option<Cleanup> {
    let url = amqp_url()?;
    Some(Cleanup::new(connect(test_config(url)).await))
}

mod conformance {
    agentic_queue::queue_conformance_suite!(make = super::shared_queue(), prefix = "amqp");
}

// ---------------------------------------------------------------------------------------
// Faults. Each test has its own connection (named, so `rabbitmqctl` can close exactly
// that one) and its own queue names.

fn unique(what: &str) -> String {
    format!("faults-{what}-{:016x}", fastrand::u64(..))
}

/// A queue on a connection of its own, named `name` so it can be closed by the broker.
async fn private_queue(url: &str, name: &str) -> Cleanup {
    let mut config = test_config(url.to_owned()).connection_name(name);
    config.reconnect_timeout = Duration::from_secs(20);
    Cleanup::new(connect(config).await)
}

/// `rabbitmqctl` with arguments; panics (loudly) when it cannot run: with
/// `AGENTIC_AMQP_URL` set, the fault tests need it (and root) to disturb the broker.
fn rabbitmqctl(args: &[&str]) -> String {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("AGENTIC_AMQP_URL is set, so rabbitmqctl must be installed for the fault tests");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Has the broker close every connection whose client-provided name is `name` (and only
/// those: other tests and users of the broker are left alone). Returns how many.
fn close_connections_named(name: &str) -> usize {
    // Tab-separated: `<rabbit@host.1.2.3>\t[{...connection_name,"..."}]`. (The JSON
    // formatter prints pids in a form `close_connection` does not accept.)
    let listed = rabbitmqctl(&["list_connections", "pid", "client_properties", "-q"]);
    let mut closed = 0;
    for line in listed.lines() {
        let Some((pid, properties)) = line.split_once('\t') else {
            continue;
        };
        if properties.contains(&format!("\"{name}\"")) {
            rabbitmqctl(&["close_connection", pid.trim(), "agentic fault test"]);
            closed += 1;
        }
    }
    closed
}

/// Waits until the broker lists a connection named `name` (after a reconnect).
async fn wait_for_connection(name: &str) {
    for _ in 0..100 {
        let listed = rabbitmqctl(&["list_connections", "client_properties", "-q"]);
        if listed.contains(name) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no connection named {name} came up");
}

fn payload_number(d: &Delivery) -> usize {
    std::str::from_utf8(&d.payload).unwrap().parse().unwrap()
}

async fn assert_empty(queue: &dyn TaskQueue, name: &str) {
    let stats = queue.stats(name).await.unwrap();
    assert_eq!(stats, QueueStats::default(), "{name}: nothing left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_dies_holding_deliveries_loses_nothing() {
    let Some(url) = amqp_url() else { return };
    let name = unique("dies");
    let survivor = private_queue(&url, &format!("agentic-test-{name}-survivor")).await;
    let jobs: Vec<NewJob> = (0..20)
        .map(|i| NewJob::new(i.to_string().into_bytes()))
        .collect();
    survivor.enqueue_batch(&name, jobs).await.unwrap();

    // A worker takes a few with a long lease (so only its death gives them back) and dies.
    let doomed = connect(test_config(url.clone()).connection_name("agentic-test-doomed")).await;
    let held = doomed
        .dequeue(&name, 5, Duration::from_secs(600), Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(held.len(), 5);
    drop(doomed);

    let mut seen = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while seen.len() < 20 && tokio::time::Instant::now() < deadline {
        for d in survivor
            .dequeue(
                &name,
                20,
                Duration::from_secs(30),
                Duration::from_millis(500),
            )
            .await
            .unwrap()
        {
            let n = payload_number(&d);
            if held.iter().any(|h| payload_number(h) == n) {
                assert_eq!(
                    d.attempt, 2,
                    "a job the dead worker held comes back as attempt 2"
                );
                assert_eq!(d.last_error.as_deref(), Some("lease expired on attempt 1"));
            }
            survivor.ack(&d.lease).await.unwrap();
            seen.insert(n);
        }
    }
    assert_eq!(
        seen.len(),
        20,
        "every job completed, including the 5 the dead worker held"
    );
    assert_empty(&survivor, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_kills_its_workers_is_dead_lettered_after_max_attempts() {
    let Some(url) = amqp_url() else { return };
    let name = unique("killer");
    let admin = private_queue(&url, &format!("agentic-test-{name}")).await;
    admin
        .enqueue(&name, NewJob::new(&b"segfault"[..]).max_attempts(2))
        .await
        .unwrap();
    for attempt in 1..=2 {
        let worker = connect(test_config(url.clone())).await;
        let got = worker
            .dequeue(&name, 1, Duration::from_secs(600), Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].attempt, attempt);
        drop(worker); // dies with the delivery unacked
    }
    // The next consumer sees the job over its attempts and dead-letters it, not runs it.
    let got = admin
        .dequeue(&name, 1, Duration::from_secs(30), Duration::from_secs(1))
        .await
        .unwrap();
    assert!(
        got.is_empty(),
        "a job whose attempts are spent is not delivered again"
    );
    let dead = admin.dead_letters(&name, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 2);
    assert_eq!(dead[0].reason, "lease expired after 2 attempts");
    assert_eq!(dead[0].payload.as_ref(), b"segfault");
    admin
        .requeue_dead(&name, &[dead[0].job_id.clone()])
        .await
        .unwrap();
    let again = admin
        .dequeue(&name, 1, Duration::from_secs(30), Duration::from_secs(2))
        .await
        .unwrap();
    admin.ack(&again[0].lease).await.unwrap();
    assert_empty(&admin, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_closed_by_the_broker_while_publishing_lose_no_job() {
    let Some(url) = amqp_url() else { return };
    let name = unique("publishing");
    let conn_name = format!("agentic-test-{name}");
    let queue = Arc::new(private_queue(&url, &conn_name).await);
    const N: usize = 3000;
    let producer = {
        let queue = queue.clone();
        let name = name.clone();
        tokio::spawn(async move {
            let mut confirmed = 0;
            for chunk in 0..N / 50 {
                let jobs: Vec<NewJob> = (0..50)
                    .map(|i| NewJob::new((chunk * 50 + i).to_string().into_bytes()))
                    .collect();
                // Paced, so that both closes land while the producer runs.
                tokio::time::sleep(Duration::from_millis(50)).await;
                // A worker loop retries what failed; a failure here must be retryable.
                loop {
                    match queue.enqueue_batch(&name, jobs.clone()).await {
                        Ok(done) => {
                            confirmed += done.len();
                            break;
                        }
                        Err(e) => assert!(e.is_retryable(), "{e}"),
                    }
                }
            }
            confirmed
        })
    };
    // Close the connection twice while the producer runs.
    let mut closed = 0;
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        closed += close_connections_named(&conn_name);
        if !producer.is_finished() {
            wait_for_connection(&conn_name).await;
        }
    }
    assert_eq!(producer.await.unwrap(), N);
    assert_eq!(
        closed, 2,
        "the broker closed the publishing connection twice"
    );

    let mut seen = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.len() < N && tokio::time::Instant::now() < deadline {
        for d in queue
            .dequeue(
                &name,
                200,
                Duration::from_secs(60),
                Duration::from_millis(500),
            )
            .await
            .unwrap()
        {
            queue.ack(&d.lease).await.unwrap();
            seen.insert(payload_number(&d));
        }
    }
    assert_eq!(seen.len(), N, "every confirmed job is in the queue");
    // Publishes retried after a lost confirm may have been stored twice (at-least-once):
    // drain any such copies before checking that nothing is left.
    loop {
        let extra = queue
            .dequeue(
                &name,
                200,
                Duration::from_secs(60),
                Duration::from_millis(300),
            )
            .await
            .unwrap();
        if extra.is_empty() {
            break;
        }
        for d in extra {
            queue.ack(&d.lease).await.unwrap();
        }
    }
    assert_empty(&*queue, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_closed_by_the_broker_while_consuming_lose_no_job() {
    let Some(url) = amqp_url() else { return };
    let name = unique("consuming");
    let conn_name = format!("agentic-test-{name}");
    let queue = Arc::new(private_queue(&url, &conn_name).await);
    const N: usize = 2000;
    for chunk in 0..N / 500 {
        let jobs: Vec<NewJob> = (0..500)
            .map(|i| {
                // Generous attempts: each close returns the prefetched deliveries too,
                // and the broker counts every return.
                NewJob::new((chunk * 500 + i).to_string().into_bytes()).max_attempts(10)
            })
            .collect();
        queue.enqueue_batch(&name, jobs).await.unwrap();
    }
    let consumer = {
        let queue = queue.clone();
        let name = name.clone();
        tokio::spawn(async move {
            let mut done = HashSet::new();
            let mut lost_acks = 0;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while done.len() < N && tokio::time::Instant::now() < deadline {
                let batch = match queue
                    .dequeue(
                        &name,
                        50,
                        Duration::from_secs(60),
                        Duration::from_millis(300),
                    )
                    .await
                {
                    Ok(batch) => batch,
                    Err(e) => {
                        assert!(e.is_retryable(), "{e}");
                        continue;
                    }
                };
                for d in batch {
                    // Slow enough that the closes land mid-run.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    match queue.ack(&d.lease).await {
                        Ok(()) => {
                            done.insert(payload_number(&d));
                        }
                        // The connection went away with the delivery: it comes back.
                        Err(QueueError::LeaseLost { .. }) => lost_acks += 1,
                        Err(e) => panic!("ack failed: {e}"),
                    }
                }
            }
            (done, lost_acks)
        })
    };
    let mut closed = 0;
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        closed += close_connections_named(&conn_name);
        if !consumer.is_finished() {
            wait_for_connection(&conn_name).await;
        }
    }
    let (done, lost_acks) = consumer.await.unwrap();
    println!("closed {closed} connection(s); {lost_acks} ack(s) refused and redelivered");
    assert_eq!(
        closed, 2,
        "the broker closed the consuming connection twice"
    );
    assert_eq!(done.len(), N, "every job completed at least once");
    assert_empty(&*queue, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_payloads_are_dead_lettered_with_a_reason() {
    let Some(url) = amqp_url() else { return };
    let name = unique("poison");
    let queue = private_queue(&url, &format!("agentic-test-{name}")).await;

    // A worker that cannot decode a payload dead-letters it with the reason.
    queue
        .enqueue(
            &name,
            NewJob::new(&b"\xff\xfe not JSON"[..]).header("k", "v"),
        )
        .await
        .unwrap();
    let got = queue
        .dequeue(&name, 1, Duration::from_secs(30), Duration::from_secs(2))
        .await
        .unwrap();
    let outcome = queue
        .nack(
            &got[0].lease,
            Retry::DeadLetter,
            "undecodable payload: expected JSON",
        )
        .await
        .unwrap();
    assert_eq!(outcome, NackOutcome::DeadLettered);

    // A message no worker could read at all (its job headers are corrupt, published by
    // something else) is dead-lettered by the queue itself, never dropped.
    let raw = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = raw.create_channel().await.unwrap();
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut headers = lapin::types::FieldTable::default();
    headers.insert(
        "x-agentic-headers".into(),
        lapin::types::AMQPValue::LongString("{broken".into()),
    );
    let confirm = channel
        .basic_publish(
            "".into(),
            format!("agentic-test.{name}").as_str().into(),
            lapin::options::BasicPublishOptions::default(),
            b"corrupt",
            lapin::BasicProperties::default()
                .with_message_id("corrupt-1".into())
                .with_headers(headers),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());
    let _ = raw.close(200, "done".into()).await;
    let got = queue
        .dequeue(&name, 1, Duration::from_secs(30), Duration::from_secs(1))
        .await
        .unwrap();
    assert!(
        got.is_empty(),
        "a corrupt message is not handed to a worker"
    );

    let dead = queue.dead_letters(&name, 10).await.unwrap();
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].reason, "undecodable payload: expected JSON");
    assert_eq!(dead[0].payload.as_ref(), b"\xff\xfe not JSON");
    assert_eq!(dead[0].headers.get("k").map(String::as_str), Some("v"));
    assert_eq!(dead[1].job_id, JobId::from("corrupt-1"));
    assert!(
        dead[1].reason.starts_with("undecodable job:"),
        "{}",
        dead[1].reason
    );
    assert_eq!(dead[1].payload.as_ref(), b"corrupt");

    // Clean up: requeue the first and finish it; the corrupt one stays dead (it would be
    // dead-lettered again), so the queue is deleted with it by the cleanup.
    queue
        .requeue_dead(&name, &[dead[0].job_id.clone()])
        .await
        .unwrap();
    let again = queue
        .dequeue(&name, 1, Duration::from_secs(30), Duration::from_secs(2))
        .await
        .unwrap();
    queue.ack(&again[0].lease).await.unwrap();
    let stats = queue.stats(&name).await.unwrap();
    assert_eq!((stats.ready, stats.leased, stats.dead), (0, 0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_is_an_error_not_a_hang() {
    if amqp_url().is_none() {
        return;
    }
    let mut config = AmqpQueueConfig::new("amqp://guest:guest@127.0.0.1:1/%2f");
    config.connect_timeout = Duration::from_secs(2);
    let started = std::time::Instant::now();
    let err = AmqpQueue::connect_with(config).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "{err}");
    assert!(
        err.is_retryable(),
        "a refused connection may work later: {err}"
    );
}
