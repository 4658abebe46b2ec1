"""Simulated Amazon: Login with Amazon's token endpoint, the Listings Items API's
patchListingsItem and getListingsItem, and the Orders API's getOrder and getOrderItems, with
the shapes, limits and errors their documentation gives (sources in
workers/adapters/amazon.py):

- POST /auth/o2/token, form-encoded grant_type=refresh_token, refresh_token, client_id,
  client_secret -> {"access_token": "Atza|...", "refresh_token", "token_type": "bearer",
  "expires_in": 3600}. Wrong credentials get OAuth 2.0's error body {"error",
  "error_description"}: 401 invalid_client, 400 invalid_grant or unsupported_grant_type
  (RFC 6749 section 5.2; https://developer.amazon.com/docs/login-with-amazon/access-token.html).
- Every SP-API call needs a live token in x-amz-access-token; otherwise 403 with an ErrorList
  {"errors": [{"code": "Unauthorized", "message": "Access to requested resource is denied.",
  "details": "The access token you provided has expired."}]} (the 403 of the models covers
  "Expired Token"; the code, message and details are as integrators report them).
- PATCH /listings/2021-08-01/items/{sellerId}/{sku}?marketplaceIds= takes {"productType",
  "patches": [{"op": add|replace|merge|delete, "path", "value": [...]}]} and answers 200 with
  {"sku", "status": "ACCEPTED", "submissionId", "issues": []}; a value the attribute cannot
  take, or a SKU the seller has no listing for, is 200 with "status": "INVALID" and an ERROR
  issue (the model's sandbox example: code "90000900", "The attributes are invalid.").
  Parameters missing: 400 {"errors": [{"code": "BAD_REQUEST", ...}]} (sandbox example).
- Listings calls share a token bucket of `rate` requests/s and `burst` (5 and 5 by default, as
  documented); a call past it is 429 with {"errors": [{"code": "QuotaExceeded", "message":
  "You exceeded your quota for the requested resource."}]} and no Retry-After. Every answer
  carries x-amzn-RequestId, and a 200 x-amzn-RateLimit-Limit (the rate applied).
- GET /orders/v0/orders/{id} and /orderItems answer {"payload": {...}} for the orders a test
  put in `AmazonSim.orders`.
- sell() is Amazon selling on its own: its shown quantity drops and it gives the order's
  ORDER_CHANGE as the SQS record an EventBridge pipe would POST to /webhooks/{channel}, for
  the demo's marketplace traffic.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from workers.simulators.state import ChannelState, Endpoint, recorded

PATCH_OPS = frozenset({"add", "replace", "merge", "delete"})
FULFILLMENT_PATH = "/attributes/fulfillment_availability"
DENIED = "Access to requested resource is denied."


@dataclass
class AmazonSim:
    """The knobs and records of one simulated Amazon seller (tests set them directly)."""

    client_id: str = "amzn1.application-oa2-client.test"
    client_secret: str = "lwa-client-secret"
    refresh_token: str = "Atzr|refresh-token"
    seller_id: str = "A3TH9S8BH6GOGM"
    marketplace_id: str = "ATVPDKIKX0DER"
    # Amazon keeps one merchant-fulfilled quantity per SKU; the simulator files it under this
    # location so tests and the demo read it as they read the other channels' counts.
    location: str = "main"
    token_ttl_s: int = 3600
    rate: float = 5.0
    burst: int = 5
    # None: every SKU has a listing; a set: only these do (others answer INVALID).
    listed_skus: set[str] | None = None
    # Tokens issued: token -> monotonic expiry.
    tokens: dict[str, float] = field(default_factory=dict)
    refreshes: int = 0
    refused_tokens: int = 0
    patches: list[dict[str, Any]] = field(default_factory=list)
    sold: int = 0  # orders placed by sell()
    # Orders API: id -> {"OrderStatus", "FulfillmentChannel", "OrderItems": [...]}
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    _level: float = -1.0
    _at: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def expire_tokens(self) -> None:
        """Every token issued so far expires now (as an hour passing would)."""
        with self._lock:
            self.tokens = dict.fromkeys(self.tokens, 0.0)

    def take(self) -> bool:
        with self._lock:
            now = time.monotonic()
            level = float(self.burst) if self._level < 0 else min(
                float(self.burst), self._level + (now - self._at) * self.rate)
            self._at = now
            if level < 1:
                self._level = level
                return False
            self._level = level - 1
            return True


def order_change(sim: AmazonSim, order_id: str, status: str,
                 lines: list[tuple[str, int, int]]) -> dict[str, Any]:
    """An ORDER_CHANGE notification of this seller (schemas/notifications/
    OrderChangeNotification.json): `lines` are (SellerSKU, Quantity, QuantityShipped)."""
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    return {"NotificationVersion": "1.0", "NotificationType": "ORDER_CHANGE",
            "PayloadVersion": "1.0", "EventTime": now,
            "Payload": {"OrderChangeNotification": {
                "NotificationLevel": "OrderLevel", "SellerId": sim.seller_id,
                "AmazonOrderId": order_id, "OrderChangeType": "OrderStatusChange",
                "OrderChangeTrigger": {"TimeOfOrderChange": now,
                                       "ChangeReason": "Order status changed"},
                "Summary": {
                    "MarketplaceId": sim.marketplace_id, "OrderStatus": status,
                    "PurchaseDate": now, "DestinationPostalCode": None,
                    "FulfillmentType": "MFN", "OrderType": "StandardOrder",
                    "OrderItems": [
                        {"OrderItemId": f"{order_id.replace('-', '')}{n}", "SellerSKU": sku,
                         "SupplySourceId": None, "Quantity": qty, "QuantityShipped": shipped}
                        for n, (sku, qty, shipped) in enumerate(lines)]}}},
            "NotificationMetadata": {
                "ApplicationId": "amzn1.sellerapps.app.simulated",
                "SubscriptionId": "simulated", "PublishTime": now,
                "NotificationId": str(uuid.uuid4())}}


def pipe_record(notification: dict[str, Any]) -> dict[str, Any]:
    """The notification as an SQS message an EventBridge pipe passes to an API destination."""
    return {"messageId": str(uuid.uuid4()), "receiptHandle": "simulated",
            "body": json.dumps(notification), "attributes": {}, "messageAttributes": {},
            "md5OfBody": "", "eventSource": "aws:sqs",
            "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:simulated",
            "awsRegion": "us-east-1"}


def sell(state: ChannelState, sku: str, qty: int) -> dict[str, Any] | None:
    """Amazon sells `qty` of `sku` on its own (its shown quantity drops, as Amazon's does
    when an order is placed): the pipe record of the order's ORDER_CHANGE to deliver, or
    None when Amazon shows fewer units."""
    sim = amazon_of(state)
    if not state.sell(sku, sim.location, qty):
        return None
    with sim._lock:
        sim.sold += 1
        order_id = f"113-{sim.sold:07d}-{secrets.randbelow(10_000_000):07d}"
    return pipe_record(order_change(sim, order_id, "Unshipped", [(sku, qty, 0)]))


def amazon_of(state: ChannelState) -> AmazonSim:
    found = getattr(state, "amazon", None)
    if not isinstance(found, AmazonSim):
        found = AmazonSim()
        state.amazon = found  # type: ignore[attr-defined]
    return found


def errors(status: int, code: str, message: str, details: str = "",
           headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"errors": [{"code": code, "message": message, "details": details}]},
                        status_code=status, headers=headers)


def routes(state: ChannelState) -> list[Route]:
    sim = amazon_of(state)

    def sp_api(endpoint: Endpoint, limited: bool = True) -> Endpoint:
        """The SP-API's checks around `endpoint`: token, usage plan, request id."""

        async def run(request: Request) -> Response:
            request_id = str(uuid.uuid4())
            token = request.headers.get("x-amz-access-token", "")
            expires = sim.tokens.get(token)
            if expires is None or expires <= time.monotonic():
                sim.refused_tokens += 1
                response: Response = errors(
                    403, "Unauthorized", DENIED,
                    "The access token you provided has expired." if expires is not None
                    else "The access token you provided is revoked, malformed or invalid.")
            elif limited and not sim.take():
                state.limited += 1
                response = errors(429, "QuotaExceeded",
                                  "You exceeded your quota for the requested resource.")
            elif refused := await state.gate():
                response = refused
            else:
                response = await endpoint(request)
                if response.status_code < 300:
                    response.headers["x-amzn-RateLimit-Limit"] = f"{sim.rate:g}"
            response.headers["x-amzn-RequestId"] = request_id
            return response

        return run

    async def token(request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode("latin-1")).items()}
        if form.get("client_id") != sim.client_id or form.get(
                "client_secret") != sim.client_secret:
            return JSONResponse({"error": "invalid_client",
                                 "error_description": "Client authentication failed"},
                                status_code=401)
        if form.get("grant_type") != "refresh_token":
            return JSONResponse({"error": "unsupported_grant_type",
                                 "error_description": "The authorization grant type is not "
                                                      "supported by the authorization server"},
                                status_code=400)
        if form.get("refresh_token") != sim.refresh_token:
            return JSONResponse({"error": "invalid_grant",
                                 "error_description": "The request has an invalid grant "
                                                      "parameter : refresh_token"},
                                status_code=400)
        issued = "Atza|" + secrets.token_urlsafe(48)
        with sim._lock:
            sim.tokens[issued] = time.monotonic() + sim.token_ttl_s
            sim.refreshes += 1
        return JSONResponse({"access_token": issued, "refresh_token": sim.refresh_token,
                             "token_type": "bearer", "expires_in": sim.token_ttl_s})

    def listing_params(request: Request) -> Response | None:
        if request.path_params["seller_id"] != sim.seller_id or request.query_params.get(
                "marketplaceIds") != sim.marketplace_id:
            return errors(400, "BAD_REQUEST", "Invalid input", "Invalid input")
        return None

    def invalid(sku: str, message: str, attributes: list[str]) -> JSONResponse:
        return JSONResponse({"sku": sku, "status": "INVALID",
                             "submissionId": uuid.uuid4().hex, "issues": [{
                                 "code": "90000900", "message": message, "severity": "ERROR",
                                 "attributeNames": attributes,
                                 "categories": ["INVALID_ATTRIBUTE"]}]})

    async def patch(request: Request) -> Response:
        if bad := listing_params(request):
            return bad
        sku = request.path_params["sku"]
        try:
            body = json.loads(await request.body())
            patches = body["patches"]
            if not isinstance(body.get("productType"), str) or not isinstance(
                    patches, list) or not patches:
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return errors(400, "BAD_REQUEST", "Invalid input", "Invalid input")
        sim.patches.append({"sku": sku, **body})
        if sim.listed_skus is not None and sku not in sim.listed_skus:
            return invalid(sku, "The attributes are invalid.", [])
        quantity = None
        for op in patches:
            if not isinstance(op, dict) or op.get("op") not in PATCH_OPS or not isinstance(
                    op.get("path"), str):
                return errors(400, "BAD_REQUEST", "Invalid input", "Invalid input")
            if op["path"] != FULFILLMENT_PATH:
                continue
            for value in op.get("value") or []:
                code = value.get("fulfillment_channel_code") if isinstance(value, dict) else None
                given = value.get("quantity") if isinstance(value, dict) else None
                if not code or (given is not None and (
                        not isinstance(given, int) or isinstance(given, bool) or given < 0)):
                    return invalid(sku, "The attributes are invalid.",
                                   ["fulfillment_availability"])
                if code == "DEFAULT" and given is not None:
                    quantity = given
        if quantity is not None:
            with state.counts_lock:
                state.store(sku, sim.location, quantity)
            state.writes += 1
        return JSONResponse({"sku": sku, "status": "ACCEPTED",
                             "submissionId": uuid.uuid4().hex, "issues": []})

    async def get_item(request: Request) -> Response:
        if bad := listing_params(request):
            return bad
        sku = request.path_params["sku"]
        if (sim.listed_skus is not None and sku not in sim.listed_skus) or (
                sim.listed_skus is None and (sku, sim.location) not in state.counts):
            return errors(404, "NOT_FOUND", f"SKU '{sku}' not found in marketplace "
                                            f"{sim.marketplace_id}")
        count = state.counts.get((sku, sim.location))
        availability = [{"fulfillmentChannelCode": "DEFAULT", "quantity": count}] if (
            count is not None) else []
        return JSONResponse({"sku": sku, "fulfillmentAvailability": availability})

    async def order(request: Request) -> Response:
        found = sim.orders.get(request.path_params["order_id"])
        if found is None:
            return errors(404, "InvalidInput", "Invalid Input")
        return JSONResponse({"payload": {
            "AmazonOrderId": request.path_params["order_id"],
            "OrderStatus": found["OrderStatus"],
            "FulfillmentChannel": found.get("FulfillmentChannel", "MFN"),
            "MarketplaceId": found.get("MarketplaceId", sim.marketplace_id)}})

    async def order_items(request: Request) -> Response:
        found = sim.orders.get(request.path_params["order_id"])
        if found is None:
            return errors(404, "InvalidInput", "Invalid Input")
        return JSONResponse({"payload": {"AmazonOrderId": request.path_params["order_id"],
                                         "OrderItems": found["OrderItems"]}})

    async def no_route(request: Request) -> Response:
        return errors(404, "NotFound", "Resource not found")

    def route(path: str, endpoint: Endpoint, methods: list[str]) -> Route:
        return Route(path, recorded(state, endpoint), methods=methods)

    item = "/listings/2021-08-01/items/{seller_id}/{sku:path}"  # a SKU may hold "/" (escaped)
    return [route("/auth/o2/token", token, ["POST"]),
            route(item, sp_api(patch), ["PATCH"]),
            route(item, sp_api(get_item), ["GET"]),
            # getOrder and getOrderItems: 0.5/s with a burst of 30, never reached by a test
            route("/orders/v0/orders/{order_id}", sp_api(order, limited=False), ["GET"]),
            route("/orders/v0/orders/{order_id}/orderItems", sp_api(order_items, limited=False),
                  ["GET"]),
            route("/{path:path}", no_route, ["GET", "POST", "PUT", "PATCH", "DELETE"])]
