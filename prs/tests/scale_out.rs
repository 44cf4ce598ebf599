//! Scale-out on the Kafka bus (tansu, a real broker): two runner instances in one consumer
//! group, one of which leaves in the middle of the traffic (a rebalance hands its
//! partitions to the other, which resumes from what the leaver committed), give the same
//! verdicts as one instance. (tansu does not always split the partitions between members
//! that join together; the one that leaves is one that ran some of the traffic, so its
//! partitions always move.) Each instance has its own DAL — its own maintained folds and
//! kept joins — so the new owner of a partition starts from the catalog, never from the
//! other instance's memory. The joins have 8–12 members, so they are kept and extended.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use overseer_dal::Dal;
use overseer_dal::bus::DynBus;
use overseer_dal::bus::kafka::KafkaBus;
use overseer_dal::catalog::DynCatalog;
use overseer_dal::catalog::embedded::EmbeddedCatalog;
use overseer_dal::config::KafkaBusConfig;
use overseer_dal::store::DynStore;
use overseer_dal::store::memory::MemoryStore;
use overseer_dal::update::{IndexEntry, Micros, UpdateNotification};
use overseer_prs::check::{Registry, Strategy};
use overseer_prs::runner::{RunRecord, Runner, RunnerOptions};
use overseer_testkit::sink::{CollectSink, verdicts};
use overseer_testkit::{Server, unique_name};

fn registry() -> Arc<Registry> {
    let mut r = Registry::new();
    r.check("nets_to_zero", common::nets_to_zero)
        .strategy(Strategy::Immediate);
    Arc::new(r)
}

fn options() -> RunnerOptions {
    RunnerOptions {
        model_sources: BTreeMap::from([
            ("payments.transfers".into(), vec!["payments".into()]),
            ("ledger.entries".into(), vec!["ledger".into()]),
            ("payments.assets".into(), vec!["payments".into()]),
        ]),
        commit_interval: Duration::from_millis(20),
        ..RunnerOptions::default()
    }
}

fn notes(entries: &[IndexEntry]) -> Vec<UpdateNotification> {
    entries.iter().map(IndexEntry::notification).collect()
}

