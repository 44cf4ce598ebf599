//! `overseer reindex`: rebuild the catalog from the object store alone.
//!
//! Segments are replayed in sequence order through the same [`SegmentLedger::commit`](overseer_dal::catalog::SegmentLedger::commit) the live
//! pipeline uses, whose first-commit-wins rule on `(source, position)` makes the result
//! equal to the live index (a redelivered update that reached a later segment is ignored
//! in both). Source progress is restored from segment footers. The target catalog must be
//! empty: reindex never merges into a live index. It takes over the store's claim
//! ([`crate::pipeline::STORE_CLAIM_KEY`]): the rebuilt catalog is the store's own, and the
//! catalog it replaces, if it still exists, must be retired (both now hold the store's id).

use overseer_dal::catalog::Catalog;
use overseer_dal::keys::{SEGMENT_PREFIX, parse_segment_key};
use overseer_dal::segment::decode_segment;
use overseer_dal::store::{ObjectStore, list_all};

use crate::pipeline::batch_from_segment;
use crate::{Error, Result};

/// What a reindex did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReindexReport {
    pub segments: u64,
    pub updates: u64,
    /// Updates found again in a later segment (redelivered before a crash), ignored.
    pub duplicates: u64,
    /// Keys under `segments/` that are not segment objects, skipped.
    pub foreign: u64,
}

/// Rebuilds `catalog` (which must be empty) from every segment in `store`.
pub async fn reindex(store: &dyn ObjectStore, catalog: &dyn Catalog) -> Result<ReindexReport> {
    if !catalog.committed_segments_after(0, 1).await?.is_empty()
        || !catalog.pending_segments().await?.is_empty()
    {
        return Err(Error::Config(format!(
            "reindex needs an empty catalog, and {} already has segments",
            catalog.describe()
        )));
    }
    let mut report = ReindexReport::default();
    let mut seqs = Vec::new();
    for key in list_all(store, SEGMENT_PREFIX).await? {
        match parse_segment_key(&key) {
            Some(seq) => seqs.push((seq, key)),
            None => {
                tracing::warn!(key, "not a segment object; skipped");
                report.foreign += 1;
            }
        }
    }
    // Sequence order, whatever order the store listed them in.
    seqs.sort_unstable();
    for (seq, key) in seqs {
        let bytes = store
            .get(&key)
            .await?
            .ok_or_else(|| overseer_dal::Error::Corrupt {
                what: key.clone(),
                message: "listed but not readable".into(),
            })?;
        let seg = decode_segment(&bytes, &key)?;
        if seg.footer.seq != seq {
            return Err(overseer_dal::Error::Corrupt {
                what: key,
                message: format!("footer says segment {}", seg.footer.seq),
            }
            .into());
        }
        let batch = batch_from_segment(&seg);
        let fresh = catalog.commit(batch).await?;
        let new = fresh.iter().filter(|f| **f).count() as u64;
        report.updates += new;
        report.duplicates += fresh.len() as u64 - new;
        catalog.mark_published(&[seq]).await?;
        report.segments += 1;
    }
    // The rebuilt catalog is the store's own: it takes the store's claim, if any.
    if let Some(id) = store.get(crate::pipeline::STORE_CLAIM_KEY).await? {
        let id = String::from_utf8_lossy(&id).trim().to_owned();
        catalog
            .put_meta(crate::pipeline::STORE_CLAIM_META, &id)
            .await?;
    }
    Ok(report)
}

/// What [`rebuild_snapshots`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotReport {
    /// Records with at least `[dal] snapshot_every` updates, read whole.
    pub records: u64,
    /// Snapshots written.
    pub snapshots: u64,
    /// Records whose history could not be folded (each logged): they have none.
    pub failed: u64,
    /// Snapshots the catalog refused (logged): reads fold the history instead.
    pub dropped: u64,
}

/// Rebuilds the snapshots ([`overseer_dal::snapshot`]) of every record with at least
/// `[dal] snapshot_every` updates, by reading it through `dal` as of the end of time (the
/// read writes them). Run after [`reindex`]: a rebuilt catalog has none, and without them
/// the first read of each long record after the reindex folds its whole history. Reads
/// several records at a time; the index is scanned once in pages.
pub async fn rebuild_snapshots(dal: &overseer_dal::Dal) -> Result<SnapshotReport> {
    use futures::StreamExt;
    use std::collections::HashMap;

    let every = dal.snapshot_every();
    let mut report = SnapshotReport::default();
    if every == 0 {
        return Ok(report);
    }
    let mut counts: HashMap<(String, String), u64> = HashMap::new();
    let mut after = None;
    loop {
        let page = dal
            .catalog()
            .updates_in_window(i64::MIN, i64::MAX, after.take(), 10_000)
            .await?;
        let Some(last) = page.last() else { break };
        after = Some((
            last.event_time_us,
            last.source.clone(),
            last.position.clone(),
        ));
        for e in page {
            *counts.entry((e.model, e.record_id)).or_default() += 1;
        }
    }
    let long: Vec<(String, String)> = counts
        .into_iter()
        .filter(|(_, n)| *n >= every)
        .map(|(k, _)| k)
        .collect();
    report.records = long.len() as u64;
    // Nothing kept in memory: each read only folds and writes.
    let reader = dal.clone().with_state_bytes(0);
    let before = reader.state_stats().snapshots.written;
    let dropped_before = reader.state_stats().snapshots.dropped;
    // In groups, each written before the next is read: the writer's queue is bounded.
    for group in long.chunks(64) {
        report.failed += futures::stream::iter(group)
            .map(|(model, id)| {
                let reader = reader.clone();
                async move {
                    match reader.record(model, id, i64::MAX).await {
                        Ok(_) => 0,
                        Err(e) => {
                            tracing::warn!(model, id, error = %e, "no snapshots: its history does not fold");
                            1
                        }
                    }
                }
            })
            .buffer_unordered(8)
            .fold(0, |n, f| async move { n + f })
            .await;
        reader.flush_snapshots().await;
    }
    let stats = reader.state_stats().snapshots;
    report.snapshots = stats.written - before;
    report.dropped = stats.dropped - dropped_before;
    Ok(report)
}
