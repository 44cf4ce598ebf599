//! PostgreSQL catalog (production): tokio-postgres, one schema per deployment.
//!
//! # Layout
//! ```text
//!  segment_seq (sequence) ──> segments(seq, state 0 pending / 1 committed / 2 published)
//!  updates(source, position PK, model, record_id, op, times, segment loc, refs blob)
//!     ├─ updates_time_travel (model, record_id, event_time_us, source, position)
//!     └─ updates_window      (event_time_us, source, position)
//!  masters(model, record_id PK, update count, first/last event time)
//!  refs(model, name, value, record_id PK) ─ refs_by_record (model, record_id)
//!  source_state(source PK, checkpoint, watermark, last event, updated)
//!  source_lanes(source, lane PK, watermark, updated)
//!  incidents(check_name, subject PK, verdict and notified state, times, message, details,
//!            version) ─ incidents_unsettled, incidents_failing (partial indexes)
//!  meta_kv(name PK, value)
//!  schema_migrations(version PK, applied_at)
//! ```
//! Every string the engine hands us (source, position, model, record id, reference names and
//! values, checkpoints) is stored as `BYTEA`: record ids are arbitrary and may hold NUL,
//! which `TEXT` rejects, and `BYTEA` compares byte-wise, which is exactly Rust's `str` order
//! (UTF-8 bytes), so `ORDER BY` gives the orders the trait promises without collations.
//! The master document's references are not copied into `masters`: `refs` is both the
//! reference index and the master's reference set (read by `(model, record_id)`).
//! Incidents (runner state) are written by compare-and-set on `version` with single
//! statements: an `INSERT .. ON CONFLICT DO NOTHING` for version 0, otherwise an `UPDATE ..
//! WHERE version = $read`, which under READ COMMITTED re-checks the condition on the row a
//! concurrent writer just committed, so of two writers at one version exactly one matches.
//!
//! # Migrations
//! Versioned SQL embedded below ([`MIGRATIONS`]) is applied in order, in one transaction
//! holding a transaction-scoped advisory lock derived from the schema name, so instances
//! starting together serialise: the first migrates, the others find the versions applied.
//!
//! # Commit
//! One transaction and a handful of multi-row statements (`UNNEST` of arrays), whatever the
//! batch size: the updates insert (`ON CONFLICT DO NOTHING RETURNING`) tells which entries
//! are new, and only those feed the masters upsert and the refs insert. Rows are sent in key
//! order so concurrent commits from several instances lock rows in the same order (no
//! deadlock cycles between them). Independent statements are pipelined.
//!
//! # Connections
//! [`SHARED_CONNS`] shared ones for single statements (reads, reservations, heartbeats;
//! callers take them in turn, and tokio-postgres pipelines concurrent calls on each; one
//! alone kept the server to one backend, i.e. one core, under the runner's view reads) and
//! an exclusive one for transactions.
//! A connection that dies makes the call fail with a *transient* error; the next call opens
//! a fresh connection.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard, RwLock};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, IsolationLevel, NoTls, Row, Statement};

use super::{
    Catalog, IncidentStore, MetaStore, SegmentLedger, SnapshotStore, SourceProgress, UpdateIndex,
};
use crate::update::{
    CatalogDump, CommitBatch, FromSnapshot, Incident, IndexEntry, MasterDoc, Micros, RefUpdate,
    RefUpdatesAfter, Snapshot, SnapshotWrite, SourceState, UpdateLoc, UpdatesAfter, op_from_u8,
};
use crate::{Error, Result};

/// Schema migrations, applied in order; never edit one that shipped, append a new version.
/// `{s}` stands for the quoted schema name.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        r#"
CREATE SEQUENCE {s}.segment_seq AS BIGINT MINVALUE 1 START 1;

-- state: 0 pending (reserved), 1 committed (indexed), 2 published (notifications sent)
CREATE TABLE {s}.segments (
    seq          BIGINT   PRIMARY KEY,
    state        SMALLINT NOT NULL,
    entries      INTEGER  NOT NULL DEFAULT 0,
    quarantined  BIGINT   NOT NULL DEFAULT 0,
    committed_us BIGINT
);
-- pending and unpublished segments are few; published ones accumulate forever
CREATE INDEX segments_open ON {s}.segments (state, seq) WHERE state < 2;

CREATE TABLE {s}.updates (
    source         BYTEA    NOT NULL,
    position       BYTEA    NOT NULL,
    model          BYTEA    NOT NULL,
    record_id      BYTEA    NOT NULL,
    op             SMALLINT NOT NULL,
    event_time_us  BIGINT   NOT NULL,
    ingest_time_us BIGINT   NOT NULL,
    segment_seq    BIGINT   NOT NULL,
    seg_offset     BIGINT   NOT NULL,
    seg_len        BIGINT   NOT NULL,
    -- the entry's (name, value) references in order, length-prefixed (see encode_refs)
    refs           BYTEA    NOT NULL,
    PRIMARY KEY (source, position)
);
CREATE INDEX updates_time_travel
    ON {s}.updates (model, record_id, event_time_us, source, position);
CREATE INDEX updates_window ON {s}.updates (event_time_us, source, position);

CREATE TABLE {s}.masters (
    model          BYTEA  NOT NULL,
    record_id      BYTEA  NOT NULL,
    updates        BIGINT NOT NULL,
    first_event_us BIGINT NOT NULL,
    last_event_us  BIGINT NOT NULL,
    PRIMARY KEY (model, record_id)
);

CREATE TABLE {s}.refs (
    model     BYTEA NOT NULL,
    name      BYTEA NOT NULL,
    value     BYTEA NOT NULL,
    record_id BYTEA NOT NULL,
    PRIMARY KEY (model, name, value, record_id)
);
CREATE INDEX refs_by_record ON {s}.refs (model, record_id);

CREATE TABLE {s}.source_state (
    source        BYTEA  PRIMARY KEY,
    checkpoint    BYTEA  NOT NULL,
    watermark_us  BIGINT NOT NULL,
    last_event_us BIGINT NOT NULL,
    updated_us    BIGINT NOT NULL
);
"#,
    ),
    (
        2,
        r#"
-- Processor-runner escalation state, one row per (check, subject); written by
-- compare-and-set on version (stored versions start at 1; 0 means never stored).
CREATE TABLE {s}.incidents (
    check_name       BYTEA   NOT NULL,
    subject          BYTEA   NOT NULL,
    failing          BOOLEAN NOT NULL,
    notified_failing BOOLEAN NOT NULL,
    last_eval_us     BIGINT  NOT NULL,
    since_us         BIGINT  NOT NULL,
    message          BYTEA   NOT NULL,
    details          BYTEA   NOT NULL,
    updated_us       BIGINT  NOT NULL,
    version          BIGINT  NOT NULL CHECK (version > 0),
    PRIMARY KEY (check_name, subject)
);
-- the outbox and the open incidents are few; settled, passing ones accumulate
CREATE INDEX incidents_unsettled ON {s}.incidents (check_name, subject)
    WHERE failing <> notified_failing;
CREATE INDEX incidents_failing ON {s}.incidents (check_name, subject) WHERE failing;

-- runner cursors and other small named values
CREATE TABLE {s}.meta_kv (
    name  BYTEA PRIMARY KEY,
    value BYTEA NOT NULL
);
"#,
    ),
    (
        3,
        r#"
-- Records' folds persisted beside the history (derived data, see SnapshotStore), keyed by
-- the last update folded.
CREATE TABLE {s}.snapshots (
    model         BYTEA  NOT NULL,
    record_id     BYTEA  NOT NULL,
    event_time_us BIGINT NOT NULL,
    source        BYTEA  NOT NULL,
    position      BYTEA  NOT NULL,
    n             BIGINT NOT NULL,
    fold          BIGINT NOT NULL,
    body          BYTEA  NOT NULL,
    PRIMARY KEY (model, record_id, event_time_us, source, position)
);
"#,
    ),
    (
        4,
        r#"
-- What the escalation target was last told (for which evaluation time), the delivery an
-- outbox holds while it sends (so one incident's notices go out one at a time), and the
-- stale evaluation owed a run once its sources are complete.
ALTER TABLE {s}.incidents
    ADD COLUMN notified_eval_us BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN sending_until_us BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN rearm_eval_us    BIGINT NOT NULL DEFAULT 0;
"#,
    ),
    (
        5,
        r#"
-- the stale evaluations owed a run are few; a starting runner reads them
CREATE INDEX incidents_rearmed ON {s}.incidents (check_name, subject)
    WHERE rearm_eval_us <> 0;
"#,
    ),
    (
        6,
        r#"
-- Claims for the lanes of a source that several ingest instances share (a Kafka topic's
-- partitions across a consumer group): the source is complete up to the lowest.
CREATE TABLE {s}.source_lanes (
    source       BYTEA  NOT NULL,
    lane         BYTEA  NOT NULL,
    watermark_us BIGINT NOT NULL,
    updated_us   BIGINT NOT NULL,
    PRIMARY KEY (source, lane)
);
"#,
    ),
    (
        7,
        r#"
-- A notice of unknown outcome (a delivery held or cut short, a send failed after it may
-- have reached the target) also owes the notice of the incident's current state.
DROP INDEX IF EXISTS {s}.incidents_unsettled;
CREATE INDEX incidents_unsettled ON {s}.incidents (check_name, subject)
    WHERE failing <> notified_failing OR sending_until_us <> 0;
"#,
    ),
];

