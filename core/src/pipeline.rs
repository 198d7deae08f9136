//! A job's plan together with its Rust transform: what the batch and speed layers both run on
//! each batch of source rows, so neither composes the steps on its own.

use std::sync::Arc;

use arrow::array::RecordBatch;

use crate::error::Result;
use crate::plan::JobPlan;
use crate::spec::Job;
use crate::transform::BatchTransform;

/// The transform (if any) followed by the compiled plan.
#[derive(Debug)]
pub struct Pipeline {
    plan: JobPlan,
    transform: Option<Arc<dyn BatchTransform>>,
}

impl Pipeline {
    /// Compiles `job`'s SQL against its transform's output schema (or the source schema).
    pub fn compile(job: &Job, transform: Option<Arc<dyn BatchTransform>>) -> Result<Pipeline> {
        let source = job.source_schema();
        let input = match &transform {
            Some(t) => t.output_schema(&source)?,
            None => source,
        };
        Ok(Pipeline {
            plan: JobPlan::compile(job, input)?,
            transform,
        })
    }

    pub fn plan(&self) -> &JobPlan {
        &self.plan
    }

    /// Source rows → the transform → stage 1's filter.
    pub fn filtered(&self, source: &RecordBatch) -> Result<RecordBatch> {
        match &self.transform {
            Some(t) => self.plan.filter(&t.apply(source)?),
            None => self.plan.filter(source),
        }
    }

    /// Which events are too late for the speed layer: every window they belong to ended at
    /// least `allowed_lateness` before `watermark` (all µs). Without a group window nothing
    /// ever closes, so nothing is late.
    pub fn late_rows(
        &self,
        event_times: &[i64],
        watermark: i64,
        allowed_lateness: i64,
    ) -> Vec<bool> {
        let Some(window) = self.plan.aggregate().and_then(|stage| stage.window()) else {
            return vec![false; event_times.len()];
        };
        let assignment = window.assign(event_times);
        let mut latest_end = vec![i64::MIN; event_times.len()];
        for (&row, &end) in assignment.rows.iter().zip(&assignment.ends) {
            let slot = &mut latest_end[row as usize];
            *slot = (*slot).max(end);
        }
        latest_end
            .into_iter()
            .map(|end| end.saturating_add(allowed_lateness) <= watermark)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn pipeline(window: &str) -> Pipeline {
        let toml = format!(
            r#"
name = "t"
[source]
topic = "t"
event_time = "ts"
fields = [{{ name = "ts", type = "timestamp" }}]
[transform]
sql = "SELECT COUNT(*) AS n FROM t GROUP BY {window}"
"#
        );
        let job = Job::from_toml(&toml, Path::new("t.toml")).expect("job");
        Pipeline::compile(&job, None).expect("plan")
    }

    #[test]
    fn late_means_every_window_closed_more_than_the_lateness_ago() {
        let tumble = pipeline("TUMBLE(ts, INTERVAL '10' SECOND)");
        // Window [0, 10s) closes at 10s; with 5s lateness it takes updates until 15s.
        assert_eq!(
            tumble.late_rows(&[1_000_000, 12_000_000], 15_000_000, 5_000_000),
            vec![true, false]
        );
        assert_eq!(
            tumble.late_rows(&[1_000_000], 14_999_999, 5_000_000),
            vec![false]
        );
        // HOP: the event also belongs to a later window that is still open.
        let hop = pipeline("HOP(ts, INTERVAL '10' SECOND, INTERVAL '20' SECOND)");
        assert_eq!(hop.late_rows(&[1_000_000], 15_000_000, 0), vec![false]);
        assert_eq!(hop.late_rows(&[1_000_000], 20_000_000, 0), vec![true]);
    }
}
