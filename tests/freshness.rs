//! Freshness from upstream evidence, end to end on real components: a ledger topic with
//! four partitions, one of them 5 s behind the others, checked with a 2 s grace. Being at
//! the end of every partition says nothing about the partition still to be written, so
//! the ledger's watermark is the slowest partition's: every transfer is checked once both
//! of its entries are in, no balanced transfer pages (0 false alarms), and every
//! unbalanced one does.
//!
//! Real parts: PostgreSQL 15 with logical WAL (the `payments` source and the catalog),
//! the tansu broker (the ledger topic, the MongoDB connector's heartbeat topic, the
//! events topic of the Kafka bus), the garage S3 server, and `overseer run` as a child
//! process; PagerDuty is the local Events API v2 server of `overseer_testkit`.

mod common;

use overseer_dal::catalog::prelude::*;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};

use overseer_dal::catalog::postgres::PgCatalog;
use overseer_testkit::pagerduty::FakePagerDuty;
use overseer_testkit::{Server, unique_name};
use tokio_util::sync::CancellationToken;

use common::{
    EVENTS_TOPIC, HEARTBEATS_TOPIC, Overseer, change, mongo_heartbeats, now_ms, trigger_requests,
    wait_until,
};

const CHECK: &str = "transfer_nets_to_zero";
const PARTITIONS: i32 = 4;
/// The partition that is behind, and by how much.
const LAGGING: i32 = 3;
const LAG: Duration = Duration::from_secs(5);
const GRACE_MS: u64 = 2000;
const TRANSFERS: usize = 48;
/// Every this many transfers, one whose credit is off by one minor unit.
const FAULT_EVERY: usize = 6;

fn config(s3: &Server, prefix: &str, schema: &str, brokers: &str, pd_url: &str) -> String {
    let prs = format!(
        r#"grace_ms = {GRACE_MS}
max_delay_ms = 60000

[prs.checks.{CHECK}]
strategy = "freshness-aware"

[prs.checks.entries_match_amount]
enabled = false

[prs.checks.wallet_balance_matches_entries]
enabled = false"#
    );
    common::real_config(s3, prefix, schema, brokers, pd_url, "fresh", &prs)
}

fn entry(transfer: &str, account: &str, direction: &str, minor: i64) -> Value {
    json!({"transfer_id": transfer, "account_id": account, "asset": "USD",
           "direction": direction, "amount_minor": {"$numberLong": minor.to_string()},
           "decimals": 2})
}

