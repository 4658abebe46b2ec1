// Channels: sync state per channel (with rate-limit state), parked deliveries with a retry
// button, and recent drift. Refreshed every 2 s while shown.

import { get, post, poll } from './api.js';
import { h, setText, syncRows, statusLine, showError, eventsHref, fmtTime } from './dom.js';
import { channelTable, updateChannelTable, alertItem } from './channeltable.js';

const REFRESH_MS = 2000;

export function mount(root) {
  const status = statusLine();
  const table = channelTable('channels-table', { extended: true });
  const deliveries = h('tbody');
  const drift = h('ul', { id: 'drift', class: 'alerts' });
  const updated = h('span', { class: 'muted' });
  // Retry outcomes by delivery id, so a refresh that rebuilds a row keeps showing them.
  const retried = new Map();
  // The server lists the newest parked deliveries; the total says how many there are.
  const shown = h('span', { id: 'deliveries-shown', class: 'muted' });

  root.append(
    h('div', { class: 'view-head' }, h('h2', null, 'Channels'), updated, status),
    h('div', { class: 'card' }, h('h3', null, 'Sync state'), table),
    h('div', { class: 'card' }, h('h3', null, 'Failed deliveries ', shown),
      h('table', { id: 'deliveries-table', class: 'table' },
        h('thead', null, h('tr', null, ['Channel', 'SKU', 'Location', 'Attempts', 'Last error', 'Failed at', 'Status', ''].map((t) =>
          h('th', { scope: 'col', class: t === 'Attempts' ? 'num' : null }, t)))),
        deliveries)),
    h('div', { class: 'card' }, h('h3', null, 'Drift'), drift),
  );

  let stopped = false;
  let loaded = false;

  function deliveryRow(d) {
    const state = retried.get(d.id);
    const button = h('button', { type: 'button', class: 'btn retry', disabled: state === 'queued' || state === 'retrying' }, state === 'queued' ? 'queued' : state === 'retrying' ? 'Retrying…' : 'Retry');
    const failed = state && state !== 'queued' && state !== 'retrying';
    const note = h('span', { class: `retry-note${failed ? ' error' : ''}` }, failed ? state : '');
    button.addEventListener('click', async () => {
      button.disabled = true;
      retried.set(d.id, 'retrying');
      setText(button, 'Retrying…');
      setText(note, '');
      note.classList.remove('error');
      try {
        const r = await post(`/console/api/deliveries/${encodeURIComponent(d.id)}/retry`);
        retried.set(d.id, r.status || 'queued');
      } catch (err) {
        retried.set(d.id, err.message);
      }
      redraw(d);
    });
    return h('tr', { dataset: { delivery: d.id, channel: d.channel } },
      h('td', { dataset: { field: 'channel' } }, h('a', { href: eventsHref({ channel: d.channel }) }, d.channel)),
      h('td', { dataset: { field: 'sku' } }, h('a', { href: eventsHref({ sku: d.sku, channel: d.channel }) }, d.sku)),
      h('td', { dataset: { field: 'location' } }, d.location),
      h('td', { class: 'num', dataset: { field: 'attempts' } }, String(d.attempts)),
      h('td', { class: 'last-error', dataset: { field: 'last_error' } }, d.last_error || ''),
      h('td', { class: 'nowrap', dataset: { field: 'failed_at' } }, fmtTime(d.failed_at)),
      h('td', { dataset: { field: 'status' } }, d.status || ''),
      h('td', { class: 'nowrap' }, button, note));
  }

  // A refresh may have rebuilt the row while the retry ran: redraw whichever row is there now.
  function redraw(d) {
    const tr = deliveries.querySelector(`tr[data-delivery="${CSS.escape(d.id)}"]`);
    if (!tr) return;
    const fresh = deliveryRow(d);
    fresh.dataset.key = tr.dataset.key;
    fresh.dataset.sig = JSON.stringify({ ...d, _retry: retried.get(d.id) || '' });
    tr.replaceWith(fresh);
  }

  async function refresh(signal) {
    let data;
    try {
      data = await get('/console/api/channels', { signal });
    } catch (err) {
      if (!stopped && err.name !== 'AbortError') showError(status, err);
      throw err;
    }
    if (stopped) return;
    showError(status, null);
    const now = Date.now();
    setText(updated, `updated ${new Date(now).toLocaleTimeString()}`);
    updateChannelTable(table, data.channels || [], now);

    const ds = data.deliveries || [];
    const total = data.deliveries_total || ds.length;
    setText(shown, total > ds.length ? `(newest ${ds.length} of ${total})` : '');
    if (!ds.length) deliveries.replaceChildren(h('tr', { class: 'empty' }, h('td', { colspan: 8 }, 'No failed deliveries.')));
    else {
      if (deliveries.querySelector('tr.empty')) deliveries.replaceChildren();
      // The retry state is part of the signature so a finished retry redraws its row.
      syncRows(deliveries, ds.map((d) => ({ ...d, _retry: retried.get(d.id) || '' })), (d) => d.id, deliveryRow);
    }

    const dr = data.drift || [];
    if (!dr.length) drift.replaceChildren(h('li', { class: 'muted empty' }, 'No drift seen.'));
    else {
      if (drift.querySelector('.empty')) drift.replaceChildren();
      syncRows(drift, dr, (a) => a.id, alertItem);
    }
    if (!loaded) {
      loaded = true;
      root.dataset.loaded = '1';
    }
  }

  const stopPoll = poll(refresh, REFRESH_MS);
  return () => {
    stopped = true;
    stopPoll();
  };
}
