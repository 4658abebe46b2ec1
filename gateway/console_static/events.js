// Events: the tenant's stock changes, filtered by SKU, type, channel, reference and time.
// Filters live in the hash (#/events?sku=X&channel=Y&since=<ms>) so every number elsewhere in
// the console can link here; applying the form rewrites the hash, which re-mounts this view.

import { get, qs, isAbort } from './api.js';
import { h, setText, statusLine, showError, eventsHref, fmtTime, fmtDelta } from './dom.js';
import { navigate } from './app.js';

const PAGE = 100;
const TYPES = ['hold', 'release', 'expire', 'commit', 'fulfil', 'cancel', 'restock', 'adjust', 'oversell_rejected',
  'bundle', 'extend', 'incoming', 'receive', 'allocation'];
const FIELDS = ['sku', 'type', 'channel', 'ref', 'since', 'until'];

const pad = (n) => String(n).padStart(2, '0');

/** ms -> the local "YYYY-MM-DDTHH:MM:SS" a datetime-local input takes. */
function toLocalInput(ms) {
  const n = Number(ms);
  if (!Number.isFinite(n) || n <= 0) return '';
  const d = new Date(n);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** datetime-local value (local time) -> ms, or '' when empty/invalid. */
function fromLocalInput(v) {
  if (!v) return '';
  const ms = new Date(v).getTime();
  return Number.isFinite(ms) ? ms : '';
}

export function mount(root, params) {
  const filters = {};
  for (const f of FIELDS) filters[f] = params.get(f) || '';

  const status = statusLine();
  const input = (name, label, extra = {}) => h('label', null, label, h('input', { name, type: 'text', value: filters[name], autocomplete: 'off', spellcheck: 'false', ...extra }));
  const typeSel = h('select', { name: 'type' }, h('option', { value: '' }, 'any'), TYPES.map((t) => h('option', { value: t }, t)));
  typeSel.value = TYPES.includes(filters.type) ? filters.type : '';
  const form = h('form', { id: 'event-filters', class: 'filters card', autocomplete: 'off' },
    input('sku', 'SKU'),
    h('label', null, 'Type', typeSel),
    input('channel', 'Channel'),
    input('ref', 'Order / refund / hold', { placeholder: 'id' }),
    h('label', null, 'Since', h('input', { name: 'since', type: 'datetime-local', step: '1', value: toLocalInput(filters.since) })),
    h('label', null, 'Until', h('input', { name: 'until', type: 'datetime-local', step: '1', value: toLocalInput(filters.until) })),
    h('div', { class: 'filter-buttons' },
      h('button', { id: 'events-apply', type: 'submit', class: 'btn btn-primary' }, 'Apply'),
      h('a', { href: '#/events', class: 'btn btn-quiet', id: 'events-clear' }, 'Clear')));

  const tbody = h('tbody');
  const more = h('button', { id: 'events-more', type: 'button', class: 'btn', hidden: true }, 'Load more');
  const count = h('span', { id: 'events-count', class: 'muted' });

  root.append(
    h('div', { class: 'view-head' }, h('h2', null, 'Events'), count, status),
    form,
    h('div', { class: 'card table-wrap' },
      h('table', { id: 'events-table', class: 'table' },
        h('thead', null, h('tr', null, ['Time', 'Type', 'SKU', 'Location', 'Delta', 'Source', 'Reason', 'Idempotency key'].map((t) => h('th', { scope: 'col' }, t)))),
        tbody),
      h('div', { class: 'more' }, more)),
  );

  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const fd = new FormData(form);
    const next = {};
    for (const f of ['sku', 'type', 'channel', 'ref']) next[f] = String(fd.get(f) || '').trim();
    next.since = fromLocalInput(String(fd.get('since') || ''));
    next.until = fromLocalInput(String(fd.get('until') || ''));
    navigate(eventsHref(next));
  });

  let stopped = false;
  let ctrl = null;
  let cursor = null;
  let shown = 0;

  async function load(append) {
    if (ctrl) ctrl.abort();
    const mine = (ctrl = new AbortController());
    more.disabled = true;
    try {
      const data = await get(`/console/api/events${qs({ ...filters, cursor: append ? cursor : '', limit: PAGE })}`, { signal: mine.signal });
      if (stopped || mine !== ctrl) return;
      showError(status, null);
      const evs = data.events || [];
      const rows = evs.map(eventRow);
      if (append) tbody.append(...rows);
      else tbody.replaceChildren(...rows);
      shown = append ? shown + evs.length : evs.length;
      if (!shown) tbody.replaceChildren(h('tr', { class: 'empty' }, h('td', { colspan: 8 }, 'No events match.')));
      cursor = data.next_cursor || null;
      more.hidden = !cursor;
      setText(count, `${shown} event${shown === 1 ? '' : 's'}${cursor ? ' (more available)' : ''}`);
      root.dataset.loaded = '1';
    } catch (err) {
      if (!isAbort(err) && !stopped) showError(status, err);
    } finally {
      if (mine === ctrl) more.disabled = false;
    }
  }

  more.addEventListener('click', () => load(true));
  load(false);

  return () => {
    stopped = true;
    if (ctrl) ctrl.abort();
  };
}

function eventRow(e) {
  const src = e.source || {};
  const after = e.after ? Object.entries(e.after).map(([k, v]) => `${k} ${v}`).join(', ') : null;
  return h('tr', { dataset: { eventId: e.id, type: e.type } },
    h('td', { class: 'nowrap', dataset: { field: 'ts' }, title: new Date(e.ts).toISOString() }, fmtTime(e.ts)),
    h('td', { dataset: { field: 'type' } }, h('a', { class: `badge badge-type type-${e.type}`, href: eventsHref({ type: e.type }) }, e.type)),
    h('td', { dataset: { field: 'sku' } }, e.sku ? h('a', { href: eventsHref({ sku: e.sku }) }, e.sku) : ''),
    h('td', { dataset: { field: 'location' } }, e.location || ''),
    h('td', { class: 'delta nowrap', dataset: { field: 'delta' }, title: after ? `after: ${after}` : null }, fmtDelta(e.delta)),
    h('td', { dataset: { field: 'source' } },
      src.channel ? h('a', { href: eventsHref({ channel: src.channel }) }, src.channel) : null,
      src.channel && src.ref ? ' / ' : null,
      src.ref ? h('a', { href: eventsHref({ ref: src.ref }) }, src.ref) : null),
    h('td', { dataset: { field: 'reason' } }, e.reason || ''),
    h('td', { class: 'mono small', dataset: { field: 'idempotency_key' } }, e.idempotency_key || ''));
}
