"""Simulated generic JSON channel (kind 'standard')."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from workers.simulators.state import ChannelState


def routes(state: ChannelState) -> list[Route]:
    async def inventory(request: Request) -> Response:
        if refused := await state.gate():
            return refused
        sku = request.path_params["sku"]
        if request.method == "PUT":
            body = await request.json()
            loc = str(body.get("location", ""))
            state.store(sku, loc, int(body["available"]))
            state.writes += 1
        else:
            loc = request.query_params.get("location", "")
        return JSONResponse({"sku": sku, "location": loc,
                             "available": state.counts.get((sku, loc))})

    return [Route("/inventory/{sku}", inventory, methods=["GET", "PUT"])]
