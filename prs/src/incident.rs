//! Escalation state: one incident per failure (DESIGN invariant 5).
//!
//! ```text
//!  verdict ──> Escalator::record ──CAS──> catalog incident (check, subject)
//!                                              │ failing ≠ notified_failing: a notice is owed
//!                                              v
//!   Outbox worker ──CAS take the delivery (lease)──> Notice ──> policy (PagerDuty, webhook, …)
//!        └──on delivery──CAS notified_failing, notified_eval_us = what was sent; lease released
//! ```
//!
//! The incident of a (check, subject) is a small state machine kept in the catalog:
//! pass→fail opens it (a `trigger` is owed), fail→fail changes nothing that is owed,
//! fail→pass resolves it (a `resolve` is owed). A verdict for an evaluation time earlier
//! than the last one applied is ignored, so redelivered or reordered runs never move it
//! back. The verdict is recorded before anything is sent, and what was sent is recorded
//! after: a restart between the two finds the notice still owed (the outbox) and sends it
//! then — never lost (PagerDuty dedups a repeated trigger of an open incident by its
//! dedup_key; a webhook notice carries an `Idempotency-Key`).
//!
//! The incident records what the target was last told (`notified_failing`, for
//! `notified_eval_us`), not what it should have been told: a pass applied while the
//! trigger is in flight leaves a resolve owed, a fail applied while the resolve is in
//! flight leaves a trigger owed (see [`Outbox`]).
//!
//! A muted check (kill switch) still records its verdicts but owes nothing: its
//! transitions are marked as told without being sent.
//!
//! Subjects that never failed leave no row: a pass with no incident writes nothing. A
//! `stale` run (forced by the max delay on incomplete sources) opens and resolves nothing,
//! but its row records that the evaluation is owed again (`rearm_eval_us`), so a runner
//! that restarts re-arms it ([`crate::schedule::Scheduler::rearm`]); the next verdict at
//! or after that time clears it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use overseer_dal::catalog::DynCatalog;
use overseer_dal::update::{Incident, MAYBE_TOLD, now_us};

use crate::escalate::{Notice, Notifier, Severity};
use crate::runner::{Outcome, RunRecord, Sink};
use crate::{Error, Result};

/// Read-modify-write of one incident by compare-and-set: `change` is given the incident
/// as stored (`None`: never stored) and returns the value to store, or `None` to write
/// nothing; on a conflict (another writer first) the incident is read again and `change`
/// asked again. Returns the incident as stored (`updated_us` set, new version), or `None`
/// if `change` declined.
async fn update(
    catalog: &DynCatalog,
    check: &str,
    subject: &str,
    mut change: impl FnMut(Option<Incident>) -> Option<Incident>,
) -> Result<Option<Incident>> {
    loop {
        let Some(mut next) = change(catalog.incident(check, subject).await?) else {
            return Ok(None);
        };
        next.updated_us = now_us();
        if let Some(version) = catalog.put_incident(&next).await? {
            next.version = version;
            return Ok(Some(next));
        }
    }
}

/// A new, never stored incident of `run`'s (check, subject).
fn new_incident(run: &RunRecord) -> Incident {
    Incident {
        check: run.check.clone(),
        subject: run.subject.clone(),
        ..Incident::default()
    }
}

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
                send_lease: SEND_LEASE,
                shutdown_timeout: SHUTDOWN_TIMEOUT,
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
            // Not a verdict on the subject yet: nothing opens or resolves; the run is owed
            // again once its sources are complete, which the row keeps across a restart.
            Outcome::Stale { .. } => return self.rearm(run).await,
            // A re-armed run (no trigger of its own) that ended without a verdict: what it
            // owed is settled as far as it can be (re-arming it at every restart would
            // only repeat it).
            Outcome::Error { .. } | Outcome::NoSubject if run.triggers == 0 => {
                return self.settle_rearm(run).await;
            }
            // Not a verdict on the subject: nothing to open or resolve.
            Outcome::Error { .. } | Outcome::NoSubject => {
                return Ok(None);
            }
        };
        let muted = self.routes.muted.contains(&run.check);
        let stored = update(&self.catalog, &run.check, &run.subject, |cur| {
            let cur = match cur {
                None if !failing => return None,
                None => new_incident(run),
                Some(c) if run.eval_us < c.last_eval_us => return None,
                Some(c) => c,
            };
            let mut next = cur.clone();
            if cur.version == 0 || cur.failing != failing {
                next.since_us = run.eval_us;
            }
            next.failing = failing;
            next.last_eval_us = run.eval_us;
            if next.rearm_eval_us <= run.eval_us {
                next.rearm_eval_us = 0;
            }
            if failing {
                next.message = message.clone();
                next.details = details.clone();
            }
            if muted {
                next.notified_failing = failing;
                next.notified_eval_us = run.eval_us;
            }
            Some(next)
        })
        .await?;
        if stored.as_ref().is_some_and(Incident::unsettled) {
            self.wake.notify_one();
        }
        Ok(stored)
    }
}

