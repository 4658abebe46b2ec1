// DOM building without innerHTML: every piece of data goes in through textContent or an
// attribute value, so nothing the API returns can become markup (CSP + XSS safety).

/**
 * h('a', {href: '#/x', class: 'big', dataset: {sku}}, 'text', childNode, [more]) -> element.
 * 'style' is refused on purpose: the CSP forbids inline style attributes; use a class or
 * set el.style.width through the CSSOM instead.
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'style') throw new Error('h(): no style attribute (CSP); use a class or el.style');
      if (k === 'class') el.className = v;
      else if (k === 'dataset') {
        for (const [dk, dv] of Object.entries(v)) if (dv !== undefined && dv !== null) el.dataset[dk] = String(dv);
      } else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else if (k === 'value' || k === 'checked' || k === 'disabled' || k === 'selected') el[k] = v;
      else el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
}

export function $(sel, root = document) {
  return root.querySelector(sel);
}

/** Set text only when it changed (keeps selections and avoids needless layout). */
export function setText(el, text) {
  const s = String(text);
  if (el.textContent !== s) el.textContent = s;
}

/**
 * Keyed table body update: one row per key, rebuilt only when its item changed, so links and
 * buttons under the pointer survive a refresh that did not touch their row.
 * makeRow(item) -> <tr>; the row gets data-sig to detect changes.
 */
export function syncRows(tbody, items, keyOf, makeRow) {
  const old = new Map();
  for (const tr of Array.from(tbody.children)) old.set(tr.dataset.key, tr);
  const rows = [];
  for (const item of items) {
    const key = String(keyOf(item));
    const sig = JSON.stringify(item);
    let tr = old.get(key);
    if (!tr || tr.dataset.sig !== sig) {
      tr = makeRow(item);
      tr.dataset.key = key;
      tr.dataset.sig = sig;
    }
    rows.push(tr);
  }
  // Only touch the DOM when order or membership changed.
  const same = rows.length === tbody.children.length && rows.every((r, i) => tbody.children[i] === r);
  if (!same) tbody.replaceChildren(...rows);
}

// ---- formatting --------------------------------------------------------------------------

const pad = (n) => String(n).padStart(2, '0');

/** Local time, "2026-12-07 00:32:20". */
export function fmtTime(ms) {
  if (!ms) return '—';
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function fmtClock(ms) {
  if (!ms) return '—';
  const d = new Date(ms);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** "12 s ago", "3 min ago", ... */
export function fmtAgo(ms, now = Date.now()) {
  if (!ms) return '—';
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return fmtTime(ms);
}

export function fmtMs(ms) {
  if (ms === null || ms === undefined) return '—';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
}

export function fmtRate(x) {
  if (x === null || x === undefined) return '—';
  return x >= 100 ? String(Math.round(x)) : x.toFixed(1);
}

/** {reserved: 2, on_hand: -1} -> "reserved +2, on_hand −1" */
export function fmtDelta(delta) {
  if (!delta) return '';
  return Object.entries(delta)
    .map(([k, v]) => `${k} ${v > 0 ? '+' : ''}${v}`)
    .join(', ');
}

/** "#/events?type=hold&channel=shop" from a filter object (empty values dropped). */
export function eventsHref(filters) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(filters || {})) if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  const s = q.toString();
  return s ? `#/events?${s}` : '#/events';
}

export function stockHref(sku) {
  return `#/stock?sku=${encodeURIComponent(sku)}`;
}

/** A small status line each view owns for its errors. */
export function statusLine() {
  return h('p', { class: 'status', role: 'status' });
}

export function showError(el, err) {
  el.classList.toggle('error', !!err);
  setText(el, err ? (err.message || String(err)) : '');
}
