//! Replay: re-runs checks over a past window of history, as live would have run them.
//!
//! ```text
//!  catalog.updates_in_window (pages, time-travel order) ─┬─> the timeline (each update
//!     │                                                   │   folded once, in order)
//!     └─> selection (same as live) ──(check, subject, commit time + grace)──> dedupe
//!     ──> pending until the window is read up to its evaluation time
//!     ──> run_group (every core, bounded; records read from the timeline)
//!     ──sorted by (eval time, check, subject)──> Sink (a Report; the escalator with --escalate)
//! ```
//!
//! # Same verdicts as live (DESIGN invariant 3)
//! Every update committed in the window (`from ≤ commit time ≤ to`) is selected exactly as
//! the live runner selects its notification ([`Selector`]), and each triggered
//! (check, subject) is evaluated as of the trigger's commit time plus the check's grace:
//! the time live evaluates it. Views are built from the immutable history alone, so a
//! replayed evaluation at time `e` gives the verdict live gave at `e`, provided live ran
//! with its sources complete up to `e` (a live run forced by the max delay is *stale*;
//! replay sees the complete history).
//!
//! # Relation to live coalescing
//! Live coalesces pending runs of one (check, subject): several triggers become one run,
//! evaluated as of one of those triggers' evaluation times. Replay does not coalesce across
//! commit times: each distinct (check, subject, evaluation time) is evaluated once, so a
//! transfer with three updates at three times gives three evaluations. Every live
//! evaluation time is one of them, so replay's runs are a superset of live's, and agree
//! with live at every time live evaluated. Triggers at the *same* commit time (e.g. a
//! transfer and its ledger entries written in one transaction) give one evaluation.
//!
//! # The window's records, folded once
//! Each page is applied to a timeline ([`overseer_dal::timeline`]) before its runs are
//! selected: every update of the window is fetched and folded once, in commit order, onto
//! its record's newest version. A run is released once the window has been read up to its
//! evaluation time (the pages after its trigger, up to the grace), and its views read
//! their records (subject, join members, lookups) from the timeline: a lookup, not a
//! catalog read and a fold of the record's history each. What the timeline does not cover
//! (a time after the window, a record evicted to stay within
//! [`ReplayOptions::timeline_bytes`]) is read from the catalog, with the same answer.
//!
//! # Determinism and memory
//! The window is read page by page in time-travel order (commit time, source, position),
//! which the catalog defines independently of how segments were written or listed. The
//! runs released after a page are spread over the runtime's workers (every core; runs of
//! checks sharing a view of one subject at one time build it once, as live does) while the
//! next page is read and selected, then handed to the sink sorted by (evaluation time,
//! check, subject). Nothing reads the wall clock except the runner's
//! `RunRecord::finished_us`, which the [`Report`] leaves out. Memory is bounded by the runs
//! waiting for the window to be read up to their evaluation time (one grace of runs, at
//! most [`ReplayOptions::max_pending_runs`]), a few batches of runs in flight, the
//! timeline's budget (plus 8 bytes per record evicted), the dedupe set of the current
//! commit time, and the report's failures.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use overseer_dal::Dal;
use overseer_dal::timeline::{DEFAULT_TIMELINE_BYTES, Timeline, TimelineStats};
use overseer_dal::update::Micros;

use crate::check::{CheckSpec, Registry};
use crate::pool::CheckPool;
use tokio_util::sync::CancellationToken;

use crate::runner::{Outcome, RunRecord, Sink, run_group, share_groups};
use crate::schedule::Ready;
use crate::select::Selector;
use crate::{Error, Result};

/// The window replayed: updates with `from_us ≤ commit time ≤ to_us`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Window {
    pub from_us: Micros,
    pub to_us: Micros,
}

impl Window {
    /// A window; an inverted one (`from > to`) is an error.
    pub fn new(from_us: Micros, to_us: Micros) -> Result<Self> {
        if from_us > to_us {
            return Err(Error::Config(format!(
                "the window is inverted: from {} is after to {}",
                rfc3339(from_us),
                rfc3339(to_us)
            )));
        }
        Ok(Window { from_us, to_us })
    }
}

/// Batches of released runs that may be running at once (while the next page is read).
const BATCHES_IN_FLIGHT: usize = 4;
/// Runs per batch (at least: a batch ends with a whole evaluation time).
const RUNS_PER_BATCH: usize = 8192;

