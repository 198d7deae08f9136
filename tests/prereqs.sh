#!/usr/bin/env bash
# Installs what building and testing Sluice needs, once; quick when everything is present.
# Sourced by tests/run.sh, jobs/demo.sh and .ci/run. Idempotent.
set -euo pipefail

SLUICE_CACHE=${SLUICE_CACHE:-$HOME/.cache/sluice}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$SLUICE_CACHE/target}
export SLUICE_VENV=${SLUICE_VENV:-$SLUICE_CACHE/venv}
mkdir -p "$SLUICE_CACHE"

# Debian packages: cmake/clang/libclang for rdkafka and rocksdb, curl headers for rdkafka,
# promtool (prometheus) for the alert-rule tests, chromium for the dashboard's browser test.
sluice_apt_packages=(cmake clang libclang-dev libcurl4-openssl-dev pkg-config python3-venv prometheus chromium)
sluice_missing=()
for pkg in "${sluice_apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || sluice_missing+=("$pkg")
done
if ((${#sluice_missing[@]})); then
  echo "prereqs: installing ${sluice_missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${sluice_missing[@]}" >/dev/null
fi

# The Python venv: interop tests (the official deltalake reader, pyarrow, pytest), the test
# harness's Kafka-protocol broker (noida-db) and S3-compatible store (moto's server), and
# Confluent's Python client with its schema registry client and Avro serializer (interop),
# and schemathesis (the serving API checked against its OpenAPI document).
sluice_py_reqs="deltalake==1.1.4 pyarrow==21.0.0 pytest==8.4.2 duckdb==2.0.1 noida-db==0.2.3 moto[server]==5.2.5 confluent-kafka[avro]==2.16.1 schemathesis==4.32.5 playwright==1.65.2"
if [ ! -f "$SLUICE_VENV/.sluice-reqs" ] || [ "$(cat "$SLUICE_VENV/.sluice-reqs")" != "$sluice_py_reqs" ]; then
  echo "prereqs: creating the Python venv at $SLUICE_VENV" >&2
  python3 -m venv "$SLUICE_VENV"
  "$SLUICE_VENV/bin/pip" install -q --disable-pip-version-check $sluice_py_reqs
  echo "$sluice_py_reqs" > "$SLUICE_VENV/.sluice-reqs"
fi

