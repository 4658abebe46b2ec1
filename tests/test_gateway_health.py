"""Health, readiness, metrics, the OpenAPI document, and behaviour with Redis down."""

from __future__ import annotations

import httpx
import msgspec
from gateway_support import (
    OPERATOR,
    STOREFRONT,
    bearer,
    gateway_settings,
    receive,
)
from redis.asyncio import Redis

from gateway.app import create_app
from stockgate.embedded import free_port
from stockgate.settings import Settings

pytest_plugins = ["gateway_fixtures"]  # gw_settings, app, client


async def test_health_ready_and_openapi(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    r = await client.get("/readyz")
    assert r.status_code == 200 and r.json()["scripts"] is True
    doc = (await client.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.")
    assert {"/v1/holds", "/v1/stock/{sku}/adjust", "/v1/events"} <= set(doc["paths"])
    assert "HoldRequest" in doc["components"]["schemas"]
    r = await client.get("/no/such/route")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = await client.put("/v1/holds", headers=bearer(STOREFRONT))
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"


async def test_metrics_count_routes_holds_and_rejections(client: httpx.AsyncClient) -> None:
    await receive(client, "SKU-1", 1)
    sf = bearer(STOREFRONT)
    for i in range(2):
        await client.post("/v1/holds", headers=sf, json={
            "hold_id": f"m-{i}", "lines": [{"sku": "SKU-1", "qty": 1}]})
    text = (await client.get("/metrics")).text
    assert 'stockgate_http_requests_total{route="/v1/holds",method="POST",status="201"} 1' in text
    assert 'stockgate_http_requests_total{route="/v1/holds",method="POST",status="409"} 1' in text
    assert 'stockgate_http_request_duration_seconds_count{route="/v1/holds",method="POST"} 2' \
        in text
    assert 'stockgate_holds_total{result="created"} 1' in text
    assert 'stockgate_rejections_total{reason="insufficient_stock"} 1' in text
    assert 'stockgate_script_duration_seconds_count{op="hold"} 2' in text
    assert STOREFRONT not in text and OPERATOR not in text


async def test_redis_down_is_503_with_retry_after(settings: Settings) -> None:
    dead = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    application = create_app(gateway_settings(settings), dead)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            r = await c.post("/v1/holds", headers=bearer(STOREFRONT),
                             json={"lines": [{"sku": "SKU-1", "qty": 1}]})
            assert r.status_code == 503 and r.headers["Retry-After"] == "1"
            assert r.json()["error"] == "unavailable"
            r = await c.get("/readyz")
            assert r.status_code == 503 and r.json()["redis"] is False
            assert (await c.get("/healthz")).status_code == 200
    await dead.aclose()


def test_openapi_is_valid_json_without_a_server() -> None:
    from gateway.openapi import build

    assert msgspec.json.decode(msgspec.json.encode(build()))["info"]["title"] == "Stockgate"
