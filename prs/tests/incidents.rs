//! The incident state machine against a local server implementing the PagerDuty Events v2
//! contract, through the real HTTP client, with its state in a real (embedded) catalog:
//! one incident per failure, none added by repeated failures, recovery resolves, a restart
//! mid-incident neither re-triggers nor loses the resolve, 429 retried, 400 not; a verdict
//! applied while a notice is in flight ends with the target in the incident's state, and
//! two outboxes never send one incident at once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use overseer_dal::catalog::DynCatalog;
use overseer_dal::catalog::embedded::EmbeddedCatalog;
use overseer_dal::update::Incident;
use overseer_prs::escalate::{Backoff, Notice, Notifier, PagerDutyNotifier, Retrying, Severity};
use overseer_prs::incident::{Escalator, Outbox, Routes};
use overseer_prs::runner::{Outcome, RunRecord};
use overseer_testkit::pagerduty::FakePagerDuty;

const KEY: &str = "R0UT1NGKEY0000000000000000000000";

fn run(check: &str, subject: &str, eval_us: i64, fail: bool) -> RunRecord {
    RunRecord {
        check: check.into(),
        subject: subject.into(),
        eval_us,
        first_event_us: eval_us,
        outcome: if fail {
            Outcome::Fail {
                message: format!("entries of {subject} net to -50"),
                details: json!({"transfer": subject, "net": -50}),
            }
        } else {
            Outcome::Pass
        },
        evidence: vec!["pg@1".into(), "ledger@2".into()],
        view_digest: fail.then(|| "sha256:00".into()),
        triggers: 1,
        finished_us: eval_us,
    }
}

fn escalator(catalog: &DynCatalog, pd: &FakePagerDuty, muted: &[&str]) -> (Escalator, Outbox) {
    escalator_to(catalog, pagerduty(pd), muted)
}

/// The PagerDuty policy: the real client to `pd`, retrying fast.
fn pagerduty(pd: &FakePagerDuty) -> Arc<dyn Notifier> {
    let fast = Backoff {
        initial: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        max_attempts: 5,
        ..Backoff::default()
    };
    Arc::new(Retrying::with_backoff(
        PagerDutyNotifier::new(KEY, Some(&pd.url())).unwrap(),
        fast,
    ))
}

fn escalator_to(
    catalog: &DynCatalog,
    pd: Arc<dyn Notifier>,
    muted: &[&str],
) -> (Escalator, Outbox) {
    let routes = Routes {
        policies: BTreeMap::from([("pagerduty".to_owned(), pd)]),
        default_policy: "pagerduty".into(),
        by_check: BTreeMap::new(),
        muted: muted.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>(),
        severity: Severity::Critical,
    };
    Escalator::new(catalog.clone(), routes, ["nets".to_owned()]).unwrap()
}

fn catalog(dir: &tempfile::TempDir) -> DynCatalog {
    Arc::new(EmbeddedCatalog::open(dir.path().join("catalog.redb")).unwrap())
}

#[tokio::test]
async fn one_incident_per_failure_resolved_on_recovery() {
    let pd = FakePagerDuty::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cat = catalog(&dir);
    let (esc, outbox) = escalator(&cat, &pd, &[]);

    // A subject that only ever passes leaves no trace.
    assert!(
        esc.apply(&run("nets", "T0", 1, false))
            .await
            .unwrap()
            .is_none()
    );

    for t in 10..15 {
        esc.apply(&run("nets", "T1", t, true)).await.unwrap();
        outbox.drain().await.unwrap();
    }
    assert_eq!(
        pd.incidents_opened_total(),
        1,
        "five failures, one incident"
    );
    assert_eq!(
        pd.requests().len(),
        1,
        "fail→fail sends nothing: {:?}",
        pd.requests()
    );
    let open = pd.open_incidents();
    assert_eq!(open.len(), 1);
    assert!(
        open[0].summary().contains("nets: entries of T1 net to -50"),
        "{:?}",
        open[0]
    );
    assert_eq!(open[0].severity(), "critical");
    let body = pd.requests()[0].json.clone().unwrap();
    assert_eq!(
        body["payload"]["custom_details"]["evidence"],
        json!(["pg@1", "ledger@2"])
    );
    assert_eq!(
        body["payload"]["custom_details"]["view_digest"],
        "sha256:00"
    );
    assert_eq!(body["routing_key"], KEY);

    // An older verdict (a redelivery) does not move the state back.
    assert!(
        esc.apply(&run("nets", "T1", 5, false))
            .await
            .unwrap()
            .is_none()
    );
    outbox.drain().await.unwrap();
    assert_eq!(pd.open_incidents().len(), 1);

    esc.apply(&run("nets", "T1", 20, false)).await.unwrap();
    outbox.drain().await.unwrap();
    assert!(pd.open_incidents().is_empty());
    assert_eq!(pd.resolves(), 1);
    assert_eq!(pd.requests().len(), 2);

    // Fails again later: a new incident.
    esc.apply(&run("nets", "T1", 30, true)).await.unwrap();
    outbox.drain().await.unwrap();
    assert_eq!(pd.incidents_opened_total(), 2);
    let inc = cat.incident("nets", "T1").await.unwrap().unwrap();
    assert!(inc.failing && inc.notified_failing && inc.since_us == 30);
}

