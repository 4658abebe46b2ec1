"""Incoming stock (operator): purchase orders and transfers expected at locations, their
receipts into on_hand, and their cancellation. See stockgate/incoming.py."""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from gateway.auth import authenticate
from gateway.errors import MalformedRequest
from gateway.http import JSONReply, path_id, read_json
from gateway.replies import replay_headers
from stockgate import errors, incoming
from stockgate.models import IncomingRequest, ReceiptRequest

_STATUSES = ("open", "received", "closed", "cancelled")


async def create_incoming(request: Request) -> JSONReply:
    principal = authenticate(request, "operator")
    body = await read_json(request, IncomingRequest)
    state = request.app.state
    with state.metrics.script("incoming"):
        record, replayed = await incoming.create(state.engine, principal.tenant, body)
    return JSONReply(record, status_code=201, headers=replay_headers(replayed))


async def list_incoming(request: Request) -> JSONReply:
    principal = authenticate(request, "operator")
    q = request.query_params
    status = q.get("status")
    if status is not None and status not in _STATUSES:
        raise MalformedRequest(f"status: one of {', '.join(_STATUSES)}")
    raw_limit = q.get("limit", "100")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 1000:
        raise MalformedRequest("limit: 1 to 1000")
    found = await incoming.listing(request.app.state.engine, principal.tenant,
                                   sku=q.get("sku") or None, status=status,
                                   limit=int(raw_limit))
    return JSONReply(found)


async def read_incoming(request: Request) -> JSONReply:
    principal = authenticate(request, "operator")
    incoming_id = path_id(request, "incoming_id")
    record = await incoming.get(request.app.state.engine, principal.tenant, incoming_id)
    if record is None:
        raise errors.IncomingNotFound(incoming_id=incoming_id)
    return JSONReply(record)


async def receive(request: Request) -> JSONReply:
    principal = authenticate(request, "operator")
    incoming_id = path_id(request, "incoming_id")
    body = await read_json(request, ReceiptRequest)
    state = request.app.state
    with state.metrics.script("receive"):
        reply, replayed = await incoming.receive(state.engine, principal.tenant, incoming_id,
                                                 body)
    return JSONReply(reply, headers=replay_headers(replayed))


async def cancel_incoming(request: Request) -> JSONReply:
    principal = authenticate(request, "operator")
    incoming_id = path_id(request, "incoming_id")
    state = request.app.state
    with state.metrics.script("incoming_cancel"):
        record, replayed = await incoming.cancel(state.engine, principal.tenant, incoming_id)
    return JSONReply(record, headers=replay_headers(replayed))


routes = [
    Route("/v1/incoming", create_incoming, methods=["POST"]),
    Route("/v1/incoming", list_incoming, methods=["GET"]),
    Route("/v1/incoming/{incoming_id}", read_incoming, methods=["GET"]),
    Route("/v1/incoming/{incoming_id}/receipts", receive, methods=["POST"]),
    Route("/v1/incoming/{incoming_id}/cancel", cancel_incoming, methods=["POST"]),
]
