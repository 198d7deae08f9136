"""Where the bundled DAGs take the job file, the lake and the binary from: an Airflow Variable,
else an environment variable, else a default. Read when a task runs (as a template macro),
not when the DAG file is parsed, so changing a Variable needs no DAG reload and parsing
never touches the metadata database.
"""

from __future__ import annotations

import os
from typing import Callable

# name -> (Airflow Variable, environment variable)
SETTINGS = {
    "job": ("sluice_job", "SLUICE_JOB"),
    "lake": ("sluice_lake", "SLUICE_LAKE"),
    "bin": ("sluice_bin", "SLUICE_BIN"),
    "brokers": ("sluice_brokers", "SLUICE_BROKERS"),
}


def setting_macro(defaults: dict[str, str]) -> Callable[[str], str]:
    """`sluice_setting(name)` for `user_defined_macros`: the Variable, else the environment
    variable, else `defaults[name]`, else "" (the operators then apply sluice's own defaults:
    SLUICE_LAKE or ./lake for the lake, `sluice` on PATH for the binary; the operators that
    talk to Kafka fail without retry when there are no brokers at all)."""

    def sluice_setting(name: str) -> str:
        from airflow.sdk import Variable

        variable, env = SETTINGS[name]
        value = Variable.get(variable, default=None)
        if value:
            return value
        value = os.environ.get(env) or defaults.get(name, "")
        if name == "job" and not value:
            raise ValueError(f"no job file: set the Airflow Variable {variable} or {env}")
        return value

    return sluice_setting
