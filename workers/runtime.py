"""What one worker process runs besides arq's jobs: the outbox consumer and the pusher, as
long-running tasks started in arq's on_startup (one arq job per event would pay arq's
bookkeeping per event and make a crash redo whole jobs instead of outbox entries)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import msgspec
from redis.asyncio import Redis

from stockgate.settings import Settings
from stockgate.stock import StockEngine
from workers.audit import AuditStore, audit_store
from workers.outbox import OutboxConfig, OutboxConsumer
from workers.propagation import PropagationConfig, Propagator
from workers.queue import FetchConfig
from workers.reconcile import ReconcileConfig

log = logging.getLogger("stockgate.worker")


class WorkerConfig(msgspec.Struct, frozen=True):
    """Tuning of one worker process; the defaults are for production, tests shorten them."""

    outbox: OutboxConfig = OutboxConfig()
    propagation: PropagationConfig = PropagationConfig()
    fetch: FetchConfig = FetchConfig()
    reconcile: ReconcileConfig = ReconcileConfig()


class WorkerRuntime:
    def __init__(self, settings: Settings, redis: Redis,
                 config: WorkerConfig | None = None) -> None:
        self.settings = settings
        self.redis = redis
        self.config = config or WorkerConfig()
        self.engine = StockEngine(redis, settings)
        self.audit: AuditStore = audit_store(settings)
        self.propagator = Propagator(redis, self.engine, settings, self.config.propagation)
        self.consumer = OutboxConsumer(redis, settings, self.audit, self.config.outbox)
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.engine.load_scripts()
        await self.audit.open()
        await self.consumer.ensure_groups()
        self._tasks = [
            asyncio.create_task(self.consumer.run(self._stop), name="outbox"),
            asyncio.create_task(self.propagator.run(self._stop), name="propagation"),
        ]
        log.info("worker %s started for tenants %s", self.consumer.name,
                 ", ".join(self.consumer.tenants))

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            # A blocked XREADGROUP returns within block_ms; do not wait longer than that.
            try:
                await asyncio.wait_for(task, timeout=2)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self.propagator.close()
        await self.audit.close()
        self.engine.scripts.close()
