"""Webhook ingress: `POST /webhooks/{channel_id}` verifies the channel's signature over the raw
body, dedupes the delivery, and applies the stock operations it decodes into.

Dedupe: on the channel's delivery or event id and on a digest of the signed body, so the same
body resent under a fresh (unsigned) id and another topic is a duplicate. A delivery is marked
seen only after its operations went through, so a delivery that failed (Redis down -> 503) is
processed again when the channel retries. Two copies racing each other may both apply; the
stock scripts are idempotent on order, refund and fulfilment ids and on the adjust key, so the
second changes nothing. The rules of an order's life are in docs/order-lifecycle.md.

Webhook replies are 2xx for anything a retry cannot fix (unknown order, SKU, topic): a channel
that keeps getting errors retries for days and then disables the subscription.
"""

from __future__ import annotations

import asyncio
import hashlib
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
    RefundReview,
    Refused,
    Skipped,
)
from gateway.errors import NotFound, OrderNotYetKnown, UnsupportedMediaType
from gateway.http import JSONReply, is_json, read_body
from stockgate import errors
from stockgate.alerts import check_refund, raise_alert
from stockgate.deliveries import is_echo
from stockgate.jobs import enqueue_channel_count, enqueue_fetch_order
from stockgate.keys import tenant_keys
from stockgate.settings import Channel

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
    body = await read_body(request, settings.max_body_bytes, settings.body_timeout_s)
    request.state.raw_body = body
    delivery: Delivery = adapter.verify(channel, request.headers, body, time.time(),
                                        settings.webhook_tolerance_s)
    state.tally.count(channel.tenant, "requests")  # verified: a forger cannot inflate it
    metrics = state.metrics
    if delivery.ping:
        metrics.webhooks[(channel_id, "ping")] += 1
        return JSONReply(WebhookReply("ping"))
    if not is_json(request):
        raise UnsupportedMediaType("webhook bodies must be application/json")
    delivery, operations = adapter.decode(channel_id, channel, delivery, body)
    operations = _unless_stale(operations, settings.return_window_s,
                               settings.idempotency_ttl_s)
    keys = tenant_keys(channel.tenant)
    # Keyed on the channel's id for the delivery and on the signed body itself: the id and the
    # topic are unsigned headers on some channels (Shopify), so a body resent under a fresh id
    # must still be recognised.
    seen_keys = [keys.webhook_seen(channel_id, delivery.id),
                 keys.webhook_seen(channel_id, "body-" + hashlib.blake2b(
                     body, digest_size=20).hexdigest())]
    commands = state.commands
    if await commands.run("EXISTS", *seen_keys):
        metrics.webhooks[(channel_id, "duplicate")] += 1
        return JSONReply(WebhookReply("duplicate", delivery.id, delivery.topic))
    results = [await _apply(request, channel_id, channel, delivery, op) for op in operations]
    # The body is marked seen only when it did something: a signed body first sent under a
    # topic that means nothing (or contradicts it) must not make its real delivery a
    # duplicate. Its delivery id is marked either way.
    did = any(r.outcome != "ignored" for r in results)
    # Sent in the same event-loop tick, so the Wire writes them as one pipeline: one round
    # trip, as before the body key was added.
    await asyncio.gather(*(commands.run("SET", key, b"1", "EX", settings.idempotency_ttl_s)
                           for key in (seen_keys if did else seen_keys[:1])))
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
    """One operation; stock errors a retry cannot fix become an `ignored` result, and an
    operation that moved no stock for a reason someone must look at raises an alert."""
    name = type(op).__struct_config__.tag
    try:
        return await _run(request, channel_id, channel, delivery, op)
    except errors.StoreUnavailable:
        raise
    except errors.OrderNotFound:
        if isinstance(op, OrderFulfilled | Refunded):
            await _order_not_yet_known(request, channel_id, channel, delivery, op)
        return Applied(str(name), _ref(op), "ignored", error="order_not_found")
    except errors.StockgateError as exc:
        log.warning("webhook %s from %s: %s %s", delivery.id, channel_id, name, exc.code)
        if isinstance(exc, errors.IdempotencyConflict | errors.InvalidRequest):
            # An order edited in the channel, a shipment larger than what is open: the
            # channel says goods moved and Stockgate did not move them. Never silent.
            await raise_alert(
                request.app.state.redis, channel.tenant, "webhook_not_applied",
                f"{name} {_ref(op)} from {channel_id} changed no stock: {exc.detail}",
                channel=channel_id, ref=_ref(op), once=f"not-applied:{_ref(op)}:{name}")
        return Applied(str(name), _ref(op), "ignored", error=exc.code)


# A shipment or refund of an order not seen yet is asked again for this long after its first
# delivery (the order's create is usually seconds behind); after that it is acknowledged and
# an alert stands, so a channel never disables the subscription over it.
NOT_YET_KNOWN_RETRY_S = 3600


