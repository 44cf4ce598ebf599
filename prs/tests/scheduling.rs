//! Scheduling end to end with paused time, over a real DAL (local history on a memory
//! store, embedded catalog) and the in-process bus:
//! - a ledger source lagging 10 s behind transfers, within a 30 s grace: no false alarm
//!   under freshness-aware, the false alarm under immediate;
//! - a ledger source stalled past the max delay: a "stale source" verdict, not a mismatch;
//! - a ledger connector that stops past the max delay and resumes (with a runner restart
//!   in between): stale verdicts, re-armed, run again on resume; only the fault pages.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use overseer_dal::Dal;
use overseer_dal::bus::Bus;
use overseer_dal::bus::memory::MemoryBus;
use overseer_dal::catalog::DynCatalog;
use overseer_dal::catalog::embedded::EmbeddedCatalog;
use overseer_dal::store::DynStore;
use overseer_dal::store::memory::MemoryStore;
use overseer_dal::update::{Micros, UpdateRecord};
use overseer_protos::views::{Direction, TransferWithLedger};
use overseer_prs::check::{Registry, Strategy, Verdict};
use overseer_prs::runner::{Outcome, RunRecord, Runner, RunnerOptions};
use overseer_testkit::history::{Changes, write_segment};
use overseer_testkit::sink::CollectSink;

const S: Micros = 1_000_000;

/// Credits equal debits, over at least two entries.
fn nets_to_zero(v: &TransferWithLedger) -> Verdict {
    if v.entries.len() < 2 {
        return Verdict::fail(format!(
            "{} ledger entries, expected at least 2",
            v.entries.len()
        ));
    }
    let net: i64 = v
        .entries
        .iter()
        .map(|e| match e.direction() {
            Direction::Credit => e.amount_minor,
            _ => -e.amount_minor,
        })
        .sum();
    Verdict::check(net == 0, || Verdict::fail(format!("entries net to {net}")))
}

struct World {
    _dir: tempfile::TempDir,
    store: DynStore,
    catalog: DynCatalog,
    bus: Arc<MemoryBus>,
}

impl World {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let catalog: DynCatalog =
            Arc::new(EmbeddedCatalog::open(dir.path().join("catalog.redb")).unwrap());
        World {
            _dir: dir,
            store: Arc::new(MemoryStore::new()),
            catalog,
            bus: Arc::new(MemoryBus::new(10_000)),
        }
    }

    /// Ingests `records` (one segment) and publishes their notifications.
    async fn ingest(&self, records: Vec<UpdateRecord>) {
        let entries = write_segment(&*self.store, &*self.catalog, records, vec![])
            .await
            .unwrap();
        let notes: Vec<_> = entries.iter().map(|e| e.notification()).collect();
        self.bus.publish(&notes).await.unwrap();
    }

    async fn watermark(&self, source: &str, wm: Micros) {
        self.catalog.heartbeat(source, wm, wm).await.unwrap();
    }
}

/// How the ledger source behaves.
#[derive(Clone, Copy, Debug)]
enum Ledger {
    /// Its events arrive `lag` after their commit; it is otherwise caught up.
    Lagging { lag: Micros },
    /// It stops at its commit time `t0 - 10 s` and never delivers the entries.
    Stalled,
}

