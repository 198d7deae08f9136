"""Airflow: the sluice-airflow package and DAGs (jobs/airflow) under a real Airflow 3.

Runs in the Airflow venv (`$SLUICE_AIRFLOW_VENV/bin/python -m pytest tests/python/test_airflow.py`,
as tests/run.sh does; tests/prereqs.sh creates it). One temporary AIRFLOW_HOME with a SQLite
metadata database serves the whole session. The end-to-end tests run the real `sluice`
binary (SLUICE_BIN, default $CARGO_TARGET_DIR/debug/sluice) through `airflow dags test`;
the exit-code, interval and trigger tests use a fake `sluice` script. The `sluice_replay` test
also needs the run's broker (SLUICE_TEST_BOOTSTRAP, which tests/run.sh sets; skipped without it).
"""
import asyncio
import atexit
import json
import os
import pathlib
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from datetime import datetime, timedelta, timezone

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
DAGS = REPO / "jobs/airflow/dags"
JOB = str(REPO / "jobs/examples/orders_per_minute.toml")
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR") or pathlib.Path.home() / ".cache/sluice/target")
SLUICE = os.environ.get("SLUICE_BIN") or str(TARGET / "debug" / "sluice")

# Airflow reads its home and configuration when first imported: set them before it is.
AIRFLOW_HOME = tempfile.mkdtemp(prefix="sluice-airflow-home-")
atexit.register(shutil.rmtree, AIRFLOW_HOME, ignore_errors=True)
os.environ.update({
    "AIRFLOW_HOME": AIRFLOW_HOME,
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
    # LocalExecutor for `dags test --use-executor`: mapped shards run as parallel processes.
    "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
    "AIRFLOW__CORE__PARALLELISM": "4",
})

pytest.importorskip(
    "airflow.sdk",
    reason="Airflow is not installed in this interpreter: run this file with "
    "$SLUICE_AIRFLOW_VENV/bin/python (tests/prereqs.sh creates that venv)",
)

from airflow.sdk.exceptions import (  # noqa: E402
    AirflowException,
    AirflowFailException,
    AirflowSkipException,
    TaskDeferred,
)

from sluice_airflow import get_provider_info  # noqa: E402
from sluice_airflow.intervals import format_time, parse_duration, parse_time, to_micros  # noqa: E402
from sluice_airflow.operators import SluiceBackfillOperator, SluiceVerifyOperator  # noqa: E402
from sluice_airflow.sensors import SluiceCaughtUpSensor, SluiceLakeCompleteSensor  # noqa: E402
from sluice_airflow.sharding import plan, shard_ranges  # noqa: E402
from sluice_airflow.triggers import (  # noqa: E402
    LakeStatusError,
    SluiceCaughtUpTrigger,
    SluiceLakeCompleteTrigger,
    VersionsError,
    lake_complete,
    version_caught_up,
)
from sluice_airflow.versions import SluiceReplayOperator, SluiceSwitchOperator  # noqa: E402

AIRFLOW = str(pathlib.Path(sys.executable).parent / "airflow")
UTC = timezone.utc
START = datetime(2024, 5, 1, tzinfo=UTC)
DAYS = 3


def us(text):
    return to_micros(parse_time(text))


# ---------------------------------------------------------------------------------------------
# A fake `sluice`: prints canned stdout/stderr, exits with a given code, records its arguments.


class FakeSluice:
    def __init__(self, directory: pathlib.Path):
        self.dir = directory
        self.path = directory / "sluice"
        self.calls = directory / "calls"

    def answer(self, code=0, stdout="", stderr=""):
        """The next calls print `stdout` (a dict is printed as one JSON line) and exit `code`."""
        if isinstance(stdout, dict):
            stdout = json.dumps(stdout) + "\n"
        (self.dir / "out").write_text(stdout)
        (self.dir / "err").write_text(stderr)
        self.path.write_text(
            "#!/bin/sh\n"
            f"printf '%s\\n' \"$*\" >> '{self.calls}'\n"
            f"cat '{self.dir / 'out'}'\n"
            f"cat '{self.dir / 'err'}' >&2\n"
            f"exit {code}\n"
        )
        self.path.chmod(0o755)
        return self

    def answers(self, *stdouts):
        """Successive calls print successive answers (the last one repeats), exit 0."""
        for i, out in enumerate(stdouts):
            (self.dir / f"out{i}").write_text(json.dumps(out) + "\n")
        last = len(stdouts) - 1
        self.path.write_text(
            "#!/bin/sh\n"
            f"printf '%s\\n' \"$*\" >> '{self.calls}'\n"
            f"n=$(wc -l < '{self.calls}'); n=$((n - 1)); [ $n -gt {last} ] && n={last}\n"
            f"cat '{self.dir}'/out$n\n"
        )
        self.path.chmod(0o755)
        return self

    def argv(self):
        return [line.split() for line in self.calls.read_text().splitlines()] if self.calls.exists() else []


@pytest.fixture()
def fake(tmp_path):
    return FakeSluice(tmp_path)


def report(**overrides):
    """A `sluice backfill --output json` report (BackfillReport's fields)."""
    body = {
        "job": "orders_per_minute", "view_table": "/lake/views/orders_per_minute",
        "from": "2024-05-01T10:00:00Z", "to": "2024-05-01T11:00:00Z", "rows_read": 90,
        "view_rows": 60, "rows_rejected": 0, "cutoff": "2024-05-01T11:00:00Z",
        "cutoff_us": us("2024-05-01T11:00:00Z"), "lake_complete_until": None,
        "lake_complete_until_us": None, "clamped_from": None, "incomplete": False,
        "table_version": 3, "seconds": 0.5,
    }
    body.update(overrides)
    return body


def status(completeness, until=None, **overrides):
    """A `sluice lake status --output json` answer."""
    body = {
        "job": "orders_per_minute", "raw_table": "/lake/raw/orders.events", "raw_version": 4,
        "completeness": completeness, "lake_complete_until": until,
        "lake_complete_until_us": us(until) if until else None,
        "view_table": "/lake/views/orders_per_minute", "cutoff": None, "cutoff_us": None,
        "partitions": [{"partition": 0, "next_offset": 10, "max_event_us": None, "at_end": False}],
    }
    body.update(overrides)
    return body


HOUR = {"data_interval_start": START + timedelta(hours=10), "data_interval_end": START + timedelta(hours=11)}


def backfill_op(fake, **kwargs):
    return SluiceBackfillOperator(task_id="backfill", job="job.toml", sluice_bin=str(fake.path), **kwargs)


# ---------------------------------------------------------------------------------------------
# The backfill operator: exit codes, the interval, the command line.


def test_exit_0_returns_the_summary_and_runs_the_interval(fake):
    fake.answer(0, report(), stderr="INFO backfill: 90 rows\n")
    got = backfill_op(fake, lake="/tmp/lake").execute(HOUR)
    assert got == report()
    assert fake.argv() == [[
        "backfill", "--job", "job.toml", "--lake", "/tmp/lake",
        "--from", "2024-05-01T10:00:00Z", "--to", "2024-05-01T11:00:00Z", "--output", "json",
    ]]


