"""Channel webhooks over HTTP, signed here with each channel's documented algorithm (hmac,
hashlib and base64 directly, never the gateway's helpers): valid ones apply, forged, stale and
unsigned ones are 401 and change nothing, duplicates and echoes change nothing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import httpx
import pytest
from gateway_support import (
    BC_SECRET,
    OPERATOR,
    SHOPIFY_SECRET,
    STD_KEY,
    STOREFRONT,
    WOO_SECRET,
    bearer,
    cell,
    receive,
)
from redis.asyncio import Redis
from starlette.applications import Starlette

from stockgate.errors import StoreUnavailable
from stockgate.keys import tenant_keys

pytest_plugins = ["gateway_fixtures"]  # gw_settings, app, client

JSON = {"Content-Type": "application/json"}


# ---- signing, per the channels' documentation --------------------------------------------

def shopify(topic: str, payload: dict[str, Any], webhook_id: str | None = None,
            secret: str = SHOPIFY_SECRET) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload).encode()
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return body, {**JSON, "X-Shopify-Topic": topic, "X-Shopify-Shop-Domain": "acme.myshopify.com",
                  "X-Shopify-Hmac-Sha256": base64.b64encode(digest).decode(),
                  "X-Shopify-Webhook-Id": webhook_id or str(uuid.uuid4()),
                  "X-Shopify-API-Version": "2025-10"}


def woo(topic: str, payload: dict[str, Any], delivery: str | None = None,
        secret: str = WOO_SECRET) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload).encode()
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    resource, event = topic.split(".")
    return body, {**JSON, "X-WC-Webhook-Source": "https://shop.example/",
                  "X-WC-Webhook-Topic": topic, "X-WC-Webhook-Resource": resource,
                  "X-WC-Webhook-Event": event, "X-WC-Webhook-ID": "12",
                  "X-WC-Webhook-Signature": base64.b64encode(digest).decode(),
                  "X-WC-Webhook-Delivery-ID": delivery or uuid.uuid4().hex}


def bigcommerce(scope: str, order_id: int, secret: str = BC_SECRET
                ) -> tuple[bytes, dict[str, str]]:
    created = int(time.time())
    event_hash = hashlib.sha1(f"{scope}{order_id}{created}".encode()).hexdigest()
    body = json.dumps({"created_at": created, "store_id": "1025646", "producer": "stores/abc123",
                       "scope": scope, "hash": event_hash,
                       "data": {"type": "order", "id": order_id}}).encode()
    return body, {**JSON, "X-Stockgate-Secret": secret}


def standard(event_type: str, data: dict[str, Any], msg_id: str | None = None,
             stamp: int | None = None, key: bytes = STD_KEY) -> tuple[bytes, dict[str, str]]:
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    stamp = int(time.time()) if stamp is None else stamp
    body = json.dumps({"type": event_type, "timestamp": "2025-01-01T00:00:00Z",
                       "data": data}).encode()
    signed = f"{msg_id}.{stamp}.".encode() + body
    sig = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return body, {**JSON, "webhook-id": msg_id, "webhook-timestamp": str(stamp),
                  "webhook-signature": f"v1,{sig}"}


# ---- real-shaped payloads ----------------------------------------------------------------

def shopify_order(order_id: int, lines: list[tuple[str | None, int | None, int]],
                  hold_id: str | None = None, cancelled: bool = False,
                  fulfilled: bool = False) -> dict[str, Any]:
    notes = [{"name": "gift_wrap", "value": "no"}]
    if hold_id:
        notes.append({"name": "_stockgate_hold_id", "value": hold_id})
    return {
        "id": order_id, "admin_graphql_api_id": f"gid://shopify/Order/{order_id}",
        "name": f"#{order_id % 10000}", "email": "jon@example.com", "currency": "EUR",
        "financial_status": "paid", "location_id": None,
        # The state the body states: the gateway derives the operation from these, never
        # from the (unsigned) topic header.
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S-05:00", time.gmtime(time.time() - 5 * 3600)),
        "cancelled_at": "2026-11-30T10:00:00-05:00" if cancelled else None,
        "fulfillment_status": "fulfilled" if fulfilled else None,
        "cart_token": "Z2NwLXVzLWVhc3QxOjAxSjk3", "checkout_token": "bd5a8aa1ecd019dd3520ff",
        "note_attributes": notes, "customer": {"id": 115310627314723954, "email": "jon@x"},
        "line_items": [
            {"id": 866550311766439020 + i, "variant_id": variant, "product_id": 632910392,
             "sku": sku, "quantity": qty, "title": "Sneaker", "price": "199.00",
             "requires_shipping": True, "fulfillable_quantity": qty, "grams": 500,
             "properties": [], "tax_lines": []}
            for i, (sku, variant, qty) in enumerate(lines)],
        "refunds": [], "shipping_lines": [],
    }


async def post(client: httpx.AsyncClient, channel: str, signed: tuple[bytes, dict[str, str]]
               ) -> httpx.Response:
    body, headers = signed
    return await client.post(f"/webhooks/{channel}", content=body, headers=headers)


async def events(redis: Redis, tenant: str = "acme") -> list[dict[str, Any]]:
    entries = await redis.xrange(tenant_keys(tenant).outbox)
    return [json.loads(fields[b"e"]) for _, fields in entries]


# ---- Shopify -----------------------------------------------------------------------------

async def test_shopify_order_commits_from_available(client: httpx.AsyncClient) -> None:
    await receive(client, "SKU-1", 5)
    await receive(client, "SKU-V", 5)
    r = await post(client, "shop", shopify("orders/create", shopify_order(
        1001, [("SKU-1", 111, 2), (None, 4455, 1), (None, 999, 1)])))
    assert r.status_code == 200, r.text
    result = r.json()["results"][0]
    assert result["op"] == "order" and result["ref"] == "shop:1001"
    assert [ln["status"] for ln in result["lines"]] == ["committed", "committed"]
    assert (await cell(client, "SKU-1"))["committed"] == 2
    assert (await cell(client, "SKU-V"))["committed"] == 1  # variant without SKU, via the table


async def test_shopify_gift_card_line_is_not_stock(client: httpx.AsyncClient) -> None:
    """A gift card is a line of the order, not a unit on a shelf: it neither commits stock
    (even when its SKU names a stocked item) nor counts as an unmapped line."""
    await receive(client, "SKU-1", 5)
    body = shopify_order(1002, [("SKU-1", 111, 1), ("SKU-1", 112, 2)])
    body["line_items"][1]["gift_card"] = True
    r = await post(client, "shop", shopify("orders/create", body))
    assert r.status_code == 200, r.text
    assert [ln["qty"] for ln in r.json()["results"][0]["lines"]] == [1]
    assert (await cell(client, "SKU-1"))["committed"] == 1


async def test_shopify_order_commits_its_hold(client: httpx.AsyncClient) -> None:
    await receive(client, "SKU-1", 5)
    r = await client.post("/v1/holds", headers=bearer(STOREFRONT), json={
        "hold_id": "cart-77", "lines": [{"sku": "SKU-1", "qty": 3}]})
    assert r.status_code == 201
    r = await post(client, "shop", shopify("orders/create", shopify_order(
        1002, [("SKU-1", 111, 3)], hold_id="cart-77")))
    assert r.json()["results"][0]["op"] == "commit_hold"
    state = await cell(client, "SKU-1")
    assert (state["reserved"], state["committed"], state["available"]) == (0, 3, 2)


async def test_shopify_oversell_is_rejected_not_negative(client: httpx.AsyncClient,
                                                         redis: Redis) -> None:
    await receive(client, "SKU-1", 1)
    r = await post(client, "shop", shopify("orders/create", shopify_order(
        1003, [("SKU-1", 111, 2)])))
    assert r.status_code == 200
    assert r.json()["results"][0]["lines"][0]["status"] == "oversell_rejected"
    state = await cell(client, "SKU-1")
    assert (state["committed"], state["available"]) == (0, 1)
    assert any(e["type"] == "oversell_rejected" and e["source"]["channel"] == "shop"
               for e in await events(redis))


async def test_shopify_cancel_fulfil_refund(client: httpx.AsyncClient) -> None:
    await receive(client, "SKU-1", 10)
    await post(client, "shop", shopify("orders/create", shopify_order(
        2001, [("SKU-1", 111, 4)])))
    await post(client, "shop", shopify("orders/create", shopify_order(
        2002, [("SKU-1", 111, 2)])))
    r = await post(client, "shop", shopify("orders/cancelled", {
        **shopify_order(2002, [("SKU-1", 111, 2)]), "cancel_reason": "customer",
        "cancelled_at": "2025-01-01T10:00:00Z"}))
    assert r.json()["results"][0]["outcome"] == "applied"
    r = await post(client, "shop", shopify("fulfillments/create", {
        "id": 255858046, "order_id": 2001, "status": "success", "location_id": 9001,
        "tracking_company": "UPS", "line_items": [
            {"id": 866550311766439020, "variant_id": 111, "sku": "SKU-1", "quantity": 4}]}))
    assert r.json()["results"][0]["outcome"] == "applied", r.text
    state = await cell(client, "SKU-1")
    assert (state["on_hand"], state["committed"]) == (6, 0)
    refund = {"id": 509562969, "order_id": 2001, "note": "wrong size", "restock": None,
              "refund_line_items": [
                  {"id": 104689539, "line_item_id": 866550311766439020, "quantity": 1,
                   "restock_type": "return", "location_id": 9001, "subtotal": 199.0,
                   "line_item": {"id": 866550311766439020, "variant_id": 111, "sku": "SKU-1",
                                 "quantity": 4}},
                  {"id": 104689540, "line_item_id": 866550311766439020, "quantity": 1,
                   "restock_type": "no_restock", "location_id": None,
                   "line_item": {"id": 866550311766439020, "variant_id": 111, "sku": "SKU-1",
                                 "quantity": 4}}],
              "transactions": []}
    r = await post(client, "shop", shopify("refunds/create", refund))
    assert r.json()["results"][0]["op"] == "restock"
    assert (await cell(client, "SKU-1"))["on_hand"] == 7  # only the restocked unit


async def test_shopify_inventory_update_echo_or_queued(client: httpx.AsyncClient,
                                                      redis: Redis) -> None:
    await receive(client, "SKU-1", 10)
    level = {"inventory_item_id": 7001, "location_id": 9001, "available": 12,
             "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "admin_graphql_api_id": "gid://shopify/InventoryLevel/9001?inventory_item_id=7001"}
    # Not a value Stockgate pushed: judged later by a worker (tests/test_channel_counts.py).
    r = await post(client, "shop", shopify("inventory_levels/update", level))
    assert r.status_code == 202 and r.json()["results"][0]["outcome"] == "queued", r.text
    # Stockgate pushed 12, then 9: Shopify's webhook for the older push arrives last and
    # is still an echo, not a person's edit (it would otherwise create 3 phantom units).
    await redis.lpush(tenant_keys("acme").pushed_recent("shop", "SKU-1|main"), 12, 9)
    r = await post(client, "shop", shopify("inventory_levels/update", {
        **level, "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S+01:00",
                                             time.gmtime(time.time() + 3600))}))
    assert r.json()["results"][0]["outcome"] == "echo"
    assert (await cell(client, "SKU-1"))["on_hand"] == 10


async def test_duplicate_delivery_changes_nothing(client: httpx.AsyncClient) -> None:
    await receive(client, "SKU-1", 10)
    first = await post(client, "shop", shopify("orders/create", shopify_order(
        3001, [("SKU-1", 111, 1)]), webhook_id="dup-1"))
    assert first.json()["status"] == "applied"
    # Same delivery id, even with another body: acknowledged, not applied.
    again = await post(client, "shop", shopify("orders/create", shopify_order(
        3002, [("SKU-1", 111, 5)]), webhook_id="dup-1"))
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    assert (await cell(client, "SKU-1"))["committed"] == 1


# ---- WooCommerce -------------------------------------------------------------------------

def woo_order(order_id: int, status: str, lines: list[tuple[str, int, int]],
              hold_id: str | None = None) -> dict[str, Any]:
    meta = [{"id": 1, "key": "_billing_vat", "value": ""}]
    if hold_id:
        meta.append({"id": 2, "key": "stockgate_hold_id", "value": hold_id})
    return {
        "id": order_id, "parent_id": 0, "status": status, "currency": "EUR",
        "order_key": "wc_order_58d2d042d1d", "cart_hash": "d8a4d3c5c0e2", "total": "29.35",
        "billing": {"first_name": "John", "email": "john@example.com"},
        "meta_data": meta,
        "line_items": [{"id": 315 + i, "name": "Woo Single", "product_id": 93,
                        "variation_id": variation, "quantity": qty, "sku": sku,
                        "price": 3, "meta_data": []}
                       for i, (sku, variation, qty) in enumerate(lines)],
        "refunds": [],
    }


async def test_woocommerce_lifecycle(client: httpx.AsyncClient) -> None:
    await receive(client, "SKU-1", 10)
    await receive(client, "SKU-V", 10)
    r = await client.post("/v1/holds", headers=bearer(STOREFRONT), json={
        "hold_id": "wc-cart-1", "lines": [{"sku": "SKU-1", "qty": 2}]})
    assert r.status_code == 201
    r = await post(client, "woo", woo("order.created", woo_order(
        727, "processing", [("SKU-1", 0, 2)], hold_id="wc-cart-1")))
    assert r.json()["results"][0]["op"] == "commit_hold", r.text
    r = await post(client, "woo", woo("order.created", woo_order(
        728, "processing", [("", 88, 3)])))
    assert r.json()["results"][0]["lines"][0]["sku"] == "SKU-V"
    await post(client, "woo", woo("order.updated", woo_order(728, "cancelled", [("", 88, 3)])))
    assert (await cell(client, "SKU-V"))["committed"] == 0
    await post(client, "woo", woo("order.updated", woo_order(727, "completed", [("SKU-1", 0, 2)])))
    state = await cell(client, "SKU-1")
    assert (state["on_hand"], state["committed"], state["reserved"]) == (8, 0, 0)
    r = await post(client, "woo", woo("order.updated", woo_order(
        727, "refunded", [("SKU-1", 0, 2)])))
    # A refunded status cannot say the goods came back: no restock, a review alert instead
    # (tests/test_refund_review.py).
    assert r.json()["results"][-1]["op"] == "refund_review", r.text
    assert (await cell(client, "SKU-1"))["on_hand"] == 8


async def test_woocommerce_setup_ping_is_acknowledged(client: httpx.AsyncClient) -> None:
    r = await client.post("/webhooks/woo", content=b"webhook_id=12",
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200 and r.json()["status"] == "ping"


# ---- BigCommerce -------------------------------------------------------------------------

async def test_bigcommerce_acknowledges_and_queues_a_fetch(client: httpx.AsyncClient,
                                                           queue_redis: Redis) -> None:
    body, headers = bigcommerce("store/order/created", 250)
    r = await client.post("/webhooks/bc", content=body, headers=headers)
    assert r.status_code == 202 and r.json()["status"] == "queued", r.text
    event_hash = json.loads(body)["hash"]
    assert await queue_redis.exists(f"arq:job:fetch:bc:{event_hash}")
    again = await client.post("/webhooks/bc", content=body, headers=headers)
    assert again.status_code == 200 and again.json()["status"] == "duplicate"


# ---- Standard Webhooks -------------------------------------------------------------------

async def test_standard_order_and_inventory(client: httpx.AsyncClient) -> None:
    await receive(client, "SKU-1", 5)
    r = await post(client, "std", standard("order.created", {
        "order_id": "mk-1", "lines": [{"sku": "SKU-1", "qty": 2}]}))
    assert r.status_code == 200 and r.json()["results"][0]["outcome"] == "applied"
    assert (await cell(client, "SKU-1"))["committed"] == 2
    r = await post(client, "std", standard("inventory.updated", {"sku": "SKU-1",
                                                                 "available": 4}))
    # Judged by a worker after the settle time (tests/test_channel_counts.py).
    assert r.status_code == 202 and r.json()["results"][0]["outcome"] == "queued"
    assert (await cell(client, "SKU-1"))["on_hand"] == 5


# ---- what must be refused ------------------------------------------------------------------

def _order_for(kind: str, secret: str | None = None) -> tuple[str, tuple[bytes, dict[str, str]]]:
    if kind == "shop":
        return kind, shopify("orders/create", shopify_order(
            4001, [("SKU-1", 111, 1)]), **({"secret": secret} if secret else {}))
    if kind == "woo":
        return kind, woo("order.created", woo_order(4001, "processing", [("SKU-1", 0, 1)]),
                         **({"secret": secret} if secret else {}))
    if kind == "bc":
        return kind, bigcommerce("store/order/created", 4001, **(
            {"secret": secret} if secret else {}))
    return kind, standard("order.created", {"order_id": "4001", "lines": [
        {"sku": "SKU-1", "qty": 1}]}, **({"key": secret.encode() * 2} if secret else {}))


SIGNATURE_HEADERS = {"shop": "X-Shopify-Hmac-Sha256", "woo": "X-WC-Webhook-Signature",
                     "bc": "X-Stockgate-Secret", "std": "webhook-signature"}
KINDS = list(SIGNATURE_HEADERS)


async def _unchanged(client: httpx.AsyncClient, redis: Redis, r: httpx.Response,
                     queue: Redis) -> None:
    assert r.status_code == 401, r.text
    assert r.json()["error"] == "unauthorized"
    state = await cell(client, "SKU-1")
    assert (state["committed"], state["on_hand"]) == (0, 5)
    assert not await redis.keys("sg:{acme}:webhook:*")
    assert not await queue.keys("arq:job:*")


# BigCommerce signs nothing over the body (its `hash` is unkeyed), so a flipped byte there is
# undetectable by design; harmless, since the worker fetches the order from BigCommerce itself.
@pytest.mark.parametrize("kind", ["shop", "woo", "std"])
async def test_flipped_byte_is_401(client: httpx.AsyncClient, redis: Redis, queue_redis: Redis,
                                   kind: str) -> None:
    await receive(client, "SKU-1", 5)
    channel, (body, headers) = _order_for(kind)
    i = body.index(b"4001")
    body = body[:i] + b"5" + body[i + 1:]  # a forged order number, same signature
    await _unchanged(client, redis, await client.post(f"/webhooks/{channel}", content=body,
                                                      headers=headers), queue_redis)


@pytest.mark.parametrize("kind", KINDS)
async def test_wrong_secret_is_401(client: httpx.AsyncClient, redis: Redis, queue_redis: Redis,
                                   kind: str) -> None:
    await receive(client, "SKU-1", 5)
    channel, signed = _order_for(kind, secret="not-the-secret-0123456789")
    await _unchanged(client, redis, await post(client, channel, signed), queue_redis)


@pytest.mark.parametrize("kind", KINDS)
async def test_missing_signature_is_401(client: httpx.AsyncClient, redis: Redis,
                                        queue_redis: Redis, kind: str) -> None:
    await receive(client, "SKU-1", 5)
    channel, (body, headers) = _order_for(kind)
    del headers[SIGNATURE_HEADERS[kind]]
    r = await client.post(f"/webhooks/{channel}", content=body, headers=headers)
    await _unchanged(client, redis, r, queue_redis)


@pytest.mark.parametrize("offset", [-301, 301])
async def test_standard_stale_or_future_timestamp_is_401(
        client: httpx.AsyncClient, redis: Redis, queue_redis: Redis, offset: int) -> None:
    await receive(client, "SKU-1", 5)
    signed = standard("order.created", {"order_id": "4001", "lines": [
        {"sku": "SKU-1", "qty": 1}]}, stamp=int(time.time()) + offset)
    await _unchanged(client, redis, await post(client, "std", signed), queue_redis)


async def test_signature_and_secret_never_echoed(client: httpx.AsyncClient) -> None:
    body, headers = shopify("orders/create", shopify_order(1, [("SKU-1", 1, 1)]),
                            secret="attacker-guess")
    r = await client.post("/webhooks/shop", content=body, headers=headers)
    assert r.status_code == 401
    assert headers["X-Shopify-Hmac-Sha256"] not in r.text and SHOPIFY_SECRET not in r.text


async def test_ingress_refusals(client: httpx.AsyncClient, redis: Redis) -> None:
    r = await post(client, "nope", shopify("orders/create", {"id": 1}))
    assert r.status_code == 404
    body, headers = shopify("orders/create", {"id": 1, "pad": "x" * 70_000})
    r = await client.post("/webhooks/shop", content=body, headers=headers)
    assert r.status_code == 413
    body, headers = shopify("orders/create", {"id": "not-a-number", "line_items": []})
    r = await client.post("/webhooks/shop", content=body, headers=headers)
    assert r.status_code == 400 and "$.id" in r.json()["detail"]
    body = b"{not json"
    sig = base64.b64encode(hmac.new(SHOPIFY_SECRET.encode(), body, hashlib.sha256).digest())
    r = await client.post("/webhooks/shop", content=body, headers={
        **JSON, "X-Shopify-Topic": "orders/create", "X-Shopify-Hmac-Sha256": sig.decode(),
        "X-Shopify-Webhook-Id": "bad-json"})
    assert r.status_code == 400
    body, headers = shopify("orders/create", {"id": 1})
    r = await client.post("/webhooks/shop", content=body,
                          headers={**headers, "Content-Type": "text/plain"})
    assert r.status_code == 415
    assert not await redis.keys("sg:{acme}:webhook:*")  # refused deliveries are not "seen"


async def test_failed_delivery_is_not_marked_seen(app: Starlette, client: httpx.AsyncClient,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    await receive(client, "SKU-1", 5)
    signed = shopify("orders/create", shopify_order(5001, [("SKU-1", 111, 1)]),
                     webhook_id="retry-me")
    engine = app.state.engine
    real_order = engine.order

    async def down(*args: object, **kwargs: object) -> object:
        raise StoreUnavailable("stock store unreachable")

    monkeypatch.setattr(engine, "order", down)
    r = await post(client, "shop", signed)
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    monkeypatch.setattr(engine, "order", real_order)
    r = await post(client, "shop", signed)  # the channel's retry
    assert r.json()["status"] == "applied"
    assert (await cell(client, "SKU-1"))["committed"] == 1


async def test_operator_key_is_not_a_webhook_credential(client: httpx.AsyncClient) -> None:
    r = await client.post("/webhooks/shop", content=b"{}", headers={**JSON, **bearer(OPERATOR)})
    assert r.status_code == 401


async def test_refund_that_restores_too_little_raises_an_alert(client: httpx.AsyncClient,
                                                               redis: Redis) -> None:
    from stockgate.alerts import list_alerts

    await receive(client, "SKU-1", 10)
    await post(client, "shop", shopify("orders/create", shopify_order(
        3001, [("SKU-1", 111, 2)])))
    line = {"id": 1, "variant_id": 111, "sku": "SKU-1", "quantity": 2}
    refund = {"id": 777, "order_id": 3001, "restock": True, "transactions": [],
              "refund_line_items": [{"id": 9, "line_item_id": 1, "quantity": 3,
                                     "restock_type": "cancel", "location_id": 9001,
                                     "line_item": line}]}
    r = await post(client, "shop", shopify("refunds/create", refund))
    assert r.json()["results"][0]["outcome"] == "applied", r.text
    state = await cell(client, "SKU-1")
    assert (state["committed"], state["available"]) == (0, 10)
    alerts = await list_alerts(redis, "acme", type="refund_not_restocked")
    assert [a.detail for a in alerts] == ["refund shop:refund-777 restocked 2 of 3"]


async def test_shopify_order_commits_at_the_channels_location(gw_settings: Any,
                                                               redis: Redis) -> None:
    """A channel selling from "eu" draws its online orders from eu (the location it is shown),
    not from the tenant default; a POS order at a mapped location draws from that one."""
    import msgspec

    from gateway.app import create_app

    shop = msgspec.structs.replace(gw_settings.channels["shop"], locations=("eu",))
    settings = msgspec.structs.replace(gw_settings,
                                       channels={**gw_settings.channels, "shop": shop})
    app = create_app(settings, redis)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        for location in ("main", "eu"):
            await receive(client, "SKU-1", 10, location)
        r = await post(client, "shop", shopify("orders/create", shopify_order(
            6001, [("SKU-1", 111, 3)])))
        assert r.status_code == 200, r.text
        assert ((await cell(client, "SKU-1", "eu"))["committed"],
                (await cell(client, "SKU-1", "main"))["committed"]) == (3, 0)
        pos = {**shopify_order(6002, [("SKU-1", 111, 1)]), "location_id": 9001}  # -> main
        r = await post(client, "shop", shopify("orders/create", pos))
        assert r.status_code == 200, r.text
        assert ((await cell(client, "SKU-1", "eu"))["committed"],
                (await cell(client, "SKU-1", "main"))["committed"]) == (3, 1)


# ---- orders that carry a hold, and lines that cannot be stocked ---------------------------

async def test_held_order_commits_its_units_beyond_the_hold(client: httpx.AsyncClient) -> None:
    await receive(client, "SKU-1", 5)
    await receive(client, "SKU-2", 5)
    r = await client.post("/v1/holds", headers=bearer(STOREFRONT), json={
        "hold_id": "cart-up", "lines": [{"sku": "SKU-1", "qty": 1}]})
    assert r.status_code == 201
    # The shopper raised SKU-1 to 3 and added SKU-2 after the hold was made.
    signed = shopify("orders/create", shopify_order(
        6001, [("SKU-1", 111, 3), ("SKU-2", 112, 2)], hold_id="cart-up"))
    r = await post(client, "shop", signed)
    result = r.json()["results"][0]
    assert (result["op"], result["outcome"]) == ("commit_hold", "applied"), r.text
    assert [(ln["sku"], ln["qty"], ln["status"]) for ln in result["lines"]] == [
        ("SKU-1", 1, "held"), ("SKU-1", 2, "committed"), ("SKU-2", 2, "committed")]
    one, two = await cell(client, "SKU-1"), await cell(client, "SKU-2")
    assert (one["reserved"], one["committed"], one["available"]) == (0, 3, 2)
    assert (two["committed"], two["available"]) == (2, 3)
    # The channel's redelivery (a new delivery id, same body) commits nothing more, nor does
    # the order as its orders/updated body states it.
    body, headers = signed
    r = await client.post("/webhooks/shop", content=body,
                          headers={**headers, "X-Shopify-Webhook-Id": "redelivered"})
    assert r.json()["status"] == "duplicate", r.text
    r = await post(client, "shop", shopify("orders/updated", {
        **json.loads(body), "updated_at": "2026-11-30T10:00:00-05:00"}))
    assert r.json()["results"][0]["outcome"] == "replayed", r.text
    assert (await cell(client, "SKU-1"))["committed"] == 3
    assert (await cell(client, "SKU-2"))["committed"] == 2
    # Cancelling the channel order gives back the hold's units and the ones beyond it.
    r = await post(client, "shop", shopify("orders/cancelled", shopify_order(
        6001, [("SKU-1", 111, 3), ("SKU-2", 112, 2)], cancelled=True)))
    assert r.json()["results"][0]["outcome"] == "applied", r.text
    assert (await cell(client, "SKU-1"))["available"] == 5
    assert (await cell(client, "SKU-2"))["available"] == 5


async def test_held_order_smaller_than_its_hold_releases_the_rest(
        client: httpx.AsyncClient) -> None:
    """Hold lines the order dropped go back to sale (the order is what was sold); a full
    fulfilment ships what the order holds."""
    await receive(client, "SKU-1", 5)
    await receive(client, "SKU-2", 5)
    r = await client.post("/v1/holds", headers=bearer(STOREFRONT), json={
        "hold_id": "cart-down", "lines": [{"sku": "SKU-1", "qty": 2}, {"sku": "SKU-2", "qty": 1}]})
    assert r.status_code == 201
    r = await post(client, "woo", woo("order.created", woo_order(
        6101, "processing", [("SKU-1", 0, 2)], hold_id="cart-down")))
    result = r.json()["results"][0]
    assert result["op"] == "commit_hold" and all(ln["status"] == "held"
                                                 for ln in result["lines"]), r.text
    assert (await cell(client, "SKU-1"))["committed"] == 2
    two = await cell(client, "SKU-2")
    assert (two["reserved"], two["committed"], two["available"]) == (0, 0, 5)
    await post(client, "woo", woo("order.updated", woo_order(6101, "completed",
                                                             [("SKU-1", 0, 2)])))
    assert (await cell(client, "SKU-1"))["on_hand"] == 3
    assert (await cell(client, "SKU-2"))["on_hand"] == 5


async def test_hold_committed_by_storefront_is_not_counted_twice(
        client: httpx.AsyncClient) -> None:
    """The storefront committed its hold under the channel order's reference (the explicit
    link of docs/order-lifecycle.md): Shopify's order is the same sale."""
    await receive(client, "SKU-1", 5)
    await receive(client, "SKU-2", 5)
    r = await client.post("/v1/holds", headers=bearer(STOREFRONT), json={
        "hold_id": "cart-web", "lines": [{"sku": "SKU-1", "qty": 1}]})
    assert r.status_code == 201
    r = await client.post("/v1/holds/cart-web/commit", headers=bearer(STOREFRONT),
                          json={"order_id": "shop:6201"})
    assert r.status_code == 200, r.text
    # Shopify's order for the same sale names the hold; it also has a unit of SKU-2.
    r = await post(client, "shop", shopify("orders/create", shopify_order(
        6201, [("SKU-1", 111, 1), ("SKU-2", 112, 1)], hold_id="cart-web")))
    result = r.json()["results"][0]
    assert result["op"] == "order", r.text
    assert [(ln["sku"], ln["status"]) for ln in result["lines"]] == [
        ("SKU-1", "held"), ("SKU-2", "committed")]
    assert (await cell(client, "SKU-1"))["committed"] == 1  # not 2
    assert (await cell(client, "SKU-2"))["committed"] == 1
    # Shopify ships the order: the storefront's record of the sale ships with it.
    r = await post(client, "shop", shopify("orders/fulfilled", shopify_order(
        6201, [("SKU-1", 111, 1), ("SKU-2", 112, 1)], hold_id="cart-web", fulfilled=True)))
    assert [(x["op"], x["outcome"]) for x in r.json()["results"]] == [
        ("order", "replayed"), ("fulfil", "applied")], r.text
    one, two = await cell(client, "SKU-1"), await cell(client, "SKU-2")
    assert (one["on_hand"], one["committed"]) == (4, 0)
    assert (two["on_hand"], two["committed"]) == (4, 0)


