"""Sensors that wait for sluice to say something is ready, each deferrable to a trigger in
`sluice_airflow.triggers`:

- SluiceLakeCompleteSensor waits until the raw table holds every source partition's records up
  to the end of the task's interval, so the backfill after it is not clamped (exit 4 or a
  partial range) and the cutoff it moves never passes records still on their way to the lake;
- SluiceCaughtUpSensor waits until a view version has caught up (`sluice versions`), so the
  switch after it is not refused for lag.
"""

from __future__ import annotations

import os
import tomllib
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from airflow.sdk import BaseSensorOperator, PokeReturnValue, conf
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from sluice_airflow import cli
from sluice_airflow.intervals import format_time, from_micros, parse_time, to_micros
from sluice_airflow.triggers import (
    LakeStatusError,
    SluiceCaughtUpTrigger,
    SluiceLakeCompleteTrigger,
    VersionsError,
    json_from,
    lake_complete,
    status_from,
    version_caught_up,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

    from sluice_airflow.triggers import _PollingTrigger


class _SluiceSensor(BaseSensorOperator):
    """What the Sluice sensors share: the job, the lake, the binary, extra environment, and
    deferring to a trigger after one check on the worker.

    Deferrable (the default follows Airflow's `[operators] default_deferrable`): the first check
    runs on the worker; while the answer is "not yet", the task waits in the triggerer, which
    polls every `poke_interval` seconds. With `deferrable=False` it is an ordinary
    poke/reschedule sensor. A failing command fails the task (its retries apply).
    """

    # The key of the trigger's event that holds the command's answer (the task's XCom value).
    trigger_payload_key = "answer"

    def __init__(
        self,
        *,
        job: str | None = None,
        lake: str | None = None,
        sluice_bin: str | None = None,
        env: Mapping[str, str] | None = None,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poke_interval: float | timedelta = 60,
        **kwargs: Any,
    ) -> None:
        super().__init__(poke_interval=poke_interval, **kwargs)
        self.job = job
        self.lake = lake
        self.sluice_bin = sluice_bin
        self.env = env
        self.deferrable = deferrable

    def _job(self) -> str:
        job = self.job or os.environ.get("SLUICE_JOB")
        if not job:
            raise AirflowFailException(f"{self.task_id}: no job file: pass job= or set SLUICE_JOB")
        return job

    def _binary(self) -> str:
        try:
            return cli.resolve_binary(self.sluice_bin)
        except cli.SluiceNotFound as error:
            raise AirflowFailException(str(error)) from error

    def check(self, context: Context) -> tuple[bool, str, dict]:
        """One check on the worker: (done, why, the command's JSON answer)."""
        raise NotImplementedError

    def trigger(self, context: Context) -> _PollingTrigger:
        raise NotImplementedError

    def poke(self, context: Context) -> PokeReturnValue:
        done, why, answer = self.check(context)
        self.log.info("%s", why)
        return PokeReturnValue(is_done=done, xcom_value=answer if done else None)

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        # One check on the worker first: what is ready already needs no triggerer.
        first = self.poke(context)
        if first.is_done:
            return first.xcom_value
        self.defer(
            trigger=self.trigger(context),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout),
        )

    def execute_complete(self, context: Context, event: Mapping[str, Any] | None = None) -> Any:
        if not event or event.get("status") != "complete":
            message = (event or {}).get("message", "the trigger ended without an event")
            if (event or {}).get("fatal"):
                raise AirflowFailException(f"{self.task_id}: {message}")
            raise AirflowException(f"{self.task_id}: {message}")
        self.log.info("%s", event.get("reason"))
        return event.get(self.trigger_payload_key)


class SluiceLakeCompleteSensor(_SluiceSensor):
    """Done when `sluice lake status` says the raw table is complete until `until` (default:
    the run's `data_interval_end`): completeness `unbounded` (no streaming sink ever wrote it),
    or `lake_complete_until_us` at or past it. Returns (pushes to XCom) the status JSON.

    Deferrable (`SluiceLakeCompleteTrigger`), or a poke sensor with `deferrable=False`.

    Keep intervals bucket-aligned (the bundled DAGs are): a backfill clamps its end to the
    bucket floor of `lake_complete_until`, so complete past an aligned end means unclamped.

    :param job: the job file; default `SLUICE_JOB`.
    :param lake: the lake root; default: sluice's own (`SLUICE_LAKE`, else `./lake`).
    :param sluice_bin: the binary; default `SLUICE_BIN`, else `sluice` on PATH.
    :param until: the event time to wait for (RFC 3339, date, epoch ms, datetime).
    :param env: extra environment for the command.
    """

    template_fields: Sequence[str] = ("job", "lake", "sluice_bin", "until", "env")
    ui_color = "#f5ecc9"
    trigger_payload_key = "lake"

    def __init__(self, *, until: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.until = until

    def _until_us(self, context: Context) -> int:
        value = self.until if self.until not in (None, "") else context.get("data_interval_end")
        if value is None:
            raise AirflowFailException(f"{self.task_id}: no interval end to wait for: pass until=")
        try:
            return to_micros(parse_time(value))
        except ValueError as error:
            raise AirflowFailException(f"{self.task_id}: until: {error}") from error

    def check(self, context: Context) -> tuple[bool, str, dict]:
        until_us = self._until_us(context)
        command = cli.lake_status_command(self._binary(), self._job(), self.lake)
        try:
            status = status_from(cli.run(command, env=self.env, log=self.log))
            done, why = lake_complete(status, until_us)
        except LakeStatusError as error:
            raise AirflowException(str(error)) from error
        return done, why, status

    def trigger(self, context: Context) -> SluiceLakeCompleteTrigger:
        until_us = self._until_us(context)
        self.log.info("deferring until the raw table is complete until %s", format_time(from_micros(until_us)))
        return SluiceLakeCompleteTrigger(
            job=self._job(),
            until_us=until_us,
            lake=self.lake or None,
            sluice_bin=self.sluice_bin or None,
            env=dict(self.env or {}),
            poll_interval=self.poke_interval,
        )


def job_version(job: str) -> int:
    """The view version a job file names (`[view] version`, default 1)."""
    try:
        with open(job, "rb") as file:
            spec = tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ValueError(f"cannot read the view version from the job file {job}: {error}") from error
    version = spec.get("view", {}).get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"the job file {job} has [view] version = {version!r}, not a positive integer")
    return version


