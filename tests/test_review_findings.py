"""Independent review of 9e9b7c0 (order lifecycle): one failing reproduction per finding, over
HTTP against the real app and the session's Redis. Each docstring names the rule broken
(docs/order-lifecycle.md, README "The stock model" / "Webhooks", /work/shared/DESIGN.md).

No worker runs here: an `oversell_rejected` outbox event stands for the `oversell` alert the
outbox consumer would raise; any other refusal must raise an alert at the gateway.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from gateway_support import OPERATOR, STOREFRONT, bearer, cell, receive
from redis.asyncio import Redis
from test_gateway_webhooks import post, shopify, shopify_order, standard, woo, woo_order

from gateway.app import create_app
from stockgate.audit import audit_store
from stockgate.keys import tenant_keys
from stockgate.settings import Settings
from workers.channel_counts import judge_channel_count
from workers.propagation import record_push

pytest_plugins = ["gateway_fixtures"]  # gw_settings, app, client


# ---- helpers -------------------------------------------------------------------------------

def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _item(line_id: int, sku: str, qty: int) -> dict[str, Any]:
    return {"id": line_id, "sku": sku, "variant_id": 111, "product_id": 632910392,
            "quantity": qty, "title": "Sneaker", "price": "199.00", "gift_card": False}


def fulfillment(ful_id: int, order_id: int, lines: list[tuple[str, int]]) -> dict[str, Any]:
    return {"id": ful_id, "order_id": order_id, "status": "success", "created_at": _now_iso(),
            "location_id": 9001, "tracking_company": "UPS",
            "line_items": [_item(order_id * 100 + i, sku, q) for i, (sku, q) in enumerate(lines)]}


def refund(refund_id: int, order_id: int, lines: list[tuple[str, int, str]]) -> dict[str, Any]:
    return {"id": refund_id, "order_id": order_id, "created_at": _now_iso(), "restock": None,
            "note": "", "transactions": [],
            "refund_line_items": [
                {"id": refund_id * 10 + i, "line_item_id": order_id * 100 + i, "quantity": q,
                 "restock_type": kind, "location_id": 9001, "subtotal": 199.0,
                 "line_item": _item(order_id * 100 + i, sku, q)}
                for i, (sku, q, kind) in enumerate(lines)]}


async def shop(client: httpx.AsyncClient, topic: str, body: dict[str, Any]) -> httpx.Response:
    r = await post(client, "shop", shopify(topic, body))
    assert r.status_code in (200, 202), r.text
    return r


async def hold(client: httpx.AsyncClient, hold_id: str, sku: str, qty: int) -> None:
    r = await client.post("/v1/holds", headers=bearer(STOREFRONT), json={
        "hold_id": hold_id, "lines": [{"sku": sku, "qty": qty}]})
    assert r.status_code == 201, r.text


async def commit(client: httpx.AsyncClient, hold_id: str, order_id: str) -> httpx.Response:
    return await client.post(f"/v1/holds/{hold_id}/commit", headers=bearer(STOREFRONT),
                             json={"order_id": order_id})


async def all_alerts(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    r = await client.get("/v1/alerts", headers=bearer(OPERATOR))
    assert r.status_code == 200, r.text
    return r.json()["alerts"]


async def outbox(redis: Redis) -> list[dict[str, Any]]:
    entries = await redis.xrange(tenant_keys("acme").outbox)
    return [json.loads(fields[b"e"]) for _, fields in entries]


# ---- F1 (oversell): explicit link after a refused channel order counts the sale nowhere ----

async def test_link_after_refused_channel_order_counts_the_sale_nowhere(
        client: httpx.AsyncClient, redis: Redis) -> None:
    """Rule (docs/order-lifecycle.md, Explicit link): "a storefront commit naming an order id a
    channel order already created releases the hold (the sale is counted once)"; README: the
    link may be made "before or after the order webhook lands".

    The cart holds the last unit; the channel's order webhook (no hold hint: the link is the
    commit) lands first and is judged against available, which excludes the cart's own hold:
    oversell_rejected. The storefront then commits the hold under the channel reference and
    commit.lua's link path releases the reservation because "the channel order counted these
    units already" - it counted none. The one unit is sold and back on sale: sold twice."""
    await receive(client, "SKU-1", 1)
    await hold(client, "cart-last", "SKU-1", 1)
    r = await shop(client, "orders/create", shopify_order(5101, [("SKU-1", 111, 1)]))
    assert r.json()["results"][0]["lines"][0]["status"] == "oversell_rejected", r.text
    r = await commit(client, "cart-last", "shop:5101")
    assert r.status_code == 200, r.text
    state = await cell(client, "SKU-1")
    # The sale (one unit) must be counted once: committed 1, available 0.
    assert (state["committed"], state["available"]) == (1, 0), state


