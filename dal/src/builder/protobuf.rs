//! Protobuf messages read through the source's descriptor (`protobuf`).
//!
//! Every event of a protobuf source is one encoded message of a type the source is
//! configured with (a descriptor set and a message name). The update record carries only
//! the bytes, so the builder is made per source ([`ProtobufBuilder::new`]) and registered
//! under the source's name in [`Builders`](super::Builders).
//!
//! Every event carries a full image of the record: `record_field`, a sub-message (the whole
//! message when absent). A delete (the op ingestion read from the event and stored in the
//! update record) ends the record; any other op makes the image the new state, whatever was
//! there before.
//!
//! The image is the record's JSON, made so that values keep their types:
//! - field names as in the .proto (`account_id`, not `accountId`);
//! - unset fields left out (proto3 scalars without presence: those holding their default,
//!   which proto3 cannot tell from unset; an `optional` field set to `0` is kept);
//! - 64-bit integers as JSON numbers, not the strings of canonical proto3 JSON;
//! - enums by value name; well-known types in their JSON form (a `Timestamp` is an
//!   RFC 3339 string).
//!
//! Ingestion reads ids and references out of this same JSON ([`ProtobufBuilder::record_json`],
//! and [`resolve`] / [`lookup`] for its other fields), so the index entry of an event and the
//! state built from it cannot disagree about what the record is.

use std::borrow::Cow;

use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage,
    SerializeOptions, Value as PValue,
};
use serde_json::Value;

use super::{State, describe};
use crate::update::{Op, UpdateRecord};

/// Builds the state of a protobuf source's records: one message type, one record field.
#[derive(Clone, Debug)]
pub struct ProtobufBuilder {
    /// The type of every event of the source.
    message: MessageDescriptor,
    /// `record_field`, resolved; the whole message when `None`.
    record: Option<FieldPath>,
}

impl ProtobufBuilder {
    /// The builder of events of type `message` (full name, e.g. `payments.v1.TransferEvent`)
    /// whose record is at `record_field` (a dotted path to a singular message field; the
    /// whole message when `None`). The error names the problem: a message not in `pool`
    /// (listing some that are), a path naming no field, a record field not a message.
    pub fn new(
        pool: DescriptorPool,
        message: &str,
        record_field: Option<&str>,
    ) -> Result<Self, String> {
        let message = pool.get_message_by_name(message).ok_or_else(|| {
            let mut known: Vec<String> = pool
                .all_messages()
                .filter(|m| !m.full_name().starts_with("google.protobuf."))
                .map(|m| m.full_name().to_owned())
                .take(20)
                .collect();
            known.sort();
            format!(
                "message {message:?} is not in the descriptor set (it has: {})",
                known.join(", ")
            )
        })?;
        let record = match record_field {
            None => None,
            Some(p) => {
                let f = resolve(&message, p).map_err(|e| format!("record_field {p:?}: {e}"))?;
                let leaf = f.leaf();
                if leaf.is_list() || leaf.is_map() || !matches!(leaf.kind(), Kind::Message(_)) {
                    return Err(format!(
                        "record_field {p:?}: must be a (singular) message, not {}",
                        kind_name(leaf)
                    ));
                }
                Some(f)
            }
        };
        Ok(ProtobufBuilder { message, record })
    }

    /// The type of the source's events.
    pub fn message(&self) -> &MessageDescriptor {
        &self.message
    }

    /// The record field, resolved; `None`: the whole message is the record.
    pub fn record_field(&self) -> Option<&FieldPath> {
        self.record.as_ref()
    }

    /// Decodes one event.
    pub fn decode(&self, raw: &[u8]) -> Result<DynamicMessage, String> {
        DynamicMessage::decode(self.message.clone(), raw)
            .map_err(|e| format!("invalid protobuf: not a {}: {e}", self.message.full_name()))
    }

