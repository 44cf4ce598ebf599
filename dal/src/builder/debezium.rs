//! Debezium change-event envelopes (Kafka Connect's JSON converter, with or without the
//! `{schema, payload}` wrapper).
//!
//! **PostgreSQL** (`debezium-postgres`), row images:
//! - `c`, `r` (snapshot read: the record's first sight), `u`: the state is `after`. A column
//!   whose value is Debezium's placeholder for a value it did not receive (an unchanged
//!   TOASTed column: the string `__debezium_unavailable_value`, or its base64 for binary
//!   columns) keeps its value from the state before; failing that from `before` (REPLICA
//!   IDENTITY FULL); failing that it is left out, since its value is unknown.
//! - `u` whose `before` holds the record's own id in a key column that `after` changes: a
//!   primary-key change, folded as the old id's record it ends it (`None`). Key columns are
//!   the fields of the Kafka key when the update has one, else every column. (By default
//!   Debezium sends a key change as `d` + `c`, which needs nothing special.)
//! - `d`: the record ends (`None`).
//!
//! **MongoDB** (`debezium-mongo`): `after`, `before`, `patch`, `filter` and
//! `updateDescription.updatedFields` are strings of extended JSON (some converters send
//! them as objects: both are read).
//! - `c`, `r`: the state is `after`.
//! - `u` with `after` (change-stream capture with a post-image): `after` is the state.
//! - `u` with `updateDescription` (change-stream capture): `updatedFields` (a string),
//!   `removedFields` and `truncatedArrays` applied as for native change streams.
//! - `u` with `patch` (oplog capture, older connectors): a `$set` / `$unset` patch (`$v: 1`),
//!   a `$v: 2` diff (`u`/`i` set, `d` removes, `s<field>` recurses, arrays with `a: true`,
//!   `l` new length, `u<index>`/`s<index>`), or with no operator a whole replacement.
//! - `d`: the record ends (`None`).
//!
//! A partial update of a record with no known state is applied to an empty document (with
//! the `_id` from `filter` when there is one): the best state there is.
//!
//! **Metadata**, for ingestion's index entry ([`Envelope`]): the op (`c`, `r` → create, `u`,
//! `d`; truncates, logical messages and tombstones are not changes), the model's name
//! (`source.schema` + "." + `source.table`, or `source.db` + "." + `source.collection`), the
//! source's commit time, the document the record id and references are read from (its
//! missing fields from the Kafka key, [`KeyDoc`]) and the change's upstream identity.

use std::borrow::Cow;

use serde_json::{Map, Value};

use super::mongo::{apply_update_description, ms_to_us, normalize_uuids};
use super::{State, describe, json_error, parse_json, path, scalar_text};
use crate::update::{Micros, Op, UpdateRecord};

/// Debezium PostgreSQL's placeholder for a value it did not receive
/// (`unavailable.value.placeholder`, default).
pub const UNAVAILABLE: &str = "__debezium_unavailable_value";

/// The same placeholder in a binary (`bytea`) column, base64 as the JSON converter writes it.
const UNAVAILABLE_BASE64: &str = "X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ==";

/// The payload of a Debezium change event and its op, read once from the raw event.
#[derive(Clone, Debug)]
pub struct Envelope {
    /// The payload (the `{schema, payload}` wrapper removed).
    pub payload: Map<String, Value>,
    pub op: Op,
    /// The op letter as sent, for reasons and identities.
    pub op_code: String,
}

