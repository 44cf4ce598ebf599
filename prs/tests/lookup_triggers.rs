//! Lookup triggers and multi-field joins through the runner, over a real DAL (history on a
//! memory store, embedded catalog) and the in-process bus:
//! - a team's view like `TransferWithLedger` whose asset has `(lookup_ref) = "asset"`: a
//!   change of an asset's decimals re-checks every transfer in that asset (and no other),
//!   as of the change, and the verdict follows the asset (fails at 4 decimals, passes back
//!   at 2); transfers not settled at the change are left to their own triggers;
//! - `WalletWithEntries` joins entries on `(account_id, asset)` = the wallet id's parts:
//!   an entry update re-checks exactly its wallet, and the view holds exactly its entries.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use overseer_dal::Dal;
use overseer_dal::bus::Bus;
use overseer_dal::bus::memory::MemoryBus;
use overseer_dal::catalog::DynCatalog;
use overseer_dal::catalog::embedded::EmbeddedCatalog;
use overseer_dal::store::DynStore;
use overseer_dal::store::memory::MemoryStore;
use overseer_dal::update::{Micros, UpdateRecord};
use overseer_protos::views::{Asset, Direction, LedgerEntry, Transfer, WalletWithEntries};
use overseer_prs::check::{Registry, Strategy, Verdict};
use overseer_prs::runner::{Outcome, RunRecord, Runner, RunnerOptions};
use overseer_prs::validate::Models;
use overseer_testkit::history::{Changes, write_segment};
use overseer_testkit::sink::CollectSink;

/// A team's view: the payments example's `TransferWithLedger`, with the asset lookup
/// opted into triggering (the shipped view does not).
const TEAM_PROTO: &str = r#"
syntax = "proto3";
package team.v1;
import "overseer/views.proto";
message TransferWithLedger {
  overseer.views.v1.Transfer transfer = 1 [(overseer.views.v1.subject) = true];
  repeated overseer.views.v1.LedgerEntry entries = 2 [(overseer.views.v1.join_ref) = "transfer_id"];
  overseer.views.v1.Asset asset = 3 [(overseer.views.v1.lookup) = "asset", (overseer.views.v1.lookup_ref) = "asset"];
}
"#;

/// `team.v1.TransferWithLedger`, as the team's build script would generate it.
#[derive(Clone, PartialEq, prost::Message)]
struct TransferWithLedger {
    #[prost(message, optional, tag = "1")]
    transfer: Option<Transfer>,
    #[prost(message, repeated, tag = "2")]
    entries: Vec<LedgerEntry>,
    #[prost(message, optional, tag = "3")]
    asset: Option<Asset>,
}

impl prost::Name for TransferWithLedger {
    const NAME: &'static str = "TransferWithLedger";
    const PACKAGE: &'static str = "team.v1";
}

/// [`TEAM_PROTO`] compiled with its imports, as a team's build script embeds it.
fn team_descriptor_set() -> &'static [u8] {
    overseer_testkit::proto::compile_static(TEAM_PROTO)
}

/// Like the payments example's `entries_match_amount`: every entry uses the asset's
/// decimals, and the credits equal the amount (whole units here) at that precision.
fn entries_match_amount(v: &TransferWithLedger) -> Verdict {
    let (Some(t), Some(asset)) = (&v.transfer, &v.asset) else {
        return Verdict::fail("no transfer or no asset");
    };
    if let Some(e) = v.entries.iter().find(|e| e.decimals != asset.decimals) {
        return Verdict::fail(format!(
            "entry {} uses {} decimals, asset {} has {}",
            e.id, e.decimals, asset.symbol, asset.decimals
        ));
    }
    let units: i64 = t.amount.parse().expect("whole units");
    let expected = units * 10i64.pow(asset.decimals as u32);
    let credits: i64 = v
        .entries
        .iter()
        .filter(|e| e.direction() == Direction::Credit)
        .map(|e| e.amount_minor)
        .sum();
    Verdict::check(credits == expected, || {
        Verdict::fail(format!("credits {credits}, expected {expected}"))
    })
}

