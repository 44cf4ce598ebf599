//! The runner loop: notifications in, verdicts out.
//!
//! ```text
//!  Subscription ──recv──> selection ──(check, subject, trigger)──> Scheduler
//!       ^                                                           │ ready runs
//!       │ commit (contiguous, fully-run prefix per partition)       v
//!     Acks <──release── execution (JoinSet, Semaphore, timeout, panic = error) ──> Sink
//!                                                                   (escalation, report)
//!  catalog.source_states() ──every poll──> watermarks ──> Scheduler (freshness)
//! ```
//!
//! # Progress tracking
//! A notification is committed on the bus only once every run it triggered has completed
//! and its verdict was handed to the sink (DESIGN invariant 1): each notification takes an
//! ack id; each triggered run holds it; a coalesced run holds the ids of every trigger it
//! absorbed. [`Acks`] commits, per partition, the longest prefix of fully-run
//! notifications. A crash with delayed runs pending therefore re-delivers their
//! notifications, and the restarted runner re-derives the same runs; the sink's incident
//! state (in the catalog) makes the repeated verdicts harmless.
//!
//! # One evaluation at a time per (check, subject)
//! Runs of one (check, subject) that overlap reach the sink in evaluation-time order: a
//! run released while another of the same (check, subject) is running waits behind it
//! ([`Serial`]), coalescing with any other that arrives meanwhile, and runs at an
//! evaluation time no older than the one before. Otherwise a slow failing run completing
//! after a newer passing one would open an incident for a failure already over (a pass
//! with no incident leaves no row for the incident state to order it by). `Serial` holds
//! only what is running: a trigger older than a run that has already completed (a late
//! event under `immediate` or `fixed-delay`) still runs at its own, older time.
//!
//! # Transient faults
//! A storage fault that may pass (see [`crate::retry`]) while building a view, handing a
//! verdict to the sink, selecting, reading watermarks or reading and committing the bus is
//! retried with backoff; the notifications the step serves stay uncommitted meanwhile. A
//! run is never given an `error` verdict for one: its (check, subject, evaluation time)
//! is evaluated again, exactly as it would have been. Only definite errors (an undecodable
//! record, a panic, the check's own timeout) are `error` verdicts.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use overseer_dal::Dal;
use overseer_dal::bus::{DeliveryTag, Subscription};
use overseer_dal::update::{Micros, UpdateNotification, now_us};

use crate::check::{CheckSpec, ErasedCheck, Evaluation, Registry, Verdict};
use crate::pool::CheckPool;
use crate::retry::retrying;
use crate::schedule::{Plan, Ready, Scheduler, Trigger};
use crate::select::Selector;
use crate::telemetry;
use crate::{Error, Result};

/// What a run concluded.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Pass,
    /// A mismatch, with every source complete up to the evaluation time.
    Fail {
        message: String,
        details: Value,
    },
    /// A run forced by the max delay while some sources were not complete up to the
    /// evaluation time: reported, not escalated either way (a pass on incomplete data
    /// resolves nothing, a mismatch opens nothing), and re-armed: the same evaluation runs
    /// again once the sources are complete, and that verdict counts.
    Stale {
        /// The sources behind the evaluation time.
        sources: Vec<String>,
        /// What the check said on the incomplete view.
        passed: bool,
        /// The mismatch's message and details (empty and null when it passed).
        message: String,
        details: Value,
    },
    /// The check could not run to a verdict: the view failed, the function panicked or
    /// timed out.
    Error {
        message: String,
    },
    /// The subject did not exist as of the evaluation time.
    NoSubject,
}

impl Outcome {
    /// Label for metrics and reports.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail { .. } => "fail",
            Outcome::Stale { .. } => "stale",
            Outcome::Error { .. } => "error",
            Outcome::NoSubject => "no_subject",
        }
    }
}

/// One completed run.
#[derive(Clone, Debug, PartialEq)]
pub struct RunRecord {
    pub check: String,
    pub subject: String,
    /// The view was built as of this time.
    pub eval_us: Micros,
    /// Earliest source commit time among the coalesced triggers.
    pub first_event_us: Micros,
    pub outcome: Outcome,
    /// Evidence by reference, of a failing (or stale) verdict: the newest update
    /// (`source@position`) of each record the view shows, as of the evaluation time (of a
    /// declared aggregate, its newest member's).
    /// Empty for a pass (nothing escalates or reports it; naming every member of a large
    /// join on every run cost more than the check).
    pub evidence: Vec<String>,
    /// The content digest of the view a failing (or stale) verdict saw; `None` otherwise
    /// (see [`Evaluation::Ran`]).
    pub view_digest: Option<String>,
    pub triggers: u32,
    /// Wall-clock time the verdict was reached (time to detect = this − first_event_us).
    pub finished_us: Micros,
}

