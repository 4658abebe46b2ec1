"""eBay against its simulator over real HTTP, with the test Redis: the OAuth refresh (one per
channel, 401 -> one refresh and one retry, no secret in errors), bulkUpdatePriceQuantity in
batches of 25 with per-SKU results, 429 as back-pressure, and the getOrders poller (cursor
persisted and resumed, the overlap deduplicated, pages followed, a full order life mapped
through the same engine calls as the other channels, cancellation, replays, 429 honoured)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import msgspec
import pytest
from redis.asyncio import Redis
from starlette.datastructures import Headers
from workers_helpers import running_worker, settings_with, wait_for

from gateway.channels import KINDS
from gateway.errors import Unauthorized
from stockgate.alerts import list_alerts
from stockgate.ebay_settings import EbayConfig
from stockgate.settings import Channel, ConfigError, Settings, load_settings
from stockgate.stock import StockEngine
from workers.adapters import ADAPTERS, PushError, adapter_for
from workers.adapters.base import PushItem, channel_wide
from workers.adapters.ebay import RATE_LIMITED_DEFAULT_S, TOKENS, EbayAdapter
from workers.adapters.ebay import iso_ms as stamp
from workers.ebay_orders import EbayKeys, iso_ms, poll_all, poll_channel
from workers.simulators import SimulatorServer
from workers.simulators.ebay import EbayBook, book_of

T = "default"
CH = "ebay-main"


@pytest.fixture
def sim(sim_factory: Callable[[str], SimulatorServer]) -> SimulatorServer:
    TOKENS.forget()
    return sim_factory("ebay")


def ebay_channel(sim: SimulatorServer, **config: Any) -> Channel:
    book = book_of(sim.state)
    settings = {"client_id": book.client_id, "client_secret": book.client_secret,
                "refresh_token": book.refresh_token, "poll_interval_s": 0.5,
                "poll_overlap_s": 60.0, "initial_lookback_s": 3600.0, **config}
    return Channel(kind="ebay", secret="unused", api_url=sim.url,
                   ebay=EbayConfig(**settings))


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as c:
        yield c


def adapter_of(sim: SimulatorServer, client: httpx.AsyncClient, name: str = CH,
               **config: Any) -> EbayAdapter:
    adapter = adapter_for(name, ebay_channel(sim, **config), client)
    assert isinstance(adapter, EbayAdapter)
    return adapter


async def cell(engine: StockEngine, sku: str) -> dict[str, int]:
    view = await engine.stock(T, sku)
    c = view.locations["main"]
    return {"on_hand": c.on_hand, "committed": c.committed, "available": c.available}


async def stock(engine: StockEngine, **counts: int) -> None:
    for sku, n in counts.items():
        await engine.adjust(T, sku, reason="receipt", idempotency_key=f"r-{sku}", delta=n)


# ---- registries and settings -----------------------------------------------------------

def test_ebay_is_registered_and_configured_from_env(tmp_path: Any) -> None:
    assert ADAPTERS["ebay"] is EbayAdapter and "ebay" in KINDS
    path = tmp_path / "sg.toml"
    path.write_text('[channels.eb]\nkind = "ebay"\nsecret = "x"\napi_url = "https://api.ebay.com"\n'
                    '[channels.eb.ebay]\nclient_id = "env:EB_ID"\nclient_secret = "env:EB_SECRET"\n'
                    'refresh_token = "env:EB_REFRESH"\n')
    settings = load_settings(str(path), {"EB_ID": "id", "EB_SECRET": "sec", "EB_REFRESH": "r"})
    ebay = settings.channels["eb"].ebay
    assert ebay is not None and (ebay.client_id, ebay.client_secret) == ("id", "sec")
    assert ebay.poll_interval_s == 5.0 and ebay.scopes[0].endswith("/sell.inventory")
    path.write_text('[channels.eb]\nkind = "ebay"\nsecret = "x"\n')
    with pytest.raises(ConfigError, match=r"channels\.eb: kind ebay needs"):
        load_settings(str(path), {})


def test_webhooks_are_refused_whatever_they_carry() -> None:
    """eBay orders are polled: no body posted to /webhooks/<ebay channel> is authentic,
    signed or not, with the channel's secret or without (valid, flipped byte, wrong secret,
    missing header all end the same way)."""
    channel = Channel(kind="ebay", secret="s3cret", api_url="https://api.ebay.com")
    for headers in ({}, {"X-EBAY-SIGNATURE": "abc"}, {"X-Stockgate-Secret": "s3cret"}):
        with pytest.raises(Unauthorized):
            KINDS["ebay"].verify(channel, Headers(headers), b'{"orderId": "1"}', 0.0, 300)


# ---- OAuth ------------------------------------------------------------------------------

async def test_one_token_refresh_for_concurrent_pushes(sim: SimulatorServer,
                                                       client: httpx.AsyncClient) -> None:
    book = book_of(sim.state)
    sent: list[httpx.Request] = []

    async def keep(request: httpx.Request) -> None:
        sent.append(request)

    client.event_hooks["request"] = [keep]
    adapter = adapter_of(sim, client)
    results = await asyncio.gather(*(adapter.push_batch([PushItem(f"S{n}", "main", n)])
                                     for n in range(10)))
    assert all(r[0].status == "ok" for r in results)
    assert book.refreshes == 1
    [refresh] = [r for r in sent if r.url.path.endswith("/oauth2/token")]
    form = {k: v[0] for k, v in parse_qs(refresh.content.decode()).items()}
    assert form["grant_type"] == "refresh_token" and form["refresh_token"] == book.refresh_token
    assert set(form["scope"].split()) == set(book.consented)
    assert refresh.headers["authorization"].startswith("Basic ")
    # Another adapter of the same channel (a reconcile pass, the poller) shares the token.
    await adapter_of(sim, client).push_batch([PushItem("S1", "main", 3)])
    assert book.refreshes == 1


async def test_expired_token_is_refreshed_once_and_the_call_retried(
        sim: SimulatorServer, client: httpx.AsyncClient) -> None:
    book = book_of(sim.state)
    adapter = adapter_of(sim, client)
    assert (await adapter.push_batch([PushItem("A", "main", 1)]))[0].status == "ok"
    book.revoke_all()  # eBay answers 401 to the cached token
    assert (await adapter.push_batch([PushItem("A", "main", 2)]))[0].status == "ok"
    assert (book.refreshes, book.refused_tokens) == (2, 1)
    assert sim.state.count("A") == 2


async def test_a_refused_refresh_names_no_secret(sim: SimulatorServer,
                                                 client: httpx.AsyncClient) -> None:
    adapter = adapter_of(sim, client, refresh_token="stale-refresh-TOKEN",
                         client_secret="very-secret-VALUE")
    with pytest.raises(PushError) as caught:
        await adapter.push_batch([PushItem("A", "main", 1)])
    text = str(caught.value)
    assert "stale-refresh-TOKEN" not in text and "very-secret-VALUE" not in text
    assert "refused" in text


# ---- pushes -----------------------------------------------------------------------------

async def test_pushes_go_in_batches_of_25_with_the_documented_body(
        sim: SimulatorServer, client: httpx.AsyncClient) -> None:
    book = book_of(sim.state)
    sent: list[httpx.Request] = []

    async def keep(request: httpx.Request) -> None:
        sent.append(request)

    client.event_hooks["request"] = [keep]
    adapter = adapter_of(sim, client)
    items = [PushItem(f"SKU-{n}", "main", n) for n in range(60)]
    results = await adapter.push_batch(items)
    assert [r.status for r in results] == ["ok"] * 60
    assert [len(call) for call in book.bulk_calls] == [25, 25, 10]
    bulk = next(r for r in sent if r.url.path.endswith("/bulk_update_price_quantity"))
    # https://developer.ebay.com/api-docs/sell/inventory/types/slr:BulkPriceQuantity
    assert json.loads(bulk.content)["requests"][1] == {
        "sku": "SKU-1", "shipToLocationAvailability": {"quantity": 1}}
    assert bulk.headers["content-type"] == "application/json"
    assert bulk.headers["authorization"].startswith("Bearer ")
    assert sim.state.count("SKU-59") == 59


async def test_a_refused_sku_fails_alone(sim: SimulatorServer,
                                         client: httpx.AsyncClient) -> None:
    book = book_of(sim.state)
    book.known_skus = {"A", "C"}
    adapter = adapter_of(sim, client)
    results = await adapter.push_batch([PushItem("A", "main", 4), PushItem("B", "main", 5),
                                        PushItem("C", "main", 6), PushItem("X" * 51, "main", 1)])
    assert [r.status for r in results] == ["ok", "failed", "ok", "failed"]
    assert "404" in results[1].error and not results[1].retryable
    assert not results[3].retryable
    assert (sim.state.count("A"), sim.state.count("C"), sim.state.count("B")) == (4, 6, None)
    assert await adapter.get_available("A", "main") == 4
    assert await adapter.get_available("B", "main") is None


async def test_429_is_back_pressure_with_its_retry_after(sim: SimulatorServer,
                                                         client: httpx.AsyncClient) -> None:
    book = book_of(sim.state)
    adapter = adapter_of(sim, client)
    book.limit_next, book.retry_after = 1, "7"
    with pytest.raises(PushError) as caught:
        await adapter.push_batch([PushItem("A", "main", 1)])
    assert (caught.value.status, caught.value.retry_after) == (429, 7.0)
    assert channel_wide(caught.value) and "2001" in str(caught.value)
    book.limit_next, book.retry_after = 1, ""  # no Retry-After: a daily quota, not a blip
    with pytest.raises(PushError) as caught:
        await adapter.push_batch([PushItem("A", "main", 1)])
    assert caught.value.retry_after == RATE_LIMITED_DEFAULT_S
    assert (await adapter.push_batch([PushItem("A", "main", 2)]))[0].status == "ok"


# ---- orders in --------------------------------------------------------------------------

async def poll(redis: Redis, engine: StockEngine, adapter: EbayAdapter) -> Any:
    return await poll_channel(redis, engine, adapter, T, CH, force=True)


async def test_a_full_order_life(sim: SimulatorServer, client: httpx.AsyncClient,
                                 redis: Redis, engine: StockEngine) -> None:
    book = book_of(sim.state)
    adapter = adapter_of(sim, client)
    await stock(engine, A=10, B=10)
    book.add_order("1-001", [("A", 2), ("B", 1)])  # paid, not shipped
    result = await poll(redis, engine, adapter)
    assert (result.applied, result.skipped) == (1, 0)
    assert await cell(engine, "A") == {"on_hand": 10, "committed": 2, "available": 8}
    book.ship("1-001", [1])  # IN_PROGRESS: line 1 shipped
    await poll(redis, engine, adapter)
    assert await cell(engine, "A") == {"on_hand": 8, "committed": 0, "available": 8}
    assert await cell(engine, "B") == {"on_hand": 10, "committed": 1, "available": 9}
    book.ship("1-001")  # FULFILLED
    await poll(redis, engine, adapter)
    assert await cell(engine, "B") == {"on_hand": 9, "committed": 0, "available": 9}
    book.refund("1-001")  # money back: which units came back is not said
    await poll(redis, engine, adapter)
    assert await cell(engine, "A") == {"on_hand": 8, "committed": 0, "available": 8}
    alerts = await list_alerts(redis, T, type="refund_needs_review")
    assert [a.ref for a in alerts] == [f"{CH}:1-001"]
    # Nothing changed since: every pass reads it again (the overlap) and skips it.
    again = await poll(redis, engine, adapter)
    assert (again.applied, again.skipped) == (0, 1)
    assert await cell(engine, "A") == {"on_hand": 8, "committed": 0, "available": 8}


async def test_refunds_restock_when_the_channel_says_they_do(
        sim: SimulatorServer, client: httpx.AsyncClient, redis: Redis,
        engine: StockEngine) -> None:
    book = book_of(sim.state)
    channel = ebay_channel(sim)
    adapter = EbayAdapter(CH, msgspec.structs.replace(channel, restock_refunds=True), client)
    await stock(engine, A=5)
    book.add_order("2-001", [("A", 2)])
    await poll(redis, engine, adapter)
    book.ship("2-001")
    book.refund("2-001")  # shipped and refunded between two passes: shipped first
    await poll(redis, engine, adapter)
    assert await cell(engine, "A") == {"on_hand": 5, "committed": 0, "available": 5}


async def test_cancellation(sim: SimulatorServer, client: httpx.AsyncClient, redis: Redis,
                            engine: StockEngine) -> None:
    book = book_of(sim.state)
    adapter = adapter_of(sim, client)
    await stock(engine, A=5)
    book.add_order("3-001", [("A", 3)])
    await poll(redis, engine, adapter)
    assert (await cell(engine, "A"))["available"] == 2
    book.request_cancel("3-001")  # asked, not granted: the units stay sold
    await poll(redis, engine, adapter)
    assert (await cell(engine, "A"))["available"] == 2
    book.cancel("3-001")
    await poll(redis, engine, adapter)
    assert await cell(engine, "A") == {"on_hand": 5, "committed": 0, "available": 5}
    # Created and cancelled between two passes: recorded cancelled, nothing ever committed.
    book.add_order("3-002", [("A", 1)])
    book.cancel("3-002")
    await poll(redis, engine, adapter)
    assert (await cell(engine, "A"))["available"] == 5


async def test_cursor_is_persisted_and_resumed(sim: SimulatorServer, client: httpx.AsyncClient,
                                               redis: Redis, engine: StockEngine) -> None:
    book = book_of(sim.state)
    await stock(engine, A=5)
    order = book.add_order("4-001", [("A", 1)])
    await poll(redis, engine, adapter_of(sim, client))
    keys = EbayKeys(T, CH)
    assert int(await redis.get(keys.cursor)) == iso_ms(order["lastModifiedDate"])
    # A new worker (new adapter, new process) resumes from the cursor minus the overlap.
    TOKENS.forget()
    await poll(redis, engine, adapter_of(sim, client, poll_overlap_s=10.0))
    wanted = iso_ms(order["lastModifiedDate"]) - 10_000
    assert book.order_calls[-1]["filter"] == f"lastmodifieddate:[{stamp(wanted)}..]"
    assert book.order_calls[-1]["limit"] == "200"


async def test_overlap_and_replays_change_nothing(sim: SimulatorServer,
                                                  client: httpx.AsyncClient, redis: Redis,
                                                  engine: StockEngine) -> None:
    book = book_of(sim.state)
    adapter = adapter_of(sim, client)
    await stock(engine, A=5)
    book.add_order("5-001", [("A", 2)])
    await poll(redis, engine, adapter)
    before = await cell(engine, "A")
    # Even with the dedupe markers gone (expired, a restored backup), applying the same
    # order again goes through the same engine calls and ids: a replay, no change.
    await redis.delete(EbayKeys(T, CH).applied("5-001"))
    result = await poll(redis, engine, adapter)
    assert result.applied == 1 and await cell(engine, "A") == before


async def test_pages_are_followed(sim: SimulatorServer, client: httpx.AsyncClient,
                                  redis: Redis, engine: StockEngine) -> None:
    book = book_of(sim.state)
    adapter = adapter_of(sim, client)
    await stock(engine, P=1000)
    for n in range(205):
        book.add_order(f"6-{n:03d}", [("P", 1)])
    result = await poll(redis, engine, adapter)
    assert (result.read, result.applied) == (205, 205)
    assert [c["offset"] for c in book.order_calls] == ["0", "200"]
    assert (await cell(engine, "P"))["committed"] == 205


async def test_poller_honours_429_and_the_interval(sim: SimulatorServer,
                                                   client: httpx.AsyncClient, redis: Redis,
                                                   engine: StockEngine) -> None:
    book = book_of(sim.state)
    adapter = adapter_of(sim, client)
    await stock(engine, A=5)
    book.add_order("7-001", [("A", 1)])
    book.limit_next, book.retry_after = 1, "0.4"
    result = await poll(redis, engine, adapter)
    assert result.ran and result.retry_after_s == 0.4 and result.applied == 0
    assert await redis.get(EbayKeys(T, CH).cursor) is None
    calls = len(book.order_calls)
    assert not (await poll(redis, engine, adapter)).ran  # held, even when forced
    assert len(book.order_calls) == calls
    await asyncio.sleep(0.45)
    assert (await poll(redis, engine, adapter)).applied == 1
    # Unforced, a pass waits for poll_interval_s after the last one.
    assert not (await poll_channel(redis, engine, adapter, T, CH)).ran
    await asyncio.sleep(0.55)
    assert (await poll_channel(redis, engine, adapter, T, CH)).ran


async def test_poll_all_runs_every_ebay_channel(sim: SimulatorServer,
                                                client: httpx.AsyncClient, redis: Redis,
                                                engine: StockEngine) -> None:
    book: EbayBook = book_of(sim.state)
    await stock(engine, A=5)
    book.add_order("8-001", [("A", 1)])
    settings = Settings(channels={CH: ebay_channel(sim)})
    adapters = {CH: adapter_of(sim, client)}
    assert await poll_all(redis, engine, settings, adapters) == 1
    assert (await cell(engine, "A"))["committed"] == 1
    assert await poll_all(redis, engine, settings, adapters) == 0  # not due yet


# ---- the real worker ----------------------------------------------------------------------

async def test_a_running_worker_pushes_polls_and_pushes_back(
        sim: SimulatorServer, redis: Redis, redis_server: Any, tmp_path: Any) -> None:
    """`stockgate worker` as it runs: the per-second cron job polls eBay, the order it reads
    is committed, and the new count goes back to eBay through the bulk call."""
    book = book_of(sim.state)
    channel = msgspec.structs.replace(ebay_channel(sim), rate_limit_per_s=50.0)
    settings = settings_with(tmp_path, {CH: channel})
    engine = StockEngine(redis, settings)
    await engine.load_scripts()
    try:
        async with running_worker(settings, redis_server.url):
            started = time.monotonic()
            await stock(engine, A=5)
            await wait_for(lambda: _shows(sim, "A", 5), 10)
            book.add_order("9-001", [("A", 2)])
            took = await wait_for(lambda: _shows(sim, "A", 3), 10)
            assert (await cell(engine, "A"))["committed"] == 2
            book.cancel("9-001")
            await wait_for(lambda: _shows(sim, "A", 5), 10)
            print(f"\neBay order in -> count pushed back to eBay: {took:.2f}s "
                  "(poll_interval_s 0.5)")
            # The per-second cron starts a pass only when the interval has passed.
            elapsed = time.monotonic() - started
            assert 1 <= len(book.order_calls) <= elapsed / 0.5 + 2
    finally:
        engine.scripts.close()


async def _shows(sim: SimulatorServer, sku: str, count: int) -> bool:
    return sim.state.count(sku) == count


# ---- contract: the documented shapes (tests/fixtures/ebay/) ------------------------------

def fixture(name: str) -> Any:
    return json.loads((Path(__file__).parent / "fixtures" / "ebay" / name).read_text())


async def test_bulk_request_and_reply_follow_the_documented_shapes(
        client: httpx.AsyncClient) -> None:
    doc = fixture("bulk_update_price_quantity.json")
    template = doc["request_template"]["requests"][0]
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if request.url.path.endswith("/oauth2/token"):
            return httpx.Response(200, json={"access_token": "t", "expires_in": 7200})
        return httpx.Response(207, json=doc["reply"])

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as mocked:
        channel = Channel(kind="ebay", secret="x", api_url="https://api.ebay.com",
                          ebay=EbayConfig(client_id="i", client_secret="s", refresh_token="r"))
        adapter = EbayAdapter("contract", channel, mocked)
        results = await adapter.push_batch([PushItem("SKU-A", "main", 3),
                                            PushItem("SKU-B", "main", 4)])
    assert [r.status for r in results] == ["ok", "failed"]
    assert "400" in results[1].error
    request = json.loads(sent[-1].content)["requests"][0]
    assert set(request) <= set(template)
    assert set(request["shipToLocationAvailability"]) == set(
        template["shipToLocationAvailability"])
    assert str(sent[-1].url) == doc["endpoint"].split(" ")[1]
    assert str(sent[0].url) == "https://api.ebay.com/identity/v1/oauth2/token"


async def test_get_orders_query_follows_the_documented_filter(
        sim: SimulatorServer, client: httpx.AsyncClient) -> None:
    doc = fixture("get_orders.json")
    sent: list[httpx.Request] = []

    async def keep(request: httpx.Request) -> None:
        sent.append(request)

    client.event_hooks["request"] = [keep]
    adapter = adapter_of(sim, client)
    await adapter.orders_modified_since(iso_ms("2016-05-15T08:25:43.511Z"))
    query = sent[-1].url.query.decode()
    assert "%5B2016-05-15T08%3A25%3A43.511Z..%5D" in query  # [ ] percent-encoded
    assert parse_qs(query)["filter"] == [doc["filter_example"]]
    assert parse_qs(query)["limit"] == [str(doc["limit_max"])]
    # The simulator takes the documented example and refuses what eBay refuses.
    base = sim.url + "/sell/fulfillment/v1/order"
    auth = {"Authorization": f"Bearer {await adapter._token()}"}
    ok = await client.get(base, params={"filter": doc["filter_example"]}, headers=auth)
    assert ok.status_code == 200 and ok.json()["limit"] == 50
    too_many = await client.get(base, params={"limit": "201"}, headers=auth)
    assert too_many.json()["errors"][0]["errorId"] == 31100
    bad_date = await client.get(base, params={"filter": "lastmodifieddate:[yesterday..]"},
                                headers=auth)
    assert bad_date.json()["errors"][0]["errorId"] == 30810


async def test_ebay_sells_on_its_own_and_lines_map_by_listing_id(
        sim: SimulatorServer, client: httpx.AsyncClient, redis: Redis,
        engine: StockEngine) -> None:
    book = book_of(sim.state)
    adapter = adapter_of(sim, client)
    await stock(engine, A=5)
    assert (await adapter.push_batch([PushItem("A", "main", 5)]))[0].status == "ok"
    assert book.sell(sim.state, "10-001", "A", 2) and sim.state.count("A") == 3
    assert not book.sell(sim.state, "10-002", "A", 4)  # eBay shows 3: no such checkout
    # A line without a SKU is found by its listing id through variant_skus; one that maps
    # to nothing is skipped and alerted, the rest of the order still counts.
    order = book.add_order("10-003", [("", 1), ("", 1)])
    order["lineItems"][0]["legacyItemId"] = "L-1"
    order["lineItems"][1]["legacyItemId"] = "L-unknown"
    mapped = EbayAdapter(CH, msgspec.structs.replace(
        ebay_channel(sim), variant_skus={"L-1": "A"}), client)
    await poll(redis, engine, mapped)
    assert (await cell(engine, "A"))["committed"] == 3
    assert [a.ref for a in await list_alerts(redis, T, type="unmapped_line")] == [
        f"{CH}:10-003"]


async def test_a_pass_cut_short_keeps_the_cursor(sim: SimulatorServer,
                                                 client: httpx.AsyncClient, redis: Redis,
                                                 engine: StockEngine,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages come in creation order, not by lastModifiedDate: a pass that stops before the
    last page must not move the cursor past changes on the pages it did not read."""
    import workers.ebay_orders as poller
    monkeypatch.setattr(poller, "MAX_PAGES", 1)
    book = book_of(sim.state)
    adapter = adapter_of(sim, client)
    await stock(engine, P=1000)
    for n in range(205):
        book.add_order(f"11-{n:03d}", [("P", 1)])
    book.touch("11-000")  # the newest change sits on the first page
    first = await poll(redis, engine, adapter)
    assert first.applied == 200 and await redis.get(EbayKeys(T, CH).cursor) is None
    monkeypatch.setattr(poller, "MAX_PAGES", 50)
    second = await poll(redis, engine, adapter)
    assert (second.applied, second.skipped) == (5, 200)
    assert (await cell(engine, "P"))["committed"] == 205
    assert await redis.get(EbayKeys(T, CH).cursor) is not None


