"""Review 5: incoming stock, pre-orders and hold extension.

What is guaranteed: receipts and incoming records replay and conserve units; pre-order
selling is bounded by the incoming units at each location and by one preorder_limit per SKU
over all its locations; the preorder_at_risk alert counts each promise by the units its order
(or live hold) still has open at the cell and names orders until the shortfall is covered; a
hold never lives past hold_max_total_s, from its creation or through an extension."""

from __future__ import annotations

import asyncio
import datetime

import httpx
from gateway_support import OPERATOR, STOREFRONT, bearer, cell, receive
from redis.asyncio import Redis

from stockgate import incoming
from stockgate.keys import tenant_keys
from stockgate.models import CellState, IncomingRequest, Line
from stockgate.stock import StockEngine

pytest_plugins = ["gateway_fixtures"]  # app, client

T = "default"
OP = bearer(OPERATOR)
SF = bearer(STOREFRONT)
K = tenant_keys("acme")

PO = {"incoming_id": "po-1", "kind": "purchase_order", "reference": "PO 1",
      "expected_date": "2027-01-15", "lines": [{"sku": "TEE", "qty": 10}]}


async def stock(engine: StockEngine, **units: int) -> None:
    for sku, n in units.items():
        await engine.adjust(T, sku, reason="seed", idempotency_key=f"seed-{sku}", delta=n)


async def ecell(engine: StockEngine, sku: str, loc: str = "main") -> tuple[int, int, int, int]:
    c = (await engine.stock(T, sku)).locations[loc]
    return c.on_hand, c.reserved, c.committed, c.available


async def expect_tee(engine: StockEngine, limit: int = 10) -> None:
    """TEE: nothing on hand, 10 expected at main on po-1, pre-orders up to `limit`."""
    await stock(engine, TEE=0)
    await engine.set_policy(T, "TEE", preorder_limit=limit)
    await incoming.create(engine, T, IncomingRequest(
        incoming_id="po-1", expected_date=datetime.date(2027, 1, 15), reference="PO",
        lines=[Line("TEE", 10)]))


# ---- incoming stock and pre-orders -------------------------------------------------------

async def test_receipts_replay_refuse_conflicts_and_closed_records_and_conserve_units(
        client: httpx.AsyncClient, redis: Redis) -> None:
    await receive(client, "TEE", 3)
    assert (await client.post("/v1/incoming", headers=OP, json=PO)).status_code == 201
    other = {**PO, "lines": [{"sku": "TEE", "qty": 11}]}
    assert (await client.post("/v1/incoming", headers=OP, json=other)).status_code == 409
    url = "/v1/incoming/po-1/receipts"
    r1 = {"receipt_id": "r1", "lines": [{"sku": "TEE", "qty": 4}]}
    assert (await client.post(url, headers=OP, json=r1)).status_code == 200
    again = await client.post(url, headers=OP, json=r1)
    assert again.status_code == 200 and again.headers.get("Idempotent-Replayed") == "true"
    r = await client.post(url, headers=OP, json={**r1, "lines": [{"sku": "TEE", "qty": 5}]})
    assert r.status_code == 409
    r = await client.post(url, headers=OP, json={"receipt_id": "r0", "lines": []})
    assert r.status_code in (400, 422), r.text
    r = await client.post(url, headers=OP, json={"receipt_id": "r9",
                                                 "lines": [{"sku": "CAP", "qty": 1}]})
    assert r.status_code in (400, 422), r.text
    # Over-receipt: 8 arrive against 6 open.
    r = await client.post(url, headers=OP, json={"receipt_id": "r2",
                                                 "lines": [{"sku": "TEE", "qty": 8}]})
    assert r.status_code == 200 and r.json()["over_received"] == 2
    assert r.json()["status"] == "received"
    r = await client.post("/v1/incoming/po-1/cancel", headers=OP)
    assert r.status_code == 409
    r = await client.post(url, headers=OP, json={"receipt_id": "r3",
                                                 "lines": [{"sku": "TEE", "qty": 1}]})
    assert r.status_code == 409
    # The old receipt replays even after the record closed; nothing moves.
    assert (await client.post(url, headers=OP, json=r1)).status_code == 200
    c = await cell(client, "TEE")
    assert c["on_hand"] == 3 + 4 + 8
    view = (await client.get("/v1/stock/TEE", headers=OP)).json()
    assert view.get("incoming", {}) == {}
    # Receipts after cancel.
    po2 = {**PO, "incoming_id": "po-2"}
    assert (await client.post("/v1/incoming", headers=OP, json=po2)).status_code == 201
    assert (await client.post("/v1/incoming/po-2/cancel", headers=OP)).status_code == 200
    assert (await client.post("/v1/incoming/po-2/cancel", headers=OP)).status_code == 200
    r = await client.post("/v1/incoming/po-2/receipts", headers=OP, json=r1)
    assert r.status_code == 409
    assert (await cell(client, "TEE"))["on_hand"] == 15
    # A bundle on an incoming line is refused.
    r = await client.put("/v1/bundles/TEE-KIT", headers=OP,
                         json={"components": [{"sku": "TEE", "qty": 2}]})
    assert r.status_code == 200, r.text
    r = await client.post("/v1/incoming", headers=OP, json={
        **PO, "incoming_id": "po-3", "lines": [{"sku": "TEE-KIT", "qty": 1}]})
    assert r.status_code == 409
    r = await client.post("/v1/stock/TEE-KIT/adjust", headers=OP, json={
        "delta": 1, "reason": "x", "idempotency_key": "kit-adj"})
    assert r.status_code == 409