/// Where verdicts go: escalation live, a report in replay.
#[async_trait::async_trait]
pub trait Sink: Send + Sync {
    /// Takes one run's verdict. An error stops the runner (nothing is committed past it).
    async fn record(&self, run: &RunRecord) -> Result<()>;
}

/// Settings of a runner.
#[derive(Clone, Debug)]
pub struct RunnerOptions {
    /// Which sources feed each model (from the ingestion config): the sources a check's
    /// freshness depends on.
    pub model_sources: BTreeMap<String, Vec<String>>,
    /// Runs executing at once.
    pub concurrency: usize,
    /// Runs pending in the scheduler past which the runner stops reading notifications.
    pub max_pending: usize,
    /// How often source watermarks are read from the catalog.
    pub watermark_poll: Duration,
    /// How often completed notifications are committed on the bus.
    pub commit_interval: Duration,
    /// Notifications read per batch.
    pub batch: usize,
    /// The configured models and their declared references: when set, the runner refuses
    /// to start if [`crate::validate`] finds problems with its checks, listing them all.
    /// [`crate::service::options`] sets it from the configuration; `None` (hand-built
    /// options in tests) skips that validation.
    pub models: Option<crate::validate::Models>,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        RunnerOptions {
            model_sources: BTreeMap::new(),
            concurrency: 64,
            max_pending: 100_000,
            watermark_poll: Duration::from_millis(50),
            commit_interval: Duration::from_millis(200),
            batch: 1024,
            models: None,
        }
    }
}

/// Notifications whose selections run at once.
const SELECT_CONCURRENCY: usize = 64;

/// Counts of a runner's life, returned when it stops.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunnerReport {
    pub notifications: u64,
    pub triggers: u64,
    pub runs: u64,
    pub by_outcome: BTreeMap<String, u64>,
}

/// Per-partition progress: which notifications are fully run, and the committable prefix.
#[derive(Debug, Default)]
pub struct Acks {
    next_id: u64,
    /// Ack id → (tag, runs still holding it).
    live: HashMap<u64, (DeliveryTag, u32)>,
    /// Per partition: offset → done?
    partitions: BTreeMap<i32, BTreeMap<i64, bool>>,
}

impl Acks {
    /// Registers a delivered notification; it is held once per run it triggers.
    pub fn register(&mut self, tag: DeliveryTag) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.partitions
            .entry(tag.partition)
            .or_default()
            .insert(tag.offset, false);
        self.live.insert(id, (tag, 0));
        id
    }

    pub fn hold(&mut self, id: u64) {
        if let Some((_, n)) = self.live.get_mut(&id) {
            *n += 1;
        }
    }

    /// Releases one hold (or the registration itself when nothing holds it).
    pub fn release(&mut self, id: u64) {
        let Some((tag, n)) = self.live.get_mut(&id) else {
            return;
        };
        *n = n.saturating_sub(1);
        if *n == 0 {
            let tag = tag.clone();
            self.live.remove(&id);
            if let Some(p) = self.partitions.get_mut(&tag.partition) {
                p.insert(tag.offset, true);
            }
        }
    }

    /// The last tag of each partition's done prefix, removing that prefix.
    pub fn committable(&mut self) -> Vec<DeliveryTag> {
        let mut out = Vec::new();
        for (partition, offsets) in &mut self.partitions {
            let mut last = None;
            while let Some((&offset, &done)) = offsets.first_key_value() {
                if !done {
                    break;
                }
                offsets.pop_first();
                last = Some(offset);
            }
            if let Some(offset) = last {
                out.push(DeliveryTag {
                    partition: *partition,
                    offset,
                });
            }
        }
        out
    }

    /// Notifications delivered but not yet fully run.
    pub fn outstanding(&self) -> usize {
        self.live.len()
    }
}

/// The processor runner over one DAL and one registry.
pub struct Runner {
    dal: Dal,
    registry: Arc<Registry>,
    selector: Selector,
    scheduler: Scheduler,
    options: RunnerOptions,
    /// (model, reference) pairs the checks' joins find members by.
    join_refs: Vec<(String, String)>,
    /// Where the check functions run.
    pool: CheckPool,
    /// Transient faults in a row reading the watermarks.
    watermark_faults: u32,
}

