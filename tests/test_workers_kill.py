"""kill -9 of a worker process in the middle of the outbox: a second worker claims what the
first left pending and finishes; the audit trail has every event once, and every channel
ends at the canonical count."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from redis.asyncio import Redis
from workers_helpers import audit_ids, channels_match, settled, wait_for

from stockgate.embedded import EmbeddedRedis
from stockgate.keys import tenant_keys
from stockgate.models import Line
from stockgate.settings import load_settings
from stockgate.stock import StockEngine
from workers.outbox import pending_entries
from workers.simulators import SimulatorServer

SKUS = [f"K-{i}" for i in range(10)]
HOLDS = 3000
# A small batch and a slow channel make the kill land between reading and acknowledging.
WORKER = """
import sys
from stockgate.settings import load_settings
from workers.main import run_worker
from workers.outbox import OutboxConfig
from workers.runtime import WorkerConfig
run_worker(load_settings(sys.argv[1]), WorkerConfig(
    outbox=OutboxConfig(batch=50, block_ms=50, claim_min_idle_ms=1000, claim_every_s=0.5)))
"""


def start_worker(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-c", WORKER, str(config)], stdout=out,
                                stderr=subprocess.STDOUT, cwd=Path(__file__).parent.parent)


def audit_rows(path: Path) -> int:
    try:
        with sqlite3.connect(path, timeout=5) as db:
            return db.execute("SELECT count(*) FROM audit_events").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


async def test_kill_9_mid_batch_loses_nothing(redis: Redis, redis_server: EmbeddedRedis,
                                              tmp_path: Path) -> None:
    sim = SimulatorServer("shopify").start()
    sim.state.delay_s = 0.01
    config = tmp_path / "stockgate.toml"
    config.write_text(f"""
redis_url = "{redis_server.url}"
data_dir = "{tmp_path}"
[channels.shop]
kind = "shopify"
secret = "s3cret"
api_url = "{sim.url}"
access_token = "t"
rate_limit_per_s = 500
""")
    settings = load_settings(str(config), env={})
    engine = StockEngine(redis, settings)
    await engine.load_scripts()
    for n, sku in enumerate(SKUS):
        await engine.adjust("default", sku, reason="receipt", idempotency_key=f"r{n}",
                            delta=10_000)
    for start in range(0, HOLDS, 500):
        await asyncio.gather(*(engine.hold("default", [Line(SKUS[i % len(SKUS)], 1)],
                                           hold_id=f"h{i}") for i in range(start, start + 500)))
    total = await redis.xlen(tenant_keys("default").outbox)
    audit_db = tmp_path / "audit.sqlite3"
    first = start_worker(config, tmp_path / "worker1.log")
    second = None
    try:
        async def partly_done() -> bool:
            # Mid-batch: some work is durable and a batch is read but not yet acknowledged.
            return (audit_rows(audit_db) >= total // 4
                    and await pending_entries(redis, "default") > 0)

        await wait_for(partly_done, 20, interval=0.005)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        done_at_kill = audit_rows(audit_db)
        pending_at_kill = await pending_entries(redis, "default")
        assert done_at_kill < total  # the worker died with work left
        assert pending_at_kill > 0  # ...and a batch in hand that only a claim can finish
        second = start_worker(config, tmp_path / "worker2.log")

        async def finished() -> bool:
            return audit_rows(audit_db) == total and await settled(redis)

        await wait_for(finished, 30, interval=0.1)
        await wait_for(lambda: channels_match(engine, {"shop": sim}, SKUS), 10)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(10)
        sim.stop()
    stream_ids = [e[0].decode() for e in await redis.xrange(tenant_keys("default").outbox)]
    assert await audit_ids(settings) == stream_ids  # no gap, no duplicate
    print(f"\nkill -9 after {done_at_kill}/{total} audit rows with {pending_at_kill} entries "
          "pending; the second worker finished the rest")
