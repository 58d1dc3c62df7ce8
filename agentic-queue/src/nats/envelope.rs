//! How a job travels in a NATS message: the payload is the message body, byte for byte;
//! everything else is in headers, because a body envelope would have to escape (and copy)
//! arbitrary binary payloads.
//!
//! | header | on | holds |
//! |---|---|---|
//! | `Nats-Msg-Id` | keyed work, dead | the dedupe id the server checks inside its window (jobs with an idempotency key); the job id unless `Agq-Id` says otherwise |
//! | `Agq-Id` | work, dead | the job id, when it is neither the message id nor `s<stream seq>` (moved, requeued and dead messages) |
//! | `Agq-Prio` | delayed, dead | priority `0..=9` (on a level subject the subject says it) |
//! | `Agq-Max` | work, dead | max attempts, when not the default (3) |
//! | `Agq-Hdr` | work, dead | the job's headers as a JSON object (absent when empty) |
//! | `Agq-Due` | delayed | wall-clock ms since the epoch before which the job is not delivered |
//! | `Agq-Attempts` | dead, error record | deliveries made (dead letter), or the attempt whose error this is (error record) |
//! | `Agq-Reason` | dead | why, as a JSON string (so newlines survive a header line) |
//! | `Agq-Dead-At` | dead | wall-clock ms since the epoch |
//!
//! A job without an idempotency key, with default attempts and no headers of its own, has
//! no headers at all: its id is its stream sequence (`s<seq>`), so the server parses and
//! stores nothing but the payload, as for a plain publish.
//!
//! Header values may not contain CR or LF; every free-form value (user headers, reasons) is
//! JSON-encoded, which escapes them, so no job can produce an invalid header.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use async_nats::header::{HeaderValue, NATS_MESSAGE_ID};
use bytes::Bytes;

use crate::{JobId, QueueError};

pub(super) const ID: &str = "Agq-Id";
pub(super) const PRIO: &str = "Agq-Prio";
pub(super) const MAX: &str = "Agq-Max";
pub(super) const HDR: &str = "Agq-Hdr";
pub(super) const DUE: &str = "Agq-Due";
pub(super) const ATTEMPTS: &str = "Agq-Attempts";
pub(super) const REASON: &str = "Agq-Reason";
pub(super) const DEAD_AT: &str = "Agq-Dead-At";

/// What a queue knows about a job besides its delivery state.
#[derive(Debug, Clone)]
pub(super) struct Job {
    pub(super) id: JobId,
    pub(super) payload: Bytes,
    pub(super) headers: BTreeMap<String, String>,
    pub(super) priority: u8,
    pub(super) max_attempts: u32,
}

impl Job {
    /// The headers of a message carrying this job, deduped under `msg_id`.
    ///
    /// Only what cannot be known otherwise, because the server parses and stores every
    /// header of every message: the job id when it differs from the message id, the
    /// priority when the subject does not say it (`with_priority`), `max_attempts` when it
    /// is not the default, the job's headers when there are any.
    ///
    /// `msg_id` is `None` for a job without an idempotency key being enqueued: its id is
    /// not known yet (the stream sequence will be), and `self.id` is empty.
    pub(super) fn work_headers(
        &self,
        msg_id: Option<&str>,
        with_priority: bool,
    ) -> Result<HeaderMap, QueueError> {
        let mut h = HeaderMap::new();
        if let Some(msg_id) = msg_id {
            h.insert(NATS_MESSAGE_ID, value(msg_id)?);
        }
        if !self.id.as_str().is_empty() && msg_id != Some(self.id.as_str()) {
            h.insert(ID, value(self.id.as_str())?);
        }
        if with_priority {
            h.insert(PRIO, HeaderValue::from(u64::from(self.priority)));
        }
        if self.max_attempts != crate::DEFAULT_MAX_ATTEMPTS {
            h.insert(MAX, HeaderValue::from(u64::from(self.max_attempts)));
        }
        if !self.headers.is_empty() {
            let json = serde_json::to_string(&self.headers)
                .map_err(|e| QueueError::InvalidJob(format!("headers do not encode: {e}")))?;
            h.insert(HDR, value(&json)?);
        }
        Ok(h)
    }

