//! The consumers on real event shapes, built the way the service builds them
//! (`format::build` from a parsed config): the fixture files under `tests/fixtures/`
//! (Debezium PostgreSQL and MongoDB envelopes, a native change stream in extended JSON),
//! the same change stream as raw BSON, the Overseer post's Toy example, a protobuf outbox
//! message (also folded into record states through `format::builders`), and the malformed
//! corpus whose expected reasons are listed in `tests/fixtures/README.md`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bson::{Bson, doc, oid::ObjectId};
use bytes::Bytes;
use overseer_dal::builder::{BuildError, Builders, State};
use overseer_dal::update::{Op, Reference, UpdateRecord};
use overseer_ingestion::config::{Config, Format};
use overseer_ingestion::format::{self, Consumer, Decoded};
use overseer_ingestion::source::SourceEvent;

/// The models of DESIGN.md's worked example, and one source per fixture. Also the config
/// tests/fixtures/README.md gives for feeding the fixtures through the pipeline.
const CONFIG: &str = r#"
[[models]]
name = "payments.transfers"
id_field = "id"
references = { account_id = "account_id" }

[[models]]
name = "ledger.entries"
id_field = "_id"
references = { transfer_id = "transfer_id" }

[[models]]
name = "toys.toys"
id_field = "_id"
references = { kind = "type" }

[[sources]]
name = "transfers-debezium"
format = "debezium-postgres"
[sources.file]
path = "tests/fixtures/debezium_pg.jsonl"

[[sources]]
name = "entries-debezium"
format = "debezium-mongo"
[sources.file]
path = "tests/fixtures/debezium_mongo.jsonl"

[[sources]]
name = "entries-change-stream"
format = "mongo-change-stream"
[sources.file]
path = "tests/fixtures/mongo_change_stream.jsonl"

[[sources]]
name = "entries-bson"
format = "mongo-change-stream-bson"
[sources.file]
path = "entries.bson"

[[sources]]
name = "toys"
format = "mongo-change-stream"
model = "toys.toys"
[sources.file]
path = "toys.jsonl"
"#;

fn config() -> Config {
    let cfg: Config = toml::from_str(CONFIG).expect("test config parses");
    cfg.validate().expect("test config is valid");
    cfg
}

fn consumer(source: &str) -> Arc<dyn Consumer> {
    let cfg = config();
    let src = cfg
        .sources
        .iter()
        .find(|s| s.name == source)
        .expect("source in CONFIG");
    format::build(src, &cfg).expect("consumer builds")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn event(raw: impl Into<Bytes>, position: usize) -> SourceEvent {
    SourceEvent {
        raw: raw.into(),
        key: None,
        context: None,
        position: format!("{position:08}"),
        commit_time_us: None,
        ack: None,
        checkpoint: None,
        lane: 0,
    }
}

/// The fixture's lines, each as one event (JSONL: one event per line, no empty lines).
fn fixture_events(name: &str) -> Vec<SourceEvent> {
    let text = std::fs::read_to_string(fixture(name)).expect("fixture readable");
    assert!(
        text.ends_with('\n'),
        "{name}: last line ends with a newline"
    );
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            assert!(!line.trim().is_empty(), "{name}:{}: empty line", i + 1);
            event(line.to_owned(), i + 1)
        })
        .collect()
}

fn decoded(model: &str, id: &str, op: Op, t: i64, refs: &[(&str, &str)]) -> Decoded {
    Decoded {
        model: model.into(),
        record_id: id.into(),
        op,
        event_time_us: t,
        refs: refs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
        event_id: None,
    }
}

/// The decoded metadata without the upstream identity (checked on its own in
/// `fixture_events_carry_unique_upstream_identities`).
fn stripped(mut d: Decoded) -> Decoded {
    d.event_id = None;
    d
}

fn decode_all(source: &str, fixture_name: &str) -> Vec<Decoded> {
    let c = consumer(source);
    fixture_events(fixture_name)
        .iter()
        .enumerate()
        .map(|(i, ev)| {
            c.decode(ev)
                .unwrap_or_else(|r| panic!("{fixture_name}:{}: rejected: {r}", i + 1))
        })
        .map(stripped)
        .collect()
}

#[test]
fn fixture_events_carry_unique_upstream_identities() {
    for (source, fixture) in [
        ("transfers-debezium", "debezium_pg.jsonl"),
        ("entries-debezium", "debezium_mongo.jsonl"),
        ("entries-change-stream", "mongo_change_stream.jsonl"),
    ] {
        let c = consumer(source);
        let ids: Vec<String> = fixture_events(fixture)
            .iter()
            .map(|ev| {
                c.decode(ev)
                    .unwrap()
                    .event_id
                    .unwrap_or_else(|| panic!("{fixture}: no identity"))
            })
            .collect();
        let unique: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(
            unique.len(),
            ids.len(),
            "{fixture}: identities are unique: {ids:?}"
        );
    }
}

