"""The console's JSON and event-stream API on the real app and the test server: what the
overview, stock, channels, events and live views read."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest
from gateway_support import OPERATOR, OTHER_TENANT, STOREFRONT, bearer, receive
from redis.asyncio import Redis
from starlette.applications import Starlette

from gateway.app import create_app
from stockgate.deliveries import FailedDelivery, encode_failed, member_of
from stockgate.keys import tenant_keys, worker_keys
from stockgate.settings import Settings
from workers.outbox import decode_entries

pytest_plugins = ["gateway_fixtures"]


@pytest.fixture
async def web(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="https://console.test") as c:
        r = await c.post("/console/session", json={"key": OPERATOR})
        assert r.status_code == 200, r.text
        c.headers["X-CSRF-Token"] = r.json()["csrf"]
        yield c


async def audit_outbox(app: Starlette, redis: Redis, tenant: str = "acme") -> None:
    """What the workers' outbox consumer does for the trail: every entry into the store."""
    entries = await redis.xrange(tenant_keys(tenant).outbox)
    events, _ = decode_entries(entries)
    await app.state.audit.write(events)


async def overview(web: httpx.AsyncClient) -> dict[str, Any]:
    r = await web.get("/console/api/overview")
    assert r.status_code == 200, r.text
    return r.json()


async def test_the_overview_sums_the_catalogue_and_follows_a_change(
        web: httpx.AsyncClient, client: httpx.AsyncClient, app: Starlette) -> None:
    await receive(client, "SKU-1", 10)
    await receive(client, "SKU-2", 4)
    await receive(client, "SKU-3", 1)
    await client.put("/v1/stock/SKU-2/policy", headers=bearer(OPERATOR),
                     json={"low_stock_threshold": 5})
    r = await client.post("/v1/holds", headers=bearer(STOREFRONT),
                          json={"lines": [{"sku": "SKU-3", "qty": 1}]})
    assert r.status_code == 201
    r = await client.post("/v1/holds", headers=bearer(STOREFRONT),
                          json={"lines": [{"sku": "SKU-3", "qty": 1}]})
    assert r.status_code == 409
    await app.state.tally.flush(app.state.redis)
    first = await overview(web)
    assert (first["units_on_sale"], first["skus"], first["sold_out"], first["low_stock"]) == (
        14, 3, 1, 1)
    assert first["last_minute"]["holds"] == 1 and first["last_minute"]["refusals"] == 1
    assert first["last_minute"]["requests"] >= 6
    assert sum(first["rates"]["series"]["holds"]) == 1
    assert {c["channel"] for c in first["channels"]} == {"shop", "woo", "bc", "std"}
    await receive(client, "SKU-1", 5, key="more")
    await asyncio.sleep(1.05)  # tenants' consoles share one read per second
    assert (await overview(web))["units_on_sale"] == 19


async def test_stock_search_and_a_sku_with_its_channels_pushes_and_events(
        web: httpx.AsyncClient, client: httpx.AsyncClient, app: Starlette,
        redis: Redis) -> None:
    for sku in ("TEE-RED", "TEE-BLUE", "MUG"):
        await receive(client, sku, 3)
    found = (await web.get("/console/api/stock", params={"q": "tee"})).json()
    assert found["total"] == 2 and [s["sku"] for s in found["skus"]] == ["TEE-BLUE", "TEE-RED"]
    assert found["skus"][0]["available"] == 3
    assert (await web.get("/console/api/stock", params={"limit": "0"})).status_code == 400
    await redis.hset(tenant_keys("acme").pushed("woo"), "MUG|main", 2)
    await audit_outbox(app, redis)
    detail = (await web.get("/console/api/stock/MUG")).json()
    assert detail["view"]["available"] == 3 and detail["view"]["channels"]["woo"] == 3
    assert detail["pushed"]["woo"] == {"MUG|main": 2} and detail["pushed"]["shop"] == {}
    assert [e["type"] for e in detail["events"]] == ["adjust"]
    assert detail["events_error"] is None
    assert (await web.get("/console/api/stock/NOPE")).status_code == 404


async def test_an_orders_events_are_found_by_its_id_newest_first(
        web: httpx.AsyncClient, client: httpx.AsyncClient, app: Starlette,
        redis: Redis) -> None:
    await receive(client, "SKU-1", 10)
    for n, order in ((2, "ORDER-A"), (1, "ORDER-B")):
        hold = (await client.post("/v1/holds", headers=bearer(STOREFRONT), json={
            "lines": [{"sku": "SKU-1", "qty": n}]})).json()["hold_id"]
        r = await client.post(f"/v1/holds/{hold}/commit", headers=bearer(STOREFRONT),
                              json={"order_id": order})
        assert r.status_code == 200, r.text
    await audit_outbox(app, redis)
    page = (await web.get("/console/api/events", params={"ref": "ORDER-A"})).json()
    assert [(e["type"], e["source"]["ref"]) for e in page["events"]] == [
        ("commit", "ORDER-A")]
    everything = (await web.get("/console/api/events", params={"limit": 2})).json()
    # The latest first: B's commit and hold, then A's, then the receipt.
    assert [e["type"] for e in everything["events"]] == ["commit", "hold"]
    assert everything["events"][0]["source"]["ref"] == "ORDER-B"
    older = (await web.get("/console/api/events",
                           params={"limit": 2, "cursor": everything["next_cursor"]})).json()
    assert [e["type"] for e in older["events"]] == ["commit", "hold"]
    assert older["events"][0]["source"]["ref"] == "ORDER-A"
    last = (await web.get("/console/api/events",
                          params={"limit": 2, "cursor": older["next_cursor"]})).json()
    assert [e["type"] for e in last["events"]] == ["adjust"] and last["next_cursor"] is None
    assert (await web.get("/console/api/events", params={"type": "nope"})).status_code == 400