# ---- F2 (phantom units): a Shopify "cancel" refund after the cancel restocks a shipped unit -

async def test_cancel_type_refund_after_cancel_restocks_a_shipped_unit(
        client: httpx.AsyncClient) -> None:
    """Rule: "A refund restocks only units the channel says came back"; on_hand must stay
    received - shipped + returned.

    Shopify's cancel of a partly shipped order sends orders/cancelled and a refunds/create whose
    unshipped lines have restock_type "cancel" (never left the building), in either order. When
    the cancel lands first its open units are already back on sale; restock.lua then takes the
    refund's units from `open` first and, finding none, from *shipped* units (fulfilled -
    restocked): a unit the customer still has is added to on_hand. The gateway drops
    restock_type when it builds Refunded lines, so the script cannot tell cancel from return."""
    await receive(client, "SKU-1", 10)
    await shop(client, "orders/create", shopify_order(5201, [("SKU-1", 111, 3)]))
    await shop(client, "fulfillments/create", fulfillment(7201, 5201, [("SKU-1", 1)]))
    await shop(client, "orders/cancelled", {
        **shopify_order(5201, [("SKU-1", 111, 3)], cancelled=True), "cancel_reason": "customer"})
    state = await cell(client, "SKU-1")
    assert (state["on_hand"], state["committed"]) == (9, 0), state
    await shop(client, "refunds/create", refund(8201, 5201, [("SKU-1", 2, "cancel")]))
    state = await cell(client, "SKU-1")
    # 10 received, 1 shipped, nothing returned: 9 on hand.
    assert state["on_hand"] == 9, state


# ---- F3 (phantom units): refund ids are forgotten after the idempotency TTL ----------------

async def test_refund_in_a_later_orders_updated_body_restocks_again(
        short_ttl_client: httpx.AsyncClient) -> None:
    """Rule (docs/order-lifecycle.md, stale deliveries): "Inside the window, late or
    out-of-order deliveries are harmless: every operation is idempotent on its order,
    fulfilment or refund id", and the order's stock state "outlives the idempotency TTL".

    A merchant's ordinary month, no attacker: an order ships 2, one is returned (refunds/create,
    restock_type return). Days later (past the 3-day idempotency TTL, 1 s here) any edit of the
    order (a tag, a note) makes Shopify send orders/updated with the full `refunds` array. The
    refund id's idempotency record (restock.lua, KEYS[2], PX idem_ttl) is gone and the order
    record keeps no list of applied refund ids, so the same refund restocks the second shipped
    unit: a unit appears from nowhere. (An attacker replaying the refunds/create body after the
    TTL does the same; the stale rule only covers order bodies older than 90 days.)"""
    client = short_ttl_client
    await receive(client, "SKU-1", 10)
    await shop(client, "orders/create", shopify_order(5301, [("SKU-1", 111, 2)]))
    ful = fulfillment(7301, 5301, [("SKU-1", 2)])
    await shop(client, "fulfillments/create", ful)
    ret = refund(8301, 5301, [("SKU-1", 1, "return")])
    await shop(client, "refunds/create", ret)
    assert (await cell(client, "SKU-1"))["on_hand"] == 9
    await asyncio.sleep(1.5)  # past the idempotency TTL, well inside the return window
    body = {**shopify_order(5301, [("SKU-1", 111, 2)], fulfilled=True),
            "tags": "vip", "fulfillments": [ful], "refunds": [ret]}
    await shop(client, "orders/updated", body)
    state = await cell(client, "SKU-1")
    # 10 received, 2 shipped, 1 returned.
    assert state["on_hand"] == 9, state


# ---- F4 (oversell): a WooCommerce order cancelled then re-opened is never counted ----------

