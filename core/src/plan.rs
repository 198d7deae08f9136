//! The plan compiler: a job's SQL → [`JobPlan`], the one plan every layer runs.
//!
//! DataFusion parses, resolves and type-checks the SQL (after [`crate::flink_sql`] turns group
//! windows into columns, and a first-row deduplication into [`JobPlan::dedup_keys`]). The
//! resulting logical plan must have the shape
//! `Projection ← [HAVING] ← [Aggregate] ← [WHERE] ← source`; its expressions are lowered to
//! DataFusion physical expressions and aggregate functions, so every layer evaluates exactly the
//! same code. Stage 1 (WHERE, and the projection of a stateless job) is in this module; stage 2
//! (windows, partial states, merge, finalize) is [`crate::aggregate::AggregateStage`].

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::common::{DFSchema, DFSchemaRef};
use datafusion::datasource::empty::EmptyTable;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::{Aggregate, Expr, LogicalPlan};
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::physical_expr::aggregate::LoweredAggregateBuilder;
use datafusion::physical_expr::utils::collect_columns;
use datafusion::physical_expr::{PhysicalExpr, create_physical_expr};
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DFStatement;

use crate::aggregate::{AggregateStage, LoweredAggregateFn};
use crate::dedup_sql;
use crate::error::{Error, Result, arrow_err};
use crate::flink_sql::{self, WINDOW_END, WINDOW_START};
use crate::join::sql::OtherInput;
use crate::join::temporal::TemporalJoin;
use crate::spec::{Job, timestamp_type};
use crate::udf;

/// Aggregates whose partial states merge exactly (bit for bit) in any order and grouping.
const MERGEABLE_AGGREGATES: &[&str] = &[
    "count", "sum", "avg", "min", "max", "bool_and", "bool_or", "bit_and", "bit_or", "bit_xor",
];
/// Aggregates that may take DISTINCT (their distinct state is a mergeable set of values).
const DISTINCT_AGGREGATES: &[&str] = &["count", "sum", "min", "max"];

/// A compiled job: stage 1 (filter, and projection when stateless) and the optional stage 2.
#[derive(Debug)]
pub struct JobPlan {
    job: String,
    input_schema: SchemaRef,
    event_time_index: usize,
    bucket: i64,
    filter: Option<Arc<dyn PhysicalExpr>>,
    kind: PlanKind,
    dedup_keys: Option<Vec<String>>,
    /// The temporal join whose output rows the plan reads (its `input_schema` is then the
    /// joined rows': the stream's columns, then the table's).
    join: Option<TemporalJoin>,
}

#[derive(Debug)]
enum PlanKind {
    Stateless {
        projection: Vec<Arc<dyn PhysicalExpr>>,
        output_schema: SchemaRef,
    },
    Aggregate(Box<AggregateStage>),
}

/// The planned SQL, its group window, its dedup keys and its temporal join.
type LogicalParts = (
    LogicalPlan,
    Option<crate::window::WindowKind>,
    Option<Vec<String>>,
    Option<crate::join::sql::TemporalSql>,
);

/// What the compiler needs to know about the job beside its SQL.
pub(crate) struct Compilation<'a> {
    pub(crate) job: &'a Job,
    pub(crate) input_schema: SchemaRef,
    pub(crate) ctx: SessionContext,
}

/// Whether two schemas have the same field names and types in the same order (what compiled
/// expressions, which bind columns by index, need of the batches they run on).
pub(crate) fn same_fields(expected: &Schema, actual: &Schema) -> bool {
    fn pairs(schema: &Schema) -> impl Iterator<Item = (&String, &arrow::datatypes::DataType)> {
        schema.fields().iter().map(|f| (f.name(), f.data_type()))
    }
    pairs(expected).eq(pairs(actual))
}

