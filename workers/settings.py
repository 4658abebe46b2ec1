"""arq WorkerSettings: the jobs, the cron schedule, the msgspec serializer and short timeouts,
and the worker that runs them with bounded Redis calls.

Job timeouts are short on purpose: after a kill -9, arq re-runs a job only once its
in-progress key expires (the longest timeout + 10 s). The outbox itself does not depend on
that: it is consumed by long-running tasks started in on_startup (workers.runtime).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import Any

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix
from arq.cron import cron
from arq.utils import timestamp_ms
from arq.worker import Worker, get_kwargs
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stockgate.cluster import connect, is_cluster_url
from stockgate.jobs import job_deserializer, job_serializer
from stockgate.redis_pool import ConcurrentConnectPool
from stockgate.settings import ConfigError, Settings
from workers.channel_counts import apply_channel_count
from workers.ebay_orders import EBAY_POLL_JOB, ebay_channels, ebay_poll_job
from workers.expiry import expire_holds
from workers.queue import fetch_order
from workers.reconcile import reconcile
from workers.runtime import RedisTimeouts, WorkerConfig, WorkerRuntime

log = logging.getLogger("stockgate.worker")

JOB_TIMEOUT_S = 30
EVERY_SECOND = set(range(60))
EXPIRE_JOB = "cron:expire_job"
# What a Redis that is down, restarting or frozen raises through redis-py.
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)
# While Redis stays down, say so this often, not on every poll.
OUTAGE_LOG_EVERY_S = 30.0
# After a stop signal, the main task is cancelled again this often until it ends (a cancel can
# be lost: StockgateWorker.handle_sig). Longer than any clean-up a cancel runs.
RECANCEL_S = 1.0


class QuietCron(logging.Filter):
    """arq logs the start and the end of every job at INFO: for the per-second expiry that is
    172,800 lines a day saying nothing. Those lines are kept at DEBUG (shown only when the
    arq.worker logger is at DEBUG); every other job still logs, and so does a failing expiry
    (arq logs failures at ERROR)."""

    def __init__(self, *names: str) -> None:
        super().__init__()
        self.suffixes = tuple(f":{name}" for name in names) + names

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or not isinstance(record.args, tuple):
            return True
        # arq's job lines carry "<job id>:<function>" (or the bare function) as an argument.
        if not any(isinstance(a, str) and a.endswith(self.suffixes) for a in record.args):
            return True
        if not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


def quiet_cron_logs() -> None:
    """Install QuietCron on arq's worker logger, once per process."""
    arq_log = logging.getLogger("arq.worker")
    if not any(isinstance(f, QuietCron) for f in arq_log.filters):
        arq_log.addFilter(QuietCron(EXPIRE_JOB, EBAY_POLL_JOB))


async def startup(ctx: dict[str, Any]) -> None:
    quiet_cron_logs()
    # The stock lives on arq's Redis unless it has one of its own (a Cluster, see
    # worker_kwargs).
    stock = ctx.get("stock_redis") or ctx["redis"]
    runtime = WorkerRuntime(ctx["settings"], stock, ctx.get("worker_config"))
    await runtime.start()
    ctx["runtime"] = runtime


async def shutdown(ctx: dict[str, Any]) -> None:
    runtime: WorkerRuntime | None = ctx.get("runtime")
    if runtime is not None:
        await runtime.stop()
    if ctx.get("stock_redis") is not None:
        await ctx["stock_redis"].aclose()


async def expire_job(ctx: dict[str, Any]) -> int:
    runtime: WorkerRuntime = ctx["runtime"]
    return await expire_holds(runtime.engine, runtime.settings.tenant_names())


async def reconcile_job(ctx: dict[str, Any]) -> int:
    runtime: WorkerRuntime = ctx["runtime"]
    drifts = await reconcile(runtime.redis, runtime.engine, runtime.settings,
                             runtime.propagator.adapters, runtime.config.reconcile)
    return len(drifts)


