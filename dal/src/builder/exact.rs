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
//! Cost: one pass over the bytes that only counts digits; events with a long digit run
//! (16 or more digits, or 19 for an integer) get a second, string-aware pass, and only
//! those holding a lossy number are rewritten before parsing.

use serde_json::Value;

/// Parses `raw` as JSON, numbers that would lose information read as strings of their
/// exact text (module docs). Errors are serde_json's, positions those of `raw`.
pub fn parse(raw: &[u8]) -> serde_json::Result<Value> {
    if may_hold_lossy_numbers(raw)
        && let Some(quoted) = quote_lossy_numbers(raw)
    {
        // Positions in an error would be those of the rewritten text: report the
        // original's instead.
        return serde_json::from_slice(&quoted).or_else(|_| serde_json::from_slice(raw));
    }
    serde_json::from_slice(raw)
}

/// [`parse`] of a string.
pub fn parse_str(text: &str) -> serde_json::Result<Value> {
    parse(text.as_bytes())
}

/// Whether `raw` has a run of digits (and dots) long enough for a number that a double or
/// a 64-bit integer cannot hold: 16 significant digits with a dot or an exponent, 19
/// without. Inside strings too (a cheap over-approximation: no string tracking).
fn may_hold_lossy_numbers(raw: &[u8]) -> bool {
    let mut digits = 0u32;
    let mut dot = false;
    for &b in raw {
        match b {
            b'0'..=b'9' => digits += 1,
            b'.' => dot = true,
            _ => {
                if digits >= 19 || (digits >= 16 && (dot || b == b'e' || b == b'E')) {
                    return true;
                }
                digits = 0;
                dot = false;
            }
        }
    }
    digits >= 19 || (digits >= 16 && dot)
}

/// `raw` with every lossy number token (outside strings) put in quotes; `None` if it has
/// none.
fn quote_lossy_numbers(raw: &[u8]) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'"' => {
                i += 1;
                while i < raw.len() {
                    match raw[i] {
                        b'\\' => i += 2,
                        b'"' => {
                            i += 1;
                            break;
                        }
                        _ => i += 1,
                    }
                }
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                i += 1;
                while i < raw.len()
                    && matches!(raw[i], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
                {
                    i += 1;
                }
                let token = &raw[start..i];
                if is_lossy(token) {
                    let o = out.get_or_insert_with(|| Vec::with_capacity(raw.len() + 16));
                    o.extend_from_slice(&raw[copied..start]);
                    o.push(b'"');
                    o.extend_from_slice(token);
                    o.push(b'"');
                    copied = i;
                }
            }
            _ => i += 1,
        }
    }
    let mut o = out?;
    o.extend_from_slice(&raw[copied..]);
    Some(o)
}

/// Whether a JSON number token would lose information as serde_json reads it: an integer
/// outside `i64` and `u64`, or a decimal whose value the nearest double does not equal
/// digit for digit. Malformed tokens are not (serde_json reports them).
fn is_lossy(token: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(token) else {
        return false;
    };
    let Some(value) = Decimal::parse(token) else {
        return false;
    };
    if !token.iter().any(|b| matches!(b, b'.' | b'e' | b'E')) {
        return text.parse::<i64>().is_err() && text.parse::<u64>().is_err();
    }
    if value.digits.len() <= 15 {
        // A double holds any 15 significant digits (DBL_DIG).
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
