//! Aggregation: the builders that fold a record's updates into its state.
//!
//! A builder is a stateless fold. Given the update records of one record, already in
//! time-travel order ([`IndexEntry::order_key`](crate::update::IndexEntry::order_key)) and
//! cut at the time of interest, [`Builders::fold`] replays them, each according to its own
//! `format`, and returns the record's document as of the last one: `Some(fields)`, or `None` when the
//! record does not exist after it (deleted, or never created). Nothing is cached or stored,
//! so fixing a builder needs no backfill: the raw events are the truth.
//!
//! The state is a JSON object whatever the format, so one record's history may mix formats
//! (a table moved from WAL to Debezium keeps one history). Values keep their types:
//! extended-JSON values (`{"$numberLong": "1004"}`, `$numberDecimal`, `$date`, `$oid`) stay
//! as they are, and numbers are never turned into floats on the way.
//!
//! One file per family:
//! - [`mongo`]: native MongoDB change streams, extended JSON (`mongo-change-stream`) and
//!   raw BSON (`mongo-change-stream-bson`, converted to the same extended JSON first).
//! - [`debezium`]: Debezium envelopes, PostgreSQL (`debezium-postgres`, row images) and
//!   MongoDB (`debezium-mongo`).
//! - [`pgoutput`]: PostgreSQL logical replication row images (`pgoutput`), typed by column.
//! - [`protobuf`]: protobuf messages (`protobuf`), read through the source's descriptor.
//! - [`path`]: MongoDB dotted field paths (`a.b.2.c`), shared by both MongoDB families.
//!
//! Each family's file is the one reading of its events: ingestion's consumers call the same
//! module for an event's metadata (op, model, event time, the document its id and
//! references are read from: [`debezium::Envelope`], [`mongo::change_op`] and
//! [`mongo::record_document`], ..., [`ProtobufBuilder::record_json`]; pgoutput's parser is
//! [`crate::pgoutput`]), so the index entry of an event and the state folded from it cannot
//! read the event differently. Reasons are ingestion's reject texts too.
//!
//! Every format but `protobuf` is read from the update record alone. A protobuf event needs
//! its source's message descriptor, which the record does not carry, so the folds are
//! methods of [`Builders`], which holds a [`ProtobufBuilder`] per protobuf source (the
//! ingestion crate makes it from the same config its consumers use). The free [`fold`] and
//! [`apply`] are those of an empty [`Builders`]: a protobuf update through them is
//! [`BuildError::Unsupported`].
//!
//! # Primary-key changes
//!
//! A row whose primary key changes is, for the engine, one record ending and another
//! beginning. pgoutput sends it as one `U` message with an old tuple (`K`: the old key
//! columns, or `O`: the whole old row) whose key columns differ from the new tuple's;
//! Debezium PostgreSQL sends `d` + `c` by default, but an `u` whose `before` carries another
//! id means the same thing. The builders detect it as: the update has an old image, some
//! key column (pgoutput: the Relation's key flags; Debezium: the fields of the Kafka key,
//! else every column) holds the record's own `record_id` in the old image and something
//! else in the new one. Folded as the OLD id's record, such an update ends it (`None`);
//! folded as any other record (the new id), its new image is the state. So the same stored
//! update can be indexed under both ids and each fold reads it right.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::update::UpdateRecord;

pub mod debezium;
pub mod exact;
pub mod mongo;
pub mod path;
pub mod pgoutput;
pub mod protobuf;

pub use protobuf::ProtobufBuilder;

/// A record's state: its fields, as a JSON object.
pub type State = Map<String, Value>;

/// Format names, as the update records carry them (`UpdateRecord::format`).
pub mod formats {
    pub const PGOUTPUT: &str = "pgoutput";
    pub const DEBEZIUM_POSTGRES: &str = "debezium-postgres";
    pub const DEBEZIUM_MONGO: &str = "debezium-mongo";
    pub const MONGO_CHANGE_STREAM: &str = "mongo-change-stream";
    pub const MONGO_CHANGE_STREAM_BSON: &str = "mongo-change-stream-bson";
    pub const PROTOBUF: &str = "protobuf";
}

/// The identity of an update, `(source, position)`, for error messages.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UpdateRef {
    pub source: String,
    pub position: String,
}

