//! The ingestion pipeline end to end on the embedded backends (local directory store,
//! embedded catalog, in-process bus): redelivery, quarantine, hostile ids, crash recovery
//! of the segment ledger, resume from checkpoints, and reindex equivalence.

use overseer_dal::catalog::prelude::*;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use overseer_dal::bus::Bus;
use overseer_dal::bus::memory::MemoryBus;
use overseer_dal::catalog::embedded::EmbeddedCatalog;
use overseer_dal::keys::segment_key;
use overseer_dal::segment::SegmentBuilder;
use overseer_dal::store::local::LocalStore;
use overseer_dal::store::{ObjectStore, list_all};
use overseer_dal::update::{Op, UpdateRecord, now_us};
use overseer_ingestion::config::Config;
use overseer_ingestion::pipeline::{Ingestor, Storage};
use overseer_ingestion::source::{
    AckToken, Evidence, Source, SourceContext, SourceEvent, SourceMsg,
};
use overseer_testkit::conformance;

fn config(dir: &Path, file: &Path, extra: &str) -> Config {
    let text = format!(
        r#"
[store]
kind = "local"
path = "{d}/objects"
[catalog]
kind = "embedded"
path = "{d}/catalog.redb"
[ingest]
batch_max_events = 100
batch_max_ms = 5
max_event_bytes = 4096
{extra}
[[models]]
name = "ledger.entries"
id_field = "_id"
references = {{ transfer_id = "transfer_id" }}

[[sources]]
name = "ledger"
format = "mongo-change-stream"
[sources.file]
path = "{f}"
"#,
        d = dir.display(),
        f = file.display()
    );
    let c: Config = toml::from_str(&text).unwrap();
    c.validate().unwrap();
    c
}

fn insert_event(id: &str, transfer: &str, t_secs: i64) -> String {
    serde_json::json!({
        "_id": {"_data": format!("tok-{id}-{t_secs}")},
        "operationType": "insert",
        "ns": {"db": "ledger", "coll": "entries"},
        "documentKey": {"_id": id},
        "clusterTime": {"$timestamp": {"t": t_secs, "i": 1}},
        "fullDocument": {"_id": id, "transfer_id": transfer, "amount_minor": {"$numberLong": "1004"}}
    })
    .to_string()
}

fn write_lines(path: &Path, lines: &[String], append: bool) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(append)
        .write(true)
        .truncate(!append)
        .open(path)
        .unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
}

async fn ingest_once(
    cfg: &Config,
) -> std::collections::BTreeMap<String, overseer_ingestion::pipeline::SourceReport> {
    let storage = Storage::open(cfg).await.unwrap();
    overseer_ingestion::service::run(cfg, storage, true, CancellationToken::new())
        .await
        .unwrap()
}

#[tokio::test]
async fn file_ingest_resumes_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ledger.jsonl");
    let first: Vec<_> = (0..250)
        .map(|i| insert_event(&format!("e{i}"), "t1", 1000 + i))
        .collect();
    write_lines(&file, &first, false);
    let cfg = config(dir.path(), &file, "");
    let r = ingest_once(&cfg).await;
    assert_eq!(r["ledger"].updates, 250);
    assert!(r["ledger"].segments >= 3, "batches of at most 100 events");

    // more events arrive; a restart reads only those
    let more: Vec<_> = (250..300)
        .map(|i| insert_event(&format!("e{i}"), "t2", 1000 + i))
        .collect();
    write_lines(&file, &more, true);
    let r = ingest_once(&cfg).await;
    assert_eq!(
        (r["ledger"].events, r["ledger"].updates),
        (50, 50),
        "resumed after the checkpoint"
    );

    let cat = EmbeddedCatalog::open(dir.path().join("catalog.redb")).unwrap();
    let h = cat
        .record_updates("ledger.entries", "e7", i64::MAX)
        .await
        .unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].event_time_us, 1007 * 1_000_000);
    assert_eq!(h[0].op, Op::Create);
    assert_eq!(
        cat.records_by_ref("ledger.entries", "transfer_id", "t2")
            .await
            .unwrap()
            .len(),
        50
    );
    let state = &cat.source_states().await.unwrap()[0];
    assert_eq!(
        state.checkpoint,
        std::fs::metadata(&file).unwrap().len().to_string()
    );
}