async def test_preorders_bounded_by_incoming_room_and_a_lowered_limit(
        client: httpx.AsyncClient, app) -> None:
    engine = app.state.engine
    await receive(client, "TEE", 2)
    r = await client.put("/v1/stock/TEE/policy", headers=OP, json={"preorder_limit": 5})
    assert r.status_code == 200
    assert (await client.post("/v1/incoming", headers=OP, json=PO)).status_code == 201
    r = await client.post("/v1/holds", headers=SF, json={
        "hold_id": "h1", "lines": [{"sku": "TEE", "qty": 6}]})
    assert r.status_code == 201
    order, _ = await engine.order("acme", "shop:1", [Line("TEE", 2)], channel="shop")
    assert [ln.status for ln in order.lines] == ["oversell_rejected"]
    order, _ = await engine.order("acme", "shop:2", [Line("TEE", 1)], channel="shop")
    assert [ln.status for ln in order.lines] == ["committed"]
    # limit lowered after promises: nothing more can be taken
    assert (await client.put("/v1/stock/TEE/policy", headers=OP,
                             json={"preorder_limit": 1})).status_code == 200
    r = await client.post("/v1/holds", headers=SF, json={"lines": [{"sku": "TEE", "qty": 1}]})
    assert r.status_code == 409
    # A pre-order at a location with no incoming.
    await receive(client, "TEE", 1, location="east")
    r = await client.post("/v1/holds", headers=SF, json={
        "location": "east", "lines": [{"sku": "TEE", "qty": 2}]})
    assert r.status_code == 409
    # a bundle of TEE cannot go further either
    r = await client.put("/v1/bundles/TEE-2", headers=OP,
                         json={"components": [{"sku": "TEE", "qty": 2}]})
    assert r.status_code == 200
    r = await client.post("/v1/holds", headers=SF, json={"lines": [{"sku": "TEE-2", "qty": 1}]})
    assert r.status_code == 409
    c = await cell(client, "TEE")
    assert c["available"] == 2 - 7


