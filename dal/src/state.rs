//! Maintained record states: a record's fold kept between reads and extended by the updates
//! that came after it, instead of re-folding the record's whole history on every read.
//!
//! ```text
//!  record(m, id, T) ── cached fold of the first n updates, ending at key k (k.time ≤ T)?
//!     │ yes: record_updates_after(m, id, k, T) ── at_or_before == n? ── yes: fold only the
//!     │                                            │                    entries after k
//!     │                                            no (an update arrived late, before k)
//!     v no                                         v
//!  the nearest snapshot before T, folded on (crate::snapshot), else the whole history up
//!  to T folded ──> cache it (if not behind the cached one)
//! ```
//!
//! Nothing here is trusted from memory: every read asks the catalog, in one consistent
//! read, for the updates after the cached point *and* how many updates are at or before
//! it. Index entries are never removed, so "as many as were folded" means "exactly those
//! folded": an update that arrived later with an earlier commit time makes the count
//! larger, and the read falls back to the whole history. So the cache is correct with any
//! catalog, any number of runner instances and any delivery order, and a restarted or
//! rebalanced runner simply starts cold (from the snapshots, [`crate::snapshot`]). What it saves: the fetch (cache or ranged GET),
//! decode and fold of every update before the cached point — a read costs one catalog
//! range read of the index entries after that point (those up to the time read are
//! fetched and folded; later ones are only counted), so at the head of a record's history
//! (live runs) its work follows what changed since. Reads well behind the head (a replay
//! of an old window on a record that kept changing) still count the rest of its history.
//!
//! One fold is kept per record, the newest one read: a read as of an earlier time than the
//! cached fold's last update folds the history up to that time and leaves the newer fold in
//! place (runs go forward in time, so this is the rare case: `view --as-of`, a replay of an
//! old window while live traffic runs).
//!
//! Memory is bounded in bytes (an estimate of each state's size), evicted by quick_cache
//! (CLOCK-Pro: recency and frequency).
//!
//! ## Joins
//!
//! A joined view's members are kept the same way ([`JoinCache`]), per (view, join field,
//! key values): each member's mapped message (or, for an aggregate, what it adds) and
//! version, the time they are as of, and the
//! point of the catalog's list of *reference updates* (every update of every record that
//! ever referenced the join's first key value, [`crate::catalog::UpdateIndex::ref_updates_after`])
//! they reflect. A read at or after that time asks for the reference updates after the
//! point, up to the time, and how many are at or before it, in one consistent read:
//!
//! ```text
//!  join(view, field, values, T) ── kept as of t ≤ T, seen n updates up to point k?
//!     │ yes: ref_updates_after(k, T) ── at_or_before == n? ── yes: read again only the
//!     │                                 │                     records those updates name
//!     │                                 no (late update, or a record newly referencing)
//!     v no                              v
//!  ref_updates_after(start, T): read every record named ──> keep it (if not older)
//! ```
//!
//! A read as of an earlier time T < t starts from the kept members too: the updates in
//! (T, t] name the records to read again as of T, and with the count at or before T they
//! must add up to n (else something arrived late: read every record). That result is not
//! kept (the later one stays).
//!
//! A member whose state at T differs from its state at t has an update in (t, T], which is
//! among those returned (or, if it arrived late, before k, the count says so); so the
//! members not named are still as kept, and a record not named is still not a member. The
//! work of a read follows the records that changed, not the size of the join.
//!
//! The members are a persistent map ([`imbl::OrdMap`]): a read that changes a few members
//! of thousands clones the kept map in O(1) and replaces them in O(log n). A join declared
//! as an aggregate (`(aggregate)` in `views.proto`, [`crate::view::registry::Aggregate`])
//! keeps per member only what it adds to the sum, and the sum and newest update across
//! them ([`KeptJoin::apply`]): the view is its totals, so a read after one new member costs
//! that member's read and O(log n), whatever the join's size (a read behind the kept time,
//! or the delete of the newest member, finds the newest again among all: O(n)). A listed
//! join's view still copies every member's bytes into the view and names each as
//! evidence.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;

