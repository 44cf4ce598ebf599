//! PostgreSQL logical replication (`pgoutput`): row images.
//!
//! Each update holds the `I`/`U`/`D` message as `raw` and its table's Relation message as
//! `context` ([`crate::pgoutput::decode_change`] reads the pair).
//! - Insert, update: the new tuple is the state. A [`Cell::UnchangedToast`] column (a large
//!   value the update did not touch, so the walsender did not send it) keeps its value from
//!   the state before; failing that from a full old tuple (`O`, REPLICA IDENTITY FULL);
//!   failing that it is left out, since its value is unknown.
//! - Update with an old tuple (`K` or `O`) in which a key column holds the record's own id
//!   and the new tuple something else: a primary-key change; folded as the old id's record
//!   it ends it (`None`). Key columns are the Relation's key flags (every column if none is
//!   flagged).
//! - Delete: the record ends (`None`).
//!
//! Text values become typed JSON by column type OID: `int2`/`int4`/`int8` numbers, `bool`
//! true/false, `float4`/`float8` numbers (`NaN` and infinities, which JSON has no number for,
//! stay strings), `json`/`jsonb` the parsed JSON, `numeric` the exact decimal string (never a
//! float), everything else (text, varchar, timestamps, uuid, arrays, ...) strings. SQL NULL
//! is `null`.

use serde_json::Value;

use super::State;
use crate::pgoutput::{ChangeOp, Column, OldTuple, RowChange, decode_change};
use crate::update::UpdateRecord;

pub use crate::pgoutput::Cell;

/// `pg_type` OIDs the builder types.
pub mod oid {
    pub const BOOL: u32 = 16;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const JSON: u32 = 114;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const NUMERIC: u32 = 1700;
    pub const JSONB: u32 = 3802;
}

/// Applies one pgoutput row change.
pub fn apply(state: Option<State>, rec: &UpdateRecord) -> Result<Option<State>, String> {
    let change = decode_change(&rec.raw, &rec.context).map_err(|e| e.0)?;
    match change.op {
        ChangeOp::Delete => Ok(None),
        ChangeOp::Insert | ChangeOp::Update => {
            if leaves_record(&change, &rec.record_id) {
                return Ok(None);
            }
            let new = change
                .new
                .as_deref()
                .ok_or("insert or update without a new tuple")?;
            let full_old = match change.old_kind {
                Some(OldTuple::Full) => change.old.as_deref(),
                _ => None,
            };
            let mut out = State::new();
            for (i, (col, cell)) in change.columns.iter().zip(new).enumerate() {
                let value = match cell {
                    Cell::UnchangedToast => {
                        let known = state.as_ref().and_then(|s| s.get(&col.name)).cloned();
                        let old = full_old.and_then(|o| o.get(i));
                        match (known, old) {
                            (Some(v), _) => v,
                            (None, Some(Cell::Text(t))) => typed(col, t)?,
                            (None, Some(Cell::Null)) => Value::Null,
                            (None, _) => continue,
                        }
                    }
                    Cell::Null => Value::Null,
                    Cell::Text(t) => typed(col, t)?,
                };
                out.insert(col.name.clone(), value);
            }
            Ok(Some(out))
        }
    }
}

/// Whether an update moves the record `record_id` away (a primary-key change folded as the
/// old id): a key column holds `record_id` in the old tuple and another value in the new.
fn leaves_record(change: &RowChange, record_id: &str) -> bool {
    let (Some(old), Some(new)) = (change.old.as_deref(), change.new.as_deref()) else {
        return false;
    };
    if record_id.is_empty() {
        return false;
    }
    let any_key = change.columns.iter().any(|c| c.key);
    change
        .columns
        .iter()
        .zip(old.iter().zip(new))
        .filter(|(c, _)| c.key || !any_key)
        .any(|(_, (o, n))| {
            matches!(o, Cell::Text(t) if t == record_id)
                && !matches!(n, Cell::UnchangedToast)
                && o != n
        })
}

/// A column's text value as typed JSON.
pub fn typed(col: &Column, text: &str) -> Result<Value, String> {
    let bad = |what: &str| {
        format!(
            "column {:?} (type oid {}): {text:?} is not {what}",
            col.name, col.type_oid
        )
    };
    Ok(match col.type_oid {
        oid::INT2 | oid::INT4 | oid::INT8 => {
            Value::from(text.parse::<i64>().map_err(|_| bad("an integer"))?)
        }
        oid::BOOL => match text {
            "t" => Value::Bool(true),
            "f" => Value::Bool(false),
            _ => return Err(bad("a boolean (t or f)")),
        },
        oid::FLOAT4 | oid::FLOAT8 => {
            let f = text.parse::<f64>().map_err(|_| bad("a float"))?;
            match serde_json::Number::from_f64(f) {
                Some(n) => Value::Number(n),
                None => Value::String(text.to_owned()),
            }
        }
        oid::JSON | oid::JSONB => super::exact::parse_str(text).map_err(|_| bad("JSON"))?,
        // numeric: the exact decimal as written; everything else as text.
        _ => Value::String(text.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn col(name: &str, type_oid: u32) -> Column {
        Column {
            name: name.into(),
            type_oid,
            key: false,
        }
    }

    #[test]
    fn text_values_are_typed_by_oid() {
        let cases = [
            (oid::INT2, "-7", json!(-7)),
            (oid::INT4, "42", json!(42)),
            (
                oid::INT8,
                "9223372036854775807",
                json!(9_223_372_036_854_775_807_i64),
            ),
            (oid::BOOL, "t", json!(true)),
            (oid::BOOL, "f", json!(false)),
            (oid::NUMERIC, "12.50", json!("12.50")),
            (
                oid::NUMERIC,
                "0.10000000000000000000001",
                json!("0.10000000000000000000001"),
            ),
            (oid::FLOAT8, "1.5", json!(1.5)),
            (oid::FLOAT4, "NaN", json!("NaN")),
            (oid::FLOAT8, "-Infinity", json!("-Infinity")),
            (oid::JSONB, r#"{"a": [1, "x"]}"#, json!({"a": [1, "x"]})),
            (oid::JSON, "3", json!(3)),
            (25, "hello", json!("hello")),
            (
                1184,
                "2024-03-01 12:00:00+00",
                json!("2024-03-01 12:00:00+00"),
            ),
            (
                2950,
                "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
                json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            ),
        ];
        for (oid, text, want) in cases {
            assert_eq!(
                typed(&col("c", oid), text).unwrap(),
                want,
                "oid {oid} {text}"
            );
        }
        for (oid, text) in [
            (oid::INT4, "1.5"),
            (oid::BOOL, "true"),
            (oid::JSONB, "{"),
            (oid::FLOAT8, "x"),
        ] {
            let e = typed(&col("c", oid), text).unwrap_err();
            assert!(e.contains("column \"c\""), "{e}");
        }
    }
}
