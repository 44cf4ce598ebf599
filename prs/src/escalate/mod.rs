//! Escalation transports: how one verdict reaches people.
//!
//! The state machine that decides *when* to notify (DESIGN invariant 5: pass→fail
//! triggers, fail→fail adds nothing, fail→pass resolves) is built on top of this module.
//! This module only *delivers* one [`Notice`] and says, when it could not, whether a
//! retry may help ([`crate::Error::is_transient`]).
//!
//! - [`Notice`], [`Action`], [`Severity`], [`dedup_key`]: what is said, and the stable
//!   identity of the incident it is about.
//! - [`Notifier`]: the one seam. Backends: [`LogNotifier`], [`WebhookNotifier`],
//!   [`PagerDutyNotifier`] and [`CustomNotifier`] (any async fn).
//! - [`Retrying`]: retries transient failures with capped exponential backoff and
//!   jitter; never retries definite ones.
//! - [`RateLimited`]: a token bucket per routing key; when out of tokens notices queue,
//!   coalesced by dedup_key, and nothing is dropped.
//! - [`redact`]: blanks configured sensitive fields out of details (invariant 7).
//!
//! A PagerDuty policy is typically stacked as
//! `RateLimited::spawn(Retrying::new(PagerDutyNotifier::from_env("PD_KEY", None)?), RateLimit::PAGERDUTY)`:
//! one token per notice, retries inside it (a 429 means the key is hot: waiting there
//! slows the whole key down, which is what PagerDuty asks for).
//!
//! Error classification, from the PagerDuty Events v2 contract, applied to every HTTP
//! transport: 2xx delivered; 429, 408, 5xx, timeouts and connection errors are
//! transient (a 429 as [`crate::Error::Throttled`], retried after longer waits); any
//! other status (400 above all) is definite and is never retried.
//!
//! Secrets (routing keys, webhook URLs, which often embed a token) never appear in
//! `Debug`, [`Notifier::describe`], logs or error messages.

mod custom;
mod events;
mod http;
mod log;
mod pagerduty;
mod rate;
mod retry;
mod webhook;

use sha2::{Digest, Sha256};

pub use custom::CustomNotifier;
pub use events::{
    ATTEMPTS_TOTAL, COALESCED_TOTAL, OUTCOME_DEFINITE, OUTCOME_OK, OUTCOME_TRANSIENT, QUEUE_DEPTH,
    RETRIES_TOTAL,
};
pub use log::LogNotifier;
pub use pagerduty::{PAGERDUTY_EVENTS_URL, PagerDutyNotifier};
pub use rate::{RateLimit, RateLimited};
pub use retry::{Backoff, Retrying};
pub use webhook::{IDEMPOTENCY_KEY, WebhookNotifier};

use crate::{Error, Result};

/// The longest summary PagerDuty accepts (`payload.summary`, 1024 characters). We cut at
/// 1024 *bytes*, which is never more than 1024 characters.
pub const SUMMARY_MAX_BYTES: usize = 1024;

/// The longest dedup_key PagerDuty accepts (255 characters).
pub const DEDUP_KEY_MAX: usize = 255;

/// Every dedup_key this crate derives starts with this.
pub const DEDUP_KEY_PREFIX: &str = "overseer:";

/// How much of the check name is kept, readable, in a dedup_key.
const DEDUP_KEY_CHECK_MAX: usize = 128;

/// What the notice asks of the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Open an incident (or add to the open one with the same dedup_key).
    Trigger,
    /// Close the incident with this dedup_key.
    Resolve,
}

impl Action {
    /// The wire name (`trigger`, `resolve`), as in PagerDuty's `event_action`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Trigger => "trigger",
            Action::Resolve => "resolve",
        }
    }
}

/// PagerDuty's four severities (PD-CEF).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Critical,
    #[default]
    Error,
    Warning,
    Info,
}

