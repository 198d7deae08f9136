"""The web dashboard in a real headless Chromium against a running pipeline.

`sluice demo` (its in-process Kafka, the speed layer, backfills and the serving layer) runs the
dashboard at `/`; a second server, `sluice serve --token` over the demo's Kafka and lake,
checks the token flow. Each page must load without a console error or a failed request, and
its charts must fill with data from the pipeline: the pages expose what they drew as data
attributes (`data-points` on each chart, `data-events-per-s` on a job's row, ...), which is
what the assertions read. Screenshots go to $SLUICE_ARTIFACTS (default tests/artifacts/).

Playwright (PyPI) drives Debian's chromium ($SLUICE_CHROMIUM, default /usr/bin/chromium);
it never downloads a browser.
"""
import json
import os
import pathlib
import urllib.error
import urllib.request

import pytest

from sluice_harness import PATIENCE, browser, demo_and_token_server, page, wait_until  # noqa: F401 (fixtures)


REPO = pathlib.Path(__file__).resolve().parents[2]
ARTIFACTS = pathlib.Path(os.environ.get("SLUICE_ARTIFACTS") or REPO / "tests" / "artifacts") / "dashboard"
JOB = "orders_demo"
TOKEN = "dashboard-test-token"
PARTITIONS = 2


def get(url, token=None):
    """(status, JSON body) of a GET."""
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")
    except (urllib.error.URLError, ConnectionError):
        return None, None


