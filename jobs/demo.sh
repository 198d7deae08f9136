#!/usr/bin/env bash
# The demo: builds sluice and runs `sluice demo`, which starts everything in one process (an
# in-process Kafka, an order generator, the speed layer, the raw-lake sink into
# ./sluice-demo/lake, a backfill every 15 s and the serving layer on http://127.0.0.1:8080)
# and shows a live summary. Ctrl-C stops it. Arguments go to `sluice demo`
# (e.g. `jobs/demo.sh --bind 127.0.0.1:9000 --rate 1000`; see `sluice demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/prereqs.sh
# Same workspace-wide build as tests/run.sh, so the two commands share one compile.
cargo build --locked --workspace --all-targets --all-features
exec "$CARGO_TARGET_DIR/debug/sluice" demo "$@"
