"""BigCommerce order fetches (the hook names the order only by id) against the real arq worker
and the BigCommerce simulator: a failing fetch is retried with backoff until the channel
recovers, a fetch that keeps failing raises an alert after a bounded number of tries, and a
fetched order commits at the channel's own selling location."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import msgspec
import pytest
from redis.asyncio import Redis
from workers_helpers import FAST, channel_for, running_worker, settings_with, wait_for

from stockgate.alerts import list_alerts
from stockgate.embedded import EmbeddedRedis
from stockgate.jobs import enqueue_fetch_order
from stockgate.settings import Channel, Settings
from stockgate.stock import StockEngine
from workers.adapters import PushError, adapter_for
from workers.adapters.bigcommerce import BigCommerceAdapter
from workers.queue import FetchConfig, apply_channel_order, retry_delay
from workers.runtime import WorkerConfig
from workers.simulators import SimulatorServer


def fast(max_tries: int) -> WorkerConfig:
    return msgspec.structs.replace(FAST, fetch=FetchConfig(
        max_tries=max_tries, backoff_base_s=0.05, backoff_max_s=0.2, attempt_timeout_s=5.0))


@pytest.fixture
def bc_sim() -> Iterator[SimulatorServer]:
    sim = SimulatorServer("bigcommerce").start()
    yield sim
    sim.stop()


@pytest.fixture
def fetches(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Outcome of every order fetch the adapter makes ("ok" or the error's class), so a test
    counts tries without counting the stock pushes the same simulator also answers."""
    outcomes: list[str] = []
    real = BigCommerceAdapter.fetch_order

    async def spy(self: BigCommerceAdapter, order_id: str) -> object:
        try:
            order = await real(self, order_id)
        except Exception as exc:
            outcomes.append(type(exc).__name__)
            raise
        outcomes.append("ok")
        return order

    monkeypatch.setattr(BigCommerceAdapter, "fetch_order", spy)
    return outcomes


@pytest.fixture
def bc_settings(tmp_path: Path, bc_sim: SimulatorServer) -> Settings:
    return settings_with(tmp_path, {"bc": channel_for("bigcommerce", bc_sim)})


@pytest.fixture
async def hats(redis: Redis, bc_settings: Settings) -> AsyncIterator[StockEngine]:
    """An engine on the BigCommerce settings, with 5 HAT in stock."""
    engine = StockEngine(redis, bc_settings)
    await engine.load_scripts()
    await engine.adjust("default", "HAT", reason="receipt", idempotency_key="r", delta=5)
    yield engine
    engine.scripts.close()


async def _committed(engine: StockEngine, sku: str, location: str = "main") -> int:
    view = await engine.stock("default", sku)
    cell = view.locations.get(location)
    return cell.committed if cell else 0


async def test_failed_fetch_is_retried_until_the_channel_recovers(
        redis: Redis, redis_server: EmbeddedRedis, bc_settings: Settings, hats: StockEngine,
        bc_sim: SimulatorServer, fetches: list[str]) -> None:
    bc_sim.state.orders["201"] = {"status_id": 11, "products": [{"sku": "HAT", "quantity": 2}]}
    bc_sim.state.fail_ratio = 1.0  # BigCommerce's API is down when the hook arrives
    async with running_worker(bc_settings, redis_server.url, fast(max_tries=8)):
        await enqueue_fetch_order(redis, "default", "bc", "201", "hook-1")

        async def failed_twice() -> bool:
            return len(fetches) >= 2

        await wait_for(failed_twice, 10.0)
        assert await _committed(hats, "HAT") == 0
        bc_sim.state.fail_ratio = 0.0  # it recovers

        async def applied() -> bool:
            return await _committed(hats, "HAT") == 2

        await wait_for(applied, 10.0)
        await asyncio.sleep(0.5)  # a stray extra run would show up here
    # Failed tries, then the one that applied the order, then nothing.
    assert 2 <= len(fetches) < 8 and fetches[-1] == "ok", fetches
    assert set(fetches[:-1]) == {"PushError"}, fetches
    assert await _committed(hats, "HAT") == 2  # applied once
    assert (await hats.stock("default", "HAT")).locations["main"].on_hand == 5
    assert await list_alerts(redis, "default", type="order_fetch_failed") == []


