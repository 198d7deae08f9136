//! Routing a micro-batch: decode the records, divert the undecodable and the late, run the
//! shared plan per source partition and dead-letter the rows it fails on; a stateless job's
//! rows go to `<job>.results` and to the `[[outputs]]` they match.

use std::borrow::Cow;
use std::collections::BTreeMap;

use arrow::array::RecordBatch;
use sluice_core::rows::to_json_lines;
use sluice_core::{DivertReason, FailedRow};

use super::Processor;
use super::records::{Diverted, Output, RoutedRecord, SourceRecord};
use crate::error::Result;

impl Processor {
    /// `record` diverted for `error_type`: its copy as it may leave the job, with the job's
    /// PII fields protected in its value and key (unchanged without PII policies).
    pub(super) fn diverted(
        &self,
        record: &SourceRecord,
        error_type: DivertReason,
        message: String,
    ) -> Diverted {
        let redacted = self
            .decoder
            .redact(record.key.as_deref(), record.payload.as_deref());
        Diverted {
            record: SourceRecord {
                partition: record.partition,
                offset: record.offset,
                timestamp_ms: record.timestamp_ms,
                key: redacted.key.map(Cow::into_owned),
                payload: redacted.payload.map(Cow::into_owned),
            },
            error_type,
            message,
            field: None,
            check: None,
            watermark_us: None,
            event_time_us: None,
            pii: redacted.mark,
        }
    }

    /// `record` bound for `<job>.late`: its event time was behind `watermark_us` by `why`.
    pub(super) fn late_record(
        &self,
        record: &SourceRecord,
        (watermark_us, event_time_us): (i64, i64),
        why: &str,
    ) -> Diverted {
        Diverted {
            watermark_us: Some(watermark_us),
            event_time_us: Some(event_time_us),
            ..self.diverted(record, DivertReason::Late, why.to_string())
        }
    }

    /// The dead letter of `record`, whose row the plan failed on or a check rejected.
    pub(super) fn failed_row(&self, record: &SourceRecord, failed: FailedRow) -> Diverted {
        Diverted {
            field: failed.field,
            check: failed.check,
            ..self.diverted(record, failed.reason, failed.error.to_string())
        }
    }

    /// Decodes the payloads; undecodable records go to the DLQ. Returns the good rows and,
    /// per row, the record it came from.
    pub(super) fn decode<'r>(
        &self,
        records: &'r [SourceRecord],
        output: &mut Output,
    ) -> Result<(RecordBatch, Vec<&'r SourceRecord>)> {
        let (with_value, without): (Vec<&SourceRecord>, Vec<&SourceRecord>) =
            records.iter().partition(|r| r.payload.is_some());
        for record in without {
            output.dlq.push(self.diverted(
                record,
                DivertReason::MalformedJson,
                "the record has no value (a tombstone)".to_string(),
            ));
        }
        let payloads: Vec<&[u8]> = with_value
            .iter()
            .map(|r| r.payload.as_deref().unwrap_or_default())
            .collect();
        let stamps: Vec<Option<i64>> = with_value.iter().map(|r| r.timestamp_ms).collect();
        let decoded = self.decoder.decode_stamped(&payloads, &stamps)?;
        for error in decoded.errors {
            output.dlq.push(Diverted {
                field: error.field,
                ..self.diverted(with_value[error.index], error.kind, error.reason)
            });
        }
        let origin = decoded.rows.iter().map(|&i| with_value[i]).collect();
        Ok((decoded.batch, origin))
    }

    /// Marks which rows go on to the plan; late rows go to `<job>.late`. (The decoder already
    /// dead-lettered records without an event time: it is always a required field.)
    pub(super) fn divert_late(
        &self,
        times: &[i64],
        origin: &[&SourceRecord],
        output: &mut Output,
    ) -> Vec<bool> {
        let mut keep = vec![true; times.len()];
        for (partition, rows) in rows_per_partition(&keep.clone(), origin) {
            let Some(bound) = self.windows.emitted(partition) else {
                continue;
            };
            let part_times: Vec<i64> = rows.iter().map(|&r| times[r as usize]).collect();
            let late = self
                .pipeline
                .late_rows(&part_times, bound, self.windows.lateness_us());
            for (&row, _) in rows.iter().zip(late).filter(|(_, late)| *late) {
                let row = row as usize;
                keep[row] = false;
                output.late.push(self.late_record(
                    origin[row],
                    (bound, times[row]),
                    "every window of the event closed more than the allowed lateness ago",
                ));
            }
        }
        keep
    }

    /// The checks and stage 1 and 2 on one partition's rows. Rows the plan fails on (a UDF or
    /// transform error) or a `quarantine` check rejects are isolated by
    /// [`Pipeline::evaluate_isolating`] and go to the DLQ; the batch layer skips exactly the
    /// same rows.
    pub(super) fn run_plan(
        &mut self,
        partition: i32,
        part: &RecordBatch,
        rows: &[u32],
        origin: &[&SourceRecord],
        output: &mut Output,
    ) -> Result<()> {
        let isolated = self.pipeline.evaluate_isolating(part)?;
        if !isolated.failed.is_empty() {
            tracing::debug!(
                job = self.job.name(),
                partition,
                failed = isolated.failed.len(),
                "the plan failed on some rows or checks rejected them; they go to the DLQ"
            );
        }
        for failed in isolated.failed {
            let record = origin[rows[failed.row] as usize];
            output.dlq.push(self.failed_row(record, failed));
        }
        output.violations.extend(isolated.violations);
        for piece in isolated.pieces {
            self.absorb(partition, piece.output, output)?;
        }
        Ok(())
    }

    pub(super) fn absorb(
        &mut self,
        partition: i32,
        evaluated: RecordBatch,
        output: &mut Output,
    ) -> Result<()> {
        match self.pipeline.plan().aggregate() {
            None => {
                if let Some(router) = self.pipeline.outputs() {
                    for (index, rows) in router.route(&evaluated)? {
                        for value in json_lines(&rows)? {
                            output.routed.push(RoutedRecord {
                                output: index,
                                key: None,
                                value,
                            });
                        }
                    }
                }
                for value in json_lines(&evaluated)? {
                    output.results.push((None, value));
                }
                Ok(())
            }
            Some(_) => {
                let open = self.drop_expired_windows(evaluated, self.windows.emitted(partition))?;
                self.fold(partition, open, output)
            }
        }
    }
}

/// One JSON object per row, as `<job>.results` carries them.
fn json_lines(rows: &RecordBatch) -> Result<Vec<Vec<u8>>> {
    let lines = to_json_lines(std::slice::from_ref(rows))?;
    Ok(lines
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}

pub(super) fn max_event_per_partition(
    times: &[i64],
    origin: &[&SourceRecord],
) -> BTreeMap<i32, Option<i64>> {
    let mut out: BTreeMap<i32, Option<i64>> = BTreeMap::new();
    for (&time, record) in times.iter().zip(origin) {
        let slot = out.entry(record.partition).or_default();
        *slot = Some(slot.map_or(time, |t| t.max(time)));
    }
    out
}

pub(super) fn rows_per_partition(
    keep: &[bool],
    origin: &[&SourceRecord],
) -> BTreeMap<i32, Vec<u32>> {
    let mut out: BTreeMap<i32, Vec<u32>> = BTreeMap::new();
    for (row, record) in origin.iter().enumerate() {
        if keep[row] {
            out.entry(record.partition).or_default().push(row as u32);
        }
    }
    out
}
