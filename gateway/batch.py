"""Plain Redis commands of the webhook path (dedupe records), on the stock scripts' Wire when
there is one: they then share its connection and its one write per event-loop tick. Without
a Wire (TLS, or WAITAOF durability) they go through redis-py directly; that path is for
correctness, not speed, and is not batched."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stockgate.errors import StoreUnavailable
from stockgate.wire import Wire


class Commands:
    def __init__(self, redis: Redis, wire: Wire | None = None) -> None:
        self.redis = redis
        self.wire = wire

    async def run(self, *args: Any) -> Any:
        try:
            if self.wire is None:
                return await self.redis.execute_command(*args)
            reply = await self.wire.call(*args)
            if isinstance(reply, Exception):
                raise reply  # inside the try: an AUTH refusal is a connection error too
        except (RedisConnectionError, RedisTimeoutError, OSError):
            raise StoreUnavailable("stock store unreachable") from None
        return reply
