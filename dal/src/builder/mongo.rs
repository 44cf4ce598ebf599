//! Native MongoDB change streams: `mongo-change-stream` (one event as relaxed or canonical
//! extended JSON) and `mongo-change-stream-bson` (one event as a raw BSON document,
//! converted by [`bson_to_extjson`] to extended JSON first, so both formats share one code
//! path and can never disagree).
//!
//! - `insert`, `replace`: the state is `fullDocument`.
//! - `update` with a `fullDocument` (`fullDocument: "updateLookup"`): that document is the
//!   state. (MongoDB looks it up when it sends the event, so it can be newer than the change
//!   itself; with a null lookup — the document is gone — the description is applied.)
//! - `update` otherwise: `updateDescription` is applied to the state before it:
//!   `truncatedArrays` (`{field, newSize}`), then `removedFields`, then `updatedFields`, all
//!   dotted paths into documents and arrays ([`super::path`]); `disambiguatedPaths`, when
//!   present, says which components of a field name containing dots are the path. Applied to
//!   a record with no known state (its history starts after its creation), the result is the
//!   fields the updates wrote: the best state there is.
//! - `delete`: the record ends (`None`).
//!
//! Without `operationType` (hand-written events such as the Overseer post's Toy example) the
//! op is inferred: `updateDescription` → update, `fullDocument` → insert.
//! A state always has its `_id`: from the document, else `documentKey._id`, else a top-level
//! `_id` that is not a resume token (`{"_data": ..}`; the Toy example's `_id`).
//!
//! This module also reads an event's metadata for ingestion, so the index entry of an event
//! and the state folded from it read the event one way: [`change_op`], [`namespace`],
//! [`change_time`] and [`record_document`] (the document the record id and references are
//! read from), with the extended-JSON helpers they need ([`date_us`], [`normalize_uuids`]).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bson::RawDocument;
use bson::raw::{RawArray, RawBsonRef};
use bson::spec::BinarySubtype;
use serde_json::{Map, Value, json};

use super::{State, describe, parse_json, path};
use crate::update::{Micros, Op};

/// Applies a change-stream event given as extended JSON.
pub fn apply_json(state: Option<State>, raw: &[u8]) -> Result<Option<State>, String> {
    apply_event(state, parse_json(raw)?)
}

/// Applies a change-stream event given as a raw BSON document.
pub fn apply_bson(state: Option<State>, raw: &[u8]) -> Result<Option<State>, String> {
    let ev = bson_to_extjson(raw).map_err(|e| format!("invalid BSON: {e}"))?;
    apply_event(state, ev)
}

/// Applies one change-stream event (extended JSON).
pub fn apply_event(state: Option<State>, ev: Value) -> Result<Option<State>, String> {
    let Value::Object(mut ev) = ev else {
        return Err(format!(
            "change event is not a document (found {})",
            describe(&ev)
        ));
    };
    let op = change_op(&ev)?;
    let id = document_id(&ev)?.cloned();
    let full = take_doc(&mut ev, "fullDocument")?;
    let mut doc = match (op, full) {
        (Op::Create | Op::Replace, Some(full)) => full,
        (Op::Create, None) => return Err("insert event without a fullDocument".into()),
        (Op::Replace, None) => return Err("replace event without a fullDocument".into()),
        (Op::Update, Some(full)) => full,
        (Op::Update, None) => {
            let ud = optional_doc(&ev, "updateDescription")?.ok_or_else(|| {
                "update event with neither updateDescription nor fullDocument".to_string()
            })?;
            let mut doc = state.unwrap_or_default();
            apply_update_description(&mut doc, ud)?;
            doc
        }
        (Op::Delete, _) => return Ok(None),
        (Op::Unspecified, _) => return Err("operationType is not a change to one document".into()),
    };
    if let (false, Some(id)) = (doc.contains_key("_id"), id) {
        doc.insert("_id".into(), id);
    }
    Ok(Some(doc))
}

