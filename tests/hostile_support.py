"""Helpers for the reliability, fuzz and schemathesis tests: webhook signing over raw bytes (so
a fuzzed body can be signed correctly and reach the decoder), a snapshot of everything a
request could change, and a gateway driven from synchronous hypothesis tests."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from typing import Any, TypeVar

import httpx
from gateway_support import BC_SECRET, OPERATOR, SHOPIFY_SECRET, STD_KEY, WOO_SECRET, bearer
from redis.asyncio import Redis
from starlette.applications import Starlette

from gateway.app import create_app
from stockgate.keys import tenant_keys
from stockgate.settings import Settings

T = TypeVar("T")
TENANTS = ("acme", "globex", "default")


def _b64_hmac(key: bytes, message: bytes) -> str:
    return base64.b64encode(hmac.new(key, message, hashlib.sha256).digest()).decode()


def sign(kind: str, body: bytes, delivery_id: str, stamp: str | None = None) -> dict[str, str]:
    """The authentication headers each channel kind sends for `body` (its documented scheme)."""
    if kind == "shopify":
        return {"X-Shopify-Hmac-Sha256": _b64_hmac(SHOPIFY_SECRET.encode(), body),
                "X-Shopify-Webhook-Id": delivery_id}
    if kind == "woocommerce":
        return {"X-WC-Webhook-Signature": _b64_hmac(WOO_SECRET.encode(), body),
                "X-WC-Webhook-Delivery-ID": delivery_id}
    if kind == "bigcommerce":
        return {"X-Stockgate-Secret": BC_SECRET}
    stamp = str(int(time.time())) if stamp is None else stamp
    signed = f"{delivery_id}.{stamp}.".encode("latin-1") + body
    return {"webhook-id": delivery_id, "webhook-timestamp": stamp,
            "webhook-signature": "v1," + _b64_hmac(STD_KEY, signed)}


async def snapshot(redis: Redis, skus: tuple[str, ...]) -> tuple[Any, ...]:
    """Everything a request may change: the key count (hold, order, idempotency, dedupe and
    customer records), every tenant's outbox length (one event per stock change) and the
    stock hashes of the given SKUs. Nothing in it expires during a test (TTLs are hours).
    The console's per-second counters (stockgate/activity.py) are left out: the gateway
    writes them once a second on its own clock, whatever the request in between did."""
    pipe = redis.pipeline(transaction=True)  # the count and the counters' keys at one moment
    pipe.dbsize()
    pipe.keys("sg:*:activity:*")
    for tenant in TENANTS:
        pipe.xlen(tenant_keys(tenant).outbox)
    for sku in skus:
        pipe.hgetall(tenant_keys("acme").stock(sku))
    keys, counters, *rest = await pipe.execute()
    return (keys - len(counters), *rest)


class SyncGateway:
    """The gateway app, a client to it and a Redis client on one private event loop, so that
    synchronous hypothesis tests can send requests (hypothesis cannot drive async tests
    together with non-function-scoped fixtures on pytest-asyncio's loop)."""

    def __init__(self, settings: Settings, redis_url: str) -> None:
        self.runner = asyncio.Runner()
        self.stack = AsyncExitStack()
        self.redis: Redis = Redis.from_url(redis_url, max_connections=200)
        self.app: Starlette = create_app(settings, self.redis)
        self.client: httpx.AsyncClient = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://gw")
        self.sent = 0
        self.last_snapshot: tuple[Any, ...] | None = None
        self.run(self._open())

    async def _open(self) -> None:
        await self.stack.enter_async_context(self.app.router.lifespan_context(self.app))
        await self.stack.enter_async_context(self.client)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coro)

    def close(self) -> None:
        async def _close() -> None:
            await self.stack.aclose()
            await self.redis.aclose()

        self.run(_close())
        self.runner.close()

    async def seed(self, skus: tuple[str, ...], qty: int) -> None:
        for sku in skus:
            r = await self.client.post(f"/v1/stock/{sku}/adjust", headers=bearer(OPERATOR),
                                       json={"delta": qty, "reason": "receipt",
                                             "idempotency_key": f"seed-{abs(hash(sku))}"})
            assert r.status_code == 200, r.text
