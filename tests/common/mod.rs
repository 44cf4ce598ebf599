//! What the end-to-end tests on real components share: `overseer run` as a child process,
//! polling with a deadline, MongoDB change-stream events and the MongoDB Kafka
//! connector's heartbeats, and counting PagerDuty triggers.
#![allow(dead_code)] // each test crate uses its own share of this module

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use overseer_testkit::Server;
use overseer_testkit::pagerduty::{FakePagerDuty, TEST_ROUTING_KEY};

/// `overseer run` as a child process, its stderr in a file. Killed when dropped; a test
/// that panics meanwhile prints its log.
pub(crate) struct Overseer {
    pub(crate) child: Child,
    log: PathBuf,
}

impl Overseer {
    pub(crate) fn start(cfg: &Path, url: &str, s3: &Server, log: &Path) -> Overseer {
        let file = std::fs::File::create(log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_overseer"))
            .args(["run", "--config"])
            .arg(cfg)
            .env("E2E_CATALOG_URL", url)
            .env("E2E_SOURCE_URL", url)
            .env("E2E_PD_KEY", TEST_ROUTING_KEY)
            // The log is kept in a file: plain text.
            .env("NO_COLOR", "1")
            .env("AWS_ACCESS_KEY_ID", s3.var("AWS_ACCESS_KEY_ID"))
            .env("AWS_SECRET_ACCESS_KEY", s3.var("AWS_SECRET_ACCESS_KEY"))
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
            let secs = (now_ms() - behind.as_millis() as i64) / 1000;
            // The connector's heartbeat key is the token document as JSON; its value is null.
            let key =
                json!({"_data": format!("82{secs:08X}{n:08X}2B022C0100296E5A1004")}).to_string();
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
