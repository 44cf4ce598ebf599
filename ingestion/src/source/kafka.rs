//! The Kafka source: topics read through a consumer group, at-least-once.
//!
//! ```text
//!  topic t, partition p ──> consumer of t ──> SourceEvent, ack (t, p, o+1) ──> ctx.tx
//!                           (group G)                                            │
//!                                            pipeline: segment PUT, catalog commit
//!                                                                                │
//!  G's committed offsets ◄── commit ◄── store_offsets(t, p, o+1) ◄── ctx.acks ◄──┘
//!                              ├ auto, every 1 s (stored offsets only)
//!                              ├ sync, when partitions are revoked
//!                              └ sync, on shutdown
//! ```
//!
//! # Progress tracking
//!
//! The group's committed offsets are this source's only resume point (`ctx.resume` is
//! informational): a restart, or another instance taking a partition over, starts from
//! them. An offset may be committed only past events that are durable in the object store
//! *and* indexed in the catalog, which is exactly what [`Acks`] reports. Hence:
//!
//! - `enable.auto.offset.store=false`: librdkafka never stores an offset by itself (rust-
//!   rdkafka's `examples/at_least_once.rs`). This source stores `next_offset` of an
//!   [`AckToken::Kafka`] only when the pipeline reports it, and never moves a stored
//!   offset backwards.
//! - Committing is librdkafka's auto-commit of *stored* offsets (every second unless
//!   `auto.commit.interval.ms` says otherwise), plus a synchronous commit of what is
//!   acknowledged when partitions are revoked (before another member can fetch from the
//!   committed offset) and on shutdown.
//! - What was delivered but not acknowledged when a partition is revoked, or when the
//!   process stops or crashes, is delivered again: at-least-once, made harmless by the
//!   idempotent indexing of `(source, position)`.
//!
//! Positions are `topic/ppppp/oooooooooooooooooooo` (partition and offset zero-padded), so
//! they sort in offset order within a partition.
//!
//! # Freshness
//!
//! Each partition is a lane ([`crate::freshness`]): the pipeline takes the watermark from
//! the commit times each partition delivered, the minimum over *every* partition of the
//! topic. The source declares them ([`SourceMsg::Lanes`]) from the topic's metadata: none
//! at start, so no event counts before all partitions are known, and again after a
//! rebalance if the topic grew. A partition this instance does not read (another member of
//! the group reads it) holds this instance's own watermark at what it last saw of it; the
//! pipeline also records a claim per partition in the catalog, and the catalog raises the
//! source's watermark to the lowest partition's claim, so several instances splitting the
//! topic move it together.
//!
//! Being at the end of a partition says nothing about the connector upstream, so it moves
//! the watermark only with evidence:
//! - `heartbeat_topic`: the connector's heartbeats (Debezium's `ts_ms`, the MongoDB
//!   connector's post-batch resume token), read from the topic's end by every instance.
//!   The newest one is passed on as [`SourceMsg::Heartbeat`] for the partitions read here
//!   that are at their end once it has waited [`BEAT_SETTLE`] (for what the connector
//!   wrote before it to other partitions to be fetched); a partition that is behind gets
//!   its evidence from its events, or from a later heartbeat;
//! - `caught_up_means_now` (opt-in, for producers with no upstream lag): the partitions
//!   read here that are at their end, with nothing received for `ctx.heartbeat`, are
//!   complete up to the current time.
//!
//! With `enable.partition.eof`, librdkafka reports when a partition's end is reached. An
//! end-of-partition report names the partition but not the topic, which is why there is
//! one consumer (one group member) per topic: each report is then unambiguous.
//!
//! A message without a payload (a tombstone) is passed on with empty `raw`: the consumer
//! quarantines it with its reason, and its offset is acknowledged like any other.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use overseer_dal::update::{Micros, now_us};

use super::{AckToken, Acks, Evidence, Lane, Source, SourceContext, SourceEvent, SourceMsg};
use crate::config::{Format, KafkaSourceConfig};
use crate::{Error, Result};

/// librdkafka properties this source sets itself; `properties` may not override them
/// (each has its own config key, or at-least-once depends on it).
const RESERVED: &[(&str, &str)] = &[
    ("bootstrap.servers", "brokers"),
    ("group.id", "group"),
    ("auto.offset.reset", "auto_offset_reset"),
    (
        "enable.auto.offset.store",
        "offsets are stored only once durable",
    ),
    ("enable.auto.commit", "stored offsets are auto-committed"),
    ("enable.partition.eof", "it drives heartbeats"),
];

