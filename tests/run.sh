#!/usr/bin/env bash
# Sluice's whole test suite, on a fresh machine: installs missing prerequisites, then runs
# the Rust tests (unit, golden, property, end-to-end) and the Python interop tests.
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/prereqs.sh

cargo build --locked --bin sluice
export SLUICE_BIN="$CARGO_TARGET_DIR/debug/sluice"
cargo test --locked --workspace --all-features

"$SLUICE_VENV/bin/python" -m pytest -q tests/python
