"""Per-channel allocation rules: what a channel is shown, never what exists.

A rule turns a channel's pool (the figure it would be shown without one: the sum of
max(available, 0) over its selling locations, or one mapped location's own available) into
the value pushed to and shown by that channel. The physical truth is untouched: every channel
still sells from the one pool, and an order a channel accepts beyond its shown value meets the
usual oversell rules.

The rule of a (SKU, channel) is, first found: the SKU's own rule for that channel (set with
PUT /v1/stock/{sku}/channels/{channel}, stored by lua/allocation.lua in the SKU's allocation
hash), the channel's default from the config (`[channels.x] allocation = {...}`), or none.

This module is pure and imports nothing of the engine, so the gateway's view, the workers'
push-time read, reconciliation and the invariant checker all use the one definition.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

# The scripts' bound on any count (lua/_common.lua MAX_QTY).
_MAX_QTY = 1_000_000_000
Units = Annotated[int, Meta(ge=0, le=_MAX_QTY)]
Percent = Annotated[int, Meta(ge=0, le=100)]
RuleSource = Literal["sku", "channel", "none"]


class AllocationRule(Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """What one channel is shown of a pool. `fixed`: that many units; else `percent` of the
    pool (rounded down; absent: all of it), at most `max`. `hide_below`: 0 while the pool is
    below it ("stop listing when fewer than 5 remain"). Whatever the rule, the value is
    clamped to [0, pool]: a fixed allocation never shows units that do not exist."""

    fixed: Units | None = None
    percent: Percent | None = None
    max: Units | None = None
    hide_below: Units | None = None

    def __post_init__(self) -> None:
        # msgspec turns these into a ValidationError (a 400 at the API, a ConfigError at load).
        if self.fixed is not None and (self.percent is not None or self.max is not None):
            raise ValueError("fixed cannot be combined with percent or max")
        if (self.fixed, self.percent, self.max, self.hide_below) == (None, None, None, None):
            raise ValueError("a rule needs one of fixed, percent, max or hide_below")


def shown(rule: AllocationRule | None, pool: int) -> int:
    """The value a channel is shown of `pool` under `rule`: always within [0, max(pool, 0)]."""
    pool = max(pool, 0)
    if rule is None:
        return pool
    if rule.hide_below is not None and pool < rule.hide_below:
        return 0
    if rule.fixed is not None:
        value = rule.fixed
    else:
        value = pool if rule.percent is None else pool * rule.percent // 100
        if rule.max is not None:
            value = min(value, rule.max)
    return min(value, pool)


def figure_pool(available: Mapping[str, int], sells_from: Sequence[str],
                mapped: Sequence[str], location: str) -> int:
    """The pool of the figure a channel keeps under `location`: that location's own available
    when the channel maps it to a location of its own, else the channel's one figure, the sum
    over the selling locations it does not list on their own (a mapped location is a figure
    of its own: counted here too, its units would be listed twice). `available` is per
    location (missing: no stock)."""
    if location in mapped:
        return max(available.get(location, 0), 0)
    return sum(max(available.get(loc, 0), 0) for loc in sells_from if loc not in mapped)


def one_figure_spot(sells_from: Sequence[str], mapped: Sequence[str]) -> str:
    """Where a channel's one figure (its unmapped selling locations) is kept: the first of
    them (workers.propagation.push_location)."""
    return next((loc for loc in sells_from if loc not in mapped), sells_from[0])


def push_spots(sells_from: Sequence[str], mapped: Sequence[str]) -> list[str]:
    """Where a channel's figures are kept: each mapped selling location, and the channel's one
    figure under its first unmapped selling location."""
    return sorted({loc if loc in mapped else one_figure_spot(sells_from, mapped)
                   for loc in sells_from})


_rule_decode = msgspec.json.Decoder(AllocationRule).decode
encode_rule = msgspec.json.Encoder().encode


def decode_rule(raw: bytes | str) -> AllocationRule | None:
    """A stored rule; None when it no longer decodes (a rule written by a later version):
    the channel then falls back to its default rather than the whole view failing."""
    try:
        return _rule_decode(raw)
    except msgspec.ValidationError:
        return None
