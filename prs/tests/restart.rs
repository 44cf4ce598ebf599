//! A runner stopped with delayed runs pending re-derives them on restart (DESIGN invariant
//! 1): its cursor over the catalog (embedded mode) is committed only past notifications
//! whose runs have all completed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use overseer_dal::Dal;
use overseer_dal::bus::feed::CatalogFeed;
use overseer_dal::bus::{Delivered, DeliveryTag, Subscription};
use overseer_dal::catalog::DynCatalog;
use overseer_dal::catalog::embedded::EmbeddedCatalog;
use overseer_dal::store::DynStore;
use overseer_dal::store::memory::MemoryStore;
use overseer_dal::update::now_us;
use overseer_protos::views::Toy;
use overseer_prs::check::{Registry, Strategy, Verdict};
use overseer_prs::runner::{Runner, RunnerOptions};
use overseer_testkit::history::{Changes, write_segment};
use overseer_testkit::sink::CollectSink;

/// The feed, counting the notifications it hands the runner.
struct Counting {
    inner: CatalogFeed,
    seen: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl Subscription for Counting {
    async fn recv(&mut self, max: usize) -> overseer_dal::Result<Vec<Delivered>> {
        let got = self.inner.recv(max).await?;
        self.seen.fetch_add(got.len(), Ordering::SeqCst);
        Ok(got)
    }
    async fn commit(&mut self, tags: &[DeliveryTag]) -> overseer_dal::Result<()> {
        self.inner.commit(tags).await
    }
}

async fn runner_for(
    catalog: &DynCatalog,
    store: &DynStore,
) -> (
    tokio::task::JoinHandle<overseer_prs::Result<overseer_prs::runner::RunnerReport>>,
    Arc<CollectSink>,
    CancellationToken,
    Arc<AtomicUsize>,
) {
    let mut registry = Registry::new();
    registry
        .check("toy", |_: &Toy| Verdict::Pass)
        .strategy(Strategy::FreshnessAware {
            max_delay: Duration::from_secs(3600),
        });
    let options = RunnerOptions {
        model_sources: BTreeMap::from([("toys".into(), vec!["src".into()])]),
        watermark_poll: Duration::from_millis(10),
        commit_interval: Duration::from_millis(10),
        ..RunnerOptions::default()
    };
    let runner = Runner::new(
        Dal::new(catalog.clone(), store.clone()),
        Arc::new(registry),
        options,
    )
    .unwrap();
    let feed = CatalogFeed::open(
        catalog.clone(),
        store.clone(),
        "prs",
        Duration::from_millis(10),
    )
    .await
    .unwrap();
    let sink = Arc::new(CollectSink::new());
    let stop = CancellationToken::new();
    let seen = Arc::new(AtomicUsize::new(0));
    let feed = Counting {
        inner: feed,
        seen: seen.clone(),
    };
    let task = tokio::spawn(runner.run(Box::new(feed), sink.clone(), stop.clone()));
    (task, sink, stop, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_runs_pending_at_a_stop_are_rederived() {
    let dir = tempfile::tempdir().unwrap();
    let catalog: DynCatalog = Arc::new(EmbeddedCatalog::open(dir.path().join("c.redb")).unwrap());
    let store: DynStore = Arc::new(MemoryStore::new());
    let t = now_us();
    let mut ch = Changes::new("src");
    let recs = (0..3)
        .map(|i| ch.insert("toys", &format!("x{i}"), t + i, json!({"type": "ok"})))
        .collect();
    write_segment(&*store, &*catalog, recs, vec![])
        .await
        .unwrap();
    // The source is complete only up to before these events: the runs must wait.
    catalog.heartbeat("src", t - 1_000_000, t).await.unwrap();

    let (task, sink, stop, seen) = runner_for(&catalog, &store).await;
    // Stopped once the runner holds all three (not after a fixed pause a loaded machine
    // can outlast).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.load(Ordering::SeqCst) < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "notifications never came"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.cancel();
    let report = task.await.unwrap().unwrap();
    assert_eq!(report.notifications, 3, "{report:?}");
    assert!(sink.is_empty(), "nothing ran: waiting for freshness");

    // Restart: the notifications come again, and once the source is fresh, the runs happen.
    let (task, sink, stop, _) = runner_for(&catalog, &store).await;
    catalog.heartbeat("src", t + 10, t + 10).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sink.len() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "runs never came");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.cancel();
    let report = task.await.unwrap().unwrap();
    assert_eq!(report.notifications, 3);
    let mut subjects: Vec<String> = sink.runs().into_iter().map(|r| r.subject).collect();
    subjects.sort();
    assert_eq!(subjects, ["x0", "x1", "x2"]);

    // A third start finds nothing left to do: everything was committed.
    let (task, sink, stop, _) = runner_for(&catalog, &store).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let report = task.await.unwrap().unwrap();
    assert_eq!(report.notifications, 0, "{report:?}");
    assert!(sink.is_empty());
}
