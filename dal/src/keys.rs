//! Object key layout under the configured prefix, and a reversible encoding for arbitrary
//! strings used as key components.
//!
//! Keys of segments and dead letters are derived from the catalog's segment sequence only,
//! never from record ids, so no id can reach a key. [`encode_component`] exists for the
//! places that must put a free string in a key (source names in dead-letter listings,
//! user prefixes): it percent-encodes every byte outside `[A-Za-z0-9_-]`, so the result has
//! no `/`, no `.` (hence no `..`) and is injective.

/// Key of segment `seq`: zero-padded so lexical order is sequence order.
pub fn segment_key(seq: u64) -> String {
    format!("segments/{seq:020}.seg")
}

/// Key of the dead letters quarantined with batch `seq`.
pub fn deadletter_key(seq: u64) -> String {
    format!("deadletter/{seq:020}.jsonl")
}

/// Prefix under which all segments live.
pub const SEGMENT_PREFIX: &str = "segments/";

/// Parses the sequence back out of a segment key; `None` for anything else.
pub fn parse_segment_key(key: &str) -> Option<u64> {
    let rest = key.strip_prefix(SEGMENT_PREFIX)?.strip_suffix(".seg")?;
    if rest.len() != 20 || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rest.parse().ok()
}

/// Percent-encodes `s` so it is one safe, unique key component.
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.is_empty() {
        out.push('%');
    }
    out
}

/// Inverse of [`encode_component`].
pub fn decode_component(s: &str) -> Option<String> {
    if s == "%" {
        return Some(String::new());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Checks a key is relative, has no empty, `.` or `..` component and no NUL: the rule every
/// backend enforces so a key can never leave the store's root or prefix.
pub fn validate_key(key: &str) -> crate::Result<()> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key.contains('\0')
        || key.contains('\\')
        || key
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        return Err(crate::Error::invalid("object key", format!("{key:?}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_round_trip_and_stay_in_prefix() {
        for s in [
            "",
            "a",
            "..",
            "../../etc/passwd",
            "a/b",
            "ünï/çødé",
            "%2F",
            "%",
            &"x".repeat(1024),
        ] {
            let e = encode_component(s);
            assert!(!e.contains('/') && !e.contains('.'), "{e}");
            assert_eq!(decode_component(&e).as_deref(), Some(s));
            validate_key(&format!("p/{e}")).unwrap();
        }
        assert_ne!(encode_component("a/b"), encode_component("a%2Fb"));
    }

    #[test]
    fn segment_keys_sort_by_sequence() {
        assert!(segment_key(9) < segment_key(10));
        assert_eq!(parse_segment_key(&segment_key(42)), Some(42));
        assert_eq!(parse_segment_key("segments/../x.seg"), None);
    }

    #[test]
    fn bad_keys_are_rejected() {
        for k in ["", "/abs", "a//b", "a/../b", "./a", "a\0b", "a\\b"] {
            assert!(validate_key(k).is_err(), "{k:?}");
        }
    }
}
