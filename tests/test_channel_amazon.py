"""Amazon: the push adapter against the simulator over real HTTP (Login with Amazon tokens
cached once per channel, one patchListingsItem per SKU in the documented body, INVALID items
failing alone, the usage plan's 429 as back-pressure, order fetches), and ORDER_CHANGE
notifications through the gateway (the EventBridge connection's secret header, replays, the
status mapping over an order's life). Payload shapes follow
schemas/notifications/OrderChangeNotification.json and the Listings Items and Orders models of
github.com/amzn/selling-partner-api-models (URLs in gateway/channels/amazon.py and
workers/adapters/amazon.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import msgspec
import pytest
from gateway_support import cell, gateway_settings, receive
from redis.asyncio import Redis
from workers_helpers import channels_match, running_worker, settings_with, settled, wait_for

from gateway.channels import amazon as amazon_gateway
from gateway.channels.base import OrderFulfilled, OrderPlaced
from stockgate.alerts import list_alerts
from stockgate.deliveries import failed_deliveries
from stockgate.embedded import EmbeddedRedis
from stockgate.models import Line
from stockgate.settings import AmazonConfig, Channel, Settings, load_settings
from stockgate.stock import StockEngine
from workers.adapters import PushError, adapter_for
from workers.adapters.amazon import REFRESH_MARGIN_S, AmazonAdapter, Submission
from workers.adapters.base import PushItem, channel_wide
from workers.queue import apply_channel_order
from workers.simulators import SimulatorServer
from workers.simulators.amazon import AmazonSim, amazon_of
from workers.simulators.amazon import sell as sim_sell

pytest_plugins = ["gateway_fixtures"]  # app, client (gw_settings is overridden below)

Sims = Callable[[str], SimulatorServer]
SECRET = "eventbridge-api-key-0123456789"
HEADER = "X-Stockgate-Amazon-Key"
SELLER = AmazonSim().seller_id
MARKETPLACE = AmazonSim().marketplace_id


# ---- adapter against the simulator ---------------------------------------------------------

def amazon_channel(url: str, sim: AmazonSim, **config: Any) -> Channel:
    return Channel(kind="amazon", secret=SECRET, secret_header=HEADER, api_url=url,
                   amazon=AmazonConfig(
                       seller_id=sim.seller_id, marketplace_id=sim.marketplace_id,
                       lwa_client_id=sim.client_id, lwa_client_secret=sim.client_secret,
                       lwa_refresh_token=config.pop("refresh_token", sim.refresh_token),
                       lwa_token_url=url + "/auth/o2/token"), **config)


@contextlib.asynccontextmanager
async def connected(sim: SimulatorServer, **config: Any
                    ) -> AsyncIterator[tuple[AmazonAdapter, list[httpx.Request]]]:
    sent: list[httpx.Request] = []

    async def keep(request: httpx.Request) -> None:
        sent.append(request)

    channel = amazon_channel(sim.url, amazon_of(sim.state), **config)
    async with httpx.AsyncClient(event_hooks={"request": [keep]}) as client:
        adapter = adapter_for("amz", channel, client)
        assert isinstance(adapter, AmazonAdapter)
        yield adapter, sent


def items(values: dict[str, int]) -> list[PushItem]:
    return [PushItem(sku, "main", value) for sku, value in values.items()]


def patches(sent: list[httpx.Request]) -> list[httpx.Request]:
    return [r for r in sent if r.method == "PATCH"]


async def test_push_is_one_documented_patch_per_sku_with_one_token(sim_factory: Sims) -> None:
    server = sim_factory("amazon")
    sim = amazon_of(server.state)
    async with connected(server) as (adapter, sent):
        assert adapter.batch_limit == 5  # the usage plan's burst: one batch never waits
        results = await adapter.push_batch(items({"SKU-1": 7, "SKU-2": 0, "SKU-3": 12}))
        assert [r.status for r in results] == ["ok"] * 3
        await adapter.push_batch(items({"SKU-1": 6}))
    assert (server.state.count("SKU-1", "main"), server.state.count("SKU-2", "main")) == (6, 0)
    # One LWA refresh for every call, form-encoded as documented.
    token_calls = [r for r in sent if r.url.path == "/auth/o2/token"]
    assert len(token_calls) == 1 and sim.refreshes == 1
    form = parse_qs(token_calls[0].content.decode())
    assert {k: v[0] for k, v in form.items()} == {
        "grant_type": "refresh_token", "refresh_token": sim.refresh_token,
        "client_id": sim.client_id, "client_secret": sim.client_secret}
    calls = patches(sent)
    assert len(calls) == 4
    first = calls[0]
    assert first.url.path == f"/listings/2021-08-01/items/{SELLER}/SKU-1"
    assert dict(first.url.params) == {"marketplaceIds": MARKETPLACE}
    assert first.headers["x-amz-access-token"].startswith("Atza|")
    # https://developer-docs.amazon.com/sp-api/docs/merge-a-listing: the merge op changes
    # the quantity and nothing else of fulfillment_availability.
    assert json.loads(first.content) == {"productType": "PRODUCT", "patches": [{
        "op": "merge", "path": "/attributes/fulfillment_availability",
        "value": [{"fulfillment_channel_code": "DEFAULT", "quantity": 7}]}]}


async def test_concurrent_pushes_share_one_refresh(sim_factory: Sims) -> None:
    server = sim_factory("amazon")
    sim = amazon_of(server.state)
    sim.rate, sim.burst = 100.0, 100
    async with connected(server) as (adapter, _):
        adapter.rate = 100.0
        batches = [items({f"SKU-{n}": n}) for n in range(8)]
        done = await asyncio.gather(*(adapter.push_batch(b) for b in batches))
    assert all(r.status == "ok" for rs in done for r in rs)
    assert sim.refreshes == adapter.refreshes == 1


async def test_an_expired_token_is_refreshed_once_and_the_call_sent_once_more(
        sim_factory: Sims) -> None:
    server = sim_factory("amazon")
    sim = amazon_of(server.state)
    async with connected(server) as (adapter, sent):
        await adapter.push_batch(items({"SKU-1": 3}))
        sim.expire_tokens()  # an hour went by on Amazon's side
        sent.clear()
        [result] = await adapter.push_batch(items({"SKU-1": 2}))
    assert result.status == "ok" and server.state.count("SKU-1", "main") == 2
    assert sim.refused_tokens == 1 and sim.refreshes == 2
    assert [(r.method, r.url.path.split("/")[1]) for r in sent] == [
        ("PATCH", "listings"), ("POST", "auth"), ("PATCH", "listings")]
    assert sent[0].headers["x-amz-access-token"] != sent[2].headers["x-amz-access-token"]


async def test_a_token_is_refreshed_before_it_expires(sim_factory: Sims) -> None:
    server = sim_factory("amazon")
    sim = amazon_of(server.state)
    async with connected(server) as (adapter, _):
        await adapter.push_batch(items({"SKU-1": 3}))
        # Within the margin of its expiry: refreshed before use, never sent to be refused.
        adapter._token_expires = time.monotonic() + REFRESH_MARGIN_S - 1
        await adapter.push_batch(items({"SKU-1": 4}))
    assert sim.refreshes == 2 and sim.refused_tokens == 0


async def test_a_refused_refresh_token_fails_the_call_and_names_no_secret(
        sim_factory: Sims) -> None:
    server = sim_factory("amazon")
    sim = amazon_of(server.state)
    async with connected(server, refresh_token="Atzr|revoked-by-seller") as (adapter, sent):
        with pytest.raises(PushError) as caught:
            await adapter.push_batch(items({"SKU-1": 3}))
    text = str(caught.value)
    assert "invalid_grant" in text
    for secret in ("Atzr|revoked-by-seller", sim.client_secret, sim.client_id):
        assert secret not in text
    assert not patches(sent) and server.state.count("SKU-1", "main") is None


async def test_an_invalid_submission_fails_alone(sim_factory: Sims) -> None:
    server = sim_factory("amazon")
    sim = amazon_of(server.state)
    sim.listed_skus = {"SKU-1", "SKU-3"}
    async with connected(server) as (adapter, _):
        results = await adapter.push_batch(items({"SKU-1": 1, "SKU-2": 2, "SKU-3": 3}))
    assert [r.status for r in results] == ["ok", "failed", "ok"]
    assert not results[1].retryable and "INVALID" in results[1].error
    assert "90000900" in results[1].error
    assert (server.state.count("SKU-1", "main"), server.state.count("SKU-3", "main")) == (1, 3)


async def test_a_sku_is_one_escaped_path_segment(sim_factory: Sims) -> None:
    server = sim_factory("amazon")
    async with connected(server) as (adapter, sent):
        [result] = await adapter.push_batch(items({"A/B ?#1": 4}))
        assert result.status == "ok"
        assert await adapter.get_available("A/B ?#1", "main") == 4
        assert await adapter.get_available("never-pushed", "main") is None
    raw = patches(sent)[0].url.raw_path.decode()
    assert raw.startswith(f"/listings/2021-08-01/items/{SELLER}/A%2FB%20%3F%231?")
    assert server.state.count("A/B ?#1", "main") == 4


async def test_the_usage_plan_429_is_back_pressure(sim_factory: Sims) -> None:
    server = sim_factory("amazon")
    sim = amazon_of(server.state)
    sim.rate, sim.burst = 0.5, 2  # another app or worker spent this seller's burst
    async with connected(server) as (adapter, sent):
        with pytest.raises(PushError) as caught:
            await adapter.push_batch(items({"SKU-1": 1, "SKU-2": 2, "SKU-3": 3}))
    exc = caught.value
    assert exc.status == 429 and channel_wide(exc)
    # No Retry-After from SP-API: one token at the rate x-amzn-RateLimit-Limit stated.
    assert exc.retry_after == pytest.approx(2.0)
    assert adapter.rate == 0.5
    assert len(patches(sent)) == 3 and server.state.limited == 1


async def test_the_adapter_paces_itself_to_the_stated_rate(sim_factory: Sims) -> None:
    server = sim_factory("amazon")
    sim = amazon_of(server.state)
    sim.rate, sim.burst = 4.0, 5
    async with connected(server) as (adapter, _):
        started = time.monotonic()
        for batch in range(3):
            results = await adapter.push_batch(items({f"S{batch}-{n}": n for n in range(5)}))
            assert all(r.status == "ok" for r in results)
        took = time.monotonic() - started
    # 15 calls: a burst of 5, then 10 at 4/s. The simulator never had to refuse one.
    assert server.state.limited == 0
    assert took >= 2.0


async def test_fetch_order_maps_the_orders_api(sim_factory: Sims) -> None:
    server = sim_factory("amazon")
    sim = amazon_of(server.state)
    item = {"ASIN": "B07N4M94X4", "OrderItemId": "68828574383266", "SellerSKU": "SKU-1",
            "QuantityOrdered": 3, "QuantityShipped": 2}
    sim.orders = {
        "902-3159896-1390916": {"OrderStatus": "PartiallyShipped", "OrderItems": [item]},
        "902-3159896-1390917": {"OrderStatus": "Unshipped",
                                "OrderItems": [{**item, "QuantityShipped": 0}]},
        "902-3159896-1390918": {"OrderStatus": "Shipped", "FulfillmentChannel": "AFN",
                                "OrderItems": [item]},
    }
    async with connected(server) as (adapter, sent):
        partial = await adapter.fetch_order("902-3159896-1390916")
        unshipped = await adapter.fetch_order("902-3159896-1390917")
        fba = await adapter.fetch_order("902-3159896-1390918")
        sent.clear()
        with pytest.raises(PushError):
            await adapter.fetch_order("../../listings")
        assert not sent  # an id that is not Amazon's never reaches a URL
    assert partial.state == "partially_shipped" and partial.lines[0].qty == 3
    assert [s.shipment_id for s in partial.shipments] == ["68828574383266-1",
                                                          "68828574383266-2"]
    assert unshipped.state == "open" and not unshipped.shipments
    assert fba.state == "incomplete"  # Amazon's units


# ---- ORDER_CHANGE through the gateway --------------------------------------------------------

@pytest.fixture
def gw_settings(settings: Settings) -> Settings:
    base = gateway_settings(settings)
    sim = AmazonSim()
    channels = {**base.channels, "amz": msgspec.structs.replace(
        amazon_channel("http://127.0.0.1:9", sim), tenant="acme")}
    return msgspec.structs.replace(base, channels=channels)


def notification(order_id: str, status: str, lines: list[tuple[str, int, int]] | None,
                 *, fulfillment: str = "MFN", seller: str = SELLER,
                 change_type: str = "OrderStatusChange") -> dict[str, Any]:
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    summary: dict[str, Any] = {
        "MarketplaceId": MARKETPLACE, "OrderStatus": status, "PurchaseDate": now,
        "DestinationPostalCode": "48110", "FulfillmentType": fulfillment,
        "OrderType": "StandardOrder", "EarliestShipDate": now, "LatestShipDate": now,
        "OrderPrograms": [], "ShippingPrograms": []}
    if lines is not None:
        summary["OrderItems"] = [
            {"OrderItemId": f"OIID{n}", "SellerSKU": sku, "SupplySourceId": None,
             "OrderItemStatus": "Shipped" if shipped >= qty else "Unshipped",
             "Quantity": qty, "QuantityShipped": shipped}
            for n, (sku, qty, shipped) in enumerate(lines)]
    return {"NotificationVersion": "1.0", "NotificationType": "ORDER_CHANGE",
            "PayloadVersion": "1.0", "EventTime": now,
            "Payload": {"OrderChangeNotification": {
                "NotificationLevel": "OrderLevel", "SellerId": seller,
                "AmazonOrderId": order_id, "OrderChangeType": change_type,
                "OrderChangeTrigger": {"TimeOfOrderChange": now,
                                       "ChangeReason": "Order status changed"},
                "Summary": summary}},
            "NotificationMetadata": {
                "ApplicationId": "amzn1.sellerapps.app.test",
                "SubscriptionId": str(uuid.uuid4()), "PublishTime": now,
                "NotificationId": str(uuid.uuid4())}}


def eventbridge(note: dict[str, Any]) -> dict[str, Any]:
    """As an EventBridge rule passes it on: the pipe's SQS record in `detail`."""
    return {"version": "0", "id": str(uuid.uuid4()), "detail-type": "Event from aws:sqs",
            "source": "Pipe stockgate-orders", "account": "123456789012",
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "region": "us-east-1", "resources": [],
            "detail": {"messageId": str(uuid.uuid4()), "receiptHandle": "AQEB...",
                       "body": json.dumps(note), "attributes": {},
                       "messageAttributes": {}, "md5OfBody": "0" * 32,
                       "eventSource": "aws:sqs", "eventSourceARN":
                       "arn:aws:sqs:us-east-1:123456789012:sp-api-orders",
                       "awsRegion": "us-east-1"}}


