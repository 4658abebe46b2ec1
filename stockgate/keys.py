"""Redis key names. Every key of a tenant carries the tenant as its Cluster hash tag, so one
script touches one slot even when a cart spans many SKUs (the price: one tenant lives on one
shard, see the README)."""

from __future__ import annotations

import functools


class TenantKeys:
    __slots__ = ("expiry", "outbox", "prefix", "skus", "tenant")

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self.prefix = f"sg:{{{tenant}}}:"
        self.outbox = self.prefix + "outbox"
        self.expiry = self.prefix + "holds:expiry"
        self.skus = self.prefix + "skus"

    def moving_guard(self) -> str:
        """A key that never exists, declared by every stock script: while the tenant's slot
        is being moved between Cluster nodes, a script declaring a missing key next to an
        existing one (its outbox) is refused with TRYAGAIN before it runs, on the source and
        on the target alike, so none runs on a node that holds only part of the tenant
        (stockgate/cluster.py)."""
        return self.prefix + "moving-guard"

    def stock(self, sku: str) -> str:
        return self.prefix + "stock:" + sku

    def allocation(self, sku: str) -> str:
        """Hash channel -> the SKU's allocation rule for that channel (lua/allocation.lua)."""
        return self.prefix + "alloc:" + sku

    def hold(self, hold_id: str) -> str:
        return self.prefix + "hold:" + hold_id

    def order(self, order_id: str) -> str:
        return self.prefix + "order:" + order_id

    def incoming(self, incoming_id: str) -> str:
        return self.prefix + "incoming:rec:" + incoming_id

    @property
    def incoming_index(self) -> str:
        """Zset of incoming record ids by creation time (GET /v1/incoming)."""
        return self.prefix + "incoming:all"

    def incoming_sku(self, sku: str) -> str:
        """Hash "<location>|<incoming id>" -> "<open units>|<expected ms>" (lua incoming_key)."""
        return self.prefix + "incoming:sku:" + sku

    def promised(self, sku: str, location: str) -> str:
        """Zset by time of "<hold:id|order:id>|<units>" promised beyond physical stock at one
        cell (lua preorder_note)."""
        return self.prefix + "promised:" + sku + "|" + location

    def idempotency(self, kind: str, key: str) -> str:
        return self.prefix + "idem:" + kind + ":" + key

    def pushed(self, channel: str) -> str:
        """Hash "<sku>|<location>" -> the available count last pushed to a channel, so an
        inventory webhook that only echoes our own push is recognised and ignored."""
        return self.prefix + "pushed:" + channel

    def pushed_recent(self, channel: str, ref: str) -> str:
        """List of the last few values pushed to a channel for "<sku>|<location>": a channel's
        webhook for an older push can arrive after a newer push, and is still an echo."""
        return self.prefix + "pushed:" + channel + ":recent:" + ref

    def pushed_log(self, channel: str, ref: str) -> str:
        """List, newest first, of what a channel showed for "<sku>|<location>" and from when:
        our pushes and the counts it reported ("<ms>:<p|r>:<value>", workers/propagation.py).
        A count the channel reports is judged against what it showed when it made the count,
        not against the canonical value seconds later (workers/channel_counts.py)."""
        return self.prefix + "pushed:" + channel + ":log:" + ref

    def webhook_seen(self, channel: str, delivery_id: str) -> str:
        return self.prefix + "webhook:" + channel + ":" + delivery_id

    def webhook_first_seen(self, channel: str, ref: str) -> str:
        """When a shipment or refund of an order not seen yet was first delivered. Apart
        from webhook_seen: delivery ids are unsigned, so none may write this key."""
        return self.prefix + "webhook-first:" + channel + ":" + ref

    @property
    def bundles(self) -> str:
        """Hash bundle SKU -> its components as JSON [[sku, qty], ...] (lua/bundle.lua)."""
        return self.prefix + "bundles"

    def bundled(self, component: str) -> str:
        """Set of the bundle SKUs that use `component`."""
        return self.prefix + "bundled:" + component


@functools.cache  # one per tenant, built once: key names are on every call's path
def tenant_keys(tenant: str) -> TenantKeys:
    return TenantKeys(tenant)


# Keys owned by the workers' bookkeeping (delivery bookkeeping and alerts), under the tenant's
# hash tag like every other key of the tenant. The gateway reads some of them (alerts, failed
# deliveries), so they live here beside the tenant's other keys.
CONSUMER_GROUP = "stockgate-workers"


class WorkerKeys:
    __slots__ = ("alerts", "attempts", "dirty_since", "failed", "leases", "legacy_due",
                 "prefix", "reconcile_cursor", "seq", "tenant", "versions")

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self.prefix = tenant_keys(tenant).prefix
        # Before due zsets were per channel (moved by Propagator.run).
        self.legacy_due = self.prefix + "deliv:due"
        # hash member -> its version: the tenant sequence's number at its last change.
        self.versions = self.prefix + "deliv:ver"
        # The tenant's version sequence: only rises, so a version is never reused.
        self.seq = self.prefix + "deliv:seq"
        # hash member -> Redis ms when it was first marked dirty since its last push that
        # landed (propagation lag, stockgate/activity.py).
        self.dirty_since = self.prefix + "deliv:since"
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


@functools.cache
def worker_keys(tenant: str) -> WorkerKeys:
    return WorkerKeys(tenant)
