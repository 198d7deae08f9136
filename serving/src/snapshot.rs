//! The merged view: merge(batch(< cutoff), speed(≥ cutoff)), finalized once per change and
//! shared by every request until the next change.
//!
//! Partial states are monoids, so the merge goes through the same
//! [`AggregateStage::finalize_sources`] the other layers finalize with: AVG over both layers is
//! the true average. Each result row remembers which layer its states came from.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::util::display::array_value_to_string;
use serde::Serialize;
use sluice_core::rows::to_json_lines;
use sluice_core::speed::SpeedCodec;
use sluice_core::{AggregateStage, Origin};

use crate::batch_view::BatchView;
use crate::error::{Result, ServingError};
use crate::speed_view::SpeedView;

/// The SQL column saying where a row came from.
pub const ORIGIN_COLUMN: &str = "__origin";

/// Merged-view rows by origin.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct OriginCounts {
    pub batch: usize,
    pub speed: usize,
    pub merged: usize,
}

/// One consistent answer source: the merged view at one moment.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub built_at_ms: i64,
    pub cutoff_us: Option<i64>,
    pub watermark_us: Option<i64>,
    /// When the newest data in the view was committed (ms since the epoch).
    pub newest_data_ms: Option<i64>,
    pub speed_version: u64,
    pub batch_version: Option<u64>,
    /// Whether the batch view had been read when this was built (a view table that does not
    /// exist yet counts: an empty batch view). `/view` and `/sql` refuse a snapshot without it.
    pub batch_loaded: bool,
    /// Result rows plus [`ORIGIN_COLUMN`]: the table SQL reads.
    pub table: RecordBatch,
    pub origins: Vec<Origin>,
    pub window_starts: Vec<Option<i64>>,
    /// Each row as a JSON object.
    pub json: Vec<String>,
    /// Row indices sorted by key, then window start.
    pub order: Vec<usize>,
    /// The sorted row indices of each view key (values joined by `,`).
    pub by_key: HashMap<String, Vec<usize>>,
    pub counts: OriginCounts,
    pub batch_partial_rows: usize,
    pub speed_partial_rows: usize,
    /// Per source partition, the offset the speed rows reflect (see
    /// [`sluice_core::speed::PartitionWatermark::source_next_offset`]).
    pub speed_offsets: BTreeMap<i32, i64>,
    /// Per source partition of a job with stateful stages (dedup, `unique`), the release
    /// bound its newest watermark record names (see
    /// [`sluice_core::speed::PartitionWatermark::purge_us`]): the speed rows hold the rows
    /// before it and none after.
    pub speed_release_bounds: BTreeMap<i32, i64>,
    /// No partition's transaction was read part of the way: the speed rows are exactly the
    /// state of the offsets in `speed_offsets`.
    pub speed_consistent: bool,
}

/// What a snapshot is built from.
pub(crate) struct Inputs<'a> {
    pub stage: &'a AggregateStage,
    pub codec: &'a SpeedCodec,
    pub key_columns: &'a [String],
    pub batch: Option<&'a BatchView>,
    /// Whether `batch` is what the view table held (and `None` that it does not exist yet),
    /// rather than nothing read so far.
    pub batch_loaded: bool,
    pub speed: &'a SpeedView,
}

impl Snapshot {
    pub fn empty(stage: &AggregateStage) -> Snapshot {
        Snapshot {
            built_at_ms: chrono::Utc::now().timestamp_millis(),
            cutoff_us: None,
            watermark_us: None,
            newest_data_ms: None,
            speed_version: 0,
            batch_version: None,
            batch_loaded: false,
            table: RecordBatch::new_empty(table_schema(stage)),
            origins: Vec::new(),
            window_starts: Vec::new(),
            json: Vec::new(),
            order: Vec::new(),
            by_key: HashMap::new(),
            counts: OriginCounts::default(),
            batch_partial_rows: 0,
            speed_partial_rows: 0,
            speed_offsets: BTreeMap::new(),
            speed_release_bounds: BTreeMap::new(),
            speed_consistent: true,
        }
    }