const OID: &str = "65e1f1c0a1b2c3d4e5f6";

fn oid(n: u32) -> String {
    format!("{OID}{n:04}")
}

#[test]
fn debezium_postgres_fixture() {
    let t = "payments.transfers";
    let got = decode_all("transfers-debezium", "debezium_pg.jsonl");
    let want = vec![
        // snapshot read, {schema, payload} wrapper
        decoded(
            t,
            "t-1000",
            Op::Create,
            1_709_294_000_000_000,
            &[("account_id", "acc-1")],
        ),
        decoded(
            t,
            "t-1001",
            Op::Create,
            1_709_294_400_000_123,
            &[("account_id", "acc-1")],
        ),
        decoded(
            t,
            "t-1001",
            Op::Update,
            1_709_294_401_000_456,
            &[("account_id", "acc-1")],
        ),
        decoded(
            t,
            "t-1002",
            Op::Create,
            1_709_294_402_000_000,
            &[("account_id", "acc-2")],
        ),
        // an older connector: source.ts_ms only
        decoded(
            t,
            "t-1002",
            Op::Update,
            1_709_294_403_000_000,
            &[("account_id", "acc-2")],
        ),
        // delete: the before image, whose other columns are null
        decoded(t, "t-1002", Op::Delete, 1_709_294_404_000_007, &[]),
    ];
    assert_eq!(got, want);
}

#[test]
fn debezium_mongo_fixture() {
    let e = "ledger.entries";
    let got = decode_all("entries-debezium", "debezium_mongo.jsonl");
    let t1 = [("transfer_id", "t-1001")];
    let t2 = [("transfer_id", "t-1002")];
    let want = vec![
        decoded(
            e,
            &oid(1000),
            Op::Create,
            1_709_294_010_000_000,
            &[("transfer_id", "t-1000")],
        ),
        decoded(
            e,
            &oid(1001),
            Op::Create,
            1_709_294_010_000_000,
            &[("transfer_id", "t-1000")],
        ),
        decoded(e, &oid(2001), Op::Create, 1_709_294_400_000_000, &t1),
        decoded(e, &oid(2002), Op::Create, 1_709_294_400_000_000, &t1),
        // change-stream capture mode: after + updateDescription.updatedFields
        decoded(e, &oid(2002), Op::Update, 1_709_294_401_000_000, &t1),
        // oplog capture mode: patch ($set memo) + filter: no reference in what it wrote
        decoded(e, &oid(2001), Op::Update, 1_709_294_401_000_000, &[]),
        decoded(e, &oid(3001), Op::Create, 1_709_294_402_000_000, &t2),
        decoded(e, &oid(3002), Op::Create, 1_709_294_402_000_000, &t2),
        decoded(e, &oid(3001), Op::Delete, 1_709_294_404_000_000, &t2),
        decoded(e, &oid(3002), Op::Delete, 1_709_294_404_000_000, &[]),
    ];
    assert_eq!(got, want);
}

fn change_stream_expected() -> Vec<Decoded> {
    let e = "ledger.entries";
    let t1 = [("transfer_id", "t-1001")];
    vec![
        decoded(e, &oid(4001), Op::Create, 1_709_294_400_120_000, &t1),
        // canonical extended JSON
        decoded(e, &oid(4002), Op::Create, 1_709_294_400_121_000, &t1),
        decoded(e, &oid(4002), Op::Update, 1_709_294_401_500_000, &t1),
        // no fullDocument: the reference comes from updatedFields
        decoded(e, &oid(4001), Op::Update, 1_709_294_401_600_000, &t1),
        decoded(e, &oid(4001), Op::Replace, 1_709_294_402_250_000, &t1),
        decoded(
            e,
            &oid(4003),
            Op::Create,
            1_709_294_402_300_000,
            &[("transfer_id", "t-1002")],
        ),
        // clusterTime only
        decoded(e, &oid(4003), Op::Delete, 1_709_294_404_000_000, &[]),
    ]
}

#[test]
fn mongo_change_stream_fixture() {
    let got = decode_all("entries-change-stream", "mongo_change_stream.jsonl");
    assert_eq!(got, change_stream_expected());
}

fn bson_event(d: &bson::Document, position: usize) -> SourceEvent {
    let mut raw = Vec::new();
    d.to_writer(&mut raw).expect("BSON encodes");
    event(raw, position)
}

