"""The gateway application: routes, the one error handler, and the clients created once per
process in the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount

from gateway import allocation, bundles, health, holds, incoming, openapi, operator, stock, webhooks
from gateway.auth import KeyRing
from gateway.batch import Commands
from gateway.console import ConsoleApp
from gateway.errors import MethodNotAllowed, NotFound
from gateway.http import BodyDeadlines, JSONReply, error_reply
from gateway.metrics import Metrics, MetricsMiddleware, ProcessShare
from gateway.server import when_asked_to_exit
from stockgate.activity import Tally
from stockgate.cluster import CLUSTER_UNAVAILABLE, Store, connect, is_cluster
from stockgate.errors import StockgateError, StoreUnavailable
from stockgate.settings import ConfigError, Settings
from stockgate.stock import StockEngine

log = logging.getLogger("stockgate.gateway")

# redis-py's async pool refuses connections past max_connections instead of waiting, and each
# in-flight pipeline holds one: size it well above the expected concurrency.
REDIS_MAX_CONNECTIONS = 2048


def redis_client(url: str) -> Store:
    return connect(url, max_connections=REDIS_MAX_CONNECTIONS, socket_connect_timeout=2.0,
                   socket_timeout=5.0)


async def _stock_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StockgateError)
    return error_reply(exc)


async def _store_down(request: Request, exc: Exception) -> Response:
    # Plain reads and the arq enqueue talk to Redis without the engine's batching, which
    # already turns a lost connection into StoreUnavailable: same 503 + Retry-After here, so
    # a channel retries its webhook instead of counting a 500 as a failed delivery.
    return error_reply(StoreUnavailable("stock store unreachable"))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_reply(NotFound("no such route"))
    if exc.status_code == 405:
        reply = error_reply(MethodNotAllowed("method not allowed on this route"))
        if exc.headers:
            reply.headers.update(exc.headers)
        return reply
    return JSONReply({"error": "http_error", "detail": exc.detail}, status_code=exc.status_code)


async def _unexpected(request: Request, exc: Exception) -> Response:
    # Logged without the request: headers may carry API keys and signatures.
    log.error("unhandled %s on %s %s", type(exc).__name__, request.scope["method"],
              request.scope["path"], exc_info=exc)
    return JSONReply({"error": "internal", "detail": "internal error"}, status_code=500)


def create_app(settings: Settings, redis: Store | None = None) -> Starlette:
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        client = redis if redis is not None else redis_client(settings.redis_url)
        app.state.redis = client
        # arq's queue (order fetches, count checks): the stock's Redis unless that is a
        # Cluster, which arq cannot use.
        queue_url = settings.queue_url()
        if is_cluster(client) and not queue_url:
            raise ConfigError("with a Redis Cluster, set queue_redis_url (QUEUE_REDIS_URL) "
                              "to a plain Redis for the job queue")
        queue = (client if queue_url in ("", settings.redis_url) and not is_cluster(client)
                 else redis_client(queue_url))
        app.state.queue = queue
        app.state.engine = StockEngine(client, settings)
        app.state.commands = Commands(client, app.state.engine.scripts.wire)
        try:
            await app.state.engine.load_scripts()
        except (RedisError, OSError) as exc:
            # Start anyway: requests answer 503 and /readyz says why until Redis is back
            # (the engine loads the scripts again on its first NOSCRIPT).
            log.warning("stock store unreachable at start-up: %s", type(exc).__name__)
        await operator.startup(app)
        # The console's per-tenant counters reach Redis once a second, off the hot path.
        tallying_stop = asyncio.Event()
        tallying = asyncio.create_task(app.state.tally.run(client, tallying_stop))
        sharing = None
        if settings.metrics_dir:
            app.state.metrics_share = share = ProcessShare(metrics, settings.metrics_dir)
            sharing = asyncio.create_task(share.run())

        def end_live_streams() -> None:
            app.state.console_closing = True  # and one that starts from now on ends at once
            for stream in app.state.console_streams.values():
                stream.stop.set()

        # A console's live stream ends when the server is told to stop, not after uvicorn's
        # graceful-shutdown limit; the page's EventSource reconnects to another process.
        undo_exit_hook = when_asked_to_exit(end_live_streams)
        try:
            yield
        finally:
            undo_exit_hook()
            end_live_streams()
            tallying_stop.set()  # its last flush, before the client closes
            await tallying
            if sharing is not None:
                sharing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sharing
            app.state.body_deadlines.close()
            await operator.shutdown(app)
            app.state.engine.scripts.close()
            if redis is None:
                await client.aclose()
            if queue is not client:
                await queue.aclose()

    app = Starlette(
        routes=[*holds.routes, *stock.routes, *webhooks.routes, *operator.routes,
                *health.routes, *openapi.routes, *bundles.routes, *incoming.routes,
                *allocation.routes, Mount("/console", app=ConsoleApp())],
        middleware=[Middleware(MetricsMiddleware, metrics=metrics)],
        exception_handlers={StockgateError: _stock_error, HTTPException: _http_error,
                            RedisConnectionError: _store_down, RedisTimeoutError: _store_down,
                            **dict.fromkeys(CLUSTER_UNAVAILABLE, _store_down),
                            Exception: _unexpected},
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.metrics_share = None
    app.state.body_deadlines = BodyDeadlines()
    app.state.keyring = KeyRing(settings)
    app.state.tally = Tally()
    app.state.console_cache = {}
    app.state.console_skus = {}
    app.state.console_streams = {}
    app.state.console_closing = False
    return app
