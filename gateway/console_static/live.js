// Live: one EventSource on /console/api/live, open only while this view is shown and the tab
// is visible (the server keeps one stream per session and a bounded number per process).

import { get } from './api.js';
import { h, setText, statusLine, showError, fmtRate, stockHref } from './dom.js';
import { lines } from './charts.js';

const WINDOW = 60; // ticks kept for the rolling chart (one a second)
const RETRY_MS = 3000;
const MAX_DROPS = 3; // stream drops within DROP_WINDOW_MS before giving up auto-reconnect
const DROP_WINDOW_MS = 30000;

export function mount(root) {
  const status = statusLine();
  const stat = (id, label) => h('div', { class: 'stat' }, h('span', { id, class: 'stat-value' }, '–'), h('span', { class: 'stat-label' }, label));
  const chart = h('div', { id: 'live-chart', class: 'chart-box tall' });
  const hot = h('div', { id: 'live-hot', class: 'hot-list' });
  const conn = h('span', { id: 'live-state', class: 'badge badge-unknown' }, 'connecting');

  root.append(
    h('div', { class: 'view-head' }, h('h2', null, 'Live'), conn, status),
    h('div', { class: 'stats card' },
      stat('live-rps', 'requests / s'),
      stat('live-changes', 'changes / s'),
      stat('live-holds', 'holds / s')),
    h('div', { class: 'two-col' },
      h('div', { class: 'card' }, h('h3', null, 'Requests per second, last 60 s',
        h('span', { class: 'legend' }, h('span', { class: 'key key-rps' }), 'requests ', h('span', { class: 'key key-changes' }), 'changes')), chart,
        h('p', { id: 'live-chart-caption', class: 'chart-caption muted' })),
      h('div', { class: 'card' }, h('h3', null, 'Hot SKUs (most changed, last 30 s)'), hot)),
  );

  const rps = [];
  const changes = [];
  // Highest available seen per SKU while the view is open: the bar shows how far it fell.
  const peakAvailable = new Map();
  let es = null;
  const drops = [];
  let retryTimer = null;
  let stopped = false;

  function setConn(text, cls) {
    setText(conn, text);
    conn.className = `badge ${cls}`;
  }

  function open() {
    close();
    if (stopped || document.hidden) return;
    setConn('connecting', 'badge-unknown');
    es = new EventSource('/console/api/live'); // same origin: the session cookie goes along
    es.addEventListener('open', () => {
      setConn('live', 'badge-in_sync');
      showError(status, null);
    });
    es.addEventListener('tick', (ev) => {
      let d;
      try {
        d = JSON.parse(ev.data);
      } catch {
        return;
      }
      render(d);
    });
    es.addEventListener('error', () => {
      if (!es) return;
      if (es.readyState === EventSource.CLOSED) {
        // The browser gives up on a non-200 answer (401, 503): find out which. A 401 from the
        // session probe sends the console back to sign-in through api.js.
        close();
        setConn('disconnected', 'badge-failing');
        get('/console/session').then(() => {
          if (stopped) return;
          showError(status, new Error('Live stream refused (too many streams or server busy); retrying…'));
          retryTimer = setTimeout(open, RETRY_MS);
        }, (err) => {
          // 401: api.js already went back to sign-in. Anything else: the server is away.
          if (stopped || err.status === 401) return;
          showError(status, new Error(`Live stream lost (${err.message}); retrying…`));
          retryTimer = setTimeout(open, RETRY_MS);
        });
      } else {
        // The server keeps one stream per session: another console tab opening its stream ends
        // this one, and endless auto-reconnects would make the two tabs take turns. After a
        // few drops in a short time, stop and let the operator reconnect by hand.
        const t = Date.now();
        drops.push(t);
        while (drops.length && drops[0] < t - DROP_WINDOW_MS) drops.shift();
        if (drops.length >= MAX_DROPS) paused('Live stream keeps ending (open in another tab?).');
        else setConn('reconnecting', 'badge-pending');
      }
    });
    // Optional server hint that a newer stream of this session replaced this one.
    es.addEventListener('superseded', () => paused('Live stream moved to another console tab.'));
  }

  function paused(message) {
    close();
    drops.length = 0;
    setConn('paused', 'badge-unknown');
    status.classList.remove('error');
    status.replaceChildren(message, ' ', h('button', { id: 'live-reconnect', type: 'button', class: 'btn', onclick: () => { status.replaceChildren(); open(); } }, 'Reconnect'));
  }

  function close() {
    clearTimeout(retryTimer);
    retryTimer = null;
    if (es) {
      es.close();
      es = null;
    }
  }

  function render(d) {
    setText(root.querySelector('#live-rps'), fmtRate(d.requests_per_s));
    setText(root.querySelector('#live-changes'), fmtRate(d.changes_per_s));
    setText(root.querySelector('#live-holds'), fmtRate(d.holds_per_s));
    rps.push(d.requests_per_s ?? null);
    changes.push(d.changes_per_s ?? null);
    while (rps.length > WINDOW) rps.shift();
    while (changes.length > WINDOW) changes.shift();
    // Pad the left so the newest tick is always at the right edge.
    const padL = (a) => Array(WINDOW - a.length).fill(null).concat(a);
    chart.replaceChildren(lines([{ values: padL(changes), cls: 'changes' }, { values: padL(rps), cls: 'rps' }],
      { height: 120, title: `requests/s now ${fmtRate(d.requests_per_s)}` }));
    const top = Math.max(0, ...rps.filter((x) => typeof x === 'number'));
    setText(root.querySelector('#live-chart-caption'), `peak ${fmtRate(top)} requests/s over the last ${rps.length} s (chart top)`);

    const list = d.hot || [];
    for (const x of list) peakAvailable.set(x.sku, Math.max(peakAvailable.get(x.sku) ?? 0, x.available));
    if (!list.length) hot.replaceChildren(h('p', { class: 'muted' }, 'No SKU changed in the last 30 s.'));
    else {
      hot.replaceChildren(...list.map((x) => {
        const fill = h('span', { class: `hot-fill${x.available <= 0 ? ' out' : ''}` });
        const top = Math.max(1, peakAvailable.get(x.sku));
        fill.style.width = `${Math.max(0, Math.min(100, (x.available / top) * 100)).toFixed(1)}%`;
        return h('div', { class: 'hot-row', dataset: { hotSku: x.sku, available: x.available } },
          h('a', { class: 'hot-sku', href: stockHref(x.sku) }, x.sku),
          h('span', { class: 'hot-bar', title: `available ${x.available} of ${top} seen` }, fill),
          h('span', { class: 'hot-available num', dataset: { field: 'available' } }, String(x.available)),
          h('span', { class: 'hot-changes muted' }, `${x.changes} chg`));
      }));
    }
    root.dataset.loaded = '1';
  }

  // Close the stream while the tab is hidden; reopen when it is shown again.
  function onVisibility() {
    if (document.hidden) {
      close();
      setConn('paused', 'badge-unknown');
    } else if (!es) open();
  }
  document.addEventListener('visibilitychange', onVisibility);
  open();

  return () => {
    stopped = true;
    document.removeEventListener('visibilitychange', onVisibility);
    close();
  };
}
