"""One pipelined Redis connection for the hot path: every command issued during an event-loop
tick leaves in one write, replies are matched to callers in order.

Why not redis-py's pipeline: its per-batch cost (a Pipeline object, a task and a timeout
scope per send and per reply, a Python RESP encoder per argument) was most of the gateway's
Redis CPU. Here packing is hiredis's C `pack_command`, parsing is hiredis's `Reader` fed
straight from the protocol's `data_received`, and a reply costs one future. Connection set-up
details (host or socket path, AUTH, SELECT, timeouts) come from the redis-py client's pool, so
both talk to the same server the same way. TLS is not handled here: `Wire.usable` is False
and callers keep using redis-py.

The handshake (AUTH, SELECT) is written and its replies checked before any queued command
leaves: pipelined behind a refused SELECT, a write would land in database 0.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import deque
from typing import Any

import hiredis
from redis._parsers.base import BaseParser
from redis.asyncio import Redis
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("stockgate.wire")


class HandshakeRefused(RedisConnectionError):
    """The server refused AUTH or SELECT on connect (wrong password, a database index it does
    not have): a configuration error, so no queued command was sent. A ConnectionError, so
    callers answer 503 as for an unreachable server, and the next call tries again."""


class _ReplyError(Exception):
    """What hiredis builds for an error reply; turned into redis-py's exception classes."""


def _error(reply: _ReplyError) -> Exception:
    return BaseParser.parse_error(str(reply))


def _expire(wire: weakref.ref[Wire], future: asyncio.Future[Any],
            transport: asyncio.Transport) -> None:
    # Through a weak reference: a pending timer must not keep a dropped Wire alive.
    alive = wire()
    if alive is not None:
        alive._expire(future, transport)


