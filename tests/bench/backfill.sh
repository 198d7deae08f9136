#!/usr/bin/env bash
# `sluice backfill` (raw Delta table → batch view) beside DuckDB running the same aggregation
# over the same Parquet files on the same cores: seconds, peak resident memory, rows/s and
# their ratios, as one table, with the exact commands above it. Not part of the test suite.
#
#   tests/bench/backfill.sh [EVENTS]                # both shapes at their default sizes
#   SHAPES=keyed tests/bench/backfill.sh            # one shape
#   SCALE=10 tests/bench/backfill.sh                # each shape at 10× its default size
#
# Shapes (SHAPES, default "seed keyed"):
#   seed   jobs/examples/orders_per_minute.toml: completed orders per one-minute window, no key
#          (16,667 one-minute windows at 10M events); default 10000000 events.
#   keyed  tests/bench/jobs/orders_by_customer.toml: completed orders per customer per one-hour
#          window, `[view] key = ["customer_id"]` (high cardinality); default 2000000 events.
# EVENTS (or the first argument) sets the event count of every shape; otherwise each shape's
# default is multiplied by SCALE (default 1).
#
# It builds nothing. SLUICE_BIN names the binary; by default the release build if there is one
# (cargo build --release -p sluice), else the dev build tests/run.sh makes, both under
# CARGO_TARGET_DIR (default $HOME/.cache/sluice/target, as tests/prereqs.sh sets it). The table
# says which one ran.
#
# The raw table, once per event count: its own venv (BENCH_DIR/venv, with
# duckdb==$DUCKDB_VERSION from PyPI) generates JSON lines with DuckDB as tests/bench/lake_load.sh
# does, with tests/bench/lib.sh's generate_orders (seed 000's order fields plus `email` and
# `region`, amounts in quarters, event times 100 ms apart from 2024-05-01T10:00:00Z, 60%
# completed), except that customer ids are 'c-' || hash(i * 7) % (2 × EVENTS) (its `wide`):
# about 0.52 × EVENTS distinct customers place a completed order (1.04M at 2M events) and nearly
# every completed order opens its own (customer, hour) group (1.2M view rows at 2M events).
# `sluice lake load` lands the file in BENCH_DIR/lake-EVENTS/raw/orders.events (both shapes
# read the topic's one raw table); the JSON file is then deleted and the lake kept for the next
# run, which rebuilds it only when its live Parquet files (from the Delta log) or their row
# count do not match.
#
# What each side does, over every event (--from the first event's day --to the day after the
# last, whole buckets):
#   Sluice  `sluice backfill --output json` into a removed view table, so every run recomputes
#           the range: scans the raw table (its source columns), runs the job's plan (filter,
#           window, partial states per key, window and bucket, merged), finalizes the rows and
#           replaces the bucket range of the view table (Parquet, with the partial states) in
#           one Delta commit.
#   DuckDB  `COPY (the job's SELECT, the tumble written as time_bucket) TO parquet` from
#           read_parquet over the raw table's data files (the table is unpartitioned: they are
#           the top-level *.parquet, checked against the Delta log), finalized rows only,
#           snappy (its default), TimeZone UTC.
# Both are whole processes (DuckDB's includes starting Python) using every core. Peak RSS and
# times come from /usr/bin/time -v (or, without it, from wait4 in Python). The issue's target:
# Sluice's seconds within 1.5× of DuckDB's, for both shapes, at EVENTS and at SCALE=10.
#
# Correctness, cheaply: each backfill's report must say rows_read = EVENTS and no row skipped,
# and its view_rows must equal the row count of DuckDB's result; otherwise it exits 1.
#
# Environment: SLUICE_BIN, CARGO_TARGET_DIR, BENCH_DIR (default
# $HOME/.cache/sluice/bench-backfill), DUCKDB_VERSION (default 2.0.0), RUNS (default 1: the best
# of RUNS runs of each is shown), SHAPES, SCALE, EVENTS, RESULTS_FILE (if set, the best run of
# each side of each shape is also appended to it as a TSV row, path backfill-SHAPE, for
# tests/bench/all.sh: see tests/bench/lib.sh).
#
# The shared parts (finding the binary, the venv, generating the events, measuring) are in
# tests/bench/lib.sh.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/../.."

fixed_events=${1:-${EVENTS:-}}
shapes=${SHAPES:-seed keyed}
scale=${SCALE:-1}
find_sluice_bin
bench_dir=${BENCH_DIR:-$HOME/.cache/sluice/bench-backfill}
duckdb_version=${DUCKDB_VERSION:-2.0.0}
runs=${RUNS:-1}
topic=orders.events
# 2024-05-01T10:00:00Z, the first event; events are 100 ms apart.
start_ms=1714557600000
mkdir -p "$bench_dir"
bench_dir=$(cd "$bench_dir" && pwd)