impl UpdateRef {
    pub fn of(rec: &UpdateRecord) -> Self {
        UpdateRef {
            source: rec.source.clone(),
            position: rec.position.clone(),
        }
    }
}

impl std::fmt::Display for UpdateRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.source, self.position)
    }
}

/// Why a record's state could not be built. Always definite: the same updates fail the
/// same way, so retrying is pointless; the update named is the one to look at.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The update cannot be read, or cannot be applied to the state before it.
    #[error("cannot build from update {update} (format {format}): {reason}")]
    Invalid {
        update: UpdateRef,
        format: String,
        reason: String,
    },
    /// The update's format has no builder (yet, or at all).
    #[error("cannot build from update {update}: {reason}")]
    Unsupported {
        update: UpdateRef,
        format: String,
        reason: String,
    },
}

impl BuildError {
    /// The update that could not be built from.
    pub fn update(&self) -> &UpdateRef {
        match self {
            BuildError::Invalid { update, .. } | BuildError::Unsupported { update, .. } => update,
        }
    }

    /// Why, without the update's identity.
    pub fn reason(&self) -> &str {
        match self {
            BuildError::Invalid { reason, .. } | BuildError::Unsupported { reason, .. } => reason,
        }
    }
}

/// The version of what the builders do: bump it when a change to any builder folds some
/// update differently, so snapshots folded before are not used ([`Builders::fingerprint`]).
/// 3: numbers a double or a 64-bit integer cannot hold are kept as their text ([`exact`]).
pub const FOLD_VERSION: u32 = 3;

/// The builders of every format, with what some formats need per source: a
/// [`ProtobufBuilder`] for each protobuf source. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Builders {
    /// By source name: a protobuf update is read with its own source's descriptor, since
    /// the update record names the source but not the message type.
    protobuf: HashMap<String, Arc<ProtobufBuilder>>,
}

impl Builders {
    /// Builders of the formats that need nothing per source.
    pub fn new() -> Self {
        Builders::default()
    }

    /// Adds (or replaces) the protobuf builder of `source`.
    pub fn with_protobuf(mut self, source: impl Into<String>, b: ProtobufBuilder) -> Self {
        self.protobuf.insert(source.into(), Arc::new(b));
        self
    }

    /// What these builders fold, as a number: equal for builders that fold every update
    /// to the same state (the same protobuf sources, message types, record fields and
    /// descriptor files, imports included), different otherwise. Stored with each snapshot
    /// ([`crate::update::Snapshot::fold`]) so a snapshot folded by other builders is not
    /// used. Stable across processes and builds (SHA-256, not `Hash`); [`FOLD_VERSION`]
    /// changes it when a builder's behaviour changes.
    pub fn fingerprint(&self) -> u64 {
        use prost::Message;
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        let mut field = |b: &[u8]| {
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        };
        field(&FOLD_VERSION.to_le_bytes());
        let mut sources: Vec<_> = self.protobuf.iter().collect();
        sources.sort_unstable_by_key(|(name, _)| *name);
        for (name, b) in sources {
            field(name.as_bytes());
            field(b.message().full_name().as_bytes());
            let path: Vec<&str> = b
                .record_field()
                .map(|p| p.fields().iter().map(|f| f.name()).collect())
                .unwrap_or_default();
            field(path.join(".").as_bytes());
            // Every file of its pool: the message's own and those it imports.
            for file in b.message().parent_pool().files() {
                field(&file.file_descriptor_proto().encode_to_vec());
            }
        }
        let d = h.finalize();
        u64::from_le_bytes(d[..8].try_into().expect("a SHA-256 digest has 32 bytes"))
    }

    /// The protobuf builder of `source`, if one is registered.
    pub fn protobuf(&self, source: &str) -> Option<&ProtobufBuilder> {
        self.protobuf.get(source).map(|b| b.as_ref())
    }

    /// Folds a record's updates (in time-travel order) into its state after the last one;
    /// `None` if the record does not exist then.
    pub fn fold<'a, I>(&self, records: I) -> Result<Option<State>, BuildError>
    where
        I: IntoIterator<Item = &'a UpdateRecord>,
    {
        records
            .into_iter()
            .try_fold(None, |state, rec| self.apply(state, rec))
    }

