"""Jobs the gateway enqueues: fetching an order that a webhook names only by id (BigCommerce),
and the retry policy of every job that was acknowledged to a channel.

The fetch job fetches the order from the channel's API (the authoritative data) and applies
what its status says (docs/order-lifecycle.md): places it, fulfils it (every open unit, or per
listed shipment), cancels it, or (a refund or dispute, which cannot say which units came back)
leaves stock alone and raises a `refund_needs_review` alert unless the channel sets
`restock_refunds`. Order ids are "<channel_id>:<channel order id>" so two channels' orders
never collide; the engine's idempotency (order, fulfilment and refund ids) makes a re-run a
no-op.

A job the gateway queued after answering the channel 2xx (and marking the delivery seen) is
the only copy of that work: the channel will not resend it. So a try that fails for a
transient reason is retried here (`run_acknowledged`), with backoff, and one that keeps
failing raises an alert rather than vanishing. arq re-runs a job only when it raises
`arq.worker.Retry` (any other exception fails it for good, whatever `max_tries` says), and
fails a job without running it once `job_try` exceeds the function's `max_tries`; so the job
counts its own tries (RetryConfig.max_tries) and alerts on the last one, and arq's ceiling
(ARQ_MAX_TRIES) sits above it to absorb re-runs after a cancelled try (worker shutdown).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import httpx
import msgspec
from arq.worker import Retry, func
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stockgate import activity
from stockgate.alerts import AlertType, check_refund, raise_alert
from stockgate.audit import audit_unreachable
from stockgate.errors import (
    IdempotencyConflict,
    InvalidRequest,
    OrderNotFound,
    StockgateError,
    StoreUnavailable,
)
from stockgate.jobs import FETCH_ORDER
from stockgate.models import Line, OrderReply, valid_line
from stockgate.stock import StockEngine
from workers.adapters import ChannelAdapter, ChannelOrder, OrderLine, PushError

log = logging.getLogger("stockgate.queue")

# arq's own limit for an acknowledged job: only a backstop (see the module docstring).
ARQ_MAX_TRIES = 50


class RetryConfig(msgspec.Struct, frozen=True):
    """Retries of a job acknowledged to a channel. The defaults (12 tries, 2 s doubling up to
    10 min, with jitter) ride out an outage of the channel, Redis or the audit store of 20 to
    40 minutes; tests shorten them."""

    max_tries: Annotated[int, msgspec.Meta(ge=1, le=ARQ_MAX_TRIES - 10)] = 12
    backoff_base_s: float = 2.0
    backoff_max_s: float = 600.0
    # A channel's Retry-After is honoured up to this long (a bigger one would outlive the job).
    retry_after_max_s: float = 900.0
    # One try's budget, below the arq job timeout (a timed-out job is not retried by arq).
    attempt_timeout_s: float = 20.0


# The order fetch's retries (the name its configs and tests use).
FetchConfig = RetryConfig


class Acknowledged(msgspec.Struct, frozen=True):
    """What an acknowledged job is about, for its log lines and the alert when it gives up."""

    tenant: str
    channel: str
    # "order 202 from bc (delivery hook-2)": the subject of "... was not applied".
    what: str
    alert: AlertType
    # The alert's ref, and its once-marker: one alert per job however often it is redone.
    ref: str
    once: str


def order_ref(channel_id: str, order_id: str) -> str:
    return f"{channel_id}:{order_id}"


async def apply_channel_order(engine: StockEngine, adapter: ChannelAdapter, tenant: str,
                              channel_id: str, order_id: str) -> str:
    """Apply the order's current status, then its returns; returns a short outcome for the
    log. An order placed before the return window changes nothing (`stale_delivery`)."""
    order = await adapter.fetch_order(order_id)
    if await _stale(engine, tenant, channel_id, order):
        return "failed-stale"
    outcome = await _apply_status(engine, adapter, tenant, channel_id, order_id, order)
    if order.returns:
        outcome += await _restock_returns(engine, tenant, channel_id, order)
    return outcome


async def _stale(engine: StockEngine, tenant: str, channel_id: str,
                 order: ChannelOrder) -> bool:
    """The one stale-order rule of every fetch path (webhook-queued fetches, the eBay poller),
    as the gateway's for signed bodies (gateway/webhooks.py _unless_stale): an order placed
    before the return window may have no record left (records live that long), so applying
    it would commit and ship its units a second time. Judged on Redis's clock, the one the
    records expire by; an unknown placement time (0) is never stale."""
    window_ms = engine.settings.return_window_s * 1000
    if order.placed_at_ms <= 0:
        return False
    seconds, micros = await engine.redis.time()
    if order.placed_at_ms >= int(seconds) * 1000 + int(micros) // 1000 - window_ms:
        return False
    ref = order_ref(channel_id, order.order_id)
    log.warning("order %s from %s: placed before the return window; not applied",
                order.order_id, channel_id)
    await raise_alert(engine.redis, tenant, "stale_delivery",
                      f"order {ref} was placed more than "
                      f"{engine.settings.return_window_s // 86_400} days ago (the return "
                      "window); its change is not applied", channel=channel_id, ref=ref,
                      once=f"stale_delivery:{ref}")
    return True


async def _restock_returns(engine: StockEngine, tenant: str, channel_id: str,
                           order: ChannelOrder) -> str:
    """Goods the channel says came back: each return restocked once (its id), from the
    order's shipped units."""
    ref = order_ref(channel_id, order.order_id)
    done = 0
    for ret in order.returns:
        lines = _by_sku(_stock_lines(ret.lines, None, order.order_id, channel_id))
        if not lines:
            continue
        try:
            reply, replayed = await engine.restock(tenant, f"{ref}:return-{ret.shipment_id}",
                                                   lines, order_id=ref, channel=channel_id,
                                                   take_from="shipped")
        except (OrderNotFound, InvalidRequest, IdempotencyConflict) as exc:
            log.warning("order %s from %s: return %s not restocked: %s", order.order_id,
                        channel_id, ret.shipment_id, _describe(exc))
            continue
        if not replayed:
            await check_refund(engine.redis, tenant, reply, channel=channel_id)
        done += 1
    return f", {done} of {len(order.returns)} return(s) restocked"


