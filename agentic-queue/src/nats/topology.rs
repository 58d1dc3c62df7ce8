//! Names of a queue's streams, subjects and consumers, and their creation.
//!
//! A queue name may be any non-empty string; NATS names and subject tokens may not contain
//! `.`, `*`, `>` or whitespace. The name is therefore encoded: `[A-Za-z0-9-]` stay, every
//! other byte of its UTF-8 becomes `_XX` (upper-case hex). The encoding is injective and
//! never produces `_` followed by a non-hex letter, so the suffixes `_DLQ` and `_ERR`
//! cannot make two queues' stream names meet.
//!
//! | what | name |
//! |---|---|
//! | work stream (WorkQueue retention) | `<prefix>_<enc>`, subjects `<prefix>.<enc>.p.<0-9>` and `<prefix>.<enc>.delayed` |
//! | dead-letter stream (limits, one per job) | `<prefix>_<enc>_DLQ`, subjects `<prefix>.<enc>.dead.<job id>` |
//! | error stream (limits, one per message) | `<prefix>_<enc>_ERR`, subjects `<prefix>.<enc>.err.<stream seq>` |
//! | wake-ups (core NATS, not stored) | `<prefix>.<enc>.wake` |
//! | consumers on the work stream | `level-<0-9>` (filter `p.<n>`), `delayed` (filter `delayed`) |

use std::time::Duration;

use async_nats::jetstream::context::CreateStreamErrorKind;
use async_nats::jetstream::{self, consumer, stream};

use super::NatsQueueConfig;
use crate::QueueError;

/// Longest encoded queue name: stream names end up in file paths on the server.
const MAX_ENCODED: usize = 128;

/// Every name of one queue.
#[derive(Debug, Clone)]
pub(super) struct Names {
    pub(super) work: String,
    pub(super) dlq: String,
    pub(super) err: String,
    /// `<prefix>.<enc>`: every subject of the queue starts with it.
    pub(super) base: String,
}

impl Names {
    pub(super) fn new(prefix: &str, queue: &str) -> Result<Names, QueueError> {
        if queue.is_empty() {
            return Err(QueueError::InvalidQueueName {
                name: queue.to_owned(),
                reason: "must not be empty".to_owned(),
            });
        }
        let mut enc = String::with_capacity(queue.len());
        for b in queue.bytes() {
            if b.is_ascii_alphanumeric() || b == b'-' {
                enc.push(char::from(b));
            } else {
                enc.push_str(&format!("_{b:02X}"));
            }
        }
        if enc.len() > MAX_ENCODED {
            return Err(QueueError::InvalidQueueName {
                name: queue.to_owned(),
                reason: format!(
                    "is {} characters once encoded for NATS names, over {MAX_ENCODED}",
                    enc.len()
                ),
            });
        }
        Ok(Names {
            work: format!("{prefix}_{enc}"),
            dlq: format!("{prefix}_{enc}_DLQ"),
            err: format!("{prefix}_{enc}_ERR"),
            base: format!("{prefix}.{enc}"),
        })
    }

    pub(super) fn level(&self, priority: u8) -> String {
        format!("{}.p.{priority}", self.base)
    }

    pub(super) fn delayed(&self) -> String {
        format!("{}.delayed", self.base)
    }

    pub(super) fn dead(&self, id: &str) -> String {
        format!("{}.dead.{id}", self.base)
    }

    pub(super) fn error(&self, stream_sequence: u64) -> String {
        format!("{}.err.{stream_sequence}", self.base)
    }

    pub(super) fn wake(&self) -> String {
        format!("{}.wake", self.base)
    }
}

/// Validates the subject/stream prefix of the config.
pub(super) fn check_prefix(prefix: &str) -> Result<(), QueueError> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 32
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(QueueError::backend_msg(format!(
            "NatsQueue prefix {prefix:?} must be 1-32 characters of [A-Za-z0-9-]"
        )))
    }
}

