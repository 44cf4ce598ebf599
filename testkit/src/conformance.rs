//! One test suite per seam, run by every backend's tests (the in-memory and embedded ones
//! in this crate, S3, PostgreSQL and Kafka against real local servers). A backend that
//! passes behaves like the others as far as the engine can tell.
//!
//! The suites panic with a message naming the broken expectation; they are plain async
//! functions so integration tests can call them after starting their servers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use overseer_dal::Result;
use overseer_dal::bus::Bus;
use std::sync::Arc;

use overseer_dal::catalog::{Catalog, DynCatalog, IncidentStore, MetaStore, SegmentLedger};
use overseer_dal::store::{ObjectStore, PutOutcome, list_all};
use overseer_dal::update::{
    CommitBatch, Incident, IndexEntry, Micros, Op, Progress, RefUpdatesAfter, UpdateLoc,
    UpdateNotification, UpdatesAfter,
};

/// Runs the object store suite under key prefix `ns` (unique per run for shared buckets).
/// `create_only_honoured`: whether the backend detects existing keys (garage does not).
pub async fn object_store_suite(store: &dyn ObjectStore, ns: &str, create_only_honoured: bool) {
    let k = |s: &str| format!("{ns}/{s}");
    // create, read back
    let a = Bytes::from_static(b"hello segment");
    assert_eq!(
        store.put_create(&k("seg/a"), a.clone()).await.unwrap(),
        PutOutcome::Created,
        "first put of a key creates it"
    );
    assert_eq!(store.get(&k("seg/a")).await.unwrap(), Some(a.clone()));
    // create-only (a backend that ignores the condition overwrites, so only test it where
    // it is honoured: the rest of the suite relies on seg/a keeping its bytes)
    if create_only_honoured {
        let again = store
            .put_create(&k("seg/a"), Bytes::from_static(b"different"))
            .await
            .unwrap();
        assert_eq!(
            again,
            PutOutcome::AlreadyExists,
            "an existing key is not overwritten"
        );
        assert_eq!(store.get(&k("seg/a")).await.unwrap(), Some(a.clone()));
    }
    // identical rewrite is harmless everywhere
    store.put_create(&k("seg/b"), a.clone()).await.unwrap();
    store.put_create(&k("seg/b"), a.clone()).await.unwrap();
    assert_eq!(store.get(&k("seg/b")).await.unwrap(), Some(a.clone()));
    // missing
    assert_eq!(store.get(&k("seg/missing")).await.unwrap(), None);
    assert!(store.get_range(&k("seg/missing"), 0, 1).await.is_err());
    // ranges
    assert_eq!(
        &store.get_range(&k("seg/a"), 6, 7).await.unwrap()[..],
        b"segment"
    );
    assert_eq!(
        &store.get_range(&k("seg/a"), 0, 5).await.unwrap()[..],
        b"hello"
    );
    assert!(
        store.get_range(&k("seg/a"), 10, 10).await.is_err(),
        "a range past the end is an error"
    );
    // a larger object
    let big = Bytes::from((0..300_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
    store.put_create(&k("big"), big.clone()).await.unwrap();
    assert_eq!(store.get(&k("big")).await.unwrap().unwrap(), big);
    assert_eq!(
        store.get_range(&k("big"), 123_456, 1000).await.unwrap(),
        big.slice(123_456..124_456)
    );
    // keys with unusual but valid characters
    let odd = k("odd/%2F ü/名前");
    store
        .put_create(&odd, Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert_eq!(
        store.get(&odd).await.unwrap().unwrap(),
        Bytes::from_static(b"x")
    );
    // invalid keys
    for bad in ["", "/abs", "a/../b", "a//b", "./a"] {
        assert!(
            store.put_create(bad, a.clone()).await.is_err(),
            "key {bad:?} must be refused"
        );
    }
    // listing: order, prefix boundaries, start_after, limit
    for i in [3, 1, 10, 2] {
        store
            .put_create(&k(&format!("list/{i:03}")), Bytes::from(vec![i as u8]))
            .await
            .unwrap();
    }
    store
        .put_create(&k("listx/000"), Bytes::from_static(b"n"))
        .await
        .unwrap();
    let all = store.list(&k("list/"), None, 100).await.unwrap();
    assert_eq!(
        all,
        vec![k("list/001"), k("list/002"), k("list/003"), k("list/010")],
        "list is sorted and bounded by its prefix"
    );
    let page = store
        .list(&k("list/"), Some(&k("list/001")), 2)
        .await
        .unwrap();
    assert_eq!(page, vec![k("list/002"), k("list/003")]);
    let partial = store.list(&k("list/00"), None, 100).await.unwrap();
    assert_eq!(partial.len(), 3, "a prefix may end inside a key component");
    assert_eq!(list_all(store, &k("list")).await.unwrap().len(), 5);
    assert!(
        store
            .list(&k("nothing/"), None, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// [`SegmentLedger`] on a catalog in any state (assertions are relative to what is there):
/// reservations increase and stay pending until committed or abandoned; a commit with
/// entries makes its segment committed and unpublished; publishing and the committed
/// cursor; an empty batch releases its reservation.
pub async fn segment_ledger_suite(cat: &dyn SegmentLedger) {
    let before = cat.pending_segments().await.unwrap();
    let a = cat.reserve_segment().await.unwrap();
    let b = cat.reserve_segment().await.unwrap();
    let c = cat.reserve_segment().await.unwrap();
    assert!(a < b && b < c, "sequences increase");
    assert!(before.iter().all(|s| *s < a), "never reused");
    let pending = cat.pending_segments().await.unwrap();
    assert!([a, b, c].iter().all(|s| pending.contains(s)), "{pending:?}");
    cat.abandon_segment(c).await.unwrap();
    assert!(
        !cat.pending_segments().await.unwrap().contains(&c),
        "abandoned"
    );
    let new = cat
        .commit(CommitBatch {
            segment_seq: Some(a),
            entries: vec![entry("ledger-suite", "1", "m", "r1", 10, a, &[])],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(new, vec![true]);
    assert!(
        !cat.pending_segments().await.unwrap().contains(&a),
        "committed"
    );
    assert!(cat.unpublished_segments().await.unwrap().contains(&a));
    assert!(
        cat.committed_segments_after(a - 1, 1000)
            .await
            .unwrap()
            .contains(&a)
    );
    assert!(
        !cat.committed_segments_after(a, 1000)
            .await
            .unwrap()
            .contains(&a),
        "strictly after"
    );
    cat.mark_published(&[a]).await.unwrap();
    assert!(!cat.unpublished_segments().await.unwrap().contains(&a));
    // a batch whose events were all already indexed releases its reservation
    cat.commit(CommitBatch {
        segment_seq: Some(b),
        entries: vec![],
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(!cat.pending_segments().await.unwrap().contains(&b));
    assert!(!cat.unpublished_segments().await.unwrap().contains(&b));
    assert!(
        !cat.committed_segments_after(a, 1000)
            .await
            .unwrap()
            .contains(&b),
        "an empty batch commits no segment"
    );
}

/// [`SourceProgress`] for a source the catalog has not seen: progress comes with commits,
/// heartbeats move the watermark forward only, and a stale commit does not move it back.
pub async fn source_progress_suite(cat: &dyn Catalog) {
    let state = |states: Vec<overseer_dal::update::SourceState>| {
        states
            .into_iter()
            .find(|s| s.source == "progress-suite")
            .map(|s| (s.checkpoint, s.watermark_us))
    };
    assert_eq!(state(cat.source_states().await.unwrap()), None);
    cat.commit(CommitBatch {
        segment_seq: None,
        progress: vec![progress("progress-suite", "cp-2", 200)],
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        state(cat.source_states().await.unwrap()),
        Some(("cp-2".into(), 200))
    );
    cat.heartbeat("progress-suite", 500, 1).await.unwrap();
    assert_eq!(
        state(cat.source_states().await.unwrap()),
        Some(("cp-2".into(), 500)),
        "a heartbeat moves the watermark"
    );
    cat.heartbeat("progress-suite", 300, 2).await.unwrap();
    assert_eq!(
        state(cat.source_states().await.unwrap()).map(|s| s.1),
        Some(500),
        "never backwards"
    );

    // Lanes shared by several instances: the source is complete up to the lowest claim,
    // and its watermark rises to it, never falls.
    let lanes = |c: &[(&str, Micros)]| {
        c.iter()
            .map(|(l, w)| (l.to_string(), *w))
            .collect::<Vec<_>>()
    };
    let names = |n: &[&str]| n.iter().map(|l| l.to_string()).collect::<Vec<_>>();
    let wm = async || state(cat.source_states().await.unwrap()).map(|s| s.1);
    let claim = async |c: &[(&str, Micros)], retire: &[&str], now: Micros| {
        cat.claim_lanes("progress-suite", &lanes(c), &names(retire), now)
            .await
            .unwrap()
    };
    claim(&[("t/0", 900), ("t/1", 0)], &[], 3).await;
    assert_eq!(wm().await, Some(500), "a lane with no claim yet holds it");
    claim(&[("t/1", 700)], &[], 4).await;
    assert_eq!(wm().await, Some(700), "the lowest lane");
    claim(&[("t/1", 600), ("t/0", 800), ("t/0", 850)], &[], 5).await;
    assert_eq!(
        cat.lane_claims("progress-suite").await.unwrap(),
        lanes(&[("t/0", 900), ("t/1", 700)]),
        "a lane never goes back"
    );
    claim(&[("t/1", 1_000), ("t/2", 0), ("u/0", 2_000)], &[], 6).await;
    assert_eq!(
        wm().await,
        Some(700),
        "a new lane holds the watermark, and does not take it back"
    );
    claim(&[], &["t/2", "t/9"], 7).await;
    assert_eq!(
        cat.lane_claims("progress-suite").await.unwrap(),
        lanes(&[("t/0", 900), ("t/1", 1_000), ("u/0", 2_000)]),
        "retired: the lanes named"
    );
    assert_eq!(wm().await, Some(900), "the lowest lane left");
    cat.heartbeat("progress-suite", 950, 8).await.unwrap();
    assert_eq!(
        wm().await,
        Some(950),
        "the whole source's record, when higher"
    );
    cat.commit(CommitBatch {
        segment_seq: None,
        progress: vec![Progress {
            lanes: lanes(&[("t/0", 1_200), ("t/1", 1_100)]),
            ..progress("progress-suite", "cp-3", 400)
        }],
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(wm().await, Some(1_100), "lane claims ride with a commit");
    cat.claim_lanes("lanes-only", &lanes(&[("t/0", 300)]), &[], 9)
        .await
        .unwrap();
    assert_eq!(
        cat.source_states()
            .await
            .unwrap()
            .into_iter()
            .find(|s| s.source == "lanes-only")
            .map(|s| s.watermark_us),
        Some(300),
        "a source first seen by its lanes is recorded"
    );
    assert_eq!(
        cat.lane_claims("another-source").await.unwrap(),
        vec![],
        "lanes are per source"
    );
}

/// Opens (or reopens) the catalog under test; the suite drops its handle before reopening.
pub type OpenCatalog =
    Box<dyn Fn() -> Pin<Box<dyn Future<Output = Result<DynCatalog>> + Send>> + Send + Sync>;

fn entry(
    source: &str,
    pos: &str,
    model: &str,
    id: &str,
    t: i64,
    seq: u64,
    refs: &[(&str, &str)],
) -> IndexEntry {
    IndexEntry {
        source: source.into(),
        position: pos.into(),
        model: model.into(),
        record_id: id.into(),
        op: if t % 3 == 0 { Op::Create } else { Op::Update },
        event_time_us: t,
        ingest_time_us: t + 5,
        loc: UpdateLoc {
            segment_seq: seq,
            offset: (t as u32) * 10,
            len: 7,
        },
        refs: refs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
    }
}

fn progress(source: &str, cp: &str, wm: i64) -> Progress {
    Progress {
        source: source.into(),
        checkpoint: cp.into(),
        watermark_us: wm,
        last_event_us: wm,
        lanes: Vec::new(),
    }
}

/// Ids a hostile or careless upstream may send; all valid, all must round-trip.
pub fn hostile_ids() -> Vec<String> {
    vec![
        "plain".into(),
        "../../etc/passwd".into(),
        "a/b/c".into(),
        "..".into(),
        "名前/ünïcödé 🚀".into(),
        "with\0nul".into(),
        "quote'\"; DROP TABLE x; --".into(),
        "%2F%00".into(),
        "x".repeat(1024),
        String::new(),
    ]
}

/// Runs the catalog suite on a fresh, empty catalog.
pub async fn catalog_suite(open: OpenCatalog) {
    let cat = open().await.expect("open catalog");
    // segment ledger
    let s1 = cat.reserve_segment().await.unwrap();
    let s2 = cat.reserve_segment().await.unwrap();
    let s3 = cat.reserve_segment().await.unwrap();
    assert!(s1 < s2 && s2 < s3, "sequences increase");
    assert_eq!(cat.pending_segments().await.unwrap(), vec![s1, s2, s3]);
    cat.abandon_segment(s3).await.unwrap();
    assert_eq!(cat.pending_segments().await.unwrap(), vec![s1, s2]);

    // first batch
    let b1 = vec![
        entry(
            "pg",
            "0000000A/00000001",
            "payments.transfers",
            "t1",
            100,
            s1,
            &[("account_id", "acc1")],
        ),
        entry(
            "pg",
            "0000000A/00000002",
            "payments.transfers",
            "t2",
            100,
            s1,
            &[],
        ),
        entry(
            "kafka",
            "ledger/0/00000000000000000001",
            "ledger.entries",
            "e1",
            105,
            s1,
            &[("transfer_id", "t1")],
        ),
        entry(
            "kafka",
            "ledger/0/00000000000000000002",
            "ledger.entries",
            "e2",
            106,
            s1,
            &[("transfer_id", "t1"), ("account_id", "acc1")],
        ),
    ];
    let ids: Vec<(&str, &str)> = b1
        .iter()
        .map(|e| (e.source.as_str(), e.position.as_str()))
        .collect();
    assert_eq!(cat.filter_new(&ids).await.unwrap(), vec![true; 4]);
    let new = cat
        .commit(CommitBatch {
            segment_seq: Some(s1),
            entries: b1.clone(),
            progress: vec![progress("pg", "A/2", 100), progress("kafka", "0:2", 106)],
            quarantined: 1,
            now_us: 1000,
        })
        .await
        .unwrap();
    assert_eq!(new, vec![true; 4]);
    assert_eq!(cat.filter_new(&ids).await.unwrap(), vec![false; 4]);
    assert_eq!(cat.pending_segments().await.unwrap(), vec![s2]);
    assert_eq!(cat.unpublished_segments().await.unwrap(), vec![s1]);

    // redelivery: same identities in a later segment are not indexed again
    let mut dup = b1[0].clone();
    dup.loc.segment_seq = s2;
    let mut later = entry(
        "pg",
        "0000000B/00000001",
        "payments.transfers",
        "t1",
        200,
        s2,
        &[("account_id", "acc2")],
    );
    later.op = Op::Update;
    let tie_a = entry("a-src", "1", "payments.transfers", "t1", 200, s2, &[]);
    let new = cat
        .commit(CommitBatch {
            segment_seq: Some(s2),
            entries: vec![dup, later.clone(), tie_a.clone()],
            progress: vec![progress("pg", "B/1", 200), progress("kafka", "0:1", 50)],
            quarantined: 0,
            now_us: 2000,
        })
        .await
        .unwrap();
    assert_eq!(
        new,
        vec![false, true, true],
        "the first commit of an identity wins"
    );

    // time travel: order by (time, source, position), bounded by up_to inclusive
    let h = cat
        .record_updates("payments.transfers", "t1", i64::MAX)
        .await
        .unwrap();
    let order: Vec<_> = h
        .iter()
        .map(|e| (e.event_time_us, e.source.as_str()))
        .collect();
    assert_eq!(order, vec![(100, "pg"), (200, "a-src"), (200, "pg")]);
    assert_eq!(
        h[0], b1[0],
        "stored entry reads back identical (location of the first commit)"
    );
    assert_eq!(
        cat.record_updates("payments.transfers", "t1", 199)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        cat.record_updates("payments.transfers", "t1", 200)
            .await
            .unwrap()
            .len(),
        3
    );
    assert!(
        cat.record_updates("payments.transfers", "t1", 99)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        cat.record_updates("payments.transfers", "nope", i64::MAX)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        cat.record_updates("ledger.entries", "t1", i64::MAX)
            .await
            .unwrap()
            .is_empty(),
        "models are separate namespaces"
    );

    // master documents and the reference index
    let m = cat
        .master("payments.transfers", "t1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.updates, 3);
    assert_eq!((m.first_event_us, m.last_event_us), (100, 200));
    assert_eq!(
        m.refs,
        BTreeSet::from([
            ("account_id".into(), "acc1".into()),
            ("account_id".into(), "acc2".into())
        ])
    );
    assert!(
        cat.master("payments.transfers", "zzz")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        cat.records_by_ref("ledger.entries", "transfer_id", "t1")
            .await
            .unwrap(),
        vec!["e1".to_string(), "e2".to_string()]
    );
    assert_eq!(
        cat.records_by_ref("payments.transfers", "account_id", "acc1")
            .await
            .unwrap(),
        vec!["t1".to_string()]
    );
    assert!(
        cat.records_by_ref("ledger.entries", "transfer_id", "t9")
            .await
            .unwrap()
            .is_empty()
    );

    // windows, paged
    let w = cat.updates_in_window(100, 150, None, 100).await.unwrap();
    assert_eq!(w.len(), 4);
    let p1 = cat.updates_in_window(0, i64::MAX, None, 3).await.unwrap();
    let last = p1.last().unwrap();
    let cursor = (
        last.event_time_us,
        last.source.clone(),
        last.position.clone(),
    );
    let p2 = cat
        .updates_in_window(0, i64::MAX, Some(cursor), 100)
        .await
        .unwrap();
    let times: Vec<_> = p1.iter().chain(&p2).map(|e| e.event_time_us).collect();
    assert_eq!(times, vec![100, 100, 105, 106, 200, 200]);

    // progress is monotone per source
    let states: HashMap<_, _> = cat
        .source_states()
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.source.clone(), s))
        .collect();
    assert_eq!(states["pg"].checkpoint, "B/1");
    assert_eq!(states["pg"].watermark_us, 200);
    assert_eq!(
        states["kafka"].watermark_us, 106,
        "an older watermark never moves it back"
    );
    cat.heartbeat("pg", 5000, 6000).await.unwrap();
    cat.heartbeat("pg", 4000, 6001).await.unwrap();
    let pg = cat
        .source_states()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.source == "pg")
        .unwrap();
    assert_eq!((pg.watermark_us, pg.checkpoint.as_str()), (5000, "B/1"));

    // publication ledger and the committed-segment cursor
    assert_eq!(cat.unpublished_segments().await.unwrap(), vec![s1, s2]);
    cat.mark_published(&[s1]).await.unwrap();
    assert_eq!(cat.unpublished_segments().await.unwrap(), vec![s2]);
    assert_eq!(
        cat.committed_segments_after(0, 10).await.unwrap(),
        vec![s1, s2]
    );
    assert_eq!(
        cat.committed_segments_after(s1, 10).await.unwrap(),
        vec![s2]
    );

    // a batch without a segment still moves progress
    cat.commit(CommitBatch {
        segment_seq: None,
        entries: vec![],
        progress: vec![progress("file", "1234", 300)],
        quarantined: 3,
        now_us: 3000,
    })
    .await
    .unwrap();

    // a reservation released by an empty batch is neither pending nor committed
    let empty = cat.reserve_segment().await.unwrap();
    cat.commit(CommitBatch {
        segment_seq: Some(empty),
        quarantined: 2,
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(!cat.pending_segments().await.unwrap().contains(&empty));
    assert!(
        !cat.committed_segments_after(0, 100)
            .await
            .unwrap()
            .contains(&empty)
    );

    // hostile ids are just data
    let s4 = cat.reserve_segment().await.unwrap();
    let hostile: Vec<_> = hostile_ids()
        .into_iter()
        .enumerate()
        .map(|(i, id)| {
            let mut e = entry(
                "h",
                &format!("{i:04}"),
                "odd/../model",
                &id,
                400 + i as i64,
                s4,
                &[("ref", &id)],
            );
            e.record_id = id;
            e
        })
        .collect();
    cat.commit(CommitBatch {
        segment_seq: Some(s4),
        entries: hostile.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    for e in &hostile {
        let h = cat
            .record_updates("odd/../model", &e.record_id, i64::MAX)
            .await
            .unwrap();
        assert_eq!(h, vec![e.clone()], "id {:?} round-trips alone", e.record_id);
        assert_eq!(
            cat.records_by_ref("odd/../model", "ref", &e.record_id)
                .await
                .unwrap(),
            vec![e.record_id.clone()]
        );
    }

    let dump = cat.dump().await.unwrap();
    assert_eq!(dump.entries.len(), 4 + 2 + hostile.len());
    assert!(
        dump.entries
            .windows(2)
            .all(|w| (&w[0].source, &w[0].position) < (&w[1].source, &w[1].position))
    );
    assert!(
        dump.masters
            .windows(2)
            .all(|w| (&w[0].model, &w[0].record_id) < (&w[1].model, &w[1].record_id))
    );

    incident_store_suite(&(cat.clone() as Arc<dyn IncidentStore>)).await;
    let meta = meta_store_suite(&*cat).await;
    segment_ledger_suite(&*cat).await;
    source_progress_suite(&*cat).await;
    let dump = cat.dump().await.unwrap();
    let incidents = cat.incidents(false).await.unwrap();

    // everything survives a reopen
    drop(cat);
    let cat = open().await.expect("reopen catalog");
    assert_eq!(
        cat.dump().await.unwrap(),
        dump,
        "the catalog survives a restart"
    );
    assert_eq!(
        cat.incidents(false).await.unwrap(),
        incidents,
        "incidents survive a restart"
    );
    for (k, v) in &meta {
        assert_eq!(
            cat.get_meta(k).await.unwrap().as_deref(),
            Some(v.as_str()),
            "meta {k:?} survives a restart"
        );
    }
    assert!(cat.pending_segments().await.unwrap().is_empty());
    let s5 = cat.reserve_segment().await.unwrap();
    assert!(s5 > s4, "sequences are not reused after a restart");
    assert_eq!(cat.pending_segments().await.unwrap(), vec![s5]);
    assert_eq!(cat.unpublished_segments().await.unwrap(), vec![s2, s4]);
    // reindex commits segments it did not reserve: the sequence moves past them
    cat.commit(CommitBatch {
        segment_seq: Some(s5 + 100),
        entries: vec![entry("r", "1", "m", "x", 1, s5 + 100, &[])],
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(
        cat.reserve_segment().await.unwrap() > s5 + 100,
        "sequence passes committed segments"
    );
    assert_eq!(
        cat.pending_segments().await.unwrap().len(),
        2,
        "s5 and the new one stay pending"
    );
    let names: Vec<_> = cat
        .source_states()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.source)
        .collect();
    assert_eq!(
        names,
        vec!["file", "kafka", "lanes-only", "pg", "progress-suite"],
        "progress is kept per reporting source, by name"
    );

    updates_after_suite(&*cat, s5 + 200).await;
    ref_updates_suite(&*cat, s5 + 300).await;
    ref_updates_match_the_index(&*cat).await;
    snapshot_suite(&*cat, s5 + 400).await;
}

/// [`SnapshotStore`](overseer_dal::catalog::SnapshotStore): the nearest snapshot at or
/// before a time, the updates after it with the count that validates it, overwrites,
/// clearing. Commits segments `seq`, `seq + 1`.
async fn snapshot_suite(cat: &dyn Catalog, seq: u64) {
    use overseer_dal::update::{Snapshot, SnapshotWrite};
    let (src, model, id) = ("snap\0src/ü", "m/snap", "r \0ü'");
    let e = |pos: &str, t: i64, seq: u64| entry(src, pos, model, id, t, seq, &[]);
    cat.commit(CommitBatch {
        segment_seq: Some(seq),
        entries: vec![
            e("1", 100, seq),
            e("2", 200, seq),
            e("3", 300, seq),
            e("4", 400, seq),
        ],
        ..Default::default()
    })
    .await
    .unwrap();
    // Another record whose id extends this one's, and one in another model.
    cat.commit(CommitBatch {
        segment_seq: Some(seq + 1),
        entries: vec![
            entry(src, "x1", model, &format!("{id}x"), 250, seq + 1, &[]),
            entry(src, "x2", "m/snaq", id, 250, seq + 1, &[]),
        ],
        ..Default::default()
    })
    .await
    .unwrap();
    let snap = |model: &str, id: &str, t: i64, pos: &str, n: u64, body: &[u8]| Snapshot {
        model: model.into(),
        record_id: id.into(),
        event_time_us: t,
        source: src.into(),
        position: pos.into(),
        n,
        fold: u64::MAX - n,
        body: body.to_vec(),
    };
    let write = |snaps: Vec<Snapshot>, clear: Option<(i64, &str)>| SnapshotWrite {
        model: snaps.first().map_or(model, |s| &s.model).to_owned(),
        record_id: snaps.first().map_or(id, |s| &s.record_id).to_owned(),
        clear_up_to: clear.map(|(t, p)| (t, src.to_owned(), p.to_owned())),
        snapshots: snaps,
    };
    let positions = |v: Vec<Snapshot>| v.into_iter().map(|s| (s.position, s.n)).collect::<Vec<_>>();

    // None yet: the whole history, counted from nothing.
    assert_eq!(
        cat.snapshot_at_or_before(model, id, i64::MAX)
            .await
            .unwrap(),
        None
    );
    let from = cat
        .record_updates_from_snapshot(model, id, 350)
        .await
        .unwrap();
    assert_eq!(from.snapshot, None);
    let pos: Vec<_> = from
        .after
        .entries
        .iter()
        .map(|e| e.position.as_str())
        .collect();
    assert_eq!((pos, from.after.at_or_before), (vec!["1", "2", "3"], 0));

    let big = vec![0xa5u8; 100 << 10];
    cat.put_snapshots(&[
        write(
            vec![
                snap(model, id, 200, "2", 2, b"two"),
                snap(model, id, 400, "4", 4, &big),
            ],
            None,
        ),
        write(
            vec![snap(model, &format!("{id}x"), 250, "x1", 1, b"other id")],
            None,
        ),
        write(vec![snap("m/snaq", id, 250, "x2", 1, b"other model")], None),
    ])
    .await
    .unwrap();
    let at = |t: i64| cat.snapshot_at_or_before(model, id, t);
    assert_eq!(at(199).await.unwrap(), None, "none at or before 199");
    assert_eq!(
        at(200).await.unwrap(),
        Some(snap(model, id, 200, "2", 2, b"two"))
    );
    assert_eq!(
        at(399).await.unwrap().unwrap().position,
        "2",
        "the nearest before"
    );
    assert_eq!(
        at(i64::MAX).await.unwrap(),
        Some(snap(model, id, 400, "4", 4, &big)),
        "a 100 KiB body and a fingerprint past i64::MAX round-trip"
    );
    let from = cat
        .record_updates_from_snapshot(model, id, 350)
        .await
        .unwrap();
    assert_eq!(from.snapshot.as_ref().map(|s| s.n), Some(2));
    let pos: Vec<_> = from
        .after
        .entries
        .iter()
        .map(|e| e.position.as_str())
        .collect();
    assert_eq!(
        (pos, from.after.at_or_before),
        (vec!["3"], 2),
        "valid: 2 at or before it"
    );
    assert_eq!(
        positions(cat.snapshots(model, id).await.unwrap()),
        [("2".into(), 2), ("4".into(), 4)]
    );

    // The snapshot as the last update up to the time: nothing after it, its count.
    let from = cat
        .record_updates_from_snapshot(model, id, 400)
        .await
        .unwrap();
    assert_eq!(
        (
            from.snapshot.map(|s| s.n),
            from.after.entries.len(),
            from.after.at_or_before
        ),
        (Some(4), 0, 4)
    );

    // Overwrite: the last write of a key wins, also twice in one call.
    cat.put_snapshots(&[
        write(vec![snap(model, id, 200, "2", 2, b"first")], None),
        write(vec![snap(model, id, 200, "2", 2, b"second")], None),
    ])
    .await
    .unwrap();
    assert_eq!(at(300).await.unwrap().unwrap().body, b"second");

    // An update arriving late before a snapshot: the count says it is stale; a fold of the
    // history replaces it, clearing up to it.
    cat.commit(CommitBatch {
        segment_seq: Some(seq + 1),
        entries: vec![e("late", 150, seq + 1)],
        ..Default::default()
    })
    .await
    .unwrap();
    let from = cat
        .record_updates_from_snapshot(model, id, 350)
        .await
        .unwrap();
    assert_eq!(
        (from.snapshot.map(|s| s.n), from.after.at_or_before),
        (Some(2), 3),
        "stale: 3 updates at or before a snapshot of 2"
    );
    cat.put_snapshots(&[write(
        vec![snap(model, id, 300, "3", 4, b"refolded")],
        Some((200, "2")),
    )])
    .await
    .unwrap();
    assert_eq!(
        positions(cat.snapshots(model, id).await.unwrap()),
        [("3".into(), 4), ("4".into(), 4)]
    );
    // Updates at the snapshot's commit time, ordered before and after it by position.
    cat.commit(CommitBatch {
        segment_seq: Some(seq + 1),
        entries: vec![e("3a", 300, seq + 1), e("3", 300, seq + 1)],
        ..Default::default()
    })
    .await
    .unwrap();
    let from = cat
        .record_updates_from_snapshot(model, id, 300)
        .await
        .unwrap();
    let pos: Vec<_> = from
        .after
        .entries
        .iter()
        .map(|e| e.position.as_str())
        .collect();
    assert_eq!(from.snapshot.map(|s| s.position), Some("3".to_owned()));
    assert_eq!(
        (pos, from.after.at_or_before),
        (vec!["3a"], 4),
        "same time: \"3a\" sorts after \"3\"; the first \"3\" was already indexed"
    );
    // Clearing alone.
    cat.put_snapshots(&[write(vec![], Some((400, "4")))])
        .await
        .unwrap();
    assert_eq!(cat.snapshots(model, id).await.unwrap(), vec![]);
    assert_eq!(
        positions(cat.snapshots(model, &format!("{id}x")).await.unwrap()),
        [("x1".into(), 1)],
        "other records untouched"
    );
    assert_eq!(
        positions(cat.snapshots("m/snaq", id).await.unwrap()),
        [("x2".into(), 1)]
    );
}

/// [`UpdateIndex::ref_updates_after`]: every update of every record that ever referenced a
/// value — also updates before the reference appeared or without it — after a point, and
/// the count at or before it, which grows when an update arrives late or a record starts
/// referencing the value. Commits segments `seq`, `seq + 1`, ….
async fn ref_updates_suite(cat: &dyn Catalog, seq: u64) {
    let up = |pos: &str, id: &str, t: i64, refs: &[(&str, &str)]| {
        entry("ref-src", pos, "rm", id, t, seq, refs)
    };
    let got = |a: RefUpdatesAfter| {
        (
            a.updates
                .iter()
                .map(|u| format!("{}@{}", u.record_id, u.event_time_us))
                .collect::<Vec<_>>(),
            a.at_or_before,
        )
    };
    let q = |value: &'static str, after: Option<(i64, &'static str, &'static str)>, up_to: i64| {
        cat.ref_updates_after("rm", "acc", value, after, up_to)
    };
    let commit = |n: u64, entries: Vec<IndexEntry>| {
        cat.commit(CommitBatch {
            segment_seq: Some(seq + n),
            entries,
            ..Default::default()
        })
    };
    commit(
        0,
        vec![
            up("01", "r1", 100, &[("acc", "A"), ("kind", "x")]),
            // Without the reference (a partial update): still one of r1's.
            up("02", "r1", 200, &[]),
            up("03", "r2", 150, &[("acc", "B")]),
        ],
    )
    .await
    .unwrap();
    // Derived from the indexes first; then kept as an index of its own (built from the
    // history when asked, maintained by every commit after): the same answers.
    for keep in [false, true] {
        if keep {
            cat.keep_ref_updates(&[("rm".into(), "acc".into())])
                .await
                .unwrap();
        }
        assert_eq!(
            got(q("A", None, i64::MAX).await.unwrap()),
            (vec!["r1@100".into(), "r1@200".into()], 0)
        );
        assert_eq!(
            got(q("A", None, 150).await.unwrap()),
            (vec!["r1@100".into()], 0),
            "updates up to the time only"
        );
        assert_eq!(
            got(q("A", Some((100, "ref-src", "01")), i64::MAX)
                .await
                .unwrap()),
            (vec!["r1@200".into()], 1)
        );
        assert_eq!(
            got(q("B", None, i64::MAX).await.unwrap()),
            (vec!["r2@150".into()], 0)
        );
        assert_eq!(
            got(cat
                .ref_updates_after("rm", "kind", "x", None, i64::MAX)
                .await
                .unwrap()),
            (vec!["r1@100".into(), "r1@200".into()], 0),
            "each reference of a record lists all its updates"
        );
        assert_eq!(got(q("Z", None, i64::MAX).await.unwrap()), (vec![], 0));
        assert_eq!(
            got(cat
                .ref_updates_after("nope", "acc", "A", None, i64::MAX)
                .await
                .unwrap()),
            (vec![], 0)
        );
    }

    // r2 starts referencing A: its earlier update joins A's list (before the point a
    // reader saw, so the count grows), the new one lands in both A's and B's.
    commit(1, vec![up("04", "r2", 300, &[("acc", "A")])])
        .await
        .unwrap();
    let seen = Some((200, "ref-src", "02"));
    assert_eq!(
        got(q("A", seen, i64::MAX).await.unwrap()),
        (vec!["r2@300".into()], 3),
        "a reader who saw 2 updates up to r1@200 now finds 3 there: r2's earlier one"
    );
    assert_eq!(
        got(q("B", Some((150, "ref-src", "03")), i64::MAX)
            .await
            .unwrap()),
        (vec!["r2@300".into()], 1),
        "a record that stopped referencing B still lists its updates under B"
    );

    // A late update (earlier commit time) of a member counts at or before later points.
    commit(2, vec![up("05", "r1", 50, &[])]).await.unwrap();
    assert_eq!(
        got(q("A", seen, i64::MAX).await.unwrap()),
        (vec!["r2@300".into()], 4)
    );
    assert_eq!(
        got(q("A", None, i64::MAX).await.unwrap()),
        (
            vec![
                "r1@50".into(),
                "r1@100".into(),
                "r2@150".into(),
                "r1@200".into(),
                "r2@300".into()
            ],
            0
        )
    );
    // A redelivered update adds nothing.
    commit(3, vec![up("05", "r1", 50, &[("acc", "A")])])
        .await
        .unwrap();
    assert_eq!(
        got(q("A", seen, i64::MAX).await.unwrap()),
        (vec!["r2@300".into()], 4)
    );
    // Same time: source, then position (byte order), as `record_updates` orders them.
    commit(
        4,
        vec![
            entry("ref-src", "p\0", "rm", "r3", 400, seq, &[("acc", "A")]),
            entry("ref-src", "p", "rm", "r1", 400, seq, &[]),
            entry("ref-srb", "z", "rm", "r2", 400, seq, &[]),
        ],
    )
    .await
    .unwrap();
    let a = q("A", Some((300, "ref-src", "04")), i64::MAX)
        .await
        .unwrap();
    let keys: Vec<_> = a
        .updates
        .iter()
        .map(|u| (u.source.as_str(), u.position.as_str(), u.record_id.as_str()))
        .collect();
    assert_eq!(
        keys,
        [
            ("ref-srb", "z", "r2"),
            ("ref-src", "p", "r1"),
            ("ref-src", "p\0", "r3")
        ]
    );
    assert_eq!(a.at_or_before, 5);
}

/// Every reference's list from [`UpdateIndex::ref_updates_after`] is what the reference
/// index and the record index imply: the updates of the records that ever referenced it.
async fn ref_updates_match_the_index(cat: &dyn Catalog) {
    let dump = cat.dump().await.unwrap();
    let mut by_record: BTreeMap<(&str, &str), Vec<&IndexEntry>> = BTreeMap::new();
    for e in &dump.entries {
        by_record
            .entry((&e.model, &e.record_id))
            .or_default()
            .push(e);
    }
    let mut values: BTreeMap<(&str, &str, &str), Vec<&str>> = BTreeMap::new();
    for (m, n, v, id) in &dump.refs {
        values.entry((m, n, v)).or_default().push(id);
    }
    for ((m, n, v), ids) in values {
        let mut want: Vec<(i64, String, String, String)> = ids
            .iter()
            .flat_map(|id| by_record.get(&(m, *id)).into_iter().flatten())
            .map(|e| {
                (
                    e.event_time_us,
                    e.source.clone(),
                    e.position.clone(),
                    e.record_id.clone(),
                )
            })
            .collect();
        want.sort();
        let got = cat
            .ref_updates_after(m, n, v, None, i64::MAX)
            .await
            .unwrap();
        assert_eq!(got.at_or_before, 0, "{m}/{n}={v:?}");
        let got: Vec<_> = got
            .updates
            .into_iter()
            .map(|u| (u.event_time_us, u.source, u.position, u.record_id))
            .collect();
        assert_eq!(
            got, want,
            "updates of the records referencing {m}/{n}={v:?}"
        );
        if let Some(last) = got.last() {
            let after = Some((last.0, last.1.as_str(), last.2.as_str()));
            let rest = cat
                .ref_updates_after(m, n, v, after, i64::MAX)
                .await
                .unwrap();
            assert!(rest.updates.is_empty());
            assert_eq!(rest.at_or_before, got.len() as u64, "{m}/{n}={v:?}");
        }
    }
}

/// [`UpdateIndex::record_updates_after`]: the updates after a point of a record's history
/// and the count at or before it, which grows when an update arrives late (with an earlier
/// commit time). Commits segments `seq` and `seq + 1` (unreserved, as reindex does).
async fn updates_after_suite(cat: &dyn Catalog, seq: u64) {
    let late = |pos: &str, t: i64, seq: u64| entry("late-src", pos, "m", "late", t, seq, &[]);
    let after = |t: i64, pos: &'static str| (t, "late-src", pos);
    let got = |a: UpdatesAfter| {
        (
            a.entries
                .iter()
                .map(|e| e.position.clone())
                .collect::<Vec<_>>(),
            a.at_or_before,
        )
    };
    cat.commit(CommitBatch {
        segment_seq: Some(seq),
        entries: vec![late("1", 100, seq), late("2", 300, seq)],
        ..Default::default()
    })
    .await
    .unwrap();
    let q = |a: (i64, &'static str, &'static str), up_to: i64| {
        cat.record_updates_after("m", "late", a, up_to, None)
    };
    assert_eq!(
        got(q(after(100, "1"), i64::MAX).await.unwrap()),
        (vec!["2".into()], 1)
    );
    assert_eq!(
        got(q(after(100, "1"), 299).await.unwrap()),
        (vec![], 1),
        "entries up to the time only; the count is of the whole history"
    );
    assert_eq!(
        got(q(after(300, "2"), i64::MAX).await.unwrap()),
        (vec![], 2)
    );
    assert_eq!(
        got(q((i64::MIN, "", ""), i64::MAX).await.unwrap()),
        (vec!["1".into(), "2".into()], 0)
    );
    // Same time: ordered by source, then position, like `record_updates`.
    assert_eq!(
        got(q((300, "late-src", "1"), i64::MAX).await.unwrap()),
        (vec!["2".into()], 1)
    );
    assert_eq!(
        got(q((300, "late-srd", ""), i64::MAX).await.unwrap()),
        (vec![], 2)
    );

    // An update committed later with an earlier commit time lands inside the history.
    cat.commit(CommitBatch {
        segment_seq: Some(seq + 1),
        entries: vec![late("3", 200, seq + 1)],
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        got(q(after(100, "1"), i64::MAX).await.unwrap()),
        (vec!["3".into(), "2".into()], 1)
    );
    assert_eq!(
        got(q(after(300, "2"), i64::MAX).await.unwrap()),
        (vec![], 3),
        "a fold of the 2 updates up to 300 is stale: 3 are at or before it now"
    );
    // A caller that saw 2 then is told 3 (an update came late since), whether the backend
    // counts or knows; before the late one, a count seen still holds.
    let seen = |a: (i64, &'static str, &'static str), up_to: i64, n: u64| {
        cat.record_updates_after("m", "late", a, up_to, Some(n))
    };
    assert_eq!(
        got(seen(after(300, "2"), i64::MAX, 2).await.unwrap()),
        (vec![], 3)
    );
    assert_eq!(
        got(seen(after(100, "1"), 250, 1).await.unwrap()),
        (vec!["3".into()], 1)
    );
    cat.commit(CommitBatch {
        segment_seq: Some(seq + 1),
        entries: vec![late("4", 400, seq + 1)],
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        got(seen(after(300, "2"), i64::MAX, 3).await.unwrap()),
        (vec!["4".into()], 3),
        "an update after the newest: the count seen holds"
    );
    assert_eq!(
        got(seen(after(300, "2"), 350, 3).await.unwrap()),
        (vec![], 3),
        "up to a time before the rest"
    );
    assert_eq!(
        got(cat
            .record_updates_after("m", "nope", after(0, ""), i64::MAX, None)
            .await
            .unwrap()),
        (vec![], 0)
    );
    // Byte order of positions, as `record_updates` orders them: a prefix first, then NUL,
    // then the rest, non-ASCII last.
    let at = |pos: &str| entry("late-src", pos, "m", "ord", 500, seq + 1, &[]);
    cat.commit(CommitBatch {
        segment_seq: Some(seq + 2),
        entries: ["é", "pa", "p\0", "p"].map(at).to_vec(),
        ..Default::default()
    })
    .await
    .unwrap();
    let all = cat.record_updates("m", "ord", i64::MAX).await.unwrap();
    let order: Vec<_> = all.iter().map(|e| e.position.as_str()).collect();
    assert_eq!(order, ["p", "p\0", "pa", "é"]);
    assert_eq!(
        got(cat
            .record_updates_after("m", "ord", (500, "late-src", "p"), i64::MAX, None)
            .await
            .unwrap()),
        (vec!["p\0".into(), "pa".into(), "é".into()], 1)
    );
}

fn incident(check: &str, subject: &str, failing: bool, notified_failing: bool) -> Incident {
    Incident {
        check: check.into(),
        subject: subject.into(),
        failing,
        notified_failing,
        last_eval_us: 1_000,
        since_us: 900,
        message: if failing {
            format!("{check} failed for {subject}")
        } else {
            String::new()
        },
        details: r#"{"evidence":[1,2,3]}"#.into(),
        updated_us: 5_000,
        version: 0,
        notified_eval_us: if notified_failing { 950 } else { 0 },
        sending_until_us: 0,
        rearm_eval_us: if failing { 0 } else { 1_100 },
    }
}

/// Writes `inc` (at its read version) and returns it as stored.
async fn put_ok(cat: &Arc<dyn IncidentStore>, inc: &Incident) -> Incident {
    let v = cat
        .put_incident(inc)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("write of {:?}/{:?} conflicts", inc.check, inc.subject));
    assert_eq!(v, inc.version + 1, "a write stores the read version + 1");
    Incident {
        version: v,
        ..inc.clone()
    }
}

/// [`IncidentStore`] on a store that holds no incidents yet: compare-and-set, the outbox,
/// listing, hostile keys, and eight racing read-modify-write tasks of which no write is
/// lost.
pub async fn incident_store_suite(cat: &Arc<dyn IncidentStore>) {
    assert_eq!(cat.incident("c", "s").await.unwrap(), None);
    assert!(cat.incidents(false).await.unwrap().is_empty());
    assert!(cat.unsettled_incidents(10).await.unwrap().is_empty());

    // round trip, version increments
    let mut first = incident("balance", "wallet/1", true, false);
    first.message = "débit ≠ crédit\n\0".into();
    first.details = r#"{"diff":"-100","ids":["e1","e2"]}"#.into();
    first.last_eval_us = i64::MAX;
    first.since_us = i64::MIN;
    first.updated_us = -1;
    first.notified_eval_us = i64::MIN + 1;
    first.sending_until_us = i64::MAX - 1;
    first.rearm_eval_us = 77;
    let stored = put_ok(cat, &first).await;
    assert_eq!(stored.version, 1);
    assert_eq!(
        cat.incident("balance", "wallet/1").await.unwrap(),
        Some(stored.clone()),
        "an incident reads back identical, at version 1"
    );
    let mut settled = stored.clone();
    settled.notified_failing = true;
    settled.notified_eval_us = 42;
    settled.sending_until_us = 0;
    settled.rearm_eval_us = 0;
    let settled = put_ok(cat, &settled).await;
    assert_eq!(settled.version, 2);
    assert_eq!(
        cat.incident("balance", "wallet/1").await.unwrap(),
        Some(settled.clone())
    );

    // stale, future and create-over-existing writes conflict and change nothing
    for v in [0, 1, 3, 77] {
        let stale = Incident {
            version: v,
            message: "stale".into(),
            ..settled.clone()
        };
        assert_eq!(
            cat.put_incident(&stale).await.unwrap(),
            None,
            "a write at version {v} conflicts with stored version 2"
        );
    }
    let absent = Incident {
        version: 1,
        ..incident("balance", "nowhere", true, false)
    };
    assert_eq!(
        cat.put_incident(&absent).await.unwrap(),
        None,
        "an absent incident is at version 0"
    );
    assert_eq!(cat.incident("balance", "nowhere").await.unwrap(), None);
    assert_eq!(
        cat.incident("balance", "wallet/1").await.unwrap(),
        Some(settled.clone()),
        "conflicting writes change nothing"
    );

    // two writers at the same read version, concurrently: exactly one wins
    let update_base = Incident {
        check: "race-update".into(),
        version: 0,
        ..settled.clone()
    };
    let update_base = put_ok(cat, &update_base).await;
    for base in [update_base, incident("race-create", "s", false, false)] {
        let check = base.check.as_str();
        let a = Incident {
            message: "writer a".into(),
            failing: true,
            ..base.clone()
        };
        let b = Incident {
            message: "writer b".into(),
            notified_failing: !base.notified_failing,
            ..base.clone()
        };
        let (ra, rb) = tokio::join!(cat.put_incident(&a), cat.put_incident(&b));
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        let winner = match (ra, rb) {
            (Some(v), None) => Incident { version: v, ..a },
            (None, Some(v)) => Incident { version: v, ..b },
            other => panic!("{check}: exactly one of two writers at one version wins: {other:?}"),
        };
        assert_eq!(winner.version, base.version + 1);
        assert_eq!(
            cat.incident(check, &base.subject).await.unwrap(),
            Some(winner),
            "{check}: the stored value is the winner's"
        );
    }

    // hostile checks and subjects: round-trip, never collide (components are not joined
    // with a separator an id may contain)
    let mut written: BTreeMap<(String, String), Incident> = BTreeMap::new();
    for inc in cat.incidents(false).await.unwrap() {
        written.insert((inc.check.clone(), inc.subject.clone()), inc);
    }
    let mut keys: Vec<(String, String)> = [
        ("a\0b", "c"),
        ("a", "b\0c"),
        ("a\0", "b"),
        ("a", "\0b"),
        ("ab", ""),
        ("a", "b"),
        ("", "ab"),
    ]
    .iter()
    .map(|(c, s)| (c.to_string(), s.to_string()))
    .collect();
    for h in hostile_ids() {
        keys.push((h.clone(), "s".into()));
        keys.push(("c".into(), h.clone()));
        keys.push((h.clone(), h));
    }
    for (i, (c, s)) in keys.iter().enumerate() {
        // a varied mix of states for the listings below
        let mut inc = incident(c, s, i % 3 != 0, i % 2 == 0);
        inc.message = format!("{i}: {c}|{s}");
        inc.details = s.clone();
        inc.last_eval_us = i as i64;
        let stored = put_ok(cat, &inc).await;
        assert!(
            written.insert((c.clone(), s.clone()), stored).is_none(),
            "test keys are distinct"
        );
    }
    for ((c, s), want) in &written {
        assert_eq!(
            cat.incident(c, s).await.unwrap().as_ref(),
            Some(want),
            "incident {c:?}/{s:?} round-trips and is not overwritten by another key"
        );
    }

    // listings: ordered by (check, subject) as Rust orders strings, filtered, limited
    let all: Vec<Incident> = written.values().cloned().collect();
    assert_eq!(cat.incidents(false).await.unwrap(), all);
    let failing: Vec<Incident> = all.iter().filter(|i| i.failing).cloned().collect();
    assert!(!failing.is_empty() && failing.len() < all.len());
    assert_eq!(cat.incidents(true).await.unwrap(), failing);
    let rearmed: Vec<Incident> = all
        .iter()
        .filter(|i| i.rearm_eval_us != 0)
        .cloned()
        .collect();
    assert!(!rearmed.is_empty() && rearmed.len() < all.len());
    assert_eq!(
        cat.rearmed_incidents().await.unwrap(),
        rearmed,
        "the re-armed ones, in order"
    );
    let unsettled: Vec<Incident> = all.iter().filter(|i| i.unsettled()).cloned().collect();
    assert!(unsettled.len() > 3 && unsettled.len() < all.len());
    assert_eq!(
        cat.unsettled_incidents(usize::MAX).await.unwrap(),
        unsettled
    );
    assert_eq!(cat.unsettled_incidents(3).await.unwrap(), unsettled[..3]);
    assert!(cat.unsettled_incidents(0).await.unwrap().is_empty());
    // settling leaves the outbox; a new verdict enters it
    let mut done = unsettled[0].clone();
    done.notified_failing = done.failing;
    put_ok(cat, &done).await;
    let mut owed = all.iter().find(|i| !i.unsettled()).unwrap().clone();
    owed.failing = !owed.failing;
    let owed = put_ok(cat, &owed).await;
    let outbox = cat.unsettled_incidents(usize::MAX).await.unwrap();
    assert!(
        !outbox
            .iter()
            .any(|i| (&i.check, &i.subject) == (&done.check, &done.subject))
    );
    assert!(
        outbox.contains(&owed),
        "a new verdict is owed to the target"
    );
    assert_eq!(outbox.len(), unsettled.len());
    assert!(
        outbox
            .windows(2)
            .all(|w| (&w[0].check, &w[0].subject) < (&w[1].check, &w[1].subject))
    );
    assert_eq!(
        cat.incidents(true).await.unwrap().contains(&owed),
        owed.failing,
        "the failing list follows the latest verdict"
    );

    incident_race(cat).await;
}

/// [`MetaStore`] on a store with no values yet: absent, round trip, overwrite, first
/// value kept by `init_meta`, hostile keys and values. Returns the values written, for checking after a restart.
pub async fn meta_store_suite(cat: &dyn MetaStore) -> Vec<(String, String)> {
    assert_eq!(cat.get_meta("runner.cursor").await.unwrap(), None);
    cat.put_meta("runner.cursor", "17").await.unwrap();
    assert_eq!(
        cat.get_meta("runner.cursor").await.unwrap().as_deref(),
        Some("17")
    );
    cat.put_meta("runner.cursor", "18").await.unwrap();
    assert_eq!(
        cat.get_meta("runner.cursor").await.unwrap().as_deref(),
        Some("18"),
        "put_meta overwrites"
    );
    // init_meta: the first value stays, whoever comes later.
    assert_eq!(cat.init_meta("store_claim", "a").await.unwrap(), "a");
    assert_eq!(cat.init_meta("store_claim", "b").await.unwrap(), "a");
    assert_eq!(cat.init_meta("runner.cursor", "0").await.unwrap(), "18");
    let mut meta = vec![
        ("runner.cursor".to_string(), "18".to_string()),
        ("store_claim".to_string(), "a".to_string()),
    ];
    for (i, h) in hostile_ids().into_iter().enumerate() {
        meta.push((format!("h{i}/{h}"), h.clone()));
        meta.push((h.clone(), format!("{i}:{h}")));
    }
    for (k, v) in &meta {
        cat.put_meta(k, v).await.unwrap();
    }
    for (k, v) in &meta {
        assert_eq!(
            cat.get_meta(k).await.unwrap().as_deref(),
            Some(v.as_str()),
            "meta {k:?} round-trips"
        );
    }
    assert_eq!(cat.get_meta("runner.cursor\0").await.unwrap(), None);
    assert_eq!(cat.get_meta("runner").await.unwrap(), None);
    meta
}

/// Eight tasks increment a counter kept in one incident's message, 25 times each, by
/// read-modify-write with retry on conflict: no increment is lost.
async fn incident_race(cat: &Arc<dyn IncidentStore>) {
    const TASKS: u64 = 8;
    const ROUNDS: u64 = 25;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..TASKS {
        let cat = cat.clone();
        tasks.spawn(async move {
            let mut conflicts = 0u64;
            for _ in 0..ROUNDS {
                loop {
                    let cur = cat
                        .incident("race", "counter")
                        .await
                        .unwrap()
                        .unwrap_or_else(|| incident("race", "counter", false, false));
                    let n: u64 = if cur.message.is_empty() {
                        0
                    } else {
                        cur.message.parse().unwrap()
                    };
                    let next = Incident {
                        message: (n + 1).to_string(),
                        ..cur
                    };
                    if cat.put_incident(&next).await.unwrap().is_some() {
                        break;
                    }
                    conflicts += 1;
                }
            }
            conflicts
        });
    }
    let mut conflicts = 0;
    while let Some(c) = tasks.join_next().await {
        conflicts += c.expect("race task");
    }
    let fin = cat.incident("race", "counter").await.unwrap().unwrap();
    println!("incident race: {conflicts} conflicts retried");
    assert_eq!(
        (fin.message.as_str(), fin.version),
        ("200", TASKS * ROUNDS),
        "every read-modify-write is applied exactly once"
    );
}

/// Runs the bus suite: `group` must be a fresh consumer group name for this bus, which must
/// buffer at least 200 notifications per group (they are published before any is read).
pub async fn bus_suite(bus: &dyn Bus, group: &str) {
    let mut sub = bus.subscribe(group).await.unwrap();
    let mut other = bus.subscribe(&format!("{group}-other")).await.unwrap();
    let notes: Vec<UpdateNotification> = (0..200)
        .map(|i| UpdateNotification {
            model: "m".into(),
            record_id: format!("r{}", i % 7),
            source: "s".into(),
            position: format!("{i:06}"),
            event_time_us: i,
            segment_seq: 1,
            ..Default::default()
        })
        .collect();
    bus.publish(&notes[..150]).await.unwrap();
    bus.publish(&notes[150..]).await.unwrap();
    for s in [&mut sub, &mut other] {
        let mut got = Vec::new();
        while got.len() < notes.len() {
            let batch = tokio::time::timeout(std::time::Duration::from_secs(30), s.recv(64))
                .await
                .expect("notifications arrive within 30 s")
                .unwrap();
            got.extend(batch);
        }
        assert_eq!(
            got.len(),
            notes.len(),
            "each group sees every notification once"
        );
        // per record, publication order is kept
        let mut per: HashMap<String, Vec<i64>> = HashMap::new();
        for d in &got {
            per.entry(d.note.record_id.clone())
                .or_default()
                .push(d.note.event_time_us);
        }
        for (r, times) in per {
            assert!(times.windows(2).all(|w| w[0] < w[1]), "order kept for {r}");
        }
        let tags: Vec<_> = got.iter().map(|d| d.tag.clone()).collect();
        s.commit(&tags).await.unwrap();
    }
}
