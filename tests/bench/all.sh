#!/usr/bin/env bash
# Sluice beside its peers, as one table: the benches of tests/bench/ run one after another on
# the same machine, each path's events/s and peak resident memory for Sluice and for its peer,
# their ratios, the build profile, cores, versions and the exact commands (issue 15, item 5).
# Not part of the test suite.
#
#   tests/bench/all.sh [EVENTS]                      # every path at its default size
#   SCALE=10 tests/bench/all.sh                      # every path at 10× its default size
#   BENCHES="lake flink" tests/bench/all.sh 1000000  # some paths; both read one file
#   eval "$(tests/broker.sh start)"; tests/bench/all.sh   # also through the broker
#
# Paths (BENCHES, default "lake backfill flink bench stream"), in this order:
#   lake      tests/bench/lake_load.sh: JSON lines → raw Delta, `sluice lake load` beside DuckDB's
#             read_json → Parquet; default 10000000 events.
#   backfill  tests/bench/backfill.sh: raw Delta → view, `sluice backfill` beside DuckDB's
#             GROUP BY → Parquet, shapes seed (default 10000000 events) and keyed (2000000);
#             SHAPES picks them, as there.
#   flink     tests/bench/flink.sh: the seed query in PyFlink (streaming, local mini-cluster)
#             over the JSON-lines file; default 1000000 events. Needs Java.
#   bench     `sluice bench --events N`: the seed query's JSON decode + plan in one process, one
#             thread, over N events it generates in memory (jobs/src/bench.rs); set beside the
#             flink path's job; default 1000000.
#   stream    `sluice bench-stream --brokers BOOTSTRAP --events N`: the speed layer through a
#             broker (concurrent and backlog, exactly-once and at-least-once, then produce →
#             <job>.speed latency; jobs/src/bench_stream.rs); only when SLUICE_TEST_BOOTSTRAP or
#             BOOTSTRAP is set (`tests/broker.sh start` prints BOOTSTRAP=...), else skipped;
#             default 1000000. No peer runs through a broker here.
# EVENTS (or the first argument) sets every path's event count; otherwise each path's default
# is multiplied by SCALE (default 1, an integer). The data: with EVENTS, lake and flink read the
# same file (flink.sh takes lake_load.sh's through LAKE_LOAD_DIR); with SCALE their counts
# differ, so flink.sh generates its own with the same SQL (tests/bench/lib.sh's
# generate_orders). backfill.sh generates and loads its own raw table (customer ids over
# 2 × EVENTS values, for its keyed shape); bench and stream generate theirs in the process.
#
# It builds nothing. SLUICE_BIN names the binary (needed by every path but flink); by default
# the release build if there is one (cargo build --release -p sluice), else the dev build
# tests/run.sh makes, both under CARGO_TARGET_DIR (default $HOME/.cache/sluice/target). It is
# resolved once and passed to every script; the report says which profile ran (from the path:
# .../release/... is release, anything else dev).
#
# Each script appends its best runs as TSV rows (path, engine, events, seconds, events/s, peak
# RSS MiB, CPU %, the exact command; tests/bench/lib.sh) to BENCH_DIR/results.tsv, given to it as
# RESULTS_FILE; all.sh adds its own bench and stream rows, and the table is made from those rows
# alone. Peak RSS is the largest
# single process (/usr/bin/time -v, or wait4), except Flink's: its Python process and JVM summed.
# Printed (and kept in BENCH_DIR/report.md): the table, every row with its seconds and CPU, the
# machine and versions, the exact commands, then each script's own report as it printed it.
# Exit 1 when any path failed (the others are still reported), 0 otherwise.
#
# Environment: SLUICE_BIN, CARGO_TARGET_DIR, EVENTS, SCALE, BENCHES, RUNS (default 1: the best
# of RUNS runs of each; bench-stream runs once), BENCH_DIR (all.sh's own files; default
# $HOME/.cache/sluice/bench-all), LAKE_LOAD_DIR, BACKFILL_DIR, FLINK_DIR (the scripts' BENCH_DIR;
# defaults their own: $HOME/.cache/sluice/bench-lake-load, -backfill, -flink),
# SLUICE_TEST_BOOTSTRAP or BOOTSTRAP, RESULTS_FILE (if set, this run's rows are also appended to
# it), and what the scripts read: DUCKDB_VERSION, SHAPES, FLINK_VERSION, PSUTIL_VERSION,
# PARALLELISM, JVM_ARGS.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/../.."

