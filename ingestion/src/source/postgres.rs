//! PostgreSQL logical replication source (pgoutput, protocol version 1).
//!
//! ```text
//!                     SQL connection (tokio-postgres): create the publication and the slot,
//!                     read confirmed_flush_lsn, probe pg_current_wal_insert_lsn() for freshness
//!   ┌─────────────┐ ◄──────────────────────────────────────────────────────┐
//!   │ PostgreSQL  │   replication connection (pgwire-replication worker)   │
//!   │  walsender  │ ── Begin, R, I/U/D..., Commit, KeepAlive ──────► PgSource ── events ──► ctx.tx
//!   │  + slot     │                                                   │   ▲          (bounded)   │
//!   └─────────────┘ ◄── standby status: flush = confirmed ────────────┘   │                      ▼
//!         │              (update_applied_lsn of Frontier::advance)    ctx.acks ◄── pipeline: segment PUT,
//!         ▼                                                                         catalog commit
//!   WAL before the slot's restart point may be recycled
//! ```
//!
//! Every row change (`I`/`U`/`D`) of a committed transaction becomes one [`SourceEvent`]:
//! `raw` is the pgoutput message exactly as received, `context` the latest Relation (`R`)
//! message of its table (so [`crate::format::pgoutput`] can read it alone, and so can the
//! DAL years later), `position` is `{commit_lsn:016X}/{seq:08}` (the commit LSN identifies
//! the transaction, `seq` the change within it: replays produce the same positions, so a
//! redelivered change is recognised as the same update), `commit_time_us` the transaction's
//! commit time and `checkpoint` its commit LSN. Truncate, Type, Origin and logical decoding
//! messages carry no row and are skipped.
//!
//! # Progress tracking
//!
//! The replication slot remembers one position, `confirmed_flush_lsn`: every transaction
//! that committed before it is consumed. A new session streams exactly the transactions
//! that commit at or after it, and the server may recycle WAL the slot no longer needs.
//! Moving it forward is the only way WAL is released, so this is the rule: **the slot is
//! confirmed past a transaction only once every change of it, and of every transaction
//! before it, is durable in the object store and indexed in the catalog.**
//!
//! - Only the last event of a transaction carries an ack token, `AckToken::Lsn(end)` with
//!   `end` the end of its commit record (one event is held back until the Commit so it
//!   can be marked). The events before it carry none: an LSN inside a transaction is never
//!   confirmed, because the server would then skip the rest of that transaction.
//! - The pipeline reports through `ctx.acks` the highest token whose event, and everything
//!   sent before it, is durable and indexed. That LSN is handed to the replication worker
//!   (`update_applied_lsn`), which reports it as write = flush = apply position within
//!   `status_interval`; nothing else raises it (`Frontier`).
//! - Positions that carry no rows may be confirmed without an ack, but only once every
//!   event sent before them is acked: the end of a transaction with no published rows, and
//!   the `wal_end` of a keepalive received between transactions (the walsender has sent
//!   everything before it). Without this an idle database, or one whose writes all go to
//!   unpublished tables, would hold WAL forever.
//! - A crash or a lost connection at any point loses nothing: the slot still holds the
//!   last confirmed position and the server resends everything after it. What was sent
//!   but not confirmed comes again with the same positions, and indexing is idempotent.
//!   A reconnect resumes from the higher of the slot's position and what this process
//!   confirmed; events of a transaction cut short are resent whole.
//! - On shutdown the source confirms what is acked, waits (bounded) until the worker has
//!   told the server, and stops. Events still in the pipeline are not waited for: they
//!   come again on the next start.
//!
//! # Freshness
//!
//! The walsender only sends committed transactions, whole, so between transactions the
//! source knows it has everything the server sent. To know whether the server has more,
//! each heartbeat tick (between transactions) asks the server, in one statement, for its
//! clock `t` (`clock_timestamp()`, the clock commit times come from) and then its WAL
//! insert position (`pg_current_wal_insert_lsn()`: past every record begun so far, where
//! `pg_current_wal_lsn()` is only what has been written out). Once the stream has reached
//! that LSN (a Commit or a keepalive at or past it), every transaction that committed
//! before `t` has been received, and the source sends `SourceMsg::Heartbeat` with
//! `t − 10 ms` (the margin covers a backend between taking its commit time and inserting
//! its commit record). The local clock is never used: a skewed client clock would
//! otherwise claim times the server has not reached. An idle, caught-up source thus sends
//! one heartbeat per `ctx.heartbeat`, with `t` a moment ago by the server's clock; a
//! lagging one sends none until it catches up, and its watermark stays just before its
//! last event's commit time (a batch never claims its newest time complete: more of that
//! transaction may follow in the next batch).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pgwire_replication::{
    Lsn, PgWireError, ReplicationClient, ReplicationConfig, ReplicationEvent, SslMode, TlsConfig,
};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, info, warn};

