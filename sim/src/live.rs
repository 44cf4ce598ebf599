//! The live pipeline over a generated workload, in one process, wired as `overseer run`
//! wires it: one ingestion pipeline per system fed by its [`ReplaySource`], the runner on
//! the catalog feed, incidents through a caller's notifier, every run record collected.
//! Shared by `overseer demo` and `overseer bench`.
//!
//! ```text
//!  workload ─ ReplaySource per system ─> ingestion ─> store + catalog
//!                                                       │ catalog feed (Tracked)
//!  notifier <── incidents <── runner (the shipped checks) <┘
//!  Live { verdicts, per-source reports, when delivered / ingested / drained } <── Collector
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::workload::live::{Clock, Collector, ReplaySource, Tracked, Verdicts};
use crate::workload::{System, Workload};
use overseer::Config;
use overseer_dal::bus::feed::CatalogFeed;
use overseer_dal::update::Micros;
use overseer_ingestion::pipeline::{Ingestor, SourceReport, Storage};
use overseer_ingestion::source::Source;
use overseer_prs::escalate::{Notifier, Severity};
use overseer_prs::incident::Routes;

/// What a live run observed. Times are on the run's [`Clock`], µs since the epoch.
pub(crate) struct Live {
    /// Ingestion's totals per source.
    pub reports: BTreeMap<String, SourceReport>,
    /// The runs' verdicts: every run's outcome and latency, the records of those that
    /// did not pass.
    pub verdicts: Verdicts,
    /// The runner's own count of runs by outcome.
    pub by_outcome: BTreeMap<String, u64>,
    /// (check, subject) pairs whose incident is open at the end.
    pub failing_now: BTreeSet<(String, String)>,
    /// When every event had been handed to ingestion.
    pub delivered_us: Option<Micros>,
    /// When every source had committed its newest event (stored, indexed, notified).
    pub ingested_us: Option<Micros>,
    /// When every run had completed (or the wait ended).
    pub drained_us: Micros,
    /// Why the wait ended before everything drained, if it did.
    pub timed_out: Option<String>,
    /// How the runner's reads went: maintained folds and joins, or the history.
    pub dal: overseer_dal::state::StateStats,
}

/// One system's ingestion source, and the flag set once every event of the system has
/// been delivered to it.
pub(crate) struct Feed {
    pub system: System,
    pub source: Box<dyn Source>,
    pub delivered: Arc<AtomicBool>,
}

/// Each system's events released in process, at their arrival times (a [`ReplaySource`]).
pub(crate) fn in_process(workload: &Arc<Workload>, clock: Clock) -> Vec<Feed> {
    System::ALL
        .into_iter()
        .map(|system| {
            let delivered = Arc::new(AtomicBool::new(false));
            let source = Box::new(ReplaySource::new(
                workload.clone(),
                system,
                clock,
                delivered.clone(),
            ));
            Feed {
                system,
                source,
                delivered,
            }
        })
        .collect()
}

