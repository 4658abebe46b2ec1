"""What every channel module shares: the verified delivery, the stock operations a webhook
decodes into, and the mapping of channel ids (variants, locations) to Stockgate names.

A channel module is three steps behind one small interface:
    verify(channel, headers, raw body, now, tolerance_s) -> Delivery
        (raises Unauthorized; constant-time, over the raw bytes, before any parsing)
    decode(channel_id, channel, delivery, body) -> (Delivery, list[Operation])
        (raises MalformedRequest; returns the delivery refined when its id lives in the body)
and the ingress (gateway/webhooks.py) applies the operations to the stock engine.

Ids a channel sends are namespaced by the channel's config name ("shopify-main:1001") so two
channels never share an order, refund or fulfilment id. Workers creating orders for a channel
(e.g. after a BigCommerce fetch) use the same `order_ref`.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Literal

import msgspec

from gateway.errors import MalformedRequest
from stockgate.models import Line, valid_line
from stockgate.settings import Channel

# The note attribute (Shopify) / order meta key (WooCommerce) / field (standard) naming the
# storefront hold that an order completes. A leading underscore hides a Shopify cart attribute
# from the shopper, so both spellings are accepted.
HOLD_ATTRIBUTE = "stockgate_hold_id"
HOLD_ATTRIBUTES = frozenset({HOLD_ATTRIBUTE, "_" + HOLD_ATTRIBUTE})


class Delivery(msgspec.Struct, frozen=True):
    """A verified webhook: the channel's delivery id (for dedupe) and its topic."""

    id: str
    topic: str
    ping: bool = False  # a channel's set-up probe: answer 200, change nothing


# ---- stock operations a webhook turns into ---------------------------------------------

class Skipped(msgspec.Struct, frozen=True, omit_defaults=True):
    """A channel line that was not turned into a stock line, and why:
    `unmapped`: no SKU, and its variant id is not in the channel's `variant_skus` (gift cards,
    a product nobody mapped); `invalid`: a SKU or quantity outside what a Stockgate line
    allows (SKU empty, over 128 characters or with control characters; qty < 1 or
    over 1,000,000). Reported in the webhook reply; an order's skipped lines raise an alert."""

    reason: str  # unmapped, invalid, no_units (qty <= 0: reported only)
    qty: int
    sku: str = ""
    variant: str = ""


class OrderPlaced(msgspec.Struct, frozen=True, tag="order_placed"):
    order_id: str
    lines: list[Line]
    hold_id: str | None = None
    # Lines that cannot be stocked: reported and alerted on, never sent to the scripts (one
    # bad line would make the order script refuse the whole order).
    skipped: list[Skipped] = []
    # When the channel says the order was placed (signed, in the body); 0 when it does not
    # say. An order body older than the return window is stale (gateway/webhooks.py).
    placed_at_ms: int = 0
    # When the body says the order last changed; 0 when it does not say. Orders a known
    # order's record by state: a newer body merges (an edit, a re-opened order), an older
    # one changes nothing (lua/order.lua).
    state_at_ms: int = 0


class OrderCancelled(msgspec.Struct, frozen=True, tag="order_cancelled"):
    """The body says the order is cancelled: its open units return to sale; an order not
    seen yet is recorded as cancelled so that its late create commits nothing."""

    order_id: str
    placed_at_ms: int = 0
    state_at_ms: int = 0


class OrderFulfilled(msgspec.Struct, frozen=True, tag="order_fulfilled"):
    order_id: str
    fulfilment_id: str
    lines: list[Line] = []  # empty: every open unit of the order
    skipped: list[Skipped] = []


class Refunded(msgspec.Struct, frozen=True, tag="refunded"):
    refund_id: str
    order_id: str
    lines: list[Line]  # only the restocked lines
    skipped: list[Skipped] = []
    # Which units the channel says came back: "open" (never shipped: Shopify `cancel`),
    # "shipped" (returned: `return`) or "any" (the channel does not say which).
    take_from: Literal["any", "open", "shipped"] = "any"