async def test_the_gateway_answers_401_to_any_ebay_webhook(redis: Redis, settings: Settings,
                                                           engine: StockEngine) -> None:
    from gateway.app import create_app
    channel = Channel(kind="ebay", secret="s3cret", api_url="https://api.ebay.com",
                      ebay=EbayConfig(client_id="i", client_secret="s", refresh_token="r"))
    app = create_app(msgspec.structs.replace(settings, channels={CH: channel}), redis)
    await stock(engine, A=5)
    body = json.dumps({"orderId": "1", "lineItems": [{"sku": "A", "quantity": 5}]})
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gw") as gw:
        for headers in ({}, {"X-EBAY-SIGNATURE": "sig"}, {"X-Stockgate-Secret": "s3cret"}):
            reply = await gw.post(f"/webhooks/{CH}", content=body,
                                  headers={"Content-Type": "application/json", **headers})
            assert reply.status_code == 401
    assert (await cell(engine, "A"))["available"] == 5


async def test_a_call_refused_whole_is_sent_one_sku_at_a_time(
        sim: SimulatorServer, client: httpx.AsyncClient) -> None:
    """eBay's method page allows one SKU per call where its type pages allow 25: a many-SKU
    call refused as a whole goes again one SKU per call, and nothing fails for it."""
    book = book_of(sim.state)
    sim.state.batch_items_limit = 1
    adapter = adapter_of(sim, client)
    results = await adapter.push_batch([PushItem(s, "main", 1) for s in ("A", "B", "C")])
    assert [r.status for r in results] == ["ok"] * 3
    assert book.bulk_calls == [["A"], ["B"], ["C"]]
    posts = sum(1 for method, _ in sim.state.requests if method == "POST")
    await adapter.push_batch([PushItem(s, "main", 2) for s in ("A", "B")])
    assert adapter.batch_limit == 1  # remembered: no refused call first any more
    assert sum(1 for method, _ in sim.state.requests if method == "POST") == posts + 2


