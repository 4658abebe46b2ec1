"""Runs the gateway under uvicorn: uvloop and httptools when installed, no access log (it
would cost more than the request, and must not carry keys anyway).

What one client can hold: a request's body must arrive within `body_timeout_s` (408 and the
connection closed, gateway/http.py), an idle keep-alive connection is closed after
KEEP_ALIVE_S, and a process takes at most `max_connections` connections plus requests in
flight (uvicorn answers 503 past it). uvicorn sets no deadline on the request line and headers:
a client that stalls before its headers are complete is bounded only by `max_connections`, so
a gateway reachable from the internet belongs behind a proxy that bounds header time.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.util
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from starlette.applications import Starlette

from stockgate.settings import Settings, load_settings


def _loop() -> str:
    return "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"


def _http() -> str:
    return "httptools" if importlib.util.find_spec("httptools") else "h11"


def quiet_gc() -> None:
    """Keep the cyclic garbage collector off the request path.

    Profiled under load, the collector took a quarter to a third of the app's CPU per
    request: each full collection walked every module, class and function object loaded at
    start-up (tens of ms each, a latency spike for every request in flight), and the young
    generation was collected every dozen requests. Everything alive once the app is built
    lives for the whole process, so it is frozen out of the collector's sight, and young
    collections run 10x less often.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(7000, 10, 10)


def app_from_env() -> Starlette:
    """App factory for uvicorn's worker processes: each loads the settings from the
    environment (STOCKGATE_CONFIG, REDIS_URL) and makes its own Redis pool."""
    from gateway.app import create_app

    settings = load_settings()
    if not settings.redis_url:
        raise RuntimeError("REDIS_URL must be set for multi-process serving")
    app = create_app(settings)
    quiet_gc()
    return app


def when_asked_to_exit(callback: Callable[[], None]) -> Callable[[], None]:
    """Calls `callback` on the running loop as soon as this process's uvicorn server is told
    to exit (SIGTERM, SIGINT), in one process or each of `--workers`. uvicorn tells the app
    only after every connection has closed (lifespan shutdown), and a console's live stream
    never closes by itself: each open one held the shutdown for timeout_graceful_shutdown.
    Chains to uvicorn's own handler, found as the signal's handler, so it runs only under a
    uvicorn server (not in-process tests); returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # signals reach the main thread only; uvicorn does the same
    loop = asyncio.get_running_loop()
    chained: dict[int, tuple[Any, Any]] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        uvicorns = signal.getsignal(sig)
        if not isinstance(getattr(uvicorns, "__self__", None), uvicorn.Server):
            continue

        def handler(signum: int, frame: FrameType | None, uvicorns: Any = uvicorns) -> None:
            uvicorns(signum, frame)  # first: uvicorn must hear it whatever happens below
            with contextlib.suppress(RuntimeError):  # a loop already closed
                loop.call_soon_threadsafe(callback)

        signal.signal(sig, handler)
        chained[sig] = (uvicorns, handler)

    def undo() -> None:
        for sig, (uvicorns, handler) in chained.items():
            if signal.getsignal(sig) is handler:
                signal.signal(sig, uvicorns)
    return undo


# uvicorn's own default, stated: idle connections cost a file descriptor and memory each, and
# load balancers reuse theirs well within 5 s.
KEEP_ALIVE_S = 5


def uvicorn_options(settings: Settings, host: str, port: int) -> dict[str, Any]:
    return {"host": host, "port": port, "loop": _loop(), "http": _http(),
            "access_log": False, "log_level": settings.log_level.lower(),
            # X-Forwarded-* is parsed only from the proxies the config trusts: the console's
            # sign-in guard and its https then see the client's (otherwise the proxy's).
            "proxy_headers": bool(settings.trusted_proxies),
            "forwarded_allow_ips": settings.trusted_proxies or None, "server_header": False,
            "lifespan": "on", "timeout_graceful_shutdown": 10,
            "timeout_keep_alive": KEEP_ALIVE_S, "limit_concurrency": settings.max_connections}


def _metrics_dir(settings: Settings) -> tuple[str, bool]:
    """The directory the processes of this run share their metrics in, emptied of an earlier
    run's snapshots (they would be summed with this run's), and whether it is ours to
    remove afterwards."""
    if not settings.metrics_dir:
        return tempfile.mkdtemp(prefix="stockgate-metrics-"), True
    directory = Path(settings.metrics_dir)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.metrics.json"):
        stale.unlink(missing_ok=True)
    return str(directory), False


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8000,
          workers: int = 1) -> None:
    common = uvicorn_options(settings, host, port)
    if workers > 1:
        # Processes cannot share a live app object: each one builds its own from the
        # environment, which the CLI has pointed at a real Redis URL, and at one metrics
        # directory so that a scrape of any of them shows the sum of all.
        directory, owned = _metrics_dir(settings)
        os.environ["STOCKGATE_METRICS_DIR"] = directory
        try:
            uvicorn.run("gateway.server:app_from_env", factory=True, workers=workers, **common)
        finally:
            if owned:
                shutil.rmtree(directory, ignore_errors=True)
        return
    from gateway.app import create_app

    app = create_app(settings)
    quiet_gc()
    uvicorn.run(app, **common)
