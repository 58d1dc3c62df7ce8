//! How a job travels as an AMQP message: the payload is the body, the job's fields are
//! headers under `x-agentic-`, its id is the `message-id` property.
//!
//! The user's headers travel as one JSON header rather than one AMQP header each, so that
//! any name (spaces, non-ASCII, longer than AMQP's 255-byte short strings, names the broker
//! reserves such as `x-death`) round-trips unchanged.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use crate::{DeadLetter, JobId, NewJob, QueueError};

const H_HEADERS: &str = "x-agentic-headers";
const H_PRIORITY: &str = "x-agentic-priority";
const H_MAX_ATTEMPTS: &str = "x-agentic-max-attempts";
/// Deliveries made before this copy of the message was published (retries republish).
const H_PRIOR_ATTEMPTS: &str = "x-agentic-attempts";
/// How many times the job came back from the dead letters; the high half of the token.
const H_EPOCH: &str = "x-agentic-epoch";
const H_LAST_ERROR: &str = "x-agentic-last-error";
const H_REASON: &str = "x-agentic-reason";
const H_DEAD_AT: &str = "x-agentic-dead-at";
/// Which copy of a parked lease this is (see `lease`).
const H_PARK_SERIAL: &str = "x-agentic-park-serial";
/// The park queue a parked copy came from, so whoever gets it back can delete it.
const H_PARK_QUEUE: &str = "x-agentic-park-queue";
/// Set by quorum queues: how often this message was returned to the queue (requeued by a
/// nack, or its channel closed while it was unacked).
const H_DELIVERY_COUNT: &str = "x-delivery-count";

/// `delivery_mode` 2: written to disk (quorum queues persist every message anyway).
const PERSISTENT: u8 = 2;

/// A job's fields, as carried in the message's properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Job {
    pub(super) id: JobId,
    pub(super) headers: BTreeMap<String, String>,
    pub(super) priority: u8,
    pub(super) max_attempts: u32,
    /// Deliveries made before this message was published.
    pub(super) prior_attempts: u32,
    pub(super) epoch: u32,
    pub(super) last_error: Option<String>,
}

impl Job {
    pub(super) fn new(id: JobId, job: &NewJob) -> Self {
        Job {
            id,
            headers: job.headers.clone(),
            priority: job.priority,
            max_attempts: job.max_attempts,
            prior_attempts: 0,
            epoch: 0,
            last_error: None,
        }
    }

    /// The properties of a message carrying this job.
    pub(super) fn properties(&self) -> Result<BasicProperties, QueueError> {
        Ok(self.properties_with(self.table()?))
    }

    /// The properties of this job as a dead letter.
    pub(super) fn dead_properties(
        &self,
        attempts: u32,
        reason: &str,
    ) -> Result<BasicProperties, QueueError> {
        let mut table = self.table()?;
        // In a dead letter the prior attempts are all of them.
        table.insert(H_PRIOR_ATTEMPTS.into(), int(attempts));
        table.insert(H_REASON.into(), text(reason));
        table.insert(
            H_DEAD_AT.into(),
            AMQPValue::LongLongInt(unix_millis(SystemTime::now())),
        );
        Ok(self.properties_with(table))
    }

    /// The properties of a parked copy: expires after `ttl` (then the broker
    /// dead-letters it back into the work queue).
    pub(super) fn parked_properties(
        &self,
        serial: u32,
        ttl: Duration,
        park_queue: &str,
    ) -> Result<BasicProperties, QueueError> {
        let mut table = self.table()?;
        table.insert(H_PARK_SERIAL.into(), int(serial));
        table.insert(H_PARK_QUEUE.into(), text(park_queue));
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        Ok(self
            .properties_with(table)
            .with_expiration(ShortString::from(ms.to_string())))
    }

    fn table(&self) -> Result<FieldTable, QueueError> {
        let mut t = FieldTable::default();
        if !self.headers.is_empty() {
            let json = serde_json::to_vec(&self.headers)
                .map_err(|e| QueueError::InvalidJob(format!("headers: {e}")))?;
            t.insert(
                H_HEADERS.into(),
                AMQPValue::LongString(LongString::from(json)),
            );
        }
        t.insert(H_PRIORITY.into(), int(u32::from(self.priority)));
        t.insert(H_MAX_ATTEMPTS.into(), int(self.max_attempts));
        if self.prior_attempts > 0 {
            t.insert(H_PRIOR_ATTEMPTS.into(), int(self.prior_attempts));
        }
        if self.epoch > 0 {
            t.insert(H_EPOCH.into(), int(self.epoch));
        }
        if let Some(e) = &self.last_error {
            t.insert(H_LAST_ERROR.into(), text(e));
        }
        Ok(t)
    }

