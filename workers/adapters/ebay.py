"""eBay (Sell Inventory API for stock, Fulfillment API for orders), with the seller's OAuth
user token refreshed once per channel.

What this relies on, from eBay's documentation:
- POST /sell/inventory/v1/bulk_update_price_quantity takes `{"requests": [{"sku",
  "shipToLocationAvailability": {"quantity"}}]}`: the inventory item's total ship-to-home
  quantity, up to 25 inventory items per call ("BulkPriceQuantity ... requests: ... one or
  more inventory items (up to 25)",
  https://developer.ebay.com/api-docs/sell/inventory/types/slr:BulkPriceQuantity and
  https://developer.ebay.com/api-docs/sell/static/inventory/bulk-updates.html; the method
  page words it as "up to 25 offers" of one SKU,
  https://developer.ebay.com/api-docs/sell/inventory/resources/inventory_item/methods/bulkUpdatePriceQuantity,
  so a 400 for a many-SKU call is split into one call per SKU, and one SKU per call is kept
  from then on when each went through alone). Each item's outcome comes
  back in `responses[]` as `{sku, offerId?, statusCode, errors?, warnings?}` with statusCode
  200 for a full success
  (https://developer.ebay.com/api-docs/sell/inventory/types/slr:PriceQuantityResponse); the
  call itself answers 200 or 207 (multi-status).
- The quantity of a published offer is the lower of the item's shipToLocationAvailability
  and the offer's availableQuantity (bulk-updates.html above): setting the item's figure is
  what caps every listing of it, so that is the figure Stockgate owns.
- GET /sell/inventory/v1/inventory_item/{sku} returns the item with
  `availability.shipToLocationAvailability.quantity` (reads, reconciliation).
- Fulfillment API GET /sell/fulfillment/v1/order: `filter=lastmodifieddate:[<ISO 8601>..]`
  (on or after, inclusive), `limit` up to 200 (default 50), `offset`, and a `next` URI for
  the following page; GET /order/{orderId} for one order
  (https://developer.ebay.com/api-docs/sell/fulfillment/resources/order/methods/getOrders,
  OpenAPI https://developer.ebay.com/api-docs/master/sell/fulfillment/openapi/3/sell_fulfillment_v1_oas3.json).
  Order fields read: orderId, lastModifiedDate, orderFulfillmentStatus (NOT_STARTED,
  IN_PROGRESS, FULFILLED), cancelStatus.cancelState (NONE_REQUESTED, IN_PROGRESS, CANCELED:
  https://developer.ebay.com/api-docs/sell/fulfillment/types/sel:CancelStateEnum),
  paymentSummary.refunds, and per line item: lineItemId, sku, legacyItemId,
  legacyVariationId, quantity, lineItemFulfillmentStatus, refunds.
- OAuth: POST https://api.ebay.com/identity/v1/oauth2/token, form body
  grant_type=refresh_token&refresh_token=...&scope=<space-separated>, Basic auth of
  client_id:client_secret; the answer's access_token lives expires_in seconds (user tokens
  "typically expire within two hours", 7200 s)
  (https://developer.ebay.com/api-docs/static/oauth-refresh-token-request.html,
  https://developer.ebay.com/support/faq). The refresh grant is limited to 50,000 requests a
  day per app (https://developer.ebay.com/api-docs/static/oauth-rate-limits.html): one
  refresh per channel per process every ~2 h is far below it.
- Rate limits are call quotas per day per API (https://developer.ebay.com/develop/api/sell/api_call_limits);
  a call past one answers 429. Not found in the documentation read: whether eBay sends
  Retry-After, and the error body of a 429 (the simulator answers `errorId` 2001 "Too many
  requests", as eBay's REST errors are reported to read; not confirmed in eBay's pages).
  Without a Retry-After the channel is held RATE_LIMITED_DEFAULT_S.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import httpx
import msgspec

from stockgate.ebay_settings import EbayConfig
from workers.adapters.base import (
    ChannelAdapter,
    ChannelOrder,
    ItemResult,
    OrderLine,
    OrderState,
    PushError,
    PushItem,
    Shipment,
    seconds,
)

INVENTORY = "/sell/inventory/v1"
FULFILLMENT = "/sell/fulfillment/v1"
TOKEN_PATH = "/identity/v1/oauth2/token"
BATCH_LIMIT = 25  # inventory items per bulkUpdatePriceQuantity (BulkPriceQuantity)
ORDERS_PAGE_LIMIT = 200  # getOrders `limit` maximum
SKU_MAX = 50  # PriceQuantityResponse.sku "Max Length: 50"
# eBay's limits are daily quotas: a 429 without Retry-After is not over in a second.
RATE_LIMITED_DEFAULT_S = 30.0
# A token is refreshed this long before eBay says it expires (or at a tenth of its life for a
# short one), so a call never starts with a token that lapses on the way.
REFRESH_MARGIN_S = 300.0


# Field names below are eBay's own (camelCase), so the JSON decodes without renaming.
class EbayError(msgspec.Struct, frozen=True):
    errorId: int = 0
    message: str = ""


class PriceQuantityResponse(msgspec.Struct, frozen=True):
    sku: str = ""
    statusCode: int = 0
    errors: list[EbayError] = []


class BulkPriceQuantityResponse(msgspec.Struct, frozen=True):
    responses: list[PriceQuantityResponse] = []


class TokenReply(msgspec.Struct, frozen=True):
    access_token: str
    expires_in: float = 7200.0
    token_type: str = "User Access Token"


class Refund(msgspec.Struct, frozen=True):
    refundId: str = ""


class LineItem(msgspec.Struct, frozen=True):
    lineItemId: str = ""
    sku: str = ""
    legacyItemId: str = ""
    legacyVariationId: str = ""
    quantity: int = 0
    lineItemFulfillmentStatus: str = "NOT_STARTED"
    refunds: list[Refund] = []


class CancelStatus(msgspec.Struct, frozen=True):
    cancelState: str = "NONE_REQUESTED"


class PaymentSummary(msgspec.Struct, frozen=True):
    refunds: list[Refund] = []


class EbayOrder(msgspec.Struct, frozen=True):
    orderId: str
    lastModifiedDate: str = ""
    creationDate: str = ""
    orderFulfillmentStatus: str = "NOT_STARTED"
    orderPaymentStatus: str = ""
    cancelStatus: CancelStatus = CancelStatus()
    paymentSummary: PaymentSummary = PaymentSummary()
    lineItems: list[LineItem] = []


class OrderPage(msgspec.Struct, frozen=True):
    orders: list[EbayOrder] = []
    total: int = 0
    offset: int = 0
    limit: int = 0
    next: str = ""


_BULK = msgspec.json.Decoder(BulkPriceQuantityResponse)
_TOKEN = msgspec.json.Decoder(TokenReply)


class _Token(msgspec.Struct):
    value: str = ""
    expires_at: float = 0.0  # time.monotonic()


class TokenCache:
    """One access token per channel (per process), refreshed under a lock: concurrent calls
    that find it expiring wait for the one refresh instead of each making their own."""

    def __init__(self) -> None:
        self._tokens: dict[str, _Token] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.refreshes = 0  # tests count them

    def forget(self) -> None:
        self._tokens.clear()
        self._locks.clear()

    async def token(self, key: str, client: httpx.AsyncClient, url: str, config: EbayConfig,
                    *, rejected: str | None = None) -> str:
        """A live token for `key`. `rejected`: a token eBay just answered 401 to; it is
        replaced unless another call replaced it already."""
        held = self._tokens.get(key)
        if held and held.value != rejected and time.monotonic() < held.expires_at:
            return held.value
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            held = self._tokens.get(key)
            if held and held.value != rejected and time.monotonic() < held.expires_at:
                return held.value
            reply = await self._refresh(client, url, config)
            life = max(reply.expires_in, 1.0)
            self._tokens[key] = _Token(reply.access_token,
                                       time.monotonic() + life - min(REFRESH_MARGIN_S, life / 10))
            self.refreshes += 1
            return reply.access_token

    @staticmethod
    async def _refresh(client: httpx.AsyncClient, url: str, config: EbayConfig) -> TokenReply:
        basic = base64.b64encode(f"{config.client_id}:{config.client_secret}".encode()).decode()
        try:
            response = await client.post(
                url, headers={"Authorization": f"Basic {basic}",
                              "Content-Type": "application/x-www-form-urlencoded"},
                data={"grant_type": "refresh_token", "refresh_token": config.refresh_token,
                      "scope": " ".join(config.scopes)})
        except httpx.HTTPError as exc:
            raise PushError(f"ebay token refresh: {type(exc).__name__}") from None
        status = response.status_code
        if status == 429:
            raise PushError("ebay token refresh: rate limited", status=429,
                            retry_after=_retry_after(response))
        if status >= 400:
            # Never the body verbatim: it may echo what was sent. eBay's OAuth errors carry
            # an `error` code (invalid_grant: the refresh token expired or was revoked, and
            # the seller must consent again).
            code = ""
            try:
                found = msgspec.json.decode(response.content)
                code = str(found.get("error", ""))[:40] if isinstance(found, dict) else ""
            except msgspec.DecodeError:
                pass
            raise PushError(f"ebay token refresh refused: HTTP {status} {code}".rstrip(),
                            status=502 if status >= 500 else 401)
        try:
            return _TOKEN.decode(response.content)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise PushError("ebay token refresh answered without an access token",
                            status=502) from None


# One cache for the process: every adapter of a channel (the propagator's, the poller's, a
# reconcile pass's) shares its token.
TOKENS = TokenCache()


def _retry_after(response: httpx.Response) -> float:
    found = seconds(response.headers.get("Retry-After", ""))
    return max(found if found is not None else RATE_LIMITED_DEFAULT_S, 0.05)


def iso_ms(ms: int) -> str:
    """eBay's timestamp format: 2016-05-15T08:25:43.511Z (UTC)."""
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000))
    return f"{whole}.{ms % 1000:03d}Z"


