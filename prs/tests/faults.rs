//! Transient storage faults are retried, never verdicts: a runner whose catalog and object
//! store fail one call in twenty (transiently: a blip, a restarted server, throttling; a
//! run is retried whole, so a view build of n calls gets through with probability 0.95^n
//! per attempt — at one in five, builds of dozens of calls hardly ever do) ends
//! exactly where a runner without faults ends — every (check, subject) evaluated at the
//! same latest time with the same verdict, every verdict at a time both evaluated the same,
//! the same incidents — and no `error` verdict comes from a fault. The checks read a join
//! (transfer with its ledger entries) shared by two checks, one of them freshness-aware,
//! so view builds, shared builds, selection, watermark reads, the feed (the bus) and the
//! incident writes all meet faults.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use overseer_dal::Dal;
use overseer_dal::bus::feed::CatalogFeed;
use overseer_dal::bus::{Delivered, DeliveryTag, Subscription};
use overseer_dal::catalog::DynCatalog;
use overseer_dal::catalog::embedded::EmbeddedCatalog;
use overseer_dal::store::DynStore;
use overseer_dal::store::memory::MemoryStore;
use overseer_dal::update::Micros;
use overseer_protos::views::TransferWithLedger;
use overseer_prs::check::{Registry, Strategy, Verdict};
use overseer_prs::escalate::{LogNotifier, Notifier, Severity};
use overseer_prs::incident::{Escalator, Routes};
use overseer_prs::runner::{Outcome, RunRecord, Runner, RunnerOptions, Sink};
use overseer_testkit::faults::{Faults, FaultyCatalog, FaultyStore};
use overseer_testkit::sink::{CollectSink, verdicts};

fn has_entries(v: &TransferWithLedger) -> Verdict {
    Verdict::check(!v.entries.is_empty(), || {
        Verdict::fail_with("no entries", json!({}))
    })
}

fn registry() -> Arc<Registry> {
    let mut r = Registry::new();
    r.check("nets_to_zero", common::nets_to_zero)
        .strategy(Strategy::Immediate);
    r.check("has_entries", has_entries)
        .strategy(Strategy::FreshnessAware {
            max_delay: Duration::from_secs(3600),
        });
    Arc::new(r)
}

/// The joined history of `common`, with both sources complete well past it.
/// Returns the number of notifications the history makes (one per indexed update).
async fn history(catalog: &DynCatalog, store: &DynStore) -> usize {
    let total = common::history(catalog, store)
        .await
        .iter()
        .map(Vec::len)
        .sum();
    for source in ["payments", "ledger"] {
        catalog
            .heartbeat(source, common::T0 + 60_000_000, common::T0)
            .await
            .unwrap();
    }
    total
}

/// A subscription that records the newest offset the runner commits.
struct Recording {
    inner: Box<dyn Subscription>,
    committed: Arc<Mutex<i64>>,
}

#[async_trait::async_trait]
impl Subscription for Recording {
    async fn recv(&mut self, max: usize) -> overseer_dal::Result<Vec<Delivered>> {
        self.inner.recv(max).await
    }
    async fn commit(&mut self, tags: &[DeliveryTag]) -> overseer_dal::Result<()> {
        self.inner.commit(tags).await?;
        let mut top = self.committed.lock().unwrap();
        for t in tags {
            *top = (*top).max(t.offset);
        }
        Ok(())
    }
}

/// Hands each verdict to the incident state machine, then keeps it.
struct Both(Escalator, Arc<CollectSink>);

#[async_trait::async_trait]
impl Sink for Both {
    async fn record(&self, run: &RunRecord) -> overseer_prs::Result<()> {
        self.0.record(run).await?;
        self.1.record(run).await
    }
}

/// What a run of the runner over one copy of the history ended with.
struct Ended {
    runs: Vec<RunRecord>,
    /// (check, subject) → (failing, last evaluation time, message).
    incidents: BTreeMap<(String, String), (bool, Micros, String)>,
}

