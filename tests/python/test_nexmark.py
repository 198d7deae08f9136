"""Nexmark: `sluice nexmark` events through the example jobs of jobs/examples/nexmark/, each
query's result checked against DuckDB running the query with Flink's semantics over the same
JSON lines.

For each query: `sluice lake load` the generated bids (the jobs share the raw table of
nexmark.bid, so only the first load writes), `sluice backfill` the job over the whole range, and
compare, row for row as multisets (floats to a relative 1e-9, column names and order too):
- the view table as the official `deltalake` package reads it, Sluice's own `__` columns left
  out, for the queries whose view rows are final (stateless ones; daily aggregates, whose day
  is part of the key and whose buckets are one day long); a session of q11 may straddle two
  hourly buckets, so its table rows are partial;
- `sluice view`, which merges the partial states across buckets, for every query.
The DuckDB SQL is Flink's query rewritten for DuckDB only where DuckDB's names differ
(DATE_FORMAT is strftime, ...): it keeps Flink's types (0.908 * price is an exact DECIMAL, AVG
of a BIGINT is the integer quotient) and computes q11's sessions with window functions.

Also: the generator's files hold the exact mix and the counts its summary reports, the same
seed gives the same files, and with a broker (SLUICE_TEST_BOOTSTRAP) `--brokers` produces the
same events to the three topics.

Needs the `sluice` binary (SLUICE_BIN, default $CARGO_TARGET_DIR/debug/sluice), duckdb and
deltalake (tests/prereqs.sh installs them in $SLUICE_VENV).
"""
import json
import math
import os
import pathlib
import subprocess
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import duckdb
import pytest
from deltalake import DeltaTable

REPO = pathlib.Path(__file__).resolve().parents[2]
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR") or pathlib.Path.home() / ".cache/sluice/target")
SLUICE = os.environ.get("SLUICE_BIN") or str(TARGET / "debug" / "sluice")
JOBS = REPO / "jobs/examples/nexmark"
UTC = timezone.utc
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

EVENTS = 20_000
SEED = 7
START = "2024-05-01T00:00:00Z"
# One event every 10 s of event time: the 20,000 events span 2.3 days, so the daily queries see
# three days and q14 every hour; consecutive events are exactly 10 s apart, so q11's hot bidder
# bids 10 s apart (one session: Flink merges touching session windows) or 20 s and more apart
# (a new session), and sessions cross hourly buckets.
RATE = "0.1"
RANGE = ("--from", "2024-05-01", "--to", "2024-05-04")
BIDS = EVENTS * 46 // 50
TIME_COLUMNS = {"dateTime", "starttime", "endtime"}
REL_TOLERANCE = 1e-9

DAY = "strftime(dateTime, '%Y-%m-%d')"
RANK_COUNTS = """
    count(*) AS total_bids,
    count(*) FILTER (WHERE price < 10000) AS rank1_bids,
    count(*) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_bids,
    count(*) FILTER (WHERE price >= 1000000) AS rank3_bids"""
RANK_DISTINCTS = """
    count(DISTINCT bidder) AS total_bidders,
    count(DISTINCT bidder) FILTER (WHERE price < 10000) AS rank1_bidders,
    count(DISTINCT bidder) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_bidders,
    count(DISTINCT bidder) FILTER (WHERE price >= 1000000) AS rank3_bidders,
    count(DISTINCT auction) AS total_auctions,
    count(DISTINCT auction) FILTER (WHERE price < 10000) AS rank1_auctions,
    count(DISTINCT auction) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_auctions,
    count(DISTINCT auction) FILTER (WHERE price >= 1000000) AS rank3_auctions"""
CHANNEL_ID = "'(&|^)channel_id=([^&]*)'"