use crate::builder::State;
use crate::update::{IndexEntry, Micros, Op, RefUpdate};

/// The default budget: 64 MiB.
pub const DEFAULT_STATE_BYTES: u64 = 64 << 20;

/// Folds of fewer updates are not kept: folding so short a history again costs about
/// what validating and copying a kept fold does (measured on the shipped workload, whose
/// transfers and entries have 1–4 updates each: keeping them made replay slower).
pub const MIN_KEPT_UPDATES: u64 = 8;

/// Bytes charged per entry on top of the state's estimated size: the key, the position
/// strings, the maps' nodes and the cache's own bookkeeping.
const ENTRY_OVERHEAD: u64 = 256;

/// A record's fold of its first `n` updates (in time-travel order).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Folded {
    /// Updates folded.
    pub n: u64,
    /// The last of them (`None` when `n == 0`).
    pub last: Option<Last>,
    /// The state after them; `None` if the record did not exist then.
    pub state: Option<State>,
    /// References after them: each the value carried by the latest update that carried
    /// that name since the record was last created.
    pub refs: BTreeMap<String, String>,
    /// The `n` of the last snapshot stored (or found) on the way to this fold, 0 if none:
    /// the next is due [`crate::snapshot::Snapshots::every`] updates after it.
    pub snap_n: u64,
}

/// The identity and order key of the last update folded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Last {
    pub event_time_us: Micros,
    pub source: String,
    pub position: String,
}

impl Last {
    pub fn of(e: &IndexEntry) -> Self {
        Last {
            event_time_us: e.event_time_us,
            source: e.source.clone(),
            position: e.position.clone(),
        }
    }

    /// The identity and order key of a reference update.
    pub fn of_ref(u: &RefUpdate) -> Self {
        Last {
            event_time_us: u.event_time_us,
            source: u.source.clone(),
            position: u.position.clone(),
        }
    }

    /// The order key, as [`IndexEntry::order_key`].
    pub fn key(&self) -> (Micros, &str, &str) {
        (self.event_time_us, &self.source, &self.position)
    }
}

impl Folded {
    /// Folds the references and the identity of `entries` (the state is folded by the
    /// caller, which has the records). `entries` follow the ones already folded.
    pub fn absorb_entries(&mut self, entries: &[IndexEntry]) {
        for e in entries {
            match e.op {
                Op::Create | Op::Delete => self.refs.clear(),
                _ => {}
            }
            if e.op != Op::Delete {
                self.refs.extend(e.refs.iter().cloned());
            }
        }
        if let Some(e) = entries.last() {
            self.last = Some(Last::of(e));
        }
        self.n += entries.len() as u64;
    }

    /// The version of the record this is (its newest update folded), as evidence.
    pub fn evidence(&self) -> impl Iterator<Item = crate::builder::UpdateRef> + '_ {
        self.last.iter().map(|l| crate::builder::UpdateRef {
            source: l.source.clone(),
            position: l.position.clone(),
        })
    }

    /// The commit time of the last update folded (`Micros::MIN` if none).
    pub fn time(&self) -> Micros {
        self.last.as_ref().map_or(Micros::MIN, |l| l.event_time_us)
    }

    /// Where reading on starts: after the last update folded.
    pub fn after(&self) -> (Micros, &str, &str) {
        self.last.as_ref().map_or((Micros::MIN, "", ""), Last::key)
    }

    /// An estimate of the bytes this fold holds.
    pub(crate) fn weight(&self) -> u64 {
        let state = self.state.as_ref().map_or(0, map_bytes);
        let refs: usize = self.refs.iter().map(|(k, v)| 48 + k.len() + v.len()).sum();
        ENTRY_OVERHEAD + (state + refs) as u64
    }
}

fn map_bytes(m: &serde_json::Map<String, Value>) -> usize {
    m.iter().map(|(k, v)| 48 + k.len() + value_bytes(v)).sum()
}

fn value_bytes(v: &Value) -> usize {
    match v {
        Value::String(s) => 24 + s.len(),
        Value::Array(a) => 24 + a.iter().map(value_bytes).sum::<usize>(),
        Value::Object(m) => 24 + map_bytes(m),
        _ => 16,
    }
}