/// The op of a change event (`operationType`), inferred for hand-written events that have
/// none: `updateDescription` → update, `fullDocument` → create. Other change-stream events
/// (drop, rename, invalidate, ...) are not changes to one document: an error says so.
pub fn change_op(ev: &Map<String, Value>) -> Result<Op, String> {
    match ev.get("operationType") {
        Some(Value::String(t)) => match t.as_str() {
            "insert" => Ok(Op::Create),
            "update" => Ok(Op::Update),
            "replace" => Ok(Op::Replace),
            "delete" => Ok(Op::Delete),
            "drop"
            | "rename"
            | "dropDatabase"
            | "invalidate"
            | "create"
            | "createIndexes"
            | "dropIndexes"
            | "modify"
            | "shardCollection"
            | "refineCollectionShardKey"
            | "reshardCollection" => Err(format!(
                "unsupported operationType {t:?}: not a change to one document"
            )),
            _ => Err(format!("unknown operationType {t:?}")),
        },
        None | Some(Value::Null) => {
            let has = |k: &str| ev.get(k).is_some_and(|v| !v.is_null());
            if has("updateDescription") {
                Ok(Op::Update)
            } else if has("fullDocument") {
                Ok(Op::Create)
            } else {
                Err("no operationType, and neither fullDocument nor updateDescription to infer it from".into())
            }
        }
        Some(other) => Err(format!(
            "operationType is not a string (found {})",
            describe(other)
        )),
    }
}

/// `ns.db` + "." + `ns.coll`; `Ok(None)` when the event has no `ns`, `Err(reason)` when its
/// `ns` is malformed.
pub fn namespace(ev: &Map<String, Value>) -> Result<Option<String>, String> {
    let ns = match ev.get("ns") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(ns)) => ns,
        Some(other) => return Err(format!("ns is not a document (found {})", describe(other))),
    };
    match (ns.get("db"), ns.get("coll")) {
        (Some(Value::String(db)), Some(Value::String(coll))) => Ok(Some(format!("{db}.{coll}"))),
        _ => Err("ns.db or ns.coll is missing or not a string".into()),
    }
}

/// The event time: `wallTime` (a `$date`, millisecond precision) if present, else
/// `clusterTime` (a `$timestamp`, or a number of seconds); `Ok(None)` when the event has
/// neither.
pub fn change_time(ev: &Map<String, Value>) -> Result<Option<Micros>, String> {
    if let Some(w) = ev.get("wallTime").filter(|v| !v.is_null()) {
        return date_us(w)
            .map(Some)
            .map_err(|e| format!("no event time: wallTime {w} {e}"));
    }
    if let Some(c) = ev.get("clusterTime").filter(|v| !v.is_null()) {
        return cluster_time_us(c)
            .map(Some)
            .map_err(|e| format!("no event time: clusterTime {c} {e}"));
    }
    Ok(None)
}

/// An extended-JSON `$date` (relaxed ISO-8601 string, canonical `{"$numberLong": ms}`, or the
/// legacy plain number of milliseconds) in microseconds since the epoch.
pub fn date_us(v: &Value) -> Result<Micros, String> {
    match v.get("$date") {
        Some(Value::String(s)) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|d| d.timestamp_micros())
            .map_err(|e| format!("is not a valid ISO-8601 date: {e}")),
        Some(Value::Number(n)) => n
            .as_i64()
            .and_then(ms_to_us)
            .ok_or_else(|| "is not an integer number of milliseconds in range".into()),
        Some(Value::Object(m)) => match m.get("$numberLong") {
            Some(Value::String(s)) => s
                .parse::<i64>()
                .ok()
                .and_then(ms_to_us)
                .ok_or_else(|| "is not an integer number of milliseconds in range".into()),
            _ => Err("is not a $date".into()),
        },
        _ => Err("is not a $date".into()),
    }
}

