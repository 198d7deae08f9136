"""Running the `sluice` binary: finding it, streaming its stderr to the task log, and reading
the one JSON object it prints on stdout with `--output json`.

Every operator, the sensor and the trigger go through here, so they all find the binary the
same way and report a failed command the same way.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

# Exit codes of `sluice backfill` (jobs/src/main.rs); `sluice replay` shares 0, 1, 2 and 4, and
# `sluice verify`, `switch` and `versions` 0, 1 and 2. docs/operations.md lists them.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_INCOMPLETE = 4

# The last stderr lines kept for an error message: the cause is at the end (`error: ...`).
STDERR_TAIL_LINES = 20


class SluiceNotFound(Exception):
    """The binary is neither where `sluice_bin`/`SLUICE_BIN` say nor on PATH."""


class NoBrokers(Exception):
    """A command that talks to Kafka got no brokers, and SLUICE_BROKERS is not set either."""


@dataclass
class Result:
    command: list[str]
    returncode: int
    stdout: str
    stderr_tail: list[str] = field(default_factory=list)

    def json(self) -> dict | None:
        """The JSON object on stdout (the last line that is one), or None."""
        return parse_json(self.stdout)

    def error_text(self) -> str:
        """What the command said about its failure: its last stderr lines."""
        return "\n".join(self.stderr_tail) or "(no output on stderr)"


def resolve_binary(explicit: str | None = None) -> str:
    """The `sluice` to run: `explicit` (an operator's `sluice_bin`), else `SLUICE_BIN`, else
    `sluice` on PATH. A bare name is looked up on PATH; a path must be executable."""
    candidate = explicit or os.environ.get("SLUICE_BIN") or "sluice"
    if os.sep in candidate:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
        raise SluiceNotFound(f"the sluice binary {candidate!r} does not exist or is not executable")
    found = shutil.which(candidate)
    if found is None:
        raise SluiceNotFound(
            f"no {candidate!r} on PATH: pass sluice_bin=, or set SLUICE_BIN (or the Airflow "
            "Variable sluice_bin for the bundled DAGs)"
        )
    return found


def child_env(extra: Mapping[str, str] | None) -> dict[str, str]:
    """The worker's environment plus the operator's `env` (e.g. AWS_* for an S3 lake)."""
    env = dict(os.environ)
    env.update({k: str(v) for k, v in (extra or {}).items()})
    return env


def parse_json(stdout: str) -> dict | None:
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return None


def run(
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    log: logging.Logger | None = None,
    on_start: Callable[[subprocess.Popen], None] | None = None,
) -> Result:
    """Runs `command`, logging each stderr line as it comes (a long backfill shows its progress
    in the task log while it runs), and returns its exit code and stdout."""
    log = log or logging.getLogger(__name__)
    log.info("running: %s", " ".join(command))
    process = subprocess.Popen(
        list(command),
        env=child_env(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if on_start is not None:
        on_start(process)
    # stdout is read on a thread so that neither pipe can fill up and block the child.
    chunks: list[str] = []
    reader = threading.Thread(target=lambda: chunks.append(process.stdout.read()), daemon=True)
    reader.start()
    tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
    for line in process.stderr:
        line = line.rstrip("\n")
        tail.append(line)
        log.info("sluice: %s", line)
    returncode = process.wait()
    reader.join()
    return Result(list(command), returncode, "".join(chunks), list(tail))


async def run_async(command: Sequence[str], *, env: Mapping[str, str] | None = None) -> Result:
    """`run` for the triggerer's event loop (no threads, no blocking)."""
    process = await asyncio.create_subprocess_exec(
        *command,
        env=child_env(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    tail = stderr.decode(errors="replace").splitlines()[-STDERR_TAIL_LINES:]
    return Result(list(command), process.returncode, stdout.decode(errors="replace"), tail)


def lake_args(job: str, lake: str | None) -> list[str]:
    """`--job F [--lake L]`: without a lake, sluice itself falls back to SLUICE_LAKE, then ./lake."""
    return ["--job", job, *(["--lake", lake] if lake else [])]


def lake_status_command(binary: str, job: str, lake: str | None) -> list[str]:
    return [binary, "lake", "status", *lake_args(job, lake), "--output", "json"]


def broker_args(brokers: str | None, env: Mapping[str, str] | None = None) -> list[str]:
    """`--brokers B`; without `brokers`, nothing when sluice can read SLUICE_BROKERS itself
    (from `env` or this process's environment), else NoBrokers."""
    if brokers:
        return ["--brokers", brokers]
    if (env or {}).get("SLUICE_BROKERS") or os.environ.get("SLUICE_BROKERS"):
        return []
    raise NoBrokers(
        "no Kafka brokers: pass brokers= or set SLUICE_BROKERS (or the Airflow Variable "
        "sluice_brokers for the bundled DAGs)"
    )


def property_args(properties: Mapping[str, str] | None) -> list[str]:
    """`-X key=value` for each extra librdkafka property."""
    return [arg for key, value in (properties or {}).items() for arg in ("-X", f"{key}={value}")]


def versions_command(
    binary: str,
    job: str,
    lake: str | None,
    brokers: str | None,
    env: Mapping[str, str] | None = None,
    properties: Mapping[str, str] | None = None,
) -> list[str]:
    return [
        binary, "versions", *lake_args(job, lake), *broker_args(brokers, env),
        *property_args(properties), "--output", "json",
    ]
