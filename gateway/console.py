"""The operator console: /console's page and the JSON and event-stream API behind it.

Everything here is read with the session cookie of gateway/console_session.py, for that
session's tenant only (the tenant never comes from the request), and every state-changing
call also needs the CSRF header. The page is static files (gateway/console_static/, no build
step) under a strict Content-Security-Policy: no inline script or style, nothing fetched from
anywhere but the gateway. The console is mounted as its own ASGI app so that every response
of it, errors included, carries the security headers, and the API's hot routes pay nothing
for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route, Router
from starlette.types import Message, Receive, Scope, Send

from gateway import console_session as sessions
from gateway.errors import Forbidden, MalformedRequest, NotFound, Unauthorized
from gateway.http import JSONReply, error_reply, read_json
from gateway.operator import (
    event_query,
    read_events,
    retry_reply,
    scrubbed_alert,
    scrubbed_delivery,
)
from stockgate import activity
from stockgate.alerts import Alert, list_alerts
from stockgate.audit import EventQuery, audit_unreachable
from stockgate.bundles import Bundles
from stockgate.cluster import CLUSTER_UNAVAILABLE
from stockgate.deliveries import FailedDelivery, failed_deliveries, retry_delivery
from stockgate.errors import StockgateError, StoreUnavailable, UnknownSku
from stockgate.keys import tenant_keys
from stockgate.models import AdjustRequest, Event, StockView

log = logging.getLogger("stockgate.console")

STATIC_DIR = Path(__file__).parent / "console_static"
_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml",
          ".png": "image/png", ".txt": "text/plain; charset=utf-8"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
# The overview reads every SKU's cells: past this many it sums the first ones and says so.
OVERVIEW_MAX_SKUS = 20_000
RATE_NAMES = ("holds", "refusals", "oversell_attempts", "requests", "changes")
OVERVIEW_SHARED_S = 0.5
# A long outage parks a delivery per target: the page lists the newest, the count says all.
MAX_DELIVERIES_SHOWN = 200
# The tenant's sorted SKU list, kept this long for searches typed one key at a time.
SKU_LIST_KEEP_S = 5.0
HOT_WINDOW_S = 30
HOT_SKUS = 10
STREAM_MAX_S = 3600  # a live stream ends after an hour; EventSource reconnects on its own
_STORE_ERRORS = (RedisConnectionError, RedisTimeoutError, *CLUSTER_UNAVAILABLE)


# ---- replies ---------------------------------------------------------------------------------

class SkuSummary(msgspec.Struct, frozen=True):
    sku: str
    available: int
    on_hand: int
    reserved: int
    committed: int
    unavailable: int
    safety: int
    low_stock: bool


class Rates(msgspec.Struct, frozen=True):
    step_s: int
    window_s: int
    start_ms: int
    series: dict[str, list[int]]


class Overview(msgspec.Struct, frozen=True):
    tenant: str
    now_ms: int
    units_on_sale: int
    skus: int
    sold_out: int
    low_stock: int
    rates: Rates
    last_minute: dict[str, int]
    channels: list[activity.ChannelSync]
    alerts: list[Alert]
    partial: bool = False  # more SKUs than OVERVIEW_MAX_SKUS: the sums cover the first ones


class StockList(msgspec.Struct, frozen=True):
    skus: list[SkuSummary]
    total: int


class SkuDetail(msgspec.Struct, frozen=True):
    view: StockView
    pushed: dict[str, dict[str, int]]
    events: list[Event]
    events_error: str | None = None


class ChannelsReply(msgspec.Struct, frozen=True):
    channels: list[activity.ChannelSync]
    deliveries: list[FailedDelivery]  # the newest MAX_DELIVERIES_SHOWN, newest first
    drift: list[Alert]
    deliveries_total: int = 0


class Tick(msgspec.Struct, frozen=True):
    ts: int
    changes_per_s: float
    requests_per_s: float
    holds_per_s: float
    hot: list[dict[str, Any]]


_encode = msgspec.json.Encoder().encode
_decode_event = msgspec.json.Decoder(Event).decode


# ---- sessions --------------------------------------------------------------------------------

class CsrfRefused(Forbidden):
    code = "csrf"


async def session(request: Request, *, change: bool = False) -> sessions.Token:
    """The caller's console session, or 401; with `change`, also the CSRF check (403)."""
    settings = request.app.state.settings
    value = request.cookies.get(sessions.COOKIE)
    token = sessions.read(settings, value) if value else None
    if token is None:
        raise Unauthorized("sign in to the console first")
    if await request.app.state.redis.exists(sessions.signed_out_key(token)):
        raise Unauthorized("this console session was signed out")
    if change:
        # Bytes: a header may hold any latin-1 text, and compare_digest refuses non-ASCII str.
        presented = request.headers.get(sessions.CSRF_HEADER, "").encode("latin-1")
        expected = sessions.csrf_token(settings, token).encode()
        if not (presented and hmac.compare_digest(presented, expected)):
            raise CsrfRefused("missing or wrong X-CSRF-Token")
        if not sessions.same_origin(request):
            raise CsrfRefused("cross-site request refused")
    return token