impl Envelope {
    /// Reads an event: an error for tombstones, bad JSON, a payload that is not an envelope,
    /// and ops that are not a change to one record (truncate, logical message, unknown).
    pub fn read(raw: &[u8]) -> Result<Envelope, String> {
        if raw.iter().all(u8::is_ascii_whitespace) {
            return Err(
                "tombstone (empty value): Kafka's compaction marker after a delete, not a change"
                    .into(),
            );
        }
        let mut payload = match parse_json(raw)? {
            Value::Object(m) => m,
            Value::Null => {
                return Err(
                    "tombstone (null value): Kafka's compaction marker after a delete, not a change"
                        .into(),
                );
            }
            other => {
                return Err(format!(
                    "not a Debezium envelope: the event is not a JSON object (found {})",
                    describe(&other)
                ));
            }
        };
        // `{schema, payload}` from the JSON converter with schemas enabled.
        if !payload.contains_key("op") && payload.contains_key("payload") {
            payload = match payload.remove("payload") {
                Some(Value::Object(m)) => m,
                Some(Value::Null) | None => {
                    return Err(
                        "tombstone (null payload): Kafka's compaction marker after a \
                                delete, not a change"
                            .into(),
                    );
                }
                Some(other) => {
                    return Err(format!(
                        "not a Debezium envelope: `payload` is not a JSON object (found {})",
                        describe(&other)
                    ));
                }
            };
        }
        let op_code = match payload.get("op") {
            Some(Value::String(s)) => s.clone(),
            None | Some(Value::Null) => return Err("not a Debezium envelope: no `op`".into()),
            Some(other) => {
                return Err(format!("`op` is not a string (found {})", describe(other)));
            }
        };
        let op = match op_code.as_str() {
            "c" | "r" => Op::Create,
            "u" => Op::Update,
            "d" => Op::Delete,
            "t" => {
                return Err(
                    "truncate event (op \"t\"): it empties a whole table, not a change \
                            to one record"
                        .into(),
                );
            }
            "m" => {
                return Err("logical decoding message (op \"m\"): not a change to a record".into());
            }
            other => return Err(format!("unknown op {other:?}")),
        };
        Ok(Envelope {
            payload,
            op,
            op_code,
        })
    }

    /// `source`, which every Debezium change event has (empty when absent or null).
    pub fn source(&self) -> Result<&Map<String, Value>, String> {
        static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
        match self.payload.get("source") {
            Some(Value::Object(s)) => Ok(s),
            // Without `source` the model must be fixed and the time comes from `ts_ms`.
            None | Some(Value::Null) => Ok(EMPTY.get_or_init(Map::new)),
            Some(other) => Err(format!(
                "`source` is not a JSON object (found {})",
                describe(other)
            )),
        }
    }

    /// `source.NAME` as text when it is a number or a non-empty string.
    pub fn source_field(&self, name: &str) -> Option<String> {
        match self.payload.get("source")?.get(name)? {
            Value::Number(n) => Some(n.to_string()),
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            _ => None,
        }
    }

    /// The model a PostgreSQL connector's event names: `source.schema` + "." +
    /// `source.table`; `None` when `source` does not say.
    pub fn postgres_model(&self) -> Result<Option<String>, String> {
        self.source_name("schema", "table")
    }

    /// The model a MongoDB connector's event names: `source.db` + "." +
    /// `source.collection`; `None` when `source` does not say.
    pub fn mongo_model(&self) -> Result<Option<String>, String> {
        self.source_name("db", "collection")
    }

    fn source_name(&self, outer: &str, inner: &str) -> Result<Option<String>, String> {
        let source = self.source()?;
        let text = |k: &str| source.get(k).and_then(Value::as_str);
        Ok(match (text(outer), text(inner)) {
            (Some(o), Some(i)) if !i.is_empty() => Some(format!("{o}.{i}")),
            _ => None,
        })
    }

    /// The source's commit time, in microseconds: `source.ts_us` (or `ts_ns`, or `ts_ms`);
    /// the envelope's own `ts_*` (when the connector processed the event) only if `source`
    /// has none; then `fallback`, the source's commit time if it knows one.
    pub fn time(&self, fallback: Option<Micros>) -> Result<Micros, String> {
        let source = self.source()?;
        for (obj, at) in [(source, "source."), (&self.payload, "")] {
            if let Some(us) = int_field(obj, "ts_us", at)? {
                return Ok(us);
            }
            if let Some(ns) = int_field(obj, "ts_ns", at)? {
                return Ok(ns / 1000);
            }
            if let Some(ms) = int_field(obj, "ts_ms", at)? {
                return ms_to_us(ms)
                    .ok_or_else(|| format!("no event time: {at}ts_ms {ms} is out of range"));
            }
        }
        fallback.ok_or_else(|| "no event time: neither source.ts_ms nor ts_ms is present".into())
    }

