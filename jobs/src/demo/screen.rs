//! The live summary: a one-screen redraw every second on a terminal, or one line every 5 s
//! with `--plain` (or when stdout is not a terminal), from the generator's counters, the speed
//! layer's metrics, the serving layer's status and newest merged rows, and the backfill loop.
//! Its own module because it only reads the other parts, and its text helpers are tested.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_serving::{JobStatus, Origin, Server, ViewQuery, ViewRow};
use sluice_stream::StreamMetrics;

use super::parts::Running;
use crate::signals::StopSignals;

/// Merged rows shown on the live screen.
const SHOWN_ROWS: usize = 6;
/// The plain summary's period.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// What the screen shows that does not change.
pub(super) struct Info {
    pub(super) job: String,
    pub(super) url: String,
    pub(super) bootstrap: String,
    pub(super) kafka: &'static str,
    pub(super) lake: String,
    pub(super) job_file: String,
    pub(super) started: Instant,
}

/// Shows the summary every second until a signal arrives or the speed layer or sink stops.
pub(super) async fn watch(
    signals: &mut StopSignals,
    server: &Server,
    running: &Running,
    info: &Info,
    plain: bool,
) {
    let mut screen = Screen::new(plain);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = signals.recv() => return,
            _ = tick.tick() => {}
        }
        if running.daemon.is_finished() || running.sink.is_finished() {
            tracing::error!("the speed layer or the raw-lake sink stopped; stopping the demo");
            return;
        }
        screen.update(server, running, info);
    }
}

/// Counters read from the speed layer's metrics.
#[derive(Default)]
struct SpeedCounts {
    consumed: u64,
    dlq: u64,
    late: u64,
    lake_rows: u64,
}

fn speed_counts(metrics: &StreamMetrics, info: &Info) -> SpeedCounts {
    let total = |name| metrics.job_total(name, &info.job);
    SpeedCounts {
        consumed: total("sluice_records_in_total"),
        dlq: total("sluice_dlq_records_total"),
        late: total("sluice_late_records_total"),
        lake_rows: total("sluice_lake_rows_total"),
    }
}

/// One second's view of everything.
struct Frame {
    elapsed: u64,
    generated_per_s: f64,
    consumed_per_s: f64,
    produced: u64,
    malformed: u64,
    late_sent: u64,
    /// Orders failing the job's checks: (negative amount, unknown status).
    failing_checks: (u64, u64),
    generator_done: bool,
    speed: SpeedCounts,
    status: Option<JobStatus>,
    rows: Vec<ViewRow>,
    backfill: String,
}

struct Screen {
    plain: bool,
    /// (when, produced, consumed) at the previous frame.
    previous: Option<(Instant, u64, u64)>,
    next_line: Instant,
}

impl Screen {
    fn new(plain: bool) -> Screen {
        Screen {
            plain,
            previous: None,
            next_line: Instant::now() + PLAIN_EVERY,
        }
    }

    fn update(&mut self, server: &Server, running: &Running, info: &Info) {
        let frame = self.frame(server, running, info);
        if !self.plain {
            say(&redraw(info, &frame));
        } else if Instant::now() >= self.next_line {
            self.next_line = Instant::now() + PLAIN_EVERY;
            say(&plain_line(&frame));
        }
    }

    fn frame(&mut self, server: &Server, running: &Running, info: &Info) -> Frame {
        let now = Instant::now();
        let (produced, malformed, late_sent) = running.counters.get();
        let speed = speed_counts(&running.metrics, info);
        let (generated_per_s, consumed_per_s) = match self.previous {
            Some((at, p, c)) => {
                let seconds = now.duration_since(at).as_secs_f64().max(1e-3);
                (
                    produced.saturating_sub(p) as f64 / seconds,
                    speed.consumed.saturating_sub(c) as f64 / seconds,
                )
            }
            None => (0.0, 0.0),
        };
        self.previous = Some((now, produced, speed.consumed));
        Frame {
            elapsed: info.started.elapsed().as_secs(),
            generated_per_s,
            consumed_per_s,
            produced,
            malformed,
            late_sent,
            failing_checks: running.counters.failing_checks(),
            generator_done: running.counters.done.load(Ordering::SeqCst),
            speed,
            status: server.status().into_iter().find(|s| s.job == info.job),
            rows: recent_rows(server, &info.job),
            backfill: running
                .backfills
                .lock()
                .map(|b| b.describe())
                .unwrap_or_default(),
        }
    }
}

