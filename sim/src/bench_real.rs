//! `overseer bench --mode real`: the servers, the per-run config and the producers.
//!
//! PostgreSQL (the payments system's database, read through its WAL with pgoutput, and the
//! catalog), the tansu broker (the ledger's change events, as MongoDB change streams
//! publish them) and the garage S3 server (the segments) run as local processes, started
//! with the repository's `scripts/{postgres,tansu,garage}.sh` (installed by
//! `scripts/install-test-deps.sh`) and stopped when the bench ends. A writer applies the
//! payments changes to PostgreSQL and a producer publishes the ledger's events, each at
//! its arrival time (or as fast as they are taken); ingestion reads them back through its
//! pgoutput and Kafka sources.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::workload::live::Clock;
use crate::workload::{System, Workload};
use overseer::Config;

/// The environment variable the per-run configs name for the catalog's connection.
const PG_URL_ENV: &str = "OVERSEER_BENCH_PG_URL";

/// The environment variable naming the payments database (the WAL source).
const SRC_URL_ENV: &str = "OVERSEER_BENCH_SRC_URL";

/// The payments system's database on the local PostgreSQL.
const SRC_DB: &str = "overseer_bench_payments";

/// Carries the servers' connection details from the process that started them to the
/// bench process it runs (`KEY=VALUE` lines).
const STACK_ENV: &str = "OVERSEER_BENCH_STACK";

/// The variables the server scripts print that real mode uses.
const VARS: [&str; 7] = [
    "PG_URL",
    "KAFKA_BROKERS",
    "S3_ENDPOINT",
    "S3_REGION",
    "S3_BUCKET",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
];

