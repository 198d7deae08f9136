//! Stage 2 of a [`crate::JobPlan`]: windows, partial aggregate states, merge and finalize.
//!
//! A *partial batch* holds one row per (group key, window, bucket) with the aggregates' partial
//! states as Arrow columns (see [`AggregateStage::partial_schema`]). Partial states are monoids:
//! [`AggregateStage::merge`] combines any partial batches in any grouping into the same states,
//! and [`AggregateStage::finalize`] turns them into result rows. The speed layer folds each
//! micro-batch's partials into its state; the batch layer folds a whole table; the serving
//! layer merges the two. All of them call these functions, which call DataFusion's accumulators.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatch, TimestampMicrosecondArray, UInt32Array,
    new_null_array,
};
use arrow::compute::{cast, concat_batches, filter_record_batch, take, take_record_batch};
use arrow::datatypes::{Field, Schema, SchemaRef, TimestampMicrosecondType};
use arrow::row::{Row, RowConverter, SortField};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::{GroupsAccumulatorAdapter, PhysicalExpr};

use crate::error::{Error, Result, arrow_err};
use crate::partial_layout::{Origin, PartialLayout};
use crate::spec::{UTC, timestamp_type};
use crate::state_codec::StateCodec;
use crate::window::{WindowKind, coalesce_sessions};

/// Column name of the window start in partial batches and view tables.
pub const WINDOW_START_COLUMN: &str = "__window_start";
/// Column name of the window end in partial batches and view tables.
pub const WINDOW_END_COLUMN: &str = "__window_end";
/// Column name of the event-time bucket in partial batches and view tables.
pub const BUCKET_COLUMN: &str = "__bucket";

/// One aggregate call of the SELECT, lowered to DataFusion.
#[derive(Debug)]
pub(crate) struct LoweredAggregateFn {
    pub function: Arc<AggregateFunctionExpr>,
    /// `FILTER (WHERE ...)` of the call.
    pub filter: Option<Arc<dyn PhysicalExpr>>,
}

/// What the plan compiler hands to [`AggregateStage::new`].
pub(crate) struct StageParts {
    pub job: String,
    pub input_schema: SchemaRef,
    pub event_time_index: usize,
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
    pub window: Option<WindowKind>,
    pub bucket: i64,
    pub aggregates: Vec<LoweredAggregateFn>,
    /// DataFusion's Aggregate output: keys, window bounds (when windowed), aggregate values.
    pub aggregate_output_schema: SchemaRef,
    pub having: Option<Arc<dyn PhysicalExpr>>,
    pub projection: Vec<Arc<dyn PhysicalExpr>>,
    pub output_schema: SchemaRef,
}

/// Stage 2 of a job plan. See the module docs.
#[derive(Debug)]
pub struct AggregateStage {
    job: String,
    event_time_index: usize,
    keys: Vec<Arc<dyn PhysicalExpr>>,
    window: Option<WindowKind>,
    bucket: i64,
    aggregates: Vec<LoweredAggregateFn>,
    state_fields: Vec<Arc<Field>>,
    state_widths: Vec<usize>,
    partial_schema: SchemaRef,
    aggregate_output_schema: SchemaRef,
    having: Option<Arc<dyn PhysicalExpr>>,
    projection: Vec<Arc<dyn PhysicalExpr>>,
    output_schema: SchemaRef,
    /// Output columns holding a GROUP BY key or a window bound: what identifies a result row.
    pub(crate) result_key: Vec<String>,
}

/// Result rows with, per row, the layers that contributed to it and its window start (µs;
/// `None` without a window).
#[derive(Debug, Clone)]
pub struct Finalized {
    pub rows: RecordBatch,
    pub origins: Vec<Origin>,
    pub window_starts: Vec<Option<i64>>,
}

fn retain<T>(values: Vec<T>, mask: &BooleanArray) -> Vec<T> {
    values
        .into_iter()
        .enumerate()
        .filter(|(i, _)| mask.is_valid(*i) && mask.value(*i))
        .map(|(_, v)| v)
        .collect()
}

/// Row groups of a set of columns: `ids[row]` is the row's group, `firsts[group]` its first row.
struct Groups {
    ids: Vec<usize>,
    firsts: Vec<u32>,
}

