//! `sluice versions`, `sluice switch` and `sluice retire`: a job's view versions, which one
//! serves, and removing old ones.
//!
//! The serving pointer and the version records live in `<job>.control`
//! ([`sluice_core::control`]); a switch writes one record, which every running `sluice serve`
//! follows. A switch is refused unless the version has caught up and `sluice verify` passes on
//! it; switching back to the previous version is the rollback.

use std::process::ExitCode;
use std::time::Duration;

use arrow::array::AsArray;
use clap::Args;
use rdkafka::consumer::BaseConsumer;
use serde::Serialize;
use sluice_core::control::{SERVING_KEY, ServingPointer, VersionRecord, VersionSpec, version_key};
use sluice_core::lake::TableLocation;
use sluice_core::plan_version::versioned_name;
use sluice_core::topics::{Topics, stream_group};
use sluice_core::{Job, Lake};
use sluice_serving::control::{ControlState, ControlTopic};

use crate::OutputFormat;
use crate::stream_cmd::parse_duration_arg;

/// What every versions command takes.
#[derive(Args, Debug)]
pub struct VersionArgs {
    #[command(flatten)]
    pub target: crate::target::KafkaJobArgs,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  sluice switch --job jobs/orders_v2.toml --brokers 127.0.0.1:9092\n  sluice switch --job jobs/orders_v2.toml --brokers 127.0.0.1:9092 --version 1   # roll back\n\nExit 0: switched (or already serving). Exit 1: refused (not caught up, verify failed) or an error."
)]
pub struct SwitchArgs {
    #[command(flatten)]
    pub common: VersionArgs,
    /// The version to serve [default: the one the job file names].
    #[arg(long)]
    pub version: Option<u32>,
    /// Switch even if the version has not caught up or verify fails.
    #[arg(long)]
    pub force: bool,
    /// Caught up means a consumer lag under this many records.
    #[arg(long, default_value_t = 1_000)]
    pub caught_up: i64,
    /// How long verify may retry while the layers settle.
    #[arg(long, default_value = "30s", value_parser = parse_duration_arg)]
    pub settle: Duration,
}

#[derive(Args, Debug)]
pub struct VersionsArgs {
    #[command(flatten)]
    pub common: VersionArgs,
    /// A version is listed as caught up when its consumer lag is under this many records.
    #[arg(long, default_value_t = 1_000)]
    pub caught_up: i64,
}

#[derive(Args, Debug)]
pub struct RetireArgs {
    #[command(flatten)]
    pub common: VersionArgs,
    /// The version to delete (never the serving one).
    #[arg(long)]
    pub version: u32,
}

/// One version as `sluice versions` lists it.
#[derive(Debug, Serialize)]
pub struct VersionRow {
    pub version: u32,
    pub fingerprint: String,
    /// `serving`, `caught up`, `building` or `retired`.
    pub state: &'static str,
    /// Records behind the source topic (`None`: its speed layer never committed).
    pub lag: Option<i64>,
    pub cutoff: Option<String>,
    pub view_rows: Option<u64>,
}

/// A job's versions: the file's, the ones the control topic knows, the serving one.
struct Known {
    job: Job,
    control: ControlTopic,
    state: ControlState,
    file_spec: VersionSpec,
}

impl Known {
    fn read(args: &VersionArgs) -> anyhow::Result<Known> {
        let job = Job::from_file(&args.target.job)?;
        let text = std::fs::read_to_string(&args.target.job)?;
        let control = ControlTopic::for_job(&job, &args.target.brokers, &args.target.property);
        let state = control.read()?;
        let file_spec = VersionSpec::of(&job, &text);
        Ok(Known {
            job,
            control,
            state,
            file_spec,
        })
    }

    /// The serving version: the pointer's, else version 1 (what a server started on a
    /// job file without versions serves).
    fn serving(&self) -> u32 {
        self.state.serving.as_ref().map_or(1, |p| p.spec.version)
    }

    fn spec(&self, version: u32) -> Option<VersionSpec> {
        if version == self.file_spec.version {
            return Some(self.file_spec.clone());
        }
        if let Some(pointer) = &self.state.serving
            && pointer.spec.version == version
        {
            return Some(pointer.spec.clone());
        }
        self.state.versions.get(&version).map(|r| r.spec.clone())
    }

    fn versions(&self) -> Vec<u32> {
        let mut versions: Vec<u32> = self.state.versions.keys().copied().collect();
        versions.push(self.file_spec.version);
        versions.extend(self.state.serving.as_ref().map(|p| p.spec.version));
        versions.sort_unstable();
        versions.dedup();
        versions
    }

    fn retired(&self, version: u32) -> bool {
        self.state.versions.get(&version).is_some_and(|r| r.retired)
    }
}

/// Records the version in `<job>.control` (what `sluice replay` does first).
pub fn register(
    job: &Job,
    job_toml: &str,
    brokers: &str,
    overrides: &[(String, String)],
) -> anyhow::Result<()> {
    let control = ControlTopic::for_job(job, brokers, overrides);
    let record = VersionRecord {
        spec: VersionSpec::of(job, job_toml),
        registered_at_ms: chrono::Utc::now().timestamp_millis(),
        retired: false,
    };
    control.write(&version_key(job.version()), &record)?;
    Ok(())
}

