"""Simulated eBay: the OAuth token endpoint (refresh grant), the Sell Inventory API's
bulkUpdatePriceQuantity and getInventoryItem, and the Fulfillment API's getOrders (filter on
lastmodifieddate, limit/offset pages with `next`) and getOrder, behind bearer tokens that
expire. Tests change orders (ship, cancel, refund) through `EbayBook`.

Shapes follow eBay's documentation (sources in workers/adapters/ebay.py): the bulk answer is
200 when every item succeeded, else 207, with one `responses[]` entry per SKU carrying its
`statusCode` and `errors`; getOrders answers `{href, total, limit, offset, next?, orders}`
and refuses a limit over 200 (errorId 31100 "Invalid limit") and an unreadable filter
(30800 / 30810), the errors its OpenAPI document lists. Error ids the documentation read did
not give are marked "simulator's own" where they are made: an expired token (401, errorId
1001 as eBay's OAuth errors are reported), a quota reached (429, errorId 2001 "Too many
requests"), a bulk call over 25 items and an unknown SKU.
"""

from __future__ import annotations

import base64
import calendar
import itertools
import re
import threading
import time
from typing import Any
from urllib.parse import parse_qs, urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from workers.simulators.state import ChannelState, recorded

BULK_LIMIT = 25
ORDERS_LIMIT_MAX = 200
ORDERS_LIMIT_DEFAULT = 50
INVENTORY = "/sell/inventory/v1"
FULFILLMENT = "/sell/fulfillment/v1"
_FILTER = re.compile(r"^lastmodifieddate:\[([^\]]*?)\.\.([^\]]*)\]$")


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def _ms(text: str) -> int | None:
    match = re.fullmatch(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,3}))?Z", text)
    if not match:
        return None
    whole = time.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S")
    return calendar.timegm(whole) * 1000 + int((match.group(2) or "0").ljust(3, "0"))


def errors(status: int, error_id: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"errors": [{"errorId": error_id, "domain": "API_SIMULATOR",
                                     "category": "REQUEST", "message": message}]},
                        status_code=status, headers=headers or None)


class EbayBook:
    """The simulated seller account: credentials, live tokens, orders. Tests read and change
    it directly (the server runs in a thread of the same process)."""

    def __init__(self) -> None:
        self.client_id = "sim-client"
        self.client_secret = "sim-secret"
        self.refresh_token = "sim-refresh"
        self.consented = {"https://api.ebay.com/oauth/api_scope/sell.inventory",
                          "https://api.ebay.com/oauth/api_scope/sell.fulfillment"}
        self.token_life_s = 7200
        self.tokens: dict[str, float] = {}  # token -> time.time() it expires
        self.refreshes = 0
        self.refused_tokens = 0  # API calls answered 401
        # The next N API calls (tokens excepted) answer 429 with this Retry-After ("" none).
        self.limit_next = 0
        self.retry_after = "2"
        # SKUs the seller has; None: every SKU exists.
        self.known_skus: set[str] | None = None
        self.orders: dict[str, dict[str, Any]] = {}
        self.bulk_calls: list[list[str]] = []  # SKUs of each bulk call, in order
        self.order_calls: list[dict[str, str]] = []  # query of each getOrders call
        self._seq = itertools.count(1)
        self._last_ms = 0
        self._lock = threading.Lock()

    def knows(self, state: ChannelState, sku: str) -> bool:
        """Whether the seller has an inventory item `sku`: eBay refuses a quantity for a SKU
        it has no item of (a listing id pushed as a SKU, say). `known_skus` names them;
        else, with the state's mint_unknown_skus off, only SKUs already counted exist; by
        default every SKU does (most tests push made-up SKUs)."""
        if self.known_skus is not None:
            return sku in self.known_skus
        return state.mint_unknown_skus or (sku, "") in state.counts

    # ---- tokens ------------------------------------------------------------------------

    def mint(self) -> tuple[str, int]:
        with self._lock:
            token = f"v^1.1#i^1#sim-{next(self._seq)}"
            self.tokens[token] = time.time() + self.token_life_s
            self.refreshes += 1
        return token, self.token_life_s

    def revoke_all(self) -> None:
        """Every token eBay issued stops working (as an early expiry would)."""
        self.tokens.clear()

    def valid(self, authorization: str) -> bool:
        scheme, _, token = authorization.partition(" ")
        return scheme == "Bearer" and self.tokens.get(token, 0.0) > time.time()

    # ---- orders ------------------------------------------------------------------------

    def _now_ms(self) -> int:
        """A modification time later than every earlier one (eBay's clock only rises)."""
        with self._lock:
            self._last_ms = max(int(time.time() * 1000), self._last_ms + 1)
            return self._last_ms

    def add_order(self, order_id: str, lines: list[tuple[str, int]], *,
                  modified_ms: int | None = None) -> dict[str, Any]:
        now = modified_ms if modified_ms is not None else self._now_ms()
        order = {
            "orderId": order_id, "creationDate": _iso(now), "lastModifiedDate": _iso(now),
            "orderFulfillmentStatus": "NOT_STARTED", "orderPaymentStatus": "PAID",
            "cancelStatus": {"cancelState": "NONE_REQUESTED", "cancelRequests": []},
            "paymentSummary": {"refunds": []},
            "lineItems": [{"lineItemId": f"{order_id}-{n + 1}", "sku": sku, "quantity": qty,
                           "legacyItemId": f"11{n}", "lineItemFulfillmentStatus": "NOT_STARTED",
                           "refunds": []}
                          for n, (sku, qty) in enumerate(lines)]}
        self.orders[order_id] = order
        return order

    def sell(self, state: ChannelState, order_id: str, sku: str, qty: int) -> bool:
        """A buyer checks out on eBay: the listing's quantity drops at once (as eBay's does)
        and a paid order appears for getOrders. False, and nothing changes, when eBay shows
        fewer than `qty`."""
        if not state.sell(sku, "", qty):
            return False
        self.add_order(order_id, [(sku, qty)])
        return True

    def touch(self, order_id: str) -> None:
        self.orders[order_id]["lastModifiedDate"] = _iso(self._now_ms())

    def ship(self, order_id: str, line_numbers: list[int] | None = None) -> None:
        """Lines (1-based) shipped; None: all. The order's status follows its lines."""
        order = self.orders[order_id]
        for n, li in enumerate(order["lineItems"], 1):
            if line_numbers is None or n in line_numbers:
                li["lineItemFulfillmentStatus"] = "FULFILLED"
        done = [li["lineItemFulfillmentStatus"] == "FULFILLED" for li in order["lineItems"]]
        order["orderFulfillmentStatus"] = ("FULFILLED" if all(done) else
                                           "IN_PROGRESS" if any(done) else "NOT_STARTED")
        self.touch(order_id)

    def request_cancel(self, order_id: str) -> None:
        self.orders[order_id]["cancelStatus"]["cancelState"] = "IN_PROGRESS"
        self.touch(order_id)

    def cancel(self, order_id: str) -> None:
        order = self.orders[order_id]
        order["cancelStatus"]["cancelState"] = "CANCELED"
        order["cancelStatus"]["cancelledDate"] = _iso(self._now_ms())
        self.touch(order_id)

    def refund(self, order_id: str, full: bool = True) -> None:
        order = self.orders[order_id]
        order["paymentSummary"]["refunds"].append(
            {"refundId": f"R-{next(self._seq)}", "refundStatus": "REFUNDED"})
        order["orderPaymentStatus"] = "FULLY_REFUNDED" if full else "PARTIALLY_REFUNDED"
        self.touch(order_id)


