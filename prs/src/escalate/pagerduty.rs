//! The PagerDuty target: the Events API v2 (`POST /v2/enqueue`).
//!
//! Contract followed (PagerDuty's Events API v2 reference):
//! - trigger: `{routing_key, event_action: "trigger", dedup_key, payload: {summary (≤ 1024
//!   chars), source, severity (critical|error|warning|info), timestamp, component, group,
//!   class, custom_details (object)}, client}`;
//! - resolve: `{routing_key, event_action: "resolve", dedup_key}` and nothing else;
//! - 202 `{status: "success", message, dedup_key}` is delivered; 400 (invalid event) is
//!   definite; 429, 5xx and network errors are to be retried; bodies are ≤ 512 KB.
//!
//! The routing key is a secret (invariant 7): it comes from an environment variable and
//! never appears in `Debug`, `describe`, logs or error messages.

use std::time::Duration;

use reqwest::{StatusCode, Url};
use serde_json::{Map, Value, json};

use super::events::AttemptFinished;
use super::http::{self, DEFAULT_TIMEOUT};
use super::webhook::env_problem;
use super::{Action, Notice, Notifier, REDACTED, one_line_summary, truncate_on_char_boundary};
use crate::{Error, Result};

/// PagerDuty's Events API v2 endpoint.
pub const PAGERDUTY_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// PagerDuty refuses events larger than this.
const MAX_EVENT_BYTES: usize = 512 * 1024;

/// How much of over-large custom details is kept (as text) when they must be cut.
const DETAILS_EXCERPT_BYTES: usize = 64 * 1024;

/// Sends notices to PagerDuty's Events API v2 with one routing (integration) key.
#[derive(Clone)]
pub struct PagerDutyNotifier {
    /// The policy name (metric label, error `policy`).
    policy: String,
    url: Url,
    /// The integration key. Secret: never printed.
    routing_key: String,
    /// The environment variable the key came from, to say where it is without showing it.
    key_var: Option<String>,
    /// Whole-request timeout (connect, send, response).
    timeout: Duration,
    client: reqwest::Client,
}

impl PagerDutyNotifier {
    /// A notifier with this routing key, posting to `url` (default
    /// [`PAGERDUTY_EVENTS_URL`]). Prefer [`Self::from_env`]: keys belong in the environment.
    pub fn new(routing_key: impl Into<String>, url: Option<&str>) -> Result<Self> {
        let policy = "pagerduty".to_owned();
        let routing_key = routing_key.into().trim().to_owned();
        if routing_key.is_empty() {
            return Err(Error::Config("PagerDuty routing key is empty".to_owned()));
        }
        Ok(PagerDutyNotifier {
            url: http::parse_url(&policy, url.unwrap_or(PAGERDUTY_EVENTS_URL))?,
            client: http::client(&policy)?,
            routing_key,
            key_var: None,
            timeout: DEFAULT_TIMEOUT,
            policy,
        })
    }

    /// A notifier whose routing key is the value of the environment variable `var_name`.
    /// Fails, naming the variable, when it is unset or empty.
    pub fn from_env(var_name: &str, url: Option<&str>) -> Result<Self> {
        let key = std::env::var(var_name).map_err(|e| {
            Error::Config(format!(
                "PagerDuty routing key: environment variable {var_name} {}",
                env_problem(&e)
            ))
        })?;
        if key.trim().is_empty() {
            return Err(Error::Config(format!(
                "PagerDuty routing key: environment variable {var_name} is empty"
            )));
        }
        let mut notifier = Self::new(key, url)?;
        notifier.key_var = Some(var_name.to_owned());
        Ok(notifier)
    }

    /// Names the policy (metric label, error `policy`).
    pub fn with_policy(mut self, policy: impl Into<String>) -> Self {
        self.policy = policy.into();
        self
    }

