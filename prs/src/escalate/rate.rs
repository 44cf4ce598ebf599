//! A rate limit per routing key, with a coalescing queue: alert storms are slowed down,
//! never dropped (DESIGN invariant 5).
//!
//! ```text
//!  send(n) ──> queue: one slot per dedup_key, in order of first enqueue ──> worker ──> inner
//!     ^          (a later notice for a queued key replaces it in place)       │ one token
//!     └──────── result of n, or of the notice that replaced n ────────────────┘ per send
//! ```
//!
//! - One [`RateLimited`] per routing key: PagerDuty limits each integration key (about
//!   120 events a minute), so every policy sending to one key shares one handle (it is
//!   `Clone`).
//! - The bucket is a GCRA (an exact token bucket in integer time): `burst` tokens, one
//!   more every `60 s / per_minute`. Any window of length `w` carries at most
//!   `burst + w / interval` sends, so [`RateLimit::PAGERDUTY`] (20 + 100/min) never
//!   exceeds 120 in any minute.
//! - Memory is bounded by the number of distinct dedup_keys waiting, i.e. by the
//!   (check, subject) pairs that changed state, not by the number of notices: a subject
//!   flapping 1000 times while the queue waits costs one slot and one send, and the send
//!   carries its latest state (trigger or resolve), which is the state PagerDuty should
//!   end in. Nothing else is ever dropped.
//! - The worker sends one notice at a time, so notices for one dedup_key reach the
//!   target in the order they were sent; wrap the target in [`super::Retrying`] inside
//!   the limiter, so a 429 backs off the whole key.
//! - Cancelling a `send` does not withdraw its notice: it is still delivered. When every
//!   handle is dropped the worker drains the queue, then stops.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use super::events::{NoticeCoalesced, QueueDepth};
use super::{Notice, Notifier, error};
use crate::{Error, Result};

/// A token bucket: `burst` sends at once, then `per_minute` a minute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained rate: tokens added per minute.
    pub per_minute: u32,
    /// Bucket size: sends allowed at once after a quiet spell.
    pub burst: u32,
}

impl RateLimit {
    /// PagerDuty's per-routing-key limit of about 120 events a minute: at most 120 in any
    /// 60 s window (20 at once, then 100 a minute).
    pub const PAGERDUTY: RateLimit = RateLimit {
        per_minute: 100,
        burst: 20,
    };

    /// At most `n` sends in any 60 s window (`n` ≥ 2): a sixth of them (at least one) at
    /// once, the rest spread over the minute. `at_most_per_minute(120)` is
    /// [`RateLimit::PAGERDUTY`].
    pub fn at_most_per_minute(n: u32) -> RateLimit {
        let burst = (n / 6).max(1);
        RateLimit {
            per_minute: n.saturating_sub(burst).max(1),
            burst,
        }
    }

    /// The time between two tokens (rounded up to the nanosecond, so never faster than
    /// `per_minute`).
    pub fn interval(&self) -> Duration {
        let per_minute = u64::from(self.per_minute.max(1));
        Duration::from_nanos(60_000_000_000u64.div_ceil(per_minute))
    }

    /// The most sends any window of length `window` (closed at both ends) can carry.
    pub fn max_in(&self, window: Duration) -> u64 {
        let per_interval = window.as_nanos() / self.interval().as_nanos();
        u64::from(self.burst) + u64::try_from(per_interval).unwrap_or(u64::MAX)
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit::PAGERDUTY
    }
}

/// The generic cell rate algorithm: the bucket as one "theoretical arrival time".
struct Gcra {
    interval: Duration,
    /// How far ahead of schedule a send may be: `(burst - 1) × interval`.
    tolerance: Duration,
    /// When the bucket would be full again were sends exactly on schedule.
    tat: Instant,
}

impl Gcra {
    fn new(limit: RateLimit, now: Instant) -> Self {
        let interval = limit.interval();
        Gcra {
            interval,
            tolerance: interval * (limit.burst.max(1) - 1),
            tat: now,
        }
    }

    /// The earliest instant a token is available.
    fn earliest(&self) -> Option<Instant> {
        self.tat.checked_sub(self.tolerance)
    }

    /// Takes a token at `now` (which must be at or after [`Self::earliest`]).
    fn take(&mut self, now: Instant) {
        self.tat = self.tat.max(now) + self.interval;
    }
}

/// Sends to a notifier at most as fast as a [`RateLimit`] allows, queueing the rest,
/// coalesced by dedup_key. See the module documentation.
#[derive(Clone)]
pub struct RateLimited {
    shared: Arc<Shared>,
    /// Dropped with the last handle: tells the worker to drain and stop.
    _handle: Arc<HandleGuard>,
    /// The inner notifier's description.
    inner: String,
    limit: RateLimit,
}

/// What the handles and the worker share.
struct Shared {
    /// The inner notifier's policy name.
    policy: String,
    queue: Mutex<Queue>,
    /// Wakes the worker when a notice is queued or the last handle is dropped.
    wake: Notify,
    /// Set when the last handle is dropped.
    closed: AtomicBool,
}

#[derive(Default)]
struct Queue {
    /// Queued dedup_keys, in order of first enqueue.
    order: VecDeque<String>,
    slots: HashMap<String, Slot>,
}

