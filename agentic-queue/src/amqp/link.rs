//! The connection to the broker, rebuilt after every loss: lapin does not reconnect by
//! itself (its experimental auto-recovery replays consumers, but not our leases).
//!
//! A [`Link`] is one connection with its publishing channel (confirm mode) and an admin
//! channel (declares, inspection). Each link has a generation number; everything that
//! belongs to a connection (deliveries, leases, consumers, the cache of declared queues)
//! remembers its generation and is void once the link it came from is gone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::time::{Instant, timeout};

use super::AmqpQueueConfig;
use super::topology::QueueSpec;
use crate::QueueError;

/// One connection and the channels every operation shares.
pub(super) struct Link {
    pub(super) generation: u64,
    pub(super) connection: Connection,
    publisher: Channel,
    /// Declares and passive inspections. A channel error (a declare with other arguments
    /// than the queue has) closes it; it is reopened on the next use.
    admin: tokio::sync::Mutex<Option<Channel>>,
    /// Queues declared on this connection, and when (delay queues are redeclared to keep
    /// their expiry from running out; see `topology::REDECLARE_DELAY_QUEUES`).
    declared: Mutex<HashMap<String, Instant>>,
}

impl Link {
    fn alive(&self) -> bool {
        self.connection.status().connected() && self.publisher.status().connected()
    }

    /// An open admin channel.
    pub(super) async fn admin(&self) -> Result<Channel, QueueError> {
        let mut guard = self.admin.lock().await;
        if let Some(ch) = guard.as_ref()
            && ch.status().connected()
        {
            return Ok(ch.clone());
        }
        let ch = bounded("open a channel", self.connection.create_channel()).await?;
        *guard = Some(ch.clone());
        Ok(ch)
    }

    /// Declares `spec` unless this connection already did (recently enough).
    pub(super) async fn ensure(
        &self,
        spec: &QueueSpec,
        config: &AmqpQueueConfig,
    ) -> Result<u32, QueueError> {
        let fresh = {
            let declared = lock(&self.declared);
            declared
                .get(spec.name())
                .is_some_and(|at| spec.stale_after().is_none_or(|stale| at.elapsed() < stale))
        };
        if fresh {
            return Ok(0);
        }
        self.declare(spec, config).await
    }

    /// Declares `spec` now; returns the number of ready messages the broker reports.
    pub(super) async fn declare(
        &self,
        spec: &QueueSpec,
        config: &AmqpQueueConfig,
    ) -> Result<u32, QueueError> {
        let admin = self.admin().await?;
        let started = Instant::now();
        let queue = admin
            .queue_declare(
                ShortString::from(spec.name()),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                spec.arguments(config),
            )
            .await
            .map_err(|e| map_err("declare a queue", e))?;
        lock(&self.declared).insert(spec.name().to_owned(), started);
        Ok(queue.message_count())
    }

    /// Forgets one declare, so the next use declares again (the queue vanished).
    pub(super) fn forget(&self, name: &str) {
        lock(&self.declared).remove(name);
    }
}

/// Hands out the current [`Link`], reconnecting (with backoff) when it is gone.
pub(super) struct Connector {
    config: Arc<AmqpQueueConfig>,
    current: RwLock<Option<Arc<Link>>>,
    /// Serialises reconnects, so a dropped connection is replaced once, not once per
    /// waiting caller. A tokio mutex: it is held across the connect.
    reconnecting: tokio::sync::Mutex<()>,
    generation: AtomicU64,
}

impl Connector {
    pub(super) fn new(config: Arc<AmqpQueueConfig>) -> Self {
        Connector {
            config,
            current: RwLock::new(None),
            reconnecting: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
        }
    }

    /// The generation of the link in use (0 before the first connect).
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn live(&self) -> Option<Arc<Link>> {
        let guard = self.current.read().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().filter(|l| l.alive()).cloned()
    }

