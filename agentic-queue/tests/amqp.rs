//! `AmqpQueue` against the real RabbitMQ at `AGENTIC_AMQP_URL`: the conformance suite
//! unchanged, then the faults.
//!
//! Without `AGENTIC_AMQP_URL` every test prints a skip and passes; with it, a broker that
//! cannot be reached fails loudly. Every test uses queue names with a random suffix and
//! deletes what it created on the broker when it ends (pass or fail).
#![cfg(all(feature = "test-kit", feature = "amqp"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use agentic_queue::testkit::Tracked;
use agentic_queue::{
    AmqpQueue, AmqpQueueConfig, DeadLetter, Delivery, JobId, NackOutcome, NewJob, QueueError,
    QueueStats, Retry, TaskQueue,
};

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
    config
}

/// An `AmqpQueue` that remembers every queue name it was used with and deletes them on
/// the broker when dropped, so a test leaves nothing behind even when it fails.
type Cleanup = Tracked<AmqpQueue>;

fn cleanup(queue: AmqpQueue) -> Cleanup {
    cleanup_holding(queue, ())
}

/// The same, holding `guard` until the queues are deleted.
fn cleanup_holding<G: Send + Sync + 'static>(queue: AmqpQueue, guard: G) -> Cleanup {
    Tracked::new(queue, move |queue, names| {
        let queue = queue.clone();
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
        drop(guard);
    })
}

async fn connect(config: AmqpQueueConfig) -> AmqpQueue {
    AmqpQueue::connect_with(config)
        .await
        .expect("AGENTIC_AMQP_URL is set but RabbitMQ cannot be reached")
}

async fn shared_queue() -> Option<Cleanup> {
    let url = amqp_url()?;
    shared_queue_with(test_config(url)).await
}

/// The same with dedupe by idempotency key on (it is off by default).
async fn shared_queue_with_dedupe() -> Option<Cleanup> {
    let url = amqp_url()?;
    shared_queue_with(test_config(url).dedupe(Duration::from_secs(60))).await
}

async fn shared_queue_with(config: AmqpQueueConfig) -> Option<Cleanup> {
    let guard = broker_settings_unchanged().await;
    Some(cleanup_holding(connect(config).await, guard))
}

/// Held (shared) by every test while it runs; the consumer-timeout test takes it
/// exclusively, because it shortens the broker's `consumer_timeout` for the channels
/// opened while it is set, and no other test may open one then.
static BROKER_SETTINGS: std::sync::LazyLock<Arc<tokio::sync::RwLock<()>>> =
    std::sync::LazyLock::new(|| Arc::new(tokio::sync::RwLock::new(())));

async fn broker_settings_unchanged() -> tokio::sync::OwnedRwLockReadGuard<()> {
    BROKER_SETTINGS.clone().read_owned().await
}

/// The default configuration: idempotency keys do not dedupe (`idempotent_enqueue`
/// prints its skip).
mod conformance {
    agentic_queue::queue_conformance_suite!(make = super::shared_queue(), prefix = "amqp");
}

