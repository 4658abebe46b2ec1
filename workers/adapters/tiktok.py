"""TikTok Shop Partner API (202309 versions): a SKU's quantity per warehouse, set with Update
Inventory, read with Inventory Search, and orders read with Get Order Detail for the webhooks
that name an order only by id (gateway/channels/tiktok.py).

Ids: `variant_skus` maps "<product_id>/<sku_id>" to a Stockgate SKU (TikTok's ids are decimal
strings; anything else is never sent), `location_map` a warehouse_id to a Stockgate location.
One call per product (the update's path names the product): a batch's SKUs of one product go
in one call. A SKU without a mapping, or a location without a warehouse, fails alone, unsent.

TikTok facts this relies on, each from the documentation page named (read through the SDKs
that quote it: EcomPHP/tiktokshop-php src/Client.php, src/Auth.php, src/Resources/*.php, and
rymndcs/tiktok_shop_rb_api test/fixtures/*.json, which record the pages' samples verbatim):
- https://partner.tiktokshop.com/docv2/page/sign-your-api-request: every call carries
  `app_key`, `timestamp` (Unix seconds, within 5 minutes of TikTok's clock) and `sign` in the
  query, the access token in the `x-tts-access-token` header; sign = hex HMAC-SHA256 keyed
  with the app secret over secret + path + the query parameters but `sign` and
  `access_token` sorted by name as name+value + the body (unless multipart) + secret.
  Official vector: /authorization/202309/shops, app_key 29a39d, timestamp 1623812664, secret
  e59af819cc -> b596b73e...2dc8 (tests/test_channel_tiktok.py checks it).
- https://partner.tiktokshop.com/docv2/page/update-inventory-202309:
  POST /product/202309/products/{product_id}/inventory/update with
  {"skus": [{"id", "inventory": [{"warehouse_id", "quantity"}]}]}; shop_cipher in the query.
  The answer is {"code": 0, "message", "request_id", "data": {"errors": [{"code", "message",
  "detail": {"sku_id", "extra_errors": [{"warehouse_id", "code", "message"}]}}]}}: the SKUs
  named in `errors` were refused, the others applied. Error 12019028 "Multiple warehouses
  detected. Include all warehouse IDs": a SKU stocked in several warehouses needs them all in
  one update, so each SKU's warehouses in a batch go in one entry.
- https://partner.tiktokshop.com/docv2/page/inventory-search-202309: POST
  /product/202309/inventory/search answers data.inventory[].skus[].warehouse_inventory[] of
  {warehouse_id, available_quantity, committed_quantity}. Its request field `sku_ids` and
  its limit (error 12019015 "The number of SKU exceed the limit") were not found in the
  quoted pages: READ_LIMIT is kept low for that reason.
- https://partner.tiktokshop.com/docv2/page/get-order-detail-202507 (the 202309 version has
  the same fields used here): GET /order/202309/orders?ids=<comma-separated> answers
  data.orders[] of {id, status, update_time, line_items[] of {id, sku_id, product_id,
  seller_sku, display_status, package_id}}. A line item has no quantity: each is one unit.
- Partner Center, Search Returns (202309), its field descriptions quoted in a generated
  interface of the page (SearchReturnsRequestInterface / ...ResponseInterface): POST
  /return_refund/202309/returns/search with {"order_ids": [...]} (page_size up to 50 in the
  query) answers data.return_orders[] of {order_id, return_id, return_type (REFUND,
  RETURN_AND_REFUND, REPLACEMENT), return_status, return_line_items[] of
  {order_line_item_id, sku_id, seller_sku}}.
- https://partner.tiktokshop.com/docv2/page/authorization-overview-202407: GET
  https://auth.tiktok-shops.com/api/v2/token/refresh?app_key&app_secret&refresh_token
  &grant_type=refresh_token answers data {access_token, access_token_expire_in (a Unix time),
  refresh_token, refresh_token_expire_in, ...}.
- https://partner.tiktokshop.com/docv2/page/common-errors: 36009002 "Too many requests"
  (HTTP 429), 36009003 internal error (retry), 105002 expired access token, 106001 invalid
  sign, 36009004 invalid credentials/timestamp/parameter, 105005 scope missing. TikTok
  publishes no per-endpoint rate figure or Retry-After header on the pages quoted: a 429
  waits its Retry-After when one is sent, RETRY_AFTER_DEFAULT_S otherwise, and
  `rate_limit_per_s` spaces calls as for every channel.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import time
from collections.abc import Iterable, Sequence
from typing import Any

import httpx
import msgspec

from workers.adapters.base import (
    OK,
    ChannelAdapter,
    ChannelOrder,
    ItemResult,
    OrderLine,
    OrderState,
    PushError,
    PushItem,
    Shipment,
    retry_after_s,
)

API_URL = "https://open-api.tiktokglobalshop.com"
UPDATE_PATH = "/product/202309/products/{product_id}/inventory/update"
SEARCH_PATH = "/product/202309/inventory/search"
ORDERS_PATH = "/order/202309/orders"
REFRESH_PATH = "/api/v2/token/refresh"
RETURNS_PATH = "/return_refund/202309/returns/search"
# Search Returns: RETURN_AND_REFUND "Buyer is required to send the items back to the seller.
# The seller will need to review the condition of the returned items before a refund can be
# issued"; RETURN_OR_REFUND_REQUEST_SUCCESS "The buyer will be refunded", ..._COMPLETE "The
# buyer has been refunded". A REFUND leaves the goods with the buyer, a REPLACEMENT sends more.
GOODS_BACK_TYPES = frozenset({"RETURN_AND_REFUND"})
GOODS_BACK_STATUSES = frozenset({"RETURN_OR_REFUND_REQUEST_SUCCESS",
                                 "RETURN_OR_REFUND_REQUEST_COMPLETE"})
# Targets per push_batch; split into one call per product. Not a documented TikTok limit (a
# product's SKUs are few): it bounds the calls one lane makes in one push.
BATCH_LIMIT = 100
READ_LIMIT = 20
ORDER_IDS_LIMIT = 50  # Get Order Detail: "ids" up to 50 (the SDKs' docstrings)
# An access token is refreshed this long before TikTok's expiry (tokens live days).
REFRESH_EARLY_S = 600.0
# A failed refresh is the answer for this long to every push that asks meanwhile: long enough
# to cover the pushes queued on the lock, short enough that a fixed token is used at once.
REFRESH_FAILURE_HOLD_S = 5.0
# Get Order Detail's `fulfillment_type` (FULFILLMENT_BY_SELLER in the documented sample).
FULFILLED_BY_TIKTOK = "FULFILLMENT_BY_TIKTOK"
RATE_LIMITED = 36009002
INTERNAL_ERROR = 36009003
TOKEN_EXPIRED = 105002
BAD_SIGNATURE = 106001
# Code families about the app, token, signature or request, never about one SKU.
_CALL_FAMILIES = ("105", "106", "36009", "36004")
_ID = re.compile(r"[0-9]{1,24}")

# Order status -> what it means for the units (docs/order-lifecycle.md). UNPAID counts: TikTok
# takes the units off its own count when the order is placed, and an order never paid ends
# CANCELLED, which gives them back. ON_HOLD is TikTok's cancellation grace period, still sold.
# AWAITING_COLLECTION: the seller has shipped (arranged the carrier); the parcel left stock.
_STATES: dict[str, OrderState] = {
    "UNPAID": "open", "ON_HOLD": "open", "AWAITING_SHIPMENT": "open",
    "PARTIALLY_SHIPPING": "partially_shipped",
    "AWAITING_COLLECTION": "shipped", "IN_TRANSIT": "shipped", "DELIVERED": "shipped",
    "COMPLETED": "shipped", "CANCELLED": "cancelled"}
# Line item display_status values of units that left (Get Order Detail).
_SHIPPED_LINES = frozenset({"AWAITING_COLLECTION", "IN_TRANSIT", "DELIVERED", "COMPLETED"})
# A line item cancelled on its own (the order goes on): that unit is not sold.
CANCELLED_LINE = "CANCELLED"

_SECRET_QUERY = re.compile(r"((?:app_secret|refresh_token|access_token)=)[^&\s\"']+")


class _Redact(logging.Filter):
    """httpx logs every request's URL at INFO; the token refresh carries the app secret and
    the refresh token in its query (TikTok's documented GET). Never log them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args and isinstance(record.args, tuple):
            record.args = tuple(_SECRET_QUERY.sub(r"\1***", str(a)) if isinstance(
                a, httpx.URL | str) else a for a in record.args)
        return True


logging.getLogger("httpx").addFilter(_Redact())


def sign(app_secret: str, path: str, params: dict[str, str], body: bytes = b"") -> str:
    """TikTok's request signature (module docstring)."""
    base = path + "".join(f"{k}{v}" for k, v in sorted(params.items())
                          if k not in ("sign", "access_token"))
    wrapped = app_secret.encode() + base.encode() + body + app_secret.encode()
    return hmac.new(app_secret.encode(), wrapped, hashlib.sha256).hexdigest()


class _Token(msgspec.Struct):
    value: str
    expires_at: float


class TikTokItem(msgspec.Struct, frozen=True):
    product_id: str
    sku_id: str


class TikTokAdapter(ChannelAdapter):
    batch_limit = BATCH_LIMIT
    read_limit = READ_LIMIT

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.base = self.base or API_URL
        config = self.channel.tiktok
        self._app_key = config.app_key if config else ""
        self._cipher = config.shop_cipher if config else ""
        self._auth_url = (config.auth_url if config else "").rstrip("/")
        self._token: _Token | None = None
        # sku_id -> product_id of the mapped SKUs (a return line names the SKU id only)
        self._products = {ids.partition("/")[2]: ids.partition("/")[0]
                          for ids in self.channel.variant_skus}
        # One refresh at a time per channel: concurrent pushes wait for it and share its token.
        self._refreshing = asyncio.Lock()
        self.refreshes = 0
        # The last refresh's failure and until when (monotonic) it stands: the pushes that
        # waited on the lock share it instead of each sending the refused refresh again.
        self._refresh_failed: tuple[PushError, float] | None = None

    # ---- the access token -------------------------------------------------------------------

    async def access_token(self) -> str:
        token = self._token
        if token is not None and time.time() < token.expires_at - REFRESH_EARLY_S:
            return token.value
        stale = token
        async with self._refreshing:
            if self._token is not stale and self._token is not None:
                return self._token.value  # another push refreshed it meanwhile
            failed = self._refresh_failed
            if failed is not None and time.monotonic() < failed[1]:
                # Refused moments ago (revoked token, TikTok down): asking again now would
                # only repeat the refusal once per waiting push.
                raise _again(failed[0])
            try:
                self._token = await self._refresh()
            except PushError as exc:
                self._refresh_failed = (exc, time.monotonic() + REFRESH_FAILURE_HOLD_S)
                raise
            self._refresh_failed = None
            return self._token.value

    async def _expired(self, used: str) -> None:
        """TikTok refused `used` as expired: the next access_token() refreshes (once, however
        many pushes saw the refusal)."""
        async with self._refreshing:
            if self._token is not None and self._token.value == used:
                self._token = None

    async def _refresh(self) -> _Token:
        if self.channel.tiktok is None:
            raise PushError(f"{self.name}: no tiktok app key and refresh token configured",
                            status=401)
        params = {"app_key": self._app_key, "app_secret": self.channel.secret,
                  "refresh_token": self.channel.tiktok.refresh_token,
                  "grant_type": "refresh_token"}
        try:
            response = await self.client.get(self._auth_url + REFRESH_PATH, params=params)
        except httpx.HTTPError as exc:
            # The exception's text may carry the URL, and so the secret: name the type only.
            raise PushError(f"{self.name}: token refresh failed: {type(exc).__name__}") from None
        if response.status_code == 429:
            raise PushError(f"{self.name}: token refresh rate limited", status=429,
                            retry_after=retry_after_s(response))
        reply = self._envelope(response, "token refresh")
        data = reply.get("data")
        value = data.get("access_token") if isinstance(data, dict) else None
        expires = data.get("access_token_expire_in") if isinstance(data, dict) else None
        if reply.get("code") != 0 or not isinstance(value, str) or not value:
            raise PushError(f"{self.name}: token refresh refused: code {reply.get('code')} "
                            f"{str(reply.get('message', ''))[:120]}", status=401)
        self.refreshes += 1
        # An absolute Unix time; a relative one (or none) still gets a short, safe life.
        at = float(expires) if isinstance(expires, int | float) else 0.0
        if at < 1e9:
            at = time.time() + max(at, REFRESH_EARLY_S * 2)
        return _Token(value, at)

    # ---- signed calls -------------------------------------------------------------------

    async def api(self, method: str, path: str, *, body: Any = None,
                  query: dict[str, str] | None = None) -> dict[str, Any]:
        """One signed call; its `data` on code 0. An expired token is refreshed and the call
        sent once more; a 429 or 36009002 is back-pressure."""
        for attempt in (1, 2):
            token = await self.access_token()
            response = await self._send(method, path, body, query, token)
            reply = self._envelope(response, path) if response.status_code != 429 else {}
            code = reply.get("code")
            if response.status_code == 429 or code == RATE_LIMITED:
                raise PushError(f"{self.name}: rate limited (36009002)", status=429,
                                retry_after=retry_after_s(response))
            # An expired (or unknown) token: refresh once. A bad signature is not the token's.
            if attempt == 1 and (code == TOKEN_EXPIRED or (
                    response.status_code == 401 and code != BAD_SIGNATURE)):
                await self._expired(token)
                continue
            if code == 0:
                data = reply.get("data")
                return data if isinstance(data, dict) else {}
            detail = f"code {code} {str(reply.get('message', ''))[:200]}"
            if code == INTERNAL_ERROR or response.status_code >= 500:
                raise PushError(f"{self.name}: {path}: {detail}", status=502)
            raise PushError(f"{self.name}: {path}: {detail}",
                            status=_status_of(code, response.status_code))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send(self, method: str, path: str, body: Any, query: dict[str, str] | None,
                    token: str) -> httpx.Response:
        # The bytes signed are the bytes sent: serialise once.
        content = msgspec.json.encode(body) if body is not None else b""
        params = {**(query or {}), "app_key": self._app_key,
                  "timestamp": str(int(time.time()))}
        if self._cipher:
            params["shop_cipher"] = self._cipher
        params["sign"] = sign(self.channel.secret, path, params, content)
        headers = {"x-tts-access-token": token, "Content-Type": "application/json"}
        try:
            return await self.client.request(method, self.base + path, params=params,
                                             content=content or None, headers=headers)
        except httpx.HTTPError as exc:
            raise PushError(f"{self.name}: {type(exc).__name__}") from exc

    def _envelope(self, response: httpx.Response, what: str) -> dict[str, Any]:
        """TikTok's {code, message, request_id, data} body; anything else is a PushError."""
        try:
            reply = msgspec.json.decode(response.content)
        except msgspec.DecodeError:
            status = response.status_code if response.status_code >= 500 else 502
            raise PushError(f"{self.name}: {what}: HTTP {response.status_code} with a body "
                            "that is not JSON", status=status) from None
        if not isinstance(reply, dict):
            raise PushError(f"{self.name}: {what}: unexpected answer", status=502)
        return reply

    # ---- ids ----------------------------------------------------------------------------

    def item_of(self, sku: str) -> TikTokItem | str:
        mapped = self._item_ids.get(sku)
        if mapped is None:
            return f"SKU {sku[:80]!r} has no TikTok <product_id>/<sku_id> in variant_skus"
        product, _, sku_id = mapped.partition("/")
        if not (_ID.fullmatch(product) and _ID.fullmatch(sku_id)):
            return f"mapped id {mapped[:60]!r} is not <product_id>/<sku_id> (decimal ids)"
        return TikTokItem(product, sku_id)

    def warehouse_of(self, location: str) -> str | None:
        found = self._location_ids.get(location)
        return found if found is not None and _ID.fullmatch(found) else None

    # ---- writes -------------------------------------------------------------------------

    async def push_batch(self, items: Sequence[PushItem]) -> list[ItemResult]:
        results: list[ItemResult] = [OK] * len(items)
        # product -> sku -> warehouse -> quantity (a later item for the same cell wins)
        plan: dict[str, dict[str, dict[str, int]]] = {}
        members: dict[tuple[str, str, str], list[int]] = {}
        for n, item in enumerate(items):
            target = self.item_of(item.sku)
            warehouse = self.warehouse_of(item.location)
            if isinstance(target, str):
                results[n] = ItemResult("failed", error=target, retryable=False)
                continue
            if warehouse is None:
                results[n] = ItemResult("failed", retryable=False, error=(
                    f"location {item.location!r} has no TikTok warehouse_id in location_map"))
                continue
            plan.setdefault(target.product_id, {}).setdefault(target.sku_id, {})[
                warehouse] = max(0, item.value)
            members.setdefault((target.product_id, target.sku_id, warehouse), []).append(n)
        for product, skus in plan.items():
            try:
                refused = await self._update(product, skus)
            except PushError as exc:
                if exc.retry_after is not None or exc.status in (0, 401, 403) or \
                        exc.status >= 500:
                    raise  # about the channel or our credentials: the whole batch waits
                # About this product (gone, not ours): its SKUs fail, other products go on.
                for sku_id, cells in skus.items():
                    for warehouse in cells:
                        for n in members[(product, sku_id, warehouse)]:
                            results[n] = ItemResult("failed", error=str(exc)[:300],
                                                    retryable=False)
                continue
            for (sku_id, warehouse), error in refused.items():
                cells = skus.get(sku_id, {})
                for wh in ([warehouse] if warehouse in cells else list(cells)):
                    for n in members.get((product, sku_id, wh), []):
                        results[n] = ItemResult("failed", error=error[:300], retryable=False)
        return results

    async def _update(self, product: str, skus: dict[str, dict[str, int]]
                      ) -> dict[tuple[str, str | None], str]:
        """One Update Inventory call; the cells TikTok refused ((sku, warehouse or None for
        every warehouse of the SKU) -> why)."""
        body = {"skus": [{"id": sku_id, "inventory": [
            {"warehouse_id": wh, "quantity": qty} for wh, qty in cells.items()]}
            for sku_id, cells in skus.items()]}
        data = await self.api("POST", UPDATE_PATH.format(product_id=product), body=body)
        refused: dict[tuple[str, str | None], str] = {}
        for error in data.get("errors") or []:
            if not isinstance(error, dict):
                continue
            detail = error.get("detail") if isinstance(error.get("detail"), dict) else {}
            sku_id = str(detail.get("sku_id", ""))
            why = f"{error.get('code')} {error.get('message', '')}"
            extra = [e for e in detail.get("extra_errors") or [] if isinstance(e, dict)]
            if not sku_id:
                # A refusal that names no SKU: every SKU of the call is in doubt.
                for other in skus:
                    refused[(other, None)] = why
                continue
            named = [e for e in extra if e.get("warehouse_id")]
            if not named:
                refused[(sku_id, None)] = why
            for e in named:
                refused[(sku_id, str(e["warehouse_id"]))] = (
                    f"{why}: {e.get('code')} {e.get('message', '')}")
        return refused

    async def set_available(self, sku: str, location: str, available: int) -> None:
        [result] = await self.push_batch([PushItem(sku, location, available)])
        if result.status != "ok":
            raise PushError(f"{self.name}: {result.error}", status=400)

    # ---- reads --------------------------------------------------------------------------

    async def read_batch(self, items: Sequence[tuple[str, str]]) -> list[int | None]:
        wanted = {sku: t for sku, _ in items if isinstance(t := self.item_of(sku), TikTokItem)}
        counts: dict[tuple[str, str], int] = {}
        sku_ids = sorted({t.sku_id for t in wanted.values()})
        for chunk in _chunks(sku_ids, READ_LIMIT):
            data = await self.api("POST", SEARCH_PATH, body={"sku_ids": chunk})
            for product in data.get("inventory") or []:
                for sku in (product.get("skus") or []) if isinstance(product, dict) else []:
                    for cell in sku.get("warehouse_inventory") or []:
                        qty = cell.get("available_quantity")
                        if isinstance(qty, int) and not isinstance(qty, bool):
                            counts[(str(sku.get("id")), str(cell.get("warehouse_id")))] = qty
        found: list[int | None] = []
        for sku, location in items:
            target, warehouse = wanted.get(sku), self.warehouse_of(location)
            found.append(counts.get((target.sku_id, warehouse))
                         if target is not None and warehouse is not None else None)
        return found

    async def get_available(self, sku: str, location: str) -> int | None:
        [count] = await self.read_batch([(sku, location)])
        return count

    # ---- orders -------------------------------------------------------------------------

    async def fetch_order(self, order_id: str) -> ChannelOrder:
        if not _ID.fullmatch(order_id):
            raise PushError(f"{self.name}: order id {order_id[:40]!r} is not a TikTok id",
                            status=400)
        data = await self.api("GET", ORDERS_PATH, query={"ids": order_id})
        orders = [o for o in data.get("orders") or []
                  if isinstance(o, dict) and str(o.get("id")) == order_id]
        if not orders:
            raise PushError(f"{self.name}: order {order_id} not found", status=404)
        order = orders[0]
        status = str(order.get("status", ""))
        # TikTok cancels single line items (display_status CANCELLED) while the order goes on:
        # such a unit was never sold, so it is neither committed nor shipped. A whole
        # cancelled order is cancelled by its status, whatever its lines.
        items = [li for li in order.get("line_items") or []
                 if isinstance(li, dict) and li.get("display_status") != CANCELLED_LINE]
        # Unix seconds; kept as ms. update_time orders this state against the record's (a
        # newer one with fewer lines merges), create_time is what the stale rule judges.
        timing = {"placed_at_ms": _ms(order.get("create_time")),
                  "state_ms": _ms(order.get("update_time"))}
        if order.get("fulfillment_type") == FULFILLED_BY_TIKTOK:
            # Units in TikTok's own warehouses (FBT): none of Stockgate's were sold.
            return ChannelOrder(order_id, "incomplete", self._lines(items), status=status,
                                **timing)
        shipments: list[Shipment] = []
        state = _STATES.get(status, "open")  # an unknown status: the sale stands
        if state == "partially_shipped":
            by_package: dict[str, list[dict[str, Any]]] = {}
            for li in items:
                if li.get("display_status") in _SHIPPED_LINES:
                    by_package.setdefault(str(li.get("package_id") or li.get("id")),
                                          []).append(li)
            shipments = [Shipment(package, self._lines(lis))
                         for package, lis in sorted(by_package.items())]
        # Goods can only come back once they left: only a shipped order is asked for returns.
        returns = await self._returns(order_id) if state == "shipped" else []
        return ChannelOrder(order_id, state, self._lines(items), status=status,
                            shipments=shipments, returns=returns, **timing)

    async def _returns(self, order_id: str) -> list[Shipment]:
        """The order's returns whose goods came back to the seller (Search Returns): each
        return line item is one order line item, so one unit."""
        data = await self.api("POST", RETURNS_PATH, body={"order_ids": [order_id]},
                              query={"page_size": "50"})
        found = []
        for ret in data.get("return_orders") or []:
            if not isinstance(ret, dict) or str(ret.get("order_id")) != order_id:
                continue
            if ret.get("return_type") not in GOODS_BACK_TYPES or \
                    ret.get("return_status") not in GOODS_BACK_STATUSES:
                continue
            items = [li for li in ret.get("return_line_items") or [] if isinstance(li, dict)]
            lines = self._lines({"sku_id": li.get("sku_id"), "seller_sku": li.get("seller_sku"),
                                 "product_id": self._products.get(str(li.get("sku_id")))}
                                for li in items)
            if lines:
                found.append(Shipment(str(ret.get("return_id")), lines))
        return found

    def _lines(self, items: Iterable[dict[str, Any]]) -> list[OrderLine]:
        """One unit per line item, summed by SKU: the mapped ids' SKU, else the seller SKU."""
        qty: dict[str, int] = {}
        for li in items:
            mapped = self.channel.variant_skus.get(f"{li.get('product_id')}/{li.get('sku_id')}")
            sku = mapped or str(li.get("seller_sku") or "")
            qty[sku] = qty.get(sku, 0) + 1
        return [OrderLine(sku, n) for sku, n in qty.items()]


def _again(exc: PushError) -> PushError:
    """A fresh copy of a remembered failure: one exception object raised in several tasks
    would pile their tracebacks onto each other."""
    return PushError(str(exc), retry_after=exc.retry_after, status=exc.status)


def _status_of(code: object, http_status: int) -> int:
    """A non-zero code's HTTP-like status: 401 for the app, token and signature families (a
    configuration to fix, the whole batch waits), 400 for the rest (about the request)."""
    text = str(code)
    if http_status in (401, 403) or text.startswith(_CALL_FAMILIES):
        return 401
    return 400


def _ms(unix_s: object) -> int:
    """Milliseconds of TikTok's Unix-seconds time; 0 (unknown) for anything else."""
    if isinstance(unix_s, bool) or not isinstance(unix_s, int | float) or unix_s <= 0:
        return 0
    return int(unix_s * 1000)


def _chunks(values: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]
