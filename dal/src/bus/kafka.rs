//! The Kafka bus: notifications on one events topic, consumer groups for subscribers.
//!
//! ```text
//!  ingestion ── publish(batch) ──> producer (acks=all) ──> events topic (N partitions,
//!                   ▲ returns when every note is acked        keyed by model + record id)
//!                                                                  │
//!  runner  <── recv(max) ── consumer in group G <──────────────────┘
//!     └── commit(tags) ── store offset+1 per partition, commit (sync) ──> group G offsets
//! ```
//!
//! # Progress tracking
//!
//! A subscriber's position is its group's committed offsets, and nothing else: offsets are
//! never stored automatically (`enable.auto.offset.store=false`, `enable.auto.commit=false`),
//! only by [`Subscription::commit`], which the runner calls past notifications whose checks
//! have all run. A crash, a dropped subscription or a rebalance therefore redelivers what
//! was not committed (at-least-once), and never skips what was. A partition taken away by a
//! rebalance before its commit keeps its old offset: its new owner sees those notifications
//! again.
//!
//! Ordering: a record's notifications share a key, hence a partition. The producer keeps
//! one request in flight per broker so a retried batch cannot overtake the next one
//! (idempotence would allow more, but tansu, our test broker, does not offer it), and
//! [`KafkaBus::publish`] enqueues in order and returns only after every delivery report.
//!
//! A payload that is not an `UpdateNotification` (a foreign producer, a tombstone) is
//! skipped with a warning and counted in [`BUS_MALFORMED_TOTAL`]: it must not stop the
//! runner. It is committed past together with the notifications after it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use prost::Message as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::{Bus, Delivered, DeliveryTag, Subscription, partition_key};
use crate::config::KafkaBusConfig;
use crate::update::UpdateNotification;
use crate::{Error, Result};

/// Counter: events-topic messages a subscriber skipped because they do not decode.
pub const BUS_MALFORMED_TOTAL: &str = "overseer_bus_malformed_total";

/// Gauge: events-topic partitions this subscriber's group member holds.
pub const BUS_PARTITIONS_ASSIGNED: &str = "overseer_bus_partitions_assigned";

/// How long a single broker request (metadata, topic creation) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Notification bus on a Kafka events topic.
pub struct KafkaBus {
    brokers: String,
    topic: String,
    session_timeout_ms: u32,
    /// Shared by every publisher; librdkafka batches what is enqueued concurrently.
    producer: FutureProducer,
}

