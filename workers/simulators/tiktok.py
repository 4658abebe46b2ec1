"""Simulated TikTok Shop Partner API (202309 versions) and its token endpoint, one server for
both (the channel's `auth_url` and `api_url` are the simulator's address).

What it checks and answers, each as workers/adapters/tiktok.py's docstring cites it: the
token refresh (GET /api/v2/token/refresh), the signature of every API call (`sign` over path,
sorted query and body, wrapped in the app secret; 106001 with HTTP 401 otherwise), the
`x-tts-access-token` header (105002 when expired, HTTP 401; the HTTP status of that error is
not on the pages quoted: 401 as TikTok answers its other credential errors), the timestamp
(within 5 minutes, 36009004), Update Inventory with its per-SKU `errors` (the documented
sample's codes: 12052990 "Check failed" with 12052097 "The warehouse does not exist"),
Inventory Search, Get Order Detail, Search Returns, and the rate limit (36009002, HTTP 429,
no Retry-After: TikTok documents none) and internal errors (36009003, HTTP 500).

Catalogue: `state.sku_items` maps a SKU to "<product_id>/<sku_id>"; with `state.known_items`
None every decimal id exists, else only those. Counts are kept under the SKU (state.aliases)
and the warehouse's location name (state.location_names), as the other simulators do.
Orders: `state.orders[order_id]` = {"status", "line_items": [{"sku_id", "product_id",
"seller_sku", "display_status", "package_id"}], and optionally "create_time" (default: when
first read) and "update_time" (default: now), Unix seconds}.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import re
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from workers.simulators.state import ChannelState, recorded

APP_KEY = "sim-app-key"
APP_SECRET = "sim-app-secret"
REFRESH_TOKEN = "TTP_sim_refresh"
SHOP_CIPHER = "ROW_sim_cipher"
# The id its webhooks carry (the demo's locust user signs bodies for it).
SHOP_ID = "7495540735365777507"
TOKEN_TTL_S = 7 * 86_400  # TikTok's access tokens live days; tests shorten it
TIMESTAMP_WINDOW_S = 300
_ID = re.compile(r"[0-9]{1,24}")
_ids = itertools.count(1)


def sign(app_secret: str, path: str, params: dict[str, str], body: bytes) -> str:
    base = path + "".join(f"{k}{v}" for k, v in sorted(params.items())
                          if k not in ("sign", "access_token"))
    wrapped = app_secret.encode() + base.encode() + body + app_secret.encode()
    return hmac.new(app_secret.encode(), wrapped, hashlib.sha256).hexdigest()


def envelope(data: Any = None, code: int = 0, message: str = "Success",
             status: int = 200) -> JSONResponse:
    return JSONResponse({"code": code, "message": message, "data": data,
                         "request_id": f"SIM{next(_ids):020d}"}, status_code=status)


class TikTokSim:
    """The simulator's own knobs, kept on the shared ChannelState as `state.tiktok`."""

    def __init__(self) -> None:
        self.app_key = APP_KEY
        self.app_secret = APP_SECRET
        self.refresh_token = REFRESH_TOKEN
        self.shop_cipher = SHOP_CIPHER
        self.token_ttl_s = TOKEN_TTL_S
        # access token -> its expiry (Unix time)
        self.tokens: dict[str, float] = {}
        self.refreshes = 0
        self.bad_signatures = 0
        # order id -> its returns as Search Returns shows them ({"return_id", "return_type",
        # "return_status", "return_line_items": [{"sku_id", "seller_sku"}]})
        self.returns: dict[str, list[dict[str, Any]]] = {}

    def expire_all(self) -> None:
        """Every token issued so far is expired from now on (as after its life ran out)."""
        for token in self.tokens:
            self.tokens[token] = 0.0


def sim_of(state: ChannelState) -> TikTokSim:
    sim = getattr(state, "tiktok", None)
    if sim is None:
        sim = TikTokSim()
        state.tiktok = sim  # type: ignore[attr-defined]
    return sim