fn wallet_sum(v: &WalletWithEntries) -> Verdict {
    let w = v.wallet.as_ref().expect("wallet");
    let sum: i64 = v
        .entries
        .iter()
        .map(|e| match e.direction() {
            Direction::Credit => e.amount_minor,
            _ => -e.amount_minor,
        })
        .sum();
    let ids: Vec<&str> = v.entries.iter().map(|e| e.id.as_str()).collect();
    Verdict::check(sum == w.balance_minor, || {
        Verdict::fail(format!(
            "balance {} but entries {ids:?} sum to {sum}",
            w.balance_minor
        ))
    })
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
            bus: Arc::new(MemoryBus::new(1000)),
        }
    }

    async fn ingest(&self, recs: Vec<UpdateRecord>) {
        let entries = write_segment(&*self.store, &*self.catalog, recs, vec![])
            .await
            .unwrap();
        let notes: Vec<_> = entries.iter().map(|e| e.notification()).collect();
        self.bus.publish(&notes).await.unwrap();
    }
}

/// The configured models, as `[[models]]` would declare them.
fn models() -> Models {
    let refs = |r: &[&str]| {
        r.iter()
            .map(|n| ((*n).to_owned(), (*n).to_owned()))
            .collect::<BTreeMap<_, _>>()
    };
    BTreeMap::from([
        ("payments.transfers".into(), refs(&["asset"])),
        ("payments.assets".into(), refs(&[])),
        (
            "ledger.entries".into(),
            refs(&["transfer_id", "account_id", "asset"]),
        ),
        ("ledger.wallets".into(), refs(&[])),
    ])
}

fn entry(transfer: &str, account: &str, asset: &str, dir: &str, minor: i64, dec: i32) -> Value {
    json!({"transfer_id": transfer, "account_id": account, "asset": asset, "direction": dir,
           "amount_minor": {"$numberLong": minor.to_string()}, "decimals": dec})
}

