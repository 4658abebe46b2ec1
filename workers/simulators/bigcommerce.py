"""Simulated BigCommerce inventory, catalog and orders APIs, with the documented semantics
of the calls Stockgate makes.

- PUT /v3/inventory/adjustments/absolute sets many (location, variant) levels in one call,
  at most 2000 items ("Limit of 2000 items for payload length", reference/inventory.v3.yml in
  bigcommerce/docs). One bad item refuses the whole request with a 422 problem body
  {"status", "title", "type", "errors"} whose title names what was refused, e.g.
  "Location not found, identities: [3,2]" or "[Item with variant_id 106 is tracked by
  product, ...]"; nothing is applied. What BigCommerce answers past 2000 items is not
  documented: this answers 422 too.
- Every response carries X-Rate-Limit-Time-Window-Ms, X-Rate-Limit-Time-Reset-Ms,
  X-Rate-Limit-Requests-Quota and X-Rate-Limit-Requests-Left from a per-window quota; a call
  past it is a 429 with X-Rate-Limit-Time-Reset-Ms
  (https://developer.bigcommerce.com/docs/start/best-practices/api-rate-limits).
- GET /v3/inventory/items filters by variant_id:in, location_id:in and sku:in (comma lists)
  and answers {"data": [{"identity", "locations": [...]}], "meta": {"pagination"}}.
- GET /v3/catalog/variants?sku= finds a variant by SKU.
- Location 1 is the store's default location (every store has it)."""

from __future__ import annotations

import json
import math
import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from workers.simulators.state import ChannelState, Endpoint, recorded

ITEMS_LIMIT = 2000
QUANTITY_MAX = 2_147_483_647
STATUS_CODES_URL = "https://developer.bigcommerce.com/api-docs/getting-started/api-status-codes"
ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def problem(status: int, title: str) -> JSONResponse:
    return JSONResponse({"status": status, "title": title, "type": STATUS_CODES_URL,
                         "errors": {}}, status_code=status)


def _ids(value: str) -> list[str]:
    return [str(int(v)) for v in value.split(",") if v.strip().isdigit()]