/// Consumer errors repeat (an unknown topic is reported at every metadata refresh): one
/// warning per consumer per this interval.
const WARN_EVERY: Duration = Duration::from_secs(30);

/// Reads Kafka topics in a consumer group; see the module comment.
#[derive(Debug)]
pub struct KafkaSource {
    cfg: KafkaSourceConfig,
    /// The source's format, for reading its connector's heartbeats.
    format: Option<Format>,
    /// `properties_env`, read: (property, value).
    secrets: Vec<(String, Secret)>,
}

/// A value read from the environment for a librdkafka property: shown as `[redacted]`.
#[derive(Clone)]
struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

/// What replaces a credential in a message.
const REDACTED: &str = "[redacted]";

/// Values that must not appear in a message (the values of `properties_env`, and of any
/// property that looks like a credential), longest first.
#[derive(Clone, Debug, Default)]
struct Screen(Arc<[Secret]>);

impl Screen {
    /// A librdkafka error as text safe to log. A configuration error names the property
    /// and why it was refused, with the refused value blanked whatever the property
    /// (librdkafka's own message quotes the value); any other error has every screened
    /// value blanked.
    fn error(&self, e: &KafkaError) -> String {
        match e {
            KafkaError::ClientConfig(_, desc, key, value) => {
                let desc = if value.is_empty() {
                    desc.clone()
                } else {
                    desc.replace(value.as_str(), REDACTED)
                };
                format!("property {key}: {}", self.text(&desc))
            }
            other => self.text(&other.to_string()),
        }
    }

    fn text(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for Secret(v) in self.0.iter() {
            if out.contains(v.as_str()) {
                out = out.replace(v.as_str(), REDACTED);
            }
        }
        out
    }
}

impl KafkaSource {
    /// Checks the configuration (including every librdkafka property) without connecting;
    /// `properties_env` is read from this process's environment.
    pub fn new(cfg: KafkaSourceConfig) -> Result<Self> {
        Self::with_env(cfg, |var| std::env::var(var).ok())
    }

    /// [`KafkaSource::new`] with `properties_env` read through `env`.
    pub fn with_env(cfg: KafkaSourceConfig, env: impl Fn(&str) -> Option<String>) -> Result<Self> {
        if cfg.brokers.trim().is_empty() {
            return Err(Error::Config("kafka.brokers is empty".into()));
        }
        // End-of-partition marks are forgotten at every rebalance (a revoked partition's
        // end says nothing any more) and come back when the fetch restarts, which only the
        // eager protocols do for the partitions an instance keeps.
        let incremental = cfg.properties.iter().any(|(k, v)| {
            (k == "partition.assignment.strategy" && v.to_ascii_lowercase().contains("cooperative"))
                || (k == "group.protocol" && v.eq_ignore_ascii_case("consumer"))
        });
        if incremental {
            return Err(Error::Config(
                "kafka.properties: incremental (cooperative) rebalancing is not supported: \
                 the source's freshness relies on every partition's end being reported again \
                 after each rebalance, as the eager strategies (range, roundrobin) do"
                    .into(),
            ));
        }
        if cfg.topics.is_empty() || cfg.topics.iter().any(|t| t.is_empty()) {
            return Err(Error::Config(
                "kafka.topics is empty or has an empty name".into(),
            ));
        }
        if cfg.group.is_empty() {
            return Err(Error::Config("kafka.group is empty".into()));
        }
        for (key, why) in RESERVED {
            if cfg.properties.contains_key(*key) {
                return Err(Error::Config(format!(
                    "kafka.properties.{key} cannot be set: the source sets it ({why})"
                )));
            }
        }
        let mut secrets = Vec::with_capacity(cfg.properties_env.len());
        for (key, var) in &cfg.properties_env {
            if cfg.properties.contains_key(key) || RESERVED.iter().any(|(r, _)| r == key) {
                return Err(Error::Config(format!(
                    "kafka.properties_env.{key}: the property is also set by kafka.properties \
                     or by the source itself"
                )));
            }
            let value = env(var).ok_or_else(|| {
                Error::Config(format!(
                    "kafka.properties_env.{key}: environment variable {var} is not set"
                ))
            })?;
            secrets.push((key.clone(), Secret(value)));
        }
        let src = KafkaSource {
            cfg,
            format: None,
            secrets,
        };
        src.client_config("check")
            .create_native_config()
            .map_err(|e| Error::Config(format!("kafka.properties: {}", src.screen().error(&e))))?;
        Ok(src)
    }

