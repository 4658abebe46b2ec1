"""What strict durability costs: acknowledged holds per second with the append-only file
fsynced before every reply (strict) against once a second (everysec), measured in one run.

    python -m benchmarks.durability [--seconds 5] [--concurrency 200]

Both runs drive the stock engine (the gateway's own client path: per-tick batching on one
pipelined connection) against a fresh embedded server in a temporary directory on this
machine's disk, so the strict figure is bounded by this disk's fsync latency.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time

from redis.asyncio import Redis

from stockgate.embedded import EmbeddedRedis
from stockgate.errors import InsufficientStock
from stockgate.models import Line
from stockgate.settings import Settings
from stockgate.stock import StockEngine

SKU = "BENCH-1"


async def measure(durability: str, seconds: float, concurrency: int) -> tuple[float, list[float]]:
    with tempfile.TemporaryDirectory() as data_dir:
        server = EmbeddedRedis(data_dir, durability=durability)  # type: ignore[arg-type]
        server.start()
        redis = Redis.from_url(server.url, max_connections=concurrency + 10)
        try:
            engine = StockEngine(redis, Settings(data_dir=data_dir))
            await engine.load_scripts()
            await engine.adjust("default", SKU, reason="bench", idempotency_key="seed",
                                delta=100_000_000)
            latencies: list[float] = []
            deadline = time.perf_counter() + seconds

            async def shopper(n: int) -> None:
                i = 0
                while time.perf_counter() < deadline:
                    start = time.perf_counter()
                    try:
                        await engine.hold("default", [Line(SKU, 1)], hold_id=f"b{n}-{i}")
                    except InsufficientStock:  # pragma: no cover - seeded far above the run
                        return
                    latencies.append(time.perf_counter() - start)
                    i += 1

            began = time.perf_counter()
            await asyncio.gather(*(shopper(n) for n in range(concurrency)))
            return len(latencies) / (time.perf_counter() - began), latencies
        finally:
            await redis.aclose()
            server.stop()


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


async def main(seconds: float, concurrency: int) -> None:
    print(f"1-line holds through StockEngine, {concurrency} concurrent shoppers, "
          f"{seconds:g} s per mode, fresh embedded server each")
    print(f"{'durability':<12}{'holds/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'ratio':>8}")
    results = {}
    for mode in ("everysec", "strict"):
        rate, lat = await measure(mode, seconds, concurrency)
        results[mode] = rate
        print(f"{mode:<12}{rate:>10.0f}{percentile(lat, 50) * 1e3:>9.2f}"
              f"{percentile(lat, 99) * 1e3:>9.2f}{rate / results['everysec']:>8.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(main(args.seconds, args.concurrency))