async def test_hold_spent_by_another_channel_order_takes_from_available(
        client: httpx.AsyncClient) -> None:
    """The hold attribute comes from the shopper's browser: naming a hold that another channel
    order already committed is not the same sale."""
    await receive(client, "SKU-1", 5)
    r = await client.post("/v1/holds", headers=bearer(STOREFRONT), json={
        "hold_id": "cart-reused", "lines": [{"sku": "SKU-1", "qty": 1}]})
    assert r.status_code == 201
    r = await post(client, "shop", shopify("orders/create", shopify_order(
        6301, [("SKU-1", 111, 1)], hold_id="cart-reused")))
    assert r.json()["results"][0]["op"] == "commit_hold"
    r = await post(client, "shop", shopify("orders/create", shopify_order(
        6302, [("SKU-1", 111, 1)], hold_id="cart-reused")))
    result = r.json()["results"][0]
    assert (result["op"], result["lines"][0]["status"]) == ("order", "committed"), r.text
    assert (await cell(client, "SKU-1"))["committed"] == 2


async def test_expired_or_unknown_hold_takes_the_order_from_available(
        client: httpx.AsyncClient) -> None:
    await receive(client, "SKU-1", 5)
    r = await post(client, "shop", shopify("orders/create", shopify_order(
        6401, [("SKU-1", 111, 2)], hold_id="never-made")))
    result = r.json()["results"][0]
    assert (result["op"], result["outcome"]) == ("order", "applied"), r.text
    assert (await cell(client, "SKU-1"))["committed"] == 2