    fn properties_with(&self, table: FieldTable) -> BasicProperties {
        BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_message_id(ShortString::from(self.id.as_str()))
            .with_headers(table)
    }

    /// Reads a job from a delivered message. `Err` carries the reason the message cannot
    /// be a job (it is then dead-lettered with that reason, never dropped).
    ///
    /// A message that was not published by this backend (no `x-agentic-` headers) is taken
    /// as a job with default fields, so that producers in other languages can enqueue.
    pub(super) fn parse(props: &BasicProperties, delivery_tag: u64) -> Result<Self, String> {
        let empty = FieldTable::default();
        let t = props.headers().as_ref().unwrap_or(&empty);
        let headers = match t.inner().get(H_HEADERS) {
            None => BTreeMap::new(),
            Some(v) => {
                let raw = bytes_of(v).ok_or("the x-agentic-headers header is not a string")?;
                serde_json::from_slice(raw)
                    .map_err(|e| format!("the x-agentic-headers header is not JSON: {e}"))?
            }
        };
        let id = match props.message_id() {
            Some(id) if !id.as_str().is_empty() => JobId(id.as_str().to_owned()),
            // A foreign message without an id: make one that is stable for this delivery.
            _ => JobId(format!("amqp-{delivery_tag}-{:016x}", fastrand::u64(..))),
        };
        let priority = get_u32(t, H_PRIORITY).unwrap_or(0).min(9) as u8;
        Ok(Job {
            id,
            headers,
            priority,
            max_attempts: get_u32(t, H_MAX_ATTEMPTS)
                .unwrap_or(crate::DEFAULT_MAX_ATTEMPTS)
                .max(1),
            prior_attempts: get_u32(t, H_PRIOR_ATTEMPTS).unwrap_or(0),
            epoch: get_u32(t, H_EPOCH).unwrap_or(0),
            last_error: get_string(t, H_LAST_ERROR),
        })
    }
}

/// The broker's return count of a delivered message (0 on its first delivery).
pub(super) fn delivery_count(props: &BasicProperties) -> u32 {
    props
        .headers()
        .as_ref()
        .and_then(|t| get_u32(t, H_DELIVERY_COUNT))
        .unwrap_or(0)
}

/// The serial of a parked copy.
pub(super) fn park_serial(props: &BasicProperties) -> Option<u32> {
    props
        .headers()
        .as_ref()
        .and_then(|t| get_u32(t, H_PARK_SERIAL))
}

/// The park queue a copy came back from, if it is one.
pub(super) fn park_queue(props: &BasicProperties) -> Option<String> {
    props
        .headers()
        .as_ref()
        .and_then(|t| get_string(t, H_PARK_QUEUE))
}

/// Reads a dead letter. Messages dead-lettered by the broker itself (its delivery limit)
/// carry no reason of ours; the reason then names the broker's (`x-death`).
pub(super) fn parse_dead(
    props: &BasicProperties,
    payload: Vec<u8>,
    delivery_tag: u64,
) -> Result<DeadLetter, String> {
    let job = Job::parse(props, delivery_tag)?;
    let empty = FieldTable::default();
    let t = props.headers().as_ref().unwrap_or(&empty);
    let (reason, dead_at) = match get_string(t, H_REASON) {
        Some(reason) => {
            let at = get_i64(t, H_DEAD_AT).unwrap_or(0).max(0) as u64;
            (reason, UNIX_EPOCH + Duration::from_millis(at))
        }
        None => broker_death(t),
    };
    let attempts = if t.contains_key(H_REASON) {
        job.prior_attempts
    } else {
        // Dead-lettered by the broker: every return counted, plus the last delivery.
        job.prior_attempts + delivery_count(props) + 1
    };
    Ok(DeadLetter {
        job_id: job.id,
        payload: Bytes::from(payload),
        headers: job.headers,
        priority: job.priority,
        attempts,
        reason,
        dead_at,
    })
}

