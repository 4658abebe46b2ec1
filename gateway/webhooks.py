"""Webhook ingress: `POST /webhooks/{channel_id}` verifies the channel's signature over the raw
body, dedupes the delivery, and applies the stock operations it decodes into.

Dedupe: a delivery is marked seen only after its operations went through, so a delivery that
failed (Redis down -> 503) is processed again when the channel retries. Two copies racing each
other may both apply; the stock scripts are idempotent on order, refund and fulfilment ids and
on the adjust key, so the second changes nothing.

Webhook replies are 2xx for anything a retry cannot fix (unknown order, SKU, topic): a channel
that keeps getting errors retries for days and then disables the subscription.
"""

from __future__ import annotations

import logging
import time

import msgspec
from starlette.requests import Request
from starlette.routing import Route

from gateway.channels import KINDS
from gateway.channels.base import (
    Delivery,
    FetchOrder,
    InventorySet,
    Operation,
    OrderCancelled,
    OrderFulfilled,
    OrderPlaced,
    Refunded,
)
from gateway.errors import NotFound, UnsupportedMediaType
from gateway.http import JSONReply, is_json, read_body
from stockgate import errors
from stockgate.keys import tenant_keys
from stockgate.settings import Channel
from workers.alerts import check_refund
from workers.propagation import channel_value

log = logging.getLogger("stockgate.webhooks")


class Applied(msgspec.Struct, frozen=True, omit_defaults=True):
    op: str
    ref: str
    outcome: str  # applied, replayed, ignored, queued, echo, no_change
    error: str | None = None
    lines: list | None = None


class WebhookReply(msgspec.Struct, frozen=True, omit_defaults=True):
    status: str  # applied, duplicate, ignored, queued, ping
    delivery_id: str = ""
    topic: str = ""
    results: list[Applied] = []


async def receive_webhook(request: Request) -> JSONReply:
    state = request.app.state
    settings = state.settings
    channel_id: str = request.path_params["channel_id"]
    channel = settings.channels.get(channel_id)
    if channel is None:
        raise NotFound("unknown channel")
    adapter = KINDS[channel.kind]
    body = await read_body(request, settings.max_body_bytes)
    delivery: Delivery = adapter.verify(channel, request.headers, body, time.time(),
                                        settings.webhook_tolerance_s)
    metrics = state.metrics
    if delivery.ping:
        metrics.webhooks[(channel_id, "ping")] += 1
        return JSONReply(WebhookReply("ping"))
    if not is_json(request):
        raise UnsupportedMediaType("webhook bodies must be application/json")
    delivery, operations = adapter.decode(channel_id, channel, delivery, body)
    seen_key = tenant_keys(channel.tenant).webhook_seen(channel_id, delivery.id)
    commands = state.commands
    if await commands.run("GET", seen_key) is not None:
        metrics.webhooks[(channel_id, "duplicate")] += 1
        return JSONReply(WebhookReply("duplicate", delivery.id, delivery.topic))
    results = [await _apply(request, channel_id, channel, delivery, op) for op in operations]
    await commands.run("SET", seen_key, b"1", "EX", settings.idempotency_ttl_s)
    if not results:
        status = "ignored"
    elif all(r.outcome == "queued" for r in results):
        status = "queued"
    else:
        status = "applied"
    metrics.webhooks[(channel_id, status)] += 1
    return JSONReply(WebhookReply(status, delivery.id, delivery.topic, results),
                     status_code=202 if status == "queued" else 200)


async def _apply(request: Request, channel_id: str, channel: Channel, delivery: Delivery,
                 op: Operation) -> Applied:
    """One operation; stock errors a retry cannot fix become an `ignored` result."""
    name = type(op).__struct_config__.tag
    try:
        return await _run(request, channel_id, channel, delivery, op)
    except errors.StoreUnavailable:
        raise
    except errors.StockgateError as exc:
        log.warning("webhook %s from %s: %s %s", delivery.id, channel_id, name, exc.code)
        return Applied(str(name), _ref(op), "ignored", error=exc.code)


def _ref(op: Operation) -> str:
    if isinstance(op, InventorySet):
        return f"{op.sku}|{op.location}"
    if isinstance(op, FetchOrder):
        return op.channel_order_id
    if isinstance(op, Refunded):
        return op.refund_id
    return op.order_id


