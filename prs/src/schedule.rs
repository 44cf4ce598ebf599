//! Scheduling: when each triggered (check, subject) runs, by its execution strategy.
//!
//! A trigger at source commit time `t` evaluates the check as of `t + grace` (DESIGN
//! invariant 3). The strategy decides when that evaluation may happen:
//! - [`Strategy::Immediate`]: at once;
//! - [`Strategy::FixedDelay`]`(d)`: `d` after the trigger was received;
//! - [`Strategy::FreshnessAware`] (the default): once every source the check's view reads
//!   has a watermark ≥ the evaluation time (the sources are complete up to it, so a missing
//!   row is missing, not late), but no later than `max_delay` after the trigger was
//!   received; a run forced by that bound is marked with the sources that were stale.
//!
//! **Stale is not final.** A freshness-aware run forced by `max_delay` is released marked
//! stale (its verdict is reported, not escalated) and **re-armed**: a run at the same
//! evaluation time waits, with no deadline and holding no notification, until every
//! source is complete up to it, and its verdict counts. A new trigger of that (check,
//! subject) turns the re-armed run into an ordinary one (with the trigger's deadline, at
//! the later evaluation time). Re-armed runs do not count toward [`Scheduler::len`] (the
//! runner's backpressure): a source down for an hour must not stop the others.
//!
//! Pending runs of one (check, subject) **coalesce**: a new trigger while one is pending
//! joins it. Immediate and fixed-delay runs take the later evaluation time (their due time
//! stays the first trigger's). A freshness-aware run keeps its evaluation time, and later
//! triggers gather into one follow-up run scheduled when it is released: moving a waiting
//! run's evaluation time forward would starve a subject that keeps changing (its run would
//! always wait for a watermark just out of reach).
//!
//! [`Scheduler`] is a synchronous state machine over explicit `Instant`s and watermarks,
//! easy to test exhaustively; the runner drives it with a timer task in the style of
//! mini-redis (a `BTreeSet` of deadlines and a `Notify`). Freshness waits are indexed per
//! check by evaluation time, so a watermark update costs O(runs released + checks), not a
//! scan of everything waiting.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use overseer_dal::update::Micros;

use crate::check::Strategy;

/// A pending run's identity: (check, subject).
pub type JobKey = (Arc<str>, String);

/// What the scheduler needs to know about a check.
#[derive(Clone, Debug)]
pub struct Plan {
    pub strategy: Strategy,
    pub grace: Duration,
    /// The sources whose freshness the check's view depends on (sorted, unique).
    pub sources: Arc<[String]>,
}

/// One notification's trigger of a (check, subject).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trigger {
    /// Source commit time of the triggering update.
    pub event_time_us: Micros,
    /// When ingestion received it (for time-to-detect).
    pub ingest_time_us: Micros,
    /// The runner's handle on the notification, released when the run completes.
    pub ack: Option<u64>,
}

/// A run released by the scheduler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ready {
    pub check: Arc<str>,
    pub subject: String,
    /// Evaluate the view as of this time.
    pub eval_us: Micros,
    /// Earliest commit time among the coalesced triggers (time-to-detect starts there).
    pub first_event_us: Micros,
    /// Sources not complete up to `eval_us` when the run was forced by the max delay;
    /// empty for a normal run.
    pub stale: Vec<String>,
    /// Acks of every coalesced trigger.
    pub acks: Vec<u64>,
    /// How many triggers coalesced into this run.
    pub triggers: u32,
}

#[derive(Debug)]
struct Pending {
    eval_us: Micros,
    first_event_us: Micros,
    /// The timer this run is in `timers` under (due time or freshness deadline).
    timer: Instant,
    acks: Vec<u64>,
    triggers: u32,
    /// Waiting on freshness (in `waiting[check]`).
    freshness: bool,
    /// A re-armed run ([`Scheduler::rearm`]): no deadline (not in `timers`), no acks.
    rearm: bool,
    /// Freshness runs only: triggers whose evaluation time is later than this run's. They
    /// run as a follow-up once this one is released, instead of moving this one's
    /// evaluation time (which would starve a subject that keeps changing: its run would
    /// always wait for a watermark just out of reach).
    later: Option<Later>,
}

