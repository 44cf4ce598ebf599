//! Escalation transports against real HTTP: the local PagerDuty Events v2 server of
//! `overseer_testkit` and a tiny webhook receiver, through the real client. The
//! retry and rate-limit timing tests use paused Tokio time and an in-memory notifier
//! (no HTTP under paused time).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use overseer_prs::Error;
use overseer_prs::escalate::{
    Action, Backoff, CustomNotifier, IDEMPOTENCY_KEY, LogNotifier, Notice, Notifier,
    PagerDutyNotifier, RateLimit, RateLimited, Retrying, Severity, WebhookNotifier, dedup_key,
};
use overseer_testkit::memory::MemoryNotifier;
use overseer_testkit::pagerduty::{FakePagerDuty, TEST_ROUTING_KEY};
use serde_json::{Value, json};

fn failing(check: &str, subject: &str) -> Notice {
    Notice::trigger(
        check,
        subject,
        Severity::Critical,
        &format!("{check} fails for {subject}"),
        1_700_000_000_000_000,
        json!({"message": "credits != debits", "evidence": {"credits": "10", "debits": "9"}}),
    )
}

/// Backoff short enough for real-time HTTP tests.
fn quick() -> Backoff {
    Backoff {
        initial: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        ..Backoff::default()
    }
}

async fn fake_pd() -> FakePagerDuty {
    FakePagerDuty::start()
        .await
        .expect("start the local PagerDuty server")
}

fn pd(server: &FakePagerDuty) -> PagerDutyNotifier {
    PagerDutyNotifier::new(TEST_ROUTING_KEY, Some(&server.url())).unwrap()
}

fn escalation(e: &Error) -> (&str, bool) {
    match e {
        Error::Escalation {
            message, transient, ..
        } => (message.as_str(), *transient),
        Error::Throttled { message, .. } => (message.as_str(), true),
        other => panic!("expected an escalation error, got {other:?}"),
    }
}

// ---------------------------------------------------------------- dedup key, notices

#[test]
fn dedup_key_is_pinned() {
    // Changing this value orphans every open incident: never change it.
    assert_eq!(
        dedup_key("transfer_nets_to_zero", "t-42"),
        "overseer:transfer_nets_to_zero:8b15584c47848fb5aeacc1c7f7e086e81fe1471883119766f77aa134c486e6f0"
    );
    assert!(dedup_key(&"c".repeat(10_000), &"s".repeat(10_000)).len() <= 255);
    assert_ne!(dedup_key("a", "b:c"), dedup_key("a:b", "c"));
}

#[test]
fn notice_serializes_with_lowercase_enums() {
    let n = failing("net_zero", "t-1");
    let v = serde_json::to_value(&n).unwrap();
    assert_eq!(v["action"], "trigger");
    assert_eq!(v["severity"], "critical");
    assert_eq!(v["source"], "overseer/net_zero");
    assert_eq!(v["dedup_key"], dedup_key("net_zero", "t-1"));
    assert_eq!(
        serde_json::to_value(Notice::resolve("c", "s", 0)).unwrap()["action"],
        "resolve"
    );
}

// ---------------------------------------------------------------- PagerDuty

#[tokio::test]
async fn trigger_opens_exactly_one_incident() {
    let server = fake_pd().await;
    let notice = failing("net_zero", "t-1");
    pd(&server).send(&notice).await.unwrap();

    let open = server.open_incidents();
    assert_eq!(open.len(), 1);
    assert_eq!(server.incidents_opened_total(), 1);
    assert_eq!(open[0].dedup_key, notice.dedup_key);
    assert_eq!(open[0].severity(), "critical");
    assert_eq!(open[0].summary(), "net_zero fails for t-1");
    let body = server.requests()[0].json.clone().unwrap();
    assert_eq!(body["routing_key"], TEST_ROUTING_KEY);
    assert_eq!(body["event_action"], "trigger");
    assert_eq!(body["payload"]["source"], "overseer/net_zero");
    assert_eq!(
        body["payload"]["custom_details"]["message"],
        "credits != debits"
    );
    assert_eq!(body["payload"]["timestamp"], "2023-11-14T22:13:20.000000Z");
}

