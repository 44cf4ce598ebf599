//! `overseer demo`: the payments example of DESIGN.md on the embedded default — no servers,
//! no config. It generates transfers (Debezium PostgreSQL envelopes) and ledger entries
//! (MongoDB change-stream events) with redelivered duplicates and malformed events mixed
//! in, ingests them through the real pipeline (file sources → local object store → embedded
//! catalog), shows one transfer's history and its joined ledger entries, and checks that a
//! `reindex` of the object store rebuilds exactly the same catalog.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, ensure};
use tokio_util::sync::CancellationToken;

use overseer_dal::catalog::embedded::EmbeddedCatalog;
use overseer_dal::config::{BusConfig, CatalogConfig, StoreConfig};
use overseer_ingestion::config::Config;
use overseer_ingestion::pipeline::Storage;

/// Writes the demo's events; returns (transfer events, ledger events, malformed, duplicates).
fn generate(dir: &Path, transfers: u64, seed: u64) -> Result<(u64, u64, u64, u64)> {
    let mut rng = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut tf = std::io::BufWriter::new(std::fs::File::create(dir.join("transfers.jsonl"))?);
    let mut lf = std::io::BufWriter::new(std::fs::File::create(dir.join("ledger.jsonl"))?);
    let (mut nt, mut nl, mut bad, mut dup) = (0, 0, 0, 0);
    let base_ms: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    let assets = [("USD", 2u32), ("BTC", 8), ("ETH", 18)];
    for i in 0..transfers {
        let t_ms = base_ms + i as i64;
        let (asset, decimals) = assets[(next() % 3) as usize];
        let units = next() % 100_000 + 1;
        let amount = format!("{}.{:02}", units / 100, units % 100);
        let minor = (units as u128) * 10u128.pow(decimals - 2);
        let id = format!("t{i:08}");
        let acct = format!("acc{:04}", next() % 1000);
        let row = |status: &str| {
            serde_json::json!({"id": id, "account_id": acct, "asset": asset,
                "amount": amount, "status": status, "updated_at": t_ms})
        };
        for (op, before, after, at) in [
            ("c", serde_json::Value::Null, row("pending"), t_ms),
            ("u", row("pending"), row("completed"), t_ms + 150),
        ] {
            let ev = serde_json::json!({"payload": {"op": op, "before": before, "after": after,
                "source": {"schema": "payments", "table": "transfers", "ts_ms": at,
                    "lsn": 2 * i + u64::from(op == "u")},
                "ts_ms": at + 3}});
            let line = ev.to_string();
            writeln!(tf, "{line}")?;
            nt += 1;
            if next() % 500 == 0 {
                writeln!(tf, "{line}")?; // redelivered: same change, same LSN, new position
                dup += 1;
            }
        }
        for (k, (dir_, acc)) in [("debit", acct.as_str()), ("credit", "house")]
            .iter()
            .enumerate()
        {
            let ev = serde_json::json!({
                "_id": {"_data": format!("{i:08}{k}")},
                "operationType": "insert",
                "ns": {"db": "ledger", "coll": "entries"},
                "documentKey": {"_id": format!("e{i:08}-{k}")},
                "clusterTime": {"$timestamp": {"t": t_ms / 1000, "i": 1}},
                "wallTime": {"$date": {"$numberLong": (t_ms + 40).to_string()}},
                "fullDocument": {"_id": format!("e{i:08}-{k}"), "transfer_id": id,
                    "account_id": acc, "asset": asset, "direction": dir_,
                    "amount_minor": {"$numberLong": minor.to_string()}, "decimals": decimals}});
            writeln!(lf, "{ev}")?;
            nl += 1;
        }
        if next() % 1000 == 0 {
            writeln!(
                lf,
                "{{\"operationType\": \"insert\", \"fullDocument\": {{\"transfer_id\": \"{id}\""
            )?;
            bad += 1;
        }
    }
    tf.flush()?;
    lf.flush()?;
    Ok((nt, nl, bad, dup))
}

