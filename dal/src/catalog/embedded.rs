//! The embedded catalog: one redb file, no server. The default for `overseer demo` and
//! single-machine use.
//!
//! Every [`SegmentLedger::commit`](crate::catalog::SegmentLedger::commit) is one redb write transaction (group commit for the
//! whole batch; redb's two-phase commit, two fsyncs).
//!
//! One process writes the file ([`EmbeddedCatalog::open`]); any number of others read it
//! at the same time ([`EmbeddedCatalog::open_reader`]: `overseer history`, `view` and
//! `replay` while `overseer run` is up), each on one snapshot of the writer's commits as
//! of its opening. Both use redb's `SingleWriter` mode (byte-range locks, every commit
//! durable and two-phase, so a reader never sees a half-written one).
//!
//! Tables, keyed so that each query is one ordered range scan:
//!
//! | table | key | value |
//! |---|---|---|
//! | `updates` | (source, position) | the index entry |
//! | `record_idx` | (model, record id, event time, source, position) | () |
//! | `time_idx` | (event time, source, position) | () |
//! | `masters` | (model, record id) | master document |
//! | `refs` | (model, ref name, ref value, record id) | () |
//! | `sources` | source | progress |
//! | `segments` | seq | state (pending / committed / published) |
//! | `meta` | name | u64 (the segment sequence) |
//! | `incidents` | (check, subject) | incident (runner escalation state) |
//! | `incidents_unsettled` | (check, subject) | () while `Incident::unsettled` |
//! | `incidents_failing` | (check, subject) | () while `failing` |
//! | `meta_kv` | key | value (runner cursors) |
//! | `snapshots` | (model, record id, event time, source, position) | snapshot (n, fold, body) |
//! | `late` | (model, record id) | its update count after its last update that came late |
//!
//! Composite keys are redb tuples, which length-prefix every component but the last, so
//! they are injective (`("a\0b", "c")` and `("a", "b\0c")` are different keys) and order
//! component-wise, like Rust tuples of `str`. The two incident index tables keep the
//! outbox and the failing list proportional to their size, not to every (check, subject)
//! ever evaluated; they are written in the same transaction as the incident.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{
    Catalog, IncidentStore, MetaStore, SegmentLedger, SnapshotStore, SourceProgress, UpdateIndex,
};
use crate::update::{
    CatalogDump, CommitBatch, FromSnapshot, Incident, IndexEntry, MasterDoc, Micros, RefUpdate,
    RefUpdatesAfter, Snapshot, SnapshotWrite, SourceState, UpdateLoc, UpdatesAfter, op_from_u8,
};
use crate::{Error, Result};

// Key components are byte strings, not `&str`: redb re-validates UTF-8 on every `&str`
// key comparison, which profiling showed as the largest single cost of a commit. Bytes
// order exactly like `str`, and everything stored here came in as valid UTF-8.
type Str = &'static [u8];
const UPDATES: TableDefinition<(Str, Str), &[u8]> = TableDefinition::new("updates");
const RECORD_IDX: TableDefinition<(Str, Str, i64, Str, Str), ()> =
    TableDefinition::new("record_idx");
const TIME_IDX: TableDefinition<(i64, Str, Str), ()> = TableDefinition::new("time_idx");
const MASTERS: TableDefinition<(Str, Str), &[u8]> = TableDefinition::new("masters");
const REFS: TableDefinition<(Str, Str, Str, Str), ()> = TableDefinition::new("refs");
/// (model, ref name, ref value, event time, source, position) → record id: every update of
/// every record that ever referenced the value (see [`UpdateIndex::ref_updates_after`]).
const REF_UPDATES: TableDefinition<(Str, Str, Str, i64, Str, Str), Str> =
    TableDefinition::new("ref_updates");
/// (model, ref name, ref value) → its number of `REF_UPDATES` rows.
const REF_COUNTS: TableDefinition<(Str, Str, Str), u64> = TableDefinition::new("ref_counts");
/// The (model, ref name) pairs whose `REF_UPDATES` rows are kept
/// ([`UpdateIndex::keep_ref_updates`]); others are derived on each read.
const REF_KEPT: TableDefinition<(Str, Str), ()> = TableDefinition::new("ref_kept");
const SOURCES: TableDefinition<Str, &[u8]> = TableDefinition::new("sources");
/// (source, lane) → the lane's claim ([`SourceProgress::claim_lanes`]).
const LANES: TableDefinition<(Str, Str), i64> = TableDefinition::new("lanes");
const SEGMENTS: TableDefinition<u64, u8> = TableDefinition::new("segments");
const META: TableDefinition<Str, u64> = TableDefinition::new("meta");
const INCIDENTS: TableDefinition<(Str, Str), &[u8]> = TableDefinition::new("incidents");
const INCIDENTS_UNSETTLED: TableDefinition<(Str, Str), ()> =
    TableDefinition::new("incidents_unsettled");
const INCIDENTS_FAILING: TableDefinition<(Str, Str), ()> =
    TableDefinition::new("incidents_failing");
const META_KV: TableDefinition<Str, &[u8]> = TableDefinition::new("meta_kv");
/// (model, record id, event time, source, position) of its last update → the snapshot's
/// n, fold and body ([`SnapshotStore`]).
const SNAPSHOTS: TableDefinition<(Str, Str, i64, Str, Str), &[u8]> =
    TableDefinition::new("snapshots");
/// (model, record id) → the record's update count right after its last update that may
/// have arrived late (a commit time at or before its newest one then); no row: none did.
/// Lets a read trust a count seen before instead of counting the rest of the history.
const LATE: TableDefinition<(Str, Str), u64> = TableDefinition::new("late");

const NEXT_SEQ: &[u8] = b"next_segment_seq";
const PENDING: u8 = 1;
const COMMITTED: u8 = 2;
const PUBLISHED: u8 = 3;

/// Catalog in a local redb file.
#[derive(Clone)]
pub struct EmbeddedCatalog {
    /// The read snapshot the short reads share until the next write ([`Snap`]). First:
    /// dropped before the database.
    snap: Arc<SharedSnap>,
    db: Arc<Db>,
    path: String,
    /// Bumped after every commit, abandoned segment and heartbeat: see
    /// [`SegmentLedger::commit_signal`].
    commits: Arc<tokio::sync::watch::Sender<u64>>,
    /// Hashes of the (model, record id)s that have or had snapshots: a read of any other
    /// record (most records are short and never get one) skips the snapshot lookup. Exact
    /// in the writer, through which every snapshot is written; a reader's is the set as of
    /// its opening (one it misses costs a longer fold, never a different answer); a hash
    /// collision only costs a lookup.
    snapshotted: Arc<std::sync::RwLock<std::collections::HashSet<u64>>>,
    /// Blocking-pool tasks of this catalog at once ([`BLOCKING_TASKS`]).
    tasks: Arc<tokio::sync::Semaphore>,
}

/// A read transaction and its tables, opened once and shared by the short reads between
/// two writes: beginning a transaction and opening its tables cost more than a point read
/// from redb's cache (~8% of the runner's CPU when each read did both).
///
/// Freshness: every commit through this handle ([`Writing::commit`]) counts itself in
/// `committing` before redb publishes it, and when it returns bumps `generation` and drops
/// the shared snapshot, then stops counting. A read shares a snapshot only if no commit was
/// under way when it started, and only one begun after the current generation was
/// reached; otherwise it begins its own. So a read sees every commit completed (or seen by any earlier read)
/// before it started, as its own transaction would: reads never go back in time. One
/// process writes the file (redb locks it), so no write goes around this; a reader in
/// another process reads one fixed snapshot instead ([`Db::Reader`]).
/// Dropping the snapshot on a write keeps a reader-less snapshot from pinning old pages
/// for longer than until the next commit.
#[derive(Default)]
struct SharedSnap {
    generation: std::sync::atomic::AtomicU64,
    /// Commits under way ([`Writing::commit`]): redb publishes a commit inside
    /// `commit()`, before the generation moves, so meanwhile reads take a fresh snapshot of
    /// their own and none is shared (else a read could see less than an earlier one saw).
    committing: std::sync::atomic::AtomicUsize,
    current: std::sync::RwLock<Option<Arc<Snap>>>,
}

/// What a write closure of [`EmbeddedCatalog::blocking`] is given: the database, and the
/// commit that keeps the shared read snapshot honest.
struct Writing<'a> {
    db: &'a Db,
    snap: &'a SharedSnap,
}

impl std::ops::Deref for Writing<'_> {
    type Target = Db;

    fn deref(&self) -> &Db {
        self.db
    }
}

impl Writing<'_> {
    /// Commits `tx`; from before it is published until the generation has moved, reads
    /// share no snapshot.
    fn commit(&self, tx: redb::WriteTransaction) -> Result<()> {
        use std::sync::atomic::Ordering;
        struct Done<'a>(&'a SharedSnap);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                let old = self.0.written();
                self.0.committing.fetch_sub(1, Ordering::AcqRel);
                drop(old);
            }
        }
        self.snap.committing.fetch_add(1, Ordering::AcqRel);
        let _done = Done(self.snap);
        #[allow(clippy::disallowed_methods)] // The one place that commits.
        tx.commit().map_err(db_err)
    }
}

/// Defines [`Snap`] with one lazily opened table per listed table definition.
macro_rules! snap_tables {
    ($($field:ident: $def:ident: $k:ty => $v:ty),* $(,)?) => {
        /// One read transaction with the tables the short reads use, each opened on first
        /// use.
        struct Snap {
            generation: u64,
            tx: redb::ReadTransaction,
            $($field: std::sync::OnceLock<redb::ReadOnlyTable<$k, $v>>,)*
        }

        impl Snap {
            fn new(generation: u64, tx: redb::ReadTransaction) -> Self {
                Snap { generation, tx, $($field: std::sync::OnceLock::new(),)* }
            }

            $(
                fn $field(&self) -> Result<&redb::ReadOnlyTable<$k, $v>> {
                    if let Some(t) = self.$field.get() {
                        return Ok(t);
                    }
                    let t = self.tx.open_table($def).map_err(db_err)?;
                    Ok(self.$field.get_or_init(|| t))
                }
            )*
        }
    };
}

snap_tables! {
    updates: UPDATES: (Str, Str) => &'static [u8],
    record_idx: RECORD_IDX: (Str, Str, i64, Str, Str) => (),
    masters: MASTERS: (Str, Str) => &'static [u8],
    refs: REFS: (Str, Str, Str, Str) => (),
    ref_updates: REF_UPDATES: (Str, Str, Str, i64, Str, Str) => Str,
    ref_counts: REF_COUNTS: (Str, Str, Str) => u64,
    ref_kept: REF_KEPT: (Str, Str) => (),
    incidents: INCIDENTS: (Str, Str) => &'static [u8],
    snapshots: SNAPSHOTS: (Str, Str, i64, Str, Str) => &'static [u8],
    late: LATE: (Str, Str) => u64,
    sources: SOURCES: Str => &'static [u8],
    lanes: LANES: (Str, Str) => i64,
    meta_kv: META_KV: Str => &'static [u8],
}

impl SharedSnap {
    /// A snapshot at least as new as every commit completed so far, or seen by an earlier
    /// read.
    fn get(&self, db: &Db) -> Result<Arc<Snap>> {
        use std::sync::atomic::Ordering;
        if let Db::Reader { fixed, .. } = db {
            return Ok(fixed.clone());
        }
        // While a commit is under way it may be published and not yet in `generation`:
        // the read begins a snapshot of its own (`offer` does not share it either).
        let quiet = self.committing.load(Ordering::Acquire) == 0;
        let generation = self.generation.load(Ordering::Acquire);
        if quiet
            && let Some(s) = self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .as_ref()
                .filter(|s| s.generation == generation)
        {
            return Ok(s.clone());
        }
        // Begun after `generation` was read: it sees every commit up to it.
        let Db::Writer(db) = db else {
            unreachable!("a reader returned its fixed snapshot above")
        };
        let tx = db.begin_read().map_err(db_err)?;
        let snap = Arc::new(Snap::new(generation, tx));
        self.offer(&snap);
        Ok(snap)
    }