/// The triggers a follow-up run collects.
#[derive(Debug)]
struct Later {
    eval_us: Micros,
    first_event_us: Micros,
    /// When the first of them was received: the follow-up's max delay counts from here.
    received: Instant,
    acks: Vec<u64>,
    triggers: u32,
}

/// The scheduler state machine. See the module docs.
#[derive(Debug, Default)]
pub struct Scheduler {
    plans: HashMap<Arc<str>, Plan>,
    pending: HashMap<JobKey, Pending>,
    /// Due times (immediate, fixed delay) and freshness deadlines.
    timers: BTreeSet<(Instant, JobKey)>,
    /// Freshness-aware runs per check, by evaluation time.
    waiting: HashMap<Arc<str>, BTreeSet<(Micros, String)>>,
    watermarks: HashMap<String, Micros>,
    /// Re-armed runs among `pending`.
    rearmed: usize,
}

impl Scheduler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers (or replaces) a check's plan; returns the interned check name to use in
    /// [`Scheduler::add`].
    pub fn plan(&mut self, check: &str, plan: Plan) -> Arc<str> {
        let name: Arc<str> = self
            .plans
            .get_key_value(check)
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| Arc::from(check));
        self.plans.insert(name.clone(), plan);
        name
    }

    /// The interned name of a planned check.
    pub fn name(&self, check: &str) -> Option<Arc<str>> {
        self.plans.get_key_value(check).map(|(k, _)| k.clone())
    }

    /// Runs pending (not yet released), re-armed ones aside.
    pub fn len(&self) -> usize {
        self.pending.len() - self.rearmed
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Re-armed runs waiting for their sources ([`Scheduler::rearm`]).
    pub fn rearmed(&self) -> usize {
        self.rearmed
    }

    /// Re-arms the stale evaluation of `check` (a freshness-aware check) for `subject` at
    /// `eval_us`: a run at that time once every source of the check is complete up to it,
    /// with no deadline. If a run of that (check, subject) is pending already, it is not
    /// re-armed apart: the pending run evaluates no earlier, or its follow-up is moved to
    /// at least `eval_us` (an ordinary follow-up, whose deadline counts from `now`: forced
    /// stale again, it is re-armed again). Returns whether a re-armed run was added. `now` is the time of the call (a follow-up's max delay counts from it).
    pub fn rearm(
        &mut self,
        check: &str,
        subject: &str,
        eval_us: Micros,
        first_event_us: Micros,
        now: Instant,
    ) -> bool {
        let Some((name, plan)) = self.plans.get_key_value(check) else {
            return false;
        };
        if !matches!(plan.strategy, Strategy::FreshnessAware { .. }) {
            return false;
        }
        let key: JobKey = (name.clone(), subject.to_owned());
        if let Some(p) = self.pending.get_mut(&key) {
            if p.eval_us < eval_us && p.later.as_ref().is_none_or(|l| l.eval_us < eval_us) {
                // Pending at an earlier time: the re-armed evaluation follows it.
                let l = p.later.get_or_insert(Later {
                    eval_us,
                    first_event_us,
                    received: now,
                    acks: Vec::new(),
                    triggers: 0,
                });
                l.eval_us = l.eval_us.max(eval_us);
            }
            return false;
        }
        self.waiting
            .entry(key.0.clone())
            .or_default()
            .insert((eval_us, key.1.clone()));
        self.pending.insert(
            key,
            Pending {
                eval_us,
                first_event_us,
                timer: now,
                acks: Vec::new(),
                triggers: 0,
                freshness: true,
                rearm: true,
                later: None,
            },
        );
        self.rearmed += 1;
        true
    }

    /// The watermark of a source (0 if never reported).
    pub fn watermark(&self, source: &str) -> Micros {
        self.watermarks.get(source).copied().unwrap_or(0)
    }

    /// Records source watermarks (monotone: a lower value than known is ignored).
    pub fn set_watermarks<'a>(&mut self, wms: impl IntoIterator<Item = (&'a str, Micros)>) {
        for (source, wm) in wms {
            match self.watermarks.get_mut(source) {
                Some(cur) => *cur = (*cur).max(wm),
                None => {
                    self.watermarks.insert(source.to_owned(), wm);
                }
            }
        }
    }

    /// Adds a trigger of `check` (a name returned by [`Scheduler::plan`]) for `subject`,
    /// received at `now`. Returns whether it coalesced into a pending run.
    pub fn add(&mut self, check: &Arc<str>, subject: &str, trig: Trigger, now: Instant) -> bool {
        let Some(plan) = self.plans.get(check) else {
            panic!("check {check:?} has no plan");
        };
        let eval_us = trig
            .event_time_us
            .saturating_add(plan.grace.as_micros().min(i64::MAX as u128) as i64);
        let key: JobKey = (check.clone(), subject.to_owned());
        if let Some(p) = self.pending.get_mut(&key) {
            if p.rearm {
                // A trigger for a re-armed run: an ordinary run now, with the trigger's
                // deadline, at the later of the two evaluation times.
                let max_delay = match plan.strategy {
                    Strategy::FreshnessAware { max_delay } => max_delay,
                    _ => Duration::ZERO,
                };
                p.rearm = false;
                self.rearmed -= 1;
                p.timer = now + max_delay;
                self.timers.insert((p.timer, key.clone()));
                if eval_us > p.eval_us {
                    let w = self.waiting.entry(check.clone()).or_default();
                    w.remove(&(p.eval_us, key.1.clone()));
                    w.insert((eval_us, key.1.clone()));
                    p.eval_us = eval_us;
                }
                p.first_event_us = p.first_event_us.min(trig.event_time_us);
                p.acks.extend(trig.ack);
                p.triggers += 1;
                return true;
            }
            if p.freshness && eval_us > p.eval_us {
                let l = p.later.get_or_insert(Later {
                    eval_us,
                    first_event_us: trig.event_time_us,
                    received: now,
                    acks: Vec::new(),
                    triggers: 0,
                });
                l.eval_us = l.eval_us.max(eval_us);
                l.first_event_us = l.first_event_us.min(trig.event_time_us);
                l.acks.extend(trig.ack);
                l.triggers += 1;
                return true;
            }
            p.eval_us = p.eval_us.max(eval_us);
            p.first_event_us = p.first_event_us.min(trig.event_time_us);
            p.acks.extend(trig.ack);
            p.triggers += 1;
            return true;
        }
        let (timer, freshness) = match plan.strategy {
            Strategy::Immediate => (now, false),
            Strategy::FixedDelay(d) => (now + d, false),
            Strategy::FreshnessAware { max_delay } => (now + max_delay, true),
        };
        if freshness {
            self.waiting
                .entry(check.clone())
                .or_default()
                .insert((eval_us, key.1.clone()));
        }
        self.timers.insert((timer, key.clone()));
        self.pending.insert(
            key,
            Pending {
                eval_us,
                first_event_us: trig.event_time_us,
                timer,
                acks: trig.ack.into_iter().collect(),
                triggers: 1,
                freshness,
                rearm: false,
                later: None,
            },
        );
        false
    }

    /// Schedules the follow-up run of released freshness run `key`.
    fn follow_up(&mut self, key: JobKey, l: Later) {
        let max_delay = match self.plans.get(&key.0).map(|p| p.strategy) {
            Some(Strategy::FreshnessAware { max_delay }) => max_delay,
            _ => Duration::ZERO,
        };
        let timer = l.received + max_delay;
        self.waiting
            .entry(key.0.clone())
            .or_default()
            .insert((l.eval_us, key.1.clone()));
        self.timers.insert((timer, key.clone()));
        self.pending.insert(
            key,
            Pending {
                eval_us: l.eval_us,
                first_event_us: l.first_event_us,
                timer,
                acks: l.acks,
                triggers: l.triggers,
                freshness: true,
                rearm: false,
                later: None,
            },
        );
    }

    /// The earliest timer (due time or deadline), if any: when to call
    /// [`Scheduler::take_ready`] next at the latest.
    pub fn next_timer(&self) -> Option<Instant> {
        self.timers.first().map(|(t, _)| *t)
    }

    /// Releases every run that may run at `now`: due timers (immediate and fixed-delay
    /// runs, and freshness runs past their deadline, marked stale), and freshness runs
    /// whose sources are complete up to their evaluation time.
    pub fn take_ready(&mut self, now: Instant) -> Vec<Ready> {
        let mut out = Vec::new();
        let mut rearm = Vec::new();
        loop {
            let mut follow = Vec::new();
            // Freshness first, so a run whose sources caught up exactly at its deadline is
            // a normal run, not a stale one.
            let checks: Vec<Arc<str>> = self.waiting.keys().cloned().collect();
            for check in checks {
                let threshold = self.fresh_up_to(&check);
                while let Some(w) = self.waiting.get_mut(&check) {
                    match w.first() {
                        Some((eval, _)) if *eval <= threshold => {}
                        _ => break,
                    }
                    let (_, subject) = w.pop_first().expect("checked non-empty");
                    let key = (check.clone(), subject);
                    if let Some(mut p) = self.pending.remove(&key) {
                        if p.rearm {
                            self.rearmed -= 1;
                        } else {
                            self.timers.remove(&(p.timer, key.clone()));
                        }
                        if let Some(l) = p.later.take() {
                            follow.push((key.clone(), l));
                        }
                        out.push(ready(key, p, Vec::new()));
                    }
                }
            }
            while let Some((t, _)) = self.timers.first() {
                if *t > now {
                    break;
                }
                let (_, key) = self.timers.pop_first().expect("checked non-empty");
                let Some(mut p) = self.pending.remove(&key) else {
                    continue;
                };
                if p.rearm {
                    // A re-armed run has no timer: this one outlived the run it was for.
                    self.pending.insert(key, p);
                    continue;
                }
                let stale = if p.freshness {
                    if let Some(w) = self.waiting.get_mut(&key.0) {
                        w.remove(&(p.eval_us, key.1.clone()));
                    }
                    self.stale_sources(&key.0, p.eval_us)
                } else {
                    Vec::new()
                };
                let later = p.later.take();
                if !stale.is_empty() && later.is_none() {
                    // Stale is not final: the same evaluation again once its sources are
                    // complete (a follow-up, if any, evaluates later and does instead).
                    rearm.push((key.clone(), p.eval_us, p.first_event_us));
                }
                if let Some(l) = later {
                    follow.push((key.clone(), l));
                }
                out.push(ready(key, p, stale));
            }
            for (key, eval_us, first_event_us) in rearm.drain(..) {
                self.rearm(&key.0, &key.1, eval_us, first_event_us, now);
            }
            self.waiting.retain(|_, w| !w.is_empty());
            if follow.is_empty() {
                return out;
            }
            // Follow-ups may be releasable at once; they have no follow-ups of their own,
            // so this loops at most twice.
            for (key, l) in follow {
                self.follow_up(key, l);
            }
        }
    }

    /// The time up to which every source of `check` is complete.
    fn fresh_up_to(&self, check: &str) -> Micros {
        let Some(plan) = self.plans.get(check) else {
            return Micros::MIN;
        };
        plan.sources
            .iter()
            .map(|s| self.watermark(s))
            .min()
            .unwrap_or(Micros::MAX)
    }

    fn stale_sources(&self, check: &str, eval_us: Micros) -> Vec<String> {
        let Some(plan) = self.plans.get(check) else {
            return Vec::new();
        };
        plan.sources
            .iter()
            .filter(|s| self.watermark(s) < eval_us)
            .cloned()
            .collect()
    }
}

