//! The Kafka source against a real broker (tansu, started by `scripts/tansu.sh`): order,
//! acknowledgement-driven commits, redelivery after a restart, tombstones, one lane per
//! partition, and what moves the watermark: the connector's heartbeats, or with the opt-in
//! the partitions' ends, never the transport alone.
//! Each test has its own topic and group; a broker that cannot start fails the test.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use overseer_dal::update::now_us;
use overseer_ingestion::config::{Format, KafkaSourceConfig};
use overseer_ingestion::source::kafka::KafkaSource;
use overseer_ingestion::source::{
    AckToken, Acks, Evidence, Source, SourceContext, SourceEvent, SourceMsg,
};
use overseer_testkit::{Server, unique_name};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const PARTITIONS: i32 = 4;
const HEARTBEAT: Duration = Duration::from_millis(200);

async fn create_topic(brokers: &str, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let res = admin
        .create_topics(
            [&NewTopic::new(
                topic,
                PARTITIONS,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new().request_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .unwrap();
    res.into_iter().for_each(|r| {
        r.unwrap_or_else(|e| panic!("create topic {topic}: {e:?}"));
    });
}

/// A producer that puts every message in its own record batch: tansu 0.6 answers a fetch
/// from an offset inside a batch with the batches after it, skipping the rest of that
/// batch, so a group resuming mid-batch would miss messages on tansu (not on Kafka).
fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("batch.num.messages", "1")
        .set("linger.ms", "0")
        .create()
        .unwrap()
}

/// Produces `n` messages round-robin over the partitions: message i goes to partition
/// i % PARTITIONS with key `k{i}` and payload `{"i":i}`.
async fn produce(brokers: &str, topic: &str, n: usize) {
    let p = producer(brokers);
    let msgs: Vec<(String, String)> = (0..n)
        .map(|i| (format!("k{i}"), format!("{{\"i\":{i}}}")))
        .collect();
    let mut pending = Vec::new();
    for (i, (k, v)) in msgs.iter().enumerate() {
        let rec = FutureRecord::to(topic)
            .partition(i as i32 % PARTITIONS)
            .key(k.as_str())
            .payload(v.as_str());
        pending.push(p.send(rec, Duration::from_secs(30)));
    }
    for d in futures::future::join_all(pending).await {
        d.unwrap_or_else(|(e, _)| panic!("produce: {e}"));
    }
}

struct Running {
    rx: mpsc::Receiver<SourceMsg>,
    /// The lanes last declared through [`Running::next`].
    lanes: Vec<(u32, String)>,
    acks: Arc<Acks>,
    shutdown: CancellationToken,
    task: JoinHandle<overseer_ingestion::Result<()>>,
}

fn start(brokers: &str, topic: &str, group: &str) -> Running {
    start_with(brokers, topic, group, &Opts::default())
}

/// How a test's source is set up beyond its topic and group.
#[derive(Default)]
struct Opts<'a> {
    props: &'a [(&'a str, &'a str)],
    caught_up_means_now: bool,
    heartbeat_topic: Option<String>,
}

fn start_with(brokers: &str, topic: &str, group: &str, opts: &Opts<'_>) -> Running {
    let mut properties = BTreeMap::from([("session.timeout.ms".into(), "10000".into())]);
    properties.extend(
        opts.props
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let cfg = KafkaSourceConfig {
        brokers: brokers.to_owned(),
        topics: vec![topic.to_owned()],
        group: group.to_owned(),
        auto_offset_reset: "earliest".into(),
        properties,
        properties_env: BTreeMap::new(),
        heartbeat_topic: opts.heartbeat_topic.clone(),
    };
    let source: Box<dyn Source> = Box::new(
        KafkaSource::new(cfg)
            .unwrap()
            .with_format(Format::DebeziumPostgres),
    );
    // A small channel: the source spends most of the test blocked on it (backpressure).
    let (tx, rx) = mpsc::channel(64);
    let acks = Acks::new();
    let shutdown = CancellationToken::new();
    let ctx = SourceContext {
        name: "kafka-test".into(),
        tx,
        acks: acks.clone(),
        shutdown: shutdown.clone(),
        resume: None,
        heartbeat: HEARTBEAT,
        caught_up_means_now: opts.caught_up_means_now,
    };
    Running {
        rx,
        lanes: Vec::new(),
        acks,
        shutdown,
        task: tokio::spawn(source.run(ctx)),
    }
}

impl Running {
    async fn next(&mut self) -> SourceMsg {
        let m = tokio::time::timeout(Duration::from_secs(30), self.rx.recv())
            .await
            .expect("the source sends something within 30 s")
            .expect("the source is running");
        if let SourceMsg::Lanes(l) = &m {
            self.lanes = l.clone();
        }
        m
    }

    /// Events until `done`, skipping heartbeats.
    async fn events_until(
        &mut self,
        mut done: impl FnMut(&[SourceEvent]) -> bool,
    ) -> Vec<SourceEvent> {
        let mut got = Vec::new();
        while !done(&got) {
            if let SourceMsg::Event(e) = self.next().await {
                got.push(e);
            }
        }
        got
    }

    /// The next heartbeat, skipping lane declarations (no event may come first); returns
    /// its watermark and evidence.
    async fn heartbeat(&mut self) -> (i64, Evidence) {
        loop {
            match self.next().await {
                SourceMsg::Heartbeat {
                    watermark_us,
                    evidence,
                    ..
                } => return (watermark_us, evidence),
                SourceMsg::Lanes(_) => {}
                SourceMsg::Event(e) => panic!("unexpected event while caught up: {e:?}"),
            }
        }
    }

    async fn stop(self) -> Vec<SourceMsg> {
        let Running {
            mut rx,
            shutdown,
            task,
            ..
        } = self;
        shutdown.cancel();
        let mut rest = Vec::new();
        let res = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(m) = rx.recv().await {
                rest.push(m);
            }
            task.await.unwrap()
        })
        .await
        .expect("the source stops within 30 s");
        res.expect("the source stops cleanly");
        rest
    }
}