    /// Shares `snap` with later reads unless a commit came after the generation it was
    /// begun at (a snapshot begun before a commit and offered after it is not kept), nor
    /// while a commit is under way.
    fn offer(&self, snap: &Arc<Snap>) {
        use std::sync::atomic::Ordering;
        let mut current = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.committing.load(Ordering::Acquire) == 0
            && self.generation.load(Ordering::Acquire) == snap.generation
            && current
                .as_ref()
                .is_none_or(|s| s.generation < snap.generation)
        {
            *current = Some(snap.clone());
        }
    }

    /// After a commit: later reads begin a new snapshot. Returns the one that was shared,
    /// for the caller to drop outside the lock (the last reference ends a redb transaction,
    /// which takes redb's own locks).
    fn written(&self) -> Option<Arc<Snap>> {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

/// The catalog's work on the blocking pool at once. Writes take redb's one write
/// transaction in turn anyway: more of them at once would each hold a thread (and its
/// allocator heap) to wait on a lock, where waiting for a permit holds nothing.
const BLOCKING_TASKS: usize = 4;

/// `META` key: the number of indexed updates when the `LATE` table was last known to
/// cover them all (written by every commit of a build that keeps it).
const LATE_COVERS: &[u8] = b"late_covers";

/// Records, in a write transaction, that `LATE` covers every update indexed so far.
fn mark_late_covered(tx: &redb::WriteTransaction) -> Result<()> {
    let indexed = tx
        .open_table(UPDATES)
        .map_err(db_err)?
        .len()
        .map_err(db_err)?;
    tx.open_table(META)
        .map_err(db_err)?
        .insert(LATE_COVERS, indexed)
        .map_err(db_err)?;
    Ok(())
}

/// The key of [`EmbeddedCatalog::snapshotted`].
fn record_hash(model: &[u8], record_id: &[u8]) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // Fixed keys: the set lives in one process, but there is no reason to vary.
    let mut h =
        std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .build_hasher();
    h.write(model);
    h.write_u8(0xff);
    h.write(record_id);
    h.finish()
}

impl std::fmt::Debug for EmbeddedCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EmbeddedCatalog({})", self.path)
    }
}

fn db_err(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::catalog_from(e)
}

/// The redb file as this process holds it: its one writer, or a reader beside the writer
/// (another process's `overseer run`, say). Both open it in redb's `SingleWriter` mode,
/// which locks byte ranges instead of the whole file.
enum Db {
    Writer(Database),
    /// Every read of a reader, short or long, is on one read transaction begun at its
    /// opening (`fixed`): one consistent snapshot of the writer's durable commits.
    Reader {
        fixed: Arc<Snap>,
        path: String,
        /// Kept open while its snapshot is read (dropped after it).
        _db: redb::ReadOnlyDatabase,
    },
}

/// A read transaction: a writer's own, or a reader's one snapshot.
enum ReadTx {
    Own(redb::ReadTransaction),
    Fixed(Arc<Snap>),
}

impl std::ops::Deref for ReadTx {
    type Target = redb::ReadTransaction;

    fn deref(&self) -> &redb::ReadTransaction {
        match self {
            ReadTx::Own(tx) => tx,
            ReadTx::Fixed(snap) => &snap.tx,
        }
    }
}

impl Db {
    fn begin_read(&self) -> std::result::Result<ReadTx, redb::TransactionError> {
        match self {
            Db::Writer(db) => db.begin_read().map(ReadTx::Own),
            Db::Reader { fixed, .. } => Ok(ReadTx::Fixed(fixed.clone())),
        }
    }

    /// A write transaction; a reader's is an error naming the file.
    fn begin_write(&self) -> Result<redb::WriteTransaction> {
        match self {
            Db::Writer(db) => db.begin_write().map_err(db_err),
            Db::Reader { path, .. } => Err(Error::catalog(format!(
                "embedded catalog {path} is open read-only (beside the process that writes \
                 it): it cannot be written here"
            ))),
        }
    }

    fn is_reader(&self) -> bool {
        matches!(self, Db::Reader { .. })
    }
}

/// A stored key component back as text.
fn text(b: &[u8]) -> Result<String> {
    String::from_utf8(b.to_vec())
        .map_err(|_| Error::corrupt("embedded catalog", "key is not utf-8"))
}

const EMPTY: &[u8] = b"";
/// Greater than every stored text (no UTF-8 text holds the byte 0xFF): an upper bound.
const MAX_TEXT: &[u8] = b"\xff";

/// redb's page cache. Its default (1 GiB) would hold most of a large catalog in the
/// process; past this, pages come from the OS page cache at the cost of a read call.
const CACHE_BYTES: usize = 256 << 20;

/// A reader's page cache: as large as the writer's (it fills only with what the command
/// reads; a replay reads much of the catalog).
const READER_CACHE_BYTES: usize = CACHE_BYTES;

/// redb's builder in the mode every process opening a catalog uses: one writer, and any
/// number of read-only processes beside it.
fn builder(cache: usize) -> redb::Builder {
    let mut b = redb::Builder::new();
    b.set_cache_size(cache)
        .set_concurrency_mode(redb::ConcurrencyMode::SingleWriter);
    b
}