    /// The row a PostgreSQL connector's event is about, to read its id and references from:
    /// `after` (`before` for deletes), taken out of the payload; columns it lacks (all of
    /// them for a delete without a row image) from the Kafka key.
    pub fn take_postgres_row(&mut self, key: &KeyDoc) -> Result<State, String> {
        let image = if self.op == Op::Delete {
            "before"
        } else {
            "after"
        };
        let mut row = match self.payload.remove(image) {
            Some(Value::Object(row)) => row,
            None | Some(Value::Null) if self.op == Op::Delete => Map::new(),
            None | Some(Value::Null) => {
                return Err(format!(
                    "no row image: `{image}` is missing or null in an op {:?} event",
                    self.op_code
                ));
            }
            Some(other) => {
                return Err(format!(
                    "`{image}` is not a row (found {})",
                    describe(&other)
                ));
            }
        };
        if let KeyDoc::Doc(k) = key {
            for (f, v) in k {
                if !has(&row, f) {
                    row.insert(f.clone(), v.clone());
                }
            }
        }
        Ok(row)
    }

    /// The document a MongoDB connector's event is about, to read its id and references
    /// from: `after` (`before` for deletes), overlaid by the fields an update wrote
    /// (`updateDescription.updatedFields`, or what an oplog `patch` sets), then any `_id`
    /// still missing from `before`, `filter`, or the key's `id` (a string of extended JSON).
    /// UUID binaries read as `{"$uuid": ..}`.
    pub fn mongo_document(&self, key: &KeyDoc) -> Result<Value, String> {
        let p = &self.payload;
        let after = ext_json_doc(p, "after")?;
        let before = ext_json_doc(p, "before")?;
        let filter = ext_json_doc(p, "filter")?;
        // The document, and the other image that may still have its `_id`.
        let (doc, other) = match self.op {
            Op::Delete => (before, None),
            _ => (after, before),
        };
        let mut doc = doc.map(Cow::into_owned).unwrap_or_default();
        if self.op == Op::Update {
            if let Some(patch) = ext_json_doc(p, "patch")? {
                doc.extend(patch_fields(patch.into_owned()));
            }
            match p.get("updateDescription") {
                None | Some(Value::Null) => {}
                Some(Value::Object(ud)) => {
                    if let Some(fields) = ext_json_doc(ud, "updatedFields")
                        .map_err(|e| format!("updateDescription.{e}"))?
                    {
                        doc.extend(fields.into_owned());
                    }
                }
                Some(other) => {
                    return Err(format!(
                        "updateDescription is not a document (found {})",
                        describe(other)
                    ));
                }
            }
        }
        if !has(&doc, "_id") {
            let id = [&other, &filter]
                .into_iter()
                .flatten()
                .find_map(|d| d.get("_id").filter(|v| !v.is_null()));
            if let Some(id) = id {
                doc.insert("_id".into(), id.clone());
            }
        }
        if let (false, KeyDoc::Doc(k)) = (has(&doc, "_id"), key)
            && let Some(id) = k.get("id").and_then(mongo_key_id)
        {
            doc.insert("_id".into(), id);
        }
        let mut doc = Value::Object(doc);
        normalize_uuids(&mut doc);
        Ok(doc)
    }

    /// The change's identity upstream for a PostgreSQL connector's event: the LSN names a
    /// change uniquely except in a snapshot (every `r` shares one), so the op, model and id
    /// are part of it.
    pub fn postgres_event_id(&self, model: &str, record_id: &str) -> Option<String> {
        self.source_field("lsn")
            .map(|lsn| format!("dbz-pg:{lsn:0>20}:{}:{model}:{record_id}", self.op_code))
    }

    /// The change's identity upstream for a MongoDB connector's event: an oplog entry is
    /// (cluster time, ordinal); snapshot reads share them, hence the op, model and id.
    pub fn mongo_event_id(&self, model: &str, record_id: &str) -> Option<String> {
        match (self.source_field("ts_ms"), self.source_field("ord")) {
            (Some(ts), Some(ord)) => Some(format!(
                "dbz-mongo:{ts:0>20}:{ord:0>10}:{}:{model}:{record_id}",
                self.op_code
            )),
            _ => None,
        }
    }
}

/// An integer field; `Ok(None)` if absent or null.
fn int_field(obj: &Map<String, Value>, key: &str, at: &str) -> Result<Option<i64>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_i64().map(Some).ok_or_else(|| {
            format!(
                "no event time: {at}{key} is not an integer (found {})",
                describe(v)
            )
        }),
    }
}

/// Whether `doc` has a non-null `field`.
fn has(doc: &Map<String, Value>, field: &str) -> bool {
    doc.get(field).is_some_and(|v| !v.is_null())
}

/// What the Kafka key offers: `{"id": ..}`, or `{schema, payload}` from the JSON converter
/// with schemas enabled.
#[derive(Clone, Debug)]
pub enum KeyDoc {
    None,
    /// The key's payload (the wrapper removed).
    Doc(Map<String, Value>),
    /// Why the key could not be used, for reasons.
    Unusable(String),
}

