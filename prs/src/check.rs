//! Checks: plain functions from a view to a verdict, and how they are registered.
//!
//! ```text
//! fn transfer_nets_to_zero(v: &TransferWithLedger) -> Verdict { ... }
//!
//! let mut registry = Registry::new();
//! registry.check("transfer_nets_to_zero", transfer_nets_to_zero);
//! registry
//!     .check("entries_match_amount", entries_match_amount)
//!     .grace(Duration::from_secs(30))
//!     .strategy(Strategy::FixedDelay(Duration::from_secs(60)))
//!     .escalate("payments-oncall");
//! ```
//!
//! The function's argument type is the view: a message of `protos/` known to the DAL's view
//! registry (`TransferWithLedger`). From it the registry knows, with no more said, which
//! models trigger the check (every model the view reads), how a notification finds its
//! subjects (a subject-model update is its own subject; an update of a joined model names
//! its subjects through the join's reference, e.g. a ledger entry's `transfer_id`), and which
//! sources the scheduler must wait for. Every stage has an escape hatch on [`CheckSpec`]:
//! [`CheckSpec::select`] (custom selection; [`CheckSpec::reads_refs`] declares the references
//! it reads, for start-up validation), [`CheckSpec::strategy`], [`CheckSpec::grace`],
//! [`CheckSpec::escalate`], [`CheckSpec::view_with`] (a custom view function).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use overseer_dal::update::{Micros, UpdateNotification};
use overseer_dal::{Dal, Viewed};
use serde_json::Value;

use crate::pool::CheckPool;
use crate::{Error, Result};

/// What a check says about its subject.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Pass,
    /// A mismatch: a one-line message for the incident title, and structured details (the
    /// evidence a human needs: amounts, ids, expected vs found).
    Fail {
        message: String,
        details: Value,
    },
}

impl Verdict {
    pub fn pass() -> Self {
        Verdict::Pass
    }

    pub fn fail(message: impl Into<String>) -> Self {
        Verdict::Fail {
            message: message.into(),
            details: Value::Null,
        }
    }

    pub fn fail_with(message: impl Into<String>, details: Value) -> Self {
        Verdict::Fail {
            message: message.into(),
            details,
        }
    }

    /// `Pass` if `ok`, else a failure built by `fail`.
    pub fn check(ok: bool, fail: impl FnOnce() -> Verdict) -> Self {
        if ok { Verdict::Pass } else { fail() }
    }

    pub fn is_pass(&self) -> bool {
        matches!(self, Verdict::Pass)
    }
}

/// When a triggered check runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// At once, on whatever has been ingested (fast; false alarms when a source lags).
    Immediate,
    /// A fixed time after the trigger was received (SLA checks: "settled within d").
    FixedDelay(Duration),
    /// The default: once every source the view reads is complete up to the evaluation time
    /// (trigger commit time + grace), but no later than `max_delay` after the trigger was
    /// received; past that it runs and reports the stale sources instead of a mismatch.
    FreshnessAware { max_delay: Duration },
}

/// Default bound on a freshness-aware wait.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(60);

impl Default for Strategy {
    fn default() -> Self {
        Strategy::FreshnessAware {
            max_delay: DEFAULT_MAX_DELAY,
        }
    }
}

/// Custom selection: the subjects a notification triggers the check for.
pub type SelectFn = Arc<dyn Fn(&UpdateNotification) -> Vec<String> + Send + Sync>;

/// A boxed future, for the erased async pieces.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Outcome of building a check's view: the view's evidence plus the verdict, or why there
/// was nothing to check.
#[derive(Clone, Debug, PartialEq)]
pub enum Evaluation {
    /// The function ran.
    Ran {
        verdict: Verdict,
        /// Evidence by reference, of a failing verdict: the newest update
        /// (`source@position`) of each record the view shows, as of the evaluation time
        /// (of a declared aggregate, its newest member's). Empty for a pass.
        evidence: Vec<String>,
        /// The content digest of the view a failing verdict saw
        /// ([`overseer_dal::view::digest`]; `overseer view --as-of` prints the same for
        /// the view it rebuilds). `None` for a pass, or a custom view the DAL does not
        /// know.
        view_digest: Option<String>,
    },
    /// The subject did not exist as of the evaluation time (created later, or deleted).
    NoSubject,
}

/// The type-erased check the runner drives (object-safe; the blanket impl below makes every
/// `Fn(&V) -> Verdict` one).
pub trait ErasedCheck: Send + Sync {
    /// Full name of the view message.
    fn view_name(&self) -> String;