#[tokio::test]
async fn restart_mid_incident_neither_retriggers_nor_loses_the_resolve() {
    let pd = FakePagerDuty::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    {
        let cat = catalog(&dir);
        let (esc, outbox) = escalator(&cat, &pd, &[]);
        esc.apply(&run("nets", "T1", 10, true)).await.unwrap();
        outbox.drain().await.unwrap();
        // The recovery is recorded, then the process dies before the outbox sends it.
        esc.apply(&run("nets", "T1", 20, false)).await.unwrap();
    }
    assert_eq!(pd.incidents_opened_total(), 1);
    assert_eq!(pd.resolves(), 0);

    // Restart: the redelivered failure (older) changes nothing; the owed resolve is sent.
    let cat = catalog(&dir);
    let (esc, outbox) = escalator(&cat, &pd, &[]);
    esc.apply(&run("nets", "T1", 10, true)).await.unwrap();
    let stop = CancellationToken::new();
    let worker = tokio::spawn(outbox.run(stop.clone()));
    for _ in 0..200 {
        if pd.resolves() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    worker.await.unwrap().unwrap();
    assert_eq!(pd.resolves(), 1, "the resolve was not lost");
    assert_eq!(pd.incidents_opened_total(), 1, "nothing re-triggered");
    assert!(pd.open_incidents().is_empty());
    assert_eq!(pd.requests().len(), 2);
    assert!(cat.unsettled_incidents(10).await.unwrap().is_empty());
}

#[tokio::test]
async fn rate_limited_429_is_retried_and_400_is_not() {
    let pd = FakePagerDuty::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cat = catalog(&dir);
    let (esc, outbox) = escalator(&cat, &pd, &[]);

    pd.fail_next_with_429(2);
    esc.apply(&run("nets", "T1", 10, true)).await.unwrap();
    outbox.drain().await.unwrap();
    let statuses: Vec<u16> = pd.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 429, 202]);
    assert_eq!(pd.incidents_opened_total(), 1);

    // A 400 (the server refuses this routing key's event) is not retried: one request,
    // logged, and the notice is no longer owed.
    pd.fail_next_with(axum::http::StatusCode::BAD_REQUEST, 1);
    esc.apply(&run("nets", "T2", 10, true)).await.unwrap();
    outbox.drain().await.unwrap();
    let statuses: Vec<u16> = pd.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 429, 202, 400]);
    assert!(cat.unsettled_incidents(10).await.unwrap().is_empty());

    // 5xx beyond the retry budget: still owed, delivered by a later drain.
    pd.fail_next_with_500(5);
    esc.apply(&run("nets", "T3", 10, true)).await.unwrap();
    assert!(outbox.drain().await.unwrap(), "delivery failed");
    assert_eq!(cat.unsettled_incidents(10).await.unwrap().len(), 1);
    assert!(!outbox.drain().await.unwrap());
    assert_eq!(pd.incidents_opened_total(), 2);
}

#[tokio::test]
async fn muted_check_records_but_does_not_page() {
    let pd = FakePagerDuty::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cat = catalog(&dir);
    let (esc, outbox) = escalator(&cat, &pd, &["nets"]);
    esc.apply(&run("nets", "T1", 10, true)).await.unwrap();
    outbox.drain().await.unwrap();
    assert!(pd.requests().is_empty());
    let inc = cat.incident("nets", "T1").await.unwrap().unwrap();
    assert!(inc.failing, "the verdict is recorded");
    assert_eq!(cat.incidents(true).await.unwrap().len(), 1);

    // A notice owed from before the check was muted (recorded by an unmuted runner) is
    // marked told, not sent.
    let (unmuted, _) = escalator(&cat, &pd, &[]);
    unmuted.apply(&run("nets", "T2", 10, true)).await.unwrap();
    assert_eq!(cat.unsettled_incidents(10).await.unwrap().len(), 1);
    assert!(!outbox.drain().await.unwrap());
    assert!(pd.requests().is_empty(), "{:?}", pd.requests());
    assert!(cat.unsettled_incidents(10).await.unwrap().is_empty());
}