impl JobPlan {
    /// Compiles `job`'s SQL against `input_schema`: the source schema, or the output schema of
    /// the job's Polars transform when it has one.
    pub fn compile(job: &Job, input_schema: SchemaRef) -> Result<JobPlan> {
        let event_time = &job.spec.source.event_time;
        let event_time_index = input_schema.index_of(event_time).map_err(|_| {
            refuse(
                job,
                format!("input without `{event_time}`"),
                "the event time column must survive the Polars transform",
            )
        })?;
        if input_schema.field(event_time_index).data_type() != &timestamp_type() {
            return Err(refuse(
                job,
                format!(
                    "event time `{event_time}` of type {}",
                    input_schema.field(event_time_index).data_type()
                ),
                "the event time must stay a UTC timestamp",
            ));
        }
        let mut compilation = Compilation {
            job,
            input_schema: input_schema.clone(),
            ctx: SessionContext::new(),
        };
        let (plan, window, dedup_keys, join_sql) = compilation.logical_plan()?;
        let join = match &join_sql {
            Some(sql) => Some(compilation.temporal_join(&plan, sql, event_time_index)?),
            None => None,
        };
        // Above a join the plan reads joined rows: the stream's columns (so its event time
        // keeps its index), then the table's.
        if let Some(join) = &join {
            compilation.input_schema = join.output_schema().clone();
        }
        let mut compiled = compilation.lower(&plan, window)?;
        compiled.event_time_index = event_time_index;
        compiled.dedup_keys = dedup_keys;
        compiled.join = join;
        Ok(compiled)
    }

    /// The temporal join the plan reads the output of, when the SQL joins a table.
    pub fn join(&self) -> Option<&TemporalJoin> {
        self.join.as_ref()
    }

    pub fn job(&self) -> &str {
        &self.job
    }

    /// The schema the plan reads (after any Polars transform).
    pub fn input_schema(&self) -> &SchemaRef {
        &self.input_schema
    }

    /// The schema of finalized result rows.
    pub fn output_schema(&self) -> SchemaRef {
        match &self.kind {
            PlanKind::Stateless { output_schema, .. } => output_schema.clone(),
            PlanKind::Aggregate(stage) => stage.output_schema().clone(),
        }
    }

    pub fn event_time_index(&self) -> usize {
        self.event_time_index
    }

    /// The size of the event-time buckets that partial states and view rows are kept in (µs).
    pub fn bucket_micros(&self) -> i64 {
        self.bucket
    }

    /// The input columns whose duplicates the job drops before stage 1 (Flink's first-row
    /// deduplication, `ROW_NUMBER() OVER (PARTITION BY …) … WHERE rn = 1`), as field names of
    /// [`JobPlan::input_schema`] in PARTITION BY order; `None` when the SQL does not deduplicate.
    pub fn dedup_keys(&self) -> Option<&[String]> {
        self.dedup_keys.as_deref()
    }

    /// The input columns (indices into [`JobPlan::input_schema`]) the plan reads: the event
    /// time and every column WHERE, the keys, the aggregates' arguments or a stateless
    /// SELECT name. The plan's results do not depend on the other columns' values.
    pub fn input_columns(&self) -> BTreeSet<usize> {
        let mut exprs: Vec<Arc<dyn PhysicalExpr>> = self.filter.iter().cloned().collect();
        match &self.kind {
            PlanKind::Stateless { projection, .. } => exprs.extend(projection.iter().cloned()),
            PlanKind::Aggregate(stage) => exprs.extend(stage.input_exprs()),
        }
        let mut columns = BTreeSet::from([self.event_time_index]);
        for expr in &exprs {
            columns.extend(collect_columns(expr).iter().map(|c| c.index()));
        }
        columns
    }

    /// Stage 2, when the job aggregates.
    pub fn aggregate(&self) -> Option<&AggregateStage> {
        match &self.kind {
            PlanKind::Aggregate(stage) => Some(stage),
            PlanKind::Stateless { .. } => None,
        }
    }

    /// Stage 1's filter: the input rows that pass WHERE, all columns kept.
    pub fn filter(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        self.check_input(batch)?;
        let Some(predicate) = &self.filter else {
            return Ok(batch.clone());
        };
        let mask = predicate
            .evaluate(batch)
            .and_then(|v| v.into_array(batch.num_rows()))
            .map_err(|source| self.execution("evaluating WHERE", source))?;
        let mask = mask.as_boolean_opt().ok_or_else(|| {
            self.execution(
                "evaluating WHERE",
                datafusion::error::DataFusionError::Plan("WHERE is not a boolean".to_string()),
            )
        })?;
        filter_record_batch(batch, mask).map_err(arrow_err("applying WHERE"))
    }

