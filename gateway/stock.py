"""Stock reads and operator changes: per-SKU view, adjust (receipts, counts, damage), bulk
adjust, and the SKU's policy (safety buffer, backorder, limits)."""

from __future__ import annotations

import asyncio

import msgspec
from starlette.requests import Request
from starlette.routing import Route

from gateway.auth import authenticate
from gateway.http import JSONReply, path_sku, read_json
from gateway.replies import BulkLineResult, BulkReply, replay_headers
from stockgate import errors
from stockgate.bundles import Bundles
from stockgate.models import AdjustRequest, BulkAdjustLine, BulkAdjustRequest, PolicyRequest
from stockgate.stock import StockEngine

_encode = msgspec.json.Encoder().encode


async def read_stock(request: Request) -> JSONReply:
    principal = authenticate(request, "storefront")
    engine = request.app.state.engine
    sku = path_sku(request)
    try:
        view = await engine.stock(principal.tenant, sku)
    except errors.UnknownSku:
        # A bundle has no cells: its stock is derived from its components'.
        view = await Bundles(engine).view(principal.tenant, sku)
    return JSONReply(view)


async def _adjust(engine: StockEngine, tenant: str, sku: str,
                  body: AdjustRequest | BulkAdjustLine) -> tuple[msgspec.Struct, bool]:
    return await engine.adjust(
        tenant, sku, reason=body.reason, idempotency_key=body.idempotency_key,
        location=body.location, delta=body.delta, set_on_hand=body.set_on_hand,
        unavailable_delta=body.unavailable_delta)


async def adjust_stock(request: Request) -> JSONReply:
    principal = authenticate(request, "operator")
    sku = path_sku(request)
    body = await read_json(request, AdjustRequest)
    state = request.app.state
    with state.metrics.script("adjust"):
        reply, replayed = await _adjust(state.engine, principal.tenant, sku, body)
    return JSONReply({"sku": reply.sku, "location": reply.location, "after": reply.after},
                     headers=replay_headers(replayed))


async def bulk_adjust(request: Request) -> JSONReply:
    """Every line is its own adjust with its own idempotency key: a failed line does not undo
    the others, and retrying the whole call re-applies nothing that already went through."""
    principal = authenticate(request, "operator")
    body = await read_json(request, BulkAdjustRequest)
    engine = request.app.state.engine
    # Issued together, the adjusts leave in a few pipelines (the engine batches per tick).
    outcomes = await asyncio.gather(
        *(_adjust(engine, principal.tenant, line.sku, line) for line in body.lines),
        return_exceptions=True)
    results: list[BulkLineResult] = []
    failed = 0
    for index, (line, outcome) in enumerate(zip(body.lines, outcomes, strict=True)):
        if isinstance(outcome, errors.StoreUnavailable):
            raise outcome  # all or nothing is unknowable: let the caller retry the call
        if isinstance(outcome, errors.StockgateError):
            failed += 1
            results.append(BulkLineResult(index, line.sku, outcome.status, error=outcome.body()))
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            reply, _ = outcome
            results.append(BulkLineResult(index, line.sku, 200, result=msgspec.Raw(
                _encode(reply))))
    return JSONReply(BulkReply(applied=len(results) - failed, failed=failed, results=results))


async def set_policy(request: Request) -> JSONReply:
    principal = authenticate(request, "operator")
    sku = path_sku(request)
    body = await read_json(request, PolicyRequest)
    state = request.app.state
    with state.metrics.script("policy"):
        reply = await state.engine.set_policy(
            principal.tenant, sku, location=body.location, safety=body.safety,
            backorder_limit=body.backorder_limit, low_stock_threshold=body.low_stock_threshold,
            max_per_customer=body.max_per_customer, preorder_limit=body.preorder_limit)
    return JSONReply(reply)


routes = [
    Route("/v1/stock/bulk", bulk_adjust, methods=["POST"]),
    Route("/v1/stock/{sku:sku}/adjust", adjust_stock, methods=["POST"]),
    Route("/v1/stock/{sku:sku}/policy", set_policy, methods=["PUT"]),
    Route("/v1/stock/{sku:sku}", read_stock, methods=["GET"]),
]
