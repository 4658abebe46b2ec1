"""Counts a channel reports on its own (Shopify inventory_levels/update, a Standard Webhooks
inventory.updated): an echo of a value Stockgate pushed, the channel's own bookkeeping of a
sale Stockgate also receives as an order webhook, or a person's edit in the channel's admin.

Only the last becomes an adjust. The three look alike, and the order webhook of a sale can
arrive before or after the channel's count update for it, so the gateway only drops plain
echoes at once and hands the rest to this job, deferred by a settle time: by then the order
webhook and the push that follows it have landed, and the count is judged against them.
Treating the channel's own sale as an edit would count the sale twice (once as the order,
once as a negative adjust), and a late echo as an edit would create stock that does not exist.

A person's edit is the difference between the count they set and the count the channel showed
when they set it: the last value we pushed, or the channel's own last count, before the report
(TenantKeys.pushed_log). Not the canonical value when the job runs, seconds later: other sales
have moved it meanwhile, and "set to 12 while showing 10" is +2, however far the canonical
count has moved since. An edit never creates more units than the report proves.

The webhook was answered 202 and marked seen before this job runs, so the job is the only
copy of a person's edit: a transient failure (Redis, the audit store) is retried with backoff
and its last try raises a `webhook_not_applied` alert (workers.queue.run_acknowledged). The
channel's own sales are read from the audit trail, so the job also waits (retries) until the
trail has caught up with the outbox as of the report.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import msgspec
from arq.worker import func
from redis.asyncio import Redis

from stockgate.alerts import raise_alert
from stockgate.audit import AuditStore, AuditUnavailable, EventQuery
from stockgate.bundles import Bundles
from stockgate.deliveries import is_echo, mark_dirty, member_of
from stockgate.errors import IdempotencyConflict, UnknownSku
from stockgate.jobs import APPLY_CHANNEL_COUNT
from stockgate.keys import tenant_keys, worker_keys
from stockgate.settings import Settings
from stockgate.stock import StockEngine
from workers.outbox import audited_through
from workers.propagation import (
    SHOWN_PUSH,
    SHOWN_REPORT,
    PropagationConfig,
    cas_channels,
    channel_value,
    log_shown,
)
from workers.queue import ARQ_MAX_TRIES, Acknowledged, run_acknowledged

log = logging.getLogger("stockgate.channel_counts")

# A count update this close to one of the channel's own sales of the SKU (before or after
# it) is the channel's bookkeeping of that sale, not a person's edit.
SALE_WINDOW_MS = 60_000
# Changes a channel makes to its own count: its orders (committed, or refused as oversold),
# cancels and refunds.
_OWN_SALE_TYPES = ("cancel", "commit", "fulfil", "oversell_rejected", "restock")
# A push recorded this shortly before a report may not have reached the channel when the
# count was made (the push is recorded before its call, which may take this long).
PUSH_IN_FLIGHT_MS = int(PropagationConfig().http_timeout_s * 1000)


class Shown(NamedTuple):
    """The channel showed `value` from `ms` on: our push, or its own report."""

    ms: int
    kind: str
    value: int


async def own_sale_near(audit: AuditStore, tenant: str, channel_id: str, sku: str,
                        location: str, received_ms: int) -> bool:
    # Only the channel's sale events, filtered in the query: its carts' holds and releases
    # (thousands in a flash sale) must not fill the page and hide the one sale that matters.
    query = EventQuery(tenant=tenant, sku=sku, channel=channel_id, types=_OWN_SALE_TYPES,
                       since_ms=received_ms - SALE_WINDOW_MS, limit=500)
    while True:
        page = await audit.query(query)
        if any(e.location == location for e in page.events):
            return True
        if page.next_cursor is None:
            return False
        query = msgspec.structs.replace(query, cursor=page.next_cursor)


async def _own_sale_near_any(audit: AuditStore, tenant: str, channel_id: str,
                             skus: list[str], location: str, received_ms: int) -> bool:
    for sku in skus:  # one audit query at a time, stopping at the first sale found
        if await own_sale_near(audit, tenant, channel_id, sku, location, received_ms):
            return True
    return False


async def shown_log(redis: Redis, tenant: str, channel_id: str, ref: str) -> list[Shown]:
    """What the channel showed for `ref`, in no particular order. When the log has expired
    (nothing pushed or reported for a day), the last value pushed predates any report still
    being judged, so it stands in as shown since forever."""
    keys = tenant_keys(tenant)
    raw = await redis.lrange(keys.pushed_log(channel_id, ref), 0, -1)
    if not raw:
        last = await redis.hget(keys.pushed(channel_id), ref)
        return [] if last is None else [Shown(0, SHOWN_PUSH, int(last))]
    log_ = []
    for entry in raw:
        ms, kind, value = entry.decode().split(":")
        log_.append(Shown(int(ms), kind, int(value)))
    return log_


def edit_delta(shown: list[Shown], received_ms: int, reported: int, shown_now: int,
               in_flight_ms: int = PUSH_IN_FLIGHT_MS) -> int:
    """The person's edit: the report minus what the channel showed when it was made."""
    before = [s for s in shown if s.ms <= received_ms]
    if not before:
        # Nothing known that the channel showed: judge against the canonical count now, so the
        # result is the reported count and never above it.
        return reported - shown_now
    then = max(before, key=lambda s: s.ms)
    delta = reported - then.value
    if delta > 0:
        # A push recorded just before the report may still have been on its way: the channel
        # showed it or the value before it. Only the units above all of them are proven.
        cut = received_ms - in_flight_ms
        maybe = [s.value for s in before if s.ms > cut]
        settled = [s for s in before if s.ms <= cut]
        if settled:
            maybe.append(max(settled, key=lambda s: s.ms).value)
        delta = min(delta, reported - max(maybe))
    return delta


