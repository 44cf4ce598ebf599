//! The PostgreSQL logical-replication source and the pgoutput consumer against a real
//! PostgreSQL 15 started by `scripts/postgres.sh` (wal_level = logical).
//!
//! The source reads its connection string from the environment variable its config names
//! (`url_env`). Setting the environment of the running process is `unsafe` in Rust 2024
//! (and `unsafe_code` is forbidden here), so each test starts its server and then runs
//! itself again, as a child process of this test binary, with the server's `PG_URL` in
//! [`URL_VAR`]: the child does the work, and the parent fails with the child's output if
//! the child fails or did not run the test. A server that cannot start fails the test.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use overseer_dal::update::{Micros, Op, now_us};
use overseer_ingestion::config::{ModelConfig, PgSourceConfig};
use overseer_ingestion::format::pgoutput::{Cell, ChangeOp, PgoutputConsumer, decode_change};
use overseer_ingestion::format::{Consumer, Models};
use overseer_ingestion::source::postgres::PgSource;
use overseer_ingestion::source::{
    AckToken, Acks, Evidence, Source, SourceContext, SourceEvent, SourceMsg,
};
use overseer_testkit::Server;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Holds the server's connection string in the child process.
const URL_VAR: &str = "OVERSEER_TEST_PG_SOURCE_URL";
const STATUS_MS: u64 = 100;
const HEARTBEAT: Duration = Duration::from_millis(150);
const WAIT: Duration = Duration::from_secs(30);

/// In the child: the server's connection string. In the parent: starts the server, runs
/// `test` in a child with the connection string in [`URL_VAR`], checks it passed, and
/// returns `None` (the work is done).
fn server_url(test: &str) -> Option<String> {
    server_url_with(test, &[])
}

