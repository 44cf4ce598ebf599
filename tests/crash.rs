//! Crash test on real components: a PostgreSQL logical-replication source and a Kafka
//! source stream 100k changes while the `overseer ingest` process is killed with SIGKILL
//! at random points. After a final clean run, every change is in the history exactly once,
//! nothing is missing, and the catalog equals a `reindex` of the object store.
//!
//! Every part is real: PostgreSQL 15 (the WAL source and the catalog, one throwaway
//! cluster), the tansu broker (the CDC topic and the events topic) and the garage S3 server
//! (the object store), all started by the project's scripts; the test fails with the reason
//! if they cannot be.

mod common;

use overseer_dal::catalog::prelude::*;
use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::producer::{FutureProducer, FutureRecord};

use overseer_dal::bus::Bus;
use overseer_dal::bus::kafka::KafkaBus;
use overseer_dal::catalog::postgres::PgCatalog;
use overseer_dal::config::KafkaBusConfig;
use overseer_testkit::{Server, unique_name};

const PG_CHANGES: usize = 50_000;
const KAFKA_CHANGES: usize = 50_000;
const KILLS: usize = 6;

fn config(s3: &Server, prefix: &str, schema: &str, brokers: &str) -> String {
    format!(
        r#"
[store]
kind = "s3"
bucket = "{bucket}"
prefix = "{prefix}"
endpoint = "{endpoint}"
region = "{region}"
path_style = true

[bus]
kind = "kafka"
brokers = "{brokers}"
topic = "overseer.events"

[catalog]
kind = "postgres"
url_env = "CRASH_CATALOG_URL"
schema = "{schema}"

[ingest]
batch_max_events = 2000
batch_max_ms = 20
heartbeat_ms = 500

[[models]]
name = "payments.transfers"
id_field = "id"
references = {{ account_id = "account_id", asset = "asset" }}

[[models]]
name = "ledger.entries"
id_field = "_id"
references = {{ transfer_id = "transfer_id" }}

[[sources]]
name = "payments-wal"
format = "pgoutput"
[sources.postgres]
url_env = "CRASH_SOURCE_URL"
slot = "crash_slot"
publication = "crash_pub"
create = true
tables = ["payments.transfers"]

[[sources]]
name = "ledger-kafka"
format = "mongo-change-stream"
[sources.kafka]
brokers = "{brokers}"
topics = ["ledger"]
group = "crash-ingest"
properties = {{ "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "500" }}
"#,
        bucket = s3.var("S3_BUCKET"),
        endpoint = s3.var("S3_ENDPOINT"),
        region = s3.var("S3_REGION"),
    )
}

struct Ingest {
    child: Child,
}

impl Ingest {
    fn start(cfg: &std::path::Path, url: &str, s3: &Server, log: &std::path::Path) -> Ingest {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_overseer"))
            .args(["ingest", "--config"])
            .arg(cfg)
            .env("CRASH_CATALOG_URL", url)
            .env("CRASH_SOURCE_URL", url)
            .env("AWS_ACCESS_KEY_ID", s3.var("AWS_ACCESS_KEY_ID"))
            .env("AWS_SECRET_ACCESS_KEY", s3.var("AWS_SECRET_ACCESS_KEY"))
            .env(
                "RUST_LOG",
                std::env::var("CRASH_RUST_LOG")
                    .unwrap_or_else(|_| "warn,overseer_ingestion=info".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn overseer ingest");
        Ingest { child }
    }

    fn kill9(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn count_by_source(cat: &PgCatalog) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for e in cat.dump().await.unwrap().entries {
        *m.entry(e.source).or_insert(0) += 1;
    }
    m
}

/// Writes PG_CHANGES row changes (inserts then updates, transactions of 1..=100 rows) at a
/// steady pace so the kills land mid-stream.
async fn write_postgres(url: String, stop: Arc<AtomicBool>) -> HashMap<String, usize> {
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut per_id: HashMap<String, usize> = HashMap::new();
    let mut written = 0;
    let mut rng = 0x9e3779b97f4a7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let records = PG_CHANGES / 2;
    while written < PG_CHANGES && !stop.load(Ordering::Relaxed) {
        let n = ((next() % 100) + 1) as usize;
        let n = n.min(PG_CHANGES - written);
        let mut sql = String::from("BEGIN;");
        for k in 0..n {
            let i = written + k;
            if i < records {
                sql.push_str(&format!(
                    "INSERT INTO payments.transfers VALUES ('t{i}', 'acc{}', 'USD', {}.{:02}, 'pending', now());",
                    i % 97, i % 1000, i % 100
                ));
                *per_id.entry(format!("t{i}")).or_default() += 1;
            } else {
                let j = i - records;
                sql.push_str(&format!(
                    "UPDATE payments.transfers SET status = 'completed' WHERE id = 't{j}';"
                ));
                *per_id.entry(format!("t{j}")).or_default() += 1;
            }
        }
        sql.push_str("COMMIT;");
        client.batch_execute(&sql).await.unwrap();
        written += n;
        tokio::time::sleep(Duration::from_millis(4)).await;
    }
    assert_eq!(written, PG_CHANGES);
    per_id
}

async fn write_kafka(brokers: String) -> HashMap<String, usize> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "5")
        // One record per batch: tansu 0.6 loses the rest of a record batch when a group
        // resumes from an offset inside it (real Kafka does not); see the issue notes.
        .set("batch.num.messages", "1")
        .create()
        .unwrap();
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for chunk in 0..(KAFKA_CHANGES / 500) {
        let mut futs = Vec::with_capacity(500);
        for k in 0..500 {
            let i = chunk * 500 + k;
            let id = format!("e{}", i % 20_000); // records get several updates
            *per_id.entry(id.clone()).or_default() += 1;
            let op = if i < 20_000 { "insert" } else { "replace" };
            let ev = serde_json::json!({
                "_id": {"_data": format!("{i:010}")}, "operationType": op,
                "ns": {"db": "ledger", "coll": "entries"}, "documentKey": {"_id": id},
                "clusterTime": {"$timestamp": {"t": 1_767_225_600 + i as i64, "i": 1}},
                "fullDocument": {"_id": id, "transfer_id": format!("t{}", i % 25_000),
                    "amount_minor": {"$numberLong": (i * 100).to_string()}}
            })
            .to_string();
            let p = producer.clone();
            futs.push(async move {
                p.send(
                    FutureRecord::to("ledger").key(&id).payload(&ev),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
            });
        }
        futures::future::join_all(futs).await;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    per_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_streaming_loses_and_duplicates_nothing() {
    let pg = Server::start("postgres");
    let kafka = Server::start("tansu");
    let s3 = Server::start("garage");
    let prefix = unique_name("crash");
    let url = pg.var("PG_URL").to_owned();
    let brokers = kafka.var("KAFKA_BROKERS").to_owned();
    let dir = tempfile::tempdir().unwrap();
    let schema = unique_name("crash");

    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(
            "CREATE SCHEMA payments;
             CREATE TABLE payments.transfers (id text PRIMARY KEY, account_id text, asset text,
                 amount numeric, status text, updated_at timestamptz);
             CREATE PUBLICATION crash_pub FOR TABLE payments.transfers;",
        )
        .await
        .unwrap();
    // The slot must exist before the first change: WAL written before a slot is created is
    // not decoded for it. (The source finds both and uses them.)
    client
        .batch_execute("SELECT pg_create_logical_replication_slot('crash_slot', 'pgoutput')")
        .await
        .unwrap();
    let admin: AdminClient<_> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    admin
        .create_topics(
            &[NewTopic::new("ledger", 4, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();

    let cfg_path = dir.path().join("overseer.toml");
    std::fs::write(&cfg_path, config(&s3, &prefix, &schema, &brokers)).unwrap();
    // Outside the temp dir so it survives a failure for inspection.
    let log = std::env::temp_dir().join(format!("overseer-crash-{}.log", std::process::id()));

    // Stream both sources while killing the ingester at random points.
    let stop = Arc::new(AtomicBool::new(false));
    let pg_writer = tokio::spawn(write_postgres(url.clone(), stop.clone()));
    let kafka_writer = tokio::spawn(write_kafka(brokers.clone()));
    let mut rng = 12345u64;
    for k in 0..KILLS {
        let ing = Ingest::start(&cfg_path, &url, &s3, &log);
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1);
        let ms = 700 + (rng >> 33) % 2500;
        tokio::time::sleep(Duration::from_millis(ms)).await;
        ing.kill9();
        eprintln!("kill -9 #{k} after {ms} ms");
    }
    let pg_expected = pg_writer.await.unwrap();
    let kafka_expected = kafka_writer.await.unwrap();

    // A last run catches up; then stop it politely. It starts after the killed members'
    // sessions (6 s) have expired: tansu 0.6 drops dead members only when a member joins,
    // so a member joining earlier shares the partitions with the dead (which real Kafka
    // reassigns once their sessions expire). See the issue notes.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let mut ing = Ingest::start(&cfg_path, &url, &s3, &log);
    let cat = PgCatalog::connect(&url, &schema).await.unwrap();
    // Bounded by progress, not by a total time a slower machine may need: it fails when
    // nothing new is stored for 120 s (or after 15 minutes in all).
    let started = Instant::now();
    let (mut stalled_since, mut stored) = (Instant::now(), 0);
    loop {
        let c = count_by_source(&cat).await;
        let (p, k) = (
            c.get("payments-wal").copied().unwrap_or(0),
            c.get("ledger-kafka").copied().unwrap_or(0),
        );
        if p >= PG_CHANGES && k >= KAFKA_CHANGES {
            break;
        }
        if p + k > stored {
            (stored, stalled_since) = (p + k, Instant::now());
        }
        if stalled_since.elapsed() > Duration::from_secs(120)
            || started.elapsed() > Duration::from_secs(900)
            || ing.child.try_wait().unwrap().is_some()
        {
            panic!(
                "not caught up: {p}/{PG_CHANGES} postgres, {k}/{KAFKA_CHANGES} kafka; log: {}",
                log.display()
            );
        }
        // A dump of the whole catalog each time: not too often.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    Command::new("kill")
        .arg("-TERM")
        .arg(ing.child.id().to_string())
        .status()
        .unwrap();
    let status = ing.child.wait().unwrap();
    assert!(status.success(), "clean shutdown on SIGTERM: {status}");

    // Exactly once: the per-record update counts equal what was written, no more, no less.
    let dump = cat.dump().await.unwrap();
    let mut got: HashMap<(String, String), usize> = HashMap::new();
    for e in &dump.entries {
        *got.entry((e.source.clone(), e.record_id.clone()))
            .or_default() += 1;
    }
    for (id, n) in &pg_expected {
        assert_eq!(
            got.get(&("payments-wal".into(), id.clone())),
            Some(n),
            "postgres record {id}"
        );
    }
    for (id, n) in &kafka_expected {
        assert_eq!(
            got.get(&("ledger-kafka".into(), id.clone())),
            Some(n),
            "kafka record {id}"
        );
    }
    assert_eq!(
        dump.entries.len(),
        PG_CHANGES + KAFKA_CHANGES,
        "nothing extra"
    );
    assert!(cat.pending_segments().await.unwrap().is_empty());

    // Every update was announced on the events topic (at least once, across the crashes).
    let bus = KafkaBus::connect(&KafkaBusConfig::new(brokers.clone()))
        .await
        .unwrap();
    let mut sub = bus.subscribe("crash-check").await.unwrap();
    let mut announced = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while announced.len() < PG_CHANGES + KAFKA_CHANGES && Instant::now() < deadline {
        if let Ok(batch) = tokio::time::timeout(Duration::from_secs(5), sub.recv(10_000)).await {
            for d in batch.unwrap() {
                announced.insert((d.note.source, d.note.position));
            }
        }
    }
    assert_eq!(
        announced.len(),
        PG_CHANGES + KAFKA_CHANGES,
        "every update was notified"
    );

    // The catalog equals a reindex of the object store alone.
    common::assert_reindex_equals(&s3, &prefix, dir.path(), &dump).await;
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    eprintln!(
        "ingest log tail:\n{}",
        log_text
            .lines()
            .rev()
            .take(10)
            .collect::<Vec<_>>()
            .join("\n")
    );
}
