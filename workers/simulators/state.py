"""One simulated channel's counts and knobs (shared by the per-channel route modules)."""

from __future__ import annotations

import asyncio
import collections
import random
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

Key = tuple[str, str]
Endpoint = Callable[[Request], Awaitable[Response]]


class ChannelState:
    """Counts and knobs of one simulated channel. Plain attributes: tests set them directly
    (the server runs in a thread of the same process)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.counts: dict[Key, int] = {}
        # Every value accepted, in order: (unix ms, item, location, value), e.g. to measure
        # propagation lag.
        self.received: list[tuple[float, str, str, int]] = []
        self.fail_ratio = 0.0
        self.delay_s = 0.0
        self.rate_limit_per_s = 0.0
        self.calls = 0
        self.writes = 0
        self.failed = 0
        self.limited = 0
        # BigCommerce orders: id -> {"status_id", "products": [{"sku", "quantity"}]}
        self.orders: dict[str, dict[str, Any]] = {}
        # The simulated catalogue (WooCommerce, BigCommerce). `sku_items` maps a SKU to the
        # channel's id for it (WooCommerce "12", or "12/34" for variation 34 of product 12;
        # BigCommerce a variant id). `known_items`/`known_locations` None: every id exists
        # (older tests push ids they never declared); a set: only those ids (and the ids of
        # sku_items) exist, and writes to others are refused as the channel refuses them.
        self.sku_items: dict[str, str] = {}
        self.known_items: set[str] | None = None
        self.known_locations: set[str] | None = None
        # A SKU lookup that finds nothing makes the item up (the store "has" every SKU a test
        # names); False leaves unknown SKUs unresolvable.
        self.mint_unknown_skus = True
        # Channel id -> the name its counts are kept under: a made-up item's counts are kept
        # under its SKU, and BigCommerce's default location 1 under Stockgate's default
        # location, so tests read counts by the names they pushed.
        self.aliases: dict[str, str] = {}
        self.location_names: dict[str, str] = {"1": "main"} if kind == "bigcommerce" else {}
        # Items per batch request; None: the channel's documented default.
        self.batch_items_limit: int | None = None
        # BigCommerce's request quota per window (X-Rate-Limit-* headers on every response).
        self.window_quota = 10_000
        self.window_ms = 30_000
        # BigCommerce: whether a 422 title names the refused items (as its examples do).
        self.name_refused_items = True
        # Requests as sent: (method, raw path and query), for tests on what was called; the
        # latest 10,000, so a long demo run does not grow it without end.
        self.requests: collections.deque[tuple[str, str]] = collections.deque(maxlen=10_000)
        # Shopify: SKUs that more than one item carries (SKU -> item ids), so that a lookup
        # by SKU is ambiguous, as in a shop with duplicate SKUs.
        self.shared_skus: dict[str, list[str]] = {}
        # Shopify's cost-based limit: a bucket of `cost_maximum` points refilled at
        # `cost_restore_rate` points a second; a call whose requested cost the bucket cannot
        # pay is answered THROTTLED (counted in `throttled`).
        self.cost_maximum = 2000.0
        self.cost_restore_rate = 100.0
        self.throttled = 0
        # Compare-and-set quantities refused as stale (the channel had moved on its own).
        self.stale = 0
        # Units sold on its own since the item's last write, and units of such sales that a
        # blind write erased (see store()).
        self.sold_since_write: dict[tuple[str, str], int] = {}
        self.clobbered = 0
        # Shopify mutations answered with an idempotency key's first result, not applied.
        self.replayed = 0
        # Set: every call is answered with this status and text body, as a proxy's error or
        # maintenance page answers (Shopify simulator).
        self.canned_response: tuple[int, str] | None = None
        # Units the channel sold on its own (sell()): (unix ms, item, location, qty).
        self.sales: list[tuple[float, str, str, int]] = []
        # Held by a write while it compares and sets counts, and by sell(): a sale lands
        # between two writes, never inside one.
        self.counts_lock = threading.Lock()
        self._points: float | None = None
        self._points_at = time.monotonic()
        self._next_id = 1000
        self._tokens = 0.0
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def store(self, item: str, location: str, value: int, *, blind: bool = True) -> None:
        """A pushed value: the channel's count from now on. A blind write (no compare-and-set)
        over sales the channel made since the last write erases them: counted in
        `clobbered`, the units the channel may now sell a second time."""
        key = (item, location)
        with self._lock:
            unseen = self.sold_since_write.pop(key, 0)
            if blind:
                self.clobbered += unseen
        self.counts[key] = value
        self.received.append((time.time() * 1000, item, location, value))

    def count(self, item: str, location: str = "") -> int | None:
        return self.counts.get((item, "" if self.kind == "woocommerce" else location))

    def key(self, item: str) -> str:
        """The name an item's counts are kept under."""
        return self.aliases.get(item, item)

    def location_key(self, location: str) -> str:
        return self.location_names.get(location, location)

    def knows(self, item: str) -> bool:
        return (self.known_items is None or item in self.known_items
                or item in self.aliases or item in self.sku_items.values())

    def sku_of(self, item: str) -> str:
        return next((sku for sku, found in self.sku_items.items() if found == item), "")

    def mint(self, sku: str) -> str:
        """A new item for `sku`: its id."""
        with self._lock:
            self._next_id += 1
            item = str(self._next_id)
        self.sku_items[sku] = item
        self.aliases[item] = sku
        return item

    def sell(self, item: str, location: str, qty: int) -> bool:
        """The channel sells `qty` units on its own (a checkout Stockgate hears of only by
        webhook). False, and nothing changes, when it shows fewer than `qty`."""
        place = "" if self.kind == "woocommerce" else self.location_key(location)
        key = (self.key(item), place)
        with self.counts_lock:
            shown = self.counts.get(key, 0)
            if qty <= 0 or shown < qty:
                return False
            self.counts[key] = shown - qty
            self.sales.append((time.time() * 1000, key[0], key[1], qty))
            with self._lock:
                self.sold_since_write[key] = self.sold_since_write.get(key, 0) + qty
        return True

    def _refilled(self, now: float) -> float:
        if self._points is None:
            return self.cost_maximum
        return min(self.cost_maximum,
                   self._points + (now - self._points_at) * self.cost_restore_rate)

    def take_points(self, cost: float) -> bool:
        """Spend `cost` points of the bucket; False (nothing spent) when it holds fewer."""
        with self._lock:
            now = time.monotonic()
            level = self._refilled(now)
            if level < cost:
                self._points, self._points_at = level, now
                return False
            self._points, self._points_at = level - cost, now
            return True

    def refund_points(self, points: float) -> None:
        """Give back what a call was charged beyond its actual cost."""
        with self._lock:
            now = time.monotonic()
            self._points, self._points_at = min(self.cost_maximum,
                                                self._refilled(now) + points), now

    def set_points(self, available: float) -> None:
        """Empty (or fill) the bucket to `available` points now."""
        with self._lock:
            self._points, self._points_at = float(available), time.monotonic()

    def throttle_status(self) -> dict[str, float]:
        with self._lock:
            level = self._refilled(time.monotonic())
        return {"maximumAvailable": float(self.cost_maximum),
                "currentlyAvailable": float(int(level)),
                "restoreRate": float(self.cost_restore_rate)}

    def _take_token(self) -> float:
        """0 if the call may proceed, else seconds until a token is free."""
        with self._lock:
            rate = self.rate_limit_per_s
            if rate <= 0:
                return 0.0
            now = time.monotonic()
            burst = max(rate, 1.0)
            self._tokens = min(burst, self._tokens + (now - self._last) * rate)
            self._last = now
            if self._tokens >= 1:
                self._tokens -= 1
                return 0.0
            return (1 - self._tokens) / rate

    async def gate(self) -> Response | None:
        """Applies the knobs; a response means the call is refused."""
        self.calls += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        wait = self._take_token()
        if wait:
            self.limited += 1
            return JSONResponse({"errors": "rate limited"}, status_code=429,
                                headers={"Retry-After": f"{wait:.3f}"})
        if self.fail_ratio and random.random() < self.fail_ratio:
            self.failed += 1
            return JSONResponse({"errors": "simulated failure"}, status_code=500)
        return None


def raw_target(request: Request) -> str:
    """The path and query as the client sent them, before any decoding."""
    path: bytes = request.scope.get("raw_path") or request.url.path.encode()
    query: bytes = request.scope.get("query_string", b"")
    return path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")


def recorded(state: ChannelState, endpoint: Endpoint) -> Endpoint:
    """`endpoint`, appending each request it answers to state.requests."""

    async def run(request: Request) -> Response:
        state.requests.append((request.method, raw_target(request)))
        return await endpoint(request)

    return run
