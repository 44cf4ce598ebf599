//! The log target: every notice becomes one structured tracing event.

use super::events::AttemptFinished;
use super::{Action, Notice, Notifier};
use crate::Result;

/// Logs notices: triggers at `warn`, resolves at `info`. Always succeeds.
#[derive(Clone, Debug)]
pub struct LogNotifier {
    /// The policy name (metric label).
    policy: String,
}

impl Default for LogNotifier {
    fn default() -> Self {
        LogNotifier {
            policy: "log".to_owned(),
        }
    }
}

impl LogNotifier {
    /// A log notifier with policy name `log`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Names the policy (the `policy` metric label).
    pub fn with_policy(mut self, policy: impl Into<String>) -> Self {
        self.policy = policy.into();
        self
    }
}

#[async_trait::async_trait]
impl Notifier for LogNotifier {
    async fn send(&self, n: &Notice) -> Result<()> {
        match n.action {
            Action::Trigger => tracing::warn!(
                policy = %self.policy,
                action = n.action.as_str(),
                check = %n.check,
                subject = %n.subject,
                dedup_key = %n.dedup_key,
                severity = n.severity.as_str(),
                source = %n.source,
                eval_time_us = n.eval_time_us,
                details = %n.details,
                "{}",
                n.summary
            ),
            Action::Resolve => tracing::info!(
                policy = %self.policy,
                action = n.action.as_str(),
                check = %n.check,
                subject = %n.subject,
                dedup_key = %n.dedup_key,
                source = %n.source,
                eval_time_us = n.eval_time_us,
                "{}",
                n.summary
            ),
        }
        let result = Ok(());
        AttemptFinished {
            policy: &self.policy,
            notice: n,
            result: &result,
        }
        .emit();
        result
    }

    fn describe(&self) -> String {
        "log".to_owned()
    }

    fn policy(&self) -> &str {
        &self.policy
    }
}