/// Most run groups one task evaluates (one after another).
const GROUPS_PER_TASK: usize = 64;

/// Settings of a replay.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    /// Index entries read per catalog page (bounds memory).
    pub page: usize,
    /// Tasks evaluating runs at once, over every core (each evaluates a few run groups
    /// one after another; checks sharing one view of a subject at a time are one group).
    pub concurrency: usize,
    /// Take only the updates of this model from the window (`--model`).
    pub model: Option<String>,
    /// Budget of the timeline the window's records are read from
    /// ([`overseer_dal::timeline`]); 0: every read goes to the catalog.
    pub timeline_bytes: u64,
    /// Runs waiting for the window to be read up to their evaluation time, at most (about
    /// 150 bytes each); past it the oldest go early (reading from the catalog what the
    /// timeline does not cover yet).
    pub max_pending_runs: usize,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            page: 1000,
            concurrency: 32,
            model: None,
            timeline_bytes: DEFAULT_TIMELINE_BYTES,
            max_pending_runs: 500_000,
        }
    }
}

/// Where a replay is, as each batch of runs is handed over (for a progress bar).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Updates read from the window so far (after the `--model` filter).
    pub updates: u64,
    /// Runs evaluated so far.
    pub runs: u64,
    /// Commit time of the last update read: how far through the window the replay is.
    pub at_us: Micros,
}

/// Counts of a finished replay.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplaySummary {
    /// Updates taken from the window.
    pub updates: u64,
    /// (check, subject) triggers, before dedupe.
    pub triggers: u64,
    /// Distinct (check, subject, evaluation time) runs evaluated.
    pub runs: u64,
    /// How the timeline the runs read their records from went (`None`: none used).
    pub timeline: Option<TimelineStats>,
}

