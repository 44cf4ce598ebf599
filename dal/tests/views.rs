//! The DAL over a real local store and embedded catalog: time travel at the boundaries,
//! record and joined views as of a time (joins whose members change over time), evidence,
//! the read cache, and a property test of views against a reference model.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use proptest::prelude::*;
use serde_json::{Value, json};

use overseer_dal::builder::UpdateRef;
use overseer_dal::catalog::DynCatalog;
use overseer_dal::catalog::embedded::EmbeddedCatalog;
use overseer_dal::keys::segment_key;
use overseer_dal::segment::SegmentBuilder;
use overseer_dal::state::{JoinCache, StateCache};
use overseer_dal::store::local::LocalStore;
use overseer_dal::store::{DynStore, ObjectStore, PutOutcome};
use overseer_dal::timeline::Timeline;
use overseer_dal::update::{CommitBatch, IndexEntry, Micros, Op, Reference, UpdateRecord};
use overseer_dal::{Dal, Error};
use overseer_protos::views::{
    Asset, Direction, LedgerEntry, Toy, Transfer, TransferStatus, TransferWithLedger,
};

/// An object store that counts ranged reads (to see the cache and coalescing work).
#[derive(Debug)]
struct Counting {
    inner: LocalStore,
    ranged: AtomicU64,
}

#[async_trait]
impl ObjectStore for Counting {
    async fn put_create(&self, key: &str, bytes: Bytes) -> overseer_dal::Result<PutOutcome> {
        self.inner.put_create(key, bytes).await
    }
    async fn get(&self, key: &str) -> overseer_dal::Result<Option<Bytes>> {
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, start: u64, len: u64) -> overseer_dal::Result<Bytes> {
        self.ranged.fetch_add(1, Ordering::Relaxed);
        self.inner.get_range(key, start, len).await
    }
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> overseer_dal::Result<Vec<String>> {
        self.inner.list(prefix, start_after, limit).await
    }
    fn describe(&self) -> String {
        "counting".into()
    }
}

/// A store, a catalog and a writer that appends segments the way ingestion does.
struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<Counting>,
    catalog: DynCatalog,
    next_pos: u64,
}

/// One change to write: a MongoDB change-stream event, by default.
struct Change {
    model: &'static str,
    id: String,
    op: Op,
    time_us: Micros,
    raw: Value,
    format: &'static str,
    refs: Vec<(&'static str, String)>,
}

fn mongo(model: &'static str, id: &str, time_us: Micros, ev: Value) -> Change {
    let op = match ev["operationType"].as_str() {
        Some("insert") => Op::Create,
        Some("delete") => Op::Delete,
        Some("replace") => Op::Replace,
        _ => Op::Update,
    };
    // Ingestion extracts references from whatever document the event carries.
    let doc = ev
        .get("fullDocument")
        .or_else(|| ev.pointer("/updateDescription/updatedFields"));
    let refs = doc
        .and_then(|d| d.get("transfer_id"))
        .and_then(Value::as_str)
        .map(|t| vec![("transfer_id", t.to_owned())])
        .unwrap_or_default();
    Change {
        model,
        id: id.into(),
        op,
        time_us,
        raw: ev,
        format: "mongo-change-stream",
        refs,
    }
}

fn insert(model: &'static str, id: &str, t: Micros, doc: Value) -> Change {
    mongo(
        model,
        id,
        t,
        json!({"operationType": "insert", "documentKey": {"_id": id}, "fullDocument": doc}),
    )
}

fn update(model: &'static str, id: &str, t: Micros, set: Value) -> Change {
    mongo(
        model,
        id,
        t,
        json!({"operationType": "update", "documentKey": {"_id": id},
               "updateDescription": {"updatedFields": set, "removedFields": []}}),
    )
}

fn delete(model: &'static str, id: &str, t: Micros) -> Change {
    mongo(
        model,
        id,
        t,
        json!({"operationType": "delete", "documentKey": {"_id": id}}),
    )
}

/// A Debezium PostgreSQL row change of `payments.transfers` / `payments.assets`.
fn row(model: &'static str, id: &str, t: Micros, op: &str, after: Value) -> Change {
    Change {
        model,
        id: id.into(),
        op: match op {
            "c" | "r" => Op::Create,
            "d" => Op::Delete,
            _ => Op::Update,
        },
        time_us: t,
        raw: json!({"op": op, "before": null, "after": after, "ts_ms": t / 1000}),
        format: "debezium-postgres",
        refs: vec![],
    }
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Counting {
            inner: LocalStore::open(dir.path().join("store")).unwrap(),
            ranged: AtomicU64::new(0),
        });
        let catalog: DynCatalog =
            Arc::new(EmbeddedCatalog::open(dir.path().join("catalog.redb")).unwrap());
        Fixture {
            _dir: dir,
            store,
            catalog,
            next_pos: 0,
        }
    }

    fn dal(&self) -> Dal {
        let store: DynStore = self.store.clone();
        Dal::new(self.catalog.clone(), store)
    }

    fn ranged_reads(&self) -> u64 {
        self.store.ranged.load(Ordering::Relaxed)
    }

    /// Writes the changes as one segment and indexes them, as ingestion would.
    async fn write(&mut self, changes: Vec<Change>) {
        let seq = self.catalog.reserve_segment().await.unwrap();
        let mut seg = SegmentBuilder::new(seq, 0);
        let mut entries = Vec::new();
        for c in changes {
            self.next_pos += 1;
            let rec = UpdateRecord {
                source: "src".into(),
                position: format!("{:012}", self.next_pos),
                model: c.model.into(),
                record_id: c.id.clone(),
                op: c.op as i32,
                event_time_us: c.time_us,
                format: c.format.into(),
                refs: c
                    .refs
                    .iter()
                    .map(|(n, v)| Reference {
                        name: (*n).into(),
                        value: v.clone(),
                    })
                    .collect(),
                raw: serde_json::to_vec(&c.raw).unwrap().into(),
                ingest_time_us: c.time_us,
                ..Default::default()
            };
            let loc = seg.push(&rec);
            entries.push(IndexEntry::from_record(&rec, loc));
        }
        let bytes = seg.finish(vec![]);
        self.store
            .put_create(&segment_key(seq), bytes)
            .await
            .unwrap();
        self.catalog
            .commit(CommitBatch {
                segment_seq: Some(seq),
                entries,
                progress: vec![],
                quarantined: 0,
                now_us: 0,
            })
            .await
            .unwrap();
    }
}

fn toy(id: &str, ty: &str, color: &str) -> Toy {
    Toy {
        id: id.into(),
        r#type: ty.into(),
        color: color.into(),
    }
}

/// The Overseer post's example, and the as-of boundaries: before creation, exactly at an
/// update's time, between updates, after deletion.
#[tokio::test]
async fn toy_as_of_boundaries() {
    let mut f = Fixture::new();
    f.write(vec![insert(
        "toys",
        "t1",
        1_000,
        json!({"_id": "t1", "type": "watergun", "color": "blue"}),
    )])
    .await;
    f.write(vec![update(
        "toys",
        "t1",
        2_000,
        json!({"type": "balloon"}),
    )])
    .await;
    f.write(vec![delete("toys", "t1", 3_000)]).await;
    let dal = f.dal();

    let at = |t| {
        let dal = dal.clone();
        async move { dal.view::<Toy>("t1", t).await.unwrap().map(|v| v.view) }
    };
    assert_eq!(at(999).await, None, "before creation");
    assert_eq!(
        at(1_000).await,
        Some(toy("t1", "watergun", "blue")),
        "exactly at creation"
    );
    assert_eq!(at(1_999).await, Some(toy("t1", "watergun", "blue")));
    assert_eq!(
        at(2_000).await,
        Some(toy("t1", "balloon", "blue")),
        "exactly at the update"
    );
    assert_eq!(at(2_999).await, Some(toy("t1", "balloon", "blue")));
    assert_eq!(at(3_000).await, None, "exactly at deletion");
    assert_eq!(at(i64::MAX).await, None, "after deletion");

    let v = dal.view::<Toy>("t1", 2_500).await.unwrap().unwrap();
    assert_eq!(v.as_of_us, 2_500);
    assert_eq!(
        v.evidence,
        [UpdateRef {
            source: "src".into(),
            position: format!("{:012}", 2)
        }],
        "evidence by reference: the toy's newest update as of the time"
    );

    let r = dal.record("toys", "t1", i64::MAX).await.unwrap();
    assert!(r.state.is_none());
    assert_eq!(r.updates, 3);
    let h = dal.history("toys", "t1", 2_000).await.unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!(h[1].record.event_time_us, 2_000);

    assert!(
        dal.view::<Toy>("no-such-toy", i64::MAX)
            .await
            .unwrap()
            .is_none()
    );
}

