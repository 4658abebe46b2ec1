"""Counts a channel reports on its own: a person's edit becomes an adjust; an echo of our
push, or the channel's bookkeeping of its own sale, changes nothing. An edit is measured from
what the channel showed when the count was made, and never creates units the report does not
prove."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psycopg
import pytest
from gateway_support import OPERATOR, SHOPIFY_SECRET, bearer, gateway_settings
from redis.asyncio import Redis
from test_workers_audit import PG_BASE, _pg_or_skip
from workers_helpers import running_worker, wait_for

from gateway.app import create_app
from stockgate.alerts import list_alerts
from stockgate.audit import AuditStore, audit_store
from stockgate.embedded import EmbeddedRedis
from stockgate.keys import tenant_keys
from stockgate.models import Line
from stockgate.settings import Settings
from stockgate.stock import StockEngine
from workers.channel_counts import judge_channel_count
from workers.outbox import OutboxConsumer
from workers.propagation import SHOWN_PUSH, log_shown, now_ms, record_push

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
                                "available": 30, "updated_at": time.strftime(
                                    "%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
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


@pytest.fixture(params=["sqlite", "postgresql"])
async def any_audit(request: pytest.FixtureRequest, tmp_path: Path
                    ) -> AsyncIterator[AuditStore]:
    """Both audit stores: the judge's query filters by event type in SQL on each."""
    schema = ""
    settings = Settings(data_dir=str(tmp_path))
    if request.param == "postgresql":
        await _pg_or_skip()
        schema = f"sg_counts_{uuid.uuid4().hex[:12]}"
        async with await psycopg.AsyncConnection.connect(PG_BASE, autocommit=True) as conn:
            await conn.execute(f'CREATE SCHEMA "{schema}"')
        settings = Settings(data_dir=str(tmp_path),
                            audit_dsn=f"{PG_BASE}?options=-csearch_path%3D{schema}")
    store = audit_store(settings)
    await store.open()
    yield store
    await store.close()
    if schema:
        async with await psycopg.AsyncConnection.connect(PG_BASE, autocommit=True) as conn:
            await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


async def test_the_channels_sale_among_many_cart_holds_is_its_own(
    redis: Redis, engine: StockEngine, any_audit: AuditStore
) -> None:
    await engine.adjust(T, "SKU-1", reason="receipt", idempotency_key="r", delta=1000)
    received = now_ms()
    # A flash sale: shoppers' carts on the channel's storefront and on the web shop hold the
    # SKU (600 hold events of the channel alone, more than one page of the audit trail)...
    for i in range(600):
        await engine.hold(T, [Line("SKU-1", 1)], hold_id=f"shop-cart-{i}", channel="shop")
    for i in range(100):
        await engine.hold(T, [Line("SKU-1", 1)], hold_id=f"web-cart-{i}")
    # ...and then the channel's own sale, whose count update is the report judged below.
    await engine.order(T, "shop:1", [Line("SKU-1", 1)], channel="shop")
    consumer = OutboxConsumer(redis, gateway_settings(engine.settings), any_audit)
    await consumer.ensure_groups()
    while await consumer.read_new():
        pass
    assert await judge(redis, engine, any_audit, 999, received_ms=received) == "own_sale"
    assert await on_hand(engine) == 1000  # no adjust


REF = "SKU-1|main"


async def shown(redis: Redis, ms: int, value: int) -> None:
    """A push of ours to the channel at `ms` (the pusher records now; tests pick the time)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hset(tenant_keys(T).pushed("shop"), REF, value)
        log_shown(pipe, T, "shop", REF, SHOWN_PUSH, ms, value)
        await pipe.execute()


async def sell(engine: StockEngine, order_id: str, qty: int) -> None:
    """A sale elsewhere (the web shop): the canonical count moves, the channel's does not yet."""
    await engine.order(T, order_id, [Line("SKU-1", qty)])


async def available(engine: StockEngine) -> int:
    return (await engine.stock(T, "SKU-1")).locations["main"].available


async def test_an_edit_is_measured_from_what_the_channel_showed(
    redis: Redis, engine: StockEngine, audit: AuditStore
) -> None:
    await engine.adjust(T, "SKU-1", reason="receipt", idempotency_key="r", delta=10)
    await record_push(redis, T, "shop", REF, 10)
    # The channel shows 10; a person sets 12 in its admin: two more units on the shelf.
    received = now_ms() + 1
    # Before the job judges it, the web shop sells 3 and the pusher sends the new 7.
    await sell(engine, "web:1", 3)
    await shown(redis, received + 5, 7)
    assert await judge(redis, engine, audit, 12, received_ms=received) == "applied"
    # +2, not the +5 that separates 12 from the canonical 7 when the job runs.
    assert (await on_hand(engine), await available(engine)) == (12, 9)


@pytest.mark.parametrize("case", ["sold_out_since", "push_in_flight", "two_edits",
                                  "late_job", "nothing_pushed"])
async def test_a_report_never_creates_units_it_does_not_prove(
    redis: Redis, engine: StockEngine, audit: AuditStore, case: str
) -> None:
    await engine.adjust(T, "SKU-1", reason="receipt", idempotency_key="r", delta=10)
    t = now_ms()
    pushed = 10
    if case != "nothing_pushed":
        await shown(redis, t - 60_000, 10)
    reports: list[tuple[str, int, int]] = []  # fingerprint, received ms, reported count
    if case == "sold_out_since":
        # A person adds 2 (10 -> 12); the web shop then sells all 10 and 0 is pushed.
        reports = [("a", t, 12)]
        await sell(engine, "web:1", 10)
        await shown(redis, t + 100, 0)
    elif case == "push_in_flight":
        # The web shop sold 3 and our push of 7 left 100 ms before the report: the channel
        # may still have shown 10 when the person typed 12. Only +2 is proven.
        await sell(engine, "web:1", 3)
        await shown(redis, t - 100, 7)
        reports = [("a", t, 12)]
    elif case in ("two_edits", "late_job"):
        # Two edits (12, then 14) before any push of ours: +4 in all, not +2 and +4.
        reports = [("a", t, 12), ("b", t + 1_000, 14)]
        if case == "late_job":
            reports.reverse()  # the first count's job runs after the second's
    else:
        # Nothing ever pushed: judged against the canonical count, never above the report.
        pushed = await available(engine)
        reports = [("a", t, 12)]
    start = await on_hand(engine)
    for fingerprint, received, count in reports:
        before = await on_hand(engine)
        await judge(redis, engine, audit, count, fingerprint=fingerprint, received_ms=received)
        assert await on_hand(engine) - before <= count - pushed
    grown = await on_hand(engine) - start
    assert grown == max(count for _, _, count in reports) - pushed
