"""The jobs the gateway queues for the workers (arq): their names, their serializer, and the
calls that queue them. The workers define the jobs under these names (workers/queue.py,
workers/channel_counts.py); arq itself is imported only when a job is queued, since running
jobs is a worker concern.

The serializer is msgspec's msgpack. arq's default is pickle, so anyone able to write to Redis
could run code inside the workers. Job arguments here are plain strings and numbers, which
msgpack carries without that risk.
"""

from __future__ import annotations

from typing import Any

import msgspec
from redis.asyncio import Redis

FETCH_ORDER = "fetch_order"
APPLY_CHANNEL_COUNT = "apply_channel_count"

# An arq result may hold an exception object; msgpack cannot carry one, so it travels as text.
_encoder = msgspec.msgpack.Encoder(enc_hook=repr)
_decoder = msgspec.msgpack.Decoder()


def job_serializer(obj: dict[str, Any]) -> bytes:
    return _encoder.encode(obj)


def job_deserializer(raw: bytes) -> dict[str, Any]:
    return _decoder.decode(raw)


async def enqueue_fetch_order(redis: Redis, tenant: str, channel_id: str, order_id: str,
                              delivery_id: str) -> None:
    """Queue a fetch of a channel's order. The job id is the webhook delivery id, so a
    duplicate delivery does not queue a second job while the first is known to arq."""
    from arq.connections import ArqRedis  # imported late: arq is a worker concern

    arq = ArqRedis(connection_pool=redis.connection_pool, job_serializer=job_serializer,
                   job_deserializer=job_deserializer)
    await arq.enqueue_job(FETCH_ORDER, tenant, channel_id, str(order_id), delivery_id,
                          _job_id=f"fetch:{channel_id}:{delivery_id}")


async def enqueue_channel_count(redis: Redis, tenant: str, channel_id: str, sku: str,
                                location: str, available: int, fingerprint: str,
                                received_ms: int, settle_s: float) -> None:
    """Judge a reported count after `settle_s`. The job id is a digest of the webhook body,
    so a replayed body (even under a new delivery id) is judged once."""
    from arq.connections import ArqRedis  # imported late: arq is a worker concern

    arq = ArqRedis(connection_pool=redis.connection_pool, job_serializer=job_serializer,
                   job_deserializer=job_deserializer)
    await arq.enqueue_job(APPLY_CHANNEL_COUNT, tenant, channel_id, sku, location, available,
                          fingerprint, received_ms, _job_id=f"count:{channel_id}:{fingerprint}",
                          _defer_by=settle_s)
