"""Incoming stock over HTTP: purchase orders and transfers, receipts (partial, full, over,
repeated), cancel, listing, validation and scopes; pre-order selling against incoming units,
shown only to channels that opt in, and the alert naming orders a cancel leaves uncovered."""

from __future__ import annotations

import httpx
import msgspec
import pytest
from gateway_support import OPERATOR, OTHER_TENANT, STOREFRONT, bearer, cell, gateway_settings
from redis.asyncio import Redis

from loadtests.invariants import check as check_invariants
from loadtests.invariants import collect
from stockgate.keys import tenant_keys
from stockgate.models import (
    Event,
    EventSource,
    event_decoder,
)
from stockgate.settings import Settings
from stockgate.stock import StockEngine
from workers import preorders
from workers.propagation import channel_value, targets

pytest_plugins = ["gateway_fixtures"]  # app, client

OP = bearer(OPERATOR)
SF = bearer(STOREFRONT)
K = tenant_keys("acme")
PO = {"incoming_id": "po-1", "kind": "purchase_order", "reference": "PO 4711",
      "expected_date": "2027-01-15",
      "lines": [{"sku": "TEE", "qty": 10}, {"sku": "TEE", "qty": 4, "location": "east"}]}


@pytest.fixture
def gw_settings(settings: Settings) -> Settings:
    base = gateway_settings(settings)
    shop = msgspec.structs.replace(base.channels["shop"], show_preorders=True)
    return msgspec.structs.replace(base, channels={**base.channels, "shop": shop})


async def _stock(client: httpx.AsyncClient, sku: str = "TEE") -> dict:
    r = await client.get(f"/v1/stock/{sku}", headers=OP)
    assert r.status_code == 200, r.text
    return r.json()


