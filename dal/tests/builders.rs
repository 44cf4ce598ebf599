//! The builders on real event shapes: the Overseer post's Toy example, the format fixtures
//! of `ingestion/tests/fixtures/` (the Debezium documentation's PostgreSQL and MongoDB
//! envelopes and native change streams), native BSON change streams, hand-built pgoutput
//! messages; and property tests against a reference model.

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

use overseer_dal::builder::{BuildError, State, fold};
use overseer_dal::pgoutput::Cell;
use overseer_dal::update::UpdateRecord;
use overseer_testkit::pgoutput::Msg;

fn rec(format: &str, record_id: &str, pos: usize, raw: impl Into<Bytes>) -> UpdateRecord {
    UpdateRecord {
        source: "test".into(),
        position: format!("{pos:08}"),
        record_id: record_id.into(),
        format: format.into(),
        raw: raw.into(),
        ..Default::default()
    }
}

fn obj(v: Value) -> State {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

/// The state after each prefix of `records`.
fn states(records: &[UpdateRecord]) -> Vec<Option<State>> {
    (1..=records.len())
        .map(|n| fold(&records[..n]).unwrap_or_else(|e| panic!("prefix {n}: {e}")))
        .collect()
}

fn fixture(name: &str) -> Vec<String> {
    let path = format!(
        "{}/../ingestion/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Records of the fixture lines `lines` (1-based), all of record `id`.
fn fixture_records(format: &str, lines: &[String], id: &str, which: &[usize]) -> Vec<UpdateRecord> {
    which
        .iter()
        .map(|&n| rec(format, id, n, lines[n - 1].clone().into_bytes()))
        .collect()
}

fn oid(n: u32) -> String {
    format!("65e1f1c0a1b2c3d4e5f6{n:04}")
}

/// The document a Debezium MongoDB line carries as a string in `field`.
fn dbz_mongo_doc(line: &str, field: &str) -> State {
    let v: Value = serde_json::from_str(line).unwrap();
    let p = v.get("payload").unwrap_or(&v);
    obj(serde_json::from_str(p[field].as_str().unwrap()).unwrap())
}

#[test]
fn overseer_toy_example() {
    let first = json!({"_id": 1, "fullDocument": {"type": "watergun", "color": "blue"},
        "clusterTime": 1658224073});
    let second = json!({"_id": 1, "updateDescription": {"updatedFields": {"type": "balloon"}},
        "clusterTime": 1658224074});
    let recs = [
        rec("mongo-change-stream", "1", 1, first.to_string()),
        rec("mongo-change-stream", "1", 2, second.to_string()),
    ];
    assert_eq!(
        states(&recs),
        vec![
            Some(obj(json!({"_id": 1, "type": "watergun", "color": "blue"}))),
            Some(obj(json!({"_id": 1, "type": "balloon", "color": "blue"}))),
        ]
    );
}

#[test]
fn mongo_change_stream_fixture() {
    let lines = fixture("mongo_change_stream.jsonl");
    let f = "mongo-change-stream";
    let full = |n: usize| {
        let v: Value = serde_json::from_str(&lines[n - 1]).unwrap();
        obj(v["fullDocument"].clone())
    };

    // oid(4001): insert, update (updatedFields with a dotted path + removedFields), replace.
    let s = states(&fixture_records(f, &lines, &oid(4001), &[1, 4, 5]));
    assert_eq!(s[0], Some(full(1)));
    let mut after_update = full(1);
    after_update.insert("audit".into(), json!({"checked": true}));
    assert_eq!(s[1], Some(after_update));
    assert_eq!(s[2], Some(full(5)));
    assert_eq!(s[2].as_ref().unwrap()["memo"], "replaced");

    // oid(4002): canonical insert keeps its extended-JSON types; the updateLookup document
    // of the update is the state after it.
    let s = states(&fixture_records(f, &lines, &oid(4002), &[2, 3]));
    let first = s[0].as_ref().unwrap();
    assert_eq!(first["amount_minor"], json!({"$numberLong": "50000000"}));
    assert_eq!(first["decimals"], json!({"$numberInt": "8"}));
    assert_eq!(first["_id"], json!({"$oid": oid(4002)}));
    assert_eq!(s[1], Some(full(3)));

    // oid(4003): insert then delete.
    let s = states(&fixture_records(f, &lines, &oid(4003), &[6, 7]));
    assert_eq!(s[0], Some(full(6)));
    assert_eq!(s[1], None);
}

#[test]
fn debezium_postgres_fixture() {
    let lines = fixture("debezium_pg.jsonl");
    let f = "debezium-postgres";
    let after = |n: usize| {
        let v: Value = serde_json::from_str(&lines[n - 1]).unwrap();
        obj(v.get("payload").unwrap_or(&v)["after"].clone())
    };
    // t-1000: snapshot read counts as a create.
    assert_eq!(
        fold(&fixture_records(f, &lines, "t-1000", &[1])).unwrap(),
        Some(obj(
            json!({"id": "t-1000", "account_id": "acc-1", "asset": "BTC",
            "amount": "0.25000000", "status": "completed",
            "updated_at": "2024-03-01T11:50:00.000000Z"})
        ))
    );
    // t-1001: created pending, then completed; the amount stays an exact decimal string.
    let s = states(&fixture_records(f, &lines, "t-1001", &[2, 3]));
    assert_eq!(s[0].as_ref().unwrap()["status"], "pending");
    assert_eq!(s[1], Some(after(3)));
    assert_eq!(s[1].as_ref().unwrap()["amount"], "0.50000000");
    // t-1002: created, failed, deleted.
    let s = states(&fixture_records(f, &lines, "t-1002", &[4, 5, 6]));
    assert_eq!(s[1].as_ref().unwrap()["status"], "failed");
    assert_eq!(s[2], None);
}

#[test]
fn debezium_mongo_fixture() {
    let lines = fixture("debezium_mongo.jsonl");
    let f = "debezium-mongo";
    // Snapshot read: `after`, types as sent.
    let s = fold(&fixture_records(f, &lines, &oid(1000), &[1])).unwrap();
    assert_eq!(s, Some(dbz_mongo_doc(&lines[0], "after")));
    assert_eq!(
        s.as_ref().unwrap()["amount_minor"],
        json!({"$numberLong": "25000000"})
    );
    // Create, then an oplog `patch` with `$set` (no `after`).
    let s = states(&fixture_records(f, &lines, &oid(2001), &[3, 6]));
    let mut want = dbz_mongo_doc(&lines[2], "after");
    assert_eq!(s[0], Some(want.clone()));
    want.insert("memo".into(), json!("settled"));
    assert_eq!(s[1], Some(want));
    // Create, then a change-stream capture with `after`.
    let s = states(&fixture_records(f, &lines, &oid(2002), &[4, 5]));
    assert_eq!(s[1], Some(dbz_mongo_doc(&lines[4], "after")));
    // The same update without `after`: `updateDescription.updatedFields` (a string).
    let mut v: Value = serde_json::from_str(&lines[4]).unwrap();
    v.as_object_mut().unwrap().remove("after");
    let recs = [
        rec(f, &oid(2002), 4, lines[3].clone()),
        rec(f, &oid(2002), 5, v.to_string()),
    ];
    assert_eq!(
        fold(&recs).unwrap(),
        Some(dbz_mongo_doc(&lines[4], "after"))
    );
    // Deletes, with a pre-image and with a filter only.
    let s = states(&fixture_records(f, &lines, &oid(3001), &[7, 9]));
    assert!(s[0].is_some());
    assert_eq!(s[1], None);
    let s = states(&fixture_records(f, &lines, &oid(3002), &[8, 10]));
    assert_eq!(s[1], None);
}

#[test]
fn debezium_mongo_update_description_dotted_and_removed() {
    let f = "debezium-mongo";
    let c = json!({"op": "c", "after": r#"{"_id": {"$oid": "65e1f1c0a1b2c3d4e5f60001"}, "legs": [{"amt": {"$numberLong": "1"}}, {"amt": {"$numberLong": "2"}}], "memo": "x"}"#});
    let u = json!({"op": "u", "updateDescription": {
        "updatedFields": r#"{"legs.1.amt": {"$numberLong": "20"}, "audit.by": "ops"}"#,
        "removedFields": ["memo"], "truncatedArrays": null}});
    let recs = [rec(f, "e", 1, c.to_string()), rec(f, "e", 2, u.to_string())];
    assert_eq!(
        fold(&recs).unwrap(),
        Some(obj(json!({"_id": {"$oid": "65e1f1c0a1b2c3d4e5f60001"},
            "legs": [{"amt": {"$numberLong": "1"}}, {"amt": {"$numberLong": "20"}}],
            "audit": {"by": "ops"}})))
    );
}

#[test]
fn native_bson_change_stream() {
    use bson::{Bson, doc, oid::ObjectId};
    let id = ObjectId::parse_str(oid(4001)).unwrap();
    let ns = doc! {"db": "ledger", "coll": "entries"};
    let insert = doc! {
        "_id": {"_data": "8265E1C340000000012B022C0100296E5A1004"},
        "operationType": "insert",
        "clusterTime": bson::Timestamp { time: 1_709_294_400, increment: 1 },
        "wallTime": bson::DateTime::from_millis(1_709_294_400_120),
        "ns": ns.clone(),
        "documentKey": {"_id": id},
        "fullDocument": {
            "_id": id, "transfer_id": "t-1001", "account_id": "acc-1", "asset": "BTC",
            "direction": "debit", "amount_minor": 50_000_000_i64, "decimals": 8_i32,
            "legs": [{"n": 1_i32}, {"n": 2_i32}, {"n": 3_i32}],
            "rate": Bson::Decimal128("0.00000001".parse().unwrap()),
        },
    };
    let update = doc! {
        "_id": {"_data": "8265E1C341000000022B022C0100296E5A1004"},
        "operationType": "update",
        "clusterTime": bson::Timestamp { time: 1_709_294_401, increment: 2 },
        "ns": ns.clone(),
        "documentKey": {"_id": id},
        "updateDescription": {
            "updatedFields": {"legs.2.n": 30_i32, "audit.checked": true, "amount_minor": 50_000_001_i64},
            "removedFields": ["direction"],
            "truncatedArrays": [],
        },
    };
    let delete = doc! {
        "operationType": "delete", "ns": ns.clone(), "documentKey": {"_id": id},
    };
    let reinsert = doc! {
        "operationType": "insert", "ns": ns, "documentKey": {"_id": id},
        "fullDocument": {"_id": id, "transfer_id": "t-1001", "amount_minor": 1_i64},
    };
    let f = "mongo-change-stream-bson";
    let recs: Vec<_> = [insert, update, delete, reinsert]
        .iter()
        .enumerate()
        .map(|(i, d)| rec(f, &oid(4001), i, d.to_vec().unwrap()))
        .collect();
    let s = states(&recs);
    assert_eq!(
        s[1],
        Some(obj(json!({
            "_id": {"$oid": oid(4001)}, "transfer_id": "t-1001", "account_id": "acc-1",
            "asset": "BTC", "amount_minor": {"$numberLong": "50000001"}, "decimals": 8,
            "legs": [{"n": 1}, {"n": 2}, {"n": 30}],
            "rate": {"$numberDecimal": "1E-8"}, "audit": {"checked": true},
        })))
    );
    assert_eq!(s[2], None);
    assert_eq!(
        s[3],
        Some(obj(
            json!({"_id": {"$oid": oid(4001)}, "transfer_id": "t-1001",
            "amount_minor": {"$numberLong": "1"}})
        ))
    );
}

#[test]
fn dotted_paths_into_arrays_and_reinsert() {
    let f = "mongo-change-stream";
    let ev = |v: Value| v.to_string();
    let recs = [
        rec(
            f,
            "e",
            1,
            ev(
                json!({"operationType": "insert", "documentKey": {"_id": "e"},
            "fullDocument": {"_id": "e", "a": {"b": [{"c": 1}, {"c": 2}, {"c": 3}]}}}),
            ),
        ),
        rec(
            f,
            "e",
            2,
            ev(
                json!({"operationType": "update", "documentKey": {"_id": "e"},
            "updateDescription": {"updatedFields": {"a.b.2.c": 33, "a.b.3": {"c": 4}, "a.b.0.d.e": true},
                "removedFields": ["a.b.1.c"]}}),
            ),
        ),
        rec(
            f,
            "e",
            3,
            ev(json!({"operationType": "delete", "documentKey": {"_id": "e"}})),
        ),
        rec(
            f,
            "e",
            4,
            ev(
                json!({"operationType": "insert", "documentKey": {"_id": "e"},
            "fullDocument": {"_id": "e", "a": 1}}),
            ),
        ),
    ];
    let s = states(&recs);
    assert_eq!(
        s[1],
        Some(obj(
            json!({"_id": "e", "a": {"b": [{"c": 1, "d": {"e": true}}, {}, {"c": 33}, {"c": 4}]}})
        ))
    );
    assert_eq!(s[2], None);
    assert_eq!(s[3], Some(obj(json!({"_id": "e", "a": 1}))), "exists again");
}

#[test]
fn errors_name_the_update() {
    let recs = [
        rec(
            "mongo-change-stream",
            "e",
            1,
            r#"{"operationType":"insert","fullDocument":{"_id":"e","x":5}}"#,
        ),
        rec(
            "mongo-change-stream",
            "e",
            2,
            r#"{"operationType":"update","updateDescription":{"updatedFields":{"x.y":1}}}"#,
        ),
    ];
    let e = fold(&recs).unwrap_err();
    assert!(matches!(e, BuildError::Invalid { .. }));
    assert_eq!(e.update().position, "00000002");
    assert!(e.reason().contains("cannot set x.y"), "{e}");
}

// ---------------------------------------------------------------------------------------
// pgoutput, built by hand the way the walsender sends it.

const REL: u32 = 16_401;

/// payments.transfers(id text key, account_id text, amount numeric, legs int4, ok bool,
/// meta jsonb, ratio float8, memo text).
fn relation() -> Vec<u8> {
    let cols = [
        (1, "id", 25),
        (0, "account_id", 25),
        (0, "amount", 1700),
        (0, "legs", 23),
        (0, "ok", 16),
        (0, "meta", 3802),
        (0, "ratio", 701),
        (0, "memo", 25),
    ];
    let mut m = Msg::new(b'R')
        .u32(REL)
        .s("payments")
        .s("transfers")
        .u8(b'd')
        .u16(cols.len() as u16);
    for (flags, name, oid) in cols {
        m = m.u8(flags).s(name).u32(oid).u32(u32::MAX);
    }
    m.0
}

fn t(s: &str) -> Cell {
    Cell::Text(s.into())
}

fn pg(record_id: &str, pos: usize, msg: Msg) -> UpdateRecord {
    UpdateRecord {
        context: relation().into(),
        ..rec("pgoutput", record_id, pos, msg.0)
    }
}

fn row(id: &str, amount: &str, memo: Cell) -> Vec<Cell> {
    vec![
        t(id),
        t("acc-1"),
        t(amount),
        t("2"),
        t("t"),
        t(r#"{"k": [1, "x"]}"#),
        t("0.5"),
        memo,
    ]
}

fn key_only(id: &str) -> Vec<Cell> {
    let mut cells = vec![Cell::Null; 8];
    cells[0] = t(id);
    cells
}

fn insert(id: &str, amount: &str, memo: &str) -> Msg {
    Msg::new(b'I')
        .u32(REL)
        .u8(b'N')
        .tuple(&row(id, amount, t(memo)))
}

#[test]
fn pgoutput_rows_toast_delete_reinsert() {
    let long = "x".repeat(5000);
    let recs = [
        pg("t0", 1, insert("t0", "12.50", &long)),
        // An update that does not touch the TOASTed memo.
        pg(
            "t0",
            2,
            Msg::new(b'U')
                .u32(REL)
                .u8(b'N')
                .tuple(&row("t0", "13.00", Cell::UnchangedToast)),
        ),
        pg(
            "t0",
            3,
            Msg::new(b'D').u32(REL).u8(b'K').tuple(&key_only("t0")),
        ),
        pg("t0", 4, insert("t0", "1.00", "again")),
    ];
    let s = states(&recs);
    let want = |amount: &str, memo: &str| {
        Some(obj(
            json!({"id": "t0", "account_id": "acc-1", "amount": amount, "legs": 2,
            "ok": true, "meta": {"k": [1, "x"]}, "ratio": 0.5, "memo": memo}),
        ))
    };
    assert_eq!(s[0], want("12.50", &long));
    assert_eq!(
        s[1],
        want("13.00", &long),
        "unchanged TOAST keeps its value"
    );
    assert_eq!(s[2], None);
    assert_eq!(s[3], want("1.00", "again"), "exists again");
}

#[test]
fn pgoutput_key_change() {
    let key_change = |old_kind: u8, old: Vec<Cell>| {
        Msg::new(b'U')
            .u32(REL)
            .u8(old_kind)
            .tuple(&old)
            .u8(b'N')
            .tuple(&row("t1", "13.00", Cell::UnchangedToast))
    };
    // The old id's history ends at the key change.
    let old_id = [
        pg("t0", 1, insert("t0", "12.50", "memo")),
        pg("t0", 2, key_change(b'K', key_only("t0"))),
    ];
    let s = states(&old_id);
    assert!(s[0].is_some());
    assert_eq!(s[1], None, "the key change ends t0");

    // The new id starts with it. With a key-only old tuple the untouched TOASTed memo is
    // unknown, so it is left out; with REPLICA IDENTITY FULL the old row has it.
    let new_id = fold(&[pg("t1", 2, key_change(b'K', key_only("t0")))])
        .unwrap()
        .unwrap();
    assert_eq!(new_id["id"], "t1");
    assert!(!new_id.contains_key("memo"));
    let full = fold(&[pg("t1", 2, key_change(b'O', row("t0", "12.50", t("memo"))))])
        .unwrap()
        .unwrap();
    assert_eq!(full["memo"], "memo");
    assert_eq!(full["amount"], "13.00");

    // An old tuple with the same key (REPLICA IDENTITY FULL on a plain update) is no move.
    let same = Msg::new(b'U')
        .u32(REL)
        .u8(b'O')
        .tuple(&row("t0", "12.50", t("m")))
        .u8(b'N')
        .tuple(&row("t0", "14.00", t("m")));
    let s = fold(&[pg("t0", 1, insert("t0", "12.50", "m")), pg("t0", 2, same)]).unwrap();
    assert_eq!(s.unwrap()["amount"], "14.00");

    // Bytes that are not pgoutput are an error naming the update.
    let mut bad = pg("t0", 9, insert("t0", "1", "m"));
    bad.raw = Bytes::from_static(b"I\0\0");
    let e = fold(&[bad]).unwrap_err();
    assert_eq!(e.update().position, "00000009");
    assert!(e.reason().contains("truncated"), "{e}");
}

// ---------------------------------------------------------------------------------------
// Property tests: folds of generated histories against a reference model.

/// Leaf values, extended-JSON scalars included (they are leaves, never paths).
fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i32>().prop_map(Value::from),
        "[a-z]{0,6}".prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        Just(Value::Null),
        any::<i64>().prop_map(|n| json!({"$numberLong": n.to_string()})),
        (0u32..100_000, 0u32..100)
            .prop_map(|(a, b)| json!({"$numberDecimal": format!("{a}.{b:02}")})),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-e]", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn document() -> impl Strategy<Value = Map<String, Value>> {
    proptest::collection::btree_map("[a-e]", value(), 0..5).prop_map(|m| m.into_iter().collect())
}

#[derive(Clone, Debug)]
enum MongoStep {
    Insert(Map<String, Value>),
    Replace(Map<String, Value>),
    /// (target selector, kind of target, value) and removal selectors.
    Update {
        sets: Vec<(usize, u8, Value)>,
        removes: Vec<usize>,
        lookup: bool,
    },
    Delete,
}

fn mongo_step() -> impl Strategy<Value = MongoStep> {
    prop_oneof![
        1 => document().prop_map(MongoStep::Insert),
        1 => document().prop_map(MongoStep::Replace),
        3 => (
            proptest::collection::vec((any::<usize>(), any::<u8>(), value()), 0..5),
            proptest::collection::vec(any::<usize>(), 0..3),
            proptest::bool::weighted(0.2),
        )
            .prop_map(|(sets, removes, lookup)| MongoStep::Update { sets, removes, lookup }),
        1 => Just(MongoStep::Delete),
    ]
}

#[derive(Clone, Debug, PartialEq)]
enum Seg {
    Field(String),
    Index(usize),
}

/// Every path in `v` below `at` (not into extended-JSON leaves), with its value.
fn paths<'a>(v: &'a Value, at: &mut Vec<Seg>, out: &mut Vec<(Vec<Seg>, &'a Value)>) {
    match v {
        Value::Object(m) if !is_ext_leaf(v) => {
            for (k, child) in m {
                at.push(Seg::Field(k.clone()));
                out.push((at.clone(), child));
                paths(child, at, out);
                at.pop();
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                at.push(Seg::Index(i));
                out.push((at.clone(), child));
                paths(child, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

fn is_ext_leaf(v: &Value) -> bool {
    matches!(v, Value::Object(m) if m.keys().any(|k| k.starts_with('$')))
}

fn dotted(p: &[Seg]) -> String {
    p.iter()
        .map(|s| match s {
            Seg::Field(f) => f.clone(),
            Seg::Index(i) => i.to_string(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

fn pointer(p: &[Seg]) -> String {
    p.iter()
        .map(|s| match s {
            Seg::Field(f) => format!("/{f}"),
            Seg::Index(i) => format!("/{i}"),
        })
        .collect()
}

fn overlaps(a: &[Seg], b: &[Seg]) -> bool {
    let n = a.len().min(b.len());
    a[..n] == b[..n]
}

/// The reference: sets `v` at `p` in `doc` with serde_json's own JSON pointers. `p`'s
/// parent exists; an index one past the end appends.
fn reference_set(doc: &mut Value, p: &[Seg], v: Value) {
    let (last, parent) = p.split_last().unwrap();
    let parent = doc.pointer_mut(&pointer(parent)).unwrap();
    match (parent, last) {
        (Value::Object(m), Seg::Field(f)) => {
            m.insert(f.clone(), v);
        }
        (Value::Array(a), Seg::Index(i)) if *i == a.len() => a.push(v),
        (Value::Array(a), Seg::Index(i)) => a[*i] = v,
        (parent, last) => panic!("bad reference path {last:?} into {parent}"),
    }
}

fn reference_remove(doc: &mut Value, p: &[Seg]) {
    let (last, parent) = p.split_last().unwrap();
    if let (Some(Value::Object(m)), Seg::Field(f)) = (doc.pointer_mut(&pointer(parent)), last) {
        m.remove(f);
    }
}

/// Turns an update step into (updatedFields, removedFields), applying it to the model.
fn interpret_update(
    model: &mut Value,
    sets: &[(usize, u8, Value)],
    removes: &[usize],
) -> (Map<String, Value>, Vec<Value>) {
    let mut all = Vec::new();
    paths(&*model, &mut Vec::new(), &mut all);
    all.retain(|(p, _)| p.first() != Some(&Seg::Field("_id".into())));
    let mut containers: Vec<(Vec<Seg>, &Value)> = vec![(Vec::new(), &*model)];
    containers.extend(
        all.iter()
            .filter(|(_, v)| (v.is_object() && !is_ext_leaf(v)) || v.is_array())
            .cloned(),
    );
    let mut chosen: Vec<Vec<Seg>> = vec![vec![Seg::Field("_id".into())]];
    let mut planned_sets: Vec<(Vec<Seg>, Vec<Seg>, Value)> = Vec::new();
    for (sel, kind, v) in sets {
        // (path the event names, path the reference sets, value the reference sets)
        let target = match kind % 4 {
            0 if !all.is_empty() => {
                let (p, _) = &all[sel % all.len()];
                Some((p.clone(), p.clone(), v.clone()))
            }
            1 | 2 => {
                let objects: Vec<_> = containers.iter().filter(|(_, c)| c.is_object()).collect();
                let (p, c) = objects[sel % objects.len()];
                let f = format!("n{}", sel % 3);
                let mut p = p.clone();
                p.push(Seg::Field(f.clone()));
                if kind % 4 == 1 || c.get(&f).is_some() {
                    Some((p.clone(), p, v.clone()))
                } else {
                    // A new field of a new embedded document: MongoDB creates it.
                    let mut named = p.clone();
                    named.push(Seg::Field("m".into()));
                    Some((named, p, json!({"m": v})))
                }
            }
            3 => {
                let arrays: Vec<_> = containers.iter().filter(|(_, c)| c.is_array()).collect();
                (!arrays.is_empty()).then(|| {
                    let (p, c) = arrays[sel % arrays.len()];
                    let mut p = p.clone();
                    p.push(Seg::Index(c.as_array().map_or(0, Vec::len)));
                    (p.clone(), p, v.clone())
                })
            }
            _ => None,
        };
        if let Some((named, at, value)) = target
            && !chosen.iter().any(|c| overlaps(c, &named))
        {
            chosen.push(named.clone());
            planned_sets.push((named, at, value));
        }
    }
    let fields: Vec<_> = all
        .iter()
        .filter(|(p, _)| matches!(p.last(), Some(Seg::Field(_))))
        .map(|(p, _)| p.clone())
        .collect();
    let mut planned_removes = Vec::new();
    for sel in removes {
        if fields.is_empty() {
            break;
        }
        let p = &fields[sel % fields.len()];
        if !chosen.iter().any(|c| overlaps(c, p)) {
            chosen.push(p.clone());
            planned_removes.push(p.clone());
        }
    }
    let mut updated = Map::new();
    for (named, at, value) in planned_sets {
        updated.insert(dotted(&named), named_value(&named, &at, &value));
        reference_set(model, &at, value);
    }
    let mut removed = Vec::new();
    for p in planned_removes {
        removed.push(Value::from(dotted(&p)));
        reference_remove(model, &p);
    }
    (updated, removed)
}

/// The value the event carries for `named` (the innermost one when the reference sets a
/// whole new embedded document).
fn named_value(named: &[Seg], at: &[Seg], value: &Value) -> Value {
    if named.len() > at.len() {
        value.get("m").cloned().unwrap_or(Value::Null)
    } else {
        value.clone()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// For random histories of inserts, updates (dotted updatedFields into documents and
    /// arrays, removedFields, sometimes with the updateLookup document), replaces and
    /// deletes, the fold of every prefix equals the reference state after it.
    #[test]
    fn mongo_change_stream_folds_like_the_reference(steps in proptest::collection::vec(mongo_step(), 1..20)) {
        let id = json!({"$oid": "65e1f1c0a1b2c3d4e5f60001"});
        let key = json!({"_id": id});
        let mut model: Option<Value> = None;
        let mut records = Vec::new();
        let mut expected = Vec::new();
        for step in steps {
            let with_id = |mut d: Map<String, Value>| {
                d.insert("_id".into(), id.clone());
                Value::Object(d)
            };
            let event = match (step, model.is_some()) {
                (MongoStep::Insert(d) | MongoStep::Replace(d), false) => {
                    model = Some(with_id(d));
                    json!({"operationType": "insert", "documentKey": key, "fullDocument": model})
                }
                (MongoStep::Insert(d) | MongoStep::Replace(d), true) => {
                    model = Some(with_id(d));
                    json!({"operationType": "replace", "documentKey": key, "fullDocument": model})
                }
                (MongoStep::Update { .. } | MongoStep::Delete, false) => continue,
                (MongoStep::Delete, true) => {
                    model = None;
                    json!({"operationType": "delete", "documentKey": key})
                }
                (MongoStep::Update { sets, removes, lookup }, true) => {
                    let Some(m) = model.as_mut() else { continue };
                    let (updated, removed) = interpret_update(m, &sets, &removes);
                    let mut ev = json!({"operationType": "update", "documentKey": key,
                        "updateDescription": {"updatedFields": updated, "removedFields": removed,
                            "truncatedArrays": []}});
                    if lookup {
                        ev["fullDocument"] = m.clone();
                    }
                    ev
                }
            };
            records.push(rec("mongo-change-stream", "65e1f1c0a1b2c3d4e5f60001", records.len(), event.to_string()));
            expected.push(model.clone().map(obj));
        }
        for n in 1..=records.len() {
            let got = fold(&records[..n]);
            prop_assert_eq!(got.as_ref().map_err(ToString::to_string), Ok(&expected[n - 1]), "after {} events: {:#?}", n, &records[..n].iter().map(|r| String::from_utf8_lossy(&r.raw).into_owned()).collect::<Vec<_>>());
        }
    }

    /// Debezium PostgreSQL row images: creates (`c` or snapshot `r`), updates whose
    /// unchanged TOASTed columns are the unavailable-value placeholder, deletes.
    #[test]
    fn debezium_postgres_folds_like_the_reference(
        steps in proptest::collection::vec(
            proptest::option::weighted(0.85, (
                proptest::collection::vec(leaf(), 4),
                proptest::collection::vec(any::<bool>(), 4),
                any::<bool>(),
                any::<bool>(),
            )),
            1..20,
        )
    ) {
        const COLS: [&str; 4] = ["amount", "status", "memo", "doc"];
        let mut model: Option<Map<String, Value>> = None;
        let mut records = Vec::new();
        let mut expected = Vec::new();
        for step in steps {
            let payload = match (step, model.as_mut()) {
                (None, None) => continue,
                (None, Some(_)) => {
                    model = None;
                    json!({"op": "d", "before": {"id": "t-1", "amount": null, "status": null,
                        "memo": null, "doc": null}, "after": null})
                }
                (Some((values, _, snapshot, _)), None) => {
                    let mut row = Map::new();
                    row.insert("id".into(), json!("t-1"));
                    for (c, v) in COLS.iter().zip(values) {
                        row.insert((*c).into(), v);
                    }
                    model = Some(row.clone());
                    json!({"op": if snapshot { "r" } else { "c" }, "before": null, "after": row})
                }
                (Some((values, unavailable, _, _)), Some(m)) => {
                    let mut row = Map::new();
                    row.insert("id".into(), json!("t-1"));
                    for ((c, v), gone) in COLS.iter().zip(values).zip(unavailable) {
                        if gone {
                            row.insert((*c).into(), json!("__debezium_unavailable_value"));
                        } else {
                            row.insert((*c).into(), v.clone());
                            m.insert((*c).into(), v);
                        }
                    }
                    json!({"op": "u", "before": null, "after": row})
                }
            };
            let wrapped = records.len() % 2 == 1;
            let raw = if wrapped {
                json!({"schema": {"type": "struct"}, "payload": payload})
            } else {
                payload
            };
            let mut r = rec("debezium-postgres", "t-1", records.len(), raw.to_string());
            r.key = Bytes::from_static(br#"{"id":"t-1"}"#);
            records.push(r);
            expected.push(model.clone());
        }
        for n in 1..=records.len() {
            let got = fold(&records[..n]).map_err(|e| e.to_string());
            prop_assert_eq!(got.as_ref(), Ok(&expected[n - 1]), "after {} events", n);
        }
    }
}
