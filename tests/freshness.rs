//! Freshness from upstream evidence, end to end. On real components: a ledger topic with
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
//!
//! On the same stack, a ledger connector that stops past the checks' max delay: stale
//! verdicts, then every stale evaluation runs again when it resumes.
//!
//! With no servers: followed files whose events arrive out of commit order within the
//! source's declared bound: live pages what `overseer replay` of the stored history finds.

mod common;

use overseer_dal::catalog::prelude::*;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use overseer_dal::catalog::postgres::PgCatalog;
use overseer_testkit::pagerduty::FakePagerDuty;
use overseer_testkit::{Server, unique_name};

use common::{
    EVENTS_TOPIC, HEARTBEATS_TOPIC, Overseer, RealStack, change, create_topics,
    ledger_ingest_config, now_ms, open_keys, produce_ledger, producer, trigger_requests,
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

/// The `[prs]` settings: the check freshness-aware with a 2 s grace and `max_delay_ms`,
/// the other two off.
fn prs(max_delay_ms: u64) -> String {
    format!(
        r#"grace_ms = {GRACE_MS}
max_delay_ms = {max_delay_ms}

[prs.checks.{CHECK}]
strategy = "freshness-aware"

[prs.checks.entries_match_amount]
enabled = false

[prs.checks.wallet_balance_matches_entries]
enabled = false"#
    )
}

fn entry(transfer: &str, account: &str, direction: &str, minor: i64) -> Value {
    json!({"transfer_id": transfer, "account_id": account, "asset": "USD",
           "direction": direction, "amount_minor": {"$numberLong": minor.to_string()},
           "decimals": 2})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lagging_partition_holds_the_checks_until_its_entries_arrive() {
    let started = Instant::now();
    // The connector's heartbeats are honest: it has written everything up to its read
    // position, which trails the clock by more than the lagging partition does.
    let (mut stack, mut ov) = RealStack::start(
        "fresh",
        PARTITIONS,
        LAG + Duration::from_secs(1),
        &prs(60_000),
    )
    .await;
    let RealStack {
        pd,
        client,
        producer,
        cat,
        ..
    } = &stack;
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
        produce_ledger(producer, Some(i as i32 % LAGGING), &debit, &ev).await;
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
            produce_ledger(&producer, Some(LAGGING), &credit, &ev).await;
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
            let open = open_keys(pd);
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
    let opened = open_keys(pd);
    let false_alarms: Vec<_> = opened.difference(&want).collect();
    assert!(
        false_alarms.is_empty(),
        "balanced transfers paged (their credit, on the lagging partition, was not waited for): {false_alarms:?}"
    );
    assert_eq!(opened, want);
    assert_eq!(trigger_requests(pd), want.len(), "one trigger per fault");
    let log_text = ov.log();
    assert!(
        log_text.contains("the source's lanes") && log_text.contains("ledger/3"),
        "the ledger declares its partitions as lanes"
    );
    stack.stop_heartbeats().await;
    eprintln!(
        "{} faults paged, 0 false alarms; whole test {:?}",
        want.len(),
        started.elapsed()
    );
}

/// The ledger's connector stops — no events, no heartbeats — for longer than the checks'
/// max delay (3 s), then resumes. Transfers whose entries came in before it stopped, and
/// transfers whose entries it had not read yet, all go `stale`: nothing pages, and each
/// incident row records the evaluation still owed. When the connector resumes (the late
/// entries, then its heartbeats), every stale evaluation runs again — for the first group
/// with no new event at all — the unbalanced transfers page and nothing else does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_connector_makes_checks_stale_and_they_rerun_when_it_resumes() {
    const MAX_DELAY_MS: u64 = 3000;
    let started = Instant::now();
    let (mut stack, mut ov) =
        RealStack::start("stale", 1, Duration::from_secs(1), &prs(MAX_DELAY_MS)).await;
    stack
        .client
        .batch_execute("INSERT INTO payments.assets VALUES ('USD', 2)")
        .await
        .unwrap();
    // The connector stops heartbeating; it still delivers the first group's entries.
    stack.stop_heartbeats().await;
    let mut faulty = BTreeSet::new();
    let mut all = Vec::new();
    let mut unread = Vec::new();
    // The first group's entries all carry the first one's time: the ledger's own events
    // then never vouch for a time past the first transfer's, however slowly this loop
    // runs (else, on a slow machine, the early transfers' checks could see fresh data).
    let mut first_at = None;
    for i in 0..12usize {
        let id = format!("S{i:03}");
        let fault = i % 4 == 3;
        if fault {
            faulty.insert(id.clone());
        }
        stack
            .client
            .batch_execute(&format!(
                "INSERT INTO payments.transfers VALUES ('{id}', 'acc-{}', 'USD', 12.50, 'completed', now())",
                i % 5
            ))
            .await
            .unwrap();
        let at = now_ms();
        let entries_at = if i < 6 {
            *first_at.get_or_insert(at)
        } else {
            at
        };
        let minor = if fault { 1249 } else { 1250 };
        let n = 2 * i as u32;
        let events: Vec<(String, Value)> =
            [(1, "acc-d", "debit", 1250), (2, "acc-c", "credit", minor)]
                .into_iter()
                .map(|(k, account, direction, minor)| {
                    let key = format!("{:024x}", 2 * i + k);
                    let ev = change(
                        n + k as u32,
                        "insert",
                        &key,
                        entries_at,
                        entry(&id, account, direction, minor),
                    );
                    (key, ev)
                })
                .collect();
        if i < 6 {
            for (key, ev) in &events {
                produce_ledger(&stack.producer, None, key, ev).await;
            }
        } else {
            // Not read by the stopped connector yet.
            unread.extend(events);
        }
        all.push(id);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Past the max delay with the connector stopped: every check is stale, and owed.
    let cat = &stack.cat;
    wait_until(
        &mut ov,
        Duration::from_secs(30),
        "every transfer's check goes stale and is re-armed",
        async || {
            count_incidents(cat, &all, |inc| inc.rearm_eval_us != 0 && !inc.failing).await
                == all.len()
        },
    )
    .await;
    assert!(
        stack.pd.requests().is_empty(),
        "a stale verdict pages nothing: {:?}",
        stack.pd.requests()
    );

    // The connector resumes: what it had not read, then its heartbeats.
    for (key, ev) in &unread {
        produce_ledger(&stack.producer, None, key, ev).await;
    }
    stack.resume_heartbeats(Duration::from_secs(1));
    let cat = &stack.cat;
    let want: BTreeSet<String> = faulty
        .iter()
        .map(|t| overseer_prs::escalate::dedup_key(CHECK, t))
        .collect();
    let pd = &stack.pd;
    wait_until(
        &mut ov,
        Duration::from_secs(60),
        "every stale check ran again",
        async || {
            count_incidents(cat, &all, |inc| inc.rearm_eval_us == 0).await == all.len()
                && want.is_subset(&open_keys(pd))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        open_keys(pd),
        want,
        "the unbalanced transfers page, nothing else"
    );
    assert_eq!(trigger_requests(pd), want.len());
    for id in &all {
        let inc = cat.incident(CHECK, id).await.unwrap().unwrap();
        assert_eq!(inc.failing, faulty.contains(id), "{inc:?}");
    }
    stack.stop_heartbeats().await;
    eprintln!(
        "{} stale checks re-ran, {} faults paged; whole test {:?}",
        all.len(),
        want.len(),
        started.elapsed()
    );
}

/// How many of `subjects` have an incident of [`CHECK`] for which `pred` holds.
async fn count_incidents(
    cat: &overseer_dal::catalog::postgres::PgCatalog,
    subjects: &[String],
    pred: impl Fn(&overseer_dal::update::Incident) -> bool,
) -> usize {
    let mut n = 0;
    for id in subjects {
        if let Some(inc) = cat.incident(CHECK, id).await.unwrap() {
            n += usize::from(pred(&inc));
        }
    }
    n
}

/// The partitions an `overseer ingest` log says it was assigned last.
fn assigned(log: &str) -> Option<BTreeSet<i32>> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("partitions assigned"))?;
    let list = line.split("partitions=[").nth(1)?.split(']').next()?;
    Some(
        list.split(',')
            .filter_map(|p| p.trim().parse().ok())
            .collect(),
    )
}

/// Two `overseer ingest` instances in one consumer group split the ledger's four
/// partitions. Each knows only its own partitions, so neither alone may claim the topic
/// complete; each records its claim per partition, and the catalog's watermark for the
/// ledger is the lowest partition's — here the one whose connector writes 5 s behind.
/// When one instance stops, the other takes its partitions and the watermark moves on
/// from the claims recorded. (Before per-lane claims the ledger's watermark never left 0:
/// each instance held it at what it knew of the partitions it did not read.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_ingest_instances_split_the_ledger_and_its_slowest_partition_holds_it() {
    let pg = Server::start("postgres");
    let kafka = Server::start("tansu");
    let s3 = Server::start("garage");
    let (url, brokers) = (pg.var("PG_URL"), kafka.var("KAFKA_BROKERS"));
    let name = "lanes";
    let schema = unique_name(name);
    create_topics(
        brokers,
        &[
            ("ledger", PARTITIONS),
            (HEARTBEATS_TOPIC, 1),
            (EVENTS_TOPIC, 4),
        ],
    )
    .await;
    let producer = producer(brokers);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ingest.toml");
    let text = ledger_ingest_config(&s3, &unique_name(name), &schema, brokers, name);
    std::fs::write(&cfg, text).unwrap();
    let cat = PgCatalog::connect(url, &schema).await.unwrap();
    let env = [
        ("E2E_CATALOG_URL", url),
        ("AWS_ACCESS_KEY_ID", s3.var("AWS_ACCESS_KEY_ID")),
        ("AWS_SECRET_ACCESS_KEY", s3.var("AWS_SECRET_ACCESS_KEY")),
    ];
    let log = |n: &str| {
        std::env::temp_dir().join(format!("overseer-lanes-{n}-{}.log", std::process::id()))
    };
    let (log_a, log_b) = (log("a"), log("b"));
    let held = |log: &std::path::Path| assigned(&std::fs::read_to_string(log).unwrap_or_default());
    let mut a = Overseer::spawn("ingest", &cfg, &env, &log_a);
    wait_until(
        &mut a,
        Duration::from_secs(60),
        "a holds partitions",
        async || held(&log_a).is_some_and(|p| !p.is_empty()),
    )
    .await;
    let mut b = Overseer::spawn("ingest", &cfg, &env, &log_b);
    let all: BTreeSet<i32> = (0..PARTITIONS).collect();
    wait_until(
        &mut b,
        Duration::from_secs(60),
        "a and b split the partitions",
        async || match (held(&log_a), held(&log_b)) {
            (Some(pa), Some(pb)) => {
                !pa.is_empty() && !pb.is_empty() && pa.is_disjoint(&pb) && &pa | &pb == all
            }
            _ => false,
        },
    )
    .await;
    a.assert_running();

    // Every partition gets an entry committed at `t0`, but the lagging one's connector
    // writes 5 s behind: its newest entry committed at `t0 - 5 s`.
    let watermark = async || {
        cat.source_states()
            .await
            .unwrap()
            .into_iter()
            .find(|s| s.source == "ledger-kafka")
            .map_or(0, |s| s.watermark_us)
    };
    let t0 = now_ms();
    let lag_ms = LAG.as_millis() as i64;
    for p in 0..PARTITIONS {
        let at = if p == LAGGING { t0 - lag_ms } else { t0 };
        let id = format!("{:024x}", p + 1);
        let ev = change(
            p as u32 + 1,
            "insert",
            &id,
            at,
            entry("T1", "acc", "debit", 1),
        );
        produce_ledger(&producer, Some(p), &id, &ev).await;
    }
    let want = (t0 - lag_ms) * 1000 - 1;
    wait_until(
        &mut a,
        Duration::from_secs(60),
        "the ledger's watermark moves",
        async || watermark().await >= want,
    )
    .await;
    let claims = cat.lane_claims("ledger-kafka").await.unwrap();
    let expect: Vec<(String, i64)> = (0..PARTITIONS)
        .map(|p| {
            let at = if p == LAGGING { t0 - lag_ms } else { t0 };
            (format!("ledger/{p}"), at * 1000 - 1)
        })
        .collect();
    assert_eq!(claims, expect, "each partition claimed by its reader");
    assert_eq!(
        watermark().await,
        want,
        "the ledger is complete up to its slowest partition, not its fastest"
    );

    // b stops: a takes every partition and moves the watermark on from the claims.
    b.stop().await;
    wait_until(
        &mut a,
        Duration::from_secs(60),
        "a holds every partition",
        async || held(&log_a).is_some_and(|p| p == all),
    )
    .await;
    let t1 = now_ms();
    for p in 0..PARTITIONS {
        let id = format!("{:024x}", 100 + p);
        let ev = change(
            100 + p as u32,
            "insert",
            &id,
            t1,
            entry("T2", "acc", "debit", 1),
        );
        produce_ledger(&producer, Some(p), &id, &ev).await;
    }
    wait_until(
        &mut a,
        Duration::from_secs(60),
        "the watermark moves past the new entries",
        async || watermark().await == t1 * 1000 - 1,
    )
    .await;
    a.stop().await;
}

