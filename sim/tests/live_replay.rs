//! Live ≡ replay on the payments workload (DESIGN invariant 3): a stretch of traffic with
//! injected faults, duplicates and a lagging ledger runs live (ingestion and the runner in
//! one process, on the embedded default, as `overseer demo` wires them); replaying its
//! window with the same checks over the same history then gives the verdicts live gave.
//!
//! ```text
//!  workload ─ ReplaySource ×2 ─> ingestion ─> local store + embedded catalog ─ feed ─> runner ─> live runs
//!                                                   └──────── replay [first, last commit] ──> replayed runs
//! ```
//!
//! Asserted: (a) every live run that reached a verdict (pass/fail) is a replayed run at the
//! same (check, subject, evaluation time) with the same outcome and evidence; (b) the pairs
//! failing live are the pairs replay fails at a time live evaluated them; (c) the pairs
//! replay fails are exactly the workload's ground truth.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use overseer::Config;
use overseer_dal::bus::feed::CatalogFeed;
use overseer_dal::update::{Micros, now_us};
use overseer_ingestion::pipeline::{Ingestor, Storage};
use overseer_prs::check::Registry;
use overseer_prs::replay::{ReplayOptions, Window, replay};
use overseer_prs::runner::{Outcome, RunRecord, Runner};
use overseer_sim::workload::live::{Clock, Collector, ReplaySource, Tracked};
use overseer_sim::workload::{Lag, System, Workload, WorkloadConfig};
use overseer_testkit::sink::CollectSink;

/// Transfers in the stretch: enough for every fault kind, small enough for a debug build.
const TRANSFERS: u64 = 300;
/// The check's grace; the ledger lags by less, so live never has to force a run.
const GRACE: Duration = Duration::from_millis(1_000);
const LAG: Duration = Duration::from_millis(500);

/// The demo's models and sources (in-memory replays: the file kind only satisfies
/// validation), over `dir`, with the shipped checks' default (freshness-aware) strategy.
fn config(dir: &Path) -> Config {
    let mut cfg = overseer_sim::workload::config(dir).unwrap();
    cfg.prs.group = "live".into();
    cfg.prs.grace_ms = GRACE.as_millis() as u64;
    cfg.validate().unwrap();
    cfg
}

fn registry(cfg: &Config) -> Registry {
    overseer::Checks::new(overseer_checks::register)
        .registry(cfg)
        .unwrap()
}

type Key = (String, String, Micros);

fn key(r: &RunRecord) -> Key {
    (r.check.clone(), r.subject.clone(), r.eval_us)
}

fn is_verdict(r: &RunRecord) -> bool {
    matches!(r.outcome, Outcome::Pass | Outcome::Fail { .. })
}

fn failing(runs: &[RunRecord]) -> BTreeSet<(String, String)> {
    runs.iter()
        .filter(|r| matches!(r.outcome, Outcome::Fail { .. }))
        .map(|r| (r.check.clone(), r.subject.clone()))
        .collect()
}

