//! What the end-to-end tests on real components share: `overseer run` as a child process,
//! polling with a deadline, MongoDB change-stream events and the MongoDB Kafka
//! connector's heartbeats, and counting PagerDuty triggers.
#![allow(dead_code)] // each test crate uses its own share of this module

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use overseer_dal::catalog::SourceProgress;
use overseer_dal::catalog::postgres::PgCatalog;
use overseer_testkit::pagerduty::{FakePagerDuty, TEST_ROUTING_KEY};
use overseer_testkit::{Server, unique_name};

/// `overseer run` as a child process, its stderr in a file. Killed when dropped; a test
/// that panics meanwhile prints its log.
pub(crate) struct Overseer {
    pub(crate) child: Child,
    log: PathBuf,
}

impl Overseer {
    pub(crate) fn start(cfg: &Path, url: &str, s3: &Server, log: &Path) -> Overseer {
        Overseer::start_with(
            cfg,
            &[
                ("E2E_CATALOG_URL", url),
                ("E2E_SOURCE_URL", url),
                ("AWS_ACCESS_KEY_ID", s3.var("AWS_ACCESS_KEY_ID")),
                ("AWS_SECRET_ACCESS_KEY", s3.var("AWS_SECRET_ACCESS_KEY")),
            ],
            log,
        )
    }

    /// `overseer run --config cfg` with `env` set (and the PagerDuty routing key in
    /// `E2E_PD_KEY`).
    pub(crate) fn start_with(cfg: &Path, env: &[(&str, &str)], log: &Path) -> Overseer {
        Overseer::spawn("run", cfg, env, log)
    }

    /// `overseer {command} --config cfg` (a command that runs until stopped: `run`,
    /// `ingest`, `prs`) with `env` set (and the PagerDuty routing key in `E2E_PD_KEY`).
    pub(crate) fn spawn(command: &str, cfg: &Path, env: &[(&str, &str)], log: &Path) -> Overseer {
        let file = std::fs::File::create(log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_overseer"))
            .args([command, "--config"])
            .arg(cfg)
            .envs(env.iter().copied())
            .env("E2E_PD_KEY", TEST_ROUTING_KEY)
            // The log is kept in a file: plain text.
            .env("NO_COLOR", "1")
            .env(
                "RUST_LOG",
                std::env::var("E2E_RUST_LOG").unwrap_or_else(|_| {
                    "warn,overseer=info,overseer_ingestion=info,overseer_prs=debug".into()
                }),
            )
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn overseer run");
        Overseer {
            child,
            log: log.to_owned(),
        }
    }

    /// SIGTERM, then waits (bounded) for a clean exit.
    pub(crate) async fn stop(&mut self) {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "no exit within 30 s of SIGTERM");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(status.success(), "clean shutdown on SIGTERM: {status}");
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics if the process has exited.
    pub(crate) fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("overseer run exited early: {status}");
        }
    }
}

impl Drop for Overseer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- overseer run stderr ({}) ----\n{}\n---- end ----",
                self.log.display(),
                self.log()
            );
        }
    }
}

