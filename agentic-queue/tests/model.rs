//! Model-based test: random operation sequences against `MemoryQueue` and a plain,
//! obviously-correct reference model (a `Vec` of jobs, scanned and sorted on every step),
//! on tokio's paused clock. Every observable result is compared: enqueue results and ids,
//! deliveries (which jobs, in which order, attempt, token, last error, lease expiry), the
//! return time of waiting dequeues, ack/nack/extend outcomes, stats and dead letters.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cmp::Reverse;
use std::collections::HashMap;
use std::time::Duration;

use agentic_queue::{
    Delivery, JobId, Lease, MemoryQueue, MemoryQueueConfig, NackOutcome, NewJob, QueueError,
    QueueStats, Retry, TaskQueue,
};
use proptest::prelude::*;
use tokio::time::Instant;

const Q: &str = "model";
const MAX_PAYLOAD: usize = 6;
const WINDOW: Duration = Duration::from_millis(500);
const RETENTION: usize = 3;
/// Timer rounding allowed on a waiting dequeue's return (tokio's wheel has 1 ms ticks).
const TIMER_SLACK: Duration = Duration::from_millis(5);

#[derive(Debug, Clone)]
struct JobSpec {
    payload: Vec<u8>,
    priority: u8,
    delay_ms: u64,
    max_attempts: u32,
    key: Option<u8>,
}

#[derive(Debug, Clone)]
enum Op {
    Enqueue(Vec<JobSpec>),
    Dequeue {
        max: usize,
        lease_ms: u64,
        wait_ms: u64,
    },
    /// Index (modulo) into every lease handed out so far, stale ones included.
    Ack(usize),
    /// `None` dead-letters; `Some(ms)` retries after `ms`.
    Nack(usize, Option<u64>),
    Extend(usize, u64),
    Advance(u64),
    /// Index (modulo, one past the end = an id that is not dead) into the dead letters.
    RequeueDead(usize),
}