/// A source that sends a fixed list of events, `times` times over (redelivery).
struct Replaying {
    events: Vec<SourceEvent>,
    times: usize,
}

#[async_trait]
impl Source for Replaying {
    async fn run(self: Box<Self>, ctx: SourceContext) -> overseer_ingestion::Result<()> {
        for _ in 0..self.times {
            for e in &self.events {
                ctx.tx.send(SourceMsg::Event(e.clone())).await.unwrap();
            }
        }
        Ok(())
    }
}

fn events(n: usize) -> Vec<SourceEvent> {
    (0..n)
        .map(|i| SourceEvent {
            raw: Bytes::from(insert_event(
                &format!("r{i}"),
                &format!("t{}", i % 10),
                5000 + i as i64,
            )),
            key: None,
            context: None,
            position: format!("{i:08}"),
            commit_time_us: None,
            ack: Some(AckToken::Offset(i as u64 + 1)),
            checkpoint: Some((i + 1).to_string()),
            lane: 0,
        })
        .collect()
}

#[tokio::test]
async fn redelivery_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("unused.jsonl");
    let cfg = config(dir.path(), &file, "");
    let storage = Storage::open(&cfg).await.unwrap();
    let ing = Ingestor::new(storage.clone(), cfg.ingest.clone());
    let consumer = overseer_ingestion::format::build(&cfg.sources[0], &cfg).unwrap();
    let mut sub = storage.bus.subscribe("test").await.unwrap();

    // the same 300 events delivered three times over, in one run
    let src = Box::new(Replaying {
        events: events(300),
        times: 3,
    });
    let r = ing
        .run_source(
            &cfg.sources[0],
            consumer.clone(),
            src,
            CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!((r.events, r.updates, r.duplicates), (900, 300, 600));
    let dump = storage.catalog.dump().await.unwrap();
    let objects = list_all(&*storage.store, "").await.unwrap();

    // and again in a later run: nothing changes, not even the object store
    let src = Box::new(Replaying {
        events: events(300),
        times: 1,
    });
    let r = ing
        .run_source(&cfg.sources[0], consumer, src, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!((r.updates, r.duplicates, r.segments), (0, 300, 0));
    assert_eq!(
        storage.catalog.dump().await.unwrap(),
        dump,
        "the index is unchanged"
    );
    assert_eq!(
        list_all(&*storage.store, "").await.unwrap(),
        objects,
        "no object was written"
    );

    // exactly one notification per update
    let mut got = 0;
    while got < 300 {
        got += sub.recv(1000).await.unwrap().len();
    }
    assert_eq!(got, 300);
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(100), sub.recv(10))
            .await
            .is_err()
    );
}

/// A source that forwards what the test hands it, as it hands it.
struct Handed(tokio::sync::Mutex<tokio::sync::mpsc::Receiver<SourceMsg>>);

#[async_trait]
impl Source for Handed {
    async fn run(self: Box<Self>, ctx: SourceContext) -> overseer_ingestion::Result<()> {
        while let Some(m) = self.0.lock().await.recv().await {
            if ctx.tx.send(m).await.is_err() {
                break;
            }
        }
        Ok(())
    }
}

/// The `ledger` source of `cfg` run by a pipeline, fed by the test through `tx`.
struct Fed {
    storage: Storage,
    tx: tokio::sync::mpsc::Sender<SourceMsg>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<
        overseer_ingestion::Result<overseer_ingestion::pipeline::SourceReport>,
    >,
}

impl Fed {
    async fn start(cfg: &Config) -> Fed {
        let storage = Storage::open(cfg).await.unwrap();
        let ing = Ingestor::new(storage.clone(), cfg.ingest.clone());
        let consumer = overseer_ingestion::format::build(&cfg.sources[0], cfg).unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let stop = CancellationToken::new();
        let task = {
            let (src, stop) = (cfg.sources[0].clone(), stop.clone());
            let source = Box::new(Handed(tokio::sync::Mutex::new(rx)));
            tokio::spawn(async move { ing.run_source(&src, consumer, source, stop).await })
        };
        Fed {
            storage,
            tx,
            stop,
            task,
        }
    }