async def test_server_errors_fail_the_call_and_orders_are_fetched_by_id(
        sim: SimulatorServer, client: httpx.AsyncClient) -> None:
    book = book_of(sim.state)
    adapter = adapter_of(sim, client)
    book.add_order("12-001", [("A", 2)])
    book.ship("12-001", [1])
    order = await adapter.fetch_order("12-001")
    assert (order.order_id, order.state, order.lines[0].sku) == ("12-001", "shipped", "A")
    sim.state.fail_ratio = 1.0
    with pytest.raises(PushError) as caught:
        await adapter.push_batch([PushItem("A", "main", 1)])
    assert caught.value.status == 500 and channel_wide(caught.value)


async def test_an_order_placed_before_the_return_window_changes_nothing(
        sim: SimulatorServer, client: httpx.AsyncClient, redis: Redis,
        engine: StockEngine) -> None:
    """Its record may be gone: applying its refund now would commit its units again."""
    book = book_of(sim.state)
    adapter = adapter_of(sim, client)
    await stock(engine, A=5)
    order = book.add_order("13-001", [("A", 2)])
    order["creationDate"] = "2020-01-01T00:00:00.000Z"
    book.refund("13-001")
    result = await poll(redis, engine, adapter)
    assert result.failed == 1 and (await cell(engine, "A"))["available"] == 5
    assert [a.ref for a in await list_alerts(redis, T, type="stale_delivery")] == [
        f"{CH}:13-001"]


async def test_a_token_refused_even_fresh_fails_the_call(sim: SimulatorServer,
                                                         client: httpx.AsyncClient) -> None:
    book = book_of(sim.state)
    adapter = adapter_of(sim, client)
    await adapter.push_batch([PushItem("A", "main", 1)])
    book.token_life_s = 0  # every token eBay issues is dead on arrival
    book.revoke_all()
    with pytest.raises(PushError) as caught:
        await adapter.push_batch([PushItem("A", "main", 2)])
    assert caught.value.status == 401 and book.refused_tokens == 2  # one retry, no loop