class SluiceCaughtUpSensor(_SluiceSensor):
    """Done when `sluice versions --output json` says the view version has caught up: its state
    is `caught up` or `serving`, or, with `max_lag`, it serves or its consumer lag is under
    `max_lag` records. Returns (pushes to XCom) the versions JSON.

    `sluice replay` itself exits only once caught up; this sensor is for a version whose
    `sluice stream` carries on after the replay (and may fall behind while it restores), before
    a switch, which refuses a version that lags. A retired or unknown version fails the task
    without retry; a failing `sluice versions` fails it for a retry.

    Deferrable (`SluiceCaughtUpTrigger`), or a poke sensor with `deferrable=False`.

    :param job: the job file of the version; default `SLUICE_JOB`.
    :param version: the version to wait for; default the one the job file names
        (`[view] version`, default 1).
    :param max_lag: caught up means a lag under this many records (templated; sluice's own
        `caught up` state means under 1 000).
    :param brokers: Kafka bootstrap servers; default `SLUICE_BROKERS`.
    :param lake: the lake root; default: sluice's own (`SLUICE_LAKE`, else `./lake`).
    :param sluice_bin: the binary; default `SLUICE_BIN`, else `sluice` on PATH.
    :param properties: extra librdkafka properties, passed as `-X key=value`.
    :param env: extra environment for the command.
    """

    template_fields: Sequence[str] = ("job", "lake", "sluice_bin", "brokers", "version", "max_lag", "env")
    ui_color = "#e4c9f5"
    trigger_payload_key = "versions"

    def __init__(
        self,
        *,
        version: int | str | None = None,
        max_lag: int | str | None = None,
        brokers: str | None = None,
        properties: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.version = version
        self.max_lag = max_lag
        self.brokers = brokers
        self.properties = dict(properties or {})

    def _version(self) -> int:
        try:
            if self.version in (None, ""):
                return job_version(self._job())
            return int(self.version)
        except ValueError as error:
            raise AirflowFailException(f"{self.task_id}: version: {error}") from error

    def _max_lag(self) -> int | None:
        if self.max_lag in (None, ""):
            return None
        try:
            return int(self.max_lag)
        except ValueError as error:
            raise AirflowFailException(f"{self.task_id}: max_lag {self.max_lag!r} is not a number") from error

    def _command(self) -> list[str]:
        try:
            return cli.versions_command(
                self._binary(), self._job(), self.lake, self.brokers, self.env, self.properties
            )
        except cli.NoBrokers as error:
            raise AirflowFailException(f"{self.task_id}: {error}") from error

    def check(self, context: Context) -> tuple[bool, str, dict]:
        version, max_lag = self._version(), self._max_lag()
        try:
            result = cli.run(self._command(), env=self.env, log=self.log)
            listing = json_from(result, "sluice versions", VersionsError)
            done, why = version_caught_up(listing, version, max_lag)
        except VersionsError as error:
            if error.fatal:
                raise AirflowFailException(f"{self.task_id}: {error}") from error
            raise AirflowException(str(error)) from error
        return done, why, listing

    def trigger(self, context: Context) -> SluiceCaughtUpTrigger:
        version = self._version()
        self.log.info("deferring until version %s has caught up", version)
        return SluiceCaughtUpTrigger(
            job=self._job(),
            version=version,
            max_lag=self._max_lag(),
            lake=self.lake or None,
            # The worker's SLUICE_BROKERS, explicitly: the triggerer may not have it.
            brokers=self.brokers or (self.env or {}).get("SLUICE_BROKERS") or os.environ.get("SLUICE_BROKERS") or None,
            sluice_bin=self.sluice_bin or None,
            env=dict(self.env or {}),
            properties=self.properties,
            poll_interval=self.poke_interval,
        )
