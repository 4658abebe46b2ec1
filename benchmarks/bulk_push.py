"""How long one bulk change of thousands of SKUs takes to reach every channel, and in how many
calls, against the one-call-per-SKU arithmetic (issue 10's bulk bar).

    python -m benchmarks.bulk_push [--skus 3000] [--limit 60] [--mapped] [--claim-batch N]

A fresh embedded server, the three channel simulators with their real limits
(loadtests/bulk.py says which and why), and the real arq worker with the production
WorkerConfig, in this process. Two changes of every SKU, timed separately:
- cold: the first the channels hear of these SKUs: every adapter finds its items by SKU (the
  lookups share the channel's limits with the pushes), and a fresh worker's adapters know none;
- warm: a second change of the same SKUs: the ids are known, and Shopify's pushes compare
  against the counts the first change left (changeFromQuantity).
--mapped configures every item's channel id (inventory_item_skus, variant_skus), so no change
needs a lookup; --claim-batch sets PropagationConfig.claim_batch (default 250), which caps
the items of one push below BigCommerce's 2,000.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import tempfile
from collections.abc import AsyncIterator

import msgspec
from arq.worker import create_worker
from redis.asyncio import Redis

from loadtests import bulk
from stockgate.embedded import EmbeddedRedis
from stockgate.settings import Settings
from stockgate.stock import StockEngine
from workers.runtime import WorkerConfig
from workers.settings import WorkerSettings, worker_kwargs


@contextlib.asynccontextmanager
async def running_worker(settings: Settings, redis_url: str,
                         config: WorkerConfig) -> AsyncIterator[None]:
    """The real arq worker (WorkerSettings, its start-up hook) in this event loop."""
    worker = create_worker(WorkerSettings, **worker_kwargs(settings, redis_url, config),
                           handle_signals=False)
    task = asyncio.create_task(worker.async_run())
    try:
        for _ in range(500):
            if "runtime" in worker.ctx:
                break
            await asyncio.sleep(0.02)
        else:
            raise RuntimeError("the worker did not start")
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await worker.close()


async def run(skus: int, limit_s: float, *, mapped: bool = False,
              claim_batch: int | None = None) -> list[bulk.BulkFigures]:
    names = bulk.sku_names(skus)
    config = WorkerConfig()
    if claim_batch is not None:
        config = msgspec.structs.replace(config, propagation=msgspec.structs.replace(
            config.propagation, claim_batch=claim_batch))
    with tempfile.TemporaryDirectory() as data_dir:
        server = EmbeddedRedis(data_dir, durability="everysec")
        server.start()
        sims = bulk.start_simulators()
        redis = Redis.from_url(server.url, max_connections=1000)
        try:
            ids = bulk.catalogue_ids(sims, names) if mapped else None
            settings = Settings(data_dir=data_dir, channels=bulk.channel_config(sims, ids=ids))
            engine = StockEngine(redis, settings)
            await engine.load_scripts()
            print(f"{skus:,} SKUs; worker: production WorkerConfig, claim_batch "
                  f"{config.propagation.claim_batch}; item ids "
                  f"{'mapped in the config' if mapped else 'found by SKU'}", end="\n\n")
            async with running_worker(settings, server.url, config):
                figures = []
                for phase, delta in (("cold", 40), ("warm", -15)):
                    figures.append(await bulk.measure(
                        engine, sims, names, phase=phase, delta=delta,
                        claim_batch=config.propagation.claim_batch, within_s=limit_s))
                    print(bulk.report(figures[-1]), end="\n\n", flush=True)
            engine.scripts.close()
            return figures
        finally:
            await redis.aclose()
            bulk.stop_simulators(sims.values())
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skus", type=int, default=3000)
    parser.add_argument("--limit", type=float, default=60.0,
                        help="seconds to wait for each change at most")
    parser.add_argument("--mapped", action="store_true",
                        help="configure every item's channel id: no lookups by SKU")
    parser.add_argument("--claim-batch", type=int, default=None,
                        help="PropagationConfig.claim_batch (default 250)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    figures = asyncio.run(run(args.skus, args.limit, mapped=args.mapped,
                              claim_batch=args.claim_batch))
    raise SystemExit(0 if all(f.seconds is not None for f in figures) else 1)


if __name__ == "__main__":
    main()
