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

from stockgate.keys import worker_keys
from stockgate.models import RestockReply

log = logging.getLogger("stockgate.alerts")

AlertType = Literal[
    "drift", "oversell", "low_stock", "delivery_failing", "refund_not_restocked",
    "channel_count_ignored", "order_fetch_failed",
    "unmapped_line",  # a channel order line that could not be stocked (no SKU, bad values)
    "refund_needs_review",  # a refund that cannot say which units came back: not restocked
    "webhook_contradiction",  # a signed body under a topic it contradicts: nothing changed
    "stale_delivery",  # a body older than Stockgate remembers it: nothing changed
    "webhook_not_applied",  # a channel said goods moved and Stockgate moved nothing
    "channel_throttled",  # a channel asked us to wait longer than we wait in one piece
    "channel_moved_unexplained",  # a channel's count fell on its own and nothing explains it
    "preorder_at_risk",  # incoming closed short of what pre-orders were promised against
    "worker_failing",  # a worker's outbox or push task fails each time it is started again
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


# Record an alert and its once-marker in one atomic call. Two separate calls (marker, then
# alert) lose the alert for the marker's whole TTL when the second one fails: the retry finds
# the marker and drops it. The marker is also written last, so that even a script stopped
# between its writes (out of memory) leaves a duplicate at worst, never a lost alert.
# KEYS[1] the alert list, KEYS[2] the marker (absent without `once`)
# ARGV[1] the alert JSON, ARGV[2] the list bound, ARGV[3] the marker TTL in seconds
# Returns 1 when recorded, 0 when the marker dropped it.
_RAISE = """
local marker = KEYS[2]
if marker and redis.call('EXISTS', marker) == 1 then return 0 end
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
if marker then redis.call('SET', marker, 1, 'EX', ARGV[3]) end
return 1
"""


async def raise_alert(redis: Redis, tenant: str, type: AlertType, detail: str, *,
                      sku: str = "", location: str = "", channel: str = "", ref: str = "",
                      once: str = "", once_ttl_s: int = _MARKER_TTL_S) -> Alert | None:
    """Record an alert. With `once`, a second alert with the same marker within `once_ttl_s`
    is dropped (replayed events, a channel failing again a second later)."""
    keys = worker_keys(tenant)
    alert = Alert(id=uuid.uuid4().hex[:16], ts=int(time.time() * 1000), tenant=tenant,
                  type=type, detail=detail, sku=sku, location=location, channel=channel,
                  ref=ref)
    script_keys = [keys.alerts, keys.alert_once(once)] if once else [keys.alerts]
    raised = await redis.register_script(_RAISE)(
        keys=script_keys, args=[_encode(alert), MAX_ALERTS, once_ttl_s])
    if not raised:
        return None
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