def _guard(request: Request) -> sessions.SignInGuard:
    state = request.app.state
    guard = getattr(state, "console_guard", None)
    if guard is None:
        guard = state.console_guard = sessions.SignInGuard()
    return guard


async def sign_in(request: Request) -> Response:
    if not sessions.same_origin(request):
        raise CsrfRefused("cross-site sign-in refused")
    body = await read_json(request, sessions.SignIn)
    # From here to the verdict nothing awaits: a guess whose body arrives late is checked
    # against every failure counted before it, not against the state when its headers came.
    client = request.client.host if request.client else "?"
    guard = _guard(request)
    guard.check(client)
    try:
        value, token = sessions.sign_in(request, body.key)
    except StockgateError:
        guard.failed(client)
        raise
    settings = request.app.state.settings
    log.info("console sign-in: key %s, tenant %s", token.key, token.tenant)
    reply = JSONReply(sessions.describe(settings, token))
    reply.headers.append("set-cookie", sessions.cookie_header(
        request, value, settings.console_session_ttl_s))
    return reply


async def who(request: Request) -> Response:
    token = await session(request)
    return JSONReply(sessions.describe(request.app.state.settings, token))


async def sign_out(request: Request) -> Response:
    token = await session(request, change=True)
    remaining = max(token.exp_ms - sessions.now_ms(), 1)
    await request.app.state.redis.set(sessions.signed_out_key(token), b"1", px=remaining)
    stream = request.app.state.console_streams.get(token.sid)
    if stream is not None:
        stream.stop.set()  # other processes' streams see the mark at their next tick
    log.info("console sign-out: key %s, tenant %s", token.key, token.tenant)
    reply = Response(status_code=204)
    reply.headers.append("set-cookie", sessions.cookie_header(request, "", 0))
    return reply


# ---- the page --------------------------------------------------------------------------------

def _static_files() -> dict[str, tuple[bytes, str]]:
    """The page's files by name, read once: a request can only ever name one of them."""
    files = {}
    for path in sorted(STATIC_DIR.rglob("*")):
        if path.is_file() and path.suffix in _TYPES:
            files[path.relative_to(STATIC_DIR).as_posix()] = (path.read_bytes(),
                                                               _TYPES[path.suffix])
    return files


async def page(request: Request) -> Response:
    return _static(request, "index.html")


async def static(request: Request) -> Response:
    return _static(request, request.path_params["path"])


def _static(request: Request, name: str) -> Response:
    state = request.app.state
    files = getattr(state, "console_files", None)
    if files is None:
        files = state.console_files = _static_files()
    found = files.get(name)
    if found is None:
        raise NotFound("no such console file")
    body, media_type = found
    return Response(body, media_type=media_type, headers={"Cache-Control": "no-cache"})


# ---- reads -----------------------------------------------------------------------------------

