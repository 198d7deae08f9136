#!/usr/bin/env bash
# Sluice's whole test suite, on a fresh machine: installs missing prerequisites, then runs
# the Rust tests (unit, golden, property, end-to-end) and the Python interop tests.
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/prereqs.sh

# One build for everything (tests, the binary, the demo): the same workspace-wide features.
cargo test --locked --workspace --all-features
export SLUICE_BIN="$CARGO_TARGET_DIR/debug/sluice"

"$SLUICE_VENV/bin/python" -m pytest -q tests/python
