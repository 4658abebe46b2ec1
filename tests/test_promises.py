"""README promises that a one-line change of the code must break (issue 16): channels see 0
when a count leaves available negative, the `low_stock` and `oversell` alerts, tenant walls on
every operator read, exact 429 counts from a controlled clock, and the idempotency TTL."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import types
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import msgspec
import pytest
from gateway_support import (
    OPERATOR,
    OTHER_TENANT,
    SHOPIFY_SECRET,
    STOREFRONT,
    bearer,
    gateway_settings,
)
from redis.asyncio import Redis
from workers_helpers import running_worker, settled, wait_for

import gateway.auth
from gateway.app import create_app
from stockgate.embedded import EmbeddedRedis
from stockgate.keys import tenant_keys
from stockgate.settings import ApiKey, Channel, Settings
from workers.simulators import SimulatorServer

pytest_plugins = ["gateway_fixtures"]  # gw_settings, app, client


@pytest.fixture
def sims() -> Iterator[dict[str, SimulatorServer]]:
    started = {"plain": SimulatorServer("standard").start(),
               "mapped": SimulatorServer("standard").start(),
               "failing": SimulatorServer("standard").start()}
    started["failing"].state.fail_ratio = 1.0
    yield started
    for sim in started.values():
        sim.stop()


def pushed(sim: SimulatorServer, tenant: str = "acme") -> Channel:
    return Channel(kind="standard", secret="s3cret", tenant=tenant, api_url=sim.url,
                   access_token="token", rate_limit_per_s=200.0)


@pytest.fixture
def stack_settings(tmp_path: Path, sims: dict[str, SimulatorServer]) -> Settings:
    """The gateway tests' keys and channels, plus two pushed ones: `plain` shows one figure
    (StockView.channels), `mapped` shows its mapped location's own available."""
    base = gateway_settings(Settings(data_dir=str(tmp_path)))
    channels = dict(base.channels)
    channels["plain"] = pushed(sims["plain"])
    channels["mapped"] = msgspec.structs.replace(pushed(sims["mapped"]),
                                                 location_map={"wh1": "main"})
    return msgspec.structs.replace(base, channels=channels)


@pytest.fixture
async def stack(stack_settings: Settings, redis: Redis, redis_server: EmbeddedRedis
                ) -> AsyncIterator[httpx.AsyncClient]:
    """Gateway and the real arq worker on the session's server."""
    app = create_app(stack_settings, redis)
    async with running_worker(stack_settings, redis_server.url), \
            app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
        yield c


async def post(client: httpx.AsyncClient, path: str, body: dict, key: str = OPERATOR,
               expect: int = 200) -> dict:
    r = await client.post(path, headers=bearer(key), json=body)
    assert r.status_code == expect, r.text
    return r.json()


async def stock(client: httpx.AsyncClient, sku: str, key: str = OPERATOR) -> dict:
    r = await client.get(f"/v1/stock/{sku}", headers=bearer(key))
    assert r.status_code == 200, r.text
    return r.json()


# ---- 1. channels are pushed 0 when available is negative ----------------------------------

async def test_a_count_below_promised_units_pushes_zero_to_every_channel(
        stack: httpx.AsyncClient, sims: dict[str, SimulatorServer], redis: Redis) -> None:
    """5 received, 3 ordered, then a count finds 1: available -2. The view shows -2 for the
    location, every channel figure is 0, and both push paths send 0: the channel's single
    figure (stockgate/stock.py, StockView.channels) and a mapped location's own count
    (workers/propagation.py, channel_value)."""
    sku = "SKU-NEG"
    plain, mapped = sims["plain"].state, sims["mapped"].state
    await post(stack, f"/v1/stock/{sku}/adjust", {"delta": 5, "reason": "receipt",
                                                  "idempotency_key": "neg-rcv"})
    await post(stack, "/v1/holds", {"hold_id": "neg-h", "lines": [{"sku": sku, "qty": 3}]},
               expect=201)
    await post(stack, "/v1/holds/neg-h/commit", {"order_id": "neg-o"})

    async def shown(value: int) -> bool:
        return plain.count(sku, "main") == value and mapped.count(sku, "wh1") == value

    await wait_for(lambda: shown(2), 15)
    await post(stack, f"/v1/stock/{sku}/adjust", {"set_on_hand": 1, "reason": "count",
                                                  "idempotency_key": "neg-count"})

    async def moved() -> bool:
        return plain.count(sku, "main") != 2 and mapped.count(sku, "wh1") != 2

    await wait_for(moved, 15)
    await wait_for(lambda: settled(redis, "acme"), 15)
    assert (plain.count(sku, "main"), mapped.count(sku, "wh1")) == (0, 0)
    view = await stock(stack, sku)
    assert view["locations"]["main"]["available"] == -2
    assert view["available"] == 0
    assert view["channels"]["plain"] == 0 and view["channels"]["mapped"] == 0


