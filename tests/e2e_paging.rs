//! End to end on real components: a transfer committed in PostgreSQL (read from its WAL)
//! whose ledger entries, arriving as MongoDB change-stream events on a Kafka topic, do not
//! balance pages PagerDuty once; more failing runs add nothing; fixing the entry resolves
//! the incident, and the catalog's incident row ends settled.
//!
//! Every part is real except PagerDuty (which cannot be reached from here): PostgreSQL 15
//! with logical WAL (the `payments` source and the catalog), the tansu broker (the ledger
//! CDC topic and the events topic of the Kafka bus), the garage S3 server (the object
//! store), and `overseer run` as a child process; the ledger connector's heartbeats, on a
//! topic of their own, are what moves the idle ledger's watermark. PagerDuty is the local Events API v2
//! server of `overseer_testkit`, in this test's process.

mod common;

use overseer_dal::catalog::prelude::*;
use std::time::{Duration, Instant};

use rdkafka::producer::FutureProducer;
use serde_json::{Value, json};

use overseer_dal::catalog::postgres::PgCatalog;
use overseer_dal::update::Incident;
use overseer_testkit::pagerduty::TEST_ROUTING_KEY;

use common::{RealStack, change, now_ms, trigger_requests, wait_until};

const CHECK: &str = "transfer_nets_to_zero";
const TRANSFER: &str = "T1";
const DEBIT: &str = "65e1f1c0a1b2c3d4e5f60001";
const CREDIT: &str = "65e1f1c0a1b2c3d4e5f60002";

/// The `[prs]` settings: the other two shipped checks off.
const PRS: &str = r#"grace_ms = 1000
max_delay_ms = 20000

[prs.checks.entries_match_amount]
enabled = false

[prs.checks.wallet_balance_matches_entries]
enabled = false"#;

fn entry(account: &str, direction: &str, minor: i64) -> Value {
    json!({"transfer_id": TRANSFER, "account_id": account, "asset": "USD",
           "direction": direction, "amount_minor": {"$numberLong": minor.to_string()},
           "decimals": 2})
}

async fn produce(producer: &FutureProducer, key: &str, ev: &Value) {
    common::produce_ledger(producer, None, key, ev).await;
}

