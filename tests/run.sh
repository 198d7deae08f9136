#!/usr/bin/env bash
# Sluice's whole test suite, on a fresh machine: installs missing prerequisites, then runs
# the Rust tests (unit, golden, property, end-to-end), the Python interop tests, and the
# Airflow tests (in the Airflow venv).
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/prereqs.sh
source tests/prereqs_airflow.sh

# A real Kafka-protocol broker for the whole run (tests/broker.sh), stopped at the end.
if [ -z "${SLUICE_TEST_BOOTSTRAP:-}" ]; then
  trap 'tests/broker.sh stop' EXIT
  eval "$(tests/broker.sh start)"
  export SLUICE_TEST_BOOTSTRAP="$BOOTSTRAP"
fi

# One build for everything (tests, the binary, the demo): the same workspace-wide features.
cargo test --locked --workspace --all-features
export SLUICE_BIN="$CARGO_TARGET_DIR/debug/sluice"

"$SLUICE_VENV/bin/python" -m pytest -q tests/python --ignore=tests/python/test_airflow.py
"$SLUICE_AIRFLOW_VENV/bin/python" -m pytest -q tests/python/test_airflow.py