async def deliver(client: httpx.AsyncClient, payload: Any, secret: str | None = SECRET,
                  header: str = HEADER) -> httpx.Response:
    headers = {"Content-Type": "application/json; charset=utf-8"}
    if secret is not None:
        headers[header] = secret
    return await client.post("/webhooks/amz", content=json.dumps(payload).encode(),
                             headers=headers)


async def test_the_secret_header_is_checked(client: httpx.AsyncClient) -> None:
    await receive(client, "SKU-1", 5)
    note = eventbridge(notification("111-0000001-0000001", "Unshipped", [("SKU-1", 1, 0)]))
    flipped = SECRET[:-1] + chr(ord(SECRET[-1]) ^ 1)
    for secret, header in ((None, HEADER), ("not-the-key", HEADER), (flipped, HEADER),
                           (SECRET, "X-Other-Header"), (SECRET + "x", HEADER)):
        r = await deliver(client, note, secret, header)
        assert r.status_code == 401, (secret, header, r.text)
    assert (await cell(client, "SKU-1"))["committed"] == 0
    r = await deliver(client, note)
    assert r.status_code == 200 and r.json()["status"] == "applied", r.text
    assert (await cell(client, "SKU-1"))["committed"] == 1


async def test_replays_change_nothing(client: httpx.AsyncClient) -> None:
    await receive(client, "SKU-1", 5)
    note = notification("111-0000002-0000001", "Unshipped", [("SKU-1", 2, 0)])
    event = eventbridge(note)
    r = await deliver(client, event)
    assert r.status_code == 200 and r.json()["delivery_id"].startswith("notification-")
    again = await deliver(client, event)
    assert again.json()["status"] == "duplicate"
    # SQS delivered the message again: a new message id and event id, the same notification.
    redelivered = await deliver(client, eventbridge(note))
    assert redelivered.json()["status"] == "duplicate"
    # The notification as the pipe's one-record array, and bare: still the same one.
    assert (await deliver(client, [eventbridge(note)["detail"]])).json()["status"] == (
        "duplicate")
    assert (await deliver(client, note)).json()["status"] == "duplicate"
    state = await cell(client, "SKU-1")
    assert (state["committed"], state["available"]) == (2, 3)


