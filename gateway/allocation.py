"""Per-channel allocation rules of a SKU: PUT sets what one channel is shown of it, DELETE
falls back to the channel's default (stockgate/allocation.py)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from gateway.auth import authenticate
from gateway.http import JSONReply, path_sku, read_json
from stockgate.allocation import AllocationRule


async def put_allocation(request: Request) -> JSONReply:
    principal = authenticate(request, "operator")
    sku = path_sku(request)
    rule = await read_json(request, AllocationRule)
    state = request.app.state
    with state.metrics.script("allocation"):
        reply = await state.engine.set_allocation(principal.tenant, sku,
                                                  request.path_params["channel_id"], rule)
    return JSONReply(reply)


async def delete_allocation(request: Request) -> JSONReply:
    principal = authenticate(request, "operator")
    sku = path_sku(request)
    state = request.app.state
    with state.metrics.script("allocation"):
        reply = await state.engine.set_allocation(principal.tenant, sku,
                                                  request.path_params["channel_id"], None)
    return JSONReply(reply)


routes = [
    Route("/v1/stock/{sku:sku}/channels/{channel_id}", put_allocation, methods=["PUT"]),
    Route("/v1/stock/{sku:sku}/channels/{channel_id}", delete_allocation, methods=["DELETE"]),
]