use overseer_dal::update::Micros;

use super::{AckToken, Evidence, Source, SourceContext, SourceEvent, SourceMsg};
use crate::config::PgSourceConfig;
use crate::format::pgoutput;
use crate::{Error, Result};

/// How far before the server's clock a freshness probe claims (see `Stream::on_tick`).
const PROBE_MARGIN_US: Micros = 10_000;
/// Microseconds from the Unix epoch to the PostgreSQL epoch (2000-01-01).
const PG_EPOCH_US: Micros = 946_684_800_000_000;
/// First and largest pause between reconnect attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Connect timeout of the SQL connection when the connection string sets none.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a SQL statement of the source (checks, probes) may take.
const SQL_TIMEOUT: Duration = Duration::from_secs(30);
/// Events the replication worker buffers ahead of the source (bounded).
const WORKER_BUFFER: usize = 1024;
/// Session settings pinned on the replication connection, so the text form of values
/// (dates, timestamps, floats) is the same whatever the server's defaults.
const SESSION_OPTIONS: &str =
    "-c datestyle=ISO,YMD -c timezone=UTC -c intervalstyle=postgres -c extra_float_digits=3";

/// Reads row changes from a logical replication slot with the pgoutput plugin.
#[derive(Debug)]
pub struct PgSource {
    cfg: PgSourceConfig,
}

impl PgSource {
    /// Checks the configuration; connecting happens in [`Source::run`].
    pub fn new(cfg: PgSourceConfig) -> Result<Self> {
        let bad = |m: String| Err(Error::Config(format!("sources.postgres.{m}")));
        if cfg.url_env.is_empty() {
            return bad("url_env is empty".into());
        }
        // The replication protocol takes both names unquoted (START_REPLICATION SLOT x,
        // publication_names 'x'), and the server folds unquoted names to lower case.
        for (key, name) in [("slot", &cfg.slot), ("publication", &cfg.publication)] {
            let ok = !name.is_empty()
                && name.len() <= 63
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !ok {
                return bad(format!(
                    "{key} {name:?}: use 1 to 63 lower-case letters, digits and underscores"
                ));
            }
        }
        if let Some(t) = cfg
            .tables
            .iter()
            .find(|t| t.split('.').any(str::is_empty) || t.split('.').count() > 2)
        {
            return bad(format!("tables: {t:?} is not `schema.table` or `table`"));
        }
        if cfg.status_interval_ms == 0 {
            return bad("status_interval_ms must be > 0".into());
        }
        Ok(PgSource { cfg })
    }

    fn status_interval(&self) -> Duration {
        Duration::from_millis(self.cfg.status_interval_ms)
    }
}

