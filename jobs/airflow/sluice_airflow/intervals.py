"""Times, durations and the data interval a task works on.

Times are what `sluice` accepts (RFC 3339, a date, or epoch milliseconds) and are always
handed to it as RFC 3339 UTC, so the command line in the task log says exactly which range ran.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone
from typing import Any, Mapping

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class EmptyInterval(ValueError):
    """The task's data interval is empty or missing, so there is no range to backfill."""


def parse_time(value: Any) -> datetime:
    """A UTC datetime from a datetime (naive = UTC), an int (epoch ms), a string of digits
    (epoch ms), a date (`2024-05-01`, midnight UTC) or an ISO 8601 / RFC 3339 string."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    if isinstance(value, int) and not isinstance(value, bool):
        return EPOCH + timedelta(milliseconds=value)
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"-?\d+", text):
            return EPOCH + timedelta(milliseconds=int(text))
        try:
            # RFC 3339 allows a lowercase `z`, which fromisoformat does not read.
            return parse_time(datetime.fromisoformat(re.sub(r"z$", "Z", text)))
        except ValueError:
            pass
    raise ValueError(f"not a time: {value!r} (expected RFC 3339, a date like 2024-05-01, or epoch ms)")


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC with a `Z`, microseconds only when there are any."""
    value = parse_time(value)
    spec = "%Y-%m-%dT%H:%M:%S.%fZ" if value.microsecond else "%Y-%m-%dT%H:%M:%SZ"
    return value.strftime(spec)


def to_micros(value: datetime) -> int:
    """Microseconds since the epoch, the unit of every `*_us` field sluice prints."""
    delta = parse_time(value) - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


# humantime's units as job files use them (docs/jobs.md), plus their long spellings.
_UNITS = {
    "ms": timedelta(milliseconds=1), "msec": timedelta(milliseconds=1),
    "s": timedelta(seconds=1), "sec": timedelta(seconds=1), "secs": timedelta(seconds=1),
    "second": timedelta(seconds=1), "seconds": timedelta(seconds=1),
    "m": timedelta(minutes=1), "min": timedelta(minutes=1), "mins": timedelta(minutes=1),
    "minute": timedelta(minutes=1), "minutes": timedelta(minutes=1),
    "h": timedelta(hours=1), "hr": timedelta(hours=1), "hrs": timedelta(hours=1),
    "hour": timedelta(hours=1), "hours": timedelta(hours=1),
    "d": timedelta(days=1), "day": timedelta(days=1), "days": timedelta(days=1),
    "w": timedelta(weeks=1), "week": timedelta(weeks=1), "weeks": timedelta(weeks=1),
}


def parse_duration(value: Any) -> timedelta:
    """A timedelta from a timedelta, seconds, or a humantime string (`1h`, `1d`, `1h 30m`)."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if isinstance(value, str):
        terms = re.findall(r"(\d+)\s*([a-zA-Z]+)", value)
        if terms and re.fullmatch(r"(\s*\d+\s*[a-zA-Z]+)+\s*", value):
            total = timedelta()
            for amount, unit in terms:
                if unit.lower() not in _UNITS:
                    break
                total += int(amount) * _UNITS[unit.lower()]
            else:
                return total
    raise ValueError(f"not a duration: {value!r} (expected e.g. 1h, 1d, 90m or 1h 30m)")


def interval_from_context(
    context: Mapping[str, Any], from_time: Any = None, to_time: Any = None
) -> tuple[datetime, datetime]:
    """The range a task works on: `from_time`/`to_time` when given (shards, ad-hoc runs), else
    the run's data interval.

    A run with an empty interval (start == end) gets no backfill. Airflow 3 gives one to every
    run of a DAG whose timetable is a trigger (`schedule="@hourly"` is a CronTriggerTimetable
    unless `[scheduler] create_cron_data_intervals` is on), and to `airflow dags test` of such a
    DAG: the timetable has no interval to infer one from, so refusing is the only safe answer.
    The bundled DAGs use CronDataIntervalTimetable, whose manual runs (and `dags test`) get the
    last whole interval before the logical date from Airflow itself
    (`infer_manual_data_interval`).
    """
    start = from_time if from_time not in (None, "") else context.get("data_interval_start")
    end = to_time if to_time not in (None, "") else context.get("data_interval_end")
    if start is None or end is None:
        raise EmptyInterval(
            "this run has no data interval (e.g. an asset-triggered run): pass from_time and "
            "to_time to the operator"
        )
    start, end = parse_time(start), parse_time(end)
    if end <= start:
        raise EmptyInterval(
            f"the range [{format_time(start)}, {format_time(end)}) is empty. A DAG scheduled by a "
            "trigger timetable (Airflow 3's default for schedule='@hourly' and cron strings) gives "
            "its runs, and `airflow dags test`, an empty data interval: schedule the DAG with "
            "CronDataIntervalTimetable / DeltaDataIntervalTimetable (or CronTriggerTimetable with "
            "interval=), or pass from_time and to_time"
        )
    return start, end
