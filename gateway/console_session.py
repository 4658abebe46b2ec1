"""Operator console sign-in: an operator API key exchanged once for a signed session cookie.

Why a signed token and not a session table: every gateway process (`serve --workers N`,
several hosts) must accept a session another one made, with nothing shared but the config and
Redis. The token carries no secret: it names the key, its tenant, a random session id and an
expiry, and is MACed with a key derived from the API key's own secret, so rotating or removing
the key ends its sessions at once. A sign-out is remembered in Redis (under the tenant's hash
tag) until the token's own expiry, so a copied cookie dies with the sign-out.

CSRF: the cookie is SameSite=Strict, and every state-changing call must also carry
`X-CSRF-Token`, a MAC of the session id the page gets from GET /console/session and keeps in
memory only; a request whose Origin names another site is refused as well.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

import msgspec
from starlette.requests import Request

from gateway.auth import keyring
from gateway.errors import Forbidden, RateLimited, Unauthorized
from stockgate.keys import tenant_keys
from stockgate.settings import Settings

COOKIE = "sg_console"
CSRF_HEADER = "x-csrf-token"
_CONTEXT = b"stockgate console session v1"


class Token(msgspec.Struct, frozen=True, array_like=True):
    key: str  # the API key's name in the config, never its secret
    tenant: str
    sid: str
    exp_ms: int


class Session(msgspec.Struct, frozen=True):
    """What the page learns about its sign-in (GET/POST /console/session)."""

    tenant: str
    key_name: str
    scopes: list[str]
    expires_at_ms: int
    csrf: str


class SignIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    key: str


_encode_token = msgspec.msgpack.Encoder().encode
_decode_token = msgspec.msgpack.Decoder(Token).decode


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac_key(settings: Settings, name: str) -> bytes | None:
    key = settings.api_keys.get(name)
    if key is None or "operator" not in key.scopes:
        return None
    return hmac.new(key.secret.encode(), _CONTEXT, hashlib.sha256).digest()


def now_ms() -> int:
    return int(time.time() * 1000)


def issue(settings: Settings, name: str) -> tuple[str, Token]:
    """A new session for the key `name`: the cookie value and what it says."""
    mac_key = _mac_key(settings, name)
    assert mac_key is not None
    token = Token(key=name, tenant=settings.api_keys[name].tenant,
                  sid=secrets.token_urlsafe(16),
                  exp_ms=now_ms() + settings.console_session_ttl_s * 1000)
    body = _encode_token(token)
    return _b64(body) + "." + _b64(hmac.new(mac_key, body, hashlib.sha256).digest()), token


def read(settings: Settings, value: str) -> Token | None:
    """The session a cookie value carries, or None when it is forged, expired or its key is
    gone, was rotated or lost the operator scope."""
    body_text, _, mac_text = value.partition(".")
    try:
        body, mac = _unb64(body_text), _unb64(mac_text)
        token = _decode_token(body)
    except (ValueError, msgspec.DecodeError):
        return None
    mac_key = _mac_key(settings, token.key)
    if mac_key is None or not hmac.compare_digest(
            mac, hmac.new(mac_key, body, hashlib.sha256).digest()):
        return None
    if token.exp_ms <= now_ms() or settings.api_keys[token.key].tenant != token.tenant:
        return None
    return token


def csrf_token(settings: Settings, token: Token) -> str:
    mac_key = _mac_key(settings, token.key)
    assert mac_key is not None
    return _b64(hmac.new(mac_key, b"csrf|" + token.sid.encode(), hashlib.sha256).digest())


def describe(settings: Settings, token: Token) -> Session:
    return Session(tenant=token.tenant, key_name=token.key,
                   scopes=sorted(settings.api_keys[token.key].scopes),
                   expires_at_ms=token.exp_ms, csrf=csrf_token(settings, token))


def signed_out_key(token: Token) -> str:
    return tenant_keys(token.tenant).prefix + "console:signed-out:" + token.sid


def same_origin(request: Request) -> bool:
    """False when the request says it comes from another site: a browser sends Origin on
    every cross-site POST. The host is what tells sites apart (the scheme may be rewritten by
    a TLS proxy in front)."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    scheme, sep, host = origin.partition("://")
    return bool(sep) and scheme in ("http", "https") and host == request.headers.get("host")


def cookie_header(request: Request, value: str, max_age_s: int) -> str:
    """Secure always (browsers keep Secure cookies from http://localhost and 127.0.0.1 too):
    behind a TLS proxy the gateway itself sees plain http, and a cookie without it would
    travel in clear on any http request to the host. `console_insecure_cookie` drops it for
    a plain-http lab gateway on another host."""
    parts = [f"{COOKIE}={value}", "Path=/console", "HttpOnly", "SameSite=Strict",
             f"Max-Age={max_age_s}"]
    if not request.app.state.settings.console_insecure_cookie:
        parts.append("Secure")
    return "; ".join(parts)


class SignInGuard:
    """Failed sign-ins per client address, in this process: a key cannot be guessed online.
    Ten failures lock the address out for a minute. Behind a reverse proxy the address is
    the proxy's unless `trusted_proxies` names it (gateway/server.py)."""

    limit = 10
    window_s = 60.0
    max_addresses = 10_000

    def __init__(self) -> None:
        self._failures: dict[str, list[float]] = {}
        self._next_evict = 0.0

    def check(self, client: str) -> None:
        now = time.monotonic()
        recent = [t for t in self._failures.get(client, ()) if now - t < self.window_s]
        if recent:
            self._failures[client] = recent
        else:
            self._failures.pop(client, None)
        if len(recent) >= self.limit:
            raise RateLimited(self.window_s - (now - recent[0]))

    def failed(self, client: str) -> None:
        now = time.monotonic()
        if (client not in self._failures and len(self._failures) >= self.max_addresses
                and now >= self._next_evict):
            self._evict(now)
        self._failures.setdefault(client, []).append(now)

    def _evict(self, now: float) -> None:
        """Bounded, and never by forgetting a locked address: a sweep of fresh addresses
        must not unlock one. Expired entries go first, then the oldest unlocked ones, down
        to 90% at once: one O(n) pass per tenth of the table, not one per failure. When
        locked addresses fill it, it may grow (by the failures of the next second, each
        locking nothing) rather than be scanned again for every failure."""
        for client, times in list(self._failures.items()):
            if now - times[-1] >= self.window_s:
                del self._failures[client]
        low = self.max_addresses * 9 // 10
        for client, times in list(self._failures.items()):
            if len(self._failures) <= low:
                break
            if len(times) < self.limit:
                del self._failures[client]
        if len(self._failures) >= self.max_addresses:
            self._next_evict = now + 1.0


def sign_in(request: Request, secret: str) -> tuple[str, Token]:
    """The key's session, or 401/403 (and the failure counted) for a wrong or storefront
    key. The secret is compared the way the API compares it (gateway/auth.py)."""
    principal = keyring(request).identify(secret.encode())
    if principal is None:
        raise Unauthorized("unknown API key")
    if "operator" not in principal.scopes:
        raise Forbidden("the console needs a key with the operator scope")
    return issue(request.app.state.settings, principal.key)