#[async_trait]
impl Source for PgSource {
    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<()> {
        let url = std::env::var(&self.cfg.url_env).map_err(|_| {
            Error::Config(format!(
                "sources {:?}: environment variable {} (postgres.url_env) is not set; it must \
                 hold the connection string",
                ctx.name, self.cfg.url_env
            ))
        })?;
        // The string holds the password: the error names the variable, never the value.
        let pg: tokio_postgres::Config = url.parse().map_err(|e| {
            Error::Config(format!(
                "sources {:?}: environment variable {}: not a valid connection string ({e})",
                ctx.name, self.cfg.url_env
            ))
        })?;
        let mut frontier = Frontier::default();
        let mut backoff = BACKOFF_MIN;
        loop {
            let mut streamed = false;
            match self.session(&ctx, &pg, &mut frontier, &mut streamed).await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_transient() => {
                    if streamed {
                        backoff = BACKOFF_MIN;
                    }
                    warn!(source = %ctx.name, error = %e, retry_in = ?backoff,
                        "postgres replication interrupted; reconnecting");
                    tokio::select! {
                        _ = ctx.shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl PgSource {
    /// One connection: set up, stream until shutdown (`Ok`) or failure (`Err`).
    async fn session(
        &self,
        ctx: &SourceContext,
        pg: &tokio_postgres::Config,
        frontier: &mut Frontier,
        streamed: &mut bool,
    ) -> Result<()> {
        let setup = async {
            let sql = connect_sql(&ctx.name, pg).await?;
            self.ensure_publication(&ctx.name, &sql).await?;
            let slot_lsn = self.ensure_slot(&ctx.name, &sql).await?;
            // Both are durable: what the slot holds, and what this process confirmed
            // (which the server may not have heard before the connection dropped).
            let start = slot_lsn.max(frontier.confirmed);
            let cfg = replication_config(&ctx.name, pg, &self.cfg, start, self.status_interval())?;
            let mut client = ReplicationClient::connect(cfg)
                .await
                .map_err(|e| repl_err(&ctx.name, "connecting", e))?;
            match tokio::time::timeout(SQL_TIMEOUT, client.wait_started()).await {
                Ok(r) => r.map_err(|e| repl_err(&ctx.name, "starting replication", e))?,
                Err(_) => {
                    return Err(Error::source(
                        &ctx.name,
                        "starting replication: timed out",
                        true,
                    ));
                }
            }
            Ok::<_, Error>((sql, client, start))
        };
        let (sql, client, start) = tokio::select! {
            _ = ctx.shutdown.cancelled() => return Ok(()),
            r = setup => r?,
        };
        *streamed = true;
        info!(source = %ctx.name, slot = %self.cfg.slot, publication = %self.cfg.publication,
            start = %Lsn(start), "postgres replication started");
        let stream = Stream {
            ctx,
            status_interval: self.status_interval(),
            client,
            sql,
            frontier,
            start,
            relations: HashMap::new(),
            txn: None,
            received: start,
            probe: None,
        };
        stream.run().await
    }

    async fn ensure_publication(&self, name: &str, sql: &tokio_postgres::Client) -> Result<()> {
        let publ = &self.cfg.publication;
        let row = timed(
            name,
            "reading pg_publication",
            sql.query_opt(
                "SELECT puballtables FROM pg_publication WHERE pubname = $1",
                &[publ],
            ),
        )
        .await?;
        if let Some(row) = row {
            let all: bool = row.get(0);
            if !all && !self.cfg.tables.is_empty() {
                let published: Vec<String> = timed(
                    name,
                    "reading pg_publication_tables",
                    sql.query(
                        "SELECT schemaname || '.' || tablename FROM pg_publication_tables \
                         WHERE pubname = $1",
                        &[publ],
                    ),
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
                for t in &self.cfg.tables {
                    let full = if t.contains('.') {
                        t.clone()
                    } else {
                        format!("public.{t}")
                    };
                    if !published.contains(&full) {
                        warn!(source = name, publication = %publ, table = %t,
                            "configured table is not in the existing publication");
                    }
                }
            }
            return Ok(());
        }
        if !self.cfg.create {
            return Err(Error::source(
                name,
                format!(
                    "publication {publ:?} does not exist: create it (CREATE PUBLICATION {publ} \
                     FOR TABLE ...) or set postgres.create = true"
                ),
                false,
            ));
        }
        let target = if self.cfg.tables.is_empty() {
            "ALL TABLES".to_owned()
        } else {
            let list: Vec<String> = self.cfg.tables.iter().map(|t| qualified(t)).collect();
            format!("TABLE {}", list.join(", "))
        };
        let stmt = format!("CREATE PUBLICATION {} FOR {target}", quote_ident(publ));
        match timed(name, "creating the publication", sql.batch_execute(&stmt)).await {
            Ok(()) => {
                info!(source = name, publication = %publ, %target, "created publication");
                Ok(())
            }
            // Created concurrently by another instance: fine.
            Err(e) if e.to_string().contains("SQLSTATE 42710") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Checks (or creates) the slot and returns its confirmed position.
    async fn ensure_slot(&self, name: &str, sql: &tokio_postgres::Client) -> Result<u64> {
        let slot = &self.cfg.slot;
        const Q: &str = "SELECT slot_type, plugin::text, database = current_database(), \
                         confirmed_flush_lsn::text, wal_status \
                         FROM pg_replication_slots WHERE slot_name = $1";
        let mut row = timed(
            name,
            "reading pg_replication_slots",
            sql.query_opt(Q, &[slot]),
        )
        .await?;
        if row.is_none() {
            if !self.cfg.create {
                return Err(Error::source(
                    name,
                    format!(
                        "replication slot {slot:?} does not exist: create it (SELECT \
                         pg_create_logical_replication_slot('{slot}', 'pgoutput')) or set \
                         postgres.create = true"
                    ),
                    false,
                ));
            }
            // Its own statement, outside any transaction that has written: the server
            // refuses to create a slot in one.
            let created = timed(
                name,
                "creating the replication slot",
                sql.query_one(
                    "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
                    &[slot],
                ),
            )
            .await;
            match created {
                Ok(r) => {
                    let lsn: String = r.get(0);
                    info!(source = name, %slot, %lsn, "created replication slot");
                }
                Err(e) if e.to_string().contains("SQLSTATE 42710") => {}
                Err(e) => return Err(e),
            }
            row = timed(
                name,
                "reading pg_replication_slots",
                sql.query_opt(Q, &[slot]),
            )
            .await?;
        }
        let row = row.ok_or_else(|| {
            Error::source(name, format!("replication slot {slot:?} vanished"), true)
        })?;
        let kind: Option<String> = row.get(0);
        let plugin: Option<String> = row.get(1);
        let same_db: Option<bool> = row.get(2);
        let confirmed: Option<String> = row.get(3);
        let wal_status: Option<String> = row.get(4);
        let bad = |m: String| {
            Err(Error::source(
                name,
                format!("replication slot {slot:?}: {m}"),
                false,
            ))
        };
        if kind.as_deref() != Some("logical") || plugin.as_deref() != Some("pgoutput") {
            return bad(format!(
                "is a {} slot with plugin {}, not a logical pgoutput slot",
                kind.unwrap_or_default(),
                plugin.unwrap_or_default()
            ));
        }
        if same_db != Some(true) {
            return bad("belongs to another database".into());
        }
        if wal_status.as_deref() == Some("lost") {
            return bad("has lost WAL it needed (wal_status = lost): drop and recreate it".into());
        }
        let Some(confirmed) = confirmed else {
            return bad("has no confirmed_flush_lsn".into());
        };
        Lsn::parse(&confirmed)
            .map(Lsn::as_u64)
            .or_else(|e| bad(format!("confirmed_flush_lsn: {e}")))
    }
}

/// What may be confirmed to the server. See the module's "Progress tracking".
#[derive(Debug, Default)]
struct Frontier {
    /// Highest ack token sent into the pipeline.
    sent: u64,
    /// Highest ack token the pipeline reported durable and indexed.
    acked: u64,
    /// Row-less positions (empty transactions, keepalives): `(s, lsn)` may be confirmed
    /// once `acked >= s`, `s` being `sent` when it was seen. Ascending in both.
    free: VecDeque<(u64, u64)>,
    /// Highest LSN handed to the replication worker (this process's view of the slot).
    confirmed: u64,
}

impl Frontier {
    fn sent(&mut self, lsn: u64) {
        self.sent = self.sent.max(lsn);
    }

    fn acked(&mut self, lsn: u64) {
        // Never past what was sent, whatever the pipeline says.
        self.acked = self.acked.max(lsn.min(self.sent));
    }

    /// A position with nothing to store before it except what is already sent.
    fn free(&mut self, lsn: u64) {
        match self.free.back_mut() {
            Some((s, l)) if *s == self.sent => *l = (*l).max(lsn),
            _ => self.free.push_back((self.sent, lsn)),
        }
    }

    /// The highest position that may be confirmed now, if above what was confirmed.
    fn advance(&mut self) -> Option<u64> {
        let mut target = self.acked;
        while let Some(&(s, l)) = self.free.front() {
            if s > self.acked {
                break;
            }
            target = target.max(l);
            self.free.pop_front();
        }
        (target > self.confirmed).then(|| {
            self.confirmed = target;
            target
        })
    }
}

/// The transaction being received.
#[derive(Debug)]
struct Txn {
    /// LSN of its commit record (Begin's final LSN): with `seq`, the events' positions.
    commit_lsn: u64,
    commit_time_us: Micros,
    /// Row changes seen so far.
    seq: u64,
    /// The latest change, held back so the last one can carry the ack token at Commit.
    held: Option<SourceEvent>,
}

/// Whether to go on.
enum Flow {
    Continue,
    Shutdown,
}

/// What woke the stream loop.
enum Step {
    Shutdown,
    Acks,
    Tick,
    Event(std::result::Result<Option<ReplicationEvent>, PgWireError>),
}

/// One streaming session.
struct Stream<'a> {
    ctx: &'a SourceContext,
    status_interval: Duration,
    client: ReplicationClient,
    /// The SQL connection, for freshness probes.
    sql: tokio_postgres::Client,
    frontier: &'a mut Frontier,
    /// Where this session started (the worker reported it as confirmed already).
    start: u64,
    /// Latest Relation message per relation id (the server sends one before a table's
    /// first change in a session, and again when the table changes).
    relations: HashMap<u32, Bytes>,
    txn: Option<Txn>,
    /// The stream has delivered every transaction that commits before this LSN.
    received: u64,
    /// A freshness probe waiting for `received` to reach its LSN: `(lsn, time)`.
    probe: Option<(u64, Micros)>,
}

impl Stream<'_> {
    async fn run(mut self) -> Result<()> {
        let ctx = self.ctx;
        let mut tick = tokio::time::interval(ctx.heartbeat.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let step = tokio::select! {
                biased;
                _ = ctx.shutdown.cancelled() => Step::Shutdown,
                _ = ctx.acks.notified() => Step::Acks,
                _ = tick.tick() => Step::Tick,
                ev = self.client.recv() => Step::Event(ev),
            };
            let flow = match step {
                Step::Shutdown => Flow::Shutdown,
                Step::Acks => {
                    self.take_acks();
                    Flow::Continue
                }
                Step::Tick => self.on_tick().await?,
                Step::Event(Ok(Some(ev))) => self.on_event(ev).await?,
                Step::Event(Ok(None)) => {
                    return Err(Error::source(&ctx.name, "replication stream ended", true));
                }
                Step::Event(Err(e)) => return Err(repl_err(&ctx.name, "streaming", e)),
            };
            if let Flow::Shutdown = flow {
                return self.finish().await;
            }
        }
    }

    async fn on_event(&mut self, ev: ReplicationEvent) -> Result<Flow> {
        match ev {
            ReplicationEvent::Begin {
                final_lsn,
                commit_time_micros,
                xid,
            } => {
                if let Some(t) = &self.txn {
                    return Err(self.protocol(format!(
                        "Begin of xid {xid} inside the transaction committing at {}",
                        Lsn(t.commit_lsn)
                    )));
                }
                self.txn = Some(Txn {
                    commit_lsn: final_lsn.as_u64(),
                    commit_time_us: commit_time_micros.saturating_add(PG_EPOCH_US),
                    seq: 0,
                    held: None,
                });
                Ok(Flow::Continue)
            }
            ReplicationEvent::XLogData { data, .. } => self.on_data(data).await,
            ReplicationEvent::Commit { lsn, end_lsn, .. } => {
                let Some(mut txn) = self.txn.take() else {
                    return Err(self.protocol(format!("Commit at {lsn} without Begin")));
                };
                if lsn.as_u64() != txn.commit_lsn {
                    warn!(source = %self.ctx.name, begin = %Lsn(txn.commit_lsn), commit = %lsn,
                        "commit LSN differs from the Begin's final LSN");
                }
                let end = end_lsn.as_u64();
                if let Some(mut last) = txn.held.take() {
                    last.ack = Some(AckToken::Lsn(end));
                    self.frontier.sent(end);
                    if let Flow::Shutdown = self.send(SourceMsg::Event(last)).await? {
                        return Ok(Flow::Shutdown);
                    }
                } else {
                    // No published rows: nothing to store, confirmable once what came
                    // before is.
                    self.frontier.free(end);
                    self.confirm();
                }
                self.reached(end).await
            }
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                // Between transactions the walsender has sent everything before wal_end.
                // Inside one it may point past the transaction's own commit: ignore it.
                if self.txn.is_some() || wal_end.is_zero() {
                    return Ok(Flow::Continue);
                }
                self.frontier.free(wal_end.as_u64());
                self.confirm();
                self.reached(wal_end.as_u64()).await
            }
            ReplicationEvent::Message {
                prefix,
                transactional,
                lsn,
                ..
            } => {
                debug!(source = %self.ctx.name, %prefix, transactional, %lsn,
                    "skipping logical decoding message");
                Ok(Flow::Continue)
            }
            ReplicationEvent::StoppedAt { reached } => Err(self.protocol(format!(
                "stream stopped at {reached} although no stop LSN was set"
            ))),
        }
    }

    /// An XLogData payload that is not Begin/Commit/Message: Relation, a row change, or
    /// something without rows.
    async fn on_data(&mut self, data: Bytes) -> Result<Flow> {
        let tag = data.first().copied().unwrap_or(0);
        match tag {
            b'R' => {
                match pgoutput::relation_id(&data) {
                    Some(id) => {
                        self.relations.insert(id, data);
                    }
                    None => warn!(source = %self.ctx.name, "ignoring a truncated Relation message"),
                }
                Ok(Flow::Continue)
            }
            b'I' | b'U' | b'D' => {
                let relation = pgoutput::relation_id(&data)
                    .and_then(|id| self.relations.get(&id))
                    .cloned();
                let Some(txn) = self.txn.as_mut() else {
                    return Err(self.protocol("row change outside a transaction".into()));
                };
                if relation.is_none() {
                    // The consumer quarantines it (no Relation message to read it with).
                    warn!(source = %self.ctx.name, "row change for a relation the stream has not described");
                }
                let ev = SourceEvent {
                    raw: data,
                    key: None,
                    context: relation,
                    position: format!("{:016X}/{:08}", txn.commit_lsn, txn.seq),
                    commit_time_us: Some(txn.commit_time_us),
                    ack: None,
                    checkpoint: Some(Lsn(txn.commit_lsn).to_string()),
                    lane: 0,
                };
                txn.seq += 1;
                match txn.held.replace(ev) {
                    Some(prev) => self.send(SourceMsg::Event(prev)).await,
                    None => Ok(Flow::Continue),
                }
            }
            b'T' | b'Y' | b'O' | b'M' => {
                let what = match tag {
                    b'T' => "Truncate",
                    b'Y' => "Type",
                    b'O' => "Origin",
                    _ => "Message",
                };
                debug!(source = %self.ctx.name, message = what, "skipping pgoutput message without rows");
                Ok(Flow::Continue)
            }
            other => {
                debug!(source = %self.ctx.name, tag = other, "skipping unknown pgoutput message");
                Ok(Flow::Continue)
            }
        }
    }

    /// Sends into the pipeline, waiting for room (backpressure) while still taking acks.
    async fn send(&mut self, msg: SourceMsg) -> Result<Flow> {
        let ctx = self.ctx;
        loop {
            let permit = tokio::select! {
                biased;
                _ = ctx.shutdown.cancelled() => return Ok(Flow::Shutdown),
                _ = ctx.acks.notified() => None,
                p = ctx.tx.reserve() => Some(p),
            };
            match permit {
                None => self.take_acks(),
                Some(Ok(p)) => {
                    p.send(msg);
                    return Ok(Flow::Continue);
                }
                // The pipeline is gone: nothing more can become durable.
                Some(Err(_)) => return Ok(Flow::Shutdown),
            }
        }
    }

    fn take_acks(&mut self) {
        for t in self.ctx.acks.take() {
            match t {
                AckToken::Lsn(l) => self.frontier.acked(l),
                other => warn!(source = %self.ctx.name, ?other, "ignoring a non-LSN ack"),
            }
        }
        self.confirm();
    }

    fn confirm(&mut self) {
        if let Some(lsn) = self.frontier.advance() {
            debug!(source = %self.ctx.name, lsn = %Lsn(lsn), "confirming");
            self.client.update_applied_lsn(Lsn(lsn));
        }
    }

    /// The stream delivered everything committing before `lsn`.
    async fn reached(&mut self, lsn: u64) -> Result<Flow> {
        self.received = self.received.max(lsn);
        match self.probe {
            Some((target, t)) if self.received >= target => {
                self.probe = None;
                self.send(SourceMsg::Heartbeat {
                    watermark_us: t,
                    evidence: Evidence::Heartbeat,
                    lanes: None,
                })
                .await
            }
            _ => Ok(Flow::Continue),
        }
    }

    /// Heartbeat tick: between transactions, probe the server's WAL position.
    async fn on_tick(&mut self) -> Result<Flow> {
        if self.txn.is_some() || self.probe.is_some() {
            return Ok(Flow::Continue);
        }
        // The clock first, then the position: a transaction that committed before `t`
        // has its commit record before the position read after it — but for the moment
        // between a backend taking its commit time and inserting the record, which
        // `PROBE_MARGIN_US` covers.
        let row = timed(
            &self.ctx.name,
            "probing pg_current_wal_insert_lsn()",
            self.sql.query_one(
                "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::int8, \
                        pg_current_wal_insert_lsn()::text, current_setting('wal_block_size')::int4",
                &[],
            ),
        )
        .await?;
        let t: Micros = row.get::<_, Micros>(0) - PROBE_MARGIN_US;
        let lsn: String = row.get(1);
        let block: i32 = row.get(2);
        let lsn = Lsn::parse(&lsn)
            .map_err(|e| {
                Error::source(
                    &self.ctx.name,
                    format!("pg_current_wal_insert_lsn: {e}"),
                    true,
                )
            })?
            .as_u64();
        // At a page boundary the insert position is after the next page's header, where
        // the walsender's position is the end of the last record: the same place.
        let page = u64::try_from(block).unwrap_or(8192).max(1);
        let lsn = match lsn % page {
            24 | 40 => lsn - lsn % page,
            _ => lsn,
        };
        self.probe = Some((lsn, t));
        let received = self.received;
        self.reached(received).await
    }

    /// Confirms what is acked, lets the worker tell the server (bounded), stops.
    async fn finish(mut self) -> Result<()> {
        self.take_acks();
        let target = self.frontier.confirmed;
        if target > self.start {
            let metrics = self.client.metrics();
            let deadline = Instant::now() + (self.status_interval * 2 + Duration::from_secs(1));
            while metrics.last_applied_lsn().as_u64() < target
                && self.client.is_running()
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if metrics.last_applied_lsn().as_u64() < target {
                warn!(source = %self.ctx.name, lsn = %Lsn(target),
                    "stopping before the server heard the last confirmation; it will resend from its own");
            }
        }
        if tokio::time::timeout(Duration::from_secs(5), self.client.shutdown())
            .await
            .is_err()
        {
            warn!(source = %self.ctx.name, "replication worker did not stop in time");
        }
        info!(source = %self.ctx.name, confirmed = %Lsn(target), "postgres replication stopped");
        Ok(())
    }

    fn protocol(&self, m: String) -> Error {
        Error::source(&self.ctx.name, format!("replication protocol: {m}"), false)
    }
}

/// Opens the SQL connection (no TLS: the project has no TLS connector for tokio-postgres).
async fn connect_sql(name: &str, pg: &tokio_postgres::Config) -> Result<tokio_postgres::Client> {
    let mut pg = pg.clone();
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(CONNECT_TIMEOUT);
    }
    if pg.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
        return Err(Error::source(
            name,
            "sslmode=require is not supported by the postgres source's SQL connection",
            false,
        ));
    }
    let (client, conn) = timed(name, "connecting", pg.connect(tokio_postgres::NoTls)).await?;
    let source = name.to_owned();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(source, error = %e, "postgres source SQL connection ended");
        }
    });
    Ok(client)
}