/// A completed transfer T1 committed at t0 (source `pg`, caught up), its two balanced
/// ledger entries committed at t0 + 1 s on the `ledger` source; 90 s of virtual time.
async fn scenario(strategy: Strategy, ledger: Ledger) -> Vec<RunRecord> {
    let w = World::new();
    let t0: Micros = 1_700_000_000 * S;
    let start = tokio::time::Instant::now();
    let vt = || t0 + start.elapsed().as_micros() as Micros;

    let mut registry = Registry::new();
    registry
        .check("nets_to_zero", nets_to_zero)
        .grace(Duration::from_secs(30))
        .strategy(strategy);
    let options = RunnerOptions {
        model_sources: BTreeMap::from([
            ("payments.transfers".into(), vec!["pg".into()]),
            ("payments.assets".into(), vec!["pg".into()]),
            ("ledger.entries".into(), vec!["ledger".into()]),
        ]),
        ..RunnerOptions::default()
    };
    let dal = Dal::new(w.catalog.clone(), w.store.clone());
    let runner = Runner::new(dal, Arc::new(registry), options).unwrap();
    let sub = w.bus.subscribe("prs").await.unwrap();
    let sink = Arc::new(CollectSink::new());
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner.run(sub, sink.clone(), stop.clone()));

    let mut pg = Changes::new("pg");
    let mut lg = Changes::new("ledger").refs(&["transfer_id"]);
    w.watermark("ledger", t0 - 10 * S).await;
    w.ingest(vec![
        pg.row(
            "payments.assets",
            "USD",
            t0 - 100 * S,
            "r",
            json!({"symbol": "USD", "decimals": 2}),
        ),
        pg.row(
            "payments.transfers",
            "T1",
            t0,
            "c",
            json!({"id": "T1", "asset": "USD", "amount": "5.00", "status": "completed"}),
        ),
    ])
    .await;
    let entry = |id: &str, dir: &str| {
        json!({"transfer_id": "T1", "asset": "USD", "direction": dir,
               "amount_minor": {"$numberLong": "500"}, "decimals": 2})
        .as_object()
        .cloned()
        .map(|mut m| {
            m.insert("_id".into(), json!(id));
            serde_json::Value::Object(m)
        })
        .unwrap()
    };
    let entries_commit = t0 + S;
    let mut delivered = false;
    while vt() < t0 + 90 * S {
        let now = vt();
        w.watermark("pg", now).await;
        match ledger {
            Ledger::Lagging { lag } => {
                if !delivered && now >= entries_commit + lag {
                    w.ingest(vec![
                        lg.insert("ledger.entries", "e1", entries_commit, entry("e1", "debit")),
                        lg.insert(
                            "ledger.entries",
                            "e2",
                            entries_commit,
                            entry("e2", "credit"),
                        ),
                    ])
                    .await;
                    delivered = true;
                }
                w.watermark("ledger", now - lag).await;
            }
            Ledger::Stalled => {}
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.cancel();
    task.await.unwrap().unwrap();
    sink.runs()
}

fn outcomes(runs: &[RunRecord]) -> Vec<&'static str> {
    runs.iter().map(|r| r.outcome.label()).collect()
}

#[tokio::test(start_paused = true)]
async fn lagging_source_within_grace_no_false_alarm_under_freshness() {
    let runs = scenario(
        Strategy::FreshnessAware {
            max_delay: Duration::from_secs(120),
        },
        Ledger::Lagging { lag: 10 * S },
    )
    .await;
    assert_eq!(outcomes(&runs), ["pass", "pass"], "{runs:#?}");
    let t0 = 1_700_000_000 * S;
    let r = &runs[0];
    assert_eq!(r.subject, "T1");
    assert_eq!(
        (r.eval_us, r.triggers),
        (t0 + 30 * S, 1),
        "the transfer's own run"
    );
    assert_eq!(r.evidence, Vec::<String>::new(), "a pass names no evidence");
    let r = &runs[1];
    assert_eq!(
        (r.eval_us, r.triggers),
        (t0 + 31 * S, 2),
        "both entries' triggers gathered into one follow-up"
    );
}