/// A `$timestamp` (`{"$timestamp": {"t": secs, "i": n}}`) or a number of seconds (plain,
/// or canonical `{"$numberLong": ".."}`), in microseconds since the epoch. The increment
/// orders events within a second; it is not time, so it is not added.
fn cluster_time_us(v: &Value) -> Result<Micros, String> {
    let secs = match v {
        Value::Number(n) => n.as_i64(),
        _ => v
            .get("$timestamp")
            .and_then(|t| t.get("t"))
            .and_then(Value::as_i64)
            .or_else(|| {
                v.get("$numberLong")
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse().ok())
            }),
    };
    secs.and_then(|s| s.checked_mul(1_000_000))
        .ok_or_else(|| "is neither a $timestamp nor a number of seconds".into())
}

/// Milliseconds to microseconds, `None` on overflow.
pub fn ms_to_us(ms: i64) -> Option<Micros> {
    ms.checked_mul(1000)
}

/// The document the record id and references of a change event are read from:
/// `fullDocument` (`fullDocumentBeforeChange` for deletes), overlaid by
/// `updateDescription.updatedFields` (the fields this very change wrote), overlaid by
/// `documentKey` (authoritative for `_id` and shard keys); an `_id` still missing is the
/// event's [`document_id`]. UUID binaries read as `{"$uuid": ..}` ([`normalize_uuids`]).
pub fn record_document(ev: &Map<String, Value>, op: Op) -> Result<Value, String> {
    let mut doc = Map::new();
    let base_field = if op == Op::Delete {
        "fullDocumentBeforeChange"
    } else {
        "fullDocument"
    };
    if let Some(base) = optional_doc(ev, base_field)? {
        doc.extend(base.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    if let Some(ud) = optional_doc(ev, "updateDescription")? {
        match ud.get("updatedFields") {
            None | Some(Value::Null) => {}
            Some(Value::Object(fields)) => {
                doc.extend(fields.iter().map(|(k, v)| (k.clone(), v.clone())))
            }
            Some(other) => {
                return Err(format!(
                    "updateDescription.updatedFields is not a document (found {})",
                    describe(other)
                ));
            }
        }
    }
    if let Some(key) = optional_doc(ev, "documentKey")? {
        doc.extend(key.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    if doc.get("_id").is_none_or(Value::is_null)
        && let Some(id) = document_id(ev)?
    {
        doc.insert("_id".into(), id.clone());
    }
    let mut doc = Value::Object(doc);
    normalize_uuids(&mut doc);
    Ok(doc)
}

/// The document's `_id` as the event names it: `documentKey._id`, else a top-level `_id`
/// that is not a resume token (`{"_data": ..}`; the Toy example of the Overseer post).
pub fn document_id(ev: &Map<String, Value>) -> Result<Option<&Value>, String> {
    if let Some(id) = optional_doc(ev, "documentKey")?.and_then(|k| k.get("_id")) {
        return Ok(Some(id));
    }
    Ok(match ev.get("_id") {
        None | Some(Value::Null) => None,
        Some(Value::Object(t)) if t.contains_key("_data") => None,
        Some(id) => Some(id),
    })
}

/// The document under `key`: `None` if absent or null, an error if not a document.
pub fn optional_doc<'a>(
    ev: &'a Map<String, Value>,
    key: &str,
) -> Result<Option<&'a State>, String> {
    match ev.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(other) => Err(format!(
            "{key} is not a document (found {})",
            describe(other)
        )),
    }
}

/// [`optional_doc`], taken out of `ev` rather than borrowed.
fn take_doc(ev: &mut Map<String, Value>, key: &str) -> Result<Option<State>, String> {
    optional_doc(ev, key)?;
    Ok(match ev.remove(key) {
        Some(Value::Object(m)) => Some(m),
        _ => None,
    })
}

/// Rewrites UUID binaries (`$binary` subtype 4, in the v2 or legacy form) to `{"$uuid":
/// "8-4-4-4-12"}`, the form ids and references read as text.
pub fn normalize_uuids(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(u) = uuid_of_binary(m) {
                *v = json!({ "$uuid": u });
                return;
            }
            m.values_mut().for_each(normalize_uuids);
        }
        Value::Array(a) => a.iter_mut().for_each(normalize_uuids),
        _ => {}
    }
}

