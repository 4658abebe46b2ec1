"""Per-channel allocation rules of a SKU: PUT sets what one channel is shown of it, DELETE
falls back to the channel's default (stockgate/allocation.py)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from gateway.auth import authenticate
from gateway.http import JSONReply, path_sku, read_json
from stockgate.allocation import AllocationRule


async def set_allocation(request: Request) -> JSONReply:
    """PUT sets the SKU's rule for the channel; DELETE removes it (its default applies)."""
    principal = authenticate(request, "operator")
    sku = path_sku(request)
    rule = (await read_json(request, AllocationRule)
            if request.method == "PUT" else None)
    state = request.app.state
    with state.metrics.script("allocation"):
        reply = await state.engine.set_allocation(principal.tenant, sku,
                                                  request.path_params["channel_id"], rule)
    return JSONReply(reply)


routes = [
    Route("/v1/stock/{sku:sku}/channels/{channel_id}", set_allocation,
          methods=["PUT", "DELETE"]),
]
