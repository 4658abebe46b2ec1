"""A flash sale: far more shoppers than units, all at once, from many connections.

Atomicity is the only thing that stops an oversell here: every check-then-reserve happens
inside one script, so 1,000 racing holds for 100 units must give exactly 100 reservations.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from redis.asyncio import Redis

from stockgate import errors
from stockgate.keys import tenant_keys
from stockgate.models import Line, event_decoder
from stockgate.stock import StockEngine

T = "default"
SKU = "DROP-1"
UNITS = 100
SHOPPERS = 1_000


async def test_thousand_holds_for_a_hundred_units(engines: list[StockEngine],
                                                  redis: Redis) -> None:
    await engines[0].adjust(T, SKU, reason="drop", idempotency_key="drop", delta=UNITS)

    async def shopper(n: int) -> str:
        engine = engines[n % len(engines)]
        try:
            await engine.hold(T, [Line(SKU, 1)], hold_id=f"shopper-{n}")
        except errors.InsufficientStock:
            return "sold out"
        return "held"

    outcomes = Counter(await asyncio.gather(*(shopper(n) for n in range(SHOPPERS))))
    # Any other exception would have failed the gather: only these two outcomes exist.
    assert outcomes == {"held": UNITS, "sold out": SHOPPERS - UNITS}
    assert (await redis.info("clients"))["connected_clients"] > len(engines)

    cell = (await engines[0].stock(T, SKU)).locations["main"]
    assert (cell.on_hand, cell.reserved, cell.available) == (UNITS, UNITS, 0)

    k = tenant_keys(T)
    entries = await redis.xrange(k.outbox)
    kinds = Counter(event_decoder.decode(fields[b"e"]).type for _, fields in entries)
    # One adjust to stock the drop, one event per successful hold, nothing for the refusals.
    assert kinds == {"adjust": 1, "hold": UNITS}
    held = [event_decoder.decode(fields[b"e"]) for _, fields in entries][1:]
    assert len({ev.source.ref for ev in held}) == UNITS
    assert [ev.after.reserved for ev in held if ev.after] == list(range(1, UNITS + 1))
    assert await redis.zcard(k.expiry) == UNITS
