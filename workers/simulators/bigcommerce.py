"""Simulated BigCommerce inventory and orders APIs."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from workers.simulators.state import ChannelState


def routes(state: ChannelState) -> list[Route]:
    async def absolute(request: Request) -> Response:
        if refused := await state.gate():
            return refused
        body = await request.json()
        for item in body["items"]:
            state.store(str(item["variant_id"]), str(item["location_id"]),
                        int(item["quantity"]))
        state.writes += 1
        return JSONResponse({"transaction_id": str(time.time_ns())})

    async def items(request: Request) -> Response:
        if refused := await state.gate():
            return refused
        item = request.query_params["variant_id:in"]
        loc = request.query_params["location_id:in"]
        data = [] if (item, loc) not in state.counts else [{
            "identity": {"variant_id": item},
            "locations": [{"location_id": loc, "available_to_sell": state.counts[item, loc]}]}]
        return JSONResponse({"data": data})

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

    return [Route("/v3/inventory/adjustments/absolute", absolute, methods=["PUT"]),
            Route("/v3/inventory/items", items, methods=["GET"]),
            Route("/v2/orders/{order_id}", order, methods=["GET"]),
            Route("/v2/orders/{order_id}/products", products, methods=["GET"])]
