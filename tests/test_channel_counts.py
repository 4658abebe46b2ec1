"""Counts a channel reports on its own: a person's edit becomes an adjust; an echo of our
push, or the channel's bookkeeping of its own sale, changes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from gateway_support import OPERATOR, SHOPIFY_SECRET, bearer, gateway_settings
from redis.asyncio import Redis
from workers_helpers import running_worker, wait_for

from gateway.app import create_app
from stockgate.embedded import EmbeddedRedis
from stockgate.keys import tenant_keys
from stockgate.models import Line
from stockgate.settings import Settings
from stockgate.stock import StockEngine
from workers.alerts import list_alerts
from workers.audit import AuditStore, audit_store
from workers.channel_counts import judge_channel_count
from workers.outbox import OutboxConsumer

T = "acme"


@pytest.fixture
async def audit(tmp_path: Path) -> AsyncIterator[AuditStore]:
    store = audit_store(Settings(data_dir=str(tmp_path)))
    await store.open()
    yield store
    await store.close()


async def judge(redis: Redis, engine: StockEngine, audit: AuditStore, available: int,
                fingerprint: str = "f1", received_ms: int | None = None) -> str:
    if received_ms is None:
        now_s, now_us = await redis.time()
        received_ms = now_s * 1000 + now_us // 1000
    return await judge_channel_count(redis, engine, audit, gateway_settings(engine.settings),
                                     T, "shop", "SKU-1", "main", available, fingerprint,
                                     received_ms)


async def on_hand(engine: StockEngine) -> int:
    return (await engine.stock(T, "SKU-1")).locations["main"].on_hand


async def test_a_persons_edit_becomes_one_adjust(redis: Redis, engine: StockEngine,
                                                 audit: AuditStore) -> None:
    await engine.adjust(T, "SKU-1", reason="receipt", idempotency_key="r", delta=10)
    assert await judge(redis, engine, audit, 25) == "applied"
    assert await on_hand(engine) == 25
    # The same body again (a replay under any delivery id) is not applied twice.
    assert await judge(redis, engine, audit, 25) == "no_change"
    assert await judge(redis, engine, audit, 25, fingerprint="f2") == "no_change"
    assert await on_hand(engine) == 25


async def test_an_older_push_is_still_an_echo(redis: Redis, engine: StockEngine,
                                              audit: AuditStore) -> None:
    await engine.adjust(T, "SKU-1", reason="receipt", idempotency_key="r", delta=8)
    await redis.lpush(tenant_keys(T).pushed_recent("shop", "SKU-1|main"), 10, 8)
    assert await judge(redis, engine, audit, 10) == "echo"
    assert await on_hand(engine) == 8


async def test_the_channels_own_sale_is_not_counted_twice(
    redis: Redis, engine: StockEngine, audit: AuditStore, tmp_path: Path
) -> None:
    await engine.adjust(T, "SKU-1", reason="receipt", idempotency_key="r", delta=10)
    # Shopify sold one unit: its count says 9 before its order webhook reaches us...
    now_s, now_us = await redis.time()
    received = now_s * 1000 + now_us // 1000
    await engine.order(T, "shop:1", [Line("SKU-1", 1)], channel="shop")
    # Meanwhile the storefront sold two: Shopify's 9 is stale, not a person's +2.
    await engine.hold(T, [Line("SKU-1", 2)], hold_id="web-cart")
    await engine.commit(T, "web-cart", "web:1")
    # ...the worker has written the order's events to the audit store by the time it judges.
    consumer = OutboxConsumer(redis, gateway_settings(engine.settings), audit)
    await consumer.ensure_groups()
    await consumer.read_new()
    assert await judge(redis, engine, audit, 9, received_ms=received) == "own_sale"
    view = (await engine.stock(T, "SKU-1")).locations["main"]
    assert (view.on_hand, view.committed, view.available) == (10, 3, 7)
    alerts = await list_alerts(redis, T, type="channel_count_ignored")
    assert len(alerts) == 1 and alerts[0].sku == "SKU-1"


async def test_an_admin_edit_reaches_stock_through_the_worker(
    redis_server: EmbeddedRedis, redis: Redis, tmp_path: Path
) -> None:
    import base64
    import hashlib
    import hmac

    import msgspec

    settings = msgspec.structs.replace(
        gateway_settings(Settings(data_dir=str(tmp_path))), channel_count_settle_s=0.2)
    app = create_app(settings, redis)
    body = msgspec.json.encode({"inventory_item_id": 7001, "location_id": 9001,
                                "available": 30, "updated_at": "2025-01-01T10:00:00Z"})
    sig = base64.b64encode(hmac.new(SHOPIFY_SECRET.encode(), body, hashlib.sha256).digest())
    headers = {"X-Shopify-Hmac-Sha256": sig.decode(), "X-Shopify-Topic":
               "inventory_levels/update", "X-Shopify-Webhook-Id": "edit-1",
               "Content-Type": "application/json"}
    async with (app.router.lifespan_context(app),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                  base_url="http://gw") as client,
                running_worker(settings, redis_server.url)):
        r = await client.post("/v1/stock/SKU-1/adjust", headers=bearer(OPERATOR), json={
            "delta": 10, "reason": "receipt", "idempotency_key": "r"})
        assert r.status_code == 200
        r = await client.post("/webhooks/shop", content=body, headers=headers)
        assert r.status_code == 202, r.text

        async def applied() -> bool:
            view = await client.get("/v1/stock/SKU-1", headers=bearer(OPERATOR))
            return view.json()["locations"]["main"]["on_hand"] == 30

        await wait_for(applied, 10)
