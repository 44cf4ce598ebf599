//! Retrying what a transient storage fault interrupted.
//!
//! An object-store, catalog or bus error that may pass (a network blip, a restarted
//! server, throttling: [`overseer_dal::Error::is_transient`]) is not a verdict and not a
//! reason to stop: the runner retries the step with capped exponential backoff, holding
//! the notifications it serves (uncommitted) meanwhile. Only a definite error — a record
//! that does not decode, a check that panics or runs out of time — becomes an `error`
//! verdict, or stops the runner where it cannot go on.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::{Error, Result};

/// The first pause after a transient fault.
pub const FIRST_PAUSE: Duration = Duration::from_millis(20);
/// The longest pause between two attempts.
pub const MAX_PAUSE: Duration = Duration::from_secs(5);

/// Storage faults met and retried, by step (`run`, `verdict`, `select`, `watermarks`,
/// `bus`).
pub const TRANSIENT_FAULTS: &str = "overseer_runner_transient_faults_total";

/// Runner steps waiting out a transient storage fault now (0: not held up by storage).
pub const STALLED: &str = "overseer_runner_stalled";

static STALLED_STEPS: overseer_dal::stall::Stalls = overseer_dal::stall::Stalls::new(STALLED);

/// Runner steps of this process waiting out a transient storage fault now (readiness).
pub fn stalled_steps() -> i64 {
    STALLED_STEPS.now()
}

/// Whether `e` is a storage fault that may pass on retry. A check's own timeout is not:
/// it is the check's verdict on itself.
pub fn is_storage_blip(e: &Error) -> bool {
    matches!(e, Error::Dal(d) if d.is_transient())
}

/// Counts and logs one transient fault of `step`; `attempt` is how many in a row.
pub fn note_fault(step: &'static str, attempt: u32, e: &dyn std::fmt::Display) {
    metrics::counter!(TRANSIENT_FAULTS, "step" => step).increment(1);
    // The first of a streak and then every tenth: a long outage is visible, a blip is not
    // a flood.
    if attempt == 1 || attempt.is_multiple_of(10) {
        tracing::warn!(step, attempt, error = %e, "transient storage fault, retrying");
    } else {
        tracing::debug!(step, attempt, error = %e, "transient storage fault, retrying");
    }
}

/// The pause before attempt `attempt + 1`.
pub fn pause(attempt: u32) -> Duration {
    FIRST_PAUSE
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(MAX_PAUSE)
}

/// Runs `op` until it succeeds or fails definitely, retrying transient storage faults
/// ([`is_storage_blip`]) with backoff. `None` if `stop` is cancelled while waiting to retry.
pub async fn retrying<T, F, Fut>(
    step: &'static str,
    stop: &CancellationToken,
    mut op: F,
) -> Option<Result<T>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut attempt = 0u32;
    let mut stalled: Option<overseer_dal::stall::Stalled> = None;
    loop {
        match op().await {
            Err(e) if is_storage_blip(&e) => {
                attempt += 1;
                stalled.get_or_insert_with(|| STALLED_STEPS.enter());
                note_fault(step, attempt, &e);
                tokio::select! {
                    _ = stop.cancelled() => return None,
                    _ = tokio::time::sleep(pause(attempt)) => {}
                }
            }
            done => return Some(done),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blip() -> Error {
        Error::Dal(overseer_dal::Error::Catalog {
            message: "connection reset".into(),
            transient: true,
            source: None,
        })
    }

    #[test]
    fn pauses_grow_to_a_cap() {
        assert_eq!(pause(1), FIRST_PAUSE);
        assert_eq!(pause(2), FIRST_PAUSE * 2);
        assert_eq!(pause(40), MAX_PAUSE);
    }

    #[test]
    fn only_transient_storage_faults_are_blips() {
        assert!(is_storage_blip(&blip()));
        assert!(!is_storage_blip(&Error::TimedOut(Duration::from_secs(1))));
        assert!(!is_storage_blip(&Error::Panicked("bug".into())));
        assert!(!is_storage_blip(&Error::Dal(
            overseer_dal::Error::Corrupt {
                what: "segment".into(),
                message: "bad".into(),
            }
        )));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_blips_stops_on_definite_errors_and_on_stop() {
        let stop = CancellationToken::new();
        let mut n = 0;
        let mut stalled_while_failing = Vec::new();
        let got = retrying("run", &stop, || {
            n += 1;
            let fail = n < 4;
            // Counted stalled from the first fault of the streak (only this test's retries
            // run in this process).
            stalled_while_failing.push(stalled_steps());
            async move { if fail { Err(blip()) } else { Ok(n) } }
        })
        .await;
        assert!(matches!(got, Some(Ok(4))));
        assert_eq!(stalled_while_failing, [0, 1, 1, 1]);
        assert_eq!(stalled_steps(), 0, "not stalled once it succeeded");

        let got: Option<Result<()>> = retrying("run", &stop, || async {
            Err(Error::Panicked("bug".into()))
        })
        .await;
        assert!(
            matches!(got, Some(Err(Error::Panicked(_)))),
            "definite: not retried"
        );

        stop.cancel();
        let got: Option<Result<()>> = retrying("run", &stop, || async { Err(blip()) }).await;
        assert!(got.is_none(), "stopped while waiting to retry");
    }
}