/// Columns of a snapshot, in the order [`snapshot_from_row`] reads them.
const SNAPSHOT_COLS: &str = "model, record_id, event_time_us, source, position, n, fold, body";

/// Columns of an incident, in the order [`incident_from_row`] reads them.
const INCIDENT_COLS: &str = "check_name, subject, failing, notified_failing, last_eval_us, \
                             since_us, message, details, updated_us, version, \
                             notified_eval_us, sending_until_us, rearm_eval_us";

/// Columns of an index entry, in the order [`entry_from_row`] reads them.
const ENTRY_COLS: &str = "source, position, model, record_id, op, event_time_us, \
                          ingest_time_us, segment_seq, seg_offset, seg_len, refs";

/// The statements of the catalog, prepared on every connection.
#[derive(Clone, Copy, Debug)]
enum Q {
    Reserve,
    Pending,
    Abandon,
    FilterKnown,
    InsertUpdates,
    UpsertMasters,
    InsertRefs,
    UpsertProgress,
    MarkCommitted,
    InsertCommitted,
    SeqLock,
    BumpSeq,
    Unpublished,
    MarkPublished,
    CommittedAfter,
    RecordUpdates,
    RecordAfter,
    RefAfter,
    Master,
    MasterRefs,
    ByRef,
    Window,
    WindowAfter,
    SourceStates,
    Heartbeat,
    ClaimLanes,
    RetireLanes,
    FoldLanes,
    LaneClaims,
    DumpEntries,
    DumpMasters,
    DumpRefs,
    IncidentGet,
    IncidentInsert,
    IncidentUpdate,
    IncidentsUnsettled,
    IncidentsAll,
    IncidentsFailing,
    IncidentsRearmed,
    MetaGet,
    MetaPut,
    MetaInit,
    SnapshotBefore,
    SnapshotsOf,
    SnapshotClear,
    SnapshotPut,
    RecordFromSnapshot,
}

impl Q {
    const ALL: [Q; 47] = [
        Q::Reserve,
        Q::Pending,
        Q::Abandon,
        Q::FilterKnown,
        Q::InsertUpdates,
        Q::UpsertMasters,
        Q::InsertRefs,
        Q::UpsertProgress,
        Q::MarkCommitted,
        Q::InsertCommitted,
        Q::SeqLock,
        Q::BumpSeq,
        Q::Unpublished,
        Q::MarkPublished,
        Q::CommittedAfter,
        Q::RecordUpdates,
        Q::RecordAfter,
        Q::RefAfter,
        Q::Master,
        Q::MasterRefs,
        Q::ByRef,
        Q::Window,
        Q::WindowAfter,
        Q::SourceStates,
        Q::Heartbeat,
        Q::ClaimLanes,
        Q::RetireLanes,
        Q::FoldLanes,
        Q::LaneClaims,
        Q::DumpEntries,
        Q::DumpMasters,
        Q::DumpRefs,
        Q::IncidentGet,
        Q::IncidentInsert,
        Q::IncidentUpdate,
        Q::IncidentsUnsettled,
        Q::IncidentsAll,
        Q::IncidentsFailing,
        Q::IncidentsRearmed,
        Q::MetaGet,
        Q::MetaPut,
        Q::MetaInit,
        Q::SnapshotBefore,
        Q::SnapshotsOf,
        Q::SnapshotClear,
        Q::SnapshotPut,
        Q::RecordFromSnapshot,
    ];