    /// What this source's messages are screened for: the values read from the
    /// environment, and those of properties that look like credentials (refused in the
    /// config file, but screened all the same).
    fn screen(&self) -> Screen {
        let mut values: Vec<Secret> = self
            .secrets
            .iter()
            .map(|(_, v)| v.clone())
            .chain(
                self.cfg
                    .properties
                    .iter()
                    .filter(|(k, _)| crate::config::is_secret_property(k))
                    .map(|(_, v)| Secret(v.clone())),
            )
            .filter(|Secret(v)| !v.is_empty())
            .collect();
        values.sort_by_key(|Secret(v)| std::cmp::Reverse(v.len()));
        Screen(values.into())
    }

    /// Reads `format`'s connector heartbeats from `heartbeat_topic` (see
    /// [`crate::freshness::connector_heartbeat`]).
    pub fn with_format(mut self, format: Format) -> Self {
        self.format = Some(format);
        self
    }

    /// The heartbeat topic's consumer: a group of its own per process (every instance
    /// needs every heartbeat), from the topic's end, committing nothing.
    fn heartbeats(&self, source: &str, topic: &str) -> Result<Heartbeats> {
        let format = self.format.ok_or_else(|| {
            Error::Config(format!(
                "sources {source:?}: kafka.heartbeat_topic needs the source's format to read heartbeats"
            ))
        })?;
        let mut c = self.client_config(source);
        let unique = format!(
            "{}.{source}.heartbeats.{}.{}",
            self.cfg.group,
            std::process::id(),
            now_us()
        );
        if topic == "__mongodb_heartbeats" {
            tracing::warn!(
                source,
                topic,
                "the MongoDB connector's default heartbeat topic is shared by every connector \
                 that keeps the default: another connector's heartbeats would move this \
                 source. Give each connector its own heartbeat.topic.name"
            );
        }
        c.set("group.id", unique)
            .set("auto.offset.reset", "latest")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false");
        let screen = self.screen();
        let context = HeartbeatContext {
            source: source.to_owned(),
            screen: screen.clone(),
        };
        let consumer: StreamConsumer<HeartbeatContext> =
            c.create_with_context(context).map_err(|e| {
                Error::source(
                    source,
                    format!("creating the heartbeat consumer: {}", screen.error(&e)),
                    false,
                )
            })?;
        consumer.subscribe(&[topic]).map_err(|e| {
            Error::source(
                source,
                format!("subscribing to {topic}: {}", screen.error(&e)),
                false,
            )
        })?;
        Ok(Heartbeats {
            consumer,
            format,
            topic: topic.to_owned(),
        })
    }

    /// The consumers' configuration: defaults, then `properties`, then what this source
    /// relies on.
    fn client_config(&self, source_name: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("client.id", format!("overseer-{source_name}"))
            .set("auto.commit.interval.ms", "1000")
            // librdkafka backs off reconnecting up to 10 s, so a broker back after a
            // restart waited up to that long for its consumers; Kafka's own clients
            // stop at 1 s.
            .set("reconnect.backoff.max.ms", "1000");
        for (k, v) in &self.cfg.properties {
            c.set(k, v);
        }
        for (k, Secret(v)) in &self.secrets {
            c.set(k, v);
        }
        c.set("bootstrap.servers", &self.cfg.brokers)
            .set("group.id", &self.cfg.group)
            .set("auto.offset.reset", &self.cfg.auto_offset_reset)
            .set("enable.auto.offset.store", "false")
            .set("enable.auto.commit", "true")
            .set("enable.partition.eof", "true");
        c
    }
}

type TopicConsumer = StreamConsumer<TopicContext>;

/// What a topic's consumer shares with librdkafka's callbacks (run during `poll`, on the
/// task that reads).
struct TopicContext {
    source: String,
    topic: String,
    acks: Arc<Acks>,
    /// Highest offset stored per partition: an acknowledgement older than it (a redelivery
    /// after a rebalance) must not move the committed offset back.
    stored: Mutex<HashMap<i32, i64>>,
    /// Bumped at every rebalance: end-of-partition marks of an older assignment no longer
    /// say anything.
    generation: AtomicU64,
    /// Whether the last rebalance event was an assignment (possibly empty): false before
    /// the group is first joined and between a revocation and the next assignment, when
    /// this consumer's share of its topic is unknown.
    settled: AtomicBool,
    /// Credentials kept out of what librdkafka's callbacks log.
    screen: Screen,
}