/// The newest windows of the merged view (of the last minute), newest first.
fn recent_rows(server: &Server, job: &str) -> Vec<ViewRow> {
    let since_ms = chrono::Utc::now().timestamp_millis() - 60_000;
    let query = ViewQuery {
        from: Some(since_ms.to_string()),
        limit: Some(1_000),
        ..ViewQuery::default()
    };
    let Ok(answer) = server.view(job, &query) else {
        return Vec::new();
    };
    let mut rows = answer.rows;
    let start = |r: &ViewRow| r.row["window_start"].to_string();
    let region = |r: &ViewRow| r.row["region"].to_string();
    rows.sort_by(|a, b| {
        start(b)
            .cmp(&start(a))
            .then_with(|| region(a).cmp(&region(b)))
    });
    rows.truncate(SHOWN_ROWS);
    rows
}

pub(super) fn header(info: &Info) -> Vec<String> {
    let (url, job) = (&info.url, &info.job);
    vec![
        format!("listening on {url} (the dashboard: {url}/)"),
        format!(
            "sluice demo: job {job}, Kafka ({}) at {}, lake {}",
            info.kafka, info.bootstrap, info.lake
        ),
        format!("  curl '{url}/v1/jobs/{job}/view?key=eu'"),
        format!(
            "  curl -XPOST {url}/v1/sql -d '{{\"sql\":\"SELECT region, SUM(revenue) FROM {job} GROUP BY region\"}}'"
        ),
        format!(
            "  sluice verify --job {} --brokers {} --lake {}",
            info.job_file, info.bootstrap, info.lake
        ),
        "Ctrl-C stops the demo. Times are UTC.".to_string(),
    ]
}

/// The whole screen: clear, header, counters, the newest merged rows.
fn redraw(info: &Info, frame: &Frame) -> String {
    let mut lines = header(info);
    lines.push(String::new());
    lines.extend(status_lines(frame));
    lines.push(String::new());
    lines.extend(row_lines(&frame.rows));
    format!("\x1b[H\x1b[2J{}", lines.join("\n"))
}

fn status_lines(f: &Frame) -> Vec<String> {
    let s = f.status.as_ref();
    let done = if f.generator_done {
        "  (generator done)"
    } else {
        ""
    };
    vec![
        format!(
            "events   {:>7.0}/s generated   {} total, {} malformed, {} late{done}",
            f.generated_per_s,
            grouped(f.produced),
            grouped(f.malformed),
            grouped(f.late_sent)
        ),
        format!(
            "checks   {} with a negative amount (quarantined), {} with an unknown status (warned)",
            grouped(f.failing_checks.0),
            grouped(f.failing_checks.1)
        ),
        format!(
            "speed    {:>7.0}/s consumed    watermark {}   source lag {}   DLQ {}   late topic {}",
            f.consumed_per_s,
            time_of(s.and_then(|s| s.watermark.as_deref())),
            number(s.and_then(|s| s.source_lag_records)),
            grouped(f.speed.dlq),
            grouped(f.speed.late)
        ),
        format!(
            "batch    cutoff {}   lake rows {}   last backfill: {}",
            time_of(s.and_then(|s| s.cutoff.as_deref())),
            grouped(f.speed.lake_rows),
            f.backfill
        ),
        format!(
            "serving  {}   speed lag {}   freshness {} ms   rows: {} batch, {} speed, {} merged",
            if s.is_some_and(|s| s.ready) {
                "ready"
            } else {
                "starting"
            },
            number(s.map(|s| s.speed_lag_records)),
            number(s.and_then(|s| s.freshness_ms)),
            s.map_or(0, |s| s.rows.batch),
            s.map_or(0, |s| s.rows.speed),
            s.map_or(0, |s| s.rows.merged)
        ),
    ]
}

