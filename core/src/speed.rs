//! The `<job>.speed` record format: the speed layer's changelog and the speed view the serving
//! layer reads.
//!
//! Each record of `<job>.speed` partition `p` is one partial-state row of source partition `p`:
//!
//! ```text
//! key   := state_codec row of [__key_0.., __window_start, __window_end, __bucket]
//! value := state_codec row of [__state_0_0..]          (absent = tombstone: the row is gone)
//! ```
//!
//! Because the key encoding is self-delimiting and ordered key columns → window → bucket, the
//! encoding of `[__key_0..]` (or `[__key_0.., __window_start, __window_end]`) is a byte prefix
//! of every row key with those values: the state store scans a view key's windows or a window's
//! buckets by prefix.
//!
//! Two reserved keys per partition: [`WATERMARK_KEY`] holds the partition's watermark as JSON
//! ([`PartitionWatermark`]) so it survives restarts and the serving layer can show it, and
//! [`PLAN_KEY`] the fingerprint of the plan that writes the partition, so no other plan ever
//! runs on it. Row keys always start with the codec's version byte (1), so reserved keys
//! (starting 0, [`is_reserved_key`]) never collide with them.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch};
use serde::{Deserialize, Serialize};

use crate::aggregate::{AggregateStage, conform};
use crate::error::{Error, Result, arrow_err};
pub use crate::partial_layout::KeyPrefix;
use crate::partial_layout::PartialLayout;
use crate::state_codec::StateCodec;

/// The key of a `<job>.speed` partition's watermark record.
pub const WATERMARK_KEY: &[u8] = b"\x00sluice.watermark";

/// The key of a `<job>.speed` partition's plan record: the
/// [`crate::Job::plan_fingerprint`] (UTF-8) of the plan that writes the partition.
pub const PLAN_KEY: &[u8] = b"\x00sluice.plan";

/// A reserved record (watermark, plan), not a state row: reserved keys start with 0.
pub fn is_reserved_key(key: &[u8]) -> bool {
    key.first() == Some(&0)
}

/// A partition's event-time progress, as stored under [`WATERMARK_KEY`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionWatermark {
    /// Largest event time seen in the partition (µs since the epoch).
    pub max_event_us: i64,
    /// `max_event_us` minus the job's watermark delay.
    pub watermark_us: i64,
    /// The job watermark up to which closed windows were emitted to `<job>.results`.
    #[serde(default)]
    pub emitted_us: Option<i64>,
    /// Every record of the source partition before this offset is reflected in the state
    /// written with this record (absent in records from before offsets were kept): the cut
    /// `sluice verify` compares the raw table at. The daemon writes the watermark record last
    /// among a partition's records of a transaction, so a reader that has just applied it
    /// holds exactly the state of the offsets before this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_next_offset: Option<i64>,
    /// A deduplicating job's release bound (µs, see [`crate::dedup`]): every held row before
    /// it was decided, so a record of the partition with an earlier event time is late. Only
    /// grows; absent for other jobs, whose records stay as they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purge_us: Option<i64>,
}

impl PartitionWatermark {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<PartitionWatermark> {
        serde_json::from_slice(bytes)
            .map_err(|e| Error::StateCodec(format!("reading a speed watermark record: {e}")))
    }
}

/// What a replay computes from the raw table for one source partition, to start a new view
/// version's speed layer where the lake ends (see `sluice replay`): the partial states of the
/// partition's landed rows at or after the new batch view's cutoff, and where its Kafka
/// records continue.
#[derive(Debug, Clone)]
pub struct SpeedSeed {
    pub partition: i32,
    /// Partial rows ([`AggregateStage::partial_schema`]), merged per (key, window, bucket).
    pub partials: RecordBatch,
    /// The largest event time among the partition's seeded rows (µs).
    pub max_event_us: Option<i64>,
    /// The source offset the speed layer continues from: every record before it is in the
    /// raw table (seeded, below the cutoff, or dead-lettered).
    pub next_offset: i64,
    /// A job with stateful stages (dedup, `unique`): the release bound the seed decided the
    /// partition's rows at (see [`PartitionWatermark::purge_us`]); `None` for other jobs.
    pub purge_us: Option<i64>,
    /// The stages' state after that release (held rows, last-seen keys), keyed as the speed
    /// layer's `<job>.state` records are (see `MemState::into_tagged`); empty for other jobs.
    pub operator_state: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Encodes partial-state rows as `<job>.speed` records and decodes them back.
#[derive(Debug, Clone)]
pub struct SpeedCodec {
    key: StateCodec,
    state: StateCodec,
    stage_partial_schema: arrow::datatypes::SchemaRef,
    layout: PartialLayout,
    /// Bytes the bucket takes at the end of every row key.
    bucket_suffix: usize,
}

impl SpeedCodec {
    pub fn new(stage: &AggregateStage) -> SpeedCodec {
        let schema = stage.partial_schema().clone();
        let layout = stage.layout();
        let bucket = schema.field(layout.bucket());
        // Invariant: the bucket is a non-null timestamp, so its encoding has a fixed width.
        let bucket_suffix = StateCodec::present_width(bucket.data_type()).unwrap_or(0);
        SpeedCodec {
            key: StateCodec::new(schema.fields()[layout.row_key()].to_vec()),
            state: stage.state_codec(),
            stage_partial_schema: schema,
            layout,
            bucket_suffix,
        }
    }