impl Severity {
    /// The wire name, as in PagerDuty's `payload.severity`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

/// What to tell an escalation target about one (check, subject).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Notice {
    /// Trigger or resolve.
    pub action: Action,
    /// The check's registered name.
    pub check: String,
    /// What the check was about (e.g. a transfer id).
    pub subject: String,
    /// [`dedup_key`]`(check, subject)`: what ties a resolve to its trigger.
    pub dedup_key: String,
    /// One line, at most [`SUMMARY_MAX_BYTES`] (see [`one_line_summary`]).
    pub summary: String,
    /// How bad it is.
    pub severity: Severity,
    /// Where it comes from, e.g. `overseer/<check>` (PagerDuty's `payload.source`).
    pub source: String,
    /// The evaluation time of the verdict, microseconds since the Unix epoch.
    pub eval_time_us: i64,
    /// The evaluation time at which the state this notice reports began (the failing
    /// streak of a trigger, the passing one of a resolve): what identifies the transition
    /// across redeliveries while later verdicts move `eval_time_us`. Equal to
    /// `eval_time_us` unless set ([`Notice::since`]).
    #[serde(default)]
    pub since_us: i64,
    /// Free-form details (message, details, evidence); PagerDuty's `custom_details`.
    pub details: serde_json::Value,
}

impl Notice {
    /// A trigger for a failing (check, subject).
    pub fn trigger(
        check: &str,
        subject: &str,
        severity: Severity,
        summary: &str,
        eval_time_us: i64,
        details: serde_json::Value,
    ) -> Notice {
        Notice {
            action: Action::Trigger,
            check: check.to_owned(),
            subject: subject.to_owned(),
            dedup_key: dedup_key(check, subject),
            summary: one_line_summary(summary),
            severity,
            source: source_of(check),
            eval_time_us,
            since_us: eval_time_us,
            details,
        }
    }

    /// A resolve for a (check, subject) that passes again.
    pub fn resolve(check: &str, subject: &str, eval_time_us: i64) -> Notice {
        Notice {
            action: Action::Resolve,
            check: check.to_owned(),
            subject: subject.to_owned(),
            dedup_key: dedup_key(check, subject),
            summary: one_line_summary(&format!("{check} passes again for {subject}")),
            severity: Severity::Info,
            source: source_of(check),
            eval_time_us,
            since_us: eval_time_us,
            details: serde_json::Value::Object(Default::default()),
        }
    }

    /// The same notice for a state that began at `since_us` ([`Notice::since_us`]).
    pub fn since(mut self, since_us: i64) -> Notice {
        self.since_us = since_us;
        self
    }

    /// What identifies this notice across redeliveries: `<dedup_key>:<action>:<since_us>`,
    /// the transition it reports. The outbox delivers at least once; a notice sent again
    /// after a crash or a lost response carries the same key even if later verdicts of the
    /// same streak refreshed it; another transition (the other action, or a new streak)
    /// another key. Webhooks send it as the `Idempotency-Key` header.
    pub fn idempotency_key(&self) -> String {
        format!(
            "{}:{}:{}",
            self.dedup_key,
            self.action.as_str(),
            self.since_us
        )
    }

    /// The same notice with the `sensitive` fields of its details blanked ([`redact`]).
    pub fn redacted<S: AsRef<str>>(mut self, sensitive: &[S]) -> Notice {
        redact(&mut self.details, sensitive);
        self
    }
}

/// `overseer/<check>`: the default [`Notice::source`].
fn source_of(check: &str) -> String {
    format!("overseer/{check}")
}