# ---- 2. the low_stock and oversell alerts ---------------------------------------------------

async def alerts(client: httpx.AsyncClient, type_: str, key: str = OPERATOR) -> list[dict]:
    r = await client.get("/v1/alerts", params={"type": type_}, headers=bearer(key))
    assert r.status_code == 200, r.text
    return r.json()["alerts"]


async def test_falling_under_the_threshold_lists_a_low_stock_alert(
        stack: httpx.AsyncClient, redis: Redis) -> None:
    await post(stack, "/v1/stock/SKU-LOW/adjust", {"delta": 5, "reason": "receipt",
                                                   "idempotency_key": "low-rcv"})
    r = await stack.put("/v1/stock/SKU-LOW/policy", headers=bearer(OPERATOR),
                        json={"low_stock_threshold": 3})
    assert r.status_code == 200, r.text
    # 5 -> 4 -> 3: not under 3 yet, no alert.
    for n in (1, 2):
        await post(stack, "/v1/holds", {"hold_id": f"low-{n}",
                                        "lines": [{"sku": "SKU-LOW", "qty": 1}]}, expect=201)
    await wait_for(lambda: settled(redis, "acme"), 15)
    assert await alerts(stack, "low_stock") == []
    # 3 -> 2: falls under 3, once.
    await post(stack, "/v1/holds", {"hold_id": "low-3", "lines": [{"sku": "SKU-LOW", "qty": 1}]},
               expect=201)

    async def listed() -> bool:
        return bool(await alerts(stack, "low_stock"))

    await wait_for(listed, 15)
    found = await alerts(stack, "low_stock")
    assert [(a["sku"], a["location"]) for a in found] == [("SKU-LOW", "main")]
    assert "available 2 fell under 3" in found[0]["detail"]
    # 2 -> 1: still under, already said: no second alert (alerts are capped at 1,000; a
    # flash sale under the threshold must not fill them).
    await post(stack, "/v1/holds", {"hold_id": "low-4", "lines": [{"sku": "SKU-LOW", "qty": 1}]},
               expect=201)
    await wait_for(lambda: settled(redis, "acme"), 15)
    assert len(await alerts(stack, "low_stock")) == 1


def shopify_order(order_id: int, sku: str, qty: int) -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"id": order_id, "line_items": [{"quantity": qty, "sku": sku}]}).encode()
    digest = base64.b64encode(hmac.new(SHOPIFY_SECRET.encode(), body, hashlib.sha256).digest())
    return body, {"X-Shopify-Topic": "orders/create", "X-Shopify-Webhook-Id": f"w{order_id}",
                  "X-Shopify-Hmac-Sha256": digest.decode(), "Content-Type": "application/json"}


async def test_an_order_beyond_available_lists_an_oversell_alert(
        stack: httpx.AsyncClient) -> None:
    await post(stack, "/v1/stock/SKU-OS/adjust", {"delta": 2, "reason": "receipt",
                                                  "idempotency_key": "os-rcv"})
    body, headers = shopify_order(4242, "SKU-OS", 5)
    r = await stack.post("/webhooks/shop", content=body, headers=headers)
    assert r.status_code == 200, r.text

    async def listed() -> bool:
        return bool(await alerts(stack, "oversell"))

    await wait_for(listed, 15)
    found = await alerts(stack, "oversell")
    assert [(a["sku"], a["channel"]) for a in found] == [("SKU-OS", "shop")]
    assert (await stock(stack, "SKU-OS"))["locations"]["main"]["committed"] == 0