    /// The SQL, with `{s}` for the quoted schema, `{cols}` for [`ENTRY_COLS`], `{icols}`
    /// for [`INCIDENT_COLS`] and `{scols}` for [`SNAPSHOT_COLS`].
    fn template(self) -> &'static str {
        match self {
            // ON CONFLICT: a reindex may have committed a sequence number the sequence
            // has not reached yet when instances race; just draw the next one.
            Q::Reserve => {
                "INSERT INTO {s}.segments (seq, state) VALUES (nextval('{s}.segment_seq'), 0) \
                 ON CONFLICT (seq) DO NOTHING RETURNING seq"
            }
            Q::Pending => "SELECT seq FROM {s}.segments WHERE state = 0 ORDER BY seq",
            Q::Abandon => "DELETE FROM {s}.segments WHERE seq = $1 AND state = 0",
            Q::FilterKnown => {
                "SELECT i.ord FROM UNNEST($1::bytea[], $2::bytea[]) WITH ORDINALITY \
                 AS i(source, position, ord) WHERE EXISTS (SELECT 1 FROM {s}.updates u \
                 WHERE u.source = i.source AND u.position = i.position)"
            }
            Q::InsertUpdates => {
                "INSERT INTO {s}.updates ({cols}) SELECT * FROM UNNEST($1::bytea[], \
                 $2::bytea[], $3::bytea[], $4::bytea[], $5::int2[], $6::int8[], $7::int8[], \
                 $8::int8[], $9::int8[], $10::int8[], $11::bytea[]) \
                 ON CONFLICT (source, position) DO NOTHING RETURNING source, position"
            }
            Q::UpsertMasters => {
                "INSERT INTO {s}.masters AS m (model, record_id, updates, first_event_us, \
                 last_event_us) SELECT * FROM UNNEST($1::bytea[], $2::bytea[], $3::int8[], \
                 $4::int8[], $5::int8[]) ON CONFLICT (model, record_id) DO UPDATE SET \
                 updates = m.updates + EXCLUDED.updates, \
                 first_event_us = LEAST(m.first_event_us, EXCLUDED.first_event_us), \
                 last_event_us = GREATEST(m.last_event_us, EXCLUDED.last_event_us)"
            }
            Q::InsertRefs => {
                "INSERT INTO {s}.refs (model, name, value, record_id) SELECT * FROM \
                 UNNEST($1::bytea[], $2::bytea[], $3::bytea[], $4::bytea[]) ON CONFLICT DO NOTHING"
            }
            Q::UpsertProgress => {
                "INSERT INTO {s}.source_state AS p (source, checkpoint, watermark_us, \
                 last_event_us, updated_us) SELECT s, c, w, l, $5::int8 FROM UNNEST($1::bytea[], \
                 $2::bytea[], $3::int8[], $4::int8[]) AS b(s, c, w, l) \
                 ON CONFLICT (source) DO UPDATE SET checkpoint = EXCLUDED.checkpoint, \
                 watermark_us = GREATEST(p.watermark_us, EXCLUDED.watermark_us), \
                 last_event_us = GREATEST(p.last_event_us, EXCLUDED.last_event_us), \
                 updated_us = GREATEST(p.updated_us, EXCLUDED.updated_us)"
            }
            Q::MarkCommitted => {
                "UPDATE {s}.segments SET state = 1, entries = $2, quarantined = $3, \
                 committed_us = $4 WHERE seq = $1 AND state = 0"
            }
            Q::InsertCommitted => {
                "INSERT INTO {s}.segments (seq, state, entries, quarantined, committed_us) \
                 VALUES ($1, 1, $2, $3, $4) ON CONFLICT (seq) DO NOTHING"
            }
            Q::SeqLock => "SELECT pg_advisory_xact_lock($1)",
            // is_called = false means nextval returns last_value itself.
            Q::BumpSeq => {
                "SELECT setval('{s}.segment_seq', $1::int8) FROM {s}.segment_seq \
                 WHERE last_value < $1::int8 OR (last_value = $1::int8 AND NOT is_called)"
            }
            Q::Unpublished => "SELECT seq FROM {s}.segments WHERE state = 1 ORDER BY seq",
            Q::MarkPublished => {
                "UPDATE {s}.segments SET state = 2 WHERE seq = ANY($1::int8[]) AND state = 1"
            }
            Q::CommittedAfter => {
                "SELECT seq FROM {s}.segments WHERE seq > $1 AND state >= 1 ORDER BY seq LIMIT $2"
            }
            Q::RecordUpdates => {
                "SELECT {cols} FROM {s}.updates WHERE model = $1 AND record_id = $2 \
                 AND event_time_us <= $3 ORDER BY event_time_us, source, position"
            }
            // One statement, so one snapshot: the master's count, how many of the record's
            // updates are ordered after the point, and those of them up to the time (one
            // row of NULL entry columns when there are none).
            Q::RecordAfter => {
                "SELECT u.*, \
                 (SELECT updates FROM {s}.masters WHERE model = $1 AND record_id = $2), \
                 (SELECT count(*) FROM {s}.updates WHERE model = $1 AND record_id = $2 \
                  AND (event_time_us, source, position) > ($3, $4, $5)) \
                 FROM (SELECT 1) AS one LEFT JOIN LATERAL (SELECT {cols} FROM {s}.updates \
                 WHERE model = $1 AND record_id = $2 \
                 AND (event_time_us, source, position) > ($3, $4, $5) \
                 AND event_time_us <= $6 ORDER BY event_time_us, source, position) AS u ON true \
                 ORDER BY u.event_time_us, u.source, u.position"
            }
            // The updates of the records that ever referenced the value, from the reference
            // and time-travel indexes (an index range per record) in one statement, so one
            // snapshot: the members' total count, how many are ordered after the point, and
            // those up to the time (one row of NULLs when there are none).
            Q::RefAfter => {
                "WITH members AS (SELECT record_id FROM {s}.refs \
                 WHERE model = $1 AND name = $2 AND value = $3), \
                 later AS (SELECT u.event_time_us, u.source, u.position, u.record_id \
                 FROM members JOIN {s}.updates u \
                 ON u.model = $1 AND u.record_id = members.record_id \
                 AND (u.event_time_us, u.source, u.position) > ($4, $5, $6)) \
                 SELECT l.event_time_us, l.source, l.position, l.record_id, \
                 (SELECT coalesce(sum(m.updates), 0)::BIGINT FROM members \
                  JOIN {s}.masters m ON m.model = $1 AND m.record_id = members.record_id), \
                 (SELECT count(*) FROM later) \
                 FROM (SELECT 1) AS one LEFT JOIN LATERAL (SELECT * FROM later \
                 WHERE event_time_us <= $7) AS l ON true \
                 ORDER BY l.event_time_us, l.source, l.position"
            }
            Q::Master => {
                "SELECT updates, first_event_us, last_event_us FROM {s}.masters \
                 WHERE model = $1 AND record_id = $2"
            }
            Q::MasterRefs => "SELECT name, value FROM {s}.refs WHERE model = $1 AND record_id = $2",
            Q::ByRef => {
                "SELECT record_id FROM {s}.refs WHERE model = $1 AND name = $2 AND value = $3 \
                 ORDER BY record_id"
            }
            Q::Window => {
                "SELECT {cols} FROM {s}.updates WHERE event_time_us >= $1 AND event_time_us <= $2 \
                 ORDER BY event_time_us, source, position LIMIT $3"
            }
            Q::WindowAfter => {
                "SELECT {cols} FROM {s}.updates WHERE event_time_us >= $1 AND event_time_us <= $2 \
                 AND (event_time_us, source, position) > ($3::int8, $4::bytea, $5::bytea) \
                 ORDER BY event_time_us, source, position LIMIT $6"
            }
            Q::SourceStates => {
                "SELECT source, checkpoint, watermark_us, last_event_us, updated_us \
                 FROM {s}.source_state ORDER BY source"
            }
            Q::ClaimLanes => {
                "INSERT INTO {s}.source_lanes AS l (source, lane, watermark_us, updated_us) \
                 SELECT $1::bytea, n, w, $4::int8 FROM UNNEST($2::bytea[], $3::int8[]) AS b(n, w) \
                 ON CONFLICT (source, lane) DO UPDATE SET \
                 watermark_us = GREATEST(l.watermark_us, EXCLUDED.watermark_us), \
                 updated_us = GREATEST(l.updated_us, EXCLUDED.updated_us)"
            }
            Q::RetireLanes => {
                "DELETE FROM {s}.source_lanes WHERE source = $1 AND lane = ANY($2::bytea[])"
            }
            // The source is complete up to its lowest lane: its watermark rises to it.
            Q::FoldLanes => {
                "INSERT INTO {s}.source_state AS p (source, checkpoint, watermark_us, \
                 last_event_us, updated_us) SELECT $1::bytea, ''::bytea, min(watermark_us), 0, \
                 $2::int8 FROM {s}.source_lanes WHERE source = $1 HAVING count(*) > 0 \
                 ON CONFLICT (source) DO UPDATE SET \
                 watermark_us = GREATEST(p.watermark_us, EXCLUDED.watermark_us), \
                 updated_us = GREATEST(p.updated_us, EXCLUDED.updated_us)"
            }
            Q::LaneClaims => {
                "SELECT lane, watermark_us FROM {s}.source_lanes WHERE source = $1 ORDER BY lane"
            }
            // An idle source that never delivered an event still gets a watermark.
            Q::Heartbeat => {
                "INSERT INTO {s}.source_state AS p (source, checkpoint, watermark_us, \
                 last_event_us, updated_us) VALUES ($1, ''::bytea, $2, 0, $3) \
                 ON CONFLICT (source) DO UPDATE SET \
                 watermark_us = GREATEST(p.watermark_us, EXCLUDED.watermark_us), \
                 updated_us = GREATEST(p.updated_us, EXCLUDED.updated_us)"
            }
            Q::DumpEntries => "SELECT {cols} FROM {s}.updates ORDER BY source, position",
            Q::DumpMasters => {
                "SELECT model, record_id, updates, first_event_us, last_event_us \
                 FROM {s}.masters ORDER BY model, record_id"
            }
            Q::DumpRefs => {
                "SELECT model, name, value, record_id FROM {s}.refs \
                 ORDER BY model, name, value, record_id"
            }
            Q::IncidentGet => {
                "SELECT {icols} FROM {s}.incidents WHERE check_name = $1 AND subject = $2"
            }
            // Version 0 (never stored): create only; a row that exists is a conflict.
            Q::IncidentInsert => {
                "INSERT INTO {s}.incidents ({icols}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
                 ON CONFLICT (check_name, subject) DO NOTHING RETURNING version"
            }
            Q::IncidentUpdate => {
                "UPDATE {s}.incidents SET failing = $3, notified_failing = $4, \
                 last_eval_us = $5, since_us = $6, message = $7, details = $8, updated_us = $9, \
                 version = $10, notified_eval_us = $11, sending_until_us = $12, \
                 rearm_eval_us = $13 \
                 WHERE check_name = $1 AND subject = $2 AND version = $14 RETURNING version"
            }
            Q::IncidentsUnsettled => {
                "SELECT {icols} FROM {s}.incidents \
                 WHERE failing <> notified_failing OR sending_until_us <> 0 \
                 ORDER BY check_name, subject LIMIT $1"
            }
            Q::IncidentsAll => "SELECT {icols} FROM {s}.incidents ORDER BY check_name, subject",
            Q::IncidentsFailing => {
                "SELECT {icols} FROM {s}.incidents WHERE failing ORDER BY check_name, subject"
            }
            Q::IncidentsRearmed => {
                "SELECT {icols} FROM {s}.incidents WHERE rearm_eval_us <> 0 \
                 ORDER BY check_name, subject"
            }
            Q::MetaGet => "SELECT value FROM {s}.meta_kv WHERE name = $1",
            Q::MetaPut => {
                "INSERT INTO {s}.meta_kv (name, value) VALUES ($1, $2) \
                 ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value"
            }
            Q::MetaInit => {
                "INSERT INTO {s}.meta_kv (name, value) VALUES ($1, $2) \
                 ON CONFLICT (name) DO NOTHING"
            }
            Q::SnapshotBefore => {
                "SELECT {scols} FROM {s}.snapshots WHERE model = $1 AND record_id = $2 \
                 AND event_time_us <= $3 \
                 ORDER BY event_time_us DESC, source DESC, position DESC LIMIT 1"
            }
            Q::SnapshotsOf => {
                "SELECT {scols} FROM {s}.snapshots WHERE model = $1 AND record_id = $2 \
                 ORDER BY event_time_us, source, position"
            }
            Q::SnapshotClear => {
                "DELETE FROM {s}.snapshots WHERE model = $1 AND record_id = $2 \
                 AND (event_time_us, source, position) <= ($3, $4, $5)"
            }
            // RecordAfter from the nearest snapshot at or before $3 (from the first update
            // when there is none, then nothing is counted: 0 are at or before "it"), with
            // that snapshot's columns; its body on the first row only.
            Q::RecordFromSnapshot => {
                "WITH snap AS (SELECT event_time_us, source, position, n, fold, body \
                 FROM {s}.snapshots WHERE model = $1 AND record_id = $2 AND event_time_us <= $3 \
                 ORDER BY event_time_us DESC, source DESC, position DESC LIMIT 1), \
                 pt AS (SELECT coalesce((SELECT event_time_us FROM snap), \
                 (-9223372036854775807 - 1)::int8) AS t, \
                 coalesce((SELECT source FROM snap), ''::bytea) AS s, \
                 coalesce((SELECT position FROM snap), ''::bytea) AS p) \
                 SELECT u.*, \
                 CASE WHEN EXISTS (SELECT 1 FROM snap) THEN \
                 (SELECT updates FROM {s}.masters WHERE model = $1 AND record_id = $2) END, \
                 CASE WHEN EXISTS (SELECT 1 FROM snap) THEN \
                 (SELECT count(*) FROM {s}.updates x WHERE x.model = $1 AND x.record_id = $2 \
                  AND (x.event_time_us, x.source, x.position) > (pt.t, pt.s, pt.p)) ELSE 0 END, \
                 snap.event_time_us, snap.source, snap.position, snap.n, snap.fold, \
                 CASE WHEN row_number() OVER (ORDER BY u.event_time_us, u.source, u.position) = 1 \
                 THEN snap.body END \
                 FROM pt LEFT JOIN snap ON true LEFT JOIN LATERAL (SELECT {cols} FROM {s}.updates \
                 WHERE model = $1 AND record_id = $2 \
                 AND (event_time_us, source, position) > (pt.t, pt.s, pt.p) \
                 AND event_time_us <= $3 ORDER BY event_time_us, source, position) AS u ON true \
                 ORDER BY u.event_time_us, u.source, u.position"
            }
            Q::SnapshotPut => {
                "INSERT INTO {s}.snapshots ({scols}) SELECT * FROM UNNEST($1::bytea[], \
                 $2::bytea[], $3::int8[], $4::bytea[], $5::bytea[], $6::int8[], $7::int8[], \
                 $8::bytea[]) ON CONFLICT (model, record_id, event_time_us, source, position) \
                 DO UPDATE SET n = EXCLUDED.n, fold = EXCLUDED.fold, body = EXCLUDED.body"
            }
        }
    }
}

