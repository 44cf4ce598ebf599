//! The Kafka bus against a real broker (tansu, started by `scripts/tansu.sh`). Each test
//! has its own topic and groups; a broker that cannot start fails the test.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use overseer_dal::Bus;
use overseer_dal::bus::kafka::KafkaBus;
use overseer_dal::bus::{Delivered, Subscription};
use overseer_dal::config::KafkaBusConfig;
use overseer_dal::update::UpdateNotification;
use overseer_testkit::{Server, unique_name};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

/// A bus on a fresh topic, and the topic's name.
async fn connect(tansu: &Server, partitions: i32) -> (KafkaBus, String) {
    let cfg = KafkaBusConfig {
        topic: unique_name("events"),
        partitions,
        ..KafkaBusConfig::new(tansu.var("KAFKA_BROKERS"))
    };
    let bus = KafkaBus::connect(&cfg)
        .await
        .unwrap_or_else(|e| panic!("connect to tansu at {}: {e}", cfg.brokers));
    (bus, cfg.topic)
}

fn note(i: i64) -> UpdateNotification {
    UpdateNotification {
        model: "m".into(),
        record_id: format!("r{i}"),
        source: "s".into(),
        position: format!("{i:06}"),
        event_time_us: i,
        segment_seq: 1,
        ..Default::default()
    }
}

/// Receives until `done` says so, failing after 30 s without progress.
async fn recv_until(
    sub: &mut Box<dyn Subscription>,
    mut done: impl FnMut(&[Delivered]) -> bool,
) -> Vec<Delivered> {
    let mut got = Vec::new();
    while !done(&got) {
        let batch = tokio::time::timeout(Duration::from_secs(30), sub.recv(64))
            .await
            .unwrap_or_else(|_| panic!("no notification within 30 s; {} so far", got.len()))
            .unwrap();
        assert!(!batch.is_empty(), "recv returns at least one");
        got.extend(batch);
    }
    got
}

/// Whatever else arrives within `quiet`.
async fn drain(sub: &mut Box<dyn Subscription>, quiet: Duration) -> Vec<Delivered> {
    let mut got = Vec::new();
    while let Ok(batch) = tokio::time::timeout(quiet, sub.recv(64)).await {
        got.extend(batch.unwrap());
    }
    got
}

#[tokio::test(flavor = "multi_thread")]
async fn tansu_passes_the_bus_suite() {
    let tansu = Server::start("tansu");
    let (bus, _) = connect(&tansu, 4).await;
    overseer_testkit::conformance::bus_suite(&bus, &unique_name("group")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_group_resumes_after_what_it_committed() {
    let tansu = Server::start("tansu");
    let (bus, _) = connect(&tansu, 4).await;
    let group = unique_name("group");
    let mut sub = bus.subscribe(&group).await.unwrap();
    let notes: Vec<_> = (0..100).map(note).collect();
    // One publish per notification, so that every offset starts a record batch: tansu 0.6
    // answers a fetch from an offset inside a batch with the batches *after* it, silently
    // skipping the rest of that batch (Kafka returns the whole batch and the client skips
    // what precedes the offset). Resuming mid-batch would lose notifications on tansu only.
    for n in &notes {
        bus.publish(std::slice::from_ref(n)).await.unwrap();
    }

    let first = recv_until(&mut sub, |g| g.len() >= 100).await;
    assert_eq!(first.len(), 100, "each notification once");
    let mut per_partition: BTreeMap<i32, Vec<&Delivered>> = BTreeMap::new();
    for d in &first {
        per_partition.entry(d.tag.partition).or_default().push(d);
    }
    assert!(per_partition.len() > 1, "keys spread over partitions");
    // Commit the first half of every partition (cumulatively: its last tag), 50 in all
    // give or take the rounding per partition.
    let mut committed = BTreeSet::new();
    let mut tags = Vec::new();
    for ds in per_partition.values() {
        assert!(
            ds.windows(2).all(|w| w[0].tag.offset < w[1].tag.offset),
            "partition order"
        );
        let half = &ds[..ds.len() / 2];
        committed.extend(half.iter().map(|d| d.note.position.clone()));
        tags.extend(half.last().map(|d| d.tag.clone()));
    }
    sub.commit(&tags).await.unwrap();
    drop(sub);

    let expected: BTreeSet<String> = notes
        .iter()
        .map(|n| n.position.clone())
        .filter(|p| !committed.contains(p))
        .collect();
    let mut sub = bus.subscribe(&group).await.unwrap();
    let mut again = recv_until(&mut sub, |g| {
        let seen: BTreeSet<&String> = g.iter().map(|d| &d.note.position).collect();
        expected.iter().all(|p| seen.contains(p))
    })
    .await;
    again.extend(drain(&mut sub, Duration::from_secs(2)).await);
    let seen: BTreeSet<String> = again.iter().map(|d| d.note.position.clone()).collect();
    assert!(
        expected.is_subset(&seen),
        "every uncommitted notification comes again"
    );
    let replayed: Vec<_> = seen.intersection(&committed).collect();
    assert!(
        replayed.is_empty(),
        "nothing committed comes back after a clean hand-over: {replayed:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_message_is_skipped() {
    let tansu = Server::start("tansu");
    let (bus, topic) = connect(&tansu, 1).await;
    let mut sub = bus.subscribe(&unique_name("group")).await.unwrap();
    let raw: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", tansu.var("KAFKA_BROKERS"))
        .create()
        .unwrap();
    raw.send(
        FutureRecord::<[u8], [u8]>::to(&topic).payload(b"\xff\xff\xff".as_slice()),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    raw.send(
        FutureRecord::<[u8], [u8]>::to(&topic).key(b"tombstone".as_slice()),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    bus.publish(&[note(1)]).await.unwrap();
    let got = recv_until(&mut sub, |g| !g.is_empty()).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].note, note(1));
    assert_eq!(got[0].tag.offset, 2, "after the two skipped messages");
    sub.commit(&[got[0].tag.clone()]).await.unwrap();
}

#[tokio::test]
async fn a_session_timeout_out_of_bounds_is_refused() {
    for ms in [0, 999, 3_600_001] {
        let err = KafkaBus::connect(&KafkaBusConfig {
            session_timeout_ms: ms,
            ..KafkaBusConfig::new("127.0.0.1:1")
        })
        .await
        .expect_err("refused before any broker is asked");
        assert!(err.to_string().contains("bus.session_timeout_ms"), "{err}");
    }
}