    /// Applies one update to the state before it (`None`: the record does not exist).
    pub fn apply(
        &self,
        state: Option<State>,
        rec: &UpdateRecord,
    ) -> Result<Option<State>, BuildError> {
        let invalid = |reason: String| BuildError::Invalid {
            update: UpdateRef::of(rec),
            format: rec.format.clone(),
            reason,
        };
        match rec.format.as_str() {
            formats::MONGO_CHANGE_STREAM => mongo::apply_json(state, &rec.raw).map_err(invalid),
            formats::MONGO_CHANGE_STREAM_BSON => {
                mongo::apply_bson(state, &rec.raw).map_err(invalid)
            }
            formats::DEBEZIUM_MONGO => debezium::apply_mongo(state, &rec.raw).map_err(invalid),
            formats::DEBEZIUM_POSTGRES => debezium::apply_postgres(state, rec).map_err(invalid),
            formats::PGOUTPUT => pgoutput::apply(state, rec).map_err(invalid),
            formats::PROTOBUF => match self.protobuf(&rec.source) {
                Some(b) => b.apply(state, rec).map_err(invalid),
                None => Err(BuildError::Unsupported {
                    update: UpdateRef::of(rec),
                    format: rec.format.clone(),
                    reason: format!(
                        "source {:?} has no protobuf descriptor configured: format \"protobuf\" \
                         is read with its source's message descriptor, which the update record \
                         does not carry",
                        rec.source
                    ),
                }),
            },
            other => Err(BuildError::Unsupported {
                update: UpdateRef::of(rec),
                format: rec.format.clone(),
                reason: format!("unknown format {other:?}"),
            }),
        }
    }
}

/// [`Builders::fold`] with no protobuf builder: a protobuf update is
/// [`BuildError::Unsupported`].
pub fn fold(records: &[UpdateRecord]) -> Result<Option<State>, BuildError> {
    Builders::default().fold(records)
}

/// [`Builders::apply`] with no protobuf builder: a protobuf update is
/// [`BuildError::Unsupported`].
pub fn apply(state: Option<State>, rec: &UpdateRecord) -> Result<Option<State>, BuildError> {
    Builders::default().apply(state, rec)
}

/// What a JSON value is, for error reasons ("a string", "number 42", ...).
pub fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "a document".into(),
    }
}

/// Parses one event as JSON, the reason naming the position and the problem
/// (`invalid JSON at line L column C: problem`).
/// Numbers a double or a 64-bit integer cannot hold are read as strings of their exact
/// text ([`exact`]).
pub fn parse_json(raw: &[u8]) -> Result<Value, String> {
    exact::parse(raw).map_err(|e| json_error("invalid JSON", &e))
}

/// `"{what} at line L column C: problem"` for a serde_json error.
pub fn json_error(what: &str, e: &serde_json::Error) -> String {
    let msg = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let problem = msg.strip_suffix(&suffix).unwrap_or(&msg);
    format!(
        "{what} at line {} column {}: {problem}",
        e.line(),
        e.column()
    )
}