# ---- 3. tenant walls on every operator read -------------------------------------------------

@pytest.fixture
def walled_settings(stack_settings: Settings, sims: dict[str, SimulatorServer]) -> Settings:
    """A channel per tenant whose every push fails, so that each has failed deliveries and
    `delivery_failing` alerts."""
    channels = dict(stack_settings.channels)
    channels["acme-out"] = pushed(sims["failing"], "acme")
    channels["globex-out"] = pushed(sims["failing"], "globex")
    return msgspec.structs.replace(stack_settings, channels=channels)


async def test_each_operator_reads_only_its_own_tenant(
        walled_settings: Settings, redis: Redis, redis_server: EmbeddedRedis) -> None:
    app = create_app(walled_settings, redis)
    async with running_worker(walled_settings, redis_server.url), \
            app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        for key, sku in ((OPERATOR, "SKU-ACME"), (OTHER_TENANT, "SKU-GLOBEX")):
            await post(client, f"/v1/stock/{sku}/adjust", {
                "delta": 4, "reason": "receipt", "idempotency_key": f"wall-{sku}"}, key=key)

        async def read(path: str, key: str, field: str) -> list[dict]:
            r = await client.get(path, headers=bearer(key))
            assert r.status_code == 200, r.text
            return r.json()[field]

        async def both_ready() -> bool:
            for key in (OPERATOR, OTHER_TENANT):
                if not (await read("/v1/events", key, "events")
                        and await read("/v1/deliveries?status=failed", key, "deliveries")
                        and await read("/v1/alerts?type=delivery_failing", key, "alerts")):
                    return False
            return True

        await wait_for(both_ready, 20)
        for key, sku, channel in ((OPERATOR, "SKU-ACME", "acme-out"),
                                  (OTHER_TENANT, "SKU-GLOBEX", "globex-out")):
            events = await read("/v1/events", key, "events")
            assert {e["sku"] for e in events} == {sku}, events
            deliveries = await read("/v1/deliveries?status=failed", key, "deliveries")
            assert {(d["sku"], d["channel"]) for d in deliveries} == {(sku, channel)}
            found = await read("/v1/alerts", key, "alerts")
            assert found and {a["channel"] for a in found} == {channel}, found
            r = await client.get(f"/v1/stock/{sku}", headers=bearer(key))
            assert r.status_code == 200 and r.json()["locations"]["main"]["on_hand"] == 4
        # Nor can one tenant's operator retry the other's failed push.
        acme_failed = await read("/v1/deliveries?status=failed", OPERATOR, "deliveries")
        r = await client.post(f"/v1/deliveries/{acme_failed[0]['id']}/retry",
                              headers=bearer(OTHER_TENANT))
        assert r.status_code == 404, r.text
        assert await read("/v1/deliveries?status=failed", OPERATOR, "deliveries") == acme_failed
        # The other tenant's SKU does not exist for this key.
        assert (await client.get("/v1/stock/SKU-GLOBEX", headers=bearer(OPERATOR))
                ).status_code == 404
        assert (await client.get("/v1/stock/SKU-ACME", headers=bearer(OTHER_TENANT))
                ).status_code == 404


# ---- 4. rate limits: exact counts from a controlled clock ------------------------------------

RATED = "sf-secret-rated-0123456789"


GLOBEX_SHOP = "sf-secret-globex-shop-0123456789"


