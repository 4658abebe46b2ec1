"""The OpenAPI 3.1 document of the storefront and operator routes, built once from the same
msgspec Structs that decode the requests, so the document cannot drift from the validation."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.replies import BulkReply, HoldCreated
from stockgate.models import (
    AdjustReply,
    AdjustRequest,
    BulkAdjustRequest,
    CommitReply,
    CommitRequest,
    HoldRequest,
    PolicyReply,
    PolicyRequest,
    ReleaseReply,
    StockView,
)

_REF = "#/components/schemas/{name}"


class Error(msgspec.Struct):
    """Every error: a code, a human detail, and fields specific to the code."""

    error: str
    detail: str


def _body(name: str) -> dict[str, Any]:
    return {"required": True,
            "content": {"application/json": {"schema": {"$ref": _REF.format(name=name)}}}}


def _reply(name: str, description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": _REF.format(name=name)}}}}


_ERR = {code: _reply("Error", text) for code, text in {
    "400": "malformed JSON or a schema error naming the field",
    "401": "missing or unknown API key", "403": "the key lacks the scope",
    "408": "body not received in full within body_timeout_s (connection closed)",
    "413": "body over the size limit", "415": "not application/json",
    "422": "semantically invalid", "429": "rate limited (Retry-After)",
    "503": "stock store unavailable (Retry-After)"}.items()}


# What the routes accept in the path (gateway/holds.py _hold_id, gateway/stock.py _sku).
_PARAMS: dict[str, dict[str, Any]] = {
    "hold_id": {"type": "string", "pattern": r"^[A-Za-z0-9_.:\-]{1,128}$"},
    "sku": {"type": "string", "minLength": 1, "maxLength": 128,
            "pattern": r"^[^\x00-\x1f\x7f]+$"},
}


def _op(summary: str, scope: str, ok: tuple[str, str, str], body: str | None = None,
        extra: dict[str, str] | None = None, params: list[str] = ()) -> dict[str, Any]:
    status, schema, text = ok
    responses: dict[str, Any] = {status: _reply(schema, text), **_ERR}
    for code, text in (extra or {}).items():
        responses[code] = _reply("Error", text)
    op: dict[str, Any] = {"summary": summary, "security": [{"bearer": []}],
                          "x-scope": scope, "responses": responses}
    if body:
        op["requestBody"] = _body(body)
    if params:
        op["parameters"] = [{"name": p, "in": "path", "required": True,
                             "schema": _PARAMS.get(p, {"type": "string"})} for p in params]
    return op


def build() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        [HoldRequest, HoldCreated, CommitRequest, CommitReply, ReleaseReply, StockView,
         AdjustRequest, AdjustReply, BulkAdjustRequest, BulkReply, PolicyRequest, PolicyReply,
         Error], ref_template=_REF)
    paths = {
        "/v1/holds": {"post": _op(
            "Reserve every line of a cart, or none", "storefront",
            ("201", "HoldCreated", "held (a repeat of the same hold_id answers the same)"),
            "HoldRequest", {"404": "unknown SKU or location",
                            "409": "insufficient_stock {sku, location, available}, "
                                   "limit_exceeded, or idempotency_conflict"})},
        "/v1/holds/{hold_id}/commit": {"post": _op(
            "Turn a live hold into an order", "storefront", ("200", "CommitReply", "committed"),
            "CommitRequest", {"404": "unknown, released or expired hold",
                              "409": "hold committed to another order"}, ["hold_id"])},
        "/v1/holds/{hold_id}": {"delete": _op(
            "Release a hold (idempotent)", "storefront", ("200", "ReleaseReply", "released"),
            None, {"404": "unknown hold", "409": "hold already committed"}, ["hold_id"])},
        "/v1/stock/{sku}": {"get": _op(
            "Every state per location, available overall and per channel", "storefront",
            ("200", "StockView", "the SKU's stock"), None, {"404": "unknown SKU"}, ["sku"])},
        "/v1/stock/{sku}/adjust": {"post": _op(
            "Receipts, counts, damage (the first adjust creates the SKU)", "operator",
            ("200", "AdjustReply", "adjusted"), "AdjustRequest",
            {"409": "idempotency_key reused with another request"}, ["sku"])},
        "/v1/stock/{sku}/policy": {"put": _op(
            "Safety buffer, backorder limit, low-stock threshold, per-customer limit",
            "operator", ("200", "PolicyReply", "policy set"), "PolicyRequest",
            {"404": "unknown SKU or location"}, ["sku"])},
        "/v1/stock/bulk": {"post": _op(
            "Many adjusts; each line's result reported", "operator",
            ("200", "BulkReply", "per-line results"), "BulkAdjustRequest")},
        "/v1/events": {"get": _op(
            "Audit trail (filters: sku, type, channel, since, until; paginated)", "operator",
            ("200", "Error", "a page of events"))},
        "/v1/alerts": {"get": _op("What needs an operator", "operator",
                                  ("200", "Error", "alerts"))},
        "/v1/deliveries": {"get": _op("Channel pushes (status=failed)", "operator",
                                      ("200", "Error", "deliveries"))},
        "/v1/deliveries/{id}/retry": {"post": _op(
            "Retry a failed push", "operator", ("202", "Error", "queued"), None,
            {"404": "no failed delivery with this id"}, ["id"])},
    }
    # The worker-owned operator routes have no Struct here: describe them loosely. The retry
    # answers 202 (gateway/operator.py): the push is queued, not done.
    for path, ok in (("/v1/events", "200"), ("/v1/alerts", "200"), ("/v1/deliveries", "200"),
                     ("/v1/deliveries/{id}/retry", "202")):
        for op in paths[path].values():
            op["responses"][ok] = {"description": op["responses"][ok]["description"],
                                   "content": {"application/json": {"schema": {}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Stockgate", "version": "0.1.0",
                 "description": "Storefront holds and operator stock API. Scope `operator` "
                                "includes `storefront`. Webhooks (POST /webhooks/{channel_id}) "
                                "are authenticated by each channel's signature, not a key."},
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": paths,
    }


_DOCUMENT = msgspec.json.encode(build())


async def openapi(request: Request) -> Response:
    return Response(_DOCUMENT, media_type="application/json")


routes = [Route("/openapi.json", openapi, methods=["GET"])]