impl KeyDoc {
    /// Reads the key; `None` and empty keys are [`KeyDoc::None`].
    pub fn read(key: Option<&[u8]>) -> KeyDoc {
        let Some(key) = key.filter(|k| !k.is_empty()) else {
            return KeyDoc::None;
        };
        match super::exact::parse(key) {
            Ok(Value::Object(mut m)) => {
                if m.contains_key("schema") && m.contains_key("payload") {
                    match m.remove("payload") {
                        Some(Value::Object(p)) => KeyDoc::Doc(p),
                        _ => {
                            KeyDoc::Unusable("the Kafka key's payload is not a JSON object".into())
                        }
                    }
                } else {
                    KeyDoc::Doc(m)
                }
            }
            Ok(other) => KeyDoc::Unusable(format!(
                "the Kafka key is not a JSON object (found {})",
                describe(&other)
            )),
            Err(e) => KeyDoc::Unusable(format!("the Kafka key is not JSON: {e}")),
        }
    }

    /// Why the key did not supply a field the document lacks, to end a reason with.
    pub fn why_not(&self) -> &str {
        match self {
            KeyDoc::None => "there is no Kafka key",
            KeyDoc::Doc(_) => "the Kafka key does not have it either",
            KeyDoc::Unusable(why) => why,
        }
    }
}

/// The key's `id`: a string holding the `_id` as extended JSON (`"1004"`, `"\"abc\""`,
/// `"{\"$oid\": \"...\"}"`), read back into the `_id` value it stands for.
fn mongo_key_id(v: &Value) -> Option<Value> {
    match v {
        Value::String(s) => match super::exact::parse_str(s) {
            Ok(parsed) if !parsed.is_null() => Some(parsed),
            // Not JSON: the string is the id itself.
            _ => Some(Value::String(s.clone())),
        },
        Value::Null => None,
        other => Some(other.clone()),
    }
}

