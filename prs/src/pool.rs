//! The threads check functions run on.
//!
//! A check function is synchronous, user-written code: it runs off the async workers, so a
//! slow one cannot stall the runtime and a panic is an error verdict, not a crash. Handing
//! each function to tokio's blocking pool on its own cost a thread wake-up and a park per
//! run; on the shipped checks (a few microseconds of work each), doing without it took ~40%
//! off a replay's time (BENCHMARKS.md, "Issue 12, sixth step"). A [`CheckPool`] queues the
//! functions instead, and a few *drainers* (blocking tasks, one per core) take them from
//! the queue one after another, ending when it has stayed empty for a moment:
//!
//! ```text
//!  run ── submit(job) ──> queue ──> drainer 1 ─┐ (each: pop, run, pop, run, … until
//!                                   drainer 2 ─┘  empty; one is started by a submit
//!                                                 while fewer than the target run)
//!      <── oneshot (verdict or panic) ──────────┘
//! ```
//!
//! Under load the queue is rarely empty, so a drainer runs job after job with no wake-up in
//! between. Drainers are ordinary blocking tasks: tokio's paused test clock does not
//! advance on its own while one runs, as with a blocking task per function (and for the
//! few milliseconds a drainer lingers after its last job).
//!
//! Each pool (one per runner, one per replay) has its own drainers: a process running
//! several runners runs as many functions at once. A drainer needs a thread of tokio's
//! blocking pool: if hung functions have taken all of them (512 by default), queued runs
//! wait for one.
//!
//! A run's wait in the queue is not its time ([`crate::check::within`] takes it out of the
//! budget). A run that times out while its function runs *abandons* the job: the function
//! cannot be stopped, so its drainer counts as stuck and another is started for the rest of
//! the queue. The stuck one ends when the function returns (if the others are enough by
//! then). So a hung function keeps one thread, never the pool's capacity. A run dropped
//! while still queued (its timeout, shutdown) cancels the job: it is not run.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

/// Drainers per pool: one per core, at least two.
pub fn drainer_count() -> usize {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .max(2)
}

/// Queues check functions for a few blocking drainers (see the module docs). Cloning
/// gives another handle on the same pool. Drainers are spawned on the runtime the job is
/// submitted from: use one pool per runtime (each runner and replay has its own).
#[derive(Clone)]
pub struct CheckPool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CheckPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.inner.lock();
        f.debug_struct("CheckPool")
            .field("queued", &st.jobs.len())
            .field("drainers", &st.drainers)
            .field("stuck", &st.stuck)
            .finish()
    }
}

impl Default for CheckPool {
    fn default() -> Self {
        Self::new(drainer_count())
    }
}

struct Inner {
    state: Mutex<State>,
    /// Signalled when a job is queued while a drainer sleeps.
    queued: Condvar,
    /// Drainers wanted (not counting stuck ones).
    target: usize,
}

struct State {
    jobs: VecDeque<Job>,
    /// Drainers running, stuck ones included.
    drainers: usize,
    /// Drainers whose current function's run was abandoned.
    stuck: usize,
    /// Drainers asleep on [`Inner::queued`].
    sleeping: usize,
}

/// A queued function: runs it (unless cancelled) and says whether its run was abandoned.
type Job = Box<dyn FnOnce() -> bool + Send>;

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A job's panic is caught inside it; nothing panics while the lock is held.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether another drainer is needed (counted as started if so).
    fn wants_drainer(&self, st: &mut State) -> bool {
        if !st.jobs.is_empty() && st.drainers - st.stuck < self.target {
            st.drainers += 1;
            true
        } else {
            false
        }
    }

    /// Runs jobs until the queue stays empty (or this drainer is surplus after a stuck
    /// job), then takes itself off the count in the same critical section that decided
    /// to end: a submit sees either this drainer taking its job or one drainer fewer.
    fn drain(&self) {
        loop {
            let Some(job) = self.next_job() else { return };
            if job() {
                // Its run was abandoned: this drainer was counted stuck and replaced.
                let mut st = self.lock();
                st.stuck -= 1;
                if st.drainers - st.stuck > self.target {
                    st.drainers -= 1;
                    return;
                }
            }
        }
    }

    /// The next job; `None` when none came for a while (the drainer ends, already off the
    /// count). An empty queue
    /// is checked again a few times, yielding the core in between, then the drainer sleeps
    /// up to [`LINGER`]: under load the next job comes within microseconds, and a drainer
    /// that is still there takes it with no thread wake-up.
    fn next_job(&self) -> Option<Job> {
        for _ in 0..SPINS {
            if let Some(job) = self.lock().jobs.pop_front() {
                return Some(job);
            }
            std::thread::yield_now();
        }
        let mut st = self.lock();
        // The real clock: a paused test clock would not move while this waits.
        let until = std::time::Instant::now() + LINGER;
        loop {
            if let Some(job) = st.jobs.pop_front() {
                return Some(job);
            }
            let now = std::time::Instant::now();
            if now >= until {
                st.drainers -= 1;
                return None;
            }
            st.sleeping += 1;
            st = self
                .queued
                .wait_timeout(st, until - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            st.sleeping -= 1;
        }
    }
}

