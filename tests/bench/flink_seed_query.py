"""Seed 000's job in PyFlink's Table API, streaming mode, over a bounded JSON-lines file.

Run by tests/bench/flink.sh inside its venv; not part of the test suite. It exists so the
benchmark's Flink number comes from the job's own SQL (read from the job's TOML, not a copy
that could drift), in the mode Flink would run it against Kafka: streaming, event time with
the job's watermark delay, windows fired by watermarks (the bounded source's end sends the
final one, so the streaming job finishes by itself).

    python flink_seed_query.py JSONL JOB_TOML PARALLELISM RESULT_CSV

Results are collected to the client (a few rows per minute of event time, so collecting costs
nothing next to the job) and written as CSV for the shell's DuckDB check. On stdout, one JSON
object: seconds to start the JVM and the table environment, seconds from submitting the job to
its last row, the sampled peak RSS of this process plus its children (the JVM is one), and the
CPU the tree used during the job.
"""

import csv
import datetime
import json
import os
import re
import sys
import threading
import time
import tomllib

import psutil

EPOCH = datetime.datetime(1970, 1, 1)


class TreeSampler:
    """Samples the summed RSS of this process and its descendants.

    /usr/bin/time -v reports only the largest single process, and here the work happens in a
    JVM that Python starts, so the tree has to be summed to be comparable with a single-process
    peer. Shared pages are counted once per process, which slightly overstates the sum.
    """

    def __init__(self, interval):
        self.interval = interval
        self.peak = 0
        self.root = psutil.Process()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def tree(self):
        return [self.root, *self.root.children(recursive=True)]

    def rss(self):
        total = 0
        for proc in self.tree():
            try:
                total += proc.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total

    def cpu_seconds(self):
        total = 0.0
        for proc in self.tree():
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return total

    def run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.rss())
            self.stop.wait(self.interval)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.rss())


def reap_jvm():
    """Ends PyFlink's gateway JVM and waits for it.

    PyFlink never waits for the JVM it starts (it exits by itself some seconds after Python
    has gone), so /usr/bin/time would count neither its CPU nor its memory: a child's usage
    reaches the parent's wait only if the parent reaps it. Ending it here, once the job has
    finished, makes the whole-process figures cover the JVM and ends the run when its work does.
    """
    for child in psutil.Process().children():
        try:
            if os.path.basename(child.exe()) != "java":
                continue
            child.terminate()
            try:
                child.wait(30)
            except psutil.TimeoutExpired:
                child.kill()
                child.wait()
        except psutil.NoSuchProcess:
            pass


def seconds(delay):
    match = re.fullmatch(r"(\d+)(ms|s|m)", delay.strip())
    if match is None:
        raise SystemExit(f"watermark_delay {delay!r}: expected e.g. 500ms, 5s or 1m")
    value, unit = int(match.group(1)), match.group(2)
    return value / 1000 if unit == "ms" else value * (60 if unit == "m" else 1)


def main():
    if len(sys.argv) != 5:
        raise SystemExit(__doc__)
    data, job_path, parallelism, result_csv = sys.argv[1:]
    with open(job_path, "rb") as f:
        job = tomllib.load(f)
    source = job["source"]
    table, time_field = source["table"], source["event_time"]
    delay_ms = round(seconds(source["watermark_delay"]) * 1000)
    # The file holds event_time as epoch milliseconds, so the rowtime is a computed column; the
    # job's SQL refers to the rowtime by the field's name, renamed here to that column.
    query = re.sub(rf"\b{re.escape(time_field)}\b", "ts", job["transform"]["sql"])

    start = time.monotonic()
    with TreeSampler(0.05) as sampler:
        from pyflink.table import EnvironmentSettings, TableEnvironment

        env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
        config = env.get_config()
        config.set("parallelism.default", parallelism)
        config.set("table.exec.resource.default-parallelism", parallelism)
        config.set("table.local-time-zone", "UTC")
        types = {"string": "STRING", "float64": "DOUBLE", "int64": "BIGINT",
                 "timestamp": "BIGINT", "bool": "BOOLEAN"}
        columns = ",\n  ".join(
            f"`{f['name']}` {types[f['type']]}" for f in source["fields"])
        env.execute_sql(f"""
CREATE TABLE {table} (
  {columns},
  ts AS TO_TIMESTAMP_LTZ(`{time_field}`, 3),
  WATERMARK FOR ts AS ts - INTERVAL '{delay_ms / 1000:g}' SECOND
) WITH (
  'connector' = 'filesystem',
  'path' = 'file://{os.path.abspath(data)}',
  'format' = 'json'
)""")
        started = time.monotonic()
        cpu_before = sampler.cpu_seconds()
        rows = []
        with env.execute_sql(query).collect() as results:
            for row in results:
                rows.append(row)
        finished = time.monotonic()
        cpu_job = sampler.cpu_seconds() - cpu_before
        reap_jvm()

    with open(result_csv, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["window_start_ms", "total_orders", "total_revenue", "avg_order_value"])
        for row in rows:
            # TUMBLE_START comes back as a naive TIMESTAMP(3) in the session's zone, UTC.
            start_ms = (row[0] - EPOCH) // datetime.timedelta(milliseconds=1)
            out.writerow([start_ms, row[2], repr(row[3]), repr(row[4])])
    json.dump({
        "startup_seconds": started - start,
        "job_seconds": finished - started,
        "job_cpu_percent": 100 * cpu_job / max(finished - started, 1e-3),
        "tree_peak_rss_kib": sampler.peak // 1024,
        "result_rows": len(rows),
        "flink_version": __import__("pyflink.version", fromlist=["__version__"]).__version__,
    }, sys.stdout)
    print()
    sys.stdout.flush()
    # The JVM is gone, so py4j's finalizers and threads would only fail to reach it at exit and
    # fill stderr with tracebacks; there is nothing left to clean up.
    os._exit(0)


if __name__ == "__main__":
    main()
