"""Stock reads and operator changes over HTTP: view, adjust, bulk, policy."""

from __future__ import annotations

import httpx
from gateway_support import (
    OPERATOR,
    STOREFRONT,
    bearer,
    cell,
    receive,
)

pytest_plugins = ["gateway_fixtures"]  # gw_settings, app, client

OP = bearer(OPERATOR)


async def test_view_shows_every_state_and_channels(client: httpx.AsyncClient) -> None:
    await receive(client, "SKU-1", 7)
    await receive(client, "SKU-1", 3, location="east")
    r = await client.get("/v1/stock/SKU-1", headers=bearer(STOREFRONT))
    assert r.status_code == 200
    view = r.json()
    assert set(view["locations"]) == {"main", "east"} and view["available"] == 10
    assert view["channels"]["shop"] == 7  # channels sell from the default location
    assert (await client.get("/v1/stock/NOPE", headers=OP)).status_code == 404


async def test_adjust_is_idempotent_and_conflicts(client: httpx.AsyncClient) -> None:
    body = {"delta": 4, "reason": "receipt", "idempotency_key": "po-1"}
    first = await client.post("/v1/stock/SKU-1/adjust", headers=OP, json=body)
    again = await client.post("/v1/stock/SKU-1/adjust", headers=OP, json=body)
    assert first.status_code == again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.content == first.content  # the first answer, byte for byte
    assert (await cell(client, "SKU-1"))["on_hand"] == 4
    r = await client.post("/v1/stock/SKU-1/adjust", headers=OP, json={**body, "delta": 9})
    assert r.status_code == 409 and r.json()["error"] == "idempotency_conflict"


async def test_bulk_reports_each_line(client: httpx.AsyncClient) -> None:
    lines = [{"sku": f"BULK-{i}", "set_on_hand": i, "reason": "count",
              "idempotency_key": f"count-{i}"} for i in range(600)]
    lines.append({"sku": "BULK-1", "delta": -50, "reason": "damage", "idempotency_key": "dmg"})
    r = await client.post("/v1/stock/bulk", headers=OP, json={"lines": lines})
    assert r.status_code == 200, r.text
    reply = r.json()
    assert (reply["applied"], reply["failed"]) == (600, 1)
    assert reply["results"][-1]["status"] == 422
    assert reply["results"][-1]["error"]["error"] == "invalid_request"
    assert (await cell(client, "BULK-599"))["on_hand"] == 599


async def test_policy(client: httpx.AsyncClient) -> None:
    await receive(client, "SKU-1", 10)
    r = await client.put("/v1/stock/SKU-1/policy", headers=OP, json={"safety": 2,
                                                                     "max_per_customer": 1})
    assert r.status_code == 200 and r.json()["safety"] == 2
    assert (await cell(client, "SKU-1"))["available"] == 8
    r = await client.put("/v1/stock/SKU-1/policy", headers=bearer(STOREFRONT), json={})
    assert r.status_code == 403
    r = await client.put("/v1/stock/NOPE/policy", headers=OP, json={"safety": 1})
    assert r.status_code == 404


async def test_sku_with_a_slash_is_addressable(client: httpx.AsyncClient) -> None:
    path = "/v1/stock/TEE%2FXL"  # clients percent-encode the slash of "TEE/XL"
    body = {"delta": 5, "reason": "receipt", "idempotency_key": "tee-xl"}
    assert (await client.post(f"{path}/adjust", headers=OP, json=body)).status_code == 200
    r = await client.put(f"{path}/policy", headers=OP, json={"safety": 1})
    assert r.status_code == 200 and r.json()["sku"] == "TEE/XL"
    view = (await client.get(path, headers=bearer(STOREFRONT))).json()
    assert view["sku"] == "TEE/XL" and view["available"] == 4