/// The dedup_key of (check, subject). Stable across versions: changing it would make
/// every open incident unresolvable, so a test pins one value.
///
/// Format: `overseer:` + the check name (control characters replaced by `_`, cut to 128
/// bytes on a character boundary) + `:` + the 64 lowercase hex digits of
/// `sha256(u64_be(len(check)) ‖ check ‖ u64_be(len(subject)) ‖ subject)`.
///
/// The hash covers both names in full, length-prefixed, so distinct pairs never share a
/// key in practice (no `("a:b","c")` / `("a","b:c")` ambiguity); the subject (which may be
/// sensitive) appears only hashed. At most 202 bytes, under PagerDuty's 255.
pub fn dedup_key(check: &str, subject: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update((check.len() as u64).to_be_bytes());
    hasher.update(check.as_bytes());
    hasher.update((subject.len() as u64).to_be_bytes());
    hasher.update(subject.as_bytes());
    let digest = hasher.finalize();
    let readable: String = truncate_on_char_boundary(check, DEDUP_KEY_CHECK_MAX)
        .chars()
        .map(|c| if c.is_control() { '_' } else { c })
        .collect();
    let mut key = String::with_capacity(DEDUP_KEY_PREFIX.len() + readable.len() + 65);
    key.push_str(DEDUP_KEY_PREFIX);
    key.push_str(&readable);
    key.push(':');
    for byte in digest {
        key.push(char::from(HEX[usize::from(byte >> 4)]));
        key.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    key
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `text` as one line of at most [`SUMMARY_MAX_BYTES`]: control characters (newlines,
/// tabs) become spaces, runs of spaces collapse, and an over-long text is cut on a
/// character boundary and ends with `…`.
pub fn one_line_summary(text: &str) -> String {
    let mut line = String::with_capacity(text.len().min(SUMMARY_MAX_BYTES));
    for c in text.trim().chars() {
        let c = if c.is_control() || c.is_whitespace() {
            ' '
        } else {
            c
        };
        if c == ' ' && line.ends_with(' ') {
            continue;
        }
        line.push(c);
    }
    if line.len() <= SUMMARY_MAX_BYTES {
        return line;
    }
    const ELLIPSIS: &str = "…";
    let mut cut = truncate_on_char_boundary(&line, SUMMARY_MAX_BYTES - ELLIPSIS.len()).to_owned();
    cut.push_str(ELLIPSIS);
    cut
}

/// The longest prefix of `text` of at most `max` bytes that ends on a char boundary.
pub(crate) fn truncate_on_char_boundary(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// What replaces a redacted value.
pub const REDACTED: &str = "[redacted]";

/// Replaces, at any depth of `value`, the value of every object field whose name matches
/// one of `sensitive` (ASCII case-insensitive) with [`REDACTED`].
pub fn redact<S: AsRef<str>>(value: &mut serde_json::Value, sensitive: &[S]) {
    match value {
        serde_json::Value::Object(map) => {
            for (name, field) in map.iter_mut() {
                if sensitive
                    .iter()
                    .any(|s| s.as_ref().eq_ignore_ascii_case(name))
                {
                    *field = serde_json::Value::String(REDACTED.to_owned());
                } else {
                    redact(field, sensitive);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| redact(v, sensitive)),
        _ => {}
    }
}

/// Delivers notices to one escalation target.
#[async_trait::async_trait]
pub trait Notifier: Send + Sync {
    /// Delivers one notice; Ok once the target accepted it. Errors say whether a retry may help.
    async fn send(&self, notice: &Notice) -> Result<()>;

    /// A human description for logs and status pages. Never contains a secret.
    fn describe(&self) -> String;

    /// The escalation policy's name: the `policy` of errors and metric labels. Keep it
    /// low-cardinality (a configured name, not a URL).
    fn policy(&self) -> &str {
        "custom"
    }
}

#[async_trait::async_trait]
impl<N: Notifier + ?Sized> Notifier for std::sync::Arc<N> {
    async fn send(&self, notice: &Notice) -> Result<()> {
        (**self).send(notice).await
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn policy(&self) -> &str {
        (**self).policy()
    }
}

#[async_trait::async_trait]
impl<N: Notifier + ?Sized> Notifier for Box<N> {
    async fn send(&self, notice: &Notice) -> Result<()> {
        (**self).send(notice).await
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn policy(&self) -> &str {
        (**self).policy()
    }
}

/// An escalation error of `policy`.
pub(crate) fn error(policy: &str, message: impl Into<String>, transient: bool) -> Error {
    Error::Escalation {
        policy: policy.to_owned(),
        message: message.into(),
        transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_is_one_line_and_cut_on_a_char_boundary() {
        assert_eq!(one_line_summary("  a\nb\t\tc  "), "a b c");
        let long = "é".repeat(2000);
        let s = one_line_summary(&long);
        assert!(s.len() <= SUMMARY_MAX_BYTES, "{}", s.len());
        assert!(s.ends_with('…'));
        assert!(s.chars().count() <= 1024);
    }

    #[test]
    fn dedup_key_is_bounded_and_separates_ambiguous_pairs() {
        let long = "c".repeat(1000);
        assert!(dedup_key(&long, &long).len() <= DEDUP_KEY_MAX);
        assert_ne!(dedup_key("a:b", "c"), dedup_key("a", "b:c"));
        assert_ne!(dedup_key("ab", ""), dedup_key("a", "b"));
        assert_eq!(dedup_key("x", "y"), dedup_key("x", "y"));
    }

    #[test]
    fn redact_blanks_fields_at_any_depth() {
        let mut v =
            serde_json::json!({"a": {"Account_Number": "123", "k": [{"iban": "x"}]}, "ok": 1});
        redact(&mut v, &["account_number", "iban"]);
        assert_eq!(
            v,
            serde_json::json!({"a": {"Account_Number": REDACTED, "k": [{"iban": REDACTED}]}, "ok": 1})
        );
    }
}
