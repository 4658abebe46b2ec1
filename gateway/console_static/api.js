// Fetch wrapper for the console JSON API.
//
// The CSRF token lives in this module's variable only: never in localStorage, sessionStorage
// or a cookie (CONTRACT.md). Every non-GET request carries it as X-CSRF-Token.

let csrf = null;
let unauthorized = () => {};

export function setCsrf(token) {
  csrf = token || null;
}

/** Called on any 401 from the API (session gone or expired). */
export function onUnauthorized(fn) {
  unauthorized = fn;
}

export class ApiError extends Error {
  constructor(status, body) {
    const code = (body && body.error) || `http_${status}`;
    const detail = (body && body.detail) || '';
    super(detail ? `${code}: ${detail}` : code);
    this.status = status;
    this.code = code;
    this.detail = detail;
    this.body = body;
  }
}

/**
 * api(method, path, body?, {signal, quiet401}) -> parsed JSON (null for 204).
 * quiet401: do not treat a 401 as "session ended" (sign-in and the initial session probe).
 */
export async function api(method, path, body, opts = {}) {
  const headers = { Accept: 'application/json' };
  const init = { method, headers, credentials: 'same-origin', cache: 'no-store' };
  if (opts.signal) init.signal = opts.signal;
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  if (method !== 'GET' && method !== 'HEAD' && csrf) headers['X-CSRF-Token'] = csrf;

  const res = await fetch(path, init);
  let data = null;
  if (res.status !== 204) {
    const text = await res.text();
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = { error: `http_${res.status}`, detail: text.slice(0, 200) };
      }
    }
  }
  if (!res.ok) {
    if (res.status === 401 && !opts.quiet401) unauthorized();
    throw new ApiError(res.status, data);
  }
  return data;
}

export const get = (path, opts) => api('GET', path, undefined, opts);
export const post = (path, body, opts) => api('POST', path, body, opts);

/** Query string from an object, skipping empty values. */
export function qs(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}

export function isAbort(err) {
  return err && err.name === 'AbortError';
}

/** A random UUID; crypto.randomUUID exists only in secure contexts (https or localhost). */
export function uuid() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/**
 * Run `fn(signal)` now and then every `ms` after each run ends, so at most one request is in
 * flight. Skipped while the tab is hidden. Returns stop(), which also aborts a running fetch.
 */
export function poll(fn, ms) {
  let stopped = false;
  let timer = null;
  let ctrl = null;
  async function tick() {
    if (stopped) return;
    if (!document.hidden) {
      ctrl = new AbortController();
      try {
        await fn(ctrl.signal);
      } catch (err) {
        // API errors are shown by the view; anything else is a bug worth a console line.
        if (!isAbort(err) && !(err instanceof ApiError)) console.warn('poll:', err);
      }
      ctrl = null;
    }
    if (!stopped) timer = setTimeout(tick, ms);
  }
  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
    if (ctrl) ctrl.abort();
  };
}
