//! A timeline: the folds of the records a replay's window touches, advanced through the
//! window in commit order, so a replayed run reads its records from memory.
//!
//! Replay reads its window page by page in time-travel order (commit time, source,
//! position). A DAL with a timeline ([`crate::Dal::with_timeline`]) applies each page to
//! the folds of the records it names ([`crate::Dal::advance_timeline`]), each update
//! once, keeping the fold after each update (a *version*) for as long as a run may still
//! read it. A read of a record as of T ([`crate::Dal::record`], so every view, join member
//! and lookup) is then the newest version at or before T — no catalog read, no fetch, no
//! fold — when the timeline *covers* it:
//!
//! - every update with commit time ≤ T has been applied: T ≤ [`Timeline::complete_us`],
//!   which replay raises after each page to just before the page's last commit time (the
//!   next page may hold more updates at that time) and, after the last page, to the
//!   window's end; and
//! - the record's versions reach back to T: its oldest version kept is at or before T.
//!
//! Anything else is read as before, from the catalog, with the same answer: a time past
//! what has been applied (a run evaluated after the window's end), a time before the
//! record's oldest version kept, a record evicted to stay within the budget, a record
//! whose history does not fold (its reads give the catalog path's error).
//!
//! ```text
//!  page of the window (time-travel order) ─┬─ records new to the timeline: their base
//!                                          │    (the fold as of the commit time of their
//!                                          │    first update here, read once; or empty)
//!                                          └─ each update fetched once, folded onto the
//!                                               record's newest version: a new version
//!  record(m, id, T) ── covered? ── yes: newest version ≤ T (a lookup)
//!                       └─ no: the catalog path (maintained fold, snapshot, history)
//! ```
//!
//! A record's *base* is its fold as of the commit time of its first update in the window,
//! read from the history once (it includes every update at that time, so updates at that
//! time are not applied again). When the history holds nothing before the window
//! ([`Timeline::new`]'s `empty_before`), a record first seen in the window has no earlier
//! update, and its base is the empty fold: no base is read at all. A record evicted
//! earlier reads its base again. (Reads still go to the catalog for what the timeline does
//! not cover: runs evaluated after the window, records evicted, records that do not fold.)
//!
//! The timeline is the history as it was when each page was read: an update committed
//! later with a commit time inside the window (a source still catching up) is not in it,
//! while the catalog path would see it. Replay a window its sources have completed (its
//! end behind every source's watermark) to have one answer.
//!
//! Only the models some replayed check's view reads are kept ([`Timeline::of_models`]): a
//! narrow replay folds and bases nothing else.
//!
//! Memory: versions at or before the *floor* of [`crate::Dal::advance_timeline`] (the
//! oldest evaluation time a run may still ask for) are dropped except the newest of them,
//! and when the versions' estimated bytes pass the budget, the records least recently read
//! or written are evicted until they are under three quarters of it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use crate::state::Folded;
use crate::update::Micros;

/// The default budget of a replay's timeline: 128 MiB (estimated; a replay of 1M updates
/// with it peaks at about 1 GB of RSS, all told).
pub const DEFAULT_TIMELINE_BYTES: u64 = 128 << 20;

/// Bytes charged per version on top of its fold's estimate: the deque slot, the `Arc`.
const VERSION_OVERHEAD: u64 = 48;

/// How a timeline went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimelineStats {
    /// Record reads served from the timeline.
    pub reads: u64,
    /// Record reads it did not cover (read from the catalog instead).
    pub missed: u64,
    /// Updates folded into it (each once).
    pub updates_applied: u64,
    /// Bases read from the history (records first seen in the window, when the history
    /// holds updates before it, and records evicted before).
    pub bases_read: u64,
    /// Records evicted to stay within the budget.
    pub evicted: u64,
    /// Records left to the catalog path because their history does not fold (or their
    /// base could not be read).
    pub unfoldable: u64,
    /// The most bytes its versions held at once (estimated).
    pub peak_bytes: u64,
}

/// A record's versions, oldest first: (commit time, the fold after the updates up to it,
/// its estimated bytes). The first is the record's base or the newest version at or before
/// the floor.
struct Versions {
    list: VecDeque<(Micros, Arc<Folded>, u64)>,
    /// Updates at or before this time are in the base (read from the history): not applied
    /// again. `Micros::MIN` for an empty base.
    based_us: Micros,
    bytes: u64,
    /// The page count when it was last read or written: eviction takes the least recently
    /// used first (a lookup's record, written once and read by every view, stays).
    used: AtomicU64,
}

