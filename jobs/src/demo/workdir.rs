//! The demo's working directory: the job file, the lake and the speed layer's state. It has
//! its own module because it is the one part that deletes files: it decides when `lake/` and
//! `state/` must be emptied (a new Kafka) and refuses a directory that is not a demo directory.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::kafka::IN_PROCESS;

/// The demo's job, written to `<dir>/orders_demo.toml` on every start.
const JOB_TOML: &str = include_str!("../../examples/demo_orders.toml");
pub(super) const JOB_FILE: &str = "orders_demo.toml";
pub(super) const LAKE_DIR: &str = "lake";
pub(super) const STATE_DIR: &str = "state";
/// Names the Kafka the lake in `<dir>` belongs to.
const KAFKA_MARKER: &str = "kafka";

/// Makes `dir` a demo directory: the job file (from the embedded one) and an empty `lake/` and
/// `state/`, unless the last run used the same external Kafka. Refuses a non-empty directory
/// that is not a demo directory, so that it never deletes anything else.
pub(super) fn prepare_dir(dir: &Path, brokers: Option<&str>) -> anyhow::Result<PathBuf> {
    let dir = std::path::absolute(dir).with_context(|| format!("resolving {}", dir.display()))?;
    let is_demo_dir = dir.join(JOB_FILE).exists();
    if !is_demo_dir
        && dir
            .read_dir()
            .is_ok_and(|mut entries| entries.next().is_some())
    {
        bail!(
            "{} is not empty and holds no {JOB_FILE}, so it is not a demo directory; pass another --dir",
            dir.display()
        );
    }
    let kafka = brokers.unwrap_or(IN_PROCESS);
    let marker = dir.join(KAFKA_MARKER);
    let same_kafka = brokers.is_some()
        && std::fs::read_to_string(&marker).is_ok_and(|previous| previous.trim() == kafka);
    if !same_kafka {
        for sub in [LAKE_DIR, STATE_DIR] {
            remove_dir_if_exists(&dir.join(sub))?;
        }
    }
    let lake = dir.join(LAKE_DIR);
    std::fs::create_dir_all(&lake).with_context(|| format!("creating {}", lake.display()))?;
    let job_file = dir.join(JOB_FILE);
    std::fs::write(&job_file, JOB_TOML)
        .with_context(|| format!("writing {}", job_file.display()))?;
    std::fs::write(&marker, kafka).with_context(|| format!("writing {}", marker.display()))?;
    Ok(dir)
}

/// `--format avro`: the demo job reading Confluent-framed Avro through `registry`, its event
/// time from seed 000's `timestamp`, plus the `channel` that v2 of the schema adds.
pub(super) fn write_avro_job(dir: &Path, registry: &str) -> anyhow::Result<()> {
    let toml = JOB_TOML
        .replacen(
            "table = \"orders\"\n",
            &format!("table = \"orders\"\nformat = \"avro-confluent\"\nregistry = \"{registry}\"\n"),
            1,
        )
        .replacen(
            "{ name = \"event_time\", type = \"timestamp\" },",
            "{ name = \"event_time\", type = \"timestamp\", from = \"timestamp\" },\n  { name = \"channel\", type = \"string\" },",
            1,
        );
    anyhow::ensure!(
        toml.contains("avro-confluent") && toml.contains("from = \"timestamp\""),
        "the embedded demo job no longer has the lines the Avro demo rewrites"
    );
    let job_file = dir.join(JOB_FILE);
    std::fs::write(&job_file, toml).with_context(|| format!("writing {}", job_file.display()))
}

fn remove_dir_if_exists(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(anyhow::Error::new(e).context(format!("emptying {}", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use sluice_core::{Job, Pipeline};

    use super::*;

    #[test]
    fn the_embedded_job_parses_and_compiles() {
        let job = Job::from_toml(JOB_TOML, Path::new(JOB_FILE)).expect("demo job parses");
        assert_eq!(job.name(), "orders_demo");
        Pipeline::compile(&job, None).expect("demo job compiles");
    }

    #[test]
    fn the_avro_job_reads_avro_through_the_registry() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = prepare_dir(&dir.path().join("demo"), None).expect("prepared");
        write_avro_job(&root, "http://127.0.0.1:9").expect("written");
        let job = Job::from_file(&root.join(JOB_FILE)).expect("avro demo job parses");
        assert_eq!(
            job.spec.source.format,
            sluice_core::spec::SourceFormat::AvroConfluent
        );
        assert_eq!(
            job.spec.source.registry.as_deref(),
            Some("http://127.0.0.1:9")
        );
        Pipeline::compile(&job, None).expect("avro demo job compiles");
    }

    #[test]
    fn a_foreign_directory_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("precious.txt"), "x").expect("write");
        let error = prepare_dir(dir.path(), None).expect_err("refused");
        assert!(
            error.to_string().contains("not a demo directory"),
            "{error}"
        );
        assert!(dir.path().join("precious.txt").exists());
    }

    #[test]
    fn a_demo_directory_is_reset_for_the_in_process_kafka() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = prepare_dir(&dir.path().join("demo"), None).expect("prepared");
        std::fs::write(root.join(LAKE_DIR).join("old"), "x").expect("write");
        let root = prepare_dir(&root, None).expect("prepared again");
        assert!(root.join(JOB_FILE).exists());
        assert!(!root.join(LAKE_DIR).join("old").exists());
    }
}
