//! Leases: what a worker holds between `dequeue` and `ack`/`nack`, and how one outlives
//! the broker's consumer timeout.
//!
//! A lease starts as the unacked delivery itself ([`Place::Delivered`]). The broker
//! closes a channel whose oldest unacked delivery is older than its `consumer_timeout`
//! (30 minutes by default; RabbitMQ 3.10 has no per-queue setting), which would return
//! every delivery of that channel. So before that deadline a lease that must last longer
//! is *parked* ([`Place::Parked`]): a copy of the job is published to a queue of its own
//! (`<work>~lease~<digest>`), with a per-message TTL equal to the lease, dead-lettering
//! into the work queue; then the delivery is acked. From then on:
//!
//! - the worker dies: the copy expires when the lease would have, and goes back to the
//!   work queue (attempt + 1), exactly like an expired delivery;
//! - `extend_lease`: a new copy with the new TTL is published, then the old one (the
//!   queue's head) is removed;
//! - `ack`: the park queue is deleted, copy and all. If the copy had already expired
//!   (the delete removes nothing), the ack is refused with `LeaseLost`;
//! - `nack`: the retry or dead-letter copy is published, then the park queue deleted.
//!
//! Every step publishes before it removes, so a crash in between duplicates a job rather
//! than loses it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use lapin::Acker;
use lapin::message::Delivery as AmqpDelivery;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeleteOptions};
use lapin::types::ShortString;
use tokio::time::Instant;

use super::envelope::{self, Job};
use super::link::{COMMAND_TIMEOUT, Outgoing, bounded, lock, map_err};
use super::topology::{MAX_DELAY, QueueSpec};
use super::{Inner, Inspected, QueueState, inspect, lease_lost, noun, requeue};
use crate::{Lease, QueueError};
use Fault::{Failed, Lost};

/// One lease: a job handed to a worker and not yet acked or nacked.
pub(super) struct Held {
    pub(super) place: Place,
    pub(super) job: Job,
    pub(super) payload: Bytes,
    pub(super) attempt: u32,
    pub(super) expires_at: Instant,
}

/// Where the leased job is on the broker.
pub(super) enum Place {
    /// Unacked on the channel that received it, which the broker closes at `deadline`
    /// (its consumer timeout, less a margin) unless the lease is parked first.
    Delivered { acker: Acker, deadline: Instant },
    /// Acked; a copy waits in `queue` until the lease ends (see the module docs).
    /// `serial` tells the current copy from older ones.
    Parked { queue: QueueSpec, serial: u32 },
}

impl Held {
    /// False once the delivery's channel closed: the broker gave the job back.
    pub(super) fn usable(&self) -> bool {
        match &self.place {
            Place::Delivered { acker, .. } => acker.usable(),
            Place::Parked { .. } => true,
        }
    }

    /// True when a delivery nears the broker's timeout and has to be parked to live on.
    fn due_for_parking(&self, now: Instant, ahead: Duration) -> bool {
        matches!(&self.place, Place::Delivered { deadline, .. } if *deadline <= crate::later(now, ahead))
            && self.expires_at > now
    }
}

/// The error for a lease longer than one parked lease can be (`MAX_DELAY`, a message TTL),
/// from `dequeue` and `extend_lease` alike.
pub(super) fn lease_too_long(lease: Duration) -> QueueError {
    QueueError::InvalidJob(format!(
        "a lease of {lease:?} is longer than this backend holds one ({MAX_DELAY:?}, a message \
         TTL); take a shorter one and renew it with extend_lease"
    ))
}

/// How far ahead of the broker's deadline the reaper parks a delivery.
fn park_ahead(reap_interval: Duration) -> Duration {
    reap_interval
        .saturating_mul(4)
        .max(Duration::from_millis(200))
}

impl Inner {
    /// Publishes `job` as a dead letter with the reason (confirmed).
    pub(super) async fn publish_dead(
        &self,
        state: &QueueState,
        job: &Job,
        payload: &Bytes,
        attempts: u32,
        reason: &str,
    ) -> Result<(), QueueError> {
        let message = Outgoing {
            queue: state.names.dead_spec(),
            payload: payload.clone(),
            properties: job.dead_properties(attempts, reason)?,
        };
        self.publish_all(std::slice::from_ref(&message)).await?;
        tracing::info!(queue = %state.names.queue, job = %job.id, reason, "job dead-lettered");
        Ok(())
    }

