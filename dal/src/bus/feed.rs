//! A crash-safe [`Subscription`] over the catalog, for embedded mode.
//!
//! The in-process bus ([`super::memory::MemoryBus`]) loses what it holds when the process
//! dies and its `commit` does nothing. In embedded mode the runner reads this feed instead:
//! it derives notifications from the durable truth (the catalog's segment ledger and the
//! segment objects) and keeps its cursor in the catalog's meta table.
//!
//! ```text
//!  committed_segments_after ──> GET segment ──> decode ──> buffer ──recv──> runner
//!  (below the lowest pending)    (object)     (one note                       │ checks run
//!                                              per record)                    v
//!                                 meta "feed/<name>" <──────────── commit(tags)
//! ```
//!
//! # Delivery tags
//! A record is tagged `DeliveryTag { partition: 0, offset: seq << 24 | index }`: `seq` the
//! segment's sequence number, `index` the record's position in the segment (from 0). So
//! tags order like the feed delivers (sequence order, then segment order), and one `i64`
//! says exactly how far the feed got. A segment holding 2^24 records or more, or a sequence
//! number of 2^39 or more, cannot be tagged and makes `recv` fail (ingestion batches are
//! thousands of records, and sequences grow by one per batch).
//!
//! # Progress tracking
//! `commit(tags)` stores the highest committed offset, as decimal text, under meta key
//! `feed/<name>`; the caller guarantees that everything before it is done too (the runner
//! commits in prefix order, and only past notifications whose triggered checks have all
//! run: DESIGN invariant 1). The stored cursor only moves forward. On [`CatalogFeed::open`]
//! the feed resumes right after it: records of a partially done segment at or below the
//! cursor are skipped, the rest are delivered again. Delivery is at-least-once: whatever
//! was received but not committed before a crash comes again.
//!
//! # Never past a pending segment
//! Several sources ingest at once, so segment `n` may commit after `n + 1`. The feed reads
//! committed segments in sequence order but never at or past the lowest *pending* one:
//! moving its read position past a segment that later commits would skip it forever. Each
//! look lists committed segments, then pending ones, then committed ones again, and reads
//! only segments of the second listing that are no higher than the newest of the first and
//! below the lowest pending. Every segment up to the first listing's newest was reserved
//! before the pending list was read, so it then was pending (and holds the feed back),
//! committed (and is in the second listing) or released (and never commits). This relies on
//! reservations becoming visible in sequence order, which holds for the embedded catalog
//! (one serialised write transaction each); the Kafka bus is the feed of the PostgreSQL
//! deployment.
//!
//! # Duplicates
//! Every record of a committed segment is delivered. A segment committed by `reindex` or by
//! crash recovery can hold an update that was already indexed from an earlier segment
//! (the catalog's `commit` reported it as not new); its notification then comes twice, the
//! second time pointing at identical bytes in the later segment. Telling them apart would
//! cost one [`UpdateIndex::record_updates`] per record (the catalog has no lookup by
//! `(source, position)`), which scans the record's whole history up to the update: quadratic
//! for a hot record such as a wallet. A duplicate notification is harmless downstream
//! (checks are idempotent and incidents are compare-and-set), and crash recovery
//! re-publishes such segments whole on the Kafka path as well, so the feed does not check.
//!
//! # Cancel safety
//! `recv` is used inside `tokio::select!`. Its state (read position and a buffer of decoded
//! notifications) changes only between awaits, once a whole segment is fetched and decoded,
//! so a `recv` dropped at any await loses nothing and hands out nothing twice.
//!
//! [`UpdateIndex::record_updates`]: crate::catalog::UpdateIndex::record_updates

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{Delivered, DeliveryTag, Subscription};
use crate::cache::ReadCache;
use crate::catalog::DynCatalog;
use crate::keys::segment_key;
use crate::segment::decode_segment;
use crate::store::DynStore;
use crate::update::IndexEntry;
use crate::{Error, Result};

/// Bits of a tag's offset that hold the record's index in its segment.
const INDEX_BITS: u32 = 24;
/// Index part of an offset meaning "the whole segment".
const WHOLE_SEGMENT: i64 = (1 << INDEX_BITS) - 1;
/// Segments are numbered below this, so `seq << 24` stays a positive `i64`.
const MAX_SEQ: u64 = 1 << (63 - INDEX_BITS);
/// Committed segments listed per look.
const LIST_LIMIT: usize = 64;

/// The tag offset of record `index` of segment `seq`.
fn encode_offset(seq: u64, index: usize) -> Result<i64> {
    if seq >= MAX_SEQ {
        return Err(too_big(format!("segment sequence {seq} is 2^39 or more")));
    }
    // The all-ones index stands for a whole segment (see `open_at_end`).
    if index as u64 >= WHOLE_SEGMENT as u64 {
        return Err(too_big(format!("segment {seq} holds 2^24 records or more")));
    }
    Ok(((seq as i64) << INDEX_BITS) | index as i64)
}

fn too_big(message: String) -> Error {
    Error::Bus {
        message: format!("catalog feed cannot tag this record: {message}"),
        transient: false,
        source: None,
    }
}