fixed_events=${1:-${EVENTS:-}}
scale=${SCALE:-1}
benches=${BENCHES:-lake backfill flink bench stream}
runs=${RUNS:-1}
bootstrap=${SLUICE_TEST_BOOTSTRAP:-${BOOTSTRAP:-}}
bench_dir=${BENCH_DIR:-$HOME/.cache/sluice/bench-all}
lake_dir=${LAKE_LOAD_DIR:-$HOME/.cache/sluice/bench-lake-load}
backfill_dir=${BACKFILL_DIR:-$HOME/.cache/sluice/bench-backfill}
flink_dir=${FLINK_DIR:-$HOME/.cache/sluice/bench-flink}
user_results=${RESULTS_FILE:-}
py=python3

wants() { case " $benches " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
needs_bin=
for b in $benches; do
  case $b in
    lake | backfill | bench | stream) needs_bin=1 ;;
    flink) ;;
    *) echo "unknown bench $b (lake, backfill, flink, bench, stream)" >&2; exit 1 ;;
  esac
done
profile=none
if [ -n "$needs_bin" ]; then
  find_sluice_bin
  export SLUICE_BIN
  profile=$(build_profile "$SLUICE_BIN")
fi
mkdir -p "$bench_dir"
bench_dir=$(cd "$bench_dir" && pwd)
results=$bench_dir/results.tsv
# Every row of this run, the scripts' (run_script passes it) and all.sh's own (record_result).
RESULTS_FILE=$results
scripts=$bench_dir/scripts.txt
rm -f "$results" "$scripts" "$bench_dir"/*.m "$bench_dir"/*.report
failed=()
skipped=()

size_of() { # size_of DEFAULT: EVENTS, or DEFAULT × SCALE
  echo "${fixed_events:-$(( $1 * scale ))}"
}

# run_script NAME VAR=VALUE... SCRIPT ARGS...: the script, with RESULTS_FILE, its stdout (its own
# report) into $bench_dir/NAME.report; a failure is noted and the next path runs.
run_script() {
  local name=$1; shift
  printf '%q ' "$@" | sed 's/ $//' >>"$scripts"
  echo >>"$scripts"
  echo "all: $name: $*" >&2
  if ! env RESULTS_FILE="$results" "$@" >"$bench_dir/$name.report"; then
    echo "all: $name failed" >&2
    failed+=("$name")
  fi
}

# run_bench N: `sluice bench --events N`, RUNS times. Two rows: seed-query with its own
# "JSON decode + plan" seconds (what it measures: decode and plan, no generating), and
# seed-query-process with the whole process's; both with the process's peak RSS and CPU.
run_bench() {
  local n=$1 run inner rss cpu
  local cmd=("$SLUICE_BIN" bench --events "$n")
  printf '%q ' "${cmd[@]}" | sed 's/ $//' >>"$scripts"
  echo >>"$scripts"
  : >"$bench_dir/bench.report"
  for run in $(seq 1 "$runs"); do
    echo "all: bench: sluice bench --events $n, run $run" >&2
    measure "sluice-bench-$run" "${cmd[@]}" || { cat "$bench_dir/sluice-bench-$run.err" >&2; return 1; }
    # The table's line `JSON decode + plan   SECONDS   EVENTS/S` (jobs/src/bench.rs print_table).
    inner=$(awk '/^JSON decode \+ plan / { print $(NF - 1) }' "$bench_dir/sluice-bench-$run.out")
    [ -n "$inner" ] || { echo "all: bench: no 'JSON decode + plan' line in its output" >&2; return 1; }
    read -r _ rss cpu <"$bench_dir/sluice-bench-$run.m" || return 1
    echo "$inner $rss $cpu" >"$bench_dir/sluice-decode-plan-$run.m"
    { [ "$runs" = 1 ] || echo "run $run:"; cat "$bench_dir/sluice-bench-$run.out"; } >>"$bench_dir/bench.report"
  done
  record_result seed-query sluice "$n" "$(best_run sluice-decode-plan)" "${cmd[@]}"
  record_result seed-query-process sluice "$n" "$(best_run sluice-bench)" "${cmd[@]}"
}

# run_stream N: `sluice bench-stream`, once. One row per throughput line of its table
# (jobs/src/bench_stream.rs print_tables: run, events, seconds, events/s), path stream-RUN, with
# the process's peak RSS and CPU (over all its runs).
run_stream() {
  local n=$1 rss cpu mode events seconds
  local cmd=("$SLUICE_BIN" bench-stream --brokers "$bootstrap" --events "$n")
  printf '%q ' "${cmd[@]}" | sed 's/ $//' >>"$scripts"
  echo >>"$scripts"
  echo "all: stream: sluice bench-stream --brokers $bootstrap --events $n" >&2
  measure sluice-stream "${cmd[@]}" || { tail -50 "$bench_dir/sluice-stream.err" >&2; return 1; }
  cp "$bench_dir/sluice-stream.out" "$bench_dir/stream.report"
  read -r _ rss cpu <"$bench_dir/sluice-stream.m" || return 1
  "$py" - "$bench_dir/sluice-stream.out" >"$bench_dir/stream.rows" <<'EOF' || return 1
import re, sys
rows = []
for line in open(sys.argv[1]):
    m = re.fullmatch(r"(\S.*?)\s+(\d+)\s+(\d+\.\d+)\s+\S+\s*", line)
    if m:
        rows.append([re.sub(r"[^a-z]+", "-", m.group(1).lower()).strip("-"), m.group(2), m.group(3)])
if not rows:
    sys.exit("all: stream: bench-stream printed no throughput rows")
# Each backlog run is preceded by its own `producer alone` row: named after that run.
for row, following in zip(rows, rows[1:]):
    if row[0] == "producer-alone":
        row[0] += "-before-" + following[0]
print("\n".join("\t".join(row) for row in rows))
EOF
  while IFS=$'\t' read -r mode events seconds; do
    record_result "stream-$mode" sluice "$events" "$seconds $rss $cpu" "${cmd[@]}"
  done <"$bench_dir/stream.rows"
}

# The seed query: flink.sh and `sluice bench` on the same number of events.
query_events=$(size_of 1000000)
for b in lake backfill flink bench stream; do
  wants "$b" || continue
  case $b in
    lake) run_script lake BENCH_DIR="$lake_dir" bash tests/bench/lake_load.sh "$(size_of 10000000)" ;;
    backfill) run_script backfill BENCH_DIR="$backfill_dir" EVENTS="$fixed_events" SCALE="$scale" \
      bash tests/bench/backfill.sh ;;
    flink) run_script flink BENCH_DIR="$flink_dir" LAKE_LOAD_DIR="$lake_dir" \
      bash tests/bench/flink.sh "$query_events" ;;
    bench) run_bench "$query_events" || { echo "all: bench failed" >&2; failed+=(bench); } ;;
    stream)
      if [ -z "$bootstrap" ]; then
        echo "all: stream: skipped (no SLUICE_TEST_BOOTSTRAP or BOOTSTRAP)" >&2
        skipped+=("stream (no broker: set SLUICE_TEST_BOOTSTRAP or BOOTSTRAP)")
      else
        run_stream "$(size_of 1000000)" || { echo "all: stream failed" >&2; failed+=(stream); }
      fi
      ;;
  esac
done
[ -z "$user_results" ] || [ ! -s "$results" ] || { mkdir -p "$(dirname "$user_results")"; cat "$results" >>"$user_results"; }

# The machine and the versions.
duckdb_version=
for b in lake backfill flink; do # the venv of a path that ran (its script checked the version)
  wants "$b" || continue
  case $b in lake) venv=$lake_dir/venv ;; backfill) venv=$backfill_dir/venv ;; flink) venv=$flink_dir/venv ;; esac
  duckdb_version=$("$venv/bin/python" -c 'import duckdb; print(duckdb.__version__)' 2>/dev/null) && break
done
flink_version=
if [ -s "$flink_dir/flink.out" ] && wants flink; then
  flink_version=$("$py" -c 'import json, sys; print(json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])["flink_version"])' \
    "$flink_dir/flink.out" 2>/dev/null) || flink_version=
fi
sluice_version=
[ -z "${SLUICE_BIN:-}" ] || sluice_version=$("$SLUICE_BIN" --version 2>/dev/null) || sluice_version=
java_version=
! command -v java >/dev/null || java_version=$(java -version 2>&1 | head -1) || java_version=
cpu_model=$(grep -m1 '^model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//') || cpu_model=
mem_gib=$(awk '/^MemTotal:/ { printf "%.1f", $2 / 1048576 }' /proc/meminfo 2>/dev/null) || mem_gib=
revision=$(git describe --always --dirty 2>/dev/null) || revision=

export ALL_PROFILE=$profile ALL_SLUICE_BIN=${SLUICE_BIN:-} ALL_SLUICE_VERSION=$sluice_version \
  ALL_REVISION=$revision ALL_CORES=$(nproc) ALL_CPU=$cpu_model ALL_MEM_GIB=$mem_gib \
  ALL_KERNEL="$(uname -sr)" ALL_DUCKDB=$duckdb_version ALL_DUCKDB_PIN=${DUCKDB_VERSION:-2.0.0} \
  ALL_FLINK=$flink_version ALL_PARALLELISM=${PARALLELISM:-2} ALL_JAVA=$java_version \
  ALL_PYTHON="$(python3 --version 2>&1)" ALL_RUNS=$runs ALL_SCRIPTS=$scripts \
  ALL_FAILED="${failed[*]}" ALL_SKIPPED="$(printf '%s\n' "${skipped[@]}")" ALL_DIR=$bench_dir
"$py" - "$results" <<'EOF' | tee "$bench_dir/report.md"
import os, sys

env = os.environ.get
rows = []
if os.path.exists(sys.argv[1]):
    for line in open(sys.argv[1]):
        path, engine, events, seconds, rate, rss, cpu, command = line.rstrip("\n").split("\t", 7)
        rows.append(dict(path=path, engine=engine, events=int(events), seconds=float(seconds),
                         rate=float(rate), rss=float(rss), cpu=float(cpu), command=command))

parallelism = env("ALL_PARALLELISM")
# path: (what it is, the peer's side)
flink_job = f"Flink job (submit → last row), file source, parallelism {parallelism}"
WHAT = {
    "lake-load": ("JSON lines → raw Delta: `sluice lake load`", "DuckDB `read_json` → Parquet"),
    "backfill-seed": ("raw Delta → view, seed shape (per minute): `sluice backfill`",
                      "DuckDB `GROUP BY` → Parquet"),
    "backfill-keyed": ("raw Delta → view, keyed shape (per customer, hour): `sluice backfill`",
                       "DuckDB `GROUP BY` → Parquet"),
    "seed-query": ("seed query, decode + plan: `sluice bench`, 1 thread", flink_job),
    "seed-query-process": ("seed query, whole process: `sluice bench`",
                           "Flink, Python + JVM start → exit"),
}
ENGINE = {"duckdb": "DuckDB", "flink": "Flink"}


def what(path):
    if path in WHAT:
        return WHAT[path]
    if path.startswith("stream-"):
        run = path[len("stream-"):]
        producer = run.startswith("producer-alone-before-")
        run = run.removeprefix("producer-alone-before-")
        for guarantee in ("exactly-once", "at-least-once"):
            if run.endswith("-" + guarantee):
                run = run[: -len(guarantee) - 1] + ", " + guarantee
        run = run.replace("-", " ", 1) if run.startswith("producer") else run
        if producer:
            run = f"producer alone, before the {run} run"
        return (f"speed layer through the broker, {run}: `sluice bench-stream`", None)
    return (path, None)


paths = []
for row in rows:
    if row["path"] not in paths:
        paths.append(row["path"])

profile = env("ALL_PROFILE")
build = {"release": "release build", "dev": "dev build (not optimized: build with "
         "`cargo build --release -p sluice` for representative figures)",
         "none": "no Sluice binary used"}[profile]
print("# Sluice beside its peers\n")
machine = f"{env('ALL_CORES')} cores"
if env("ALL_CPU"):
    machine += f" ({env('ALL_CPU')})"
if env("ALL_MEM_GIB"):
    machine += f", {env('ALL_MEM_GIB')} GiB of memory"
print(f"Sluice {build}: `{env('ALL_SLUICE_BIN') or '-'}` ({env('ALL_SLUICE_VERSION') or 'version unknown'}, "
      f"commit {env('ALL_REVISION') or 'unknown'}); {machine}; {env('ALL_KERNEL')}; "
      f"best of {env('ALL_RUNS')} run(s) each (bench-stream once).\n")

print("| path | Sluice events/s | Sluice RSS | peer | peer events/s | peer RSS | ratio |")
print("| --- | ---: | ---: | --- | ---: | ---: | --- |")
for path in paths:
    sluice = next((r for r in rows if r["path"] == path and r["engine"] == "sluice"), None)
    peer = next((r for r in rows if r["path"] == path and r["engine"] != "sluice"), None)
    label, peer_label = what(path)
    counts = sorted({r["events"] for r in (sluice, peer) if r})
    label += f" ({' / '.join(f'{n:,}' for n in counts)} events)"
    cells = [label]
    cells += [f"{sluice['rate']:,.0f}", f"{sluice['rss']:,.0f} MiB"] if sluice else ["—", "—"]
    if peer:
        cells += [peer_label or ENGINE.get(peer["engine"], peer["engine"]),
                  f"{peer['rate']:,.0f}", f"{peer['rss']:,.0f} MiB"]
    else:
        cells += ["— (none run)", "—", "—"]
    if sluice and peer:
        cells.append(f"{sluice['rate'] / max(peer['rate'], 1e-9):.2f}× events/s, "
                     f"{sluice['rss'] / max(peer['rss'], 1e-9):.2f}× RSS")
    else:
        cells.append("—")
    print("| " + " | ".join(cells) + " |")
if not rows:
    print("| (no path finished) | | | | | | |")
print("\nRatios are Sluice ÷ peer: above 1× events/s Sluice is faster; below 1× RSS it holds less "
      "memory. Peak RSS is the largest single process (`/usr/bin/time -v`), except Flink's: its "
      "Python process and JVM summed (psutil, every 50 ms).")

notes = []
if any(p == "lake-load" for p in paths):
    notes.append("JSON lines → raw Delta: Sluice hashes the file, decodes it with the stream's "
                 "decoder and checks and writes zstd Parquet in one Delta commit; DuckDB sniffs the "
                 "types and writes one snappy Parquet file. Both whole processes, every core.")
if any(p.startswith("backfill-") for p in paths):
    notes.append("raw Delta → view: both read the same raw table's Parquet files (backfill.sh's own "
                 "data, customer ids over 2 × EVENTS values); Sluice also writes the partial states "
                 "and commits the view to Delta, DuckDB writes finalized rows only.")
if any(r["path"].startswith("seed-query") and r["engine"] == "sluice" for r in rows):
    notes.append("seed query, Sluice: `sluice bench` generates its events in memory (3 ms apart, up "
                 "to 5 s of disorder; jobs/src/bench.rs); its decode + plan row is its own clock over "
                 "JSON decode and the plan on one thread, its RSS the whole process's (which holds "
                 "every event in memory); its whole-process row adds generating the events.")
if any(r["path"].startswith("seed-query") and r["engine"] == "flink" for r in rows):
    notes.append("seed query, Flink: the JSON-lines file (events 100 ms apart), so not the same data "
                 "nor the same work as `sluice bench`: its job row includes reading and parsing the "
                 f"file, on {parallelism} slot(s); its whole-process row adds starting Python and a "
                 "JVM. flink.sh checks its windows against DuckDB's.")
if any(p.startswith("stream-") for p in paths):
    latency = []
    report = os.path.join(env("ALL_DIR"), "stream.report")
    if os.path.exists(report):
        text = open(report).read().split("\n\n", 1)
        latency = text[1].strip().splitlines() if len(text) > 1 else []
    note = ("speed layer through the broker: seconds from bench-stream's own clock (producer, "
            "daemon and broker share the cores; backlog rows count from the daemon's first "
            "commit), RSS and CPU of its whole process over every run.")
    if len(latency) >= 3:
        # `produce -> <job>.speed latency at R events/s (...)`, `p50 ms p99 ms max ms`, values.
        names = latency[1].split()[::2]
        note += f" {latency[0]}: " + ", ".join(
            f"{name} {value} ms" for name, value in zip(names, latency[2].split())) + "."
    notes.append(note)
if notes:
    print("\nNotes:\n")
    for note in notes:
        print(f"- {note}")
if env("ALL_FAILED"):
    print(f"\n**Failed:** {env('ALL_FAILED')} (see stderr; not in the table).")
if env("ALL_SKIPPED").strip():
    print(f"\nSkipped: {'; '.join(env('ALL_SKIPPED').split(chr(10))).strip('; ')}.")

print("\n## Every row\n")
print("| path | engine | events | seconds | events/s | peak RSS | CPU |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
for r in rows:
    print(f"| {r['path']} | {r['engine']} | {r['events']:,} | {r['seconds']:.2f} | {r['rate']:,.0f} | "
          f"{r['rss']:,.0f} MiB | {r['cpu']:.0f}% |")

print("\n## Versions\n")
duck = env("ALL_DUCKDB") or f"{env('ALL_DUCKDB_PIN')} (pinned; no venv found)"
print(f"- Sluice: {env('ALL_SLUICE_VERSION') or '-'}, {profile} profile, `{env('ALL_SLUICE_BIN') or '-'}`")
print(f"- DuckDB: {duck} (Python package, in the scripts' venvs)")
print(f"- Flink: {env('ALL_FLINK') or 'not run'} (PyFlink, local mini-cluster, parallelism {parallelism})")
print(f"- Java: {env('ALL_JAVA') or 'none found'}; {env('ALL_PYTHON')} (venvs are made from python3)")

print("\n## Exact commands\n")
print("From the repository's root. What all.sh ran, in order (the scripts with SLUICE_BIN, "
      "RESULTS_FILE and what else of their variables was set in the environment):\n")
print("```")
scripts = env("ALL_SCRIPTS")
if scripts and os.path.exists(scripts):
    for line in open(scripts):
        print(f"$ {line.rstrip()}")
print("```\n")
print("Each measured command (the scripts' own reports below show what runs around them):\n")
print("```")
for r in rows:
    print(f"# {r['path']}, {r['engine']}")
    print(f"$ {r['command']}")
print("```")

for name, title in [("lake", "tests/bench/lake_load.sh"), ("backfill", "tests/bench/backfill.sh"),
                    ("flink", "tests/bench/flink.sh"), ("bench", "sluice bench"),
                    ("stream", "sluice bench-stream")]:
    report = os.path.join(env("ALL_DIR"), f"{name}.report")
    if os.path.exists(report) and os.path.getsize(report):
        print(f"\n## {title}, as it printed\n")
        text = open(report).read().rstrip("\n")
        print(text if name in ("lake", "backfill", "flink") else f"```\n{text}\n```")
EOF

[ "${#failed[@]}" -eq 0 ] || exit 1