impl AggregateStage {
    pub(crate) fn new(parts: StageParts) -> Result<AggregateStage> {
        let df = |source| Error::Execution {
            job: parts.job.clone(),
            during: "building the aggregate stage",
            source: Box::new(source),
        };
        let mut fields = Vec::new();
        for (i, key) in parts.keys.iter().enumerate() {
            let data_type = key.data_type(&parts.input_schema).map_err(df)?;
            fields.push(Arc::new(Field::new(format!("__key_{i}"), data_type, true)));
        }
        fields.push(Arc::new(Field::new(
            WINDOW_START_COLUMN,
            timestamp_type(),
            true,
        )));
        fields.push(Arc::new(Field::new(
            WINDOW_END_COLUMN,
            timestamp_type(),
            true,
        )));
        fields.push(Arc::new(Field::new(BUCKET_COLUMN, timestamp_type(), false)));
        let mut state_fields = Vec::new();
        let mut state_widths = Vec::new();
        for (i, aggregate) in parts.aggregates.iter().enumerate() {
            let states = aggregate.function.state_fields().map_err(df)?;
            state_widths.push(states.len());
            for (j, state) in states.iter().enumerate() {
                let field = Arc::new(Field::new(
                    format!("__state_{i}_{j}"),
                    state.data_type().clone(),
                    true,
                ));
                state_fields.push(field.clone());
                fields.push(field);
            }
        }
        Ok(AggregateStage {
            job: parts.job,
            event_time_index: parts.event_time_index,
            keys: parts.keys,
            window: parts.window,
            bucket: parts.bucket,
            aggregates: parts.aggregates,
            state_fields,
            state_widths,
            partial_schema: Arc::new(Schema::new(fields)),
            aggregate_output_schema: parts.aggregate_output_schema,
            having: parts.having,
            projection: parts.projection,
            output_schema: parts.output_schema,
            result_key: Vec::new(),
        })
    }

    /// `[__key_0.., __window_start, __window_end, __bucket, __state_0_0..]`. Key and window
    /// columns are null-free except window bounds of a job without a group window (all null).
    pub fn partial_schema(&self) -> &SchemaRef {
        &self.partial_schema
    }

    /// The finalized result rows' schema (the SELECT list).
    pub fn output_schema(&self) -> &SchemaRef {
        &self.output_schema
    }

    /// The output columns that identify a finalized row: those holding GROUP BY keys and
    /// window bounds (a window bound the SELECT leaves out cannot be part of it).
    pub fn result_key_columns(&self) -> &[String] {
        &self.result_key
    }

    /// Where keys, window, bucket and states sit in this stage's partial batches.
    pub fn layout(&self) -> PartialLayout {
        PartialLayout::new(self.keys.len())
    }

    pub fn window(&self) -> Option<WindowKind> {
        self.window
    }

    pub fn bucket_micros(&self) -> i64 {
        self.bucket
    }

    /// Every expression this stage evaluates on its input rows (keys, aggregate arguments,
    /// `FILTER (WHERE …)`), beside the event time; HAVING and the SELECT list run on its own
    /// aggregated rows.
    pub(crate) fn input_exprs(&self) -> Vec<Arc<dyn PhysicalExpr>> {
        let mut exprs = self.keys.clone();
        for aggregate in &self.aggregates {
            exprs.extend(aggregate.function.expressions());
            exprs.extend(aggregate.filter.clone());
        }
        exprs
    }

    /// The stable binary codec of one partial row's state columns.
    pub fn state_codec(&self) -> StateCodec {
        StateCodec::new(self.state_fields.clone())
    }

