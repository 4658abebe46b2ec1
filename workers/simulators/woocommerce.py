"""Simulated WooCommerce REST API."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from workers.simulators.state import ChannelState


def routes(state: ChannelState) -> list[Route]:
    async def product(request: Request) -> Response:
        if refused := await state.gate():
            return refused
        p = request.path_params
        item = f"{p['product']}/{p['variation']}" if "variation" in p else p["product"]
        if request.method == "PUT":
            body = await request.json()
            state.store(item, "", int(body["stock_quantity"]))
            state.writes += 1
        return JSONResponse({"id": item, "manage_stock": True,
                             "stock_quantity": state.counts.get((item, ""))})

    return [Route("/products/{product}", product, methods=["GET", "PUT"]),
            Route("/products/{product}/variations/{variation}", product,
                  methods=["GET", "PUT"])]