async def test_notifications_without_ids_are_told_apart(client: httpx.AsyncClient) -> None:
    await receive(client, "SKU-1", 5)
    for n in (1, 2):
        note = notification(f"111-0000007-000000{n}", "Unshipped", [("SKU-1", 1, 0)])
        del note["NotificationMetadata"]
        r = await deliver(client, note)
        assert r.json()["status"] == "applied", r.text
        assert r.json()["delivery_id"].startswith("sha256-")
    assert (await deliver(client, note)).json()["status"] == "duplicate"
    assert (await cell(client, "SKU-1"))["committed"] == 2


async def test_an_order_through_its_life(client: httpx.AsyncClient) -> None:
    """Pending commits at once (no hold: a marketplace order names none), Unshipped is the
    same sale, PartiallyShipped ships the units it counts, Shipped the rest; a second order
    is cancelled and its units return. ORDER_CHANGE carries no returns (left to reconcile)."""
    await receive(client, "SKU-1", 10)
    await receive(client, "SKU-2", 10)
    order = "111-0000003-0000001"
    lines = [("SKU-1", 3, 0), ("SKU-2", 1, 0)]

    async def status(state: str, shipped: tuple[int, int] = (0, 0)) -> dict[str, Any]:
        ls = [(sku, qty, n) for (sku, qty, _), n in zip(lines, shipped, strict=True)]
        r = await deliver(client, eventbridge(notification(order, state, ls)))
        assert r.status_code == 200, r.text
        return r.json()

    pending = await status("Pending")
    assert pending["results"][0]["op"] == "order"  # never a hold commit
    assert ((await cell(client, "SKU-1"))["committed"],
            (await cell(client, "SKU-2"))["committed"]) == (3, 1)
    unshipped = await status("Unshipped")
    assert unshipped["results"][0]["outcome"] == "replayed"
    await status("PartiallyShipped", (2, 0))
    s1 = await cell(client, "SKU-1")
    assert (s1["on_hand"], s1["committed"], s1["available"]) == (8, 1, 7)
    await status("PartiallyShipped", (2, 0))  # the same count again: nothing more ships
    await status("PartiallyShipped", (3, 0))  # one more unit of the first item
    assert (await cell(client, "SKU-1"))["on_hand"] == 7
    await status("Shipped", (3, 1))
    s1, s2 = await cell(client, "SKU-1"), await cell(client, "SKU-2")
    assert (s1["on_hand"], s1["committed"], s2["on_hand"], s2["committed"]) == (7, 0, 9, 0)

    other = "111-0000003-0000002"
    r = await deliver(client, eventbridge(notification(other, "Pending", [("SKU-1", 2, 0)])))
    assert (await cell(client, "SKU-1"))["available"] == 5
    buyer_asks = notification(other, "Unshipped", [("SKU-1", 2, 0)],
                              change_type="BuyerRequestedChange")
    r = await deliver(client, eventbridge(buyer_asks))  # a request, not yet a cancel
    assert (await cell(client, "SKU-1"))["available"] == 5
    r = await deliver(client, eventbridge(notification(other, "Canceled", [("SKU-1", 2, 0)])))
    assert r.json()["results"][0]["op"] == "cancel"
    s1 = await cell(client, "SKU-1")
    assert (s1["on_hand"], s1["committed"], s1["available"]) == (7, 0, 7)