@pytest.mark.parametrize("bad", [{"sku": "X" * 200, "quantity": 1},
                                 {"sku": "BAD\nSKU", "quantity": 1},
                                 {"sku": "SKU-2", "quantity": 2_000_000}])
async def test_one_bad_line_does_not_void_the_order(client: httpx.AsyncClient, redis: Redis,
                                                    bad: dict[str, Any]) -> None:
    from stockgate.alerts import list_alerts

    await receive(client, "SKU-1", 5)
    order = shopify_order(6501, [("SKU-1", 111, 2)])
    order["line_items"].append({"id": 1, "variant_id": 5, **bad})
    r = await post(client, "shop", shopify("orders/create", order))
    assert r.status_code == 200, r.text
    result = r.json()["results"][0]
    assert result["outcome"] == "applied", r.text
    assert [(ln["sku"], ln["status"]) for ln in result["lines"]] == [("SKU-1", "committed")]
    assert [(s["reason"], s["qty"]) for s in result["skipped"]] == [
        ("invalid", bad["quantity"])]
    assert (await cell(client, "SKU-1"))["committed"] == 2
    alerts = await list_alerts(redis, "acme", type="unmapped_line")
    assert len(alerts) == 1 and alerts[0].ref == "shop:6501" and alerts[0].channel == "shop"


