"""eBay orders in: poll the Fulfillment API's getOrders for orders modified since a cursor
kept in Redis, and apply each one's status through the same lifecycle code as every other
channel's fetched order (workers/queue.py `apply_channel_order`: the engine's order, fulfil,
cancel and restock with the same order id "<channel>:<eBay orderId>", fulfilment and refund
ids), so a poll that reads an order again changes nothing.

Why polling: eBay pushes no order status change this gateway could take in. Its Notification
API's ORDER_CONFIRMATION topic announces a finished checkout only (nothing on shipments,
cancels or refunds) and still leaves the order to be read with getOrders
(https://developer.ebay.com/api-docs/master/commerce/notification/asyncapi/order_confirmation.yaml).

How each pass works (one per channel at a time, at most one every `poll_interval_s`):
1. read the cursor: the latest lastModifiedDate applied (Redis ms), or, the first time,
   now - initial_lookback_s;
2. ask for `lastmodifieddate:[cursor - poll_overlap_s..]` (eBay's filter is inclusive), page
   by page (limit 200, offset, until no `next`): the overlap re-reads changes eBay indexed
   late, so none falls between two passes;
3. skip an order whose (orderId, lastModifiedDate) was applied already (a key per order, kept
   idempotency_ttl_s, 3 days), apply the others, each one's shipments before its refund;
4. save the cursor as the newest lastModifiedDate applied: only after a pass that read every
   page, so a pass cut short (Redis or eBay down, MAX_PAGES) is read again and deduplicated,
   never skipped.

A 429 (a call quota reached) holds the channel's next pass until its Retry-After: back-
pressure, no failure counted, the cursor unchanged.

Latency: an order change reaches the stock within poll_interval_s (default 5 s) plus one call
and whatever delay eBay has before lastModifiedDate shows it, on average half that.
"""

from __future__ import annotations

import calendar
import logging
import secrets
import time
from typing import Any

import msgspec
from redis.asyncio import Redis

from stockgate.alerts import raise_alert
from stockgate.errors import StockgateError, StoreUnavailable
from stockgate.keys import tenant_keys
from stockgate.settings import Channel, Settings
from stockgate.stock import StockEngine
from workers.adapters import ChannelAdapter, PushError
from workers.adapters.ebay import EbayAdapter, EbayOrder, order_state
from workers.queue import apply_channel_order

log = logging.getLogger("stockgate.ebay")

# A pass that has not ended by then lets another worker take the channel.
PASS_LEASE_MS = 60_000
# Pages per pass at most (200 orders each); the rest waits for the next pass, the cursor
# saved only as far as what was applied.
MAX_PAGES = 50

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class EbayKeys:
    """The poller's keys, under the tenant's hash tag like all of the tenant's keys."""

    def __init__(self, tenant: str, channel: str) -> None:
        base = tenant_keys(tenant).prefix + "ebay:" + channel + ":"
        self.cursor = base + "cursor"  # ms of the newest lastModifiedDate applied
        self.gate = base + "gate"  # exists while the next pass must wait (interval, 429)
        self.lease = base + "lease"  # the pass running now (its token)

    def applied(self, order_id: str) -> str:
        """The lastModifiedDate of the order's state applied last."""
        return self.cursor[: -len("cursor")] + "order:" + order_id


class PassResult(msgspec.Struct):
    ran: bool = False  # False: not due, or another worker holds the channel
    read: int = 0  # orders getOrders returned (with the overlap's repeats)
    applied: int = 0
    skipped: int = 0  # already applied at this lastModifiedDate
    failed: int = 0
    cursor_ms: int = 0
    retry_after_s: float = 0.0  # set when eBay answered 429
    outcomes: list[str] = []