/// The change-stream fixture again, as the server sends it: raw BSON with real ObjectIds,
/// Timestamps, DateTimes and Int64s.
#[test]
fn mongo_change_stream_as_bson() {
    let o = |n: u32| ObjectId::parse_str(oid(n)).expect("hex oid");
    let ts = |t: u32, i: u32| {
        Bson::Timestamp(bson::Timestamp {
            time: t,
            increment: i,
        })
    };
    let wall = |ms: i64| bson::DateTime::from_millis(ms);
    let ns = doc! {"db": "ledger", "coll": "entries"};
    let entry = |n: u32, transfer: &str, acct: &str, dir: &str, minor: i64| {
        doc! {"_id": o(n), "transfer_id": transfer, "account_id": acct, "asset": "BTC",
        "direction": dir, "amount_minor": minor, "decimals": 8_i32}
    };
    let token = |s: &str| doc! {"_data": s};
    let t0: u32 = 1_709_294_400;
    let events = [
        doc! {"_id": token("82A"), "operationType": "insert", "clusterTime": ts(t0, 1),
        "wallTime": wall(1_709_294_400_120), "ns": ns.clone(), "documentKey": {"_id": o(4001)},
        "fullDocument": entry(4001, "t-1001", "acc-1", "debit", 50_000_000)},
        doc! {"_id": token("82B"), "operationType": "insert", "clusterTime": ts(t0, 2),
        "wallTime": wall(1_709_294_400_121), "ns": ns.clone(), "documentKey": {"_id": o(4002)},
        "fullDocument": entry(4002, "t-1001", "acc-2", "credit", 50_000_000)},
        doc! {"_id": token("82C"), "operationType": "update", "clusterTime": ts(t0 + 1, 1),
        "wallTime": wall(1_709_294_401_500), "ns": ns.clone(), "documentKey": {"_id": o(4002)},
        "updateDescription": {"updatedFields": {"memo": "settled"}, "removedFields": [], "truncatedArrays": []},
        "fullDocument": entry(4002, "t-1001", "acc-2", "credit", 50_000_000)},
        doc! {"_id": token("82D"), "operationType": "update", "clusterTime": ts(t0 + 1, 2),
        "wallTime": wall(1_709_294_401_600), "ns": ns.clone(), "documentKey": {"_id": o(4001)},
        "updateDescription": {"updatedFields": {"transfer_id": "t-1001", "audit.checked": true},
            "removedFields": ["memo"]}},
        doc! {"_id": token("82E"), "operationType": "replace", "clusterTime": ts(t0 + 2, 1),
        "wallTime": wall(1_709_294_402_250), "ns": ns.clone(), "documentKey": {"_id": o(4001)},
        "fullDocument": entry(4001, "t-1001", "acc-1", "debit", 50_000_000)},
        doc! {"_id": token("82F"), "operationType": "insert", "clusterTime": ts(t0 + 2, 2),
        "wallTime": wall(1_709_294_402_300), "ns": ns.clone(), "documentKey": {"_id": o(4003)},
        "fullDocument": entry(4003, "t-1002", "acc-2", "debit", 100_000_000)},
        doc! {"_id": token("830"), "operationType": "delete", "clusterTime": ts(t0 + 4, 1),
        "ns": ns.clone(), "documentKey": {"_id": o(4003)}},
    ];
    let c = consumer("entries-bson");
    assert_eq!(c.format(), Format::MongoChangeStreamBson);
    let got: Vec<Decoded> = events
        .iter()
        .enumerate()
        .map(|(i, d)| c.decode(&bson_event(d, i)).expect("BSON event decodes"))
        .collect();
    assert_eq!(
        got[0].event_id.as_deref(),
        Some("rt:82A"),
        "the resume token is the identity"
    );
    let got: Vec<Decoded> = got.into_iter().map(stripped).collect();
    assert_eq!(got, change_stream_expected());

    let r = c.decode(&event(&b"\x05\x00\x00"[..], 0)).unwrap_err();
    assert!(r.0.starts_with("invalid BSON: "), "{r}");
}

/// The Toy pair of the Overseer post: `{_id, fullDocument, clusterTime}` then `{_id,
/// updateDescription, clusterTime}`: no operationType, documentKey or ns. The op is inferred
/// (fullDocument → create, updateDescription → update), the id is the top-level `_id`, the
/// model the source's, the time `clusterTime` seconds.
#[test]
fn overseer_toy_example() {
    let c = consumer("toys");
    let first = r#"{"_id": 1, "fullDocument": {"type": "watergun", "color": "blue"}, "clusterTime": 1658224073}"#;
    let second = r#"{"_id": 1, "updateDescription": {"updatedFields": {"type": "balloon"}}, "clusterTime": 1658224074}"#;
    assert_eq!(
        stripped(c.decode(&event(first, 1)).unwrap()),
        decoded(
            "toys.toys",
            "1",
            Op::Create,
            1_658_224_073_000_000,
            &[("kind", "watergun")]
        )
    );
    assert_eq!(
        stripped(c.decode(&event(second, 2)).unwrap()),
        decoded(
            "toys.toys",
            "1",
            Op::Update,
            1_658_224_074_000_000,
            &[("kind", "balloon")]
        )
    );
}