    pub fn build(inputs: &Inputs<'_>) -> Result<Snapshot> {
        let stage = inputs.stage;
        let cutoff_us = inputs.batch.and_then(|b| b.cutoff_us);
        let batch_partials: &[RecordBatch] = inputs.batch.map_or(&[], |b| &b.partials);
        let records: Vec<(&[u8], &[u8])> = inputs
            .speed
            .rows
            .iter()
            .map(|((_, key), value)| (key.as_slice(), value.as_slice()))
            .collect();
        let speed = stage.buckets_in(&inputs.codec.decode(&records)?, cutoff_us, None)?;
        let finalized = stage.finalize_layers(batch_partials, std::slice::from_ref(&speed))?;
        let origins = finalized.origins;
        let keys = key_texts(&finalized.rows, inputs.key_columns)?;
        let order = sorted_order(&keys, &finalized.window_starts);
        let mut by_key: HashMap<String, Vec<usize>> = HashMap::new();
        for &row in &order {
            by_key.entry(keys[row].clone()).or_default().push(row);
        }
        let newest_speed = inputs
            .speed
            .newest_record_ms
            .filter(|_| speed.num_rows() > 0);
        let newest_batch = inputs.batch.and_then(|b| b.last_run.timestamp_ms);
        Ok(Snapshot {
            built_at_ms: chrono::Utc::now().timestamp_millis(),
            cutoff_us,
            watermark_us: inputs.speed.watermark_us(),
            newest_data_ms: newest_speed.or(newest_batch),
            speed_version: inputs.speed.version,
            batch_version: inputs.batch.map(|b| b.version),
            batch_loaded: inputs.batch_loaded,
            table: with_origins(stage, &finalized.rows, &origins)?,
            json: json_rows(&finalized.rows)?,
            counts: count(&origins),
            origins,
            window_starts: finalized.window_starts,
            order,
            by_key,
            batch_partial_rows: batch_partials.iter().map(RecordBatch::num_rows).sum(),
            speed_partial_rows: speed.num_rows(),
            speed_offsets: inputs.speed.source_offsets.clone(),
            speed_release_bounds: inputs
                .speed
                .watermarks
                .iter()
                .filter_map(|(&partition, w)| Some((partition, w.purge_us?)))
                .collect(),
            speed_consistent: inputs.speed.mid_transaction.is_empty(),
        })
    }
}

fn internal(during: &str) -> impl Fn(arrow::error::ArrowError) -> ServingError + '_ {
    move |e| ServingError::Internal(format!("{during}: {e}"))
}

fn table_schema(stage: &AggregateStage) -> Arc<Schema> {
    let mut fields: Vec<Field> = stage
        .output_schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(ORIGIN_COLUMN, DataType::Utf8, false));
    Arc::new(Schema::new(fields))
}

fn with_origins(
    stage: &AggregateStage,
    rows: &RecordBatch,
    origins: &[Origin],
) -> Result<RecordBatch> {
    let mut columns: Vec<ArrayRef> = rows.columns().to_vec();
    columns.push(Arc::new(StringArray::from_iter_values(
        origins.iter().map(|o| o.as_str()),
    )));
    RecordBatch::try_new(table_schema(stage), columns).map_err(internal("adding origins"))
}

/// Each row's view-key values as text, joined by `,` (the `key` query parameter's form).
fn key_texts(rows: &RecordBatch, key_columns: &[String]) -> Result<Vec<String>> {
    let columns: Vec<&ArrayRef> = key_columns
        .iter()
        .filter_map(|name| rows.column_by_name(name))
        .collect();
    (0..rows.num_rows())
        .map(|row| {
            let values = columns
                .iter()
                .map(|c| key_text(c, row))
                .collect::<Result<Vec<_>>>()?;
            Ok(values.join(","))
        })
        .collect()
}

fn key_text(column: &ArrayRef, row: usize) -> Result<String> {
    if column.is_null(row) {
        return Ok("null".to_string());
    }
    array_value_to_string(column, row).map_err(internal("rendering a key"))
}

fn sorted_order(keys: &[String], window_starts: &[Option<i64>]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by(|&a, &b| (&keys[a], window_starts[a]).cmp(&(&keys[b], window_starts[b])));
    order
}

