"""Prometheus text metrics with no dependency: request counts and latency per route, stock
script latency, holds and rejections, webhook outcomes; summed over the gateway's processes.

Why not prometheus_client: recording a hold's numbers (two histograms, two counters) costs
1.0 us of CPU with these plain dicts, 7.0 us with prometheus_client and 11.3 us in the
multiprocess mode that would sum the processes (a lock and an mmap write per value;
`python -m benchmarks.metrics_cost`), against 45-50 us of gateway CPU for the whole hold
(docs/benchmarks.md): a fifth more CPU per request for the same text. So the hot path stays
a dict increment, and the processes of one `stockgate serve --workers N` share
their numbers the way prometheus_client's multiprocess mode does, off the hot path: each
process writes a snapshot of its counters to a directory of that run once a second
(`ProcessShare`), and a scrape, whichever process answers it, sums its own live numbers with
every other process's latest snapshot (at most a second old). A process that exits leaves its
last snapshot, so the sums never go backwards. Files, not Redis: a scrape must work while
Redis is down, and the sum is per host (each host's processes are one scrape target).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import msgspec
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("stockgate.gateway")

# Seconds. Fine below 10 ms, where a healthy gateway lives.
BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds

    def add(self, counts: list[int], seconds: float) -> None:
        if len(counts) != len(self.counts):
            return  # another build's buckets (a rolling restart): not summable
        self.counts = [a + b for a, b in zip(self.counts, counts, strict=True)]
        self.sum += seconds

    def lines(self, name: str, labels: str) -> Iterator[str]:
        total = 0
        for bound, count in zip(BUCKETS, self.counts, strict=False):
            total += count
            yield f'{name}_bucket{{{labels},le="{bound}"}} {total}'
        total += self.counts[-1]
        yield f'{name}_bucket{{{labels},le="+Inf"}} {total}'
        yield f"{name}_sum{{{labels}}} {self.sum:.6f}"
        yield f"{name}_count{{{labels}}} {total}"


class _Timer:
    __slots__ = ("hist", "start")

    def __init__(self, hist: Histogram) -> None:
        self.hist = hist

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.hist.observe(time.perf_counter() - self.start)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Snapshot(msgspec.Struct, frozen=True):
    """One process's numbers as it publishes them for the others (see ProcessShare)."""

    requests: list[tuple[str, str, int, int]] = []  # route, method, status, count
    latency: list[tuple[str, str, list[int], float]] = []  # route, method, buckets, sum
    scripts: list[tuple[str, list[int], float]] = []  # op, buckets, sum
    holds: dict[str, int] = {}
    rejections: dict[str, int] = {}
    webhooks: list[tuple[str, str, int]] = []  # channel, outcome, count


