"""WooCommerce's `refunded` status over HTTP: a refund says money went back, not which goods
came back, so it changes no stock and raises a `refund_needs_review` alert naming the lines,
unless the channel's config sets `restock_refunds` (docs/order-lifecycle.md, "Refunds,
cancels and fulfilments")."""

from __future__ import annotations

from typing import Any

import httpx
import msgspec
import pytest
from gateway_support import OPERATOR, bearer, cell, gateway_settings, receive
from test_gateway_webhooks import post, woo, woo_order

from stockgate.settings import Settings

pytest_plugins = ["gateway_fixtures"]  # gw_settings, app, client


async def alerts(client: httpx.AsyncClient, kind: str) -> list[dict[str, Any]]:
    r = await client.get("/v1/alerts", params={"type": kind}, headers=bearer(OPERATOR))
    assert r.status_code == 200, r.text
    return r.json()["alerts"]


async def state(client: httpx.AsyncClient, sku: str) -> tuple[int, int]:
    found = await cell(client, sku)
    return found["on_hand"], found["committed"]


async def test_woo_refund_of_a_shipped_order_restocks_nothing_and_asks_for_review(
        client: httpx.AsyncClient) -> None:
    await receive(client, "SKU-1", 10)
    await receive(client, "SKU-V", 10)
    lines = [("SKU-1", 0, 2), ("", 88, 1)]  # the second line is a mapped variant (SKU-V)
    await post(client, "woo", woo("order.created", woo_order(901, "processing", lines)))
    await post(client, "woo", woo("order.updated", woo_order(901, "completed", lines)))
    assert await state(client, "SKU-1") == (8, 0)
    r = await post(client, "woo", woo("order.updated", woo_order(901, "refunded", lines)))
    assert r.status_code == 200, r.text
    # The units are with the customer until someone says otherwise: not back on sale.
    assert await state(client, "SKU-1") == (8, 0)
    assert await state(client, "SKU-V") == (9, 0)
    placed, result = r.json()["results"]  # the body states the whole order: placed, refunded
    assert placed["outcome"] == "replayed", r.text
    assert (result["op"], result["ref"], result["outcome"]) == (
        "refund_review", "woo:901", "applied")
    [alert] = await alerts(client, "refund_needs_review")
    assert (alert["channel"], alert["ref"]) == ("woo", "woo:901")
    assert "SKU-1 x 2" in alert["detail"] and "SKU-V x 1" in alert["detail"]
    # The order is saved again (a fresh delivery, another body, the same status): still
    # one alert, still no stock.
    again = {**woo_order(901, "refunded", lines), "customer_note": "thanks"}
    r = await post(client, "woo", woo("order.updated", again))
    assert r.json()["status"] == "applied", r.text
    assert len(await alerts(client, "refund_needs_review")) == 1
    assert await state(client, "SKU-1") == (8, 0)


async def test_woo_refund_before_shipping_keeps_the_units_committed_for_review(
        client: httpx.AsyncClient) -> None:
    await receive(client, "SKU-1", 10)
    await post(client, "woo", woo("order.created", woo_order(902, "processing",
                                                             [("SKU-1", 0, 3)])))
    await post(client, "woo", woo("order.updated", woo_order(902, "refunded",
                                                             [("SKU-1", 0, 3)])))
    assert await state(client, "SKU-1") == (10, 3)
    [alert] = await alerts(client, "refund_needs_review")
    assert alert["ref"] == "woo:902" and "SKU-1 x 3" in alert["detail"]


class TestRestockRefunds:
    @pytest.fixture
    def gw_settings(self, settings: Settings) -> Settings:
        """The gateway's settings plus `woo-restock`: the same kind of shop, configured to
        say its refunds always bring the goods back."""
        base = gateway_settings(settings)
        restocking = msgspec.structs.replace(base.channels["woo"], restock_refunds=True)
        return msgspec.structs.replace(base,
                                       channels={**base.channels, "woo-restock": restocking})

    async def test_woo_refund_restocks_when_the_channel_sets_restock_refunds(
            self, client: httpx.AsyncClient) -> None:
        await receive(client, "SKU-1", 10)
        await post(client, "woo-restock", woo("order.created", woo_order(
            903, "processing", [("SKU-1", 0, 2)])))
        await post(client, "woo-restock", woo("order.updated", woo_order(
            903, "completed", [("SKU-1", 0, 2)])))
        assert await state(client, "SKU-1") == (8, 0)
        r = await post(client, "woo-restock", woo("order.updated", woo_order(
            903, "refunded", [("SKU-1", 0, 2)])))
        assert r.json()["results"][-1]["op"] == "restock", r.text
        assert await state(client, "SKU-1") == (10, 0)
        assert await alerts(client, "refund_needs_review") == []