    /// Builds the view of `subject` as of `as_of_us` and runs the function on it.
    /// Panics of the function are not caught here (the runner isolates them).
    fn evaluate<'a>(
        &'a self,
        dal: &'a Dal,
        subject: &'a str,
        as_of_us: Micros,
    ) -> BoxFuture<'a, Result<Evaluation>>;

    /// Whether the check's view is the DAL's (built by definition), so a view built once
    /// for a (view, subject, time) can be handed to it ([`ErasedCheck::evaluate_on`]);
    /// `false` for a custom view function.
    fn shares_view(&self) -> bool {
        false
    }

    /// Runs the function on a view already built by the DAL (encoded, as this check's view
    /// message): what several checks reading one view at one time share.
    fn evaluate_on<'a>(
        &'a self,
        dal: &'a Dal,
        viewed: &'a Viewed<overseer_dal::Bytes>,
    ) -> BoxFuture<'a, Result<Evaluation>> {
        let _ = (dal, viewed);
        Box::pin(async {
            Err(Error::Config(
                "this check builds its own view: it cannot take a shared one".into(),
            ))
        })
    }
}

/// A custom view function: how to build the view of a subject as of a time.
pub type ViewFn<V> = Arc<
    dyn for<'a> Fn(&'a Dal, &'a str, Micros) -> BoxFuture<'a, Result<Option<Viewed<V>>>>
        + Send
        + Sync,
>;

struct Typed<V, F> {
    f: Arc<F>,
    view_fn: Option<ViewFn<V>>,
}

impl<V, F> ErasedCheck for Typed<V, F>
where
    V: prost::Message + prost::Name + Default + Send + Sync + 'static,
    F: Fn(&V) -> Verdict + Send + Sync + 'static,
{
    fn view_name(&self) -> String {
        V::full_name()
    }

    fn evaluate<'a>(
        &'a self,
        dal: &'a Dal,
        subject: &'a str,
        as_of_us: Micros,
    ) -> BoxFuture<'a, Result<Evaluation>> {
        Box::pin(async move {
            let Some(custom) = &self.view_fn else {
                // The DAL's view, encoded, run as a shared one is: its bytes are what a
                // failure's digest hashes.
                let def = dal.views().get(&V::full_name())?;
                return match dal.view_encoded(&def, subject, as_of_us).await? {
                    Some(viewed) => self.evaluate_on(dal, &viewed).await,
                    None => Ok(Evaluation::NoSubject),
                };
            };
            let Some(Viewed { view, evidence, .. }) = custom(dal, subject, as_of_us).await? else {
                return Ok(Evaluation::NoSubject);
            };
            self.run(dal, view, &evidence, None).await
        })
    }

    fn shares_view(&self) -> bool {
        self.view_fn.is_none()
    }

    fn evaluate_on<'a>(
        &'a self,
        dal: &'a Dal,
        viewed: &'a Viewed<overseer_dal::Bytes>,
    ) -> BoxFuture<'a, Result<Evaluation>> {
        Box::pin(async move {
            let view = viewed.decode::<V>()?;
            self.run(dal, view, &viewed.evidence, Some(&viewed.view))
                .await
        })
    }
}

/// What [`within`] keeps for the run it times: the pool its check functions go to and the
/// time they waited in its queue (the task's own: no lock).
#[derive(Default)]
struct RunCtx {
    pool: Option<CheckPool>,
    /// Queue waits of the run's finished jobs.
    waited: Duration,
    /// The job in the queue or running now.
    job: Option<Arc<crate::pool::JobState>>,
}

impl RunCtx {
    fn waited(&self) -> Duration {
        self.waited + self.job.as_ref().map_or(Duration::ZERO, |j| j.queue_wait())
    }
}

tokio::task_local! {
    static RUN: std::cell::RefCell<RunCtx>;
}