fn meta_key(name: &str) -> String {
    format!("feed/{name}")
}

/// A [`Subscription`] that reads notifications from the catalog and object store, with its
/// cursor kept in the catalog (meta key `feed/<name>`). See the module documentation.
pub struct CatalogFeed {
    catalog: DynCatalog,
    store: DynStore,
    /// Meta key of the cursor: `feed/<name>`.
    key: String,
    /// How long `recv` waits before looking again when nothing is available.
    poll: Duration,
    /// Every segment up to this one is read (in `buffer` or handed out); 0: none.
    read_seq: u64,
    /// Records with an offset at or below this are not delivered: the committed cursor
    /// found on open, for resuming in the middle of a segment. -1: none.
    skip_through: i64,
    /// The highest offset stored, so the cursor never moves back. -1: none.
    committed: i64,
    /// Decoded notifications not yet handed out; what makes `recv` cancel-safe.
    buffer: VecDeque<Delivered>,
    /// Where the records of every segment read go (see [`CatalogFeed::warming`]).
    cache: Option<Arc<ReadCache>>,
    /// The catalog's commit signal, when it gives one: `recv` wakes as a batch commits
    /// instead of at its next poll (which stays, for commits by other processes).
    signal: Option<tokio::sync::watch::Receiver<u64>>,
}

impl std::fmt::Debug for CatalogFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatalogFeed")
            .field("key", &self.key)
            .field("read_seq", &self.read_seq)
            .field("committed", &self.committed)
            .field("buffered", &self.buffer.len())
            .finish()
    }
}

impl CatalogFeed {
    /// Opens feed `name`, resuming after its stored cursor; without one, from the beginning
    /// of history (every committed segment is delivered). `poll` is how long `recv` waits
    /// before looking again when nothing new is committed.
    pub async fn open(
        catalog: DynCatalog,
        store: DynStore,
        name: &str,
        poll: Duration,
    ) -> Result<Self> {
        let key = Self::check_name(name)?;
        let cursor = Self::read_cursor(&*catalog, &key).await?;
        Ok(Self::at(catalog, store, key, poll, cursor.unwrap_or(-1)))
    }

    /// Like [`CatalogFeed::open`], but without a stored cursor it starts after the history
    /// committed so far, and stores that position at once (so a restart before the first
    /// commit does not skip what came in between). For a runner that should not re-check
    /// all of history on its first start. Segments still pending below the newest committed
    /// one are not skipped: the feed then starts just below the lowest pending segment, and
    /// a few already committed segments come again.
    pub async fn open_at_end(
        catalog: DynCatalog,
        store: DynStore,
        name: &str,
        poll: Duration,
    ) -> Result<Self> {
        let key = Self::check_name(name)?;
        let cursor = match Self::read_cursor(&*catalog, &key).await? {
            Some(c) => c,
            None => {
                // Newest committed first, then pending: see "Never past a pending segment".
                let newest = newest_committed(&catalog).await?;
                let pending = catalog.pending_segments().await?;
                let end = match pending.first() {
                    Some(&p) => newest.min(p.saturating_sub(1)),
                    None => newest,
                };
                let cursor = encode_offset(end, 0)? | WHOLE_SEGMENT;
                catalog.put_meta(&key, &cursor.to_string()).await?;
                cursor
            }
        };
        Ok(Self::at(catalog, store, key, poll, cursor))
    }

    fn check_name(name: &str) -> Result<String> {
        if name.is_empty() {
            return Err(Error::invalid("feed name", "empty"));
        }
        Ok(meta_key(name))
    }

    async fn read_cursor(catalog: &dyn crate::Catalog, key: &str) -> Result<Option<i64>> {
        match catalog.get_meta(key).await? {
            None => Ok(None),
            Some(v) => match v.parse::<i64>() {
                Ok(c) if c >= -1 => Ok(Some(c)),
                _ => Err(Error::corrupt(
                    format!("meta {key}"),
                    format!("not a feed cursor: {v:?}"),
                )),
            },
        }
    }

    /// A feed whose records up to offset `cursor` (-1: none) are done.
    fn at(catalog: DynCatalog, store: DynStore, key: String, poll: Duration, cursor: i64) -> Self {
        let read_seq = if cursor < 0 {
            0
        } else {
            let seq = (cursor >> INDEX_BITS) as u64;
            // A partly done segment is read again, and its done records skipped.
            if cursor & WHOLE_SEGMENT == WHOLE_SEGMENT {
                seq
            } else {
                seq.saturating_sub(1)
            }
        };
        CatalogFeed {
            signal: catalog.commit_signal(),
            catalog,
            store,
            key,
            poll,
            read_seq,
            skip_through: cursor,
            committed: cursor,
            buffer: VecDeque::new(),
            cache: None,
        }
    }

    /// Puts the records of every segment it reads into `cache` (a DAL's, see
    /// [`crate::Dal::cache`]): the checks its notifications trigger read those records
    /// next, and find them there instead of fetching the segment again (a GET per view
    /// on S3).
    pub fn warming(mut self, cache: Arc<ReadCache>) -> Self {
        self.cache = Some(cache);
        self
    }