fn uuid_of_binary(m: &Map<String, Value>) -> Option<String> {
    let (b64, subtype) = match m.get("$binary")? {
        Value::Object(b) if m.len() == 1 => {
            (b.get("base64")?.as_str()?, b.get("subType")?.as_str()?)
        }
        Value::String(s) if m.len() == 2 => (s.as_str(), m.get("$type")?.as_str()?),
        _ => return None,
    };
    if u8::from_str_radix(subtype, 16).ok()? != 4 {
        return None;
    }
    let bytes: [u8; 16] = BASE64.decode(b64).ok()?.try_into().ok()?;
    Some(uuid_text(&bytes))
}

/// Applies a change stream's `updateDescription` (also Debezium MongoDB's, once its
/// `updatedFields` string is parsed) to `doc`.
pub fn apply_update_description(doc: &mut State, ud: &Map<String, Value>) -> Result<(), String> {
    let disambiguated = match ud.get("disambiguatedPaths") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m),
        Some(other) => {
            return Err(format!(
                "updateDescription.disambiguatedPaths is not a document (found {})",
                describe(other)
            ));
        }
    };
    let parts_of = |field: &str| match disambiguated.and_then(|d| d.get(field)) {
        Some(components) => path::from_components(field, components),
        None => path::split(field),
    };
    match ud.get("truncatedArrays") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for t in items {
                let field = t.get("field").and_then(Value::as_str);
                let size = t.get("newSize").and_then(int_of);
                let (Some(field), Some(size)) = (field, size) else {
                    return Err(format!(
                        "updateDescription.truncatedArrays has an entry without field/newSize: {t}"
                    ));
                };
                path::truncate(doc, &parts_of(field)?, size);
            }
        }
        Some(other) => {
            return Err(format!(
                "updateDescription.truncatedArrays is not an array (found {})",
                describe(other)
            ));
        }
    }
    match ud.get("removedFields") {
        None | Some(Value::Null) => {}
        Some(Value::Array(fields)) => {
            for f in fields {
                let Value::String(f) = f else {
                    return Err(format!(
                        "updateDescription.removedFields has a non-string entry ({})",
                        describe(f)
                    ));
                };
                path::unset(doc, &parts_of(f)?);
            }
        }
        Some(other) => {
            return Err(format!(
                "updateDescription.removedFields is not an array (found {})",
                describe(other)
            ));
        }
    }
    match ud.get("updatedFields") {
        None | Some(Value::Null) => {}
        Some(Value::Object(fields)) => {
            for (f, v) in fields {
                path::set(doc, &parts_of(f)?, v.clone())?;
            }
        }
        Some(other) => {
            return Err(format!(
                "updateDescription.updatedFields is not a document (found {})",
                describe(other)
            ));
        }
    }
    Ok(())
}

/// A non-negative integer, plain or extended JSON (`{"$numberInt": "3"}`).
fn int_of(v: &Value) -> Option<usize> {
    match v {
        Value::Number(n) => n.as_u64().and_then(|n| usize::try_from(n).ok()),
        Value::Object(m) => m
            .get("$numberInt")
            .or_else(|| m.get("$numberLong"))
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok()),
        _ => None,
    }
}

/// Nesting beyond this is refused rather than recursed into (serde_json stops at 128 too).
const MAX_BSON_DEPTH: usize = 100;

