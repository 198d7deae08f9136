// Small DOM and formatting helpers. Every text the server sends (job names, rows, dead-letter
// bytes and headers) goes into the page as text nodes, never as HTML.

/** An element: `h("td", {class: "num"}, "12")`. Attributes starting with `on` are listeners;
 * `null`/`undefined`/`false` attributes and children are skipped. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "dataset") {
      for (const [k, v] of Object.entries(value)) el.dataset[k] = String(v);
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces the children of `el`. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** `2024-05-01T10:00:10Z` (or µs, or ms) as `10:00:10` (UTC), with the date when not today. */
export function time(value, { unit = "iso" } = {}) {
  if (value === null || value === undefined) return "–";
  const ms = unit === "us" ? value / 1000 : unit === "ms" ? value : Date.parse(value);
  if (!Number.isFinite(ms)) return String(value);
  const iso = new Date(ms).toISOString();
  const today = new Date().toISOString().slice(0, 10);
  const clock = iso.slice(11, 19);
  return iso.slice(0, 10) === today ? clock : `${iso.slice(0, 10)} ${clock}`;
}

/** A count with thousands separators; `–` for none. */
export function count(n) {
  if (n === null || n === undefined) return "–";
  return Number(n).toLocaleString("en-US");
}

/** A rate or other float, short. */
export function num(n, digits = 1) {
  if (n === null || n === undefined || !Number.isFinite(Number(n))) return "–";
  const v = Number(n);
  return Math.abs(v) >= 1000 ? Math.round(v).toLocaleString("en-US") : v.toFixed(digits);
}

/** Milliseconds as `850 ms`, `12.3 s`, `4.0 min`. */
export function duration(ms) {
  if (ms === null || ms === undefined) return "–";
  if (Math.abs(ms) < 1000) return `${Math.round(ms)} ms`;
  if (Math.abs(ms) < 120000) return `${(ms / 1000).toFixed(1)} s`;
  if (Math.abs(ms) < 7200000) return `${(ms / 60000).toFixed(1)} min`;
  return `${(ms / 3600000).toFixed(1)} h`;
}

/** A definition list from `[label, value]` pairs (values may be nodes). */
export function facts(pairs, attrs = {}) {
  return h("dl", { class: "facts", ...attrs },
    pairs.map(([label, value]) => [h("dt", {}, label), h("dd", {}, value)]));
}

/** A table: `columns` are `[header, cell(row), className?]`. */
export function table(columns, rows, attrs = {}, rowAttrs = () => ({})) {
  return h("table", attrs,
    h("thead", {}, h("tr", {}, columns.map(([name, , cls]) => h("th", { class: cls }, name)))),
    h("tbody", {}, rows.map((row) =>
      h("tr", rowAttrs(row), columns.map(([, cell, cls]) => h("td", { class: cls }, cell(row)))))));
}

/** A badge for an origin or a state. */
export function badge(text, kind = text) {
  return h("span", { class: `badge badge-${kind}` }, text);
}