/// Replays the checks of `registry` that `include` admits (shadow checks too) over
/// `window`: see the module docs. Each run goes to `sink`, in a deterministic order;
/// `progress` is called as each batch of runs is handed over (about once per page).
pub async fn replay(
    dal: &Dal,
    registry: &Registry,
    include: impl Fn(&CheckSpec) -> bool,
    window: Window,
    options: &ReplayOptions,
    sink: &dyn Sink,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<ReplaySummary> {
    // Interned names and settings of the replayed checks.
    let specs: BTreeMap<&str, (Arc<str>, &CheckSpec)> = registry
        .iter()
        .filter(|s| include(s))
        .map(|s| (s.name.as_str(), (Arc::from(s.name.as_str()), s)))
        .collect();
    // The views registered in code, added to the DAL's (shared by the runs' tasks), and
    // the timeline its reads of the window's records come from.
    let mut dal = registry.dal_with_views(dal.clone())?;
    if options.timeline_bytes > 0 {
        // Nothing committed before the window: its records start from nothing.
        let empty_before = dal
            .catalog()
            .updates_in_window(Micros::MIN, window.from_us.saturating_sub(1), None, 1)
            .await?
            .is_empty();
        // The models the replayed checks' views read (every model if a check's view is
        // not a registered one: its function may read anything).
        let mut models = BTreeSet::new();
        let mut known = true;
        for (_, spec) in specs.values() {
            match dal.views().get(&spec.check.view_name()) {
                Ok(view) => models.extend(view.models()),
                Err(_) => known = false,
            }
        }
        let timeline = Timeline::new(options.timeline_bytes, empty_before);
        dal = dal.with_timeline(Arc::new(if known {
            timeline.of_models(models)
        } else {
            timeline
        }));
    }
    let dal = Arc::new(dal);
    let selector = Selector::new(registry, dal.views(), &include)?;
    // As the runner does: the catalog keeps the reference updates its joins read.
    let mut join_refs = BTreeSet::new();
    for (_, spec) in specs.values() {
        if let Ok(view) = dal.views().get(&spec.check.view_name()) {
            join_refs.extend(view.join_refs());
        }
    }
    dal.catalog()
        .keep_ref_updates(&join_refs.into_iter().collect::<Vec<_>>())
        .await?;
    let mut summary = ReplaySummary::default();
    let mut prog = Progress {
        at_us: window.from_us,
        ..Progress::default()
    };
    let mut after: Option<(Micros, String, String)> = None;
    // Pairs already evaluated for the current commit time (a commit time's updates may
    // straddle pages); cleared when the commit time moves on, so it stays small.
    let mut seen_at: Micros = Micros::MIN;
    let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
    let page_size = options.page.max(1);
    let permits = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let pool = CheckPool::default();
    // Runs selected but not released yet: a run is released once every update committed
    // up to its evaluation time has been read (and applied to the timeline).
    let mut pending: BTreeMap<Micros, Vec<Ready>> = BTreeMap::new();
    let mut pending_runs = 0;
    // The last few batches of runs released, still running while the next pages are read
    // (a page may release none or many: the window is read a grace ahead of the runs),
    // each with the oldest evaluation time among them; handed over in order.
    let mut in_flight: VecDeque<(JoinSet<Vec<RunRecord>>, Progress, Micros)> = VecDeque::new();
    loop {
        let page = dal
            .catalog()
            .updates_in_window(window.from_us, window.to_us, after.take(), page_size)
            .await?;
        let last_page = page.len() < page_size;
        if page.is_empty() && pending.is_empty() {
            break;
        }
        // Every update committed up to here has been read: the next page may hold more at
        // the last commit time of this one.
        let complete_us = match page.last() {
            Some(last) if !last_page => last.event_time_us.saturating_sub(1),
            _ => window.to_us,
        };
        if let Some(last) = page.last() {
            after = Some((
                last.event_time_us,
                last.source.clone(),
                last.position.clone(),
            ));
        }
        // No run reads a time before this: those in flight and pending, and this page's
        // (evaluated at or after their trigger).
        let floor_us = (in_flight.iter().map(|(.., oldest)| *oldest))
            .chain(pending.first_key_value().map(|(eval, _)| *eval))
            .chain(page.first().map(|e| e.event_time_us))
            .min()
            .unwrap_or(complete_us);
        if let Err(e) = dal.advance_timeline(&page, floor_us, complete_us).await {
            tracing::warn!(error = %e, "reading a page of the window into the timeline failed");
        }

        for entry in &page {
            if options.model.as_deref().is_some_and(|m| m != entry.model) {
                continue;
            }
            summary.updates += 1;
            prog.at_us = entry.event_time_us;
            if !selector.triggers(&entry.model) {
                continue;
            }
            let note = entry.notification();
            let pairs = selector.select(&**dal.catalog(), &note).await?;
            if entry.event_time_us != seen_at {
                seen_at = entry.event_time_us;
                seen.clear();
            }
            for (check, subject) in pairs {
                let Some((name, spec)) = specs.get(check.as_str()) else {
                    continue;
                };
                summary.triggers += 1;
                if !seen.insert((check, subject.clone())) {
                    continue;
                }
                let grace = spec.grace.as_micros().min(i64::MAX as u128) as i64;
                let eval_us = entry.event_time_us.saturating_add(grace);
                pending_runs += 1;
                pending.entry(eval_us).or_default().push(Ready {
                    check: name.clone(),
                    subject,
                    eval_us,
                    first_event_us: entry.event_time_us,
                    stale: Vec::new(),
                    acks: Vec::new(),
                    triggers: 1,
                });
            }
        }

        // The runs whose evaluation time has been read up to go to the runtime's workers
        // (every core) while the next page is read and selected; the previous ones are
        // handed over first, in order.
        let mut cut = complete_us.saturating_add(1);
        if pending_runs > options.max_pending_runs {
            // Too many runs wait for the window to be read up to their time (a grace that
            // spans much of the window): the oldest go now, and read from the catalog what
            // the timeline does not cover yet.
            let mut left = pending_runs;
            for (eval, runs) in &pending {
                if left <= options.max_pending_runs / 2 {
                    break;
                }
                left -= runs.len();
                cut = cut.max(eval.saturating_add(1));
            }
        }
        let later = if last_page {
            BTreeMap::new()
        } else {
            pending.split_off(&cut)
        };
        let released = std::mem::replace(&mut pending, later);
        // In batches of whole evaluation times (runs that share a view stay together), so
        // the runs evaluated and not yet handed over stay bounded however many are released.
        let mut batches = vec![Vec::new()];
        for (_, runs) in released {
            pending_runs -= runs.len();
            let batch = batches.last_mut().expect("never empty");
            batch.extend(runs);
            if batch.len() >= RUNS_PER_BATCH {
                batches.push(Vec::new());
            }
        }
        if batches.len() > 1 && batches.last().is_some_and(Vec::is_empty) {
            batches.pop();
        }
        prog.updates = summary.updates;
        for ready in batches {
            let oldest = ready.first().map_or(complete_us, |r| r.eval_us);
            let groups = share_groups(ready, |name| {
                let spec = specs[name].1;
                (spec.check.clone(), spec.timeout)
            });
            let mut running = JoinSet::new();
            // A task per few groups (enough tasks to keep every worker busy): a task per
            // group cost more to spawn than a run read from the timeline costs.
            let per_task = groups
                .len()
                .div_ceil(options.concurrency.max(1) * 4)
                .clamp(1, GROUPS_PER_TASK);
            let mut groups = groups.into_iter().peekable();
            while groups.peek().is_some() {
                let chunk: Vec<_> = groups.by_ref().take(per_task).collect();
                let (dal, permits, pool) = (dal.clone(), permits.clone(), pool.clone());
                running.spawn(async move {
                    let _permit = permits.acquire_owned().await.expect("never closed");
                    let mut out = Vec::with_capacity(chunk.len());
                    for group in &chunk {
                        // Storage faults are retried until the runs reach their verdicts.
                        out.extend(
                            run_group(&dal, &pool, group, &CancellationToken::new())
                                .await
                                .expect("never stopped"),
                        );
                    }
                    out
                });
            }
            // Progress is reported as each batch is handed over: once per page, more
            // when a page releases many runs.
            in_flight.push_back((running, prog, oldest));
            while in_flight.len() > BATCHES_IN_FLIGHT {
                let (prev, mut at, _) = in_flight.pop_front().expect("not empty");
                summary.runs += hand_over(prev, sink).await?;
                at.runs = summary.runs;
                progress(&at);
            }
        }
        if last_page {
            break;
        }
    }
    while let Some((prev, mut at, _)) = in_flight.pop_front() {
        summary.runs += hand_over(prev, sink).await?;
        at.runs = summary.runs;
        progress(&at);
    }
    summary.timeline = dal.timeline_stats();
    if let Some(stats) = summary.timeline {
        tracing::info!(
            reads = stats.reads,
            missed = stats.missed,
            updates_applied = stats.updates_applied,
            bases_read = stats.bases_read,
            evicted = stats.evicted,
            unfoldable = stats.unfoldable,
            peak_mib = stats.peak_bytes >> 20,
            "the replay's timeline"
        );
    }
    Ok(summary)
}

/// Waits for a page's runs and hands them to `sink` sorted by (evaluation time, check,
/// subject): unique within a replay, so the order does not depend on which finished first.
async fn hand_over(mut running: JoinSet<Vec<RunRecord>>, sink: &dyn Sink) -> Result<u64> {
    let mut runs = Vec::new();
    while let Some(done) = running.join_next().await {
        runs.extend(done.map_err(|e| Error::Panicked(crate::check::join_error_text(e)))?);
    }
    runs.sort_by(|a, b| (a.eval_us, &a.check, &a.subject).cmp(&(b.eval_us, &b.check, &b.subject)));
    for run in &runs {
        sink.record(run).await?;
    }
    Ok(runs.len() as u64)
}

/// Counts of one check in a report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CheckCounts {
    pub check: String,
    /// Registered but not enabled live.
    pub shadow: bool,
    pub runs: u64,
    pub passes: u64,
    pub failures: u64,
    /// The check could not reach a verdict (view error, panic, timeout).
    pub errors: u64,
    /// The subject did not exist as of the evaluation time.
    pub no_subject: u64,
}

