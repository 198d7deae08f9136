// The serving API as the pages call it: relative URLs (the page may sit behind a proxy
// path), the bearer token from sessionStorage when the user gave one, JSON errors as
// exceptions that keep the status and the server's message.

const TOKEN_KEY = "sluice.token";

export class ApiError extends Error {
  constructor(status, body, path) {
    super((body && body.message) || `HTTP ${status} on ${path}`);
    this.status = status;
    this.code = body && body.error;
    this.path = path;
  }
}

export const token = {
  get() {
    return sessionStorage.getItem(TOKEN_KEY);
  },
  set(value) {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
  },
};

/** GET `path` (relative, e.g. `v1/jobs`) as JSON. */
export async function getJSON(path) {
  const headers = { Accept: "application/json" };
  const bearer = token.get();
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  const response = await fetch(path, { headers, cache: "no-store" });
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) throw new ApiError(response.status, body, path);
  return body;
}

export const jobPath = (job, tail = "") => `v1/jobs/${encodeURIComponent(job)}${tail}`;