impl TopicContext {
    /// Stores `next_offset` for `partition` unless a later offset is already stored.
    fn store<C: Consumer<TopicContext>>(&self, consumer: &C, partition: i32, next_offset: i64) {
        let mut stored = self.stored.lock().expect("stored offsets lock");
        if stored.get(&partition).is_some_and(|s| *s >= next_offset) {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        let res = tpl
            .add_partition_offset(&self.topic, partition, Offset::Offset(next_offset))
            .and_then(|()| consumer.store_offsets(&tpl));
        match res {
            Ok(()) => {
                stored.insert(partition, next_offset);
            }
            // Revoked since delivery: its new owner starts from the committed offset and
            // delivers those events again.
            Err(e) => tracing::debug!(
                source = %self.source, topic = %self.topic, partition, next_offset,
                error = %self.screen.error(&e),
                "acknowledged offset not stored: partition no longer assigned"
            ),
        }
    }

    /// Commits the stored offsets now and waits for the answer.
    fn commit_now<C: Consumer<TopicContext>>(&self, consumer: &C, why: &str) {
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => {
                tracing::debug!(source = %self.source, topic = %self.topic, why, "offsets committed")
            }
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => tracing::warn!(
                source = %self.source, topic = %self.topic, why, error = %self.screen.error(&e),
                "committing offsets failed; uncommitted events will be delivered again"
            ),
        }
    }
}

/// The heartbeat consumer's callbacks: librdkafka's errors logged screened, like the
/// topics' ([`TopicContext`]).
struct HeartbeatContext {
    source: String,
    screen: Screen,
}

impl ClientContext for HeartbeatContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::error!(
            source = %self.source,
            error = %self.screen.error(&error),
            reason = %self.screen.text(reason),
            "librdkafka error (heartbeat consumer)"
        );
    }
}

impl ConsumerContext for HeartbeatContext {}

impl ClientContext for TopicContext {
    /// librdkafka reports reaching the end of a partition (we ask for it: it is how the
    /// source knows it is caught up) through the global error callback too; the default
    /// logs it at error level on every caught-up read. It is not an error.
    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::PartitionEOF) => {
                tracing::trace!(source = %self.source, reason, "end of partition");
            }
            _ => tracing::error!(
                source = %self.source,
                error = %self.screen.error(&error),
                reason = %self.screen.text(reason),
                "librdkafka error"
            ),
        }
    }
}

impl ConsumerContext for TopicContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            // Last chance to commit for these partitions: store what is durable (other
            // topics' acknowledgements go back for their own consumers), commit, wait. This
            // runs inside `poll` on the reading task and blocks its thread for one commit
            // round trip; rebalances are rare enough for that. (librdkafka's auto-commit
            // would also commit stored offsets here; this makes it explicit and synchronous.)
            let (mine, others): (Vec<_>, Vec<_>) =
                self.acks.take().into_iter().partition(
                    |t| matches!(t, AckToken::Kafka { topic, .. } if *topic == self.topic),
                );
            self.acks.ack(others);
            for t in mine {
                if let AckToken::Kafka {
                    partition,
                    next_offset,
                    ..
                } = t
                {
                    self.store(consumer, partition, next_offset);
                }
            }
            self.commit_now(consumer, "partitions revoked");
            tracing::info!(
                source = %self.source, topic = %self.topic,
                partitions = ?partitions(tpl), "partitions revoked"
            );
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.settled
            .store(matches!(rebalance, Rebalance::Assign(_)), Ordering::SeqCst);
        match rebalance {
            Rebalance::Assign(tpl) => tracing::info!(
                source = %self.source, topic = %self.topic,
                partitions = ?partitions(tpl), "partitions assigned"
            ),
            Rebalance::Revoke(_) => {
                self.stored.lock().expect("stored offsets lock").clear();
            }
            Rebalance::Error(e) => tracing::warn!(
                source = %self.source, topic = %self.topic, error = %self.screen.error(e),
                "rebalance failed"
            ),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => tracing::warn!(
                source = %self.source, topic = %self.topic, error = %self.screen.error(&e),
                "auto-commit failed; retried at the next interval"
            ),
        }
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<i32> {
    tpl.elements().iter().map(|e| e.partition()).collect()
}

/// Stores acknowledged offsets, each on the consumer of its topic.
fn store_acks(consumers: &[Arc<TopicConsumer>], tokens: Vec<AckToken>) {
    let by_topic: HashMap<&str, &Arc<TopicConsumer>> = consumers
        .iter()
        .map(|c| (c.context().topic.as_str(), c))
        .collect();
    for t in tokens {
        match t {
            AckToken::Kafka {
                topic,
                partition,
                next_offset,
            } => match by_topic.get(topic.as_str()) {
                Some(c) => c.context().store(c.as_ref(), partition, next_offset),
                None => {
                    tracing::warn!(%topic, "acknowledgement for a topic this source does not read")
                }
            },
            other => tracing::warn!(?other, "non-Kafka acknowledgement given to a Kafka source"),
        }
    }
}