/// Polls `done` every 100 ms until it holds; panics with `what` after `limit`.
pub(crate) async fn wait_until(
    ov: &mut Overseer,
    limit: Duration,
    what: &str,
    mut done: impl AsyncFnMut() -> bool,
) {
    let deadline = Instant::now() + limit;
    loop {
        if done().await {
            return;
        }
        ov.assert_running();
        if Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A MongoDB change-stream event of `ledger.entries` (relaxed extended JSON), at `wall_ms`.
pub(crate) fn change(n: u32, op: &str, id: &str, wall_ms: i64, body: Value) -> Value {
    let mut ev = json!({
        "_id": {"_data": format!("8265E1F1C0{n:08}")},
        "operationType": op,
        "ns": {"db": "ledger", "coll": "entries"},
        "documentKey": {"_id": {"$oid": id}},
        "clusterTime": {"$timestamp": {"t": wall_ms / 1000, "i": n}},
        "wallTime": {"$date": {"$numberLong": wall_ms.to_string()}},
    });
    if op == "update" {
        ev["updateDescription"] = json!({"updatedFields": body, "removedFields": []});
    } else {
        let mut doc = body;
        doc["_id"] = json!({"$oid": id});
        ev["fullDocument"] = doc;
    }
    ev
}

/// PagerDuty requests that triggered (opened or re-sent) an incident.
pub(crate) fn trigger_requests(pd: &FakePagerDuty) -> usize {
    pd.requests()
        .iter()
        .filter(|r| {
            r.json
                .as_ref()
                .is_some_and(|j| j["event_action"] == "trigger")
        })
        .count()
}

/// The MongoDB Kafka connector's heartbeats (`heartbeat.interval.ms`), as an idle but
/// healthy connector writes them to `topic` every `every`: the key is its post-batch
/// resume token, whose first bytes are the cluster time (seconds). `behind` is how far the
/// connector's read position trails the clock. Stops when `stop` is cancelled.
pub(crate) fn mongo_heartbeats(
    producer: FutureProducer,
    topic: &str,
    every: Duration,
    behind: Duration,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let topic = topic.to_owned();
    tokio::spawn(async move {
        let mut n = 0u32;
        while !stop.is_cancelled() {
            n += 1;
            let secs = ((now_ms() - behind.as_millis() as i64) / 1000) as u32;
            // The connector's heartbeat key is the token document as JSON; its value is null.
            let key = overseer_ingestion::freshness::mongo_heartbeat_key(secs, n);
            let sent = producer
                .send(
                    FutureRecord::<str, [u8]>::to(&topic).key(&key),
                    Duration::from_secs(10),
                )
                .await;
            if let Err((e, _)) = sent {
                eprintln!("heartbeat not produced: {e}");
            }
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(every) => {}
            }
        }
    })
}

/// The payments system in `url`'s database: its tables, the publication `publication` of
/// them, then the slot `slot` (WAL written before a slot exists is not decoded for it).
pub(crate) async fn payments_db(
    url: &str,
    publication: &str,
    slot: &str,
) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(&format!(
            "CREATE SCHEMA payments;
             CREATE TABLE payments.transfers (id text PRIMARY KEY, account_id text, asset text,
                 amount numeric, status text, updated_at timestamptz);
             CREATE TABLE payments.assets (symbol text PRIMARY KEY, decimals int);
             CREATE PUBLICATION {publication} FOR TABLE payments.transfers, payments.assets;"
        ))
        .await
        .unwrap();
    client
        .batch_execute(&format!(
            "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"
        ))
        .await
        .unwrap();
    client
}

/// Creates `topics` (name, partitions) on the broker.
pub(crate) async fn create_topics(brokers: &str, topics: &[(&str, i32)]) {
    let admin: AdminClient<_> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, n)| NewTopic::new(name, *n, TopicReplication::Fixed(1)))
        .collect();
    for r in admin
        .create_topics(&new, &AdminOptions::new())
        .await
        .unwrap()
    {
        r.unwrap_or_else(|(topic, e)| panic!("creating topic {topic}: {e}"));
    }
}

/// A producer that puts every record in a batch of its own: tansu 0.6 loses the rest of
/// a record batch when a group resumes from an offset inside it (see crash.rs).
pub(crate) fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "0")
        .set("batch.num.messages", "1")
        // As the MongoDB Kafka connector's (Java) producer: reconnect within a second of
        // a broker's return.
        .set("reconnect.backoff.max.ms", "1000")
        .create()
        .unwrap()
}

/// The four payments models and the references the shipped checks select and join by
/// (the bench's, shared).
pub(crate) const MODELS: &str = overseer_sim::workload::MODELS_TOML;

/// The topic of the Kafka bus in these tests.
pub(crate) const EVENTS_TOPIC: &str = "overseer.events";
/// The ledger connector's heartbeat topic: what moves the ledger's watermark while it is
/// idle (being at the end of the topic says nothing about the connector).
pub(crate) const HEARTBEATS_TOPIC: &str = "ledger.heartbeats";

