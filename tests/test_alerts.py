"""Operator alerts over the real server: a `once` alert is recorded exactly once, even when
the connection fails in the middle of raising it and the caller tries again."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError

from stockgate.alerts import MAX_ALERTS, list_alerts, raise_alert
from stockgate.embedded import EmbeddedRedis
from stockgate.keys import worker_keys

T = "acme"


async def losing_reply(url: str, lose: int) -> Redis:
    """A client whose connection drops after Redis has run its `lose`-th command but before
    the reply arrives: the write is done, the caller only sees an error. That is the moment
    a worker is killed or the network fails, and the caller (an outbox redo, a job retry)
    raises the alert again."""
    replies, armed = 0, False

    class LosesReply(Connection):
        async def read_response(self, *args: Any, **kwargs: Any) -> Any:
            nonlocal replies
            reply = await super().read_response(*args, **kwargs)
            if armed:
                replies += 1
                if replies == lose:
                    await self.disconnect()
                    raise RedisConnectionError("connection lost (injected)")
            return reply

    client = Redis(connection_pool=ConnectionPool.from_url(url, connection_class=LosesReply))
    await client.ping()  # connected: the handshake's replies are not counted
    armed = True
    return client


@pytest.fixture
async def healthy(redis: Redis) -> AsyncIterator[Redis]:
    # Warm the server's script cache the way a running worker has, so the failure below hits
    # the alert's own write and not a first-time script load.
    await raise_alert(redis, T, "drift", "warm-up", once="warm-up")
    await redis.delete(worker_keys(T).alerts)
    yield redis


@pytest.mark.parametrize("lose", [1, 2])
async def test_a_once_alert_survives_a_failure_midway(
    redis_server: EmbeddedRedis, healthy: Redis, lose: int
) -> None:
    flaky = await losing_reply(redis_server.url, lose)
    try:
        try:
            await raise_alert(flaky, T, "oversell", "order shop:1 refused 2 of SKU-1",
                              sku="SKU-1", channel="shop", once="oversell:shop:1")
        except RedisConnectionError:
            pass  # the worker sees the failure; its retry follows
    finally:
        await flaky.aclose()
    await raise_alert(healthy, T, "oversell", "order shop:1 refused 2 of SKU-1",
                      sku="SKU-1", channel="shop", once="oversell:shop:1")
    alerts = await list_alerts(healthy, T, type="oversell")
    # Recorded, and only once however the failure fell.
    assert [(a.sku, a.channel) for a in alerts] == [("SKU-1", "shop")]


async def test_once_drops_repeats_and_plain_alerts_all_count(healthy: Redis) -> None:
    first = await raise_alert(healthy, T, "low_stock", "SKU-1 at 2", sku="SKU-1",
                              once="low:SKU-1")
    assert first is not None and first.type == "low_stock"
    assert await raise_alert(healthy, T, "low_stock", "SKU-1 at 1", sku="SKU-1",
                             once="low:SKU-1") is None
    for i in range(3):
        assert await raise_alert(healthy, T, "drift", f"drift {i}") is not None
    assert [a.type for a in await list_alerts(healthy, T)] == ["drift"] * 3 + ["low_stock"]
    # The list stays bounded, newest kept.
    for i in range(MAX_ALERTS):
        await raise_alert(healthy, T, "drift", f"flood {i}")
    assert await healthy.llen(worker_keys(T).alerts) == MAX_ALERTS
    assert (await list_alerts(healthy, T, limit=1))[0].detail == f"flood {MAX_ALERTS - 1}"