async def test_create_shows_expected_units_without_changing_available(
        client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/incoming", headers=OP, json=PO)
    assert r.status_code == 201, r.text
    rec = r.json()
    assert rec["status"] == "open" and rec["receipts"] == 0
    assert rec["expected_date"] == "2027-01-15" and rec["expected_at_ms"] == 1_799_971_200_000
    assert rec["lines"] == [
        {"sku": "TEE", "location": "main", "qty": 10, "received": 0, "open": 10},
        {"sku": "TEE", "location": "east", "qty": 4, "received": 0, "open": 4}]
    again = await client.post("/v1/incoming", headers=OP, json=PO)
    assert again.status_code == 201 and again.json() == rec
    assert again.headers["Idempotent-Replayed"] == "true"
    r = await client.post("/v1/incoming", headers=OP, json={**PO, "reference": "other"})
    assert r.status_code == 409 and r.json()["error"] == "idempotency_conflict"
    view = await _stock(client)
    assert view["available"] == 0 and view["locations"]["main"]["on_hand"] == 0
    assert view["incoming"]["main"] == {"expected": 10, "next_expected_at_ms": 1_799_971_200_000,
                                        "preorderable": 0}
    assert view["incoming"]["east"]["expected"] == 4
    assert (await client.get("/v1/incoming/po-1", headers=OP)).json() == rec


async def test_receipts_partial_repeat_over_and_full(client: httpx.AsyncClient,
                                                     redis: Redis) -> None:
    assert (await client.post("/v1/incoming", headers=OP, json=PO)).status_code == 201
    receipt = {"receipt_id": "rc-1", "lines": [{"sku": "TEE", "qty": 6}]}
    r = await client.post("/v1/incoming/po-1/receipts", headers=OP, json=receipt)
    assert r.status_code == 200, r.text
    first = r.json()
    assert first == {"incoming_id": "po-1", "receipt_id": "rc-1", "status": "open",
                     "over_received": 0, "lines": [{"sku": "TEE", "location": "main",
                                                    "qty": 6, "covered": 6, "over": 0,
                                                    "closed": 0}]}
    events = await redis.xlen(K.outbox)
    again = await client.post("/v1/incoming/po-1/receipts", headers=OP, json=receipt)
    assert again.status_code == 200 and again.json() == first
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await redis.xlen(K.outbox) == events  # a repeat changes nothing
    r = await client.post("/v1/incoming/po-1/receipts", headers=OP, json={
        "receipt_id": "rc-1", "lines": [{"sku": "TEE", "qty": 7}]})
    assert r.status_code == 409 and r.json()["error"] == "idempotency_conflict"
    assert (await cell(client, "TEE"))["on_hand"] == 6
    # The rest of main and 5 at east where 4 were expected: the extra unit is taken in.
    r = await client.post("/v1/incoming/po-1/receipts", headers=OP, json={
        "receipt_id": "rc-2", "lines": [{"sku": "TEE", "qty": 4},
                                        {"sku": "TEE", "qty": 5, "location": "east"}]})
    assert r.status_code == 200
    assert r.json()["status"] == "received" and r.json()["over_received"] == 1
    view = await _stock(client)
    assert view["locations"]["main"]["on_hand"] == 10
    assert view["locations"]["east"]["on_hand"] == 5
    assert view["incoming"] == {}
    r = await client.post("/v1/incoming/po-1/receipts", headers=OP, json={
        "receipt_id": "rc-3", "lines": [{"sku": "TEE", "qty": 1}]})
    assert r.status_code == 409 and r.json()["error"] == "incoming_closed"
    r = await client.post("/v1/incoming/po-1/cancel", headers=OP)
    assert r.status_code == 409 and r.json()["status"] == "received"
    # The trail: one `receive` event per changed cell, and the ledger balances.
    report = check_invariants(await collect(redis, client._transport.app.state.engine,
                                            "acme"))
    assert report.ok, report.violations
    assert sum(s.received for s in report.ledger) == 15


async def test_short_close_and_cancel(client: httpx.AsyncClient) -> None:
    assert (await client.post("/v1/incoming", headers=OP, json=PO)).status_code == 201
    r = await client.post("/v1/incoming/po-1/receipts", headers=OP, json={
        "receipt_id": "rc-1", "lines": [{"sku": "TEE", "qty": 8}], "close": True})
    assert r.status_code == 200 and r.json()["status"] == "closed"
    assert [ln["closed"] for ln in r.json()["lines"]] == [2, 4]
    assert (await _stock(client))["incoming"] == {}
    assert (await client.post("/v1/incoming", headers=OP, json={
        **PO, "incoming_id": "tr-1", "kind": "transfer"})).status_code == 201
    r = await client.post("/v1/incoming/tr-1/cancel", headers=OP)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert all(ln["open"] == 0 for ln in r.json()["lines"])
    again = await client.post("/v1/incoming/tr-1/cancel", headers=OP)
    assert again.status_code == 200 and again.json() == r.json()
    assert (await cell(client, "TEE"))["on_hand"] == 8
    listed = (await client.get("/v1/incoming?status=cancelled", headers=OP)).json()
    assert [rec["incoming_id"] for rec in listed["incoming"]] == ["tr-1"]
    listed = (await client.get("/v1/incoming?sku=TEE", headers=OP)).json()
    assert [rec["incoming_id"] for rec in listed["incoming"]] == ["tr-1", "po-1"]
    assert (await client.get("/v1/incoming?sku=NOPE", headers=OP)).json() == {"incoming": []}


async def test_validation_and_not_found(client: httpx.AsyncClient) -> None:
    for bad in ({**PO, "expected_date": "soon"}, {**PO, "lines": []},
                {**PO, "kind": "gift"}, {**PO, "lines": [{"sku": "TEE", "qty": 1}] * 101},
                {**PO, "lines": [{"sku": "TEE", "qty": 0}]}, {k: PO[k] for k in ("lines",)}):
        r = await client.post("/v1/incoming", headers=OP, json=bad)
        assert r.status_code == 400, (bad, r.text)
    assert (await client.post("/v1/incoming", headers=OP, json=PO)).status_code == 201
    r = await client.post("/v1/incoming/po-1/receipts", headers=OP, json={
        "receipt_id": "rc-1", "lines": [{"sku": "OTHER", "qty": 1}]})
    assert r.status_code == 422 and r.json()["error"] == "invalid_request"
    r = await client.post("/v1/incoming/po-1/receipts", headers=OP, json={"receipt_id": "x"})
    assert r.status_code == 422  # no lines and nothing to close
    r = await client.post("/v1/incoming/nope/receipts", headers=OP, json={
        "receipt_id": "rc-1", "lines": [{"sku": "TEE", "qty": 1}]})
    assert r.status_code == 404 and r.json()["error"] == "incoming_not_found"
    assert (await client.get("/v1/incoming/nope", headers=OP)).status_code == 404
    assert (await client.post("/v1/incoming/nope/cancel", headers=OP)).status_code == 404
    assert (await client.get("/v1/incoming/bad%20id", headers=OP)).status_code == 400
    assert (await client.get("/v1/incoming?status=lost", headers=OP)).status_code == 400
    assert (await client.get("/v1/incoming?limit=0", headers=OP)).status_code == 400


async def test_scopes_and_tenants(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/incoming", headers=SF, json=PO)
    assert r.status_code == 403
    assert (await client.get("/v1/incoming", headers=SF)).status_code == 403
    assert (await client.post("/v1/incoming", json=PO)).status_code == 401
    assert (await client.post("/v1/incoming", headers=OP, json=PO)).status_code == 201
    other = bearer(OTHER_TENANT)
    assert (await client.get("/v1/incoming/po-1", headers=other)).status_code == 404
    assert (await client.get("/v1/incoming", headers=other)).json() == {"incoming": []}
    r = await client.post("/v1/incoming/po-1/cancel", headers=other)
    assert r.status_code == 404
    assert (await client.get("/v1/incoming/po-1", headers=OP)).json()["status"] == "open"


async def test_preorders_sell_against_incoming_and_alert_when_cancelled(
        client: httpx.AsyncClient, redis: Redis) -> None:
    r = await client.post("/v1/stock/TEE/adjust", headers=OP, json={
        "delta": 1, "reason": "count", "idempotency_key": "seed"})
    assert r.status_code == 200
    r = await client.put("/v1/stock/TEE/policy", headers=OP, json={"preorder_limit": 3})
    assert r.status_code == 200 and r.json()["preorder_limit"] == 3
    # Without incoming units a pre-order limit allows nothing beyond stock.
    r = await client.post("/v1/holds", headers=SF, json={"lines": [{"sku": "TEE", "qty": 2}]})
    assert r.status_code == 409
    assert (await client.post("/v1/incoming", headers=OP, json=PO)).status_code == 201
    view = await _stock(client)
    assert view["incoming"]["main"]["preorderable"] == 3
    assert view["available"] == 1
    # Only the channel that opted in shows the pre-order units.
    assert view["channels"]["shop"] == 4 and view["channels"]["woo"] == 1
    r = await client.post("/v1/holds", headers=SF, json={
        "hold_id": "pre-1", "lines": [{"sku": "TEE", "qty": 3}]})
    assert r.status_code == 201, r.text
    r = await client.post("/v1/holds/pre-1/commit", headers=SF, json={"order_id": "web-1"})
    assert r.status_code == 200
    r = await client.post("/v1/holds", headers=SF, json={"lines": [{"sku": "TEE", "qty": 2}]})
    assert r.status_code == 409  # 1 + 3 pre-order units taken: 1 more than the limit allows
    view = await _stock(client)
    assert view["locations"]["main"]["available"] == -2
    assert view["incoming"]["main"]["preorderable"] == 1
    assert view["channels"] == {**view["channels"], "shop": 1, "woo": 0}

    mark = (await redis.xrevrange(K.outbox, count=1))[0][0]
    r = await client.post("/v1/incoming/po-1/cancel", headers=OP)
    assert r.status_code == 200
    for entry_id, fields in await redis.xrange(K.outbox, min=b"(" + mark):
        ev = msgspec.structs.replace(event_decoder.decode(fields[b"e"]), id=entry_id.decode())
        await preorders.check_event(redis, "acme", ev)  # what the outbox worker does
    alerts = (await client.get("/v1/alerts?type=preorder_at_risk", headers=OP)).json()
    [alert] = alerts["alerts"]
    assert alert["sku"] == "TEE" and alert["location"] == "main"
    assert "2 promised units" in alert["detail"] and "order web-1" in alert["detail"]
    # A receipt that physically covers the promises clears them: no alert on a later close.
    assert (await client.post("/v1/incoming", headers=OP, json={
        **PO, "incoming_id": "po-2"})).status_code == 201
    r = await client.post("/v1/incoming/po-2/receipts", headers=OP, json={
        "receipt_id": "rc-1", "lines": [{"sku": "TEE", "qty": 2}], "close": True})
    assert r.status_code == 200
    assert not await redis.exists(K.promised("TEE", "main"))
    assert (await cell(client, "TEE"))["available"] == 0


async def test_channel_value_adds_preorder_units_only_when_opted_in(gw_settings: Settings,
                                                                    redis: Redis) -> None:
    """What the push worker sends a location-mapped channel: its cell's available, plus the
    pre-order room only for a channel with show_preorders (the view the engine builds from
    the stock and incoming hashes, as the push path reads them)."""
    shop, woo = gw_settings.channels["shop"], gw_settings.channels["woo"]
    woo = msgspec.structs.replace(woo, location_map={"1": "main"})
    settings = msgspec.structs.replace(gw_settings, channels={**gw_settings.channels,
                                                              "woo": woo})
    view = StockEngine(redis, settings).view(
        "acme", "TEE", {b"main|on_hand": b"2", b"preorder_limit": b"5"},
        incoming_raw={b"main|po-1": b"9|0"})
    assert view.incoming["main"].preorderable == 5
    assert channel_value(settings, "shop", shop, "main", view) == 7
    assert channel_value(settings, "woo", woo, "main", view) == 2


def test_incoming_events_push_only_to_opted_in_channels(gw_settings: Settings) -> None:
    """Opening or closing expected units moves no stock field, only the pre-order room that
    opted-in channels show: those channels, and only those, are pushed."""
    channels = {name: msgspec.structs.replace(ch, api_url="https://example.test")
                for name, ch in gw_settings.channels.items()}
    settings = msgspec.structs.replace(gw_settings, channels=channels)
    opened = Event(ts=0, tenant="acme", type="incoming", sku="TEE", location="main",
                   delta={"incoming": 10}, source=EventSource())
    assert targets(settings, opened) == ["shop|main|TEE"]
    assert targets(settings, msgspec.structs.replace(opened, delta={"incoming": 0})) == []
    received = msgspec.structs.replace(opened, type="receive",
                                       delta={"on_hand": 4, "incoming": -4})
    assert len(targets(settings, received)) == len(channels)  # available moved: everyone