/// The replication connection's settings, from the same connection string.
fn replication_config(
    name: &str,
    pg: &tokio_postgres::Config,
    cfg: &PgSourceConfig,
    start: u64,
    status_interval: Duration,
) -> Result<ReplicationConfig> {
    use tokio_postgres::config::Host;
    let host = match pg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(Host::Unix(p)) => p.display().to_string(),
        None => pg
            .get_hostaddrs()
            .first()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "localhost".into()),
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    let user = pg.get_user().ok_or_else(|| {
        Error::Config(format!(
            "sources {name:?}: the connection string in {} names no user",
            cfg.url_env
        ))
    })?;
    let password = pg
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    let dbname = pg.get_dbname().unwrap_or(user);
    let tls = match pg.get_ssl_mode() {
        tokio_postgres::config::SslMode::Disable => TlsConfig::disabled(),
        tokio_postgres::config::SslMode::Require => TlsConfig::require(),
        _ => TlsConfig {
            mode: SslMode::Prefer,
            ..TlsConfig::default()
        },
    };
    let options = match pg.get_options() {
        Some(o) => format!("{SESSION_OPTIONS} {o}"),
        None => SESSION_OPTIONS.to_owned(),
    };
    let app: String = format!("overseer-{name}").chars().take(63).collect();
    Ok(ReplicationConfig::new(
        host,
        user,
        password,
        dbname,
        cfg.slot.clone(),
        cfg.publication.clone(),
    )
    .with_port(port)
    .with_tls(tls)
    .with_start_lsn(Lsn(start))
    .with_ack_lsn(Lsn(start))
    .with_status_interval(status_interval)
    // Regular status updates also answer the walsender's keepalive pings, which keeps
    // its keepalives (our view of its position while idle) coming.
    .with_wakeup_interval(status_interval)
    .with_buffer_size(WORKER_BUFFER)
    .with_options(options)
    .with_application_name(app))
}