impl Runner {
    /// A runner of the enabled checks of `registry`. Fails if a check's view is unknown or
    /// reads a model no source feeds, or (with [`RunnerOptions::models`]) if validation
    /// finds problems ([`Error::Invalid`], listing every one). The views the registry
    /// registers in code ([`Registry::views`]) are added to `dal`'s.
    pub fn new(dal: Dal, registry: Arc<Registry>, options: RunnerOptions) -> Result<Self> {
        Self::with_checks(dal, registry, options, |s| s.enabled)
    }

    /// A runner of the checks `include` admits (replay: the ones asked for, shadow or not).
    pub fn with_checks(
        dal: Dal,
        registry: Arc<Registry>,
        options: RunnerOptions,
        include: impl Fn(&CheckSpec) -> bool,
    ) -> Result<Self> {
        let dal = registry.dal_with_views(dal)?;
        if let Some(models) = &options.models {
            let problems =
                crate::validate::validate_checks(&registry, dal.views(), models, &include);
            if !problems.is_empty() {
                return Err(Error::Invalid(problems));
            }
        }
        let selector = Selector::new(&registry, dal.views(), &include)?;
        let mut scheduler = Scheduler::new();
        let mut join_refs = BTreeSet::new();
        for spec in registry.iter().filter(|s| include(s)) {
            let view = dal
                .views()
                .get(&spec.check.view_name())
                .map_err(|e| Error::Config(format!("check {:?}: {e}", spec.name)))?;
            join_refs.extend(view.join_refs());
            let mut sources = Vec::new();
            for model in view.models() {
                let Some(feeds) = options.model_sources.get(&model) else {
                    return Err(Error::Config(format!(
                        "check {:?} reads model {model:?} (view {}), which no configured \
                         source feeds",
                        spec.name,
                        view.name()
                    )));
                };
                sources.extend(feeds.iter().cloned());
            }
            sources.sort();
            sources.dedup();
            scheduler.plan(
                &spec.name,
                Plan {
                    strategy: spec.strategy,
                    grace: spec.grace,
                    sources: sources.into(),
                },
            );
        }
        Ok(Runner {
            dal,
            registry,
            selector,
            scheduler,
            options,
            join_refs: join_refs.into_iter().collect(),
            pool: CheckPool::default(),
            watermark_faults: 0,
        })
    }