async def _order_not_yet_known(request: Request, channel_id: str, channel: Channel,
                               delivery: Delivery, op: OrderFulfilled | Refunded) -> None:
    state = request.app.state
    ref = op.fulfilment_id if isinstance(op, OrderFulfilled) else op.refund_id
    first = tenant_keys(channel.tenant).webhook_first_seen(channel_id, ref)
    now = int(time.time())
    # One command: set the first-seen time unless set, and read what was there.
    since = int(await state.commands.run("SET", first, now, "NX", "GET", "EX", 86_400) or now)
    if now - since < NOT_YET_KNOWN_RETRY_S:
        raise OrderNotYetKnown(f"order {op.order_id} is not known yet; deliver again later")
    await raise_alert(
        state.redis, channel.tenant, "webhook_not_applied",
        f"{ref} names order {op.order_id}, which Stockgate never received: nothing moved",
        channel=channel_id, ref=ref, once=f"not-applied:{ref}")


def _ref(op: Operation) -> str:
    if isinstance(op, InventorySet):
        return f"{op.sku}|{op.location}"
    if isinstance(op, FetchOrder):
        return op.channel_order_id
    if isinstance(op, Refunded):
        return op.refund_id
    if isinstance(op, Refused):
        return op.ref
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
        await _alert_skipped(request, channel_id, channel, op.refund_id, op.skipped, "refund")
        with metrics.script("restock"):
            reply, replayed = await engine.restock(tenant, op.refund_id, op.lines,
                                                   order_id=op.order_id, channel=channel_id,
                                                   take_from=op.take_from)
        if not replayed:
            # A line that restored nothing leaves no outbox event: only the reply shows it.
            await check_refund(state.redis, tenant, reply, channel=channel_id)
        return Applied("restock", op.refund_id, "replayed" if replayed else "applied",
                       skipped=op.skipped or None)
    if isinstance(op, InventorySet):
        return await _inventory_set(request, channel_id, channel, delivery, op)
    if isinstance(op, Refused):
        metrics.rejections[op.reason] += 1
        await raise_alert(state.redis, tenant, op.reason, op.detail, channel=channel_id,
                          ref=op.ref, once=f"{op.reason}:{channel_id}:{delivery.id}")
        return Applied("refused", op.ref, "ignored", error=op.reason)
    if isinstance(op, RefundReview):
        # The channel cannot say which units came back: change no stock, ask a person.
        named = ", ".join(f"{ln.sku} x {ln.qty}" for ln in op.lines)
        await raise_alert(
            state.redis, tenant, "refund_needs_review",
            f"order {op.order_id} {op.reason}: the channel does not say which units came "
            f"back, nothing was restocked; review: {named}", channel=channel_id,
            ref=op.order_id, once=f"review:{op.order_id}:{op.reason}")
        return Applied("refund_review", op.order_id, "applied")
    await enqueue_fetch_order(state.queue, tenant, channel_id, op.channel_order_id, delivery.id)
    return Applied("fetch_order", op.channel_order_id, "queued")


# ---- channel orders ------------------------------------------------------------------------
#
# Every rule of an order's life (which hold an order may claim, links, expiry, record lifetime)
# lives in the scripts, one atomic call per operation: here an order is one `order` call with
# the hold it names as a hint, a cancel one `cancel`, a fulfilment one `fulfil`.


def _unless_stale(operations: list[Operation], window_s: int, ttl_s: int) -> list[Operation]:
    """One rule for stale deliveries: a body is judged by the signed time it carries, against
    how long Stockgate remembers what it applied. An order body placed before the return
    window changes nothing (its record may be gone, so its create would commit units again);
    a count report older than the idempotency TTL changes nothing (its dedupe record may be
    gone, so a replay would be judged as a new edit). Unsigned times (X-Shopify-Triggered-At)
    are never trusted; inside those windows, late and out-of-order deliveries are harmless
    because every operation is idempotent on its own id, kept as long as its order."""
    now_ms = int(time.time() * 1000)
    for op in operations:
        if isinstance(op, OrderPlaced | OrderCancelled) and (
                0 < op.placed_at_ms < now_ms - window_s * 1000):
            return [Refused("stale_delivery", op.order_id,
                            f"order {op.order_id} was placed more than {window_s // 86_400} "
                            "days ago (the return window); its delivery changes nothing")]
        if isinstance(op, InventorySet) and 0 < op.reported_at_ms < now_ms - ttl_s * 1000:
            return [Refused("stale_delivery", f"{op.sku}|{op.location}",
                            f"count report of {op.sku} made more than {ttl_s // 3600} hours "
                            "ago; its delivery changes nothing")]
    return operations


