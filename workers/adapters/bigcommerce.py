"""BigCommerce: v3 inventory absolute adjustments set a variant's quantity at a location;
v3 inventory items read it; v2 orders give the order a webhook only names by id (with its
products and, once partly shipped, its shipments)."""

from __future__ import annotations

from typing import Any

from workers.adapters.base import ChannelAdapter, ChannelOrder, OrderLine, OrderState, Shipment

# BigCommerce's order status ids, as documented in its Orders v2 API reference ("Order Status
# Descriptions" under GET /v2/order_statuses/{status_id}):
# https://docs.bigcommerce.com/developer/api-reference/rest/admin/management/orders/order-status/get-order-statuses-status
STATUS_NAMES = {
    0: "Incomplete", 1: "Pending", 2: "Shipped", 3: "Partially Shipped", 4: "Refunded",
    5: "Cancelled", 6: "Declined", 7: "Awaiting Payment", 8: "Awaiting Pickup",
    9: "Awaiting Shipment", 10: "Completed", 11: "Awaiting Fulfillment",
    12: "Manual Verification Required", 13: "Disputed", 14: "Partially Refunded",
}
# What each status means for the order's units. A refund or dispute is money, not goods: the
# status cannot say which units came back, so it asks for review (docs/order-lifecycle.md).
# Every other id (pending, awaiting payment/fulfilment/shipment/pickup, manual verification,
# ids BigCommerce may add) is a sale whose units are still in the building: "open".
STATUS_STATES: dict[int, OrderState] = {
    0: "incomplete",
    2: "shipped", 10: "shipped",
    3: "partially_shipped",
    5: "cancelled", 6: "cancelled",
    4: "refunded", 13: "refunded", 14: "refunded",
}


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

    def _sku(self, product: dict[str, Any]) -> str:
        return product.get("sku") or self.channel.variant_skus.get(
            str(product.get("variant_id")), "")

    async def fetch_order(self, order_id: str) -> ChannelOrder:
        order = await self.call("GET", f"/v2/orders/{order_id}") or {}
        products = await self.call("GET", f"/v2/orders/{order_id}/products") or []
        lines = [OrderLine(sku=self._sku(p), qty=int(p["quantity"])) for p in products]
        # An order without a readable status is still a sale: -1 maps to "open".
        status_id = _int(order.get("status_id"), -1)
        state = STATUS_STATES.get(status_id, "open")
        shipments = (await self.fetch_shipments(order_id, products)
                     if state == "partially_shipped" else [])
        return ChannelOrder(order_id=str(order_id), state=state,
                            # SKU-less products stay: the worker alerts on a sale it
                            # cannot count instead of dropping it unseen.
                            lines=[ln for ln in lines if ln.qty > 0],
                            status_id=status_id,
                            status=STATUS_NAMES.get(status_id, f"status {status_id}"),
                            shipments=shipments)

    async def fetch_shipments(self, order_id: str, products: list[dict[str, Any]]
                              ) -> list[Shipment]:
        """The order's shipments (GET /v2/orders/{id}/shipments; 204 when there are none).
        A shipment's `items` name the order's products by `order_product_id`, the `id` of
        an entry of /v2/orders/{id}/products, which is where the SKU is."""
        body = await self.call("GET", f"/v2/orders/{order_id}/shipments",
                               params={"limit": "250"}) or []
        sku_of = {str(p.get("id")): self._sku(p) for p in products if p.get("id") is not None}
        shipments = []
        for shipment in body:
            lines = [OrderLine(sku=sku_of.get(str(item.get("order_product_id")), ""),
                               qty=_int(item.get("quantity")))
                     for item in shipment.get("items") or []]
            shipments.append(Shipment(shipment_id=str(shipment.get("id", "")),
                                      lines=[ln for ln in lines if ln.sku and ln.qty > 0]))
        return [s for s in shipments if s.shipment_id]


def _int(value: object, default: int = 0) -> int:
    """An id or quantity as BigCommerce sends it (int, numeric string, a float for shipment
    quantities); anything else is `default`."""
    try:
        return int(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return default