    /// Runs until `shutdown`, then stops reading, lets running checks finish (pending
    /// delayed runs stay uncommitted, so they are re-derived on restart), commits and
    /// returns.
    pub async fn run(
        mut self,
        mut sub: Box<dyn Subscription>,
        sink: Arc<dyn Sink>,
        shutdown: CancellationToken,
    ) -> Result<RunnerReport> {
        // The joins of the checks' views find their members by these references: the
        // catalog keeps their reference updates as an index, so a join read costs what
        // changed since (see `overseer_dal::state`, "Joins").
        let catalog = self.dal.catalog().clone();
        let refs = &self.join_refs;
        match retrying("select", &shutdown, || async {
            Ok(catalog.keep_ref_updates(refs).await?)
        })
        .await
        {
            Some(kept) => kept?,
            None => return Ok(RunnerReport::default()),
        }
        // Stale runs owed again, as the incident rows keep them (see `crate::incident`).
        let rows = match retrying("select", &shutdown, || async {
            Ok(catalog.rearmed_incidents().await?)
        })
        .await
        {
            Some(rows) => rows?,
            None => return Ok(RunnerReport::default()),
        };
        let now = Instant::now();
        let rearmed = rows
            .iter()
            .filter(|i| {
                self.scheduler
                    .rearm(&i.check, &i.subject, i.rearm_eval_us, i.rearm_eval_us, now)
            })
            .count();
        if rearmed > 0 {
            tracing::info!(
                rearmed,
                "stale runs re-armed: each runs again once its sources \
                are complete"
            );
        }
        let mut report = RunnerReport::default();
        let mut bus_faults = 0u32;
        let mut serial = Serial::default();
        // Runs that were waiting behind one that completed, to start now.
        let mut resumed: Vec<Ready> = Vec::new();
        let mut acks = Acks::default();
        let mut running: Running = JoinSet::new();
        let permits = Arc::new(Semaphore::new(self.options.concurrency.max(1)));
        let mut watermarks = tokio::time::interval(self.options.watermark_poll);
        watermarks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut commits = tokio::time::interval(self.options.commit_interval);
        commits.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let far = Duration::from_secs(3600);
        // Watermarks are read again as soon as a batch commits in this process (push), and
        // on the poll interval (commits by other processes).
        let mut commit_signal = self.dal.catalog().commit_signal();
        // Done prefixes not yet committed on the bus (a commit that failed transiently is
        // tried again with the next one).
        let mut to_commit = ToCommit::default();

        loop {
            let accepting = self.scheduler.len() < self.options.max_pending
                && running.len() < self.options.concurrency * 4;
            let next_timer = self
                .scheduler
                .next_timer()
                .unwrap_or_else(|| Instant::now() + far);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(done) = running.join_next() => {
                    for (ids, rec) in done.map_err(|e| Error::Panicked(crate::check::join_error_text(e)))?? {
                        report.runs += 1;
                        *report.by_outcome.entry(rec.outcome.label().to_owned()).or_default() += 1;
                        for id in ids {
                            acks.release(id);
                        }
                        resumed.extend(serial.done(&rec));
                    }
                }
                _ = overseer_dal::catalog::committed(&mut commit_signal) => {
                    self.refresh_watermarks().await?;
                }
                _ = watermarks.tick() => {
                    self.refresh_watermarks().await?;
                }
                _ = commits.tick() => {
                    to_commit.add(acks.committable());
                    to_commit.try_commit(&mut *sub).await?;
                }
                _ = tokio::time::sleep_until(next_timer) => {}
                batch = sub.recv(self.options.batch), if accepting => {
                    let batch = match batch {
                        Ok(batch) => {
                            bus_faults = 0;
                            batch
                        }
                        Err(e) if e.is_transient() => {
                            bus_faults += 1;
                            crate::retry::note_fault("bus", bus_faults, &e);
                            tokio::select! {
                                _ = shutdown.cancelled() => break,
                                _ = tokio::time::sleep(crate::retry::pause(bus_faults)) => {}
                            }
                            continue;
                        }
                        Err(e) => return Err(e.into()),
                    };
                    // Selections may read the catalog: run them concurrently (a round trip
                    // each on a server catalog), then take them in delivery order.
                    let (selector, catalog, notes) =
                        (&self.selector, &**self.dal.catalog(), &batch);
                    let stop = &shutdown;
                    let selected: Vec<Option<Result<Selected>>> =
                        futures::stream::iter(0..notes.len())
                            .map(|i| async move {
                                let note = &notes[i].note;
                                if !selector.triggers(&note.model) {
                                    return Some(Ok(Vec::new()));
                                }
                                retrying("select", stop, || selector.select(catalog, note)).await
                            })
                            .buffered(SELECT_CONCURRENCY)
                            .collect()
                            .await;
                    if selected.iter().any(Option::is_none) {
                        // Stopped while a selection waited to retry: none of this batch is
                        // taken (nor committed), so it is delivered again after a restart.
                        break;
                    }
                    for (d, pairs) in batch.into_iter().zip(selected) {
                        let pairs = pairs.expect("checked above")?;
                        report.notifications += 1;
                        let id = acks.register(d.tag);
                        let now = Instant::now();
                        for (check, subject) in pairs {
                            let Some(name) = self.scheduler.name(&check) else { continue };
                            acks.hold(id);
                            report.triggers += 1;
                            self.scheduler.add(&name, &subject, trigger(&d.note, id), now);
                        }
                        // Held by its runs, or done now if it triggered none.
                        acks.hold(id);
                        acks.release(id);
                    }
                }
            }
            let mut ready = std::mem::take(&mut resumed);
            ready.extend(
                self.scheduler
                    .take_ready(Instant::now())
                    .into_iter()
                    .filter_map(|r| serial.admit(r)),
            );
            for group in self.share_groups(ready) {
                self.spawn(&mut running, &permits, &sink, &shutdown, group);
            }
            telemetry::pending(self.scheduler.len(), self.scheduler.rearmed());
        }

