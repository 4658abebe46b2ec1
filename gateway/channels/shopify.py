"""Shopify: HMAC-SHA256 of the raw body, base64, in X-Shopify-Hmac-Sha256.

The signature covers the body only: the topic (X-Shopify-Topic) and the delivery ids
(X-Shopify-Webhook-Id, X-Shopify-Event-Id) are unsigned headers that anyone holding a signed
body can change. So the operation is derived from the body (REST Admin Order resource,
shopify.dev/docs/api/admin-rest/latest/resources/order: `cancelled_at`, `fulfillment_status`
null/partial/fulfilled, `fulfillments[]` with their `line_items`, `refunds[]` with
`refund_line_items[].restock_type`), and the topic only picks which kind of body to read:
order topics (orders/*) an Order, fulfillments/* a Fulfillment, refunds/create a Refund,
inventory_levels/update an InventoryLevel. A topic the body contradicts becomes a `Refused`
operation: nothing changes and an alert is raised. Shopify retries a failed delivery for up
to 48 hours with the same X-Shopify-Webhook-Id; the gateway also dedupes on X-Shopify-Event-Id
and on a digest of the body.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Literal

import msgspec
from starlette.datastructures import Headers

from gateway.channels.base import (
    HOLD_ATTRIBUTES,
    Delivery,
    InventorySet,
    Operation,
    OrderCancelled,
    OrderFulfilled,
    OrderPlaced,
    Refunded,
    Refused,
    equal,
    iso_ms,
    lines_of,
    order_ref,
    parse,
)
from gateway.errors import Unauthorized
from stockgate.settings import Channel


class NoteAttribute(msgspec.Struct, frozen=True):
    name: str = ""
    value: str | int | float | bool | None = None


class LineItem(msgspec.Struct, frozen=True):
    quantity: int
    sku: str | None = None
    variant_id: int | None = None
    id: int | None = None
    gift_card: bool = False  # not stock: left out of every mapping, not reported


def _items(line_items: list[LineItem]):  # type: ignore[no-untyped-def]
    """(sku, variant ids, qty) triples for lines_of, gift cards left out."""
    return ((li.sku, (li.variant_id,), li.quantity) for li in line_items if not li.gift_card)


class Fulfillment(msgspec.Struct, frozen=True):
    id: int
    # Required in a fulfillments/* body; None means the body is something else (an order).
    order_id: int | None = None
    line_items: list[LineItem] | None = None
    location_id: int | None = None
    # pending, open, success, cancelled, error, failure: only success moved goods.
    status: str | None = None


class RefundLineItem(msgspec.Struct, frozen=True):
    quantity: int
    # no_restock, cancel (unshipped units), return (shipped units back), legacy_restock.
    restock_type: str | None = None
    location_id: int | None = None
    line_item: LineItem | None = None


class Refund(msgspec.Struct, frozen=True):
    id: int
    # Required in a refunds/create body; None means the body is something else.
    order_id: int | None = None
    refund_line_items: list[RefundLineItem] | None = None
    # Pre-2019 API versions carried a boolean instead of restock_type per line.
    restock: bool | None = None


class Order(msgspec.Struct, frozen=True):
    id: int
    line_items: list[LineItem] = []
    note_attributes: list[NoteAttribute] = []
    # Set for POS orders only; online orders have no location until fulfilment.
    location_id: int | None = None
    created_at: str | None = None
    updated_at: str | None = None  # signed: orders this body among the order's states
    cancelled_at: str | None = None
    fulfillment_status: str | None = None
    fulfillments: list[Fulfillment] = []
    refunds: list[Refund] = []
    # Present only in fulfilment, refund and transaction bodies: such a body sent under an
    # order topic is a contradiction, not an order.
    order_id: int | None = None


class InventoryLevel(msgspec.Struct, frozen=True):
    inventory_item_id: int
    location_id: int
    available: int | None = None
    updated_at: str | None = None


_ORDER = msgspec.json.Decoder(Order)
_FULFILLMENT = msgspec.json.Decoder(Fulfillment)
_REFUND = msgspec.json.Decoder(Refund)
_LEVEL = msgspec.json.Decoder(InventoryLevel)


def verify(channel: Channel, headers: Headers, body: bytes, now: float,
           tolerance_s: int) -> Delivery:
    given = headers.get("x-shopify-hmac-sha256")
    if not given:
        raise Unauthorized("missing X-Shopify-Hmac-Sha256")
    expected = base64.b64encode(hmac.digest(channel.secret.encode(), body, hashlib.sha256))
    if not equal(expected, given.encode("latin-1")):
        raise Unauthorized("signature mismatch")
    # The event id names the change (one per order update, shared by its retries); the
    # webhook id names one delivery of it. Both are unsigned: the gateway dedupes on the
    # body's digest as well.
    delivery_id = headers.get("x-shopify-event-id") or headers.get("x-shopify-webhook-id")
    if not delivery_id:
        # Signed but without an id: use the body's digest so a resend still dedupes.
        delivery_id = "sha256-" + hashlib.sha256(body).hexdigest()
    return Delivery(delivery_id, headers.get("x-shopify-topic", ""))


def _hold_id(order: Order) -> str | None:
    for attr in order.note_attributes:
        if attr.name in HOLD_ATTRIBUTES and attr.value:
            return str(attr.value)
    return None


def decode(channel_id: str, channel: Channel, delivery: Delivery, body: bytes
           ) -> tuple[Delivery, list[Operation]]:
    return delivery, _operations(channel_id, channel, delivery, body)


def _refused(topic: str, ref: str, what: str) -> list[Operation]:
    return [Refused("webhook_contradiction", ref,
                    f"topic {topic!r} contradicts its signed body ({what}); nothing changed")]


def _operations(channel_id: str, channel: Channel, delivery: Delivery, body: bytes
                ) -> list[Operation]:
    topic = delivery.topic
    if topic.startswith("orders/"):
        order = parse(_ORDER, body, "order")
        ref = order_ref(channel_id, order.id)
        if order.order_id is not None:
            return _refused(topic, ref, "a fulfilment, refund or transaction body")
        if topic == "orders/cancelled" and not order.cancelled_at:
            return _refused(topic, ref, "the order has no cancelled_at")
        if topic == "orders/fulfilled" and order.fulfillment_status != "fulfilled":
            return _refused(topic, ref, f"fulfillment_status is {order.fulfillment_status}")
        return _order_operations(channel_id, channel, order)
    if topic.startswith("fulfillments/"):
        ful = parse(_FULFILLMENT, body, "fulfillment")
        if ful.order_id is None or ful.line_items is None:
            return _refused(topic, order_ref(channel_id, ful.id), "not a fulfilment body")
        return _fulfilment(channel_id, channel, ful.order_id, ful)
    if topic == "refunds/create":
        refund = parse(_REFUND, body, "refund")
        if refund.order_id is None or refund.refund_line_items is None:
            return _refused(topic, order_ref(channel_id, refund.id), "not a refund body")
        return _refund(channel_id, channel, refund.order_id, refund)
    if topic == "inventory_levels/update":
        level = parse(_LEVEL, body, "inventory level")
        item = str(level.inventory_item_id)
        sku = channel.inventory_item_skus.get(item) or channel.variant_skus.get(item)
        location = _known_location(channel, level.location_id)
        if sku is None or location is None or level.available is None:
            return []  # an item or location Stockgate does not manage
        return [InventorySet(sku, location, level.available, iso_ms(level.updated_at))]
    return []


def _order_operations(channel_id: str, channel: Channel, order: Order) -> list[Operation]:
    """Everything an order body says, each part idempotent on its own id: placed (the order
    id), cancelled, shipped (each fulfilment id), refunded (each refund id). Applying the same
    body twice, or an older body after a newer one, changes nothing more."""
    ref = order_ref(channel_id, order.id)
    placed_at, state_at = iso_ms(order.created_at), iso_ms(order.updated_at)
    if order.cancelled_at:
        return [OrderCancelled(ref, placed_at, state_at)]
    lines, skipped = lines_of(
        channel, _items(order.line_items),
        # POS orders name their location; online ones sell from the channel's own.
        channel.location_for(order.location_id))
    ops: list[Operation] = [OrderPlaced(ref, lines, _hold_id(order), skipped, placed_at,
                                        state_at)]
    for ful in order.fulfillments:
        ops += _fulfilment(channel_id, channel, order.id, ful)
    if order.fulfillment_status == "fulfilled" and not order.fulfillments and lines:
        ops.append(OrderFulfilled(ref, ref + ":fulfilled"))
    for refund in order.refunds:
        ops += _refund(channel_id, channel, order.id, refund)
    return ops


def _fulfilment(channel_id: str, channel: Channel, order_id: int, ful: Fulfillment
                ) -> list[Operation]:
    if ful.status not in (None, "success"):
        return []  # not shipped (pending, open) or undone (cancelled, error, failure)
    # Units ship from whichever location committed them: match lines by SKU only.
    lines, skipped = lines_of(channel, _items(ful.line_items or []), None)
    if not lines:
        # Only gift cards or unmappable lines shipped: no lines would mean "every open unit
        # of the order" to the fulfil script.
        return []
    return [OrderFulfilled(order_ref(channel_id, order_id),
                           order_ref(channel_id, f"fulfillment-{ful.id}"), lines, skipped)]


# restock_type -> which units of the order came back (RefundLineItem.restock_type,
# shopify.dev/docs/api/admin-rest/latest/resources/refund): `cancel` puts back units never
# shipped, `return` units the customer sent back, `legacy_restock` does not say which;
# `no_restock` puts nothing back (a refund is money, not goods).
_TAKE_FROM: dict[str, Literal["any", "open", "shipped"]] = {
    "cancel": "open", "return": "shipped", "legacy_restock": "any"}


def _refund(channel_id: str, channel: Channel, order_id: int, refund: Refund
            ) -> list[Operation]:
    by_kind: dict[str, list[RefundLineItem]] = {}
    for rli in refund.refund_line_items or []:
        kind = rli.restock_type or ("legacy_restock" if refund.restock else "no_restock")
        if kind in _TAKE_FROM and not (rli.line_item and rli.line_item.gift_card):
            by_kind.setdefault(kind, []).append(rli)
    ops: list[Operation] = []
    for kind, items in sorted(by_kind.items()):
        lines, skipped = lines_of(channel, (
            ((rli.line_item.sku if rli.line_item else None),
             ((rli.line_item.variant_id if rli.line_item else None),), rli.quantity)
            for rli in items), None)
        if not lines:
            continue
        # One refund id per kind, the same on every delivery of this refund's data.
        suffix = f":{kind}" if len(by_kind) > 1 else ""
        ops.append(Refunded(order_ref(channel_id, f"refund-{refund.id}{suffix}"),
                            order_ref(channel_id, order_id), lines, skipped,
                            _TAKE_FROM[kind]))
    return ops


def _known_location(channel: Channel, location_id: int) -> str | None:
    """An inventory level of an unmapped location is not ours to change (unlike an order,
    which must count somewhere)."""
    if channel.location_map:
        return channel.location_map.get(str(location_id))
    return channel.locations[0] if channel.locations else ""