async def test_each_key_writes_only_its_own_tenant(gw_settings: Settings, redis: Redis) -> None:
    """The tenant comes from the key, never from the request, on writes too: another tenant's
    keys using the same SKU and hold names (a bulk adjust, a policy, a commit and a release
    of the hold) change nothing of this tenant's stock, and its hold is still its own."""
    settings = msgspec.structs.replace(gw_settings, api_keys={
        **gw_settings.api_keys,
        "globex-shop": ApiKey(secret=GLOBEX_SHOP, tenant="globex", scopes=("storefront",))})
    app = create_app(settings, redis)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        await post(client, "/v1/stock/SKU-W/adjust", {"delta": 10, "reason": "receipt",
                                                      "idempotency_key": "w-rcv"})
        await post(client, "/v1/holds", {"hold_id": "w-h", "lines": [{"sku": "SKU-W",
                                                                       "qty": 2}]},
                   key=STOREFRONT, expect=201)
        before = await stock(client, "SKU-W")
        # globex's own SKU-W: its receipt and policy land in its own stock only.
        reply = await post(client, "/v1/stock/bulk", {"lines": [{
            "sku": "SKU-W", "reason": "receipt", "idempotency_key": "g-bulk", "delta": 7}]},
            key=OTHER_TENANT)
        assert reply["applied"] == 1, reply
        r = await client.put("/v1/stock/SKU-W/policy", headers=bearer(OTHER_TENANT),
                             json={"safety": 5})
        assert r.status_code == 200, r.text
        theirs = await stock(client, "SKU-W", key=OTHER_TENANT)
        assert theirs["locations"]["main"]["on_hand"] == 7
        r = await client.post("/v1/holds/w-h/commit", headers=bearer(GLOBEX_SHOP),
                              json={"order_id": "g-1"})
        assert r.status_code == 404, r.text
        r = await client.delete("/v1/holds/w-h", headers=bearer(GLOBEX_SHOP))
        assert r.status_code == 404, r.text
        assert await stock(client, "SKU-W") == before
        await post(client, "/v1/holds/w-h/commit", {"order_id": "w-1"}, key=STOREFRONT)
        assert (await stock(client, "SKU-W"))["locations"]["main"]["committed"] == 2


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