def routes(state: ChannelState) -> list[Route]:
    sim = sim_of(state)

    async def refresh(request: Request) -> Response:
        if refused := await _gate(state):
            return refused
        q = request.query_params
        if (q.get("app_key") != sim.app_key or q.get("app_secret") != sim.app_secret
                or q.get("grant_type") != "refresh_token"):
            return envelope(None, 36004004, "Invalid credentials. The app_key or app_secret "
                            "is invalid.")  # the code TikTok uses for app credentials
        if q.get("refresh_token") != sim.refresh_token:
            return envelope(None, 36004004, "Invalid refresh_token.")
        sim.refreshes += 1
        token = f"TTP_sim_{next(_ids)}"
        expires = int(time.time() + sim.token_ttl_s)
        sim.tokens[token] = expires
        # The documented sample's fields (authorization-overview-202407).
        return envelope({"access_token": token, "access_token_expire_in": expires,
                         "refresh_token": sim.refresh_token,
                         "refresh_token_expire_in": int(time.time()) + 365 * 86_400,
                         "open_id": "7010736057180325637", "seller_name": "Sim Seller",
                         "seller_base_region": "US", "user_type": 0,
                         "granted_scopes": ["seller.product.basic", "seller.order.info"]},
                        message="success")

    async def checked(request: Request, body: bytes) -> Response | None:
        """The checks every API call passes before it is served."""
        if refused := await _gate(state):
            return refused
        q = dict(request.query_params)
        if q.get("app_key") != sim.app_key:
            return envelope(None, 36009004,
                            "Invalid credentials. Invalid `app_key` query parameter.", 400)
        try:
            stamp = int(q.get("timestamp", ""))
        except ValueError:
            stamp = -1
        if abs(time.time() - stamp) > TIMESTAMP_WINDOW_S:
            return envelope(None, 36009004, "Invalid timestamp. The value of the `timestamp` "
                            "query parameter must not be earlier than 5 minutes before the "
                            "current time.", 400)
        expected = sign(sim.app_secret, request.url.path, q, body)
        if not hmac.compare_digest(expected, q.get("sign", "")):
            sim.bad_signatures += 1
            return envelope(None, 106001,
                            "Invalid credentials. The `sign` query parameter is invalid.", 401)
        token = request.headers.get("x-tts-access-token", "")
        if token not in sim.tokens:
            return envelope(None, 36009004, "Invalid credentials. The `x-tts-access-token` "
                            "header is invalid.", 401)
        if sim.tokens[token] <= time.time():
            return envelope(None, 105002, "Expired credentials. The `access_token` or "
                            "`x-tts-access-token` header has expired.", 401)
        if q.get("shop_cipher") != sim.shop_cipher:
            return envelope(None, 106013, "Missing identifier. The `shop_cipher` query "
                            "parameter is required to identify the target shop.", 400)
        return None

    def item_exists(item: str) -> bool:
        product, _, sku = item.partition("/")
        return bool(_ID.fullmatch(product) and _ID.fullmatch(sku)) and state.knows(item)

    def warehouse_exists(warehouse: str) -> bool:
        return bool(_ID.fullmatch(warehouse)) and (
            state.known_locations is None or warehouse in state.known_locations)

    async def update_inventory(request: Request) -> Response:
        raw = await request.body()
        if refused := await checked(request, raw):
            return refused
        product = str(request.path_params["product_id"])
        try:
            body = json.loads(raw)
            skus = body["skus"]
            assert isinstance(skus, list)
        except (ValueError, KeyError, AssertionError):
            return envelope(None, 36009004, "Invalid parameter. `skus` is required.", 400)
        if not any(item_exists(f"{product}/{s.get('id')}") for s in skus
                   if isinstance(s, dict)) and state.known_items is not None:
            return envelope(None, 12052032, "The product does not exist")
        for entry in skus:
            cells = entry.get("inventory") if isinstance(entry, dict) else None
            if not isinstance(cells, list) or not cells:
                return envelope(None, 36009004, "Invalid parameter. Each of `skus` needs its "
                                "`inventory`.", 400)
            if any(not isinstance(c, dict) or not isinstance(c.get("quantity"), int)
                   or c["quantity"] < 0 for c in cells):
                # Refused whole, before anything is applied.
                return envelope(None, 12019024, "stock count is invalid")
        errors, applied = [], False
        with state.counts_lock:
            for entry in skus:
                sku_id = str(entry.get("id", "")) if isinstance(entry, dict) else ""
                item = f"{product}/{sku_id}"
                if not sku_id:
                    errors.append({"code": 12052036, "message": "The SKU ID is necessary",
                                   "detail": {"sku_id": "", "extra_errors": []}})
                    continue
                cells = entry["inventory"]
                if not item_exists(item):
                    errors.append({"code": 12052990, "message": "Check failed",
                                   "detail": {"sku_id": sku_id, "extra_errors": []}})
                    continue
                bad = [c for c in cells if not warehouse_exists(str(c.get("warehouse_id")))]
                if bad:
                    errors.append({"code": 12052990, "message": "Check failed", "detail": {
                        "sku_id": sku_id, "extra_errors": [
                            {"warehouse_id": str(c.get("warehouse_id")), "code": 12052097,
                             "message": "The warehouse does not exist"} for c in bad]}})
                    continue
                for cell in cells:
                    state.store(state.key(item), state.location_key(str(cell["warehouse_id"])),
                                int(cell["quantity"]))
                    applied = True
        if applied:
            state.writes += 1
        return envelope({"errors": errors} if errors else {})

    async def inventory_search(request: Request) -> Response:
        raw = await request.body()
        if refused := await checked(request, raw):
            return refused
        try:
            sku_ids = [str(s) for s in json.loads(raw).get("sku_ids") or []]
        except (ValueError, AttributeError):
            return envelope(None, 36009004, "Invalid parameter.", 400)
        names = {loc: wh for wh, loc in state.location_names.items()}
        products: dict[str, list[dict[str, Any]]] = {}
        for item in list(state.sku_items.values()):
            product, _, sku_id = item.partition("/")
            if sku_id not in sku_ids:
                continue
            cells = [{"warehouse_id": names.get(loc, loc), "available_quantity": qty,
                      "committed_quantity": 0}
                     for (key, loc), qty in list(state.counts.items()) if key == state.key(item)]
            products.setdefault(product, []).append({
                "id": sku_id, "seller_sku": state.sku_of(item),
                "total_available_quantity": sum(c["available_quantity"] for c in cells),
                "warehouse_inventory": cells})
        return envelope({"inventory": [{"product_id": p, "skus": s}
                                       for p, s in products.items()]})

    async def order_detail(request: Request) -> Response:
        if refused := await checked(request, b""):
            return refused
        ids = [i for i in request.query_params.get("ids", "").split(",") if i]
        if not ids or len(ids) > 50:
            return envelope(None, 36009004, "Invalid parameter. `ids` takes 1 to 50 ids.", 400)
        orders = []
        for order_id in ids:
            found = state.orders.get(order_id)
            if found is None:
                continue
            lines = [{"id": f"{order_id}{n:03d}", "currency": "USD", **li}
                     for n, li in enumerate(found.get("line_items", []))]
            orders.append({"id": order_id, "status": found["status"],
                           # An order given no create time was placed when first read:
                           # a fixed old one would be past the return window (stale).
                           "create_time": found.setdefault("create_time", int(time.time())),
                           "update_time": found.get("update_time", int(time.time())),
                           "fulfillment_type": found.get("fulfillment_type",
                                                         "FULFILLMENT_BY_SELLER"),
                           "line_items": lines})
        return envelope({"orders": orders})

    async def search_returns(request: Request) -> Response:
        raw = await request.body()
        if refused := await checked(request, raw):
            return refused
        try:
            order_ids = [str(i) for i in json.loads(raw).get("order_ids") or []]
        except (ValueError, AttributeError):
            return envelope(None, 36009004, "Invalid parameter.", 400)
        found = [{"order_id": order_id, "role": "BUYER", "create_time": 1619611561,
                  "update_time": int(time.time()),
                  **{k: v for k, v in ret.items() if k != "return_line_items"},
                  "return_line_items": [
                      {"return_line_item_id": f"{ret['return_id']}{n:03d}",
                       "order_line_item_id": f"{order_id}{n:03d}", **li}
                      for n, li in enumerate(ret.get("return_line_items", []))]}
                 for order_id in order_ids for ret in sim.returns.get(order_id, [])]
        return envelope({"return_orders": found, "total_count": len(found),
                         "next_page_token": ""})

    async def sim_order(request: Request) -> Response:
        """Not TikTok's: the demo places (or re-states) an order here before it sends the
        order's webhook, as a shopper's checkout on TikTok would. Body {"order_id", "status",
        "lines": [{"sku", "qty"}]}; each unit becomes a line item of the SKU's ids."""
        body = json.loads(await request.body())
        order_id = str(body["order_id"])
        items = []
        for ln in body.get("lines") or []:
            item = state.sku_items.get(str(ln["sku"])) or state.mint(str(ln["sku"]))
            product, _, sku_id = item.partition("/")
            items += [{"product_id": product, "sku_id": sku_id, "seller_sku": str(ln["sku"]),
                       "display_status": body["status"], "package_id": ""}
                      ] * int(ln.get("qty", 1))
        if order_id in state.orders and not items:
            state.orders[order_id]["status"] = str(body["status"])
        else:
            state.orders[order_id] = {"status": str(body["status"]), "line_items": items}
        return JSONResponse({})

    def route(path: str, endpoint: Any, methods: list[str]) -> Route:
        return Route(path, recorded(state, endpoint), methods=methods)

    return [route("/api/v2/token/refresh", refresh, ["GET"]),
            route("/product/202309/products/{product_id}/inventory/update", update_inventory,
                  ["POST"]),
            route("/product/202309/inventory/search", inventory_search, ["POST"]),
            route("/order/202309/orders", order_detail, ["GET"]),
            route("/return_refund/202309/returns/search", search_returns, ["POST"]),
            route("/_sim/orders", sim_order, ["POST"])]


async def _gate(state: ChannelState) -> Response | None:
    """The shared knobs (delay, rate limit, failures) in TikTok's own error shapes."""
    refused = await state.gate()
    if refused is None:
        return None
    if refused.status_code == 429:
        return envelope(None, 36009002, "Too many requests. You've made too many requests in "
                        "a short period of time.", 429)
    return envelope(None, 36009003, "Internal error. Please try again. If the issue persists "
                    "after multiple attempts, please contact platform support.", 500)