    /// Dead-letters a delivery that never became a lease: publish, then ack. If the ack is
    /// lost (channel gone), the job is delivered again and is also a dead letter: a
    /// duplicate, never a loss.
    pub(super) async fn dead_letter_delivery(
        &self,
        state: &QueueState,
        acker: &Acker,
        job: &Job,
        payload: &Bytes,
        attempts: u32,
        reason: &str,
    ) -> Result<(), QueueError> {
        if let Err(e) = self
            .publish_dead(state, job, payload, attempts, reason)
            .await
        {
            let _ = bounded("nack", acker.nack(requeue())).await;
            return Err(e);
        }
        let _ = bounded("ack", acker.ack(BasicAckOptions::default())).await;
        Ok(())
    }

    /// Removes the job from where the lease kept it: acks the delivery or deletes the
    /// park queue. False when it was no longer there (channel closed, copy expired): the
    /// job was (or will be) delivered again.
    pub(super) async fn finish(&self, state: &QueueState, held: &Held) -> bool {
        match &held.place {
            Place::Delivered { acker, .. } => {
                matches!(
                    bounded("ack", acker.ack(BasicAckOptions::default())).await,
                    Ok(true)
                )
            }
            Place::Parked { queue, .. } => match self.delete(queue.name()).await {
                Ok(removed) => {
                    lock(&state.parked).remove(queue.name());
                    removed > 0
                }
                Err(e) => {
                    tracing::warn!(error = %e, queue = queue.name(), "could not delete a park queue");
                    false
                }
            },
        }
    }

    /// Gives the job back after a failed nack: a delivery is requeued; a parked copy
    /// returns by itself when the lease would have ended.
    pub(super) async fn release(&self, held: &Held) {
        if let Place::Delivered { acker, .. } = &held.place {
            let _ = bounded("nack", acker.nack(requeue())).await;
        }
    }

    /// Deletes a queue (with its messages); returns how many messages it held.
    pub(super) async fn delete(&self, name: &str) -> Result<u32, QueueError> {
        let link = self.connector.get().await?;
        let admin = link.admin().await?;
        let removed = admin
            .queue_delete(ShortString::from(name), QueueDeleteOptions::default())
            .await
            .map_err(|e| map_err("delete a queue", e))?;
        link.forget(name);
        Ok(removed)
    }

    /// Removes the lease if it is current; `Err(LeaseLost)` otherwise. A lease found
    /// expired is handled as an expiry (nacked back, or dead-lettered).
    pub(super) async fn claim(&self, lease: &Lease) -> Result<(Arc<QueueState>, Held), QueueError> {
        let state = self.state(&lease.queue)?;
        let key = (lease.job_id.clone(), lease.token);
        // A lease being moved (parked, or its parked copy renewed) is waited for, not
        // taken for gone: an ack racing a heartbeat must not be refused.
        let held = state.settled(&key, |leases| leases.remove(&key)).await;
        let Some(held) = held else {
            return Err(lease_lost(lease));
        };
        if !held.usable() {
            return Err(lease_lost(lease));
        }
        if held.expires_at <= Instant::now() {
            self.expire(&state, held).await;
            return Err(lease_lost(lease));
        }
        Ok((state, held))
    }

    /// A lease ran out: give the job back (nack with requeue), or dead-letter it when that
    /// was its last attempt. A parked copy needs nothing: it expires on the broker at the
    /// same time and goes back by itself (and is dead-lettered by the consumer that gets
    /// it, if that was the last attempt).
    pub(super) async fn expire(&self, state: &QueueState, held: Held) {
        let Place::Delivered { acker, .. } = &held.place else {
            return;
        };
        if !acker.usable() {
            return;
        }
        if held.attempt >= held.job.max_attempts {
            let reason = format!(
                "lease expired after {} {}",
                held.attempt,
                noun(held.attempt)
            );
            let _ = self
                .dead_letter_delivery(
                    state,
                    acker,
                    &held.job,
                    &held.payload,
                    held.attempt,
                    &reason,
                )
                .await;
        } else {
            tracing::debug!(queue = %state.names.queue, job = %held.job.id, attempt = held.attempt, "lease expired; returning the job");
            let _ = bounded("nack", acker.nack(requeue())).await;
        }
    }