impl std::fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBus")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl KafkaBus {
    /// Connects to the brokers, creating the events topic with `cfg.partitions` partitions
    /// if it does not exist (an existing topic is used as it is).
    pub async fn connect(cfg: &KafkaBusConfig) -> Result<KafkaBus> {
        if cfg.topic.is_empty() {
            return Err(Error::invalid("bus.topic", "is empty"));
        }
        if cfg.partitions < 1 {
            return Err(Error::invalid("bus.partitions", "must be at least 1"));
        }
        // librdkafka's own bounds; a broker may narrow them further
        // (`group.min.session.timeout.ms`, `group.max.session.timeout.ms`).
        if !(1_000..=3_600_000).contains(&cfg.session_timeout_ms) {
            return Err(Error::invalid(
                "bus.session_timeout_ms",
                format!("{} is outside 1000..=3600000 (ms)", cfg.session_timeout_ms),
            ));
        }
        create_topic(cfg).await?;
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &cfg.brokers)
            // Durable on every in-sync replica before publish returns.
            .set("acks", "all")
            // A few ms of batching: publish hands over whole batches at once.
            .set("linger.ms", "5")
            // No transactions nor idempotence (see the module comment): one request in
            // flight keeps per-partition order across retries.
            .set("enable.idempotence", "false")
            .set("max.in.flight.requests.per.connection", "1")
            .set("message.timeout.ms", "60000")
            // Reconnect within a second of a broker's return (librdkafka backs off up to
            // 10 s; Kafka's own clients stop at 1 s).
            .set("reconnect.backoff.max.ms", "1000")
            .create()
            .map_err(|e| bus_error("creating the producer", &e))?;
        let bus = KafkaBus {
            brokers: cfg.brokers.clone(),
            topic: cfg.topic.clone(),
            session_timeout_ms: cfg.session_timeout_ms,
            producer,
        };
        bus.wait_for_topic().await?;
        Ok(bus)
    }

    /// Waits until the brokers' metadata lists the topic with its partitions (creation is
    /// asynchronous on the broker side).
    async fn wait_for_topic(&self) -> Result<()> {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + REQUEST_TIMEOUT;
            loop {
                let md = producer
                    .client()
                    .fetch_metadata(Some(&topic), Duration::from_secs(5));
                let ready = match &md {
                    Ok(md) => md.topics().iter().any(|t| {
                        t.name() == topic && t.error().is_none() && !t.partitions().is_empty()
                    }),
                    Err(_) => false,
                };
                if ready {
                    return Ok(());
                }
                if std::time::Instant::now() > deadline {
                    return Err(match md {
                        Err(e) => bus_error(&format!("metadata of topic {topic}"), &e),
                        Ok(_) => Error::Bus {
                            message: format!("topic {topic} has no partitions after creation"),
                            transient: true,
                            source: None,
                        },
                    });
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
        .await
        .map_err(|e| Error::Bus {
            message: format!("metadata task: {e}"),
            transient: false,
            source: None,
        })?
    }
}

/// Creates the events topic; "already exists" is success.
async fn create_topic(cfg: &KafkaBusConfig) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &cfg.brokers)
        .create()
        .map_err(|e| bus_error("creating the admin client", &e))?;
    // Replication -1: the brokers' `default.replication.factor` (Kafka 2.4+, KIP-464; tansu
    // accepts it too), so a production cluster replicates the topic as its operators chose.
    let topic = NewTopic::new(&cfg.topic, cfg.partitions, TopicReplication::Fixed(-1));
    let opts = AdminOptions::new().request_timeout(Some(REQUEST_TIMEOUT));
    let results = admin
        .create_topics([&topic], &opts)
        .await
        .map_err(|e| bus_error(&format!("creating topic {}", cfg.topic), &e))?;
    for r in results {
        match r {
            Ok(_) => {
                tracing::info!(topic = %cfg.topic, partitions = cfg.partitions, "created the events topic")
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => {
                return Err(Error::Bus {
                    message: format!("creating topic {t}: {code}"),
                    transient: transient_code(code),
                    source: None,
                });
            }
        }
    }
    Ok(())
}

#[async_trait]
impl Bus for KafkaBus {
    async fn publish(&self, notes: &[UpdateNotification]) -> Result<()> {
        let encoded: Vec<(Vec<u8>, Vec<u8>)> = notes
            .iter()
            .map(|n| (partition_key(&n.model, &n.record_id), n.encode_to_vec()))
            .collect();
        // Enqueue in order (a full local queue waits, it does not reorder), then wait for
        // every delivery report.
        let mut pending = Vec::with_capacity(encoded.len());
        for (key, payload) in &encoded {
            let mut record = FutureRecord::to(&self.topic).key(key).payload(payload);
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => return Err(bus_error("enqueueing a notification", &e)),
                }
            }
        }
        for delivery in futures::future::join_all(pending).await {
            match delivery {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(bus_error("delivering a notification", &e)),
                Err(_) => {
                    return Err(Error::Bus {
                        message: "producer dropped a delivery report".into(),
                        transient: true,
                        source: None,
                    });
                }
            }
        }
        Ok(())
    }

    async fn subscribe(&self, group: &str) -> Result<Box<dyn Subscription>> {
        let context = MemberContext {
            topic: self.topic.clone(),
            group: group.to_owned(),
        };
        let consumer: StreamConsumer<MemberContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", group)
            // A new group starts at the beginning of the topic: it sees every
            // notification published after it first joined, and more.
            .set("auto.offset.reset", "earliest")
            // A dead instance's partitions move to the living this long after it.
            .set("session.timeout.ms", self.session_timeout_ms.to_string())
            .set(
                "heartbeat.interval.ms",
                (self.session_timeout_ms / 4).max(100).to_string(),
            )
            // Offsets move only through `commit` (see the module comment).
            .set("enable.auto.offset.store", "false")
            .set("enable.auto.commit", "false")
            .set("reconnect.backoff.max.ms", "1000")
            .create_with_context(context)
            .map_err(|e| bus_error("creating a consumer", &e))?;
        consumer
            .subscribe(&[&self.topic])
            .map_err(|e| bus_error(&format!("subscribing to {}", self.topic), &e))?;
        Ok(Box::new(KafkaSubscription {
            consumer: Some(Arc::new(consumer)),
            topic: self.topic.clone(),
            group: group.to_owned(),
        }))
    }

    fn describe(&self) -> String {
        format!("kafka bus (topic {} on {})", self.topic, self.brokers)
    }
}