/// Runs `workload` live through ingestion (into `storage`, each system through its
/// `feeds` source and the configured source of the system's name) and the shipped checks,
/// as configured by `cfg` (grace, strategies), escalating through `notifier`; returns
/// once every event is delivered and every run it triggered has completed, or `patience`
/// after the last arrival, whichever is first.
pub(crate) async fn run(
    cfg: &Config,
    storage: &Storage,
    workload: Arc<Workload>,
    clock: Clock,
    feeds: Vec<Feed>,
    notifier: Arc<dyn Notifier>,
    patience: Duration,
) -> Result<Live> {
    let ingestor = Ingestor::new(storage.clone(), cfg.ingest.clone());
    ingestor
        .recover(&tokio_util::sync::CancellationToken::new())
        .await?;

    // The runner, as `overseer run` wires it, with `notifier` as its escalation policy.
    // The demo and the bench score the payments checks: those are what they register.
    let registry = overseer::Checks::new(overseer_checks::register).registry(cfg)?;
    let routes = Routes {
        policies: BTreeMap::from([("live".to_owned(), notifier)]),
        default_policy: "live".into(),
        by_check: BTreeMap::new(),
        muted: BTreeSet::new(),
        severity: Severity::Error,
    };
    let dal = overseer_ingestion::dal::dal_over(cfg, storage)?;
    let dal_stats = dal.clone();
    let cache = dal.cache();
    let feed = CatalogFeed::open(
        storage.catalog.clone(),
        storage.store.clone(),
        &cfg.prs.group,
        Duration::from_millis(cfg.prs.watermark_poll_ms),
    )
    .await?;
    let (feed, progress) = Tracked::new(feed.warming(cache));
    let collector = Collector::verdicts_only();
    let runner_stop = CancellationToken::new();
    let mut runner_task = {
        let (runner_cfg, collector, stop) = (cfg.runner(), collector.clone(), runner_stop.clone());
        tokio::spawn(async move {
            overseer_prs::service::run_routed(
                &runner_cfg,
                routes,
                registry,
                dal,
                Box::new(feed),
                Some(collector),
                stop,
            )
            .await
        })
    };

    // Ingestion: one pipeline per system, fed by its source.
    let ingest_stop = CancellationToken::new();
    let mut ingest: JoinSet<(String, overseer_ingestion::Result<SourceReport>)> = JoinSet::new();
    let mut delivered = Vec::new();
    // Cancelled when a pipeline fails (its error is reported below).
    let failed = CancellationToken::new();
    for Feed {
        system,
        source,
        delivered: done,
    } in feeds
    {
        let src = cfg
            .sources
            .iter()
            .find(|s| s.name == system.name())
            .cloned()
            .with_context(|| format!("no source named {}", system.name()))?;
        let consumer = overseer_ingestion::format::build(&src, cfg)?;
        delivered.push(done);
        let (ing, stop, failed) = (ingestor.clone(), ingest_stop.clone(), failed.clone());
        ingest.spawn(async move {
            let r = ing.run_source(&src, consumer, source, stop).await;
            if r.is_err() {
                failed.cancel();
            }
            (src.name, r)
        });
    }

    // Wait until every event is delivered and every run it triggered has completed: the
    // last evaluations are due at the last commit + grace, once the lagging sources'
    // watermarks pass them. Bounded, in case something never drains.
    let expected = workload.unique_events() as u64;
    // Ingestion is done when every source has committed its newest event.
    let last_commit: BTreeMap<&str, Micros> = System::ALL
        .iter()
        .map(|s| {
            let last = workload.events(*s).iter().map(|e| e.commit_us).max();
            (s.name(), last.unwrap_or(Micros::MIN))
        })
        .collect();
    let bound_us = workload.last_arrival_us() + patience.as_micros() as Micros;
    let (mut delivered_us, mut ingested_us, mut timed_out) = (None, None, None);
    loop {
        if delivered_us.is_none() && delivered.iter().all(|d| d.load(Ordering::SeqCst)) {
            delivered_us = Some(clock.now_us());
        }
        if ingested_us.is_none() {
            let states = storage.catalog.source_states().await?;
            let done = last_commit.iter().all(|(name, last)| {
                states
                    .iter()
                    .any(|s| s.source == *name && s.last_event_us >= *last)
            });
            if done {
                ingested_us = Some(clock.now_us());
            }
        }
        if delivered_us.is_some() && progress.drained(expected) {
            break;
        }
        if runner_task.is_finished() || failed.is_cancelled() {
            break; // failed early: reported below
        }
        if clock.now_us() > bound_us {
            timed_out = Some(format!(
                "the runner did not finish every check run within {:.0} s of the last \
                 arrival ({} of {expected} notifications delivered to it)",
                patience.as_secs_f64(),
                progress.delivered.load(Ordering::SeqCst)
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drained_us = clock.now_us();

    runner_stop.cancel();
    let report = (&mut runner_task)
        .await
        .context("the runner task")?
        .context("the runner")?;
    ingest_stop.cancel();
    let mut reports = BTreeMap::new();
    while let Some(joined) = ingest.join_next().await {
        let (name, r) = joined.context("an ingestion task")?;
        reports.insert(
            name.clone(),
            r.with_context(|| format!("ingesting {name}"))?,
        );
    }
    let failing_now = storage
        .catalog
        .incidents(true)
        .await?
        .into_iter()
        .map(|i| (i.check, i.subject))
        .collect();
    Ok(Live {
        reports,
        verdicts: collector.take_verdicts(),
        by_outcome: report.by_outcome,
        failing_now,
        delivered_us,
        ingested_us,
        drained_us,
        timed_out,
        dal: dal_stats.state_stats(),
    })
}

/// Where a live run keeps its data: `dir` (created if missing), or a fresh temporary
/// directory, removed when the returned guard is dropped.
pub(crate) fn data_dir(
    dir: Option<&std::path::Path>,
) -> Result<(std::path::PathBuf, Option<tempfile::TempDir>)> {
    match dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            Ok((d.to_path_buf(), None))
        }
        None => {
            let tmp = tempfile::tempdir()?;
            Ok((tmp.path().to_path_buf(), Some(tmp)))
        }
    }
}

/// The `q` quantile (nearest rank) of sorted, non-empty `v`.
pub(crate) fn quantile(v: &[Micros], q: f64) -> Micros {
    v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
}
