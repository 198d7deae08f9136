//! `GET /v1/jobs/{job}/view`: which merged rows a query selects, and the answer's shape.

use std::fmt;

use chrono::{DateTime, NaiveDate};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sluice_core::Origin;
use sluice_core::time::format_time;

use crate::error::{Result, ServingError};
use crate::service::freshness_ms;
use crate::snapshot::Snapshot;

/// Rows returned when a query gives no `limit`.
pub const DEFAULT_LIMIT: usize = 1000;
/// The largest `limit` accepted.
pub const MAX_LIMIT: usize = 100_000;

/// The query-string parameters of `GET /v1/jobs/{job}/view`: [`ViewQuery`]'s fields.
pub(crate) const PARAMETERS: [&str; 4] = ["key", "from", "to", "limit"];

/// A view query: a view key, a window-start range and a row limit. It is also the query
/// string of `GET /v1/jobs/{job}/view`, which refuses any other parameter.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewQuery {
    /// View-key values, comma-separated in `view.key` order.
    pub key: Option<String>,
    /// Window start at or after this: RFC 3339, a date or epoch ms, exactly as openapi.yaml says.
    pub from: Option<String>,
    /// Window start before this.
    pub to: Option<String>,
    /// Rows returned at most: [`DEFAULT_LIMIT`] when not given, at most [`MAX_LIMIT`].
    #[serde(default, deserialize_with = "row_count")]
    pub limit: Option<usize>,
}

/// `limit`: a row count, as query-string text (or a JSON number).
fn row_count<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<usize>, D::Error> {
    struct RowCount;

    impl Visitor<'_> for RowCount {
        type Value = usize;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a row count")
        }

        fn visit_u64<E: de::Error>(self, value: u64) -> Result<usize, E> {
            usize::try_from(value)
                .map_err(|_| E::custom(format!("expected a row count, got `{value}`")))
        }

        fn visit_str<E: de::Error>(self, value: &str) -> Result<usize, E> {
            value
                .parse()
                .map_err(|_| E::custom(format!("expected a row count, got `{value}`")))
        }
    }

    deserializer.deserialize_any(RowCount).map(Some)
}

/// One merged row and the layer it came from.
#[derive(Debug, Clone, Serialize)]
pub struct ViewRow {
    pub origin: Origin,
    pub row: serde_json::Value,
}

/// The answer to a view query.
#[derive(Debug, Clone, Serialize)]
pub struct ViewAnswer {
    pub job: String,
    /// The view version that answered.
    pub version: u32,
    pub cutoff: Option<String>,
    pub cutoff_us: Option<i64>,
    pub watermark: Option<String>,
    pub watermark_us: Option<i64>,
    pub freshness_ms: Option<i64>,
    pub count: usize,
    pub truncated: bool,
    pub rows: Vec<ViewRow>,
}

/// The rows a query selects, in answer order.
#[derive(Debug)]
pub(crate) struct Selection {
    pub rows: Vec<usize>,
    pub truncated: bool,
}

/// What a query needs to know about the job beside the snapshot.
pub(crate) struct JobShape<'a> {
    pub has_key: bool,
    pub has_window: bool,
    pub job: &'a str,
}

pub(crate) fn select(
    snapshot: &Snapshot,
    shape: &JobShape<'_>,
    query: &ViewQuery,
) -> Result<Selection> {
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if limit > MAX_LIMIT {
        return Err(ServingError::bad_request(
            "limit",
            format!("at most {MAX_LIMIT}, got {limit}"),
        ));
    }
    if query.key.is_some() && !shape.has_key {
        return Err(ServingError::bad_request(
            "key",
            format!("job `{}` has no view key (view.key is empty)", shape.job),
        ));
    }
    let from = time_param("from", query.from.as_deref(), shape)?;
    let to = time_param("to", query.to.as_deref(), shape)?;
    let candidates: &[usize] = match &query.key {
        Some(key) => snapshot.by_key.get(key).map_or(&[], Vec::as_slice),
        None => &snapshot.order,
    };
    let in_range = |row: &usize| {
        let start = snapshot.window_starts[*row];
        from.is_none_or(|f| start.is_some_and(|s| s >= f))
            && to.is_none_or(|t| start.is_some_and(|s| s < t))
    };
    let mut rows: Vec<usize> = candidates
        .iter()
        .copied()
        .filter(in_range)
        .take(limit + 1)
        .collect();
    let truncated = rows.len() > limit;
    rows.truncate(limit);
    Ok(Selection { rows, truncated })
}

fn time_param(name: &str, value: Option<&str>, shape: &JobShape<'_>) -> Result<Option<i64>> {
    let Some(value) = value else {
        return Ok(None);
    };
    if !shape.has_window {
        return Err(ServingError::bad_request(
            name,
            format!(
                "job `{}` has no group window, so its rows have no time to select by",
                shape.job
            ),
        ));
    }
    parse_view_time(value).map(Some).ok_or_else(|| {
        ServingError::bad_request(
            name,
            format!(
                "expected RFC 3339 (2024-05-01T10:00:00Z), a date (2024-05-01) or epoch milliseconds (1714557600000), got `{value}`"
            ),
        )
    })
}