/// The file a reader repairing a catalog (`open_reader`) holds while it does, one per
/// reader (`catalog.redb.repairing.PID.N`): a writer starting meanwhile waits for it, for
/// up to [`REPAIR_WAIT`].
fn repair_marker(path: &Path) -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut name = path.as_os_str().to_owned();
    name.push(format!(
        ".repairing.{}.{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    name.into()
}

/// How long a starting writer waits for a reader's repair ([`repair_marker`]).
const REPAIR_WAIT: Duration = Duration::from_secs(60);

/// How long a starting writer tries again on a held file whatever the markers say: a
/// repair that ended just before it looked.
const REPAIR_GRACE: Duration = Duration::from_secs(1);

/// The ages of the markers of readers repairing the file at `path` now (none: no reader
/// says it is).
fn repair_markers(path: &Path) -> Vec<Duration> {
    let (Some(dir), Some(file)) = (path.parent(), path.file_name()) else {
        return Vec::new();
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let mut prefix = file.to_owned();
    prefix.push(".repairing.");
    let prefix = prefix.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .filter_map(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|t| t.elapsed().unwrap_or_default())
        .collect()
}

impl EmbeddedCatalog {
    /// Opens or creates the catalog file at `path` (and its parent directory), as its one
    /// writer. Fails, naming the file, while another process writes it (after waiting, up
    /// to a minute, for a reader repairing it after a crash).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent.display(), e))?;
        }
        let started = std::time::Instant::now();
        // Whether a reader said it was repairing the file when this writer first found it
        // held past the grace (a marker younger than the wait: one left by a reader killed
        // while repairing is older), judged once; then it waits while markers are there
        // (and a grace after the last is gone: the file is closed before its marker goes),
        // for up to the wait.
        let mut waiting: Option<bool> = None;
        let mut gone_since: Option<std::time::Instant> = None;
        let db = loop {
            match builder(CACHE_BYTES).create(path) {
                Ok(db) => break db,
                Err(redb::DatabaseError::DatabaseAlreadyOpen) => {}
                Err(e) => {
                    return Err(Error::catalog(format!(
                        "cannot open embedded catalog {}: {e}",
                        path.display()
                    )));
                }
            }
            // Held: a short grace covers a repair that ended just before this look.
            let elapsed = started.elapsed();
            if elapsed >= REPAIR_GRACE {
                let markers = repair_markers(path);
                let repair = *waiting.get_or_insert_with(|| {
                    let fresh = markers.iter().any(|age| *age < REPAIR_WAIT);
                    if fresh {
                        tracing::info!(
                            "{}: a reader is repairing it after a crash; waiting (up to {} s)",
                            path.display(),
                            REPAIR_WAIT.as_secs()
                        );
                    }
                    fresh
                });
                if markers.is_empty() {
                    gone_since.get_or_insert_with(std::time::Instant::now);
                } else {
                    gone_since = None;
                }
                let after_repair = gone_since.is_some_and(|t| t.elapsed() >= REPAIR_GRACE);
                if repair && elapsed >= REPAIR_WAIT && !after_repair {
                    return Err(Error::catalog(format!(
                        "embedded catalog {}: a reader was still repairing it after a crash \
                         {} s later; try again",
                        path.display(),
                        REPAIR_WAIT.as_secs()
                    )));
                }
                if !repair || after_repair {
                    return Err(Error::catalog(format!(
                        "embedded catalog {} is written by another process (one writer at a \
                         time; `history`, `view` and `replay` without `--escalate` read beside \
                         it)",
                        path.display()
                    )));
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let db = Db::Writer(db);
        // Create every table once so readers never meet a missing one.
        let tx = db.begin_write()?;
        {
            tx.open_table(UPDATES).map_err(db_err)?;
            tx.open_table(RECORD_IDX).map_err(db_err)?;
            tx.open_table(TIME_IDX).map_err(db_err)?;
            tx.open_table(MASTERS).map_err(db_err)?;
            tx.open_table(REFS).map_err(db_err)?;
            tx.open_table(SOURCES).map_err(db_err)?;
            tx.open_table(LANES).map_err(db_err)?;
            tx.open_table(SEGMENTS).map_err(db_err)?;
            tx.open_table(META).map_err(db_err)?;
            tx.open_table(INCIDENTS).map_err(db_err)?;
            tx.open_table(INCIDENTS_UNSETTLED).map_err(db_err)?;
            tx.open_table(INCIDENTS_FAILING).map_err(db_err)?;
            tx.open_table(META_KV).map_err(db_err)?;
            tx.open_table(REF_UPDATES).map_err(db_err)?;
            tx.open_table(REF_COUNTS).map_err(db_err)?;
            tx.open_table(REF_KEPT).map_err(db_err)?;
            tx.open_table(SNAPSHOTS).map_err(db_err)?;
            tx.open_table(LATE).map_err(db_err)?;
            // Updates indexed by a build that did not keep `LATE` (an older one, after a
            // downgrade) may have made snapshots stale without saying so: they are derived
            // data, drop them.
            let covered = tx
                .open_table(META)
                .map_err(db_err)?
                .get(LATE_COVERS)
                .map_err(db_err)?
                .map(|v| v.value());
            let indexed = tx
                .open_table(UPDATES)
                .map_err(db_err)?
                .len()
                .map_err(db_err)?;
            if covered != Some(indexed) {
                let mut snaps = tx.open_table(SNAPSHOTS).map_err(db_err)?;
                if !snaps.is_empty().map_err(db_err)? {
                    tracing::warn!(
                        "{}: updates were indexed by a build that does not track late ones; \
                         its snapshots are dropped (reads rebuild them)",
                        path.display()
                    );
                    snaps.retain(|_, _| false).map_err(db_err)?;
                }
                drop(snaps);
                mark_late_covered(&tx)?;
            }
        }
        #[allow(clippy::disallowed_methods)] // Opening: no reader or shared snapshot exists yet.
        tx.commit().map_err(db_err)?;
        Self::with(db, path)
    }

    /// Opens the catalog file at `path` read-only, beside the process that writes it (an
    /// `overseer run`, say) or when none does: what `history`, `view` and `replay` use.
    /// Every read is on one snapshot, the writer's durable commits when it opened: one
    /// consistent view (held until it is dropped, so a long replay keeps the writer from
    /// reusing the pages it reads, and the file grows by what is written meanwhile).
    /// Writes fail, naming the file, except the two that only make later reads cheaper
    /// ([`SnapshotStore::put_snapshots`], [`UpdateIndex::keep_ref_updates`]), which do
    /// nothing. A file its writer left needing repair (killed, with no writer since) is
    /// repaired first, by opening it as the writer for a moment.
    pub fn open_reader(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        match std::fs::metadata(path) {
            Ok(m) if m.len() > 0 => {}
            Ok(_) => {
                return Err(Error::catalog(format!(
                    "no embedded catalog at {} yet (its writer is creating it)",
                    path.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::catalog(format!(
                    "no embedded catalog at {} (nothing was ingested with this configuration \
                     yet?)",
                    path.display()
                )));
            }
            Err(e) => return Err(Error::io(path.display(), e)),
        }
        let started = std::time::Instant::now();
        let (mut repaired, mut told) = (false, false);
        loop {
            match builder(READER_CACHE_BYTES).open_read_only(path) {
                Ok(db) => return Self::reader(db, path),
                Err(redb::DatabaseError::RepairAborted) if !repaired => {
                    // No live writer vouches for the file and its last writer did not
                    // close it (killed): repair it as the next writer would, once. A
                    // writer may be starting, and repairing it, at this moment: then wait.
                    // Said on disk, so a writer starting meanwhile waits for the repair
                    // instead of refusing to start (`open`): a marker of this reader's own,
                    // removed once the file is closed again (closing writes and syncs).
                    let marker = repair_marker(path);
                    let _ = std::fs::write(&marker, b"");
                    let opened = builder(CACHE_BYTES).create(path).map(drop);
                    let _ = std::fs::remove_file(&marker);
                    match opened {
                        Ok(()) => {
                            repaired = true;
                        }
                        Err(redb::DatabaseError::DatabaseAlreadyOpen)
                            if started.elapsed() < Duration::from_secs(30) =>
                        {
                            if !told {
                                tracing::info!(
                                    "{}: its writer is repairing it after a crash; waiting \
                                     (up to 30 s)",
                                    path.display()
                                );
                                told = true;
                            }
                            std::thread::sleep(Duration::from_millis(200));
                        }
                        Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                            return Err(Error::catalog(format!(
                                "cannot read embedded catalog {}: its writer was still \
                                 repairing it after a crash 30 s later; try again",
                                path.display()
                            )));
                        }
                        Err(e) => {
                            return Err(Error::catalog(format!(
                                "cannot read embedded catalog {}: it needs the repair its \
                                 writer's crash left, and repairing it failed: {e}",
                                path.display()
                            )));
                        }
                    }
                }
                Err(redb::DatabaseError::RepairAborted) => {
                    return Err(Error::catalog(format!(
                        "cannot read embedded catalog {}: it still needs repair after one; \
                         start its writer (`overseer run` or `ingest`), which repairs it",
                        path.display()
                    )));
                }
                Err(e) => {
                    return Err(Error::catalog(format!(
                        "cannot open embedded catalog {} to read: {e}",
                        path.display()
                    )));
                }
            }
        }
    }

    /// The reader over `db`: its one snapshot, and the tables the writer creates (a file
    /// without them is still being created).
    fn reader(db: redb::ReadOnlyDatabase, path: &Path) -> Result<Self> {
        let tx = db.begin_read().map_err(db_err)?;
        match tx.open_table(META) {
            Ok(_) => {}
            Err(redb::TableError::TableDoesNotExist(_)) => {
                return Err(Error::catalog(format!(
                    "no embedded catalog at {} yet (its writer is creating it, or it is not \
                     a catalog)",
                    path.display()
                )));
            }
            Err(e) => return Err(db_err(e)),
        }
        Self::with(
            Db::Reader {
                fixed: Arc::new(Snap::new(0, tx)),
                path: path.display().to_string(),
                _db: db,
            },
            path,
        )
    }

    /// The catalog over `db`, opened at `path`.
    fn with(db: Db, path: &Path) -> Result<Self> {
        let mut snapshotted = std::collections::HashSet::new();
        let tx = db.begin_read().map_err(db_err)?;
        // A writer dropped snapshots a build that did not track late updates may have made
        // stale (`open`); a reader cannot, so it leaves them all unread until one has.
        let covered = tx
            .open_table(META)
            .map_err(db_err)?
            .get(LATE_COVERS)
            .map_err(db_err)?
            .map(|v| v.value());
        let indexed = tx
            .open_table(UPDATES)
            .map_err(db_err)?
            .len()
            .map_err(db_err)?;
        if covered == Some(indexed) {
            let t = tx.open_table(SNAPSHOTS).map_err(db_err)?;
            // One seek per record: past its last snapshot to the next record's first.
            let mut next = t.first().map_err(db_err)?.map(|(k, _)| {
                let (m, id, ..) = k.value();
                (m.to_vec(), id.to_vec())
            });
            while let Some((m, id)) = next.take() {
                snapshotted.insert(record_hash(&m, &id));
                let past = (m.as_slice(), id.as_slice(), i64::MAX, MAX_TEXT, MAX_TEXT);
                let range = (std::ops::Bound::Excluded(past), std::ops::Bound::Unbounded);
                if let Some(row) = t.range(range).map_err(db_err)?.next() {
                    let (k, _) = row.map_err(db_err)?;
                    let (m, id, ..) = k.value();
                    next = Some((m.to_vec(), id.to_vec()));
                }
            }
        }
        drop(tx);
        Ok(EmbeddedCatalog {
            db: Arc::new(db),
            path: path.display().to_string(),
            commits: Arc::new(tokio::sync::watch::Sender::new(0)),
            snapshotted: Arc::new(std::sync::RwLock::new(snapshotted)),
            tasks: Arc::new(tokio::sync::Semaphore::new(BLOCKING_TASKS)),
            snap: Arc::default(),
        })
    }

    /// Runs a short read (a point lookup, one record's index range) on the calling task.
    /// Handing it to the blocking pool costs more than the read itself: two futex
    /// wake-ups and context switches (~60 µs under load, where the read from redb's page
    /// cache takes a few µs); the check runner does several per view.
    /// It runs on the shared read snapshot ([`SharedSnap`]).
    fn read<T>(&self, f: impl FnOnce(&Snap) -> Result<T>) -> Result<T> {
        f(&*self.snap.get(&self.db)?)
    }

    /// Bumps the commit signal. Called inside the blocking closure, right after the redb
    /// commit, so a caller dropped while awaiting it cannot commit without a signal.
    /// (The commit, [`Writing::commit`], has moved the shared read snapshot on: a reader
    /// woken by the signal reads it.)
    fn signal(commits: &tokio::sync::watch::Sender<u64>) {
        commits.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Runs blocking redb work (long reads, writes) off the async executor,
    /// [`BLOCKING_TASKS`] at once. A write commits with [`Writing::commit`], after which
    /// later reads begin a new read snapshot ([`SharedSnap`]). The permit moves into the
    /// task: a caller dropped while it runs does not let another in.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Writing) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.db.clone();
        let snap = self.snap.clone();
        let permit = self
            .tasks
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f(&Writing {
                db: &db,
                snap: &snap,
            })
        })
        .await
        .map_err(|e| Error::catalog(format!("catalog task failed: {e}")))?
        .map_err(|e| self.full_disk(e))
    }

    /// `e`, said as a full disk naming the file when that is what it is (redb's own text
    /// is only "I/O error: No space left on device"). Definite: redb refuses every
    /// operation after a failed write, so the process stops; the next start repairs the
    /// file, and what was not committed was not acknowledged.
    fn full_disk(&self, e: Error) -> Error {
        let Error::Catalog {
            source: Some(source),
            ..
        } = &e
        else {
            return e;
        };
        let storage = if let Some(s) = source.downcast_ref::<redb::StorageError>() {
            Some(s)
        } else if let Some(redb::CommitError::Storage(s)) = source.downcast_ref() {
            Some(s)
        } else if let Some(redb::TransactionError::Storage(s)) = source.downcast_ref() {
            Some(s)
        } else if let Some(redb::TableError::Storage(s)) = source.downcast_ref() {
            Some(s)
        } else {
            None
        };
        let full = matches!(storage, Some(redb::StorageError::Io(io))
            if matches!(io.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded));
        if !full {
            return e;
        }
        Error::Catalog {
            message: format!(
                "embedded catalog {}: the disk is full ({source}): free space, then start again \
                 (nothing acknowledged is lost; the start repairs the file)",
                self.path
            ),
            transient: false,
            source: Some(Box::new(e)),
        }
    }
}

/// A stored key component back as text, borrowed.
fn text_ref(b: &[u8]) -> Result<&str> {
    std::str::from_utf8(b).map_err(|_| Error::corrupt("embedded catalog", "key is not utf-8"))
}

/// Adds `REF_UPDATES` rows in a write transaction, counting the new ones per value.
struct RefRows<'a, 't> {
    table: &'a mut redb::Table<'t, (Str, Str, Str, i64, Str, Str), Str>,
    counts: &'a mut BTreeMap<(String, String, String), u64>,
}

impl RefRows<'_, '_> {
    /// The update `key` of record `(model, id)` under its reference `(name, value)`.
    fn add(
        &mut self,
        (model, id): (&[u8], &[u8]),
        (name, value): (&str, &str),
        (t, s, p): (Micros, &str, &str),
    ) -> Result<()> {
        let row = (
            model,
            name.as_bytes(),
            value.as_bytes(),
            t,
            s.as_bytes(),
            p.as_bytes(),
        );
        if self.table.insert(row, id).map_err(db_err)?.is_none() {
            *self
                .counts
                .entry((
                    text_ref(model)?.to_owned(),
                    name.to_owned(),
                    value.to_owned(),
                ))
                .or_default() += 1;
        }
        Ok(())
    }
}

/// Adds counted new `REF_UPDATES` rows to `REF_COUNTS`.
fn add_ref_counts(
    tx: &redb::WriteTransaction,
    added: BTreeMap<(String, String, String), u64>,
) -> Result<()> {
    let mut counts = tx.open_table(REF_COUNTS).map_err(db_err)?;
    for ((m, n, v), k) in added {
        let key = (m.as_bytes(), n.as_bytes(), v.as_bytes());
        let was = counts
            .get(key)
            .map_err(db_err)?
            .map(|c| c.value())
            .unwrap_or(0);
        counts.insert(key, was + k).map_err(db_err)?;
    }
    Ok(())
}

/// The (model, ref name) pairs whose reference updates are kept.
fn kept_ref_pairs(tx: &redb::WriteTransaction) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let t = tx.open_table(REF_KEPT).map_err(db_err)?;
    t.iter()
        .map_err(db_err)?
        .map(|r| {
            let (k, _) = r.map_err(db_err)?;
            let (m, n) = k.value();
            Ok((m.to_vec(), n.to_vec()))
        })
        .collect()
}

/// Fills `REF_UPDATES` (and `REF_COUNTS`) for one (model, ref name) pair from the
/// reference and record indexes, and marks it kept.
fn build_ref_updates(tx: &redb::WriteTransaction, model: &str, name: &str) -> Result<()> {
    let refs = tx.open_table(REFS).map_err(db_err)?;
    let record_idx = tx.open_table(RECORD_IDX).map_err(db_err)?;
    let mut table = tx.open_table(REF_UPDATES).map_err(db_err)?;
    let mut counts = BTreeMap::new();
    let mut rows = RefRows {
        table: &mut table,
        counts: &mut counts,
    };
    let (m, n) = (model.as_bytes(), name.as_bytes());
    for r in refs.range((m, n, EMPTY, EMPTY)..).map_err(db_err)? {
        let (k, _) = r.map_err(db_err)?;
        let (m2, n2, v, id) = k.value();
        if (m2, n2) != (m, n) {
            break;
        }
        let v = text_ref(v)?;
        for row in record_idx
            .range((m, id, i64::MIN, EMPTY, EMPTY)..)
            .map_err(db_err)?
        {
            let (k, _) = row.map_err(db_err)?;
            let (m3, id3, t, s, p) = k.value();
            if (m3, id3) != (m, id) {
                break;
            }
            rows.add((m, id), (name, v), (t, text_ref(s)?, text_ref(p)?))?;
        }
    }
    drop(table);
    add_ref_counts(tx, counts)?;
    tx.open_table(REF_KEPT)
        .map_err(db_err)?
        .insert((m, n), ())
        .map_err(db_err)?;
    Ok(())
}

/// [`UpdateIndex::ref_updates_after`] from the reference and record indexes, for a pair
/// whose reference updates are not kept: a range of the record index per record that ever
/// referenced the value.
fn derived_ref_updates(
    tx: &Snap,
    (model, name, value): (&[u8], &[u8], &[u8]),
    after: Option<(Micros, &str, &str)>,
    up_to_us: Micros,
) -> Result<RefUpdatesAfter> {
    let refs = tx.refs()?;
    let idx = tx.record_idx()?;
    let masters = tx.masters()?;
    let mut total = 0u64;
    let mut scan = AfterScan::up_to(up_to_us);
    for r in refs.range((model, name, value, EMPTY)..).map_err(db_err)? {
        let (k, _) = r.map_err(db_err)?;
        let (m, n, v, id) = k.value();
        if (m, n, v) != (model, name, value) {
            break;
        }
        if let Some(doc) = masters.get((m, id)).map_err(db_err)? {
            total += Dec(doc.value()).u64()?;
        }
        let (t0, s0, p0) = after.unwrap_or((i64::MIN, "", ""));
        let start = (m, id, t0, s0.as_bytes(), p0.as_bytes());
        for row in idx
            .range(from_point(start, after.is_some()))
            .map_err(db_err)?
        {
            let (k, _) = row.map_err(db_err)?;
            let (m2, id2, t, s, p) = k.value();
            if (m2, id2) != (m, id) {
                break;
            }
            scan.row(t, s, p, id)?;
        }
    }
    // Per record, then merged into time-travel order.
    scan.updates.sort_unstable();
    Ok(scan.done(total))
}

/// Keys from `start` on, without it when `exclusive` (after a point already read).
fn from_point<K>(start: K, exclusive: bool) -> (std::ops::Bound<K>, std::ops::Bound<K>) {
    let start = if exclusive {
        std::ops::Bound::Excluded(start)
    } else {
        std::ops::Bound::Included(start)
    };
    (start, std::ops::Bound::Unbounded)
}

/// The rows of a reference's updates after a point: those up to a time kept, all counted.
struct AfterScan {
    up_to_us: Micros,
    later: u64,
    updates: Vec<RefUpdate>,
}

impl AfterScan {
    fn up_to(up_to_us: Micros) -> Self {
        AfterScan {
            up_to_us,
            later: 0,
            updates: Vec::new(),
        }
    }

    fn row(&mut self, t: Micros, s: &[u8], p: &[u8], id: &[u8]) -> Result<()> {
        self.later += 1;
        if t <= self.up_to_us {
            self.updates.push(RefUpdate {
                event_time_us: t,
                source: text(s)?,
                position: text(p)?,
                record_id: text(id)?,
            });
        }
        Ok(())
    }

    /// With `total` rows in all, the count at or before the point.
    fn done(self, total: u64) -> RefUpdatesAfter {
        RefUpdatesAfter {
            updates: self.updates,
            at_or_before: total.saturating_sub(self.later),
        }
    }
}

// ---- compact value encoding (length-prefixed strings, little-endian integers) ----

#[derive(Default)]
struct Enc(Vec<u8>);

impl Enc {
    fn str(&mut self, s: &str) -> &mut Self {
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn i64(&mut self, v: i64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
}

struct Dec<'a>(&'a [u8]);

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(Error::corrupt("embedded catalog", "truncated value"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn str(&mut self) -> Result<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| Error::corrupt("embedded catalog", "invalid utf-8"))
    }
}

/// Value of `updates`: everything of the entry but its key (source, position).
fn encode_entry(e: &IndexEntry) -> Vec<u8> {
    let mut w = Enc::default();
    w.str(&e.model)
        .str(&e.record_id)
        .u32(e.op as u32)
        .i64(e.event_time_us)
        .i64(e.ingest_time_us)
        .u64(e.loc.segment_seq)
        .u32(e.loc.offset)
        .u32(e.loc.len)
        .u32(e.refs.len() as u32);
    for (n, v) in &e.refs {
        w.str(n).str(v);
    }
    w.0
}

fn decode_entry(source: &[u8], position: &[u8], bytes: &[u8]) -> Result<IndexEntry> {
    let mut r = Dec(bytes);
    let model = r.str()?;
    let record_id = r.str()?;
    let op = op_from_u8(r.u32()? as u8);
    let event_time_us = r.i64()?;
    let ingest_time_us = r.i64()?;
    let loc = UpdateLoc {
        segment_seq: r.u64()?,
        offset: r.u32()?,
        len: r.u32()?,
    };
    let n = r.u32()? as usize;
    let mut refs = Vec::with_capacity(n);
    for _ in 0..n {
        refs.push((r.str()?, r.str()?));
    }
    Ok(IndexEntry {
        source: text(source)?,
        position: text(position)?,
        model,
        record_id,
        op,
        event_time_us,
        ingest_time_us,
        loc,
        refs,
    })
}

fn encode_master(m: &MasterDoc) -> Vec<u8> {
    let mut w = Enc::default();
    w.u64(m.updates)
        .i64(m.first_event_us)
        .i64(m.last_event_us)
        .u32(m.refs.len() as u32);
    for (n, v) in &m.refs {
        w.str(n).str(v);
    }
    w.0
}

fn decode_master(model: &[u8], id: &[u8], bytes: &[u8]) -> Result<MasterDoc> {
    let mut r = Dec(bytes);
    let updates = r.u64()?;
    let first_event_us = r.i64()?;
    let last_event_us = r.i64()?;
    let n = r.u32()? as usize;
    let mut refs = BTreeSet::new();
    for _ in 0..n {
        refs.insert((r.str()?, r.str()?));
    }
    Ok(MasterDoc {
        model: text(model)?,
        record_id: text(id)?,
        refs,
        updates,
        first_event_us,
        last_event_us,
    })
}

fn encode_state(s: &SourceState) -> Vec<u8> {
    let mut w = Enc::default();
    w.str(&s.checkpoint)
        .i64(s.watermark_us)
        .i64(s.last_event_us)
        .i64(s.updated_us);
    w.0
}

fn decode_state(source: &[u8], bytes: &[u8]) -> Result<SourceState> {
    let mut r = Dec(bytes);
    Ok(SourceState {
        source: text(source)?,
        checkpoint: r.str()?,
        watermark_us: r.i64()?,
        last_event_us: r.i64()?,
        updated_us: r.i64()?,
    })
}

const FAILING: u8 = 1;
const NOTIFIED_FAILING: u8 = 2;

/// Value of `incidents`: everything but the key (check, subject).
fn encode_incident(inc: &Incident) -> Vec<u8> {
    let flags = if inc.failing { FAILING } else { 0 }
        | if inc.notified_failing {
            NOTIFIED_FAILING
        } else {
            0
        };
    let mut w = Enc::default();
    w.u64(inc.version)
        .u8(flags)
        .i64(inc.last_eval_us)
        .i64(inc.since_us)
        .i64(inc.updated_us)
        .str(&inc.message)
        .str(&inc.details)
        .i64(inc.notified_eval_us)
        .i64(inc.sending_until_us)
        .i64(inc.rearm_eval_us);
    w.0
}

fn decode_incident(check: &[u8], subject: &[u8], bytes: &[u8]) -> Result<Incident> {
    let mut r = Dec(bytes);
    let version = r.u64()?;
    let flags = r.u8()?;
    let mut inc = Incident {
        check: text(check)?,
        subject: text(subject)?,
        failing: flags & FAILING != 0,
        notified_failing: flags & NOTIFIED_FAILING != 0,
        last_eval_us: r.i64()?,
        since_us: r.i64()?,
        updated_us: r.i64()?,
        message: r.str()?,
        details: r.str()?,
        version,
        ..Incident::default()
    };
    // Incidents written before these fields existed end here: told nothing, held by
    // none, owed no run.
    if !r.0.is_empty() {
        inc.notified_eval_us = r.i64()?;
        inc.sending_until_us = r.i64()?;
        inc.rearm_eval_us = r.i64()?;
    }
    Ok(inc)
}

/// Incidents whose keys are listed in `keys` (an index table over `incidents`), in key
/// order, at most `limit`.
fn incidents_by_index(
    db: &Db,
    keys: TableDefinition<(Str, Str), ()>,
    limit: usize,
) -> Result<Vec<Incident>> {
    let tx = db.begin_read().map_err(db_err)?;
    let idx = tx.open_table(keys).map_err(db_err)?;
    let t = tx.open_table(INCIDENTS).map_err(db_err)?;
    let mut out = Vec::new();
    for row in idx.iter().map_err(db_err)?.take(limit) {
        let (k, _) = row.map_err(db_err)?;
        let (c, s) = k.value();
        let v = t.get((c, s)).map_err(db_err)?.ok_or_else(|| {
            Error::corrupt("embedded catalog", "incident index row without incident")
        })?;
        out.push(decode_incident(c, s, v.value())?);
    }
    Ok(out)
}

fn segments_in_state(db: &Db, state: u8) -> Result<Vec<u64>> {
    let tx = db.begin_read().map_err(db_err)?;
    let t = tx.open_table(SEGMENTS).map_err(db_err)?;
    let mut out = Vec::new();
    for row in t.iter().map_err(db_err)? {
        let (k, v) = row.map_err(db_err)?;
        if v.value() == state {
            out.push(k.value());
        }
    }
    Ok(out)
}

#[async_trait]
impl SegmentLedger for EmbeddedCatalog {
    async fn reserve_segment(&self) -> Result<u64> {
        self.blocking(|db| {
            let tx = db.begin_write()?;
            let seq;
            {
                let mut meta = tx.open_table(META).map_err(db_err)?;
                seq = meta
                    .get(NEXT_SEQ)
                    .map_err(db_err)?
                    .map(|v| v.value())
                    .unwrap_or(1);
                meta.insert(NEXT_SEQ, seq + 1).map_err(db_err)?;
                tx.open_table(SEGMENTS)
                    .map_err(db_err)?
                    .insert(seq, PENDING)
                    .map_err(db_err)?;
            }
            db.commit(tx)?;
            Ok(seq)
        })
        .await
    }

    async fn pending_segments(&self) -> Result<Vec<u64>> {
        self.blocking(|db| segments_in_state(db, PENDING)).await
    }

    async fn abandon_segment(&self, seq: u64) -> Result<()> {
        let commits = self.commits.clone();
        self.blocking(move |db| {
            let tx = db.begin_write()?;
            {
                let mut t = tx.open_table(SEGMENTS).map_err(db_err)?;
                let state = t.get(seq).map_err(db_err)?.map(|v| v.value());
                if state == Some(PENDING) {
                    t.remove(seq).map_err(db_err)?;
                }
            }
            db.commit(tx)?;
            Self::signal(&commits);
            Ok(())
        })
        .await
    }

    async fn commit(&self, batch: CommitBatch) -> Result<Vec<bool>> {
        let commits = self.commits.clone();
        let new = self
            .blocking(move |db| {
                let tx = db.begin_write()?;
                let mut fresh = Vec::with_capacity(batch.entries.len());
                {
                    let mut updates = tx.open_table(UPDATES).map_err(db_err)?;
                    let mut record_idx = tx.open_table(RECORD_IDX).map_err(db_err)?;
                    let mut time_idx = tx.open_table(TIME_IDX).map_err(db_err)?;
                    let mut masters = tx.open_table(MASTERS).map_err(db_err)?;
                    let mut late_table = tx.open_table(LATE).map_err(db_err)?;
                    let mut refs = tx.open_table(REFS).map_err(db_err)?;
                    let mut ref_updates = tx.open_table(REF_UPDATES).map_err(db_err)?;
                    let mut ref_counts: BTreeMap<(String, String, String), u64> = BTreeMap::new();
                    // Read in this transaction: a pair kept since by another handle is
                    // maintained from its first commit after (writes are serialized).
                    let kept_refs = kept_ref_pairs(&tx)?;
                    let kept = |m: &[u8], n: &str| {
                        kept_refs
                            .iter()
                            .any(|(km, kn)| km.as_slice() == m && kn.as_slice() == n.as_bytes())
                    };
                    for e in &batch.entries {
                        let key = (e.source.as_bytes(), e.position.as_bytes());
                        if updates.get(key).map_err(db_err)?.is_some() {
                            fresh.push(false);
                            continue;
                        }
                        fresh.push(true);
                        updates
                            .insert(key, encode_entry(e).as_slice())
                            .map_err(db_err)?;
                        record_idx
                            .insert(
                                (
                                    e.model.as_bytes(),
                                    e.record_id.as_bytes(),
                                    e.event_time_us,
                                    e.source.as_bytes(),
                                    e.position.as_bytes(),
                                ),
                                (),
                            )
                            .map_err(db_err)?;
                        time_idx
                            .insert(
                                (e.event_time_us, e.source.as_bytes(), e.position.as_bytes()),
                                (),
                            )
                            .map_err(db_err)?;
                        let mkey = (e.model.as_bytes(), e.record_id.as_bytes());
                        let mut master = match masters.get(mkey).map_err(db_err)? {
                            Some(v) => decode_master(mkey.0, mkey.1, v.value())?,
                            None => MasterDoc {
                                model: e.model.clone(),
                                record_id: e.record_id.clone(),
                                ..Default::default()
                            },
                        };
                        let added: BTreeSet<&(String, String)> = e
                            .refs
                            .iter()
                            .filter(|r| kept(mkey.0, &r.0) && !master.refs.contains(*r))
                            .collect();
                        // At or before its newest commit time: it may land before updates
                        // a reader already counted (equal times too: the master keeps no
                        // source or position to tell).
                        let late = master.updates > 0 && e.event_time_us <= master.last_event_us;
                        master.absorb(e);
                        masters
                            .insert(mkey, encode_master(&master).as_slice())
                            .map_err(db_err)?;
                        if late {
                            late_table.insert(mkey, master.updates).map_err(db_err)?;
                        }
                        // This update, under every value the record ever referenced; and
                        // the record's earlier updates under each value it references for
                        // the first time.
                        let mut ref_rows = RefRows {
                            table: &mut ref_updates,
                            counts: &mut ref_counts,
                        };
                        for (n, v) in master.refs.iter().filter(|(n, _)| kept(mkey.0, n)) {
                            ref_rows.add(mkey, (n, v), e.order_key())?;
                        }
                        for (n, v) in added {
                            for row in record_idx
                                .range((mkey.0, mkey.1, i64::MIN, EMPTY, EMPTY)..)
                                .map_err(db_err)?
                            {
                                let (k, _) = row.map_err(db_err)?;
                                let (m, id, t, s, p) = k.value();
                                if (m, id) != mkey {
                                    break;
                                }
                                ref_rows.add(mkey, (n, v), (t, text_ref(s)?, text_ref(p)?))?;
                            }
                        }
                        for (n, v) in &e.refs {
                            refs.insert(
                                (
                                    e.model.as_bytes(),
                                    n.as_bytes(),
                                    v.as_bytes(),
                                    e.record_id.as_bytes(),
                                ),
                                (),
                            )
                            .map_err(db_err)?;
                        }
                    }
                    add_ref_counts(&tx, ref_counts)?;
                    let mut sources = tx.open_table(SOURCES).map_err(db_err)?;
                    for p in &batch.progress {
                        let mut st = match sources.get(p.source.as_bytes()).map_err(db_err)? {
                            Some(v) => decode_state(p.source.as_bytes(), v.value())?,
                            None => SourceState {
                                source: p.source.clone(),
                                ..Default::default()
                            },
                        };
                        st.checkpoint = p.checkpoint.clone();
                        st.watermark_us = st.watermark_us.max(p.watermark_us);
                        st.last_event_us = st.last_event_us.max(p.last_event_us);
                        st.updated_us = st.updated_us.max(batch.now_us);
                        sources
                            .insert(p.source.as_bytes(), encode_state(&st).as_slice())
                            .map_err(db_err)?;
                    }
                    if batch.progress.iter().any(|p| !p.lanes.is_empty()) {
                        let mut lanes = tx.open_table(LANES).map_err(db_err)?;
                        for p in batch.progress.iter().filter(|p| !p.lanes.is_empty()) {
                            claim_lanes_in(
                                &mut lanes,
                                &mut sources,
                                &p.source,
                                &p.lanes,
                                batch.now_us,
                            )?;
                        }
                    }
                    if let Some(seq) = batch.segment_seq {
                        let mut segs = tx.open_table(SEGMENTS).map_err(db_err)?;
                        if batch.entries.is_empty() {
                            segs.remove(seq).map_err(db_err)?;
                        } else {
                            segs.insert(seq, COMMITTED).map_err(db_err)?;
                        }
                        let mut meta = tx.open_table(META).map_err(db_err)?;
                        let next = meta
                            .get(NEXT_SEQ)
                            .map_err(db_err)?
                            .map(|v| v.value())
                            .unwrap_or(1);
                        if seq >= next {
                            meta.insert(NEXT_SEQ, seq + 1).map_err(db_err)?;
                        }
                    }
                }
                mark_late_covered(&tx)?;
                db.commit(tx)?;
                Self::signal(&commits);
                Ok(fresh)
            })
            .await?;
        Ok(new)
    }

    async fn unpublished_segments(&self) -> Result<Vec<u64>> {
        self.blocking(|db| segments_in_state(db, COMMITTED)).await
    }

    async fn mark_published(&self, seqs: &[u64]) -> Result<()> {
        let seqs = seqs.to_vec();
        self.blocking(move |db| {
            let tx = db.begin_write()?;
            {
                let mut t = tx.open_table(SEGMENTS).map_err(db_err)?;
                for s in seqs {
                    let st = t.get(s).map_err(db_err)?.map(|v| v.value());
                    if st == Some(COMMITTED) {
                        t.insert(s, PUBLISHED).map_err(db_err)?;
                    }
                }
            }
            db.commit(tx)
        })
        .await
    }

    fn commit_signal(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.commits.subscribe())
    }

    async fn committed_segments_after(&self, after: u64, limit: usize) -> Result<Vec<u64>> {
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let t = tx.open_table(SEGMENTS).map_err(db_err)?;
            let mut out = Vec::new();
            for row in t.range(after.saturating_add(1)..).map_err(db_err)? {
                let (k, v) = row.map_err(db_err)?;
                if v.value() != PENDING {
                    out.push(k.value());
                    if out.len() >= limit {
                        break;
                    }
                }
            }
            Ok(out)
        })
        .await
    }
}

