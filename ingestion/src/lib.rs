//! The ingestion service: change events in, immutable history out.
//!
//! ```text
//!  source ──(bounded channel)──> pipeline: decode ─ dedupe ─ segment PUT ─ catalog commit
//!    ^                                                     │
//!    └──────────── acks (only past durable + indexed) ◄────┴─> notifications (bus)
//! ```
//! - [`config`]: the TOML configuration (models, sources, batching) and its validation.
//! - [`source`]: where events come from (file, Kafka, PostgreSQL logical replication) and
//!   how they are acknowledged.
//! - [`format`]: consumers that read one input format into an update's metadata.
//! - [`freshness`]: a source's watermark from upstream evidence only.
//! - [`pipeline`]: batching, segments, the catalog commit, notifications, acknowledgement,
//!   and crash recovery of the segment ledger.
//! - [`deadletter`]: quarantine of events that cannot be decoded.
//! - [`dal`]: the data access layer of a config ([`dal::open_dal`]), for readers.
//! - [`reindex`]: rebuilding the catalog from the object store alone.
//! - [`service`]: all configured sources under one supervisor.
//! - [`telemetry`]: metric names and named events.

pub mod config;
pub mod dal;
pub mod deadletter;
pub mod error;
pub mod format;
pub mod freshness;
pub mod pipeline;
pub mod reindex;
pub mod service;
pub mod source;
pub mod telemetry;

pub use error::{Error, Result};
