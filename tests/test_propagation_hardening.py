"""Propagation on an on-call engineer's bad night (issue 15, items 1, 3, 4 and 5): lapsed
leases, skewed worker clocks, a hanging channel beside healthy tenants, absurd Retry-After
headers, and adapters that fail with something other than a PushError. Each test drives the
real Propagator against a real server; the channels are adapters the test controls (or the
simulators), so each failure happens exactly where the test needs it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx
import msgspec
import pytest
from redis.asyncio import Redis
from workers_helpers import wait_for

from stockgate.alerts import list_alerts
from stockgate.deliveries import failed_deliveries, mark_dirty, member_of, pending_deliveries
from stockgate.keys import worker_keys
from stockgate.settings import Channel, Settings, Tenant
from stockgate.stock import StockEngine
from workers import propagation
from workers.adapters import ChannelAdapter, adapter_for
from workers.adapters.base import RETRY_AFTER_MAX_S, ItemResult, PushItem
from workers.propagation import PropagationConfig, Propagator
from workers.reconcile import reconcile
from workers.simulators import SimulatorServer

FAST = PropagationConfig(max_attempts=3, backoff_base_s=0.02, backoff_max_s=0.05,
                         lease_ms=300, idle_sleep_s=0.01, push_timeout_s=5.0)


class Scripted(ChannelAdapter):
    """A channel whose pushes the test scripts: records every batch, can be made to wait on
    an event, or to raise what the test says."""

    batch_limit = 50

    def __init__(self, name: str, channel: Channel, client: httpx.AsyncClient) -> None:
        super().__init__(name, channel, client)
        self.batches: list[list[PushItem]] = []
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()
        self.error: BaseException | None = None

    async def push_batch(self, items: Sequence[PushItem]) -> list[ItemResult]:
        self.batches.append(list(items))
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return [ItemResult("ok") for _ in items]

    def shown(self, sku: str) -> int | None:
        for batch in reversed(self.batches):
            for item in batch:
                if item.sku == sku:
                    return item.value
        return None


def channel(tenant: str = "default", rate: float = 0.0) -> Channel:
    return Channel(kind="standard", secret="s", tenant=tenant, api_url="http://127.0.0.1:9",
                   rate_limit_per_s=rate)


async def engine_for(redis: Redis, settings: Settings, stock: dict[tuple[str, str], int]
                     ) -> StockEngine:
    engine = StockEngine(redis, settings)
    await engine.load_scripts()
    for (tenant, sku), qty in stock.items():
        await engine.adjust(tenant, sku, reason="receipt", idempotency_key=f"r-{sku}",
                            delta=qty)
    return engine


@contextlib.asynccontextmanager
async def propagator(redis: Redis, engine: StockEngine, settings: Settings,
                     config: PropagationConfig = FAST) -> AsyncIterator[Propagator]:
    p = Propagator(redis, engine, settings, config)
    for name, ch in settings.channels.items():
        p.adapters[name] = Scripted(name, ch, p.client)
    try:
        yield p
    finally:
        await p.close()


async def test_a_lapsed_claim_never_forgets_a_newer_change(redis: Redis, tmp_path: Path) -> None:
    """Issue 15 item 1: worker A's push hangs past its lease; worker B claims the target and
    pushes it; a sale changes it again; then A's push returns. A must not finish the target
    (on the old code the version counter restarted at "1", A saw "1" == "1" and dropped the
    sale's push: the channel kept the old count)."""
    settings = Settings(data_dir=str(tmp_path), channels={"std": channel()})
    engine = await engine_for(redis, settings, {("default", "MUG"): 10})
    member = member_of("std", "main", "MUG")
    async with propagator(redis, engine, settings) as a, \
            propagator(redis, engine, settings) as b:
        slow: Scripted = a.adapters["std"]  # type: ignore[assignment]
        slow.gate = asyncio.Event()
        await mark_dirty(redis, "default", [member])
        first = asyncio.create_task(a.push_due("default", "std"))
        await asyncio.wait_for(slow.entered.wait(), 5)
        await asyncio.sleep(FAST.lease_ms / 1000 + 0.1)  # A's lease lapses
        assert await b.push_due("default", "std") == 0  # B claims and pushes 10
        assert b.adapters["std"].shown("MUG") == 10  # type: ignore[attr-defined]
        await engine.adjust("default", "MUG", reason="sale", idempotency_key="s1", delta=-3)
        await mark_dirty(redis, "default", [member])  # the outbox consumer's part
        slow.gate.set()
        await first  # A finishes under a lapsed claim: it must change nothing
        assert await redis.zscore(worker_keys("default").due("std"), member) is not None
        await b.push_due("default", "std")
    assert b.adapters["std"].shown("MUG") == 7  # type: ignore[attr-defined]
    assert await pending_deliveries(redis, "default") == 0


async def test_a_skewed_worker_clock_cannot_lapse_a_lease(
        redis: Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Leases and due times come from Redis TIME: a worker whose clock runs a minute behind
    leases a target for as long as every other worker (on the old code its lease ended a
    minute in the past, so the next worker pushed the same target at once, concurrently)."""
    settings = Settings(data_dir=str(tmp_path), channels={"std": channel()})
    engine = await engine_for(redis, settings, {("default", "CAP"): 4})
    await mark_dirty(redis, "default", [member_of("std", "main", "CAP")])
    real = time.time
    monkeypatch.setattr(propagation.time, "time", lambda: real() - 60)
    config = PropagationConfig(lease_ms=5_000, idle_sleep_s=0.01)
    async with propagator(redis, engine, settings, config) as behind, \
            propagator(redis, engine, settings, config) as other:
        hung: Scripted = behind.adapters["std"]  # type: ignore[assignment]
        hung.gate = asyncio.Event()
        task = asyncio.create_task(behind.push_due("default", "std"))
        await asyncio.wait_for(hung.entered.wait(), 5)
        monkeypatch.setattr(propagation.time, "time", real)
        await other.push_due("default", "std")
        assert other.adapters["std"].batches == []  # type: ignore[attr-defined]
        hung.gate.set()
        await task
    assert await pending_deliveries(redis, "default") == 0


async def test_a_hanging_channel_does_not_delay_another_tenant(redis: Redis,
                                                                 tmp_path: Path) -> None:
    """Issue 15 item 3: every (tenant, channel) is its own lane. A tenant whose channel hangs
    holds only its own lane: the healthy tenant's change is pushed while the other's push is
    still hanging (on the old code the pass waited for the hung batch first)."""
    settings = Settings(data_dir=str(tmp_path),
                        tenants={"slow": Tenant(), "fast": Tenant()},
                        channels={"hung": channel("slow"), "ok": channel("fast")})
    engine = await engine_for(redis, settings, {("slow", "A"): 5, ("fast", "B"): 5})
    stop = asyncio.Event()
    # The hung push outlasts the wait below, so only independent lanes can push B in time.
    hang = msgspec.structs.replace(FAST, push_timeout_s=30.0, lease_ms=60_000)
    async with propagator(redis, engine, settings, hang) as p:
        hung: Scripted = p.adapters["hung"]  # type: ignore[assignment]
        ok: Scripted = p.adapters["ok"]  # type: ignore[assignment]
        hung.gate = asyncio.Event()
        runner = asyncio.create_task(p.run(stop))
        await mark_dirty(redis, "slow", [member_of("hung", "main", "A")])
        await asyncio.wait_for(hung.entered.wait(), 5)
        start = time.monotonic()
        await mark_dirty(redis, "fast", [member_of("ok", "main", "B")])

        async def pushed() -> bool:
            return ok.shown("B") == 5

        # The hung push is not released (nor timed out) before this: a pass that waited for
        # its whole batch would not push B within the bound.
        took = await wait_for(pushed, 10.0, interval=0.005)
        assert not hung.gate.is_set()
        print(f"\nhealthy tenant pushed {1000 * took:.0f} ms after its change while the "
              f"other tenant's channel hung ({time.monotonic() - start:.2f}s)")
        hung.gate.set()
        stop.set()
        await runner


@pytest.mark.parametrize("header", ["86400", "inf", "nan", "-5", "Wed, 21 Oct 2015 07:28:00 GMT"])
async def test_retry_after_is_parsed_capped_and_alerted(redis: Redis, tmp_path: Path,
                                                        header: str) -> None:
    """Issue 15 item 4: a 429's Retry-After is honoured up to RETRY_AFTER_MAX_S; a longer one
    raises a channel_throttled alert instead of silently stopping the channel for a day, and
    inf / nan / a negative or a date never crash the lane."""
    settings = Settings(data_dir=str(tmp_path), channels={"std": channel()})
    engine = await engine_for(redis, settings, {("default", "HAT"): 3})

    def throttled(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": header})

    p = Propagator(redis, engine, settings, FAST)
    p.adapters["std"].client = httpx.AsyncClient(transport=httpx.MockTransport(throttled))
    try:
        await mark_dirty(redis, "default", [member_of("std", "main", "HAT")])
        assert await p.push_due("default", "std") == 0
    finally:
        await p.adapters["std"].client.aclose()
        await p.close()
    keys = worker_keys("default")
    due_at = await redis.zscore(keys.due("std"), member_of("std", "main", "HAT"))
    seconds, micros = await redis.time()
    wait_s = (due_at - (seconds * 1000 + micros // 1000)) / 1000
    alerts = [a for a in await list_alerts(redis, "default") if a.type == "channel_throttled"]
    if header == "86400":
        assert RETRY_AFTER_MAX_S - 2 < wait_s <= RETRY_AFTER_MAX_S
        assert len(alerts) == 1 and "86400" in alerts[0].detail
    else:
        assert 0 <= wait_s <= 2, wait_s
        assert alerts == []
    assert await redis.hget(keys.attempts, member_of("std", "main", "HAT")) is None


async def test_an_adapter_error_of_any_kind_is_counted_parked_and_alerted(
        redis: Redis, tmp_path: Path) -> None:
    """Issue 15 item 5: an adapter that raises something other than a PushError (a bug, a
    body it did not expect) fails its targets like any failure: counted, retried, parked,
    alerted, and the lane goes on (on the old code it escaped the delivery: never counted,
    retried every lease for ever, ending the pass for the tenants after it)."""
    settings = Settings(data_dir=str(tmp_path), channels={"std": channel()})
    engine = await engine_for(redis, settings, {("default", "SOCK"): 9})
    async with propagator(redis, engine, settings) as p:
        broken: Scripted = p.adapters["std"]  # type: ignore[assignment]
        broken.error = KeyError("inventory_level")
        await mark_dirty(redis, "default", [member_of("std", "main", "SOCK")])

        async def parked() -> bool:
            await p.push_due("default", "std")
            return bool(await failed_deliveries(redis, "default"))

        await wait_for(parked, 5.0, interval=0.03)
    [record] = await failed_deliveries(redis, "default")
    assert record.attempts == FAST.max_attempts and "KeyError" in record.last_error
    assert [a.type for a in await list_alerts(redis, "default")] == ["delivery_failing"]


async def test_a_maintenance_page_is_a_failed_push(redis: Redis, tmp_path: Path) -> None:
    """A 200 whose body is an HTML page applied nothing: it is a PushError, not a success."""
    sim = SimulatorServer("standard").start()
    try:
        ch = Channel(kind="standard", secret="s", api_url=sim.url, rate_limit_per_s=0)
        settings = Settings(data_dir=str(tmp_path), channels={"std": ch})
        engine = await engine_for(redis, settings, {("default", "KIT"): 2})

        def html(request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, text="<html>Down for maintenance</html>")

        p = Propagator(redis, engine, settings, FAST)
        p.adapters["std"].client = httpx.AsyncClient(transport=httpx.MockTransport(html))
        try:
            await mark_dirty(redis, "default", [member_of("std", "main", "KIT")])
            await p.push_due("default", "std")
        finally:
            await p.adapters["std"].client.aclose()
            await p.close()
        attempts = await redis.hget(worker_keys("default").attempts,
                                    member_of("std", "main", "KIT"))
        assert attempts == b"1"
        assert await redis.zscore(worker_keys("default").due("std"),
                                  member_of("std", "main", "KIT")) is not None
    finally:
        sim.stop()


async def test_reconcile_goes_on_past_an_adapter_that_raises(redis: Redis,
                                                             tmp_path: Path) -> None:
    """Issue 15 item 5, reconciliation: one channel's adapter raising a non-PushError on a
    read neither stops that channel's sweep nor the other channels'."""
    sim = SimulatorServer("standard").start()
    try:
        settings = Settings(data_dir=str(tmp_path), channels={
            "broken": Channel(kind="standard", secret="s", api_url=sim.url,
                              rate_limit_per_s=0),
            "std": Channel(kind="standard", secret="s", api_url=sim.url, rate_limit_per_s=0)})
        engine = await engine_for(redis, settings, {("default", "A"): 3, ("default", "B"): 3})
        sim.state.counts["A", "main"] = 1
        sim.state.counts["B", "main"] = 1
        reads: list[str] = []

        class Raising(ChannelAdapter):
            async def get_available(self, sku: str, location: str) -> int | None:
                reads.append(sku)
                raise ValueError("unexpected body")

        async with httpx.AsyncClient() as client:
            adapters = {"broken": Raising("broken", settings.channels["broken"], client),
                        "std": adapter_for("std", settings.channels["std"], client)}
            drifts = await reconcile(redis, engine, settings, adapters)
        assert reads == ["A", "B"]
        assert sorted((d.channel, d.sku) for d in drifts) == [("std", "A"), ("std", "B")]
    finally:
        sim.stop()


async def test_reconcile_reads_a_catalogue_in_batched_calls(redis: Redis,
                                                            tmp_path: Path) -> None:
    """Reads go through adapter.read_batch, read_limit targets per call slot: 250 SKUs on
    Shopify are read in 3 calls, not 250 (at 2 calls/s a 3,000-SKU sweep took 75 runs)."""
    sim = SimulatorServer("shopify").start()
    try:
        settings = Settings(data_dir=str(tmp_path), channels={"shop": Channel(
            kind="shopify", secret="s", api_url=sim.url, access_token="t",
            inventory_item_skus={str(1000 + i): f"S{i:03d}" for i in range(250)},
            rate_limit_per_s=0)})
        engine = await engine_for(redis, settings,
                                  {("default", f"S{i:03d}"): 5 for i in range(250)})
        for i in range(250):
            sim.state.counts[str(1000 + i), "main"] = 4  # every count drifted by one
        async with httpx.AsyncClient() as client:
            adapters = {"shop": adapter_for("shop", settings.channels["shop"], client)}
            drifts = await reconcile(redis, engine, settings, adapters)
        assert len(drifts) == 250
        assert sim.state.calls == 3, sim.state.calls
        assert await redis.hget(worker_keys("default").reconcile_cursor, "shop") is None
    finally:
        sim.stop()


def test_a_change_that_moves_no_available_is_pushed_only_to_its_own_channel() -> None:
    """A storefront commit (reserved -> committed) or a shipment shows the same count on every
    channel: no push (a quarter to a third of the demo's pushed values repeated the channel's
    count). A channel's order that took units held for it moved that channel's own figure by
    its own rule: that channel alone is pushed."""
    from stockgate.models import Event, EventSource

    settings = Settings(channels={"std": channel(), "shop": Channel(
        kind="shopify", secret="s", api_url="http://127.0.0.1:9")})

    def event(delta: dict[str, int], source: str = "") -> Event:
        return Event(ts=0, tenant="default", type="commit", sku="MUG", location="main",
                     delta=delta, source=EventSource(channel=source))

    assert propagation.targets(settings, event({"reserved": -2, "committed": 2})) == []
    assert propagation.targets(settings, event({"on_hand": -2, "committed": -2})) == []
    assert propagation.targets(settings, event({"reserved": -2, "committed": 2}, "shop")) == [
        member_of("shop", "main", "MUG")]
    assert sorted(propagation.targets(settings, event({"committed": 1}, "shop"))) == [
        member_of("shop", "main", "MUG"), member_of("std", "main", "MUG")]
