"""Amazon: ORDER_CHANGE notifications of the Selling Partner API, delivered over HTTPS by
Amazon EventBridge with a secret header.

Route. SP-API delivers ORDER_CHANGE through its Amazon SQS workflow ("To set up and subscribe
to the ORDER_CHANGE notification, follow the Set up notifications using the Amazon Simple Queue
Service workflow", https://developer-docs.amazon.com/sp-api/docs/subscribe-to-mfn-notifications;
its EventBridge workflow carries only listings and product-type notifications,
https://developer-docs.amazon.com/sp-api/docs/set-up-notifications-with-amazon-eventbridge).
An EventBridge Pipe takes the queue's messages (a pipe's SQS source,
https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-pipes-sqs.html) to an EventBridge
API destination, "the target of an event bus rule, or pipe"
(https://docs.aws.amazon.com/eventbridge/latest/userguide/api-destinations.html), whose
connection uses API_KEY authorization: ApiKeyName is "the name of the header to use for the
APIKeyValue" (https://docs.aws.amazon.com/eventbridge/latest/APIReference/API_ConnectionApiKeyAuthResponseParameters.html).
That header is the channel's `secret_header` and `secret`, compared in constant time. The key
authenticates the sender; the body itself is not signed (EventBridge signs nothing), so the
key must be long, random and sent only over HTTPS.

Body. Accepted as any of the shapes that route can give, unwrapped at most twice:
- an EventBridge event {"version", "id", "detail-type", "source", "account", "time",
  "region", "resources", "detail": ...} (a pipe to an event bus, and a rule to the API
  destination);
- an SQS record as a pipe passes it {"messageId", "receiptHandle", "body": "<the message
  text>", "attributes", ..., "eventSource": "aws:sqs"} (also as a one-record array: "the
  batch will be a JSON array containing a single JSON object",
  https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-pipes-batching-concurrency.html);
- the notification itself {"NotificationVersion", "NotificationType": "ORDER_CHANGE",
  "PayloadVersion", "EventTime", "Payload": {"OrderChangeNotification": {...}},
  "NotificationMetadata": {"NotificationId", ...}} (an input template of `<$.body>`).
The notification's fields are those of schemas/notifications/OrderChangeNotification.json
(github.com/amzn/selling-partner-api-models; tutorial:
https://developer-docs.amazon.com/sp-api/docs/tutorial-subscribe-to-order-change-notification).

Replays. The delivery id is the notification's NotificationMetadata.NotificationId: SQS
delivers at least once, and a message received again reaches us under a new SQS message id
and a new EventBridge event id, but the same notification id. Without one, the event's `id`
(or the SQS messageId) is the delivery id; the ingress also dedupes on the body's digest.

Orders. Summary.OrderItems (required in the schema) carries each item's SellerSKU, Quantity
and QuantityShipped, so no fetch is needed; a notification without it (an older payload)
queues a fetch of the order through the Orders API (workers/adapters/amazon.py). The status
mapping is in stockgate/amazon.py. Orders fulfilled by Amazon (Summary.FulfillmentType AFN)
sell Amazon's units, never Stockgate's: ignored. So are orders of another marketplace than
the channel's (Summary.MarketplaceId): one seller's notifications for all its marketplaces
share one queue. A Canceled whose items have QuantityShipped ships those units before it
cancels the rest (see _cancelled). Holds never apply: a marketplace order names
no storefront hold. ORDER_CHANGE carries no returns or refunds: those are left to reconcile.
"""

from __future__ import annotations

import hashlib

import msgspec
from starlette.datastructures import Headers

from gateway.channels import bigcommerce
from gateway.channels.base import (
    Delivery,
    FetchOrder,
    Operation,
    OrderCancelled,
    OrderFulfilled,
    OrderPlaced,
    Skipped,
    iso_ms,
    lines_of,
    order_ref,
    parse,
)
from gateway.errors import MalformedRequest
from stockgate.amazon import (
    SHIPPED_UNITS_MAX,
    STATUS_STATES,
    another_marketplace,
    shipment_fulfilment_id,
    shipped_fulfilment_id,
    unit_shipment_id,
)
from stockgate.models import Line
from stockgate.settings import Channel

