"""Memory an order record costs while it lives (open units, then the return window).

`python -m benchmarks.order_memory` starts a fresh embedded server, places orders of 1 and 3
lines through the real StockEngine (some from a claimed hold), and reads Redis's own figure
for each record (`MEMORY USAGE key SAMPLES 0`) and the growth of `used_memory`, so the record
lifetime of docs/order-lifecycle.md can be sized: bytes per record x orders per return window.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile

from redis.asyncio import Redis

from stockgate.embedded import EmbeddedRedis
from stockgate.keys import tenant_keys
from stockgate.models import Line
from stockgate.settings import Settings
from stockgate.stock import StockEngine

TENANT = "bench"
SKUS = [f"SKU-{i:04d}" for i in range(3)]


async def place(engine: StockEngine, lines: int, orders: int, prefix: str) -> None:
    batch = 200
    for start in range(0, orders, batch):
        await asyncio.gather(*(
            engine.order(TENANT, f"{prefix}:{1_000_000_000 + i}",
                         [Line(sku, 1) for sku in SKUS[:lines]], channel="shopify-main")
            for i in range(start, min(start + batch, orders))))


async def per_record(redis: Redis, prefix: str, orders: int) -> float:
    keys = [tenant_keys(TENANT).order(f"{prefix}:{1_000_000_000 + i}")
            for i in range(0, orders, max(orders // 200, 1))]
    sizes = [await redis.memory_usage(k, samples=0) for k in keys]
    return statistics.mean(s for s in sizes if s)


async def run(orders: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as data_dir:
        with EmbeddedRedis(data_dir, durability="everysec") as server:
            redis = Redis.from_url(server.url)
            engine = StockEngine(redis, Settings(data_dir=data_dir))
            await engine.load_scripts()
            for sku in SKUS:
                await engine.adjust(TENANT, sku, delta=10 * orders, reason="receipt",
                                    idempotency_key=f"rcv-{sku}")
            out: dict[str, float] = {}
            for lines in (1, 3):
                prefix = f"shopify-main:{lines}l"
                before = (await redis.info("memory"))["used_memory"]
                await place(engine, lines, orders, prefix)
                after = (await redis.info("memory"))["used_memory"]
                out[f"{lines}-line order, MEMORY USAGE (bytes)"] = await per_record(
                    redis, prefix, orders)
                # The outbox grows with the events too: used_memory counts both.
                out[f"{lines}-line order, used_memory growth per order incl. outbox (bytes)"] = (
                    (after - before) / orders)
            engine.scripts.close()
            await redis.aclose()
            return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--orders", type=int, default=20_000)
    args = parser.parse_args()
    results = asyncio.run(run(args.orders))
    for name, value in results.items():
        print(f"{name:72s} {value:10,.0f}")
    one = results["1-line order, MEMORY USAGE (bytes)"]
    print(f"\n1,000,000 one-line orders kept for the return window: {one * 1e6 / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