async def test_fetch_that_keeps_failing_raises_one_alert_after_bounded_tries(
        redis: Redis, redis_server: EmbeddedRedis, bc_settings: Settings, hats: StockEngine,
        bc_sim: SimulatorServer, fetches: list[str]) -> None:
    bc_sim.state.orders["202"] = {"status_id": 11, "products": [{"sku": "HAT", "quantity": 1}]}
    bc_sim.state.fail_ratio = 1.0
    async with running_worker(bc_settings, redis_server.url, fast(max_tries=3)):
        await enqueue_fetch_order(redis, "default", "bc", "202", "hook-2")

        async def alerted() -> bool:
            return bool(await list_alerts(redis, "default", type="order_fetch_failed"))

        await wait_for(alerted, 10.0)
        await asyncio.sleep(0.8)  # no try after the last one
        assert fetches == ["PushError"] * 3
    [alert] = await list_alerts(redis, "default", type="order_fetch_failed")
    assert (alert.channel, alert.ref) == ("bc", "bc:202")
    assert "order 202" in alert.detail and "3 tries" in alert.detail
    assert await _committed(hats, "HAT") == 0


async def test_order_that_cannot_be_fetched_for_good_alerts_at_once(
        redis: Redis, redis_server: EmbeddedRedis, bc_settings: Settings,
        fetches: list[str]) -> None:
    """A 404 (no such order) is not worth retrying, but it must not vanish either."""
    async with running_worker(bc_settings, redis_server.url, fast(max_tries=5)):
        await enqueue_fetch_order(redis, "default", "bc", "404404", "hook-3")

        async def alerted() -> bool:
            return bool(await list_alerts(redis, "default", type="order_fetch_failed"))

        await wait_for(alerted, 10.0)
        await asyncio.sleep(0.5)
    assert fetches == ["PushError"]
    [alert] = await list_alerts(redis, "default", type="order_fetch_failed")
    assert "failed for good on try 1" in alert.detail and "404" in alert.detail


def test_retry_delay_backs_off_with_jitter_and_honours_retry_after() -> None:
    config = FetchConfig(backoff_base_s=1.0, backoff_max_s=8.0, retry_after_max_s=30.0)
    boom = PushError("down", status=503)
    for job_try, step in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)):
        delays = {retry_delay(config, job_try, boom) for _ in range(50)}
        assert all(step / 2 <= d <= step for d in delays), (job_try, delays)
        assert len(delays) > 1  # jittered
    limited = PushError("slow down", status=429, retry_after=5.0)
    assert 5.0 <= retry_delay(config, 1, limited) <= 5.0
    huge = PushError("slow down", status=429, retry_after=10_000.0)
    assert retry_delay(config, 1, huge) == 30.0


async def test_bigcommerce_order_commits_at_the_channels_location(
        redis: Redis, tmp_path: Path, bc_sim: SimulatorServer) -> None:
    channel = msgspec.structs.replace(channel_for("bigcommerce", bc_sim), locations=("eu",))
    settings = settings_with(tmp_path, {"bc": channel})
    engine = StockEngine(redis, settings)
    await engine.load_scripts()
    try:
        for location in ("main", "eu"):
            await engine.adjust("default", "HAT", location=location, reason="receipt",
                                idempotency_key=f"r-{location}", delta=5)
        bc_sim.state.orders["301"] = {"status_id": 11,
                                      "products": [{"sku": "HAT", "quantity": 2}]}
        async with httpx.AsyncClient() as client:
            adapter = adapter_for("bc", channel, client)
            assert await apply_channel_order(engine, adapter, "default", "bc", "301") == "ordered"
        view = await engine.stock("default", "HAT")
        assert (view.locations["eu"].committed, view.locations["main"].committed) == (2, 0)
        assert view.channels["bc"] == 3  # eu's 5, less the 2 sold
    finally:
        engine.scripts.close()


