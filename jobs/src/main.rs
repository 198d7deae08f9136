//! `sluice`: the command line of Sluice, one binary with a subcommand per operation.

use sluice_jobs::demo::{self, DemoArgs};
use sluice_jobs::serve_cmd::{self, ServeArgs};
use sluice_jobs::stream_cmd::{self, IngestArgs, StreamArgs};
use sluice_jobs::verify::{self, VerifyArgs};
use sluice_jobs::{bench, bench_stream, transforms};

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use sluice_batch::load::{LoadOptions, Reject, load};
use sluice_batch::{BackfillRequest, BatchError, backfill};
use sluice_core::lake::TableLocation;
use sluice_core::rows::to_json_lines;
use sluice_core::time::parse_time;
use sluice_core::{Job, Lake};

/// Exit code when a command succeeded but rejected some input (e.g. bad JSON lines).
const EXIT_PARTIAL: u8 = 3;
/// Backfill: nothing in the range is complete in the raw table yet (try again later).
const EXIT_INCOMPLETE: u8 = 4;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Lambda-architecture ETL with one codebase: the same job runs on the stream, the lake and the serving layer.",
    after_help = "Examples:\n  sluice demo\n  sluice lake load --job jobs/examples/orders_per_minute.toml orders.jsonl\n  sluice backfill --job jobs/examples/orders_per_minute.toml --from 2024-05-01 --to 2024-05-02\n  sluice view --job jobs/examples/orders_per_minute.toml\n  sluice stream --job jobs/examples/orders_per_minute.toml --brokers 127.0.0.1:9092\n  sluice bench --events 1000000"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "SLUICE_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

use sluice_jobs::OutputFormat as Output;

