use std::sync::Arc;

use arrow::array::TimestampMicrosecondArray;
use arrow::datatypes::{Field, Schema};

use super::*;

const MINUTE: i64 = 60_000_000;

/// The rule with one-minute windows and the given knobs (`min_deviation` 1).
fn rule(trailing: usize, min_history: usize) -> Rule {
    Rule {
        window: "1m".to_string(),
        window_us: MINUTE,
        trailing,
        k: 3.5,
        min_history,
        min_deviation: 1,
    }
}

/// Counts by minute index (window `i` starts at `i` minutes).
fn minutes(rows: &[(i64, u64)]) -> BTreeMap<i64, u64> {
    rows.iter().map(|&(i, n)| (i * MINUTE, n)).collect()
}

/// Windows `0..n` with `rows(i)` rows each (0 is left out of the map, as no row was seen).
fn feed(n: i64, rows: impl Fn(i64) -> u64) -> BTreeMap<i64, u64> {
    (0..n)
        .map(|i| (i, rows(i)))
        .filter(|&(_, r)| r > 0)
        .map(|(i, r)| (i * MINUTE, r))
        .collect()
}

/// The anomalies of `[0, n minutes)` as (minute index, direction).
fn flagged(counts: &BTreeMap<i64, u64>, n: i64, rule: &Rule) -> Vec<(i64, Direction)> {
    detect(counts, (0, n * MINUTE), rule)
        .iter()
        .map(|a| (a.start_us / MINUTE, a.direction))
        .collect()
}

/// 95, 100, 105, 95, ...: a feed with some spread.
fn wobbly(i: i64) -> u64 {
    [95, 100, 105][i.rem_euclid(3) as usize]
}

#[test]
fn a_constant_feed_has_no_anomalies() {
    let counts = feed(40, |_| 100);
    assert!(flagged(&counts, 40, &rule(12, 6)).is_empty());
    let judged = windows(&counts, (0, 40 * MINUTE), &rule(12, 6))
        .filter(|w| w.band.is_some())
        .count();
    assert_eq!(judged, 34, "every window after the first six is judged");
}

#[test]
fn a_spike_is_flagged_high_and_a_dropped_window_low() {
    let counts = feed(30, |i| match i {
        20 => 400,
        25 => 0,
        _ => wobbly(i),
    });
    assert_eq!(
        flagged(&counts, 30, &rule(12, 6)),
        [(20, Direction::High), (25, Direction::Low)]
    );
    let dropped = detect(&counts, (0, 30 * MINUTE), &rule(12, 6))[1].clone();
    assert_eq!(dropped.rows, 0, "a window without a row counts as empty");
    assert_eq!(dropped.median, 100.0);
    assert_eq!(dropped.mad, 5.0);
    let half = 3.5 * MAD_SCALE * 5.0;
    assert!((dropped.low - (100.0 - half)).abs() < 1e-9, "{dropped:?}");
    assert!((dropped.high - (100.0 + half)).abs() < 1e-9, "{dropped:?}");
    assert_eq!(dropped.start, "1970-01-01T00:25:00Z");
    assert_eq!(dropped.end, "1970-01-01T00:26:00Z");
}

#[test]
fn no_window_is_judged_before_min_history_windows_precede_it() {
    // The drop at minute 3 has three windows before it; four are needed.
    let counts = feed(6, |i| if i == 3 { 0 } else { 10 });
    let all: Vec<Window> = windows(&counts, (0, 6 * MINUTE), &rule(12, 4)).collect();
    assert_eq!(all.len(), 6);
    assert!(
        all[..4]
            .iter()
            .all(|w| w.band.is_none() && w.direction.is_none())
    );
    assert_eq!(all[4].band.map(|b| b.history), Some(4));
    assert!(flagged(&counts, 6, &rule(12, 4)).is_empty());
    // With three needed it is judged, and found.
    assert_eq!(flagged(&counts, 6, &rule(12, 3)), [(3, Direction::Low)]);
}

#[test]
fn with_a_mad_of_zero_the_band_is_min_deviation_wide() {
    // A perfectly steady history: MAD 0, so the band is median ± min_deviation.
    let mut counts = feed(10, |_| 100);
    counts.insert(8 * MINUTE, 101);
    counts.insert(9 * MINUTE, 102);
    let steady = rule(6, 6);
    assert_eq!(flagged(&counts, 10, &steady), [(9, Direction::High)]);
    let window = windows(&counts, (0, 10 * MINUTE), &steady)
        .nth(8)
        .expect("window 8");
    let band = window.band.expect("judged");
    assert_eq!((band.mad, band.low, band.high), (0.0, 99.0, 101.0));
    // A wider floor tolerates both.
    let tolerant = Rule {
        min_deviation: 5,
        ..steady
    };
    assert!(flagged(&counts, 10, &tolerant).is_empty());
}