#[derive(Clone)]
struct ByWeight;

impl quick_cache::Weighter<(String, String), Arc<Folded>> for ByWeight {
    fn weight(&self, _: &(String, String), f: &Arc<Folded>) -> u64 {
        f.weight()
    }
}

/// A join's members as of a time (see the module documentation, "Joins").
#[derive(Clone, Debug)]
pub struct KeptJoin {
    /// Reads at or after this time may start from it.
    pub time: Micros,
    /// The last reference update seen (`None`: none yet).
    pub after: Option<Last>,
    /// Reference updates seen up to `after`.
    pub n: u64,
    /// The members at `time`, by record id: a persistent map, so a read that changes a
    /// few members of thousands copies O(log n) nodes, not the map.
    pub members: imbl::OrdMap<String, Arc<Member>>,
    /// Estimated bytes of the members.
    pub bytes: u64,
    /// A declared aggregate's sum over the members (their `value`s); 0 otherwise.
    pub sum: i128,
    /// The newest update of any member (by time-travel order): a declared aggregate's
    /// evidence (kept for aggregates only; `None` for a listed join, whose evidence is
    /// every member's version).
    pub newest: Option<Newest>,
    /// A declared aggregate's members (what each adds, no message): kept whatever their
    /// number, see [`JoinCache::put`].
    pub aggregate: bool,
}

/// A member's newest update, with its order key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Newest {
    pub event_time_us: Micros,
    pub update: crate::builder::UpdateRef,
}

impl Newest {
    fn key(&self) -> (Micros, &crate::builder::UpdateRef) {
        (self.event_time_us, &self.update)
    }
}

impl KeptJoin {
    /// An empty join as of `time`.
    pub fn empty(time: Micros) -> Self {
        KeptJoin {
            time,
            after: None,
            n: 0,
            members: imbl::OrdMap::new(),
            bytes: 0,
            sum: 0,
            newest: None,
            aggregate: false,
        }
    }

    /// The members `read` (record id → the member, or `None`: not a member) put in place
    /// of the kept ones, adjusting the bytes, the sum and (for a declared aggregate,
    /// `aggregate`) the newest update by the members that changed. When the newest member
    /// is replaced by an older version or leaves (a read behind the kept time, a delete),
    /// the newest is found again among all members: O(members), the one case that is.
    /// `Err` names a sum that leaves 128 bits (it cannot with values bounded by
    /// [`crate::view::registry::MAX_AGGREGATE_VALUE`] and fewer than 2^31 members).
    pub fn apply(
        &mut self,
        read: impl IntoIterator<Item = (String, Option<Arc<Member>>)>,
    ) -> Result<(), String> {
        let newest = self.aggregate;
        let overflow = || "the aggregate's sum leaves 128 bits".to_owned();
        // Whether the newest member was replaced by one not known to be newer: then it is
        // found again among all of them.
        let mut lost_newest = false;
        for (id, member) in read {
            if let Some(old) = self.members.remove(&id) {
                self.bytes -= old.bytes;
                self.sum = self.sum.checked_sub(old.value).ok_or_else(overflow)?;
                lost_newest |= newest
                    && old.key().is_some()
                    && old.key() == self.newest.as_ref().map(Newest::key);
            }
            if let Some(m) = member {
                self.bytes += m.bytes;
                self.sum = self.sum.checked_add(m.value).ok_or_else(overflow)?;
                if newest
                    && let Some(k) = m.key()
                    && self.newest.as_ref().is_none_or(|cur| k >= cur.key())
                {
                    self.newest = m.newest();
                    lost_newest = false;
                }
                self.members.insert(id, m);
            }
        }
        if lost_newest {
            self.newest = self
                .members
                .values()
                .max_by(|a, b| a.key().cmp(&b.key()))
                .and_then(|m| m.newest());
        }
        Ok(())
    }
}