/// The configuration of the real stack: the garage store, the Kafka bus, the PostgreSQL
/// catalog (schema `schema`), PagerDuty at `pd_url` as the default escalation, the
/// payments WAL (slot and publication `{name}_slot`, `{name}_pub`) and the ledger topic
/// with its connector's heartbeats, read by group `{name}-ingest`; `prs` is the `[prs]`
/// table's body after its group (`{name}-prs`) and default escalation.
fn real_config(
    s3: &Server,
    prefix: &str,
    schema: &str,
    brokers: &str,
    pd_url: &str,
    name: &str,
    prs: &str,
) -> String {
    format!(
        r#"{storage}
[prs]
group = "{name}-prs"
default_escalation = "pd"
{prs}

[escalation.pd]
kind = "pagerduty"
routing_key_env = "E2E_PD_KEY"
url = "{pd_url}"

{MODELS}
[[sources]]
name = "payments-wal"
format = "pgoutput"
[sources.postgres]
url_env = "E2E_SOURCE_URL"
slot = "{name}_slot"
publication = "{name}_pub"
status_interval_ms = 200
{ledger}"#,
        storage = storage_config(s3, prefix, schema, brokers),
        ledger = ledger_source(brokers, name),
    )
}

/// An ingest-only configuration of the real stack: [`real_config`] without the checks,
/// the escalation and the payments WAL (the ledger topic alone, read by `{name}-ingest`).
pub(crate) fn ledger_ingest_config(
    s3: &Server,
    prefix: &str,
    schema: &str,
    brokers: &str,
    name: &str,
) -> String {
    format!(
        "{}\n{MODELS}\n{}",
        storage_config(s3, prefix, schema, brokers),
        ledger_source(brokers, name)
    )
}

/// The store, bus, catalog and ingest tables of [`real_config`].
fn storage_config(s3: &Server, prefix: &str, schema: &str, brokers: &str) -> String {
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
topic = "{EVENTS_TOPIC}"
session_timeout_ms = 6000

[catalog]
kind = "postgres"
url_env = "E2E_CATALOG_URL"
schema = "{schema}"

[ingest]
batch_max_events = 100
batch_max_ms = 20
heartbeat_ms = 200
"#,
        bucket = s3.var("S3_BUCKET"),
        endpoint = s3.var("S3_ENDPOINT"),
        region = s3.var("S3_REGION"),
    )
}