fn json_rows(rows: &RecordBatch) -> Result<Vec<String>> {
    let lines = to_json_lines(std::slice::from_ref(rows))?;
    Ok(String::from_utf8_lossy(&lines)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

fn count(origins: &[Origin]) -> OriginCounts {
    let mut counts = OriginCounts::default();
    for origin in origins {
        match origin {
            Origin::Batch => counts.batch += 1,
            Origin::Speed => counts.speed += 1,
            Origin::Merged => counts.merged += 1,
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    const SQL: &str = "SELECT region,
  HOP_START(event_time, INTERVAL '1' MINUTE, INTERVAL '2' MINUTE) AS ws,
  COUNT(*) AS n, SUM(amount) AS total, AVG(amount) AS mean, COUNT(DISTINCT order_id) AS ids
  FROM orders GROUP BY region, HOP(event_time, INTERVAL '1' MINUTE, INTERVAL '2' MINUTE)";

    /// 11:00 on 2024-05-01, a bucket boundary.
    const CUTOFF_US: i64 = 1_714_561_200_000_000;

    fn merged_snapshot() -> (Snapshot, RecordBatch) {
        use sluice_core::lake::CommitSummary;
        use sluice_core::{JobPlan, JsonDecoder};
        let job = sluice_core::fixture::OrdersJob::default().job(SQL);
        let plan = JobPlan::compile(&job, job.source_schema()).expect("plan");
        let lines = [
            r#"{"region":"eu","amount":2.0,"order_id":"a","event_time":1714561170000}"#,
            r#"{"region":"eu","amount":4.0,"order_id":"b","event_time":1714561210000}"#,
            r#"{"region":"us","amount":1.0,"order_id":"c","event_time":1714561100000}"#,
            r#"{"region":"us","amount":7.0,"order_id":"c","event_time":1714561150000}"#,
        ];
        let decoded = JsonDecoder::new(&job).decode(&lines).expect("decode");
        let partial = plan.partial(&decoded.batch).expect("partial");
        let stage = plan.aggregate().expect("aggregate");
        let codec = SpeedCodec::new(stage);
        let batch = BatchView {
            version: 3,
            cutoff_us: Some(CUTOFF_US),
            partials: vec![stage.buckets_in(&partial, None, Some(CUTOFF_US)).unwrap()],
            last_run: CommitSummary {
                version: 3,
                timestamp_ms: Some(0),
                info: Default::default(),
            },
        };
        // The speed layer keeps every bucket, also those the batch view now covers.
        let mut speed = SpeedView::default();
        for row in 0..partial.num_rows() {
            let key = codec.key(&partial, row).unwrap();
            speed
                .rows
                .insert((row as i32 % 2, key), codec.value(&partial, row).unwrap());
        }
        let snapshot = Snapshot::build(&Inputs {
            stage,
            codec: &codec,
            key_columns: &job.spec.view.key,
            batch: Some(&batch),
            batch_loaded: true,
            speed: &speed,
        })
        .expect("snapshot");
        let expected = stage.finalize(&[partial]).unwrap();
        (snapshot, expected)
    }

    fn sorted_lines(batch: &RecordBatch) -> Vec<String> {
        let mut lines: Vec<String> =
            String::from_utf8(to_json_lines(std::slice::from_ref(batch)).unwrap())
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect();
        lines.sort();
        lines
    }

    #[test]
    fn merging_both_layers_equals_finalizing_every_event_and_names_origins() {
        let (snapshot, expected) = merged_snapshot();
        let rows = snapshot
            .table
            .project(&(0..expected.num_columns()).collect::<Vec<_>>())
            .unwrap();
        assert_eq!(sorted_lines(&rows), sorted_lines(&expected));
        let eu: Vec<(Origin, serde_json::Value)> = snapshot.by_key["eu"]
            .iter()
            .map(|&r| {
                (
                    snapshot.origins[r],
                    serde_json::from_str(&snapshot.json[r]).unwrap(),
                )
            })
            .collect();
        // HOP windows [10:58, 11:00), [10:59, 11:01) (straddles the cutoff) and [11:00, 11:02).
        assert_eq!(
            eu.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
            vec![Origin::Batch, Origin::Merged, Origin::Speed]
        );
        assert_eq!(eu[1].1["n"], 2);
        assert_eq!(
            eu[1].1["mean"], 3.0,
            "AVG over both layers is the true average"
        );
        assert_eq!(
            snapshot.counts,
            OriginCounts {
                batch: 4,
                speed: 1,
                merged: 1
            }
        );
        assert_eq!(snapshot.cutoff_us, Some(CUTOFF_US));
    }

    #[test]
    fn view_queries_select_by_key_and_window_start() {
        use crate::query::{JobShape, ViewQuery, render, select};
        let (snapshot, _) = merged_snapshot();
        let shape = JobShape {
            has_key: true,
            has_window: true,
            job: "t",
        };
        let query = ViewQuery {
            key: Some("eu".into()),
            from: Some("2024-05-01T10:59:00Z".into()),
            to: None,
            limit: Some(1),
        };
        let selection = select(&snapshot, &shape, &query).unwrap();
        assert_eq!(selection.rows.len(), 1);
        assert!(selection.truncated);
        let body: serde_json::Value =
            serde_json::from_str(&render(&snapshot, ("t", 1), &selection)).unwrap();
        assert_eq!(body["rows"][0]["origin"], "merged");
        assert_eq!(body["rows"][0]["row"]["ws"], "2024-05-01T10:59:00Z");
        assert_eq!(body["cutoff"], "2024-05-01T11:00:00Z");
        let bad = ViewQuery {
            from: Some("yesterday-ish".into()),
            ..ViewQuery::default()
        };
        let error = select(&snapshot, &shape, &bad).unwrap_err().to_string();
        assert!(error.contains("`from`"), "{error}");
        let keyless = JobShape {
            has_key: false,
            has_window: true,
            job: "t",
        };
        let keyed = ViewQuery {
            key: Some("eu".into()),
            ..ViewQuery::default()
        };
        assert!(select(&snapshot, &keyless, &keyed).is_err());
    }

    #[test]
    fn rows_sort_by_key_then_window() {
        let keys = vec!["us".to_string(), "eu".to_string(), "eu".to_string()];
        let starts = vec![Some(1), Some(5), Some(2)];
        assert_eq!(sorted_order(&keys, &starts), vec![2, 1, 0]);
    }
}
