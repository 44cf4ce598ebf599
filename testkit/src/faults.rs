//! Fault injection at the storage seams: a catalog and an object store that fail a
//! fraction of their calls with a *transient* error (the kind a network blip, a restarted
//! server or a throttled bucket gives), before the call reaches the backend underneath, so
//! a failed call changed nothing. Whatever is built on them must retry and end exactly as
//! without faults.
//!
//! Which calls fail is decided by a seeded sequence over the calls, so a test run is
//! repeatable in what it injects (not in which caller meets it: tasks interleave). Faults
//! are off until [`Faults::arm`], so setup can write through the same handles.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;

use overseer_dal::catalog::{
    Catalog, DynCatalog, IncidentStore, MetaStore, SegmentLedger, SnapshotStore, SourceProgress,
    UpdateIndex,
};
use overseer_dal::store::{DynStore, ObjectStore, PutOutcome};
use overseer_dal::update::{
    CatalogDump, CommitBatch, FromSnapshot, Incident, IndexEntry, MasterDoc, Micros,
    RefUpdatesAfter, Snapshot, SnapshotWrite, SourceState, UpdatesAfter,
};
use overseer_dal::{Error, Result};

/// The fault plan shared by the wrappers of one test: a fraction of calls fail.
#[derive(Debug)]
pub struct Faults {
    /// Failures per 1,000 calls.
    per_mille: u64,
    seed: u64,
    armed: AtomicBool,
    calls: AtomicU64,
    injected: AtomicU64,
}

impl Faults {
    /// Fails `per_mille` of every 1,000 calls once armed, in an order given by `seed`.
    pub fn new(per_mille: u64, seed: u64) -> Arc<Faults> {
        Arc::new(Faults {
            per_mille: per_mille.min(1000),
            seed,
            armed: AtomicBool::new(false),
            calls: AtomicU64::new(0),
            injected: AtomicU64::new(0),
        })
    }

    /// Starts failing calls.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Stops failing calls.
    pub fn disarm(&self) {
        self.armed.store(false, Ordering::SeqCst);
    }

    /// Calls failed so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    /// Calls seen while armed.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// Whether this call fails: `Err` (transient, naming `seam` and `op`) if it does.
    fn check(&self, seam: Seam, op: &str) -> Result<()> {
        if !self.armed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if splitmix(n ^ self.seed) % 1000 >= self.per_mille {
            return Ok(());
        }
        self.injected.fetch_add(1, Ordering::SeqCst);
        let message = format!("injected fault in {op} (call {n})");
        Err(match seam {
            Seam::Catalog => Error::Catalog {
                message,
                transient: true,
                source: None,
            },
            Seam::Store => Error::Store {
                message,
                transient: true,
                source: None,
            },
        })
    }
}

#[derive(Clone, Copy)]
enum Seam {
    Catalog,
    Store,
}

/// SplitMix64: a well-mixed 64-bit hash of `x`.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A catalog failing some of its calls ([`Faults`]).
pub struct FaultyCatalog {
    inner: DynCatalog,
    faults: Arc<Faults>,
}

impl FaultyCatalog {
    /// `inner`, failing calls as `faults` says.
    pub fn wrap(inner: DynCatalog, faults: Arc<Faults>) -> DynCatalog {
        Arc::new(FaultyCatalog { inner, faults })
    }

    fn check(&self, op: &str) -> Result<()> {
        self.faults.check(Seam::Catalog, op)
    }
}

#[async_trait]
impl SegmentLedger for FaultyCatalog {
    async fn reserve_segment(&self) -> Result<u64> {
        self.check("reserve_segment")?;
        self.inner.reserve_segment().await
    }
    async fn pending_segments(&self) -> Result<Vec<u64>> {
        self.check("pending_segments")?;
        self.inner.pending_segments().await
    }
    async fn abandon_segment(&self, seq: u64) -> Result<()> {
        self.check("abandon_segment")?;
        self.inner.abandon_segment(seq).await
    }
    async fn commit(&self, batch: CommitBatch) -> Result<Vec<bool>> {
        self.check("commit")?;
        self.inner.commit(batch).await
    }
    async fn unpublished_segments(&self) -> Result<Vec<u64>> {
        self.check("unpublished_segments")?;
        self.inner.unpublished_segments().await
    }
    async fn mark_published(&self, seqs: &[u64]) -> Result<()> {
        self.check("mark_published")?;
        self.inner.mark_published(seqs).await
    }
    async fn committed_segments_after(&self, after: u64, limit: usize) -> Result<Vec<u64>> {
        self.check("committed_segments_after")?;
        self.inner.committed_segments_after(after, limit).await
    }
    fn commit_signal(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.commit_signal()
    }
}