/// The lane of a topic's partition: topics (one consumer each) apart in the high bits.
fn lane(consumer: usize, partition: i32) -> Lane {
    ((consumer as u32) << 20) | (partition as u32 & 0xF_FFFF)
}

/// The event of one message, read by consumer `i`.
fn to_event(i: usize, m: &BorrowedMessage<'_>) -> SourceEvent {
    let topic = m.topic().to_owned();
    let (partition, offset) = (m.partition(), m.offset());
    let position = format!("{topic}/{partition:05}/{offset:020}");
    SourceEvent {
        raw: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
        key: m.key().map(Bytes::copy_from_slice),
        context: None,
        position: position.clone(),
        commit_time_us: None,
        ack: Some(AckToken::Kafka {
            topic,
            partition,
            next_offset: offset + 1,
        }),
        checkpoint: Some(position),
        lane: lane(i, partition),
    }
}

/// How a send into the pipeline ended.
enum Sent {
    Yes,
    /// Shutdown, or the pipeline is gone: stop reading.
    Stop,
}

/// Sends into the bounded pipeline channel (waiting is the backpressure), storing
/// acknowledgements meanwhile so a full channel never holds commits back.
async fn send(ctx: &SourceContext, consumers: &[Arc<TopicConsumer>], msg: SourceMsg) -> Sent {
    loop {
        tokio::select! {
            biased;
            _ = ctx.shutdown.cancelled() => return Sent::Stop,
            _ = ctx.acks.notified() => store_acks(consumers, ctx.acks.take()),
            permit = ctx.tx.reserve() => return match permit {
                Ok(p) => {
                    p.send(msg);
                    Sent::Yes
                }
                Err(_) => Sent::Stop,
            },
        }
    }
}

/// How long a connector heartbeat waits before it is passed on for the partitions at
/// their end: what the connector wrote before it to other partitions is fetched by then.
const BEAT_SETTLE: Duration = Duration::from_millis(500);

/// How often the topics' partition counts are asked for while unknown.
const LANES_RETRY: Duration = Duration::from_secs(5);

/// The connector's heartbeat topic, as read: its consumer and how to read a heartbeat.
struct Heartbeats {
    consumer: StreamConsumer<HeartbeatContext>,
    format: Format,
    topic: String,
}