class Metrics:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.latency: dict[tuple[str, str], Histogram] = defaultdict(Histogram)
        self.scripts: dict[str, Histogram] = defaultdict(Histogram)
        self.holds: dict[str, int] = defaultdict(int)
        self.rejections: dict[str, int] = defaultdict(int)
        self.webhooks: dict[tuple[str, str], int] = defaultdict(int)

    def script(self, op: str) -> _Timer:
        """Times one stock operation as the gateway sees it (queueing + Redis + decode), as a
        `with` block (a slotted object: cheaper per call than a generator context manager)."""
        return _Timer(self.scripts[op])

    def snapshot(self) -> Snapshot:
        return Snapshot(
            requests=[(r, m, st, n) for (r, m, st), n in self.requests.items()],
            latency=[(r, m, h.counts, h.sum) for (r, m), h in self.latency.items()],
            scripts=[(op, h.counts, h.sum) for op, h in self.scripts.items()],
            holds=dict(self.holds), rejections=dict(self.rejections),
            webhooks=[(c, o, n) for (c, o), n in self.webhooks.items()])

    def add(self, snap: Snapshot) -> None:
        """Adds another process's numbers to these."""
        for route, method, status, n in snap.requests:
            self.requests[(route, method, status)] += n
        for route, method, counts, seconds in snap.latency:
            self.latency[(route, method)].add(counts, seconds)
        for op, counts, seconds in snap.scripts:
            self.scripts[op].add(counts, seconds)
        for result, n in snap.holds.items():
            self.holds[result] += n
        for reason, n in snap.rejections.items():
            self.rejections[reason] += n
        for channel, outcome, n in snap.webhooks:
            self.webhooks[(channel, outcome)] += n

    def render(self) -> str:
        out = [
            "# HELP stockgate_http_requests_total HTTP requests by route, method and status.",
            "# TYPE stockgate_http_requests_total counter",
        ]
        for (route, method, status), n in sorted(self.requests.items()):
            out.append(f'stockgate_http_requests_total{{route="{_label(route)}",'
                       f'method="{method}",status="{status}"}} {n}')
        out += ["# HELP stockgate_http_request_duration_seconds Request latency by route.",
                "# TYPE stockgate_http_request_duration_seconds histogram"]
        for (route, method), hist in sorted(self.latency.items()):
            out += hist.lines("stockgate_http_request_duration_seconds",
                              f'route="{_label(route)}",method="{method}"')
        out += ["# HELP stockgate_script_duration_seconds Stock script calls by operation.",
                "# TYPE stockgate_script_duration_seconds histogram"]
        for op, hist in sorted(self.scripts.items()):
            out += hist.lines("stockgate_script_duration_seconds", f'op="{op}"')
        out += ["# HELP stockgate_holds_total Hold requests by result.",
                "# TYPE stockgate_holds_total counter"]
        out += [f'stockgate_holds_total{{result="{r}"}} {n}' for r, n in sorted(self.holds.items())]
        out += ["# HELP stockgate_rejections_total Refused stock requests and order lines.",
                "# TYPE stockgate_rejections_total counter"]
        out += [f'stockgate_rejections_total{{reason="{r}"}} {n}'
                for r, n in sorted(self.rejections.items())]
        out += ["# HELP stockgate_webhooks_total Channel webhooks by channel and outcome.",
                "# TYPE stockgate_webhooks_total counter"]
        out += [f'stockgate_webhooks_total{{channel="{_label(c)}",outcome="{o}"}} {n}'
                for (c, o), n in sorted(self.webhooks.items())]
        return "\n".join(out) + "\n"


_SUFFIX = ".metrics.json"
_encode_snapshot = msgspec.json.Encoder().encode
_decode_snapshot = msgspec.json.Decoder(Snapshot).decode


class ProcessShare:
    """This process's numbers in the directory the gateway processes of one run share.

    Each process owns one file (pid plus a random tag: two apps in one process, or a reused
    pid, never overwrite each other) and replaces it whole (write, then rename), so a reader
    sees a complete snapshot or the previous one. The directory is the run's own: `serve`
    empties it before the processes start (gateway/server.py).
    """

    def __init__(self, metrics: Metrics, directory: str, interval_s: float = 1.0) -> None:
        self.metrics = metrics
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.interval_s = interval_s
        name = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.path = self.directory / f"{name}{_SUFFIX}"
        self._scratch = self.directory / f"{name}.tmp"
        self._failing = False

    def publish(self) -> None:
        try:
            self._scratch.write_bytes(_encode_snapshot(self.metrics.snapshot()))
            os.replace(self._scratch, self.path)
        except OSError as exc:
            if not self._failing:  # once per outage, not once a second
                log.warning("cannot share metrics in %s: %s", self.directory, exc)
            self._failing = True
            return
        self._failing = False

    def gather(self) -> Metrics:
        """This process's live numbers plus every other process's latest snapshot."""
        total = Metrics()
        total.add(self.metrics.snapshot())
        for path in self.directory.glob(f"*{_SUFFIX}"):
            if path == self.path:
                continue
            try:
                total.add(_decode_snapshot(path.read_bytes()))
            except (OSError, msgspec.DecodeError):
                continue  # a file removed meanwhile, or not ours
        return total

    async def run(self) -> None:
        """Publishes every `interval_s` until cancelled, then once more (a stopping process's
        last requests are counted too)."""
        try:
            while True:
                self.publish()
                await asyncio.sleep(self.interval_s)
        finally:
            self.publish()


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class MetricsMiddleware:
    """Counts and times every HTTP request under its route template (not the raw path, so
    hold ids do not explode the label set)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            if method not in _METHODS:
                method = "other"  # any token is a method: keep the label set bounded
            self.metrics.requests[(path, method, status)] += 1
            self.metrics.latency[(path, method)].observe(time.perf_counter() - start)