/// Ids never go through a float: integers past 64 bits and decimals past a double's
/// precision keep their exact text (two such accounts would otherwise become one record);
/// a number a double holds exactly reads as that number (`1.10` is `1.1`, as a
/// PostgreSQL numeric key compares).
#[test]
fn numeric_ids_keep_their_exact_text() {
    let c = consumer("toys");
    let id = |id: &str, position| {
        let raw = format!(
            r#"{{"_id": {id}, "fullDocument": {{"type": "watergun"}}, "clusterTime": 1658224073}}"#
        );
        c.decode(&event(raw, position))
            .unwrap_or_else(|r| panic!("_id {id}: rejected: {r}"))
            .record_id
    };
    let cases = [
        ("18446744073709551616", "18446744073709551616"),
        ("18446744073709551617", "18446744073709551617"),
        ("18446744073709551615", "18446744073709551615"),
        ("-9223372036854775809", "-9223372036854775809"),
        (
            "123456789012345678901234567890",
            "123456789012345678901234567890",
        ),
        ("12345678901234567.1", "12345678901234567.1"),
        ("12345678901234567.2", "12345678901234567.2"),
        ("1.10", "1.1"),
        ("1e3", "1000.0"),
        ("42", "42"),
    ];
    for (i, (given, want)) in cases.iter().enumerate() {
        assert_eq!(id(given, i + 1), *want, "_id {given}");
    }
    // A reference value too: a transfer naming a huge account id joins to that account.
    let raw =
        r#"{"_id": 7, "fullDocument": {"type": 18446744073709551617}, "clusterTime": 1658224073}"#;
    assert_eq!(
        stripped(c.decode(&event(raw, 99)).unwrap()).refs,
        vec![("kind".to_owned(), "18446744073709551617".to_owned())]
    );
}

/// A delete from Kafka: the value has only the primary key in `before`, the key carries it
/// too, and the tombstone that follows is quarantined with its reason.
#[test]
fn debezium_delete_then_tombstone_with_kafka_keys() {
    let c = consumer("transfers-debezium");
    let key = r#"{"schema":{"type":"struct","fields":[{"type":"string","optional":false,"field":"id"}],"optional":false,"name":"payments.payments.transfers.Key"},"payload":{"id":"t-1003"}}"#;
    let value = r#"{"before":null,"after":null,"source":{"version":"2.7.3.Final","connector":"postgresql","name":"payments","ts_ms":1709294405000,"ts_us":1709294405000001,"snapshot":"false","db":"payments","schema":"payments","table":"transfers","txId":560,"lsn":24025000,"xmin":null},"op":"d","ts_ms":1709294405300}"#;
    let mut del = event(value, 1);
    del.key = Some(Bytes::from_static(key.as_bytes()));
    assert_eq!(
        stripped(c.decode(&del).unwrap()),
        decoded(
            "payments.transfers",
            "t-1003",
            Op::Delete,
            1_709_294_405_000_001,
            &[]
        )
    );
    let mut tomb = event(Bytes::new(), 2);
    tomb.key = del.key.clone();
    assert!(c.decode(&tomb).unwrap_err().0.starts_with("tombstone"));
}

/// `| N | what | `` reason `` |` rows of the malformed table in fixtures/README.md.
fn expected_malformed_reasons() -> Vec<(usize, String)> {
    let readme = std::fs::read_to_string(fixture("README.md")).expect("README readable");
    let section = readme
        .split("## malformed.jsonl")
        .nth(1)
        .expect("README has a malformed.jsonl section");
    section
        .lines()
        .take_while(|l| !l.starts_with("## "))
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let n = cells.get(1)?.parse::<usize>().ok()?;
            let start = l.find("`` ")? + 3;
            let end = l.rfind(" ``")?;
            Some((n, l.get(start..end)?.to_owned()))
        })
        .collect()
}

#[test]
fn malformed_corpus_matches_the_readme() {
    let c = consumer("entries-change-stream");
    let events = fixture_events("malformed.jsonl");
    let expected = expected_malformed_reasons();
    assert_eq!(
        expected.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        (1..=events.len()).collect::<Vec<_>>(),
        "README lists every malformed line, in order"
    );
    for (ev, (n, want)) in events.iter().zip(&expected) {
        let got = match c.decode(ev) {
            Ok(d) => panic!("malformed.jsonl:{n} decoded: {d:?}"),
            Err(r) => r.0,
        };
        assert!(
            got.starts_with(want.as_str()),
            "malformed.jsonl:{n}: reason {got:?} does not start with {want:?}"
        );
    }
    // The BSON reader rejects the same lines too (they are not BSON at all).
    let b = consumer("entries-bson");
    for ev in &events {
        assert!(b.decode(ev).unwrap_err().0.starts_with("invalid BSON"));
    }
}