def healthy(url):
    wait_until(f"{url}/health to answer 200", lambda: get(f"{url}/health")[0] == 200)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """The running demo and a `sluice serve --token` over its Kafka and lake: their URLs."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    work = tmp_path_factory.mktemp("dashboard")
    demo_args = ["--rate", "300", "--backfill-every", "5s", "--partitions", str(PARTITIONS)]
    with demo_and_token_server(work, ARTIFACTS, TOKEN, demo_args) as (demo_url, token_url):
        healthy(demo_url)
        healthy(token_url)
        yield {"demo": demo_url, "token": token_url}


def test_the_jobs_page_shows_the_running_pipeline(pipeline, page):
    page.page.goto(pipeline["demo"] + "/")
    row = f"tr[data-job={JOB}]"
    page.page.wait_for_selector(f"body[data-state=ok] {row}", timeout=PATIENCE * 1000)
    rate = wait_until("a positive events/s on the job's row",
                      lambda: (page.number(row, "data-events-per-s") or 0) > 0 and page.number(row, "data-events-per-s"))
    assert rate > 0
    assert page.attribute(row, "data-ready") == "true"
    partitions = page.page.evaluate(
        f"() => document.querySelectorAll('[data-job-card={JOB}] table.partitions tbody tr').length")
    assert partitions == PARTITIONS, "one lag row per source partition"
    wait_until("the DLQ count on the job's row", lambda: (page.number(row, "data-dlq") or 0) > 0)
    page.shot("jobs")
    page.assert_clean()


def test_the_job_page_charts_the_last_hour_and_the_merged_view(pipeline, page):
    page.page.goto(f"{pipeline['demo']}/#/job/{JOB}")
    for chart in ["throughput", "lag", "watermark-delay"]:
        selector = f"[data-chart={chart}]"
        wait_until(f"the {chart} chart to plot samples", lambda: (page.number(selector, "data-points") or 0) > 0)
        assert page.page.query_selector(f"{selector} canvas"), f"uPlot drew the {chart} chart"
    view = "[data-chart=view]"
    wait_until("the merged-view chart to plot speed rows", lambda: (page.number(view, "data-speed") or 0) > 0)
    assert page.page.query_selector(f"{view} canvas")
    # Read at once: the page redraws every few seconds.
    drawn = page.page.evaluate("""() => {
      const chart = document.querySelector("[data-chart=view]").dataset;
      const rows = [...document.querySelectorAll("table.newest tbody tr")].map((r) => r.className);
      return {points: +chart.points, batch: +chart.batch, speed: +chart.speed, merged: +chart.merged, rows};
    }""")
    assert drawn["points"] == drawn["batch"] + drawn["speed"] + drawn["merged"], drawn
    assert drawn["rows"], "the newest rows are listed"
    assert set(drawn["rows"]) <= {"origin-batch", "origin-speed", "origin-merged"}, drawn
    page.shot("job")
    page.assert_clean()


def test_the_dlq_page_lists_dead_letters_with_their_headers(pipeline, page):
    page.page.goto(f"{pipeline['demo']}/#/dlq/{JOB}")
    counted = "[data-dlq-records]"
    wait_until("dead letters to be counted", lambda: (page.number(counted, "data-dlq-records") or 0) > 0)
    shown = page.page.evaluate("""() => {
      const section = document.querySelector("[data-topic$='.dlq']");
      const types = [...section.querySelectorAll("tr[data-error-type]")].map((t) => +t.dataset.records);
      const records = [...section.querySelectorAll("tr.dlq-record")].map((r) => r.textContent);
      return {total: +section.dataset.records, types, records};
    }""")
    assert shown["types"], "counts by error type"
    assert sum(shown["types"]) == shown["total"], shown
    assert shown["records"], "the newest dead letters are listed"
    assert all("sluice.error.type" in r and "sluice.source.offset" in r for r in shown["records"]), shown
    page.page.locator("tr.dlq-record details summary").first.click()
    page.shot("dlq")
    page.assert_clean()


def test_the_quality_page_shows_each_check_and_the_records_it_quarantined(pipeline, page):
    """The demo job's two checks: `range_amount` (quarantine) dead-letters the generator's
    negative amounts, `accepted_values_status` (warn) counts its `refunded` orders; both are
    counted by the backfills too."""
    page.page.goto(pipeline["demo"] + "/")
    row = f"tr[data-job={JOB}]"
    page.page.wait_for_selector(f"body[data-state=ok] {row}", timeout=PATIENCE * 1000)
    assert page.attribute(row, "data-checks") == "2"
    page.page.click(f"{row} a[href='#/quality/{JOB}']")
    page.page.wait_for_selector("body[data-page=quality][data-state=ok] table.checks", timeout=PATIENCE * 1000)
    quarantine, warn = "tr[data-check=range_amount]", "tr[data-check=accepted_values_status]"
    assert page.attribute(quarantine, "data-severity") == "quarantine"
    assert page.attribute(warn, "data-severity") == "warn"
    wait_until("records quarantined by the range check",
               lambda: (page.number(quarantine, "data-speed-quarantined") or 0) > 0)
    assert page.number(warn, "data-speed-quarantined") == 0, "a warn check quarantines nothing"
    # The first backfill waits for a complete one-minute bucket in the lake.
    wait_until("a backfill's violations of both checks",
               lambda: all((page.number(r, "data-batch-violations") or 0) > 0 for r in (quarantine, warn)),
               timeout=PATIENCE * 3)
    section = "[data-quarantined-by=range_amount]"
    wait_until("the newest records the range check quarantined",
               lambda: (page.number(section, "data-shown") or 0) > 0)
    shown = page.page.evaluate("""() => [...document.querySelectorAll(
        "[data-quarantined-by=range_amount] tr.quarantined-record")].map((r) => r.textContent)""")
    assert shown, "quarantined records are listed"
    assert all("check_failed" in r and "range_amount" in r and '"amount":-' in r.replace(" ", "") for r in shown), shown
    # The page shows what the API answers: the job status lists the checks it drew.
    status, body = get(f"{pipeline['demo']}/v1/jobs/{JOB}")
    assert status == 200
    assert [(c["name"], c["check"], c["severity"], c["column"]) for c in body["checks"]] == [
        ("accepted_values_status", "accepted_values", "warn", "status"),
        ("range_amount", "range", "quarantine", "amount")]
    page.shot("quality")
    page.assert_clean()


def test_the_token_is_asked_once_and_sent_as_a_bearer_token(pipeline, page):
    url = pipeline["token"]
    assert get(f"{url}/v1/jobs/{JOB}/history")[0] == 401
    assert get(f"{url}/v1/jobs/{JOB}/dlq", "wrong")[0] == 401
    assert get(f"{url}/v1/jobs/{JOB}/history", TOKEN)[0] == 200

    page.page.goto(url + "/")
    page.page.wait_for_selector("body[data-state=needs-token] #token-input", timeout=PATIENCE * 1000)
    page.shot("token-asked")
    page.page.fill("#token-input", "wrong")
    page.page.click("#token-save")
    page.page.wait_for_selector("#notice:has-text('refused')", timeout=PATIENCE * 1000)
    assert page.attribute("body", "data-state") == "needs-token"

    page.page.fill("#token-input", TOKEN)
    page.page.click("#token-save")
    page.page.wait_for_selector(f"body[data-state=ok] tr[data-job={JOB}]", timeout=PATIENCE * 1000)

    # Kept for the session: a reload needs no new token.
    page.page.reload()
    page.page.wait_for_selector(f"body[data-state=ok] tr[data-job={JOB}]", timeout=PATIENCE * 1000)
    page.page.goto(f"{url}/#/job/{JOB}")
    wait_until("the job page behind the token to chart samples",
               lambda: (page.number("[data-chart=throughput]", "data-points") or 0) > 0)
    page.shot("token-job")

    page.page.click("#token-forget")
    page.page.wait_for_selector("body[data-state=needs-token]", timeout=PATIENCE * 1000)

    # Every answer of the API carried the right token, every refusal none or the wrong one;
    # the page and its files never needed one.
    api = [r for r in page.responses if "/v1/" in r.url]
    answered = [r.request.all_headers().get("authorization") for r in api if r.status == 200]
    assert answered and set(answered) == {f"Bearer {TOKEN}"}, answered
    refused = [(r.status, r.request.all_headers().get("authorization")) for r in api if r.status != 200]
    assert refused and all(status == 401 and auth in (None, "Bearer wrong") for status, auth in refused), refused
    assert all("401" in p for p in page.problems), page.problems
    files = [r for r in page.responses if "/v1/" not in r.url and r.url.startswith("http")]
    assert files and all(r.status == 200 for r in files), [(r.status, r.url) for r in files]
