"""BigCommerce: v3 inventory absolute adjustments set a variant's quantity at a location;
v3 inventory items read it; v2 orders give the order a webhook only names by id."""

from __future__ import annotations

from workers.adapters.base import ChannelAdapter, ChannelOrder, OrderLine

# BigCommerce order status ids that mean the order's units are no longer sold.
CANCELLED_STATUS_IDS = {4, 5, 6}  # Refunded, Cancelled, Declined


def _id(value: str) -> int | str:
    return int(value) if value.isdigit() else value


class BigCommerceAdapter(ChannelAdapter):
    def headers(self) -> dict[str, str]:
        return {"X-Auth-Token": self.channel.access_token, "Accept": "application/json"}

    async def set_available(self, sku: str, location: str, available: int) -> None:
        await self.call("PUT", "/v3/inventory/adjustments/absolute", json={
            "reason": "stockgate sync",
            "items": [{"location_id": _id(self.location_id(location)),
                       "variant_id": _id(self.item_id(sku)), "quantity": available}],
        })

    async def get_available(self, sku: str, location: str) -> int | None:
        body = await self.call("GET", "/v3/inventory/items", params={
            "variant_id:in": self.item_id(sku), "location_id:in": self.location_id(location)})
        for item in (body or {}).get("data") or []:
            for loc in item.get("locations") or []:
                return loc.get("available_to_sell")
        return None

    async def fetch_order(self, order_id: str) -> ChannelOrder:
        order = await self.call("GET", f"/v2/orders/{order_id}")
        products = await self.call("GET", f"/v2/orders/{order_id}/products") or []
        skus = self.channel.variant_skus
        lines = [OrderLine(sku=p.get("sku") or skus.get(str(p.get("variant_id")), ""),
                           qty=int(p["quantity"])) for p in products]
        return ChannelOrder(order_id=str(order_id),
                            cancelled=int(order.get("status_id", 0)) in CANCELLED_STATUS_IDS,
                            lines=[ln for ln in lines if ln.sku and ln.qty > 0])
