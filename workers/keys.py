"""Redis keys owned by the workers: delivery bookkeeping and alerts, under the tenant's hash
tag like every other key of the tenant."""

from __future__ import annotations

from stockgate.keys import tenant_keys

CONSUMER_GROUP = "stockgate-workers"


class WorkerKeys:
    __slots__ = ("alerts", "attempts", "failed", "leases", "legacy_due", "prefix",
                 "reconcile_cursor", "seq", "tenant", "versions")

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self.prefix = tenant_keys(tenant).prefix
        # Before due zsets were per channel (moved by Propagator.run).
        self.legacy_due = self.prefix + "deliv:due"
        # hash member -> its version: the tenant sequence's number at its last change.
        self.versions = self.prefix + "deliv:ver"
        # The tenant's version sequence: only rises, so a version is never reused.
        self.seq = self.prefix + "deliv:seq"
        # hash member -> the token of the claim that holds its lease.
        self.leases = self.prefix + "deliv:lease"
        # hash member -> failed attempts in a row.
        self.attempts = self.prefix + "deliv:tries"
        # hash delivery id -> FailedDelivery JSON (parked after the last try).
        self.failed = self.prefix + "deliv:failed"
        self.alerts = self.prefix + "alerts"
        # hash channel -> JSON [sku, location]: where the channel's last reconcile run stopped.
        self.reconcile_cursor = self.prefix + "reconcile:cursor"

    def due(self, channel: str) -> str:
        """zset "<channel>|<location>|<sku>" -> Redis ms when it may next be pushed (or when
        its lease ends), one per channel so each channel's lane claims only its own."""
        return self.prefix + "deliv:due:" + channel

    def cas(self, channel: str) -> str:
        """hash of a compare-and-set channel's known counts and pending drops
        (workers.propagation, _CAS_*)."""
        return self.prefix + "deliv:cas:" + channel

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
