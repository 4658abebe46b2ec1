"""Bearer API keys: who is calling, for which tenant, with which scope.

Scope rule: `operator` includes `storefront` (an operator may hold, commit and read stock like
a storefront does); `storefront` alone may not adjust stock, change policies or read the audit
trail. A key only ever acts on its own tenant: routes take the tenant from the Principal,
never from the request.
"""

from __future__ import annotations

import hashlib
import hmac
import time

import msgspec
from starlette.requests import Request

from gateway.errors import Forbidden, RateLimited, Unauthorized
from stockgate.settings import Scope, Settings

# What each held scope grants.
_GRANTS: dict[str, frozenset[str]] = {
    "storefront": frozenset({"storefront"}),
    "operator": frozenset({"storefront", "operator"}),
}


class Principal(msgspec.Struct, frozen=True):
    tenant: str
    key: str  # the key's name in the config, never its secret
    scopes: frozenset[str] = frozenset()


class _Bucket:
    """Token bucket for one key: `rate` requests per second, bursts up to one second's worth."""

    __slots__ = ("rate", "stamp", "tokens")

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = max(rate, 1.0)
        self.stamp = time.monotonic()

    def take(self) -> float:
        """0 when allowed, else the seconds until a token is available."""
        now = time.monotonic()
        self.tokens = min(max(self.rate, 1.0), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class KeyRing:
    """The configured API keys, indexed by a digest of their secret.

    Every presented secret is compared against every key's digest with compare_digest and no
    early exit, so neither a prefix match nor the key's position leaks through timing.
    Rate limits are per process: with N worker processes a key gets up to N times its rate.
    """

    def __init__(self, settings: Settings) -> None:
        self._keys = [
            (hashlib.sha256(key.secret.encode()).digest(),
             Principal(key.tenant, name, frozenset().union(*(_GRANTS[s] for s in key.scopes))),
             key.rate_limit_per_s)
            for name, key in settings.api_keys.items()
        ]
        self._buckets = {principal.key: _Bucket(rate)
                         for _, principal, rate in self._keys if rate > 0}

    def identify(self, secret: bytes) -> Principal | None:
        digest = hashlib.sha256(secret).digest()
        found = None
        for key_digest, principal, _ in self._keys:
            if hmac.compare_digest(digest, key_digest):
                found = principal
        return found

    def throttle(self, principal: Principal) -> None:
        bucket = self._buckets.get(principal.key)
        if bucket is not None and (wait := bucket.take()):
            raise RateLimited(wait)


def keyring(request: Request) -> KeyRing:
    state = request.app.state
    ring = getattr(state, "keyring", None)
    if ring is None:
        ring = state.keyring = KeyRing(state.settings)
    return ring


def authenticate(request: Request, scope: Scope) -> Principal:
    """The caller of a storefront or operator route, or 401/403/429.

    Reads the ASGI headers directly (no Headers object, no URL parsing): this runs on every
    hold of a flash sale.
    """
    header = None
    for name, value in request.scope["headers"]:
        if name == b"authorization":
            header = value
            break
    if header is None:
        raise Unauthorized("missing Authorization: Bearer <api key>")
    kind, _, secret = header.partition(b" ")
    if kind.lower() != b"bearer" or not secret.strip():
        raise Unauthorized("use Authorization: Bearer <api key>")
    ring = keyring(request)
    principal = ring.identify(secret.strip())
    if principal is None:
        raise Unauthorized("unknown API key")
    if scope not in principal.scopes:
        raise Forbidden(f"this API key lacks the {scope} scope")
    ring.throttle(principal)
    request.app.state.tally.count(principal.tenant, "requests")
    return principal
