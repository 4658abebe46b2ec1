"""What one worker process runs besides arq's jobs: the outbox consumer and the pusher, as
long-running tasks started in arq's on_startup (one arq job per event would pay arq's
bookkeeping per event and make a crash redo whole jobs instead of outbox entries)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import msgspec

from stockgate.activity import Tally
from stockgate.alerts import raise_alert
from stockgate.audit import AuditStore, audit_store
from stockgate.cluster import Store
from stockgate.settings import Settings
from stockgate.stock import StockEngine
from workers.outbox import OutboxConfig, OutboxConsumer
from workers.propagation import PropagationConfig, Propagator
from workers.queue import FetchConfig, RetryConfig
from workers.reconcile import ReconcileConfig

log = logging.getLogger("stockgate.worker")

# How long stop() waits for the outbox and push tasks to end, then again once cancelled.
STOP_WAIT_S = 2.0
# A failed outbox or push task starts again after this long, doubling up to the maximum.
RESTART_MIN_S = 0.5
RESTART_MAX_S = 10.0
# Failures in a row of one task before a worker_failing alert (about 20 s of restarts).
FAILURES_BEFORE_ALERT = 5


class RedisTimeouts(msgspec.Struct, frozen=True):
    """Bounds on every Redis call of a worker process: arq's pool, and through it the stock
    engine, the outbox consumer and the pusher. The budget and why each number is what it is:
    docs/worker-timeouts.md."""

    # A TCP connect to a healthy Redis takes well under a millisecond on a LAN; 2 s leaves
    # room for one lost SYN (retransmitted after 1 s).
    connect_s: float = 2.0
    # Longest wait for one reply. Above the slowest healthy reply (an fsync=always stall of
    # ~1 s, the outbox's XREADGROUP block) and below the expiry job's 10 s and the pusher's
    # 15 s lease, so a frozen Redis fails a call before those run out.
    read_s: float = 5.0
    # A pooled connection idle this long is PINGed before use, so a connection a failover or
    # a NAT dropped silently fails on the PING, before a command of unknown outcome is sent.
    health_check_s: int = 30
    # At start, before arq's first call: wait this many times this long for Redis to answer.
    start_retries: int = 10
    start_retry_delay_s: float = 1.0


class WorkerConfig(msgspec.Struct, frozen=True):
    """Tuning of one worker process; the defaults are for production, tests shorten them."""

    outbox: OutboxConfig = OutboxConfig()
    propagation: PropagationConfig = PropagationConfig()
    fetch: FetchConfig = FetchConfig()
    # Retries of judging a count a channel reported (the webhook was answered already).
    count: RetryConfig = RetryConfig()
    reconcile: ReconcileConfig = ReconcileConfig()
    redis: RedisTimeouts = RedisTimeouts()

    def __post_init__(self) -> None:
        # A blocking XREADGROUP holds its reply back for up to block_ms: at or past the read
        # timeout every quiet read would fail as a timeout and drop its connection.
        if self.outbox.block_ms >= self.redis.read_s * 1000 / 2:
            raise ValueError(f"outbox.block_ms ({self.outbox.block_ms}) must stay well below "
                             f"the Redis read timeout ({self.redis.read_s} s)")


async def supervised(name: str, run: Callable[[asyncio.Event], Awaitable[None]],
                     stop: asyncio.Event,
                     failed: Callable[[str, int, Exception], Awaitable[None]]) -> None:
    """Runs `run(stop)` until it returns, starting it again when it fails, after a backoff
    (RESTART_MIN_S doubling to RESTART_MAX_S). The outbox and push tasks retry their own
    batches, but what each does once before its loop (the outbox's group check, the pusher's
    migration) met a Redis that froze as the worker started, and the task ended: no error
    until shutdown, and no outbox read or push for the life of the process. `failed` hears of
    each failure with how many in a row (a run longer than RESTART_MAX_S starts a new row)."""
    delay = RESTART_MIN_S
    in_a_row = 0
    last = ""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        started = loop.time()
        try:
            await run(stop)
            return
        except Exception as exc:
            if loop.time() - started > RESTART_MAX_S:
                delay, in_a_row = RESTART_MIN_S, 0  # a new failure, not the same one again
            in_a_row += 1
            said = f"{type(exc).__name__}: {exc}"
            if said != last:  # the traceback once per kind of failure, then one line
                log.exception("worker task %s failed; starting it again in %.1fs", name, delay)
            else:
                log.error("worker task %s failed again (%d in a row, %s); starting it again "
                          "in %.1fs", name, in_a_row, said[:200], delay)
            last = said
            await failed(name, in_a_row, exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()
            delay = min(delay * 2, RESTART_MAX_S)


class WorkerRuntime:
    def __init__(self, settings: Settings, redis: Store,
                 config: WorkerConfig | None = None) -> None:
        self.settings = settings
        self.redis = redis
        self.config = config or WorkerConfig()
        self.engine = StockEngine(redis, settings)
        self.audit: AuditStore = audit_store(settings)
        # The console's counters of this process (changes, oversell attempts, pushes), written
        # to Redis once a second by their own task and once more at stop.
        self.tally = Tally()
        self.propagator = Propagator(redis, self.engine, settings, self.config.propagation,
                                     tally=self.tally)
        self.consumer = OutboxConsumer(redis, settings, self.audit, self.config.outbox,
                                       tally=self.tally)
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.restarts: dict[str, int] = {}  # task name -> times started again after failing

    async def start(self) -> None:
        await self.engine.load_scripts()
        # Lazy for PostgreSQL: a worker starts (and pushes, expires holds) while it is down.
        await self.audit.open()
        await self.consumer.ensure_groups()
        await self.consumer.forget_idle_consumers()
        self._tasks = [
            asyncio.create_task(self._supervised("outbox", self.consumer.run), name="outbox"),
            asyncio.create_task(self._supervised("propagation", self.propagator.run),
                                name="propagation"),
            asyncio.create_task(self.tally.run(self.redis, self._stop), name="activity"),
        ]
        log.info("worker %s started for tenants %s", self.consumer.name,
                 ", ".join(self.consumer.tenants))

    async def _supervised(self, name: str,
                          run: Callable[[asyncio.Event], Awaitable[None]]) -> None:
        await supervised(name, run, self._stop, self._task_failed)

    async def _task_failed(self, name: str, in_a_row: int, exc: Exception) -> None:
        self.restarts[name] = self.restarts.get(name, 0) + 1
        if in_a_row != FAILURES_BEFORE_ALERT:
            return
        # A task that fails every time it starts (a bug, a config the code cannot run
        # with) reads no outbox or pushes nothing for every tenant: told, not only logged.
        detail = (f"worker {self.consumer.name}: its {name} task failed {in_a_row} times in "
                  f"a row and keeps being started again: {type(exc).__name__}: {exc}"[:500])
        for tenant in self.consumer.tenants:
            try:
                await raise_alert(self.redis, tenant, "worker_failing", detail,
                                  once=f"worker:{self.consumer.name}:{name}",
                                  once_ttl_s=3600)
            except Exception as alert_exc:  # Redis down: the cause, most likely; logged
                log.warning("could not record the worker_failing alert: %s",
                            type(alert_exc).__name__)
                return

    async def stop(self) -> None:
        self._stop.set()
        # A blocked XREADGROUP returns within block_ms and a push pass within a Redis read
        # timeout. Every wait here is bounded (asyncio.wait, never an await of the task
        # itself, which would hang on a task that does not end when cancelled), so that the
        # consumer is still deleted and the stores closed.
        tasks = set(self._tasks)
        if tasks:
            _, running = await asyncio.wait(tasks, timeout=STOP_WAIT_S)
            for task in running:
                task.cancel()
            if running:
                _, stuck = await asyncio.wait(running, timeout=STOP_WAIT_S)
                for task in stuck:
                    log.error("worker task %s did not stop when cancelled", task.get_name())
            for task in tasks:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    log.error("worker task %s had failed: %r", task.get_name(),
                              task.exception())
        # The last counts of the outbox and push tasks, which have ended now (flush never
        # raises; a Redis that is down costs them).
        await self.tally.flush(self.redis)
        try:
            # Bounded like any call by the read timeout; a Redis that is down now leaves the
            # consumer for the next start to delete.
            await self.consumer.leave()
        except Exception as exc:
            log.warning("outbox consumer %s not deleted: %s", self.consumer.name,
                        type(exc).__name__)
        await self.propagator.close()
        await self.audit.close()
        self.engine.scripts.close()