def logged(capsys):
    """What the task log got: Airflow 3's task logging renders through structlog to stdout."""
    return capsys.readouterr().out.splitlines()


def test_stderr_goes_to_the_task_log(fake, capsys):
    fake.answer(0, report(), stderr="first line\nsecond line\n")
    backfill_op(fake).execute(HOUR)
    lines = logged(capsys)
    assert any("sluice: first line" in line for line in lines)
    assert any("sluice: second line" in line for line in lines)


def test_exit_3_succeeds_with_a_warning_naming_the_skipped_rows(fake, capsys):
    fake.answer(3, report(rows_rejected=2))
    got = backfill_op(fake).execute(HOUR)
    assert got["rows_rejected"] == 2
    assert any("warning" in line and "skipped 2 raw rows" in line for line in logged(capsys))


def test_a_cutoff_held_by_a_gap_before_the_range_is_a_warning(fake, capsys):
    fake.answer(0, report())
    backfill_op(fake).execute(HOUR)
    assert not any("the cutoff stays" in line for line in logged(capsys))
    fake.answer(0, report(cutoff=None, cutoff_us=None))
    assert backfill_op(fake).execute(HOUR)["cutoff"] is None
    assert any("warning" in line and "the cutoff stays at none" in line for line in logged(capsys))


def test_exit_4_fails_for_a_retry_by_default(fake):
    fake.answer(4, {"job": "orders_per_minute", "from": "2024-05-01T10:00:00Z", "to": "2024-05-01T11:00:00Z",
                    "status": "incomplete", "lake_complete_until": "2024-05-01T09:30:00Z", "message": "..."})
    with pytest.raises(AirflowException) as raised:
        backfill_op(fake).execute(HOUR)
    # Retryable: neither a skip nor a failure that bypasses retries.
    assert not isinstance(raised.value, (AirflowSkipException, AirflowFailException))
    assert "2024-05-01T09:30:00Z" in str(raised.value) and "nothing of" in str(raised.value)


def test_exit_4_skips_with_skip_on_incomplete(fake):
    fake.answer(4, {"status": "incomplete", "lake_complete_until": None})
    with pytest.raises(AirflowSkipException):
        backfill_op(fake, skip_on_incomplete=True).execute(HOUR)


def test_exit_2_is_a_usage_error_without_retry(fake):
    fake.answer(2, stderr="error: unexpected argument '--frm' found\n")
    with pytest.raises(AirflowFailException, match="unexpected argument"):
        backfill_op(fake).execute(HOUR)


@pytest.mark.parametrize("code", [1, 101])
def test_other_exit_codes_fail_for_a_retry_with_the_error(fake, code):
    fake.answer(code, stderr="INFO starting\nerror: reading the raw table: no such table\n")
    with pytest.raises(AirflowException) as raised:
        backfill_op(fake).execute(HOUR)
    assert not isinstance(raised.value, (AirflowSkipException, AirflowFailException))
    assert f"exit {code}" in str(raised.value) and "no such table" in str(raised.value)


def test_exit_0_without_a_json_summary_fails(fake):
    fake.answer(0, "backfill orders_per_minute: done\n")
    with pytest.raises(AirflowException, match="no JSON summary"):
        backfill_op(fake).execute(HOUR)


def test_a_clamped_range_fails_for_a_retry_unless_accepted(fake):
    clamped = report(to="2024-05-01T12:00:00Z", clamped_from="2024-05-01T13:00:00Z",
                     lake_complete_until="2024-05-01T12:20:00Z")
    fake.answer(0, clamped)
    with pytest.raises(AirflowException, match="backfilled only") as raised:
        backfill_op(fake).execute(HOUR)
    assert not isinstance(raised.value, AirflowFailException)
    assert backfill_op(fake, accept_clamped=True).execute(HOUR) == clamped


@pytest.mark.parametrize("context", [
    {"data_interval_start": START, "data_interval_end": START},  # `airflow dags test` of a trigger timetable
    {"data_interval_start": START, "data_interval_end": START - timedelta(hours=1)},
    {"data_interval_start": None, "data_interval_end": None},
])
def test_an_empty_interval_is_refused_before_sluice_runs(fake, context):
    fake.answer(0, report())
    with pytest.raises(AirflowFailException, match="from_time|empty"):
        backfill_op(fake).execute(context)
    assert fake.argv() == []


def test_from_and_to_override_the_interval_and_are_normalised(fake):
    fake.answer(0, report())
    backfill_op(fake, from_time="2024-05-02", to_time="1714694400000", allow_incomplete=True,
                rejects_path="/tmp/r.jsonl").execute({"data_interval_start": START, "data_interval_end": START})
    (argv,) = fake.argv()
    assert argv[argv.index("--from") + 1] == "2024-05-02T00:00:00Z"
    assert argv[argv.index("--to") + 1] == "2024-05-03T00:00:00Z"
    assert "--allow-incomplete" in argv and argv[argv.index("--rejects") + 1] == "/tmp/r.jsonl"
    assert "--lake" not in argv  # sluice's own default (SLUICE_LAKE, else ./lake) applies


def test_the_binary_comes_from_sluice_bin_then_SLUICE_BIN_then_PATH(fake, monkeypatch, tmp_path):
    fake.answer(0, report())
    monkeypatch.setenv("SLUICE_BIN", str(fake.path))
    SluiceBackfillOperator(task_id="b", job="job.toml").execute(HOUR)
    monkeypatch.delenv("SLUICE_BIN")
    monkeypatch.setenv("PATH", f"{fake.dir}:{os.environ['PATH']}")
    SluiceBackfillOperator(task_id="b", job="job.toml").execute(HOUR)
    assert len(fake.argv()) == 2
    with pytest.raises(AirflowFailException, match="does not exist"):
        SluiceBackfillOperator(task_id="b", job="job.toml", sluice_bin=str(tmp_path / "nope")).execute(HOUR)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(AirflowFailException, match="SLUICE_BIN"):
        SluiceBackfillOperator(task_id="b", job="job.toml").execute(HOUR)


def test_the_job_falls_back_to_SLUICE_JOB(fake, monkeypatch):
    fake.answer(0, report())
    monkeypatch.delenv("SLUICE_JOB", raising=False)
    with pytest.raises(AirflowFailException, match="SLUICE_JOB"):
        SluiceBackfillOperator(task_id="b", job="", sluice_bin=str(fake.path)).execute(HOUR)
    monkeypatch.setenv("SLUICE_JOB", "/jobs/x.toml")
    SluiceBackfillOperator(task_id="b", sluice_bin=str(fake.path)).execute(HOUR)
    assert fake.argv()[-1][1:3] == ["--job", "/jobs/x.toml"]


# ---------------------------------------------------------------------------------------------
# The verify operator.


def verify_report(identical=True, **overrides):
    body = {"job": "orders_per_minute", "identical": identical, "cutoff": "2024-05-01T11:00:00Z",
            "rows_compared": 60, "origins": {"batch": 60, "speed": 0, "merged": 0},
            "only_in_recompute": [], "only_in_merged": [], "different": []}
    body.update(overrides)
    return body