    /// Stage 1's projection of a stateless job over rows that passed [`JobPlan::filter`].
    pub fn project(&self, filtered: &RecordBatch) -> Result<RecordBatch> {
        let PlanKind::Stateless {
            projection,
            output_schema,
        } = &self.kind
        else {
            return Err(self.execution(
                "projecting",
                datafusion::error::DataFusionError::Internal(
                    "project() on an aggregate job".to_string(),
                ),
            ));
        };
        let columns = projection
            .iter()
            .map(|e| {
                e.evaluate(filtered)
                    .and_then(|v| v.into_array(filtered.num_rows()))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| self.execution("evaluating SELECT", source))?;
        RecordBatch::try_new(output_schema.clone(), columns)
            .map_err(arrow_err("building SELECT output"))
    }

    /// Stage 1 then stage 2's update: the partial states of `batch` (aggregate jobs only).
    pub fn partial(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let filtered = self.filter(batch)?;
        match self.aggregate() {
            Some(stage) => stage.partial(&filtered),
            None => Err(self.execution(
                "computing partial states",
                datafusion::error::DataFusionError::Internal(
                    "partial() on a stateless job".to_string(),
                ),
            )),
        }
    }

    fn check_input(&self, batch: &RecordBatch) -> Result<()> {
        if same_fields(&self.input_schema, batch.schema_ref()) {
            return Ok(());
        }
        Err(self.execution(
            "checking the input batch",
            datafusion::error::DataFusionError::Plan(format!(
                "input schema {:?} does not match the plan's input schema {:?}",
                batch.schema(),
                self.input_schema
            )),
        ))
    }

    fn execution(&self, during: &'static str, source: datafusion::error::DataFusionError) -> Error {
        Error::Execution {
            job: self.job.clone(),
            during,
            source: Box::new(source),
        }
    }
}

fn refuse(job: &Job, what: impl Into<String>, why: impl Into<String>) -> Error {
    Error::UnsupportedSql {
        job: job.name().to_string(),
        what: what.into(),
        why: why.into(),
    }
}

impl Compilation<'_> {
    fn invalid_sql(&self, source: datafusion::error::DataFusionError) -> Error {
        Error::InvalidSql {
            job: self.job.name().to_string(),
            source: Box::new(source),
        }
    }

    pub(crate) fn refuse(&self, what: impl Into<String>, why: impl Into<String>) -> Error {
        refuse(self.job, what, why)
    }

    /// Rewrites the Flink windows and deduplication, plans the SQL with DataFusion, and
    /// type-coerces the plan; also returns the group window and the resolved dedup keys.
    fn logical_plan(&self) -> Result<LogicalParts> {
        let job = self.job;
        let inputs = job.inputs();
        let others: Vec<OtherInput> = inputs
            .iter()
            .skip(1)
            .map(|i| OtherInput {
                name: i.table.clone(),
                kind: i.kind,
            })
            .collect();
        let rewritten = flink_sql::rewrite_with_inputs(
            job.name(),
            &job.spec.transform.sql,
            (&job.table_name(), &job.spec.source.event_time),
            &others,
        )?;
        let dedup_keys = rewritten
            .dedup
            .as_deref()
            .map(|keys| dedup_sql::resolve_keys(job.name(), keys, &self.input_schema))
            .transpose()?;
        // The window bounds are placeholder columns of the last table the plan reads, so
        // that every real column keeps, in the plan's rows, the index it has in the physical
        // rows (the stream's columns, then a joined table's): they are never evaluated.
        let joined = match &rewritten.join {
            Some(sql) => Some(
                inputs
                    .iter()
                    .find(|i| i.table == sql.table)
                    .ok_or_else(|| self.refuse(format!("JOIN {}", sql.table), "not an input"))?,
            ),
            None => None,
        };
        let with_window = |schema: &SchemaRef| {
            let mut fields: Vec<Field> =
                schema.fields().iter().map(|f| f.as_ref().clone()).collect();
            if rewritten.window.is_some() {
                fields.push(Field::new(WINDOW_START, timestamp_type(), false));
                fields.push(Field::new(WINDOW_END, timestamp_type(), false));
            }
            Arc::new(Schema::new(fields))
        };
        let primary = match joined {
            Some(_) => self.input_schema.clone(),
            None => with_window(&self.input_schema),
        };
        self.register(&job.table_name(), primary)?;
        if let Some(table) = joined {
            self.register(&table.table, with_window(&table.job.source_schema()))?;
        }
        udf::register(&self.ctx);
        let state = self.ctx.state();
        let statement = DFStatement::Statement(Box::new(rewritten.statement));
        let plan = futures::executor::block_on(state.statement_to_plan(statement))
            .map_err(|e| self.invalid_sql(e))?;
        let plan = state
            .analyzer()
            .execute_and_check(plan, state.config_options(), |_, _| {})
            .map_err(|e| self.invalid_sql(e))?;
        Ok((plan, rewritten.window, dedup_keys, rewritten.join))
    }

