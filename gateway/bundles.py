"""Bundles (kits): define, read and delete a bundle; its derived stock is on GET."""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from gateway.auth import authenticate
from gateway.http import JSONReply, path_sku, read_json
from gateway.replies import replay_headers
from stockgate.bundles import Bundles
from stockgate.models import BundleRequest


def _bundles(request: Request) -> Bundles:
    return Bundles(request.app.state.engine)


async def put_bundle(request: Request) -> JSONReply:
    principal = authenticate(request, "operator")
    sku = path_sku(request)
    body = await read_json(request, BundleRequest)
    with request.app.state.metrics.script("bundle"):
        reply, unchanged = await _bundles(request).put(principal.tenant, sku, body.components)
    return JSONReply(reply, headers=replay_headers(unchanged))


async def get_bundle(request: Request) -> JSONReply:
    principal = authenticate(request, "operator")
    return JSONReply(await _bundles(request).view(principal.tenant, path_sku(request)))


async def delete_bundle(request: Request) -> JSONReply:
    principal = authenticate(request, "operator")
    sku = path_sku(request)
    with request.app.state.metrics.script("bundle"):
        reply = await _bundles(request).delete(principal.tenant, sku)
    return JSONReply(reply)


routes = [
    Route("/v1/bundles/{sku:sku}", put_bundle, methods=["PUT"]),
    Route("/v1/bundles/{sku:sku}", get_bundle, methods=["GET"]),
    Route("/v1/bundles/{sku:sku}", delete_bundle, methods=["DELETE"]),
]