# Query -> (DuckDB SQL with Flink's semantics, whether each view-table row is a final row).
QUERIES = {
    "q0": ("SELECT auction, bidder, price, dateTime, extra FROM bid", True),
    "q1": ("SELECT auction, bidder, 0.908 * price AS price, dateTime, extra FROM bid", True),
    "q2": ("SELECT auction, price FROM bid WHERE mod(auction, 123) = 0", True),
    "q10": (f"""SELECT auction, bidder, price, dateTime, extra, {DAY} AS dt,
                       strftime(dateTime, '%H:%M') AS hm FROM bid""", True),
    # A bid starts a session unless the bidder's previous bid is at most 10 s before it.
    "q11": ("""
        WITH marked AS (
            SELECT bidder, dateTime,
                   CASE WHEN dateTime - lag(dateTime) OVER (PARTITION BY bidder ORDER BY dateTime)
                             <= INTERVAL 10 SECOND THEN 0 ELSE 1 END AS starts
            FROM bid),
        numbered AS (
            SELECT bidder, dateTime,
                   sum(starts) OVER (PARTITION BY bidder ORDER BY dateTime
                                     ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS session
            FROM marked)
        SELECT bidder, count(*) AS bid_count, min(dateTime) AS starttime,
               max(dateTime) + INTERVAL 10 SECOND AS endtime
        FROM numbered GROUP BY bidder, session""", False),
    "q14": ("""
        SELECT auction, bidder, 0.908 * price AS price,
               CASE WHEN hour(dateTime) >= 8 AND hour(dateTime) <= 18 THEN 'dayTime'
                    WHEN hour(dateTime) <= 6 OR hour(dateTime) >= 20 THEN 'nightTime'
                    ELSE 'otherTime' END AS bidTimeType,
               dateTime, extra, length(extra) - length(replace(extra, 'c', '')) AS c_counts
        FROM bid WHERE 0.908 * price > 1000000 AND 0.908 * price < 50000000""", True),
    "q15": (f"SELECT {DAY} AS day, {RANK_COUNTS}, {RANK_DISTINCTS} FROM bid GROUP BY {DAY}", True),
    "q16": (f"""SELECT channel, {DAY} AS day, max(strftime(dateTime, '%H:%M')) AS minute,
                       {RANK_COUNTS}, {RANK_DISTINCTS}
                FROM bid GROUP BY channel, {DAY}""", True),
    # Flink's AVG of a BIGINT is the integer quotient.
    "q17": (f"""SELECT auction, {DAY} AS day, {RANK_COUNTS},
                       min(price) AS min_price, max(price) AS max_price,
                       sum(price) // count(*) AS avg_price, sum(price) AS sum_price
                FROM bid GROUP BY auction, {DAY}""", True),
    # Flink's REGEXP_EXTRACT is NULL without a match (DuckDB's regexp_extract gives '').
    "q21": (f"""
        SELECT auction, bidder, price, channel,
               CASE WHEN lower(channel) = 'apple' THEN '0'
                    WHEN lower(channel) = 'google' THEN '1'
                    WHEN lower(channel) = 'facebook' THEN '2'
                    WHEN lower(channel) = 'baidu' THEN '3'
                    WHEN regexp_matches(url, {CHANNEL_ID}) THEN regexp_extract(url, {CHANNEL_ID}, 2)
               END AS channel_id
        FROM bid
        WHERE regexp_matches(url, {CHANNEL_ID})
           OR lower(channel) IN ('apple', 'google', 'facebook', 'baidu')""", True),
    # Flink's SPLIT_INDEX counts from 0, DuckDB's lists from 1; both are NULL past the end.
    "q22": ("""SELECT auction, bidder, price, channel, string_split(url, '/')[4] AS dir1,
                      string_split(url, '/')[5] AS dir2, string_split(url, '/')[6] AS dir3
               FROM bid""", True),
}


