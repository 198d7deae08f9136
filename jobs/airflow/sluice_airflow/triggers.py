"""The triggers behind the sensors: poll a `sluice ... --output json` command in the triggerer
until its answer says done. SluiceLakeCompleteTrigger polls `sluice lake status` until the raw
table is complete past a point in event time; SluiceCaughtUpTrigger polls `sluice versions`
until a view version has caught up.

`lake_complete` and `version_caught_up` are the decisions, kept apart so that each sensor's
poke mode and its trigger decide alike and tests can check them on canned JSON.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Mapping

from airflow.triggers.base import BaseTrigger, TriggerEvent

from sluice_airflow import cli
from sluice_airflow.intervals import format_time, from_micros


class LakeStatusError(Exception):
    """`sluice lake status` failed or printed something other than its documented JSON."""


def lake_complete(status: Mapping[str, Any], until_us: int) -> tuple[bool, str]:
    """Whether the raw table holds every source partition's records before `until_us`
    (µs since the epoch), and why, for the task log.

    `unbounded`: no streaming sink ever wrote the raw table (files loaded whole), so it is
    complete for any range. `nothing`: a partition has not been reported by the sink yet, so
    nothing is complete. `until`: complete before `lake_complete_until_us`.
    """
    target = format_time(from_micros(until_us))
    completeness = status.get("completeness")
    if completeness == "unbounded":
        return True, f"the raw table {status.get('raw_table')} holds loaded files only: complete for any range"
    if completeness == "nothing" and status.get("raw_version") is None:
        return False, (
            f"the raw table {status.get('raw_table')} does not exist yet (nothing has landed; "
            f"check the lake and job if this lasts); waiting for it to be complete until {target}"
        )
    if completeness == "nothing":
        return False, (
            f"the lake sink has not reported every partition of {status.get('raw_table')} yet; "
            f"waiting for it to be complete until {target}"
        )
    if completeness == "until":
        until = status.get("lake_complete_until_us")
        if not isinstance(until, int) or isinstance(until, bool):
            raise LakeStatusError(
                f"sluice lake status says completeness 'until' without an integer "
                f"lake_complete_until_us: {dict(status)!r}"
            )
        shown = status.get("lake_complete_until") or format_time(from_micros(until))
        if until >= until_us:
            return True, f"the raw table is complete until {shown}, at or past {target}"
        return False, f"the raw table is complete until {shown}; waiting for {target}"
    raise LakeStatusError(
        f"sluice lake status printed an unknown completeness {completeness!r} "
        f"(expected unbounded, until or nothing): {dict(status)!r}"
    )


def status_from(result: cli.Result) -> dict:
    """The status JSON of a finished `sluice lake status`, or LakeStatusError."""
    return json_from(result, "sluice lake status", LakeStatusError)


def json_from(result: cli.Result, what: str, error: type[Exception]) -> dict:
    """The JSON answer of a finished `what` (e.g. "sluice versions"), or `error`."""
    if result.returncode != 0:
        raise error(f"{what} failed (exit {result.returncode}):\n{result.error_text()}")
    answer = result.json()
    if answer is None:
        raise error(f"{what} printed no JSON: {result.stdout[-500:]!r}")
    return answer


class VersionsError(Exception):
    """`sluice versions` failed, printed something other than its documented JSON, or says the
    version cannot catch up. `fatal`: waiting longer cannot help (the version is retired or
    unknown), so the sensor fails without retry."""

    def __init__(self, message: str, fatal: bool = False) -> None:
        super().__init__(message)
        self.fatal = fatal


def version_caught_up(listing: Mapping[str, Any], version: int, max_lag: int | None = None) -> tuple[bool, str]:
    """Whether `version` in a `sluice versions --output json` listing has caught up, and why,
    for the task log.

    Without `max_lag`: its state is `caught up` or `serving` (sluice calls a version caught up
    when its speed layer's consumer lag is under 1 000 records). With `max_lag`: it serves, or
    its lag is under `max_lag` records. A retired or unlisted version is a fatal VersionsError.
    """
    rows = listing.get("versions")
    if not isinstance(rows, list):
        raise VersionsError(f"sluice versions printed no versions list: {dict(listing)!r}")
    name = f"version {version} of job {listing.get('job')}"
    row = next((r for r in rows if isinstance(r, Mapping) and r.get("version") == version), None)
    if row is None:
        known = sorted(r.get("version") for r in rows if isinstance(r, Mapping))
        raise VersionsError(
            f"{name} is unknown (sluice versions lists {known}): replay a job file with "
            f"[view] version = {version} first",
            fatal=True,
        )
    state, lag = row.get("state"), row.get("lag")
    if state == "retired":
        raise VersionsError(f"{name} is retired", fatal=True)
    if state not in ("serving", "caught up", "building"):
        raise VersionsError(
            f"sluice versions printed an unknown state {state!r} for {name} (expected serving, "
            f"caught up, building or retired): {dict(row)!r}"
        )
    if lag is not None and (not isinstance(lag, int) or isinstance(lag, bool)):
        raise VersionsError(f"sluice versions printed a lag that is not an integer for {name}: {dict(row)!r}")
    behind = "its speed layer has never committed" if lag is None else f"{lag} records behind"
    if state == "serving":
        return True, f"{name} serves ({behind})"
    if max_lag is None:
        if state == "caught up":
            return True, f"{name} has caught up ({behind})"
        return False, f"{name} is building ({behind}); waiting for it to catch up"
    if lag is not None and lag < max_lag:
        return True, f"{name} is {behind}, under {max_lag}: caught up"
    return False, f"{name}: {behind}; waiting until it is under {max_lag} records behind"


class _PollingTrigger(BaseTrigger):
    """Runs a sluice command every `poll_interval` seconds until `poll_once` says done, then
    fires `{"status": "complete", "reason", <payload_key>: the answer}`; an answer that cannot
    be read, or a failing command, fires `{"status": "error", "message", "fatal"}` instead (the
    sensor then fails, and the task's retries apply unless `fatal`).

    The binary is resolved here, in the triggerer, from `sluice_bin`, else the triggerer's
    `SLUICE_BIN`, else PATH: the triggerer may run on another machine than the worker.
    """

    payload_key = "answer"
    errors: tuple[type[Exception], ...] = ()

    def __init__(self, *, poll_interval: float = 60.0) -> None:
        super().__init__()
        self.poll_interval = poll_interval

    async def poll_once(self) -> tuple[bool, str, dict]:
        raise NotImplementedError

    async def run(self) -> AsyncIterator[TriggerEvent]:
        while True:
            try:
                done, why, answer = await self.poll_once()
            except (*self.errors, cli.SluiceNotFound, cli.NoBrokers, OSError) as error:
                fatal = bool(getattr(error, "fatal", False))
                yield TriggerEvent({"status": "error", "message": str(error), "fatal": fatal})
                return
            if done:
                yield TriggerEvent({"status": "complete", "reason": why, self.payload_key: answer})
                return
            self.log.info("%s", why)
            await asyncio.sleep(self.poll_interval)


class SluiceLakeCompleteTrigger(_PollingTrigger):
    """Fires once the raw table is complete until `until_us` (the event's `lake` is the status
    JSON), or with an error event when `sluice lake status` fails."""

    payload_key = "lake"
    errors = (LakeStatusError,)

    def __init__(
        self,
        *,
        job: str,
        until_us: int,
        lake: str | None = None,
        sluice_bin: str | None = None,
        env: Mapping[str, str] | None = None,
        poll_interval: float = 60.0,
    ) -> None:
        super().__init__(poll_interval=poll_interval)
        self.job = job
        self.until_us = until_us
        self.lake = lake
        self.sluice_bin = sluice_bin
        self.env = dict(env or {})

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "sluice_airflow.triggers.SluiceLakeCompleteTrigger",
            {
                "job": self.job,
                "until_us": self.until_us,
                "lake": self.lake,
                "sluice_bin": self.sluice_bin,
                "env": self.env,
                "poll_interval": self.poll_interval,
            },
        )

    async def poll_once(self) -> tuple[bool, str, dict]:
        binary = cli.resolve_binary(self.sluice_bin)
        command = cli.lake_status_command(binary, self.job, self.lake)
        status = status_from(await cli.run_async(command, env=self.env))
        done, why = lake_complete(status, self.until_us)
        return done, why, status


class SluiceCaughtUpTrigger(_PollingTrigger):
    """Fires once `version` of the job has caught up (`version_caught_up`; the event's
    `versions` is the `sluice versions` JSON), or with an error event when the command fails
    or the version is retired or unknown (`fatal`)."""

    payload_key = "versions"
    errors = (VersionsError,)

    def __init__(
        self,
        *,
        job: str,
        version: int,
        max_lag: int | None = None,
        lake: str | None = None,
        brokers: str | None = None,
        sluice_bin: str | None = None,
        env: Mapping[str, str] | None = None,
        properties: Mapping[str, str] | None = None,
        poll_interval: float = 60.0,
    ) -> None:
        super().__init__(poll_interval=poll_interval)
        self.job = job
        self.version = version
        self.max_lag = max_lag
        self.lake = lake
        self.brokers = brokers
        self.sluice_bin = sluice_bin
        self.env = dict(env or {})
        self.properties = dict(properties or {})

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "sluice_airflow.triggers.SluiceCaughtUpTrigger",
            {
                "job": self.job,
                "version": self.version,
                "max_lag": self.max_lag,
                "lake": self.lake,
                "brokers": self.brokers,
                "sluice_bin": self.sluice_bin,
                "env": self.env,
                "properties": self.properties,
                "poll_interval": self.poll_interval,
            },
        )

    async def poll_once(self) -> tuple[bool, str, dict]:
        binary = cli.resolve_binary(self.sluice_bin)
        command = cli.versions_command(binary, self.job, self.lake, self.brokers, self.env, self.properties)
        listing = json_from(await cli.run_async(command, env=self.env), "sluice versions", VersionsError)
        done, why = version_caught_up(listing, self.version, self.max_lag)
        return done, why, listing