        // Let running checks finish and hand their verdicts over, then commit.
        while let Some(done) = running.join_next().await {
            for (ids, rec) in
                done.map_err(|e| Error::Panicked(crate::check::join_error_text(e)))??
            {
                report.runs += 1;
                *report
                    .by_outcome
                    .entry(rec.outcome.label().to_owned())
                    .or_default() += 1;
                for id in ids {
                    acks.release(id);
                }
            }
        }
        to_commit.add(acks.committable());
        for attempt in 1..=4 {
            to_commit.try_commit(&mut *sub).await?;
            if to_commit.is_empty() {
                break;
            }
            // A few quick tries; what stays uncommitted is delivered again after a restart.
            tokio::time::sleep(crate::retry::pause(attempt)).await;
        }
        if !to_commit.is_empty() {
            tracing::warn!(
                "stopping with completed notifications uncommitted (the bus kept \
                failing): they are delivered again, harmlessly, after a restart"
            );
        }
        Ok(report)
    }

    /// Reads every source's watermark into the scheduler. A transient fault keeps the
    /// watermarks as they were (the next poll reads them again).
    async fn refresh_watermarks(&mut self) -> Result<()> {
        let states = match self.dal.catalog().source_states().await {
            Ok(states) => {
                self.watermark_faults = 0;
                states
            }
            Err(e) if e.is_transient() => {
                self.watermark_faults += 1;
                crate::retry::note_fault("watermarks", self.watermark_faults, &e);
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let now = now_us();
        for s in &states {
            telemetry::watermark_age(&s.source, now - s.watermark_us);
        }
        self.scheduler
            .set_watermarks(states.iter().map(|s| (s.source.as_str(), s.watermark_us)));
        telemetry::dal_states(&self.dal.state_stats());
        Ok(())
    }

    /// Groups released runs that can share one view build ([`share_groups`]).
    fn share_groups(&self, ready: Vec<Ready>) -> Vec<Vec<Run>> {
        share_groups(ready, |name| {
            let spec = self
                .registry
                .get(name)
                .expect("the scheduler only knows registered checks");
            (spec.check.clone(), spec.timeout)
        })
    }

    /// Runs a group of released runs (see [`Runner::share_groups`]) and hands their verdicts
    /// to `sink`, in a task of its own: verdicts reach the sink concurrently (the incident
    /// state machine's compare-and-set keeps concurrent verdicts on one subject
    /// consistent), and a run's notifications are released only once its verdict is
    /// recorded.
    fn spawn(
        &self,
        running: &mut Running,
        permits: &Arc<Semaphore>,
        sink: &Arc<dyn Sink>,
        stop: &CancellationToken,
        runs: Vec<Run>,
    ) {
        let (dal, pool) = (self.dal.clone(), self.pool.clone());
        let (permits, sink, stop) = (permits.clone(), sink.clone(), stop.clone());
        running.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("never closed");
            // Stopped while retrying: the runs are abandoned, their notifications stay
            // uncommitted and are delivered again after a restart.
            let Some(recs) = run_group(&dal, &pool, &runs, &stop).await else {
                return Ok(Vec::new());
            };
            let mut out = Vec::with_capacity(recs.len());
            for ((_, _, ready), rec) in runs.into_iter().zip(recs) {
                telemetry::run_finished(&rec);
                match retrying("verdict", &stop, || sink.record(&rec)).await {
                    Some(recorded) => recorded?,
                    None => break,
                }
                out.push((ready.acks, rec));
            }
            Ok(out)
        });
    }
}

/// A released run with its check and timeout.
pub type Run = (Arc<dyn ErasedCheck>, Duration, Ready);

/// Groups released runs that can share one view build: runs of checks reading the same
/// view (by definition) of the same subject at the same time, in release order, each with
/// its check and timeout (`check_of` gives them by check name).
pub fn share_groups(
    ready: Vec<Ready>,
    check_of: impl Fn(&str) -> (Arc<dyn ErasedCheck>, Duration),
) -> Vec<Vec<Run>> {
    let mut groups: Vec<Vec<Run>> = Vec::with_capacity(ready.len());
    let mut by_key: HashMap<(String, String, Micros), usize> = HashMap::new();
    for r in ready {
        let (check, timeout) = check_of(&r.check);
        let run = (check, timeout, r);
        if !run.0.shares_view() {
            groups.push(vec![run]);
            continue;
        }
        let key = (run.0.view_name(), run.2.subject.clone(), run.2.eval_us);
        match by_key.get(&key) {
            Some(&i) => groups[i].push(run),
            None => {
                by_key.insert(key, groups.len());
                groups.push(vec![run]);
            }
        }
    }
    groups
}

/// Runs a group from [`share_groups`]: one run alone ([`execute`]), several sharing their
/// view ([`execute_shared`]). The records are in `runs` order. A transient storage fault
/// runs the group again, after a pause ([`crate::retry`]), until it reaches its verdicts;
/// `None` if `stop` is cancelled meanwhile.
pub async fn run_group(
    dal: &Dal,
    pool: &CheckPool,
    runs: &[Run],
    stop: &CancellationToken,
) -> Option<Vec<RunRecord>> {
    let attempt = || async {
        match runs {
            [(check, timeout, ready)] => {
                Ok(vec![execute(dal, pool, &**check, *timeout, ready).await?])
            }
            _ => execute_shared(dal, pool, runs).await,
        }
    };
    retrying("run", stop, attempt)
        .await
        .map(|recs| recs.expect("only transient faults are errors here"))
}