/// Runs the workload live until every notification is fully checked; returns the runs.
async fn run_live(
    cfg: &Config,
    storage: &Storage,
    workload: Arc<Workload>,
    clock: Clock,
) -> Vec<RunRecord> {
    let ingestor = Ingestor::new(storage.clone(), cfg.ingest.clone());
    ingestor.recover(&Default::default()).await.unwrap();
    let dal = overseer_ingestion::dal::dal_over(cfg, storage).unwrap();
    let runner = Runner::new(
        dal,
        Arc::new(registry(cfg)),
        overseer_prs::service::options(&cfg.runner()),
    )
    .unwrap();
    let feed = CatalogFeed::open(
        storage.catalog.clone(),
        storage.store.clone(),
        &cfg.prs.group,
        Duration::from_millis(cfg.prs.watermark_poll_ms),
    )
    .await
    .unwrap();
    let (feed, progress) = Tracked::new(feed);
    let collector = Collector::new();
    let runner_stop = CancellationToken::new();
    let runner_task =
        tokio::spawn(runner.run(Box::new(feed), collector.clone(), runner_stop.clone()));

    let ingest_stop = CancellationToken::new();
    let mut ingest = tokio::task::JoinSet::new();
    let mut delivered = Vec::new();
    for system in System::ALL {
        let src = cfg
            .sources
            .iter()
            .find(|s| s.name == system.name())
            .cloned()
            .unwrap();
        let consumer = overseer_ingestion::format::build(&src, &cfg.ingestion).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        delivered.push(done.clone());
        let source = Box::new(ReplaySource::new(workload.clone(), system, clock, done));
        let (ing, stop) = (ingestor.clone(), ingest_stop.clone());
        ingest.spawn(async move { ing.run_source(&src, consumer, source, stop).await });
    }

    // Every event delivered, and the runner committed past the last notification: every
    // run it triggered has reached the sink.
    let expected = workload.unique_events() as u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !(delivered.iter().all(|d| d.load(Ordering::SeqCst)) && progress.drained(expected)) {
        assert!(!runner_task.is_finished(), "the runner stopped early");
        assert!(
            tokio::time::Instant::now() < deadline,
            "live did not drain: {} of {expected} notifications delivered",
            progress.delivered.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    runner_stop.cancel();
    runner_task.await.unwrap().unwrap();
    ingest_stop.cancel();
    while let Some(r) = ingest.join_next().await {
        let report = r.unwrap().unwrap();
        assert_eq!(report.quarantined, 0);
    }
    collector.runs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_a_live_stretch_of_payments_gives_the_live_verdicts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let storage = Storage::open(&cfg).await.unwrap();

    // The traffic starts shortly after now and plays in real time (0.6 s of commits).
    let clock = Clock::starting_at(now_us());
    let start_us = (clock.origin_us / 1000 + 300) * 1000;
    let workload = Arc::new(
        Workload::generate(WorkloadConfig {
            start_us,
            transfers: TRANSFERS,
            accounts: 50,
            fault_rate: 0.05,
            duplicate_rate: 0.05,
            ledger_lag: Lag::Jitter { max: LAG },
            transfers_per_sec: 500.0,
            ..WorkloadConfig::default()
        })
        .unwrap(),
    );
    assert!(workload.faults_by_kind().len() == 4, "every fault kind");
    assert!(workload.duplicates() > 0);

    let live = run_live(&cfg, &storage, workload.clone(), clock).await;
    let by_label = |runs: &[RunRecord]| {
        let mut m = BTreeMap::<&str, usize>::new();
        for r in runs {
            *m.entry(r.outcome.label()).or_default() += 1;
        }
        m
    };
    let odd: Vec<&RunRecord> = live.iter().filter(|r| !is_verdict(r)).collect();
    assert!(
        odd.iter().all(|r| matches!(r.outcome, Outcome::NoSubject)),
        "live runs without a verdict (the lag is within the grace, so none is forced): {odd:?}"
    );

    // Replay the window the traffic committed in, with the same checks.
    let first_us = workload
        .payments
        .iter()
        .chain(&workload.ledger)
        .map(|e| e.commit_us)
        .min()
        .unwrap();
    let window = Window::new(first_us, workload.last_commit_us()).unwrap();
    let dal = overseer_ingestion::dal::dal_over(&cfg, &storage).unwrap();
    let reg = registry(&cfg);
    let replayed = CollectSink::new();
    let summary = replay(
        &dal,
        &reg,
        |s| s.enabled,
        window,
        &ReplayOptions::default(),
        &replayed,
        &mut |_| {},
    )
    .await
    .unwrap();
    let replayed = replayed.runs();
    assert_eq!(summary.updates, workload.unique_events() as u64);
    assert!(
        replayed.iter().all(is_verdict_or_no_subject),
        "replay reads complete history: {:?}",
        by_label(&replayed)
    );

    // (a) Every live verdict is replay's at the same (check, subject, time).
    let by_key: BTreeMap<Key, &RunRecord> = replayed.iter().map(|r| (key(r), r)).collect();
    assert_eq!(by_key.len(), replayed.len(), "one replayed run per key");
    let mut compared = 0;
    for l in live.iter().filter(|r| is_verdict(r)) {
        let r = by_key
            .get(&key(l))
            .unwrap_or_else(|| panic!("live ran {l:?}; replay did not"));
        assert_eq!(r.outcome, l.outcome, "{:?}", key(l));
        assert_eq!(r.evidence, l.evidence, "{:?}", key(l));
        compared += 1;
    }
    assert!(compared > 0);

    // (b) The pairs failing live are the pairs replay fails at a time live evaluated.
    let live_times: BTreeSet<Key> = live.iter().map(key).collect();
    let replay_fails_at_live_times: BTreeSet<(String, String)> = replayed
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Fail { .. }) && live_times.contains(&key(r)))
        .map(|r| (r.check.clone(), r.subject.clone()))
        .collect();
    assert_eq!(failing(&live), replay_fails_at_live_times);

    // (c) Replay finds every injected fault, and nothing else.
    let truth: BTreeSet<(String, String)> = workload
        .expected_failures()
        .into_iter()
        .map(|(c, s)| (c.to_owned(), s))
        .collect();
    let replay_fails = failing(&replayed);
    let missed: Vec<_> = truth.difference(&replay_fails).collect();
    let extra: Vec<_> = replay_fails.difference(&truth).collect();
    assert!(missed.is_empty(), "replay missed faults: {missed:?}");
    assert!(
        extra.is_empty(),
        "replay failures outside the ground truth: {extra:?}"
    );
    println!(
        "live: {} runs {:?}; replay: {} runs {:?} over {} updates; {} live verdicts compared; \
         {} faulty pairs",
        live.len(),
        by_label(&live),
        replayed.len(),
        by_label(&replayed),
        summary.updates,
        compared,
        truth.len()
    );
}

fn is_verdict_or_no_subject(r: &RunRecord) -> bool {
    is_verdict(r) || matches!(r.outcome, Outcome::NoSubject)
}