    /// Expires what ran out, parks leases that near the broker's timeout, and hands back
    /// buffered deliveries that near it.
    pub(super) async fn reap_once(self: &Arc<Self>) {
        let states: Vec<Arc<QueueState>> = lock(&self.queues).values().cloned().collect();
        let now = Instant::now();
        let ahead = park_ahead(self.config.reap_interval);
        for state in states {
            let (expired, to_park) = {
                // One pass, no key copies: this runs every `reap_interval` over every lease
                // of a busy worker.
                let mut leases = lock(&state.leases);
                let mut moving = lock(&state.moving);
                let mut expired = Vec::new();
                let mut to_park = Vec::new();
                for (key, held) in leases.extract_if(|_, h| {
                    h.expires_at <= now || !h.usable() || h.due_for_parking(now, ahead)
                }) {
                    if held.expires_at <= now || !held.usable() {
                        expired.push(held);
                    } else {
                        // Marked while the table is locked, so no operation on the lease
                        // sees it missing.
                        moving.insert(key.clone());
                        to_park.push((key, held));
                    }
                }
                (expired, to_park)
            };
            for held in expired {
                self.expire(&state, held).await;
            }
            for (key, held) in to_park {
                // Each in a task of its own: one slow park (a quorum queue to declare on a
                // busy broker) must not hold back the others' deadlines. Nobody waits for
                // it here; operations on the lease wait for the move to end.
                let lease_for = held.expires_at.saturating_duration_since(Instant::now());
                let expires_at = held.expires_at;
                drop(self.spawn_move(&state, key, held, lease_for, expires_at));
            }
            self.hand_back_aged(&state, crate::later(now, ahead)).await;
        }
    }

    /// Deliveries that waited in the buffer (no `dequeue` took them: the workers were
    /// busy) until they near the broker's consumer timeout go back to the work queue
    /// before the broker closes their channel, which would return every delivery and
    /// lease on it and count an attempt for each. Nacking with requeue would count an
    /// attempt too (the quorum queue's `x-delivery-count`), so each is published again
    /// as a copy that carries only the attempts really made (this delivery never ran),
    /// then acked: copy first, so a failure in between duplicates the job, never loses
    /// it. A copy that cannot be published stays in the buffer and is tried again on the
    /// next round.
    async fn hand_back_aged(self: &Arc<Self>, state: &Arc<QueueState>, by: Instant) {
        let aged = state.take_aged(self.config.max_lease(), by);
        let mut kept = Vec::new();
        for (received, d) in aged {
            if let Err(e) = self.hand_back(state, &d).await {
                tracing::warn!(queue = %state.names.queue, error = %e, "could not hand back a buffered delivery before the broker's consumer timeout");
                kept.push((received, d));
            }
        }
        state.put_back(kept);
    }

    /// Hands one buffered delivery back (see [`Inner::hand_back_aged`]).
    async fn hand_back(
        self: &Arc<Self>,
        state: &Arc<QueueState>,
        d: &AmqpDelivery,
    ) -> Result<(), QueueError> {
        let park_queue = envelope::park_queue(&d.properties);
        let payload = Bytes::copy_from_slice(&d.data);
        match inspect(&d.properties, d.delivery_tag) {
            Inspected::Dead {
                job,
                attempts,
                reason,
            } => {
                // What `dequeue` would have done with it. On failure it was given back
                // (nacked), so it is not kept either way.
                if let Err(e) = self
                    .dead_letter_delivery(state, &d.acker, &job, &payload, attempts, &reason)
                    .await
                {
                    tracing::warn!(error = %e, job = %job.id, "could not dead-letter a delivery; returned it");
                }
            }
            Inspected::Job {
                mut job,
                attempt,
                last_error,
            } => {
                job.prior_attempts = attempt - 1;
                job.last_error = last_error;
                let copy = Outgoing {
                    queue: state.names.work_spec(),
                    payload,
                    properties: job.properties()?,
                };
                self.publish_all(std::slice::from_ref(&copy)).await?;
                if !matches!(
                    bounded("ack", d.acker.ack(BasicAckOptions::default())).await,
                    Ok(true)
                ) {
                    // Its channel closed meanwhile: the broker returned the original too.
                    tracing::warn!(queue = %state.names.queue, job = %job.id, "a buffered delivery was returned by the broker while it was handed back: delivered twice");
                } else {
                    tracing::debug!(queue = %state.names.queue, job = %job.id, attempt, "buffered delivery handed back before the broker's consumer timeout");
                }
            }
        }
        if let Some(name) = park_queue {
            // A parked lease's copy that came back: nothing in its park queue is needed.
            self.forget_park_queue(state, name);
        }
        Ok(())
    }

