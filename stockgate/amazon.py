"""Amazon order facts both sides use: the gateway (ORDER_CHANGE notifications) and the
workers (orders fetched from the Orders API) must name an order's fulfilments alike, so that
a shipment seen by both is applied once.

Amazon's order statuses are the `OrderStatus` enum of the Orders API v0 and of the
ORDER_CHANGE notification's `Summary` (models/orders-api-model/ordersV0.json and
schemas/notifications/OrderChangeNotification.json in github.com/amzn/selling-partner-api-models;
https://developer-docs.amazon.com/sp-api/docs/orders-api-v0-reference). The numbers are
Stockgate's own (the enum's order), used in fulfilment ids and logs.
"""

from __future__ import annotations

from typing import Literal

ORDER_STATUSES: dict[str, int] = {
    "Pending": 1, "Unshipped": 2, "PartiallyShipped": 3, "Shipped": 4, "Canceled": 5,
    "Unfulfillable": 6, "InvoiceUnconfirmed": 7, "PendingAvailability": 8,
}

AmazonState = Literal["open", "partially_shipped", "shipped", "cancelled", "ignored"]

# What each status means for a merchant-fulfilled order's units:
# - Pending (placed, payment not authorised yet) and PendingAvailability (a pre-order placed
#   before its release date): the buyer has the units and Amazon keeps them for the order
#   while payment is authorised, so Stockgate commits them at once: committing late could
#   sell them twice elsewhere. A Pending order whose payment fails becomes Canceled, which
#   gives them back.
# - Unshipped and InvoiceUnconfirmed (shipped-to-be, invoice not confirmed: Brazil/India B2B):
#   sold, in the building.
# - Unfulfillable: Multi-Channel Fulfillment orders only (Amazon's units): nothing here.
STATUS_STATES: dict[str, AmazonState] = {
    "Pending": "open", "PendingAvailability": "open", "Unshipped": "open",
    "InvoiceUnconfirmed": "open", "PartiallyShipped": "partially_shipped",
    "Shipped": "shipped", "Canceled": "cancelled", "Unfulfillable": "ignored",
}

# Units of one order item shipped are fulfilled one unit per id, so a later notification (or
# fetch) that reports more units shipped adds only the new ones: neither says which shipment
# took which units, only how many of each item have shipped so far.
SHIPPED_UNITS_MAX = 1000


def another_marketplace(channel_marketplace: str, order_marketplace: str) -> bool:
    """True when an order names a marketplace other than the channel's. A seller's
    ORDER_CHANGE subscription (and its Orders API) covers every marketplace the seller sells
    in, through one destination, while a channel pushes one marketplace's quantities: an
    amazon.ca order is not the amazon.com channel's sale. An order that names none (an older
    payload) is taken as the channel's."""
    return bool(channel_marketplace and order_marketplace
                and order_marketplace != channel_marketplace)


def status_id(status: str) -> int:
    return ORDER_STATUSES.get(status, 0)


def unit_shipment_id(order_item_id: str, unit: int) -> str:
    """The id of the `unit`-th shipped unit (1-based) of an order item."""
    return f"{order_item_id}-{unit}"


def shipment_fulfilment_id(order_ref: str, shipment_id: str) -> str:
    """As workers/queue.py names a fetched order's shipments."""
    return f"{order_ref}:shipment-{shipment_id}"


def shipped_fulfilment_id(order_ref: str) -> str:
    """As workers/queue.py names a fetched order's "every unit shipped" fulfilment."""
    return f"{order_ref}:status-{ORDER_STATUSES['Shipped']}"