async fn incident(cat: &PgCatalog) -> Option<Incident> {
    cat.incident(CHECK, TRANSFER).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unbalanced_transfer_pages_once_and_the_fix_resolves() {
    let started = Instant::now();
    // The ledger's connector is idle but healthy: its heartbeats keep coming.
    let (mut stack, mut ov) = RealStack::start("e2e", 1, Duration::ZERO, PRS).await;
    let RealStack {
        pd,
        client,
        producer,
        cat,
        ..
    } = &stack;

    // 1. The transfer (with its asset) in one transaction, pending; its unbalanced
    // entries; then the transfer completes. Only a completed transfer must net to zero,
    // so the check fails first as of the completion, when both entries are there (had
    // the transfer been completed first, whether a run as of then saw no entry, one or
    // both would depend on timing).
    client
        .batch_execute(
            "BEGIN;
             INSERT INTO payments.assets VALUES ('USD', 2);
             INSERT INTO payments.transfers VALUES ('T1', 'acc-1', 'USD', 12.50, 'pending', now());
             COMMIT;",
        )
        .await
        .unwrap();
    produce(
        producer,
        DEBIT,
        &change(1, "insert", DEBIT, now_ms(), entry("acc-1", "debit", 1250)),
    )
    .await;
    produce(
        producer,
        CREDIT,
        &change(
            2,
            "insert",
            CREDIT,
            now_ms(),
            entry("acc-2", "credit", 1200),
        ),
    )
    .await;
    client
        .batch_execute("UPDATE payments.transfers SET status = 'completed', updated_at = now() WHERE id = 'T1'")
        .await
        .unwrap();
    let inserted = Instant::now();

    // 2. Exactly one incident, about T1, with the evidence.
    wait_until(
        &mut ov,
        Duration::from_secs(60),
        "PagerDuty has an open incident",
        async || !pd.open_incidents().is_empty(),
    )
    .await;
    let detected = inserted.elapsed();
    eprintln!("time to detect (completion → PagerDuty incident): {detected:?}");
    let open = pd.open_incidents();
    assert_eq!(open.len(), 1, "{open:#?}");
    let inc = &open[0];
    assert_eq!(inc.routing_key, TEST_ROUTING_KEY);
    assert_eq!(
        inc.dedup_key,
        overseer_prs::escalate::dedup_key(CHECK, TRANSFER)
    );
    assert!(inc.summary().contains(TRANSFER), "{}", inc.summary());
    assert!(inc.summary().contains(CHECK), "{}", inc.summary());
    let cd = &inc.payload["custom_details"];
    assert_eq!(cd["check"], CHECK, "{cd:#}");
    assert_eq!(cd["subject"], TRANSFER, "{cd:#}");
    assert_eq!(cd["details"]["transfer"], TRANSFER, "{cd:#}");
    let entries = cd["details"]["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 2, "{cd:#}");
    let minors: Vec<i64> = entries
        .iter()
        .map(|e| e["amount_minor"].as_i64().unwrap())
        .collect();
    assert!(minors.contains(&1250) && minors.contains(&1200), "{cd:#}");
    assert!(
        cd["message"]
            .as_str()
            .unwrap_or_default()
            .contains("net to -50"),
        "{cd:#}"
    );
    // The evidence names the updates of both systems the view was built from.
    let evidence: Vec<&str> = cd["evidence"]
        .as_array()
        .expect("evidence")
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(
        evidence.iter().any(|e| e.starts_with("payments-wal@")),
        "{evidence:?}"
    );
    assert_eq!(
        evidence
            .iter()
            .filter(|e| e.starts_with("ledger-kafka@"))
            .count(),
        2,
        "{evidence:?}"
    );
    assert_eq!(pd.incidents_opened_total(), 1);

    // More failing runs add nothing: a change to T1's entries that leaves them unbalanced
    // re-runs the check (its incident's last evaluation moves past it), and PagerDuty
    // hears nothing more.
    let before = incident(cat).await.expect("the incident row");
    assert!(before.failing && before.notified_failing, "{before:?}");
    let noop_ms = now_ms();
    produce(
        producer,
        DEBIT,
        &change(3, "update", DEBIT, noop_ms, json!({"memo": "retried"})),
    )
    .await;
    wait_until(
        &mut ov,
        Duration::from_secs(60),
        "the check re-ran after the no-op update",
        async || {
            incident(cat)
                .await
                .is_some_and(|i| i.last_eval_us >= noop_ms * 1000)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = incident(cat).await.unwrap();
    assert!(again.failing && again.notified_failing, "{again:?}");
    assert_eq!(pd.incidents_opened_total(), 1);
    assert_eq!(pd.open_incidents().len(), 1);
    assert_eq!(
        trigger_requests(pd),
        1,
        "fail→fail sends nothing: {:#?}",
        pd.requests()
    );
    assert_eq!(pd.triggers_deduplicated(), 0);
    assert_eq!(pd.resolves(), 0);

    // 3. The fix: the credit becomes 1250. The incident resolves.
    produce(
        producer,
        CREDIT,
        &change(
            4,
            "update",
            CREDIT,
            now_ms(),
            json!({"amount_minor": {"$numberLong": "1250"}}),
        ),
    )
    .await;
    let fixed = Instant::now();
    wait_until(
        &mut ov,
        Duration::from_secs(60),
        "the incident is resolved",
        async || pd.open_incidents().is_empty() && pd.resolves() == 1,
    )
    .await;
    eprintln!(
        "time to resolve (fix → PagerDuty resolve): {:?}",
        fixed.elapsed()
    );
    let resolved = pd.resolved_incidents();
    assert_eq!(resolved.len(), 1);
    assert_eq!(resolved[0].dedup_key, inc.dedup_key);
    assert_eq!(pd.incidents_opened_total(), 1);
    assert_eq!(pd.resolves_dropped(), 0);
    // Every request was well-formed.
    for r in pd.requests() {
        assert_eq!(r.status, 202, "{r:#?}");
    }

    // 4. A polite stop; the incident row is settled: passing, and PagerDuty told so.
    ov.stop().await;
    let settled = incident(cat).await.expect("the incident row");
    assert!(
        !settled.failing && !settled.notified_failing && !settled.unsettled(),
        "{settled:?}"
    );
    assert!(cat.unsettled_incidents(10).await.unwrap().is_empty());
    let failing = cat.incidents(true).await.unwrap();
    assert!(failing.is_empty(), "{failing:?}");
    assert_eq!(pd.incidents_opened_total(), 1);
    assert_eq!(trigger_requests(pd), 1);

    let log_text = ov.log();
    eprintln!(
        "overseer log tail:\n{}",
        log_text
            .lines()
            .rev()
            .take(8)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    stack.stop_heartbeats().await;
    eprintln!(
        "time to detect {detected:?}; whole test {:?}",
        started.elapsed()
    );
}
