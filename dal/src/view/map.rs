//! A record's state mapped into a view message, driven by the message's descriptor.
//!
//! [`record_to_message`] fills a message from one record's state (a JSON object, whatever
//! source it came from). Nothing is written per view: users declare their own view messages
//! in .proto files and these rules apply to every field.
//!
//! # Where a field's value comes from
//!
//! - The `(overseer.views.v1.from)` field option, else the field's name ([`source_path`]).
//! - A path is dotted: `a.b.c` walks nested documents; a numeric component indexes an array
//!   (`items.0.qty`). `"$id"` is the record id, as a string.
//! - Without a `from` option, a field whose name is not a key of the state is also looked up
//!   by its JSON name (`created_by`, then `createdBy`).
//! - A path that leads nowhere, or to `null`, leaves the field unset (its proto3 default).
//!   Record fields the message does not name are ignored: a view is a projection.
//! - In a nested message, paths are relative to the nested document (but `"$id"` is still
//!   the top record's id).
//!
//! # Conversions, by field type
//!
//! Values may be plain JSON, MongoDB extended JSON (`{"$numberLong": "12"}`, `$numberInt`,
//! `$numberDouble`, `$numberDecimal`, `$date`, `$oid`, `$binary`, ...) or Postgres text.
//! Nothing is converted by guessing: a value that does not fit is an error ([`MapError`]),
//! never a truncation, and numbers bound for integers or strings never pass through a float.
//!
//! - `string`: strings as they are; numbers and booleans as their JSON text; the one-key
//!   extended-JSON scalars (`$numberLong`, `$numberInt`, `$numberDecimal`, `$numberDouble`,
//!   `$oid`, `$symbol`) as their inner text; `$date` as RFC 3339 UTC with milliseconds.
//!   Decimals therefore stay exact: map them to `string` fields.
//! - integer types: JSON integers, strings holding an integer (`"-42"`), `$numberLong`,
//!   `$numberInt`; out of the type's range is an error, and so is anything with a fraction
//!   or an exponent (`12.5`, `"12.0"`, `1e3`).
//! - `double`/`float`: numbers, numeric strings, `$numberDouble` (`NaN`, `Infinity`,
//!   `-Infinity` too), `$numberDecimal`, `$numberLong`, `$numberInt`.
//! - `bool`: booleans, the strings `true`/`false`/`t`/`f` (any case), the numbers 0 and 1.
//! - enums: a value name, matched exactly, else ignoring case, else ignoring case and the
//!   prefix the enum's value names share (`"completed"` is `TRANSFER_STATUS_COMPLETED`);
//!   or the number of a defined value.
//! - `bytes`: `$binary` (canonical or legacy form), standard base64 text, or Postgres
//!   `bytea` hex text (`\x0a0b`).
//! - `google.protobuf.Timestamp`: `$date`; RFC 3339 text; Postgres timestamp text
//!   (`2024-01-02 03:04:05.123456+00`, offsets like `+05:30`, no zone meaning UTC); a date
//!   alone (midnight UTC); an integer, as milliseconds since the Unix epoch. Years 1 to 9999.
//! - other messages: a document, filled by these same rules.
//! - `repeated` fields: an array, each element converted as above.
//! - `map` fields: a document; keys converted to the key type (integer keys parsed, bool
//!   keys `true`/`false`), values to the value type.
//! - Inside arrays and maps, `null` has no representation and is an error. Two fields of
//!   one `oneof` both present in the record is an error too (the view would be ambiguous).
//!
//! Errors are definite: the same state fails the same way, naming the field (`items[2].qty`,
//! `labels["k"]`), the record path read (`items.2.quantity`) and why.

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, Utc};
use prost_reflect::{
    DynamicMessage, EnumDescriptor, FieldDescriptor, Kind, MapKey, MessageDescriptor,
    Value as PValue,
};
use serde_json::{Map, Value};

use crate::builder::describe;

/// Why a record's state does not fit a view message. Definite: the same state fails the same way.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("field {field} of {message} (record field {from:?}): {reason}")]
pub struct MapError {
    /// Full name of the view message being filled (the top one, for nested fields too).
    pub message: String,
    /// Path of the field within that message: `amount_minor`, `items[2].qty`, `labels["k"]`.
    pub field: String,
    /// The record path that was read, so the user can find the value in the source.
    pub from: String,
    /// What was expected and what was found.
    pub reason: String,
}

/// The option name of `from`.
pub const FROM_OPTION: &str = "overseer.views.v1.from";

/// The `from` path that means the record id.
const RECORD_ID: &str = "$id";

/// Nested messages deeper than this are refused: a recursive message type filled from a
/// deeply nested document would otherwise recurse without bound.
const MAX_DEPTH: usize = 64;

/// Range of `google.protobuf.Timestamp`: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
const MIN_SECONDS: i64 = -62_135_596_800;
const MAX_SECONDS: i64 = 253_402_300_799;

/// Where `field`'s value comes from in a record: the `(from)` option, else the field's name. "$id" means the record id.
pub fn source_path(field: &FieldDescriptor) -> String {
    from_option(field).unwrap_or_else(|| field.name().to_owned())
}