/// Runs `fut` (a run: its view build and its check function, which goes to `pool`) within
/// `timeout` from `start`, not counting the time the function waits in the pool's queue:
/// the budget is the check's own work. [`Error::TimedOut`] when it runs out.
pub async fn within<T>(
    pool: &CheckPool,
    start: tokio::time::Instant,
    timeout: Duration,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    let waited = || RUN.with(|r| r.borrow().waited());
    // A timeout too long to add (`Duration::MAX`) is no timeout.
    let far = || start + Duration::from_secs(100 * 365 * 86_400);
    let due = |waited: Duration| {
        timeout
            .checked_add(waited)
            .and_then(|d| start.checked_add(d))
            .unwrap_or_else(far)
    };
    let ctx = RunCtx {
        pool: Some(pool.clone()),
        ..RunCtx::default()
    };
    RUN.scope(std::cell::RefCell::new(ctx), async {
        tokio::pin!(fut);
        loop {
            let deadline = due(waited());
            tokio::select! {
                out = &mut fut => return out,
                _ = tokio::time::sleep_until(deadline) => {
                    if tokio::time::Instant::now() >= due(waited()) {
                        return Err(Error::TimedOut(timeout));
                    }
                }
            }
        }
    })
    .await
}

/// Runs a check function off the async workers: on the pool of the run [`within`] times
/// (its queue wait counted out of the run's budget), else on a blocking thread of its own
/// (a check evaluated outside a runner or replay; such calls are not bounded by a pool).
/// `Err`: the function panicked, with its message.
async fn run_function<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> std::result::Result<T, String> {
    let pool = RUN.try_with(|r| r.borrow().pool.clone()).ok().flatten();
    let Some(pool) = pool else {
        return tokio::task::spawn_blocking(f)
            .await
            .map_err(join_error_text);
    };
    let submitted = pool.submit(f);
    RUN.with(|r| r.borrow_mut().job = Some(submitted.job().clone()));
    let out = submitted.await;
    RUN.with(|r| {
        let mut r = r.borrow_mut();
        if let Some(job) = r.job.take() {
            r.waited += job.queue_wait();
        }
    });
    out.map_err(panic_text)
}

impl<V, F> Typed<V, F>
where
    V: prost::Message + prost::Name + Default + Send + Sync + 'static,
    F: Fn(&V) -> Verdict + Send + Sync + 'static,
{
    /// Runs the function on the view. It is synchronous and user-written: it runs off the
    /// async workers ([`run_function`], [`crate::pool`]) so a slow one cannot stall the
    /// runtime, and so a panic is an error, not a crash.
    /// `encoded`: the view's bytes as the DAL built them, when at hand (else the view is
    /// encoded again for a failure's digest).
    async fn run(
        &self,
        dal: &Dal,
        view: V,
        evidence: &[overseer_dal::builder::UpdateRef],
        encoded: Option<&[u8]>,
    ) -> Result<Evaluation> {
        let f = self.f.clone();
        let (verdict, view) = run_function(move || (f(&view), view))
            .await
            .map_err(Error::Panicked)?;
        // Named only for a failure: that is what incidents and reports show, while a pass
        // is not kept anywhere, and a wallet's view names thousands of records.
        let (evidence, view_digest) = match verdict {
            Verdict::Pass => (Vec::new(), None),
            Verdict::Fail { .. } => {
                let digest = match encoded {
                    Some(bytes) => dal.view_digest(&V::full_name(), bytes),
                    None => dal.view_digest(&V::full_name(), &view.encode_to_vec()),
                };
                (evidence.iter().map(ToString::to_string).collect(), digest)
            }
        };
        Ok(Evaluation::Ran {
            verdict,
            evidence,
            view_digest,
        })
    }
}

/// A failed task's message: its panic's, else why it did not finish.
pub(crate) fn join_error_text(e: tokio::task::JoinError) -> String {
    if e.is_panic() {
        panic_text(e.into_panic())
    } else {
        e.to_string()
    }
}

/// A panic's message (`&str` or `String` payloads).
fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic payload".into())
}

/// One registered check and its settings.
pub struct CheckSpec {
    pub name: String,
    pub check: Arc<dyn ErasedCheck>,
    pub strategy: Strategy,
    /// How long other systems may take to reflect a trigger: the check evaluates as of the
    /// trigger's commit time plus this.
    pub grace: Duration,
    /// Whether the code set [`CheckSpec::grace`]; otherwise `[prs] grace_ms` applies.
    grace_in_code: bool,
    /// Whether the code set [`CheckSpec::strategy`]; otherwise a freshness-aware check's
    /// max delay is `[prs] max_delay_ms`.
    strategy_in_code: bool,
    /// Escalation policy name (see the escalation config); `None`: the default policy.
    pub escalation: Option<String>,
    /// Custom selection; `None`: derived from the view.
    pub select: Option<SelectFn>,
    /// The (model, reference) pairs the custom selection reads from notifications, so
    /// start-up validation can check the models declare them ([`CheckSpec::reads_refs`]).
    pub reads: Vec<(String, String)>,
    /// Longest a run may take (view + function, not counting a wait in the check pool's
    /// queue: [`within`]) before it is an error verdict.
    pub timeout: Duration,
    /// Registered but not run live (replay can still run it: a shadow check).
    pub enabled: bool,
}