async def _apply_status(engine: StockEngine, adapter: ChannelAdapter, tenant: str,
                        channel_id: str, order_id: str, order: ChannelOrder) -> str:
    ref = order_ref(channel_id, order_id)
    if order.state == "incomplete":
        return "incomplete"  # the shopper never finished checkout: nothing was sold
    # The order carries no location: it sells from the channel's own (first) location.
    lines = _stock_lines(order.lines, adapter.channel.location_for(None), order_id,
                         channel_id)
    await _alert_unstocked(engine.redis, tenant, channel_id, ref, order.lines, lines)
    if order.state == "open":
        if not lines:
            return "empty"
        reply, _ = await engine.order(tenant, ref, lines, channel=channel_id,
                                      state_ms=order.state_ms)
        await _alert_unknown(engine.redis, tenant, channel_id, ref, reply)
        return "ordered"
    if order.state == "cancelled":
        if order.shipments:  # part shipped before the cancel: those units left for good
            await _ensure_order(engine, tenant, channel_id, ref, lines, order.state_ms)
            try:
                await _fulfil_shipments(engine, tenant, channel_id, ref, order)
            except OrderNotFound:
                pass  # no stockable line: nothing Stockgate counts was sold
        # The channel's API says cancelled: an order not seen yet is recorded as cancelled,
        # so a stale "created" job commits nothing (the order script honours the record).
        # Its time is kept on the record: a fetch that read an older, open state and lands
        # after this (a job running late) is then a no-op rather than a conflict.
        await engine.cancel(tenant, ref, channel=channel_id, tombstone=True,
                            state_ms=order.state_ms)
        return "cancelled"
    # Every other status moves a sale that Stockgate may not have seen yet (its created hook
    # was lost, or its job is still queued): count the sale first, so a shipment ships
    # committed units and a refund has something to review.
    await _ensure_order(engine, tenant, channel_id, ref, lines, order.state_ms)
    try:
        if order.state == "shipped":
            await engine.fulfil(tenant, ref, f"{ref}:status-{order.status_id}", [],
                                channel=channel_id)
            return "fulfilled"
        if order.state == "partially_shipped":
            return await _fulfil_shipments(engine, tenant, channel_id, ref, order)
        return await _refunded(engine, adapter, tenant, channel_id, ref, order, lines)
    except OrderNotFound:
        # No stockable line, so no record to move: nothing Stockgate counts was sold.
        return "empty"