async fn produce(producer: &FutureProducer, partition: i32, key: &str, ev: &Value) {
    let payload = ev.to_string();
    producer
        .send(
            FutureRecord::to("ledger")
                .partition(partition)
                .key(key)
                .payload(&payload),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produce to the ledger topic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lagging_partition_holds_the_checks_until_its_entries_arrive() {
    let started = Instant::now();
    let pg = Server::start("postgres");
    let kafka = Server::start("tansu");
    let s3 = Server::start("garage");
    let pd = FakePagerDuty::start().await.unwrap();
    let url = pg.var("PG_URL").to_owned();
    let brokers = kafka.var("KAFKA_BROKERS").to_owned();
    let prefix = unique_name("fresh");
    let schema = unique_name("fresh");
    let dir = tempfile::tempdir().unwrap();

    let client = common::payments_db(&url, "fresh_pub", "fresh_slot").await;
    common::create_topics(
        &brokers,
        &[
            ("ledger", PARTITIONS),
            (HEARTBEATS_TOPIC, 1),
            (EVENTS_TOPIC, 4),
        ],
    )
    .await;
    let producer = common::producer(&brokers);
    // The connector's heartbeats are honest: it has written everything up to its read
    // position, which trails the clock by more than the lagging partition does.
    let stop_beats = CancellationToken::new();
    let beats = mongo_heartbeats(
        producer.clone(),
        HEARTBEATS_TOPIC,
        Duration::from_millis(250),
        LAG + Duration::from_secs(1),
        stop_beats.clone(),
    );

    let cfg = dir.path().join("overseer.toml");
    std::fs::write(&cfg, config(&s3, &prefix, &schema, &brokers, &pd.url())).unwrap();
    let cat = PgCatalog::connect(&url, &schema).await.unwrap();
    let log = std::env::temp_dir().join(format!("overseer-freshness-{}.log", std::process::id()));
    let mut ov = Overseer::start(&cfg, &url, &s3, &log);
    common::wait_ready(&mut ov, &cat).await;
    eprintln!("overseer ready after {:?}", started.elapsed());
    client
        .batch_execute("INSERT INTO payments.assets VALUES ('USD', 2)")
        .await
        .unwrap();

    // Traffic: a transfer every 150 ms; its debit on one of the partitions in step, its
    // credit on the lagging one, written 5 s after its commit.
    let mut faulty = BTreeSet::new();
    let mut late = tokio::task::JoinSet::new();
    let mut last_ms = 0;
    for i in 0..TRANSFERS {
        let id = format!("T{i:03}");
        let fault = i % FAULT_EVERY == FAULT_EVERY - 1;
        if fault {
            faulty.insert(id.clone());
        }
        client
            .batch_execute(&format!(
                "INSERT INTO payments.transfers VALUES ('{id}', 'acc-{}', 'USD', 12.50, 'completed', now())",
                i % 5
            ))
            .await
            .unwrap();
        let at = now_ms();
        last_ms = at;
        let (debit, credit) = (format!("{:024x}", 2 * i + 1), format!("{:024x}", 2 * i + 2));
        let n = 2 * i as u32;
        let ev = change(
            n + 1,
            "insert",
            &debit,
            at,
            entry(&id, "acc-d", "debit", 1250),
        );
        produce(&producer, i as i32 % LAGGING, &debit, &ev).await;
        let minor = if fault { 1249 } else { 1250 };
        let ev = change(
            n + 2,
            "insert",
            &credit,
            at,
            entry(&id, "acc-c", "credit", minor),
        );
        let producer = producer.clone();
        late.spawn(async move {
            tokio::time::sleep(LAG).await;
            produce(&producer, LAGGING, &credit, &ev).await;
        });
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    late.join_all().await;
    eprintln!("traffic written after {:?}", started.elapsed());

    // Every fault is found...
    let want: BTreeSet<String> = faulty
        .iter()
        .map(|t| overseer_prs::escalate::dedup_key(CHECK, t))
        .collect();
    wait_until(
        &mut ov,
        Duration::from_secs(90),
        "every unbalanced transfer pages",
        async || {
            let open: BTreeSet<String> = pd
                .open_incidents()
                .into_iter()
                .map(|i| i.dedup_key)
                .collect();
            want.is_subset(&open)
        },
    )
    .await;
    // ...and, once the ledger is complete past the last transfer's evaluation time and
    // its runs are done, nothing else paged.
    let last_eval_us = (last_ms + GRACE_MS as i64 + 1000) * 1000;
    wait_until(
        &mut ov,
        Duration::from_secs(60),
        "the ledger is complete past the last evaluation time",
        async || {
            let states = cat.source_states().await.unwrap();
            states
                .iter()
                .any(|st| st.source == "ledger-kafka" && st.watermark_us > last_eval_us)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let opened: BTreeSet<String> = pd
        .open_incidents()
        .into_iter()
        .map(|i| i.dedup_key)
        .collect();
    let false_alarms: Vec<_> = opened.difference(&want).collect();
    assert!(
        false_alarms.is_empty(),
        "balanced transfers paged (their credit, on the lagging partition, was not waited for): {false_alarms:?}"
    );
    assert_eq!(opened, want);
    assert_eq!(trigger_requests(&pd), want.len(), "one trigger per fault");
    let log_text = ov.log();
    assert!(
        log_text.contains("the source's lanes") && log_text.contains("ledger/3"),
        "the ledger declares its partitions as lanes"
    );
    stop_beats.cancel();
    beats.await.unwrap();
    eprintln!(
        "{} faults paged, 0 false alarms; whole test {:?}",
        want.len(),
        started.elapsed()
    );
}