/// Runs a SQL future with a timeout, classifying its error.
async fn timed<T>(
    name: &str,
    what: &str,
    fut: impl Future<Output = std::result::Result<T, tokio_postgres::Error>>,
) -> Result<T> {
    match tokio::time::timeout(SQL_TIMEOUT, fut).await {
        Ok(r) => r.map_err(|e| sql_err(name, what, e)),
        Err(_) => Err(Error::source(name, format!("{what}: timed out"), true)),
    }
}

/// SQLSTATE classes worth retrying: connection exception, insufficient resources,
/// operator intervention (shutdown, restart), transaction rollback, object in use
/// (a slot still held by the previous session's walsender).
fn transient_sqlstate(code: &str) -> bool {
    matches!(code.get(..2), Some("08" | "53" | "57" | "40")) || code == "55006"
}

fn sql_err(name: &str, what: &str, e: tokio_postgres::Error) -> Error {
    match e.as_db_error() {
        Some(db) => Error::source(
            name,
            format!("{what}: {} (SQLSTATE {})", db.message(), db.code().code()),
            transient_sqlstate(db.code().code()),
        ),
        // I/O, closed connection, timeouts: the server or the network.
        None => Error::source(name, format!("{what}: {e}"), true),
    }
}

fn repl_err(name: &str, what: &str, e: PgWireError) -> Error {
    let transient = match &e {
        PgWireError::Io(_) | PgWireError::Task(_) | PgWireError::Internal(_) => true,
        PgWireError::Server(m) => m
            .rsplit_once("(SQLSTATE ")
            .is_some_and(|(_, code)| transient_sqlstate(code.trim_end_matches(')'))),
        _ => false,
    };
    Error::source(name, format!("{what}: {e}"), transient)
}

