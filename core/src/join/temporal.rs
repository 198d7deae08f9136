//! The event-time temporal join (`… JOIN t FOR SYSTEM_TIME AS OF s.event_time ON s.k = t.k`):
//! the one implementation both layers run, over [`OperatorState`].
//!
//! The rule both layers meet (docs/design/joins.md §3.1): a stream row at time `t` joins, per
//! join key, the table version with the greatest (`valid_from`, row id) such that
//! `valid_from ≤ t`; with none (or a null key) it gets nulls for LEFT JOIN and no row for an
//! inner join. The answer depends on which versions exist, never on when the row arrived, so
//! a row waits ([`SpaceKind::JoinWaiting`]) until the caller's *bound* passes its time — the
//! table watermark in the speed layer (no version at or before `t` can still come), the end of
//! the input in the batch layer, which loads the table's versions first — and is then joined
//! by one backwards seek per row ([`OperatorState::last_in`]) in [`SpaceKind::JoinVersion`].
//!
//! Row ids order versions with equal `valid_from` alike in both layers: the table record's
//! (partition, offset) in the speed layer and in the raw table, the encoded row for rows
//! loaded from files.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef, TimestampMicrosecondType};
use datafusion::physical_expr::PhysicalExpr;

use crate::dedup::RowId;
use crate::error::{Error, Result, arrow_err};
use crate::operator_state::{
    OperatorState, Space, SpaceKind, keyed_value, split_keyed, time_key, time_of_key, time_prefixed,
};
use crate::state_codec::StateCodec;

/// Which stream rows a temporal join keeps when no version matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinKind {
    /// No row.
    Inner,
    /// The stream row, the table's columns null.
    Left,
}

/// What the plan compiler gives a temporal join.
#[derive(Debug)]
pub struct TemporalJoinParts {
    /// The job, named in errors.
    pub job: String,
    /// The table input joined (its name in the job).
    pub table: String,
    /// The stream's rows (its source schema) and their event-time column.
    pub probe_schema: SchemaRef,
    pub probe_time: usize,
    /// The ON clause's key expressions over the stream's rows, pairwise equal in type to
    /// `table_keys` (the compiler casts where SQL coerces).
    pub probe_keys: Vec<Arc<dyn PhysicalExpr>>,
    /// The table's rows (its source schema) and their `valid_from` column.
    pub table_schema: SchemaRef,
    pub table_time: usize,
    pub table_keys: Vec<Arc<dyn PhysicalExpr>>,
    pub kind: JoinKind,
}

/// A compiled temporal join (see the module docs).
#[derive(Debug, Clone)]
pub struct TemporalJoin {
    job: String,
    table: String,
    probe_schema: SchemaRef,
    probe_time: usize,
    probe_keys: Vec<Arc<dyn PhysicalExpr>>,
    table_schema: SchemaRef,
    table_time: usize,
    table_keys: Vec<Arc<dyn PhysicalExpr>>,
    kind: JoinKind,
    output_schema: SchemaRef,
    key_codec: StateCodec,
    probe_codec: StateCodec,
    table_codec: StateCodec,
}

/// Stream rows a release joined, in (time, id) order.
#[derive(Debug)]
pub struct Joined {
    /// The stream row's columns, then the table's ([`TemporalJoin::output_schema`]).
    pub rows: RecordBatch,
    /// The stream row's id, per joined row.
    pub ids: Vec<RowId>,
    /// Stream rows no version matched (kept with nulls by LEFT JOIN, dropped by inner).
    pub unmatched: usize,
}