/// One failing run, with what a human needs to look into it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Failure {
    pub check: String,
    pub subject: String,
    /// The view was built as of this time (RFC 3339, and microseconds).
    pub evaluated_at: String,
    pub eval_us: Micros,
    /// Commit time of the update that triggered the run.
    pub trigger_us: Micros,
    pub message: String,
    pub details: Value,
    /// Evidence by reference: the newest update (`source@position`) of each record the
    /// view shows, as of the evaluation time (of a declared aggregate, its newest
    /// member's).
    pub evidence: Vec<String>,
    /// The content digest of the view the check saw (`overseer view --as-of` prints the
    /// same for the view it rebuilds).
    pub view_digest: Option<String>,
}

/// One run that ended in an error (same fields as a failure, no details or evidence).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunError {
    pub check: String,
    pub subject: String,
    pub evaluated_at: String,
    pub eval_us: Micros,
    pub message: String,
}

/// The report of a replay: per-check counts and every failure and error. No wall-clock
/// field: the same window and checks give byte-identical JSON.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub from: String,
    pub to: String,
    pub from_us: Micros,
    pub to_us: Micros,
    /// `--model`, if the window was restricted to one model.
    pub model: Option<String>,
    /// Updates taken from the window.
    pub updates: u64,
    /// Distinct (check, subject, evaluation time) runs.
    pub runs: u64,
    /// True when the window held no updates (of `model`).
    pub empty: bool,
    /// A human sentence on what the report covers (says so when the window is empty).
    pub note: String,
    /// Per check, by name; every replayed check is listed, even with no runs.
    pub checks: Vec<CheckCounts>,
    /// Sorted by (check, evaluation time, subject).
    pub failures: Vec<Failure>,
    /// Sorted by (check, evaluation time, subject).
    pub errors: Vec<RunError>,
}

