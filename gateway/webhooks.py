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

import hashlib
import logging
import time
from collections import Counter

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
    Skipped,
)
from gateway.errors import NotFound, UnsupportedMediaType
from gateway.http import JSONReply, is_json, read_body
from stockgate import errors
from stockgate.keys import tenant_keys
from stockgate.models import Line, ScriptLine
from stockgate.settings import Channel
from workers.alerts import check_refund, raise_alert

log = logging.getLogger("stockgate.webhooks")


class Applied(msgspec.Struct, frozen=True, omit_defaults=True):
    op: str
    ref: str
    outcome: str  # applied, replayed, ignored, queued, echo, no_change
    error: str | None = None
    lines: list | None = None
    skipped: list[Skipped] | None = None  # channel lines not stocked (base.Skipped)


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
    request.state.raw_body = body
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
        return await _order_placed(request, channel_id, channel, op)
    if isinstance(op, OrderCancelled):
        return await _order_cancelled(request, channel_id, channel, op)
    if isinstance(op, OrderFulfilled):
        return await _order_fulfilled(request, channel_id, channel, op)
    if isinstance(op, Refunded):
        with metrics.script("restock"):
            reply, replayed = await engine.restock(tenant, op.refund_id, op.lines,
                                                   order_id=op.order_id, channel=channel_id)
        if not replayed:
            # A line that restored nothing leaves no outbox event: only the reply shows it.
            await check_refund(state.redis, tenant, reply, channel=channel_id)
        return Applied("restock", op.refund_id, "replayed" if replayed else "applied",
                       skipped=op.skipped or None)
    if isinstance(op, InventorySet):
        return await _inventory_set(request, channel_id, channel, delivery, op)
    from workers.queue import enqueue_fetch_order  # imported late: arq is a worker concern

    await enqueue_fetch_order(state.redis, tenant, channel_id, op.channel_order_id, delivery.id)
    return Applied("fetch_order", op.channel_order_id, "queued")


# ---- channel orders ------------------------------------------------------------------------
#
# An order naming a storefront hold (the shopper's cart) is the hold's sale. Its units are:
#   covered  - the hold's own lines, committed by the commit script under the order's id, or
#              already committed by the storefront under the storefront's order id (H4);
#   beyond   - what the order has on top of the hold (the cart changed after the hold), taken
#              from available by the order script under `beyond_hold_id(order_id)`.
# Matching is by SKU, not (SKU, location): a hold reserves at the location the storefront
# asked for (the tenant default unless it named one), while the channel's order maps to the
# channel's selling location; the hold's units are that sale wherever they were reserved.
# Hold lines the order no longer has stay committed with the order: the hold was the cart the
# shopper paid for a moment ago, and a cancel or fulfilment of the order releases them.
# A hold that is gone (unknown, released, expired), or that another channel order already
# committed (the attribute comes from the shopper's browser, so it may name someone else's
# cart), covers nothing: the whole order takes from available.

BEYOND_HOLD = ":beyond-hold"


def beyond_hold_id(order_id: str) -> str:
    """The order id for a held order's units beyond its hold: derived, so a redelivery of the
    same order replays instead of committing again; at most 128 characters (the scripts'
    name limit)."""
    derived = order_id + BEYOND_HOLD
    if len(derived) <= 128:
        return derived
    return "beyond-hold:" + hashlib.blake2b(order_id.encode(), digest_size=16).hexdigest()


def beyond_hold(lines: list[Line], covered: list[ScriptLine]) -> list[Line]:
    """The order's lines minus what the hold covered, per SKU (positive part only)."""
    left: Counter[str] = Counter()
    for ln in covered:
        left[ln.sku] += ln.qty
    out = []
    for ln in lines:
        take = min(ln.qty, left[ln.sku])
        left[ln.sku] -= take
        if ln.qty > take:
            out.append(msgspec.structs.replace(ln, qty=ln.qty - take))
    return out


def _channel_order(request: Request, order_id: str) -> bool:
    """Whether an order id is one a channel webhook or fetch made ("<channel id>:...")."""
    return any(order_id.startswith(name + ":") for name in request.app.state.settings.channels)