    fn register(&self, name: &str, schema: SchemaRef) -> Result<()> {
        self.ctx
            .register_table(name.to_ascii_lowercase(), Arc::new(EmptyTable::new(schema)))
            .map_err(|e| self.invalid_sql(e))?;
        Ok(())
    }

    /// DataFusion's expression simplifier, which its physical planner expects to have run
    /// (`COALESCE` is only executable once rewritten to `CASE`). Without a query start time,
    /// so `now()` is evaluated per batch, never frozen at compile time.
    fn simplified(&self, expr: &Expr, schema: &DFSchema) -> Result<Expr> {
        let context = SimplifyContext::builder()
            .with_schema(Arc::new(schema.clone()))
            .with_config_options(self.ctx.state().config_options().clone())
            .build();
        ExprSimplifier::new(context)
            .simplify(expr.clone())
            .map_err(|e| self.invalid_sql(e))
    }

    pub(crate) fn physical(&self, expr: &Expr, schema: &DFSchema) -> Result<Arc<dyn PhysicalExpr>> {
        let expr = self.simplified(expr, schema)?;
        create_physical_expr(
            &expr,
            schema,
            self.ctx.state().execution_props(),
            &PhysicalPlanningContext::default(),
        )
        .map_err(|e| self.invalid_sql(e))
    }

    fn lower(
        &self,
        plan: &LogicalPlan,
        window: Option<crate::window::WindowKind>,
    ) -> Result<JobPlan> {
        let LogicalPlan::Projection(projection) = plan else {
            return Err(self.refuse(plan_name(plan), "expected SELECT ... FROM the source"));
        };
        let output_schema = Arc::new(projection.schema.as_arrow().clone());
        for field in output_schema.fields() {
            if field.name().starts_with("__") {
                return Err(self.refuse(
                    format!("output column `{}`", field.name()),
                    "names starting with `__` are reserved for Sluice's own columns; alias it",
                ));
            }
        }
        let (having, below) = match projection.input.as_ref() {
            LogicalPlan::Filter(f) if matches!(f.input.as_ref(), LogicalPlan::Aggregate(_)) => {
                (Some(&f.predicate), f.input.as_ref())
            }
            other => (None, other),
        };
        match below {
            LogicalPlan::Aggregate(aggregate) => {
                let filter = self.lower_where(&aggregate.input)?;
                let key_count = aggregate.group_expr.len() - if window.is_some() { 2 } else { 0 };
                let key_columns =
                    key_output_columns(aggregate, &projection.expr, &output_schema, key_count);
                let mut result_key = key_output_columns(
                    aggregate,
                    &projection.expr,
                    &output_schema,
                    aggregate.group_expr.len(),
                );
                result_key.sort();
                let mut stage = self.lower_aggregate(
                    aggregate,
                    having,
                    &projection.expr,
                    output_schema,
                    window,
                )?;
                stage.result_key = result_key.into_iter().map(|(_, name)| name).collect();
                self.check_view_key(&stage, &key_columns)?;
                Ok(self.job_plan(filter, PlanKind::Aggregate(Box::new(stage))))
            }
            input => {
                if !self.job.spec.view.key.is_empty() {
                    return Err(self.refuse(
                        "view.key on a stateless job",
                        "a job without GROUP BY has no view key; remove view.key",
                    ));
                }
                let filter = self.lower_where(input)?;
                let schema = input.schema();
                let projection = projection
                    .expr
                    .iter()
                    .map(|e| self.physical(e, schema))
                    .collect::<Result<Vec<_>>>()?;
                Ok(self.job_plan(
                    filter,
                    PlanKind::Stateless {
                        projection,
                        output_schema,
                    },
                ))
            }
        }
    }