#[async_trait]
impl UpdateIndex for EmbeddedCatalog {
    async fn filter_new(&self, ids: &[(&str, &str)]) -> Result<Vec<bool>> {
        let ids: Vec<(String, String)> = ids
            .iter()
            .map(|(s, p)| ((*s).to_owned(), (*p).to_owned()))
            .collect();
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let t = tx.open_table(UPDATES).map_err(db_err)?;
            ids.iter()
                .map(|(s, p)| {
                    Ok(t.get((s.as_bytes(), p.as_bytes()))
                        .map_err(db_err)?
                        .is_none())
                })
                .collect()
        })
        .await
    }

    async fn record_updates(
        &self,
        model: &str,
        record_id: &str,
        up_to_us: Micros,
    ) -> Result<Vec<IndexEntry>> {
        self.read(move |tx| record_entries(tx, model, record_id, up_to_us))
    }

    async fn record_updates_after(
        &self,
        model: &str,
        record_id: &str,
        after: (Micros, &str, &str),
        up_to_us: Micros,
        seen: Option<u64>,
    ) -> Result<UpdatesAfter> {
        self.read(move |tx| updates_after(tx, model, record_id, after, up_to_us, seen))
    }

    async fn master(&self, model: &str, record_id: &str) -> Result<Option<MasterDoc>> {
        let (model, record_id) = (model.to_owned(), record_id.to_owned());
        self.read(move |tx| {
            tx.masters()?
                .get((model.as_bytes(), record_id.as_bytes()))
                .map_err(db_err)?
                .map(|v| decode_master(model.as_bytes(), record_id.as_bytes(), v.value()))
                .transpose()
        })
    }

    async fn ref_updates_after(
        &self,
        model: &str,
        name: &str,
        value: &str,
        after: Option<(Micros, &str, &str)>,
        up_to_us: Micros,
    ) -> Result<RefUpdatesAfter> {
        self.read(move |tx| {
            let group = (model.as_bytes(), name.as_bytes(), value.as_bytes());
            if tx
                .ref_kept()?
                .get((group.0, group.1))
                .map_err(db_err)?
                .is_none()
            {
                return derived_ref_updates(tx, group, after, up_to_us);
            }
            let rows = tx.ref_updates()?;
            let counts = tx.ref_counts()?;
            let total = counts
                .get(group)
                .map_err(db_err)?
                .map(|c| c.value())
                .unwrap_or(0);
            let (t0, s0, p0) = after.unwrap_or((i64::MIN, "", ""));
            let start = (group.0, group.1, group.2, t0, s0.as_bytes(), p0.as_bytes());
            let mut scan = AfterScan::up_to(up_to_us);
            for row in rows
                .range(from_point(start, after.is_some()))
                .map_err(db_err)?
            {
                let (k, id) = row.map_err(db_err)?;
                let (m, n, v, t, s, p) = k.value();
                if (m, n, v) != group {
                    break;
                }
                scan.row(t, s, p, id.value())?;
            }
            Ok(scan.done(total))
        })
    }

    async fn keep_ref_updates(&self, pairs: &[(String, String)]) -> Result<()> {
        if self.db.is_reader() {
            // Reads of pairs not kept derive their lists from the record index: the same
            // answer, at a higher cost (see the trait).
            return Ok(());
        }
        let pairs: BTreeSet<(String, String)> = pairs.iter().cloned().collect();
        self.blocking(move |db| {
            let tx = db.begin_write()?;
            let kept = kept_ref_pairs(&tx)?;
            let mut built = false;
            for (m, n) in &pairs {
                if !kept.contains(&(m.as_bytes().to_vec(), n.as_bytes().to_vec())) {
                    build_ref_updates(&tx, m, n)?;
                    built = true;
                }
            }
            if built {
                db.commit(tx)?;
            }
            Ok(())
        })
        .await
    }

    async fn records_by_ref(&self, model: &str, name: &str, value: &str) -> Result<Vec<String>> {
        let (model, name, value) = (model.to_owned(), name.to_owned(), value.to_owned());
        self.read(move |tx| {
            let t = tx.refs()?;
            let start = (model.as_bytes(), name.as_bytes(), value.as_bytes(), EMPTY);
            let mut out = Vec::new();
            for row in t.range(start..).map_err(db_err)? {
                let (k, _) = row.map_err(db_err)?;
                let (m, n, v, id) = k.value();
                if m != model.as_bytes() || n != name.as_bytes() || v != value.as_bytes() {
                    break;
                }
                out.push(text(id)?);
            }
            Ok(out)
        })
    }

    async fn updates_in_window(
        &self,
        from_us: Micros,
        to_us: Micros,
        after: Option<(Micros, String, String)>,
        limit: usize,
    ) -> Result<Vec<IndexEntry>> {
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let idx = tx.open_table(TIME_IDX).map_err(db_err)?;
            let updates = tx.open_table(UPDATES).map_err(db_err)?;
            let mut out = Vec::new();
            let start = match &after {
                Some((t, s, p)) if *t >= from_us => (*t, s.as_bytes(), p.as_bytes()),
                _ => (from_us, EMPTY, EMPTY),
            };
            for row in idx.range(start..).map_err(db_err)? {
                let (k, _) = row.map_err(db_err)?;
                let (t, s, p) = k.value();
                if t > to_us || out.len() >= limit {
                    break;
                }
                if let Some((at, asrc, apos)) = &after
                    && (t, s, p) <= (*at, asrc.as_bytes(), apos.as_bytes())
                {
                    continue;
                }
                let v = updates
                    .get((s, p))
                    .map_err(db_err)?
                    .ok_or_else(|| Error::corrupt("embedded catalog", "time row without update"))?;
                out.push(decode_entry(s, p, v.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn dump(&self) -> Result<CatalogDump> {
        self.blocking(|db| {
            let tx = db.begin_read().map_err(db_err)?;
            let mut dump = CatalogDump::default();
            for row in tx
                .open_table(UPDATES)
                .map_err(db_err)?
                .iter()
                .map_err(db_err)?
            {
                let (k, v) = row.map_err(db_err)?;
                let (s, p) = k.value();
                dump.entries.push(decode_entry(s, p, v.value())?);
            }
            for row in tx
                .open_table(MASTERS)
                .map_err(db_err)?
                .iter()
                .map_err(db_err)?
            {
                let (k, v) = row.map_err(db_err)?;
                let (m, id) = k.value();
                dump.masters.push(decode_master(m, id, v.value())?);
            }
            for row in tx
                .open_table(REFS)
                .map_err(db_err)?
                .iter()
                .map_err(db_err)?
            {
                let (k, _) = row.map_err(db_err)?;
                let (m, n, v, id) = k.value();
                dump.refs.push((text(m)?, text(n)?, text(v)?, text(id)?));
            }
            Ok(dump)
        })
        .await
    }
}

/// [`SourceProgress::claim_lanes`] within a write transaction (after retiring): raises
/// each lane's claim, then the source's watermark to its lowest lane.
fn claim_lanes_in(
    lanes: &mut redb::Table<(Str, Str), i64>,
    sources: &mut redb::Table<Str, &[u8]>,
    source: &str,
    claims: &[(String, Micros)],
    now_us: Micros,
) -> Result<()> {
    let src = source.as_bytes();
    for (lane, wm) in claims {
        let key = (src, lane.as_bytes());
        let stored = lanes.get(key).map_err(db_err)?.map(|v| v.value());
        if stored.is_none_or(|s| *wm > s) {
            lanes.insert(key, *wm).map_err(db_err)?;
        }
    }
    let mut lowest: Option<Micros> = None;
    for row in lanes.range((src, EMPTY)..).map_err(db_err)? {
        let (key, wm) = row.map_err(db_err)?;
        if key.value().0 != src {
            break;
        }
        lowest = Some(lowest.map_or(wm.value(), |l| l.min(wm.value())));
    }
    let Some(lowest) = lowest else {
        return Ok(());
    };
    let mut st = match sources.get(src).map_err(db_err)? {
        Some(v) => decode_state(src, v.value())?,
        None => SourceState {
            source: source.to_owned(),
            ..Default::default()
        },
    };
    if lowest > st.watermark_us || st.updated_us < now_us {
        st.watermark_us = st.watermark_us.max(lowest);
        st.updated_us = st.updated_us.max(now_us);
        sources
            .insert(src, encode_state(&st).as_slice())
            .map_err(db_err)?;
    }
    Ok(())
}

#[async_trait]
impl SourceProgress for EmbeddedCatalog {
    async fn source_states(&self) -> Result<Vec<SourceState>> {
        self.read(|tx| {
            let t = tx.sources()?;
            let mut out = Vec::new();
            for row in t.iter().map_err(db_err)? {
                let (k, v) = row.map_err(db_err)?;
                out.push(decode_state(k.value(), v.value())?);
            }
            Ok(out)
        })
    }

    async fn claim_lanes(
        &self,
        source: &str,
        claims: &[(String, Micros)],
        retire: &[String],
        now_us: Micros,
    ) -> Result<()> {
        let source = source.to_owned();
        let claims = claims.to_vec();
        let retire = retire.to_vec();
        let commits = self.commits.clone();
        self.blocking(move |db| {
            let tx = db.begin_write()?;
            {
                let mut lanes = tx.open_table(LANES).map_err(db_err)?;
                let mut sources = tx.open_table(SOURCES).map_err(db_err)?;
                for lane in &retire {
                    lanes
                        .remove((source.as_bytes(), lane.as_bytes()))
                        .map_err(db_err)?;
                }
                claim_lanes_in(&mut lanes, &mut sources, &source, &claims, now_us)?;
            }
            db.commit(tx)?;
            Self::signal(&commits);
            Ok(())
        })
        .await
    }

    async fn lane_claims(&self, source: &str) -> Result<Vec<(String, Micros)>> {
        self.read(|tx| {
            let src = source.as_bytes();
            let mut out = Vec::new();
            for row in tx.lanes()?.range((src, EMPTY)..).map_err(db_err)? {
                let (key, wm) = row.map_err(db_err)?;
                let (s, lane) = key.value();
                if s != src {
                    break;
                }
                out.push((text(lane)?, wm.value()));
            }
            Ok(out)
        })
    }

    async fn heartbeat(&self, source: &str, watermark_us: Micros, now_us: Micros) -> Result<()> {
        let source = source.to_owned();
        let commits = self.commits.clone();
        self.blocking(move |db| {
            let tx = db.begin_write()?;
            {
                let mut t = tx.open_table(SOURCES).map_err(db_err)?;
                let mut st = match t.get(source.as_bytes()).map_err(db_err)? {
                    Some(v) => decode_state(source.as_bytes(), v.value())?,
                    None => SourceState {
                        source: source.clone(),
                        ..Default::default()
                    },
                };
                st.watermark_us = st.watermark_us.max(watermark_us);
                st.updated_us = st.updated_us.max(now_us);
                t.insert(source.as_bytes(), encode_state(&st).as_slice())
                    .map_err(db_err)?;
            }
            db.commit(tx)?;
            Self::signal(&commits);
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl IncidentStore for EmbeddedCatalog {
    async fn incident(&self, check: &str, subject: &str) -> Result<Option<Incident>> {
        let (check, subject) = (check.to_owned(), subject.to_owned());
        self.read(move |tx| {
            let key = (check.as_bytes(), subject.as_bytes());
            tx.incidents()?
                .get(key)
                .map_err(db_err)?
                .map(|v| decode_incident(key.0, key.1, v.value()))
                .transpose()
        })
    }

    async fn put_incident(&self, inc: &Incident) -> Result<Option<u64>> {
        let next = inc.version.checked_add(1).ok_or_else(|| {
            Error::invalid("incident version", format!("{} cannot grow", inc.version))
        })?;
        let mut inc = inc.clone();
        // redb has one writer at a time: the read and the write below are one atomic step.
        self.blocking(move |db| {
            let tx = db.begin_write()?;
            {
                let mut t = tx.open_table(INCIDENTS).map_err(db_err)?;
                let key = (inc.check.as_bytes(), inc.subject.as_bytes());
                let stored = match t.get(key).map_err(db_err)? {
                    Some(v) => Dec(v.value()).u64()?,
                    None => 0,
                };
                if stored != inc.version {
                    return Ok(None);
                }
                inc.version = next;
                t.insert(key, encode_incident(&inc).as_slice())
                    .map_err(db_err)?;
                let mut unsettled = tx.open_table(INCIDENTS_UNSETTLED).map_err(db_err)?;
                if inc.unsettled() {
                    unsettled.insert(key, ()).map_err(db_err)?;
                } else {
                    unsettled.remove(key).map_err(db_err)?;
                }
                let mut failing = tx.open_table(INCIDENTS_FAILING).map_err(db_err)?;
                if inc.failing {
                    failing.insert(key, ()).map_err(db_err)?;
                } else {
                    failing.remove(key).map_err(db_err)?;
                }
            }
            db.commit(tx)?;
            Ok(Some(next))
        })
        .await
    }

    async fn unsettled_incidents(&self, limit: usize) -> Result<Vec<Incident>> {
        self.blocking(move |db| incidents_by_index(db, INCIDENTS_UNSETTLED, limit))
            .await
    }

    async fn incidents(&self, failing_only: bool) -> Result<Vec<Incident>> {
        self.blocking(move |db| {
            if failing_only {
                return incidents_by_index(db, INCIDENTS_FAILING, usize::MAX);
            }
            let tx = db.begin_read().map_err(db_err)?;
            let t = tx.open_table(INCIDENTS).map_err(db_err)?;
            let mut out = Vec::new();
            for row in t.iter().map_err(db_err)? {
                let (k, v) = row.map_err(db_err)?;
                let (c, s) = k.value();
                out.push(decode_incident(c, s, v.value())?);
            }
            Ok(out)
        })
        .await
    }
}

#[async_trait]
impl MetaStore for EmbeddedCatalog {
    async fn get_meta(&self, key: &str) -> Result<Option<String>> {
        let key = key.to_owned();
        self.read(move |tx| {
            tx.meta_kv()?
                .get(key.as_bytes())
                .map_err(db_err)?
                .map(|v| text(v.value()))
                .transpose()
        })
    }

    async fn put_meta(&self, key: &str, value: &str) -> Result<()> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.blocking(move |db| {
            let tx = db.begin_write()?;
            tx.open_table(META_KV)
                .map_err(db_err)?
                .insert(key.as_bytes(), value.as_bytes())
                .map_err(db_err)?;
            db.commit(tx)
        })
        .await
    }

    async fn init_meta(&self, key: &str, value: &str) -> Result<String> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.blocking(move |db| {
            let tx = db.begin_write()?;
            let held = {
                let mut t = tx.open_table(META_KV).map_err(db_err)?;
                let held = t
                    .get(key.as_bytes())
                    .map_err(db_err)?
                    .map(|v| text(v.value()))
                    .transpose()?;
                match held {
                    Some(held) => held,
                    None => {
                        t.insert(key.as_bytes(), value.as_bytes()).map_err(db_err)?;
                        value
                    }
                }
            };
            db.commit(tx)?;
            Ok(held)
        })
        .await
    }
}

/// [`UpdateIndex::record_updates`] within a read transaction.
fn record_entries(
    tx: &Snap,
    model: &str,
    record_id: &str,
    up_to_us: Micros,
) -> Result<Vec<IndexEntry>> {
    let idx = tx.record_idx()?;
    let updates = tx.updates()?;
    let (m, id) = (model.as_bytes(), record_id.as_bytes());
    let range = (m, id, i64::MIN, EMPTY, EMPTY)..=(m, id, up_to_us, MAX_TEXT, MAX_TEXT);
    let mut out = Vec::new();
    for row in idx.range(range).map_err(db_err)? {
        let (k, _) = row.map_err(db_err)?;
        let (_, _, _, s, p) = k.value();
        let v = updates
            .get((s, p))
            .map_err(db_err)?
            .ok_or_else(|| Error::corrupt("embedded catalog", "index row without update"))?;
        out.push(decode_entry(s, p, v.value())?);
    }
    Ok(out)
}

/// [`UpdateIndex::record_updates_after`] within a read transaction.
fn updates_after(
    tx: &Snap,
    model: &str,
    record_id: &str,
    after: (Micros, &str, &str),
    up_to_us: Micros,
    seen: Option<u64>,
) -> Result<UpdatesAfter> {
    let idx = tx.record_idx()?;
    let updates = tx.updates()?;
    let masters = tx.masters()?;
    // The master's count is its first field: no need to decode its references.
    let total = match masters
        .get((model.as_bytes(), record_id.as_bytes()))
        .map_err(db_err)?
    {
        Some(v) => Dec(v.value()).u64()?,
        None => 0,
    };
    let (t0, s0, p0) = after;
    let start = (
        model.as_bytes(),
        record_id.as_bytes(),
        t0,
        s0.as_bytes(),
        p0.as_bytes(),
    );
    // Every key of the record up to `up_to_us` sorts at or before (m, id, up_to, FF, FF),
    // and every key of the record before (m, id, MAX, FF, FF): no UTF-8 text holds 0xFF.
    let (m, id) = (model.as_bytes(), record_id.as_bytes());
    let up_to = (m, id, up_to_us, MAX_TEXT, MAX_TEXT);
    let mut entries = Vec::new();
    if (t0, s0.as_bytes(), p0.as_bytes()) < (up_to_us, MAX_TEXT, MAX_TEXT) {
        let range = (
            std::ops::Bound::Excluded(start),
            std::ops::Bound::Included(up_to),
        );
        for row in idx.range(range).map_err(db_err)? {
            let (k, _) = row.map_err(db_err)?;
            let (_, _, _, s, p) = k.value();
            let v = updates
                .get((s, p))
                .map_err(db_err)?
                .ok_or_else(|| Error::corrupt("embedded catalog", "index row without update"))?;
            entries.push(decode_entry(s, p, v.value())?);
        }
    }
    // The rest is only counted, without decoding a key (a read well behind the head of a
    // long history: a snapshot's validation as of an older time).
    // A count seen before still holds if no update came late since the record had that
    // many: every later one then sorts after every update counted (see `LATE`).
    if let Some(seen) = seen {
        let late = tx.late()?;
        let late_at = late.get((m, id)).map_err(db_err)?.map_or(0, |v| v.value());
        if late_at <= seen {
            return Ok(UpdatesAfter {
                entries,
                at_or_before: seen,
            });
        }
    }
    let mut later = entries.len() as u64;
    let end = (m, id, i64::MAX, MAX_TEXT, MAX_TEXT);
    let rest_from = start.max(up_to);
    if rest_from < end {
        let range = (
            std::ops::Bound::Excluded(rest_from),
            std::ops::Bound::Included(end),
        );
        for row in idx.range(range).map_err(db_err)? {
            row.map_err(db_err)?;
            later += 1;
        }
    }
    Ok(UpdatesAfter {
        entries,
        at_or_before: total.saturating_sub(later),
    })
}

/// [`SnapshotStore::snapshot_at_or_before`] within a read transaction.
fn snapshot_before(
    tx: &Snap,
    model: &str,
    record_id: &str,
    up_to_us: Micros,
) -> Result<Option<Snapshot>> {
    let t = tx.snapshots()?;
    let (m, id) = (model.as_bytes(), record_id.as_bytes());
    // Every key of the record at or before `up_to_us` sorts below (m, id, up_to + 1, "",
    // ""): sources are never empty.
    let start = (m, id, i64::MIN, EMPTY, EMPTY);
    let end = (m, id, up_to_us.saturating_add(1), EMPTY, EMPTY);
    let Some(row) = t.range(start..end).map_err(db_err)?.next_back() else {
        return Ok(None);
    };
    let (k, v) = row.map_err(db_err)?;
    decode_snapshot(k.value(), v.value()).map(Some)
}

/// A stored snapshot back from its key and value.
fn decode_snapshot(
    (model, id, t, s, p): (&[u8], &[u8], i64, &[u8], &[u8]),
    v: &[u8],
) -> Result<Snapshot> {
    let mut d = Dec(v);
    Ok(Snapshot {
        model: text(model)?,
        record_id: text(id)?,
        event_time_us: t,
        source: text(s)?,
        position: text(p)?,
        n: d.u64()?,
        fold: d.u64()?,
        body: d.0.to_vec(),
    })
}

#[async_trait]
impl SnapshotStore for EmbeddedCatalog {
    async fn snapshot_at_or_before(
        &self,
        model: &str,
        record_id: &str,
        up_to_us: Micros,
    ) -> Result<Option<Snapshot>> {
        self.read(move |tx| snapshot_before(tx, model, record_id, up_to_us))
    }

    async fn record_updates_from_snapshot(
        &self,
        model: &str,
        record_id: &str,
        up_to_us: Micros,
    ) -> Result<FromSnapshot> {
        let maybe = self
            .snapshotted
            .read()
            .expect("snapshot set poisoned")
            .contains(&record_hash(model.as_bytes(), record_id.as_bytes()));
        self.read(move |tx| {
            let snapshot = if maybe {
                snapshot_before(tx, model, record_id, up_to_us)?
            } else {
                None
            };
            let from = snapshot
                .as_ref()
                .map_or((Micros::MIN, "", ""), Snapshot::order_key);
            let after = match &snapshot {
                Some(s) => updates_after(tx, model, record_id, from, up_to_us, Some(s.n))?,
                // The whole history up to the time; nothing is at or before "no snapshot".
                None => UpdatesAfter {
                    entries: record_entries(tx, model, record_id, up_to_us)?,
                    at_or_before: 0,
                },
            };
            Ok(FromSnapshot { snapshot, after })
        })
    }

    async fn put_snapshots(&self, writes: &[SnapshotWrite]) -> Result<()> {
        // A reader beside the writer cannot write; snapshots only make reads cheaper.
        if self.db.is_reader()
            || writes
                .iter()
                .all(|w| w.snapshots.is_empty() && w.clear_up_to.is_none())
        {
            return Ok(());
        }
        {
            // Before the write: a reader that finds the hash and no snapshot yet only
            // looked in vain.
            let mut set = self.snapshotted.write().expect("snapshot set poisoned");
            for w in writes.iter().filter(|w| !w.snapshots.is_empty()) {
                set.insert(record_hash(w.model.as_bytes(), w.record_id.as_bytes()));
            }
        }
        let writes = writes.to_vec();
        self.blocking(move |db| {
            // Durable like every commit: redb's shared-reader mode refuses commits that are
            // not (readers in other processes follow durable commits only).
            let tx = db.begin_write()?;
            {
                let mut t = tx.open_table(SNAPSHOTS).map_err(db_err)?;
                for w in &writes {
                    let (m, id) = (w.model.as_bytes(), w.record_id.as_bytes());
                    if let Some((time, src, pos)) = &w.clear_up_to {
                        let start = (m, id, i64::MIN, EMPTY, EMPTY);
                        let end = (m, id, *time, src.as_bytes(), pos.as_bytes());
                        t.retain_in(start..=end, |_, _| false).map_err(db_err)?;
                    }
                    for snap in &w.snapshots {
                        let mut v = Enc::default();
                        v.u64(snap.n).u64(snap.fold);
                        v.0.extend_from_slice(&snap.body);
                        let key = (
                            m,
                            id,
                            snap.event_time_us,
                            snap.source.as_bytes(),
                            snap.position.as_bytes(),
                        );
                        t.insert(key, v.0.as_slice()).map_err(db_err)?;
                    }
                }
            }
            db.commit(tx)
        })
        .await
    }

    async fn snapshots(&self, model: &str, record_id: &str) -> Result<Vec<Snapshot>> {
        self.read(move |tx| {
            let t = tx.snapshots()?;
            let (m, id) = (model.as_bytes(), record_id.as_bytes());
            let start = (m, id, i64::MIN, EMPTY, EMPTY);
            let mut out = Vec::new();
            for row in t.range(start..).map_err(db_err)? {
                let (k, v) = row.map_err(db_err)?;
                let key = k.value();
                if key.0 != m || key.1 != id {
                    break;
                }
                out.push(decode_snapshot(key, v.value())?);
            }
            Ok(out)
        })
    }
}

impl Catalog for EmbeddedCatalog {
    fn describe(&self) -> String {
        format!("embedded catalog {}", self.path)
    }

    fn local_file(&self) -> Option<&std::path::Path> {
        Some(std::path::Path::new(&self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::update::{Op, UpdateLoc};
    use redb::ReadableTableMetadata;

    fn entry(pos: &str, id: &str, t: i64, refs: &[(&str, &str)]) -> IndexEntry {
        IndexEntry {
            source: "s".into(),
            position: pos.into(),
            model: "m".into(),
            record_id: id.into(),
            op: Op::Update,
            event_time_us: t,
            ingest_time_us: t,
            loc: UpdateLoc {
                segment_seq: 1,
                offset: 0,
                len: 1,
            },
            refs: refs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// A snapshot of record `a` of model `m` after its `n`th update (at `time`, source
    /// `s`, `position`).
    fn snapshot_of_a(time: i64, position: &str, n: u64) -> crate::update::SnapshotWrite {
        crate::update::SnapshotWrite {
            model: "m".into(),
            record_id: "a".into(),
            clear_up_to: None,
            snapshots: vec![crate::update::Snapshot {
                model: "m".into(),
                record_id: "a".into(),
                event_time_us: time,
                source: "s".into(),
                position: position.into(),
                n,
                fold: 1,
                body: b"{}".to_vec(),
            }],
        }
    }

    #[test]
    fn an_incident_stored_before_the_delivery_fields_reads_as_told_nothing_and_owed_no_run() {
        let inc = Incident {
            check: "c".into(),
            subject: "s".into(),
            failing: true,
            notified_failing: true,
            last_eval_us: 30,
            message: "m".into(),
            version: 2,
            notified_eval_us: 30,
            sending_until_us: 99,
            rearm_eval_us: 40,
            ..Incident::default()
        };
        let bytes = encode_incident(&inc);
        assert_eq!(decode_incident(b"c", b"s", &bytes).unwrap(), inc);
        // The older encoding ends before the delivery and re-arm fields.
        let old = decode_incident(b"c", b"s", &bytes[..bytes.len() - 24]).unwrap();
        assert_eq!(
            old,
            Incident {
                notified_eval_us: 0,
                sending_until_us: 0,
                rearm_eval_us: 0,
                ..inc
            }
        );
    }

    /// Short reads share one read snapshot between writes, and never see less than a
    /// write completed before they started: while another task keeps reading (and caching
    /// snapshots), every write is read back at once; reads with no write between them
    /// share a snapshot; a write leaves none cached (none pins old pages).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shared_reads_see_every_completed_write() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let cat = EmbeddedCatalog::open(dir.path().join("catalog.redb")).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (cat, stop) = (cat.clone(), stop.clone());
            tokio::spawn(async move {
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    cat.incident("c", "s").await.unwrap();
                    reads += 1;
                    tokio::task::yield_now().await;
                }
                reads
            })
        };
        let mut inc = Incident {
            check: "c".into(),
            subject: "s".into(),
            ..Incident::default()
        };
        for version in 0..300u64 {
            inc.version = version;
            assert_eq!(cat.put_incident(&inc).await.unwrap(), Some(version + 1));
            let read = cat.incident("c", "s").await.unwrap().unwrap();
            assert_eq!(read.version, version + 1, "a read right after a write");
            let (a, b) = (
                cat.snap.get(&cat.db).unwrap(),
                cat.snap.get(&cat.db).unwrap(),
            );
            assert!(
                Arc::ptr_eq(&a, &b) || a.generation != b.generation,
                "reads with no write between share a snapshot"
            );
        }
        stop.store(true, Ordering::Relaxed);
        assert!(reader.await.unwrap() > 0);
        let before = cat.snap.get(&cat.db).unwrap();
        assert!(Arc::ptr_eq(&before, &cat.snap.get(&cat.db).unwrap()));
        drop(before);
        inc.version = 300;
        cat.put_incident(&inc).await.unwrap();
        assert!(
            cat.snap.current.read().unwrap().is_none(),
            "a write drops the snapshot"
        );
        assert_eq!(cat.incident("c", "s").await.unwrap().unwrap().version, 301);

        // The race a reader can lose: it begins its snapshot, a write commits, and only
        // then does it offer the snapshot for sharing. It is not shared.
        let generation = cat.snap.generation.load(Ordering::Acquire);
        let Db::Writer(db) = &*cat.db else {
            panic!("opened as the writer")
        };
        let early = Arc::new(Snap::new(generation, db.begin_read().unwrap()));
        inc.version = 301;
        cat.put_incident(&inc).await.unwrap();
        cat.snap.offer(&early);
        assert_eq!(cat.incident("c", "s").await.unwrap().unwrap().version, 302);

        // While a commit is under way (published by redb, the generation not yet moved), a
        // read neither takes the shared snapshot nor shares its own: a read then could
        // otherwise see less than one before it.
        let shared = cat.snap.get(&cat.db).unwrap();
        cat.snap.committing.fetch_add(1, Ordering::AcqRel);
        let during = cat.snap.get(&cat.db).unwrap();
        assert!(!Arc::ptr_eq(&shared, &during));
        cat.snap.offer(&during);
        assert!(!Arc::ptr_eq(&during, &cat.snap.get(&cat.db).unwrap()));
        cat.snap.committing.fetch_sub(1, Ordering::AcqRel);
        assert!(Arc::ptr_eq(&shared, &cat.snap.get(&cat.db).unwrap()));
    }

    /// A reader opens the file while its writer has it open, sees the commits made before
    /// its first read (one snapshot), refuses writes naming the file, and takes the
    /// writes that only make reads cheaper as done; a second writer is refused; a reader
    /// of a missing file says so.
    #[tokio::test]
    async fn a_reader_beside_the_writer() {
        use crate::catalog::UpdateIndex;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.redb");
        let missing = EmbeddedCatalog::open_reader(&path).err().unwrap();
        assert!(
            missing.to_string().contains("no embedded catalog at"),
            "{missing}"
        );
        // Created, not yet written by its writer.
        std::fs::write(&path, b"").unwrap();
        let empty = EmbeddedCatalog::open_reader(&path).err().unwrap();
        assert!(empty.to_string().contains("yet"), "{empty}");
        std::fs::remove_file(&path).unwrap();
        let writer = EmbeddedCatalog::open(&path).unwrap();
        writer
            .commit(CommitBatch {
                segment_seq: Some(1),
                entries: vec![entry("1", "a", 10, &[]), entry("2", "a", 20, &[])],
                ..Default::default()
            })
            .await
            .unwrap();
        let reader = EmbeddedCatalog::open_reader(&path).unwrap();
        let seen = reader.record_updates("m", "a", i64::MAX).await.unwrap();
        assert_eq!(seen.len(), 2);
        writer
            .commit(CommitBatch {
                segment_seq: Some(2),
                entries: vec![entry("3", "a", 30, &[])],
                ..Default::default()
            })
            .await
            .unwrap();
        // One snapshot, as of its opening, for short reads and long ones alike.
        assert_eq!(
            reader.record_updates("m", "a", i64::MAX).await.unwrap(),
            seen
        );
        let window = reader
            .updates_in_window(0, i64::MAX, None, 100)
            .await
            .unwrap();
        assert_eq!(window.len(), 2, "{window:?}");
        // A new reader sees the new commit.
        let later = EmbeddedCatalog::open_reader(&path).unwrap();
        assert_eq!(
            later
                .record_updates("m", "a", i64::MAX)
                .await
                .unwrap()
                .len(),
            3
        );
        let refused = reader
            .commit(CommitBatch {
                segment_seq: Some(3),
                entries: vec![entry("4", "a", 40, &[])],
                ..Default::default()
            })
            .await
            .err()
            .unwrap();
        assert!(
            refused.to_string().contains("is open read-only")
                && refused.to_string().contains("catalog.redb"),
            "{refused}"
        );
        reader
            .keep_ref_updates(&[("m".into(), "acc".into())])
            .await
            .unwrap();
        reader
            .put_snapshots(&[snapshot_of_a(20, "2", 2)])
            .await
            .unwrap();
        assert!(
            writer.snapshots("m", "a").await.unwrap().is_empty(),
            "a reader writes no snapshot"
        );
        let second = EmbeddedCatalog::open(&path).err().unwrap();
        assert!(
            second.to_string().contains("is written by another process"),
            "{second}"
        );
    }

    /// A writer starting while a reader repairs the file (it holds the writer's lock for a
    /// moment, and says so in its repair marker) waits for the repair instead of refusing
    /// to start; a held file without a marker, or with only a stale one (a reader killed
    /// while repairing), is another writer's: refused after the short grace.
    #[test]
    fn a_starting_writer_waits_for_a_readers_repair() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.redb");
        drop(EmbeddedCatalog::open(&path).unwrap());
        // The repairing reader, as `open_reader` does it: its marker, the file opened as
        // its writer and closed, then the marker removed — longer than the grace.
        let marker = repair_marker(&path);
        assert!(
            (marker.to_string_lossy()).starts_with(&*path.to_string_lossy())
                && marker.to_string_lossy().contains(".repairing."),
            "{}",
            marker.display()
        );
        std::fs::write(&marker, b"").unwrap();
        let repairing = builder(CACHE_BYTES).create(&path).unwrap();
        let hold = REPAIR_GRACE + Duration::from_millis(500);
        let done = std::thread::spawn({
            let marker = marker.clone();
            move || {
                std::thread::sleep(hold);
                drop(repairing);
                std::fs::remove_file(marker).unwrap();
            }
        });
        let started = std::time::Instant::now();
        let writer = EmbeddedCatalog::open(&path).unwrap();
        assert!(started.elapsed() >= hold, "it waited for the repair");
        done.join().unwrap();
        // No marker: the lock is another writer's.
        let second = EmbeddedCatalog::open(&path).err().unwrap();
        assert!(
            second.to_string().contains("is written by another process"),
            "{second}"
        );
        // Only a stale marker (two minutes old): the same.
        let stale = repair_marker(&path);
        let f = std::fs::File::create(&stale).unwrap();
        f.set_modified(std::time::SystemTime::now() - Duration::from_secs(120))
            .unwrap();
        let started = std::time::Instant::now();
        let second = EmbeddedCatalog::open(&path).err().unwrap();
        assert!(
            second.to_string().contains("is written by another process"),
            "{second}"
        );
        assert!(
            started.elapsed() < REPAIR_WAIT / 2,
            "refused, not waited for"
        );
        drop(writer);
    }

    /// Which records have snapshots is known in memory (the lookup is skipped for the
    /// others), also after the file is opened again; and the `late` table records exactly
    /// the updates at or before their record's newest commit time.
    #[tokio::test]
    async fn snapshotted_records_and_late_updates_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.redb");
        let cat = EmbeddedCatalog::open(&path).unwrap();
        let entries = vec![
            entry("1", "a", 10, &[]),
            entry("2", "a", 20, &[]),
            entry("3", "b", 5, &[]),
        ];
        cat.commit(CommitBatch {
            segment_seq: Some(1),
            entries,
            ..Default::default()
        })
        .await
        .unwrap();
        let late_of = |cat: &EmbeddedCatalog, id: &str| {
            let tx = cat.db.begin_read().unwrap();
            let t = tx.open_table(LATE).unwrap();
            t.get(("m".as_bytes(), id.as_bytes()))
                .unwrap()
                .map(|v| v.value())
        };
        assert_eq!(late_of(&cat, "a"), None, "in order");
        cat.commit(CommitBatch {
            segment_seq: Some(2),
            entries: vec![entry("4", "a", 20, &[]), entry("5", "a", 30, &[])],
            ..Default::default()
        })
        .await
        .unwrap();
        assert_eq!(
            late_of(&cat, "a"),
            Some(3),
            "same time as the newest: may sort before it"
        );
        cat.put_snapshots(&[snapshot_of_a(20, "2", 2)])
            .await
            .unwrap();
        drop(cat);
        let cat = EmbeddedCatalog::open(&path).unwrap();
        let from = cat
            .record_updates_from_snapshot("m", "a", 100)
            .await
            .unwrap();
        assert_eq!(from.snapshot.map(|s| s.n), Some(2));
        let pos: Vec<_> = from
            .after
            .entries
            .iter()
            .map(|e| e.position.as_str())
            .collect();
        // "4" (time 20) sorts after "2"; it came late after the record had 2 updates, so
        // the 2 at or before the snapshot are counted, not taken on trust.
        assert_eq!((pos, from.after.at_or_before), (vec!["4", "5"], 2));
        let from = cat
            .record_updates_from_snapshot("m", "b", 100)
            .await
            .unwrap();
        assert_eq!((from.snapshot, from.after.entries.len()), (None, 1));

        // An update indexed by a build that does not keep `LATE` (a downgrade): the
        // snapshots are dropped at the next open, not trusted.
        {
            let tx = cat.db.begin_write().unwrap();
            tx.open_table(UPDATES)
                .unwrap()
                .insert(("s".as_bytes(), "old".as_bytes()), [0u8].as_slice())
                .unwrap();
            #[allow(clippy::disallowed_methods)]
            // Around the catalog on purpose: an older build's write.
            tx.commit().unwrap();
        }
        drop(cat);
        let cat = EmbeddedCatalog::open(&path).unwrap();
        assert_eq!(cat.snapshots("m", "a").await.unwrap(), vec![]);
        // A snapshot written now survives the next open: the marker holds.
        cat.put_snapshots(&[snapshot_of_a(30, "5", 5)])
            .await
            .unwrap();
        drop(cat);
        let cat = EmbeddedCatalog::open(&path).unwrap();
        assert_eq!(cat.snapshots("m", "a").await.unwrap().len(), 1);
    }

    /// Keeping a pair's reference updates (built from the history when asked, then
    /// maintained by commits) changes what reads cost, not what they return: the same
    /// answers as deriving them from the reference and record indexes.
    #[tokio::test]
    async fn kept_reference_updates_equal_derived_ones() {
        let dir = tempfile::tempdir().unwrap();
        let cat = EmbeddedCatalog::open(dir.path().join("catalog.redb")).unwrap();
        let commit = |seq: u64, entries: Vec<IndexEntry>| {
            cat.commit(CommitBatch {
                segment_seq: Some(seq),
                entries,
                ..Default::default()
            })
        };
        commit(
            1,
            vec![
                entry("1", "a", 10, &[("acc", "X")]),
                entry("2", "a", 20, &[]),
                entry("3", "b", 15, &[("acc", "X"), ("asset", "USD")]),
                entry("4", "c", 5, &[("acc", "Y")]),
            ],
        )
        .await
        .unwrap();
        let reads = |cat: EmbeddedCatalog| async move {
            let mut out = Vec::new();
            for (n, v) in [("acc", "X"), ("acc", "Y"), ("asset", "USD"), ("acc", "Z")] {
                for after in [None, Some((15, "s", "3")), Some((5, "s", "4"))] {
                    for up_to in [12, i64::MAX] {
                        out.push(
                            cat.ref_updates_after("m", n, v, after, up_to)
                                .await
                                .unwrap(),
                        );
                    }
                }
            }
            out
        };
        let rows = |cat: &EmbeddedCatalog| {
            let tx = cat.db.begin_read().unwrap();
            let n = tx.open_table(REF_UPDATES).unwrap().len().unwrap();
            let c = tx.open_table(REF_COUNTS).unwrap().len().unwrap();
            (n, c)
        };
        assert_eq!(rows(&cat), (0, 0), "no pair kept: no rows written");
        let derived = reads(cat.clone()).await;
        assert_eq!(derived[0].updates.len(), 1);
        assert_eq!(derived[1].updates.len(), 3);
        assert_eq!(derived[2].at_or_before, 2);
        cat.keep_ref_updates(&[("m".into(), "acc".into())])
            .await
            .unwrap();
        cat.keep_ref_updates(&[("m".into(), "acc".into())])
            .await
            .unwrap();
        assert_eq!(reads(cat.clone()).await, derived, "built from the history");
        // Maintained by later commits: a late update, a record newly referencing X.
        commit(
            2,
            vec![
                entry("5", "a", 1, &[]),
                entry("6", "c", 30, &[("acc", "X")]),
                entry("7", "d", 12, &[("acc", "Y")]),
            ],
        )
        .await
        .unwrap();
        let kept = reads(cat.clone()).await;
        // Only the kept pair's rows: `acc` = X (a ×3, b, c ×2) and Y (c ×2, d); none for
        // `asset`.
        assert_eq!(rows(&cat), (9, 2));
        let fresh = EmbeddedCatalog::open(dir.path().join("other.redb")).unwrap();
        for (seq, batch) in [
            (
                1,
                vec![
                    entry("1", "a", 10, &[("acc", "X")]),
                    entry("2", "a", 20, &[]),
                    entry("3", "b", 15, &[("acc", "X"), ("asset", "USD")]),
                    entry("4", "c", 5, &[("acc", "Y")]),
                ],
            ),
            (
                2,
                vec![
                    entry("5", "a", 1, &[]),
                    entry("6", "c", 30, &[("acc", "X")]),
                    entry("7", "d", 12, &[("acc", "Y")]),
                ],
            ),
        ] {
            fresh
                .commit(CommitBatch {
                    segment_seq: Some(seq),
                    entries: batch,
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        assert_eq!(
            kept,
            reads(fresh).await,
            "kept equals derived after commits"
        );
        assert_eq!(
            kept[1].updates.len(),
            6,
            "X: a's three updates, b's, and c's two (c now references X)"
        );
    }
}
