//! The runner's configuration: per-check overrides, unknown names, policies and redaction.

use std::time::Duration;

use serde_json::json;

use overseer_protos::views::Toy;
use overseer_prs::check::{Registry, Strategy, Verdict};
use overseer_prs::config::{CheckSettings, EscalationConfig, EscalationKind, PrsSettings};
use overseer_prs::escalate::{Notice, Severity};
use overseer_prs::service::{configure, notifier};
use overseer_testkit::pagerduty::FakePagerDuty;

fn registry() -> Registry {
    let mut r = Registry::new();
    r.check("a", |_: &Toy| Verdict::Pass);
    r.check("b", |_: &Toy| Verdict::Pass)
        .grace(Duration::from_secs(3));
    r
}

#[test]
fn overrides_apply_and_unknown_checks_are_errors() {
    let mut r = registry();
    let mut prs = PrsSettings {
        max_delay_ms: 5_000,
        ..PrsSettings::default()
    };
    prs.checks.insert(
        "b".into(),
        CheckSettings {
            strategy: Some(overseer_prs::config::StrategyName::FixedDelay),
            delay_ms: Some(250),
            grace_ms: Some(10),
            enabled: Some(false),
            escalation: Some("pd".into()),
            ..CheckSettings::default()
        },
    );
    configure(&mut r, &prs).unwrap();
    let a = r.get("a").unwrap();
    assert_eq!(
        a.strategy,
        Strategy::FreshnessAware {
            max_delay: Duration::from_secs(5)
        }
    );
    let b = r.get("b").unwrap();
    assert_eq!(b.strategy, Strategy::FixedDelay(Duration::from_millis(250)));
    assert_eq!(b.grace, Duration::from_millis(10));
    assert!(!b.enabled);
    assert_eq!(b.escalation.as_deref(), Some("pd"));

    prs.checks.insert("nope".into(), CheckSettings::default());
    let e = configure(&mut registry(), &prs).unwrap_err().to_string();
    assert!(
        e.contains("[prs.checks.nope]") && e.contains("registered: a, b"),
        "{e}"
    );
}

#[test]
fn settings_given_in_code_are_kept_over_the_config_defaults() {
    let mut r = Registry::new();
    r.check("defaults", |_: &Toy| Verdict::Pass);
    r.check("coded", |_: &Toy| Verdict::Pass)
        .grace(Duration::from_millis(750))
        .strategy(Strategy::FreshnessAware {
            max_delay: Duration::from_secs(900),
        });
    r.check("overridden", |_: &Toy| Verdict::Pass)
        .strategy(Strategy::FreshnessAware {
            max_delay: Duration::from_secs(900),
        });
    let mut prs = PrsSettings {
        max_delay_ms: 5_000,
        ..PrsSettings::default()
    };
    prs.checks.insert(
        "overridden".into(),
        CheckSettings {
            max_delay_ms: Some(1_000),
            ..CheckSettings::default()
        },
    );
    configure(&mut r, &prs).unwrap();
    let fresh = |s: u64| Strategy::FreshnessAware {
        max_delay: Duration::from_millis(s),
    };
    let defaults = r.get("defaults").unwrap();
    assert_eq!(
        defaults.strategy,
        fresh(5_000),
        "the config's default applies"
    );
    assert_eq!(
        defaults.grace,
        overseer_prs::config::DEFAULT_GRACE,
        "the documented default grace"
    );
    assert_eq!(overseer_prs::config::DEFAULT_GRACE, Duration::from_secs(2));
    let coded = r.get("coded").unwrap();
    assert_eq!(
        coded.strategy,
        fresh(900_000),
        "the code's max delay is kept"
    );
    assert_eq!(
        coded.grace,
        Duration::from_millis(750),
        "the code's grace is kept"
    );
    assert_eq!(
        r.get("overridden").unwrap().strategy,
        fresh(1_000),
        "[prs.checks.NAME] overrides the code"
    );
}

#[test]
fn a_max_delay_for_a_check_that_does_not_wait_is_refused() {
    let mut r = Registry::new();
    r.check("now", |_: &Toy| Verdict::Pass)
        .strategy(Strategy::Immediate);
    let mut prs = PrsSettings::default();
    prs.checks.insert(
        "now".into(),
        CheckSettings {
            max_delay_ms: Some(1_000),
            ..CheckSettings::default()
        },
    );
    let e = configure(&mut r, &prs).unwrap_err().to_string();
    assert!(
        e.contains("[prs.checks.now] max_delay_ms") && e.contains("Immediate"),
        "{e}"
    );
    // Following the advice works: the config switches the code's strategy.
    prs.checks.get_mut("now").unwrap().strategy =
        Some(overseer_prs::config::StrategyName::FreshnessAware);
    configure(&mut r, &prs).unwrap();
    assert_eq!(
        r.get("now").unwrap().strategy,
        Strategy::FreshnessAware {
            max_delay: Duration::from_secs(1)
        }
    );
}

#[tokio::test]
async fn configured_fields_are_redacted_before_they_leave() {
    // The fake PagerDuty records every body it receives, valid or not: a webhook pointed
    // at it shows exactly what left the process.
    let server = FakePagerDuty::start().await.unwrap();
    let cfg = EscalationConfig {
        kind: EscalationKind::Webhook,
        routing_key_env: None,
        url: Some(server.url()),
        url_env: None,
        severity: None,
        rate_per_minute: None,
        redact: vec!["account_id".into()],
    };
    let n = notifier("hook", &cfg).unwrap();
    assert!(
        n.describe().contains("redacting account_id"),
        "{}",
        n.describe()
    );
    let notice = Notice::trigger(
        "nets",
        "T1",
        Severity::Error,
        "entries net to -50",
        1,
        json!({"details": {"account_id": "acct-secret", "net": -50}}),
    );
    let _ = n.send(&notice).await;
    let sent = server.requests();
    assert_eq!(sent.len(), 1);
    let body = sent[0].json.clone().unwrap();
    assert_eq!(body["details"]["details"]["net"], -50);
    assert_ne!(body["details"]["details"]["account_id"], "acct-secret");
    assert!(!sent[0].body.contains("acct-secret"), "{}", sent[0].body);
}