#[derive(Subcommand)]
enum Command {
    /// Work with the lake's raw tables.
    #[command(subcommand)]
    Lake(LakeCommand),
    /// Recompute the batch view for a time range from the raw table and move the cutoff.
    #[command(
        after_help = "Examples:\n  sluice backfill --job jobs/examples/orders_per_minute.toml --from 2024-05-01T10:00:00Z --to 2024-05-01T12:00:00Z\n  sluice backfill --job jobs/examples/region_totals.toml --output json\n\n  sluice backfill --job job.toml --from 2024-05-01 --to 2024-05-02 --rejects rejected.jsonl\n\nThe range is widened to whole buckets. Re-running a range replaces it. Raw rows the plan fails\non (e.g. a CAST of bad text) are skipped and counted, as the speed layer dead-letters them;\n--rejects writes them as JSON lines (partition, offset, error, reason, record).\nThe range end is clamped to the bucket floor of `lake_complete_until`, the event time before\nwhich the raw table holds every source partition's records (the raw-lake sink records it in\neach commit), so the cutoff never passes records still on their way to the lake;\n--allow-incomplete overrides. Exit 0 on success, 3 when rows were skipped, 4 when nothing in\nthe range is complete in the lake yet (try again later), 1 on error."
    )]
    Backfill(BackfillArgs),
    /// Print a job's batch view as finalized JSON rows (partial states merged across buckets).
    #[command(after_help = "Example:\n  sluice view --job jobs/examples/orders_per_minute.toml")]
    View(JobArgs),
    /// Run the speed layer: consume the job's topic, keep window state, emit exactly once.
    #[command(
        after_help = "Examples:\n  sluice stream --job jobs/examples/orders_per_minute.toml --brokers 127.0.0.1:9092\n  sluice stream --job jobs/examples/orders_per_minute.toml --brokers 127.0.0.1:9092 --metrics-addr 127.0.0.1:9464 --state-dir /var/lib/sluice/opm\n  sluice stream --job job.toml --brokers host:9092 --guarantee at-least-once -X security.protocol=ssl\n\nEach micro-batch is one Kafka transaction: state upserts to <job>.speed, closed windows to\n<job>.results, bad records to <job>.dlq, late ones to <job>.late, and the consumed offsets.\nThe raw-lake sink runs beside it unless --no-lake-sink. SIGINT/SIGTERM finish the current\nmicro-batch and exit 0."
    )]
    Stream(StreamArgs),
    /// Run only the raw-lake sink: land every source record in the raw Delta table, exactly once.
    #[command(
        after_help = "Example:\n  sluice ingest --job jobs/examples/orders_per_minute.toml --brokers 127.0.0.1:9092 --lake s3://bucket/lake\n\nEach Delta commit carries a transaction action per partition (app id <job>-p<partition>,\nversion = last offset); a restart resumes after those offsets."
    )]
    Ingest(IngestArgs),
    /// Measure `/view` point lookups against a running server (prints a table).
    #[command(
        name = "bench-serve",
        after_help = "Example (while `sluice demo` runs):\n  sluice bench-serve --addr 127.0.0.1:8080 --job orders_demo --keys eu,us,apac --connections 8 --seconds 10"
    )]
    BenchServe(sluice_jobs::bench_serve::BenchServeArgs),
    /// Serve the merged views (batch below the cutoff, speed above it) over HTTP.
    #[command(
        after_help = "Examples:\n  sluice serve --job jobs/examples/orders_per_minute.toml --brokers 127.0.0.1:9092\n  sluice serve --job a.toml --job b.toml --brokers host:9092 --lake s3://bucket/lake --bind 0.0.0.0:8080 --token $TOKEN\n  curl 'http://127.0.0.1:8080/v1/jobs/orders_per_minute/view?from=2024-05-01T10:00:00Z&limit=10'\n  curl -XPOST http://127.0.0.1:8080/v1/sql -d '{\"sql\": \"SELECT * FROM orders_per_minute LIMIT 5\"}'\n\nPrints `listening on http://ADDR` once bound. The API is described at /openapi.yaml.\nSIGINT/SIGTERM stop it (exit 0)."
    )]
    Serve(ServeArgs),
    /// Run the built-in schema registry: Confluent's REST API, its state in a compacted Kafka
    /// topic (run several on one topic; they agree through it).
    #[command(
        after_help = "Examples:\n  sluice registry --brokers 127.0.0.1:9092\n  sluice registry --brokers host:9092 --listen 0.0.0.0:8081 --topic _schemas\n  curl -XPOST http://127.0.0.1:8081/subjects/orders-value/versions \\\n    -H 'Content-Type: application/vnd.schemaregistry.v1+json' \\\n    -d '{\"schema\": \"{\\\"type\\\": \\\"string\\\"}\"}'\n  curl http://127.0.0.1:8081/schemas/ids/1\n\nPrints `registry listening on http://ADDR` once it has read the topic to its end and is\nbound. Point Sluice at it with `[source] registry = \"http://ADDR\"` or SLUICE_REGISTRY_URL.\nSee docs/registry.md. SIGINT/SIGTERM stop it (exit 0)."
    )]
    Registry(sluice_jobs::registry_cmd::RegistryArgs),
    /// Look into a job's dead-letter topic and re-publish what failed, exactly once.
    #[command(
        subcommand,
        after_help = "Examples:\n  sluice dlq list --job jobs/examples/orders_per_minute.toml --brokers 127.0.0.1:9092\n  sluice dlq show --job job.toml --brokers 127.0.0.1:9092 --error-type schema_violation --limit 5\n  sluice dlq replay --job job.toml --brokers 127.0.0.1:9092 --dry-run\n\nSee docs/dlq.md."
    )]
    Dlq(sluice_jobs::dlq::DlqCommand),
    /// PostgreSQL: create the seed 003 tables (ETLCheckpoint, ETLDeadLetter, ETLJobMetric).
    #[command(subcommand)]
    Postgres(sluice_jobs::postgres_cmd::PostgresCommand),
    /// Measure rows/s into PostgreSQL with exactly-once on (append, upsert, per-transaction
    /// overhead, and row-by-row INSERTs as the peer); prints a table.
    #[command(name = "bench-postgres", after_help = sluice_jobs::bench_postgres::BENCH_HELP)]
    BenchPostgres(sluice_jobs::bench_postgres::BenchPostgresArgs),
    /// Build a job's new view version (`[view] version = N`) from history while the current
    /// version keeps serving: the lake, then Kafka from the matching offsets.
    Replay(sluice_jobs::replay::ReplayArgs),
    /// List a job's view versions: fingerprint, state (building, caught up, serving,
    /// retired), lag, cutoff, rows.
    #[command(
        after_help = "Example:\n  sluice versions --job jobs/examples/orders_per_minute.toml --brokers 127.0.0.1:9092"
    )]
    Versions(sluice_jobs::versions_cmd::VersionsArgs),
    /// Make the serving layer answer from another view version, atomically, once it has
    /// caught up and verifies (switching back is the rollback).
    Switch(sluice_jobs::versions_cmd::SwitchArgs),
    /// Delete a view version's topics, consumer group and view table (never the serving one).
    #[command(
        after_help = "Example:\n  sluice retire --job jobs/examples/orders_per_minute.toml --brokers 127.0.0.1:9092 --version 1"
    )]
    Retire(sluice_jobs::versions_cmd::RetireArgs),
    /// Recompute the view from the raw table and compare it with the serving layer's merge.
    #[command(
        after_help = "Example:\n  sluice verify --job jobs/examples/orders_per_minute.toml --brokers 127.0.0.1:9092 --lake ./lake\n\nExit 0: identical. Exit 1: different (a summary names the rows). Exit 2: could not run.\nBy default it compares the raw rows each layer had seen (the raw version each backfill read,\nthe offsets the speed state reflects, less late records), so it passes while events flow;\n--quiescent compares the whole raw table (a stopped pipeline, late records backfilled)."
    )]
    Verify(VerifyArgs),
    /// Run the whole pipeline in this process: Kafka, an order generator, the speed layer, the
    /// raw-lake sink, periodic backfills and the serving layer, with a live summary.
    #[command(
        after_help = "Examples:\n  sluice demo\n  sluice demo --bind 127.0.0.1:0 --rate 1000 --backfill-every 30s\n  sluice demo --dir /tmp/sluice-demo --events 20000 --plain\n  sluice demo --brokers 127.0.0.1:9092\n\nWithout --brokers, Kafka is librdkafka's in-process mock cluster and the speed layer runs\nat-least-once (the mock writes no transaction markers). The first stdout line is\n`listening on http://ADDR`; then come example requests and the `sluice verify` command line.\n<dir>/lake and <dir>/state are recreated on start (kept when the last run used the same\n--brokers). SLUICE_BROKERS in the environment counts as --brokers. Ctrl-C stops everything (exit 0)."
    )]
    Demo(DemoArgs),
    /// Generate Nexmark benchmark events (persons, auctions, bids) as flat JSON, to JSON-lines
    /// files or Kafka topics, for the Nexmark queries of jobs/examples/nexmark/.
    #[command(after_help = sluice_jobs::nexmark::HELP)]
    Nexmark(sluice_jobs::nexmark::NexmarkArgs),
    /// Measure decode (JSON; with --format avro also Avro) + the seed 000 plan on synthetic
    /// events (prints a table).
    #[command(
        after_help = "Examples:\n  sluice bench --events 1000000 --batch-size 10000\n  sluice bench --format avro --events 2000000\n\n--format avro decodes the same orders from Confluent-framed Avro (seed 000's OrderEvent)\nbeside JSON. Build with --release for representative figures."
    )]
    Bench {
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
        #[arg(long, default_value_t = 10_000)]
        batch_size: usize,
        /// `avro`: also measure the Avro decoder on the same orders.
        #[arg(long, value_enum, default_value = "json")]
        format: bench::BenchFormat,
    },
    /// Measure the speed layer through a real broker: events/s with exactly-once on and off,
    /// and produce -> <job>.speed latency at a fixed rate (prints tables).
    #[command(
        name = "bench-stream",
        after_help = "Examples:\n  eval \"$(tests/broker.sh start)\"; sluice bench-stream --brokers $BOOTSTRAP\n  sluice bench-stream --brokers $BOOTSTRAP --restore --events 200000\n  sluice bench-stream --brokers $BOOTSTRAP --keyed --events 2000000 --partitions 3 -X receive.message.max.bytes=1000000000\n\nThe producer and the daemon run in this process and share the machine's cores."
    )]
    BenchStream {
        #[arg(long, env = "SLUICE_BROKERS")]
        brokers: String,
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
        #[arg(long, default_value_t = 4)]
        partitions: i32,
        /// Events/s of the latency run.
        #[arg(long, default_value_t = 20_000)]
        rate: u64,
        /// Length of the latency run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Records per micro-batch at most (as `sluice stream --batch-size`).
        #[arg(long, default_value_t = 100_000)]
        batch_size: usize,
        /// Measure restore time against history instead: a clean restart (checkpoint) and a
        /// full changelog replay, for events/100, events/10 and events orders of history.
        #[arg(long, conflicts_with = "keyed")]
        restore: bool,
        /// Measure a high-cardinality running aggregate instead (`GROUP BY customer_id` over
        /// --customers keys): backlog drain exactly-once, peak memory, both restore times.
        #[arg(long)]
        keyed: bool,
        /// Distinct customers of the --keyed run.
        #[arg(long, default_value_t = 1_000_000, requires = "keyed")]
        customers: u32,
        /// Extra librdkafka property for the daemon's clients, `key=value` (repeatable).
        #[arg(short = 'X', value_parser = stream_cmd::parse_property)]
        property: Vec<(String, String)>,
    },
}

