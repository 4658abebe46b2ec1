"""PATCH /v1/holds/{id}: a live hold lives longer, up to hold_max_total_s from its creation;
a hold that is gone answers 404 and nothing is created or moved."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from gateway_support import OPERATOR, OTHER_TENANT, STOREFRONT, bearer, cell, receive
from redis.asyncio import Redis

from stockgate.keys import tenant_keys
from stockgate.settings import ConfigError, load_settings

pytest_plugins = ["gateway_fixtures"]  # gw_settings, app, client

SF = bearer(STOREFRONT)
K = tenant_keys("acme")


async def _hold(client: httpx.AsyncClient, hold_id: str, ttl_s: int = 60) -> dict:
    r = await client.post("/v1/holds", headers=SF, json={
        "hold_id": hold_id, "ttl_s": ttl_s, "lines": [{"sku": "SKU-1", "qty": 2}]})
    assert r.status_code == 201, r.text
    return r.json()


async def _events(redis: Redis, type_: str) -> list[bytes]:
    return [f[b"e"] for _, f in await redis.xrange(K.outbox) if f'"{type_}"'.encode() in f[b"e"]]


async def test_extend_moves_the_expiry_and_the_index(client: httpx.AsyncClient,
                                                     redis: Redis) -> None:
    await receive(client, "SKU-1", 5)
    first = await _hold(client, "h-1", ttl_s=60)
    r = await client.patch("/v1/holds/h-1", headers=SF, json={"ttl_s": 600})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["hold_id"] == "h-1" and body["capped"] is False
    assert body["expires_at_ms"] >= first["expires_at_ms"] + 539_000
    assert body["expires_at"].endswith("Z")
    assert await redis.zscore(K.expiry, "h-1") == body["expires_at_ms"]
    assert int(await redis.hget(K.hold("h-1"), "expires_at")) == body["expires_at_ms"]
    # The audit trace: one `extend` event for the hold's cell, changing no field.
    [raw] = await _events(redis, "extend")
    assert b'"delta":{}' in raw and b'"ref":"h-1"' in raw
    state = await cell(client, "SKU-1")
    assert (state["reserved"], state["available"]) == (2, 3)


async def test_beyond_the_cap_clamps_and_never_shortens(client: httpx.AsyncClient,
                                                        redis: Redis) -> None:
    await receive(client, "SKU-1", 5)
    await _hold(client, "h-1", ttl_s=60)
    created = int(await redis.hget(K.hold("h-1"), "created_at"))
    r = await client.patch("/v1/holds/h-1", headers=SF, json={"ttl_s": 86_400})
    assert r.status_code == 200
    body = r.json()
    cap = created + 3600 * 1000  # hold_max_total_s default
    assert body["capped"] is True and body["expires_at_ms"] == cap
    assert body["max_expires_at"] == body["expires_at"]
    # Asking for less than it has keeps the later expiry: an extension never shortens.
    r = await client.patch("/v1/holds/h-1", headers=SF, json={"ttl_s": 1})
    assert r.status_code == 200 and r.json()["expires_at_ms"] == cap
    assert r.json()["capped"] is False
    # Only the change was traced: the no-op extension wrote no event.
    assert len(await _events(redis, "extend")) == 1


async def test_a_repeat_is_harmless(client: httpx.AsyncClient, redis: Redis) -> None:
    """No idempotency key: the same call twice means "at least now + ttl_s", so the second
    lands on the same or a slightly later expiry; still one hold, the same reserved units."""
    await receive(client, "SKU-1", 5)
    await _hold(client, "h-1")
    one = (await client.patch("/v1/holds/h-1", headers=SF, json={"ttl_s": 300})).json()
    two = (await client.patch("/v1/holds/h-1", headers=SF, json={"ttl_s": 300})).json()
    assert one["expires_at_ms"] <= two["expires_at_ms"] <= one["expires_at_ms"] + 5_000
    assert await redis.zcard(K.expiry) == 1
    assert (await cell(client, "SKU-1"))["reserved"] == 2


async def test_default_ttl_is_the_configured_hold_ttl(client: httpx.AsyncClient) -> None:
    await receive(client, "SKU-1", 5)
    first = await _hold(client, "h-1", ttl_s=10)
    r = await client.patch("/v1/holds/h-1", headers=SF, json={})
    assert r.status_code == 200
    assert r.json()["expires_at_ms"] >= first["expires_at_ms"] + 880_000  # 900 s default


async def _gone(client: httpx.AsyncClient, redis: Redis, hold_id: str, status: str,
                reserved: int) -> None:
    r = await client.patch(f"/v1/holds/{hold_id}", headers=SF, json={"ttl_s": 300})
    assert r.status_code == 404, r.text
    assert r.json()["error"] == "hold_not_found" and r.json()["status"] == status
    assert (await cell(client, "SKU-1"))["reserved"] == reserved
    assert not await redis.zscore(K.expiry, hold_id)


async def test_a_hold_that_is_gone_is_404_and_never_recreated(client: httpx.AsyncClient,
                                                              redis: Redis) -> None:
    await receive(client, "SKU-1", 6)
    for hold_id in ("h-rel", "h-com", "h-exp"):
        await _hold(client, hold_id)
    assert (await client.delete("/v1/holds/h-rel", headers=SF)).status_code == 200
    r = await client.post("/v1/holds/h-com/commit", headers=SF, json={"order_id": "o-1"})
    assert r.status_code == 200
    # h-exp's TTL has passed but no sweep ran yet: the extension expires it (units back).
    await redis.hset(K.hold("h-exp"), "expires_at", 1)
    await redis.zadd(K.expiry, {"h-exp": 1})
    await _gone(client, redis, "h-exp", "expired", 0)
    assert (await redis.hget(K.hold("h-exp"), "status")) == b"expired"
    await _gone(client, redis, "h-rel", "released", 0)
    await _gone(client, redis, "h-com", "committed", 0)
    before = await redis.xlen(K.outbox)
    await _gone(client, redis, "never-made", "unknown", 0)
    assert not await redis.exists(K.hold("never-made"))
    assert await redis.xlen(K.outbox) == before  # nothing written for a refusal
    state = await cell(client, "SKU-1")
    assert (state["reserved"], state["committed"], state["available"]) == (0, 2, 4)


async def test_other_tenant_and_scopes(client: httpx.AsyncClient) -> None:
    await receive(client, "SKU-1", 5)
    await _hold(client, "h-1")
    r = await client.patch("/v1/holds/h-1", headers=bearer(OTHER_TENANT), json={"ttl_s": 60})
    assert r.status_code == 404 and r.json()["error"] == "hold_not_found"
    assert (await client.patch("/v1/holds/h-1", json={})).status_code == 401
    assert (await client.patch("/v1/holds/h-1", headers=bearer(OPERATOR),
                               json={"ttl_s": 60})).status_code == 200
    r = await client.patch("/v1/holds/h-1", headers=SF, json={"ttl_s": 0})
    assert r.status_code == 400
    r = await client.patch("/v1/holds/h-1", headers=SF, json={"ttl": 5})
    assert r.status_code == 400
    r = await client.patch("/v1/holds/bad%20id", headers=SF, json={})
    assert r.status_code == 400


def test_a_cap_below_the_ttl_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sg.toml"
    path.write_text("hold_ttl_s = 900\nhold_max_total_s = 600\n")
    with pytest.raises(ConfigError, match="hold_max_total_s"):
        load_settings(str(path), env={})
    path.write_text("hold_ttl_s = 900\n")
    assert load_settings(str(path), env={}).hold_max_total_s == 3600
