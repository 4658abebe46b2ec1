"""Review 14, Amazon findings (REVIEW14.md 3, 7-Amazon, 9-Amazon, 10): each test reproduces
one finding and asserts the expected behaviour; copied from
review14/tests/test_review14_findings.py."""

from __future__ import annotations

import asyncio
import copy
import itertools
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from gateway_support import cell, gateway_settings, receive
from redis.asyncio import Redis
from test_channel_amazon import amazon_channel, connected, deliver, eventbridge, notification

from stockgate.alerts import list_alerts
from stockgate.settings import Settings
from workers.adapters import PushError
from workers.adapters import amazon as amazon_adapter
from workers.adapters.base import PushItem
from workers.simulators.amazon import AmazonSim, amazon_of

pytest_plugins = ["gateway_fixtures"]


@pytest.fixture
def gw_settings(settings: Settings) -> Settings:
    base = gateway_settings(settings)
    channels = {**base.channels, "amz": msgspec.structs.replace(
        amazon_channel("http://127.0.0.1:9", AmazonSim()), tenant="acme")}
    return msgspec.structs.replace(base, channels=channels)


# ---- 3. the rest of a partly shipped order cancelled, delivered out of order --------------

async def test_amazon_cancel_of_the_rest_delivered_before_the_partial_shipment(
        client: httpx.AsyncClient, redis: Redis) -> None:
    """1 of 3 units shipped (PartiallyShipped, t+10), then the other 2 cancelled (Canceled,
    t+20); SQS keeps no order and delivers the Canceled first."""
    await receive(client, "SKU-1", 5)
    order = "114-0000001-0000001"
    base = int(time.time()) - 600

    def at(note: dict[str, Any], t: int) -> dict[str, Any]:
        note["Payload"]["OrderChangeNotification"]["OrderChangeTrigger"][
            "TimeOfOrderChange"] = time.strftime("%Y-%m-%dT%H:%M:%S.000Z",
                                                 time.gmtime(base + t))
        return note

    pending = at(notification(order, "Pending", [("SKU-1", 3, 0)]), 0)
    partial = at(notification(order, "PartiallyShipped", [("SKU-1", 3, 1)]), 10)
    cancelled = at(notification(order, "Canceled", [("SKU-1", 3, 1)]), 20)
    for note in (pending, cancelled, partial):
        assert (await deliver(client, eventbridge(note))).status_code == 200
    c = await cell(client, "SKU-1")
    print("ALERTS", [(a.type, a.detail) for a in await list_alerts(redis, "acme")])
    # Reference: one unit left with the buyer, two are back on sale.
    assert (c["on_hand"], c["committed"], c["available"]) == (4, 0, 4), c


@pytest.mark.parametrize("order_of", list(itertools.permutations(range(3))))
async def test_amazon_partial_shipment_then_cancel_in_any_delivery_order(
        client: httpx.AsyncClient, order_of: tuple[int, ...]) -> None:
    """Every delivery order of Pending, PartiallyShipped (1 of 3) and Canceled (the other 2),
    the Canceled also delivered twice: one unit shipped, two back on sale, never more."""
    await receive(client, "SKU-1", 5)
    order = "114-0000002-0000001"
    base = int(time.time()) - 600

    def at(note: dict[str, Any], t: int) -> dict[str, Any]:
        note["Payload"]["OrderChangeNotification"]["OrderChangeTrigger"][
            "TimeOfOrderChange"] = time.strftime("%Y-%m-%dT%H:%M:%S.000Z",
                                                 time.gmtime(base + t))
        return note

    life = [at(notification(order, "Pending", [("SKU-1", 3, 0)]), 0),
            at(notification(order, "PartiallyShipped", [("SKU-1", 3, 1)]), 10),
            at(notification(order, "Canceled", [("SKU-1", 3, 1)]), 20)]
    again = copy.deepcopy(life[2])
    again["NotificationMetadata"]["NotificationId"] = "redelivered-cancel"
    for note in [*(life[n] for n in order_of), again]:
        assert (await deliver(client, eventbridge(note))).status_code == 200
    c = await cell(client, "SKU-1")
    assert (c["on_hand"], c["committed"], c["available"]) == (4, 0, 4), c


async def test_amazon_cancel_with_nothing_shipped_only_cancels(
        client: httpx.AsyncClient) -> None:
    """No QuantityShipped: the Canceled stays one cancel; an order not seen yet is recorded
    cancelled and its late Pending commits nothing."""
    await receive(client, "SKU-1", 5)
    order = "114-0000003-0000001"
    r = await deliver(client, eventbridge(notification(order, "Canceled", [("SKU-1", 3, 0)])))
    assert [x["op"] for x in r.json()["results"]] == ["cancel"], r.text
    await deliver(client, eventbridge(notification(order, "Pending", [("SKU-1", 3, 0)])))
    c = await cell(client, "SKU-1")
    assert (c["on_hand"], c["committed"], c["available"]) == (5, 0, 5), c


# ---- 7. the notification's marketplace is never checked ------------------------------------

async def test_amazon_order_of_another_marketplace_is_not_this_channels(
        client: httpx.AsyncClient) -> None:
    """The channel is amazon.com (ATVPDKIKX0DER); SP-API sends one seller's ORDER_CHANGE for
    every marketplace to one destination. An amazon.ca order is counted as this channel's."""
    await receive(client, "SKU-1", 5)
    note = notification("702-0000001-0000001", "Unshipped", [("SKU-1", 2, 0)])
    note["Payload"]["OrderChangeNotification"]["Summary"]["MarketplaceId"] = "A2EUQ1WTGCTBG2"
    r = await deliver(client, eventbridge(note))
    assert r.status_code == 200
    assert r.json()["status"] == "ignored", r.text