/// One server connection with the catalog's statements prepared on it.
struct Conn {
    client: Client,
    /// Indexed by `Q as usize`.
    stmts: Vec<Statement>,
}

impl Conn {
    fn st(&self, q: Q) -> &Statement {
        &self.stmts[q as usize]
    }
}

/// Connections for single statements.
const SHARED_CONNS: usize = 4;

/// The PostgreSQL catalog.
pub struct PgCatalog {
    config: Config,
    schema: String,
    /// SQL of each statement with the schema substituted, indexed by `Q as usize`.
    sql: Vec<String>,
    /// Advisory lock serialising moves of the segment sequence (see `commit`).
    seq_lock_key: i64,
    /// Single statements; shared by concurrent callers, in turn (tokio-postgres pipelines
    /// the calls on each).
    shared: Vec<RwLock<Option<Arc<Conn>>>>,
    /// The next shared connection to hand out.
    turn: std::sync::atomic::AtomicUsize,
    /// Transactions need `&mut Client`: one at a time on this connection.
    txn: Mutex<Option<Conn>>,
}

impl std::fmt::Debug for PgCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl PgCatalog {
    /// Connects to the server, creates `schema` if needed and migrates it to the current
    /// version. `url` is a libpq-style `key=value` string or a `postgres://` URL.
    pub async fn connect(url: &str, schema: &str) -> Result<PgCatalog> {
        validate_schema(schema)?;
        let mut config: Config = url
            .parse()
            .map_err(|e| Error::invalid("catalog connection string", e))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        let quoted = format!("\"{schema}\"");
        let sql = Q::ALL
            .iter()
            .map(|q| {
                q.template()
                    .replace("{cols}", ENTRY_COLS)
                    .replace("{icols}", INCIDENT_COLS)
                    .replace("{scols}", SNAPSHOT_COLS)
                    .replace("{s}", &quoted)
            })
            .collect();
        let cat = PgCatalog {
            config,
            schema: schema.to_owned(),
            sql,
            seq_lock_key: lock_key("segment_seq", schema),
            shared: (0..SHARED_CONNS).map(|_| RwLock::new(None)).collect(),
            turn: std::sync::atomic::AtomicUsize::new(0),
            txn: Mutex::new(None),
        };
        let mut client = cat.open_client().await?;
        migrate(&mut client, schema, &quoted).await?;
        let conn = cat.prepare(client).await?;
        *cat.txn.lock().await = Some(conn);
        Ok(cat)
    }

    async fn open_client(&self) -> Result<Client> {
        let (client, connection) = self
            .config
            .connect(NoTls)
            .await
            .map_err(pg_err("connecting"))?;
        let schema = self.schema.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(schema, error = %e, "catalog connection ended");
            }
        });
        Ok(client)
    }

    async fn prepare(&self, client: Client) -> Result<Conn> {
        let stmts = futures::future::try_join_all(self.sql.iter().map(|s| client.prepare(s)))
            .await
            .map_err(pg_err("preparing statements"))?;
        Ok(Conn { client, stmts })
    }

    /// A shared connection (the next in turn), (re)opened if it is missing or dead.
    async fn shared(&self) -> Result<Arc<Conn>> {
        let i = self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.shared.len();
        let shared = &self.shared[i];
        if let Some(c) = shared.read().await.as_ref()
            && !c.client.is_closed()
        {
            return Ok(c.clone());
        }
        let mut slot = shared.write().await;
        if let Some(c) = slot.as_ref()
            && !c.client.is_closed()
        {
            return Ok(c.clone());
        }
        let conn = Arc::new(self.prepare(self.open_client().await?).await?);
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// The transaction connection, held exclusively, (re)opened if missing or dead.
    async fn txn(&self) -> Result<MappedMutexGuard<'_, Conn>> {
        let mut slot = self.txn.lock().await;
        if slot.as_ref().is_none_or(|c| c.client.is_closed()) {
            *slot = None;
            *slot = Some(self.prepare(self.open_client().await?).await?);
        }
        Ok(MutexGuard::map(slot, |c| {
            c.as_mut().expect("connected above")
        }))
    }

    /// Segment numbers of one state query.
    async fn seqs(&self, q: Q, what: &'static str) -> Result<Vec<u64>> {
        let c = self.shared().await?;
        let rows = c.client.query(c.st(q), &[]).await.map_err(pg_err(what))?;
        rows.iter().map(|r| seq_from(r, 0)).collect()
    }
}

#[async_trait]
impl SegmentLedger for PgCatalog {
    async fn reserve_segment(&self) -> Result<u64> {
        let c = self.shared().await?;
        // Each attempt draws a fresh number; a conflict only happens when a reindex
        // committed numbers ahead of the sequence concurrently (see `commit`).
        for _ in 0..1000 {
            let row = c
                .client
                .query_opt(c.st(Q::Reserve), &[])
                .await
                .map_err(pg_err("reserving a segment"))?;
            if let Some(row) = row {
                return seq_from(&row, 0);
            }
        }
        Err(Error::catalog(
            "reserving a segment: 1000 sequence numbers in a row were already taken",
        ))
    }

    async fn pending_segments(&self) -> Result<Vec<u64>> {
        self.seqs(Q::Pending, "listing pending segments").await
    }

    async fn abandon_segment(&self, seq: u64) -> Result<()> {
        let seq = seq_to_sql(seq)?;
        let c = self.shared().await?;
        c.client
            .execute(c.st(Q::Abandon), &[&seq])
            .await
            .map_err(pg_err("abandoning a segment"))?;
        Ok(())
    }

    async fn commit(&self, batch: CommitBatch) -> Result<Vec<bool>> {
        let entries = &batch.entries;
        let seq = batch.segment_seq.map(seq_to_sql).transpose()?;
        let entry_count = i32::try_from(entries.len())
            .map_err(|_| Error::invalid("commit batch", "more than 2^31 entries"))?;
        let quarantined = i64::try_from(batch.quarantined).unwrap_or(i64::MAX);

        // Only the first occurrence of an identity in the batch can be new. Candidates are
        // sent in identity order: concurrent commits then lock rows in the same order.
        let mut first: HashMap<(&[u8], &[u8]), usize> = HashMap::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            first
                .entry((e.source.as_bytes(), e.position.as_bytes()))
                .or_insert(i);
        }
        let mut cand: Vec<usize> = first.values().copied().collect();
        cand.sort_unstable_by_key(|&i| (entries[i].source.as_str(), entries[i].position.as_str()));
        let cols = UpdateCols::new(entries, &cand)?;

        // Progress folded per source (a source may report twice in one batch): the upsert
        // may touch each row once. Watermarks only move forward; the checkpoint is the
        // batch's last word.
        let mut progress: BTreeMap<&str, (&str, Micros, Micros)> = BTreeMap::new();
        for p in &batch.progress {
            let slot = progress.entry(&p.source).or_insert((
                &p.checkpoint,
                p.watermark_us,
                p.last_event_us,
            ));
            *slot = (
                &p.checkpoint,
                slot.1.max(p.watermark_us),
                slot.2.max(p.last_event_us),
            );
        }
        let p_src: Vec<&[u8]> = progress.keys().map(|s| s.as_bytes()).collect();
        let p_cp: Vec<&[u8]> = progress.values().map(|v| v.0.as_bytes()).collect();
        let p_wm: Vec<i64> = progress.values().map(|v| v.1).collect();
        let p_last: Vec<i64> = progress.values().map(|v| v.2).collect();
        // Lane claims folded per (source, lane) the same way.
        let mut by_source: BTreeMap<&str, Vec<&(String, Micros)>> = BTreeMap::new();
        for p in batch.progress.iter().filter(|p| !p.lanes.is_empty()) {
            by_source.entry(&p.source).or_default().extend(&p.lanes);
        }
        let lanes: Vec<(&[u8], (Vec<&[u8]>, Vec<Micros>))> = by_source
            .into_iter()
            .map(|(src, claims)| (src.as_bytes(), fold_claims(claims)))
            .collect();

        let mut conn = self.txn().await?;
        let conn = &mut *conn;
        let tx = conn
            .client
            .transaction()
            .await
            .map_err(pg_err("beginning a commit"))?;
        let st = |q: Q| &conn.stmts[q as usize];
        let err = pg_err("committing a batch");

        // Phase 1 (pipelined): the updates, progress, and the segment ledger.
        let insert_updates = async {
            if cand.is_empty() {
                return Ok(Vec::new());
            }
            tx.query(st(Q::InsertUpdates), &cols.params()).await
        };
        let upsert_progress = async {
            if p_src.is_empty() {
                return Ok(0);
            }
            tx.execute(
                st(Q::UpsertProgress),
                &[&p_src, &p_cp, &p_wm, &p_last, &batch.now_us],
            )
            .await
        };
        let claim_lanes = async {
            for (src, (names, wms)) in &lanes {
                tx.execute(st(Q::ClaimLanes), &[src, names, wms, &batch.now_us])
                    .await?;
                tx.execute(st(Q::FoldLanes), &[src, &batch.now_us]).await?;
            }
            Ok(())
        };
        let segment = async {
            match seq {
                None => Ok(0),
                // Nothing was stored: release the reservation instead of committing.
                Some(seq) if entries.is_empty() => tx.execute(st(Q::Abandon), &[&seq]).await,
                Some(seq) => {
                    tx.execute(
                        st(Q::MarkCommitted),
                        &[&seq, &entry_count, &quarantined, &batch.now_us],
                    )
                    .await
                }
            }
        };
        let (inserted, _, _, marked) =
            futures::try_join!(insert_updates, upsert_progress, claim_lanes, segment)
                .map_err(err)?;