/// One raw BSON document as extended JSON, keeping every BSON type:
/// - int32, finite doubles, strings, booleans, null, arrays, documents: plain JSON;
/// - int64: `{"$numberLong": "n"}` (canonical: a plain number would lose the type, and the
///   worked example's `amount_minor` is an int64);
/// - decimal128: `{"$numberDecimal": "..."}`; non-finite doubles: `{"$numberDouble": ..}`;
/// - dates: `{"$date": {"$numberLong": "ms"}}`; ObjectIds `{"$oid": ..}`; timestamps
///   `{"$timestamp": {t, i}}`; UUID binaries `{"$uuid": ..}` (as ingestion reads ids),
///   other binaries `{"$binary": {base64, subType}}`; and so on.
///
/// Recursion is bounded, so no input can exhaust the stack.
pub fn bson_to_extjson(raw: &[u8]) -> Result<Value, String> {
    let doc = RawDocument::from_bytes(raw).map_err(|e| e.to_string())?;
    raw_doc_to_json(doc, 0)
}

fn raw_doc_to_json(doc: &RawDocument, depth: usize) -> Result<Value, String> {
    if depth > MAX_BSON_DEPTH {
        return Err(format!(
            "documents nested deeper than {MAX_BSON_DEPTH} levels"
        ));
    }
    let mut m = Map::new();
    for el in doc {
        let (k, v) = el.map_err(|e| e.to_string())?;
        m.insert(k.as_str().to_owned(), raw_value_to_json(v, depth + 1)?);
    }
    Ok(Value::Object(m))
}

