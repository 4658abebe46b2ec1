"""Shopify Admin REST: inventory_levels/set.json sets `available` of an inventory item at a
location; inventory_levels.json reads it. Items and locations are Shopify ids mapped in the
channel config (variant_skus, location_map)."""

from __future__ import annotations

from workers.adapters.base import ChannelAdapter


def _id(value: str) -> int | str:
    # Shopify ids are integers on the wire; keep unmapped names as text.
    return int(value) if value.isdigit() else value


class ShopifyAdapter(ChannelAdapter):
    """Inventory levels are keyed by inventory item, not variant: inventory_item_skus first."""

    def item_id(self, sku: str) -> str:
        for item, mapped in self.channel.inventory_item_skus.items():
            if mapped == sku:
                return item
        return super().item_id(sku)

    def headers(self) -> dict[str, str]:
        return {"X-Shopify-Access-Token": self.channel.access_token}

    async def set_available(self, sku: str, location: str, available: int) -> None:
        await self.call("POST", "/inventory_levels/set.json", json={
            "location_id": _id(self.location_id(location)),
            "inventory_item_id": _id(self.item_id(sku)),
            "available": available,
        })

    async def get_available(self, sku: str, location: str) -> int | None:
        body = await self.call("GET", "/inventory_levels.json", params={
            "inventory_item_ids": self.item_id(sku),
            "location_ids": self.location_id(location),
        })
        levels = (body or {}).get("inventory_levels") or []
        return levels[0].get("available") if levels else None