async def test_a_fetched_order_of_another_marketplace_is_not_this_channels(
        sim_factory: Any) -> None:
    """The notification without OrderItems is fetched: getOrder's MarketplaceId is checked
    the same way."""
    server = sim_factory("amazon")
    sim = amazon_of(server.state)
    item = {"OrderItemId": "68828574383266", "SellerSKU": "SKU-1", "QuantityOrdered": 3,
            "QuantityShipped": 0}
    sim.orders = {
        "902-3159896-1390916": {"OrderStatus": "Unshipped", "OrderItems": [item],
                                "MarketplaceId": "A2EUQ1WTGCTBG2"},
        "902-3159896-1390917": {"OrderStatus": "Unshipped", "OrderItems": [item]},
    }
    async with connected(server) as (adapter, _):
        other = await adapter.fetch_order("902-3159896-1390916")
        own = await adapter.fetch_order("902-3159896-1390917")
    assert other.state == "incomplete"
    assert own.state == "open"


# ---- 9. one refresh under concurrency also when the refresh fails --------------------------

async def test_amazon_failed_refresh_is_not_repeated_by_every_waiting_push(
        sim_factory: Any) -> None:
    server = sim_factory("amazon")
    async with connected(server, refresh_token="Atzr|revoked") as (adapter, sent):
        outcomes = await asyncio.gather(*(adapter.push_batch([PushItem(f"S{n}", "main", n)])
                                          for n in range(8)), return_exceptions=True)
    assert all(isinstance(o, PushError) for o in outcomes)
    refreshes = [r for r in sent if r.url.path == "/auth/o2/token"]
    assert len(refreshes) == 1, f"{len(refreshes)} LWA calls for one refused refresh token"


async def test_amazon_failed_refresh_is_asked_again_once_its_hold_is_over(
        sim_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The failure is remembered for a few seconds only: a refresh token the seller
    re-authorised is tried again, not refused for good."""
    monkeypatch.setattr(amazon_adapter, "REFRESH_FAILURE_HOLD_S", 0.0)
    server = sim_factory("amazon")
    async with connected(server, refresh_token="Atzr|revoked") as (adapter, sent):
        for n in range(2):
            with pytest.raises(PushError):
                await adapter.push_batch([PushItem(f"S{n}", "main", n)])
    assert len([r for r in sent if r.url.path == "/auth/o2/token"]) == 2


# ---- 10. a SKU of dots leaves its path segment ---------------------------------------------
# The review's test accepted a PATCH to ".../%2E%2E"; REVIEW14.md asks for the SKU to fail
# alone instead: an escaped dot segment is still a dot segment to any server or proxy that
# normalises (RFC 3986 6.2.2.2 decodes %2E), so no request may name it at all.

@pytest.mark.parametrize("sku", ["..", "."])
async def test_amazon_dot_segment_sku_stays_one_path_segment(sim_factory: Any,
                                                              sku: str) -> None:
    server = sim_factory("amazon")
    async with connected(server) as (adapter, sent):
        dots, fine = await adapter.push_batch([PushItem(sku, "main", 3),
                                               PushItem("SKU-1", "main", 4)])
        assert await adapter.get_available(sku, "main") is None
    assert dots.status == "failed" and not dots.retryable, dots
    assert fine.status == "ok", fine  # the rest of the batch goes on
    items_at = f"/listings/2021-08-01/items/{AmazonSim().seller_id}/"
    listing_calls = [r for r in sent if r.url.path.startswith("/listings/")]
    assert [r.url.path for r in listing_calls] == [items_at + "SKU-1"], listing_calls


async def test_a_fetched_cancel_ships_what_had_shipped_before_it_releases_the_rest(
        sim_factory: Any, redis: Redis, settings: Settings) -> None:
    """The fetch path of finding 3: a Canceled notification without items is fetched, and
    getOrderItems says one unit shipped before the cancel. That unit left the shelf: only
    the two unshipped ones come back on sale."""
    from workers_helpers import settings_with

    from stockgate.stock import StockEngine
    from workers.queue import apply_channel_order

    server = sim_factory("amazon")
    sim = amazon_of(server.state)
    sim.orders = {"902-3159896-1390999": {"OrderStatus": "Canceled", "OrderItems": [
        {"OrderItemId": "68828574383299", "SellerSKU": "SKU-1", "QuantityOrdered": 3,
         "QuantityShipped": 1}]}}
    async with connected(server) as (adapter, _):
        engine = StockEngine(redis, settings_with(Path(settings.data_dir),
                                                  {adapter.name: adapter.channel}))
        await engine.load_scripts()
        try:
            await engine.adjust("default", "SKU-1", reason="receipt", idempotency_key="r",
                                delta=5)
            for _ in range(2):  # and again: a redelivered job changes nothing
                await apply_channel_order(engine, adapter, "default", adapter.name,
                                          "902-3159896-1390999")
            c = (await engine.stock("default", "SKU-1")).locations["main"]
        finally:
            engine.scripts.close()
    assert (c.on_hand, c.committed, c.available) == (4, 0, 4), c
