"""Loads the Lua scripts once and calls them by SHA.

Concurrent calls made in the same event-loop tick go to Redis as one write on one pipelined
connection (stockgate/wire.py): under a flash sale most of the gateway's Redis CPU was
redis-py's per-command and per-batch overhead. Each script still runs atomically on its own.
With WAITAOF or WAIT after each batch (durability for your own Redis, replicas on a Cluster)
the batches go through redis-py pipelines on pooled connections instead: WAITAOF and WAIT
block their connection, which would stall every later call queued behind them on a single
connection. On a Redis Cluster the batch is one redis-py ClusterPipeline: one pipeline per
node owning a slot in it, with MOVED and ASK followed per call and the slot map refreshed.
"""

from __future__ import annotations

import asyncio
import hashlib
from importlib import resources
from typing import Any

from redis.asyncio.cluster import ClusterNode, PipelineCommand
from redis.exceptions import (
    AskError,
    BusyLoadingError,
    MovedError,
    NoScriptError,
    ReadOnlyError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stockgate.cluster import CLUSTER_UNAVAILABLE, Store, is_cluster
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
# The same refusals as redis-py raises them once it has stripped the code off the message,
# and a Cluster's own: a shard without a primary (the gap before a replica is promoted), a
# slot in migration.
_TRANSIENT_TYPES = (ReadOnlyError, BusyLoadingError, *CLUSTER_UNAVAILABLE)
# Raised by a call that may not have reached the server: the caller retries with the same
# idempotency key, so a call that did land is answered from its record.
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError, *CLUSTER_UNAVAILABLE)


def _unavailable(error: Exception) -> StoreUnavailable | None:
    if isinstance(error, _TRANSIENT_TYPES) or (
            isinstance(error, ResponseError) and str(error).startswith(_TRANSIENT)):
        return StoreUnavailable("stock store cannot take writes right now")
    return None


def _mark(key: str) -> tuple[str, str]:
    """The write sent before WAIT / WAITAOF, to a key of `key`'s tenant (same slot, same
    node). WAIT waits for the writes of its own connection only, and a replayed call (its
    idempotency record found) writes nothing: a retry after a WAIT timeout, on another
    connection or one whose last write had replicated, was confirmed at once and acknowledged
    while no replica had the first attempt's write (a review found it). This write comes
    after every earlier write to the shard in its replication stream, so the wait covers the
    first attempt's too."""
    return ("INCR", key[: key.index("}:") + 2] + "wait-mark")