def routes(state: ChannelState) -> list[Route]:
    window = {"start": time.monotonic(), "used": 0}

    def quota(endpoint: Endpoint) -> Endpoint:
        """The store's request quota around `endpoint`: its headers on every answer."""

        async def run(request: Request) -> Response:
            now = time.monotonic()
            length = state.window_ms / 1000
            if now - window["start"] >= length:
                window["start"], window["used"] = now, 0
            # Rounded up: a client waiting exactly this long is never early.
            reset_ms = max(math.ceil((window["start"] + length - now) * 1000), 1)
            if window["used"] >= state.window_quota:
                state.limited += 1
                response: Response = problem(429, "Too many requests")
            else:
                window["used"] += 1
                response = await endpoint(request)
            response.headers.update({
                "X-Rate-Limit-Time-Window-Ms": str(state.window_ms),
                "X-Rate-Limit-Time-Reset-Ms": str(reset_ms),
                "X-Rate-Limit-Requests-Quota": str(state.window_quota),
                "X-Rate-Limit-Requests-Left": str(max(state.window_quota - window["used"], 0))})
            return response

        return run

    def variant_of(sku: str) -> str | None:
        if sku not in state.sku_items and state.mint_unknown_skus and sku:
            state.mint(sku)
        return state.sku_items.get(sku)

    def stocked_at(variants: list[str]) -> list[str]:
        """Ids of the locations holding a count of any of `variants`."""
        ids = {name: location for location, name in state.location_names.items()}
        keys = {state.key(v) for v in variants}
        return sorted({ids.get(loc, loc) for item, loc in state.counts if item in keys})

    def location_known(location: str) -> bool:
        return state.known_locations is None or location in state.known_locations

    async def absolute(request: Request) -> Response:
        if refused := await state.gate():
            return refused
        try:
            body = json.loads(await request.body())
            items = body["items"]
            if not isinstance(items, list):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return problem(422, "Payload contains invalid fields")
        limit = state.batch_items_limit or ITEMS_LIMIT
        if len(items) > limit:
            return problem(422, f"Payload contains more than {limit} items")
        lines, bad_locations, bad_variants = [], [], []
        for item in items:
            location, variant, quantity = (item.get("location_id"), item.get("variant_id"),
                                           item.get("quantity"))
            if not all(isinstance(v, int) for v in (location, variant, quantity)) or not (
                    0 <= quantity <= QUANTITY_MAX):
                return problem(422, "Payload contains invalid fields")
            if not location_known(str(location)):
                bad_locations.append(location)
            elif not state.knows(str(variant)):
                bad_variants.append(variant)
            lines.append((str(variant), str(location), quantity))
        if bad_locations:
            return problem(422, "Location not found, identities: [{}]".format(
                ",".join(map(str, bad_locations))) if state.name_refused_items
                else "The adjustment was not valid")
        if bad_variants:
            return problem(422, "Items with identity: [{}] not found".format(
                ", ".join(f"variant_id {v}" for v in bad_variants))
                if state.name_refused_items else "The adjustment was not valid")
        for variant, location, quantity in lines:
            state.store(state.key(variant), state.location_key(location), quantity)
        state.writes += 1
        return JSONResponse({"transaction_id": str(uuid.uuid4())})

    async def inventory_items(request: Request) -> Response:
        if refused := await state.gate():
            return refused
        params = request.query_params
        if "sku:in" in params:
            variants = [v for sku in params["sku:in"].split(",") if (v := variant_of(sku))]
        else:
            variants = [v for v in _ids(params.get("variant_id:in", "")) if state.knows(v)]
        locations = _ids(params.get("location_id:in", "")) or stocked_at(variants)
        limit = int(params.get("limit", "50"))
        page = int(params.get("page", "1"))
        shown = variants[(page - 1) * limit:page * limit]
        data = []
        for variant in shown:
            at = []
            for location in locations:
                count = state.counts.get((state.key(variant), state.location_key(location)))
                if count is not None and location.isdigit():
                    at.append({"location_id": int(location), "available_to_sell": count,
                               "total_inventory_onhand": count})
            data.append({"identity": {"sku": state.sku_of(variant), "variant_id": int(variant),
                                      "product_id": int(variant)},
                         "locations": at})
        return JSONResponse({"data": data, "meta": {"pagination": {
            "total": len(variants), "count": len(shown), "per_page": limit,
            "current_page": page, "total_pages": max(-(-len(variants) // limit), 1)}}})

    async def catalog_variants(request: Request) -> Response:
        if refused := await state.gate():
            return refused
        variant = variant_of(request.query_params.get("sku", ""))
        data = [] if variant is None else [
            {"id": int(variant), "product_id": int(variant), "sku": state.sku_of(variant)}]
        return JSONResponse({"data": data, "meta": {"pagination": {
            "total": len(data), "count": len(data), "per_page": 50, "current_page": 1,
            "total_pages": 1}}})

    async def order(request: Request) -> Response:
        if refused := await state.gate():
            return refused
        order = state.orders.get(request.path_params["order_id"])
        if order is None:
            return JSONResponse({"status": 404}, status_code=404)
        return JSONResponse({"id": request.path_params["order_id"],
                             "status_id": order["status_id"]})

    async def products(request: Request) -> Response:
        if refused := await state.gate():
            return refused
        order = state.orders.get(request.path_params["order_id"])
        if order is None:
            return JSONResponse({"status": 404}, status_code=404)
        return JSONResponse(order["products"])

    async def no_route(request: Request) -> Response:
        return problem(404, "The requested resource was not found")

    def route(path: str, endpoint: Any, methods: list[str]) -> Route:
        return Route(path, recorded(state, quota(endpoint)), methods=methods)

    return [route("/v3/inventory/adjustments/absolute", absolute, ["PUT"]),
            route("/v3/inventory/items", inventory_items, ["GET"]),
            route("/v3/catalog/variants", catalog_variants, ["GET"]),
            route("/v2/orders/{order_id}", order, ["GET"]),
            route("/v2/orders/{order_id}/products", products, ["GET"]),
            route("/{path:path}", no_route, ALL_METHODS)]