/// The three streams of a queue, created when missing. An existing stream is used as it
/// is, even if its settings differ from `config`: the first creator's settings win, and
/// changing them is an operator's decision, not a side effect of a worker starting.
pub(super) async fn ensure_streams(
    js: &jetstream::Context,
    names: &Names,
    config: &NatsQueueConfig,
) -> Result<(), QueueError> {
    let replicas = config.replicas.max(1);
    let work = stream::Config {
        name: names.work.clone(),
        description: Some("agentic TaskQueue: jobs".to_owned()),
        subjects: vec![format!("{}.p.*", names.base), names.delayed()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        duplicate_window: config.dedupe_window,
        num_replicas: replicas,
        ..Default::default()
    };
    let dlq = stream::Config {
        name: names.dlq.clone(),
        description: Some("agentic TaskQueue: dead letters".to_owned()),
        subjects: vec![format!("{}.dead.*", names.base)],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        // One dead letter per job: dead-lettering a job twice keeps the latest.
        max_messages_per_subject: 1,
        max_messages: if config.dead_letter_max == 0 {
            -1
        } else {
            i64::try_from(config.dead_letter_max).unwrap_or(i64::MAX)
        },
        discard: stream::DiscardPolicy::Old,
        duplicate_window: config.dedupe_window,
        num_replicas: replicas,
        ..Default::default()
    };
    let err = stream::Config {
        name: names.err.clone(),
        description: Some("agentic TaskQueue: last errors of retrying jobs".to_owned()),
        subjects: vec![format!("{}.err.*", names.base)],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_messages_per_subject: 1,
        max_age: config.error_record_max_age,
        num_replicas: replicas,
        ..Default::default()
    };
    for cfg in [work, dlq, err] {
        if stream_exists(js, &cfg.name).await? {
            continue;
        }
        let name = cfg.name.clone();
        if let Err(e) = js.create_stream(cfg).await {
            // Another worker may have created it at the same moment, or the create went
            // through and only its answer was late.
            if !stream_exists(js, &name).await? {
                let retryable = create_transient(&e.kind());
                return Err(QueueError::Backend {
                    message: format!("NATS: could not create stream {name}: {e}"),
                    retryable,
                    source: Some(Box::new(e)),
                });
            }
        }
    }
    Ok(())
}

/// A stream create worth another try: no answer, no responders, or a server-side API
/// error (>= 500). A refused configuration (4xx: subjects overlapping another stream's, …)
/// stays refused.
fn create_transient(kind: &CreateStreamErrorKind) -> bool {
    match kind {
        CreateStreamErrorKind::TimedOut
        | CreateStreamErrorKind::JetStreamUnavailable
        | CreateStreamErrorKind::Response => true,
        CreateStreamErrorKind::JetStream(api) => api.code() >= 500,
        _ => false,
    }
}

/// True when the stream exists; `Err` only when the server could not be asked.
pub(super) async fn stream_exists(js: &jetstream::Context, name: &str) -> Result<bool, QueueError> {
    match js.get_stream(name).await {
        Ok(_) => Ok(true),
        Err(e) => {
            if is_not_found(&e.to_string()) {
                Ok(false)
            } else {
                Err(QueueError::Backend {
                    message: format!("NATS: stream info of {name} failed: {e}"),
                    retryable: true,
                    source: Some(Box::new(e)),
                })
            }
        }
    }
}

/// The shared durable pull consumer of one work subject, created when missing. Every worker
/// of every process uses this one consumer; the server hands each message to one of them.
pub(super) async fn ensure_consumer(
    js: &jetstream::Context,
    names: &Names,
    durable: &str,
    filter: String,
    config: &NatsQueueConfig,
) -> Result<consumer::PullConsumer, QueueError> {
    let stream = js
        .get_stream_no_info(&names.work)
        .await
        .map_err(|e| QueueError::Backend {
            message: format!("NATS: stream {} unavailable: {e}", names.work),
            retryable: true,
            source: Some(Box::new(e)),
        })?;
    let cfg = consumer::pull::Config {
        durable_name: Some(durable.to_owned()),
        description: Some("agentic TaskQueue: shared by every worker".to_owned()),
        filter_subject: filter,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: config.ack_wait,
        // Unlimited on the server: attempts are per job (`max_attempts`), counted from the
        // delivery count and dead-lettered by us. A server-side limit would leave a job
        // that reached it sitting in the stream forever, neither delivered nor dead.
        max_deliver: -1,
        max_ack_pending: config.max_ack_pending,
        deliver_policy: consumer::DeliverPolicy::All,
        replay_policy: consumer::ReplayPolicy::Instant,
        ..Default::default()
    };
    stream
        .get_or_create_consumer(durable, cfg)
        .await
        .map_err(|e| QueueError::Backend {
            message: format!("NATS: consumer {durable} on {}: {e}", names.work),
            retryable: true,
            source: Some(Box::new(e)),
        })
}

/// The consumer's real ack wait (another process may have created it with other settings).
pub(super) fn ack_wait_of(consumer: &consumer::PullConsumer, fallback: Duration) -> Duration {
    let wait = consumer.cached_info().config.ack_wait;
    if wait.is_zero() { fallback } else { wait }
}

pub(super) fn is_not_found(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("not found") || m.contains("10059") || m.contains("10014")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_injective_and_valid() {
        let a = Names::new("agq", "emails")
            .map(|n| n.work)
            .unwrap_or_default();
        assert_eq!(a, "agq_emails");
        let odd = Names::new("agq", "a.b c_DLQ")
            .map(|n| n.work)
            .unwrap_or_default();
        assert_eq!(odd, "agq_a_2Eb_20c_5FDLQ");
        let x = Names::new("agq", "x").map(|n| n.dlq).unwrap_or_default();
        let y = Names::new("agq", "x_DLQ")
            .map(|n| n.work)
            .unwrap_or_default();
        assert_ne!(x, y);
        assert!(Names::new("agq", "").is_err());
    }
}
