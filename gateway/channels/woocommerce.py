"""WooCommerce: HMAC-SHA256 of the raw body, base64, in X-WC-Webhook-Signature.

The signature covers the body only; X-WC-Webhook-Topic and the delivery id are unsigned. So
for order.created and order.updated alike the operation is what the order body's `status`
says (WooCommerce REST API v3 order statuses: pending, processing, on-hold, completed,
cancelled, refunded, failed, trash): cancelled/failed cancel (an order not seen yet is
recorded as cancelled); completed places and ships; refunded places and asks for review (the
status cannot say which units came back, so nothing is restocked and an alert names the
lines; with the channel's `restock_refunds`, every line is restocked); trash changes nothing;
any other status places the order (idempotent on its id). Partial refunds are not in the
order payload's lines, so they are left to reconcile.
When a webhook is saved, WooCommerce sends an unsigned `webhook_id=<n>` form post and disables
the hook unless it gets a 2xx: that probe is answered 200 and changes nothing.
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
    RefundReview,
    equal,
    iso_ms,
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
    date_created_gmt: str | None = None  # signed placement time, for the stale rule
    # Signed: orders this body among the order's states (a `failed` order paid later is
    # re-opened by its newer `processing` body; an older `failed` body changes nothing).
    date_modified_gmt: str | None = None
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
    placed_at, state_at = iso_ms(order.date_created_gmt), iso_ms(order.date_modified_gmt)
    if order.status in ("cancelled", "failed"):
        return [OrderCancelled(ref, placed_at, state_at)]
    if order.status == "trash":
        return []
    lines, skipped = _lines(channel, order)
    # A refunded body ensures the sale is counted but never re-opens a cancelled order (a
    # cancelled order's payment is refunded too) nor edits one: it carries no state time.
    ops: list[Operation] = [OrderPlaced(ref, lines, _hold_id(order), skipped, placed_at,
                                        0 if order.status == "refunded" else state_at)]
    if order.status == "completed" and lines:
        # Only with stocked lines: otherwise there is no order to ship (virtual products).
        ops.append(OrderFulfilled(ref, ref + ":completed"))
    elif order.status == "refunded" and lines:
        # Order-level location: the restock script matches the order's own lines by SKU.
        by_sku = [msgspec.structs.replace(ln, location=None) for ln in lines]
        if channel.restock_refunds:
            # The merchant says this shop's refunds always mean the goods came back.
            ops.append(Refunded(ref + ":refunded", ref, by_sku))
        else:
            # A refund is money, not goods: the status cannot say which units came back.
            ops.append(RefundReview(ref, by_sku, "refunded"))
    return ops
