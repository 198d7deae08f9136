#!/usr/bin/env bash
# Flink, the peer of Sluice's speed layer, on seed 000's job over the same JSON-lines file as
# tests/bench/lake_load.sh: seconds, events/s, peak resident memory, CPU and result rows, as one
# table, with the exact command. Not part of the test suite.
#
#   tests/bench/flink.sh [EVENTS]              # default 1000000 seed-000 order events (~150 MB)
#
# It builds nothing and needs no Sluice binary: only python3 (3.11 here) and a Java that the
# PyFlink version runs on (Flink 2.x: Java 11, 17 or 21; this machine has OpenJDK 17).
#
# Its own venv (BENCH_DIR/venv, with apache-flink==$FLINK_VERSION, duckdb==$DUCKDB_VERSION and
# psutil==$PSUTIL_VERSION from PyPI; PyFlink brings its jars and a local mini-cluster, so nothing
# else is downloaded). The events are lake_load.sh's file for the same EVENTS when it is in
# LAKE_LOAD_DIR; otherwise they are generated here with the same DuckDB SQL (tests/bench/lib.sh's
# generate_orders, as lake_load.sh) and DuckDB version, so the bytes are the same, and kept in
# BENCH_DIR for the next run.
#
# What Flink does (tests/bench/flink_seed_query.py): PyFlink's Table API in streaming mode, a
# filesystem source ('format' = 'json') over the file, event_time (epoch ms) made the rowtime
# with TO_TIMESTAMP_LTZ(event_time, 3) and the job's watermark delay (5 s), the job's SQL from
# jobs/examples/orders_per_minute.toml unchanged but for that column's name (completed orders
# per one-minute tumbling window: COUNT, SUM, AVG), PARALLELISM (default 2: one slot per core)
# and results collected to the client (a few thousand rows at most). The bounded source's end
# sends the final watermark, so the streaming job fires its last windows and finishes.
#
# Measured: the whole process (Python start, the JVM and its mini-cluster, the job, exit) with
# /usr/bin/time -v (or wait4 without it), and the job alone (submission to last row) from inside.
# PyFlink never waits for the JVM it starts, so neither its CPU nor its memory would reach
# /usr/bin/time; the Python side ends and reaps it once the job is done, so they do. Peak RSS:
# /usr/bin/time -v reports the largest single process (here the JVM, a child of Python), so the
# table also shows the summed RSS of the Python process and its children, sampled every 50 ms
# with psutil; that sum is the one to set beside a single-process peer. The JVM runs with its
# default heap limit (a quarter of memory) unless JVM_ARGS says otherwise (e.g. JVM_ARGS=-Xmx1g;
# PyFlink passes it to the java command).
#
# Checked: Flink's windows equal DuckDB's on the same file (window = event_time // 60000 over
# status = 'completed': the same windows, counts and sums); exit 1 if not.
#
# Environment: BENCH_DIR (default $HOME/.cache/sluice/bench-flink), LAKE_LOAD_DIR (default
# $HOME/.cache/sluice/bench-lake-load), FLINK_VERSION (default 2.3.0), DUCKDB_VERSION (default
# 2.0.0, as lake_load.sh), PSUTIL_VERSION (default 7.2.2), PARALLELISM (default 2), JVM_ARGS,
# RESULTS_FILE (if set, two TSV rows are also appended to it for tests/bench/all.sh, see
# tests/bench/lib.sh: path seed-query, the job alone, and seed-query-process, the whole
# process; both with the process tree's peak RSS, the one to set beside a single-process peer).
#
# The shared parts (the venv, generating the events, measuring) are in tests/bench/lib.sh.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/../.."

events=${1:-1000000}
bench_dir=${BENCH_DIR:-$HOME/.cache/sluice/bench-flink}
lake_load_dir=${LAKE_LOAD_DIR:-$HOME/.cache/sluice/bench-lake-load}
flink_version=${FLINK_VERSION:-2.3.0}
duckdb_version=${DUCKDB_VERSION:-2.0.0}
psutil_version=${PSUTIL_VERSION:-7.2.2}
parallelism=${PARALLELISM:-2}
job=jobs/examples/orders_per_minute.toml
mkdir -p "$bench_dir"

venv=$bench_dir/venv
py=$venv/bin/python
ensure_venv "$venv" "apache-flink==$flink_version" "duckdb==$duckdb_version" "psutil==$psutil_version"