async def test_rate_limit_admits_exactly_its_rate(
        gw_settings: Settings, redis: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """A key of 10/s: a burst of exactly 10 at one instant, then 5 after half a second, and
    never more than one second's worth however long the key was idle."""
    clock = Clock()
    # Only the gateway's bucket sees the fake clock; the event loop keeps the real one.
    monkeypatch.setattr(gateway.auth, "time", types.SimpleNamespace(monotonic=clock.monotonic))
    settings = msgspec.structs.replace(gw_settings, api_keys={
        **gw_settings.api_keys,
        "rated": ApiKey(secret=RATED, tenant="acme", rate_limit_per_s=10)})
    app = create_app(settings, redis)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:

        async def burst(n: int) -> list[int]:
            return [(await client.get("/v1/stock/SKU-X", headers=bearer(RATED))).status_code
                    for _ in range(n)]

        first = await burst(30)
        assert first.count(404) == 10 and first.count(429) == 20, first
        r = await client.get("/v1/stock/SKU-X", headers=bearer(RATED))
        assert r.status_code == 429 and r.headers["Retry-After"] == "1"  # 0.1 s, rounded up
        clock.now += 0.5
        assert (await burst(30)).count(404) == 5
        clock.now += 60.0
        assert (await burst(30)).count(404) == 10
        # Another key is not limited by this one's bucket.
        r = await client.get("/v1/stock/SKU-X", headers=bearer(OPERATOR))
        assert r.status_code == 404


async def test_retry_after_is_the_buckets_real_wait(
        gw_settings: Settings, redis: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """A key of one request every 4 s: after its one request, Retry-After says 4, then 3
    after a second has passed (the wait until a token, rounded up), not a fixed 1."""
    clock = Clock()
    monkeypatch.setattr(gateway.auth, "time", types.SimpleNamespace(monotonic=clock.monotonic))
    settings = msgspec.structs.replace(gw_settings, api_keys={
        **gw_settings.api_keys,
        "slow": ApiKey(secret=RATED, tenant="acme", rate_limit_per_s=0.25)})
    app = create_app(settings, redis)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        assert (await client.get("/v1/stock/SKU-X", headers=bearer(RATED))).status_code == 404
        r = await client.get("/v1/stock/SKU-X", headers=bearer(RATED))
        assert (r.status_code, r.headers["Retry-After"]) == (429, "4")
        clock.now += 1.0
        r = await client.get("/v1/stock/SKU-X", headers=bearer(RATED))
        assert (r.status_code, r.headers["Retry-After"]) == (429, "3")


# ---- 5. idempotency records live idempotency_ttl_s ------------------------------------------

THREE_DAYS_MS = 3 * 86_400 * 1000


@pytest.mark.parametrize("configured_s", [None, 5 * 86_400])
async def test_idempotency_records_live_the_configured_ttl(
        gw_settings: Settings, redis: Redis, configured_s: int | None) -> None:
    """An adjust's key, a released hold's record and a webhook delivery's marks expire after
    idempotency_ttl_s: 3 days when not configured (the documented default), else the value."""
    settings = gw_settings
    expected_ms = THREE_DAYS_MS
    if configured_s is not None:
        settings = msgspec.structs.replace(gw_settings, idempotency_ttl_s=configured_s)
        expected_ms = configured_s * 1000
    app = create_app(settings, redis)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        await post(client, "/v1/stock/SKU-T/adjust", {"delta": 5, "reason": "receipt",
                                                      "idempotency_key": "ttl-rcv"})
        await post(client, "/v1/holds", {"hold_id": "ttl-h", "lines": [{"sku": "SKU-T",
                                                                         "qty": 1}]},
                   expect=201)
        r = await client.delete("/v1/holds/ttl-h", headers=bearer(OPERATOR))
        assert r.status_code in (200, 204), r.text
        body, headers = shopify_order(9191, "SKU-T", 1)
        r = await client.post("/webhooks/shop", content=body, headers=headers)
        assert r.status_code == 200, r.text
    k = tenant_keys("acme")
    keys = {"adjust": k.idempotency("adjust", "ttl-rcv"), "hold": k.hold("ttl-h")}
    keys.update({f"webhook {n}": raw.decode() for n, raw in enumerate(
        await redis.keys(k.prefix + "webhook:*"))})
    assert len(keys) == 4, keys  # the delivery id and the body digest
    for name, key in keys.items():
        ttl = await redis.pttl(key)
        assert expected_ms - 60_000 <= ttl <= expected_ms, (name, key, ttl)


@pytest.mark.parametrize("configured_s", [None, 5 * 86_400])
async def test_fulfilment_restock_and_customer_records_live_the_configured_ttl(
        redis: Redis, tmp_path: Path, configured_s: int | None) -> None:
    """The other records keyed by an id a channel may send again: a fulfilment's, a
    refund's restock, and the per-customer hold counter (max_per_customer counts a
    customer's units for as long as a hold can be replayed)."""
    from stockgate.models import Line
    from stockgate.stock import StockEngine

    settings = Settings(data_dir=str(tmp_path))
    expected_ms = THREE_DAYS_MS
    if configured_s is not None:
        settings = msgspec.structs.replace(settings, idempotency_ttl_s=configured_s)
        expected_ms = configured_s * 1000
    engine = StockEngine(redis, settings)
    await engine.load_scripts()
    try:
        await engine.adjust("acme", "SKU-T", reason="receipt", idempotency_key="r", delta=9)
        await engine.order("acme", "shop:1", [Line("SKU-T", 3)], channel="shop")
        await engine.fulfil("acme", "shop:1", "ful-1", [Line("SKU-T", 2)], channel="shop")
        await engine.restock("acme", "ref-1", [Line("SKU-T", 1)], order_id="shop:1",
                             channel="shop")
        await engine.hold("acme", [Line("SKU-T", 1)], hold_id="c-h", customer="cust-9")
    finally:
        engine.scripts.close()
    k = tenant_keys("acme")
    keys = {"fulfil": k.idempotency("fulfil", "ful-1"),
            "restock": k.idempotency("restock", "ref-1"),
            "customer": k.prefix + "cust:cust-9:SKU-T"}
    for name, key in keys.items():
        ttl = await redis.pttl(key)
        assert expected_ms - 60_000 <= ttl <= expected_ms, (name, key, ttl)


async def test_an_alert_is_deduplicated_for_a_day(redis: Redis) -> None:
    """README: one alert per observed value a day. The dedupe marker lives a day: a second
    alert with the same marker is dropped within it."""
    from stockgate.alerts import list_alerts, raise_alert
    from stockgate.keys import worker_keys

    for _ in range(2):
        await raise_alert(redis, "acme", "drift", "shop shows 3", sku="SKU-D", channel="shop",
                          once="drift:shop:SKU-D:main:3")
    assert len(await list_alerts(redis, "acme")) == 1
    ttl = await redis.pttl(worker_keys("acme").alert_once("drift:shop:SKU-D:main:3"))
    assert 86_400_000 - 60_000 <= ttl <= 86_400_000, ttl
