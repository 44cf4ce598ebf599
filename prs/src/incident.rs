//! Escalation state: one incident per failure (DESIGN invariant 5).
//!
//! ```text
//!  verdict ──> Escalator::record ──CAS──> catalog incident (check, subject)
//!                                              │ failing ≠ notified_failing: a notice is owed
//!                                              v
//!                     Outbox worker ──Notice──> policy (PagerDuty, webhook, log, custom)
//!                          └──on delivery──CAS notified_failing = failing
//! ```
//!
//! The incident of a (check, subject) is a small state machine kept in the catalog:
//! pass→fail opens it (a `trigger` is owed), fail→fail changes nothing that is owed,
//! fail→pass resolves it (a `resolve` is owed). A verdict for an evaluation time earlier
//! than the last one applied is ignored, so redelivered or reordered runs never move it
//! back. The verdict is recorded before anything is sent, and what was sent is recorded
//! after: a restart between the two finds the notice still owed (the outbox) and sends it
//! then — never twice for one transition (PagerDuty dedups a repeated trigger of an open
//! incident by its dedup_key anyway), never lost.
//!
//! A muted check (kill switch) still records its verdicts but owes nothing: its
//! transitions are marked as told without being sent.
//!
//! Subjects that never failed leave no row: a pass with no incident writes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use overseer_dal::catalog::DynCatalog;
use overseer_dal::update::{Incident, now_us};

use crate::escalate::{Notice, Notifier, Severity};
use crate::runner::{Outcome, RunRecord, Sink};
use crate::{Error, Result};

/// How the verdicts of each check are escalated.
pub struct Routes {
    /// Policies by name.
    pub policies: BTreeMap<String, Arc<dyn Notifier>>,
    /// The policy of checks that name none.
    pub default_policy: String,
    /// Check → policy name, for checks that name one.
    pub by_check: BTreeMap<String, String>,
    /// Checks whose escalation is switched off (verdicts still recorded).
    pub muted: BTreeSet<String>,
    pub severity: Severity,
}

