//! Queue names and declare arguments: what exists on the broker for one of our queues.
//!
//! Every queue is declared by whoever uses it first (declaring is idempotent when the
//! arguments match), so there is no setup step and a reconnect simply declares again.

use std::time::Duration;

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use super::AmqpQueueConfig;
use crate::QueueError;

/// Separates our suffixes from the user's queue name. Refused inside user names so that
/// the dead or delay queue of `a` can never be the work queue of another name.
pub(super) const SEPARATOR: char = '~';

/// RabbitMQ's limit on a queue name, in bytes.
const MAX_NAME_BYTES: usize = 255;
/// Room left for our longest suffix (`~idem~` and 32 hex digits, `~delay~` and ten digits).
const SUFFIX_ROOM: usize = 40;

/// The longest delay (and retry backoff) we accept: just under the 32-bit millisecond
/// limit of `x-message-ttl`, leaving room for the delay queue's own expiry (see
/// [`QueueSpec::Delay`]). 49 days.
pub(super) const MAX_DELAY: Duration = Duration::from_secs(49 * 24 * 3600);

/// How long a delay queue lives unused beyond its TTL. The client redeclares a delay queue
/// it publishes to at least every [`REDECLARE_DELAY_QUEUES`], which resets the broker's
/// expiry timer, so a queue is never deleted while it holds a message that has not expired.
const DELAY_QUEUE_GRACE_MS: u64 = 120_000;
/// See [`DELAY_QUEUE_GRACE_MS`]: must stay well below it.
pub(super) const REDECLARE_DELAY_QUEUES: Duration = Duration::from_secs(30);

/// The broker-side names of one queue of ours.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Names {
    /// The name the user gave.
    pub(super) queue: String,
    /// The work queue (quorum): jobs ready or delivered.
    pub(super) work: String,
    /// The dead-letter queue (quorum): jobs whose attempts are spent or that were refused.
    pub(super) dead: String,
}

impl Names {
    pub(super) fn new(config: &AmqpQueueConfig, queue: &str) -> Result<Self, QueueError> {
        let refuse = |reason: &str| QueueError::InvalidQueueName {
            name: queue.to_owned(),
            reason: reason.to_owned(),
        };
        if queue.is_empty() {
            return Err(refuse("a queue name must not be empty"));
        }
        if queue.contains(SEPARATOR) {
            return Err(refuse(
                "'~' is reserved: it separates the dead-letter and delay queues' suffixes",
            ));
        }
        let work = format!("{}{queue}", config.queue_prefix);
        if work.len() + SUFFIX_ROOM > MAX_NAME_BYTES {
            return Err(refuse(&format!(
                "with the prefix it is {} bytes; RabbitMQ allows {MAX_NAME_BYTES} and the backend needs {SUFFIX_ROOM} for suffixes",
                work.len()
            )));
        }
        if work.starts_with("amq.") {
            return Err(refuse(
                "names starting with 'amq.' are reserved by RabbitMQ",
            ));
        }
        Ok(Names {
            queue: queue.to_owned(),
            dead: format!("{work}{SEPARATOR}dead"),
            work,
        })
    }

    /// The delay queue for a delay of `ms` (already rounded to a bucket).
    pub(super) fn delay(&self, ms: u64) -> QueueSpec {
        QueueSpec::Delay {
            name: format!("{}{SEPARATOR}delay{SEPARATOR}{ms}", self.work),
            ttl_ms: ms,
            target: self.work.clone(),
        }
    }

    /// The record queue of one idempotency key.
    pub(super) fn idempotency(&self, key: &str) -> QueueSpec {
        QueueSpec::Idempotency {
            name: format!("{}{SEPARATOR}idem{SEPARATOR}{}", self.work, key_digest(key)),
        }
    }

    /// The park queue of one lease (a job and the token of its delivery).
    pub(super) fn park(&self, job: &crate::JobId, token: u64) -> QueueSpec {
        QueueSpec::Park {
            name: format!(
                "{}{SEPARATOR}lease{SEPARATOR}{}",
                self.work,
                key_digest(&format!("{job}\u{0}{token}"))
            ),
            target: self.work.clone(),
        }
    }

