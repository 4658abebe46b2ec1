"""Operator alerts: a bounded list per tenant in Redis (read by GET /v1/alerts) and a log line.

Alerts derived from an event carry a marker (the event id) so that an event redone after a
worker crash does not raise its alert twice.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Literal

import msgspec
from redis.asyncio import Redis

from stockgate.models import RestockReply
from workers.keys import worker_keys

log = logging.getLogger("stockgate.alerts")

AlertType = Literal[
    "drift", "oversell", "low_stock", "delivery_failing", "refund_not_restocked",
    "channel_count_ignored", "order_fetch_failed",
    "unmapped_line",  # a channel order line that could not be stocked (no SKU, bad values)
]
MAX_ALERTS = 1000
_MARKER_TTL_S = 86_400


class Alert(msgspec.Struct, frozen=True):
    id: str
    ts: int
    tenant: str
    type: AlertType
    detail: str
    sku: str = ""
    location: str = ""
    channel: str = ""
    ref: str = ""


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Alert).decode


async def raise_alert(redis: Redis, tenant: str, type: AlertType, detail: str, *,
                      sku: str = "", location: str = "", channel: str = "", ref: str = "",
                      once: str = "", once_ttl_s: int = _MARKER_TTL_S) -> Alert | None:
    """Record an alert. With `once`, a second alert with the same marker within `once_ttl_s`
    is dropped (replayed events, a channel failing again a second later)."""
    keys = worker_keys(tenant)
    if once and not await redis.set(keys.alert_once(once), 1, nx=True, ex=once_ttl_s):
        return None
    alert = Alert(id=uuid.uuid4().hex[:16], ts=int(time.time() * 1000), tenant=tenant,
                  type=type, detail=detail, sku=sku, location=location, channel=channel,
                  ref=ref)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.lpush(keys.alerts, _encode(alert))
        pipe.ltrim(keys.alerts, 0, MAX_ALERTS - 1)
        await pipe.execute()
    log.warning("alert %s tenant=%s sku=%s channel=%s: %s", type, tenant, sku, channel, detail)
    return alert


async def list_alerts(redis: Redis, tenant: str, *, type: str | None = None,
                      limit: int = 100) -> list[Alert]:
    """Newest first."""
    raw = await redis.lrange(worker_keys(tenant).alerts, 0, MAX_ALERTS - 1)
    alerts = [_decode(r) for r in raw]
    if type:
        alerts = [a for a in alerts if a.type == type]
    return alerts[:limit]


async def check_refund(redis: Redis, tenant: str, reply: RestockReply, *,
                       channel: str = "") -> None:
    """Alert when a refund put back fewer units than it named.

    The outbox cannot show this: the restock script emits events only for units it restored,
    so a line that restored nothing leaves no event at all. The caller of
    StockEngine.restock (the gateway) passes the script's reply here instead."""
    for line in reply.lines:
        if line.restocked < line.qty:
            await raise_alert(
                redis, tenant, "refund_not_restocked",
                f"refund {reply.refund_id} restocked {line.restocked} of {line.qty}",
                sku=line.sku, location=line.location, channel=channel, ref=reply.refund_id,
                once=f"refund:{reply.refund_id}:{line.sku}:{line.location}")
