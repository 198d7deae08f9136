// One job: its last hour as time series (throughput, lags, watermark delay, from the
// sampler's `/history`), its source rows per window with the band of `[anomalies]` and the
// anomalous windows marked (`/anomalies`), its merged view as a chart of one column per window
// start with the batch, speed and merged rows told apart and the cutoff drawn, and the newest
// rows.

import { ApiError, getJSON, jobPath } from "./api.js";
import { COLORS, RowsChart, TimeChart, ViewChart } from "./charts.js";
import { badge, count, duration, facts, fill, h, num, table, time } from "./dom.js";

/** The view's rows fetched: window starts from this long ago. */
const VIEW_SPAN_MS = 15 * 60 * 1000;
const VIEW_LIMIT = 5000;
const NEWEST_ROWS = 20;
const ALL_KEYS = "";

const isTime = (type) => /^Timestamp/.test(type);
const isNumber = (type) => /^(U?Int|Float|Decimal)/.test(type);

export function mount(ctx) {
  const job = ctx.params.job;
  ctx.state = { column: null, key: ALL_KEYS };
  ctx.head = h("div", { class: "card" }, h("p", { class: "muted" }, "Loading…"));
  const chart = (name) => h("div", { class: "chart", dataset: { chart: name } });
  const [throughput, lags, delay, view, windowRows] = ["throughput", "lag", "watermark-delay", "view", "window-rows"].map(chart);
  ctx.windowRows = windowRows;
  ctx.anomalyNote = h("p", { class: "muted" });
  ctx.anomalyList = h("div", { id: "anomaly-list" });
  ctx.columnSelect = h("select", { id: "view-column", onchange: () => redrawView(ctx) });
  ctx.keySelect = h("select", { id: "view-key", onchange: () => redrawView(ctx) });
  ctx.viewNote = h("p", { class: "muted" });
  ctx.rows = h("div", { class: "rows" });
  fill(
    ctx.root,
    h("h1", {}, h("a", { href: "#/" }, "Jobs"), " / ", job, " ",
      h("a", { class: "small", href: `#/dlq/${encodeURIComponent(job)}` }, "dead letters →"), " ",
      h("a", { class: "small", href: `#/quality/${encodeURIComponent(job)}` }, "quality →")),
    ctx.head,
    h("section", { class: "card" }, h("h2", {}, "The last hour"), throughput, lags, delay),
    h("section", { class: "card", id: "anomalies" },
      h("h2", {}, "Rows per window"), windowRows, ctx.anomalyNote, ctx.anomalyList),
    h("section", { class: "card" },
      h("h2", {}, "Merged view"),
      h("div", { class: "controls" },
        h("label", {}, "column ", ctx.columnSelect),
        h("label", {}, "key ", ctx.keySelect)),
      view,
      ctx.viewNote),
    h("section", { class: "card" }, h("h2", {}, "Newest rows"), ctx.rows),
  );
  ctx.charts = {
    throughput: new TimeChart(throughput, {
      title: "Throughput",
      left: "records/s",
      right: "diverted/s",
      series: [
        { label: "events in/s", stroke: "#2f6fdf" },
        { label: "consumed/s", stroke: "#e8832a" },
        { label: "DLQ/s", stroke: "#c0392b", scale: "right", dash: [4, 3] },
        { label: "late/s", stroke: "#8e44ad", scale: "right", dash: [4, 3] },
      ],
    }),
    lag: new TimeChart(lags, {
      title: "Lag (records)",
      left: "records",
      series: [
        { label: "source lag", stroke: "#2f6fdf" },
        { label: "speed lag", stroke: "#e8832a" },
      ],
    }),
    delay: new TimeChart(delay, {
      title: "Watermark delay and freshness (s)",
      left: "seconds",
      series: [
        { label: "watermark delay", stroke: "#27ae60" },
        { label: "freshness", stroke: "#7f8c8d" },
      ],
    }),
    view: new ViewChart(view, { title: "One column per window start, by origin" }),
    rows: new RowsChart(windowRows, { title: "Source rows per window, and the band of the windows before" }),
  };
}

export function unmount(ctx) {
  for (const chart of Object.values(ctx.charts || {})) chart.destroy();
}

function head(status) {
  return [
    facts([
      ["state", status.ready ? badge("ready", "good") : badge("loading", "warn")],
      ["version", `v${status.version}`],
      ["cutoff", time(status.cutoff)],
      ["watermark", time(status.watermark)],
      ["lake complete to", time(status.lake_complete_until)],
      ["freshness", duration(status.freshness_seconds !== undefined && status.freshness_seconds !== null ? status.freshness_seconds * 1000 : status.freshness_ms)],
      ["source lag", count(status.source_lag_records)],
      ["speed lag", count(status.speed_lag_records)],
      ["rows", `${count(status.rows.batch)} batch, ${count(status.rows.speed)} speed, ${count(status.rows.merged)} merged`],
      ["last batch run", status.last_batch_run ? `v${status.last_batch_run.version} at ${time(status.last_batch_run.at)}` : "–"],
      ["row-count anomalies", count(status.row_count_anomalies)],
    ]),
  ];
}

