"""Operators that run `sluice backfill` and `sluice verify` and turn their exit codes into task
states a scheduler can act on (docs/operations.md, "Exit codes"). The operators for
`sluice replay` and `sluice switch` are in `sluice_airflow.versions`.
"""

from __future__ import annotations

import os
import subprocess
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from sluice_airflow import cli
from sluice_airflow.intervals import EmptyInterval, format_time, interval_from_context, parse_time, to_micros

if TYPE_CHECKING:
    from airflow.sdk import Context


def _micros(value: Any) -> int | None:
    try:
        return to_micros(parse_time(value)) if value else None
    except ValueError:
        return None


class _SluiceCommand(BaseOperator):
    """What every Sluice operator shares: the binary, the job, the lake, extra environment, and
    stopping the child when Airflow kills the task."""

    def __init__(
        self,
        *,
        job: str | None = None,
        lake: str | None = None,
        sluice_bin: str | None = None,
        env: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.job = job
        self.lake = lake
        self.sluice_bin = sluice_bin
        self.env = env
        self._process: subprocess.Popen | None = None

    def _job(self) -> str:
        # Empty counts as unset: a template like "{{ var.value.get('sluice_job', '') }}" renders
        # to "" when the Variable is missing.
        job = self.job or os.environ.get("SLUICE_JOB")
        if not job:
            raise AirflowFailException(f"{self.task_id}: no job file: pass job= or set SLUICE_JOB")
        return job

    def _binary(self) -> str:
        try:
            return cli.resolve_binary(self.sluice_bin)
        except cli.SluiceNotFound as error:
            # Retrying cannot make a missing binary appear: fail at once, saying where to look.
            raise AirflowFailException(str(error)) from error

    def _run(self, command: Sequence[str]) -> cli.Result:
        def remember(process: subprocess.Popen) -> None:
            self._process = process

        try:
            return cli.run(command, env=self.env, log=self.log, on_start=remember)
        finally:
            self._process = None

    def on_kill(self) -> None:
        # A killed task must not leave its command running behind it. sluice stops cleanly on
        # SIGTERM: a backfill's commit is atomic, so stopping mid-way leaves the view table as it
        # was, and a stopped replay continues where it was on its next run.
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()


class _SluiceKafkaCommand(_SluiceCommand):
    """A Sluice operator whose command talks to Kafka: `brokers` and extra librdkafka
    `properties` besides what every operator takes."""

    def __init__(
        self,
        *,
        brokers: str | None = None,
        properties: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.brokers = brokers
        self.properties = dict(properties or {})

    def _broker_args(self) -> list[str]:
        try:
            return cli.broker_args(self.brokers, self.env)
        except cli.NoBrokers as error:
            # No retry can make brokers appear: fail at once, saying where to set them.
            raise AirflowFailException(f"{self.task_id}: {error}") from error

    def _property_args(self) -> list[str]:
        return cli.property_args(self.properties)


class SluiceBackfillOperator(_SluiceCommand):
    """Recomputes the batch view for the task's data interval (or `from_time`/`to_time`) with
    `sluice backfill --output json`, and returns (pushes to XCom) its JSON summary.

    Exit codes: 0 success; 3 success, but raw rows the plan failed on were skipped (a warning
    with `rows_rejected`); 4 nothing of the range is complete in the raw table yet: a retryable
    failure, or a skip with `skip_on_incomplete=True`; 2 usage error: failure without retry;
    anything else: a retryable failure. stderr goes to the task log as it comes.

    :param job: the job file (TOML); default `SLUICE_JOB`.
    :param lake: the lake root; default: sluice's own (`SLUICE_LAKE`, else `./lake`).
    :param sluice_bin: the binary; default `SLUICE_BIN`, else `sluice` on PATH.
    :param from_time: range start instead of `data_interval_start` (RFC 3339, date, epoch ms).
    :param to_time: range end instead of `data_interval_end`.
    :param skip_on_incomplete: exit 4 skips the task instead of failing it for a retry.
    :param accept_clamped: a range that sluice clamped to `lake_complete_until` (it backfilled
        only its beginning) succeeds. Off by default: the task stands for its whole range, so a
        partial backfill fails for a retry, which covers the rest once the lake has it.
    :param allow_incomplete: pass `--allow-incomplete` (the cutoff may then pass records still
        on their way to the lake; sluice warns).
    :param rejects_path: pass `--rejects FILE` (the skipped rows as JSON lines).
    :param env: extra environment for the command (e.g. `AWS_*` for an S3 lake).
    """

    template_fields: Sequence[str] = (
        "job", "lake", "sluice_bin", "from_time", "to_time", "rejects_path", "env",
    )
    ui_color = "#c9e4f5"

    def __init__(
        self,
        *,
        from_time: Any = None,
        to_time: Any = None,
        skip_on_incomplete: bool = False,
        accept_clamped: bool = False,
        allow_incomplete: bool = False,
        rejects_path: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.from_time = from_time
        self.to_time = to_time
        self.skip_on_incomplete = skip_on_incomplete
        self.accept_clamped = accept_clamped
        self.allow_incomplete = allow_incomplete
        self.rejects_path = rejects_path

    def command(self, context: Context) -> list[str]:
        try:
            start, end = interval_from_context(context, self.from_time, self.to_time)
        except (EmptyInterval, ValueError) as error:
            # The same run would get the same interval again: retrying cannot help.
            raise AirflowFailException(f"{self.task_id}: {error}") from error
        command = [
            self._binary(), "backfill", *cli.lake_args(self._job(), self.lake),
            "--from", format_time(start), "--to", format_time(end), "--output", "json",
        ]
        if self.allow_incomplete:
            command.append("--allow-incomplete")
        if self.rejects_path:
            command += ["--rejects", self.rejects_path]
        return command

    def execute(self, context: Context) -> dict:
        return self.outcome(self._run(self.command(context)))

    def outcome(self, result: cli.Result) -> dict:
        """The task state for a finished `sluice backfill`: its summary, or an exception."""
        code = result.returncode
        if code in (cli.EXIT_OK, cli.EXIT_PARTIAL):
            report = result.json()
            if report is None:
                raise AirflowException(
                    f"sluice backfill exited {code} but printed no JSON summary on stdout: "
                    f"{result.stdout[-500:]!r}"
                )
            self.log.info(
                "backfill %s: [%s .. %s) read %s raw rows, wrote %s view rows (table version %s), "
                "cutoff %s, lake complete until %s, in %.2fs",
                report.get("job"), report.get("from"), report.get("to"), report.get("rows_read"),
                report.get("view_rows"), report.get("table_version"), report.get("cutoff"),
                report.get("lake_complete_until") or "-", report.get("seconds") or 0.0,
            )
            if code == cli.EXIT_PARTIAL or report.get("rows_rejected"):
                self.log.warning(
                    "backfill skipped %s raw rows the plan failed on (the speed layer "
                    "dead-letters the same records); rejects_path= writes them to a file",
                    report.get("rows_rejected"),
                )
            if report.get("incomplete"):
                self.log.warning(
                    "--allow-incomplete: the range reaches past lake_complete_until %s; the "
                    "merged view misses records still on their way to the lake until a later "
                    "backfill", report.get("lake_complete_until") or "-",
                )
            cutoff_us, to_us = report.get("cutoff_us"), _micros(report.get("to"))
            if to_us is not None and (cutoff_us is None or cutoff_us < to_us):
                # Normal while earlier intervals are still running; otherwise the view has a gap
                # (e.g. the raw table starts before the DAG's start date) to backfill once.
                self.log.warning(
                    "the cutoff stays at %s, before this range's end: the batch view has a gap "
                    "before %s; the cutoff moves over this range once the gap is backfilled",
                    report.get("cutoff") or "none", report.get("from"),
                )
            if report.get("clamped_from") and not self.accept_clamped:
                raise AirflowException(
                    f"backfilled only [{report.get('from')} .. {report.get('to')}) of the range "
                    f"ending {report['clamped_from']}: the raw table is complete only until "
                    f"{report.get('lake_complete_until') or '-'}; a retry covers the rest once "
                    "the lake sink has landed it (accept_clamped=True accepts a partial range)"
                )
            return report
        if code == cli.EXIT_INCOMPLETE:
            report = result.json() or {}
            message = (
                f"nothing of [{report.get('from', '?')} .. {report.get('to', '?')}) is complete in "
                f"the raw table yet (lake_complete_until {report.get('lake_complete_until') or '-'}): "
                "the lake sink has not landed every partition's records that far"
            )
            if self.skip_on_incomplete:
                raise AirflowSkipException(message)
            raise AirflowException(message + "; a retry tries again")
        if code == cli.EXIT_USAGE:
            raise AirflowFailException(f"sluice backfill: usage error (exit 2):\n{result.error_text()}")
        if code < 0:
            raise AirflowException(f"sluice backfill was killed by signal {-code}")
        raise AirflowException(f"sluice backfill failed (exit {code}):\n{result.error_text()}")


class SluiceVerifyOperator(_SluiceKafkaCommand):
    """Runs `sluice verify --output json`: recomputes the view from the raw table and compares
    it with the serving layer's merge. Returns (pushes to XCom) verify's JSON report.

    By default verify compares one consistent cut (the raw rows each layer had seen), so it
    passes on a live pipeline whose events keep flowing; `quiescent=True` compares the whole
    raw table instead.

    Exit 0 (identical) succeeds. Exit 1 (the layers differ) fails, retryably: verify already
    compares again for `settle` before it gives up, and a retry gives a pipeline that is still
    catching up more time. Exit 2 (verify could not run, e.g. the broker is unreachable; clap's
    usage errors share the code) also fails retryably, since it is mostly transient.

    :param brokers: Kafka bootstrap servers; default `SLUICE_BROKERS` (in `env=` or the
        worker's environment); with neither the task fails without retry.
    :param settle: how long verify keeps comparing while the layers differ (sluice's default 30s).
    :param quiescent: pass `--quiescent`: compare with a recompute of the whole raw table instead
        of the cut each layer had seen (for a stopped pipeline whose late records a backfill has
        covered).
    :param properties: extra librdkafka properties, passed as `-X key=value`.
    """

    template_fields: Sequence[str] = ("job", "lake", "sluice_bin", "brokers", "settle", "env")
    ui_color = "#d5f5c9"

    def __init__(
        self,
        *,
        settle: str | None = None,
        quiescent: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.settle = settle
        self.quiescent = quiescent

    def command(self) -> list[str]:
        command = [self._binary(), "verify", *cli.lake_args(self._job(), self.lake), "--output", "json"]
        command += self._broker_args()
        if self.settle:
            command += ["--settle", str(self.settle)]
        if self.quiescent:
            command.append("--quiescent")
        return command + self._property_args()

    def execute(self, context: Context) -> dict:
        return self.outcome(self._run(self.command()))

    def outcome(self, result: cli.Result) -> dict:
        report = result.json()
        if result.returncode == cli.EXIT_OK and report is not None:
            self.log.info(
                "verify %s: OK, %s rows identical (cutoff %s)",
                report.get("job"), report.get("rows_compared"), report.get("cutoff") or "-",
            )
            return report
        if result.returncode == 1 and report is not None:
            raise AirflowException(
                f"verify {report.get('job')}: DIFFERENT (cutoff {report.get('cutoff') or '-'}): "
                f"{len(report.get('only_in_recompute') or [])} rows only in the recompute, "
                f"{len(report.get('only_in_merged') or [])} only in the merged view, "
                f"{len(report.get('different') or [])} differ"
            )
        if result.returncode in (cli.EXIT_OK, 1):
            raise AirflowException(
                f"sluice verify exited {result.returncode} but printed no JSON report on stdout: "
                f"{result.stdout[-500:]!r}"
            )
        raise AirflowException(
            f"sluice verify could not run (exit {result.returncode}):\n{result.error_text()}"
        )