    fn job_plan(&self, filter: Option<Arc<dyn PhysicalExpr>>, kind: PlanKind) -> JobPlan {
        JobPlan {
            job: self.job.name().to_string(),
            input_schema: self.input_schema.clone(),
            event_time_index: 0,
            bucket: self.job.bucket_micros(),
            filter,
            kind,
            dedup_keys: None,
            join: None,
        }
    }

    /// The WHERE below the aggregate or projection, if any.
    fn lower_where(&self, input: &LogicalPlan) -> Result<Option<Arc<dyn PhysicalExpr>>> {
        match input {
            LogicalPlan::Filter(filter) if source_schema(&filter.input).is_some() => {
                let schema = filter.input.schema();
                self.forbid_window_columns(&filter.predicate, "WHERE")?;
                Ok(Some(self.physical(&filter.predicate, schema)?))
            }
            other if source_schema(other).is_some() => Ok(None),
            other => Err(self.refuse(plan_name(other), "expected WHERE over the source table")),
        }
    }

    fn forbid_window_columns(&self, expr: &Expr, clause: &str) -> Result<()> {
        let refs: HashSet<_> = expr
            .column_refs()
            .into_iter()
            .map(|c| c.name.clone())
            .collect();
        if refs.contains(WINDOW_START) || refs.contains(WINDOW_END) {
            return Err(self.refuse(
                format!("window bounds in {clause}"),
                "windows are assigned after WHERE and grouping keys are evaluated",
            ));
        }
        Ok(())
    }

    fn lower_aggregate(
        &self,
        aggregate: &Aggregate,
        having: Option<&Expr>,
        projection: &[Expr],
        output_schema: SchemaRef,
        window: Option<crate::window::WindowKind>,
    ) -> Result<AggregateStage> {
        if let Some(w) = window.filter(|w| !w.is_session() && w.size() > self.job.bucket_micros()) {
            return Err(Error::InvalidField {
                file: self.job.file.clone(),
                field: "view.bucket".to_string(),
                expected: format!(
                    "at least the {} window size ({}s)",
                    w.sql_name(),
                    w.size() / 1_000_000
                ),
                got: format!("{}s", self.job.bucket_micros() / 1_000_000),
            });
        }
        let input_schema: &DFSchemaRef = aggregate.input.schema();
        let window_columns = if window.is_some() { 2 } else { 0 };
        let key_count = aggregate
            .group_expr
            .len()
            .checked_sub(window_columns)
            .ok_or_else(|| self.refuse("GROUP BY", "the group window must stay in GROUP BY"))?;
        let mut keys = Vec::with_capacity(key_count);
        for expr in &aggregate.group_expr[..key_count] {
            self.forbid_window_columns(expr, "GROUP BY keys")?;
            keys.push(self.physical(expr, input_schema)?);
        }
        let aggregates = aggregate
            .aggr_expr
            .iter()
            .map(|e| self.lower_aggregate_fn(e, input_schema))
            .collect::<Result<Vec<_>>>()?;
        let having = having
            .map(|h| self.physical(h, &aggregate.schema))
            .transpose()?;
        let projection = projection
            .iter()
            .map(|e| self.physical(e, &aggregate.schema))
            .collect::<Result<Vec<_>>>()?;
        AggregateStage::new(crate::aggregate::StageParts {
            job: self.job.name().to_string(),
            input_schema: self.input_schema.clone(),
            event_time_index: self
                .input_schema
                .index_of(&self.job.spec.source.event_time)
                .unwrap_or(0),
            keys,
            window,
            bucket: self.job.bucket_micros(),
            aggregates,
            aggregate_output_schema: Arc::new(aggregate.schema.as_arrow().clone()),
            having,
            projection,
            output_schema,
        })
    }