def _summary(sku: str, raw: dict[bytes, bytes]) -> SkuSummary:
    """The SKU's totals over its locations; low stock as the low_stock alert means it
    (available under the SKU's threshold, workers/outbox.py)."""
    totals = dict.fromkeys(("on_hand", "reserved", "committed", "unavailable", "safety"), 0)
    available = 0
    cells: dict[str, dict[str, int]] = {}
    low = 0
    for field, value in raw.items():
        loc, sep, attr = field.decode().partition("|")
        if sep:
            cells.setdefault(loc, {})[attr] = int(value)
        elif loc == "low_stock_threshold":
            low = int(value)
    for cell in cells.values():
        for name in totals:
            totals[name] += cell.get(name, 0)
        available += max(cell.get("on_hand", 0) - cell.get("reserved", 0)
                         - cell.get("committed", 0) - cell.get("unavailable", 0)
                         - cell.get("safety", 0), 0)
    return SkuSummary(sku=sku, available=available, low_stock=available < low, **totals)


async def _summaries(request: Request, tenant: str, skus: list[str]) -> list[SkuSummary]:
    if not skus:
        return []
    keys = tenant_keys(tenant)
    async with request.app.state.redis.pipeline(transaction=False) as pipe:
        for sku in skus:
            pipe.hgetall(keys.stock(sku))
        raws = await pipe.execute()
    return [_summary(sku, raw) for sku, raw in zip(skus, raws, strict=True) if raw]


async def overview(request: Request) -> Response:
    token = await session(request)
    state = request.app.state
    # Consoles of one tenant share one read: ten open tabs cost what one does. The read is
    # kept for 20 times what it took, at least half a second, so that the console never takes
    # more than about 5% of the store's time, however large the catalogue, and a change in a
    # small one still shows within the page's 1 s poll plus half a second.
    cache: dict[str, tuple[float, bytes]] = state.console_cache
    hit = cache.get(token.tenant)
    if hit is not None and time.monotonic() < hit[0]:
        return _json_bytes(hit[1])
    started = time.monotonic()
    redis = state.redis
    now = await activity.redis_now_ms(redis)  # one clock for every figure of the reply
    skus = await state.engine.skus(token.tenant)
    summaries = await _summaries(request, token.tenant, skus[:OVERVIEW_MAX_SKUS])
    series = await activity.series(redis, token.tenant, RATE_NAMES, window_s=600, step_s=10,
                                   now_ms=now)
    reply = Overview(
        tenant=token.tenant, now_ms=now,
        units_on_sale=sum(s.available for s in summaries), skus=len(skus),
        sold_out=sum(1 for s in summaries if s.available == 0),
        low_stock=sum(1 for s in summaries if s.low_stock),
        rates=Rates(step_s=series.step_s, window_s=series.window_s, start_ms=series.start_ms,
                    series=series.values),
        last_minute=await activity.last_seconds(redis, token.tenant, RATE_NAMES, 60,
                                                now_ms=now),
        channels=await activity.channel_sync(redis, state.settings, token.tenant, now_ms=now),
        alerts=[scrubbed_alert(state.settings, a)
                for a in await list_alerts(redis, token.tenant, limit=20)],
        partial=len(skus) > OVERVIEW_MAX_SKUS)
    body = _encode(reply)
    took = time.monotonic() - started
    cache[token.tenant] = (time.monotonic() + max(OVERVIEW_SHARED_S, 20 * took), body)
    return _json_bytes(body)


def _json_bytes(body: bytes) -> Response:
    return Response(body, media_type="application/json")


async def stock_list(request: Request) -> Response:
    token = await session(request)
    query = request.query_params.get("q", "").strip().lower()
    limit = _limit(request, 50, 500)
    skus = await _sku_list(request, token.tenant)
    found = [s for s in skus if query in s.lower()] if query else skus
    return JSONReply(StockList(skus=await _summaries(request, token.tenant, found[:limit]),
                               total=len(found)))


async def _sku_list(request: Request, tenant: str) -> list[str]:
    """The tenant's SKUs, sorted, read at most every SKU_LIST_KEEP_S per process: the page
    searches as the operator types, and a large catalogue's SMEMBERS is not free."""
    state = request.app.state
    cache: dict[str, tuple[float, list[str]]] = state.console_skus
    hit = cache.get(tenant)
    if hit is not None and time.monotonic() < hit[0]:
        return hit[1]
    skus = await state.engine.skus(tenant)
    cache[tenant] = (time.monotonic() + SKU_LIST_KEEP_S, skus)
    return skus


