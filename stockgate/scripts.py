"""Loads the Lua scripts once and calls them by SHA.

Concurrent calls made in the same event-loop tick go to Redis as one write on one pipelined
connection (stockgate/wire.py): under a flash sale most of the gateway's Redis CPU was
redis-py's per-command and per-batch overhead. Each script still runs atomically on its own.
With WAITAOF after each batch (durability for your own Redis) the batches go through redis-py
pipelines on pooled connections instead: WAITAOF blocks its connection until the fsync, which
would stall every later call queued behind it on a single connection.
"""

from __future__ import annotations

import asyncio
import hashlib
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stockgate.errors import StoreUnavailable
from stockgate.wire import Wire

OPERATIONS = (
    "hold", "release", "commit", "order", "fulfil", "cancel", "restock", "adjust", "policy",
    "expire", "moved", "bundle",
    "extend", "incoming", "receive", "incoming_cancel",
    "allocation",
)
# Upper bound on one pipeline, so a burst does not become one giant reply to parse.
MAX_BATCH = 256


# Error replies of a server that is up but cannot take writes right now: a replica after a
# failover (READONLY), loading its data after a restart (LOADING), out of memory (OOM), a disk
# it cannot write (MISCONF), too few replicas (NOREPLICAS), another script running too long
# (BUSY). Refused at the script's first write, which comes after all its checks, so nothing
# was written;
# the caller should retry, so these are 503s with Retry-After, not 500s.
_TRANSIENT = ("READONLY", "LOADING", "OOM", "MISCONF", "NOREPLICAS", "BUSY", "MASTERDOWN",
              "TRYAGAIN", "CLUSTERDOWN")


def _unavailable(error: Exception) -> StoreUnavailable | None:
    if isinstance(error, ResponseError) and str(error).startswith(_TRANSIENT):
        return StoreUnavailable("stock store cannot take writes right now")
    return None


def script_source(name: str) -> str:
    package = resources.files("stockgate.lua")
    common = package.joinpath("_common.lua").read_text(encoding="utf-8")
    body = package.joinpath(f"{name}.lua").read_text(encoding="utf-8")
    return common + "\n" + body


class _Call:
    __slots__ = ("args", "future", "keys", "name")

    def __init__(self, name: str, keys: list[str], args: list[Any], future: asyncio.Future) -> None:
        self.name = name
        self.keys = keys
        self.args = args
        self.future = future


class Scripts:
    """The stock scripts of one Redis connection pool."""

    def __init__(self, redis: Redis, wait_aof_ms: int = 0) -> None:
        self.redis = redis
        # With a server that fsyncs only once a second, WAITAOF after each batch makes the
        # acknowledgement wait until the batch's writes are on the server's disk.
        self.wait_aof_ms = wait_aof_ms
        self.sources = {name: script_source(name) for name in OPERATIONS}
        self.shas = {
            name: hashlib.sha1(src.encode()).hexdigest() for name, src in self.sources.items()
        }
        self._queue: list[_Call] = []
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task] = set()
        wire = Wire(redis)
        self.wire: Wire | None = wire if wire.usable and not wait_aof_ms else None
        self._loading: asyncio.Future[None] | None = None

    def close(self) -> None:
        """Closes the pipelined connection (the redis-py pool is the caller's to close)."""
        if self.wire is not None:
            self.wire.close()

    async def load(self) -> None:
        """SCRIPT LOAD every script (at start-up, and again after NOSCRIPT)."""
        for name, src in self.sources.items():
            sha = await self.redis.script_load(src)
            if sha != self.shas[name]:
                raise RuntimeError(f"server hashed script {name} differently")

    async def loaded(self) -> bool:
        found = await self.redis.script_exists(*self.shas.values())
        return all(found)

    async def call(self, name: str, keys: list[str], args: list[Any]) -> Any:
        if self.wire is not None:
            return await self._call_wire(name, keys, args)
        loop = asyncio.get_running_loop()
        call = _Call(name, keys, args, loop.create_future())
        self._queue.append(call)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await call.future

    async def _call_wire(self, name: str, keys: list[str], args: list[Any]) -> Any:
        assert self.wire is not None
        try:
            reply = await self.wire.call("EVALSHA", self.shas[name], len(keys), *keys, *args)
            if isinstance(reply, NoScriptError):
                # Redis restarted or failed over and lost its script cache: load and retry.
                await self._reload()
                reply = await self.wire.call("EVALSHA", self.shas[name], len(keys), *keys,
                                             *args)
            if isinstance(reply, Exception):
                raise _unavailable(reply) or reply  # inside the try: AUTH refused too
        except (RedisConnectionError, RedisTimeoutError, OSError):
            raise StoreUnavailable("stock store unreachable") from None
        return reply

    async def _reload(self) -> None:
        """One SCRIPT LOAD round for all the calls that met NOSCRIPT at the same time."""
        if self._loading is None or self._loading.done():
            self._loading = asyncio.ensure_future(self.load())
        await asyncio.shield(self._loading)

    def _flush(self) -> None:
        self._flush_scheduled = False
        queue, self._queue = self._queue, []
        for start in range(0, len(queue), MAX_BATCH):
            task = asyncio.ensure_future(self._send(queue[start : start + MAX_BATCH]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[_Call]) -> None:
        try:
            results = await self._execute(batch)
            if any(isinstance(r, NoScriptError) for r in results):
                # Redis restarted or failed over and lost its script cache: load and retry.
                await self.load()
                retry = [c for c, r in zip(batch, results, strict=True)
                         if isinstance(r, NoScriptError)]
                again = iter(await self._execute(retry))
                results = [next(again) if isinstance(r, NoScriptError) else r for r in results]
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            for call in batch:
                if not call.future.done():
                    call.future.set_exception(StoreUnavailable("stock store unreachable"))
            del exc
            return
        except Exception as exc:  # a bug must reach the callers, not vanish in a task
            for call in batch:
                if not call.future.done():
                    call.future.set_exception(exc)
            return
        for call, result in zip(batch, results, strict=True):
            if call.future.done():
                continue
            if isinstance(result, Exception):
                call.future.set_exception(_unavailable(result) or result)
            else:
                call.future.set_result(result)

    async def _execute(self, batch: list[_Call]) -> list[Any]:
        if self.wait_aof_ms:
            return await self._execute_durable(batch)
        if len(batch) == 1:
            call = batch[0]
            try:
                return [await self.redis.evalsha(
                    self.shas[call.name], len(call.keys), *call.keys, *call.args)]
            except (NoScriptError, ResponseError) as exc:
                return [exc]
        pipe = self.redis.pipeline(transaction=False)
        for call in batch:
            pipe.evalsha(self.shas[call.name], len(call.keys), *call.keys, *call.args)
        return await pipe.execute(raise_on_error=False)

    async def _execute_durable(self, batch: list[_Call]) -> list[Any]:
        pipe = self.redis.pipeline(transaction=False)
        for call in batch:
            pipe.evalsha(self.shas[call.name], len(call.keys), *call.keys, *call.args)
        pipe.execute_command("WAITAOF", 1, 0, self.wait_aof_ms)
        *results, synced = await pipe.execute(raise_on_error=False)
        if isinstance(synced, Exception) or int(synced[0]) < 1:
            # Applied but not confirmed on disk: the caller must not acknowledge it. A retry
            # with the same idempotency key returns the (by then durable) first answer.
            raise RedisConnectionError(f"WAITAOF did not confirm the write: {synced!r}")
        return results
