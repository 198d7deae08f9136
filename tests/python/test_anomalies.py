"""Row-count anomalies on the dashboard, in a real headless Chromium.

Forty minutes of orders at a steady rate, with one minute where the feed drops to almost nothing
and one where it triples (the rows per minute of tests/tests/anomalies.rs), loaded with
`sluice lake load` into a job declaring `[anomalies]`, backfilled with `sluice backfill` and
served by `sluice serve`. The job page (`#/job/<job>`) must draw the "Rows per window" chart with a point
for every window the serving layer judged and exactly two anomaly markers, and list both
anomalous windows in its table, without a console error or a failed request. The page exposes
what it drew as data attributes (`data-points` and `data-anomalies` on the chart,
`data-anomalies` on the table), which is what the assertions read. Screenshots go to
$SLUICE_ARTIFACTS (default tests/artifacts/)/anomalies.

The expected windows and bands come from the counts generated here, through an independent
reading of the rule in docs/jobs.md (median and MAD of the trailing windows).

Needs a Kafka-protocol broker for `sluice serve --brokers` (SLUICE_TEST_BOOTSTRAP; tests/run.sh
starts one), the `sluice` binary (SLUICE_BIN) and Debian's chromium ($SLUICE_CHROMIUM, default
/usr/bin/chromium). Runs in $SLUICE_VENV.
"""
import json
import os
import pathlib
import random
import urllib.error
import urllib.request
from datetime import datetime, timezone
from decimal import ROUND_HALF_UP, Decimal

import pytest

from sluice_harness import PATIENCE, Process, browser, page, sluice_run, wait_until  # noqa: F401 (fixtures)

BOOTSTRAP = os.environ.get("SLUICE_TEST_BOOTSTRAP")
pytestmark = pytest.mark.skipif(
    not BOOTSTRAP,
    reason="needs a Kafka-protocol broker: set SLUICE_TEST_BOOTSTRAP=host:port "
    "(tests/run.sh starts one; by hand: eval \"$(tests/broker.sh start)\")",
)


REPO = pathlib.Path(__file__).resolve().parents[2]
ARTIFACTS = pathlib.Path(os.environ.get("SLUICE_ARTIFACTS") or REPO / "tests" / "artifacts") / "anomalies"
UTC = timezone.utc

# 2024-05-01T10:00:00Z (sluice_core::fixture::T0_MS).
T0_MS = 1_714_557_600_000
MINUTE_MS = 60_000
WINDOW_US = MINUTE_MS * 1000
MINUTES = 40
# The steady feed's rows per minute, cycling; one minute drops, one triples.
STEADY = [30, 32, 29, 31, 28]
DROP_MINUTE, DROP_ROWS = 15, 2
SPIKE_MINUTE, SPIKE_FACTOR = 30, 3
# The job's [anomalies].
TRAILING, K, MIN_HISTORY, MIN_DEVIATION = 12, 3.5, 6, 1
MAD_SCALE = 1.4826
# The newest complete windows the serving layer judges and answers (docs/jobs.md).
SERVED_WINDOWS = 30
# The serving layer judges at start, then once a window length (60 s) while nothing completes.
JUDGED_WITHIN = 120

REGIONS = ["eu", "us", "apac", "latam"]
STATUSES = ["completed", "completed", "completed", "pending", "cancelled"]
SQL = """SELECT region, TUMBLE_START(event_time, INTERVAL '1' MINUTE) AS window_start,
  TUMBLE_END(event_time, INTERVAL '1' MINUTE) AS window_end,
  COUNT(*) AS total_orders, SUM(amount) AS total_revenue, AVG(amount) AS avg_order_value
FROM orders WHERE status = 'completed'
GROUP BY region, TUMBLE(event_time, INTERVAL '1' MINUTE)"""


def rows_in(minute):
    steady = STEADY[minute % len(STEADY)]
    if minute == DROP_MINUTE:
        return DROP_ROWS
    if minute == SPIKE_MINUTE:
        return steady * SPIKE_FACTOR
    return steady


def minute_start_us(minute):
    return (T0_MS + minute * MINUTE_MS) * 1000


