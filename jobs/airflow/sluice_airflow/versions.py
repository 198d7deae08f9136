"""Operators for view versions: `sluice replay` builds a new version from history while the
current one serves, `sluice switch` promotes it (or rolls back). Their exit codes become task
states a scheduler can act on (docs/operations.md, "Exit codes and JSON for schedulers").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from airflow.sdk.exceptions import AirflowException, AirflowFailException

from sluice_airflow import cli
from sluice_airflow.operators import _SluiceKafkaCommand

if TYPE_CHECKING:
    from airflow.sdk import Context

REPLAY_FROM = ("lake", "earliest")


def _blank(value: Any) -> bool:
    # Templates render unset params to "" (or "None"): both mean "sluice's default".
    return value is None or str(value).strip() in ("", "None")


class SluiceReplayOperator(_SluiceKafkaCommand):
    """Builds the view version the job file names (`[view] version = N`) with
    `sluice replay --output json`, while the serving version keeps serving, and returns (pushes
    to XCom) its JSON report: `job, version, fingerprint, from, backfill, seed, group,
    records_in, lag, caught_up, seconds`.

    Replay runs the version's speed layer until its lag is under `caught_up` records, then
    stops; a retry of a replay that stopped part-way (timeout, killed task) continues the
    version instead of seeding it again.

    Exit codes: 0 caught up: success; 4 nothing of the raw table is complete yet (`--from lake`
    needs a cutoff): a retryable failure; 1 not caught up within `timeout` (the report says
    `caught_up: false`) or an error: a retryable failure; 2 usage error: failure without retry.

    :param job: the job file of the new version; default `SLUICE_JOB`.
    :param brokers: Kafka bootstrap servers; default `SLUICE_BROKERS` (else the task fails
        without retry).
    :param lake: the lake root; default: sluice's own (`SLUICE_LAKE`, else `./lake`).
    :param replay_from: `lake` (default: the batch view from the raw table, the tail from Kafka
        at the matching offsets) or `earliest` (everything from Kafka's retention).
    :param caught_up: caught up once the lag is under this many records (sluice's default 1 000).
    :param timeout: give up when not caught up after this long (a duration such as `30m`;
        sluice's default 1h). Give the task an `execution_timeout` beyond it.
    :param state_dir: the RocksDB state directory (sluice's default `./state/<job>.vN` in the
        worker's directory, or `SLUICE_STATE_DIR`); `sluice stream` on the same directory
        carries the version on.
    :param properties: extra librdkafka properties, passed as `-X key=value`.
    :param env: extra environment for the command.
    """

    template_fields: Sequence[str] = (
        "job", "lake", "sluice_bin", "brokers", "replay_from", "caught_up", "timeout", "state_dir", "env",
    )
    ui_color = "#f5d5c9"

    def __init__(
        self,
        *,
        replay_from: str | None = None,
        caught_up: int | str | None = None,
        timeout: str | None = None,
        state_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.replay_from = replay_from
        self.caught_up = caught_up
        self.timeout = timeout
        self.state_dir = state_dir

    def command(self) -> list[str]:
        command = [self._binary(), "replay", *cli.lake_args(self._job(), self.lake), *self._broker_args(),
                   "--output", "json"]
        if not _blank(self.replay_from):
            if str(self.replay_from) not in REPLAY_FROM:
                raise AirflowFailException(
                    f"{self.task_id}: replay_from {self.replay_from!r} is not one of {', '.join(REPLAY_FROM)}"
                )
            command += ["--from", str(self.replay_from)]
        if not _blank(self.caught_up):
            command += ["--caught-up", str(self.caught_up)]
        if not _blank(self.timeout):
            command += ["--timeout", str(self.timeout)]
        if not _blank(self.state_dir):
            command += ["--state-dir", str(self.state_dir)]
        return command + self._property_args()

    def execute(self, context: Context) -> dict:
        return self.outcome(self._run(self.command()))

    def outcome(self, result: cli.Result) -> dict:
        """The task state for a finished `sluice replay`: its report, or an exception."""
        code, report = result.returncode, result.json()
        if code == cli.EXIT_OK:
            if report is None:
                raise AirflowException(
                    f"sluice replay exited 0 but printed no JSON report on stdout: {result.stdout[-500:]!r}"
                )
            backfill = report.get("backfill") or {}
            seed = (report.get("seed") or {}).get("Seeded") or {}
            self.log.info(
                "replay %s version %s (plan %s) from %s: %s; backfill cutoff %s, %s speed state rows "
                "seeded, %s records streamed, %s behind (group %s), in %.1fs",
                report.get("job"), report.get("version"), report.get("fingerprint"), report.get("from"),
                "caught up" if report.get("caught_up") else "NOT caught up", backfill.get("cutoff") or "-",
                seed.get("rows", 0), report.get("records_in"), report.get("lag"), report.get("group"),
                report.get("seconds") or 0.0,
            )
            return report
        if code == cli.EXIT_INCOMPLETE:
            # sluice prints no JSON here, only the reason on stderr.
            raise AirflowException(
                "sluice replay: nothing of the raw table is complete yet (the lake sink has not "
                "reported every partition), so there is no cutoff to build the version's batch view "
                f"to; a retry tries again (replay_from='earliest' reads Kafka instead):\n{result.error_text()}"
            )
        if code == cli.EXIT_USAGE:
            raise AirflowFailException(f"sluice replay: usage error (exit 2):\n{result.error_text()}")
        if code < 0:
            raise AirflowException(f"sluice replay was killed by signal {-code}")
        if code == cli.EXIT_ERROR and report is not None and report.get("caught_up") is False:
            raise AirflowException(
                f"replay {report.get('job')} version {report.get('version')}: not caught up in time, "
                f"{report.get('lag')} records behind; a retry continues it"
            )
        raise AirflowException(f"sluice replay failed (exit {code}):\n{result.error_text()}")


class SluiceSwitchOperator(_SluiceKafkaCommand):
    """Makes the serving layer answer from a view version with `sluice switch --output json`
    (by default the version the job file names; `version=` picks another, e.g. for a rollback),
    and returns (pushes to XCom) its JSON report: `job, from, to, switched, forced, lag,
    verify_identical, why_refused`.

    sluice switches only once the version's lag is under `caught_up` and `sluice verify` passes
    on it (it verifies for up to `settle`), unless `force`. Exit codes: 0 switched, or the
    version already serves (`switched: false`, no refusal): success; 1 with `switched: false`:
    refused (not caught up, or verify found a difference): a retryable failure, since a version
    still catching up may pass later; any other failure (1 without a report, e.g. an unknown
    version or an unreachable broker): a retryable failure; 2 usage error: failure without retry.

    :param job: a job file of the job; default `SLUICE_JOB`.
    :param version: the version to serve; default the one the job file names.
    :param force: switch even if the version lags or verify fails (sluice says so loudly).
    :param caught_up: caught up means a lag under this many records (sluice's default 1 000).
    :param settle: how long verify may retry while the layers settle (sluice's default 30s).
    :param brokers: Kafka bootstrap servers; default `SLUICE_BROKERS` (else the task fails
        without retry).
    :param lake: the lake root; default: sluice's own (`SLUICE_LAKE`, else `./lake`).
    :param properties: extra librdkafka properties, passed as `-X key=value`.
    :param env: extra environment for the command.
    """

    template_fields: Sequence[str] = (
        "job", "lake", "sluice_bin", "brokers", "version", "caught_up", "settle", "env",
    )
    ui_color = "#c9f5e4"

    def __init__(
        self,
        *,
        version: int | str | None = None,
        force: bool = False,
        caught_up: int | str | None = None,
        settle: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.version = version
        self.force = force
        self.caught_up = caught_up
        self.settle = settle

    def command(self) -> list[str]:
        command = [self._binary(), "switch", *cli.lake_args(self._job(), self.lake), *self._broker_args(),
                   "--output", "json"]
        if not _blank(self.version):
            command += ["--version", str(self.version)]
        if self.force:
            command.append("--force")
        if not _blank(self.caught_up):
            command += ["--caught-up", str(self.caught_up)]
        if not _blank(self.settle):
            command += ["--settle", str(self.settle)]
        return command + self._property_args()

    def execute(self, context: Context) -> dict:
        return self.outcome(self._run(self.command()))

    def outcome(self, result: cli.Result) -> dict:
        """The task state for a finished `sluice switch`: its report, or an exception."""
        code, report = result.returncode, result.json()
        if code == cli.EXIT_OK:
            if report is None:
                raise AirflowException(
                    f"sluice switch exited 0 but printed no JSON report on stdout: {result.stdout[-500:]!r}"
                )
            job, to = report.get("job"), report.get("to")
            if not report.get("switched"):
                self.log.info("switch %s: version %s already serves", job, to)
            elif report.get("why_refused"):
                self.log.warning(
                    "switch %s: version %s -> %s FORCED past: %s",
                    job, report.get("from"), to, report["why_refused"],
                )
            else:
                self.log.info(
                    "switch %s: version %s -> %s (lag %s, verify identical); running servers follow "
                    "within a second", job, report.get("from"), to, report.get("lag"),
                )
            return report
        if code == cli.EXIT_USAGE:
            raise AirflowFailException(f"sluice switch: usage error (exit 2):\n{result.error_text()}")
        if code < 0:
            raise AirflowException(f"sluice switch was killed by signal {-code}")
        if code == cli.EXIT_ERROR and report is not None and report.get("switched") is False:
            raise AirflowException(
                f"switch {report.get('job')} to version {report.get('to')} refused: "
                f"{report.get('why_refused') or 'no reason given'}; a retry tries again "
                "(force=True switches anyway)"
            )
        raise AirflowException(f"sluice switch failed (exit {code}):\n{result.error_text()}")
