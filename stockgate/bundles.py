"""Bundles (kits): a SKU sold as components with quantities, with no stock of its own.

The definition lives in one hash per tenant and is written by lua/bundle.lua; every script
that takes lines expands a bundle line into its component lines (lua/_common.lua
expand_bundles). This module reads definitions and derives a bundle's stock from its
components' cells: per location min(floor(max(component available, 0) / qty)).
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
from redis.asyncio import Redis

from stockgate import errors
from stockgate.keys import tenant_keys
from stockgate.models import (
    MAX_BUNDLE_COMPONENTS,
    BundleComponent,
    BundleReply,
    BundleView,
    StockView,
)
from stockgate.stock import StockEngine

_components = msgspec.json.Decoder(list[tuple[str, int]])


def derive(components: Sequence[tuple[str, int]], views: dict[str, StockView]
           ) -> dict[str, int]:
    """Per location, how many bundles the components' cells make. A location missing any
    component makes none; a component oversold or backordered below zero makes none."""
    locations: dict[str, int] | None = None
    for sku, qty in components:
        view = views.get(sku)
        here = {loc: max(cell.available, 0) // qty
                for loc, cell in (view.locations.items() if view else ())}
        locations = here if locations is None else {
            loc: min(n, here[loc]) for loc, n in locations.items() if loc in here}
    return locations or {}


async def bundles_using(redis: Redis, tenant: str, skus: Sequence[str]
                        ) -> dict[str, set[str]]:
    """Component SKU -> the bundles that use it, for those `skus` used by any."""
    k = tenant_keys(tenant)
    async with redis.pipeline(transaction=False) as pipe:
        for sku in skus:
            pipe.smembers(k.bundled(sku))
        found = await pipe.execute()
    return {sku: {m.decode() for m in members}
            for sku, members in zip(skus, found, strict=True) if members}


class Bundles:
    """Bundle definitions of every tenant, and their derived stock views."""

    def __init__(self, engine: StockEngine) -> None:
        self.engine = engine
        self.redis = engine.redis

    async def put(self, tenant: str, sku: str, components: Sequence[BundleComponent]
                  ) -> tuple[BundleReply, bool]:
        return await self._write(tenant, sku, [[c.sku, c.qty] for c in components])

    async def delete(self, tenant: str, sku: str) -> BundleReply:
        """Live holds and orders that named the bundle hold component lines: they stay valid
        and release, commit, ship and refund as they are."""
        reply, _ = await self._write(tenant, sku, [])
        return reply

    async def _write(self, tenant: str, sku: str, components: list[list[str | int]]
                     ) -> tuple[BundleReply, bool]:
        request = {"sku": sku, "components": components,
                   "max_components": MAX_BUNDLE_COMPONENTS}
        return await self.engine._run("bundle", tenant, [tenant_keys(tenant).outbox],
                                      request, "", BundleReply)

    async def names(self, tenant: str) -> list[str]:
        """Every bundle SKU of the tenant, sorted."""
        return sorted(k.decode() for k in await self.redis.hkeys(tenant_keys(tenant).bundles))

    async def definitions(self, tenant: str, skus: Sequence[str]
                          ) -> dict[str, list[tuple[str, int]]]:
        """The components of those `skus` that are bundles."""
        if not skus:
            return {}
        raw = await self.redis.hmget(tenant_keys(tenant).bundles, list(skus))
        return {sku: _components.decode(v) for sku, v in zip(skus, raw, strict=True)
                if v is not None}

    async def views(self, tenant: str, skus: Sequence[str]) -> dict[str, StockView]:
        """Derived StockViews of those `skus` that are bundles, built by the engine's own
        view() from the derived counts (so whatever per-channel rule view() applies applies
        to a bundle too): each location shows on_hand = available = bundles it makes."""
        _, views = await self._derived(tenant, skus)
        return views

    async def view(self, tenant: str, sku: str) -> BundleView:
        defs, views = await self._derived(tenant, [sku])
        if sku not in views:
            raise errors.UnknownSku(sku=sku)
        view = views[sku]
        return BundleView(
            sku=sku, components=[BundleComponent(c, q) for c, q in defs[sku]],
            locations={loc: cell.available for loc, cell in view.locations.items()},
            available=view.available, channels=view.channels)

    async def _derived(self, tenant: str, skus: Sequence[str]
                       ) -> tuple[dict[str, list[tuple[str, int]]], dict[str, StockView]]:
        defs = await self.definitions(tenant, skus)
        if not defs:
            return {}, {}
        parts = sorted({c for comps in defs.values() for c, _ in comps})
        async with self.redis.pipeline(transaction=False) as pipe:
            for sku in parts:
                pipe.hgetall(tenant_keys(tenant).stock(sku))
            for sku in defs:  # a bundle's own per-channel allocation rules
                pipe.hgetall(tenant_keys(tenant).allocation(sku))
            reads = await pipe.execute()
        raws, rules = reads[:len(parts)], dict(zip(defs, reads[len(parts):], strict=True))
        component_views = {sku: self.engine.view(tenant, sku, raw)
                           for sku, raw in zip(parts, raws, strict=True) if raw}
        views = {}
        for sku, comps in defs.items():
            raw_cells = {f"{loc}|on_hand".encode(): str(n).encode()
                         for loc, n in derive(comps, component_views).items()}
            views[sku] = self.engine.view(tenant, sku, raw_cells, rules=rules[sku])
        return defs, views