    async fn send(&self, m: SourceMsg) {
        self.tx.send(m).await.unwrap();
    }

    /// The source's (watermark, newest commit time) in the catalog.
    async fn state(&self) -> Option<(i64, i64)> {
        let states = self.storage.catalog.source_states().await.unwrap();
        let s = states.iter().find(|s| s.source == "ledger");
        s.map(|s| (s.watermark_us, s.last_event_us))
    }

    async fn wait_for(&self, want: (i64, i64)) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let got = self.state().await;
            if got == Some(want) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{got:?}, want {want:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    async fn wait_indexed(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.storage.catalog.dump().await.unwrap().entries.len() < n {
            assert!(tokio::time::Instant::now() < deadline, "{n} events indexed");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        drop(self.tx);
        self.task.await.unwrap().unwrap();
    }
}

/// Two changes of one transaction (same commit time) committed in two batches: after the
/// first, the source is complete only up to just before that time, so a check waiting
/// for it does not run on half a transaction. The second batch, or a heartbeat, completes
/// it.
#[tokio::test]
async fn a_batch_does_not_claim_its_newest_time_complete() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &dir.path().join("unused.jsonl"), "");
    let fed = Fed::start(&cfg).await;
    let mut all = events(3).into_iter();
    let mut at = |secs: i64| {
        let mut e = all.next().unwrap();
        e.raw = Bytes::from(insert_event(&e.position, "t1", secs));
        SourceMsg::Event(e)
    };
    let t = 7_000_000_000; // 7,000 s in µs: the events' clusterTime
    fed.send(at(6_999)).await;
    fed.send(at(7_000)).await;
    fed.wait_for((t - 1, t)).await;
    // The same time again (the rest of the transaction): still only up to before it.
    fed.send(at(7_000)).await;
    fed.wait_indexed(3).await;
    assert_eq!(fed.state().await, Some((t - 1, t)));
    // The source says it is complete up to that time.
    fed.send(SourceMsg::Heartbeat {
        watermark_us: t,
        evidence: Evidence::Heartbeat,
        lanes: None,
    })
    .await;
    fed.wait_for((t, t)).await;
    fed.stop().await;
}

/// A source read as several lanes (Kafka partitions) is complete only up to its slowest
/// lane, less its declared out-of-order bound; a lane that delivered nothing holds it
/// where it was; an upstream heartbeat covers the lanes it names, or every lane; one from
/// the future is ignored.
#[tokio::test]
async fn the_slowest_lane_holds_the_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), &dir.path().join("unused.jsonl"), "");
    cfg.sources[0].max_out_of_order_ms = 1000;
    let fed = Fed::start(&cfg).await;
    let mut all = events(4).into_iter();
    let mut at = |lane: u32, secs: i64| {
        let mut e = all.next().unwrap();
        e.raw = Bytes::from(insert_event(&e.position, "t1", secs));
        e.lane = lane;
        SourceMsg::Event(e)
    };
    let s = |secs: i64| secs * 1_000_000;
    let claim = |secs: i64| s(secs) - 1 - 1_000_000;
    let lanes = |ls: &[u32]| SourceMsg::Lanes(ls.iter().map(|l| (*l, format!("p{l}"))).collect());
    fed.send(lanes(&[0, 1])).await;
    fed.send(at(0, 7_000)).await;
    fed.wait_for((0, s(7_000))).await;
    fed.send(at(1, 6_000)).await;
    fed.wait_for((claim(6_000), s(7_000))).await;
    fed.send(at(1, 8_000)).await;
    fed.wait_for((claim(7_000), s(8_000))).await;
    // An upstream heartbeat for lane 1 alone (the lane at its end): lane 0 still holds.
    let beat = |t: i64, lanes: Option<Vec<u32>>| SourceMsg::Heartbeat {
        watermark_us: t,
        evidence: Evidence::Heartbeat,
        lanes,
    };
    fed.send(beat(s(8_500), Some(vec![1]))).await;
    fed.send(at(0, 6_500)).await;
    fed.wait_indexed(4).await;
    assert_eq!(fed.state().await, Some((claim(7_000), s(8_000))));
    fed.send(beat(s(8_500), Some(vec![0]))).await;
    fed.wait_for((s(8_500), s(8_000))).await;
    // One for every lane.
    fed.send(beat(s(9_000), None)).await;
    fed.wait_for((s(9_000), s(8_000))).await;
    // One from an hour ahead of this clock is a broken clock or message: ignored (the
    // catalog would keep it forever). The next sane one is taken.
    fed.send(beat(now_us() + 3_600_000_000, None)).await;
    fed.send(beat(s(9_500), None)).await;
    fed.wait_for((s(9_500), s(8_000))).await;
    fed.stop().await;
}

