//! Retries of transient delivery failures, with capped exponential backoff and jitter.
//!
//! PagerDuty asks for exactly this: retry 429, 5xx and network errors "after some time",
//! with a backoff; never retry a 400. A 429 is given longer waits than an outage (see
//! [`Backoff`]). Sleeps use `tokio::time`, so tests run it under paused time.

use std::time::Duration;

use tokio::time::Instant;

use super::events::RetryScheduled;
use super::{Notice, Notifier};
use crate::{Error, Result};

/// When to retry. The n-th retry waits `initial × multiplier^(n-1)`, capped at
/// `max_delay` (at `throttled_max_delay` after a 429, [`Error::Throttled`]), then
/// shortened by a random fraction of up to `jitter` (so a burst of failures does not
/// retry in lockstep).
///
/// The two caps answer two different faults. A target that is down (5xx, timeouts,
/// refused connections) is asked again every few seconds, so delivery resumes within
/// `max_delay` of its recovery: behind a rate limiter's worker that is one request per
/// `max_delay` per routing key, far under any limit. A target that says it is sent too
/// much (429) is given longer pauses, as PagerDuty asks.
#[derive(Clone, Debug, PartialEq)]
pub struct Backoff {
    /// The wait before the first retry.
    pub initial: Duration,
    /// The longest wait between two attempts after a failure other than a 429.
    pub max_delay: Duration,
    /// The longest wait between two attempts after a 429 ([`Error::Throttled`]).
    pub throttled_max_delay: Duration,
    /// The growth of the wait from one retry to the next.
    pub multiplier: u32,
    /// In [0, 1]: each wait is drawn uniformly from `[(1 - jitter) × d, d]`.
    pub jitter: f64,
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// No retry starts later than this after the first attempt.
    pub max_elapsed: Duration,
}

impl Default for Backoff {
    /// 200 ms doubling to 5 s (to 30 s after a 429), half jitter, retried for up to 5
    /// minutes (PagerDuty suggests backing off "a few minutes" on 429); at most 100
    /// attempts.
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            throttled_max_delay: Duration::from_secs(30),
            multiplier: 2,
            jitter: 0.5,
            max_attempts: 100,
            max_elapsed: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// The wait before retry number `retry` (1-based), before jitter, after a failure
    /// other than a 429.
    pub fn delay(&self, retry: u32) -> Duration {
        self.capped(retry, self.max_delay)
    }

    /// The wait before retry number `retry` (1-based), before jitter, after `err`.
    pub fn delay_after(&self, retry: u32, err: &Error) -> Duration {
        match err {
            Error::Throttled { .. } => self.capped(retry, self.throttled_max_delay),
            _ => self.delay(retry),
        }
    }

    fn capped(&self, retry: u32, cap: Duration) -> Duration {
        let factor = self
            .multiplier
            .max(1)
            .checked_pow(retry.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial.checked_mul(factor).unwrap_or(cap).min(cap)
    }

    /// [`Self::delay_after`] shortened by the jitter.
    fn jittered(&self, retry: u32, err: &Error) -> Duration {
        let d = self.delay_after(retry, err);
        let cut = self.jitter.clamp(0.0, 1.0) * fastrand::f64();
        d.mul_f64(1.0 - cut)
    }
}

/// Wraps a notifier and retries its transient failures ([`crate::Error::is_transient`])
/// per a [`Backoff`]. Definite failures return at once. When the backoff is exhausted
/// the last error is returned, still transient: the caller keeps the incident pending
/// and may try again later.
#[derive(Clone, Debug)]
pub struct Retrying<N> {
    inner: N,
    backoff: Backoff,
}

impl<N: Notifier> Retrying<N> {
    /// Retries `inner` with the default [`Backoff`].
    pub fn new(inner: N) -> Self {
        Self::with_backoff(inner, Backoff::default())
    }

    /// Retries `inner` with `backoff`.
    pub fn with_backoff(inner: N, backoff: Backoff) -> Self {
        Retrying { inner, backoff }
    }

    /// The wrapped notifier.
    pub fn inner(&self) -> &N {
        &self.inner
    }

    /// The backoff in force.
    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }
}

#[async_trait::async_trait]
impl<N: Notifier> Notifier for Retrying<N> {
    async fn send(&self, notice: &Notice) -> Result<()> {
        let started = Instant::now();
        let max_attempts = self.backoff.max_attempts.max(1);
        let mut attempt = 1;
        loop {
            let err = match self.inner.send(notice).await {
                Ok(()) => return Ok(()),
                Err(e) if !e.is_transient() => return Err(e),
                Err(e) => e,
            };
            let delay = self.backoff.jittered(attempt, &err);
            let gave_up = if attempt >= max_attempts {
                Some(format!("{attempt} attempts"))
            } else if started.elapsed() + delay > self.backoff.max_elapsed {
                Some(format!("{attempt} attempts over {:?}", started.elapsed()))
            } else {
                None
            };
            if let Some(why) = gave_up {
                return Err(match err {
                    Error::Escalation {
                        policy,
                        message,
                        transient,
                    } => Error::Escalation {
                        policy,
                        message: format!("{message} (gave up after {why})"),
                        transient,
                    },
                    Error::Throttled { policy, message } => Error::Throttled {
                        policy,
                        message: format!("{message} (gave up after {why})"),
                    },
                    other => other,
                });
            }
            RetryScheduled {
                policy: self.inner.policy(),
                notice,
                attempt,
                delay,
            }
            .emit();
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} (retrying up to {} attempts)",
            self.inner.describe(),
            self.backoff.max_attempts.max(1)
        )
    }

    fn policy(&self) -> &str {
        self.inner.policy()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_to_the_cap() {
        let b = Backoff::default();
        let got: Vec<_> = (1..=7).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(got, [200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(b.delay(200), Duration::from_secs(5));
    }

    #[test]
    fn a_429_doubles_to_the_longer_cap() {
        let b = Backoff::default();
        let throttled = Error::Throttled {
            policy: "pd".into(),
            message: "429".into(),
        };
        let down = crate::escalate::error("pd", "503", true);
        let got: Vec<_> = (1..=10)
            .map(|n| b.delay_after(n, &throttled).as_millis())
            .collect();
        assert_eq!(
            got,
            [200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000]
        );
        assert_eq!(b.delay_after(200, &throttled), Duration::from_secs(30));
        assert_eq!(b.delay_after(9, &down), Duration::from_secs(5));
    }
}
