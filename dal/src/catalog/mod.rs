//! The catalog: the queryable index of the object store.
//!
//! It holds the per-record update index (time travel), master documents and the reference
//! index (joins), per-source progress and freshness watermarks, the segment ledger that
//! makes ingestion crash-safe, and (derived, written by readers) records' snapshots. Two backends pass `overseer_testkit::conformance::catalog_suite`:
//! [`embedded::EmbeddedCatalog`] (a redb file, no server; the default) and
//! [`postgres::PgCatalog`] (tokio-postgres, production).
//!
//! # Segment ledger
//! ```text
//!  reserve_segment ──> PUT segment ──> commit(batch) ──> publish ──> mark_published
//!     (pending)          (object)       (committed)                    (published)
//! ```
//! A crash leaves a segment *pending* (maybe written, never indexed) or *committed* but not
//! yet announced. On start, ingestion indexes every pending segment whose object exists
//! (abandoning the rest) and re-publishes committed ones, before any source runs. Sequence
//! numbers are never reused, so no key is ever written with different bytes.
//!
//! # Idempotence
//! An update is indexed once per `(source, position)`: the first commit wins, later ones are
//! ignored and reported as not new. A `reindex` that replays segments in sequence order
//! therefore rebuilds the same index.
//!
//! # Runner state
//! The processor runner keeps its escalation state here (DESIGN invariant 5), one
//! [`Incident`] per (check, subject), written by compare-and-set on a version so that two
//! runner instances (or a redelivery racing a retry) never both act on the same transition:
//! ```text
//!  incident() ──> decide ──> put_incident(read version) ──> Some: notify ──> put_incident
//!                                  │ None: someone else wrote; re-read and decide again
//! ```
//! Between a verdict and a successful notification the incident is *unsettled*
//! (`failing != notified_failing`, or a notice of unknown outcome: see
//! [`Incident::unsettled`]): [`IncidentStore::unsettled_incidents`] is the outbox a
//! restarted runner drains first. A small key/value table ([`MetaStore::get_meta`]) holds
//! runner cursors. Neither is part of the index, so [`UpdateIndex::dump`] leaves them out and
//! `reindex` does not rebuild them.

use std::sync::Arc;

use async_trait::async_trait;

use crate::Result;
use crate::update::{
    CatalogDump, CommitBatch, FromSnapshot, Incident, IndexEntry, MasterDoc, Micros,
    RefUpdatesAfter, Snapshot, SnapshotWrite, SourceState, UpdatesAfter,
};

#[cfg(feature = "embedded")]
pub mod embedded;
#[cfg(feature = "postgres")]
pub mod postgres;

/// The segment ledger that makes ingestion crash-safe, and the atomic commit of a batch
/// (index entries, masters, references and source progress together with the segment).
#[async_trait]
pub trait SegmentLedger: Send + Sync + 'static {
    /// Allocates the next segment sequence number (never reused, also after a crash) and
    /// records it as pending.
    async fn reserve_segment(&self) -> Result<u64>;

    /// Pending segments: reserved, never committed or abandoned. Ascending.
    async fn pending_segments(&self) -> Result<Vec<u64>>;

    /// Forgets a pending segment whose object was never written.
    async fn abandon_segment(&self, seq: u64) -> Result<()>;

    /// Applies a batch atomically: index entries (first commit of an identity wins), master
    /// documents and reference index, source progress (monotone), and marks the segment
    /// committed. Returns, per entry, whether it was newly indexed.
    ///
    /// A `segment_seq` that was never reserved (reindex) is accepted and moves the sequence
    /// past it. A batch with a `segment_seq` but no entries (its events were all quarantined
    /// or already indexed, so no segment object exists) releases the reservation instead of
    /// recording a committed segment.
    async fn commit(&self, batch: CommitBatch) -> Result<Vec<bool>>;

    /// Committed segments whose notifications were not yet all published. Ascending.
    async fn unpublished_segments(&self) -> Result<Vec<u64>>;

    /// Records that the notifications of these segments were published.
    async fn mark_published(&self, seqs: &[u64]) -> Result<()>;

    /// Committed segments with a sequence greater than `after`, ascending, at most `limit`.
    async fn committed_segments_after(&self, after: u64, limit: usize) -> Result<Vec<u64>>;

    /// A signal that changes after every commit, abandoned segment and heartbeat made
    /// through this handle (or its clones), so readers in the same process (the catalog
    /// feed, the runner's watermarks) wake at once instead of at their next poll. `None`:
    /// the backend gives none, readers poll. Writes by other processes are not signalled;
    /// readers keep polling as a backstop.
    fn commit_signal(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}

