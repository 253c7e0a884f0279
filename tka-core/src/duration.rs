//! Durations as people write them in policy files and on the command line: Go's notation
//! (`90m`, `8h`, `1h30m`, `45s`, `1.5h`), the one Tailscale and Kubernetes users already know.
//! It owns parsing and printing only; it must not clamp or judge a duration (policy does).

use std::fmt;

use jiff::SignedDuration;

/// Why a duration string was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DurationError {
    /// Nothing to parse.
    #[error("empty duration; write it like 90m, 8h or 1h30m")]
    Empty,
    /// The text is not a sequence of number-unit pairs.
    #[error("invalid duration {0:?}; write it like 90m, 8h or 1h30m (units: h, m, s)")]
    Invalid(String),
    /// A unit other than h, m, s.
    #[error("unknown unit {unit:?} in duration {input:?}; use h, m or s")]
    UnknownUnit {
        /// The whole input.
        input: String,
        /// The unit that was not understood.
        unit: String,
    },
    /// Larger than any duration tka deals with.
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

/// Parses a Go-style duration. A leading `-` gives a negative duration, so that callers can say
/// "must be positive" rather than "invalid".
///
/// ```
/// use tka_core::duration::parse;
/// assert_eq!(parse("1h30m").unwrap().as_secs(), 5400);
/// assert_eq!(parse("-1h").unwrap().as_secs(), -3600);
/// assert!(parse("abc").is_err());
/// ```
pub fn parse(input: &str) -> Result<SignedDuration, DurationError> {
    let s = input.trim();
    let (negative, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest.is_empty() {
        return Err(if s.is_empty() {
            DurationError::Empty
        } else {
            DurationError::Invalid(input.to_owned())
        });
    }
    if rest == "0" {
        return Ok(SignedDuration::ZERO);
    }
    let invalid = || DurationError::Invalid(input.to_owned());
    let overflow = || DurationError::Overflow(input.to_owned());
    let mut total_nanos: i128 = 0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(invalid)?;
        if num_len == 0 {
            return Err(invalid());
        }
        let (number, after) = rest.split_at(num_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let unit_nanos: i128 = match unit {
            "h" => 3_600_000_000_000,
            "m" => 60_000_000_000,
            "s" => 1_000_000_000,
            "ms" => 1_000_000,
            _ => {
                return Err(DurationError::UnknownUnit {
                    input: input.to_owned(),
                    unit: unit.to_owned(),
                });
            }
        };
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && frac.is_empty() {
            return Err(invalid());
        }
        let whole: i128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| overflow())?
        };
        let mut value = whole.checked_mul(unit_nanos).ok_or_else(overflow)?;
        let mut scale = unit_nanos;
        for digit in frac.chars() {
            let d = i128::from(digit.to_digit(10).ok_or_else(invalid)?);
            scale /= 10;
            value = value.checked_add(d * scale).ok_or_else(overflow)?;
        }
        total_nanos = total_nanos.checked_add(value).ok_or_else(overflow)?;
        rest = after;
    }
    if negative {
        total_nanos = -total_nanos;
    }
    let secs = i64::try_from(total_nanos / 1_000_000_000).map_err(|_| overflow())?;
    // The remainder of a division by 1e9 always fits in i32.
    let nanos = i32::try_from(total_nanos % 1_000_000_000).map_err(|_| overflow())?;
    Ok(SignedDuration::new(secs, nanos))
}

/// Formats a duration the way [`parse`] reads it, in whole seconds: `1h30m`, `45s`, `0s`.
///
/// ```
/// use jiff::SignedDuration;
/// use tka_core::duration::format;
/// assert_eq!(format(SignedDuration::from_secs(5400)), "1h30m");
/// assert_eq!(format(SignedDuration::from_secs(3605)), "1h0m5s");
/// ```
pub fn format(d: SignedDuration) -> String {
    Display(d).to_string()
}

/// A [`fmt::Display`] adapter for [`format()`].
#[derive(Debug, Clone, Copy)]
pub struct Display(pub SignedDuration);

impl fmt::Display for Display {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let signed = self.0.as_secs();
        if signed < 0 {
            f.write_str("-")?;
        }
        // Unsigned: the most negative duration has no positive counterpart in an i64.
        let secs = signed.unsigned_abs();
        let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
        match (h, m, s) {
            (0, 0, s) => write!(f, "{s}s"),
            (0, m, 0) => write!(f, "{m}m"),
            (0, m, s) => write!(f, "{m}m{s}s"),
            (h, 0, 0) => write!(f, "{h}h"),
            (h, m, 0) => write!(f, "{h}h{m}m"),
            (h, m, s) => write!(f, "{h}h{m}m{s}s"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_notation() {
        for (input, secs) in [
            ("90m", 5400),
            ("8h", 28800),
            ("1h30m", 5400),
            ("45s", 45),
            ("1.5h", 5400),
            ("0", 0),
            ("0s", 0),
            ("2h0m30s", 7230),
            ("-1h", -3600),
        ] {
            assert_eq!(parse(input).map(|d| d.as_secs()), Ok(secs), "{input}");
        }
    }

    #[test]
    fn rejects_garbage() {
        for input in ["", "abc", "1", "h", "1x", "1h-2m", "--1h", "1.2.3h", ".h"] {
            assert!(parse(input).is_err(), "{input} should not parse");
        }
        assert!(matches!(
            parse("5d"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse("99999999999999999999h"),
            Err(DurationError::Overflow(_))
        ));
    }

    #[test]
    fn format_round_trips() {
        for secs in [0, 1, 59, 60, 61, 3600, 3601, 5400, 86400 * 3 + 7] {
            let d = SignedDuration::from_secs(secs);
            assert_eq!(parse(&format(d)), Ok(d));
        }
    }

    #[test]
    fn the_most_negative_duration_prints_as_itself() {
        // Found by the `capability` fuzz target (seed `extreme-ttl`): the sign was dropped by
        // a saturating negation, so this printed one second short.
        let d = parse("-9223372036854775808s").unwrap();
        assert_eq!(format(d), "-2562047788015215h30m8s");
        assert_eq!(parse(&format(d)), Ok(d));
    }
}