/// [`server_url`] with extra environment for the server's start script.
fn server_url_with(test: &str, env: &[(&str, &str)]) -> Option<String> {
    if let Ok(url) = std::env::var(URL_VAR) {
        return Some(url);
    }
    let server = Server::start_with("postgres", env);
    let exe = std::env::current_exe().expect("path of this test binary");
    let out = Command::new(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(URL_VAR, server.var("PG_URL"))
        .output()
        .expect("re-run this test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{test} failed in its child process ({}).\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n\
         --- server log\n{}",
        out.status,
        std::fs::read_to_string(server.dir().join("server.log")).unwrap_or_default()
    );
    println!("{stdout}");
    None
}

async fn sql(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test server");
    tokio::spawn(conn);
    client
}

const SCHEMA: &str = "
    CREATE SCHEMA payments;
    CREATE TABLE payments.transfers (
        id text PRIMARY KEY,
        account_id text NOT NULL,
        asset text NOT NULL,
        amount numeric NOT NULL,
        status text NOT NULL,
        memo text,
        updated_at timestamptz NOT NULL DEFAULT now()
    );
    -- Out of line without compression: a >2 kB memo is TOASTed whatever its content.
    ALTER TABLE payments.transfers ALTER COLUMN memo SET STORAGE EXTERNAL;
    CREATE TABLE payments.assets (symbol text PRIMARY KEY, decimals int NOT NULL);
    -- Not published: writes here are WAL with nothing to replicate.
    CREATE TABLE payments.audit (n serial PRIMARY KEY, note text);
";

fn source_config(slot: &str, create: bool) -> PgSourceConfig {
    PgSourceConfig {
        url_env: URL_VAR.into(),
        slot: slot.into(),
        publication: format!("{slot}_pub"),
        create,
        tables: vec!["payments.transfers".into(), "payments.assets".into()],
        status_interval_ms: STATUS_MS,
    }
}

/// A running source and the pipeline's ends of its context.
struct Running {
    rx: mpsc::Receiver<SourceMsg>,
    acks: Arc<Acks>,
    shutdown: CancellationToken,
    task: JoinHandle<overseer_ingestion::Result<()>>,
    /// Heartbeat watermarks received so far.
    heartbeats: Vec<Micros>,
}

fn start_source(cfg: PgSourceConfig, capacity: usize) -> Running {
    let (tx, rx) = mpsc::channel(capacity);
    let acks = Acks::new();
    let shutdown = CancellationToken::new();
    let ctx = SourceContext {
        name: "pg".into(),
        tx,
        acks: acks.clone(),
        shutdown: shutdown.clone(),
        resume: None,
        heartbeat: HEARTBEAT,
        caught_up_means_now: false,
    };
    let source = Box::new(PgSource::new(cfg).expect("valid source config"));
    let task = tokio::spawn(source.run(ctx));
    Running {
        rx,
        acks,
        shutdown,
        task,
        heartbeats: Vec::new(),
    }
}

impl Running {
    /// The next `n` events (heartbeats in between are recorded).
    async fn events(&mut self, n: usize) -> Vec<SourceEvent> {
        let mut out = Vec::new();
        while out.len() < n {
            match tokio::time::timeout(WAIT, self.rx.recv()).await {
                Ok(Some(SourceMsg::Event(e))) => out.push(e),
                Ok(Some(SourceMsg::Heartbeat {
                    watermark_us,
                    evidence,
                    lanes,
                })) => {
                    assert_eq!(lanes, None, "a slot is one lane");
                    assert_eq!(evidence, Evidence::Heartbeat, "the server's clock");
                    self.heartbeats.push(watermark_us)
                }
                Ok(Some(SourceMsg::Lanes(l))) => panic!("a slot is one lane: {l:?}"),
                Ok(None) => panic!(
                    "source ended after {} of {n} events: {:?}",
                    out.len(),
                    (&mut self.task).await
                ),
                Err(_) => panic!("only {} of {n} events within {WAIT:?}: {out:#?}", out.len()),
            }
        }
        out
    }

    /// Everything that arrives within `d`: events (heartbeats are recorded).
    async fn drain_for(&mut self, d: Duration) -> Vec<SourceEvent> {
        let deadline = tokio::time::Instant::now() + d;
        let mut out = Vec::new();
        while let Ok(msg) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            match msg {
                Some(SourceMsg::Event(e)) => out.push(e),
                Some(SourceMsg::Heartbeat { watermark_us, .. }) => {
                    self.heartbeats.push(watermark_us)
                }
                Some(SourceMsg::Lanes(l)) => panic!("a slot is one lane: {l:?}"),
                None => break,
            }
        }
        out
    }

    /// Waits (up to [`WAIT`]) until at least two heartbeats arrived after the first
    /// `before` and the last carries a watermark of at least `from`; any event meanwhile
    /// is a failure (`quiet` says why none is expected). Returns those heartbeats.
    async fn idle_heartbeats(&mut self, before: usize, from: Micros, quiet: &str) -> Vec<Micros> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let hb = &self.heartbeats[before..];
            if hb.len() >= 2 && *hb.last().unwrap() >= from {
                return hb.to_vec();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "heartbeats while idle, within {WAIT:?}: {hb:?}"
            );
            let more = self.drain_for(HEARTBEAT).await;
            assert!(more.is_empty(), "{quiet}: {more:#?}");
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let res = tokio::time::timeout(WAIT, self.task)
            .await
            .expect("source stops on shutdown")
            .expect("source task");
        res.expect("source returns Ok on shutdown");
    }
}

fn lsn(text: &str) -> u64 {
    let (hi, lo) = text.split_once('/').expect("LSN X/Y");
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

async fn confirmed_flush(db: &tokio_postgres::Client, slot: &str) -> u64 {
    let row = db
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .expect("slot exists");
    lsn(&row.get::<_, String>(0))
}

async fn current_wal_lsn(db: &tokio_postgres::Client) -> u64 {
    let row = db
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap();
    let l = lsn(&row.get::<_, String>(0));
    // At a page boundary the insert position is past the next page's header, where the
    // walsender's (and so the slot's) position is the end of the last record.
    match l % 8192 {
        24 | 40 => l - l % 8192,
        _ => l,
    }
}

/// Polls `f` until it holds, or panics with `what`.
async fn wait_for<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_slot_active(db: &tokio_postgres::Client, slot: &str) {
    wait_for("the source streams from its slot", || async {
        db.query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND active",
            &[&slot],
        )
        .await
        .unwrap()
        .is_some()
    })
    .await;
}

