// Data-quality results of one job (`#/quality/<job>`; the first job without one): its
// `[[checks]]` from `/v1/jobs/{job}` (`checks`) with the rows the newest backfill found violating
// each (`batch_violations`) and the records the speed layer quarantined under each
// (`speed_quarantined`), and per quarantine check the newest of those records, picked by their
// `sluice.check` header from the dead letters `/v1/jobs/{job}/dlq` answers.

import { getJSON, jobPath } from "./api.js";
import { records } from "./dlq.js";
import { badge, count, fill, h, table, time } from "./dom.js";

/** Dead letters asked for: every one the sampler keeps, since a check's are a part of them. */
const LIMIT = 100;

export function mount(ctx) {
  ctx.open = new Set();
  ctx.title = h("h1", {}, "Data quality");
  ctx.picker = h("p", { class: "picker" });
  ctx.body = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  fill(ctx.root, ctx.title, ctx.picker, ctx.body);
}

const severity = (s) => badge(s, s === "quarantine" ? "bad" : "warn");

/** A count that may be unknown (null): `–` with the reason as a tooltip. */
function known(n, why) {
  return n === null || n === undefined ? h("span", { class: "muted", title: why }, "–") : count(n);
}

function checksTable(checks) {
  return table(
    [
      ["check", (c) => h("code", {}, c.name)],
      ["kind", (c) => c.check],
      ["severity", (c) => severity(c.severity)],
      ["column", (c) => (c.column === null ? h("span", { class: "muted" }, "–") : c.column)],
      ["rule", (c) => h("code", { class: "rule" }, c.rule)],
      ["batch violations", (c) => known(c.batch_violations, "the newest backfill recorded no count for this check"), "num"],
      ["speed quarantined", (c) => known(c.speed_quarantined, "the dead-letter topic has not been read to its end yet"), "num"],
    ],
    checks,
    { class: "checks" },
    (c) => ({
      dataset: {
        check: c.name,
        severity: c.severity,
        batchViolations: c.batch_violations ?? "",
        speedQuarantined: c.speed_quarantined ?? "",
      },
    }),
  );
}

/** Where the two counts come from, for the reader of the table. */
function sources(status, dlq) {
  const run = status.last_batch_run;
  const batch = run
    ? `Batch violations: rows of the newest backfill (view table v${run.version} at ${time(run.at)}, buckets ${time(run.from)} → ${time(run.to)}) that violate each check.`
    : "Batch violations: no backfill has run yet.";
  let speed;
  if (!dlq.available) speed = `Speed quarantined: ${dlq.topic} is not read (${dlq.unavailable}).`;
  else if (!dlq.complete) speed = `Speed quarantined: ${dlq.topic} is still being counted from its start.`;
  else speed = `Speed quarantined: records in ${dlq.topic} whose sluice.check header names the check (${count(dlq.records)} dead letters in all). Warn checks quarantine nothing; the speed layer counts their violations in the daemon's sluice_check_violations_total.`;
  return [h("p", { class: "muted" }, batch), h("p", { class: "muted" }, speed)];
}

function quarantinedBy(ctx, check, dlq) {
  const mine = dlq.newest.filter((r) => r.check === check.name);
  return h("section", { class: "card", dataset: { quarantinedBy: check.name, shown: mine.length } },
    h("h2", {}, "Quarantined by ", h("code", {}, check.name)),
    h("p", { class: "muted" }, known(check.speed_quarantined, "not counted yet"), " in all; ",
      `these are the ones among the ${count(dlq.newest.length)} newest dead letters of any kind:`),
    records(ctx, mine, "quarantined-record"));
}

export async function update(ctx) {
  let job = ctx.params.job;
  const { jobs } = await getJSON("v1/jobs");
  if (!job && jobs.length) job = jobs[0].job;
  fill(ctx.picker, "Job: ", jobs.map((j) => [
    j.job === job ? h("strong", {}, j.job) : h("a", { href: `#/quality/${encodeURIComponent(j.job)}` }, j.job), " "]));
  if (!job) {
    fill(ctx.body, h("p", { class: "muted" }, "No jobs are served."));
    return;
  }
  const [status, letters] = await Promise.all([getJSON(jobPath(job)), getJSON(jobPath(job, `/dlq?limit=${LIMIT}`))]);
  if (ctx.gone) return;
  fill(ctx.title, h("a", { href: "#/" }, "Jobs"), " / ", h("a", { href: `#/job/${encodeURIComponent(job)}` }, job), " / quality ",
    h("a", { class: "small", href: `#/dlq/${encodeURIComponent(job)}` }, "dead letters →"));
  const checks = status.checks || [];
  if (!checks.length) {
    fill(ctx.body, h("section", { class: "card", dataset: { checks: 0, job } },
      h("p", {}, "This job declares no data-quality checks (", h("code", {}, "[[checks]]"), " in its job file; see docs/jobs.md).")));
    return;
  }
  const dlq = letters.dlq;
  fill(
    ctx.body,
    h("section", { class: "card", dataset: { checks: checks.length, job } },
      h("h2", {}, "Checks"),
      checksTable(checks),
      sources(status, dlq)),
    checks.filter((c) => c.severity === "quarantine").map((c) => quarantinedBy(ctx, c, dlq)),
  );
}
