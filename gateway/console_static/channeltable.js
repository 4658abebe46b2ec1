// The channel sync table shared by the Overview and Channels views.
// Rows: tr[data-channel="<name>"][data-state="<state>"]; every number links to the events of
// that channel, the error cell too.

import { h, syncRows, fmtMs, fmtClock, eventsHref } from './dom.js';

const STATES = ['in_sync', 'pending', 'drifting', 'failing'];

export function stateBadge(state) {
  const known = STATES.includes(state) ? state : 'unknown';
  return h('span', { class: `badge badge-${known}`, dataset: { state } }, String(state).replace(/_/g, ' '));
}

/** Build the table; `extended` adds kind, throttled-until time and last drift (Channels view). */
export function channelTable(id, { extended = false } = {}) {
  const head = ['Channel'];
  if (extended) head.push('Kind');
  head.push('State', 'Pending', 'Failed', 'Lag p50', 'Lag p99', 'Pushes/min', 'Errors/min', 'Throttled');
  if (extended) head.push('Last drift');
  head.push('Last error');
  const numeric = new Set(['Pending', 'Failed', 'Lag p50', 'Lag p99', 'Pushes/min', 'Errors/min']);
  const table = h('table', { id, class: 'table channels' },
    h('thead', null, h('tr', null, head.map((t) => h('th', { class: numeric.has(t) ? 'num' : null, scope: 'col' }, t)))),
    h('tbody'));
  table.dataset.extended = extended ? '1' : '0';
  return table;
}

export function updateChannelTable(table, channels, now = Date.now()) {
  const extended = table.dataset.extended === '1';
  const tbody = table.tBodies[0];
  if (!channels.length) {
    tbody.replaceChildren(h('tr', { class: 'empty' }, h('td', { colspan: extended ? 13 : 11 }, 'No channels configured.')));
    return;
  }
  if (tbody.querySelector('tr.empty')) tbody.replaceChildren();
  // Rows are rebuilt only when their data changes; _throttled makes the row change once
  // when a throttle window ends even though throttled_until_ms itself stays the same.
  syncRows(tbody, channels.map((c) => ({ ...c, _throttled: c.throttled_until_ms > now })), (c) => c.channel,
    (c) => channelRow(c, extended, now));
}

function channelRow(c, extended, now) {
  const href = eventsHref({ channel: c.channel });
  const num = (v, text, field) => h('td', { class: 'num', dataset: { field } }, h('a', { href }, text ?? String(v)));
  const throttled = c.throttled_until_ms > now;
  const cells = [h('th', { scope: 'row', dataset: { field: 'channel' } }, h('a', { href }, c.channel))];
  if (extended) cells.push(h('td', { dataset: { field: 'kind' } }, c.kind || ''));
  cells.push(
    h('td', { dataset: { field: 'state' } }, stateBadge(c.state)),
    num(c.pending, null, 'pending'),
    num(c.failed, null, 'failed'),
    num(c.lag_p50_ms, fmtMs(c.lag_p50_ms), 'lag_p50'),
    num(c.lag_p99_ms, fmtMs(c.lag_p99_ms), 'lag_p99'),
    num(c.pushes_last_minute, null, 'pushes'),
    num(c.push_errors_last_minute, null, 'errors'),
    h('td', { dataset: { field: 'throttled', throttledUntil: c.throttled_until_ms || 0 } },
      throttled ? h('span', { class: 'badge badge-pending' }, `until ${fmtClock(c.throttled_until_ms)}`) : h('span', { class: 'muted' }, 'no')),
  );
  if (extended) cells.push(h('td', { dataset: { field: 'last_drift' } }, c.last_drift_ms ? fmtClock(c.last_drift_ms) : '—'));
  cells.push(h('td', { class: 'last-error', dataset: { field: 'last_error' } },
    c.last_error ? h('a', { href, title: new Date(c.last_error.ts).toISOString() }, `${fmtClock(c.last_error.ts)} ${c.last_error.error}`) : h('span', { class: 'muted' }, '—')));
  return h('tr', { dataset: { channel: c.channel, state: c.state } }, cells);
}

/** Alerts as list rows [data-alert-type]; sku/channel/ref link to their events. */
export function alertItem(a) {
  const links = [];
  if (a.sku) links.push(h('a', { href: eventsHref({ sku: a.sku }) }, a.sku));
  if (a.location) links.push(h('span', { class: 'muted' }, `@${a.location}`));
  if (a.channel) links.push(h('a', { href: eventsHref({ channel: a.channel }) }, a.channel));
  if (a.ref) links.push(h('a', { href: eventsHref({ ref: a.ref }) }, a.ref));
  return h('li', { class: 'alert', dataset: { alertType: a.type, alertId: a.id } },
    h('span', { class: 'alert-time', title: new Date(a.ts).toISOString() }, fmtClock(a.ts)),
    h('span', { class: `badge badge-alert badge-alert-${String(a.type).replace(/[^a-z0-9_-]/gi, '')}` }, String(a.type).replace(/_/g, ' ')),
    h('span', { class: 'alert-detail' }, a.detail || ''),
    h('span', { class: 'alert-links' }, links));
}