    /// Sets the whole-request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The Events v2 body for `notice`.
    fn event(&self, n: &Notice) -> Value {
        match n.action {
            Action::Resolve => json!({
                "routing_key": self.routing_key,
                "event_action": "resolve",
                "dedup_key": n.dedup_key,
            }),
            Action::Trigger => {
                let mut summary = one_line_summary(&n.summary);
                if summary.is_empty() {
                    summary = one_line_summary(&format!("{} failed for {}", n.check, n.subject));
                }
                let source = if n.source.trim().is_empty() {
                    format!("overseer/{}", n.check)
                } else {
                    n.source.clone()
                };
                let mut payload = json!({
                    "summary": summary,
                    "source": source,
                    "severity": n.severity.as_str(),
                    "component": n.check,
                    "group": "overseer",
                    "class": "reconciliation check failed",
                    "custom_details": custom_details(n),
                });
                if let Some(ts) = chrono::DateTime::from_timestamp_micros(n.eval_time_us) {
                    payload["timestamp"] =
                        Value::String(ts.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
                }
                let mut event = json!({
                    "routing_key": self.routing_key,
                    "event_action": "trigger",
                    "dedup_key": n.dedup_key,
                    "payload": payload,
                    "client": "overseer",
                });
                let size = serde_json::to_vec(&event).map_or(0, |b| b.len());
                if size > MAX_EVENT_BYTES {
                    event["payload"]["custom_details"] = shrunk_details(n, size);
                }
                event
            }
        }
    }

    async fn post(&self, notice: &Notice) -> Result<()> {
        let response = self
            .client
            .post(self.url.clone())
            .timeout(self.timeout)
            .json(&self.event(notice))
            .send()
            .await
            .map_err(|e| http::send_error(&self.policy, e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = http::body_snippet(response, |b| {
            http::scrub(b, &self.url).replace(&self.routing_key, REDACTED)
        })
        .await;
        let said = if status == StatusCode::BAD_REQUEST {
            pagerduty_error(&body)
        } else {
            body
        };
        // Scrubbed again: `pagerduty_error` reads the body as JSON, and an escaped secret
        // (`\/`, `\u0041`) the first pass could not see is plain text after it.
        let message = http::scrub(&format!("PagerDuty answered {status}: {said}"), &self.url)
            .replace(&self.routing_key, REDACTED);
        Err(http::refusal(&self.policy, status, message))
    }
}

/// The custom details: the notice's details (an object, as PagerDuty requires) plus the
/// check, subject and evaluation time when absent.
fn custom_details(n: &Notice) -> Value {
    let mut details = match &n.details {
        Value::Object(map) => map.clone(),
        Value::Null => Map::new(),
        other => Map::from_iter([("details".to_owned(), other.clone())]),
    };
    details
        .entry("check")
        .or_insert_with(|| Value::String(n.check.clone()));
    details
        .entry("subject")
        .or_insert_with(|| Value::String(n.subject.clone()));
    details
        .entry("eval_time_us")
        .or_insert_with(|| Value::from(n.eval_time_us));
    Value::Object(details)
}

/// Custom details cut down to fit PagerDuty's size limit: a page with an excerpt beats a
/// definite 400 and no page.
fn shrunk_details(n: &Notice, event_size: usize) -> Value {
    let full = serde_json::to_string(&n.details).unwrap_or_default();
    json!({
        "check": n.check,
        "subject": n.subject,
        "eval_time_us": n.eval_time_us,
        "truncated": format!(
            "the event was {event_size} bytes, over PagerDuty's {MAX_EVENT_BYTES}; details cut to an excerpt"
        ),
        "details_excerpt": truncate_on_char_boundary(&full, DETAILS_EXCERPT_BYTES),
    })
}

/// PagerDuty's 400 body `{status, message, errors: [..]}` as one line.
fn pagerduty_error(body: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Refusal {
        #[serde(default)]
        status: String,
        #[serde(default)]
        message: String,
        #[serde(default)]
        errors: Vec<String>,
    }
    match serde_json::from_str::<Refusal>(body) {
        Ok(r) if !r.errors.is_empty() => {
            format!("{}: {} ({})", r.status, r.message, r.errors.join("; "))
        }
        Ok(r) if !r.message.is_empty() => format!("{}: {}", r.status, r.message),
        _ => body.to_owned(),
    }
}

impl std::fmt::Debug for PagerDutyNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PagerDutyNotifier")
            .field("policy", &self.policy)
            .field("url", &http::redacted_url(&self.url))
            .field("routing_key", &REDACTED)
            .field("routing_key_from", &self.key_var)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl Notifier for PagerDutyNotifier {
    async fn send(&self, notice: &Notice) -> Result<()> {
        let result = self.post(notice).await;
        AttemptFinished {
            policy: &self.policy,
            notice,
            result: &result,
        }
        .emit();
        result
    }

    fn describe(&self) -> String {
        let key = match &self.key_var {
            Some(var) => format!("routing key from ${var}, {REDACTED}"),
            None => format!("routing key {REDACTED}"),
        };
        format!("pagerduty {} ({key})", http::redacted_url(&self.url))
    }

    fn policy(&self) -> &str {
        &self.policy
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::escalate::Severity;

    fn notifier() -> PagerDutyNotifier {
        PagerDutyNotifier::new("0123456789abcdef0123456789abcdef", None).unwrap()
    }

    #[test]
    fn resolve_carries_only_key_action_and_dedup_key() {
        let n = Notice::resolve("c", "s", 0);
        let body = notifier().event(&n);
        let mut keys: Vec<_> = body.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["dedup_key", "event_action", "routing_key"]);
    }

    #[test]
    fn trigger_maps_the_notice_to_the_payload() {
        let n = Notice::trigger(
            "net_zero",
            "t-1",
            Severity::Critical,
            "entries do not net to zero",
            1_700_000_000_123_456,
            json!({"message": "m"}),
        );
        let body = notifier().event(&n);
        assert_eq!(body["event_action"], "trigger");
        assert_eq!(body["dedup_key"], n.dedup_key);
        let p = &body["payload"];
        assert_eq!(p["summary"], "entries do not net to zero");
        assert_eq!(p["severity"], "critical");
        assert_eq!(p["source"], "overseer/net_zero");
        assert_eq!(p["timestamp"], "2023-11-14T22:13:20.123456Z");
        assert_eq!(p["custom_details"]["message"], "m");
        assert_eq!(p["custom_details"]["subject"], "t-1");
    }

    #[test]
    fn oversized_details_are_cut_to_fit() {
        let big = "x".repeat(MAX_EVENT_BYTES);
        let n = Notice::trigger(
            "c",
            "s",
            Severity::Error,
            "big",
            0,
            json!({"evidence": big}),
        );
        let body = notifier().event(&n);
        assert!(serde_json::to_vec(&body).unwrap().len() < MAX_EVENT_BYTES);
        assert!(body["payload"]["custom_details"]["truncated"].is_string());
    }

    #[test]
    fn pagerduty_400_is_summarised() {
        let body = r#"{"status":"invalid event","message":"Event object is invalid","errors":["Length of 'routing_key' is incorrect (should be 32 characters)"]}"#;
        assert_eq!(
            pagerduty_error(body),
            "invalid event: Event object is invalid (Length of 'routing_key' is incorrect (should be 32 characters))"
        );
    }
}
