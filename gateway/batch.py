"""Plain Redis commands of concurrent requests sent as one pipeline per event-loop tick.

The same idea as the stock scripts' batching (stockgate/scripts.py), for the webhook dedupe
records: under load most of a redis.asyncio call's cost is per-command Python overhead, which
a pipeline pays once per batch. Given the stock scripts' Wire, the commands share its
connection and its writes (one write per tick for scripts and commands together).
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stockgate.errors import StoreUnavailable
from stockgate.wire import Wire

MAX_BATCH = 256


class Commands:
    def __init__(self, redis: Redis, wire: Wire | None = None) -> None:
        self.redis = redis
        self.wire = wire
        self._queue: list[tuple[tuple[Any, ...], asyncio.Future]] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task] = set()

    async def run(self, *args: Any) -> Any:
        if self.wire is not None:
            try:
                reply = await self.wire.call(*args)
                if isinstance(reply, Exception):
                    raise reply  # inside the try: an AUTH refusal is a connection error too
            except (RedisConnectionError, RedisTimeoutError, OSError):
                raise StoreUnavailable("stock store unreachable") from None
            return reply
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append((args, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        queue, self._queue = self._queue, []
        for start in range(0, len(queue), MAX_BATCH):
            task = asyncio.ensure_future(self._send(queue[start : start + MAX_BATCH]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[tuple[Any, ...], asyncio.Future]]) -> None:
        try:
            if len(batch) == 1:
                results = [await self.redis.execute_command(*batch[0][0])]
            else:
                pipe = self.redis.pipeline(transaction=False)
                for args, _ in batch:
                    pipe.execute_command(*args)
                results = await pipe.execute(raise_on_error=False)
        except (RedisConnectionError, RedisTimeoutError, OSError):
            results = [StoreUnavailable("stock store unreachable")] * len(batch)
        except Exception as exc:  # a bug must reach the callers, not vanish in a task
            results = [exc] * len(batch)
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
