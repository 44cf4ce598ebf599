//! Views: records serialised into protobuf messages, driven by their descriptors.
//!
//! - [`registry`]: which messages are views, of which models, joined how (read from the
//!   options of `views.proto`).
//! - [`map`]: a record's state into a view message, field by field, by descriptor.
//!
//! The DAL ([`crate::reader::Dal`]) builds views as of a time.

pub mod map;
pub mod registry;

pub use registry::{ViewDef, ViewKind, Views};

use prost_reflect::DynamicMessage;
use serde_json::Value;

/// A digest of a view's content: `sha256:` and the hex SHA-256 of its canonical JSON
/// (proto3 JSON names, defaults left out, object keys sorted at every level, so map
/// fields hash the same in any order). A failing verdict carries it beside its evidence;
/// `overseer view --as-of` prints the same digest for the view it rebuilds, so an auditor
/// can tell the view reproduced is the view the check saw. `None` if the view has no JSON
/// form (an `Any` of an unknown type, a timestamp out of range).
pub fn digest(view: &DynamicMessage) -> Option<String> {
    use sha2::Digest;
    let json = serde_json::to_value(view).ok()?;
    let mut canonical = Vec::new();
    write_canonical(&json, &mut canonical);
    let hash = sha2::Sha256::digest(&canonical);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in hash {
        use std::fmt::Write;
        let _ = write!(out, "{b:02x}");
    }
    Some(out)
}

/// JSON with every object's keys in sorted order (whatever order the map iterates in).
fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort_unstable();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(&Value::String(k.clone()), out);
                out.push(b':');
                write_canonical(&m[k], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => out.extend_from_slice(scalar.to_string().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_canonical_and_content_bound() {
        let views = Views::builtin();
        let def = views.get("Toy").unwrap();
        let toy = |color: &str| {
            let mut m = DynamicMessage::new(def.message.clone());
            m.set_field_by_name("id", prost_reflect::Value::String("t1".into()));
            m.set_field_by_name("color", prost_reflect::Value::String(color.into()));
            m
        };
        let d = digest(&toy("blue")).unwrap();
        assert!(d.starts_with("sha256:") && d.len() == 7 + 64, "{d}");
        assert_eq!(Some(&d), digest(&toy("blue")).as_ref());
        assert_ne!(Some(d), digest(&toy("red")));
        let mut a = Vec::new();
        write_canonical(
            &serde_json::json!({"b": {"y": 1, "x": [2, {"d": 3, "c": 4}]}, "a": "s"}),
            &mut a,
        );
        assert_eq!(
            String::from_utf8(a).unwrap(),
            r#"{"a":"s","b":{"x":[2,{"c":4,"d":3}],"y":1}}"#
        );
    }
}
