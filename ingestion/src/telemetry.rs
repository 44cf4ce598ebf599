//! Metric names and named telemetry events of ingestion (Vector's `internal_events` style):
//! each event logs with structured fields and updates its metrics in one place. Labels are
//! low-cardinality (the source name); nothing is recorded per byte.

use std::time::Duration;

/// Updates newly indexed, by source.
pub const UPDATES: &str = "overseer_ingest_updates_total";
/// Events that were already indexed (redelivery), by source.
pub const DUPLICATES: &str = "overseer_ingest_duplicates_total";
/// Events sent to the dead-letter location, by source.
pub const QUARANTINED: &str = "overseer_ingest_quarantined_total";
/// Segment objects written, by source.
pub const SEGMENTS: &str = "overseer_ingest_segments_total";
/// Bytes of segment objects written, by source.
pub const SEGMENT_BYTES: &str = "overseer_ingest_segment_bytes_total";
/// Time from a batch's first event to its acknowledgement, by source.
pub const BATCH_SECONDS: &str = "overseer_ingest_batch_seconds";
/// Source watermark (complete-up-to), seconds since the Unix epoch, by source.
pub const WATERMARK: &str = "overseer_source_watermark_seconds";
/// What a source's watermark rests on now (1 for the current evidence, 0 for the others),
/// by source and evidence (`stored`, `events`, `heartbeat`, `drained`, `caught-up`).
pub const WATERMARK_EVIDENCE: &str = "overseer_source_watermark_evidence";
/// Newest commit time seen on each lane (Kafka partition) of a source, seconds since the
/// Unix epoch, by source and lane: the lane lowest here holds the source's watermark.
pub const LANE_NEWEST: &str = "overseer_source_lane_newest_commit_seconds";
/// Storage operations retried after a transient failure, by operation.
pub const RETRIES: &str = "overseer_ingest_retries_total";
/// Storage operations waiting out a transient fault now (0: ingestion is not held up by
/// storage; above 0: not ready — it retries until the fault passes).
pub const STALLED: &str = "overseer_ingest_stalled";

/// A batch became durable, indexed and acknowledged.
#[derive(Debug)]
pub struct BatchCommitted<'a> {
    pub source: &'a str,
    pub segment_seq: Option<u64>,
    pub updates: usize,
    pub duplicates: usize,
    pub quarantined: usize,
    pub bytes: usize,
    pub elapsed: Duration,
    pub watermark_us: i64,
}

impl BatchCommitted<'_> {
    pub fn emit(&self) {
        tracing::debug!(
            source = self.source,
            segment = self.segment_seq,
            updates = self.updates,
            duplicates = self.duplicates,
            quarantined = self.quarantined,
            bytes = self.bytes,
            elapsed_ms = self.elapsed.as_secs_f64() * 1e3,
            watermark_us = self.watermark_us,
            "batch committed"
        );
        let src = self.source.to_owned();
        metrics::counter!(UPDATES, "source" => src.clone()).increment(self.updates as u64);
        metrics::counter!(DUPLICATES, "source" => src.clone()).increment(self.duplicates as u64);
        if self.segment_seq.is_some() && self.updates > 0 {
            metrics::counter!(SEGMENTS, "source" => src.clone()).increment(1);
            metrics::counter!(SEGMENT_BYTES, "source" => src.clone()).increment(self.bytes as u64);
        }
        metrics::histogram!(BATCH_SECONDS, "source" => src).record(self.elapsed.as_secs_f64());
    }
}

/// An event was quarantined.
#[derive(Debug)]
pub struct EventQuarantined<'a> {
    pub source: &'a str,
    pub position: &'a str,
    pub reason: &'a str,
}

impl EventQuarantined<'_> {
    pub fn emit(&self) {
        tracing::warn!(
            source = self.source,
            position = self.position,
            reason = self.reason,
            "event quarantined"
        );
        metrics::counter!(QUARANTINED, "source" => self.source.to_owned()).increment(1);
    }
}