def sluice(*args, lake=None, check=True):
    env = {k: v for k, v in os.environ.items() if k not in ("SLUICE_BROKERS", "SLUICE_LAKE")}
    if lake is not None:
        env["SLUICE_LAKE"] = str(lake)
    out = subprocess.run([SLUICE, *args], env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert out.returncode == 0, f"sluice {' '.join(args)}: exit {out.returncode}\n{out.stderr}"
    return out


def generate(out):
    result = sluice("nexmark", "--events", str(EVENTS), "--rate", RATE, "--start", START,
                    "--seed", str(SEED), "--output", "json", "--out", str(out))
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("nexmark")
    return out, generate(out)


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    return tmp_path_factory.mktemp("lake")


@pytest.fixture(scope="module")
def duck(generated):
    out, _ = generated
    con = duckdb.connect()
    # The generated bids with `dateTime` read as Flink reads it: a TIMESTAMP(3), no time zone.
    con.execute(f"""
        CREATE VIEW bid AS
        SELECT auction, bidder, price, channel, url, epoch_ms("dateTime") AS "dateTime", extra
        FROM read_json('{out / "bid.jsonl"}', format = 'newline_delimited', columns = {{
            'auction': 'BIGINT', 'bidder': 'BIGINT', 'price': 'BIGINT', 'channel': 'VARCHAR',
            'url': 'VARCHAR', 'dateTime': 'BIGINT', 'extra': 'VARCHAR'}})""")
    yield con
    con.close()


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_files_hold_the_mix_the_summary_reports(generated):
    out, summary = generated
    assert (summary["events"], summary["person"], summary["auction"], summary["bid"]) == \
        (EVENTS, EVENTS // 50, EVENTS * 3 // 50, BIDS)
    assert summary["first_event_time"] == START
    assert summary["files"] == {s: str(out / f"{s}.jsonl") for s in ("person", "auction", "bid")}
    bids = lines(out / "bid.jsonl")
    persons = lines(out / "person.jsonl")
    auctions = lines(out / "auction.jsonl")
    assert (len(persons), len(auctions), len(bids)) == (EVENTS // 50, EVENTS * 3 // 50, BIDS)
    assert set(bids[0]) == {"auction", "bidder", "price", "channel", "url", "dateTime", "extra"}
    assert set(persons[0]) == {"id", "name", "emailAddress", "creditCard", "city", "state",
                               "dateTime", "extra"}
    assert set(auctions[0]) == {"id", "itemName", "description", "initialBid", "reserve",
                                "dateTime", "expires", "seller", "category", "extra"}
    times = [b["dateTime"] for b in bids]
    assert times == sorted(times)
    # One event every 10 s: the last of the 20,000 (a bid) is 199,990 s after the start.
    assert times[-1] - datetime.fromisoformat(START).timestamp() * 1000 == 199_990_000
    assert summary["last_event_time"] == "2024-05-03T07:33:10Z"
    # Bids name persons and auctions of the run (a few within the spec's lead of 10 past the newest).
    person_ids = {p["id"] for p in persons}
    auction_ids = {a["id"] for a in auctions}
    named = sum(b["bidder"] in person_ids and b["auction"] in auction_ids for b in bids)
    assert named >= 0.95 * len(bids), f"{named} of {len(bids)}"


def test_the_same_seed_gives_the_same_files(generated, tmp_path):
    out, _ = generated
    again = generate(tmp_path)
    assert again["bid"] == BIDS
    for stream in ("person", "auction", "bid"):
        assert (tmp_path / f"{stream}.jsonl").read_bytes() == (out / f"{stream}.jsonl").read_bytes(), stream
    other = sluice("nexmark", "--events", "500", "--rate", RATE, "--seed", str(SEED + 1),
                   "--out", str(tmp_path / "other"))
    assert other.returncode == 0
    first = (out / "bid.jsonl").read_text().splitlines()[:400]
    assert (tmp_path / "other" / "bid.jsonl").read_text().splitlines()[:400] != first


def normalized(value, column):
    if isinstance(value, str) and column in TIME_COLUMNS:
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return (value - EPOCH) // timedelta(microseconds=1)
    if isinstance(value, Decimal):
        return float(value)
    return value


def rows_of(dicts, columns):
    return [tuple(normalized(row[c], c) for c in columns) for row in dicts]


def sort_key(row):
    # Floats rounded for ordering only (both sides hold the same values to 1e-9).
    return tuple((v is None, round(v, 3) if isinstance(v, float) else v) for v in row)


def assert_same_rows(got, want, what):
    got, want = sorted(got, key=sort_key), sorted(want, key=sort_key)
    assert len(got) == len(want), f"{what}: {len(got)} rows, DuckDB {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        same = len(g) == len(w) and all(
            math.isclose(a, b, rel_tol=REL_TOLERANCE) if isinstance(b, float) else a == b
            for a, b in zip(g, w))
        assert same, f"{what}: row {i} differs:\n  sluice {g}\n  duckdb {w}"


def duckdb_rows(duck, sql):
    result = duck.execute(sql)
    columns = [d[0] for d in result.description]
    return columns, [tuple(normalized(v, c) for v, c in zip(row, columns)) for row in result.fetchall()]


@pytest.mark.parametrize("query", sorted(QUERIES, key=lambda q: int(q[1:])))
def test_query_matches_duckdb(query, generated, lake, duck):
    out, _ = generated
    sql, rows_are_final = QUERIES[query]
    job = str(JOBS / f"{query}.toml")
    loaded = json.loads(sluice("lake", "load", "--job", job, "--output", "json",
                               str(out / "bid.jsonl"), lake=lake).stdout)
    assert loaded["rejected"] == 0
    assert loaded["already_loaded"] or loaded["rows_loaded"] == BIDS
    report = json.loads(sluice("backfill", "--job", job, *RANGE, "--output", "json", lake=lake).stdout)
    assert (report["rows_read"], report["rows_rejected"]) == (BIDS, 0), report

    columns, want = duckdb_rows(duck, sql)
    assert want, f"{query}: DuckDB finds no rows; the data does not exercise the query"

    viewed = [json.loads(line) for line in sluice("view", "--job", job, lake=lake).stdout.splitlines()]
    assert viewed and list(viewed[0]) == columns, f"{query}: sluice view columns {list(viewed[0])}"
    assert_same_rows(rows_of(viewed, columns), want, f"{query} (sluice view)")

    table = DeltaTable(str(lake / "views" / f"nexmark_{query}")).to_pyarrow_table()
    own = [c for c in table.column_names if not c.startswith("__")]
    assert own == columns, f"{query}: view table columns {table.column_names}"
    if rows_are_final:
        assert_same_rows(rows_of(table.to_pylist(), columns), want, f"{query} (view table)")


BOOTSTRAP = os.environ.get("SLUICE_TEST_BOOTSTRAP")


@pytest.mark.skipif(not BOOTSTRAP, reason="needs a Kafka-protocol broker: set SLUICE_TEST_BOOTSTRAP=host:port")
def test_brokers_get_the_same_events_as_the_files(tmp_path):
    from confluent_kafka import Consumer, TopicPartition

    events = 2_000
    prefix = f"nexmark.{uuid.uuid4().hex[:8]}."
    common = ("--events", str(events), "--rate", RATE, "--seed", str(SEED), "--output", "json")
    sent = json.loads(sluice("nexmark", *common, "--brokers", BOOTSTRAP, "--topic-prefix", prefix).stdout)
    assert sent["topics"] == {s: f"{prefix}{s}" for s in ("person", "auction", "bid")}
    written = json.loads(sluice("nexmark", *common, "--out", str(tmp_path)).stdout)
    assert {s: sent[s] for s in ("person", "auction", "bid")} == \
        {s: written[s] for s in ("person", "auction", "bid")}
    for stream in ("person", "auction", "bid"):
        expected = (tmp_path / f"{stream}.jsonl").read_text().splitlines()
        consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"t-{uuid.uuid4().hex}",
                             "enable.auto.commit": False})
        consumer.assign([TopicPartition(f"{prefix}{stream}", 0, 0)])
        got = []
        while len(got) < len(expected):
            message = consumer.poll(30)
            assert message is not None, f"{stream}: {len(got)} of {len(expected)} records after 30 s"
            assert message.error() is None, message.error()
            got.append(message.value().decode())
        consumer.close()
        assert got == expected, stream