async def test_unmapped_line_is_reported_and_alerted_once(client: httpx.AsyncClient,
                                                          redis: Redis) -> None:
    from stockgate.alerts import list_alerts

    await receive(client, "SKU-1", 5)
    signed = shopify("orders/create", shopify_order(
        6601, [("SKU-1", 111, 1), (None, 999, 2), (None, 998, 0)]))
    r = await post(client, "shop", signed)
    result = r.json()["results"][0]
    assert result["outcome"] == "applied", r.text
    assert result["skipped"] == [{"reason": "unmapped", "qty": 2, "variant": "999"},
                                 {"reason": "no_units", "qty": 0, "variant": "998"}]
    alerts = await list_alerts(redis, "acme", type="unmapped_line")
    assert len(alerts) == 1 and "variant 999" in alerts[0].detail
    # A redelivery under a new id (the channel's retry after a lost reply) alerts no more,
    # nor does a later update of the same order.
    body, headers = signed
    r = await client.post("/webhooks/shop", content=body,
                          headers={**headers, "X-Shopify-Webhook-Id": "again"})
    assert r.json()["status"] == "duplicate"
    r = await post(client, "shop", shopify("orders/updated", {
        **json.loads(body), "updated_at": "2026-11-30T10:00:00-05:00"}))
    assert r.json()["results"][0]["outcome"] == "replayed"
    assert len(await list_alerts(redis, "acme", type="unmapped_line")) == 1


