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
//! op is inferred as ingestion does: `updateDescription` → update, `fullDocument` → insert.
//! A state always has its `_id`: from the document, else `documentKey._id`, else a top-level
//! `_id` that is not a resume token (`{"_data": ..}`; the Toy example's `_id`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bson::RawDocument;
use bson::raw::{RawArray, RawBsonRef};
use bson::spec::BinarySubtype;
use serde_json::{Map, Value, json};

use super::{State, describe, parse_json, path};

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
    let op = operation(&ev)?;
    let id = document_id(&ev)?;
    let full = optional_doc(&mut ev, "fullDocument")?;
    let mut doc = match (op, full) {
        ("insert" | "replace", Some(full)) => full,
        ("insert" | "replace", None) => {
            return Err(format!("{op} event without a fullDocument"));
        }
        ("update", Some(full)) => full,
        ("update", None) => {
            let ud = optional_doc(&mut ev, "updateDescription")?.ok_or_else(|| {
                "update event with neither updateDescription nor fullDocument".to_string()
            })?;
            let mut doc = state.unwrap_or_default();
            apply_update_description(&mut doc, &ud)?;
            doc
        }
        ("delete", _) => return Ok(None),
        (other, _) => {
            return Err(format!(
                "operationType {other:?} is not a change to one document"
            ));
        }
    };
    if let (false, Some(id)) = (doc.contains_key("_id"), id) {
        doc.insert("_id".into(), id);
    }
    Ok(Some(doc))
}

/// `operationType`, inferred for hand-written events that have none.
fn operation(ev: &Map<String, Value>) -> Result<&'static str, String> {
    match ev.get("operationType") {
        Some(Value::String(t)) => match t.as_str() {
            "insert" => Ok("insert"),
            "update" => Ok("update"),
            "replace" => Ok("replace"),
            "delete" => Ok("delete"),
            other => Err(format!(
                "operationType {other:?} is not a change to one document"
            )),
        },
        None | Some(Value::Null) => {
            let has = |k: &str| ev.get(k).is_some_and(|v| !v.is_null());
            if has("updateDescription") {
                Ok("update")
            } else if has("fullDocument") {
                Ok("insert")
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

/// The document's `_id` as the event names it: `documentKey._id`, else a top-level `_id`
/// that is not a resume token.
fn document_id(ev: &Map<String, Value>) -> Result<Option<Value>, String> {
    match ev.get("documentKey") {
        None | Some(Value::Null) => {}
        Some(Value::Object(k)) => {
            if let Some(id) = k.get("_id") {
                return Ok(Some(id.clone()));
            }
        }
        Some(other) => {
            return Err(format!(
                "documentKey is not a document (found {})",
                describe(other)
            ));
        }
    }
    Ok(match ev.get("_id") {
        None | Some(Value::Null) => None,
        Some(Value::Object(t)) if t.contains_key("_data") => None,
        Some(id) => Some(id.clone()),
    })
}

/// Takes the document under `key`: `None` if absent or null, an error if not a document.
fn optional_doc(ev: &mut Map<String, Value>, key: &str) -> Result<Option<State>, String> {
    match ev.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(other) => Err(format!(
            "{key} is not a document (found {})",
            describe(&other)
        )),
    }
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
