//! Sizes, counts, durations and times as people type and read them.
//!
//! - Sizes are whole bytes, optionally with a binary unit: `4096`, `4K` or
//!   `4KiB`, `1MiB`, `2GiB`, `1TiB` (case-insensitive; `K`, `M`, `G`, `T` are
//!   binary too, so `1K` is 1024). SI units (`kB`, `MB`) and fractions are
//!   refused rather than guessed. Parsing and display are
//!   [`ipcplane_proto::units`], shared with the agent's config file, so both
//!   accept and show the same forms.
//! - Durations are one or more `<number><unit>` groups with units `ms`, `s`,
//!   `m`, `h`, `d`: `500ms`, `30s`, `10m`, `1h30m`, `2d`.
//! - Times (`--since`) are a duration ago (`10m`) or an RFC 3339 time
//!   (`2024-05-01T10:00:00Z`, `2024-05-01T12:00:00+02:00`, `2024-05-01`).
//!
//! Parsers return `Result<_, String>` so clap reports their message as a usage error.

use std::time::{Duration, SystemTime};

use prost_types::Timestamp;

pub use ipcplane_proto::units::{format_size, parse_size};

/// A quota limit as given on the command line: a number, or no limit at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(pub Option<u64>);

/// The word that means "no limit", accepted by [`parse_size_limit`] and
/// [`parse_count_limit`].
pub const UNLIMITED: &str = "unlimited";

/// Parses `unlimited` or a size as [`parse_size`] does.
///
/// # Errors
/// The size parser's message, mentioning `unlimited`.
pub fn parse_size_limit(text: &str) -> Result<Limit, String> {
    if text.trim().eq_ignore_ascii_case(UNLIMITED) {
        return Ok(Limit(None));
    }
    parse_size(text)
        .map(|bytes| Limit(Some(bytes)))
        .map_err(|message| format!("{message}, or {UNLIMITED}"))
}

/// Parses `unlimited` or a whole number, zero included (a limit of 0
/// segments stops a tenant from creating any).
///
/// # Errors
/// A message saying what was expected.
pub fn parse_count_limit(text: &str) -> Result<Limit, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case(UNLIMITED) {
        return Ok(Limit(None));
    }
    text.parse()
        .map(|count| Limit(Some(count)))
        .map_err(|_| format!("invalid count {text:?}: expected a whole number or {UNLIMITED}"))
}

/// Duration units, largest first, with their length in milliseconds.
const DURATION_UNITS: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// Parses a positive duration such as `30s`, `10m`, `1h30m` or `500ms`.
///
/// # Errors
/// A message saying what was expected, for a missing or unknown unit, a
/// fraction, zero or an overflow.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let expected = || {
        format!(
            "invalid duration {text:?}: expected a number with a unit (ms, s, m, h, d), \
             e.g. 30s, 10m or 1h30m"
        )
    };
    let mut rest = text;
    let mut total_ms: u64 = 0;
    if rest.is_empty() {
        return Err(expected());
    }
    while !rest.is_empty() {
        let digits_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_end = rest[digits_end..]
            .find(|c: char| !c.is_ascii_alphabetic())
            .map_or(rest.len(), |at| digits_end + at);
        let (digits, unit) = (&rest[..digits_end], &rest[digits_end..unit_end]);
        if digits.is_empty() || unit.is_empty() {
            return Err(expected());
        }
        let factor = DURATION_UNITS
            .iter()
            .find(|(name, _)| unit.eq_ignore_ascii_case(name))
            .map(|(_, factor)| *factor)
            .ok_or_else(expected)?;
        let too_long = || format!("invalid duration {text:?}: too long");
        let count: u64 = digits.parse().map_err(|_| too_long())?;
        total_ms = count
            .checked_mul(factor)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(too_long)?;
        rest = &rest[unit_end..];
    }
    if total_ms == 0 {
        return Err(format!("invalid duration {text:?}: must be positive"));
    }
    Ok(Duration::from_millis(total_ms))
}

/// Shows a duration in the form [`parse_duration`] reads, largest units
/// first and zero parts left out: `1h30m`, `45s`, `1s500ms`, `0s`.
/// Sub-millisecond parts are dropped.
pub fn format_duration(duration: Duration) -> String {
    let mut rest_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    if rest_ms == 0 {
        return "0s".to_owned();
    }
    let mut text = String::new();
    for (name, factor) in DURATION_UNITS {
        let count = rest_ms / factor;
        if count > 0 {
            text.push_str(&format!("{count}{name}"));
            rest_ms %= factor;
        }
    }
    text
}