#[tokio::test]
async fn malformed_events_are_quarantined_and_hostile_ids_stored_safely() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ledger.jsonl");
    let hostile = conformance::hostile_ids();
    let mut lines = vec![];
    let mut good = 0;
    for (i, id) in hostile.iter().enumerate() {
        lines.push(insert_event(id, "t1", 100 + i as i64));
        good += 1;
    }
    let bad = vec![
        r#"{"operationType": "insert", "fullDocument": {"_id": "x""#.to_string(), // truncated JSON
        "not json at all".to_string(),
        r#"{"operationType": "insert", "ns": {"db": "ledger", "coll": "entries"}, "clusterTime": {"$timestamp": {"t": 1, "i": 1}}, "fullDocument": {"transfer_id": "t1"}}"#.to_string(), // no id
        r#"{"operationType": "explode", "ns": {"db": "ledger", "coll": "entries"}, "documentKey": {"_id": "z"}, "clusterTime": {"$timestamp": {"t": 1, "i": 1}}}"#.to_string(), // unknown op
        insert_event(&"big".repeat(2000), "t1", 7), // over max_event_bytes = 4096
        // clusterTime in seconds, past year 9999 (it fits an i64 in microseconds)
        r#"{"operationType": "insert", "ns": {"db": "ledger", "coll": "entries"}, "documentKey": {"_id": "far"}, "clusterTime": 300000000000, "fullDocument": {"_id": "far"}}"#.to_string(),
    ];
    for (i, b) in bad.iter().enumerate() {
        lines.insert(1 + 2 * i, b.clone());
    }
    write_lines(&file, &lines, false);
    let cfg = config(dir.path(), &file, "");
    let r = ingest_once(&cfg).await;
    assert_eq!(
        (r["ledger"].updates, r["ledger"].quarantined),
        (good, bad.len() as u64)
    );

    let storage = Storage::open(&cfg).await.unwrap();
    for id in &hostile {
        let h = storage
            .catalog
            .record_updates("ledger.entries", id, i64::MAX)
            .await
            .unwrap();
        assert_eq!(h.len(), 1, "hostile id {id:?} is stored and found");
    }
    // every object key stays under its prefix
    for key in list_all(&*storage.store, "").await.unwrap() {
        assert!(
            key.starts_with("segments/")
                || key.starts_with("deadletter/")
                || key == overseer_ingestion::pipeline::STORE_CLAIM_KEY,
            "{key}"
        );
    }
    let letters = overseer_ingestion::deadletter::list_all(&*storage.store)
        .await
        .unwrap();
    assert_eq!(letters.len(), bad.len());
    let reasons: Vec<_> = letters.iter().map(|l| l.reason.as_str()).collect();
    for why in ["oversized", "outside years 1 to 9999"] {
        assert!(
            reasons.iter().any(|r| r.contains(why)),
            "{why}: {reasons:?}"
        );
    }
    for (l, b) in letters.iter().zip(&bad) {
        assert_eq!(l.source, "ledger");
        assert_eq!(l.raw(), b.as_bytes(), "the raw event is kept as received");
        assert!(!l.reason.is_empty());
    }
}

