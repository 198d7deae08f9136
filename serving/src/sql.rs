//! `POST /v1/sql`: read-only DataFusion SQL over every job's merged view.
//!
//! Each request gets a fresh session holding one in-memory table per job (the job's current
//! snapshot, named after the job). Plans that define, change or write anything (DDL, DML,
//! COPY, SET and other statements) are refused before they run; the session has no
//! file-reading table functions and no URL tables, so SQL cannot reach the file system.
//! A query that reads a job whose view is still loading is answered with that job's 503.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::MemTable;
use datafusion::execution::context::SQLOptions;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use serde::Serialize;
use sluice_core::rows::to_json_lines;

use crate::error::{Result, ServingError};

/// Rows an answer holds at most.
pub const MAX_SQL_ROWS: usize = 10_000;
/// How long a query may run.
pub const SQL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Serialize)]
pub struct SqlColumn {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: String,
}

#[derive(Debug, Serialize)]
pub struct SqlAnswer {
    /// The view version of every job the query could read (job name → version).
    pub versions: std::collections::BTreeMap<String, u32>,
    pub columns: Vec<SqlColumn>,
    pub rows: Vec<serde_json::Value>,
    pub count: usize,
    pub truncated: bool,
}

/// Runs `sql` over `tables` (name → the job's merged rows). `loading` names the tables that
/// cannot be answered from yet, with the error a query reading one of them gets.
pub(crate) async fn run(
    sql: &str,
    tables: Vec<(String, RecordBatch)>,
    loading: Vec<(String, ServingError)>,
) -> Result<SqlAnswer> {
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
    for (name, table) in tables {
        let provider = MemTable::try_new(table.schema(), vec![vec![table]])
            .map_err(|e| ServingError::Internal(e.to_string()))?;
        ctx.register_table(name.as_str(), Arc::new(provider))
            .map_err(|e| ServingError::Internal(e.to_string()))?;
    }
    let plan = ctx
        .state()
        .create_logical_plan(sql)
        .await
        .map_err(|e| ServingError::BadSql(e.to_string()))?;
    refuse_writes(&plan)?;
    refuse_loading(&plan, loading)?;
    let frame = ctx
        .execute_logical_plan(plan)
        .await
        .map_err(|e| ServingError::BadSql(e.to_string()))?
        .limit(0, Some(MAX_SQL_ROWS + 1))
        .map_err(|e| ServingError::BadSql(e.to_string()))?;
    let schema = frame.schema().as_arrow().clone();
    let batches = tokio::time::timeout(SQL_TIMEOUT, frame.collect())
        .await
        .map_err(|_| ServingError::BadSql(format!("the query ran longer than {SQL_TIMEOUT:?}")))?
        .map_err(|e| ServingError::BadSql(e.to_string()))?;
    let mut rows: Vec<serde_json::Value> = String::from_utf8_lossy(&to_json_lines(&batches)?)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or(serde_json::Value::Null))
        .collect();
    let truncated = rows.len() > MAX_SQL_ROWS;
    rows.truncate(MAX_SQL_ROWS);
    Ok(SqlAnswer {
        versions: Default::default(),
        columns: schema
            .fields()
            .iter()
            .map(|f| SqlColumn {
                name: f.name().clone(),
                data_type: f.data_type().to_string(),
            })
            .collect(),
        count: rows.len(),
        rows,
        truncated,
    })
}

/// Answers a plan that reads a table still loading (also in a subquery) with its error.
fn refuse_loading(plan: &LogicalPlan, loading: Vec<(String, ServingError)>) -> Result<()> {
    if loading.is_empty() {
        return Ok(());
    }
    let mut scanned: Vec<String> = Vec::new();
    let visited = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            scanned.push(scan.table_name.table().to_string());
        }
        Ok(TreeNodeRecursion::Continue)
    });
    // A plan that cannot be walked might read any table.
    let reads =
        |name: &str| visited.is_err() || scanned.iter().any(|s| s.eq_ignore_ascii_case(name));
    match loading.into_iter().find(|(name, _)| reads(name.as_str())) {
        Some((_, error)) => Err(error),
        None => Ok(()),
    }
}

/// Refuses any plan that would define, change or write something, anywhere in the plan
/// (an `EXPLAIN ANALYZE INSERT` runs its insert).
fn refuse_writes(plan: &LogicalPlan) -> Result<()> {
    let writes = plan
        .exists(|node| {
            Ok(matches!(
                node,
                LogicalPlan::Ddl(_)
                    | LogicalPlan::Dml(_)
                    | LogicalPlan::Copy(_)
                    | LogicalPlan::Statement(_)
            ))
        })
        .unwrap_or(true);
    if writes {
        return Err(ServingError::SqlRefused(
            "only queries are allowed: DDL, DML, COPY and statements are refused".to_string(),
        ));
    }
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(plan)
        .map_err(|e| ServingError::SqlRefused(e.to_string()))
}