struct Inner {
    /// By model, then record id: a read looks up borrowed names without allocating.
    records: HashMap<String, HashMap<String, Versions>>,
    complete_us: Micros,
    bytes: u64,
    /// `bytes` after the last sweep of old versions.
    swept_bytes: u64,
    /// Pages applied: the clock of [`Versions::used`].
    pages: u64,
    /// Records evicted: their next update reads their base from the history.
    evicted: HashSet<u64>,
    /// Records whose history does not fold: always read from the catalog.
    unfoldable: HashSet<u64>,
    /// Switched off ([`Timeline::switch_off`]): covers nothing, applies nothing.
    off: bool,
}

/// The folds of a replayed window's records: see the module documentation.
pub struct Timeline {
    inner: RwLock<Inner>,
    budget: u64,
    empty_before: bool,
    /// The models kept (`None`: every model).
    models: Option<HashSet<String>>,
    reads: AtomicU64,
    missed: AtomicU64,
    updates_applied: AtomicU64,
    bases_read: AtomicU64,
    evicted: AtomicU64,
    unfoldable: AtomicU64,
    peak_bytes: AtomicU64,
}

impl std::fmt::Debug for Timeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timeline")
            .field("budget", &self.budget)
            .field("empty_before", &self.empty_before)
            .field("stats", &self.stats())
            .finish()
    }
}

/// A record's base as read: its fold, and the time up to which it holds its updates.
pub(crate) type BaseFold = (Folded, Micros);

/// What a record new to the timeline starts from.
pub(crate) enum Base {
    /// Nothing before it: the empty fold.
    Empty,
    /// Its fold as of this time, read from the history.
    AsOf(Micros),
}

impl Timeline {
    /// An empty timeline covering nothing yet, of about `budget` bytes. `empty_before`:
    /// the history holds no update before the window, so a record first seen in it starts
    /// from the empty fold (else its base is read from the history).
    pub fn new(budget: u64, empty_before: bool) -> Self {
        Timeline {
            inner: RwLock::new(Inner {
                records: HashMap::new(),
                complete_us: Micros::MIN,
                bytes: 0,
                swept_bytes: 0,
                pages: 0,
                evicted: HashSet::new(),
                unfoldable: HashSet::new(),
                off: false,
            }),
            budget,
            empty_before,
            models: None,
            reads: AtomicU64::new(0),
            missed: AtomicU64::new(0),
            updates_applied: AtomicU64::new(0),
            bases_read: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            unfoldable: AtomicU64::new(0),
            peak_bytes: AtomicU64::new(0),
        }
    }

    /// Keeps only the records of these models (those the replayed checks' views read;
    /// reads of any other go to the catalog).
    pub fn of_models(mut self, models: impl IntoIterator<Item = String>) -> Self {
        self.models = Some(models.into_iter().collect());
        self
    }

    /// Whether it keeps the records of `model`.
    pub(crate) fn keeps(&self, model: &str) -> bool {
        self.models.as_ref().is_none_or(|m| m.contains(model))
    }

    /// Switched off: covers nothing and takes nothing.
    pub(crate) fn is_off(&self) -> bool {
        self.read().off
    }

    pub fn stats(&self) -> TimelineStats {
        TimelineStats {
            reads: self.reads.load(Ordering::Relaxed),
            missed: self.missed.load(Ordering::Relaxed),
            updates_applied: self.updates_applied.load(Ordering::Relaxed),
            bases_read: self.bases_read.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
            unfoldable: self.unfoldable.load(Ordering::Relaxed),
            peak_bytes: self.peak_bytes.load(Ordering::Relaxed),
        }
    }

