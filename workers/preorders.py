"""preorder_at_risk: after incoming units close without arriving (a cancelled purchase order,
a receipt that closed a short delivery), the units promised beyond physical stock at that
cell may no longer be covered by what is still expected. The alert names the orders (and
live holds) most recently promised, newest first, until their units reach the shortfall:
the oldest promises are the ones the stock still on its way will serve first. A promise's
units are what its holder still has open at the cell (read from the order's or hold's
record, never more than the promise recorded): a promise is noted once, at its size then,
and an edit, a smaller claiming order or a refund before shipping shrinks it later."""

from __future__ import annotations

import json

from redis.asyncio import Redis

from stockgate.alerts import raise_alert
from stockgate.keys import tenant_keys
from stockgate.models import Event


def closes_incoming(event: Event) -> bool:
    """Open incoming units fell by more than the units that arrived with them."""
    gone = -event.delta.get("incoming", 0)
    return event.type in ("incoming", "receive") and gone > event.delta.get("on_hand", 0)


async def _open_incoming(redis: Redis, tenant: str, sku: str, location: str) -> int:
    raw = await redis.hgetall(tenant_keys(tenant).incoming_sku(sku))
    return sum(int(v.decode().partition("|")[0]) for f, v in raw.items()
               if f.decode().partition("|")[0] == location)


async def _holder(redis: Redis, tenant: str, ref: str, sku: str, location: str
                  ) -> tuple[str, int] | None:
    """Who a promise now belongs to ("hold <id>" or "order <id>"; a committed hold is its
    order) and how many units that one still has open at the cell, read from its record:
    an edit, a claim by a smaller order or a refund before shipping leaves fewer than were
    promised. None when it is gone (released, expired or cancelled: its units came back)."""
    k = tenant_keys(tenant)
    kind, _, ident = ref.partition(":")
    if kind == "hold":
        status, order_id, lines = await redis.hmget(k.hold(ident), "status", "order_id",
                                                    "lines")
        if status == b"held":
            held = sum(int(ln[2]) for ln in json.loads(lines or b"[]")
                       if ln[0] == sku and ln[1] == location)
            return f"hold {ident}", held
        if status == b"committed" and order_id:
            kind, ident = "order", order_id.decode()
        else:
            return None
    if kind == "order":
        status, lines = await redis.hmget(k.order(ident), "status", "lines")
        if status in (None, b"cancelled"):
            return None
        # Open units only: shipped ones left the shelf, refunded or edited-away ones came back.
        open_units = sum(int(ln.get("open", 0)) for ln in json.loads(lines or b"[]")
                         if ln.get("sku") == sku and ln.get("location") == location)
        return f"order {ident}", open_units
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
    # Per holder, its open units not yet counted: one order can stand behind several
    # promises (a hold it claimed, an edit that took more), and each promise counts only
    # what is still open of it, never more than its recorded size.
    left: dict[str, int] = {}
    for member in promises:
        ref, _, qty = member.decode().rpartition("|")
        found = await _holder(redis, tenant, ref, event.sku, event.location)
        if found is None:
            continue
        who, open_units = found
        at_risk = min(int(qty), left.setdefault(who, open_units))
        if at_risk <= 0:
            continue
        left[who] -= at_risk
        if who not in named:
            named.append(who)
        units += at_risk
        if units >= uncovered:
            break
    if not named:
        return
    await raise_alert(
        redis, tenant, "preorder_at_risk",
        f"{uncovered} promised units at {event.location} are no longer covered by incoming "
        f"stock ({event.source.ref} closed); at risk: {', '.join(named)}",
        sku=event.sku, location=event.location, ref=event.id, once=f"ev:{event.id}")
