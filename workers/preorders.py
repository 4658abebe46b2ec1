"""preorder_at_risk: after incoming units close without arriving (a cancelled purchase order,
a receipt that closed a short delivery), the units promised beyond physical stock at that
cell may no longer be covered by what is still expected. The alert names the orders (and
live holds) most recently promised, newest first, until their units reach the shortfall:
the oldest promises are the ones the stock still on its way will serve first."""

from __future__ import annotations

from redis.asyncio import Redis

from stockgate.keys import tenant_keys
from stockgate.models import Event
from workers.alerts import raise_alert


def closes_incoming(event: Event) -> bool:
    """Open incoming units fell by more than the units that arrived with them."""
    gone = -event.delta.get("incoming", 0)
    return event.type in ("incoming", "receive") and gone > event.delta.get("on_hand", 0)


async def _open_incoming(redis: Redis, tenant: str, sku: str, location: str) -> int:
    raw = await redis.hgetall(tenant_keys(tenant).incoming_sku(sku))
    return sum(int(v.decode().partition("|")[0]) for f, v in raw.items()
               if f.decode().partition("|")[0] == location)


async def _who(redis: Redis, tenant: str, ref: str) -> str | None:
    """The order a promise now belongs to, or None when it is gone (released, expired or
    cancelled: its units came back)."""
    k = tenant_keys(tenant)
    kind, _, ident = ref.partition(":")
    if kind == "hold":
        status, order_id = await redis.hmget(k.hold(ident), "status", "order_id")
        if status == b"held":
            return f"hold {ident}"
        if status == b"committed" and order_id:
            ref, kind, ident = f"order:{order_id.decode()}", "order", order_id.decode()
        else:
            return None
    if kind == "order":
        status = await redis.hget(k.order(ident), "status")
        return f"order {ident}" if status not in (None, b"cancelled") else None
    return None


async def check_event(redis: Redis, tenant: str, event: Event) -> None:
    if not closes_incoming(event) or event.after is None:
        return
    after = event.after
    short = after.reserved + after.committed + after.unavailable - after.on_hand
    uncovered = short - after.backorder_limit - await _open_incoming(
        redis, tenant, event.sku, event.location)
    if uncovered <= 0:
        return
    promises = await redis.zrevrange(tenant_keys(tenant).promised(event.sku, event.location),
                                     0, -1)
    named: list[str] = []
    units = 0
    for member in promises:
        ref, _, qty = member.decode().rpartition("|")
        who = await _who(redis, tenant, ref)
        if who is None:
            continue
        named.append(who)
        units += int(qty)
        if units >= uncovered:
            break
    if not named:
        return
    await raise_alert(
        redis, tenant, "preorder_at_risk",
        f"{uncovered} promised units at {event.location} are no longer covered by incoming "
        f"stock ({event.source.ref} closed); at risk: {', '.join(named)}",
        sku=event.sku, location=event.location, ref=event.id, once=f"ev:{event.id}")
