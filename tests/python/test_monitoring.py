"""Monitoring: the alert rules, their promtool unit tests, the Grafana dashboard and the metrics
table of docs/monitoring.md, checked against each other and against a running Sluice.

Without a broker: `promtool check rules` and `promtool test rules` pass, every alert has a test
where it fires and one where it does not, the dashboard is Grafana JSON over `${DS_PROMETHEUS}`
and `$job` whose every query is valid PromQL, and the docs table lists exactly the metrics the
source registers.

With a broker (SLUICE_TEST_BOOTSTRAP; tests/run.sh starts one): a pipeline (`sluice stream`,
`sluice backfill`, `sluice serve`) over events older than the job's freshness SLA, and a real
Prometheus scraping both /metrics endpoints with the rules loaded. Every metric the rules and the
dashboard use is exposed (or, listed in LAZY, registered and exported from its first event), the
docs table has each exposed metric's type and labels, every rule evaluates without error, the
freshness alert goes pending for the job, `/v1/jobs` and `/health` report the missed SLA, and
every dashboard query returns data.

promtool and prometheus come from Debian's `prometheus` package (tests/prereqs.sh installs it):
missing, the tests fail rather than skip. Runs in $SLUICE_VENV with the `sluice` binary
(SLUICE_BIN, default $CARGO_TARGET_DIR/debug/sluice).
"""
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
MONITORING = REPO / "jobs" / "monitoring"
RULES = MONITORING / "sluice.rules.yml"
RULE_TESTS = MONITORING / "sluice.rules.test.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
DOCS = REPO / "docs" / "monitoring.md"
# Where the metrics are registered: each name is a string literal there.
METRIC_SOURCES = [REPO / "stream" / "src" / "metrics.rs", REPO / "serving" / "src" / "metrics.rs"]
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR") or pathlib.Path.home() / ".cache/sluice/target")
SLUICE = os.environ.get("SLUICE_BIN") or str(TARGET / "debug" / "sluice")
BOOTSTRAP = os.environ.get("SLUICE_TEST_BOOTSTRAP")

# Metrics the rules or the dashboard may use although a short healthy run does not export them
# (a labelled series appears with its first value); each must still be registered and documented.
LAZY = {"sluice_transaction_aborts_total": "exported from a daemon's first aborted micro-batch"}

METRIC = re.compile(r"\bsluice_[a-z0-9_]+\b")
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
# What the issue asks the dashboard to show, as the metrics behind it.
DASHBOARD_MUST_SHOW = {
    "sluice_records_in_total", "sluice_consumer_lag_records", "sluice_watermark_lag_seconds",
    "sluice_dlq_records_total", "sluice_late_records_total", "sluice_batch_latency_seconds_bucket",
    "sluice_sink_rows_total", "sluice_sink_paused_partitions", "sluice_view_freshness_seconds",
    "sluice_view_freshness_sla_seconds", "sluice_lake_complete_until_seconds",
}
# The pipeline's SLA, and how old its newest event is when produced: always past the SLA.
SLA_SECONDS = 60
NEWEST_EVENT_AGE_S = 303
# How long each wait may take at most; each normally takes a few seconds.
TIMEOUT = 60


# ---------------------------------------------------------------------------------------------
# The files


def tool(name):
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not on PATH: tests/prereqs.sh installs Debian's `prometheus` "
                    "package, which provides promtool and prometheus")
    return path


def run(args, **kwargs):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120, **kwargs)


def alert_rules():
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard():
    return json.loads(DASHBOARD.read_text())


def panels(board):
    """Every panel, those inside collapsed rows included."""
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries(board):
    """(panel title, PromQL with Grafana's variables) of every target, and the job variable's."""
    queries = [(p["title"], t["expr"]) for p in panels(board) for t in p.get("targets", [])]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    return queries, variables


def as_promql(expr, job=".*", interval="1m"):
    """A dashboard query with Grafana's variables substituted as Grafana would."""
    return expr.replace("$__rate_interval", interval).replace("$job", job)


