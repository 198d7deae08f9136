#!/usr/bin/env bash
# The demo on the embedded default: a local lake directory, no servers. Builds sluice, loads
# sample orders into ./lake, backfills the seed query's view and prints it.
# (The live streaming demo, `sluice demo`, arrives with the speed and serving layers.)
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/prereqs.sh
# Same workspace-wide build as tests/run.sh, so the two commands share one compile.
cargo build --locked --workspace --all-targets --all-features
SLUICE="$CARGO_TARGET_DIR/debug/sluice"
export SLUICE_LAKE=${SLUICE_LAKE:-./lake}
JOB=jobs/examples/orders_per_minute.toml

echo "== load sample orders into the raw Delta table ($SLUICE_LAKE/raw/orders.events)"
"$SLUICE" lake load --job "$JOB" tests/golden/orders.input.jsonl
echo "== backfill the batch view ($SLUICE_LAKE/views/orders_per_minute)"
"$SLUICE" backfill --job "$JOB" --from 2024-05-01T10:00:00Z --to 2024-05-01T12:00:00Z
echo "== the seed query's view (orders per minute)"
"$SLUICE" view --job "$JOB"