/// The `(from)` option of a field, if its pool knows the option and the field sets it.
fn from_option(field: &FieldDescriptor) -> Option<String> {
    let ext = field.parent_pool().get_extension_by_name(FROM_OPTION)?;
    let options = field.options();
    if !options.has_extension(&ext) {
        return None;
    }
    match options.get_extension(&ext).as_ref() {
        PValue::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// Fills a message of type `desc` from one record's state.
pub fn record_to_message(
    desc: &MessageDescriptor,
    record_id: &str,
    state: &Map<String, Value>,
) -> Result<DynamicMessage, MapError> {
    let cx = Cx {
        message: desc.full_name(),
        id: Value::String(record_id.to_owned()),
    };
    fill(&cx, desc, state, "", "", 0)
}

/// What every field of one mapping shares.
struct Cx<'a> {
    /// Full name of the top message, for errors.
    message: &'a str,
    /// The record id as a JSON value, what `"$id"` reads.
    id: Value,
}

/// Where in the message and in the record a value sits, for errors.
struct Loc {
    field: String,
    from: String,
}

impl Loc {
    fn err(&self, cx: &Cx<'_>, reason: impl Into<String>) -> MapError {
        MapError {
            message: cx.message.to_owned(),
            field: self.field.clone(),
            from: self.from.clone(),
            reason: reason.into(),
        }
    }

    /// The location of element `i` of a repeated field.
    fn index(&self, i: usize) -> Loc {
        Loc {
            field: format!("{}[{i}]", self.field),
            from: join(&self.from, &i.to_string()),
        }
    }
}

fn join(prefix: &str, part: &str) -> String {
    if prefix.is_empty() {
        part.to_owned()
    } else {
        format!("{prefix}.{part}")
    }
}

/// Fills a message from a document; `field_prefix`/`from_prefix` locate the document.
fn fill(
    cx: &Cx<'_>,
    desc: &MessageDescriptor,
    doc: &Map<String, Value>,
    field_prefix: &str,
    from_prefix: &str,
    depth: usize,
) -> Result<DynamicMessage, MapError> {
    let mut msg = DynamicMessage::new(desc.clone());
    for field in desc.fields() {
        let option = from_option(&field);
        let (value, read) = match option.as_deref() {
            Some(RECORD_ID) => (Some(&cx.id), RECORD_ID.to_owned()),
            Some(path) => (lookup(doc, path), join(from_prefix, path)),
            None => match doc.get(field.name()) {
                Some(v) => (Some(v), join(from_prefix, field.name())),
                None => match doc.get(field.json_name()) {
                    Some(v) => (Some(v), join(from_prefix, field.json_name())),
                    None => (None, String::new()),
                },
            },
        };
        let Some(value) = value.filter(|v| !v.is_null()) else {
            continue;
        };
        let loc = Loc {
            field: if field_prefix.is_empty() {
                field.name().to_owned()
            } else {
                format!("{field_prefix}.{}", field.name())
            },
            from: read,
        };
        if let Some(oneof) = field.containing_oneof()
            && let Some(other) = oneof.fields().find(|f| msg.has_field(f))
        {
            return Err(loc.err(
                cx,
                format!(
                    "{} is already set and belongs to the same oneof {}",
                    other.name(),
                    oneof.name()
                ),
            ));
        }
        let converted = convert_field(cx, &field, value, &loc, depth)?;
        msg.try_set_field(&field, converted)
            .map_err(|e| loc.err(cx, format!("internal: {e}")))?;
    }
    Ok(msg)
}

/// The value at a dotted path: components name document fields, or index arrays.
fn lookup<'a>(doc: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut cur = doc.get(parts.next()?)?;
    for part in parts {
        cur = match cur {
            Value::Object(m) => m.get(part)?,
            Value::Array(a) => a.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn convert_field(
    cx: &Cx<'_>,
    field: &FieldDescriptor,
    value: &Value,
    loc: &Loc,
    depth: usize,
) -> Result<PValue, MapError> {
    let kind = field.kind();
    if field.is_map() {
        let Kind::Message(entry) = &kind else {
            return Err(loc.err(cx, "internal: map field without an entry message"));
        };
        let Value::Object(doc) = value else {
            return Err(loc.err(
                cx,
                format!("expected a map (a document), found {}", found(value)),
            ));
        };
        let (key_kind, value_kind) = (
            entry.map_entry_key_field().kind(),
            entry.map_entry_value_field().kind(),
        );
        let mut out = std::collections::HashMap::with_capacity(doc.len());
        let mut seen: std::collections::HashMap<MapKey, &str> = Default::default();
        for (k, v) in doc {
            let here = Loc {
                field: format!("{}[{k:?}]", loc.field),
                from: join(&loc.from, k),
            };
            let key = map_key(&key_kind, k).map_err(|r| here.err(cx, r))?;
            if let Some(prev) = seen.insert(key.clone(), k) {
                return Err(here.err(cx, format!("key {k:?} is the same key as {prev:?}")));
            }
            out.insert(key, convert_one(cx, &value_kind, v, &here, depth)?);
        }
        Ok(PValue::Map(out))
    } else if field.is_list() {
        let Value::Array(items) = value else {
            return Err(loc.err(cx, format!("expected an array, found {}", found(value))));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| convert_one(cx, &kind, v, &loc.index(i), depth))
            .collect::<Result<Vec<_>, _>>()
            .map(PValue::List)
    } else {
        convert_one(cx, &kind, value, loc, depth)
    }
}

/// One value (a singular field, an element, a map value) converted to `kind`.
fn convert_one(
    cx: &Cx<'_>,
    kind: &Kind,
    value: &Value,
    loc: &Loc,
    depth: usize,
) -> Result<PValue, MapError> {
    match kind {
        Kind::Message(m) if m.full_name() == "google.protobuf.Timestamp" => {
            timestamp_message(m, value).map_err(|r| loc.err(cx, r))
        }
        Kind::Message(m) => {
            let Value::Object(doc) = value else {
                return Err(loc.err(
                    cx,
                    format!(
                        "expected a {} (a document), found {}",
                        m.full_name(),
                        found(value)
                    ),
                ));
            };
            if depth >= MAX_DEPTH {
                return Err(loc.err(cx, format!("messages nested deeper than {MAX_DEPTH}")));
            }
            fill(cx, m, doc, &loc.field, &loc.from, depth + 1).map(PValue::Message)
        }
        _ => scalar(kind, value).map_err(|r| loc.err(cx, r)),
    }
}

/// A map key: JSON keys are strings, converted to the key type.
fn map_key(kind: &Kind, key: &str) -> Result<MapKey, String> {
    let v = Value::String(key.to_owned());
    match scalar(kind, &v)?.into_map_key() {
        Some(k) => Ok(k),
        None => Err("internal: not a valid map key type".into()),
    }
}

/// The scalar kinds (everything but messages).
fn scalar(kind: &Kind, v: &Value) -> Result<PValue, String> {
    Ok(match kind {
        Kind::String => PValue::String(string(v)?),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => PValue::I32(int(kind, v)?),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => PValue::I64(int(kind, v)?),
        Kind::Uint32 | Kind::Fixed32 => PValue::U32(int(kind, v)?),
        Kind::Uint64 | Kind::Fixed64 => PValue::U64(int(kind, v)?),
        Kind::Double => PValue::F64(double(kind, v)?),
        Kind::Float => {
            let d = double(kind, v)?;
            let f = d as f32;
            if d.is_finite() && f.is_infinite() {
                return Err(format!(
                    "expected a float, found {} (out of range)",
                    found(v)
                ));
            }
            PValue::F32(f)
        }
        Kind::Bool => PValue::Bool(boolean(v)?),
        Kind::Bytes => PValue::Bytes(bytes(v)?.into()),
        Kind::Enum(e) => PValue::EnumNumber(enumeration(e, v)?),
        Kind::Message(m) => return Err(format!("internal: {} is not a scalar", m.full_name())),
    })
}

/// The type name with its article, for "expected ..." reasons.
fn expected(kind: &Kind) -> Cow<'static, str> {
    Cow::Borrowed(match kind {
        Kind::Double => "a double",
        Kind::Float => "a float",
        Kind::Int32 => "an int32",
        Kind::Int64 => "an int64",
        Kind::Uint32 => "a uint32",
        Kind::Uint64 => "a uint64",
        Kind::Sint32 => "a sint32",
        Kind::Sint64 => "a sint64",
        Kind::Fixed32 => "a fixed32",
        Kind::Fixed64 => "a fixed64",
        Kind::Sfixed32 => "an sfixed32",
        Kind::Sfixed64 => "an sfixed64",
        Kind::Bool => "a bool",
        Kind::String => "a string",
        Kind::Bytes => "bytes",
        Kind::Message(m) => return Cow::Owned(format!("a {}", m.full_name())),
        Kind::Enum(e) => return Cow::Owned(format!("a {}", e.full_name())),
    })
}

/// A value described for an error: [`describe`], plus the text of strings and the key of
/// extended-JSON documents, which is what the user needs to recognise it.
fn found(v: &Value) -> String {
    match v {
        Value::String(s) => {
            const MAX: usize = 64;
            match s.char_indices().nth(MAX) {
                Some((cut, _)) => format!("a string {:?}...", &s[..cut]),
                None => format!("a string {s:?}"),
            }
        }
        Value::Object(m) => match m.keys().next() {
            Some(k) if k.starts_with('$') => format!("a {k} document"),
            _ => describe(v),
        },
        _ => describe(v),
    }
}

/// The one-key extended-JSON document `{"$key": inner}`, as `(key, inner)`.
fn ext(v: &Value) -> Option<(&str, &Value)> {
    match v {
        Value::Object(m) if m.len() == 1 => m
            .iter()
            .next()
            .filter(|(k, _)| k.starts_with('$'))
            .map(|(k, v)| (k.as_str(), v)),
        _ => None,
    }
}

/// The inner text of the one-key extended-JSON scalars that are text.
fn ext_text<'a>(v: &'a Value, keys: &[&str]) -> Option<&'a str> {
    match ext(v)? {
        (k, Value::String(s)) if keys.contains(&k) => Some(s),
        _ => None,
    }
}