class WorkerSettings:
    """Static part of the worker's arq settings; `worker_kwargs` adds Redis and the context."""

    functions = [fetch_order, apply_channel_count]
    cron_jobs = [
        # unique (the default): with several workers, each second runs once.
        cron(expire_job, second=EVERY_SECOND, microsecond=0, timeout=10, max_tries=1,
             run_at_startup=True),
        cron(reconcile_job, second={30}, timeout=JOB_TIMEOUT_S, max_tries=1),
    ]
    # Added by build_worker only when an eBay channel is configured: a per-second job is
    # Redis traffic on every worker (and, with Redis frozen, one more call stuck each second).
    ebay_cron = cron(ebay_poll_job, second=EVERY_SECOND, microsecond=0,
                     timeout=JOB_TIMEOUT_S, max_tries=1)
    on_startup = startup
    on_shutdown = shutdown
    job_serializer = job_serializer
    job_deserializer = job_deserializer
    job_timeout = JOB_TIMEOUT_S
    max_tries = 3
    keep_result = 60
    # Cron is checked once per poll: a short poll keeps expiry close to the second.
    poll_delay = 0.2


def worker_redis(redis_url: str, timeouts: RedisTimeouts) -> ArqRedis:
    """arq's client with the worker's timeouts. arq's own pool (RedisSettings) sets only a
    connect timeout, so a frozen Redis would hold every call until the kernel drops the socket
    (about 15 minutes); the stock engine's Wire takes its timeouts from this pool too."""
    pool = ConcurrentConnectPool.from_url(redis_url, socket_connect_timeout=timeouts.connect_s,
                                   socket_timeout=timeouts.read_s,
                                   health_check_interval=timeouts.health_check_s)
    return ArqRedis(pool, job_serializer=job_serializer, job_deserializer=job_deserializer)


def worker_kwargs(settings: Settings, redis_url: str,
                  config: WorkerConfig | None = None) -> dict[str, Any]:
    """arq's pool on the queue's Redis and, when the stock lives elsewhere (a Cluster), a
    client of its own for the stock (`stock_redis` in the context)."""
    timeouts = (config or WorkerConfig()).redis
    queue_url = settings.queue_redis_url or redis_url
    if is_cluster_url(queue_url):
        raise ConfigError("arq's job queue cannot live on a Redis Cluster: set "
                          "queue_redis_url (QUEUE_REDIS_URL) to a plain Redis")
    ctx: dict[str, Any] = {"settings": settings, "worker_config": config}
    if queue_url != redis_url:
        ctx["stock_redis"] = connect(redis_url, socket_connect_timeout=timeouts.connect_s,
                                     socket_timeout=timeouts.read_s,
                                     health_check_interval=timeouts.health_check_s)
    return {"redis_pool": worker_redis(queue_url, timeouts), "ctx": ctx}


