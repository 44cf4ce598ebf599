//! Escalation telemetry as named events: each one logs (structured fields) and updates
//! its metric. Labels are low-cardinality: the policy name and a fixed outcome.

use std::time::Duration;

use super::Notice;
use crate::Result;

/// Counter: delivery attempts, labelled `policy` and `outcome`
/// ([`OUTCOME_OK`] | [`OUTCOME_TRANSIENT`] | [`OUTCOME_DEFINITE`]).
pub const ATTEMPTS_TOTAL: &str = "overseer_escalation_attempts_total";
/// Counter: retries scheduled after a transient failure, labelled `policy`.
pub const RETRIES_TOTAL: &str = "overseer_escalation_retries_total";
/// Counter: queued notices replaced by a later one for the same dedup_key, labelled `policy`.
pub const COALESCED_TOTAL: &str = "overseer_escalation_coalesced_total";
/// Gauge: notices waiting for a rate-limit token, labelled `policy`.
pub const QUEUE_DEPTH: &str = "overseer_escalation_queue_depth";

/// `outcome` of an attempt the target accepted.
pub const OUTCOME_OK: &str = "ok";
/// `outcome` of an attempt that failed in a way a retry may fix.
pub const OUTCOME_TRANSIENT: &str = "transient";
/// `outcome` of an attempt the target refused for good.
pub const OUTCOME_DEFINITE: &str = "definite";

/// One delivery attempt to a target finished.
pub(crate) struct AttemptFinished<'a> {
    pub(crate) policy: &'a str,
    pub(crate) notice: &'a Notice,
    pub(crate) result: &'a Result<()>,
}

impl AttemptFinished<'_> {
    pub(crate) fn emit(self) {
        let n = self.notice;
        let outcome = match self.result {
            Ok(()) => {
                tracing::debug!(
                    policy = self.policy,
                    action = n.action.as_str(),
                    check = %n.check,
                    dedup_key = %n.dedup_key,
                    "escalation delivered"
                );
                OUTCOME_OK
            }
            Err(e) => {
                let outcome = if e.is_transient() {
                    OUTCOME_TRANSIENT
                } else {
                    OUTCOME_DEFINITE
                };
                tracing::warn!(
                    policy = self.policy,
                    action = n.action.as_str(),
                    check = %n.check,
                    dedup_key = %n.dedup_key,
                    outcome,
                    error = %e,
                    "escalation attempt failed"
                );
                outcome
            }
        };
        metrics::counter!(ATTEMPTS_TOTAL, "policy" => self.policy.to_owned(), "outcome" => outcome)
            .increment(1);
    }
}

/// A transient failure will be retried after `delay`.
pub(crate) struct RetryScheduled<'a> {
    pub(crate) policy: &'a str,
    pub(crate) notice: &'a Notice,
    pub(crate) attempt: u32,
    pub(crate) delay: Duration,
}

impl RetryScheduled<'_> {
    pub(crate) fn emit(self) {
        tracing::info!(
            policy = self.policy,
            dedup_key = %self.notice.dedup_key,
            attempt = self.attempt,
            delay_ms = self.delay.as_millis() as u64,
            "escalation retry scheduled"
        );
        metrics::counter!(RETRIES_TOTAL, "policy" => self.policy.to_owned()).increment(1);
    }
}

/// A queued notice was replaced by a later one for the same dedup_key.
pub(crate) struct NoticeCoalesced<'a> {
    pub(crate) policy: &'a str,
    pub(crate) dedup_key: &'a str,
}

impl NoticeCoalesced<'_> {
    pub(crate) fn emit(self) {
        tracing::debug!(
            policy = self.policy,
            dedup_key = self.dedup_key,
            "queued escalation replaced by a later one"
        );
        metrics::counter!(COALESCED_TOTAL, "policy" => self.policy.to_owned()).increment(1);
    }
}

/// The number of notices waiting for a rate-limit token changed.
pub(crate) struct QueueDepth<'a> {
    pub(crate) policy: &'a str,
    pub(crate) depth: usize,
}

impl QueueDepth<'_> {
    pub(crate) fn emit(self) {
        metrics::gauge!(QUEUE_DEPTH, "policy" => self.policy.to_owned()).set(self.depth as f64);
    }
}