fn string(v: &Value) -> Result<String, String> {
    const TEXT_SCALARS: &[&str] = &[
        "$numberLong",
        "$numberInt",
        "$numberDecimal",
        "$numberDouble",
        "$oid",
        "$symbol",
    ];
    match v {
        Value::String(s) => return Ok(s.clone()),
        Value::Number(n) => return Ok(n.to_string()),
        Value::Bool(b) => return Ok(b.to_string()),
        _ => {}
    }
    if let Some(s) = ext_text(v, TEXT_SCALARS) {
        return Ok(s.to_owned());
    }
    if let Some(("$date", inner)) = ext(v) {
        if let Some(t) = date_inner(inner) {
            return Ok(t.to_rfc3339_opts(SecondsFormat::Millis, true));
        }
        return Err(format!(
            "expected a string, found {} holding no valid date",
            found(v)
        ));
    }
    Err(format!("expected a string, found {}", found(v)))
}

/// An integer of type `T`, only from exact integer text (never through a float).
fn int<T>(kind: &Kind, v: &Value) -> Result<T, String>
where
    T: TryFrom<i128> + Bounded,
{
    let n = integer(v).ok_or_else(|| format!("expected {}, found {}", expected(kind), found(v)))?;
    T::try_from(n).map_err(|_| {
        format!(
            "expected {} ({} to {}), found {} (out of range)",
            expected(kind),
            T::MIN_TEXT,
            T::MAX_TEXT,
            found(v)
        )
    })
}

/// The bounds of an integer type, as text for range errors.
trait Bounded {
    const MIN_TEXT: &'static str;
    const MAX_TEXT: &'static str;
}

impl Bounded for i32 {
    const MIN_TEXT: &'static str = "-2147483648";
    const MAX_TEXT: &'static str = "2147483647";
}

impl Bounded for i64 {
    const MIN_TEXT: &'static str = "-9223372036854775808";
    const MAX_TEXT: &'static str = "9223372036854775807";
}

impl Bounded for u32 {
    const MIN_TEXT: &'static str = "0";
    const MAX_TEXT: &'static str = "4294967295";
}

impl Bounded for u64 {
    const MIN_TEXT: &'static str = "0";
    const MAX_TEXT: &'static str = "18446744073709551615";
}

/// An exact integer: a JSON integer, an integer string, `$numberLong`/`$numberInt`.
pub(crate) fn integer(v: &Value) -> Option<i128> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from)),
        Value::String(s) => integer_text(s),
        _ => integer_text(ext_text(v, &["$numberLong", "$numberInt"])?),
    }
}

/// Optional sign and decimal digits, nothing else.
fn integer_text(s: &str) -> Option<i128> {
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn double(kind: &Kind, v: &Value) -> Result<f64, String> {
    const NUMBER_SCALARS: &[&str] = &[
        "$numberDouble",
        "$numberDecimal",
        "$numberLong",
        "$numberInt",
    ];
    let parsed = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => float_text(s),
        _ => ext_text(v, NUMBER_SCALARS).and_then(float_text),
    };
    parsed.ok_or_else(|| format!("expected {}, found {}", expected(kind), found(v)))
}

/// A decimal number, or `NaN`/`Infinity`/`-Infinity` (any case, `inf` too).
fn float_text(s: &str) -> Option<f64> {
    // Rust's parser: decimal and exponent forms, `inf`/`infinity`/`nan` in any case; it
    // refuses whitespace and anything else.
    s.parse().ok()
}

fn boolean(v: &Value) -> Result<bool, String> {
    let b = match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => match n.as_u64() {
            Some(0) => Some(false),
            Some(1) => Some(true),
            _ => None,
        },
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "t" => Some(true),
            "false" | "f" => Some(false),
            _ => None,
        },
        _ => None,
    };
    b.ok_or_else(|| {
        format!(
            "expected a bool (true/false, \"t\"/\"f\", 0/1), found {}",
            found(v)
        )
    })
}

fn enumeration(e: &EnumDescriptor, v: &Value) -> Result<i32, String> {
    let by_number = |n: i128| i32::try_from(n).ok().filter(|n| e.get_value(*n).is_some());
    let number = match v {
        Value::String(s) => enum_by_name(e, s),
        _ => integer(v).and_then(by_number),
    };
    number.ok_or_else(|| {
        let names: Vec<String> = e.values().map(|v| v.name().to_owned()).collect();
        format!(
            "expected a {} value, one of {} (case-insensitive, the common prefix {:?} optional) \
             or its number, found {}",
            e.full_name(),
            names.join(", "),
            common_prefix(e),
            found(v)
        )
    })
}

fn enum_by_name(e: &EnumDescriptor, s: &str) -> Option<i32> {
    if let Some(v) = e.get_value_by_name(s) {
        return Some(v.number());
    }
    if let Some(v) = e.values().find(|v| v.name().eq_ignore_ascii_case(s)) {
        return Some(v.number());
    }
    let prefix = common_prefix(e);
    e.values()
        .find(|v| {
            v.name()
                .get(prefix.len()..)
                .is_some_and(|rest| rest.eq_ignore_ascii_case(s))
        })
        .map(|v| v.number())
}