class EbayAdapter(ChannelAdapter):
    batch_limit = BATCH_LIMIT
    read_limit = 1

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        config = self.channel.ebay
        if config is None:
            raise ValueError(f"channel {self.name}: kind ebay needs an [ebay] table")
        self.config: EbayConfig = config
        # The push and read map: inventory_skus reversed, never variant_skus (the base class's
        # default), which names listing and variation ids for order lines: reversed, a
        # listing id would become the eBay SKU a push sets (SKU A pushed as "110").
        self._item_ids = {sku: ebay_sku for ebay_sku, sku in config.inventory_skus.items()}
        self.token_url = config.token_url or self.base + TOKEN_PATH
        # Orders the poller read from getOrders, handed to fetch_order without a second call.
        self.prefetched: dict[str, ChannelOrder] = {}

    # ---- calls ---------------------------------------------------------------------------

    async def _token(self, rejected: str | None = None) -> str:
        return await TOKENS.token(f"{self.name}|{self.token_url}|{self.config.client_id}",
                                  self.client, self.token_url, self.config, rejected=rejected)

    async def api(self, method: str, path: str, *, json: Any = None,
                  params: dict[str, str] | None = None) -> httpx.Response:
        """One call with the channel's token; a 401 (the token expired or was revoked early)
        refreshes it once and sends the call once more."""
        token = await self._token()
        for attempt in range(2):
            try:
                response = await self.client.request(
                    method, self.base + path, json=json, params=params,
                    headers={"Authorization": f"Bearer {token}",
                             "Content-Type": "application/json"})
            except httpx.HTTPError as exc:
                raise PushError(f"{self.name}: {type(exc).__name__}: {exc}") from exc
            if response.status_code != 401 or attempt:
                break
            token = await self._token(rejected=token)
        if response.status_code == 429:
            raise PushError(f"{self.name}: rate limited (eBay {_error_ids(response)})",
                            status=429, retry_after=_retry_after(response))
        return response

    # ---- stock ---------------------------------------------------------------------------

    async def push_batch(self, items: Sequence[PushItem]) -> list[ItemResult]:
        results: list[ItemResult | None] = [None] * len(items)
        values: dict[str, int] = {}  # eBay SKU -> value; a later item for the same SKU wins
        members: dict[str, list[int]] = {}
        for n, item in enumerate(items):
            sku = self.item_id(item.sku)
            if not sku or len(sku) > SKU_MAX:
                results[n] = ItemResult("failed", error=f"eBay SKUs are 1 to {SKU_MAX} "
                                        "characters; not sent", retryable=False)
                continue
            values[sku] = item.value
            members.setdefault(sku, []).append(n)
        skus = list(values)
        for start in range(0, len(skus), self.batch_limit):
            chunk = skus[start:start + self.batch_limit]
            done = await self._bulk(chunk, values)
            for sku in chunk:
                for n in members[sku]:
                    results[n] = done[sku]
        return [r if r is not None else ItemResult("failed", error="not sent") for r in results]

    async def _bulk(self, skus: list[str], values: dict[str, int]) -> dict[str, ItemResult]:
        body = {"requests": [{"sku": sku, "shipToLocationAvailability": {"quantity": values[sku]}}
                             for sku in skus]}
        response = await self.api("POST", INVENTORY + "/bulk_update_price_quantity", json=body)
        status = response.status_code
        if status == 400 and len(skus) > 1:
            # A call refused as a whole (the method page allows one SKU per call): each SKU
            # on its own, so the call's limit never fails items that are fine.
            done: dict[str, ItemResult] = {}
            for sku in skus:
                done |= await self._bulk([sku], values)
            if all(r.status == "ok" for r in done.values()):
                # Every SKU was fine alone: this account takes one SKU per call. Remember it
                # (as WooCommerce's adapter remembers a lowered batch limit).
                self.batch_limit = 1
            return done
        if status >= 400:
            error = PushError(f"{self.name}: HTTP {status} (eBay {_error_ids(response)})",
                              status=status)
            if status >= 500 or status in (401, 403, 408, 425):
                # About the call, not the items: a token eBay refused even fresh (consent
                # revoked, a scope missing) fails the call, retried with backoff and parked
                # with its alert like any failed call, never one item at a time.
                raise error
            return {sku: ItemResult("failed", error=str(error)[:300], retryable=False)
                    for sku in skus}
        try:
            reply = _BULK.decode(response.content)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise PushError(f"{self.name}: bulk_update_price_quantity answered HTTP {status} "
                            "without a responses list", status=502) from None
        by_sku = {r.sku: r for r in reply.responses}
        return {sku: _result(by_sku.get(sku)) for sku in skus}

    async def get_available(self, sku: str, location: str) -> int | None:
        ebay_sku = self.item_id(sku)
        if not ebay_sku or len(ebay_sku) > SKU_MAX or ebay_sku in (".", ".."):
            return None
        response = await self.api("GET", f"{INVENTORY}/inventory_item/{quote(ebay_sku, safe='')}")
        if response.status_code == 404:
            return None
        found = self.decode(response)
        availability = found.get("availability") if isinstance(found, dict) else None
        ship = availability.get("shipToLocationAvailability") if isinstance(
            availability, dict) else None
        quantity = ship.get("quantity") if isinstance(ship, dict) else None
        return quantity if isinstance(quantity, int) and not isinstance(quantity, bool) else 0

    # ---- orders --------------------------------------------------------------------------

    async def orders_modified_since(self, since_ms: int, offset: int = 0) -> OrderPage:
        """One page of orders modified on or after `since_ms`."""
        response = await self.api("GET", FULFILLMENT + "/order", params={
            "filter": f"lastmodifieddate:[{iso_ms(since_ms)}..]",
            "limit": str(ORDERS_PAGE_LIMIT), "offset": str(offset)})
        found = self.decode(response)
        try:
            return msgspec.convert(found, OrderPage)
        except msgspec.ValidationError as exc:
            raise PushError(f"{self.name}: getOrders answered an unreadable page: {exc}",
                            status=502) from None

    async def fetch_order(self, order_id: str) -> ChannelOrder:
        if (found := self.prefetched.pop(order_id, None)) is not None:
            return found
        response = await self.api("GET", f"{FULFILLMENT}/order/{quote(order_id, safe='')}")
        try:
            return self.channel_order(msgspec.convert(self.decode(response), EbayOrder))
        except msgspec.ValidationError as exc:
            raise PushError(f"{self.name}: getOrder answered an unreadable order: {exc}",
                            status=502) from None

    def channel_order(self, order: EbayOrder, stage: str = "") -> ChannelOrder:
        """The order's state as the lifecycle rules know them (workers/queue.py). `stage`
        "shipping" leaves refunds out: a refunded order's shipments are applied first."""
        lines = [OrderLine(self.sku_of(li), li.quantity) for li in order.lineItems]
        restock = self.channel.restock_refunds
        # With restock_refunds a refund is not the order's state (the lifecycle's refunded
        # state restocks from "any", unshipped units first, so a refund before shipment put
        # units back on sale that then shipped): the order keeps its fulfilment state and a
        # full refund comes back as a return, restocked from shipped units only.
        state = order_state(order, refunds=stage != "shipping" and not restock)
        returns: list[Shipment] = []
        if (restock and stage != "shipping" and state != "cancelled"
                and order.orderPaymentStatus == "FULLY_REFUNDED"):
            # Only a full refund says the goods came back; an unshipped order is refunded by
            # eBay's cancel (cancelState CANCELED), which releases its open units. Its id
            # keys the restock ("<ref>:return-refunded"): once however often it is read.
            returns = [Shipment("refunded", lines)]
        shipments = []
        if state == "partially_shipped":
            # Each line item goes out in exactly one fulfillment (LineItem.lineItemId doc):
            # a shipped line item is a shipment of its own, keyed by its id, so it is applied
            # once however often the order is read again.
            shipments = [Shipment(li.lineItemId, [OrderLine(self.sku_of(li), li.quantity)])
                         for li in order.lineItems
                         if li.lineItemFulfillmentStatus == "FULFILLED" and li.lineItemId]
        status = "/".join(s for s in (order.orderFulfillmentStatus,
                                      order.cancelStatus.cancelState,
                                      order.orderPaymentStatus) if s)
        return ChannelOrder(order.orderId, state, lines, status=status, shipments=shipments,
                            returns=returns)

    def sku_of(self, li: LineItem) -> str:
        """The line's SKU (through inventory_skus, else variant_skus, where eBay's differs);
        else the one `variant_skus` gives its variation or listing id."""
        if li.sku:
            # variant_skus still maps a line's eBay SKU, as configs written before
            # inventory_skus existed expect; inventory_skus, the push map, wins.
            found = self.config.inventory_skus.get(li.sku)
            return found or self.channel.variant_skus.get(li.sku, li.sku)
        for vid in (li.legacyVariationId, li.legacyItemId):
            if vid and (found := self.channel.variant_skus.get(vid)):
                return found
        return ""