fn consumer() -> PgoutputConsumer {
    let models = [
        ModelConfig {
            name: "payments.transfers".into(),
            id_field: "id".into(),
            references: BTreeMap::from([("account".to_string(), "account_id".to_string())]),
        },
        ModelConfig {
            name: "payments.assets".into(),
            id_field: "symbol".into(),
            references: BTreeMap::new(),
        },
    ];
    PgoutputConsumer::new(Models::new(&models, None))
}

/// Runs `sql` as one transaction; returns wall-clock bounds around its commit.
async fn txn(db: &tokio_postgres::Client, sql: &str) -> (Micros, Micros) {
    let before = now_us();
    db.batch_execute(&format!("BEGIN; {sql}; COMMIT;"))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    (before, now_us())
}

fn ack_of(e: &SourceEvent) -> u64 {
    match e.ack {
        Some(AckToken::Lsn(l)) => l,
        ref other => panic!("expected an LSN ack on {}, got {other:?}", e.position),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_decodes_acks_and_resumes() {
    let Some(url) = server_url("streams_decodes_acks_and_resumes") else {
        return;
    };
    let db = sql(&url).await;
    db.batch_execute(SCHEMA).await.unwrap();
    let slot = "overseer_main";
    let mut src = start_source(source_config(slot, true), 64);
    wait_slot_active(&db, slot).await;
    let created_at = confirmed_flush(&db, slot).await;

    // T1: two rows in one transaction. T2: two transfers, one with a TOASTed memo.
    // T3: an update that leaves the memo alone. T4: a delete.
    let t1 = txn(
        &db,
        "INSERT INTO payments.assets VALUES ('BTC', 8), ('ETH', 18)",
    )
    .await;
    let t2 = txn(
        &db,
        "INSERT INTO payments.transfers (id, account_id, asset, amount, status, memo) VALUES
           ('t1', 'acct-1', 'BTC', 0.5, 'pending', repeat('memo-', 1000)),
           ('t2', 'acct-2', 'ETH', 12.25, 'pending', 'short')",
    )
    .await;
    let t3 = txn(
        &db,
        "UPDATE payments.transfers SET status = 'completed', amount = 0.50 WHERE id = 't1'",
    )
    .await;
    let t4 = txn(&db, "DELETE FROM payments.transfers WHERE id = 't2'").await;

    let evs = src.events(6).await;
    let c = consumer();
    let expect = [
        ("payments.assets", "BTC", Op::Create, t1),
        ("payments.assets", "ETH", Op::Create, t1),
        ("payments.transfers", "t1", Op::Create, t2),
        ("payments.transfers", "t2", Op::Create, t2),
        ("payments.transfers", "t1", Op::Update, t3),
        ("payments.transfers", "t2", Op::Delete, t4),
    ];
    for (ev, (model, id, op, (before, after))) in evs.iter().zip(expect) {
        let d = c
            .decode(ev)
            .unwrap_or_else(|r| panic!("{}: {r}", ev.position));
        assert_eq!(
            (d.model.as_str(), d.record_id.as_str(), d.op),
            (model, id, op)
        );
        assert_eq!(Some(d.event_time_us), ev.commit_time_us);
        assert!(
            (before - 5_000..=after + 5_000).contains(&d.event_time_us),
            "{}: commit time {} outside [{before}, {after}]",
            ev.position,
            d.event_time_us
        );
        if model == "payments.transfers" && op != Op::Delete {
            assert_eq!(
                d.refs,
                vec![("account".to_string(), format!("acct-{}", &id[1..]))]
            );
        }
        // The checkpoint is the commit LSN, which the position starts with.
        let commit = lsn(ev.checkpoint.as_deref().unwrap());
        assert!(
            ev.position.starts_with(&format!("{commit:016X}/")),
            "{}",
            ev.position
        );
    }
    for w in evs.windows(2) {
        assert!(
            w[0].position < w[1].position,
            "{} !< {}",
            w[0].position,
            w[1].position
        );
    }
    // Ack tokens only on the last change of each transaction.
    let acks: Vec<bool> = evs.iter().map(|e| e.ack.is_some()).collect();
    assert_eq!(acks, [false, true, false, true, true, true]);
    let ends: Vec<u64> = [1, 3, 4, 5].iter().map(|i| ack_of(&evs[*i])).collect();
    assert!(ends.windows(2).all(|w| w[0] < w[1]), "{ends:?}");
    for (i, e) in [0, 2].map(|i| (i, &evs[i])) {
        assert_eq!(e.checkpoint, evs[i + 1].checkpoint, "same transaction");
    }
    assert!(
        ends[0] > lsn(evs[0].checkpoint.as_deref().unwrap()),
        "end is past the commit"
    );

    // The unchanged TOASTed memo, and the delete's key tuple.
    let upd = decode_change(&evs[4].raw, evs[4].context.as_ref().unwrap()).unwrap();
    assert_eq!(upd.op, ChangeOp::Update);
    let new = upd.new.as_deref().unwrap();
    assert_eq!(upd.cell(new, "memo"), Some(&Cell::UnchangedToast));
    assert_eq!(
        upd.cell(new, "status"),
        Some(&Cell::Text("completed".into()))
    );
    assert_eq!(upd.cell(new, "amount"), Some(&Cell::Text("0.50".into())));
    let ins = decode_change(&evs[2].raw, evs[2].context.as_ref().unwrap()).unwrap();
    assert_eq!(
        ins.cell(ins.new.as_deref().unwrap(), "memo"),
        Some(&Cell::Text("memo-".repeat(1000)))
    );
    assert!(ins.columns.iter().find(|c| c.name == "id").unwrap().key);
    let del = decode_change(&evs[5].raw, evs[5].context.as_ref().unwrap()).unwrap();
    assert_eq!(del.op, ChangeOp::Delete);
    assert_eq!(
        del.cell(del.old.as_deref().unwrap(), "id"),
        Some(&Cell::Text("t2".into()))
    );

    // Nothing is confirmed before the pipeline acknowledges.
    tokio::time::sleep(Duration::from_millis(10 * STATUS_MS)).await;
    let before_ack = confirmed_flush(&db, slot).await;
    assert!(before_ack >= created_at);
    assert!(
        before_ack < ends[0],
        "confirmed {before_ack:X} before any ack (T1 ends {:X})",
        ends[0]
    );

    // Ack through T2: the slot moves exactly there, not past it.
    src.acks.ack([AckToken::Lsn(ends[1])]);
    wait_for("confirmed_flush_lsn reaches the ack", || async {
        confirmed_flush(&db, slot).await >= ends[1]
    })
    .await;
    tokio::time::sleep(Duration::from_millis(10 * STATUS_MS)).await;
    assert_eq!(
        confirmed_flush(&db, slot).await,
        ends[1],
        "T3 and T4 are not acked"
    );
    src.stop().await;
    assert_eq!(confirmed_flush(&db, slot).await, ends[1]);

    // Restart: T3 and T4 come again, the same bytes at the same positions; T1 and T2 not.
    let mut src = start_source(source_config(slot, true), 64);
    let again = src.events(2).await;
    for (a, b) in again.iter().zip(&evs[4..]) {
        assert_eq!((&a.position, &a.raw, &a.ack), (&b.position, &b.raw, &b.ack));
        assert_eq!(a.commit_time_us, b.commit_time_us);
        assert_eq!(c.decode(a).unwrap(), c.decode(b).unwrap());
    }
    let extra = src.drain_for(Duration::from_millis(5 * STATUS_MS)).await;
    assert!(extra.is_empty(), "nothing else is replayed: {extra:#?}");
    src.acks.ack([AckToken::Lsn(ends[3])]);
    wait_for("confirmed_flush_lsn reaches T4", || async {
        confirmed_flush(&db, slot).await >= ends[3]
    })
    .await;

    // Idle (writes only to an unpublished table): heartbeats, and the slot follows the
    // WAL so it does not hold it.
    let idle_from = now_us();
    let heartbeats_before = src.heartbeats.len();
    for i in 0..3 {
        db.execute(
            "INSERT INTO payments.audit (note) VALUES ($1)",
            &[&format!("n{i}")],
        )
        .await
        .unwrap();
    }
    let idle_wal = current_wal_lsn(&db).await;
    assert!(idle_wal > ends[3]);
    wait_for("confirmed_flush_lsn passes the idle WAL", || async {
        confirmed_flush(&db, slot).await >= idle_wal
    })
    .await;
    let quiet = src.drain_for(HEARTBEAT * 4).await;
    assert!(
        quiet.is_empty(),
        "unpublished writes produce no events: {quiet:#?}"
    );
    let hb = src
        .idle_heartbeats(
            heartbeats_before,
            idle_from,
            "unpublished writes produce no events",
        )
        .await;
    let last = *hb.last().unwrap();
    assert!(last <= now_us(), "watermark {last} is recent");
    assert!(hb.windows(2).all(|w| w[0] <= w[1]), "{hb:?}");
    src.stop().await;
}

/// The server's clock, in microseconds since the epoch.
async fn server_clock(db: &tokio_postgres::Client) -> Micros {
    db.query_one(
        "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::int8",
        &[],
    )
    .await
    .expect("read the server's clock")
    .get(0)
}

/// A database host whose clock is an hour behind ours (libfaketime under the server): the
/// commit times and the idle watermark are the server's, never our clock. A source that
/// heartbeated its own clock while caught up would claim an hour the server has not
/// reached, and every check reading it would run before its data exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freshness_follows_the_servers_clock_not_ours() {
    let Some(url) = server_url_with(
        "freshness_follows_the_servers_clock_not_ours",
        &[("PG_FAKETIME", "-1h")],
    ) else {
        return;
    };
    let db = sql(&url).await;
    let skew = now_us() - server_clock(&db).await;
    assert!(
        (3_500_000_000..3_700_000_000).contains(&skew),
        "the test server runs an hour behind us: skew {skew} µs"
    );
    db.batch_execute(SCHEMA).await.unwrap();
    let slot = "overseer_skewed";
    let mut src = start_source(source_config(slot, true), 64);
    wait_slot_active(&db, slot).await;

    let before = server_clock(&db).await;
    db.batch_execute("INSERT INTO payments.assets VALUES ('BTC', 8)")
        .await
        .unwrap();
    let after = server_clock(&db).await;
    let ev = src.events(1).await.remove(0);
    let commit = ev.commit_time_us.expect("a commit time");
    assert!(
        (before..=after).contains(&commit),
        "commit time {commit} is the server's ({before}..={after})"
    );
    src.acks.ack([AckToken::Lsn(ack_of(&ev))]);

    // Idle: heartbeats carry the server's clock, past the commit and never past the
    // server's present.
    let heartbeats_before = src.heartbeats.len();
    let idle_from = server_clock(&db).await;
    let quiet = src.drain_for(HEARTBEAT * 6).await;
    assert!(quiet.is_empty(), "no writes, no events: {quiet:#?}");
    let hb = src
        .idle_heartbeats(
            heartbeats_before,
            idle_from - 20_000,
            "no writes, no events",
        )
        .await;
    let server_now = server_clock(&db).await;
    let last = *hb.last().unwrap();
    assert!(
        last > commit && last >= idle_from - 20_000 && last <= server_now,
        "idle watermark {last} follows the server's clock ({idle_from}..={server_now}), \
         not ours ({})",
        now_us()
    );
    src.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_the_connection_is_lost() {
    let Some(url) = server_url("reconnects_after_the_connection_is_lost") else {
        return;
    };
    let db = sql(&url).await;
    db.batch_execute(SCHEMA).await.unwrap();
    let slot = "overseer_reconnect";
    let mut src = start_source(source_config(slot, true), 4);
    wait_slot_active(&db, slot).await;

    txn(&db, "INSERT INTO payments.assets VALUES ('BTC', 8)").await;
    let first = src.events(1).await;
    src.acks.ack([AckToken::Lsn(ack_of(&first[0]))]);
    wait_for("the ack is confirmed", || async {
        confirmed_flush(&db, slot).await >= ack_of(&first[0])
    })
    .await;

    // Kill the walsender: the source reconnects and goes on from the confirmed position.
    let killed = db
        .query_one(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
             WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap();
    assert!(killed.get::<_, bool>(0));
    txn(&db, "INSERT INTO payments.assets VALUES ('ETH', 18)").await;
    let next = src.events(1).await;
    let d = consumer().decode(&next[0]).unwrap();
    assert_eq!(
        d.record_id, "ETH",
        "BTC was confirmed, so it is not replayed"
    );
    assert!(next[0].position > first[0].position);
    assert!(!src.task.is_finished());

    // A transaction larger than the channel: the source waits for room (backpressure),
    // nothing is lost or reordered, and only its last change carries the ack.
    txn(
        &db,
        "INSERT INTO payments.assets SELECT 'A' || i, i % 19 FROM generate_series(1, 300) i",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let big = src.events(300).await;
    let commit = &big[0].position[..16];
    for (i, e) in big.iter().enumerate() {
        assert_eq!(e.position, format!("{commit}/{i:08}"));
        assert_eq!(e.ack.is_some(), i == 299, "{}", e.position);
        assert_eq!(
            consumer().decode(e).unwrap().record_id,
            format!("A{}", i + 1)
        );
    }
    src.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_slot_or_publication_is_a_clear_error() {
    let Some(url) = server_url("missing_slot_or_publication_is_a_clear_error") else {
        return;
    };
    let db = sql(&url).await;
    db.batch_execute(SCHEMA).await.unwrap();

    let run = |cfg: PgSourceConfig| async move {
        let src = start_source(cfg, 8);
        tokio::time::timeout(WAIT, src.task)
            .await
            .expect("a definite error ends the source")
            .unwrap()
            .expect_err("the source fails")
            .to_string()
    };
    let e = run(source_config("overseer_absent", false)).await;
    assert!(
        e.contains("publication \"overseer_absent_pub\" does not exist"),
        "{e}"
    );
    db.batch_execute("CREATE PUBLICATION overseer_absent_pub FOR TABLE payments.transfers")
        .await
        .unwrap();
    let e = run(source_config("overseer_absent", false)).await;
    assert!(
        e.contains("replication slot \"overseer_absent\" does not exist"),
        "{e}"
    );

    // A slot of another plugin is refused, not used.
    db.batch_execute(
        "SELECT pg_create_logical_replication_slot('overseer_wrong', 'test_decoding')",
    )
    .await
    .unwrap();
    let mut cfg = source_config("overseer_wrong", false);
    cfg.publication = "overseer_absent_pub".into();
    let e = run(cfg).await;
    assert!(e.contains("not a logical pgoutput slot"), "{e}");
}

/// No server needed: the error names the variable (and never shows a value).
#[tokio::test]
async fn unset_url_variable_is_named() {
    let mut cfg = source_config("overseer_unset", true);
    cfg.url_env = "OVERSEER_TEST_PG_URL_THAT_IS_NOT_SET".into();
    let src = start_source(cfg, 8);
    let e = src.task.await.unwrap().unwrap_err().to_string();
    assert!(e.contains("OVERSEER_TEST_PG_URL_THAT_IS_NOT_SET"), "{e}");
}