/// The prefix every value name of the enum shares, up to and including its last `_`
/// (`TRANSFER_STATUS_` for `TRANSFER_STATUS_PENDING`, ...).
fn common_prefix(e: &EnumDescriptor) -> String {
    let mut names = e.values();
    let Some(first) = names.next() else {
        return String::new();
    };
    let mut len = first.name().len();
    for v in names {
        len = first
            .name()
            .bytes()
            .zip(v.name().bytes())
            .take(len)
            .take_while(|(a, b)| a == b)
            .count();
    }
    let shared = &first.name().as_bytes()[..len];
    match shared.iter().rposition(|b| *b == b'_') {
        // Names are ASCII identifiers, so any byte index is a char boundary.
        Some(i) => first.name().get(..=i).unwrap_or_default().to_owned(),
        None => String::new(),
    }
}

/// Standard base64, with or without padding.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

fn bytes(v: &Value) -> Result<Vec<u8>, String> {
    let err = || {
        format!(
            "expected bytes ($binary, base64 text or Postgres \\x hex text), found {}",
            found(v)
        )
    };
    let text = match v {
        Value::String(s) => s.as_str(),
        Value::Object(m) => match m.get("$binary") {
            // Canonical: {"$binary": {"base64": "..", "subType": ".."}}.
            Some(Value::Object(b)) if m.len() == 1 => match b.get("base64") {
                Some(Value::String(s)) => s.as_str(),
                _ => return Err(err()),
            },
            // Legacy: {"$binary": "..", "$type": ".."}.
            Some(Value::String(s)) if m.len() == 2 && m.contains_key("$type") => s.as_str(),
            _ => return Err(err()),
        },
        _ => return Err(err()),
    };
    if let (Value::String(_), Some(hex)) = (v, text.strip_prefix("\\x")) {
        // Backslash is not base64, so this prefix is unambiguous.
        return hex_decode(hex).ok_or_else(err);
    }
    BASE64.decode(text).map_err(|_| err())
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    let digit = |b: u8| (b as char).to_digit(16);
    let s = s.as_bytes();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.chunks_exact(2)
        .map(|p| Some((digit(p[0])? * 16 + digit(p[1])?) as u8))
        .collect()
}

/// A `google.protobuf.Timestamp` message.
fn timestamp_message(desc: &MessageDescriptor, v: &Value) -> Result<PValue, String> {
    let t = instant(v).ok_or_else(|| {
        format!(
            "expected a timestamp ($date, RFC 3339 or Postgres text, or epoch milliseconds) \
             from year 1 to 9999, found {}",
            found(v)
        )
    })?;
    let mut msg = DynamicMessage::new(desc.clone());
    msg.try_set_field_by_name("seconds", PValue::I64(t.timestamp()))
        .and_then(|()| {
            msg.try_set_field_by_name("nanos", PValue::I32(t.timestamp_subsec_nanos() as i32))
        })
        .map_err(|e| format!("internal: {e}"))?;
    Ok(PValue::Message(msg))
}

/// An instant, within the range of `google.protobuf.Timestamp`.
fn instant(v: &Value) -> Option<DateTime<Utc>> {
    let t = match v {
        Value::String(s) => time_text(s),
        Value::Number(_) => from_millis(integer(v)?),
        _ => match ext(v)? {
            ("$date", inner) => date_inner(inner),
            ("$numberLong" | "$numberInt", _) => from_millis(integer(v)?),
            _ => None,
        },
    }?;
    (MIN_SECONDS..=MAX_SECONDS)
        .contains(&t.timestamp())
        .then_some(t)
}

/// The inside of `{"$date": ..}`: milliseconds (`$numberLong` or a number) or ISO text.
fn date_inner(inner: &Value) -> Option<DateTime<Utc>> {
    match inner {
        Value::String(s) => time_text(s),
        Value::Number(_) => from_millis(integer(inner)?),
        _ => from_millis(integer_text(ext_text(inner, &["$numberLong"])?)?),
    }
}

fn from_millis(ms: i128) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(i64::try_from(ms).ok()?)
}

/// RFC 3339, Postgres `timestamptz`/`timestamp` text (zone-less means UTC), or a date.
fn time_text(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.to_utc());
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f%#z"] {
        if let Ok(t) = DateTime::parse_from_str(s, f) {
            return Some(t.to_utc());
        }
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
            return Some(t.and_utc());
        }
    }
    let d = NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
    Some(d.and_hms_opt(0, 0, 0)?.and_utc())
}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;

    use prost_reflect::DescriptorPool;
    use serde_json::json;

    use super::*;

    /// overseer's own views, as `overseer_protos` ships them.
    static SHIPPED: LazyLock<DescriptorPool> = LazyLock::new(|| {
        DescriptorPool::decode(overseer_protos::DESCRIPTOR_SET).expect("descriptor set")
    });

    /// A user's view file, importing overseer's options, with every kind views.proto lacks.
    const TEST_PROTO: &str = r#"
syntax = "proto3";
package overseer.test.v1;

import "overseer/views.proto";
import "google/protobuf/timestamp.proto";

enum Color {
  COLOR_UNSPECIFIED = 0;
  COLOR_RED = 1;
  COLOR_DARK_BLUE = 2;
}

message Item {
  string sku = 1;
  uint32 qty = 2 [(overseer.views.v1.from) = "quantity"];
  string owner = 3 [(overseer.views.v1.from) = "$id"];
}