function drawHistory(ctx, history) {
  const samples = history.samples;
  const xs = samples.map((s) => s.at_ms / 1000);
  const col = (name, scale = 1) => samples.map((s) => (s[name] === null || s[name] === undefined ? null : s[name] * scale));
  ctx.charts.throughput.setData(xs, [col("events_in_per_s"), col("consumed_per_s"), col("dlq_per_s"), col("late_per_s")]);
  ctx.charts.lag.setData(xs, [col("source_lag_records"), col("speed_lag_records")]);
  ctx.charts.delay.setData(xs, [col("watermark_delay_ms", 0.001), col("freshness_ms", 0.001)]);
}

/** The row counts of `/anomalies`, the band and the anomalous windows, or why there are none. */
function drawAnomalies(ctx, data) {
  const rule = data.rule;
  ctx.windowRows.hidden = !rule;
  if (!rule) {
    ctx.charts.rows.setData([], [], [], [], [], []);
    fill(ctx.anomalyNote, "This job declares no [anomalies]: its rows per window are not judged (see docs/jobs.md).");
    fill(ctx.anomalyList);
    return;
  }
  const windows = data.windows;
  const xs = windows.map((w) => w.start_us / 1e6);
  const col = (name) => windows.map((w) => w[name]);
  const marks = data.anomalies.map((a) => ({ at: a.start_us / 1e6, rows: a.rows, direction: a.direction }));
  ctx.charts.rows.setData(xs, col("rows"), col("median"), col("low"), col("high"), marks);
  fill(
    ctx.anomalyNote,
    `Windows of ${rule.window}, each against the median of the ${rule.trailing} before it ± max(${num(rule.k, 1)} · 1.4826 · MAD, ${count(rule.min_deviation)} rows), once ${rule.min_history} exist; `,
    `complete to ${time(data.complete_until)}. `,
    data.anomalies.length ? badge(`${data.anomalies.length} anomalous`, "bad") : badge("none anomalous", "good"),
    data.error ? ` The last read of the raw table failed: ${data.error}` : "",
  );
  const newest = [...data.anomalies].reverse();
  fill(
    ctx.anomalyList,
    newest.length
      ? table(
        [
          ["window", (a) => time(a.start)],
          ["rows", (a) => count(a.rows), "num"],
          ["expected", (a) => `${num(a.low, 1)} – ${num(a.high, 1)}`, "num"],
          ["median", (a) => num(a.median, 1), "num"],
          ["", (a) => badge(a.direction, "bad")],
        ],
        newest,
        { class: "anomalies", dataset: { anomalies: newest.length } },
      )
      : null,
  );
}

function options(select, values, selected) {
  const same = select.options.length === values.length && values.every(([v], i) => select.options[i].value === v);
  if (!same) fill(select, values.map(([value, label]) => h("option", { value }, label)));
  select.value = selected;
}

function keyOf(row, keyColumns) {
  return keyColumns.map((k) => (row[k] === null || row[k] === undefined ? "null" : String(row[k]))).join(",");
}

