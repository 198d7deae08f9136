// The jobs page: every served job's state in one table (from `/v1/jobs`, with its data-quality
// checks linking to `#/quality/<job>`) with the newest sample of each (from
// `/v1/jobs/{job}/history?limit=1`: rates, per-partition lags, dead-letter and late counts, the
// batch runs seen).

import { getJSON, jobPath } from "./api.js";
import { badge, count, duration, facts, fill, h, num, table, time } from "./dom.js";

export function mount(ctx) {
  ctx.summary = h("section", { class: "card" }, h("p", { class: "muted" }, "Loading…"));
  ctx.details = h("div", { class: "grid" });
  fill(ctx.root, h("h1", {}, "Jobs"), ctx.summary, ctx.details);
}

function freshness(status) {
  if (status.freshness_seconds !== undefined && status.freshness_seconds !== null) {
    const text = duration(status.freshness_seconds * 1000);
    if (status.freshness_sla_seconds === null || status.freshness_sla_seconds === undefined) return text;
    const sla = duration(status.freshness_sla_seconds * 1000);
    return h("span", {}, `${text} / SLA ${sla} `, status.fresh === false ? badge("missed", "bad") : badge("ok", "good"));
  }
  return duration(status.freshness_ms);
}

function state(status) {
  if (status.ready) return badge("ready", "good");
  const parts = (status.loading || []).map((l) => l.part).join(", ");
  return h("span", {}, badge("loading", "warn"), " ", parts);
}

/** `2 (5 quarantined)`: the job's checks and the records the speed layer quarantined. */
function checks(status) {
  const list = status.checks || [];
  if (!list.length) return "none";
  const counted = list.filter((c) => c.speed_quarantined !== null && c.speed_quarantined !== undefined);
  if (!counted.length) return String(list.length);
  return `${list.length} (${count(counted.reduce((sum, c) => sum + c.speed_quarantined, 0))} quarantined)`;
}

function lastRun(run) {
  if (!run) return "–";
  return `${run.operation || "commit"} v${run.version} at ${time(run.at)}`;
}

function partitions(history) {
  const parts = history.partitions || [];
  if (!history.kafka.available) return h("p", { class: "muted" }, `Kafka: ${history.kafka.error}`);
  if (!parts.length) return h("p", { class: "muted" }, "No partitions read yet.");
  return table(
    [
      ["partition", (p) => p.partition, "num"],
      ["end offset", (p) => count(p.high), "num"],
      ["committed", (p) => count(p.committed), "num"],
      ["lag", (p) => count(p.lag_records), "num"],
    ],
    parts,
    { class: "partitions" },
    (p) => ({ dataset: { partition: p.partition, lag: p.lag_records } }),
  );
}

function backfills(history) {
  const runs = history.backfills || [];
  if (!runs.length) return h("p", { class: "muted" }, "No batch run seen yet.");
  return h("ul", { class: "runs" }, runs.map((r) => h("li", {}, lastRun(r), r.from || r.to ? ` (${time(r.from)} → ${time(r.to)})` : "")));
}

export async function update(ctx) {
  const { jobs } = await getJSON("v1/jobs");
  const histories = await Promise.all(jobs.map((j) => getJSON(jobPath(j.job, "/history?limit=1"))));
  if (ctx.gone) return;
  const rows = jobs.map((status, i) => {
    const history = histories[i];
    const sample = history.samples[history.samples.length - 1] || {};
    return { status, history, sample };
  });
  fill(
    ctx.summary,
    table(
      [
        ["job", ({ status }) => h("a", { href: `#/job/${encodeURIComponent(status.job)}` }, status.job)],
        ["state", ({ status }) => state(status)],
        ["version", ({ status }) => `v${status.version}`, "num"],
        ["cutoff", ({ status }) => time(status.cutoff)],
        ["watermark", ({ status }) => time(status.watermark)],
        ["lake complete to", ({ status }) => time(status.lake_complete_until)],
        ["freshness", ({ status }) => freshness(status)],
        ["events/s in", ({ sample }) => num(sample.events_in_per_s), "num"],
        ["consumed/s", ({ sample }) => num(sample.consumed_per_s), "num"],
        ["source lag", ({ status, sample }) => count(sample.source_lag_records ?? status.source_lag_records), "num"],
        ["speed lag", ({ status }) => count(status.speed_lag_records), "num"],
        ["DLQ", ({ status, history }) => h("a", { href: `#/dlq/${encodeURIComponent(status.job)}` }, count(history.dlq && history.dlq.records)), "num"],
        ["late", ({ history }) => count(history.late && history.late.records), "num"],
        ["checks", ({ status }) => h("a", { href: `#/quality/${encodeURIComponent(status.job)}` }, checks(status)), "num"],
        ["rows b/s/m", ({ status }) => `${count(status.rows.batch)} / ${count(status.rows.speed)} / ${count(status.rows.merged)}`, "num"],
        ["last batch run", ({ status }) => lastRun(status.last_batch_run)],
      ],
      rows,
      { class: "jobs" },
      ({ status, history, sample }) => ({
        dataset: {
          job: status.job,
          ready: status.ready,
          eventsPerS: sample.events_in_per_s ?? "",
          dlq: (history.dlq && history.dlq.records) ?? "",
          checks: (status.checks || []).length,
        },
      }),
    ),
  );
  fill(
    ctx.details,
    rows.map(({ status, history }) =>
      h("section", { class: "card", dataset: { jobCard: status.job } },
        h("h2", {}, h("a", { href: `#/job/${encodeURIComponent(status.job)}` }, status.job)),
        facts([
          ["source topic", status.source_topic],
          ["speed topic", status.speed_topic],
          ["view table", status.view_table],
          ["view key", (status.key_columns || []).join(", ") || "–"],
          ["snapshot at", time(status.snapshot_at)],
        ]),
        h("h3", {}, "Lag per source partition"),
        partitions(history),
        h("h3", {}, "Batch runs seen"),
        backfills(history),
      )),
  );
}