        let mut new = vec![false; entries.len()];
        for row in &inserted {
            let key: (&[u8], &[u8]) = (
                row.try_get(0).map_err(pg_err("committing a batch"))?,
                row.try_get(1).map_err(pg_err("committing a batch"))?,
            );
            let i = first.get(&key).ok_or_else(|| {
                Error::corrupt(
                    "catalog commit",
                    "insert returned an identity not in the batch",
                )
            })?;
            new[*i] = true;
        }

        // Phase 2 (pipelined): masters and references, from new entries only.
        let mut masters: BTreeMap<(&str, &str), (i64, Micros, Micros)> = BTreeMap::new();
        let mut refs: BTreeSet<(&str, &str, &str, &str)> = BTreeSet::new();
        for e in entries
            .iter()
            .zip(&new)
            .filter(|(_, n)| **n)
            .map(|(e, _)| e)
        {
            let t = e.event_time_us;
            let m = masters.entry((&e.model, &e.record_id)).or_insert((0, t, t));
            *m = (m.0 + 1, m.1.min(t), m.2.max(t));
            for (name, value) in &e.refs {
                refs.insert((&e.model, name, value, &e.record_id));
            }
        }
        let upsert_masters = async {
            if masters.is_empty() {
                return Ok(0);
            }
            let model: Vec<&[u8]> = masters.keys().map(|k| k.0.as_bytes()).collect();
            let id: Vec<&[u8]> = masters.keys().map(|k| k.1.as_bytes()).collect();
            let n: Vec<i64> = masters.values().map(|v| v.0).collect();
            let lo: Vec<i64> = masters.values().map(|v| v.1).collect();
            let hi: Vec<i64> = masters.values().map(|v| v.2).collect();
            tx.execute(st(Q::UpsertMasters), &[&model, &id, &n, &lo, &hi])
                .await
        };
        let insert_refs = async {
            if refs.is_empty() {
                return Ok(0);
            }
            let model: Vec<&[u8]> = refs.iter().map(|r| r.0.as_bytes()).collect();
            let name: Vec<&[u8]> = refs.iter().map(|r| r.1.as_bytes()).collect();
            let value: Vec<&[u8]> = refs.iter().map(|r| r.2.as_bytes()).collect();
            let id: Vec<&[u8]> = refs.iter().map(|r| r.3.as_bytes()).collect();
            tx.execute(st(Q::InsertRefs), &[&model, &name, &value, &id])
                .await
        };
        futures::try_join!(upsert_masters, insert_refs).map_err(pg_err("committing a batch"))?;

        // A segment that was not pending was either committed before (a re-commit: keep its
        // state) or never reserved (reindex): record it, and move the sequence past it so
        // the number is never handed out again. setval is not transactional, and two
        // reindexers could move it backwards between the check and the set: the advisory
        // lock serialises them (nextval callers only ever move it forward).
        if let Some(seq) = seq
            && !entries.is_empty()
            && marked == 0
        {
            let inserted = tx
                .execute(
                    st(Q::InsertCommitted),
                    &[&seq, &entry_count, &quarantined, &batch.now_us],
                )
                .await
                .map_err(pg_err("recording a segment"))?;
            if inserted == 1 {
                futures::future::try_join(
                    tx.execute(st(Q::SeqLock), &[&self.seq_lock_key]),
                    tx.query(st(Q::BumpSeq), &[&seq]),
                )
                .await
                .map_err(pg_err("moving the segment sequence"))?;
            }
        }
        tx.commit().await.map_err(pg_err("committing a batch"))?;
        Ok(new)
    }

    async fn unpublished_segments(&self) -> Result<Vec<u64>> {
        self.seqs(Q::Unpublished, "listing unpublished segments")
            .await
    }

    async fn mark_published(&self, seqs: &[u64]) -> Result<()> {
        if seqs.is_empty() {
            return Ok(());
        }
        let seqs = seqs
            .iter()
            .map(|s| seq_to_sql(*s))
            .collect::<Result<Vec<i64>>>()?;
        let c = self.shared().await?;
        c.client
            .execute(c.st(Q::MarkPublished), &[&seqs])
            .await
            .map_err(pg_err("marking segments published"))?;
        Ok(())
    }

    async fn committed_segments_after(&self, after: u64, limit: usize) -> Result<Vec<u64>> {
        let Ok(after) = i64::try_from(after) else {
            return Ok(Vec::new());
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let c = self.shared().await?;
        let rows = c
            .client
            .query(c.st(Q::CommittedAfter), &[&after, &limit])
            .await
            .map_err(pg_err("listing committed segments"))?;
        rows.iter().map(|r| seq_from(r, 0)).collect()
    }
}