function redrawView(ctx) {
  const data = ctx.view;
  if (!data) return;
  const { answer, shape } = data;
  const timeColumns = shape.columns.filter((c) => isTime(c.type)).map((c) => c.name);
  const x = timeColumns.find((n) => /start/i.test(n)) || timeColumns[0];
  const numbers = shape.columns.filter((c) => isNumber(c.type) && !shape.key_columns.includes(c.name)).map((c) => c.name);
  ctx.state.column = numbers.includes(ctx.columnSelect.value) ? ctx.columnSelect.value : ctx.state.column;
  if (!numbers.includes(ctx.state.column)) ctx.state.column = numbers[0] || null;
  options(ctx.columnSelect, numbers.map((n) => [n, n]), ctx.state.column || "");
  const keys = [...new Set(answer.rows.map((r) => keyOf(r.row, shape.key_columns)))].sort();
  if (ctx.keySelect.value !== undefined && ctx.keySelect.options.length) ctx.state.key = ctx.keySelect.value;
  if (ctx.state.key !== ALL_KEYS && !keys.includes(ctx.state.key)) ctx.state.key = ALL_KEYS;
  const keyChoices = shape.key_columns.length ? [[ALL_KEYS, "all keys (sum)"], ...keys.map((k) => [k, k])] : [[ALL_KEYS, "(no view key)"]];
  options(ctx.keySelect, keyChoices, ctx.state.key);

  const marks = [];
  if (answer.cutoff_us !== null) marks.push({ at: answer.cutoff_us / 1e6, label: "cutoff", color: COLORS.cutoff });
  if (answer.watermark_us !== null) marks.push({ at: answer.watermark_us / 1e6, label: "watermark", color: COLORS.watermark });
  const byX = new Map();
  const column = ctx.state.column;
  if (x && column) {
    for (const { origin, row } of answer.rows) {
      if (ctx.state.key !== ALL_KEYS && keyOf(row, shape.key_columns) !== ctx.state.key) continue;
      const at = Date.parse(row[x]) / 1000;
      const value = Number(row[column]);
      if (!Number.isFinite(at) || row[column] === null || !Number.isFinite(value)) continue;
      const sums = byX.get(at) || { batch: null, speed: null, merged: null };
      sums[origin] = (sums[origin] || 0) + value;
      byX.set(at, sums);
    }
  }
  const xs = [...byX.keys()].sort((a, b) => a - b);
  const series = (origin) => xs.map((t) => byX.get(t)[origin]);
  ctx.charts.view.setData(xs, series("batch"), series("speed"), series("merged"), marks);
  const byOrigin = { batch: 0, speed: 0, merged: 0 };
  for (const r of answer.rows) byOrigin[r.origin] += 1;
  fill(
    ctx.viewNote,
    !x ? "This job has no group window: its rows have no time to chart. " : "",
    `${count(answer.count)} rows since ${time(Date.now() - VIEW_SPAN_MS, { unit: "ms" })}${answer.truncated ? " (truncated)" : ""}: `,
    badge(`${byOrigin.batch} batch`, "batch"), " ", badge(`${byOrigin.speed} speed`, "speed"), " ", badge(`${byOrigin.merged} merged`, "merged"),
    ` — cutoff ${time(answer.cutoff)}, watermark ${time(answer.watermark)}. Rows below the cutoff come from the batch view, rows at or above it from the speed view.`,
  );

  const at = (r) => (x ? Date.parse(r.row[x]) || 0 : 0);
  const newest = [...answer.rows].sort((a, b) => at(b) - at(a) || keyOf(a.row, shape.key_columns).localeCompare(keyOf(b.row, shape.key_columns))).slice(0, NEWEST_ROWS);
  const cell = (name) => (r) => {
    const v = r.row[name];
    if (v === null || v === undefined) return "–";
    if (timeColumns.includes(name)) return time(v);
    if (typeof v === "number" && !Number.isInteger(v)) return num(v, 2);
    return typeof v === "object" ? JSON.stringify(v) : String(v);
  };
  fill(
    ctx.rows,
    newest.length
      ? table(
        [["origin", (r) => badge(r.origin)], ...shape.columns.map((c) => [c.name, cell(c.name), isNumber(c.type) ? "num" : null])],
        newest,
        { class: "newest", dataset: { rows: newest.length } },
        (r) => ({ class: `origin-${r.origin}` }),
      )
      : h("p", { class: "muted", dataset: { rows: 0 } }, "No rows yet: the merged view fills once the speed layer commits or a backfill runs."),
  );
}

export async function update(ctx) {
  const job = ctx.params.job;
  const [status, history] = await Promise.all([getJSON(jobPath(job)), getJSON(jobPath(job, "/history"))]);
  if (ctx.gone) return;
  fill(ctx.head, head(status));
  drawHistory(ctx, history);
  try {
    const anomalies = await getJSON(jobPath(job, "/anomalies"));
    if (ctx.gone) return;
    drawAnomalies(ctx, anomalies);
  } catch (e) {
    // A server without the endpoint, say: the rest of the page is still right.
    if (!(e instanceof ApiError) || e.status === 401) throw e;
    fill(ctx.anomalyNote, `Row-count anomalies are not available: ${e.message}`);
  }
  const params = new URLSearchParams({ limit: String(VIEW_LIMIT) });
  if (history.view.has_window) params.set("from", String(Date.now() - VIEW_SPAN_MS));
  try {
    const answer = await getJSON(jobPath(job, `/view?${params}`));
    if (ctx.gone) return;
    ctx.view = { answer, shape: history.view };
    redrawView(ctx);
  } catch (e) {
    // 503 while the batch view loads: the rest of the page is still right.
    if (!(e instanceof ApiError) || e.status !== 503) throw e;
    fill(ctx.viewNote, `The merged view is not ready: ${e.message}`);
  }
}