async def test_failed_deliveries_are_listed_and_retried(
        web: httpx.AsyncClient, redis: Redis) -> None:
    keys = worker_keys("acme")
    record = FailedDelivery(id="d1", tenant="acme", channel="woo", sku="SKU-1", location="main",
                            attempts=8, last_error="woo: HTTP 500", failed_at=1)
    await redis.hset(keys.failed, "d1", encode_failed(record))
    listed = (await web.get("/console/api/channels")).json()
    assert [d["id"] for d in listed["deliveries"]] == ["d1"]
    woo = next(c for c in listed["channels"] if c["channel"] == "woo")
    assert woo["state"] == "failing" and woo["failed"] == 1
    r = await web.post("/console/api/deliveries/d1/retry")
    assert r.status_code == 202 and r.json()["status"] == "queued"
    assert await redis.hget(keys.failed, "d1") is None
    assert await redis.zscore(keys.due("woo"), member_of("woo", "main", "SKU-1")) is not None
    assert (await web.post("/console/api/deliveries/d1/retry")).status_code == 404


async def read_ticks(app: Starlette, cookie: str, want: int, after: Any = None
                     ) -> list[dict[str, Any]]:
    """Drive GET /console/api/live as a server would, until `want` ticks came, then hang up
    (httpx's test transport would wait for the endless body)."""
    ticks: list[dict[str, Any]] = []
    done = asyncio.Event()
    scope = {"type": "http", "method": "GET", "path": "/console/api/live", "raw_path":
             b"/console/api/live", "query_string": b"", "root_path": "", "scheme": "https",
             "http_version": "1.1", "server": ("console.test", 443),
             "client": ("127.0.0.1", 1),
             "headers": [(b"host", b"console.test"), (b"cookie", cookie.encode())]}
    status: list[int] = []

    async def receive_() -> dict[str, Any]:
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])
        for block in message.get("body", b"").split(b"\n\n"):
            if block.startswith(b"event: tick"):
                ticks.append(json.loads(block.split(b"data: ", 1)[1]))
                if after is not None and len(ticks) == 1:
                    await after()
                if len(ticks) >= want:
                    done.set()

    task = asyncio.create_task(app(scope, receive_, send))
    waiter = asyncio.create_task(done.wait())
    await asyncio.wait({waiter, task}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
    done.set()  # hang up, if the stream did not end on its own
    await asyncio.wait_for(task, 5)
    waiter.cancel()
    assert status == [200], f"status {status}"
    return ticks


async def test_the_live_stream_counts_down_the_hot_skus(
        web: httpx.AsyncClient, client: httpx.AsyncClient, app: Starlette) -> None:
    await receive(client, "HOT", 20)
    cookie = f"sg_console={web.cookies['sg_console']}"

    async def sell() -> None:
        for _ in range(5):
            r = await client.post("/v1/holds", headers=bearer(STOREFRONT),
                                  json={"lines": [{"sku": "HOT", "qty": 2}]})
            assert r.status_code == 201

    ticks = await read_ticks(app, cookie, 3, after=sell)
    hot = [t["hot"] for t in ticks if t["hot"]]
    assert hot and hot[-1][0] == {"sku": "HOT", "changes": 5, "available": 10}
    assert sum(t["changes_per_s"] for t in ticks) == 5


async def test_one_live_stream_per_console(web: httpx.AsyncClient, app: Starlette) -> None:
    cookie = f"sg_console={web.cookies['sg_console']}"
    first = asyncio.create_task(read_ticks(app, cookie, 1000))
    await asyncio.sleep(1.5)
    second = await read_ticks(app, cookie, 1)  # a reload: the first stream ends
    assert len(second) == 1
    assert len(await asyncio.wait_for(first, 5)) < 10  # ended, long before 1000 ticks
    assert app.state.console_streams == {}


async def test_live_streams_are_bounded_per_process(
        gw_settings: Settings, redis: Redis) -> None:
    """At the process's cap another tenant's console is refused (nobody holds more than it
    would), and the same tenant's next console takes its own oldest one's place."""
    settings = msgspec.structs.replace(gw_settings, console_max_streams=1)
    application = create_app(settings, redis)
    async with application.router.lifespan_context(application):
        cookies = []
        for key in (OPERATOR, OTHER_TENANT, OPERATOR):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=application),
                                         base_url="https://console.test") as c:
                assert (await c.post("/console/session", json={"key": key})
                        ).status_code == 200
                cookies.append(f"sg_console={c.cookies['sg_console']}")
        first = asyncio.create_task(read_ticks(application, cookies[0], 1000))
        await asyncio.sleep(0.5)
        with pytest.raises(AssertionError, match="503"):
            await read_ticks(application, cookies[1], 1)  # globex: the process is full
        assert len(await read_ticks(application, cookies[2], 2)) == 2  # acme's newer console
        assert len(await asyncio.wait_for(first, 5)) < 10  # the older one ended for it