/// Updates committed at the same instant are ordered by source position.
#[tokio::test]
async fn ties_break_by_position() {
    let mut f = Fixture::new();
    f.write(vec![
        insert("toys", "t", 5, json!({"type": "a", "color": "red"})),
        update("toys", "t", 5, json!({"type": "b"})),
        update("toys", "t", 5, json!({"type": "c"})),
    ])
    .await;
    let v = f.dal().view::<Toy>("t", 5).await.unwrap().unwrap();
    assert_eq!(v.view, toy("t", "c", "red"));
}

fn transfer_row(id: &str, amount: &str, status: &str) -> Value {
    json!({"id": id, "account_id": "acct-1", "asset": "USD", "amount": amount,
           "status": status, "updated_at": "2024-01-02T03:04:05Z"})
}

fn entry_doc(id: &str, transfer: &str, direction: &str, minor: i64) -> Value {
    json!({"_id": id, "transfer_id": transfer, "account_id": "acct-1", "asset": "USD",
           "direction": direction, "amount_minor": {"$numberLong": minor.to_string()},
           "decimals": 2})
}

/// A joined view whose members change over time: entries appear, move to another
/// transfer, and are deleted; the asset lookup follows the transfer's asset.
#[tokio::test]
async fn joins_follow_members_over_time() {
    let mut f = Fixture::new();
    f.write(vec![
        row(
            "payments.assets",
            "USD",
            10,
            "r",
            json!({"symbol": "USD", "decimals": 2}),
        ),
        row(
            "payments.transfers",
            "T1",
            100,
            "c",
            transfer_row("T1", "12.50", "pending"),
        ),
        row(
            "payments.transfers",
            "T2",
            100,
            "c",
            transfer_row("T2", "1.00", "pending"),
        ),
    ])
    .await;
    f.write(vec![insert(
        "ledger.entries",
        "e1",
        200,
        entry_doc("e1", "T1", "debit", 1250),
    )])
    .await;
    f.write(vec![
        insert(
            "ledger.entries",
            "e2",
            300,
            entry_doc("e2", "T1", "credit", 1250),
        ),
        row(
            "payments.transfers",
            "T1",
            300,
            "u",
            transfer_row("T1", "12.50", "completed"),
        ),
    ])
    .await;
    // e2 moves to T2 at 400; e1 is deleted at 500; the asset's decimals change at 600.
    f.write(vec![update(
        "ledger.entries",
        "e2",
        400,
        json!({"transfer_id": "T2"}),
    )])
    .await;
    f.write(vec![delete("ledger.entries", "e1", 500)]).await;
    f.write(vec![row(
        "payments.assets",
        "USD",
        600,
        "u",
        json!({"symbol": "USD", "decimals": 4}),
    )])
    .await;
    let dal = f.dal();

    let at = |t| {
        let dal = dal.clone();
        async move {
            dal.view::<TransferWithLedger>("T1", t)
                .await
                .unwrap()
                .map(|v| v.view)
        }
    };
    let ids = |v: &TransferWithLedger| v.entries.iter().map(|e| e.id.clone()).collect::<Vec<_>>();

    assert!(at(99).await.is_none(), "the subject did not exist yet");
    let v = at(100).await.unwrap();
    assert_eq!(ids(&v), Vec::<String>::new());
    assert_eq!(
        v.transfer.as_ref().unwrap().status(),
        TransferStatus::Pending
    );
    assert_eq!(
        v.asset,
        Some(Asset {
            symbol: "USD".into(),
            decimals: 2
        })
    );

    assert_eq!(ids(&at(200).await.unwrap()), ["e1"]);
    let v = at(300).await.unwrap();
    assert_eq!(ids(&v), ["e1", "e2"]);
    assert_eq!(
        v.transfer.as_ref().unwrap().status(),
        TransferStatus::Completed
    );
    assert_eq!(
        v.entries[1],
        LedgerEntry {
            id: "e2".into(),
            transfer_id: "T1".into(),
            account_id: "acct-1".into(),
            asset: "USD".into(),
            direction: Direction::Credit as i32,
            amount_minor: 1250,
            decimals: 2,
        }
    );
    assert_eq!(ids(&at(400).await.unwrap()), ["e1"], "e2 moved to T2");
    assert_eq!(
        ids(&at(500).await.unwrap()),
        Vec::<String>::new(),
        "e1 deleted"
    );
    assert_eq!(at(600).await.unwrap().asset.unwrap().decimals, 4);

    let t2 = dal
        .view::<TransferWithLedger>("T2", 400)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ids(&t2.view), ["e2"]);
    // Evidence: the newest update of T2, of the asset and of e2 (its move).
    assert_eq!(t2.evidence.len(), 3, "{:?}", t2.evidence);

    let t = dal.view::<Transfer>("T1", 300).await.unwrap().unwrap().view;
    assert_eq!(t.amount, "12.50");
    assert_eq!(t.updated_at.unwrap().seconds, 1_704_164_645);
}