/// The local servers of real mode; the ones this process started are stopped when it is
/// dropped.
pub(crate) struct Stack {
    scripts: PathBuf,
    /// (script name, state directory) of each started server.
    started: Vec<(&'static str, tempfile::TempDir)>,
    vars: HashMap<String, String>,
}

/// `overseer bench --mode real`, before any runtime: in the process the user started,
/// starts the servers, runs this same command again as a child with their connection
/// details and credentials in its environment (the catalog and the S3 client read them
/// from there), stops the servers and returns the child's exit code; in that child,
/// returns the stack it was given.
pub(crate) fn enter(scripts: &Path) -> Result<std::result::Result<Stack, i32>> {
    if let Ok(text) = std::env::var(STACK_ENV) {
        let vars: HashMap<String, String> = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        return Ok(Ok(Stack {
            scripts: scripts.to_owned(),
            started: Vec::new(),
            vars,
        }));
    }
    let stack = Stack::start(scripts)?;
    let carried: String = VARS
        .iter()
        .map(|k| format!("{k}={}\n", stack.vars[*k]))
        .collect();
    let status = Command::new(std::env::current_exe()?)
        .args(std::env::args_os().skip(1))
        .env(STACK_ENV, carried)
        .env(PG_URL_ENV, &stack.vars["PG_URL"])
        .env(SRC_URL_ENV, source_url(&stack.vars["PG_URL"]))
        .env("AWS_ACCESS_KEY_ID", &stack.vars["AWS_ACCESS_KEY_ID"])
        .env(
            "AWS_SECRET_ACCESS_KEY",
            &stack.vars["AWS_SECRET_ACCESS_KEY"],
        )
        .status()
        .context("running the bench with its servers")?;
    drop(stack);
    Ok(Err(status.code().unwrap_or(1)))
}

/// `url` (`key=value` form) pointed at the payments database.
fn source_url(url: &str) -> String {
    let mut parts: Vec<String> = url
        .split_whitespace()
        .filter(|p| !p.starts_with("dbname="))
        .map(str::to_owned)
        .collect();
    parts.push(format!("dbname={SRC_DB}"));
    parts.join(" ")
}

impl Stack {
    /// Starts PostgreSQL, tansu and garage with `scripts/*.sh start DIR`.
    fn start(scripts: &Path) -> Result<Stack> {
        let mut stack = Stack {
            scripts: scripts.to_owned(),
            started: Vec::new(),
            vars: HashMap::new(),
        };
        for name in ["postgres", "tansu", "garage"] {
            let script = scripts.join(format!("{name}.sh"));
            let dir = tempfile::Builder::new()
                .prefix(&format!("overseer-bench-{name}-"))
                .tempdir()?;
            eprintln!("starting {name} ({})", script.display());
            let out = Command::new("bash")
                .arg(&script)
                .arg("start")
                .arg(dir.path())
                .output()
                .with_context(|| format!("running {}", script.display()))?;
            stack.started.push((name, dir));
            if !out.status.success() {
                bail!(
                    "{name} did not start ({}): {}\n{}\nInstall the servers with \
                     scripts/install-test-deps.sh",
                    out.status,
                    String::from_utf8_lossy(&out.stdout).trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some((k, v)) = line.split_once('=') {
                    stack.vars.insert(k.trim().to_owned(), v.trim().to_owned());
                }
            }
        }
        for key in VARS {
            if !stack.vars.contains_key(key) {
                bail!("the server scripts did not print {key}");
            }
        }
        Ok(stack)
    }

    pub(crate) fn brokers(&self) -> &str {
        &self.vars["KAFKA_BROKERS"]
    }

    /// The config of one run named `run` (a fresh S3 prefix, catalog schema, topics and
    /// consumer groups): the payments WAL and the ledger topic, the S3 store, the PostgreSQL
    /// catalog.
    pub(crate) fn config(&self, run: &str) -> Result<Config> {
        let v = &self.vars;
        let mut text = format!(
            r#"
[store]
kind = "s3"
bucket = "{bucket}"
prefix = "bench/{run}"
endpoint = "{endpoint}"
region = "{region}"
path_style = true

[catalog]
kind = "postgres"
url_env = "{PG_URL_ENV}"
schema = "bench_{run}"
"#,
            bucket = v["S3_BUCKET"],
            endpoint = v["S3_ENDPOINT"],
            region = v["S3_REGION"],
        );
        text.push_str(crate::workload::MODELS_TOML);
        text.push_str(&format!(
            r#"
[[sources]]
name = "{payments}"
format = "pgoutput"
[sources.postgres]
url_env = "{SRC_URL_ENV}"
slot = "slot_{run}"
publication = "pub_{run}"
create = false
status_interval_ms = 100

[[sources]]
name = "{ledger}"
format = "mongo-change-stream"
[sources.kafka]
brokers = "{brokers}"
topics = ["{topic}"]
heartbeat_topic = "{topic}.heartbeats"
group = "{run}-ingest"
properties = {{ "fetch.wait.max.ms" = "10" }}
"#,
            payments = System::Payments.name(),
            ledger = System::Ledger.name(),
            brokers = self.brokers(),
            topic = topic(run, System::Ledger),
        ));
        let mut cfg = Config::parse(&text).context("the real-mode config")?;
        cfg.ingestion.ingest.heartbeat_ms = 50;
        cfg.prs.from_beginning = true;
        Ok(cfg)
    }

    /// Prepares run `run`'s systems: the ledger's topic (one partition: its events stay
    /// in order), and the payments database emptied, with a fresh publication and
    /// replication slot (created before any of the run's writes, so it sees them all).
    pub(crate) async fn prepare(&self, run: &str) -> Result<()> {
        let (admin_db, conn) =
            tokio_postgres::connect(&self.vars["PG_URL"], tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        let exists = admin_db
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&SRC_DB])
            .await?
            .is_some();
        if !exists {
            admin_db
                .batch_execute(&format!("CREATE DATABASE {SRC_DB}"))
                .await?;
        }
        let (db, conn) =
            tokio_postgres::connect(&source_url(&self.vars["PG_URL"]), tokio_postgres::NoTls)
                .await?;
        tokio::spawn(conn);
        db.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS payments;
             CREATE TABLE IF NOT EXISTS payments.transfers (id text PRIMARY KEY,
                 account_id text, asset text, amount numeric, status text, updated_at bigint);
             CREATE TABLE IF NOT EXISTS payments.assets (symbol text PRIMARY KEY, decimals int);
             TRUNCATE payments.transfers, payments.assets;
             CREATE PUBLICATION pub_{run} FOR TABLE payments.transfers, payments.assets;"
        ))
        .await?;
        db.batch_execute(&format!(
            "SELECT pg_create_logical_replication_slot('slot_{run}', 'pgoutput')"
        ))
        .await
        .context("creating the replication slot")?;

        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .create()?;
        let names = [
            topic(run, System::Ledger),
            format!("{}.heartbeats", topic(run, System::Ledger)),
        ];
        let topics: Vec<NewTopic> = names
            .iter()
            .map(|n| NewTopic::new(n, 1, TopicReplication::Fixed(1)))
            .collect();
        for r in admin.create_topics(&topics, &AdminOptions::new()).await? {
            r.map_err(|(t, e)| anyhow::anyhow!("creating topic {t}: {e}"))?;
        }
        Ok(())
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for (name, dir) in self.started.iter().rev() {
            let _ = Command::new("bash")
                .arg(self.scripts.join(format!("{name}.sh")))
                .arg("stop")
                .arg(dir.path())
                .output();
        }
    }
}

