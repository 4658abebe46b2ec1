"""WooCommerce: HMAC-SHA256 of the raw body, base64, in X-WC-Webhook-Signature.

Topics: order.created (commit), order.updated by status: cancelled/failed (cancel), completed
(fulfil), refunded (restock every line). Partial refunds are not in the order payload's lines,
so they are left to reconcile. When a webhook is saved, WooCommerce sends an unsigned
`webhook_id=<n>` form post and disables the hook unless it gets a 2xx: that probe is
answered 200 and changes nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

import msgspec
from starlette.datastructures import Headers

from gateway.channels.base import (
    HOLD_ATTRIBUTES,
    Delivery,
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

_PING = re.compile(rb"^webhook_id=\d{1,20}$")


class MetaData(msgspec.Struct, frozen=True):
    key: str = ""
    value: object = None


class LineItem(msgspec.Struct, frozen=True):
    quantity: int
    sku: str | None = None
    product_id: int | None = None
    variation_id: int | None = None


class Order(msgspec.Struct, frozen=True):
    id: int
    status: str = ""
    line_items: list[LineItem] = []
    meta_data: list[MetaData] = []


_ORDER = msgspec.json.Decoder(Order)


def verify(channel: Channel, headers: Headers, body: bytes, now: float,
           tolerance_s: int) -> Delivery:
    given = headers.get("x-wc-webhook-signature")
    if not given:
        if _PING.match(body):
            return Delivery("", "ping", ping=True)
        raise Unauthorized("missing X-WC-Webhook-Signature")
    expected = base64.b64encode(hmac.digest(channel.secret.encode(), body, hashlib.sha256))
    if not equal(expected, given.encode("latin-1")):
        raise Unauthorized("signature mismatch")
    delivery_id = headers.get("x-wc-webhook-delivery-id")
    if not delivery_id:
        delivery_id = "sha256-" + hashlib.sha256(body).hexdigest()
    return Delivery(delivery_id, headers.get("x-wc-webhook-topic", ""))


def _hold_id(order: Order) -> str | None:
    for meta in order.meta_data:
        if meta.key in HOLD_ATTRIBUTES and isinstance(meta.value, str | int) and meta.value:
            return str(meta.value)
    return None


def _lines(channel: Channel, order: Order):  # type: ignore[no-untyped-def]
    return lines_of(channel, (
        (li.sku, (li.variation_id, li.product_id), li.quantity) for li in order.line_items),
        channel.location_for(None))


def decode(channel_id: str, channel: Channel, delivery: Delivery, body: bytes
           ) -> tuple[Delivery, list[Operation]]:
    return delivery, _operations(channel_id, channel, delivery, body)


def _operations(channel_id: str, channel: Channel, delivery: Delivery, body: bytes
                ) -> list[Operation]:
    if delivery.topic not in ("order.created", "order.updated"):
        return []
    order = parse(_ORDER, body, "order")
    ref = order_ref(channel_id, order.id)
    if delivery.topic == "order.created":
        if order.status in ("cancelled", "failed", "trash"):
            return []
        lines, skipped = _lines(channel, order)
        return [OrderPlaced(ref, lines, _hold_id(order), skipped)]
    if order.status in ("cancelled", "failed"):
        return [OrderCancelled(ref)]
    if order.status == "completed":
        return [OrderFulfilled(ref, ref + ":completed")]
    if order.status == "refunded":
        lines, skipped = _lines(channel, order)
        # Order-level location: the restock script matches the order's own lines by SKU.
        lines = [msgspec.structs.replace(ln, location=None) for ln in lines]
        return [Refunded(ref + ":refunded", ref, lines, skipped)] if lines else []
    return []