/// Waits for the next change of a [`SegmentLedger::commit_signal`]; never returns when
/// there is none (or its catalog is gone), for use in `tokio::select!`.
pub async fn committed(signal: &mut Option<tokio::sync::watch::Receiver<u64>>) {
    match signal {
        Some(rx) => {
            if rx.changed().await.is_err() {
                *signal = None;
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

/// The index of updates: per-record time travel, master documents, the reference index of
/// joins, windows in commit order.
#[async_trait]
pub trait UpdateIndex: Send + Sync + 'static {
    /// For each `(source, position)`, whether it is NOT yet indexed.
    async fn filter_new(&self, ids: &[(&str, &str)]) -> Result<Vec<bool>>;

    /// Index entries of one record with `event_time_us <= up_to_us`, in time-travel order
    /// (event time, then source, then position).
    async fn record_updates(
        &self,
        model: &str,
        record_id: &str,
        up_to_us: Micros,
    ) -> Result<Vec<IndexEntry>>;

    /// The updates of one record after a point of its history, for extending a fold of
    /// the record's first updates instead of redoing it: the index entries ordered after
    /// `after` (an [`IndexEntry::order_key`]) with `event_time_us <= up_to_us`, in
    /// time-travel order, and how many of the record's updates are ordered at or before
    /// `after` now. A caller that folded `n` updates ending at `after` knows its fold is
    /// still the record's history up to there exactly when that count is `n` (an update
    /// that arrived late, with an earlier commit time, makes it larger). Both halves come
    /// from one consistent read.
    ///
    /// `seen`: the count at or before `after` the caller saw in an earlier read of this
    /// catalog (its fold's `n`), if any. When the catalog can tell that no update of the
    /// record arrived late since it had `seen` updates (none with a commit time at or
    /// before its newest one), every update since sorts after `after`, so the count is
    /// `seen` without counting the rest of the history: a read far behind the head of a
    /// long history (a replay, an older time) costs the updates it returns. Otherwise, or
    /// if the backend cannot tell, it counts.
    async fn record_updates_after(
        &self,
        model: &str,
        record_id: &str,
        after: (Micros, &str, &str),
        up_to_us: Micros,
        seen: Option<u64>,
    ) -> Result<UpdatesAfter>;

    /// The master document of a record.
    async fn master(&self, model: &str, record_id: &str) -> Result<Option<MasterDoc>>;

    /// The updates of the records of `model` that ever referenced `name = value` — every
    /// update of such a record, also those before or without the reference — for keeping a
    /// join's members up to date instead of reading each member again: those ordered after
    /// `after` (an [`IndexEntry::order_key`]; `None`: from the first) with
    /// `event_time_us <= up_to_us`, in time-travel order, and how many of them are ordered
    /// at or before `after` now. A caller that saw `n` of them up to `after` knows that no
    /// member changed at or before `after` since exactly when that count is `n`; a member
    /// that changed after it is among the updates returned (or after `up_to_us`). Both
    /// halves come from one consistent read.
    async fn ref_updates_after(
        &self,
        model: &str,
        name: &str,
        value: &str,
        after: Option<(Micros, &str, &str)>,
        up_to_us: Micros,
    ) -> Result<RefUpdatesAfter>;

    /// Keeps the lists [`UpdateIndex::ref_updates_after`] reads for these (model, reference
    /// name) pairs as an index — built now from the history, then maintained by every
    /// commit — so a read costs what changed since its point, not a range of the record
    /// index per record that ever referenced the value. Only what a read costs depends on
    /// it, never what it returns: a backend may derive every list on each read (the
    /// PostgreSQL catalog does, in one statement). Idempotent; pairs are never dropped.
    async fn keep_ref_updates(&self, pairs: &[(String, String)]) -> Result<()> {
        let _ = pairs;
        Ok(())
    }

    /// Ids of the records of `model` that ever referenced `name = value`, ascending.
    async fn records_by_ref(&self, model: &str, name: &str, value: &str) -> Result<Vec<String>>;

    /// Index entries with `from_us <= event_time_us <= to_us`, in time-travel order, strictly
    /// after `after` (an `order_key` of a previous page) if given, at most `limit`.
    async fn updates_in_window(
        &self,
        from_us: Micros,
        to_us: Micros,
        after: Option<(Micros, String, String)>,
        limit: usize,
    ) -> Result<Vec<IndexEntry>>;

    /// The whole logical index in canonical order (for reindex comparison and tests).
    /// Runner state (incidents, meta) is not part of it.
    async fn dump(&self) -> Result<CatalogDump>;
}

/// Snapshots: records' folds persisted beside the history, so that reading a long-lived
/// record as of a time folds at most the updates since the nearest snapshot before it, not
/// its whole history — also in a process that never read the record before (a restarted or
/// rebalanced runner, `overseer view`, a replay).
///
/// They are derived data, like a cache: written by readers (the DAL) as they fold, never by
/// ingestion; not part of [`UpdateIndex::dump`]; rebuilt by reading (`overseer reindex`
/// does so for every long record). Every use is validated against the index (see
/// [`crate::state`]), so a snapshot made wrong by an update that arrived late, or by other
/// builders, costs a fold of the history, never a wrong state. Writers may race: the last
/// write of a key wins, and either is valid for what it says.
#[async_trait]
pub trait SnapshotStore: UpdateIndex {
    /// The record's snapshot ordered last among those whose last update has a commit time
    /// at or before `up_to_us`, if any.
    async fn snapshot_at_or_before(
        &self,
        model: &str,
        record_id: &str,
        up_to_us: Micros,
    ) -> Result<Option<Snapshot>>;

    /// What reading a record as of `up_to_us` needs, from its nearest snapshot: the
    /// snapshot [`SnapshotStore::snapshot_at_or_before`] gives, and
    /// [`UpdateIndex::record_updates_after`] its last update and count (from the
    /// first update when there is none: then `at_or_before` is 0). One call for a record
    /// with or without snapshots; the embedded catalog answers from one consistent read. (A
    /// snapshot is validated by the count either way, so two reads are correct too.)
    async fn record_updates_from_snapshot(
        &self,
        model: &str,
        record_id: &str,
        up_to_us: Micros,
    ) -> Result<FromSnapshot> {
        let snapshot = self
            .snapshot_at_or_before(model, record_id, up_to_us)
            .await?;
        let from = snapshot
            .as_ref()
            .map_or((Micros::MIN, "", ""), Snapshot::order_key);
        let seen = snapshot.as_ref().map(|s| s.n);
        let after = self
            .record_updates_after(model, record_id, from, up_to_us, seen)
            .await?;
        Ok(FromSnapshot { snapshot, after })
    }

    /// Stores snapshots (a key already stored is overwritten), each record's group after
    /// deleting those its `clear_up_to` names. Not atomic.
    async fn put_snapshots(&self, writes: &[SnapshotWrite]) -> Result<()>;

    /// Every snapshot of a record, in time-travel order (tests, `overseer history`).
    async fn snapshots(&self, model: &str, record_id: &str) -> Result<Vec<Snapshot>>;
}

/// Per-source progress and freshness watermarks.
#[async_trait]
pub trait SourceProgress: Send + Sync + 'static {
    /// Progress of every source, by name.
    async fn source_states(&self) -> Result<Vec<SourceState>>;

    /// Moves a source's watermark forward without new events (idle-source heartbeat).
    async fn heartbeat(&self, source: &str, watermark_us: Micros, now_us: Micros) -> Result<()>;

    /// Records claims for lanes of a source that several instances share (a Kafka topic's
    /// partitions, split across a consumer group): each lane is complete up to its claim,
    /// whoever read it. A claim lower than the stored one changes nothing (a lane never
    /// goes back); a lane named twice counts its highest claim. The lanes in `retire` are
    /// dropped first (a topic left the source's configuration).
    ///
    /// A source with lanes is complete up to the lowest of them, and the same write raises
    /// the source's watermark ([`SourceProgress::source_states`]) to that lowest claim (a
    /// source not recorded yet is then). It never lowers it: a lane that appears later
    /// (a topic grew) at an older claim holds the watermark where it is until it passes
    /// it. Lane claims are evidence, not history: a reindex drops them.
    async fn claim_lanes(
        &self,
        source: &str,
        claims: &[(String, Micros)],
        retire: &[String],
        now_us: Micros,
    ) -> Result<()>;

    /// A source's lane claims, ordered by lane.
    async fn lane_claims(&self, source: &str) -> Result<Vec<(String, Micros)>>;
}

/// The runner's escalation state: one [`Incident`] per (check, subject), by
/// compare-and-set.
#[async_trait]
pub trait IncidentStore: Send + Sync + 'static {
    /// The escalation state of one (check, subject), if it was ever stored.
    async fn incident(&self, check: &str, subject: &str) -> Result<Option<Incident>>;

    /// Compare-and-set: stores `inc` only if the stored version of its (check, subject) is
    /// `inc.version` (absent counts as 0), under version `inc.version + 1`, and returns
    /// `Some(new version)`. On a conflict nothing is written and it returns `None`: the
    /// caller re-reads and decides again.
    async fn put_incident(&self, inc: &Incident) -> Result<Option<u64>>;

    /// Incidents owing a notification (`failing != notified_failing`), ordered by
    /// (check, subject), at most `limit`: the outbox a restarted runner drains first.
    async fn unsettled_incidents(&self, limit: usize) -> Result<Vec<Incident>>;

    /// Every stored incident, or only the failing ones, ordered by (check, subject).
    async fn incidents(&self, failing_only: bool) -> Result<Vec<Incident>>;

    /// Incidents owing a run of a stale evaluation (`rearm_eval_us != 0`), ordered by
    /// (check, subject): what a starting runner re-arms. The default filters
    /// [`IncidentStore::incidents`]; a server backend reads an index instead.
    async fn rearmed_incidents(&self) -> Result<Vec<Incident>> {
        let mut all = self.incidents(false).await?;
        all.retain(|i| i.rearm_eval_us != 0);
        Ok(all)
    }
}

/// A small key/value table of runner cursors.
#[async_trait]
pub trait MetaStore: Send + Sync + 'static {
    /// A value of the runner's key/value table (cursors), if set.
    async fn get_meta(&self, key: &str) -> Result<Option<String>>;

    /// Sets (or overwrites) a value of the runner's key/value table, durably.
    async fn put_meta(&self, key: &str, value: &str) -> Result<()>;

    /// Sets `key` to `value` unless it is set, atomically; returns the value it holds
    /// after (the first writer's, when several race).
    async fn init_meta(&self, key: &str, value: &str) -> Result<String>;
}

/// The catalog seam: the six concerns above, each with its own conformance suite in
/// `overseer_testkit::conformance`, in one backend. Components that need one concern can
/// take just that trait (e.g. `&dyn IncidentStore`).
pub trait Catalog:
    SegmentLedger + UpdateIndex + SnapshotStore + SourceProgress + IncidentStore + MetaStore
{
    /// A short human description for logs.
    fn describe(&self) -> String;

    /// The local file holding the catalog, if it is on this machine's disk (what
    /// ingestion's free-space check watches).
    fn local_file(&self) -> Option<&std::path::Path> {
        None
    }
}

/// Shared handle to a catalog.
pub type DynCatalog = Arc<dyn Catalog>;

/// The catalog traits, for calling their methods on any catalog (`DynCatalog` included):
/// `use overseer_dal::catalog::prelude::*;`.
pub mod prelude {
    pub use super::{
        Catalog, IncidentStore, MetaStore, SegmentLedger, SnapshotStore, SourceProgress,
        UpdateIndex,
    };
}