@pytest.mark.parametrize("closed", ["cancelled", "failed"])
async def test_woo_order_reopened_after_cancel_is_not_counted(client: httpx.AsyncClient,
                                                              closed: str) -> None:
    """Rule: no unit is sold twice (README "The stock model": a channel order commits from
    available; a line that cannot be covered is an oversell_rejected event, never lost).

    WooCommerce moves a `failed` order to processing when the shopper retries the payment on
    the same order (an everyday event), and lets a merchant re-open a cancelled one; then the
    order completes and the goods ship. The cancel leaves a `cancelled` record and
    order.lua answers every later create of that id with an empty replay: the re-opened sale
    commits nothing, raises nothing, and its completion ships nothing. The last unit stays
    on sale after it left in the parcel."""
    await receive(client, "SKU-1", 1)
    opened = woo_order(5401, "processing", [("SKU-1", 0, 1)])
    await post(client, "woo", woo("order.created", opened))
    await post(client, "woo", woo("order.updated", {
        **opened, "status": closed, "date_modified_gmt": "2026-11-30T10:00:00"}))
    assert (await cell(client, "SKU-1"))["committed"] == 0
    r = await post(client, "woo", woo("order.updated", {
        **opened, "status": "processing", "date_modified_gmt": "2026-11-30T11:00:00"}))
    assert r.status_code == 200, r.text
    r = await post(client, "woo", woo("order.updated", {
        **opened, "status": "completed", "date_modified_gmt": "2026-11-30T12:00:00"}))
    assert r.status_code == 200, r.text
    state = await cell(client, "SKU-1")
    alerted = [a for a in await all_alerts(client) if a.get("ref") == "woo:5401"]
    # The shipped unit must leave on_hand, or at least an operator must be told.
    assert state["on_hand"] == 0 or alerted, (state, r.text)


# ---- F5 (oversell): an edited channel order is dropped without an alert -------------------

async def test_edited_order_adding_a_line_is_dropped_silently(client: httpx.AsyncClient,
                                                              redis: Redis) -> None:
    """Rule (brief / README Webhooks): every refused line has an oversell_rejected event or
    an alert ("A line that cannot be covered becomes an oversell_rejected event and an alert").

    Shopify order editing adds a line; orders/updated carries the new lines. order.lua answers
    idempotency_conflict, the gateway turns it into an "ignored" result with a log line only,
    and the later fulfilment of the added line ("exceeds the open quantity") is ignored the
    same way. The added unit is sold and shipped but never leaves Stockgate's on_hand."""
    await receive(client, "SKU-1", 5)
    await receive(client, "SKU-2", 5)
    await shop(client, "orders/create", shopify_order(5501, [("SKU-1", 111, 1)]))
    r = await shop(client, "orders/updated", {
        **shopify_order(5501, [("SKU-1", 111, 1), ("SKU-2", 112, 1)]), "tags": "edited"})
    await shop(client, "fulfillments/create", fulfillment(
        7501, 5501, [("SKU-1", 1), ("SKU-2", 1)]))
    sku2 = await cell(client, "SKU-2")
    rejected = [e for e in await outbox(redis)
                if e["type"] == "oversell_rejected" and e["sku"] == "SKU-2"]
    alerted = [a for a in await all_alerts(client) if a.get("ref", "").startswith("shop:5501")]
    assert sku2["on_hand"] == 4 or rejected or alerted, (sku2, r.text)


# ---- F6 (oversell / silent loss): a line at an unknown location vanishes unalerted --------

async def test_order_line_at_an_unknown_location_is_dropped_silently(
        client: httpx.AsyncClient, redis: Redis) -> None:
    """Rule (brief; README alerts: `unmapped_line` is "an order line without a SKU Stockgate
    knows: a sale it cannot count"): every refused line has an oversell_rejected event or an
    alert.

    A Standard Webhooks order names a location Stockgate does not have (a typo, a warehouse not
    yet created): standard.py passes the name through, valid_line accepts it, order.lua reports
    `unknown_sku` and emits no event, and gateway/webhooks.py _order_placed only bumps a
    metric. The same happens to a Shopify/Woo line whose SKU Stockgate does not know. The
    sale is counted nowhere and nobody is told; Shopify's location_for instead falls back to
    the default location "so an order is not lost"."""
    await receive(client, "SKU-1", 5)
    r = await post(client, "std", standard("order.created", {
        "order_id": "mk-5601", "lines": [{"sku": "SKU-1", "qty": 2, "location": "wh-east"}]}))
    assert r.status_code == 200, r.text
    statuses = [ln["status"] for ln in r.json()["results"][0].get("lines") or []]
    events = [e for e in await outbox(redis) if e["source"]["ref"] == "std:mk-5601"]
    alerted = [a for a in await all_alerts(client) if a.get("ref") == "std:mk-5601"]
    committed = (await cell(client, "SKU-1"))["committed"]
    assert committed == 2 or events or alerted, (statuses, r.text)