#[async_trait]
impl UpdateIndex for PgCatalog {
    async fn filter_new(&self, ids: &[(&str, &str)]) -> Result<Vec<bool>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sources: Vec<&[u8]> = ids.iter().map(|(s, _)| s.as_bytes()).collect();
        let positions: Vec<&[u8]> = ids.iter().map(|(_, p)| p.as_bytes()).collect();
        let c = self.shared().await?;
        let rows = c
            .client
            .query(c.st(Q::FilterKnown), &[&sources, &positions])
            .await
            .map_err(pg_err("filtering new updates"))?;
        let mut new = vec![true; ids.len()];
        for row in rows {
            let ord: i64 = row.try_get(0).map_err(pg_err("filtering new updates"))?;
            let slot = usize::try_from(ord - 1)
                .ok()
                .and_then(|i| new.get_mut(i))
                .ok_or_else(|| Error::corrupt("catalog filter_new", "ordinal out of range"))?;
            *slot = false;
        }
        Ok(new)
    }

    async fn record_updates(
        &self,
        model: &str,
        record_id: &str,
        up_to_us: Micros,
    ) -> Result<Vec<IndexEntry>> {
        let c = self.shared().await?;
        let rows = c
            .client
            .query(
                c.st(Q::RecordUpdates),
                &[&model.as_bytes(), &record_id.as_bytes(), &up_to_us],
            )
            .await
            .map_err(pg_err("reading a record's updates"))?;
        rows.iter().map(entry_from_row).collect()
    }

    async fn record_updates_after(
        &self,
        model: &str,
        record_id: &str,
        after: (Micros, &str, &str),
        up_to_us: Micros,
        _seen: Option<u64>,
    ) -> Result<UpdatesAfter> {
        // No late tracking here: always counted.
        let c = self.shared().await?;
        let (t0, s0, p0) = after;
        let rows = c
            .client
            .query(
                c.st(Q::RecordAfter),
                &[
                    &model.as_bytes(),
                    &record_id.as_bytes(),
                    &t0,
                    &s0.as_bytes(),
                    &p0.as_bytes(),
                    &up_to_us,
                ],
            )
            .await
            .map_err(pg_err("reading a record's recent updates"))?;
        updates_after_from_rows(&rows, "reading a record's recent updates")
    }

    async fn master(&self, model: &str, record_id: &str) -> Result<Option<MasterDoc>> {
        let c = self.shared().await?;
        let key: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
            [&model.as_bytes(), &record_id.as_bytes()];
        let (doc, refs) = futures::try_join!(
            c.client.query_opt(c.st(Q::Master), &key),
            c.client.query(c.st(Q::MasterRefs), &key),
        )
        .map_err(pg_err("reading a master document"))?;
        let Some(doc) = doc else {
            return Ok(None);
        };
        let refs = refs
            .iter()
            .map(|r| Ok((text(r, 0)?, text(r, 1)?)))
            .collect::<Result<BTreeSet<_>>>()?;
        Ok(Some(MasterDoc {
            model: model.to_owned(),
            record_id: record_id.to_owned(),
            refs,
            updates: count(&doc, 0)?,
            first_event_us: get(&doc, 1)?,
            last_event_us: get(&doc, 2)?,
        }))
    }

    async fn ref_updates_after(
        &self,
        model: &str,
        name: &str,
        value: &str,
        after: Option<(Micros, &str, &str)>,
        up_to_us: Micros,
    ) -> Result<RefUpdatesAfter> {
        let c = self.shared().await?;
        // Before every update: positions are never empty.
        let (t0, s0, p0) = after.unwrap_or((i64::MIN, "", ""));
        let rows = c
            .client
            .query(
                c.st(Q::RefAfter),
                &[
                    &model.as_bytes(),
                    &name.as_bytes(),
                    &value.as_bytes(),
                    &t0,
                    &s0.as_bytes(),
                    &p0.as_bytes(),
                    &up_to_us,
                ],
            )
            .await
            .map_err(pg_err("reading the updates of a reference's records"))?;
        let Some(first) = rows.first() else {
            return Err(Error::catalog(
                "reading the updates of a reference's records: no row",
            ));
        };
        let total: i64 = get(first, 4)?;
        let later: i64 = get(first, 5)?;
        let at_or_before = u64::try_from(total - later).unwrap_or(0);
        let mut updates = Vec::with_capacity(rows.len());
        for row in &rows {
            let Some(t) = get::<Option<i64>>(row, 0)? else {
                continue;
            };
            updates.push(RefUpdate {
                event_time_us: t,
                source: text(row, 1)?,
                position: text(row, 2)?,
                record_id: text(row, 3)?,
            });
        }
        Ok(RefUpdatesAfter {
            updates,
            at_or_before,
        })
    }

    async fn records_by_ref(&self, model: &str, name: &str, value: &str) -> Result<Vec<String>> {
        let c = self.shared().await?;
        let rows = c
            .client
            .query(
                c.st(Q::ByRef),
                &[&model.as_bytes(), &name.as_bytes(), &value.as_bytes()],
            )
            .await
            .map_err(pg_err("reading the reference index"))?;
        rows.iter().map(|r| text(r, 0)).collect()
    }

    async fn updates_in_window(
        &self,
        from_us: Micros,
        to_us: Micros,
        after: Option<(Micros, String, String)>,
        limit: usize,
    ) -> Result<Vec<IndexEntry>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let c = self.shared().await?;
        let rows = match &after {
            None => {
                c.client
                    .query(c.st(Q::Window), &[&from_us, &to_us, &limit])
                    .await
            }
            Some((t, source, position)) => {
                c.client
                    .query(
                        c.st(Q::WindowAfter),
                        &[
                            &from_us,
                            &to_us,
                            t,
                            &source.as_bytes(),
                            &position.as_bytes(),
                            &limit,
                        ],
                    )
                    .await
            }
        }
        .map_err(pg_err("reading a window of updates"))?;
        rows.iter().map(entry_from_row).collect()
    }

    async fn dump(&self) -> Result<CatalogDump> {
        let mut conn = self.txn().await?;
        let conn = &mut *conn;
        // One snapshot for the three reads, so the dump is consistent under writes.
        let tx = conn
            .client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(pg_err("dumping the catalog"))?;
        let st = |q: Q| &conn.stmts[q as usize];
        let (entries, masters, refs) = futures::try_join!(
            tx.query(st(Q::DumpEntries), &[]),
            tx.query(st(Q::DumpMasters), &[]),
            tx.query(st(Q::DumpRefs), &[]),
        )
        .map_err(pg_err("dumping the catalog"))?;
        tx.commit().await.map_err(pg_err("dumping the catalog"))?;

        let refs = refs
            .iter()
            .map(|r| Ok((text(r, 0)?, text(r, 1)?, text(r, 2)?, text(r, 3)?)))
            .collect::<Result<Vec<_>>>()?;
        let mut by_record: HashMap<(&str, &str), BTreeSet<(String, String)>> = HashMap::new();
        for (model, name, value, id) in &refs {
            by_record
                .entry((model, id))
                .or_default()
                .insert((name.clone(), value.clone()));
        }
        let masters = masters
            .iter()
            .map(|r| {
                let (model, record_id) = (str_col(r, 0)?, str_col(r, 1)?);
                Ok(MasterDoc {
                    refs: by_record.remove(&(model, record_id)).unwrap_or_default(),
                    updates: count(r, 2)?,
                    first_event_us: get(r, 3)?,
                    last_event_us: get(r, 4)?,
                    model: model.to_owned(),
                    record_id: record_id.to_owned(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(CatalogDump {
            entries: entries.iter().map(entry_from_row).collect::<Result<_>>()?,
            masters,
            refs,
        })
    }
}

#[async_trait]
impl SourceProgress for PgCatalog {
    async fn source_states(&self) -> Result<Vec<SourceState>> {
        let c = self.shared().await?;
        let rows = c
            .client
            .query(c.st(Q::SourceStates), &[])
            .await
            .map_err(pg_err("reading source states"))?;
        rows.iter()
            .map(|r| {
                Ok(SourceState {
                    source: text(r, 0)?,
                    checkpoint: text(r, 1)?,
                    watermark_us: get(r, 2)?,
                    last_event_us: get(r, 3)?,
                    updated_us: get(r, 4)?,
                })
            })
            .collect()
    }

    async fn heartbeat(&self, source: &str, watermark_us: Micros, now_us: Micros) -> Result<()> {
        let c = self.shared().await?;
        c.client
            .execute(
                c.st(Q::Heartbeat),
                &[&source.as_bytes(), &watermark_us, &now_us],
            )
            .await
            .map_err(pg_err("recording a heartbeat"))?;
        Ok(())
    }

    async fn claim_lanes(
        &self,
        source: &str,
        claims: &[(String, Micros)],
        retire: &[String],
        now_us: Micros,
    ) -> Result<()> {
        let c = self.shared().await?;
        let src = source.as_bytes();
        let err = pg_err("recording lane claims");
        if !retire.is_empty() {
            let gone: Vec<&[u8]> = retire.iter().map(|l| l.as_bytes()).collect();
            c.client
                .execute(c.st(Q::RetireLanes), &[&src, &gone])
                .await
                .map_err(&err)?;
        }
        let (lanes, wms) = fold_claims(claims);
        if !lanes.is_empty() {
            c.client
                .execute(c.st(Q::ClaimLanes), &[&src, &lanes, &wms, &now_us])
                .await
                .map_err(&err)?;
        }
        // Also after a retirement alone: the lowest lane may have gone.
        c.client
            .execute(c.st(Q::FoldLanes), &[&src, &now_us])
            .await
            .map_err(&err)?;
        Ok(())
    }

    async fn lane_claims(&self, source: &str) -> Result<Vec<(String, Micros)>> {
        let c = self.shared().await?;
        let rows = c
            .client
            .query(c.st(Q::LaneClaims), &[&source.as_bytes()])
            .await
            .map_err(pg_err("reading lane claims"))?;
        rows.iter().map(|r| Ok((text(r, 0)?, get(r, 1)?))).collect()
    }
}

#[async_trait]
impl IncidentStore for PgCatalog {
    async fn incident(&self, check: &str, subject: &str) -> Result<Option<Incident>> {
        let c = self.shared().await?;
        let row = c
            .client
            .query_opt(
                c.st(Q::IncidentGet),
                &[&check.as_bytes(), &subject.as_bytes()],
            )
            .await
            .map_err(pg_err("reading an incident"))?;
        row.as_ref().map(incident_from_row).transpose()
    }

    async fn put_incident(&self, inc: &Incident) -> Result<Option<u64>> {
        let bad = |v: u64| Error::invalid("incident version", format!("{v} > 2^63-2"));
        let read = i64::try_from(inc.version).map_err(|_| bad(inc.version))?;
        let next = read.checked_add(1).ok_or_else(|| bad(inc.version))?;
        let (check, subject) = (inc.check.as_bytes(), inc.subject.as_bytes());
        let (message, details) = (inc.message.as_bytes(), inc.details.as_bytes());
        let row: [&(dyn tokio_postgres::types::ToSql + Sync); 13] = [
            &check,
            &subject,
            &inc.failing,
            &inc.notified_failing,
            &inc.last_eval_us,
            &inc.since_us,
            &message,
            &details,
            &inc.updated_us,
            &next,
            &inc.notified_eval_us,
            &inc.sending_until_us,
            &inc.rearm_eval_us,
        ];
        let c = self.shared().await?;
        let written = if read == 0 {
            c.client.query_opt(c.st(Q::IncidentInsert), &row).await
        } else {
            let mut params = row.to_vec();
            params.push(&read);
            c.client.query_opt(c.st(Q::IncidentUpdate), &params).await
        }
        .map_err(pg_err("writing an incident"))?;
        written.map(|r| version_from(&r, 0)).transpose()
    }

    async fn unsettled_incidents(&self, limit: usize) -> Result<Vec<Incident>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let c = self.shared().await?;
        let rows = c
            .client
            .query(c.st(Q::IncidentsUnsettled), &[&limit])
            .await
            .map_err(pg_err("listing unsettled incidents"))?;
        rows.iter().map(incident_from_row).collect()
    }

    async fn incidents(&self, failing_only: bool) -> Result<Vec<Incident>> {
        let q = if failing_only {
            Q::IncidentsFailing
        } else {
            Q::IncidentsAll
        };
        let c = self.shared().await?;
        let rows = c
            .client
            .query(c.st(q), &[])
            .await
            .map_err(pg_err("listing incidents"))?;
        rows.iter().map(incident_from_row).collect()
    }

    async fn rearmed_incidents(&self) -> Result<Vec<Incident>> {
        let c = self.shared().await?;
        let rows = c
            .client
            .query(c.st(Q::IncidentsRearmed), &[])
            .await
            .map_err(pg_err("listing re-armed incidents"))?;
        rows.iter().map(incident_from_row).collect()
    }
}

#[async_trait]
impl MetaStore for PgCatalog {
    async fn get_meta(&self, key: &str) -> Result<Option<String>> {
        let c = self.shared().await?;
        let row = c
            .client
            .query_opt(c.st(Q::MetaGet), &[&key.as_bytes()])
            .await
            .map_err(pg_err("reading a meta value"))?;
        row.map(|r| text(&r, 0)).transpose()
    }

    async fn put_meta(&self, key: &str, value: &str) -> Result<()> {
        let c = self.shared().await?;
        c.client
            .execute(c.st(Q::MetaPut), &[&key.as_bytes(), &value.as_bytes()])
            .await
            .map_err(pg_err("writing a meta value"))?;
        Ok(())
    }

    async fn init_meta(&self, key: &str, value: &str) -> Result<String> {
        {
            let c = self.shared().await?;
            c.client
                .execute(c.st(Q::MetaInit), &[&key.as_bytes(), &value.as_bytes()])
                .await
                .map_err(pg_err("writing a meta value"))?;
        }
        // Rows are never deleted: what is there now is the first writer's.
        self.get_meta(key).await?.ok_or_else(|| {
            Error::catalog(format!("meta value {key} vanished after it was written"))
        })
    }
}

#[async_trait]
impl SnapshotStore for PgCatalog {
    async fn snapshot_at_or_before(
        &self,
        model: &str,
        record_id: &str,
        up_to_us: Micros,
    ) -> Result<Option<Snapshot>> {
        let c = self.shared().await?;
        let row = c
            .client
            .query_opt(
                c.st(Q::SnapshotBefore),
                &[&model.as_bytes(), &record_id.as_bytes(), &up_to_us],
            )
            .await
            .map_err(pg_err("reading a snapshot"))?;
        row.map(|r| snapshot_from_row(&r)).transpose()
    }

    async fn record_updates_from_snapshot(
        &self,
        model: &str,
        record_id: &str,
        up_to_us: Micros,
    ) -> Result<FromSnapshot> {
        let c = self.shared().await?;
        let rows = c
            .client
            .query(
                c.st(Q::RecordFromSnapshot),
                &[&model.as_bytes(), &record_id.as_bytes(), &up_to_us],
            )
            .await
            .map_err(pg_err("reading a record from its snapshot"))?;
        let after = updates_after_from_rows(&rows, "reading a record from its snapshot")?;
        let first = &rows[0];
        let snap_time: Option<i64> = get(first, 13)?;
        let snapshot = snap_time
            .map(|_| snapshot_at(first, 13, model.to_owned(), record_id.to_owned()))
            .transpose()?;
        Ok(FromSnapshot { snapshot, after })
    }

    async fn put_snapshots(&self, writes: &[SnapshotWrite]) -> Result<()> {
        let c = self.shared().await?;
        // One row per key (an upsert may not touch a row twice); the last one given wins.
        let mut rows: BTreeMap<(&str, &str, Micros, &str, &str), &Snapshot> = BTreeMap::new();
        for w in writes {
            if let Some((time, src, pos)) = &w.clear_up_to {
                c.client
                    .execute(
                        c.st(Q::SnapshotClear),
                        &[
                            &w.model.as_bytes(),
                            &w.record_id.as_bytes(),
                            time,
                            &src.as_bytes(),
                            &pos.as_bytes(),
                        ],
                    )
                    .await
                    .map_err(pg_err("replacing snapshots"))?;
            }
            for s in &w.snapshots {
                rows.insert(
                    (
                        &w.model,
                        &w.record_id,
                        s.event_time_us,
                        &s.source,
                        &s.position,
                    ),
                    s,
                );
            }
        }
        if rows.is_empty() {
            return Ok(());
        }
        let mut cols: (Vec<&[u8]>, Vec<&[u8]>, Vec<i64>, Vec<&[u8]>, Vec<&[u8]>) =
            Default::default();
        let mut vals: (Vec<i64>, Vec<i64>, Vec<&[u8]>) = Default::default();
        for ((m, id, t, src, pos), s) in &rows {
            cols.0.push(m.as_bytes());
            cols.1.push(id.as_bytes());
            cols.2.push(*t);
            cols.3.push(src.as_bytes());
            cols.4.push(pos.as_bytes());
            vals.0.push(i64::try_from(s.n).map_err(|_| {
                Error::invalid("snapshot", format!("{} updates is past 2^63", s.n))
            })?);
            // The fingerprint's bits, as the column's type holds them.
            vals.1.push(s.fold as i64);
            vals.2.push(&s.body);
        }
        c.client
            .execute(
                c.st(Q::SnapshotPut),
                &[
                    &cols.0, &cols.1, &cols.2, &cols.3, &cols.4, &vals.0, &vals.1, &vals.2,
                ],
            )
            .await
            .map_err(pg_err("writing snapshots"))?;
        Ok(())
    }

    async fn snapshots(&self, model: &str, record_id: &str) -> Result<Vec<Snapshot>> {
        let c = self.shared().await?;
        let rows = c
            .client
            .query(
                c.st(Q::SnapshotsOf),
                &[&model.as_bytes(), &record_id.as_bytes()],
            )
            .await
            .map_err(pg_err("listing snapshots"))?;
        rows.iter().map(snapshot_from_row).collect()
    }
}

/// The rows of [`Q::RecordAfter`] or [`Q::RecordFromSnapshot`]: an entry per row (none
/// when the only row has empty entry columns), the record's update count in column 11 and
/// the updates after the point in column 12.
fn updates_after_from_rows(rows: &[Row], what: &str) -> Result<UpdatesAfter> {
    let Some(first) = rows.first() else {
        return Err(Error::catalog(format!("{what}: no row")));
    };
    let total: Option<i64> = get(first, 11)?;
    let later: i64 = get(first, 12)?;
    // A count below the rows (never written so) reads as 0: the caller then folds the
    // history, as with the embedded catalog.
    let at_or_before = u64::try_from(total.unwrap_or(0) - later).unwrap_or(0);
    let mut entries = Vec::with_capacity(rows.len());
    for row in rows {
        let source: Option<&[u8]> = get(row, 0)?;
        if source.is_some() {
            entries.push(entry_from_row(row)?);
        }
    }
    Ok(UpdatesAfter {
        entries,
        at_or_before,
    })
}

/// A snapshot from a row of [`SNAPSHOT_COLS`].
fn snapshot_from_row(row: &Row) -> Result<Snapshot> {
    snapshot_at(row, 2, text(row, 0)?, text(row, 1)?)
}

/// A snapshot of `model`/`record_id` from the columns of [`SNAPSHOT_COLS`] after the
/// first two (event time, source, position, n, fold, body), starting at column `at`.
fn snapshot_at(row: &Row, at: usize, model: String, record_id: String) -> Result<Snapshot> {
    let n: i64 = get(row, at + 3)?;
    let fold: i64 = get(row, at + 4)?;
    let body: Option<&[u8]> = get(row, at + 5)?;
    Ok(Snapshot {
        model,
        record_id,
        event_time_us: get(row, at)?,
        source: text(row, at + 1)?,
        position: text(row, at + 2)?,
        n: u64::try_from(n).map_err(|_| Error::corrupt("catalog snapshots", format!("n {n}")))?,
        // The fingerprint's bits, as the column's type holds them.
        fold: fold as u64,
        body: body
            .ok_or_else(|| Error::corrupt("catalog snapshots", "no body"))?
            .to_vec(),
    })
}

impl Catalog for PgCatalog {
    fn describe(&self) -> String {
        let hosts: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            })
            .collect();
        let ports: Vec<String> = self.config.get_ports().iter().map(u16::to_string).collect();
        format!(
            "postgres catalog (host {} port {} db {} schema {})",
            hosts.join(","),
            ports.join(","),
            self.config.get_dbname().unwrap_or("-"),
            self.schema
        )
    }
}

/// The column arrays of an `updates` insert, for the candidate entries in order.
struct UpdateCols<'a> {
    source: Vec<&'a [u8]>,
    position: Vec<&'a [u8]>,
    model: Vec<&'a [u8]>,
    record_id: Vec<&'a [u8]>,
    op: Vec<i16>,
    event_time: Vec<i64>,
    ingest_time: Vec<i64>,
    seq: Vec<i64>,
    offset: Vec<i64>,
    len: Vec<i64>,
    refs: Vec<Vec<u8>>,
}