    pub(super) fn work_spec(&self) -> QueueSpec {
        QueueSpec::Work {
            name: self.work.clone(),
            dead: self.dead.clone(),
        }
    }

    pub(super) fn dead_spec(&self) -> QueueSpec {
        QueueSpec::Dead {
            name: self.dead.clone(),
        }
    }
}

/// One queue to declare, with what its arguments depend on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum QueueSpec {
    /// Quorum, with the delivery limit and the broker's dead-lettering into `dead`.
    Work { name: String, dead: String },
    /// Quorum, plain.
    Dead { name: String },
    /// Quorum, every message expires after `ttl_ms` and is dead-lettered into `target`.
    Delay {
        name: String,
        ttl_ms: u64,
        target: String,
    },
    /// Classic, at most one message (the job id), which expires after the dedupe window.
    Idempotency { name: String },
    /// Quorum, the copies of one parked lease (per-message TTL), dead-lettered into
    /// `target` when the lease runs out.
    Park { name: String, target: String },
}

impl QueueSpec {
    pub(super) fn name(&self) -> &str {
        match self {
            QueueSpec::Work { name, .. }
            | QueueSpec::Dead { name }
            | QueueSpec::Delay { name, .. }
            | QueueSpec::Idempotency { name }
            | QueueSpec::Park { name, .. } => name,
        }
    }

    /// Whether a cached declare must be repeated after `age` (see [`REDECLARE_DELAY_QUEUES`]).
    pub(super) fn stale_after(&self) -> Option<Duration> {
        match self {
            QueueSpec::Delay { .. } | QueueSpec::Idempotency { .. } => Some(REDECLARE_DELAY_QUEUES),
            _ => None,
        }
    }

    /// The `queue.declare` arguments.
    pub(super) fn arguments(&self, config: &AmqpQueueConfig) -> FieldTable {
        let mut args = FieldTable::default();
        let mut set = |k: &str, v: AMQPValue| {
            args.insert(ShortString::from(k), v);
        };
        let text = |s: &str| AMQPValue::LongString(LongString::from(s));
        let int = |n: u64| AMQPValue::LongLongInt(i64::try_from(n).unwrap_or(i64::MAX));
        match self {
            QueueSpec::Work { dead, .. } => {
                set("x-queue-type", text("quorum"));
                // A backstop for crash loops: our own count dead-letters a job after its
                // `max_attempts`; this one catches a job that kills every worker that takes
                // it before anyone can count (the broker counts every return).
                set("x-delivery-limit", int(u64::from(config.delivery_limit)));
                // The default exchange routes by queue name, so no exchange or binding is
                // needed for the broker's own dead-lettering.
                set("x-dead-letter-exchange", text(""));
                set("x-dead-letter-routing-key", text(dead));
                // At-least-once dead-lettering (RabbitMQ 3.10+) needs `reject-publish`;
                // the queue has no length limit, so this changes nothing else.
                set("x-dead-letter-strategy", text("at-least-once"));
                set("x-overflow", text("reject-publish"));
                if let Some(expires) = config.queue_expires {
                    set("x-expires", int(millis(expires).max(1)));
                }
            }
            QueueSpec::Dead { .. } => {
                set("x-queue-type", text("quorum"));
                if let Some(expires) = config.queue_expires {
                    set("x-expires", int(millis(expires).max(1)));
                }
            }
            QueueSpec::Delay { ttl_ms, target, .. } => {
                set("x-queue-type", text("quorum"));
                set("x-message-ttl", int(*ttl_ms));
                set("x-dead-letter-exchange", text(""));
                set("x-dead-letter-routing-key", text(target));
                set("x-dead-letter-strategy", text("at-least-once"));
                set("x-overflow", text("reject-publish"));
                // Unused delay queues go away by themselves; see DELAY_QUEUE_GRACE_MS.
                let expires = ttl_ms
                    .saturating_mul(2)
                    .saturating_add(DELAY_QUEUE_GRACE_MS)
                    .min(u64::from(u32::MAX));
                set("x-expires", int(expires));
            }
            QueueSpec::Park { target, .. } => {
                set("x-queue-type", text("quorum"));
                set("x-dead-letter-exchange", text(""));
                set("x-dead-letter-routing-key", text(target));
                set("x-dead-letter-strategy", text("at-least-once"));
                set("x-overflow", text("reject-publish"));
                // Deleted by the ack (or by the consumer that gets the copy back); this
                // only collects queues both missed. It must outlive any lease: 49 days.
                set("x-expires", int(u64::from(u32::MAX)));
            }
            QueueSpec::Idempotency { .. } => {
                // Classic on purpose: one queue per key is cheap for a classic queue and
                // expensive for a quorum queue (a Raft group each).
                set("x-queue-type", text("classic"));
                set("x-max-length", int(1));
                // The second record is refused (a publisher nack): that is the dedupe.
                set("x-overflow", text("reject-publish"));
                let window = millis(config.dedupe_window).clamp(1, u64::from(u32::MAX) / 2);
                set("x-message-ttl", int(window));
                set(
                    "x-expires",
                    int(window.saturating_add(DELAY_QUEUE_GRACE_MS)),
                );
            }
        }
        args
    }
}