def _stock_lines(order_lines: list[OrderLine], location: str | None, order_id: str,
                 channel_id: str) -> list[Line]:
    # A line no stock line may have (empty or overlong SKU, absurd qty) must not make a
    # script refuse the whole order: skip it, and say so.
    lines = [line for ln in order_lines
             if (line := valid_line(ln.sku, ln.qty, location)) is not None]
    if len(lines) < len(order_lines):
        log.warning("order %s from %s: %d line(s) not stocked (invalid SKU or quantity)",
                    order_id, channel_id, len(order_lines) - len(lines))
    return lines


async def _alert_unstocked(redis: Redis, tenant: str, channel_id: str, ref: str,
                           order_lines: list[OrderLine], lines: list[Line]) -> None:
    """A line that could not be stocked is a sale Stockgate does not count: one alert per
    line, however often the order is fetched (as the gateway does for webhook orders)."""
    stocked = {(ln.sku, ln.qty) for ln in lines}
    for i, ln in enumerate(order_lines):
        if (ln.sku, ln.qty) not in stocked:
            await raise_alert(
                redis, tenant, "unmapped_line",
                f"order {ref}: line {i + 1} (SKU {ln.sku[:64]!r}, qty {ln.qty}) has no SKU or "
                "a SKU or quantity no stock line may have; not stocked",
                sku=ln.sku[:128], channel=channel_id, ref=ref, once=f"unmapped:{ref}:{i}")


async def _alert_unknown(redis: Redis, tenant: str, channel_id: str, ref: str,
                         reply: OrderReply) -> None:
    for i, ln in enumerate(reply.lines):
        if ln.status == "unknown_sku":
            await raise_alert(
                redis, tenant, "unmapped_line",
                f"order {ref}: {ln.sku[:64]!r} x {ln.qty} at {ln.location!r} is not a stocked "
                "SKU and location; not stocked", sku=ln.sku, location=ln.location,
                channel=channel_id, ref=ref, once=f"unknown:{ref}:{i}")


def _by_sku(lines: list[Line]) -> list[Line]:
    """Lines without a location: the fulfil and restock scripts then match the order's own
    lines by SKU, wherever the order committed them."""
    return [msgspec.structs.replace(ln, location=None) for ln in lines]


async def _ensure_order(engine: StockEngine, tenant: str, channel_id: str, ref: str,
                        lines: list[Line], state_ms: int = 0) -> None:
    """Place the order unless Stockgate already has it (the order script replays a known
    order id; with the channel's `state_ms`, a newer state merges into the record, so lines
    dropped since give their open units back before the shipment ships the rest)."""
    if not lines:
        return
    try:
        reply, _ = await engine.order(tenant, ref, lines, channel=channel_id,
                                      state_ms=state_ms)
    except IdempotencyConflict:
        # Known under other lines (edited in the channel since): that record is the sale.
        return
    await _alert_unknown(engine.redis, tenant, channel_id, ref, reply)


async def _fulfil_shipments(engine: StockEngine, tenant: str, channel_id: str, ref: str,
                            order: ChannelOrder) -> str:
    """Partially shipped: ship exactly what each listed shipment took, one fulfilment per
    shipment id, so a shipment seen again (the next status change) is a replay."""
    shipped = 0
    for shipment in order.shipments:
        lines = _by_sku(_stock_lines(shipment.lines, None, order.order_id, channel_id))
        if not lines:
            # Never fulfil with no lines: the script reads that as "every open unit".
            log.warning("order %s from %s: shipment %s names no stocked line; not applied",
                        order.order_id, channel_id, shipment.shipment_id)
            continue
        try:
            await engine.fulfil(tenant, ref, f"{ref}:shipment-{shipment.shipment_id}", lines,
                                channel=channel_id)
        except (InvalidRequest, IdempotencyConflict) as exc:
            # More than the order has open (a line Stockgate refused as oversold), or the
            # shipment was edited after it was applied: the other shipments still apply.
            log.warning("order %s from %s: shipment %s not applied: %s", order.order_id,
                        channel_id, shipment.shipment_id, _describe(exc))
            continue
        shipped += 1
    return f"shipped {shipped} of {len(order.shipments)} shipment(s)"