/// A counted drainer. [`Inner::drain`] takes it off the count when it ends; if it never
/// ends that way (a panic outside a job, or never run because the runtime shut down
/// first), dropping this does.
struct Drainer {
    inner: Arc<Inner>,
    counted: bool,
}

impl Drainer {
    fn run(mut self) {
        self.inner.drain();
        self.counted = false;
    }
}

impl Drop for Drainer {
    fn drop(&mut self) {
        if self.counted {
            self.inner.lock().drainers -= 1;
        }
    }
}

/// Times a drainer looks again at an empty queue (yielding in between) before sleeping.
const SPINS: usize = 16;
/// How long a drainer sleeps for a job before it ends.
const LINGER: Duration = Duration::from_millis(5);

impl CheckPool {
    /// A pool of `drainers` (at least one).
    pub fn new(drainers: usize) -> Self {
        CheckPool {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    jobs: VecDeque::new(),
                    drainers: 0,
                    stuck: 0,
                    sleeping: 0,
                }),
                queued: Condvar::new(),
                target: drainers.max(1),
            }),
        }
    }

    /// Starts a drainer already counted ([`Inner::wants_drainer`]).
    fn spawn_drainer(&self) {
        let drainer = Drainer {
            inner: self.inner.clone(),
            counted: true,
        };
        tokio::task::spawn_blocking(move || drainer.run());
    }

    /// Queues `f`; the returned [`Submitted`] gives its result (or its panic), and how
    /// long it waited in the queue. Dropping it before the result cancels a queued job and
    /// abandons a running one. Call inside a Tokio runtime.
    pub fn submit<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Submitted<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = Arc::new(JobState {
            phase: AtomicU8::new(QUEUED),
            queued_at: Instant::now(),
            started_at: OnceLock::new(),
        });
        let state = job.clone();
        let run: Job = Box::new(move || {
            if state
                .phase
                .compare_exchange(QUEUED, RUNNING, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                return false; // cancelled while queued
            }
            let _ = state.started_at.set(Instant::now());
            let out = std::panic::catch_unwind(AssertUnwindSafe(f));
            let abandoned = state
                .phase
                .compare_exchange(RUNNING, DONE, Ordering::AcqRel, Ordering::Acquire)
                .is_err();
            let _ = tx.send(out);
            abandoned
        });
        let (spawn, wake) = {
            let mut st = self.inner.lock();
            st.jobs.push_back(run);
            (self.inner.wants_drainer(&mut st), st.sleeping > 0)
        };
        if wake {
            self.inner.queued.notify_one();
        }
        if spawn {
            self.spawn_drainer();
        }
        Submitted {
            rx,
            job,
            pool: self.clone(),
        }
    }
}

const QUEUED: u8 = 0;
const RUNNING: u8 = 1;
const DONE: u8 = 2;
const GONE: u8 = 3;

/// Where a submitted job is.
#[derive(Debug)]
pub struct JobState {
    phase: AtomicU8,
    queued_at: Instant,
    started_at: OnceLock<Instant>,
}

impl JobState {
    /// Time in the queue: until it started, or until now if it has not (on tokio's clock,
    /// as [`crate::check::within`]'s budget: drainers run inside the runtime).
    pub fn queue_wait(&self) -> Duration {
        self.started_at
            .get()
            .copied()
            .unwrap_or_else(Instant::now)
            .saturating_duration_since(self.queued_at)
    }
}

/// A submitted function's result (a future), see [`CheckPool::submit`].
pub struct Submitted<T> {
    rx: tokio::sync::oneshot::Receiver<std::thread::Result<T>>,
    job: Arc<JobState>,
    pool: CheckPool,
}

impl<T> Submitted<T> {
    /// The job's progress (its wait in the queue).
    pub fn job(&self) -> &Arc<JobState> {
        &self.job
    }
}

