//! `overseer reindex`: rebuild the catalog from the object store alone.
//!
//! Segments are replayed in sequence order through the same [`SegmentLedger::commit`](overseer_dal::catalog::SegmentLedger::commit) the live
//! pipeline uses, whose first-commit-wins rule on `(source, position)` makes the result
//! equal to the live index (a redelivered update that reached a later segment is ignored
//! in both). Source progress is restored from segment footers. The target catalog must be
//! empty: reindex never merges into a live index.

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
    Ok(report)
}