def used_metrics():
    """Metric names the rules' expressions and the dashboard's queries read."""
    queries, variables = dashboard_queries(dashboard())
    texts = [r["expr"] for r in alert_rules()] + [e for _, e in queries]
    texts.append(variables["job"]["definition"])
    return {name for text in texts for name in METRIC.findall(text)}


def documented():
    """docs/monitoring.md's metrics table: name -> (type, label names)."""
    rows = {}
    for line in DOCS.read_text().splitlines():
        found = re.match(r"\| `(sluice_[a-z0-9_]+)` \| (counter|gauge|histogram) \| ([^|]*) \|", line)
        if found:
            name = found.group(1)
            assert name not in rows, f"{name} is twice in docs/monitoring.md's table"
            rows[name] = (found.group(2), set(re.findall(r"`([a-z_]+)`", found.group(3))))
    assert rows, "docs/monitoring.md has no metrics table"
    return rows


def registered():
    """Every metric name registered in the source."""
    return {name for source in METRIC_SOURCES for name in re.findall(r'"(sluice_[a-z0-9_]+)"', source.read_text())}


def family(name, histograms):
    """The metric a series name belongs to (`X_bucket` of histogram X is X)."""
    for suffix in HISTOGRAM_SERIES:
        if name.endswith(suffix) and name[: -len(suffix)] in histograms:
            return name[: -len(suffix)]
    return name


def test_promtool_checks_the_rules():
    out = run([tool("promtool"), "check", "rules", RULES])
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert f"SUCCESS: {len(alert_rules())} rules found" in text, text


def test_the_rule_unit_tests_pass_and_cover_every_alert_firing_and_not():
    out = run([tool("promtool"), "test", "rules", RULE_TESTS])
    assert out.returncode == 0, out.stdout + out.stderr
    suite = yaml.safe_load(RULE_TESTS.read_text())
    assert suite["rule_files"] == [RULES.name]
    firing, quiet = set(), set()
    for case in suite["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = {rule["alert"] for rule in alert_rules()}
    assert alerts - firing == set(), "alerts without a test where they fire"
    assert alerts - quiet == set(), "alerts without a test where they do not fire"
    assert (firing | quiet) - alerts == set(), "tests of alerts that do not exist"


def test_every_alert_has_a_for_a_severity_and_names_the_job():
    rules = alert_rules()
    assert len(rules) >= 9, "consumer lag, watermark, DLQ, aborts, sinks (2), lake, freshness, backfill"
    for rule in rules:
        name = rule.get("alert")
        assert name, f"a recording rule in an alerts file: {rule}"
        assert rule.get("for"), f"{name} has no `for:`"
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        for key in ("summary", "description"):
            assert "{{ $labels.job }}" in rule["annotations"][key], f"{name}'s {key} does not name the job"


def test_the_dashboard_is_grafana_json_over_the_datasource_and_job_variables(tmp_path):
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41, board["schemaVersion"]
    queries, variables = dashboard_queries(board)
    source = variables["DS_PROMETHEUS"]
    assert (source["type"], source["query"]) == ("datasource", "prometheus"), source
    job = variables["job"]
    assert job["type"] == "query" and job["datasource"] == DATASOURCE, job
    assert re.fullmatch(r'label_values\(\{__name__=~"[a-z0-9_|]+"\}, job\)', job["definition"]), job
    assert job["multi"] and job["includeAll"], job
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), f"panel ids repeat: {ids}"
    labels = documented()
    for panel in panels(board):
        if panel["type"] == "row":
            continue
        title = panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, title
        assert panel["datasource"] == DATASOURCE, title
        targets = panel.get("targets")
        assert targets, f"panel {title!r} has no query"
        assert len({t["refId"] for t in targets}) == len(targets), title
        for target in targets:
            assert target["datasource"] == DATASOURCE, title
            expr = target["expr"]
            names = METRIC.findall(expr)
            assert names, f"{title}: {expr}"
            for match in METRIC.finditer(expr):
                base = family(match.group(), {n for n, (kind, _) in labels.items() if kind == "histogram"})
                assert base in labels, f"{title}: {base} is not in docs/monitoring.md"
                if "job" in labels[base][1]:
                    assert expr[match.end():].startswith('{job=~"$job"'), f"{title}: {base} not filtered by $job"
    shown = {name for _, expr in queries for name in METRIC.findall(expr)}
    assert DASHBOARD_MUST_SHOW - shown == set(), "the dashboard misses these"
    # Every query is valid PromQL: promtool checks them as recording rules.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": as_promql(expr)} for i, (_, expr) in enumerate(queries)]}]}
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump(rules))
    out = run([tool("promtool"), "check", "rules", path])
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_docs_table_lists_exactly_the_registered_metrics():
    names = registered()
    assert len(names) >= 30, sorted(names)
    table = set(documented())
    assert names - table == set(), "registered but not in docs/monitoring.md"
    assert table - names == set(), "in docs/monitoring.md but registered nowhere"
    for name in LAZY:
        assert name in names, f"LAZY names {name}, which nothing registers"
    histograms = {name for name, (kind, _) in documented().items() if kind == "histogram"}
    used = {family(name, histograms) for name in used_metrics()}
    assert used - names == set(), "the rules or the dashboard use metrics nothing registers"