impl<'a> UpdateCols<'a> {
    fn new(entries: &'a [IndexEntry], cand: &[usize]) -> Result<Self> {
        let n = cand.len();
        let mut c = UpdateCols {
            source: Vec::with_capacity(n),
            position: Vec::with_capacity(n),
            model: Vec::with_capacity(n),
            record_id: Vec::with_capacity(n),
            op: Vec::with_capacity(n),
            event_time: Vec::with_capacity(n),
            ingest_time: Vec::with_capacity(n),
            seq: Vec::with_capacity(n),
            offset: Vec::with_capacity(n),
            len: Vec::with_capacity(n),
            refs: Vec::with_capacity(n),
        };
        for &i in cand {
            let e = &entries[i];
            c.source.push(e.source.as_bytes());
            c.position.push(e.position.as_bytes());
            c.model.push(e.model.as_bytes());
            c.record_id.push(e.record_id.as_bytes());
            c.op.push(e.op as i16);
            c.event_time.push(e.event_time_us);
            c.ingest_time.push(e.ingest_time_us);
            c.seq.push(seq_to_sql(e.loc.segment_seq)?);
            c.offset.push(i64::from(e.loc.offset));
            c.len.push(i64::from(e.loc.len));
            c.refs.push(encode_refs(&e.refs));
        }
        Ok(c)
    }

    fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 11] {
        [
            &self.source,
            &self.position,
            &self.model,
            &self.record_id,
            &self.op,
            &self.event_time,
            &self.ingest_time,
            &self.seq,
            &self.offset,
            &self.len,
            &self.refs,
        ]
    }
}