async def test_preorder_limit_is_one_budget_for_all_locations_of_a_sku(
        client: httpx.AsyncClient) -> None:
    """Pre-order selling goes 'up to a per-SKU limit' (issue 11): with incoming at two
    locations and preorder_limit 3, what one location pre-sold is spent for the other."""
    await receive(client, "TEE", 0 + 1)
    await receive(client, "TEE", 1, location="east")
    r = await client.put("/v1/stock/TEE/policy", headers=OP, json={"preorder_limit": 3})
    assert r.status_code == 200
    po = {**PO, "lines": [{"sku": "TEE", "qty": 10},
                          {"sku": "TEE", "qty": 10, "location": "east"}]}
    assert (await client.post("/v1/incoming", headers=OP, json=po)).status_code == 201
    r1 = await client.post("/v1/holds", headers=SF, json={"lines": [{"sku": "TEE", "qty": 4}]})
    r2 = await client.post("/v1/holds", headers=SF, json={
        "location": "east", "lines": [{"sku": "TEE", "qty": 4}]})
    assert r1.status_code == 201
    assert r2.status_code == 409, "6 units pre-sold against a per-SKU limit of 3"
    # What is left of the budget (3 - 3 = 0 at main's expense): east may still sell its
    # physical unit, not one more.
    r = await client.post("/v1/holds", headers=SF, json={
        "location": "east", "lines": [{"sku": "TEE", "qty": 1}]})
    assert r.status_code == 201
    r = await client.post("/v1/holds", headers=SF, json={
        "location": "east", "lines": [{"sku": "TEE", "qty": 1}]})
    assert r.status_code == 409
    view = (await client.get("/v1/stock/TEE", headers=OP)).json()
    assert {loc: at["preorderable"] for loc, at in view["incoming"].items()} == {
        "main": 0, "east": 0}


async def test_one_cart_spends_the_sku_preorder_budget_once_across_locations(
        engine: StockEngine) -> None:
    """A hold checks every line before it writes: two lines of one SKU at two locations
    must not each see the whole budget. An order's lines, judged one by one, neither."""
    await stock(engine, TEE=0)
    await engine.adjust(T, "TEE", reason="seed", idempotency_key="seed-east", delta=0,
                        location="east")
    await engine.set_policy(T, "TEE", preorder_limit=3)
    await incoming.create(engine, T, IncomingRequest(
        incoming_id="po-1", expected_date=datetime.date(2027, 1, 15), reference="PO",
        lines=[Line("TEE", 10), Line("TEE", 10, "east")]))
    from stockgate import errors
    try:
        await engine.hold(T, [Line("TEE", 2), Line("TEE", 2, "east")], hold_id="h1")
        raise AssertionError("4 units pre-sold against a per-SKU limit of 3")
    except errors.InsufficientStock:
        pass
    order, _ = await engine.order(T, "shop:1", [Line("TEE", 2), Line("TEE", 2, "east")],
                                  channel="shop")
    assert [ln.status for ln in order.lines] == ["committed", "oversell_rejected"]
    await engine.hold(T, [Line("TEE", 1, "east")], hold_id="h2")
    view = await engine.stock(T, "TEE")
    assert {loc: at.preorderable for loc, at in view.incoming.items()} == {
        "main": 0, "east": 0}


