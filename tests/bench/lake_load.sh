#!/usr/bin/env bash
# `sluice lake load` beside DuckDB on the same JSON-lines file and the same cores: seconds,
# peak resident memory, rows/s and their ratios, as one table. Not part of the test suite.
#
#   tests/bench/lake_load.sh [EVENTS]          # default 10000000 seed-000 order events (~1.5 GB)
#
# It builds nothing. SLUICE_BIN names the binary; by default the release build if there is one
# (cargo build --release -p sluice), else the dev build tests/run.sh makes, both under
# CARGO_TARGET_DIR (default $HOME/.cache/sluice/target, as tests/prereqs.sh sets it). The table
# says which one ran.
#
# Its own venv (BENCH_DIR/venv, with duckdb==$DUCKDB_VERSION from PyPI) also generates the
# events, with DuckDB: seed 000's order fields plus `email` and `region`, as the job
# jobs/examples/orders_per_minute.toml reads them, amounts in quarters, event times 100 ms
# apart as epoch milliseconds, 60% completed. The file is kept in BENCH_DIR for the next run.
#
# What each side does: Sluice hashes the file (idempotency), then decodes it with the stream's
# decoder and its checks and writes Parquet (zstd) into a new Delta table in one commit;
# DuckDB reads it with read_json (types sniffed, event_time made a timestamp) and writes one
# Parquet file (snappy, its default). Both use every core. Peak RSS and times come from
# /usr/bin/time -v (or, without it, from wait4 in Python).
#
# Environment: SLUICE_BIN, CARGO_TARGET_DIR, BENCH_DIR (default
# $HOME/.cache/sluice/bench-lake-load), DUCKDB_VERSION (default 2.0.0), RUNS (default 1: the
# best of RUNS runs of each is shown), RESULTS_FILE (if set, the best run of each side is also
# appended to it as a TSV row, path lake-load, for tests/bench/all.sh: see tests/bench/lib.sh).
#
# The shared parts (finding the binary, the venv, generating the events, measuring) are in
# tests/bench/lib.sh.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/../.."

events=${1:-10000000}
find_sluice_bin
bench_dir=${BENCH_DIR:-$HOME/.cache/sluice/bench-lake-load}
duckdb_version=${DUCKDB_VERSION:-2.0.0}
runs=${RUNS:-1}
job=jobs/examples/orders_per_minute.toml
mkdir -p "$bench_dir"

venv=$bench_dir/venv
py=$venv/bin/python
ensure_venv "$venv" "duckdb==$duckdb_version"

data=$bench_dir/orders-$events.jsonl
[ -s "$data" ] || generate_orders "$events" "$data"
size=$(stat -c %s "$data")

lake=$bench_dir/lake
sluice_cmd=("$SLUICE_BIN" lake load --job "$job" --lake "$lake" --output json "$data")
duck_cmd=("$py" -c "
import sys, duckdb
duckdb.sql(f\"\"\"COPY (SELECT * REPLACE (epoch_ms(event_time) AS event_time)
  FROM read_json('{sys.argv[1]}', format = 'newline_delimited'))
  TO '{sys.argv[2]}' (FORMAT PARQUET)\"\"\")
" "$data" "$bench_dir/duckdb.parquet")
rm -f "$bench_dir"/*.m
for run in $(seq 1 "$runs"); do
  rm -rf "$lake"
  echo "bench: sluice lake load, run $run" >&2
  measure "sluice-$run" "${sluice_cmd[@]}" || { cat "$bench_dir/sluice-$run.err" >&2; exit 1; }
  rm -f "$bench_dir/duckdb.parquet"
  echo "bench: duckdb read_json → parquet, run $run" >&2
  measure "duckdb-$run" "${duck_cmd[@]}" || { cat "$bench_dir/duckdb-$run.err" >&2; exit 1; }
done
rows=$(tail -1 "$bench_dir/sluice-1.out" | "$py" -c "import json, sys; print(json.load(sys.stdin)['rows_loaded'])")
[ "$rows" = "$events" ] || { echo "sluice loaded $rows rows of $events" >&2; exit 1; }
record_result lake-load sluice "$events" "$(best_run sluice)" "${sluice_cmd[@]}"
record_result lake-load duckdb "$events" "$(best_run duckdb)" "${duck_cmd[@]}"

profile=$(build_profile "$SLUICE_BIN")
"$py" - "$(best_run sluice)" "$(best_run duckdb)" "$events" "$size" "$profile" "$duckdb_version" "$(nproc)" <<'EOF'
import sys
sluice, duck = [list(map(float, s.split())) for s in sys.argv[1:3]]
events, size = int(sys.argv[3]), int(sys.argv[4])
profile, version, cores = sys.argv[5], sys.argv[6], sys.argv[7]
print(f"{events:,} events, {size / 1e9:.2f} GB of JSON lines, {cores} cores; sluice {profile} build, DuckDB {version}\n")
print("| path | seconds | peak RSS | rows/s | CPU |")
print("| --- | ---: | ---: | ---: | ---: |")
for name, (s, rss, cpu) in [("`sluice lake load` (JSON lines → Delta)", sluice),
                            ("DuckDB `COPY (SELECT * FROM read_json(…)) TO parquet`", duck)]:
    print(f"| {name} | {s:.2f} | {rss / 1024:.0f} MiB | {events / max(s, 1e-3):,.0f} | {cpu:.0f}% |")
ratio = lambda a, b: f"{a / max(b, 1e-3):.2f}×"
print(f"| ratio (Sluice / DuckDB) | {ratio(sluice[0], duck[0])} | {ratio(sluice[1], duck[1])} | "
      f"{ratio(duck[0], sluice[0])} | |")
EOF
