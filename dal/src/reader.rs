//! The data access layer proper: time travel, aggregation and views over the history.
//!
//! ```text
//!  view::<TransferWithLedger>(id, T)
//!    ├─ record(payments.transfers, id, T)   catalog: index entries ≤ T ─┐
//!    │                                      cache / ranged GETs ────────┤ fold (builders)
//!    ├─ join: ref_updates_after(ledger.entries, transfer_id = id)       │
//!    │    └─ record(ledger.entries, e, T) for each record named, kept   │
//!    │       if it exists at T and still references id at T (multi-    │
//!    │       field joins: every key's value at T); members kept between │
//!    │       reads, only the records changed since read again          │
//!    └─ lookup(payments.assets, transfer.asset, T)                      │
//!  → encoded view message (mapped; kept members' bytes copied) → typed ─┘
//! ```
//!
//! - **Time travel** ([`Dal::history`]): the updates of a record with commit time ≤ T, in
//!   commit order, ties broken by source then source position (the catalog's order). Bytes
//!   come from the [`ReadCache`] or from ranged reads of the segment objects; reads of one
//!   segment that lie close together are coalesced into one request, and requests to
//!   different segments run concurrently (bounded).
//! - **Aggregation** ([`Dal::record`]): the [`Builders`] fold the updates into the state.
//!   Folds are maintained ([`crate::state`]): a read extends the record's kept fold by the
//!   updates since (one catalog range read of those, validated by a count in the same
//!   read), so its cost follows what changed, not how long the record has lived.
//! - **Views** ([`Dal::view_dynamic`], [`Dal::view`]): the state mapped into the view's
//!   message by [`crate::view::map`]; joined views add related records, each as of the same
//!   T. A join's members are kept between reads ([`crate::state`], "Joins"): a read asks
//!   the catalog which records referencing the key changed since, and reads only those. A
//!   join declared as an aggregate (`(aggregate)`) is its members' totals, kept with them
//!   and adjusted by the members that changed. Every view carries its *evidence* by
//!   reference: the newest update of each record it shows (bounded by the records in the
//!   view, not by their histories); an aggregate names its newest member's.
//!
//! A DAL can be shared by any number of readers. The only thing it writes is derived data:
//! the snapshots of the records it folds ([`crate::snapshot`]), in the background; a
//! catalog that refuses them (read-only) costs only work.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use prost_reflect::DynamicMessage;

use crate::builder::{Builders, State, UpdateRef};
use crate::cache::{CacheStats, DEFAULT_CACHE_BYTES, ReadCache};
use crate::catalog::DynCatalog;
use crate::keys::segment_key;
use crate::segment::decode_record;
use crate::snapshot::{DEFAULT_SNAPSHOT_EVERY, Snapshots};
use crate::state::{
    DEFAULT_STATE_BYTES, Folded, JoinCache, JoinKey, JoinPath, KeptJoin, Last, Member, ReadPath,
    StateCache, StateStats,
};
use crate::store::DynStore;
use crate::timeline::{Base, Timeline, TimelineStats};
use crate::update::{IndexEntry, Micros, UpdateLoc, UpdateRecord};
use crate::view::map::record_to_message;
use crate::view::registry::{ViewDef, ViewKind, Views};
use crate::{Error, Result};

/// Reads of one segment closer than this are fetched as one range (the bytes between are
/// read and dropped): one request instead of several.
const COALESCE_GAP: u64 = 64 << 10;
/// Concurrent object-store requests per history read, and concurrent member records per
/// joined view.
const FETCH_CONCURRENCY: usize = 16;

/// One update of a record's history: its index entry and the stored record.
#[derive(Clone, Debug)]
pub struct Update {
    pub entry: IndexEntry,
    pub record: Arc<UpdateRecord>,
}

/// A record as of a time.
#[derive(Clone, Debug)]
pub struct RecordAt {
    pub model: String,
    pub record_id: String,
    pub as_of_us: Micros,
    /// Its state at `as_of_us`; `None` if it did not exist then (not yet created, or
    /// deleted).
    pub state: Option<State>,
    /// How many of its updates have a commit time at or before `as_of_us`.
    pub updates: u64,
    /// The newest of them: which version of the record `state` is (`None`: no update).
    pub last: Option<UpdateRef>,
    /// That update's commit time (its order key with `last`).
    pub last_time_us: Option<Micros>,
    /// References as of `as_of_us` (name → value): each the value carried by the latest
    /// update that carried that name since the record was last created.
    pub refs: BTreeMap<String, String>,
}

impl RecordAt {
    fn of(model: &str, record_id: &str, as_of_us: Micros, fold: &Folded) -> Self {
        RecordAt {
            model: model.to_owned(),
            record_id: record_id.to_owned(),
            as_of_us,
            state: fold.state.clone(),
            updates: fold.n,
            last: fold.last.as_ref().map(|l| UpdateRef {
                source: l.source.clone(),
                position: l.position.clone(),
            }),
            last_time_us: fold.last.as_ref().map(|l| l.event_time_us),
            refs: fold.refs.clone(),
        }
    }