#[async_trait]
impl UpdateIndex for FaultyCatalog {
    async fn filter_new(&self, ids: &[(&str, &str)]) -> Result<Vec<bool>> {
        self.check("filter_new")?;
        self.inner.filter_new(ids).await
    }
    async fn record_updates(
        &self,
        model: &str,
        record_id: &str,
        up_to_us: Micros,
    ) -> Result<Vec<IndexEntry>> {
        self.check("record_updates")?;
        self.inner.record_updates(model, record_id, up_to_us).await
    }
    async fn record_updates_after(
        &self,
        model: &str,
        record_id: &str,
        after: (Micros, &str, &str),
        up_to_us: Micros,
        seen: Option<u64>,
    ) -> Result<UpdatesAfter> {
        self.check("record_updates_after")?;
        self.inner
            .record_updates_after(model, record_id, after, up_to_us, seen)
            .await
    }
    async fn master(&self, model: &str, record_id: &str) -> Result<Option<MasterDoc>> {
        self.check("master")?;
        self.inner.master(model, record_id).await
    }
    async fn ref_updates_after(
        &self,
        model: &str,
        name: &str,
        value: &str,
        after: Option<(Micros, &str, &str)>,
        up_to_us: Micros,
    ) -> Result<RefUpdatesAfter> {
        self.check("ref_updates_after")?;
        self.inner
            .ref_updates_after(model, name, value, after, up_to_us)
            .await
    }
    async fn keep_ref_updates(&self, pairs: &[(String, String)]) -> Result<()> {
        self.check("keep_ref_updates")?;
        self.inner.keep_ref_updates(pairs).await
    }
    async fn records_by_ref(&self, model: &str, name: &str, value: &str) -> Result<Vec<String>> {
        self.check("records_by_ref")?;
        self.inner.records_by_ref(model, name, value).await
    }
    async fn updates_in_window(
        &self,
        from_us: Micros,
        to_us: Micros,
        after: Option<(Micros, String, String)>,
        limit: usize,
    ) -> Result<Vec<IndexEntry>> {
        self.check("updates_in_window")?;
        self.inner
            .updates_in_window(from_us, to_us, after, limit)
            .await
    }
    async fn dump(&self) -> Result<CatalogDump> {
        self.check("dump")?;
        self.inner.dump().await
    }
}

#[async_trait]
impl SnapshotStore for FaultyCatalog {
    async fn snapshot_at_or_before(
        &self,
        model: &str,
        record_id: &str,
        up_to_us: Micros,
    ) -> Result<Option<Snapshot>> {
        self.check("snapshot_at_or_before")?;
        self.inner
            .snapshot_at_or_before(model, record_id, up_to_us)
            .await
    }
    async fn record_updates_from_snapshot(
        &self,
        model: &str,
        record_id: &str,
        up_to_us: Micros,
    ) -> Result<FromSnapshot> {
        self.check("record_updates_from_snapshot")?;
        self.inner
            .record_updates_from_snapshot(model, record_id, up_to_us)
            .await
    }
    async fn put_snapshots(&self, writes: &[SnapshotWrite]) -> Result<()> {
        self.check("put_snapshots")?;
        self.inner.put_snapshots(writes).await
    }
    async fn snapshots(&self, model: &str, record_id: &str) -> Result<Vec<Snapshot>> {
        self.check("snapshots")?;
        self.inner.snapshots(model, record_id).await
    }
}

