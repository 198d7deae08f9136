//! `GET /v1/jobs/{job}/view`: which merged rows a query selects, and the answer's shape.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sluice_core::time::{format_time, parse_time};

use crate::error::{Result, ServingError};
use crate::service::freshness_ms;
use crate::snapshot::{Origin, Snapshot};

/// Rows returned when a query gives no `limit`.
pub const DEFAULT_LIMIT: usize = 1000;
/// The largest `limit` accepted.
pub const MAX_LIMIT: usize = 100_000;

/// A view query: a view key, a window-start range and a row limit.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ViewQuery {
    /// View-key values, comma-separated in `view.key` order.
    pub key: Option<String>,
    /// Window start at or after this (RFC 3339, a date, or epoch ms).
    pub from: Option<String>,
    /// Window start before this.
    pub to: Option<String>,
    pub limit: Option<usize>,
}

impl ViewQuery {
    /// Reads query-string parameters, naming any that is unknown or malformed.
    pub fn from_params(params: &HashMap<String, String>) -> Result<ViewQuery> {
        let mut query = ViewQuery::default();
        for (name, value) in params {
            match name.as_str() {
                "key" => query.key = Some(value.clone()),
                "from" => query.from = Some(value.clone()),
                "to" => query.to = Some(value.clone()),
                "limit" => {
                    query.limit = Some(value.parse().map_err(|_| {
                        ServingError::bad_request(
                            "limit",
                            format!("expected a row count, got `{value}`"),
                        )
                    })?)
                }
                other => {
                    return Err(ServingError::bad_request(
                        other,
                        "unknown parameter; expected key, from, to or limit",
                    ));
                }
            }
        }
        Ok(query)
    }
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

/// The answer's header fields, then its rows from pre-rendered JSON: the fast path of
/// `GET /view`.
pub(crate) fn render(snapshot: &Snapshot, job: &str, selection: &Selection) -> String {
    let header = serde_json::json!({
        "job": job,
        "cutoff": snapshot.cutoff_us.map(format_time),
        "cutoff_us": snapshot.cutoff_us,
        "watermark": snapshot.watermark_us.map(format_time),
        "watermark_us": snapshot.watermark_us,
        "freshness_ms": freshness_ms(snapshot),
        "count": selection.rows.len(),
        "truncated": selection.truncated,
    })
    .to_string();
    let mut body = String::with_capacity(header.len() + 96 * selection.rows.len() + 16);
    body.push_str(&header[..header.len() - 1]);
    body.push_str(",\"rows\":[");
    for (i, &row) in selection.rows.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str("{\"origin\":\"");
        body.push_str(snapshot.origins[row].as_str());
        body.push_str("\",\"row\":");
        body.push_str(&snapshot.json[row]);
        body.push('}');
    }
    body.push_str("]}");
    body
}

/// The same answer as a value, for callers in this process.
pub(crate) fn answer(snapshot: &Snapshot, job: &str, selection: &Selection) -> ViewAnswer {
    ViewAnswer {
        job: job.to_string(),
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
