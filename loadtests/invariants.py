"""The flash-sale invariants, checked after a run by the demo and the tests.

`check` is pure: it takes what was observed (the outbox events, every SKU's stock, the audit
trail's event ids, each channel's counts, the delivery backlog) and returns every violation,
plus a per-SKU ledger a merchant can read. `collect` gathers those observations from Redis;
the demo adds the audit ids and the channel counts, which live behind other processes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec
from msgspec import Struct

from stockgate.allocation import shown as rule_value
from stockgate.bundles import Bundles, derive
from stockgate.cluster import Store
from stockgate.keys import tenant_keys
from stockgate.models import CellState, Event, StockView, event_decoder
from stockgate.stock import StockEngine

CELL_FIELDS = ("on_hand", "reserved", "committed", "unavailable", "safety", "backorder_limit")
# Commits through the storefront API carry no channel; call them what the merchant sees.
STOREFRONT = "storefront"


class Violation(Struct, frozen=True):
    """One broken invariant. `check` names the rule: negative, formula, oversell,
    conservation, last_state, audit, channel, allocation, pending, bundle."""

    check: str
    detail: str
    sku: str = ""
    channel: str = ""


class SkuLedger(Struct):
    """Where every unit of one SKU went, summed over its locations."""

    sku: str
    seeded: int = 0  # on_hand added by adjusts (receipts, counts)
    on_hand: int = 0
    reserved: int = 0
    committed: int = 0
    unavailable: int = 0
    safety: int = 0
    available: int = 0
    shipped: int = 0  # left on_hand by fulfilment
    returned: int = 0  # came back to on_hand by refund restock
    received: int = 0  # came into on_hand by receipts of incoming stock
    sold: dict[str, int] = {}  # net units committed per channel (commits - cancels - restocks)
    oversell_rejected: int = 0  # channel order lines refused for lack of stock
    min_available: int = 0  # lowest available any event ever reported
    oversold: int = 0  # units promised beyond stock at the worst moment (must be 0)


class Observed(Struct):
    """Everything the checker looks at, gathered after the run."""

    tenant: str
    events: list[Event]
    views: dict[str, StockView]
    # Event ids in the audit store; None when it was not read.
    audit_ids: list[str] | None = None
    # channel -> sku -> count the channel itself shows; None when no channel was read.
    channel_counts: dict[str, dict[str, int]] | None = None
    # Outbox entries not yet acknowledged by the workers plus failed/queued deliveries.
    pending: dict[str, int] = {}
    # Bundle SKU -> its components [(sku, qty)], and its derived view as Stockgate pushes it.
    bundles: dict[str, list[tuple[str, int]]] = {}
    bundle_views: dict[str, StockView] = {}


class InvariantReport(Struct):
    tenant: str
    skus: int
    events: int
    audit_rows: int | None
    violations: list[Violation]
    ledger: list[SkuLedger]

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def oversold_units(self) -> int:
        return sum(s.oversold for s in self.ledger)


def _after_problems(after: CellState) -> list[tuple[str, str]]:
    """(check, detail) for each rule the state reported by one event breaks."""
    problems = [("negative", f"{f}={getattr(after, f)}") for f in CELL_FIELDS
                if getattr(after, f) < 0]
    expected = (after.on_hand - after.reserved - after.committed - after.unavailable
                - after.safety)
    if after.available != expected:
        problems.append(("formula", f"available={after.available} but the fields give "
                                    f"{expected}"))
    return problems


def _preorder_room(obs: Observed, sku: str, incoming: int) -> int:
    """Pre-order selling may take available below its backorder limit by min(preorder_limit,
    open incoming units at the cell): the units still expected when the event happened (the
    running sum of incoming deltas), against the SKU's limit as it stands now (a limit
    change writes no event). Units promised and then left uncovered by a cancelled or
    short-closed incoming show up as an oversell: they are one, and an alert names them."""
    view = obs.views.get(sku)
    return min(view.preorder_limit, incoming) if view is not None else 0


def check(obs: Observed, *, max_violations_per_check: int = 20) -> InvariantReport:
    violations: list[Violation] = []
    counts: dict[str, int] = {}

    def fail(check_name: str, detail: str, sku: str = "", channel: str = "") -> None:
        # Keep the report readable when one bug breaks thousands of rows.
        counts[check_name] = counts.get(check_name, 0) + 1
        if counts[check_name] <= max_violations_per_check:
            violations.append(Violation(check_name, detail, sku, channel))

    ledgers: dict[str, SkuLedger] = {}
    sums: dict[tuple[str, str], dict[str, int]] = {}
    last_after: dict[tuple[str, str], CellState] = {}
    # Per cell, the lowest (available + backorder_limit): below zero is an oversell.
    worst: dict[tuple[str, str], int] = {}

    for ev in obs.events:
        if ev.type == "bundle":
            continue  # a definition change moves no unit: the bundle has no cells
        if ev.type == "allocation":
            continue  # a rule change moves no cell: nothing to conserve
        ledger = ledgers.setdefault(ev.sku, SkuLedger(ev.sku, sold={}))
        cell = (ev.sku, ev.location)
        acc = sums.setdefault(cell, {})
        for name, value in ev.delta.items():
            acc[name] = acc.get(name, 0) + value
        channel = ev.source.channel or STOREFRONT
        if ev.type == "adjust":
            ledger.seeded += ev.delta.get("on_hand", 0)
        elif ev.type == "fulfil":
            ledger.shipped -= ev.delta.get("on_hand", 0)
        elif ev.type == "restock":
            ledger.returned += ev.delta.get("on_hand", 0)
        elif ev.type == "receive":
            ledger.received += ev.delta.get("on_hand", 0)
        if ev.type in ("commit", "cancel", "restock"):
            ledger.sold[channel] = ledger.sold.get(channel, 0) + ev.delta.get("committed", 0)
        if ev.type == "oversell_rejected":
            ledger.oversell_rejected += 1
        if ev.after is not None:
            last_after[cell] = ev.after
            for check_name, problem in _after_problems(ev.after):
                fail(check_name, f"event {ev.id} ({ev.type}) left {problem}", ev.sku)
            headroom = ev.after.available + ev.after.backorder_limit + _preorder_room(
                obs, ev.sku, acc.get("incoming", 0))
            worst[cell] = min(worst.get(cell, headroom), headroom)
            ledger.min_available = min(ledger.min_available, ev.after.available)

    for sku, view in sorted(obs.views.items()):
        ledger = ledgers.setdefault(sku, SkuLedger(sku, sold={}))
        for loc, state in view.locations.items():
            cell = (sku, loc)
            for name in CELL_FIELDS:
                value = getattr(state, name)
                if value < 0:
                    fail("negative", f"{loc}: {name}={value}", sku)
                if sums.get(cell, {}).get(name, 0) != value:
                    # Every change is one event in the same atomic call: a mismatch is a lost,
                    # duplicated or silent write.
                    fail("conservation",
                         f"{loc}: {name}={value} but the outbox events sum to "
                         f"{sums.get(cell, {}).get(name, 0)}", sku)
            expected = view.incoming.get(loc)
            headroom = state.available + state.backorder_limit + min(
                view.preorder_limit, expected.expected if expected else 0)
            worst[cell] = min(worst.get(cell, headroom), headroom)
            if cell in last_after:
                after = last_after[cell]
                if any(getattr(after, f) != getattr(state, f) for f in CELL_FIELDS):
                    fail("last_state", f"{loc}: stock {state} differs from the last event's "
                                       f"after {after}", sku)
            ledger.on_hand += state.on_hand
            ledger.reserved += state.reserved
            ledger.committed += state.committed
            ledger.unavailable += state.unavailable
            ledger.safety += state.safety
            ledger.available += state.available
        for cell, acc in sums.items():
            if cell[0] == sku and cell[1] not in view.locations and any(acc.values()):
                fail("conservation", f"{cell[1]}: events exist for a location with no stock",
                     sku)
        # The merchant's ledger: what came in is on the shelf, or shipped minus returned.
        came_in = ledger.seeded + ledger.received
        if came_in != ledger.on_hand + ledger.shipped - ledger.returned:
            fail("conservation",
                 f"seeded {ledger.seeded} + received {ledger.received} != on_hand "
                 f"{ledger.on_hand} + shipped {ledger.shipped} - returned {ledger.returned}",
                 sku)
        # Units still expected: what incoming records opened minus what receipts, closes
        # and cancels took off, per location, equals what the view shows as expected.
        for cell, acc in sums.items():
            shown = view.incoming.get(cell[1])
            if cell[0] == sku and acc.get("incoming", 0) != (shown.expected if shown else 0):
                fail("conservation", f"{cell[1]}: incoming events sum to "
                                     f"{acc.get('incoming', 0)} but "
                                     f"{shown.expected if shown else 0} units are expected",
                     sku)
    for sku in ledgers:
        if sku not in obs.views:
            fail("conservation", "events exist for a SKU whose stock is gone", sku)

    for (sku, loc), headroom in worst.items():
        if headroom < 0:
            ledgers[sku].oversold += -headroom
            fail("oversell", f"{loc}: available reached {-headroom} below its limit", sku)

    audit_rows = None
    if obs.audit_ids is not None:
        audit_rows = len(obs.audit_ids)
        outbox_ids = {ev.id for ev in obs.events}
        audit_set = set(obs.audit_ids)
        if len(audit_set) != audit_rows:
            fail("audit", f"{audit_rows - len(audit_set)} duplicate audit rows")
        missing = outbox_ids - audit_set
        extra = audit_set - outbox_ids
        if missing:
            fail("audit", f"{len(missing)} outbox events missing from the audit store, "
                          f"e.g. {sorted(missing)[:3]}")
        if extra:
            fail("audit", f"{len(extra)} audit rows with no outbox event, e.g. "
                          f"{sorted(extra)[:3]}")

    # What each channel is shown never exceeds its rule or its pool, and is the rule's value.
    for sku, view in sorted(obs.views.items()):
        for channel, alloc in sorted(view.allocation.items()):
            for loc, fig in sorted(alloc.figures.items()):
                want = rule_value(alloc.rule, fig.pool)
                if not 0 <= fig.value <= max(fig.pool, 0) or fig.value != want:
                    fail("allocation", f"{loc}: shown {fig.value} of pool {fig.pool}, the "
                                       f"rule {alloc.rule} gives {want}", sku, channel)
            if view.channels.get(channel) != alloc.value:
                fail("allocation", f"channels says {view.channels.get(channel)}, the "
                                   f"allocation {alloc.value}", sku, channel)

    if obs.channel_counts is not None:
        for sku, view in sorted(obs.views.items()):
            for channel, expected in sorted(view.channels.items()):
                shown = obs.channel_counts.get(channel, {}).get(sku)
                if shown != expected:
                    fail("channel", f"channel shows {shown}, Stockgate's rule says {expected}",
                         sku, channel)

    # A bundle's stock is derived from its components' cells (conservation is checked on
    # those above): what Stockgate pushes and each channel shows is that derived value.
    for sku, components in sorted(obs.bundles.items()):
        derived = derive(components, obs.views)
        bview = obs.bundle_views.get(sku)
        shown_locs = {loc: c.available for loc, c in bview.locations.items()} if bview else {}
        if shown_locs != derived:
            fail("bundle", f"derived {derived} but Stockgate shows {shown_locs}", sku)
        for channel, expected in sorted(bview.channels.items() if bview else ()):
            if obs.channel_counts is None or channel not in obs.channel_counts:
                continue
            shown = obs.channel_counts[channel].get(sku)
            if shown != expected:
                fail("bundle", f"channel shows {shown}, the derived count is {expected}",
                     sku, channel)

    for what, n in sorted(obs.pending.items()):
        if n:
            fail("pending", f"{n} {what}")

    for name, n in counts.items():
        if n > max_violations_per_check:
            violations.append(Violation(name, f"... and {n - max_violations_per_check} more"))
    return InvariantReport(
        tenant=obs.tenant, skus=len(obs.views), events=len(obs.events), audit_rows=audit_rows,
        violations=violations, ledger=[ledgers[s] for s in sorted(ledgers)],
    )


# ---- gathering ------------------------------------------------------------------------------

async def read_outbox(redis: Store, tenant: str, batch: int = 5000) -> list[Event]:
    """Every event still in the tenant's outbox stream, oldest first, with its stream id."""
    stream = tenant_keys(tenant).outbox
    out: list[Event] = []
    start = "-"
    while True:
        entries = await redis.xrange(stream, min=start, max="+", count=batch)
        for entry_id, fields in entries:
            ev = event_decoder.decode(fields[b"e"])
            out.append(msgspec.structs.replace(ev, id=entry_id.decode()))
        if len(entries) < batch:
            return out
        start = "(" + entries[-1][0].decode()


