"""Shopify: HMAC-SHA256 of the raw body, base64, in X-Shopify-Hmac-Sha256.

Topics: orders/create, orders/cancelled, orders/fulfilled, fulfillments/create, refunds/create,
inventory_levels/update. Shopify retries a failed delivery for up to 48 hours with the same
X-Shopify-Webhook-Id, which is the dedupe key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

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
    equal,
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


class Order(msgspec.Struct, frozen=True):
    id: int
    line_items: list[LineItem] = []
    note_attributes: list[NoteAttribute] = []
    # Set for POS orders only; online orders have no location until fulfilment.
    location_id: int | None = None


class Fulfillment(msgspec.Struct, frozen=True):
    id: int
    order_id: int
    line_items: list[LineItem] = []
    location_id: int | None = None


class RefundLineItem(msgspec.Struct, frozen=True):
    quantity: int
    # no_restock, cancel (unshipped units), return (shipped units back), legacy_restock.
    restock_type: str | None = None
    location_id: int | None = None
    line_item: LineItem | None = None


class Refund(msgspec.Struct, frozen=True):
    id: int
    order_id: int
    refund_line_items: list[RefundLineItem] = []
    # Pre-2019 API versions carried a boolean instead of restock_type per line.
    restock: bool | None = None


class InventoryLevel(msgspec.Struct, frozen=True):
    inventory_item_id: int
    location_id: int
    available: int | None = None


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
    delivery_id = headers.get("x-shopify-webhook-id") or headers.get("x-shopify-event-id")
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


def _operations(channel_id: str, channel: Channel, delivery: Delivery, body: bytes
                ) -> list[Operation]:
    topic = delivery.topic
    if topic == "orders/create":
        order = parse(_ORDER, body, "order")
        lines, skipped = lines_of(
            channel, _items(order.line_items),
            # POS orders name their location; online ones sell from the channel's own.
            channel.location_for(order.location_id))
        return [OrderPlaced(order_ref(channel_id, order.id), lines, _hold_id(order), skipped)]
    if topic == "orders/cancelled":
        order = parse(_ORDER, body, "order")
        return [OrderCancelled(order_ref(channel_id, order.id))]
    if topic == "orders/fulfilled":
        order = parse(_ORDER, body, "order")
        ref = order_ref(channel_id, order.id)
        return [OrderFulfilled(ref, ref + ":fulfilled")]
    if topic == "fulfillments/create":
        ful = parse(_FULFILLMENT, body, "fulfillment")
        # Units ship from whichever location committed them: match lines by SKU only.
        lines, skipped = lines_of(channel, _items(ful.line_items), None)
        if ful.line_items and not lines:
            # Only gift cards or unmappable lines shipped: no lines would mean "every open
            # unit of the order" to the fulfil script.
            return []
        return [OrderFulfilled(order_ref(channel_id, ful.order_id),
                               order_ref(channel_id, f"fulfillment-{ful.id}"), lines, skipped)]
    if topic == "refunds/create":
        refund = parse(_REFUND, body, "refund")
        restocked = [
            rli for rli in refund.refund_line_items
            if (rli.restock_type or ("legacy_restock" if refund.restock else "no_restock"))
            != "no_restock"
        ]
        lines, skipped = lines_of(channel, (
            ((rli.line_item.sku if rli.line_item else None),
             ((rli.line_item.variant_id if rli.line_item else None),), rli.quantity)
            for rli in restocked if not (rli.line_item and rli.line_item.gift_card)), None)
        if not lines:
            return []
        return [Refunded(order_ref(channel_id, f"refund-{refund.id}"),
                         order_ref(channel_id, refund.order_id), lines, skipped)]
    if topic == "inventory_levels/update":
        level = parse(_LEVEL, body, "inventory level")
        item = str(level.inventory_item_id)
        sku = channel.inventory_item_skus.get(item) or channel.variant_skus.get(item)
        location = _known_location(channel, level.location_id)
        if sku is None or location is None or level.available is None:
            return []  # an item or location Stockgate does not manage
        return [InventorySet(sku, location, level.available)]
    return []


def _known_location(channel: Channel, location_id: int) -> str | None:
    """An inventory level of an unmapped location is not ours to change (unlike an order,
    which must count somewhere)."""
    if channel.location_map:
        return channel.location_map.get(str(location_id))
    return channel.locations[0] if channel.locations else ""
