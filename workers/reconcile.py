"""Reconciliation: read each channel's counts through its adapter, compare them with the last
value pushed and the canonical available, record drift and re-push the canonical value.

- Reads keep the channel's rate limit: they book the same per-channel call slot as pushes
  (propagation.book_slot), but only a slot that is free now, never one ahead, so pushes waiting
  for the channel go first. A 429 moves the channel's next free time to its Retry-After (as for
  pushes) and ends that channel's sweep for this run.
- Reads are batched: one call slot per adapter.read_batch of up to adapter.read_limit
  targets (Shopify, WooCommerce and BigCommerce read 100 per call; the standard channel one).
- Each run does a bounded slice per channel: it stops after `max_reads` targets or when no
  slot is free before `budget_s`, well inside the cron job's 30 s timeout (budget plus one
  read's HTTP timeout). A cursor per channel, in the tenant's hash `reconcile:cursor`,
  records the last (SKU, location) covered; the next run continues after it and wraps at the
  end of the catalogue. The figure: at Shopify's 2 calls/s a 20 s run makes up to ~40 calls
  of 100 (fewer while pushes use the channel), so a 3,000-SKU catalogue at one location is
  swept in one run (30 calls; one call per SKU took ~75 runs, an hour and a quarter).
  Channels are swept concurrently.
- A target with a push in flight or due (in the due zset) is skipped, before and after the
  read: its count is about to change anyway.
- Drift alerts are raised once per (channel, SKU, location, observed count) a day; the repair
  (a re-push) happens every time. An item the channel does not track (the adapter reads None,
  or a 404) is not drift: logged at debug, no alert, no push.
"""

from __future__ import annotations

import asyncio
import bisect
import logging

import msgspec
from redis.asyncio import Redis

from stockgate.alerts import raise_alert
from stockgate.bundles import Bundles
from stockgate.deliveries import mark_dirty, member_of
from stockgate.errors import UnknownSku
from stockgate.keys import tenant_keys, worker_keys
from stockgate.settings import Channel, Settings
from stockgate.stock import StockEngine
from workers.adapters import ChannelAdapter, PushError
from workers.propagation import (
    book_slot,
    call_interval_ms,
    cas_channels,
    channel_value,
    hold_channel,
    now_ms,
    pending_drops,
    push_location,
    selling_locations,
)

log = logging.getLogger("stockgate.reconcile")


class ReconcileConfig(msgspec.Struct, frozen=True):
    # Per channel and run: at most this many reads, none starting after budget_s.
    max_reads: int = 5000
    budget_s: float = 20.0
    # A compare-and-set channel's drop that nothing has explained for this long is alerted.
    pending_alert_s: float = 600.0


class Drift(msgspec.Struct, frozen=True):
    tenant: str
    channel: str
    sku: str
    location: str
    channel_count: int | None
    last_pushed: int | None
    canonical: int


_cursor_encode = msgspec.json.Encoder().encode
_cursor_decode = msgspec.json.Decoder(tuple[str, str]).decode


async def reconcile(redis: Redis, engine: StockEngine, settings: Settings,
                    adapters: dict[str, ChannelAdapter],
                    config: ReconcileConfig | None = None) -> list[Drift]:
    config = config or ReconcileConfig()
    for name in sorted(cas_channels(settings)):
        await alert_unexplained(redis, settings.channels[name].tenant, name,
                                config.pending_alert_s)
    for tenant in settings.tenant_names():
        await release_removed(redis, engine, settings, tenant)
    deadline = now_ms() + int(config.budget_s * 1000)
    sweeps = [_sweep(redis, engine, settings, name, channel, adapters[name], config, deadline)
              for name, channel in sorted(settings.channels.items())
              if name in adapters and channel.api_url
              and channel.tenant in settings.tenant_names()]
    return [d for drifts in await asyncio.gather(*sweeps) for d in drifts]


