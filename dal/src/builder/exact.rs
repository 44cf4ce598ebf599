//! JSON numbers that a 64-bit integer or a double cannot hold, kept as their exact text.
//!
//! serde_json reads an integer past ±2^64 or a decimal with more significant digits than a
//! double carries as the nearest `f64`: ids `18446744073709551616` and
//! `18446744073709551617` would both become `1.8446744073709552e19`, one record. Its
//! `arbitrary_precision` feature would keep the text, but the feature is global to a build:
//! every crate linked with this one (a team's check crate too) would then read numbers
//! through `#[serde(untagged)]`, `#[serde(tag = ..)]` and `#[serde(flatten)]` types as
//! maps, and fail.
//!
//! So [`parse`] reads such a number as a JSON **string of its exact text**: an id or a
//! reference keeps its identity, and an amount past a double's precision is not silently
//! rounded (a check sees a string, as it does for a BSON `$numberDecimal`). A number a
//! double holds exactly in value (`1.10` is `1.1`, `1e3` is `1000.0`) stays a number.
//!
//! Cost: serde_json's parse into a `Value`, through a visitor of our own that notes
//! whether some number was read as a double (every decimal, and every integer past 64
//! bits); only a document holding one gets a second, string-aware pass over its bytes, and
//! only one holding a lossy number is parsed again, rewritten. Measured by
//! `cargo bench -p overseer-benches --bench ingest -- json_parse` (BENCHMARKS.md).

use std::cell::Cell;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Parses `raw` as JSON, numbers that would lose information read as strings of their
/// exact text (module docs). Errors are serde_json's, positions those of `raw`.
pub fn parse(raw: &[u8]) -> serde_json::Result<Value> {
    let saw_double = Cell::new(false);
    let mut de = serde_json::Deserializer::from_slice(raw);
    let value = Noting(&saw_double).deserialize(&mut de)?;
    de.end()?;
    if !saw_double.get() {
        return Ok(value);
    }
    match quote_lossy_numbers(raw) {
        Some(quoted) => serde_json::from_slice(&quoted),
        None => Ok(value),
    }
}

/// [`parse`] of a string.
pub fn parse_str(text: &str) -> serde_json::Result<Value> {
    parse(text.as_bytes())
}

/// Builds a [`Value`] as serde_json's own visitor does, noting whether a number was read
/// as a double.
#[derive(Clone, Copy)]
struct Noting<'a>(&'a Cell<bool>);

impl<'de> DeserializeSeed<'de> for Noting<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Noting<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E>(self, i: i64) -> Result<Value, E> {
        Ok(Value::Number(i.into()))
    }

    fn visit_u64<E>(self, u: u64) -> Result<Value, E> {
        Ok(Value::Number(u.into()))
    }

    fn visit_f64<E>(self, f: f64) -> Result<Value, E> {
        self.0.set(true);
        Ok(Number::from_f64(f).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut m = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(self)?;
            m.insert(key, value);
        }
        Ok(Value::Object(m))
    }
}

