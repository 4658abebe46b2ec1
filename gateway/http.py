"""Request bodies in, JSON replies out: the size limit, content type and schema checks every
JSON route shares, and the one error reply shape."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import msgspec
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.errors import (
    BodyTimeout,
    BodyTooLarge,
    MalformedRequest,
    OrderNotYetKnown,
    RateLimited,
    UnsupportedMediaType,
)
from stockgate.errors import StockgateError, StoreUnavailable

T = TypeVar("T")
_encode = msgspec.json.Encoder().encode
_decoders: dict[type, msgspec.json.Decoder] = {}


_CONTENT_TYPE = (b"content-type", b"application/json")


class JSONReply(Response):
    """A JSON response encoded by msgspec (Structs, dicts, lists).

    Builds its raw headers itself, in the order and spelling Starlette's `init_headers` would
    (the caller's headers, lower-cased, then content-length, then content-type): every reply
    of the API is one of these, and the generic path cost a measurable share of a hold.
    """

    media_type = "application/json"

    def __init__(self, content: Any = None, status_code: int = 200,
                 headers: Mapping[str, str] | None = None) -> None:
        self.status_code = status_code
        self.background = None
        self.body = body = _encode(content)
        if headers is None and status_code >= 200 and status_code not in (204, 304):
            self.raw_headers = [(b"content-length", b"%d" % len(body)), _CONTENT_TYPE]
        else:
            self.init_headers(headers)

    def render(self, content: Any) -> bytes:
        return _encode(content)


class Endpoint:
    """A route target calling `handler(request)` and sending the reply it returns.

    Starlette wraps a plain function endpoint in `request_response`, which adds a second
    exception-mapping layer with the same handlers as the ExceptionMiddleware around the
    router, one more coroutine and closure per request. A hot route skips it: an exception
    from the handler reaches that middleware unchanged and gets the same reply.
    """

    __slots__ = ("__name__", "handler")

    def __init__(self, handler: Callable[[Request], Awaitable[Response]]) -> None:
        self.handler = handler
        self.__name__ = handler.__name__  # the route's name, as for the function itself

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.handler(Request(scope, receive, send))
        await response(scope, receive, send)


class BodyDeadlines:
    """The deadlines of the request bodies being read in one process, enforced by one sweep
    every `tick_s` instead of one timer per request: `asyncio.timeout` around a body read
    cost 4.3 us per request (benchmarks/metrics_cost.py), about a tenth of a hold's gateway
    CPU, and this 0.4 us. A deadline fires up to `tick_s` late, which a limit of seconds
    can afford.

    The sweep cancels a reading task that is past its deadline. The task is registered only
    while it awaits `receive()` in read_body, so that is where the cancellation lands, and
    read_body turns it into a 408.
    """

    def __init__(self, tick_s: float = 0.25) -> None:
        self.tick_s = tick_s
        self._reading: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    def watch(self, timeout_s: float) -> asyncio.Task[Any]:
        task = asyncio.current_task()
        assert task is not None
        loop = task.get_loop()
        self._reading[task] = loop.time() + timeout_s
        sweeper = self._sweeper
        if sweeper is None or sweeper.done() or sweeper.get_loop() is not loop:
            self._sweeper = loop.create_task(self._sweep())
        return task

    def done(self, task: asyncio.Task[Any]) -> bool:
        """Stops watching `task`; True when the sweep had cancelled it."""
        del self._reading[task]
        if task in self._expired:
            self._expired.discard(task)
            return True
        return False

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.tick_s)
            now = loop.time()
            for task, deadline in self._reading.items():
                if deadline <= now and task not in self._expired:
                    self._expired.add(task)
                    task.cancel()


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The raw body, refused with 413 as soon as it passes `limit` bytes, and with 408 when it
    has not arrived in full within `timeout_s` (a client stalled mid-body would otherwise
    hold its connection and this task for ever).

    Content-Length is checked first, but a chunked upload has none, so the running total is
    checked while reading too: an oversized body is never buffered whole. The deadline covers
    the whole body, not each chunk: a client trickling a byte at a time is cut off too.
    """
    declared = None
    for name, value in request.scope["headers"]:
        if name == b"content-length":
            declared = value
            break
    # A length of more digits than the limit has is over it, and never reaches int().
    if declared is not None and declared.isdigit() and (
            len(declared) > len(str(limit)) or int(declared) > limit):
        raise BodyTooLarge(f"body over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    receive = request.receive
    deadlines: BodyDeadlines = request.app.state.body_deadlines
    task = deadlines.watch(timeout_s)
    watching = True
    try:
        while True:
            message = await receive()
            if message["type"] != "http.request":  # client went away mid-body
                raise MalformedRequest("request body incomplete")
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge(f"body over {limit} bytes")
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
    except asyncio.CancelledError:
        watching = False
        if not deadlines.done(task):
            raise  # the server's own cancellation (shutdown), not the deadline
        task.uncancel()
        raise BodyTimeout(f"request body not received within {timeout_s:g} s") from None
    finally:
        if watching:
            deadlines.done(task)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def is_json(request: Request) -> bool:
    for name, value in request.scope["headers"]:
        if name == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            return media == b"application/json" or media.endswith(b"+json")
    return False


def decode(raw: bytes, kind: type[T]) -> T:
    """Decode and validate in one pass; errors name the offending field."""
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise MalformedRequest(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise MalformedRequest(f"malformed JSON: {exc}") from None


_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-")


def path_id(request: Request, name: str) -> str:
    """An id from the path (a hold's, an incoming record's): checked before it becomes part
    of a Redis key, with the error naming it."""
    value: str = request.path_params[name]
    if not 0 < len(value) <= 128 or not set(value) <= _ID_CHARS:
        raise MalformedRequest(f"{name}: expected 1-128 of A-Z a-z 0-9 _ . : -")
    return value


class SkuConvertor(Convertor[str]):
    """Any characters, slashes and control characters included: "TEE/XL" is a common SKU
    (clients percent-encode the slash), and a bad one must reach path_sku for a clear 400
    rather than fall through to "no such route"."""

    regex = r"[\s\S]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("sku", SkuConvertor())


def path_sku(request: Request) -> str:
    """The SKU from the path: any printable characters (a slash percent-encoded), 1-128."""
    sku: str = request.path_params["sku"]
    if not 0 < len(sku) <= 128 or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in sku):
        raise MalformedRequest("sku: expected 1-128 printable characters")
    return sku


async def read_json(request: Request, kind: type[T]) -> T:
    """A JSON route's body as a `kind` Struct: 415, 413 and 400 before anything changes."""
    if not is_json(request):
        raise UnsupportedMediaType("send Content-Type: application/json")
    settings = request.app.state.settings
    raw = await read_body(request, settings.max_body_bytes, settings.body_timeout_s)
    return decode(raw, kind)


def error_reply(exc: StockgateError) -> JSONReply:
    headers = None
    if isinstance(exc, StoreUnavailable):
        headers = {"Retry-After": "1"}
    elif isinstance(exc, RateLimited | OrderNotYetKnown):
        headers = {"Retry-After": str(exc.retry_after)}
    elif exc.status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    elif isinstance(exc, BodyTimeout):
        # Close: a stalled client's connection is what it holds; keep-alive would keep it.
        headers = {"Connection": "close"}
    return JSONReply(exc.body(), status_code=exc.status, headers=headers)