/// `from` and `to` as µs since the epoch, read in exactly the forms the `Time` schema of
/// openapi.yaml declares, so that the document and the server agree on every string (a
/// checker such as schemathesis sends both what the schema allows and what it does not):
///
/// - RFC 3339 `YYYY-MM-DDThh:mm:ss[.f{1,9}](Z|±hh:mm)`, `t` and `z` in either case, seconds
///   00-59 (a leap second is refused: only some of them exist, and validators disagree on
///   which);
/// - a date `YYYY-MM-DD`, midnight UTC;
/// - epoch milliseconds: up to 15 digits, optionally negative (far beyond year 9999, and
///   never overflowing µs).
///
/// The shape is checked here and the calendar by chrono, so `2024-02-30`, `24:00:00` and a
/// `+24:00` offset are refused. Unlike `sluice_core::time::parse_time` (the CLI's reader),
/// surrounding spaces, a `+` sign, a space for `T` and longer fractions are refused.
pub(crate) fn parse_view_time(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    if is_epoch_ms(bytes) {
        // At most 15 digits: neither the parse nor the product can overflow.
        return text.parse::<i64>().ok()?.checked_mul(1000);
    }
    if shaped(bytes, b"9999-99-99") {
        let midnight = NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .ok()?
            .and_hms_opt(0, 0, 0)?;
        return Some(midnight.and_utc().timestamp_micros());
    }
    if is_rfc3339(bytes) {
        return DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| t.timestamp_micros());
    }
    None
}

/// `-?[0-9]{1,15}`.
fn is_epoch_ms(bytes: &[u8]) -> bool {
    let digits = bytes.strip_prefix(b"-").unwrap_or(bytes);
    (1..=15).contains(&digits.len()) && digits.iter().all(u8::is_ascii_digit)
}

/// `[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-5][0-9](\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})`.
fn is_rfc3339(bytes: &[u8]) -> bool {
    let Some((date, rest)) = bytes.split_at_checked(10) else {
        return false;
    };
    let Some((time, rest)) = rest.split_at_checked(9) else {
        return false;
    };
    if !shaped(date, b"9999-99-99") || !shaped(time, b"T99:99:99") || time[7] > b'5' {
        return false;
    }
    let offset = match rest {
        [b'.', fraction @ ..] => {
            let digits = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
            if !(1..=9).contains(&digits) {
                return false;
            }
            &fraction[digits..]
        }
        _ => rest,
    };
    match offset {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', hh_mm @ ..] => shaped(hh_mm, b"99:99"),
        _ => false,
    }
}

/// Whether `bytes` is `template` with each `9` standing for any ASCII digit and `T` for `T`
/// or `t`.
fn shaped(bytes: &[u8], template: &[u8]) -> bool {
    bytes.len() == template.len()
        && bytes.iter().zip(template).all(|(&b, &t)| match t {
            b'9' => b.is_ascii_digit(),
            b'T' => b == b'T' || b == b't',
            _ => b == t,
        })
}

/// The answer's header fields, then its rows embedded from the snapshot's pre-rendered JSON
/// (not parsed into values and rendered again): the fast path of `GET /view`. The fields are
/// in the order `json!` rendered them before (sorted), `rows` last.
#[derive(Serialize)]
struct RenderedAnswer<'a> {
    count: usize,
    cutoff: Option<String>,
    cutoff_us: Option<i64>,
    freshness_ms: Option<i64>,
    job: &'a str,
    truncated: bool,
    version: u32,
    watermark: Option<String>,
    watermark_us: Option<i64>,
    rows: Vec<RenderedRow<'a>>,
}

#[derive(Serialize)]
struct RenderedRow<'a> {
    origin: Origin,
    /// `None` (`null`) only if a row were not JSON, as [`answer`] renders it.
    row: Option<&'a RawValue>,
}

pub(crate) fn render(
    snapshot: &Snapshot,
    (job, version): (&str, u32),
    selection: &Selection,
) -> String {
    let answer = RenderedAnswer {
        count: selection.rows.len(),
        cutoff: snapshot.cutoff_us.map(format_time),
        cutoff_us: snapshot.cutoff_us,
        freshness_ms: freshness_ms(snapshot),
        job,
        truncated: selection.truncated,
        version,
        watermark: snapshot.watermark_us.map(format_time),
        watermark_us: snapshot.watermark_us,
        rows: selection
            .rows
            .iter()
            .map(|&row| RenderedRow {
                origin: snapshot.origins[row],
                row: serde_json::from_str(&snapshot.json[row]).ok(),
            })
            .collect(),
    };
    // Text, numbers and JSON rows: nothing here fails to serialize.
    serde_json::to_string(&answer).expect("a view answer serializes")
}

/// The same answer as a value, for callers in this process.
pub(crate) fn answer(
    snapshot: &Snapshot,
    (job, version): (&str, u32),
    selection: &Selection,
) -> ViewAnswer {
    ViewAnswer {
        job: job.to_string(),
        version,
        cutoff: snapshot.cutoff_us.map(format_time),
        cutoff_us: snapshot.cutoff_us,
        watermark: snapshot.watermark_us.map(format_time),
        watermark_us: snapshot.watermark_us,
        freshness_ms: freshness_ms(snapshot),
        count: selection.rows.len(),
        truncated: selection.truncated,
        rows: selection
            .rows
            .iter()
            .map(|&row| ViewRow {
                origin: snapshot.origins[row],
                row: serde_json::from_str(&snapshot.json[row]).unwrap_or(serde_json::Value::Null),
            })
            .collect(),
    }
}
