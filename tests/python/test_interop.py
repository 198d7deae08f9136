"""Interop: tables written by `sluice` are readable by the official Python `deltalake` package,
with the layout docs/jobs.md describes and the cutoff in commit metadata."""
import json
import os
import pathlib
import subprocess

import pytest
from deltalake import DeltaTable

REPO = pathlib.Path(__file__).resolve().parents[2]
SLUICE = os.environ.get("SLUICE_BIN") or str(
    pathlib.Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "debug" / "sluice")
JOB = str(REPO / "jobs/examples/orders_per_minute.toml")
INPUT = str(REPO / "tests/golden/orders.input.jsonl")


def sluice(lake, *args):
    out = subprocess.run([SLUICE, *args], env={**os.environ, "SLUICE_LAKE": str(lake)},
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture()
def lake(tmp_path):
    sluice(tmp_path, "lake", "load", "--job", JOB, INPUT)
    sluice(tmp_path, "backfill", "--job", JOB, "--from", "2024-05-01", "--to", "2024-05-02")
    return tmp_path


def test_raw_table_holds_every_loaded_record(lake):
    raw = DeltaTable(str(lake / "raw" / "orders.events")).to_pyarrow_table()
    assert raw.num_rows == 60
    assert "__source_offset" in raw.column_names
    assert str(raw.schema.field("event_time").type) == "timestamp[us, tz=UTC]"


def test_view_table_matches_the_golden_view_and_carries_the_cutoff(lake):
    table = DeltaTable(str(lake / "views" / "orders_per_minute"))
    rows = sorted(table.to_pyarrow_table().to_pylist(), key=lambda r: r["window_start"])
    expected = [json.loads(l) for l in (REPO / "tests/golden/orders_per_minute.expected.jsonl").read_text().splitlines()]
    assert len(rows) == len(expected)
    for row, want in zip(rows, expected):
        assert row["window_start"].strftime("%Y-%m-%dT%H:%M:%SZ") == want["window_start"]
        assert row["total_orders"] == want["total_orders"]
        assert row["total_revenue"] == want["total_revenue"]
        assert row["avg_order_value"] == want["avg_order_value"]
        assert row["__bucket"] is not None and row["__state_0_0"] is not None
    history = table.history()
    cutoffs = [h.get("sluice.cutoff_us") for h in history if h.get("sluice.cutoff_us") is not None]
    assert cutoffs and cutoffs[0] == 1714608000000000


def test_backfill_twice_leaves_identical_contents(lake):
    path = str(lake / "views" / "orders_per_minute")
    before = DeltaTable(path).to_pyarrow_table().sort_by("__window_start").to_pylist()
    version = DeltaTable(path).version()
    sluice(lake, "backfill", "--job", JOB, "--from", "2024-05-01", "--to", "2024-05-02")
    table = DeltaTable(path)
    assert table.version() == version + 1
    assert table.to_pyarrow_table().sort_by("__window_start").to_pylist() == before