    /// Every update with a commit time at or before this has been applied.
    pub fn complete_us(&self) -> Micros {
        self.read().complete_us
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        // A panic while holding the lock leaves nothing half-done that a read could see
        // wrongly: versions are whole `Arc`s.
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Covers nothing from now on (a page could not be applied, so the versions would
    /// miss its updates): every read goes to the catalog.
    pub fn switch_off(&self) {
        let mut inner = self.write();
        inner.off = true;
        inner.records = HashMap::new();
        inner.complete_us = Micros::MIN;
        inner.bytes = 0;
        tracing::warn!("the replay's timeline is switched off: records are read from the catalog");
    }

    /// The fold of the record as of `as_of_us` if the timeline covers it.
    pub(crate) fn get(
        &self,
        model: &str,
        record_id: &str,
        as_of_us: Micros,
    ) -> Option<Arc<Folded>> {
        let found = {
            let inner = self.read();
            (as_of_us <= inner.complete_us)
                .then(|| inner.records.get(model)?.get(record_id))
                .flatten()
                .and_then(|v| {
                    if v.used.load(Ordering::Relaxed) != inner.pages {
                        v.used.store(inner.pages, Ordering::Relaxed);
                    }
                    let i = v.list.partition_point(|(t, ..)| *t <= as_of_us);
                    // 0: its oldest version kept is after the time.
                    i.checked_sub(1).map(|i| v.list[i].1.clone())
                })
        };
        let counter = if found.is_some() {
            &self.reads
        } else {
            &self.missed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// What each record of `names` (model, record id, commit time of its first update in
    /// the page) that the timeline does not hold yet starts from; records it holds, and
    /// those left to the catalog, are left out.
    pub(crate) fn bases_needed<'a>(
        &self,
        names: impl IntoIterator<Item = (&'a str, &'a str, Micros)>,
    ) -> Vec<(&'a str, &'a str, Base)> {
        let inner = self.read();
        let mut seen: HashSet<(&str, &str)> = HashSet::new();
        let mut out = Vec::new();
        if inner.off {
            return out;
        }
        for (model, id, t) in names {
            let held = inner.records.get(model).is_some_and(|m| m.contains_key(id));
            if held || !seen.insert((model, id)) {
                continue;
            }
            let key = name_hash(model, id);
            if inner.unfoldable.contains(&key) {
                continue;
            }
            let base = if self.empty_before && !inner.evicted.contains(&key) {
                Base::Empty
            } else {
                Base::AsOf(t)
            };
            out.push((model, id, base));
        }
        out
    }

    /// Applies a page: `bases` for the records new to the timeline (their fold, and the
    /// time up to which it already holds their updates; `None`: the base could not be
    /// read, so the record is left to the catalog), then each update in order with
    /// `fold(previous version, index in the page)` making its version (an error leaves the
    /// record to the catalog). Versions at or before `floor_us` are dropped but the newest
    /// of them; then every update up to `complete_us` counts as applied, and the records
    /// least recently read or written are evicted while over the budget.
    pub(crate) fn advance<'a, E>(
        &self,
        bases: Vec<(&'a str, &'a str, Option<BaseFold>)>,
        updates: impl IntoIterator<Item = (&'a str, &'a str, Micros)>,
        mut fold: impl FnMut(&Folded, usize) -> Result<Folded, E>,
        floor_us: Micros,
        complete_us: Micros,
    ) {
        // What the page does to each record is worked out first, holding no lock but a
        // read lock for a moment (runs go on reading meanwhile; this is the only writer).
        struct Work {
            based_us: Micros,
            /// A record new to the timeline: its base.
            base: Option<Arc<Folded>>,
            newest: Arc<Folded>,
            added: Vec<(Micros, Arc<Folded>, u64)>,
            failed: bool,
        }
        let updates: Vec<(&str, &str, Micros)> = updates.into_iter().collect();
        let mut work: HashMap<(&str, &str), Work> = HashMap::new();
        let mut unreadable = Vec::new();
        for (model, id, base) in bases {
            match base {
                None => unreadable.push((model, id)),
                Some((fold, based_us)) => {
                    let base = Arc::new(fold);
                    work.insert(
                        (model, id),
                        Work {
                            based_us,
                            newest: base.clone(),
                            base: Some(base),
                            added: Vec::new(),
                            failed: false,
                        },
                    );
                }
            }
        }
        {
            let inner = self.read();
            if inner.off {
                return;
            }
            for &(model, id, _) in &updates {
                if work.contains_key(&(model, id)) {
                    continue;
                }
                if let Some(v) = inner.records.get(model).and_then(|m| m.get(id)) {
                    let newest = v.list.back().expect("never empty").1.clone();
                    work.insert(
                        (model, id),
                        Work {
                            based_us: v.based_us,
                            base: None,
                            newest,
                            added: Vec::new(),
                            failed: false,
                        },
                    );
                }
            }
        }
        let mut applied = 0;
        for (i, &(model, id, t)) in updates.iter().enumerate() {
            let Some(w) = work
                .get_mut(&(model, id))
                .filter(|w| !w.failed && t > w.based_us)
            else {
                continue;
            };
            match fold(&w.newest, i) {
                Ok(next) => {
                    applied += 1;
                    let next = Arc::new(next);
                    // A version followed by one at the same time is never read (a read as
                    // of that time sees both updates).
                    if w.added.last().is_some_and(|(b, ..)| *b == t) {
                        w.added.pop();
                    }
                    w.added
                        .push((t, next.clone(), next.weight() + VERSION_OVERHEAD));
                    w.newest = next;
                }
                // Its reads go to the catalog, which says what is wrong.
                Err(_) => w.failed = true,
            }
        }

        // Then, under the write lock, versions are moved in.
        let mut inner = self.write();
        let inner = &mut *inner;
        if inner.off {
            return;
        }
        inner.pages += 1;
        let page_no = inner.pages;
        for (model, id) in unreadable {
            if inner.unfoldable.insert(name_hash(model, id)) {
                self.unfoldable.fetch_add(1, Ordering::Relaxed);
            }
        }
        for ((model, id), w) in work {
            if w.failed {
                if let Some(gone) = inner.records.get_mut(model).and_then(|m| m.remove(id)) {
                    inner.bytes -= gone.bytes;
                }
                if inner.unfoldable.insert(name_hash(model, id)) {
                    self.unfoldable.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            let records = match inner.records.get_mut(model) {
                Some(records) => records,
                None => inner.records.entry(model.to_owned()).or_default(),
            };
            if let Some(base) = w.base {
                if w.based_us != Micros::MIN {
                    self.bases_read.fetch_add(1, Ordering::Relaxed);
                }
                let bytes = base.weight() + VERSION_OVERHEAD;
                inner.bytes += bytes;
                records.insert(
                    id.to_owned(),
                    Versions {
                        list: VecDeque::from([(w.based_us, base, bytes)]),
                        based_us: w.based_us,
                        bytes,
                        used: AtomicU64::new(page_no),
                    },
                );
            }
            let v = records.get_mut(id).expect("held or just based");
            *v.used.get_mut() = page_no;
            for (t, next, bytes) in w.added {
                if v.list.len() >= 2 && v.list.back().is_some_and(|(b, ..)| *b == t) {
                    let (.., gone) = v.list.pop_back().expect("two or more");
                    v.bytes -= gone;
                    inner.bytes -= gone;
                }
                v.list.push_back((t, next, bytes));
                v.bytes += bytes;
                inner.bytes += bytes;
            }
            inner.bytes -= v.drop_before(floor_us);
        }
        self.updates_applied.fetch_add(applied, Ordering::Relaxed);
        inner.complete_us = inner.complete_us.max(complete_us);
        self.peak_bytes.fetch_max(inner.bytes, Ordering::Relaxed);
        // Records not written since hold versions no run will read: dropped every eighth of
        // the budget, so memory follows the runs' horizon, not the window.
        if inner.bytes > inner.swept_bytes + self.budget / 8 {
            for records in inner.records.values_mut() {
                for v in records.values_mut() {
                    inner.bytes -= v.drop_before(floor_us);
                }
            }
            inner.swept_bytes = inner.bytes;
        }
        if inner.bytes > self.budget {
            self.evict(inner);
        }
    }

    /// Evicts the least recently used records (read or written) until under three
    /// quarters of the budget.
    fn evict(&self, inner: &mut Inner) {
        let target = self.budget / 4 * 3;
        let mut lru = Vec::new();
        for (model, records) in &inner.records {
            for (id, v) in records {
                lru.push((
                    v.used.load(Ordering::Relaxed),
                    v.bytes,
                    model.clone(),
                    id.clone(),
                ));
            }
        }
        lru.sort_unstable_by_key(|(used, ..)| *used);
        for (_, bytes, model, id) in lru {
            if inner.bytes <= target {
                break;
            }
            if let Some(records) = inner.records.get_mut(&model) {
                records.remove(&id);
            }
            inner.bytes -= bytes;
            inner.evicted.insert(name_hash(&model, &id));
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
        inner.swept_bytes = inner.bytes;
    }
}

/// A record's name as the evicted and unfoldable sets hold it: 8 bytes, not two strings. Two
/// names sharing one only cost work — a record taken for evicted reads its base from the
/// history, one taken for unfoldable is read from the catalog: the same answers — because
/// a mark is never removed (a record based again after its eviction keeps it).
fn name_hash(model: &str, id: &str) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0x0be5_ee12).hash_one((model, id))
}

impl Versions {
    /// Drops the versions at or before `floor_us` but the newest of them; the bytes freed.
    fn drop_before(&mut self, floor_us: Micros) -> u64 {
        let mut freed = 0;
        while self.list.len() >= 2 && self.list[1].0 <= floor_us {
            freed += self.list.pop_front().expect("two or more").2;
        }
        self.bytes -= freed;
        freed
    }
}