impl Escalator {
    /// Clears the re-arm `run` (a re-armed run that reached no verdict) was for.
    async fn settle_rearm(&self, run: &RunRecord) -> Result<Option<Incident>> {
        update(&self.catalog, &run.check, &run.subject, |cur| {
            let mut next = cur?;
            if next.rearm_eval_us == 0 || next.rearm_eval_us > run.eval_us {
                return None;
            }
            next.rearm_eval_us = 0;
            Some(next)
        })
        .await
    }

    /// Records that `run` (a stale one) is owed again: the incident row keeps the latest
    /// such evaluation time until a verdict at or after it is applied. Nothing if one is
    /// applied already.
    async fn rearm(&self, run: &RunRecord) -> Result<Option<Incident>> {
        update(&self.catalog, &run.check, &run.subject, |cur| {
            let mut next = match cur {
                Some(c) if run.eval_us <= c.last_eval_us || run.eval_us <= c.rearm_eval_us => {
                    return None;
                }
                Some(c) => c,
                None => new_incident(run),
            };
            next.rearm_eval_us = run.eval_us;
            Some(next)
        })
        .await
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
///
/// Exactly right after any race:
/// - **What was told is recorded as told.** After a delivery the incident records the
///   notice sent (`notified_failing`, `notified_eval_us`), whatever verdicts were applied
///   while it was in flight. If the incident changed meanwhile (a pass landed while its
///   trigger was in flight, or a fail while its resolve was), it is still owed, and the
///   next notice brings the target to the incident's current state.
/// - **One sender per incident.** Before sending, an outbox takes the incident's delivery
///   (`sending_until_us`, a lease of [`SEND_LEASE`] renewed while the send lasts), so the
///   outboxes of several runner instances never send one incident's notices concurrently
///   and the last notice recorded is the last the target received. The lease of an outbox
///   that died mid-send lapses after [`SEND_LEASE`]; the notice is then sent again
///   (at-least-once: PagerDuty dedups by dedup_key, webhooks get an `Idempotency-Key`).
pub struct Outbox {
    catalog: DynCatalog,
    routes: Arc<Routes>,
    wake: Arc<Notify>,
    /// Pause before retrying notices whose delivery failed transiently.
    retry_after: Duration,
    /// How long a delivery is held without renewal ([`SEND_LEASE`] unless set).
    send_lease: Duration,
    /// How long [`Outbox::run`] goes on delivering once asked to stop.
    shutdown_timeout: Duration,
}

/// Incidents handled per catalog read.
const OUTBOX_PAGE: usize = 256;

/// How long an outbox holds an incident's delivery without renewing it, by default.
/// Renewed every third of it while a send lasts (retries and rate limiting included).
pub const SEND_LEASE: Duration = Duration::from_secs(30);

/// How long an outbox goes on delivering once asked to stop, by default.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// What became of one incident's owed notice.
enum Delivery {
    /// Delivered (or definitely refused and dropped), or nothing was owed any more.
    Done,
    /// Not delivered now: a transient failure, or another outbox is sending it.
    Later,
}

impl Outbox {
    /// Sets how long a delivery is held without renewal (default [`SEND_LEASE`]); the
    /// notice of an outbox that died mid-send is sent again after at most that long.
    pub fn with_send_lease(mut self, lease: Duration) -> Self {
        self.send_lease = lease.max(Duration::from_millis(3));
        self
    }

    /// Sets the pause before retrying what could not be delivered (default 5 s).
    pub fn with_retry_after(mut self, pause: Duration) -> Self {
        self.retry_after = pause;
        self
    }

    /// Sets how long [`Outbox::run`] goes on delivering once asked to stop (default
    /// [`SHUTDOWN_TIMEOUT`]).
    pub fn with_shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Runs until `shutdown`, then delivers what is owed at that point if it can within
    /// the shutdown timeout ([`Outbox::with_shutdown_timeout`]): a slow or failing target
    /// (retries, rate limiting) never holds the process for longer. What is still owed
    /// then stays owed in the catalog and is sent by the next start — a send cut short is
    /// sent again once its delivery lease lapses, with the same idempotency key.
    /// Catalog errors that may pass are retried; only definite ones end it.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let timeout = self.shutdown_timeout;
        let deadline = async {
            shutdown.cancelled().await;
            tokio::time::sleep(timeout).await;
        };
        tokio::select! {
            served = self.serve(&shutdown) => served,
            () = deadline => {
                // A catalog that does not answer (maybe why time ran out) is not waited on.
                let owed = match tokio::time::timeout(
                    Duration::from_secs(1),
                    self.catalog.unsettled_incidents(OUTBOX_PAGE),
                )
                .await
                {
                    Ok(Ok(owed)) if owed.len() < OUTBOX_PAGE => owed.len().to_string(),
                    Ok(Ok(owed)) => format!("{} or more", owed.len()),
                    Ok(Err(e)) => format!("unknown ({e})"),
                    Err(_) => "unknown (the catalog did not answer)".to_owned(),
                };
                tracing::warn!(?timeout, owed, "escalation outbox: stopped at the shutdown \
                    timeout; what is still owed stays in the catalog and is sent by the next \
                    start (a send cut short once its delivery lease lapses)");
                Ok(())
            }
        }
    }

    async fn serve(&self, shutdown: &CancellationToken) -> Result<()> {
        loop {
            let pause = match self.drain().await {
                Ok(false) => Duration::from_secs(3600),
                Ok(true) => self.retry_after,
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, "escalation outbox: catalog error, will retry");
                    self.retry_after
                }
                Err(e) => return Err(e),
            };
            tokio::select! {
                _ = shutdown.cancelled() => {
                    match self.drain().await {
                        Err(e) if e.is_transient() => tracing::warn!(error = %e,
                            "escalation outbox: catalog error at shutdown; what is owed is \
                             sent after the restart"),
                        drained => {
                            drained?;
                        }
                    }
                    return Ok(());
                }
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Sends every owed notice once; returns whether some are still owed (a transient
    /// failure, or another outbox holds their delivery).
    pub async fn drain(&self) -> Result<bool> {
        let mut later = false;
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
                return Ok(later);
            }
            for inc in todo {
                if let Delivery::Later = self.deliver(&inc).await? {
                    later = true;
                    skip.insert((inc.check, inc.subject));
                }
            }
        }
    }

    /// Takes `inc`'s delivery, sends the notice it owes, and records what was told.
    async fn deliver(&self, inc: &Incident) -> Result<Delivery> {
        let policy = self.routes.policy_of(&inc.check)?;
        let held = match self.take(inc).await? {
            Take::Held(held) => held,
            Take::Settled => return Ok(Delivery::Done),
            Take::Busy => return Ok(Delivery::Later),
        };
        let notice = self.notice(&held);
        let mut lease = held.sending_until_us;
        if self.routes.muted.contains(&inc.check) {
            // Muted (a verdict landed while a notice was in flight before it was muted, or
            // the two raced): owed nothing, so marked told without being sent.
            self.release(inc, lease, Some((held.failing, notice.eval_time_us)))
                .await?;
            return Ok(Delivery::Done);
        }
        let sent = {
            let send = policy.send(&notice);
            tokio::pin!(send);
            let every = self.send_lease / 3;
            let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tokio::select! {
                    sent = &mut send => break sent,
                    _ = renew.tick() => lease = self.renew(inc, lease).await,
                }
            }
        };
        let told = match sent {
            Ok(()) => true,
            Err(e) if e.is_transient() => {
                tracing::warn!(check = %inc.check, policy = policy.policy(), error = %e,
                    "escalation failed, will retry");
                false
            }
            Err(e) => {
                // A definite refusal (e.g. PagerDuty's 400) will not change on retry: log it
                // loudly and stop owing it, or the outbox would resend it forever.
                tracing::error!(check = %inc.check, policy = policy.policy(), error = %e,
                    "escalation refused; the notice is dropped");
                true
            }
        };
        let told = told.then_some((held.failing, notice.eval_time_us));
        // What was sent must be recorded (or the lease would block the incident until it
        // lapses, and the notice go out again): a few tries through a catalog blip.
        let mut attempt = 0;
        loop {
            match self.release(inc, lease, told).await {
                Err(e) if e.is_transient() && attempt < 5 => {
                    attempt += 1;
                    tokio::time::sleep(crate::retry::pause(attempt)).await;
                }
                released => break released?,
            }
        }
        Ok(if told.is_some() {
            Delivery::Done
        } else {
            Delivery::Later
        })
    }

