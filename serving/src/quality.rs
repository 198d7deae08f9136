//! A served job's data-quality results, as `GET /v1/jobs/{job}` reports them under `checks`:
//! every declared check (`[[checks]]`) with what each layer found.
//!
//! The two counts come from different places because each layer reports where it already
//! writes: the batch layer's newest backfill records its violations in the view table's commit
//! (`sluice.check_violations`), which the batch view reads anyway; the speed layer dead-letters
//! quarantined records to `<job>.dlq` with a `sluice.check` header, which the dashboard's sampler
//! reads anyway, and hands its count by check here ([`Quarantined`]). The speed layer's `warn`
//! violations are counted only in the daemon's own metric (`sluice_check_violations_total`),
//! which the serving layer does not scrape.

use std::collections::BTreeMap;
use std::sync::RwLock;

use serde::Serialize;
use serde_json::Value;
use sluice_core::checks::QualityChecks;
use sluice_core::lake::{CommitSummary, commit_key};
use sluice_core::spec::Severity;

/// One declared check and its counts, in the job file's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckStatus {
    /// The check's name (`name`, or `<check>_<column>`): the `sluice.check` header's value.
    pub name: String,
    /// `not_null`, `accepted_values`, `range`, `regex` or `expect`.
    pub check: &'static str,
    pub severity: Severity,
    /// The source field it is about (`None` for `expect`).
    pub column: Option<String>,
    /// What a passing row satisfies (`` `amount` >= 0 ``).
    pub rule: String,
    /// Rows of the newest backfill's range that violate it, from the view table's newest
    /// commit; `None` when that commit records no count for it (no backfill yet, or a commit
    /// from before the check was declared).
    pub batch_violations: Option<u64>,
    /// Records in `<job>.dlq` whose `sluice.check` header names it; `None` until the sampler
    /// has read the whole topic once (no brokers, the topic does not exist yet, still counting).
    pub speed_quarantined: Option<u64>,
}

/// The sampler's newest count of `<job>.dlq` by `sluice.check` (read to its end at least once).
#[derive(Debug, Default)]
pub(crate) struct Quarantined(RwLock<Option<BTreeMap<String, u64>>>);

impl Quarantined {
    pub fn set(&self, counts: Option<BTreeMap<String, u64>>) {
        let mut slot = self
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *slot = counts;
    }

    fn counts(&self) -> Option<BTreeMap<String, u64>> {
        self.0
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }
}

/// Every check of `checks` (none without) with the counts of `last_run` (the view table's
/// newest commit) and of `quarantined`.
pub(crate) fn statuses(
    checks: Option<&QualityChecks>,
    last_run: Option<&CommitSummary>,
    quarantined: &Quarantined,
) -> Vec<CheckStatus> {
    let Some(checks) = checks else {
        return Vec::new();
    };
    let batch = last_run
        .and_then(|run| run.info.get(commit_key::CHECK_VIOLATIONS))
        .and_then(Value::as_object);
    let speed = quarantined.counts();
    checks
        .checks()
        .iter()
        .map(|check| CheckStatus {
            name: check.name.clone(),
            check: check.kind.as_str(),
            severity: check.severity,
            column: check.column.clone(),
            rule: check.rule.clone(),
            batch_violations: batch
                .and_then(|counts| counts.get(check.name.as_str()))
                .and_then(Value::as_u64),
            // Read to its end: a check no record names has none.
            speed_quarantined: speed
                .as_ref()
                .map(|counts| counts.get(&check.name).copied().unwrap_or(0)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;
    use sluice_core::Pipeline;
    use sluice_core::fixture::{OrdersJob, REGION_PER_MINUTE_SQL};

    use super::*;

    const CHECKS: &str = r#"
[[checks]]
check = "accepted_values"
column = "status"
values = ["completed", "pending", "cancelled"]
[[checks]]
check = "range"
column = "amount"
min = 0
severity = "quarantine"
[[checks]]
check = "expect"
name = "eu_only"
predicate = "region = 'eu'"
"#;

    fn pipeline(checks: &str) -> Arc<Pipeline> {
        let toml = format!(
            "{}{checks}",
            OrdersJob::default().toml(REGION_PER_MINUTE_SQL)
        );
        let job = sluice_core::Job::from_toml(&toml, std::path::Path::new("t.toml")).expect("job");
        Arc::new(Pipeline::compile(&job, None).expect("pipeline"))
    }

    fn commit(info: Value) -> CommitSummary {
        let info: std::collections::HashMap<String, Value> = info
            .as_object()
            .map(|o| o.clone().into_iter().collect())
            .unwrap_or_default();
        CommitSummary {
            version: 3,
            timestamp_ms: Some(0),
            info,
        }
    }

    #[test]
    fn every_declared_check_is_listed_with_its_rule_and_no_counts_before_any() {
        let pipeline = pipeline(CHECKS);
        let listed = statuses(pipeline.checks(), None, &Quarantined::default());
        let names: Vec<&str> = listed.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["accepted_values_status", "range_amount", "eu_only"]);
        let range = &listed[1];
        assert_eq!(range.check, "range");
        assert_eq!(range.severity, Severity::Quarantine);
        assert_eq!(range.column.as_deref(), Some("amount"));
        assert!(
            range.rule.contains("amount") && range.rule.contains(">="),
            "{}",
            range.rule
        );
        assert_eq!(listed[2].column, None);
        assert!(
            listed
                .iter()
                .all(|c| c.batch_violations.is_none() && c.speed_quarantined.is_none())
        );
        let serialized = json!(range);
        assert_eq!(serialized["severity"], "quarantine");
        assert_eq!(serialized["batch_violations"], Value::Null);
    }

    #[test]
    fn counts_come_from_the_newest_commit_and_the_dead_letters_read() {
        let pipeline = pipeline(CHECKS);
        let run = commit(json!({
            (commit_key::CHECK_VIOLATIONS): {"accepted_values_status": 4, "range_amount": 2},
        }));
        let quarantined = Quarantined::default();
        quarantined.set(Some(BTreeMap::from([
            ("range_amount".to_string(), 7),
            ("someone_elses".to_string(), 1),
        ])));
        let listed = statuses(pipeline.checks(), Some(&run), &quarantined);
        let counts: Vec<(Option<u64>, Option<u64>)> = listed
            .iter()
            .map(|c| (c.batch_violations, c.speed_quarantined))
            .collect();
        // `eu_only` is not in the commit (declared after that backfill), and no dead letter
        // names it or the warn check.
        assert_eq!(
            counts,
            [(Some(4), Some(0)), (Some(2), Some(7)), (None, Some(0))]
        );
        let other = commit(json!({(commit_key::OPERATION): "backfill"}));
        let listed = statuses(pipeline.checks(), Some(&other), &quarantined);
        assert!(listed.iter().all(|c| c.batch_violations.is_none()));
        quarantined.set(None);
        let listed = statuses(pipeline.checks(), Some(&run), &quarantined);
        assert!(listed.iter().all(|c| c.speed_quarantined.is_none()));
    }

    #[test]
    fn a_job_without_checks_lists_none() {
        let pipeline = pipeline("");
        assert!(statuses(pipeline.checks(), None, &Quarantined::default()).is_empty());
    }
}