#[tokio::test]
async fn repeated_triggers_open_no_more_incidents() {
    let server = fake_pd().await;
    let target = pd(&server);
    let notice = failing("net_zero", "t-1");
    for _ in 0..5 {
        target.send(&notice).await.unwrap();
    }
    assert_eq!(server.requests().len(), 5);
    assert_eq!(server.open_incidents().len(), 1);
    assert_eq!(server.incidents_opened_total(), 1);
    assert_eq!(server.triggers_deduplicated(), 4);
}

#[tokio::test]
async fn resolve_resolves_the_incident() {
    let server = fake_pd().await;
    let target = pd(&server);
    target.send(&failing("net_zero", "t-1")).await.unwrap();
    target.send(&failing("net_zero", "t-2")).await.unwrap();
    target
        .send(&Notice::resolve("net_zero", "t-1", 1_700_000_100_000_000))
        .await
        .unwrap();

    assert_eq!(server.resolves(), 1);
    let open = server.open_incidents();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].dedup_key, dedup_key("net_zero", "t-2"));
    let resolve = server.requests()[2].json.clone().unwrap();
    let mut fields: Vec<_> = resolve.as_object().unwrap().keys().cloned().collect();
    fields.sort();
    assert_eq!(fields, ["dedup_key", "event_action", "routing_key"]);

    // A new failure after the resolve opens a new incident, as in PagerDuty.
    target.send(&failing("net_zero", "t-1")).await.unwrap();
    assert_eq!(server.incidents_opened_total(), 3);
}

#[tokio::test]
async fn rate_limited_429_is_retried_and_delivered_once() {
    let server = fake_pd().await;
    server.fail_next_with_429(2);
    let target = Retrying::with_backoff(pd(&server), quick());
    target.send(&failing("net_zero", "t-1")).await.unwrap();

    let statuses: Vec<u16> = server.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 429, 202]);
    assert_eq!(server.incidents_opened_total(), 1);
    assert_eq!(server.triggers_deduplicated(), 0);
}

#[tokio::test]
async fn server_error_500_is_retried() {
    let server = fake_pd().await;
    server.fail_next_with_500(3);
    let target = Retrying::with_backoff(pd(&server), quick());
    target.send(&failing("net_zero", "t-1")).await.unwrap();

    let statuses: Vec<u16> = server.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [500, 500, 500, 202]);
    assert_eq!(server.open_incidents().len(), 1);
}

#[tokio::test]
async fn transient_errors_without_retry_say_so() {
    let server = fake_pd().await;
    server.fail_next_with_429(1);
    let err = pd(&server).send(&failing("c", "s")).await.expect_err("429");
    assert!(matches!(err, Error::Throttled { .. }), "{err:?}");
    let (message, transient) = escalation(&err);
    assert!(transient, "{message}");
    assert!(message.contains("429"), "{message}");
}

#[tokio::test]
async fn invalid_event_400_is_not_retried() {
    let server = fake_pd().await;
    // A routing key of the wrong length: PagerDuty answers 400.
    let target = Retrying::with_backoff(
        PagerDutyNotifier::new("not-32-characters", Some(&server.url())).unwrap(),
        quick(),
    );
    let err = target
        .send(&failing("net_zero", "t-1"))
        .await
        .expect_err("400");
    let (message, transient) = escalation(&err);
    assert!(!transient, "{message}");
    assert!(
        message.contains("Length of 'routing_key' is incorrect (should be 32 characters)"),
        "PagerDuty's message is kept: {message}"
    );
    assert!(
        !message.contains("not-32-characters"),
        "key redacted: {message}"
    );
    assert_eq!(server.requests().len(), 1, "exactly one request");
    assert_eq!(server.requests()[0].status, 400);
    assert!(server.open_incidents().is_empty());
}