fn ready(key: JobKey, p: Pending, stale: Vec<String>) -> Ready {
    Ready {
        check: key.0,
        subject: key.1,
        eval_us: p.eval_us,
        first_event_us: p.first_event_us,
        stale,
        acks: p.acks,
        triggers: p.triggers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Micros = 1_000_000;

    fn plan(strategy: Strategy, grace_s: u64, sources: &[&str]) -> Plan {
        Plan {
            strategy,
            grace: Duration::from_secs(grace_s),
            sources: sources.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn trig(t: Micros, ack: u64) -> Trigger {
        Trigger {
            event_time_us: t,
            ingest_time_us: t,
            ack: Some(ack),
        }
    }

    fn fresh(max_s: u64) -> Strategy {
        Strategy::FreshnessAware {
            max_delay: Duration::from_secs(max_s),
        }
    }

    #[test]
    fn immediate_runs_at_once_and_coalesces() {
        let mut s = Scheduler::new();
        let c = s.plan("c", plan(Strategy::Immediate, 30, &["pg"]));
        let now = Instant::now();
        assert!(!s.add(&c, "T1", trig(100 * S, 1), now));
        assert!(s.add(&c, "T1", trig(101 * S, 2), now));
        s.add(&c, "T2", trig(100 * S, 3), now);
        let mut r = s.take_ready(now);
        r.sort_by(|a, b| a.subject.cmp(&b.subject));
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0].eval_us,
            131 * S,
            "the later trigger's commit time + grace"
        );
        assert_eq!(r[0].first_event_us, 100 * S);
        assert_eq!((r[0].acks.clone(), r[0].triggers), (vec![1, 2], 2));
        assert!(r[0].stale.is_empty());
        assert!(s.is_empty() && s.next_timer().is_none());
    }

    #[test]
    fn fixed_delay_waits_from_the_first_trigger() {
        let mut s = Scheduler::new();
        let c = s.plan(
            "sla",
            plan(Strategy::FixedDelay(Duration::from_secs(60)), 0, &[]),
        );
        let t0 = Instant::now();
        s.add(&c, "T1", trig(5 * S, 1), t0);
        s.add(&c, "T1", trig(6 * S, 2), t0 + Duration::from_secs(30));
        assert_eq!(s.next_timer(), Some(t0 + Duration::from_secs(60)));
        assert!(s.take_ready(t0 + Duration::from_secs(59)).is_empty());
        let r = s.take_ready(t0 + Duration::from_secs(60));
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].eval_us, r[0].triggers), (6 * S, 2));
    }

    #[test]
    fn freshness_waits_for_every_source() {
        let mut s = Scheduler::new();
        let c = s.plan("nets", plan(fresh(120), 30, &["ledger", "pg"]));
        let t0 = Instant::now();
        s.set_watermarks([("pg", 100 * S), ("ledger", 90 * S)]);
        s.add(&c, "T1", trig(100 * S, 1), t0);
        assert!(s.take_ready(t0).is_empty(), "eval 130 s > watermarks");
        s.set_watermarks([("pg", 140 * S)]);
        assert!(s.take_ready(t0).is_empty(), "the ledger lags");
        s.set_watermarks([("ledger", 129 * S)]);
        assert!(s.take_ready(t0).is_empty());
        s.set_watermarks([("ledger", 130 * S)]);
        let r = s.take_ready(t0);
        assert_eq!(r.len(), 1, "complete up to exactly the evaluation time");
        assert!(r[0].stale.is_empty());
        assert!(s.next_timer().is_none(), "its deadline is gone too");
        // Watermarks never go back.
        s.set_watermarks([("ledger", 1)]);
        assert_eq!(s.watermark("ledger"), 130 * S);
    }

    #[test]
    fn freshness_deadline_marks_stale_sources() {
        let mut s = Scheduler::new();
        let c = s.plan("nets", plan(fresh(60), 30, &["ledger", "pg"]));
        let t0 = Instant::now();
        s.set_watermarks([("pg", 200 * S), ("ledger", 50 * S)]);
        s.add(&c, "T1", trig(100 * S, 1), t0);
        assert!(s.take_ready(t0 + Duration::from_secs(59)).is_empty());
        let r = s.take_ready(t0 + Duration::from_secs(60));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].stale, ["ledger"]);
        assert!(s.is_empty(), "a re-armed run is not pending work");
        assert_eq!(s.rearmed(), 1);
        assert!(s.take_ready(t0 + Duration::from_secs(600)).is_empty());
    }

    #[test]
    fn a_stale_run_is_rearmed_and_runs_again_once_its_sources_are_complete() {
        let mut s = Scheduler::new();
        let c = s.plan("nets", plan(fresh(60), 30, &["ledger", "pg"]));
        let t0 = Instant::now();
        s.set_watermarks([("pg", 200 * S), ("ledger", 50 * S)]);
        s.add(&c, "T1", trig(100 * S, 1), t0);
        let r = s.take_ready(t0 + Duration::from_secs(60));
        assert_eq!(
            (r[0].stale.clone(), r[0].acks.clone()),
            (vec!["ledger".into()], vec![1])
        );
        // No deadline: hours later it still waits.
        assert!(s.take_ready(t0 + Duration::from_secs(36_000)).is_empty());
        assert_eq!(s.next_timer(), None, "a re-armed run sets no timer");
        s.set_watermarks([("ledger", 129 * S)]);
        assert!(s.take_ready(t0 + Duration::from_secs(36_000)).is_empty());
        s.set_watermarks([("ledger", 130 * S)]);
        let r = s.take_ready(t0 + Duration::from_secs(36_000));
        assert_eq!(r.len(), 1);
        assert_eq!(
            (
                r[0].eval_us,
                r[0].stale.clone(),
                r[0].acks.clone(),
                r[0].triggers
            ),
            (130 * S, vec![], vec![], 0),
            "the same evaluation, complete this time, holding no notification"
        );
        assert_eq!(r[0].first_event_us, 100 * S);
        assert_eq!((s.len(), s.rearmed()), (0, 0));
    }

    #[test]
    fn a_trigger_turns_a_rearmed_run_into_an_ordinary_one() {
        let mut s = Scheduler::new();
        let c = s.plan("nets", plan(fresh(60), 0, &["ledger"]));
        let t0 = Instant::now();
        s.add(&c, "T1", trig(100 * S, 1), t0);
        let r = s.take_ready(t0 + Duration::from_secs(60));
        assert_eq!(r[0].stale, ["ledger"]);
        assert_eq!(s.rearmed(), 1);
        // A new trigger at a later time, still with the ledger behind: its deadline holds.
        let t1 = t0 + Duration::from_secs(100);
        assert!(s.add(&c, "T1", trig(150 * S, 2), t1));
        assert_eq!((s.len(), s.rearmed()), (1, 0));
        assert!(s.take_ready(t1 + Duration::from_secs(59)).is_empty());
        let r = s.take_ready(t1 + Duration::from_secs(60));
        assert_eq!(
            (r[0].eval_us, r[0].acks.clone(), r[0].stale.clone()),
            (150 * S, vec![2], vec!["ledger".into()])
        );
        // Stale again: re-armed at the later time.
        assert_eq!(s.rearmed(), 1);
        s.set_watermarks([("ledger", 150 * S)]);
        let r = s.take_ready(t1 + Duration::from_secs(61));
        assert_eq!((r[0].eval_us, r[0].stale.clone()), (150 * S, vec![]));
        assert!(s.is_empty() && s.rearmed() == 0);
    }

    #[test]
    fn rearming_behind_a_pending_run_follows_it() {
        let mut s = Scheduler::new();
        let c = s.plan("nets", plan(fresh(60), 0, &["pg"]));
        s.plan("now", plan(Strategy::Immediate, 0, &["pg"]));
        let t0 = Instant::now();
        assert!(
            !s.rearm("now", "T1", 5 * S, 5 * S, t0),
            "only freshness-aware checks"
        );
        assert!(!s.rearm("unknown", "T1", 5 * S, 5 * S, t0));
        s.add(&c, "T1", trig(10 * S, 1), t0);
        assert!(!s.rearm(&c, "T1", 20 * S, 20 * S, t0));
        s.set_watermarks([("pg", 20 * S)]);
        let r = s.take_ready(t0);
        let evals: Vec<Micros> = r.iter().map(|r| r.eval_us).collect();
        assert_eq!(
            evals,
            [10 * S, 20 * S],
            "the pending run, then the re-armed time"
        );
        assert!(s.rearm(&c, "T2", 30 * S, 30 * S, t0));
        assert_eq!((s.len(), s.rearmed()), (0, 1));
    }

    #[test]
    fn later_triggers_of_a_waiting_run_gather_into_a_follow_up() {
        let mut s = Scheduler::new();
        let c = s.plan("nets", plan(fresh(60), 0, &["pg"]));
        let t0 = Instant::now();
        s.add(&c, "T1", trig(10 * S, 1), t0);
        assert!(s.add(&c, "T1", trig(20 * S, 2), t0 + Duration::from_secs(5)));
        assert!(s.add(&c, "T1", trig(18 * S, 3), t0 + Duration::from_secs(6)));
        assert!(
            s.add(&c, "T1", trig(9 * S, 4), t0),
            "an earlier one joins the run itself"
        );
        s.set_watermarks([("pg", 15 * S)]);
        let r = s.take_ready(t0);
        assert_eq!(
            r.len(),
            1,
            "the first run is not held back by later triggers"
        );
        assert_eq!((r[0].eval_us, r[0].acks.clone()), (10 * S, vec![1, 4]));
        assert_eq!(s.len(), 1, "the follow-up waits");
        s.set_watermarks([("pg", 20 * S)]);
        let r = s.take_ready(t0);
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].eval_us, r[0].acks.clone(), r[0].triggers),
            (20 * S, vec![2, 3], 2)
        );
        assert_eq!(r[0].first_event_us, 18 * S);
        // The follow-up's max delay counts from its first trigger's arrival.
        s.add(&c, "T2", trig(30 * S, 5), t0);
        s.add(&c, "T2", trig(40 * S, 6), t0 + Duration::from_secs(10));
        let r = s.take_ready(t0 + Duration::from_secs(60));
        assert_eq!((r.len(), r[0].stale.clone()), (1, vec!["pg".to_owned()]));
        assert!(s.take_ready(t0 + Duration::from_secs(69)).is_empty());
        assert_eq!(s.take_ready(t0 + Duration::from_secs(70)).len(), 1);
    }

    /// A subject triggered every second while the watermark trails by half a second still
    /// runs about every second (it would never run if each trigger moved its evaluation).
    #[test]
    fn a_busy_subject_is_not_starved() {
        let mut s = Scheduler::new();
        let c = s.plan("wallet", plan(fresh(60), 0, &["ledger"]));
        let t0 = Instant::now();
        let mut runs = 0;
        for i in 1..=100 {
            let now = t0 + Duration::from_secs(i as u64);
            s.add(&c, "w", trig(i * S, i as u64), now);
            s.set_watermarks([("ledger", i * S - S / 2)]);
            runs += s.take_ready(now).len();
        }
        assert!(runs >= 49, "{runs} runs in 100 s");
    }

    /// Many runs waiting on one lagging source, others on a fresh one: only the fresh ones
    /// are released, in evaluation order, and releasing is per check.
    #[test]
    fn waiting_runs_release_in_order() {
        let mut s = Scheduler::new();
        let a = s.plan("a", plan(fresh(3600), 0, &["slow"]));
        let b = s.plan("b", plan(fresh(3600), 0, &["fast"]));
        let t0 = Instant::now();
        for i in 0..1000 {
            s.add(&a, &format!("s{i:04}"), trig((i + 1) * S, i as u64), t0);
            s.add(&b, &format!("s{i:04}"), trig(i * S, 10_000 + i as u64), t0);
        }
        s.set_watermarks([("fast", 499 * S), ("slow", 0)]);
        let r = s.take_ready(t0);
        assert_eq!(r.len(), 500);
        assert!(r.iter().all(|r| &*r.check == "b"));
        assert!(r.windows(2).all(|w| w[0].eval_us <= w[1].eval_us));
        assert_eq!(s.len(), 1500);
    }
}