/// A delay rounded up to two significant digits of milliseconds, so that the number of
/// delay queues stays small (at most 90 per decade) while no job is delivered early and
/// none more than 10% late.
pub(super) fn delay_bucket_ms(delay: Duration) -> u64 {
    let ms = u64::try_from(delay.as_micros().div_ceil(1000)).unwrap_or(u64::MAX);
    if ms < 100 {
        return ms;
    }
    let mut scale = 1u64;
    while ms / scale >= 100 {
        scale = scale.saturating_mul(10);
    }
    ms.div_ceil(scale).saturating_mul(scale)
}

pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The job id part for an idempotency key of the work queue `work`.
pub(super) fn key_id(work: &str, key: &str) -> String {
    key_digest(&format!("{work}\u{0}{key}"))
}

/// A stable digest of an idempotency key for a queue name: keys may be long or hold any
/// character. Two FNV-1a 64 hashes with different offsets make 128 bits, so distinct keys
/// do not collide in practice; it is stable across processes and Rust versions, which
/// `std`'s hasher does not promise.
fn key_digest(key: &str) -> String {
    fn fnv(bytes: &[u8], offset: u64) -> u64 {
        let mut h = offset;
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h
    }
    let bytes = key.as_bytes();
    format!(
        "{:016x}{:016x}",
        fnv(bytes, 0xcbf2_9ce4_8422_2325),
        fnv(bytes, 0x84222325_cbf29ce4 ^ bytes.len() as u64)
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn delay_buckets_round_up_to_two_significant_digits() {
        assert_eq!(delay_bucket_ms(Duration::ZERO), 0);
        assert_eq!(delay_bucket_ms(Duration::from_micros(1)), 1);
        assert_eq!(delay_bucket_ms(Duration::from_millis(99)), 99);
        assert_eq!(delay_bucket_ms(Duration::from_millis(400)), 400);
        assert_eq!(delay_bucket_ms(Duration::from_millis(401)), 410);
        assert_eq!(delay_bucket_ms(Duration::from_millis(1234)), 1300);
        assert_eq!(delay_bucket_ms(Duration::from_secs(3600)), 3_600_000);
        for ms in [1u64, 57, 101, 999, 1001, 65_432, 4_000_000_001] {
            let b = delay_bucket_ms(Duration::from_millis(ms));
            assert!(b >= ms && b <= ms + ms / 10 + 1, "{ms} -> {b}");
        }
    }

    #[test]
    fn names_refuse_what_would_collide_or_be_rejected() {
        let config = AmqpQueueConfig::new("amqp://localhost");
        assert!(Names::new(&config, "").is_err());
        assert!(Names::new(&config, "a~dead").is_err());
        assert!(Names::new(&config, &"x".repeat(250)).is_err());
        let names = Names::new(&config, "emails").unwrap();
        assert_eq!(names.work, "agentic.emails");
        assert_eq!(names.dead, "agentic.emails~dead");
        assert_eq!(names.delay(400).name(), "agentic.emails~delay~400");
    }

    #[test]
    fn key_digests_are_stable_and_distinct() {
        assert_eq!(key_digest("order-42"), key_digest("order-42"));
        assert_ne!(key_digest("order-42"), key_digest("order-43"));
        assert_eq!(key_digest(&"k".repeat(10_000)).len(), 32);
    }
}
