// Overview: stock totals, last-minute counters, rate charts, channel sync and open alerts.
// Refreshed every second while shown (one request in flight at most, see poll()).

import { get, poll } from './api.js';
import { h, setText, syncRows, statusLine, showError, eventsHref, fmtMs } from './dom.js';
import { bars, lines } from './charts.js';
import { channelTable, updateChannelTable, alertItem } from './channeltable.js';

const REFRESH_MS = 1000;

function bigNumber(id, label, href, hint) {
  return h('div', { class: 'stat' },
    h('a', { id, class: 'stat-value', href, title: hint }, '–'),
    h('span', { class: 'stat-label' }, label));
}

function chartCard(id, title, href) {
  return h('div', { class: 'card chart-card' },
    h('h3', null, href ? h('a', { href }, title) : title),
    h('div', { id, class: 'chart-box' }),
    h('p', { id: `${id}-caption`, class: 'chart-caption muted' }));
}

export function mount(root) {
  const status = statusLine();
  const table = channelTable('channels-table');
  const alerts = h('ul', { id: 'alerts', class: 'alerts' });
  const lagBox = h('div', { id: 'lag-charts', class: 'lag-grid' });

  root.append(
    h('div', { class: 'view-head' }, h('h2', null, 'Overview'), h('span', { id: 'overview-updated', class: 'muted' }), status),
    h('div', { class: 'stats-row' },
    h('div', { class: 'stats card' },
      h('span', { class: 'stats-caption' }, 'stock now'),
      bigNumber('units-on-sale', 'units on sale', '#/stock', 'Sum of available over all SKUs'),
      bigNumber('skus', 'SKUs', '#/stock'),
      bigNumber('sold-out', 'sold out', '#/stock', 'SKUs with nothing available'),
      bigNumber('low-stock', 'low stock', '#/stock', 'SKUs at or under their low-stock threshold')),
    h('div', { class: 'stats card' },
      h('span', { class: 'stats-caption' }, 'last minute'),
      bigNumber('holds-last-minute', 'holds', eventsHref({ type: 'hold' })),
      bigNumber('refusals-last-minute', 'refusals', eventsHref({ type: 'hold' }), 'Holds refused for want of stock (no event of their own: links to the holds of that minute)'),
      bigNumber('oversell-last-minute', 'oversell attempts', eventsHref({ type: 'oversell_rejected' })),
      bigNumber('requests-last-minute', 'requests', eventsHref({})))),
    h('div', { class: 'chart-row' },
      chartCard('chart-holds', 'Holds', eventsHref({ type: 'hold' })),
      chartCard('chart-refusals', 'Refusals', null),
      chartCard('chart-oversell', 'Oversell attempts', eventsHref({ type: 'oversell_rejected' })),
      chartCard('chart-requests', 'Requests', null)),
    h('div', { class: 'card' }, h('h3', null, 'Channels'), table),
    h('div', { class: 'two-col' },
      h('div', { class: 'card' },
        h('h3', null, 'Propagation lag', h('span', { class: 'legend' },
          h('span', { class: 'key key-p50' }), 'p50 ', h('span', { class: 'key key-p99' }), 'p99')),
        lagBox),
      h('div', { class: 'card' }, h('h3', null, 'Open alerts'), alerts)),
  );

  let loaded = false;
  let stopped = false;

  async function refresh(signal) {
    let data;
    try {
      data = await get('/console/api/overview', { signal });
    } catch (err) {
      if (!stopped && err.name !== 'AbortError') showError(status, err);
      throw err;
    }
    if (stopped) return;
    showError(status, null);
    render(data);
    if (!loaded) {
      loaded = true;
      root.dataset.loaded = '1';
    }
  }

  function render(d) {
    const now = d.now_ms || Date.now();
    const $ = (id) => root.querySelector(`#${id}`);
    setText($('units-on-sale'), d.units_on_sale);
    setText($('skus'), d.skus);
    setText($('sold-out'), d.sold_out);
    setText($('low-stock'), d.low_stock);
    const lm = d.last_minute || {};
    // The last-minute numbers link to the events of that same minute.
    const since = now - 60000;
    const counter = (id, value, filters) => {
      const a = $(id);
      setText(a, value ?? 0);
      a.setAttribute('href', eventsHref({ ...filters, since }));
    };
    counter('holds-last-minute', lm.holds, { type: 'hold' });
    counter('refusals-last-minute', lm.refusals, { type: 'hold' });
    counter('oversell-last-minute', lm.oversell_attempts, { type: 'oversell_rejected' });
    counter('requests-last-minute', lm.requests, {});
    setText($('overview-updated'), `updated ${new Date(now).toLocaleTimeString()}`);

    const rates = d.rates || { series: {}, step_s: 10 };
    const ser = rates.series || {};
    const step = rates.step_s || 10;
    const chart = (id, name, cls) => {
      const v = ser[name] || [];
      const total = v.reduce((a, b) => a + b, 0);
      const peak = Math.max(0, ...v);
      const mins = Math.round((v.length * step) / 60);
      $(id).replaceChildren(bars(v, { cls, title: `${name}: ${total} in ${mins} min, per ${step} s` }));
      setText($(`${id}-caption`), `${total} in ${mins} min · peak ${peak} per ${step} s`);
    };
    chart('chart-holds', 'holds', 'c-holds');
    chart('chart-refusals', 'refusals', 'c-refusals');
    chart('chart-oversell', 'oversell_attempts', 'c-oversell');
    chart('chart-requests', 'requests', 'c-requests');

    const chans = d.channels || [];
    updateChannelTable(root.querySelector('#channels-table'), chans, now);
    lagBox.replaceChildren(...chans.map((c) => {
      const series = c.lag_series || [];
      return h('div', { class: 'lag-item', dataset: { lagChannel: c.channel } },
        h('div', { class: 'lag-title' },
          h('a', { href: eventsHref({ channel: c.channel }) }, c.channel),
          h('span', { class: 'muted' }, ` p50 ${fmtMs(c.lag_p50_ms)} · p99 ${fmtMs(c.lag_p99_ms)}`)),
        lines([
          { values: series.map((x) => x[2]), cls: 'p99' },
          { values: series.map((x) => x[1]), cls: 'p50' },
        ], { height: 40, title: `${c.channel} propagation lag, last 10 minutes` }));
    }));
    if (!chans.length) lagBox.replaceChildren(h('p', { class: 'muted' }, 'No channels.'));

    const al = d.alerts || [];
    if (!al.length) alerts.replaceChildren(h('li', { class: 'muted empty' }, 'No open alerts.'));
    else {
      if (alerts.querySelector('.empty')) alerts.replaceChildren();
      syncRows(alerts, al, (a) => a.id, alertItem);
    }
  }

  const stopPoll = poll(refresh, REFRESH_MS);
  return () => {
    stopped = true;
    stopPoll();
  };
}