    /// Extends a lease in place, or parks it (or renews its parked copy) when it has to
    /// outlive the delivery's deadline.
    pub(super) async fn extend(
        self: &Arc<Self>,
        lease: &Lease,
        lease_for: Duration,
    ) -> Result<Lease, QueueError> {
        let started = Instant::now();
        let state = self.state(&lease.queue)?;
        let key = (lease.job_id.clone(), lease.token);
        let expires_at = crate::later(started, lease_for);
        // Decided under the lock, acted on after it: the lock is never held across an
        // await.
        enum Next {
            Lost,
            Extended,
            TooLong,
            Expired(Option<Held>),
            Move(Option<Held>),
        }
        let next = state
            .settled(&key, |leases| match leases.get_mut(&key) {
                None => Next::Lost,
                Some(h) if !h.usable() => Next::Lost,
                Some(h) if h.expires_at > started => match &h.place {
                    Place::Delivered { deadline, .. } if expires_at <= *deadline => {
                        h.expires_at = expires_at;
                        Next::Extended
                    }
                    _ if lease_for > MAX_DELAY => Next::TooLong,
                    _ => Next::Move(state.begin_move(leases, &key)),
                },
                Some(_) => Next::Expired(leases.remove(&key)),
            })
            .await;
        let held = match next {
            Next::Lost | Next::Move(None) => return Err(lease_lost(lease)),
            Next::Extended => {
                return Ok(Lease {
                    expires_at,
                    ..lease.clone()
                });
            }
            Next::TooLong => return Err(lease_too_long(lease_for)),
            Next::Expired(held) => {
                if let Some(held) = held {
                    self.expire(&state, held).await;
                }
                return Err(lease_lost(lease));
            }
            Next::Move(Some(held)) => held,
        };
        // Measured from before the requests, like every expiry: conservative.
        match self
            .spawn_move(&state, key, held, lease_for, expires_at)
            .await
        {
            Ok(Ok(())) => Ok(Lease {
                expires_at,
                ..lease.clone()
            }),
            Ok(Err(Lost)) => Err(lease_lost(lease)),
            Ok(Err(Failed(e))) => Err(e),
            Err(e) => Err(QueueError::Backend {
                message: format!("moving a lease did not finish: {e}"),
                retryable: true,
                source: None,
            }),
        }
    }

    /// Parks a delivered lease, or renews a parked one, in a task of its own, and puts
    /// it back into the lease table when done (expiring at `expires_at`), unless it was
    /// lost. `key` must have been marked moving ([`QueueState::begin_move`]).
    ///
    /// A task, not inline: a heartbeat is dropped mid-call when its agent finishes (the
    /// worker selects between the two), and a move abandoned halfway would leave the
    /// lease out of the table with its delivery unacked (until the broker's consumer
    /// timeout closed the channel) or its parked copy waiting to come back as a second
    /// run. Run to the end, the move puts the lease back and the worker's ack finds it.
    fn spawn_move(
        self: &Arc<Self>,
        state: &Arc<QueueState>,
        key: LeaseKey,
        held: Held,
        lease_for: Duration,
        expires_at: Instant,
    ) -> tokio::task::JoinHandle<Result<(), Fault>> {
        let inner = Arc::clone(self);
        let state = Arc::clone(state);
        tokio::spawn(async move {
            // Ends the move however this task ends (even aborted): waiters are released.
            let mut done = MoveDone {
                state: Arc::clone(&state),
                key: Some(key.clone()),
                held: None,
            };
            let result = match &held.place {
                Place::Delivered { .. } => inner
                    .park(&state, held, &key.0, key.1, lease_for)
                    .await
                    .map_err(|(held, e)| (Some(held), e)),
                Place::Parked { .. } => inner.renew(&state, held, lease_for).await,
            };
            match result {
                Ok(mut held) => {
                    held.expires_at = expires_at;
                    done.held = Some(held);
                    Ok(())
                }
                Err((held, e)) => {
                    done.held = held;
                    Err(e)
                }
            }
        })
    }