fn record(i: u32, seq_src: &str) -> UpdateRecord {
    UpdateRecord {
        source: seq_src.into(),
        position: format!("{i:08}"),
        model: "ledger.entries".into(),
        record_id: format!("c{i}"),
        op: Op::Create as i32,
        event_time_us: 1_000 + i as i64,
        format: "mongo-change-stream".into(),
        raw: Bytes::from(insert_event(&format!("c{i}"), "t", 1)),
        ..Default::default()
    }
}

#[tokio::test]
async fn recovery_finishes_interrupted_batches() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LocalStore::open(dir.path().join("objects")).unwrap());
    let catalog = Arc::new(EmbeddedCatalog::open(dir.path().join("c.redb")).unwrap());
    let bus = Arc::new(MemoryBus::new(1000));
    let storage = Storage {
        store: store.clone(),
        catalog: catalog.clone(),
        bus: bus.clone(),
    };

    // crash after the PUT, before the commit: a pending segment with an object
    let s1 = catalog.reserve_segment().await.unwrap();
    let mut b = SegmentBuilder::new(s1, 0);
    for i in 0..10 {
        b.push(&record(i, "src"));
    }
    store
        .put_create(&segment_key(s1), b.finish(vec![]))
        .await
        .unwrap();
    // crash after reserving, before the PUT: a pending segment without an object
    let s2 = catalog.reserve_segment().await.unwrap();

    let mut sub = bus.subscribe("runner").await.unwrap();
    let ing = Ingestor::new(storage, Default::default());
    let rec = ing.recover(&Default::default()).await.unwrap();
    assert_eq!((rec.indexed, rec.abandoned, rec.republished), (1, 1, 1));
    assert!(catalog.pending_segments().await.unwrap().is_empty());
    assert!(catalog.unpublished_segments().await.unwrap().is_empty());
    assert_eq!(catalog.dump().await.unwrap().entries.len(), 10);
    assert_eq!(
        sub.recv(100).await.unwrap().len(),
        10,
        "notifications are not lost"
    );
    // recovering again finds nothing to do
    assert_eq!(
        ing.recover(&Default::default()).await.unwrap(),
        Default::default()
    );
    assert!(
        catalog.reserve_segment().await.unwrap() > s2,
        "no sequence is reused"
    );
}

#[tokio::test]
async fn reindex_rebuilds_the_same_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ledger.jsonl");
    let lines: Vec<_> = (0..1000)
        .map(|i| insert_event(&format!("e{}", i % 300), &format!("t{}", i % 37), i))
        .collect();
    write_lines(&file, &lines, false);
    let cfg = config(dir.path(), &file, "");
    ingest_once(&cfg).await;
    let storage = Storage::open(&cfg).await.unwrap();

    // a redelivered copy of an indexed update in a later segment (a crash after the PUT of
    // a redelivered batch) must not change what reindex rebuilds
    let live_dump = storage.catalog.dump().await.unwrap();
    let dup_seq = storage.catalog.reserve_segment().await.unwrap();
    let orig = &live_dump.entries[0];
    let bytes = storage
        .store
        .get(&segment_key(orig.loc.segment_seq))
        .await
        .unwrap()
        .unwrap();
    let seg = overseer_dal::segment::decode_segment(&bytes, "s").unwrap();
    let mut b = SegmentBuilder::new(dup_seq, 0);
    b.push(&seg.records.iter().find(|(l, _)| *l == orig.loc).unwrap().1);
    storage
        .store
        .put_create(&segment_key(dup_seq), b.finish(vec![]))
        .await
        .unwrap();
    Ingestor::new(storage.clone(), Default::default())
        .recover(&Default::default())
        .await
        .unwrap();
    let live_dump = storage.catalog.dump().await.unwrap();

    let fresh = EmbeddedCatalog::open(dir.path().join("re.redb")).unwrap();
    let rep = overseer_ingestion::reindex::reindex(&*storage.store, &fresh)
        .await
        .unwrap();
    assert_eq!(rep.updates, 1000);
    assert_eq!(rep.duplicates, 1);
    assert_eq!(
        fresh.dump().await.unwrap(),
        live_dump,
        "reindex equals the live catalog"
    );
    let states = fresh.source_states().await.unwrap();
    assert_eq!(
        states[0].checkpoint,
        storage.catalog.source_states().await.unwrap()[0].checkpoint
    );
    // reindex refuses a catalog that is not empty
    assert!(
        overseer_ingestion::reindex::reindex(&*storage.store, &fresh)
            .await
            .is_err()
    );

    // and its snapshots are rebuilt: every record with 3 or more updates gets one every 3
    let fresh: overseer_dal::catalog::DynCatalog = Arc::new(fresh);
    let dal = overseer_dal::Dal::new(fresh.clone(), storage.store.clone()).with_snapshot_every(3);
    let rep = overseer_ingestion::reindex::rebuild_snapshots(&dal)
        .await
        .unwrap();
    // 1000 updates of 300 ids: 100 ids with 4, 200 with 3; one snapshot each.
    assert_eq!(
        (rep.records, rep.snapshots, rep.failed, rep.dropped),
        (300, 300, 0, 0)
    );
    let snaps = fresh.snapshots("ledger.entries", "e0").await.unwrap();
    assert_eq!(snaps.iter().map(|s| s.n).collect::<Vec<_>>(), [3]);
    let reader = overseer_dal::Dal::new(fresh.clone(), storage.store.clone())
        .with_snapshot_every(3)
        .with_state_bytes(0);
    let a = reader
        .record("ledger.entries", "e0", i64::MAX)
        .await
        .unwrap();
    let b = overseer_dal::Dal::new(storage.catalog.clone(), storage.store.clone())
        .with_snapshot_every(0)
        .record("ledger.entries", "e0", i64::MAX)
        .await
        .unwrap();
    assert_eq!((a.state, a.updates, a.last), (b.state, b.updates, b.last));
    assert_eq!(reader.state_stats().snapshots.read, 1);
}

