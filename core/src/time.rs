//! Points in time on the command line and in output: RFC 3339, a date, or epoch milliseconds.

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};

use crate::error::{Error, Result};

/// Parses `2024-05-01T10:00:00Z`, `2024-05-01` (midnight UTC) or epoch milliseconds into
/// microseconds since the epoch.
pub fn parse_time(text: &str) -> Result<i64> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc).timestamp_micros());
    }
    if let Some(t) = NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
    {
        return Ok(t.and_utc().timestamp_micros());
    }
    if let Ok(ms) = text.parse::<i64>() {
        return ms.checked_mul(1000).ok_or_else(|| Error::InvalidTime {
            value: text.to_string(),
            why: "out of range".to_string(),
        });
    }
    Err(Error::InvalidTime {
        value: text.to_string(),
        why: "expected RFC 3339 (2024-05-01T10:00:00Z), a date (2024-05-01) or epoch milliseconds"
            .to_string(),
    })
}

/// Formats microseconds since the epoch as RFC 3339 UTC.
pub fn format_time(micros: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        .unwrap_or_else(|| format!("{micros}µs"))
}

/// Rounds `micros` down to a multiple of `step`.
pub fn floor_to(micros: i64, step: i64) -> i64 {
    micros - micros.rem_euclid(step)
}

/// Rounds `micros` up to a multiple of `step`.
pub fn ceil_to(micros: i64, step: i64) -> i64 {
    let floor = floor_to(micros, step);
    if floor == micros {
        micros
    } else {
        floor + step
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_three_forms() {
        assert_eq!(parse_time("1970-01-01T00:00:01Z").unwrap(), 1_000_000);
        assert_eq!(parse_time("1970-01-02").unwrap(), 86_400_000_000);
        assert_eq!(parse_time("1500").unwrap(), 1_500_000);
        assert!(
            parse_time("yesterday")
                .unwrap_err()
                .to_string()
                .contains("RFC 3339")
        );
        assert_eq!(format_time(1_000_000), "1970-01-01T00:00:01Z");
        assert_eq!(
            (floor_to(-1, 10), ceil_to(11, 10), ceil_to(10, 10)),
            (-10, 20, 10)
        );
    }
}
