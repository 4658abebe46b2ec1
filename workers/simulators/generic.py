"""Simulated generic JSON channel (kind 'standard'). The SKU is read from the path as sent
(one percent-encoded segment), as a server routing on the raw path does: a SKU holding "/"
stays one SKU, and a path of more segments is another endpoint (404)."""

from __future__ import annotations

from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from workers.simulators.state import ChannelState, recorded

ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def routes(state: ChannelState) -> list[Route]:
    async def inventory(request: Request) -> Response:
        raw: bytes = request.scope.get("raw_path") or request.url.path.encode()
        segment = raw.decode("latin-1").removeprefix("/inventory/")
        if request.method not in ("GET", "PUT") or "/" in segment or not segment:
            return JSONResponse({"error": "not found"}, status_code=404)
        if refused := await state.gate():
            return refused
        sku = unquote(segment)
        if request.method == "PUT":
            body = await request.json()
            loc = str(body.get("location", ""))
            state.store(sku, loc, int(body["available"]))
            state.writes += 1
        else:
            loc = request.query_params.get("location", "")
        return JSONResponse({"sku": sku, "location": loc,
                             "available": state.counts.get((sku, loc))})

    async def no_route(request: Request) -> Response:
        return JSONResponse({"error": "not found"}, status_code=404)

    return [Route("/inventory/{sku:path}", recorded(state, inventory), methods=ALL_METHODS),
            Route("/{path:path}", recorded(state, no_route), methods=ALL_METHODS)]