    /// The end of a delivery lease taken at `now_us`.
    fn lease_from(&self, now_us: i64) -> i64 {
        let lease = i64::try_from(self.send_lease.as_micros()).unwrap_or(i64::MAX);
        now_us.saturating_add(lease)
    }

    /// The notice that brings the target to `inc`'s state.
    fn notice(&self, inc: &Incident) -> Notice {
        if inc.failing {
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
            .since(inc.since_us)
        } else {
            Notice::resolve(&inc.check, &inc.subject, inc.last_eval_us).since(inc.since_us)
        }
    }

    /// Takes the delivery of `inc` for the send lease, unless nothing is owed any more or
    /// another outbox holds it.
    async fn take(&self, inc: &Incident) -> Result<Take> {
        let mut cur = inc.clone();
        loop {
            if !cur.unsettled() {
                return Ok(Take::Settled);
            }
            let now = now_us();
            if cur.sending_until_us > now {
                return Ok(Take::Busy);
            }
            let mut held = cur.clone();
            held.sending_until_us = self.lease_from(now);
            held.updated_us = now;
            if let Some(version) = self.catalog.put_incident(&held).await? {
                held.version = version;
                return Ok(Take::Held(held));
            }
            match self.catalog.incident(&inc.check, &inc.subject).await? {
                Some(again) => cur = again,
                None => return Ok(Take::Settled),
            }
        }
    }