#[test]
fn one_earlier_outlier_moves_neither_the_median_nor_the_mad() {
    // A huge spike at minute 7 sits in the history of the windows after it.
    let counts = feed(14, |i| match i {
        7 => 5000,
        13 => 140,
        _ => wobbly(i),
    });
    let found = detect(&counts, (0, 14 * MINUTE), &rule(12, 6));
    let found: Vec<(i64, Direction, f64, f64)> = found
        .iter()
        .map(|a| (a.start_us / MINUTE, a.direction, a.median, a.mad))
        .collect();
    // A mean and standard deviation would be dragged to ~500 ± ~1400 and find nothing at 13.
    assert_eq!(
        found,
        [
            (7, Direction::High, 100.0, 5.0),
            (13, Direction::High, 100.0, 5.0)
        ]
    );
}

#[test]
fn only_the_trailing_windows_count_so_a_new_level_becomes_normal() {
    let counts = feed(12, |i| if i < 6 { 100 } else { 200 });
    // Minute 6: four windows of 100 before it. Minute 7: still three of four. Minute 8: two
    // and two, median 150 and MAD 50: 200 is inside the band.
    assert_eq!(
        flagged(&counts, 12, &rule(4, 4)),
        [(6, Direction::High), (7, Direction::High)]
    );
}

#[test]
fn windows_before_the_first_row_and_partial_windows_are_left_out() {
    let counts = minutes(&[(10, 5), (11, 5), (12, 5)]);
    // From 30 s: the window at 0 is cut off; the first with a row is minute 10, and the range
    // ends inside minute 12, which is not whole either.
    let all: Vec<i64> = windows(&counts, (MINUTE / 2, 12 * MINUTE + 1), &rule(12, 1))
        .map(|w| w.start_us / MINUTE)
        .collect();
    assert_eq!(all, [10, 11]);
    assert!(
        windows(&BTreeMap::new(), (0, 60 * MINUTE), &rule(12, 1))
            .next()
            .is_none()
    );
}

fn times(micros: &[i64]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![Field::new(
        "event_time",
        crate::spec::timestamp_type(),
        true,
    )]));
    let column = TimestampMicrosecondArray::from(micros.to_vec()).with_timezone("UTC");
    RecordBatch::try_new(schema, vec![Arc::new(column)]).expect("batch")
}

#[test]
fn rows_are_counted_in_epoch_aligned_windows() {
    let mut counts = BTreeMap::new();
    let batch = times(&[0, MINUTE - 1, MINUTE, 3 * MINUTE + 7, -1, MINUTE + 5, 0]);
    count_rows(&batch, "event_time", MINUTE, &mut counts).expect("counted");
    count_rows(&times(&[2 * MINUTE]), "event_time", MINUTE, &mut counts).expect("counted");
    assert_eq!(
        counts,
        BTreeMap::from([
            (-MINUTE, 1),
            (0, 3),
            (MINUTE, 2),
            (2 * MINUTE, 1),
            (3 * MINUTE, 1)
        ])
    );
    let missing = count_rows(&batch, "ts", MINUTE, &mut counts);
    assert!(missing.is_err_and(|e| e.to_string().contains("`ts`")));
}

#[test]
fn the_history_of_a_range_starts_trailing_windows_before_its_first_window() {
    let rule = rule(12, 6);
    assert_eq!(rule.history_start(60 * MINUTE), 48 * MINUTE);
    assert_eq!(rule.history_start(60 * MINUTE + 30), 48 * MINUTE);
}

#[derive(Deserialize)]
struct File {
    anomalies: AnomalySpec,
}

fn parse(text: &str) -> std::result::Result<AnomalySpec, String> {
    toml::from_str::<File>(text)
        .map(|f| f.anomalies)
        .map_err(|e| e.to_string())
}

#[test]
fn the_spec_parses_with_its_defaults_and_resolves_the_window() {
    let spec = parse("[anomalies]\n").expect("defaults");
    assert_eq!(
        (
            spec.window,
            spec.trailing,
            spec.k,
            spec.min_history,
            spec.min_deviation
        ),
        (None, 12, 3.5, 6, 1)
    );
    let rule = spec.rule(Duration::from_secs(3600));
    assert_eq!(
        (rule.window.as_str(), rule.window_us),
        ("1h", 3_600_000_000)
    );
    let spec = parse("[anomalies]\nwindow = \"10m\"\ntrailing = 24\nk = 3\nmin_deviation = 50\n")
        .expect("parses");
    let rule = spec.rule(Duration::from_secs(3600));
    assert_eq!(
        (rule.window.as_str(), rule.k, rule.min_deviation),
        ("10m", 3.0, 50)
    );
    assert!(spec.validate(Path::new("j.toml")).is_ok());
}

#[test]
fn unknown_keys_and_impossible_settings_are_refused() {
    assert!(parse("[anomalies]\ntrailling = 3\n").is_err());
    assert!(parse("[anomalies]\nwindow = \"soon\"\n").is_err_and(|e| e.contains("soon")));
    for (text, field) in [
        ("trailing = 0", "anomalies.trailing"),
        ("trailing = 5000", "anomalies.trailing"),
        ("trailing = 4\nmin_history = 5", "anomalies.min_history"),
        ("min_history = 0", "anomalies.min_history"),
        ("k = 0", "anomalies.k"),
        ("k = -1.5", "anomalies.k"),
        ("window = \"0s\"", "anomalies.window"),
    ] {
        let spec = parse(&format!("[anomalies]\n{text}\n")).expect("parses");
        let error = spec
            .validate(Path::new("j.toml"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains(field), "{text}: {error}");
    }
}
