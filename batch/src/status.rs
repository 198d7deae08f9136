//! `sluice lake status`: what a job's lake holds, for people and for schedulers (an Airflow
//! sensor waits on `lake_complete_until` before it starts a backfill).

use serde::Serialize;
use sluice_core::lake::TableLocation;
use sluice_core::lake_progress::raw_completeness;
use sluice_core::time::format_time;
use sluice_core::{Job, Lake};

use crate::error::Result;

/// A job's raw table and batch view as `sluice lake status` reports them.
#[derive(Debug, Clone, Serialize)]
pub struct LakeStatus {
    pub job: String,
    /// The job's `[view] version` and bucket size (µs): backfill ranges round to buckets.
    pub version: u32,
    pub bucket_us: i64,
    pub raw_table: String,
    /// `None` before anything landed.
    pub raw_version: Option<u64>,
    /// `unbounded` (files loaded whole only: complete for any range), `until` (complete
    /// before `lake_complete_until`) or `nothing` (no table yet, or a partition of the source
    /// topic not reported by the lake sink yet).
    pub completeness: &'static str,
    pub lake_complete_until: Option<String>,
    pub lake_complete_until_us: Option<i64>,
    /// What the raw-lake sink reported per source partition (empty for loaded files).
    pub partitions: Vec<PartitionStatus>,
    pub view_table: String,
    pub view_version: Option<u64>,
    pub cutoff: Option<String>,
    pub cutoff_us: Option<i64>,
    /// Ranges the batch view holds beyond the cutoff, waiting for the gap before them
    /// (`[from_us, to_us]`).
    pub landed_beyond_cutoff_us: Vec<[i64; 2]>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionStatus {
    pub partition: i32,
    pub next_offset: i64,
    pub max_event_us: Option<i64>,
    pub at_end: bool,
}

pub async fn lake_status(job: &Job, lake: &Lake) -> Result<LakeStatus> {
    let raw = TableLocation::new(lake.raw_table(job));
    let view = TableLocation::new(lake.view_table(job));
    let completeness = raw_completeness(&raw, job).await?;
    let partitions = raw
        .lake_progress()
        .await?
        .map(|progress| {
            progress
                .by_partition
                .iter()
                .map(|(&partition, p)| PartitionStatus {
                    partition,
                    next_offset: p.next_offset,
                    max_event_us: p.max_event_us,
                    at_end: p.at_end,
                })
                .collect()
        })
        .unwrap_or_default();
    let coverage = view.coverage().await?;
    Ok(LakeStatus {
        job: job.name().to_string(),
        version: job.version(),
        bucket_us: job.bucket_micros(),
        raw_version: raw.open().await?.version(),
        raw_table: raw.location,
        completeness: completeness.kind(),
        lake_complete_until: completeness.until_us().map(format_time),
        lake_complete_until_us: completeness.until_us(),
        partitions,
        view_version: view.open().await?.version(),
        view_table: view.location,
        cutoff: coverage.cutoff.map(format_time),
        cutoff_us: coverage.cutoff,
        landed_beyond_cutoff_us: coverage.landed.iter().map(|&(f, t)| [f, t]).collect(),
    })
}

impl LakeStatus {
    /// The text `sluice lake status` prints.
    pub fn to_text(&self) -> String {
        let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_string());
        let mut text = format!(
            "job {}\nraw table {} (version {})\n  complete: {}{}\n",
            self.job,
            self.raw_table,
            self.raw_version.map_or("-".to_string(), |v| v.to_string()),
            self.completeness,
            self.lake_complete_until
                .as_ref()
                .map_or(String::new(), |t| format!(" until {t}")),
        );
        for p in &self.partitions {
            text.push_str(&format!(
                "  partition {}: next offset {}, newest event {}{}\n",
                p.partition,
                p.next_offset,
                p.max_event_us.map_or("-".to_string(), format_time),
                if p.at_end { " (read to its end)" } else { "" },
            ));
        }
        text.push_str(&format!(
            "view table {} (version {})\n  cutoff: {}\n",
            self.view_table,
            self.view_version.map_or("-".to_string(), |v| v.to_string()),
            or_dash(&self.cutoff),
        ));
        for [from, to] in &self.landed_beyond_cutoff_us {
            text.push_str(&format!(
                "  landed beyond the cutoff: [{} .. {})\n",
                format_time(*from),
                format_time(*to)
            ));
        }
        text
    }
}