    /// The record key of `row` of a partial batch.
    pub fn key(&self, partial: &RecordBatch, row: usize) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(32);
        self.key
            .encode_row(&partial.columns()[self.layout.row_key()], row, &mut out)?;
        Ok(out)
    }

    /// The byte prefix shared by every row key with `row`'s view key (and window).
    pub fn prefix(&self, partial: &RecordBatch, row: usize, prefix: KeyPrefix) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(32);
        self.key.encode_row(
            &partial.columns()[self.layout.prefix(prefix)],
            row,
            &mut out,
        )?;
        Ok(out)
    }

    /// The record value (the encoded partial states) of `row` of a partial batch.
    pub fn value(&self, partial: &RecordBatch, row: usize) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(32);
        self.state
            .encode_row(&partial.columns()[self.layout.states()], row, &mut out)?;
        Ok(out)
    }

    /// Rebuilds a partial batch from `(key, value)` records (no tombstones, no watermark keys).
    pub fn decode<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &self,
        records: &[(K, V)],
    ) -> Result<RecordBatch> {
        if records.is_empty() {
            return Ok(RecordBatch::new_empty(self.stage_partial_schema.clone()));
        }
        let keys: Vec<&[u8]> = records.iter().map(|(k, _)| k.as_ref()).collect();
        let values: Vec<&[u8]> = records.iter().map(|(_, v)| v.as_ref()).collect();
        let mut columns: Vec<ArrayRef> = self.key.decode_rows(&keys)?;
        columns.extend(self.state.decode_rows(&values)?);
        let columns = columns
            .into_iter()
            .zip(self.stage_partial_schema.fields())
            .map(|(column, field)| conform(column, field))
            .collect::<Result<Vec<_>>>()?;
        RecordBatch::try_new(Arc::clone(&self.stage_partial_schema), columns)
            .map_err(arrow_err("rebuilding partial states from speed records"))
    }

    /// The [`KeyPrefix::Window`] prefix of a row key: everything but the bucket, which is
    /// always last and of fixed width.
    pub fn window_prefix_of<'k>(&self, key: &'k [u8]) -> &'k [u8] {
        &key[..key.len().saturating_sub(self.bucket_suffix)]
    }

    /// The bucket (µs) and window end (µs, `None` without a group window) of a row key.
    pub fn key_times(&self, key: &[u8]) -> Result<(i64, Option<i64>)> {
        let columns = self.key.decode_rows(&[key])?;
        let micros = |column: &ArrayRef| -> Option<i64> {
            column
                .as_any()
                .downcast_ref::<arrow::array::TimestampMicrosecondArray>()
                .filter(|a| a.is_valid(0))
                .map(|a| a.value(0))
        };
        let bucket = micros(&columns[self.layout.bucket()])
            .ok_or_else(|| Error::StateCodec("a speed key without a bucket".to_string()))?;
        Ok((bucket, micros(&columns[self.layout.window_end()])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::OrdersJob;
    use crate::plan::JobPlan;
    use crate::{JsonDecoder, rows};

    const SQL: &str = "SELECT region,
  HOP_START(event_time, INTERVAL '1' MINUTE, INTERVAL '2' MINUTE) AS ws,
  COUNT(*) AS n, SUM(amount) AS total, AVG(amount) AS mean,
  COUNT(DISTINCT order_id) AS ids, MIN(amount) AS lo
  FROM orders GROUP BY region, HOP(event_time, INTERVAL '1' MINUTE, INTERVAL '2' MINUTE)";

    fn partial() -> (JobPlan, RecordBatch) {
        let job = OrdersJob::default().job(SQL);
        let plan = JobPlan::compile(&job, job.source_schema()).expect("plan");
        let lines = [
            r#"{"region":"eu","amount":2.5,"order_id":"a","event_time":1714557600000}"#,
            r#"{"region":"eu","amount":4.0,"order_id":"b","event_time":1714557630000}"#,
            r#"{"region":null,"amount":null,"order_id":"a","event_time":1714561199000}"#,
            r#"{"region":"us","amount":1.0,"order_id":"c","event_time":1714561200000}"#,
        ];
        let decoded = JsonDecoder::new(&job).decode(&lines).expect("decode");
        let partial = plan.partial(&decoded.batch).expect("partial");
        (plan, partial)
    }

    #[test]
    fn real_plan_states_round_trip_through_speed_records() {
        let (plan, partial) = partial();
        let stage = plan.aggregate().expect("aggregate job");
        let codec = SpeedCodec::new(stage);
        let records: Vec<(Vec<u8>, Vec<u8>)> = (0..partial.num_rows())
            .map(|r| {
                (
                    codec.key(&partial, r).unwrap(),
                    codec.value(&partial, r).unwrap(),
                )
            })
            .collect();
        assert!(partial.num_rows() >= 6, "HOP assigns two windows per event");
        let decoded = codec.decode(&records).expect("decode");
        assert_eq!(decoded, partial);
        let before = rows::to_json_lines(&[stage.finalize(&[partial]).unwrap()]).unwrap();
        let after = rows::to_json_lines(&[stage.finalize(&[decoded]).unwrap()]).unwrap();
        assert_eq!(before, after);
    }

    #[test]
    fn prefixes_are_byte_prefixes_of_row_keys_and_times_decode() {
        let (plan, partial) = partial();
        let codec = SpeedCodec::new(plan.aggregate().expect("aggregate job"));
        for row in 0..partial.num_rows() {
            let key = codec.key(&partial, row).unwrap();
            let by_key = codec.prefix(&partial, row, KeyPrefix::ViewKey).unwrap();
            let by_window = codec.prefix(&partial, row, KeyPrefix::Window).unwrap();
            assert!(key.starts_with(&by_window) && by_window.starts_with(&by_key));
            assert!(by_window.len() > by_key.len() && key.len() > by_window.len());
            assert_eq!(codec.window_prefix_of(&key), by_window.as_slice());
            let (bucket, end) = codec.key_times(&key).unwrap();
            assert_eq!(bucket % 3_600_000_000, 0);
            assert!(end.is_some());
            assert_ne!(key[0], WATERMARK_KEY[0]);
        }
    }

    /// The bytes of `<job>.speed` are a format other versions read: any change to them (byte
    /// order, flags, field order) must fail here and be made on purpose, with a new version.
    #[test]
    fn speed_records_have_pinned_bytes() {
        let job = OrdersJob::default().job(
            "SELECT region, TUMBLE_START(event_time, INTERVAL '1' MINUTE) AS ws, COUNT(*) AS n,
  SUM(amount) AS total FROM orders GROUP BY region, TUMBLE(event_time, INTERVAL '1' MINUTE)",
        );
        let plan = JobPlan::compile(&job, job.source_schema()).expect("plan");
        let decoded = JsonDecoder::new(&job)
            .decode(&[r#"{"order_id":"o","region":"eu","amount":2.5,"event_time":60000}"#])
            .expect("decode");
        let partial = plan.partial(&decoded.batch).expect("partial");
        let codec = SpeedCodec::new(plan.aggregate().expect("aggregate"));
        let hex = |bytes: Vec<u8>| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        // version 1 | present, len 2 LE, "eu" | present, window start 60 s in µs, i64 LE |
        // present, window end 120 s | present, bucket 0 (1 h buckets).
        assert_eq!(
            hex(codec.key(&partial, 0).unwrap()),
            concat!(
                "01",
                "01",
                "02000000",
                "6575",
                "01",
                "0087930300000000",
                "01",
                "000e270700000000",
                "01",
                "0000000000000000"
            )
        );
        // version 1 | present, COUNT = 1 as i64 LE | present, SUM = 2.5 as f64 LE.
        assert_eq!(
            hex(codec.value(&partial, 0).unwrap()),
            concat!("01", "01", "0100000000000000", "01", "0000000000000440")
        );
        let mut watermark = PartitionWatermark {
            max_event_us: 2,
            watermark_us: 1,
            emitted_us: None,
            source_next_offset: None,
            purge_us: None,
        };
        assert_eq!(
            String::from_utf8(watermark.encode()).unwrap(),
            r#"{"max_event_us":2,"watermark_us":1,"emitted_us":null}"#
        );
        watermark.source_next_offset = Some(7);
        let encoded = watermark.encode();
        assert_eq!(
            String::from_utf8(encoded.clone()).unwrap(),
            r#"{"max_event_us":2,"watermark_us":1,"emitted_us":null,"source_next_offset":7}"#
        );
        assert_eq!(PartitionWatermark::decode(&encoded).unwrap(), watermark);
    }
}