/// A protobuf outbox message through `format::build`, the descriptor compiled with protox.
#[test]
fn protobuf_through_build() {
    use prost_reflect::prost::Message as _;
    use prost_reflect::{DescriptorPool, DynamicMessage};

    let dir = tempfile::tempdir().unwrap();
    let fds = protox::compile(["transfer_event.proto"], [fixture("")]).unwrap();
    let ds = dir.path().join("payments.binpb");
    std::fs::write(&ds, fds.encode_to_vec()).unwrap();
    let toml = format!(
        "{CONFIG}\n[[sources]]\nname = \"outbox\"\nformat = \"protobuf\"\nmodel = \"payments.transfers\"\n\
         [sources.file]\npath = \"outbox.bin\"\n[sources.protobuf]\ndescriptor_set = {:?}\n\
         message = \"payments.v1.TransferEvent\"\ntime_field = \"committed_at\"\nop_field = \"kind\"\n\
         record_field = \"transfer\"\n",
        ds.display().to_string()
    );
    let cfg: Config = toml::from_str(&toml).unwrap();
    cfg.validate().unwrap();
    let src = cfg.sources.iter().find(|s| s.name == "outbox").unwrap();
    let c = format::build(src, &cfg).unwrap();
    assert_eq!(c.format(), Format::Protobuf);

    let pool = DescriptorPool::decode(fds.encode_to_vec().as_slice()).unwrap();
    let desc = pool
        .get_message_by_name("payments.v1.TransferEvent")
        .unwrap();
    let json = r#"{"committedAt": "2024-03-01T12:00:01.000456Z", "kind": "CHANGE_KIND_UPDATE",
        "transfer": {"id": "t-1001", "accountId": "acc-1", "asset": "BTC", "amount": "0.50000000", "status": "completed"}}"#;
    let mut de = serde_json::Deserializer::from_str(json);
    let raw = DynamicMessage::deserialize(desc, &mut de)
        .unwrap()
        .encode_to_vec();
    assert_eq!(
        stripped(c.decode(&event(raw, 1)).unwrap()),
        decoded(
            "payments.transfers",
            "t-1001",
            Op::Update,
            1_709_294_401_000_456,
            &[("account_id", "acc-1")]
        )
    );
    assert!(
        c.decode(&event(&b"\x0a\xff"[..], 2))
            .unwrap_err()
            .0
            .starts_with("invalid protobuf")
    );

    // A descriptor that is not there is a config error naming the key.
    let mut bad = src.clone();
    if let Some(p) = bad.protobuf.as_mut() {
        p.descriptor_set = dir.path().join("missing.binpb");
    }
    let e = format::build(&bad, &cfg).unwrap_err().to_string();
    assert!(e.contains("[sources.protobuf] descriptor_set"), "{e}");
}

// ---------------------------------------------------------------------------------------
// Protobuf events, from the consumer to the record's state (`format::builders`).

/// `CONFIG` plus two protobuf sources over tests/fixtures/transfer_event.proto: an outbox
/// of `TransferEvent`s (the record in `transfer`), and bare `Transfer` rows (the whole
/// message is the record, the op in its `op` string).
fn protobuf_config(ds: &Path) -> Config {
    let toml = format!(
        "{CONFIG}
[[sources]]
name = \"outbox\"
format = \"protobuf\"
model = \"payments.transfers\"
[sources.file]
path = \"outbox.bin\"
[sources.protobuf]
descriptor_set = {ds:?}
message = \"payments.v1.TransferEvent\"
time_field = \"committed_at\"
op_field = \"kind\"
record_field = \"transfer\"

[[sources]]
name = \"transfer-rows\"
format = \"protobuf\"
model = \"payments.transfers\"
[sources.file]
path = \"rows.bin\"
[sources.protobuf]
descriptor_set = {ds:?}
message = \"payments.v1.Transfer\"
time_field = \"updated_at_ms\"
op_field = \"op\"
",
        ds = ds.display().to_string()
    );
    let cfg: Config = toml::from_str(&toml).unwrap();
    cfg.validate().unwrap();
    cfg
}

/// Compiles transfer_event.proto into a descriptor set file in `dir`.
fn protobuf_descriptor_set(dir: &Path) -> (PathBuf, prost_reflect::DescriptorPool) {
    use prost_reflect::prost::Message as _;
    let fds = protox::compile(["transfer_event.proto"], [fixture("")]).unwrap();
    let ds = dir.join("payments.binpb");
    std::fs::write(&ds, fds.encode_to_vec()).unwrap();
    let pool = prost_reflect::DescriptorPool::decode(fds.encode_to_vec().as_slice()).unwrap();
    (ds, pool)
}