async def test_a_partial_shipment_delivered_after_the_shipment_changes_nothing(
        client: httpx.AsyncClient, redis: Redis) -> None:
    await receive(client, "SKU-1", 5)
    order = "111-0000008-0000001"
    shipped = eventbridge(notification(order, "Shipped", [("SKU-1", 3, 3)]))
    partial = eventbridge(notification(order, "PartiallyShipped", [("SKU-1", 3, 2)]))
    assert (await deliver(client, shipped)).status_code == 200
    late = (await deliver(client, partial)).json()
    assert [r["outcome"] for r in late["results"]] == ["replayed"] * 3, late
    s1 = await cell(client, "SKU-1")
    assert (s1["on_hand"], s1["committed"]) == (2, 0)
    assert [a for a in await list_alerts(redis, "acme")
            if a["type"] == "webhook_not_applied"] == []


async def test_a_cancel_before_its_order_commits_nothing(client: httpx.AsyncClient) -> None:
    await receive(client, "SKU-1", 4)
    order = "111-0000004-0000001"
    await deliver(client, eventbridge(notification(order, "Canceled", [("SKU-1", 1, 0)])))
    await deliver(client, eventbridge(notification(order, "Pending", [("SKU-1", 1, 0)])))
    assert (await cell(client, "SKU-1"))["available"] == 4


