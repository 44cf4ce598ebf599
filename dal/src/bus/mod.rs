//! The notification bus: one [`UpdateNotification`] per indexed update, published after the
//! batch holding it is durable and indexed.
//!
//! Backends: [`memory::MemoryBus`] (in-process; the embedded default) and
//! [`kafka::KafkaBus`] (rdkafka; the events topic, keyed by model and record id so one
//! record's notifications stay ordered within a partition). Both pass
//! `overseer_testkit::conformance::bus_suite`. Delivery is at-least-once: a subscriber commits what it
//! has fully processed and sees the rest again after a restart.
//!
//! - [`feed::CatalogFeed`]: a [`Subscription`] without a bus, for embedded mode: it derives
//!   notifications from the catalog's committed segments and keeps its cursor in the
//!   catalog, so nothing unprocessed is lost when the process dies.

use std::sync::Arc;

use async_trait::async_trait;

use crate::Result;
use crate::update::UpdateNotification;

pub mod feed;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod memory;

/// Opaque position of a delivered notification, handed back to [`Subscription::commit`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeliveryTag {
    pub partition: i32,
    pub offset: i64,
}

/// A notification with where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivered {
    pub note: UpdateNotification,
    pub tag: DeliveryTag,
}

/// Publisher side and subscription factory.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes a batch; returns once every notification is accepted by the bus
    /// (acknowledged by the broker for Kafka). Waits when subscribers are behind.
    async fn publish(&self, notes: &[UpdateNotification]) -> Result<()>;

    /// Joins consumer group `group`. Notifications published after the group first joined
    /// are delivered; a group resumes after what it committed.
    async fn subscribe(&self, group: &str) -> Result<Box<dyn Subscription>>;

    fn describe(&self) -> String;
}

/// Consumer side.
#[async_trait]
pub trait Subscription: Send {
    /// Waits for at least one notification and returns up to `max`.
    async fn recv(&mut self, max: usize) -> Result<Vec<Delivered>>;

    /// Marks these notifications (and everything before them in their partitions) done.
    async fn commit(&mut self, tags: &[DeliveryTag]) -> Result<()>;
}

/// Shared handle to a bus.
pub type DynBus = Arc<dyn Bus>;

/// The key a notification is partitioned by: model and record id, length-prefixed so no
/// pair of strings can produce another pair's key.
pub fn partition_key(model: &str, record_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(model.len() + record_id.len() + 4);
    k.extend_from_slice(&(model.len() as u32).to_be_bytes());
    k.extend_from_slice(model.as_bytes());
    k.extend_from_slice(record_id.as_bytes());
    k
}