/// The (check, subject) pairs a notification selects.
type Selected = Vec<(String, String)>;

/// The runs in flight: each task gives, per run of its group, the acks it held and its
/// record.
type Running = JoinSet<Result<Vec<(Vec<u64>, RunRecord)>>>;

fn trigger(note: &UpdateNotification, ack: u64) -> Trigger {
    Trigger {
        event_time_us: note.event_time_us,
        ingest_time_us: note.ingest_time_us,
        ack: Some(ack),
    }
}

/// Runs one released run to a record: the view as of the evaluation time, the function, a
/// timeout (not counting a wait in the check pool's queue: [`crate::check::within`]), and
/// panics turned into error outcomes. `Err` only for a transient storage fault (retry it).
pub async fn execute(
    dal: &Dal,
    pool: &CheckPool,
    check: &dyn crate::check::ErasedCheck,
    timeout: Duration,
    ready: &Ready,
) -> Result<RunRecord> {
    let run = check.evaluate(dal, &ready.subject, ready.eval_us);
    let result = crate::check::within(pool, Instant::now(), timeout, run).await;
    record_of(ready, result)
}

/// Runs released runs of several checks that read one view of one subject at one time
/// (each [`ErasedCheck::shares_view`]): the view is built once and handed to each function.
/// Each run keeps its own budget — a run whose timeout passes while the view is being
/// built, or while its function runs, times out as it would alone — and the functions run
/// concurrently. The records are those [`execute`] would give each run (same view, same
/// evidence), in `runs` order; `Err` only for a transient storage fault (retry them all).
///
/// [`ErasedCheck::shares_view`]: crate::check::ErasedCheck::shares_view
pub async fn execute_shared(dal: &Dal, pool: &CheckPool, runs: &[Run]) -> Result<Vec<RunRecord>> {
    let Some((first, _, ready)) = runs.first() else {
        return Ok(Vec::new());
    };
    debug_assert!(runs.iter().all(|(c, _, r)| c.shares_view()
        && c.view_name() == first.view_name()
        && r.subject == ready.subject
        && r.eval_us == ready.eval_us));
    let start = Instant::now();
    let longest = runs.iter().map(|r| r.1).max().unwrap_or_default();
    let built = match dal.views().get(&first.view_name()) {
        Ok(def) => match tokio::time::timeout(
            longest,
            dal.view_encoded(&def, &ready.subject, ready.eval_us),
        )
        .await
        {
            Ok(built) => built.map_err(Error::from),
            // Past every run's deadline: each reports its own timeout below.
            Err(_) => Err(Error::TimedOut(longest)),
        },
        Err(e) => Err(Error::from(e)),
    };
    let built = match built {
        Err(e) if crate::retry::is_storage_blip(&e) => return Err(e),
        other => other,
    };
    let built = &built;
    futures::future::join_all(runs.iter().map(|(check, timeout, ready)| async move {
        let deadline = start + *timeout;
        let result = match built {
            _ if Instant::now() >= deadline => Err(Error::TimedOut(*timeout)),
            Ok(None) => Ok(Evaluation::NoSubject),
            Ok(Some(viewed)) => {
                crate::check::within(pool, start, *timeout, check.evaluate_on(dal, viewed)).await
            }
            Err(e) => return Ok(error_record(ready, e.to_string())),
        };
        record_of(ready, result)
    }))
    .await
    .into_iter()
    .collect()
}

/// The record of a run from what evaluating it gave: a definite error is an `error`
/// verdict (its message); a transient storage fault is returned, to retry the run.
fn record_of(ready: &Ready, result: Result<Evaluation>) -> Result<RunRecord> {
    let (outcome, evidence, view_digest) = match result {
        Ok(Evaluation::NoSubject) => (Outcome::NoSubject, Vec::new(), None),
        Ok(Evaluation::Ran {
            verdict,
            evidence,
            view_digest,
        }) => {
            let outcome = match verdict {
                Verdict::Pass if !ready.stale.is_empty() => Outcome::Stale {
                    sources: ready.stale.clone(),
                    passed: true,
                    message: String::new(),
                    details: Value::Null,
                },
                Verdict::Pass => Outcome::Pass,
                Verdict::Fail { message, details } if !ready.stale.is_empty() => Outcome::Stale {
                    sources: ready.stale.clone(),
                    passed: false,
                    message,
                    details,
                },
                Verdict::Fail { message, details } => Outcome::Fail { message, details },
            };
            (outcome, evidence, view_digest)
        }
        Err(e) if crate::retry::is_storage_blip(&e) => return Err(e),
        Err(e) => return Ok(error_record(ready, e.to_string())),
    };
    Ok(record(ready, outcome, evidence, view_digest))
}