async def test_what_is_not_this_channels_to_count(client: httpx.AsyncClient) -> None:
    await receive(client, "SKU-1", 4)
    fba = notification("111-0000005-0000001", "Shipped", [("SKU-1", 1, 1)], fulfillment="AFN")
    other_seller = notification("111-0000005-0000002", "Unshipped", [("SKU-1", 1, 0)],
                                seller="A1OTHERSELLER")
    listing_note = {**notification("x", "Unshipped", []),
                    "NotificationType": "LISTINGS_ITEM_STATUS_CHANGE"}
    for note in (fba, other_seller, listing_note):
        r = await deliver(client, eventbridge(note))
        assert r.status_code == 200 and r.json()["status"] == "ignored", r.text
    assert (await cell(client, "SKU-1"))["available"] == 4


async def test_a_notification_without_items_queues_a_fetch(client: httpx.AsyncClient,
                                                           queue_redis: Redis) -> None:
    note = notification("111-0000006-0000001", "Unshipped", None)
    r = await deliver(client, eventbridge(note))
    assert r.status_code == 202 and r.json()["status"] == "queued", r.text
    delivery = r.json()["delivery_id"]
    assert await queue_redis.exists(f"arq:job:fetch:amz:{delivery}")


async def test_bodies_that_are_not_a_notification(client: httpx.AsyncClient) -> None:
    for payload in ({"id": "e1", "detail": {"messageId": "m", "body": "not json"}},
                    {"id": "e2", "detail-type": "x"}, [{"body": "{}"}, {"body": "{}"}]):
        r = await deliver(client, payload)
        assert r.status_code == 400, (payload, r.text)


