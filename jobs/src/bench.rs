//! `sluice bench`: JSON decode + the seed 000 plan over synthetic order events, single thread.

use std::time::Instant;

use sluice_core::fixture::{OrderGenerator, OrderShape};
use sluice_core::{Job, JobPlan, JsonDecoder};

pub const ORDERS_PER_MINUTE: &str = include_str!("../examples/orders_per_minute.toml");

/// Synthetic order events as JSON (the shared generator): 3 ms apart with up to 5 s of
/// disorder, 60% completed, four regions.
pub fn synthetic_orders(count: usize, seed: u64) -> Vec<Vec<u8>> {
    let shape = OrderShape {
        spacing_ms: 3,
        disorder_ms: 5_000,
        completed_percent: 60,
        customers: 50_000,
        ..OrderShape::default()
    };
    OrderGenerator::new(seed, shape).records(count)
}

pub struct BenchResult {
    pub events: usize,
    pub batch_size: usize,
    pub decode_seconds: f64,
    pub plan_seconds: f64,
    pub windows: usize,
}

/// Decodes and aggregates `events` in micro-batches of `batch_size`, folding partial states
/// the way the speed layer does.
pub fn run(events: usize, batch_size: usize) -> anyhow::Result<BenchResult> {
    let job = Job::from_toml(
        ORDERS_PER_MINUTE,
        std::path::Path::new("jobs/examples/orders_per_minute.toml"),
    )?;
    let plan = JobPlan::compile(&job, job.source_schema())?;
    let stage = plan
        .aggregate()
        .ok_or_else(|| anyhow::anyhow!("bench job has no aggregate"))?;
    let decoder = JsonDecoder::new(&job);
    let records = synthetic_orders(events, 7);
    let (mut decode_seconds, mut plan_seconds) = (0.0, 0.0);
    let mut state = Vec::new();
    for chunk in records.chunks(batch_size) {
        let started = Instant::now();
        let decoded = decoder.decode(chunk)?;
        let decoded_at = Instant::now();
        let partial = plan.partial(&decoded.batch)?;
        state.push(partial);
        if state.len() >= 16 {
            state = vec![stage.merge(&state)?];
        }
        decode_seconds += (decoded_at - started).as_secs_f64();
        plan_seconds += decoded_at.elapsed().as_secs_f64();
    }
    let started = Instant::now();
    let result = stage.finalize(&state)?;
    plan_seconds += started.elapsed().as_secs_f64();
    Ok(BenchResult {
        events,
        batch_size,
        decode_seconds,
        plan_seconds,
        windows: result.num_rows(),
    })
}

pub fn print_table(r: &BenchResult) {
    let total = r.decode_seconds + r.plan_seconds;
    let rate = |s: f64| {
        if s > 0.0 {
            r.events as f64 / s
        } else {
            f64::INFINITY
        }
    };
    println!(
        "sluice bench: {} synthetic order events, micro-batches of {}, 1 thread",
        r.events, r.batch_size
    );
    println!("{:<28} {:>10} {:>16}", "stage", "seconds", "events/s/core");
    println!(
        "{:<28} {:>10.3} {:>16.0}",
        "JSON decode",
        r.decode_seconds,
        rate(r.decode_seconds)
    );
    println!(
        "{:<28} {:>10.3} {:>16.0}",
        "seed 000 plan (partial+merge)",
        r.plan_seconds,
        rate(r.plan_seconds)
    );
    println!(
        "{:<28} {:>10.3} {:>16.0}",
        "decode + plan",
        total,
        rate(total)
    );
    println!("({} one-minute windows in the result)", r.windows);
}
