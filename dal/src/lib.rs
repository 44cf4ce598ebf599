//! The storage seams of overseer and (later) its semantic layer.
//!
//! - [`update`]: update identity, index entries, master documents.
//! - [`segment`]: the immutable segment object format (many updates per object).
//! - [`keys`]: object key layout and the encoding that keeps arbitrary strings in their prefix.
//! - [`store`]: the [`ObjectStore`] trait; local directory, memory and S3 backends.
//! - [`catalog`]: the [`Catalog`] trait (the index of the object store); embedded and
//!   PostgreSQL backends.
//! - [`bus`]: the [`Bus`] trait for update notifications; in-process and Kafka backends.
//! - [`config`]: serde configuration of the three backends.
//! - [`pgoutput`]: the parser of PostgreSQL logical-replication (pgoutput) row changes.
//! - [`builder`]: aggregation, the stateless folds of a record's updates into its state.
//! - [`view`]: view messages (by descriptor) and their registry.
//! - [`reader`]: the [`Dal`]: time travel, aggregation and (joined) views as of a time.
//! - [`cache`]: the DAL's byte-bounded read cache of decoded update records.
//! - [`state`]: maintained folds and joins, kept between reads.
//! - [`snapshot`]: records' folds persisted beside the history.
//! - [`timeline`]: a replay's records folded through its window in commit order.

pub mod builder;
pub mod bus;
pub mod cache;
pub mod catalog;
pub mod config;
pub mod error;
pub mod keys;
pub mod pgoutput;
pub mod reader;
pub mod segment;
pub mod snapshot;
pub mod stall;
pub mod state;
pub mod store;
pub mod timeline;
pub mod update;
pub mod view;

pub use bus::Bus;
pub use bytes::Bytes;
pub use catalog::{
    Catalog, IncidentStore, MetaStore, SegmentLedger, SnapshotStore, SourceProgress, UpdateIndex,
};
pub use error::{Error, Result};
pub use prost_reflect::DynamicMessage;
pub use reader::{Dal, Viewed};
pub use store::ObjectStore;
