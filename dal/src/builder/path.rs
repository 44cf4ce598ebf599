//! MongoDB dotted field paths (`a.b.2.c`) applied to a document, as MongoDB applies them.
//!
//! A path component indexes an array when the value there is an array (and the component
//! is a number), and names a field otherwise, so `a.0` is a field `"0"` of a document `a`.
//! Setting through missing components creates embedded documents (MongoDB's `$set`);
//! setting past the end of an array pads it with nulls. Unsetting a field removes it;
//! unsetting an array element sets it to null (MongoDB's `$unset` keeps array positions);
//! unsetting a path that does not exist does nothing. Setting through a scalar is an error,
//! as it is in MongoDB.
//!
//! Bounds keep every input harmless: at most [`MAX_DEPTH`] components (MongoDB's nesting
//! limit) and at most [`MAX_PAD`] nulls of padding per set.

use serde_json::{Map, Value};

use super::describe;

/// MongoDB refuses documents nested deeper than 100 levels.
pub const MAX_DEPTH: usize = 100;

/// Padding an array to an index this far past its end is refused rather than allocated.
pub const MAX_PAD: usize = 100_000;

/// The components of a dotted path.
pub fn split(path: &str) -> Result<Vec<String>, String> {
    let parts: Vec<String> = path.split('.').map(str::to_owned).collect();
    check(path, &parts)?;
    Ok(parts)
}

/// Components from a change stream's `disambiguatedPaths` entry (strings name fields,
/// integers index arrays); for field names that themselves contain dots.
pub fn from_components(path: &str, v: &Value) -> Result<Vec<String>, String> {
    let Value::Array(items) = v else {
        return Err(format!(
            "disambiguatedPaths.{path} is not an array (found {})",
            describe(v)
        ));
    };
    let parts = items
        .iter()
        .map(|c| match c {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) if n.is_u64() => Ok(n.to_string()),
            other => Err(format!(
                "disambiguatedPaths.{path} has a component that is neither a field name nor an index ({})",
                describe(other)
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    check(path, &parts)?;
    Ok(parts)
}

fn check(path: &str, parts: &[String]) -> Result<(), String> {
    if parts.is_empty() || parts.iter().any(String::is_empty) {
        return Err(format!("field path {path:?} has an empty component"));
    }
    if parts.len() > MAX_DEPTH {
        return Err(format!(
            "field path {path:?} is deeper than {MAX_DEPTH} levels"
        ));
    }
    Ok(())
}

/// Sets `parts` in `doc` to `value`.
pub fn set(doc: &mut Map<String, Value>, parts: &[String], value: Value) -> Result<(), String> {
    set_in_map(doc, parts, value, parts)
}

fn set_in_map(
    m: &mut Map<String, Value>,
    parts: &[String],
    value: Value,
    full: &[String],
) -> Result<(), String> {
    let [first, rest @ ..] = parts else {
        return Err("empty field path".into());
    };
    if rest.is_empty() {
        m.insert(first.clone(), value);
        return Ok(());
    }
    let child = m
        .entry(first.clone())
        .or_insert_with(|| Value::Object(Map::new()));
    set_in_value(child, rest, value, full)
}

fn set_in_value(
    cur: &mut Value,
    parts: &[String],
    value: Value,
    full: &[String],
) -> Result<(), String> {
    match cur {
        Value::Object(m) => set_in_map(m, parts, value, full),
        Value::Array(a) => {
            let [first, rest @ ..] = parts else {
                return Err("empty field path".into());
            };
            let i = index(first, full)?;
            if i >= a.len().saturating_add(MAX_PAD) {
                return Err(format!(
                    "cannot set {}: index {i} is more than {MAX_PAD} past the end of an array of {}",
                    full.join("."),
                    a.len()
                ));
            }
            if a.len() <= i {
                a.resize(i + 1, Value::Null);
            }
            let Some(slot) = a.get_mut(i) else {
                return Err(format!(
                    "cannot set {}: index {i} out of range",
                    full.join(".")
                ));
            };
            if rest.is_empty() {
                *slot = value;
                Ok(())
            } else {
                if slot.is_null() {
                    *slot = Value::Object(Map::new());
                }
                set_in_value(slot, rest, value, full)
            }
        }
        other => Err(format!(
            "cannot set {}: the value at {:?} is {}, not a document or an array",
            full.join("."),
            parts.first().map(String::as_str).unwrap_or_default(),
            describe(other)
        )),
    }
}

fn index(part: &str, full: &[String]) -> Result<usize, String> {
    if !part.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "cannot set {}: {part:?} is not an index into the array there",
            full.join(".")
        ));
    }
    part.parse::<usize>()
        .map_err(|_| format!("cannot set {}: index {part} is too large", full.join(".")))
}