fn demo_config(dir: &Path) -> Result<Config> {
    let text = format!(
        r#"
[[models]]
name = "payments.transfers"
id_field = "id"
references = {{ account_id = "account_id" }}

[[models]]
name = "ledger.entries"
id_field = "_id"
references = {{ transfer_id = "transfer_id", account_id = "account_id" }}

[[sources]]
name = "payments-pg"
format = "debezium-postgres"
[sources.file]
path = "{t}"

[[sources]]
name = "ledger-mongo"
format = "mongo-change-stream"
[sources.file]
path = "{l}"
"#,
        t = dir.join("transfers.jsonl").display(),
        l = dir.join("ledger.jsonl").display()
    );
    let mut cfg: Config = toml::from_str(&text)?;
    cfg.store = StoreConfig::Local {
        path: dir.join("objects"),
    };
    cfg.catalog = CatalogConfig::Embedded {
        path: dir.join("catalog.redb"),
    };
    cfg.bus = BusConfig::default();
    cfg.validate()?;
    Ok(cfg)
}

pub(crate) async fn run(dir: Option<PathBuf>, transfers: u64, seed: u64) -> Result<()> {
    let tmp;
    let dir = match dir {
        Some(d) => {
            std::fs::create_dir_all(&d)?;
            d
        }
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    println!(
        "overseer demo — payments on the embedded default (data in {})",
        dir.display()
    );
    let (nt, nl, bad, dup) = generate(&dir, transfers, seed)?;
    println!(
        "generated {transfers} transfers: {nt} Debezium PostgreSQL events, {nl} MongoDB change-stream events, \
         {dup} redelivered duplicates, {bad} malformed events"
    );

    let cfg = demo_config(&dir)?;
    let storage = Storage::open(&cfg).await?;
    let started = Instant::now();
    let reports =
        overseer_ingestion::service::run(&cfg, storage.clone(), true, CancellationToken::new())
            .await?;
    let secs = started.elapsed().as_secs_f64();
    let (mut events, mut updates, mut dups, mut quarantined, mut segments) = (0, 0, 0, 0, 0);
    for r in reports.values() {
        events += r.events;
        updates += r.updates;
        dups += r.duplicates;
        quarantined += r.quarantined;
        segments += r.segments;
    }
    println!(
        "ingested {events} events in {secs:.2}s ({:.0} events/s): {updates} updates in {segments} segments \
         ({:.0} updates per object write), {dups} duplicates ignored, {quarantined} quarantined",
        events as f64 / secs,
        updates as f64 / segments.max(1) as f64
    );
    ensure!(
        updates == nt + nl,
        "every good event is in the history exactly once"
    );
    ensure!(
        dups == dup && quarantined == bad,
        "duplicates ignored, malformed events quarantined"
    );

    let cat = &storage.catalog;
    let t = "t00000042";
    println!("\nhistory of payments.transfers/{t}:");
    for e in cat
        .record_updates("payments.transfers", t, i64::MAX)
        .await?
    {
        let time = chrono::DateTime::from_timestamp_micros(e.event_time_us).unwrap_or_default();
        println!(
            "  {}  {:<10} {}@{}",
            time.format("%H:%M:%S%.3f"),
            e.op.as_str_name().trim_start_matches("OP_").to_lowercase(),
            e.source,
            e.position
        );
    }
    let entries = cat
        .records_by_ref("ledger.entries", "transfer_id", t)
        .await?;
    println!("ledger entries referencing it (reference index): {entries:?}");

    let letters = overseer_ingestion::deadletter::list_all(&*storage.store).await?;
    if let Some(l) = letters.first() {
        println!(
            "first quarantined event: {}@{}: {}",
            l.source, l.position, l.reason
        );
    }

    let fresh: Arc<EmbeddedCatalog> = Arc::new(EmbeddedCatalog::open(dir.join("reindexed.redb"))?);
    let rep = overseer_ingestion::reindex::reindex(&*storage.store, &*fresh).await?;
    let same = overseer_dal::Catalog::dump(&*fresh).await? == cat.dump().await?;
    println!(
        "\nreindex from the object store alone: {} segments, {} updates — {}",
        rep.segments,
        rep.updates,
        if same {
            "identical to the live catalog"
        } else {
            "DIFFERS from the live catalog"
        }
    );
    ensure!(same, "reindex must rebuild the same catalog");
    Ok(())
}