/// Records the version unless `<job>.control` knows it already (what `sluice stream` does on
/// start, so that a later switch away from it can switch back).
pub fn register_if_missing(
    job: &Job,
    job_toml: &str,
    brokers: &str,
    overrides: &[(String, String)],
) -> anyhow::Result<()> {
    let state = ControlTopic::for_job(job, brokers, overrides).read()?;
    match state.versions.get(&job.version()) {
        Some(known) if known.spec.fingerprint == job.plan_fingerprint() && !known.retired => Ok(()),
        _ => register(job, job_toml, brokers, overrides),
    }
}

/// The consumer lag of version `version`'s speed layer (`None`: it never committed).
fn version_lag(job: &Job, version: u32, args: &VersionArgs) -> anyhow::Result<Option<i64>> {
    let group = stream_group(&versioned_name(job.name(), version));
    let reader: BaseConsumer =
        sluice_kafka::client_config(&args.target.brokers, &args.target.property, |c| {
            c.set("group.id", &group);
        })
        .create()?;
    let lags = sluice_kafka::group_lag(&reader, &job.spec.source.topic, Duration::from_secs(30))?;
    if lags.iter().all(|l| l.done.is_none()) {
        return Ok(None);
    }
    Ok(Some(sluice_kafka::total_lag(&lags)))
}

async fn view_rows(view: &TableLocation) -> Option<u64> {
    let session = view.session("v").await.ok()?;
    let batches = session
        .sql("SELECT COUNT(*) AS n FROM v")
        .await
        .ok()?
        .collect()
        .await
        .ok()?;
    let counts = batches
        .first()?
        .column(0)
        .as_primitive_opt::<arrow::datatypes::Int64Type>()?;
    (!counts.is_empty()).then(|| counts.value(0).max(0) as u64)
}

