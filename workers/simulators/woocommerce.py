"""Simulated WooCommerce REST API (wc/v3): products and variations, one at a time and in
batches, and the product list filtered by SKU or ids, with the documented batch semantics.

Batch endpoints (POST /products/batch, POST /products/{id}/variations/batch) take at most
`woocommerce_rest_batch_items_limit` items (100 unless the store lowers it) and answer 413
`woocommerce_rest_request_entity_too_large` past it; an update for an id the store does not
have comes back inside the `update` array as `{"id", "error": {"code", "message", "data"}}`
while the others are applied (WC_REST_Controller::batch_items and check_batch_limit,
WC_REST_CRUD_Controller::update_item in woocommerce/woocommerce,
plugins/woocommerce/includes/rest-api/Controllers/Version3/). GET /products?sku= matches
products and variations alike, and splits the value on commas
(WC_REST_Products_Controller::prepare_objects_query)."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from workers.simulators.state import ChannelState, recorded

# https://woocommerce.github.io/woocommerce-rest-api-docs/#batch-update-products
BATCH_ITEMS_LIMIT = 100
# WordPress REST collections accept per_page 1..100.
PER_PAGE_MAX = 100
ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def wp_error(code: str, message: str, status: int) -> JSONResponse:
    """WordPress's error body: {"code", "message", "data": {"status"}}."""
    return JSONResponse({"code": code, "message": message, "data": {"status": status}},
                        status_code=status)


def routes(state: ChannelState) -> list[Route]:
    def body_of(item: str) -> dict[str, Any]:
        parent, _, leaf = item.rpartition("/")
        stock = state.counts.get((state.key(item), ""))
        return {"id": int(leaf), "sku": state.sku_of(item),
                "type": "variation" if parent else "simple",
                "parent_id": int(parent) if parent else 0,
                "manage_stock": stock is not None, "stock_quantity": stock}

    def page_of(request: Request, items: list[str]) -> Response:
        try:
            per_page = int(request.query_params.get("per_page", "10"))
            page = int(request.query_params.get("page", "1"))
        except ValueError:
            return wp_error("rest_invalid_param", "Invalid parameter(s): per_page", 400)
        if not 1 <= per_page <= PER_PAGE_MAX or page < 1:
            return wp_error("rest_invalid_param", "Invalid parameter(s): per_page", 400)
        shown = items[(page - 1) * per_page:page * per_page]
        pages = -(-len(items) // per_page)
        return JSONResponse([body_of(item) for item in shown],
                            headers={"X-WP-Total": str(len(items)),
                                     "X-WP-TotalPages": str(pages)})

    def by_sku(value: str) -> list[str]:
        # As WooCommerce does: the value's comma-separated parts, and the whole value too.
        parts = value.split(",")
        wanted = [*parts, value] if len(parts) > 1 else parts
        if state.mint_unknown_skus:
            for sku in parts:
                if sku and sku not in state.sku_items:
                    state.mint(sku)
        return [item for sku, item in list(state.sku_items.items()) if sku in wanted]

    def by_ids(value: str, parent: str = "") -> list[str]:
        found = []
        for raw in value.split(","):
            if raw.strip().isdigit():
                item = f"{parent}/{int(raw)}" if parent else str(int(raw))
                if state.knows(item):
                    found.append(item)
        return found

    async def product_list(request: Request) -> Response:
        if refused := await state.gate():
            return refused
        params = request.query_params
        if "sku" in params:
            items = by_sku(params["sku"])
        elif "include" in params:
            items = by_ids(params["include"])
        else:
            items = [i for i in state.sku_items.values() if "/" not in i]
        return page_of(request, items)

    async def variation_list(request: Request) -> Response:
        if refused := await state.gate():
            return refused
        parent = str(request.path_params["product"])
        if "include" in request.query_params:
            items = by_ids(request.query_params["include"], parent)
        else:
            items = [i for i in state.sku_items.values() if i.startswith(f"{parent}/")]
        return page_of(request, items)

    async def batch(request: Request) -> Response:
        if refused := await state.gate():
            return refused
        parent = str(request.path_params.get("product", ""))
        try:
            body = json.loads(await request.body())
        except ValueError:
            return wp_error("rest_invalid_json", "Invalid JSON body passed.", 400)
        limit = state.batch_items_limit or BATCH_ITEMS_LIMIT
        if sum(len(body.get(k) or []) for k in ("create", "update", "delete")) > limit:
            return wp_error("woocommerce_rest_request_entity_too_large",
                            f"Unable to accept more than {limit} items for this request.", 413)
        invalid = ("woocommerce_rest_product_variation_invalid_id" if parent
                   else "woocommerce_rest_product_invalid_id")
        updated, applied = [], False
        for entry in body.get("update") or []:
            raw = entry.get("id")
            item = f"{parent}/{raw}" if parent else str(raw)
            if not isinstance(raw, int) or raw <= 0 or not state.knows(item):
                updated.append({"id": raw, "error": {"code": invalid, "message": "Invalid ID.",
                                                     "data": {"status": 400}}})
                continue
            if entry.get("stock_quantity") is not None:
                state.store(state.key(item), "", int(entry["stock_quantity"]))
                applied = True
            updated.append(body_of(item))
        if applied:
            state.writes += 1
        return JSONResponse({"update": updated})

    async def product(request: Request) -> Response:
        if refused := await state.gate():
            return refused
        p = request.path_params
        item = f"{p['product']}/{p['variation']}" if "variation" in p else str(p["product"])
        if not state.knows(item):
            code = ("woocommerce_rest_product_variation_invalid_id" if "variation" in p
                    else "woocommerce_rest_product_invalid_id")
            return wp_error(code, "Invalid ID.", 404 if request.method == "GET" else 400)
        if request.method == "PUT":
            body = await request.json()
            state.store(state.key(item), "", int(body["stock_quantity"]))
            state.writes += 1
        return JSONResponse(body_of(item))

    async def no_route(request: Request) -> Response:
        return wp_error("rest_no_route",
                        "No route was found matching the URL and request method", 404)

    def route(path: str, endpoint: Any, methods: list[str]) -> Route:
        return Route(path, recorded(state, endpoint), methods=methods)

    return [route("/products", product_list, ["GET"]),
            route("/products/batch", batch, ["POST"]),
            route("/products/{product:int}", product, ["GET", "PUT"]),
            route("/products/{product:int}/variations", variation_list, ["GET"]),
            route("/products/{product:int}/variations/batch", batch, ["POST"]),
            route("/products/{product:int}/variations/{variation:int}", product, ["GET", "PUT"]),
            route("/{path:path}", no_route, ALL_METHODS)]
