#!/usr/bin/env bash
# Installs what the Airflow tests need, once; quick when everything is present. Sourced by
# tests/run.sh after tests/prereqs.sh (the demo does not need Airflow). Idempotent.
set -euo pipefail

# The Airflow venv (tests/python/test_airflow.py): a venv of its own, because Airflow's
# dependency tree fights the main venv's pins (deltalake, pyarrow). No constraint file: the
# published ones are not on a package registry; apache-airflow==3.3.2 resolves and runs as is.
# confluent-kafka (a wheel with librdkafka inside) creates topics and produces orders for the
# `sluice_replay` test against the run's real broker.
export SLUICE_AIRFLOW_VENV=${SLUICE_AIRFLOW_VENV:-$SLUICE_CACHE/airflow-venv}
sluice_airflow_reqs="apache-airflow==3.3.2 pytest==8.4.2 confluent-kafka==2.16.1"
if [ ! -f "$SLUICE_AIRFLOW_VENV/.sluice-reqs" ] || [ "$(cat "$SLUICE_AIRFLOW_VENV/.sluice-reqs")" != "$sluice_airflow_reqs" ]; then
  echo "prereqs: creating the Airflow venv at $SLUICE_AIRFLOW_VENV" >&2
  rm -rf "$SLUICE_AIRFLOW_VENV"
  python3 -m venv "$SLUICE_AIRFLOW_VENV"
  "$SLUICE_AIRFLOW_VENV/bin/pip" install -q --disable-pip-version-check $sluice_airflow_reqs
  echo "$sluice_airflow_reqs" > "$SLUICE_AIRFLOW_VENV/.sluice-reqs"
fi
# The package from jobs/airflow, reinstalled whenever one of its files changed (a hash of them).
sluice_airflow_pkg="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/jobs/airflow"
sluice_airflow_hash=$(cd "$sluice_airflow_pkg" && find pyproject.toml README.md sluice_airflow -name __pycache__ -prune -o -type f -print \
  | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1)
if [ "$(cat "$SLUICE_AIRFLOW_VENV/.sluice-airflow-pkg" 2>/dev/null)" != "$sluice_airflow_hash" ]; then
  echo "prereqs: installing jobs/airflow into the Airflow venv" >&2
  "$SLUICE_AIRFLOW_VENV/bin/pip" install -q --disable-pip-version-check --no-deps --force-reinstall "$sluice_airflow_pkg"
  echo "$sluice_airflow_hash" > "$SLUICE_AIRFLOW_VENV/.sluice-airflow-pkg"
fi
