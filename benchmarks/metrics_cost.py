"""CPU cost of recording one request's metrics: the implementation before issue 15 (frozen
below), today's gateway/metrics.py, and prometheus_client when it is importable, in one run.

`python -m benchmarks.metrics_cost` records what a hold and a Shopify order webhook record
(request counter and latency histogram in the middleware; the script timer and the hold or
webhook counter in the route), many times over, and prints CPU microseconds per request
(median of the repeats, the empty loop subtracted) with the ratio to the old implementation.
It also prices what today's implementation adds off the hot path (a process's snapshot once
a second, a scrape summing the processes), and, as the other per-request cost issue 15 adds,
the body read deadline of gateway/http.py (one timer per request, or the sweep it uses).

prometheus_client is not a dependency; to include it in the comparison:
`pip install --target /tmp/promc prometheus_client` and run with `PYTHONPATH=/tmp/promc`.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import os
import shutil
import statistics
import tempfile
import time
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable

from gateway.http import BodyDeadlines
from gateway.metrics import BUCKETS, Metrics, ProcessShare

HOLD = ("/v1/holds", "POST", 201)
WEBHOOK = ("/webhooks/{channel_id}", "POST", 200)


# ---- the implementation before issue 15, kept here for the comparison only -----------------

class OldHistogram:
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds


class OldTimer:
    __slots__ = ("hist", "start")

    def __init__(self, hist: OldHistogram) -> None:
        self.hist = hist

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.hist.observe(time.perf_counter() - self.start)


class OldMetrics:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.latency: dict[tuple[str, str], OldHistogram] = defaultdict(OldHistogram)
        self.scripts: dict[str, OldHistogram] = defaultdict(OldHistogram)
        self.holds: dict[str, int] = defaultdict(int)
        self.webhooks: dict[tuple[str, str], int] = defaultdict(int)

    def script(self, op: str) -> OldTimer:
        return OldTimer(self.scripts[op])


# ---- one request's recording, as the middleware and the routes do it -----------------------

def dict_recorder(metrics: Metrics | OldMetrics, kind: str) -> Callable[[], None]:
    """gateway/metrics.py MetricsMiddleware plus gateway/holds.py or gateway/webhooks.py."""
    route, method, status = HOLD if kind == "hold" else WEBHOOK

    def hold() -> None:
        start = time.perf_counter()
        with metrics.script("hold"):
            pass
        metrics.holds["created"] += 1
        metrics.requests[(route, method, status)] += 1
        metrics.latency[(route, method)].observe(time.perf_counter() - start)

    def webhook() -> None:
        start = time.perf_counter()
        with metrics.script("order"):
            pass
        metrics.webhooks[("shop", "applied")] += 1
        metrics.requests[(route, method, status)] += 1
        metrics.latency[(route, method)].observe(time.perf_counter() - start)

    return hold if kind == "hold" else webhook


def prometheus_recorders(multiprocess: bool) -> dict[str, Callable[[], None]] | None:
    """The same numbers through prometheus_client: in-process, or in its multiprocess mode
    (one mmap file per process and metric, the ecosystem's way to sum worker processes)."""
    try:
        from prometheus_client import CollectorRegistry, Counter, Histogram, values
    except ImportError:
        return None
    saved = values.ValueClass
    if multiprocess:
        directory = tempfile.mkdtemp(prefix="prom-bench-")
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        values.ValueClass = values.MultiProcessValue()
    try:
        registry = CollectorRegistry()
        requests = Counter("req", "", ["route", "method", "status"], registry=registry)
        latency = Histogram("lat", "", ["route", "method"], buckets=BUCKETS, registry=registry)
        scripts = Histogram("scr", "", ["op"], buckets=BUCKETS, registry=registry)
        holds = Counter("holds", "", ["result"], registry=registry)
        webhooks = Counter("webhooks", "", ["channel", "outcome"], registry=registry)
        # A labelled child takes its value class when first created: create them all now,
        # so that the multiprocess ones are mmap-backed as in a real multiprocess setup.
        for route, method, status in (HOLD, WEBHOOK):
            requests.labels(route, method, str(status))
            latency.labels(route, method)
        scripts.labels("hold"), scripts.labels("order")
        holds.labels("created"), webhooks.labels("shop", "applied")
    finally:
        values.ValueClass = saved

    def record(kind: str) -> Callable[[], None]:
        route, method, status = HOLD if kind == "hold" else WEBHOOK
        op = "hold" if kind == "hold" else "order"

        def one() -> None:
            start = time.perf_counter()
            with scripts.labels(op).time():
                pass
            if kind == "hold":
                holds.labels("created").inc()
            else:
                webhooks.labels("shop", "applied").inc()
            requests.labels(route, method, str(status)).inc()
            latency.labels(route, method).observe(time.perf_counter() - start)

        return one

    return {"hold": record("hold"), "webhook": record("webhook")}


def per_call_us(fn: Callable[[], None], n: int, repeats: int) -> float:
    def loop(body: Callable[[], None]) -> float:
        t = time.process_time()
        for _ in range(n):
            body()
        return time.process_time() - t

    def empty() -> None:
        pass

    runs = [(loop(fn) - loop(empty)) / n * 1e6 for _ in range(repeats)]
    return statistics.median(runs)


async def _deadline_cost(n: int) -> tuple[float, float, float]:
    """A receive that has its message already (the usual small body): bare, inside
    asyncio.timeout, and watched by gateway/http.py's BodyDeadlines as read_body does."""
    message = {"type": "http.request", "body": b"{}", "more_body": False}

    async def receive() -> dict[str, object]:
        return message

    async def bare() -> None:
        for _ in range(n):
            await receive()

    async def timer() -> None:
        for _ in range(n):
            async with asyncio.timeout(10.0):
                await receive()

    deadlines = BodyDeadlines()

    async def swept() -> None:
        for _ in range(n):
            task = deadlines.watch(10.0)
            try:
                await receive()
            finally:
                deadlines.done(task)

    costs = []
    for body in (bare, timer, swept):
        t = time.process_time()
        await body()
        costs.append((time.process_time() - t) / n * 1e6)
    deadlines.close()
    return costs[0], costs[1], costs[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=200_000, help="requests per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    n, repeats = args.n, args.repeats

    print(f"CPU us per request recorded (median of {repeats} x {n:,}, empty loop subtracted)")
    rows: list[tuple[str, dict[str, Callable[[], None]]]] = []
    old, new = OldMetrics(), Metrics()
    rows.append(("old (hand-written, per process)",
                 {k: dict_recorder(old, k) for k in ("hold", "webhook")}))
    rows.append(("new (same dicts, shared once a second)",
                 {k: dict_recorder(new, k) for k in ("hold", "webhook")}))
    for label, multiprocess in (("prometheus_client", False),
                                ("prometheus_client multiprocess", True)):
        recorders = prometheus_recorders(multiprocess)
        if recorders is None:
            print(f"  {label}: not installed, skipped (see the module docstring)")
        else:
            rows.append((label, recorders))
    baseline: dict[str, float] = {}
    for label, recorders in rows:
        cells = []
        for kind in ("hold", "webhook"):
            cost = per_call_us(recorders[kind], n, repeats)
            baseline.setdefault(kind, cost)
            cells.append(f"{kind} {cost:6.2f} us ({cost / baseline[kind]:5.2f}x old)")
        print(f"  {label:<40} " + "   ".join(cells))

    # Off the hot path: what sharing costs today's implementation.
    with tempfile.TemporaryDirectory(prefix="metrics-bench-") as directory:
        shares = [ProcessShare(new, directory), ProcessShare(as_new_metrics(old), directory)]
        publish = per_call_us(shares[0].publish, 2_000, repeats)
        shares[1].publish()
        gather = per_call_us(lambda: shares[0].gather().render(), 500, repeats)
    print(f"off the hot path: a process's snapshot {publish:.1f} us once a second "
          f"(= {publish / 1_000:.3f} us per request at 1,000 req/s); "
          f"a scrape summing 2 processes {gather:.0f} us")
    base, timer, swept = asyncio.run(_deadline_cost(n))
    print(f"body read deadline, per request with a body: asyncio.timeout +{timer - base:.2f} us, "
          f"BodyDeadlines (one sweep a tick, used) +{swept - base:.2f} us")


def as_new_metrics(old: OldMetrics) -> Metrics:
    """The old numbers in today's class, as a second process's snapshot for the scrape."""
    metrics = Metrics()
    metrics.requests.update(old.requests)
    for key, hist in old.latency.items():
        metrics.latency[key].add(hist.counts, hist.sum)
    for key, hist in old.scripts.items():
        metrics.scripts[key].add(hist.counts, hist.sum)
    metrics.holds.update(old.holds)
    metrics.webhooks.update(old.webhooks)
    return metrics


if __name__ == "__main__":
    main()