    /// The record of `msg` (an event of [`message`](Self::message)) as JSON, made as the
    /// module docs say; `None` when the record field is not set.
    pub fn record_json(&self, msg: &DynamicMessage) -> Result<Option<State>, String> {
        if msg.descriptor() != self.message {
            return Err(format!(
                "a {} is not a {}",
                msg.descriptor().full_name(),
                self.message.full_name()
            ));
        }
        let record = match &self.record {
            None => Cow::Borrowed(msg),
            Some(path) => match lookup(msg, path.fields()) {
                Some(Cow::Borrowed(PValue::Message(m))) => Cow::Borrowed(m),
                Some(Cow::Owned(PValue::Message(m))) => Cow::Owned(m),
                _ => return Ok(None),
            },
        };
        let opts = SerializeOptions::new()
            .use_proto_field_name(true)
            .stringify_64_bit_integers(false)
            .skip_default_fields(true)
            .use_enum_numbers(false);
        match record.serialize_with_options(serde_json::value::Serializer, &opts) {
            Ok(Value::Object(m)) => Ok(Some(m)),
            Ok(other) => Err(format!(
                "record {} is not a document in JSON but {}",
                record.descriptor().full_name(),
                describe(&other)
            )),
            Err(e) => Err(format!("record cannot be read as JSON: {e}")),
        }
    }

    /// The record of `msg` as JSON; an error when the record field is not set.
    pub fn record_image(&self, msg: &DynamicMessage) -> Result<State, String> {
        self.record_json(msg)?.ok_or_else(|| match &self.record {
            Some(path) => format!("record field {} is not set", path.name()),
            // The whole message is always there.
            None => "record is not set".into(),
        })
    }

    /// Applies one update of the source: a delete ends the record, anything else replaces
    /// it with the event's record image.
    /// Each event is a full image, so the state before it does not matter.
    pub fn apply(
        &self,
        _state: Option<State>,
        rec: &UpdateRecord,
    ) -> Result<Option<State>, String> {
        if rec.op() == Op::Delete {
            return Ok(None);
        }
        let msg = self.decode(&rec.raw)?;
        self.record_image(&msg).map(Some)
    }
}

/// A dotted field path resolved against a message descriptor.
#[derive(Clone, Debug)]
pub struct FieldPath {
    /// Every field of the path, outermost first; never empty.
    fields: Vec<FieldDescriptor>,
}

impl FieldPath {
    /// The fields of the path, outermost first; never empty.
    pub fn fields(&self) -> &[FieldDescriptor] {
        &self.fields
    }

    /// The last field of the path.
    pub fn leaf(&self) -> &FieldDescriptor {
        // `resolve` never builds an empty path.
        &self.fields[self.fields.len() - 1]
    }

    /// The path as written, with the .proto's field names (`meta.ts`).
    pub fn name(&self) -> String {
        self.fields
            .iter()
            .map(|f| f.name())
            .collect::<Vec<_>>()
            .join(".")
    }
}

/// Resolves a dotted field path (`meta.ts`) against `message`: every step but the last must
/// be a singular message field. The error says which step fails and why.
pub fn resolve(message: &MessageDescriptor, path: &str) -> Result<FieldPath, String> {
    if path.is_empty() {
        return Err("the path is empty".into());
    }
    let mut fields = Vec::new();
    let mut cur = message.clone();
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let f = cur
            .get_field_by_name(part)
            .ok_or_else(|| format!("message {} has no field {part:?}", cur.full_name()))?;
        if i + 1 < parts.len() {
            match f.kind() {
                Kind::Message(m) if !f.is_list() && !f.is_map() => cur = m,
                _ => {
                    return Err(format!(
                        "{part:?} is not a singular message, so it has no fields"
                    ));
                }
            }
        }
        fields.push(f);
    }
    Ok(FieldPath { fields })
}

/// The value at `path` (fields of `msg`'s type, as [`resolve`] gives them), `None` when it
/// or any message on the way is unset (for proto3 scalars without presence: when it holds
/// its default).
pub fn lookup<'a>(msg: &'a DynamicMessage, path: &[FieldDescriptor]) -> Option<Cow<'a, PValue>> {
    let (first, rest) = path.split_first()?;
    if first.parent_message() != &msg.descriptor() || !msg.has_field(first) {
        return None;
    }
    let v = msg.get_field(first);
    if rest.is_empty() {
        return Some(v);
    }
    match v {
        Cow::Borrowed(PValue::Message(m)) => lookup(m, rest),
        Cow::Owned(PValue::Message(m)) => lookup(&m, rest).map(|c| Cow::Owned(c.into_owned())),
        _ => None,
    }
}

