"""Workers against the real embedded server and real channel simulators: propagation,
coalescing under a rate limit, failures and retry, hold expiry, reconciliation, order fetch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis
from workers_helpers import (
    FAST,
    channel_for,
    channels_match,
    gateway_client,
    running_worker,
    settings_with,
    settled,
    wait_for,
)

from stockgate.embedded import EmbeddedRedis
from stockgate.keys import tenant_keys
from stockgate.models import Line
from stockgate.stock import StockEngine
from workers.adapters import adapter_for
from workers.alerts import list_alerts
from workers.propagation import failed_deliveries
from workers.queue import enqueue_fetch_order
from workers.reconcile import reconcile
from workers.serializer import job_deserializer, job_serializer
from workers.settings import WorkerSettings
from workers.simulators import SimulatorServer


@pytest.fixture
def sim_factory() -> Iterator[object]:
    started: list[SimulatorServer] = []

    def make(kind: str) -> SimulatorServer:
        sim = SimulatorServer(kind).start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()


def test_job_serializer_is_msgpack_not_pickle() -> None:
    job = {"t": 1, "f": "fetch_order", "a": ["acme", "bc", "42", "d-1"], "k": {}, "et": 5}
    assert job_deserializer(job_serializer(job)) == job
    assert WorkerSettings.job_serializer is job_serializer
    assert not job_serializer(job).startswith(b"\x80")  # pickle's protocol marker
    assert WorkerSettings.job_timeout <= 60


async def test_rate_limited_burst_is_coalesced(redis: Redis, redis_server: EmbeddedRedis,
                                               tmp_path: Path, sim_factory: object) -> None:
    sim = sim_factory("standard")  # type: ignore[operator]
    sim.state.rate_limit_per_s = 2.0
    settings = settings_with(tmp_path, {"market": channel_for("standard", sim, rate=2.0)})
    engine = StockEngine(redis, settings)
    await engine.load_scripts()
    await engine.adjust("default", "DROP", reason="receipt", idempotency_key="r", delta=100_000)
    async with running_worker(settings, redis_server.url):
        for start in range(0, 5000, 500):
            await asyncio.gather(*(engine.hold("default", [Line("DROP", 1)], hold_id=f"h{i}")
                                   for i in range(start, start + 500)))
        # wait_for fails the test unless the channel shows the final count within 5 s of
        # the last change (the bar).
        took = await wait_for(lambda: channels_match(engine, {"market": sim}, ["DROP"]), 5.0)
        await wait_for(lambda: settled(redis), 5.0)
    assert sim.state.count("DROP", "main") == 95_000
    # 5,001 changes reached the channel as a handful of calls.
    assert sim.state.writes <= 36, sim.state.writes
    print(f"\nrate-limited burst: {sim.state.writes} writes, {sim.state.limited} 429s, "
          f"converged {took:.2f}s after the last change")


async def test_failing_channel_parks_alerts_and_retries(
        redis: Redis, redis_server: EmbeddedRedis, tmp_path: Path, sim_factory: object) -> None:
    sim = sim_factory("shopify")  # type: ignore[operator]
    sim.state.fail_ratio = 1.0
    settings = settings_with(tmp_path, {"shop": channel_for("shopify", sim)})
    engine = StockEngine(redis, settings)
    await engine.load_scripts()
    async with running_worker(settings, redis_server.url), \
            gateway_client(settings, redis) as client:
        await engine.adjust("default", "TEE", reason="receipt", idempotency_key="r", delta=7)

        async def parked() -> bool:
            return bool(await failed_deliveries(redis, "default"))

        await wait_for(parked, 10.0)
        assert sim.state.failed == FAST.propagation.max_attempts
        listed = (await client.get("/v1/deliveries", params={"status": "failed"})).json()
        [delivery] = listed["deliveries"]
        assert (delivery["channel"], delivery["sku"]) == ("shop", "TEE")
        alerts = (await client.get("/v1/alerts")).json()["alerts"]
        assert [a["type"] for a in alerts] == ["delivery_failing"]

        sim.state.fail_ratio = 0.0  # the channel recovers
        await engine.adjust("default", "TEE", reason="count", idempotency_key="r2", delta=2)
        reply = await client.post(f"/v1/deliveries/{delivery['id']}/retry")
        assert reply.status_code == 202
        await wait_for(lambda: channels_match(engine, {"shop": sim}, ["TEE"]), 5.0)
        assert sim.state.count("TEE", "main") == 9
        assert (await client.get("/v1/deliveries")).json()["deliveries"] == []
        assert (await client.post(f"/v1/deliveries/{delivery['id']}/retry")).status_code == 404


async def test_holds_expire_within_seconds_of_ttl(redis: Redis, redis_server: EmbeddedRedis,
                                                  tmp_path: Path) -> None:
    settings = settings_with(tmp_path, {})
    engine = StockEngine(redis, settings)
    await engine.load_scripts()
    await engine.adjust("default", "CAP", reason="receipt", idempotency_key="r", delta=10)
    async with running_worker(settings, redis_server.url):
        reply, _ = await engine.hold("default", [Line("CAP", 4)], ttl_s=1)
        assert (await engine.stock("default", "CAP")).available == 6

        async def back() -> bool:
            return (await engine.stock("default", "CAP")).available == 10

        await wait_for(back, 8.0)
        late_s = time.time() - reply.expires_at_ms / 1000
    assert late_s < 5.0
    print(f"\nhold back on sale {late_s:.2f}s after its TTL")
    entries = await redis.xrange(tenant_keys("default").outbox)
    assert [e for e in entries if b'"type":"expire"' in e[1][b"e"]]


async def test_reconcile_records_drift_and_repushes(
        redis: Redis, redis_server: EmbeddedRedis, tmp_path: Path, sim_factory: object) -> None:
    sim = sim_factory("woocommerce")  # type: ignore[operator]
    settings = settings_with(tmp_path, {"woo": channel_for("woocommerce", sim)})
    engine = StockEngine(redis, settings)
    await engine.load_scripts()
    async with running_worker(settings, redis_server.url) as worker:
        await engine.adjust("default", "MUG", reason="receipt", idempotency_key="r", delta=12)
        await wait_for(lambda: channels_match(engine, {"woo": sim}, ["MUG"]), 5.0)
        await wait_for(lambda: settled(redis), 5.0)
        sim.state.counts["MUG", ""] = 3  # someone edited the count in WooCommerce's admin
        runtime = worker.ctx["runtime"]  # type: ignore[attr-defined]
        drifts = await reconcile(redis, engine, settings, runtime.propagator.adapters)
        assert [(d.channel, d.channel_count, d.last_pushed, d.canonical) for d in drifts] == [
            ("woo", 3, 12, 12)]
        await wait_for(lambda: channels_match(engine, {"woo": sim}, ["MUG"]), 5.0)
    assert [a.type for a in await list_alerts(redis, "default")] == ["drift"]


async def test_bigcommerce_order_fetched_by_id(
        redis: Redis, redis_server: EmbeddedRedis, tmp_path: Path, sim_factory: object) -> None:
    sim = sim_factory("bigcommerce")  # type: ignore[operator]
    settings = settings_with(tmp_path, {"bc": channel_for("bigcommerce", sim)})
    engine = StockEngine(redis, settings)
    await engine.load_scripts()
    await engine.adjust("default", "HAT", reason="receipt", idempotency_key="r", delta=5)
    sim.state.orders["101"] = {"status_id": 11, "products": [{"sku": "HAT", "quantity": 2}]}
    async with running_worker(settings, redis_server.url):
        await enqueue_fetch_order(redis, "default", "bc", "101", "hook-1")
        await enqueue_fetch_order(redis, "default", "bc", "101", "hook-1")  # duplicate hook

        async def committed(n: int) -> bool:
            return (await engine.stock("default", "HAT")).locations["main"].committed == n

        await wait_for(lambda: committed(2), 5.0)
        await wait_for(lambda: channels_match(engine, {"bc": sim}, ["HAT"]), 5.0)
        sim.state.orders["101"]["status_id"] = 5  # cancelled in BigCommerce
        await enqueue_fetch_order(redis, "default", "bc", "101", "hook-2")
        await wait_for(lambda: committed(0), 5.0)
        await wait_for(lambda: channels_match(engine, {"bc": sim}, ["HAT"]), 5.0)
    assert sim.state.count("HAT", "main") == 5


async def test_adapters_read_back_what_they_set(tmp_path: Path, sim_factory: object) -> None:
    async with httpx.AsyncClient() as client:
        for kind in ("shopify", "woocommerce", "bigcommerce", "standard"):
            sim = sim_factory(kind)  # type: ignore[operator]
            adapter = adapter_for(kind, channel_for(kind, sim), client)
            assert await adapter.get_available("SKU-9", "main") is None
            await adapter.set_available("SKU-9", "main", 17)
            assert await adapter.get_available("SKU-9", "main") == 17
