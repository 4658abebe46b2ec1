"""Units a compare-and-set channel sold on its own (a stale changeFromQuantity) are set aside
for it (lua/moved.lua): no other channel sells them, its order takes them back out
(lua/order.lua), a judged count report explains them, and a drop nothing explains is
alerted. Real server, real Shopify simulator, the real Propagator and channel-count judge."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from stockgate.alerts import list_alerts
from stockgate.audit import audit_store
from stockgate.deliveries import mark_dirty, member_of
from stockgate.keys import worker_keys
from stockgate.models import Line
from stockgate.settings import Channel, Settings
from stockgate.stock import StockEngine
from workers.channel_counts import judge_channel_count
from workers.propagation import PropagationConfig, Propagator, pending_drops
from workers.reconcile import alert_unexplained
from workers.simulators import SimulatorServer

SKU = "TEE"
MEMBER = member_of("shop", "main", SKU)


@pytest.fixture
def sim() -> AsyncIterator[SimulatorServer]:
    server = SimulatorServer("shopify").start()
    yield server  # type: ignore[misc]
    server.stop()


@contextlib.asynccontextmanager
async def world(redis: Redis, tmp_path: Path, sim: SimulatorServer, units: int
                ) -> AsyncIterator[tuple[StockEngine, Propagator]]:
    settings = Settings(data_dir=str(tmp_path), channels={"shop": Channel(
        kind="shopify", secret="s", api_url=sim.url, access_token="t", rate_limit_per_s=0)})
    engine = StockEngine(redis, settings)
    await engine.load_scripts()
    await engine.adjust("default", SKU, reason="receipt", idempotency_key="r", delta=units)
    propagator = Propagator(redis, engine, settings, PropagationConfig(lease_ms=3000))
    try:
        yield engine, propagator
    finally:
        await propagator.close()


async def push(redis: Redis, propagator: Propagator) -> None:
    """What the outbox consumer and a lane do after a change, run to completion."""
    await mark_dirty(redis, "default", [MEMBER])
    for _ in range(5):
        await propagator.push_due("default", "shop")
        if await redis.zscore(worker_keys("default").due("shop"), MEMBER) is None:
            return
    raise AssertionError("the push did not settle")


async def cell(engine: StockEngine) -> tuple[int, int, int]:
    c = (await engine.stock("default", SKU)).locations["main"]
    return c.available, c.reserved, c.committed


async def test_a_channels_own_sale_is_set_aside_until_its_order_lands(
        redis: Redis, tmp_path: Path, sim: SimulatorServer) -> None:
    async with world(redis, tmp_path, sim, 5) as (engine, propagator):
        await push(redis, propagator)
        assert sim.state.count(SKU, "main") == 5
        assert sim.state.sell(SKU, "main", 2)  # Shopify sells 2; its webhook is late
        reply, _ = await engine.order("default", "web:1", [Line(SKU, 3)])
        assert reply.lines[0].status == "committed"
        # Stockgate thinks 2 are left; Shopify knows they are gone. The push's compare is
        # stale: the 2 are set aside, and Shopify is told 0 against the 3 it shows.
        await push(redis, propagator)
        assert await cell(engine) == (0, 2, 3)
        assert sim.state.count(SKU, "main") == 0 and sim.state.clobbered == 0
        assert (await pending_drops(redis, "default", "shop"))[f"{SKU}|main"][0] == 2
        # No other channel can sell them.
        reply, _ = await engine.order("default", "web:2", [Line(SKU, 1)])
        assert reply.lines[0].status == "oversell_rejected"
        # Shopify's order lands: it takes the units kept for it, never refused.
        reply, _ = await engine.order("default", "shop:1001", [Line(SKU, 2)], channel="shop")
        assert [ln.status for ln in reply.lines] == ["committed"]
        assert await cell(engine) == (0, 0, 5)
        assert await pending_drops(redis, "default", "shop") == {}


async def test_only_available_units_are_set_aside(redis: Redis, tmp_path: Path,
                                                  sim: SimulatorServer) -> None:
    """Shopify sold 2 that another channel had sold too: only what is left can be set aside;
    Shopify's order for the rest is an oversell, refused and reported as such."""
    async with world(redis, tmp_path, sim, 3) as (engine, propagator):
        await push(redis, propagator)
        assert sim.state.sell(SKU, "main", 2)
        reply, _ = await engine.order("default", "web:1", [Line(SKU, 2)])
        assert reply.lines[0].status == "committed"
        await push(redis, propagator)
        assert await cell(engine) == (0, 1, 2)
        reply, _ = await engine.order("default", "shop:7", [Line(SKU, 2)], channel="shop")
        assert sorted(ln.status for ln in reply.lines) == ["committed", "oversell_rejected"]
        assert await cell(engine) == (0, 0, 3)


