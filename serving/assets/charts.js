// uPlot wrappers: time series of the sampler's history, the merged view by origin and the
// source rows per window with their anomaly band, each exposing what it drew as data
// attributes on its container (`data-points`: non-null values plotted; the view chart also
// `data-batch`, `data-speed`, `data-merged` and `data-cutoff`; the rows chart
// `data-anomalies`, the markers drawn), which is what the browser test reads.

/* global uPlot */

const HEIGHT = 220;

/** Axes in UTC, as every time on the pages. */
const utc = (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC");

export const COLORS = {
  batch: "#2f6fdf",
  speed: "#e8832a",
  merged: "#8e44ad",
  cutoff: "#c0392b",
  watermark: "#27ae60",
};

function widthOf(el) {
  return Math.max(320, Math.floor(el.getBoundingClientRect().width) || 600);
}

function nonNull(values) {
  let n = 0;
  for (const v of values) if (v !== null && v !== undefined && Number.isFinite(v)) n++;
  return n;
}

/** Keeps a chart as wide as its container. */
function follow(el, plot) {
  const observer = new ResizeObserver(() => {
    const width = widthOf(el);
    if (Math.abs(width - plot.width) > 2) plot.setSize({ width, height: HEIGHT });
  });
  observer.observe(el);
  return observer;
}

const shortValue = (u, v) => (v === null || v === undefined ? "–" : Math.abs(v) >= 100 ? Math.round(v).toLocaleString("en-US") : v.toFixed(2));

/**
 * A line chart over time. `series`: `[{label, stroke, scale?, dash?}]`; a series on scale
 * `right` gets its own axis on the right. Data are seconds since the epoch and values.
 */
export class TimeChart {
  constructor(el, { title, series, left = "", right = null }) {
    this.el = el;
    this.el.dataset.points = "0";
    const axes = [{}, { scale: "y", label: left, size: 64 }];
    const scales = { x: { time: true }, y: { auto: true, range: (u, min, max) => [Math.min(0, min), Math.max(1, max)] } };
    if (right !== null) {
      axes.push({ scale: "right", label: right, side: 1, size: 64, grid: { show: false } });
      scales.right = { auto: true, range: (u, min, max) => [Math.min(0, min), Math.max(1, max)] };
    }
    const opts = {
      title,
      tzDate: utc,
      width: widthOf(el),
      height: HEIGHT,
      scales,
      axes,
      series: [
        {},
        ...series.map((s) => ({
          label: s.label,
          stroke: s.stroke,
          width: 2,
          dash: s.dash,
          scale: s.scale === "right" ? "right" : "y",
          spanGaps: false,
          points: { show: false },
          value: shortValue,
        })),
      ],
    };
    this.plot = new uPlot(opts, [[], ...series.map(() => [])], el);
    this.observer = follow(el, this.plot);
  }

  /** `xs`: seconds; `ys`: one array per series, `null` for no value. */
  setData(xs, ys) {
    this.plot.setData([xs, ...ys]);
    this.el.dataset.points = String(ys.reduce((n, s) => n + nonNull(s), 0));
  }

  destroy() {
    this.observer.disconnect();
    this.plot.destroy();
  }
}

/**
 * The merged view: one value per window start and origin (batch, speed, merged), with the
 * cutoff and the speed watermark drawn as vertical lines.
 */
export class ViewChart {
  constructor(el, { title }) {
    this.el = el;
    this.marks = [];
    for (const key of ["points", "batch", "speed", "merged"]) this.el.dataset[key] = "0";
    this.el.dataset.cutoff = "";
    const origin = (label) => ({
      label,
      stroke: COLORS[label],
      fill: null,
      width: 1.5,
      spanGaps: false,
      points: { show: true, size: 7, space: 0, fill: COLORS[label] },
      value: shortValue,
    });
    const opts = {
      title,
      tzDate: utc,
      width: widthOf(el),
      height: HEIGHT + 40,
      scales: { x: { time: true, range: (u, min, max) => this.xRange(min, max) } },
      axes: [{}, { size: 64 }],
      series: [{}, origin("batch"), origin("speed"), origin("merged")],
      hooks: { draw: [(u) => this.drawMarks(u)] },
    };
    this.plot = new uPlot(opts, [[], [], [], []], el);
    this.observer = follow(el, this.plot);
  }

  /** `marks`: `[{at: seconds, label, color}]`. */
  setData(xs, batch, speed, merged, marks) {
    this.marks = marks;
    this.plot.setData([xs, batch, speed, merged]);
    const counts = { batch: nonNull(batch), speed: nonNull(speed), merged: nonNull(merged) };
    for (const [key, n] of Object.entries(counts)) this.el.dataset[key] = String(n);
    this.el.dataset.points = String(counts.batch + counts.speed + counts.merged);
    const cutoff = marks.find((m) => m.label === "cutoff");
    this.el.dataset.cutoff = cutoff ? String(cutoff.at) : "";
  }

  /** The windows' span, widened to show a mark that lies just outside it. */
  xRange(min, max) {
    if (min === null || max === null || !Number.isFinite(min) || !Number.isFinite(max)) {
      const now = Date.now() / 1000;
      return [now - 600, now];
    }
    let [lo, hi] = [min, max];
    const span = Math.max(max - min, 60);
    for (const mark of this.marks) {
      if (mark.at >= min - span && mark.at <= max + span) {
        lo = Math.min(lo, mark.at);
        hi = Math.max(hi, mark.at);
      }
    }
    if (hi - lo < 20) [lo, hi] = [lo - 10, hi + 10];
    return [lo, hi];
  }

  drawMarks(u) {
    const { ctx, bbox } = u;
    const ratio = uPlot.pxRatio || 1;
    for (const mark of this.marks) {
      const x = Math.round(u.valToPos(mark.at, "x", true));
      if (!Number.isFinite(x) || x < bbox.left || x > bbox.left + bbox.width) continue;
      ctx.save();
      ctx.strokeStyle = mark.color;
      ctx.fillStyle = mark.color;
      ctx.lineWidth = 2 * ratio;
      ctx.setLineDash([6 * ratio, 4 * ratio]);
      ctx.beginPath();
      ctx.moveTo(x, bbox.top);
      ctx.lineTo(x, bbox.top + bbox.height);
      ctx.stroke();
      ctx.font = `${12 * ratio}px sans-serif`;
      ctx.fillText(mark.label, x + 4 * ratio, bbox.top + 14 * ratio);
      ctx.restore();
    }
  }

  destroy() {
    this.observer.disconnect();
    this.plot.destroy();
  }
}

/**
 * Source rows per window (`GET /v1/jobs/{job}/anomalies`): the counts, the median of the
 * trailing windows and the band around it (filled), and a red marker on each anomalous window.
 */
export class RowsChart {
  constructor(el, { title }) {
    this.el = el;
    this.marks = [];
    this.el.dataset.points = "0";
    this.el.dataset.anomalies = "0";
    const line = (label, stroke, extra = {}) => ({
      label,
      stroke,
      width: 1,
      spanGaps: false,
      points: { show: false },
      value: shortValue,
      ...extra,
    });
    const opts = {
      title,
      tzDate: utc,
      width: widthOf(el),
      height: HEIGHT,
      scales: { x: { time: true }, y: { auto: true, range: (u, min, max) => [Math.min(0, min), Math.max(1, max)] } },
      axes: [{}, { label: "rows", size: 64 }],
      series: [
        {},
        line("rows", COLORS.batch, { width: 2, points: { show: true, size: 5, fill: COLORS.batch } }),
        line("median", "#7f8c8d", { dash: [4, 3] }),
        line("low", "#b7c0ca"),
        line("high", "#b7c0ca"),
      ],
      // The band: from `high` (series 4) down to `low` (series 3).
      bands: [{ series: [4, 3], fill: "rgba(47, 111, 223, 0.08)" }],
      hooks: { draw: [(u) => this.drawMarks(u)] },
    };
    this.plot = new uPlot(opts, [[], [], [], [], []], el);
    this.observer = follow(el, this.plot);
  }

  /** `xs`: window starts (seconds); `marks`: `[{at: seconds, rows, direction}]`. */
  setData(xs, rows, median, low, high, marks) {
    this.marks = marks;
    this.plot.setData([xs, rows, median, low, high]);
    this.el.dataset.points = String(nonNull(rows));
    this.el.dataset.anomalies = String(marks.length);
  }

  drawMarks(u) {
    const { ctx, bbox } = u;
    const ratio = uPlot.pxRatio || 1;
    for (const mark of this.marks) {
      const x = u.valToPos(mark.at, "x", true);
      const y = u.valToPos(mark.rows, "y", true);
      if (!Number.isFinite(x) || !Number.isFinite(y) || x < bbox.left || x > bbox.left + bbox.width) continue;
      ctx.save();
      ctx.fillStyle = COLORS.cutoff;
      ctx.strokeStyle = "#fff";
      ctx.lineWidth = 1.5 * ratio;
      ctx.beginPath();
      ctx.arc(x, y, 6 * ratio, 0, 2 * Math.PI);
      ctx.fill();
      ctx.stroke();
      ctx.font = `${11 * ratio}px sans-serif`;
      ctx.fillText(mark.direction, x + 8 * ratio, y - 6 * ratio);
      ctx.restore();
    }
  }

  destroy() {
    this.observer.disconnect();
    this.plot.destroy();
  }
}