class InventorySet(msgspec.Struct, frozen=True, tag="inventory_set"):
    """Someone set the channel's available count for a SKU at a location in its admin."""

    sku: str
    location: str
    available: int
    reported_at_ms: int = 0  # signed time of the count (Shopify `updated_at`); 0: unknown


class FetchOrder(msgspec.Struct, frozen=True, tag="fetch_order"):
    """The hook only names the order: a worker fetches it from the channel's API."""

    channel_order_id: str


class RefundReview(msgspec.Struct, frozen=True, tag="refund_review"):
    """A refund whose channel cannot say which units came back (WooCommerce's `refunded`
    status): restocking on a guess would put units the customer may still have back on sale,
    so nothing changes and an operator is asked to review these lines (`refund_needs_review`)."""

    order_id: str
    lines: list[Line]
    reason: str  # what the channel said, e.g. "refunded"; part of the alert's once-marker


class Refused(msgspec.Struct, frozen=True, tag="refused"):
    """A signed delivery that changes nothing and is alerted: its unsigned topic contradicts
    its body (`webhook_contradiction`), or its body is older than the return window
    (`stale_delivery`)."""

    reason: str  # webhook_contradiction, stale_delivery
    ref: str
    detail: str


Operation = (OrderPlaced | OrderCancelled | OrderFulfilled | Refunded | InventorySet | FetchOrder
             | RefundReview | Refused)


# ---- helpers ---------------------------------------------------------------------------

def equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison of two byte strings."""
    return hmac.compare_digest(a, b)


def order_ref(channel_id: str, channel_order_id: object) -> str:
    return f"{channel_id}:{channel_order_id}"


def sku_of(channel: Channel, sku: str | None, *variant_ids: object) -> str | None:
    """The line's SKU, else the SKU the channel's variant table gives its variant id."""
    if sku:
        return sku
    for vid in variant_ids:
        if vid is not None and vid != 0 and (found := channel.variant_skus.get(str(vid))):
            return found
    return None


def lines_of(channel: Channel, items: Iterable[tuple[str | None, tuple, int]],
             location: str | None) -> tuple[list[Line], list[Skipped]]:
    """(sku, variant ids, qty) triples -> valid Lines, and the lines that were skipped:
    without a resolvable SKU (`unmapped`), with values no line may have (`invalid`), or
    with no units (`no_units`)."""
    lines: list[Line] = []
    skipped: list[Skipped] = []
    for sku, variant_ids, qty in items:
        resolved = sku_of(channel, sku, *variant_ids)
        variant = next((str(v) for v in variant_ids if v is not None and v != 0), "")
        if qty <= 0:
            # A line edited down to nothing: nothing to stock, nothing to alert about.
            skipped.append(Skipped("no_units", qty, sku=(resolved or "")[:128], variant=variant))
            continue
        if resolved is None:
            skipped.append(Skipped("unmapped", qty, variant=variant))
            continue
        line = valid_line(resolved, qty, location)
        if line is None:
            # Cut a long SKU so the reply and alert stay small; the reason says enough.
            skipped.append(Skipped("invalid", qty, sku=resolved[:128], variant=variant))
            continue
        lines.append(line)
    return lines, skipped


def iso_ms(stamp: str | None) -> int:
    """Milliseconds since the epoch of an ISO 8601 time a channel sends ("2026-11-30T05:34:29Z",
    "2026-11-30T00:34:29-05:00", or no zone: UTC); 0 when absent or unreadable."""
    if not stamp:
        return 0
    try:
        when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return 0
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def parse(dec: msgspec.json.Decoder, body: bytes, what: str):  # type: ignore[no-untyped-def]
    try:
        return dec.decode(body)
    except msgspec.ValidationError as exc:
        raise MalformedRequest(f"{what}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise MalformedRequest(f"malformed JSON: {exc}") from None
    except RecursionError:
        # msgspec recurses into nested arrays/objects even to skip an unknown field or to
        # fill an `object` field, so `[[[[...` a few thousand deep is not a DecodeError.
        raise MalformedRequest("malformed JSON: nested too deeply") from None