/// Reads until shutdown (or the pipeline goes away).
async fn read(
    consumers: &[Arc<TopicConsumer>],
    heartbeats: Option<&Heartbeats>,
    ctx: &SourceContext,
) -> Result<()> {
    let mut streams = futures::stream::select_all(
        consumers
            .iter()
            .enumerate()
            .map(|(i, c)| c.stream().map(move |r| (i, r))),
    );
    let mut beats = heartbeats.map(|h| h.consumer.stream());
    let heartbeat = ctx.heartbeat.max(Duration::from_millis(10));
    let mut tick = tokio::time::interval(heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // (consumer, partition) that reported their end since their last message.
    let mut at_end: HashSet<(usize, i32)> = HashSet::new();
    // The rebalance generation `at_end` was collected in, per consumer.
    let mut generations = vec![0u64; consumers.len()];
    let mut last_message = Instant::now();
    let mut last_warning: BTreeMap<usize, Instant> = BTreeMap::new();
    // The lanes declared to the pipeline: every partition of the topics, whoever reads
    // it, so one this instance does not read holds the watermark at what was last seen
    // of it (another instance's progress is not known here). None until the topics'
    // partition counts are known: no event counts before then. Learned again after every
    // rebalance (a topic may have gained partitions), and retried while unknown.
    let mut declared: Option<Vec<(Lane, String)>> = None;
    let mut owned_before: Option<Vec<(usize, i32)>> = None;
    let mut learned_at: Vec<u64> = Vec::new();
    let mut relearn = false;
    let mut lanes_asked: Option<Instant> = None;
    // Set by a tick; the claims of partitions at their end are made in the last branch of
    // the loop's select, which runs only when no stream has a message ready: a claim never
    // passes over a message already fetched.
    let mut release_due = false;
    if let Sent::Stop = send(ctx, consumers, SourceMsg::Lanes(Vec::new())).await {
        return Ok(());
    }
    // Connector heartbeats not yet passed on, with when each arrived. One is passed on,
    // for the partitions read here that are at their end, once it has settled (data the
    // connector wrote before it, on other partitions, has had the time to be fetched).
    let mut beats_held: VecDeque<(Micros, Instant)> = VecDeque::new();

    let mut last_beat_warning: Option<Instant> = None;
    let forget_old = |i: usize, at_end: &mut HashSet<(usize, i32)>, generations: &mut [u64]| {
        let g = consumers[i].context().generation.load(Ordering::SeqCst);
        if g != generations[i] {
            at_end.retain(|(c, _)| *c != i);
            generations[i] = g;
        }
    };
    loop {
        let (i, item) = tokio::select! {
            biased;
            _ = ctx.shutdown.cancelled() => return Ok(()),
            _ = ctx.acks.notified() => {
                store_acks(consumers, ctx.acks.take());
                continue;
            }
            _ = tick.tick() => {
                for i in 0..consumers.len() {
                    forget_old(i, &mut at_end, &mut generations);
                }
                // The topics' partitions, learned again after any rebalance (a topic may
                // have grown) and retried at most every LANES_RETRY while that fails.
                let owned = assignment(consumers);
                if owned.is_some() && (owned != owned_before || generations != learned_at) {
                    owned_before = owned.clone();
                    learned_at = generations.clone();
                    relearn = true;
                    lanes_asked = None;
                }
                if (relearn || declared.is_none())
                    && lanes_asked.is_none_or(|t| t.elapsed() >= LANES_RETRY)
                {
                    lanes_asked = Some(Instant::now());
                    if let Some(lanes) = topic_lanes(consumers).await {
                        relearn = false;
                        // Lanes only ever grow: a broker's stale metadata must not drop
                        // one that holds the watermark.
                        let mut all: BTreeMap<Lane, String> =
                            declared.take().unwrap_or_default().into_iter().collect();
                        let before = all.len();
                        all.extend(lanes);
                        let grew = all.len() > before || before == 0;
                        let all: Vec<(Lane, String)> = all.into_iter().collect();
                        declared = Some(all.clone());
                        if grew {
                            if let Some(o) = &owned
                                && o.len() < all.len()
                            {
                                tracing::info!(
                                    source = %ctx.name, reads = o.len(), partitions = all.len(),
                                    "this instance reads some of the partitions: the source's \
                                     watermark is the lowest of the claims each reader records \
                                     per partition in the catalog"
                                );
                            }
                            if let Sent::Stop = send(ctx, consumers, SourceMsg::Lanes(all)).await {
                                return Ok(());
                            }
                        }
                    }
                }
                // What the partitions at their end may claim is decided in the branch
                // below, once every message already fetched has been taken.
                release_due = owned.is_some() && !relearn;
                continue;
            }
            Some(m) = next_beat(&mut beats) => {
                let h = heartbeats.expect("a heartbeat stream has its settings");
                match m.map_err(|e| h.consumer.context().screen.error(&e)).and_then(|m| {
                    crate::freshness::connector_heartbeat(h.format, m.key(), m.payload())
                }) {
                    Ok(t) => {
                        // Bounded while a partition lags: newer heartbeats claim more anyway.
                        if beats_held.len() >= 1024 {
                            beats_held.pop_front();
                        }
                        beats_held.push_back((t, Instant::now()));
                    }
                    Err(e) => {
                        if last_beat_warning.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                            last_beat_warning = Some(Instant::now());
                            tracing::warn!(
                                source = %ctx.name, topic = %h.topic, error = %e,
                                "connector heartbeat not understood; the watermark does not move on it"
                            );
                        }
                    }
                }
                continue;
            }
            item = streams.next() => item.expect("kafka message streams never end"),
            // Last: only when no stream above has anything ready.
            _ = std::future::ready(()), if release_due => {
                release_due = false;
                let Some(owned) = assignment(consumers) else { continue };
                // The partitions read here that are at their end: what a claim covers.
                let caught_up: Vec<Lane> = owned
                    .iter()
                    .filter(|ip| at_end.contains(ip))
                    .map(|(i, p)| lane(*i, *p))
                    .collect();
                let mut settled = None;
                while let Some((t, _)) = beats_held.front().filter(|(_, at)| at.elapsed() >= BEAT_SETTLE) {
                    settled = settled.max(Some(*t));
                    beats_held.pop_front();
                }
                // With the opt-in, partitions at their end and quiet for an interval are
                // complete up to now (the interval keeps a message on its way from
                // being passed over).
                let claim = if ctx.caught_up_means_now {
                    (last_message.elapsed() >= heartbeat).then(|| (now_us(), Evidence::CaughtUp))
                } else {
                    settled.map(|t| (t, Evidence::Heartbeat))
                };
                if let (Some((watermark_us, evidence)), false) = (claim, caught_up.is_empty()) {
                    let hb = SourceMsg::Heartbeat {
                        watermark_us,
                        evidence,
                        lanes: Some(caught_up),
                    };
                    if let Sent::Stop = send(ctx, consumers, hb).await {
                        return Ok(());
                    }
                }
                continue;
            }
        };
        forget_old(i, &mut at_end, &mut generations);
        let event = match item {
            Ok(m) => {
                at_end.remove(&(i, m.partition()));
                last_message = Instant::now();
                to_event(i, &m)
            }
            Err(KafkaError::PartitionEOF(p)) => {
                at_end.insert((i, p));
                continue;
            }
            Err(e @ KafkaError::MessageConsumptionFatal(_)) => {
                return Err(Error::source(&ctx.name, e, false));
            }
            Err(e) => {
                // librdkafka retries by itself (broker down, coordinator moving, topic not
                // created yet): report and go on.
                let now = Instant::now();
                if last_warning
                    .get(&i)
                    .is_none_or(|t| now.duration_since(*t) >= WARN_EVERY)
                {
                    last_warning.insert(i, now);
                    tracing::warn!(
                        source = %ctx.name, topic = %consumers[i].context().topic,
                        error = %consumers[i].context().screen.error(&e),
                        "kafka consumer error"
                    );
                }
                continue;
            }
        };
        if let Sent::Stop = send(ctx, consumers, SourceMsg::Event(event)).await {
            return Ok(());
        }
    }
}