/// A join member as kept: its message in the view, encoded (a decoded message takes
/// several times the memory), and its version. A declared aggregate's member keeps only
/// what it adds to the sum.
#[derive(Clone, Debug)]
pub struct Member {
    pub encoded: bytes::Bytes,
    /// Its newest update as of the join's time (its evidence), and that update's commit
    /// time.
    pub last: Option<crate::builder::UpdateRef>,
    pub last_time_us: Micros,
    /// What it adds to a declared aggregate's sum (0 in a listed join).
    pub value: i128,
    /// Estimated bytes.
    pub bytes: u64,
}

/// Bytes charged per kept member on top of its encoded message: its id, its version's
/// strings, the map node and the `Arc`.
const MEMBER_OVERHEAD: u64 = 160;

/// Listed joins of fewer members are not kept (declared aggregates are kept at any size,
/// see [`JoinCache::put`]): reading so few again costs about what validating
/// kept ones does, and the many small joins (a transfer's two entries) would crowd out the
/// large ones that matter (a wallet's entries).
pub const MIN_KEPT_MEMBERS: usize = 8;

impl Member {
    /// A listed member: its message in the view.
    pub fn new(
        record_id: &str,
        msg: &prost_reflect::DynamicMessage,
        last: Option<crate::builder::UpdateRef>,
        last_time_us: Micros,
    ) -> Self {
        use prost::Message;
        Member::with(
            record_id,
            bytes::Bytes::from(msg.encode_to_vec()),
            last,
            last_time_us,
            0,
        )
    }

    /// A declared aggregate's member: what it adds to the sum.
    pub fn counted(
        record_id: &str,
        value: i128,
        last: Option<crate::builder::UpdateRef>,
        last_time_us: Micros,
    ) -> Self {
        Member::with(record_id, bytes::Bytes::new(), last, last_time_us, value)
    }

    fn with(
        record_id: &str,
        encoded: bytes::Bytes,
        last: Option<crate::builder::UpdateRef>,
        last_time_us: Micros,
        value: i128,
    ) -> Self {
        let bytes = MEMBER_OVERHEAD
            + encoded.len() as u64
            + record_id.len() as u64
            + last
                .as_ref()
                .map_or(0, |l| (l.source.len() + l.position.len()) as u64);
        Member {
            encoded,
            last,
            last_time_us,
            value,
            bytes,
        }
    }

    /// Its newest update's order key, borrowed (`None`: no update).
    fn key(&self) -> Option<(Micros, &crate::builder::UpdateRef)> {
        self.last.as_ref().map(|u| (self.last_time_us, u))
    }

    /// Its newest update with its order key.
    pub fn newest(&self) -> Option<Newest> {
        self.last.clone().map(|update| Newest {
            event_time_us: self.last_time_us,
            update,
        })
    }
}

/// A join's key: view, join field number, the values of its keys.
pub type JoinKey = (String, u32, Vec<String>);

#[derive(Clone)]
struct JoinWeight;

impl quick_cache::Weighter<JoinKey, Arc<KeptJoin>> for JoinWeight {
    fn weight(&self, k: &JoinKey, j: &Arc<KeptJoin>) -> u64 {
        ENTRY_OVERHEAD + (k.0.len() + k.2.iter().map(String::len).sum::<usize>()) as u64 + j.bytes
    }
}

/// Which path a join read took, for [`JoinCache::count`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinPath {
    /// From kept members, reading again only those changed.
    Extended,
    /// From kept members as of a later time, reading again as of the time asked only
    /// those changed in between.
    Earlier,
    /// Every member read: nothing kept (or too few members to keep).
    Built,
    /// Every member read: the kept members were stale.
    Stale,
}

/// A concurrent, byte-bounded map of kept join members. See the module documentation.
pub struct JoinCache {
    inner: Option<quick_cache::sync::Cache<JoinKey, Arc<KeptJoin>, JoinWeight>>,
    capacity: u64,
    min_members: usize,
    extended: AtomicU64,
    built: AtomicU64,
    stale: AtomicU64,
    members_read: AtomicU64,
}

impl std::fmt::Debug for JoinCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinCache").finish_non_exhaustive()
    }
}