/// The fields an oplog `patch` writes: its `$set`, the updates and inserts of a `$v: 2`
/// diff, or the whole document when it is a replacement (no operators).
fn patch_fields(patch: State) -> State {
    if !patch.keys().any(|k| k.starts_with('$')) {
        return patch;
    }
    let mut out = Map::new();
    if let Some(Value::Object(set)) = patch.get("$set") {
        out.extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    if let Some(Value::Object(diff)) = patch.get("diff") {
        for part in ["u", "i"] {
            if let Some(Value::Object(m)) = diff.get(part) {
                out.extend(m.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
        }
    }
    out
}

/// Applies one Debezium PostgreSQL envelope.
pub fn apply_postgres(state: Option<State>, rec: &UpdateRecord) -> Result<Option<State>, String> {
    let Envelope {
        payload,
        op,
        op_code,
    } = Envelope::read(&rec.raw)?;
    let row = |name: &str| -> Result<Option<&Map<String, Value>>, String> {
        match payload.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(other) => Err(format!("`{name}` is not a row (found {})", describe(other))),
        }
    };
    match op {
        Op::Create | Op::Update => {
            let after = row("after")?.ok_or_else(|| {
                format!("no row image: `after` is missing or null in an op {op_code:?} event")
            })?;
            let before = row("before")?;
            if op == Op::Update
                && let Some(before) = before
                && leaves_record(&rec.record_id, before, after, &key_columns(&rec.key))
            {
                return Ok(None);
            }
            let mut out = State::new();
            for (col, v) in after {
                if is_unavailable(v) {
                    let known = state
                        .as_ref()
                        .and_then(|s| s.get(col))
                        .or_else(|| before.and_then(|b| b.get(col)).filter(|b| !is_unknown(b)));
                    if let Some(known) = known {
                        out.insert(col.clone(), known.clone());
                    }
                } else {
                    out.insert(col.clone(), v.clone());
                }
            }
            Ok(Some(out))
        }
        Op::Delete => Ok(None),
        Op::Replace | Op::Unspecified => Err(format!("unknown op {op_code:?}")),
    }
}

fn is_unavailable(v: &Value) -> bool {
    match v {
        Value::String(s) => s == UNAVAILABLE || s == UNAVAILABLE_BASE64,
        // Array columns carry it as their one element.
        Value::Array(a) => matches!(a.as_slice(), [Value::String(s)] if s == UNAVAILABLE),
        _ => false,
    }
}

/// A `before` value that says nothing: the placeholder, or a null of a key-only image.
fn is_unknown(v: &Value) -> bool {
    v.is_null() || is_unavailable(v)
}

/// The key columns from the Kafka key ([`KeyDoc`]); empty if none or unusable.
fn key_columns(key: &[u8]) -> Vec<String> {
    match KeyDoc::read(Some(key)) {
        KeyDoc::Doc(m) => m.keys().cloned().collect(),
        KeyDoc::None | KeyDoc::Unusable(_) => Vec::new(),
    }
}

/// Whether an update moves the record `record_id` away: some key column (`keys`, or every
/// column of `before` when empty) holds `record_id` before and something else after.
fn leaves_record(
    record_id: &str,
    before: &Map<String, Value>,
    after: &Map<String, Value>,
    keys: &[String],
) -> bool {
    if record_id.is_empty() {
        return false;
    }
    let moved = |col: &String, old: &Value| {
        scalar_text(old).as_deref() == Some(record_id)
            && after
                .get(col)
                .is_some_and(|new| new != old && !is_unavailable(new))
    };
    if keys.is_empty() {
        before.iter().any(|(c, v)| moved(c, v))
    } else {
        keys.iter()
            .any(|c| before.get(c).is_some_and(|v| moved(c, v)))
    }
}

/// Applies one Debezium MongoDB envelope.
pub fn apply_mongo(state: Option<State>, raw: &[u8]) -> Result<Option<State>, String> {
    let Envelope {
        payload,
        op,
        op_code,
    } = Envelope::read(raw)?;
    match op {
        Op::Create => ext_json_doc(&payload, "after")?
            .map(|d| Some(d.into_owned()))
            .ok_or_else(|| {
                format!("no document: `after` is missing or null in an op {op_code:?} event")
            }),
        Op::Update => {
            if let Some(after) = ext_json_doc(&payload, "after")? {
                return Ok(Some(after.into_owned()));
            }
            let filter = ext_json_doc(&payload, "filter")?;
            let mut doc = state.unwrap_or_default();
            match (
                payload.get("updateDescription"),
                ext_json_doc(&payload, "patch")?,
            ) {
                (Some(Value::Object(ud)), _) => {
                    let mut ud = ud.clone();
                    if let Some(fields) = ext_json_doc(&ud, "updatedFields")
                        .map_err(|e| format!("updateDescription.{e}"))?
                    {
                        let fields = Value::Object(fields.into_owned());
                        ud.insert("updatedFields".into(), fields);
                    }
                    apply_update_description(&mut doc, &ud)?;
                }
                (Some(other), _) if !other.is_null() => {
                    return Err(format!(
                        "updateDescription is not a document (found {})",
                        describe(other)
                    ));
                }
                (_, Some(patch)) => apply_patch(&mut doc, patch.into_owned())?,
                _ => {
                    return Err(
                        "update with neither `after`, `updateDescription` nor `patch`".into(),
                    );
                }
            }
            if !doc.contains_key("_id")
                && let Some(id) = filter.and_then(|f| f.get("_id").cloned())
            {
                doc.insert("_id".into(), id);
            }
            Ok(Some(doc))
        }
        Op::Delete => Ok(None),
        Op::Replace | Op::Unspecified => Err(format!("unknown op {op_code:?}")),
    }
}

/// A field holding a document as a string of extended JSON (or, from some converters, as a
/// JSON object already, then borrowed); `Ok(None)` if absent or null.
pub fn ext_json_doc<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
) -> Result<Option<Cow<'a, State>>, String> {
    let parsed = match obj.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => super::exact::parse_str(s)
            .map_err(|e| json_error(&format!("`{key}` is not valid extended JSON"), &e))?,
        Some(Value::Object(m)) => return Ok(Some(Cow::Borrowed(m))),
        Some(other) => {
            return Err(format!(
                "`{key}` is not a string of extended JSON (found {})",
                describe(other)
            ));
        }
    };
    match parsed {
        Value::Object(m) => Ok(Some(Cow::Owned(m))),
        Value::Null => Ok(None),
        other => Err(format!(
            "`{key}` does not hold a document (found {})",
            describe(&other)
        )),
    }
}