pub async fn versions(versions_args: VersionsArgs) -> anyhow::Result<ExitCode> {
    let args = &versions_args.common;
    let known = Known::read(args)?;
    let lake = Lake::resolve(args.target.lake.as_deref());
    let mut rows = Vec::new();
    for version in known.versions() {
        let Some(spec) = known.spec(version) else {
            continue;
        };
        let job = spec.job(&args.target.job)?;
        let lag = version_lag(&known.job, version, args)?;
        let state = if known.retired(version) {
            "retired"
        } else if version == known.serving() {
            "serving"
        } else if lag.is_some_and(|lag| lag < versions_args.caught_up) {
            "caught up"
        } else {
            "building"
        };
        let view = TableLocation::new(lake.view_table(&job));
        let cutoff = view.coverage().await.ok().and_then(|c| c.cutoff);
        rows.push(VersionRow {
            version,
            fingerprint: spec.fingerprint,
            state,
            lag,
            cutoff: cutoff.map(sluice_core::time::format_time),
            view_rows: view_rows(&view).await,
        });
    }
    if args.output == OutputFormat::Json {
        let body = serde_json::json!({"job": known.job.name(), "versions": rows});
        println!("{body}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:>7}  {:<32}  {:<9}  {:>9}  {:<20}  {:>9}",
        "version", "fingerprint", "state", "lag", "cutoff", "view rows"
    );
    let dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_string());
    for row in rows {
        println!(
            "{:>7}  {:<32}  {:<9}  {:>9}  {:<20}  {:>9}",
            row.version,
            row.fingerprint,
            row.state,
            dash(row.lag.map(|l| l.to_string())),
            dash(row.cutoff),
            dash(row.view_rows.map(|r| r.to_string())),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What a switch did (`--output json`).
#[derive(Debug, Serialize)]
struct SwitchReport {
    job: String,
    from: u32,
    to: u32,
    switched: bool,
    forced: bool,
    lag: Option<i64>,
    verify_identical: Option<bool>,
    why_refused: Option<String>,
}

pub async fn switch(args: SwitchArgs) -> anyhow::Result<ExitCode> {
    let common = &args.common;
    let known = Known::read(common)?;
    let to = args.version.unwrap_or(known.file_spec.version);
    let from = known.serving();
    let spec = known.spec(to).ok_or_else(|| {
        anyhow::anyhow!(
            "job `{}` has no version {to}: `sluice versions` lists them; replay a job file with `[view] version = {to}` first",
            known.job.name()
        )
    })?;
    if known.retired(to) {
        anyhow::bail!("version {to} of job `{}` is retired", known.job.name());
    }
    let mut report = SwitchReport {
        job: known.job.name().to_string(),
        from,
        to,
        switched: false,
        forced: args.force,
        lag: None,
        verify_identical: None,
        why_refused: None,
    };
    let already = known.state.serving.as_ref().is_some_and(|p| p.spec == spec);
    if !already {
        let job = spec.job(&common.target.job)?;
        report.lag = version_lag(&known.job, to, common)?;
        let why_refused = refusal(&args, &job, &mut report).await?;
        report.why_refused = why_refused;
        if report.why_refused.is_none() || args.force {
            let pointer = ServingPointer {
                spec: spec.clone(),
                switched_at_ms: chrono::Utc::now().timestamp_millis(),
                previous: Some(from).filter(|&f| f != to),
            };
            if !known.state.versions.contains_key(&to) {
                register(
                    &job,
                    &spec.job_toml,
                    &common.target.brokers,
                    &common.target.property,
                )?;
            }
            known.control.write(SERVING_KEY, &pointer)?;
            report.switched = true;
        }
    }
    print_switch(&report, already, common.output)?;
    Ok(if report.switched || already {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Why the switch to `job`'s version may not happen (`None`: it may): not caught up, or
/// verify finds the merged view different from a recompute.
async fn refusal(
    args: &SwitchArgs,
    job: &Job,
    report: &mut SwitchReport,
) -> anyhow::Result<Option<String>> {
    match report.lag {
        None => {
            return Ok(Some(format!(
                "version {} has never streamed (replay it first)",
                report.to
            )));
        }
        Some(lag) if lag >= args.caught_up => {
            return Ok(Some(format!(
                "version {} is {lag} records behind (caught up is under {})",
                report.to, args.caught_up
            )));
        }
        Some(_) => {}
    }
    let common = &args.common;
    let lake = Lake::resolve(common.target.lake.as_deref());
    let (diff, _) = crate::verify::check(
        job,
        &lake,
        (&common.target.brokers, &common.target.property),
        crate::verify::Mode::Cut,
        args.settle,
    )
    .await?;
    report.verify_identical = Some(diff.is_empty());
    Ok((!diff.is_empty()).then(|| {
        format!(
            "verify: version {}'s merged view differs from a recompute ({} rows only in the recompute, {} only in the merged view, {} differ)",
            report.to,
            diff.only_in_recompute.len(),
            diff.only_in_merged.len(),
            diff.different.len()
        )
    }))
}

fn print_switch(report: &SwitchReport, already: bool, output: OutputFormat) -> anyhow::Result<()> {
    if output == OutputFormat::Json {
        println!("{}", serde_json::to_string(report)?);
        return Ok(());
    }
    match (&report.why_refused, report.switched) {
        _ if already => println!(
            "switch {}: version {} already serves",
            report.job, report.to
        ),
        (Some(why), true) => println!(
            "switch {}: version {} -> {} FORCED past: {why}",
            report.job, report.from, report.to
        ),
        (Some(why), false) => println!("switch {}: refused ({why}); --force overrides", report.job),
        (None, _) => println!(
            "switch {}: version {} -> {} (caught up, verify identical); running servers follow within a second",
            report.job, report.from, report.to
        ),
    }
    Ok(())
}

pub async fn retire(args: RetireArgs) -> anyhow::Result<ExitCode> {
    let common = &args.common;
    let known = Known::read(common)?;
    let version = args.version;
    if version == known.serving() {
        anyhow::bail!(
            "version {version} of job `{}` serves; switch to another version first",
            known.job.name()
        );
    }
    let spec = known
        .spec(version)
        .ok_or_else(|| anyhow::anyhow!("job `{}` has no version {version}", known.job.name()))?;
    let job = spec.job(&common.target.job)?;
    let topics = Topics::for_job(&job);
    let group = stream_group(&job.versioned_name());
    let client =
        sluice_kafka::client_config(&common.target.brokers, &common.target.property, |_| {});
    sluice_kafka::delete_topics_and_groups(
        &client,
        &[&topics.speed, &topics.results, &topics.dlq, &topics.late],
        &[&group],
        Duration::from_secs(30),
    )
    .map_err(|e| {
        let busy = e.to_string().contains("NonEmptyGroup");
        anyhow::anyhow!(e).context(if busy {
            format!("version {version}'s speed layer still has members in group `{group}`: stop its daemons first (one with static membership stays a member until the broker's session timeout; `--dynamic-membership` leaves at once)")
        } else {
            format!("retiring version {version}")
        })
    })?;
    let lake = Lake::resolve(common.target.lake.as_deref());
    let view = TableLocation::new(lake.view_table(&job));
    let objects = view.delete_all().await?;
    let record = VersionRecord {
        spec,
        registered_at_ms: chrono::Utc::now().timestamp_millis(),
        retired: true,
    };
    known.control.write(&version_key(version), &record)?;
    if common.output == OutputFormat::Json {
        let body = serde_json::json!({
            "job": job.name(), "version": version, "retired": true,
            "topics": [topics.speed, topics.results, topics.dlq, topics.late],
            "group": group, "view_table": view.location, "objects_deleted": objects,
        });
        println!("{body}");
    } else {
        println!(
            "retire {} version {version}: deleted {}, {}, {}, {}, group {group} and {} ({objects} objects); its RocksDB state directories are local to each daemon's machine",
            job.name(),
            topics.speed,
            topics.results,
            topics.dlq,
            topics.late,
            view.location
        );
    }
    Ok(ExitCode::SUCCESS)
}