/// The topic of `system`'s events in run `run`.
pub(crate) fn topic(run: &str, system: System) -> String {
    format!("{run}-{}", system.name())
}

/// Publishes `system`'s events of `w` to its topic, each at its arrival time (`paced`) or
/// as fast as the broker takes them; sets `done` once the broker acknowledged them all.
/// Meanwhile, and until `stop`, it publishes the MongoDB connector's heartbeats to the
/// topic's `.heartbeats` twin, as a connector reading that system would: every 100 ms,
/// the cluster time it has read up to (the system's lag behind the clock, and never past
/// an event still to publish).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn produce(
    brokers: String,
    topic: String,
    w: Arc<Workload>,
    system: System,
    clock: Clock,
    paced: bool,
    done: Arc<AtomicBool>,
    stop: tokio_util::sync::CancellationToken,
) -> Result<()> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "2")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "200000")
        .set("compression.type", "none")
        .create()?;
    let published = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let beats = tokio::spawn(heartbeats(
        producer.clone(),
        format!("{topic}.heartbeats"),
        w.clone(),
        system,
        clock,
        published.clone(),
        stop,
    ));
    let mut in_flight = VecDeque::new();
    tokio::time::sleep_until(clock.instant(w.config.start_us)).await;
    for (i, e) in w.events(system).iter().enumerate() {
        if paced {
            tokio::time::sleep_until(clock.instant(e.arrive_us)).await;
        }
        let record = FutureRecord::<(), [u8]>::to(&topic).payload(&e.raw[..]);
        in_flight.push_back(producer.send_result(record).map_err(|(e, _)| e)?);
        published.store(i + 1, Ordering::SeqCst);
        // Bounded: wait for the oldest acknowledgement past 50k in flight.
        while in_flight.len() > 50_000 {
            let ack = in_flight.pop_front().expect("non-empty");
            ack.await?.map_err(|(e, _)| e)?;
        }
    }
    for ack in in_flight {
        ack.await?.map_err(|(e, _)| e)?;
    }
    done.store(true, Ordering::SeqCst);
    beats.await?
}

/// The connector heartbeats of [`produce`]: the key is a post-batch resume token whose
/// cluster time (seconds) is how far the connector has read.
async fn heartbeats(
    producer: FutureProducer,
    topic: String,
    w: Arc<Workload>,
    system: System,
    clock: Clock,
    published: Arc<std::sync::atomic::AtomicUsize>,
    stop: tokio_util::sync::CancellationToken,
) -> Result<()> {
    let next_commit = w.next_commits(system);
    let mut n = 0u32;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        let now_us = clock.now_us();
        let read_up_to = (now_us - w.lag_us(system, now_us))
            .min(next_commit[published.load(Ordering::SeqCst)].saturating_sub(1));
        if read_up_to < 1_000_000 {
            continue;
        }
        n += 1;
        let secs = u32::try_from(read_up_to / 1_000_000).context("a cluster time past 2106")?;
        let key = overseer_ingestion::freshness::mongo_heartbeat_key(secs, n);
        let record = FutureRecord::<str, [u8]>::to(&topic).key(&key);
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .context("publishing a connector heartbeat")?;
    }
}