# ---------------------------------------------------------------------------------------------
# A running pipeline and a Prometheus scraping it

needs_broker = pytest.mark.skipif(
    not BOOTSTRAP,
    reason="needs a Kafka-protocol broker: set SLUICE_TEST_BOOTSTRAP=host:port "
    "(tests/run.sh starts one; by hand: eval \"$(tests/broker.sh start)\")",
)

JOB = '''name = "{name}"

[source]
topic = "{topic}"
table = "orders"
event_time = "event_time"
watermark_delay = "1s"
fields = [
  {{ name = "order_id", type = "string", nullable = false }},
  {{ name = "region", type = "string" }},
  {{ name = "amount", type = "float64" }},
  {{ name = "event_time", type = "timestamp" }},
]

[transform]
sql = """
SELECT region, TUMBLE_START(event_time, INTERVAL '10' SECOND) AS window_start,
COUNT(*) AS orders, SUM(amount) AS revenue
FROM orders GROUP BY region, TUMBLE(event_time, INTERVAL '10' SECOND)
"""

[view]
key = ["region"]
bucket = "1m"
freshness_sla = "{sla}s"
'''


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A child process logging stdout and stderr to one file."""

    def __init__(self, args, log):
        self.args, self.log = [str(a) for a in args], pathlib.Path(log)
        self._out = open(self.log, "w")
        self.popen = subprocess.Popen(self.args, stdout=self._out, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL)

    def alive(self):
        return self.popen.poll() is None

    def tail(self, chars=3000):
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {' '.join(self.args[:2])} ({self.log}) ---\n{text[-chars:]}"

    def stop(self):
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._out.close()


def http(url):
    """(status, body text) of a GET; status None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except OSError:
        return None, ""


def http_json(url):
    status, body = http(url)
    try:
        return status, json.loads(body)
    except ValueError:
        return status, None


def scrape(port):
    """A /metrics endpoint as {metric: type} and {metric: label names}, histogram series folded
    into their metric; None when it does not answer."""
    status, text = http(f"http://127.0.0.1:{port}/metrics")
    if status != 200:
        return None
    types, labels = {}, defaultdict(set)
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
        elif line and not line.startswith("#"):
            name, _, rest = line.partition("{")
            name = family(name.split(" ")[0], {n for n, k in types.items() if k == "histogram"})
            labels[name] |= set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', rest.rpartition("}")[0])) - {"le"}
    return types, labels


