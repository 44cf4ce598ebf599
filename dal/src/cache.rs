//! The DAL's read cache: decoded update records by location, bounded in bytes.
//!
//! Views read the same updates again and again (every check run on a transfer re-reads its
//! history and its ledger entries), and each read is a ranged GET on the object store. The
//! cache keeps decoded records keyed by [`UpdateLoc`], so a warm view costs catalog lookups
//! and folds but no object-store traffic and no protobuf decoding. Records are immutable
//! (a location is never rewritten), so entries never go stale and need no invalidation.
//!
//! Memory is bounded by a byte budget: each entry weighs its encoded size plus a fixed
//! per-entry overhead, and quick_cache evicts (CLOCK-Pro) past the budget.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::update::{UpdateLoc, UpdateRecord};

/// Bytes charged per entry on top of the record's encoded length: the decoded strings,
/// the `Arc`, and the cache's own bookkeeping.
const ENTRY_OVERHEAD: u64 = 256;

/// The default budget: 64 MiB.
pub const DEFAULT_CACHE_BYTES: u64 = 64 << 20;

#[derive(Clone)]
struct Entry {
    rec: Arc<UpdateRecord>,
    /// Fixed at insertion: quick_cache requires an entry's weight never to change.
    weight: u64,
}

#[derive(Clone)]
struct ByWeight;

impl quick_cache::Weighter<UpdateLoc, Entry> for ByWeight {
    fn weight(&self, _: &UpdateLoc, e: &Entry) -> u64 {
        e.weight
    }
}

/// Hit and miss counts, and what the cache holds now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: u64,
    pub bytes: u64,
    pub capacity_bytes: u64,
}

/// A quick_cache bounded by `capacity_bytes` of weight; `None` for a zero budget (caching
/// disabled). Its tables are sized for ~1 KiB entries.
pub(crate) fn byte_bounded<K, V, W>(
    capacity_bytes: u64,
    weighter: W,
) -> Option<quick_cache::sync::Cache<K, V, W>>
where
    K: Eq + std::hash::Hash,
    V: Clone,
    W: quick_cache::Weighter<K, V> + Clone,
{
    (capacity_bytes > 0).then(|| {
        let items = (capacity_bytes / 1024).clamp(16, 1 << 22) as usize;
        quick_cache::sync::Cache::with_weighter(items, capacity_bytes, weighter)
    })
}

/// A concurrent, byte-bounded cache of decoded update records.
pub struct ReadCache {
    /// `None` when the budget is zero: caching disabled.
    inner: Option<quick_cache::sync::Cache<UpdateLoc, Entry, ByWeight>>,
    capacity: u64,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl std::fmt::Debug for ReadCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadCache")
            .field("stats", &self.stats())
            .finish()
    }
}

impl ReadCache {
    /// A cache holding at most about `capacity_bytes` of records; 0 disables it.
    pub fn new(capacity_bytes: u64) -> Self {
        ReadCache {
            inner: byte_bounded(capacity_bytes, ByWeight),
            capacity: capacity_bytes,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The record at `loc`, if cached.
    pub fn get(&self, loc: &UpdateLoc) -> Option<Arc<UpdateRecord>> {
        let found = self.inner.as_ref().and_then(|c| c.get(loc)).map(|e| e.rec);
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Caches the record read at `loc` (`loc.len` is its encoded size).
    pub fn insert(&self, loc: UpdateLoc, rec: Arc<UpdateRecord>) {
        if let Some(c) = &self.inner {
            let weight = u64::from(loc.len) + ENTRY_OVERHEAD;
            c.insert(loc, Entry { rec, weight });
        }
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: self.inner.as_ref().map_or(0, |c| c.len() as u64),
            bytes: self.inner.as_ref().map_or(0, |c| c.weight()),
            capacity_bytes: self.capacity,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(i: u32) -> UpdateLoc {
        UpdateLoc {
            segment_seq: 1,
            offset: i * 1000,
            len: 1000,
        }
    }

    fn rec(i: u32) -> Arc<UpdateRecord> {
        Arc::new(UpdateRecord {
            position: i.to_string(),
            ..Default::default()
        })
    }

    #[test]
    fn hits_misses_and_bound() {
        let c = ReadCache::new(100 * (1000 + ENTRY_OVERHEAD));
        assert!(c.get(&loc(1)).is_none());
        c.insert(loc(1), rec(1));
        assert_eq!(c.get(&loc(1)).unwrap().position, "1");
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.entries), (1, 1, 1));

        for i in 0..10_000 {
            c.insert(loc(i), rec(i));
        }
        let s = c.stats();
        assert!(s.bytes <= s.capacity_bytes, "{s:?}");
        assert!(s.entries <= 100, "{s:?}");
    }

    #[test]
    fn zero_budget_disables() {
        let c = ReadCache::new(0);
        c.insert(loc(1), rec(1));
        assert!(c.get(&loc(1)).is_none());
        assert_eq!(c.stats().entries, 0);
    }
}