async def _alert_skipped(request: Request, channel_id: str, channel: Channel,
                         op: OrderPlaced) -> None:
    """An order line that was not stocked is a sale Stockgate does not count: oversell
    elsewhere unless someone maps it. One alert per order line, however often it is
    delivered."""
    for i, sk in enumerate(op.skipped):
        if sk.reason == "no_units":
            continue
        what = f"variant {sk.variant}" if sk.reason == "unmapped" else f"SKU {sk.sku[:64]!r}"
        why = ("has no SKU and is not in the channel's variant_skus" if sk.reason == "unmapped"
               else "has a SKU or quantity no stock line may have")
        await raise_alert(
            request.app.state.redis, channel.tenant, "unmapped_line",
            f"order {op.order_id}: line {i + 1} ({what}, qty {sk.qty}) {why}; not stocked",
            sku=sk.sku[:128], channel=channel_id, ref=op.order_id,
            once=f"unmapped:{op.order_id}:{i}")


def _order_lines(reply_lines: list, **extra: str) -> list[dict]:
    return [{"sku": ln.sku, "location": ln.location, "qty": ln.qty, "status": ln.status, **extra}
            for ln in reply_lines]


async def _order_placed(request: Request, channel_id: str, channel: Channel,
                        op: OrderPlaced) -> Applied:
    state = request.app.state
    engine, metrics, tenant = state.engine, state.metrics, channel.tenant
    skipped = op.skipped or None
    unstocked = sum(sk.reason != "no_units" for sk in op.skipped)
    if unstocked:
        metrics.rejections["unmapped_line"] += unstocked
        await _alert_skipped(request, channel_id, channel, op)
    covered: list[ScriptLine] | None = None
    links: list[str] = []
    hold_replayed = True
    if op.hold_id:
        try:
            with metrics.script("commit"):
                committed, hold_replayed = await engine.commit(tenant, op.hold_id, op.order_id,
                                                               channel=channel_id)
            covered = committed.lines
        except errors.HoldNotFound:
            pass  # unknown, released or expired: the sale takes from available
        except errors.IdempotencyConflict:
            record = await engine.hold_lines(tenant, op.hold_id)
            if (record is not None and record.status == "committed"
                    and not _channel_order(request, record.order_id)):
                # The storefront committed it (POST /v1/holds/{id}/commit) under its own
                # order id: the same sale, already counted.
                covered = record.lines
                links.append(record.order_id)
            # Otherwise another channel order spent it, or this order id already names an
            # order: take from available (the order script replays a known order id).
    if covered is None:
        if not op.lines:
            return Applied("order", op.order_id, "ignored", error="no_stocked_lines",
                           skipped=skipped)
        with metrics.script("order"):
            reply, replayed = await engine.order(tenant, op.order_id, op.lines,
                                                 channel=channel_id)
        if not replayed:
            for ln in reply.lines:
                if ln.status != "committed":
                    metrics.rejections[ln.status] += 1
        return Applied("order", op.order_id, "replayed" if replayed else "applied",
                       lines=_order_lines(reply.lines), skipped=skipped)
    held = [{"sku": ln.sku, "location": ln.location, "qty": ln.qty, "status": "held"}
            for ln in covered]
    extra = beyond_hold(op.lines, covered)
    replayed = hold_replayed
    lines = held
    if extra:
        beyond_id = beyond_hold_id(op.order_id)
        with metrics.script("order"):
            reply, beyond_replayed = await engine.order(tenant, beyond_id, extra,
                                                        channel=channel_id)
        if not beyond_replayed:
            for ln in reply.lines:
                if ln.status != "committed":
                    metrics.rejections[ln.status] += 1
        replayed = replayed and beyond_replayed
        lines = held + _order_lines(reply.lines, order_id=beyond_id)
        links.append(beyond_id)
    if links:
        key = tenant_keys(tenant).order_links(op.order_id)
        async with state.redis.pipeline(transaction=False) as pipe:
            pipe.sadd(key, *links)
            pipe.expire(key, state.settings.idempotency_ttl_s)
            await pipe.execute()
    return Applied("commit_hold", op.order_id, "replayed" if replayed else "applied",
                   lines=lines, skipped=skipped)