/// A followed file whose events arrive out of commit order, by up to its declared bound
/// (`max_out_of_order_ms = 5000`), grace 2 s, no servers: the live run pages exactly the
/// unbalanced transfers, and `overseer replay` of the stored history finds the same. The
/// end of a followed file claims nothing, so the checks wait for the ledger's events to
/// pass their evaluation time by the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_followed_file_out_of_order_within_its_bound_pages_what_replay_finds() {
    let pd = FakePagerDuty::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (payments, ledger) = (d.join("payments.jsonl"), d.join("ledger.jsonl"));
    std::fs::write(&payments, "").unwrap();
    std::fs::write(&ledger, "").unwrap();
    let cfg = d.join("overseer.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[store]
kind = "local"
path = "{d}/objects"
[catalog]
kind = "embedded"
path = "{d}/catalog.redb"
[ingest]
batch_max_ms = 20
heartbeat_ms = 200
[prs]
default_escalation = "pd"
grace_ms = {GRACE_MS}
max_delay_ms = 60000
[prs.checks.{CHECK}]
strategy = "freshness-aware"
[prs.checks.entries_match_amount]
enabled = false
[prs.checks.wallet_balance_matches_entries]
enabled = false
[escalation.pd]
kind = "pagerduty"
routing_key_env = "E2E_PD_KEY"
url = "{pd_url}"
{models}
# The payments writer is this test, writing at commit time: no upstream lag.
[[sources]]
name = "payments-debezium"
format = "debezium-postgres"
caught_up_means_now = true
[sources.file]
path = "{payments}"
follow = true

[[sources]]
name = "ledger-change-stream"
format = "mongo-change-stream"
max_out_of_order_ms = 5000
[sources.file]
path = "{ledger}"
follow = true
"#,
            d = d.display(),
            pd_url = pd.url(),
            models = common::MODELS,
            payments = payments.display(),
            ledger = ledger.display(),
        ),
    )
    .unwrap();
    let log = std::env::temp_dir().join(format!(
        "overseer-freshness-file-{}.log",
        std::process::id()
    ));
    let mut ov = Overseer::start_with(&cfg, &[], &log);

    let append = |path: &std::path::Path, line: &str| {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        writeln!(f, "{line}").unwrap();
    };
    let started_ms = now_ms();
    append(
        &payments,
        &debezium_row(
            "assets",
            json!({"symbol": "USD", "decimals": 2}),
            started_ms,
        ),
    );
    // 100 transfers, one every 150 ms; unbalanced ones only among the first 40, so the
    // ledger runs on for 9 s past the last of them. Each entry reaches the file 0-4.5 s
    // after its commit, in the order it arrives.
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut faulty = BTreeSet::new();
    let mut pending: Vec<(Instant, String)> = Vec::new();
    let flush = |pending: &mut Vec<(Instant, String)>, now: Instant| {
        pending.sort_by_key(|(due, _)| *due);
        let ready = pending.iter().take_while(|(due, _)| *due <= now).count();
        for (_, line) in pending.drain(..ready) {
            append(&ledger, &line);
        }
    };
    for i in 0..100usize {
        let id = format!("T{i:03}");
        let fault = i < 40 && i % FAULT_EVERY == FAULT_EVERY - 1;
        if fault {
            faulty.insert(overseer_prs::escalate::dedup_key(CHECK, &id));
        }
        let at = now_ms();
        let row = json!({"id": id, "account_id": format!("acc-{}", i % 5), "asset": "USD",
                         "amount": "12.50", "status": "completed"});
        append(&payments, &debezium_row("transfers", row, at));
        let n = 2 * i as u32;
        let credit = if fault { 1249 } else { 1250 };
        for (k, (dir, minor)) in [("debit", 1250), ("credit", credit)]
            .into_iter()
            .enumerate()
        {
            let oid = format!("{:024x}", n + k as u32 + 1);
            let ev = change(
                n + k as u32 + 1,
                "insert",
                &oid,
                at,
                entry(&id, "acc-x", dir, minor),
            );
            let delay = Duration::from_millis(next() % 4_500);
            pending.push((Instant::now() + delay, ev.to_string()));
        }
        flush(&mut pending, Instant::now());
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    while !pending.is_empty() {
        tokio::time::sleep(Duration::from_millis(50)).await;
        flush(&mut pending, Instant::now());
    }

    wait_until(
        &mut ov,
        Duration::from_secs(60),
        "every unbalanced transfer pages",
        async || {
            let open = open_keys(&pd);
            faulty.is_subset(&open)
        },
    )
    .await;
    // The last fault's runs are long done (the ledger ran 9 s past it); give any other
    // run in flight a moment, then stop.
    tokio::time::sleep(Duration::from_secs(3)).await;
    ov.stop().await;
    let live = open_keys(&pd);
    assert_eq!(
        live, faulty,
        "live pages the unbalanced transfers and nothing else (an entry read late within the bound is waited for)"
    );

    // Replay of the stored history: the same failing transfers.
    let report = d.join("replay.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_overseer"))
        .args(["replay", "--config"])
        .arg(&cfg)
        .args(["--from", "2024-01-01T00:00:00Z", "--to", "4000000000000"])
        .args(["--format", "json", "--output"])
        .arg(&report)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let replayed: BTreeSet<String> = v["failures"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["check"] == CHECK)
        .map(|f| overseer_prs::escalate::dedup_key(CHECK, f["subject"].as_str().unwrap()))
        .collect();
    assert_eq!(
        replayed, live,
        "live and replay find the same failing transfers"
    );
    eprintln!("{} faults, live = replay", faulty.len());
}

/// A Debezium PostgreSQL change event (JSON without schemas) creating `row` in
/// `payments.{table}`, committed at `at_ms`.
fn debezium_row(table: &str, row: Value, at_ms: i64) -> String {
    json!({"before": null, "after": row, "op": "c", "ts_ms": at_ms,
           "source": {"connector": "postgresql", "name": "payments", "ts_ms": at_ms,
                      "ts_us": at_ms * 1000, "db": "payments", "schema": "payments",
                      "table": table, "lsn": at_ms, "txId": at_ms}})
    .to_string()
}