def order_lines():
    """Every minute's orders, spread evenly over it, as JSON lines (amounts multiples of 0.25),
    and the newest event time (µs)."""
    lines, newest_ms = [], None
    for minute in range(MINUTES):
        rows = rows_in(minute)
        for i in range(rows):
            seq, at = len(lines), T0_MS + minute * MINUTE_MS + i * MINUTE_MS // rows
            lines.append(json.dumps({
                "order_id": f"o{seq}", "customer_id": f"c-{seq * 7919 % 5000:05}",
                "region": REGIONS[seq % len(REGIONS)], "amount": (seq % 400 + 1) * 0.25,
                "status": STATUSES[seq % len(STATUSES)], "event_time": at,
            }))
            newest_ms = at if newest_ms is None else max(newest_ms, at)
    return lines, newest_ms * 1000


def job_toml(name, topic):
    return f'''name = "{name}"
[source]
topic = "{topic}"
table = "orders"
event_time = "event_time"
watermark_delay = "5s"
allowed_lateness = "30s"
fields = [
  {{ name = "order_id", type = "string", nullable = false }},
  {{ name = "customer_id", type = "string" }},
  {{ name = "region", type = "string" }},
  {{ name = "amount", type = "float64" }},
  {{ name = "status", type = "string" }},
  {{ name = "event_time", type = "timestamp" }},
]
[transform]
sql = """
{SQL}
"""
[view]
key = ["region"]
bucket = "1m"

[anomalies]
window = "1m"
trailing = {TRAILING}
k = {K}
min_history = {MIN_HISTORY}
min_deviation = {MIN_DEVIATION}
'''


def median(values):
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2


def judge_minutes():
    """Every generated minute against the TRAILING minutes before it: dicts of minute, rows,
    band (median, mad, low, high, or None before MIN_HISTORY windows) and direction."""
    counts = [rows_in(m) for m in range(MINUTES)]
    judged = []
    for i, rows in enumerate(counts):
        history = [float(c) for c in counts[max(0, i - TRAILING):i]]
        band, direction = None, None
        if len(history) >= MIN_HISTORY:
            m = median(history)
            mad = median([abs(x - m) for x in history])
            half = max(K * MAD_SCALE * mad, float(MIN_DEVIATION))
            band = (m, mad, m - half, m + half)
            direction = "high" if rows > band[3] else "low" if rows < band[2] else None
        judged.append({"minute": i, "rows": rows, "band": band, "direction": direction})
    return judged


