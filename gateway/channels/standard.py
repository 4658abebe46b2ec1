"""Standard Webhooks (standardwebhooks.com), for a generic channel or marketplace bridge.

Signed content is "<webhook-id>.<webhook-timestamp>.<raw body>", HMAC-SHA256 keyed with the
base64 part of the `whsec_...` secret; `webhook-signature` holds one or more space-separated
"v1,<base64>" entries (several while a secret rotates). Timestamps further than the tolerance
from now, either way, are refused: that is what stops a captured delivery being replayed after
its dedupe record is gone.

Payload: {"type": ..., "timestamp": ..., "data": {...}} with these types:
    order.created     {order_id, hold_id?, lines: [{sku, qty, location?}]}
    order.cancelled   {order_id}
    order.fulfilled   {order_id, fulfilment_id, lines?: [{sku, qty, location?}]}
    refund.created    {refund_id, order_id, lines: [{sku, qty, location?, restock?}]}
    inventory.updated {sku, location?, available}
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
from typing import Annotated

import msgspec
from msgspec import Meta
from starlette.datastructures import Headers

from gateway.channels.base import (
    Delivery,
    InventorySet,
    Operation,
    OrderCancelled,
    OrderFulfilled,
    OrderPlaced,
    Refunded,
    Skipped,
    equal,
    order_ref,
    parse,
)
from gateway.errors import Unauthorized
from stockgate.models import Line, Location, Sku, valid_line
from stockgate.settings import Channel

Id = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.:\-]{1,100}$")]


class StdLine(msgspec.Struct, frozen=True):
    # Shapes only: the values are judged per line (_lines), so one bad line is skipped and
    # alerted like on every other channel instead of voiding the whole delivery.
    sku: str
    qty: int
    location: str | None = None
    restock: bool = True


class OrderCreatedData(msgspec.Struct, frozen=True):
    order_id: Id
    lines: Annotated[list[StdLine], Meta(min_length=1)]
    hold_id: Id | None = None


class OrderCancelledData(msgspec.Struct, frozen=True):
    order_id: Id


class OrderFulfilledData(msgspec.Struct, frozen=True):
    order_id: Id
    fulfilment_id: Id
    lines: list[StdLine] = []


class RefundData(msgspec.Struct, frozen=True):
    refund_id: Id
    order_id: Id
    lines: Annotated[list[StdLine], Meta(min_length=1)]


class InventoryData(msgspec.Struct, frozen=True):
    sku: Sku
    available: Annotated[int, Meta(ge=-1_000_000_000, le=1_000_000_000)]
    location: Location | None = None


class Envelope(msgspec.Struct, frozen=True):
    type: str
    data: msgspec.Raw = msgspec.Raw(b"{}")


_ENVELOPE = msgspec.json.Decoder(Envelope)
_DATA = {
    "order.created": msgspec.json.Decoder(OrderCreatedData),
    "order.cancelled": msgspec.json.Decoder(OrderCancelledData),
    "order.fulfilled": msgspec.json.Decoder(OrderFulfilledData),
    "refund.created": msgspec.json.Decoder(RefundData),
    "inventory.updated": msgspec.json.Decoder(InventoryData),
}


@functools.lru_cache(maxsize=64)
def signing_key(secret: str) -> bytes | None:
    encoded = secret.removeprefix("whsec_")
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None


def verify(channel: Channel, headers: Headers, body: bytes, now: float,
           tolerance_s: int) -> Delivery:
    msg_id = headers.get("webhook-id")
    stamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not (msg_id and stamp and signatures):
        raise Unauthorized("missing webhook-id, webhook-timestamp or webhook-signature")
    key = signing_key(channel.secret)
    if key is None:
        raise Unauthorized("channel secret is not a whsec_ base64 key")
    expected = base64.b64encode(hmac.digest(
        key, b"%s.%s.%s" % (msg_id.encode("latin-1"), stamp.encode("latin-1"), body),
        hashlib.sha256))
    matched = False
    for entry in signatures.split(" "):
        version, _, sig = entry.partition(",")
        # No early exit: every entry is compared, so timing says nothing about which matched.
        if version == "v1" and equal(expected, sig.encode("latin-1")):
            matched = True
    if not matched:
        raise Unauthorized("signature mismatch")
    # Checked after the signature (it is signed too) but before anything is parsed or kept.
    # isdigit() alone accepts "²" (a latin-1 header byte) that int() refuses, and a long run of
    # digits overflows int() and float arithmetic: a Unix time in seconds has at most 11.
    if (not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 11)
            or abs(now - int(stamp)) > tolerance_s):
        raise Unauthorized("webhook timestamp outside the tolerance")
    return Delivery(msg_id, "")  # the topic is the payload's "type", read by decode()


def _lines(channel: Channel, lines: list[StdLine]) -> tuple[list[Line], list[Skipped]]:
    """Stock lines and the lines skipped for values no stock line may have (the one
    definition in stockgate.models.valid_line). A line naming no location sells from the
    channel's own location, like other channels."""
    good: list[Line] = []
    skipped: list[Skipped] = []
    for ln in lines:
        location = (channel.location_map.get(ln.location, ln.location)
                    if ln.location is not None else channel.location_for(None))
        line = valid_line(ln.sku, ln.qty, location) if ln.qty > 0 else None
        if line is None:
            skipped.append(Skipped("invalid" if ln.qty > 0 else "no_units", ln.qty,
                                   sku=ln.sku[:128]))
        else:
            good.append(line)
    return good, skipped


def decode(channel_id: str, channel: Channel, delivery: Delivery, body: bytes
           ) -> tuple[Delivery, list[Operation]]:
    envelope = parse(_ENVELOPE, body, "payload")
    delivery = Delivery(delivery.id, envelope.type)
    dec = _DATA.get(envelope.type)
    if dec is None:
        return delivery, []
    data = parse(dec, envelope.data, "data")
    if isinstance(data, OrderCreatedData):
        lines, skipped = _lines(channel, data.lines)
        ops: list[Operation] = [OrderPlaced(order_ref(channel_id, data.order_id), lines,
                                            data.hold_id, skipped)]
    elif isinstance(data, OrderCancelledData):
        ops = [OrderCancelled(order_ref(channel_id, data.order_id))]
    elif isinstance(data, OrderFulfilledData):
        lines, skipped = _lines(channel, data.lines)
        # Lines named but none valid: nothing to ship (no lines means "every open unit").
        ops = [OrderFulfilled(order_ref(channel_id, data.order_id),
                              order_ref(channel_id, data.fulfilment_id), lines, skipped)
               ] if lines or not data.lines else []
    elif isinstance(data, RefundData):
        # Only lines the bridge marks as back in stock (`restock`, default true).
        lines, skipped = _lines(channel, [ln for ln in data.lines if ln.restock])
        ops = [Refunded(order_ref(channel_id, data.refund_id),
                        order_ref(channel_id, data.order_id), lines, skipped)] if lines else []
    else:
        location = (channel.location_map.get(data.location, data.location)
                    if data.location else channel.location_for(None))
        ops = [InventorySet(data.sku, location or "", data.available)]
    return delivery, ops