/// The `error` record of a run that could not reach a verdict.
fn error_record(ready: &Ready, message: String) -> RunRecord {
    record(ready, Outcome::Error { message }, Vec::new(), None)
}

fn record(
    ready: &Ready,
    outcome: Outcome,
    evidence: Vec<String>,
    view_digest: Option<String>,
) -> RunRecord {
    RunRecord {
        check: ready.check.to_string(),
        subject: ready.subject.clone(),
        eval_us: ready.eval_us,
        first_event_us: ready.first_event_us,
        outcome,
        evidence,
        view_digest,
        triggers: ready.triggers,
        finished_us: now_us(),
    }
}

/// The (check, subject)s with a run in flight, each with the run waiting behind it: see
/// the module docs, "One evaluation at a time per (check, subject)". Holds only what is
/// running or waiting.
#[derive(Debug, Default)]
pub struct Serial {
    /// check → subject → the running evaluation and the run waiting behind it.
    running: HashMap<Arc<str>, HashMap<String, InFlight>>,
}

#[derive(Debug)]
struct InFlight {
    eval_us: Micros,
    stale: Vec<String>,
    next: Option<Ready>,
}

impl Serial {
    /// `r`, if it may run now; otherwise it waits behind the running one of its
    /// (check, subject), coalesced with whatever waits there already.
    pub fn admit(&mut self, r: Ready) -> Option<Ready> {
        let subjects = self.running.entry(r.check.clone()).or_default();
        match subjects.get_mut(&r.subject) {
            Some(flight) => {
                flight.next = Some(match flight.next.take() {
                    Some(waiting) => coalesce(waiting, r),
                    None => r,
                });
                None
            }
            None => {
                let flight = InFlight {
                    eval_us: r.eval_us,
                    stale: r.stale.clone(),
                    next: None,
                };
                subjects.insert(r.subject.clone(), flight);
                Some(r)
            }
        }
    }

    /// The run of `rec`'s (check, subject) completed: the run waiting behind it, if any,
    /// to start now, at an evaluation time no older than the completed one's.
    pub fn done(&mut self, rec: &RunRecord) -> Option<Ready> {
        let subjects = self.running.get_mut(rec.check.as_str())?;
        let flight = subjects.remove(rec.subject.as_str())?;
        let Some(mut next) = flight.next else {
            if subjects.is_empty() {
                self.running.remove(rec.check.as_str());
            }
            return None;
        };
        if next.eval_us < flight.eval_us {
            // Late triggers: evaluate where the last verdict was, not before it.
            next.eval_us = flight.eval_us;
            next.stale = flight.stale;
        }
        subjects.insert(
            next.subject.clone(),
            InFlight {
                eval_us: next.eval_us,
                stale: next.stale.clone(),
                next: None,
            },
        );
        Some(next)
    }

