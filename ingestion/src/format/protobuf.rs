//! Protobuf messages, read through a configured descriptor ([`ProtobufConsumer`]).
//!
//! The source names a serialized `FileDescriptorSet` (from `protoc --descriptor_set_out
//! --include_imports` or protox) and one message of it; every event is one encoded message,
//! decoded dynamically with prost-reflect. From it:
//! - **event time**: `time_field`, a `google.protobuf.Timestamp`, an integer of epoch
//!   milliseconds, or an RFC 3339 string;
//! - **op**: `op_field`, a string or an enum whose value is named `c/u/d`,
//!   `create/update/replace/delete`, `insert`, `r/read/snapshot` (case-insensitive; an enum
//!   prefix such as `CHANGE_KIND_` is ignored); an unset or absent op field means an update
//!   of the full record;
//! - **id and references**: from `record_field` (a sub-message; the whole message when
//!   absent) in its canonical JSON form with the field names of the .proto (so `id_field =
//!   "account_id"`, not `accountId`). Unset fields are left out of that JSON, so an empty
//!   string never becomes an id or a reference.
//!
//! The model is the source's fixed `model` (config validation requires it).
//!
//! Field paths are resolved against the descriptor once, when the consumer is built: a
//! path that names no field, or a field of the wrong type, is a configuration error naming
//! the key, not a stream of quarantined events.
//!
//! Decoding, the record field and its JSON are those of the dal's
//! [`ProtobufBuilder`](overseer_dal::builder::ProtobufBuilder), which folds the stored
//! events into the record's state: one implementation, so the id and references indexed
//! for an event are read from exactly the record the state is built from. [`builders`]
//! makes that builder for every protobuf source of a config.

use prost_reflect::{DescriptorPool, FieldDescriptor, Kind, Value as PValue};
use serde_json::Value;

use overseer_dal::builder::protobuf::{FieldPath, kind_name, lookup};
use overseer_dal::builder::{Builders, ProtobufBuilder};
use overseer_dal::update::{Micros, Op};

use super::{Consumer, Decoded, Models, Reject};
use crate::config::{Config, Format, ProtobufFormatConfig};
use crate::source::SourceEvent;
use crate::{Error, Result};

/// A protobuf message type read through its descriptor.
#[derive(Debug)]
pub struct ProtobufConsumer {
    models: Models,
    /// The message type and `record_field`, resolved; decodes events and reads their record.
    record: ProtobufBuilder,
    /// `time_field`, resolved.
    time: FieldPath,
    /// `op_field`, resolved.
    op: Option<FieldPath>,
}

impl ProtobufConsumer {
    /// Loads the descriptor set and resolves the configured fields; any problem is an
    /// [`Error::Config`] naming the `[sources.protobuf]` key at fault.
    pub fn new(models: Models, cfg: &ProtobufFormatConfig) -> Result<Self> {
        let record = builder(cfg)?;
        let message = record.message();

        let time = resolve(message, "time_field", &cfg.time_field)?;
        let last = time.leaf();
        let time_ok = !last.is_list()
            && match last.kind() {
                Kind::Message(m) => m.full_name() == "google.protobuf.Timestamp",
                k => is_integer(&k) || k == Kind::String,
            };
        if !time_ok {
            return Err(Error::Config(format!(
                "[sources.protobuf] time_field {:?}: must be a google.protobuf.Timestamp, an integer \
                 of epoch milliseconds or an RFC 3339 string, not {}",
                cfg.time_field,
                kind_name(last)
            )));
        }

        let op = match &cfg.op_field {
            None => None,
            Some(p) => {
                let f = resolve(message, "op_field", p)?;
                let last = f.leaf();
                if last.is_list() || !matches!(last.kind(), Kind::String | Kind::Enum(_)) {
                    return Err(Error::Config(format!(
                        "[sources.protobuf] op_field {p:?}: must be a string or an enum, not {}",
                        kind_name(last)
                    )));
                }
                Some(f)
            }
        };

        Ok(ProtobufConsumer {
            models,
            record,
            time,
            op,
        })
    }
}

