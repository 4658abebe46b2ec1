"""Simulated Shopify inventory API."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from workers.simulators.state import ChannelState


def routes(state: ChannelState) -> list[Route]:
    async def set_level(request: Request) -> Response:
        if refused := await state.gate():
            return refused
        body = await request.json()
        key = (str(body["inventory_item_id"]), str(body["location_id"]))
        state.store(*key, int(body["available"]))
        state.writes += 1
        return JSONResponse({"inventory_level": {
            "inventory_item_id": body["inventory_item_id"], "location_id": body["location_id"],
            "available": state.counts[key]}})

    async def get_levels(request: Request) -> Response:
        if refused := await state.gate():
            return refused
        item, loc = request.query_params["inventory_item_ids"], request.query_params["location_ids"]
        levels = [] if (item, loc) not in state.counts else [
            {"inventory_item_id": item, "location_id": loc, "available": state.counts[item, loc]}]
        return JSONResponse({"inventory_levels": levels})

    return [Route("/inventory_levels/set.json", set_level, methods=["POST"]),
            Route("/inventory_levels.json", get_levels, methods=["GET"])]