impl JoinCache {
    /// A cache holding about `capacity_bytes` of join members; 0 disables it.
    pub fn new(capacity_bytes: u64) -> Self {
        JoinCache {
            inner: crate::cache::byte_bounded(capacity_bytes, JoinWeight),
            capacity: capacity_bytes,
            min_members: MIN_KEPT_MEMBERS,
            extended: AtomicU64::new(0),
            built: AtomicU64::new(0),
            stale: AtomicU64::new(0),
            members_read: AtomicU64::new(0),
        }
    }

    /// Keeps joins of `n` or more members instead of [`MIN_KEPT_MEMBERS`].
    pub fn keeping_from(mut self, n: usize) -> Self {
        self.min_members = n;
        self
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn get(&self, key: &JoinKey) -> Option<Arc<KeptJoin>> {
        self.inner.as_ref()?.get(key)
    }

    /// Keeps `join` (whose last reference update seen is never after its time) unless the
    /// one kept is as of a later time, or it is a listed join with fewer members than the
    /// minimum ([`MIN_KEPT_MEMBERS`] unless set; a smaller one is forgotten). A declared
    /// aggregate's join is kept at any size: its members are ~200 bytes each (no message), and
    /// keeping it saves reading every member again on the next read.
    pub fn put(&self, key: JoinKey, join: Arc<KeptJoin>, replacing_stale: bool) {
        debug_assert!(
            join.after
                .as_ref()
                .is_none_or(|a| a.event_time_us <= join.time)
        );
        let Some(c) = &self.inner else { return };
        if !join.aggregate && join.members.len() < self.min_members {
            c.remove(&key);
            return;
        }
        if !replacing_stale && c.peek(&key).is_some_and(|kept| kept.time > join.time) {
            return;
        }
        c.insert(key, join);
    }

    /// Counts one join read that took `path` and read `members` records.
    pub fn count(&self, path: JoinPath, members: usize) {
        let counter = match path {
            JoinPath::Extended | JoinPath::Earlier => &self.extended,
            JoinPath::Built => &self.built,
            JoinPath::Stale => &self.stale,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if path == JoinPath::Stale {
            self.built.fetch_add(1, Ordering::Relaxed);
        }
        self.members_read
            .fetch_add(members as u64, Ordering::Relaxed);
    }

    pub fn stats(&self) -> JoinStats {
        JoinStats {
            extended: self.extended.load(Ordering::Relaxed),
            built: self.built.load(Ordering::Relaxed),
            stale: self.stale.load(Ordering::Relaxed),
            members_read: self.members_read.load(Ordering::Relaxed),
            entries: self.inner.as_ref().map_or(0, |c| c.len() as u64),
            bytes: self.inner.as_ref().map_or(0, |c| c.weight()),
        }
    }
}

/// How reads of joins went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JoinStats {
    /// Join reads served from kept members (as of an earlier or a later time), reading
    /// again only the records changed in between.
    pub extended: u64,
    /// Join reads that read every member (nothing kept, or too few members to keep).
    pub built: u64,
    /// Of those, reads whose kept members were stale.
    pub stale: u64,
    /// Member records read in all (the work done).
    pub members_read: u64,
    pub entries: u64,
    pub bytes: u64,
}

/// How reads of records went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateStats {
    /// Reads served from a maintained fold, extended by the updates since.
    pub extended: u64,
    /// Reads that folded the record's history up to the time: nothing maintained or
    /// persisted usable (a fold newer than the time asked, no snapshot before it).
    pub folded: u64,
    /// Of those, reads whose maintained fold was stale (an update had arrived late,
    /// before its last update).
    pub stale: u64,
    /// Updates folded in all (the work done).
    pub updates_folded: u64,
    pub entries: u64,
    pub bytes: u64,
    pub capacity_bytes: u64,
    /// How join reads went.
    pub joins: JoinStats,
    /// How snapshots went (reads that started from one, writes).
    pub snapshots: crate::snapshot::SnapshotStats,
}

/// A concurrent, byte-bounded map of maintained record folds. See the module
/// documentation.
pub struct StateCache {
    /// `None` when the budget is zero: every read folds the history.
    inner: Option<quick_cache::sync::Cache<(String, String), Arc<Folded>, ByWeight>>,
    capacity: u64,
    min_updates: u64,
    extended: AtomicU64,
    folded: AtomicU64,
    stale: AtomicU64,
    updates_folded: AtomicU64,
}