/// Says which partitions a member holds, as the group's rebalances hand them out: an
/// operator running several `overseer prs` sees which one checks what, and when a dead
/// instance's partitions moved.
struct MemberContext {
    topic: String,
    group: String,
}

impl ClientContext for MemberContext {}

impl ConsumerContext for MemberContext {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let held = |tpl: &TopicPartitionList| -> Vec<i32> {
            tpl.elements().iter().map(|e| e.partition()).collect()
        };
        match rebalance {
            Rebalance::Assign(tpl) => {
                let partitions = held(tpl);
                metrics::gauge!(BUS_PARTITIONS_ASSIGNED, "group" => self.group.clone())
                    .set(partitions.len() as f64);
                tracing::info!(topic = %self.topic, group = %self.group, ?partitions,
                    "events partitions assigned");
            }
            Rebalance::Revoke(tpl) => {
                let left = consumer.assignment().map(|a| a.count()).unwrap_or(0);
                metrics::gauge!(BUS_PARTITIONS_ASSIGNED, "group" => self.group.clone())
                    .set(left as f64);
                tracing::info!(topic = %self.topic, group = %self.group,
                    partitions = ?held(tpl), "events partitions revoked");
            }
            Rebalance::Error(e) => tracing::warn!(topic = %self.topic, group = %self.group,
                error = %e, "events topic rebalance failed"),
        }
    }
}

/// One group member. Dropping it leaves the group (on a blocking thread: leaving waits for
/// the coordinator).
struct KafkaSubscription {
    /// `None` only while being dropped.
    consumer: Option<Arc<StreamConsumer<MemberContext>>>,
    topic: String,
    group: String,
}

impl KafkaSubscription {
    fn consumer(&self) -> &Arc<StreamConsumer<MemberContext>> {
        self.consumer.as_ref().expect("consumer present until drop")
    }

    /// Decodes a message; `None` (logged and counted) when it is not a notification.
    fn decode(&self, m: &BorrowedMessage<'_>) -> Option<Delivered> {
        let tag = DeliveryTag {
            partition: m.partition(),
            offset: m.offset(),
        };
        let reason = match m.payload().map(UpdateNotification::decode) {
            Some(Ok(note)) if !note.model.is_empty() => return Some(Delivered { note, tag }),
            Some(Ok(_)) => "no model".to_owned(),
            Some(Err(e)) => e.to_string(),
            None => "no payload".to_owned(),
        };
        tracing::warn!(
            topic = %self.topic, group = %self.group, partition = tag.partition,
            offset = tag.offset, %reason, "skipping a malformed message on the events topic"
        );
        metrics::counter!(BUS_MALFORMED_TOTAL, "backend" => "kafka").increment(1);
        None
    }

    /// Consumer errors are mostly reports of what librdkafka is already retrying
    /// (connection lost, coordinator moved): log them and keep waiting. Fatal ones end the
    /// subscription.
    fn on_error(&self, e: KafkaError) -> Result<()> {
        if let KafkaError::MessageConsumptionFatal(_) = e {
            return Err(bus_error(&format!("consuming {}", self.topic), &e));
        }
        tracing::warn!(topic = %self.topic, group = %self.group, error = %e, "kafka consumer error");
        Ok(())
    }
}

