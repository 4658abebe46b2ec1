"""Per-channel allocation rules over HTTP: PUT sets what one channel is shown, DELETE falls
back to the channel's default; bad rules, unknown channels, other tenants' channels and
storefront keys are refused; a change is one `allocation` event, a repeat none."""

from __future__ import annotations

import httpx
import pytest
from gateway_support import OPERATOR, OTHER_TENANT, STOREFRONT, bearer, receive
from redis.asyncio import Redis

from stockgate.keys import tenant_keys

pytest_plugins = ["gateway_fixtures"]  # gw_settings, app, client

OP = bearer(OPERATOR)
PATH = "/v1/stock/SKU-1/channels/{}"


async def view(client: httpx.AsyncClient) -> dict:
    r = await client.get("/v1/stock/SKU-1", headers=bearer(STOREFRONT))
    assert r.status_code == 200, r.text
    return r.json()


async def allocation_events(redis: Redis) -> list[bytes]:
    entries = await redis.xrange(tenant_keys("acme").outbox)
    return [f[b"e"] for _, f in entries if b'"type":"allocation"' in f[b"e"]]


async def test_a_rule_changes_one_channels_value_and_the_view_says_why(
        client: httpx.AsyncClient, redis: Redis) -> None:
    await receive(client, "SKU-1", 10)
    r = await client.put(PATH.format("woo"), headers=OP, json={"percent": 50, "max": 4})
    assert r.status_code == 200, r.text
    reply = r.json()
    assert reply["changed"] is True and reply["channel"] == "woo"
    assert reply["allocation"] == {"value": 4, "pool": 10, "source": "sku",
                                   "rule": {"percent": 50, "max": 4},
                                   "figures": {"main": {"pool": 10, "value": 4}}}
    shown = await view(client)
    assert shown["channels"] == {"shop": 10, "woo": 4, "bc": 10, "std": 10}
    assert shown["allocation"]["bc"]["source"] == "none"
    assert shown["allocation"]["bc"]["rule"] is None
    # The physical truth is untouched.
    assert shown["available"] == 10 and shown["locations"]["main"]["on_hand"] == 10
    events = await allocation_events(redis)
    assert len(events) == 1 and b'"channel":"woo"' in events[0]


async def test_the_same_rule_again_changes_nothing_and_emits_nothing(
        client: httpx.AsyncClient, redis: Redis) -> None:
    await receive(client, "SKU-1", 10)
    rule = {"hide_below": 5, "fixed": 3}
    first = await client.put(PATH.format("bc"), headers=OP, json=rule)
    again = await client.put(PATH.format("bc"), headers=OP,
                             json={"fixed": 3, "hide_below": 5})  # same rule, other order
    assert first.json()["changed"] is True and again.json()["changed"] is False
    assert len(await allocation_events(redis)) == 1
    assert (await view(client))["channels"]["bc"] == 3


async def test_delete_falls_back_to_the_channel_default(
        client: httpx.AsyncClient, redis: Redis) -> None:
    await receive(client, "SKU-1", 4)
    await client.put(PATH.format("std"), headers=OP, json={"hide_below": 5})
    assert (await view(client))["channels"]["std"] == 0  # fewer than 5 remain: not listed
    r = await client.delete(PATH.format("std"), headers=OP)
    assert r.status_code == 200 and r.json()["changed"] is True
    assert r.json()["allocation"]["source"] == "none"
    assert (await view(client))["channels"]["std"] == 4
    again = await client.delete(PATH.format("std"), headers=OP)
    assert again.status_code == 200 and again.json()["changed"] is False
    assert len(await allocation_events(redis)) == 2


@pytest.mark.parametrize("body", [
    {}, {"fixed": 3, "percent": 50}, {"fixed": 3, "max": 2}, {"percent": 101},
    {"percent": -1}, {"max": 1.5}, {"fixed": "3"}, {"share": 3}, [3], {"hide_below": None},
])
async def test_a_bad_rule_is_refused_and_changes_nothing(
        client: httpx.AsyncClient, redis: Redis, body: object) -> None:
    await receive(client, "SKU-1", 10)
    r = await client.put(PATH.format("woo"), headers=OP, json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "malformed_request" and r.json()["detail"]
    assert (await view(client))["channels"]["woo"] == 10
    assert await allocation_events(redis) == []


async def test_unknown_channel_sku_scope_and_other_tenant_are_refused(
        client: httpx.AsyncClient, redis: Redis) -> None:
    await receive(client, "SKU-1", 10)
    r = await client.put(PATH.format("nope"), headers=OP, json={"fixed": 1})
    assert r.status_code == 404 and r.json()["error"] == "unknown_channel"
    r = await client.delete(PATH.format("nope"), headers=OP)
    assert r.status_code == 404 and r.json()["error"] == "unknown_channel"
    r = await client.put("/v1/stock/NOPE/channels/woo", headers=OP, json={"fixed": 1})
    assert r.status_code == 404 and r.json()["error"] == "unknown_sku"
    r = await client.put(PATH.format("woo"), headers=bearer(STOREFRONT), json={"fixed": 1})
    assert r.status_code == 403
    r = await client.delete(PATH.format("woo"), headers=bearer(STOREFRONT))
    assert r.status_code == 403
    assert (await client.put(PATH.format("woo"), json={"fixed": 1})).status_code == 401
    # globex's operator key: acme's channel is no channel of globex (a 404, not a 403, so
    # another tenant's channel names are not disclosed), and acme's rules stay untouched.
    r = await client.put(PATH.format("woo"), headers=bearer(OTHER_TENANT), json={"fixed": 1})
    assert r.status_code == 404 and r.json()["error"] == "unknown_channel"
    assert (await view(client))["channels"]["woo"] == 10
    assert await allocation_events(redis) == []


async def test_a_channel_default_from_the_config_and_a_sku_rule_over_it(
        gw_settings, redis: Redis) -> None:
    import msgspec
    from gateway_fixtures import create_app

    from stockgate.allocation import AllocationRule

    channels = dict(gw_settings.channels)
    channels["woo"] = msgspec.structs.replace(channels["woo"],
                                              allocation=AllocationRule(percent=30))
    settings = msgspec.structs.replace(gw_settings, channels=channels)
    app = create_app(settings, redis)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        await receive(client, "SKU-1", 10)
        detail = (await view(client))["allocation"]["woo"]
        assert (detail["value"], detail["source"], detail["rule"]) == (
            3, "channel", {"percent": 30})
        await client.put(PATH.format("woo"), headers=OP, json={"max": 7})
        detail = (await view(client))["allocation"]["woo"]
        assert (detail["value"], detail["source"]) == (7, "sku")
        await client.delete(PATH.format("woo"), headers=OP)
        assert (await view(client))["allocation"]["woo"]["value"] == 3


async def test_the_audit_trail_can_be_filtered_on_allocation_events(
        client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/events?type=allocation", headers=OP)
    assert r.status_code == 200, r.text
    r = await client.get("/v1/events?type=allocations", headers=OP)
    assert r.status_code == 400