/// Removes `parts` from `doc`; array elements become null. A missing path is no change.
pub fn unset(doc: &mut Map<String, Value>, parts: &[String]) {
    let [first, rest @ ..] = parts else {
        return;
    };
    if rest.is_empty() {
        doc.remove(first);
        return;
    }
    let mut cur = match doc.get_mut(first) {
        Some(v) => v,
        None => return,
    };
    let Some((last, middle)) = rest.split_last() else {
        return;
    };
    for p in middle {
        cur = match child_mut(cur, p) {
            Some(c) => c,
            None => return,
        };
    }
    match cur {
        Value::Object(m) => {
            m.remove(last);
        }
        Value::Array(a) => {
            if let Some(slot) = last.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                *slot = Value::Null;
            }
        }
        _ => {}
    }
}

/// The value at a dotted path (`a.b.2.c`: fields of documents, indexes of arrays), if
/// there is one. Read-only lookups (views, joins) use it.
pub fn get<'a>(doc: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut cur = doc.get(parts.next()?)?;
    for p in parts {
        cur = match cur {
            Value::Object(m) => m.get(p)?,
            Value::Array(a) => a.get(p.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// The value at `parts`, mutably, if there is one.
pub fn get_mut<'a>(doc: &'a mut Map<String, Value>, parts: &[String]) -> Option<&'a mut Value> {
    let [first, rest @ ..] = parts else {
        return None;
    };
    let mut cur = doc.get_mut(first)?;
    for p in rest {
        cur = child_mut(cur, p)?;
    }
    Some(cur)
}

fn child_mut<'a>(v: &'a mut Value, part: &str) -> Option<&'a mut Value> {
    match v {
        Value::Object(m) => m.get_mut(part),
        Value::Array(a) => part.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
        _ => None,
    }
}

/// Truncates the array at `parts` to `len` elements (change streams' `truncatedArrays`).
pub fn truncate(doc: &mut Map<String, Value>, parts: &[String], len: usize) {
    if let Some(Value::Array(a)) = get_mut(doc, parts) {
        a.truncate(len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    fn p(s: &str) -> Vec<String> {
        split(s).unwrap()
    }

    #[test]
    fn set_into_documents_and_arrays() {
        let mut d = doc(json!({"a": {"b": [{"c": 1}, {"c": 2}, {"c": 3}]}, "x": 1}));
        set(&mut d, &p("a.b.2.c"), json!(30)).unwrap();
        set(&mut d, &p("a.b.0"), json!("first")).unwrap();
        set(&mut d, &p("a.new.deep"), json!(true)).unwrap();
        set(&mut d, &p("n.0"), json!("field zero")).unwrap();
        assert_eq!(
            Value::Object(d.clone()),
            json!({"a": {"b": ["first", {"c": 2}, {"c": 30}], "new": {"deep": true}},
                "x": 1, "n": {"0": "field zero"}})
        );
        // Past the end pads with nulls, creating a document where a path goes on.
        set(&mut d, &p("a.b.4.z"), json!(5)).unwrap();
        assert_eq!(
            d["a"]["b"],
            json!(["first", {"c": 2}, {"c": 30}, null, {"z": 5}])
        );
        // Through a scalar, or a field name into an array: MongoDB refuses too.
        assert!(
            set(&mut d, &p("x.y"), json!(1))
                .unwrap_err()
                .contains("number 1")
        );
        assert!(
            set(&mut d, &p("a.b.k"), json!(1))
                .unwrap_err()
                .contains("not an index")
        );
        assert!(set(&mut d, &p("a.b.99999999"), json!(1)).is_err());
        assert!(set(&mut d, &p("a.b.99999999999999999999999"), json!(1)).is_err());
        assert!(split("a..b").is_err());
        assert!(split(&"a.".repeat(200)).is_err());
    }

    #[test]
    fn unset_and_truncate() {
        let mut d = doc(json!({"a": {"b": [1, 2, 3], "c": 1}, "x": 1}));
        unset(&mut d, &p("a.c"));
        unset(&mut d, &p("a.b.1"));
        unset(&mut d, &p("missing.path"));
        unset(&mut d, &p("x.y"));
        assert_eq!(
            Value::Object(d.clone()),
            json!({"a": {"b": [1, null, 3]}, "x": 1})
        );
        truncate(&mut d, &p("a.b"), 1);
        unset(&mut d, &p("x"));
        assert_eq!(Value::Object(d), json!({"a": {"b": [1]}}));
    }

    #[test]
    fn disambiguated_components() {
        let parts = from_components("a.b.0", &json!(["a.b", 0])).unwrap();
        assert_eq!(parts, vec!["a.b".to_string(), "0".to_string()]);
        assert!(from_components("x", &json!("x")).is_err());
        assert!(from_components("x", &json!([{"a": 1}])).is_err());
    }
}