#[tokio::test]
async fn fake_pagerduty_validates_like_pagerduty() {
    let server = fake_pd().await;
    let http = reqwest::Client::new();
    let post = |body: Value| {
        let req = http.post(server.url()).json(&body);
        async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let trigger = |severity: &str| {
        json!({"routing_key": TEST_ROUTING_KEY, "event_action": "trigger", "dedup_key": "k1",
               "payload": {"summary": "s", "source": "src", "severity": severity}})
    };

    let (status, body) = post(trigger("catastrophic")).await;
    assert_eq!(status, 400);
    assert_eq!(body["status"], "invalid event");
    assert_eq!(body["message"], "Event object is invalid");
    assert!(body["errors"][0].as_str().unwrap().contains("severity"));

    let mut no_key = trigger("info");
    no_key.as_object_mut().unwrap().remove("routing_key");
    assert_eq!(post(no_key).await.0, 400);

    let mut long_key = trigger("info");
    long_key["dedup_key"] = json!("k".repeat(256));
    assert_eq!(post(long_key).await.0, 400);

    let mut no_summary = trigger("info");
    no_summary["payload"]
        .as_object_mut()
        .unwrap()
        .remove("summary");
    assert_eq!(post(no_summary).await.0, 400);

    let mut bad_action = trigger("info");
    bad_action["event_action"] = json!("page");
    assert_eq!(post(bad_action).await.0, 400);

    let (status, body) =
        post(json!({"routing_key": TEST_ROUTING_KEY, "event_action": "resolve"})).await;
    assert_eq!(status, 400, "resolve needs a dedup_key: {body}");

    let raw = http
        .post(server.url())
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 400);
    assert!(server.open_incidents().is_empty());

    // A trigger without dedup_key gets one generated; resolving an unknown key is
    // accepted and dropped.
    let mut no_dedup = trigger("warning");
    no_dedup.as_object_mut().unwrap().remove("dedup_key");
    let (status, body) = post(no_dedup).await;
    assert_eq!(status, 202);
    assert_eq!(body["status"], "success");
    assert_eq!(body["message"], "Event processed");
    let generated = body["dedup_key"].as_str().unwrap().to_owned();
    assert!(!generated.is_empty());
    assert_eq!(server.open_incidents()[0].dedup_key, generated);

    let (status, body) = post(
        json!({"routing_key": TEST_ROUTING_KEY, "event_action": "resolve", "dedup_key": "unknown"}),
    )
    .await;
    assert_eq!((status, body["dedup_key"].as_str()), (202, Some("unknown")));
    assert_eq!(server.resolves(), 0);
    assert_eq!(server.resolves_dropped(), 1);
    assert_eq!(server.requests().len(), 9);
}

#[tokio::test]
async fn long_multibyte_summary_fits_pagerduty() {
    let server = fake_pd().await;
    let notice = Notice::trigger(
        "c",
        "s",
        Severity::Warning,
        &"ledger ≠ transfer\n".repeat(300),
        0,
        Value::Null,
    );
    assert!(!notice.summary.contains('\n'));
    pd(&server).send(&notice).await.unwrap();
    assert_eq!(server.open_incidents().len(), 1);
}

#[test]
fn routing_key_from_env_is_used_and_redacted() {
    const VAR: &str = "OVERSEER_TEST_PD_ROUTING_KEY";
    const KEY: &str = "fedcba9876543210fedcba9876543210";
    let Ok(key) = std::env::var(VAR) else {
        // Parent: the 2024 edition makes set_var unsafe (and unsafe is forbidden here),
        // so run this same test in a child process with the variable set.
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "routing_key_from_env_is_used_and_redacted",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(VAR, KEY)
            .output()
            .expect("run the child test");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "child failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    };
    assert_eq!(key, KEY);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let server = fake_pd().await;
        let target = PagerDutyNotifier::from_env(VAR, Some(&server.url())).unwrap();
        for shown in [target.describe(), format!("{target:?}")] {
            assert!(!shown.contains(KEY), "key leaked: {shown}");
            assert!(shown.contains("[redacted]"), "{shown}");
        }
        assert!(target.describe().contains(VAR));
        target.send(&failing("c", "s")).await.unwrap();
        assert_eq!(
            server.requests()[0].json.as_ref().unwrap()["routing_key"],
            KEY
        );
    });
}