def test_settings_read_amazon_credentials_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "stockgate.toml"
    path.write_text("""
[channels.amz]
kind = "amazon"
secret = "env:AMZ_EVENTBRIDGE_KEY"
secret_header = "X-Stockgate-Amazon-Key"
api_url = "https://sellingpartnerapi-na.amazon.com"
[channels.amz.amazon]
seller_id = "A3TH9S8BH6GOGM"
marketplace_id = "ATVPDKIKX0DER"
lwa_client_id = "env:LWA_CLIENT_ID"
lwa_client_secret = "env:LWA_CLIENT_SECRET"
lwa_refresh_token = "env:LWA_REFRESH_TOKEN"
""")
    env = {"AMZ_EVENTBRIDGE_KEY": "k", "LWA_CLIENT_ID": "id", "LWA_CLIENT_SECRET": "cs",
           "LWA_REFRESH_TOKEN": "Atzr|rt"}
    channel = load_settings(str(path), env).channels["amz"]
    assert channel.amazon is not None
    assert (channel.amazon.lwa_client_secret, channel.amazon.lwa_refresh_token) == (
        "cs", "Atzr|rt")
    assert channel.amazon.lwa_token_url == "https://api.amazon.com/auth/o2/token"
    with pytest.raises(Exception, match="LWA_REFRESH_TOKEN"):
        load_settings(str(path), {**env, "LWA_REFRESH_TOKEN": ""})