    /// (check, subject)s with a run in flight.
    pub fn len(&self) -> usize {
        self.running.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Two released runs of one (check, subject) as one, `b` released after `a`: the later
/// evaluation time, every trigger's ack. At one evaluation time the later release's stale
/// sources hold (watermarks only move forward: a re-armed run released complete after a
/// stale one is complete).
fn coalesce(a: Ready, b: Ready) -> Ready {
    let (mut keep, other) = if b.eval_us >= a.eval_us {
        (b, a)
    } else {
        (a, b)
    };
    keep.first_event_us = keep.first_event_us.min(other.first_event_us);
    keep.acks.extend(other.acks);
    keep.triggers += other.triggers;
    keep
}

/// Done prefixes waiting to be committed on the bus: the newest offset per partition.
#[derive(Debug, Default)]
struct ToCommit(BTreeMap<i32, i64>, u32);

impl ToCommit {
    fn add(&mut self, tags: Vec<DeliveryTag>) {
        for t in tags {
            let top = self.0.entry(t.partition).or_insert(t.offset);
            *top = (*top).max(t.offset);
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Commits what is waiting; a transient fault keeps it for the next try.
    async fn try_commit(&mut self, sub: &mut dyn Subscription) -> Result<()> {
        if self.0.is_empty() {
            return Ok(());
        }
        let tags: Vec<DeliveryTag> = self
            .0
            .iter()
            .map(|(&partition, &offset)| DeliveryTag { partition, offset })
            .collect();
        match sub.commit(&tags).await {
            Ok(()) => {
                self.0.clear();
                self.1 = 0;
                Ok(())
            }
            Err(e) if e.is_transient() => {
                self.1 += 1;
                crate::retry::note_fault("bus", self.1, &e);
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(p: i32, o: i64) -> DeliveryTag {
        DeliveryTag {
            partition: p,
            offset: o,
        }
    }

    fn ready(subject: &str, eval_us: Micros, ack: u64) -> Ready {
        Ready {
            check: Arc::from("c"),
            subject: subject.into(),
            eval_us,
            first_event_us: eval_us,
            stale: Vec::new(),
            acks: vec![ack],
            triggers: 1,
        }
    }

    fn rec(subject: &str, eval_us: Micros) -> RunRecord {
        RunRecord {
            check: "c".into(),
            subject: subject.into(),
            eval_us,
            first_event_us: eval_us,
            outcome: Outcome::Pass,
            evidence: Vec::new(),
            view_digest: None,
            triggers: 1,
            finished_us: 0,
        }
    }

    #[test]
    fn one_run_at_a_time_per_subject_in_evaluation_order() {
        let mut s = Serial::default();
        assert!(s.admit(ready("a", 10, 0)).is_some());
        assert!(
            s.admit(ready("b", 10, 1)).is_some(),
            "another subject runs at once"
        );
        // Two more of `a` wait behind it, coalesced into one.
        assert!(s.admit(ready("a", 30, 2)).is_none());
        assert!(s.admit(ready("a", 20, 3)).is_none());
        assert_eq!(s.len(), 2);
        let next = s.done(&rec("a", 10)).unwrap();
        assert_eq!(
            (next.eval_us, next.acks.clone(), next.triggers),
            (30, vec![2, 3], 2)
        );
        assert_eq!(next.first_event_us, 20);
        assert!(s.done(&rec("b", 10)).is_none());
        // A late trigger (older evaluation time) behind a newer run: run where the last
        // verdict was.
        let mut late = ready("a", 5, 4);
        late.stale = vec!["ledger".into()];
        assert!(s.admit(late).is_none());
        let next = s.done(&rec("a", 30)).unwrap();
        assert_eq!((next.eval_us, next.stale.clone()), (30, vec![]));
        assert!(s.done(&rec("a", 30)).is_none());
        assert!(s.is_empty());
    }

    #[test]
    fn a_complete_release_behind_a_stale_one_at_the_same_time_runs_complete() {
        let mut s = Serial::default();
        assert!(s.admit(ready("a", 10, 0)).is_some());
        // Forced stale at 30 while 10 still runs, then re-armed and released complete.
        let mut stale = ready("a", 30, 1);
        stale.stale = vec!["ledger".into()];
        assert!(s.admit(stale).is_none());
        let mut rearmed = ready("a", 30, 2);
        rearmed.acks.clear();
        assert!(s.admit(rearmed).is_none());
        let next = s.done(&rec("a", 10)).unwrap();
        assert_eq!(
            (next.eval_us, next.stale.clone(), next.acks.clone()),
            (30, vec![], vec![1])
        );
    }

    #[test]
    fn acks_commit_only_fully_run_prefixes() {
        let mut a = Acks::default();
        let ids: Vec<u64> = (0..4).map(|o| a.register(tag(0, o))).collect();
        let other = a.register(tag(1, 7));
        // 0: no runs; 1: two runs; 2: one run; 3: no runs.
        a.hold(ids[0]);
        a.release(ids[0]);
        a.hold(ids[1]);
        a.hold(ids[1]);
        a.hold(ids[2]);
        a.hold(ids[3]);
        a.release(ids[3]);
        assert_eq!(a.committable(), [tag(0, 0)]);
        a.release(ids[2]);
        a.release(ids[1]);
        assert!(a.committable().is_empty(), "1 still has a run");
        a.release(ids[1]);
        assert_eq!(a.committable(), [tag(0, 3)]);
        assert_eq!(a.outstanding(), 1);
        a.hold(other);
        a.release(other);
        assert_eq!(a.committable(), [tag(1, 7)]);
        assert_eq!(a.outstanding(), 0);
    }
}
