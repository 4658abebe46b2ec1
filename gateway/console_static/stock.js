// Stock: search SKUs, see each one's split of on_hand as a bar, open one for its per-location
// states, what each channel should show and was last pushed, its last events, and adjust it.

import { get, post, qs, uuid, isAbort } from './api.js';
import { h, setText, statusLine, showError, eventsHref, fmtTime, fmtClock, fmtDelta } from './dom.js';

const DEBOUNCE_MS = 250;
const LIMIT = 50;
const SEGMENTS = ['reserved', 'committed', 'unavailable', 'safety', 'available'];
const CELL_FIELDS = ['on_hand', 'reserved', 'committed', 'unavailable', 'safety', 'backorder_limit', 'available'];
const FIELD_LABELS = { on_hand: 'on hand', unavailable: 'unavail.', backorder_limit: 'backorder' };

/** on_hand split into its parts; widths through the CSSOM (CSP allows that, not style=""). */
export function stockBar(s) {
  const parts = SEGMENTS.map((k) => [k, Math.max(0, s[k] || 0)]);
  const total = Math.max(1, s.on_hand || 0, parts.reduce((a, [, v]) => a + v, 0));
  const bar = h('div', { class: 'stockbar', title: SEGMENTS.map((k) => `${k} ${s[k] ?? 0}`).join(' · ') + ` · on_hand ${s.on_hand ?? 0}` });
  for (const [k, v] of parts) {
    if (!v) continue;
    const seg = h('span', { class: `seg seg-${k}`, dataset: { segment: k, value: v } });
    seg.style.width = `${((v / total) * 100).toFixed(2)}%`;
    bar.appendChild(seg);
  }
  return bar;
}

function ruleText(rule) {
  if (!rule) return 'all of the pool';
  const p = [];
  if (rule.fixed != null) p.push(`fixed ${rule.fixed}`);
  if (rule.percent != null) p.push(`${rule.percent}%`);
  if (rule.max != null) p.push(`max ${rule.max}`);
  if (rule.hide_below != null) p.push(`0 below ${rule.hide_below}`);
  return p.join(', ');
}