/// A [`Sink`] that builds a [`Report`].
#[derive(Debug)]
pub struct ReportSink {
    window: Window,
    model: Option<String>,
    inner: Mutex<Acc>,
}

#[derive(Debug, Default)]
struct Acc {
    checks: BTreeMap<String, CheckCounts>,
    failures: Vec<Failure>,
    errors: Vec<RunError>,
    runs: u64,
}

impl ReportSink {
    /// A report of the checks of `registry` that `include` admits, over `window`.
    pub fn new(
        registry: &Registry,
        include: impl Fn(&CheckSpec) -> bool,
        window: Window,
        model: Option<String>,
    ) -> Self {
        let checks = registry
            .iter()
            .filter(|s| include(s))
            .map(|s| {
                (
                    s.name.clone(),
                    CheckCounts {
                        check: s.name.clone(),
                        shadow: !s.enabled,
                        ..CheckCounts::default()
                    },
                )
            })
            .collect();
        ReportSink {
            window,
            model,
            inner: Mutex::new(Acc {
                checks,
                ..Acc::default()
            }),
        }
    }

    /// The report, given the replay's summary.
    pub fn report(&self, summary: &ReplaySummary) -> Report {
        let acc = self.inner.lock().expect("report lock");
        let mut failures = acc.failures.clone();
        failures.sort_by(|a, b| {
            (&a.check, a.eval_us, &a.subject).cmp(&(&b.check, b.eval_us, &b.subject))
        });
        let mut errors = acc.errors.clone();
        errors.sort_by(|a, b| {
            (&a.check, a.eval_us, &a.subject).cmp(&(&b.check, b.eval_us, &b.subject))
        });
        let (from, to) = (rfc3339(self.window.from_us), rfc3339(self.window.to_us));
        let of_model = self
            .model
            .as_deref()
            .map(|m| format!(" of model {m}"))
            .unwrap_or_default();
        let empty = summary.updates == 0;
        let note = if empty {
            format!("the window {from} .. {to} holds no updates{of_model}: nothing was replayed")
        } else {
            format!(
                "{} updates{of_model} committed in {from} .. {to}, {} runs",
                summary.updates, acc.runs
            )
        };
        Report {
            from,
            to,
            from_us: self.window.from_us,
            to_us: self.window.to_us,
            model: self.model.clone(),
            updates: summary.updates,
            runs: acc.runs,
            empty,
            note,
            checks: acc.checks.values().cloned().collect(),
            failures,
            errors,
        }
    }
}

