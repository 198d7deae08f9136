"""Sharded backfills: a large range split into bucket-aligned shards, each one
`sluice backfill --from --to` run as a dynamically mapped task, so Airflow's workers run them
in parallel.

Shards must be bucket-aligned: a backfill widens its range to whole buckets and replaces
those buckets, so two shards that shared a bucket would both replace it. With aligned shards
the replaced buckets are disjoint, and sluice commits disjoint backfills concurrently (a
commit that meets another retries). The cutoff moves only over contiguous landed shards, so
it reaches the range end once every shard has landed, whatever order they landed in.
"""

from __future__ import annotations

import logging
import os
import tomllib
from datetime import datetime, timedelta
from typing import Any, Mapping

from airflow.sdk import TaskGroup, conf, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from sluice_airflow import cli
from sluice_airflow.intervals import (
    format_time,
    from_micros,
    interval_from_context,
    parse_duration,
    parse_time,
    to_micros,
)
from sluice_airflow.operators import SluiceBackfillOperator
from sluice_airflow.sensors import SluiceLakeCompleteSensor
from sluice_airflow.triggers import status_from

# A job file without `[view] bucket` has one-hour buckets (docs/jobs.md).
DEFAULT_BUCKET = "1h"
# One day per shard unless told otherwise: 24 one-hour buckets, small enough to retry cheaply.
DEFAULT_SHARD = "1d"


def job_bucket(job: str) -> timedelta:
    """The bucket size a job file declares (`[view] bucket`, default 1h)."""
    try:
        with open(job, "rb") as file:
            spec = tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ValueError(f"cannot read the bucket size from the job file {job}: {error}") from error
    return parse_duration(spec.get("view", {}).get("bucket", DEFAULT_BUCKET))


