//! Execution: a panicking check is an error verdict (the runner goes on), a slow one times
//! out, custom selection and custom view functions (the escape hatches) are used, shadow checks do not run
//! live, and the bus position is committed only past fully-run notifications.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use overseer_dal::Dal;
use overseer_dal::Viewed;
use overseer_dal::bus::memory::MemoryBus;
use overseer_dal::bus::{Bus, Delivered, DeliveryTag, Subscription};
use overseer_dal::catalog::DynCatalog;
use overseer_dal::catalog::embedded::EmbeddedCatalog;
use overseer_dal::store::DynStore;
use overseer_dal::store::memory::MemoryStore;
use overseer_dal::update::Micros;
use overseer_protos::views::Toy;
use overseer_prs::check::{BoxFuture, Registry, Strategy, Verdict};
use overseer_prs::runner::{Outcome, Runner, RunnerOptions};
use overseer_testkit::history::{Changes, write_segment};
use overseer_testkit::sink::CollectSink;

/// A subscription that records what the runner commits.
struct Recording {
    inner: Box<dyn Subscription>,
    committed: Arc<Mutex<Vec<DeliveryTag>>>,
}

#[async_trait::async_trait]
impl Subscription for Recording {
    async fn recv(&mut self, max: usize) -> overseer_dal::Result<Vec<Delivered>> {
        self.inner.recv(max).await
    }
    async fn commit(&mut self, tags: &[DeliveryTag]) -> overseer_dal::Result<()> {
        self.committed.lock().unwrap().extend_from_slice(tags);
        self.inner.commit(tags).await
    }
}

/// The timeout is generous (a panic's backtrace is symbolised in debug builds, which can
/// take a while on a loaded machine); the slow case sleeps well past it.
fn toy_check(v: &Toy) -> Verdict {
    match v.r#type.as_str() {
        "bomb" => panic!("the check blew up on {}", v.id),
        "slow" => {
            std::thread::sleep(Duration::from_millis(5000));
            Verdict::Pass
        }
        "broken" => Verdict::fail_with("broken toy", json!({"id": v.id})),
        _ => Verdict::Pass,
    }
}

/// A custom view function: the DAL's toy, repainted (so the check can tell it was used).
fn repainted_toy<'a>(
    dal: &'a Dal,
    subject: &'a str,
    as_of: Micros,
) -> BoxFuture<'a, overseer_prs::Result<Option<Viewed<Toy>>>> {
    Box::pin(async move {
        let mut v = dal.view::<Toy>(subject, as_of).await?;
        if let Some(v) = &mut v {
            v.view.color = format!("repainted {}", v.view.id);
        }
        Ok(v)
    })
}

/// `toy_ok` ([`toy_check`], immediate, a 2 s timeout).
fn register_toy_ok(registry: &mut Registry) {
    registry
        .check("toy_ok", toy_check)
        .strategy(Strategy::Immediate)
        .timeout(Duration::from_millis(2000));
}

/// `repainted`: a custom view function ([`repainted_toy`]) the check can tell was used.
fn register_repainted(registry: &mut Registry) {
    registry
        .check_with_view("repainted", Arc::new(repainted_toy), |t: &Toy| {
            Verdict::check(t.color == format!("repainted {}", t.id), || {
                Verdict::fail(format!("not repainted: {}", t.color))
            })
        })
        .strategy(Strategy::Immediate);
}