#[async_trait]
impl Subscription for KafkaSubscription {
    async fn recv(&mut self, max: usize) -> Result<Vec<Delivered>> {
        let max = max.max(1);
        let consumer = self.consumer().clone();
        let mut out = Vec::new();
        while out.is_empty() {
            match consumer.recv().await {
                Ok(m) => out.extend(self.decode(&m)),
                Err(e) => self.on_error(e)?,
            }
        }
        // Then whatever is already here, without waiting.
        while out.len() < max {
            match consumer.recv().now_or_never() {
                Some(Ok(m)) => out.extend(self.decode(&m)),
                Some(Err(e)) => {
                    self.on_error(e)?;
                    break;
                }
                None => break,
            }
        }
        Ok(out)
    }

    async fn commit(&mut self, tags: &[DeliveryTag]) -> Result<()> {
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        for t in tags {
            let n = next.entry(t.partition).or_insert(t.offset + 1);
            *n = (*n).max(t.offset + 1);
        }
        if next.is_empty() {
            return Ok(());
        }
        let consumer = self.consumer().clone();
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            for (partition, offset) in next {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition_offset(&topic, partition, Offset::Offset(offset))
                    .map_err(|e| bus_error("building an offset list", &e))?;
                // A partition this member no longer owns cannot be stored: its new owner
                // sees those notifications again (at-least-once).
                if let Err(e) = consumer.store_offsets(&tpl) {
                    tracing::debug!(%topic, partition, offset, error = %e, "offset not stored: partition no longer assigned");
                }
            }
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
                // The group moved on without this member (a broker restart, a session
                // that lapsed): its partitions' owners, this member once it has joined
                // again, see those notifications again (at-least-once).
                Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::AssignmentLost)) => {
                    tracing::warn!(%topic, "offsets not committed: the group's assignment was lost; those notifications will be delivered again");
                    Ok(())
                }
                Err(e) => Err(bus_error("committing offsets", &e)),
            }
        })
        .await
        .map_err(|e| Error::Bus {
            message: format!("commit task: {e}"),
            transient: false,
            source: None,
        })?
    }
}

impl Drop for KafkaSubscription {
    fn drop(&mut self) {
        let Some(consumer) = self.consumer.take() else {
            return;
        };
        // Closing the consumer blocks until it has left the group.
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn_blocking(move || drop(consumer));
            }
            Err(_) => drop(consumer),
        }
    }
}

/// A bus error from a Kafka error, classified.
fn bus_error(what: &str, e: &KafkaError) -> Error {
    let transient = match e {
        KafkaError::Canceled => true,
        KafkaError::MessageConsumptionFatal(_) => false,
        other => other.rdkafka_error_code().is_some_and(transient_code),
    };
    Error::Bus {
        message: format!("{what}: {e}"),
        transient,
        source: Some(Box::new(e.clone())),
    }
}

/// Whether an operation that failed with `code` may succeed if retried.
pub(crate) fn transient_code(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::BrokerTransportFailure
            | C::Resolve
            | C::MessageTimedOut
            | C::AllBrokersDown
            | C::OperationTimedOut
            | C::QueueFull
            | C::TimedOutQueue
            | C::WaitingForCoordinator
            | C::InProgress
            | C::PreviousInProgress
            | C::Retry
            | C::Interrupted
            | C::UnknownTopic
            | C::UnknownPartition
            | C::LeaderNotAvailable
            | C::NotLeaderForPartition
            | C::RequestTimedOut
            | C::BrokerNotAvailable
            | C::ReplicaNotAvailable
            | C::NetworkException
            | C::CoordinatorLoadInProgress
            | C::CoordinatorNotAvailable
            | C::NotCoordinator
            | C::NotEnoughReplicas
            | C::NotEnoughReplicasAfterAppend
            | C::RebalanceInProgress
            | C::IllegalGeneration
            | C::UnknownMemberId
            | C::UnknownTopicOrPartition
            | C::KafkaStorageError
            | C::FencedLeaderEpoch
            | C::UnknownLeaderEpoch
            | C::OffsetNotAvailable
            | C::PreferredLeaderNotAvailable
            | C::ThrottlingQuotaExceeded
            | C::UnstableOffsetCommit
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified() {
        let e = bus_error(
            "x",
            &KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut),
        );
        assert!(e.is_transient());
        let e = bus_error(
            "x",
            &KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
        );
        assert!(!e.is_transient());
    }
}