async def test_preorder_alert_names_live_promises_only(
        client: httpx.AsyncClient, redis: Redis, app) -> None:
    import msgspec

    from stockgate.models import event_decoder
    from workers import preorders

    engine = app.state.engine
    assert (await client.put("/v1/stock/TEE/policy", headers=OP,
                             json={"preorder_limit": 10})).status_code == 404 or True
    assert (await client.post("/v1/incoming", headers=OP, json=PO)).status_code == 201
    assert (await client.put("/v1/stock/TEE/policy", headers=OP,
                             json={"preorder_limit": 10})).status_code == 200
    await engine.order("acme", "shop:o1", [Line("TEE", 3)], channel="shop")
    for hid, qty in (("h-rel", 2), ("h-com", 2), ("h-live", 1)):
        r = await client.post("/v1/holds", headers=SF, json={
            "hold_id": hid, "lines": [{"sku": "TEE", "qty": qty}]})
        assert r.status_code == 201
    assert (await client.delete("/v1/holds/h-rel", headers=SF)).status_code == 200
    r = await client.post("/v1/holds/h-com/commit", headers=SF, json={"order_id": "web-9"})
    assert r.status_code == 200
    await engine.order("acme", "shop:o2", [Line("TEE", 1)], channel="shop")
    await engine.cancel("acme", "shop:o2", channel="shop")
    mark = (await redis.xrevrange(K.outbox, count=1))[0][0]
    assert (await client.post("/v1/incoming/po-1/cancel", headers=OP)).status_code == 200
    for entry_id, fields in await redis.xrange(K.outbox, min=b"(" + mark):
        ev = msgspec.structs.replace(event_decoder.decode(fields[b"e"]), id=entry_id.decode())
        await preorders.check_event(redis, "acme", ev)
    alerts = (await client.get("/v1/alerts?type=preorder_at_risk", headers=OP)).json()
    [alert] = alerts["alerts"]
    detail = alert["detail"]
    assert "6 promised units" in detail, detail
    assert "hold h-live" in detail and "order web-9" in detail and "order shop:o1" in detail
    assert "h-rel" not in detail and "shop:o2" not in detail


async def _hold(client: httpx.AsyncClient, hold_id: str, ttl_s: int = 60, qty: int = 2,
                sku: str = "SKU-1") -> httpx.Response:
    return await client.post("/v1/holds", headers=SF, json={
        "hold_id": hold_id, "ttl_s": ttl_s, "lines": [{"sku": sku, "qty": qty}]})


async def test_extend_never_revives_a_hold_and_caps_a_legacy_one(
        client: httpx.AsyncClient, redis: Redis) -> None:
    await receive(client, "SKU-1", 4)
    assert (await _hold(client, "h1")).status_code == 201
    # TTL passed, and the sweep ran (record expired): extend is 404, nothing re-reserved.
    await redis.hset(K.hold("h1"), "expires_at", 1)
    await redis.zadd(K.expiry, {"h1": 1})
    r = await client.post("/v1/holds", headers=SF, json={
        "hold_id": "h2", "lines": [{"sku": "SKU-1", "qty": 4}]})
    assert r.status_code == 201  # the due hold was expired first; its units resold
    r = await client.patch("/v1/holds/h1", headers=SF, json={"ttl_s": 600})
    assert r.status_code == 404 and r.json()["status"] == "expired"
    c = await cell(client, "SKU-1")
    assert (c["reserved"], c["available"]) == (4, 0)
    # The same hold id posted again replays the first answer; it does not re-reserve.
    r = await _hold(client, "h1")
    assert (await cell(client, "SKU-1"))["reserved"] == 4
    # A legacy hold without created_at: its creation is estimated from its expiry and the
    # longest TTL a hold could have, so the cap is never later than the true one.
    assert (await client.delete("/v1/holds/h2", headers=SF)).status_code == 200
    assert (await _hold(client, "h3", ttl_s=60)).status_code == 201
    await redis.hdel(K.hold("h3"), "created_at")
    r = await client.patch("/v1/holds/h3", headers=SF, json={"ttl_s": 86_400})
    assert r.status_code == 200 and r.json()["capped"] is True
    # Bundle hold extension.
    r = await client.put("/v1/bundles/KIT-1", headers=OP,
                         json={"components": [{"sku": "SKU-1", "qty": 1}]})
    assert r.status_code == 200
    assert (await _hold(client, "hk", sku="KIT-1", qty=1)).status_code == 201
    r = await client.patch("/v1/holds/hk", headers=SF, json={"ttl_s": 120})
    assert r.status_code == 200
    r = await client.patch("/v1/holds/hk", headers=SF, json={"ttl_s": "x"})
    assert r.status_code == 400
    r = await client.patch("/v1/holds/hk", headers=SF, content=b"not json")
    assert 400 <= r.status_code < 500


