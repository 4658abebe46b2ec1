"""eBay: no webhook is accepted on /webhooks/{channel_id}; every delivery is refused (401).

eBay pushes no order status changes that this endpoint could verify with a shared secret:
the Notification API's ORDER_CONFIRMATION topic (checkout complete only, one message per
line item, naming the order for a getOrders call; signed with X-EBAY-SIGNATURE, an ECC
signature checked against a public key fetched from the Notification API,
https://developer.ebay.com/api-docs/master/commerce/notification/asyncapi/order_confirmation.yaml)
says nothing of cancellations, shipments or refunds. So orders come in by polling the
Fulfillment API's getOrders (workers/ebay_orders.py), which reads every status change; a
body posted here, whatever it carries, could only be forged or redundant.
"""

from __future__ import annotations

from starlette.datastructures import Headers

from gateway.channels.base import Delivery, Operation
from gateway.errors import Unauthorized
from stockgate.settings import Channel


def verify(channel: Channel, headers: Headers, body: bytes, now: float,
           tolerance_s: int) -> Delivery:
    # Refused before the body is read as anything: no secret can make a delivery authentic.
    raise Unauthorized("eBay orders are read from eBay's Fulfillment API, not received here")


def decode(channel_id: str, channel: Channel, delivery: Delivery, body: bytes
           ) -> tuple[Delivery, list[Operation]]:
    return delivery, []