message Everything {
  string id = 1 [(overseer.views.v1.from) = "$id"];
  double price = 2;
  float ratio = 3;
  bool active = 4;
  uint64 big = 5;
  bytes blob = 6;
  int32 small = 7;
  sint64 delta = 8;
  fixed32 fixed = 9;
  sfixed64 sfixed = 10;
  Color color = 11;
  google.protobuf.Timestamp at = 12;
  Item first = 13;
  repeated Item items = 14;
  repeated string tags = 15;
  map<string, int64> counts = 16;
  map<int32, Item> by_slot = 17;
  map<bool, string> flags = 18;
  string first_qty_text = 19 [(overseer.views.v1.from) = "items.0.quantity"];
  uint32 second_qty = 20 [(overseer.views.v1.from) = "items.1.quantity"];
  string created_by = 21;
  repeated Color colors = 22;
  oneof choice {
    string name = 23;
    int64 number = 24;
  }
  Everything child = 25;
  optional int32 maybe = 26;
  repeated google.protobuf.Timestamp times = 27;
  map<uint64, bytes> blobs = 28;
  string city = 29 [(overseer.views.v1.from) = "address.city"];
}
"#;

    /// [`TEST_PROTO`] compiled with protox, imports included (encoded with
    /// `encode_file_descriptor_set`, which keeps extension options such as `(from)`).
    static TEST: LazyLock<DescriptorPool> = LazyLock::new(|| {
        let set = overseer_testkit::proto::compile(TEST_PROTO);
        DescriptorPool::decode(set.as_slice()).expect("pool")
    });

    fn views(name: &str) -> MessageDescriptor {
        SHIPPED
            .get_message_by_name(&format!("overseer.views.v1.{name}"))
            .expect("view message")
    }

    fn everything() -> MessageDescriptor {
        TEST.get_message_by_name("overseer.test.v1.Everything")
            .expect("Everything")
    }

    fn state(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    /// Maps `doc` into Everything and renders the result as canonical protobuf JSON.
    fn everything_json(doc: Value) -> Value {
        let msg = record_to_message(&everything(), "rec-1", &state(doc)).expect("maps");
        serde_json::to_value(&msg).expect("json")
    }

    /// The error mapping `doc` into `desc` gives.
    fn map_err(desc: &MessageDescriptor, doc: Value) -> MapError {
        match record_to_message(desc, "rec-1", &state(doc)) {
            Ok(m) => panic!("expected an error, got {m:?}"),
            Err(e) => e,
        }
    }

    /// The `(from)` options must survive into `overseer_protos::DESCRIPTOR_SET`, or views
    /// built from it silently read the wrong record fields (`Transfer.id` would read the
    /// row's `id` column instead of the record id).
    #[test]
    fn shipped_descriptor_set_keeps_from_options() {
        let id = SHIPPED
            .get_message_by_name("overseer.views.v1.Transfer")
            .and_then(|m| m.get_field_by_name("id"))
            .expect("Transfer.id");
        assert_eq!(
            source_path(&id),
            "$id",
            "overseer_protos::DESCRIPTOR_SET lost the (from) option of Transfer.id: protos/build.rs \
             must write protox::Compiler::encode_file_descriptor_set() (which keeps extension \
             options), not prost::Message::encode_to_vec of protox::compile's prost_types set \
             (which drops them)"
        );
    }

    #[test]
    fn from_option_is_read_from_field_options() {
        let transfer = views("Transfer");
        let id = transfer.get_field_by_name("id").expect("id");
        assert_eq!(source_path(&id), "$id");
        let amount = transfer.get_field_by_name("amount").expect("amount");
        assert_eq!(source_path(&amount), "amount");
        let item = TEST
            .get_message_by_name("overseer.test.v1.Item")
            .expect("Item");
        assert_eq!(
            source_path(&item.get_field_by_name("qty").expect("qty")),
            "quantity"
        );
    }

    #[test]
    fn pgoutput_transfer_row() {
        let row = json!({
            "id": 7,
            "account_id": "acc-1",
            "asset": "USD",
            "amount": "12.50",
            "status": "completed",
            "updated_at": "2024-01-02 03:04:05.123456+00",
            "created_at": "2024-01-01 00:00:00+00",
        });
        let msg = record_to_message(&views("Transfer"), "tr-1", &state(row)).expect("maps");
        let t: overseer_protos::views::Transfer = msg.transcode_to().expect("transcode");
        assert_eq!(t.id, "tr-1");
        assert_eq!(t.account_id, "acc-1");
        assert_eq!(t.asset, "USD");
        assert_eq!(t.amount, "12.50");
        assert_eq!(
            t.status,
            overseer_protos::views::TransferStatus::Completed as i32
        );
        let at = t.updated_at.expect("updated_at");
        assert_eq!((at.seconds, at.nanos), (1_704_164_645, 123_456_000));
    }

    #[test]
    fn debezium_transfer_row() {
        let row = json!({
            "account_id": "acc-2",
            "amount": "0.01",
            "status": "TRANSFER_STATUS_PENDING",
            "updated_at": "2024-01-02T03:04:05.123Z",
        });
        let msg = record_to_message(&views("Transfer"), "tr-2", &state(row)).expect("maps");
        let t: overseer_protos::views::Transfer = msg.transcode_to().expect("transcode");
        assert_eq!(t.id, "tr-2");
        assert_eq!(t.asset, "", "absent fields stay default");
        assert_eq!(
            t.status,
            overseer_protos::views::TransferStatus::Pending as i32
        );
        let at = t.updated_at.expect("updated_at");
        assert_eq!((at.seconds, at.nanos), (1_704_164_645, 123_000_000));
    }

    #[test]
    fn mongo_ledger_entry() {
        let doc = json!({
            "_id": {"$oid": "65a1b2c3d4e5f60718293a4b"},
            "transfer_id": "tr-1",
            "account_id": "acc-1",
            "asset": "USD",
            "direction": "credit",
            "amount_minor": {"$numberLong": "1250"},
            "decimals": 2,
            "note": null,
        });
        let desc = views("LedgerEntry");
        let msg = record_to_message(&desc, "65a1b2c3d4e5f60718293a4b", &state(doc)).expect("maps");
        let e: overseer_protos::views::LedgerEntry = msg.transcode_to().expect("transcode");
        assert_eq!(
            e,
            overseer_protos::views::LedgerEntry {
                id: "65a1b2c3d4e5f60718293a4b".into(),
                transfer_id: "tr-1".into(),
                account_id: "acc-1".into(),
                asset: "USD".into(),
                direction: overseer_protos::views::Direction::Credit as i32,
                amount_minor: 1250,
                decimals: 2,
            }
        );
    }

    #[test]
    fn toy() {
        let doc = json!({"type": "watergun", "color": "blue", "id": "ignored"});
        let msg = record_to_message(&views("Toy"), "toy-1", &state(doc)).expect("maps");
        let t: overseer_protos::views::Toy = msg.transcode_to().expect("transcode");
        assert_eq!(
            t,
            overseer_protos::views::Toy {
                id: "toy-1".into(),
                r#type: "watergun".into(),
                color: "blue".into(),
            }
        );
    }

    #[test]
    fn null_and_missing_leave_fields_unset() {
        let msg = record_to_message(
            &views("Transfer"),
            "tr-3",
            &state(json!({"amount": null, "status": null, "updated_at": null})),
        )
        .expect("maps");
        let t: overseer_protos::views::Transfer = msg.transcode_to().expect("transcode");
        assert_eq!(t.amount, "");
        assert_eq!(t.status, 0);
        assert_eq!(t.updated_at, None);
    }

    #[test]
    fn strings_from_scalars_and_extended_json() {
        let desc = views("Toy");
        for (v, want) in [
            (json!("blue"), "blue"),
            (json!(42), "42"),
            (json!(-7), "-7"),
            (json!(18446744073709551615u64), "18446744073709551615"),
            (json!(1.5), "1.5"),
            (json!(true), "true"),
            (
                json!({"$numberLong": "9007199254740993"}),
                "9007199254740993",
            ),
            (json!({"$numberInt": "3"}), "3"),
            (json!({"$numberDecimal": "1.50"}), "1.50"),
            (json!({"$numberDouble": "NaN"}), "NaN"),
            (
                json!({"$oid": "65a1b2c3d4e5f60718293a4b"}),
                "65a1b2c3d4e5f60718293a4b",
            ),
            (json!({"$symbol": "sym"}), "sym"),
            (
                json!({"$date": {"$numberLong": "1700000000000"}}),
                "2023-11-14T22:13:20.000Z",
            ),
            (
                json!({"$date": 1700000000123i64}),
                "2023-11-14T22:13:20.123Z",
            ),
            (
                json!({"$date": "2024-01-01T01:00:00+01:00"}),
                "2024-01-01T00:00:00.000Z",
            ),
        ] {
            let msg = record_to_message(&desc, "t", &state(json!({"color": v.clone()})))
                .unwrap_or_else(|e| panic!("{v}: {e}"));
            let t: overseer_protos::views::Toy = msg.transcode_to().expect("transcode");
            assert_eq!(t.color, want, "from {v}");
        }
    }

    #[test]
    fn integers_accept_only_exact_integers() {
        let desc = views("LedgerEntry");
        for (v, want) in [
            (json!(1250), 1250),
            (json!("-42"), -42),
            (json!("+42"), 42),
            (json!({"$numberLong": "-9223372036854775808"}), i64::MIN),
            (json!({"$numberInt": "3"}), 3),
        ] {
            let msg = record_to_message(&desc, "e", &state(json!({"amount_minor": v.clone()})))
                .unwrap_or_else(|e| panic!("{v}: {e}"));
            let e: overseer_protos::views::LedgerEntry = msg.transcode_to().expect("transcode");
            assert_eq!(e.amount_minor, want, "from {v}");
        }
        for v in [
            json!("12.5"),
            json!("12.0"),
            json!(12.5),
            json!(1e3),
            json!(" 1"),
            json!("1e3"),
            json!(""),
            json!("-"),
            json!({"$numberDouble": "1"}),
            json!({"$numberDecimal": "1"}),
            json!(true),
        ] {
            let e = map_err(&desc, json!({"amount_minor": v.clone()}));
            assert_eq!(e.field, "amount_minor");
            assert!(
                e.reason.starts_with("expected an int64, found "),
                "{v}: {e}"
            );
        }
    }

    #[test]
    fn error_int_from_decimal_string() {
        let e = map_err(&views("LedgerEntry"), json!({"amount_minor": "12.5"}));
        assert_eq!(
            e,
            MapError {
                message: "overseer.views.v1.LedgerEntry".into(),
                field: "amount_minor".into(),
                from: "amount_minor".into(),
                reason: "expected an int64, found a string \"12.5\"".into(),
            }
        );
        assert_eq!(
            e.to_string(),
            "field amount_minor of overseer.views.v1.LedgerEntry (record field \"amount_minor\"): \
             expected an int64, found a string \"12.5\""
        );
    }

    #[test]
    fn error_int32_out_of_range() {
        let e = map_err(&views("LedgerEntry"), json!({"decimals": 3_000_000_000u64}));
        assert_eq!(e.field, "decimals");
        assert_eq!(
            e.reason,
            "expected an int32 (-2147483648 to 2147483647), found number 3000000000 (out of range)"
        );
        let e = map_err(
            &views("LedgerEntry"),
            json!({"decimals": {"$numberLong": "-2147483649"}}),
        );
        assert!(e.reason.contains("out of range"), "{e}");
        let e = map_err(&everything(), json!({"big": -1}));
        assert_eq!(e.field, "big");
        assert!(
            e.reason
                .starts_with("expected a uint64 (0 to 18446744073709551615)"),
            "{e}"
        );
    }

    #[test]
    fn error_unknown_enum_value_lists_names() {
        let e = map_err(&views("Transfer"), json!({"status": "sideways"}));
        assert_eq!(e.field, "status");
        assert_eq!(e.from, "status");
        assert_eq!(
            e.reason,
            "expected a overseer.views.v1.TransferStatus value, one of TRANSFER_STATUS_UNSPECIFIED, \
             TRANSFER_STATUS_PENDING, TRANSFER_STATUS_COMPLETED, TRANSFER_STATUS_FAILED \
             (case-insensitive, the common prefix \"TRANSFER_STATUS_\" optional) or its number, \
             found a string \"sideways\""
        );
        let e = map_err(&views("Transfer"), json!({"status": 9}));
        assert!(e.reason.ends_with("found number 9"), "{e}");
    }

    #[test]
    fn enums_by_name_prefix_and_number() {
        let desc = views("Transfer");
        for (v, want) in [
            (json!("TRANSFER_STATUS_FAILED"), 3),
            (json!("transfer_status_failed"), 3),
            (json!("FAILED"), 3),
            (json!("Failed"), 3),
            (json!(2), 2),
            (json!({"$numberInt": "1"}), 1),
        ] {
            let msg = record_to_message(&desc, "t", &state(json!({"status": v.clone()})))
                .unwrap_or_else(|e| panic!("{v}: {e}"));
            let t: overseer_protos::views::Transfer = msg.transcode_to().expect("transcode");
            assert_eq!(t.status, want, "from {v}");
        }
        let got = everything_json(json!({"color": "dark_blue", "colors": ["red", 2, "COLOR_RED"]}));
        assert_eq!(got["color"], "COLOR_DARK_BLUE");
        assert_eq!(
            got["colors"],
            json!(["COLOR_RED", "COLOR_DARK_BLUE", "COLOR_RED"])
        );
    }

    #[test]
    fn error_array_or_document_for_a_string() {
        let e = map_err(&views("Toy"), json!({"color": ["blue"]}));
        assert_eq!((e.field.as_str(), e.from.as_str()), ("color", "color"));
        assert_eq!(e.reason, "expected a string, found an array");
        let e = map_err(&views("Toy"), json!({"color": {"shade": "blue"}}));
        assert_eq!(e.reason, "expected a string, found a document");
        let e = map_err(
            &views("Toy"),
            json!({"color": {"$binary": {"base64": "", "subType": "00"}}}),
        );
        assert_eq!(e.reason, "expected a string, found a $binary document");
    }

    #[test]
    fn error_bad_timestamp() {
        let e = map_err(&views("Transfer"), json!({"updated_at": "yesterday"}));
        assert_eq!(e.field, "updated_at");
        assert!(e.reason.starts_with("expected a timestamp"), "{e}");
        assert!(e.reason.ends_with("found a string \"yesterday\""), "{e}");
        for v in [
            json!(1.5),
            json!("2024-13-01 00:00:00"),
            json!("infinity"),
            json!({"$date": {"$numberLong": "99999999999999999"}}),
            json!({"$date": "garbage"}),
            json!(true),
        ] {
            let e = map_err(&views("Transfer"), json!({"updated_at": v.clone()}));
            assert!(e.reason.starts_with("expected a timestamp"), "{v}: {e}");
        }
    }

    #[test]
    fn timestamps_from_every_source() {
        let base = 1_704_164_645i64; // 2024-01-02T03:04:05Z
        for (v, want) in [
            (json!("2024-01-02 03:04:05+00"), (base, 0)),
            (json!("2024-01-02 03:04:05.5+00"), (base, 500_000_000)),
            (json!("2024-01-02 08:34:05+05:30"), (base, 0)),
            (json!("2024-01-01 19:04:05-08"), (base, 0)),
            (json!("2024-01-02 03:04:05"), (base, 0)),
            (json!("2024-01-02 03:04:05.000001"), (base, 1_000)),
            (json!("2024-01-02T03:04:05"), (base, 0)),
            (json!("2024-01-02T03:04:05.123456789Z"), (base, 123_456_789)),
            (json!("2024-01-02T04:04:05+01:00"), (base, 0)),
            (json!("2024-01-02"), (base - 11_045, 0)),
            (json!(1_704_164_645_250i64), (base, 250_000_000)),
            (json!(-1), (-1, 999_000_000)),
            (json!({"$numberLong": "1704164645000"}), (base, 0)),
            (
                json!({"$date": {"$numberLong": "1704164645001"}}),
                (base, 1_000_000),
            ),
            (json!({"$date": 1_704_164_645_000i64}), (base, 0)),
            (json!({"$date": "2024-01-02T03:04:05Z"}), (base, 0)),
        ] {
            let msg = record_to_message(
                &views("Transfer"),
                "t",
                &state(json!({"updated_at": v.clone()})),
            )
            .unwrap_or_else(|e| panic!("{v}: {e}"));
            let t: overseer_protos::views::Transfer = msg.transcode_to().expect("transcode");
            let at = t.updated_at.expect("updated_at");
            assert_eq!((at.seconds, at.nanos), want, "from {v}");
        }
    }

    #[test]
    fn every_kind_of_a_user_view() {
        let got = everything_json(json!({
            "price": "12.50",
            "ratio": {"$numberDouble": "0.25"},
            "active": "t",
            "big": "18446744073709551615",
            "blob": {"$binary": {"base64": "AQID", "subType": "00"}},
            "small": {"$numberInt": "-5"},
            "delta": -9,
            "fixed": 4294967295u64,
            "sfixed": {"$numberLong": "-1"},
            "first": {"sku": "a", "quantity": 1, "ignored": [1, 2]},
            "items": [
                {"sku": "b", "quantity": "2"},
                {"sku": "c", "quantity": {"$numberInt": "3"}},
            ],
            "tags": ["x", 1, {"$oid": "abc"}],
            "counts": {"k": {"$numberLong": "5"}, "z": 0},
            "by_slot": {"-1": {"sku": "d"}},
            "flags": {"true": "on", "false": "off"},
            "createdBy": "ann",
            "name": "only one of the oneof",
            "child": {"small": 1, "child": {"name": "deep"}},
            "maybe": 0,
            "times": ["2024-01-02 03:04:05+00", {"$date": 0}],
            "blobs": {"7": "\\x0a0B", "8": "AQ"},
            "address": {"city": "Lyon"},
        }));
        assert_eq!(
            got,
            json!({
                "id": "rec-1",
                "price": 12.5,
                "ratio": 0.25,
                "active": true,
                "big": "18446744073709551615",
                "blob": "AQID",
                "small": -5,
                "delta": "-9",
                "fixed": 4294967295u64,
                "sfixed": "-1",
                "first": {"sku": "a", "qty": 1, "owner": "rec-1"},
                "items": [
                    {"sku": "b", "qty": 2, "owner": "rec-1"},
                    {"sku": "c", "qty": 3, "owner": "rec-1"},
                ],
                "tags": ["x", "1", "abc"],
                "counts": {"k": "5", "z": "0"},
                "bySlot": {"-1": {"sku": "d", "owner": "rec-1"}},
                "flags": {"true": "on", "false": "off"},
                "firstQtyText": "2",
                "secondQty": 3,
                "createdBy": "ann",
                "name": "only one of the oneof",
                "child": {"id": "rec-1", "small": 1, "child": {"id": "rec-1", "name": "deep"}},
                "maybe": 0,
                "times": ["2024-01-02T03:04:05Z", "1970-01-01T00:00:00Z"],
                "blobs": {"7": "Cgs=", "8": "AQ=="},
                "city": "Lyon",
            })
        );
    }

    #[test]
    fn doubles_and_bools() {
        for (v, want) in [
            (json!(1), 1.0),
            (json!(-0.5), -0.5),
            (json!("12.50"), 12.5),
            (json!({"$numberDecimal": "1.5E+3"}), 1500.0),
            (json!({"$numberLong": "7"}), 7.0),
            (json!({"$numberInt": "7"}), 7.0),
            (json!({"$numberDouble": "Infinity"}), f64::INFINITY),
            (json!({"$numberDouble": "-Infinity"}), f64::NEG_INFINITY),
        ] {
            let msg = record_to_message(&everything(), "r", &state(json!({"price": v.clone()})))
                .unwrap_or_else(|e| panic!("{v}: {e}"));
            assert_eq!(
                msg.get_field_by_name("price").expect("price").as_f64(),
                Some(want),
                "from {v}"
            );
        }
        let msg = record_to_message(
            &everything(),
            "r",
            &state(json!({"price": {"$numberDouble": "NaN"}})),
        )
        .expect("NaN");
        assert!(
            msg.get_field_by_name("price")
                .and_then(|v| v.as_f64())
                .is_some_and(f64::is_nan)
        );
        let e = map_err(&everything(), json!({"ratio": 1e300}));
        assert!(e.reason.contains("out of range"), "{e}");
        let e = map_err(&everything(), json!({"price": "twelve"}));
        assert_eq!(e.reason, "expected a double, found a string \"twelve\"");

        for (v, want) in [
            (json!(true), true),
            (json!("false"), false),
            (json!("T"), true),
            (json!("f"), false),
            (json!(1), true),
            (json!(0), false),
        ] {
            let msg = record_to_message(&everything(), "r", &state(json!({"active": v.clone()})))
                .unwrap_or_else(|e| panic!("{v}: {e}"));
            assert_eq!(
                msg.get_field_by_name("active").expect("active").as_bool(),
                Some(want),
                "from {v}"
            );
        }
        for v in [json!(2), json!("yes"), json!(1.0), json!([])] {
            let e = map_err(&everything(), json!({"active": v.clone()}));
            assert!(e.reason.starts_with("expected a bool"), "{v}: {e}");
        }
    }

    #[test]
    fn bytes_forms() {
        for (v, want) in [
            (
                json!({"$binary": {"base64": "AQID", "subType": "00"}}),
                vec![1u8, 2, 3],
            ),
            (json!({"$binary": "AQID", "$type": "00"}), vec![1, 2, 3]),
            (json!("AQID"), vec![1, 2, 3]),
            (json!("AQ"), vec![1]),
            (json!("\\x"), vec![]),
            (json!("\\xff00"), vec![255, 0]),
        ] {
            let msg = record_to_message(&everything(), "r", &state(json!({"blob": v.clone()})))
                .unwrap_or_else(|e| panic!("{v}: {e}"));
            let got = msg.get_field_by_name("blob").expect("blob");
            assert_eq!(got.as_bytes().map(|b| b.to_vec()), Some(want), "from {v}");
        }
        for v in [
            json!("not base64!"),
            json!("\\x0"),
            json!("\\xzz"),
            json!({"$binary": 1}),
            json!({"$binary": "AQID"}),
            json!(5),
        ] {
            let e = map_err(&everything(), json!({"blob": v.clone()}));
            assert!(e.reason.starts_with("expected bytes"), "{v}: {e}");
        }
    }

    #[test]
    fn nested_errors_name_the_path() {
        let e = map_err(
            &everything(),
            json!({"items": [{"quantity": 1}, {"quantity": 2}, {"quantity": "12.5"}]}),
        );
        assert_eq!(e.message, "overseer.test.v1.Everything");
        assert_eq!(e.field, "items[2].qty");
        assert_eq!(e.from, "items.2.quantity");
        assert_eq!(e.reason, "expected a uint32, found a string \"12.5\"");

        let e = map_err(&everything(), json!({"counts": {"k": "x"}}));
        assert_eq!(
            (e.field.as_str(), e.from.as_str()),
            ("counts[\"k\"]", "counts.k")
        );

        let e = map_err(&everything(), json!({"by_slot": {"one": {}}}));
        assert_eq!(e.field, "by_slot[\"one\"]");
        assert_eq!(e.reason, "expected an int32, found a string \"one\"");

        let e = map_err(&everything(), json!({"by_slot": {"1": {}, "01": {}}}));
        assert!(e.reason.contains("same key"), "{e}");

        let e = map_err(&everything(), json!({"flags": {"yes": "x"}}));
        assert!(e.reason.starts_with("expected a bool"), "{e}");

        let e = map_err(
            &everything(),
            json!({"child": {"child": {"first": {"quantity": -1}}}}),
        );
        assert_eq!(e.field, "child.child.first.qty");
        assert_eq!(e.from, "child.child.first.quantity");

        let e = map_err(&everything(), json!({"address": {"city": []}}));
        assert_eq!(
            (e.field.as_str(), e.from.as_str()),
            ("city", "address.city")
        );

        let e = map_err(
            &everything(),
            json!({"items": [{"sku": "a"}, {"quantity": 1.5}]}),
        );
        assert_eq!(
            (e.field.as_str(), e.from.as_str()),
            ("items[1].qty", "items.1.quantity")
        );

        let e = map_err(&everything(), json!({"tags": "x"}));
        assert_eq!(e.reason, "expected an array, found a string \"x\"");

        let e = map_err(&everything(), json!({"tags": ["a", null]}));
        assert_eq!(e.field, "tags[1]");
        assert_eq!(e.reason, "expected a string, found null");

        let e = map_err(&everything(), json!({"counts": []}));
        assert_eq!(e.reason, "expected a map (a document), found an array");

        let e = map_err(&everything(), json!({"first": "a"}));
        assert_eq!(
            e.reason,
            "expected a overseer.test.v1.Item (a document), found a string \"a\""
        );

        let e = map_err(&everything(), json!({"name": "a", "number": 1}));
        assert_eq!(e.field, "number");
        assert!(e.reason.contains("oneof choice"), "{e}");
    }

    #[test]
    fn name_wins_over_json_name_and_from_paths_miss_quietly() {
        let got = everything_json(json!({"created_by": "a", "createdBy": "b"}));
        assert_eq!(got["createdBy"], "a");
        // Paths through scalars, past array ends or with non-numeric indexes read nothing.
        let got = everything_json(json!({"items": [], "address": "Lyon"}));
        assert_eq!(got, json!({"id": "rec-1"}));
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let mut doc = json!({"name": "leaf"});
        for _ in 0..(MAX_DEPTH + 10) {
            doc = json!({"child": doc});
        }
        let e = map_err(&everything(), doc);
        assert!(e.reason.contains("nested deeper"), "{e}");
    }

    /// Values meant to break conversions; none may panic.
    fn odd_values() -> Vec<Value> {
        let long = "9".repeat(400);
        vec![
            json!(null),
            json!(true),
            json!(false),
            json!(0),
            json!(1),
            json!(-1),
            json!(i64::MIN),
            json!(i64::MAX),
            json!(u64::MAX),
            json!(0.5),
            json!(-0.0),
            json!(1e308),
            json!(-1e308),
            json!(""),
            json!(" "),
            json!("-"),
            json!("+"),
            json!("é"),
            json!("é".repeat(100)),
            json!("NaN"),
            json!("-inf"),
            json!("12.5"),
            json!(long),
            json!(format!("-{long}")),
            json!("\\x"),
            json!("\\x0"),
            json!("\\xé"),
            json!("\\xzz"),
            json!("===="),
            json!("2024-02-30"),
            json!("2024-01-02 03:04:05+99"),
            json!("+275760-09-13T00:00:00Z"),
            json!("9999-12-31T23:59:60Z"),
            json!("0000-01-01 00:00:00"),
            json!([]),
            json!([null]),
            json!([[1], {"a": []}]),
            json!({}),
            json!({"": null}),
            json!({"$date": null}),
            json!({"$date": []}),
            json!({"$date": {"$numberLong": long}}),
            json!({"$date": {"$numberLong": "-9223372036854775808"}}),
            json!({"$date": i64::MAX}),
            json!({"$date": i64::MIN}),
            json!({"$date": u64::MAX}),
            json!({"$date": 1.5}),
            json!({"$numberLong": []}),
            json!({"$numberLong": "1", "$numberInt": "1"}),
            json!({"$numberDouble": "abc"}),
            json!({"$numberDecimal": "-0E-6176"}),
            json!({"$oid": 1}),
            json!({"$binary": {"base64": 5}}),
            json!({"$binary": {"base64": "é"}}),
            json!({"$binary": "AQ", "$type": 1}),
            json!({"$binary": "AQ", "$other": "00"}),
            json!({"quantity": long, "sku": {}, "owner": []}),
            json!({"-1": {"quantity": -1}, "1": null, "x": "y", "true": 1}),
        ]
    }

    #[test]
    fn never_panics() {
        let desc = everything();
        let mut paths: Vec<String> = desc.fields().map(|f| source_path(&f)).collect();
        paths.extend(["quantity".into(), "createdBy".into(), "address".into()]);
        for v in odd_values() {
            // Each field alone (so every field's conversion sees the value) ...
            for p in &paths {
                let mut doc = Map::new();
                doc.insert(p.clone(), v.clone());
                let _ = record_to_message(&desc, "r", &doc);
                let nested = json!({"items": [v.clone(), {p.clone(): v.clone()}]});
                let _ = record_to_message(&desc, "r", &state(nested));
            }
            // ... and every field at once, nested too.
            let mut all: Map<String, Value> =
                paths.iter().map(|p| (p.clone(), v.clone())).collect();
            all.insert("child".into(), Value::Object(all.clone()));
            let _ = record_to_message(&desc, "", &all);
            for view in [
                "Toy",
                "Transfer",
                "Asset",
                "LedgerEntry",
                "Wallet",
                "TransferWithLedger",
            ] {
                let desc = views(view);
                let doc: Map<String, Value> = desc
                    .fields()
                    .map(|f| (f.name().to_owned(), v.clone()))
                    .collect();
                let _ = record_to_message(&desc, "r", &doc);
            }
        }
    }
}