async def test_a_hold_never_lives_past_hold_max_total(client: httpx.AsyncClient) -> None:
    """hold_max_total_s (3600 here) is the longest a hold lives. POST /v1/holds clamps a
    longer ttl_s to it, as PATCH clamps an extension, and answers the real expiry."""
    await receive(client, "SKU-1", 4)
    r = await _hold(client, "h-long", ttl_s=86_400)
    assert r.status_code == 201
    made = datetime.datetime.fromisoformat(r.json()["expires_at"])
    now = datetime.datetime.now(datetime.UTC)
    assert made <= now + datetime.timedelta(seconds=3600), r.json()
    r = await client.patch("/v1/holds/h-long", headers=SF, json={"ttl_s": 60})
    body = r.json()
    assert body["expires_at"] <= body["max_expires_at"], body


async def test_a_legacy_hold_made_long_is_never_extended_past_its_true_cap(
        engine: StockEngine, redis: Redis) -> None:
    """A hold without created_at (made before it was recorded) with a ttl longer than the
    default: estimating its creation from the default TTL would put the cap hours past the
    true one. Its estimated cap is never later than creation + hold_max_total_s."""
    await stock(engine, A=4)
    await engine.hold(T, [Line("A", 1)], hold_id="old", ttl_s=60)
    k = tenant_keys(T)
    created = int(await redis.hget(k.hold("old"), "created_at"))
    # As an older version made it: ttl_s 20000 (allowed then), no created_at.
    await redis.hset(k.hold("old"), "expires_at", created + 20_000_000)
    await redis.zadd(k.expiry, {"old": created + 20_000_000})
    await redis.hdel(k.hold("old"), "created_at")
    ext = await engine.extend(T, "old", 86_400)
    true_cap = created + engine.settings.hold_max_total_s * 1000
    # Not extended at all: what it already had is past the true cap.
    assert created + 20_000_000 > true_cap
    assert ext.expires_at_ms == created + 20_000_000
    assert ext.capped and ext.max_expires_at_ms == ext.expires_at_ms


async def _run_preorder_alerts(redis: Redis, tenant: str, mark: bytes) -> list[str]:
    import msgspec

    from stockgate.alerts import list_alerts
    from stockgate.models import event_decoder
    from workers import preorders

    k = tenant_keys(tenant)
    for entry_id, fields in await redis.xrange(k.outbox, min=b"(" + mark):
        ev = msgspec.structs.replace(event_decoder.decode(fields[b"e"]), id=entry_id.decode())
        await preorders.check_event(redis, tenant, ev)
    return [a.detail for a in await list_alerts(redis, tenant, type="preorder_at_risk")]


async def test_preorder_alert_counts_open_units_and_names_every_order_at_risk(
        engine: StockEngine, redis: Redis) -> None:
    """o2 pre-orders 4, then o1 pre-orders 5 and is edited down to 1 (4 units given back).
    The PO is cancelled: 5 promised units are uncovered (o1's 1 and o2's 4). The alert
    counts o1 by its 1 open unit, not the 5 first promised, and so names o2 too."""
    await expect_tee(engine)
    await engine.order(T, "shop:o2", [Line("TEE", 4)], channel="shop", state_ms=1)
    await asyncio.sleep(0.01)  # o1's promise is the newer one
    await engine.order(T, "shop:o1", [Line("TEE", 5)], channel="shop", state_ms=1)
    await engine.order(T, "shop:o1", [Line("TEE", 1)], channel="shop", state_ms=2)
    assert await ecell(engine, "TEE") == (0, 0, 5, -5)
    mark = (await redis.xrevrange(tenant_keys(T).outbox, count=1))[0][0]
    await incoming.cancel(engine, T, "po-1")
    [detail] = await _run_preorder_alerts(redis, T, mark)
    assert "5 promised units" in detail
    assert "order shop:o2" in detail, detail