/// `raw` (valid JSON) with every lossy number token outside strings put in quotes; `None`
/// if it has none.
fn quote_lossy_numbers(raw: &[u8]) -> Option<Vec<u8>> {
    let mut lossy: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    let mut outside_from = 0;
    while i < raw.len() {
        if raw[i] == b'"' {
            lossy_tokens(raw, outside_from, i, &mut lossy);
            // To the closing quote, over escapes.
            i += 1;
            while i < raw.len() && raw[i] != b'"' {
                i += if raw[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            outside_from = i;
        } else {
            i += 1;
        }
    }
    lossy_tokens(raw, outside_from.min(raw.len()), raw.len(), &mut lossy);
    if lossy.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(raw.len() + 2 * lossy.len());
    let mut copied = 0;
    for (start, end) in lossy {
        out.extend_from_slice(&raw[copied..start]);
        out.push(b'"');
        out.extend_from_slice(&raw[start..end]);
        out.push(b'"');
        copied = end;
    }
    out.extend_from_slice(&raw[copied..]);
    Some(out)
}

/// Appends the ranges of the lossy number tokens in `raw[from..to]` (no string inside).
fn lossy_tokens(raw: &[u8], from: usize, to: usize, out: &mut Vec<(usize, usize)>) {
    let mut i = from;
    while i < to {
        if matches!(raw[i], b'-' | b'0'..=b'9') {
            let start = i;
            i += 1;
            while i < to && matches!(raw[i], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-') {
                i += 1;
            }
            if is_lossy(&raw[start..i]) {
                out.push((start, i));
            }
        } else {
            i += 1;
        }
    }
}

/// Whether a JSON number token would lose information as serde_json reads it: an integer
/// outside `i64` and `u64`, or a decimal whose value the nearest double does not equal
/// digit for digit. Malformed tokens are not (serde_json reports them).
fn is_lossy(token: &[u8]) -> bool {
    let mantissa = match token.iter().position(|b| matches!(b, b'e' | b'E')) {
        Some(at) => &token[..at],
        None => token,
    };
    let digits = mantissa.iter().filter(|b| b.is_ascii_digit()).count();
    let integer = mantissa.len() == token.len() && !mantissa.contains(&b'.');
    // The common case, without parsing: an integer of up to 18 digits fits an i64, and a
    // double holds any 15 significant digits (DBL_DIG).
    if (integer && digits <= 18) || (!integer && digits <= 15) {
        return false;
    }
    let Ok(text) = std::str::from_utf8(token) else {
        return false;
    };
    if integer {
        return text.parse::<i64>().is_err() && text.parse::<u64>().is_err();
    }
    let Some(value) = Decimal::parse(token) else {
        return false;
    };
    if value.digits.len() <= 15 {
        return false;
    }
    match text.parse::<f64>() {
        // Out of a double's range: serde_json refuses it, as it should.
        Ok(f) if f.is_finite() => Decimal::parse(format!("{f:e}").as_bytes()) != Some(value),
        _ => false,
    }
}

/// A decimal number as sign, significant digits (no leading or trailing zeros) and the
/// power of ten of the first digit's place: `-0.0120e3` is (true, "12", 1).
#[derive(Debug, PartialEq, Eq)]
struct Decimal {
    negative: bool,
    digits: Vec<u8>,
    exponent: i64,
}

impl Decimal {
    fn parse(token: &[u8]) -> Option<Decimal> {
        let (negative, rest) = match token.split_first()? {
            (b'-', rest) => (true, rest),
            _ => (false, token),
        };
        let (mantissa, exp) = match rest.iter().position(|b| matches!(b, b'e' | b'E')) {
            Some(at) => {
                let e = std::str::from_utf8(&rest[at + 1..]).ok()?;
                let e = e.strip_prefix('+').unwrap_or(e);
                (&rest[..at], e.parse::<i64>().ok()?)
            }
            None => (rest, 0),
        };
        let (int, frac) = match mantissa.iter().position(|b| *b == b'.') {
            Some(at) => (&mantissa[..at], &mantissa[at + 1..]),
            None => (mantissa, &[][..]),
        };
        if int.is_empty() || !int.iter().chain(frac).all(u8::is_ascii_digit) {
            return None;
        }
        let all: Vec<u8> = int.iter().chain(frac).copied().collect();
        let lead = all.iter().take_while(|d| **d == b'0').count();
        let digits: Vec<u8> = all[lead..].to_vec();
        let trail = digits.iter().rev().take_while(|d| **d == b'0').count();
        let digits = digits[..digits.len() - trail].to_vec();
        if digits.is_empty() {
            return Some(Decimal {
                negative: false,
                digits,
                exponent: 0,
            });
        }
        let exponent = int.len() as i64 - lead as i64 - 1 + exp;
        Some(Decimal {
            negative,
            digits,
            exponent,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lossy_numbers_become_their_text_and_the_rest_stay_numbers() {
        let raw = br#"{"a": 18446744073709551617, "b": -9223372036854775809, "c": 18446744073709551615,
            "d": -9223372036854775808, "e": 12345678901234567.1, "f": 1.10, "g": 1e3,
            "h": 0.1, "i": 1658224073000000, "j": 1658224073000000000, "k": 1234567890123456789012e-5,
            "s": "18446744073709551617 in a string", "t": [123456789012345678901, 2.5],
            "u": 9007199254740993.0, "v": 0.30000000000000004}"#;
        let v = parse(raw).unwrap();
        assert_eq!(
            v,
            json!({"a": "18446744073709551617", "b": "-9223372036854775809",
                "c": 18446744073709551615u64, "d": i64::MIN, "e": "12345678901234567.1",
                "f": 1.1, "g": 1000.0, "h": 0.1, "i": 1658224073000000i64,
                "j": 1658224073000000000i64, "k": "1234567890123456789012e-5",
                "s": "18446744073709551617 in a string",
                "t": ["123456789012345678901", 2.5],
                // 2^53 + 1 has no double; 0.1 + 0.2 is one exactly.
                "u": "9007199254740993.0", "v": 0.30000000000000004})
        );
    }

    #[test]
    fn errors_point_into_the_original_text() {
        let raw = br#"{"a": 18446744073709551617, "b": }"#;
        let e = parse(raw).unwrap_err();
        let plain = serde_json::from_slice::<Value>(raw).unwrap_err();
        assert_eq!((e.line(), e.column()), (plain.line(), plain.column()));
    }

    #[test]
    fn escaped_quotes_do_not_end_a_string() {
        let raw = br#"{"a": "x\" 18446744073709551617 \\", "b": 18446744073709551617}"#;
        assert_eq!(
            parse(raw).unwrap(),
            json!({"a": "x\" 18446744073709551617 \\", "b": "18446744073709551617"})
        );
    }

    /// Hostile bytes never panic, and whatever serde_json reads, `parse` reads too, equal
    /// to it except where a number was lossy (then a string that reads back as the same
    /// double). Mutations of a document full of edge cases, from a fixed seed.
    #[test]
    fn arbitrary_bytes_never_panic_and_agree_with_serde_json() {
        let base: &[u8] = br#"{"a": [1, -0, 18446744073709551617, 1.5e3, "x\"\\", {"b": 0.30000000000000004}], "c": 12345678901234567.1, "d": "\u00e9 18446744073709551617"}"#;
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let alphabet = b"0123456789-+.eE\"\\{}[]:, x";
        for _ in 0..20_000 {
            let mut doc = base.to_vec();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() as usize) % (doc.len() + 1);
                match next() % 3 {
                    0 if at < doc.len() => {
                        doc.remove(at);
                    }
                    1 => doc.insert(at, alphabet[(next() as usize) % alphabet.len()]),
                    _ => doc.truncate(at),
                }
            }
            let plain = serde_json::from_slice::<Value>(&doc);
            let exact = parse(&doc);
            match (plain, exact) {
                (Ok(p), Ok(e)) => assert!(agree(&p, &e), "{}", String::from_utf8_lossy(&doc)),
                (Err(_), Err(_)) => {}
                (p, e) => panic!(
                    "{}: serde_json {:?}, exact {:?}",
                    String::from_utf8_lossy(&doc),
                    p.is_ok(),
                    e.is_ok()
                ),
            }
        }
    }

    /// Equal, or `e` holds the exact text where `p` holds its nearest double.
    fn agree(p: &Value, e: &Value) -> bool {
        match (p, e) {
            (Value::Number(n), Value::String(s)) => {
                s.parse::<f64>().ok() == n.as_f64() && is_lossy(s.as_bytes())
            }
            (Value::Array(a), Value::Array(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| agree(x, y))
            }
            (Value::Object(a), Value::Object(b)) => {
                a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| agree(v, w)))
            }
            _ => p == e,
        }
    }

    #[test]
    fn decimals_compare_by_value() {
        let d = |s: &str| Decimal::parse(s.as_bytes()).unwrap();
        assert_eq!(d("1.10"), d("1.1"));
        assert_eq!(d("1e3"), d("1000"));
        assert_eq!(d("-0.0120e3"), d("-12"));
        assert_eq!(d("0.000"), d("0"));
        assert_ne!(d("12.5"), d("125"));
        assert!(Decimal::parse(b"1.2.3").is_none());
        assert!(Decimal::parse(b"-").is_none());
    }
}