/// The ledger topic's source in [`real_config`], read by group `{name}-ingest`.
fn ledger_source(brokers: &str, name: &str) -> String {
    format!(
        r#"
[[sources]]
name = "ledger-kafka"
format = "mongo-change-stream"
[sources.kafka]
brokers = "{brokers}"
topics = ["ledger"]
heartbeat_topic = "{HEARTBEATS_TOPIC}"
group = "{name}-ingest"
properties = {{ "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "500" }}
"#
    )
}

/// Waits until both sources of [`real_config`] have reported a watermark (connected, and
/// caught up by their evidence).
async fn wait_ready(ov: &mut Overseer, cat: &impl SourceProgress) {
    wait_until(
        ov,
        Duration::from_secs(60),
        "both sources report a watermark",
        async || {
            let states = cat.source_states().await.unwrap();
            ["payments-wal", "ledger-kafka"].iter().all(|s| {
                states
                    .iter()
                    .any(|st| st.source == *s && st.watermark_us > 0)
            })
        },
    )
    .await;
}

/// Open PagerDuty incidents, by dedup key.
pub(crate) fn open_keys(pd: &FakePagerDuty) -> BTreeSet<String> {
    pd.open_incidents()
        .into_iter()
        .map(|i| i.dedup_key)
        .collect()
}

/// Produces `ev` to the ledger topic with key `key`, on `partition` (else by key).
pub(crate) async fn produce_ledger(
    producer: &FutureProducer,
    partition: Option<i32>,
    key: &str,
    ev: &Value,
) {
    let payload = ev.to_string();
    let mut record = FutureRecord::to("ledger").key(key).payload(&payload);
    if let Some(p) = partition {
        record = record.partition(p);
    }
    producer
        .send(record, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| e)
        .expect("produce to the ledger topic");
}

/// The real stack of these tests, with `overseer run` on it: PostgreSQL (the payments
/// source and the catalog), tansu (the ledger topic, its connector's heartbeats, the
/// events topic of the bus), garage, and PagerDuty's local stand-in.
pub(crate) struct RealStack {
    _pg: Server,
    _kafka: Server,
    _s3: Server,
    _dir: tempfile::TempDir,
    pub(crate) pd: FakePagerDuty,
    /// On the payments database.
    pub(crate) client: tokio_postgres::Client,
    pub(crate) producer: FutureProducer,
    pub(crate) cat: PgCatalog,
    /// `overseer run`'s configuration and the database's URL, to start it again.
    cfg: PathBuf,
    url: String,
    /// The object store's key prefix.
    prefix: String,
    /// The catalog's schema.
    pub(crate) schema: String,
    /// The ledger connector's heartbeats, while it runs.
    beats: Option<(CancellationToken, JoinHandle<()>)>,
}

impl RealStack {
    /// Starts the servers; the payments database (`{name}_slot`, `{name}_pub`); the
    /// ledger topic with `partitions`, the heartbeat and events topics; the ledger
    /// connector's heartbeats every 250 ms, its read position `behind` the clock; the
    /// configuration of [`real_config`] with `prs`; the catalog (migrated here first:
    /// migrations take an advisory lock, so the child's own connect is harmless); then
    /// `overseer run`, once both sources report a watermark.
    pub(crate) async fn start(
        name: &str,
        partitions: i32,
        behind: Duration,
        prs: &str,
    ) -> (RealStack, Overseer) {
        RealStack::start_with_broker(name, partitions, behind, prs, &[]).await
    }

    /// [`RealStack::start`] with `broker_env` for `scripts/tansu.sh` (e.g.
    /// `TANSU_STORAGE=sqlite`, a broker that can be crashed and restarted).
    pub(crate) async fn start_with_broker(
        name: &str,
        partitions: i32,
        behind: Duration,
        prs: &str,
        broker_env: &[(&str, &str)],
    ) -> (RealStack, Overseer) {
        let started = Instant::now();
        let pg = Server::start("postgres");
        let kafka = Server::start_with("tansu", broker_env);
        let s3 = Server::start("garage");
        let pd = FakePagerDuty::start().await.unwrap();
        let url = pg.var("PG_URL").to_owned();
        let brokers = kafka.var("KAFKA_BROKERS").to_owned();
        let schema = unique_name(name);
        let dir = tempfile::tempdir().unwrap();

        let client = payments_db(&url, &format!("{name}_pub"), &format!("{name}_slot")).await;
        create_topics(
            &brokers,
            &[
                ("ledger", partitions),
                (HEARTBEATS_TOPIC, 1),
                (EVENTS_TOPIC, 4),
            ],
        )
        .await;
        let producer = producer(&brokers);
        let stop = CancellationToken::new();
        let beats = mongo_heartbeats(
            producer.clone(),
            HEARTBEATS_TOPIC,
            Duration::from_millis(250),
            behind,
            stop.clone(),
        );
        let cfg = dir.path().join("overseer.toml");
        let prefix = unique_name(name);
        let text = real_config(&s3, &prefix, &schema, &brokers, &pd.url(), name, prs);
        std::fs::write(&cfg, text).unwrap();
        let cat = PgCatalog::connect(&url, &schema).await.unwrap();
        let log = std::env::temp_dir().join(format!("overseer-{name}-{}.log", std::process::id()));
        let mut ov = Overseer::start(&cfg, &url, &s3, &log);
        wait_ready(&mut ov, &cat).await;
        eprintln!("overseer ready after {:?}", started.elapsed());
        let stack = RealStack {
            _pg: pg,
            _kafka: kafka,
            _s3: s3,
            _dir: dir,
            pd,
            client,
            producer,
            cat,
            cfg,
            url,
            prefix,
            schema,
            beats: Some((stop, beats)),
        };
        (stack, ov)
    }

    /// Starts `overseer {command}` (`run`, `ingest` or `prs`) on this stack's
    /// configuration, logging to `log` (it does not wait for the sources).
    pub(crate) fn spawn(&self, command: &str, log: &Path) -> Overseer {
        let s3 = &self._s3;
        Overseer::spawn(
            command,
            &self.cfg,
            &[
                ("E2E_CATALOG_URL", &self.url),
                ("E2E_SOURCE_URL", &self.url),
                ("AWS_ACCESS_KEY_ID", s3.var("AWS_ACCESS_KEY_ID")),
                ("AWS_SECRET_ACCESS_KEY", s3.var("AWS_SECRET_ACCESS_KEY")),
            ],
            log,
        )
    }

    /// The broker's server (to crash and restart it).
    pub(crate) fn kafka(&self) -> &Server {
        &self._kafka
    }

    /// The broker's address.
    pub(crate) fn brokers(&self) -> &str {
        self._kafka.var("KAFKA_BROKERS")
    }

    /// The payments database's (and the catalog's) URL.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Asserts that a `reindex` of the object store alone (into a fresh embedded catalog
    /// in `dir`) equals the live catalog.
    pub(crate) async fn assert_reindex_equals_catalog(&self, dir: &Path) {
        use overseer_dal::catalog::prelude::*;
        let live = self.cat.dump().await.unwrap();
        assert_reindex_equals(&self._s3, &self.prefix, dir, &live).await;
    }

    /// Stops the connector's heartbeats.
    pub(crate) async fn stop_heartbeats(&mut self) {
        if let Some((stop, beats)) = self.beats.take() {
            stop.cancel();
            beats.await.unwrap();
        }
    }

    /// Starts the connector's heartbeats again (every 250 ms, its read position `behind`
    /// the clock).
    pub(crate) fn resume_heartbeats(&mut self, behind: Duration) {
        self.beats.get_or_insert_with(|| {
            let stop = CancellationToken::new();
            let beats = mongo_heartbeats(
                self.producer.clone(),
                HEARTBEATS_TOPIC,
                Duration::from_millis(250),
                behind,
                stop.clone(),
            );
            (stop, beats)
        });
    }
}

/// Asserts that a `reindex` of the store at `prefix` of `s3` (read directly, not through
/// any proxy) into a fresh embedded catalog in `dir` equals `live`, the live catalog's
/// dump.
pub(crate) async fn assert_reindex_equals(
    s3: &Server,
    prefix: &str,
    dir: &Path,
    live: &overseer_dal::update::CatalogDump,
) {
    let creds = aws_config::defaults(aws_config::BehaviorVersion::latest()).credentials_provider(
        aws_sdk_s3::config::Credentials::new(
            s3.var("AWS_ACCESS_KEY_ID"),
            s3.var("AWS_SECRET_ACCESS_KEY"),
            None,
            None,
            "reindex-check",
        ),
    );
    let store = overseer_dal::store::s3::S3Store::connect_with(
        &overseer_dal::config::S3Config {
            bucket: s3.var("S3_BUCKET").into(),
            prefix: prefix.into(),
            endpoint: Some(s3.var("S3_ENDPOINT").into()),
            region: s3.var("S3_REGION").into(),
            path_style: true,
        },
        creds,
    )
    .await
    .unwrap();
    assert_store_reindexes_to(&store, dir, live).await;
}

/// A reindex of `store` alone (into a fresh embedded catalog under `dir`) equals `live`.
pub(crate) async fn assert_store_reindexes_to(
    store: &dyn overseer_dal::store::ObjectStore,
    dir: &Path,
    live: &overseer_dal::update::CatalogDump,
) {
    use overseer_dal::catalog::prelude::*;
    let fresh =
        overseer_dal::catalog::embedded::EmbeddedCatalog::open(dir.join("reindexed.redb")).unwrap();
    overseer_ingestion::reindex::reindex(store, &fresh)
        .await
        .unwrap();
    let re = fresh.dump().await.unwrap();
    assert_eq!(re.entries.len(), live.entries.len());
    assert!(re == *live, "reindex differs from the live catalog");
}
