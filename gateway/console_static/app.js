// Session handling and hash routing for the operator console.
//
// Routes are "#/<view>?<query>". Each view module exports mount(root, params) which builds the
// view's DOM inside its <section id="view-<name>"> and returns stop(): leaving a view stops its
// timers/streams and empties its section, so at most one view polls at a time and ids inside
// views (e.g. #channels-table) exist once in the document.

import { api, setCsrf, onUnauthorized } from './api.js';
import { $, setText } from './dom.js';
import * as overview from './overview.js';
import * as stock from './stock.js';
import * as channels from './channels.js';
import * as events from './events.js';
import * as live from './live.js';

const VIEWS = { overview, stock, channels, events, live };
const TITLES = { overview: 'Overview', stock: 'Stock', channels: 'Channels', events: 'Events', live: 'Live' };

let session = null; // the Session JSON minus nothing we need to hide (csrf goes to api.js)
let current = null; // {name, key, stop}
let expiryTimer = null;

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, '');
  const i = raw.indexOf('?');
  const name = i < 0 ? raw : raw.slice(0, i);
  const query = i < 0 ? '' : raw.slice(i + 1);
  return { name: VIEWS[name] ? name : 'overview', params: new URLSearchParams(query) };
}

function stopCurrent() {
  if (!current) return;
  try {
    current.stop && current.stop();
  } catch (err) {
    console.warn('stop:', err);
  }
  const root = document.getElementById(`view-${current.name}`);
  root.replaceChildren();
  root.removeAttribute('data-loaded');
  root.hidden = true;
  current = null;
}

function route(force = false) {
  if (!session) return;
  const { name, params } = parseHash();
  const key = `${name}?${params.toString()}`;
  if (!force && current && current.key === key) return;
  stopCurrent();
  for (const a of document.querySelectorAll('a[data-view]')) {
    if (a.dataset.view === name) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  const root = document.getElementById(`view-${name}`);
  root.hidden = false;
  document.title = `${TITLES[name]} · ${session.tenant} · Stockgate console`;
  current = { name, key, stop: null };
  current.stop = VIEWS[name].mount(root, params);
}

/** Views that change their own query (e.g. a new event filter) call this to re-mount. */
export function navigate(hash) {
  if (location.hash === hash) route(true);
  else location.hash = hash;
}

function signedIn(s) {
  const already = !!session;
  session = { tenant: s.tenant, key_name: s.key_name, scopes: s.scopes || [], expires_at_ms: s.expires_at_ms };
  setCsrf(s.csrf);
  setText($('#tenant'), s.tenant);
  setText($('#key-name'), s.key_name);
  $('#whoami').title = `scopes: ${session.scopes.join(', ') || '—'}`;
  $('#signin-panel').hidden = true;
  $('#nav').hidden = false;
  $('#whoami').hidden = false;
  $('#main').hidden = false;
  setText($('#signin-error'), '');
  // Ask again when the session should expire; a 401 then brings the sign-in back.
  clearTimeout(expiryTimer);
  if (s.expires_at_ms) {
    const wait = Math.min(2 ** 31 - 1, Math.max(1000, s.expires_at_ms - Date.now() + 1000));
    expiryTimer = setTimeout(checkSession, wait);
  }
  // A re-check of a live session (at its expiry time) must not re-mount the open view.
  if (!already) route(true);
}

function signedOut(message) {
  session = null;
  setCsrf(null);
  clearTimeout(expiryTimer);
  stopCurrent();
  $('#main').hidden = true;
  $('#nav').hidden = true;
  $('#whoami').hidden = true;
  $('#signin-panel').hidden = false;
  setText($('#signin-error'), message || '');
  document.title = 'Sign in · Stockgate console';
  $('#key').focus();
}

async function checkSession() {
  try {
    signedIn(await api('GET', '/console/session', undefined, { quiet401: true }));
  } catch (err) {
    signedOut(err.status === 401 ? '' : `Cannot reach the console: ${err.message}`);
  }
}

async function submitSignin(ev) {
  ev.preventDefault();
  const input = $('#key');
  const button = $('#signin-submit');
  const key = input.value;
  if (!key) return;
  button.disabled = true;
  setText($('#signin-error'), '');
  const request = api('POST', '/console/session', { key }, { quiet401: true });
  // The key must not stay in the page: clear it as soon as the request has taken it.
  input.value = '';
  try {
    signedIn(await request);
  } catch (err) {
    const msg = err.status === 401 ? 'Sign-in refused: unknown or revoked key, or not an operator key.'
      : err.status === 429 ? 'Too many attempts; wait a moment.'
      : `Sign-in failed: ${err.message}`;
    setText($('#signin-error'), msg);
    input.focus();
  } finally {
    button.disabled = false;
  }
}

async function signOut() {
  const button = $('#signout');
  button.disabled = true;
  try {
    await api('DELETE', '/console/session');
  } catch (err) {
    // The local sign-out still happens; say why the server did not confirm it.
    if (err.status !== 401) console.warn('sign-out:', err);
  } finally {
    button.disabled = false;
  }
  signedOut('Signed out.');
}

function start() {
  onUnauthorized(() => {
    if (session) signedOut('Your session ended; sign in again.');
  });
  $('#signin').addEventListener('submit', submitSignin);
  $('#signin-submit').disabled = false;
  $('#signout').addEventListener('click', signOut);
  window.addEventListener('hashchange', () => route());
  checkSession();
}

start();