/// A point in time given as `--since`: relative to now, or absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Since {
    /// This long before the command runs.
    Ago(Duration),
    /// This exact time.
    At(Timestamp),
}

impl Since {
    /// The absolute time, with relative forms counted back from `now`.
    pub fn resolve(&self, now: SystemTime) -> Timestamp {
        match self {
            Since::Ago(ago) => now
                .checked_sub(*ago)
                .unwrap_or(SystemTime::UNIX_EPOCH)
                .into(),
            Since::At(at) => *at,
        }
    }
}

/// Parses a duration ago (`10m`) or an RFC 3339 time (`2024-05-01T10:00:00Z`).
///
/// # Errors
/// A message showing both accepted forms.
pub fn parse_since(text: &str) -> Result<Since, String> {
    if let Ok(ago) = parse_duration(text) {
        return Ok(Since::Ago(ago));
    }
    text.trim().parse().map(Since::At).map_err(|_| {
        format!(
            "invalid time {text:?}: expected a duration ago such as 10m or 2h, \
             or an RFC 3339 time such as 2024-05-01T10:00:00Z"
        )
    })
}

/// Shows a protobuf timestamp in RFC 3339, UTC (`2024-05-01T10:00:00Z`, with
/// fractional seconds only when present).
pub fn format_timestamp(timestamp: &Timestamp) -> String {
    timestamp.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_limits_accept_sizes_and_unlimited() {
        assert_eq!(parse_size_limit("1GiB"), Ok(Limit(Some(1 << 30))));
        assert_eq!(parse_size_limit("64m"), Ok(Limit(Some(64 << 20))));
        assert_eq!(parse_size_limit("Unlimited"), Ok(Limit(None)));
        let message = parse_size_limit("0").unwrap_err();
        assert!(message.contains("must be positive"), "{message}");
        assert!(parse_size_limit("lots").unwrap_err().contains(UNLIMITED));
    }

    #[test]
    fn count_limits_accept_zero_numbers_and_unlimited() {
        assert_eq!(parse_count_limit("0"), Ok(Limit(Some(0))));
        assert_eq!(parse_count_limit("250"), Ok(Limit(Some(250))));
        assert_eq!(parse_count_limit("UNLIMITED"), Ok(Limit(None)));
        for bad in ["", "-1", "1.5", "10K", "many"] {
            assert!(parse_count_limit(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sizes_parse_with_binary_units_in_any_case() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("1MIB"), Ok(1 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        for bad in ["0", "-4KiB", "1.5MiB", "4MB", "four", ""] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations_parse_single_and_compound_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("2D"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration(" 1m30s "), Ok(Duration::from_secs(90)));
    }

    #[test]
    fn durations_reject_missing_units_zero_fractions_and_overflow() {
        for bad in [
            "",
            "30",
            "s",
            "0s",
            "1.5s",
            "-5s",
            "5 s",
            "3w",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert!(
            parse_duration("0m")
                .unwrap_err()
                .contains("must be positive")
        );
    }

    #[test]
    fn durations_format_in_the_parsed_form() {
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_millis(1_500)), "1s500ms");
        assert_eq!(format_duration(Duration::from_secs(5_400)), "1h30m");
        assert_eq!(format_duration(Duration::from_secs(90_061)), "1d1h1m1s");
        for text in ["250ms", "30s", "10m", "2h", "3d", "1h30m"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
    }

    #[test]
    fn since_accepts_durations_ago_and_rfc3339_times() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let ago = parse_since("10m").unwrap();
        assert_eq!(ago, Since::Ago(Duration::from_secs(600)));
        assert_eq!(
            ago.resolve(now),
            Timestamp {
                seconds: 400,
                nanos: 0
            }
        );

        let at = parse_since("2024-05-01T12:00:00+02:00").unwrap();
        assert_eq!(format_timestamp(&at.resolve(now)), "2024-05-01T10:00:00Z");

        assert!(parse_since("yesterday").unwrap_err().contains("RFC 3339"));
    }

    #[test]
    fn timestamps_format_as_rfc3339_utc() {
        let sut = Timestamp {
            seconds: 1_714_557_600,
            nanos: 500_000_000,
        };
        assert_eq!(format_timestamp(&sut), "2024-05-01T10:00:00.500Z");
    }
}
