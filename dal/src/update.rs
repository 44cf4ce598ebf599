//! What the catalog knows about each update, and the documents derived from updates.
//!
//! An update's identity is `(source, position)`: indexing is keyed on it, so a redelivered
//! event (same source, same position) never creates a second history entry.

use std::collections::BTreeSet;

pub use overseer_protos::storage::{
    Op, Reference, SegmentFooter, SourceCheckpoint, UpdateNotification, UpdateRecord,
};

/// Microseconds since the Unix epoch.
pub type Micros = i64;

/// The event times an update may carry: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999Z
/// (the range of `google.protobuf.Timestamp`, and what every time format here can print).
/// A time outside it is a broken upstream field, not a time: the update is quarantined.
pub const EVENT_TIME_RANGE: std::ops::RangeInclusive<Micros> =
    -62_135_596_800_000_000..=253_402_300_799_999_999;

/// Where an update's bytes live: a segment object and the byte range of its record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UpdateLoc {
    pub segment_seq: u64,
    pub offset: u32,
    pub len: u32,
}

/// One row of the per-record update index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub source: String,
    pub position: String,
    pub model: String,
    pub record_id: String,
    pub op: Op,
    /// Source commit time: what time travel orders and filters by.
    pub event_time_us: Micros,
    /// When ingestion received the event; kept for time-to-detect.
    pub ingest_time_us: Micros,
    pub loc: UpdateLoc,
    /// References extracted from this update (name, value); folded into the master document.
    pub refs: Vec<(String, String)>,
}

impl IndexEntry {
    /// Builds the entry for a record stored at `loc`.
    pub fn from_record(rec: &UpdateRecord, loc: UpdateLoc) -> Self {
        IndexEntry {
            source: rec.source.clone(),
            position: rec.position.clone(),
            model: rec.model.clone(),
            record_id: rec.record_id.clone(),
            op: rec.op(),
            event_time_us: rec.event_time_us,
            ingest_time_us: rec.ingest_time_us,
            loc,
            refs: rec
                .refs
                .iter()
                .map(|r| (r.name.clone(), r.value.clone()))
                .collect(),
        }
    }

    /// The notification published once this entry is durable and indexed.
    pub fn notification(&self) -> UpdateNotification {
        UpdateNotification {
            model: self.model.clone(),
            record_id: self.record_id.clone(),
            source: self.source.clone(),
            position: self.position.clone(),
            op: self.op as i32,
            event_time_us: self.event_time_us,
            segment_seq: self.loc.segment_seq,
            offset: self.loc.offset,
            length: self.loc.len,
            ingest_time_us: self.ingest_time_us,
            refs: self
                .refs
                .iter()
                .map(|(name, value)| Reference {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
        }
    }

    /// Time-travel order: commit time, ties broken by source then source position.
    pub fn order_key(&self) -> (Micros, &str, &str) {
        (self.event_time_us, &self.source, &self.position)
    }
}

/// What [`crate::catalog::UpdateIndex::record_updates_after`] returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpdatesAfter {
    /// The record's updates ordered after the given point, up to the given time.
    pub entries: Vec<IndexEntry>,
    /// How many of the record's updates are ordered at or before the given point.
    pub at_or_before: u64,
}

/// A record's fold persisted beside its history (a *snapshot*): the state after its first
/// `n` updates in time-travel order, the last of which is `(event_time_us, source,
/// position)`. Derived data, like a cache: the DAL writes it when it has folded that far,
/// validates it on every use (the record must still have exactly `n` updates at or before
/// that point) and folds on from it. The catalog stores `body` as given. See
/// [`crate::catalog::SnapshotStore`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub model: String,
    pub record_id: String,
    pub event_time_us: Micros,
    pub source: String,
    pub position: String,
    /// Updates folded, the last one included.
    pub n: u64,
    /// What folded it (the DAL's builders' fingerprint): a snapshot made by other builders
    /// is not used.
    pub fold: u64,
    /// The folded state, encoded by the DAL.
    pub body: Vec<u8>,
}