fn job_spec() -> impl Strategy<Value = JobSpec> {
    (
        prop::collection::vec(any::<u8>(), 0..=MAX_PAYLOAD + 1),
        prop_oneof![8 => 0u8..3, 2 => 3u8..=9, 1 => Just(10u8)],
        prop_oneof![3 => Just(0u64), 1 => (1u64..=6).prop_map(|n| n * 100)],
        prop_oneof![1 => Just(0u32), 10 => 1u32..=3],
        prop::option::weighted(0.4, 0u8..3),
    )
        .prop_map(|(payload, priority, delay_ms, max_attempts, key)| JobSpec {
            payload,
            priority,
            delay_ms,
            max_attempts,
            key,
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop::collection::vec(job_spec(), 1..=3).prop_map(Op::Enqueue),
        4 => (
            0usize..=4,
            1u64..=50,
            prop_oneof![2 => Just(0u64), 1 => 1u64..=8],
        )
            .prop_map(|(max, lease, wait)| Op::Dequeue {
                max,
                lease_ms: lease * 10,
                wait_ms: wait * 100,
            }),
        3 => any::<usize>().prop_map(Op::Ack),
        2 => (
            any::<usize>(),
            prop_oneof![1 => Just(None), 2 => (0u64..=4).prop_map(|n| Some(n * 100))],
        )
            .prop_map(|(i, after)| Op::Nack(i, after)),
        1 => (any::<usize>(), 1u64..=50).prop_map(|(i, ms)| Op::Extend(i, ms * 10)),
        2 => (1u64..=60).prop_map(|n| Op::Advance(n * 10)),
        1 => any::<usize>().prop_map(Op::RequeueDead),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    /// Ready, with the position in which it became ready.
    Ready(u64),
    Delayed(Instant),
    Leased(Instant),
    Dead,
    /// Acked, or a dead letter dropped by retention.
    Gone,
}

#[derive(Debug, Clone)]
struct MJob {
    id: JobId,
    payload: Vec<u8>,
    priority: u8,
    max_attempts: u32,
    attempts: u32,
    token: u64,
    last_error: Option<String>,
    st: St,
}

/// The reference: every question answered by a scan, nothing clever.
#[derive(Debug, Clone, Default)]
struct Model {
    /// In enqueue order, which is also the queue's tie-break order.
    jobs: Vec<MJob>,
    next_ready: u64,
    /// (job, reason), oldest first.
    dead: Vec<(usize, String)>,
    /// (key, job, expires)
    keys: Vec<(u8, usize, Instant)>,
}

impl Model {
    fn make_ready(&mut self, i: usize) {
        self.jobs[i].st = St::Ready(self.next_ready);
        self.next_ready += 1;
    }

    fn kill(&mut self, i: usize, reason: String) {
        self.jobs[i].st = St::Dead;
        self.dead.push((i, reason));
        while self.dead.len() > RETENTION {
            let (dropped, _) = self.dead.remove(0);
            self.jobs[dropped].st = St::Gone;
        }
    }

    /// Everything due by `now`, in order of due time, then enqueue order.
    fn promote(&mut self, now: Instant) {
        let mut due: Vec<(Instant, usize)> = self
            .jobs
            .iter()
            .enumerate()
            .filter_map(|(i, j)| match j.st {
                St::Delayed(t) | St::Leased(t) if t <= now => Some((t, i)),
                _ => None,
            })
            .collect();
        due.sort();
        for (_, i) in due {
            match self.jobs[i].st {
                St::Delayed(_) => self.make_ready(i),
                St::Leased(_) => {
                    let a = self.jobs[i].attempts;
                    if a >= self.jobs[i].max_attempts {
                        let noun = if a == 1 { "attempt" } else { "attempts" };
                        self.kill(i, format!("lease expired after {a} {noun}"));
                    } else {
                        self.jobs[i].last_error = Some(format!("lease expired on attempt {a}"));
                        self.make_ready(i);
                    }
                }
                _ => unreachable!(),
            }
        }
    }

    fn next_event(&self) -> Option<Instant> {
        self.jobs
            .iter()
            .filter_map(|j| match j.st {
                St::Delayed(t) | St::Leased(t) => Some(t),
                _ => None,
            })
            .min()
    }

    fn any_ready(&self) -> bool {
        self.jobs.iter().any(|j| matches!(j.st, St::Ready(_)))
    }

    /// When a dequeue started at `now` waiting until `deadline` must return.
    fn return_time(&self, now: Instant, deadline: Instant) -> Instant {
        let mut sim = self.clone();
        sim.promote(now);
        let mut t = now;
        loop {
            if sim.any_ready() {
                return t;
            }
            match sim.next_event() {
                Some(e) if e <= deadline => {
                    t = e;
                    sim.promote(e);
                }
                _ => return deadline.max(now),
            }
        }
    }

    fn take(&mut self, max: usize, expires: Instant) -> Vec<usize> {
        let mut ready: Vec<(Reverse<u8>, u64, usize)> = self
            .jobs
            .iter()
            .enumerate()
            .filter_map(|(i, j)| match j.st {
                St::Ready(order) => Some((Reverse(j.priority), order, i)),
                _ => None,
            })
            .collect();
        ready.sort();
        let taken: Vec<usize> = ready.into_iter().take(max).map(|(_, _, i)| i).collect();
        for &i in &taken {
            let j = &mut self.jobs[i];
            j.attempts += 1;
            j.token += 1;
            j.st = St::Leased(expires);
        }
        taken
    }

    fn valid_lease(&self, i: usize, token: u64) -> bool {
        matches!(self.jobs[i].st, St::Leased(_)) && self.jobs[i].token == token
    }

    fn stats(&self) -> QueueStats {
        let count = |f: fn(&St) -> bool| self.jobs.iter().filter(|j| f(&j.st)).count() as u64;
        QueueStats {
            ready: count(|s| matches!(s, St::Ready(_))),
            delayed: count(|s| matches!(s, St::Delayed(_))),
            leased: count(|s| matches!(s, St::Leased(_))),
            dead: self.dead.len() as u64,
        }
    }
}

fn validate(spec: &JobSpec) -> Result<(), String> {
    if spec.priority > 9 {
        return Err("InvalidJob".into());
    }
    if spec.max_attempts == 0 {
        return Err("InvalidJob".into());
    }
    if spec.payload.len() > MAX_PAYLOAD {
        return Err(format!(
            "PayloadTooLarge({}, {MAX_PAYLOAD})",
            spec.payload.len()
        ));
    }
    Ok(())
}

fn error_kind(e: &QueueError) -> String {
    match e {
        QueueError::LeaseLost { .. } => "LeaseLost".into(),
        QueueError::InvalidJob(_) => "InvalidJob".into(),
        QueueError::PayloadTooLarge { size, max } => format!("PayloadTooLarge({size}, {max})"),
        other => format!("unexpected: {other:?}"),
    }
}

fn new_job(spec: &JobSpec) -> NewJob {
    let mut job = NewJob::new(spec.payload.clone())
        .priority(spec.priority)
        .delay(Duration::from_millis(spec.delay_ms))
        .max_attempts(spec.max_attempts);
    if let Some(k) = spec.key {
        job = job.idempotency_key(format!("key-{k}"));
    }
    job
}

struct Harness {
    queue: MemoryQueue,
    model: Model,
    by_id: HashMap<JobId, usize>,
    /// Every lease handed out (and every extended one), with its job.
    held: Vec<(usize, Lease)>,
}

impl Harness {
    fn check_delivery(&self, i: usize, d: &Delivery, expires: Instant) {
        let j = &self.model.jobs[i];
        assert_eq!(d.job_id(), &j.id);
        assert_eq!(d.payload.as_ref(), &j.payload[..]);
        assert_eq!(d.priority, j.priority);
        assert_eq!(d.attempt, j.attempts);
        assert_eq!(d.max_attempts, j.max_attempts);
        assert_eq!(d.lease.token, j.token);
        assert_eq!(d.last_error, j.last_error);
        assert_eq!(d.lease.expires_at, expires);
        assert_eq!(d.lease.queue, Q);
    }

    async fn step(&mut self, n: usize, op: &Op) {
        match op {
            Op::Enqueue(specs) => {
                let result = self
                    .queue
                    .enqueue_batch(Q, specs.iter().map(new_job).collect())
                    .await;
                let expected = specs.iter().try_for_each(validate);
                let out = match (expected, result) {
                    (Err(want), Err(got)) => {
                        assert_eq!(error_kind(&got), want);
                        return;
                    }
                    (Ok(()), Ok(out)) => out,
                    (want, got) => panic!("enqueue: expected {want:?}, got {got:?}"),
                };
                let now = Instant::now();
                let m = &mut self.model;
                m.promote(now);
                m.keys.retain(|&(_, _, expires)| expires > now);
                assert_eq!(out.len(), specs.len());
                for (spec, got) in specs.iter().zip(out) {
                    if let Some(k) = spec.key
                        && let Some(&(_, existing, _)) = m.keys.iter().find(|(key, ..)| *key == k)
                    {
                        assert!(got.duplicate, "key {k} should dedupe");
                        assert_eq!(got.id, m.jobs[existing].id);
                        continue;
                    }
                    assert!(!got.duplicate);
                    let i = m.jobs.len();
                    assert!(
                        self.by_id.insert(got.id.clone(), i).is_none(),
                        "id {} reused",
                        got.id
                    );
                    m.jobs.push(MJob {
                        id: got.id,
                        payload: spec.payload.clone(),
                        priority: spec.priority,
                        max_attempts: spec.max_attempts,
                        attempts: 0,
                        token: 0,
                        last_error: None,
                        st: St::Gone,
                    });
                    if spec.delay_ms == 0 {
                        m.make_ready(i);
                    } else {
                        m.jobs[i].st = St::Delayed(now + Duration::from_millis(spec.delay_ms));
                    }
                    if let Some(k) = spec.key {
                        m.keys.push((k, i, now + WINDOW));
                    }
                }
            }
            Op::Dequeue {
                max,
                lease_ms,
                wait_ms,
            } => {
                let lease = Duration::from_millis(*lease_ms);
                let start = Instant::now();
                let deadline = start + Duration::from_millis(*wait_ms);
                let expected_at = if *max == 0 {
                    start
                } else {
                    self.model.return_time(start, deadline)
                };
                let got = self
                    .queue
                    .dequeue(Q, *max, lease, deadline - start)
                    .await
                    .unwrap();
                let now = Instant::now();
                assert!(
                    now >= expected_at && now <= expected_at + TIMER_SLACK,
                    "dequeue returned at +{:?}, expected +{:?}",
                    now - start,
                    expected_at - start
                );
                if *max == 0 {
                    assert!(got.is_empty());
                    return;
                }
                self.model.promote(now);
                let want = self.model.take(*max, now + lease);
                let got_idx: Vec<usize> = got.iter().map(|d| self.by_id[d.job_id()]).collect();
                assert_eq!(got_idx, want, "which jobs, in which order");
                for (d, &i) in got.iter().zip(&want) {
                    self.check_delivery(i, d, now + lease);
                    self.held.push((i, d.lease.clone()));
                }
            }
            Op::Ack(k) | Op::Nack(k, _) | Op::Extend(k, _) => {
                if self.held.is_empty() {
                    return;
                }
                let (i, lease) = self.held[k % self.held.len()].clone();
                let now = Instant::now();
                self.model.promote(now);
                let valid = self.model.valid_lease(i, lease.token);
                match op {
                    Op::Ack(_) => {
                        let got = self.queue.ack(&lease).await;
                        if valid {
                            got.unwrap();
                            self.model.jobs[i].st = St::Gone;
                        } else {
                            assert_eq!(error_kind(&got.unwrap_err()), "LeaseLost");
                        }
                    }
                    Op::Nack(_, after) => {
                        let reason = format!("reason {n}");
                        let retry = after.map_or(Retry::DeadLetter, |ms| {
                            Retry::After(Duration::from_millis(ms))
                        });
                        let got = self.queue.nack(&lease, retry, &reason).await;
                        if !valid {
                            assert_eq!(error_kind(&got.unwrap_err()), "LeaseLost");
                            return;
                        }
                        let m = &mut self.model;
                        let spent = m.jobs[i].attempts >= m.jobs[i].max_attempts;
                        let want = match retry {
                            Retry::After(delay) if !spent => {
                                m.jobs[i].last_error = Some(reason);
                                if delay.is_zero() {
                                    m.make_ready(i);
                                } else {
                                    m.jobs[i].st = St::Delayed(now + delay);
                                }
                                NackOutcome::Retrying { delay }
                            }
                            _ => {
                                m.kill(i, reason);
                                NackOutcome::DeadLettered
                            }
                        };
                        assert_eq!(got.unwrap(), want);
                    }
                    Op::Extend(_, ms) => {
                        let lease_for = Duration::from_millis(*ms);
                        let got = self.queue.extend_lease(&lease, lease_for).await;
                        if valid {
                            let extended = got.unwrap();
                            assert_eq!(extended.expires_at, now + lease_for);
                            assert_eq!(extended.token, lease.token);
                            self.model.jobs[i].st = St::Leased(now + lease_for);
                            self.held.push((i, extended));
                        } else {
                            assert_eq!(error_kind(&got.unwrap_err()), "LeaseLost");
                        }
                    }
                    _ => unreachable!(),
                }
            }
            Op::Advance(ms) => tokio::time::advance(Duration::from_millis(*ms)).await,
            Op::RequeueDead(k) => {
                let now = Instant::now();
                let m = &mut self.model;
                m.promote(now);
                let pick = k % (m.dead.len() + 1);
                let (id, want) = match m.dead.get(pick) {
                    Some(&(i, _)) => (m.jobs[i].id.clone(), 1),
                    // Not dead: some other job's id, or one never handed out.
                    None => (
                        m.jobs
                            .iter()
                            .find(|j| j.st != St::Dead)
                            .map_or(JobId::from("424242"), |j| j.id.clone()),
                        0,
                    ),
                };
                // The same id twice counts once.
                let got = self.queue.requeue_dead(Q, &[id.clone(), id]).await.unwrap();
                assert_eq!(got, want);
                if want == 1 {
                    let (i, reason) = m.dead.remove(pick);
                    m.jobs[i].attempts = 0;
                    m.jobs[i].last_error = Some(reason);
                    m.make_ready(i);
                }
            }
        }
    }

    async fn compare_state(&mut self) {
        let now = Instant::now();
        self.model.promote(now);
        assert_eq!(self.queue.stats(Q).await.unwrap(), self.model.stats());
        let dead = self.queue.dead_letters(Q, 100).await.unwrap();
        let got: Vec<(JobId, Vec<u8>, u8, u32, String)> = dead
            .into_iter()
            .map(|d| {
                (
                    d.job_id,
                    d.payload.to_vec(),
                    d.priority,
                    d.attempts,
                    d.reason,
                )
            })
            .collect();
        let want: Vec<(JobId, Vec<u8>, u8, u32, String)> = self
            .model
            .dead
            .iter()
            .map(|(i, reason)| {
                let j = &self.model.jobs[*i];
                (
                    j.id.clone(),
                    j.payload.clone(),
                    j.priority,
                    j.attempts,
                    reason.clone(),
                )
            })
            .collect();
        assert_eq!(got, want, "dead letters, oldest first");
    }
}

fn run(ops: &[Op]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut h = Harness {
            queue: MemoryQueue::with_config(MemoryQueueConfig {
                max_payload_bytes: MAX_PAYLOAD,
                dedupe_window: WINDOW,
                dead_letter_retention: Some(RETENTION),
            }),
            model: Model::default(),
            by_id: HashMap::new(),
            held: Vec::new(),
        };
        for (n, op) in ops.iter().enumerate() {
            h.step(n, op).await;
            h.compare_state().await;
        }
        // Let everything fall due, then drain: what remains must match too.
        tokio::time::advance(Duration::from_secs(5)).await;
        h.compare_state().await;
        let got = h
            .queue
            .dequeue(Q, 1000, Duration::from_secs(1), Duration::ZERO)
            .await
            .unwrap();
        let now = Instant::now();
        let want = h.model.take(1000, now + Duration::from_secs(1));
        let got_idx: Vec<usize> = got.iter().map(|d| h.by_id[d.job_id()]).collect();
        assert_eq!(got_idx, want);
    });
}