/// The next message of the heartbeat topic; pending forever without one.
async fn next_beat<'a>(
    beats: &mut Option<rdkafka::consumer::MessageStream<'a, HeartbeatContext>>,
) -> Option<KafkaResult<BorrowedMessage<'a>>> {
    match beats {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// The partitions assigned to this instance, as (consumer, partition), sorted; `None`
/// while any topic's consumer has no settled assignment (before joining the group,
/// mid-rebalance).
fn assignment(consumers: &[Arc<TopicConsumer>]) -> Option<Vec<(usize, i32)>> {
    let mut owned = Vec::new();
    for (i, c) in consumers.iter().enumerate() {
        if !c.context().settled.load(Ordering::SeqCst) {
            return None;
        }
        let tpl = c.assignment().ok()?;
        owned.extend(tpl.elements().iter().map(|e| (i, e.partition())));
    }
    owned.sort_unstable();
    Some(owned)
}

/// Every partition of each consumer's topic as a lane (whoever reads it), from the
/// topics' metadata; `None` if a topic's partition count cannot be learned now.
async fn topic_lanes(consumers: &[Arc<TopicConsumer>]) -> Option<Vec<(Lane, String)>> {
    let mut lanes = Vec::new();
    for (i, c) in consumers.iter().enumerate() {
        let c = c.clone();
        let topic = c.context().topic.clone();
        let count = tokio::task::spawn_blocking(move || {
            let md = c
                .fetch_metadata(Some(&topic), Duration::from_secs(5))
                .ok()?;
            let t = md.topics().iter().find(|t| t.name() == topic)?;
            (t.error().is_none() && !t.partitions().is_empty()).then(|| t.partitions().len())
        })
        .await
        .ok()??;
        let topic = &consumers[i].context().topic;
        lanes.extend((0..count as i32).map(|p| (lane(i, p), format!("{topic}/{p}"))));
    }
    Some(lanes)
}

#[async_trait]
impl Source for KafkaSource {
    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<()> {
        let config = self.client_config(&ctx.name);
        let screen = self.screen();
        let mut consumers = Vec::with_capacity(self.cfg.topics.len());
        for topic in &self.cfg.topics {
            let context = TopicContext {
                source: ctx.name.clone(),
                topic: topic.clone(),
                acks: ctx.acks.clone(),
                stored: Mutex::new(HashMap::new()),
                generation: AtomicU64::new(0),
                settled: AtomicBool::new(false),
                screen: screen.clone(),
            };
            let consumer: TopicConsumer = config.create_with_context(context).map_err(|e| {
                let e = screen.error(&e);
                Error::source(&ctx.name, format!("creating a consumer: {e}"), false)
            })?;
            consumer.subscribe(&[topic]).map_err(|e| {
                let e = screen.error(&e);
                Error::source(&ctx.name, format!("subscribing to {topic}: {e}"), false)
            })?;
            consumers.push(Arc::new(consumer));
        }
        let heartbeats = match &self.cfg.heartbeat_topic {
            Some(topic) => Some(self.heartbeats(&ctx.name, topic)?),
            None => None,
        };
        tracing::info!(
            source = %ctx.name, topics = ?self.cfg.topics, group = %self.cfg.group,
            heartbeat_topic = self.cfg.heartbeat_topic.as_deref().unwrap_or("-"),
            caught_up_means_now = ctx.caught_up_means_now,
            "kafka source started"
        );
        let result = read(&consumers, heartbeats.as_ref(), &ctx).await;
        // Store what is durable by now, commit it, and leave the groups. All of it blocks
        // (commit round trip, leave-group), hence the blocking thread.
        let acks = ctx.acks.clone();
        let closed = tokio::task::spawn_blocking(move || {
            store_acks(&consumers, acks.take());
            for c in &consumers {
                c.context().commit_now(c.as_ref(), "shutdown");
            }
            drop(consumers);
            drop(heartbeats);
        })
        .await;
        if let Err(e) = closed {
            tracing::warn!(source = %ctx.name, error = %e, "closing the kafka consumers failed");
        }
        tracing::info!(source = %ctx.name, "kafka source stopped");
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> KafkaSourceConfig {
        KafkaSourceConfig {
            brokers: "127.0.0.1:9".into(),
            topics: vec!["t".into()],
            group: "g".into(),
            auto_offset_reset: "earliest".into(),
            properties: BTreeMap::new(),
            properties_env: BTreeMap::new(),
            heartbeat_topic: None,
        }
    }

    /// A value read from the environment reaches librdkafka but no message: not in a
    /// refusal that quotes it, not in the source's Debug.
    #[test]
    fn property_values_from_the_environment_stay_out_of_messages() {
        const SECRET: &str = "hunter2-s3cr3t";
        let env = |var: &str| (var == "KAFKA_PW").then(|| SECRET.to_owned());
        let mut c = cfg();
        c.properties_env
            .insert("sasl.password".into(), "KAFKA_PW".into());
        let src = KafkaSource::with_env(c.clone(), env).unwrap();
        assert!(!format!("{src:?}").contains(SECRET));
        let native = src
            .client_config("s")
            .get("sasl.password")
            .map(str::to_owned);
        assert_eq!(native.as_deref(), Some(SECRET));

        // librdkafka refuses the value and quotes it: the message names the property only.
        let mut bad = cfg();
        bad.properties_env
            .insert("sasl.oauthbearer.method".into(), "KAFKA_PW".into());
        let e = KafkaSource::with_env(bad, env).unwrap_err().to_string();
        assert!(e.contains("sasl.oauthbearer.method"), "{e}");
        assert!(!e.contains(SECRET), "{e}");

        // A variable that is not set is named, its absence said.
        let mut unset = cfg();
        unset
            .properties_env
            .insert("sasl.password".into(), "NOT_SET_ANYWHERE".into());
        let e = KafkaSource::with_env(unset, env).unwrap_err().to_string();
        assert!(
            e.contains("NOT_SET_ANYWHERE") && e.contains("not set"),
            "{e}"
        );

        // Other errors: every screened value is blanked.
        let mut c2 = cfg();
        c2.properties_env
            .insert("sasl.password".into(), "KAFKA_PW".into());
        let src = KafkaSource::with_env(c2, env).unwrap();
        let text = src
            .screen()
            .error(&KafkaError::Global(RDKafkaErrorCode::Authentication));
        assert!(!text.contains(SECRET));
        assert_eq!(
            src.screen()
                .text(&format!("SASL auth with {SECRET} failed")),
            "SASL auth with [redacted] failed"
        );
    }

    #[test]
    fn reserved_and_unknown_properties_are_refused() {
        let mut c = cfg();
        c.properties
            .insert("enable.auto.offset.store".into(), "true".into());
        let e = KafkaSource::new(c).unwrap_err().to_string();
        assert!(
            e.contains("kafka.properties.enable.auto.offset.store"),
            "{e}"
        );
        let mut c = cfg();
        c.properties.insert("no.such.property".into(), "1".into());
        let e = KafkaSource::new(c).unwrap_err().to_string();
        assert!(e.contains("no.such.property"), "{e}");
        let mut c = cfg();
        c.properties
            .insert("session.timeout.ms".into(), "10000".into());
        KafkaSource::new(c).unwrap();
        let mut c = cfg();
        c.properties.insert(
            "partition.assignment.strategy".into(),
            "cooperative-sticky".into(),
        );
        let e = KafkaSource::new(c).unwrap_err().to_string();
        assert!(e.contains("cooperative"), "{e}");
    }
}
