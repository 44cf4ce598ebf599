//! Replay over toy history: each distinct (check, subject, evaluation time) runs once,
//! evaluated as of commit time + grace; shadow checks replay; the JSON report is
//! byte-identical across replays and page sizes; empty windows say so.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use overseer_dal::Dal;
use overseer_dal::catalog::DynCatalog;
use overseer_dal::catalog::embedded::EmbeddedCatalog;
use overseer_dal::store::DynStore;
use overseer_dal::store::memory::MemoryStore;
use overseer_protos::views::Toy;
use overseer_prs::check::{Registry, Verdict};
use overseer_prs::replay::{ReplayOptions, ReplaySummary, ReportSink, Window, replay};
use overseer_testkit::history::{Changes, write_segment};
use overseer_testkit::sink::CollectSink;

fn registry() -> Registry {
    let mut r = Registry::new();
    r.check("not_broken", |v: &Toy| {
        Verdict::check(v.r#type != "broken", || {
            Verdict::fail_with("broken toy", json!({"id": v.id, "color": v.color}))
        })
    })
    .grace(Duration::from_micros(5));
    r.check("never_red", |v: &Toy| {
        Verdict::check(v.color != "red", || Verdict::fail("red toy"))
    })
    .shadow();
    r
}

/// Toy history over two segments, written out of time order: toy a changes three times
/// (broken from t=20 to t=30), b and c are written at one commit time, d is deleted;
/// the check's grace is 5.
async fn history() -> (tempfile::TempDir, Dal) {
    let dir = tempfile::tempdir().unwrap();
    let catalog: DynCatalog = Arc::new(EmbeddedCatalog::open(dir.path().join("c.redb")).unwrap());
    let store: DynStore = Arc::new(MemoryStore::new());
    let mut ch = Changes::new("src");
    let later = vec![
        ch.update("toys", "a", 30, json!({"type": "fixed"}), &[]),
        ch.insert("toys", "d", 40, json!({"type": "ok", "color": "red"})),
        ch.delete("toys", "d", 50),
    ];
    let earlier = vec![
        ch.insert("toys", "a", 10, json!({"type": "ok", "color": "blue"})),
        ch.update("toys", "a", 20, json!({"type": "broken"}), &[]),
        ch.insert("toys", "b", 25, json!({"type": "ok", "color": "red"})),
        ch.insert("toys", "c", 25, json!({"type": "broken", "color": "green"})),
    ];
    write_segment(&*store, &*catalog, later, vec![])
        .await
        .unwrap();
    write_segment(&*store, &*catalog, earlier, vec![])
        .await
        .unwrap();
    (dir, Dal::new(catalog, store))
}

async fn json_report(dal: &Dal, window: Window, page: usize, all: bool) -> String {
    let options = ReplayOptions {
        page,
        ..ReplayOptions::default()
    };
    replay_with(dal, window, &options, all).await.0
}

