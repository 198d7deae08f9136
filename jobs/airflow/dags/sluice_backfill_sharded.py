"""`sluice_backfill_sharded`: recompute a large range in parallel, as bucket-aligned shards
(one mapped `sluice backfill` task each), once the raw table is complete to the range end.

Monthly, it recomputes the month just ended (which also counts events that reached the lake
after the hourly backfill of their hour). Triggered by hand with a conf, it recomputes any
range, e.g. after loading history:

    airflow dags trigger sluice_backfill_sharded -c '{"from": "2024-05-01", "to": "2024-06-01"}'

Params: `from`/`to` (default: the run's data interval), `shard` (default 1d), `bucket`
(default: the job file's `[view] bucket`, itself 1h by default; a value that differs from
the job file's is refused). Job, lake and binary as for `sluice_backfill`.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from airflow.sdk import DAG, CronDataIntervalTimetable, Param

from sluice_airflow import sluice_sharded_backfill
from sluice_airflow.intervals import parse_time
from sluice_airflow.settings import setting_macro

EXAMPLE_JOB = Path(__file__).resolve().parents[2] / "examples" / "orders_per_minute.toml"
DEFAULTS = {"job": str(EXAMPLE_JOB)} if EXAMPLE_JOB.is_file() else {}

with DAG(
    dag_id="sluice_backfill_sharded",
    schedule=CronDataIntervalTimetable("0 0 1 * *", timezone="UTC"),
    start_date=parse_time(os.environ.get("SLUICE_START_DATE", "2024-05-01")),
    # History is what `from`/`to` are for; a deployment starts with the last month only.
    catchup=False,
    max_active_runs=1,
    params={
        "from": Param(None, type=["null", "string"], description="range start (RFC 3339 or date); default: the run's data interval"),
        "to": Param(None, type=["null", "string"], description="range end, exclusive"),
        "shard": Param("1d", type="string", description="shard length, a whole number of buckets"),
        "bucket": Param(None, type=["null", "string"], description="bucket size; default: the job file's"),
    },
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
    sluice_sharded_backfill(
        group_id="sharded_backfill",
        job="{{ sluice_setting('job') }}",
        lake="{{ sluice_setting('lake') }}",
        sluice_bin="{{ sluice_setting('bin') }}",
        start="{{ params['from'] or '' }}",
        end="{{ params['to'] or '' }}",
        shard="{{ params['shard'] }}",
        bucket="{{ params['bucket'] or '' }}",
        sensor_kwargs={"deferrable": True, "poke_interval": 60, "timeout": timedelta(hours=12)},
    )