fn partition_offset(e: &SourceEvent) -> (i32, i64) {
    match &e.ack {
        Some(AckToken::Kafka {
            partition,
            next_offset,
            ..
        }) => (*partition, next_offset - 1),
        other => panic!("a kafka event acks with a kafka token: {other:?}"),
    }
}

/// The group's committed offsets, per partition.
async fn committed(brokers: &str, topic: &str, group: &str) -> BTreeMap<i32, Offset> {
    let (brokers, topic, group) = (brokers.to_owned(), topic.to_owned(), group.to_owned());
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", &group)
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_range(&topic, 0, PARTITIONS - 1);
        c.committed_offsets(tpl, Duration::from_secs(10))
            .unwrap()
            .elements()
            .iter()
            .map(|e| (e.partition(), e.offset()))
            .collect()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_redelivers_what_was_not_acknowledged() {
    let tansu = Server::start("tansu");
    let brokers = tansu.var("KAFKA_BROKERS");
    let topic = unique_name("cdc");
    let group = unique_name("ingest");
    create_topic(brokers, &topic).await;
    produce(brokers, &topic, 1000).await;
    let per_partition = 1000 / PARTITIONS as i64;

    // First run: everything, in order per partition. This test writes the topic, so its
    // producer has no upstream lag: caught up means now.
    let opts = Opts {
        caught_up_means_now: true,
        ..Opts::default()
    };
    let mut run = start_with(brokers, &topic, &group, &opts);
    let events = run.events_until(|g| g.len() >= 1000).await;
    let caught_up_at = now_us() - HEARTBEAT.as_micros() as i64 * 10;
    let mut offsets: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for e in &events {
        let (p, o) = partition_offset(e);
        offsets.entry(p).or_default().push(o);
        assert_eq!(e.position, format!("{topic}/{p:05}/{o:020}"));
        assert_eq!(e.checkpoint.as_deref(), Some(e.position.as_str()));
        let i = o * PARTITIONS as i64 + p as i64;
        assert_eq!(e.key.as_deref(), Some(format!("k{i}").as_bytes()));
        assert_eq!(&e.raw[..], format!("{{\"i\":{i}}}").as_bytes());
        assert_eq!((e.context.as_ref(), e.commit_time_us), (None, None));
    }
    assert_eq!(offsets.len(), PARTITIONS as usize);
    let mut lanes: BTreeMap<i32, BTreeSet<u32>> = BTreeMap::new();
    for e in &events {
        lanes
            .entry(partition_offset(e).0)
            .or_default()
            .insert(e.lane);
    }
    let distinct: BTreeSet<u32> = lanes.values().flatten().copied().collect();
    assert!(
        lanes.values().all(|l| l.len() == 1) && distinct.len() == PARTITIONS as usize,
        "one lane per partition, each its own: {lanes:?}"
    );
    for (p, os) in &offsets {
        assert_eq!(
            os,
            &(0..per_partition).collect::<Vec<_>>(),
            "partition {p}: every message once, in order"
        );
    }
    let positions: Vec<&str> = events.iter().map(|e| e.position.as_str()).collect();
    let mut sorted = positions.clone();
    sorted.sort();
    let mut by_partition = positions.clone();
    by_partition.sort_by_key(|p| p.rsplit_once('/').map(|(tp, _)| tp.to_owned()));
    assert_eq!(sorted, by_partition, "positions sort in offset order");

    // Caught up: heartbeats, not before the last event.
    let (w1, e1) = run.heartbeat().await;
    let (w2, _) = run.heartbeat().await;
    assert!(
        w1 >= caught_up_at && w2 > w1,
        "heartbeats carry the current time"
    );
    assert_eq!(e1, Evidence::CaughtUp);

    // Acknowledge the first half of every partition; the group commits exactly that.
    let half = per_partition / 2;
    let tokens: Vec<AckToken> = events
        .iter()
        .filter(|e| partition_offset(e).1 == half - 1)
        .map(|e| e.ack.clone().unwrap())
        .collect();
    assert_eq!(tokens.len(), PARTITIONS as usize);
    run.acks.ack(tokens);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let c = committed(brokers, &topic, &group).await;
        if c.values().all(|o| *o == Offset::Offset(half)) && c.len() == PARTITIONS as usize {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "acknowledged offsets are committed while running: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rest = run.stop().await;
    assert!(
        rest.iter()
            .all(|m| matches!(m, SourceMsg::Heartbeat { .. } | SourceMsg::Lanes(_))),
        "nothing new after catching up"
    );

    // Second run, same group: the unacknowledged halves again, nothing acknowledged.
    let mut run = start_with(brokers, &topic, &group, &opts);
    let want: BTreeSet<(i32, i64)> = (0..PARTITIONS)
        .flat_map(|p| (half..per_partition).map(move |o| (p, o)))
        .collect();
    let again = run
        .events_until(|g| {
            let seen: BTreeSet<_> = g.iter().map(partition_offset).collect();
            want.is_subset(&seen)
        })
        .await;
    let seen: Vec<(i32, i64)> = again.iter().map(partition_offset).collect();
    let early: Vec<_> = seen.iter().filter(|(_, o)| *o < half).collect();
    assert!(early.is_empty(), "acknowledged events come back: {early:?}");
    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    for (p, o) in &seen {
        if let Some(prev) = last.insert(*p, *o) {
            assert!(*o > prev, "partition {p} in order on redelivery");
        }
    }
    run.heartbeat().await;
    // Nothing new was acknowledged: the committed offsets stay.
    run.stop().await;
    let c = committed(brokers, &topic, &group).await;
    assert!(c.values().all(|o| *o == Offset::Offset(half)), "{c:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tombstones_pass_through_and_an_idle_source_with_the_opt_in_claims_now() {
    let tansu = Server::start("tansu");
    let brokers = tansu.var("KAFKA_BROKERS");
    let topic = unique_name("cdc");
    let group = unique_name("ingest");
    create_topic(brokers, &topic).await;

    // An empty topic: caught up from the start. Its producer has no upstream lag (this
    // test writes it), which the source is told.
    let opts = Opts {
        caught_up_means_now: true,
        ..Opts::default()
    };
    let mut run = start_with(brokers, &topic, &group, &opts);
    let (w, evidence) = run.heartbeat().await;
    assert!(w > 0);
    assert_eq!(evidence, Evidence::CaughtUp);

    let p = producer(brokers);
    p.send(
        FutureRecord::<str, [u8]>::to(&topic)
            .partition(2)
            .key("gone"),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let e = run.events_until(|g| !g.is_empty()).await.remove(0);
    assert!(
        e.raw.is_empty(),
        "a tombstone arrives with an empty payload"
    );
    assert_eq!(e.key.as_deref(), Some(b"gone".as_slice()));
    assert_eq!(
        e.ack,
        Some(AckToken::Kafka {
            topic: topic.clone(),
            partition: 2,
            next_offset: 1
        })
    );
    run.acks.ack([e.ack.clone().unwrap()]);
    let (after, _) = run.heartbeat().await;
    assert!(after > w);
    run.stop().await;
    let c = committed(brokers, &topic, &group).await;
    assert_eq!(
        c.get(&2),
        Some(&Offset::Offset(1)),
        "acknowledged on shutdown at the latest"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_partitions_are_committed_before_another_member_takes_them() {
    let tansu = Server::start("tansu");
    let brokers = tansu.var("KAFKA_BROKERS");
    let topic = unique_name("cdc");
    let group = unique_name("ingest");
    create_topic(brokers, &topic).await;
    produce(brokers, &topic, 400).await;
    let per_partition = 400 / PARTITIONS as i64;
    let half = per_partition / 2;

    // A reads everything; auto-commit is too slow to matter here, so only the commit on
    // revocation can move the group's offsets.
    // Heartbeats (caught up, this test writing the topic) mark the points where A has
    // read everything.
    let opts = Opts {
        props: &[("auto.commit.interval.ms", "600000")],
        caught_up_means_now: true,
        ..Opts::default()
    };
    let mut a = start_with(brokers, &topic, &group, &opts);
    let events = a.events_until(|g| g.len() >= 400).await;
    a.heartbeat().await;
    a.acks.ack(
        events
            .iter()
            .filter(|e| partition_offset(e).1 == half - 1)
            .map(|e| e.ack.clone().unwrap()),
    );
    a.heartbeat().await;
    assert!(
        committed(brokers, &topic, &group)
            .await
            .values()
            .all(|o| *o == Offset::Invalid),
        "nothing committed before the rebalance"
    );

    // B joins: A's partitions are revoked (and committed), then split between them; each
    // starts its share from the acknowledged half.
    let mut b = start(brokers, &topic, &group);
    let want: BTreeSet<(i32, i64)> = (0..PARTITIONS)
        .flat_map(|p| (half..per_partition).map(move |o| (p, o)))
        .collect();
    let mut seen_a = Vec::new();
    let mut seen_b = Vec::new();
    let (mut lanes_a, mut lanes_b) = (a.lanes.clone(), b.lanes.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let all: BTreeSet<(i32, i64)> = seen_a.iter().chain(&seen_b).copied().collect();
        if want.is_subset(&all) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the second halves arrive again within 60 s"
        );
        tokio::select! {
            Some(m) = a.rx.recv() => match m {
                SourceMsg::Event(e) => seen_a.push(partition_offset(&e)),
                SourceMsg::Lanes(l) => lanes_a = l,
                SourceMsg::Heartbeat { .. } => {}
            },
            Some(m) = b.rx.recv() => match m {
                SourceMsg::Event(e) => seen_b.push(partition_offset(&e)),
                SourceMsg::Lanes(l) => lanes_b = l,
                SourceMsg::Heartbeat { .. } => {}
            },
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    // Each declares every partition of the topic as a lane, whoever reads it: the
    // catalog keeps one watermark for the source, so neither may claim past a partition
    // the other reads.
    let names = |l: &[(u32, String)]| l.iter().map(|(_, n)| n.clone()).collect::<BTreeSet<_>>();
    let all: BTreeSet<String> = (0..PARTITIONS).map(|p| format!("{topic}/{p}")).collect();
    loop {
        let (na, nb) = (names(&lanes_a), names(&lanes_b));
        if na == all && nb == all {
            break;
        }
        assert!(
            Instant::now() < deadline + Duration::from_secs(30),
            "both members declare every partition as a lane: {na:?} {nb:?}"
        );
        tokio::select! {
            Some(m) = a.rx.recv() => if let SourceMsg::Lanes(l) = m { lanes_a = l },
            Some(m) = b.rx.recv() => if let SourceMsg::Lanes(l) = m { lanes_b = l },
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    // A's claims (it is caught up, with the opt-in) cover only partitions A reads.
    let parts = |seen: &[(i32, i64)]| {
        seen.iter()
            .map(|(p, _)| *p as u32)
            .collect::<BTreeSet<u32>>()
    };
    let (mine, theirs) = (parts(&seen_a), parts(&seen_b));
    let deadline = Instant::now() + Duration::from_secs(30);
    let covered = loop {
        assert!(Instant::now() < deadline, "A claims within 30 s");
        match tokio::time::timeout(Duration::from_secs(1), a.rx.recv()).await {
            Ok(Some(SourceMsg::Heartbeat { lanes: Some(l), .. })) => break l,
            Ok(Some(SourceMsg::Event(e))) => panic!("nothing new for A: {e:?}"),
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => panic!("A stopped"),
        }
    };
    let covered: BTreeSet<u32> = covered.into_iter().collect();
    assert!(
        !covered.is_empty() && covered.is_subset(&mine) && covered.is_disjoint(&theirs),
        "A's claim covers {covered:?}; A reads {mine:?}, B {theirs:?}"
    );
    let early: Vec<_> = seen_a
        .iter()
        .chain(&seen_b)
        .filter(|(_, o)| *o < half)
        .collect();
    assert!(early.is_empty(), "acknowledged events come back: {early:?}");
    let parts_b: BTreeSet<i32> = seen_b.iter().map(|(p, _)| *p).collect();
    assert!(!parts_b.is_empty(), "the new member got partitions");
    let c = committed(brokers, &topic, &group).await;
    assert!(c.values().all(|o| *o == Offset::Offset(half)), "{c:?}");
    a.stop().await;
    b.stop().await;
}

/// Caught up at the transport is not evidence: an idle source with no opt-in sends no
/// heartbeat, however long it sits at the end of its partitions. Its connector's
/// heartbeats are: each is passed on (after it settles) for the partitions at their end;
/// one that cannot be read is reported and ignored.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_source_claims_nothing_but_its_connectors_heartbeats() {
    let tansu = Server::start("tansu");
    let brokers = tansu.var("KAFKA_BROKERS");
    let topic = unique_name("cdc");
    let beats = unique_name("__debezium-heartbeat");
    let group = unique_name("ingest");
    create_topic(brokers, &topic).await;
    create_topic(brokers, &beats).await;
    produce(brokers, &topic, 8).await;
    let opts = Opts {
        heartbeat_topic: Some(beats.clone()),
        ..Opts::default()
    };
    let mut run = start_with(brokers, &topic, &group, &opts);

    // No lane before the topic's partitions are known, then the four of them.
    match run.next().await {
        SourceMsg::Lanes(l) => assert!(l.is_empty(), "{l:?}"),
        other => panic!("the first message declares no lanes yet: {other:?}"),
    }
    let mut events = 0;
    let mut lanes = Vec::new();
    let take = |m: Option<SourceMsg>, events: &mut usize, lanes: &mut Vec<(u32, String)>| match m {
        Some(SourceMsg::Event(_)) => *events += 1,
        Some(SourceMsg::Lanes(l)) => *lanes = l,
        Some(hb @ SourceMsg::Heartbeat { .. }) => {
            panic!("caught up at the transport is not evidence: {hb:?}")
        }
        None => panic!("the source stopped"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while events < 8 || lanes.is_empty() {
        assert!(
            Instant::now() < deadline,
            "8 events and the lanes within 30 s"
        );
        if let Ok(m) = tokio::time::timeout(HEARTBEAT, run.rx.recv()).await {
            take(m, &mut events, &mut lanes);
        }
    }
    // Caught up now, and quiet for many heartbeat intervals: still no claim.
    let quiet_until = Instant::now() + HEARTBEAT * 15;
    while Instant::now() < quiet_until {
        if let Ok(m) = tokio::time::timeout(HEARTBEAT, run.rx.recv()).await {
            take(m, &mut events, &mut lanes);
        }
    }
    assert_eq!(events, 8);
    let names: Vec<&str> = lanes.iter().map(|(_, n)| n.as_str()).collect();
    let want: Vec<String> = (0..PARTITIONS).map(|p| format!("{topic}/{p}")).collect();
    assert_eq!(names, want);

    // The connector's heartbeats, as Debezium writes them with the JSON converter's
    // schemas, every 300 ms as a connector would (the first ones may come before the
    // heartbeat consumer, which starts at the topic's end, has its partitions). One that
    // cannot be read comes first.
    let p = producer(brokers);
    let send = |value: &'static str| {
        let p = p.clone();
        let beats = beats.clone();
        async move {
            p.send(
                FutureRecord::to(&beats)
                    .partition(0)
                    .key("{\"serverName\":\"dbz\"}")
                    .payload(value),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let got = loop {
        assert!(
            Instant::now() < deadline,
            "a connector heartbeat is passed on within 30 s"
        );
        send("not json").await;
        send(r#"{"schema":{"type":"struct"},"payload":{"ts_ms":1700000000123}}"#).await;
        match tokio::time::timeout(Duration::from_millis(300), run.rx.recv()).await {
            Ok(Some(SourceMsg::Heartbeat {
                watermark_us,
                evidence,
                lanes,
            })) => break (watermark_us, evidence, lanes),
            Ok(Some(SourceMsg::Event(e))) => panic!("a heartbeat is not an event: {e:?}"),
            Ok(Some(SourceMsg::Lanes(_))) | Err(_) => {}
            Ok(None) => panic!("the source stopped"),
        }
    };
    assert_eq!((got.0, got.1), (1_700_000_000_123_000, Evidence::Heartbeat));
    // It covers the partitions read here that are at their end: all four.
    let mut covered = got
        .2
        .expect("a connector heartbeat names the partitions it covers");
    covered.sort_unstable();
    let declared: Vec<u32> = lanes.iter().map(|(l, _)| *l).collect();
    assert_eq!(covered, declared);
    run.stop().await;
}
