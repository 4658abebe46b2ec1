"""Outbox trimming keeps Redis bounded without ever dropping unread or unacknowledged work."""

from __future__ import annotations

from pathlib import Path

from redis.asyncio import Redis

from stockgate.audit import audit_store
from stockgate.keys import CONSUMER_GROUP, tenant_keys
from stockgate.models import Line
from stockgate.settings import Settings
from stockgate.stock import StockEngine
from workers.outbox import OutboxConfig, OutboxConsumer


async def test_trim_drops_only_acknowledged_entries(
    redis: Redis, engine: StockEngine, tmp_path: Path
) -> None:
    outbox = tenant_keys("default").outbox
    await engine.adjust("default", "T", reason="receipt", idempotency_key="t", delta=10)
    for n in range(3):
        await engine.hold("default", [Line("T", 1)], hold_id=f"t{n}")
    ids = [entry_id for entry_id, _ in await redis.xrange(outbox)]
    assert len(ids) == 4

    store = audit_store(Settings(data_dir=str(tmp_path)))
    await store.open()
    try:
        consumer = OutboxConsumer(redis, Settings(data_dir=str(tmp_path)), store,
                                  OutboxConfig(batch=2, retention_s=0))
        await consumer.ensure_groups()
        assert await consumer.read_new() == 2  # processed and acknowledged
        # A consumer that died after reading its entry: delivered, never acknowledged.
        await redis.xreadgroup(CONSUMER_GROUP, "dead", {outbox: ">"}, count=1)

        assert await consumer.trim() == 2
        left = [entry_id for entry_id, _ in await redis.xrange(outbox)]
        assert left == ids[2:]  # the pending entry and the unread one survive

        # With a retention window nothing recent is trimmed, acknowledged or not.
        keeper = OutboxConsumer(redis, Settings(data_dir=str(tmp_path)), store,
                                OutboxConfig(retention_s=3600))
        assert await keeper.read_new() == 1
        assert await keeper.trim() == 0
        assert await store.count("default") == 3
    finally:
        await store.close()
