//! View versions and plan fingerprints: no plan ever runs on state another plan wrote.
//!
//! A job's plan-dependent state (the `<job>.speed` changelog and the results, DLQ and late
//! topics, the batch view table, the speed layer's consumer group and RocksDB directory) lives
//! under [`Job::versioned_name`]: the job name for `[view] version = 1` (so a job written
//! before versions existed keeps its names), `<job>.v<N>` from version 2 on. The raw table
//! (the master dataset) is the source topic's and is shared by every version.
//!
//! Every compiled plan has a [`Job::plan_fingerprint`], stored with what it writes: in the
//! commit metadata of every view-table commit ([`crate::lake::commit_key::PLAN_FINGERPRINT`])
//! and in a reserved record of every `<job>.speed` partition ([`crate::speed::PLAN_KEY`]).
//! `stream`, `backfill` and `serve` compare it with their own and refuse a mismatch
//! ([`PlanMismatch`]): the fix is a new `version`, replayed next to the old one.

use crate::spec::Job;

/// A `unique` check's key columns and horizon, which decide what it quarantines (empty for
/// other checks, so their fingerprints stay as they were).
fn unique_terms(job: &Job, check: &crate::spec::CheckSpec) -> String {
    if check.check != crate::spec::CheckKind::Unique {
        return String::new();
    }
    let within = check
        .within
        .unwrap_or_else(|| job.spec.transform.dedup_within());
    format!("{:?}", (&check.columns, within))
}

impl Job {
    /// `[view] version` (1 unless the job file says otherwise).
    pub fn version(&self) -> u32 {
        self.spec.view.version
    }

    /// The name plan-dependent state is kept under: `<job>` for version 1, `<job>.v<N>` after.
    pub fn versioned_name(&self) -> String {
        versioned_name(self.name(), self.version())
    }

    /// A hash of everything that decides what the plan computes and how its partial state is
    /// laid out: the source schema and event time, the SQL (whitespace collapsed, so
    /// reformatting it is not a new plan), the Rust transform, the view key, the bucket, the
    /// state codec's format and the `quarantine` checks. Operational settings (watermark
    /// delay, lateness, batching) and `warn` checks are not in it: they change when rows are
    /// emitted or what is counted, not what a bucket's state is.
    pub fn plan_fingerprint(&self) -> String {
        let source = &self.spec.source;
        let sql: Vec<&str> = self.spec.transform.sql.split_whitespace().collect();
        let canonical = format!(
            "sluice plan\0codec {}\0{:?}\0{}\0{}\0{}\0{:?}\0{:?}\0{}",
            crate::state_codec::VERSION,
            source.fields,
            source.event_time,
            self.table_name(),
            sql.join(" "),
            self.spec.transform.polars,
            self.spec.view.key,
            self.bucket_micros()
        );
        // Quarantine checks decide which rows the plan sees; warn checks only count. (Appended
        // only when there are any, so jobs without them keep their fingerprints.)
        let quarantine: Vec<_> = self
            .spec
            .checks
            .iter()
            .filter(|c| c.severity == crate::spec::Severity::Quarantine)
            .map(|c| {
                format!(
                    "{:?}",
                    (
                        c.check,
                        &c.column,
                        &c.values,
                        &c.min,
                        &c.max,
                        c.inclusive,
                        &c.pattern,
                        &c.predicate
                    )
                ) + &unique_terms(self, c)
            })
            .collect();
        let canonical = if quarantine.is_empty() {
            canonical
        } else {
            format!("{canonical}\0checks {}", quarantine.join("\0"))
        };
        // The horizon decides which rows a deduplicating plan drops. (Appended only when the
        // SQL can deduplicate, so other jobs keep their fingerprints.)
        let canonical = if self
            .spec
            .transform
            .sql
            .to_ascii_lowercase()
            .contains("row_number")
        {
            format!(
                "{canonical}\0dedup_within {}",
                self.spec.transform.dedup_within().as_micros()
            )
        } else {
            canonical
        };
        // Inputs beside the primary stream (appended only when there are any, so one-input
        // jobs keep their fingerprints; `[[sources]]` with one entry is `[source]`).
        let canonical = match self.other_inputs_fingerprint() {
            Some(inputs) => format!("{canonical}\0inputs {inputs}"),
            None => canonical,
        };
        // Hashed PII fields hash differently under another key: name the key (its id, never
        // the key), so a process with another key is told its state and views are not its own.
        let hashed = self
            .input_fields()
            .flatten()
            .any(|f| f.pii.is_some() && f.policy == Some(crate::pii::PiiPolicy::Hash));
        let canonical = if hashed {
            let key = crate::pii::PiiProtection::for_job(self)
                .ok()
                .flatten()
                .and_then(|p| p.key_id())
                .unwrap_or_else(|| "none".to_string());
            format!("{canonical}\0pii key {key}")
        } else {
            canonical
        };
        blake3::hash(canonical.as_bytes()).to_hex()[..32].to_string()
    }