# ---- F7 (silent loss): a linked order shipped before its webhook is counted twice ---------

async def test_linked_order_shipped_before_its_webhook_commits_the_shipped_units_again(
        client: httpx.AsyncClient) -> None:
    """Rule (Explicit link): "a channel order arriving after the storefront committed its hold
    under its reference commits only the units beyond the hold".

    order.lua's merge counts only the record's *open* units as already belonging to the sale.
    The storefront commits under shop:5701; the orders/create delivery fails (503) and is
    retried by Shopify hours later, after the fulfilment landed. The retried create finds 0 open
    units, takes both units again from available and keeps them committed for ever (the record
    is PERSISTed while units are open): 2 units lost to sale."""
    await receive(client, "SKU-1", 10)
    await hold(client, "cart-5701", "SKU-1", 2)
    assert (await commit(client, "cart-5701", "shop:5701")).status_code == 200
    await shop(client, "fulfillments/create", fulfillment(7701, 5701, [("SKU-1", 2)]))
    await shop(client, "orders/create", shopify_order(5701, [("SKU-1", 111, 2)],
                                                      hold_id="cart-5701"))
    state = await cell(client, "SKU-1")
    assert (state["on_hand"], state["committed"], state["available"]) == (8, 0, 8), state


# ---- F8 (silent loss): a fulfilment landing before its order is dropped for good -----------

async def test_fulfilment_before_its_order_is_lost(client: httpx.AsyncClient) -> None:
    """Rule: "late or out-of-order deliveries are harmless"; on_hand = received - shipped +
    returned.

    order.fulfilled arrives before order.created (a bridge's queues, a create that got a 503):
    fulfil.lua answers order_not_found, the gateway calls it "ignored" (no alert) and marks the
    delivery seen, so it is never retried. The create then commits the units, which stay
    committed for ever; on_hand keeps the shipped units, and the next stock count (set_on_hand
    to the true 8) makes available 6: two units lost to sale."""
    await receive(client, "SKU-1", 10)
    fulfilled = standard("order.fulfilled", {
        "order_id": "mk-5801", "fulfilment_id": "f-5801",
        "lines": [{"sku": "SKU-1", "qty": 2}]})
    r = await post(client, "std", fulfilled)
    # Not acknowledged: the bridge delivers it again later (docs/order-lifecycle.md).
    assert r.status_code == 409 and r.headers["Retry-After"] == "60", r.text
    assert r.json()["error"] == "order_not_yet_known"
    await post(client, "std", standard("order.created", {
        "order_id": "mk-5801", "lines": [{"sku": "SKU-1", "qty": 2}]}))
    r = await post(client, "std", fulfilled)  # the bridge's retry, same signed message
    assert r.status_code == 200, r.text
    state = await cell(client, "SKU-1")
    assert (state["on_hand"], state["committed"]) == (8, 0), state


# ---- F9 (silent loss under attack): an unsigned topic poisons the body-digest dedupe ---------

async def test_body_sent_first_under_a_bogus_topic_suppresses_the_real_delivery(
        client: httpx.AsyncClient) -> None:
    """Rule: "unsigned headers (topic, delivery id) never turn a body into another operation"
    and a signed order body places the order.

    gateway/webhooks.py marks the body digest seen after *any* processing, including a delivery
    whose topic made it change nothing (an unknown topic: no operations; a contradicting topic:
    Refused). An attacker holding the signed orders/create body (e.g. while Shopify waits to
    retry a delivery that got a 503) sends it once under X-Shopify-Topic "app/uninstalled" (or
    "orders/cancelled"): the genuine delivery is then a "duplicate" and the sale is never
    counted."""
    await receive(client, "SKU-1", 5)
    body = shopify_order(5901, [("SKU-1", 111, 2)])
    raw, headers = shopify("orders/create", body)
    r = await client.post("/webhooks/shop", content=raw,
                          headers={**headers, "X-Shopify-Topic": "app/uninstalled",
                                   "X-Shopify-Webhook-Id": "attacker-1"})
    assert r.status_code == 200, r.text
    r = await client.post("/webhooks/shop", content=raw, headers=headers)  # Shopify's delivery
    assert r.status_code == 200, r.text
    assert (await cell(client, "SKU-1"))["committed"] == 2, r.text



