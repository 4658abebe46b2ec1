"""Counts a channel reports on its own (Shopify inventory_levels/update, a Standard Webhooks
inventory.updated): an echo of a value Stockgate pushed, the channel's own bookkeeping of a
sale Stockgate also receives as an order webhook, or a person's edit in the channel's admin.

Only the last becomes an adjust. The three look alike, and the order webhook of a sale can
arrive before or after the channel's count update for it, so the gateway only drops plain
echoes at once and hands the rest to this job, deferred by a settle time: by then the order
webhook and the push that follows it have landed, and the count is judged against them.
Treating the channel's own sale as an edit would count the sale twice (once as the order,
once as a negative adjust), and a late echo as an edit would create stock that does not exist.
"""

from __future__ import annotations

import logging
from typing import Any

from arq.connections import ArqRedis
from redis.asyncio import Redis

from stockgate.errors import UnknownSku
from stockgate.keys import tenant_keys
from stockgate.settings import Settings
from stockgate.stock import StockEngine
from workers.alerts import raise_alert
from workers.audit import AuditStore, EventQuery
from workers.propagation import channel_value, mark_dirty, member_of
from workers.serializer import job_deserializer, job_serializer

log = logging.getLogger("stockgate.channel_counts")

APPLY_CHANNEL_COUNT = "apply_channel_count"
# A count update this close to one of the channel's own sales of the SKU (before or after
# it) is the channel's bookkeeping of that sale, not a person's edit.
SALE_WINDOW_MS = 60_000
# Changes a channel makes to its own count: its orders (committed, or refused as oversold),
# cancels and refunds.
_OWN_SALE_TYPES = frozenset({"commit", "oversell_rejected", "cancel", "fulfil", "restock"})


async def is_echo(redis: Redis, tenant: str, channel: str, ref: str, value: int) -> bool:
    recent = await redis.lrange(tenant_keys(tenant).pushed_recent(channel, ref), 0, -1)
    return str(value).encode() in recent


async def enqueue_channel_count(redis: Redis, tenant: str, channel_id: str, sku: str,
                                location: str, available: int, fingerprint: str,
                                received_ms: int, settle_s: float) -> None:
    """Judge a reported count after `settle_s`. The job id is a digest of the webhook body,
    so a replayed body (even under a new delivery id) is judged once."""
    arq = ArqRedis(connection_pool=redis.connection_pool, job_serializer=job_serializer,
                   job_deserializer=job_deserializer)
    await arq.enqueue_job(APPLY_CHANNEL_COUNT, tenant, channel_id, sku, location, available,
                          fingerprint, received_ms, _job_id=f"count:{channel_id}:{fingerprint}",
                          _defer_by=settle_s)


async def own_sale_near(audit: AuditStore, tenant: str, channel_id: str, sku: str,
                        location: str, received_ms: int) -> bool:
    page = await audit.query(EventQuery(tenant=tenant, sku=sku, channel=channel_id,
                                        since_ms=received_ms - SALE_WINDOW_MS, limit=500))
    return any(e.location == location and e.type in _OWN_SALE_TYPES for e in page.events)


async def judge_channel_count(redis: Redis, engine: StockEngine, audit: AuditStore,
                              settings: Settings, tenant: str, channel_id: str, sku: str,
                              location: str, available: int, fingerprint: str,
                              received_ms: int) -> str:
    ref = f"{sku}|{location}"
    if await is_echo(redis, tenant, channel_id, ref, available):
        return "echo"
    if await own_sale_near(audit, tenant, channel_id, sku, location, received_ms):
        # Overwrite the channel's figure with the canonical one; an edit a person made in
        # the middle of the channel's own sales is not told apart, so say so.
        await mark_dirty(redis, tenant, [member_of(channel_id, location, sku)])
        await raise_alert(
            redis, tenant, "channel_count_ignored",
            f"{channel_id} reported {available} during its own sales of the SKU; the "
            "canonical count is pushed back (make stock edits in Stockgate during a sale)",
            sku=sku, location=location, channel=channel_id, ref=fingerprint,
            once=f"count:{channel_id}:{fingerprint}")
        return "own_sale"
    channel = settings.channels[channel_id]
    try:
        shown = channel_value(settings, channel_id, channel, location,
                              await engine.stock(tenant, sku))
    except UnknownSku:
        shown = 0  # the first adjust creates the SKU
    delta = available - shown
    if delta == 0:
        return "no_change"
    await engine.adjust(tenant, sku, location=location, delta=delta,
                        reason=f"set to {available} in {channel_id} admin",
                        idempotency_key=f"{channel_id}:count:{fingerprint}",
                        channel=channel_id)
    return "applied"


async def apply_channel_count(ctx: dict[str, Any], tenant: str, channel_id: str, sku: str,
                              location: str, available: int, fingerprint: str,
                              received_ms: int) -> str:
    runtime = ctx["runtime"]
    outcome = await judge_channel_count(runtime.redis, runtime.engine, runtime.audit,
                                        runtime.settings, tenant, channel_id, sku, location,
                                        available, fingerprint, received_ms)
    log.info("count %s of %s|%s from %s: %s", available, sku, location, channel_id, outcome)
    return outcome