/// A state that does not fit its view is an error naming the view, record and field.
#[tokio::test]
async fn unfit_state_is_a_clear_error() {
    let mut f = Fixture::new();
    f.write(vec![insert(
        "ledger.entries",
        "bad",
        1,
        json!({"_id": "bad", "amount_minor": "12.5"}),
    )])
    .await;
    let e = f.dal().view::<LedgerEntry>("bad", 1).await.unwrap_err();
    assert!(matches!(e, Error::View { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("LedgerEntry") && msg.contains("\"bad\"") && msg.contains("amount_minor"),
        "{msg}"
    );
}

/// Warm reads come from the cache; cold reads of nearby records are coalesced.
#[tokio::test]
async fn cache_and_coalescing() {
    let mut f = Fixture::new();
    let mut changes = vec![insert("toys", "x", 0, json!({"type": "t0", "color": "c"}))];
    for i in 1..1000 {
        changes.push(update("toys", "x", i, json!({"type": format!("t{i}")})));
        if changes.len() == 250 {
            f.write(std::mem::take(&mut changes)).await;
        }
    }
    f.write(changes).await;

    // Without maintained states, every read fetches and folds the whole history.
    let dal = f.dal().with_state_bytes(0).with_snapshot_every(0);
    let v = dal.view::<Toy>("x", i64::MAX).await.unwrap().unwrap();
    assert_eq!(v.view.r#type, "t999");
    assert_eq!(v.evidence.len(), 1, "the newest update names the version");
    let cold = f.ranged_reads();
    assert!(
        cold <= 4,
        "1000 adjacent updates in 4 segments took {cold} reads"
    );
    dal.view::<Toy>("x", i64::MAX).await.unwrap().unwrap();
    assert_eq!(f.ranged_reads(), cold, "a warm view reads nothing");
    let s = dal.cache_stats();
    assert_eq!((s.hits, s.misses), (1000, 1000));
    assert_eq!(dal.state_stats().updates_folded, 2000);

    // With them, the second read folds nothing and fetches nothing: the fold is kept.
    let maintained = f.dal();
    maintained.view::<Toy>("x", 499).await.unwrap().unwrap();
    let v = maintained
        .view::<Toy>("x", i64::MAX)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v.view.r#type, "t999");
    maintained
        .view::<Toy>("x", i64::MAX)
        .await
        .unwrap()
        .unwrap();
    let s = maintained.state_stats();
    assert_eq!(
        (s.folded, s.extended, s.updates_folded),
        (1, 2, 1000),
        "500 folded, then the 500 since, then none: {s:?}"
    );
    assert_eq!(
        maintained.cache_stats().hits + maintained.cache_stats().misses,
        1000
    );

    // A cache too small for the history still gives the right answer.
    let tiny = f.dal().with_cache_bytes(10_000);
    let v = tiny.view::<Toy>("x", 500).await.unwrap().unwrap();
    assert_eq!(v.view.r#type, "t500");
    assert!(tiny.cache_stats().bytes <= 10_000);
}

// ---- Property: view as of T == reference model replayed up to T ----

#[derive(Clone, Debug)]
enum Step {
    Insert {
        color: u8,
        size: i64,
    },
    Set {
        color: Option<u8>,
        size: Option<i64>,
    },
    Unset,
    Delete,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u8..5, -1000i64..1000).prop_map(|(color, size)| Step::Insert { color, size }),
        (
            proptest::option::of(0u8..5),
            proptest::option::of(-1000i64..1000)
        )
            .prop_map(|(color, size)| Step::Set { color, size }),
        Just(Step::Unset),
        Just(Step::Delete),
    ]
}

/// Reference model: a map of fields, or nothing.
type Model = Option<BTreeMap<&'static str, Value>>;

fn apply_model(m: &mut Model, s: &Step) -> bool {
    match s {
        Step::Insert { color, size } => {
            *m = Some(BTreeMap::from([
                ("color", json!(format!("c{color}"))),
                ("size", json!(size)),
            ]));
            true
        }
        Step::Set { color, size } => match m {
            Some(doc) => {
                if let Some(c) = color {
                    doc.insert("color", json!(format!("c{c}")));
                }
                if let Some(s) = size {
                    doc.insert("size", json!(s));
                }
                true
            }
            None => false,
        },
        Step::Unset => match m {
            Some(doc) => {
                doc.remove("color");
                true
            }
            None => false,
        },
        Step::Delete => {
            let existed = m.is_some();
            *m = None;
            existed
        }
    }
}

fn step_change(id: &str, t: Micros, s: &Step) -> Change {
    match s {
        Step::Insert { color, size } => insert(
            "toys",
            id,
            t,
            json!({"_id": id, "color": format!("c{color}"), "size": {"$numberLong": size.to_string()}}),
        ),
        Step::Set { color, size } => {
            let mut set = serde_json::Map::new();
            if let Some(c) = color {
                set.insert("color".into(), json!(format!("c{c}")));
            }
            if let Some(s) = size {
                set.insert("size".into(), json!(s));
            }
            update("toys", id, t, Value::Object(set))
        }
        Step::Unset => mongo(
            "toys",
            id,
            t,
            json!({"operationType": "update", "documentKey": {"_id": id},
                   "updateDescription": {"updatedFields": {}, "removedFields": ["color"]}}),
        ),
        Step::Delete => delete("toys", id, t),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// For random histories of two records (with equal commit times and batches of random
    /// size), every record's view as of every instant equals the reference model.
    #[test]
    fn view_as_of_equals_reference_model(
        steps in proptest::collection::vec((0usize..2, 0i64..4, step()), 1..40),
        batch in 1usize..8,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut f = Fixture::new();
            let ids = ["a", "b"];
            // (time, record) -> model state after the step; only valid steps are written
            // (MongoDB would not emit an update for a missing document).
            let mut models: [Model; 2] = [None, None];
            let mut expected: Vec<(Micros, usize, Model)> = Vec::new();
            let mut t: Micros = 0;
            let mut pending = Vec::new();
            for (rec, dt, s) in &steps {
                t += dt;
                if !apply_model(&mut models[*rec], s) {
                    continue;
                }
                pending.push(step_change(ids[*rec], t, s));
                expected.push((t, *rec, models[*rec].clone()));
                if pending.len() >= batch {
                    f.write(std::mem::take(&mut pending)).await;
                }
            }
            if !pending.is_empty() {
                f.write(pending).await;
            }
            let dal = f.dal();
            for probe in -1..=t + 1 {
                for (r, id) in ids.iter().enumerate() {
                    // The model's state as of `probe`: the last step at or before it.
                    let want = expected
                        .iter()
                        .rfind(|(at, rr, _)| *at <= probe && *rr == r)
                        .and_then(|(_, _, m)| m.clone());
                    let got = dal.record("toys", id, probe).await.unwrap().state;
                    let got = got.map(|s| {
                        s.into_iter()
                            .filter(|(k, _)| k != "_id")
                            .map(|(k, v)| (k, normalise(v)))
                            .collect::<BTreeMap<_, _>>()
                    });
                    let want = want.map(|m| {
                        m.into_iter()
                            .map(|(k, v)| (k.to_owned(), v))
                            .collect::<BTreeMap<_, _>>()
                    });
                    prop_assert_eq!(&got, &want, "record {} as of {}", id, probe);

                    let view = dal.view::<Toy>(id, probe).await.unwrap().map(|v| v.view);
                    let want_view = want.as_ref().map(|m| Toy {
                        id: (*id).into(),
                        r#type: String::new(),
                        color: m.get("color").and_then(Value::as_str).unwrap_or("").into(),
                    });
                    prop_assert_eq!(view, want_view);
                }
            }
            Ok(())
        })?;
    }
}

/// `{"$numberLong": "5"}` and `5` are the same integer.
fn normalise(v: Value) -> Value {
    match &v {
        Value::Object(m) if m.len() == 1 => match m.get("$numberLong").and_then(Value::as_str) {
            Some(s) => json!(s.parse::<i64>().unwrap()),
            None => v,
        },
        _ => v,
    }
}

/// A team's own views, compiled at test time as a team's build script would, importing
/// `overseer/views.proto`: a multi-field join whose first key is `asset` (another separator
/// and key order than the built-in `WalletWithEntries`).
const TEAM_PROTO: &str = r#"
syntax = "proto3";
package team.v1;
import "overseer/views.proto";

message AssetWallet {
  overseer.views.v1.Wallet wallet = 1 [(overseer.views.v1.subject) = true,
                                        (overseer.views.v1.id_separator) = "/"];
  repeated overseer.views.v1.LedgerEntry entries = 2 [
    (overseer.views.v1.join) = { reference: "asset", id_part: 1 },
    (overseer.views.v1.join) = { reference: "account_id", id_part: 0 }
  ];
}
"#;

/// The `n` totals of [`TOTALS_PROTO`]'s view (a count-only aggregate): its count, and
/// that its sum is "0".
fn count_of(view: &prost_reflect::DynamicMessage) -> u64 {
    let totals = view.get_field_by_name("n").unwrap();
    let totals = totals.as_message().unwrap();
    assert_eq!(totals.get_field_by_name("sum").unwrap().as_str(), Some("0"));
    totals.get_field_by_name("count").unwrap().as_u64().unwrap()
}

/// The `entries` totals of a view holding a declared aggregate: (count, sum).
fn totals_of(view: &prost_reflect::DynamicMessage) -> (u64, String) {
    let totals = view.get_field_by_name("entries").unwrap();
    let totals = totals.as_message().unwrap();
    let count = totals.get_field_by_name("count").unwrap().as_u64().unwrap();
    let sum = totals.get_field_by_name("sum").unwrap();
    (count, sum.as_str().unwrap().to_owned())
}

/// A declared aggregate over a transfer's entries: their count and signed sum.
const TOTALS_PROTO: &str = r#"
syntax = "proto3";
package team.v1;
import "overseer/views.proto";

message TransferTotals {
  overseer.views.v1.Transfer transfer = 1 [(overseer.views.v1.subject) = true];
  overseer.views.v1.Totals entries = 2 [
    (overseer.views.v1.join_ref) = "transfer_id",
    (overseer.views.v1.aggregate) = {
      model: "ledger.entries", sum: "amount_minor",
      sign_by: "direction", add: "credit", subtract: "debit"
    }
  ];
  // Count only.
  overseer.views.v1.Totals n = 3 [
    (overseer.views.v1.join_ref) = "transfer_id",
    (overseer.views.v1.aggregate) = { model: "ledger.entries" }
  ];
}
"#;

fn compile(proto: &str) -> Vec<u8> {
    overseer_testkit::proto::compile(proto)
}

/// A ledger entry insert carrying its account and asset references, as ingestion extracts
/// them with `references = { account_id = .., asset = .. }`.
fn entry_at(id: &str, t: Micros, account: &str, asset: &str, dir: &str, minor: i64) -> Change {
    let mut c = insert(
        "ledger.entries",
        id,
        t,
        json!({"_id": id, "account_id": account, "asset": asset, "direction": dir,
               "amount_minor": {"$numberLong": minor.to_string()}, "decimals": 2}),
    );
    c.refs = vec![("account_id", account.into()), ("asset", asset.into())];
    c
}

fn ids(v: &Value) -> Vec<String> {
    v["entries"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e["id"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn views_registered_as_descriptor_sets_join_on_several_references() {
    let mut fx = Fixture::new();
    let (t1, t2) = (1_000_000, 2_000_000);
    let wallet = |id: &str, b: i64| {
        insert(
            "ledger.wallets",
            id,
            t1,
            json!({"_id": id, "balance_minor": {"$numberLong": b.to_string()}}),
        )
    };
    fx.write(vec![
        entry_at("e1", t1, "acc", "USD", "credit", 500),
        entry_at("e2", t1, "acc", "EUR", "credit", 700),
        entry_at("e3", t1, "other", "USD", "credit", 900),
        entry_at("e4", t1, "acc", "USD", "debit", 100),
        wallet("acc/USD", 400),
        wallet("acc:USD", 400),
    ])
    .await;
    // At t2, e4 moves to EUR (its update carries the new asset reference).
    let mut moved = update("ledger.entries", "e4", t2, json!({"asset": "EUR"}));
    moved.refs = vec![("asset", "EUR".into())];
    fx.write(vec![moved]).await;

    // The merge path: built-in views plus the team's set, as a registry hands them over.
    let team = compile(TEAM_PROTO);
    let dal = fx.dal().with_descriptor_sets([team.as_slice()]).unwrap();
    assert!(fx.dal().views().get("team.v1.AssetWallet").is_err());
    let def = dal.views().get("team.v1.AssetWallet").unwrap();
    assert_eq!(def.models(), ["ledger.wallets", "ledger.entries"]);
    // The built-ins are still there.
    dal.views()
        .get("overseer.views.v1.TransferWithLedger")
        .unwrap();

    let at = |t| {
        let (dal, def) = (dal.clone(), def.clone());
        async move {
            let v = dal.view_dynamic(&def, "acc/USD", t).await.unwrap().unwrap();
            (serde_json::to_value(&v.view).unwrap(), v.evidence.len())
        }
    };
    let (v1, evidence1) = at(t1).await;
    assert_eq!(
        ids(&v1),
        ["e1", "e4"],
        "acc's USD entries, not EUR's nor other's"
    );
    assert_eq!(evidence1, 3, "the wallet's and both entries' updates");
    let (v2, _) = at(t2).await;
    assert_eq!(ids(&v2), ["e1"], "e4 left USD at t2");
    // An id that does not split into the two parts has no members.
    let none = dal
        .view_dynamic(&def, "acc:USD", t2)
        .await
        .unwrap()
        .unwrap();
    assert!(ids(&serde_json::to_value(&none.view).unwrap()).is_empty());

    // The built-in WalletWithEntries (":" separator), typed.
    let w = dal
        .view::<overseer_protos::views::WalletWithEntries>("acc:USD", t1)
        .await
        .unwrap()
        .unwrap();
    let got: Vec<&str> = w.view.entries.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(got, ["e1", "e4"]);
}

#[test]
fn multi_field_joins_are_checked_at_load() {
    let bad = |join: &str, separator: &str| {
        let proto = TEAM_PROTO
            .replace(
                r#"(overseer.views.v1.join) = { reference: "account_id", id_part: 0 }"#,
                join,
            )
            .replace(r#"(overseer.views.v1.id_separator) = "/""#, separator);
        let set = compile(&proto);
        match overseer_dal::view::Views::builtin().with_descriptor_sets([set.as_slice()]) {
            Ok(_) => panic!("loaded"),
            Err(e) => e.to_string(),
        }
    };
    let e = bad(
        r#"(overseer.views.v1.join) = { reference: "account_id", id_part: 2 }"#,
        r#"(overseer.views.v1.id_separator) = "/""#,
    );
    assert!(
        e.contains("team.v1.AssetWallet") && e.contains("entries") && e.contains("exactly once"),
        "{e}"
    );
    let e = bad(
        r#"(overseer.views.v1.join) = { reference: "asset", id_part: 0 }"#,
        r#"(overseer.views.v1.id_separator) = "/""#,
    );
    assert!(e.contains("joins on reference \"asset\" twice"), "{e}");
    let e = bad(
        r#"(overseer.views.v1.join) = { reference: "account_id", id_part: 0 }"#,
        r#"(overseer.views.v1.from) = "x""#,
    );
    assert!(e.contains("declares no (id_separator)"), "{e}");
}

/// A mistake in an `(aggregate)` is one error at load naming the view and field.
#[test]
fn declared_aggregates_are_checked_at_load() {
    let load = |field: &str| {
        let proto = format!(
            "syntax = \"proto3\";\npackage team.v1;\nimport \"overseer/views.proto\";\n\
             message Bad {{\n  overseer.views.v1.Transfer transfer = 1 \
             [(overseer.views.v1.subject) = true];\n  {field}\n}}\n"
        );
        let set = compile(&proto);
        match overseer_dal::view::Views::builtin().with_descriptor_sets([set.as_slice()]) {
            Ok(_) => "loaded".to_owned(),
            Err(e) => e.to_string(),
        }
    };
    let agg = r#"(overseer.views.v1.aggregate) = { model: "ledger.entries", sum: "amount_minor" }"#;
    let join = r#"(overseer.views.v1.join_ref) = "transfer_id""#;
    assert_eq!(
        load(&format!("overseer.views.v1.Totals t = 2 [{join}, {agg}];")),
        "loaded"
    );
    let cases = [
        (
            format!("overseer.views.v1.Totals t = 2 [{agg}];"),
            "needs join_ref or join keys",
        ),
        (
            format!("repeated overseer.views.v1.Totals t = 2 [{join}, {agg}];"),
            "must be a single overseer.views.v1.Totals",
        ),
        (
            format!("overseer.views.v1.LedgerEntry t = 2 [{join}, {agg}];"),
            "must be a single overseer.views.v1.Totals",
        ),
        (
            format!(
                "overseer.views.v1.Totals t = 2 [{join}, (overseer.views.v1.aggregate) = \
                 {{ sum: \"amount_minor\" }}];"
            ),
            "names no model",
        ),
        (
            format!(
                "overseer.views.v1.Totals t = 2 [{join}, (overseer.views.v1.aggregate) = \
                 {{ model: \"ledger.entries\", sum: \"a\", sign_by: \"direction\" }}];"
            ),
            "lists no add or subtract values",
        ),
        (
            format!(
                "overseer.views.v1.Totals t = 2 [{join}, (overseer.views.v1.aggregate) = \
                 {{ model: \"ledger.entries\", sum: \"a\", add: \"credit\" }}];"
            ),
            "no sign_by field",
        ),
        (
            format!(
                "overseer.views.v1.Totals t = 2 [{join}, (overseer.views.v1.aggregate) = \
                 {{ model: \"ledger.entries\", sum: \"a\", sign_by: \"d\", add: \"x\", \
                 subtract: \"X\" }}];"
            ),
            "both adds and subtracts \"x\"",
        ),
        (
            format!(
                "overseer.views.v1.Totals t = 2 [{join}, (overseer.views.v1.aggregate) = \
                 {{ model: \"ledger.entries\", sum: \"a\", sign_by: \"d\", add: \"\" }}];"
            ),
            "lists an empty add or subtract value",
        ),
    ];
    for (field, want) in cases {
        let e = load(&field);
        assert!(
            e.contains("team.v1.Bad") && e.contains("field t") && e.contains(want),
            "{field}: {e}"
        );
    }
}

/// The shipped wallet view declares its entries' count and signed sum: a read after one
/// new entry reads that entry alone and adjusts the totals; moves out of the wallet,
/// deletes and other accounts' entries are followed; a value that is not an integer is an
/// error naming the record.
#[tokio::test]
async fn a_declared_aggregate_reads_only_what_changed() {
    use overseer_protos::views::{WalletWithEntries, WalletWithTotals};
    let mut f = Fixture::new();
    let t0 = 1_000;
    let mut changes = vec![insert(
        "ledger.wallets",
        "acc:USD",
        t0,
        json!({"_id": "acc:USD", "balance_minor": {"$numberLong": "0"}}),
    )];
    let mut want: i128 = 0;
    for i in 0..200i64 {
        let dir = if i % 3 == 0 { "debit" } else { "credit" };
        want += if dir == "debit" { -i } else { i } as i128 * 1_000_000_000_000;
        changes.push(entry_at(
            &format!("e{i:03}"),
            t0 + i,
            "acc",
            "USD",
            dir,
            i * 1_000_000_000_000,
        ));
        // Another account, and another asset of the same account: not members.
        changes.push(entry_at(
            &format!("o{i:03}"),
            t0 + i,
            "other",
            "USD",
            "credit",
            7,
        ));
        changes.push(entry_at(
            &format!("x{i:03}"),
            t0 + i,
            "acc",
            "EUR",
            "credit",
            9,
        ));
    }
    f.write(changes).await;
    let dal = f.dal();
    let full = f.dal().with_state_bytes(0).with_snapshot_every(0);
    let totals = |d: &Dal, t: Micros| {
        let d = d.clone();
        async move {
            let v = d
                .view::<WalletWithTotals>("acc:USD", t)
                .await
                .unwrap()
                .unwrap();
            let e = v.view.entries.unwrap();
            (e.count, e.sum.parse::<i128>().unwrap(), v.evidence)
        }
    };
    let now = 10_000;
    let first = totals(&dal, now).await;
    assert_eq!((first.0, first.1), (200, want));
    assert_eq!(first, totals(&full, now).await);
    // The wallet's version and the newest entry.
    let names: Vec<String> = first.2.iter().map(ToString::to_string).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    let read = dal.state_stats().joins.members_read;

    // One more entry: read alone, added to the totals.
    f.write(vec![entry_at("e200", 20_000, "acc", "USD", "credit", 5)])
        .await;
    let next = totals(&dal, 20_000).await;
    assert_eq!((next.0, next.1), (201, want + 5));
    assert_eq!(next, totals(&full, 20_000).await);
    assert_eq!(dal.state_stats().joins.members_read, read + 1);
    // Its evidence: the wallet's version (unchanged) and the new entry, the newest.
    let e200 = format!("src@{:012}", f.next_pos);
    let names: Vec<String> = next.2.iter().map(ToString::to_string).collect();
    assert_eq!(names, [first.2[0].to_string(), e200], "{names:?}");

    // e001 (credit 1e12) moves to EUR, e003 (debit 3e12) is deleted, e004 changes amount.
    let mut moved = update("ledger.entries", "e001", 30_000, json!({"asset": "EUR"}));
    moved.refs = vec![("asset", "EUR".into())];
    f.write(vec![
        moved,
        delete("ledger.entries", "e003", 30_001),
        update(
            "ledger.entries",
            "e004",
            30_002,
            json!({"amount_minor": {"$numberLong": "1"}}),
        ),
    ])
    .await;
    let later = totals(&dal, 40_000).await;
    let want_later = want + 5 - 1_000_000_000_000 + 3_000_000_000_000 - 4_000_000_000_000 + 1;
    assert_eq!((later.0, later.1), (199, want_later));
    assert_eq!(later, totals(&full, 40_000).await);
    // As of an earlier time, from the kept (later) totals: as before the changes, reading
    // again only the three records changed in between.
    let read = dal.state_stats().joins.members_read;
    assert_eq!(totals(&dal, 20_000).await, next);
    assert_eq!(dal.state_stats().joins.members_read, read + 3);
    // The totals equal the listed entries' count and signed sum.
    let listed = full
        .view::<WalletWithEntries>("acc:USD", 40_000)
        .await
        .unwrap()
        .unwrap();
    let signed: i128 = listed
        .view
        .entries
        .iter()
        .map(|e| match e.direction() {
            overseer_protos::views::Direction::Credit => i128::from(e.amount_minor),
            _ => -i128::from(e.amount_minor),
        })
        .sum();
    assert_eq!(
        (listed.view.entries.len() as u64, signed),
        (later.0, later.1)
    );

    // The newest entry (e200) is deleted: the newest is found again among the rest (e004,
    // changed at 30,002), and the evidence names it.
    f.write(vec![delete("ledger.entries", "e200", 45_000)])
        .await;
    let pos_e004 = format!("src@{:012}", f.next_pos - 1);
    let gone = totals(&dal, 45_000).await;
    assert_eq!((gone.0, gone.1), (198, want_later - 5));
    assert_eq!(gone, totals(&full, 45_000).await);
    assert_eq!(gone.2[1].to_string(), pos_e004);

    // A value the sum cannot take: an error naming the view, the field and the record.
    f.write(vec![update(
        "ledger.entries",
        "e005",
        50_000,
        json!({"amount_minor": "12.5"}),
    )])
    .await;
    let e = dal
        .view::<WalletWithTotals>("acc:USD", 50_000)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("WalletWithTotals")
            && e.contains("entries")
            && e.contains("\"e005\"")
            && e.contains("amount_minor is \"12.5\", not an integer"),
        "{e}"
    );
}

/// A declared aggregate's join is kept however few its members (a listed join of fewer
/// than 8 is read whole each time): the next read reads only the member that changed.
#[tokio::test]
async fn a_small_aggregate_is_kept() {
    use overseer_protos::views::WalletWithTotals;
    let mut f = Fixture::new();
    f.write(vec![
        insert(
            "ledger.wallets",
            "acc:USD",
            10,
            json!({"_id": "acc:USD", "balance_minor": {"$numberLong": "0"}}),
        ),
        entry_at("e1", 11, "acc", "USD", "credit", 5),
        entry_at("e2", 12, "acc", "USD", "debit", 3),
    ])
    .await;
    let dal = f.dal();
    let sum = |t: Micros| {
        let dal = dal.clone();
        async move {
            let v = dal
                .view::<WalletWithTotals>("acc:USD", t)
                .await
                .unwrap()
                .unwrap();
            let e = v.view.entries.unwrap();
            (e.count, e.sum)
        }
    };
    assert_eq!(sum(100).await, (2, "2".to_owned()));
    assert_eq!(dal.state_stats().joins.members_read, 2);
    f.write(vec![entry_at("e3", 200, "acc", "USD", "credit", 10)])
        .await;
    assert_eq!(sum(300).await, (3, "12".to_owned()));
    let j = dal.state_stats().joins;
    assert_eq!((j.extended, j.members_read), (1, 3), "{j:?}");
}

// ---- Property: maintained states == the full-history fold ----

/// One record read, comparable: state, references, update count and newest update, or the
/// error's text.
fn read_outcome(r: overseer_dal::Result<overseer_dal::reader::RecordAt>) -> String {
    match r {
        Ok(r) => format!("{:?} {:?} {} {:?}", r.state, r.refs, r.updates, r.last),
        Err(e) => format!("error: {e}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// For random histories written in batches whose commit times also go back (updates
    /// arriving late, before updates already read), interleaved with reads at random
    /// times, a DAL that keeps and extends folds and one that folds each read's whole
    /// history agree on every record read (state, references, count, newest update) and
    /// every view. Steps are written in arrival order, so a late one can make a fold
    /// stale or the history invalid (an update before the insert): both DALs must say
    /// the same then too. A third DAL keeps nothing in memory and reads from snapshots
    /// (one every 2 updates, so late updates make some stale), and the maintained one
    /// writes snapshots too.
    #[test]
    fn maintained_state_equals_full_fold(
        writes in proptest::collection::vec(
            (0usize..2, -4i64..5, step(), proptest::option::of(0u8..3)),
            1..40,
        ),
        reads in proptest::collection::vec((0usize..2, -6i64..3), 40),
        batch in 1usize..5,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut f = Fixture::new();
            let ids = ["a", "b"];
            // Folds of any length kept, so short histories exercise the maintained path.
            let maintained = f
                .dal()
                .with_state_cache(StateCache::new(1 << 20).keeping_from(1))
                .with_snapshot_every(3);
            // Nothing kept in memory: every read starts from the nearest snapshot (one
            // every 2 updates), or folds the history when it is unusable.
            let snapshotted = f.dal().with_state_bytes(0).with_snapshot_every(2);
            let full = f.dal().with_state_bytes(0).with_snapshot_every(0);
            let mut t: Micros = 10;
            let mut newest: Micros = 10;
            let mut pending = Vec::new();
            for (i, (rec, dt, s, tag)) in writes.iter().enumerate() {
                t = (t + dt).max(0);
                newest = newest.max(t);
                let mut c = step_change(ids[*rec], t, s);
                if let Some(tag) = tag {
                    c.refs.push(("tag", format!("v{tag}")));
                }
                pending.push(c);
                if pending.len() >= batch || i + 1 == writes.len() {
                    f.write(std::mem::take(&mut pending)).await;
                    // Reads after each batch, some before the newest commit time.
                    for (r, back) in reads.iter().skip(i % 7).take(4) {
                        let (id, at) = (ids[*r], newest + back);
                        for probe in [at, i64::MAX] {
                            let expected = read_outcome(full.record("toys", id, probe).await);
                            prop_assert_eq!(
                                read_outcome(maintained.record("toys", id, probe).await),
                                expected.clone(),
                                "record {} as of {}", id, probe
                            );
                            prop_assert_eq!(
                                read_outcome(snapshotted.record("toys", id, probe).await),
                                expected,
                                "record {} as of {} from snapshots", id, probe
                            );
                            // Its snapshots written before the next read.
                            snapshotted.flush_snapshots().await;
                            let view = |d: &Dal| {
                                let d = d.clone();
                                async move {
                                    format!("{:?}", d.view::<Toy>(id, probe).await.map(|v| v.map(|v| (v.view, v.evidence))).map_err(|e| e.to_string()))
                                }
                            };
                            let expected = view(&full).await;
                            prop_assert_eq!(view(&maintained).await, expected.clone());
                            prop_assert_eq!(view(&snapshotted).await, expected);
                            maintained.flush_snapshots().await;
                        }
                    }
                }
            }
            let s = maintained.state_stats();
            prop_assert!(s.updates_folded <= full.state_stats().updates_folded, "{s:?}");
            let s = snapshotted.state_stats();
            prop_assert!(s.updates_folded <= full.state_stats().updates_folded, "{s:?}");
            Ok(())
        })?;
    }
}

/// One change of a join member in [`maintained_joins_equal_full_reads`].
#[derive(Clone, Debug)]
enum MemberStep {
    /// Created referencing transfer 0 or 1, with an amount.
    Insert(usize, i64),
    /// Moves to transfer 0 or 1 (a partial update carrying the reference).
    Move(usize),
    /// A new amount (a partial update without the reference).
    Amount(i64),
    Delete,
}

fn member_step() -> impl Strategy<Value = MemberStep> {
    prop_oneof![
        (0usize..2, 1i64..100).prop_map(|(t, a)| MemberStep::Insert(t, a)),
        (0usize..2).prop_map(MemberStep::Move),
        (1i64..100).prop_map(MemberStep::Amount),
        Just(MemberStep::Delete),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Joined views from kept members (reading again only the records changed) equal
    /// joined views that read every member, for random member histories — entries created,
    /// moved between transfers, changed without their reference, deleted — written in
    /// batches whose commit times also go back (late updates, records that start
    /// referencing a transfer behind a kept point), read at random times before and after
    /// the newest. The catalog derives the reference updates from its indexes, or keeps
    /// them as an index registered at a random point (built from the history so far, then
    /// maintained by commits).
    #[test]
    fn maintained_joins_equal_full_reads(
        writes in proptest::collection::vec((0usize..4, -3i64..6, member_step()), 1..40),
        reads in proptest::collection::vec((0usize..2, -8i64..3), 40),
        batch in 1usize..5,
        register_at in 0usize..50,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut f = Fixture::new();
            let transfers = ["T0", "T1"];
            f.write(vec![
                row("payments.assets", "USD", 1, "r", json!({"symbol": "USD", "decimals": 2})),
                row("payments.transfers", "T0", 1, "c", transfer_row("T0", "1.00", "pending")),
                row("payments.transfers", "T1", 1, "c", transfer_row("T1", "2.00", "pending")),
            ])
            .await;
            // Joins of any size kept, so these small ones exercise the kept path.
            let totals = compile(TOTALS_PROTO);
            let maintained = f
                .dal()
                .with_descriptor_sets([totals.as_slice()])
                .unwrap()
                .with_join_cache(JoinCache::new(1 << 20).keeping_from(0));
            let full = f
                .dal()
                .with_descriptor_sets([totals.as_slice()])
                .unwrap()
                .with_state_bytes(0)
                .with_snapshot_every(0);
            let def = full.views().get("team.v1.TransferTotals").unwrap();
            let (mut t, mut newest): (Micros, Micros) = (10, 10);
            let mut pending = Vec::new();
            for (i, (member, dt, s)) in writes.iter().enumerate() {
                // The catalog keeps the join's reference updates from here on (built from
                // the history so far, then maintained by commits); never, past the end.
                if i == register_at {
                    f.catalog
                        .keep_ref_updates(&[("ledger.entries".into(), "transfer_id".into())])
                        .await
                        .unwrap();
                }
                t = (t + dt).max(2);
                newest = newest.max(t);
                let id = format!("e{member}");
                pending.push(match s {
                    MemberStep::Insert(tr, a) => {
                        // By amount mod 3: a credit, a debit, or no direction (null: the
                        // listed view's DIRECTION_UNSPECIFIED, which the aggregate neither
                        // adds nor subtracts).
                        let mut doc = entry_doc(&id, transfers[*tr], "credit", *a);
                        doc["direction"] = [json!("credit"), json!("DEBIT"), Value::Null][(*a % 3) as usize].clone();
                        insert("ledger.entries", &id, t, doc)
                    }
                    MemberStep::Move(tr) => update(
                        "ledger.entries", &id, t, json!({"transfer_id": transfers[*tr]})),
                    MemberStep::Amount(a) => update(
                        "ledger.entries", &id, t,
                        json!({"amount_minor": {"$numberLong": a.to_string()}})),
                    MemberStep::Delete => delete("ledger.entries", &id, t),
                });
                if pending.len() >= batch || i + 1 == writes.len() {
                    f.write(std::mem::take(&mut pending)).await;
                    for (tr, back) in reads.iter().skip(i % 7).take(4) {
                        let probe = newest + back;
                        let view = |d: &Dal| {
                            let d = d.clone();
                            async move {
                                format!("{:?}", d.view::<TransferWithLedger>(transfers[*tr], probe)
                                    .await
                                    .map(|v| v.map(|v| (v.view, v.evidence)))
                                    .map_err(|e| e.to_string()))
                            }
                        };
                        prop_assert_eq!(
                            view(&maintained).await, view(&full).await,
                            "{} as of {}", transfers[*tr], probe
                        );
                        // The declared aggregate over the same join: kept (adjusted by the
                        // members that changed) equals read in full, and both equal the
                        // count and signed sum of the listed members.
                        let totals = |d: &Dal| {
                            let (d, def) = (d.clone(), def.clone());
                            async move {
                                d.view_dynamic(&def, transfers[*tr], probe)
                                    .await
                                    .map(|v| v.map(|v| (totals_of(&v.view), count_of(&v.view), v.evidence)))
                                    .map_err(|e| e.to_string())
                            }
                        };
                        let kept = totals(&maintained).await;
                        prop_assert_eq!(&kept, &totals(&full).await, "{} as of {}", transfers[*tr], probe);
                        let listed = full.view::<TransferWithLedger>(transfers[*tr], probe).await;
                        prop_assert!(listed.is_ok(), "{:?}", listed);
                        if let (Ok(Some((got, count, evidence))), Ok(Some(l))) = (&kept, &listed) {
                            let sum: i128 = l.view.entries.iter().map(|e| match e.direction() {
                                overseer_protos::views::Direction::Credit => i128::from(e.amount_minor),
                                overseer_protos::views::Direction::Debit => -i128::from(e.amount_minor),
                                _ => 0,
                            }).sum();
                            prop_assert_eq!(got, &(l.view.entries.len() as u64, sum.to_string()));
                            prop_assert_eq!(*count, l.view.entries.len() as u64);
                            // Evidence: the subject's version and the newest member update.
                            prop_assert!(evidence.len() <= 2 && evidence.iter().all(|e| l.evidence.contains(e)));
                        }
                    }
                }
            }
            prop_assert_eq!(full.state_stats().joins.extended, 0);
            Ok(())
        })?;
    }
}

/// A join of many members is kept: a later read reads again only the member that changed
/// (and none when nothing did), and gives what reading every member gives.
#[tokio::test]
async fn a_kept_join_reads_only_changed_members() {
    let mut f = Fixture::new();
    let mut changes = vec![
        row(
            "payments.assets",
            "USD",
            1,
            "r",
            json!({"symbol": "USD", "decimals": 2}),
        ),
        row(
            "payments.transfers",
            "T1",
            1,
            "c",
            transfer_row("T1", "1.00", "pending"),
        ),
    ];
    for i in 0..10 {
        let id = format!("e{i:02}");
        changes.push(insert(
            "ledger.entries",
            &id,
            10 + i,
            entry_doc(&id, "T1", "debit", i),
        ));
    }
    f.write(changes).await;
    let dal = f.dal();
    let full = f.dal().with_state_bytes(0).with_snapshot_every(0);
    let view = |d: &Dal, t: Micros| {
        let d = d.clone();
        async move {
            d.view::<TransferWithLedger>("T1", t)
                .await
                .unwrap()
                .map(|v| (v.view, v.evidence))
        }
    };
    let first = view(&dal, 100).await.unwrap();
    assert_eq!(first.0.entries.len(), 10);
    assert_eq!(dal.state_stats().joins.members_read, 10);
    assert_eq!(Some(first), view(&full, 100).await);

    assert_eq!(view(&dal, 150).await, view(&full, 150).await);
    let j = dal.state_stats().joins;
    assert_eq!(
        (j.extended, j.members_read),
        (1, 10),
        "nothing changed: {j:?}"
    );

    f.write(vec![update(
        "ledger.entries",
        "e03",
        200,
        json!({"amount_minor": 99}),
    )])
    .await;
    let after = view(&dal, 200).await.unwrap();
    assert_eq!(Some(after.clone()), view(&full, 200).await);
    assert_eq!(after.0.entries[3].amount_minor, 99);
    let j = dal.state_stats().joins;
    assert_eq!(
        (j.extended, j.members_read),
        (2, 11),
        "one member read again: {j:?}"
    );
    assert_eq!(j.entries, 1);
}

// ---- Snapshots ----

/// A 1,000-update record: the first read folds it all and writes a snapshot every 128
/// updates; a new DAL (a restarted runner, `overseer view`) folds only the updates since
/// the nearest one, as of now and as of an older time; an update that arrives late before
/// the snapshots makes them stale, which a read notices (the count), answers from the
/// history and repairs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_record_reads_from_its_snapshots() {
    let mut f = Fixture::new();
    let t0: Micros = 1_000_000;
    let mut changes = vec![insert(
        "toys",
        "x",
        t0,
        json!({"_id": "x", "type": "kite", "color": "c0"}),
    )];
    for i in 1..1000 {
        changes.push(update(
            "toys",
            "x",
            t0 + i * 10,
            json!({"color": format!("c{i}")}),
        ));
    }
    while !changes.is_empty() {
        let rest = changes.split_off(changes.len().min(100));
        f.write(std::mem::replace(&mut changes, rest)).await;
    }
    // Nothing kept in memory: each read shows what a fresh process does.
    let base = f.dal().with_state_bytes(0);
    let dal = || base.clone().with_state_bytes(0).with_snapshot_every(128);
    let full = f.dal().with_state_bytes(0).with_snapshot_every(0);
    let now = t0 + 10_000;
    let mid = t0 + 5_004; // the 501st update

    let first = dal();
    let want_now = read_outcome(full.record("toys", "x", now).await);
    assert_eq!(read_outcome(first.record("toys", "x", now).await), want_now);
    first.flush_snapshots().await;
    let s = first.state_stats();
    assert_eq!(
        (s.folded, s.updates_folded, s.snapshots.written),
        (1, 1000, 7),
        "{s:?}"
    );
    let stored = f.catalog.snapshots("toys", "x").await.unwrap();
    let ns: Vec<u64> = stored.iter().map(|s| s.n).collect();
    assert_eq!(ns, [128, 256, 384, 512, 640, 768, 896]);

    let cold = dal();
    assert_eq!(read_outcome(cold.record("toys", "x", now).await), want_now);
    assert_eq!(
        read_outcome(cold.record("toys", "x", mid).await),
        read_outcome(full.record("toys", "x", mid).await)
    );
    let v = cold.view::<Toy>("x", mid).await.unwrap().unwrap();
    assert_eq!(v.view.color, "c500");
    let s = cold.state_stats();
    assert_eq!(s.snapshots.read, 3, "{s:?}");
    assert_eq!(s.folded, 0, "{s:?}");
    assert_eq!(
        s.updates_folded,
        (1000 - 896) + 2 * (501 - 384),
        "from the nearest snapshots: {s:?}"
    );

    // An update arriving late, before every snapshot.
    f.write(vec![update(
        "toys",
        "x",
        t0 + 5,
        json!({"type": "late kite"}),
    )])
    .await;
    let want_now = read_outcome(full.record("toys", "x", now).await);
    assert!(want_now.contains("late kite"), "{want_now}");
    let after_late = dal();
    assert_eq!(
        read_outcome(after_late.record("toys", "x", now).await),
        want_now
    );
    after_late.flush_snapshots().await;
    let s = after_late.state_stats();
    assert_eq!(
        (s.snapshots.stale, s.folded, s.updates_folded),
        (1, 1, 1001),
        "{s:?}"
    );
    // Replaced: every snapshot up to the stale one, written again at the new boundaries.
    let stored = f.catalog.snapshots("toys", "x").await.unwrap();
    assert_eq!(stored.len(), 7);
    // The 896th update is now the one that was 895th (i = 894).
    assert_eq!(stored.last().unwrap().event_time_us, t0 + 894 * 10);
    let repaired = dal();
    assert_eq!(
        read_outcome(repaired.record("toys", "x", now).await),
        want_now
    );
    assert_eq!(
        read_outcome(repaired.record("toys", "x", mid).await),
        read_outcome(full.record("toys", "x", mid).await)
    );
    let s = repaired.state_stats();
    assert_eq!(
        (s.snapshots.read, s.snapshots.stale, s.folded),
        (2, 0, 0),
        "{s:?}"
    );

    // A snapshot that does not decode is replaced too, never an error.
    let mut bad = stored.last().unwrap().clone();
    bad.body = b"not a fold".to_vec();
    f.catalog
        .put_snapshots(&[overseer_dal::update::SnapshotWrite {
            model: "toys".into(),
            record_id: "x".into(),
            clear_up_to: None,
            snapshots: vec![bad],
        }])
        .await
        .unwrap();
    let d = dal();
    assert_eq!(read_outcome(d.record("toys", "x", now).await), want_now);
    assert_eq!(d.state_stats().snapshots.stale, 1);
    d.flush_snapshots().await;

    // One folded by other builders (another fingerprint) is not used either.
    let mut other = f
        .catalog
        .snapshots("toys", "x")
        .await
        .unwrap()
        .pop()
        .unwrap();
    other.fold ^= 1;
    f.catalog
        .put_snapshots(&[overseer_dal::update::SnapshotWrite {
            model: "toys".into(),
            record_id: "x".into(),
            clear_up_to: None,
            snapshots: vec![other],
        }])
        .await
        .unwrap();
    let d = dal();
    assert_eq!(read_outcome(d.record("toys", "x", now).await), want_now);
    let s = d.state_stats();
    assert_eq!((s.snapshots.stale, s.folded), (1, 1), "{s:?}");
}

// ---- Property: a replay's timeline reads what the history says ----

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// For random histories (written in batches whose commit times also go back, with
    /// equal commit times, references, and invalid steps such as an update before the
    /// insert), a window of them read page by page in time-travel order into a timeline,
    /// as replay does, and probes at random times after each page: a DAL reading from the
    /// timeline and one folding each read's whole history agree on every record read
    /// (state, references, count, newest update, or the error) and every view — for
    /// windows that start before the history and inside it (bases read from the history),
    /// with runs' floors that drop old versions, and with a budget so small that records
    /// are evicted and read their base again.
    #[test]
    fn timeline_reads_equal_full_fold(
        writes in proptest::collection::vec(
            (0usize..3, -4i64..5, step(), proptest::option::of(0u8..3)),
            1..40,
        ),
        window in (0i64..30, 0i64..60),
        page_size in 1usize..6,
        lag in 0i64..8,
        budget in proptest::sample::select(vec![800u64, 1_500, 3_000, 1 << 20]),
        probes in proptest::collection::vec((0usize..3, -10i64..6), 6),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut f = Fixture::new();
            let ids = ["a", "b", "c"];
            let mut t: Micros = 10;
            let mut batch = Vec::new();
            for (i, (rec, dt, s, tag)) in writes.iter().enumerate() {
                t = (t + dt).max(0);
                let mut c = step_change(ids[*rec], t, s);
                if let Some(tag) = tag {
                    c.refs.push(("tag", format!("v{tag}")));
                }
                batch.push(c);
                if i % 3 == 2 || i + 1 == writes.len() {
                    f.write(std::mem::take(&mut batch)).await;
                }
            }
            let (from, to) = (window.0, window.0 + window.1);
            let full = f.dal().with_state_bytes(0).with_snapshot_every(0);
            let empty_before = f
                .catalog
                .updates_in_window(Micros::MIN, from - 1, None, 1)
                .await
                .unwrap()
                .is_empty();
            let timeline = Arc::new(Timeline::new(budget, empty_before));
            let replayed = f.dal().with_timeline(timeline.clone());
            let mut after = None;
            loop {
                let page = f.catalog.updates_in_window(from, to, after.take(), page_size).await.unwrap();
                let last_page = page.len() < page_size;
                let complete = match page.last() {
                    Some(l) if !last_page => l.event_time_us - 1,
                    _ => to,
                };
                if let Some(l) = page.last() {
                    after = Some((l.event_time_us, l.source.clone(), l.position.clone()));
                }
                let floor = page.first().map_or(complete, |e| e.event_time_us - lag);
                replayed.advance_timeline(&page, floor, complete).await.unwrap();
                prop_assert!(timeline.complete_us() >= complete.min(to));
                for (r, back) in &probes {
                    let (id, at) = (ids[*r], complete + back);
                    prop_assert_eq!(
                        read_outcome(replayed.record("toys", id, at).await),
                        read_outcome(full.record("toys", id, at).await),
                        "record {} as of {} (complete to {})", id, at, complete
                    );
                    let view = |d: &Dal| {
                        let d = d.clone();
                        async move {
                            format!("{:?}", d.view::<Toy>(id, at).await.map(|v| v.map(|v| (v.view, v.evidence))).map_err(|e| e.to_string()))
                        }
                    };
                    prop_assert_eq!(view(&replayed).await, view(&full).await);
                }
                if last_page {
                    break;
                }
            }
            let s = timeline.stats();
            prop_assert!(s.updates_applied <= writes.len() as u64, "{s:?}");
            Ok(())
        })?;
    }
}