/// Waits until `sink` holds runs matching `pred`, `n` of them.
async fn wait_for(sink: &CollectSink, n: usize, pred: impl Fn(&RunRecord) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let runs = sink.runs();
        if runs.iter().filter(|r| pred(r)).count() >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waiting for {n} runs, have: {runs:#?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_asset_change_rechecks_its_transfers_as_of_the_change() {
    let w = World::new();
    let mut registry = Registry::new();
    registry.views(team_descriptor_set());
    registry
        .check("entries_match_amount", entries_match_amount)
        .strategy(Strategy::Immediate);
    let options = RunnerOptions {
        model_sources: BTreeMap::from([
            ("payments.transfers".into(), vec!["pg".into()]),
            ("payments.assets".into(), vec!["pg".into()]),
            ("ledger.entries".into(), vec!["ledger".into()]),
        ]),
        // Validated at start: the lookup trigger needs `payments.transfers` to declare
        // `asset`.
        models: Some(models()),
        ..RunnerOptions::default()
    };
    let dal = Dal::new(w.catalog.clone(), w.store.clone());
    let runner = Runner::new(dal, Arc::new(registry), options).unwrap();
    let sub = w.bus.subscribe("prs").await.unwrap();
    let sink = Arc::new(CollectSink::new());
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner.run(sub, sink.clone(), stop.clone()));

    let mut pg = Changes::new("pg").refs(&["asset"]);
    let mut lg = Changes::new("ledger").refs(&["transfer_id", "account_id", "asset"]);
    let t: Micros = 1_700_000_000_000_000;
    let transfer = |id: &str, asset: &str| json!({"id": id, "account_id": "a", "asset": asset, "amount": "12", "status": "completed"});
    w.ingest(vec![
        pg.row(
            "payments.assets",
            "USD",
            t,
            "r",
            json!({"symbol": "USD", "decimals": 2}),
        ),
        pg.row(
            "payments.assets",
            "EUR",
            t,
            "r",
            json!({"symbol": "EUR", "decimals": 2}),
        ),
        pg.row("payments.transfers", "T1", t, "c", transfer("T1", "USD")),
        pg.row("payments.transfers", "T2", t, "c", transfer("T2", "EUR")),
    ])
    .await;
    w.ingest(vec![
        lg.insert(
            "ledger.entries",
            "e1",
            t,
            entry("T1", "a", "USD", "debit", 1200, 2),
        ),
        lg.insert(
            "ledger.entries",
            "e2",
            t,
            entry("T1", "b", "USD", "credit", 1200, 2),
        ),
        lg.insert(
            "ledger.entries",
            "e3",
            t,
            entry("T2", "a", "EUR", "debit", 1200, 2),
        ),
        lg.insert(
            "ledger.entries",
            "e4",
            t,
            entry("T2", "b", "EUR", "credit", 1200, 2),
        ),
    ])
    .await;
    wait_for(&sink, 2, |r| r.eval_us == t && r.outcome == Outcome::Pass).await;

    // USD takes 4 decimals: T1 (in USD) is re-checked as of the change, and fails.
    let t2 = t + 1_000_000;
    w.ingest(vec![pg.row(
        "payments.assets",
        "USD",
        t2,
        "u",
        json!({"symbol": "USD", "decimals": 4}),
    )])
    .await;
    wait_for(&sink, 1, |r| r.eval_us == t2).await;
    // Back to 2 decimals: T1 passes again, as of that change.
    let t3 = t2 + 1_000_000;
    w.ingest(vec![pg.row(
        "payments.assets",
        "USD",
        t3,
        "u",
        json!({"symbol": "USD", "decimals": 2}),
    )])
    .await;
    wait_for(&sink, 1, |r| r.eval_us == t3).await;
    stop.cancel();
    task.await.unwrap().unwrap();

    let after: Vec<(String, Micros, Outcome)> = sink
        .runs()
        .into_iter()
        .filter(|r| r.eval_us > t)
        .map(|r| (r.subject, r.eval_us, r.outcome))
        .collect();
    assert_eq!(
        after,
        [
            (
                "T1".to_owned(),
                t2,
                Outcome::Fail {
                    message: "entry e1 uses 2 decimals, asset USD has 4".into(),
                    details: Value::Null
                }
            ),
            ("T1".to_owned(), t3, Outcome::Pass),
        ],
        "only USD's transfer, as of each change"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_field_join_selects_and_views_exactly_its_wallet() {
    let w = World::new();
    let mut registry = Registry::new();
    registry
        .check("wallet_sum", wallet_sum)
        .strategy(Strategy::Immediate);
    let options = RunnerOptions {
        model_sources: BTreeMap::from([
            ("ledger.entries".into(), vec!["ledger".into()]),
            ("ledger.wallets".into(), vec!["ledger".into()]),
        ]),
        models: Some(models()),
        ..RunnerOptions::default()
    };
    let dal = Dal::new(w.catalog.clone(), w.store.clone());
    let runner = Runner::new(dal, Arc::new(registry), options).unwrap();
    let sub = w.bus.subscribe("prs").await.unwrap();
    let sink = Arc::new(CollectSink::new());
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner.run(sub, sink.clone(), stop.clone()));

    let mut lg = Changes::new("ledger").refs(&["transfer_id", "account_id", "asset"]);
    let t: Micros = 1_700_000_000_000_000;
    let wallet =
        |id: &str, b: i64| json!({"_id": id, "balance_minor": {"$numberLong": b.to_string()}});
    // Account `acc:1` (the id holds the separator) in two assets, and account `acc` in USD.
    w.ingest(vec![
        lg.insert(
            "ledger.entries",
            "e1",
            t,
            entry("T1", "acc:1", "USD", "credit", 500, 2),
        ),
        lg.insert(
            "ledger.entries",
            "e2",
            t,
            entry("T2", "acc:1", "USD", "debit", 200, 2),
        ),
        lg.insert(
            "ledger.entries",
            "e3",
            t,
            entry("T3", "acc:1", "EUR", "credit", 900, 2),
        ),
        lg.insert(
            "ledger.entries",
            "e4",
            t,
            entry("T4", "acc", "USD", "credit", 70, 2),
        ),
        lg.insert("ledger.wallets", "acc:1:USD", t, wallet("acc:1:USD", 300)),
        lg.insert("ledger.wallets", "acc:1:EUR", t, wallet("acc:1:EUR", 900)),
        lg.insert("ledger.wallets", "acc:USD", t, wallet("acc:USD", 70)),
    ])
    .await;
    wait_for(&sink, 3, |r| r.eval_us == t).await;
    // An update of e3 that carries no references (only its amount): its master document
    // still names its wallet.
    let t2 = t + 1_000_000;
    w.ingest(vec![lg.update(
        "ledger.entries",
        "e3",
        t2,
        json!({"amount_minor": {"$numberLong": "901"}}),
        &[],
    )])
    .await;
    wait_for(&sink, 1, |r| r.eval_us == t2).await;
    stop.cancel();
    task.await.unwrap().unwrap();

    // Triggers of one subject at one time may run once or more: compare distinct runs.
    let mut runs: Vec<(String, Micros, Outcome)> = sink
        .runs()
        .into_iter()
        .map(|r| (r.subject, r.eval_us, r.outcome))
        .collect();
    runs.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    runs.dedup();
    assert_eq!(
        runs,
        [
            ("acc:1:EUR".to_owned(), t, Outcome::Pass),
            (
                "acc:1:EUR".to_owned(),
                t2,
                Outcome::Fail {
                    message: "balance 900 but entries [\"e3\"] sum to 901".into(),
                    details: Value::Null
                }
            ),
            ("acc:1:USD".to_owned(), t, Outcome::Pass),
            ("acc:USD".to_owned(), t, Outcome::Pass),
        ]
    );
}

/// A lookup trigger re-checks only the subjects settled at the change: not one created
/// after it (its own trigger sees the change), not one changed within the grace of it
/// (caught between its own change and what other systems make of it, e.g. a completed
/// transfer whose entries are still on their way; its own run, at its change + grace,
/// sees the looked-up change too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_trigger_leaves_unsettled_subjects_to_their_own_triggers() {
    let w = World::new();
    let grace = Duration::from_secs(1);
    let mut registry = Registry::new();
    registry.views(team_descriptor_set());
    registry
        .check("entries_match_amount", entries_match_amount)
        .strategy(Strategy::Immediate)
        .grace(grace);
    let options = RunnerOptions {
        model_sources: BTreeMap::from([
            ("payments.transfers".into(), vec!["pg".into()]),
            ("payments.assets".into(), vec!["pg".into()]),
            ("ledger.entries".into(), vec!["ledger".into()]),
        ]),
        models: Some(models()),
        ..RunnerOptions::default()
    };
    let dal = Dal::new(w.catalog.clone(), w.store.clone());
    let runner = Runner::new(dal, Arc::new(registry), options).unwrap();
    let sub = w.bus.subscribe("prs").await.unwrap();
    let sink = Arc::new(CollectSink::new());
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner.run(sub, sink.clone(), stop.clone()));

    let mut pg = Changes::new("pg").refs(&["asset"]);
    let t: Micros = 1_700_000_000_000_000;
    let change = t + 10_000_000;
    let g = grace.as_micros() as Micros;
    let transfer = |id: &str| json!({"id": id, "account_id": "a", "asset": "USD", "amount": "12", "status": "completed"});
    // Everything is ingested before the runner selects the asset's change (as when it
    // runs behind ingestion, or in replay).
    w.ingest(vec![
        pg.row(
            "payments.assets",
            "USD",
            t,
            "r",
            json!({"symbol": "USD", "decimals": 2}),
        ),
        pg.row(
            "payments.transfers",
            "settled",
            t + 1,
            "c",
            transfer("settled"),
        ),
        pg.row(
            "payments.transfers",
            "in-flight",
            change - 300_000,
            "c",
            transfer("in-flight"),
        ),
        pg.row(
            "payments.assets",
            "USD",
            change,
            "u",
            json!({"symbol": "USD", "decimals": 4}),
        ),
        pg.row(
            "payments.transfers",
            "later",
            change + 5_000_000,
            "c",
            transfer("later"),
        ),
    ])
    .await;
    // A run for each transfer: settled's own trigger and the lookup's coalesce into the
    // later one (as of the change).
    wait_for(&sink, 3, |_| true).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    let at_change: Vec<String> = sink
        .runs()
        .into_iter()
        .filter(|r| r.eval_us == change + g)
        .map(|r| r.subject)
        .collect();
    assert_eq!(at_change, ["settled"], "{:#?}", sink.runs());
    let own: Vec<(String, Micros)> = sink
        .runs()
        .into_iter()
        .filter(|r| r.eval_us != change + g)
        .map(|r| (r.subject, r.eval_us))
        .collect();
    for (subject, at) in [
        ("in-flight", change - 300_000 + g),
        ("later", change + 5_000_000 + g),
    ] {
        assert!(
            own.contains(&(subject.to_owned(), at)),
            "{subject} ran on its own trigger: {own:?}"
        );
    }
}
