"""Amazon: the Selling Partner API's Listings Items API sets a merchant-fulfilled offer's
quantity, one SKU per call; the Orders API gives an order a notification did not carry in full.

What the documentation says, and what this adapter does with it:
- patchListingsItem, PATCH /listings/2021-08-01/items/{sellerId}/{sku}?marketplaceIds=...,
  body {"productType", "patches": [{"op", "path", "value"}]}; the `merge` op on
  /attributes/fulfillment_availability with [{"fulfillment_channel_code": "DEFAULT",
  "quantity": n}] updates the quantity and leaves restock_date and lead_time_to_ship_max_days
  as they are (https://developer-docs.amazon.com/sp-api/docs/merge-a-listing; `merge` is in
  the PatchOperation enum of models/listings-items-api-model/listingsItems_2021-08-01.json,
  github.com/amzn/selling-partner-api-models). `replace` would drop the handling time.
  DEFAULT is the merchant-fulfilled channel; FBA quantities are Amazon's and never sent.
- The answer is 200 with {"sku", "status": "ACCEPTED" | "INVALID", "submissionId", "issues":
  [{"code", "message", "severity", "attributeNames", ...}]}; INVALID was not accepted (the
  item fails, with the issues, and is not retried). Errors are {"errors": [{"code",
  "message", "details"}]}: 400 invalid parameters, 403 "Access Denied, Unauthorized, Expired
  Token, or Invalid Signature", 413, 415, 429, 500, 503 (same model).
- Rate: patchListingsItem 5 requests/s per selling-partner account, burst 5 (the model's
  usage plan, and https://developer-docs.amazon.com/sp-api/docs/listings-items-api-rate-limits;
  500/s per application). `x-amzn-RateLimit-Limit` on a 200 gives the rate applied to this
  account (https://developer-docs.amazon.com/sp-api/docs/usage-plans-and-rate-limits): the
  adapter paces calls with a token bucket at that rate (burst 5) and, on a 429, holds the
  channel for one token's time (the model's 429 declares only x-amzn-RequestId, no
  Retry-After; a Retry-After, if one is sent, wins).
- Batch: there is no batch form of patchListingsItem. The batch path is the Feeds API's
  JSON_LISTINGS_FEED (many SKUs per feed, processed asynchronously);
  it is NOT implemented here: per-SKU PATCH within the rate limit gives 5 SKUs/s per seller,
  each applied within seconds, which suits hot SKUs in a flash sale. A catalogue of tens of
  thousands of SKUs needs the feed for its full syncs (docs/marketplace-amazon.md).
- Reads: getListingsItem ...?marketplaceIds=&includedData=fulfillmentAvailability answers
  "fulfillmentAvailability": [{"fulfillmentChannelCode", "quantity"}] (rate 5/s, burst 5).
- Orders: getOrder GET /orders/v0/orders/{orderId} ({"payload": {"AmazonOrderId",
  "OrderStatus", "FulfillmentChannel": "MFN" | "AFN", ...}}) and getOrderItems
  GET /orders/v0/orders/{orderId}/orderItems ({"payload": {"OrderItems": [{"SellerSKU",
  "OrderItemId", "QuantityOrdered", "QuantityShipped", ...}], "NextToken"}}), 0.5 requests/s
  and burst 30 each (models/orders-api-model/ordersV0.json).
- Auth: Login with Amazon. POST https://api.amazon.com/auth/o2/token, form-encoded
  grant_type=refresh_token, refresh_token, client_id, client_secret; the answer's
  access_token (a bearer token valid for expires_in seconds, 3600) goes in the
  x-amz-access-token header (https://developer-docs.amazon.com/sp-api/docs/connecting-to-the-selling-partner-api).
  One cached token per channel, refreshed under a lock REFRESH_MARGIN_S before it expires; a
  403 (or 401) saying the token is expired or invalid refreshes once and retries once. A
  failed refresh is re-raised to the calls waiting on the lock for REFRESH_FAILURE_HOLD_S,
  not repeated by each of them.
  Tokens and secrets are never logged and never put in an error.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import httpx
import msgspec

from stockgate.amazon import (
    SHIPPED_UNITS_MAX,
    STATUS_STATES,
    another_marketplace,
    status_id,
    unit_shipment_id,
)
from workers.adapters.base import (
    OK,
    RETRY_AFTER_MAX_S,
    ChannelAdapter,
    ChannelOrder,
    ItemResult,
    OrderLine,
    OrderState,
    PushError,
    PushItem,
    Shipment,
    iso_to_ms,
    seconds,
)

LISTINGS = "/listings/2021-08-01/items"
ORDERS = "/orders/v0/orders"
FULFILLMENT_CHANNEL = "DEFAULT"  # merchant-fulfilled
# patchListingsItem's default usage plan: 5 requests/s, burst 5.
RATE_PER_S = 5.0
BURST = 5
# Calls are paced a little under the stated rate: Amazon's bucket counts arrivals, and a
# call's time on the wire varies, so two calls paced exactly 1/rate apart can arrive closer.
PACE_SHARE = 0.9
# A token this close to its expiry is refreshed before use.
REFRESH_MARGIN_S = 60.0
# A refresh that failed is answered from memory this long: the pushes that waited on the
# lock behind it would otherwise each send the same refused refresh token to LWA again
# (eight concurrent pushes, eight refused calls), and a refused token stays refused.
REFRESH_FAILURE_HOLD_S = 5.0
# The adapter waits this long at most for a call slot of its own bucket; a longer wait is
# handed back as back-pressure, so a lane never sleeps long.
PACE_WAIT_MAX_S = 2.0
QUANTITY_MAX = 2_147_483_647
ORDER_ITEM_PAGES_MAX = 20
_ORDER_ID = re.compile(r"[0-9]{3}-[0-9]{7}-[0-9]{7}")
# SKUs a URL path cannot carry as a segment: dot segments are removed when a URL is
# normalised (RFC 3986 5.2.4), escaped or not.
_DOT_SEGMENTS = frozenset({".", ".."})
_TOKEN_ERRORS = ("expired", "invalid", "revoked", "malformed", "unauthorized")


class LwaToken(msgspec.Struct, frozen=True):
    access_token: str
    expires_in: int = 3600
    token_type: str = "bearer"


class Issue(msgspec.Struct, frozen=True, rename="camel"):
    code: str = ""
    message: str = ""
    severity: str = ""
    attribute_names: list[str] = []


class Submission(msgspec.Struct, frozen=True, rename="camel"):
    status: str = ""
    sku: str = ""
    submission_id: str = ""
    issues: list[Issue] = []


class ErrorEntry(msgspec.Struct, frozen=True):
    code: str = ""
    message: str = ""
    details: str = ""


class ErrorList(msgspec.Struct, frozen=True):
    errors: list[ErrorEntry] = []


_TOKEN = msgspec.json.Decoder(LwaToken)
_SUBMISSION = msgspec.json.Decoder(Submission)
_ERRORS = msgspec.json.Decoder(ErrorList)


def _errors(response: httpx.Response) -> list[ErrorEntry]:
    try:
        return _ERRORS.decode(response.content).errors
    except (msgspec.DecodeError, msgspec.ValidationError):
        return []


def _describe(response: httpx.Response) -> str:
    found = _errors(response)
    if found:
        text = "; ".join(f"{e.code}: {e.message} {e.details}".strip() for e in found[:3])
    else:
        text = response.text[:200]
    return " ".join(text.split())[:300]


def token_refused(response: httpx.Response) -> bool:
    """A 401/403 about the access token itself (expired, revoked, malformed), which a fresh
    token may cure; a 403 for a missing role or a seller who revoked the app does not."""
    if response.status_code == 401:
        return True
    if response.status_code != 403:
        return False
    text = " ".join(f"{e.code} {e.message} {e.details}" for e in _errors(response)).lower()
    return "token" in text and any(word in text for word in _TOKEN_ERRORS)


class AmazonAdapter(ChannelAdapter):
    batch_limit = BURST
    read_limit = 1

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.channel.amazon is None:
            raise ValueError(f"channel {self.name}: kind amazon needs an [amazon] table "
                             "(seller_id, marketplace_id and the LWA credentials)")
        self.config = self.channel.amazon
        self._token = ""
        self._token_expires = 0.0  # monotonic
        self._token_lock = asyncio.Lock()
        # The last refresh's failure and until when (monotonic) it is re-raised.
        self._refresh_failure: PushError | None = None
        self._refresh_failure_until = 0.0
        self.refreshes = 0  # tokens fetched (tests and logs; never the token)
        self.rate = RATE_PER_S
        self._tokens = float(BURST)
        self._tokens_at = time.monotonic()

    # ---- Login with Amazon ---------------------------------------------------------------

    async def access_token(self) -> str:
        if self._token and time.monotonic() < self._token_expires - REFRESH_MARGIN_S:
            return self._token
        async with self._token_lock:
            # Whoever waited for the lock finds the token the first one fetched.
            if self._token and time.monotonic() < self._token_expires - REFRESH_MARGIN_S:
                return self._token
            failed = self._refresh_failure
            if failed is not None and time.monotonic() < self._refresh_failure_until:
                # The refresh just failed for whoever held the lock: the same answer, without
                # asking LWA again. A new exception per caller (one instance raised by many
                # tasks would share and grow one traceback).
                raise PushError(str(failed), retry_after=failed.retry_after,
                                status=failed.status)
            try:
                await self._refresh()
            except PushError as exc:
                self._refresh_failure = exc
                self._refresh_failure_until = time.monotonic() + REFRESH_FAILURE_HOLD_S
                raise
            self._refresh_failure = None
            return self._token

    async def _refresh(self) -> None:
        form = {"grant_type": "refresh_token", "refresh_token": self.config.lwa_refresh_token,
                "client_id": self.config.lwa_client_id,
                "client_secret": self.config.lwa_client_secret}
        try:
            response = await self.client.post(self.config.lwa_token_url, data=form,
                                              headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise PushError(f"{self.name}: LWA token request failed: {type(exc).__name__}"
                            ) from None
        if response.status_code == 429 or response.status_code >= 500:
            raise PushError(f"{self.name}: LWA token endpoint answered HTTP "
                            f"{response.status_code}", status=response.status_code,
                            retry_after=self._retry_after(response)
                            if response.status_code == 429 else None)
        if response.status_code != 200:
            # LWA's error body is {"error", "error_description"}: no secret in it, but only
            # the error code is kept (the description may quote a parameter name).
            try:
                code = msgspec.json.decode(response.content).get("error", "")
            except (msgspec.DecodeError, AttributeError):
                code = ""
            raise PushError(f"{self.name}: LWA refused the refresh token: HTTP "
                            f"{response.status_code} {str(code)[:40]}", status=401)
        try:
            token = _TOKEN.decode(response.content)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise PushError(f"{self.name}: LWA answered without an access token",
                            status=502) from None
        self._token = token.access_token
        self._token_expires = time.monotonic() + max(token.expires_in, 0)
        self.refreshes += 1

    def _forget(self, token: str) -> None:
        """Drop `token` if it is still the cached one (a concurrent call may have refreshed
        it already: then its fresh token stays, one refresh for all)."""
        if self._token == token:
            self._token, self._token_expires = "", 0.0

    # ---- pacing --------------------------------------------------------------------------

    def _take(self) -> float:
        """0 if a call may go now (a token taken), else seconds until one is free."""
        now = time.monotonic()
        rate = self.rate * PACE_SHARE
        self._tokens = min(float(BURST), self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / rate

    async def _pace(self) -> None:
        while wait := self._take():
            if wait > PACE_WAIT_MAX_S:
                raise PushError(f"{self.name}: pacing to {self.rate:g} calls/s",
                                retry_after=wait, status=429)
            await asyncio.sleep(wait)

    def _note_rate(self, response: httpx.Response) -> None:
        found = seconds(response.headers.get("x-amzn-RateLimit-Limit", ""))
        if found:
            self.rate = found

    def _retry_after(self, response: httpx.Response) -> float:
        given = seconds(response.headers.get("Retry-After", ""))
        if given is None:
            # SP-API documents no Retry-After: one token of the rate the header states.
            self._note_rate(response)
            given = 1.0 / self.rate
        return min(max(given, 0.05), RETRY_AFTER_MAX_S)

    # ---- calls ---------------------------------------------------------------------------

    async def send(self, method: str, path: str, *, json: Any = None,
                   params: dict[str, str] | None = None) -> httpx.Response:
        """One SP-API call, paced, with the cached token; a refused token is refreshed once
        and the call sent once more. 429 and 5xx come back as PushError."""
        for attempt in (1, 2):
            token = await self.access_token()
            await self._pace()
            try:
                response = await self.client.request(
                    method, self.base + path, json=json, params=params,
                    headers={"x-amz-access-token": token, "Accept": "application/json"})
            except httpx.HTTPError as exc:
                raise PushError(f"{self.name}: {type(exc).__name__}: {exc}") from None
            if token_refused(response) and attempt == 1:
                self._forget(token)
                continue
            break
        status = response.status_code
        if status == 429:
            self._tokens = 0.0
            raise PushError(f"{self.name}: rate limited ({_describe(response)})", status=429,
                            retry_after=self._retry_after(response))
        if status >= 500:
            raise PushError(f"{self.name}: HTTP {status} {_describe(response)}", status=status)
        if status in (401, 403):
            # Not cured by a fresh token: a missing role, an app the seller de-authorised.
            raise PushError(f"{self.name}: HTTP {status} {_describe(response)}", status=status)
        if status < 300:
            self._note_rate(response)
        return response

    def _item_path(self, sku: str) -> str:
        # Every reserved character escaped, "/" included: a SKU is one path segment
        # (https://developer-docs.amazon.com/sp-api/docs/url-encoding). Callers refuse the
        # dot segments first (_DOT_SEGMENTS): this is the last guard.
        if sku in _DOT_SEGMENTS:
            raise PushError(f"{self.name}: SKU {sku!r} cannot be a path segment", status=400)
        return f"{LISTINGS}/{quote(self.config.seller_id, safe='')}/{quote(sku, safe='')}"

    # ---- writes --------------------------------------------------------------------------

    async def push_batch(self, items: Sequence[PushItem]) -> list[ItemResult]:
        results: list[ItemResult] = []
        for item in items:
            results.append(await self._push_one(item))
        return results

    async def _push_one(self, item: PushItem) -> ItemResult:
        if not item.sku:
            return ItemResult("failed", error="an empty SKU names no Amazon listing",
                              retryable=False)
        if item.sku in _DOT_SEGMENTS:
            # quote() leaves dots as they are and httpx (like any URL normaliser) removes a
            # "." or ".." segment: the PATCH would go to another path. %2E is no way out, a
            # normaliser decodes it too (RFC 3986 6.2.2.2). The item fails alone, for good.
            return ItemResult("failed", error=f"SKU {item.sku!r} cannot be sent as a path "
                                              "segment of the Listings Items API",
                              retryable=False)
        if not 0 <= item.value <= QUANTITY_MAX:
            return ItemResult("failed", error=f"{item.value} is not a quantity Amazon takes",
                              retryable=False)
        body = {"productType": self.config.product_type, "patches": [{
            "op": "merge", "path": "/attributes/fulfillment_availability",
            "value": [{"fulfillment_channel_code": FULFILLMENT_CHANNEL,
                       "quantity": item.value}]}]}
        response = await self.send("PATCH", self._item_path(item.sku), json=body,
                                   params={"marketplaceIds": self.config.marketplace_id})
        if response.status_code >= 400:
            # 400/404/413/415: about this request, not the channel.
            return ItemResult("failed", error=f"HTTP {response.status_code} "
                                              f"{_describe(response)}", retryable=False)
        try:
            submission = _SUBMISSION.decode(response.content)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise PushError(f"{self.name}: HTTP {response.status_code} with a body that is "
                            "not a listings submission", status=502) from None
        if submission.status == "ACCEPTED":
            return OK
        issues = "; ".join(f"{i.code} {i.message}" for i in submission.issues
                           if i.severity == "ERROR") or "no issue given"
        return ItemResult("failed", error=f"Amazon {submission.status or 'refused'}: "
                                          f"{issues}"[:300], retryable=False)

    async def set_available(self, sku: str, location: str, available: int) -> None:
        [result] = await self.push_batch([PushItem(sku, location, available)])
        if result.status != "ok":
            raise PushError(f"{self.name}: {result.error}", status=422)

    # ---- reads ---------------------------------------------------------------------------

    async def get_available(self, sku: str, location: str) -> int | None:
        if not sku or sku in _DOT_SEGMENTS:
            return None  # no listing a URL can name (see _push_one)
        response = await self.send("GET", self._item_path(sku), params={
            "marketplaceIds": self.config.marketplace_id,
            "includedData": "fulfillmentAvailability"})
        if response.status_code == 404:
            return None
        body = self.decode(response) or {}
        for entry in body.get("fulfillmentAvailability") or []:
            if isinstance(entry, dict) and entry.get("fulfillmentChannelCode") == (
                    FULFILLMENT_CHANNEL):
                quantity = entry.get("quantity")
                return quantity if isinstance(quantity, int) else None
        return None

    # ---- orders --------------------------------------------------------------------------

    def _order_path(self, order_id: str) -> str:
        if not _ORDER_ID.fullmatch(order_id):
            raise PushError(f"{self.name}: {order_id[:40]!r} is not an Amazon order id",
                            status=400)
        return f"{ORDERS}/{order_id}"

    async def fetch_order(self, order_id: str) -> ChannelOrder:
        path = self._order_path(order_id)
        order = (self.decode(await self.send("GET", path)) or {}).get("payload") or {}
        status = str(order.get("OrderStatus", ""))
        items: list[dict[str, Any]] = []
        params: dict[str, str] | None = None
        for _ in range(ORDER_ITEM_PAGES_MAX):
            page = (self.decode(await self.send("GET", f"{path}/orderItems", params=params))
                    or {}).get("payload") or {}
            items += [i for i in page.get("OrderItems") or [] if isinstance(i, dict)]
            if not page.get("NextToken"):
                break
            params = {"NextToken": str(page["NextToken"])}
        mapped = STATUS_STATES.get(status, "open")
        state: OrderState
        if order.get("FulfillmentChannel") == "AFN" or mapped == "ignored":
            state = "incomplete"  # Amazon's units, or no units: nothing Stockgate sold
        elif another_marketplace(self.config.marketplace_id, str(order.get("MarketplaceId")
                                                                 or "")):
            state = "incomplete"  # another marketplace's sale, not this channel's units
        else:
            state = mapped
        lines = [OrderLine(sku=str(i.get("SellerSKU") or ""), qty=_int(i.get("QuantityOrdered")))
                 for i in items]
        return ChannelOrder(order_id=order_id, state=state,
                            lines=[ln for ln in lines if ln.qty > 0],
                            status_id=status_id(status), status=status,
                            # A cancelled order may have shipped part of itself first:
                            # those units are shipped before the cancel releases the rest.
                            shipments=_unit_shipments(items)
                            if state in ("partially_shipped", "cancelled") else [],
                            # getOrder's PurchaseDate (ISO 8601): the fetch path's stale rule.
                            placed_at_ms=iso_to_ms(order.get("PurchaseDate")))


def _unit_shipments(items: list[dict[str, Any]]) -> list[Shipment]:
    """One shipment per shipped unit, named as the gateway names them (stockgate/amazon.py):
    the order says how many units of each item shipped, not in which shipment."""
    shipments: list[Shipment] = []
    for item in items:
        sku, item_id = str(item.get("SellerSKU") or ""), str(item.get("OrderItemId") or "")
        if not sku or not item_id:
            continue
        shipped = min(_int(item.get("QuantityShipped")), _int(item.get("QuantityOrdered")))
        for unit in range(1, shipped + 1):
            if len(shipments) >= SHIPPED_UNITS_MAX:
                return shipments
            shipments.append(Shipment(unit_shipment_id(item_id, unit), [OrderLine(sku, 1)]))
    return shipments


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