impl std::fmt::Debug for StateCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateCache")
            .field("stats", &self.stats())
            .finish()
    }
}

/// Which path a record read took, for [`StateCache::count`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadPath {
    Extended,
    /// Folded on from a snapshot ([`crate::snapshot`]): counted in its own stats, here
    /// only the updates folded.
    Snapshot,
    Folded,
    Stale,
}

/// A record's key as a lookup borrows it: hashes and compares like the stored
/// `(model, record_id)` pair, so a read allocates no key.
#[derive(Hash)]
struct KeyRef<'a>(&'a str, &'a str);

impl quick_cache::Equivalent<(String, String)> for KeyRef<'_> {
    fn equivalent(&self, key: &(String, String)) -> bool {
        self.0 == key.0 && self.1 == key.1
    }
}

impl StateCache {
    /// A cache holding about `capacity_bytes` of folds; 0 disables it.
    pub fn new(capacity_bytes: u64) -> Self {
        StateCache {
            inner: crate::cache::byte_bounded(capacity_bytes, ByWeight),
            capacity: capacity_bytes,
            min_updates: MIN_KEPT_UPDATES,
            extended: AtomicU64::new(0),
            folded: AtomicU64::new(0),
            stale: AtomicU64::new(0),
            updates_folded: AtomicU64::new(0),
        }
    }

    /// Keeps folds of `n` or more updates (at least 1) instead of [`MIN_KEPT_UPDATES`].
    pub fn keeping_from(mut self, n: u64) -> Self {
        self.min_updates = n.max(1);
        self
    }

    /// The maintained fold of a record, if any.
    pub fn get(&self, model: &str, record_id: &str) -> Option<Arc<Folded>> {
        self.inner.as_ref()?.get(&KeyRef(model, record_id))
    }

    /// Keeps `fold` as the record's maintained fold unless the one kept ends later in the
    /// record's history (and is not known stale: `replacing_stale`). Folds of fewer
    /// updates than the minimum ([`MIN_KEPT_UPDATES`] unless set) are not kept.
    pub fn put(&self, model: &str, record_id: &str, fold: Arc<Folded>, replacing_stale: bool) {
        let Some(c) = &self.inner else { return };
        if !self.keeps(fold.n) {
            return;
        }
        if !replacing_stale
            && c.peek(&KeyRef(model, record_id))
                .is_some_and(|kept| kept.after() > fold.after())
        {
            return;
        }
        c.insert((model.to_owned(), record_id.to_owned()), fold);
    }

    /// Whether a fold of `n` updates would be kept.
    pub fn keeps(&self, n: u64) -> bool {
        self.inner.is_some() && n >= self.min_updates.max(1)
    }

    /// Counts one read that took `path` and folded `updates` updates. (Counters only: the
    /// runner publishes [`StateCache::stats`] as metrics on its own tick, off this path.)
    pub fn count(&self, path: ReadPath, updates: usize) {
        let counter = match path {
            ReadPath::Extended => Some(&self.extended),
            ReadPath::Snapshot => None,
            ReadPath::Folded => Some(&self.folded),
            ReadPath::Stale => Some(&self.stale),
        };
        if let Some(c) = counter {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if path == ReadPath::Stale {
            self.folded.fetch_add(1, Ordering::Relaxed);
        }
        self.updates_folded
            .fetch_add(updates as u64, Ordering::Relaxed);
    }

    pub fn stats(&self) -> StateStats {
        StateStats {
            extended: self.extended.load(Ordering::Relaxed),
            folded: self.folded.load(Ordering::Relaxed),
            stale: self.stale.load(Ordering::Relaxed),
            updates_folded: self.updates_folded.load(Ordering::Relaxed),
            entries: self.inner.as_ref().map_or(0, |c| c.len() as u64),
            bytes: self.inner.as_ref().map_or(0, |c| c.weight()),
            capacity_bytes: self.capacity,
            joins: JoinStats::default(),
            snapshots: Default::default(),
        }
    }
}