/// Writes the payments system's changes of `w` to the payments database, each at its
/// arrival time in its own transaction (`paced`), or as fast as PostgreSQL takes them in
/// transactions of up to 1,000 changes; sets `done` once all are committed. The commit
/// times the WAL carries are PostgreSQL's own. Redeliveries are not written: a WAL does
/// not redeliver.
pub(crate) async fn write_payments(
    w: Arc<Workload>,
    clock: Clock,
    paced: bool,
    done: Arc<AtomicBool>,
) -> Result<()> {
    let url = std::env::var(SRC_URL_ENV).context(SRC_URL_ENV)?;
    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let mut batch = String::new();
    let mut n = 0;
    // Not before the traffic starts: PostgreSQL stamps the commit times, and an earlier
    // one would put a transfer before its ledger entries by more than the grace.
    tokio::time::sleep_until(clock.instant(w.config.start_us)).await;
    for e in w.events(System::Payments).iter().filter(|e| !e.duplicate) {
        let sql = change_sql(&e.raw)?;
        if paced {
            tokio::time::sleep_until(clock.instant(e.arrive_us)).await;
            db.batch_execute(&sql).await?;
            continue;
        }
        batch.push_str(&sql);
        batch.push_str(";\n");
        n += 1;
        if n == 1_000 {
            db.batch_execute(&format!("BEGIN;\n{batch}COMMIT;")).await?;
            (batch, n) = (String::new(), 0);
        }
    }
    if n > 0 {
        db.batch_execute(&format!("BEGIN;\n{batch}COMMIT;")).await?;
    }
    done.store(true, Ordering::SeqCst);
    Ok(())
}

/// The SQL statement that makes a Debezium PostgreSQL change event happen.
fn change_sql(raw: &[u8]) -> Result<String> {
    let v: serde_json::Value = serde_json::from_slice(raw)?;
    let table = v["source"]["table"].as_str().context("source.table")?;
    let after = v["after"].as_object().context("after")?;
    let lit = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "NULL".to_owned(),
        serde_json::Value::String(s) => format!("'{}'", s.replace('\'', "''")),
        other => format!("'{other}'"),
    };
    let cols: Vec<&str> = after.keys().map(String::as_str).collect();
    let vals: Vec<String> = after.values().map(lit).collect();
    let key = if table == "assets" { "symbol" } else { "id" };
    Ok(match v["op"].as_str() {
        Some("c") => format!(
            "INSERT INTO payments.{table} ({}) VALUES ({})",
            cols.join(", "),
            vals.join(", ")
        ),
        Some("u") => {
            let set: Vec<String> = cols
                .iter()
                .zip(&vals)
                .filter(|(c, _)| **c != key)
                .map(|(c, v)| format!("{c} = {v}"))
                .collect();
            format!(
                "UPDATE payments.{table} SET {} WHERE {key} = {}",
                set.join(", "),
                lit(&after[key])
            )
        }
        op => bail!("unexpected change op {op:?}"),
    })
}

/// The baseline: a consumer that only reads run `run`'s ledger topic from the beginning
/// (no decode, no storage), until it has seen `expected` messages. Returns messages per second, from the
/// first message to the last.
pub(crate) fn consume_only(brokers: &str, run: &str, expected: u64) -> Result<f64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{run}-consume-only"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    consumer.subscribe(&[&topic(run, System::Ledger)])?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let (mut n, mut first) = (0u64, None);
    while n < expected {
        if Instant::now() > deadline {
            bail!("consume-only read {n} of {expected} messages in 300 s");
        }
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            m?;
            first.get_or_insert_with(Instant::now);
            n += 1;
        }
    }
    let secs = first.map_or(0.0, |t| t.elapsed().as_secs_f64()).max(1e-6);
    Ok(n as f64 / secs)
}
