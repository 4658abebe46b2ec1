"""Liveness, readiness (no auth: nothing in them a caller could use) and the Prometheus
scrape endpoint, behind `metrics_token` when one is configured: its numbers show sell-through
per route."""

from __future__ import annotations

import hashlib
import hmac

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.errors import Unauthorized
from gateway.http import JSONReply
from stockgate.errors import StoreUnavailable


async def healthz(request: Request) -> JSONReply:
    return JSONReply({"status": "ok"})


async def readyz(request: Request) -> JSONReply:
    """Ready when Redis answers and every stock script is in its cache (a restarted Redis
    lost them: load them again here rather than on the first hold)."""
    engine = request.app.state.engine
    try:
        loaded = await engine.scripts.loaded()
        if not loaded:
            await engine.load_scripts()
            loaded = await engine.scripts.loaded()
    except (RedisError, StoreUnavailable, OSError) as exc:
        return JSONReply({"status": "unavailable", "redis": False, "scripts": False,
                          "detail": type(exc).__name__}, status_code=503,
                         headers={"Retry-After": "1"})
    return JSONReply({"status": "ready" if loaded else "unavailable", "redis": True,
                      "scripts": loaded}, status_code=200 if loaded else 503)


def _check_metrics_token(request: Request, token: str) -> None:
    presented = b""
    for name, value in request.scope["headers"]:
        if name == b"authorization":
            kind, _, presented = value.partition(b" ")
            if kind.lower() != b"bearer":
                presented = b""
            break
    # Digests of both sides: compare_digest is constant-time only over equal lengths, and
    # this way not even the token's length shows in the timing.
    if not presented.strip() or not hmac.compare_digest(
            hashlib.sha256(presented.strip()).digest(),
            hashlib.sha256(token.encode()).digest()):
        raise Unauthorized("GET /metrics needs Authorization: Bearer <metrics_token>")


async def metrics(request: Request) -> Response:
    state = request.app.state
    if state.settings.metrics_token:
        _check_metrics_token(request, state.settings.metrics_token)
    share = state.metrics_share
    numbers = share.gather() if share is not None else state.metrics
    return Response(numbers.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