async def test_the_channels_later_sales_are_its_own_not_a_drop(
        redis: Redis, tmp_path: Path, sim: SimulatorServer) -> None:
    """A sale whose order landed before the next compare is already counted: the compare
    must not set it aside a second time."""
    async with world(redis, tmp_path, sim, 6) as (engine, propagator):
        await push(redis, propagator)
        assert sim.state.sell(SKU, "main", 1)
        await engine.order("default", "shop:1", [Line(SKU, 1)], channel="shop")
        assert sim.state.sell(SKU, "main", 1)  # this one's order has not landed
        await engine.order("default", "web:1", [Line(SKU, 1)])
        await push(redis, propagator)
        # 6 - Shopify's 2 - the web's 1: 3 left; only the sale without an order is aside.
        assert await cell(engine) == (3, 1, 2)
        assert sim.state.count(SKU, "main") == 3


async def test_a_judged_count_report_explains_the_drop(redis: Redis, tmp_path: Path,
                                                      sim: SimulatorServer) -> None:
    """The drop was a person's edit in Shopify's admin (no order will come): once its count
    report is judged and applied as an adjust, the units set aside are given back, or the
    same units would be off sale twice."""
    async with world(redis, tmp_path, sim, 10) as (engine, propagator):
        await push(redis, propagator)
        sim.state.counts[SKU, "main"] = 7  # a person sets 7 in the admin
        seconds, micros = await redis.time()
        reported_at = seconds * 1000 + micros // 1000  # its count report arrives now
        await asyncio.sleep(0.005)  # what follows is later, also in whole milliseconds
        await engine.order("default", "web:1", [Line(SKU, 1)])
        await push(redis, propagator)
        assert await cell(engine) == (6, 3, 1)
        audit = audit_store(engine.settings)
        await audit.open()
        try:
            outcome = await judge_channel_count(
                redis, engine, audit, engine.settings, "default", "shop", SKU, "main", 7,
                "edit-1", reported_at, in_flight_ms=0)
        finally:
            await audit.close()
        assert outcome == "applied"
        available, reserved, committed = await cell(engine)
        assert (reserved, committed) == (0, 1)
        assert available == 6  # 10 - 3 edited away - 1 sold: nothing taken twice
        assert await pending_drops(redis, "default", "shop") == {}


async def test_an_unexplained_drop_is_alerted_once(redis: Redis, tmp_path: Path,
                                                   sim: SimulatorServer) -> None:
    async with world(redis, tmp_path, sim, 4) as (engine, propagator):
        await push(redis, propagator)
        assert sim.state.sell(SKU, "main", 1)
        await engine.order("default", "web:1", [Line(SKU, 1)])
        await push(redis, propagator)
        assert await alert_unexplained(redis, "default", "shop", after_s=600) == 0
        assert await alert_unexplained(redis, "default", "shop", after_s=0) == 1
        await alert_unexplained(redis, "default", "shop", after_s=0)
        alerts = [a for a in await list_alerts(redis, "default")
                  if a.type == "channel_moved_unexplained"]
        assert len(alerts) == 1 and alerts[0].sku == SKU