impl Routes {
    fn policy_of(&self, check: &str) -> Result<&Arc<dyn Notifier>> {
        let name = self.by_check.get(check).unwrap_or(&self.default_policy);
        self.policies.get(name).ok_or_else(|| {
            Error::Config(format!(
                "check {check:?} escalates to policy {name:?}, which is not configured (have: {})",
                self.policies.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }
}

/// The [`Sink`] that keeps incidents and owes notices; see the module docs.
pub struct Escalator {
    catalog: DynCatalog,
    routes: Arc<Routes>,
    wake: Arc<Notify>,
}

impl Escalator {
    /// The escalator, and the outbox worker that delivers what it owes (run it with
    /// [`Outbox::run`]). Every check's policy must exist.
    pub fn new(
        catalog: DynCatalog,
        routes: Routes,
        checks: impl IntoIterator<Item = String>,
    ) -> Result<(Escalator, Outbox)> {
        for check in checks {
            routes.policy_of(&check)?;
        }
        let routes = Arc::new(routes);
        let wake = Arc::new(Notify::new());
        Ok((
            Escalator {
                catalog: catalog.clone(),
                routes: routes.clone(),
                wake: wake.clone(),
            },
            Outbox {
                catalog,
                routes,
                wake,
                retry_after: Duration::from_secs(5),
            },
        ))
    }

    /// Applies one verdict to the incident of its (check, subject); returns the incident
    /// as stored, or `None` if the verdict changed nothing (no incident and a pass, or an
    /// older evaluation than the last applied).
    pub async fn apply(&self, run: &RunRecord) -> Result<Option<Incident>> {
        let (failing, message, details) = match &run.outcome {
            Outcome::Pass => (false, String::new(), String::new()),
            Outcome::Fail { message, details } => {
                let details = json!({
                    "message": message,
                    "details": details,
                    "evaluated_as_of_us": run.eval_us,
                    "evidence": run.evidence,
                    "view_digest": run.view_digest,
                });
                (true, message.clone(), details.to_string())
            }
            // Not a verdict on the subject: nothing to open or resolve.
            Outcome::Stale { .. } | Outcome::Error { .. } | Outcome::NoSubject => {
                return Ok(None);
            }
        };
        let muted = self.routes.muted.contains(&run.check);
        loop {
            let cur = self.catalog.incident(&run.check, &run.subject).await?;
            let cur = match cur {
                None if !failing => return Ok(None),
                None => Incident {
                    check: run.check.clone(),
                    subject: run.subject.clone(),
                    ..Incident::default()
                },
                Some(c) if run.eval_us < c.last_eval_us => return Ok(None),
                Some(c) => c,
            };
            let mut next = cur.clone();
            if cur.version == 0 || cur.failing != failing {
                next.since_us = run.eval_us;
            }
            next.failing = failing;
            next.last_eval_us = run.eval_us;
            if failing {
                next.message = message.clone();
                next.details = details.clone();
            }
            if muted {
                next.notified_failing = failing;
            }
            next.updated_us = now_us();
            if let Some(version) = self.catalog.put_incident(&next).await? {
                next.version = version;
                if next.unsettled() {
                    self.wake.notify_one();
                }
                return Ok(Some(next));
            }
            // Another runner wrote it first: read again and re-apply.
        }
    }
}

#[async_trait::async_trait]
impl Sink for Escalator {
    async fn record(&self, run: &RunRecord) -> Result<()> {
        self.apply(run).await.map(|_| ())
    }
}

/// Delivers owed notices: at start everything left owed by a previous run, then whatever
/// new verdicts owe, retrying later what a policy could not take.
pub struct Outbox {
    catalog: DynCatalog,
    routes: Arc<Routes>,
    wake: Arc<Notify>,
    /// Pause before retrying notices whose delivery failed transiently.
    retry_after: Duration,
}

/// Incidents handled per catalog read.
const OUTBOX_PAGE: usize = 256;

impl Outbox {
    /// Runs until `shutdown`; delivers what is owed at that point first if it can.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        loop {
            let failed = self.drain().await?;
            let pause = if failed {
                self.retry_after
            } else {
                Duration::from_secs(3600)
            };
            tokio::select! {
                _ = shutdown.cancelled() => {
                    self.drain().await?;
                    return Ok(());
                }
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Sends every owed notice once; returns whether some could not be delivered.
    pub async fn drain(&self) -> Result<bool> {
        let mut failed = false;
        let mut skip: BTreeSet<(String, String)> = BTreeSet::new();
        loop {
            let page = self
                .catalog
                .unsettled_incidents(OUTBOX_PAGE + skip.len())
                .await?;
            let todo: Vec<Incident> = page
                .into_iter()
                .filter(|i| !skip.contains(&(i.check.clone(), i.subject.clone())))
                .collect();
            if todo.is_empty() {
                return Ok(failed);
            }
            for inc in todo {
                if !self.deliver(&inc).await? {
                    failed = true;
                    skip.insert((inc.check.clone(), inc.subject.clone()));
                }
            }
        }
    }

    /// Sends the notice `inc` owes and records it as told. False if the policy failed
    /// transiently (it stays owed).
    async fn deliver(&self, inc: &Incident) -> Result<bool> {
        let policy = self.routes.policy_of(&inc.check)?;
        let notice = if inc.failing {
            let details: serde_json::Value =
                serde_json::from_str(&inc.details).unwrap_or(serde_json::Value::Null);
            Notice::trigger(
                &inc.check,
                &inc.subject,
                self.routes.severity,
                &format!("{}: {}", inc.check, inc.message),
                inc.last_eval_us,
                details,
            )
        } else {
            Notice::resolve(&inc.check, &inc.subject, inc.last_eval_us)
        };
        match policy.send(&notice).await {
            Ok(()) => {}
            Err(e) if e.is_transient() => {
                tracing::warn!(check = %inc.check, policy = policy.policy(), error = %e,
                    "escalation failed, will retry");
                return Ok(false);
            }
            Err(e) => {
                // A definite refusal (e.g. PagerDuty's 400) will not change on retry: log it
                // loudly and stop owing it, or the outbox would resend it forever.
                tracing::error!(check = %inc.check, policy = policy.policy(), error = %e,
                    "escalation refused; the notice is dropped");
            }
        }
        // Record it as told, unless a newer verdict changed what is owed meanwhile.
        let mut cur = inc.clone();
        loop {
            cur.notified_failing = inc.failing;
            cur.updated_us = now_us();
            if self.catalog.put_incident(&cur).await?.is_some() {
                return Ok(true);
            }
            match self.catalog.incident(&inc.check, &inc.subject).await? {
                Some(now) if now.failing == inc.failing => cur = now,
                // It flipped again: what is owed now is the next drain's business.
                _ => return Ok(true),
            }
        }
    }
}