/// Stores protobuf events (given as proto3 JSON of `message`) of `source` the way the
/// pipeline does: each accepted by the source's consumer, its raw bytes kept as received.
fn protobuf_records(
    cfg: &Config,
    pool: &prost_reflect::DescriptorPool,
    source: &str,
    message: &str,
    events: &[&str],
) -> Vec<UpdateRecord> {
    use prost_reflect::prost::Message as _;
    let src = cfg.sources.iter().find(|s| s.name == source).unwrap();
    let c = format::build(src, cfg).unwrap();
    let desc = pool.get_message_by_name(message).unwrap();
    events
        .iter()
        .enumerate()
        .map(|(i, json)| {
            let mut de = serde_json::Deserializer::from_str(json);
            let raw = prost_reflect::DynamicMessage::deserialize(desc.clone(), &mut de)
                .unwrap()
                .encode_to_vec();
            let ev = event(raw, i + 1);
            let d = c
                .decode(&ev)
                .unwrap_or_else(|r| panic!("{source} event {}: rejected: {r}", i + 1));
            UpdateRecord {
                source: source.into(),
                position: d.event_id.unwrap_or(ev.position),
                model: d.model,
                record_id: d.record_id,
                op: d.op as i32,
                event_time_us: d.event_time_us,
                format: c.format().name().into(),
                refs: d
                    .refs
                    .into_iter()
                    .map(|(name, value)| Reference { name, value })
                    .collect(),
                raw: ev.raw,
                ..Default::default()
            }
        })
        .collect()
}

fn state(v: serde_json::Value) -> Option<State> {
    match v {
        serde_json::Value::Object(m) => Some(m),
        other => panic!("not a document: {other}"),
    }
}

/// The states after each of a record's updates.
fn states(b: &Builders, records: &[UpdateRecord]) -> Vec<Option<State>> {
    (1..=records.len())
        .map(|n| b.fold(&records[..n]).unwrap())
        .collect()
}

#[test]
fn protobuf_events_fold_into_their_record() {
    let dir = tempfile::tempdir().unwrap();
    let (ds, pool) = protobuf_descriptor_set(dir.path());
    let cfg = protobuf_config(&ds);
    let b = format::builders(&cfg).unwrap();
    assert!(b.protobuf("outbox").is_some() && b.protobuf("transfer-rows").is_some());
    assert!(b.protobuf("transfers-debezium").is_none());

    // The outbox: the record is the `transfer` sub-message; each event a full image.
    let recs = protobuf_records(
        &cfg,
        &pool,
        "outbox",
        "payments.v1.TransferEvent",
        &[
            r#"{"committedAt": "2024-03-01T12:00:00Z", "kind": "CHANGE_KIND_CREATE",
                "transfer": {"id": "t-1001", "accountId": "acc-1", "asset": "BTC", "amount": "0.5",
                             "updatedAtMs": "1709294400000"},
                "meta": {"ts": "2024-03-01T12:00:00Z"}}"#,
            r#"{"committedAt": "2024-03-01T12:00:01Z", "kind": "CHANGE_KIND_UPDATE",
                "transfer": {"id": "t-1001", "accountId": "acc-2", "status": "completed"}}"#,
            r#"{"committedAt": "2024-03-01T12:00:02Z", "kind": "CHANGE_KIND_DELETE",
                "transfer": {"id": "t-1001"}}"#,
            r#"{"committedAt": "2024-03-01T12:00:03Z",
                "transfer": {"id": "t-1001", "amount": "1"}}"#,
        ],
    );
    let ops: Vec<Op> = recs.iter().map(|r| r.op()).collect();
    assert_eq!(ops, [Op::Create, Op::Update, Op::Delete, Op::Update]);
    assert!(recs.iter().all(|r| r.record_id == "t-1001"));
    assert_eq!(
        states(&b, &recs),
        [
            // .proto field names; the int64 a number, not a string; the envelope left out.
            state(
                serde_json::json!({"id": "t-1001", "account_id": "acc-1", "asset": "BTC",
                "amount": "0.5", "updated_at_ms": 1_709_294_400_000_i64})
            ),
            // Replaced, not merged: asset, amount and updated_at_ms are gone.
            state(
                serde_json::json!({"id": "t-1001", "account_id": "acc-2", "status": "completed"})
            ),
            // A delete ends the record...
            None,
            // ...and a later image (no op: an update of the full record) begins it again.
            state(serde_json::json!({"id": "t-1001", "amount": "1"})),
        ]
    );
    // The references indexed are read from the record the state is built from.
    assert_eq!(
        recs[1].refs,
        [Reference {
            name: "account_id".into(),
            value: "acc-2".into()
        }]
    );

    // Bare rows: the whole message is the record, its op field included.
    let recs = protobuf_records(
        &cfg,
        &pool,
        "transfer-rows",
        "payments.v1.Transfer",
        &[
            r#"{"id": "t-7", "accountId": "acc-9", "updatedAtMs": "1709294400123", "op": "c"}"#,
            r#"{"id": "t-7", "accountId": "acc-9", "updatedAtMs": "9007199254740993", "op": "u",
                "status": "settled"}"#,
            r#"{"id": "t-7", "updatedAtMs": "9007199254740994", "op": "d"}"#,
        ],
    );
    assert_eq!(
        states(&b, &recs),
        [
            state(serde_json::json!({"id": "t-7", "account_id": "acc-9",
                "updated_at_ms": 1_709_294_400_123_i64, "op": "c"})),
            // Beyond 2^53: still exact.
            state(serde_json::json!({"id": "t-7", "account_id": "acc-9",
                "updated_at_ms": 9_007_199_254_740_993_i64, "op": "u", "status": "settled"})),
            None,
        ]
    );
    assert_eq!(recs[1].event_time_us, 9_007_199_254_740_993_000);
}

