//! The incident state machine against a local server implementing the PagerDuty Events v2
//! contract, through the real HTTP client, with its state in a real (embedded) catalog:
//! one incident per failure, none added by repeated failures, recovery resolves, a restart
//! mid-incident neither re-triggers nor loses the resolve, 429 retried, 400 not.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use overseer_dal::catalog::DynCatalog;
use overseer_dal::catalog::embedded::EmbeddedCatalog;
use overseer_prs::escalate::{Backoff, Notifier, PagerDutyNotifier, Retrying, Severity};
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
    let fast = Backoff {
        initial: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        max_attempts: 5,
        ..Backoff::default()
    };
    let pd: Arc<dyn Notifier> = Arc::new(Retrying::with_backoff(
        PagerDutyNotifier::new(KEY, Some(&pd.url())).unwrap(),
        fast,
    ));
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
}