    fn error(&self, during: &'static str) -> impl Fn(DataFusionError) -> Error + '_ {
        move |source| Error::Execution {
            job: self.job.clone(),
            during,
            source: Box::new(source),
        }
    }

    /// Partial states of rows that passed stage 1, one row per (key, window, bucket).
    pub fn partial(&self, filtered: &RecordBatch) -> Result<RecordBatch> {
        if filtered.num_rows() == 0 {
            return Ok(RecordBatch::new_empty(self.partial_schema.clone()));
        }
        let times = filtered
            .column(self.event_time_index)
            .as_primitive::<TimestampMicrosecondType>();
        if times.null_count() > 0 {
            return Err(self.error("assigning windows")(DataFusionError::Execution(
                "event time is null in rows reaching the aggregate".to_string(),
            )));
        }
        let (rows, times, windows) = match self.window {
            None => (filtered.clone(), times.values().to_vec(), None),
            Some(window) => {
                let assignment = window.assign(times.values());
                let expanded_times = assignment
                    .rows
                    .iter()
                    .map(|&r| times.value(r as usize))
                    .collect();
                let identity = assignment.rows.len() == filtered.num_rows()
                    && assignment
                        .rows
                        .iter()
                        .enumerate()
                        .all(|(i, &r)| i == r as usize);
                let rows = if identity {
                    filtered.clone()
                } else {
                    take_record_batch(filtered, &UInt32Array::from(assignment.rows))
                        .map_err(arrow_err("expanding rows into windows"))?
                };
                (
                    rows,
                    expanded_times,
                    Some((assignment.starts, assignment.ends)),
                )
            }
        };
        let buckets: Vec<i64> = times
            .iter()
            .map(|t| t - t.rem_euclid(self.bucket))
            .collect();
        let keys = self.evaluate_all(&self.keys, &rows, "evaluating GROUP BY keys")?;
        let bucket_array: ArrayRef = Arc::new(timestamps(buckets));
        let (starts, ends) = match windows {
            Some((starts, ends)) if self.is_session() => {
                let mut session_keys = keys.clone();
                session_keys.push(bucket_array.clone());
                let (s, e) = self.coalesce(&session_keys, &starts, &ends)?;
                (window_array(Some(s)), window_array(Some(e)))
            }
            Some((starts, ends)) => (window_array(Some(starts)), window_array(Some(ends))),
            None => (
                new_null_array(&timestamp_type(), rows.num_rows()),
                new_null_array(&timestamp_type(), rows.num_rows()),
            ),
        };
        let mut group_columns = keys;
        group_columns.extend([starts, ends, bucket_array]);
        let groups = group_rows(&group_columns)?;
        let mut states = Vec::new();
        for aggregate in &self.aggregates {
            let mut accumulator = new_accumulator(&aggregate.function)
                .map_err(self.error("creating accumulators"))?;
            let args = self.evaluate_all(
                &aggregate.function.expressions(),
                &rows,
                "evaluating aggregate arguments",
            )?;
            let filter = match &aggregate.filter {
                Some(f) => Some(self.evaluate_filter(f, &rows)?),
                None => None,
            };
            accumulator
                .update_batch(&args, &groups.ids, filter.as_ref(), groups.firsts.len())
                .map_err(self.error("updating partial states"))?;
            states.extend(
                accumulator
                    .state(EmitTo::All)
                    .map_err(self.error("reading partial states"))?,
            );
        }
        self.partial_batch(&group_columns, &groups, states)
    }

    /// Merges partial batches into one row per (key, window, bucket).
    pub fn merge(&self, partials: &[RecordBatch]) -> Result<RecordBatch> {
        let all = concat_batches(&self.partial_schema, partials)
            .map_err(arrow_err("concatenating partial states"))?;
        if all.num_rows() == 0 {
            return Ok(all);
        }
        let layout = self.layout();
        let (start, end) = (layout.window_start(), layout.window_end());
        let mut group_columns: Vec<ArrayRef> = all.columns()[layout.row_key()].to_vec();
        if self.is_session() {
            let mut session_keys = group_columns[layout.keys()].to_vec();
            session_keys.push(group_columns[layout.bucket()].clone());
            let (s, e) =
                self.coalesce_columns(&session_keys, &group_columns[start], &group_columns[end])?;
            group_columns[start] = s;
            group_columns[end] = e;
        }
        let groups = group_rows(&group_columns)?;
        let states = self.merge_states(&all, &groups, |acc| acc.state(EmitTo::All))?;
        self.partial_batch(
            &group_columns,
            &groups,
            states.into_iter().flatten().collect(),
        )
    }

    /// Finalized result rows: partial states merged across buckets per (key, window), then
    /// HAVING and the SELECT list.
    pub fn finalize(&self, partials: &[RecordBatch]) -> Result<RecordBatch> {
        Ok(self.finalize_tagged(&[(Origin::Batch, partials)])?.rows)
    }

    /// [`AggregateStage::finalize`] over the batch view's and the speed view's partial batches,
    /// saying for each result row which layers contributed to it and where its window starts.
    pub fn finalize_layers(
        &self,
        batch: &[RecordBatch],
        speed: &[RecordBatch],
    ) -> Result<Finalized> {
        self.finalize_tagged(&[(Origin::Batch, batch), (Origin::Speed, speed)])
    }

    fn finalize_tagged(&self, layers: &[(Origin, &[RecordBatch])]) -> Result<Finalized> {
        let partials: Vec<RecordBatch> =
            layers.iter().flat_map(|(_, s)| s.iter().cloned()).collect();
        let all = concat_batches(&self.partial_schema, &partials)
            .map_err(arrow_err("concatenating partial states"))?;
        if all.num_rows() == 0 {
            return Ok(Finalized {
                rows: RecordBatch::new_empty(self.output_schema.clone()),
                origins: Vec::new(),
                window_starts: Vec::new(),
            });
        }
        let row_origin: Vec<Origin> = layers
            .iter()
            .flat_map(|(origin, batches)| {
                let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
                std::iter::repeat_n(*origin, rows)
            })
            .collect();
        let layout = self.layout();
        let (start, end) = (layout.window_start(), layout.window_end());
        let mut group_columns: Vec<ArrayRef> = all.columns()[layout.group()].to_vec();
        if self.is_session() {
            let (s, e) = self.coalesce_columns(
                &group_columns[layout.keys()],
                &group_columns[start],
                &group_columns[end],
            )?;
            group_columns[start] = s;
            group_columns[end] = e;
        }
        let groups = group_rows(&group_columns)?;
        let values = self.merge_states(&all, &groups, |acc| {
            acc.evaluate(EmitTo::All).map(|v| vec![v])
        })?;
        let mut group_origins: Vec<Option<Origin>> = vec![None; groups.firsts.len()];
        for (&group, &origin) in groups.ids.iter().zip(&row_origin) {
            let seen = &mut group_origins[group];
            *seen = Some(seen.map_or(origin, |o| o.with(origin)));
        }
        // Invariant: every group has at least one row, so every origin is set.
        let mut group_origins: Vec<Origin> = group_origins
            .into_iter()
            .map(|o| o.unwrap_or(Origin::Merged))
            .collect();
        let starts = group_columns[start].as_primitive::<TimestampMicrosecondType>();
        let mut window_starts: Vec<Option<i64>> = groups
            .firsts
            .iter()
            .map(|&first| {
                starts
                    .is_valid(first as usize)
                    .then(|| starts.value(first as usize))
            })
            .collect();
        let aggregated = self.aggregate_output(&group_columns, &groups, values)?;
        let aggregated = match &self.having {
            Some(having) => {
                let mask = self.evaluate_filter(having, &aggregated)?;
                group_origins = retain(group_origins, &mask);
                window_starts = retain(window_starts, &mask);
                filter_record_batch(&aggregated, &mask).map_err(arrow_err("applying HAVING"))?
            }
            None => aggregated,
        };
        Ok(Finalized {
            rows: self.project(&aggregated)?,
            origins: group_origins,
            window_starts,
        })
    }

    /// One finalized row per partial row (no merging across buckets, no HAVING): what a view
    /// table shows beside each bucket's partial state.
    pub fn finalize_rows(&self, partial: &RecordBatch) -> Result<RecordBatch> {
        let layout = self.layout();
        let n = partial.num_rows();
        if n == 0 {
            return Ok(RecordBatch::new_empty(self.output_schema.clone()));
        }
        let groups = Groups {
            ids: (0..n).collect(),
            firsts: (0..n as u32).collect(),
        };
        let values = self.merge_states(partial, &groups, |acc| {
            acc.evaluate(EmitTo::All).map(|v| vec![v])
        })?;
        let aggregated =
            self.aggregate_output(&partial.columns()[layout.group()], &groups, values)?;
        self.project(&aggregated)
    }

    /// The rows of a partial batch whose bucket is in `[from, to)` (µs; `None` = open).
    pub fn buckets_in(
        &self,
        partial: &RecordBatch,
        from: Option<i64>,
        to: Option<i64>,
    ) -> Result<RecordBatch> {
        if from.is_none() && to.is_none() {
            return Ok(partial.clone());
        }
        let buckets = self.layout().buckets(partial);
        let mask: BooleanArray = buckets
            .values()
            .iter()
            .map(|&b| Some(from.is_none_or(|f| b >= f) && to.is_none_or(|t| b < t)))
            .collect();
        filter_record_batch(partial, &mask).map_err(arrow_err("selecting buckets"))
    }

    fn is_session(&self) -> bool {
        self.window.is_some_and(|w| w.is_session())
    }

    fn merge_states(
        &self,
        all: &RecordBatch,
        groups: &Groups,
        emit: impl Fn(&mut Box<dyn GroupsAccumulator>) -> datafusion::error::Result<Vec<ArrayRef>>,
    ) -> Result<Vec<Vec<ArrayRef>>> {
        let mut column = self.layout().first_state();
        let mut out = Vec::with_capacity(self.aggregates.len());
        for (aggregate, &width) in self.aggregates.iter().zip(&self.state_widths) {
            let mut accumulator = new_accumulator(&aggregate.function)
                .map_err(self.error("creating accumulators"))?;
            accumulator
                .merge_batch(
                    &all.columns()[column..column + width],
                    &groups.ids,
                    groups.firsts.len(),
                )
                .map_err(self.error("merging partial states"))?;
            out.push(emit(&mut accumulator).map_err(self.error("finalizing partial states"))?);
            column += width;
        }
        Ok(out)
    }

    fn partial_batch(
        &self,
        group_columns: &[ArrayRef],
        groups: &Groups,
        states: Vec<ArrayRef>,
    ) -> Result<RecordBatch> {
        if groups.firsts.is_empty() {
            // DataFusion's accumulator adapter reports no state columns at all for zero groups.
            return Ok(RecordBatch::new_empty(self.partial_schema.clone()));
        }
        let indices = UInt32Array::from(groups.firsts.clone());
        let mut columns = group_columns
            .iter()
            .map(|c| take(c, &indices, None))
            .collect::<Result<Vec<_>, _>>()
            .map_err(arrow_err("gathering group keys"))?;
        for (state, field) in states.into_iter().zip(&self.state_fields) {
            columns.push(conform(state, field)?);
        }
        RecordBatch::try_new(self.partial_schema.clone(), columns)
            .map_err(arrow_err("building partial states"))
    }

    /// The batch DataFusion's Aggregate would output: keys, window bounds (if windowed), values.
    fn aggregate_output(
        &self,
        group_columns: &[ArrayRef],
        groups: &Groups,
        values: Vec<Vec<ArrayRef>>,
    ) -> Result<RecordBatch> {
        if groups.firsts.is_empty() {
            return Ok(RecordBatch::new_empty(self.aggregate_output_schema.clone()));
        }
        let layout = self.layout();
        let used = if self.window.is_some() {
            layout.group()
        } else {
            layout.keys()
        };
        let indices = UInt32Array::from(groups.firsts.clone());
        let mut columns = group_columns[used]
            .iter()
            .map(|c| take(c, &indices, None))
            .collect::<Result<Vec<_>, _>>()
            .map_err(arrow_err("gathering group keys"))?;
        columns.extend(values.into_iter().flatten());
        let schema = &self.aggregate_output_schema;
        let columns = columns
            .into_iter()
            .zip(schema.fields())
            .map(|(c, f)| conform(c, f))
            .collect::<Result<Vec<_>>>()?;
        RecordBatch::try_new(schema.clone(), columns)
            .map_err(arrow_err("building aggregate values"))
    }

    fn project(&self, aggregated: &RecordBatch) -> Result<RecordBatch> {
        let columns = self.evaluate_all(&self.projection, aggregated, "evaluating SELECT")?;
        RecordBatch::try_new(self.output_schema.clone(), columns)
            .map_err(arrow_err("building result rows"))
    }

    fn evaluate_all(
        &self,
        exprs: &[Arc<dyn PhysicalExpr>],
        batch: &RecordBatch,
        during: &'static str,
    ) -> Result<Vec<ArrayRef>> {
        exprs
            .iter()
            .map(|e| {
                e.evaluate(batch)
                    .and_then(|v| v.into_array(batch.num_rows()))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.error(during))
    }

    fn evaluate_filter(
        &self,
        expr: &Arc<dyn PhysicalExpr>,
        batch: &RecordBatch,
    ) -> Result<BooleanArray> {
        let array = expr
            .evaluate(batch)
            .and_then(|v| v.into_array(batch.num_rows()))
            .map_err(self.error("evaluating a filter"))?;
        array.as_boolean_opt().cloned().ok_or_else(|| {
            self.error("evaluating a filter")(DataFusionError::Plan(
                "filter is not boolean".to_string(),
            ))
        })
    }

    fn coalesce(
        &self,
        keys: &[ArrayRef],
        starts: &[i64],
        ends: &[i64],
    ) -> Result<(Vec<i64>, Vec<i64>)> {
        let rows = row_keys(keys)?;
        let groups: Vec<Row<'_>> = rows.iter().collect();
        Ok(coalesce_sessions(&groups, starts, ends))
    }

    fn coalesce_columns(
        &self,
        keys: &[ArrayRef],
        starts: &ArrayRef,
        ends: &ArrayRef,
    ) -> Result<(ArrayRef, ArrayRef)> {
        let starts = starts.as_primitive::<TimestampMicrosecondType>().values();
        let ends = ends.as_primitive::<TimestampMicrosecondType>().values();
        let (s, e) = if keys.is_empty() {
            coalesce_sessions(&vec![(); starts.len()], starts, ends)
        } else {
            self.coalesce(keys, starts, ends)?
        };
        Ok((window_array(Some(s)), window_array(Some(e))))
    }
}

fn new_accumulator(
    function: &Arc<AggregateFunctionExpr>,
) -> datafusion::error::Result<Box<dyn GroupsAccumulator>> {
    if function.groups_accumulator_supported() {
        return function.create_groups_accumulator();
    }
    let function = function.clone();
    Ok(Box::new(GroupsAccumulatorAdapter::new(move || {
        function.create_accumulator()
    })))
}

/// Casts a column to its declared type when an accumulator reports an equivalent one
/// (e.g. a differently named list element).
pub(crate) fn conform(column: ArrayRef, field: &Field) -> Result<ArrayRef> {
    if column.data_type() == field.data_type() {
        return Ok(column);
    }
    cast(&column, field.data_type()).map_err(arrow_err("conforming a state column"))
}

fn row_keys(columns: &[ArrayRef]) -> Result<arrow::row::Rows> {
    let fields = columns
        .iter()
        .map(|c| SortField::new(c.data_type().clone()))
        .collect();
    let converter = RowConverter::new(fields).map_err(arrow_err("encoding group keys"))?;
    converter
        .convert_columns(columns)
        .map_err(arrow_err("encoding group keys"))
}

fn group_rows(columns: &[ArrayRef]) -> Result<Groups> {
    let rows = row_keys(columns)?;
    let mut index: hashbrown::HashMap<&[u8], usize> =
        hashbrown::HashMap::with_capacity(rows.num_rows().min(1 << 16));
    let mut ids = Vec::with_capacity(rows.num_rows());
    let mut firsts = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let next = firsts.len();
        let id = *index.entry(row.data()).or_insert_with(|| {
            firsts.push(i as u32);
            next
        });
        ids.push(id);
    }
    Ok(Groups { ids, firsts })
}

fn timestamps(values: Vec<i64>) -> TimestampMicrosecondArray {
    TimestampMicrosecondArray::from(values).with_timezone(UTC)
}

fn window_array(values: Option<Vec<i64>>) -> ArrayRef {
    Arc::new(timestamps(values.unwrap_or_default()))
}