// ------------------------------------------------------------- races with a notice in flight

/// A policy in front of another that holds a send when told to: the notice is in flight
/// (taken by the outbox, not yet at the target) until the test lets it go.
struct Gate {
    inner: Arc<dyn Notifier>,
    hold_next: AtomicBool,
    /// Holds the next send once the target has it (its answer not yet seen).
    hold_after_next: AtomicBool,
    arrived: Notify,
    go: Semaphore,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
}

impl Gate {
    fn new(inner: Arc<dyn Notifier>) -> Arc<Gate> {
        Arc::new(Gate {
            inner,
            hold_next: AtomicBool::new(false),
            hold_after_next: AtomicBool::new(false),
            arrived: Notify::new(),
            go: Semaphore::new(0),
            in_flight: AtomicUsize::new(0),
            most_in_flight: AtomicUsize::new(0),
        })
    }

    /// Holds the next send until [`Gate::release`].
    fn hold_next(&self) {
        self.hold_next.store(true, Ordering::SeqCst);
    }

    /// Waits until the held send has been handed to this policy.
    async fn wait_in_flight(&self) {
        tokio::time::timeout(Duration::from_secs(10), self.arrived.notified())
            .await
            .expect("the outbox sends the owed notice");
    }

    fn release(&self) {
        self.go.add_permits(1);
    }
}

#[async_trait::async_trait]
impl Notifier for Gate {
    async fn send(&self, notice: &Notice) -> overseer_prs::Result<()> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_in_flight.fetch_max(now, Ordering::SeqCst);
        if self.hold_next.swap(false, Ordering::SeqCst) {
            self.arrived.notify_one();
            self.go.acquire().await.unwrap().forget();
        }
        let sent = self.inner.send(notice).await;
        if self.hold_after_next.swap(false, Ordering::SeqCst) {
            self.arrived.notify_one();
            self.go.acquire().await.unwrap().forget();
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        sent
    }
    fn describe(&self) -> String {
        "gate".into()
    }
}

