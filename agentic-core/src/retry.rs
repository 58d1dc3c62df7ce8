//! Retry policy: how many attempts a task gets and how long to wait between them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Attempts and exponential backoff with jitter for one task.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetryPolicy {
    /// Runs before the task fails for good (at least 1). A worker that dies mid-run counts
    /// as a failed run.
    pub max_attempts: u32,
    /// The delay before the second attempt (before jitter).
    #[serde(with = "crate::serde_ms")]
    pub initial_backoff: Duration,
    /// The longest delay between attempts.
    #[serde(with = "crate::serde_ms")]
    pub max_backoff: Duration,
    /// Growth factor of the delay per failed attempt.
    pub multiplier: f64,
    /// Randomise each delay to within `[delay / 2, delay]` ("equal jitter"), so that many
    /// tasks failing together do not retry in lockstep, while keeping a floor that still
    /// backs off.
    pub jitter: bool,
}

impl RetryPolicy {
    /// True for the default policy (which plans and task envelopes leave out of their JSON).
    pub fn is_default(&self) -> bool {
        *self == RetryPolicy::default()
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
            multiplier: 2.0,
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// One attempt, no retries.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// `max_attempts` attempts with the default backoff.
    pub fn attempts(max_attempts: u32) -> Self {
        RetryPolicy {
            max_attempts,
            ..Self::default()
        }
    }

    /// Sets the initial and maximum backoff.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max;
        self
    }

    /// Turns jitter on or off.
    pub fn jitter(mut self, jitter: bool) -> Self {
        self.jitter = jitter;
        self
    }

    /// The delay before the next attempt after `failures` failed attempts (1-based):
    /// `initial * multiplier^(failures - 1)`, capped at `max_backoff`, then jittered.
    pub fn delay_after(&self, failures: u32) -> Duration {
        // `powi` saturates to infinity for huge exponents, and the cap below takes over.
        let exp = i32::try_from(failures.saturating_sub(1)).unwrap_or(i32::MAX);
        let multiplier = if self.multiplier.is_finite() && self.multiplier >= 1.0 {
            self.multiplier
        } else {
            1.0
        };
        let cap = self.max_backoff.as_secs_f64();
        let raw = (self.initial_backoff.as_secs_f64() * multiplier.powi(exp)).min(cap);
        let raw = if raw.is_finite() && raw >= 0.0 {
            raw
        } else {
            cap
        };
        let secs = if self.jitter {
            raw / 2.0 + fastrand::f64() * raw / 2.0
        } else {
            raw
        };
        Duration::from_secs_f64(secs.max(0.0))
    }
}
