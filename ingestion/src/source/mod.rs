//! Sources: where change events come from, and how they are acknowledged.
//!
//! A source pushes [`SourceMsg`]s into a bounded channel (a full channel blocks it: that is
//! the backpressure) and learns through [`Acks`] what the pipeline has made durable and
//! indexed. It must never acknowledge upstream (Kafka offsets, the replication slot) past
//! what [`Acks`] reported. Backends: [`file`], [`kafka`], [`postgres`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use overseer_dal::update::{Micros, SourceState};

use crate::Result;
pub use crate::freshness::{Evidence, Lane};

pub mod file;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "postgres")]
pub mod postgres;

/// One event exactly as received.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceEvent {
    /// The payload, untouched.
    pub raw: Bytes,
    /// The message key (Kafka), if any.
    pub key: Option<Bytes>,
    /// Bytes the payload needs to be interpreted (pgoutput: the Relation message).
    pub context: Option<Bytes>,
    /// Sortable within the source; with the source name, the update's identity.
    pub position: String,
    /// Commit time when the source knows it (PostgreSQL); else the consumer reads it from
    /// the event.
    pub commit_time_us: Option<Micros>,
    /// What to acknowledge upstream once this event is durable (`None`: nothing yet, e.g.
    /// the middle of a transaction).
    pub ack: Option<AckToken>,
    /// Resume point after this event, stored in the catalog with the batch (the file
    /// source resumes from it; for the others it is informational).
    pub checkpoint: Option<String>,
    /// The ordered stream it came on (a Kafka partition; 0 for a file or a slot): the
    /// watermark is the minimum over lanes ([`crate::freshness`]).
    pub lane: Lane,
}

/// What flows from a source into the pipeline.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceMsg {
    Event(SourceEvent),
    /// Upstream evidence that the source's `lanes` (every lane: `None`) are complete up
    /// to this time (see [`crate::freshness`] for what counts).
    Heartbeat {
        watermark_us: Micros,
        evidence: Evidence,
        lanes: Option<Vec<Lane>>,
    },
    /// The lanes the source has, with names for logs and metrics: a Kafka source's
    /// partitions, all of them whether this instance reads them or not (none at start,
    /// until its topics' metadata is known; again when a topic gains partitions). A
    /// source that never sends it has the lanes its events come on.
    Lanes(Vec<(Lane, String)>),
}

/// An upstream acknowledgement, cumulative within its key (a Kafka partition, the LSN, ...).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AckToken {
    /// The next offset to consume on a partition (committed offset semantics).
    Kafka {
        topic: String,
        partition: i32,
        next_offset: i64,
    },
    /// A WAL position every change up to which is durable.
    Lsn(u64),
    /// A byte offset into a file.
    Offset(u64),
}

impl AckToken {
    fn slot(&self) -> (String, i32) {
        match self {
            AckToken::Kafka {
                topic, partition, ..
            } => (topic.clone(), *partition),
            AckToken::Lsn(_) => ("lsn".into(), 0),
            AckToken::Offset(_) => ("offset".into(), 0),
        }
    }

    fn value(&self) -> i128 {
        match self {
            AckToken::Kafka { next_offset, .. } => *next_offset as i128,
            AckToken::Lsn(l) => *l as i128,
            AckToken::Offset(o) => *o as i128,
        }
    }
}

/// Acknowledgements from the pipeline to its source, merged "latest wins" per slot so the
/// pipeline never blocks on a source that is busy pushing events (no deadlock, no growth).
#[derive(Debug, Default)]
pub struct Acks {
    pending: Mutex<BTreeMap<(String, i32), AckToken>>,
    notify: Notify,
}

impl Acks {
    pub fn new() -> Arc<Acks> {
        Arc::new(Acks::default())
    }

    /// Records that everything up to these tokens is durable and indexed.
    pub fn ack(&self, tokens: impl IntoIterator<Item = AckToken>) {
        let mut p = self.pending.lock().expect("acks lock");
        let mut any = false;
        for t in tokens {
            any = true;
            let slot = t.slot();
            match p.get(&slot) {
                Some(old) if old.value() >= t.value() => {}
                _ => {
                    p.insert(slot, t);
                }
            }
        }
        drop(p);
        if any {
            self.notify.notify_one();
        }
    }

    /// Takes what was acknowledged since the last call.
    pub fn take(&self) -> Vec<AckToken> {
        std::mem::take(&mut *self.pending.lock().expect("acks lock"))
            .into_values()
            .collect()
    }

    /// Waits until something is acknowledged.
    pub async fn notified(&self) {
        self.notify.notified().await
    }
}

/// What a running source is given (Vector's `SourceContext`).
#[derive(Debug)]
pub struct SourceContext {
    /// The source's configured name.
    pub name: String,
    /// Into the pipeline; bounded.
    pub tx: mpsc::Sender<SourceMsg>,
    /// From the pipeline: what is durable.
    pub acks: Arc<Acks>,
    /// Stop reading, acknowledge what is durable, return.
    pub shutdown: CancellationToken,
    /// The catalog's record of this source's progress, if it ran before.
    pub resume: Option<SourceState>,
    /// How often a source looks for upstream evidence (`[ingest] heartbeat_ms`).
    pub heartbeat: std::time::Duration,
    /// `[[sources]] caught_up_means_now`: being caught up at the transport (a partition at
    /// its end and quiet for `heartbeat`, a followed file at its end) is taken to mean
    /// complete up to now. Only for
    /// a source with no upstream lag; off by default.
    pub caught_up_means_now: bool,
}

/// A source of change events.
#[async_trait]
pub trait Source: Send {
    /// Reads until shutdown (or, for a finite source, its end), then returns. Returning
    /// drops the sender, which tells the pipeline the source is done.
    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<()>;
}

/// Builds the configured source.
pub fn build(cfg: &crate::config::SourceConfig) -> Result<Box<dyn Source>> {
    if let Some(f) = &cfg.file {
        return Ok(Box::new(file::FileSource::new(f.clone(), cfg.format)));
    }
    #[cfg(feature = "kafka")]
    if let Some(k) = &cfg.kafka {
        return Ok(Box::new(
            kafka::KafkaSource::new(k.clone())?.with_format(cfg.format),
        ));
    }
    #[cfg(feature = "postgres")]
    if let Some(p) = &cfg.postgres {
        return Ok(Box::new(postgres::PgSource::new(p.clone())?));
    }
    for (set, kind) in [
        (cfg.kafka.is_some(), "kafka"),
        (cfg.postgres.is_some(), "postgres"),
    ] {
        if set {
            return Err(crate::Error::Config(format!(
                "sources {:?}: [sources.{kind}] needs overseer-ingestion's cargo feature \"{kind}\", \
                 which this build does not enable",
                cfg.name
            )));
        }
    }
    Err(crate::Error::Config(format!(
        "sources {:?}: no source kind set",
        cfg.name
    )))
}
