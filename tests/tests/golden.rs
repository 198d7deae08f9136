//! Golden files: each example job over `tests/golden/orders.input.jsonl` (and, for a job
//! with a table, `tests/golden/customers.input.jsonl`), loaded into a real lake directory and
//! backfilled, must print exactly `tests/golden/<job>.expected.jsonl` (computed independently
//! by `tests/golden/reference.py`).

use sluice_batch::{BackfillRequest, backfill, load_jsonl};
use sluice_core::lake::TableLocation;
use sluice_core::rows::to_json_lines;
use sluice_core::time::parse_time;
use sluice_e2e::{example_job, repo_path, temp_lake};

async fn golden(name: &str) {
    golden_with(name, &[]).await;
}

/// [`golden`] for a job with more inputs: `(input, file, rows)` loaded into each one's raw
/// table beside the orders.
async fn golden_with(name: &str, more: &[(&str, &str, usize)]) {
    let (_dir, lake) = temp_lake();
    let job = example_job(name);
    let report = load_jsonl(&job, &lake, &repo_path("tests/golden/orders.input.jsonl"))
        .await
        .unwrap();
    assert_eq!(
        (report.rows_loaded, report.rejected.len()),
        (60, 0),
        "{name}: load"
    );
    for (input, file, rows) in more {
        let input = job.input(input).unwrap();
        let report = load_jsonl(&input.job, &lake, &repo_path(file))
            .await
            .unwrap();
        assert_eq!(
            (report.rows_loaded, report.rejected.len()),
            (*rows, 0),
            "{name}: load of {file}"
        );
    }
    let transform = sluice_jobs::transforms::registry().for_job(&job).unwrap();
    let request = BackfillRequest {
        from: Some(parse_time("2024-05-01").unwrap()),
        to: Some(parse_time("2024-05-02").unwrap()),
        ..BackfillRequest::default()
    };
    let report = backfill(&job, &lake, transform.clone(), request)
        .await
        .unwrap();
    assert_eq!(report.rows_read, 60, "{name}: rows read");
    let pipeline = sluice_batch::backfill::compile(&job, transform).unwrap();
    let rows =
        sluice_batch::view::read_view(pipeline.plan(), &TableLocation::new(lake.view_table(&job)))
            .await
            .unwrap();
    let actual = String::from_utf8(to_json_lines(&[rows]).unwrap()).unwrap();
    let expected =
        std::fs::read_to_string(repo_path(&format!("tests/golden/{name}.expected.jsonl"))).unwrap();
    assert_eq!(
        actual, expected,
        "{name}: view differs from its golden file"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn orders_per_minute_is_the_seed_query() {
    golden("orders_per_minute").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn region_totals_is_a_running_total_per_region() {
    golden("region_totals").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn completed_orders_masked_is_stateless() {
    golden("completed_orders_masked").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn polars_filter_gives_the_same_view_as_the_sql_filter() {
    golden("orders_per_minute_polars").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn orders_by_customer_region_joins_the_customer_version_valid_at_each_order() {
    golden_with(
        "orders_by_customer_region",
        &[("customers", "tests/golden/customers.input.jsonl", 23)],
    )
    .await;
}