#[test]
fn unset_routing_key_variable_is_a_clear_error() {
    const VAR: &str = "OVERSEER_TEST_SURELY_UNSET_PD_KEY";
    let err = PagerDutyNotifier::from_env(VAR, None).expect_err("unset");
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert!(err.to_string().contains(VAR), "{err}");
    assert!(err.to_string().contains("not set"), "{err}");
    assert!(PagerDutyNotifier::from_env(VAR, None).is_err());
    assert!(PagerDutyNotifier::new("  ", None).is_err());
}

// ---------------------------------------------------------------- webhook

/// A tiny webhook receiver: records JSON bodies and their `Idempotency-Key` headers,
/// answers the status it is told.
struct Receiver {
    url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
    keys: Arc<Mutex<Vec<Option<String>>>>,
    status: Arc<AtomicU16>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn receiver() -> Receiver {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let keys = Arc::new(Mutex::new(Vec::new()));
    let status = Arc::new(AtomicU16::new(200));
    let (b, k, s) = (bodies.clone(), keys.clone(), status.clone());
    let app = axum::Router::new().route(
        "/hooks/{token}",
        axum::routing::post(
            move |axum::extract::Path(token): axum::extract::Path<String>,
                  headers: axum::http::HeaderMap,
                  axum::Json(body): axum::Json<Value>| {
                let (b, k, s) = (b.clone(), k.clone(), s.clone());
                async move {
                    b.lock().unwrap().push(body);
                    k.lock().unwrap().push(
                        headers
                            .get(IDEMPOTENCY_KEY)
                            .map(|v| v.to_str().unwrap().to_owned()),
                    );
                    let status =
                        axum::http::StatusCode::from_u16(s.load(Ordering::SeqCst)).unwrap();
                    // A refusal echoes the request, as many servers' error pages do.
                    let said = if status.is_success() {
                        String::new()
                    } else {
                        format!("Cannot POST /hooks/{token}")
                    };
                    (status, said)
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let url = format!(
        "http://{}/hooks/s3cr3t-token",
        listener.local_addr().unwrap()
    );
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Receiver {
        url,
        bodies,
        keys,
        status,
        server,
    }
}

#[tokio::test]
async fn webhook_posts_the_notice_json() {
    let rx = receiver().await;
    let hook = WebhookNotifier::new(&rx.url).unwrap();
    let notice = failing("net_zero", "t-1");
    hook.send(&notice).await.unwrap();

    let bodies = rx.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1);
    assert_eq!(bodies[0], serde_json::to_value(&notice).unwrap());
    let back: Notice = serde_json::from_value(bodies[0].clone()).unwrap();
    assert_eq!(back, notice);
    assert_eq!(back.action, Action::Trigger);

    // Every redelivery of one notice carries one idempotency key; another notice
    // (the resolve, or a later verdict) another.
    hook.send(&notice).await.unwrap();
    let resolve = Notice::resolve("net_zero", "t-1", notice.eval_time_us);
    hook.send(&resolve).await.unwrap();
    // A redelivery refreshed by a later verdict of the same failing streak...
    let refreshed = Notice {
        eval_time_us: notice.eval_time_us + 1,
        ..notice.clone()
    };
    hook.send(&refreshed).await.unwrap();
    // ...and a trigger of a new streak.
    let new_streak = refreshed.clone().since(notice.eval_time_us + 1);
    hook.send(&new_streak).await.unwrap();
    let keys = rx.keys.lock().unwrap().clone();
    let keys: Vec<String> = keys.into_iter().map(|k| k.expect("a key")).collect();
    assert_eq!(keys[0], notice.idempotency_key());
    assert_eq!(keys[0], keys[1], "a redelivery carries the same key");
    assert!(
        keys[0].starts_with(&notice.dedup_key),
        "the key names its incident"
    );
    assert_ne!(keys[2], keys[0], "a resolve is another notice");
    assert_eq!(
        keys[3], keys[0],
        "a refreshed redelivery of one transition: the same key"
    );
    assert_ne!(keys[4], keys[0], "a new streak is another notice");
    assert_ne!(keys[4], keys[2]);
}

#[tokio::test]
async fn webhook_classifies_failures_and_hides_its_url() {
    let rx = receiver().await;
    let hook = WebhookNotifier::new(&rx.url)
        .unwrap()
        .with_policy("payments-hook");
    for shown in [hook.describe(), format!("{hook:?}")] {
        assert!(!shown.contains("s3cr3t"), "URL token leaked: {shown}");
    }
    assert_eq!(hook.policy(), "payments-hook");

    for (status, transient) in [
        (503, true),
        (429, true),
        (500, true),
        (404, false),
        (400, false),
    ] {
        rx.status.store(status, Ordering::SeqCst);
        let err = hook.send(&failing("c", "s")).await.expect_err("refused");
        let (message, got) = escalation(&err);
        assert_eq!(got, transient, "{status}: {message}");
        assert!(
            message.contains("Cannot POST"),
            "the body is shown: {message}"
        );
        assert!(!message.contains("s3cr3t"), "{message}");
    }

    // Nobody listening: a connection error, transient, URL not in the message.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let hook = WebhookNotifier::new(&format!("http://{closed}/hooks/s3cr3t")).unwrap();
    let err = hook.send(&failing("c", "s")).await.expect_err("refused");
    let (message, transient) = escalation(&err);
    assert!(transient, "{message}");
    assert!(!message.contains("s3cr3t"), "{message}");

    // A target that accepts the connection and never answers: a timeout, transient.
    let silent = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            held.push(conn);
        }
    });
    let hook = WebhookNotifier::new(&format!("http://{silent_addr}/hooks/s3cr3t"))
        .unwrap()
        .with_timeout(Duration::from_millis(200));
    let err = hook.send(&failing("c", "s")).await.expect_err("timeout");
    let (message, transient) = escalation(&err);
    assert!(transient, "{message}");
    assert!(message.contains("timed out"), "{message}");
    hold.abort();

    assert!(WebhookNotifier::new("ftp://example.com/x").is_err());
    assert!(WebhookNotifier::new("not a url").is_err());
}

// ---------------------------------------------------------------- log, custom

#[tokio::test]
async fn log_and_custom_notifiers() {
    LogNotifier::new().send(&failing("c", "s")).await.unwrap();
    LogNotifier::new()
        .send(&Notice::resolve("c", "s", 0))
        .await
        .unwrap();

    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let custom = CustomNotifier::new("chat", move |notice: Notice| {
        let s = s.clone();
        async move {
            s.lock().unwrap().push(notice.dedup_key);
            Ok(())
        }
    });
    custom.send(&failing("c", "s")).await.unwrap();
    assert_eq!(*seen.lock().unwrap(), [dedup_key("c", "s")]);
    assert_eq!(custom.describe(), "custom chat");

    let refusing = CustomNotifier::new("chat", |_notice: Notice| async {
        Err(Error::Escalation {
            policy: "chat".into(),
            message: "no".into(),
            transient: false,
        })
    });
    assert!(
        !refusing
            .send(&failing("c", "s"))
            .await
            .unwrap_err()
            .is_transient()
    );
}

// ---------------------------------------------------------------- retries (paused time)

#[tokio::test(start_paused = true)]
async fn retrying_backs_off_exponentially_with_jitter() {
    let mem = MemoryNotifier::new();
    mem.fail_next(4, true);
    Retrying::new(mem.clone())
        .send(&failing("c", "s"))
        .await
        .unwrap();

    let at: Vec<_> = mem.attempts().iter().map(|a| a.at).collect();
    assert_eq!(at.len(), 5);
    for (i, pair) in at.windows(2).enumerate() {
        let full = Duration::from_millis(200) * 2u32.pow(i as u32);
        let waited = pair[1] - pair[0];
        assert!(
            waited >= full / 2 && waited <= full,
            "retry {}: waited {waited:?}, expected within [{:?}, {full:?}]",
            i + 1,
            full / 2
        );
    }
    assert_eq!(mem.delivered().len(), 1);
}

/// A target that is down is asked again every few seconds (delivery resumes within 5 s
/// of its recovery); one that answers 429 is given up to 30 s between attempts.
#[tokio::test(start_paused = true)]
async fn retrying_waits_longer_after_a_429_than_after_an_outage() {
    let no_jitter = Backoff {
        jitter: 0.0,
        ..Backoff::default()
    };
    let waits = |mem: &MemoryNotifier| -> Vec<u128> {
        let at: Vec<_> = mem.attempts().iter().map(|a| a.at).collect();
        at.windows(2).map(|w| (w[1] - w[0]).as_millis()).collect()
    };

    let down = [200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000];
    let hot = [200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000];
    for (throttled, want) in [(false, down), (true, hot)] {
        let mem = MemoryNotifier::new();
        if throttled {
            mem.throttle_next(9);
        } else {
            mem.fail_next(9, true);
        }
        Retrying::with_backoff(mem.clone(), no_jitter.clone())
            .send(&failing("c", "s"))
            .await
            .unwrap();
        assert_eq!(waits(&mem), want, "throttled: {throttled}");
        assert_eq!(mem.delivered().len(), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn retrying_gives_up_after_max_attempts_or_max_elapsed() {
    let mem = MemoryNotifier::new();
    mem.fail_next(1000, true);
    let by_attempts = Retrying::with_backoff(
        mem.clone(),
        Backoff {
            max_attempts: 5,
            ..Backoff::default()
        },
    );
    let err = by_attempts.send(&failing("c", "s")).await.unwrap_err();
    let (message, transient) = escalation(&err);
    assert!(transient);
    assert!(message.contains("gave up after 5 attempts"), "{message}");
    assert_eq!(mem.attempts().len(), 5);

    let mem = MemoryNotifier::new();
    mem.fail_next(1000, true);
    let by_time = Retrying::with_backoff(
        mem.clone(),
        Backoff {
            max_attempts: 1000,
            max_elapsed: Duration::from_secs(10),
            jitter: 0.0,
            ..Backoff::default()
        },
    );
    let start = tokio::time::Instant::now();
    by_time.send(&failing("c", "s")).await.unwrap_err();
    // Waits of 0.2, 0.4, 0.8, 1.6, 3.2 s (6.2 s); the next (capped at 5 s) would pass 10 s.
    assert_eq!(mem.attempts().len(), 6);
    assert_eq!(start.elapsed(), Duration::from_millis(6200));
}

#[tokio::test(start_paused = true)]
async fn retrying_never_retries_a_definite_failure() {
    let mem = MemoryNotifier::new();
    mem.fail_next(1, false);
    let err = Retrying::new(mem.clone())
        .send(&failing("c", "s"))
        .await
        .unwrap_err();
    assert!(!err.is_transient());
    assert_eq!(mem.attempts().len(), 1);
}

// ---------------------------------------------------------------- rate limit (paused time)

/// The most sends found in any window `[t, t + window)` starting at a send.
fn busiest_window(at: &[tokio::time::Instant], window: Duration) -> usize {
    (0..at.len())
        .map(|i| at[i..].iter().take_while(|t| **t < at[i] + window).count())
        .max()
        .unwrap_or(0)
}

#[tokio::test(start_paused = true)]
async fn rate_limiter_delivers_300_distinct_notices_within_the_bucket() {
    let mem = MemoryNotifier::new();
    let limit = RateLimit::PAGERDUTY;
    let limited = RateLimited::spawn(mem.clone(), limit).unwrap();
    let notices: Vec<Notice> = (0..300).map(|i| failing("c", &format!("s{i}"))).collect();
    let start = tokio::time::Instant::now();

    let results = join_all(notices.iter().map(|n| limited.send(n))).await;
    assert!(results.iter().all(Result::is_ok));

    let sent = mem.delivered();
    assert_eq!(sent.len(), 300, "all delivered");
    let order: Vec<_> = sent.iter().map(|a| a.notice.subject.clone()).collect();
    let expected: Vec<_> = (0..300).map(|i| format!("s{i}")).collect();
    assert_eq!(order, expected, "in order of enqueue");

    let at: Vec<_> = sent.iter().map(|a| a.at).collect();
    let busiest = busiest_window(&at, Duration::from_secs(60));
    assert!(busiest <= 120, "{busiest} sends in one minute");
    assert_eq!(busiest as u64, limit.max_in(Duration::from_secs(60)) - 1);
    // 20 at once, then one every 0.6 s.
    assert_eq!(at.iter().filter(|t| **t == start).count(), 20);
    assert_eq!(at[299] - start, Duration::from_millis(280 * 600));
    assert_eq!(limited.queued(), 0);
}

/// `rate_per_minute = n` is the contract: no 60 s window, closed at both ends, carries more
/// than `n` sends, burst included.
#[tokio::test(start_paused = true)]
async fn rate_per_minute_is_the_most_in_any_minute() {
    assert_eq!(RateLimit::at_most_per_minute(120), RateLimit::PAGERDUTY);
    for n in [2u32, 7, 120, 500] {
        let limit = RateLimit::at_most_per_minute(n);
        assert!(
            limit.max_in(Duration::from_secs(60)) <= u64::from(n),
            "{n}: {limit:?}"
        );
        let mem = MemoryNotifier::new();
        let limited = RateLimited::spawn(mem.clone(), limit).unwrap();
        let notices: Vec<Notice> = (0..n * 3).map(|i| failing("c", &format!("s{i}"))).collect();
        let results = join_all(notices.iter().map(|x| limited.send(x))).await;
        assert!(results.iter().all(Result::is_ok));
        let at: Vec<_> = mem.delivered().iter().map(|a| a.at).collect();
        assert_eq!(at.len(), notices.len());
        let minute = Duration::from_secs(60);
        let busiest = (0..at.len())
            .map(|i| at[i..].iter().take_while(|t| **t <= at[i] + minute).count())
            .max()
            .unwrap();
        assert!(busiest <= n as usize, "{n}: {busiest} sends in one minute");
        // And the figure is reached: the limit is the contract, not a guess below it.
        assert!(
            busiest + 1 >= n as usize,
            "{n}: only {busiest} in the busiest minute"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn rate_limiter_coalesces_by_dedup_key() {
    let mem = MemoryNotifier::new();
    let limited = RateLimited::spawn(mem.clone(), RateLimit::PAGERDUTY).unwrap();
    // 300 notices for 3 subjects, alternating trigger/resolve: a flapping storm.
    let notices: Vec<Notice> = (0..300)
        .map(|i| {
            let subject = format!("s{}", i % 3);
            if (i / 3) % 2 == 0 {
                failing("c", &subject)
            } else {
                Notice::resolve("c", &subject, i)
            }
        })
        .collect();

    let results = join_all(notices.iter().map(|n| limited.send(n))).await;
    assert!(results.iter().all(Result::is_ok), "every sender hears Ok");

    let sent = mem.delivered();
    assert!(sent.len() < 300);
    assert_eq!(sent.len(), 3, "one send per dedup_key");
    let mut last = HashMap::new();
    for n in &notices {
        last.insert(n.dedup_key.clone(), n.clone());
    }
    for a in &sent {
        assert_eq!(
            a.notice, last[&a.notice.dedup_key],
            "the latest notice wins"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn rate_limiter_coalesces_a_storm_over_time() {
    let mem = MemoryNotifier::new();
    let limit = RateLimit {
        per_minute: 60,
        burst: 1,
    };
    let limited = RateLimited::spawn(mem.clone(), limit).unwrap();
    let mut tasks = Vec::new();
    let mut last = HashMap::new();
    // One notice every 100 ms for 30 s, over 3 flapping subjects; one token a second.
    for i in 0..300i64 {
        let subject = format!("s{}", i % 3);
        let notice = if (i / 3) % 2 == 0 {
            failing("c", &subject)
        } else {
            Notice::resolve("c", &subject, i)
        };
        last.insert(notice.dedup_key.clone(), notice.clone());
        let limited = limited.clone();
        tasks.push(tokio::spawn(async move { limited.send(&notice).await }));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }

    let sent = mem.delivered();
    assert!(sent.len() < 60, "{} sends for 300 notices", sent.len());
    let at: Vec<_> = sent.iter().map(|a| a.at).collect();
    assert!(busiest_window(&at, Duration::from_secs(60)) <= 61);
    for (key, notice) in &last {
        let final_send = sent
            .iter()
            .rfind(|a| &a.notice.dedup_key == key)
            .expect("each key delivered");
        assert_eq!(
            &final_send.notice, notice,
            "each key ends in its last state"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn rate_limiter_reports_the_inner_failure_to_every_coalesced_sender() {
    let mem = MemoryNotifier::new();
    let limited = RateLimited::spawn(
        mem.clone(),
        RateLimit {
            per_minute: 1,
            burst: 1,
        },
    )
    .unwrap();
    limited.send(&failing("c", "first")).await.unwrap();
    mem.fail_next(1, false);
    let (trigger, resolve) = (failing("c", "s"), Notice::resolve("c", "s", 1));
    let (a, b) = tokio::join!(limited.send(&trigger), limited.send(&resolve));
    assert!(!a.unwrap_err().is_transient());
    assert!(!b.unwrap_err().is_transient());
    assert_eq!(mem.attempts().len(), 2);
    assert!(
        RateLimited::spawn(
            MemoryNotifier::new(),
            RateLimit {
                per_minute: 0,
                burst: 1
            }
        )
        .is_err()
    );
}

// ---------------------------------------------------------------- the whole stack

#[tokio::test]
async fn limiter_over_retries_over_pagerduty_ends_in_the_last_state() {
    let server = fake_pd().await;
    server.fail_next_with_429(1);
    let stack = RateLimited::spawn(
        Retrying::with_backoff(pd(&server), quick()),
        RateLimit {
            per_minute: 6000,
            burst: 5,
        },
    )
    .unwrap();
    assert!(stack.describe().contains("pagerduty"));
    let mut notices = Vec::new();
    for round in 0..4 {
        for s in 0..3 {
            let subject = format!("t-{s}");
            notices.push(if round % 2 == 0 || s == 2 {
                failing("net_zero", &subject)
            } else {
                Notice::resolve("net_zero", &subject, round)
            });
        }
    }
    let results = join_all(notices.iter().map(|n| stack.send(n))).await;
    assert!(results.iter().all(Result::is_ok));

    let mut open: Vec<_> = server
        .open_incidents()
        .into_iter()
        .map(|i| i.dedup_key)
        .collect();
    open.sort();
    // The last notice was a resolve for t-0 and t-1, a trigger for t-2.
    assert_eq!(open, [dedup_key("net_zero", "t-2")]);
    assert!(server.requests().len() <= notices.len() + 1);
}