/// The shipped malformed corpus (ingestion/tests/fixtures/malformed.jsonl, each line's
/// reason listed in the fixtures README) interleaved with the good change-stream fixture:
/// every bad line is quarantined, every good one ingested, nothing stops.
#[tokio::test]
async fn the_malformed_corpus_is_quarantined_between_good_events() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let read = |name: &str| -> Vec<String> {
        std::fs::read_to_string(fixtures.join(name))
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    };
    let (good, bad) = (read("mongo_change_stream.jsonl"), read("malformed.jsonl"));
    let mut lines = Vec::new();
    for (i, b) in bad.iter().enumerate() {
        if let Some(g) = good.get(i) {
            lines.push(g.clone());
        }
        lines.push(b.clone());
    }
    lines.extend(good.iter().skip(bad.len()).cloned());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mixed.jsonl");
    write_lines(&file, &lines, false);
    let cfg = config(dir.path(), &file, "");
    let r = ingest_once(&cfg).await;
    assert_eq!(r["ledger"].updates, good.len() as u64);
    assert_eq!(r["ledger"].quarantined, bad.len() as u64);
    let storage = Storage::open(&cfg).await.unwrap();
    let letters = overseer_ingestion::deadletter::list_all(&*storage.store)
        .await
        .unwrap();
    let raws: Vec<Vec<u8>> = letters.iter().map(|l| l.raw()).collect();
    for b in &bad {
        assert!(
            raws.contains(&b.as_bytes().to_vec()),
            "kept as received: {b}"
        );
    }
    assert!(
        letters
            .iter()
            .all(|l| !l.reason.is_empty() && l.source == "ledger")
    );
}

/// A store whose first `lose` segment PUTs land but answer with a transient error (the
/// response lost to a timeout): the retried PUT then finds the object there.
#[derive(Debug)]
struct LostAnswers {
    inner: overseer_dal::store::DynStore,
    lose: std::sync::atomic::AtomicU32,
}