#[async_trait::async_trait]
impl Sink for ReportSink {
    async fn record(&self, run: &RunRecord) -> Result<()> {
        let mut acc = self.inner.lock().expect("report lock");
        acc.runs += 1;
        let c = acc
            .checks
            .entry(run.check.clone())
            .or_insert_with(|| CheckCounts {
                check: run.check.clone(),
                ..CheckCounts::default()
            });
        c.runs += 1;
        match &run.outcome {
            // Replay reads complete history, so it never forces a run; a stale outcome
            // could only come from another caller's records: a verdict seen early.
            Outcome::Pass | Outcome::Stale { passed: true, .. } => c.passes += 1,
            Outcome::Fail { message, details }
            | Outcome::Stale {
                message, details, ..
            } => {
                c.failures += 1;
                acc.failures.push(Failure {
                    check: run.check.clone(),
                    subject: run.subject.clone(),
                    evaluated_at: rfc3339(run.eval_us),
                    eval_us: run.eval_us,
                    trigger_us: run.first_event_us,
                    message: message.clone(),
                    details: details.clone(),
                    evidence: run.evidence.clone(),
                    view_digest: run.view_digest.clone(),
                });
            }
            Outcome::Error { message } => {
                c.errors += 1;
                acc.errors.push(RunError {
                    check: run.check.clone(),
                    subject: run.subject.clone(),
                    evaluated_at: rfc3339(run.eval_us),
                    eval_us: run.eval_us,
                    message: message.clone(),
                });
            }
            Outcome::NoSubject => c.no_subject += 1,
        }
        Ok(())
    }
}

impl Report {
    /// Pretty JSON with a final newline; field order is the struct's, so it is stable.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("a report serialises");
        s.push('\n');
        s
    }

    /// CSV, one row per failure (the counts are in the table and JSON forms): `check,
    /// subject, evaluated_at, eval_us, trigger_us, message, details (JSON), evidence
    /// (space-separated), view_digest`. A header row always, so an empty report is a valid
    /// file.
    pub fn to_csv(&self) -> String {
        let mut out = String::from(
            "check,subject,evaluated_at,eval_us,trigger_us,message,details,evidence,view_digest\n",
        );
        for f in &self.failures {
            let row = [
                f.check.clone(),
                f.subject.clone(),
                f.evaluated_at.clone(),
                f.eval_us.to_string(),
                f.trigger_us.to_string(),
                f.message.clone(),
                f.details.to_string(),
                f.evidence.join(" "),
                f.view_digest.clone().unwrap_or_default(),
            ];
            let row: Vec<String> = row.iter().map(|c| csv_field(c)).collect();
            out.push_str(&row.join(","));
            out.push('\n');
        }
        out
    }

    /// A table for humans: the window, per-check counts, then every failure and error.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "replay {} .. {}", self.from, self.to);
        let _ = writeln!(out, "{}", self.note);
        if self.checks.is_empty() {
            return out;
        }
        let w = self
            .checks
            .iter()
            .map(|c| c.check.len() + if c.shadow { 9 } else { 0 })
            .max()
            .unwrap_or(5)
            .max(5);
        let _ = writeln!(
            out,
            "\n{:<w$}  {:>8}  {:>8}  {:>8}  {:>8}  {:>10}",
            "check", "runs", "passes", "failures", "errors", "no_subject"
        );
        for c in &self.checks {
            let name = if c.shadow {
                format!("{} (shadow)", c.check)
            } else {
                c.check.clone()
            };
            let _ = writeln!(
                out,
                "{name:<w$}  {:>8}  {:>8}  {:>8}  {:>8}  {:>10}",
                c.runs, c.passes, c.failures, c.errors, c.no_subject
            );
        }
        if !self.failures.is_empty() {
            let _ = writeln!(out, "\nfailures:");
            for f in &self.failures {
                let _ = writeln!(
                    out,
                    "  {} {:?} at {}: {}",
                    f.check, f.subject, f.evaluated_at, f.message
                );
                if !f.details.is_null() {
                    let _ = writeln!(out, "    details: {}", f.details);
                }
                let _ = writeln!(out, "    evidence: {}", f.evidence.join(" "));
                if let Some(d) = &f.view_digest {
                    let _ = writeln!(out, "    view: {d}");
                }
            }
        }
        if !self.errors.is_empty() {
            let _ = writeln!(out, "\nerrors:");
            for e in &self.errors {
                let _ = writeln!(
                    out,
                    "  {} {:?} at {}: {}",
                    e.check, e.subject, e.evaluated_at, e.message
                );
            }
        }
        out
    }
}

/// A CSV field, quoted when it holds a comma, quote or line break (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

pub use overseer_dal::update::rfc3339;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverted_windows_are_refused() {
        assert!(Window::new(5, 5).is_ok());
        let e = Window::new(6, 5).unwrap_err().to_string();
        assert!(e.contains("inverted"), "{e}");
    }

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
