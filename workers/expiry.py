"""Hold expiry: release holds past their TTL in bounded batches, so their units are back on
sale within about a second of the TTL (the script emits an `expire` event per line)."""

from __future__ import annotations

import logging

from stockgate.stock import StockEngine

log = logging.getLogger("stockgate.expiry")

BATCH = 500
# Bounds one run (about MAX_BATCHES script calls) so the cron job ends well within its timeout;
# whatever is left is taken by the next run a second later.
MAX_BATCHES = 20


async def expire_holds(engine: StockEngine, tenants: list[str]) -> int:
    expired = 0
    for tenant in tenants:
        for _ in range(MAX_BATCHES):
            reply = await engine.expire(tenant, BATCH)
            expired += reply.expired
            if reply.remaining_due == 0:
                break
    if expired:
        log.info("expired %d holds", expired)
    return expired