#[tokio::test(start_paused = true)]
async fn lagging_source_raises_the_false_alarm_under_immediate() {
    let runs = scenario(Strategy::Immediate, Ledger::Lagging { lag: 10 * S }).await;
    let o = outcomes(&runs);
    assert_eq!(o.first(), Some(&"fail"), "{runs:#?}");
    match &runs[0].outcome {
        Outcome::Fail { message, .. } => assert!(message.contains("0 ledger entries"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        runs[0].evidence.len(),
        2,
        "a failure names its view's records, the transfer and the asset (no entries yet): {:?}",
        runs[0].evidence
    );
    assert_eq!(
        o.last(),
        Some(&"pass"),
        "the entries' own triggers pass later: {o:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn stalled_source_past_max_delay_is_a_stale_verdict() {
    let runs = scenario(
        Strategy::FreshnessAware {
            max_delay: Duration::from_secs(60),
        },
        Ledger::Stalled,
    )
    .await;
    assert_eq!(outcomes(&runs), ["stale"], "{runs:#?}");
    match &runs[0].outcome {
        Outcome::Stale {
            sources, message, ..
        } => {
            assert_eq!(sources, &["ledger"]);
            assert!(message.contains("0 ledger entries"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

/// Entries of `transfer`: a debit of 5.00 and a credit of `credit_minor`.
fn entries(lg: &mut Changes, transfer: &str, t: Micros, credit_minor: i64) -> Vec<UpdateRecord> {
    [("debit", 500), ("credit", credit_minor)]
        .iter()
        .map(|(dir, minor)| {
            let id = format!("{transfer}-{dir}");
            lg.insert(
                "ledger.entries",
                &id,
                t,
                json!({"_id": id, "transfer_id": transfer, "asset": "USD", "direction": dir,
                       "amount_minor": {"$numberLong": minor.to_string()}, "decimals": 2}),
            )
        })
        .collect()
}

/// Starts a runner of `nets_to_zero` (freshness-aware, max delay 60 s, grace 30 s) on the
/// bus group "prs", escalating to `notifier`.
fn start_runner(
    w: &World,
    notifier: &overseer_testkit::memory::MemoryNotifier,
) -> (
    tokio::task::JoinHandle<overseer_prs::Result<overseer_prs::runner::RunnerReport>>,
    Arc<CollectSink>,
    overseer_prs::incident::Outbox,
    CancellationToken,
) {
    use overseer_prs::escalate::{Notifier, Severity};
    use overseer_prs::incident::{Escalator, Routes};
    let mut registry = Registry::new();
    registry
        .check("nets_to_zero", nets_to_zero)
        .grace(Duration::from_secs(30))
        .strategy(Strategy::FreshnessAware {
            max_delay: Duration::from_secs(60),
        });
    let options = RunnerOptions {
        model_sources: BTreeMap::from([
            ("payments.transfers".into(), vec!["pg".into()]),
            ("payments.assets".into(), vec!["pg".into()]),
            ("ledger.entries".into(), vec!["ledger".into()]),
        ]),
        ..RunnerOptions::default()
    };
    let runner = Runner::new(
        Dal::new(w.catalog.clone(), w.store.clone()),
        Arc::new(registry),
        options,
    )
    .unwrap();
    let policy: Arc<dyn Notifier> = Arc::new(notifier.clone());
    let routes = Routes {
        policies: BTreeMap::from([("mem".to_owned(), policy)]),
        default_policy: "mem".into(),
        by_check: BTreeMap::new(),
        muted: Default::default(),
        severity: Severity::Critical,
    };
    let (escalator, outbox) =
        Escalator::new(w.catalog.clone(), routes, ["nets_to_zero".to_owned()]).unwrap();
    let collected = Arc::new(CollectSink::new());
    let sink = Arc::new(Tee(escalator, collected.clone()));
    let stop = CancellationToken::new();
    let bus = w.bus.clone();
    let stop2 = stop.clone();
    let task = tokio::spawn(async move {
        let sub = bus.subscribe("prs").await.unwrap();
        runner.run(sub, sink, stop2).await
    });
    (task, collected, outbox, stop)
}

/// Escalates each verdict, then keeps it.
struct Tee(overseer_prs::incident::Escalator, Arc<CollectSink>);

#[async_trait::async_trait]
impl overseer_prs::runner::Sink for Tee {
    async fn record(&self, run: &RunRecord) -> overseer_prs::Result<()> {
        self.0.record(run).await?;
        self.1.record(run).await
    }
}

/// (subject, outcome) of each run, in order.
fn by_subject(runs: &[RunRecord]) -> Vec<(String, &'static str)> {
    runs.iter()
        .map(|r| (r.subject.clone(), r.outcome.label()))
        .collect()
}

/// A ledger connector stops (no events, no heartbeats) for longer than the max delay,
/// and the runner restarts meanwhile: every check goes stale (nothing pages, nothing
/// resolves); when the connector resumes, each stale evaluation runs again — the
/// re-armed ones with no new event at all — the unbalanced transfer pages, the rest pass.
#[tokio::test(start_paused = true)]
async fn stale_is_not_final_rerun_when_the_stopped_source_resumes() {
    let w = World::new();
    let t0: Micros = 1_700_000_000 * S;
    let start = tokio::time::Instant::now();
    let vt = || t0 + start.elapsed().as_micros() as Micros;
    let notifier = overseer_testkit::memory::MemoryNotifier::new();
    let (task, first_runs, _outbox, stop) = start_runner(&w, &notifier);

    let mut pg = Changes::new("pg");
    let mut lg = Changes::new("ledger").refs(&["transfer_id"]);
    // The ledger's connector delivers T2's (unbalanced) and T3's (balanced) entries, then
    // stops: its watermark stays at t0 - 10 s.
    w.watermark("ledger", t0 - 10 * S).await;
    let mut recs = vec![pg.row(
        "payments.assets",
        "USD",
        t0 - 100 * S,
        "r",
        json!({"symbol": "USD", "decimals": 2}),
    )];
    for t in ["T1", "T2", "T3"] {
        recs.push(pg.row(
            "payments.transfers",
            t,
            t0,
            "c",
            json!({"id": t, "asset": "USD", "amount": "5.00", "status": "completed"}),
        ));
    }
    w.ingest(recs).await;
    let mut early = entries(&mut lg, "T2", t0 - 20 * S, 400);
    early.extend(entries(&mut lg, "T3", t0 - 20 * S, 500));
    w.ingest(early).await;
    // 80 s pass with the ledger stopped: past the 60 s max delay.
    while vt() < t0 + 80 * S {
        w.watermark("pg", vt()).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let runs = first_runs.runs();
    let stale: Vec<_> = by_subject(&runs)
        .into_iter()
        .filter(|(_, o)| *o == "stale")
        .map(|(s, _)| s)
        .collect();
    assert!(
        ["T1", "T2", "T3"]
            .iter()
            .all(|t| stale.contains(&t.to_string())),
        "every transfer went stale: {runs:#?}"
    );
    assert!(
        runs.iter().all(|r| r.outcome.label() == "stale"),
        "nothing but stale verdicts: {runs:#?}"
    );
    for t in ["T1", "T2", "T3"] {
        let inc = w
            .catalog
            .incident("nets_to_zero", t)
            .await
            .unwrap()
            .unwrap();
        assert!(
            !inc.failing && inc.rearm_eval_us == t0 + 30 * S,
            "owed again, nothing open: {inc:?}"
        );
    }

    // The runner restarts while the connector is still stopped: the owed runs are re-armed
    // from the catalog (their notifications were committed with the stale verdicts).
    stop.cancel();
    task.await.unwrap().unwrap();
    let (task, runs_after, outbox, stop) = start_runner(&w, &notifier);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(runs_after.is_empty(), "{:#?}", runs_after.runs());

    // The connector resumes: T1's entries arrive, and its heartbeats move the watermark
    // (T2 and T3 get no new event).
    w.ingest(entries(&mut lg, "T1", t0 + S, 500)).await;
    while vt() < t0 + 100 * S {
        w.watermark("pg", vt()).await;
        w.watermark("ledger", vt()).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.cancel();
    task.await.unwrap().unwrap();
    let mut after = by_subject(&runs_after.runs());
    after.sort();
    assert_eq!(
        after,
        [
            ("T1".to_owned(), "pass"),
            ("T2".to_owned(), "fail"),
            ("T3".to_owned(), "pass")
        ],
        "{:#?}",
        runs_after.runs()
    );
    outbox.drain().await.unwrap();
    let sent: Vec<(String, String)> = notifier
        .delivered()
        .iter()
        .map(|a| {
            (
                a.notice.action.as_str().to_owned(),
                a.notice.subject.clone(),
            )
        })
        .collect();
    assert_eq!(
        sent,
        [("trigger".to_owned(), "T2".to_owned())],
        "only the fault pages"
    );
    for t in ["T1", "T2", "T3"] {
        let inc = w
            .catalog
            .incident("nets_to_zero", t)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(inc.rearm_eval_us, 0, "{inc:?}");
        assert_eq!(inc.failing, t == "T2", "{inc:?}");
    }
}
