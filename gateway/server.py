"""Runs the gateway under uvicorn: uvloop and httptools when installed, no access log (it
would cost more than the request, and must not carry keys anyway)."""

from __future__ import annotations

import importlib.util

import uvicorn
from starlette.applications import Starlette

from stockgate.settings import Settings, load_settings


def _loop() -> str:
    return "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"


def _http() -> str:
    return "httptools" if importlib.util.find_spec("httptools") else "h11"


def app_from_env() -> Starlette:
    """App factory for uvicorn's worker processes: each loads the settings from the
    environment (STOCKGATE_CONFIG, REDIS_URL) and makes its own Redis pool."""
    from gateway.app import create_app

    settings = load_settings()
    if not settings.redis_url:
        raise RuntimeError("REDIS_URL must be set for multi-process serving")
    return create_app(settings)


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8000,
          workers: int = 1) -> None:
    common = {"host": host, "port": port, "loop": _loop(), "http": _http(),
              "access_log": False, "log_level": settings.log_level.lower(),
              "lifespan": "on", "timeout_graceful_shutdown": 10}
    if workers > 1:
        # Processes cannot share a live app object: each one builds its own from the
        # environment, which the CLI has pointed at a real Redis URL.
        uvicorn.run("gateway.server:app_from_env", factory=True, workers=workers, **common)
        return
    from gateway.app import create_app

    uvicorn.run(create_app(settings), **common)
