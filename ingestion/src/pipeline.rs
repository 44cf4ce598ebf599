//! The durable batch pipeline: from a source's events to acknowledged history.
//!
//! ```text
//!  source ─► channel (bounded) ─► batch (N events or T ms)
//!      decode (consumer)   bad ─► dead-letter object        ┐
//!      dedupe (catalog)                                      │ one reserved seq
//!      segment object PUT (create-only)                      ┘
//!      catalog commit: index, masters, refs, progress   ── one transaction
//!      publish notifications ─► mark published
//!      acknowledge upstream (Acks ─► Kafka offsets / LSN / file checkpoint)
//! ```
//!
//! # Progress tracking (when a source may be acknowledged)
//! An ack token is handed back to the source only after the batch that carried it is in the
//! object store *and* committed in the catalog. A crash before that point loses nothing:
//! the source redelivers, and indexing is idempotent on `(source, position)` (duplicates are
//! filtered before the PUT, so a redelivered batch writes nothing new). A crash between the
//! PUT and the commit leaves a *pending* segment, and one between the commit and the
//! publication an *unpublished* one; [`Ingestor::recover`] finishes both before any source
//! starts, so no update is missing from the index and no notification is lost.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use overseer_dal::bus::DynBus;
use overseer_dal::catalog::DynCatalog;
use overseer_dal::keys::{deadletter_key, segment_key};
use overseer_dal::segment::{SegmentBuilder, decode_segment};
use overseer_dal::store::{DynStore, PutOutcome};
use overseer_dal::update::{
    CommitBatch, IndexEntry, Micros, Progress, Reference, SourceCheckpoint, UpdateRecord, now_us,
    rfc3339 as fmt_time,
};

use crate::config::{Config, IngestSettings, SourceConfig};
use crate::deadletter::{self, DeadLetter};
use crate::format::Consumer;
use crate::freshness::{Evidence, Freshness};
use crate::source::{Acks, Source, SourceContext, SourceEvent, SourceMsg};
use crate::telemetry::{BatchCommitted, EventQuarantined, RETRIES};
use crate::{Error, Result};

/// Longest record id or reference value accepted. Ids are arbitrary strings, but catalog
/// indexes have key size limits (PostgreSQL's B-tree takes about 2.7 kB per key, and the
/// reference index holds a value and an id together).
pub const MAX_KEY_BYTES: usize = 1024;

/// The object naming the catalog an object store belongs to: written once by the first
/// catalog that ingests into the store, checked by every start after. Two catalogs on one
/// store would each take the other's segments for their own.
pub const STORE_CLAIM_KEY: &str = "meta/catalog-id";

/// The catalog's own copy of its id ([`MetaStore`](overseer_dal::catalog::MetaStore) key).
pub const STORE_CLAIM_META: &str = "store_claim";

/// A new catalog id: 128 random bits, hex.
fn new_catalog_id() -> String {
    use std::hash::BuildHasher;
    let seed = (now_us(), std::process::id());
    let a = std::hash::RandomState::new().hash_one(seed);
    let b = std::hash::RandomState::new().hash_one((seed, a));
    format!("{a:016x}{b:016x}")
}

/// The three storage seams, opened from config.
#[derive(Clone)]
pub struct Storage {
    pub store: DynStore,
    pub catalog: DynCatalog,
    pub bus: DynBus,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("store", &self.store.describe())
            .field("catalog", &self.catalog.describe())
            .field("bus", &self.bus.describe())
            .finish()
    }
}

impl Storage {
    /// Opens the backends the config names.
    pub async fn open(cfg: &Config) -> Result<Storage> {
        Ok(Storage {
            store: overseer_dal::config::open_store(&cfg.store).await?,
            catalog: overseer_dal::config::open_catalog(&cfg.catalog).await?,
            bus: overseer_dal::config::open_bus(&cfg.bus).await?,
        })
    }
}

/// What recovery found and finished.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Pending segments whose object existed and were indexed.
    pub indexed: usize,
    /// Pending reservations with no object, released.
    pub abandoned: usize,
    /// Committed segments whose notifications were (re)published.
    pub republished: usize,
}

/// Totals of one source's run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceReport {
    pub events: u64,
    pub updates: u64,
    pub duplicates: u64,
    pub quarantined: u64,
    pub segments: u64,
    pub bytes: u64,
}

