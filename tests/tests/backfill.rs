//! Backfill against a real lake directory: idempotent re-runs, exact range replacement, the
//! cutoff in commit metadata, late data corrected by the next run, and idempotent loads.

use std::io::Write;

use sluice_batch::{BackfillReport, BackfillRequest, backfill, load_jsonl};
use sluice_core::lake::TableLocation;
use sluice_core::time::parse_time;
use sluice_core::{Job, Lake};
use sluice_e2e::{canonical_rows, example_job, repo_path, temp_lake};

fn range(from: &str, to: &str) -> BackfillRequest {
    BackfillRequest {
        from: Some(parse_time(from).unwrap()),
        to: Some(parse_time(to).unwrap()),
        ..BackfillRequest::default()
    }
}

async fn run(job: &Job, lake: &Lake, from: &str, to: &str) -> BackfillReport {
    backfill(job, lake, None, range(from, to)).await.unwrap()
}

async fn view_rows(job: &Job, lake: &Lake) -> Vec<String> {
    canonical_rows(
        &TableLocation::new(lake.view_table(job))
            .read_all()
            .await
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn backfill_twice_gives_identical_tables_and_replaces_exactly_its_range() {
    let (_dir, lake) = temp_lake();
    let job = example_job("orders_per_minute");
    load_jsonl(&job, &lake, &repo_path("tests/golden/orders.input.jsonl"))
        .await
        .unwrap();

    let first = run(&job, &lake, "2024-05-01T10:00:00Z", "2024-05-01T12:00:00Z").await;
    assert_eq!(first.cutoff.as_deref(), Some("2024-05-01T12:00:00Z"));
    let before = view_rows(&job, &lake).await;
    assert_eq!(before.len(), 6, "one row per (window, bucket): {before:#?}");

    let second = run(&job, &lake, "2024-05-01T10:00:00Z", "2024-05-01T12:00:00Z").await;
    assert!(second.table_version > first.table_version);
    assert_eq!(
        view_rows(&job, &lake).await,
        before,
        "re-running a range changes nothing"
    );

    run(&job, &lake, "2024-05-01T11:00:00Z", "2024-05-01T12:00:00Z").await;
    assert_eq!(
        view_rows(&job, &lake).await,
        before,
        "re-running a sub-range changes nothing"
    );

    let empty = run(&job, &lake, "2024-05-01T12:00:00Z", "2024-05-01T13:00:00Z").await;
    assert_eq!((empty.rows_read, empty.view_rows), (0, 0));
    assert_eq!(
        empty.cutoff.as_deref(),
        Some("2024-05-01T13:00:00Z"),
        "contiguous range moves the cutoff"
    );
    assert_eq!(view_rows(&job, &lake).await, before);

    let cutoff = TableLocation::new(lake.view_table(&job))
        .cutoff()
        .await
        .unwrap();
    assert_eq!(
        cutoff,
        Some(parse_time("2024-05-01T13:00:00Z").unwrap()),
        "cutoff is read back from commit metadata"
    );

    let gap = run(&job, &lake, "2024-05-01T15:00:00Z", "2024-05-01T16:00:00Z").await;
    assert_eq!(
        gap.cutoff.as_deref(),
        Some("2024-05-01T13:00:00Z"),
        "a gap keeps the cutoff"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn late_events_are_corrected_by_the_next_backfill_of_their_bucket() {
    let (dir, lake) = temp_lake();
    let job = example_job("orders_per_minute");
    load_jsonl(&job, &lake, &repo_path("tests/golden/orders.input.jsonl"))
        .await
        .unwrap();
    run(&job, &lake, "2024-05-01T10:00:00Z", "2024-05-01T12:00:00Z").await;
    let before = view_rows(&job, &lake).await;

    let late = dir.path().join("late.jsonl");
    let mut file = std::fs::File::create(&late).unwrap();
    writeln!(file, r#"{{"order_id":"late1","amount":1000.0,"status":"completed","event_time":"2024-05-01T11:01:30Z"}}"#).unwrap();
    drop(file);
    assert_eq!(load_jsonl(&job, &lake, &late).await.unwrap().rows_loaded, 1);
    assert!(
        load_jsonl(&job, &lake, &late).await.unwrap().already_loaded,
        "the same file loads once"
    );

    run(&job, &lake, "2024-05-01T11:00:00Z", "2024-05-01T12:00:00Z").await;
    let after = view_rows(&job, &lake).await;
    let changed: Vec<_> = after.iter().filter(|r| !before.contains(r)).collect();
    assert_eq!(
        changed.len(),
        1,
        "only the 11:01 window changes: {changed:#?}"
    );
    assert!(changed[0].contains("\"total_orders\":"), "{changed:?}");
    let unchanged_10h = |rows: &[String]| {
        rows.iter()
            .filter(|r| r.contains("\"__bucket\":1714557600000000"))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        unchanged_10h(&before),
        unchanged_10h(&after),
        "the 10:00 bucket is untouched"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn default_range_covers_the_raw_table() {
    let (_dir, lake) = temp_lake();
    let job = example_job("region_totals");
    load_jsonl(&job, &lake, &repo_path("tests/golden/orders.input.jsonl"))
        .await
        .unwrap();
    let report = backfill(&job, &lake, None, BackfillRequest::default())
        .await
        .unwrap();
    assert_eq!(report.rows_read, 60);
    assert_eq!(report.from, "2024-05-01T10:00:00Z");
}

#[tokio::test(flavor = "multi_thread")]
async fn backfill_of_an_empty_lake_says_what_is_missing() {
    let (_dir, lake) = temp_lake();
    let job = example_job("region_totals");
    let err = backfill(&job, &lake, None, BackfillRequest::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no Delta table here yet") || err.contains("has no rows"),
        "{err}"
    );
}

/// Eight hours of orders (one a second) in a lake of their own.
async fn eight_hours(dir: &std::path::Path) -> (Job, Lake) {
    use sluice_core::fixture::{OrderGenerator, OrderShape, T0_MS};
    let lake = Lake::resolve(Some(dir.to_str().unwrap()));
    let job = example_job("orders_per_minute");
    let shape = OrderShape {
        start_ms: T0_MS,
        spacing_ms: 1_000,
        ..OrderShape::default()
    };
    let mut body = Vec::new();
    for record in OrderGenerator::new(5, shape).records(8 * 3_600) {
        body.extend_from_slice(&record);
        body.push(b'\n');
    }
    let file = dir.join("orders.jsonl");
    std::fs::write(&file, body).unwrap();
    load_jsonl(&job, &lake, &file).await.unwrap();
    (job, lake)
}

fn hour(h: i64) -> i64 {
    sluice_core::fixture::T0_MS * 1_000 + h * 3_600_000_000
}

fn hours(from: i64, to: i64) -> BackfillRequest {
    BackfillRequest {
        from: Some(hour(from)),
        to: Some(hour(to)),
        ..BackfillRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_shards_land_the_same_view_and_the_cutoff_waits_for_the_gap() {
    let whole_dir = tempfile::tempdir().unwrap();
    let (job, whole) = eight_hours(whole_dir.path()).await;
    let one = backfill(&job, &whole, None, hours(0, 8)).await.unwrap();
    assert_eq!(one.cutoff_us, Some(hour(8)));

    let sharded_dir = tempfile::tempdir().unwrap();
    let (job, sharded) = eight_hours(sharded_dir.path()).await;
    // Hours 1..8 at once, racing for the same view table: the first hour of history is
    // missing, so no cutoff may stand anywhere yet.
    let shards = (1..8).map(|h| backfill(&job, &sharded, None, hours(h, h + 1)));
    for report in futures::future::join_all(shards).await {
        let report = report.expect("a shard lost to a concurrent one is redone, not failed");
        assert_eq!(report.cutoff_us, None, "{report:?}");
    }
    let view = TableLocation::new(sharded.view_table(&job));
    let coverage = view.coverage().await.unwrap();
    assert_eq!(coverage.cutoff, None);
    assert_eq!(coverage.landed, vec![(hour(1), hour(8))]);

    // The gap filled: the cutoff moves over everything that landed beyond it.
    let first = backfill(&job, &sharded, None, hours(0, 1)).await.unwrap();
    assert_eq!(first.cutoff_us, Some(hour(8)));
    assert_eq!(
        view_rows(&job, &sharded).await,
        view_rows(&job, &whole).await
    );
    assert_eq!(view.coverage().await.unwrap().landed, vec![]);
}
