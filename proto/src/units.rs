//! Byte sizes as people write them (`4KiB`, `1MiB`, `2GiB`), shared by the
//! agent's config file and `ipcctl`, so both accept and show the same forms.

/// Binary unit suffixes, smallest first, with their factors.
const UNITS: [(&str, u64); 5] = [
    ("B", 1),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
];

/// Parses a positive byte count: plain digits, or digits followed by `B`,
/// `K`/`KiB`, `M`/`MiB`, `G`/`GiB` or `T`/`TiB` (case-insensitive, binary
/// multiples: `1K` is 1024).
///
/// # Errors
/// A message saying what was expected, for zero, negative, fractional,
/// overflowing or unknown-unit input.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    let expected = || {
        format!(
            "invalid size {text:?}: expected a positive whole number of bytes, optionally with a unit (B, KiB, MiB, GiB, TiB)"
        )
    };
    if digits.is_empty() {
        return Err(expected());
    }
    let count: u64 = digits.parse().map_err(|_| expected())?;
    let unit = unit.trim();
    let factor = UNITS
        .iter()
        .find(|(name, _)| {
            unit.eq_ignore_ascii_case(name)
                || (name.len() == 3 && unit.eq_ignore_ascii_case(&name[..1]))
        })
        .map(|(_, factor)| *factor)
        .or(unit.is_empty().then_some(1))
        .ok_or_else(expected)?;
    let bytes = count
        .checked_mul(factor)
        .ok_or_else(|| format!("invalid size {text:?}: larger than {} bytes", u64::MAX))?;
    if bytes == 0 {
        return Err(format!("invalid size {text:?}: must be positive"));
    }
    Ok(bytes)
}

/// Shows a byte count in the largest binary unit that divides it exactly
/// (`4KiB`, `1MiB`), else with one decimal (`1.5MiB`) or as bytes (`1000B`).
pub fn format_size(bytes: u64) -> String {
    let (name, factor) = UNITS
        .iter()
        .rev()
        .find(|(_, factor)| bytes >= *factor)
        .copied()
        .unwrap_or(UNITS[0]);
    if bytes % factor == 0 {
        format!("{}{name}", bytes / factor)
    } else {
        format!("{:.1}{name}", bytes as f64 / factor as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_suffixed_sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size(" 1MiB "), Ok(1 << 20));
        assert_eq!(parse_size("2gib"), Ok(2 << 30));
        assert_eq!(parse_size("1 TiB"), Ok(1 << 40));
        assert_eq!(parse_size("7B"), Ok(7));
    }

    #[test]
    fn rejects_zero_negative_fractional_unknown_and_overflowing_sizes() {
        for bad in [
            "",
            "0",
            "0KiB",
            "-1",
            "1.5MiB",
            "1PB",
            "KiB",
            "12 apples",
            "99999999999TiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn formats_exact_multiples_and_fractions() {
        assert_eq!(format_size(4096), "4KiB");
        assert_eq!(format_size(1 << 20), "1MiB");
        assert_eq!(format_size(2 << 30), "2GiB");
        assert_eq!(format_size(3 << 19), "1.5MiB");
        assert_eq!(format_size(1000), "1000B");
        assert_eq!(format_size(0), "0B");
    }
}
