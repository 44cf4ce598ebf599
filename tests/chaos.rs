//! The reliability campaign (RELIABILITY.md), on real servers: PostgreSQL with logical WAL
//! (a source and the catalog), the tansu broker (on SQLite where it is restarted), the
//! garage S3 store behind a fault-injecting proxy, and PagerDuty's local stand-in. Each trial draws every random
//! choice from one seed and is bounded in time; at its end it checks what the engine
//! promises and prints a row of RELIABILITY.md's table.
//!
//! The short form (these defaults) runs in CI; the long form is the same tests with more
//! kills, e.g. `CHAOS_KILLS=100 cargo test --test chaos -- --nocapture
//! --test-threads 1`. Knobs: `CHAOS_SEED` (default 14), `CHAOS_KILLS` (kills per trial),
//! `CHAOS_STORE_FAULTS` (object-store requests with a fault, per mille; default 100),
//! `CHAOS_DISK_FULLS` (disks filled without the free-space floor; default 4),
//! `CHAOS_BROKER_RESTARTS` (default 3), `CHAOS_PRS_KILLS` (kills of one of two `overseer
//! prs`; default 2), `CHAOS_KEEP_LOGS` (set: the processes' logs are kept, as when a
//! trial fails).

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use overseer_dal::catalog::postgres::PgCatalog;
use overseer_dal::catalog::prelude::*;
use overseer_testkit::proxy::FaultProxy;
use overseer_testkit::{Server, unique_name};

use common::{EVENTS_TOPIC, MODELS, Overseer};

fn knob(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?}: not a number")),
        Err(_) => default,
    }
}

/// The trials run one at a time: each has its own servers and engine, and two at once
/// on two cores would measure each other.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A small seeded generator (xorshift64*), so a trial's choices are its seed's.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// Where a trial's process logs go: kept when the trial fails, removed when it passes.
struct Logs(PathBuf);