#[derive(Subcommand)]
enum LakeCommand {
    /// Append JSON-lines files or stdin to the job's raw Delta table (content already loaded is
    /// skipped).
    #[command(
        after_help = "Examples:\n  sluice lake load --job jobs/examples/orders_per_minute.toml tests/golden/orders.input.jsonl\n  sluice lake load --job jobs/examples/orders_per_minute.toml orders-05-01.jsonl.gz orders-05-02.jsonl.zst\n  zcat orders.jsonl.gz | sluice lake load --job jobs/examples/orders_per_minute.toml -\n  curl -s https://example.com/orders.jsonl.gz | sluice lake load --job job.toml --output json -\n  sluice lake load --job jobs/examples/orders_with_customers.toml --input customers customers.jsonl\n\nA job with several inputs ([[sources]], [[tables]]) keeps a raw table per input: --input names\nthe one the lines go to. Inputs are plain, gzip or zstd, told by their first bytes whatever their names; `-` reads stdin\n(plain or compressed). Each input streams into the table, so memory stays bounded (under 384 MiB)\nwhatever its size, and lands in one commit at its end; a failed load commits nothing. Content\nloaded before is skipped: a file is hashed first and skipped before anything is written, stdin is\nhashed as it is read and then commits nothing. Bad lines are reported on stderr with line, field\nand reason as they are met, and written to --rejects if given; exit 3 when any line was rejected.\nA progress bar is drawn on stderr when it is a terminal (not with --output json)."
    )]
    Load {
        #[command(flatten)]
        job: JobArgs,
        /// JSON-lines inputs, one record per line: files (plain, gzip or zstd) or `-` for stdin.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Write rejected lines here (JSON: file, line, error, field, reason, record).
        #[arg(long)]
        rejects: Option<PathBuf>,
        /// Lines longer than this many bytes are rejected as `oversized`.
        #[arg(long, default_value_t = sluice_core::decode::DEFAULT_MAX_RECORD_BYTES)]
        max_record_bytes: usize,
        /// The input whose raw table the lines go to (its `table` name); needed when the job
        /// has several (`[[sources]]`, `[[tables]]`).
        #[arg(long)]
        input: Option<String>,
    },
    /// Show what the raw table holds completely (per source partition) and the batch view's
    /// cutoff: what a scheduler waits on before a backfill.
    #[command(
        after_help = "Example:\n  sluice lake status --job jobs/examples/orders_per_minute.toml --output json\n  sluice lake status --job jobs/examples/orders_with_customers.toml --input customers\n\n`completeness` is `unbounded` (files loaded whole only), `until` (every partition's records before `lake_complete_until` have landed) or `nothing` (no raw table yet, or a partition not reported by the lake sink yet)."
    )]
    Status {
        #[command(flatten)]
        job: JobArgs,
        /// The input whose raw table to show [default: the primary stream]
        #[arg(long)]
        input: Option<String>,
    },
}