async def _linked(request: Request, tenant: str, order_id: str) -> list[str]:
    members = await request.app.state.redis.smembers(tenant_keys(tenant).order_links(order_id))
    return sorted(m.decode() for m in members)


async def _order_cancelled(request: Request, channel_id: str, channel: Channel,
                           op: OrderCancelled) -> Applied:
    """Cancels the channel order and the order records linked to it (its storefront hold's
    order, its units beyond the hold)."""
    engine, metrics, tenant = request.app.state.engine, request.app.state.metrics, channel.tenant
    outcomes = []
    for order_id in [op.order_id, *await _linked(request, tenant, op.order_id)]:
        try:
            with metrics.script("cancel"):
                _, replayed = await engine.cancel(tenant, order_id, channel=channel_id)
        except errors.OrderNotFound:
            continue
        outcomes.append(replayed)
    if not outcomes:
        raise errors.OrderNotFound(order_id=op.order_id)
    return Applied("cancel", op.order_id, "replayed" if all(outcomes) else "applied")


async def _order_fulfilled(request: Request, channel_id: str, channel: Channel,
                           op: OrderFulfilled) -> Applied:
    """Fulfils the channel order and the order records linked to it.

    Without lines (every open unit), each record ships all its open units. With lines, the
    first record that can ship them all does, the channel order's own first: the usual
    linked cases are a hold committed by the storefront (the channel order has no record of
    its own) and a shipment that fits one record. A shipment spanning the hold's record and
    the units beyond it is not split: it is ignored as before (`invalid`), and its units stay
    committed until a full fulfilment or cancel (on_hand and committed both stay high, so
    available is unaffected)."""
    engine, metrics, tenant = request.app.state.engine, request.app.state.metrics, channel.tenant
    skipped = op.skipped or None
    linked = await _linked(request, tenant, op.order_id)
    outcomes = []
    error: errors.StockgateError | None = None
    for order_id in [op.order_id, *linked]:
        # Each record's fulfilment needs its own id: the fulfil script keys on it alone.
        fulfilment_id = (op.fulfilment_id if order_id == op.order_id
                         else f"{op.fulfilment_id}>{order_id}")
        try:
            with metrics.script("fulfil"):
                _, replayed = await engine.fulfil(tenant, order_id, fulfilment_id, op.lines,
                                                  channel=channel_id)
        except (errors.OrderNotFound, errors.InvalidRequest) as exc:
            if not linked:
                raise
            error = error or exc
            continue
        outcomes.append(replayed)
        if op.lines:
            break
    if not outcomes:
        raise error or errors.OrderNotFound(order_id=op.order_id)
    return Applied("fulfil", op.order_id, "replayed" if all(outcomes) else "applied",
                   skipped=skipped)


async def _inventory_set(request: Request, channel_id: str, channel: Channel,
                         delivery: Delivery, op: InventorySet) -> Applied:
    """A count the channel reports. An echo of a value Stockgate pushed recently is dropped
    at once; anything else may be the channel's own bookkeeping of a sale whose order webhook
    has not landed yet, so a worker judges it after a settle time (workers/channel_counts.py)
    and only a person's edit in the channel's admin becomes an adjust."""
    from workers.channel_counts import enqueue_channel_count, is_echo

    state = request.app.state
    tenant = channel.tenant
    location = op.location or state.engine.default_location(tenant)
    ref = f"{op.sku}|{location}"
    if await is_echo(state.redis, tenant, channel_id, ref, op.available):
        state.metrics.webhooks[(channel_id, "echo")] += 1
        return Applied("inventory_set", ref, "echo")
    # Keyed on the signed body, not the (unsigned) delivery id: a replayed body is judged once.
    digest = hashlib.blake2b(request.state.raw_body, digest_size=16)
    digest.update(ref.encode())
    await enqueue_channel_count(state.redis, tenant, channel_id, op.sku, location,
                                op.available, digest.hexdigest(), int(time.time() * 1000),
                                state.settings.channel_count_settle_s)
    return Applied("inventory_set", ref, "queued")


routes = [Route("/webhooks/{channel_id}", receive_webhook, methods=["POST"])]
