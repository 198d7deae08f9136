"""`sluice_backfill`: one backfill per hour of event time, each once the raw table is complete
past the hour's end; catch-up from SLUICE_START_DATE.

Settings (docs/operations.md, "Airflow"), read when a task runs: the job file from the
Variable `sluice_job`, else SLUICE_JOB, else this checkout's
jobs/examples/orders_per_minute.toml; the lake from `sluice_lake`, else SLUICE_LAKE, else
sluice's default ./lake; the binary from `sluice_bin`, else SLUICE_BIN, else `sluice` on
PATH. The first interval starts at SLUICE_START_DATE (default 2024-05-01, UTC), read when the
file is parsed.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from airflow.sdk import DAG, CronDataIntervalTimetable

from sluice_airflow import SluiceBackfillOperator, SluiceLakeCompleteSensor
from sluice_airflow.intervals import parse_time
from sluice_airflow.settings import setting_macro

EXAMPLE_JOB = Path(__file__).resolve().parents[2] / "examples" / "orders_per_minute.toml"
DEFAULTS = {"job": str(EXAMPLE_JOB)} if EXAMPLE_JOB.is_file() else {}

with DAG(
    dag_id="sluice_backfill",
    # A data-interval timetable, not schedule="@hourly": Airflow 3 makes that a trigger
    # timetable, whose runs (and `airflow dags test`) have empty data intervals. This one
    # gives every run, manual ones included, the hour [start, end) it stands for.
    schedule=CronDataIntervalTimetable("0 * * * *", timezone="UTC"),
    start_date=parse_time(os.environ.get("SLUICE_START_DATE", "2024-05-01")),
    catchup=True,
    # Each backfill uses every core (DataFusion); hours are disjoint buckets, so a few may run
    # at once, and the cutoff moves only over contiguous landed hours whatever their order.
    max_active_runs=4,
    default_args={
        "retries": 4,
        "retry_delay": timedelta(minutes=2),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(hours=1),
    },
    user_defined_macros={"sluice_setting": setting_macro(DEFAULTS)},
    tags=["sluice"],
    doc_md=__doc__,
) as dag:
    settings = {
        "job": "{{ sluice_setting('job') }}",
        "lake": "{{ sluice_setting('lake') }}",
        "sluice_bin": "{{ sluice_setting('bin') }}",
    }
    wait_for_lake = SluiceLakeCompleteSensor(
        task_id="wait_for_lake",
        deferrable=True,
        poke_interval=60,
        # A lake sink down for longer than this fails the run (sensor timeouts do not retry);
        # clear it once the sink is back.
        timeout=timedelta(hours=12),
        **settings,
    )
    backfill = SluiceBackfillOperator(task_id="backfill", **settings)
    wait_for_lake >> backfill