def book_of(state: ChannelState) -> EbayBook:
    """The eBay account of a simulator started with kind "ebay"."""
    book: EbayBook = state.ebay  # type: ignore[attr-defined]
    return book


def routes(state: ChannelState) -> list[Route]:
    book = EbayBook()
    state.ebay = book  # type: ignore[attr-defined]

    async def gate(request: Request) -> Response | None:
        """Token, quota and the shared knobs (delay, failures, token bucket)."""
        if not book.valid(request.headers.get("authorization", "")):
            book.refused_tokens += 1
            # Simulator's own wording of eBay's invalid-token answer.
            return errors(401, 1001, "Invalid access token")
        if book.limit_next > 0:
            book.limit_next -= 1
            state.limited += 1
            extra = {"Retry-After": book.retry_after} if book.retry_after else {}
            return errors(429, 2001, "Too many requests. The request limit has been reached "
                          "for the resource.", **extra)
        refused = await state.gate()
        if refused is not None and refused.status_code == 429:
            return errors(429, 2001, "Too many requests. The request limit has been reached "
                          "for the resource.", **{"Retry-After": refused.headers["Retry-After"]})
        return refused

    async def token(request: Request) -> Response:
        state.calls += 1
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        expected = base64.b64encode(f"{book.client_id}:{book.client_secret}".encode()).decode()
        if scheme != "Basic" or given != expected:
            return JSONResponse({"error": "invalid_client",
                                 "error_description": "client authentication failed"}, 401)
        if not request.headers.get("content-type", "").startswith(
                "application/x-www-form-urlencoded"):
            return JSONResponse({"error": "invalid_request"}, 400)
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        if form.get("grant_type") != "refresh_token":
            return JSONResponse({"error": "unsupported_grant_type"}, 400)
        if form.get("refresh_token") != book.refresh_token:
            return JSONResponse({"error": "invalid_grant", "error_description":
                                 "the provided authorization refresh token is invalid or was "
                                 "issued to another client"}, 400)
        if not set(form.get("scope", "").split()) <= book.consented:
            return JSONResponse({"error": "invalid_scope"}, 400)
        value, life = book.mint()
        return JSONResponse({"access_token": value, "expires_in": life,
                             "token_type": "User Access Token"})

    async def bulk(request: Request) -> Response:
        if refused := await gate(request):
            return refused
        if not request.headers.get("content-type", "").startswith("application/json"):
            return errors(415, 0, "Content-Type must be application/json")  # simulator's own
        try:
            body = await request.json()
            entries = body["requests"]
            assert isinstance(entries, list)
        except (ValueError, KeyError, TypeError, AssertionError):
            return errors(400, 0, "Invalid request body")  # simulator's own
        limit = state.batch_items_limit or BULK_LIMIT
        if len(entries) > limit:
            return errors(400, 0, f"Up to {limit} inventory items per call")  # simulator's own
        book.bulk_calls.append([str(e.get("sku")) for e in entries if isinstance(e, dict)])
        responses = []
        for entry in entries:
            sku = entry.get("sku") if isinstance(entry, dict) else None
            quantity = (entry.get("shipToLocationAvailability") or {}).get("quantity") \
                if isinstance(entry, dict) else None
            if not isinstance(sku, str) or not isinstance(quantity, int) or quantity < 0:
                responses.append({"sku": str(sku), "statusCode": 400, "errors": [
                    {"errorId": 0, "message": "Invalid sku or quantity"}]})  # simulator's own
                continue
            if not book.knows(state, sku):
                responses.append({"sku": sku, "statusCode": 404, "errors": [
                    {"errorId": 0, "message": f"SKU {sku} not found"}]})  # simulator's own
                continue
            with state.counts_lock:
                state.store(sku, "", quantity)
            responses.append({"sku": sku, "statusCode": 200})
        state.writes += 1
        ok = all(r["statusCode"] == 200 for r in responses)
        return JSONResponse({"responses": responses}, status_code=200 if ok else 207)

    async def inventory_item(request: Request) -> Response:
        if refused := await gate(request):
            return refused
        sku = request.path_params["sku"]
        count = state.counts.get((sku, ""))
        if count is None and (book.known_skus is None or sku not in book.known_skus):
            return errors(404, 0, f"SKU {sku} not found")  # simulator's own
        return JSONResponse({"sku": sku, "availability": {
            "shipToLocationAvailability": {"quantity": count or 0}}})

    async def get_orders(request: Request) -> Response:
        if refused := await gate(request):
            return refused
        params = request.query_params
        book.order_calls.append(dict(params))
        try:
            limit = int(params.get("limit", str(ORDERS_LIMIT_DEFAULT)))
            assert 1 <= limit <= ORDERS_LIMIT_MAX
        except (ValueError, AssertionError):
            return errors(400, 31100, f"Invalid limit: {params.get('limit')}")
        try:
            offset = int(params.get("offset", "0"))
            assert offset >= 0
        except (ValueError, AssertionError):
            return errors(400, 31000, f"Invalid offset: {params.get('offset')}")
        found = list(book.orders.values())
        if "filter" in params:
            match = _FILTER.match(params["filter"])
            if not match:
                return errors(400, 30800, "Invalid filter value for filter lastmodifieddate")
            start, end = _ms(match.group(1)), _ms(match.group(2)) if match.group(2) else None
            if start is None or (match.group(2) and end is None):
                return errors(400, 30810, "Invalid date format")
            found = [o for o in found if start <= (_ms(o["lastModifiedDate"]) or 0)
                     and (end is None or (_ms(o["lastModifiedDate"]) or 0) <= end)]
        found.sort(key=lambda o: (o["creationDate"], o["orderId"]))
        page = found[offset:offset + limit]
        base = {k: v for k, v in params.items() if k not in ("limit", "offset")}
        reply: dict[str, Any] = {
            "href": f"{FULFILLMENT}/order?" + urlencode({**base, "limit": limit,
                                                          "offset": offset}),
            "total": len(found), "limit": limit, "offset": offset, "orders": page}
        if offset + limit < len(found):
            reply["next"] = f"{FULFILLMENT}/order?" + urlencode(
                {**base, "limit": limit, "offset": offset + limit})
        return JSONResponse(reply)

    async def get_order(request: Request) -> Response:
        if refused := await gate(request):
            return refused
        order = book.orders.get(request.path_params["order_id"])
        if order is None:
            return Response(status_code=404)
        return JSONResponse(order)

    def route(path: str, endpoint: Any, methods: list[str]) -> Route:
        return Route(path, recorded(state, endpoint), methods=methods)

    return [route("/identity/v1/oauth2/token", token, ["POST"]),
            route(INVENTORY + "/bulk_update_price_quantity", bulk, ["POST"]),
            route(INVENTORY + "/inventory_item/{sku}", inventory_item, ["GET"]),
            route(FULFILLMENT + "/order", get_orders, ["GET"]),
            route(FULFILLMENT + "/order/{order_id}", get_order, ["GET"])]
