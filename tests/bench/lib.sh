# shellcheck shell=bash disable=SC2154 # bench_dir and py are the calling script's.
# What tests/bench/*.sh share. Sourced, not run, before the script's `cd` to the repository's
# root (so that a relative RESULTS_FILE means the directory the script was started from):
#
#   set -euo pipefail
#   source "$(dirname "$0")/lib.sh"
#   cd "$(dirname "$0")/../.."
#
#   find_sluice_bin                  sets SLUICE_BIN: as given, else the release build under
#                                    CARGO_TARGET_DIR (default $HOME/.cache/sluice/target, as
#                                    tests/prereqs.sh sets it) if there is one, else the dev build
#                                    tests/run.sh makes; exits 1 if it is not an executable.
#   build_profile BIN                prints `release` (BIN is under */release/) or `dev`.
#   ensure_venv VENV DIST==VER...    a venv at VENV with exactly these PyPI distributions: pip
#                                    installs them when any is missing or at another version.
#   generate_orders EVENTS PATH [seed|wide]
#                                    EVENTS seed-000 order events as JSON lines into PATH (below).
#   measure NAME CMD...              runs CMD: stdout, stderr into $bench_dir/NAME.out, .err and
#                                    "seconds max_rss_kib cpu_percent" into $bench_dir/NAME.m;
#                                    returns CMD's status.
#   best_run NAME                    of $bench_dir/NAME-*.m, the line with the fewest seconds.
#   record_result PATH ENGINE EVENTS "SECONDS MAX_RSS_KIB CPU" CMD...
#                                    with RESULTS_FILE set, appends one TSV row to it (below).
#
# generate_orders, measure and best_run use the calling script's $bench_dir and $py (a Python:
# with duckdb for generate_orders; measure needs only the standard library).
#
# RESULTS_FILE rows, for tests/bench/all.sh (one per measured command, tab-separated, no
# header): path, engine, events, seconds, events/s, peak RSS MiB, CPU %, the command (its
# words quoted by printf %q, so one line that a shell reads back as the same words; run from
# the repository's root). path is what both engines of a comparison share (lake-load,
# backfill-seed, ...); engine is sluice, duckdb or flink.

if [ -n "${RESULTS_FILE:-}" ]; then
  case $RESULTS_FILE in /*) ;; *) RESULTS_FILE=$PWD/$RESULTS_FILE ;; esac
fi

find_sluice_bin() {
  local target=${CARGO_TARGET_DIR:-$HOME/.cache/sluice/target}
  if [ -z "${SLUICE_BIN:-}" ]; then
    if [ -x "$target/release/sluice" ]; then SLUICE_BIN=$target/release/sluice; else SLUICE_BIN=$target/debug/sluice; fi
  fi
  [ -x "$SLUICE_BIN" ] || { echo "no sluice binary at $SLUICE_BIN: build one (cargo build --release -p sluice) or set SLUICE_BIN" >&2; exit 1; }
}

build_profile() {
  case $1 in */release/*) echo release ;; *) echo dev ;; esac
}

ensure_venv() {
  local venv=$1; shift
  # Installed versions from the distributions' metadata (the PyPI names, which need not be the
  # modules': apache-flink is pyflink).
  if ! "$venv/bin/python" - "$@" 2>/dev/null <<'EOF'
import sys
from importlib.metadata import version
sys.exit(any(version(name) != want for name, want in (s.split("==") for s in sys.argv[1:])))
EOF
  then
    echo "bench: creating $venv with $*" >&2
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "$@"
  fi
}

# The events, written by DuckDB: seed 000's order fields plus `email` and `region`, as the job
# jobs/examples/orders_per_minute.toml reads them, amounts in quarters, event times 100 ms apart
# from 2024-05-01T10:00:00Z as epoch milliseconds, 60% completed. Customer ids: `seed` (the
# default) 'c-00000' to 'c-04999' as seed 000 has them; `wide` 'c-' || hash(i * 7) % (2 × EVENTS),
# unpadded, for backfill.sh's high-cardinality keyed shape. The same EVENTS, customers and
# DuckDB version give the same bytes. Written to PATH.tmp, then renamed.
generate_orders() {
  local events=$1 path=$2 customers=${3:-seed}
  echo "bench: generating $events events into $path" >&2
  "$py" - "$events" "$path.tmp" "$customers" <<'EOF'
import sys
import duckdb

events, path, customers = int(sys.argv[1]), sys.argv[2], sys.argv[3]
customer_id = {
    "seed": "'c-' || lpad((hash(i * 7) % 5000)::VARCHAR, 5, '0')",
    "wide": f"'c-' || (hash(i * 7) % {2 * events})::VARCHAR",
}[customers]
duckdb.sql(f"""
COPY (
  SELECT
    'o' || i::VARCHAR AS order_id,
    {customer_id} AS customer_id,
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
  mv "$path.tmp" "$path"
}

# Peak RSS and times from /usr/bin/time -v (or, without it, from wait4 in Python). /usr/bin/time
# reports the largest single process, not the sum over a process tree.
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

best_run() {
  sort -n "$bench_dir"/"$1"-*.m | head -1
}

record_result() {
  [ -n "${RESULTS_FILE:-}" ] || return 0
  local path=$1 engine=$2 events=$3 seconds rss cpu command numbers
  read -r seconds rss cpu <<<"$4"
  shift 4
  command=$(printf '%q ' "$@")
  mkdir -p "$(dirname "$RESULTS_FILE")"
  # awk for the arithmetic only: its -v would unescape the command's backslashes.
  numbers=$(awk -v n="$events" -v s="$seconds" -v r="$rss" -v c="$cpu" \
    'BEGIN { printf "%.3f\t%.0f\t%.0f\t%.0f", s, n / (s > 0.001 ? s : 0.001), r / 1024, c }')
  printf '%s\t%s\t%s\t%s\t%s\n' "$path" "$engine" "$events" "$numbers" "${command% }" >>"$RESULTS_FILE"
}