/// The state builder of one `[sources.protobuf]`: loads the descriptor set and resolves
/// `message` and `record_field`; any problem is an [`Error::Config`] naming the key.
pub fn builder(cfg: &ProtobufFormatConfig) -> Result<ProtobufBuilder> {
    let path = cfg.descriptor_set.display();
    let bytes = std::fs::read(&cfg.descriptor_set).map_err(|e| {
        Error::Config(format!(
            "[sources.protobuf] descriptor_set {path}: cannot read it: {e}"
        ))
    })?;
    let pool = DescriptorPool::decode(bytes.as_slice()).map_err(|e| {
        Error::Config(format!(
            "[sources.protobuf] descriptor_set {path}: not a valid FileDescriptorSet: {e}"
        ))
    })?;
    ProtobufBuilder::new(pool, &cfg.message, cfg.record_field.as_deref())
        .map_err(|e| Error::Config(format!("[sources.protobuf] {e} (descriptor_set {path})")))
}

/// The state builders for `cfg`'s sources: a [`ProtobufBuilder`] for every `format =
/// "protobuf"` source, from its `[sources.protobuf]`. An error names the source and the key.
pub fn builders(cfg: &Config) -> Result<Builders> {
    let mut out = Builders::new();
    for src in cfg.sources.iter().filter(|s| s.format == Format::Protobuf) {
        let at = |m: String| Error::Config(format!("sources {:?}: {m}", src.name));
        let p = src
            .protobuf
            .as_ref()
            .ok_or_else(|| at("[sources.protobuf] missing".into()))?;
        let b = builder(p).map_err(|e| match e {
            Error::Config(m) => at(m),
            other => other,
        })?;
        out = out.with_protobuf(src.name.clone(), b);
    }
    Ok(out)
}

impl Consumer for ProtobufConsumer {
    fn format(&self) -> Format {
        Format::Protobuf
    }

    fn decode(&self, ev: &SourceEvent) -> std::result::Result<Decoded, Reject> {
        let msg = self.record.decode(ev.raw.as_ref()).map_err(Reject)?;
        let model = self.models.resolve(None)?;

        let event_time_us = match lookup(&msg, self.time.fields()) {
            Some(v) => time_us(&v)
                .map_err(|e| Reject::new(format!("no event time: {} {e}", self.time.name())))?,
            None => ev.commit_time_us.ok_or_else(|| {
                Reject::new(format!("no event time: {} is not set", self.time.name()))
            })?,
        };

        let op = match &self.op {
            None => Op::Update,
            Some(path) => match lookup(&msg, path.fields()) {
                None => Op::Update,
                Some(v) => op_of(&v, path.leaf())?,
            },
        };

        let record_json = Value::Object(self.record.record_image(&msg).map_err(Reject)?);
        let (record_id, refs) = Models::id_and_refs(model, &record_json)?;
        Ok(Decoded {
            model: model.name.clone(),
            record_id,
            op,
            event_time_us,
            refs,
            // The transport position (WAL position, Kafka offset) is the identity.
            event_id: None,
        })
    }
}

/// Resolves the dotted field path of `[sources.protobuf]` `key` against `message`.
fn resolve(message: &prost_reflect::MessageDescriptor, key: &str, path: &str) -> Result<FieldPath> {
    overseer_dal::builder::protobuf::resolve(message, path)
        .map_err(|e| Error::Config(format!("[sources.protobuf] {key} {path:?}: {e}")))
}

fn is_integer(k: &Kind) -> bool {
    matches!(
        k,
        Kind::Int32
            | Kind::Int64
            | Kind::Uint32
            | Kind::Uint64
            | Kind::Sint32
            | Kind::Sint64
            | Kind::Fixed32
            | Kind::Fixed64
            | Kind::Sfixed32
            | Kind::Sfixed64
    )
}

