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
# best of RUNS runs of each is shown).
set -euo pipefail
cd "$(dirname "$0")/../.."

events=${1:-10000000}
target=${CARGO_TARGET_DIR:-$HOME/.cache/sluice/target}
if [ -z "${SLUICE_BIN:-}" ]; then
  if [ -x "$target/release/sluice" ]; then SLUICE_BIN=$target/release/sluice; else SLUICE_BIN=$target/debug/sluice; fi
fi
[ -x "$SLUICE_BIN" ] || { echo "no sluice binary at $SLUICE_BIN: build one (cargo build --release -p sluice) or set SLUICE_BIN" >&2; exit 1; }
bench_dir=${BENCH_DIR:-$HOME/.cache/sluice/bench-lake-load}
duckdb_version=${DUCKDB_VERSION:-2.0.0}
runs=${RUNS:-1}
job=jobs/examples/orders_per_minute.toml
mkdir -p "$bench_dir"

venv=$bench_dir/venv
py=$venv/bin/python
if ! "$py" -c "import duckdb, sys; sys.exit(duckdb.__version__ != '$duckdb_version')" 2>/dev/null; then
  echo "bench: creating $venv with duckdb==$duckdb_version" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "duckdb==$duckdb_version"
fi

data=$bench_dir/orders-$events.jsonl
if [ ! -s "$data" ]; then
  echo "bench: generating $events events into $data" >&2
  "$py" - "$events" "$data.tmp" <<'EOF'
import sys
import duckdb

events, path = int(sys.argv[1]), sys.argv[2]
duckdb.sql(f"""
COPY (
  SELECT
    'o' || i::VARCHAR AS order_id,
    'c-' || lpad((hash(i * 7) % 5000)::VARCHAR, 5, '0') AS customer_id,
    'user' || (hash(i * 11) % 100000)::VARCHAR || '@example.com' AS email,
    (['eu', 'us', 'apac', 'latam'])[((hash(i * 13) % 4) + 1)::BIGINT] AS region,
    ((hash(i * 17) % 39996) + 4)::DOUBLE / 4 AS amount,
    CASE WHEN hash(i * 19) % 100 < 60 THEN 'completed'
         WHEN hash(i * 19) % 2 = 0 THEN 'pending' ELSE 'cancelled' END AS status,
    1714557600000 + i * 100 AS event_time
  FROM range({events}) t(i)
) TO '{path}' (FORMAT JSON)
""")
EOF
  mv "$data.tmp" "$data"
fi
size=$(stat -c %s "$data")

# measure NAME CMD...: runs CMD, leaves "seconds max_rss_kib cpu_percent" in $bench_dir/NAME.m
measure() {
  local name=$1; shift
  local m=$bench_dir/$name.m
  if [ -x /usr/bin/time ]; then
    # The command's status, not the parse's, is the function's: a failed run must fail.
    local status=0
    /usr/bin/time -v -o "$m.time" "$@" >"$bench_dir/$name.out" 2>"$bench_dir/$name.err" || status=$?
    "$py" - "$m.time" >"$m" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
wall = re.search(r"Elapsed \(wall clock\) time.*: (.*)", text).group(1).strip()
seconds = 0.0
for part in wall.split(":"):
    seconds = seconds * 60 + float(part)
rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
cpu = re.search(r"Percent of CPU this job got: (\d+)%", text).group(1)
print(seconds, rss, cpu)
EOF
    return "$status"
  else
    "$py" - "$m" "$@" >"$bench_dir/$name.out" 2>"$bench_dir/$name.err" <<'EOF'
import os, subprocess, sys, time
out, argv = sys.argv[1], sys.argv[2:]
start = time.monotonic()
child = subprocess.Popen(argv)
_, status, usage = os.wait4(child.pid, 0)
seconds = time.monotonic() - start
cpu = round(100 * (usage.ru_utime + usage.ru_stime) / seconds)
with open(out, "w") as f:
    f.write(f"{seconds} {usage.ru_maxrss} {cpu}\n")
sys.exit(os.waitstatus_to_exitcode(status))
EOF
  fi
}

best() { # best NAME: the run with the fewest seconds
  sort -n "$bench_dir"/"$1"-*.m | head -1
}

rm -f "$bench_dir"/*.m
for run in $(seq 1 "$runs"); do
  lake=$bench_dir/lake
  rm -rf "$lake"
  echo "bench: sluice lake load, run $run" >&2
  measure "sluice-$run" "$SLUICE_BIN" lake load --job "$job" --lake "$lake" --output json "$data" \
    || { cat "$bench_dir/sluice-$run.err" >&2; exit 1; }
  rm -f "$bench_dir/duckdb.parquet"
  echo "bench: duckdb read_json → parquet, run $run" >&2
  measure "duckdb-$run" "$py" -c "
import sys, duckdb
duckdb.sql(f\"\"\"COPY (SELECT * REPLACE (epoch_ms(event_time) AS event_time)
  FROM read_json('{sys.argv[1]}', format = 'newline_delimited'))
  TO '{sys.argv[2]}' (FORMAT PARQUET)\"\"\")
" "$data" "$bench_dir/duckdb.parquet" || { cat "$bench_dir/duckdb-$run.err" >&2; exit 1; }
done
rows=$(tail -1 "$bench_dir/sluice-1.out" | "$py" -c "import json, sys; print(json.load(sys.stdin)['rows_loaded'])")
[ "$rows" = "$events" ] || { echo "sluice loaded $rows rows of $events" >&2; exit 1; }

profile=dev; case "$SLUICE_BIN" in */release/*) profile=release ;; esac
"$py" - "$(best sluice)" "$(best duckdb)" "$events" "$size" "$profile" "$duckdb_version" "$(nproc)" <<'EOF'
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