async def _take_slot(redis: Redis, tenant: str, channel: str, interval: int,
                     deadline: int) -> bool:
    """Wait for a call slot on the channel that is free now; False if none before deadline
    (this host's clock: the deadline is this run's own budget)."""
    while now_ms() < deadline:
        if not interval:
            return True
        slot = await book_slot(redis, tenant, channel, interval, 0)
        if slot.booked:
            return True
        wait_ms = slot.at - slot.now
        if now_ms() + wait_ms >= deadline:
            return False
        await asyncio.sleep(wait_ms / 1000)
    return False


async def _sweep(redis: Redis, engine: StockEngine, settings: Settings, name: str,
                 channel: Channel, adapter: ChannelAdapter, config: ReconcileConfig,
                 deadline: int) -> list[Drift]:
    """One channel's slice: from after its cursor, until max_reads or the deadline."""
    tenant = channel.tenant
    keys = worker_keys(tenant)
    spots = sorted({push_location(settings, channel, loc)
                    for loc in selling_locations(settings, channel)})
    # Bundle listings too: their derived count drifts like any other (stockgate.bundles).
    skus = sorted({*await engine.skus(tenant), *await Bundles(engine).names(tenant)})
    items = [(sku, loc) for sku in skus for loc in spots]
    raw = await redis.hget(keys.reconcile_cursor, name)
    start = bisect.bisect_right(items, _cursor_decode(raw)) if raw else 0
    if start >= len(items):
        start = 0  # the last run finished the catalogue: start over
    interval = call_interval_ms(channel)
    drifts: list[Drift] = []
    reads, done = 0, None
    rest = iter(items[start:])
    finished = False
    while True:
        # The next chunk: targets with no push due (a push is about to change them anyway),
        # as many as one read call takes, within this run's reads.
        chunk: list[tuple[str, str]] = []
        want = min(adapter.read_limit, config.max_reads - reads)
        if want <= 0:
            if next(rest, None) is None:  # the run's reads ended with the catalogue
                await redis.hdel(keys.reconcile_cursor, name)
                return drifts
            break
        for sku, location in rest:
            if await redis.zscore(keys.due(name), member_of(name, location, sku)) is None:
                chunk.append((sku, location))
                if len(chunk) >= want:
                    break
        else:
            finished = True
        if not chunk:
            await redis.hdel(keys.reconcile_cursor, name)  # only due targets were left
            return drifts
        if not await _take_slot(redis, tenant, name, interval, deadline):
            break
        reads += len(chunk)
        try:
            seen = await adapter.read_batch(chunk)
        except PushError as exc:
            if exc.retry_after is not None:  # 429: leave the channel alone this run
                await hold_channel(redis, tenant, name, exc.retry_after)
                break
            if exc.status != 404:
                log.warning("reconcile: cannot read %d item(s) of %s from %s: %s",
                            len(chunk), name, chunk[0][0], exc)
                done = chunk[-1]
                continue
            seen = [None] * len(chunk)
        except Exception:
            # An adapter that cannot read these items (a body it did not expect) must not end
            # the run for the rest of the catalogue and the other channels.
            log.exception("reconcile: reading %d item(s) of %s from %s failed", len(chunk),
                          name, chunk[0][0])
            done = chunk[-1]
            continue
        for (sku, location), count in zip(chunk, seen, strict=True):
            drift = await _compare(redis, engine, settings, name, channel, sku, location, count)
            if drift is not None:
                drifts.append(drift)
        done = chunk[-1]
        if finished:
            await redis.hdel(keys.reconcile_cursor, name)
            return drifts
    if done is not None:
        await redis.hset(keys.reconcile_cursor, name, _cursor_encode(done))
    return drifts