/// A time field's value in microseconds since the epoch.
fn time_us(v: &PValue) -> std::result::Result<Micros, String> {
    let out_of_range = || "is out of range".to_string();
    match v {
        PValue::Message(ts) => {
            let secs = ts
                .get_field_by_name("seconds")
                .and_then(|s| s.as_i64())
                .unwrap_or(0);
            let nanos = ts
                .get_field_by_name("nanos")
                .and_then(|n| n.as_i32())
                .unwrap_or(0);
            secs.checked_mul(1_000_000)
                .and_then(|us| us.checked_add(i64::from(nanos) / 1000))
                .ok_or_else(out_of_range)
        }
        PValue::I64(ms) => ms.checked_mul(1000).ok_or_else(out_of_range),
        PValue::I32(ms) => Ok(i64::from(*ms) * 1000),
        PValue::U32(ms) => Ok(i64::from(*ms) * 1000),
        PValue::U64(ms) => i64::try_from(*ms)
            .ok()
            .and_then(|ms| ms.checked_mul(1000))
            .ok_or_else(out_of_range),
        PValue::String(s) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|d| d.timestamp_micros())
            .map_err(|e| format!("{s:?} is not an RFC 3339 time: {e}")),
        other => Err(format!("is not a time (found {other:?})")),
    }
}

/// The op named by a string or enum field.
fn op_of(v: &PValue, field: &FieldDescriptor) -> std::result::Result<Op, Reject> {
    let name = match v {
        PValue::String(s) => s.clone(),
        PValue::EnumNumber(n) => {
            let value = field.kind().as_enum().and_then(|e| e.get_value(*n));
            match value {
                Some(ev) => ev.name().to_owned(),
                None => {
                    return Err(Reject::new(format!(
                        "unknown op: {} = {n} is not a value of its enum",
                        field.name()
                    )));
                }
            }
        }
        other => return Err(Reject::new(format!("unknown op {other:?}"))),
    };
    op_named(&name).ok_or_else(|| Reject::new(format!("unknown op {name:?}")))
}

