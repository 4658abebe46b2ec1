"""Redis crashes (SIGKILL) in the middle of a burst of holds, then restarts from its
append-only file: every acknowledged hold must survive in strict mode, nothing may be doubled,
and the same engine (same client, same pool) recovers without a restart."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from stockgate.embedded import EmbeddedRedis
from stockgate.errors import StoreUnavailable
from stockgate.keys import tenant_keys
from stockgate.models import Line
from stockgate.settings import Settings
from stockgate.stock import StockEngine

SKU = "DROP-1"
SHOPPERS = 40


async def burst_through_crash(server: EmbeddedRedis, tmp_path: Path) -> tuple[set[str], Redis]:
    """Shoppers place holds (retrying the same hold id after an error, as a storefront would)
    while the server is killed and restarted. Returns the acknowledged hold ids."""
    redis = Redis.from_url(server.url, max_connections=200, socket_timeout=2)
    engine = StockEngine(redis, Settings(data_dir=str(tmp_path)))
    await engine.load_scripts()
    await engine.adjust("default", SKU, reason="receipt", idempotency_key="seed", delta=100_000)
    acked: set[str] = set()
    outages = 0
    crash_done = asyncio.Event()

    async def shopper(n: int) -> None:
        nonlocal outages
        i = 0
        # Keep shopping until the server has been back for a while.
        while not crash_done.is_set() or i < 30:
            hold_id = f"s{n}-{i}"
            deadline = time.monotonic() + 15
            while True:
                try:
                    await engine.hold("default", [Line(SKU, 1)], hold_id=hold_id)
                    acked.add(hold_id)
                    break
                except StoreUnavailable:
                    outages += 1
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.05)
            i += 1

    async def crash() -> None:
        await asyncio.sleep(0.4)
        server.kill()
        await asyncio.sleep(0.5)
        server.start()
        crash_done.set()

    await asyncio.gather(crash(), *(shopper(n) for n in range(SHOPPERS)))
    assert outages > 0, "the crash happened while no request was in flight"
    return acked, redis


async def holds_in_store(redis: Redis) -> tuple[dict[str, int], int, int]:
    k = tenant_keys("default")
    reserved = int(await redis.hget(k.stock(SKU), "main|reserved") or 0)
    events = await redis.xrange(k.outbox)
    hold_events = [e for _, e in events if b'"type":"hold"' in e[b"e"]]
    held: dict[str, int] = {}
    async for key in redis.scan_iter(match=k.prefix + "hold:*", count=1000):
        held[key.decode().rsplit(":", 1)[1]] = 1
    return held, reserved, len(hold_events)


@pytest.mark.parametrize("durability", ["strict", "everysec"])
async def test_acknowledged_holds_survive_a_redis_crash(
    tmp_path: Path, durability: str, capsys: pytest.CaptureFixture[str]
) -> None:
    server = EmbeddedRedis(tmp_path / "redis", durability=durability)  # type: ignore[arg-type]
    server.start()
    try:
        acked, redis = await burst_through_crash(server, tmp_path)
        held, reserved, hold_events = await holds_in_store(redis)
        lost = acked - held.keys()
        # Never doubled: one record, one reserved unit and one event per hold in the store.
        assert reserved == len(held) == hold_events
        view = await StockEngine(redis, Settings()).stock("default", SKU)
        assert view.locations["main"].available == 100_000 - len(held)
        with capsys.disabled():
            print(f"\n[{durability}] acknowledged holds: {len(acked)}, "
                  f"lost after SIGKILL + restart: {len(lost)}")
        if durability == "strict":
            assert not lost, f"{len(lost)} acknowledged holds lost in strict mode"
        await redis.aclose()
    finally:
        server.stop()


async def test_wait_aof_acknowledges_only_what_reached_disk(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis", durability="everysec")
    server.start()
    redis = Redis.from_url(server.url)
    try:
        engine = StockEngine(redis, Settings(data_dir=str(tmp_path), wait_aof=True))
        await engine.load_scripts()
        await engine.adjust("default", SKU, reason="receipt", idempotency_key="seed", delta=5)
        reply, _ = await engine.hold("default", [Line(SKU, 1)], hold_id="h1")
        assert reply.hold_id == "h1"
        # Without an append-only file nothing can be confirmed: refuse to acknowledge.
        await redis.config_set("appendonly", "no")
        with pytest.raises(StoreUnavailable):
            await engine.hold("default", [Line(SKU, 1)], hold_id="h2")
        await redis.config_set("appendonly", "yes")
        await asyncio.sleep(0.3)  # the rewrite that turning AOF on starts
        replay, replayed = await engine.hold("default", [Line(SKU, 1)], hold_id="h2")
        assert replayed and replay.hold_id == "h2"
        assert (await engine.stock("default", SKU)).locations["main"].reserved == 2
    finally:
        await redis.aclose()
        server.stop()


async def test_a_server_that_cannot_take_writes_is_unavailable_not_an_error(
    redis: Redis, engine: StockEngine
) -> None:
    await engine.adjust("default", SKU, reason="receipt", idempotency_key="seed", delta=5)
    # As on a primary that lost its replicas: Redis refuses writes (NOREPLICAS), like it
    # does on a full disk (MISCONF) or memory (OOM).
    await redis.config_set("min-replicas-to-write", 1)
    try:
        with pytest.raises(StoreUnavailable):
            await engine.hold("default", [Line(SKU, 1)], hold_id="refused")
    finally:
        await redis.config_set("min-replicas-to-write", 0)
    # Refused before its first write: the retry is a first attempt, and reserves once.
    reply, replayed = await engine.hold("default", [Line(SKU, 1)], hold_id="refused")
    assert reply.hold_id == "refused" and not replayed
    assert (await engine.stock("default", SKU)).locations["main"].reserved == 1
