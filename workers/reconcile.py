"""Reconciliation: read each channel's counts through its adapter, compare them with the last
value pushed and the canonical available, record drift and re-push the canonical value.

A target with a push in flight (still in the due zset) is skipped: its difference is expected.
"""

from __future__ import annotations

import logging

import msgspec
from redis.asyncio import Redis

from stockgate.errors import UnknownSku
from stockgate.keys import tenant_keys
from stockgate.settings import Settings
from stockgate.stock import StockEngine
from workers.adapters import ChannelAdapter, PushError
from workers.alerts import raise_alert
from workers.keys import worker_keys
from workers.propagation import (
    channel_value,
    mark_dirty,
    member_of,
    push_location,
    selling_locations,
)

log = logging.getLogger("stockgate.reconcile")


class Drift(msgspec.Struct, frozen=True):
    tenant: str
    channel: str
    sku: str
    location: str
    channel_count: int | None
    last_pushed: int | None
    canonical: int


async def reconcile(redis: Redis, engine: StockEngine, settings: Settings,
                    adapters: dict[str, ChannelAdapter]) -> list[Drift]:
    drifts: list[Drift] = []
    for tenant in settings.tenant_names():
        keys = worker_keys(tenant)
        for sku in await engine.skus(tenant):
            try:
                view = await engine.stock(tenant, sku)
            except UnknownSku:
                continue
            for name, channel in settings.channels.items():
                if channel.tenant != tenant or name not in adapters or not channel.api_url:
                    continue
                spots = {push_location(settings, channel, loc)
                         for loc in selling_locations(settings, channel)}
                for location in sorted(spots):
                    member = member_of(name, location, sku)
                    if await redis.zscore(keys.due, member) is not None:
                        continue
                    canonical = channel_value(settings, name, channel, location, view)
                    try:
                        seen = await adapters[name].get_available(sku, location)
                    except PushError as exc:
                        log.warning("reconcile: cannot read %s %s: %s", name, sku, exc)
                        continue
                    if seen == canonical:
                        continue
                    raw = await redis.hget(tenant_keys(tenant).pushed(name), f"{sku}|{location}")
                    drift = Drift(tenant=tenant, channel=name, sku=sku, location=location,
                                  channel_count=seen,
                                  last_pushed=int(raw) if raw is not None else None,
                                  canonical=canonical)
                    drifts.append(drift)
                    await raise_alert(
                        redis, tenant, "drift",
                        f"{name} shows {seen}, last pushed {drift.last_pushed}, "
                        f"canonical {canonical}; re-pushing",
                        sku=sku, location=location, channel=name)
                    await mark_dirty(redis, tenant, [member])
    return drifts