def _limit(request: Request, default: int, most: int) -> int:
    raw = request.query_params.get("limit") or str(default)
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= most:
        raise MalformedRequest(f"limit must be within 1..{most}")
    return int(raw)


async def stock_detail(request: Request) -> Response:
    token = await session(request)
    state = request.app.state
    sku = request.path_params["sku"]
    try:
        view = await state.engine.stock(token.tenant, sku)
    except UnknownSku:
        view = await Bundles(state.engine).view(token.tenant, sku)
    pushed: dict[str, dict[str, int]] = {}
    channels = [n for n, c in state.settings.channels.items() if c.tenant == token.tenant]
    refs = [f"{sku}|{loc}" for loc in view.locations]
    if channels and refs:
        keys = tenant_keys(token.tenant)
        async with state.redis.pipeline(transaction=False) as pipe:
            for name in channels:
                pipe.hmget(keys.pushed(name), refs)
            found = await pipe.execute()
        for name, values in zip(channels, found, strict=True):
            pushed[name] = {ref: int(v) for ref, v in zip(refs, values, strict=True)
                            if v is not None}
    events: list[Event] = []
    error = None
    try:
        page = await state.audit.query(EventQuery(tenant=token.tenant, sku=sku, limit=20,
                                                  newest_first=True))
        events = page.events
    except Exception as exc:
        if not audit_unreachable(exc):
            raise
        error = "the audit trail is unreachable; stock figures above are current"
    return JSONReply(SkuDetail(view=view, pushed=pushed, events=events, events_error=error))


async def adjust(request: Request) -> Response:
    token = await session(request, change=True)
    body = await read_json(request, AdjustRequest)
    state = request.app.state
    reply, _ = await state.engine.adjust(
        token.tenant, request.path_params["sku"], reason=body.reason,
        idempotency_key=body.idempotency_key, location=body.location, delta=body.delta,
        set_on_hand=body.set_on_hand, unavailable_delta=body.unavailable_delta)
    log.info("console adjust by key %s: %s %s", token.key, reply.sku, reply.location)
    return JSONReply({"sku": reply.sku, "location": reply.location, "after": reply.after})


async def channels(request: Request) -> Response:
    token = await session(request)
    state = request.app.state
    alerts = await list_alerts(state.redis, token.tenant, limit=1000)
    drift = [a for a in alerts if a.type in ("drift", "channel_moved_unexplained")][:50]
    parked = await failed_deliveries(state.redis, token.tenant)
    return JSONReply(ChannelsReply(
        channels=await activity.channel_sync(state.redis, state.settings, token.tenant),
        deliveries=[scrubbed_delivery(state.settings, d)
                    for d in reversed(parked[-MAX_DELIVERIES_SHOWN:])],
        drift=[scrubbed_alert(state.settings, a) for a in drift],
        deliveries_total=len(parked)))


async def retry(request: Request) -> Response:
    token = await session(request, change=True)
    delivery = request.path_params["delivery_id"]
    record = await retry_delivery(request.app.state.redis, token.tenant, delivery)
    if record is None:
        raise NotFound("no failed delivery with this id", id=delivery)
    log.info("console retry by key %s: delivery %s", token.key, delivery)
    return retry_reply(record)


async def events(request: Request) -> Response:
    token = await session(request)
    query = msgspec.structs.replace(event_query(request, token.tenant, blank_is_any=True),
                                    newest_first=True)
    return await read_events(request, query)


# ---- live ------------------------------------------------------------------------------------

