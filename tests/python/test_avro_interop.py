"""Avro interop: seed 000's own producer (confluent-kafka's SchemaRegistryClient + AvroSerializer)
against `sluice registry` (the built-in Confluent-compatible schema registry), `sluice stream`
with `format = "avro-confluent"`, `sluice backfill` and `sluice verify`, on a real broker.

One change to the seed's producer code: it calls `avro_serializer(order, None)`, which
confluent-kafka 2.16.1 refuses (`ValueError: SerializationContext is required for
topic_subject_name_strategy`), so these tests pass `SerializationContext(topic,
MessageField.VALUE)`: the subject the seed meant, `<topic>-value`. Schema and records are the seed's.

Proves, with Confluent's official Python client on the other side:
1. records written exactly as the seed's producer writes them (its `OrderEvent` schema, the
   `timestamp` long read into the SQL's `event_time` with `from`) run through seed 000's SQL:
   the speed layer's results (`<job>.results`, and `sluice verify` before any backfill) equal
   the batch view of the same events (`sluice backfill`, read with `deltalake`), which equals
   an independent computation here; the raw table holds every record, `event_time` = `timestamp`;
2. schema evolution: a v2 with a defaulted field is accepted (BACKWARD, the default), v1 and v2
   records interleaved on one topic all decode, a v3 with a new field without a default is
   refused with HTTP 409 until the subject's compatibility is NONE, and confluent-kafka's
   AvroDeserializer reads the records back through `sluice registry` into the produced dicts;
3. bad records (no magic byte, an unknown schema id, a truncated body, a writer schema without
   the required `order_id`) reach `<job>.dlq` once each with their error type, original offset
   and a message naming the schema id, and every good record around them lands;
4. an `https://` registry with a private CA (`[source] registry_ca`, relative to the job file):
   without the CA the stream waits (the certificate is not trusted, no request gets through),
   with it every record lands;
5. while the registry is down the stream waits (alive, nothing landed, nothing dead-lettered,
   `sluice_registry_waits_total` counting), and once it is back every record lands.

Needs a Kafka-protocol broker (SLUICE_TEST_BOOTSTRAP; tests/run.sh starts one) and the `sluice`
binary (SLUICE_BIN, default $CARGO_TARGET_DIR/debug/sluice); test 4 the `openssl` CLI. Runs in
$SLUICE_VENV.
"""
import contextlib
import http.server
import json
import os
import pathlib
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import tomllib
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from datetime import datetime, timezone

import pytest

BOOTSTRAP = os.environ.get("SLUICE_TEST_BOOTSTRAP")
pytestmark = pytest.mark.skipif(
    not BOOTSTRAP,
    reason="needs a Kafka-protocol broker: set SLUICE_TEST_BOOTSTRAP=host:port "
    "(tests/run.sh starts one; by hand: eval \"$(tests/broker.sh start)\")",
)

import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient, SchemaRegistryError  # noqa: E402
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer  # noqa: E402
from confluent_kafka.serialization import MessageField, SerializationContext  # noqa: E402
from deltalake import DeltaTable  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR") or pathlib.Path.home() / ".cache/sluice/target")
SLUICE = os.environ.get("SLUICE_BIN") or str(TARGET / "debug" / "sluice")
UTC = timezone.utc

# Seed 000's producer schema (its ORDER_SCHEMA), verbatim: `logicalType` sits on the field, so
# Avro reads `timestamp` as a plain long (epoch milliseconds).
ORDER_EVENT_V1 = """
{
"type": "record",
"name": "OrderEvent",
"fields": [
{"name": "order_id", "type": "string"},
{"name": "customer_id", "type": "string"},
{"name": "amount", "type": "double"},
{"name": "status", "type": "string"},
{"name": "timestamp", "type": "long", "logicalType": "timestamp-millis"}
]
}
"""
# v2: a nullable field with a default (BACKWARD compatible with v1).
ORDER_EVENT_V2 = json.dumps({**json.loads(ORDER_EVENT_V1), "fields": json.loads(ORDER_EVENT_V1)["fields"] + [
    {"name": "channel", "type": ["null", "string"], "default": None}]})
# v3: a new field WITHOUT a default: a v3 reader cannot read v2 data, so BACKWARD refuses it.
ORDER_EVENT_V3 = json.dumps({**json.loads(ORDER_EVENT_V2), "fields": json.loads(ORDER_EVENT_V2)["fields"] + [
    {"name": "region", "type": "string"}]})
# A writer schema that lacks `order_id`, which the job requires (`nullable = false`).
ORDER_WITHOUT_ID = json.dumps({"type": "record", "name": "OrderWithoutId", "fields": [
    {"name": "customer_id", "type": "string"}, {"name": "amount", "type": "double"},
    {"name": "status", "type": "string"}, {"name": "timestamp", "type": "long"}]})

# Seed 000's Flink SQL, unchanged, from the example job.
SEED_SQL = tomllib.loads((REPO / "jobs/examples/orders_per_minute.toml").read_text())["transform"]["sql"]
assert "FROM orders_kafka" in SEED_SQL and "TUMBLE(event_time, INTERVAL '1' MINUTE)" in SEED_SQL

# The seed's Flink DDL columns (`CREATE TABLE orders_kafka`), `event_time` read from `timestamp`.
SEED_FIELDS = """\
  { name = "order_id", type = "string", nullable = false },
  { name = "customer_id", type = "string" },
  { name = "amount", type = "float64" },
  { name = "status", type = "string" },
  { name = "event_time", type = "timestamp", from = "timestamp" },
"""

