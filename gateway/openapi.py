"""The OpenAPI 3.1 document of every route, built once from the same msgspec Structs that
decode the requests and encode the replies, so the document cannot drift from the app
(tests/test_schemathesis.py validates every reply body against it)."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.channels import bigcommerce, shopify, standard, woocommerce
from gateway.operator import EVENT_TYPES, AlertsReply, DeliveriesReply, EventsReply, RetryReply
from gateway.replies import BulkReply, HoldCreated, HoldExtended
from gateway.webhooks import WebhookReply
from stockgate.allocation import AllocationRule
from stockgate.models import (
    MAX_PAGE,
    AdjustReply,
    AdjustRequest,
    AllocationReply,
    BulkAdjustRequest,
    BundleReply,
    BundleRequest,
    BundleView,
    CommitRequest,
    ExtendRequest,
    HoldRequest,
    IncomingList,
    IncomingRecord,
    IncomingRequest,
    MovedLine,
    PolicyReply,
    PolicyRequest,
    ReceiptReply,
    ReceiptRequest,
    ReleaseReply,
    StockView,
)

_REF = "#/components/schemas/{name}"


class Error(msgspec.Struct):
    """Every error: a code, a human detail, and fields specific to the code."""

    error: str
    detail: str


class Committed(msgspec.Struct):
    """The commit route's reply: the engine's CommitReply with its lines as objects, like
    every other reply's lines (the scripts' [sku, location, qty] arrays stay internal)."""

    order_id: str
    hold_id: str
    lines: list[MovedLine]


def _any_json(t: type) -> dict[str, Any]:
    # A field typed `object` (WooCommerce meta_data values) is any JSON value.
    if t is object:
        return {"description": "any JSON value"}
    raise NotImplementedError


def _schema(name: str) -> dict[str, Any]:
    return {"$ref": _REF.format(name=name)}


def _body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _schema(name)}}}


def _reply(name: str, description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": _schema(name)}}}


_ERR = {code: _reply("Error", text) for code, text in {
    "400": "malformed JSON or a schema error naming the field",
    "401": "missing or unknown API key", "403": "the key lacks the scope",
    "408": "body not received in full within body_timeout_s (connection closed)",
    "413": "body over the size limit", "415": "not application/json",
    "422": "semantically invalid", "429": "rate limited (Retry-After)",
    "503": "stock store unavailable (Retry-After)"}.items()}


# What the routes accept in the path (gateway/http.py path_id, path_sku).
_PARAMS: dict[str, dict[str, Any]] = {
    "hold_id": {"type": "string", "pattern": r"^[A-Za-z0-9_.:\-]{1,128}$"},
    "sku": {"type": "string", "minLength": 1, "maxLength": 128,
            "pattern": r"^[^\x00-\x1f\x7f]+$"},
    "incoming_id": {"type": "string", "pattern": r"^[A-Za-z0-9_.:\-]{1,128}$"},
}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


def _op(summary: str, scope: str, ok: tuple[str, str, str], body: str | None = None,
        extra: dict[str, str] | None = None, params: list[str] = (),
        query: list[dict[str, Any]] = ()) -> dict[str, Any]:
    status, schema, text = ok
    responses: dict[str, Any] = {status: _reply(schema, text), **_ERR}
    for code, text in (extra or {}).items():
        responses[code] = _reply("Error", text)
    op: dict[str, Any] = {"summary": summary, "security": [{"bearer": []}],
                          "x-scope": scope, "responses": responses}
    if body:
        op["requestBody"] = _body(body)
    parameters = [{"name": p, "in": "path", "required": True,
                   "schema": _PARAMS.get(p, {"type": "string"})} for p in params]
    if parameters or query:
        op["parameters"] = [*parameters, *query]
    return op


# ---- webhooks ------------------------------------------------------------------------------
# The payload Structs each channel module decodes, by component name. Two channels both have
# an `Order` and a `LineItem`, so each channel's components get the channel's prefix.
_CHANNEL_STRUCTS: dict[str, list[type]] = {
    "Shopify": [shopify.Order, shopify.Fulfillment, shopify.Refund, shopify.InventoryLevel],
    "WooCommerce": [woocommerce.Order],
    "BigCommerce": [bigcommerce.Hook],
    "Standard": [standard.OrderCreatedData, standard.OrderCancelledData,
                 standard.OrderFulfilledData, standard.RefundData, standard.InventoryData],
}
# Standard Webhooks' envelope: `type` picks the `data` shape (gateway/channels/standard.py).
_STANDARD_TYPES = {"order.created": "OrderCreatedData", "order.cancelled": "OrderCancelledData",
                   "order.fulfilled": "OrderFulfilledData", "refund.created": "RefundData",
                   "inventory.updated": "InventoryData"}

# Which header carries what, per channel kind (DESIGN.md "Channels and their signatures").
# None is required by the document: which ones a request needs depends on the channel the
# path names, and a missing or wrong one answers 401.
_WEBHOOK_HEADERS = {
    "X-Shopify-Hmac-Sha256": "shopify: base64(HMAC-SHA256(secret, raw body))",
    "X-Shopify-Topic": "shopify: orders/create, orders/cancelled, orders/fulfilled, "
                       "fulfillments/create, refunds/create, inventory_levels/update "
                       "(unsigned: only picks which body shape to read)",
    "X-Shopify-Webhook-Id": "shopify: delivery id (unsigned; dedupe)",
    "X-Shopify-Event-Id": "shopify: event id (unsigned; dedupe)",
    "X-WC-Webhook-Signature": "woocommerce: base64(HMAC-SHA256(secret, raw body))",
    "X-WC-Webhook-Topic": "woocommerce: order.created, order.updated",
    "X-WC-Webhook-Delivery-ID": "woocommerce: delivery id (unsigned; dedupe)",
    "X-Stockgate-Secret": "bigcommerce: the shared secret set as a custom header when the hook "
                          "was created (the channel's `secret_header`, this name by default)",
    "Authorization": "tiktok: hex HMAC-SHA256(app secret, app key + raw body)",
    "webhook-id": "standard: message id (signed)",
    "webhook-timestamp": "standard: Unix seconds (signed; 5-minute tolerance)",
    "webhook-signature": "standard: space-separated `v1,<base64 HMAC-SHA256 of "
                         "\"id.timestamp.body\">` entries",
}


def _webhook_components() -> dict[str, Any]:
    components: dict[str, Any] = {}
    for prefix, structs in _CHANNEL_STRUCTS.items():
        _, found = msgspec.json.schema_components(
            structs, schema_hook=_any_json, ref_template=_REF.format(name=prefix + "{name}"))
        components.update({prefix + name: schema for name, schema in found.items()})
    for event, data in _STANDARD_TYPES.items():
        components["StandardEvent" + data.removesuffix("Data")] = {
            "type": "object", "required": ["type", "data"],
            "properties": {"type": {"const": event},
                           "timestamp": {"type": "string", "description": "ISO 8601"},
                           "data": _schema("Standard" + data)}}
    return components


def _webhook_operation() -> dict[str, Any]:
    payloads = ["ShopifyOrder", "ShopifyFulfillment", "ShopifyRefund", "ShopifyInventoryLevel",
                "WooCommerceOrder", "BigCommerceHook",
                *("StandardEvent" + d.removesuffix("Data") for d in _STANDARD_TYPES.values())]
    responses: dict[str, Any] = {
        "200": _reply("WebhookReply", "applied, duplicate (changes nothing), ignored (nothing "
                                      "for Stockgate in it) or ping (a set-up probe)"),
        "202": _reply("WebhookReply", "queued (BigCommerce: the worker fetches the order)"),
        **{code: _ERR[code] for code in ("400", "401", "408", "413", "415", "503")},
        "404": _reply("Error", "no channel of this name"),
        "409": _reply("Error", "order_not_yet_known: a shipment or refund of an order not "
                               "received yet; deliver again later (Retry-After)"),
    }
    return {
        "summary": "A channel's webhook, verified with the channel's signature scheme",
        "description": "The raw body is verified before it is parsed, then decoded by the "
                       "channel's kind: Shopify (REST Admin Order, Fulfillment, Refund, "
                       "InventoryLevel by X-Shopify-Topic), WooCommerce (order), BigCommerce "
                       "(hook naming the order by id) or Standard Webhooks (typed envelope). "
                       "Anything a retry cannot fix answers 2xx.",
        "security": [],
        "parameters": [
            {"name": "channel_id", "in": "path", "required": True,
             "schema": {"type": "string"}, "description": "the channel's name in the config"},
            *({"name": name, "in": "header", "required": False,
               "schema": {"type": "string"}, "description": text}
              for name, text in _WEBHOOK_HEADERS.items())],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "anyOf": [_schema(name) for name in payloads]}}}},
        "responses": responses,
    }


# ---- health --------------------------------------------------------------------------------

def _health_paths() -> dict[str, Any]:
    status = {"type": "object", "required": ["status"], "properties": {
        "status": {"type": "string"}, "redis": {"type": "boolean"},
        "scripts": {"type": "boolean"}, "detail": {"type": "string"}}}
    json_reply = {"application/json": {"schema": status}}
    return {
        "/healthz": {"get": {"summary": "Liveness", "security": [],
                             "responses": {"200": {"description": "alive",
                                                   "content": json_reply}}}},
        "/readyz": {"get": {"summary": "Readiness: Redis reachable, scripts loaded",
                            "security": [],
                            "responses": {"200": {"description": "ready", "content": json_reply},
                                          "503": {"description": "not ready (Retry-After)",
                                                  "content": json_reply}}}},
        "/metrics": {"get": {
            "summary": "Prometheus text", "security": [{}, {"bearer": []}],
            "description": "Bearer metrics_token when one is configured",
            "responses": {"200": {"description": "the scrape", "content": {
                              "text/plain": {"schema": {"type": "string"}}}},
                          "401": _ERR["401"]}}},
    }


# ---- bundles (kits) --------------------------------------------------------------------------

def _bundle_paths() -> dict[str, Any]:
    conflict = ("bundle_conflict: the SKU has stock cells or is a component of a bundle, or "
                "a component is a bundle (one level of nesting)")
    return {"/v1/bundles/{sku}": {
        "put": _op("Define or replace a bundle: components with per-bundle quantities",
                   "operator", ("200", "BundleReply", "defined (Idempotent-Replayed: unchanged)"),
                   "BundleRequest", {"409": conflict}, ["sku"]),
        "get": _op("The bundle's components and derived stock per location and channel",
                   "operator", ("200", "BundleView", "the bundle"), None,
                   {"404": "not a bundle"}, ["sku"]),
        "delete": _op("Delete a bundle (live holds and orders keep their component lines)",
                      "operator", ("200", "BundleReply", "deleted"), None,
                      {"404": "not a bundle"}, ["sku"]),
    }}


def _incoming_paths() -> dict[str, Any]:
    one = ["incoming_id"]
    gone = {"404": "incoming_not_found"}
    return {
        "/v1/incoming": {
            "post": _op("Expect units at locations (a purchase order or a transfer)",
                        "operator", ("201", "IncomingRecord", "recorded (a repeat of the same "
                                     "incoming_id answers the same)"), "IncomingRequest",
                        {"409": "idempotency_conflict: incoming_id reused with another body"}),
            "get": _op("Incoming records, newest first", "operator",
                       ("200", "IncomingList", "records"), query=[
                           _query("sku", {"type": "string"}, "only records with this SKU"),
                           _query("status", {"enum": ["open", "received", "closed",
                                                      "cancelled"]}, "only this status"),
                           _query("limit", {"type": "integer", "minimum": 1,
                                            "maximum": 1000}, "at most (default 100)")])},
        "/v1/incoming/{incoming_id}": {"get": _op(
            "One incoming record", "operator", ("200", "IncomingRecord", "the record"), None,
            gone, one)},
        "/v1/incoming/{incoming_id}/receipts": {"post": _op(
            "Receive units into on_hand (idempotent per receipt_id); over-receipts are taken "
            "in and reported; close: true closes what stays open", "operator",
            ("200", "ReceiptReply", "received"), "ReceiptRequest",
            {**gone, "409": "incoming_closed (received, closed or cancelled) or "
                            "idempotency_conflict: receipt_id reused with another body"},
            one)},
        "/v1/incoming/{incoming_id}/cancel": {"post": _op(
            "Cancel what is still expected (idempotent)", "operator",
            ("200", "IncomingRecord", "cancelled"), None,
            {**gone, "409": "incoming_closed: fully received or closed already"}, one)},
    }


def build() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        [HoldRequest, HoldCreated, CommitRequest, Committed, ReleaseReply, StockView,
         AdjustRequest, AdjustReply, BulkAdjustRequest, BulkReply, PolicyRequest, PolicyReply,
         EventsReply, AlertsReply, DeliveriesReply, RetryReply, WebhookReply, Error,
         BundleRequest, BundleReply, BundleView, ExtendRequest, HoldExtended,
         IncomingRequest, IncomingRecord, IncomingList, ReceiptRequest, ReceiptReply,
         AllocationRule, AllocationReply],
        ref_template=_REF)
    components.update(_webhook_components())
    limit = {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}
    paths = {
        "/v1/holds": {"post": _op(
            "Reserve every line of a cart, or none", "storefront",
            ("201", "HoldCreated", "held (a repeat of the same hold_id answers the same); "
                                   "ttl_s is clamped at hold_max_total_s, expires_at is "
                                   "the real expiry"),
            "HoldRequest", {"404": "unknown SKU or location",
                            "409": "insufficient_stock {sku, location, available}, "
                                   "limit_exceeded, or idempotency_conflict"})},
        "/v1/holds/{hold_id}/commit": {"post": _op(
            "Turn a live hold into an order", "storefront", ("200", "Committed", "committed"),
            "CommitRequest", {"404": "unknown, released or expired hold",
                              "409": "hold committed to another order"}, ["hold_id"])},
        "/v1/holds/{hold_id}": {"delete": _op(
            "Release a hold (idempotent)", "storefront", ("200", "ReleaseReply", "released"),
            None, {"404": "unknown hold", "409": "hold already committed"}, ["hold_id"]),
            "patch": _op(
                "Extend a live hold to now + ttl_s, clamped at hold_max_total_s from its "
                "creation (capped: true); never shortens it", "storefront",
                ("200", "HoldExtended", "the hold's real expiry"), "ExtendRequest",
                {"404": "hold_not_found: unknown, released, committed or expired (status "
                        "says which); nothing is created"}, ["hold_id"])},
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
            "Audit trail, newest first, paginated by next_cursor", "operator",
            ("200", "EventsReply", "a page of events"), query=[
                _query("sku", {"type": "string"}, "only this SKU"),
                _query("type", {"enum": sorted(EVENT_TYPES)}, "only this event type"),
                _query("channel", {"type": "string"}, "only events from this channel"),
                _query("ref", {"type": "string"},
                       "only events from this order, refund, hold or fulfilment id"),
                _query("since", {"type": "integer"}, "ms since the epoch, inclusive"),
                _query("until", {"type": "integer"}, "ms since the epoch"),
                _query("cursor", {"type": "string"}, "next_cursor of the previous page"),
                _query("limit", limit, "page size (default 100)")])},
        "/v1/alerts": {"get": _op(
            "What needs an operator", "operator", ("200", "AlertsReply", "alerts"), query=[
                _query("type", {"type": "string"}, "only this alert type"),
                _query("limit", {"type": "integer"}, "at most this many (capped at 1000)")])},
        "/v1/deliveries": {"get": _op(
            "Channel pushes that failed", "operator", ("200", "DeliveriesReply", "deliveries"),
            query=[_query("status", {"enum": ["failed"]}, "only failed ones are listed")])},
        # 202: the push is queued, not done.
        "/v1/deliveries/{delivery_id}/retry": {"post": _op(
            "Retry a failed push", "operator", ("202", "RetryReply", "queued"), None,
            {"404": "no failed delivery with this id"}, ["delivery_id"])},
        "/webhooks/{channel_id}": {"post": _webhook_operation()},
        **_incoming_paths(),
        "/v1/stock/{sku}/channels/{channel_id}": {
            "put": _op("Set what one channel is shown of the SKU (its allocation rule)",
                       "operator", ("200", "AllocationReply", "rule set (changed: false when "
                                    "it was already the rule)"), "AllocationRule",
                       {"404": "unknown SKU, or no such channel for this key's tenant"},
                       ["sku", "channel_id"]),
            "delete": _op("Remove the SKU's rule for the channel: its default applies",
                          "operator", ("200", "AllocationReply", "rule removed (changed: "
                                       "false when there was none)"), None,
                          {"404": "unknown SKU, or no such channel for this key's tenant"},
                          ["sku", "channel_id"])},
        **_health_paths(),
        **_bundle_paths(),
    }
    # A bundle has no cells: GET /v1/stock/{sku} of a bundle answers its derived BundleView.
    paths["/v1/stock/{sku}"]["get"]["responses"]["200"]["content"]["application/json"] = {
        "schema": {"anyOf": [_schema("StockView"), _schema("BundleView")]}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Stockgate", "version": "0.1.0",
                 "description": "Storefront holds, operator stock API and channel webhooks. "
                                "Scope `operator` includes `storefront`. Webhooks are "
                                "authenticated by each channel's signature, not a key."},
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": paths,
    }


_DOCUMENT = msgspec.json.encode(build())


async def openapi(request: Request) -> Response:
    return Response(_DOCUMENT, media_type="application/json")


routes = [Route("/openapi.json", openapi, methods=["GET"])]
