//! `<job>.control`: which view version of a job serves, and which versions exist.
//!
//! One compacted topic per job (not per version), one partition, JSON values, keyed by:
//!
//! | key | value |
//! | --- | --- |
//! | [`SERVING_KEY`] | [`ServingPointer`]: the version the serving layer answers from |
//! | `version.<N>` ([`version_key`]) | [`VersionRecord`]: a version's plan and job file, and whether it is retired |
//!
//! `sluice replay` registers a version, `sluice switch` moves the pointer, `sluice retire`
//! marks a version retired. A switch is one record: a serving layer that reads the topic sees
//! the old pointer or the new one, never a mix, and follows it without a restart (the pointer
//! carries the job file, so a server started with another version's file can compile it).

use serde::{Deserialize, Serialize};

use crate::spec::Job;

/// The key of the serving pointer.
pub const SERVING_KEY: &str = "serving";

/// The key of version `version`'s record.
pub fn version_key(version: u32) -> String {
    format!("version.{version}")
}

/// The version `key` is the record of (`None` for other keys).
pub fn version_of_key(key: &str) -> Option<u32> {
    key.strip_prefix("version.")?.parse().ok()
}

/// A job file as the control topic carries it: enough to compile the version anywhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionSpec {
    pub version: u32,
    /// [`Job::plan_fingerprint`].
    pub fingerprint: String,
    /// The job file's TOML text.
    pub job_toml: String,
}

impl VersionSpec {
    pub fn of(job: &Job, job_toml: &str) -> VersionSpec {
        VersionSpec {
            version: job.version(),
            fingerprint: job.plan_fingerprint(),
            job_toml: job_toml.to_string(),
        }
    }

    /// The job this spec describes; `origin` names it in errors.
    pub fn job(&self, origin: &std::path::Path) -> crate::Result<Job> {
        Job::from_toml(&self.job_toml, origin)
    }
}

/// The version the serving layer answers from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServingPointer {
    #[serde(flatten)]
    pub spec: VersionSpec,
    /// When the switch happened (ms since the epoch).
    pub switched_at_ms: i64,
    /// The version served before (what a rollback returns to).
    pub previous: Option<u32>,
}

/// A version of the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    #[serde(flatten)]
    pub spec: VersionSpec,
    /// When it was registered (ms since the epoch).
    pub registered_at_ms: i64,
    /// Its topics and tables were deleted (`sluice retire`).
    #[serde(default)]
    pub retired: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_version_and_records_round_trip() {
        assert_eq!(version_key(3), "version.3");
        assert_eq!(version_of_key("version.3"), Some(3));
        assert_eq!(version_of_key("serving"), None);
        assert_eq!(version_of_key("version.x"), None);
        let pointer = ServingPointer {
            spec: VersionSpec {
                version: 2,
                fingerprint: "f".into(),
                job_toml: "name = \"j\"".into(),
            },
            switched_at_ms: 5,
            previous: Some(1),
        };
        let json = serde_json::to_string(&pointer).unwrap();
        assert!(json.contains("\"version\":2"), "{json}");
        assert_eq!(
            serde_json::from_str::<ServingPointer>(&json).unwrap(),
            pointer
        );
    }
}
