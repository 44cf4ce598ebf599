//! `overseer bench --mode real`: the servers, the per-run config and the producers.
//!
//! PostgreSQL (the catalog), the tansu broker (both systems' change events, each on its
//! own topic, in the formats Debezium and MongoDB change streams publish) and the garage
//! S3 server (the segments) run as local processes, started with the repository's
//! `scripts/{postgres,tansu,garage}.sh` (installed by `scripts/install-test-deps.sh`) and
//! stopped when the bench ends. Producers publish each system's generated events at their
//! arrival times (or as fast as the broker takes them), and ingestion reads them back
//! through its Kafka sources.

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

use overseer_checks::workload::live::Clock;
use overseer_checks::workload::{System, Workload};
use overseer_ingestion::config::Config;

/// The environment variable the per-run configs name for the catalog's connection.
const PG_URL_ENV: &str = "OVERSEER_BENCH_PG_URL";

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
    /// consumer groups): Kafka sources for both systems, the S3 store, the PostgreSQL
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
        text.push_str(overseer_checks::workload::MODELS_TOML);
        for (system, format) in [
            (System::Payments, "debezium-postgres"),
            (System::Ledger, "mongo-change-stream"),
        ] {
            text.push_str(&format!(
                r#"
[[sources]]
name = "{name}"
format = "{format}"
[sources.kafka]
brokers = "{brokers}"
topics = ["{topic}"]
group = "{run}-{name}-ingest"
properties = {{ "fetch.wait.max.ms" = "10" }}
"#,
                name = system.name(),
                brokers = self.brokers(),
                topic = topic(run, system),
            ));
        }
        let mut cfg: Config = toml::from_str(&text).context("the real-mode config")?;
        cfg.ingest.heartbeat_ms = 50;
        cfg.prs.from_beginning = true;
        Ok(cfg)
    }

    /// Creates the run's topics (one partition each: a source's events stay in order).
    pub(crate) async fn create_topics(&self, run: &str) -> Result<()> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .create()?;
        let names: Vec<String> = System::ALL.iter().map(|s| topic(run, *s)).collect();
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
pub(crate) async fn produce(
    brokers: String,
    topic: String,
    w: Arc<Workload>,
    system: System,
    clock: Clock,
    paced: bool,
    done: Arc<AtomicBool>,
) -> Result<()> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "2")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "200000")
        .set("compression.type", "none")
        .create()?;
    let mut in_flight = VecDeque::new();
    for e in w.events(system) {
        if paced {
            tokio::time::sleep_until(clock.instant(e.arrive_us)).await;
        }
        let record = FutureRecord::<(), [u8]>::to(&topic).payload(&e.raw[..]);
        in_flight.push_back(producer.send_result(record).map_err(|(e, _)| e)?);
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
    Ok(())
}

/// The baseline: a consumer that only reads `topics` from the beginning (no decode, no
/// storage), until it has seen `expected` messages. Returns messages per second, from the
/// first message to the last.
pub(crate) fn consume_only(brokers: &str, run: &str, expected: u64) -> Result<f64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{run}-consume-only"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let topics: Vec<String> = System::ALL.iter().map(|s| topic(run, *s)).collect();
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&refs)?;
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
