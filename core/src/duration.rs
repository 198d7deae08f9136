//! Human durations in job files and on the command line (`100ms`, `5s`, `1m`, `1h 30m`, `1d`),
//! parsed by `humantime` rather than by hand.

use std::time::Duration;

/// Parses a duration: integers with units (`ms`, `s`, `m`/`min`, `h`, `d`, ...), several
/// terms allowed (`1h 30m`). A bare number has no unit and is refused.
pub fn parse_duration(text: &str) -> Option<Duration> {
    humantime::parse_duration(text.trim()).ok()
}

/// Serde adapter so job files can say `watermark_delay = "5s"`.
pub(crate) mod serde_duration {
    use super::parse_duration;
    use serde::{Deserialize, Deserializer, de::Error};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).ok_or_else(|| {
            D::Error::custom(format!(
                "invalid duration `{text}`: expected an integer and a unit (ms, s, m, h, d), e.g. \"5s\""
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_duration("100ms"), Some(Duration::from_millis(100)));
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Some(Duration::from_secs(86400)));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("5 parsecs"), None);
        assert_eq!(parse_duration("1h 30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
        assert_eq!(parse_duration("99999999999999999999d"), None);
    }
}