async def test_order_of_only_unmapped_lines_is_reported(client: httpx.AsyncClient,
                                                        redis: Redis) -> None:
    from stockgate.alerts import list_alerts

    r = await post(client, "woo", woo("order.created", woo_order(
        6701, "processing", [("", 4242, 1)])))
    result = r.json()["results"][0]
    assert (result["outcome"], result["error"]) == ("ignored", "no_stocked_lines"), r.text
    assert result["skipped"] == [{"reason": "unmapped", "qty": 1, "variant": "4242"}]
    assert len(await list_alerts(redis, "acme", type="unmapped_line")) == 1


async def test_fulfilment_skips_bad_lines_and_never_ships_everything_for_them(
        client: httpx.AsyncClient) -> None:
    await receive(client, "SKU-1", 10)
    await post(client, "shop", shopify("orders/create", shopify_order(
        6801, [("SKU-1", 111, 4)])))
    # Only an unmappable line shipped: that is not "every open unit of the order".
    r = await post(client, "shop", shopify("fulfillments/create", {
        "id": 1, "order_id": 6801, "line_items": [{"id": 2, "variant_id": 999, "quantity": 1}]}))
    assert r.json()["status"] == "ignored", r.text
    assert (await cell(client, "SKU-1"))["committed"] == 4
    # A bad line beside a good one: the good one ships.
    r = await post(client, "shop", shopify("fulfillments/create", {
        "id": 3, "order_id": 6801, "line_items": [
            {"id": 4, "variant_id": 111, "sku": "SKU-1", "quantity": 1},
            {"id": 5, "variant_id": 7, "sku": "Y" * 300, "quantity": 1}]}))
    result = r.json()["results"][0]
    assert result["outcome"] == "applied" and result["skipped"][0]["reason"] == "invalid"
    state = await cell(client, "SKU-1")
    assert (state["on_hand"], state["committed"]) == (9, 3)