/// Applies an oplog `patch`: `$set`/`$unset`, a `$v: 2` diff, or a whole replacement.
fn apply_patch(doc: &mut State, patch: State) -> Result<(), String> {
    if !patch.keys().any(|k| k.starts_with('$')) {
        let id = doc.remove("_id");
        *doc = patch;
        if let (false, Some(id)) = (doc.contains_key("_id"), id) {
            doc.insert("_id".into(), id);
        }
        return Ok(());
    }
    if let Some(diff) = patch.get("diff") {
        let Value::Object(diff) = diff else {
            return Err(format!(
                "patch diff is not a document (found {})",
                describe(diff)
            ));
        };
        return apply_object_diff(doc, diff);
    }
    match patch.get("$unset") {
        None | Some(Value::Null) => {}
        Some(Value::Object(fields)) => {
            for f in fields.keys() {
                path::unset(doc, &path::split(f)?);
            }
        }
        Some(other) => {
            return Err(format!(
                "patch $unset is not a document (found {})",
                describe(other)
            ));
        }
    }
    match patch.get("$set") {
        None | Some(Value::Null) => {}
        Some(Value::Object(fields)) => {
            for (f, v) in fields {
                path::set(doc, &path::split(f)?, v.clone())?;
            }
        }
        Some(other) => {
            return Err(format!(
                "patch $set is not a document (found {})",
                describe(other)
            ));
        }
    }
    for k in patch.keys() {
        if k.starts_with('$') && !matches!(k.as_str(), "$v" | "$set" | "$unset") {
            return Err(format!("patch operator {k:?} is not supported"));
        }
    }
    Ok(())
}

