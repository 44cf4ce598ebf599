//! Scheduling end to end with paused time, over a real DAL (local history on a memory
//! store, embedded catalog) and the in-process bus:
//! - a ledger source lagging 10 s behind transfers, within a 30 s grace: no false alarm
//!   under freshness-aware, the false alarm under immediate;
//! - a ledger source stalled past the max delay: a "stale source" verdict, not a mismatch.

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
