"""Redis key names. Every key of a tenant carries the tenant as its Cluster hash tag, so one
script touches one slot even when a cart spans many SKUs (the price: one tenant lives on one
shard, see the README)."""

from __future__ import annotations


class TenantKeys:
    __slots__ = ("expiry", "outbox", "prefix", "skus", "tenant")

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self.prefix = f"sg:{{{tenant}}}:"
        self.outbox = self.prefix + "outbox"
        self.expiry = self.prefix + "holds:expiry"
        self.skus = self.prefix + "skus"

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


_cache: dict[str, TenantKeys] = {}


def tenant_keys(tenant: str) -> TenantKeys:
    keys = _cache.get(tenant)
    if keys is None:
        keys = _cache[tenant] = TenantKeys(tenant)
    return keys
