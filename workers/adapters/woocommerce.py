"""WooCommerce REST v3: a product's (or variation's) `stock_quantity` with manage_stock on.
WooCommerce has one stock figure per product, no locations. A mapped id of the form
"<product>/<variation>" addresses a variation. access_token is "consumer_key:consumer_secret"
sent as HTTP basic auth, as WooCommerce expects over HTTPS."""

from __future__ import annotations

import base64

from workers.adapters.base import ChannelAdapter


class WooCommerceAdapter(ChannelAdapter):
    def headers(self) -> dict[str, str]:
        token = base64.b64encode(self.channel.access_token.encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def _path(self, sku: str) -> str:
        product, _, variation = self.item_id(sku).partition("/")
        if variation:
            return f"/products/{product}/variations/{variation}"
        return f"/products/{product}"

    async def set_available(self, sku: str, location: str, available: int) -> None:
        await self.call("PUT", self._path(sku),
                        json={"manage_stock": True, "stock_quantity": available})

    async def get_available(self, sku: str, location: str) -> int | None:
        body = await self.call("GET", self._path(sku))
        return (body or {}).get("stock_quantity")
