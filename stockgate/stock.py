"""The stock API: one async method per atomic operation, each one Lua script call.

Python validates shapes (msgspec did most of it at the boundary), fills defaults, computes the
request fingerprint for idempotency, and turns the script's uniform reply into a Struct or a
typed exception. All rules about stock live in the scripts.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, Literal, TypeVar

import msgspec

from stockgate import allocation, errors, incoming
from stockgate.cluster import Store
from stockgate.keys import tenant_keys
from stockgate.models import (
    MAX_HOLD_TTL_S,
    AdjustReply,
    AllocationReply,
    AllocationScriptReply,
    CancelReply,
    CellState,
    ChannelAllocation,
    ChannelFigure,
    CommitReply,
    ExpireReply,
    ExtendReply,
    FulfilReply,
    HoldRecord,
    HoldReply,
    Line,
    MovedReply,
    OrderReply,
    PolicyReply,
    ReleaseReply,
    RestockReply,
    ScriptLine,
    StockView,
)
from stockgate.scripts import Scripts
from stockgate.settings import Settings

R = TypeVar("R")
_encode = msgspec.json.Encoder().encode
_decoders: dict[type, msgspec.json.Decoder] = {}
_CELL_FIELDS = ("on_hand", "reserved", "committed", "unavailable", "safety", "backorder_limit")


def _decode(raw: bytes, kind: type[R]) -> R:
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    return decoder.decode(raw)


def fingerprint(payload: Any) -> str:
    """Stable digest of a normalised request: same request, same fingerprint."""
    return hashlib.blake2b(_encode(payload), digest_size=12).hexdigest()


_READ = """
return {redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2]),
        redis.call('HGETALL', KEYS[3])}