async fn replay_with(
    dal: &Dal,
    window: Window,
    options: &ReplayOptions,
    all: bool,
) -> (String, ReplaySummary) {
    let reg = registry();
    let include = |s: &overseer_prs::check::CheckSpec| all || s.enabled;
    let sink = ReportSink::new(&reg, include, window, None);
    let summary = replay(dal, &reg, include, window, options, &sink, &mut |_| {})
        .await
        .unwrap();
    (sink.report(&summary).to_json(), summary)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_trigger_time_is_evaluated_once_as_of_commit_plus_grace() {
    let (_dir, dal) = history().await;
    let reg = registry();
    let sink = CollectSink::new();
    let mut pages = 0;
    let summary = replay(
        &dal,
        &reg,
        |s| s.name == "not_broken",
        Window::new(0, 100).unwrap(),
        &ReplayOptions {
            page: 2,
            ..ReplayOptions::default()
        },
        &sink,
        &mut |_| pages += 1,
    )
    .await
    .unwrap();
    assert_eq!(summary.updates, 7);
    assert_eq!(pages, 4, "7 updates in pages of 2");
    let runs: Vec<_> = sink
        .runs()
        .into_iter()
        .map(|r| (r.subject, r.eval_us, r.outcome.label()))
        .collect();
    assert_eq!(
        runs,
        [
            ("a".to_owned(), 15, "pass"),
            ("a".to_owned(), 25, "fail"),
            ("b".to_owned(), 30, "pass"),
            ("c".to_owned(), 30, "fail"),
            ("a".to_owned(), 35, "pass"),
            ("d".to_owned(), 45, "pass"),
            ("d".to_owned(), 55, "no_subject"),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_checks_replay_and_the_report_lists_failures_with_evidence() {
    let (_dir, dal) = history().await;
    let reg = registry();
    let window = Window::new(0, 100).unwrap();
    let sink = ReportSink::new(&reg, |_| true, window, None);
    let summary = replay(
        &dal,
        &reg,
        |_| true,
        window,
        &ReplayOptions::default(),
        &sink,
        &mut |_| {},
    )
    .await
    .unwrap();
    let report = sink.report(&summary);
    assert!(!report.empty);
    let shadow = report
        .checks
        .iter()
        .find(|c| c.check == "never_red")
        .unwrap();
    assert!(shadow.shadow);
    assert_eq!((shadow.runs, shadow.failures), (7, 2), "{report:#?}");
    let live = report
        .checks
        .iter()
        .find(|c| c.check == "not_broken")
        .unwrap();
    assert_eq!(
        (
            live.runs,
            live.passes,
            live.failures,
            live.errors,
            live.no_subject
        ),
        (7, 4, 2, 0, 1)
    );
    let f = &report.failures[0];
    assert_eq!((f.check.as_str(), f.subject.as_str()), ("never_red", "b"));
    let f = report
        .failures
        .iter()
        .find(|f| f.check == "not_broken" && f.subject == "a")
        .unwrap();
    assert_eq!(f.eval_us, 25);
    assert_eq!(f.trigger_us, 20);
    assert_eq!(f.message, "broken toy");
    assert_eq!(f.details, json!({"id": "a", "color": "blue"}));
    assert_eq!(
        f.evidence.len(),
        1,
        "the toy's newest update: {:?}",
        f.evidence
    );
    assert!(f.evidence.iter().all(|e| e.starts_with("src@")));
    // The digest of the view the check saw is the digest of the view rebuilt as of that
    // time (what `overseer view --as-of` prints), and differs from another time's.
    let def = dal.views().get("Toy").unwrap();
    let digest_at = |t| {
        let (dal, def) = (dal.clone(), def.clone());
        async move {
            let v = dal.view_dynamic(&def, "a", t).await.unwrap().unwrap();
            overseer_dal::view::digest(&v.view).unwrap()
        }
    };
    assert_eq!(f.view_digest, Some(digest_at(f.eval_us).await));
    assert_ne!(f.view_digest, Some(digest_at(40).await));
    let csv = report.to_csv();
    assert_eq!(csv.lines().count(), 1 + report.failures.len(), "{csv}");
    assert!(report.to_table().contains("never_red (shadow)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_report_is_byte_identical_across_replays_and_page_sizes() {
    let (_dir, dal) = history().await;
    let w = Window::new(0, 100).unwrap();
    let one = json_report(&dal, w, 1000, true).await;
    assert_eq!(one, json_report(&dal, w, 1000, true).await);
    assert_eq!(one, json_report(&dal, w, 1, true).await);
    assert_eq!(one, json_report(&dal, w, 3, true).await);
    assert!(!one.contains("finished"), "no wall clock in the report");
}

/// Runs read their records from the timeline the window is read into, and the reports are
/// those of runs reading every record from the catalog: for windows over the whole history
/// (nothing before them: no base read), windows starting inside it (the records' bases read
/// from the history) and ending before runs' evaluation times (read from the catalog), at
/// every page size, with a budget that evicts, and with runs released before the window is
/// read up to their time (too many pending).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_read_the_timeline_and_report_what_the_catalog_says() {
    let (_dir, dal) = history().await;
    for (from, to) in [(0, 100), (20, 100), (22, 40), (26, 33), (0, 27)] {
        let w = Window::new(from, to).unwrap();
        let catalog = ReplayOptions {
            timeline_bytes: 0,
            ..ReplayOptions::default()
        };
        let (expected, summary) = replay_with(&dal, w, &catalog, true).await;
        assert_eq!(summary.timeline, None);
        for page in [1, 2, 3, 1000] {
            for (timeline_bytes, max_pending_runs) in [(1 << 20, 1000), (700, 1000), (1 << 20, 1)] {
                let options = ReplayOptions {
                    page,
                    timeline_bytes,
                    max_pending_runs,
                    ..ReplayOptions::default()
                };
                let (report, summary) = replay_with(&dal, w, &options, true).await;
                assert_eq!(
                    report, expected,
                    "window {w:?}, page {page}, {timeline_bytes} bytes, {max_pending_runs} pending"
                );
                let stats = summary.timeline.unwrap();
                assert_eq!(
                    stats.updates_applied + stats.bases_read > 0,
                    summary.updates > 0
                );
                if timeline_bytes > 1000 && max_pending_runs > 1 {
                    assert!(stats.reads > 0, "window {w:?}, page {page}: {stats:?}");
                    assert_eq!(stats.bases_read > 0, from > 10, "{w:?}: {stats:?}");
                }
            }
        }
    }
}

/// Two updates of one record at one commit time on two pages: a run evaluated at that
/// time waits for the second page (the first one read does not complete the time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_time_straddling_pages_is_read_whole_before_its_runs() {
    let dir = tempfile::tempdir().unwrap();
    let catalog: DynCatalog = Arc::new(EmbeddedCatalog::open(dir.path().join("c.redb")).unwrap());
    let store: DynStore = Arc::new(MemoryStore::new());
    let mut ch = Changes::new("src");
    let records = vec![
        ch.insert("toys", "e", 10, json!({"type": "ok", "color": "blue"})),
        ch.update("toys", "e", 20, json!({"color": "red"}), &[]),
        ch.update("toys", "e", 20, json!({"color": "green"}), &[]),
    ];
    write_segment(&*store, &*catalog, records, vec![])
        .await
        .unwrap();
    let dal = Dal::new(catalog, store);
    let mut reg = Registry::new();
    reg.check("never_red", |v: &Toy| {
        Verdict::check(v.color != "red", || Verdict::fail("red toy"))
    })
    .grace(Duration::ZERO);
    let w = Window::new(0, 100).unwrap();
    for page in [1, 2, 1000] {
        let sink = CollectSink::new();
        let options = ReplayOptions {
            page,
            ..ReplayOptions::default()
        };
        let summary = replay(&dal, &reg, |_| true, w, &options, &sink, &mut |_| {})
            .await
            .unwrap();
        let runs: Vec<_> = sink
            .runs()
            .into_iter()
            .map(|r| (r.eval_us, r.outcome.label()))
            .collect();
        assert_eq!(runs, [(10, "pass"), (20, "pass")], "page {page}");
        assert!(summary.timeline.unwrap().reads >= 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_are_inclusive_and_an_empty_one_says_so() {
    let (_dir, dal) = history().await;
    let r = json_report(&dal, Window::new(20, 25).unwrap(), 1000, false).await;
    let v: serde_json::Value = serde_json::from_str(&r).unwrap();
    assert_eq!(v["updates"], 3);
    let r = json_report(&dal, Window::new(1000, 2000).unwrap(), 1000, false).await;
    let v: serde_json::Value = serde_json::from_str(&r).unwrap();
    assert_eq!(v["empty"], true);
    assert_eq!(v["runs"], 0);
    assert!(
        v["note"].as_str().unwrap().contains("holds no updates"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_restricts_the_updates_taken() {
    let (_dir, dal) = history().await;
    let reg = registry();
    let sink = CollectSink::new();
    let summary = replay(
        &dal,
        &reg,
        |_| true,
        Window::new(0, 100).unwrap(),
        &ReplayOptions {
            model: Some("other".into()),
            ..ReplayOptions::default()
        },
        &sink,
        &mut |_| {},
    )
    .await
    .unwrap();
    assert_eq!((summary.updates, summary.runs), (0, 0));
    assert!(sink.is_empty());
}

/// Live ≡ replay: the live runner (immediate strategy, so it coalesces) over the same
/// history; every live run's verdict and evidence are replay's at the same (check,
/// subject, time), and every pair failing live fails in replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_verdicts_are_replayed_verdicts_at_the_same_times() {
    use overseer_dal::bus::Bus;
    use overseer_dal::bus::memory::MemoryBus;
    use overseer_prs::check::Strategy;
    use overseer_prs::runner::{Runner, RunnerOptions};
    use std::collections::{BTreeMap, BTreeSet};
    use tokio_util::sync::CancellationToken;

    let (_dir, dal) = history().await;
    let live_registry = || {
        let mut r = registry();
        r.get_mut("not_broken")
            .unwrap()
            .strategy(Strategy::Immediate);
        r
    };
    let bus = Arc::new(MemoryBus::new(1000));
    let options = RunnerOptions {
        model_sources: BTreeMap::from([("toys".into(), vec!["src".into()])]),
        commit_interval: Duration::from_millis(20),
        ..RunnerOptions::default()
    };
    let runner = Runner::new(dal.clone(), Arc::new(live_registry()), options).unwrap();
    let sub = bus.subscribe("live").await.unwrap();
    let live = Arc::new(CollectSink::new());
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner.run(sub, live.clone(), stop.clone()));
    let entries = dal
        .catalog()
        .updates_in_window(0, 100, None, 100)
        .await
        .unwrap();
    let notes: Vec<_> = entries.iter().map(|e| e.notification()).collect();
    bus.publish(&notes).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    // Every subject's last trigger has run (a: 35, b and c: 30, d: 55).
    let want = [("a", 35), ("b", 30), ("c", 30), ("d", 55)];
    while !want.iter().all(|(s, t)| {
        live.runs()
            .iter()
            .any(|r| r.subject == *s && r.eval_us == *t)
    }) {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", live.runs());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    task.await.unwrap().unwrap();

    let reg = live_registry();
    let replayed = CollectSink::new();
    replay(
        &dal,
        &reg,
        |s| s.enabled,
        Window::new(0, 100).unwrap(),
        &ReplayOptions::default(),
        &replayed,
        &mut |_| {},
    )
    .await
    .unwrap();
    let by_time: BTreeMap<_, _> = replayed
        .runs()
        .into_iter()
        .map(|r| ((r.check.clone(), r.subject.clone(), r.eval_us), r))
        .collect();
    for l in live.runs() {
        let r = by_time
            .get(&(l.check.clone(), l.subject.clone(), l.eval_us))
            .unwrap_or_else(|| panic!("live ran {l:?}, replay did not"));
        assert_eq!(r.outcome, l.outcome, "at {}", l.eval_us);
        assert_eq!(r.evidence, l.evidence);
        assert_eq!(r.view_digest, l.view_digest);
        assert_eq!(r.view_digest.is_some(), !r.evidence.is_empty());
    }
    // Every pair failing live fails in replay. Replay may find more: live coalesces the
    // triggers that arrive together (a's three updates ran once, as of 35), so a failure
    // that was already fixed by the last of them (a broken at 25) is seen only by replay,
    // at a time live never evaluated.
    let failing = |runs: &[overseer_prs::runner::RunRecord]| {
        runs.iter()
            .filter(|r| r.outcome.label() == "fail")
            .map(|r| (r.check.clone(), r.subject.clone()))
            .collect::<BTreeSet<_>>()
    };
    let (live, replayed) = (live.runs(), replayed.runs());
    assert!(failing(&live).is_subset(&failing(&replayed)));
    let live_times: BTreeSet<_> = live
        .iter()
        .map(|r| (r.check.clone(), r.subject.clone(), r.eval_us))
        .collect();
    for r in replayed.iter().filter(|r| r.outcome.label() == "fail") {
        let key = (r.check.clone(), r.subject.clone());
        if !failing(&live).contains(&key) {
            assert!(!live_times.contains(&(key.0, key.1, r.eval_us)), "{r:?}");
        }
    }
}