JOB = '''name = "{name}"

[source]
topic = "{topic}"
table = "orders_kafka"
event_time = "event_time"
watermark_delay = "10s"
allowed_lateness = "1m"
format = "avro-confluent"
registry = "{registry}"
fields = [
{fields}]

[transform]
sql = """
{sql}"""

[view]
key = []
bucket = "1m"
'''

T0_MS = int(datetime(2024, 5, 1, 10, tzinfo=UTC).timestamp() * 1000)
MINUTE_MS = 60_000
# Mostly completed: the SQL counts only those.
STATUSES = ["completed"] * 7 + ["pending", "cancelled", "failed"]
# How long every wait may take at most; each normally takes a few seconds.
TIMEOUT = 90


# ---------------------------------------------------------------------------------------------
# Helpers: processes, topics, the lake.


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ident():
    return os.urandom(4).hex()


class Proc:
    """A `sluice` child process logging stdout and stderr to one file."""

    def __init__(self, args, log, env=None):
        self.args, self.log = args, pathlib.Path(log)
        self._out = open(self.log, "w")
        self.popen = subprocess.Popen(args, stdout=self._out, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=env)

    def alive(self):
        return self.popen.poll() is None

    def tail(self, chars=4000):
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {' '.join(self.args[:2])} log ({self.log}) ---\n{text[-chars:]}"

    def stop(self, timeout=30):
        """SIGTERM, then SIGKILL after `timeout` s; the exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._out.close()
        return self.popen.returncode

    def kill(self):
        """SIGKILL (a crash: no clean shutdown) and wait."""
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()
        self._out.close()


@contextlib.contextmanager
def logs_on_failure(procs):
    """Failed assertions inside carry the logs of `procs` (a list that may grow meanwhile)."""
    try:
        yield
    except AssertionError as e:
        logs = "\n".join(p.tail() for p in procs)
        raise AssertionError(f"{e}\n{logs}") from e


def at_least(read, n):
    """A `wait_for` check: what `read()` returns, once it holds at least `n` items."""
    def check():
        items = read()
        return items if len(items) >= n else None
    return check


def wait_for(what, check, *procs, seconds=TIMEOUT, interval=0.3):
    """Polls `check` until it returns something truthy; fails with the processes' logs."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        for proc in procs:
            if not proc.alive():
                pytest.fail(f"{proc.args[1]} exited {proc.popen.returncode} while waiting for {what}\n{proc.tail()}")
        if time.monotonic() > deadline:
            logs = "\n".join(p.tail() for p in procs)
            pytest.fail(f"timed out after {seconds}s waiting for {what}\n{logs}")
        time.sleep(interval)


def start_registry(directory, port, topic, name="registry"):
    """`sluice registry` on 127.0.0.1:`port` over the compacted topic `topic`, once it says it
    is listening; its URL."""
    log = pathlib.Path(directory) / f"{name}-{int(time.time() * 1000)}.log"
    proc = Proc([SLUICE, "registry", "--brokers", BOOTSTRAP, "--listen", f"127.0.0.1:{port}", "--topic", topic], log)

    def listening():
        text = log.read_text(errors="replace")
        found = re.search(r"registry listening on (http://\S+)", text)
        return found.group(1) if found else None

    try:
        printed = wait_for(f"`sluice registry` on port {port} to listen", listening, proc, seconds=60)
    except BaseException:
        proc.kill()
        raise
    assert printed.rstrip("/").endswith(f":{port}"), f"it listens on {printed}, not port {port}\n{proc.tail()}"
    return proc, f"http://127.0.0.1:{port}"