async def _alert_skipped(request: Request, channel_id: str, channel: Channel, ref: str,
                         skipped: list[Skipped], what: str) -> None:
    """A line that was not stocked is a sale, shipment or return Stockgate does not count:
    oversell elsewhere unless someone maps it. One alert per line, however often it is
    delivered."""
    for i, sk in enumerate(skipped):
        if sk.reason == "no_units":
            continue
        kind = f"variant {sk.variant}" if sk.reason == "unmapped" else f"SKU {sk.sku[:64]!r}"
        why = ("has no SKU and is not in the channel's variant_skus" if sk.reason == "unmapped"
               else "has a SKU or quantity no stock line may have")
        request.app.state.metrics.rejections["unmapped_line"] += 1
        await raise_alert(
            request.app.state.redis, channel.tenant, "unmapped_line",
            f"{what} {ref}: line {i + 1} ({kind}, qty {sk.qty}) {why}; not stocked",
            sku=sk.sku[:128], channel=channel_id, ref=ref, once=f"unmapped:{ref}:{i}")


async def _order_placed(request: Request, channel_id: str, channel: Channel,
                        op: OrderPlaced) -> Applied:
    state = request.app.state
    engine, metrics = state.engine, state.metrics
    skipped = op.skipped or None
    await _alert_skipped(request, channel_id, channel, op.order_id, op.skipped, "order")
    if not op.lines:
        return Applied("order", op.order_id, "ignored", error="no_stocked_lines",
                       skipped=skipped)
    with metrics.script("order"):
        reply, replayed = await engine.order(channel.tenant, op.order_id, op.lines,
                                             hold_id=op.hold_id, state_ms=op.state_at_ms,
                                             channel=channel_id)
    if not replayed:
        for i, ln in enumerate(reply.lines):
            if ln.status not in ("committed", "held"):
                metrics.rejections[ln.status] += 1
            if ln.status == "unknown_sku":
                # No stock line at that SKU and location: a sale Stockgate cannot count.
                await raise_alert(
                    state.redis, channel.tenant, "unmapped_line",
                    f"order {op.order_id}: {ln.sku[:64]!r} x {ln.qty} at {ln.location!r} is "
                    "not a stocked SKU and location; not stocked", sku=ln.sku,
                    location=ln.location, channel=channel_id, ref=op.order_id,
                    once=f"unknown:{op.order_id}:{i}")
    lines = [{"sku": ln.sku, "location": ln.location, "qty": ln.qty, "status": ln.status}
             for ln in reply.lines]
    return Applied("commit_hold" if reply.hold_id else "order", op.order_id,
                   "replayed" if replayed else "applied", lines=lines, skipped=skipped)


async def _order_cancelled(request: Request, channel_id: str, channel: Channel,
                           op: OrderCancelled) -> Applied:
    engine, metrics = request.app.state.engine, request.app.state.metrics
    with metrics.script("cancel"):
        # The body is signed and says "cancelled": an order not seen yet is recorded as
        # cancelled, so its create arriving late commits nothing.
        _, replayed = await engine.cancel(channel.tenant, op.order_id, channel=channel_id,
                                          tombstone=True, state_ms=op.state_at_ms)
    return Applied("cancel", op.order_id, "replayed" if replayed else "applied")


async def _order_fulfilled(request: Request, channel_id: str, channel: Channel,
                           op: OrderFulfilled) -> Applied:
    engine, metrics = request.app.state.engine, request.app.state.metrics
    await _alert_skipped(request, channel_id, channel, op.fulfilment_id, op.skipped,
                         "fulfilment")
    with metrics.script("fulfil"):
        _, replayed = await engine.fulfil(channel.tenant, op.order_id, op.fulfilment_id,
                                          op.lines, channel=channel_id)
    return Applied("fulfil", op.order_id, "replayed" if replayed else "applied",
                   skipped=op.skipped or None)


async def _inventory_set(request: Request, channel_id: str, channel: Channel,
                         delivery: Delivery, op: InventorySet) -> Applied:
    """A count the channel reports. An echo of a value Stockgate pushed recently is dropped
    at once; anything else may be the channel's own bookkeeping of a sale whose order webhook
    has not landed yet, so a worker judges it after a settle time (workers/channel_counts.py)
    and only a person's edit in the channel's admin becomes an adjust."""
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
    # Judged as of when the channel made the count (its signed time, when it says), not when
    # it reached us: reports delivered out of order are then judged in the order they were
    # made, and an older one than a report already judged changes nothing.
    now_ms = int(time.time() * 1000)
    made_ms = min(op.reported_at_ms, now_ms) if op.reported_at_ms > 0 else now_ms
    await enqueue_channel_count(state.queue, tenant, channel_id, op.sku, location,
                                op.available, digest.hexdigest(), made_ms,
                                state.settings.channel_count_settle_s)
    return Applied("inventory_set", ref, "queued")


routes = [Route("/webhooks/{channel_id}", receive_webhook, methods=["POST"])]