    /// Moves a delivered lease to its park queue (see the module docs). On failure the
    /// lease stays a delivery.
    async fn park(
        &self,
        state: &QueueState,
        held: Held,
        job_id: &crate::JobId,
        token: u64,
        lease_for: Duration,
    ) -> Result<Held, (Held, Fault)> {
        let Place::Delivered { acker, .. } = &held.place else {
            return Ok(held);
        };
        let queue = state.names.park(job_id, token);
        lock(&state.parked).insert(queue.name().to_owned());
        let copy = match self.park_copy(&held, &queue, 1, lease_for) {
            Ok(c) => c,
            Err(e) => return Err((held, Failed(e))),
        };
        if let Err(e) = self.publish_all(std::slice::from_ref(&copy)).await {
            return Err((held, Failed(e)));
        }
        match tokio::time::timeout(COMMAND_TIMEOUT, acker.ack(BasicAckOptions::default())).await {
            Ok(Ok(true)) => {}
            Ok(_) => {
                // The delivery went back to the queue meanwhile: drop our copy, the lease
                // is lost.
                let _ = self.delete(queue.name()).await;
                return Err((held, Lost));
            }
            Err(_) => {
                // No answer (see `COMMAND_TIMEOUT`): the ack may never run, or run late
                // (a connection the broker stopped reading). Keep the copy, which comes
                // back by itself when the lease would have ended: at worst the job runs
                // twice, never not at all.
                tracing::warn!(queue = %state.names.queue, job = %held.job.id, "parking a lease: the original's ack got no answer; keeping the copy");
                return Err((held, Lost));
            }
        }
        tracing::debug!(queue = %state.names.queue, job = %held.job.id, "lease parked past the broker's consumer timeout");
        Ok(Held {
            place: Place::Parked { queue, serial: 1 },
            ..held
        })
    }

    /// Replaces a parked copy with one that expires `lease_for` from now.
    async fn renew(
        &self,
        _state: &QueueState,
        held: Held,
        lease_for: Duration,
    ) -> Result<Held, (Option<Held>, Fault)> {
        let Place::Parked { queue, serial } = &held.place else {
            return Ok(held);
        };
        let (queue, current) = (queue.clone(), *serial);
        let next = current.saturating_add(1);
        let copy = match self.park_copy(&held, &queue, next, lease_for) {
            Ok(c) => c,
            Err(e) => return Err((Some(held), Failed(e))),
        };
        if let Err(e) = self.publish_all(std::slice::from_ref(&copy)).await {
            return Err((Some(held), Failed(e)));
        }
        // Remove the copies older than the new one; they are at the head (FIFO). The
        // current one must be among them, or it expired (the job went back): lost.
        match self.drop_older_copies(queue.name(), current, next).await {
            Ok(true) => Ok(Held {
                place: Place::Parked {
                    queue,
                    serial: next,
                },
                ..held
            }),
            Ok(false) => {
                let _ = self.delete(queue.name()).await;
                Err((None, Lost))
            }
            // The old copy may still be there and expire early: report the error; the
            // next heartbeat tries again (and removes every older copy it finds).
            Err(e) => Err((
                Some(Held {
                    place: Place::Parked {
                        queue,
                        serial: next,
                    },
                    ..held
                }),
                Failed(e),
            )),
        }
    }

