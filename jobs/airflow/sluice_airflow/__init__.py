"""Sluice for Airflow: operators for `sluice backfill`, `sluice verify`, `sluice replay` and
`sluice switch`, deferrable sensors that wait until the raw table is complete or a view version
has caught up, and sharded backfills as mapped tasks.

The classes load on first use, so that Airflow's provider discovery, which imports this
module for `get_provider_info`, does not import the Task SDK while Airflow is starting.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "SluiceBackfillOperator": "sluice_airflow.operators",
    "SluiceVerifyOperator": "sluice_airflow.operators",
    "SluiceReplayOperator": "sluice_airflow.versions",
    "SluiceSwitchOperator": "sluice_airflow.versions",
    "SluiceLakeCompleteSensor": "sluice_airflow.sensors",
    "SluiceCaughtUpSensor": "sluice_airflow.sensors",
    "SluiceLakeCompleteTrigger": "sluice_airflow.triggers",
    "SluiceCaughtUpTrigger": "sluice_airflow.triggers",
    "sluice_sharded_backfill": "sluice_airflow.sharding",
    "shard_ranges": "sluice_airflow.sharding",
}

__all__ = [*_EXPORTS, "get_provider_info", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sluice_airflow' has no attribute {name!r}")


def get_provider_info() -> dict:
    """What the `apache_airflow_provider` entry point reports (`airflow providers list`)."""
    return {
        "package-name": "sluice-airflow",
        "name": "Sluice",
        "description": "Backfills, verification, lake-completeness sensing, replay and version switches for Sluice jobs.",
        "versions": [__version__],
        "integrations": [{"integration-name": "Sluice", "tags": ["software"]}],
        "operators": [{"integration-name": "Sluice", "python-modules": ["sluice_airflow.operators", "sluice_airflow.versions"]}],
        "sensors": [{"integration-name": "Sluice", "python-modules": ["sluice_airflow.sensors"]}],
        "triggers": [{"integration-name": "Sluice", "python-modules": ["sluice_airflow.triggers"]}],
    }
