//! `GET /v1/jobs/{job}/view`: which merged rows a query selects, and the answer's shape.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sluice_core::Origin;
use sluice_core::time::{format_time, parse_time};

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
    /// Window start at or after this (RFC 3339, a date, or epoch ms).
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
    parse_time(value)
        .map(Some)
        .map_err(|e| ServingError::bad_request(name, e.to_string()))
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