def test_an_amazon_channel_without_its_table_is_refused() -> None:
    with pytest.raises(ValueError, match="amazon"):
        adapter_for("amz", Channel(kind="amazon", secret="s"), None)  # type: ignore[arg-type]



# ---- through the propagation machinery -------------------------------------------------------

async def test_a_flash_sale_converges_through_the_usage_plan(
        redis: Redis, redis_server: EmbeddedRedis, tmp_path: Path, sim_factory: Sims) -> None:
    """A worker pushes 12 hot SKUs while another client of the same seller keeps the usage
    plan's bucket nearly empty: the 429s hold the channel (back-pressure), no delivery fails,
    parks or alerts, and Amazon ends up showing every count."""
    server = sim_factory("amazon")
    sim = amazon_of(server.state)
    sim.rate, sim.burst = 8.0, 2
    channel = msgspec.structs.replace(amazon_channel(server.url, sim), rate_limit_per_s=50.0)
    settings = settings_with(tmp_path, {"amz": channel})
    engine = StockEngine(redis, settings)
    await engine.load_scripts()
    skus = [f"HOT-{n}" for n in range(12)]
    for sku in skus:
        await engine.adjust("default", sku, reason="receipt", idempotency_key=f"r-{sku}",
                            delta=40)
    async with running_worker(settings, redis_server.url):
        for round_ in range(3):
            await asyncio.gather(*(engine.hold("default", [Line(sku, 1)],
                                               hold_id=f"h-{sku}-{round_}") for sku in skus))
        await wait_for(lambda: channels_match(engine, {"amz": server}, skus), 20.0)
        await wait_for(lambda: settled(redis), 10.0)
    assert all(server.state.count(sku, "main") == 37 for sku in skus)
    assert server.state.limited > 0  # the plan refused some calls ...
    assert await failed_deliveries(redis, "default") == []  # ... and nothing failed for it
    assert [a for a in await list_alerts(redis, "default")
            if a["type"] in ("delivery_failing", "channel_throttled")] == []
    assert sim.refreshes == 1  # one LWA token for the whole run


async def test_a_fetched_order_goes_through_the_same_rules(
        redis: Redis, tmp_path: Path, sim_factory: Sims) -> None:
    """The worker's path for a notification without items: getOrder and getOrderItems, then
    the lifecycle rules; its shipment ids are the gateway's, so a unit shipped by either is
    shipped once."""
    server = sim_factory("amazon")
    sim = amazon_of(server.state)
    settings = settings_with(tmp_path, {"amz": amazon_channel(server.url, sim)})
    engine = StockEngine(redis, settings)
    await engine.load_scripts()
    await engine.adjust("default", "SKU-F", reason="receipt", idempotency_key="r", delta=10)
    order_id = "902-3159896-1390999"
    item = {"OrderItemId": "OI1", "SellerSKU": "SKU-F", "QuantityOrdered": 3,
            "QuantityShipped": 0}
    async with httpx.AsyncClient() as client:
        adapter = adapter_for("amz", settings.channels["amz"], client)
        for status, shipped, on_hand, committed in (("Pending", 0, 10, 3),
                                                    ("Unshipped", 0, 10, 3),
                                                    ("PartiallyShipped", 1, 9, 2),
                                                    ("PartiallyShipped", 1, 9, 2),
                                                    ("Shipped", 3, 7, 0)):
            sim.orders[order_id] = {"OrderStatus": status,
                                    "OrderItems": [{**item, "QuantityShipped": shipped}]}
            await apply_channel_order(engine, adapter, "default", "amz", order_id)
            view = (await engine.stock("default", "SKU-F")).locations["main"]
            assert (view.on_hand, view.committed) == (on_hand, committed), status


