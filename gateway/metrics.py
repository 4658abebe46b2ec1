"""Prometheus text metrics, kept in-process with no dependency: request counts and latency
per route, stock script latency, holds and rejections, webhook outcomes.

Each worker process keeps its own numbers (scrape each process, or run one worker per pod).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterator

from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