impl TemporalJoin {
    pub fn new(parts: TemporalJoinParts) -> Result<TemporalJoin> {
        let TemporalJoinParts {
            job,
            table,
            probe_schema,
            probe_time,
            probe_keys,
            table_schema,
            table_time,
            table_keys,
            kind,
        } = parts;
        if probe_keys.is_empty() || probe_keys.len() != table_keys.len() {
            return Err(Error::OperatorState(format!(
                "a temporal join needs as many stream keys as table keys, at least one (got {} and {})",
                probe_keys.len(),
                table_keys.len()
            )));
        }
        let mut key_fields: Vec<FieldRef> = Vec::with_capacity(probe_keys.len());
        for (i, (probe, table)) in probe_keys.iter().zip(&table_keys).enumerate() {
            let probe_type = probe
                .data_type(&probe_schema)
                .map_err(|e| Error::OperatorState(format!("join key {i} of the stream: {e}")))?;
            let table_type = table
                .data_type(&table_schema)
                .map_err(|e| Error::OperatorState(format!("join key {i} of the table: {e}")))?;
            if probe_type != table_type {
                return Err(Error::OperatorState(format!(
                    "join key {i} is {probe_type} on the stream but {table_type} on the table"
                )));
            }
            key_fields.push(Arc::new(Field::new(format!("k{i}"), probe_type, true)));
        }
        for (schema, time, side) in [
            (&probe_schema, probe_time, "stream's event time"),
            (&table_schema, table_time, "table's valid_from"),
        ] {
            let is_micros = schema
                .fields()
                .get(time)
                .is_some_and(|f| f.data_type() == &crate::spec::timestamp_type());
            if !is_micros {
                return Err(Error::OperatorState(format!(
                    "the {side} (column {time}) is not a UTC microsecond timestamp"
                )));
            }
        }
        let padded = kind == JoinKind::Left;
        let output_fields: Vec<FieldRef> = probe_schema
            .fields()
            .iter()
            .cloned()
            .chain(
                table_schema
                    .fields()
                    .iter()
                    .map(|f| Arc::new(f.as_ref().clone().with_nullable(f.is_nullable() || padded))),
            )
            .collect();
        Ok(TemporalJoin {
            probe_codec: StateCodec::new(probe_schema.fields().iter().cloned().collect()),
            table_codec: StateCodec::new(table_schema.fields().iter().cloned().collect()),
            key_codec: StateCodec::new(key_fields),
            output_schema: Arc::new(Schema::new(output_fields)),
            job,
            table,
            probe_schema,
            probe_time,
            probe_keys,
            table_schema,
            table_time,
            table_keys,
            kind,
        })
    }

    /// The joined rows' schema: the stream's columns, then the table's (nullable for LEFT).
    pub fn output_schema(&self) -> &SchemaRef {
        &self.output_schema
    }

    /// The table input joined (its name in the job: [`crate::Job::input`]).
    pub fn table_input(&self) -> &str {
        &self.table
    }

