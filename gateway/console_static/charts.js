// Tiny SVG charts drawn by hand: no library, no inline styles (colours come from classes in
// console.css). Every chart scales to its container through viewBox + preserveAspectRatio.

const NS = 'http://www.w3.org/2000/svg';

function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) el.setAttribute(k, String(v));
  for (const c of children) if (c) el.appendChild(typeof c === 'string' ? document.createTextNode(c) : c);
  return el;
}

function frame(width, height, cls, title) {
  const svg = s('svg', {
    class: `chart ${cls || ''}`.trim(),
    viewBox: `0 0 ${width} ${height}`,
    preserveAspectRatio: 'none',
    role: 'img',
    'aria-label': title || '',
  });
  if (title) svg.appendChild(s('title', {}, title));
  return svg;
}

const finite = (v) => typeof v === 'number' && Number.isFinite(v);

/** Vertical bars, one per value (counts per step). */
export function bars(values, { width = 300, height = 56, cls = '', title = '', max } = {}) {
  const svg = frame(width, height, `bars ${cls}`, title);
  const n = values.length || 1;
  const top = Math.max(1, max ?? Math.max(0, ...values.filter(finite)));
  const w = width / n;
  svg.appendChild(s('line', { class: 'axis', x1: 0, y1: height - 0.5, x2: width, y2: height - 0.5 }));
  values.forEach((v, i) => {
    if (!finite(v) || v <= 0) return;
    const bh = Math.max(1, (v / top) * (height - 2));
    svg.appendChild(s('rect', { class: 'bar', x: (i * w + w * 0.1).toFixed(2), y: (height - bh).toFixed(2), width: (w * 0.8).toFixed(2), height: bh.toFixed(2) }));
  });
  return svg;
}

/**
 * Lines over a shared x axis. series: [{values: [number|null], cls}]; a null breaks the
 * line (no data for that step) instead of drawing it at zero.
 */
export function lines(series, { width = 300, height = 56, cls = '', title = '', max, min = 0 } = {}) {
  const svg = frame(width, height, `lines ${cls}`, title);
  const all = series.flatMap((x) => x.values.filter(finite));
  const top = max ?? Math.max(min + 1, ...all);
  const n = Math.max(2, ...series.map((x) => x.values.length));
  const xOf = (i) => ((i / (n - 1)) * width).toFixed(2);
  const yOf = (v) => (height - 1 - ((v - min) / (top - min || 1)) * (height - 3)).toFixed(2);
  svg.appendChild(s('line', { class: 'axis', x1: 0, y1: height - 0.5, x2: width, y2: height - 0.5 }));
  for (const { values, cls: lc } of series) {
    let pts = [];
    const flush = () => {
      if (pts.length === 1) {
        const [x, y] = pts[0].split(',');
        svg.appendChild(s('circle', { class: `dot ${lc || ''}`, cx: x, cy: y, r: 1.5 }));
      } else if (pts.length > 1) {
        svg.appendChild(s('polyline', { class: `line ${lc || ''}`, points: pts.join(' '), 'vector-effect': 'non-scaling-stroke' }));
      }
      pts = [];
    };
    values.forEach((v, i) => (finite(v) ? pts.push(`${xOf(i)},${yOf(v)}`) : flush()));
    flush();
  }
  return svg;
}

/** One line (a sparkline). */
export function sparkline(values, opts = {}) {
  return lines([{ values, cls: opts.lineCls || '' }], opts);
}
