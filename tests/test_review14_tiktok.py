"""Review 14, TikTok findings (REVIEW14.md 1, 4, 5, 7-TikTok, 9-TikTok): each test reproduces
one finding (copied from review14/tests/test_review14_findings.py) and asserts the expected
behaviour."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import msgspec
from gateway_support import gateway_settings
from redis.asyncio import Redis
from test_channel_tiktok import CATALOGUE, channel_for, connected, line, tiktok_sim
from workers_helpers import settings_with

from gateway.app import create_app
from stockgate.alerts import list_alerts
from stockgate.settings import Channel, Settings, TikTokConfig
from stockgate.stock import StockEngine
from workers.adapters import PushError
from workers.adapters.base import PushItem
from workers.queue import apply_channel_order

pytest_plugins = ["gateway_fixtures"]

SHOP_A = "7495540735365777507"
SHOP_B = "7495540735365777508"


# ---- 1. TikTok: a cancelled line item of a live order is sold, then shipped ----------------

async def test_tiktok_cancelled_line_item_is_never_sold_nor_shipped(
        redis: Redis, tmp_path: Path, sim_factory: Any) -> None:
    """TikTok cancels single line items (display_status CANCELLED on the line, the order
    goes on). Reference model: 10 HAT on the shelf, the buyer keeps 1 of 2, 1 ships."""
    sim = tiktok_sim(sim_factory)
    channel = channel_for(sim)
    engine = StockEngine(redis, settings_with(tmp_path, {"tt": channel}))
    await engine.load_scripts()
    try:
        await engine.adjust("default", "HAT", reason="receipt", idempotency_key="r", delta=10)
        async with connected(channel) as (adapter, _):
            sim.state.orders["9101"] = {"status": "AWAITING_SHIPMENT", "line_items": [
                line("HAT", "AWAITING_SHIPMENT"), line("HAT", "CANCELLED")]}
            await apply_channel_order(engine, adapter, "default", "tt", "9101")
            first = (await engine.stock("default", "HAT")).locations["main"]
            sim.state.orders["9101"] = {"status": "DELIVERED", "line_items": [
                line("HAT", "DELIVERED", "P1"), line("HAT", "CANCELLED")]}
            await apply_channel_order(engine, adapter, "default", "tt", "9101")
        c = (await engine.stock("default", "HAT")).locations["main"]
        # One unit left the building; the cancelled one is still on the shelf.
        assert (first.committed, c.on_hand, c.committed, c.available) == (1, 9, 0, 9), (
            first, c)
    finally:
        engine.scripts.close()


async def test_tiktok_line_item_cancelled_after_the_order_was_counted_is_given_back(
        redis: Redis, tmp_path: Path, sim_factory: Any) -> None:
    """Both units counted open, then one line item is cancelled: the next fetch (a newer
    update_time) merges into the record and gives that unit back, rather than being refused
    as an idempotency conflict."""
    sim = tiktok_sim(sim_factory)
    channel = channel_for(sim)
    engine = StockEngine(redis, settings_with(tmp_path, {"tt": channel}))
    await engine.load_scripts()
    try:
        await engine.adjust("default", "HAT", reason="receipt", idempotency_key="r", delta=10)
        now = int(time.time())
        async with connected(channel) as (adapter, _):
            sim.state.orders["9102"] = {"status": "AWAITING_SHIPMENT", "update_time": now - 60,
                                        "line_items": [line("HAT", "AWAITING_SHIPMENT"),
                                                       line("HAT", "AWAITING_SHIPMENT")]}
            await apply_channel_order(engine, adapter, "default", "tt", "9102")
            first = (await engine.stock("default", "HAT")).locations["main"]
            sim.state.orders["9102"] = {"status": "AWAITING_SHIPMENT", "update_time": now,
                                        "line_items": [line("HAT", "AWAITING_SHIPMENT"),
                                                       line("HAT", "CANCELLED")]}
            await apply_channel_order(engine, adapter, "default", "tt", "9102")
            second = (await engine.stock("default", "HAT")).locations["main"]
            sim.state.orders["9102"] = {"status": "DELIVERED", "update_time": now + 60,
                                        "line_items": [line("HAT", "DELIVERED", "P1"),
                                                       line("HAT", "CANCELLED")]}
            await apply_channel_order(engine, adapter, "default", "tt", "9102")
        c = (await engine.stock("default", "HAT")).locations["main"]
        assert (first.committed, second.committed) == (2, 1), (first, second)
        assert (c.on_hand, c.committed, c.available) == (9, 0, 9), c
    finally:
        engine.scripts.close()


# ---- 4. TikTok: the fetch path has no stale-order rule --------------------------------------

async def test_tiktok_order_older_than_the_return_window_is_not_sold_again(
        redis: Redis, tmp_path: Path, sim_factory: Any) -> None:
    """Its record is gone (placed 200 days ago, return window 90 days); a fresh webhook about
    it (a late return or status change, signed now) queues a fetch, and the fetch commits
    and ships its units a second time. eBay's poller and the webhook ingress refuse this
    (stale_delivery); the TikTok (and Amazon FetchOrder) fetch path does not."""
    sim = tiktok_sim(sim_factory)
    channel = channel_for(sim)
    engine = StockEngine(redis, settings_with(tmp_path, {"tt": channel}))
    await engine.load_scripts()
    try:
        await engine.adjust("default", "HAT", reason="receipt", idempotency_key="r", delta=10)
        sim.state.orders["9201"] = {
            "status": "COMPLETED", "create_time": int(time.time()) - 200 * 86_400,
            "update_time": int(time.time()),
            "line_items": [line("HAT", "COMPLETED", "P1"), line("HAT", "COMPLETED", "P1")]}
        async with connected(channel) as (adapter, _):
            outcome = await apply_channel_order(engine, adapter, "default", "tt", "9201")
        c = (await engine.stock("default", "HAT")).locations["main"]
        assert c.on_hand == 10, f"units shipped again for a 200-day-old order: {c}"
        assert outcome == "failed-stale", outcome
        alerts = await list_alerts(redis, "default")
        assert [a.type for a in alerts] == ["stale_delivery"], alerts
    finally:
        engine.scripts.close()


# ---- 7 (TikTok). The shop a webhook is for is never checked ---------------------------------

TT_KEY, TT_SECRET = "tt-app-key", "tt-app-secret-0123456789"


def tt_channel(shop_cipher: str, shop_id: str = SHOP_A) -> Channel:
    return Channel(kind="tiktok", secret=TT_SECRET, tenant="acme",
                   tiktok=TikTokConfig(app_key=TT_KEY, refresh_token="r",
                                       shop_cipher=shop_cipher, shop_id=shop_id),
                   variant_skus={item: sku for sku, item in CATALOGUE.items()})


def tt_body(shop_id: str, order_id: str, status: str) -> bytes:
    return json.dumps({"type": 1, "tts_notification_id": uuid.uuid4().hex,
                       "shop_id": shop_id, "timestamp": int(time.time()),
                       "data": {"order_id": order_id, "order_status": status,
                                "update_time": int(time.time())}}).encode()


def tt_signed(body: bytes) -> dict[str, str]:
    return {"Content-Type": "application/json", "Authorization": hmac.new(
        TT_SECRET.encode(), TT_KEY.encode() + body, hashlib.sha256).hexdigest()}


async def test_tiktok_webhook_for_another_shop_of_the_same_app_is_not_applied(
        settings: Settings, redis: Redis) -> None:
    """One app, two shops (two channels, same app key and secret): a body TikTok signed for
    shop A's order is accepted on shop B's channel id, and shop_id is never read."""
    base = gateway_settings(settings)
    configured = msgspec.structs.replace(base, channels={
        **base.channels, "tt-a": tt_channel("cipher-a", SHOP_A),
        "tt-b": tt_channel("cipher-b", SHOP_B)})
    app = create_app(configured, redis)
    body = tt_body(SHOP_A, "576653688135258999", "AWAITING_SHIPMENT")
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gw") as gw:
        a = await gw.post("/webhooks/tt-a", content=body, headers=tt_signed(body))
        b = await gw.post("/webhooks/tt-b", content=body, headers=tt_signed(body))
    assert a.status_code == 202
    # Expected: the channel knows its shop id and a body for another shop changes nothing.
    assert b.json()["status"] == "ignored", b.text


# ---- 9 (TikTok). One refresh under concurrency also when the refresh fails ------------------

async def test_tiktok_failed_refresh_is_not_repeated_by_every_waiting_push(
        sim_factory: Any) -> None:
    sim = tiktok_sim(sim_factory)
    channel = channel_for(sim, tiktok=TikTokConfig(
        app_key="sim-app-key", refresh_token="revoked", shop_cipher="ROW_sim_cipher",
        auth_url=sim.url))
    async with connected(channel) as (adapter, sent):
        outcomes = await asyncio.gather(*(adapter.push_batch([PushItem("HAT", "main", n)])
                                          for n in range(8)), return_exceptions=True)
    assert all(isinstance(o, PushError) for o in outcomes)
    refreshes = [r for r in sent if r.url.path == "/api/v2/token/refresh"]
    assert len(refreshes) == 1, f"{len(refreshes)} refresh calls for one refused token"


# ---- 5. TikTok: a signed retry older than a day is 401 forever, silently ------------------

async def test_tiktok_signed_cancel_retried_after_a_day_is_not_lost_silently(
        settings: Settings, redis: Redis) -> None:
    """The gateway was down for 25 h; TikTok retries its CANCELLED with the original
    timestamp. Cancel and fetch are idempotent (a replay changes nothing), yet the body is
    answered 401 (TikTok keeps retrying, then gives up) and nothing says it was dropped."""
    from stockgate.models import Line
    base = gateway_settings(settings)
    configured = msgspec.structs.replace(base, channels={**base.channels,
                                                         "tt": tt_channel("cipher-a")})
    engine = StockEngine(redis, configured)
    await engine.load_scripts()
    try:
        await engine.adjust("acme", "HAT", reason="receipt", idempotency_key="r", delta=5)
        await engine.order("acme", "tt:576653688135250001", [Line("HAT", 2)], channel="tt")
        body = json.dumps({"type": 1, "tts_notification_id": "n-old-cancel",
                           "shop_id": SHOP_A,
                           "timestamp": int(time.time()) - 25 * 3600,
                           "data": {"order_id": "576653688135250001",
                                    "order_status": "CANCELLED",
                                    "update_time": int(time.time()) - 25 * 3600}}).encode()
        app = create_app(configured, redis)
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://gw") as gw:
            r = await gw.post("/webhooks/tt", content=body, headers=tt_signed(body))
        c = (await engine.stock("acme", "HAT")).locations["main"]
        alerts = await list_alerts(redis, "acme")
        # Expected: the cancel applies (it is idempotent), or at least 2xx with an alert.
        assert c.committed == 0 or (r.status_code < 300 and alerts), (r.status_code, r.text,
                                                                     c, alerts)
    finally:
        engine.scripts.close()


# ---- 4 (Amazon's PurchaseDate): the ISO times the fetch path's stale rule reads ------------

def test_iso_times_of_the_stale_rule() -> None:
    """Amazon's PurchaseDate (ISO 8601, UTC "Z", with or without fractions); anything
    unreadable is 0, which the rule reads as unknown (never stale)."""
    from workers.adapters.base import iso_to_ms
    assert iso_to_ms("2026-11-29T19:30:00.000Z") == 1_795_980_600_000
    assert iso_to_ms("2026-11-29T19:30:00Z") == 1_795_980_600_000
    assert iso_to_ms("2026-11-29T20:30:00+01:00") == 1_795_980_600_000
    assert iso_to_ms("2026-11-29T19:30:00") == 1_795_980_600_000  # no zone: UTC
    for junk in ("", "yesterday", None, 1_795_987_800, "2026-13-45T00:00:00Z"):
        assert iso_to_ms(junk) == 0
