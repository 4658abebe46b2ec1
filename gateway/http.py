"""Request bodies in, JSON replies out: the size limit, content type and schema checks every
JSON route shares, and the one error reply shape."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.errors import (
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


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refused with 413 as soon as it passes `limit` bytes.

    Content-Length is checked first, but a chunked upload has none, so the running total is
    checked while reading too: an oversized body is never buffered whole.
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


async def read_json(request: Request, kind: type[T]) -> T:
    """A JSON route's body as a `kind` Struct: 415, 413 and 400 before anything changes."""
    if not is_json(request):
        raise UnsupportedMediaType("send Content-Type: application/json")
    raw = await read_body(request, request.app.state.settings.max_body_bytes)
    return decode(raw, kind)


def error_reply(exc: StockgateError) -> JSONReply:
    headers = None
    if isinstance(exc, StoreUnavailable):
        headers = {"Retry-After": "1"}
    elif isinstance(exc, RateLimited | OrderNotYetKnown):
        headers = {"Retry-After": str(exc.retry_after)}
    elif exc.status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    return JSONReply(exc.body(), status_code=exc.status, headers=headers)