# ---- what a fetched order's status does to its units ----------------------------------------
#
# BigCommerce's documented status ids (Orders v2, "Order Status Descriptions"): 0 Incomplete,
# 2 Shipped, 3 Partially Shipped, 4 Refunded, 5 Cancelled, 6 Declined, 10 Completed,
# 13 Disputed, 14 Partially Refunded; the rest are stages of a placed, unshipped sale.

class FakeBigCommerce:
    """BigCommerce's v2 order endpoints as its API reference shapes them: the order
    (`status_id`), its products (`id` is the order_product_id) and its shipments (`items` of
    {order_product_id, product_id, quantity}; 204 No Content when there are none)."""

    def __init__(self) -> None:
        self.status: dict[str, int] = {}
        self.products: dict[str, list[dict[str, object]]] = {}
        self.shipments: dict[str, list[dict[str, object]]] = {}

    def add(self, order_id: str, status_id: int, *lines: tuple[str, int]) -> None:
        self.status[order_id] = status_id
        self.products[order_id] = [
            {"id": 100 + i, "order_id": int(order_id), "product_id": 77 + i, "variant_id": 0,
             "sku": sku, "quantity": qty, "quantity_shipped": 0}
            for i, (sku, qty) in enumerate(lines)]

    def ship(self, order_id: str, shipment_id: int, *items: tuple[str, int]) -> None:
        by_sku = {p["sku"]: p for p in self.products[order_id]}
        self.shipments.setdefault(order_id, []).append({
            "id": shipment_id, "order_id": int(order_id), "tracking_number": "1Z",
            "items": [{"order_product_id": by_sku[sku]["id"] if sku in by_sku else 999,
                       "product_id": by_sku[sku]["product_id"] if sku in by_sku else 0,
                       "quantity": qty} for sku, qty in items]})

    def handler(self, request: httpx.Request) -> httpx.Response:
        parts = request.url.path.split("/v2/orders/", 1)[1].split("/")
        order_id = parts[0]
        if order_id not in self.status:
            return httpx.Response(404, json=[{"status": 404, "message": "not found"}])
        if len(parts) == 1:
            return httpx.Response(200, json={"id": int(order_id),
                                             "status_id": self.status[order_id]})
        if parts[1] == "products":
            return httpx.Response(200, json=self.products[order_id])
        shipments = self.shipments.get(order_id)
        return httpx.Response(200, json=shipments) if shipments else httpx.Response(204)


@pytest.fixture
def bc_api() -> FakeBigCommerce:
    return FakeBigCommerce()


@pytest.fixture
async def bc_engine(redis: Redis, tmp_path: Path) -> AsyncIterator[StockEngine]:
    """An engine with 5 HAT and 5 CAP at `main`."""
    engine = StockEngine(redis, settings_with(tmp_path, {}))
    await engine.load_scripts()
    for sku in ("HAT", "CAP"):
        await engine.adjust("default", sku, reason="receipt", idempotency_key=f"r-{sku}",
                            delta=5)
    yield engine
    engine.scripts.close()


async def _apply(engine: StockEngine, api: FakeBigCommerce, order_id: str,
                 restock_refunds: bool = False) -> str:
    channel = Channel(kind="bigcommerce", secret="s3cret", api_url="https://bc.test/stores/x",
                      access_token="token")
    if restock_refunds:
        channel = msgspec.structs.replace(channel, restock_refunds=True)
    async with httpx.AsyncClient(transport=httpx.MockTransport(api.handler)) as client:
        adapter = adapter_for("bc", channel, client)
        return await apply_channel_order(engine, adapter, "default", "bc", order_id)


async def _cell(engine: StockEngine, sku: str) -> tuple[int, int]:
    """(on_hand, committed) at main."""
    found = (await engine.stock("default", sku)).locations["main"]
    return found.on_hand, found.committed