export function mount(root, params) {
  const status = statusLine();
  const search = h('input', { id: 'sku-search', type: 'search', placeholder: 'Search SKUs (substring)', autocomplete: 'off', spellcheck: 'false', value: params.get('q') || '' });
  const count = h('span', { id: 'stock-count', class: 'muted' });
  const tbody = h('tbody');
  const table = h('table', { id: 'stock-table', class: 'table' },
    h('thead', null, h('tr', null,
      h('th', { scope: 'col' }, 'SKU'),
      h('th', { class: 'num', scope: 'col' }, 'Available'),
      ['On hand', 'Reserved', 'Committed', 'Unavailable', 'Safety'].map((t) => h('th', { class: 'num col-extra', scope: 'col' }, t)),
      h('th', { scope: 'col', class: 'bar-col' }, 'On hand split'))),
    tbody);
  const detail = h('section', { id: 'sku-detail', class: 'card detail', hidden: true });

  const legend = h('div', { class: 'legend bar-legend' }, SEGMENTS.map((k) => [h('span', { class: `key seg-${k}` }), `${k} `]));
  const layout = h('div', { class: 'stock-layout' }, h('div', { class: 'card table-wrap' }, legend, table), detail);
  root.append(h('div', { class: 'view-head' }, h('h2', null, 'Stock'), search, count, status), layout);

  let stopped = false;
  let searchCtrl = null;
  let detailCtrl = null;
  let timer = null;
  let selected = params.get('sku') || '';

  async function runSearch() {
    if (searchCtrl) searchCtrl.abort();
    const ctrl = (searchCtrl = new AbortController());
    const q = search.value.trim();
    try {
      const data = await get(`/console/api/stock${qs({ q, limit: LIMIT })}`, { signal: ctrl.signal });
      if (stopped || ctrl !== searchCtrl) return;
      showError(status, null);
      renderResults(data);
      root.dataset.loaded = '1';
    } catch (err) {
      if (!isAbort(err) && !stopped) showError(status, err);
    }
  }

  function renderResults(data) {
    const skus = data.skus || [];
    setText(count, skus.length < (data.total ?? skus.length) ? `${skus.length} of ${data.total}` : `${skus.length} SKU${skus.length === 1 ? '' : 's'}`);
    if (!skus.length) {
      tbody.replaceChildren(h('tr', { class: 'empty' }, h('td', { colspan: 8 }, 'No SKU matches.')));
      return;
    }
    tbody.replaceChildren(...skus.map((s) => {
      const tr = h('tr', {
        class: `clickable${s.sku === selected ? ' selected' : ''}${s.available <= 0 ? ' sold-out' : ''}`,
        dataset: { sku: s.sku, lowStock: s.low_stock ? '1' : '0' },
        tabindex: '0',
        onclick: () => select(s.sku),
        onkeydown: (ev) => { if (ev.key === 'Enter') select(s.sku); },
      },
        h('th', { scope: 'row' }, s.sku, s.low_stock ? h('span', { class: 'badge badge-pending small' }, 'low') : null),
        h('td', { class: 'num strong', dataset: { field: 'available' } }, String(s.available)),
        ['on_hand', 'reserved', 'committed', 'unavailable', 'safety'].map((k) => h('td', { class: 'num col-extra', dataset: { field: k } }, String(s[k] ?? 0))),
        h('td', { class: 'bar-col' }, stockBar(s)));
      return tr;
    }));
  }

  function select(sku) {
    selected = sku;
    for (const tr of tbody.querySelectorAll('tr[data-sku]')) tr.classList.toggle('selected', tr.dataset.sku === sku);
    // Keep the choice in the address without a hashchange (which would re-mount the view).
    const q = search.value.trim();
    history.replaceState(null, '', `#/stock${qs({ q, sku })}`);
    openDetail(sku);
  }

  // ---- detail ------------------------------------------------------------------------

  let form = null; // kept across reloads of the same SKU so #adjust-result survives

  function openDetail(sku) {
    detail.hidden = false;
    layout.classList.add('has-detail');
    detail.dataset.sku = sku;
    detail.removeAttribute('data-loaded');
    form = adjustForm(sku);
    detail.replaceChildren(
      h('div', { class: 'detail-head' },
        h('h3', null, sku),
        h('a', { href: eventsHref({ sku }), class: 'btn btn-quiet' }, 'All events'),
        h('button', { type: 'button', class: 'btn btn-quiet', onclick: () => loadDetail(sku) }, 'Reload'),
        h('button', { type: 'button', class: 'btn btn-quiet', 'aria-label': 'Close', onclick: closeDetail }, '×')),
      h('div', { class: 'detail-body' }, h('p', { class: 'muted' }, 'Loading…')),
      form.el);
    loadDetail(sku);
  }

  function closeDetail() {
    selected = '';
    detail.hidden = true;
    layout.classList.remove('has-detail');
    detail.replaceChildren();
    for (const tr of tbody.querySelectorAll('tr.selected')) tr.classList.remove('selected');
    history.replaceState(null, '', `#/stock${qs({ q: search.value.trim() })}`);
  }

  async function loadDetail(sku) {
    if (detailCtrl) detailCtrl.abort();
    const ctrl = (detailCtrl = new AbortController());
    const body = detail.querySelector('.detail-body');
    try {
      const data = await get(`/console/api/stock/${encodeURIComponent(sku)}`, { signal: ctrl.signal });
      if (stopped || ctrl !== detailCtrl || detail.dataset.sku !== sku) return;
      body.replaceChildren(...renderDetail(sku, data));
      form.setLocations(Object.keys((data.view && data.view.locations) || {}));
      detail.dataset.loaded = '1';
    } catch (err) {
      if (isAbort(err) || stopped) return;
      body.replaceChildren(h('p', { class: 'error' }, err.status === 404 ? `Unknown SKU ${sku}.` : err.message));
    }
  }

  function renderDetail(sku, data) {
    const v = data.view || { locations: {}, channels: {}, allocation: {} };
    const locs = Object.entries(v.locations || {});
    const incoming = v.incoming || {};
    const out = [];

    out.push(h('div', { class: 'stats' },
      h('div', { class: 'stat' }, h('span', { id: 'sku-available', class: 'stat-value' }, String(v.available ?? 0)), h('span', { class: 'stat-label' }, 'available')),
      v.low_stock_threshold ? h('div', { class: 'stat' }, h('span', { class: 'stat-value small' }, String(v.low_stock_threshold)), h('span', { class: 'stat-label' }, 'low-stock threshold')) : null,
      v.max_per_customer ? h('div', { class: 'stat' }, h('span', { class: 'stat-value small' }, String(v.max_per_customer)), h('span', { class: 'stat-label' }, 'max per customer')) : null));

    out.push(h('h4', null, 'Locations'));
    const hasIncoming = Object.keys(incoming).length > 0;
    out.push(h('div', { class: 'table-wrap' }, h('table', { id: 'sku-locations', class: 'table compact' },
      h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'Location'),
        CELL_FIELDS.map((f) => h('th', { class: 'num', scope: 'col' }, FIELD_LABELS[f] || f)),
        hasIncoming ? h('th', { class: 'num', scope: 'col' }, 'incoming') : null)),
      h('tbody', null, locs.length ? locs.map(([loc, c]) => h('tr', { dataset: { location: loc } },
        h('th', { scope: 'row' }, loc),
        CELL_FIELDS.map((f) => h('td', { class: `num${f === 'available' ? ' strong' : ''}`, dataset: { location: loc, field: f } }, String(c[f] ?? 0))),
        hasIncoming ? h('td', { class: 'num', dataset: { location: loc, field: 'incoming' }, title: incoming[loc] ? `next expected ${fmtTime(incoming[loc].next_expected_at_ms)}, pre-orderable ${incoming[loc].preorderable}` : null }, incoming[loc] ? String(incoming[loc].expected) : '—') : null))
        : h('tr', { class: 'empty' }, h('td', { colspan: 9 }, 'No locations.'))))));

    out.push(h('h4', null, 'Channels'));
    const chans = Object.keys(v.channels || {}).sort();
    const pushed = data.pushed || {};
    out.push(h('div', { class: 'table-wrap' }, h('table', { id: 'sku-channels', class: 'table compact' },
      h('thead', null, h('tr', null,
        h('th', { scope: 'col' }, 'Channel'), h('th', { class: 'num', scope: 'col' }, 'Should show'), h('th', { class: 'num', scope: 'col' }, 'Pool'),
        h('th', { scope: 'col' }, 'Rule'), h('th', { scope: 'col' }, 'Source'), h('th', { scope: 'col' }, 'Last pushed'))),
      h('tbody', null, chans.length ? chans.map((ch) => channelRow(sku, ch, v, pushed[ch] || {})) : h('tr', { class: 'empty' }, h('td', { colspan: 6 }, 'No channel lists this SKU.'))))));

    out.push(h('h4', null, 'Last events'));
    if (data.events_error) out.push(h('p', { id: 'sku-events-error', class: 'error' }, `Events unavailable: ${data.events_error}`));
    const evs = data.events || [];
    out.push(h('div', { class: 'table-wrap' }, h('table', { id: 'sku-events', class: 'table compact' },
      h('thead', null, h('tr', null, ['Time', 'Type', 'Location', 'Delta', 'Source', 'Reason'].map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', null, evs.length ? evs.map((e) => h('tr', { dataset: { eventId: e.id, type: e.type } },
        h('td', { class: 'nowrap', title: fmtTime(e.ts) }, fmtClock(e.ts)),
        h('td', null, h('span', { class: 'badge badge-type' }, e.type)),
        h('td', null, e.location),
        h('td', { class: 'delta' }, fmtDelta(e.delta)),
        h('td', null, sourceText(e.source)),
        h('td', null, e.reason || ''))) : h('tr', { class: 'empty' }, h('td', { colspan: 6 }, 'No events.'))))));
    return out;
  }

  function channelRow(sku, ch, v, pushedCells) {
    const alloc = (v.allocation || {})[ch] || {};
    const shown = v.channels[ch];
    const figures = alloc.figures || {};
    const entries = Object.entries(pushedCells);
    // A pushed cell is keyed "<sku>|<location>"; compare with the figure for that location,
    // or with the single shown value when the channel keeps one figure.
    let differs = false;
    const pushedText = entries.length ? entries.map(([cell, val]) => {
      const loc = cell.includes('|') ? cell.slice(cell.indexOf('|') + 1) : cell;
      const expect = figures[loc] ? figures[loc].value : (entries.length === 1 ? shown : undefined);
      if (expect !== undefined && expect !== val) differs = true;
      return entries.length === 1 ? String(val) : `${loc}: ${val}`;
    }).join(', ') : 'never';
    const figs = Object.entries(figures);
    return h('tr', { dataset: { channel: ch } },
      h('th', { scope: 'row' }, h('a', { href: eventsHref({ sku, channel: ch }) }, ch)),
      h('td', { class: 'num strong', dataset: { field: 'shown' } }, String(shown)),
      h('td', { class: 'num', dataset: { field: 'pool' }, title: figs.length > 1 ? figs.map(([l, f]) => `${l}: ${f.value} of ${f.pool}`).join(', ') : null }, alloc.pool ?? '—'),
      h('td', { dataset: { field: 'rule' } }, ruleText(alloc.rule)),
      h('td', { dataset: { field: 'source' } }, alloc.source || '—'),
      h('td', { class: `num${differs ? ' differs' : ''}`, dataset: { field: 'pushed' }, title: differs ? 'Differs from what the channel should show (a push is pending or failing)' : null },
        pushedText, differs ? h('span', { class: 'badge badge-drifting small' }, 'differs') : null));
  }

  function adjustForm(sku) {
    const select_ = h('select', { name: 'location', required: true });
    const result = h('p', { id: 'adjust-result', role: 'status', class: 'adjust-result' });
    const submit = h('button', { id: 'adjust-submit', type: 'submit', class: 'btn btn-primary' }, 'Adjust');
    const el = h('form', { id: 'adjust-form', class: 'adjust-form', autocomplete: 'off' },
      h('h4', null, 'Adjust on hand'),
      h('label', null, 'Location', select_),
      h('label', null, 'Delta', h('input', { name: 'delta', type: 'number', step: '1', required: true, placeholder: '+5 or -2' })),
      h('label', { class: 'grow' }, 'Reason', h('input', { name: 'reason', type: 'text', required: true, maxlength: '200', placeholder: 'cycle count, damage, …' })),
      submit, result);
    el.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const fd = new FormData(el);
      const delta = Number.parseInt(String(fd.get('delta')), 10);
      if (!Number.isInteger(delta) || delta === 0) {
        result.className = 'adjust-result error';
        setText(result, 'Delta must be a non-zero whole number.');
        return;
      }
      const body = { reason: String(fd.get('reason')).trim(), idempotency_key: uuid(), location: String(fd.get('location')), delta };
      submit.disabled = true;
      result.className = 'adjust-result';
      setText(result, 'Adjusting…');
      try {
        const r = await post(`/console/api/stock/${encodeURIComponent(sku)}/adjust`, body);
        const a = r.after || {};
        result.className = 'adjust-result ok';
        setText(result, `Adjusted ${r.location}: ${delta > 0 ? '+' : ''}${delta} → on hand ${a.on_hand}, available ${a.available}`);
        el.elements.delta.value = '';
        loadDetail(sku);
        runSearch(); // the row's figures changed too
      } catch (err) {
        result.className = 'adjust-result error';
        setText(result, err.status === 403 ? `Refused: ${err.message}` : err.message);
      } finally {
        submit.disabled = false;
      }
    });
    return {
      el,
      setLocations(locs) {
        const keep = select_.value;
        const now = Array.from(select_.options, (o) => o.value);
        if (now.join('\n') === locs.join('\n')) return;
        select_.replaceChildren(...locs.map((l) => h('option', { value: l }, l)));
        if (locs.includes(keep)) select_.value = keep;
      },
    };
  }

  search.addEventListener('input', () => {
    clearTimeout(timer);
    timer = setTimeout(runSearch, DEBOUNCE_MS);
  });
  search.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter') {
      clearTimeout(timer);
      runSearch();
    }
  });

  runSearch();
  if (selected) openDetail(selected);
  search.focus();

  return () => {
    stopped = true;
    clearTimeout(timer);
    if (searchCtrl) searchCtrl.abort();
    if (detailCtrl) detailCtrl.abort();
  };
}

export function sourceText(src) {
  if (!src) return '';
  return [src.channel, src.ref].filter(Boolean).join(' / ');
}
