"""arq WorkerSettings: the jobs, the cron schedule, the msgspec serializer and short timeouts.

Job timeouts are short on purpose: after a kill -9, arq re-runs a job only once its
in-progress key expires (the longest timeout + 10 s). The outbox itself does not depend on
that: it is consumed by long-running tasks started in on_startup (workers.runtime).
"""

from __future__ import annotations

from typing import Any

from arq.connections import RedisSettings
from arq.cron import cron

from stockgate.settings import Settings
from workers.channel_counts import apply_channel_count
from workers.expiry import expire_holds
from workers.queue import fetch_order
from workers.reconcile import reconcile
from workers.runtime import WorkerConfig, WorkerRuntime
from workers.serializer import job_deserializer, job_serializer

JOB_TIMEOUT_S = 30
EVERY_SECOND = set(range(60))


async def startup(ctx: dict[str, Any]) -> None:
    runtime = WorkerRuntime(ctx["settings"], ctx["redis"], ctx.get("worker_config"))
    await runtime.start()
    ctx["runtime"] = runtime


async def shutdown(ctx: dict[str, Any]) -> None:
    runtime: WorkerRuntime | None = ctx.get("runtime")
    if runtime is not None:
        await runtime.stop()


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
    on_startup = startup
    on_shutdown = shutdown
    job_serializer = job_serializer
    job_deserializer = job_deserializer
    job_timeout = JOB_TIMEOUT_S
    max_tries = 3
    keep_result = 60
    # Cron is checked once per poll: a short poll keeps expiry close to the second.
    poll_delay = 0.2


def worker_kwargs(settings: Settings, redis_url: str,
                  config: WorkerConfig | None = None) -> dict[str, Any]:
    return {
        "redis_settings": RedisSettings.from_dsn(redis_url),
        "ctx": {"settings": settings, "worker_config": config},
    }