#[async_trait]
impl SourceProgress for FaultyCatalog {
    async fn source_states(&self) -> Result<Vec<SourceState>> {
        self.check("source_states")?;
        self.inner.source_states().await
    }
    async fn heartbeat(&self, source: &str, watermark_us: Micros, now_us: Micros) -> Result<()> {
        self.check("heartbeat")?;
        self.inner.heartbeat(source, watermark_us, now_us).await
    }
    async fn claim_lanes(
        &self,
        source: &str,
        claims: &[(String, Micros)],
        retire: &[String],
        now_us: Micros,
    ) -> Result<()> {
        self.check("claim_lanes")?;
        self.inner.claim_lanes(source, claims, retire, now_us).await
    }
    async fn lane_claims(&self, source: &str) -> Result<Vec<(String, Micros)>> {
        self.check("lane_claims")?;
        self.inner.lane_claims(source).await
    }
}

#[async_trait]
impl IncidentStore for FaultyCatalog {
    async fn incident(&self, check: &str, subject: &str) -> Result<Option<Incident>> {
        self.check("incident")?;
        self.inner.incident(check, subject).await
    }
    async fn put_incident(&self, inc: &Incident) -> Result<Option<u64>> {
        self.check("put_incident")?;
        self.inner.put_incident(inc).await
    }
    async fn unsettled_incidents(&self, limit: usize) -> Result<Vec<Incident>> {
        self.check("unsettled_incidents")?;
        self.inner.unsettled_incidents(limit).await
    }
    async fn incidents(&self, failing_only: bool) -> Result<Vec<Incident>> {
        self.check("incidents")?;
        self.inner.incidents(failing_only).await
    }
    async fn rearmed_incidents(&self) -> Result<Vec<Incident>> {
        self.check("rearmed_incidents")?;
        self.inner.rearmed_incidents().await
    }
}

#[async_trait]
impl MetaStore for FaultyCatalog {
    async fn get_meta(&self, key: &str) -> Result<Option<String>> {
        self.check("get_meta")?;
        self.inner.get_meta(key).await
    }
    async fn put_meta(&self, key: &str, value: &str) -> Result<()> {
        self.check("put_meta")?;
        self.inner.put_meta(key, value).await
    }
    async fn init_meta(&self, key: &str, value: &str) -> Result<String> {
        self.check("init_meta")?;
        self.inner.init_meta(key, value).await
    }
}

impl Catalog for FaultyCatalog {
    fn describe(&self) -> String {
        format!("{} (with injected faults)", self.inner.describe())
    }

    fn local_file(&self) -> Option<&std::path::Path> {
        self.inner.local_file()
    }
}

/// An object store failing some of its calls ([`Faults`]).
#[derive(Debug)]
pub struct FaultyStore {
    inner: DynStore,
    faults: Arc<Faults>,
}

impl FaultyStore {
    /// `inner`, failing calls as `faults` says.
    pub fn wrap(inner: DynStore, faults: Arc<Faults>) -> DynStore {
        Arc::new(FaultyStore { inner, faults })
    }

    fn check(&self, op: &str) -> Result<()> {
        self.faults.check(Seam::Store, op)
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_create(&self, key: &str, bytes: Bytes) -> Result<PutOutcome> {
        self.check("put_create")?;
        self.inner.put_create(key, bytes).await
    }
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        self.check("get")?;
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Bytes> {
        self.check("get_range")?;
        self.inner.get_range(key, start, len).await
    }
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        self.check("list")?;
        self.inner.list(prefix, start_after, limit).await
    }
    fn describe(&self) -> String {
        format!("{} (with injected faults)", self.inner.describe())
    }

    fn local_dir(&self) -> Option<&std::path::Path> {
        self.inner.local_dir()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fails_about_the_fraction_asked_once_armed() {
        let f = Faults::new(200, 7);
        assert!((0..100).all(|_| f.check(Seam::Store, "get").is_ok()));
        f.arm();
        let failed = (0..10_000)
            .filter(|_| f.check(Seam::Catalog, "x").is_err())
            .count();
        assert!((1_700..2_300).contains(&failed), "{failed}");
        assert_eq!(f.injected(), failed as u64);
        let err = (0..100)
            .find_map(|_| f.check(Seam::Catalog, "incident").err())
            .unwrap();
        assert!(err.is_transient() && err.to_string().contains("incident"));
    }
}