# ---- contract: the documented shapes (tests/fixtures/amazon/) ---------------------------------

FIXTURES = Path(__file__).parent / "fixtures" / "amazon"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


async def test_the_push_body_is_the_documented_merge(sim_factory: Sims) -> None:
    doc = fixture("patch_fulfillment_availability.json")
    server = sim_factory("amazon")
    async with connected(server) as (adapter, sent):
        [result] = await adapter.push_batch(items({"DROP-1": 20}))
    assert result.status == "ok"
    assert json.loads(patches(sent)[0].content) == doc["request"]
    # Both documented answers decode as the adapter reads them.
    accepted = msgspec.json.decode(json.dumps(doc["accepted"]), type=Submission)
    invalid = msgspec.json.decode(json.dumps(doc["invalid"]), type=Submission)
    assert accepted.status == "ACCEPTED" and invalid.issues[0].code == "90000900"


@pytest.mark.parametrize("wrapping", ["record", "event", "array", "bare"])
def test_the_documented_notification_decodes_in_every_wrapping(wrapping: str) -> None:
    doc = fixture("order_change_notification.json")
    note = doc["notification"]
    record = {**doc["record"], "body": json.dumps(note)}
    body = {"record": record, "array": [record], "bare": note,
            "event": {"version": "0", "id": "evt-1", "detail-type": "Event from aws:sqs",
                      "source": "Pipe orders", "detail": record}}[wrapping]
    channel = amazon_channel("http://127.0.0.1:9", AmazonSim())
    delivery, ops = amazon_gateway.decode("amz", channel, amazon_gateway.Delivery("", ""),
                                          json.dumps(body).encode())
    assert delivery.id == "notification-" + note["NotificationMetadata"]["NotificationId"]
    assert delivery.topic == "ORDER_CHANGE"
    ref = "amz:113-4471235-7734621"
    placed, shipped = ops
    assert isinstance(placed, OrderPlaced) and placed.hold_id is None
    assert [(ln.sku, ln.qty) for ln in placed.lines] == [("DROP-1", 2), ("DROP-2", 1)]
    assert placed.placed_at_ms and placed.state_at_ms > placed.placed_at_ms
    assert isinstance(shipped, OrderFulfilled)
    assert shipped.fulfilment_id == f"{ref}:shipment-49151234567890-1"
    assert [(ln.sku, ln.qty) for ln in shipped.lines] == [("DROP-1", 1)]


async def test_the_simulator_sells_and_its_notification_lands(client: httpx.AsyncClient,
                                                              sim_factory: Sims) -> None:
    """What a demo needs of the marketplace: Amazon sells on its own (its count drops) and
    the pipe delivers the order's ORDER_CHANGE, which commits the units in Stockgate."""
    server = sim_factory("amazon")
    await receive(client, "SKU-1", 5)
    server.state.store("SKU-1", "main", 5)
    record = sim_sell(server.state, "SKU-1", 2)
    assert record is not None and server.state.count("SKU-1", "main") == 3
    assert sim_sell(server.state, "SKU-1", 4) is None  # Amazon shows only 3
    r = await deliver(client, record)
    assert r.json()["status"] == "applied", r.text
    assert (await cell(client, "SKU-1"))["committed"] == 2