def http_get(url):
    """(status, parsed JSON body or text) of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            status, body = answer.status, answer.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode(errors="replace")


def create_topic(topic, partitions):
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    for future in admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)]).values():
        future.result(30)


def produce(topic, records):
    """Produces `(key, value, partition or None)` records in order and waits for every
    delivery; the `(partition, offset)` of each."""
    producer = Producer({"bootstrap.servers": BOOTSTRAP, "linger.ms": 5})
    where, errors = [None] * len(records), []
    for i, (key, value, partition) in enumerate(records):
        def delivered(err, msg, i=i):
            if err is not None:
                errors.append(err)
            else:
                where[i] = (msg.partition(), msg.offset())
        extra = {} if partition is None else {"partition": partition}
        producer.produce(topic, value, key=key, on_delivery=delivered, **extra)
        producer.poll(0)
    assert producer.flush(30) == 0 and not errors, f"not every record was delivered: {errors[:5]}"
    return where


def read_topic(topic):
    """Every committed record of `topic` up to its end now (read_committed), as dicts; [] when
    the topic does not exist (yet)."""
    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"avro-interop-reader-{ident()}",
                         "enable.auto.commit": False, "isolation.level": "read_committed",
                         "enable.partition.eof": True, "auto.offset.reset": "earliest"})
    try:
        # All topics' metadata: asking for one topic by name could create it on some brokers.
        metadata = consumer.list_topics(timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return []
        assign = []
        for p in metadata.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                assign.append(TopicPartition(topic, p, OFFSET_BEGINNING))
        out, open_partitions = [], len(assign)
        if not assign:
            return out
        consumer.assign(assign)
        deadline = time.monotonic() + 60
        while open_partitions > 0:
            assert time.monotonic() < deadline, f"reading {topic} took over 60 s"
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error() is not None:
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    open_partitions -= 1
                    continue
                raise AssertionError(f"reading {topic}: {msg.error()}")
            headers = {k: (v or b"").decode(errors="replace") for k, v in (msg.headers() or [])}
            out.append({"partition": msg.partition(), "offset": msg.offset(), "key": msg.key(),
                        "value": msg.value(), "headers": headers})
        return out
    finally:
        consumer.close()


def ends(where):
    """The next offset of each partition after the produced records at `where`."""
    out = {}
    for partition, offset in where:
        out[partition] = max(out.get(partition, 0), offset + 1)
    return out


def committed(job_name, topic, partitions):
    """The speed layer's committed offsets (group `sluice-<job>`) per partition, -1 for none.
    Read without joining the group."""
    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"sluice-{job_name}",
                         "enable.auto.commit": False})
    try:
        answer = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: (tp.offset if tp.offset >= 0 else -1) for tp in answer}
    finally:
        consumer.close()


def speed_caught_up(job_name, topic, next_offsets):
    """A `wait_for` check: the speed layer has committed every produced record
    (`next_offsets`: partition -> the offset after its last record)."""
    def check():
        got = committed(job_name, topic, len(next_offsets))
        return all(got.get(p, -1) >= n for p, n in next_offsets.items() if n > 0)
    return check


def raw_table(lake, topic):
    """The raw Delta table as a pyarrow Table, or None before the sink has created it."""
    try:
        return DeltaTable(str(pathlib.Path(lake) / "raw" / topic)).to_pyarrow_table()
    except Exception:  # noqa: BLE001 - not there yet
        return None


def raw_count(lake, topic):
    table = raw_table(lake, topic)
    return 0 if table is None else table.num_rows


def raw_rows(lake, topic):
    """The raw table's rows by (partition, offset); `event_us` is `event_time` in µs."""
    table = raw_table(lake, topic)
    assert table is not None, "no raw table"
    assert str(table.schema.field("event_time").type) == "timestamp[us, tz=UTC]", table.schema
    event_us = pc.cast(table["event_time"], pa.int64()).to_pylist()
    rows = {}
    for row, us in zip(table.drop_columns(["event_time"]).to_pylist(), event_us):
        row["event_us"] = us
        key = (row.pop("__source_partition"), row.pop("__source_offset"))
        assert key not in rows, f"the raw table holds {key} twice"
        rows[key] = row
    return rows