/// A `$v: 2` oplog diff of a document: `d` removes, `u` and `i` set, `s<field>` is the diff
/// of a sub-document or array.
fn apply_object_diff(doc: &mut State, diff: &Map<String, Value>) -> Result<(), String> {
    if let Some(Value::Object(d)) = diff.get("d") {
        for f in d.keys() {
            doc.remove(f);
        }
    }
    for part in ["u", "i"] {
        if let Some(Value::Object(m)) = diff.get(part) {
            doc.extend(m.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    }
    for (k, sub) in diff {
        let Some(field) = k.strip_prefix('s').filter(|f| !f.is_empty()) else {
            continue;
        };
        let Value::Object(sub) = sub else {
            return Err(format!("patch diff {k:?} is not a document"));
        };
        let child = doc
            .entry(field.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        apply_value_diff(child, sub)?;
    }
    Ok(())
}

fn apply_value_diff(v: &mut Value, diff: &Map<String, Value>) -> Result<(), String> {
    let is_array_diff = diff.get("a") == Some(&Value::Bool(true));
    match v {
        Value::Array(a) if is_array_diff => {
            if let Some(len) = diff.get("l").and_then(Value::as_u64) {
                let len = usize::try_from(len)
                    .ok()
                    .filter(|l| *l <= a.len().saturating_add(path::MAX_PAD))
                    .ok_or_else(|| format!("patch diff array length {len} is out of range"))?;
                a.resize(len, Value::Null);
            }
            for (k, item) in diff {
                let (kind, idx) = k.split_at(k.len().min(1));
                let Ok(i) = idx.parse::<usize>() else {
                    continue;
                };
                if i >= a.len().saturating_add(path::MAX_PAD) {
                    return Err(format!("patch diff array index {i} is out of range"));
                }
                if a.len() <= i {
                    a.resize(i + 1, Value::Null);
                }
                let Some(slot) = a.get_mut(i) else { continue };
                match (kind, item) {
                    ("u", item) => *slot = item.clone(),
                    ("s", Value::Object(sub)) => apply_value_diff(slot, sub)?,
                    _ => return Err(format!("patch diff array entry {k:?} is not understood")),
                }
            }
            Ok(())
        }
        Value::Object(m) if !is_array_diff => apply_object_diff(m, diff),
        other => Err(format!(
            "patch diff does not match the value it applies to ({})",
            describe(other)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(raw: &Value, key: Option<&Value>, id: &str) -> UpdateRecord {
        UpdateRecord {
            raw: raw.to_string().into_bytes().into(),
            key: key
                .map(|k| k.to_string().into_bytes().into())
                .unwrap_or_default(),
            record_id: id.into(),
            ..Default::default()
        }
    }

    fn obj(v: Value) -> Option<State> {
        match v {
            Value::Object(m) => Some(m),
            _ => None,
        }
    }

    #[test]
    fn postgres_rows_with_unavailable_values() {
        let c = json!({"op": "r", "before": null, "after": {"id": "t1", "amount": "1.50", "memo": "long", "n": 3}});
        let u = json!({"schema": {}, "payload": {"op": "u", "before": null,
            "after": {"id": "t1", "amount": "2.00", "memo": UNAVAILABLE, "n": 4}}});
        let s = apply_postgres(None, &rec(&c, None, "t1")).unwrap();
        let s = apply_postgres(s, &rec(&u, None, "t1")).unwrap();
        assert_eq!(
            s,
            obj(json!({"id": "t1", "amount": "2.00", "memo": "long", "n": 4}))
        );
        // Unknown with no earlier state: left out; known from a full `before`: taken.
        assert_eq!(
            apply_postgres(None, &rec(&u, None, "t1")).unwrap(),
            obj(json!({"id": "t1", "amount": "2.00", "n": 4}))
        );
        let full = json!({"op": "u", "before": {"id": "t1", "memo": "old"},
            "after": {"id": "t1", "memo": UNAVAILABLE}});
        assert_eq!(
            apply_postgres(None, &rec(&full, None, "t1")).unwrap(),
            obj(json!({"id": "t1", "memo": "old"}))
        );
        let d = json!({"op": "d", "before": {"id": "t1"}, "after": null});
        assert_eq!(apply_postgres(s, &rec(&d, None, "t1")).unwrap(), None);
    }

    #[test]
    fn postgres_key_change() {
        let u = json!({"op": "u", "before": {"id": "t0", "v": 1}, "after": {"id": "t1", "v": 1}});
        let key = json!({"schema": {}, "payload": {"id": "t1"}});
        let prev = obj(json!({"id": "t0", "v": 1}));
        // Folded as the old id: the record ends.
        assert_eq!(
            apply_postgres(prev.clone(), &rec(&u, Some(&key), "t0")).unwrap(),
            None
        );
        assert_eq!(apply_postgres(prev, &rec(&u, None, "t0")).unwrap(), None);
        // As the new id: the new row.
        assert_eq!(
            apply_postgres(None, &rec(&u, Some(&key), "t1")).unwrap(),
            obj(json!({"id": "t1", "v": 1}))
        );
        // A non-key column that happens to equal the id does not count when the key is known.
        let odd =
            json!({"op": "u", "before": {"id": "x", "v": "x"}, "after": {"id": "x", "v": "y"}});
        let key = json!({"id": "x"});
        assert!(
            apply_postgres(None, &rec(&odd, Some(&key), "x"))
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn postgres_rejects() {
        let e = |v: Value| apply_postgres(None, &rec(&v, None, "")).unwrap_err();
        assert!(e(json!({"op": "t"})).contains("truncate"));
        assert!(e(json!({"op": "c", "after": null})).contains("no row image"));
        assert!(e(json!({"op": "c", "after": [1]})).contains("not a row"));
        assert!(e(json!(null)).contains("tombstone"));
        assert!(e(json!({"after": {}})).contains("no `op`"));
    }

    #[test]
    fn mongo_patches() {
        let mut doc =
            obj(json!({"_id": 1, "a": {"b": 1, "c": [1, 2, 3]}, "x": 1})).unwrap_or_default();
        apply_patch(
            &mut doc,
            obj(json!({"$v": 1, "$set": {"a.b": 2, "y": 1}, "$unset": {"x": true}}))
                .unwrap_or_default(),
        )
        .unwrap();
        assert_eq!(
            Value::Object(doc.clone()),
            json!({"_id": 1, "a": {"b": 2, "c": [1, 2, 3]}, "y": 1})
        );
        apply_patch(
            &mut doc,
            obj(json!({"$v": 2, "diff": {"d": {"y": false}, "i": {"z": 1},
            "sa": {"u": {"b": 3}, "sc": {"a": true, "l": 2, "u1": 20}}}}))
            .unwrap_or_default(),
        )
        .unwrap();
        assert_eq!(
            Value::Object(doc.clone()),
            json!({"_id": 1, "a": {"b": 3, "c": [1, 20]}, "z": 1})
        );
        apply_patch(&mut doc, obj(json!({"whole": "new"})).unwrap_or_default()).unwrap();
        assert_eq!(
            Value::Object(doc.clone()),
            json!({"_id": 1, "whole": "new"})
        );
        assert!(apply_patch(&mut doc, obj(json!({"$inc": {"n": 1}})).unwrap_or_default()).is_err());
    }
}