impl Logs {
    fn new(trial: &str) -> Logs {
        let dir =
            std::env::temp_dir().join(format!("overseer-chaos-{trial}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Logs(dir)
    }
    fn life(&self, n: usize) -> PathBuf {
        self.0.join(format!("life-{n:04}.log"))
    }
}

impl Drop for Logs {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("CHAOS_KEEP_LOGS").is_some() {
            eprintln!("chaos logs kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Times to resume: the median and the longest.
fn summary(resumes: &[Duration]) -> String {
    if resumes.is_empty() {
        return "-".into();
    }
    let mut v = resumes.to_vec();
    v.sort();
    format!(
        "median {:.2} s, max {:.2} s",
        v[v.len() / 2].as_secs_f64(),
        v[v.len() - 1].as_secs_f64()
    )
}

/// Counts the updates in the catalog (a count, not a dump: polled every 25 ms), on a
/// connection of its own that is made again when the database restarts.
struct Stored {
    url: String,
    schema: String,
    client: Option<tokio_postgres::Client>,
}

impl Stored {
    fn new(url: &str, schema: &str) -> Stored {
        Stored {
            url: url.to_owned(),
            schema: schema.to_owned(),
            client: None,
        }
    }

    /// Whether an update of record `id` is stored (false while the database does not
    /// answer).
    async fn has(&mut self, id: &str) -> bool {
        let sql = format!(
            "SELECT count(*) FROM \"{}\".updates WHERE record_id = convert_to($1, 'UTF8')",
            self.schema
        );
        self.query(&sql, id).await > 0
    }

    /// The count, or -1 while the database does not answer.
    async fn count(&mut self) -> i64 {
        let sql = format!("SELECT count(*) FROM \"{}\".updates", self.schema);
        self.query(&sql, "").await
    }

    async fn query(&mut self, sql: &str, arg: &str) -> i64 {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
                .await
                .ok()
                .map(|(client, conn)| {
                    tokio::spawn(conn);
                    client
                });
        }
        let Some(client) = &self.client else {
            return -1;
        };
        let args: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            if arg.is_empty() { vec![] } else { vec![&arg] };
        client
            .query_one(sql, &args)
            .await
            .map(|r| r.get(0))
            .unwrap_or(-1)
    }
}

/// Exactly once: the catalog's per-record update counts equal `expected` (what was
/// written, per record id): nothing lost, nothing duplicated.
fn assert_exactly_once(
    expected: &HashMap<String, usize>,
    dump: &overseer_dal::update::CatalogDump,
) {
    let total: usize = expected.values().sum();
    let mut got: HashMap<String, usize> = HashMap::new();
    for e in &dump.entries {
        *got.entry(e.record_id.clone()).or_default() += 1;
    }
    let lost: usize = expected
        .iter()
        .map(|(id, n)| n.saturating_sub(got.get(id).copied().unwrap_or(0)))
        .sum();
    let duplicated = dump.entries.len() as i64 + lost as i64 - total as i64;
    let mut wrong: Vec<(&String, usize, usize)> = got
        .iter()
        .map(|(id, n)| (id, expected.get(id).copied().unwrap_or(0), *n))
        .chain(
            expected
                .iter()
                .filter(|(id, _)| !got.contains_key(*id))
                .map(|(id, n)| (id, *n, 0)),
        )
        .filter(|(_, want, n)| want != n)
        .collect();
    wrong.sort();
    wrong.truncate(10);
    assert_eq!(
        (lost, duplicated),
        (0, 0),
        "lost, duplicated of {total}; (record, expected, stored), the first 10: {wrong:?}"
    );
}

/// Connects, retrying for up to a minute (the database may be restarting).
async fn connect_retrying(url: &str) -> tokio_postgres::Client {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match tokio_postgres::connect(url, tokio_postgres::NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(conn);
                return client;
            }
            Err(e) if Instant::now() < deadline => {
                eprintln!("writer: reconnecting ({e})");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("writer: the database is gone: {e}"),
        }
    }
}

/// Writes row changes to `payments.transfers` (inserts, then updates of the same rows;
/// transactions of 1..=20 rows, seeded) at about 500 rows a second until `stop`, and at least
/// `min` of them; returns how many each id got. Rides out a database restart: a
/// transaction whose COMMIT went unanswered counts if its marker row (in a table the
/// publication leaves out) is there once the database is back. `rows` follows the rows
/// inserted so far (`t0`, `t1`, ...).
async fn write_transfers(
    url: String,
    seed: u64,
    min: usize,
    stop: Arc<AtomicBool>,
    rows: Arc<std::sync::atomic::AtomicUsize>,
) -> HashMap<String, usize> {
    let mut client = connect_retrying(&url).await;
    client
        .batch_execute("CREATE TABLE chaos_tx (n bigint PRIMARY KEY)")
        .await
        .unwrap();
    let mut rng = Rng::new(seed);
    let mut per_id: HashMap<String, usize> = HashMap::new();
    let mut inserted = 0usize;
    let mut written = 0usize;
    let mut tx = 0u64;
    while written < min || !stop.load(Ordering::Relaxed) {
        tx += 1;
        let n = 1 + rng.below(20) as usize;
        let mut sql = format!("BEGIN; INSERT INTO chaos_tx VALUES ({tx});");
        let mut ids = Vec::with_capacity(n);
        let mut new_rows = 0;
        for _ in 0..n {
            // Two thirds inserts, a third updates of a row already there.
            if inserted + new_rows == 0 || rng.below(3) > 0 {
                let i = inserted + new_rows;
                new_rows += 1;
                sql.push_str(&format!(
                    "INSERT INTO payments.transfers VALUES ('t{i}', 'acc{}', 'USD', {}.{:02}, 'pending', now());",
                    i % 97,
                    i % 1000,
                    i % 100
                ));
                ids.push(format!("t{i}"));
            } else {
                let j = rng.below((inserted + new_rows) as u64);
                sql.push_str(&format!(
                    "UPDATE payments.transfers SET status = 's{tx}' WHERE id = 't{j}';"
                ));
                ids.push(format!("t{j}"));
            }
        }
        sql.push_str("COMMIT;");
        let committed = match client.batch_execute(&sql).await {
            Ok(()) => true,
            Err(e) => {
                eprintln!("writer: transaction {tx}: {e}");
                client = connect_retrying(&url).await;
                client
                    .query_opt("SELECT 1 FROM chaos_tx WHERE n = $1", &[&(tx as i64)])
                    .await
                    .unwrap()
                    .is_some()
            }
        };
        if committed {
            inserted += new_rows;
            rows.store(inserted, Ordering::SeqCst);
            written += n;
            for id in ids {
                *per_id.entry(id).or_default() += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    per_id
}

/// `overseer ingest` of the payments WAL, its store `s3_endpoint`.
fn ingest_config(
    s3: &Server,
    s3_endpoint: &str,
    prefix: &str,
    schema: &str,
    brokers: &str,
) -> String {
    format!(
        r#"
[store]
kind = "s3"
bucket = "{bucket}"
prefix = "{prefix}"
endpoint = "{s3_endpoint}"
region = "{region}"
path_style = true

[bus]
kind = "kafka"
brokers = "{brokers}"
topic = "{EVENTS_TOPIC}"

[catalog]
kind = "postgres"
url_env = "E2E_CATALOG_URL"
schema = "{schema}"

[ingest]
batch_max_events = 100
batch_max_ms = 20
heartbeat_ms = 200

{MODELS}
[[sources]]
name = "payments-wal"
format = "pgoutput"
[sources.postgres]
url_env = "E2E_SOURCE_URL"
slot = "chaos_slot"
publication = "chaos_pub"
status_interval_ms = 200
"#,
        bucket = s3.var("S3_BUCKET"),
        region = s3.var("S3_REGION"),
    )
}

/// Object-store faults on a tenth of the requests (503, 500 before and after the
/// request is applied, connections cut before and after, 2 s stalls) while `overseer
/// ingest` of a PostgreSQL WAL under steady writes is killed with SIGKILL at seeded
/// points. Then: every change stored exactly once, nothing pending, the catalog equal to
/// a reindex of the store, and each restart resumed storing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_faults_and_kill_9_of_ingest() {
    let _one = ONE_AT_A_TIME.lock().await;
    let seed = knob("CHAOS_SEED", 14);
    let kills = knob("CHAOS_KILLS", 4) as usize;
    let per_mille = knob("CHAOS_STORE_FAULTS", 100) as u32;
    let pg = Arc::new(Server::start("postgres"));
    let kafka = Server::start("tansu");
    let s3 = Server::start("garage");
    let url = pg.var("PG_URL").to_owned();
    let brokers = kafka.var("KAFKA_BROKERS").to_owned();
    let proxy = FaultProxy::start(s3.var("S3_ENDPOINT"), per_mille, seed)
        .await
        .unwrap();
    let schema = unique_name("chaos");
    let prefix = unique_name("chaos");
    let dir = tempfile::tempdir().unwrap();
    let logs = Logs::new("store");

    let _payments = common::payments_db(&url, "chaos_pub", "chaos_slot").await;
    common::create_topics(&brokers, &[(EVENTS_TOPIC, 4)]).await;
    let cfg = dir.path().join("overseer.toml");
    std::fs::write(
        &cfg,
        ingest_config(&s3, &proxy.endpoint(), &prefix, &schema, &brokers),
    )
    .unwrap();
    let env = [
        ("E2E_CATALOG_URL", url.as_str()),
        ("E2E_SOURCE_URL", url.as_str()),
        ("AWS_ACCESS_KEY_ID", s3.var("AWS_ACCESS_KEY_ID")),
        ("AWS_SECRET_ACCESS_KEY", s3.var("AWS_SECRET_ACCESS_KEY")),
    ];
    let mut stored = Stored::new(&url, &schema);

    let stop = Arc::new(AtomicBool::new(false));
    let rows = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = tokio::spawn(write_transfers(
        url.clone(),
        seed,
        10_000,
        stop.clone(),
        rows.clone(),
    ));
    let mut rng = Rng::new(seed ^ 0x5eed);
    let mut resumes = Vec::new();
    let mut stuck = 0;
    for k in 0..kills {
        let at_start = stored.count().await;
        let started = Instant::now();
        let mut ov = Overseer::spawn("ingest", &cfg, &env, &logs.life(k));
        let life = Duration::from_millis(700 + rng.below(2500));
        let mut resumed = None;
        while started.elapsed() < life {
            if resumed.is_none() && stored.count().await > at_start.max(0) {
                resumed = Some(started.elapsed());
            }
            ov.assert_running();
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        ov.child.kill().unwrap(); // SIGKILL
        ov.child.wait().unwrap();
        match resumed {
            Some(d) => resumes.push(d),
            // Killed before it stored anything: its time to resume is longer than its life.
            None => stuck += 1,
        }
    }

    // A last life, under the writes and the faults: once it stores, PostgreSQL (the
    // source and the catalog) restarts as in a crash, and it must store again without
    // a restart of its own.
    let at_start = stored.count().await;
    let started = Instant::now();
    let mut ov = Overseer::spawn("ingest", &cfg, &env, &logs.life(kills));
    common::wait_until(
        &mut ov,
        Duration::from_secs(60),
        "the last life stores",
        async || stored.count().await > at_start.max(0),
    )
    .await;
    resumes.push(started.elapsed());
    let restarted = tokio::task::spawn_blocking({
        let p = pg.clone();
        move || {
            p.restart();
            Instant::now()
        }
    })
    .await
    .unwrap();
    // A row the writer inserts after the restart (a transaction in flight at the restart
    // holds at most 20): stored means the source read the WAL again and the catalog took
    // a commit.
    let first_after = format!("t{}", rows.load(Ordering::SeqCst) + 20);
    common::wait_until(
        &mut ov,
        Duration::from_secs(60),
        "ingest stores again after the database restart",
        async || stored.has(&first_after).await,
    )
    .await;
    let pg_resume = restarted.elapsed();
    stop.store(true, Ordering::Relaxed);
    let expected = writer.await.unwrap();
    let total: usize = expected.values().sum();
    common::wait_until(
        &mut ov,
        Duration::from_secs(180),
        "the history caught up",
        async || stored.count().await >= total as i64,
    )
    .await;
    // The polite stop is not under faults: its last attempts are bounded (see pipeline).
    proxy.set_per_mille(0);
    ov.stop().await;

    // Exactly once: the per-record update counts equal what was written.
    let cat = PgCatalog::connect(&url, &schema).await.unwrap();
    let dump = cat.dump().await.unwrap();
    assert_exactly_once(&expected, &dump);
    assert!(cat.pending_segments().await.unwrap().is_empty());

    // The catalog equals a reindex of the object store alone (read past the proxy).
    common::assert_reindex_equals(&s3, &prefix, dir.path(), &dump).await;

    let faults: Vec<String> = proxy
        .injected()
        .iter()
        .map(|(f, n)| format!("{f:?} {n}"))
        .collect();
    eprintln!(
        "| store faults {per_mille}‰ + kill -9 of ingest (seed {seed}) | {kills} kills, {} store requests, {} faults ({}) | {total} changes | lost 0 | duplicated 0 | resume {} ({stuck} lives stored nothing) |\n| PostgreSQL (source and catalog) restart under ingest (seed {seed}) | 1 | - | lost 0 | duplicated 0 | resume {:.2} s after the restart |",
        proxy.requests(),
        proxy.injected_total(),
        faults.join(", "),
        summary(&resumes),
        pg_resume.as_secs_f64(),
    );
    assert!(
        proxy.injected_total() > 0,
        "the trial injected no fault: {} requests",
        proxy.requests()
    );
}

/// The `[prs]` settings of the paging trial: `transfer_nets_to_zero` alone.
const PAGING_PRS: &str = r#"grace_ms = 1000
max_delay_ms = 20000

[prs.checks.entries_match_amount]
enabled = false

[prs.checks.wallet_balance_matches_entries]
enabled = false"#;

/// A ledger entry of `transfer`.
fn entry(transfer: &str, account: &str, direction: &str, minor: i64) -> serde_json::Value {
    serde_json::json!({"transfer_id": transfer, "account_id": account, "asset": "USD",
        "direction": direction, "amount_minor": {"$numberLong": minor.to_string()},
        "decimals": 2})
}

/// What the paging trial's traffic does to one transfer.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Fate {
    Balanced,
    /// Unbalanced, and stays so: its incident ends open.
    Unbalanced,
    /// Unbalanced, then its credit is fixed: its incident ends resolved.
    Fixed,
}

/// The payments traffic of the paging trial: each transfer is inserted pending, gets its
/// debit and credit entries, then completes (so it is checked with both entries there);
/// then the fixes. Runs whether or not `overseer run` is up.
async fn drive_transfers(
    client: &tokio_postgres::Client,
    producer: &rdkafka::producer::FutureProducer,
    fates: &[Fate],
    pace: Duration,
) {
    client
        .batch_execute("INSERT INTO payments.assets VALUES ('USD', 2)")
        .await
        .unwrap();
    let mut n = 0u32;
    let mut next = || {
        n += 1;
        n
    };
    for (i, fate) in fates.iter().enumerate() {
        let t = format!("T{i}");
        client
            .batch_execute(&format!(
                "INSERT INTO payments.transfers VALUES ('{t}', 'acc-{i}', 'USD', 10.00, 'pending', now())"
            ))
            .await
            .unwrap();
        let (debit, credit) = (format!("{:024x}", 2 * i), format!("{:024x}", 2 * i + 1));
        let short = if *fate == Fate::Balanced {
            0
        } else {
            1 + i as i64
        };
        let ev = common::change(
            next(),
            "insert",
            &debit,
            common::now_ms(),
            entry(&t, "acc-d", "debit", 1000),
        );
        common::produce_ledger(producer, None, &debit, &ev).await;
        let ev = common::change(
            next(),
            "insert",
            &credit,
            common::now_ms(),
            entry(&t, "acc-c", "credit", 1000 - short),
        );
        common::produce_ledger(producer, None, &credit, &ev).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        client
            .batch_execute(&format!(
                "UPDATE payments.transfers SET status = 'completed', updated_at = now() WHERE id = '{t}'"
            ))
            .await
            .unwrap();
        tokio::time::sleep(pace).await;
        // The fix of a transfer three back, if it is to be fixed.
        if let Some(j) = i.checked_sub(3).filter(|j| fates[*j] == Fate::Fixed) {
            fix(producer, j, next()).await;
            tokio::time::sleep(pace).await;
        }
    }
    let tail = fates.len().saturating_sub(3);
    for (j, fate) in fates.iter().enumerate().skip(tail) {
        if *fate == Fate::Fixed {
            fix(producer, j, next()).await;
            tokio::time::sleep(pace).await;
        }
    }
}

/// Transfer `i`'s credit made whole.
async fn fix(producer: &rdkafka::producer::FutureProducer, i: usize, n: u32) {
    let credit = format!("{:024x}", 2 * i + 1);
    let whole = serde_json::json!({"amount_minor": {"$numberLong": "1000"}});
    let ev = common::change(n, "update", &credit, common::now_ms(), whole);
    common::produce_ledger(producer, None, &credit, &ev).await;
}

/// Waits out a killed instance's Kafka group sessions (6 s in these configurations)
/// before the next starts, so that a life's start does not share its first seconds with
/// the previous life's rebalance (its "first page after a start" would include that).
/// (tansu 0.6 handed a dead member's partitions on only when another member joined after
/// its session expired; the tests' tansu is built with scripts/tansu/group-expiry.patch,
/// which rebalances at expiry as Kafka does: `two_prs_one_killed` shows it.)
async fn session_expires() {
    tokio::time::sleep(Duration::from_secs(8)).await;
}

/// `overseer run` (ingestion, checks, PagerDuty) killed with SIGKILL while transfers go
/// unbalanced and are fixed: at seeded points of its life; in a quarter of its lives
/// 0–3 ms after PagerDuty applied a request and before it answers (so it never hears the
/// 202), in another quarter 0–3 ms after PagerDuty applied a request while its answer
/// goes out (racing the 202, the outbox's record of it, or both). Then: every transfer still unbalanced has exactly one open incident,
/// opened once; a fixed one was paged and resolved, or never paged; nothing is owed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_run_while_paging() {
    kill_9_while_paging("run").await;
}

/// The same with ingestion in its own process (`overseer ingest`, never killed) and
/// `overseer prs` (the checks and PagerDuty, fed by the bus's events topic) killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_prs_while_paging() {
    kill_9_while_paging("prs").await;
}

/// Kills `killed` (`run` or `prs`; with `prs`, an `overseer ingest` runs throughout).
async fn kill_9_while_paging(killed: &str) {
    let _one = ONE_AT_A_TIME.lock().await;
    use std::sync::atomic::{AtomicU32, AtomicU64};
    let seed = knob("CHAOS_SEED", 14);
    let kills = knob("CHAOS_KILLS", 4) as usize;
    let transfers = knob("CHAOS_TRANSFERS", 12) as usize;
    let logs = Logs::new(&format!("paging-{killed}"));
    let (mut stack, first) = common::RealStack::start("chaos", 1, Duration::ZERO, PAGING_PRS).await;
    drop(first);
    // The first instance's group sessions expire before ingestion joins (see
    // `session_expires`).
    let mut ingest = None;
    if killed == "prs" {
        session_expires().await;
        ingest = Some(stack.spawn("ingest", &logs.0.join("ingest.log")));
    }

    let mut rng = Rng::new(seed ^ 0x9a9e ^ u64::from(killed == "prs"));
    let paging = Paging::draw(&mut rng, transfers);

    // Kills on PagerDuty's requests, armed per life (the kind and the delay drawn per
    // life): BEFORE_ANSWER holds PagerDuty's answer while the delay passes and the kill
    // lands (the sender never hears the 202); RACING_ANSWER lets the answer go at once
    // and kills the delay after PagerDuty applied the request (the kill lands before the
    // sender reads the 202, between the 202 and the outbox's record of it, or after).
    const BEFORE_ANSWER: u8 = 1;
    const RACING_ANSWER: u8 = 2;
    let pid = Arc::new(AtomicU32::new(0));
    let armed = Arc::new(std::sync::atomic::AtomicU8::new(0));
    let delay_us = Arc::new(AtomicU64::new(0));
    let before_answer_kills = Arc::new(AtomicU64::new(0));
    let racing_answer_kills = Arc::new(AtomicU64::new(0));
    {
        let (pid, armed, delay_us, before, after) = (
            pid.clone(),
            armed.clone(),
            delay_us.clone(),
            before_answer_kills.clone(),
            racing_answer_kills.clone(),
        );
        stack.pd.on_request(move |_| {
            let kind = armed.swap(0, Ordering::SeqCst);
            let (pid, delay) = (pid.load(Ordering::SeqCst), delay_us.load(Ordering::SeqCst));
            let kill = move || {
                std::thread::sleep(Duration::from_micros(delay));
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status();
            };
            match kind {
                BEFORE_ANSWER => {
                    before.fetch_add(1, Ordering::SeqCst);
                    kill();
                }
                RACING_ANSWER => {
                    after.fetch_add(1, Ordering::SeqCst);
                    std::thread::spawn(kill);
                }
                _ => {}
            }
        });
    }

    // The traffic spans the lives: about 10 s a life, a step per transfer and per fix.
    let pace = paging.pace(Duration::from_secs(10 * kills as u64));
    let driver = {
        let (client, producer) = (&stack.client, &stack.producer);
        let fates = paging.fates.clone();
        async move { drive_transfers(client, producer, &fates, pace).await }
    };
    let lives = async {
        let mut first_page = Vec::new();
        for k in 0..kills {
            session_expires().await;
            let requests_before = stack.pd.requests().len();
            let started = Instant::now();
            let mut ov = stack.spawn(killed, &logs.life(k));
            pid.store(ov.child.id(), Ordering::SeqCst);
            delay_us.store(rng.below(3000), Ordering::SeqCst);
            let kind = if rng.below(2) == 0 {
                BEFORE_ANSWER + rng.below(2) as u8
            } else {
                0
            };
            armed.store(kind, Ordering::SeqCst);
            let life = Duration::from_millis(1500 + rng.below(4000));
            let mut paged = None;
            while started.elapsed() < life {
                if let Some(status) = ov.child.try_wait().unwrap() {
                    // Killed on a page; any other end is the engine's own.
                    use std::os::unix::process::ExitStatusExt;
                    assert_eq!(
                        status.signal(),
                        Some(9),
                        "life {k} ended by itself: {status}"
                    );
                    break;
                }
                if paged.is_none() && stack.pd.requests().len() > requests_before {
                    paged = Some(started.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            armed.store(0, Ordering::SeqCst);
            let _ = ov.child.kill(); // SIGKILL (a no-op if the hook killed it)
            ov.child.wait().unwrap();
            first_page.extend(paged);
        }
        first_page
    };
    let ((), first_page) = tokio::join!(driver, lives);

    // A last life settles everything owed; then a polite stop.
    session_expires().await;
    let requests_before = stack.pd.requests().len();
    let started = Instant::now();
    let mut ov = stack.spawn(killed, &logs.life(kills));
    let mut resumed = None;
    // A transfer completed and fixed while no instance ran is never paged: PagerDuty
    // hears of a fixed one both ways or not at all. Nothing may be owed at the end.
    let pd = &stack.pd;
    let last_log = logs.life(kills);
    common::wait_until(
        &mut ov,
        Duration::from_secs(120),
        "the last life is up, PagerDuty holds what the ledger says, and nothing is owed",
        async || {
            if resumed.is_none() && pd.requests().len() > requests_before {
                resumed = Some(started.elapsed());
            }
            // Up: it has joined the events topic's group (a stop before that would find
            // nothing to stop cleanly, and show nothing of the last life).
            held_partitions(&last_log).is_some() && paging.settled(&stack).await
        },
    )
    .await;
    ov.stop().await;
    if let Some(ingest) = &mut ingest {
        ingest.assert_running();
        ingest.stop().await;
    }
    stack.stop_heartbeats().await;

    let pd = &stack.pd;
    let paged = Paged::of(pd, &paging.open);
    let doubled = paged.doubled;
    let mut times = first_page.clone();
    times.extend(resumed);
    eprintln!(
        "| kill -9 of {killed} while paging (seed {seed}) | {kills} kills ({} 0–3 ms after PagerDuty applied a request, holding its answer; {} 0–3 ms after it applied one, racing its answer), {transfers} transfers ({} open, {} fixed, {} of them paged and resolved) | pages doubled {doubled} | resolves lost 0 | re-sent triggers {} | resolves re-sent {} | first page after a restart: {} |",
        before_answer_kills.load(Ordering::SeqCst),
        racing_answer_kills.load(Ordering::SeqCst),
        paging.open.len(),
        paging.resolved.len(),
        paged.resolved_keys.len(),
        pd.triggers_deduplicated(),
        pd.resolves_dropped(),
        summary(&times),
    );
    paged.assert_exact(pd, &paging.resolved);
    assert_all_accepted(pd);
}

/// The paging trials' transfers: what happens to each, and what PagerDuty must end with.
struct Paging {
    fates: Vec<Fate>,
    /// Dedup keys of the transfers that stay unbalanced: open at the end, each once.
    open: std::collections::BTreeSet<String>,
    /// Dedup keys of the fixed ones: resolved at the end, if they were paged at all.
    resolved: std::collections::BTreeSet<String>,
}

impl Paging {
    /// The fates of `transfers` transfers, drawn from `rng`.
    fn draw(rng: &mut Rng, transfers: usize) -> Paging {
        let fates = draw_fates(rng, transfers);
        let keys = |fate: Fate| {
            (0..transfers)
                .filter(|i| fates[*i] == fate)
                .map(|i| {
                    overseer_prs::escalate::dedup_key("transfer_nets_to_zero", &format!("T{i}"))
                })
                .collect()
        };
        Paging {
            open: keys(Fate::Unbalanced),
            resolved: keys(Fate::Fixed),
            fates,
        }
    }

    /// The pause after each step of the traffic (a transfer, a fix) that spreads it over
    /// `span` (at least 300 ms).
    fn pace(&self, span: Duration) -> Duration {
        let steps = self.fates.len() + self.resolved.len();
        (span / steps.max(1) as u32).max(Duration::from_millis(300))
    }

    /// PagerDuty holds what the ledger says (the unbalanced transfers open; a transfer
    /// fixed before its page could go out is never paged, so PagerDuty hears of a fixed
    /// one both ways or not at all), and nothing is owed.
    async fn settled(&self, stack: &common::RealStack) -> bool {
        common::open_keys(&stack.pd) == self.open
            && stack.cat.unsettled_incidents(10).await.unwrap().is_empty()
    }
}

/// Every PagerDuty request was well-formed and accepted.
fn assert_all_accepted(pd: &overseer_testkit::pagerduty::FakePagerDuty) {
    for r in pd.requests() {
        assert_eq!(r.status, 202, "{r:#?}");
    }
}

/// What PagerDuty ended with, against the transfers expected open.
struct Paged {
    /// Resolved incidents' dedup keys, a key once per incident resolved.
    resolved: Vec<String>,
    resolved_keys: std::collections::BTreeSet<String>,
    /// Incidents opened beyond one per failure (a key opened twice, or opened again
    /// after its resolve).
    doubled: i64,
}

impl Paged {
    fn of(
        pd: &overseer_testkit::pagerduty::FakePagerDuty,
        expect_open: &std::collections::BTreeSet<String>,
    ) -> Paged {
        let resolved: Vec<String> = pd
            .resolved_incidents()
            .into_iter()
            .map(|i| i.dedup_key)
            .collect();
        let resolved_keys: std::collections::BTreeSet<String> = resolved.iter().cloned().collect();
        let doubled = pd.incidents_opened_total() as i64
            - (expect_open.len() + resolved_keys.len()) as i64
            + (resolved.len() - resolved_keys.len()) as i64;
        Paged {
            resolved,
            resolved_keys,
            doubled,
        }
    }

    /// No incident opened twice; only fixed transfers resolved.
    fn assert_exact(
        &self,
        pd: &overseer_testkit::pagerduty::FakePagerDuty,
        expect_resolved: &std::collections::BTreeSet<String>,
    ) {
        assert_eq!(
            self.doubled,
            0,
            "an incident opened twice: {:#?}",
            pd.requests()
        );
        assert!(
            self.resolved_keys.is_subset(expect_resolved),
            "only fixed transfers resolve: {:#?}",
            self.resolved
        );
    }
}

/// The fates of `n` transfers, drawn from `rng`.
fn draw_fates(rng: &mut Rng, n: usize) -> Vec<Fate> {
    (0..n)
        .map(|_| match rng.below(3) {
            0 => Fate::Balanced,
            1 => Fate::Unbalanced,
            _ => Fate::Fixed,
        })
        .collect()
}

/// PagerDuty answering 500 to everything (`CHAOS_PD_OUTAGE_S`, default 15 s; a minute in
/// the long form), then applying every request but answering only after the client's
/// 10 s timeout (`CHAOS_PD_SLOW_S`, default 25 s), while transfers go unbalanced and are
/// fixed under a running `overseer run`. Then, once it is healthy: every transfer still
/// unbalanced has one open incident, opened once; a fixed one was paged and resolved, or
/// (fixed before its page could go out) never paged; nothing is owed; and how long that
/// took after PagerDuty healed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pagerduty_outage_then_slow() {
    let _one = ONE_AT_A_TIME.lock().await;
    let seed = knob("CHAOS_SEED", 14);
    let outage = Duration::from_secs(knob("CHAOS_PD_OUTAGE_S", 15));
    let slow = Duration::from_secs(knob("CHAOS_PD_SLOW_S", 25));
    let transfers = knob("CHAOS_TRANSFERS", 12) as usize;
    let (mut stack, mut ov) =
        common::RealStack::start("pdchaos", 1, Duration::ZERO, PAGING_PRS).await;
    let mut rng = Rng::new(seed ^ 0x0da9e);
    let paging = Paging::draw(&mut rng, transfers);

    // The traffic spans the outage and the slow spell.
    let pace = paging.pace(outage + slow);
    stack.pd.fail_all_with(Some(
        overseer_testkit::pagerduty::StatusCode::INTERNAL_SERVER_ERROR,
    ));
    let driver = drive_transfers(&stack.client, &stack.producer, &paging.fates, pace);
    let spells = async {
        tokio::time::sleep(outage).await;
        stack.pd.fail_all_with(None);
        stack.pd.answer_after(Duration::from_secs(12));
        tokio::time::sleep(slow).await;
        stack.pd.answer_after(Duration::ZERO);
        Instant::now()
    };
    let ((), healed) = tokio::join!(driver, spells);
    ov.assert_running();

    // A transfer fixed before its page could go out is never paged: PagerDuty hears of
    // the fixed ones either both ways or not at all. Nothing may be owed at the end.
    common::wait_until(
        &mut ov,
        Duration::from_secs(120),
        "PagerDuty holds what the ledger says, and nothing is owed",
        async || paging.settled(&stack).await,
    )
    .await;
    let caught_up = healed.elapsed();
    ov.stop().await;
    stack.stop_heartbeats().await;

    let pd = &stack.pd;
    let paged = Paged::of(pd, &paging.open);
    let doubled = paged.doubled;
    let refused = pd.requests().iter().filter(|r| r.status == 500).count();
    eprintln!(
        "| PagerDuty 500 for {} s, then answering after the 10 s timeout for {} s (seed {seed}) | {transfers} transfers ({} open, {} fixed, {} of them paged and resolved), {refused} requests refused | pages doubled {doubled} | resolves lost 0 | re-sent triggers {} | resolves re-sent {} | all delivered {:.2} s after PagerDuty healed |",
        outage.as_secs(),
        slow.as_secs(),
        paging.open.len(),
        paging.resolved.len(),
        paged.resolved_keys.len(),
        pd.triggers_deduplicated(),
        pd.resolves_dropped(),
        caught_up.as_secs_f64(),
    );
    paged.assert_exact(pd, &paging.resolved);
    if !paging.open.is_empty() {
        assert!(refused > 0, "the outage refused nothing");
    }
    for r in pd.requests() {
        assert!(r.status == 202 || r.status == 500, "{r:#?}");
    }
}

/// A tmpfs of a fixed size mounted on a trial's data directory; unmounted when dropped.
struct Tmpfs(PathBuf);

/// Whether this process runs as root, which mounting needs (CI does; the rest of the suite
/// does not).
fn root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

impl Tmpfs {
    /// Mounts it (as root: a root without the right to mount fails the trial).
    fn mount(dir: &std::path::Path, mib: u64) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "the disk-full trial mounts a {mib} MiB tmpfs on its data directory (root or \
             CAP_SYS_ADMIN): mount said {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_owned())
    }

    /// Bytes free.
    fn free(&self) -> u64 {
        let st = rustix::fs::statvfs(&self.0).unwrap();
        st.f_bavail * st.f_frsize
    }

    /// Fills the disk with a ballast file until `leave` bytes are free.
    fn fill_leaving(&self, leave: u64) -> PathBuf {
        let ballast = self.0.join("ballast");
        let _ = std::fs::remove_file(&ballast);
        let size = self.free().saturating_sub(leave);
        let f = std::fs::File::create(&ballast).unwrap();
        // Written, not only sized: tmpfs counts the pages written.
        let chunk = vec![1u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            std::io::Write::write_all(&mut &f, &chunk[..n]).unwrap();
            left -= n as u64;
        }
        ballast
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// `overseer ingest` of the payments WAL into a local store and an embedded catalog in
/// `data`, with `[ingest] min_free_mib = min_free_mib` and `/ready` at `metrics`.
fn disk_config(data: &std::path::Path, min_free_mib: u64, metrics: &str) -> String {
    format!(
        r#"
[store]
kind = "local"
path = "{data}/objects"

[catalog]
kind = "embedded"
path = "{data}/catalog/catalog.redb"

[ingest]
batch_max_events = 100
batch_max_ms = 20
heartbeat_ms = 200
min_free_mib = {min_free_mib}
metrics_addr = "{metrics}"

{MODELS}
[[sources]]
name = "payments-wal"
format = "pgoutput"
[sources.postgres]
url_env = "E2E_SOURCE_URL"
slot = "disk_slot"
publication = "disk_pub"
status_interval_ms = 200
"#,
        data = data.display()
    )
}

/// `/ready`'s status line, or "" while nothing answers.
fn ready(addr: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = write!(
        s,
        "GET /ready HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.lines().next().unwrap_or_default().to_owned()
}

/// The updates an embedded catalog holds, read beside its writer (-1 if it cannot be read
/// now).
async fn embedded_count(path: &std::path::Path) -> i64 {
    match overseer_dal::catalog::embedded::EmbeddedCatalog::open_reader(path) {
        Ok(c) => c.dump().await.map_or(-1, |d| d.entries.len() as i64),
        Err(_) => -1,
    }
}

/// Whether an update of record `id` is in the embedded catalog, read beside its writer.
async fn embedded_has(path: &std::path::Path, id: &str) -> bool {
    let Ok(c) = overseer_dal::catalog::embedded::EmbeddedCatalog::open_reader(path) else {
        return false;
    };
    c.dump()
        .await
        .is_ok_and(|d| d.entries.iter().any(|e| e.record_id == id))
}

/// Disk full on the data directory while `overseer ingest` reads a PostgreSQL WAL under
/// steady writes into a local store and an embedded catalog, each on a tmpfs of its own
/// (128 MiB), filled with a ballast file and freed by removing it. First with the
/// free-space floor (`[ingest] min_free_mib`): ingestion waits, not ready, naming the
/// directory, and goes on once space is freed, without a restart. Then without the floor,
/// each disk in turn filled to its last few kilobytes (seeded) while ingestion runs,
/// `CHAOS_DISK_FULLS` times: a full store's disk is waited out like any transient fault;
/// a full catalog's disk stops the process with an error naming the file (redb refuses
/// every write after a failed one), and a start after space is freed repairs it and goes
/// on. At the end: every change stored exactly once, nothing pending, and the catalog
/// equal to a reindex of the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disk_full_on_the_data_directory() {
    if !root() {
        eprintln!(
            "disk_full_on_the_data_directory: NOT RUN — it mounts tmpfs filesystems, which \
             needs root (CI runs it as root)"
        );
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let seed = knob("CHAOS_SEED", 14);
    let pg = Server::start("postgres");
    let url = pg.var("PG_URL").to_owned();
    let dir = tempfile::tempdir().unwrap();
    // The store and the catalog each on a disk of its own (the first fills the store's).
    let data = dir.path().join("data");
    let disk = Tmpfs::mount(&data.join("objects"), 128);
    let catalog_disk = Tmpfs::mount(&data.join("catalog"), 128);
    let catalog = data.join("catalog/catalog.redb");
    let logs = Logs::new("disk");
    let metrics = format!(
        "127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    );
    let _payments = common::payments_db(&url, "disk_pub", "disk_slot").await;
    let cfg = dir.path().join("overseer.toml");
    std::fs::write(&cfg, disk_config(&data, 8, &metrics)).unwrap();
    let env = [("E2E_SOURCE_URL", url.as_str())];

    let stop = Arc::new(AtomicBool::new(false));
    let rows = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = tokio::spawn(write_transfers(
        url.clone(),
        seed,
        5_000,
        stop.clone(),
        rows.clone(),
    ));

    // 1. The floor: 8 MiB; 4 MiB above it are left free.
    let ballast = disk.fill_leaving(12 << 20);
    let mut ov = Overseer::spawn("ingest", &cfg, &env, &logs.life(0));
    common::wait_until(
        &mut ov,
        Duration::from_secs(180),
        "ingestion waits for space, not ready",
        async || ready(&metrics).contains("503"),
    )
    .await;
    let log = ov.log();
    assert!(
        log.contains("the disk is nearly full") && log.contains(&disk.0.display().to_string()),
        "the wait names the full directory:\n{log}"
    );
    let held = embedded_count(&catalog).await;
    assert!(held > 0, "stored before the disk filled");
    tokio::time::sleep(Duration::from_secs(1)).await;
    ov.assert_running();
    assert_eq!(
        embedded_count(&catalog).await,
        held,
        "nothing written while waiting"
    );
    std::fs::remove_file(&ballast).unwrap();
    let freed = Instant::now();
    common::wait_until(
        &mut ov,
        Duration::from_secs(60),
        "ingestion goes on once space is freed",
        async || embedded_count(&catalog).await > held,
    )
    .await;
    let floor_resume = freed.elapsed();
    assert!(ready(&metrics).contains("200"), "ready again");
    ov.stop().await;

    // 2. No floor: the disk filled, while ingestion runs, to its last few kilobytes
    //    (seeded), `fills` times. Whichever write meets the full disk first — a segment
    //    (waits) or the catalog's commit (stops) — a start after space is freed goes on.
    std::fs::write(&cfg, disk_config(&data, 0, &metrics)).unwrap();
    ov = Overseer::spawn("ingest", &cfg, &env, &logs.life(1));
    let fills = knob("CHAOS_DISK_FULLS", 4) as usize;
    let mut rng = Rng::new(seed ^ 0xd15c);
    let (mut waited, mut stopped) = (0, 0);
    let mut resumes = Vec::new();
    for round in 0..fills {
        // Running and storing before the disk fills.
        let before = rows.load(Ordering::SeqCst);
        let id = format!("t{}", before + 20);
        common::wait_until(
            &mut ov,
            Duration::from_secs(60),
            "ingestion stores before the disk fills",
            async || embedded_has(&catalog, &id).await,
        )
        .await;
        // The store's disk, then the catalog's, in turn.
        let full = [&disk, &catalog_disk][round % 2];
        let ballast = full.fill_leaving(rng.below(256 << 10));
        let deadline = Instant::now() + Duration::from_secs(180);
        let exit = loop {
            if let Some(status) = ov.child.try_wait().unwrap() {
                break Some(status);
            }
            if ready(&metrics).contains("503") {
                break None;
            }
            assert!(Instant::now() < deadline, "the full disk was never met");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let log = ov.log();
        assert!(
            log.contains("No space left on device"),
            "the full disk is named:\n{log}"
        );
        std::fs::remove_file(&ballast).unwrap();
        let freed = Instant::now();
        eprintln!(
            "fill {round}: {} the {} disk; {:.1} MiB free after the ballast went; catalog \
             file {:.1} MiB ({:.1} MiB allocated)",
            if exit.is_some() {
                "stopped on"
            } else {
                "waited for"
            },
            ["store's", "catalog's"][round % 2],
            full.free() as f64 / 1048576.0,
            std::fs::metadata(&catalog).map_or(0, |m| m.len()) as f64 / 1048576.0,
            std::fs::metadata(&catalog)
                .map_or(0, |m| { std::os::unix::fs::MetadataExt::blocks(&m) * 512 })
                as f64
                / 1048576.0,
        );
        let id = format!("t{}", rows.load(Ordering::SeqCst) + 20);
        if let Some(status) = exit {
            assert!(
                !status.success(),
                "a stop on a full disk is a failure: {status}"
            );
            stopped += 1;
            ov = Overseer::spawn("ingest", &cfg, &env, &logs.life(2 + round));
        } else {
            waited += 1;
        }
        common::wait_until(
            &mut ov,
            Duration::from_secs(60),
            "ingestion goes on after the full disk",
            async || embedded_has(&catalog, &id).await,
        )
        .await;
        resumes.push(freed.elapsed());
    }

    stop.store(true, Ordering::Relaxed);
    let expected = writer.await.unwrap();
    let total: usize = expected.values().sum();
    common::wait_until(
        &mut ov,
        Duration::from_secs(180),
        "the history caught up",
        async || embedded_count(&catalog).await >= total as i64,
    )
    .await;
    ov.stop().await;

    // Exactly once, nothing pending, the catalog equal to a reindex of the store.
    let cat = overseer_dal::catalog::embedded::EmbeddedCatalog::open(&catalog).unwrap();
    let dump = cat.dump().await.unwrap();
    assert_exactly_once(&expected, &dump);
    assert!(cat.pending_segments().await.unwrap().is_empty());
    drop(cat);
    let store = overseer_dal::store::local::LocalStore::open(data.join("objects")).unwrap();
    common::assert_store_reindexes_to(&store, dir.path(), &dump).await;
    eprintln!(
        "| disk full on the data directory (seed {seed}) | 1 with the floor, {fills} without ({waited} waited, {stopped} stopped) | {total} changes | lost 0 | duplicated 0 | after space was freed: {:.2} s (floor), {} (no floor) |",
        floor_resume.as_secs_f64(),
        summary(&resumes),
    );
}

/// The id of the `i`th filler ledger entry (apart from the paging traffic's `2i`, `2i+1`).
fn fill_id(i: usize) -> String {
    format!("{:024x}", 0xf000_0000_u64 + i as u64)
}

/// Filler transfers: pending, so their checks pass however many entries they get.
const FILLS: usize = 20;

/// Steady ledger traffic beside the paging trial's: entries of the pending transfers
/// `FILL0..FILL19`, ten at a time, about 150 a second, until `stop`. `started` counts the
/// entries begun (a send waits while the broker is down; the producer retries it).
async fn fill_ledger(
    producer: rdkafka::producer::FutureProducer,
    stop: Arc<AtomicBool>,
    started: Arc<std::sync::atomic::AtomicUsize>,
) {
    let mut i = 0usize;
    while !stop.load(Ordering::SeqCst) {
        let evs: Vec<(String, serde_json::Value)> = (i..i + 10)
            .map(|j| {
                let id = fill_id(j);
                let direction = if j % 2 == 0 { "debit" } else { "credit" };
                let body = entry(&format!("FILL{}", j % FILLS), "acc-f", direction, 100);
                let ev =
                    common::change(1_000_000 + j as u32, "insert", &id, common::now_ms(), body);
                (id, ev)
            })
            .collect();
        i += evs.len();
        started.store(i, Ordering::SeqCst);
        futures::future::join_all(
            evs.iter()
                .map(|(id, ev)| common::produce_ledger(&producer, None, id, ev)),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
}

/// What the ledger topic holds, read back from its start: per key, the changes (by
/// their resume tokens: a record the producer sent again after a broker crash is the
/// same change, which the engine stores once), and how many records repeat a change.
fn ledger_topic(brokers: &str) -> (HashMap<String, usize>, usize) {
    use rdkafka::Message;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique_name("readback"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let (low, high) = consumer
        .fetch_watermarks("ledger", 0, Duration::from_secs(30))
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset("ledger", 0, rdkafka::Offset::Offset(low))
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut changes: std::collections::HashSet<(String, String)> = Default::default();
    let mut repeats = 0;
    let mut next = low;
    let deadline = Instant::now() + Duration::from_secs(60);
    while next < high {
        assert!(Instant::now() < deadline, "read back {next} of {high}");
        if let Some(m) = consumer.poll(Duration::from_millis(500)) {
            let m = m.unwrap();
            next = m.offset() + 1;
            let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
            let ev: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            let token = ev["_id"]["_data"].as_str().unwrap().to_owned();
            if !changes.insert((key, token)) {
                repeats += 1;
            }
        }
    }
    let mut per_key: HashMap<String, usize> = HashMap::new();
    for (key, _) in changes {
        *per_key.entry(key).or_default() += 1;
    }
    (per_key, repeats)
}

/// The broker (tansu on its SQLite storage, which outlives the process) killed with
/// SIGKILL and started again on the same port `CHAOS_BROKER_RESTARTS` times (default 3),
/// after a seeded 3–6 s up and down for a seeded 0.5–3 s, while transfers go unbalanced
/// and are fixed and filler entries flow: `overseer ingest` (the ledger topic and the
/// payments WAL in, the events topic out) and `overseer prs` (the events topic in) must
/// ride every restart out without a restart of their own. Then: every change the topic
/// holds (read back from its start; a record the producer sent again after a crash is the
/// same change) and every payments row change is stored exactly once,
/// a `reindex` of the store equals the catalog, PagerDuty holds what the ledger says, once,
/// and nothing is owed. "Time to resume" is from the broker being back to an entry begun
/// after it being stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_restart_under_ingest_and_prs() {
    let _one = ONE_AT_A_TIME.lock().await;
    use std::sync::atomic::AtomicUsize;
    let seed = knob("CHAOS_SEED", 14);
    let restarts = knob("CHAOS_BROKER_RESTARTS", 3) as usize;
    let transfers = knob("CHAOS_TRANSFERS", 12) as usize;
    let logs = Logs::new("broker-restart");
    let (mut stack, first) = common::RealStack::start_with_broker(
        "brokerchaos",
        1,
        Duration::ZERO,
        PAGING_PRS,
        &[("TANSU_STORAGE", "sqlite")],
    )
    .await;
    drop(first);
    session_expires().await;
    let mut ingest = stack.spawn("ingest", &logs.0.join("ingest.log"));
    let mut prs = stack.spawn("prs", &logs.0.join("prs.log"));

    let mut rng = Rng::new(seed ^ 0xb40c);
    let paging = Paging::draw(&mut rng, transfers);
    for f in 0..FILLS {
        stack
            .client
            .batch_execute(&format!(
                "INSERT INTO payments.transfers VALUES ('FILL{f}', 'acc-f', 'USD', 1.00, 'pending', now())"
            ))
            .await
            .unwrap();
    }

    let stop_fill = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicUsize::new(0));
    let filler = tokio::spawn(fill_ledger(
        stack.producer.clone(),
        stop_fill.clone(),
        started.clone(),
    ));
    // The transfers span the restarts: about 8 s each.
    let pace = paging.pace(Duration::from_secs(8 * restarts as u64));
    let driver = {
        let (client, producer) = (&stack.client, &stack.producer);
        let fates = paging.fates.clone();
        async move { drive_transfers(client, producer, &fates, pace).await }
    };
    let faults = async {
        let mut stored = Stored::new(stack.url(), &stack.schema);
        let mut resumes = Vec::new();
        for r in 0..restarts {
            tokio::time::sleep(Duration::from_millis(3000 + rng.below(3000))).await;
            // (The scripts block: off the runtime's workers, so the traffic goes on.)
            tokio::task::block_in_place(|| stack.kafka().run("crash"));
            let down = Duration::from_millis(500 + rng.below(2500));
            tokio::time::sleep(down).await;
            tokio::task::block_in_place(|| stack.kafka().run("restart"));
            let back = Instant::now();
            let first_after = fill_id(started.load(Ordering::SeqCst));
            let deadline = back + Duration::from_secs(60);
            while !stored.has(&first_after).await {
                assert!(
                    Instant::now() < deadline,
                    "restart {r}: nothing begun after the broker came back was stored within 60 s"
                );
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            resumes.push(back.elapsed());
            eprintln!(
                "restart {r}: down {down:?}, resumed after {:?}",
                back.elapsed()
            );
        }
        resumes
    };
    let ((), resumes) = tokio::join!(driver, faults);
    stop_fill.store(true, Ordering::SeqCst);
    filler.await.unwrap();
    ingest.assert_running();

    let cat = &stack.cat;
    common::wait_until(
        &mut prs,
        Duration::from_secs(120),
        "PagerDuty holds what the ledger says, and nothing is owed",
        async || paging.settled(&stack).await,
    )
    .await;

    // The broker kept every entry it acknowledged (each send above was, or the trial
    // would have stopped): the filler's and the transfers' debits and credits.
    let (mut expected, repeats) = ledger_topic(stack.brokers());
    let acknowledged: Vec<String> = (0..started.load(Ordering::SeqCst))
        .map(fill_id)
        .chain((0..2 * transfers).map(|j| format!("{j:024x}")))
        .collect();
    let missing: Vec<&String> = acknowledged
        .iter()
        .filter(|id| !expected.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "the broker lost {} acknowledged entries: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    // Every change the topic holds, and every payments row change, stored once.
    let ledger_changes: usize = expected.values().sum();
    expected.insert("USD".into(), 1);
    for i in 0..transfers {
        expected.insert(format!("T{i}"), 2);
    }
    for f in 0..FILLS {
        expected.insert(format!("FILL{f}"), 1);
    }
    let total: usize = expected.values().sum();
    let deadline = Instant::now() + Duration::from_secs(60);
    while cat.dump().await.unwrap().entries.len() < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    prs.stop().await;
    ingest.stop().await;
    stack.stop_heartbeats().await;
    let dump = stack.cat.dump().await.unwrap();
    assert_exactly_once(&expected, &dump);
    stack.assert_reindex_equals_catalog(&logs.0).await;

    let pd = &stack.pd;
    let paged = Paged::of(pd, &paging.open);
    eprintln!(
        "| broker kill -9 and restart under ingest and prs (seed {seed}) | {restarts} restarts; {total} changes ({ledger_changes} on the ledger topic, {repeats} more records there repeating one after a crash; {} filler entries begun); {transfers} transfers ({} open, {} fixed, {} of them paged and resolved) | lost 0 | duplicated 0 | pages doubled {} | resolves lost 0 | {} |",
        started.load(Ordering::SeqCst),
        paging.open.len(),
        paging.resolved.len(),
        paged.resolved_keys.len(),
        paged.doubled,
        summary(&resumes),
    );
    paged.assert_exact(pd, &paging.resolved);
    assert_all_accepted(pd);
}

/// The events-topic partitions an `overseer prs` holds by its log (its last "events
/// partitions assigned" or "revoked" line; `None` before the first).
fn held_partitions(log: &std::path::Path) -> Option<Vec<i32>> {
    held_partitions_since(log, 0)
}

/// [`held_partitions`] by the lines from byte `from` of the log on.
fn held_partitions_since(log: &std::path::Path, from: usize) -> Option<Vec<i32>> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.get(from..)?.lines().rev().find(|l| {
        l.contains("events partitions assigned") || l.contains("events partitions revoked")
    })?;
    if line.contains("revoked") {
        return Some(Vec::new());
    }
    let list = line.split("partitions=[").nth(1)?.split(']').next()?;
    Some(
        list.split(',')
            .filter_map(|p| p.trim().parse().ok())
            .collect(),
    )
}

/// Waits (up to a minute) until the `overseer prs` logging to `log` says, after byte
/// `from` of it, that it holds every partition of the events topic; how long that took.
async fn until_holds_all(log: &std::path::Path, from: usize, what: &str) -> Duration {
    let started = Instant::now();
    loop {
        if held_partitions_since(log, from).is_some_and(|p| p.len() == 4) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{what}: no instance took every partition within 60 s (holds {:?})",
            held_partitions(log)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (up to a minute) until both instances' latest logs say they hold some of the
/// partitions: the group has split them.
async fn until_split(logs: [&std::path::Path; 2], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !logs
        .iter()
        .all(|l| held_partitions(l).is_some_and(|p| !p.is_empty() && p.len() < 4))
    {
        assert!(
            Instant::now() < deadline,
            "{what}: the two instances never split the partitions ({:?})",
            logs.map(held_partitions)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two `overseer prs` instances in one consumer group of the events topic (4 partitions),
/// with `overseer ingest` feeding it, while transfers go unbalanced and are fixed: one of
/// them, seeded, is killed with SIGKILL after a seeded 3–6 s, the other must take its
/// partitions (its log says so) and a replacement joins 1–3 s later,
/// `CHAOS_PRS_KILLS` times (default 2). Then: PagerDuty holds what the ledger says, each
/// incident opened once, fixed ones resolved, nothing owed. "Time to resume" is from
/// the kill to the survivor holding every partition: the group session (6 s here) plus the
/// rebalance.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_prs_one_killed() {
    let _one = ONE_AT_A_TIME.lock().await;
    let seed = knob("CHAOS_SEED", 14);
    let kills = knob("CHAOS_PRS_KILLS", 2) as usize;
    let transfers = knob("CHAOS_TRANSFERS", 12) as usize;
    let logs = Logs::new("two-prs");
    let (mut stack, first) =
        common::RealStack::start("twoprs", 1, Duration::ZERO, PAGING_PRS).await;
    drop(first);
    session_expires().await;
    let mut ingest = stack.spawn("ingest", &logs.0.join("ingest.log"));
    let log_of = |slot: usize, life: usize| logs.0.join(format!("prs-{slot}-{life}.log"));
    let mut lives = [0usize, 0usize];
    let mut instances = [
        stack.spawn("prs", &log_of(0, 0)),
        stack.spawn("prs", &log_of(1, 0)),
    ];
    // Both hold some of the partitions before the traffic starts.
    until_split([&log_of(0, 0), &log_of(1, 0)], "at the start").await;

    let mut rng = Rng::new(seed ^ 0x2b5);
    let paging = Paging::draw(&mut rng, transfers);
    // The transfers span the kills: about 14 s each.
    let pace = paging.pace(Duration::from_secs(14 * kills as u64));
    let driver = {
        let (client, producer) = (&stack.client, &stack.producer);
        let fates = paging.fates.clone();
        async move { drive_transfers(client, producer, &fates, pace).await }
    };
    let faults = async {
        let mut takeovers = Vec::new();
        for k in 0..kills {
            tokio::time::sleep(Duration::from_millis(3000 + rng.below(3000))).await;
            let victim = rng.below(2) as usize;
            let survivor = 1 - victim;
            let survivor_log = log_of(survivor, lives[survivor]);
            // Only what the survivor logs after the kill says it took the partitions.
            let from = std::fs::metadata(&survivor_log).unwrap().len() as usize;
            let _ = instances[victim].child.kill(); // SIGKILL
            instances[victim].child.wait().unwrap();
            let took = until_holds_all(&survivor_log, from, &format!("kill {k}")).await;
            instances[survivor].assert_running();
            eprintln!(
                "kill {k}: instance {victim} killed, {survivor} held every partition after {took:?}"
            );
            takeovers.push(took);
            tokio::time::sleep(Duration::from_millis(1000 + rng.below(2000))).await;
            lives[victim] += 1;
            instances[victim] = stack.spawn("prs", &log_of(victim, lives[victim]));
            // The replacement has its share before the next kill.
            until_split(
                [&log_of(0, lives[0]), &log_of(1, lives[1])],
                &format!("after kill {k}"),
            )
            .await;
        }
        takeovers
    };
    let ((), takeovers) = tokio::join!(driver, faults);

    let [a, b] = &mut instances;
    common::wait_until(
        a,
        Duration::from_secs(120),
        "PagerDuty holds what the ledger says, and nothing is owed",
        async || {
            b.assert_running();
            paging.settled(&stack).await
        },
    )
    .await;
    for ov in &mut instances {
        ov.stop().await;
    }
    ingest.assert_running();
    ingest.stop().await;
    stack.stop_heartbeats().await;

    let pd = &stack.pd;
    let paged = Paged::of(pd, &paging.open);
    eprintln!(
        "| two prs in one group, one killed (seed {seed}) | {kills} kills; {transfers} transfers ({} open, {} fixed, {} of them paged and resolved) | pages doubled {} | resolves lost 0 | re-sent triggers {} | resolves re-sent {} | the survivor held every partition: {} |",
        paging.open.len(),
        paging.resolved.len(),
        paged.resolved_keys.len(),
        paged.doubled,
        pd.triggers_deduplicated(),
        pd.resolves_dropped(),
        summary(&takeovers),
    );
    paged.assert_exact(pd, &paging.resolved);
    assert_all_accepted(pd);
}
