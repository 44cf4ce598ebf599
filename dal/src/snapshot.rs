//! Snapshots: records' folds persisted beside the history every [`Snapshots::every`]
//! updates, so a read of a long-lived record as of any time folds at most that many
//! updates — also in a process that never read the record (a restarted or rebalanced
//! runner, `overseer view`, a replay), and as of a time older than its maintained fold.
//!
//! ```text
//!  record(m, id, T), no maintained fold usable
//!     └─ record_updates_from_snapshot(m, id, T): the snapshot S nearest before T and the
//!        updates after it up to T, with how many are at or before S (one read)
//!          ├─ S made by these builders and that count == S.n: fold on from S
//!          └─ else: fold the whole history ≤ T; write the snapshots due on the way,
//!             clearing those up to S (an update arrived late before S)
//! ```
//!
//! Written by the reader that folds (not by ingestion, which never folds): each time a
//! fold passes `every` updates since its last snapshot, the state then is queued and
//! written in the background, several per catalog transaction (derived data: a crash only
//! loses work; a read-only catalog takes them as done and keeps none). Writes never wait
//! for a reader and never fail a read; past [`MAX_PENDING_BYTES`] queued they are dropped
//! (and counted). Nothing is trusted: a snapshot is used only if the record still has
//! exactly `n` updates at or before it (the count check of [`crate::state`]) and it was
//! folded by builders with the same [`crate::builder::Builders::fingerprint`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::builder::State;
use crate::catalog::DynCatalog;
use crate::state::{Folded, Last};
use crate::update::{Snapshot, SnapshotWrite};
use crate::{Error, Result};

/// The default spacing: a snapshot every 128 updates of a record, so a read folds at most
/// 128 (about 0.7 ms cold on the bench machine) and the snapshots cost about as much
/// storage as one update in a hundred.
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 128;

/// Snapshot bytes queued for writing past which new ones are dropped (one batch being
/// written is not counted).
pub const MAX_PENDING_BYTES: usize = 16 << 20;

/// Snapshots per queued write: a fold of a long history queues its snapshots in pieces
/// of this many as it goes, so none is dropped for the size of the whole.
pub const WRITE_PIECE: usize = 32;

/// What a snapshot's body holds: the fold but its count and last update (the key).
#[derive(Serialize, Deserialize)]
struct Body {
    state: Option<State>,
    refs: std::collections::BTreeMap<String, String>,
}

/// A fold as a snapshot of `model`/`record_id` (which must have folded at least one
/// update).
pub fn encode(model: &str, record_id: &str, fold: &Folded, fingerprint: u64) -> Snapshot {
    let last = fold.last.as_ref().expect("a snapshot follows an update");
    let body = serde_json::to_vec(&BodyRef {
        state: fold.state.as_ref(),
        refs: &fold.refs,
    })
    .expect("a JSON state serializes");
    Snapshot {
        model: model.to_owned(),
        record_id: record_id.to_owned(),
        event_time_us: last.event_time_us,
        source: last.source.clone(),
        position: last.position.clone(),
        n: fold.n,
        fold: fingerprint,
        body,
    }
}

#[derive(Serialize)]
struct BodyRef<'a> {
    state: Option<&'a State>,
    refs: &'a std::collections::BTreeMap<String, String>,
}

/// The fold a snapshot holds (its `snap_n` is its own count: the next is due `every`
/// updates later).
pub fn decode(s: &Snapshot) -> Result<Folded> {
    let body: Body = serde_json::from_slice(&s.body).map_err(|e| {
        Error::corrupt(
            format!("snapshot of {} {:?}", s.model, s.record_id),
            format!("its body is not a fold: {e}"),
        )
    })?;
    Ok(Folded {
        n: s.n,
        last: Some(Last {
            event_time_us: s.event_time_us,
            source: s.source.clone(),
            position: s.position.clone(),
        }),
        state: body.state,
        refs: body.refs,
        snap_n: s.n,
    })
}

/// How snapshots went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    /// Reads that folded on from a snapshot.
    pub read: u64,
    /// Snapshots found unusable (an update arrived late before them, or other builders
    /// made them): the read folded the history and replaced them.
    pub stale: u64,
    /// Snapshots written.
    pub written: u64,
    /// Snapshots not written: the queue was full, or the catalog refused them.
    pub dropped: u64,
}

/// The snapshot policy of a DAL and its background writer.
#[derive(Debug)]
pub struct Snapshots {
    every: u64,
    inner: Arc<Writer>,
}

#[derive(Debug, Default)]
struct Writer {
    queue: Mutex<Queue>,
    /// A task is writing the queue.
    running: AtomicBool,
    read: AtomicU64,
    stale: AtomicU64,
    written: AtomicU64,
    dropped: AtomicU64,
}

#[derive(Debug, Default)]
struct Queue {
    writes: Vec<SnapshotWrite>,
    bytes: usize,
}

impl Snapshots {
    /// A snapshot every `every` updates of a record (0: none are written or read).
    pub fn new(every: u64) -> Self {
        Snapshots {
            every,
            inner: Arc::default(),
        }
    }

    pub fn every(&self) -> u64 {
        self.every
    }

