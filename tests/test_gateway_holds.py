"""Storefront holds over HTTP: reserve, replay, refuse, commit, release, and the last unit."""

from __future__ import annotations

import asyncio

import httpx
from gateway_support import (
    LIMITED,
    OPERATOR,
    OTHER_TENANT,
    STOREFRONT,
    bearer,
    cell,
    receive,
)

pytest_plugins = ["gateway_fixtures"]  # gw_settings, app, client

SF = bearer(STOREFRONT)


async def test_hold_reserves_and_replays(client: httpx.AsyncClient) -> None:
    await receive(client, "SKU-1", 5)
    body = {"hold_id": "cart-1", "lines": [{"sku": "SKU-1", "qty": 2}]}
    first = await client.post("/v1/holds", headers=SF, json=body)
    assert first.status_code == 201, first.text
    reply = first.json()
    assert reply["hold_id"] == "cart-1"
    assert reply["lines"] == [{"sku": "SKU-1", "location": "main", "qty": 2}]
    assert reply["expires_at"].endswith("Z")
    again = await client.post("/v1/holds", headers=SF, json=body)
    assert again.status_code == 201
    assert again.json()["expires_at_ms"] == reply["expires_at_ms"]
    assert (await cell(client, "SKU-1"))["reserved"] == 2


async def test_insufficient_stock_is_409_and_all_or_nothing(client: httpx.AsyncClient) -> None:
    await receive(client, "SKU-1", 5)
    await receive(client, "SKU-2", 1)
    r = await client.post("/v1/holds", headers=SF, json={
        "lines": [{"sku": "SKU-1", "qty": 2}, {"sku": "SKU-2", "qty": 3}]})
    assert r.status_code == 409
    assert r.json()["error"] == "insufficient_stock"
    assert r.json()["sku"] == "SKU-2" and r.json()["available"] == 1
    assert (await cell(client, "SKU-1"))["reserved"] == 0


async def test_unknown_sku_is_404(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/holds", headers=SF, json={"lines": [{"sku": "NOPE", "qty": 1}]})
    assert r.status_code == 404 and r.json()["error"] == "unknown_sku"


async def test_commit_and_release(client: httpx.AsyncClient) -> None:
    await receive(client, "SKU-1", 5)
    for hold_id in ("h-commit", "h-release"):
        r = await client.post("/v1/holds", headers=SF, json={
            "hold_id": hold_id, "lines": [{"sku": "SKU-1", "qty": 1}]})
        assert r.status_code == 201
    r = await client.post("/v1/holds/h-commit/commit", headers=SF, json={"order_id": "o-1"})
    assert r.status_code == 200 and r.json()["order_id"] == "o-1"
    r = await client.delete("/v1/holds/h-release", headers=SF)
    assert r.status_code == 200 and r.json()["status"] == "released"
    assert (await client.delete("/v1/holds/h-release", headers=SF)).status_code == 200
    assert (await client.delete("/v1/holds/h-commit", headers=SF)).status_code == 409
    state = await cell(client, "SKU-1")
    assert (state["reserved"], state["committed"], state["available"]) == (0, 1, 4)
    r = await client.post("/v1/holds/missing/commit", headers=SF, json={"order_id": "o-2"})
    assert r.status_code == 404 and r.json()["error"] == "hold_not_found"


async def test_auth_and_scopes(client: httpx.AsyncClient) -> None:
    body = {"lines": [{"sku": "SKU-1", "qty": 1}]}
    r = await client.post("/v1/holds", json=body)
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    r = await client.post("/v1/holds", headers=bearer("wrong-key"), json=body)
    assert r.status_code == 401 and "wrong-key" not in r.text
    r = await client.post("/v1/stock/SKU-1/adjust", headers=SF, json={
        "delta": 1, "reason": "x", "idempotency_key": "k"})
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    await receive(client, "SKU-1", 3)  # operator scope includes storefront:
    r = await client.post("/v1/holds", headers=bearer(OPERATOR), json=body)
    assert r.status_code == 201


async def test_tenants_are_isolated(client: httpx.AsyncClient) -> None:
    await receive(client, "SKU-1", 3)
    r = await client.get("/v1/stock/SKU-1", headers=bearer(OTHER_TENANT))
    assert r.status_code == 404
    r = await client.post("/v1/holds", headers=bearer(OTHER_TENANT),
                          json={"lines": [{"sku": "SKU-1", "qty": 1}]})
    assert r.status_code == 404
    assert (await cell(client, "SKU-1"))["reserved"] == 0


async def test_bad_requests_change_nothing(client: httpx.AsyncClient) -> None:
    await receive(client, "SKU-1", 3)
    r = await client.post("/v1/holds", headers={**SF, "Content-Type": "application/json"},
                          content=b'{"lines": [')
    assert r.status_code == 400 and r.json()["error"] == "malformed_request"
    r = await client.post("/v1/holds", headers=SF, json={"lines": [{"sku": "SKU-1", "qty": 0}]})
    assert r.status_code == 400 and "lines[0].qty" in r.json()["detail"]
    r = await client.post("/v1/holds", headers={**SF, "Content-Type": "text/plain"},
                          content=b'{"lines": [{"sku": "SKU-1", "qty": 1}]}')
    assert r.status_code == 415
    big = {"lines": [{"sku": "SKU-1", "qty": 1}] * 3000}
    r = await client.post("/v1/holds", headers=SF, json=big)
    assert r.status_code == 413 and r.json()["error"] == "body_too_large"

    async def chunks():  # no Content-Length: the limit holds while reading
        for _ in range(10):
            yield b" " * 8000

    r = await client.post("/v1/holds", headers={**SF, "Content-Type": "application/json"},
                          content=chunks())
    assert r.status_code == 413
    r = await client.post("/v1/stock/SKU-1/adjust", headers=bearer(OPERATOR), json={
        "delta": 1, "set_on_hand": 4, "reason": "x", "idempotency_key": "both"})
    assert r.status_code == 422 and r.json()["error"] == "invalid_request"
    assert (await cell(client, "SKU-1"))["reserved"] == 0
    assert (await cell(client, "SKU-1"))["on_hand"] == 3


async def test_rate_limit_answers_429_with_retry_after(client: httpx.AsyncClient) -> None:
    statuses = [(await client.get("/v1/stock/SKU-X", headers=bearer(LIMITED))).status_code
                for _ in range(4)]
    assert statuses[:2] == [404, 404] and statuses[-1] == 429
    r = await client.get("/v1/stock/SKU-X", headers=bearer(LIMITED))
    assert r.headers["Retry-After"].isdigit()


async def test_last_unit_over_http(client: httpx.AsyncClient) -> None:
    await receive(client, "DROP-1", 1)

    async def buy(i: int) -> int:
        r = await client.post("/v1/holds", headers=SF, json={
            "hold_id": f"shopper-{i}", "lines": [{"sku": "DROP-1", "qty": 1}]})
        return r.status_code

    statuses = await asyncio.gather(*(buy(i) for i in range(200)))
    assert statuses.count(201) == 1 and statuses.count(409) == 199
    state = await cell(client, "DROP-1")
    assert (state["reserved"], state["available"]) == (1, 0)
