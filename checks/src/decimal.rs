//! Exact decimal amounts: a decimal string in asset units to integer minor units.

/// `amount × 10^decimals` exactly, for a decimal string such as `"12.50"`, `"-0.5"` or
/// `"7"`. Fails for anything else (exponents, spaces, empty), for amounts finer than the
/// minor unit (`"12.505"` at 2 decimals), and on overflow.
pub fn to_minor(amount: &str, decimals: i32) -> Result<i128, String> {
    let decimals = u32::try_from(decimals).map_err(|_| format!("negative decimals {decimals}"))?;
    let (neg, digits) = match amount.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, amount.strip_prefix('+').unwrap_or(amount)),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !all_digits(int) || !all_digits(frac) {
        return Err("not a decimal number".into());
    }
    let overflow = || "too large".to_string();
    let scale = 10i128.checked_pow(decimals).ok_or_else(overflow)?;
    let mut value: i128 = 0;
    for b in int.bytes() {
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(i128::from(b - b'0')))
            .ok_or_else(overflow)?;
    }
    value = value.checked_mul(scale).ok_or_else(overflow)?;
    let (kept, rest) = frac.split_at(frac.len().min(decimals as usize));
    if rest.bytes().any(|b| b != b'0') {
        return Err(format!("finer than the minor unit at {decimals} decimals"));
    }
    let mut f: i128 = 0;
    for b in kept.bytes() {
        f = f * 10 + i128::from(b - b'0');
    }
    f *= 10i128.pow(decimals - kept.len() as u32);
    value = value.checked_add(f).ok_or_else(overflow)?;
    Ok(if neg { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact() {
        assert_eq!(to_minor("12.50", 2), Ok(1250));
        assert_eq!(to_minor("12.5", 2), Ok(1250));
        assert_eq!(to_minor("12", 2), Ok(1200));
        assert_eq!(to_minor("12.", 2), Ok(1200));
        assert_eq!(to_minor(".5", 2), Ok(50));
        assert_eq!(to_minor("-0.01", 2), Ok(-1));
        assert_eq!(to_minor("+3", 0), Ok(3));
        assert_eq!(to_minor("1.23400", 3), Ok(1234));
        assert_eq!(to_minor("0.00000001", 8), Ok(1));
        assert_eq!(
            to_minor("12345678901234567890.123456789012345678", 18),
            Ok(12_345_678_901_234_567_890_123_456_789_012_345_678)
        );
    }

    #[test]
    fn refused() {
        for bad in [
            "", ".", "-", "1e3", "1,5", " 1", "1.2.3", "abc", "--1", "0x10",
        ] {
            assert!(to_minor(bad, 2).is_err(), "{bad:?}");
        }
        assert!(to_minor("12.505", 2).unwrap_err().contains("finer"));
        assert!(to_minor("1", -1).is_err());
        assert!(to_minor("1", 40).is_err(), "10^40 overflows i128");
        assert!(to_minor(&"9".repeat(40), 2).is_err());
    }
}