    /// [`RecordAt::of`] without copying: for a fold that is not kept.
    fn from_fold(model: &str, record_id: &str, as_of_us: Micros, fold: Folded) -> Self {
        RecordAt {
            model: model.to_owned(),
            record_id: record_id.to_owned(),
            as_of_us,
            state: fold.state,
            updates: fold.n,
            last_time_us: fold.last.as_ref().map(|l| l.event_time_us),
            last: fold.last.map(|l| UpdateRef {
                source: l.source,
                position: l.position,
            }),
            refs: fold.refs,
        }
    }

    /// The version of the record the state is: its newest update as of the time. With the
    /// time, it reproduces the state (`overseer history`, `overseer view --as-of`).
    pub fn evidence(&self) -> impl Iterator<Item = UpdateRef> + '_ {
        self.last.iter().cloned()
    }
}

/// A view as of a time, with the updates it was built from.
#[derive(Clone, Debug, PartialEq)]
pub struct Viewed<T> {
    pub view: T,
    pub as_of_us: Micros,
    /// Evidence by reference: the newest update (as of `as_of_us`) of every record the view
    /// includes — the subject, each join member, each lookup — sorted and unique. Each names
    /// the version of a record the view reflects; with the time they reproduce the view
    /// (`overseer view --as-of`, `overseer history`), and their number is bounded by the
    /// records in the view, not by how many updates those records ever had. (An update
    /// ingested later with an earlier commit time can change a view as of T without
    /// changing these names; `overseer history` shows when each update was ingested.)
    pub evidence: Vec<UpdateRef>,
}

impl Viewed<bytes::Bytes> {
    /// The view as its Rust type (a view built once, handed to several typed readers).
    pub fn decode<T>(&self) -> Result<T>
    where
        T: prost::Message + prost::Name + Default,
    {
        T::decode(&self.view[..])
            .map_err(|e| Error::view(T::full_name(), format!("decoding to the Rust type: {e}")))
    }
}

/// The data access layer: time travel, builders and views over a catalog and a store.
#[derive(Clone)]
pub struct Dal {
    catalog: DynCatalog,
    store: DynStore,
    cache: Arc<ReadCache>,
    states: Arc<StateCache>,
    joins: Arc<JoinCache>,
    snapshots: Arc<Snapshots>,
    builders: Builders,
    /// `builders.fingerprint()`, stored with each snapshot.
    fingerprint: u64,
    views: Arc<Views>,
    /// A replay's records, folded through its window ([`crate::timeline`]).
    timeline: Option<Arc<Timeline>>,
}

impl std::fmt::Debug for Dal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dal")
            .field("catalog", &self.catalog.describe())
            .field("store", &self.store.describe())
            .field("cache", &self.cache)
            .finish()
    }
}

impl Dal {
    /// A DAL with the built-in views, no protobuf builders and a 64 MiB read cache.
    pub fn new(catalog: DynCatalog, store: DynStore) -> Self {
        Dal {
            catalog,
            store,
            cache: Arc::new(ReadCache::new(DEFAULT_CACHE_BYTES)),
            states: Arc::new(StateCache::new(DEFAULT_STATE_BYTES)),
            joins: Arc::new(JoinCache::new(DEFAULT_STATE_BYTES)),
            snapshots: Arc::new(Snapshots::new(DEFAULT_SNAPSHOT_EVERY)),
            fingerprint: Builders::default().fingerprint(),
            builders: Builders::default(),
            views: Arc::new(Views::builtin()),
            timeline: None,
        }
    }

    /// Writes (and reads) a snapshot every `every` updates of a record ([`crate::snapshot`];
    /// 0: none — every read without a maintained fold folds the record's history).
    pub fn with_snapshot_every(mut self, every: u64) -> Self {
        self.snapshots = Arc::new(Snapshots::new(every));
        self
    }

    /// The snapshot spacing ([`Dal::with_snapshot_every`]; 0: none).
    pub fn snapshot_every(&self) -> u64 {
        self.snapshots.every()
    }

    /// Waits until the snapshots queued so far are written.
    pub async fn flush_snapshots(&self) {
        self.snapshots.flush().await;
    }

    /// Reads records from `timeline` where it covers them ([`crate::timeline`]): a replay
    /// advances it through its window ([`Dal::advance_timeline`]).
    pub fn with_timeline(mut self, timeline: Arc<Timeline>) -> Self {
        self.timeline = Some(timeline);
        self
    }

    /// How the timeline went, if this DAL has one.
    pub fn timeline_stats(&self) -> Option<TimelineStats> {
        self.timeline.as_ref().map(|t| t.stats())
    }

