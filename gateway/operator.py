"""Operator routes: the audit trail, alerts, and channel deliveries that need a person.

GET /v1/events reads the audit store (opened in `startup`), filtered by sku, type, channel and
time range (`since`/`until`, ms since the epoch), paginated with an opaque `cursor`. The store
is opened lazily: while PostgreSQL is unreachable the gateway still starts and serves stock,
and this route answers 503 with Retry-After until the store is back.
Alerts and deliveries live in Redis, written by the workers.
"""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.routing import Route

from gateway.auth import authenticate
from gateway.errors import MalformedRequest, NotFound
from gateway.http import JSONReply
from stockgate import activity
from stockgate.alerts import Alert, list_alerts
from stockgate.audit import (
    AuditUnavailable,
    EventPage,
    EventQuery,
    audit_store,
    audit_unreachable,
    split_id,
)
from stockgate.deliveries import FailedDelivery, failed_deliveries, retry_delivery
from stockgate.models import MAX_PAGE, Event
from stockgate.settings import Settings

EVENT_TYPES = {"hold", "release", "expire", "commit", "fulfil", "cancel", "restock", "adjust",
               "oversell_rejected", "bundle", "extend", "incoming", "receive",
               "allocation"}


class EventsReply(msgspec.Struct, frozen=True):
    events: list[Event]
    next_cursor: str | None


class AlertsReply(msgspec.Struct, frozen=True):
    alerts: list[Alert]


class DeliveriesReply(msgspec.Struct, frozen=True):
    deliveries: list[FailedDelivery]


class RetryReply(msgspec.Struct, frozen=True):
    id: str
    status: str
    channel: str
    sku: str
    location: str


INT64 = 2**63


def _int_param(request: Request, name: str, default: int | None = None) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise MalformedRequest(f"{name} must be a whole number") from None
    if not -INT64 <= value < INT64:  # the audit stores' integer columns: 64-bit signed
        raise MalformedRequest(f"{name} is out of range")
    return value


def event_query(request: Request, tenant: str, *, blank_is_any: bool = False) -> EventQuery:
    """The audit query a request's filters ask for (GET /v1/events, the console's events).
    On /v1/events an empty `sku=` or `channel=` matches events with none (an empty channel:
    changes made through the API); the console's form sends blank fields for "any"."""
    params = request.query_params

    def text(name: str) -> str | None:
        value = params.get(name)
        return None if blank_is_any and not value else value

    type_ = text("type")
    if type_ is not None and type_ not in EVENT_TYPES:
        raise MalformedRequest(f"unknown event type {type_!r}")
    cursor = params.get("cursor") or None
    if cursor:
        try:
            ms, seq = split_id(cursor)
        except Exception:
            raise MalformedRequest("invalid cursor") from None
        if not (0 <= ms < INT64 and 0 <= seq < INT64):
            raise MalformedRequest("invalid cursor")
    limit = _int_param(request, "limit", 100) or 100
    if not 1 <= limit <= MAX_PAGE:
        raise MalformedRequest(f"limit must be within 1..{MAX_PAGE}")
    return EventQuery(tenant=tenant, sku=text("sku"), type=type_, channel=text("channel"),
                      ref=text("ref"), since_ms=_int_param(request, "since"),
                      until_ms=_int_param(request, "until"), cursor=cursor, limit=limit)


async def read_events(request: Request, query: EventQuery) -> JSONReply:
    try:
        page: EventPage = await request.app.state.audit.query(query)
    except Exception as exc:
        if not audit_unreachable(exc):
            raise
        down = exc if isinstance(exc, AuditUnavailable) else AuditUnavailable()
        # The error shape of every 503, with the store's own reconnect interval as the wait.
        return JSONReply(down.body(), status_code=down.status,
                         headers={"Retry-After": str(down.retry_after)})
    return JSONReply(EventsReply(events=page.events, next_cursor=page.next_cursor))


async def list_events(request: Request) -> JSONReply:
    principal = authenticate(request, "operator")
    return await read_events(request, event_query(request, principal.tenant))


async def get_alerts(request: Request) -> JSONReply:
    principal = authenticate(request, "operator")
    limit = _int_param(request, "limit", 100) or 100
    alerts = await list_alerts(request.app.state.redis, principal.tenant,
                               type=request.query_params.get("type"), limit=min(limit, 1000))
    settings = request.app.state.settings
    return JSONReply(AlertsReply(alerts=[scrubbed_alert(settings, a) for a in alerts]))


async def get_deliveries(request: Request) -> JSONReply:
    principal = authenticate(request, "operator")
    status = request.query_params.get("status", "failed")
    if status != "failed":
        raise MalformedRequest("only status=failed is listed")
    found = await failed_deliveries(request.app.state.redis, principal.tenant)
    settings = request.app.state.settings
    return JSONReply(DeliveriesReply(deliveries=[scrubbed_delivery(settings, d)
                                                 for d in found]))


def scrubbed_delivery(settings: Settings, d: FailedDelivery) -> FailedDelivery:
    """Records written before the workers scrubbed errors may still hold a channel's
    credentials: neither the console nor this API hands them out."""
    return msgspec.structs.replace(
        d, last_error=activity.redact(d.last_error, settings.channels.get(d.channel)))


def scrubbed_alert(settings: Settings, a: Alert) -> Alert:
    if not a.channel:
        return a
    return msgspec.structs.replace(
        a, detail=activity.redact(a.detail, settings.channels.get(a.channel)))


def retry_reply(record: FailedDelivery) -> JSONReply:
    return JSONReply(RetryReply(id=record.id, status="queued", channel=record.channel,
                                sku=record.sku, location=record.location), status_code=202)


async def retry(request: Request) -> JSONReply:
    principal = authenticate(request, "operator")
    record = await retry_delivery(request.app.state.redis, principal.tenant,
                                  request.path_params["delivery_id"])
    if record is None:
        raise NotFound("no failed delivery with this id", id=request.path_params["delivery_id"])
    return retry_reply(record)


routes: list[Route] = [
    Route("/v1/events", list_events, methods=["GET"]),
    Route("/v1/alerts", get_alerts, methods=["GET"]),
    Route("/v1/deliveries", get_deliveries, methods=["GET"]),
    Route("/v1/deliveries/{delivery_id}/retry", retry, methods=["POST"]),
]


async def startup(app: Any) -> None:
    """Open the audit store reader the events route needs. A PostgreSQL store that cannot
    be reached does not fail the start-up: it connects on a later request."""
    store = audit_store(app.state.settings)
    await store.open()
    app.state.audit = store


async def shutdown(app: Any) -> None:
    store = getattr(app.state, "audit", None)
    if store is not None:
        await store.close()
        app.state.audit = None
