"""Reliability through the HTTP gateway: a Redis crash in the middle of a burst of holds,
Stripe-style idempotency, per-customer purchase limits and per-key rate limits, webhook
redelivery storms, and secrets kept out of the logs."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_support import (
    BC_SECRET,
    LIMITED,
    OPERATOR,
    SHOPIFY_SECRET,
    STD_SECRET,
    STOREFRONT,
    WOO_SECRET,
    bearer,
    cell,
    gateway_settings,
    receive,
)
from hostile_support import sign
from redis.asyncio import Redis
from starlette.applications import Starlette

from gateway.app import create_app
from stockgate.embedded import EmbeddedRedis
from stockgate.keys import tenant_keys
from stockgate.settings import Settings

pytest_plugins = ["gateway_fixtures"]  # gw_settings, app, client

SF = bearer(STOREFRONT)
OP = bearer(OPERATOR)
JSON = {"Content-Type": "application/json"}
DAY_MS = 86_400_000


def shopify_order(order_id: int, sku: str, qty: int, hold_id: str | None = None) -> bytes:
    notes = [{"name": "_stockgate_hold_id", "value": hold_id}] if hold_id else []
    return json.dumps({"id": order_id, "note_attributes": notes, "line_items": [
        {"id": 1, "variant_id": 2, "sku": sku, "quantity": qty, "price": "9.00"}]}).encode()


def shopify_headers(body: bytes, topic: str, delivery_id: str) -> dict[str, str]:
    return {**JSON, "X-Shopify-Topic": topic, **sign("shopify", body, delivery_id)}


async def hold_records(redis: Redis, tenant: str, sku: str) -> tuple[set[str], int, int]:
    """(hold ids stored, reserved units, hold events in the outbox) for one SKU."""
    k = tenant_keys(tenant)
    reserved = int(await redis.hget(k.stock(sku), "main|reserved") or 0)
    hold_events = sum(1 for _, e in await redis.xrange(k.outbox)
                      if json.loads(e[b"e"])["type"] == "hold")
    held = {key.decode().rsplit(":", 1)[1]
            async for key in redis.scan_iter(match=k.prefix + "hold:*", count=1000)}
    return held, reserved, hold_events


# ---- 1. a Redis crash during a burst of holds -------------------------------------------

@pytest.fixture
async def strict_gateway(tmp_path: Path) -> AsyncIterator[tuple[EmbeddedRedis, Redis,
                                                                httpx.AsyncClient]]:
    """A gateway on a private strict-mode server that the test can kill -9 and restart."""
    server = EmbeddedRedis(tmp_path / "redis", durability="strict")
    server.start()
    # Short timeouts, as in production: a dead server must turn into 503s quickly.
    redis = Redis.from_url(server.url, max_connections=500, socket_timeout=2,
                           socket_connect_timeout=1)
    app = create_app(gateway_settings(Settings(data_dir=str(tmp_path), redis_url=server.url)),
                     redis)
    try:
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            yield server, redis, client
    finally:
        await redis.aclose()
        server.stop()


async def test_redis_crash_during_a_burst_of_holds_over_http(
        strict_gateway: tuple[EmbeddedRedis, Redis, httpx.AsyncClient]) -> None:
    server, redis, client = strict_gateway
    sku, shoppers = "DROP-1", 30
    await receive(client, sku, 100_000)
    acked: set[str] = set()
    statuses: Counter[int] = Counter()
    during: dict[str, httpx.Response] = {}
    crash_done = asyncio.Event()

    async def shopper(n: int) -> None:
        i = 0
        while not crash_done.is_set() or i < 20:
            hold_id = f"s{n}-{i}"
            deadline = time.monotonic() + 20
            while True:  # a storefront retries the same hold id until it gets an answer
                r = await client.post("/v1/holds", headers=SF, json={
                    "hold_id": hold_id, "lines": [{"sku": sku, "qty": 1}]})
                statuses[r.status_code] += 1
                if r.status_code == 201:
                    acked.add(hold_id)
                    break
                assert r.status_code == 503, r.text
                assert r.json()["error"] == "unavailable"
                assert int(r.headers["Retry-After"]) >= 1
                assert time.monotonic() < deadline, "the gateway did not recover"
                await asyncio.sleep(0.05)
            i += 1

    async def crash() -> None:
        await asyncio.sleep(0.3)
        server.kill()
        # While Redis is down: not ready, and a channel's webhook is refused with 503 so that
        # the channel retries it later instead of counting it delivered.
        during["readyz"] = await client.get("/readyz")
        during["stock"] = await client.get(f"/v1/stock/{sku}", headers=SF)
        body = shopify_order(8001, sku, 2)
        during["shopify"] = await client.post(
            "/webhooks/shop", content=body,
            headers=shopify_headers(body, "orders/create", "outage-1"))
        bc = json.dumps({"scope": "store/order/created", "hash": "h-outage",
                         "data": {"type": "order", "id": 77}}).encode()
        during["bigcommerce"] = await client.post(
            "/webhooks/bc", content=bc, headers={**JSON, "X-Stockgate-Secret": BC_SECRET})
        await asyncio.sleep(0.3)
        server.start()
        crash_done.set()

    await asyncio.gather(crash(), *(shopper(n) for n in range(shoppers)))

    assert statuses[503] > 0, "the crash happened while no hold was in flight"
    assert set(statuses) == {201, 503}
    for what, r in during.items():
        assert r.status_code == 503, (what, r.status_code, r.text)
        assert r.headers["Retry-After"] == "1", what

    # Recovered by itself: same app, same client; the scripts come back after NOSCRIPT.
    assert (await client.get("/readyz")).status_code == 200
    held, reserved, hold_events = await hold_records(redis, "acme", sku)
    assert acked <= held, f"{len(acked - held)} acknowledged holds lost in strict mode"
    assert reserved == len(held) == hold_events  # none doubled

    # The webhook refused during the outage was not marked seen: its redelivery applies once.
    body = shopify_order(8001, sku, 2)
    headers = shopify_headers(body, "orders/create", "outage-1")
    r = await client.post("/webhooks/shop", content=body, headers=headers)
    assert r.status_code == 200 and r.json()["status"] == "applied", r.text
    r = await client.post("/webhooks/shop", content=body, headers=headers)
    assert r.json()["status"] == "duplicate"
    assert (await cell(client, sku))["committed"] == 2


# ---- 2. idempotency like Stripe's --------------------------------------------------------

async def test_repeated_hold_returns_the_first_answer_byte_for_byte(
        client: httpx.AsyncClient, redis: Redis) -> None:
    await receive(client, "SKU-1", 10)
    body = {"hold_id": "cart-7", "customer": "c-1", "lines": [{"sku": "SKU-1", "qty": 2}]}
    first = await client.post("/v1/holds", headers=SF, json=body)
    assert first.status_code == 201
    again = await client.post("/v1/holds", headers=SF, json=body)
    assert (again.status_code, again.content) == (first.status_code, first.content)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert (await cell(client, "SKU-1"))["reserved"] == 2

    # Same key, another request: 409, and nothing moves.
    for other in ({**body, "lines": [{"sku": "SKU-1", "qty": 3}]}, {**body, "customer": "c-2"},
                  {**body, "ttl_s": 60}):
        r = await client.post("/v1/holds", headers=SF, json=other)
        assert r.status_code == 409 and r.json()["error"] == "idempotency_conflict", other
    assert (await cell(client, "SKU-1"))["reserved"] == 2

    # The record has no expiry while held (it is what gives the units back, however late
    # the sweep runs), and once released lives at least 24 h more for replays.
    assert await redis.pttl(tenant_keys("acme").hold("cart-7")) == -1
    assert (await client.delete("/v1/holds/cart-7", headers=SF)).status_code == 200
    assert await redis.pttl(tenant_keys("acme").hold("cart-7")) >= DAY_MS


async def test_repeated_commit_and_release_answer_the_same(client: httpx.AsyncClient,
                                                           redis: Redis) -> None:
    await receive(client, "SKU-1", 10)
    for hold_id in ("h-c", "h-r"):
        r = await client.post("/v1/holds", headers=SF, json={
            "hold_id": hold_id, "lines": [{"sku": "SKU-1", "qty": 1}]})
        assert r.status_code == 201
    first = await client.post("/v1/holds/h-c/commit", headers=SF, json={"order_id": "o-1"})
    again = await client.post("/v1/holds/h-c/commit", headers=SF, json={"order_id": "o-1"})
    assert first.status_code == 200
    assert (again.status_code, again.content) == (first.status_code, first.content)
    r = await client.post("/v1/holds/h-c/commit", headers=SF, json={"order_id": "o-2"})
    assert r.status_code == 409 and r.json()["error"] == "idempotency_conflict"
    # An order with open units keeps its record without expiry (docs/order-lifecycle.md).
    assert await redis.pttl(tenant_keys("acme").order("o-1")) == -1

    first = await client.delete("/v1/holds/h-r", headers=SF)
    again = await client.delete("/v1/holds/h-r", headers=SF)
    assert (again.status_code, again.content) == (200, first.content)
    state = await cell(client, "SKU-1")
    assert (state["reserved"], state["committed"]) == (0, 1)


async def test_repeated_adjust_returns_the_first_answer(client: httpx.AsyncClient,
                                                        redis: Redis) -> None:
    body = {"delta": 4, "reason": "receipt", "idempotency_key": "po-9"}
    first = await client.post("/v1/stock/SKU-1/adjust", headers=OP, json=body)
    # Stock moves between the two calls: the repeat still answers what the first one did.
    await receive(client, "SKU-1", 3, key="po-10")
    again = await client.post("/v1/stock/SKU-1/adjust", headers=OP, json=body)
    assert first.status_code == 200
    assert (again.status_code, again.content) == (first.status_code, first.content)
    assert (await cell(client, "SKU-1"))["on_hand"] == 7
    r = await client.post("/v1/stock/SKU-1/adjust", headers=OP, json={**body, "reason": "x"})
    assert r.status_code == 409 and r.json()["error"] == "idempotency_conflict"
    assert await redis.pttl(tenant_keys("acme").idempotency("adjust", "po-9")) >= DAY_MS


# ---- 3. abuse limits ---------------------------------------------------------------------

async def test_per_customer_limit_holds_under_concurrency(client: httpx.AsyncClient) -> None:
    await receive(client, "DROP-2", 1000)
    r = await client.put("/v1/stock/DROP-2/policy", headers=OP, json={"max_per_customer": 2})
    assert r.status_code == 200 and r.json()["max_per_customer"] == 2

    async def grab(i: int, customer: str = "bot-1") -> httpx.Response:
        return await client.post("/v1/holds", headers=SF, json={
            "hold_id": f"{customer}-{i}", "customer": customer,
            "lines": [{"sku": "DROP-2", "qty": 1}]})

    replies = await asyncio.gather(*(grab(i) for i in range(50)))
    codes = Counter(r.status_code for r in replies)
    assert codes == {201: 2, 409: 48}
    refused = next(r for r in replies if r.status_code == 409).json()
    assert refused["error"] == "limit_exceeded"
    assert (refused["sku"], refused["limit"], refused["already"]) == ("DROP-2", 2, 2)
    assert refused["detail"]
    assert (await cell(client, "DROP-2"))["reserved"] == 2
    # Another shopper is not affected by the bot's allowance.
    assert (await grab(0, "human-1")).status_code == 201

    # Releasing a hold gives its units back to the customer's allowance.
    held = [r.json()["hold_id"] for r in replies if r.status_code == 201]
    assert (await client.delete(f"/v1/holds/{held[0]}", headers=SF)).status_code == 200
    assert (await grab(100)).status_code == 201
    assert (await grab(101)).status_code == 409


async def test_expired_hold_gives_the_allowance_back(app: Starlette,
                                                     client: httpx.AsyncClient) -> None:
    await receive(client, "DROP-3", 10)
    await client.put("/v1/stock/DROP-3/policy", headers=OP, json={"max_per_customer": 1})
    body = {"customer": "c-9", "ttl_s": 1, "lines": [{"sku": "DROP-3", "qty": 1}]}
    assert (await client.post("/v1/holds", headers=SF, json=body)).status_code == 201
    r = await client.post("/v1/holds", headers=SF, json=body)
    assert r.status_code == 409 and r.json()["error"] == "limit_exceeded"
    await asyncio.sleep(1.1)  # past the 1 s hold TTL: the sweep may now expire it
    assert (await app.state.engine.expire("acme")).expired == 1
    assert (await client.post("/v1/holds", headers=SF, json=body)).status_code == 201


async def test_api_key_rate_limit_is_429_with_retry_after(client: httpx.AsyncClient) -> None:
    await receive(client, "SKU-1", 100)
    replies = [await client.post("/v1/holds", headers=bearer(LIMITED), json={
        "lines": [{"sku": "SKU-1", "qty": 1}]}) for _ in range(10)]
    limited = [r for r in replies if r.status_code == 429]
    # A 2/s bucket allows a burst of 2, and ten calls take far less than the 4 s of refill
    # that would let them all through.
    assert 1 <= len(limited) <= 8
    body = limited[0].json()
    assert body["error"] == "rate_limited" and "API key" in body["detail"]
    assert int(limited[0].headers["Retry-After"]) >= 1
    # Refused calls held nothing.
    held = sum(1 for r in replies if r.status_code == 201)
    assert (await cell(client, "SKU-1"))["reserved"] == held
    # Other keys are not limited by this one.
    assert (await client.get("/v1/stock/SKU-1", headers=SF)).status_code == 200


# ---- 4. the same webhook delivered 50 times ----------------------------------------------

def woo_headers(body: bytes, topic: str, delivery_id: str) -> dict[str, str]:
    return {**JSON, "X-WC-Webhook-Topic": topic, **sign("woocommerce", body, delivery_id)}


@pytest.mark.parametrize("mode", ["concurrent", "sequential"])
async def test_fifty_deliveries_of_one_webhook_change_stock_once(
        client: httpx.AsyncClient, redis: Redis, mode: str) -> None:
    await receive(client, "SKU-1", 100)
    await receive(client, "SKU-V", 100)
    shop_body = shopify_order(9001, "SKU-1", 3)
    woo_body = json.dumps({"id": 501, "status": "processing", "line_items": [
        {"id": 1, "sku": "", "variation_id": 88, "product_id": 10, "quantity": 4}]}).encode()
    cancel_body = json.dumps({**json.loads(shopify_order(9001, "SKU-1", 3)),
                              "cancelled_at": "2026-11-30T10:00:00Z"}).encode()
    deliveries = [
        ("shop", shop_body, shopify_headers(shop_body, "orders/create", "d-shop")),
        ("woo", woo_body, woo_headers(woo_body, "order.created", "d-woo")),
    ]

    async def deliver(channel: str, body: bytes, headers: dict[str, str]) -> int:
        r = await client.post(f"/webhooks/{channel}", content=body, headers=headers)
        return r.status_code

    for channel, body, headers in deliveries:
        if mode == "concurrent":
            codes = await asyncio.gather(*(deliver(channel, body, headers) for _ in range(50)))
        else:
            codes = [await deliver(channel, body, headers) for _ in range(50)]
        assert set(codes) == {200}, codes
    assert (await cell(client, "SKU-1"))["committed"] == 3
    assert (await cell(client, "SKU-V"))["committed"] == 4
    # Channels resend for up to 48 h (Shopify): the dedupe record outlives that.
    assert await redis.pttl(tenant_keys("acme").webhook_seen("shop", "d-shop")) >= 2 * DAY_MS
    events = [json.loads(e[b"e"]) for _, e in await redis.xrange(tenant_keys("acme").outbox)]
    assert Counter(e["type"] for e in events if e["sku"] in ("SKU-1", "SKU-V")) == {
        "adjust": 2, "commit": 2}

    # The cancellation storm too: the committed units come back once.
    headers = shopify_headers(cancel_body, "orders/cancelled", "d-cancel")
    codes = await asyncio.gather(*(deliver("shop", cancel_body, headers) for _ in range(50)))
    assert set(codes) == {200}
    assert (await cell(client, "SKU-1"))["committed"] == 0
    assert (await cell(client, "SKU-1"))["on_hand"] == 100


# ---- 7. no secret in the logs ------------------------------------------------------------

async def test_secrets_never_reach_the_logs(client: httpx.AsyncClient,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    await receive(client, "SKU-1", 5)
    forged = "Bearer sf-secret-acme-0123456789-forged"
    body = shopify_order(4242, "SKU-1", 1)
    good = shopify_headers(body, "orders/create", "log-1")
    bad_sig = base64.b64encode(hmac.new(b"guess", body, hashlib.sha256).digest()).decode()
    calls: list[tuple[str, str, Any, dict[str, str]]] = [
        ("POST", "/v1/holds", {"lines": [{"sku": "SKU-1", "qty": 1}]}, SF),
        ("POST", "/v1/holds", {"lines": [{"sku": "SKU-1", "qty": 1}]}, {"Authorization": forged}),
        ("POST", "/v1/holds", {"lines": [{"sku": "NOPE", "qty": 1}]}, SF),
        ("POST", "/v1/holds", {"lines": "bad"}, SF),
        ("POST", "/v1/stock/SKU-1/adjust", {"delta": 1}, OP),
        ("POST", "/v1/holds", {"lines": [{"sku": "SKU-1", "qty": 1}]}, bearer(LIMITED)),
    ]
    for method, path, payload, headers in calls:
        await client.request(method, path, json=payload, headers=headers)
    await client.post("/webhooks/shop", content=body, headers=good)
    await client.post("/webhooks/shop", content=body,
                      headers={**good, "X-Shopify-Hmac-Sha256": bad_sig})
    # A decodable but unusable delivery (unknown SKU) is logged as ignored: without secrets.
    unknown = shopify_order(4243, "NOPE", 1)
    await client.post("/webhooks/shop", content=unknown,
                      headers=shopify_headers(unknown, "orders/create", "log-2"))
    await client.post("/webhooks/woo", content=body,
                      headers={**JSON, "X-WC-Webhook-Signature": bad_sig,
                               "X-WC-Webhook-Topic": "order.created"})
    await client.post("/webhooks/bc", content=b"{}",
                      headers={**JSON, "X-Stockgate-Secret": BC_SECRET + "x"})
    std_body = json.dumps({"type": "order.cancelled", "data": {"order_id": "o"}}).encode()
    await client.post("/webhooks/std", content=std_body,
                      headers={**JSON, **sign("standard", std_body, "msg-1")})

    assert caplog.records, "nothing was logged: the test would prove nothing"
    text = "\n".join(f"{r.getMessage()} {r.exc_text or ''} {r.args!r}" for r in caplog.records)
    secrets = [STOREFRONT, OPERATOR, LIMITED, forged.split()[1], SHOPIFY_SECRET, WOO_SECRET,
               BC_SECRET, STD_SECRET, STD_SECRET.removeprefix("whsec_"), bad_sig,
               good["X-Shopify-Hmac-Sha256"]]
    for secret in secrets:
        assert secret not in text, f"a secret reached the logs: {secret[:6]}..."