/// The `event_action`s PagerDuty received, in order.
fn actions(pd: &FakePagerDuty) -> Vec<String> {
    pd.requests()
        .iter()
        .map(|r| {
            r.json.as_ref().unwrap()["event_action"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// Waits (at most 10 s) until the incident is settled at `told_eval_us`, then returns it.
async fn settled_at(cat: &DynCatalog, told_eval_us: i64) -> Incident {
    for _ in 0..1000 {
        let inc = cat.incident("nets", "T1").await.unwrap().unwrap();
        if !inc.unsettled() && inc.notified_eval_us == told_eval_us && inc.sending_until_us == 0 {
            return inc;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "the incident never settled at {told_eval_us}: {:?}",
        cat.incident("nets", "T1").await.unwrap()
    );
}

#[tokio::test]
async fn a_pass_applied_while_the_trigger_is_in_flight_ends_resolved() {
    let pd = FakePagerDuty::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cat = catalog(&dir);
    let gate = Gate::new(pagerduty(&pd));
    let (esc, outbox) = escalator_to(&cat, gate.clone(), &[]);
    let stop = CancellationToken::new();

    esc.apply(&run("nets", "T1", 10, true)).await.unwrap();
    gate.hold_next();
    let worker = tokio::spawn(outbox.run(stop.clone()));
    gate.wait_in_flight().await;
    // The trigger is in flight; the subject passes again.
    esc.apply(&run("nets", "T1", 20, false)).await.unwrap();
    gate.release();

    let inc = settled_at(&cat, 20).await;
    assert!(!inc.failing && !inc.notified_failing, "{inc:?}");
    stop.cancel();
    worker.await.unwrap().unwrap();
    assert_eq!(actions(&pd), ["trigger", "resolve"]);
    assert!(
        pd.open_incidents().is_empty(),
        "nothing left open at PagerDuty"
    );
    assert_eq!(pd.incidents_opened_total(), 1);
}

#[tokio::test]
async fn a_fail_applied_while_the_resolve_is_in_flight_ends_triggered() {
    let pd = FakePagerDuty::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cat = catalog(&dir);
    let gate = Gate::new(pagerduty(&pd));
    let (esc, outbox) = escalator_to(&cat, gate.clone(), &[]);

    esc.apply(&run("nets", "T1", 10, true)).await.unwrap();
    outbox.drain().await.unwrap();
    assert_eq!(pd.open_incidents().len(), 1);
    esc.apply(&run("nets", "T1", 20, false)).await.unwrap();
    gate.hold_next();
    let stop = CancellationToken::new();
    let worker = tokio::spawn(outbox.run(stop.clone()));
    gate.wait_in_flight().await;
    // The resolve is in flight; the subject fails again.
    esc.apply(&run("nets", "T1", 30, true)).await.unwrap();
    gate.release();

    let inc = settled_at(&cat, 30).await;
    assert!(inc.failing && inc.notified_failing, "{inc:?}");
    stop.cancel();
    worker.await.unwrap().unwrap();
    assert_eq!(actions(&pd), ["trigger", "resolve", "trigger"]);
    assert_eq!(
        pd.open_incidents().len(),
        1,
        "exactly one open incident at PagerDuty"
    );
}

/// The window review found: PagerDuty applied a trigger the outbox never recorded (it
/// died before the record), and the failure passed before the trigger was sent again.
/// The row must not read settled: a resolve goes out once the dead outbox's lease lapses,
/// or PagerDuty holds the incident open for ever.
#[tokio::test]
async fn a_trigger_the_target_got_unrecorded_is_resolved_when_the_failure_passes() {
    let pd = FakePagerDuty::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cat = catalog(&dir);
    let gate = Gate::new(pagerduty(&pd));
    let lease = Duration::from_millis(600);
    let (esc, first) = escalator_to(&cat, gate.clone(), &[]);
    let first = first.with_send_lease(lease);
    esc.apply(&run("nets", "T1", 10, true)).await.unwrap();
    gate.hold_after_next.store(true, Ordering::SeqCst);
    let worker = tokio::spawn(first.run(CancellationToken::new()));
    gate.wait_in_flight().await;
    assert_eq!(pd.open_incidents().len(), 1, "PagerDuty has the trigger");
    // The outbox dies before it records the send; then the failure passes.
    worker.abort();
    let _ = worker.await;
    esc.apply(&run("nets", "T1", 20, false)).await.unwrap();
    let inc = cat.incident("nets", "T1").await.unwrap().unwrap();
    assert!(
        inc.unsettled(),
        "a notice of unknown outcome is owed: {inc:?}"
    );

    tokio::time::sleep(lease + lease / 2).await;
    let (_, next) = escalator_to(&cat, pagerduty(&pd), &[]);
    assert!(!next.drain().await.unwrap(), "everything owed is delivered");
    assert!(pd.open_incidents().is_empty(), "{:?}", actions(&pd));
    assert_eq!(actions(&pd), ["trigger", "resolve"]);
    let inc = settled_at(&cat, 20).await;
    assert!(!inc.failing && !inc.notified_failing, "{inc:?}");
    drop(gate);
}

/// The same window through a send that failed after the target may have applied it (a
/// timeout): the notice of the current state is owed, whatever the state.
#[tokio::test]
async fn a_send_that_failed_maybe_told_owes_the_current_state() {
    let pd = FakePagerDuty::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cat = catalog(&dir);
    let slow: Arc<dyn Notifier> = Arc::new(
        PagerDutyNotifier::new(KEY, Some(&pd.url()))
            .unwrap()
            // Long enough for an ordinary send on a loaded machine: only the one
            // answered late below may time out.
            .with_timeout(Duration::from_secs(2)),
    );
    let (esc, outbox) = escalator_to(&cat, slow, &[]);
    esc.apply(&run("nets", "T1", 10, true)).await.unwrap();
    // PagerDuty applies the trigger but answers after the client gave up (a slower
    // machine only answers later still).
    pd.answer_after(Duration::from_secs(5));
    assert!(outbox.drain().await.unwrap(), "the send timed out");
    assert_eq!(pd.open_incidents().len(), 1);
    pd.answer_after(Duration::ZERO);
    // The failure passes before the trigger is sent again.
    esc.apply(&run("nets", "T1", 20, false)).await.unwrap();
    assert!(
        !outbox.drain().await.unwrap(),
        "everything owed is delivered"
    );
    assert!(pd.open_incidents().is_empty(), "{:?}", actions(&pd));
    assert_eq!(actions(&pd), ["trigger", "resolve"]);
    assert!(cat.unsettled_incidents(10).await.unwrap().is_empty());
}

#[tokio::test]
async fn two_outboxes_never_send_one_incident_at_once() {
    let pd = FakePagerDuty::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cat = catalog(&dir);
    let gate = Gate::new(pagerduty(&pd));
    // Two runner instances on one catalog, each with its outbox.
    let (esc, first) = escalator_to(&cat, gate.clone(), &[]);
    let (_, second) = escalator_to(&cat, gate.clone(), &[]);

    esc.apply(&run("nets", "T1", 10, true)).await.unwrap();
    gate.hold_next();
    let stop = CancellationToken::new();
    let worker = tokio::spawn(first.run(stop.clone()));
    gate.wait_in_flight().await;
    // The first outbox holds the delivery: the second leaves it alone, and says it is
    // still owed.
    assert!(second.drain().await.unwrap(), "still owed");
    esc.apply(&run("nets", "T1", 20, false)).await.unwrap();
    second.drain().await.unwrap();
    assert_eq!(gate.in_flight.load(Ordering::SeqCst), 1);
    assert!(pd.requests().is_empty(), "{:?}", actions(&pd));
    gate.release();

    settled_at(&cat, 20).await;
    assert!(!second.drain().await.unwrap(), "nothing owed");
    stop.cancel();
    worker.await.unwrap().unwrap();
    assert_eq!(actions(&pd), ["trigger", "resolve"]);
    assert_eq!(gate.most_in_flight.load(Ordering::SeqCst), 1);
    assert!(pd.open_incidents().is_empty());
}

#[tokio::test]
async fn a_send_longer_than_the_lease_keeps_it_and_a_dead_outboxs_lease_lapses() {
    let pd = FakePagerDuty::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cat = catalog(&dir);
    let gate = Gate::new(pagerduty(&pd));
    // Renewed every third of it: a renewal may be 1.3 s late (a loaded machine) before
    // the lease lapses.
    let lease = Duration::from_secs(2);
    let (esc, first) = escalator_to(&cat, gate.clone(), &[]);
    let (_, second) = escalator_to(&cat, gate.clone(), &[]);
    let (first, second) = (first.with_send_lease(lease), second.with_send_lease(lease));

    esc.apply(&run("nets", "T1", 10, true)).await.unwrap();
    gate.hold_next();
    let stop = CancellationToken::new();
    let worker = tokio::spawn(first.run(stop.clone()));
    gate.wait_in_flight().await;
    // Held for two leases: renewed, so the second outbox never takes it.
    for _ in 0..6 {
        tokio::time::sleep(lease / 3).await;
        assert!(
            second.drain().await.unwrap(),
            "the first outbox still holds it"
        );
    }
    assert!(pd.requests().is_empty());
    // The first outbox dies mid-send: its lease lapses and the second delivers.
    worker.abort();
    let _ = worker.await;
    tokio::time::sleep(lease + lease / 2).await;
    assert!(!second.drain().await.unwrap(), "delivered");
    assert_eq!(actions(&pd), ["trigger"]);
    let inc = settled_at(&cat, 10).await;
    assert!(inc.failing && inc.notified_failing);
    drop(gate);
}

/// Stopping is bounded: a target that never answers holds the outbox for the shutdown
/// timeout, not for the retry budget of every notice owed (34 minutes were seen during a
/// storm). What was owed stays owed and the next start sends it, once.
#[tokio::test]
async fn shutdown_is_bounded_and_what_is_owed_is_sent_by_the_next_start() {
    let pd = FakePagerDuty::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cat = catalog(&dir);
    let gate = Gate::new(pagerduty(&pd));
    let lease = Duration::from_millis(600);
    let (esc, outbox) = escalator_to(&cat, gate.clone(), &[]);
    let outbox = outbox
        .with_send_lease(lease)
        .with_shutdown_timeout(Duration::from_millis(300));
    esc.apply(&run("nets", "T1", 10, true)).await.unwrap();
    esc.apply(&run("nets", "T2", 10, true)).await.unwrap();
    gate.hold_next(); // never released: the target hangs
    let stop = CancellationToken::new();
    let worker = tokio::spawn(outbox.run(stop.clone()));
    gate.wait_in_flight().await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), worker)
        .await
        .expect("the outbox stops within its shutdown timeout")
        .unwrap()
        .unwrap();
    assert!(pd.requests().is_empty(), "{:?}", actions(&pd));

    // The next start: both owed notices go out, each once (the cut-short send once its
    // lease lapses).
    tokio::time::sleep(lease + lease / 2).await;
    let (_, next) = escalator_to(&cat, pagerduty(&pd), &[]);
    assert!(!next.drain().await.unwrap(), "everything owed is delivered");
    assert_eq!(pd.open_incidents().len(), 2);
    assert_eq!(pd.incidents_opened_total(), 2);
    for subject in ["T1", "T2"] {
        let inc = cat.incident("nets", subject).await.unwrap().unwrap();
        assert!(inc.failing && inc.notified_failing, "{subject}: {inc:?}");
    }
}