def sample(port, name, job):
    """The value of `name{job="<job>", ...}` at 127.0.0.1:`port`/metrics (the first), or None."""
    _, text = http(f"http://127.0.0.1:{port}/metrics")
    for line in text.splitlines():
        if line.startswith(name + "{") and f'job="{job}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


class Pipeline:
    """The processes of one run and what the tests read from them."""

    def __init__(self, directory):
        self.directory = pathlib.Path(directory)
        self.procs = []
        self.name = f"mon_{os.urandom(4).hex()}"
        self.topic = f"{self.name}.events"
        self.stream_port, self.serve_port, self.prometheus_port = free_port(), free_port(), free_port()
        # What both /metrics endpoints expose once everything ran: {metric: type}, {metric: labels}.
        self.exposed = {}
        self.labels = defaultdict(set)

    def start(self, args, name):
        proc = Proc(args, self.directory / f"{name}.log")
        self.procs.append(proc)
        return proc

    def logs(self):
        return "\n".join(p.tail() for p in self.procs)

    def wait_for(self, what, check, seconds=TIMEOUT):
        """Polls `check` until it returns something truthy; fails with every process's log."""
        deadline = time.monotonic() + seconds
        while True:
            value = check()
            if value:
                return value
            for proc in self.procs:
                if not proc.alive():
                    pytest.fail(f"{proc.args[1]} exited {proc.popen.returncode} while waiting for {what}\n{self.logs()}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {seconds}s waiting for {what}\n{self.logs()}")
            time.sleep(0.3)

    def prometheus(self, path, **params):
        query = urllib.parse.urlencode(params)
        status, body = http_json(f"http://127.0.0.1:{self.prometheus_port}{path}?{query}")
        assert status == 200 and body and body["status"] == "success", f"{path} {params}: {status} {body}"
        return body["data"]

    def stop(self):
        for proc in reversed(self.procs):
            proc.stop()