@pytest.mark.parametrize("status_id", [2, 10], ids=["shipped", "completed"])
@pytest.mark.parametrize("seen_before", [True, False], ids=["placed-first", "unseen"])
async def test_bigcommerce_shipped_and_completed_fulfil_every_open_unit(
        bc_engine: StockEngine, bc_api: FakeBigCommerce, status_id: int,
        seen_before: bool) -> None:
    bc_api.add("401", 11, ("HAT", 2), ("CAP", 1))
    if seen_before:
        assert await _apply(bc_engine, bc_api, "401") == "ordered"
    bc_api.status["401"] = status_id
    await _apply(bc_engine, bc_api, "401")
    assert await _cell(bc_engine, "HAT") == (3, 0)
    assert await _cell(bc_engine, "CAP") == (4, 0)
    await _apply(bc_engine, bc_api, "401")  # the same status fetched again ships nothing more
    bc_api.status["401"] = 10 if status_id == 2 else 2  # and neither does the other one
    await _apply(bc_engine, bc_api, "401")
    assert await _cell(bc_engine, "HAT") == (3, 0)
    assert await _cell(bc_engine, "CAP") == (4, 0)


async def test_bigcommerce_partially_shipped_fulfils_only_the_listed_shipments(
        bc_engine: StockEngine, bc_api: FakeBigCommerce) -> None:
    bc_api.add("402", 11, ("HAT", 2), ("CAP", 3))
    await _apply(bc_engine, bc_api, "402")
    bc_api.status["402"] = 3
    bc_api.ship("402", 9001, ("HAT", 1))
    bc_api.ship("402", 9002, ("GIFT-CARD", 1))  # an item of no known order product
    await _apply(bc_engine, bc_api, "402")
    assert await _cell(bc_engine, "HAT") == (4, 1)
    assert await _cell(bc_engine, "CAP") == (5, 3)  # not in a shipment: still committed
    await _apply(bc_engine, bc_api, "402")  # shipment 9001 again: a replay
    assert await _cell(bc_engine, "HAT") == (4, 1)
    bc_api.ship("402", 9003, ("CAP", 2))  # a second parcel leaves
    await _apply(bc_engine, bc_api, "402")
    assert await _cell(bc_engine, "HAT") == (4, 1)
    assert await _cell(bc_engine, "CAP") == (3, 1)
    bc_api.status["402"] = 2  # the rest ships
    await _apply(bc_engine, bc_api, "402")
    assert await _cell(bc_engine, "HAT") == (3, 0)
    assert await _cell(bc_engine, "CAP") == (2, 0)


@pytest.mark.parametrize("status_id", [4, 14, 13],
                         ids=["refunded", "partially-refunded", "disputed"])
async def test_bigcommerce_refund_or_dispute_changes_no_stock_and_asks_for_review(
        redis: Redis, bc_engine: StockEngine, bc_api: FakeBigCommerce, status_id: int) -> None:
    bc_api.add("403", 11, ("HAT", 2))  # refunded before it shipped
    await _apply(bc_engine, bc_api, "403")
    bc_api.status["403"] = status_id
    outcomes = [await _apply(bc_engine, bc_api, "403"),
                await _apply(bc_engine, bc_api, "403")]  # fetched again: no second alert
    assert await _cell(bc_engine, "HAT") == (5, 2)  # still committed, awaiting review
    [alert] = await list_alerts(redis, "default", type="refund_needs_review")
    assert (alert.ref, alert.channel) == ("bc:403", "bc")
    assert "HAT x 2" in alert.detail and f"({status_id})" in alert.detail
    assert outcomes == ["refund-review"] * 2
    bc_api.add("404", 11, ("CAP", 1))  # refunded after it shipped
    await _apply(bc_engine, bc_api, "404")
    bc_api.status["404"] = 2
    await _apply(bc_engine, bc_api, "404")
    bc_api.status["404"] = status_id
    assert await _apply(bc_engine, bc_api, "404") == "refund-review"
    assert await _cell(bc_engine, "CAP") == (4, 0)  # not back on sale
    found = {a.ref: a for a in await list_alerts(redis, "default", type="refund_needs_review")}
    assert sorted(found) == ["bc:403", "bc:404"] and "CAP x 1" in found["bc:404"].detail