    /// Gets and removes copies at the head of `queue` with serials below `next`; true if
    /// the one with serial `current` was among them.
    async fn drop_older_copies(
        &self,
        queue: &str,
        current: u32,
        next: u32,
    ) -> Result<bool, QueueError> {
        let link = self.connector.get().await?;
        // A channel of its own: `basic.get` replies must not interleave with others.
        let channel = link.connection.create_channel();
        let channel = bounded("open a channel", channel).await?;
        let mut found = false;
        let result = async {
            loop {
                let got = channel
                    .basic_get(ShortString::from(queue), BasicGetOptions { no_ack: false })
                    .await
                    .map_err(|e| map_err("read a parked lease", e))?;
                let Some(message) = got else {
                    return Ok(found);
                };
                let serial = envelope::park_serial(&message.delivery.properties).unwrap_or(0);
                // Ack even the newest copy if it comes first: then the current one is
                // gone (expired), the lease is lost, and the queue is deleted anyway.
                bounded(
                    "remove a parked lease",
                    message.delivery.acker.ack(BasicAckOptions::default()),
                )
                .await?;
                found |= serial == current;
                if serial >= next {
                    return Ok(false);
                }
                if found {
                    return Ok(true);
                }
            }
        }
        .await;
        let _ = channel.close(200, "renewed".into()).await;
        result
    }

    /// The parked copy: as it should come back if the worker dies (attempt counted, "lease
    /// expired" as its last error), expiring when the lease ends.
    fn park_copy(
        &self,
        held: &Held,
        queue: &QueueSpec,
        serial: u32,
        lease_for: Duration,
    ) -> Result<Outgoing, QueueError> {
        let mut job = held.job.clone();
        job.prior_attempts = held.attempt;
        job.last_error = Some(format!("lease expired on attempt {}", held.attempt));
        Ok(Outgoing {
            queue: queue.clone(),
            payload: held.payload.clone(),
            properties: job.parked_properties(serial, lease_for, queue.name())?,
        })
    }

    /// A parked lease's copy came back to the work queue (its worker died, the lease
    /// ran out): nothing in its park queue is needed any more, so it goes.
    pub(super) fn forget_park_queue(self: &Arc<Self>, state: &Arc<QueueState>, name: String) {
        let inner = Arc::downgrade(self);
        let state = Arc::downgrade(state);
        tokio::spawn(async move {
            let Some(inner) = inner.upgrade() else { return };
            match inner.delete(&name).await {
                Ok(_) => {
                    if let Some(state) = state.upgrade() {
                        lock(&state.parked).remove(&name);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, queue = %name, "could not delete a park queue")
                }
            }
        });
    }
}

/// A lease's key in [`QueueState`]'s table: the job and the token of its delivery.
pub(super) type LeaseKey = (crate::JobId, u64);

impl QueueState {
    /// Runs `f` on the lease table once no move of `key` is in progress (see
    /// [`Inner::spawn_move`]), so that `f` sees the lease where it is, not missing.
    pub(super) async fn settled<R>(
        &self,
        key: &LeaseKey,
        mut f: impl FnMut(&mut std::collections::HashMap<LeaseKey, Held>) -> R,
    ) -> R {
        loop {
            // Registered before looking, so a move that ends between the look and the
            // wait is not missed.
            let moved = self.moved.notified();
            tokio::pin!(moved);
            moved.as_mut().enable();
            {
                let mut leases = lock(&self.leases);
                if !lock(&self.moving).contains(key) {
                    return f(&mut leases);
                }
            }
            moved.await;
        }
    }

    /// Takes a lease out of the table for a move, marked as moving (under the table's
    /// lock, which the caller holds).
    pub(super) fn begin_move(
        &self,
        leases: &mut std::collections::HashMap<LeaseKey, Held>,
        key: &LeaseKey,
    ) -> Option<Held> {
        let held = leases.remove(key)?;
        lock(&self.moving).insert(key.clone());
        Some(held)
    }

    /// Ends a move: the lease goes back into the table (unless it was lost) and waiting
    /// operations go on.
    fn end_move(&self, key: LeaseKey, held: Option<Held>) {
        {
            let mut leases = lock(&self.leases);
            lock(&self.moving).remove(&key);
            if let Some(held) = held {
                leases.insert(key, held);
            }
        }
        self.moved.notify_waiters();
    }
}

/// Ends a move when dropped (see [`QueueState::end_move`]).
struct MoveDone {
    state: Arc<QueueState>,
    key: Option<LeaseKey>,
    held: Option<Held>,
}

impl Drop for MoveDone {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.state.end_move(key, self.held.take());
        }
    }
}

/// Why a park or renewal did not happen.
pub(super) enum Fault {
    /// The job went back to the queue: the lease is lost.
    Lost,
    /// The broker could not be asked; the lease is unchanged.
    Failed(QueueError),
}