#[derive(Args)]
struct JobArgs {
    /// The job file (TOML).
    #[arg(long)]
    job: PathBuf,
    /// The lake root: a directory or object-store URL [env: SLUICE_LAKE] [default: ./lake]
    #[arg(long)]
    lake: Option<String>,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Args)]
struct BackfillArgs {
    #[command(flatten)]
    job: JobArgs,
    /// Start (inclusive): RFC 3339, a date, or epoch ms. Default: the raw table's first event.
    #[arg(long)]
    from: Option<String>,
    /// End (exclusive). Default: the start of the current bucket.
    #[arg(long)]
    to: Option<String>,
    /// Write the raw rows the plan failed on (skipped) to this file, one JSON object a line.
    #[arg(long, value_name = "FILE")]
    rejects: Option<PathBuf>,
    /// Backfill past what the raw table holds completely (the cutoff may then pass records
    /// still on their way to the lake; the merged view misses them until a later backfill).
    #[arg(long)]
    allow_incomplete: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    // apache-avro warns on every parse of seed 000's schema about its field-level
    // `logicalType` (Avro ignores it there, and so does Sluice's reading of it: docs/formats.md).
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| "warn,buoyant_kernel=off,sluice=info,sluice_jobs=info,sluice_core=info,sluice_batch=info,sluice_stream=info,sluice_serving=info,sluice_registry=info,apache_avro=error".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only on a terminal: a log file or a collector gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn load_job(args: &JobArgs) -> anyhow::Result<(Job, Lake)> {
    let job = Job::from_file(&args.job)?;
    Ok((job, Lake::resolve(args.lake.as_deref())))
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Lake(LakeCommand::Load {
            job,
            files,
            rejects,
            max_record_bytes,
            input,
        }) => lake_load(job, files, rejects, max_record_bytes, input).await,
        Command::Lake(LakeCommand::Status { job: args, input }) => {
            let (job, lake) = load_job(&args)?;
            let job = match input {
                Some(name) => job.input(&name)?.job,
                None => job,
            };
            let status = sluice_batch::lake_status(&job, &lake).await?;
            match args.output {
                Output::Json => println!("{}", serde_json::to_string(&status)?),
                Output::Text => print!("{}", status.to_text()),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Backfill(args) => run_backfill(args).await,
        Command::View(args) => view(args).await,
        Command::BenchStream {
            brokers,
            events,
            partitions,
            rate,
            seconds,
            batch_size,
            restore,
            keyed,
            customers,
            property,
        } => {
            let args = bench_stream::StreamBenchArgs {
                brokers,
                events,
                partitions: partitions.max(1),
                rate: rate.max(1),
                seconds,
                batch_size: batch_size.max(1),
                client_overrides: property,
            };
            if keyed {
                tokio::task::spawn_blocking(move || {
                    sluice_jobs::bench_keyed::run(&args, customers)
                })
                .await??;
            } else if restore {
                tokio::task::spawn_blocking(move || sluice_jobs::bench_restore::run(&args))
                    .await??;
            } else {
                tokio::task::spawn_blocking(move || bench_stream::run(&args)).await??;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Stream(args) => stream_cmd::stream(args).await,
        Command::Ingest(args) => stream_cmd::ingest(args).await,
        Command::Serve(args) => serve_cmd::serve(args).await,
        Command::Registry(args) => sluice_jobs::registry_cmd::run(args).await,
        Command::Dlq(command) => sluice_jobs::dlq::run(command).await,
        Command::Postgres(command) => sluice_jobs::postgres_cmd::run(command).await,
        Command::BenchPostgres(args) => sluice_jobs::bench_postgres::run(args).await,
        Command::BenchServe(args) => {
            tokio::task::spawn_blocking(move || sluice_jobs::bench_serve::run(&args)).await??;
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify(args) => verify::run(args).await,
        Command::Replay(args) => sluice_jobs::replay::run(args).await,
        Command::Versions(args) => sluice_jobs::versions_cmd::versions(args).await,
        Command::Switch(args) => sluice_jobs::versions_cmd::switch(args).await,
        Command::Retire(args) => sluice_jobs::versions_cmd::retire(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Nexmark(args) => sluice_jobs::nexmark::run(args).await,
        Command::Bench {
            events,
            batch_size,
            format,
        } => {
            let result = bench::run(events, batch_size.max(1), format)?;
            bench::print_table(&result);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The job as the input `lake load` fills sees it: the one input of a one-input job, else the
/// one `--input` names, which must carry its own time (a Kafka-timestamped table cannot be
/// loaded from files).
fn input_to_load(job: &Job, name: Option<&str>) -> anyhow::Result<Job> {
    let input = match name {
        Some(name) => job.input(name)?,
        None if job.has_several_inputs() => {
            let names: Vec<String> = job
                .input_names()
                .into_iter()
                .map(|(name, _)| name)
                .collect();
            anyhow::bail!(
                "job `{}` has several inputs ({}): name the one these lines belong to with --input",
                job.name(),
                names.join(", ")
            );
        }
        None => job.primary_input(),
    };
    if input.timed_by_kafka() {
        anyhow::bail!(
            "input `{}` of job `{}` takes its valid_from from each record's Kafka timestamp, which lines in a file do not have: land it from Kafka (`sluice ingest`), or give the table a `valid_from` field",
            input.table,
            job.name()
        );
    }
    Ok(input.job)
}

async fn lake_load(
    args: JobArgs,
    files: Vec<PathBuf>,
    rejects: Option<PathBuf>,
    max_record_bytes: usize,
    input: Option<String>,
) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    let (job, lake) = load_job(&args)?;
    let job = input_to_load(&job, input.as_deref())?;
    if files.iter().filter(|f| f.as_os_str() == "-").count() > 1 {
        anyhow::bail!("`-` (stdin) can be loaded once per command");
    }
    // Rejected lines are written as they are met: memory does not grow with them.
    let mut rejects_out = match &rejects {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("writing {}", path.display()))?,
        )),
        None => None,
    };
    let options = LoadOptions {
        max_record_bytes: max_record_bytes.max(1),
        progress: args.output == Output::Text,
        keep_rejected: false,
    };
    let mut any_rejected = false;
    for file in &files {
        let shown = file.display().to_string();
        let mut on_reject = |reject: &Reject| -> Result<(), BatchError> {
            eprintln!(
                "{shown}:{}: {} rejected: {}",
                reject.line,
                reject.error.kind.as_str(),
                reject.error.reason
            );
            if let (Some(out), Some(path)) = (rejects_out.as_mut(), rejects.as_ref()) {
                let row = serde_json::json!({
                    "file": shown, "line": reject.line, "error": reject.error.kind.as_str(),
                    "field": reject.error.field, "reason": reject.error.reason,
                    "record": String::from_utf8_lossy(&reject.record),
                });
                writeln!(out, "{row}").map_err(|source| BatchError::Io {
                    path: path.clone(),
                    source,
                })?;
            }
            Ok(())
        };
        let report = load(&job, &lake, file, &options, &mut on_reject).await?;
        any_rejected |= report.rejected_lines > 0;
        let summary = serde_json::json!({
            "file": shown, "table": report.table, "rows_loaded": report.rows_loaded,
            "rejected": report.rejected_lines, "already_loaded": report.already_loaded,
            "table_version": report.table_version,
        });
        match args.output {
            Output::Json => println!("{summary}"),
            Output::Text if report.already_loaded => {
                println!(
                    "{shown}: already loaded into {} (content unchanged), skipped",
                    report.table
                )
            }
            Output::Text => println!(
                "{shown}: loaded {} rows into {} (version {}), rejected {}",
                report.rows_loaded,
                report.table,
                report
                    .table_version
                    .map_or("-".to_string(), |v| v.to_string()),
                report.rejected_lines
            ),
        }
    }
    if let (Some(mut out), Some(path)) = (rejects_out, rejects) {
        out.flush()
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(if any_rejected {
        ExitCode::from(EXIT_PARTIAL)
    } else {
        ExitCode::SUCCESS
    })
}

async fn run_backfill(args: BackfillArgs) -> anyhow::Result<ExitCode> {
    let (job, lake) = load_job(&args.job)?;
    let transform = transforms::registry().for_job(&job)?;
    let request = BackfillRequest {
        from: args
            .from
            .as_deref()
            .map(parse_time)
            .transpose()
            .context("--from")?,
        to: args
            .to
            .as_deref()
            .map(parse_time)
            .transpose()
            .context("--to")?,
        progress: args.job.output == Output::Text,
        allow_incomplete: args.allow_incomplete,
    };
    let report = match backfill(&job, &lake, transform, request).await {
        Ok(report) => report,
        Err(error @ BatchError::Incomplete { .. }) => {
            if args.job.output == Output::Json
                && let BatchError::Incomplete {
                    job,
                    from,
                    to,
                    complete_until,
                } = &error
            {
                let until = (complete_until != "-").then_some(complete_until);
                println!(
                    "{}",
                    serde_json::json!({
                        "job": job, "from": from, "to": to, "status": "incomplete",
                        "lake_complete_until": until, "message": error.to_string(),
                    })
                );
            }
            eprintln!("{error}");
            return Ok(ExitCode::from(EXIT_INCOMPLETE));
        }
        Err(error) => return Err(error.into()),
    };
    for row in &report.rejected {
        eprintln!(
            "partition {} offset {}: {} skipped: {}",
            row.partition.map_or("-".to_string(), |p| p.to_string()),
            row.offset.map_or("-".to_string(), |o| o.to_string()),
            row.error,
            row.reason
        );
    }
    if let Some(path) = &args.rejects {
        let mut body = String::new();
        for row in &report.rejected {
            body.push_str(&serde_json::to_string(row)?);
            body.push('\n');
        }
        std::fs::write(path, body).with_context(|| format!("writing {}", path.display()))?;
    }
    match args.job.output {
        Output::Json => println!("{}", serde_json::to_string(&report)?),
        Output::Text => println!(
            "backfill {}: [{} .. {}) read {} raw rows ({} skipped), wrote {} view rows to {} (version {}), cutoff {} in {:.2}s",
            report.job,
            report.from,
            report.to,
            report.rows_read,
            report.rows_rejected,
            report.view_rows,
            report.view_table,
            report
                .table_version
                .map_or("-".to_string(), |v| v.to_string()),
            report.cutoff.as_deref().unwrap_or("-"),
            report.seconds
        ),
    }
    if matches!(args.job.output, Output::Text) && !report.check_violations.is_empty() {
        let checks: Vec<String> = report
            .check_violations
            .iter()
            .map(|v| format!("{} ({}) {}", v.check, v.severity.as_str(), v.rows))
            .collect();
        println!("check violations: {}", checks.join(", "));
    }
    if matches!(args.job.output, Output::Text) && !report.row_count_anomalies.is_empty() {
        let windows: Vec<String> = report
            .row_count_anomalies
            .iter()
            .map(|a| {
                format!(
                    "{} {} ({} rows, expected {}–{})",
                    a.start,
                    a.direction.as_str(),
                    a.rows,
                    band_bound(a.low),
                    band_bound(a.high)
                )
            })
            .collect();
        println!("row-count anomalies: {}", windows.join(", "));
    }
    if let Some(asked) = &report.clamped_from {
        eprintln!(
            "note: --to {asked} was clamped to {}: the raw table holds every partition's records only until {} (the lake sink has not landed later ones yet); --allow-incomplete overrides",
            report.to,
            report.lake_complete_until.as_deref().unwrap_or("-"),
        );
    }
    if report.incomplete {
        eprintln!(
            "warning: --allow-incomplete: the range reaches past {}, what the raw table holds completely; the merged view misses records still on their way to the lake until a later backfill",
            report.lake_complete_until.as_deref().unwrap_or("-"),
        );
    }
    Ok(if report.rows_rejected > 0 {
        ExitCode::from(EXIT_PARTIAL)
    } else {
        ExitCode::SUCCESS
    })
}

/// A bound of a row-count band as the text report prints it: no row count is negative, and a
/// tenth of a row is precision enough to read (`--output json` has the exact band).
fn band_bound(bound: f64) -> f64 {
    if bound <= 0.0 {
        0.0
    } else {
        (bound * 10.0).round() / 10.0
    }
}

async fn view(args: JobArgs) -> anyhow::Result<ExitCode> {
    let (job, lake) = load_job(&args)?;
    let transform = transforms::registry().for_job(&job)?;
    let pipeline = sluice_batch::backfill::compile(&job, transform)?;
    let table = TableLocation::new(lake.view_table(&job));
    let rows = sluice_batch::view::read_view(pipeline.plan(), &table).await?;
    let body = to_json_lines(&[rows])?;
    use std::io::Write;
    std::io::stdout().write_all(&body)?;
    Ok(ExitCode::SUCCESS)
}