#[test]
fn protobuf_without_a_builder_is_unsupported() {
    let dir = tempfile::tempdir().unwrap();
    let (ds, pool) = protobuf_descriptor_set(dir.path());
    let cfg = protobuf_config(&ds);
    let recs = protobuf_records(
        &cfg,
        &pool,
        "outbox",
        "payments.v1.TransferEvent",
        &[r#"{"committedAt": "2024-03-01T12:00:00Z", "transfer": {"id": "t-1"}}"#],
    );
    // A config without the outbox: its updates have no descriptor to be read with.
    let without = format::builders(&config()).unwrap();
    assert!(without.protobuf("outbox").is_none());
    for e in [
        without.fold(&recs).unwrap_err(),
        overseer_dal::builder::fold(&recs).unwrap_err(),
    ] {
        assert!(matches!(e, BuildError::Unsupported { .. }), "{e}");
        assert_eq!(e.update().to_string(), "outbox@00000001");
        assert!(
            e.reason()
                .starts_with("source \"outbox\" has no protobuf descriptor configured"),
            "{e}"
        );
    }
    // With it, the same update builds.
    let with = format::builders(&cfg).unwrap();
    assert_eq!(
        with.fold(&recs),
        Ok(state(serde_json::json!({"id": "t-1"})))
    );
}

#[test]
fn protobuf_builder_errors_name_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let (ds, _) = protobuf_descriptor_set(dir.path());
    let err = |edit: &dyn Fn(&mut overseer_ingestion::config::ProtobufFormatConfig)| {
        let mut cfg = protobuf_config(&ds);
        let src = cfg.sources.iter_mut().find(|s| s.name == "outbox").unwrap();
        edit(src.protobuf.as_mut().unwrap());
        format::builders(&cfg).unwrap_err().to_string()
    };
    let e = err(&|p| p.descriptor_set = dir.path().join("missing.binpb"));
    assert!(
        e.starts_with("config: sources \"outbox\": [sources.protobuf] descriptor_set ")
            && e.contains("cannot read it"),
        "{e}"
    );
    let e = err(&|p| p.message = "payments.v1.Nope".into());
    assert!(
        e.starts_with(
            "config: sources \"outbox\": [sources.protobuf] message \"payments.v1.Nope\" is not in the descriptor set"
        ),
        "{e}"
    );
    let e = err(&|p| p.record_field = Some("meta.nope".into()));
    assert!(
        e.starts_with(
            "config: sources \"outbox\": [sources.protobuf] record_field \"meta.nope\": message payments.v1.Meta has no field \"nope\""
        ),
        "{e}"
    );
    let e = err(&|p| p.record_field = Some("committed_at.seconds".into()));
    assert!(
        e.contains("record_field \"committed_at.seconds\": must be a (singular) message"),
        "{e}"
    );
}

/// Mutates `seed` in place: a few byte flips, deletions, insertions, duplications or a
/// cut, from the xorshift state `x`.
fn mutate(seed: &[u8], x: &mut u64) -> Vec<u8> {
    let mut next = || {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    };
    let mut doc = seed.to_vec();
    for _ in 0..(next() % 4 + 1) {
        let at = (next() as usize) % (doc.len() + 1);
        match next() % 5 {
            0 if at < doc.len() => doc[at] = next() as u8,
            1 if at < doc.len() => {
                doc.remove(at);
            }
            2 => doc.insert(at, next() as u8),
            3 => {
                let end = (at + (next() as usize) % 16).min(doc.len());
                let piece = doc[at..end].to_vec();
                doc.splice(at..at, piece);
            }
            _ => doc.truncate(at),
        }
    }
    doc
}

