"""Redis keys owned by the workers: delivery bookkeeping and alerts, under the tenant's hash
tag like every other key of the tenant."""

from __future__ import annotations

from stockgate.keys import tenant_keys

CONSUMER_GROUP = "stockgate-workers"


class WorkerKeys:
    __slots__ = ("alerts", "attempts", "due", "failed", "prefix", "reconcile_cursor", "tenant",
                 "versions")

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self.prefix = tenant_keys(tenant).prefix
        # zset "<channel>|<location>|<sku>" -> ms when it may next be pushed (or lease end).
        self.due = self.prefix + "deliv:due"
        # hash member -> change counter, bumped by every event touching the member.
        self.versions = self.prefix + "deliv:ver"
        # hash member -> failed attempts in a row.
        self.attempts = self.prefix + "deliv:tries"
        # hash delivery id -> FailedDelivery JSON (parked after the last try).
        self.failed = self.prefix + "deliv:failed"
        self.alerts = self.prefix + "alerts"
        # hash channel -> JSON [sku, location]: where the channel's last reconcile run stopped.
        self.reconcile_cursor = self.prefix + "reconcile:cursor"

    def rate(self, channel: str) -> str:
        """Earliest ms at which the channel may receive its next call."""
        return self.prefix + "deliv:rate:" + channel

    def alert_once(self, marker: str) -> str:
        return self.prefix + "alerts:once:" + marker


_cache: dict[str, WorkerKeys] = {}


def worker_keys(tenant: str) -> WorkerKeys:
    keys = _cache.get(tenant)
    if keys is None:
        keys = _cache[tenant] = WorkerKeys(tenant)
    return keys