class _Protocol(asyncio.Protocol):
    # A weak reference: the event loop holds the transport and the transport holds us, which
    # must not keep a dropped Wire (and its socket) alive until the loop closes.
    def __init__(self, wire: Wire) -> None:
        self.wire = weakref.ref(wire)

    def data_received(self, data: bytes) -> None:
        wire = self.wire()
        if wire is not None:
            wire._received(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        wire = self.wire()
        if wire is not None:
            wire._lost(self, exc)


class Wire:
    """Commands as `await wire.call(*args)`: the reply, or an error reply as an exception
    instance (returned, not raised, like a pipeline with raise_on_error=False). Losing the
    connection raises redis-py's ConnectionError in every waiting caller; the next call
    connects again."""

    def __init__(self, redis: Redis) -> None:
        pool = redis.connection_pool
        kw = pool.connection_kwargs
        self.usable = pool.connection_class in (Connection, UnixDomainSocketConnection)
        self._path: str | None = kw.get("path")
        self._host: str = kw.get("host", "localhost")
        self._port = int(kw.get("port", 6379))
        self._connect_timeout: float = kw.get("socket_connect_timeout") or 5.0
        self._timeout: float | None = kw.get("socket_timeout")
        self._encoding: str | None = kw.get("encoding", "utf-8") if kw.get(
            "decode_responses") else None
        self._hello: list[tuple[Any, ...]] = []
        if kw.get("password"):
            user = kw.get("username")
            self._hello.append(("AUTH", user, kw["password"]) if user
                               else ("AUTH", kw["password"]))
        if kw.get("db"):
            self._hello.append(("SELECT", kw["db"]))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._transport: asyncio.Transport | None = None
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._reader = self._new_reader()
        self._pending: deque[asyncio.Future[Any]] = deque()  # written, awaiting replies
        self._out: list[bytes] = []  # packed this tick, not yet written
        self._out_waiters: list[asyncio.Future[Any]] = []
        self._scheduled = False
        self._refusal = ""  # the last handshake refusal logged

    def _new_reader(self) -> hiredis.Reader:
        if self._encoding:
            return hiredis.Reader(replyError=_ReplyError, encoding=self._encoding)
        return hiredis.Reader(replyError=_ReplyError)

    async def call(self, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._reset(loop)
        future = loop.create_future()
        self._out.append(hiredis.pack_command(args))
        self._out_waiters.append(future)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        reply = await future
        if type(reply) is _ReplyError:
            return _error(reply)
        return reply

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def __del__(self) -> None:
        # An engine dropped without close() (tests make one per case): don't leave the socket
        # to the transport's finaliser, which warns.
        if self._transport is not None and self._loop is not None and not self._loop.is_closed():
            self._transport.close()

    # ---- internals -------------------------------------------------------------------------

    def _reset(self, loop: asyncio.AbstractEventLoop) -> None:
        """First use, or use from another event loop (tests): start over on this loop."""
        if self._transport is not None:
            self._transport.abort()
        self._loop = loop
        self._transport = self._protocol = self._connecting = None
        self._reader = self._new_reader()
        self._pending.clear()
        self._out, self._out_waiters = [], []
        self._scheduled = False

    def _flush(self) -> None:
        self._scheduled = False
        if not self._out:
            return
        if self._transport is None:
            if self._connecting is None:
                self._connecting = asyncio.ensure_future(self._connect())
            return  # written once connected
        out, waiters = self._out, self._out_waiters
        self._out, self._out_waiters = [], []
        self._pending.extend(waiters)
        self._transport.write(out[0] if len(out) == 1 else b"".join(out))
        if self._timeout:
            assert self._loop is not None
            self._loop.call_later(self._timeout, _expire, weakref.ref(self), waiters[-1],
                                  self._transport)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            if self._path:
                connecting = loop.create_unix_connection(lambda: _Protocol(self), self._path)
            else:
                connecting = loop.create_connection(lambda: _Protocol(self), self._host,
                                                    self._port)
            transport, protocol = await asyncio.wait_for(connecting, self._connect_timeout)
        except (TimeoutError, OSError) as exc:
            self._refuse(RedisConnectionError(f"cannot connect: {exc!r}"))
            return
        # Replies are read from here on, but `_flush` writes nothing until `_transport` is set:
        # calls made meanwhile wait in `_out` for the handshake's verdict.
        self._protocol = protocol  # type: ignore[assignment]
        self._reader = self._new_reader()
        try:
            await self._handshake(transport)
        except RedisConnectionError as exc:
            if self._protocol is protocol:
                self._protocol = None
            transport.abort()
            self._refuse(exc)
            return
        self._refusal = ""
        self._transport = transport  # type: ignore[assignment]
        self._connecting = None
        self._flush()

    async def _handshake(self, transport: asyncio.BaseTransport) -> None:
        """AUTH and SELECT, alone in their write, each reply checked before anything else is
        sent; raises HandshakeRefused (naming the command, never its arguments: AUTH carries
        the password) or ConnectionError (lost, or no answer within the connect timeout)."""
        if not self._hello:
            return
        assert self._loop is not None
        replies = [self._loop.create_future() for _ in self._hello]
        self._pending.extend(replies)
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(b"".join(hiredis.pack_command(c) for c in self._hello))
        try:
            async with asyncio.timeout(self._connect_timeout):
                for command, future in zip(self._hello, replies, strict=True):
                    reply = await future
                    if type(reply) is _ReplyError:
                        refused = HandshakeRefused(
                            f"Redis refused {command[0]} on connect: {reply}")
                        # Once per distinct refusal: every call reconnects, and a wrong
                        # database index would otherwise log at the request rate.
                        if str(refused) != self._refusal:
                            self._refusal = str(refused)
                            log.error("%s", refused)
                        raise refused
        except TimeoutError:
            raise RedisConnectionError("Redis did not answer the connection handshake") from None
        finally:
            self._pending.clear()

    def _refuse(self, exc: Exception) -> None:
        """Connecting failed: every call waiting for this connection gets `exc`, nothing was
        written; the next call connects again."""
        self._connecting = None
        self._fail(self._out_waiters, exc)
        self._out, self._out_waiters = [], []

    def _expire(self, future: asyncio.Future[Any], transport: asyncio.Transport) -> None:
        if not future.done() and transport is self._transport:
            self._fail(self._pending, RedisTimeoutError("Timeout reading from Redis"))
            self._pending.clear()
            transport.abort()

    def _received(self, protocol: _Protocol, data: bytes) -> None:
        if protocol is not self._protocol:
            return
        reader = self._reader
        reader.feed(data)
        pending = self._pending
        try:
            while (reply := reader.gets()) is not False:
                future = pending.popleft()
                if not future.done():  # the caller may have been cancelled
                    future.set_result(reply)
        except hiredis.ProtocolError as exc:
            self._fail(pending, RedisConnectionError(f"protocol error: {exc}"))
            pending.clear()
            if self._transport is not None:
                self._transport.abort()

    def _lost(self, protocol: _Protocol, exc: Exception | None) -> None:
        if protocol is not self._protocol:
            return
        self._transport = self._protocol = None
        self._fail(self._pending, RedisConnectionError("connection to Redis lost"))
        self._pending.clear()

    @staticmethod
    def _fail(futures: Any, exc: Exception) -> None:
        for future in futures:
            if not future.done():
                future.set_exception(exc)
