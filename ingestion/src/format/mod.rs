//! Consumers: one per input format. A consumer reads one raw event into the metadata of
//! its update document (model, record id, op, event time, references); the raw bytes are
//! stored untouched beside it. A consumer never fails the pipeline: an event it cannot read
//! is a [`Reject`] with a reason, and goes to quarantine.
//!
//! - [`debezium`]: Debezium PostgreSQL and MongoDB envelopes.
//! - [`mongo`]: native MongoDB change-stream events, extended JSON and raw BSON.
//! - [`protobuf`]: protobuf messages read through a configured descriptor; also
//!   [`builders`], the state builders the dal needs per protobuf source.
//! - [`pgoutput`]: row changes from PostgreSQL logical replication.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use overseer_dal::update::{Micros, Op};

use crate::config::{Config, Format, ModelConfig, SourceConfig};
use crate::source::SourceEvent;
use crate::{Error, Result};

pub mod debezium;
pub mod mongo;
pub mod pgoutput;
pub mod protobuf;

pub use protobuf::builders;

/// The metadata a consumer reads out of one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    pub model: String,
    pub record_id: String,
    pub op: Op,
    /// Source commit time.
    pub event_time_us: Micros,
    /// (reference name, value), as configured for the model.
    pub refs: Vec<(String, String)>,
    /// The change's identity in the upstream database when the event carries one
    /// (Debezium's `source.lsn` / `source.ord`, a MongoDB resume token). It becomes the
    /// update's position, so a change re-emitted at a new transport offset — a Debezium
    /// connector restart, a producer retry — is recognised as the same update. `None`: the
    /// transport position (Kafka offset, WAL position, file offset) is the identity.
    pub event_id: Option<String>,
}

/// Why an event was quarantined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reject(pub String);

impl Reject {
    pub fn new(reason: impl Into<String>) -> Self {
        Reject(reason.into())
    }
}

/// A reason from the dal's readers of the formats, as the event's reject.
impl From<String> for Reject {
    fn from(reason: String) -> Self {
        Reject(reason)
    }
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Reads one input format.
pub trait Consumer: Send + Sync + std::fmt::Debug {
    fn format(&self) -> Format;
    /// Reads the event's metadata, or says why it cannot.
    fn decode(&self, ev: &SourceEvent) -> std::result::Result<Decoded, Reject>;
}

/// The models a consumer may produce, and the source's fixed model if it has one.
#[derive(Clone, Debug)]
pub struct Models {
    by_name: HashMap<String, ModelConfig>,
    fixed: Option<String>,
}

impl Models {
    pub fn new(models: &[ModelConfig], fixed: Option<String>) -> Self {
        Models {
            by_name: models.iter().map(|m| (m.name.clone(), m.clone())).collect(),
            fixed,
        }
    }

    /// The model of an event: the source's fixed model, else the one the event names.
    pub fn resolve(&self, from_event: Option<&str>) -> std::result::Result<&ModelConfig, Reject> {
        let name = match (&self.fixed, from_event) {
            (Some(f), _) => f.as_str(),
            (None, Some(n)) => n,
            (None, None) => {
                return Err(Reject::new(
                    "event names no model and the source has no `model` configured",
                ));
            }
        };
        self.by_name
            .get(name)
            .ok_or_else(|| Reject::new(format!("model {name:?} is not configured in [[models]]")))
    }

    /// Id and references of `doc` (a record's document or row image) for `model`.
    pub fn id_and_refs(
        model: &ModelConfig,
        doc: &Value,
    ) -> std::result::Result<(String, Vec<(String, String)>), Reject> {
        let id = json_path(doc, &model.id_field)
            .and_then(scalar_to_string)
            .ok_or_else(|| {
                Reject::new(format!(
                    "no record id: field {:?} missing, null or not a scalar",
                    model.id_field
                ))
            })?;
        Ok((id, refs_of(model, doc)))
    }
}

/// The references of `model` present in `doc`.
pub fn refs_of(model: &ModelConfig, doc: &Value) -> Vec<(String, String)> {
    model
        .references
        .iter()
        .filter_map(|(name, field)| {
            json_path(doc, field)
                .and_then(scalar_to_string)
                .map(|v| (name.clone(), v))
        })
        .collect()
}

/// Follows a dotted path (`a.b.0.c`; numbers index arrays) into a JSON value.
pub fn json_path<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    if let Some(direct) = v.get(path) {
        return Some(direct);
    }
    path.split('.').try_fold(v, |cur, part| match cur {
        Value::Object(m) => m.get(part),
        Value::Array(a) => part.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

/// A scalar as an id/reference string: strings as they are, integers and decimals in their
/// exact decimal form, booleans, and the extended-JSON scalars (`$oid`, `$numberLong`,
/// `$numberInt`, `$numberDecimal`, `$uuid`, `$binary` subtype 4). `null`, arrays and other
/// documents are not ids.
pub fn scalar_to_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Object(m) if m.len() == 1 => {
            let (k, inner) = m.iter().next()?;
            match (k.as_str(), inner) {
                (
                    "$oid" | "$numberLong" | "$numberInt" | "$numberDecimal" | "$uuid",
                    Value::String(s),
                ) => Some(s.clone()),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Builds the consumer of a source.
pub fn build(src: &SourceConfig, cfg: &Config) -> Result<Arc<dyn Consumer>> {
    let models = Models::new(&cfg.models, src.model.clone());
    Ok(match src.format {
        Format::Pgoutput => Arc::new(pgoutput::PgoutputConsumer::new(models)),
        Format::DebeziumPostgres => Arc::new(debezium::DebeziumPostgres::new(models)),
        Format::DebeziumMongo => Arc::new(debezium::DebeziumMongo::new(models)),
        Format::MongoChangeStream => Arc::new(mongo::ChangeStreamJson::new(models)),
        Format::MongoChangeStreamBson => Arc::new(mongo::ChangeStreamBson::new(models)),
        Format::Protobuf => {
            let p = src.protobuf.as_ref().ok_or_else(|| {
                Error::Config(format!(
                    "sources {:?}: [sources.protobuf] missing",
                    src.name
                ))
            })?;
            Arc::new(protobuf::ProtobufConsumer::new(models, p)?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_and_scalars() {
        let d = json!({"a": {"b": [{"c": 5}]}, "x.y": "dotted", "o": {"$oid": "64b"}, "n": {"$numberLong": "1004"}});
        assert_eq!(json_path(&d, "a.b.0.c"), Some(&json!(5)));
        assert_eq!(json_path(&d, "x.y"), Some(&json!("dotted")));
        assert_eq!(scalar_to_string(&d["o"]).as_deref(), Some("64b"));
        assert_eq!(scalar_to_string(&d["n"]).as_deref(), Some("1004"));
        assert_eq!(scalar_to_string(&json!(12.50)).as_deref(), Some("12.5"));
        assert_eq!(scalar_to_string(&json!(null)), None);
        assert_eq!(scalar_to_string(&json!({"a": 1, "b": 2})), None);
    }
}