async def test_bigcommerce_refund_of_an_unseen_order_counts_the_sale_for_review(
        redis: Redis, bc_engine: StockEngine, bc_api: FakeBigCommerce) -> None:
    bc_api.add("405", 4, ("HAT", 2))
    outcome = await _apply(bc_engine, bc_api, "405")
    assert await _cell(bc_engine, "HAT") == (5, 2)
    [alert] = await list_alerts(redis, "default", type="refund_needs_review")
    assert alert.ref == "bc:405" and outcome == "refund-review"


async def test_bigcommerce_refund_restocks_when_the_channel_sets_restock_refunds(
        redis: Redis, bc_engine: StockEngine, bc_api: FakeBigCommerce) -> None:
    bc_api.add("406", 11, ("HAT", 2), ("CAP", 1))
    await _apply(bc_engine, bc_api, "406", restock_refunds=True)
    bc_api.status["406"] = 3
    bc_api.ship("406", 9100, ("HAT", 2))
    await _apply(bc_engine, bc_api, "406", restock_refunds=True)
    assert await _cell(bc_engine, "HAT") == (3, 0)
    bc_api.status["406"] = 4
    assert await _apply(bc_engine, bc_api, "406", restock_refunds=True) == "restocked"
    assert await _cell(bc_engine, "HAT") == (5, 0)  # shipped units came back
    assert await _cell(bc_engine, "CAP") == (5, 0)  # the open unit left committed
    bc_api.status["406"] = 14  # another refund status: the order was restocked once
    await _apply(bc_engine, bc_api, "406", restock_refunds=True)
    assert await _cell(bc_engine, "HAT") == (5, 0)
    assert await list_alerts(redis, "default", type="refund_needs_review") == []


@pytest.mark.parametrize("status_id", [5, 6], ids=["cancelled", "declined"])
async def test_bigcommerce_cancel_after_a_partial_shipment_frees_only_unshipped_units(
        bc_engine: StockEngine, bc_api: FakeBigCommerce, status_id: int) -> None:
    bc_api.add("407", 11, ("HAT", 3))
    await _apply(bc_engine, bc_api, "407")
    bc_api.status["407"] = 3
    bc_api.ship("407", 9200, ("HAT", 1))
    await _apply(bc_engine, bc_api, "407")
    bc_api.status["407"] = status_id
    outcome = await _apply(bc_engine, bc_api, "407")
    assert await _cell(bc_engine, "HAT") == (4, 0)  # the shipped unit stays gone
    assert outcome == "cancelled"


@pytest.mark.parametrize("status_id", [5, 6], ids=["cancelled", "declined"])
async def test_bigcommerce_cancel_of_an_unseen_order_sticks(
        bc_engine: StockEngine, bc_api: FakeBigCommerce, status_id: int) -> None:
    """The cancel's job may run before the created hook's (retried) job: that one must not
    commit the units of an order that is already off."""
    bc_api.add("408", status_id, ("HAT", 2))
    outcome = await _apply(bc_engine, bc_api, "408")
    assert await _cell(bc_engine, "HAT") == (5, 0)
    # The stale job applies the order as its created hook saw it (awaiting fulfilment).
    bc_api.status["408"] = 11
    await _apply(bc_engine, bc_api, "408")
    assert await _cell(bc_engine, "HAT") == (5, 0)
    assert outcome == "cancelled"


async def test_bigcommerce_incomplete_checkout_changes_nothing(
        bc_engine: StockEngine, bc_api: FakeBigCommerce) -> None:
    bc_api.add("409", 0, ("HAT", 2))
    outcome = await _apply(bc_engine, bc_api, "409")
    assert await _cell(bc_engine, "HAT") == (5, 0)
    assert outcome == "incomplete"