fn raw_array_to_json(arr: &RawArray, depth: usize) -> Result<Value, String> {
    if depth > MAX_BSON_DEPTH {
        return Err(format!(
            "documents nested deeper than {MAX_BSON_DEPTH} levels"
        ));
    }
    arr.into_iter()
        .map(|el| {
            el.map_err(|e| e.to_string())
                .and_then(|v| raw_value_to_json(v, depth + 1))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}

fn raw_value_to_json(v: RawBsonRef<'_>, depth: usize) -> Result<Value, String> {
    Ok(match v {
        RawBsonRef::Double(f) => match serde_json::Number::from_f64(f) {
            Some(n) => Value::Number(n),
            None => {
                let s = if f.is_nan() {
                    "NaN"
                } else if f > 0.0 {
                    "Infinity"
                } else {
                    "-Infinity"
                };
                json!({ "$numberDouble": s })
            }
        },
        RawBsonRef::String(s) => Value::String(s.to_owned()),
        RawBsonRef::Array(a) => raw_array_to_json(a, depth)?,
        RawBsonRef::Document(d) => raw_doc_to_json(d, depth)?,
        RawBsonRef::Boolean(b) => Value::Bool(b),
        RawBsonRef::Null => Value::Null,
        RawBsonRef::RegularExpression(r) => json!({
            "$regularExpression": { "pattern": r.pattern.as_str(), "options": r.options.as_str() }
        }),
        RawBsonRef::JavaScriptCode(c) => json!({ "$code": c }),
        RawBsonRef::JavaScriptCodeWithScope(c) => json!({
            "$code": c.code,
            "$scope": raw_doc_to_json(c.scope, depth)?,
        }),
        RawBsonRef::Int32(i) => Value::from(i),
        RawBsonRef::Int64(i) => json!({ "$numberLong": i.to_string() }),
        RawBsonRef::Timestamp(t) => json!({ "$timestamp": { "t": t.time, "i": t.increment } }),
        RawBsonRef::Binary(b) => match (b.subtype, <[u8; 16]>::try_from(b.bytes)) {
            (BinarySubtype::Uuid, Ok(u)) => json!({ "$uuid": uuid_text(&u) }),
            _ => json!({
                "$binary": {
                    "base64": BASE64.encode(b.bytes),
                    "subType": format!("{:02x}", u8::from(b.subtype)),
                }
            }),
        },
        RawBsonRef::ObjectId(o) => json!({ "$oid": o.to_hex() }),
        RawBsonRef::DateTime(d) => {
            json!({ "$date": { "$numberLong": d.timestamp_millis().to_string() } })
        }
        RawBsonRef::Symbol(s) => json!({ "$symbol": s }),
        RawBsonRef::Decimal128(d) => json!({ "$numberDecimal": d.to_string() }),
        RawBsonRef::Undefined => json!({ "$undefined": true }),
        RawBsonRef::MaxKey => json!({ "$maxKey": 1 }),
        RawBsonRef::MinKey => json!({ "$minKey": 1 }),
        // Deprecated, and its parts are not public in the bson crate.
        RawBsonRef::DbPointer(_) => json!({ "$dbPointer": null }),
    })
}

fn uuid_text(b: &[u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push_str(&format!("{byte:02x}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{Bson, doc, oid::ObjectId};

    fn fold_json(events: &[Value]) -> Result<Option<State>, String> {
        events
            .iter()
            .try_fold(None, |s, e| apply_event(s, e.clone()))
    }

    fn obj(v: Value) -> Option<State> {
        match v {
            Value::Object(m) => Some(m),
            _ => None,
        }
    }

    /// A folded state never holds a rounded number: an id or amount past a double's
    /// precision is kept as its exact text; the rest stay numbers.
    #[test]
    fn folded_numbers_are_never_rounded() {
        let raw = br#"{"_id": 18446744073709551617, "fullDocument": {"amount": 123456789012345678901.10, "fee": 0.10}, "clusterTime": 1}"#;
        let state = apply_json(None, raw).unwrap().unwrap();
        assert_eq!(
            serde_json::to_string(&state).unwrap(),
            r#"{"_id":"18446744073709551617","amount":"123456789012345678901.10","fee":0.1}"#
        );
    }

    /// The Toy example of the Overseer post.
    #[test]
    fn overseer_toy_example() {
        let first = json!({"_id": 1, "fullDocument": {"type": "watergun", "color": "blue"},
            "clusterTime": 1658224073});
        let second = json!({"_id": 1, "updateDescription": {"updatedFields": {"type": "balloon"}},
            "clusterTime": 1658224074});
        assert_eq!(
            fold_json(std::slice::from_ref(&first)).unwrap(),
            obj(json!({"_id": 1, "type": "watergun", "color": "blue"}))
        );
        assert_eq!(
            fold_json(&[first, second]).unwrap(),
            obj(json!({"_id": 1, "type": "balloon", "color": "blue"}))
        );
    }

    #[test]
    fn update_description_in_full() {
        let ins = json!({"operationType": "insert", "documentKey": {"_id": "e"},
            "fullDocument": {"_id": "e", "n": {"$numberLong": "1004"}, "a": {"b": [{"c": 1}, {"c": 2}, {"c": 3}, 4, 5]},
                "tags": ["x", "y", "z"], "gone": 1}});
        let upd = json!({"operationType": "update", "documentKey": {"_id": "e"},
            "updateDescription": {
                "updatedFields": {"a.b.2.c": 30, "a.b.1": {"c": 20}, "new.deep": {"$numberDecimal": "1.10"}, "odd.name": 1},
                "removedFields": ["gone", "a.b.0.c"],
                "truncatedArrays": [{"field": "tags", "newSize": 1}, {"field": "a.b", "newSize": 3}],
                "disambiguatedPaths": {"odd.name": ["odd.name"]}}});
        assert_eq!(
            fold_json(&[ins, upd]).unwrap(),
            obj(json!({"_id": "e", "n": {"$numberLong": "1004"},
                "a": {"b": [{}, {"c": 20}, {"c": 30}]}, "tags": ["x"],
                "new": {"deep": {"$numberDecimal": "1.10"}}, "odd.name": 1}))
        );
    }

    #[test]
    fn update_lookup_replace_delete_reinsert() {
        let ins = json!({"operationType": "insert", "documentKey": {"_id": 7}, "fullDocument": {"_id": 7, "v": 1}});
        let lookup = json!({"operationType": "update", "documentKey": {"_id": 7},
            "updateDescription": {"updatedFields": {"v": 2}}, "fullDocument": {"_id": 7, "v": 2, "w": 9}});
        let rep = json!({"operationType": "replace", "documentKey": {"_id": 7}, "fullDocument": {"v": 3}});
        let del = json!({"operationType": "delete", "documentKey": {"_id": 7}});
        let again = json!({"operationType": "insert", "documentKey": {"_id": 7}, "fullDocument": {"_id": 7, "v": 4}});
        let all = [ins, lookup, rep, del, again];
        let states: Vec<_> = (1..=all.len())
            .map(|n| fold_json(&all[..n]).unwrap())
            .collect();
        assert_eq!(states[1], obj(json!({"_id": 7, "v": 2, "w": 9})));
        assert_eq!(
            states[2],
            obj(json!({"_id": 7, "v": 3})),
            "_id from documentKey"
        );
        assert_eq!(states[3], None);
        assert_eq!(states[4], obj(json!({"_id": 7, "v": 4})));
        // An update of a record whose history starts after its creation: what it wrote.
        let upd = json!({"operationType": "update", "documentKey": {"_id": 8}, "updateDescription": {"updatedFields": {"x": 1}}});
        assert_eq!(fold_json(&[upd]).unwrap(), obj(json!({"_id": 8, "x": 1})));
    }

    #[test]
    fn bad_events_say_why() {
        let e = |v: Value| apply_event(None, v).unwrap_err();
        assert!(e(json!([1])).contains("not a document"));
        assert!(e(json!({"operationType": "drop"})).contains("\"drop\""));
        assert!(e(json!({"operationType": "insert"})).contains("without a fullDocument"));
        assert!(e(json!({"operationType": "update"})).contains("neither updateDescription"));
        assert!(
            e(json!({"operationType": "update", "updateDescription": {"updatedFields": []}}))
                .contains("updatedFields is not a document")
        );
        assert!(
            e(json!({"operationType": "update", "updateDescription": {"removedFields": [1]}}))
                .contains("non-string")
        );
        assert!(e(json!({"fullDocument": "x"})).contains("fullDocument is not a document"));
    }

    #[test]
    fn bson_events_keep_their_types() {
        let id = ObjectId::parse_str("65e1f1c0a1b2c3d4e5f64001").unwrap();
        let ins = doc! {
            "_id": {"_data": "8265E1"},
            "operationType": "insert",
            "ns": {"db": "ledger", "coll": "entries"},
            "documentKey": {"_id": id},
            "fullDocument": {"_id": id, "amount_minor": 50_000_000_i64, "decimals": 8_i32,
                "at": bson::DateTime::from_millis(1_709_294_400_120),
                "price": Bson::Decimal128("12.50".parse().unwrap()), "ratio": 0.5},
        };
        let upd = doc! {
            "operationType": "update",
            "documentKey": {"_id": id},
            "updateDescription": {"updatedFields": {"amount_minor": 7_i64, "legs.1.memo": "x"},
                "removedFields": ["ratio"]},
        };
        let s = apply_bson(None, &ins.to_vec().unwrap()).unwrap();
        let s = apply_bson(s, &upd.to_vec().unwrap()).unwrap();
        assert_eq!(
            s,
            obj(json!({"_id": {"$oid": "65e1f1c0a1b2c3d4e5f64001"},
                "amount_minor": {"$numberLong": "7"}, "decimals": 8,
                "at": {"$date": {"$numberLong": "1709294400120"}},
                "price": {"$numberDecimal": "12.50"},
                "legs": {"1": {"memo": "x"}}}))
        );
        assert!(
            apply_bson(None, b"\x05\x00\x00")
                .unwrap_err()
                .starts_with("invalid BSON")
        );
    }
}