for shape in $shapes; do
  case $shape in seed | keyed) ;; *) echo "unknown shape $shape (seed, keyed)" >&2; exit 1 ;; esac
done

venv=$bench_dir/venv
py=$venv/bin/python
ensure_venv "$venv" "duckdb==$duckdb_version"

# raw_rows RAW: the raw table's row count, or -1 when it is missing or its top-level Parquet
# files are not exactly the Delta log's live files (what DuckDB's glob must read).
raw_rows() {
  "$py" - "$1" <<'EOF'
import glob, json, os, sys, urllib.parse
import duckdb

raw = sys.argv[1]
try:
    logs = sorted(glob.glob(os.path.join(raw, "_delta_log", "*.json")))
    live = set()
    for log in logs:
        with open(log) as f:
            for action in map(json.loads, filter(str.strip, f)):
                if "add" in action:
                    live.add(urllib.parse.unquote(action["add"]["path"]))
                elif "remove" in action:
                    live.discard(urllib.parse.unquote(action["remove"]["path"]))
    files = {os.path.basename(p) for p in glob.glob(os.path.join(raw, "*.parquet"))}
    ok = bool(logs) and bool(live) and live == files
    print(duckdb.sql(f"SELECT count(*) FROM read_parquet('{raw}/*.parquet')").fetchall()[0][0]
          if ok else -1)
except (OSError, ValueError, KeyError, duckdb.Error) as e:
    print(f"bench: reading {raw}: {e}", file=sys.stderr)
    print(-1)
EOF
}

# prepare_lake EVENTS: the lake holding EVENTS events in its raw table, built when missing.
prepare_lake() {
  local events=$1
  local lake=$bench_dir/lake-$events
  local raw=$lake/raw/$topic
  if [ "$(raw_rows "$raw")" = "$events" ]; then return; fi
  rm -rf "$lake"
  local data=$bench_dir/orders-$events.jsonl
  generate_orders "$events" "$data" wide
  echo "bench: sluice lake load of $events events into $lake" >&2
  "$SLUICE_BIN" lake load --job jobs/examples/orders_per_minute.toml --lake "$lake" --output json "$data" \
    >"$bench_dir/load-$events.out" 2>"$bench_dir/load-$events.err" \
    || { cat "$bench_dir/load-$events.err" >&2; exit 1; }
  rm -f "$data"
  local rows
  rows=$(raw_rows "$raw")
  [ "$rows" = "$events" ] || { echo "the raw table $raw holds $rows rows of $events (-1: its files are not the Delta log's)" >&2; exit 1; }
}

day_of() { # day_of EPOCH_MS: its UTC date
  date -u -d "@$(( $1 / 1000 / 86400 * 86400 ))" +%F
}

# The DuckDB side's program: the statements of the SQL file named by its argument.
duck_prog='import sys, duckdb; duckdb.execute(open(sys.argv[1]).read())'

