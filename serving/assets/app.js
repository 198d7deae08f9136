// The dashboard's shell: hash routes (`#/`, `#/job/<job>`, `#/dlq/<job>`, `#/quality/<job>`),
// a refresh every few seconds of the page shown, and the bearer token (asked once, kept in
// sessionStorage, sent as `Authorization: Bearer`). The body's data attributes say what the page is doing,
// for people and for the browser test: `data-page`, `data-state` (`loading`, `ok`, `error`,
// `needs-token`) and `data-refreshes` (successful refreshes of this page).

import { ApiError, token } from "./api.js";
import { fill, h } from "./dom.js";
import * as dlq from "./dlq.js";
import * as job from "./job.js";
import * as overview from "./overview.js";
import * as quality from "./quality.js";

const POLL_MS = 5000;
const PAGES = { overview, job, dlq, quality };

let current = null;
let timer = null;
let generation = 0;

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[0] === "job" && parts[1]) return { name: "job", params: { job: parts[1] } };
  if (parts[0] === "dlq") return { name: "dlq", params: { job: parts[1] || null } };
  if (parts[0] === "quality") return { name: "quality", params: { job: parts[1] || null } };
  return { name: "overview", params: {} };
}

function setState(state, message = "") {
  document.body.dataset.state = state;
  const notice = document.getElementById("notice");
  notice.hidden = !message;
  notice.className = `notice notice-${state}`;
  fill(notice, message);
  const needsToken = state === "needs-token";
  document.getElementById("token-form").hidden = !needsToken;
  document.getElementById("token-forget").hidden = !token.get();
  if (needsToken) document.getElementById("token-input").focus();
}

async function refresh() {
  const mine = ++generation;
  clearTimeout(timer);
  const page = current;
  try {
    await page.module.update(page.ctx);
    if (mine !== generation) return;
    document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes || 0) + 1);
    document.getElementById("updated").textContent = `updated ${new Date().toISOString().slice(11, 19)} UTC`;
    setState("ok");
  } catch (error) {
    if (mine !== generation) return;
    if (error instanceof ApiError && error.status === 401) {
      setState("needs-token", token.get()
        ? `The server refused the token: ${error.message}`
        : "This server needs a bearer token (it was started with --token): enter it above.");
    } else {
      setState("error", `Could not refresh: ${error.message}`);
    }
  } finally {
    if (mine === generation) timer = setTimeout(refresh, POLL_MS);
  }
}

function navigate() {
  if (current) {
    // A refresh of the old page still under way must not draw into it.
    current.ctx.gone = true;
    if (current.module.unmount) current.module.unmount(current.ctx);
  }
  const { name, params } = route();
  const root = document.getElementById("app");
  fill(root);
  current = { module: PAGES[name], ctx: { root, params } };
  document.body.dataset.page = name;
  document.body.dataset.refreshes = "0";
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.classList.toggle("active", link.dataset.nav === name);
  }
  current.module.mount(current.ctx);
  refresh();
}

function start() {
  document.getElementById("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = document.getElementById("token-input");
    token.set(input.value.trim());
    input.value = "";
    refresh();
  });
  document.getElementById("token-forget").addEventListener("click", () => {
    token.set(null);
    refresh();
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) refresh();
  });
  window.addEventListener("hashchange", navigate);
  setState("loading");
  navigate();
}

start();