def metric(port, name):
    """The sum of a Prometheus metric's samples at 127.0.0.1:`port`/metrics (0 when absent),
    or None when the endpoint does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
            text = answer.read().decode()
    except OSError:
        return None
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def write_job(directory, name, topic, registry, extra_fields="", registry_ca=None):
    """The job file `<directory>/<name>.toml`; `registry_ca` (a path, relative to the job file or
    absolute) adds `[source] registry_ca`."""
    path = pathlib.Path(directory) / f"{name}.toml"
    text = JOB.format(name=name, topic=topic, registry=registry, fields=SEED_FIELDS + extra_fields,
                      sql=SEED_SQL.strip("\n") + "\n")
    if registry_ca is not None:
        line = f'registry = "{registry}"\n'
        assert line in text
        text = text.replace(line, f"{line}registry_ca = {json.dumps(str(registry_ca))}\n", 1)
    path.write_text(text)
    return path


def start_stream(directory, job, lake, env=None, extra=()):
    """`sluice stream` (exactly-once, the raw-lake sink on) for `job`."""
    directory = pathlib.Path(directory)
    return Proc([SLUICE, "stream", "--job", str(job), "--brokers", BOOTSTRAP, "--lake", str(lake),
                 "--state-dir", str(directory / f"state-{job.stem}"), "--lake-commit-interval", "1s",
                 "--idle-timeout", "2s", *extra],
                directory / f"stream-{job.stem}-{int(time.time() * 1000)}.log", env=env)


def sluice(*args, ok=(0,), timeout=180):
    out = subprocess.run([SLUICE, *args], capture_output=True, text=True, timeout=timeout)
    assert out.returncode in ok, (f"sluice {' '.join(args)} exited {out.returncode}:\n"
                                  f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def schema_id(framed):
    """The registry id in a Confluent-framed record."""
    assert framed[0] == 0, framed[:5]
    return int.from_bytes(framed[1:5], "big")


def mentions(text, number):
    return re.search(rf"(?<!\d){number}(?!\d)", text or "") is not None


# ---------------------------------------------------------------------------------------------
# Orders, as the seed's producer sends them.


def seed_orders(n, seed, span_ms=300_000, prefix="o"):
    """`n` OrderEvents over `span_ms` from 2024-05-01T10:00Z, out of order by up to 6 s (less
    than the job's 10 s watermark delay, so none is late); amounts are multiples of 0.25, so
    sums are exact whatever order the layers add in."""
    rng = random.Random(seed)
    orders = []
    for i in range(n):
        ts = T0_MS + i * span_ms // n + rng.randint(-3000, 3000)
        orders.append({"order_id": f"{prefix}{i:05d}", "customer_id": f"c{rng.randrange(100):03d}",
                       "amount": rng.randrange(1, 4000) / 4, "status": rng.choice(STATUSES),
                       "timestamp": min(max(ts, T0_MS), T0_MS + span_ms - 1)})
    return orders


def sentinels(partitions, span_ms=300_000):
    """One record per partition ten minutes after the orders (a status the SQL filters out):
    every partition's watermark passes every order's window, so all of them close."""
    return [({"order_id": f"sentinel-{p}", "customer_id": "-", "amount": 0.0, "status": "sentinel",
              "timestamp": T0_MS + span_ms + 10 * MINUTE_MS}, p) for p in range(partitions)]


def expected_windows(orders):
    """The seed's SQL, computed here: per minute, completed orders' count, sum and mean, as
    (window_start_ms, window_end_ms, total_orders, total_revenue, avg_order_value)."""
    minutes = defaultdict(list)
    for o in orders:
        if o["status"] == "completed":
            minutes[o["timestamp"] // MINUTE_MS * MINUTE_MS].append(o["amount"])
    return [(m, m + MINUTE_MS, len(a), sum(a), sum(a) / len(a)) for m, a in sorted(minutes.items())]


def rfc3339_ms(text):
    assert isinstance(text, str), f"expected an RFC 3339 time, got {text!r}"
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def datetime_ms(value):
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


def as_windows(rows, to_ms):
    return sorted((to_ms(r["window_start"]), to_ms(r["window_end"]), r["total_orders"], r["total_revenue"],
                   r["avg_order_value"]) for r in rows)


def assert_same_windows(got, want, what):
    assert [w[:4] for w in got] == [w[:4] for w in want], f"{what}: {got} != {want}"
    assert [w[4] for w in got] == pytest.approx([w[4] for w in want], rel=1e-12), what


def speed_results(job_name):
    """`<job>.results` as an upsert stream: the latest row per key."""
    latest = {}
    for record in read_topic(f"{job_name}.results"):
        latest[record["key"]] = json.loads(record["value"])
    return list(latest.values())


# ---------------------------------------------------------------------------------------------
# The registry every test shares.


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """One `sluice registry` over a topic of its own; yields {url, port, topic, proc}."""
    assert os.path.exists(SLUICE), f"no sluice binary at {SLUICE}: build it (cargo build) or set SLUICE_BIN"
    directory = tmp_path_factory.mktemp("registry")
    port, topic = free_port(), f"_schemas-avro-interop-{ident()}"
    proc, url = start_registry(directory, port, topic)
    try:
        yield {"url": url, "port": port, "topic": topic, "proc": proc, "dir": directory}
    finally:
        proc.stop()


# ---------------------------------------------------------------------------------------------
# 1. The seed's producer, the stream, the batch view.


def test_seed_producer_feeds_stream_and_results_equal_the_batch_view(registry, tmp_path):
    started = time.monotonic()
    tag = ident()
    name, topic, partitions = f"avro_opm_{tag}", f"avro-orders-{tag}", 2
    lake = tmp_path / "lake"
    create_topic(topic, partitions)

    # The seed's producer (its subject: <topic>-value, auto-registered). The seed passes no
    # context (`avro_serializer(order, None)`), which confluent-kafka 2.16.1 refuses: this one
    # names the subject the seed meant.
    client = SchemaRegistryClient({"url": registry["url"]})
    serializer = AvroSerializer(client, ORDER_EVENT_V1)
    context = SerializationContext(topic, MessageField.VALUE)
    orders = seed_orders(2000, seed=20240501)
    closing = sentinels(partitions)
    records = [(o["order_id"], serializer(o, context), None) for o in orders]
    records += [(o["order_id"], serializer(o, context), p) for o, p in closing]
    where = produce(topic, records)
    produced = dict(zip(where, orders + [o for o, _ in closing]))
    ids = {schema_id(value) for _, value, _ in records}
    assert len(ids) == 1, ids
    status, body = http_get(f"{registry['url']}/schemas/ids/{ids.pop()}")
    assert status == 200 and json.loads(body["schema"])["name"] == "OrderEvent", (status, body)
    next_offsets = sorted(ends(where).items())
    assert [p for p, _ in next_offsets] == list(range(partitions)), next_offsets

    job = write_job(tmp_path, name, topic, registry["url"])
    stream = start_stream(tmp_path, job, lake)
    procs = [stream, registry["proc"]]
    with logs_on_failure(procs):
        try:
            # The raw-lake sink has landed every record, complete past every order's window.
            def landed():
                out = subprocess.run([SLUICE, "lake", "status", "--job", str(job), "--lake", str(lake), "--output", "json"],
                                     capture_output=True, text=True, timeout=60)
                if out.returncode != 0:
                    return None
                status = json.loads(out.stdout)
                offsets = sorted((p["partition"], p["next_offset"]) for p in status["partitions"])
                return status if offsets == next_offsets and status["completeness"] == "until" else None

            status = wait_for("the raw-lake sink to land every record", landed, stream)
            assert status["lake_complete_until_us"] >= (T0_MS + 10 * MINUTE_MS) * 1000, status

            # The raw table: every produced record once, `event_time` the produced `timestamp`.
            rows = raw_rows(lake, topic)
            assert set(rows) == set(produced), f"{len(rows)} raw rows for {len(produced)} records"
            for key, order in produced.items():
                row = rows[key]
                got = {k: row[k] for k in ("order_id", "customer_id", "amount", "status")}
                assert got == {k: order[k] for k in got}, (key, row, order)
                assert row["event_us"] == order["timestamp"] * 1000, (key, row, order)

            # The speed layer's results: every window closed (the sentinels' watermark passed them).
            want = expected_windows(orders)
            assert len(want) == 5, want

            results = wait_for("the speed layer to emit every window", at_least(lambda: speed_results(name), len(want)),
                               stream)
            assert_same_windows(as_windows(results, rfc3339_ms), want, "<job>.results vs the SQL computed here")

            # Before any backfill the merged view is the speed layer's alone: verify compares it
            # with the batch path's recompute of the same raw rows.
            verified = json.loads(sluice("verify", "--job", str(job), "--brokers", BOOTSTRAP, "--lake", str(lake),
                                         "--settle", "20s", "--output", "json", ok=(0, 1)).stdout)
            assert verified["identical"] is True, verified
            assert verified["origins"]["speed"] == len(want) and verified["origins"]["batch"] == 0, verified

            # The batch layer over the whole period: the same windows.
            report = json.loads(sluice("backfill", "--job", str(job), "--lake", str(lake), "--from", "2024-05-01T10:00:00Z",
                                       "--to", "2024-05-01T10:10:00Z", "--output", "json").stdout)
            assert report["rows_read"] == len(orders) and report["rows_rejected"] == 0, report
            assert report["cutoff"] == "2024-05-01T10:10:00Z" and report["clamped_from"] is None, report
            view = DeltaTable(str(lake / "views" / name)).to_pyarrow_table().to_pylist()
            batch = as_windows(view, datetime_ms)
            assert_same_windows(batch, want, "the batch view (deltalake) vs the SQL computed here")
            assert_same_windows(as_windows(results, rfc3339_ms), batch, "the speed layer's results vs the batch view")

            # And the merged view, now answered from the batch view, still verifies.
            verified = json.loads(sluice("verify", "--job", str(job), "--brokers", BOOTSTRAP, "--lake", str(lake),
                                         "--settle", "20s", "--output", "json", ok=(0, 1)).stdout)
            assert verified["identical"] is True, verified
            assert verified["origins"]["batch"] == len(want) and verified["cutoff"] == "2024-05-01T10:10:00Z", verified
            wait_for("the speed layer to commit every record", speed_caught_up(name, topic, dict(next_offsets)), stream)
            assert read_topic(f"{name}.dlq") == [], "records were dead-lettered"
            assert stream.alive(), "sluice stream exited"
        finally:
            code = stream.stop()
    assert code == 0, f"sluice stream exited {code} on SIGTERM\n{stream.tail()}"
    print(f"seed producer -> stream -> backfill -> verify: {time.monotonic() - started:.1f}s")


# ---------------------------------------------------------------------------------------------
# 2. Schema evolution.


def test_schema_evolution_follows_backward_and_none(registry, tmp_path):
    started = time.monotonic()
    tag = ident()
    name, topic = f"avro_evolve_{tag}", f"avro-evolve-{tag}"
    subject = f"{topic}-value"
    lake = tmp_path / "lake"
    create_topic(topic, 2)
    job = write_job(tmp_path, name, topic, registry["url"], '  { name = "channel", type = "string" },\n')
    stream = start_stream(tmp_path, job, lake)
    procs = [stream, registry["proc"]]
    with logs_on_failure(procs):
        try:
            client = SchemaRegistryClient({"url": registry["url"]})
            context = SerializationContext(topic, MessageField.VALUE)
            orders = seed_orders(300, seed=7, prefix="e")
            v1 = AvroSerializer(client, ORDER_EVENT_V1)
            first = v1(orders[0], context)  # registers v1 under <topic>-value
            id1 = schema_id(first)

            # v2 adds a field with a default: BACKWARD (the default) accepts it.
            id2 = client.register_schema(subject, Schema(ORDER_EVENT_V2, "AVRO"))
            assert isinstance(id2, int) and id2 != id1, (id1, id2)
            status, body = http_get(f"{registry['url']}/schemas/ids/{id2}")
            assert status == 200, (status, body)
            assert [f["name"] for f in json.loads(body["schema"])["fields"]] == [
                f["name"] for f in json.loads(ORDER_EVENT_V2)["fields"]], body

            # v1 and v2 records interleaved on one topic; a v2 serializer of its own (another
            # client, so it registers again over HTTP) gets v2's id back.
            v2 = AvroSerializer(SchemaRegistryClient({"url": registry["url"]}), ORDER_EVENT_V2)
            channels = ["web", "app", None]
            sent, records = [], []
            for i, order in enumerate(orders):
                if i % 2:
                    order = {**order, "channel": channels[i % 3]}
                    value = v2(order, context)
                    assert schema_id(value) == id2
                else:
                    value = first if i == 0 else v1(order, context)
                    assert schema_id(value) == id1
                sent.append(order)
                records.append((order["order_id"], value, None))
            where = produce(topic, records)
            produced = dict(zip(where, sent))

            # v3 adds a field without a default: BACKWARD refuses it with 409 ...
            with pytest.raises(SchemaRegistryError) as refused:
                client.register_schema(subject, Schema(ORDER_EVENT_V3, "AVRO"))
            assert refused.value.http_status_code == 409, refused.value
            assert refused.value.error_code == 409, refused.value
            # ... and NONE accepts it.
            answer = client.set_compatibility(subject_name=subject, level="NONE")
            assert answer.get("compatibility") == "NONE", answer
            id3 = client.register_schema(subject, Schema(ORDER_EVENT_V3, "AVRO"))
            assert id3 not in (id1, id2), (id1, id2, id3)
            assert http_get(f"{registry['url']}/schemas/ids/{id3}")[0] == 200

            # Every record decodes: v1 rows have a null channel, v2 rows theirs.
            wait_for("every v1 and v2 record in the raw table", lambda: raw_count(lake, topic) >= len(produced), stream)
            rows = raw_rows(lake, topic)
            assert set(rows) == set(produced), f"{len(rows)} raw rows for {len(produced)} records"
            for key, order in produced.items():
                row = rows[key]
                assert row["order_id"] == order["order_id"] and row["channel"] == order.get("channel"), (row, order)
                assert row["event_us"] == order["timestamp"] * 1000, (row, order)
            assert Counter(row["channel"] for row in rows.values()) == Counter(o.get("channel") for o in sent)
            caught_up = {p: ends(where).get(p, 0) for p in range(2)}
            wait_for("the speed layer to commit every record", speed_caught_up(name, topic, caught_up), stream)
            assert read_topic(f"{name}.dlq") == [], "records were dead-lettered"

            # Confluent's deserializer reads them back through `sluice registry` (a fresh client:
            # every writer schema is fetched by id).
            deserializer = AvroDeserializer(SchemaRegistryClient({"url": registry["url"]}))
            back = {(r["partition"], r["offset"]): deserializer(r["value"], context) for r in read_topic(topic)}
            assert back == produced
            assert stream.alive(), "sluice stream exited"
        finally:
            code = stream.stop()
    assert code == 0, f"sluice stream exited {code} on SIGTERM\n{stream.tail()}"
    print(f"schema evolution: {time.monotonic() - started:.1f}s")


# ---------------------------------------------------------------------------------------------
# 3. Bad records.


def test_bad_avro_records_reach_the_dlq_with_metadata_and_processing_continues(registry, tmp_path):
    started = time.monotonic()
    tag = ident()
    name, topic = f"avro_bad_{tag}", f"avro-bad-{tag}"
    lake = tmp_path / "lake"
    create_topic(topic, 1)
    client = SchemaRegistryClient({"url": registry["url"]})
    context = SerializationContext(topic, MessageField.VALUE)
    serializer = AvroSerializer(client, ORDER_EVENT_V1)
    orders = seed_orders(40, seed=3, prefix="g")
    good = [serializer(o, context) for o in orders]
    good_id = schema_id(good[0])
    # A writer schema without `order_id`, registered under another subject.
    without_id = AvroSerializer(client, ORDER_WITHOUT_ID)
    other = SerializationContext(f"{topic}-other", MessageField.VALUE)
    no_id = [without_id({k: v for k, v in o.items() if k != "order_id"}, other) for o in orders[:2]]
    no_id_schema = schema_id(no_id[0])
    assert no_id_schema != good_id

    # (key, value, error type, the schema id its message must name)
    bad = [
        (b"json", json.dumps(orders[0]).encode(), "missing_magic_byte", None),
        (b"unknown-id", b"\x00" + (999999).to_bytes(4, "big") + b"\x02a", "unknown_schema_id", 999999),
        (b"truncated", good[1][:-3], "malformed_avro", good_id),
        (b"no-order-id-1", no_id[0], "incompatible_schema", no_id_schema),
        (b"no-order-id-2", no_id[1], "incompatible_schema", no_id_schema),
    ]
    records, kinds = [], []
    for i, (value, order) in enumerate(zip(good, orders)):
        records.append((order["order_id"], value, 0))
        kinds.append(None)
        if i % 7 == 3 and bad:
            key, value, kind, sid = bad.pop(0)
            records.append((key, value, 0))
            kinds.append((kind, sid))
    assert not bad, "every bad record is interleaved"
    where = produce(topic, records)
    expected_bad = {offset: (records[i], kinds[i]) for i, (_, offset) in enumerate(where) if kinds[i]}
    good_offsets = {offset for i, (_, offset) in enumerate(where) if not kinds[i]}

    job = write_job(tmp_path, name, topic, registry["url"])
    # An id the registry lacks is asked again for 30 s by default (a lagging replica) before its
    # records are unknown_schema_id; 3 s here keeps the test quick and still goes through the wait.
    env = {**os.environ, "SLUICE_REGISTRY_NOT_FOUND_GRACE": "3s"}
    stream = start_stream(tmp_path, job, lake, env=env)
    procs = [stream, registry["proc"]]
    with logs_on_failure(procs):
        try:
            dlq = wait_for("every bad record in the DLQ", at_least(lambda: read_topic(f"{name}.dlq"), len(expected_bad)),
                           stream)
            wait_for("every good record in the raw table", lambda: raw_count(lake, topic) >= len(good_offsets), stream)
            rows = raw_rows(lake, topic)
            assert {offset for _, offset in rows} == good_offsets, "the raw table holds other records than the good ones"

            wait_for("the speed layer to commit every record", speed_caught_up(name, topic, ends(where)), stream)
            dlq = read_topic(f"{name}.dlq")
            by_offset = defaultdict(list)
            for record in dlq:
                by_offset[int(record["headers"].get("sluice.source.offset", -1))].append(record)
            assert sorted(by_offset) == sorted(expected_bad), (
                f"DLQ offsets {sorted(by_offset)} != bad offsets {sorted(expected_bad)}: "
                f"{[r['headers'] for r in dlq]}")
            for offset, ((key, value, _), (kind, sid)) in expected_bad.items():
                (record,) = by_offset[offset]  # once
                headers = record["headers"]
                assert headers.get("sluice.error.type") == kind, (key, headers)
                assert headers.get("sluice.source.topic") == topic, headers
                assert headers.get("sluice.source.partition") == "0", headers
                assert record["key"] == key and record["value"] == value, (key, record)
                message = headers.get("sluice.error.message", "")
                assert message, headers
                if sid is not None:
                    assert mentions(message, sid), f"{kind}: the message does not name schema id {sid}: {message}"
                if kind == "incompatible_schema":
                    assert "order_id" in message, message
            assert stream.alive(), "sluice stream exited"
        finally:
            code = stream.stop()
    assert code == 0, f"sluice stream exited {code} on SIGTERM\n{stream.tail()}"
    print(f"bad records: {time.monotonic() - started:.1f}s")


# ---------------------------------------------------------------------------------------------
# 4. An https registry with a private CA.


def make_ca_and_certificate(directory):
    """A private CA and a server certificate for 127.0.0.1 signed by it, made with `openssl`; the
    paths (ca, certificate, key). Not one self-signed certificate: `openssl req -x509` marks it a
    CA, and rustls refuses a CA's certificate as a server's (CaUsedAsEndEntity)."""
    d = pathlib.Path(directory)
    ca_key, ca, key, csr, cert, ext = (d / n for n in (
        "ca-key.pem", "ca.pem", "key.pem", "server.csr", "cert.pem", "server.ext"))

    def openssl(*args):
        out = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"openssl {' '.join(map(str, args))}: {out.stderr}"

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "1",
            "-subj", "/CN=sluice test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1")
    ext.write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                   "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
            "-days", "1", "-extfile", ext)
    return ca, cert, key


class HttpsRegistry:
    """An https front for the fixture's `sluice registry` (which speaks plain http): `http.server`
    over `ssl` in a thread, passing every GET through and noting its path."""

    def __init__(self, upstream, cert, key):
        self.upstream, self.paths = upstream, []
        front = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as ureq's pool expects

            def do_GET(self):
                front.paths.append(self.path)
                status, body, kind = front.forward(self.path)
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False  # a connection kept alive must not hold up close()

        self.server = Server(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def forward(self, path):
        try:
            with urllib.request.urlopen(self.upstream + path, timeout=10) as answer:
                return answer.status, answer.read(), answer.headers.get("Content-Type", "application/json")
        except urllib.error.HTTPError as e:
            return e.code, e.read(), e.headers.get("Content-Type", "application/json")

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_an_https_registry_with_a_private_ca_decodes_and_an_untrusted_one_waits(registry, tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl CLI to make a CA")
    started = time.monotonic()
    tag = ident()
    name, topic = f"avro_tls_{tag}", f"avro-tls-{tag}"
    create_topic(topic, 1)
    serializer = AvroSerializer(SchemaRegistryClient({"url": registry["url"]}), ORDER_EVENT_V1)
    context = SerializationContext(topic, MessageField.VALUE)
    orders = seed_orders(60, seed=17, prefix="t")
    records = [(o["order_id"], serializer(o, context), 0) for o in orders]
    (sid,) = {schema_id(value) for _, value, _ in records}
    where = produce(topic, records)

    ca, cert, key = make_ca_and_certificate(tmp_path)
    front = HttpsRegistry(registry["url"], cert, key)
    # Only the job file says where the registry and its CA are.
    env = {k: v for k, v in os.environ.items() if k not in ("SLUICE_REGISTRY_URL", "SLUICE_REGISTRY_CA")}
    try:
        # Without the CA the certificate is checked against the public roots and refused: the
        # stream waits as for a registry that is down, and no request gets through.
        untrusted = write_job(tmp_path, f"{name}_untrusted", topic, front.url)
        untrusted_lake = tmp_path / "lake-untrusted"
        metrics_port = free_port()
        stream = start_stream(tmp_path, untrusted, untrusted_lake, env=env,
                              extra=("--metrics-addr", f"127.0.0.1:{metrics_port}"))
        with logs_on_failure([stream, registry["proc"]]):
            try:
                wait_for("the stream to wait on the untrusted registry",
                         lambda: metric(metrics_port, "sluice_registry_waits_total"), stream)
                assert raw_count(untrusted_lake, topic) == 0, "records landed through an untrusted certificate"
                assert front.paths == [], f"requests got through an untrusted certificate: {front.paths}"
                assert stream.alive(), "sluice stream exited on an untrusted certificate"
            finally:
                stream.stop()

        # `registry_ca` relative to the job file (both in tmp_path; the stream runs elsewhere).
        job = write_job(tmp_path, name, topic, front.url, registry_ca=ca.name)
        lake = tmp_path / "lake"
        stream = start_stream(tmp_path, job, lake, env=env)
        with logs_on_failure([stream, registry["proc"]]):
            try:
                wait_for("every record in the raw table through the https registry",
                         lambda: raw_count(lake, topic) >= len(records), stream)
                rows = raw_rows(lake, topic)
                assert sorted(r["order_id"] for r in rows.values()) == sorted(o["order_id"] for o in orders)
                assert sorted(r["event_us"] for r in rows.values()) == sorted(o["timestamp"] * 1000 for o in orders)
                assert f"/schemas/ids/{sid}" in front.paths, front.paths
                wait_for("the speed layer to commit every record", speed_caught_up(name, topic, ends(where)), stream)
                assert read_topic(f"{name}.dlq") == [], "records were dead-lettered"
                assert stream.alive(), "sluice stream exited"
            finally:
                code = stream.stop()
        assert code == 0, f"sluice stream exited {code} on SIGTERM\n{stream.tail()}"
    finally:
        front.close()
    print(f"https registry: {time.monotonic() - started:.1f}s")


# ---------------------------------------------------------------------------------------------
# 5. A registry outage. (Last: it starts a second registry over the fixture's topic.)

OUTAGE_SECONDS = 8


def test_registry_outage_delays_and_loses_nothing(registry, tmp_path):
    started = time.monotonic()
    tag = ident()
    name, topic, partitions = f"avro_outage_{tag}", f"avro-outage-{tag}", 2
    lake = tmp_path / "lake"
    create_topic(topic, partitions)

    # Serialized up front, through the fixture's registry.
    serializer = AvroSerializer(SchemaRegistryClient({"url": registry["url"]}), ORDER_EVENT_V1)
    context = SerializationContext(topic, MessageField.VALUE)
    orders = seed_orders(400, seed=11, span_ms=2 * MINUTE_MS, prefix="w")
    closing = sentinels(partitions, span_ms=2 * MINUTE_MS)
    records = [(o["order_id"], serializer(o, context), None) for o in orders]
    records += [(o["order_id"], serializer(o, context), p) for o, p in closing]
    (sid,) = {schema_id(value) for _, value, _ in records}

    # A second registry over the same topic knows the same ids; then it crashes.
    port = free_port()
    crashed, second_url = start_registry(tmp_path, port, registry["topic"], name="registry-2")
    try:
        status, body = http_get(f"{second_url}/schemas/ids/{sid}")
        assert status == 200 and json.loads(body["schema"]) == json.loads(ORDER_EVENT_V1), (status, body, crashed.tail())
    finally:
        crashed.kill()
    where = produce(topic, records)
    next_offsets = {p: ends(where).get(p, 0) for p in range(partitions)}

    # The job file names the fixture's (live) registry; SLUICE_REGISTRY_URL, the dead one, wins.
    job = write_job(tmp_path, name, topic, registry["url"])
    metrics_port = free_port()
    env = {**os.environ, "SLUICE_REGISTRY_URL": second_url}
    stream = start_stream(tmp_path, job, lake, env=env, extra=("--metrics-addr", f"127.0.0.1:{metrics_port}"))
    revived = None
    procs = [stream, registry["proc"]]
    with logs_on_failure(procs):
        try:
            # It has read records and found the registry down ...
            waits = wait_for("sluice_registry_waits_total to count a wait",
                             lambda: metric(metrics_port, "sluice_registry_waits_total"), stream)
            assert raw_count(lake, topic) == 0, (
                "records landed while the registry was down: did SLUICE_REGISTRY_URL override [source] registry?")
            # ... and keeps waiting: alive, nothing landed, nothing dead-lettered.
            deadline = time.monotonic() + OUTAGE_SECONDS
            while time.monotonic() < deadline:
                assert stream.alive(), "sluice stream exited while the registry was down"
                assert raw_count(lake, topic) == 0, "records landed while the registry was down"
                time.sleep(0.5)
            assert read_topic(f"{name}.dlq") == [], "records were dead-lettered during the outage"
            assert read_topic(f"{name}.results") == [], "windows were emitted during the outage"
            assert committed(name, topic, partitions) == {p: -1 for p in range(partitions)}, (
                "the speed layer committed offsets while the registry was down")
            more = metric(metrics_port, "sluice_registry_waits_total")
            assert more is not None and more >= waits, (waits, more)
            assert raw_count(lake, topic) == 0 and stream.alive(), "records landed, or sluice stream exited"

            # The registry comes back on the same port, over the same topic.
            revived, _ = start_registry(tmp_path, port, registry["topic"], name="registry-2-again")
            procs.append(revived)
            wait_for("every record in the raw table after the outage",
                     lambda: raw_count(lake, topic) >= len(records), stream, revived)
            rows = raw_rows(lake, topic)
            assert len(rows) == len(records), f"{len(rows)} raw rows for {len(records)} records"
            sent = orders + [o for o, _ in closing]
            assert sorted(r["order_id"] for r in rows.values()) == sorted(o["order_id"] for o in sent)
            assert sorted(r["event_us"] for r in rows.values()) == sorted(o["timestamp"] * 1000 for o in sent)
            # The speed layer lost nothing either: every window, exact.
            want = expected_windows(orders)
            results = wait_for("the speed layer to emit every window after the outage",
                               at_least(lambda: speed_results(name), len(want)), stream, revived)
            assert_same_windows(as_windows(results, rfc3339_ms), want, "<job>.results after the outage")
            wait_for("the speed layer to commit every record", speed_caught_up(name, topic, next_offsets), stream)
            assert read_topic(f"{name}.dlq") == [], "records were dead-lettered after the outage"
            assert stream.alive(), "sluice stream exited"
        finally:
            code = stream.stop()
            if revived is not None:
                revived.stop()
    assert code == 0, f"sluice stream exited {code} on SIGTERM\n{stream.tail()}"
    print(f"registry outage: {time.monotonic() - started:.1f}s")