fn row_lines(rows: &[ViewRow]) -> Vec<String> {
    let line = |cells: [&str; 6]| {
        format!(
            "  {:<6} {:<17} {:>7} {:>11} {:>9}  {}",
            cells[0], cells[1], cells[2], cells[3], cells[4], cells[5]
        )
    };
    let mut lines = vec![line([
        "region", "window", "orders", "revenue", "avg", "origin",
    ])];
    if rows.is_empty() {
        lines.push(
            "  (no rows yet: the merged view fills once the speed layer commits)".to_string(),
        );
    }
    for r in rows {
        let cell = |column: &str| text(&r.row[column]);
        let window = format!("{}-{}", cell("window_start"), cell("window_end"));
        let (region, orders) = (cell("region"), cell("orders"));
        let (revenue, avg) = (cell("revenue"), cell("avg_amount"));
        lines.push(line([
            region.as_str(),
            window.as_str(),
            orders.as_str(),
            revenue.as_str(),
            avg.as_str(),
            origin_name(r.origin),
        ]));
    }
    lines
}

fn plain_line(f: &Frame) -> String {
    let s = f.status.as_ref();
    format!(
        "[{:>5}s] {:.0} events/s, {} events ({} malformed, {} late, {} negative amount, {} unknown \
         status){} | speed: watermark {}, \
         source lag {}, DLQ {}, late {} | serving: {} ({} batch, {} speed, {} merged rows), \
         speed lag {}, freshness {} ms | cutoff {}, backfill: {}",
        f.elapsed,
        f.generated_per_s,
        f.produced,
        f.malformed,
        f.late_sent,
        f.failing_checks.0,
        f.failing_checks.1,
        if f.generator_done {
            ", generator done"
        } else {
            ""
        },
        time_of(s.and_then(|s| s.watermark.as_deref())),
        number(s.and_then(|s| s.source_lag_records)),
        f.speed.dlq,
        f.speed.late,
        if s.is_some_and(|s| s.ready) {
            "ready"
        } else {
            "starting"
        },
        s.map_or(0, |s| s.rows.batch),
        s.map_or(0, |s| s.rows.speed),
        s.map_or(0, |s| s.rows.merged),
        number(s.map(|s| s.speed_lag_records)),
        number(s.and_then(|s| s.freshness_ms)),
        time_of(s.and_then(|s| s.cutoff.as_deref())),
        f.backfill
    )
}

fn origin_name(origin: Origin) -> &'static str {
    match origin {
        Origin::Batch => "batch",
        Origin::Speed => "speed",
        Origin::Merged => "merged",
    }
}

/// A JSON cell for the table: times as `HH:MM:SS`, floats with two decimals.
fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_string(),
        Value::String(s) => short_time(s).to_string(),
        Value::Number(n) if n.is_f64() => format!("{:.2}", n.as_f64().unwrap_or_default()),
        other => other.to_string(),
    }
}

/// `HH:MM:SS` of an RFC 3339 time; other text unchanged.
fn short_time(text: &str) -> &str {
    match text.split_once('T') {
        Some((date, time)) if date.len() == 10 => time.get(..8).unwrap_or(time),
        _ => text,
    }
}

fn time_of(value: Option<&str>) -> &str {
    value.map_or("-", short_time)
}

fn number(value: Option<i64>) -> String {
    value.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// `1234567` as `1,234,567`.
pub(super) fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub(super) fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

pub(super) fn clock() -> String {
    chrono::Utc::now().format("%H:%M:%S").to_string()
}

/// Writes a line to stdout, ignoring a closed stdout (the demo keeps running).
pub(super) fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn cells_are_short() {
        assert_eq!(short_time("2024-05-01T10:00:10Z"), "10:00:10");
        assert_eq!(short_time("2024-05-01T10:00:10.123+00:00"), "10:00:10");
        assert_eq!(short_time("eu"), "eu");
        assert_eq!(text(&json!(12.5)), "12.50");
        assert_eq!(text(&json!(12)), "12");
        assert_eq!(grouped(1_234_567), "1,234,567");
        assert_eq!(grouped(12), "12");
        assert_eq!(clip("abcdef", 3), "abc...");
    }
}