TOPIC = "ORDER_CHANGE"


class OrderItem(msgspec.Struct, frozen=True, rename="pascal"):
    order_item_id: str = ""
    seller_sku: str | None = msgspec.field(default=None, name="SellerSKU")
    quantity: int = 0
    quantity_shipped: int = 0


class Summary(msgspec.Struct, frozen=True, rename="pascal"):
    order_status: str = ""
    marketplace_id: str = ""
    purchase_date: str | None = None
    fulfillment_type: str = ""
    # None: the payload did not say (fetch the order); []: an order of no items.
    order_items: list[OrderItem] | None = None


class Trigger(msgspec.Struct, frozen=True, rename="pascal"):
    time_of_order_change: str | None = None
    change_reason: str = ""


class OrderChange(msgspec.Struct, frozen=True, rename="pascal"):
    amazon_order_id: str
    seller_id: str = ""
    order_change_type: str = ""
    order_change_trigger: Trigger | None = None
    summary: Summary | None = None


class NotificationPayload(msgspec.Struct, frozen=True, rename="pascal"):
    order_change_notification: OrderChange | None = None


class NotificationMeta(msgspec.Struct, frozen=True, rename="pascal"):
    notification_id: str = ""


class Wrapper(msgspec.Struct, frozen=True):
    """Whichever of the three shapes the body is: only the fields that tell them apart."""

    # EventBridge event
    id: str = ""
    detail_type: str = msgspec.field(default="", name="detail-type")
    detail: msgspec.Raw = msgspec.Raw(b"")  # empty: absent
    # SQS record (a pipe's source event)
    messageId: str = ""  # SQS's spelling, as are the notification's below
    body: msgspec.Raw = msgspec.Raw(b"")
    # the notification
    NotificationType: str = ""
    EventTime: str | None = None
    Payload: NotificationPayload | None = None
    NotificationMetadata: NotificationMeta | None = None


_WRAPPER = msgspec.json.Decoder(Wrapper)
_RECORDS = msgspec.json.Decoder(list[msgspec.Raw])
_TEXT = msgspec.json.Decoder(str)


def verify(channel: Channel, headers: Headers, body: bytes, now: float,
           tolerance_s: int) -> Delivery:
    # The EventBridge connection's API key: a shared secret in a header, as BigCommerce's.
    return bigcommerce.verify(channel, headers, body, now, tolerance_s)


def unwrap(body: bytes) -> tuple[Wrapper, str]:
    """The notification in `body` and the id of the outermost envelope ("" if none)."""
    raw = body
    if body.lstrip()[:1] == b"[":
        records = parse(_RECORDS, body, "records")
        if len(records) != 1:
            # API destinations are not a batch target: a pipe sends them one record.
            raise MalformedRequest(f"expected one record, got {len(records)}")
        raw = bytes(records[0])
    outer = ""
    for _ in range(3):
        found = parse(_WRAPPER, raw, "notification")
        outer = outer or found.id or found.messageId
        if found.NotificationType or found.Payload is not None:
            return found, outer
        if len(found.detail):
            raw = bytes(found.detail)
        elif len(found.body):
            raw = bytes(found.body)
            if raw.lstrip()[:1] == b'"':
                # An SQS body is text: the notification's JSON inside a string.
                raw = parse(_TEXT, raw, "body").encode()
        else:
            break
    raise MalformedRequest("no SP-API notification in the body")


def decode(channel_id: str, channel: Channel, delivery: Delivery, body: bytes
           ) -> tuple[Delivery, list[Operation]]:
    note, outer = unwrap(body)
    notification_id = note.NotificationMetadata.notification_id if (
        note.NotificationMetadata) else ""
    if notification_id:
        delivery_id = f"notification-{notification_id}"
    else:
        # No id anywhere: the body's digest, never "" (which every such body would share).
        delivery_id = outer or "sha256-" + hashlib.sha256(body).hexdigest()
    delivery = Delivery(delivery_id, note.NotificationType)
    change = note.Payload.order_change_notification if note.Payload else None
    if note.NotificationType != TOPIC or change is None or not change.amazon_order_id:
        return delivery, []
    seller = channel.amazon.seller_id if channel.amazon else ""
    if seller and change.seller_id and change.seller_id != seller:
        # One application may serve several sellers through one queue: not this channel's.
        return delivery, []
    marketplace = channel.amazon.marketplace_id if channel.amazon else ""
    if change.summary and another_marketplace(marketplace, change.summary.marketplace_id):
        # One seller's notifications for every marketplace share one queue: not this one's.
        return delivery, []
    return delivery, operations(channel_id, channel, change)


