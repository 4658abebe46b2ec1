"""redis-py's asyncio pool, without one connect at a time.

redis-py 5.x's ConnectionPool.get_connection holds the pool's lock while it connects a new
connection (redis/redis-py#3842). When Redis stalls, every connection that timed out is
dropped, and each caller then waits for every connect queued ahead of it: with four tasks on a
worker's pool and a 1 s read timeout, a call failed after 4 s instead of 1 (a flaky test of
the worker's failure budget, tests/test_hardening_workers.py). Here only taking a connection
object is under the lock; connecting happens outside it, as redis-py's own
BlockingConnectionPool already does. Written against redis-py 5.3 (pinned below 6 by arq).
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection


class ConcurrentConnectPool(ConnectionPool):
    async def get_connection(self, command_name: Any = None, *keys: Any,
                             **options: Any) -> AbstractConnection:
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