async def outbox_backlog(redis: Store, tenant: str) -> dict[str, int]:
    """Entries the worker groups have not read yet (lag) or not acknowledged (pending)."""
    stream = tenant_keys(tenant).outbox
    if not await redis.exists(stream):
        return {}
    backlog: dict[str, int] = {}
    for group in await redis.xinfo_groups(stream):
        name = group["name"].decode() if isinstance(group["name"], bytes) else group["name"]
        backlog[f"outbox entries pending in group {name}"] = int(group.get("pending") or 0)
        backlog[f"outbox entries unread by group {name}"] = int(group.get("lag") or 0)
    return backlog


async def read_views(engine: StockEngine, tenant: str,
                     skus: Iterable[str] | None = None) -> dict[str, StockView]:
    names = list(skus) if skus is not None else await engine.skus(tenant)
    return {sku: await engine.stock(tenant, sku) for sku in names}


async def collect(redis: Store, engine: StockEngine, tenant: str, *,
                  audit_ids: list[str] | None = None,
                  channel_counts: Mapping[str, Mapping[str, int]] | None = None,
                  extra_pending: Mapping[str, int] | None = None) -> Observed:
    events = await read_outbox(redis, tenant)
    views = await read_views(engine, tenant)
    pending = await outbox_backlog(redis, tenant)
    pending.update(extra_pending or {})
    counts = None if channel_counts is None else {
        ch: dict(by_sku) for ch, by_sku in channel_counts.items()}
    bundles = await Bundles(engine).definitions(tenant, await Bundles(engine).names(tenant))
    bundle_views = await Bundles(engine).views(tenant, sorted(bundles))
    return Observed(tenant=tenant, events=events, views=views, audit_ids=audit_ids,
                    channel_counts=counts, pending=pending, bundles=bundles,
                    bundle_views=bundle_views)
