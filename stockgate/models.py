"""msgspec Structs for every boundary: API requests and replies, script replies, outbox events.

Decoders and encoders are built once at import and reused on the hot path.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from stockgate.allocation import AllocationRule, RuleSource
from stockgate.settings import NAME_PATTERN

MAX_QTY = 1_000_000_000
# A SKU is at most this many UTF-8 bytes: the Lua scripts count bytes (lua/_common.lua
# is_name), so Python counts them too, or a line Python accepts would void a whole order.
MAX_SKU_BYTES = 128
# The longest ttl_s a hold request may ask (and hold_ttl_s may be). The hold is then clamped
# to hold_max_total_s (StockEngine.hold), and an extension estimates a legacy hold's creation
# from it (lua/extend.lua): no hold was ever made longer than this.
MAX_HOLD_TTL_S = 86_400

Sku = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")]


def sku_fits(sku: str) -> bool:
    return len(sku.encode("utf-8", "surrogatepass")) <= MAX_SKU_BYTES
Location = Annotated[str, Meta(pattern=NAME_PATTERN)]
Ident = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.:\-]{1,128}$")]
Qty = Annotated[int, Meta(ge=1, le=1_000_000)]
Count = Annotated[int, Meta(ge=0, le=MAX_QTY)]
SignedCount = Annotated[int, Meta(ge=-MAX_QTY, le=MAX_QTY)]

EventType = Literal[
    "hold", "release", "expire", "commit", "fulfil", "cancel", "restock", "adjust",
    "oversell_rejected", "bundle", "allocation",
    "extend",  # a hold's expiry moved later (delta {}: no field changes)
    "incoming", "receive",  # expected units opened/closed; a receipt into on_hand
]


# ---- requests (HTTP bodies) -------------------------------------------------------------

class Line(Struct, frozen=True, forbid_unknown_fields=True):
    sku: Sku
    qty: Qty
    location: Location | None = None

    def __post_init__(self) -> None:
        # msgspec turns this ValueError into a ValidationError naming the field's Struct.
        if not sku_fits(self.sku):
            raise ValueError(f"sku: at most {MAX_SKU_BYTES} UTF-8 bytes")


def valid_line(sku: str, qty: int, location: str | None) -> Line | None:
    """A Line, or None when one of its values breaks Line's constraints (SKU length and
    characters, qty range, location name). msgspec applies constraints when decoding and
    converting, not when a Struct is built, so every Line made from channel data goes
    through here: a line the scripts would refuse must not reach them, because the order
    and fulfil scripts refuse the whole request for one bad line."""
    try:
        return msgspec.convert({"sku": sku, "qty": qty, "location": location}, Line)
    except msgspec.ValidationError:
        return None


class HoldRequest(Struct, frozen=True, forbid_unknown_fields=True):
    lines: Annotated[list[Line], Meta(min_length=1)]
    hold_id: Ident | None = None
    channel: Location | None = None
    location: Location | None = None
    # Clamped to hold_max_total_s, as PATCH clamps an extension: the reply's expires_at is
    # the real expiry.
    ttl_s: Annotated[int, Meta(ge=1, le=MAX_HOLD_TTL_S)] | None = None
    # Shopper id for per-customer purchase limits on a drop.
    customer: Location | None = None


class CommitRequest(Struct, frozen=True, forbid_unknown_fields=True):
    order_id: Ident


class AdjustRequest(Struct, frozen=True, forbid_unknown_fields=True):
    reason: Annotated[str, Meta(min_length=1, max_length=200)]
    idempotency_key: Ident
    location: Location | None = None
    delta: SignedCount | None = None
    set_on_hand: Count | None = None
    unavailable_delta: SignedCount | None = None


class BulkAdjustLine(Struct, frozen=True, forbid_unknown_fields=True):
    sku: Sku
    reason: Annotated[str, Meta(min_length=1, max_length=200)]
    idempotency_key: Ident
    location: Location | None = None
    delta: SignedCount | None = None
    set_on_hand: Count | None = None
    unavailable_delta: SignedCount | None = None

    def __post_init__(self) -> None:
        if not sku_fits(self.sku):
            raise ValueError(f"sku: at most {MAX_SKU_BYTES} UTF-8 bytes")


class BulkAdjustRequest(Struct, frozen=True, forbid_unknown_fields=True):
    lines: Annotated[list[BulkAdjustLine], Meta(min_length=1, max_length=5000)]


class PolicyRequest(Struct, frozen=True, forbid_unknown_fields=True):
    location: Location | None = None
    safety: Count | None = None
    backorder_limit: Count | None = None
    low_stock_threshold: Count | None = None
    max_per_customer: Count | None = None
    preorder_limit: Count | None = None


# ---- script replies -----------------------------------------------------------------------

class ScriptLine(Struct, frozen=True, array_like=True):
    """A line as the scripts store it: [sku, location, qty]."""

    sku: str
    location: str
    qty: int


class HoldReply(Struct, frozen=True):
    hold_id: str
    expires_at_ms: int
    lines: list[ScriptLine]


class ReleaseReply(Struct, frozen=True):
    hold_id: str
    status: str


class CommitReply(Struct, frozen=True):
    order_id: str
    hold_id: str
    lines: list[ScriptLine]


class OrderLineResult(Struct, frozen=True):
    sku: str
    location: str
    qty: int
    # held: covered by the hold the order named; committed: taken from available.
    status: Literal["held", "committed", "oversell_rejected", "unknown_sku", "invalid"]


class OrderReply(Struct, frozen=True):
    order_id: str
    lines: list[OrderLineResult] = []
    hold_id: str = ""  # the hold the order claimed, if its hint verified


class MovedLine(Struct, frozen=True):
    sku: str
    location: str
    qty: int


class FulfilReply(Struct, frozen=True):
    order_id: str
    fulfilment_id: str
    lines: list[MovedLine] = []


class CancelReply(Struct, frozen=True):
    order_id: str
    lines: list[MovedLine] = []


class RestockLineResult(Struct, frozen=True):
    sku: str
    location: str
    qty: int
    restocked: int


class RestockReply(Struct, frozen=True):
    refund_id: str
    lines: list[RestockLineResult] = []


class CellState(Struct, frozen=True):
    on_hand: int = 0
    reserved: int = 0
    committed: int = 0
    unavailable: int = 0
    safety: int = 0
    backorder_limit: int = 0
    available: int = 0


class AdjustReply(Struct, frozen=True):
    sku: str
    location: str
    after: CellState


class PolicyReply(Struct, frozen=True):
    sku: str
    location: str
    safety: int
    backorder_limit: int
    low_stock_threshold: int
    max_per_customer: int
    preorder_limit: int = 0


class ExpireReply(Struct, frozen=True):
    expired: int
    remaining_due: int


class SetAsideLine(Struct, frozen=True):
    sku: str
    location: str
    pending: int  # units set aside for the channel's sales it has not sent orders for yet


class MovedReply(Struct, frozen=True):
    lines: list[SetAsideLine]


# ---- reads ----------------------------------------------------------------------------------

class HoldRecord(Struct, frozen=True):
    """A hold as its record stands: status is held, committed, released or expired;
    order_id is set once committed."""

    hold_id: str
    status: str
    lines: list[ScriptLine]
    order_id: str = ""


class ChannelFigure(Struct, frozen=True):
    """One figure a channel is pushed: its pool and the value its rule shows of it."""

    pool: int
    value: int


class ChannelAllocation(Struct, frozen=True):
    """What a channel is shown of a SKU and why: `value` (= StockView.channels) of `pool`
    under `rule`, which comes from the SKU ("sku"), the channel's default ("channel") or
    nowhere ("none"). `figures`: per location the channel keeps a figure under (one for a
    channel that shows one figure; one per mapped location otherwise), each ruled alone."""

    value: int
    pool: int
    source: RuleSource
    rule: AllocationRule | None = None
    figures: dict[str, ChannelFigure] = {}


class StockView(Struct, frozen=True):
    sku: str
    locations: dict[str, CellState]
    available: int
    channels: dict[str, int]
    low_stock_threshold: int = 0
    max_per_customer: int = 0
    # Per location: units expected by open incoming records and what pre-order selling may
    # still take against them (stockgate/incoming.py); absent where nothing is expected.
    incoming: dict[str, IncomingAt] = {}
    preorder_limit: int = 0
    allocation: dict[str, ChannelAllocation] = {}


class IncomingAt(Struct, frozen=True):
    expected: int  # open units of open incoming records at this location
    next_expected_at_ms: int  # the earliest expected date among them
    preorderable: int  # units pre-order selling may still take (shown to opted-in channels)


class AllocationScriptReply(Struct, frozen=True):
    sku: str
    channel: str
    changed: bool


class AllocationReply(Struct, frozen=True):
    """PUT/DELETE /v1/stock/{sku}/channels/{channel}: whether the stored rule changed (a
    change is one `allocation` event, pushed like any stock change) and what the channel is
    shown now."""

    sku: str
    channel: str
    changed: bool
    allocation: ChannelAllocation


# ---- outbox events --------------------------------------------------------------------------

class EventSource(Struct, frozen=True):
    channel: str = ""
    ref: str = ""


class Event(Struct, frozen=True):
    """One stock change. `id` is the outbox stream entry id, unique within a tenant."""

    ts: int
    tenant: str
    type: EventType
    sku: str
    location: str
    delta: dict[str, int]
    source: EventSource
    idempotency_key: str = ""
    reason: str = ""
    after: CellState | None = None
    id: str = ""


# ---- bundles (kits) -------------------------------------------------------------------------

# Most components one bundle may have: a bundle line costs its script one cell per component.
MAX_BUNDLE_COMPONENTS = 20


class BundleComponent(Struct, frozen=True, forbid_unknown_fields=True):
    sku: Sku
    qty: Qty


class BundleRequest(Struct, frozen=True, forbid_unknown_fields=True):
    components: Annotated[list[BundleComponent],
                          Meta(min_length=1, max_length=MAX_BUNDLE_COMPONENTS)]


class BundleReply(Struct, frozen=True):
    sku: str
    components: list[BundleComponent] = []  # none after a delete


class BundleView(Struct, frozen=True):
    """A bundle's derived stock: per location the minimum over its components of
    floor(component available / per-bundle qty), overall their sum, and per channel the
    value pushed to it."""

    sku: str
    components: list[BundleComponent]
    locations: dict[str, int]
    available: int
    channels: dict[str, int]


# Most audit events one GET /v1/events page returns (the gateway checks it, the audit store
# pages by it).
MAX_PAGE = 1000

event_decoder = msgspec.json.Decoder(Event)
json_encoder = msgspec.json.Encoder()


# ---- hold extension and incoming stock --------------------------------------------------

class ExtendRequest(Struct, frozen=True, forbid_unknown_fields=True):
    # The hold should live this long from now (default: the configured hold_ttl_s), capped
    # by hold_max_total_s from its creation.
    ttl_s: Annotated[int, Meta(ge=1, le=MAX_HOLD_TTL_S)] | None = None


class ExtendReply(Struct, frozen=True):
    hold_id: str
    expires_at_ms: int
    max_expires_at_ms: int  # the cap: creation + hold_max_total_s
    capped: bool  # the asked expiry was past the cap and was clamped to it


# A record's lines and a receipt's lines are bounded so that one script stays short.
MAX_INCOMING_LINES = 100
MAX_RECEIPTS = 1000
IncomingKind = Literal["purchase_order", "transfer"]
IncomingStatus = Literal["open", "received", "closed", "cancelled"]


class IncomingRequest(Struct, frozen=True, forbid_unknown_fields=True):
    incoming_id: Ident
    expected_date: date
    reference: Annotated[str, Meta(min_length=1, max_length=200)]
    lines: Annotated[list[Line], Meta(min_length=1, max_length=MAX_INCOMING_LINES)]
    kind: IncomingKind = "purchase_order"
    location: Location | None = None  # lines without a location expect their units here


class ReceiptRequest(Struct, frozen=True, forbid_unknown_fields=True):
    receipt_id: Ident
    lines: Annotated[list[Line], Meta(max_length=MAX_INCOMING_LINES)] = []
    # Close whatever stays open after this receipt (a short delivery: no more will come).
    close: bool = False


class IncomingLineState(Struct, frozen=True):
    sku: str
    location: str
    qty: int  # expected
    received: int
    open: int  # still expected (0 once covered, closed or cancelled)


class IncomingRecord(Struct, frozen=True):
    incoming_id: str
    kind: str
    reference: str
    expected_date: str
    expected_at_ms: int
    status: IncomingStatus
    created_at_ms: int
    receipts: int
    lines: list[IncomingLineState]


class ReceiptLineResult(Struct, frozen=True):
    sku: str
    location: str
    qty: int  # received by this receipt
    covered: int  # open units it closed
    over: int  # units beyond the line's open quantity (over-receipt)
    closed: int  # open units closed without arriving (close = true)


class ReceiptReply(Struct, frozen=True):
    incoming_id: str
    receipt_id: str
    status: IncomingStatus
    over_received: int
    lines: list[ReceiptLineResult]


class IncomingList(Struct, frozen=True):
    incoming: list[IncomingRecord]