/// Writes the history into a fresh catalog and store, then runs a runner over them — seen
/// through `faults` once armed — until it has committed the last notification.
async fn run_over_history(faults: Arc<Faults>) -> Ended {
    let dir = tempfile::tempdir().unwrap();
    let catalog: DynCatalog =
        Arc::new(EmbeddedCatalog::open(dir.path().join("catalog.redb")).unwrap());
    let store: DynStore = Arc::new(MemoryStore::new());
    let total = history(&catalog, &store).await;
    // The last notification, as a second reader of the feed sees it (read to the end, by
    // count: a pause between batches is not the end).
    let mut probe = CatalogFeed::open(
        catalog.clone(),
        store.clone(),
        "probe",
        Duration::from_millis(5),
    )
    .await
    .unwrap();
    let (mut seen, mut last) = (0, -1);
    while seen < total {
        let batch = tokio::time::timeout(Duration::from_secs(30), probe.recv(4096))
            .await
            .expect("the probe reads the whole history")
            .unwrap();
        seen += batch.len();
        last = batch.last().map_or(last, |d| d.tag.offset);
    }
    assert_eq!(seen, total);
    assert!(last > 0);

    let (catalog, store) = (
        FaultyCatalog::wrap(catalog, faults.clone()),
        FaultyStore::wrap(store, faults.clone()),
    );
    let options = RunnerOptions {
        model_sources: BTreeMap::from([
            ("payments.transfers".into(), vec!["payments".into()]),
            ("ledger.entries".into(), vec!["ledger".into()]),
            ("payments.assets".into(), vec!["payments".into()]),
        ]),
        watermark_poll: Duration::from_millis(10),
        commit_interval: Duration::from_millis(10),
        ..RunnerOptions::default()
    };
    let runner = Runner::new(
        Dal::new(catalog.clone(), store.clone()),
        registry(),
        options,
    )
    .unwrap();
    let feed = CatalogFeed::open(
        catalog.clone(),
        store.clone(),
        "prs",
        Duration::from_millis(5),
    )
    .await
    .unwrap();
    let committed = Arc::new(Mutex::new(-1));
    let sub = Box::new(Recording {
        inner: Box::new(feed),
        committed: committed.clone(),
    });
    let policy: Arc<dyn Notifier> = Arc::new(LogNotifier::new());
    let routes = Routes {
        policies: BTreeMap::from([("log".to_owned(), policy)]),
        default_policy: "log".into(),
        by_check: BTreeMap::new(),
        muted: BTreeSet::new(),
        severity: Severity::Error,
    };
    let checks = ["nets_to_zero".to_owned(), "has_entries".to_owned()];
    let (escalator, _outbox) = Escalator::new(catalog.clone(), routes, checks).unwrap();
    let collected = Arc::new(CollectSink::new());
    let sink = Arc::new(Both(escalator, collected.clone()));

    faults.arm();
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner.run(sub, sink, stop.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while *committed.lock().unwrap() < last {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the runner never committed the last notification ({last}); committed {}, \
             {} runs, {} faults",
            committed.lock().unwrap(),
            collected.len(),
            faults.injected()
        );
        assert!(!task.is_finished(), "the runner stopped: {:?}", task.await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    task.await.unwrap().unwrap();
    faults.disarm();
    let incidents = catalog
        .incidents(false)
        .await
        .unwrap()
        .into_iter()
        .map(|i| ((i.check, i.subject), (i.failing, i.last_eval_us, i.message)))
        .collect();
    Ended {
        runs: collected.runs(),
        incidents,
    }
}

/// (check, subject) → (latest evaluation time, its verdict).
fn latest(
    all: &BTreeMap<(String, String, Micros), String>,
) -> BTreeMap<(String, String), (Micros, String)> {
    let mut out = BTreeMap::new();
    for ((check, subject, eval), v) in all {
        out.insert((check.clone(), subject.clone()), (*eval, v.clone()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_faults_end_exactly_as_without_them() {
    let clean = run_over_history(Faults::new(0, 1)).await;
    let faults = Faults::new(50, 42);
    let faulty = run_over_history(faults.clone()).await;
    assert!(
        faults.injected() >= 10,
        "faults were met: {} of {} calls",
        faults.injected(),
        faults.calls()
    );

    let errors: Vec<&RunRecord> = faulty
        .runs
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Error { .. }))
        .collect();
    assert!(
        errors.is_empty(),
        "no error verdict from a fault: {errors:#?}"
    );
    assert!(
        clean
            .runs
            .iter()
            .all(|r| !matches!(r.outcome, Outcome::Error { .. }))
    );

    let (want, got) = (verdicts(&clean.runs), verdicts(&faulty.runs));
    let (want_latest, got_latest) = (latest(&want), latest(&got));
    assert_eq!(want_latest.len(), common::TRANSFERS * 2, "{want_latest:#?}");
    assert_eq!(
        got_latest, want_latest,
        "every (check, subject) evaluated at the same latest time, with the same verdict"
    );
    let failing = want_latest
        .values()
        .filter(|(_, v)| v.starts_with("fail"))
        .count();
    assert!(failing >= 3, "the history has failures: {want_latest:#?}");
    for (key, v) in &got {
        if let Some(w) = want.get(key) {
            assert_eq!(v, w, "{key:?}: the same verdict at the same time");
        }
    }
    assert_eq!(faulty.incidents, clean.incidents, "the same incidents");
    assert!(clean.incidents.values().any(|(failing, _, _)| *failing));
}