struct Slot {
    /// The latest notice for this dedup_key.
    notice: Notice,
    /// Everyone waiting on this slot; the last one sent the notice that will go out.
    waiters: Vec<oneshot::Sender<Result<()>>>,
}

struct HandleGuard(Arc<Shared>);

impl Drop for HandleGuard {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::SeqCst);
        self.0.wake.notify_one();
    }
}

impl Shared {
    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl RateLimited {
    /// Starts the worker (on the current Tokio runtime) that sends to `inner` within
    /// `limit`. Fails if `per_minute` or `burst` is 0.
    pub fn spawn<N: Notifier + 'static>(inner: N, limit: RateLimit) -> Result<Self> {
        if limit.per_minute == 0 || limit.burst == 0 {
            return Err(Error::Config(format!(
                "escalation {}: rate limit needs per_minute >= 1 and burst >= 1, got {limit:?}",
                inner.policy()
            )));
        }
        let shared = Arc::new(Shared {
            policy: inner.policy().to_owned(),
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
        });
        let describe = inner.describe();
        tokio::spawn(run(shared.clone(), inner, limit));
        Ok(RateLimited {
            _handle: Arc::new(HandleGuard(shared.clone())),
            shared,
            inner: describe,
            limit,
        })
    }

    /// Notices waiting for a token (one per dedup_key).
    pub fn queued(&self) -> usize {
        self.shared.queue().order.len()
    }

    /// The limit in force.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }
}

impl std::fmt::Debug for RateLimited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimited")
            .field("inner", &self.inner)
            .field("limit", &self.limit)
            .field("queued", &self.queued())
            .finish()
    }
}

#[async_trait::async_trait]
impl Notifier for RateLimited {
    /// Queues the notice and waits for the delivery of it, or of the later notice for the
    /// same dedup_key that replaced it while queued.
    async fn send(&self, notice: &Notice) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        let (coalesced, depth) = {
            let mut q = self.shared.queue();
            let coalesced = match q.slots.get_mut(&notice.dedup_key) {
                Some(slot) => {
                    slot.notice = notice.clone();
                    slot.waiters.push(tx);
                    true
                }
                None => {
                    q.order.push_back(notice.dedup_key.clone());
                    q.slots.insert(
                        notice.dedup_key.clone(),
                        Slot {
                            notice: notice.clone(),
                            waiters: vec![tx],
                        },
                    );
                    false
                }
            };
            (coalesced, q.order.len())
        };
        if coalesced {
            NoticeCoalesced {
                policy: &self.shared.policy,
                dedup_key: &notice.dedup_key,
            }
            .emit();
        }
        QueueDepth {
            policy: &self.shared.policy,
            depth,
        }
        .emit();
        self.shared.wake.notify_one();
        rx.await.unwrap_or_else(|_| {
            Err(error(
                &self.shared.policy,
                "the rate limiter stopped before delivering the notice",
                true,
            ))
        })
    }

    fn describe(&self) -> String {
        format!(
            "{} (rate limited: burst {}, {}/min)",
            self.inner, self.limit.burst, self.limit.per_minute
        )
    }

    fn policy(&self) -> &str {
        &self.shared.policy
    }
}

/// The worker: waits for work, then for a token, then sends the oldest queued slot.
async fn run<N: Notifier>(shared: Arc<Shared>, inner: N, limit: RateLimit) {
    let mut bucket = Gcra::new(limit, Instant::now());
    loop {
        while shared.queue().order.is_empty() {
            if shared.closed.load(Ordering::SeqCst) {
                return;
            }
            shared.wake.notified().await;
        }
        // Wait for the token with the notice still queued: notices arriving meanwhile
        // for the same dedup_key replace it instead of costing another send.
        if let Some(at) = bucket.earliest() {
            tokio::time::sleep_until(at).await;
        }
        bucket.take(Instant::now());
        let (slot, depth) = {
            let mut q = shared.queue();
            let Some(key) = q.order.pop_front() else {
                continue;
            };
            let slot = q.slots.remove(&key).expect("every queued key has a slot");
            (slot, q.order.len())
        };
        QueueDepth {
            policy: &shared.policy,
            depth,
        }
        .emit();
        let result = AssertUnwindSafe(inner.send(&slot.notice))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| Err(error(&shared.policy, "the notifier panicked", false)));
        reply(&shared.policy, slot.waiters, result);
    }
}

/// Gives `result` to the waiter whose notice was sent (the last) and a copy to the others.
fn reply(policy: &str, mut waiters: Vec<oneshot::Sender<Result<()>>>, result: Result<()>) {
    let Some(last) = waiters.pop() else {
        return;
    };
    for waiter in waiters {
        let copy = match &result {
            Ok(()) => Ok(()),
            Err(e) => Err(copy_error(policy, e)),
        };
        // A waiter that went away (cancelled send) needs no answer.
        let _ = waiter.send(copy);
    }
    let _ = last.send(result);
}

/// An escalation error equal in meaning to `e` (errors are not `Clone`).
fn copy_error(policy: &str, e: &Error) -> Error {
    match e {
        Error::Escalation {
            policy,
            message,
            transient,
        } => error(policy, message.clone(), *transient),
        Error::Throttled { policy, message } => Error::Throttled {
            policy: policy.clone(),
            message: message.clone(),
        },
        other => error(policy, other.to_string(), other.is_transient()),
    }
}