/// Applies the missing migrations under an advisory lock, all in one transaction.
async fn migrate(client: &mut Client, schema: &str, quoted: &str) -> Result<()> {
    let err = || pg_err("migrating the catalog schema");
    let tx = client.transaction().await.map_err(err())?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&lock_key("migrations", schema)],
    )
    .await
    .map_err(err())?;
    // Checked first so a role without CREATE on the database can use a schema made for it.
    let exists = tx
        .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema])
        .await
        .map_err(err())?
        .is_some();
    if !exists {
        tx.batch_execute(&format!("CREATE SCHEMA {quoted}"))
            .await
            .map_err(err())?;
    }
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {quoted}.schema_migrations (\
         version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    ))
    .await
    .map_err(err())?;
    let applied: BTreeSet<i32> = tx
        .query(
            &format!("SELECT version FROM {quoted}.schema_migrations"),
            &[],
        )
        .await
        .map_err(err())?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()
        .map_err(err())?;
    let latest = MIGRATIONS.last().map_or(0, |m| m.0);
    if let Some(&newest) = applied.last()
        && newest > latest
    {
        return Err(Error::catalog(format!(
            "schema {schema} is at migration {newest}, newer than this build knows ({latest})"
        )));
    }
    for (version, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tx.batch_execute(&sql.replace("{s}", quoted))
            .await
            .map_err(err())?;
        tx.execute(
            &format!("INSERT INTO {quoted}.schema_migrations (version) VALUES ($1)"),
            &[version],
        )
        .await
        .map_err(err())?;
        tracing::info!(schema, version, "applied catalog migration");
    }
    tx.commit().await.map_err(err())
}

/// Schema names are spliced into SQL (quoted): identifier characters only.
fn validate_schema(schema: &str) -> Result<()> {
    let mut chars = schema.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && schema.len() <= 63
        && !schema.starts_with("pg_");
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "catalog.schema",
            format!(
                "{schema:?} is not a valid schema name (1 to 63 ASCII letters, digits and \
                 underscores, not starting with a digit or pg_)"
            ),
        ))
    }
}

/// A stable 64-bit advisory lock key for `what` in `schema` (FNV-1a: the same in every
/// process and build, unlike std's hasher).
fn lock_key(what: &str, schema: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in "overseer-catalog:"
        .bytes()
        .chain(what.bytes())
        .chain([b':'])
        .chain(schema.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

/// Maps a driver error to a catalog error, transient when a retry may succeed.
/// Lane claims as `ClaimLanes` takes them: each lane once, at its highest claim (an
/// upsert may touch a row once), in byte order (the order every writer locks them in).
fn fold_claims<'a>(
    claims: impl IntoIterator<Item = &'a (String, Micros)>,
) -> (Vec<&'a [u8]>, Vec<Micros>) {
    let mut folded: BTreeMap<&[u8], Micros> = BTreeMap::new();
    for (lane, wm) in claims {
        let w = folded.entry(lane.as_bytes()).or_insert(*wm);
        *w = (*w).max(*wm);
    }
    folded.into_iter().unzip()
}

fn pg_err(context: &'static str) -> impl Fn(tokio_postgres::Error) -> Error {
    move |e| {
        let transient = e.is_closed()
            || e.code().is_some_and(transient_state)
            || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>())
            || e.to_string().starts_with("timeout");
        let message = match (e.as_db_error(), std::error::Error::source(&e)) {
            (Some(db), _) => format!("{context}: {db}"),
            (None, Some(src)) => format!("{context}: {e}: {src}"),
            (None, None) => format!("{context}: {e}"),
        };
        Error::Catalog {
            message,
            transient,
            source: Some(Box::new(e)),
        }
    }
}

fn transient_state(code: &SqlState) -> bool {
    let c = code.code();
    c.starts_with("08") // connection exception
        || c.starts_with("53") // insufficient resources (too many connections, disk full)
        || [
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::LOCK_NOT_AVAILABLE,
            SqlState::QUERY_CANCELED,
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
        ]
        .contains(code)
}

fn seq_to_sql(seq: u64) -> Result<i64> {
    i64::try_from(seq).map_err(|_| Error::invalid("segment sequence", format!("{seq} > 2^63-1")))
}

fn seq_from(row: &Row, i: usize) -> Result<u64> {
    let v: i64 = get(row, i)?;
    u64::try_from(v).map_err(|_| Error::corrupt("catalog segments", format!("sequence {v}")))
}

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, i: usize) -> Result<T> {
    row.try_get(i).map_err(pg_err("reading a row"))
}

fn count(row: &Row, i: usize) -> Result<u64> {
    let v: i64 = get(row, i)?;
    u64::try_from(v).map_err(|_| Error::corrupt("catalog masters", format!("count {v}")))
}

/// A string column (stored as BYTEA, see the module doc).
fn str_col(row: &Row, i: usize) -> Result<&str> {
    let b: &[u8] = get(row, i)?;
    std::str::from_utf8(b)
        .map_err(|e| Error::corrupt("catalog", format!("non-UTF-8 string in column {i}: {e}")))
}

fn text(row: &Row, i: usize) -> Result<String> {
    str_col(row, i).map(str::to_owned)
}

fn version_from(row: &Row, i: usize) -> Result<u64> {
    let v: i64 = get(row, i)?;
    u64::try_from(v).map_err(|_| Error::corrupt("catalog incidents", format!("version {v}")))
}

fn incident_from_row(row: &Row) -> Result<Incident> {
    Ok(Incident {
        check: text(row, 0)?,
        subject: text(row, 1)?,
        failing: get(row, 2)?,
        notified_failing: get(row, 3)?,
        last_eval_us: get(row, 4)?,
        since_us: get(row, 5)?,
        message: text(row, 6)?,
        details: text(row, 7)?,
        updated_us: get(row, 8)?,
        version: version_from(row, 9)?,
        notified_eval_us: get(row, 10)?,
        sending_until_us: get(row, 11)?,
        rearm_eval_us: get(row, 12)?,
    })
}

fn entry_from_row(row: &Row) -> Result<IndexEntry> {
    let op: i16 = get(row, 4)?;
    let u32_col = |i: usize| -> Result<u32> {
        let v: i64 = get(row, i)?;
        u32::try_from(v).map_err(|_| Error::corrupt("catalog updates", format!("location {v}")))
    };
    Ok(IndexEntry {
        source: text(row, 0)?,
        position: text(row, 1)?,
        model: text(row, 2)?,
        record_id: text(row, 3)?,
        op: op_from_u8(u8::try_from(op).unwrap_or(0)),
        event_time_us: get(row, 5)?,
        ingest_time_us: get(row, 6)?,
        loc: UpdateLoc {
            segment_seq: seq_from(row, 7)?,
            offset: u32_col(8)?,
            len: u32_col(9)?,
        },
        refs: decode_refs(get(row, 10)?)?,
    })
}

/// An entry's references as one value: `(u32 LE length, bytes)` for name then value, per
/// pair, in order. One column per entry keeps the insert a single `UNNEST` (arrays of
/// ragged arrays do not exist in SQL).
fn encode_refs(refs: &[(String, String)]) -> Vec<u8> {
    let size = refs.iter().map(|(n, v)| 8 + n.len() + v.len()).sum();
    let mut out = Vec::with_capacity(size);
    for s in refs.iter().flat_map(|(n, v)| [n, v]) {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    out
}

fn decode_refs(mut b: &[u8]) -> Result<Vec<(String, String)>> {
    let bad = || Error::corrupt("catalog updates", "malformed references column");
    let next = |b: &mut &[u8]| -> Result<String> {
        let (len, rest) = b.split_first_chunk::<4>().ok_or_else(bad)?;
        let len = u32::from_le_bytes(*len) as usize;
        let (s, rest) = rest.split_at_checked(len).ok_or_else(bad)?;
        *b = rest;
        String::from_utf8(s.to_vec()).map_err(|_| bad())
    };
    let mut out = Vec::new();
    while !b.is_empty() {
        let name = next(&mut b)?;
        let value = next(&mut b)?;
        out.push((name, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_round_trip() {
        let refs = vec![
            ("a".to_string(), "with\0nul".to_string()),
            (String::new(), "名前".to_string()),
            ("a".to_string(), "with\0nul".to_string()),
        ];
        assert_eq!(decode_refs(&encode_refs(&refs)).unwrap(), refs);
        assert!(decode_refs(&encode_refs(&[])).unwrap().is_empty());
        assert!(decode_refs(&[1, 0, 0]).is_err());
        assert!(decode_refs(&[9, 0, 0, 0, b'x']).is_err());
    }

    #[test]
    fn schema_names() {
        for ok in ["overseer", "_x", "a1_b2", "A"] {
            assert!(validate_schema(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1a", "a-b", "a\"b", "a b", "pg_x", "é", &"x".repeat(64)] {
            assert!(validate_schema(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lock_keys_differ_per_schema_and_purpose() {
        assert_ne!(lock_key("migrations", "a"), lock_key("migrations", "b"));
        assert_ne!(lock_key("migrations", "a"), lock_key("segment_seq", "a"));
        assert_eq!(lock_key("migrations", "a"), lock_key("migrations", "a"));
    }
}