/// Arbitrary bytes near real events, through every JSON and BSON consumer and the builder
/// that folds the format: each is decoded or refused with a reason, never a panic
/// (40,000 mutated events from a fixed seed).
#[test]
fn mutated_events_are_decoded_or_refused_never_a_panic() {
    let lines = |name: &str| -> Vec<Vec<u8>> {
        std::fs::read_to_string(fixture(name))
            .unwrap()
            .lines()
            .map(|l| l.as_bytes().to_vec())
            .collect()
    };
    let bson_seeds: Vec<Vec<u8>> = [
        doc! {"_id": {"_data": "82A"}, "operationType": "insert",
            "clusterTime": bson::Timestamp { time: 1_709_294_400, increment: 1 },
            "ns": {"db": "ledger", "coll": "entries"}, "documentKey": {"_id": 4001},
            "fullDocument": {"_id": 4001, "transfer_id": "t-1", "amount": 5_i64, "tags": ["a", "b"]}},
        doc! {"_id": {"_data": "82B"}, "operationType": "update",
            "clusterTime": bson::Timestamp { time: 1_709_294_401, increment: 1 },
            "ns": {"db": "ledger", "coll": "entries"}, "documentKey": {"_id": 4001},
            "updateDescription": {"updatedFields": {"amount": 7.5, "a.b.0": 1}, "removedFields": ["tags"]}},
    ]
    .iter()
    .map(|d| d.to_vec().unwrap())
    .collect();
    let cases: [(&str, &str, Vec<Vec<u8>>); 4] = [
        (
            "transfers-debezium",
            overseer_dal::builder::formats::DEBEZIUM_POSTGRES,
            lines("debezium_pg.jsonl"),
        ),
        (
            "entries-debezium",
            overseer_dal::builder::formats::DEBEZIUM_MONGO,
            lines("debezium_mongo.jsonl"),
        ),
        (
            "entries-change-stream",
            overseer_dal::builder::formats::MONGO_CHANGE_STREAM,
            lines("mongo_change_stream.jsonl"),
        ),
        (
            "entries-bson",
            overseer_dal::builder::formats::MONGO_CHANGE_STREAM_BSON,
            bson_seeds,
        ),
    ];
    let builders = Builders::new();
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let (mut decoded, mut refused) = (0, 0);
    for (source, format, seeds) in &cases {
        let c = consumer(source);
        for i in 0..10_000 {
            let raw = mutate(&seeds[i % seeds.len()], &mut x);
            match c.decode(&event(raw.clone(), i)) {
                Ok(_) => decoded += 1,
                Err(reason) => {
                    assert!(!reason.0.is_empty(), "{source}: a refusal says why");
                    refused += 1;
                }
            }
            let rec = UpdateRecord {
                source: (*source).into(),
                position: i.to_string(),
                format: (*format).into(),
                raw: raw.into(),
                ..Default::default()
            };
            let _ = builders.fold([&rec]);
        }
    }
    assert_eq!(decoded + refused, 40_000);
    assert!(
        decoded > 0 && refused > 0,
        "{decoded} decoded, {refused} refused"
    );
}

/// The same for protobuf: mutated outbox messages through the consumer and the source's
/// builder (10,000 from a fixed seed), decoded or refused, never a panic.
#[test]
fn mutated_protobuf_events_are_decoded_or_refused_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (ds, pool) = protobuf_descriptor_set(dir.path());
    let cfg = protobuf_config(&ds);
    let b = format::builders(&cfg).unwrap();
    let seeds = protobuf_records(
        &cfg,
        &pool,
        "outbox",
        "payments.v1.TransferEvent",
        &[
            r#"{"committedAt": "2024-03-01T12:00:00Z", "kind": "CHANGE_KIND_CREATE",
                "transfer": {"id": "t-1001", "accountId": "acc-1", "asset": "BTC", "amount": "0.5",
                             "updatedAtMs": "1709294400000"},
                "meta": {"ts": "2024-03-01T12:00:00Z"}}"#,
            r#"{"committedAt": "2024-03-01T12:00:02Z", "kind": "CHANGE_KIND_DELETE",
                "transfer": {"id": "t-1001"}}"#,
        ],
    );
    let src = cfg.sources.iter().find(|s| s.name == "outbox").unwrap();
    let c = format::build(src, &cfg).unwrap();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let (mut decoded, mut refused) = (0, 0);
    for i in 0..10_000 {
        let seed = &seeds[i % seeds.len()];
        let raw = mutate(&seed.raw, &mut x);
        match c.decode(&event(raw.clone(), i)) {
            Ok(_) => decoded += 1,
            Err(reason) => {
                assert!(!reason.0.is_empty());
                refused += 1;
            }
        }
        let rec = UpdateRecord {
            raw: raw.into(),
            ..seed.clone()
        };
        let _ = b.fold([&rec]);
    }
    assert!(
        decoded > 0 && refused > 0,
        "{decoded} decoded, {refused} refused"
    );
}