#[async_trait]
impl ObjectStore for LostAnswers {
    async fn put_create(
        &self,
        key: &str,
        bytes: Bytes,
    ) -> overseer_dal::Result<overseer_dal::store::PutOutcome> {
        let outcome = self.inner.put_create(key, bytes).await?;
        let lost = key.starts_with("segments/")
            && self
                .lose
                .fetch_update(
                    std::sync::atomic::Ordering::SeqCst,
                    std::sync::atomic::Ordering::SeqCst,
                    |n| n.checked_sub(1),
                )
                .is_ok();
        if lost {
            return Err(overseer_dal::Error::Store {
                message: format!("PUT {key}: timed out (the object landed)"),
                transient: true,
                source: None,
            });
        }
        Ok(outcome)
    }
    async fn get(&self, key: &str) -> overseer_dal::Result<Option<Bytes>> {
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, start: u64, len: u64) -> overseer_dal::Result<Bytes> {
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
        "a store losing PUT answers".into()
    }
}

/// A PUT retried after its answer was lost finds its own bytes and goes on (it was taken
/// for another catalog's segment, and ingestion stopped); a segment with other bytes under
/// a freshly reserved sequence is refused, and its sequence released so a restart never
/// indexes it as this catalog's.
#[tokio::test]
async fn a_retried_put_is_ours_and_a_foreign_segment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("unused.jsonl");
    let cfg = config(dir.path(), &file, "");
    let storage = Storage::open(&cfg).await.unwrap();
    let lossy = Storage {
        store: Arc::new(LostAnswers {
            inner: storage.store.clone(),
            lose: 2.into(),
        }),
        ..storage.clone()
    };
    let ing = Ingestor::new(lossy, cfg.ingest.clone());
    let consumer = overseer_ingestion::format::build(&cfg.sources[0], &cfg).unwrap();
    let src = Box::new(Replaying {
        events: events(300),
        times: 1,
    });
    let r = ing
        .run_source(
            &cfg.sources[0],
            consumer.clone(),
            src,
            CancellationToken::new(),
        )
        .await
        .expect("lost answers are retried, not taken for a conflict");
    assert_eq!((r.updates, r.duplicates), (300, 0));

    // Another writer's segment sits where the next reserved sequence points.
    let next = storage.catalog.reserve_segment().await.unwrap();
    storage.catalog.abandon_segment(next).await.unwrap();
    let foreign = {
        let mut seg = SegmentBuilder::new(next + 1, 256);
        seg.push(&UpdateRecord {
            source: "elsewhere".into(),
            position: "1".into(),
            model: "ledger.entries".into(),
            record_id: "x".into(),
            op: Op::Create as i32,
            raw: Bytes::from_static(b"{}"),
            ..Default::default()
        });
        seg.finish(Vec::new())
    };
    storage
        .store
        .put_create(&segment_key(next + 1), foreign)
        .await
        .unwrap();
    let ing = Ingestor::new(storage.clone(), cfg.ingest.clone());
    let later: Vec<SourceEvent> = events(310).into_iter().skip(300).collect();
    let e = ing
        .run_source(
            &cfg.sources[0],
            consumer,
            Box::new(Replaying {
                events: later,
                times: 1,
            }),
            CancellationToken::new(),
        )
        .await
        .expect_err("another writer's segment is refused");
    assert!(e.to_string().contains("another catalog"), "{e}");
    // A restart does not adopt it.
    let rec = ing.recover(&Default::default()).await.unwrap();
    assert_eq!(rec.indexed, 0, "{rec:?}");
    let h = storage
        .catalog
        .record_updates("ledger.entries", "x", i64::MAX)
        .await
        .unwrap();
    assert!(h.is_empty(), "the foreign record is not indexed: {h:?}");
}