/// The newest `x-death` entry: why and when the broker dead-lettered the message.
fn broker_death(t: &FieldTable) -> (String, SystemTime) {
    let entry = match t.inner().get("x-death") {
        Some(AMQPValue::FieldArray(a)) => a.as_slice().first().and_then(|v| match v {
            AMQPValue::FieldTable(e) => Some(e.clone()),
            _ => None,
        }),
        _ => None,
    };
    let Some(e) = entry else {
        return (
            "dead-lettered by the broker (no reason recorded)".to_owned(),
            SystemTime::now(),
        );
    };
    let why = get_string(&e, "reason").unwrap_or_else(|| "unknown".to_owned());
    let at = match e.inner().get("time") {
        Some(AMQPValue::Timestamp(s)) => UNIX_EPOCH + Duration::from_secs(*s),
        _ => SystemTime::now(),
    };
    let reason = if why == "delivery_limit" {
        "dead-lettered by the broker: delivery limit reached (the job was returned unacked too often, e.g. its workers kept dying)".to_owned()
    } else {
        format!("dead-lettered by the broker: {why}")
    };
    (reason, at)
}

fn int(n: u32) -> AMQPValue {
    AMQPValue::LongInt(i32::try_from(n).unwrap_or(i32::MAX))
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn bytes_of(v: &AMQPValue) -> Option<&[u8]> {
    match v {
        AMQPValue::LongString(s) => Some(s.as_bytes()),
        AMQPValue::ShortString(s) => Some(s.as_str().as_bytes()),
        AMQPValue::ByteArray(b) => Some(b.as_slice()),
        _ => None,
    }
}

fn get_string(t: &FieldTable, k: &str) -> Option<String> {
    t.inner()
        .get(k)
        .and_then(bytes_of)
        .map(|b| String::from_utf8_lossy(b).into_owned())
}

fn get_i64(t: &FieldTable, k: &str) -> Option<i64> {
    Some(match t.inner().get(k)? {
        AMQPValue::ShortShortInt(n) => i64::from(*n),
        AMQPValue::ShortShortUInt(n) => i64::from(*n),
        AMQPValue::ShortInt(n) => i64::from(*n),
        AMQPValue::ShortUInt(n) => i64::from(*n),
        AMQPValue::LongInt(n) => i64::from(*n),
        AMQPValue::LongUInt(n) => i64::from(*n),
        AMQPValue::LongLongInt(n) => *n,
        AMQPValue::Timestamp(n) => i64::try_from(*n).ok()?,
        _ => return None,
    })
}

fn get_u32(t: &FieldTable, k: &str) -> Option<u32> {
    get_i64(t, k).map(|n| u32::try_from(n.max(0)).unwrap_or(u32::MAX))
}

fn unix_millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn a_job_round_trips_through_properties() {
        let new = NewJob::new(b"x".to_vec())
            .priority(7)
            .max_attempts(5)
            .header("x-death", "not the broker's")
            .header("\u{65e5}\u{672c} and spaces", "");
        let mut job = Job::new(JobId::from("id-1"), &new);
        job.prior_attempts = 2;
        job.epoch = 3;
        job.last_error = Some("boom".to_owned());
        let props = job.properties().unwrap();
        assert_eq!(*props.delivery_mode(), Some(PERSISTENT));
        assert_eq!(Job::parse(&props, 1).unwrap(), job);
    }

    #[test]
    fn a_dead_letter_keeps_reason_and_attempts() {
        let job = Job::new(JobId::from("id-2"), &NewJob::new(b"x".to_vec()));
        let props = job.dead_properties(3, "bad input").unwrap();
        let dead = parse_dead(&props, b"x".to_vec(), 1).unwrap();
        assert_eq!(dead.reason, "bad input");
        assert_eq!(dead.attempts, 3);
        assert_eq!(dead.job_id, JobId::from("id-2"));
    }

    #[test]
    fn corrupt_headers_are_a_reason_not_a_panic() {
        let mut t = FieldTable::default();
        t.insert(H_HEADERS.into(), text("{not json"));
        let props = BasicProperties::default().with_headers(t);
        assert!(Job::parse(&props, 1).unwrap_err().contains("not JSON"));
    }
}