impl Snapshot {
    /// Its place in time-travel order: that of its last update.
    pub fn order_key(&self) -> (Micros, &str, &str) {
        (self.event_time_us, &self.source, &self.position)
    }
}

/// What [`crate::catalog::SnapshotStore::record_updates_from_snapshot`] returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FromSnapshot {
    /// The record's snapshot ordered last at or before the time, if any.
    pub snapshot: Option<Snapshot>,
    /// The record's updates after it (all of them when there is none) up to the time, and
    /// how many are ordered at or before it.
    pub after: UpdatesAfter,
}

/// Snapshots of one record to store ([`crate::catalog::SnapshotStore::put_snapshots`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotWrite {
    pub model: String,
    pub record_id: String,
    /// First delete the record's stored snapshots ordered at or before this point (an
    /// order key: event time, source, position): those a read found unusable (an update
    /// arrived late before them, or other builders folded them).
    pub clear_up_to: Option<(Micros, String, String)>,
    /// In time-travel order.
    pub snapshots: Vec<Snapshot>,
}

/// One update of a record that ever referenced a `(name, value)`: what
/// [`crate::catalog::UpdateIndex::ref_updates_after`] lists.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RefUpdate {
    pub event_time_us: Micros,
    pub source: String,
    pub position: String,
    pub record_id: String,
}

impl RefUpdate {
    /// Its place in time-travel order (as [`IndexEntry::order_key`]).
    pub fn order_key(&self) -> (Micros, &str, &str) {
        (self.event_time_us, &self.source, &self.position)
    }
}

/// What [`crate::catalog::UpdateIndex::ref_updates_after`] returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RefUpdatesAfter {
    /// The updates ordered after the given point, up to the given time, in time-travel
    /// order.
    pub updates: Vec<RefUpdate>,
    /// How many of the updates of the records that ever referenced the value are ordered at
    /// or before the given point.
    pub at_or_before: u64,
}

/// The master document of a record: every reference ever seen in its updates.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct MasterDoc {
    pub model: String,
    pub record_id: String,
    pub refs: BTreeSet<(String, String)>,
    /// Number of indexed updates of the record.
    pub updates: u64,
    pub first_event_us: Micros,
    pub last_event_us: Micros,
}

impl MasterDoc {
    /// Folds one more update into the document.
    pub fn absorb(&mut self, e: &IndexEntry) {
        if self.updates == 0 {
            self.first_event_us = e.event_time_us;
            self.last_event_us = e.event_time_us;
        } else {
            self.first_event_us = self.first_event_us.min(e.event_time_us);
            self.last_event_us = self.last_event_us.max(e.event_time_us);
        }
        self.updates += 1;
        self.refs.extend(e.refs.iter().cloned());
    }
}

/// Progress and freshness of one source.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SourceState {
    pub source: String,
    /// Source-specific resume point (file byte offset, LSN, ...); informational for sources
    /// that keep their own (Kafka group offsets, replication slot).
    pub checkpoint: String,
    /// The time up to which the source is known complete.
    pub watermark_us: Micros,
    /// Commit time of the newest event ingested from the source.
    pub last_event_us: Micros,
    /// Wall-clock time of the last commit or heartbeat.
    pub updated_us: Micros,
}

/// Progress of one source reported with a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    pub source: String,
    pub checkpoint: String,
    pub watermark_us: Micros,
    pub last_event_us: Micros,
    /// Claims for lanes the source shares with other instances, recorded as
    /// [`crate::catalog::SourceProgress::claim_lanes`] does (retiring none); usually empty.
    pub lanes: Vec<(String, Micros)>,
}

