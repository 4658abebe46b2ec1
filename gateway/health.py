"""Liveness, readiness and the Prometheus scrape endpoint (no auth: nothing secret in them)."""

from __future__ import annotations

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

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


async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(),
                    media_type="text/plain; version=0.0.4; charset=utf-8")


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
