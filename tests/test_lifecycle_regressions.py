"""Regression tests for the order-lifecycle rules in docs/order-lifecycle.md, one per reported
case, over HTTP against the real app and the session's Redis.

Shopify payload shapes follow Shopify's documentation: orders carry `cancelled_at` (set when
cancelled, e.g. the orders/cancelled delivery shown at https://pastebin.com/2g7X9EDR) and
`fulfillment_status` (null for a new order, "fulfilled", "partial": REST Order resource,
https://community.shopify.com/t/how-to-get-orders-fulfillment-status-via-rest-api/124722);
a Fulfillment is {id, order_id, status ("success", ...), line_items} (Shopify fulfillment
schema, https://shopify.dev/api/admin-rest/2025-01/resources/fulfillment); a refund's
`refund_line_items[].restock_type` is one of return, cancel, no_restock, legacy_restock
(https://shopify.dev/docs/api/admin-graphql/2025-10/enums/refundlineitemrestocktype).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
from gateway_support import OPERATOR, STOREFRONT, bearer, cell, receive
from starlette.applications import Starlette
from test_gateway_webhooks import post, shopify, standard, woo, woo_order

pytest_plugins = ["gateway_fixtures"]  # gw_settings, app, client


# ---- Shopify bodies ------------------------------------------------------------------------

def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _item(line_id: int, sku: str, variant_id: int, qty: int) -> dict[str, Any]:
    return {"id": line_id, "sku": sku, "variant_id": variant_id, "product_id": 632910392,
            "quantity": qty, "title": "Sneaker", "price": "199.00", "requires_shipping": True,
            "gift_card": False}


def order_body(order_id: int, lines: list[tuple[str, int]], *, hold_id: str | None = None,
               cancelled_at: str | None = None, fulfillment_status: str | None = None
               ) -> dict[str, Any]:
    """A Shopify order (orders/create, orders/cancelled, orders/fulfilled bodies).
    Line ids are derived from the order id and position, stable across deliveries."""
    notes = [{"name": "gift_wrap", "value": "no"}]
    if hold_id is not None:
        notes.append({"name": "stockgate_hold_id", "value": hold_id})
    return {
        "id": order_id, "admin_graphql_api_id": f"gid://shopify/Order/{order_id}",
        "name": f"#{order_id}", "email": "jon@example.com", "currency": "EUR",
        "created_at": _now_iso(), "updated_at": _now_iso(),
        "cancelled_at": cancelled_at,
        "cancel_reason": "customer" if cancelled_at else None,
        "financial_status": "paid", "fulfillment_status": fulfillment_status,
        "location_id": None, "note_attributes": notes,
        "line_items": [_item(line_id(order_id, i), sku, 111 + i, qty)
                       for i, (sku, qty) in enumerate(lines)],
        "fulfillments": [], "refunds": [],
    }


def line_id(order_id: int, i: int) -> int:
    return order_id * 100 + i


def fulfillment_body(fulfillment_id: int, order_id: int,
                     lines: list[tuple[int, str, int]]) -> dict[str, Any]:
    """fulfillments/create: lines are (line item id, sku, qty)."""
    return {"id": fulfillment_id, "order_id": order_id, "status": "success",
            "created_at": _now_iso(), "location_id": 9001, "tracking_company": "UPS",
            "line_items": [_item(lid, sku, 111, qty) for lid, sku, qty in lines]}


def refund_body(refund_id: int, order_id: int,
                lines: list[tuple[int, str, int, str]]) -> dict[str, Any]:
    """refunds/create: lines are (line item id, sku, qty, restock_type)."""
    return {"id": refund_id, "order_id": order_id, "created_at": _now_iso(),
            "note": "returned", "restock": None, "transactions": [],
            "refund_line_items": [
                {"id": refund_id * 10 + i, "line_item_id": lid, "quantity": qty,
                 "restock_type": restock_type, "location_id": 9001, "subtotal": 199.0,
                 "line_item": _item(lid, sku, 111, qty)}
                for i, (lid, sku, qty, restock_type) in enumerate(lines)]}


async def shop(client: httpx.AsyncClient, topic: str, body: dict[str, Any]) -> httpx.Response:
    r = await post(client, "shop", shopify(topic, body))
    assert r.status_code in (200, 202), r.text
    return r


def result_of(r: httpx.Response) -> dict[str, Any]:
    """The operation a delivery is about. A WooCommerce body states the whole order, so a
    completed or refunded body also places the order: that part must be a replay."""
    *before, last = r.json()["results"]
    assert all(x["outcome"] == "replayed" for x in before), r.text
    return last


async def storefront_hold(client: httpx.AsyncClient, sku: str, qty: int, *,
                          hold_id: str | None = None, ttl_s: int | None = None
                          ) -> httpx.Response:
    body: dict[str, Any] = {"lines": [{"sku": sku, "qty": qty}]}
    if hold_id is not None:
        body["hold_id"] = hold_id
    if ttl_s is not None:
        body["ttl_s"] = ttl_s
    return await client.post("/v1/holds", headers=bearer(STOREFRONT), json=body)


async def storefront_commit(client: httpx.AsyncClient, hold_id: str, order_id: str
                            ) -> httpx.Response:
    return await client.post(f"/v1/holds/{hold_id}/commit", headers=bearer(STOREFRONT),
                             json={"order_id": order_id})


async def alerts(client: httpx.AsyncClient, type_: str) -> list[dict[str, Any]]:
    r = await client.get("/v1/alerts", headers=bearer(OPERATOR), params={"type": type_})
    assert r.status_code == 200, r.text
    return [a for a in r.json()["alerts"] if a["type"] == type_]


# ---- 1. a hold the storefront committed is no one else's -----------------------------------

async def test_storefront_committed_hold_is_not_claimed_by_channel_orders(
        client: httpx.AsyncClient) -> None:
    """A channel order naming a hold the storefront committed under its own order id (not the
    channel's reference) is not that sale: it takes from available, and there is none."""
    await receive(client, "SKU-L", 1)
    r = await storefront_hold(client, "SKU-L", 1, hold_id="cart-last")
    assert r.status_code == 201, r.text
    r = await storefront_commit(client, "cart-last", "web-1")
    assert r.status_code == 200, r.text
    for order_id in (1101, 1102, 1103):
        r = await shop(client, "orders/create", order_body(
            order_id, [("SKU-L", 1)], hold_id="cart-last"))
        state = await cell(client, "SKU-L")
        assert state["committed"] <= state["on_hand"] == 1, (order_id, state)
        lines = result_of(r).get("lines") or []
        assert [(ln["sku"], ln["status"]) for ln in lines] == [
            ("SKU-L", "oversell_rejected")], r.text
    state = await cell(client, "SKU-L")
    assert (state["on_hand"], state["committed"], state["reserved"]) == (1, 1, 0)


# ---- 2. a hold with no SKU in common is not claimed ----------------------------------------

async def test_hold_sharing_no_sku_with_the_order_stays_held(client: httpx.AsyncClient) -> None:
    await receive(client, "SKU-A", 5)
    await receive(client, "SKU-B", 5)
    r = await storefront_hold(client, "SKU-A", 2, hold_id="cart-h2")
    assert r.status_code == 201, r.text
    r = await shop(client, "orders/create", order_body(1201, [("SKU-B", 1)], hold_id="cart-h2"))
    lines = result_of(r).get("lines") or []
    assert [(ln["sku"], ln["qty"], ln["status"]) for ln in lines] == [
        ("SKU-B", 1, "committed")], r.text
    a, b = await cell(client, "SKU-A"), await cell(client, "SKU-B")
    assert (a["reserved"], a["committed"]) == (2, 0), a
    assert (b["reserved"], b["committed"]) == (0, 1), b
    # The hold is still the storefront's to commit.
    r = await storefront_commit(client, "cart-h2", "web-2")
    assert r.status_code == 200, r.text
    a = await cell(client, "SKU-A")
    assert (a["reserved"], a["committed"]) == (0, 2), a


# ---- 3. one definition of a valid line: SKU length in UTF-8 bytes --------------------------

LONG_SKU = "\u00e9" * 100  # 100 characters, 200 UTF-8 bytes: over the 128-byte limit


async def test_long_utf8_sku_is_skipped_in_a_shopify_order(client: httpx.AsyncClient) -> None:
    await receive(client, "SKU-1", 5)
    r = await shop(client, "orders/create", order_body(1301, [("SKU-1", 2), (LONG_SKU, 1)]))
    result = result_of(r)
    assert result["outcome"] == "applied", r.text
    assert [(ln["sku"], ln["status"]) for ln in result.get("lines") or []] == [
        ("SKU-1", "committed")], r.text
    assert [s["reason"] for s in result.get("skipped") or []] == ["invalid"], r.text
    assert (await cell(client, "SKU-1"))["committed"] == 2
    assert await alerts(client, "unmapped_line"), "the skipped line raises unmapped_line"


async def test_long_utf8_sku_is_skipped_in_a_fulfilment(client: httpx.AsyncClient) -> None:
    await receive(client, "SKU-1", 10)
    r = await shop(client, "orders/create", order_body(1302, [("SKU-1", 4)]))
    assert result_of(r)["outcome"] == "applied", r.text
    r = await shop(client, "fulfillments/create", fulfillment_body(
        2302, 1302, [(line_id(1302, 0), "SKU-1", 1), (line_id(1302, 1), LONG_SKU, 1)]))
    result = result_of(r)
    assert result["outcome"] == "applied", r.text
    assert [s["reason"] for s in result.get("skipped") or []] == ["invalid"], r.text
    state = await cell(client, "SKU-1")
    assert (state["on_hand"], state["committed"]) == (9, 3), state


async def test_long_utf8_sku_is_skipped_in_a_refund(client: httpx.AsyncClient) -> None:
    await receive(client, "SKU-1", 10)
    await shop(client, "orders/create", order_body(1303, [("SKU-1", 2)]))
    r = await shop(client, "fulfillments/create", fulfillment_body(
        2303, 1303, [(line_id(1303, 0), "SKU-1", 2)]))
    assert result_of(r)["outcome"] == "applied", r.text
    assert (await cell(client, "SKU-1"))["on_hand"] == 8
    r = await shop(client, "refunds/create", refund_body(3303, 1303, [
        (line_id(1303, 0), "SKU-1", 1, "return"), (line_id(1303, 1), LONG_SKU, 1, "return")]))
    result = result_of(r)
    assert result["outcome"] == "applied", r.text
    assert [s["reason"] for s in result.get("skipped") or []] == ["invalid"], r.text
    assert (await cell(client, "SKU-1"))["on_hand"] == 9


async def test_long_utf8_sku_is_skipped_in_a_standard_order(client: httpx.AsyncClient) -> None:
    await receive(client, "SKU-1", 5)
    r = await post(client, "std", standard("order.created", {
        "order_id": "mk-1303", "lines": [{"sku": LONG_SKU, "qty": 1},
                                         {"sku": "SKU-1", "qty": 2}]}))
    assert r.status_code == 200, r.text
    assert (await cell(client, "SKU-1"))["committed"] == 2, r.text


# ---- 4. the signed body, not the unsigned topic, says what happened -------------------------

async def _resent_under(client: httpx.AsyncClient, order_id: int, topic: str) -> None:
    await receive(client, "SKU-1", 10)
    body, headers = shopify("orders/create", order_body(order_id, [("SKU-1", 2)]))
    r = await client.post("/webhooks/shop", content=body, headers=headers)
    assert r.status_code == 200 and result_of(r)["outcome"] == "applied", r.text
    before = await cell(client, "SKU-1")
    assert (before["on_hand"], before["committed"]) == (10, 2)
    # The exact signed bytes, another topic and a fresh delivery id (both unsigned).
    forged = {**headers, "X-Shopify-Topic": topic, "X-Shopify-Webhook-Id": str(uuid.uuid4())}
    r = await client.post("/webhooks/shop", content=body, headers=forged)
    assert r.status_code in (200, 202), r.text
    after = await cell(client, "SKU-1")
    assert (after["on_hand"], after["committed"]) == (10, 2), (after, r.text)
    assert (r.json()["status"] == "duplicate"
            or await alerts(client, "webhook_contradiction")), r.text


async def test_open_order_body_under_orders_cancelled_changes_nothing(
        client: httpx.AsyncClient) -> None:
    await _resent_under(client, 1401, "orders/cancelled")


async def test_open_order_body_under_orders_fulfilled_changes_nothing(
        client: httpx.AsyncClient) -> None:
    await _resent_under(client, 1402, "orders/fulfilled")


# ---- 5. order records outlive the idempotency TTL ------------------------------------------

PAST_TTL_S = 1.5


async def test_cancel_after_the_idempotency_ttl(short_ttl_client: httpx.AsyncClient) -> None:
    client = short_ttl_client
    await receive(client, "SKU-1", 10)
    r = await shop(client, "orders/create", order_body(1501, [("SKU-1", 2)]))
    assert result_of(r)["outcome"] == "applied", r.text
    assert (await cell(client, "SKU-1"))["committed"] == 2
    await asyncio.sleep(PAST_TTL_S)
    r = await shop(client, "orders/cancelled", order_body(
        1501, [("SKU-1", 2)], cancelled_at=_now_iso()))
    assert result_of(r)["outcome"] == "applied", r.text
    state = await cell(client, "SKU-1")
    assert (state["on_hand"], state["committed"]) == (10, 0), state


async def test_fulfil_and_return_after_the_idempotency_ttl(
        short_ttl_client: httpx.AsyncClient) -> None:
    client = short_ttl_client
    await receive(client, "SKU-1", 10)
    r = await shop(client, "orders/create", order_body(1502, [("SKU-1", 2)]))
    assert result_of(r)["outcome"] == "applied", r.text
    await asyncio.sleep(PAST_TTL_S)
    r = await shop(client, "fulfillments/create", fulfillment_body(
        2502, 1502, [(line_id(1502, 0), "SKU-1", 2)]))
    assert result_of(r)["outcome"] == "applied", r.text
    state = await cell(client, "SKU-1")
    assert (state["on_hand"], state["committed"]) == (8, 0), state
    await asyncio.sleep(PAST_TTL_S)
    r = await shop(client, "refunds/create", refund_body(
        3502, 1502, [(line_id(1502, 0), "SKU-1", 1, "return")]))
    assert result_of(r)["outcome"] == "applied", r.text
    assert (await cell(client, "SKU-1"))["on_hand"] == 9


# ---- 6. a hold past its TTL is dead before the sweep ---------------------------------------

async def test_expired_unswept_hold_goes_to_its_checkout_once(
        app: Starlette, client: httpx.AsyncClient) -> None:
    await receive(client, "SKU-1", 1)
    r = await storefront_hold(client, "SKU-1", 1, hold_id="cart-ttl", ttl_s=1)
    assert r.status_code == 201, r.text
    await asyncio.sleep(1.2)  # past the TTL; the expiry sweep does not run
    r = await shop(client, "orders/create", order_body(1601, [("SKU-1", 1)], hold_id="cart-ttl"))
    statuses = [ln["status"] for ln in result_of(r).get("lines") or []]
    assert statuses and all(s in ("committed", "held") for s in statuses), r.text
    state = await cell(client, "SKU-1")
    assert (state["on_hand"], state["committed"], state["reserved"]) == (1, 1, 0), state
    # The sweep finds nothing left to give back.
    await app.state.engine.expire("acme")
    state = await cell(client, "SKU-1")
    assert (state["on_hand"], state["committed"], state["reserved"]) == (1, 1, 0), state
    r = await storefront_hold(client, "SKU-1", 1)
    assert r.status_code == 409, r.text


# ---- 7. refunds follow the order -----------------------------------------------------------

async def _fulfil_and_return(client: httpx.AsyncClient, order_id: int) -> None:
    before = await cell(client, "SKU-1")
    r = await shop(client, "fulfillments/create", fulfillment_body(
        7000 + order_id, order_id, [(line_id(order_id, 0), "SKU-1", 1)]))
    assert result_of(r)["outcome"] == "applied", r.text
    shipped = await cell(client, "SKU-1")
    assert (shipped["on_hand"], shipped["committed"]) == (
        before["on_hand"] - 1, before["committed"] - 1), shipped
    r = await shop(client, "refunds/create", refund_body(
        8000 + order_id, order_id, [(line_id(order_id, 0), "SKU-1", 1, "return")]))
    result = result_of(r)
    assert (result["outcome"], result.get("error")) == ("applied", None), r.text
    after = await cell(client, "SKU-1")
    assert after["on_hand"] == before["on_hand"], after


async def test_return_of_an_unlinked_order_naming_a_committed_hold(
        client: httpx.AsyncClient) -> None:
    await receive(client, "SKU-1", 2)
    assert (await storefront_hold(client, "SKU-1", 1, hold_id="cart-7")).status_code == 201
    r = await storefront_commit(client, "cart-7", "web-1")
    assert r.status_code == 200, r.text
    # Not an explicit link ("web-1" is not "shop:1001"): the order takes from available.
    r = await shop(client, "orders/create", order_body(1001, [("SKU-1", 1)], hold_id="cart-7"))
    assert result_of(r)["outcome"] == "applied", r.text
    state = await cell(client, "SKU-1")
    assert (state["on_hand"], state["committed"], state["reserved"]) == (2, 2, 0), state
    await _fulfil_and_return(client, 1001)
    state = await cell(client, "SKU-1")
    assert (state["on_hand"], state["committed"]) == (2, 1), state  # web-1 still open


async def test_return_of_an_explicitly_linked_order(client: httpx.AsyncClient) -> None:
    await receive(client, "SKU-1", 2)
    assert (await storefront_hold(client, "SKU-1", 1, hold_id="cart-7b")).status_code == 201
    r = await storefront_commit(client, "cart-7b", "shop:1001")
    assert r.status_code == 200, r.text
    r = await shop(client, "orders/create", order_body(1001, [("SKU-1", 1)], hold_id="cart-7b"))
    assert result_of(r)["outcome"] in ("applied", "replayed"), r.text
    state = await cell(client, "SKU-1")
    assert (state["on_hand"], state["committed"], state["reserved"]) == (2, 1, 0), state
    await _fulfil_and_return(client, 1001)
    state = await cell(client, "SKU-1")
    assert (state["on_hand"], state["committed"]) == (2, 0), state


# ---- 8. a refund that cannot say what came back restocks nothing ---------------------------

async def test_woocommerce_refunded_status_asks_for_review(client: httpx.AsyncClient) -> None:
    await receive(client, "SKU-1", 10)
    r = await post(client, "woo", woo("order.created", woo_order(
        8801, "processing", [("SKU-1", 0, 2)])))
    assert r.status_code == 200 and result_of(r)["outcome"] == "applied", r.text
    r = await post(client, "woo", woo("order.updated", woo_order(
        8801, "completed", [("SKU-1", 0, 2)])))
    assert r.status_code == 200 and result_of(r)["outcome"] == "applied", r.text
    state = await cell(client, "SKU-1")
    assert (state["on_hand"], state["committed"]) == (8, 0), state
    r = await post(client, "woo", woo("order.updated", woo_order(
        8801, "refunded", [("SKU-1", 0, 2)])))
    assert r.status_code in (200, 202), r.text
    state = await cell(client, "SKU-1")
    assert (state["on_hand"], state["committed"]) == (8, 0), state
    assert await alerts(client, "refund_needs_review"), r.text


# ---- generated hold ids are unguessable ----------------------------------------------------

async def test_generated_hold_id_has_128_bits(client: httpx.AsyncClient) -> None:
    await receive(client, "SKU-1", 5)
    ids = []
    for _ in range(2):
        r = await storefront_hold(client, "SKU-1", 1)
        assert r.status_code == 201, r.text
        ids.append(r.json()["hold_id"])
    for hold_id in ids:
        assert re.fullmatch(r"[0-9a-f]{32,}", hold_id.replace("-", "").lower()), hold_id
    assert ids[0] != ids[1]
