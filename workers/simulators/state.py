"""One simulated channel's counts and knobs (shared by the per-channel route modules)."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from typing import Any

from starlette.responses import JSONResponse, Response

Key = tuple[str, str]


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
        self._tokens = 0.0
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def store(self, item: str, location: str, value: int) -> None:
        """A pushed value: the channel's count from now on."""
        self.counts[item, location] = value
        self.received.append((time.time() * 1000, item, location, value))

    def count(self, item: str, location: str = "") -> int | None:
        return self.counts.get((item, "" if self.kind == "woocommerce" else location))

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
