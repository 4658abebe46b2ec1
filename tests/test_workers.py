"""Workers against the real embedded server and real channel simulators: propagation,
coalescing under a rate limit, failures and retry, hold expiry, reconciliation, order fetch."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
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

from stockgate.alerts import list_alerts
from stockgate.deliveries import failed_deliveries, mark_dirty, member_of
from stockgate.embedded import EmbeddedRedis
from stockgate.jobs import enqueue_fetch_order, job_deserializer, job_serializer
from stockgate.keys import tenant_keys, worker_keys
from stockgate.models import Line
from stockgate.settings import Settings
from stockgate.stock import StockEngine
from workers.adapters import ChannelAdapter, PushError, adapter_for
from workers.propagation import PropagationConfig, Propagator, now_ms
from workers.reconcile import ReconcileConfig, reconcile
from workers.settings import JOB_TIMEOUT_S, WorkerSettings


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
        # Settling is not the bar, only what makes the write count final: the outbox consumer
        # runs in this event loop and drains the 5,000 entries after the burst (1.0-1.5 s on
        # an idle machine), each of its marks sends the target round once more at 2 calls/s
        # (settled 1.5-2.5 s after convergence here; a busy CI machine took over 5).
        await wait_for(lambda: settled(redis), 30.0)
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
        # The alert follows the parking (after the batch's parks): wait for it, then exactly
        # one.
        async def alerted() -> bool:
            return bool((await client.get("/v1/alerts")).json()["alerts"])

        await wait_for(alerted, 5.0)
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


@contextlib.asynccontextmanager
async def adapters_of(settings: Settings) -> AsyncIterator[dict[str, ChannelAdapter]]:
    async with httpx.AsyncClient() as client:
        yield {name: adapter_for(name, ch, client) for name, ch in settings.channels.items()}


async def stocked_engine(redis: Redis, settings: Settings, skus: list[str],
                         qty: int) -> StockEngine:
    engine = StockEngine(redis, settings)
    await engine.load_scripts()
    for sku in skus:
        await engine.adjust("default", sku, reason="receipt", idempotency_key=f"r-{sku}",
                            delta=qty)
    return engine


def test_reconcile_run_fits_its_cron_timeout() -> None:
    # The last read starts by budget_s and lasts at most one HTTP timeout.
    assert ReconcileConfig().budget_s + PropagationConfig().http_timeout_s < JOB_TIMEOUT_S


async def test_reconcile_keeps_the_channel_rate_limit(redis: Redis, tmp_path: Path,
                                                      sim_factory: object) -> None:
    rate, skus = 20.0, [f"S{i:02d}" for i in range(30)]
    sim = sim_factory("standard")  # type: ignore[operator]
    sim.state.rate_limit_per_s = rate  # the channel enforces the limit the config states
    settings = settings_with(tmp_path, {"std": channel_for("standard", sim, rate=rate)})
    engine = await stocked_engine(redis, settings, skus, 5)
    for sku in skus:
        sim.state.counts[sku, "main"] = 5
    await asyncio.sleep(2 / rate)  # the simulator's token bucket starts empty
    async with adapters_of(settings) as adapters:
        start = time.monotonic()
        drifts = await reconcile(redis, engine, settings, adapters)
        took = time.monotonic() - start
    assert drifts == []
    # Every count read, none refused: 30 reads at 20/s cannot take less than 29 intervals
    # (unpaced, they take a few ms and the bucket of 20 answers 429).
    assert (sim.state.calls, sim.state.limited) == (len(skus), 0)
    assert took >= (len(skus) - 1) / rate * 0.95, took


async def test_reconcile_and_pushes_share_the_rate_limit(redis: Redis, tmp_path: Path,
                                                         sim_factory: object) -> None:
    rate, skus = 10.0, [f"S{i:02d}" for i in range(12)]
    sim = sim_factory("standard")  # type: ignore[operator]
    sim.state.rate_limit_per_s = rate
    settings = settings_with(tmp_path, {"std": channel_for("standard", sim, rate=rate)})
    engine = await stocked_engine(redis, settings, skus, 5)
    for sku in skus:
        sim.state.counts[sku, "main"] = 5
    propagator = Propagator(redis, engine, settings, FAST.propagation)
    stop = asyncio.Event()
    pusher = asyncio.create_task(propagator.run(stop))
    await asyncio.sleep(2 / rate)  # the simulator's token bucket starts empty

    async def sell() -> None:  # sales on half the catalogue while reconcile runs
        for sku in skus[:6]:
            await engine.adjust("default", sku, reason="sale", idempotency_key=f"s-{sku}",
                                delta=-1)
            await mark_dirty(redis, "default", [member_of("std", "main", sku)])
            await asyncio.sleep(0.05)

    try:
        async with adapters_of(settings) as adapters:
            await asyncio.gather(sell(), reconcile(redis, engine, settings, adapters))
        await wait_for(lambda: settled(redis), 5.0)
    finally:
        stop.set()
        await pusher
        await propagator.close()
    assert [sim.state.count(sku, "main") for sku in skus] == [4] * 6 + [5] * 6
    assert sim.state.writes >= 6 and sim.state.limited == 0


async def test_reconcile_yields_to_pushes_and_honours_retry_after(
        redis: Redis, tmp_path: Path, sim_factory: object) -> None:
    sim = sim_factory("standard")  # type: ignore[operator]
    settings = settings_with(tmp_path, {"std": channel_for("standard", sim, rate=2.0)})
    engine = await stocked_engine(redis, settings, ["A", "B"], 5)
    rate_key = worker_keys("default").rate("std")
    short = ReconcileConfig(budget_s=0.3)
    async with adapters_of(settings) as adapters:
        # Pushes have booked the channel's next second: reconcile takes no slot ahead of them.
        await redis.set(rate_key, now_ms() + 1000)
        assert await reconcile(redis, engine, settings, adapters, short) == []
        assert sim.state.calls == 0
        assert await redis.hget(worker_keys("default").reconcile_cursor, "std") is None

        calls = 0

        class Limited(ChannelAdapter):
            async def get_available(self, sku: str, location: str) -> int | None:
                nonlocal calls
                calls += 1
                raise PushError("std: rate limited", status=429, retry_after=5.0)

        await redis.delete(rate_key)
        limited = {"std": Limited("std", settings.channels["std"], adapters["std"].client)}
        before = now_ms()
        assert await reconcile(redis, engine, settings, limited, short) == []
        assert calls == 1  # the 429 ends the channel's sweep
        assert int(await redis.get(rate_key)) >= before + 5000  # pushes wait too
        assert await reconcile(redis, engine, settings, limited, short) == []
        assert calls == 1
        assert await redis.hget(worker_keys("default").reconcile_cursor, "std") is None


async def test_reconcile_cursor_continues_across_runs(redis: Redis, tmp_path: Path,
                                                      sim_factory: object) -> None:
    sim = sim_factory("standard")  # type: ignore[operator]
    settings = settings_with(tmp_path, {"std": channel_for("standard", sim)})
    skus = [f"S{i}" for i in range(7)]
    engine = await stocked_engine(redis, settings, skus, 5)
    for sku in skus:
        sim.state.counts[sku, "main"] = 1  # every count drifted
    keys = worker_keys("default")
    three = ReconcileConfig(max_reads=3)

    async def run() -> list[str]:
        async with adapters_of(settings) as adapters:
            drifts = await reconcile(redis, engine, settings, adapters, three)
        await redis.delete(keys.due("std"))  # as if the re-pushes were done but did not stick
        return [d.sku for d in drifts]

    assert await run() == ["S0", "S1", "S2"]
    assert await redis.hget(keys.reconcile_cursor, "std") == b'["S2","main"]'
    # S4 has a push due: skipped, and not counted as one of the run's reads.
    await mark_dirty(redis, "default", [member_of("std", "main", "S4")])
    calls = sim.state.calls
    assert await run() == ["S3", "S5", "S6"]
    assert sim.state.calls - calls == 3
    # The end of the catalogue was reached: the next run starts over.
    assert await redis.hget(keys.reconcile_cursor, "std") is None
    assert await run() == ["S0", "S1", "S2"]


async def test_reconcile_alerts_once_per_observed_drift(redis: Redis, tmp_path: Path,
                                                        sim_factory: object) -> None:
    sim = sim_factory("standard")  # type: ignore[operator]
    settings = settings_with(tmp_path, {"std": channel_for("standard", sim)})
    engine = await stocked_engine(redis, settings, ["MUG"], 12)
    member = member_of("std", "main", "MUG")

    async def run() -> list[int | None]:
        async with adapters_of(settings) as adapters:
            drifts = await reconcile(redis, engine, settings, adapters)
        # Each drift is repaired (re-pushed), then the push is taken as done.
        assert await redis.zscore(worker_keys("default").due("std"), member) is not None
        await redis.delete(worker_keys("default").due("std"))
        return [d.channel_count for d in drifts]

    sim.state.counts["MUG", "main"] = 3
    assert await run() == [3]
    assert await run() == [3]  # the same drift again: repaired, not alerted again
    sim.state.counts["MUG", "main"] = 4
    assert await run() == [4]  # another value: a new alert
    alerts = await list_alerts(redis, "default")
    assert [(a.type, a.sku, a.channel) for a in alerts] == [("drift", "MUG", "std")] * 2
    assert "shows 4" in alerts[0].detail and "shows 3" in alerts[1].detail


async def test_reconcile_untracked_item_is_not_drift(redis: Redis, tmp_path: Path,
                                                     sim_factory: object) -> None:
    sim = sim_factory("standard")  # type: ignore[operator]
    settings = settings_with(tmp_path, {"std": channel_for("standard", sim),
                                        "gone": channel_for("standard", sim)})
    engine = await stocked_engine(redis, settings, ["NEW"], 8)

    class NotFound(ChannelAdapter):
        async def get_available(self, sku: str, location: str) -> int | None:
            raise PushError("gone: HTTP 404", status=404)

    async with adapters_of(settings) as adapters:
        adapters["gone"] = NotFound("gone", settings.channels["gone"], adapters["std"].client)
        # "std" answers without a count (None), "gone" answers 404: neither tracks NEW.
        assert await reconcile(redis, engine, settings, adapters) == []
    assert sim.state.calls == 1
    assert await list_alerts(redis, "default") == []
    assert await redis.zcard(worker_keys("default").due("std")) == 0


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


async def test_a_429_never_moves_booked_slots_earlier(redis: Redis) -> None:
    from stockgate.keys import worker_keys
    from workers.propagation import book_slot, hold_channel

    # Pushes have booked the channel 5 s ahead; a 429 asking for 1 s must not shorten that.
    for _ in range(5):
        await book_slot(redis, "default", "shop", 1000, 10_000)
    booked = int(await redis.get(worker_keys("default").rate("shop")))
    assert (await hold_channel(redis, "default", "shop", 1.0)).at == booked
    assert int(await redis.get(worker_keys("default").rate("shop"))) == booked
    # A longer Retry-After does move it.
    later = (await hold_channel(redis, "default", "shop", 30.0)).at
    assert later > booked
    assert int(await redis.get(worker_keys("default").rate("shop"))) == later