/// `c/u/d`, `create/update/replace/delete`, `insert`, `r/read/snapshot`, case-insensitive,
/// also as the last word of an enum value name (`CHANGE_KIND_DELETE`).
fn op_named(name: &str) -> Option<Op> {
    let lower = name.to_ascii_lowercase();
    let word = |s: &str| match s {
        "c" | "create" | "insert" | "r" | "read" | "snapshot" => Some(Op::Create),
        "u" | "update" => Some(Op::Update),
        "replace" => Some(Op::Replace),
        "d" | "delete" => Some(Op::Delete),
        _ => None,
    };
    word(&lower).or_else(|| lower.rsplit_once('_').and_then(|(_, w)| word(w)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;
    use bytes::Bytes;
    use prost_reflect::prost::Message as _;
    use prost_reflect::{DynamicMessage, MessageDescriptor};
    use std::path::{Path, PathBuf};

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
    }

    /// Compiles tests/fixtures/transfer_event.proto into a descriptor set file.
    fn descriptor_set(dir: &Path) -> PathBuf {
        let fds = protox::compile(["transfer_event.proto"], [fixtures()]).unwrap();
        let out = dir.join("transfer_event.binpb");
        std::fs::write(&out, fds.encode_to_vec()).unwrap();
        out
    }

    fn cfg(ds: &Path) -> ProtobufFormatConfig {
        ProtobufFormatConfig {
            descriptor_set: ds.to_owned(),
            message: "payments.v1.TransferEvent".into(),
            time_field: "committed_at".into(),
            op_field: Some("kind".into()),
            record_field: Some("transfer".into()),
        }
    }

    fn models() -> Models {
        Models::new(
            &[ModelConfig {
                name: "payments.transfers".into(),
                id_field: "id".into(),
                references: [("account".to_string(), "account_id".to_string())].into(),
            }],
            Some("payments.transfers".into()),
        )
    }

    fn event(raw: Vec<u8>) -> SourceEvent {
        SourceEvent {
            raw: Bytes::from(raw),
            key: None,
            context: None,
            position: "0".into(),
            commit_time_us: None,
            ack: None,
            checkpoint: None,
            lane: 0,
        }
    }

    /// Encodes a TransferEvent given as proto3 JSON.
    fn encode(pool_desc: &MessageDescriptor, json: &str) -> Vec<u8> {
        let mut de = serde_json::Deserializer::from_str(json);
        let m = DynamicMessage::deserialize(pool_desc.clone(), &mut de).unwrap();
        m.encode_to_vec()
    }

    #[test]
    fn reads_time_op_id_refs() {
        let dir = tempfile::tempdir().unwrap();
        let ds = descriptor_set(dir.path());
        let c = ProtobufConsumer::new(models(), &cfg(&ds)).unwrap();
        assert_eq!(c.format(), Format::Protobuf);
        let raw = encode(
            c.record.message(),
            r#"{"committedAt": "2024-03-01T12:00:00.000123Z", "kind": "CHANGE_KIND_CREATE",
                "transfer": {"id": "t-1001", "accountId": "acc-1", "asset": "BTC", "amount": "0.5"}}"#,
        );
        let d = c.decode(&event(raw)).unwrap();
        assert_eq!(
            d,
            Decoded {
                model: "payments.transfers".into(),
                record_id: "t-1001".into(),
                op: Op::Create,
                event_time_us: 1_709_294_400_000_123,
                refs: vec![("account".into(), "acc-1".into())],
                event_id: None,
            }
        );
        // Op unset → update; enum names are matched by their last word.
        let raw = encode(
            c.record.message(),
            r#"{"committedAt": "2024-03-01T12:00:01Z", "transfer": {"id": "t-1"}}"#,
        );
        assert_eq!(c.decode(&event(raw)).unwrap().op, Op::Update);
        let raw = encode(
            c.record.message(),
            r#"{"committedAt": "2024-03-01T12:00:01Z", "kind": "CHANGE_KIND_DELETE", "transfer": {"id": "t-1"}}"#,
        );
        assert_eq!(c.decode(&event(raw)).unwrap().op, Op::Delete);
    }

    #[test]
    fn string_op_integer_millis_and_whole_message() {
        let dir = tempfile::tempdir().unwrap();
        let ds = descriptor_set(dir.path());
        let cfg = ProtobufFormatConfig {
            descriptor_set: ds,
            message: "payments.v1.Transfer".into(),
            time_field: "updated_at_ms".into(),
            op_field: Some("op".into()),
            record_field: None,
        };
        let c = ProtobufConsumer::new(models(), &cfg).unwrap();
        for (op, want) in [
            ("c", Op::Create),
            ("U", Op::Update),
            ("delete", Op::Delete),
            ("insert", Op::Create),
            ("replace", Op::Replace),
        ] {
            let raw = encode(
                c.record.message(),
                &format!(
                    r#"{{"id": "t-7", "accountId": "acc-9", "updatedAtMs": "1709294400123", "op": "{op}"}}"#
                ),
            );
            let d = c.decode(&event(raw)).unwrap();
            assert_eq!(
                (d.op, d.event_time_us, d.record_id.as_str()),
                (want, 1_709_294_400_123_000, "t-7")
            );
            assert_eq!(d.refs, vec![("account".into(), "acc-9".into())]);
        }
        let raw = encode(
            c.record.message(),
            r#"{"id": "t-7", "updatedAtMs": "1", "op": "x"}"#,
        );
        assert_eq!(c.decode(&event(raw)).unwrap_err().0, "unknown op \"x\"");
        // An empty id is unset in proto3: no record id.
        let raw = encode(c.record.message(), r#"{"updatedAtMs": "1"}"#);
        assert!(
            c.decode(&event(raw))
                .unwrap_err()
                .0
                .starts_with("no record id")
        );
    }

    #[test]
    fn rejects_bad_events() {
        let dir = tempfile::tempdir().unwrap();
        let ds = descriptor_set(dir.path());
        let c = ProtobufConsumer::new(models(), &cfg(&ds)).unwrap();
        let r = c.decode(&event(vec![0xff, 0xff, 0xff])).unwrap_err().0;
        assert!(
            r.starts_with("invalid protobuf: not a payments.v1.TransferEvent: "),
            "{r}"
        );
        let raw = encode(c.record.message(), r#"{"transfer": {"id": "t-1"}}"#);
        assert_eq!(
            c.decode(&event(raw)).unwrap_err().0,
            "no event time: committed_at is not set"
        );
        let raw = encode(
            c.record.message(),
            r#"{"committedAt": "2024-03-01T12:00:01Z"}"#,
        );
        assert_eq!(
            c.decode(&event(raw)).unwrap_err().0,
            "record field transfer is not set"
        );
        let raw = encode(
            c.record.message(),
            r#"{"committedAt": "2024-03-01T12:00:01Z", "kind": 9, "transfer": {"id": "t-1"}}"#,
        );
        assert_eq!(
            c.decode(&event(raw)).unwrap_err().0,
            "unknown op: kind = 9 is not a value of its enum"
        );
        // Arbitrary bytes never panic.
        let good = encode(
            c.record.message(),
            r#"{"committedAt": "2024-03-01T12:00:01Z", "kind": 1, "transfer": {"id": "t-1", "accountId": "a"}}"#,
        );
        for n in 0..good.len() {
            let _ = c.decode(&event(good[..n].to_vec()));
            let mut bad = good.clone();
            bad[n] ^= 0xff;
            let _ = c.decode(&event(bad));
        }
    }

    #[test]
    fn config_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let ds = descriptor_set(dir.path());
        let err = |c: ProtobufFormatConfig| match ProtobufConsumer::new(models(), &c) {
            Err(Error::Config(m)) => m,
            other => panic!("expected a config error, got {other:?}"),
        };
        let m = err(ProtobufFormatConfig {
            descriptor_set: dir.path().join("nope.binpb"),
            ..cfg(&ds)
        });
        assert!(
            m.starts_with("[sources.protobuf] descriptor_set ") && m.contains("cannot read it"),
            "{m}"
        );
        let junk = dir.path().join("junk.binpb");
        std::fs::write(&junk, b"\xff\xff not a descriptor").unwrap();
        let m = err(ProtobufFormatConfig {
            descriptor_set: junk,
            ..cfg(&ds)
        });
        assert!(m.contains("not a valid FileDescriptorSet"), "{m}");
        let m = err(ProtobufFormatConfig {
            message: "payments.v1.Nope".into(),
            ..cfg(&ds)
        });
        assert!(
            m.starts_with(
                "[sources.protobuf] message \"payments.v1.Nope\" is not in the descriptor set"
            ),
            "{m}"
        );
        assert!(m.contains("payments.v1.TransferEvent"), "{m}");
        assert!(
            m.ends_with(&format!("(descriptor_set {})", ds.display())),
            "{m}"
        );
        let m = err(ProtobufFormatConfig {
            time_field: "committed".into(),
            ..cfg(&ds)
        });
        assert!(m.starts_with("[sources.protobuf] time_field \"committed\": message payments.v1.TransferEvent has no field"), "{m}");
        let m = err(ProtobufFormatConfig {
            time_field: "transfer".into(),
            ..cfg(&ds)
        });
        assert!(
            m.contains("time_field \"transfer\": must be a google.protobuf.Timestamp"),
            "{m}"
        );
        let m = err(ProtobufFormatConfig {
            op_field: Some("committed_at".into()),
            ..cfg(&ds)
        });
        assert!(
            m.contains("op_field \"committed_at\": must be a string or an enum"),
            "{m}"
        );
        let m = err(ProtobufFormatConfig {
            record_field: Some("kind".into()),
            ..cfg(&ds)
        });
        assert!(
            m.contains("record_field \"kind\": must be a (singular) message"),
            "{m}"
        );
        // Nested paths resolve through messages.
        let ok = ProtobufConsumer::new(
            models(),
            &ProtobufFormatConfig {
                time_field: "meta.ts".into(),
                ..cfg(&ds)
            },
        );
        assert!(ok.is_ok());
        let m = err(ProtobufFormatConfig {
            time_field: "kind.x".into(),
            ..cfg(&ds)
        });
        assert!(m.contains("\"kind\" is not a singular message"), "{m}");
    }
}