def order_state(order: EbayOrder, *, refunds: bool = True) -> OrderState:
    """eBay's statuses -> the lifecycle state. A cancelled order is cancelled whatever else it
    says (a cancellation refunds the buyer too); a refund says money went back, not which
    units, so it is a review unless the channel restocks refunds (workers/queue.py); a
    requested cancel (cancelState IN_PROGRESS) changes nothing until eBay says CANCELED."""
    if order.cancelStatus.cancelState == "CANCELED":
        return "cancelled"
    if refunds and (order.paymentSummary.refunds or any(li.refunds for li in order.lineItems)
                    or order.orderPaymentStatus in ("FULLY_REFUNDED", "PARTIALLY_REFUNDED")):
        return "refunded"
    if order.orderFulfillmentStatus == "FULFILLED":
        return "shipped"
    if order.orderFulfillmentStatus == "IN_PROGRESS":
        return "partially_shipped"
    return "open"


def _result(entry: PriceQuantityResponse | None) -> ItemResult:
    if entry is None:
        return ItemResult("failed", error="no result for this SKU in the reply")
    if entry.statusCode == 200:
        return ItemResult("ok")
    detail = "; ".join(f"{e.errorId} {e.message}"[:120] for e in entry.errors[:3])
    return ItemResult("failed", error=f"eBay {entry.statusCode}: {detail}"[:300],
                      retryable=entry.statusCode >= 500 or entry.statusCode == 429)


def _error_ids(response: httpx.Response) -> str:
    """eBay's error ids from an error body (never the body itself)."""
    try:
        found = msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        return f"HTTP {response.status_code}"
    errors = found.get("errors") if isinstance(found, dict) else None
    ids = [str(e.get("errorId")) for e in errors or [] if isinstance(e, dict)][:3]
    return "errorId " + ",".join(ids) if ids else f"HTTP {response.status_code}"
