"""The one interface every channel adapter implements: set the available counts of a batch of
(SKU, location) targets in as few calls as the channel allows, read counts back, and (where the
channel's webhooks carry only ids) fetch an order.

Errors of the whole call come out as PushError (whatever went wrong: a refused connection, a
429, a 500, a 200 whose body is an HTML maintenance page), so propagation can tell "wait and
retry" from "broken" and count, park and alert every one. Errors of one item come back as
that item's ItemResult, so one bad item never fails its batch."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import httpx
import msgspec

from stockgate.activity import scrub
from stockgate.settings import Channel


class PushError(Exception):
    """A call to the channel failed. `retry_after` is set when the channel asked us to slow
    down (429 / Retry-After): that is back-pressure, not a failure of the delivery."""

    def __init__(self, detail: str, *, retry_after: float | None = None,
                 status: int = 0) -> None:
        super().__init__(detail)
        self.retry_after = retry_after
        self.status = status


# A Retry-After longer than this is not waited for in one piece: the channel is held this long,
# an alert says how long it asked for, and the next call asks again.
RETRY_AFTER_MAX_S = 300.0
RETRY_AFTER_DEFAULT_S = 1.0


class PushItem(msgspec.Struct, frozen=True):
    """One target's new count. `expected` is the count Stockgate last knew the channel to hold:
    a channel with compare-and-set (Shopify's changeFromQuantity) refuses the write when it
    holds anything else; None sets blindly."""

    sku: str
    location: str
    value: int
    expected: int | None = None
    # Which push this is: the target's delivery version. Retries of one claim (a lost answer,
    # a lapsed lease taken over) carry the same one; a later push of the same value after the
    # channel moved (a hand edit found by reconciliation) carries another, so a channel with
    # idempotency keys (Shopify) applies it instead of replaying the first answer.
    attempt: str = ""


class ItemResult(msgspec.Struct, frozen=True):
    """What became of one PushItem.

    ok      the channel holds `value` now.
    stale   compare-and-set refused: the channel moved on its own; `actual` is its count
            now (None when the adapter could not read it).
    failed  this item was refused (`error`); `retryable` says whether trying again may help
            (an unknown item or a validation error will not)."""

    status: Literal["ok", "stale", "failed"]
    actual: int | None = None
    error: str = ""
    retryable: bool = True


OK = ItemResult("ok")


class OrderLine(msgspec.Struct, frozen=True):
    sku: str
    qty: int


# What a fetched order's channel status means for its units; each adapter maps its channel's
# own statuses onto these and workers/queue.py applies them:
#   incomplete         checkout never finished: nothing was sold
#   open               sold, not shipped: the units are committed
#   shipped            every unit left: fulfil every open unit
#   partially_shipped  some units left: fulfil what `shipments` lists
#   cancelled          the sale is off: open units go back on sale
#   refunded           money went back, which goods came back is unknown: review
OrderState = Literal["incomplete", "open", "shipped", "partially_shipped", "cancelled",
                     "refunded"]


class Shipment(msgspec.Struct, frozen=True):
    """One of a partially shipped order's shipments: its channel id (the fulfilment's
    idempotency key) and the lines it took."""

    shipment_id: str
    lines: list[OrderLine]


class ChannelOrder(msgspec.Struct, frozen=True):
    order_id: str
    state: OrderState
    lines: list[OrderLine]
    # The channel's own status, for fulfilment ids, alerts and logs.
    status_id: int = 0
    status: str = ""
    # Read only for a partially shipped order: the other states need no shipment detail.
    shipments: list[Shipment] = []
    # Returns whose goods the channel says came back to the seller, each under its own id
    # (the restock's idempotency key): restocked from the order's shipped units.
    returns: list[Shipment] = []
    # When the order was placed (Unix ms, 0: unknown). An order placed before the return window
    # may have no record left, so applying it would commit its units again: the fetch path
    # refuses it (workers/queue.py apply_channel_order).
    placed_at_ms: int = 0
    # When the channel says the order last changed (Unix ms, 0: unknown): a newer state of an
    # order Stockgate already has is merged into its record (lines dropped since, e.g. a
    # cancelled line item, give their units back) instead of refused as a conflict.
    state_ms: int = 0

    @property
    def cancelled(self) -> bool:
        return self.state == "cancelled"


def iso_to_ms(stamp: object) -> int:
    """Unix milliseconds of an ISO 8601 time ("2026-12-07T01:02:03Z", with or without
    fractions or an offset; a time without a zone is taken as UTC); 0 when absent or
    unreadable, which the callers read as "unknown" (never as stale)."""
    if not isinstance(stamp, str) or not stamp:
        return 0
    try:
        parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return 0
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return max(0, int(parsed.timestamp() * 1000))


def channel_wide(exc: PushError) -> bool:
    """The error is about the channel (busy, down, unreachable), not about one item."""
    return exc.retry_after is not None or exc.status in (0, 408, 425) or exc.status >= 500


def seconds(value: str, scale: float = 1.0) -> float | None:
    """A finite, non-negative number of seconds from a header, else None (absent, a date,
    garbage, inf, nan, negative)."""
    try:
        parsed = float(value) * scale
    except ValueError:
        return None
    return parsed if math.isfinite(parsed) and parsed >= 0 else None


def retry_after_s(response: httpx.Response) -> float:
    """How long the channel asked us to wait, as sent: callers cap it (RETRY_AFTER_MAX_S) and
    alert on long ones. BigCommerce sends its window in milliseconds in its own header."""
    found = seconds(response.headers.get("Retry-After", ""))
    if found is None:
        found = seconds(response.headers.get("X-Rate-Limit-Time-Reset-Ms", ""), 0.001)
    return max(found if found is not None else RETRY_AFTER_DEFAULT_S, 0.05)


class ChannelAdapter:
    """Base for the HTTP adapters: id mapping and the error handling they share."""

    def __init__(self, name: str, channel: Channel, client: httpx.AsyncClient) -> None:
        self.name = name
        self.channel = channel
        self.client = client
        self.base = channel.api_url.rstrip("/")
        self._item_ids = {sku: vid for vid, sku in channel.variant_skus.items()}
        self._location_ids = {loc: cid for cid, loc in channel.location_map.items()}

    def item_id(self, sku: str) -> str:
        """The channel's id for a SKU: the variant mapped to it in the config, else the SKU."""
        return self._item_ids.get(sku, sku)

    def location_id(self, location: str) -> str:
        return self._location_ids.get(location, location)

    def headers(self) -> dict[str, str]:
        return {}

    async def call(self, method: str, path: str, *, json: Any = None,
                   params: dict[str, str] | None = None) -> Any:
        try:
            response = await self.client.request(method, self.base + path, json=json,
                                                 params=params, headers=self.headers())
        except httpx.HTTPError as exc:
            raise PushError(f"{self.name}: {type(exc).__name__}: {exc}") from exc
        return self.decode(response)

    def decode(self, response: httpx.Response) -> Any:
        """The JSON body of a successful call; anything else is a PushError."""
        status = response.status_code
        if status == 429:
            raise PushError(f"{self.name}: rate limited", status=429,
                            retry_after=retry_after_s(response))
        if status >= 400:
            raise PushError(f"{self.name}: HTTP {status} {_excerpt(response, self.channel)}",
                            status=status)
        if not response.content:
            return None
        try:
            return msgspec.json.decode(response.content)
        except msgspec.DecodeError:
            # A proxy's or the channel's maintenance page answered 200: nothing was applied.
            raise PushError(f"{self.name}: HTTP {status} with a body that is not JSON: "
                            f"{_excerpt(response, self.channel)}", status=502) from None

    # Items per call the channel accepts; propagation never hands push_batch more.
    batch_limit = 1
    # Targets one read_batch reads in about one call (reconciliation books one call slot
    # per read_batch of this many).
    read_limit = 1
    # Whether push_batch honours PushItem.expected (and answers "stale").
    compare_and_set = False

    async def push_batch(self, items: Sequence[PushItem]) -> list[ItemResult]:
        """Set every item's count; one result per item, in order. This default makes one call
        per item: an error about the item (a 4xx) fails that item alone, an error about the
        channel (429, 5xx, unreachable) raises for the batch."""
        results = []
        for item in items:
            try:
                await self.set_available(item.sku, item.location, item.value)
            except PushError as exc:
                if channel_wide(exc):
                    raise
                results.append(ItemResult("failed", error=str(exc)[:300]))
                continue
            results.append(OK)
        return results

    async def set_available(self, sku: str, location: str, available: int) -> None:
        raise NotImplementedError

    async def get_available(self, sku: str, location: str) -> int | None:
        """The channel's count, or None when it does not track the item."""
        raise NotImplementedError

    async def read_batch(self, items: Sequence[tuple[str, str]]) -> list[int | None]:
        """Counts of several (SKU, location) targets, in order; None for an untracked item.
        This default reads one at a time."""
        return [await self.get_available(sku, location) for sku, location in items]

    async def fetch_order(self, order_id: str) -> ChannelOrder:
        raise NotImplementedError(f"{self.channel.kind} orders arrive in full by webhook")


def _excerpt(response: httpx.Response, channel: Channel | None = None) -> str:
    """The start of a body for an error message: one line, bounded, never the request. The
    channel's credentials are removed before the cut: a cut token could not be found after."""
    return " ".join(scrub(response.text, channel)[:200].split())