    /// Connects once, failing at once (the first connect of a queue: a broker that cannot
    /// be reached should fail loudly, not be retried for half a minute).
    pub(super) async fn connect_first(&self) -> Result<Arc<Link>, QueueError> {
        let _guard = self.reconnecting.lock().await;
        let link = Arc::new(self.open().await?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(link.clone());
        Ok(link)
    }

    /// The live link, or a new one once the broker can be reached again (retrying with
    /// jittered exponential backoff for up to `reconnect_timeout`).
    pub(super) async fn get(&self) -> Result<Arc<Link>, QueueError> {
        if let Some(link) = self.live() {
            return Ok(link);
        }
        let _guard = self.reconnecting.lock().await;
        // Someone else may have reconnected while we waited for the lock.
        if let Some(link) = self.live() {
            return Ok(link);
        }
        let deadline = Instant::now() + self.config.reconnect_timeout;
        let mut pause = Duration::from_millis(50);
        loop {
            match self.open().await {
                Ok(link) => {
                    let link = Arc::new(link);
                    let old = self
                        .current
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .replace(link.clone());
                    if let Some(old) = old {
                        // Best effort: the old connection is broken or closing anyway.
                        tokio::spawn(async move {
                            let _ = old.connection.close(200, "replaced".into()).await;
                        });
                    }
                    tracing::info!(generation = link.generation, "reconnected to RabbitMQ");
                    return Ok(link);
                }
                Err(e) if Instant::now() + pause < deadline => {
                    tracing::warn!(error = %e, "RabbitMQ connection lost; reconnecting");
                    // Full jitter, so many workers do not reconnect in lockstep.
                    tokio::time::sleep(pause.mul_f64(0.5 + fastrand::f64() / 2.0)).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn open(&self) -> Result<Link, QueueError> {
        let props = ConnectionProperties::default()
            .with_connection_name(self.config.connection_name.clone().into());
        let connection = timeout(
            self.config.connect_timeout,
            Connection::connect(&self.config.url, props),
        )
        .await
        .map_err(|_| QueueError::Backend {
            message: format!(
                "connecting to RabbitMQ timed out after {:?}",
                self.config.connect_timeout
            ),
            retryable: true,
            source: None,
        })?
        .map_err(|e| map_err("connect to RabbitMQ", e))?;
        let publisher = bounded("open the publishing channel", connection.create_channel()).await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| map_err("enable publisher confirms", e))?;
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        Ok(Link {
            generation,
            connection,
            publisher,
            admin: tokio::sync::Mutex::new(None),
            declared: Mutex::new(HashMap::new()),
        })
    }

    /// Closes the current connection (on drop of the queue).
    pub(super) fn close(&self) {
        let link = self
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(link) = link
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            handle.spawn(async move {
                let _ = link.connection.close(200, "queue dropped".into()).await;
            });
        }
    }
}

/// One message to publish, with the queue it goes to (declared first if needed).
pub(super) struct Outgoing {
    pub(super) queue: QueueSpec,
    pub(super) payload: bytes::Bytes,
    pub(super) properties: BasicProperties,
}

/// What the broker said about one publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Confirmed {
    /// Stored (for quorum queues: replicated to a majority).
    Ack,
    /// Refused: for an idempotency record this is the dedupe; otherwise an error.
    Nack,
}

/// Publishes every message persistently and waits for the broker's confirms.
///
/// Messages whose confirm is lost with the connection (or that come back unroutable
/// because their queue vanished) are published again on the next link, after their
/// queues are declared again, until `retries` is spent: a message is confirmed, refused
/// (nack), or reported as an error, never silently lost. A message published again may
/// have been stored the first time too: at-least-once, like every delivery.
pub(super) async fn publish(
    connector: &Connector,
    config: &AmqpQueueConfig,
    messages: &[Outgoing],
) -> Result<Vec<Confirmed>, QueueError> {
    let mut out: Vec<Option<Confirmed>> = vec![None; messages.len()];
    let mut pending: Vec<usize> = (0..messages.len()).collect();
    let mut tries = 0u32;
    let mut pause = Duration::from_millis(50);
    loop {
        tries += 1;
        let link = connector.get().await?;
        let mut last_error: Option<QueueError> = None;
        let mut again = Vec::new();
        let mut declared_ok = true;
        for spec in distinct_specs(messages, &pending) {
            if let Err(e) = link.ensure(spec, config).await {
                declared_ok = false;
                last_error = Some(e);
                break;
            }
        }
        if declared_ok {
            let mut confirms = Vec::with_capacity(pending.len());
            let mut sent = 0;
            for &i in &pending {
                let m = &messages[i];
                let publish = link
                    .publisher
                    .basic_publish(
                        ShortString::from(""),
                        ShortString::from(m.queue.name()),
                        // Mandatory: a message for a queue that does not exist comes back
                        // instead of vanishing.
                        BasicPublishOptions {
                            mandatory: true,
                            immediate: false,
                        },
                        &m.payload,
                        m.properties.clone(),
                    )
                    .await;
                match publish {
                    Ok(confirm) => {
                        confirms.push((i, confirm));
                        sent += 1;
                    }
                    Err(e) => {
                        last_error = Some(map_err("publish", e));
                        break;
                    }
                }
            }
            again.extend(pending.iter().skip(sent).copied());
            for (i, confirm) in confirms {
                match timeout(config.confirm_timeout, confirm).await {
                    Ok(Ok(Confirmation::Ack(None) | Confirmation::NotRequested)) => {
                        out[i] = Some(Confirmed::Ack);
                    }
                    Ok(Ok(Confirmation::Ack(Some(returned)))) => {
                        // Unroutable: the queue was deleted behind our back. Declare
                        // again and retry.
                        tracing::warn!(queue = messages[i].queue.name(), reply = %returned.reply_text, "publish returned unroutable; redeclaring");
                        link.forget(messages[i].queue.name());
                        last_error = Some(QueueError::Backend {
                            message: format!(
                                "publish to {} was returned: {}",
                                messages[i].queue.name(),
                                returned.reply_text
                            ),
                            retryable: true,
                            source: None,
                        });
                        again.push(i);
                    }
                    Ok(Ok(Confirmation::Nack(_))) => out[i] = Some(Confirmed::Nack),
                    Ok(Err(e)) => {
                        last_error = Some(map_err("wait for a publisher confirm", e));
                        again.push(i);
                    }
                    Err(_) => {
                        // Not confirmed in time (a memory or disk alarm blocks
                        // publishers, or the broker is overloaded). It may still be
                        // stored: report it rather than publish a second copy.
                        return Err(QueueError::Backend {
                            message: format!(
                                "RabbitMQ did not confirm a publish within {:?} (is a memory or disk alarm blocking publishers?); the job may or may not have been enqueued",
                                config.confirm_timeout
                            ),
                            retryable: true,
                            source: None,
                        });
                    }
                }
            }
        }
        if again.is_empty() && last_error.is_none() {
            return Ok(out
                .into_iter()
                .map(|c| c.unwrap_or(Confirmed::Nack))
                .collect());
        }
        if again.is_empty() {
            // Only a declare failed, nothing was published.
            again = pending.clone();
        }
        let err = last_error.unwrap_or_else(|| QueueError::backend_msg("publish failed"));
        if !err.is_retryable() || tries >= config.retries.max(1) {
            return Err(err);
        }
        tracing::warn!(error = %err, unconfirmed = again.len(), "publishing again");
        tokio::time::sleep(pause.mul_f64(0.5 + fastrand::f64() / 2.0)).await;
        pause = (pause * 2).min(Duration::from_secs(2));
        again.sort_unstable();
        pending = again;
    }
}

fn distinct_specs<'a>(messages: &'a [Outgoing], pending: &[usize]) -> Vec<&'a QueueSpec> {
    let mut specs: Vec<&QueueSpec> = Vec::new();
    for &i in pending {
        let spec = &messages[i].queue;
        if !specs.contains(&spec) {
            specs.push(spec);
        }
    }
    specs
}