impl std::fmt::Debug for CheckSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckSpec")
            .field("name", &self.name)
            .field("view", &self.check.view_name())
            .field("strategy", &self.strategy)
            .field("grace", &self.grace)
            .field("escalation", &self.escalation)
            .field("custom_select", &self.select.is_some())
            .field("reads", &self.reads)
            .field("timeout", &self.timeout)
            .field("enabled", &self.enabled)
            .finish()
    }
}

/// Default timeout of one run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

impl CheckSpec {
    /// Whether the grace was set in code ([`CheckSpec::grace`]).
    pub fn grace_in_code(&self) -> bool {
        self.grace_in_code
    }

    /// Whether the code set [`CheckSpec::strategy`] (its max delay is then kept over
    /// `[prs] max_delay_ms`).
    pub fn strategy_in_code(&self) -> bool {
        self.strategy_in_code
    }

    /// The check's strategy. Without it, freshness-aware with `[prs] max_delay_ms`;
    /// `[prs.checks.NAME]` overrides both.
    pub fn strategy(&mut self, s: Strategy) -> &mut Self {
        self.strategy = s;
        self.strategy_in_code = true;
        self
    }

    /// The check's grace. Without it, `[prs] grace_ms` applies; `[prs.checks.NAME]
    /// grace_ms` overrides both.
    pub fn grace(&mut self, d: Duration) -> &mut Self {
        self.grace = d;
        self.grace_in_code = true;
        self
    }

    pub fn escalate(&mut self, policy: impl Into<String>) -> &mut Self {
        self.escalation = Some(policy.into());
        self
    }

    pub fn timeout(&mut self, d: Duration) -> &mut Self {
        self.timeout = d;
        self
    }

    /// Custom selection: which subjects a notification triggers this check for (replaces
    /// the selection derived from the view; return nothing to ignore a notification).
    pub fn select(
        &mut self,
        f: impl Fn(&UpdateNotification) -> Vec<String> + Send + Sync + 'static,
    ) -> &mut Self {
        self.select = Some(Arc::new(f));
        self
    }

    /// Declares the references (`(model, reference name)`) a custom selection reads from
    /// notifications (e.g. `("ledger.entries", "account_id")`), so that start-up validation
    /// ([`crate::validate::validate`]) fails if a model does not declare one, instead of the
    /// selection silently finding nothing. Adds to earlier declarations.
    pub fn reads_refs(&mut self, refs: &[(&str, &str)]) -> &mut Self {
        self.reads
            .extend(refs.iter().map(|(m, r)| ((*m).to_owned(), (*r).to_owned())));
        self
    }

    /// Custom selection that reads the references `refs` ([`CheckSpec::select`] plus
    /// [`CheckSpec::reads_refs`]).
    pub fn select_reading(
        &mut self,
        refs: &[(&str, &str)],
        f: impl Fn(&UpdateNotification) -> Vec<String> + Send + Sync + 'static,
    ) -> &mut Self {
        self.select(f).reads_refs(refs)
    }

    /// Registered but not run live: replay can run it to show what it would have raised.
    pub fn shadow(&mut self) -> &mut Self {
        self.enabled = false;
        self
    }
}

/// Every check of a deployment, by name (names are unique).
#[derive(Default)]
pub struct Registry {
    checks: BTreeMap<String, CheckSpec>,
    /// Encoded `FileDescriptorSet`s of views registered in code ([`Registry::views`]).
    descriptor_sets: Vec<&'static [u8]>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `f` as check `name`, with defaults for everything; the returned spec
    /// changes them. Registering a name twice panics: it is a programming error, caught
    /// by the first test that builds the registry.
    pub fn check<V, F>(&mut self, name: &str, f: F) -> &mut CheckSpec
    where
        V: prost::Message + prost::Name + Default + Send + Sync + 'static,
        F: Fn(&V) -> Verdict + Send + Sync + 'static,
    {
        self.insert(
            name,
            Arc::new(Typed::<V, F> {
                f: Arc::new(f),
                view_fn: None,
            }),
        )
    }