results=$bench_dir/results.tsv
commands=$bench_dir/commands.md
rm -f "$bench_dir"/*.m "$results" "$commands"
for shape in $shapes; do
  case $shape in
    seed)
      job=jobs/examples/orders_per_minute.toml view=orders_per_minute default=10000000
      group="time_bucket(INTERVAL '1 minute', event_time)" width="INTERVAL '1 minute'" key=""
      ;;
    keyed)
      job=tests/bench/jobs/orders_by_customer.toml view=orders_by_customer default=2000000
      group="time_bucket(INTERVAL '1 hour', event_time)" width="INTERVAL '1 hour'" key="customer_id"
      ;;
  esac
  events=${fixed_events:-$(( default * scale ))}
  prepare_lake "$events"
  lake=$bench_dir/lake-$events
  raw=$lake/raw/$topic
  from=$(day_of "$start_ms")
  to=$(day_of $(( start_ms + (events - 1) * 100 + 86400000 )))
  sql=$bench_dir/$shape-$events.sql
  result=$bench_dir/duckdb-$shape-$events.parquet
  # The job's SELECT: the same columns, filter and groups (TUMBLE_START is the bucket,
  # TUMBLE_END one window later), in UTC so that neither depends on the machine's zone.
  cat >"$sql" <<EOF
SET TimeZone = 'UTC';
COPY (
  SELECT ${key:+$key, }$group AS window_start,
    $group + $width AS window_end,
    count(*) AS total_orders,
    sum(amount) AS total_revenue,
    avg(amount) AS avg_order_value
  FROM read_parquet('$raw/*.parquet')
  WHERE status = 'completed'
  GROUP BY ${key:+$key, }window_start
) TO '$result' (FORMAT PARQUET)
EOF
  sluice_cmd=("$SLUICE_BIN" backfill --job "$job" --lake "$lake" --from "$from" --to "$to" --output json)
  duck_cmd=("$py" -c "$duck_prog" "$sql")
  {
    echo "$shape, $events events:"
    echo '```'
    echo "# once, when the lake was built (then the JSON file was deleted):"
    echo "\$ $SLUICE_BIN lake load --job jobs/examples/orders_per_minute.toml --lake $lake --output json $bench_dir/orders-$events.jsonl"
    echo "# each run, after rm -rf $lake/views/$view:"
    printf '$'; printf ' %q' "${sluice_cmd[@]}"; echo
    echo "\$ $py -c '$duck_prog' $sql"
    echo "\$ cat $sql"
    cat "$sql"
    echo '```'
  } >>"$commands"
  for run in $(seq 1 "$runs"); do
    rm -rf "$lake/views/$view"
    echo "bench: $shape: sluice backfill of $events events, run $run" >&2
    measure "sluice-$shape-$run" "${sluice_cmd[@]}" || { cat "$bench_dir/sluice-$shape-$run.err" >&2; exit 1; }
    rm -f "$result"
    echo "bench: $shape: duckdb read_parquet → group by → parquet, run $run" >&2
    measure "duckdb-$shape-$run" "${duck_cmd[@]}" || { cat "$bench_dir/duckdb-$shape-$run.err" >&2; exit 1; }
    # Every run's answer is checked: the report's counts, and the view's rows against DuckDB's.
    view_rows=$("$py" - "$bench_dir/sluice-$shape-$run.out" "$result" "$events" <<'EOF'
import json, sys
import duckdb

report = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
result, events = sys.argv[2], int(sys.argv[3])
duck = duckdb.sql(f"SELECT count(*) FROM read_parquet('{result}')").fetchall()[0][0]
problems = []
if report["rows_read"] != events:
    problems.append(f"sluice read {report['rows_read']} raw rows of {events}")
if report["rows_rejected"] != 0:
    problems.append(f"sluice skipped {report['rows_rejected']} raw rows")
if report["view_rows"] != duck:
    problems.append(f"sluice wrote {report['view_rows']} view rows, DuckDB {duck}")
if problems:
    sys.exit("; ".join(problems))
print(report["view_rows"])
EOF
    ) || { echo "bench: $shape: the results differ (run $run)" >&2; exit 1; }
  done
  files=$(find "$raw" -maxdepth 1 -name '*.parquet' | wc -l)
  bytes=$(find "$raw" -maxdepth 1 -name '*.parquet' -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$shape" "$events" "$view_rows" "$files" "$bytes" \
    "$(best_run "sluice-$shape")" "$(best_run "duckdb-$shape")" >>"$results"
  record_result "backfill-$shape" sluice "$events" "$(best_run "sluice-$shape")" "${sluice_cmd[@]}"
  record_result "backfill-$shape" duckdb "$events" "$(best_run "duckdb-$shape")" "${duck_cmd[@]}"
done

profile=$(build_profile "$SLUICE_BIN")
echo "Commands, exactly as run:"
echo
cat "$commands"
echo
"$py" - "$results" "$profile" "$duckdb_version" "$(nproc)" "$runs" <<'EOF'
import sys
path, profile, version, cores, runs = sys.argv[1:6]
rows = [line.rstrip("\n").split("\t") for line in open(path)]
print(f"{cores} cores; sluice {profile} build, DuckDB {version}; best of {runs} run(s)")
for shape, events, view_rows, files, size, _, _ in rows:
    print(f"- {shape}: {int(events):,} events, raw table {int(size) / 1e9:.2f} GB of Parquet "
          f"in {files} file(s), {int(view_rows):,} view rows")
print()
print("| shape | events | path | seconds | peak RSS | rows/s | CPU |")
print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
ratio = lambda a, b: f"{a / max(b, 1e-3):.2f}×"
for shape, events, view_rows, files, size, sluice, duck in rows:
    events = int(events)
    sluice, duck = [list(map(float, m.split())) for m in (sluice, duck)]
    for name, (s, rss, cpu) in [("`sluice backfill` (raw Delta → view)", sluice),
                                ("DuckDB `COPY (SELECT … GROUP BY …) TO parquet`", duck)]:
        print(f"| {shape} | {events:,} | {name} | {s:.2f} | {rss / 1024:.0f} MiB | "
              f"{events / max(s, 1e-3):,.0f} | {cpu:.0f}% |")
    verdict = "within" if sluice[0] <= 1.5 * duck[0] else "not within"
    print(f"| {shape} | {events:,} | ratio (Sluice / DuckDB): {verdict} 1.5× | "
          f"{ratio(sluice[0], duck[0])} | {ratio(sluice[1], duck[1])} | "
          f"{ratio(duck[0], sluice[0])} | |")
EOF