    /// Applies a page of the window (index entries in time-travel order, following those
    /// applied before) to the timeline, if this DAL has one: each update fetched once and
    /// folded onto its record's newest version; records new to the timeline start from
    /// their base. `floor_us`: no read will ask for a time before it. `complete_us`: every
    /// update committed at or before it has now been applied. When the page's updates
    /// cannot be fetched, the timeline is switched off (every read goes to the catalog, as
    /// without one) and the fault returned; a record whose base cannot be read is left to
    /// the catalog (its reads retry or say what is wrong).
    pub async fn advance_timeline(
        &self,
        page: &[IndexEntry],
        floor_us: Micros,
        complete_us: Micros,
    ) -> Result<()> {
        let Some(timeline) = self.timeline.as_ref().filter(|t| !t.is_off()) else {
            return Ok(());
        };
        // Only the models the timeline keeps are fetched and folded.
        let kept: std::borrow::Cow<'_, [IndexEntry]> =
            if page.iter().all(|e| timeline.keeps(&e.model)) {
                page.into()
            } else {
                (page.iter())
                    .filter(|e| timeline.keeps(&e.model))
                    .cloned()
                    .collect::<Vec<_>>()
                    .into()
            };
        let page = &*kept;
        let names = || {
            page.iter()
                .map(|e| (e.model.as_str(), e.record_id.as_str(), e.event_time_us))
        };
        let reads: Vec<_> = timeline
            .bases_needed(names())
            .into_iter()
            .map(|(model, id, base)| async move {
                let base = match base {
                    Base::Empty => Some((Folded::default(), Micros::MIN)),
                    Base::AsOf(t) => match self.fold_from_history(model, id, t).await {
                        Ok(fold) => Some((Arc::unwrap_or_clone(fold), t)),
                        // Its reads take the catalog path, which says what is wrong.
                        Err(e) => {
                            tracing::debug!(model, id, error = %e, "a record left out of the timeline");
                            None
                        }
                    },
                };
                (model, id, base)
            })
            .collect();
        let bases = futures::stream::iter(reads)
            .buffered(FETCH_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        let records = match self.fetch(page).await {
            Ok(records) => records,
            Err(e) => {
                timeline.switch_off();
                return Err(e);
            }
        };
        timeline.advance(
            bases,
            names(),
            |prev, i| {
                let mut next = prev.clone();
                next.state = self.builders.apply(next.state.take(), &records[i])?;
                next.absorb_entries(std::slice::from_ref(&page[i]));
                Ok::<_, Error>(next)
            },
            floor_us,
            complete_us,
        );
        Ok(())
    }

    /// Replaces the read cache with an empty one of `bytes` (0 disables caching).
    pub fn with_cache_bytes(mut self, bytes: u64) -> Self {
        self.cache = Arc::new(ReadCache::new(bytes));
        self
    }

    /// Replaces the maintained record states with an empty map of about `bytes`, and the
    /// kept join members with another of as many (0: every read folds the record's history
    /// and reads every member of a join).
    pub fn with_state_bytes(mut self, bytes: u64) -> Self {
        self.states = Arc::new(StateCache::new(bytes));
        self.joins = Arc::new(JoinCache::new(bytes));
        self
    }

    /// Replaces the kept join members (e.g. with one keeping smaller joins).
    pub fn with_join_cache(mut self, joins: JoinCache) -> Self {
        self.joins = Arc::new(joins);
        self
    }

    /// Replaces the maintained record states (e.g. one keeping shorter folds).
    pub fn with_state_cache(mut self, states: StateCache) -> Self {
        self.states = Arc::new(states);
        self
    }

    /// How record reads went: from maintained folds or from the history.
    pub fn state_stats(&self) -> StateStats {
        StateStats {
            joins: self.joins.stats(),
            snapshots: self.snapshots.stats(),
            ..self.states.stats()
        }
    }

    /// Replaces the builders; the maintained folds and joins (built by the old ones) start
    /// empty.
    pub fn with_builders(mut self, builders: Builders) -> Self {
        self.fingerprint = builders.fingerprint();
        self.builders = builders;
        self.states = Arc::new(StateCache::new(self.states.stats().capacity_bytes));
        self.joins = Arc::new(JoinCache::new(self.joins.capacity()));
        self
    }

    /// Replaces the views; the kept joins (mapped into the old ones) start empty.
    pub fn with_views(mut self, views: Views) -> Self {
        self.views = Arc::new(views);
        self.joins = Arc::new(JoinCache::new(self.joins.capacity()));
        self
    }

    /// Adds the views of encoded `FileDescriptorSet`s (a team's own .proto files, registered
    /// in code) to this DAL's views: no `[dal] view_descriptor_sets` entry needed. See
    /// [`Views::with_descriptor_sets`].
    pub fn with_descriptor_sets<'a>(
        mut self,
        sets: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Self> {
        let mut sets = sets.into_iter().peekable();
        if sets.peek().is_some() {
            let views = self.views.with_descriptor_sets(sets)?;
            self = self.with_views(views);
        }
        Ok(self)
    }

    pub fn catalog(&self) -> &DynCatalog {
        &self.catalog
    }

    pub fn store(&self) -> &DynStore {
        &self.store
    }

    pub fn views(&self) -> &Views {
        &self.views
    }

    /// The content digest ([`crate::view::digest`]) of an encoded message of the view
    /// `view_name`; `None` if the DAL does not know that view (a custom view function's
    /// message not registered) or the bytes are not one.
    pub fn view_digest(&self, view_name: &str, encoded: &[u8]) -> Option<String> {
        let def = self.views.get(view_name).ok()?;
        let msg = DynamicMessage::decode(def.message.clone(), encoded).ok()?;
        crate::view::digest(&msg)
    }

    /// The read cache, to share (e.g. with a [`crate::bus::feed::CatalogFeed::warming`]).
    pub fn cache(&self) -> Arc<ReadCache> {
        self.cache.clone()
    }

    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// Time travel: the updates of a record with commit time ≤ `as_of_us`, in commit order
    /// (ties broken by source, then source position).
    pub async fn history(
        &self,
        model: &str,
        record_id: &str,
        as_of_us: Micros,
    ) -> Result<Vec<Update>> {
        let entries = self
            .catalog
            .record_updates(model, record_id, as_of_us)
            .await?;
        let records = self.fetch(&entries).await?;
        Ok(entries
            .into_iter()
            .zip(records)
            .map(|(entry, record)| Update { entry, record })
            .collect())
    }

    /// A record's state as of `as_of_us`: its maintained fold extended by the updates since
    /// (see [`crate::state`]), else its nearest snapshot before the time folded on (see
    /// [`crate::snapshot`]), else its history up to `as_of_us` folded.
    pub async fn record(&self, model: &str, record_id: &str, as_of_us: Micros) -> Result<RecordAt> {
        let fold = self.fold_at(model, record_id, as_of_us).await?;
        Ok(match Arc::try_unwrap(fold) {
            Ok(fold) => RecordAt::from_fold(model, record_id, as_of_us, fold),
            Err(fold) => RecordAt::of(model, record_id, as_of_us, &fold),
        })
    }

    /// [`Dal::record`]'s fold, shared where it is kept (a view reads it without a copy):
    /// from the timeline where it covers the record and time, else from the history.
    async fn fold_at(&self, model: &str, record_id: &str, as_of_us: Micros) -> Result<Arc<Folded>> {
        if let Some(fold) = (self.timeline.as_ref()).and_then(|t| t.get(model, record_id, as_of_us))
        {
            return Ok(fold);
        }
        self.fold_from_history(model, record_id, as_of_us).await
    }

    /// [`Dal::fold_at`] without the timeline.
    async fn fold_from_history(
        &self,
        model: &str,
        record_id: &str,
        as_of_us: Micros,
    ) -> Result<Arc<Folded>> {
        let kept = self.states.get(model, record_id);
        let mut stale = false;
        if let Some(kept) = kept.as_ref().filter(|k| k.time() <= as_of_us) {
            let after = self
                .catalog
                .record_updates_after(model, record_id, kept.after(), as_of_us, Some(kept.n))
                .await?;
            if after.at_or_before == kept.n {
                let fold = if after.entries.is_empty() {
                    kept.clone()
                } else {
                    let mut fold = Folded::clone(kept);
                    self.fold_on(model, record_id, &mut fold, &after.entries, None)
                        .await?;
                    let fold = Arc::new(fold);
                    self.states.put(model, record_id, fold.clone(), false);
                    fold
                };
                self.states.count(ReadPath::Extended, after.entries.len());
                return Ok(fold);
            }
            stale = true;
        }
        let mut unusable = None;
        let entries = if self.snapshots.every() > 0 {
            let from = self
                .catalog
                .record_updates_from_snapshot(model, record_id, as_of_us)
                .await?;
            match from.snapshot {
                // No snapshot: the updates after "it" are the history up to the time.
                None => from.after.entries,
                Some(snap) => {
                    let usable = snap.fold == self.fingerprint && from.after.at_or_before == snap.n;
                    match usable.then(|| crate::snapshot::decode(&snap)) {
                        Some(Ok(mut fold)) => {
                            self.fold_on(model, record_id, &mut fold, &from.after.entries, None)
                                .await?;
                            self.snapshots.count_read();
                            self.states
                                .count(ReadPath::Snapshot, from.after.entries.len());
                            return Ok(self.keep(model, record_id, fold, stale));
                        }
                        Some(Err(e)) => {
                            // Derived data: fold the history and replace it.
                            tracing::warn!(error = %e, "an unreadable snapshot is replaced");
                        }
                        None => {}
                    }
                    self.snapshots.count_stale();
                    unusable = Some((snap.event_time_us, snap.source, snap.position));
                    self.catalog
                        .record_updates(model, record_id, as_of_us)
                        .await?
                }
            }
        } else {
            self.catalog
                .record_updates(model, record_id, as_of_us)
                .await?
        };
        let mut fold = Folded::default();
        self.fold_on(model, record_id, &mut fold, &entries, unusable)
            .await?;
        self.states.count(
            if stale {
                ReadPath::Stale
            } else {
                ReadPath::Folded
            },
            entries.len(),
        );
        Ok(self.keep(model, record_id, fold, stale))
    }

    /// A fold read from the catalog (not extended from a kept one) as the record's state,
    /// kept if it is long enough.
    fn keep(
        &self,
        model: &str,
        record_id: &str,
        fold: Folded,
        replacing_stale: bool,
    ) -> Arc<Folded> {
        let fold = Arc::new(fold);
        if self.states.keeps(fold.n) {
            self.states
                .put(model, record_id, fold.clone(), replacing_stale);
        }
        fold
    }

    /// Folds the updates `entries` (which follow those `fold` holds) into it, and writes
    /// the snapshots due on the way (one each time `every` updates passed since the last),
    /// first clearing the record's snapshots up to `clear` (found unusable).
    async fn fold_on(
        &self,
        model: &str,
        record_id: &str,
        fold: &mut Folded,
        entries: &[IndexEntry],
        mut clear: Option<(Micros, String, String)>,
    ) -> Result<()> {
        let records = self.fetch(entries).await?;
        let every = self.snapshots.every();
        let mut due = Vec::new();
        let mut done = 0;
        while done < entries.len() {
            // Up to the next snapshot, or to the end.
            let take = if every == 0 {
                entries.len() - done
            } else {
                let to_next = (fold.snap_n + every).saturating_sub(fold.n).max(1);
                usize::try_from(to_next)
                    .map_or(entries.len() - done, |t| t.min(entries.len() - done))
            };
            let chunk = done..done + take;
            fold.state = records[chunk.clone()]
                .iter()
                .try_fold(fold.state.take(), |st, rec| self.builders.apply(st, rec))?;
            fold.absorb_entries(&entries[chunk]);
            done += take;
            if every > 0 && fold.n >= fold.snap_n + every {
                due.push(crate::snapshot::encode(
                    model,
                    record_id,
                    fold,
                    self.fingerprint,
                ));
                fold.snap_n = fold.n;
            }
            // Queued in pieces as they fill (in order: the first one clears), the rest at
            // the end below.
            if due.len() >= crate::snapshot::WRITE_PIECE {
                self.queue_snapshots(model, record_id, clear.take(), std::mem::take(&mut due));
            }
        }
        if !due.is_empty() || clear.is_some() {
            self.queue_snapshots(model, record_id, clear, due);
        }
        Ok(())
    }

    /// Queues snapshots of a record for the background writer.
    fn queue_snapshots(
        &self,
        model: &str,
        record_id: &str,
        clear_up_to: Option<(Micros, String, String)>,
        snapshots: Vec<crate::update::Snapshot>,
    ) {
        self.snapshots.write(
            &self.catalog,
            crate::update::SnapshotWrite {
                model: model.to_owned(),
                record_id: record_id.to_owned(),
                clear_up_to,
                snapshots,
            },
        );
    }

    /// A view (by definition) of the record `subject_id` as of `as_of_us`, as a dynamic
    /// message; `None` if the subject did not exist then.
    pub async fn view_dynamic(
        &self,
        def: &ViewDef,
        subject_id: &str,
        as_of_us: Micros,
    ) -> Result<Option<Viewed<DynamicMessage>>> {
        let Some(v) = self.view_encoded(def, subject_id, as_of_us).await? else {
            return Ok(None);
        };
        let view = DynamicMessage::decode(def.message.clone(), &v.view[..])
            .map_err(|e| Error::view(def.name(), format!("record {subject_id:?}: {e}")))?;
        Ok(Some(Viewed {
            view,
            as_of_us: v.as_of_us,
            evidence: v.evidence,
        }))
    }

    /// A view (by definition) of the record `subject_id` as of `as_of_us`, encoded (its
    /// protobuf bytes); `None` if the subject did not exist then. A joined view's members
    /// are kept encoded ([`crate::state`]): their bytes are copied in, not mapped again, so
    /// a large join costs a copy per member, and one decode by its reader.
    pub async fn view_encoded(
        &self,
        def: &ViewDef,
        subject_id: &str,
        as_of_us: Micros,
    ) -> Result<Option<Viewed<bytes::Bytes>>> {
        use prost::Message;
        let mut evidence = BTreeSet::new();
        let subject = self
            .fold_at(def.subject_model(), subject_id, as_of_us)
            .await?;
        let Some(state) = &subject.state else {
            return Ok(None);
        };
        evidence.extend(subject.evidence());
        let view_err = |e: crate::view::map::MapError| {
            Error::view(def.name(), format!("record {subject_id:?}: {e}"))
        };
        let encoded = match &def.kind {
            ViewKind::Record { .. } => record_to_message(&def.message, subject_id, state)
                .map_err(view_err)?
                .encode_to_vec(),
            ViewKind::Joined(j) => {
                let subject_msg = record_to_message(&message_of(&j.subject), subject_id, state)
                    .map_err(view_err)?;
                let mut out = Vec::new();
                put_message(&mut out, j.subject.number(), &subject_msg.encode_to_vec());

                for join in &j.joins {
                    // The value each key must have; an id that does not split into the
                    // parts the keys use has no members.
                    let Some(values) = j.key_values(join, subject_id) else {
                        continue;
                    };
                    let kept = self.join_members(def, join, &values, as_of_us).await?;
                    if join.aggregate.is_some() {
                        // The totals, not the members: what changed since the last read
                        // was applied to them.
                        let totals = overseer_protos::views::Totals {
                            count: kept.members.len() as u64,
                            sum: kept.sum.to_string(),
                        };
                        put_message(&mut out, join.field.number(), &totals.encode_to_vec());
                        evidence.extend(kept.newest.as_ref().map(|n| n.update.clone()));
                    } else {
                        evidence.extend(kept.members.values().filter_map(|m| m.last.clone()));
                        let size: usize = kept.members.values().map(|m| m.encoded.len() + 8).sum();
                        out.reserve(size);
                        for m in kept.members.values() {
                            put_message(&mut out, join.field.number(), &m.encoded);
                        }
                    }
                }

                for lookup in &j.lookups {
                    let Some(id) = crate::builder::path::get(state, &lookup.path)
                        .and_then(crate::builder::scalar_text)
                    else {
                        continue;
                    };
                    let m = self.fold_at(&lookup.model, &id, as_of_us).await?;
                    let Some(st) = &m.state else { continue };
                    let msg =
                        record_to_message(&message_of(&lookup.field), &id, st).map_err(|e| {
                            Error::view(def.name(), format!("{} record {id:?}: {e}", lookup.model))
                        })?;
                    put_message(&mut out, lookup.field.number(), &msg.encode_to_vec());
                    evidence.extend(m.evidence());
                }
                out
            }
        };
        Ok(Some(Viewed {
            view: bytes::Bytes::from(encoded),
            as_of_us,
            evidence: evidence.into_iter().collect(),
        }))
    }

    /// The members of a join as of `as_of_us`, by record id: the records found through
    /// the reference updates of the join's first key (every update of every record that
    /// ever had that reference value, up to the time), kept if they exist at `as_of_us`
    /// and every key's reference has its value (`values`, in key order) then. From kept
    /// members (as of an earlier or a later time), reading again only the records changed
    /// in between (see [`crate::state`], "Joins").
    async fn join_members(
        &self,
        def: &ViewDef,
        join: &crate::view::registry::JoinField,
        values: &[&str],
        as_of_us: Micros,
    ) -> Result<Arc<KeptJoin>> {
        let (Some(first), Some(value)) = (join.keys.first(), values.first()) else {
            return Ok(Arc::new(KeptJoin::empty(as_of_us)));
        };
        let key: JoinKey = (
            def.name().to_owned(),
            join.field.number(),
            values.iter().map(|v| (*v).to_owned()).collect(),
        );
        let kept = self.joins.get(&key);
        let mut stale = false;
        if let Some(kept) = kept.as_ref().filter(|k| k.time > as_of_us) {
            // Kept as of a later time (runs of one subject need not come in time order):
            // the members then, except the records that changed after `as_of_us`, read
            // again as of it. One consistent read gives the updates in (as_of_us, kept
            // time] and how many are at or before `as_of_us`; with those of them at or
            // before the kept point, that is the count the kept members were validated
            // with, unless an update arrived late (at or before the kept point, or after it
            // and at or before `as_of_us`, which would not be read again: both count).
            // (`(as_of_us + 1, "", "")` is before every update after `as_of_us`: sources
            // and positions are never empty.)
            let since = self
                .catalog
                .ref_updates_after(
                    &join.model,
                    &first.reference,
                    value,
                    Some((as_of_us.saturating_add(1), "", "")),
                    kept.time,
                )
                .await?;
            let up_to_kept = since
                .updates
                .iter()
                .filter(|u| {
                    kept.after
                        .as_ref()
                        .is_some_and(|k| u.order_key() <= k.key())
                })
                .count() as u64;
            if since.at_or_before + up_to_kept == kept.n {
                let ids: BTreeSet<&str> =
                    since.updates.iter().map(|u| u.record_id.as_str()).collect();
                let join = self
                    .joined_again(def, join, values, kept, &ids, as_of_us)
                    .await?;
                self.joins.count(JoinPath::Earlier, ids.len());
                return Ok(Arc::new(join));
            }
            stale = true;
        }
        if let Some(kept) = kept.as_ref().filter(|k| k.time <= as_of_us) {
            let since = self
                .catalog
                .ref_updates_after(
                    &join.model,
                    &first.reference,
                    value,
                    kept.after.as_ref().map(Last::key),
                    as_of_us,
                )
                .await?;
            if since.at_or_before == kept.n {
                let Some(newest) = since.updates.last() else {
                    let join = Arc::new(KeptJoin {
                        time: as_of_us,
                        ..KeptJoin::clone(kept)
                    });
                    self.joins.put(key, join.clone(), false);
                    self.joins.count(JoinPath::Extended, 0);
                    return Ok(join);
                };
                let ids: BTreeSet<&str> =
                    since.updates.iter().map(|u| u.record_id.as_str()).collect();
                let join = Arc::new(KeptJoin {
                    after: Some(Last::of_ref(newest)),
                    n: kept.n + since.updates.len() as u64,
                    ..self
                        .joined_again(def, join, values, kept, &ids, as_of_us)
                        .await?
                });
                self.joins.put(key, join.clone(), false);
                self.joins.count(JoinPath::Extended, ids.len());
                return Ok(join);
            }
            stale = true;
        }
        let all = self
            .catalog
            .ref_updates_after(&join.model, &first.reference, value, None, as_of_us)
            .await?;
        let ids: BTreeSet<&str> = all.updates.iter().map(|u| u.record_id.as_str()).collect();
        let read = self.read_members(def, join, values, &ids, as_of_us).await?;
        let mut built = KeptJoin {
            after: all.updates.last().map(Last::of_ref),
            n: all.at_or_before + all.updates.len() as u64,
            aggregate: join.aggregate.is_some(),
            ..KeptJoin::empty(as_of_us)
        };
        built
            .apply(read)
            .map_err(|e| Error::view(def.name(), format!("{}: {e}", join.field.name())))?;
        let join = Arc::new(built);
        self.joins.put(key, join.clone(), stale);
        self.joins.count(
            if stale {
                JoinPath::Stale
            } else {
                JoinPath::Built
            },
            ids.len(),
        );
        Ok(join)
    }

    /// The kept members with the records `ids` read again as of `as_of_us` (each kept,
    /// replaced or dropped as it is a member then or not); `after` and `n` as kept.
    async fn joined_again(
        &self,
        def: &ViewDef,
        join: &crate::view::registry::JoinField,
        values: &[&str],
        kept: &KeptJoin,
        ids: &BTreeSet<&str>,
        as_of_us: Micros,
    ) -> Result<KeptJoin> {
        let read = self.read_members(def, join, values, ids, as_of_us).await?;
        let mut again = KeptJoin {
            time: as_of_us,
            ..kept.clone()
        };
        again
            .apply(read)
            .map_err(|e| Error::view(def.name(), format!("{}: {e}", join.field.name())))?;
        Ok(again)
    }

    /// Reads the records `ids` of a join's model as of `as_of_us` (concurrently): each, as
    /// a member if it exists then and every key's reference has its value (`values`).
    async fn read_members(
        &self,
        def: &ViewDef,
        join: &crate::view::registry::JoinField,
        values: &[&str],
        ids: &BTreeSet<&str>,
        as_of_us: Micros,
    ) -> Result<Vec<(String, Option<Arc<Member>>)>> {
        let target = message_of(&join.field);
        // The futures are made first: a stream mapping borrowed ids through a closure is
        // not `Send` for every lifetime, which the runner's spawned tasks need.
        let reads: Vec<_> = ids
            .iter()
            .map(|id| self.fold_at(&join.model, id, as_of_us))
            .collect();
        let records: Vec<Arc<Folded>> = futures::stream::iter(reads)
            .buffered(FETCH_CONCURRENCY)
            .try_collect()
            .await?;
        ids.iter()
            .zip(records)
            .map(|(record_id, m)| {
                let joined = join
                    .keys
                    .iter()
                    .zip(values)
                    .all(|(k, v)| m.refs.get(&k.reference).map(String::as_str) == Some(*v));
                let last_time_us = m.last.as_ref().map_or(0, |l| l.event_time_us);
                let member = match (&m.state, joined, &join.aggregate) {
                    (Some(st), true, Some(agg)) => {
                        let value = agg.contribution(st).map_err(|e| {
                            Error::view(
                                def.name(),
                                format!(
                                    "{}: {} record {:?}: {e}",
                                    join.field.name(),
                                    join.model,
                                    record_id
                                ),
                            )
                        })?;
                        Some(Arc::new(Member::counted(
                            record_id,
                            value,
                            m.evidence().next(),
                            last_time_us,
                        )))
                    }
                    (Some(st), true, None) => {
                        let msg = record_to_message(&target, record_id, st).map_err(|e| {
                            Error::view(
                                def.name(),
                                format!("{} record {record_id:?}: {e}", join.model),
                            )
                        })?;
                        Some(Arc::new(Member::new(
                            record_id,
                            &msg,
                            m.evidence().next(),
                            last_time_us,
                        )))
                    }
                    _ => None,
                };
                Ok(((*record_id).to_owned(), member))
            })
            .collect()
    }

    /// A typed view of the record `subject_id` as of `as_of_us`; `None` if the subject did
    /// not exist then. The view is found by the message's full name.
    pub async fn view<T>(&self, subject_id: &str, as_of_us: Micros) -> Result<Option<Viewed<T>>>
    where
        T: prost::Message + prost::Name + Default,
    {
        let def = self.views.get(&T::full_name())?;
        let Some(v) = self.view_encoded(&def, subject_id, as_of_us).await? else {
            return Ok(None);
        };
        Ok(Some(Viewed {
            view: v.decode::<T>()?,
            as_of_us: v.as_of_us,
            evidence: v.evidence,
        }))
    }

    /// The stored records of `entries`, in the same order: from the cache, else by ranged
    /// reads (coalesced per segment, concurrent across segments).
    pub async fn fetch(&self, entries: &[IndexEntry]) -> Result<Vec<Arc<UpdateRecord>>> {
        let mut out: Vec<Option<Arc<UpdateRecord>>> = Vec::with_capacity(entries.len());
        // Misses by segment: (offset, len, index in `out`).
        let mut misses: BTreeMap<u64, Vec<(UpdateLoc, usize)>> = BTreeMap::new();
        for (i, e) in entries.iter().enumerate() {
            let hit = self.cache.get(&e.loc);
            if hit.is_none() {
                misses
                    .entry(e.loc.segment_seq)
                    .or_default()
                    .push((e.loc, i));
            }
            out.push(hit);
        }
        if !misses.is_empty() {
            let mut reads = Vec::new();
            for (seq, mut locs) in misses {
                locs.sort_unstable_by_key(|(l, _)| l.offset);
                let mut run: Vec<(UpdateLoc, usize)> = Vec::new();
                for (loc, i) in locs {
                    if let Some((last, _)) = run.last() {
                        let end = u64::from(last.offset) + u64::from(last.len);
                        if u64::from(loc.offset) > end + COALESCE_GAP {
                            reads.push((seq, std::mem::take(&mut run)));
                        }
                    }
                    run.push((loc, i));
                }
                reads.push((seq, run));
            }
            let fetched: Vec<Vec<(usize, Arc<UpdateRecord>)>> = futures::stream::iter(reads)
                .map(|(seq, run)| self.read_run(seq, run))
                .buffer_unordered(FETCH_CONCURRENCY)
                .try_collect()
                .await?;
            for (i, rec) in fetched.into_iter().flatten() {
                out[i] = Some(rec);
            }
        }
        entries
            .iter()
            .zip(out)
            .map(|(e, rec)| {
                let rec = rec.expect("every miss was read");
                if rec.source != e.source || rec.position != e.position {
                    return Err(Error::corrupt(
                        format!("segment {} at {}", e.loc.segment_seq, e.loc.offset),
                        format!(
                            "the catalog indexes {}@{} there, the segment holds {}@{}",
                            e.source, e.position, rec.source, rec.position
                        ),
                    ));
                }
                Ok(rec)
            })
            .collect()
    }

    /// Reads one run of nearby records of a segment with one ranged GET.
    async fn read_run(
        &self,
        seq: u64,
        run: Vec<(UpdateLoc, usize)>,
    ) -> Result<Vec<(usize, Arc<UpdateRecord>)>> {
        let start = u64::from(run[0].0.offset);
        let end = run
            .iter()
            .map(|(l, _)| u64::from(l.offset) + u64::from(l.len))
            .max()
            .unwrap_or(start);
        let key = segment_key(seq);
        let bytes = self.store.get_range(&key, start, end - start).await?;
        run.into_iter()
            .map(|(loc, i)| {
                let from = (u64::from(loc.offset) - start) as usize;
                let slice = bytes
                    .get(from..from + loc.len as usize)
                    .ok_or_else(|| Error::corrupt(&key, "short ranged read"))?;
                let rec = Arc::new(decode_record(slice, &loc)?);
                self.cache.insert(loc, rec.clone());
                Ok((i, rec))
            })
            .collect()
    }
}

/// Appends a message-typed field (`body`: the message encoded) to an encoded message.
fn put_message(buf: &mut Vec<u8>, field: u32, body: &[u8]) {
    prost::encoding::encode_key(field, prost::encoding::WireType::LengthDelimited, buf);
    prost::encoding::encode_varint(body.len() as u64, buf);
    buf.extend_from_slice(body);
}

/// The message type of a (message-typed) view field; the registry checked it is one.
fn message_of(f: &prost_reflect::FieldDescriptor) -> prost_reflect::MessageDescriptor {
    match f.kind() {
        prost_reflect::Kind::Message(m) => m,
        _ => unreachable!("the view registry admits only message-typed fields"),
    }
}