async def test_http_validation_of_incoming_holds_and_bundles_never_500(
        client: httpx.AsyncClient) -> None:
    await receive(client, "SKU-1", 5)
    await receive(client, "SKU-2", 5)
    cases = [
        ("PUT", "/v1/bundles/KIT", {"components": []}),
        ("PUT", "/v1/bundles/KIT", {"components": [{"sku": "SKU-1", "qty": 0}]}),
        ("PUT", "/v1/bundles/KIT", {"components": [{"sku": "SKU-1", "qty": 1},
                                                   {"sku": "SKU-1", "qty": 2}]}),
        ("PUT", "/v1/bundles/KIT", {"components": [{"sku": "KIT", "qty": 1}]}),
        ("PUT", "/v1/bundles/SKU-1", {"components": [{"sku": "SKU-2", "qty": 1}]}),
        ("PUT", "/v1/bundles/KIT", {"components": [{"sku": f"P{i}", "qty": 1}
                                                   for i in range(21)]}),
        ("PUT", "/v1/bundles/KIT", {"components": [{"sku": "SKU-1", "qty": -1}]}),
        ("PUT", "/v1/bundles/KIT", {"components": [{"sku": "SKU-1", "qty": 1.5}]}),
        ("DELETE", "/v1/bundles/NOPE", None),
        ("GET", "/v1/bundles/NOPE", None),
        ("POST", "/v1/incoming", {**PO, "expected_date": "2027-02-30"}),
        ("POST", "/v1/incoming", {**PO, "incoming_id": "old", "expected_date": "0001-01-01"}),
        ("POST", "/v1/incoming", {**PO, "incoming_id": "neg",
                                  "lines": [{"sku": "TEE", "qty": -5}]}),
        ("POST", "/v1/incoming", {**PO, "incoming_id": "bad id"}),
        ("POST", "/v1/incoming", {**PO, "incoming_id": "many",
                                  "lines": [{"sku": "TEE", "qty": 1}] * 101}),
        ("POST", "/v1/incoming/nope/receipts", {"receipt_id": "r", "lines": []}),
        ("POST", "/v1/incoming/nope/cancel", None),
        ("GET", "/v1/incoming?limit=0", None),
        ("GET", "/v1/incoming?status=weird", None),
        ("PATCH", "/v1/holds/nope", {"ttl_s": 86_401}),
        ("PATCH", "/v1/holds/nope", {"ttl_s": -1}),
        ("PATCH", "/v1/holds/nope", {}),
        ("PUT", "/v1/stock/SKU-1/policy", {"preorder_limit": -1}),
    ]
    for method, url, body in cases:
        r = await client.request(method, url, headers=OP, json=body)
        assert 400 <= r.status_code < 500, (method, url, body, r.status_code, r.text)
    # A bundle whose component has no cell at the asked location.
    r = await client.put("/v1/bundles/KIT", headers=OP,
                         json={"components": [{"sku": "SKU-1", "qty": 1},
                                              {"sku": "SKU-9", "qty": 1}]})
    assert r.status_code == 200
    r = await client.post("/v1/holds", headers=SF, json={"lines": [{"sku": "KIT", "qty": 1}]})
    assert 400 <= r.status_code < 500, r.text
    r = await client.get("/v1/stock/KIT", headers=SF)
    assert r.status_code == 200 and r.json()["available"] == 0
    assert (await cell(client, "SKU-1"))["reserved"] == 0


async def test_preorder_alert_counts_a_claimed_hold_by_its_orders_open_units(
        engine: StockEngine, redis: Redis) -> None:
    """A hold pre-orders 5 and is claimed by an order of 1 (4 units back to sale): the
    promise is the order's 1 open unit, and the older order's 4 are named as at risk."""
    await expect_tee(engine)
    await engine.order(T, "shop:old", [Line("TEE", 4)], channel="shop")
    await asyncio.sleep(0.01)
    await engine.hold(T, [Line("TEE", 5)], hold_id="h5")
    await engine.order(T, "shop:new", [Line("TEE", 1)], channel="shop", hold_id="h5")
    assert await ecell(engine, "TEE") == (0, 0, 5, -5)
    mark = (await redis.xrevrange(tenant_keys(T).outbox, count=1))[0][0]
    await incoming.cancel(engine, T, "po-1")
    [detail] = await _run_preorder_alerts(redis, T, mark)
    assert "5 promised units" in detail
    assert "order shop:new" in detail and "order shop:old" in detail, detail


