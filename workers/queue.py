"""Jobs the gateway enqueues: fetching an order that a webhook names only by id (BigCommerce).

The job fetches the order from the channel's API (the authoritative data) and applies it as
a channel order, or cancels it. Order ids are "<channel_id>:<channel order id>" so two
channels' orders never collide; the engine's idempotency makes a re-run a no-op.
"""

from __future__ import annotations

import logging
from typing import Any

from arq.connections import ArqRedis
from redis.asyncio import Redis

from stockgate.errors import OrderNotFound
from stockgate.models import Line
from stockgate.stock import StockEngine
from workers.adapters import ChannelAdapter
from workers.serializer import job_deserializer, job_serializer

log = logging.getLogger("stockgate.queue")

FETCH_ORDER = "fetch_order"


def order_ref(channel_id: str, order_id: str) -> str:
    return f"{channel_id}:{order_id}"


async def enqueue_fetch_order(redis: Redis, tenant: str, channel_id: str, order_id: str,
                              delivery_id: str) -> None:
    """Queue a fetch of a channel's order. The job id is the webhook delivery id, so a
    duplicate delivery does not queue a second job while the first is known to arq."""
    arq = ArqRedis(connection_pool=redis.connection_pool, job_serializer=job_serializer,
                   job_deserializer=job_deserializer)
    await arq.enqueue_job(FETCH_ORDER, tenant, channel_id, str(order_id), delivery_id,
                          _job_id=f"fetch:{channel_id}:{delivery_id}")


async def apply_channel_order(engine: StockEngine, adapter: ChannelAdapter, tenant: str,
                              channel_id: str, order_id: str) -> str:
    order = await adapter.fetch_order(order_id)
    ref = order_ref(channel_id, order_id)
    if order.cancelled:
        try:
            await engine.cancel(tenant, ref, channel=channel_id)
        except OrderNotFound:
            return "cancelled-unknown"
        return "cancelled"
    if not order.lines:
        return "empty"
    lines = [Line(sku=ln.sku, qty=ln.qty) for ln in order.lines]
    await engine.order(tenant, ref, lines, channel=channel_id)
    return "ordered"


async def fetch_order(ctx: dict[str, Any], tenant: str, channel_id: str, order_id: str,
                      delivery_id: str) -> str:
    runtime = ctx["runtime"]
    adapter = runtime.propagator.adapters[channel_id]
    result = await apply_channel_order(runtime.engine, adapter, tenant, channel_id, order_id)
    log.info("order %s from %s (delivery %s): %s", order_id, channel_id, delivery_id, result)
    return result