/// A scalar as text, the way ids are compared: strings as they are, numbers and booleans
/// in their JSON form, and the one-key extended-JSON scalars (`$oid`, `$numberLong`, ...).
pub(crate) fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Object(m) if m.len() == 1 => match m.iter().next() {
            Some((k, Value::String(s))) if k.starts_with('$') => Some(s.clone()),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(format: &str, raw: &[u8]) -> UpdateRecord {
        UpdateRecord {
            source: "src".into(),
            position: "42".into(),
            format: format.into(),
            raw: bytes::Bytes::copy_from_slice(raw),
            ..Default::default()
        }
    }

    #[test]
    fn empty_history_is_no_record() {
        assert_eq!(fold(&[]), Ok(None));
    }

    #[test]
    fn unsupported_and_invalid_name_the_update() {
        let e = fold(&[rec("protobuf", b"\x08\x01")]).unwrap_err();
        assert!(matches!(e, BuildError::Unsupported { .. }), "{e}");
        assert_eq!(e.update().to_string(), "src@42");
        assert!(
            e.reason()
                .starts_with("source \"src\" has no protobuf descriptor configured"),
            "{e}"
        );
        // A builder registered for another source does not read this one's events.
        let other = ProtobufBuilder::new(protobuf::tests::pool(), "test.v1.Account", None).unwrap();
        let b = Builders::new().with_protobuf("elsewhere", other);
        let e = b.fold(&[rec("protobuf", b"\x08\x01")]).unwrap_err();
        assert!(matches!(e, BuildError::Unsupported { .. }), "{e}");

        let e = fold(&[rec("csv", b"a,b")]).unwrap_err();
        assert!(e.reason().contains("unknown format \"csv\""), "{e}");

        let e = fold(&[rec("mongo-change-stream", b"{oops")]).unwrap_err();
        assert!(matches!(e, BuildError::Invalid { .. }), "{e}");
        assert!(
            e.to_string().starts_with(
                "cannot build from update src@42 (format mongo-change-stream): invalid JSON"
            ),
            "{e}"
        );
    }

    #[test]
    fn protobuf_dispatches_by_source() {
        use prost_reflect::prost::Message as _;

        let b = ProtobufBuilder::new(protobuf::tests::pool(), "test.v1.Account", None).unwrap();
        let mut msg = prost_reflect::DynamicMessage::new(b.message().clone());
        msg.set_field_by_name("id", prost_reflect::Value::String("a-1".into()));
        msg.set_field_by_name("balance", prost_reflect::Value::I64(-5));
        let builders = Builders::new().with_protobuf("src", b);
        let mut create = rec("protobuf", &msg.encode_to_vec());
        create.op = crate::update::Op::Create as i32;
        let mut delete = create.clone();
        delete.op = crate::update::Op::Delete as i32;
        let want: State = serde_json::from_str(r#"{"id": "a-1", "balance": -5}"#).unwrap();
        assert_eq!(builders.fold([&create]), Ok(Some(want.clone())));
        assert_eq!(builders.apply(None, &create), Ok(Some(want)));
        assert_eq!(builders.fold(&[create.clone(), delete]), Ok(None));
        // Other formats are read as without builders.
        let mongo = rec(
            formats::MONGO_CHANGE_STREAM,
            br#"{"operationType":"insert","fullDocument":{"_id":"x"}}"#,
        );
        assert_eq!(builders.fold([&mongo]), fold(std::slice::from_ref(&mongo)));
        // A bad event of a registered source is invalid, naming the update.
        create.raw = bytes::Bytes::from_static(b"\x12\xff");
        let e = builders.fold([&create]).unwrap_err();
        assert!(matches!(e, BuildError::Invalid { .. }), "{e}");
        assert!(
            e.to_string().starts_with(
                "cannot build from update src@42 (format protobuf): invalid protobuf: not a test.v1.Account"
            ),
            "{e}"
        );
    }

    /// Garbage of every format is an error or a state, never a panic.
    #[test]
    fn never_panics() {
        let inputs: [&[u8]; 8] = [
            b"",
            b"null",
            b"[]",
            b"{}",
            b"{\"op\":\"u\",\"after\":\"[1]\"}",
            b"{\"operationType\":\"update\",\"updateDescription\":{\"updatedFields\":{\"a.99999999999\":1}}}",
            b"\x05\x00\x00\x00\x00",
            b"U\x00\x00\x00\x01",
        ];
        let account = ProtobufBuilder::new(protobuf::tests::pool(), "test.v1.Account", None);
        let event = ProtobufBuilder::new(protobuf::tests::pool(), "test.v1.Event", Some("account"));
        let all = [
            Builders::new(),
            Builders::new().with_protobuf("src", account.unwrap()),
            Builders::new().with_protobuf("src", event.unwrap()),
        ];
        for f in [
            formats::PGOUTPUT,
            formats::DEBEZIUM_POSTGRES,
            formats::DEBEZIUM_MONGO,
            formats::MONGO_CHANGE_STREAM,
            formats::MONGO_CHANGE_STREAM_BSON,
            formats::PROTOBUF,
        ] {
            for raw in inputs {
                let _ = fold(&[rec(f, raw)]);
                let mut base = State::new();
                base.insert("a".into(), Value::from(1));
                let _ = apply(Some(base.clone()), &rec(f, raw));
                for b in &all {
                    let _ = b.fold([&rec(f, raw)]);
                    let _ = b.apply(Some(base.clone()), &rec(f, raw));
                }
            }
        }
    }
}
