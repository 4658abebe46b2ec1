"""A bulk change of 3,000 SKUs reaches Shopify, WooCommerce and BigCommerce in batched calls
under the channels' real limits (issue 10's bulk bar), through the real worker.

Timings are printed (run with -s) and asserted with margin: the machine is shared. The
measured figures and their command are in docs/benchmarks.md."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from workers_helpers import running_worker, settings_with, settled, wait_for

from loadtests import bulk
from stockgate.deliveries import failed_deliveries
from stockgate.embedded import EmbeddedRedis
from stockgate.stock import StockEngine
from workers.runtime import WorkerConfig
from workers.settings import WorkerSettings
from workers.simulators import SimulatorServer

SKUS = 3000
# The bar is 10 s; asserted with room for a busy 2-core machine.
WARM_BOUND_S = 30.0
# The first change also finds every SKU's item on every channel (docs/benchmarks.md: on
# Shopify those lookups cost more points than the bucket holds).
COLD_BOUND_S = 40.0


@pytest.fixture
def sims() -> Iterator[dict[str, SimulatorServer]]:
    started = bulk.start_simulators()
    yield started
    bulk.stop_simulators(started.values())


async def test_bulk_change_reaches_every_channel_in_batches(
        redis: Redis, redis_server: EmbeddedRedis, tmp_path: Path,
        sims: dict[str, SimulatorServer]) -> None:
    settings = settings_with(tmp_path, bulk.channel_config(sims))
    engine = StockEngine(redis, settings)
    await engine.load_scripts()
    skus = bulk.sku_names(SKUS)
    config = WorkerConfig()  # production defaults: claim_batch 250, lease 15 s
    # Without the reconciliation cron: when its minute (second 30) came round during a phase
    # it re-marked targets still in flight, up to 6 more writes and 17 reads on BigCommerce,
    # and the write count depended on the clock (a CI run failed on it). This test counts
    # what a bulk change costs; reconciliation has tests of its own.
    no_reconcile = [c for c in WorkerSettings.cron_jobs if c.name != "cron:reconcile_job"]
    async with running_worker(settings, redis_server.url, config, cron_jobs=no_reconcile):
        cold = await bulk.measure(engine, sims, skus, phase="cold", delta=40,
                                  claim_batch=config.propagation.claim_batch,
                                  within_s=COLD_BOUND_S)
        print("\n" + bulk.report(cold))
        warm = await bulk.measure(engine, sims, skus, phase="warm", delta=-15,
                                  claim_batch=config.propagation.claim_batch,
                                  within_s=WARM_BOUND_S)
        print("\n" + bulk.report(warm))
        await wait_for(lambda: settled(redis), 10.0)
    assert await failed_deliveries(redis, "default") == []
    for figures, bound in ((cold, COLD_BOUND_S), (warm, WARM_BOUND_S)):
        for c in figures.channels:
            assert c.seconds is not None and c.seconds < bound, (figures.phase, c)
            assert c.converged_skus == SKUS
            # Batched: about one write per batch, against the 3,000 a call per SKU takes. A
            # claim may catch the outbox halfway through marking the change and go out
            # part-full (BigCommerce's 2,000-item claims: a handful of calls, not 2).
            batches = math.ceil(SKUS / c.batch_limit)
            assert batches <= c.writes <= 2 * batches + 6, (figures.phase, c)
            assert c.calls < SKUS / 10, (figures.phase, c)
    # Once the channels know the items, a change is its writes and nothing else.
    for c in warm.channels:
        assert c.calls == c.writes, c
    for name, sim in sims.items():
        view = await engine.stock("default", skus[-1])
        assert sim.state.count(skus[-1], "main") == view.channels[name] == 25