/// With `AmqpQueueConfig::dedupe` on: the whole suite again, `idempotent_enqueue` runs.
mod conformance_dedupe {
    agentic_queue::queue_conformance_suite!(
        make = super::shared_queue_with_dedupe(),
        prefix = "amqp-dedupe"
    );
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
    cleanup(connect(config).await)
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

/// Waits (up to 10 s) until the broker lists a connection named `name` again (the queue
/// reconnects on its next operation), or until `done` says no operation will come.
async fn wait_for_connection(name: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline && !done() {
        let listed = rabbitmqctl(&["list_connections", "client_properties", "-q"]);
        if listed.contains(name) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Dequeues from `name` (each must come back empty: `why`) until it holds `want` dead
/// letters or 10 s pass, for a broker that moves the job on its own schedule; returns the
/// dead letters.
async fn dead_letters_while_nothing_is_delivered(
    queue: &dyn TaskQueue,
    name: &str,
    want: usize,
    why: &str,
) -> Vec<DeadLetter> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = queue
            .dequeue(name, 1, Duration::from_secs(30), Duration::from_secs(1))
            .await
            .unwrap();
        assert!(got.is_empty(), "{why}");
        let dead = queue.dead_letters(name, 10).await.unwrap();
        if dead.len() >= want || tokio::time::Instant::now() >= deadline {
            return dead;
        }
    }
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
    let _settings = broker_settings_unchanged().await;
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
    let _settings = broker_settings_unchanged().await;
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
    // The dead worker's connection closes in the background, so the broker may hand the
    // job back only after a while.
    let dead = dead_letters_while_nothing_is_delivered(
        &admin,
        &name,
        1,
        "a job whose attempts are spent is not delivered again",
    )
    .await;
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
    let _settings = broker_settings_unchanged().await;
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
                // Paced (6 s in all), so that both closes land while the producer runs.
                tokio::time::sleep(Duration::from_millis(100)).await;
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
    while closed < 2 && !producer.is_finished() {
        tokio::time::sleep(Duration::from_millis(300)).await;
        closed += close_connections_named(&conn_name);
        wait_for_connection(&conn_name, || producer.is_finished()).await;
    }
    assert_eq!(producer.await.unwrap(), N);
    println!("closed the publishing connection {closed} time(s)");
    assert!(closed >= 1, "the broker closed the publishing connection");

    // The last close may still be under way when the producer is done: a delivery that
    // came on the closing connection cannot be acked (`LeaseLost`) and comes back.
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
            match queue.ack(&d.lease).await {
                Ok(()) => {
                    seen.insert(payload_number(&d));
                }
                Err(QueueError::LeaseLost { .. }) => {}
                Err(e) => panic!("ack failed: {e}"),
            }
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
    let _settings = broker_settings_unchanged().await;
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
    while closed < 2 && !consumer.is_finished() {
        tokio::time::sleep(Duration::from_millis(300)).await;
        closed += close_connections_named(&conn_name);
        wait_for_connection(&conn_name, || consumer.is_finished()).await;
    }
    let (done, lost_acks) = consumer.await.unwrap();
    println!(
        "closed the consuming connection {closed} time(s); {lost_acks} ack(s) refused and redelivered"
    );
    assert!(closed >= 1, "the broker closed the consuming connection");
    assert_eq!(done.len(), N, "every job completed at least once");
    assert_empty(&*queue, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_payloads_are_dead_lettered_with_a_reason() {
    let Some(url) = amqp_url() else { return };
    let _settings = broker_settings_unchanged().await;
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
    let dead = dead_letters_while_nothing_is_delivered(
        &queue,
        &name,
        2,
        "a corrupt message is not handed to a worker",
    )
    .await;
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

/// The lease the consumer-timeout tests keep extending (every 500 ms or so). Each
/// heartbeat of a lease past the broker's timeout publishes a copy (the first one also
/// declares a quorum queue); on a loaded 2-core machine one took over 1.5 s, so a 2 s
/// lease ran out between two heartbeats. Five leave room for that.
const HEARTBEAT_LEASE: Duration = Duration::from_secs(5);

/// Sets one of the broker's `rabbit` application settings at run time and restores it
/// on drop, even when the test fails.
///
/// RabbitMQ 3.10 reads `consumer_timeout` when a channel starts and has no per-queue or
/// per-consumer setting (3.12 has), so shortening it for the channels opened meanwhile is
/// the only way to test against a short timeout without restarting the broker. The
/// channel tick that checks the timeout (every 60 s by default) is read at every tick,
/// so it stays short for the whole test; that only makes every channel check more often.
struct BrokerSetting {
    restore: String,
}

impl BrokerSetting {
    fn set(key: &str, value: u64) -> Self {
        let out = rabbitmqctl(&["eval", &format!("application:get_env(rabbit, {key}).")]);
        let restore = match out
            .trim()
            .strip_prefix("{ok,")
            .and_then(|v| v.strip_suffix('}'))
        {
            Some(v) => format!("application:set_env(rabbit, {key}, {v})."),
            None => format!("application:unset_env(rabbit, {key})."),
        };
        rabbitmqctl(&[
            "eval",
            &format!("application:set_env(rabbit, {key}, {value})."),
        ]);
        BrokerSetting { restore }
    }
}

impl Drop for BrokerSetting {
    fn drop(&mut self) {
        rabbitmqctl(&["eval", &self.restore]);
    }
}

/// A plain lapin consumer on `channel` that receives one message and never acks it: the
/// broker should close the channel after its consumer timeout, which shows the short
/// timeout a test set is really enforced. Returns the consumer (keep it alive).
async fn hold_one_delivery(channel: &lapin::Channel) -> lapin::Consumer {
    let queue = channel
        .queue_declare(
            "".into(),
            lapin::options::QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    channel
        .basic_publish(
            "".into(),
            queue.name().clone(),
            Default::default(),
            b"held too long",
            Default::default(),
        )
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            Default::default(),
            Default::default(),
        )
        .await
        .unwrap();
    let _unacked = futures::StreamExt::next(&mut consumer).await;
    consumer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_longer_than_the_consumer_timeout_keeps_its_lease_with_heartbeats() {
    let Some(url) = amqp_url() else { return };
    let _exclusive = BROKER_SETTINGS.clone().write_owned().await;
    let name = unique("long-task");
    // Short, but with room for a park (a quorum queue declare) on a loaded machine.
    const TIMEOUT: Duration = Duration::from_secs(5);

    let mut config = test_config(url.clone()).connection_name(format!("agentic-test-{name}"));
    config.consumer_timeout = TIMEOUT;
    let worker = cleanup(connect(config).await);
    let other = cleanup(connect(test_config(url.clone())).await);
    worker
        .enqueue_batch(
            &name,
            vec![
                NewJob::new(&b"a long agent task"[..]),
                NewJob::new(&b"a task whose worker dies"[..]),
            ],
        )
        .await
        .unwrap();

    // A plain lapin consumer, to show the short timeout is really enforced.
    let control = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let _tick = BrokerSetting::set("channel_tick_interval", 100);
    let control_channel;
    let got = {
        let _short = BrokerSetting::set("consumer_timeout", TIMEOUT.as_millis() as u64);
        // Both channels start while the short timeout is set.
        control_channel = control.create_channel().await.unwrap();
        // Longer than the broker's timeout from the start: the reaper parks the deliveries
        // before the broker's deadline, heartbeats or not. A fresh consumer's backlog may
        // arrive after the first call returns, so ask again for the rest, as a worker does.
        let mut got = Vec::new();
        for _ in 0..5 {
            if got.len() == 2 {
                break;
            }
            got.extend(
                worker
                    .dequeue(
                        &name,
                        2 - got.len(),
                        Duration::from_secs(10),
                        Duration::from_secs(2),
                    )
                    .await
                    .unwrap(),
            );
        }
        got
    };
    assert_eq!(got.len(), 2);
    let _control_consumer = hold_one_delivery(&control_channel).await;

    // The task runs for three times the broker's timeout, heartbeating every 500 ms with
    // a 5 s lease; another worker watches the queue all along.
    let started = tokio::time::Instant::now();
    let mut lease = got[0].lease.clone();
    let mut dying = got[1].lease.clone();
    while started.elapsed() < TIMEOUT * 3 {
        let stolen = other
            .dequeue(
                &name,
                1,
                Duration::from_secs(30),
                Duration::from_millis(500),
            )
            .await
            .unwrap();
        assert!(
            stolen.is_empty(),
            "the job was delivered again after {:?} while its lease was kept alive: {:?}",
            started.elapsed(),
            stolen
                .iter()
                .map(|d| (d.payload.clone(), d.attempt, d.last_error.clone()))
                .collect::<Vec<_>>()
        );
        lease = worker.extend_lease(&lease, HEARTBEAT_LEASE).await.unwrap();
        dying = worker.extend_lease(&dying, HEARTBEAT_LEASE).await.unwrap();
    }
    assert!(
        !control_channel.status().connected(),
        "the broker should have closed the control channel, which held a delivery past its {TIMEOUT:?} consumer timeout"
    );
    worker.ack(&lease).await.unwrap();

    // The second task's worker stops heartbeating (as if it died): once its lease runs
    // out, the job is delivered again, as attempt 2.
    let stopped = tokio::time::Instant::now();
    let back = loop {
        assert!(
            stopped.elapsed() < Duration::from_secs(20),
            "the job of the dead worker never came back"
        );
        let mut got = other
            .dequeue(
                &name,
                1,
                Duration::from_secs(30),
                Duration::from_millis(250),
            )
            .await
            .unwrap();
        got.extend(
            worker
                .dequeue(
                    &name,
                    1,
                    Duration::from_secs(30),
                    Duration::from_millis(250),
                )
                .await
                .unwrap(),
        );
        if let Some(d) = got.pop() {
            assert!(got.is_empty(), "delivered once");
            break d;
        }
    };
    assert!(
        stopped.elapsed() + Duration::from_millis(100) >= dying.remaining(),
        "not before its lease ended"
    );
    assert_eq!(back.payload.as_ref(), b"a task whose worker dies");
    assert_eq!(back.attempt, 2);
    assert_eq!(
        back.last_error.as_deref(),
        Some("lease expired on attempt 1")
    );
    let refused = worker.ack(&dying).await.unwrap_err();
    assert!(matches!(refused, QueueError::LeaseLost { .. }), "{refused}");
    if worker.ack(&back.lease).await.is_err() {
        other.ack(&back.lease).await.unwrap();
    }
    assert_empty(&worker, &name).await;
    assert_empty(&other, &name).await;
    let _ = control.close(200, "done".into()).await;
}

/// A worker busy with a long task leaves a prefetched delivery waiting in the local
/// buffer for longer than the broker's consumer timeout. The backend hands it back
/// before the broker's deadline (copy, then ack), so the broker never closes the
/// channel and the job, which allows a single attempt, still runs as attempt 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buffered_delivery_outlives_the_consumer_timeout_without_losing_an_attempt() {
    let Some(url) = amqp_url() else { return };
    let _exclusive = BROKER_SETTINGS.clone().write_owned().await;
    let name = unique("buffered");
    // Short, but with room for a park (a quorum queue declare) on a loaded machine.
    const TIMEOUT: Duration = Duration::from_secs(5);

    let mut config = test_config(url.clone())
        .connection_name(format!("agentic-test-{name}"))
        .prefetch_for_concurrency(2);
    config.consumer_timeout = TIMEOUT;
    let worker = cleanup(connect(config).await);
    worker
        .enqueue_batch(
            &name,
            vec![
                NewJob::new(&b"a long agent task"[..]).max_attempts(1),
                NewJob::new(&b"a job that waits in the buffer"[..]).max_attempts(1),
            ],
        )
        .await
        .unwrap();

    let control = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let _tick = BrokerSetting::set("channel_tick_interval", 100);
    let control_channel;
    let long = {
        let _short = BrokerSetting::set("consumer_timeout", TIMEOUT.as_millis() as u64);
        // Both channels start while the short timeout is set.
        control_channel = control.create_channel().await.unwrap();
        let mut got = worker
            .dequeue(&name, 1, Duration::from_secs(2), Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        got.remove(0)
    };
    assert_eq!(long.payload.as_ref(), b"a long agent task");
    let _control_consumer = hold_one_delivery(&control_channel).await;
    // The second job was prefetched with the first (prefetch 2) and waits in the buffer.
    let stats = worker.stats(&name).await.unwrap();
    assert_eq!((stats.ready, stats.leased), (1, 1), "{stats:?}");

    // The one task this worker can run lasts three times the broker's timeout (its lease
    // is parked and kept by heartbeats); nobody takes the buffered job meanwhile.
    let started = tokio::time::Instant::now();
    let mut lease = long.lease.clone();
    while started.elapsed() < TIMEOUT * 3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        lease = worker.extend_lease(&lease, HEARTBEAT_LEASE).await.unwrap();
    }
    assert!(
        !control_channel.status().connected(),
        "the broker should have closed the control channel, which held a delivery past its {TIMEOUT:?} consumer timeout"
    );
    worker.ack(&lease).await.unwrap();

    let waited = worker
        .dequeue(&name, 1, Duration::from_secs(30), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        waited.len(),
        1,
        "the buffered job is still deliverable (not dead-lettered for a lost attempt): {:?}",
        worker.dead_letters(&name, 10).await.unwrap()
    );
    let waited = &waited[0];
    assert_eq!(waited.payload.as_ref(), b"a job that waits in the buffer");
    assert_eq!(waited.attempt, 1, "waiting in the buffer cost no attempt");
    assert_eq!(waited.last_error, None);
    worker.ack(&waited.lease).await.unwrap();
    assert!(worker.dead_letters(&name, 10).await.unwrap().is_empty());
    assert_empty(&worker, &name).await;
    let _ = control.close(200, "done".into()).await;
}

/// The prefetch of every consumer of the work queue `work`, once the broker lists what is
/// expected (a quorum queue registers a consumer after its `consume-ok`), or after 10 s.
async fn consumer_prefetches(work: &str, expected: &[u32]) -> Vec<u32> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let listed = listed_prefetches(work);
        if listed == expected || tokio::time::Instant::now() >= deadline {
            return listed;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The prefetch of every consumer of the work queue `work`, as the broker reports it.
fn listed_prefetches(work: &str) -> Vec<u32> {
    let listed = rabbitmqctl(&[
        "list_consumers",
        "-q",
        "--no-table-headers",
        "queue_name",
        "prefetch_count",
    ]);
    listed
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .filter(|(queue, _)| queue.trim() == work)
        .map(|(_, prefetch)| prefetch.trim().parse().unwrap())
        .collect()
}

/// Takes the rest of the `total` numbered jobs of `name`, at most 3 per `dequeue` (a worker
/// with 3 slots), acking each: every job comes exactly once, on its first attempt.
async fn take_the_rest_three_at_a_time(
    queue: &Cleanup,
    name: &str,
    mut seen: HashSet<usize>,
    total: usize,
) {
    while seen.len() < total {
        let got = queue
            .dequeue(name, 3, Duration::from_secs(60), Duration::from_secs(2))
            .await
            .unwrap();
        assert!(!got.is_empty() && got.len() <= 3, "{}", got.len());
        for d in &got {
            assert_eq!(d.attempt, 1, "no job was delivered twice");
            assert!(seen.insert(payload_number(d)), "no job was delivered twice");
            queue.ack(&d.lease).await.unwrap();
        }
    }
}

/// With the default configuration, a worker that says its concurrency
/// (`TaskQueue::consumer_concurrency`, as agentic-core's worker does before it consumes)
/// gets a consumer with that prefetch: the rest stays on the broker for other processes.
/// Said again after the consumer started, it changes nothing (no restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prefetch_is_the_concurrency_the_worker_says() {
    let Some(url) = amqp_url() else { return };
    let name = unique("prefetch-hint");
    let work = format!("agentic-test.{name}");
    let config = test_config(url.clone()).connection_name(format!("agentic-test-{name}"));
    assert!(config.prefetch_from_workers, "on by default");
    let queue = cleanup(connect(config).await);
    let jobs: Vec<NewJob> = (0..10)
        .map(|i| NewJob::new(i.to_string().into_bytes()))
        .collect();
    queue.enqueue_batch(&name, jobs).await.unwrap();
    queue.inner.consumer_concurrency(&name, 2);
    queue.inner.consumer_concurrency(&name, 1);

    let lease = Duration::from_secs(60);
    let first = queue
        .dequeue(&name, 3, lease, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(first.len(), 3);
    assert_eq!(consumer_prefetches(&work, &[3]).await, vec![3]);
    let stats = queue.stats(&name).await.unwrap();
    assert_eq!((stats.ready, stats.leased), (7, 3), "{stats:?}");

    // A later worker in the same process: the running consumer stays as it is.
    queue.inner.consumer_concurrency(&name, 4);
    let seen: HashSet<usize> = first.iter().map(payload_number).collect();
    for d in &first {
        queue.ack(&d.lease).await.unwrap();
    }
    take_the_rest_three_at_a_time(&queue, &name, seen, 10).await;
    assert_eq!(listed_prefetches(&work), vec![3]);
    assert_empty(&queue, &name).await;
}

/// With the derived prefetch (`prefetch: None`), the consumer's `basic.qos` is what the
/// process asks for and holds when it starts: a worker asks `dequeue` for its free
/// concurrency, so its prefetch is its concurrency, and the rest stays on the broker for
/// other processes. A configured prefetch wins. (The restart with a larger prefetch is
/// not checked here: it lost leases in some runs; see `AmqpQueueConfig::prefetch`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prefetch_follows_the_concurrency_asked_for() {
    let Some(url) = amqp_url() else { return };
    let _settings = broker_settings_unchanged().await;
    let name = unique("prefetch");
    let work = format!("agentic-test.{name}");
    let mut config = test_config(url.clone()).connection_name(format!("agentic-test-{name}"));
    config.prefetch = None;
    let queue = cleanup(connect(config).await);
    let jobs: Vec<NewJob> = (0..10)
        .map(|i| NewJob::new(i.to_string().into_bytes()))
        .collect();
    queue.enqueue_batch(&name, jobs).await.unwrap();

    // A worker with 3 free slots. The consumer's first deliveries may trickle in (a
    // dequeue waits only briefly for a fresh consumer's backlog), so the worker asks again
    // for its still free slots, as a worker does.
    let lease = Duration::from_secs(60);
    let mut first = Vec::new();
    for _ in 0..3 {
        let got = queue
            .dequeue(&name, 3 - first.len(), lease, Duration::from_secs(2))
            .await
            .unwrap();
        first.extend(got);
        if first.len() >= 3 {
            break;
        }
    }
    assert_eq!(first.len(), 3);
    assert_eq!(consumer_prefetches(&work, &[3]).await, vec![3]);
    // Nothing waits in this process beyond what its worker took: the other 7 stay on
    // the broker for other processes.
    let stats = queue.stats(&name).await.unwrap();
    assert_eq!((stats.ready, stats.leased), (7, 3), "{stats:?}");

    let seen: HashSet<usize> = first.iter().map(payload_number).collect();
    for d in &first {
        queue.ack(&d.lease).await.unwrap();
    }
    take_the_rest_three_at_a_time(&queue, &name, seen, 10).await;
    assert_empty(&queue, &name).await;

    // Configured: the prefetch stays what was set, whatever is asked for.
    let fixed_name = unique("prefetch-fixed");
    let fixed_work = format!("agentic-test.{fixed_name}");
    let fixed = cleanup(
        connect(
            test_config(url.clone())
                .connection_name(format!("agentic-test-{fixed_name}"))
                .prefetch(2),
        )
        .await,
    );
    fixed
        .enqueue_batch(
            &fixed_name,
            (0..3)
                .map(|i| NewJob::new(i.to_string().into_bytes()))
                .collect(),
        )
        .await
        .unwrap();
    let got = fixed
        .dequeue(&fixed_name, 10, lease, Duration::from_millis(500))
        .await
        .unwrap();
    assert_eq!(got.len(), 2, "at most the prefetch is unacked");
    assert_eq!(consumer_prefetches(&fixed_work, &[2]).await, vec![2]);
    for d in &got {
        fixed.ack(&d.lease).await.unwrap();
    }
    let last = fixed
        .dequeue(&fixed_name, 10, lease, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(last.len(), 1);
    fixed.ack(&last[0].lease).await.unwrap();
    assert_empty(&fixed, &fixed_name).await;
}
