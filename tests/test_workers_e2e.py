"""End to end: gateway + worker + three channel simulators. Storefront holds, commits and
releases, and Shopify order webhooks, across 20 SKUs; afterwards every channel shows
Stockgate's available, the audit trail holds each outbox event once, nothing is pending."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import random
import time
from pathlib import Path

import httpx
from redis.asyncio import Redis
from workers_helpers import (
    audit_ids,
    channel_for,
    channels_match,
    gateway_client,
    running_worker,
    settings_with,
    settled,
    wait_for,
)

from stockgate.embedded import EmbeddedRedis
from stockgate.keys import tenant_keys
from stockgate.stock import StockEngine
from workers.simulators import SimulatorServer

SKUS = [f"SKU-{i:02d}" for i in range(20)]
OPERATIONS = 1000


def shopify_order(order_id: int, sku: str, qty: int, secret: str) -> tuple[bytes, dict]:
    body = json.dumps({"id": order_id, "line_items": [{"quantity": qty, "sku": sku}]}).encode()
    digest = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest())
    return body, {"X-Shopify-Topic": "orders/create", "X-Shopify-Webhook-Id": f"w{order_id}",
                  "X-Shopify-Hmac-Sha256": digest.decode(),
                  "Content-Type": "application/json"}


async def one_operation(client: httpx.AsyncClient, i: int, rng: random.Random) -> int:
    sku, qty = rng.choice(SKUS), rng.randint(1, 3)
    kind = i % 4
    if kind == 3:
        body, headers = shopify_order(5000 + i, sku, qty, "s3cret")
        reply = await client.post("/webhooks/shop", content=body, headers=headers)
        return reply.status_code
    reply = await client.post("/v1/holds", json={"hold_id": f"h{i}",
                                                 "lines": [{"sku": sku, "qty": qty}]})
    if reply.status_code != 201:
        return reply.status_code
    if kind == 0:
        reply = await client.post(f"/v1/holds/h{i}/commit", json={"order_id": f"o{i}"})
    elif kind == 1:
        reply = await client.delete(f"/v1/holds/h{i}")
    return reply.status_code


async def test_holds_and_orders_reach_every_channel(
        redis: Redis, redis_server: EmbeddedRedis, tmp_path: Path) -> None:
    sims = {"shop": SimulatorServer("shopify").start(),
            "woo": SimulatorServer("woocommerce").start(),
            "bc": SimulatorServer("bigcommerce").start()}
    try:
        settings = settings_with(tmp_path, {
            "shop": channel_for("shopify", sims["shop"]),
            "woo": channel_for("woocommerce", sims["woo"]),
            "bc": channel_for("bigcommerce", sims["bc"])})
        engine = StockEngine(redis, settings)
        rng = random.Random(4)
        async with running_worker(settings, redis_server.url), \
                gateway_client(settings, redis) as client:
            for n, sku in enumerate(SKUS):
                reply = await client.post(f"/v1/stock/{sku}/adjust", json={
                    "delta": 60, "reason": "receipt", "idempotency_key": f"rcv-{n}"})
                assert reply.status_code in (200, 201), reply.text
            started = time.monotonic()
            statuses: list[int] = []
            for chunk in range(0, OPERATIONS, 50):
                statuses += await asyncio.gather(*(one_operation(client, i, rng)
                                                   for i in range(chunk, chunk + 50)))
            load_s = time.monotonic() - started
            assert set(statuses) <= {200, 201, 202, 204, 409}, set(statuses)
            converge_s = await wait_for(lambda: channels_match(engine, sims, SKUS), 20)
            await wait_for(lambda: settled(redis), 10)
        assert await channels_match(engine, sims, SKUS)
        stream_ids = [e[0].decode() for e in await redis.xrange(tenant_keys("default").outbox)]
        ids = await audit_ids(settings)
        assert ids == stream_ids  # one row per outbox event: no gap, no duplicate, in order
        writes = sum(s.state.writes for s in sims.values())
        print(f"\ne2e: {OPERATIONS} operations in {load_s:.2f}s, {len(stream_ids)} events, "
              f"{writes} channel writes, channels converged {converge_s:.2f}s after the load")
    finally:
        for sim in sims.values():
            sim.stop()
