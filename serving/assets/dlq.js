// Dead letters of one job (`#/dlq/<job>`; the first job without one): counts by error type
// (and by data-quality check) and the newest records with their headers, from
// `/v1/jobs/{job}/dlq`, which answers what the server's sampler read of `<job>.dlq` and
// `<job>.late`. Record bytes are shown as text (or hex when they are not UTF-8), always as text
// nodes.

import { getJSON, jobPath } from "./api.js";
import { badge, count, fill, h, table, time } from "./dom.js";

const LIMIT = 50;

export function mount(ctx) {
  ctx.open = new Set();
  ctx.picker = h("p", { class: "picker" });
  ctx.body = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  fill(ctx.root, h("h1", {}, "Dead letters"), ctx.picker, ctx.body);
}

/** The value of `record`'s header `name` (null when it has none). */
export function header(record, name) {
  const found = record.headers.find((x) => x.name === name);
  return found ? found.value : null;
}

function bytes(clipped) {
  if (!clipped) return h("span", { class: "muted" }, "null");
  const text = clipped.text !== undefined ? clipped.text : `0x${clipped.hex}`;
  return h("span", { class: clipped.text !== undefined ? "bytes" : "bytes hex" }, text,
    clipped.cut ? h("span", { class: "muted" }, ` … (${count(clipped.size)} bytes)`) : "");
}

function headers(ctx, record, table) {
  // Refreshes redraw the table: the records a person opened stay open.
  const id = `${table}:${record.partition}/${record.offset}`;
  const toggled = (event) => (event.target.open ? ctx.open.add(id) : ctx.open.delete(id));
  return h("details", { open: ctx.open.has(id), ontoggle: toggled },
    h("summary", {}, `${record.headers.length + record.more_headers} headers`),
    h("dl", { class: "headers" },
      record.headers.map((x) => [h("dt", {}, x.name), h("dd", {}, x.value === null ? h("span", { class: "muted" }, "null") : x.value)]),
      record.more_headers ? h("dd", { class: "muted" }, `and ${record.more_headers} more`) : null));
}

/** A table of dead letters (`list`, newest first), each row of class `className`; the records
 * a person opened (`ctx.open`) stay open across refreshes. */
export function records(ctx, list, className) {
  if (!list.length) return h("p", { class: "muted" }, "None.");
  return table(
    [
      ["time", (r) => time(r.timestamp_ms, { unit: "ms" })],
      ["partition/offset", (r) => `${r.partition}/${r.offset}`, "num"],
      ["error type", (r) => [badge(r.error_type, "error"), r.check ? [" ", h("code", {}, r.check)] : null]],
      ["message", (r) => header(r, "sluice.error.message") || "–"],
      ["source", (r) => {
        const topic = header(r, "sluice.source.topic");
        return topic ? `${topic} [${header(r, "sluice.source.partition")}] @${header(r, "sluice.source.offset")}` : "–";
      }],
      ["value", (r) => bytes(r.value)],
      ["headers", (r) => headers(ctx, r, className)],
    ],
    list,
    { class: `letters ${className}` },
    () => ({ class: className }),
  );
}

function topic(ctx, part, title, className) {
  if (!part.available) {
    return h("section", { class: "card", dataset: { topic: part.topic, available: false } },
      h("h2", {}, title, " ", h("code", {}, part.topic)),
      h("p", { class: "notice-inline" }, `Not read: ${part.unavailable}`));
  }
  const total = part.records || 0;
  const types = Object.entries(part.by_error_type).sort((a, b) => b[1] - a[1]);
  return h("section", { class: "card", dataset: { topic: part.topic, available: true, records: total, complete: part.complete } },
    h("h2", {}, title, " ", h("code", {}, part.topic)),
    h("p", {}, `${count(total)} records`, part.complete ? "" : " so far (still counting the topic from its start)"),
    types.length
      ? table(
        [
          ["error type", ([name]) => badge(name, "error")],
          ["records", ([, n]) => count(n), "num"],
          ["share", ([, n]) => h("progress", { max: total || 1, value: n }), "bar"],
        ],
        types,
        { class: "by-type" },
        ([name, n]) => ({ dataset: { errorType: name, records: n } }),
      )
      : null,
    byCheck(part),
    h("h3", {}, `Newest ${Math.min(part.newest.length, LIMIT)} (of the ${part.kept} kept)`),
    records(ctx, part.newest, className));
}

/** The records quarantined by each data-quality check (`sluice.check`), when there are any. */
function byCheck(part) {
  const checks = Object.entries(part.by_check || {}).sort((a, b) => b[1] - a[1]);
  if (!checks.length) return null;
  return [
    h("h3", {}, "Quarantined by check"),
    table(
      [
        ["check", ([name]) => h("code", {}, name)],
        ["records", ([, n]) => count(n), "num"],
      ],
      checks,
      { class: "by-check" },
      ([name, n]) => ({ dataset: { check: name, records: n } }),
    ),
  ];
}

export async function update(ctx) {
  let job = ctx.params.job;
  const { jobs } = await getJSON("v1/jobs");
  if (!job && jobs.length) job = jobs[0].job;
  fill(ctx.picker, "Job: ", jobs.map((j) => [
    j.job === job ? h("strong", {}, j.job) : h("a", { href: `#/dlq/${encodeURIComponent(j.job)}` }, j.job), " "]));
  if (!job) {
    fill(ctx.body, h("p", { class: "muted" }, "No jobs are served."));
    return;
  }
  const answer = await getJSON(jobPath(job, `/dlq?limit=${LIMIT}`));
  if (ctx.gone) return;
  fill(
    ctx.body,
    answer.kafka.available ? null : h("p", { class: "notice-inline" }, `Kafka: ${answer.kafka.error}`),
    h("div", { dataset: { dlqRecords: answer.dlq.records ?? "", job } },
      topic(ctx, answer.dlq, "Dead-letter topic", "dlq-record"),
      topic(ctx, answer.late, "Late records", "late-record")),
  );
}