/// Polls until `id` is indexed (at most 20 s).
async fn wait_for_record(storage: &Storage, id: &str) {
    for _ in 0..400 {
        let h = storage
            .catalog
            .record_updates("ledger.entries", id, i64::MAX)
            .await
            .unwrap();
        if !h.is_empty() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{id} was never ingested");
}

/// A followed file rotated under the source — truncated in place (`copytruncate`), then
/// renamed away and created anew — is read from the start of what replaced it: nothing
/// new is skipped or taken for a redelivery. A file truncated while the source is stopped
/// is read from its start at the next start.
#[tokio::test]
async fn a_rotated_file_is_read_from_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ledger.jsonl");
    let lines = |from: usize, to: usize| -> Vec<String> {
        (from..to)
            .map(|i| insert_event(&format!("e{i}"), "t1", 1000 + i as i64))
            .collect()
    };
    write_lines(&file, &lines(0, 50), false);
    let mut cfg = config(dir.path(), &file, "");
    cfg.sources[0].file.as_mut().unwrap().follow = true;
    let storage = Storage::open(&cfg).await.unwrap();
    let stop = CancellationToken::new();
    let running = tokio::spawn({
        let (cfg, storage, stop) = (cfg.clone(), storage.clone(), stop.clone());
        async move { overseer_ingestion::service::run(&cfg, storage, false, stop).await }
    });
    wait_for_record(&storage, "e49").await;

    // copytruncate: the same file, emptied, then shorter lines than before.
    write_lines(&file, &lines(50, 60), false);
    wait_for_record(&storage, "e59").await;
    // create: renamed away, the writer appends to it once more before reopening the path,
    // then a new file in its place (longer than what was read).
    let rotated = dir.path().join("ledger.jsonl.1");
    std::fs::rename(&file, &rotated).unwrap();
    write_lines(&rotated, &lines(140, 141), true);
    write_lines(&file, &lines(60, 140), false);
    wait_for_record(&storage, "e139").await;
    wait_for_record(&storage, "e140").await;
    stop.cancel();
    let reports = running.await.unwrap().unwrap();
    assert_eq!(reports["ledger"].updates, 141);
    assert_eq!(reports["ledger"].duplicates, 0);
    let state = &storage.catalog.source_states().await.unwrap()[0];
    let len = std::fs::metadata(&file).unwrap().len();
    assert_eq!(
        state.checkpoint,
        format!("2:{len}"),
        "the third generation, read to its end"
    );
    drop(storage);

    // Truncated while stopped: the next start reads the new contents from the start.
    write_lines(&file, &lines(141, 151), false);
    cfg.sources[0].file.as_mut().unwrap().follow = false;
    let r = ingest_once(&cfg).await;
    assert_eq!((r["ledger"].updates, r["ledger"].duplicates), (10, 0));
}

/// A store belongs to the catalog that first ingested into it: another catalog is refused
/// at start, before it ingests anything, with what to do; a catalog rebuilt from the store
/// by reindex is the store's own and goes on.
#[tokio::test]
async fn a_store_is_claimed_by_one_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ledger.jsonl");
    write_lines(
        &file,
        &(0..20)
            .map(|i| insert_event(&format!("e{i}"), "t1", 1000 + i))
            .collect::<Vec<_>>(),
        false,
    );
    let first = config(dir.path(), &file, "");
    assert_eq!(ingest_once(&first).await["ledger"].updates, 20);

    // Another catalog, the same store.
    let mut other = first.clone();
    other.catalog = overseer_dal::config::CatalogConfig::Embedded {
        path: dir.path().join("other.redb"),
    };
    let storage = Storage::open(&other).await.unwrap();
    let e =
        overseer_ingestion::service::run(&other, storage.clone(), true, CancellationToken::new())
            .await
            .expect_err("another catalog's store is refused");
    let msg = e.to_string();
    assert!(
        msg.contains("belongs to another catalog") && msg.contains("overseer reindex"),
        "{msg}"
    );
    assert!(
        storage.catalog.source_states().await.unwrap().is_empty(),
        "nothing was ingested into the other catalog"
    );
    drop(storage);

    // Rebuilt from the store, a catalog is the store's own.
    let mut rebuilt = first.clone();
    rebuilt.catalog = overseer_dal::config::CatalogConfig::Embedded {
        path: dir.path().join("rebuilt.redb"),
    };
    let storage = Storage::open(&rebuilt).await.unwrap();
    overseer_ingestion::reindex::reindex(&*storage.store, &*storage.catalog)
        .await
        .unwrap();
    drop(storage);
    write_lines(&file, &[insert_event("e20", "t1", 1020)], true);
    let r = ingest_once(&rebuilt).await;
    assert_eq!((r["ledger"].events, r["ledger"].updates), (1, 1));
}
