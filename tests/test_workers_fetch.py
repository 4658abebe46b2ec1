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

from stockgate.embedded import EmbeddedRedis
from stockgate.settings import Settings
from stockgate.stock import StockEngine
from workers.adapters import PushError, adapter_for
from workers.adapters.bigcommerce import BigCommerceAdapter
from workers.alerts import list_alerts
from workers.queue import FetchConfig, apply_channel_order, enqueue_fetch_order, retry_delay
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