class NotReplicated(RedisConnectionError):
    """Applied on the primary, but WAIT / WAITAOF did not confirm it in time: not to be
    acknowledged (a retry with the same idempotency key returns the first answer)."""


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

    def __init__(self, redis: Store, wait_aof_ms: int = 0, wait_replicas: int = 0,
                 wait_replicas_ms: int = 500) -> None:
        self.redis = redis
        # With a server that fsyncs only once a second, WAITAOF after each batch makes the
        # acknowledgement wait until the batch's writes are on the server's disk.
        self.wait_aof_ms = wait_aof_ms
        # WAIT after each batch: acknowledged only once this many replicas of the shard have
        # the writes, so a replica promoted after a crash has every acknowledged hold.
        self.wait_replicas = wait_replicas
        self.wait_replicas_ms = wait_replicas_ms
        self.sources = {name: script_source(name) for name in OPERATIONS}
        self.shas = {
            name: hashlib.sha1(src.encode()).hexdigest() for name, src in self.sources.items()
        }
        self._queue: list[_Call] = []
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task] = set()
        self.wire: Wire | None = None
        if not is_cluster(redis) and not wait_aof_ms and not wait_replicas:
            wire = Wire(redis)  # type: ignore[arg-type]
            self.wire = wire if wire.usable else None
        self._loading: asyncio.Future[None] | None = None

    def close(self) -> None:
        """Closes the pipelined connection (the redis-py pool is the caller's to close)."""
        if self.wire is not None:
            self.wire.close()

    async def load(self) -> None:
        """SCRIPT LOAD every script (at start-up, and again after NOSCRIPT)."""
        if is_cluster(self.redis):
            await self._on_primaries(self._load_on)
            return
        for name, src in self.sources.items():
            self._check_sha(name, await self.redis.script_load(src))

    async def loaded(self) -> bool:
        if is_cluster(self.redis):
            return all(await self._on_primaries(self._loaded_on))
        found = await self.redis.script_exists(*self.shas.values())
        return all(found)

    def _check_sha(self, name: str, sha: Any) -> None:
        if (sha.decode() if isinstance(sha, bytes) else sha) != self.shas[name]:
            raise RuntimeError(f"server hashed script {name} differently")

    async def _load_on(self, node: ClusterNode) -> bool:
        for name, src in self.sources.items():
            self._check_sha(name, await node.execute_command("SCRIPT LOAD", src))
        return True

    async def _loaded_on(self, node: ClusterNode) -> bool:
        found = await node.execute_command("SCRIPT EXISTS", *self.shas.values())
        return all(found)

    async def _on_primaries(self, action: Any) -> list[bool]:
        """`action` on each primary on its own. redis-py sends an all-primaries command (SCRIPT
        LOAD, SCRIPT EXISTS) as one, which fails whole when one primary is down, and reacts
        by dropping the nodes that failed and closing every connection: one readiness probe
        during a failover took every shard down for good (a review found it). A primary that
        does not answer is skipped (its tenants' calls answer 503 until it is back or
        replaced, and the replacement gets the scripts on its first NOSCRIPT); none
        answering is a StoreUnavailable."""
        cluster = self.redis
        await cluster.initialize()  # type: ignore[union-attr]
        answers: list[bool] = []
        for node in cluster.get_primaries():  # type: ignore[union-attr]
            try:
                answers.append(await action(node))
            except _UNREACHABLE:
                cluster.refresh_slots()  # type: ignore[union-attr]
        if not answers:
            raise StoreUnavailable("no primary of the Redis Cluster answers")
        return answers

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
        except _UNREACHABLE:
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
        except _UNREACHABLE as exc:
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
        if self.wait_aof_ms or self.wait_replicas:
            return await self._execute_durable(batch)
        if len(batch) == 1:
            call = batch[0]
            try:
                return [await self.redis.evalsha(
                    self.shas[call.name], len(call.keys), *call.keys, *call.args)]
            except (NoScriptError, ResponseError) as exc:
                return [exc]
        # execute_command, not pipe.evalsha: redis-py's ClusterPipeline blocks the evalsha
        # method (a script's keys could span nodes); ours share their tenant's slot.
        pipe = self.redis.pipeline(transaction=False)
        for call in batch:
            pipe.execute_command("EVALSHA", self.shas[call.name], len(call.keys), *call.keys,
                                 *call.args)
        return await pipe.execute(raise_on_error=False)

    async def _execute_durable(self, batch: list[_Call]) -> list[Any]:
        if is_cluster(self.redis):
            return await self._execute_durable_cluster(batch)
        pipe = self.redis.pipeline(transaction=False)
        for call in batch:
            pipe.execute_command("EVALSHA", self.shas[call.name], len(call.keys), *call.keys,
                                 *call.args)
        # WAIT and WAITAOF confirm the writes made on their own connection: the pipeline's.
        pipe.execute_command(*_mark(batch[0].keys[0]))
        for command in self._confirms():
            pipe.execute_command(*command)
        replies = await pipe.execute(raise_on_error=False)
        results, (marked, *confirms) = replies[: len(batch)], replies[len(batch):]
        if isinstance(marked, Exception):
            raise NotReplicated(f"wait mark not written: {marked!r}")
        for confirm in confirms:
            if not self._confirmed(confirm):
                # Applied but not confirmed: the caller must not acknowledge it.
                raise NotReplicated(f"write not confirmed by WAIT/WAITAOF: {confirm!r}")
        return results

    def _confirms(self) -> list[tuple[Any, ...]]:
        confirms: list[tuple[Any, ...]] = []
        if self.wait_replicas:
            confirms.append(("WAIT", self.wait_replicas, self.wait_replicas_ms))
        if self.wait_aof_ms:
            confirms.append(("WAITAOF", 1, 0, self.wait_aof_ms))
        return confirms

    def _confirmed(self, confirm: Any) -> bool:
        if isinstance(confirm, list):  # WAITAOF: [local fsyncs, replica fsyncs]
            return int(confirm[0]) >= 1
        return isinstance(confirm, int) and confirm >= self.wait_replicas

    async def _execute_durable_cluster(self, batch: list[_Call]) -> list[Any]:
        """Per node owning a slot in the batch: its scripts, then WAIT / WAITAOF, as one
        pipeline on one connection, with no retry and no redirection. Not redis-py's
        ClusterPipeline: when a send fails it sends the unanswered commands again, and a
        WAIT, whose target node it drops after the first try, then goes to the Cluster's
        default node (a failover did that: the scripts' first try met the dead primary, the
        second ran them on the promoted replica, and WAIT confirmed them from another shard);
        it follows a MOVED or ASK per command, outside the WAIT too. Here any of these is a
        StoreUnavailable for the calls of that node (a 503: the client retries with its
        idempotency key), and the next call reads the slot map again."""
        cluster = self.redis
        await cluster.initialize()  # type: ignore[union-attr]  # a no-op once it has a map
        nodes: dict[str, tuple[ClusterNode, list[int]]] = {}
        for i, call in enumerate(batch):
            node = cluster.get_node_from_key(call.keys[0])  # type: ignore[union-attr]
            nodes.setdefault(node.name, (node, []))[1].append(i)
        results: list[Any] = [None] * len(batch)
        stale = False

        async def run(node: ClusterNode, indexes: list[int]) -> None:
            nonlocal stale
            commands = [PipelineCommand(n, "EVALSHA", self.shas[batch[i].name],
                                        len(batch[i].keys), *batch[i].keys, *batch[i].args)
                        for n, i in enumerate(indexes)]
            mark = PipelineCommand(len(commands), *_mark(batch[indexes[0]].keys[0]))
            confirms = [PipelineCommand(len(commands) + 1 + n, *command)
                        for n, command in enumerate(self._confirms())]
            try:
                await node.execute_pipeline([*commands, mark, *confirms])
            except _UNREACHABLE:
                stale = True
                for i in indexes:
                    results[i] = StoreUnavailable("stock store unreachable")
                return
            confirmed = all(self._confirmed(c.result) for c in confirms) and not isinstance(
                mark.result, Exception)
            for i, command in zip(indexes, commands, strict=True):
                result = command.result
                if isinstance(result, (MovedError, AskError, *_UNREACHABLE)):
                    stale = True  # not run here, or no answer: the slot map may be old
                    result = StoreUnavailable("stock store unreachable")
                elif not confirmed and not isinstance(result, NoScriptError):
                    # Applied but not confirmed: the caller must not acknowledge it. (A
                    # NOSCRIPT wrote nothing: reloaded and sent again by _send.)
                    result = StoreUnavailable("write not confirmed by WAIT/WAITAOF")
                results[i] = result

        await asyncio.gather(*(run(node, indexes) for node, indexes in nodes.values()))
        if stale:
            # Read the slot map (CLUSTER SLOTS) again on the next call; not redis-py's aclose(),
            # which would also cut every call in flight to the healthy shards.
            cluster.refresh_slots()  # type: ignore[union-attr]
        return results