def test_verify_exit_codes(fake):
    op = SluiceVerifyOperator(task_id="v", job="job.toml", brokers="127.0.0.1:9092", settle="5s", quiescent=True,
                              properties={"security.protocol": "plaintext"}, sluice_bin=str(fake.path))
    fake.answer(0, verify_report())
    assert op.execute({})["rows_compared"] == 60
    assert fake.argv()[0] == ["verify", "--job", "job.toml", "--output", "json", "--brokers", "127.0.0.1:9092",
                              "--settle", "5s", "--quiescent", "-X", "security.protocol=plaintext"]
    fake.answer(1, verify_report(False, only_in_merged=[{"n": 1}], different=[[{"n": 1}, {"n": 2}]] * 2))
    with pytest.raises(AirflowException, match="0 rows only in the recompute, 1 only in the merged view, 2 differ"):
        op.execute({})
    fake.answer(2, stderr="error: connecting to 127.0.0.1:9092\n")
    with pytest.raises(AirflowException, match="could not run") as raised:
        op.execute({})
    assert not isinstance(raised.value, AirflowFailException)


# ---------------------------------------------------------------------------------------------
# Shards.


def test_shards_are_bucket_aligned_days_covering_the_widened_range():
    h = timedelta(hours=1)
    shards = shard_ranges(parse_time("2024-05-01T05:30:00Z"), parse_time("2024-05-03T02:10:00Z"), timedelta(days=1), h)
    assert [(format_time(a), format_time(b)) for a, b in shards] == [
        ("2024-05-01T05:00:00Z", "2024-05-02T00:00:00Z"),
        ("2024-05-02T00:00:00Z", "2024-05-03T00:00:00Z"),
        ("2024-05-03T00:00:00Z", "2024-05-03T03:00:00Z"),
    ]
    assert len(shard_ranges(START, START + timedelta(days=31), timedelta(days=1), h)) == 31
    with pytest.raises(ValueError, match="whole number of buckets"):
        shard_ranges(START, START + timedelta(days=2), timedelta(minutes=90), h)
    with pytest.raises(ValueError, match="empty"):
        shard_ranges(START, START, timedelta(days=1), h)


def test_plan_takes_the_bucket_from_the_job_file_and_refuses_another(tmp_path):
    job = tmp_path / "job.toml"
    job.write_text('name = "x"\n[view]\nbucket = "6h"\n')
    # Widened to the job's 6h buckets (1h buckets would end it at 13:00), cut every 12h.
    shards = plan(str(job), "2024-05-01T01:00:00Z", "2024-05-01T13:00:00Z", "12h")
    assert shards == [{"from_time": "2024-05-01T00:00:00Z", "to_time": "2024-05-01T12:00:00Z"},
                      {"from_time": "2024-05-01T12:00:00Z", "to_time": "2024-05-01T18:00:00Z"}]
    with pytest.raises(ValueError, match="differs from the job file"):
        plan(str(job), "2024-05-01", "2024-05-02", "1d", "1h")
    with pytest.raises(ValueError, match="whole number of buckets"):
        plan(str(job), "2024-05-01", "2024-05-02", "3h")
    assert parse_duration("1h 30m") == timedelta(minutes=90)


# ---------------------------------------------------------------------------------------------
# The sensor and its trigger.

TARGET_END = "2024-05-01T11:00:00Z"


@pytest.mark.parametrize("answer,done", [
    (status("unbounded"), True),
    (status("until", "2024-05-01T11:00:00Z"), True),
    (status("until", "2024-05-01T12:34:56Z"), True),
    (status("until", "2024-05-01T10:59:59Z"), False),
    (status("nothing"), False),
])
def test_the_trigger_decides_on_the_status_json(answer, done):
    got, why = lake_complete(answer, us(TARGET_END))
    assert got is done and why


@pytest.mark.parametrize("answer", [status("until"), status("sometimes"), {}])
def test_malformed_status_json_is_an_error(answer):
    with pytest.raises(LakeStatusError):
        lake_complete(answer, us(TARGET_END))


def run_trigger(trigger, seconds=10):
    async def first():
        return await asyncio.wait_for(trigger.run().__anext__(), seconds)
    return asyncio.run(first()).payload


def test_the_trigger_polls_until_the_lake_is_complete(fake):
    fake.answers(status("nothing"), status("until", "2024-05-01T10:30:00Z"), status("until", "2024-05-01T11:00:05Z"))
    trigger = SluiceLakeCompleteTrigger(job="job.toml", lake="/tmp/lake", until_us=us(TARGET_END),
                                        sluice_bin=str(fake.path), poll_interval=0.01)
    classpath, kwargs = trigger.serialize()
    assert classpath == "sluice_airflow.triggers.SluiceLakeCompleteTrigger"
    event = run_trigger(SluiceLakeCompleteTrigger(**kwargs))
    assert event["status"] == "complete" and event["lake"]["lake_complete_until"] == "2024-05-01T11:00:05Z"
    assert len(fake.argv()) == 3
    assert fake.argv()[0] == ["lake", "status", "--job", "job.toml", "--lake", "/tmp/lake", "--output", "json"]


def test_the_trigger_reports_a_failing_status_command(fake):
    fake.answer(1, stderr="error: no such lake\n")
    event = run_trigger(SluiceLakeCompleteTrigger(job="job.toml", until_us=0, sluice_bin=str(fake.path), poll_interval=0.01))
    assert event["status"] == "error" and "no such lake" in event["message"]
    sensor = SluiceLakeCompleteSensor(task_id="s", job="job.toml", sluice_bin=str(fake.path))
    with pytest.raises(AirflowException, match="no such lake"):
        sensor.execute_complete({}, event)


def test_the_sensor_pokes_when_not_deferrable(fake):
    sensor = SluiceLakeCompleteSensor(task_id="s", job="job.toml", sluice_bin=str(fake.path), deferrable=False,
                                      poke_interval=0.01, timeout=5)
    fake.answers(status("nothing"), status("until", "2024-05-01T11:00:00Z"))
    assert sensor.execute(HOUR)["completeness"] == "until"
    assert len(fake.argv()) == 2


def test_the_deferrable_sensor_checks_once_then_defers_to_the_trigger(fake):
    sensor = SluiceLakeCompleteSensor(task_id="s", job="job.toml", lake="/tmp/lake", sluice_bin=str(fake.path),
                                      deferrable=True, poke_interval=30, timeout=600)
    fake.answer(0, status("until", "2024-05-01T10:00:00Z"))
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(HOUR)
    trigger = deferred.value.trigger
    assert isinstance(trigger, SluiceLakeCompleteTrigger)
    assert (trigger.until_us, trigger.lake, trigger.poll_interval) == (us(TARGET_END), "/tmp/lake", 30)
    assert deferred.value.method_name == "execute_complete" and deferred.value.timeout == timedelta(seconds=600)
    fake.answer(0, status("unbounded"))
    assert sensor.execute(HOUR)["completeness"] == "unbounded"  # complete at once: no deferral