async def _run(request: Request, channel_id: str, channel: Channel, delivery: Delivery,
               op: Operation) -> Applied:
    state = request.app.state
    engine = state.engine
    metrics = state.metrics
    tenant = channel.tenant
    if isinstance(op, OrderPlaced):
        if op.hold_id:
            try:
                with metrics.script("commit"):
                    _, replayed = await engine.commit(tenant, op.hold_id, op.order_id,
                                                              channel=channel_id)
                return Applied("commit_hold", op.order_id,
                               "replayed" if replayed else "applied")
            except (errors.HoldNotFound, errors.IdempotencyConflict):
                # Expired, released, or spent on another order: the sale still happened,
                # so it takes from available like an order without a hold.
                pass
        if not op.lines:
            return Applied("order", op.order_id, "ignored", error="no_stocked_lines")
        with metrics.script("order"):
            reply, replayed = await engine.order(tenant, op.order_id, op.lines,
                                                 channel=channel_id)
        lines = [{"sku": ln.sku, "location": ln.location, "qty": ln.qty, "status": ln.status}
                 for ln in reply.lines]
        if not replayed:
            for ln in reply.lines:
                if ln.status != "committed":
                    metrics.rejections[ln.status] += 1
        return Applied("order", op.order_id, "replayed" if replayed else "applied", lines=lines)
    if isinstance(op, OrderCancelled):
        with metrics.script("cancel"):
            _, replayed = await engine.cancel(tenant, op.order_id, channel=channel_id)
        return Applied("cancel", op.order_id, "replayed" if replayed else "applied")
    if isinstance(op, OrderFulfilled):
        with metrics.script("fulfil"):
            _, replayed = await engine.fulfil(tenant, op.order_id, op.fulfilment_id, op.lines,
                                              channel=channel_id)
        return Applied("fulfil", op.order_id, "replayed" if replayed else "applied")
    if isinstance(op, Refunded):
        with metrics.script("restock"):
            reply, replayed = await engine.restock(tenant, op.refund_id, op.lines,
                                                   order_id=op.order_id, channel=channel_id)
        if not replayed:
            # A line that restored nothing leaves no outbox event: only the reply shows it.
            await check_refund(state.redis, tenant, reply, channel=channel_id)
        return Applied("restock", op.refund_id, "replayed" if replayed else "applied")
    if isinstance(op, InventorySet):
        return await _inventory_set(request, channel_id, channel, delivery, op)
    from workers.queue import enqueue_fetch_order  # imported late: arq is a worker concern

    await enqueue_fetch_order(state.redis, tenant, channel_id, op.channel_order_id, delivery.id)
    return Applied("fetch_order", op.channel_order_id, "queued")


async def _inventory_set(request: Request, channel_id: str, channel: Channel,
                         delivery: Delivery, op: InventorySet) -> Applied:
    """A person set the channel's available count in its admin: move on_hand by the
    difference from what Stockgate shows that channel, unless the update only echoes a
    count Stockgate itself pushed (which would otherwise ping-pong between the systems).

    Read-then-adjust is not atomic; admin edits are rare and reconcile catches the drift.
    """
    state = request.app.state
    engine = state.engine
    tenant = channel.tenant
    location = op.location or engine.default_location(tenant)
    ref = f"{op.sku}|{location}"
    pushed = await state.commands.run("HGET", tenant_keys(tenant).pushed(channel_id), ref)
    if pushed is not None and int(pushed) == op.available:
        state.metrics.webhooks[(channel_id, "echo")] += 1
        return Applied("inventory_set", ref, "echo")
    try:
        view = await engine.stock(tenant, op.sku)
    except errors.UnknownSku:
        shown = 0  # the first adjust creates the SKU
    else:
        # The same rule the workers push by, so "what the channel showed" means one thing.
        shown = channel_value(state.settings, channel_id, channel, location, view)
    delta = op.available - shown
    if delta == 0:
        return Applied("inventory_set", ref, "no_change")
    with state.metrics.script("adjust"):
        _, replayed = await engine.adjust(
            tenant, op.sku, location=location, delta=delta,
            reason=f"set to {op.available} in {channel_id} admin",
            idempotency_key=f"{channel_id}:{delivery.id}"[:128], channel=channel_id)
    return Applied("inventory_set", ref, "replayed" if replayed else "applied")


routes = [Route("/webhooks/{channel_id}", receive_webhook, methods=["POST"])]
