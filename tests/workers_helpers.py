"""Helpers for the worker tests: channel simulators, settings wired to them, an in-process
arq worker, and polling for an observable condition."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis

from stockgate.audit import audit_store
from stockgate.deliveries import pending_deliveries
from stockgate.settings import ApiKey, Channel, Settings
from stockgate.stock import StockEngine
from workers.outbox import OutboxConfig, pending_entries, unread_entries
from workers.propagation import PropagationConfig
from workers.runtime import WorkerConfig
from workers.settings import build_worker
from workers.simulators import SimulatorServer

OPERATOR_KEY = "op-secret-key"
FAST = WorkerConfig(
    outbox=OutboxConfig(batch=200, block_ms=50, claim_min_idle_ms=1000, claim_every_s=0.5),
    propagation=PropagationConfig(max_attempts=3, backoff_base_s=0.1, backoff_max_s=0.5,
                                  lease_ms=3000),
)


def channel_for(kind: str, sim: SimulatorServer, rate: float = 200.0) -> Channel:
    return Channel(kind=kind, secret="s3cret", api_url=sim.url, access_token="token",
                   rate_limit_per_s=rate)


def settings_with(tmp_path: Path, channels: dict[str, Channel], **extra: object) -> Settings:
    # In Cluster mode (tests/conftest.py) arq's queue has a plain server of its own.
    extra.setdefault("queue_redis_url", os.environ.get("STOCKGATE_TEST_QUEUE_URL", ""))
    return Settings(data_dir=str(tmp_path), channels=channels,
                    api_keys={"ops": ApiKey(secret=OPERATOR_KEY, scopes=("operator",))},
                    **extra)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running_worker(settings: Settings, redis_url: str, config: WorkerConfig = FAST,
                         **overrides: object) -> AsyncIterator[object]:
    """The worker `stockgate worker` runs (WorkerSettings, cron, on_startup runtime) in this
    event loop. arq's own Worker would do for most tests, but its close() raises CancelledError
    when a cron job is cut off mid-start, which failed whole CI runs on a busy machine."""
    worker = build_worker(settings, redis_url, config, handle_signals=False, **overrides)
    task = asyncio.create_task(worker.async_run())
    try:
        await wait_for(lambda: _started(worker), 10)
        yield worker
    finally:
        await stop_worker(worker, task)


async def stop_worker(worker: Any, task: asyncio.Task[None]) -> None:
    """Cancel the worker until it ends, within a bound: on Python 3.11 a cancellation can
    be swallowed by an asyncio.wait_for finishing at that moment (in arq or below), and one
    bare `await task` then hung a whole CI run. Stuck, it names what is still running."""
    for _ in range(100):
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=0.1)
        if done:
            break
    else:
        _dump_tasks("the worker did not stop when cancelled")
        raise AssertionError("the worker did not stop within 10 s of cancelling it")
    closing = asyncio.ensure_future(worker.close())
    done, _ = await asyncio.wait({closing}, timeout=30)
    if not done:
        _dump_tasks("the worker's close() did not return")
        closing.cancel()
        raise AssertionError("the worker's close() did not return within 30 s")
    closing.result()


def _dump_tasks(why: str) -> None:
    print(f"\n{why}; tasks still running:", file=sys.stderr)
    for running in asyncio.all_tasks():
        if not running.done():
            print(f"  {running.get_name()}: {running.get_coro()!r}", file=sys.stderr)
            running.print_stack(limit=8, file=sys.stderr)


async def _started(worker: object) -> bool:
    return "runtime" in worker.ctx  # type: ignore[attr-defined]


async def wait_for(check: Callable[[], Awaitable[bool]], within: float,
                   interval: float = 0.02) -> float:
    """Seconds until `check` held; AssertionError after `within` seconds."""
    start = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - start
        if time.monotonic() - start > within:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(interval)


async def settled(redis: Redis, tenant: str = "default") -> bool:
    """Every outbox entry read and acknowledged, no delivery waiting."""
    return (await unread_entries(redis, tenant) == 0 and await pending_entries(redis, tenant) == 0
            and await pending_deliveries(redis, tenant) == 0)


async def channels_match(engine: StockEngine, sims: dict[str, SimulatorServer],
                         skus: list[str], tenant: str = "default") -> bool:
    for sku in skus:
        view = await engine.stock(tenant, sku)
        for name, sim in sims.items():
            if sim.state.count(sku, "main") != view.channels[name]:
                return False
    return True


async def audit_ids(settings: Settings, tenant: str = "default") -> list[str]:
    store = audit_store(settings)
    await store.open()
    try:
        from stockgate.audit import EventQuery

        ids, cursor = [], None
        while True:
            page = await store.query(EventQuery(tenant=tenant, cursor=cursor, limit=1000))
            ids += [e.id for e in page.events]
            if page.next_cursor is None:
                return ids
            cursor = page.next_cursor
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def gateway_client(settings: Settings, redis: Redis) -> AsyncIterator[httpx.AsyncClient]:
    """The real gateway app (create_app, its lifespan) behind an in-process HTTP client."""
    from gateway.app import create_app

    app = create_app(settings, redis)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://stockgate",
            headers={"Authorization": f"Bearer {OPERATOR_KEY}"}) as client:
        yield client