    /// Registers `f` with a custom view function (the escape hatch from the DAL's views).
    pub fn check_with_view<V, F>(&mut self, name: &str, view: ViewFn<V>, f: F) -> &mut CheckSpec
    where
        V: prost::Message + prost::Name + Default + Send + Sync + 'static,
        F: Fn(&V) -> Verdict + Send + Sync + 'static,
    {
        self.insert(
            name,
            Arc::new(Typed::<V, F> {
                f: Arc::new(f),
                view_fn: Some(view),
            }),
        )
    }

    /// Registers the views of an encoded `FileDescriptorSet` (a team's own .proto files,
    /// which import `overseer/views.proto`, compiled with imports by its build script and
    /// embedded with `include_bytes!`): the runner adds them to its DAL's views
    /// ([`overseer_dal::Dal::with_descriptor_sets`]), so checks over them need no
    /// `[dal] view_descriptor_sets` entry. A set that does not decode fails the runner's
    /// start and validation.
    pub fn views(&mut self, descriptor_set: &'static [u8]) -> &mut Self {
        if !self.descriptor_sets.contains(&descriptor_set) {
            self.descriptor_sets.push(descriptor_set);
        }
        self
    }

    /// The descriptor sets registered with [`Registry::views`], in registration order.
    pub fn descriptor_sets(&self) -> &[&'static [u8]] {
        &self.descriptor_sets
    }

    /// `dal` with the views registered in code added ([`Registry::views`]).
    pub fn dal_with_views(&self, dal: Dal) -> Result<Dal> {
        Ok(dal.with_descriptor_sets(self.descriptor_sets.iter().copied())?)
    }

    fn insert(&mut self, name: &str, check: Arc<dyn ErasedCheck>) -> &mut CheckSpec {
        assert!(
            !self.checks.contains_key(name),
            "check {name:?} is registered twice"
        );
        self.checks
            .entry(name.to_owned())
            .or_insert_with(|| CheckSpec {
                name: name.to_owned(),
                check,
                strategy: Strategy::default(),
                grace: Duration::ZERO,
                grace_in_code: false,
                strategy_in_code: false,
                escalation: None,
                select: None,
                reads: Vec::new(),
                timeout: DEFAULT_TIMEOUT,
                enabled: true,
            })
    }

    pub fn get(&self, name: &str) -> Result<&CheckSpec> {
        self.checks.get(name).ok_or_else(|| Error::UnknownCheck {
            name: name.to_owned(),
            known: self.checks.keys().cloned().collect(),
        })
    }

    /// A check's settings, to change them after registration (configuration overrides).
    pub fn get_mut(&mut self, name: &str) -> Option<&mut CheckSpec> {
        self.checks.get_mut(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &CheckSpec> {
        self.checks.values()
    }

    pub fn len(&self) -> usize {
        self.checks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.checks.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run that waits in the pool's queue longer than its timeout still runs: the budget
    /// is its own work. A run whose own work takes longer times out.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_in_the_queue_is_not_the_runs_time() {
        let pool = CheckPool::new(1);
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let busy = pool.submit(move || {
            let _ = hold.recv();
        });
        // Generous: once released, the queued run must get a thread back within it on a
        // loaded machine; the wait in the queue is longer still.
        let budget = Duration::from_secs(1);
        let p = pool.clone();
        let queued = tokio::spawn(async move {
            within(&p, tokio::time::Instant::now(), budget, async {
                run_function(|| 5).await.map_err(Error::Panicked)
            })
            .await
        });
        tokio::time::sleep(budget + budget / 2).await;
        assert!(!queued.is_finished(), "still in the queue");
        release.send(()).unwrap();
        busy.await.unwrap();
        assert_eq!(queued.await.unwrap().unwrap(), 5);

        // Its own work past the budget times out (it can only be later, never sooner).
        let timeout = Duration::from_millis(50);

        let slow = within(&pool, tokio::time::Instant::now(), timeout, async {
            run_function(move || std::thread::sleep(timeout * 4))
                .await
                .map_err(Error::Panicked)
        });
        assert!(matches!(slow.await, Err(Error::TimedOut(t)) if t == timeout));
        // (A budget for the panic hook: printing a backtrace can take a while.)
        let panicked = within(&pool, tokio::time::Instant::now(), timeout * 200, async {
            run_function(|| -> u8 { panic!("a check's bug") })
                .await
                .map_err(Error::Panicked)
        });
        let panicked = panicked.await;
        assert!(
            matches!(&panicked, Err(Error::Panicked(m)) if m == "a check's bug"),
            "{panicked:?}"
        );
    }
}