def get(url):
    """(status, JSON body) of a GET; (None, None) while nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")
    except (urllib.error.URLError, ConnectionError):
        return None, None


def assert_anomaly(anomaly, expected):
    start = minute_start_us(expected["minute"])
    median_, mad, low, high = expected["band"]
    assert (anomaly["start_us"], anomaly["end_us"]) == (start, start + WINDOW_US), anomaly
    assert (anomaly["rows"], anomaly["direction"]) == (expected["rows"], expected["direction"]), anomaly
    for field, value in (("median", median_), ("mad", mad), ("low", low), ("high", high)):
        assert anomaly[field] == pytest.approx(value, abs=1e-9), (field, anomaly)


def shown_time(us):
    """A time as the dashboard's `time()` shows it: the clock alone on today's date (UTC)."""
    at = datetime.fromtimestamp(us / 1e6, tz=UTC)
    day, clock = at.strftime("%Y-%m-%d"), at.strftime("%H:%M:%S")
    return clock if day == datetime.now(UTC).strftime("%Y-%m-%d") else f"{day} {clock}"


def shown_number(value):
    """A number as the dashboard's `num(value, 1)` shows it below 1000: JavaScript's
    `toFixed(1)`, which rounds the exact binary value half away from zero."""
    assert abs(value) < 1000, value
    return str(Decimal(value).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The data loaded, backfilled and served: the server's URL, the job, what the
    backfill reported and what the serving layer judged."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    work = tmp_path_factory.mktemp("anomalies")
    tag = f"{os.getpid()}_{random.getrandbits(32):08x}"
    job = f"anomalies_{tag}"
    job_file, lake, orders = work / "job.toml", work / "lake", work / "orders.jsonl"
    job_file.write_text(job_toml(job, f"anomaly-orders-{tag}"))
    lines, newest_us = order_lines()
    orders.write_text("\n".join(lines) + "\n")

    loaded = json.loads(sluice_run("lake", "load", "--job", job_file, "--lake", lake, orders,
                                   "--output", "json").strip().splitlines()[-1])
    assert loaded["rows_loaded"] == len(lines), loaded
    report = json.loads(sluice_run(
        "backfill", "--job", job_file, "--lake", lake, "--output", "json",
        "--from", str(minute_start_us(0) // 1000), "--to", str(minute_start_us(MINUTES) // 1000)))

    serve = Process(["serve", "--job", str(job_file), "--brokers", BOOTSTRAP, "--lake", str(lake),
                     "--bind", "127.0.0.1:0", "--batch-poll", "500ms"], ARTIFACTS / "serve.log")
    try:
        url = serve.line(r"listening on (http://127\.0\.0\.1:\d+)").group(1)

        def batch_loaded():
            status, body = get(f"{url}/v1/jobs/{job}")
            return status == 200 and all(part["part"] != "batch view" for part in body["loading"])

        # The page's /view answers 503 until then, which the browser would log as an error.
        wait_until("the batch view to load", batch_loaded)

        def judged():
            status, body = get(f"{url}/v1/jobs/{job}/anomalies")
            return status == 200 and body["anomalies"] and body

        answer = wait_until("the serving layer to judge the anomalies", judged, timeout=JUDGED_WITHIN)
        yield {"url": url, "job": job, "report": report, "answer": answer, "newest_us": newest_us}
    finally:
        serve.stop()


def expected_anomalies():
    found = [j for j in judge_minutes() if j["direction"]]
    # The data is what the test says it is: the rule flags the drop and the spike, nothing else.
    assert [(j["minute"], j["direction"]) for j in found] == [(DROP_MINUTE, "low"), (SPIKE_MINUTE, "high")]
    return found


def served_windows(newest_us):
    """The windows the serving layer answers for a raw table of loaded files only: the newest
    SERVED_WINDOWS that end at or before the window of the newest row."""
    until = newest_us - newest_us % WINDOW_US
    complete = [j for j in judge_minutes() if minute_start_us(j["minute"]) + WINDOW_US <= until]
    return complete[-SERVED_WINDOWS:]


def test_the_backfill_and_the_api_report_the_two_windows(served):
    expected = expected_anomalies()
    listed = served["report"]["row_count_anomalies"]
    assert len(listed) == len(expected), served["report"]
    for anomaly, want in zip(listed, expected):
        assert_anomaly(anomaly, want)

    answer = served["answer"]
    windows = served_windows(served["newest_us"])
    assert [(w["start_us"], w["rows"]) for w in answer["windows"]] == [
        (minute_start_us(j["minute"]), j["rows"]) for j in windows]
    assert len(answer["anomalies"]) == len(expected), answer
    for anomaly, want in zip(answer["anomalies"], expected):
        assert_anomaly(anomaly, want)


def test_the_job_page_charts_the_rows_per_window_and_marks_the_two_anomalies(served, page):
    expected = expected_anomalies()
    windows = served_windows(served["newest_us"])
    page.page.goto(f"{served['url']}/#/job/{served['job']}")
    page.page.wait_for_selector("body[data-page=job][data-state=ok]", timeout=PATIENCE * 1000)
    chart = "section#anomalies [data-chart=window-rows]"
    wait_until("the rows-per-window chart to plot every served window",
               lambda: page.number(chart, "data-points") == len(windows))
    assert page.number(chart, "data-anomalies") == len(expected), "one marker per anomalous window"
    assert page.page.is_visible(chart), "a job with [anomalies] shows its chart"
    assert page.page.query_selector(f"{chart} canvas"), "uPlot drew the rows-per-window chart"

    table = "#anomaly-list table.anomalies"
    page.page.wait_for_selector(table, timeout=PATIENCE * 1000)
    assert page.number(table, "data-anomalies") == len(expected)
    cells = page.page.evaluate(f"""() => [...document.querySelectorAll("{table} tbody tr")]
        .map((row) => [...row.querySelectorAll("td")].map((cell) => cell.textContent.trim()))""")
    # Newest first: the window, its rows, the band, the median, the direction.
    assert cells == [[
        shown_time(minute_start_us(j["minute"])),
        f"{j['rows']:,}",
        f"{shown_number(j['band'][2])} – {shown_number(j['band'][3])}",
        shown_number(j["band"][0]),
        j["direction"],
    ] for j in reversed(expected)], cells
    note = page.page.text_content("section#anomalies p.muted") or ""
    assert f"{len(expected)} anomalous" in note, note

    page.shot("job")
    page.shot("rows-per-window", "section#anomalies")
    page.assert_clean()