class _Hot:
    """Changes per SKU over the last HOT_WINDOW_S seconds, from the outbox entries read."""

    def __init__(self) -> None:
        self.seconds: deque[tuple[int, Counter[str]]] = deque()

    def add(self, second: int, sku: str) -> None:
        if not self.seconds or self.seconds[-1][0] != second:
            self.seconds.append((second, Counter()))
        self.seconds[-1][1][sku] += 1

    def top(self, now_s: int) -> list[tuple[str, int]]:
        while self.seconds and self.seconds[0][0] <= now_s - HOT_WINDOW_S:
            self.seconds.popleft()
        total: Counter[str] = Counter()
        for _, counts in self.seconds:
            total.update(counts)
        return total.most_common(HOT_SKUS)


class _Stream:
    """One console's live stream: `stop` ends it; `superseded` says a newer stream of the
    same console took its place (the page then does not reconnect and steal it back)."""

    __slots__ = ("stop", "superseded", "tenant")

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self.stop = asyncio.Event()
        self.superseded = False


def _supersede(stream: _Stream) -> None:
    stream.superseded = True
    stream.stop.set()


async def _tick(redis: Any, token: sessions.Token, outbox: str, last_id: str, hot: _Hot
                ) -> tuple[str, Tick | None]:
    """One second's tick from the outbox entries after `last_id`: (the new last id, the tick,
    None when the session was signed out meanwhile)."""
    changes = 0
    entries = await redis.xrange(outbox, min=f"({last_id}", count=5000)
    for entry_id, fields in entries:
        last_id = entry_id.decode()
        raw = fields.get(b"e")
        if raw is not None:
            event = _decode_event(raw)
            hot.add(event.ts // 1000, event.sku)
            changes += 1
    now = sessions.now_ms()
    top = hot.top(now // 1000)
    keys = tenant_keys(token.tenant)
    # The hot SKUs' cells read now, every location: an event only tells the cell it changed.
    async with redis.pipeline(transaction=False) as pipe:
        pipe.exists(sessions.signed_out_key(token))
        for sku, _ in top:
            pipe.hgetall(keys.stock(sku))
        signed_out, *cells = await pipe.execute()
    if signed_out:
        return last_id, None
    rates = await activity.last_seconds(redis, token.tenant, ("requests", "holds"), 5)
    return last_id, Tick(
        ts=now, changes_per_s=float(changes), requests_per_s=rates.get("requests", 0) / 5,
        holds_per_s=rates.get("holds", 0) / 5,
        hot=[{"sku": sku, "changes": n, "available": _summary(sku, raw).available}
             for (sku, n), raw in zip(top, cells, strict=True)])


async def _ticks(request: Request, token: sessions.Token, live_stream: _Stream,
                 last_id: str) -> AsyncIterator[bytes]:
    """A tick a second until stopped, signed out, or the session or STREAM_MAX_S ends."""
    stop = live_stream.stop
    redis = request.app.state.redis
    outbox = tenant_keys(token.tenant).outbox
    hot = _Hot()
    ends_ms = min(token.exp_ms, sessions.now_ms() + STREAM_MAX_S * 1000)
    yield b"retry: 2000\n\n"
    while not stop.is_set() and sessions.now_ms() < ends_ms:
        try:
            last_id, tick = await _tick(redis, token, outbox, last_id, hot)
        except (RedisError, OSError, msgspec.DecodeError) as exc:
            log.warning("console live stream: %s", type(exc).__name__)
            yield b": store unreachable\n\n"
        else:
            if tick is None:
                break
            yield b"event: tick\ndata: " + _encode(tick) + b"\n\n"
        with contextlib.suppress(TimeoutError):  # asyncio.timeout: see activity.Tally.run
            async with asyncio.timeout(1.0):
                await stop.wait()
    if live_stream.superseded:
        yield b"event: superseded\ndata: {}\n\n"


async def live(request: Request) -> Response:
    token = await session(request)
    state = request.app.state
    settings = state.settings
    # Where the stream starts, read before the reply starts: a store that is down is a 503.
    last = await state.redis.xrevrange(tenant_keys(token.tenant).outbox, count=1)
    last_id = last[0][0].decode() if last else "0-0"
    streams: dict[str, _Stream] = state.console_streams
    previous = streams.pop(token.sid, None)
    if previous is not None:  # one stream per console: a reload ends the one it replaces
        _supersede(previous)
    mine = [sid for sid, s in streams.items() if s.tenant == token.tenant]  # oldest first
    per_tenant = min(settings.console_max_streams_per_tenant, settings.console_max_streams)
    if len(mine) >= per_tenant:
        _supersede(streams.pop(mine[0]))  # a tenant's newest console takes its own oldest's
    elif len(streams) >= settings.console_max_streams:
        # Full: the tenant holding the most streams gives up its oldest, if it holds more
        # than this tenant would; one tenant's many sign-ins cannot shut the others out.
        tenant, held = Counter(s.tenant for s in streams.values()).most_common(1)[0]
        if held > len(mine) + 1:
            _supersede(streams.pop(next(sid for sid, s in streams.items()
                                        if s.tenant == tenant)))
        elif mine:  # no fairer victim: the tenant's own oldest, as at its own cap
            _supersede(streams.pop(mine[0]))
        else:
            raise StoreUnavailable("too many live consoles on this gateway process")
    stream = streams[token.sid] = _Stream(token.tenant)
    if state.console_closing:
        # The process is stopping: a stream that registers now (its request was in flight
        # when the signal came) would hold the shutdown; its page reconnects elsewhere.
        stream.stop.set()

    def release() -> None:
        if streams.get(token.sid) is stream:
            del streams[token.sid]

    return _LiveResponse(release, _ticks(request, token, stream, last_id),
                         media_type="text/event-stream",
                         headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


class _LiveResponse(StreamingResponse):
    """Gives the stream's slot back however the reply ends, even when the client left
    before the body was first asked for (its generator's own `finally` never runs then)."""

    def __init__(self, release: Any, content: AsyncIterator[bytes], **kw: Any) -> None:
        super().__init__(content, **kw)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


# ---- the mounted app -------------------------------------------------------------------------

async def session_route(request: Request) -> Response:
    if request.method == "POST":
        return await sign_in(request)
    if request.method == "DELETE":
        return await sign_out(request)
    return await who(request)


router = Router(routes=[
    Route("/", page, methods=["GET"]),
    # One route: a 405 names the methods of the first route matching the path only.
    Route("/session", session_route, methods=["GET", "POST", "DELETE"]),
    Route("/static/{path:path}", static, methods=["GET"]),
    Route("/api/overview", overview, methods=["GET"]),
    Route("/api/stock", stock_list, methods=["GET"]),
    Route("/api/stock/{sku:path}/adjust", adjust, methods=["POST"]),
    Route("/api/stock/{sku:path}", stock_detail, methods=["GET"]),
    Route("/api/channels", channels, methods=["GET"]),
    Route("/api/deliveries/{delivery_id}/retry", retry, methods=["POST"]),
    Route("/api/events", events, methods=["GET"]),
    Route("/api/live", live, methods=["GET"]),
])


class ConsoleApp:
    """The console's routes with the security headers on every response, its errors
    answered here (not by the app's handlers outside, which would skip the headers)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        started = False

        async def secured(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                headers.extend(SECURITY_HEADERS)
                if not any(k == b"cache-control" for k, _ in headers):
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await router(scope, receive, secured)
        except Exception as exc:
            if started:
                raise
            await _error(scope, exc)(scope, receive, secured)


def _error(scope: Scope, exc: Exception) -> Response:
    if isinstance(exc, StockgateError):
        return error_reply(exc)
    if isinstance(exc, HTTPException):
        if exc.status_code == 405:  # Allow: what the route takes (RFC 9110 15.5.6)
            allow = (exc.headers or {}).get("Allow", "")
            return JSONReply({"error": "method_not_allowed", "detail": "method not allowed"},
                             status_code=405,
                             headers={"Allow": ", ".join(sorted(allow.split(", ")))})
        return error_reply(NotFound("no such console route"))
    if isinstance(exc, _STORE_ERRORS):
        return error_reply(StoreUnavailable("stock store unreachable"))
    log.error("console: unhandled %s on %s %s", type(exc).__name__, scope["method"],
              scope["path"], exc_info=exc)
    return JSONReply({"error": "internal", "detail": "internal error"}, status_code=500)