    /// Reads a job from a message's headers and body. A message without an id header is
    /// a job whose id is its stream sequence (`s<seq>`): that is how jobs without an
    /// idempotency key travel (no headers at all with default settings, so the server
    /// parses nothing), and how a plain message any NATS client publishes on a level
    /// subject becomes a job. `Err` names what is wrong, for the dead letter of a message
    /// whose headers do not decode.
    pub(super) fn decode(
        headers: Option<&HeaderMap>,
        payload: Bytes,
        priority: Option<u8>,
        stream_sequence: u64,
    ) -> Result<Job, String> {
        let empty = HeaderMap::new();
        let h = headers.unwrap_or(&empty);
        let get = |name: &str| h.get(name).map(|v| v.as_str());
        let id = match get(ID).or_else(|| get(NATS_MESSAGE_ID.as_ref())) {
            Some(id) => id.to_owned(),
            None => sequence_id(stream_sequence),
        };
        if id.is_empty() {
            return Err("empty Agq-Id header".to_owned());
        }
        let priority = match priority {
            Some(p) => p,
            None => parse(get(PRIO), "Agq-Prio")?,
        };
        if priority > crate::MAX_PRIORITY {
            return Err(format!("priority {priority} out of range"));
        }
        let max_attempts: u32 = match get(MAX) {
            None => crate::DEFAULT_MAX_ATTEMPTS,
            v => parse(v, "Agq-Max")?,
        };
        if max_attempts == 0 {
            return Err("Agq-Max of 0".to_owned());
        }
        let headers = match get(HDR) {
            None => BTreeMap::new(),
            Some(json) => serde_json::from_str(json)
                .map_err(|e| format!("Agq-Hdr is not a JSON object of strings: {e}"))?,
        };
        Ok(Job {
            id: JobId(id),
            payload,
            headers,
            priority,
            max_attempts,
        })
    }
}

/// Parses a numeric header, naming it in the error.
pub(super) fn parse<T: std::str::FromStr>(v: Option<&str>, name: &str) -> Result<T, String> {
    v.ok_or_else(|| format!("no {name} header"))?
        .parse()
        .map_err(|_| format!("{name} header is not a number"))
}

/// A validated header value (`From<&str>` would panic on CR/LF; this returns an error).
pub(super) fn value(s: &str) -> Result<HeaderValue, QueueError> {
    s.parse::<HeaderValue>()
        .map_err(|e| QueueError::InvalidJob(format!("header value {s:?}: {e}")))
}

/// A free-form text as a header value: JSON-encoded, so it never contains CR or LF.
pub(super) fn text(s: &str) -> Result<HeaderValue, QueueError> {
    let json = serde_json::to_string(s)
        .map_err(|e| QueueError::backend_msg(format!("text does not encode: {e}")))?;
    value(&json)
}

/// The inverse of [`text`]; a value that is not a JSON string is returned as it is.
pub(super) fn read_text(v: Option<&str>) -> String {
    match v {
        None => String::new(),
        Some(raw) => serde_json::from_str::<String>(raw).unwrap_or_else(|_| raw.to_owned()),
    }
}

/// Wall-clock milliseconds since the epoch.
pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, millis)
}

pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A job id for an idempotency key: the same key always gives the same id (in any process,
/// any build), so a duplicate inside the window can report the original's id without
/// asking anyone. FNV-1a, 128 bits: not a cryptographic hash, but keys are chosen by the
/// application, not by an adversary, and 128 bits make accidental collisions negligible.
pub(super) fn id_for_key(key: &str) -> String {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    let mut h = OFFSET;
    for b in key.as_bytes() {
        h ^= u128::from(*b);
        h = h.wrapping_mul(PRIME);
    }
    format!("k{h:032x}")
}

/// The id of a job that has no id header: `s` and its stream sequence, unique in its queue.
pub(super) fn sequence_id(stream_sequence: u64) -> String {
    format!("s{stream_sequence}")
}

/// True for ids this backend can have made (and that are safe as a subject token).
pub(super) fn is_job_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_are_stable_and_distinct() {
        assert_eq!(id_for_key("order-42"), id_for_key("order-42"));
        assert_ne!(id_for_key("order-42"), id_for_key("order-43"));
        assert_eq!(id_for_key("").len(), 33);
        assert!(is_job_id(&id_for_key("x y\n")));
        assert!(is_job_id(&sequence_id(42)));
        assert!(!is_job_id("a.b") && !is_job_id("*") && !is_job_id(""));
    }

    #[test]
    fn headers_roundtrip() {
        let job = Job {
            id: JobId("abc".to_owned()),
            payload: Bytes::from_static(b"\x00\xff"),
            headers: BTreeMap::from([
                ("x spaces=and".to_owned(), " a\r\nb ".to_owned()),
                ("\u{65e5}".to_owned(), String::new()),
            ]),
            priority: 7,
            max_attempts: 4,
        };
        let h = job.work_headers(Some("abc"), true).unwrap_or_default();
        let back = Job::decode(Some(&h), job.payload.clone(), None, 9);
        let back = back.unwrap_or_else(|e| Job {
            id: JobId(e),
            ..job.clone()
        });
        assert_eq!(back.id, job.id);
        assert_eq!(back.headers, job.headers);
        assert_eq!((back.priority, back.max_attempts), (7, 4));
        let plain = Job::decode(None, Bytes::new(), Some(0), 7).map(|j| j.id);
        assert_eq!(plain.ok(), Some(JobId("s7".to_owned())));
        let mut bad = HeaderMap::new();
        bad.insert(MAX, "many");
        assert!(Job::decode(Some(&bad), Bytes::new(), Some(0), 7).is_err());
        assert_eq!(read_text(Some(r#""a\nb""#)), "a\nb");
        assert!(text("line\nbreak").is_ok());
    }
}