def test_the_provider_entry_point_matches_its_package_and_airflows_schema():
    from importlib.metadata import entry_points

    import jsonschema
    import airflow

    (entry,) = [e for e in entry_points(group="apache_airflow_provider") if e.value.startswith("sluice_airflow")]
    info = entry.load()()
    assert info == get_provider_info() and info["package-name"] == entry.dist.name
    schema = json.loads((pathlib.Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    jsonschema.validate(info, schema)


# ---------------------------------------------------------------------------------------------
# Versions: the replay and switch operators, the caught-up sensor and its trigger.


def replay_report(caught_up=True, **overrides):
    """A `sluice replay --output json` report (ReplayReport's fields)."""
    body = {"job": "orders_per_minute", "version": 2, "fingerprint": "c1e9fd7e71473308850c5a332731a211",
            "from": "lake", "backfill": report(view_table="/lake/views/orders_per_minute.v2"),
            "seed": {"Seeded": {"rows": 12, "partitions": 2}}, "group": "sluice-orders_per_minute.v2",
            "records_in": 40, "lag": 0 if caught_up else 5000, "caught_up": caught_up, "seconds": 2.5}
    body.update(overrides)
    return body


def switch_report(switched=True, why_refused=None, **overrides):
    """A `sluice switch --output json` report (SwitchReport's fields)."""
    body = {"job": "orders_per_minute", "from": 1, "to": 2, "switched": switched, "forced": False,
            "lag": 0, "verify_identical": why_refused is None, "why_refused": why_refused}
    body.update(overrides)
    return body


def listing(*rows):
    """A `sluice versions --output json` answer; rows are (version, state, lag)."""
    return {"job": "orders_per_minute", "versions": [
        {"version": v, "fingerprint": f"fp{v}", "state": state, "lag": lag,
         "cutoff": "2024-05-01T10:19:00Z", "view_rows": 10} for v, state, lag in rows]}


def replay_op(fake, **kwargs):
    return SluiceReplayOperator(**{"task_id": "replay", "job": "v2.toml", "brokers": "127.0.0.1:9092",
                                   "sluice_bin": str(fake.path), **kwargs})


def switch_op(fake, **kwargs):
    return SluiceSwitchOperator(**{"task_id": "switch", "job": "v2.toml", "brokers": "127.0.0.1:9092",
                                   "sluice_bin": str(fake.path), **kwargs})


def retryable(raised):
    """A failure that Airflow retries: neither a skip nor one that bypasses retries."""
    return not isinstance(raised.value, (AirflowSkipException, AirflowFailException))


def test_replay_exit_0_returns_the_report_and_passes_every_option(fake):
    fake.answer(0, replay_report(), stderr="INFO speed layer started\n")
    op = replay_op(fake, lake="/tmp/lake", replay_from="earliest", caught_up="500", timeout="10m",
                   state_dir="/var/lib/sluice/v2", properties={"security.protocol": "plaintext"})
    assert op.execute({}) == replay_report()
    assert fake.argv() == [[
        "replay", "--job", "v2.toml", "--lake", "/tmp/lake", "--brokers", "127.0.0.1:9092", "--output", "json",
        "--from", "earliest", "--caught-up", "500", "--timeout", "10m", "--state-dir", "/var/lib/sluice/v2",
        "-X", "security.protocol=plaintext",
    ]]
    # Params rendered from unset values leave sluice's defaults.
    replay_op(fake, replay_from="", caught_up="", timeout="", state_dir="None").execute({})
    assert fake.argv()[-1] == ["replay", "--job", "v2.toml", "--brokers", "127.0.0.1:9092", "--output", "json"]


def test_replay_exit_codes(fake):
    # 4: nothing complete in the raw table yet (sluice prints no JSON then): retry later.
    fake.answer(4, stderr="error: nothing of the range is complete in the raw table yet\n")
    with pytest.raises(AirflowException, match="nothing of the raw table is complete") as raised:
        replay_op(fake).execute({})
    assert retryable(raised) and "complete in the raw table yet" in str(raised.value)
    # 1 with a report: not caught up within --timeout; a retry continues the version.
    fake.answer(1, replay_report(caught_up=False), stderr="replay: not caught up after 3600s\n")
    with pytest.raises(AirflowException, match="not caught up in time, 5000 records behind") as raised:
        replay_op(fake).execute({})
    assert retryable(raised)
    fake.answer(1, stderr="error: source topic `orders.events` does not exist\n")
    with pytest.raises(AirflowException, match=r"failed \(exit 1\)") as raised:
        replay_op(fake).execute({})
    assert retryable(raised) and "does not exist" in str(raised.value)
    fake.answer(2, stderr="error: invalid value 'lakes' for '--from <FROM>'\n")
    with pytest.raises(AirflowFailException, match="usage error"):
        replay_op(fake).execute({})
    fake.answer(0, "replay: done\n")
    with pytest.raises(AirflowException, match="no JSON report"):
        replay_op(fake).execute({})
    with pytest.raises(AirflowFailException, match="not one of lake, earliest"):
        replay_op(fake, replay_from="kafka").execute({})


def test_the_kafka_operators_need_brokers_from_somewhere(fake, monkeypatch):
    fake.answer(0, replay_report())
    monkeypatch.delenv("SLUICE_BROKERS", raising=False)
    for op in (replay_op(fake, brokers=""), switch_op(fake, brokers=""),
               SluiceVerifyOperator(task_id="v", job="job.toml", sluice_bin=str(fake.path))):
        with pytest.raises(AirflowFailException, match="no Kafka brokers.*SLUICE_BROKERS"):
            op.execute({})
    assert fake.argv() == []
    # SLUICE_BROKERS, in env= or the worker's environment, is sluice's own default.
    replay_op(fake, brokers="", env={"SLUICE_BROKERS": "10.0.0.1:9092"}).execute({})
    monkeypatch.setenv("SLUICE_BROKERS", "10.0.0.1:9092")
    replay_op(fake, brokers=None).execute({})
    assert [argv for argv in fake.argv() if "--brokers" in argv] == []


def test_switch_exit_codes(fake, capsys):
    fake.answer(0, switch_report())
    op = switch_op(fake, lake="/tmp/lake", version=1, force=True, caught_up=500, settle="5s")
    assert op.execute({}) == switch_report()
    assert fake.argv() == [[
        "switch", "--job", "v2.toml", "--lake", "/tmp/lake", "--brokers", "127.0.0.1:9092", "--output", "json",
        "--version", "1", "--force", "--caught-up", "500", "--settle", "5s",
    ]]
    # Already serving: exit 0, switched false, no refusal.
    fake.answer(0, switch_report(switched=False, **{"from": 2}, lag=None, verify_identical=None))
    assert switch_op(fake).execute({})["switched"] is False
    assert any("version 2 already serves" in line for line in logged(capsys))
    # Refused: a retry may find the version caught up.
    why = "version 2 is 4000 records behind (caught up is under 1000)"
    fake.answer(1, switch_report(switched=False, why_refused=why, verify_identical=None))
    with pytest.raises(AirflowException, match="refused: version 2 is 4000 records behind") as raised:
        switch_op(fake).execute({})
    assert retryable(raised)
    fake.answer(1, stderr="error: job `orders_per_minute` has no version 3\n")
    with pytest.raises(AirflowException, match=r"failed \(exit 1\)") as raised:
        switch_op(fake).execute({})
    assert retryable(raised) and "no version 3" in str(raised.value)
    fake.answer(2, stderr="error: unexpected argument '--versoin' found\n")
    with pytest.raises(AirflowFailException, match="usage error"):
        switch_op(fake).execute({})


@pytest.mark.parametrize("rows,max_lag,done", [
    ([(1, "serving", 0), (2, "building", 5000)], None, False),
    ([(1, "serving", 0), (2, "building", None)], None, False),
    ([(1, "serving", 0), (2, "caught up", 10)], None, True),
    ([(1, "caught up", 0), (2, "serving", 10)], None, True),
    ([(2, "building", 50)], 100, True),     # a threshold above sluice's own 1 000 ...
    ([(2, "caught up", 50)], 10, False),    # ... or below it decides instead of the state
    ([(2, "building", None)], 100, False),
    ([(2, "serving", 5000)], 10, True),     # serving is done whatever the lag
])
def test_the_caught_up_decision_on_the_versions_json(rows, max_lag, done):
    got, why = version_caught_up(listing(*rows), 2, max_lag)
    assert got is done and "version 2" in why


@pytest.mark.parametrize("answer,fatal", [
    (listing((1, "serving", 0), (2, "retired", None)), True),
    (listing((1, "serving", 0)), True),
    (listing((2, "sleeping", 0)), False),
    (listing((2, "building", "many")), False),
    ({"job": "orders_per_minute"}, False),
])
def test_a_retired_unknown_or_malformed_version_is_an_error(answer, fatal):
    with pytest.raises(VersionsError) as raised:
        version_caught_up(answer, 2)
    assert raised.value.fatal is fatal


@pytest.fixture()
def v2_job(tmp_path):
    job = tmp_path / "v2.toml"
    job.write_text('name = "orders_per_minute"\n[view]\nversion = 2\nbucket = "1m"\n')
    return str(job)


def test_the_caught_up_sensor_pokes_the_version_the_job_file_names(fake, v2_job):
    sensor = SluiceCaughtUpSensor(task_id="w", job=v2_job, brokers="127.0.0.1:9092", sluice_bin=str(fake.path),
                                  deferrable=False, poke_interval=0.01, timeout=5)
    fake.answers(listing((1, "serving", 0), (2, "building", 9000)), listing((1, "serving", 0), (2, "caught up", 3)))
    assert version_caught_up(sensor.execute({}), 2) == (True, "version 2 of job orders_per_minute has caught up (3 records behind)")
    assert fake.argv()[0] == ["versions", "--job", v2_job, "--brokers", "127.0.0.1:9092", "--output", "json"]
    assert len(fake.argv()) == 2


def test_the_caught_up_sensor_defers_to_its_trigger(fake, v2_job, monkeypatch):
    monkeypatch.setenv("SLUICE_BROKERS", "10.0.0.1:9092")
    sensor = SluiceCaughtUpSensor(task_id="w", job=v2_job, lake="/tmp/lake", sluice_bin=str(fake.path), max_lag="100",
                                  deferrable=True, poke_interval=30, timeout=600)
    fake.answer(0, listing((1, "serving", 0), (2, "building", 4000)))
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute({})
    trigger = deferred.value.trigger
    assert isinstance(trigger, SluiceCaughtUpTrigger)
    # The worker's SLUICE_BROKERS goes along explicitly: the triggerer may not have it.
    assert (trigger.version, trigger.max_lag, trigger.brokers, trigger.lake) == (2, 100, "10.0.0.1:9092", "/tmp/lake")
    classpath, kwargs = trigger.serialize()
    assert classpath == "sluice_airflow.triggers.SluiceCaughtUpTrigger"
    fake.answers(listing((2, "building", 4000)), listing((2, "building", 99)))
    event = run_trigger(SluiceCaughtUpTrigger(**{**kwargs, "poll_interval": 0.01}))
    assert event["status"] == "complete" and event["versions"]["versions"][0]["lag"] == 99
    assert fake.argv()[-1] == ["versions", "--job", v2_job, "--lake", "/tmp/lake", "--brokers", "10.0.0.1:9092",
                               "--output", "json"]
    assert sensor.execute_complete({}, event) == event["versions"]
    # A retired version fails without retry, from the trigger as from a poke.
    fake.answer(0, listing((1, "serving", 0), (2, "retired", None)))
    event = run_trigger(SluiceCaughtUpTrigger(**{**kwargs, "poll_interval": 0.01}))
    assert event["status"] == "error" and event["fatal"]
    with pytest.raises(AirflowFailException, match="retired"):
        sensor.execute_complete({}, event)
    with pytest.raises(AirflowFailException, match="retired"):
        sensor.execute({})
    fake.answer(1, stderr="error: connecting to 10.0.0.1:9092\n")
    with pytest.raises(AirflowException, match="connecting") as raised:
        sensor.execute({})
    assert retryable(raised)


# ---------------------------------------------------------------------------------------------
# End to end: a real Airflow and the real binary.


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def airflow_env():
    """The session's Airflow: a migrated SQLite database, the DAGs parsed, and an execution
    API server for `dags test --use-executor` (LocalExecutor workers report through it)."""
    assert os.path.exists(SLUICE), f"no sluice binary at {SLUICE}: build it (cargo build) or set SLUICE_BIN"
    port = free_port()
    env = {**os.environ, "SLUICE_BIN": SLUICE, "SLUICE_JOB": JOB,
           "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/"}
    started = time.monotonic()
    migrate = subprocess.run([AIRFLOW, "db", "migrate"], env=env, capture_output=True, text=True, timeout=120)
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    print(f"\nairflow db migrate: {time.monotonic() - started:.1f}s")
    log = open(pathlib.Path(AIRFLOW_HOME) / "api-server.log", "w")
    server = subprocess.Popen(
        [AIRFLOW, "api-server", "--apps", "execution", "-H", "127.0.0.1", "-p", str(port), "-w", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    env["_SLUICE_API_HEALTH"] = f"http://127.0.0.1:{port}/execution/health"
    try:
        yield env
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


def wait_for_api_server(env, seconds=90):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(env["_SLUICE_API_HEALTH"], timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    log = (pathlib.Path(AIRFLOW_HOME) / "api-server.log").read_text()[-3000:]
    pytest.fail(f"the Airflow API server did not come up in {seconds}s:\n{log}")


def airflow(env, *args, timeout=240):
    started = time.monotonic()
    out = subprocess.run([AIRFLOW, *args], env=env, capture_output=True, text=True, timeout=timeout)
    print(f"airflow {' '.join(args[:3])}: {time.monotonic() - started:.1f}s")
    assert out.returncode == 0, f"airflow {' '.join(args)} failed:\n{out.stdout[-6000:]}\n{out.stderr[-6000:]}"
    return out.stdout


def sluice(lake, *args, ok=(0,)):
    out = subprocess.run([SLUICE, *args], env={**os.environ, "SLUICE_LAKE": str(lake)},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode in ok, f"sluice {' '.join(args)} exited {out.returncode}:\n{out.stderr[-3000:]}"
    return out.stdout


def view_rows(lake):
    rows = [json.loads(line) for line in sluice(lake, "view", "--job", JOB).splitlines() if line.strip()]
    return sorted(rows, key=lambda r: r["window_start"])


def lake_status(lake):
    return json.loads(sluice(lake, "lake", "status", "--job", JOB, "--output", "json"))


def xcoms(dag_id):
    """The return values of the DAG's latest run: {(task_id, map_index): value}."""
    with sqlite3.connect(pathlib.Path(AIRFLOW_HOME) / "airflow.db") as db:
        (run_id,) = db.execute("SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (dag_id,)).fetchone()
        rows = db.execute("SELECT task_id, map_index, value FROM xcom WHERE dag_id = ? AND run_id = ? AND key = 'return_value'",
                          (dag_id, run_id)).fetchall()
    return {(task, index): json.loads(value) for task, index, value in rows}


@pytest.fixture(scope="session")
def events(tmp_path_factory):
    """Orders over three days from 2024-05-01T00:00Z, 0-3 a minute, in the fields of
    jobs/examples/orders_per_minute.toml, event_time as epoch ms. Amounts are multiples of
    0.25, so every sum is exact whatever order the layers add in."""
    rng = random.Random(20240501)
    rows = []
    for minute in range(DAYS * 24 * 60):
        for _ in range(rng.randint(0, 3)):
            t = START + timedelta(minutes=minute, milliseconds=rng.randrange(60_000))
            rows.append({
                "order_id": f"o{len(rows):06d}", "customer_id": f"c{rng.randrange(50):03d}",
                "email": rng.choice([None, f"user{rng.randrange(99)}@example.com"]),
                "region": rng.choice(["eu", "us", "apac"]), "amount": rng.randrange(4, 800) / 4,
                "status": "completed" if rng.random() < 0.8 else "cancelled",
                "event_time": int(t.timestamp() * 1000),
            })
    rng.shuffle(rows)  # the lake does not rely on arrival order
    path = tmp_path_factory.mktemp("events") / "orders.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, rows


def expected_view(rows, start, end):
    """The job's SQL, computed here: completed orders per minute of [start, end)."""
    minutes = defaultdict(list)
    for r in rows:
        t = datetime.fromtimestamp(r["event_time"] / 1000, UTC)
        if r["status"] == "completed" and start <= t < end:
            minutes[t.replace(second=0, microsecond=0)].append(r["amount"])
    return [{"window_start": format_time(m), "window_end": format_time(m + timedelta(minutes=1)),
             "total_orders": len(a), "total_revenue": sum(a), "avg_order_value": sum(a) / len(a)}
            for m, a in sorted(minutes.items())]


@pytest.fixture()
def loaded_lake(tmp_path, events):
    lake = tmp_path / "lake"
    sluice(lake, "lake", "load", "--job", JOB, str(events[0]))
    return lake


def test_the_dags_import_cleanly_with_their_schedules(monkeypatch):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk import CronDataIntervalTimetable

    monkeypatch.setenv("SLUICE_START_DATE", "2024-05-02")
    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    assert set(bag.dag_ids) == {"sluice_backfill", "sluice_backfill_sharded", "sluice_replay"}
    hourly = bag.dags["sluice_backfill"]
    # A data-interval timetable: a trigger timetable would give every run an empty interval.
    assert isinstance(hourly.timetable, CronDataIntervalTimetable) and hourly.timetable.expression == "0 * * * *"
    assert hourly.catchup and hourly.start_date == datetime(2024, 5, 2, tzinfo=UTC)
    assert hourly.default_args["retries"] > 0 and hourly.default_args["retry_exponential_backoff"]
    assert hourly.get_task("wait_for_lake").downstream_task_ids == {"backfill"}
    assert hourly.get_task("wait_for_lake").deferrable
    sharded = bag.dags["sluice_backfill_sharded"]
    assert {"from", "to", "shard", "bucket"} <= set(sharded.params.keys())
    assert sharded.get_task("sharded_backfill.backfill").upstream_task_ids == {
        "sharded_backfill.plan", "sharded_backfill.wait_for_lake"}
    replay = bag.dags["sluice_replay"]
    assert type(replay.timetable).__name__ == "NullTimetable" and not replay.catchup  # triggered by hand only
    assert {"job", "from", "caught_up", "state_dir", "timeout"} <= set(replay.params.keys())
    chain = ["replay", "wait_caught_up", "verify", "switch"]
    for upstream, downstream in zip(chain, chain[1:]):
        assert replay.get_task(upstream).downstream_task_ids == {downstream}
    assert replay.get_task("wait_caught_up").deferrable
    for task_id in ("verify", "switch"):
        task = replay.get_task(task_id)
        assert task.retries > 0 and task.retry_exponential_backoff, task_id


def test_dags_test_sluice_backfill_computes_the_hour_before_the_logical_date(airflow_env, loaded_lake, events):
    env = {**airflow_env, "SLUICE_LAKE": str(loaded_lake)}
    airflow(env, "dags", "test", "sluice_backfill", "2024-05-01T11:00:00+00:00")
    # The manual run's interval is the last whole hour before the logical date (Airflow's
    # CronDataIntervalTimetable.infer_manual_data_interval): [10:00, 11:00).
    start, end = START + timedelta(hours=10), START + timedelta(hours=11)
    want = expected_view(events[1], start, end)
    got = view_rows(loaded_lake)
    assert len(got) == len(want) > 20  # about 70% of minutes hold a completed order
    # Exact, floats included: the amounts are multiples of 0.25, so sums and averages are exact.
    assert [{k: row[k] for k in expected} for row, expected in zip(got, want)] == want
    values = xcoms("sluice_backfill")
    summary = values[("backfill", -1)]
    raw_in_hour = [r for r in events[1] if start <= datetime.fromtimestamp(r["event_time"] / 1000, UTC) < end]
    assert (summary["from"], summary["to"]) == (format_time(start), format_time(end))
    assert summary["rows_read"] == len(raw_in_hour)
    assert summary["view_rows"] == len(want)  # one row per (window, bucket); minute windows sit in one bucket
    assert summary["rows_rejected"] == 0 and summary["clamped_from"] is None
    # The raw table starts at 00:00 and [00:00, 10:00) is not backfilled: the cutoff cannot move
    # over the gap, and the hour waits beyond it.
    assert summary["cutoff_us"] is None
    assert lake_status(loaded_lake)["landed_beyond_cutoff_us"] == [[to_micros(start), to_micros(end)]]
    assert values[("wait_for_lake", -1)]["completeness"] == "unbounded"


def test_a_sharded_run_equals_one_backfill_and_moves_the_cutoff_to_the_end(airflow_env, loaded_lake, tmp_path, events):
    whole = tmp_path / "whole"
    shutil.copytree(loaded_lake, whole)
    one = json.loads(sluice(whole, "backfill", "--job", JOB, "--from", "2024-05-01", "--to", "2024-05-04", "--output", "json"))
    wait_for_api_server(airflow_env)
    env = {**airflow_env, "SLUICE_LAKE": str(loaded_lake)}
    conf = json.dumps({"from": "2024-05-01T00:00:00Z", "to": "2024-05-04T00:00:00Z", "shard": "1d"})
    # With the executor, the mapped shards run as parallel processes and commit concurrently.
    airflow(env, "dags", "test", "--use-executor", "sluice_backfill_sharded", "2024-05-04T00:00:00+00:00", "-c", conf)
    values = xcoms("sluice_backfill_sharded")
    shards = sorted((v["from"], v["to"]) for (task, _), v in values.items() if task == "sharded_backfill.backfill")
    assert shards == [("2024-05-01T00:00:00Z", "2024-05-02T00:00:00Z"), ("2024-05-02T00:00:00Z", "2024-05-03T00:00:00Z"),
                      ("2024-05-03T00:00:00Z", "2024-05-04T00:00:00Z")]
    sharded = view_rows(loaded_lake)
    assert sharded == view_rows(whole)
    want = expected_view(events[1], START, START + timedelta(days=DAYS))
    assert [{k: row[k] for k in expected} for row, expected in zip(sharded, want)] == want
    assert len(sharded) == len(want)
    end_us = us("2024-05-04T00:00:00Z")
    assert lake_status(loaded_lake)["cutoff_us"] == end_us == lake_status(whole)["cutoff_us"]
    summary = values[("sharded_backfill.summary", -1)]
    assert summary["shards"] == 3 and summary["cutoff_us"] == end_us
    assert summary["rows_read"] == one["rows_read"] == len(events[1])


def test_the_cutoff_moves_only_over_contiguous_landed_shards(loaded_lake):
    """Shards landing out of order (as parallel tasks may) never let the cutoff jump a gap."""
    def land(day):
        op = SluiceBackfillOperator(task_id="shard", job=JOB, lake=str(loaded_lake), sluice_bin=SLUICE,
                                    from_time=START + timedelta(days=day), to_time=START + timedelta(days=day + 1))
        op.execute({})
        return lake_status(loaded_lake)["cutoff_us"]

    day = lambda n: to_micros(START + timedelta(days=n))  # noqa: E731
    after_last = land(2)
    assert after_last is None or after_last <= day(0), "the cutoff passed days 0 and 1, which have not landed"
    assert land(0) == day(1)
    assert land(1) == day(3)


def test_the_real_binarys_errors_become_retryable_failures(tmp_path):
    missing = str(tmp_path / "missing.toml")
    with pytest.raises(AirflowException, match="exit 1") as raised:
        SluiceBackfillOperator(task_id="b", job=missing, lake=str(tmp_path), sluice_bin=SLUICE).execute(HOUR)
    assert not isinstance(raised.value, AirflowFailException) and "cannot read job file" in str(raised.value)
    with pytest.raises(AirflowException, match=r"could not run \(exit 2\)") as raised:
        SluiceVerifyOperator(task_id="v", job=missing, brokers="127.0.0.1:9", sluice_bin=SLUICE).execute({})
    assert "cannot read job file" in str(raised.value)


def test_the_sensor_on_a_lake_of_loaded_files_completes_at_once(loaded_lake):
    until = us("2024-06-01T00:00:00Z")  # far past every event: files alone make it complete
    trigger = SluiceLakeCompleteTrigger(job=JOB, lake=str(loaded_lake), until_us=until, sluice_bin=SLUICE, poll_interval=60)
    started = time.monotonic()
    event = run_trigger(trigger, seconds=30)
    assert event["status"] == "complete" and time.monotonic() - started < 30
    answer = event["lake"]
    assert answer["completeness"] == "unbounded" and answer["lake_complete_until_us"] is None
    assert answer["raw_table"].endswith("raw/orders.events") and answer["job"] == "orders_per_minute"
    sensor = SluiceLakeCompleteSensor(task_id="s", job=JOB, lake=str(loaded_lake), sluice_bin=SLUICE,
                                      deferrable=False, until="2024-06-01", timeout=30)
    assert sensor.execute({})["completeness"] == "unbounded"


# ---------------------------------------------------------------------------------------------
# End to end on the real broker: `sluice_replay` promotes a new view version.

BOOTSTRAP = os.environ.get("SLUICE_TEST_BOOTSTRAP")
REGIONS = ["eu", "us", "apac"]
PARTITIONS = 2
ORDERS = 3_000
SPACING_MS = 200  # 3 000 orders over ten minutes of event time: ten one-minute buckets

REPLAY_JOB = '''name = "{name}"

[source]
topic = "{topic}"
table = "orders_kafka"
event_time = "event_time"
watermark_delay = "5s"
allowed_lateness = "1m"
fields = [
  {{ name = "order_id", type = "string", nullable = false }},
  {{ name = "customer_id", type = "string" }},
  {{ name = "email", type = "string" }},
  {{ name = "region", type = "string" }},
  {{ name = "amount", type = "float64" }},
  {{ name = "status", type = "string" }},
  {{ name = "event_time", type = "timestamp" }},
]

[transform]
sql = """
SELECT
TUMBLE_START(event_time, INTERVAL '1' MINUTE) AS window_start,
TUMBLE_END(event_time, INTERVAL '1' MINUTE) AS window_end,
COUNT(*) AS total_orders,
SUM(amount) AS total_revenue,
AVG(amount) AS avg_order_value{extra}
FROM orders_kafka
WHERE status = 'completed'
GROUP BY TUMBLE(event_time, INTERVAL '1' MINUTE)
"""

[view]{version}
key = []
bucket = "1m"
'''


def replay_job(path, name, topic, version):
    """jobs/examples/orders_per_minute.toml's job over `topic` with one-minute buckets; version 2
    adds `[view] version = 2` and one more aggregate column, `biggest`."""
    extra, line = (",\nMAX(amount) AS biggest", "\nversion = 2") if version == 2 else ("", "")
    path.write_text(REPLAY_JOB.format(name=name, topic=topic, extra=extra, version=line))
    return str(path)


def replay_orders():
    """Orders from 2024-05-01T10:00Z, SPACING_MS apart, as (partition, key, value): keyed and
    partitioned by region; then one record per partition ten minutes on (status `push`, which
    the job filters out) that moves every partition's watermark past every window, so the raw
    table is complete past every order."""
    rng = random.Random(20240502)
    t0 = int(datetime(2024, 5, 1, 10, tzinfo=UTC).timestamp() * 1000)
    records, orders = [], []
    for n in range(ORDERS):
        region = rng.choice(REGIONS)
        order = {"order_id": f"r{n:05d}", "customer_id": f"c{rng.randrange(50):03d}", "email": None,
                 "region": region, "amount": rng.randrange(4, 800) / 4,
                 "status": "completed" if rng.random() < 0.8 else "cancelled", "event_time": t0 + n * SPACING_MS}
        orders.append(order)
        records.append((REGIONS.index(region) % PARTITIONS, region.encode(), order))
    push_ms = t0 + ORDERS * SPACING_MS + 600_000
    for p in range(PARTITIONS):
        records.append((p, None, {"order_id": f"push{p}", "region": "eu", "amount": 0, "status": "push",
                                  "event_time": push_ms}))
    return records, orders


def expected_v2(orders):
    """Version 2's view, computed here: per minute, completed orders' count, sum, mean and max."""
    minutes = defaultdict(list)
    for o in orders:
        if o["status"] == "completed":
            t = datetime.fromtimestamp(o["event_time"] / 1000, UTC)
            minutes[t.replace(second=0, microsecond=0)].append(o["amount"])
    return [{"window_start": format_time(m), "window_end": format_time(m + timedelta(minutes=1)),
             "total_orders": len(a), "total_revenue": sum(a), "avg_order_value": sum(a) / len(a), "biggest": max(a)}
            for m, a in sorted(minutes.items())]


def produce(topic, records):
    kafka = pytest.importorskip("confluent_kafka", reason="confluent-kafka is not installed in the Airflow venv: "
                                "source tests/prereqs_airflow.sh")
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    for future in admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)]).values():
        future.result(30)
    producer = kafka.Producer({"bootstrap.servers": BOOTSTRAP, "linger.ms": 5})
    for partition, key, value in records:
        producer.produce(topic, json.dumps(value).encode(), key=key, partition=partition)
    assert producer.flush(30) == 0, "not every record was delivered"


def wait_for(what, check, seconds=60, log=None):
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            tail = pathlib.Path(log).read_text()[-3000:] if log else ""
            pytest.fail(f"timed out after {seconds}s waiting for {what}\n{tail}")
        time.sleep(0.3)


def dag_run_state(dag_id):
    with sqlite3.connect(pathlib.Path(AIRFLOW_HOME) / "airflow.db") as db:
        (state,) = db.execute("SELECT state FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (dag_id,)).fetchone()
    return state


@pytest.mark.skipif(not BOOTSTRAP, reason="needs a Kafka-protocol broker: set SLUICE_TEST_BOOTSTRAP=host:port "
                    "(tests/run.sh starts one; by hand: eval \"$(tests/broker.sh start)\")")
def test_dags_test_sluice_replay_promotes_a_new_version(airflow_env, tmp_path):
    started = time.monotonic()
    ident = os.urandom(4).hex()
    name, topic = f"af_replay_{ident}", f"af-replay-{ident}"
    v1 = replay_job(tmp_path / "v1.toml", name, topic, 1)
    v2 = replay_job(tmp_path / "v2.toml", name, topic, 2)
    lake = tmp_path / "lake"
    records, orders = replay_orders()
    produce(topic, records)

    # Version 1 streams and lands the raw table (its lake sink serves every version).
    log = tmp_path / "stream-v1.log"
    with open(log, "w") as out:
        stream = subprocess.Popen(
            [SLUICE, "stream", "--job", v1, "--brokers", BOOTSTRAP, "--lake", str(lake),
             "--state-dir", str(tmp_path / "state-v1"), "--lake-commit-interval", "1s", "--idle-timeout", "2s"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        per_partition = [sum(1 for p, _, _ in records if p == q) for q in range(PARTITIONS)]

        def landed():
            out = subprocess.run([SLUICE, "lake", "status", "--job", v1, "--lake", str(lake), "--output", "json"],
                                 capture_output=True, text=True, timeout=60)
            if out.returncode != 0:
                return None
            status = json.loads(out.stdout)
            offsets = sorted((p["partition"], p["next_offset"]) for p in status["partitions"])
            return status if offsets == list(enumerate(per_partition)) and status["completeness"] == "until" else None

        wait_for("the raw-lake sink to land every record", landed, log=log)
        report_v1 = json.loads(sluice(lake, "backfill", "--job", v1, "--output", "json"))
        assert report_v1["rows_read"] == ORDERS and report_v1["cutoff_us"] is not None, report_v1
        print(f"stream, produce, land and backfill version 1: {time.monotonic() - started:.1f}s")

        env = {**airflow_env, "SLUICE_LAKE": str(lake), "SLUICE_BROKERS": BOOTSTRAP}
        conf = {"job": v2, "from": "lake", "caught_up": 1000, "state_dir": str(tmp_path / "state-v2"), "timeout": "2m"}
        airflow(env, "dags", "test", "sluice_replay", "-c", json.dumps(conf))
        assert dag_run_state("sluice_replay") == "success"

        values = xcoms("sluice_replay")
        replay = values[("replay", -1)]
        assert (replay["job"], replay["version"], replay["from"], replay["caught_up"]) == (name, 2, "lake", True), replay
        assert replay["group"] == f"sluice-{name}.v2" and replay["lag"] < 1000
        assert replay["backfill"]["rows_read"] == ORDERS and replay["backfill"]["cutoff_us"] == report_v1["cutoff_us"]
        assert replay["seed"]["Seeded"]["partitions"] == PARTITIONS
        caught_up = values[("wait_caught_up", -1)]
        assert version_caught_up(caught_up, 2, 1000)[0], caught_up
        assert values[("verify", -1)]["identical"] is True
        switched = values[("switch", -1)]
        assert (switched["from"], switched["to"], switched["switched"], switched["forced"]) == (1, 2, True, False), switched
        assert switched["verify_identical"] is True and switched["why_refused"] is None

        # The control topic's serving pointer moved: version 2 serves, version 1 (still
        # streaming) has caught up.
        listed = json.loads(sluice(lake, "versions", "--job", v2, "--brokers", BOOTSTRAP, "--output", "json"))
        states = {row["version"]: row["state"] for row in listed["versions"]}
        assert states == {1: "caught up", 2: "serving"}, listed
        fingerprints = {row["version"]: row["fingerprint"] for row in listed["versions"]}
        assert fingerprints[2] == replay["fingerprint"] != fingerprints[1]
        # Version 2's batch view is exact, its new column included.
        rows = sorted((json.loads(line) for line in sluice(lake, "view", "--job", v2).splitlines() if line.strip()),
                      key=lambda r: r["window_start"])
        want = expected_v2(orders)
        assert len(rows) == len(want) == 10
        assert [{k: row[k] for k in expected} for row, expected in zip(rows, want)] == want
    finally:
        stream.send_signal(signal.SIGTERM)
        try:
            code = stream.wait(timeout=30)
        except subprocess.TimeoutExpired:
            stream.kill()
            code = stream.wait()
    assert code == 0, f"sluice stream exited {code}:\n{log.read_text()[-3000:]}"
    print(f"sluice_replay end to end: {time.monotonic() - started:.1f}s")