    /// The encoding of table row `row` of `rows`, for the id of a version loaded from a file
    /// ([`RowId::content`]).
    pub fn encode_table_row(&self, rows: &RecordBatch, row: usize) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.table_codec.encode_row(rows.columns(), row, &mut out)?;
        Ok(out)
    }

    pub fn probe_schema(&self) -> &SchemaRef {
        &self.probe_schema
    }

    pub fn table_schema(&self) -> &SchemaRef {
        &self.table_schema
    }

    pub fn kind(&self) -> JoinKind {
        self.kind
    }

    /// The valid_from times of table rows (µs).
    pub fn valid_from(&self, rows: &RecordBatch) -> Result<Vec<i64>> {
        times(rows, self.table_time, "valid_from")
    }

    /// The event times of stream rows (µs).
    pub fn event_times(&self, rows: &RecordBatch) -> Result<Vec<i64>> {
        times(rows, self.probe_time, "event time")
    }

    /// Adds table rows (with their ids) as versions. A row with a null key can never match and
    /// is not kept; a version written twice (a redelivered record) is one version.
    pub fn add_versions(
        &self,
        state: &mut dyn OperatorState,
        rows: &RecordBatch,
        ids: &[RowId],
    ) -> Result<()> {
        check_rows(&self.table_schema, rows, Some(ids.len()), "table")?;
        let valid_from = self.valid_from(rows)?;
        let keys = self.keys(&self.table_keys, rows)?;
        for (row, key) in keys.into_iter().enumerate() {
            let Some(mut key) = key else {
                continue;
            };
            key.extend_from_slice(&time_key(valid_from[row]));
            key.extend_from_slice(ids[row].as_bytes());
            let mut value = Vec::with_capacity(64);
            self.table_codec
                .encode_row(rows.columns(), row, &mut value)?;
            state.put(Space::new(0, SpaceKind::JoinVersion), key, value);
        }
        Ok(())
    }

    /// Puts stream rows (one task's, with their ids) in the state until a release joins them.
    pub fn hold(
        &self,
        state: &mut dyn OperatorState,
        rows: &RecordBatch,
        ids: &[RowId],
    ) -> Result<()> {
        check_rows(&self.probe_schema, rows, Some(ids.len()), "stream")?;
        let times = self.event_times(rows)?;
        let keys = self.keys(&self.probe_keys, rows)?;
        for (row, key) in keys.into_iter().enumerate() {
            let mut value = keyed_value(key.as_deref(), 64);
            self.probe_codec
                .encode_row(rows.columns(), row, &mut value)?;
            state.put(
                Space::new(0, SpaceKind::JoinWaiting),
                time_prefixed(times[row], ids[row].as_bytes()),
                value,
            );
        }
        Ok(())
    }

    /// Joins every held stream row with time `< bound` (µs), in (time, id) order, with the
    /// version valid at its time, and forgets the rows.
    pub fn release(&self, state: &mut dyn OperatorState, bound: i64) -> Result<Joined> {
        let waiting = Space::new(0, SpaceKind::JoinWaiting);
        let held = state.range(waiting, &time_key(i64::MIN), &time_key(bound))?;
        let mut probe_rows = Vec::with_capacity(held.len());
        let mut versions = Versions::default();
        let mut ids = Vec::with_capacity(held.len());
        for (held_key, value) in held {
            let time = time_of_key(&held_key).ok_or_else(|| corrupt("waiting row key"))?;
            let (key, row) = split_waiting(&value)?;
            let version = match key {
                Some(key) => self.version_at(state, key, time)?,
                None => None,
            };
            state.delete(waiting, held_key.clone());
            if versions.add(version, self.kind) {
                probe_rows.push(row.to_vec());
                ids.push(RowId::from_bytes(held_key[8..].to_vec()));
            }
        }
        let probe = match probe_rows.is_empty() {
            true => Vec::new(),
            false => self.probe_codec.decode_rows(&probe_rows)?,
        };
        Ok(Joined {
            rows: self.joined(probe, probe_rows.len(), versions.matched, versions.of)?,
            ids,
            unmatched: versions.unmatched,
        })
    }

    /// Joins stream `rows` at once with the versions in `state`: what a release gives once
    /// every version up to the rows' times is there (the batch layer adds a table's versions
    /// before its stream rows). The joined rows are in input order; the second value is each
    /// one's input row.
    pub fn join_now(
        &self,
        state: &dyn OperatorState,
        rows: &RecordBatch,
    ) -> Result<(RecordBatch, Vec<usize>, usize)> {
        check_rows(&self.probe_schema, rows, None, "stream")?;
        let times = self.event_times(rows)?;
        let keys = self.keys(&self.probe_keys, rows)?;
        let mut versions = Versions::default();
        let mut kept = Vec::with_capacity(rows.num_rows());
        for (row, key) in keys.iter().enumerate() {
            let version = match key {
                Some(key) => self.version_at(state, key, times[row])?,
                None => None,
            };
            if versions.add(version, self.kind) {
                kept.push(row);
            }
        }
        let indices = UInt32Array::from_iter_values(kept.iter().map(|&r| r as u32));
        let probe = rows
            .columns()
            .iter()
            .map(|c| {
                arrow::compute::take(c.as_ref(), &indices, None)
                    .map_err(arrow_err("selecting joined stream rows"))
            })
            .collect::<Result<Vec<_>>>()?;
        let joined = self.joined(probe, kept.len(), versions.matched, versions.of)?;
        Ok((joined, kept, versions.unmatched))
    }

    /// The version of `key` valid at `time`: the greatest (valid_from, id) with
    /// `valid_from ≤ time`.
    fn version_at(
        &self,
        state: &dyn OperatorState,
        key: &[u8],
        time: i64,
    ) -> Result<Option<Vec<u8>>> {
        let mut from = key.to_vec();
        from.extend_from_slice(&time_key(i64::MIN));
        let mut to = key.to_vec();
        match time.checked_add(1) {
            Some(after) => to.extend_from_slice(&time_key(after)),
            // Every valid_from is ≤ the greatest time: past every version's key.
            None => to.extend_from_slice(&[u8::MAX; 9]),
        }
        Ok(state
            .last_in(Space::new(0, SpaceKind::JoinVersion), &from, &to)?
            .map(|(_, version)| version))
    }

    /// `rows` stream rows' columns beside their versions (by index; `None`: nulls).
    fn joined(
        &self,
        mut columns: Vec<ArrayRef>,
        rows: usize,
        versions: Vec<Vec<u8>>,
        version_of: Vec<Option<u32>>,
    ) -> Result<RecordBatch> {
        if rows == 0 {
            return Ok(RecordBatch::new_empty(self.output_schema.clone()));
        }
        let table_columns: Vec<ArrayRef> = if versions.is_empty() {
            self.table_schema
                .fields()
                .iter()
                .map(|f| arrow::array::new_null_array(f.data_type(), rows))
                .collect()
        } else {
            let decoded = self.table_codec.decode_rows(&versions)?;
            let indices = UInt32Array::from(version_of);
            decoded
                .iter()
                .map(|column| {
                    arrow::compute::take(column.as_ref(), &indices, None)
                        .map_err(arrow_err("joining versions"))
                })
                .collect::<Result<Vec<_>>>()?
        };
        columns.extend(table_columns);
        RecordBatch::try_new(self.output_schema.clone(), columns)
            .map_err(arrow_err("building joined rows"))
    }

    /// The encoded join key of each row (`None` where a key column is null: SQL equality
    /// matches no null).
    fn keys(
        &self,
        exprs: &[Arc<dyn PhysicalExpr>],
        rows: &RecordBatch,
    ) -> Result<Vec<Option<Vec<u8>>>> {
        let columns = exprs
            .iter()
            .map(|e| {
                e.evaluate(rows)
                    .and_then(|v| v.into_array(rows.num_rows()))
                    .map_err(|source| Error::Execution {
                        job: self.job.clone(),
                        during: "evaluating a join key",
                        source: Box::new(source),
                    })
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        (0..rows.num_rows())
            .map(|row| {
                if columns.iter().any(|c| c.is_null(row)) {
                    return Ok(None);
                }
                let mut key = Vec::with_capacity(32);
                self.key_codec.encode_row(&columns, row, &mut key)?;
                Ok(Some(key))
            })
            .collect()
    }
}

/// The versions the rows of a join matched, and which each output row gets.
#[derive(Default)]
struct Versions {
    matched: Vec<Vec<u8>>,
    /// Per output row, its version's index in `matched` (`None`: padded with nulls).
    of: Vec<Option<u32>>,
    unmatched: usize,
}

impl Versions {
    /// Records a stream row's version (`None`: no match); whether the row is output.
    fn add(&mut self, version: Option<Vec<u8>>, kind: JoinKind) -> bool {
        match version {
            Some(version) => {
                self.of.push(Some(self.matched.len() as u32));
                self.matched.push(version);
                true
            }
            None => {
                self.unmatched += 1;
                if kind == JoinKind::Inner {
                    return false;
                }
                self.of.push(None);
                true
            }
        }
    }
}

fn times(rows: &RecordBatch, column: usize, what: &str) -> Result<Vec<i64>> {
    let times = rows
        .columns()
        .get(column)
        .filter(|c| matches!(c.data_type(), DataType::Timestamp(_, _)))
        .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
        .ok_or_else(|| {
            Error::OperatorState(format!("the {what} is not a microsecond timestamp"))
        })?;
    if let Some(row) = (0..times.len()).find(|&r| times.is_null(r)) {
        return Err(Error::OperatorState(format!(
            "row {row} has no {what} to join by"
        )));
    }
    Ok(times.values().to_vec())
}

/// `rows` have `schema`'s fields, and as many ids as rows when ids come with them.
fn check_rows(
    schema: &SchemaRef,
    rows: &RecordBatch,
    ids: Option<usize>,
    side: &str,
) -> Result<()> {
    if !crate::plan::same_fields(schema, rows.schema_ref()) {
        return Err(Error::OperatorState(format!(
            "{side} rows to join have the schema {:?}, not the {side}'s",
            rows.schema_ref().fields()
        )));
    }
    if let Some(ids) = ids.filter(|&ids| ids != rows.num_rows()) {
        return Err(Error::OperatorState(format!(
            "{ids} row ids for {} {side} rows",
            rows.num_rows()
        )));
    }
    Ok(())
}

fn corrupt(what: &str) -> Error {
    Error::OperatorState(format!("corrupt join state: bad {what}"))
}

/// A waiting value: its join key (`None` for a null one) and its encoded row.
fn split_waiting(value: &[u8]) -> Result<(Option<&[u8]>, &[u8])> {
    split_keyed(value).ok_or_else(|| corrupt("waiting row"))
}

#[cfg(test)]
#[path = "temporal_tests.rs"]
mod tests;