/// `"name"` with embedded quotes doubled.
fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `schema.table` (or `table`) as quoted identifiers.
fn qualified(t: &str) -> String {
    match t.split_once('.') {
        Some((s, n)) => format!("{}.{}", quote_ident(s), quote_ident(n)),
        None => quote_ident(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> PgSourceConfig {
        PgSourceConfig {
            url_env: "PG_URL".into(),
            slot: "overseer_slot".into(),
            publication: "overseer_pub".into(),
            create: true,
            tables: vec!["payments.transfers".into()],
            status_interval_ms: 1000,
        }
    }

    #[test]
    fn config_is_checked() {
        assert!(PgSource::new(cfg()).is_ok());
        for bad in [
            PgSourceConfig {
                slot: "Bad-Slot".into(),
                ..cfg()
            },
            PgSourceConfig {
                publication: "a,b".into(),
                ..cfg()
            },
            PgSourceConfig {
                tables: vec!["a..b".into()],
                ..cfg()
            },
            PgSourceConfig {
                url_env: String::new(),
                ..cfg()
            },
        ] {
            let e = PgSource::new(bad).unwrap_err().to_string();
            assert!(e.contains("sources.postgres."), "{e}");
        }
    }

    #[test]
    fn frontier_confirms_only_acked_and_rowless_positions() {
        let mut f = Frontier::default();
        // An idle keepalive with nothing in flight: confirmable at once.
        f.free(100);
        assert_eq!(f.advance(), Some(100));
        // Two transactions sent, then an empty one and a keepalive.
        f.sent(200);
        f.sent(300);
        f.free(350);
        f.free(400);
        assert_eq!(f.advance(), None, "nothing acked yet");
        f.acked(200);
        assert_eq!(f.advance(), Some(200), "only the acked transaction");
        f.acked(300);
        assert_eq!(
            f.advance(),
            Some(400),
            "everything before the keepalive is acked"
        );
        assert_eq!(f.advance(), None);
        assert!(f.free.is_empty());
        // Lower acks never move it back.
        f.acked(250);
        assert_eq!(f.advance(), None);
        assert_eq!(f.confirmed, 400);
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(
            qualified("payments.transfers"),
            "\"payments\".\"transfers\""
        );
        assert_eq!(qualified("we\"ird"), "\"we\"\"ird\"");
        assert!(transient_sqlstate("57P01"));
        assert!(transient_sqlstate("55006"));
        assert!(!transient_sqlstate("28P01"));
        assert!(!transient_sqlstate("42P01"));
    }
}