def shard_ranges(
    start: datetime, end: datetime, shard: timedelta, bucket: timedelta
) -> list[tuple[datetime, datetime]]:
    """`[start, end)` widened to whole buckets and cut at multiples of `shard` since the epoch
    (1d shards are calendar days in UTC); the first and last shard may be shorter.

    Buckets are aligned to the epoch, as sluice aligns them, and `shard` must be a whole number
    of buckets, so every cut is a bucket boundary."""
    bucket_us, shard_us = bucket // timedelta(microseconds=1), shard // timedelta(microseconds=1)
    if bucket_us <= 0 or shard_us <= 0:
        raise ValueError(f"shard ({shard}) and bucket ({bucket}) must be positive")
    if shard_us % bucket_us:
        raise ValueError(
            f"the shard length {shard} is not a whole number of buckets of {bucket}: shards would "
            "share buckets, and two backfills would replace the same bucket"
        )
    lo = to_micros(start) // bucket_us * bucket_us
    hi = -(-to_micros(end) // bucket_us) * bucket_us
    if hi <= lo:
        raise ValueError(f"the range [{format_time(start)}, {format_time(end)}) is empty")
    cuts = [lo]
    next_cut = (lo // shard_us + 1) * shard_us
    while next_cut < hi:
        cuts.append(next_cut)
        next_cut += shard_us
    cuts.append(hi)
    return [(from_micros(a), from_micros(b)) for a, b in zip(cuts, cuts[1:])]


def plan(job: str, start: Any, end: Any, shard: Any = None, bucket: Any = None) -> list[dict]:
    """The shards of `[start, end)` (widened to whole buckets), as `expand_kwargs` input for
    SluiceBackfillOperator: `[{"from_time": ..., "to_time": ...}, ...]` in time order.
    `bucket` defaults to the job file's; `shard` to one day."""
    if bucket:
        bucket_size = parse_duration(bucket)
        # A bucket that differs from the job's would cut shards inside the job's buckets.
        if os.path.isfile(job) and job_bucket(job) != bucket_size:
            raise ValueError(
                f"bucket {bucket!r} differs from the job file's [view] bucket "
                f"({job_bucket(job)}): leave bucket unset to take the job's"
            )
    else:
        bucket_size = job_bucket(job)
    shards = shard_ranges(parse_time(start), parse_time(end), parse_duration(shard or DEFAULT_SHARD), bucket_size)
    limit = conf.getint("core", "max_map_length", fallback=1024)
    if len(shards) > limit:
        raise ValueError(
            f"{len(shards)} shards exceed Airflow's [core] max_map_length ({limit}): use longer shards"
        )
    return [{"from_time": format_time(a), "to_time": format_time(b)} for a, b in shards]


def summarize(reports: list[Mapping[str, Any]], status: Mapping[str, Any], to: str, log: Any) -> dict:
    """Totals over the shards' backfill reports and the cutoff after them; warns when the cutoff
    has not reached the range end (a gap before the range, not backfilled)."""
    summary = {
        "job": status.get("job"),
        "view_table": status.get("view_table"),
        "to": to,
        "shards": len(reports),
        "rows_read": sum(r.get("rows_read") or 0 for r in reports),
        "view_rows": sum(r.get("view_rows") or 0 for r in reports),
        "rows_rejected": sum(r.get("rows_rejected") or 0 for r in reports),
        "cutoff": status.get("cutoff"),
        "cutoff_us": status.get("cutoff_us"),
        "lake_complete_until": status.get("lake_complete_until"),
        "landed_beyond_cutoff_us": status.get("landed_beyond_cutoff_us") or [],
    }
    cutoff_us = status.get("cutoff_us")
    if cutoff_us is None or cutoff_us < to_micros(parse_time(to)):
        log.warning(
            "every shard landed but the cutoff is %s, before the range end %s: the view has a "
            "gap before the range that no backfill has covered yet (ranges landed beyond the "
            "cutoff, in µs: %s); backfill the gap to move the cutoff",
            status.get("cutoff") or "-", to, summary["landed_beyond_cutoff_us"] or "-",
        )
    return summary


def sluice_sharded_backfill(
    *,
    group_id: str = "sharded_backfill",
    job: str,
    lake: str | None = None,
    sluice_bin: str | None = None,
    env: Mapping[str, str] | None = None,
    start: str | None = None,
    end: str | None = None,
    shard: str | None = None,
    bucket: str | None = None,
    sensor_kwargs: Mapping[str, Any] | None = None,
    backfill_kwargs: Mapping[str, Any] | None = None,
) -> TaskGroup:
    """A task group: plan the shards → wait until the lake is complete to the range end →
    one mapped SluiceBackfillOperator per shard → a summary (totals and the final cutoff).

    `start`/`end` (templated; default the run's data interval), `shard` (default 1d) and
    `bucket` (default the job file's `[view] bucket`) may be templates such as
    `"{{ params.shard }}"`. Call it inside a DAG.
    """
    with TaskGroup(group_id=group_id) as group:

        @task(task_id="plan")
        def plan_task(job: str, start: str | None, end: str | None, shard: str | None, bucket: str | None) -> list:
            job = job or os.environ.get("SLUICE_JOB") or ""
            if not job:
                raise AirflowFailException("no job file: pass job= or set SLUICE_JOB")
            try:
                start, end = interval_from_context(get_current_context(), start, end)
                shards = plan(job, start, end, shard, bucket)
            except ValueError as error:
                raise AirflowFailException(str(error)) from error
            logging.getLogger(__name__).info(
                "%d shards from %s to %s", len(shards), shards[0]["from_time"], shards[-1]["to_time"]
            )
            return shards

        shards = plan_task(job, start, end, shard, bucket)
        # Mapping needs the plan's return value itself, so the range end is read from it.
        range_end = f"{{{{ ti.xcom_pull(task_ids='{shards.operator.task_id}')[-1]['to_time'] }}}}"
        wait = SluiceLakeCompleteSensor(
            task_id="wait_for_lake", job=job, lake=lake, sluice_bin=sluice_bin, env=env,
            until=range_end, **dict(sensor_kwargs or {}),
        )
        backfills = SluiceBackfillOperator.partial(
            task_id="backfill", job=job, lake=lake, sluice_bin=sluice_bin, env=env,
            **dict(backfill_kwargs or {}),
        ).expand_kwargs(shards)
        shards >> wait >> backfills

        @task(task_id="summary", multiple_outputs=False)
        def summary_task(reports: list, shards: list, job: str, lake: str | None, sluice_bin: str | None) -> dict:
            job = job or os.environ.get("SLUICE_JOB") or ""
            command = cli.lake_status_command(cli.resolve_binary(sluice_bin), job, lake or None)
            log = logging.getLogger(__name__)
            status = status_from(cli.run(command, env=env, log=log))
            # By index: iterating a lazy XCom sequence probes past its end, which logs an error.
            return summarize([reports[i] for i in range(len(reports))], status, shards[-1]["to_time"], log)

        summary_task(backfills.output, shards, job, lake, sluice_bin)
    return group