/// A poisoned std mutex only means another thread panicked while holding it; the maps
/// behind ours stay consistent (every update is one insert or remove), so carry on.
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Maps a lapin error: connection-level and transient faults are retryable; the
/// broker's refusals (not found, access refused, precondition failed) are not.
pub(super) fn map_err(what: &str, e: lapin::Error) -> QueueError {
    use lapin::ErrorKind;
    let retryable = match e.kind() {
        ErrorKind::IOError(_)
        | ErrorKind::InvalidChannel(_)
        | ErrorKind::InvalidChannelState(..)
        | ErrorKind::InvalidConnectionState(_)
        | ErrorKind::MissingHeartbeatError => true,
        // 403 access refused, 404 not found, 405 resource locked, 406 precondition
        // failed, 530 not allowed: asking again will not help.
        ErrorKind::ProtocolError(p) => !matches!(p.get_id(), 403 | 404 | 405 | 406 | 530),
        _ => false,
    };
    QueueError::Backend {
        message: format!("RabbitMQ: {what} failed: {e}"),
        retryable,
        source: Some(Box::new(e)),
    }
}

/// Longest wait for a command that goes through lapin's connection-wide command queue: an
/// ack, a nack, opening a channel. These normally resolve as soon as the frame is written,
/// but lapin can leave one sent in the instant the connection dies unanswered for ever (it
/// lands after the connection's I/O loop stopped, and nothing fails it). Past this it
/// counts as failed, which is then the truth: the broker took unacked deliveries back
/// with the connection.
pub(super) const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// `command` bounded by [`COMMAND_TIMEOUT`], its error mapped by [`map_err`]; a timeout
/// is a retryable error.
pub(super) async fn bounded<T>(
    what: &str,
    command: impl std::future::Future<Output = lapin::Result<T>>,
) -> Result<T, QueueError> {
    match timeout(COMMAND_TIMEOUT, command).await {
        Ok(result) => result.map_err(|e| map_err(what, e)),
        Err(_) => Err(QueueError::Backend {
            message: format!(
                "RabbitMQ: {what}: no answer after {COMMAND_TIMEOUT:?} (the connection was lost)"
            ),
            retryable: true,
            source: None,
        }),
    }
}