data=$lake_load_dir/orders-$events.jsonl
if [ ! -s "$data" ]; then
  data=$bench_dir/orders-$events.jsonl
fi
[ -s "$data" ] || generate_orders "$events" "$data"
size=$(stat -c %s "$data")

result=$bench_dir/flink-windows.csv
rm -f "$result" "$bench_dir/flink.m"
cmd=("$py" tests/bench/flink_seed_query.py "$data" "$job" "$parallelism" "$result")
echo "bench: flink streaming job, parallelism $parallelism, over $data" >&2
# Whole process: "seconds max_rss_kib cpu_percent" into $bench_dir/flink.m.
measure flink "${cmd[@]}" || { tail -50 "$bench_dir/flink.err" >&2; exit 1; }

# The check: DuckDB's windows on the same file, compared row by row with Flink's.
"$py" - "$data" "$result" <<'EOF' || exit 1
import sys
import duckdb

data, result = sys.argv[1:]
con = duckdb.connect()
con.execute(f"""
CREATE TABLE duck AS
SELECT event_time // 60000 * 60000 AS window_start_ms, count(*) AS total_orders,
       sum(amount) AS total_revenue
FROM read_json('{data}', format = 'newline_delimited')
WHERE status = 'completed'
GROUP BY ALL""")
con.execute(f"CREATE TABLE flink AS SELECT * FROM read_csv('{result}', header = true)")
duck_rows, flink_rows = (con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                         for t in ("duck", "flink"))
wrong = con.execute("""
SELECT count(*) FROM duck FULL JOIN flink USING (window_start_ms)
WHERE duck.total_orders IS DISTINCT FROM flink.total_orders
   OR abs(duck.total_revenue - flink.total_revenue) > 1e-9 * abs(duck.total_revenue)
   OR flink.total_revenue IS NULL OR duck.total_revenue IS NULL""").fetchone()[0]
if duck_rows != flink_rows or wrong:
    print(f"bench: Flink gave {flink_rows} windows, DuckDB {duck_rows}; {wrong} differ",
          file=sys.stderr)
    sys.exit(1)
print(f"bench: Flink's {flink_rows} windows equal DuckDB's", file=sys.stderr)
EOF

if [ -n "${RESULTS_FILE:-}" ]; then
  read -r job_seconds tree_rss job_cpu < <("$py" -c '
import json, sys
inner = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
print(inner["job_seconds"], inner["tree_peak_rss_kib"], inner["job_cpu_percent"])
' "$bench_dir/flink.out")
  read -r seconds _ cpu <"$bench_dir/flink.m"
  record_result seed-query flink "$events" "$job_seconds $tree_rss $job_cpu" "${cmd[@]}"
  record_result seed-query-process flink "$events" "$seconds $tree_rss $cpu" "${cmd[@]}"
fi

"$py" - "$bench_dir/flink.m" "$bench_dir/flink.out" "$events" "$size" "$parallelism" "$(nproc)" \
  "$(printf '%q ' "${cmd[@]}")" <<'EOF'
import json, sys
seconds, rss, cpu = map(float, open(sys.argv[1]).read().split())
inner = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
events, size, parallelism, cores = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
command = sys.argv[7].strip()
job, tree, rows = inner["job_seconds"], inner["tree_peak_rss_kib"], inner["result_rows"]
print(f"{events:,} events, {size / 1e6:,.0f} MB of JSON lines, {cores} cores; "
      f"Flink {inner['flink_version']} (PyFlink, local mini-cluster), streaming, "
      f"parallelism {parallelism}\n")
print("| path | seconds | events/s | peak RSS (process tree) | peak RSS (largest process) "
      "| CPU | result rows |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
print(f"| Flink, whole process (Python + JVM start → exit) | {seconds:.2f} | "
      f"{events / max(seconds, 1e-3):,.0f} | {tree / 1024:.0f} MiB | {rss / 1024:.0f} MiB | "
      f"{cpu:.0f}% | {rows:,} |")
print(f"| Flink, job only (submit → last row; startup {inner['startup_seconds']:.2f} s) | "
      f"{job:.2f} | {events / max(job, 1e-3):,.0f} | | | {inner['job_cpu_percent']:.0f}% | |")
print(f"\nCommand: `{command}` (from the repository's root, timed with /usr/bin/time -v).")
EOF