async def redis_ms(redis: Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def poll_channel(redis: Redis, engine: StockEngine, adapter: EbayAdapter, tenant: str,
                       channel_id: str, *, force: bool = False) -> PassResult:
    """One pass for one channel if it is due (`force`: whatever the interval says; a 429's
    hold is always honoured)."""
    config = adapter.config
    keys = EbayKeys(tenant, channel_id)
    result = PassResult()
    held = await redis.pttl(keys.gate)
    if held > 0 and (not force or await redis.get(keys.gate) == b"429"):
        return result
    token = secrets.token_hex(8)
    if not await redis.set(keys.lease, token, nx=True, px=PASS_LEASE_MS):
        return result
    try:
        result.ran = True
        await redis.set(keys.gate, b"interval", px=max(int(config.poll_interval_s * 1000), 1))
        await _pass(redis, engine, adapter, tenant, channel_id, keys, result)
    except PushError as exc:
        if exc.retry_after is not None:
            result.retry_after_s = exc.retry_after
            await redis.set(keys.gate, b"429", px=max(int(exc.retry_after * 1000), 1))
            log.warning("ebay %s: getOrders rate limited; next pass in %.1fs", channel_id,
                        exc.retry_after)
        else:
            log.warning("ebay %s: poll failed: %s", channel_id, exc)
            raise
    finally:
        await redis.eval(_RELEASE, 1, keys.lease, token)
    return result


async def _pass(redis: Redis, engine: StockEngine, adapter: EbayAdapter, tenant: str,
                channel_id: str, keys: EbayKeys, result: PassResult) -> None:
    config = adapter.config
    now = await redis_ms(redis)
    stored = await redis.get(keys.cursor)
    cursor = int(stored) if stored else now - int(config.initial_lookback_s * 1000)
    since = max(cursor - int(config.poll_overlap_s * 1000), 0)
    newest = cursor
    offset = 0
    complete = False
    for _ in range(MAX_PAGES):
        page = await adapter.orders_modified_since(since, offset)
        for order in page.orders:
            result.read += 1
            modified = iso_ms(order.lastModifiedDate)
            outcome = await apply_ebay_order(redis, engine, adapter, tenant, channel_id, keys,
                                             order)
            result.outcomes.append(f"{order.orderId}:{outcome}")
            if outcome == "seen":
                result.skipped += 1
            elif outcome.startswith("failed"):
                result.failed += 1
            else:
                result.applied += 1
            newest = max(newest, min(modified, now))
        offset += len(page.orders)
        if not page.next or not page.orders:
            complete = True
            break
    if not complete:
        # Pages are not in lastModifiedDate order: an unread page may hold older changes
        # than the newest read. The cursor stays; the next pass reads again from it and
        # skips what this one applied.
        log.warning("ebay %s: more than %d pages changed since the cursor; reading on in "
                    "the next pass", channel_id, MAX_PAGES)
        newest = cursor
    elif newest > cursor:
        await redis.set(keys.cursor, newest)
    result.cursor_ms = newest


async def apply_ebay_order(redis: Redis, engine: StockEngine, adapter: EbayAdapter,
                           tenant: str, channel_id: str, keys: EbayKeys,
                           order: EbayOrder) -> str:
    """Apply one order's current state unless that very state was applied already."""
    marker = keys.applied(order.orderId)
    if order.lastModifiedDate and await redis.get(marker) == order.lastModifiedDate.encode():
        return "seen"
    # The stale-order rule (placed before the return window: not applied, stale_delivery
    # alert) is apply_channel_order's, shared with every fetch path: it reads placed_at_ms.
    placed = iso_ms(order.creationDate)
    outcomes = []
    try:
        stages = ["shipping", ""] if (order_state(order) == "refunded"
                                      and order_state(order, refunds=False)
                                      in ("shipped", "partially_shipped")) else [""]
        for stage in stages:
            # Shipments first: a refund after shipping then finds the units shipped.
            adapter.prefetched[order.orderId] = msgspec.structs.replace(
                adapter.channel_order(order, stage), placed_at_ms=placed)
            outcomes.append(await apply_channel_order(engine, adapter, tenant, channel_id,
                                                      order.orderId))
            if outcomes[-1] == "failed-stale":
                break  # refused as a whole (and alerted): its later stages are too
    except StoreUnavailable:
        raise
    except StockgateError as exc:
        # A state the scripts refuse (an edited order's lines, a shipment larger than what is
        # open): alerted as the fetch job does, and not retried on every pass.
        log.warning("ebay %s: order %s not applied: %s", channel_id, order.orderId, exc.code)
        ref = f"{channel_id}:{order.orderId}"
        await raise_alert(redis, tenant, "webhook_not_applied",
                          f"eBay order {ref} ({order.lastModifiedDate}) changed no stock: "
                          f"{exc.detail}", channel=channel_id, ref=ref,
                          once=f"not-applied:{ref}:{order.lastModifiedDate}")
        outcomes.append(f"failed-{exc.code}")
    finally:
        adapter.prefetched.pop(order.orderId, None)
    if (adapter.channel.restock_refunds and order_state(order) == "refunded"
            and order.orderPaymentStatus != "FULLY_REFUNDED"):
        # restock_refunds restocks a full refund only (adapters/ebay.py channel_order): a
        # partial one (a shipping overcharge, one line of several) names no units, so it is
        # left for review as it is on a channel that does not restock refunds.
        ref = f"{channel_id}:{order.orderId}"
        await raise_alert(redis, tenant, "refund_needs_review",
                          f"eBay order {ref} partly refunded "
                          f"({order.orderPaymentStatus or 'refund'}): which units came back "
                          "is not said, nothing was restocked; review", channel=channel_id,
                          ref=ref,
                          once=f"review:{ref}:partial")
    # Only a pass's overlap or a cursor kept back reads an unchanged order again: a few days
    # cover both (and without the marker a replay still changes nothing).
    await redis.set(marker, order.lastModifiedDate, ex=engine.settings.idempotency_ttl_s)
    return "+".join(outcomes)


def ebay_channels(settings: Settings) -> list[tuple[str, Channel]]:
    return [(name, ch) for name, ch in settings.channels.items()
            if ch.kind == "ebay" and ch.ebay is not None and ch.api_url]


async def poll_all(redis: Redis, engine: StockEngine, settings: Settings,
                   adapters: dict[str, ChannelAdapter]) -> int:
    """Every eBay channel's pass that is due; returns how many ran. One channel failing does
    not stop the others."""
    ran = 0
    for name, channel in ebay_channels(settings):
        adapter = adapters.get(name)
        if not isinstance(adapter, EbayAdapter):
            continue
        try:
            result = await poll_channel(redis, engine, adapter, channel.tenant, name)
        except StoreUnavailable:
            raise
        except Exception as exc:  # one channel's failure must not starve the others
            log.warning("ebay %s: pass failed: %s", name, type(exc).__name__)
            continue
        ran += result.ran
    return ran


# arq's name for the cron job (its per-second start and end lines are kept at DEBUG).
EBAY_POLL_JOB = "cron:ebay_poll_job"


async def ebay_poll_job(ctx: dict[str, Any]) -> int:
    """arq cron job (every second): the passes that are due."""
    runtime = ctx["runtime"]
    if not ebay_channels(runtime.settings):
        return 0
    return await poll_all(runtime.redis, runtime.engine, runtime.settings,
                          runtime.propagator.adapters)


def iso_ms(stamp: str) -> int:
    """Milliseconds of eBay's UTC timestamp ("2026-12-07T01:02:03.456Z"); 0 if unreadable."""
    try:
        whole, _, rest = stamp.partition(".")
        millis = int((rest.rstrip("Z") or "0")[:3].ljust(3, "0")) if rest else 0
        parsed = time.strptime(whole.rstrip("Z"), "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return 0
    return calendar.timegm(parsed) * 1000 + millis