impl<T> Future for Submitted<T> {
    type Output = std::thread::Result<T>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.rx).poll(cx).map(|r| {
            // The sender is dropped unsent only with a job that never ran: cancelled (this
            // was dropped first) or dropped with its queue.
            r.unwrap_or_else(|_| Err(Box::new("the check pool dropped the job")))
        })
    }
}

impl<T> Drop for Submitted<T> {
    fn drop(&mut self) {
        let phase = &self.job.phase;
        if phase.load(Ordering::Acquire) == DONE {
            return;
        }
        if phase
            .compare_exchange(QUEUED, GONE, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            return; // cancelled: its drainer skips it
        }
        // Under the pool's lock, so the drainer (which takes it once the function
        // returns and finds the job gone) counts itself unstuck only after this counted it.
        let runtime = tokio::runtime::Handle::try_current().is_ok();
        let spawn = {
            let mut st = self.pool.inner.lock();
            if phase
                .compare_exchange(RUNNING, GONE, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                return; // done
            }
            // Abandoned while running: its drainer is stuck in it; start another for the
            // rest of the queue (with no runtime to start it on, the next submit does).
            st.stuck += 1;
            runtime && self.pool.inner.wants_drainer(&mut st)
        };
        if spawn {
            self.pool.spawn_drainer();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drainers running, stuck ones included.
    fn drainers(pool: &CheckPool) -> usize {
        pool.inner.lock().drainers
    }

    /// Blocks until released: a hung check function.
    fn gate() -> (std::sync::mpsc::Sender<()>, impl FnOnce() + Send + 'static) {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        (tx, move || {
            let _ = rx.recv();
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_in_order_and_catches_panics() {
        let pool = CheckPool::new(2);
        let outs: Vec<_> = (0..100).map(|i| pool.submit(move || i * 2)).collect();
        for (i, out) in outs.into_iter().enumerate() {
            assert_eq!(out.await.unwrap(), i * 2);
        }
        let panicked = pool.submit(|| -> u32 { panic!("boom") }).await;
        let msg = panicked.unwrap_err();
        assert_eq!(msg.downcast_ref::<&str>(), Some(&"boom"));
        assert_eq!(
            pool.submit(|| 7).await.unwrap(),
            7,
            "a panic loses no drainer"
        );
    }

    /// Two hung functions, both abandoned: the pool starts drainers for the rest, which
    /// still run; when the hung ones return, their drainers end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_abandoned_function_keeps_its_thread_not_the_pools_capacity() {
        let pool = CheckPool::new(2);
        let (release_a, a) = gate();
        let (release_b, b) = gate();
        let hung = [pool.submit(a), pool.submit(b)];
        while hung.iter().any(|h| h.job().started_at.get().is_none()) {
            tokio::task::yield_now().await;
        }
        let queued = pool.submit(|| 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            queued.job().started_at.get().is_none(),
            "both drainers are busy"
        );
        drop(hung); // both runs time out
        assert_eq!(queued.await.unwrap(), 1, "replacements run the queue");
        assert!(drainers(&pool) >= 2, "the stuck drainers are still there");
        release_a.send(()).unwrap();
        release_b.send(()).unwrap();
        // Every drainer ends once its function returns and the queue is empty.
        while drainers(&pool) > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(pool.submit(|| 2).await.unwrap(), 2);
    }

    /// Jobs submitted around the moment idle drainers end are still run (a drainer that
    /// decided to end is off the count before a submit can see it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_submitted_as_drainers_end_is_run() {
        let pool = CheckPool::new(2);
        for i in 0..60u64 {
            let linger = LINGER + Duration::from_micros(i % 7 * 250) - Duration::from_millis(1);
            tokio::time::sleep(linger).await;
            let out = tokio::time::timeout(Duration::from_secs(5), pool.submit(move || i)).await;
            assert_eq!(out.expect("a drainer took it").unwrap(), i);
        }
    }

    /// A job dropped while queued never runs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_job_does_not_run() {
        let pool = CheckPool::new(1);
        let (release, hold) = gate();
        let busy = pool.submit(hold);
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ran.clone();
        drop(pool.submit(move || flag.store(true, Ordering::SeqCst)));
        release.send(()).unwrap();
        busy.await.unwrap();
        assert_eq!(pool.submit(|| 3).await.unwrap(), 3);
        assert!(!ran.load(Ordering::SeqCst));
    }
}