/// Options of a runner over the toys of source `src`, committing every 20 ms.
fn toy_options() -> RunnerOptions {
    RunnerOptions {
        model_sources: BTreeMap::from([("toys".into(), vec!["src".into()])]),
        commit_interval: Duration::from_millis(20),
        ..RunnerOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_and_timeouts_are_error_verdicts_and_the_runner_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let catalog: DynCatalog = Arc::new(EmbeddedCatalog::open(dir.path().join("c.redb")).unwrap());
    let store: DynStore = Arc::new(MemoryStore::new());
    let bus = Arc::new(MemoryBus::new(1000));

    let mut registry = Registry::new();
    register_toy_ok(&mut registry);
    // Custom selection: every toy triggers the check for the subject "a" only.
    registry
        .check("only_a", |_: &Toy| Verdict::fail("always"))
        .strategy(Strategy::Immediate)
        .select(|_| vec!["a".into()]);
    register_repainted(&mut registry);
    registry
        .check("shadow", |_: &Toy| Verdict::fail("never live"))
        .strategy(Strategy::Immediate)
        .shadow();
    let options = toy_options();
    let runner = Runner::new(
        Dal::new(catalog.clone(), store.clone()),
        Arc::new(registry),
        options,
    )
    .unwrap();
    let committed = Arc::new(Mutex::new(Vec::new()));
    let sub = Box::new(Recording {
        inner: bus.subscribe("t").await.unwrap(),
        committed: committed.clone(),
    });
    let sink = Arc::new(CollectSink::new());
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner.run(sub, sink.clone(), stop.clone()));

    let mut ch = Changes::new("src");
    let recs = ["a:ok", "b:bomb", "c:slow", "d:broken", "e:ok"]
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (id, ty) = s.split_once(':').unwrap();
            ch.insert("toys", id, 1000 + i as i64, json!({"type": ty}))
        })
        .collect();
    let entries = write_segment(&*store, &*catalog, recs, vec![])
        .await
        .unwrap();
    let notes: Vec<_> = entries.iter().map(|e| e.notification()).collect();
    bus.publish(&notes).await.unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let n = sink.len();
        let c = committed.lock().unwrap().last().cloned();
        if n >= 11 && c.as_ref().is_some_and(|t| t.offset == 4) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "runs: {n}, committed {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    let report = task.await.unwrap().unwrap();

    let runs = sink.runs();
    let by: BTreeMap<(String, String), Outcome> = runs
        .iter()
        .map(|r| ((r.check.clone(), r.subject.clone()), r.outcome.clone()))
        .collect();
    let get = |c: &str, s: &str| by.get(&(c.to_owned(), s.to_owned())).cloned();
    assert_eq!(get("toy_ok", "a"), Some(Outcome::Pass));
    assert_eq!(
        get("toy_ok", "e"),
        Some(Outcome::Pass),
        "the runner went on"
    );
    match get("toy_ok", "b") {
        Some(Outcome::Error { message }) => {
            assert!(
                message.contains("panicked") && message.contains("blew up on b"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    match get("toy_ok", "c") {
        Some(Outcome::Error { message }) => assert!(message.contains("timed out"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(get("toy_ok", "d"), Some(Outcome::Fail { .. })));
    // Custom selection: five notifications, one subject, coalesced into few runs.
    assert!(
        runs.iter()
            .filter(|r| r.check == "only_a")
            .all(|r| r.subject == "a")
    );
    let repainted: Vec<_> = runs.iter().filter(|r| r.check == "repainted").collect();
    assert_eq!(repainted.len(), 5, "{repainted:#?}");
    assert!(
        repainted.iter().all(|r| r.outcome == Outcome::Pass),
        "the custom view function built every view: {repainted:#?}"
    );
    assert!(
        runs.iter().all(|r| r.check != "shadow"),
        "shadow checks do not run live"
    );
    assert_eq!(report.notifications, 5);
    // Everything committed, in order, up to the last notification.
    let c = committed.lock().unwrap();
    assert!(c.windows(2).all(|w| w[0].offset < w[1].offset), "{c:?}");
    assert_eq!(c.last().map(|t| t.offset), Some(4));
}

/// Checks reading one view of one subject at one time share one view build: three checks
/// on `Toy` (one of them slow and one panicking on some toys) and one with a custom view
/// function run over five toys. Each check's verdict is its own (a slow or panicking
/// function fails only its own run), and the DAL reads each toy once for the three shared
/// checks plus once for the custom view: 10 record reads, not 20.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_on_one_view_share_its_build() {
    let dir = tempfile::tempdir().unwrap();
    let catalog: DynCatalog = Arc::new(EmbeddedCatalog::open(dir.path().join("c.redb")).unwrap());
    let store: DynStore = Arc::new(MemoryStore::new());
    let bus = Arc::new(MemoryBus::new(1000));

    let mut registry = Registry::new();
    register_toy_ok(&mut registry);
    registry
        .check("not_blue", |t: &Toy| {
            Verdict::check(t.color != "blue", || {
                Verdict::fail(format!("{} is blue", t.id))
            })
        })
        .strategy(Strategy::Immediate);
    registry
        .check("always_fails", |t: &Toy| {
            Verdict::fail(format!("{} checked", t.id))
        })
        .strategy(Strategy::Immediate);
    register_repainted(&mut registry);
    let options = toy_options();
    let dal = Dal::new(catalog.clone(), store.clone());
    let runner = Runner::new(dal.clone(), Arc::new(registry), options).unwrap();
    let sink = Arc::new(CollectSink::new());
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner.run(
        bus.subscribe("t").await.unwrap(),
        sink.clone(),
        stop.clone(),
    ));

    let mut ch = Changes::new("src");
    let recs = [
        "a:ok:blue",
        "b:bomb:red",
        "c:slow:red",
        "d:broken:blue",
        "e:ok:red",
    ]
    .iter()
    .enumerate()
    .map(|(i, s)| {
        let mut p = s.split(':');
        let (id, ty, color) = (p.next().unwrap(), p.next().unwrap(), p.next().unwrap());
        ch.insert(
            "toys",
            id,
            1000 + i as i64,
            json!({"type": ty, "color": color}),
        )
    })
    .collect();
    let entries = write_segment(&*store, &*catalog, recs, vec![])
        .await
        .unwrap();
    bus.publish(&entries.iter().map(|e| e.notification()).collect::<Vec<_>>())
        .await
        .unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while sink.len() < 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "runs: {}",
            sink.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    task.await.unwrap().unwrap();

    let by: BTreeMap<(String, String), Outcome> = sink
        .runs()
        .iter()
        .map(|r| ((r.check.clone(), r.subject.clone()), r.outcome.clone()))
        .collect();
    assert_eq!(by.len(), 20, "{by:#?}");
    let label = |c: &str, s: &str| by[&(c.to_owned(), s.to_owned())].label();
    for s in ["a", "b", "c", "d", "e"] {
        assert_eq!(label("always_fails", s), "fail", "{s}");
        assert_eq!(label("repainted", s), "pass", "{s}");
    }
    assert_eq!(
        ["a", "b", "c", "d", "e"].map(|s| label("not_blue", s)),
        ["fail", "pass", "pass", "fail", "pass"]
    );
    assert_eq!(
        ["a", "b", "c", "d", "e"].map(|s| label("toy_ok", s)),
        ["pass", "error", "error", "fail", "pass"],
        "a panic and a timeout are the slow or panicking check's own: {by:#?}"
    );
    let s = dal.state_stats();
    assert_eq!(
        s.extended + s.folded,
        10,
        "one shared build per toy plus one custom view each: {s:?}"
    );
}