/// Waits until the runs collected so far include, for every (check, subject) of `want`,
/// a run at its latest evaluation time.
async fn until_covered(
    sinks: &[&CollectSink],
    want: &BTreeMap<(String, String), Micros>,
) -> Vec<RunRecord> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let runs: Vec<RunRecord> = sinks.iter().flat_map(|s| s.runs()).collect();
        let seen: BTreeSet<(String, String, Micros)> = runs
            .iter()
            .map(|r| (r.check.clone(), r.subject.clone(), r.eval_us))
            .collect();
        let missing: Vec<_> = want
            .iter()
            .filter(|((c, s), t)| !seen.contains(&(c.clone(), s.clone(), **t)))
            .collect();
        if missing.is_empty() {
            return runs;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never ran at their latest time: {missing:?}; ran: {:?}",
            missing
                .iter()
                .map(|((_, s), _)| seen
                    .iter()
                    .filter(|(_, s2, _)| s2 == s)
                    .map(|(_, _, t)| *t)
                    .collect::<Vec<_>>())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_and_a_rebalance_give_the_verdicts_of_one() {
    let tansu = Server::start("tansu");
    let dir = tempfile::tempdir().unwrap();
    let catalog: DynCatalog = Arc::new(EmbeddedCatalog::open(dir.path().join("c.redb")).unwrap());
    let store: DynStore = Arc::new(MemoryStore::new());
    let rounds = common::history(&catalog, &store).await;
    // A topic per phase, so each phase's group sees only what is published to it.
    let connect = || async {
        let bus: DynBus = Arc::new(
            KafkaBus::connect(&KafkaBusConfig {
                topic: unique_name("scale-out"),
                partitions: 4,
                ..KafkaBusConfig::new(tansu.var("KAFKA_BROKERS"))
            })
            .await
            .unwrap(),
        );
        bus
    };
    // The latest evaluation time of each transfer: its last update's or its entries'.
    let mut want: BTreeMap<(String, String), Micros> = BTreeMap::new();
    let dal = Dal::new(catalog.clone(), store.clone());
    for e in rounds.iter().flatten() {
        let subjects: Vec<String> = match e.model.as_str() {
            "payments.transfers" => vec![e.record_id.clone()],
            "ledger.entries" => {
                // The transfer it referenced before and the one it references after (a
                // moved entry re-checks both).
                let mut s = BTreeSet::new();
                for t in [e.event_time_us - 1, e.event_time_us] {
                    let r = dal.record("ledger.entries", &e.record_id, t).await.unwrap();
                    s.extend(r.refs.get("transfer_id").cloned());
                }
                s.into_iter().collect()
            }
            _ => vec![],
        };
        for s in subjects {
            let t = want.entry(("nets_to_zero".into(), s)).or_default();
            *t = (*t).max(e.event_time_us);
        }
    }
    assert_eq!(want.len(), common::TRANSFERS);
    let (half, rest) = rounds.split_at(rounds.len() / 2);

    // One instance, everything.
    let one = {
        let bus = connect().await;
        let group = unique_name("one");
        let sink = Arc::new(CollectSink::new());
        let stop = CancellationToken::new();
        let runner = Runner::new(
            Dal::new(catalog.clone(), store.clone()),
            registry(),
            options(),
        )
        .unwrap();
        let task = tokio::spawn(runner.run(
            bus.subscribe(&group).await.unwrap(),
            sink.clone(),
            stop.clone(),
        ));
        for r in &rounds {
            bus.publish(&notes(r)).await.unwrap();
        }
        let runs = until_covered(&[&sink], &want).await;
        stop.cancel();
        task.await.unwrap().unwrap();
        runs
    };

    // Two instances; one leaves after the first half of the traffic.
    let bus = connect().await;
    let group = unique_name("two");
    let (sink_a, sink_b) = (Arc::new(CollectSink::new()), Arc::new(CollectSink::new()));
    let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
    // Both join the group before anything is published (the broker splits the partitions
    // between the members of its first generation).
    let (sub_a, sub_b) = futures::join!(bus.subscribe(&group), bus.subscribe(&group));
    let start = |sub, sink: Arc<CollectSink>, stop: CancellationToken| {
        let (catalog, store) = (catalog.clone(), store.clone());
        tokio::spawn(async move {
            // Its own DAL: its own folds and joins.
            let runner = Runner::new(Dal::new(catalog, store), registry(), options()).unwrap();
            runner.run(sub, sink, stop).await
        })
    };
    let task_a = start(sub_a.unwrap(), sink_a.clone(), stop_a.clone());
    let task_b = start(sub_b.unwrap(), sink_b.clone(), stop_b.clone());
    for r in half {
        bus.publish(&notes(r)).await.unwrap();
    }
    // Some of it has run before one leaves: the one that ran some (the broker may have
    // given one member every partition), so its partitions move to the other.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while sink_a.is_empty() && sink_b.is_empty() {
        assert!(
            !task_a.is_finished() && !task_b.is_finished(),
            "an instance stopped early"
        );
        assert!(tokio::time::Instant::now() < deadline, "nothing ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ((sink_a, stop_a, task_a), (sink_b, stop_b, task_b)) = if sink_b.is_empty() {
        ((sink_b, stop_b, task_b), (sink_a, stop_a, task_a))
    } else {
        ((sink_a, stop_a, task_a), (sink_b, stop_b, task_b))
    };
    // `b` ran some of the first half and leaves; `a` stays.
    stop_b.cancel();
    task_b.await.unwrap().unwrap();
    let left_after = sink_b.len();
    for r in rest {
        bus.publish(&notes(r)).await.unwrap();
    }
    let two = until_covered(&[&sink_a, &sink_b], &want).await;
    stop_a.cancel();
    task_a.await.unwrap().unwrap();
    assert!(left_after > 0);
    let max_eval = |s: &CollectSink| s.runs().iter().map(|r| r.eval_us).max();
    assert!(
        sink_a.runs().iter().any(|r| r.eval_us > half_end(half)),
        "the remaining instance ran the second half: it ran {} (newest {:?}), the one that \
         left {} (newest {:?}); the first half ends at {}",
        sink_a.len(),
        max_eval(&sink_a),
        sink_b.len(),
        max_eval(&sink_b),
        half_end(half)
    );

    let all_one = verdicts(&one);
    let all_two = verdicts(&two);
    for (k, v) in &all_two {
        if let Some(w) = all_one.get(k) {
            assert_eq!(v, w, "{k:?}: two instances and one disagree");
        }
    }
    let at_latest = |all: &BTreeMap<(String, String, Micros), String>| {
        want.iter()
            .map(|((c, s), t)| (s.clone(), all[&(c.clone(), s.clone(), *t)].clone()))
            .collect::<BTreeMap<_, _>>()
    };
    let latest = at_latest(&all_one);
    assert_eq!(
        latest,
        at_latest(&all_two),
        "every transfer's latest verdict"
    );
    // The planted faults: every fourth transfer ends unbalanced, the others balanced.
    let failing: BTreeSet<String> = latest
        .iter()
        .filter(|(_, v)| v.starts_with("fail"))
        .map(|(s, _)| s.clone())
        .collect();
    let planted: BTreeSet<String> = (0..common::TRANSFERS)
        .filter(|i| i % 4 == 0)
        .map(|i| format!("T{i:02}"))
        .collect();
    assert_eq!(failing, planted);
}

/// The newest commit time of the first half of the rounds.
fn half_end(half: &[Vec<IndexEntry>]) -> Micros {
    half.iter()
        .flatten()
        .map(|e| e.event_time_us)
        .max()
        .unwrap_or(Micros::MIN)
}