    fn lower_aggregate_fn(
        &self,
        expr: &Expr,
        input_schema: &DFSchema,
    ) -> Result<LoweredAggregateFn> {
        let Expr::AggregateFunction(function) = expr.clone().unalias() else {
            return Err(self.refuse(
                format!("aggregate `{expr}`"),
                "expected an aggregate function call",
            ));
        };
        let name = function.func.name().to_ascii_lowercase();
        let params = &function.params;
        if !MERGEABLE_AGGREGATES.contains(&name.as_str()) {
            return Err(self.refuse(
                format!("aggregate `{name}`"),
                format!(
                    "its partial state does not merge exactly across micro-batches and layers (supported: {})",
                    MERGEABLE_AGGREGATES.join(", ")
                ),
            ));
        }
        if params.distinct && !DISTINCT_AGGREGATES.contains(&name.as_str()) {
            return Err(self.refuse(
                format!("{name}(DISTINCT ...)"),
                format!(
                    "DISTINCT is supported for {}",
                    DISTINCT_AGGREGATES.join(", ")
                ),
            ));
        }
        if !params.order_by.is_empty() {
            return Err(self.refuse(
                format!("{name}(... ORDER BY ...)"),
                "ordered aggregates depend on arrival order",
            ));
        }
        for arg in &params.args {
            self.forbid_window_columns(arg, "aggregate arguments")?;
        }
        let props = self.ctx.state().execution_props().clone();
        let expr = &self.simplified(expr, input_schema)?;
        let lowered = LoweredAggregateBuilder::new(
            expr,
            input_schema,
            input_schema.as_arrow(),
            &props,
            &PhysicalPlanningContext::default(),
        )
        .build()
        .map_err(|e| self.invalid_sql(e))?;
        Ok(LoweredAggregateFn {
            function: lowered.aggregate,
            filter: lowered.filter,
        })
    }

    /// `view.key` must name exactly the output columns that hold the GROUP BY keys, and every
    /// key must be in the output (otherwise two view rows could not be told apart).
    fn check_view_key(
        &self,
        stage: &AggregateStage,
        key_columns: &[(usize, String)],
    ) -> Result<()> {
        let declared: HashSet<&str> = self.job.spec.view.key.iter().map(String::as_str).collect();
        let outputs: HashSet<&str> = key_columns.iter().map(|(_, name)| name.as_str()).collect();
        let covered: HashSet<usize> = key_columns.iter().map(|(key, _)| *key).collect();
        if declared == outputs
            && covered.len() == stage.layout().key_count()
            && declared.len() == self.job.spec.view.key.len()
        {
            return Ok(());
        }
        let mut names: Vec<&str> = outputs.into_iter().collect();
        names.sort_unstable();
        Err(Error::InvalidField {
            file: self.job.file.clone(),
            field: "view.key".to_string(),
            expected: if covered.len() == stage.layout().key_count() {
                format!(
                    "the output columns holding the {} GROUP BY key(s): {names:?}",
                    stage.layout().key_count()
                )
            } else {
                format!(
                    "every one of the {} GROUP BY keys selected as an output column",
                    stage.layout().key_count()
                )
            },
            got: format!("{:?}", self.job.spec.view.key),
        })
    }
}

/// Output columns that are plain references to a GROUP BY key: (key index, output name).
fn key_output_columns(
    aggregate: &Aggregate,
    projection: &[Expr],
    output: &Schema,
    key_count: usize,
) -> Vec<(usize, String)> {
    projection
        .iter()
        .enumerate()
        .filter_map(|(i, expr)| match expr.clone().unalias() {
            Expr::Column(column) => aggregate
                .schema
                .index_of_column(&column)
                .ok()
                .filter(|&key| key < key_count)
                .map(|key| (key, output.field(i).name().clone())),
            _ => None,
        })
        .collect()
}

/// The schema rows have where WHERE applies: the scan, possibly under a table alias, or the
/// temporal join of two (whose rows [`crate::join::temporal`] makes).
pub(crate) fn source_schema(plan: &LogicalPlan) -> Option<&DFSchema> {
    match plan {
        LogicalPlan::TableScan(scan) => Some(scan.projected_schema.as_ref()),
        LogicalPlan::SubqueryAlias(alias) if source_schema(&alias.input).is_some() => {
            Some(alias.schema.as_ref())
        }
        LogicalPlan::Join(join)
            if source_schema(&join.left).is_some() && source_schema(&join.right).is_some() =>
        {
            Some(join.schema.as_ref())
        }
        _ => None,
    }
}

fn plan_name(plan: &LogicalPlan) -> String {
    let text = plan.display().to_string();
    text.split(':').next().unwrap_or(&text).trim().to_string()
}
