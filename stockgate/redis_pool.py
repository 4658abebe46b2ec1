"""redis-py's asyncio pool, without one connect at a time.

redis-py 5.x's ConnectionPool.get_connection holds the pool's lock while it connects a new
connection (redis/redis-py#3842). When Redis stalls, every connection that timed out is
dropped, and each caller then waits for every connect queued ahead of it: with four tasks on a
worker's pool and a 1 s read timeout, a call failed after 4 s instead of 1 (a flaky test of
the worker's failure budget, tests/test_hardening_workers.py). Here taking a connection object
is under the lock and connecting is not, as in redis-py's own BlockingConnectionPool.

Connecting outside the lock with no bound would make one connection per concurrent caller:
a burst of 3,000 requests on a gateway whose pool was empty (at start, after a Redis restart)
opened 2,048 connections and failed the rest as "Too many connections", where one connect at
a time had needed 19. So at most CONNECT_SLOTS callers take a connection at once: the others
wait for a slot and then mostly find one that was given back meanwhile. Written against
redis-py 5.3 (pinned below 6 by arq).
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection

# Callers taking a connection at once: each of them may be connecting. Above the tasks a
# worker runs (outbox, pushes, arq's poll, the counters, a cron job), so that a frozen Redis
# fails each of their calls in one timeout; far below any max_connections.
CONNECT_SLOTS = 8


class ConcurrentConnectPool(ConnectionPool):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = asyncio.Semaphore(CONNECT_SLOTS)

    async def get_connection(self, command_name: Any = None, *keys: Any,
                             **options: Any) -> AbstractConnection:
        async with self._slots:
            async with self._lock:
                connection = self.get_available_connection()
            try:
                await self.ensure_connection(connection)
            except BaseException:
                await self.release(connection)
                raise
        return connection


def plain_redis(url: str, **options: Any) -> Redis:
    """Redis.from_url with ConcurrentConnectPool: `options` are the pool's (timeouts,
    max_connections, decode_responses); closing the client closes the pool."""
    return Redis.from_pool(ConcurrentConnectPool.from_url(url, **options))