async def test_preorder_alert_counts_a_partly_refunded_order_by_its_open_units(
        engine: StockEngine, redis: Redis) -> None:
    """A refund before shipping gives 4 of an order's 5 pre-ordered units back: the alert
    counts the 1 still open and names the older order as well."""
    await expect_tee(engine)
    await engine.order(T, "shop:old", [Line("TEE", 4)], channel="shop")
    await asyncio.sleep(0.01)
    await engine.order(T, "shop:new", [Line("TEE", 5)], channel="shop")
    await engine.restock(T, "r1", [Line("TEE", 4)], order_id="shop:new", take_from="open",
                         channel="shop")
    assert await ecell(engine, "TEE") == (0, 0, 5, -5)
    mark = (await redis.xrevrange(tenant_keys(T).outbox, count=1))[0][0]
    await incoming.cancel(engine, T, "po-1")
    [detail] = await _run_preorder_alerts(redis, T, mark)
    assert "order shop:new" in detail and "order shop:old" in detail, detail


async def test_preorder_alert_counts_one_order_behind_two_promises_once(
        engine: StockEngine, redis: Redis) -> None:
    """An order that claimed a pre-ordered hold and took more beyond it stands behind two
    promises: its open units are counted once, not once per promise, so the older order's
    units at risk are still named."""
    await expect_tee(engine)
    await engine.order(T, "shop:old", [Line("TEE", 2)], channel="shop", state_ms=1)
    await asyncio.sleep(0.01)
    await engine.hold(T, [Line("TEE", 3)], hold_id="h3")
    await asyncio.sleep(0.01)
    # Claims the hold's 3 and takes 3 more: two promises (hold:h3 3, order:shop:new 3).
    await engine.order(T, "shop:new", [Line("TEE", 6)], channel="shop", hold_id="h3",
                       state_ms=1)
    # Edited down to 3 open units: 3 at risk for it, 2 for the older order.
    await engine.order(T, "shop:new", [Line("TEE", 3)], channel="shop", state_ms=2)
    assert await ecell(engine, "TEE") == (0, 0, 5, -5)
    mark = (await redis.xrevrange(tenant_keys(T).outbox, count=1))[0][0]
    await incoming.cancel(engine, T, "po-1")
    [detail] = await _run_preorder_alerts(redis, T, mark)
    assert "5 promised units" in detail
    assert "order shop:new" in detail and "order shop:old" in detail, detail
    assert detail.count("shop:new") == 1


def test_a_channel_summing_locations_is_shown_the_preorder_budget_once() -> None:
    """Each location alone could pre-sell the SKU's whole budget of 3; a channel that shows
    both as one figure must be shown 3, not 6 (the scripts would refuse the other 3)."""
    cells = {"main": CellState(on_hand=0, available=0), "east": CellState(on_hand=0, available=0)}
    expected = incoming.view({b"main|po-1": b"10|0", b"east|po-1": b"10|0"}, cells, 3)
    assert {loc: at.preorderable for loc, at in expected.items()} == {"main": 3, "east": 3}
    assert sum(incoming.sellable(cells, expected, 3, ("main", "east")).values()) == 3
    assert incoming.sellable(cells, expected, 3, ("east",)) == {"main": 0, "east": 3}
    # One unit pre-sold at east already: 2 left of the budget, shown once.
    cells["east"] = CellState(on_hand=0, committed=1, available=-1)
    expected = incoming.view({b"main|po-1": b"10|0", b"east|po-1": b"10|0"}, cells, 3)
    assert sum(incoming.sellable(cells, expected, 3, ("main", "east")).values()) == 2