"""


def _pairs(flat: list[bytes]) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


class StockEngine:
    """Canonical stock of every tenant, changed only through the Lua scripts."""

    def __init__(self, redis: Store, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.scripts = Scripts(redis, wait_aof_ms=1000 if settings.wait_aof else 0,
                               wait_replicas=settings.replica_wait,
                               wait_replicas_ms=settings.replica_wait_ms)
        self._read = redis.register_script(_READ)
        self._idem_ttl_ms = settings.idempotency_ttl_s * 1000
        self._window_ms = settings.return_window_s * 1000

    async def load_scripts(self) -> None:
        await self.scripts.load()

    def default_location(self, tenant: str) -> str:
        return self.settings.tenant(tenant).default_location

    def _lines(self, tenant: str, lines: Iterable[Line], location: str | None = None
               ) -> list[tuple[str, str, int]]:
        default = location or self.default_location(tenant)
        return [(ln.sku, ln.location or default, ln.qty) for ln in lines]

    async def _run(self, op: str, tenant: str, keys: list[str], request: dict[str, Any],
                   channel: str, reply_type: type[R]) -> tuple[R, bool]:
        k = tenant_keys(tenant)
        # The guard goes last, so every script's KEYS[1..n] stay what it reads.
        reply = await self.scripts.call(op, [*keys, k.moving_guard()],
                                        [tenant, k.prefix, _encode(request), channel])
        status = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
        if status != "ok":
            raise errors.from_script(status, msgspec.json.decode(reply[1]))
        return _decode(reply[1], reply_type), bool(reply[2])

    # ---- cart holds ------------------------------------------------------------------------

    async def hold(self, tenant: str, lines: Sequence[Line], *, hold_id: str | None = None,
                   location: str | None = None, ttl_s: int | None = None, channel: str = "",
                   customer: str | None = None) -> tuple[HoldReply, bool]:
        """Reserve every line or none. Returns the reply and whether it was a replay."""
        if len(lines) > self.settings.max_lines:
            raise errors.InvalidRequest(f"at most {self.settings.max_lines} lines per hold")
        k = tenant_keys(tenant)
        hold_id = hold_id or uuid.uuid4().hex
        script_lines = self._lines(tenant, lines, location)
        # hold_max_total_s is the longest a hold may live, extensions included: a longer
        # ttl_s is clamped to it, as an extension is (lua/extend.lua), and the reply's
        # expires_at says the real expiry. Clamped here, so that the fingerprint is the
        # hold as made (a retry asking 86400 or the cap itself is the same hold).
        ttl_ms = min(ttl_s or self.settings.hold_ttl_s, self.settings.hold_max_total_s) * 1000
        request = {
            "hold_id": hold_id, "ttl_ms": ttl_ms, "idem_ttl_ms": self._idem_ttl_ms,
            "customer": customer or "", "lines": script_lines,
            "fp": fingerprint([script_lines, ttl_ms, customer or "", channel]),
        }
        return await self._run("hold", tenant, [k.outbox, k.hold(hold_id), k.expiry], request,
                               channel, HoldReply)

    async def release(self, tenant: str, hold_id: str, *, channel: str = ""
                      ) -> tuple[ReleaseReply, bool]:
        k = tenant_keys(tenant)
        return await self._run("release", tenant, [k.outbox, k.hold(hold_id), k.expiry],
                               {"hold_id": hold_id}, channel, ReleaseReply)

    async def commit(self, tenant: str, hold_id: str, order_id: str, *, channel: str = ""
                     ) -> tuple[CommitReply, bool]:
        k = tenant_keys(tenant)
        request = {"hold_id": hold_id, "order_id": order_id, "window_ms": self._window_ms}
        return await self._run("commit", tenant,
                               [k.outbox, k.hold(hold_id), k.expiry, k.order(order_id)],
                               request, channel, CommitReply)

    async def extend(self, tenant: str, hold_id: str, ttl_s: int | None = None, *,
                     channel: str = "") -> ExtendReply:
        """Move a live hold's expiry to now + ttl_s, within hold_max_total_s of its
        creation (lua/extend.lua); a hold that is gone raises HoldNotFound."""
        k = tenant_keys(tenant)
        request = {"hold_id": hold_id,
                   "ttl_ms": (ttl_s or self.settings.hold_ttl_s) * 1000,
                   "max_total_ms": self.settings.hold_max_total_s * 1000,
                   # A hold older than created_at is estimated as made with the longest
                   # TTL any hold could have: its estimated cap is never past the true one.
                   "longest_ttl_ms": MAX_HOLD_TTL_S * 1000}
        reply, _ = await self._run("extend", tenant, [k.outbox, k.hold(hold_id), k.expiry],
                                   request, channel, ExtendReply)
        return reply

    async def expire(self, tenant: str, limit: int = 500) -> ExpireReply:
        k = tenant_keys(tenant)
        reply, _ = await self._run("expire", tenant, [k.outbox, k.expiry], {"limit": limit},
                                   "", ExpireReply)
        return reply

    # ---- orders ----------------------------------------------------------------------------

    async def order(self, tenant: str, order_id: str, lines: Sequence[Line], *,
                    hold_id: str | None = None, state_ms: int = 0, channel: str = ""
                    ) -> tuple[OrderReply, bool]:
        """Commit a channel order line by line: from the hold it names when that hint
        verifies (lua/order.lua), else straight from available. `state_ms` is when the
        channel's body says the order last changed: a newer state of a known order is
        merged (an edit, a re-opened order), an older one changes nothing."""
        k = tenant_keys(tenant)
        script_lines = self._lines(tenant, lines)
        request = {"order_id": order_id, "lines": script_lines, "window_ms": self._window_ms,
                   "hold_id": hold_id or "", "fp": fingerprint(script_lines),
                   "state_ms": state_ms,
                   "channels": [name for name, ch in self.settings.channels.items()
                                if ch.tenant == tenant]}
        keys = [k.outbox, k.order(order_id), k.expiry, k.hold(hold_id or "")]
        return await self._run("order", tenant, keys, request, channel, OrderReply)

    async def fulfil(self, tenant: str, order_id: str, fulfilment_id: str,
                     lines: Sequence[Line] = (), *, channel: str = ""
                     ) -> tuple[FulfilReply, bool]:
        k = tenant_keys(tenant)
        script_lines = [(ln.sku, ln.location or "", ln.qty) for ln in lines]
        request = {"order_id": order_id, "fulfilment_id": fulfilment_id, "lines": script_lines,
                   "idem_ttl_ms": self._idem_ttl_ms, "window_ms": self._window_ms,
                   "fp": fingerprint([order_id, script_lines])}
        keys = [k.outbox, k.order(order_id), k.idempotency("fulfil", fulfilment_id)]
        return await self._run("fulfil", tenant, keys, request, channel, FulfilReply)

    async def cancel(self, tenant: str, order_id: str, *, channel: str = "",
                     tombstone: bool = False, state_ms: int = 0) -> tuple[CancelReply, bool]:
        """Call off an order's open units. With `tombstone` (a channel's signed cancel), an
        order not seen yet is recorded as cancelled, so its late create commits nothing. A
        cancel whose `state_ms` is older than the order's latest state changes nothing."""
        k = tenant_keys(tenant)
        request = {"order_id": order_id, "window_ms": self._window_ms, "tombstone": tombstone,
                   "state_ms": state_ms}
        return await self._run("cancel", tenant, [k.outbox, k.order(order_id)], request,
                               channel, CancelReply)

    async def restock(self, tenant: str, refund_id: str, lines: Sequence[Line], *,
                      order_id: str = "", channel: str = "",
                      take_from: Literal["any", "open", "shipped"] = "any"
                      ) -> tuple[RestockReply, bool]:
        """Put refunded units back: unshipped ones leave committed, returned ones rejoin
        on_hand. `take_from` narrows it when the channel says which (Shopify's `cancel`
        restocks unshipped units only, `return` shipped ones only)."""
        k = tenant_keys(tenant)
        default = "" if order_id else self.default_location(tenant)
        script_lines = [(ln.sku, ln.location or default, ln.qty) for ln in lines]
        request = {"refund_id": refund_id, "order_id": order_id, "lines": script_lines,
                   "idem_ttl_ms": self._idem_ttl_ms, "window_ms": self._window_ms,
                   "take_from": take_from, "fp": fingerprint([order_id, script_lines, take_from])}
        keys = [k.outbox, k.idempotency("restock", refund_id), k.order(order_id)]
        return await self._run("restock", tenant, keys, request, channel, RestockReply)

    async def channel_moved(self, tenant: str, channel: str, cas_key: str,
                            counts: Sequence[tuple[str, str, int, list[int], list[str]]]
                            ) -> MovedReply:
        """A compare-and-set channel holds these counts, not the ones Stockgate last knew:
        (sku, location, count, values of earlier pushes whose answers never came, the
        locations the channel's figure sums). See lua/moved.lua."""
        lines = [[sku, loc, n, None, doubts, spread] for sku, loc, n, doubts, spread in counts]
        return await self._moved(tenant, channel, cas_key, lines)

    async def channel_explained(self, tenant: str, channel: str, cas_key: str, sku: str,
                                location: str, units: int) -> MovedReply:
        """Give back up to `units` set aside for the channel at (sku, location): its count
        report was applied as an edit that explains them."""
        return await self._moved(tenant, channel, cas_key, [[sku, location, None, units]])

    async def _moved(self, tenant: str, channel: str, cas_key: str,
                     lines: list[list[Any]]) -> MovedReply:
        k = tenant_keys(tenant)
        reply, _ = await self._run("moved", tenant, [k.outbox, cas_key], {"lines": lines},
                                   channel, MovedReply)
        return reply

    # ---- operator changes ------------------------------------------------------------------

    async def adjust(self, tenant: str, sku: str, *, reason: str, idempotency_key: str,
                     location: str | None = None, delta: int | None = None,
                     set_on_hand: int | None = None, unavailable_delta: int | None = None,
                     channel: str = "") -> tuple[AdjustReply, bool]:
        k = tenant_keys(tenant)
        location = location or self.default_location(tenant)
        request = {"sku": sku, "location": location, "delta": delta, "set_on_hand": set_on_hand,
                   "unavailable_delta": unavailable_delta, "reason": reason,
                   "idempotency_key": idempotency_key, "idem_ttl_ms": self._idem_ttl_ms}
        request["fp"] = fingerprint([sku, location, delta, set_on_hand, unavailable_delta,
                                     reason])
        keys = [k.outbox, k.idempotency("adjust", idempotency_key), k.stock(sku)]
        return await self._run("adjust", tenant, keys, request, channel, AdjustReply)

    async def set_policy(self, tenant: str, sku: str, *, location: str | None = None,
                         safety: int | None = None, backorder_limit: int | None = None,
                         low_stock_threshold: int | None = None,
                         max_per_customer: int | None = None,
                         preorder_limit: int | None = None) -> PolicyReply:
        k = tenant_keys(tenant)
        request = {"sku": sku, "location": location or self.default_location(tenant),
                   "safety": safety, "backorder_limit": backorder_limit,
                   "low_stock_threshold": low_stock_threshold,
                   "max_per_customer": max_per_customer, "preorder_limit": preorder_limit}
        reply, _ = await self._run("policy", tenant, [k.outbox, k.stock(sku)], request, "",
                                   PolicyReply)
        return reply

    async def set_allocation(self, tenant: str, sku: str, channel: str,
                             rule: allocation.AllocationRule | None) -> AllocationReply:
        """Set (or, with None, remove) the SKU's allocation rule for one of the tenant's
        channels; the channel then falls back to its default. A change is one `allocation`
        event, so it is pushed like any stock change."""
        found = self.settings.channels.get(channel)
        if found is None or found.tenant != tenant:
            raise errors.UnknownChannel(f"no channel {channel!r}", channel=channel)
        k = tenant_keys(tenant)
        request = {"sku": sku, "channel": channel,
                   "rule": None if rule is None else allocation.encode_rule(rule).decode()}
        reply, _ = await self._run("allocation", tenant,
                                   [k.outbox, k.stock(sku), k.allocation(sku)], request, "",
                                   AllocationScriptReply)
        try:
            view = await self.stock(tenant, sku)
        except errors.UnknownSku:
            # A bundle has no cells: its figure is derived from its components
            # (stockgate.bundles builds on this engine: imported here to avoid a cycle).
            from stockgate.bundles import Bundles

            view = (await Bundles(self).views(tenant, [sku]))[sku]
        return AllocationReply(sku=sku, channel=channel, changed=reply.changed,
                               allocation=view.allocation[channel])

    # ---- reads -------------------------------------------------------------------------------

    async def stock(self, tenant: str, sku: str) -> StockView:
        """Every state per location, available overall and as each channel should show it."""
        k = tenant_keys(tenant)
        # The cells, the rules and the units expected by incoming records as of one moment:
        # one read-only script (the keys share the tenant's slot; a Cluster client has no
        # MULTI).
        raw, rules, expected = (_pairs(h) for h in await self._read(
            keys=[k.stock(sku), k.allocation(sku), k.incoming_sku(sku)]))
        if not raw:
            raise errors.UnknownSku(sku=sku)
        return self.view(tenant, sku, raw, rules=rules, incoming_raw=expected)

    async def hold_lines(self, tenant: str, hold_id: str) -> HoldRecord | None:
        """A hold's status, reserved lines ([sku, location, qty] as hold.lua stored them) and
        the order that committed it; None when there is no record (never made, or its record
        outlived the idempotency TTL)."""
        status, lines, order_id = await self.redis.hmget(
            tenant_keys(tenant).hold(hold_id), "status", "lines", "order_id")
        if status is None or lines is None:
            return None
        return HoldRecord(hold_id=hold_id, status=status.decode(),
                          lines=_decode(lines, list[ScriptLine]),
                          order_id=order_id.decode() if order_id else "")

    def view(self, tenant: str, sku: str, raw: dict[bytes, bytes],
             *, rules: dict[bytes, bytes] | None = None,
             incoming_raw: dict[bytes, bytes] | None = None) -> StockView:
        """The SKU's stock from its raw hash, and each channel's value under its allocation
        rule (`rules`: the SKU's allocation hash; None: channel defaults only), with pre-order
        units for the channels that show them (`incoming_raw`: the SKU's incoming hash)."""
        cells: dict[str, dict[str, int]] = {}
        sku_policy: dict[str, int] = {}
        for field, value in raw.items():
            name = field.decode()
            loc, sep, attr = name.partition("|")
            if sep:
                cells.setdefault(loc, {})[attr] = int(value)
            else:
                sku_policy[name] = int(value)
        locations = {}
        for loc, f in sorted(cells.items()):
            values = {name: f.get(name, 0) for name in _CELL_FIELDS}
            avail = (values["on_hand"] - values["reserved"] - values["committed"]
                     - values["unavailable"] - values["safety"])
            locations[loc] = CellState(**values, available=avail)
        channels: dict[str, int] = {}
        detail: dict[str, ChannelAllocation] = {}
        available = {loc: c.available for loc, c in locations.items()}
        sku_rules = {k.decode(): v for k, v in (rules or {}).items()}
        expected = incoming.view(incoming_raw or {}, locations,
                                 sku_policy.get("preorder_limit", 0))
        for name, channel in self.settings.channels.items():
            if channel.tenant != tenant:
                continue
            sells_from = channel.locations or (self.default_location(tenant),)
            mapped = tuple(channel.location_map.values())
            rule: allocation.AllocationRule | None = None
            source: allocation.RuleSource = "none"
            if name in sku_rules and (rule := allocation.decode_rule(sku_rules[name])):
                source = "sku"
            elif channel.allocation is not None:
                rule, source = channel.allocation, "channel"
            # Pre-order units are shown only to channels that opt in (show_preorders), and
            # the channel's rule shares them out like any other unit of its pool.
            sellable = (incoming.sellable(locations, expected,
                                          sku_policy.get("preorder_limit", 0), sells_from)
                        if channel.show_preorders else available)
            figures = {}
            for spot in allocation.push_spots(sells_from, mapped):
                pool = allocation.figure_pool(sellable, sells_from, mapped, spot)
                figures[spot] = ChannelFigure(pool=pool, value=allocation.shown(rule, pool))
            value = sum(f.value for f in figures.values())
            channels[name] = value
            detail[name] = ChannelAllocation(
                value=value, pool=sum(f.pool for f in figures.values()), source=source,
                rule=rule, figures=figures)
        return StockView(
            sku=sku, locations=locations,
            available=sum(max(c.available, 0) for c in locations.values()),
            channels=channels,
            low_stock_threshold=sku_policy.get("low_stock_threshold", 0),
            max_per_customer=sku_policy.get("max_per_customer", 0),
            incoming=expected, preorder_limit=sku_policy.get("preorder_limit", 0),
            allocation=detail,
        )

    async def skus(self, tenant: str) -> list[str]:
        members = await self.redis.smembers(tenant_keys(tenant).skus)
        return sorted(m.decode() for m in members)