def operations(channel_id: str, channel: Channel, change: OrderChange) -> list[Operation]:
    summary = change.summary
    if summary is None or summary.order_items is None:
        return [FetchOrder(change.amazon_order_id)]
    if summary.fulfillment_type == "AFN":
        return []  # fulfilled by Amazon from Amazon's stock: not units Stockgate counts
    ref = order_ref(channel_id, change.amazon_order_id)
    placed_at = iso_ms(summary.purchase_date)
    trigger = change.order_change_trigger
    state_at = iso_ms(trigger.time_of_order_change if trigger else None)
    # An unknown status (one Amazon may add) is a sale until it says otherwise.
    state = STATUS_STATES.get(summary.order_status, "open")
    if state == "ignored":
        return []
    location = channel.location_for(None)
    lines, skipped = lines_of(channel, (
        (item.seller_sku, (), item.quantity) for item in summary.order_items), location)
    if state == "cancelled":
        return _cancelled(channel, ref, summary.order_items, lines, skipped, placed_at,
                          state_at)
    ops: list[Operation] = [OrderPlaced(ref, lines, None, skipped, placed_at, state_at)]
    if not lines:
        return ops
    if state in ("shipped", "partially_shipped"):
        # Shipped too names its units one by one: SQS does not keep order, and a
        # PartiallyShipped delivered after it then only repeats fulfilments already applied.
        ops += _shipped_units(channel, ref, summary.order_items)
    if state == "shipped":
        # Whatever the units did not cover (QuantityShipped absent, past the cap, an
        # unmapped line's siblings) ships with the order's status; nothing open is a no-op.
        ops.append(OrderFulfilled(ref, shipped_fulfilment_id(ref)))
    return ops


def _cancelled(channel: Channel, ref: str, items: list[OrderItem], lines: list[Line],
               skipped: list[Skipped], placed_at: int, state_at: int) -> list[Operation]:
    """A Canceled order may have shipped part of its units first (the rest cancelled). SQS
    keeps no order, so the PartiallyShipped that shipped them may land after this cancel,
    when the cancel has already given every open unit back: the late shipment would then
    find nothing open and the shipped units would stay on sale. So the cancel ships the
    units its own QuantityShipped counts first, under the same per-unit fulfilment ids (a
    PartiallyShipped before or after only repeats them), and releases only the rest."""
    cancel = OrderCancelled(ref, placed_at, state_at)
    if not lines or not any(item.quantity_shipped > 0 for item in items):
        return [cancel]
    # The shipments need the order to exist: an order not seen yet is placed first. No
    # state time: this is not a state of the open order, so an order already past it (or
    # already cancelled) is left as it is (lua/order.lua), never refused as a conflict.
    placed = OrderPlaced(ref, lines, None, skipped, placed_at, 0)
    return [placed, *_shipped_units(channel, ref, items), cancel]


def _shipped_units(channel: Channel, ref: str, items: list[OrderItem]) -> list[Operation]:
    """One fulfilment per shipped unit of each item, each with its own id: the notification
    says how many units of an item shipped so far, not in which shipment."""
    ops: list[Operation] = []
    for item in items:
        found, _ = lines_of(channel, [(item.seller_sku, (), 1)], None)
        if not found or not item.order_item_id:
            continue
        line = found[0]  # 1 unit, matched by SKU wherever the order committed it
        for unit in range(1, min(item.quantity_shipped, item.quantity) + 1):
            if len(ops) >= SHIPPED_UNITS_MAX:
                return ops  # the rest ship with the order's Shipped status
            shipment = unit_shipment_id(item.order_item_id, unit)
            ops.append(OrderFulfilled(ref, shipment_fulfilment_id(ref, shipment), [line]))
    return ops
