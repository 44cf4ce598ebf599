//! The PostgreSQL catalog against a real, throwaway PostgreSQL 15 (`scripts/postgres.sh`).
//! Each test starts its own server and uses its own schemas; a server that cannot start
//! fails the test with the script's output.

use overseer_dal::catalog::prelude::*;
use std::sync::Arc;
use std::time::Instant;

use overseer_dal::catalog::DynCatalog;
use overseer_dal::catalog::postgres::PgCatalog;
use overseer_dal::update::{CommitBatch, Incident, IndexEntry, Op, Progress, UpdateLoc};
use overseer_testkit::conformance::{OpenCatalog, catalog_suite};
use overseer_testkit::{Server, unique_name};

fn pg() -> (Server, String) {
    let server = Server::start("postgres");
    let url = server.var("PG_URL").to_owned();
    (server, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite() {
    let (_server, url) = pg();
    let schema = unique_name("cat_suite");
    let open: OpenCatalog = Box::new(move || {
        let (url, schema) = (url.clone(), schema.clone());
        Box::pin(async move {
            let cat: DynCatalog = Arc::new(PgCatalog::connect(&url, &schema).await?);
            Ok(cat)
        })
    });
    catalog_suite(open).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_connects_race_the_migrations() {
    let (_server, url) = pg();
    let schema = unique_name("cat_race");
    let cats = futures::future::join_all((0..4).map(|_| PgCatalog::connect(&url, &schema))).await;
    let cats: Vec<PgCatalog> = cats
        .into_iter()
        .map(|c| c.expect("every instance connects and finds the schema migrated"))
        .collect();
    // They share one catalog: reservations from all of them are distinct and visible to all.
    let mut seqs = Vec::new();
    for c in &cats {
        seqs.push(c.reserve_segment().await.unwrap());
    }
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        cats.len(),
        "distinct sequence numbers: {seqs:?}"
    );
    assert_eq!(cats[0].pending_segments().await.unwrap(), sorted);
    // Connecting again to a migrated schema applies nothing and works.
    let again = PgCatalog::connect(&url, &schema).await.unwrap();
    assert_eq!(again.pending_segments().await.unwrap(), sorted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_at_migration_1_is_migrated_forward() {
    let (_server, url) = pg();
    let schema = unique_name("cat_upgrade");
    let cat = PgCatalog::connect(&url, &schema).await.unwrap();
    let seq = cat.reserve_segment().await.unwrap();
    drop(cat);
    // Take the schema back to what a build with only migration 1 left behind.
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(&format!(
            "DROP TABLE \"{schema}\".incidents, \"{schema}\".meta_kv, \"{schema}\".snapshots, \
                 \"{schema}\".source_lanes; \
             DELETE FROM \"{schema}\".schema_migrations WHERE version >= 2;"
        ))
        .await
        .unwrap();

    let cat = PgCatalog::connect(&url, &schema).await.unwrap();
    assert_eq!(
        cat.pending_segments().await.unwrap(),
        vec![seq],
        "data of the older schema is kept"
    );
    let inc = Incident {
        check: "c".into(),
        subject: "s".into(),
        failing: true,
        ..Default::default()
    };
    assert_eq!(cat.put_incident(&inc).await.unwrap(), Some(1));
    assert_eq!(cat.unsettled_incidents(10).await.unwrap().len(), 1);
    cat.put_meta("cursor", "1").await.unwrap();
    assert_eq!(cat.get_meta("cursor").await.unwrap().as_deref(), Some("1"));
    let versions: Vec<i32> = client
        .query(
            &format!("SELECT version FROM \"{schema}\".schema_migrations ORDER BY version"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, vec![1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(cat.snapshots("m", "r").await.unwrap(), vec![]);
    cat.heartbeat("src", 10, 1).await.unwrap();
    cat.claim_lanes("src", &[("t/0".into(), 20)], &[], 2)
        .await
        .unwrap();
    assert_eq!(cat.source_states().await.unwrap()[0].watermark_us, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incidents_stored_before_migration_4_read_as_told_nothing_and_owed_no_run() {
    let (_server, url) = pg();
    let schema = unique_name("cat_incident_upgrade");
    drop(PgCatalog::connect(&url, &schema).await.unwrap());
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    // A schema at migration 3 with an open, notified incident in it.
    client
        .batch_execute(&format!(
            "ALTER TABLE \"{schema}\".incidents DROP COLUMN notified_eval_us, \
                 DROP COLUMN sending_until_us, DROP COLUMN rearm_eval_us; \
             DELETE FROM \"{schema}\".schema_migrations WHERE version >= 4; \
             DROP INDEX IF EXISTS \"{schema}\".incidents_rearmed; \
             DROP TABLE \"{schema}\".source_lanes; \
             INSERT INTO \"{schema}\".incidents VALUES \
                 ('c', 's', true, true, 30, 20, 'm', '{{}}', 40, 2);"
        ))
        .await
        .unwrap();
    let cat = PgCatalog::connect(&url, &schema).await.unwrap();
    let inc = cat.incident("c", "s").await.unwrap().unwrap();
    assert!(
        inc.failing && inc.notified_failing && inc.version == 2,
        "{inc:?}"
    );
    assert_eq!(
        (
            inc.notified_eval_us,
            inc.sending_until_us,
            inc.rearm_eval_us
        ),
        (0, 0, 0)
    );
    // and it is written like any other
    let next = Incident {
        notified_eval_us: 30,
        ..inc
    };
    assert_eq!(cat.put_incident(&next).await.unwrap(), Some(3));
    assert_eq!(
        cat.incident("c", "s")
            .await
            .unwrap()
            .unwrap()
            .notified_eval_us,
        30
    );
}

fn entry(i: usize, seq: u64) -> IndexEntry {
    IndexEntry {
        source: format!("src{}", i % 3),
        position: format!("{i:08}"),
        model: "ledger.entries".into(),
        record_id: format!("e{}", i % 1000),
        op: Op::Update,
        event_time_us: 1_000 + i as i64,
        ingest_time_us: 2_000 + i as i64,
        loc: UpdateLoc {
            segment_seq: seq,
            offset: i as u32 * 100,
            len: 100,
        },
        refs: vec![
            ("transfer_id".into(), format!("t{}", i % 500)),
            ("account_id".into(), format!("a{}", i % 7)),
        ],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_commit_uses_the_multi_row_path() {
    const N: usize = 5_000;
    let (_server, url) = pg();
    let cat = PgCatalog::connect(&url, &unique_name("cat_big"))
        .await
        .unwrap();
    let seq = cat.reserve_segment().await.unwrap();
    let entries: Vec<IndexEntry> = (0..N).map(|i| entry(i, seq)).collect();
    let ids: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e.source.as_str(), e.position.as_str()))
        .collect();
    assert_eq!(cat.filter_new(&ids).await.unwrap(), vec![true; N]);

    // The batch also carries a redelivery of its own first entry: only the first counts.
    let mut batch_entries = entries.clone();
    batch_entries.push(entries[0].clone());
    let started = Instant::now();
    let new = cat
        .commit(CommitBatch {
            segment_seq: Some(seq),
            entries: batch_entries,
            progress: vec![
                Progress {
                    source: "src0".into(),
                    checkpoint: "a".into(),
                    watermark_us: 10,
                    last_event_us: 10,
                    lanes: vec![("t/0".into(), 30), ("t/1".into(), 12)],
                },
                Progress {
                    source: "src0".into(),
                    checkpoint: "b".into(),
                    watermark_us: 5,
                    last_event_us: 20,
                    lanes: vec![("t/1".into(), 15), ("t/0".into(), 25)],
                },
            ],
            quarantined: 0,
            now_us: 42,
        })
        .await
        .unwrap();
    println!("commit of {N} entries: {:?}", started.elapsed());
    let mut expected = vec![true; N];
    expected.push(false);
    assert_eq!(
        new, expected,
        "each identity is new once, within a batch too"
    );
    assert_eq!(cat.filter_new(&ids).await.unwrap(), vec![false; N]);
    assert_eq!(cat.unpublished_segments().await.unwrap(), vec![seq]);

    let state = cat.source_states().await.unwrap();
    assert_eq!(state.len(), 1);
    assert_eq!(
        (
            state[0].checkpoint.as_str(),
            state[0].watermark_us,
            state[0].last_event_us
        ),
        ("b", 15, 20),
        "progress reported twice in one batch folds monotonically; the source is complete \
         up to its lowest lane when that is higher than its own record"
    );
    assert_eq!(
        cat.lane_claims("src0").await.unwrap(),
        vec![("t/0".to_string(), 30), ("t/1".to_string(), 15)],
        "lane claims in one batch fold monotonically too"
    );

    // Masters aggregate the batch: 1000 records, 5 updates each.
    let m = cat.master("ledger.entries", "e7").await.unwrap().unwrap();
    assert_eq!(m.updates, 5);
    assert_eq!((m.first_event_us, m.last_event_us), (1_007, 1_000 + 4_007));
    assert_eq!(
        cat.records_by_ref("ledger.entries", "transfer_id", "t3")
            .await
            .unwrap(),
        vec!["e3".to_string(), "e503".to_string()],
        "transfer t3 is referenced by entries 3, 503, 1003, ... of records e3 and e503"
    );
    let dump = cat.dump().await.unwrap();
    assert_eq!(dump.entries.len(), N);
    assert_eq!(dump.masters.len(), 1_000);
    // Per record: one transfer_id (i % 500 is the same for its 5 entries) and five
    // account_ids (1000 % 7 != 0, so its 5 entries hit 5 different i % 7).
    assert_eq!(dump.refs.len(), 1_000 * 6);
    assert_eq!(m.refs.len(), 6);

    // Redelivering the whole batch in a later segment changes nothing.
    let seq2 = cat.reserve_segment().await.unwrap();
    let again: Vec<IndexEntry> = (0..N).map(|i| entry(i, seq2)).collect();
    let new = cat
        .commit(CommitBatch {
            segment_seq: Some(seq2),
            entries: again,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(new, vec![false; N]);
    assert_eq!(cat.dump().await.unwrap(), dump, "redelivery is harmless");

    // Windows page through everything in time order.
    let mut seen = 0;
    let mut after = None;
    loop {
        let page = cat
            .updates_in_window(0, i64::MAX, after.clone(), 777)
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = Some((
            last.event_time_us,
            last.source.clone(),
            last.position.clone(),
        ));
        seen += page.len();
    }
    assert_eq!(seen, N);

    // A heartbeat from a source that never delivered an event gives it a watermark.
    cat.heartbeat("idle", 77, 78).await.unwrap();
    let idle = cat.source_states().await.unwrap();
    let idle = idle.iter().find(|s| s.source == "idle").unwrap();
    assert_eq!(
        (idle.checkpoint.as_str(), idle.watermark_us, idle.updated_us),
        ("", 77, 78)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_is_transient_and_recovered() {
    let (_server, url) = pg();
    let schema = unique_name("cat_lost");
    let cat = PgCatalog::connect(&url, &schema).await.unwrap();
    cat.reserve_segment().await.unwrap();
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    // Kill every other backend: the catalog's connections die under it.
    client
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'",
            &[],
        )
        .await
        .unwrap();
    // The first calls may fail (transiently) while the death is noticed; then it reconnects.
    let mut recovered = false;
    for _ in 0..10 {
        match cat.pending_segments().await {
            Ok(p) => {
                assert_eq!(p.len(), 1);
                recovered = true;
                break;
            }
            Err(e) => {
                println!("after the kill: {e}");
                assert!(e.is_transient(), "a lost connection is transient: {e}");
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(recovered, "the catalog reconnects");
    // The transaction connection recovers too.
    let mut recovered = false;
    for _ in 0..10 {
        match cat.dump().await {
            Ok(_) => {
                recovered = true;
                break;
            }
            Err(e) => {
                println!("after the kill: {e}");
                assert!(e.is_transient(), "a lost connection is transient: {e}");
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(recovered, "the transaction connection reconnects");
}

#[tokio::test]
async fn invalid_schema_names_are_refused_before_connecting() {
    for bad in ["", "a-b", "x\"; DROP SCHEMA public; --", "1abc"] {
        let err = PgCatalog::connect("host=127.0.0.1 port=1", bad)
            .await
            .unwrap_err();
        assert!(!err.is_transient(), "{bad:?}: {err}");
        assert!(err.to_string().contains("schema"), "{bad:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_went_away_gives_transient_errors() {
    let (server, url) = pg();
    let cat = PgCatalog::connect(&url, &unique_name("cat_gone"))
        .await
        .unwrap();
    cat.reserve_segment().await.unwrap();
    drop(server); // immediate shutdown
    let err = cat.pending_segments().await.unwrap_err();
    assert!(err.is_transient(), "reads: {err}");
    let err = cat.reserve_segment().await.unwrap_err();
    assert!(err.is_transient(), "reconnecting: {err}");
    let err = cat
        .commit(CommitBatch {
            segment_seq: None,
            entries: vec![entry(1, 1)],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(err.is_transient(), "commits: {err}");
}

/// A catalog error keeps the driver's error as its source, so callers decide on codes
/// (SQLSTATE), not on text: a database that does not exist is a definite error whose
/// source says `3D000` (invalid_catalog_name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_keep_the_drivers_error_and_its_sqlstate() {
    let (_server, url) = pg();
    let missing = format!("{url} dbname=no_such_database_{}", unique_name("db"));
    let err = PgCatalog::connect(&missing, "overseer").await.unwrap_err();
    assert!(!err.is_transient(), "{err}");
    let pg = err
        .source_as::<tokio_postgres::Error>()
        .unwrap_or_else(|| panic!("the driver's error is kept: {err:?}"));
    assert_eq!(
        pg.code(),
        Some(&tokio_postgres::error::SqlState::INVALID_CATALOG_NAME),
        "{err}"
    );
    assert!(
        std::error::Error::source(&err).is_some(),
        "exposed through Error::source too"
    );
}