/// The first pause after a transient storage fault; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(50);
/// The longest pause between two attempts.
const MAX_PAUSE: Duration = Duration::from_secs(5);
/// Attempts left to a transient fault once the process is stopping (a pause of at most
/// [`STOPPING_PAUSE`] each): what is not durable by then is not acknowledged, and the
/// source delivers it again at the next start.
const ATTEMPTS_WHEN_STOPPING: u32 = 3;
const STOPPING_PAUSE: Duration = Duration::from_millis(500);
/// How long one attempt may still take once the process is stopping (a query on a
/// half-open connection would otherwise hold the stop for as long as it hangs).
const STOPPING_ATTEMPT: Duration = Duration::from_secs(3);

/// Storage operations of this process waiting out a transient fault now.
static STALLED_OPS: overseer_dal::stall::Stalls =
    overseer_dal::stall::Stalls::new(crate::telemetry::STALLED);

/// Storage operations of this process waiting out a transient fault now: 0 when
/// ingestion is not held up by storage (readiness).
pub fn stalled_ops() -> i64 {
    STALLED_OPS.now()
}

/// Runs a storage operation until it succeeds or fails definitely: a transient fault (a
/// database restart, a reset connection, an object store's 5xx or timeout) is retried with
/// capped exponential backoff for as long as it lasts — there is no deadline to give up
/// at, only `stop`: once the process is stopping, [`ATTEMPTS_WHEN_STOPPING`] more. While
/// it waits, the operation counts in the `overseer_ingest_stalled` gauge (not ready), and
/// the first fault of a streak and every tenth are logged.
async fn retry<T, F, Fut>(what: &'static str, stop: &CancellationToken, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = overseer_dal::Result<T>>,
{
    let mut pause = FIRST_PAUSE;
    let mut attempt = 0u32;
    let mut when_stopping = 0u32;
    let mut stalled: Option<overseer_dal::stall::Stalled> = None;
    loop {
        let attempt_result = {
            let call = op();
            tokio::pin!(call);
            tokio::select! {
                biased;
                r = &mut call => r,
                () = stop.cancelled() => match tokio::time::timeout(STOPPING_ATTEMPT, &mut call).await {
                    Ok(r) => r,
                    Err(_) => Err(overseer_dal::Error::Store {
                        message: format!("{what}: no answer within {STOPPING_ATTEMPT:?} while stopping"),
                        transient: true,
                        source: None,
                    }),
                },
            }
        };
        match attempt_result {
            Ok(v) => {
                if attempt > 0 {
                    tracing::info!(op = what, attempts = attempt + 1, "storage answered again");
                }
                drop(stalled);
                return Ok(v);
            }
            Err(e) if e.is_transient() => {
                if stop.is_cancelled() {
                    when_stopping += 1;
                    if when_stopping > ATTEMPTS_WHEN_STOPPING {
                        tracing::warn!(op = what, attempt, error = %e,
                            "stopping during a storage outage: what is not durable is not \
                             acknowledged, and is read again at the next start");
                        return Err(e.into());
                    }
                }
                attempt += 1;
                stalled.get_or_insert_with(|| STALLED_OPS.enter());
                metrics::counter!(RETRIES, "op" => what).increment(1);
                if attempt == 1 || attempt.is_multiple_of(10) {
                    tracing::warn!(op = what, attempt, error = %e,
                        "transient storage error; retrying until it passes");
                } else {
                    tracing::debug!(op = what, attempt, error = %e, "transient storage error; retrying");
                }
                if stop.is_cancelled() {
                    tokio::time::sleep(pause.min(STOPPING_PAUSE)).await;
                } else {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
                pause = (pause * 2).min(MAX_PAUSE);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Runs sources into storage.
#[derive(Clone, Debug)]
pub struct Ingestor {
    storage: Storage,
    settings: IngestSettings,
}

impl Ingestor {
    pub fn new(storage: Storage, settings: IngestSettings) -> Self {
        Ingestor { storage, settings }
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Finishes what a crash interrupted: indexes pending segments whose object exists,
    /// releases the others, and publishes committed segments not yet announced.
    /// Transient storage faults are retried until they pass or `stop` ([`retry`]). First,
    /// the store is claimed for this catalog ([`Ingestor::claim_store`]).
    pub async fn recover(&self, stop: &CancellationToken) -> Result<Recovery> {
        self.claim_store(stop).await?;
        let (store, catalog, bus) = (
            &self.storage.store,
            &self.storage.catalog,
            &self.storage.bus,
        );
        let mut rec = Recovery::default();
        for seq in retry("pending", stop, || catalog.pending_segments()).await? {
            let key = segment_key(seq);
            match retry("get", stop, || store.get(&key)).await? {
                Some(bytes) => {
                    let seg = decode_segment(&bytes, &key)?;
                    let batch = batch_from_segment(&seg);
                    retry("commit", stop, || catalog.commit(batch.clone())).await?;
                    rec.indexed += 1;
                }
                None => {
                    retry("abandon", stop, || catalog.abandon_segment(seq)).await?;
                    rec.abandoned += 1;
                }
            }
        }
        for seq in retry("unpublished", stop, || catalog.unpublished_segments()).await? {
            let key = segment_key(seq);
            let bytes = retry("get", stop, || store.get(&key))
                .await?
                .ok_or_else(|| overseer_dal::Error::Corrupt {
                    what: key.clone(),
                    message: "committed segment missing from the object store".into(),
                })?;
            let seg = decode_segment(&bytes, &key)?;
            let notes: Vec<_> = seg
                .records
                .iter()
                .map(|(loc, r)| IndexEntry::from_record(r, *loc).notification())
                .collect();
            retry("publish", stop, || bus.publish(&notes)).await?;
            let seqs = [seq];
            retry("mark_published", stop, || catalog.mark_published(&seqs)).await?;
            rec.republished += 1;
        }
        if rec != Recovery::default() {
            tracing::info!(?rec, "recovered interrupted batches");
        }
        Ok(rec)
    }

    /// Claims the object store for this catalog ([`STORE_CLAIM_KEY`]), or refuses a store
    /// another catalog has claimed: that one's segments would be taken for this one's
    /// (indexed by recovery, counted as conflicts by every batch). The catalog records its
    /// id before the store does (first writer wins, so instances of one catalog starting
    /// together agree), and a crash in between leaves a claim to finish, never two.
    pub async fn claim_store(&self, stop: &CancellationToken) -> Result<()> {
        let (store, catalog) = (&self.storage.store, &self.storage.catalog);
        // Instances of this catalog starting at once agree on the first id written.
        let fresh = new_catalog_id();
        let mine = retry("init_meta", stop, || {
            catalog.init_meta(STORE_CLAIM_META, &fresh)
        })
        .await?;
        let body = Bytes::from(mine.clone().into_bytes());
        let outcome = retry("claim", stop, || {
            store.put_create(STORE_CLAIM_KEY, body.clone())
        })
        .await?;
        if outcome == PutOutcome::Created {
            tracing::info!(store = %store.describe(), catalog = %catalog.describe(), id = %mine,
                "claimed the object store for this catalog");
            return Ok(());
        }
        let there = retry("get", stop, || store.get(STORE_CLAIM_KEY)).await?;
        let theirs = there.map(|b| String::from_utf8_lossy(&b).trim().to_owned());
        if theirs.as_deref() == Some(mine.as_str()) {
            return Ok(());
        }
        Err(Error::Config(format!(
            "the object store {} belongs to another catalog (its {STORE_CLAIM_KEY} is {}; \
             this catalog, {}, is {mine}): two catalogs on one store would take each other's \
             segments. Point this catalog at the store's own catalog, give it a store of its \
             own, or rebuild this catalog from the store with `overseer reindex` (into an \
             empty catalog)",
            store.describe(),
            theirs.as_deref().unwrap_or("unreadable"),
            catalog.describe()
        )))
    }

    /// Runs one source until it ends (or `shutdown`), committing its events in batches.
    /// Returns when the source has stopped and everything it sent is durable.
    pub async fn run_source(
        &self,
        cfg: &SourceConfig,
        consumer: Arc<dyn Consumer>,
        source: Box<dyn Source>,
        shutdown: CancellationToken,
    ) -> Result<SourceReport> {
        let (tx, rx) = mpsc::channel(self.settings.queue_capacity);
        let acks = Acks::new();
        let catalog = &self.storage.catalog;
        let resume = retry("source_states", &shutdown, || catalog.source_states())
            .await?
            .into_iter()
            .find(|s| s.source == cfg.name);
        let freshness = Freshness::new(
            resume.as_ref().map_or(0, |s| s.watermark_us),
            cfg.max_out_of_order_ms,
        );
        // Claims other instances (or this one, before) recorded per lane: the lowest holds
        // the stored watermark.
        let lanes = retry("lane_claims", &shutdown, || catalog.lane_claims(&cfg.name)).await?;
        let lowest = lanes
            .iter()
            .min_by_key(|(_, t)| *t)
            .map(|(l, t)| format!("{l} at {}", fmt_time(*t)));
        tracing::info!(
            source = %cfg.name,
            stored_watermark = %fmt_time(freshness.watermark()),
            stored_lanes = lanes.len(),
            lowest_lane = lowest.as_deref().unwrap_or("-"),
            max_out_of_order_ms = cfg.max_out_of_order_ms,
            caught_up_means_now = cfg.caught_up_means_now,
            "watermark from commit times per lane and upstream heartbeats"
        );
        let idle_evidence = match (&cfg.kafka, &cfg.file) {
            (Some(k), _) => k.heartbeat_topic.is_some(),
            (None, Some(f)) => !f.follow,
            (None, None) => true, // PostgreSQL: the server's clock
        };
        if !idle_evidence && !cfg.caught_up_means_now {
            tracing::warn!(
                source = %cfg.name,
                "nothing moves this source's watermark while it is idle (no heartbeat_topic, \
                 no caught_up_means_now): checks waiting on it then wait until their \
                 max_delay and are recorded stale"
            );
        }
        let ctx = SourceContext {
            name: cfg.name.clone(),
            tx,
            acks: acks.clone(),
            shutdown: shutdown.clone(),
            resume,
            heartbeat: Duration::from_millis(self.settings.heartbeat_ms),
            caught_up_means_now: cfg.caught_up_means_now,
        };
        let source_task = tokio::spawn(source.run(ctx));
        let batcher = Batcher {
            storage: &self.storage,
            source: &cfg.name,
            consumer,
            max_event_bytes: cfg.max_event_bytes.unwrap_or(self.settings.max_event_bytes),
            acks,
            stop: shutdown.clone(),
            min_free: self.settings.min_free_mib.saturating_mul(1 << 20),
        };
        let result = batcher.drain(rx, &self.settings, freshness).await;
        if result.is_err() {
            // Storage failed: stop the source; nothing unacknowledged is lost.
            shutdown.cancel();
        }
        let source_result = source_task
            .await
            .map_err(|e| Error::source(&cfg.name, format!("source task failed: {e}"), false))?;
        let report = result?;
        source_result?;
        Ok(report)
    }
}

/// Rebuilds the commit a segment stands for (recovery and reindex).
pub(crate) fn batch_from_segment(seg: &overseer_dal::segment::Segment) -> CommitBatch {
    CommitBatch {
        segment_seq: Some(seg.footer.seq),
        entries: seg
            .records
            .iter()
            .map(|(loc, r)| IndexEntry::from_record(r, *loc))
            .collect(),
        progress: seg
            .footer
            .checkpoints
            .iter()
            .map(|c| Progress {
                source: c.source.clone(),
                checkpoint: c.checkpoint.clone(),
                watermark_us: c.watermark_us,
                // The newest event's time, as the live commit records it (the watermark
                // stops just before it).
                last_event_us: seg
                    .records
                    .iter()
                    .filter(|(_, r)| r.source == c.source)
                    .map(|(_, r)| r.event_time_us)
                    .max()
                    .unwrap_or(c.watermark_us),
                // Lane claims are evidence kept beside the history, not in it.
                lanes: Vec::new(),
            })
            .collect(),
        quarantined: 0,
        now_us: now_us(),
    }
}

/// How far ahead of this machine's clock an upstream heartbeat may claim before it is
/// taken for a broken clock or message and ignored.
const MAX_CLAIM_AHEAD_US: Micros = 60_000_000;

struct Batcher<'a> {
    storage: &'a Storage,
    source: &'a str,
    consumer: Arc<dyn Consumer>,
    max_event_bytes: usize,
    acks: Arc<Acks>,
    /// The process is stopping: storage faults get a last few attempts ([`retry`]).
    stop: CancellationToken,
    /// `[ingest] min_free_mib`, in bytes ([`Batcher::wait_for_space`]).
    min_free: u64,
}

/// How often a full disk is looked at again ([`Batcher::wait_for_space`]).
const SPACE_POLL: Duration = Duration::from_millis(250);

/// The first local directory of `storage` (a local store's, an embedded catalog's) with
/// less than `min_free` bytes free, as the error naming it; `Ok` when every one has enough
/// (or none is local, or `min_free` is 0). A directory whose free space cannot be read is
/// passed over: the write itself says what is wrong with it.
fn low_space(storage: &Storage, min_free: u64) -> std::result::Result<(), overseer_dal::Error> {
    if min_free == 0 {
        return Ok(());
    }
    let catalog_dir = (storage.catalog.local_file())
        .and_then(|f| f.parent())
        .map(|d| match d.as_os_str().is_empty() {
            true => std::path::Path::new("."),
            false => d,
        });
    for dir in storage.store.local_dir().into_iter().chain(catalog_dir) {
        let Ok(st) = rustix::fs::statvfs(dir) else {
            continue;
        };
        let free = st.f_bavail.saturating_mul(st.f_frsize);
        if free < min_free {
            return Err(overseer_dal::Error::Io {
                path: dir.display().to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    format!(
                        "the disk is nearly full: {:.1} MiB free, below [ingest] min_free_mib = {}",
                        free as f64 / 1048576.0,
                        min_free >> 20
                    ),
                ),
            });
        }
    }
    Ok(())
}

impl Batcher<'_> {
    /// Waits, before a batch is written, until the disks of a local store and an embedded
    /// catalog have `[ingest] min_free_mib` free ([`low_space`]): meanwhile nothing more
    /// is read from the source (its queue fills), the process is not ready, and a line says
    /// which directory is full and again every minute. Once the process is stopping, what
    /// is still queued is written while at least half the floor is free (the floor is a
    /// reserve, and a stop finishes what is in flight); below that the stop ends without
    /// it (unacknowledged, read again at the next start). A disk filled to its last byte
    /// would fail the embedded catalog's commit, which stops the process; a local store's
    /// full disk alone is retried like any transient fault ([`retry`]).
    async fn wait_for_space(&self) -> Result<()> {
        let Err(mut e) = low_space(self.storage, self.min_free) else {
            return Ok(());
        };
        if self.stop.is_cancelled() {
            return self.stopping_space(e);
        }
        let _stalled = STALLED_OPS.enter();
        metrics::counter!(RETRIES, "op" => "disk space").increment(1);
        tracing::warn!(source = self.source, error = %e,
            "ingestion waits until space is freed (not ready); nothing is lost meanwhile");
        let mut said = Instant::now();
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return self.stopping_space(e),
                () = tokio::time::sleep(SPACE_POLL) => {}
            }
            match low_space(self.storage, self.min_free) {
                Ok(()) => {
                    tracing::info!(source = self.source, "disk space freed: ingestion goes on");
                    return Ok(());
                }
                Err(still) => e = still,
            }
            if said.elapsed() >= Duration::from_secs(60) {
                said = Instant::now();
                tracing::warn!(source = self.source, error = %e,
                    "ingestion still waits until space is freed (not ready)");
            }
        }
    }

    /// While stopping below the floor: `Ok` (write) while half of it is free, else `e`.
    fn stopping_space(&self, e: overseer_dal::Error) -> Result<()> {
        match low_space(self.storage, self.min_free / 2) {
            Ok(()) => Ok(()),
            Err(_) => Err(e.into()),
        }
    }

    /// Writes an object under a key of the freshly reserved sequence `seq`. Our own PUT
    /// whose answer was lost (a timeout, then the retry) finds exactly these bytes there and
    /// goes on; other bytes are another writer's: the sequence is released, so recovery
    /// never indexes that object as this catalog's, and the batch fails.
    async fn put_new(&self, seq: u64, key: String, body: Bytes) -> Result<()> {
        let (store, catalog) = (&self.storage.store, &self.storage.catalog);
        let outcome = retry("put", &self.stop, || store.put_create(&key, body.clone())).await?;
        if outcome == PutOutcome::Created {
            return Ok(());
        }
        let there = retry("get", &self.stop, || store.get(&key)).await?;
        if there.as_deref() == Some(&body[..]) {
            return Ok(());
        }
        retry("abandon", &self.stop, || catalog.abandon_segment(seq)).await?;
        Err(Error::Storage(overseer_dal::Error::Corrupt {
            what: key,
            message: "an object under this freshly reserved sequence already exists with other \
                      contents: is another catalog writing to the same object store?"
                .into(),
        }))
    }

    async fn drain(
        &self,
        mut rx: mpsc::Receiver<SourceMsg>,
        s: &IngestSettings,
        mut fresh: Freshness,
    ) -> Result<SourceReport> {
        let mut report = SourceReport::default();
        let max = s.batch_max_events;
        let linger = Duration::from_millis(s.batch_max_ms);
        let mut msgs: Vec<SourceMsg> = Vec::with_capacity(max);
        loop {
            // Wait for the first message of a batch, then fill until full or lingered.
            if rx.recv_many(&mut msgs, max).await == 0 {
                return Ok(report);
            }
            let started = Instant::now();
            let deadline = tokio::time::Instant::now() + linger;
            while msgs.len() < max {
                let room = max - msgs.len();
                match tokio::time::timeout_at(deadline, rx.recv_many(&mut msgs, room)).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            // What the heartbeats and lane declarations among the events say first: the
            // commit below holds every event sent before a heartbeat, so its claim may
            // include the heartbeat's, and the lanes declared now are those the claim
            // must cover. One catalog write carries both.
            let mut events = Vec::with_capacity(msgs.len());
            for m in msgs.drain(..) {
                match m {
                    SourceMsg::Event(e) => events.push(e),
                    SourceMsg::Heartbeat {
                        watermark_us,
                        evidence,
                        lanes,
                    } => {
                        // The local clock is no evidence, but it bounds what a sane
                        // upstream can claim: a heartbeat from the future would hold the
                        // catalog's watermark (which never goes back) past the truth.
                        if watermark_us > now_us() + MAX_CLAIM_AHEAD_US {
                            tracing::warn!(
                                source = self.source,
                                claimed = %fmt_time(watermark_us),
                                evidence = evidence.name(),
                                "a heartbeat claims a time more than a minute ahead of this \
                                 clock: ignored"
                            );
                            continue;
                        }
                        fresh.complete_up_to(watermark_us, evidence, lanes.as_deref());
                    }
                    SourceMsg::Lanes(lanes) => {
                        if !lanes.is_empty() {
                            tracing::info!(
                                source = self.source,
                                lanes = ?lanes.iter().map(|(_, n)| n).collect::<Vec<_>>(),
                                "the source's lanes"
                            );
                        }
                        fresh.assign(lanes);
                    }
                }
            }
            let cat = &self.storage.catalog;
            if !events.is_empty() {
                self.commit_batch(events, started, &mut report, &mut fresh)
                    .await?;
            }
            // What moved the watermark without events (a heartbeat, a lane declared) is
            // recorded on its own.
            if let Some(wm) = fresh.advance() {
                retry("heartbeat", &self.stop, || {
                    cat.heartbeat(self.source, wm, now_us())
                })
                .await?;
            }
            let lanes = fresh.take_lane_claims();
            let retire = if lanes.declared {
                let stored =
                    retry("lane_claims", &self.stop, || cat.lane_claims(self.source)).await?;
                fresh.retired(&stored)
            } else {
                Vec::new()
            };
            if !retire.is_empty() {
                tracing::info!(source = self.source, lanes = ?retire,
                    "retiring the claims of lanes whose topic the source no longer reads");
            }
            if !lanes.claims.is_empty() || !retire.is_empty() {
                retry("claim_lanes", &self.stop, || {
                    cat.claim_lanes(self.source, &lanes.claims, &retire, now_us())
                })
                .await?;
            }
            // Every batch: what holds the watermark is worth seeing most when it does not
            // move.
            self.report_watermark(&fresh);
        }
    }

    /// The watermark recorded and its evidence, per source and lane, in metrics.
    fn report_watermark(&self, fresh: &Freshness) {
        let wm = fresh.reported();
        let (evidence, lane) = fresh.evidence();
        metrics::gauge!(crate::telemetry::WATERMARK, "source" => self.source.to_owned())
            .set(wm as f64 / 1e6);
        for e in Evidence::ALL {
            metrics::gauge!(crate::telemetry::WATERMARK_EVIDENCE,
                "source" => self.source.to_owned(), "evidence" => e.name())
            .set(if e == evidence { 1.0 } else { 0.0 });
        }
        for (name, t) in fresh.lanes() {
            metrics::gauge!(crate::telemetry::LANE_NEWEST,
                "source" => self.source.to_owned(), "lane" => name)
            .set(t as f64 / 1e6);
        }
        tracing::debug!(source = self.source, watermark = %fmt_time(wm),
            evidence = evidence.name(), held_by = lane.as_deref().unwrap_or("-"),
            "watermark");
    }

    async fn commit_batch(
        &self,
        events: Vec<SourceEvent>,
        started: Instant,
        report: &mut SourceReport,
        freshness: &mut Freshness,
    ) -> Result<()> {
        let (catalog, bus) = (&self.storage.catalog, &self.storage.bus);
        let received_us = now_us();
        report.events += events.len() as u64;

        // 1. decode; quarantine what cannot be read
        let mut records: Vec<UpdateRecord> = Vec::with_capacity(events.len());
        let mut dead: Vec<DeadLetter> = Vec::new();
        let mut tokens = Vec::new();
        let mut checkpoint = None;
        let mut future = 0usize;
        for mut ev in events {
            if let Some(t) = ev.ack.take() {
                tokens.push(t);
            }
            if let Some(c) = ev.checkpoint.take() {
                checkpoint = Some(c);
            }
            let verdict = if ev.raw.len() > self.max_event_bytes {
                Err(format!(
                    "oversized event: {} bytes exceeds the limit of {} bytes",
                    ev.raw.len(),
                    self.max_event_bytes
                ))
            } else {
                self.consumer.decode(&ev).map_err(|r| r.0)
            };
            let verdict = verdict.and_then(|d| {
                if !overseer_dal::update::EVENT_TIME_RANGE.contains(&d.event_time_us) {
                    return Err(format!(
                        "event time {} µs since the epoch is outside years 1 to 9999",
                        d.event_time_us
                    ));
                }
                let long = std::iter::once(&d.record_id)
                    .chain(d.refs.iter().map(|(_, v)| v))
                    .find(|v| v.len() > MAX_KEY_BYTES);
                match long {
                    Some(v) => Err(format!(
                        "record id or reference value of {} bytes exceeds the limit of {MAX_KEY_BYTES} bytes",
                        v.len()
                    )),
                    None => Ok(d),
                }
            });
            if let Ok(d) = &verdict {
                // A commit time from the future (a broken clock upstream) would hold the
                // catalog's watermark, which never goes back, past the truth: it counts
                // only up to what a sane upstream could claim.
                let t = d.event_time_us.min(received_us + MAX_CLAIM_AHEAD_US);
                if t < d.event_time_us {
                    future += 1;
                }
                freshness.observe(ev.lane, t);
            }
            match verdict {
                Ok(d) => records.push(UpdateRecord {
                    source: self.source.to_owned(),
                    position: d.event_id.unwrap_or(ev.position),
                    model: d.model,
                    record_id: d.record_id,
                    op: d.op as i32,
                    event_time_us: d.event_time_us,
                    format: self.consumer.format().name().to_owned(),
                    refs: d
                        .refs
                        .into_iter()
                        .map(|(name, value)| Reference { name, value })
                        .collect(),
                    raw: ev.raw,
                    key: ev.key.unwrap_or_default(),
                    context: ev.context.unwrap_or_default(),
                    ingest_time_us: received_us,
                }),
                Err(reason) => {
                    EventQuarantined {
                        source: self.source,
                        position: &ev.position,
                        reason: &reason,
                    }
                    .emit();
                    dead.push(DeadLetter::new(
                        self.source,
                        &ev.position,
                        reason,
                        &ev.raw,
                        ev.key.as_deref(),
                        received_us,
                    ));
                }
            }
        }

        if future > 0 {
            tracing::warn!(
                source = self.source,
                events = future,
                "events committed more than a minute ahead of this clock: the watermark \
                 counts them only up to a minute ahead"
            );
        }

        // 2. drop what is already indexed (redelivery), within the batch and in the catalog
        let before = records.len();
        let mut seen = HashSet::with_capacity(records.len());
        records.retain(|r| seen.insert(r.position.clone()));
        if !records.is_empty() {
            let ids: Vec<(&str, &str)> = records
                .iter()
                .map(|r| (self.source, r.position.as_str()))
                .collect();
            let fresh = retry("filter", &self.stop, || catalog.filter_new(&ids)).await?;
            let mut it = fresh.into_iter();
            records.retain(|_| it.next().unwrap_or(true));
        }
        let duplicates = before - records.len();

        // The batch's events moved the lanes' evidence (`crate::freshness`): each lane
        // claims strictly before its newest commit time, not at it, since more changes of
        // that very time (the rest of one transaction, split from this batch by its size
        // or linger) may still be on their way; and the source is the minimum over its
        // lanes. Claiming a batch's newest time let a wallet be checked against a
        // transaction's ledger entry without the same transaction's balance update (a
        // false alarm, BENCHMARKS.md); claiming it across partitions let a lagging
        // partition's entries miss their transfer's check.
        let newest_us = records.iter().map(|r| r.event_time_us).max().unwrap_or(0);
        let watermark_us = freshness.watermark().max(0);
        let progress: Vec<Progress> = checkpoint
            .map(|c| Progress {
                source: self.source.to_owned(),
                checkpoint: c,
                watermark_us,
                last_event_us: newest_us,
                // Moved lanes ride with the commit; a change of the declared lanes is
                // recorded on its own after it.
                lanes: freshness.take_moved_lane_claims(),
            })
            .into_iter()
            .collect();

        // 3. one reserved sequence names this batch's objects
        let mut bytes_written = 0usize;
        let mut batch = CommitBatch {
            segment_seq: None,
            entries: Vec::with_capacity(records.len()),
            progress,
            quarantined: dead.len() as u64,
            now_us: received_us,
        };
        if !records.is_empty() || !dead.is_empty() {
            self.wait_for_space().await?;
            let seq = retry("reserve", &self.stop, || catalog.reserve_segment()).await?;
            batch.segment_seq = Some(seq);
            if !dead.is_empty() {
                let body = deadletter::encode(&dead);
                self.put_new(seq, deadletter_key(seq), body).await?;
            }
            if !records.is_empty() {
                let size: usize = records.iter().map(|r| r.raw.len() + 128).sum();
                let mut seg = SegmentBuilder::new(seq, size);
                for r in &records {
                    let loc = seg.push(r);
                    batch.entries.push(IndexEntry::from_record(r, loc));
                }
                let footer = batch
                    .progress
                    .iter()
                    .map(|p| SourceCheckpoint {
                        source: p.source.clone(),
                        checkpoint: p.checkpoint.clone(),
                        watermark_us: p.watermark_us,
                    })
                    .collect();
                let body: Bytes = seg.finish(footer);
                bytes_written = body.len();
                self.put_new(seq, segment_key(seq), body).await?;
            }
        }

        // 4. index atomically, 5. announce, 6. acknowledge
        let seq = batch.segment_seq;
        let fresh = retry("commit", &self.stop, || catalog.commit(batch.clone())).await?;
        let notes: Vec<_> = batch
            .entries
            .iter()
            .zip(&fresh)
            .filter(|(_, f)| **f)
            .map(|(e, _)| e.notification())
            .collect();
        if let (Some(seq), false) = (seq, batch.entries.is_empty()) {
            if !notes.is_empty() {
                retry("publish", &self.stop, || bus.publish(&notes)).await?;
            }
            let seqs = [seq];
            retry("mark_published", &self.stop, || {
                catalog.mark_published(&seqs)
            })
            .await?;
        }
        self.acks.ack(tokens);
        if !batch.progress.is_empty() {
            freshness.recorded(watermark_us);
        }

        let updates = notes.len();
        report.updates += updates as u64;
        report.duplicates += (duplicates + batch.entries.len() - updates) as u64;
        report.quarantined += dead.len() as u64;
        if updates > 0 {
            report.segments += 1;
            report.bytes += bytes_written as u64;
        }
        BatchCommitted {
            source: self.source,
            segment_seq: seq,
            updates,
            duplicates,
            quarantined: dead.len(),
            bytes: bytes_written,
            elapsed: started.elapsed(),
            watermark_us: watermark_us.max(freshness.reported()),
        }
        .emit();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blip() -> overseer_dal::Error {
        overseer_dal::Error::Catalog {
            message: "connection closed".into(),
            transient: true,
            source: None,
        }
    }

    /// A database restart of any length is waited out: there is no attempt limit (ten
    /// attempts, about 21 s, stopped `overseer run` before). Stopping ends the wait.
    #[tokio::test(start_paused = true)]
    async fn transient_faults_are_retried_until_they_pass_or_the_process_stops() {
        let stop = CancellationToken::new();
        let mut calls = 0u32;
        let started = tokio::time::Instant::now();
        let got = retry("commit", &stop, || {
            calls += 1;
            let fail = calls <= 200;
            async move { if fail { Err(blip()) } else { Ok(calls) } }
        })
        .await;
        assert!(matches!(got, Ok(201)), "{got:?}");
        assert!(
            started.elapsed() > Duration::from_secs(15 * 60),
            "an outage of minutes"
        );
        assert_eq!(STALLED_OPS.now(), 0);

        // (One test: the stalled count is the process's, shared by parallel tests.)
        // Stopping ends the wait after a few attempts; definite errors end it at once.
        let stop = CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut tx = Some(tx);
        let mut calls = 0u32;
        let waiting = tokio::spawn({
            let stop = stop.clone();
            async move {
                let got: Result<()> = retry("put", &stop, || {
                    calls += 1;
                    if calls == 5 {
                        tx.take().map(|tx| tx.send(()));
                    }
                    async { Err(blip()) }
                })
                .await;
                (got, calls)
            }
        });
        rx.await.unwrap();
        assert_eq!(STALLED_OPS.now(), 1);
        let asked = tokio::time::Instant::now();
        stop.cancel();
        let (got, calls) = waiting.await.unwrap();
        assert!(got.is_err_and(|e| e.is_transient()));
        assert_eq!(
            calls,
            5 + 1 + ATTEMPTS_WHEN_STOPPING,
            "a few more after the stop"
        );
        assert!(asked.elapsed() <= STOPPING_PAUSE * ATTEMPTS_WHEN_STOPPING);
        assert_eq!(STALLED_OPS.now(), 0);

        let mut calls = 0;
        let got: Result<()> = retry("get", &CancellationToken::new(), || {
            calls += 1;
            async {
                Err(overseer_dal::Error::Corrupt {
                    what: "segments/1".into(),
                    message: "bad footer".into(),
                })
            }
        })
        .await;
        assert!(got.is_err() && calls == 1);
    }
}