/// Everything one durable batch adds to the catalog, applied atomically.
#[derive(Clone, Debug, Default)]
pub struct CommitBatch {
    /// The segment holding `entries`; `None` for a batch with nothing to store
    /// (only quarantined or already-indexed events), which still moves progress.
    pub segment_seq: Option<u64>,
    pub entries: Vec<IndexEntry>,
    pub progress: Vec<Progress>,
    /// Events of the batch sent to the dead-letter location.
    pub quarantined: u64,
    pub now_us: Micros,
}

/// The whole logical content of a catalog's index, in a canonical order, for comparing a
/// live catalog with a `reindex` of the object store.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct CatalogDump {
    /// Sorted by (source, position).
    pub entries: Vec<IndexEntry>,
    /// Sorted by (model, record_id).
    pub masters: Vec<MasterDoc>,
    /// (model, ref name, ref value, record id), sorted.
    pub refs: Vec<(String, String, String, String)>,
}

/// Wall-clock now in microseconds.
pub fn now_us() -> Micros {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as Micros)
        .unwrap_or(0)
}

/// RFC 3339 in UTC with microseconds (`2024-01-02T03:04:05.000000Z`), for logs and
/// reports; a time outside chrono's range as its microseconds.
pub fn rfc3339(us: Micros) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_else(|| format!("{us}us since the epoch"))
}

/// Op from its stored byte; unknown values map to `Unspecified`.
pub fn op_from_u8(v: u8) -> Op {
    Op::try_from(v as i32).unwrap_or(Op::Unspecified)
}

/// The escalation state of one (check, subject): what the latest verdict says, and what the
/// escalation target was last told. They differ only while a notification is owed (an outbox).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Incident {
    pub check: String,
    pub subject: String,
    /// Whether the latest applied verdict is a failure.
    pub failing: bool,
    /// What the escalation target was last told successfully: an open (triggered) incident or not.
    pub notified_failing: bool,
    /// Evaluation time of the verdict the target was last told about (0: told nothing yet).
    pub notified_eval_us: Micros,
    /// While an outbox is delivering this incident's notice, the wall-clock time until which
    /// it holds the delivery (0: nobody does). Other outboxes leave the incident alone until
    /// then, so one incident's notices reach the target one at a time, in order. Non-zero
    /// and past (a dead outbox's lease, or [`MAYBE_TOLD`] after a failed send), it says a
    /// notice may have reached the target unrecorded: the incident is owed the notice of
    /// its current state.
    pub sending_until_us: Micros,
    /// An evaluation at this time ran on sources not yet complete up to it (forced by the
    /// check's max delay: a `stale` verdict) and is owed a run once they are (0: none). A
    /// verdict at or after it clears it. Kept here so a restart re-arms it.
    pub rearm_eval_us: Micros,
    /// Evaluation time of the latest applied verdict; verdicts for earlier times are ignored.
    pub last_eval_us: Micros,
    /// Evaluation time at which the current failing (or passing) streak began.
    pub since_us: Micros,
    /// The latest failure's message (empty while passing).
    pub message: String,
    /// The latest failure's details and evidence, as JSON text.
    pub details: String,
    /// Wall-clock time of the last write.
    pub updated_us: Micros,
    /// Optimistic concurrency: the version this value was read at (0: never stored). Each
    /// successful write stores version + 1.
    pub version: u64,
}

/// [`Incident::sending_until_us`] after a send failed: nobody holds the delivery, and the
/// target may have received the notice.
pub const MAYBE_TOLD: Micros = 1;

impl Incident {
    /// Whether a notification is owed: the target was not yet told the latest state, or a
    /// notice's outcome is unknown (a delivery held or cut short, or one that failed after
    /// it may have reached the target): then the notice of the current state is sent, to
    /// be sure. (Without the second, a trigger the target applied but nobody recorded,
    /// followed by a pass, would read settled and the target would hold the incident open.)
    pub fn unsettled(&self) -> bool {
        self.failing != self.notified_failing || self.sending_until_us != 0
    }
}