/// A window read into a timeline serves the reads it covers from memory: every update
/// folded once, no base read when nothing came before the window, and a record's base
/// read once when something did; reads past what has been read, or before a record's
/// base, go to the catalog.
#[tokio::test]
async fn a_timeline_covers_what_it_has_read() {
    let mut f = Fixture::new();
    f.write(vec![
        insert("toys", "a", 10, json!({"_id": "a", "color": "red"})),
        insert("toys", "b", 10, json!({"_id": "b", "color": "blue"})),
        update("toys", "a", 20, json!({"color": "green"})),
        update("toys", "a", 30, json!({"color": "white"})),
        update("toys", "b", 40, json!({"color": "black"})),
    ])
    .await;
    let f = &f;
    let window = |from| async move {
        let empty_before = empty_before(f, from).await;
        let timeline = Arc::new(Timeline::new(1 << 20, empty_before));
        let dal = f.dal().with_timeline(timeline.clone());
        let page = f
            .catalog
            .updates_in_window(from, 100, None, 100)
            .await
            .unwrap();
        dal.advance_timeline(&page, Micros::MIN, 100).await.unwrap();
        (dal, timeline)
    };
    let color = |dal: Dal, id: &'static str, at: Micros| async move {
        dal.view::<Toy>(id, at).await.unwrap().map(|v| v.view.color)
    };

    // The whole history: nothing before it, no base read, every read covered.
    let (dal, timeline) = window(0).await;
    assert_eq!(color(dal.clone(), "a", 25).await.as_deref(), Some("green"));
    assert_eq!(color(dal.clone(), "a", 5).await, None);
    assert_eq!(color(dal.clone(), "b", 45).await.as_deref(), Some("black"));
    let s = timeline.stats();
    assert_eq!(
        (s.updates_applied, s.bases_read, s.reads, s.missed),
        (5, 0, 3, 0),
        "{s:?}"
    );
    // Past what has been read: the catalog.
    assert_eq!(color(dal, "a", 500).await.as_deref(), Some("white"));
    assert_eq!(timeline.stats().missed, 1);

    // From t=20: a's and b's bases are read (as of 20 and 40), the updates after them
    // applied; a read before a base goes to the catalog.
    let (dal, timeline) = window(20).await;
    assert_eq!(color(dal.clone(), "a", 35).await.as_deref(), Some("white"));
    assert_eq!(color(dal.clone(), "a", 20).await.as_deref(), Some("green"));
    assert_eq!(color(dal.clone(), "b", 15).await.as_deref(), Some("blue"));
    let s = timeline.stats();
    assert_eq!(
        (s.updates_applied, s.bases_read, s.reads, s.missed),
        (1, 2, 2, 1),
        "{s:?}"
    );

    // A timeline of other models takes nothing of these: their reads go to the catalog.
    let timeline = Arc::new(Timeline::new(1 << 20, true).of_models(["ledger".to_owned()]));
    let dal = f.dal().with_timeline(timeline.clone());
    let page = f
        .catalog
        .updates_in_window(0, 100, None, 100)
        .await
        .unwrap();
    dal.advance_timeline(&page, Micros::MIN, 100).await.unwrap();
    assert_eq!(color(dal, "a", 25).await.as_deref(), Some("green"));
    let s = timeline.stats();
    assert_eq!((s.updates_applied, s.reads, s.missed), (0, 0, 1), "{s:?}");
}

async fn empty_before(f: &Fixture, from: Micros) -> bool {
    f.catalog
        .updates_in_window(Micros::MIN, from - 1, None, 1)
        .await
        .unwrap()
        .is_empty()
}