class StockgateWorker(Worker):
    """arq's worker, kept alive through a Redis outage, and shut down completely.

    With read timeouts, a Redis that is frozen or down makes arq's poll raise, and arq 0.28
    ends its main loop on any error there (the process would exit after a 5 s stall). Here a
    failed poll is logged and the next one, poll_delay later, tries again; cron, queued jobs and
    the outbox resume by themselves when Redis answers. Written against arq 0.28.0 (pinned).
    """

    def __init__(self, *args: Any, redis_timeouts: RedisTimeouts | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.redis_timeouts = redis_timeouts or RedisTimeouts()
        self.redis_down_since: float | None = None
        self._outage_logged_at = 0.0

    async def main(self) -> None:
        await self._wait_for_redis()
        await super().main()

    def handle_sig(self, signum: int) -> None:
        """arq's stop (one cancel of the main task), then again every RECANCEL_S until it
        ends. redis-py 5 sends every command under asyncio.wait_for, which on Python 3.11
        returns the command's result when a cancel lands as the command completes: the
        cancel is lost, and the worker polled on after SIGTERM until its supervisor killed it
        (seen as a test run that hung in a worker's shutdown)."""
        super().handle_sig(signum)
        self.loop.call_later(RECANCEL_S, self._cancel_again)

    def _cancel_again(self) -> None:
        task = self.main_task
        if task is not None and not task.done():
            log.warning("worker still running %.0fs after its stop; cancelling again",
                        RECANCEL_S)
            task.cancel()
            self.loop.call_later(RECANCEL_S, self._cancel_again)

    async def _wait_for_redis(self) -> None:
        """arq's own pool retries its first connect; a pool passed in does not, so here."""
        timeouts = self.redis_timeouts
        for attempt in range(timeouts.start_retries + 1):
            try:
                await self.pool.ping()
                return
            except REDIS_DOWN as exc:
                if attempt == timeouts.start_retries:
                    raise
                log.warning("redis not answering at start (%s); %d tries left",
                            type(exc).__name__, timeouts.start_retries - attempt)
                await asyncio.sleep(timeouts.start_retry_delay_s)

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
        except REDIS_DOWN as exc:
            now = time.monotonic()
            if self.redis_down_since is None:
                self.redis_down_since = now
                self._outage_logged_at = now
                log.warning("redis unreachable (%s: %s); jobs and cron wait for it",
                            type(exc).__name__, exc)
            elif now - self._outage_logged_at >= OUTAGE_LOG_EVERY_S:
                self._outage_logged_at = now
                log.warning("redis still unreachable after %.0fs", now - self.redis_down_since)
            return
        if self.redis_down_since is not None:
            log.warning("redis reachable again after %.1fs",
                        time.monotonic() - self.redis_down_since)
            self.redis_down_since = None

    async def close(self) -> None:
        """arq's close, except that it always reaches on_shutdown. arq gathers its job tasks
        without return_exceptions, so one cancelled in arq's own bookkeeping around a job
        (most often the per-second expiry) raises CancelledError out of close(), and the
        runtime's stop (outbox consumer deleted, audit store closed) never ran."""
        if not self._handle_signals:
            self.handle_sig(signal.SIGUSR1)
        if not self._pool:
            return
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        with contextlib.suppress(*REDIS_DOWN):
            await self.pool.delete(self.health_check_key)
        try:
            if self.on_shutdown:
                await self.on_shutdown(self.ctx)
        finally:
            await self.pool.close(close_connection_pool=True)
            self._pool = None

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """arq's start_jobs, except that a Redis error gives back the job slot it took: arq
        returns the slot only on the paths that do not raise, so each failure there would
        leak one, and after max_jobs of them no job (expiry included) would ever run again."""
        for job_id_b in job_ids:
            await self.sem.acquire()
            if self.job_counter >= self.max_jobs:
                self.sem.release()
                return
            self.job_counter += 1
            job_id = job_id_b.decode()
            before = self.tasks.get(job_id)
            try:
                await self._start_job(job_id)
            finally:
                if self.tasks.get(job_id) is before:  # not started: the slot is free again
                    self.job_counter -= 1
                    self.sem.release()

    async def _start_job(self, job_id: str) -> None:
        in_progress_key = in_progress_key_prefix + job_id
        async with self.pool.pipeline(transaction=True) as pipe:
            await pipe.watch(in_progress_key)
            ongoing_exists = await pipe.exists(in_progress_key)
            score = await pipe.zscore(self.queue_name, job_id)
            if ongoing_exists or not score or score > timestamp_ms():
                # Running elsewhere, finished, or re-queued with a delay by another worker.
                return
            pipe.multi()
            pipe.psetex(in_progress_key, int(self.in_progress_timeout_s * 1000), b"1")
            try:
                await pipe.execute()
            except (ResponseError, WatchError):
                return  # started elsewhere since the check
            task = self.loop.create_task(self.run_job(job_id, int(score)))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task


def build_worker(settings: Settings, redis_url: str, config: WorkerConfig | None = None,
                 **overrides: Any) -> StockgateWorker:
    """The worker `stockgate worker` runs: WorkerSettings, this process's Redis and context."""
    kwargs = get_kwargs(WorkerSettings)
    if ebay_channels(settings):
        kwargs["cron_jobs"] = [*WorkerSettings.cron_jobs, WorkerSettings.ebay_cron]
    return StockgateWorker(**{**kwargs,
                              **worker_kwargs(settings, redis_url, config),
                              "redis_timeouts": (config or WorkerConfig()).redis,
                              **overrides})