async def record_report(redis: Redis, tenant: str, channel_id: str, ref: str,
                        received_ms: int, available: int) -> None:
    """The channel showed its reported count from when it was received: the next count it
    reports (a second edit before our push lands) is judged against this one, so two edits
    in a row are not both measured from the same push."""
    async with redis.pipeline(transaction=False) as pipe:
        log_shown(pipe, tenant, channel_id, ref, SHOWN_REPORT, received_ms, available)
        await pipe.execute()


async def _push_back(redis: Redis, tenant: str, channel_id: str, sku: str, location: str,
                     available: int, fingerprint: str, received_ms: int, why: str) -> None:
    """A count that moves no stock: the canonical figure is pushed back over it, the operator
    is told why (once per report), and the report is logged as what the channel showed."""
    await mark_dirty(redis, tenant, [member_of(channel_id, location, sku)])
    await raise_alert(redis, tenant, "channel_count_ignored", why, sku=sku, location=location,
                      channel=channel_id, ref=fingerprint,
                      once=f"count:{channel_id}:{fingerprint}")
    await record_report(redis, tenant, channel_id, f"{sku}|{location}", received_ms, available)


async def judge_channel_count(redis: Redis, engine: StockEngine, audit: AuditStore,
                              settings: Settings, tenant: str, channel_id: str, sku: str,
                              location: str, available: int, fingerprint: str,
                              received_ms: int, in_flight_ms: int = PUSH_IN_FLIGHT_MS) -> str:
    ref = f"{sku}|{location}"
    if await is_echo(redis, tenant, channel_id, ref, available):
        return "echo"
    components = await Bundles(engine).definitions(tenant, [sku])
    shown = await shown_log(redis, tenant, channel_id, ref)
    if any(s.kind == SHOWN_REPORT and s.ms > received_ms for s in shown):
        # A later count of the channel was judged already (this job ran late): it was measured
        # from what the channel showed then, which includes this edit; judging this one now
        # would count the edit again.
        return "stale"
    if not await audited_through(redis, tenant, received_ms):
        # A sale of that time may not be in the trail yet (the audit store was down, a worker
        # is catching up): judged now, it would look like a person's edit and count twice.
        raise AuditUnavailable("the audit trail has not caught up with the outbox yet")
    # A kit sold on the channel is its components' sale events (their reasons name the kit).
    sold_as = [c for c, _ in components.get(sku, [])] or [sku]
    if await _own_sale_near_any(audit, tenant, channel_id, sold_as, location, received_ms):
        # Overwrite the channel's figure with the canonical one; an edit a person made in
        # the middle of the channel's own sales is not told apart, so say so.
        await _push_back(redis, tenant, channel_id, sku, location, available, fingerprint,
                         received_ms, f"{channel_id} reported {available} during its own "
                         "sales of the SKU; the canonical count is pushed back (make stock "
                         "edits in Stockgate during a sale)")
        return "own_sale"
    channel = settings.channels[channel_id]
    if components:
        # A bundle has no stock of its own: a count set on its listing cannot say which
        # component changed, so it moves none; the derived count is pushed back over it. A
        # drop the channel's compare-and-set found and set aside as kits' components
        # (lua/moved.lua) is, up to this edit's size, explained by it: no order will come
        # for those kits, so their components go back on sale.
        view = (await Bundles(engine).views(tenant, [sku]))[sku]
        shown_now = channel_value(settings, channel_id, channel, location, view)
        kits = -edit_delta(shown, received_ms, available, shown_now, in_flight_ms)
        if kits > 0 and channel_id in cas_channels(settings):
            await engine.channel_explained(tenant, channel_id,
                                           worker_keys(tenant).cas(channel_id), sku, location,
                                           kits)
        await _push_back(redis, tenant, channel_id, sku, location, available, fingerprint,
                         received_ms, f"{channel_id} reported {available} for a bundle; a "
                         "bundle's count is derived from its components (change those in "
                         "Stockgate)")
        return "bundle"
    try:
        view = await engine.stock(tenant, sku)
    except UnknownSku:
        shown_now, removable = 0, 0  # the first adjust creates the SKU
    else:
        shown_now = channel_value(settings, channel_id, channel, location, view)
        cell = view.locations.get(location)
        removable = cell.on_hand - cell.unavailable if cell else 0
    # A removal larger than the location holds now (sales since the report took the rest)
    # stops at what is there: on_hand never goes below zero or below the unsellable units.
    delta = max(edit_delta(shown, received_ms, available, shown_now, in_flight_ms),
                -removable)
    if delta != 0:
        try:
            await engine.adjust(tenant, sku, location=location, delta=delta,
                                reason=f"set to {available} in {channel_id} admin",
                                idempotency_key=f"{channel_id}:count:{fingerprint}",
                                channel=channel_id)
        except IdempotencyConflict:
            # An earlier try applied this report's adjust and failed after it; a push since
            # moved the log, so this try measured another delta. The first one stands.
            pass
        if delta < 0 and channel_id in cas_channels(settings):
            # Units set aside for this channel's unexplained drop (lua/moved.lua) are, up to
            # the edit's size, the drop this report measured and the adjust just applied:
            # keeping them aside as well would take the same units off sale twice. Units
            # beyond it stay: they are sales whose orders are still on their way.
            await engine.channel_explained(tenant, channel_id,
                                           worker_keys(tenant).cas(channel_id), sku, location,
                                           -delta)
    # After the adjust: a job redone after a crash in between must not find its own report
    # and judge the edit as no change.
    await record_report(redis, tenant, channel_id, ref, received_ms, available)
    return "applied" if delta else "no_change"


async def _apply_channel_count(ctx: dict[str, Any], tenant: str, channel_id: str, sku: str,
                               location: str, available: int, fingerprint: str,
                               received_ms: int) -> str:
    runtime = ctx["runtime"]
    in_flight_ms = int(runtime.config.propagation.http_timeout_s * 1000)
    job = Acknowledged(
        tenant=tenant, channel=channel_id, alert="webhook_not_applied",
        what=f"count {available} of {sku}|{location} from {channel_id} (report {fingerprint})",
        ref=fingerprint, once=f"count_failed:{channel_id}:{fingerprint}")
    outcome = await run_acknowledged(
        ctx, runtime.config.count, job,
        lambda: judge_channel_count(runtime.redis, runtime.engine, runtime.audit,
                                    runtime.settings, tenant, channel_id, sku, location,
                                    available, fingerprint, received_ms, in_flight_ms))
    log.info("%s: %s", job.what, outcome)
    return outcome


apply_channel_count = func(_apply_channel_count, name=APPLY_CHANNEL_COUNT,
                           max_tries=ARQ_MAX_TRIES)