    /// Checks that state written under fingerprint `found` (in `place`) is this plan's.
    pub fn check_plan(&self, place: &str, found: Option<&str>) -> Result<(), PlanMismatch> {
        let expected = self.plan_fingerprint();
        match found {
            Some(found) if found != expected => Err(PlanMismatch {
                job: self.name().to_string(),
                version: self.version(),
                place: place.to_string(),
                found: found.to_string(),
                expected,
            }),
            _ => Ok(()),
        }
    }
}

/// `<job>` for version 1, `<job>.v<N>` after.
pub fn versioned_name(job: &str, version: u32) -> String {
    match version {
        0 | 1 => job.to_string(),
        n => format!("{job}.v{n}"),
    }
}

/// State written by another plan than the one asked to run on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "job `{job}` version {version}: {place} was written by plan {found}, but this job file compiles to plan {expected}; the SQL, schema, key or bucket changed under the same version. Raise `[view] version` (to {next}) to build the new plan next to the old one (`sluice replay`), or restore the job file that wrote it",
    next = version + 1
)]
pub struct PlanMismatch {
    pub job: String,
    pub version: u32,
    /// What holds the other plan's state, e.g. `the view table /lake/views/orders`.
    pub place: String,
    pub found: String,
    pub expected: String,
}

#[cfg(test)]
mod tests {
    use crate::fixture::{OrdersJob, REGION_PER_MINUTE_SQL};

    #[test]
    fn versions_name_their_state_and_version_1_keeps_the_old_names() {
        let job = OrdersJob::default().job(REGION_PER_MINUTE_SQL);
        assert_eq!(job.version(), 1);
        assert_eq!(job.versioned_name(), job.name());
        assert_eq!(super::versioned_name("orders", 3), "orders.v3");
    }

    #[test]
    fn reformatting_the_sql_keeps_the_fingerprint_and_changing_it_does_not() {
        let job = OrdersJob::default().job(REGION_PER_MINUTE_SQL);
        let spaced = REGION_PER_MINUTE_SQL.replace(' ', "\n  ");
        let same = OrdersJob::default().job(&spaced);
        assert_eq!(job.plan_fingerprint(), same.plan_fingerprint());
        let other = OrdersJob {
            bucket: "1m",
            ..OrdersJob::default()
        }
        .job(REGION_PER_MINUTE_SQL);
        assert_ne!(job.plan_fingerprint(), other.plan_fingerprint());
        let mismatch = job
            .check_plan("the view table", Some(&other.plan_fingerprint()))
            .unwrap_err();
        let message = mismatch.to_string();
        assert!(message.contains(&job.plan_fingerprint()), "{message}");
        assert!(message.contains(&other.plan_fingerprint()), "{message}");
        assert!(
            message.contains("Raise `[view] version` (to 2)"),
            "{message}"
        );
        assert!(job.check_plan("x", None).is_ok());
        assert!(job.check_plan("x", Some(&job.plan_fingerprint())).is_ok());
    }
}