    pub fn stats(&self) -> SnapshotStats {
        let w = &self.inner;
        SnapshotStats {
            read: w.read.load(Ordering::Relaxed),
            stale: w.stale.load(Ordering::Relaxed),
            written: w.written.load(Ordering::Relaxed),
            dropped: w.dropped.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn count_read(&self) {
        self.inner.read.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_stale(&self) {
        self.inner.stale.fetch_add(1, Ordering::Relaxed);
    }

    /// Queues a write and makes sure a task is writing the queue (on the current tokio
    /// runtime; outside one, the write is dropped).
    pub(crate) fn write(&self, catalog: &DynCatalog, w: SnapshotWrite) {
        let n = w.snapshots.len() as u64;
        let bytes: usize = w
            .snapshots
            .iter()
            .map(|s| s.body.len() + s.record_id.len() + s.position.len() + 64)
            .sum();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.inner.dropped.fetch_add(n, Ordering::Relaxed);
            return;
        };
        {
            let mut q = self.inner.queue.lock().expect("snapshot queue poisoned");
            if q.bytes + bytes > MAX_PENDING_BYTES {
                drop(q);
                self.inner.dropped.fetch_add(n, Ordering::Relaxed);
                return;
            }
            q.bytes += bytes;
            q.writes.push(w);
        }
        if self.inner.running.swap(true, Ordering::SeqCst) {
            return;
        }
        let (inner, catalog) = (self.inner.clone(), catalog.clone());
        rt.spawn(async move {
            // However the task ends (its runtime shut down, a panic), the next write
            // starts another and `flush` does not wait for it.
            struct Running(Option<Arc<Writer>>);
            impl Drop for Running {
                fn drop(&mut self) {
                    if let Some(w) = &self.0 {
                        w.running.store(false, Ordering::SeqCst);
                    }
                }
            }
            let mut running = Running(Some(inner.clone()));
            loop {
                let writes = {
                    let mut q = inner.queue.lock().expect("snapshot queue poisoned");
                    q.bytes = 0;
                    std::mem::take(&mut q.writes)
                };
                if writes.is_empty() {
                    inner.running.store(false, Ordering::SeqCst);
                    // A write queued between the take and the store found `running` set
                    // and left it to this task: take it on, unless another task did.
                    let more = !inner
                        .queue
                        .lock()
                        .expect("snapshot queue poisoned")
                        .writes
                        .is_empty();
                    if more && !inner.running.swap(true, Ordering::SeqCst) {
                        continue;
                    }
                    // Another task owns `running` now (or nothing is queued): do not
                    // clear it on the way out.
                    running.0 = None;
                    return;
                }
                let n: u64 = writes.iter().map(|w| w.snapshots.len() as u64).sum();
                match catalog.put_snapshots(&writes).await {
                    Ok(()) => {
                        inner.written.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(e) => {
                        let before = inner.dropped.fetch_add(n, Ordering::Relaxed);
                        // Once, then now and then: a read-only catalog refuses them all.
                        if before == 0 || before % 10_000 < n {
                            tracing::warn!(
                                error = %e,
                                "could not write {n} snapshots (reads fold the history \
                                 instead; {before} dropped before)"
                            );
                        }
                    }
                }
            }
        });
    }

    /// Waits until every write queued so far is written (or dropped): for tests and for
    /// `overseer reindex`, which rebuilds them.
    pub async fn flush(&self) {
        loop {
            let idle = !self.inner.running.load(Ordering::SeqCst)
                && self
                    .inner
                    .queue
                    .lock()
                    .expect("snapshot queue poisoned")
                    .writes
                    .is_empty();
            if idle {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A snapshot gives back exactly the fold it was made of: every number (integers
        /// past 2^53, any f64, bit for bit), string and reference.
        #[test]
        fn a_fold_round_trips(
            floats in proptest::collection::vec(any::<f64>().prop_filter("finite", |f| f.is_finite()), 0..20),
            ints in proptest::collection::vec(any::<i64>(), 0..5),
            text in "\\PC{0,40}",
            refs in proptest::collection::btree_map("[a-z_]{1,8}", "\\PC{0,12}", 0..4),
        ) {
            let mut state = State::new();
            for (i, f) in floats.iter().enumerate() {
                state.insert(format!("f{i}"), serde_json::json!(f));
            }
            for (i, n) in ints.iter().enumerate() {
                state.insert(format!("i{i}"), serde_json::json!(n));
                state.insert(format!("u{i}"), serde_json::json!(n.unsigned_abs() | (1 << 63)));
            }
            state.insert("nested".into(), serde_json::json!({"t": text, "a": [floats, ints]}));
            let fold = Folded {
                n: 300,
                last: Some(Last { event_time_us: -5, source: "s".into(), position: "p".into() }),
                state: Some(state),
                refs,
                snap_n: 300,
            };
            let snap = encode("m", "id", &fold, 7);
            let back = decode(&snap).unwrap();
            prop_assert_eq!(&back, &fold);
            if let (Some(a), Some(b)) = (&back.state, &fold.state) {
                for (k, v) in b {
                    if let Some(f) = v.as_f64().filter(|_| v.is_f64()) {
                        prop_assert_eq!(a[k].as_f64().unwrap().to_bits(), f.to_bits(), "{}", k);
                    }
                }
            }
        }
    }
}
