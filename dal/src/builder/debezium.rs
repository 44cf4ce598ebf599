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

use serde_json::{Map, Value};

use super::mongo::apply_update_description;
use super::{State, describe, parse_json, path, scalar_text};
use crate::update::UpdateRecord;

/// Debezium PostgreSQL's placeholder for a value it did not receive
/// (`unavailable.value.placeholder`, default).
pub const UNAVAILABLE: &str = "__debezium_unavailable_value";

/// The same placeholder in a binary (`bytea`) column, base64 as the JSON converter writes it.
const UNAVAILABLE_BASE64: &str = "X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ==";

/// The payload of an envelope and its op letter.
fn envelope(raw: &[u8]) -> Result<(Map<String, Value>, String), String> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Err("tombstone (empty value): not a change".into());
    }
    let mut payload = match parse_json(raw)? {
        Value::Object(m) => m,
        Value::Null => return Err("tombstone (null value): not a change".into()),
        other => {
            return Err(format!(
                "not a Debezium envelope: not a JSON object (found {})",
                describe(&other)
            ));
        }
    };
    if !payload.contains_key("op") && payload.contains_key("payload") {
        payload = match payload.remove("payload") {
            Some(Value::Object(m)) => m,
            Some(Value::Null) | None => {
                return Err("tombstone (null payload): not a change".into());
            }
            Some(other) => {
                return Err(format!(
                    "not a Debezium envelope: `payload` is not a JSON object (found {})",
                    describe(&other)
                ));
            }
        };
    }
    let op = match payload.get("op") {
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) => return Err("not a Debezium envelope: no `op`".into()),
        Some(other) => {
            return Err(format!("`op` is not a string (found {})", describe(other)));
        }
    };
    Ok((payload, op))
}

fn not_a_record_change(op: &str) -> String {
    match op {
        "t" => "truncate event (op \"t\"): not a change to one record".into(),
        "m" => "logical decoding message (op \"m\"): not a change to a record".into(),
        other => format!("unknown op {other:?}"),
    }
}

/// Applies one Debezium PostgreSQL envelope.
pub fn apply_postgres(state: Option<State>, rec: &UpdateRecord) -> Result<Option<State>, String> {
    let (payload, op) = envelope(&rec.raw)?;
    let row = |name: &str| -> Result<Option<&Map<String, Value>>, String> {
        match payload.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(other) => Err(format!("`{name}` is not a row (found {})", describe(other))),
        }
    };
    match op.as_str() {
        "c" | "r" | "u" => {
            let after = row("after")?.ok_or_else(|| {
                format!("no row image: `after` is missing or null in an op {op:?} event")
            })?;
            let before = row("before")?;
            if op == "u"
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
        "d" => Ok(None),
        other => Err(not_a_record_change(other)),
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

/// The key columns from the Kafka key (`{"id": ..}` or `{schema, payload}`); empty if none.
fn key_columns(key: &[u8]) -> Vec<String> {
    let Ok(Value::Object(mut m)) = serde_json::from_slice::<Value>(key) else {
        return Vec::new();
    };
    if m.contains_key("schema")
        && let Some(Value::Object(p)) = m.remove("payload")
    {
        m = p;
    }
    m.keys().cloned().collect()
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
    let (payload, op) = envelope(raw)?;
    match op.as_str() {
        "c" | "r" => ext_json_doc(&payload, "after")?.map(Some).ok_or_else(|| {
            format!("no document: `after` is missing or null in an op {op:?} event")
        }),
        "u" => {
            if let Some(after) = ext_json_doc(&payload, "after")? {
                return Ok(Some(after));
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
                        ud.insert("updatedFields".into(), Value::Object(fields));
                    }
                    apply_update_description(&mut doc, &ud)?;
                }
                (Some(other), _) if !other.is_null() => {
                    return Err(format!(
                        "updateDescription is not a document (found {})",
                        describe(other)
                    ));
                }
                (_, Some(patch)) => apply_patch(&mut doc, patch)?,
                _ => {
                    return Err(
                        "update with neither `after`, `updateDescription` nor `patch`".into(),
                    );
                }
            }
            if !doc.contains_key("_id")
                && let Some(id) = filter.and_then(|mut f| f.remove("_id"))
            {
                doc.insert("_id".into(), id);
            }
            Ok(Some(doc))
        }
        "d" => Ok(None),
        other => Err(not_a_record_change(other)),
    }
}

/// A field holding a document as a string of extended JSON (or an object already);
/// `Ok(None)` if absent or null.
fn ext_json_doc(obj: &Map<String, Value>, key: &str) -> Result<Option<State>, String> {
    let parsed = match obj.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => serde_json::from_str::<Value>(s)
            .map_err(|e| format!("`{key}` is not valid extended JSON: {e}"))?,
        Some(Value::Object(m)) => return Ok(Some(m.clone())),
        Some(other) => {
            return Err(format!(
                "`{key}` is not a string of extended JSON (found {})",
                describe(other)
            ));
        }
    };
    match parsed {
        Value::Object(m) => Ok(Some(m)),
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
