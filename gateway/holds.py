"""Storefront cart holds: reserve a cart's lines for a TTL, commit it as an order, release it."""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from gateway.auth import authenticate
from gateway.http import Endpoint, JSONReply, path_id, read_json
from gateway.replies import HoldCreated, HoldExtended, replay_headers
from stockgate import errors
from stockgate.models import CommitRequest, ExtendRequest, HoldRequest


async def create_hold(request: Request) -> JSONReply:
    principal = authenticate(request, "storefront")
    body = await read_json(request, HoldRequest)
    state = request.app.state
    metrics = state.metrics
    try:
        with metrics.script("hold"):
            reply, replayed = await state.engine.hold(
                principal.tenant, body.lines, hold_id=body.hold_id, location=body.location,
                ttl_s=body.ttl_s, channel=body.channel or "", customer=body.customer)
    except errors.StockgateError as exc:
        if exc.status in (404, 409):
            metrics.holds["rejected"] += 1
            metrics.rejections[exc.code] += 1
            state.tally.count(principal.tenant, "refusals")
        raise
    metrics.holds["replayed" if replayed else "created"] += 1
    if not replayed:
        state.tally.count(principal.tenant, "holds")
    # A replay answers exactly like the first call (same status, same body).
    return JSONReply(HoldCreated.of(reply), status_code=201, headers=replay_headers(replayed))


async def commit_hold(request: Request) -> JSONReply:
    principal = authenticate(request, "storefront")
    hold_id = path_id(request, "hold_id")
    body = await read_json(request, CommitRequest)
    state = request.app.state
    with state.metrics.script("commit"):
        reply, replayed = await state.engine.commit(principal.tenant, hold_id, body.order_id)
    return JSONReply({"order_id": reply.order_id, "hold_id": reply.hold_id,
                      "lines": [{"sku": ln.sku, "location": ln.location, "qty": ln.qty}
                                for ln in reply.lines]},
                     headers=replay_headers(replayed))


async def release_hold(request: Request) -> JSONReply:
    principal = authenticate(request, "storefront")
    hold_id = path_id(request, "hold_id")
    state = request.app.state
    with state.metrics.script("release"):
        reply, replayed = await state.engine.release(principal.tenant, hold_id)
    return JSONReply({"hold_id": reply.hold_id, "status": reply.status},
                     headers=replay_headers(replayed))


async def extend_hold(request: Request) -> JSONReply:
    """Not keyed for idempotency: the call means "live until at least now + ttl_s, within
    the cap", so a retry lands on the same or a slightly later expiry, never a new hold."""
    principal = authenticate(request, "storefront")
    hold_id = path_id(request, "hold_id")
    body = await read_json(request, ExtendRequest)
    state = request.app.state
    with state.metrics.script("extend"):
        reply = await state.engine.extend(principal.tenant, hold_id, body.ttl_s)
    return JSONReply(HoldExtended.of(reply))


routes = [
    Route("/v1/holds", Endpoint(create_hold), methods=["POST"]),
    Route("/v1/holds/{hold_id}/commit", Endpoint(commit_hold), methods=["POST"]),
    Route("/v1/holds/{hold_id}", Endpoint(release_hold), methods=["DELETE"]),
    Route("/v1/holds/{hold_id}", extend_hold, methods=["PATCH"]),
]