async def _compare(redis: Redis, engine: StockEngine, settings: Settings, name: str,
                   channel: Channel, sku: str, location: str, seen: int | None) -> Drift | None:
    tenant = channel.tenant
    if seen is None:
        log.debug("reconcile: %s does not track %s at %s", name, sku, location)
        return None
    try:
        view = await engine.stock(tenant, sku)
    except UnknownSku:
        derived = await Bundles(engine).views(tenant, [sku])
        if sku not in derived:
            return None
        view = derived[sku]
    member = member_of(name, location, sku)
    if await redis.zscore(worker_keys(tenant).due(name), member) is not None:
        return None  # a change arrived during the read: its push is on the way
    canonical = channel_value(settings, name, channel, location, view)
    if seen == canonical:
        return None
    raw = await redis.hget(tenant_keys(tenant).pushed(name), f"{sku}|{location}")
    if raw is not None and int(raw) == seen:
        # The channel holds our last push: stock moved since and its push is not marked yet
        # (the outbox is behind, a bulk change): push again, quietly; it is not drift.
        await mark_dirty(redis, tenant, [member])
        return None
    drift = Drift(tenant=tenant, channel=name, sku=sku, location=location, channel_count=seen,
                  last_pushed=int(raw) if raw is not None else None, canonical=canonical)
    await raise_alert(
        redis, tenant, "drift",
        f"{name} shows {seen}, last pushed {drift.last_pushed}, canonical {canonical}; "
        f"re-pushing", sku=sku, location=location, channel=name,
        once=f"drift:{name}:{sku}:{location}:{seen}")
    await mark_dirty(redis, tenant, [member])
    return drift


async def alert_unexplained(redis: Redis, tenant: str, channel: str, after_s: float) -> int:
    """Alert once per drop on each of the channel's targets whose count fell on its own (a
    stale compare-and-set) and that no order event has explained for `after_s`: a sale whose
    order webhook never came, or a person's edit. Pushes keep subtracting it (showing fewer
    units is safe; showing more could sell a unit twice) until an operator adjusts."""
    raised = 0
    seconds, micros = await redis.time()  # the clock moved.lua stamped `since` with
    cutoff = seconds * 1000 + micros // 1000 - int(after_s * 1000)
    for ref, (units, since) in sorted((await pending_drops(redis, tenant, channel)).items()):
        if since and since <= cutoff:
            sku, _, location = ref.rpartition("|")
            await raise_alert(
                redis, tenant, "channel_moved_unexplained",
                f"{channel} showed {units} unit(s) fewer than Stockgate pushed and no order "
                f"from {channel} explains it (a sale whose order webhook never came, or an edit "
                f"in its admin); the units stay set aside (reserved) until its order or its "
                f"count report explains them",
                sku=sku, location=location, channel=channel,
                once=f"unexplained:{channel}:{ref}:{since}")
            raised += 1
    return raised


async def release_removed(redis: Redis, engine: StockEngine, settings: Settings,
                          tenant: str) -> int:
    """Units set aside for a compare-and-set channel that is no longer configured go back
    on sale: its orders can no longer arrive (its webhooks are refused), so nothing would
    ever explain them. Says so in an alert. Returns the units given back."""
    keys = worker_keys(tenant)
    live = cas_channels(settings)
    prefix = keys.cas("")
    given = 0
    # Tenant and channel names hold no glob characters (settings.NAME_PATTERN).
    async for raw in redis.scan_iter(match=prefix + "*", count=100):
        name = raw.decode()[len(prefix):]
        if name in live:
            continue
        for ref, (units, _) in (await pending_drops(redis, tenant, name)).items():
            sku, _, location = ref.rpartition("|")
            await engine.channel_explained(tenant, name, keys.cas(name), sku, location, units)
            given += units
            await raise_alert(
                redis, tenant, "channel_moved_unexplained",
                f"{units} unit(s) set aside for {name}, which is no longer configured, are "
                f"back on sale", sku=sku, location=location, channel=name,
                once=f"removed:{name}:{ref}")
        await redis.delete(keys.cas(name))
    return given