/// A field's type, for error messages (`string`, `repeated int64`, `enum a.B`, `a.Msg`).
pub fn kind_name(f: &FieldDescriptor) -> String {
    let k = match f.kind() {
        Kind::Message(m) => m.full_name().to_owned(),
        Kind::Enum(e) => format!("enum {}", e.full_name()),
        k => format!("{k:?}").to_lowercase(),
    };
    if f.is_map() {
        format!("a map ({k})")
    } else if f.is_list() {
        format!("repeated {k}")
    } else {
        k
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use prost_reflect::prost::Message as _;
    use prost_reflect::prost_types::field_descriptor_proto::{Label, Type};
    use prost_reflect::prost_types::{
        DescriptorProto, EnumDescriptorProto, EnumValueDescriptorProto, FieldDescriptorProto,
        FileDescriptorProto, FileDescriptorSet,
    };
    use serde_json::json;

    fn field(name: &str, number: i32, ty: Type, type_name: Option<&str>) -> FieldDescriptorProto {
        FieldDescriptorProto {
            name: Some(name.into()),
            number: Some(number),
            label: Some(Label::Optional as i32),
            r#type: Some(ty as i32),
            type_name: type_name.map(|t| format!(".test.v1.{t}")),
            ..Default::default()
        }
    }

    fn message(name: &str, fields: Vec<FieldDescriptorProto>) -> DescriptorProto {
        DescriptorProto {
            name: Some(name.into()),
            field: fields,
            ..Default::default()
        }
    }

    /// ```proto
    /// package test.v1;
    /// enum Kind { KIND_UNSPECIFIED = 0; KIND_CREATE = 1; KIND_DELETE = 3; }
    /// message Inner { int32 n = 1; }
    /// message Account {
    ///   string id = 1; int64 balance = 2; uint64 big = 3; Kind kind = 4;
    ///   repeated string tags = 5; Inner inner = 6; double ratio = 7; bool ok = 8;
    ///   string display_name = 9; optional sint64 opt = 10;
    /// }
    /// message Event { Kind kind = 1; Account account = 2; repeated Account history = 3;
    ///   string note = 4; Wrap wrap = 5; }
    /// message Wrap { Account account = 1; }
    /// ```
    pub(in crate::builder) fn pool() -> DescriptorPool {
        let mut tags = field("tags", 5, Type::String, None);
        tags.label = Some(Label::Repeated as i32);
        let mut history = field("history", 3, Type::Message, Some("Account"));
        history.label = Some(Label::Repeated as i32);
        let mut opt = field("opt", 10, Type::Sint64, None);
        opt.proto3_optional = Some(true);
        opt.oneof_index = Some(0);
        let mut account = message(
            "Account",
            vec![
                field("id", 1, Type::String, None),
                field("balance", 2, Type::Int64, None),
                field("big", 3, Type::Uint64, None),
                field("kind", 4, Type::Enum, Some("Kind")),
                tags,
                field("inner", 6, Type::Message, Some("Inner")),
                field("ratio", 7, Type::Double, None),
                field("ok", 8, Type::Bool, None),
                field("display_name", 9, Type::String, None),
                opt,
            ],
        );
        account.oneof_decl = vec![prost_reflect::prost_types::OneofDescriptorProto {
            name: Some("_opt".into()),
            ..Default::default()
        }];
        let file = FileDescriptorProto {
            name: Some("test.proto".into()),
            package: Some("test.v1".into()),
            syntax: Some("proto3".into()),
            enum_type: vec![EnumDescriptorProto {
                name: Some("Kind".into()),
                value: [
                    ("KIND_UNSPECIFIED", 0),
                    ("KIND_CREATE", 1),
                    ("KIND_DELETE", 3),
                ]
                .into_iter()
                .map(|(n, v)| EnumValueDescriptorProto {
                    name: Some(n.into()),
                    number: Some(v),
                    ..Default::default()
                })
                .collect(),
                ..Default::default()
            }],
            message_type: vec![
                message("Inner", vec![field("n", 1, Type::Int32, None)]),
                account,
                message(
                    "Event",
                    vec![
                        field("kind", 1, Type::Enum, Some("Kind")),
                        field("account", 2, Type::Message, Some("Account")),
                        history,
                        field("note", 4, Type::String, None),
                        field("wrap", 5, Type::Message, Some("Wrap")),
                    ],
                ),
                message(
                    "Wrap",
                    vec![field("account", 1, Type::Message, Some("Account"))],
                ),
            ],
            ..Default::default()
        };
        let set = FileDescriptorSet { file: vec![file] };
        DescriptorPool::decode(set.encode_to_vec().as_slice()).unwrap()
    }

    /// Encodes a message given in proto3 JSON.
    fn encode(b: &ProtobufBuilder, json: &str) -> Vec<u8> {
        let mut de = serde_json::Deserializer::from_str(json);
        DynamicMessage::deserialize(b.message().clone(), &mut de)
            .unwrap()
            .encode_to_vec()
    }

    fn rec(op: Op, raw: Vec<u8>) -> UpdateRecord {
        UpdateRecord {
            source: "accounts".into(),
            position: "7".into(),
            format: "protobuf".into(),
            op: op as i32,
            raw: raw.into(),
            ..Default::default()
        }
    }

    fn obj(v: Value) -> State {
        match v {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn record_json_keeps_names_and_types() {
        let b = ProtobufBuilder::new(pool(), "test.v1.Event", Some("account")).unwrap();
        let raw = encode(
            &b,
            r#"{"kind": "KIND_CREATE", "note": "n", "account": {"id": "a-1",
                "balance": "-9007199254740993", "big": "18446744073709551615", "kind": 3,
                "tags": ["x", "y"], "inner": {"n": 4}, "ratio": 0.25, "ok": true,
                "displayName": "Ann", "opt": "0"}}"#,
        );
        let msg = b.decode(&raw).unwrap();
        assert_eq!(
            b.record_json(&msg).unwrap(),
            Some(obj(json!({
                "id": "a-1",
                "balance": -9_007_199_254_740_993_i64,
                "big": u64::MAX,
                "kind": "KIND_DELETE",
                "tags": ["x", "y"],
                "inner": {"n": 4},
                "ratio": 0.25,
                "ok": true,
                "display_name": "Ann",
                // An optional field set to its default is set.
                "opt": 0,
            })))
        );
        // Unset (and proto3 default) fields are left out.
        let raw = encode(
            &b,
            r#"{"account": {"id": "a-2", "balance": "0", "ok": false}}"#,
        );
        let msg = b.decode(&raw).unwrap();
        assert_eq!(
            b.record_json(&msg).unwrap(),
            Some(obj(json!({"id": "a-2"})))
        );
        // An empty record is set but has no fields; an absent one is not set.
        let msg = b.decode(&encode(&b, r#"{"account": {}}"#)).unwrap();
        assert_eq!(b.record_json(&msg).unwrap(), Some(State::new()));
        let msg = b.decode(&encode(&b, r#"{"note": "x"}"#)).unwrap();
        assert_eq!(b.record_json(&msg).unwrap(), None);
        assert_eq!(
            b.record_image(&msg).unwrap_err(),
            "record field account is not set"
        );
        // A message of another type is refused, not misread.
        let other = DynamicMessage::new(pool().get_message_by_name("test.v1.Inner").unwrap());
        assert_eq!(
            b.record_json(&other).unwrap_err(),
            "a test.v1.Inner is not a test.v1.Event"
        );
    }

    #[test]
    fn nested_record_field_and_whole_message() {
        let b = ProtobufBuilder::new(pool(), "test.v1.Event", Some("wrap.account")).unwrap();
        assert_eq!(
            b.record_field().map(FieldPath::name).as_deref(),
            Some("wrap.account")
        );
        let msg = b
            .decode(&encode(&b, r#"{"wrap": {"account": {"id": "w"}}}"#))
            .unwrap();
        assert_eq!(b.record_json(&msg).unwrap(), Some(obj(json!({"id": "w"}))));
        let msg = b.decode(&encode(&b, r#"{"wrap": {}}"#)).unwrap();
        assert_eq!(b.record_json(&msg).unwrap(), None);

        let b = ProtobufBuilder::new(pool(), "test.v1.Account", None).unwrap();
        assert!(b.record_field().is_none());
        let msg = b.decode(&encode(&b, r#"{"id": "a", "big": "5"}"#)).unwrap();
        assert_eq!(
            b.record_json(&msg).unwrap(),
            Some(obj(json!({"id": "a", "big": 5})))
        );
        let msg = b.decode(b"").unwrap();
        assert_eq!(b.record_image(&msg).unwrap(), State::new());
    }

    #[test]
    fn apply_replaces_and_deletes() {
        let b = ProtobufBuilder::new(pool(), "test.v1.Event", Some("account")).unwrap();
        let create = rec(
            Op::Create,
            encode(
                &b,
                r#"{"account": {"id": "a", "balance": "10", "tags": ["t"]}}"#,
            ),
        );
        let update = rec(
            Op::Update,
            encode(&b, r#"{"account": {"id": "a", "big": "3"}}"#),
        );
        let s1 = b.apply(None, &create).unwrap();
        assert_eq!(
            s1,
            Some(obj(json!({"id": "a", "balance": 10, "tags": ["t"]})))
        );
        // A full image: fields the update leaves out are gone.
        let s2 = b.apply(s1, &update).unwrap();
        assert_eq!(s2, Some(obj(json!({"id": "a", "big": 3}))));
        // A delete ends the record, whatever its bytes.
        assert_eq!(b.apply(s2, &rec(Op::Delete, b"\xff".to_vec())), Ok(None));
        // Unspecified or replace: also a full image.
        for op in [Op::Unspecified, Op::Replace] {
            assert_eq!(
                b.apply(None, &rec(op, update.raw.to_vec())).unwrap(),
                Some(obj(json!({"id": "a", "big": 3})))
            );
        }
        let e = b
            .apply(None, &rec(Op::Update, encode(&b, r#"{"note": "x"}"#)))
            .unwrap_err();
        assert_eq!(e, "record field account is not set");
        let e = b
            .apply(None, &rec(Op::Update, b"\x12\xff".to_vec()))
            .unwrap_err();
        assert!(
            e.starts_with("invalid protobuf: not a test.v1.Event: "),
            "{e}"
        );
    }

    #[test]
    fn new_names_the_problem() {
        let err = |m: &str, r: Option<&str>| ProtobufBuilder::new(pool(), m, r).unwrap_err();
        assert_eq!(
            err("test.v1.Nope", None),
            "message \"test.v1.Nope\" is not in the descriptor set (it has: test.v1.Account, \
             test.v1.Event, test.v1.Inner, test.v1.Wrap)"
        );
        assert_eq!(
            err("test.v1.Event", Some("acount")),
            "record_field \"acount\": message test.v1.Event has no field \"acount\""
        );
        assert_eq!(
            err("test.v1.Event", Some("note.x")),
            "record_field \"note.x\": \"note\" is not a singular message, so it has no fields"
        );
        assert_eq!(
            err("test.v1.Event", Some("history.id")),
            "record_field \"history.id\": \"history\" is not a singular message, so it has no fields"
        );
        assert_eq!(
            err("test.v1.Event", Some("kind")),
            "record_field \"kind\": must be a (singular) message, not enum test.v1.Kind"
        );
        assert_eq!(
            err("test.v1.Event", Some("history")),
            "record_field \"history\": must be a (singular) message, not repeated test.v1.Account"
        );
        assert_eq!(
            err("test.v1.Event", Some("")),
            "record_field \"\": the path is empty"
        );
    }

    #[test]
    fn lookup_follows_set_messages() {
        let b = ProtobufBuilder::new(pool(), "test.v1.Event", None).unwrap();
        let ev = b.message();
        let msg = b
            .decode(&encode(&b, r#"{"wrap": {"account": {"inner": {"n": 2}}}}"#))
            .unwrap();
        let n = resolve(ev, "wrap.account.inner.n").unwrap();
        assert_eq!(n.leaf().name(), "n");
        assert_eq!(lookup(&msg, n.fields()).as_deref(), Some(&PValue::I32(2)));
        let id = resolve(ev, "wrap.account.id").unwrap();
        assert_eq!(lookup(&msg, id.fields()), None);
        let note = resolve(ev, "note").unwrap();
        assert_eq!(lookup(&msg, note.fields()), None);
        // Fields of another message are never read from this one.
        let inner_n = resolve(&pool().get_message_by_name("test.v1.Inner").unwrap(), "n").unwrap();
        assert_eq!(lookup(&msg, inner_n.fields()), None);
    }

    /// Truncated and corrupted events are errors, never panics.
    #[test]
    fn garbage_is_an_error() {
        let b = ProtobufBuilder::new(pool(), "test.v1.Event", Some("account")).unwrap();
        let good = encode(
            &b,
            r#"{"kind": 1, "account": {"id": "a", "balance": "1", "tags": ["t"], "inner": {"n": 1}}}"#,
        );
        for n in 0..good.len() {
            let _ = b.apply(None, &rec(Op::Update, good[..n].to_vec()));
            let mut bad = good.clone();
            bad[n] ^= 0xff;
            let _ = b.apply(None, &rec(Op::Update, bad));
        }
    }
}