proptest! {
    // 64 cases by default (a fraction of a second); `PROPTEST_CASES=5000` for a long hunt.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(64)
    ))]

    #[test]
    fn memory_queue_matches_the_model(ops in prop::collection::vec(op(), 1..60)) {
        run(&ops);
    }
}

/// A fixed sequence through the interesting paths, so a regression shows up without
/// relying on the random search to find it again.
#[test]
fn scripted_sequence_matches_the_model() {
    let spec = |payload: &[u8], priority, delay_ms, max_attempts, key| JobSpec {
        payload: payload.to_vec(),
        priority,
        delay_ms,
        max_attempts,
        key,
    };
    run(&[
        Op::Enqueue(vec![
            spec(b"a", 1, 0, 2, Some(0)),
            spec(b"b", 2, 200, 1, None),
            spec(b"c", 1, 0, 1, Some(0)),
        ]),
        Op::Dequeue {
            max: 1,
            lease_ms: 100,
            wait_ms: 0,
        },
        Op::Dequeue {
            max: 2,
            lease_ms: 300,
            wait_ms: 800,
        },
        Op::Dequeue {
            max: 3,
            lease_ms: 100,
            wait_ms: 800,
        },
        Op::Ack(0),
        Op::Nack(2, Some(100)),
        Op::Advance(400),
        Op::Dequeue {
            max: 3,
            lease_ms: 100,
            wait_ms: 500,
        },
        Op::Extend(3, 200),
        Op::Advance(300),
        Op::RequeueDead(0),
        Op::Enqueue(vec![
            spec(b"d", 9, 0, 3, Some(0)),
            spec(b"toolongpayload", 0, 0, 1, None),
        ]),
        Op::Enqueue(vec![spec(b"d", 9, 0, 3, Some(0))]),
        Op::Dequeue {
            max: 4,
            lease_ms: 100,
            wait_ms: 100,
        },
        Op::Nack(4, None),
        Op::RequeueDead(5),
    ]);
}