    /// The stored cursor as this feed knows it: the highest committed offset, or -1.
    pub fn committed_offset(&self) -> i64 {
        self.committed
    }

    /// Reads committed segments that are safe to read (see the module documentation) into
    /// the buffer, until it holds `max` notifications or none are left.
    async fn fill(&mut self, max: usize) -> Result<()> {
        let first = self
            .catalog
            .committed_segments_after(self.read_seq, LIST_LIMIT)
            .await?;
        let Some(&bound) = first.last() else {
            return Ok(());
        };
        let pending = self.catalog.pending_segments().await?;
        let below = pending.first().copied().unwrap_or(u64::MAX);
        let ready = self
            .catalog
            .committed_segments_after(self.read_seq, LIST_LIMIT)
            .await?;
        let seqs: Vec<u64> = ready
            .into_iter()
            .take_while(|&seq| seq <= bound && seq < below)
            .collect();
        // A few segments at a time, fetched concurrently: on S3 a segment is a GET of
        // tens of ms, and paced traffic seals a segment per source every batch interval.
        for chunk in seqs.chunks(READ_AHEAD) {
            if self.buffer.len() >= max {
                break;
            }
            let read =
                futures::future::join_all(chunk.iter().map(|&seq| self.read_segment(seq))).await;
            // No await from here on: the segments are buffered and passed in one step.
            for (&seq, notes) in chunk.iter().zip(read) {
                self.buffer.extend(notes?);
                self.read_seq = seq;
            }
        }
        Ok(())
    }

    /// The notifications of segment `seq` not yet committed.
    async fn read_segment(&self, seq: u64) -> Result<Vec<Delivered>> {
        let key = segment_key(seq);
        let bytes = self.store.get(&key).await?.ok_or_else(|| {
            Error::corrupt(&key, "committed segment missing from the object store")
        })?;
        let seg = decode_segment(&bytes, &key)?;
        if seg.footer.seq != seq {
            return Err(Error::corrupt(
                &key,
                format!("footer says segment {}", seg.footer.seq),
            ));
        }
        let mut out = Vec::with_capacity(seg.records.len());
        for (index, (loc, rec)) in seg.records.into_iter().enumerate() {
            let offset = encode_offset(seq, index)?;
            if offset > self.skip_through {
                out.push(Delivered {
                    note: IndexEntry::from_record(&rec, loc).notification(),
                    tag: DeliveryTag {
                        partition: 0,
                        offset,
                    },
                });
            }
            if let Some(cache) = &self.cache {
                cache.insert(loc, Arc::new(rec));
            }
        }
        Ok(out)
    }
}

/// Segments read at once by [`CatalogFeed`].
const READ_AHEAD: usize = 8;

/// The newest committed segment (0: none), in O(log n) catalog reads: gallop up, then
/// bisect, using "the first committed segment after `a`".
async fn newest_committed(catalog: &DynCatalog) -> Result<u64> {
    let after = |a: u64| async move {
        Ok::<_, Error>(
            catalog
                .committed_segments_after(a, 1)
                .await?
                .first()
                .copied(),
        )
    };
    let Some(mut lo) = after(0).await? else {
        return Ok(0);
    };
    // `lo` is committed; find `hi` with nothing committed after it.
    let mut step = 1u64;
    let mut hi = loop {
        let probe = lo.saturating_add(step);
        match after(probe).await? {
            Some(s) => {
                lo = s;
                step = step.saturating_mul(2);
            }
            None => break probe,
        }
    };
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match after(mid).await? {
            Some(s) => lo = s,
            None => hi = mid,
        }
    }
    Ok(lo)
}

#[async_trait]
impl Subscription for CatalogFeed {
    async fn recv(&mut self, max: usize) -> Result<Vec<Delivered>> {
        let max = max.max(1);
        loop {
            // Seen before looking: a commit after the look wakes the wait below.
            if let Some(rx) = &mut self.signal {
                rx.borrow_and_update();
            }
            if self.buffer.is_empty() {
                self.fill(max).await?;
            }
            if !self.buffer.is_empty() {
                let n = max.min(self.buffer.len());
                return Ok(self.buffer.drain(..n).collect());
            }
            tokio::select! {
                _ = crate::catalog::committed(&mut self.signal) => {}
                _ = tokio::time::sleep(self.poll) => {}
            }
        }
    }

    async fn commit(&mut self, tags: &[DeliveryTag]) -> Result<()> {
        if let Some(t) = tags.iter().find(|t| t.partition != 0 || t.offset < 0) {
            return Err(Error::invalid(
                "delivery tag",
                format!("{t:?} was not delivered by a catalog feed"),
            ));
        }
        let Some(top) = tags.iter().map(|t| t.offset).max() else {
            return Ok(());
        };
        if top <= self.committed {
            return Ok(());
        }
        self.catalog.put_meta(&self.key, &top.to_string()).await?;
        self.committed = top;
        Ok(())
    }
}