def produce_old_events(topic):
    """60 orders per partition over 3 minutes, the newest NEWEST_EVENT_AGE_S old, and one
    malformed record (a dead letter)."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    for future in admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)]).values():
        future.result(30)
    producer = Producer({"bootstrap.servers": BOOTSTRAP, "linger.ms": 5})
    newest_ms = int(time.time() * 1000) - NEWEST_EVENT_AGE_S * 1000
    errors = []

    def delivered(err, _msg):
        if err is not None:
            errors.append(err)
    for partition in (0, 1):
        for i in range(60):
            order = {"order_id": f"o{partition}-{i}", "region": ("eu", "us")[i % 2], "amount": 1.5,
                     "event_time": newest_ms - (59 - i) * 3000}
            producer.produce(topic, json.dumps(order).encode(), partition=partition, on_delivery=delivered)
    producer.produce(topic, b'{"order_id": ', partition=0, on_delivery=delivered)
    assert producer.flush(30) == 0 and not errors, f"not every record was delivered: {errors[:3]}"
    return 121


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    if not BOOTSTRAP:
        pytest.skip("needs SLUICE_TEST_BOOTSTRAP")
    prometheus = tool("prometheus")
    p = Pipeline(tmp_path_factory.mktemp("monitoring"))
    job = p.directory / f"{p.name}.toml"
    job.write_text(JOB.format(name=p.name, topic=p.topic, sla=SLA_SECONDS))
    lake = p.directory / "lake"
    records = produce_old_events(p.topic)
    try:
        p.start([SLUICE, "stream", "--job", job, "--brokers", BOOTSTRAP, "--lake", lake,
                 "--state-dir", p.directory / "state", "--metrics-addr", f"127.0.0.1:{p.stream_port}",
                 "--lake-commit-interval", "1s", "--idle-timeout", "2s"], "stream")

        def consumed():
            total = sample_sum(p.stream_port, "sluice_records_in_total", p.name) or 0
            return total >= records and sample(p.stream_port, "sluice_lake_complete_until_seconds", p.name)
        # Prometheus starts after this: the counters it scrapes no longer move.
        p.wait_for("the speed layer to consume every record and the lake sink to land them", consumed)
        p.start([SLUICE, "serve", "--job", job, "--brokers", BOOTSTRAP, "--lake", lake,
                 "--bind", f"127.0.0.1:{p.serve_port}", "--batch-poll", "1s"], "serve")
        config = p.directory / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {"job_name": "sluice-stream", "honor_labels": True,
                 "static_configs": [{"targets": [f"127.0.0.1:{p.stream_port}"]}]},
                {"job_name": "sluice-serve", "honor_labels": True,
                 "static_configs": [{"targets": [f"127.0.0.1:{p.serve_port}"]}]},
            ]}))
        p.start([prometheus, f"--config.file={config}", f"--storage.tsdb.path={p.directory / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{p.prometheus_port}", "--log.level=warn"], "prometheus")
        backfill = run([SLUICE, "backfill", "--job", job, "--lake", lake])
        assert backfill.returncode == 0, f"sluice backfill exited {backfill.returncode}:\n{backfill.stdout}\n{backfill.stderr}"

        def served():
            status, body = http_json(f"http://127.0.0.1:{p.serve_port}/v1/jobs/{p.name}")
            ready = status == 200 and body["ready"] and body["last_batch_run"] and body["watermark_us"]
            return ready and sample(p.serve_port, "sluice_backfill_last_success_timestamp_seconds", p.name)
        p.wait_for("the serving layer to merge the backfill and report it", served)
        p.wait_for("Prometheus to be ready", lambda: http(f"http://127.0.0.1:{p.prometheus_port}/-/ready")[0] == 200)

        def scraped_thrice():
            query = f'count_over_time(sluice_backfill_last_success_timestamp_seconds{{job="{p.name}"}}[30s])'
            result = p.prometheus("/api/v1/query", query=query)["result"]
            return result and float(result[0]["value"][1]) >= 3
        # The newest series: every other one has as many samples in a 30 s window, enough for rate().
        p.wait_for("Prometheus to scrape the backfill's metric three times", scraped_thrice)
        for port in (p.stream_port, p.serve_port):
            types, labels = scrape(port)
            p.exposed.update(types)
            for name, names in labels.items():
                p.labels[name] |= names
        yield p
    finally:
        p.stop()


def sample_sum(port, name, job):
    """The sum of every `name{job="<job>", ...}` sample at 127.0.0.1:`port`/metrics, or None."""
    _, text = http(f"http://127.0.0.1:{port}/metrics")
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith(name + "{") and f'job="{job}"' in line]
    return sum(values) if values else None


@needs_broker
def test_the_rules_and_the_dashboard_use_only_metrics_sluice_exposes(pipeline):
    histograms = {n for n, kind in pipeline.exposed.items() if kind == "histogram"}
    used = {family(name, histograms) for name in used_metrics()}
    missing = used - set(pipeline.exposed)
    assert missing - set(LAZY) == set(), f"used but not exposed by `sluice stream` or `sluice serve`\n{pipeline.logs()}"
    names = registered()
    for name in missing:
        assert name in names, f"{name} ({LAZY[name]}) is registered nowhere"


@needs_broker
def test_the_docs_table_has_each_exposed_metric_s_type_and_labels(pipeline):
    table = documented()
    for name, kind in sorted(pipeline.exposed.items()):
        assert name in table, f"{name} is exposed but not in docs/monitoring.md"
        assert table[name][0] == kind, f"{name} is a {kind}, docs/monitoring.md says {table[name][0]}"
        assert table[name][1] == pipeline.labels[name], (
            f"{name} has labels {sorted(pipeline.labels[name])}, docs/monitoring.md says {sorted(table[name][1])}")


@needs_broker
def test_a_missed_freshness_sla_is_reported_by_the_api_health_and_metrics(pipeline):
    before = time.time()
    status, job = http_json(f"http://127.0.0.1:{pipeline.serve_port}/v1/jobs/{pipeline.name}")
    after = time.time()
    assert status == 200, job
    assert job["freshness_sla_seconds"] == SLA_SECONDS, job
    assert job["fresh"] is False, job
    # Wall clock minus the later of the cutoff and the watermark, at the moment it answered.
    complete_to = max(us for us in (job["cutoff_us"], job["watermark_us"]) if us is not None) / 1e6
    assert before - complete_to - 0.01 <= job["freshness_seconds"] <= after - complete_to + 0.01, job
    assert job["freshness_seconds"] > NEWEST_EVENT_AGE_S, f"the newest event is older than that: {job}"

    status, health = http_json(f"http://127.0.0.1:{pipeline.serve_port}/health")
    assert status == 200, f"degraded is alive: {health}"
    assert health["status"] == "degraded", health
    assert health["loading"] == [], health
    [stale] = health["degraded"]
    assert stale["job"] == pipeline.name, health
    assert stale["freshness_sla_seconds"] == SLA_SECONDS, health
    assert stale["freshness_seconds"] > NEWEST_EVENT_AGE_S, health
    assert f"job `{pipeline.name}`" in stale["reason"], health
    assert f"over its freshness SLA of {SLA_SECONDS} s" in stale["reason"], health

    freshness = sample(pipeline.serve_port, "sluice_view_freshness_seconds", pipeline.name)
    sla = sample(pipeline.serve_port, "sluice_view_freshness_sla_seconds", pipeline.name)
    assert sla == SLA_SECONDS and freshness > NEWEST_EVENT_AGE_S, (freshness, sla)


@needs_broker
def test_prometheus_evaluates_every_rule_and_the_freshness_alert_goes_pending(pipeline):
    def evaluated():
        rules = [r for g in pipeline.prometheus("/api/v1/rules")["groups"] for r in g["rules"]]
        return rules if all(r["health"] != "unknown" for r in rules) else None
    rules = pipeline.wait_for("Prometheus to evaluate every rule", evaluated)
    assert {r["name"] for r in rules} == {r["alert"] for r in alert_rules()}
    broken = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert broken == {}, "rules that fail to evaluate"

    def freshness_alert():
        alerts = pipeline.prometheus("/api/v1/alerts")["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == "SluiceFreshnessSlaMissed"]
    [alert] = pipeline.wait_for("SluiceFreshnessSlaMissed to be pending", freshness_alert)
    assert alert["state"] in {"pending", "firing"}, alert
    assert alert["labels"]["job"] == pipeline.name, alert
    assert alert["labels"]["severity"] == "critical", alert
    assert pipeline.name in alert["annotations"]["summary"], alert
    # Events over 5 minutes old, a healthy pipeline otherwise: nothing else is pending. (No
    # record arrived since Prometheus started, so a watermark that does not move is no stall.)
    alerts = {a["labels"]["alertname"] for a in pipeline.prometheus("/api/v1/alerts")["alerts"]}
    assert alerts == {"SluiceFreshnessSlaMissed"}, alerts


@needs_broker
def test_every_dashboard_query_returns_data(pipeline):
    queries, variables = dashboard_queries(dashboard())
    histograms = {n for n, kind in pipeline.exposed.items() if kind == "histogram"}
    for title, expr in queries:
        query = as_promql(expr, job=pipeline.name, interval="30s")
        result = pipeline.prometheus("/api/v1/query", query=query)["result"]
        if {family(n, histograms) for n in METRIC.findall(expr)} <= set(pipeline.exposed):
            assert result, f"panel {title!r}: no data for {query}"
    matcher = re.fullmatch(r"label_values\((.*), job\)", variables["job"]["definition"]).group(1)
    jobs = pipeline.prometheus("/api/v1/label/job/values", **{"match[]": matcher})
    assert pipeline.name in jobs, f"the job variable offers {jobs}"