# ---- F10 (phantom units): an old channel count replayed after the TTL is a fresh "edit" ------

async def test_channel_count_replayed_after_the_ttl_creates_units(
        gw_settings: Settings, redis: Redis, tmp_path: Path) -> None:
    """Rule (docs/order-lifecycle.md, Channel counts): "an edit never creates more units than
    the report proves"; signed bodies replayed by an attacker change nothing.

    Shopify signs only the body of inventory_levels/update, and the gateway ignores its signed
    `updated_at`. Day 0 a person sets 25 (shown 10): +15, fine. Sales bring the channel to 20.
    After the dedupe TTL (3 days; 2 s here) the body-digest seen key, the adjust key
    `shop:count:<body digest>` and the shown/echo logs (24 h, 10 min) are all gone, so the same
    signed body replayed under a fresh X-Shopify-Webhook-Id is judged again as a new edit
    "set to 25 while showing 20": +5 units that do not exist."""
    # 2 s, not 1: Shopify's updated_at has whole seconds, so the first report may already
    # look up to a second old when it lands, and it must not be refused as stale.
    settings = msgspec.structs.replace(gw_settings, idempotency_ttl_s=2,
                                       channel_count_settle_s=0.0)
    application = create_app(settings, redis)
    store = audit_store(Settings(data_dir=str(tmp_path)))
    await store.open()
    ref = "SKU-1|main"
    keys = tenant_keys("acme")
    level = {"inventory_item_id": 7001, "location_id": 9001, "available": 25,
             "updated_at": _now_iso(),
             "admin_graphql_api_id": "gid://shopify/InventoryLevel/9001?inventory_item_id=7001"}
    body = json.dumps(level).encode()
    digest = hashlib.blake2b(body, digest_size=16)
    digest.update(ref.encode())
    fingerprint = digest.hexdigest()
    try:
        async with application.router.lifespan_context(application), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=application), base_url="http://gw") as client:
            engine = application.state.engine

            async def judge() -> str:
                return await judge_channel_count(
                    redis, engine, store, settings, "acme", "shop", "SKU-1", "main", 25,
                    fingerprint, int(time.time() * 1000))

            await receive(client, "SKU-1", 10)
            await record_push(redis, "acme", "shop", ref, 10)
            await asyncio.sleep(0.05)
            r = await post(client, "shop", (body, shopify("inventory_levels/update", level)[1]))
            assert r.json()["results"][0]["outcome"] == "queued", r.text
            assert await judge() == "applied"
            assert (await cell(client, "SKU-1"))["on_hand"] == 25
            # Days pass: the web shop sells 5, the channel is pushed 20.
            await hold(client, "web-cart", "SKU-1", 5)
            assert (await commit(client, "web-cart", "web:1")).status_code == 200
            await record_push(redis, "acme", "shop", ref, 20)
            await asyncio.sleep(2.5)  # past the idempotency TTL
            # The shown log (24 h) and the echo list (10 min) expire long before 3 days do.
            await redis.delete(keys.pushed_log("shop", ref), keys.pushed_recent("shop", ref))
            # The attacker's replay: the same signed body, a fresh (unsigned) webhook id.
            r = await post(client, "shop", (body, shopify("inventory_levels/update", level)[1]))
            assert r.json()["status"] != "duplicate", r.text
            # Refused at the door (its signed updated_at is older than the dedupe window);
            # judged only if the gateway had queued it.
            if r.json()["results"][0]["outcome"] == "queued":
                await judge()
            state = await cell(client, "SKU-1")
            # 10 received, +15 by the one real edit: 25 on hand, 5 of them committed.
            assert state["on_hand"] == 25, state
    finally:
        await store.close()