async def _refunded(engine: StockEngine, adapter: ChannelAdapter, tenant: str,
                    channel_id: str, ref: str, order: ChannelOrder, lines: list[Line]) -> str:
    """A refund or dispute says money moved, not which goods came back: restock nothing and
    ask for review, unless the channel's config says its refunds always bring goods back."""
    if not lines:
        return "empty"
    if adapter.channel.restock_refunds:
        # One refund id for the order whatever the status: a partial refund followed by a
        # full one, or a dispute, restocks the order's units once.
        reply, replayed = await engine.restock(tenant, f"{ref}:refunded", _by_sku(lines),
                                               order_id=ref, channel=channel_id)
        if not replayed:
            await check_refund(engine.redis, tenant, reply, channel=channel_id)
        return "restocked"
    named = ", ".join(f"{ln.sku} x {ln.qty}" for ln in lines)
    reason = f"status-{order.status_id}"
    await raise_alert(
        engine.redis, tenant, "refund_needs_review",
        f"order {ref} {order.status} ({order.status_id}): the channel does not say which "
        f"units came back, nothing was restocked; review: {named}",
        channel=channel_id, ref=ref, once=f"review:{ref}:{reason}")
    return "refund-review"


def retryable(exc: BaseException) -> bool:
    """A failure worth another try: the channel, Redis or the audit store is down, slow or
    busy. Plain Redis calls (alerts, the count logs) raise redis-py's errors, not the engine's
    StoreUnavailable."""
    if isinstance(exc, PushError):
        return exc.status == 0 or exc.status in (408, 425, 429) or exc.status >= 500
    return (isinstance(exc, StoreUnavailable | httpx.HTTPError | TimeoutError | OSError
                       | RedisConnectionError | RedisTimeoutError)
            or audit_unreachable(exc))


def retry_delay(config: RetryConfig, job_try: int, exc: BaseException) -> float:
    """Exponential backoff with jitter (half to all of the step), at least the channel's
    Retry-After when it sent one."""
    step = min(config.backoff_max_s, config.backoff_base_s * 2 ** (max(job_try, 1) - 1))
    delay = step * random.uniform(0.5, 1.0)
    retry_after = getattr(exc, "retry_after", None)
    if retry_after:
        delay = max(delay, min(retry_after, config.retry_after_max_s))
    return delay


async def run_acknowledged(ctx: dict[str, Any], config: RetryConfig, job: Acknowledged,
                           attempt: Callable[[], Awaitable[str]]) -> str:
    """One try of an acknowledged job: its outcome, or `Retry` after a transient failure, or
    (on the last try, or a failure no retry can fix) an alert, so the work never vanishes."""
    job_try: int = ctx.get("job_try") or 1
    try:
        return await asyncio.wait_for(attempt(), config.attempt_timeout_s)
    except Exception as exc:
        # A channel's error page may echo the request: its credentials go before anything
        # logs or keeps the text.
        settings = getattr(ctx["runtime"], "settings", None)
        described = activity.redact(
            _describe(exc), settings.channels.get(job.channel) if settings else None)
        if retryable(exc) and job_try < config.max_tries:
            delay = retry_delay(config, job_try, exc)
            log.warning("%s: try %d/%d failed (%s), retrying in %.2fs", job.what, job_try,
                        config.max_tries, described, delay)
            raise Retry(defer=delay) from exc
        gave_up = (f"gave up after {job_try} tries" if retryable(exc)
                   else f"failed for good on try {job_try}")
        detail = f"{job.what} was not applied: {gave_up}: {described}"
        log.error("%s", detail)
        try:
            await raise_alert(ctx["runtime"].redis, job.tenant, job.alert, detail,
                              channel=job.channel, ref=job.ref, once=job.once)
        except Exception:
            log.exception("could not record the alert for %s", job.what)
            raise
        if isinstance(exc, PushError | StockgateError):
            return "failed"
        raise  # an unexpected error: let arq record it with its traceback


async def _fetch_order(ctx: dict[str, Any], tenant: str, channel_id: str, order_id: str,
                       delivery_id: str) -> str:
    runtime = ctx["runtime"]
    adapter = runtime.propagator.adapters[channel_id]
    job = Acknowledged(
        tenant=tenant, channel=channel_id, alert="order_fetch_failed",
        what=f"order {order_id} from {channel_id} (delivery {delivery_id})",
        ref=order_ref(channel_id, order_id),
        once=f"order_fetch_failed:{channel_id}:{delivery_id}")
    result = await run_acknowledged(
        ctx, runtime.config.fetch, job,
        lambda: apply_channel_order(runtime.engine, adapter, tenant, channel_id, order_id))
    log.info("%s: %s", job.what, result)
    return result


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


fetch_order = func(_fetch_order, name=FETCH_ORDER, max_tries=ARQ_MAX_TRIES)
