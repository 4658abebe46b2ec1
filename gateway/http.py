"""Request bodies in, JSON replies out: the size limit, content type and schema checks every
JSON route shares, and the one error reply shape."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import BodyTooLarge, MalformedRequest, RateLimited, UnsupportedMediaType
from stockgate.errors import StockgateError, StoreUnavailable

T = TypeVar("T")
_encode = msgspec.json.Encoder().encode
_decoders: dict[type, msgspec.json.Decoder] = {}


class JSONReply(Response):
    """A JSON response encoded by msgspec (Structs, dicts, lists)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return _encode(content)


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
    elif isinstance(exc, RateLimited):
        headers = {"Retry-After": str(exc.retry_after)}
    elif exc.status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    return JSONReply(exc.body(), status_code=exc.status, headers=headers)