    /// Extends the delivery this outbox holds (`lease`); returns the lease now held. A
    /// catalog error is logged and the old lease kept: the send goes on, and the next
    /// renewal may succeed.
    async fn renew(&self, inc: &Incident, lease: i64) -> i64 {
        let renewed = update(&self.catalog, &inc.check, &inc.subject, |cur| {
            let mut cur = cur?;
            if cur.sending_until_us != lease {
                tracing::warn!(check = %inc.check,
                    "escalation: the delivery lease lapsed during a send; another outbox \
                     may send this incident's notice too");
                return None;
            }
            cur.sending_until_us = self.lease_from(now_us());
            Some(cur)
        })
        .await;
        match renewed {
            Ok(renewed) => renewed.map_or(lease, |held| held.sending_until_us),
            Err(e) => {
                tracing::warn!(check = %inc.check, error = %e,
                    "escalation: could not renew the delivery lease");
                lease
            }
        }
    }

    /// Ends this outbox's delivery (`lease`) of `inc`, recording `told` (what the target
    /// was told: failing or not, for which evaluation time) whatever the incident's state
    /// is now: if a verdict changed it meanwhile, the difference is owed and the next
    /// drain sends it.
    async fn release(&self, inc: &Incident, lease: i64, told: Option<(bool, i64)>) -> Result<()> {
        let released = update(&self.catalog, &inc.check, &inc.subject, |cur| {
            let mut next = cur?;
            let ours = next.sending_until_us == lease;
            if !ours && told.is_none_or(|(_, eval_us)| next.notified_eval_us > eval_us) {
                // Not ours any more, and nothing to record, or another outbox has since
                // recorded a newer notice (that record stands).
                return None;
            }
            if let Some((failing, eval_us)) = told {
                next.notified_failing = failing;
                next.notified_eval_us = eval_us;
            }
            if ours {
                // Told: nobody holds it. Not told: the send failed, maybe after the target
                // received it (a timeout), so the current state is owed whatever it is.
                next.sending_until_us = if told.is_some() { 0 } else { MAYBE_TOLD };
            }
            Some(next)
        })
        .await?;
        if let Some(next) = released
            && next.unsettled()
        {
            tracing::info!(check = %inc.check, failing = next.failing,
                "escalation: the incident changed while its notice was in flight; \
                 the notice bringing the target to its state is owed");
        }
        Ok(())
    }
}

/// Outcome of [`Outbox::take`].
enum Take {
    /// This outbox holds the delivery; the incident as held (its state is what to send).
    Held(Incident),
    /// Nothing is owed any more.
    Settled,
    /// Another outbox holds the delivery.
    Busy,
}
