//! Shared pieces of the benchmarks: workloads and in-memory sources.
//!
//! - [`ledger_events`]: MongoDB change-stream events of the payments example.
//! - [`MemorySource`]: a source that replays prepared events (no file or network I/O, so a
//!   benchmark measures the pipeline, not the input).

use async_trait::async_trait;
use bytes::Bytes;

use overseer_ingestion::source::{AckToken, Source, SourceContext, SourceEvent, SourceMsg};

/// `n` ledger-entry insert events (about 400 bytes each) over `n / 2` transfers.
pub fn ledger_events(n: usize) -> Vec<SourceEvent> {
    (0..n)
        .map(|i| {
            let id = format!("e{i:09}");
            let raw = serde_json::json!({
                "_id": {"_data": format!("82{i:030X}")},
                "operationType": "insert",
                "ns": {"db": "ledger", "coll": "entries"},
                "documentKey": {"_id": id},
                "clusterTime": {"$timestamp": {"t": 1_767_225_600 + (i / 1000) as i64, "i": (i % 1000) as i64}},
                "wallTime": {"$date": {"$numberLong": (1_767_225_600_000i64 + i as i64).to_string()}},
                "fullDocument": {"_id": id, "transfer_id": format!("t{:09}", i / 2),
                    "account_id": format!("acc{:05}", i % 10_000), "asset": "BTC",
                    "direction": if i % 2 == 0 { "debit" } else { "credit" },
                    "amount_minor": {"$numberLong": ((i % 100_000) * 1000).to_string()}, "decimals": 8}
            })
            .to_string();
            SourceEvent {
                raw: Bytes::from(raw),
                key: None,
                context: None,
                position: format!("{i:016}"),
                commit_time_us: None,
                ack: Some(AckToken::Offset(i as u64 + 1)),
                checkpoint: Some((i + 1).to_string()),
                lane: 0,
            }
        })
        .collect()
}

/// Replays prepared events, then ends.
#[derive(Debug)]
pub struct MemorySource(pub Vec<SourceEvent>);

#[async_trait]
impl Source for MemorySource {
    async fn run(self: Box<Self>, ctx: SourceContext) -> overseer_ingestion::Result<()> {
        for e in self.0 {
            if ctx.tx.send(SourceMsg::Event(e)).await.is_err() {
                break;
            }
        }
        Ok(())
    }
}

/// The config of the ledger model and a source named `ledger` with a memory store layout
/// rooted at `dir` (local object store, embedded catalog).
pub fn ledger_config(dir: &std::path::Path) -> overseer_ingestion::config::Config {
    let text = format!(
        r#"
[store]
kind = "local"
path = "{d}/objects"
[catalog]
kind = "embedded"
path = "{d}/catalog.redb"
[[models]]
name = "ledger.entries"
id_field = "_id"
references = {{ transfer_id = "transfer_id", account_id = "account_id", asset = "asset" }}
[[sources]]
name = "ledger"
format = "mongo-change-stream"
[sources.file]
path = "unused"
"#,
        d = dir.display()
    );
    let c: overseer_ingestion::config::Config = toml::from_str(&text).expect("bench config");
    c.validate().expect("bench config is valid");
    c
}
