"""Propagation lag: how long after a stock change a channel showed a value at least that new.

Pushes are coalesced (a channel gets the newest value, not every intermediate one), so a push
is matched to the newest event whose resulting channel value it carries. An event counts as
delivered by the first push, in time order, that reflects it or any later event; its lag is
that push's receive time minus the event's time. Both clocks are this machine's: Redis `TIME`
in the scripts and the simulators' wall clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from msgspec import Struct

from stockgate.allocation import AllocationRule, shown
from stockgate.models import Event


class Receipt(Struct, frozen=True):
    """One value a channel simulator received for a SKU, and when (unix ms)."""

    channel: str
    sku: str
    value: int
    t_ms: float


class LagStats(Struct, frozen=True):
    changes: int  # channel-visible changes (per channel and SKU)
    delivered: int  # changes some push reflected
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    # Changes no push reflected: the channel already showed the value (it changed and changed
    # back before a push), or the push is missing; convergence is checked separately.
    unmatched: int


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of unsorted values; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def channel_series(events: Iterable[Event], channel_locations: Mapping[str, Sequence[str]],
                   rules: Mapping[str, AllocationRule | None] | None = None
                   ) -> dict[tuple[str, str], list[tuple[int, int]]]:
    """(channel, sku) -> [(event ts, the channel's value after it)] for every event that
    changed that value. A channel's value is the sum of max(available, 0) over its locations,
    under the channel's default allocation rule (`rules`), as StockView.channels computes it
    (SKU rules are not followed: the demo sets none)."""
    cells: dict[str, dict[str, int]] = {}
    series: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for ev in events:
        if ev.after is None:
            continue
        by_loc = cells.setdefault(ev.sku, {})
        by_loc[ev.location] = ev.after.available
        for channel, locations in channel_locations.items():
            if ev.location not in locations:
                continue
            value = shown((rules or {}).get(channel),
                          sum(max(by_loc.get(loc, 0), 0) for loc in locations))
            points = series.setdefault((channel, ev.sku), [])
            if not points or points[-1][1] != value:
                points.append((ev.ts, value))
    return series


def lag_ms(points: Sequence[tuple[int, int]], receipts: Sequence[tuple[float, int]]
           ) -> tuple[list[float], int]:
    """Lags of the changes in `points` (ts, value) given pushes `receipts` (t, value), both in
    time order; returns (lags, number of changes no push reflected). The first point is the
    seed, which the channel may have been given before timing started: it is skipped."""
    lags: list[float] = []
    covered = 1  # points[:covered] are delivered (the seed counts as delivered)
    seen = 0  # points[:seen] are not after the current push
    last_index: dict[int, int] = {}  # value -> newest index among points[:seen]
    for t, value in receipts:
        while seen < len(points) and points[seen][0] <= t:
            last_index[points[seen][1]] = seen
            seen += 1
        # The newest change this push can carry: same value, not after the push.
        newest = last_index.get(value, -1)
        if newest >= covered:
            lags.extend(t - points[i][0] for i in range(covered, newest + 1))
            covered = newest + 1
    return lags, len(points) - covered


def propagation(events: Sequence[Event], receipts: Iterable[Receipt],
                channel_locations: Mapping[str, Sequence[str]],
                since_ms: float = 0,
                rules: Mapping[str, AllocationRule | None] | None = None) -> LagStats:
    """Lag statistics over every channel and SKU, for changes at or after `since_ms`."""
    series = channel_series(events, channel_locations, rules)
    by_target: dict[tuple[str, str], list[tuple[float, int]]] = {}
    for r in receipts:
        by_target.setdefault((r.channel, r.sku), []).append((r.t_ms, r.value))
    lags: list[float] = []
    changes = unmatched = 0
    for target, points in series.items():
        got = sorted(by_target.get(target, []))
        target_lags, missing = lag_ms(points, got)
        # Only changes after the load started: the seeding phase is not a flash sale.
        recent = [p for p in points[1:] if p[0] >= since_ms]
        changes += len(recent)
        skipped = len(points) - 1 - len(recent)
        lags.extend(target_lags[skipped:] if skipped < len(target_lags) else [])
        unmatched += missing
    return LagStats(changes=changes, delivered=len(lags),
                    p50_ms=percentile(lags, 50), p99_ms=percentile(lags, 99),
                    max_ms=max(lags) if lags else None, unmatched=unmatched)


def propagation_by_channel(events: Sequence[Event], receipts: Iterable[Receipt],
                           channel_locations: Mapping[str, Sequence[str]],
                           since_ms: float = 0,
                           rules: Mapping[str, AllocationRule | None] | None = None
                           ) -> dict[str, LagStats]:
    """`propagation` for each channel alone."""
    mine: dict[str, list[Receipt]] = {channel: [] for channel in channel_locations}
    for r in receipts:
        if r.channel in mine:
            mine[r.channel].append(r)
    return {channel: propagation(events, mine[channel], {channel: locations}, since_ms, rules)
            for channel, locations in channel_locations.items()}
