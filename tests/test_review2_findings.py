"""Second independent review (dd76126: state ordering, merges, explicit link, cancel-type refunds,
ids kept in the order record, 409 order_not_yet_known, body digest marked when applied, stale
count reports). One failing reproduction per finding, over HTTP against the real app and the
session's Redis; each docstring names the rule broken (docs/order-lifecycle.md, README) and
the sequence. No worker runs here: where a count report must be judged, the test runs the
worker's judge on the very job the gateway queued.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from gateway_support import OPERATOR, bearer, cell, receive
from redis.asyncio import Redis
from test_gateway_webhooks import post, shopify, shopify_order, standard, woo, woo_order
from test_review_findings import commit, fulfillment, hold, refund, shop

from gateway.app import create_app
from stockgate.audit import audit_store
from stockgate.jobs import job_deserializer
from stockgate.settings import Settings
from workers.channel_counts import judge_channel_count
from workers.propagation import record_push

pytest_plugins = ["gateway_fixtures"]  # gw_settings, app, client


# ---- helpers -------------------------------------------------------------------------------

def _iso(offset_s: float = 0.0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=offset_s)).isoformat(timespec="seconds")


def _woo_at(order: dict[str, Any], status: str, modified: str,
            lines: list[tuple[str, int, int]] | None = None) -> dict[str, Any]:
    body = {**order, "status": status, "date_modified_gmt": modified}
    if lines is not None:
        body["line_items"] = woo_order(order["id"], status, lines)["line_items"]
    return body


async def wc(client: httpx.AsyncClient, topic: str, body: dict[str, Any]) -> httpx.Response:
    r = await post(client, "woo", woo(topic, body))
    assert r.status_code == 200, r.text
    return r


async def alerts_for(client: httpx.AsyncClient, ref: str) -> list[dict[str, Any]]:
    r = await client.get("/v1/alerts", headers=bearer(OPERATOR))
    assert r.status_code == 200, r.text
    return [a for a in r.json()["alerts"] if a.get("ref", "").startswith(ref)]


@pytest.fixture
async def woo_restock_client(gw_settings: Settings, redis: Redis
                             ) -> AsyncIterator[httpx.AsyncClient]:
    """The WooCommerce channel configured with restock_refunds = true (the merchant says this
    shop's refunds always mean the goods came back)."""
    channels = dict(gw_settings.channels)
    channels["woo"] = msgspec.structs.replace(channels["woo"], restock_refunds=True)
    application = create_app(msgspec.structs.replace(gw_settings, channels=channels), redis)
    async with application.router.lifespan_context(application), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=application), base_url="http://gw") as c:
        yield c


# ---- R1 (phantom units): a count report older than one already judged is judged as an edit --

async def test_count_report_delivered_after_a_newer_one_creates_units(
        gw_settings: Settings, redis: Redis, tmp_path: Path) -> None:
    """Rule (docs/order-lifecycle.md, Channel counts): "a report older than one already judged
    is `stale` and changes nothing"; "an edit never creates more units than the report proves".

    A person sets the Shopify count to 25 (updated_at T1), then corrects it to 20 (T2). Shopify
    does not order deliveries (and retries a 503 for 48 h), so the T2 report lands first and is
    judged: +10 (shown 10). The T1 report lands next. The gateway reads its signed updated_at
    only to refuse reports older than the idempotency TTL; the job is queued with the *receipt*
    time, so judge_channel_count sees no later judged report and measures "set to 25 while
    showing 20": +5 units that do not exist (the channel itself shows 20).
    Fix: pass InventorySet.reported_at_ms (signed) to the job and order reports by it
    (gateway/webhooks.py _inventory_set, workers/channel_counts.py)."""
    settings = msgspec.structs.replace(gw_settings, channel_count_settle_s=0.0)
    application = create_app(settings, redis)
    store = audit_store(Settings(data_dir=str(tmp_path)))
    await store.open()
    ref = "SKU-1|main"
    try:
        async with application.router.lifespan_context(application), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=application), base_url="http://gw") as client:
            engine = application.state.engine

            async def deliver_and_judge(available: int, updated_at: str) -> str:
                level = {"inventory_item_id": 7001, "location_id": 9001,
                         "available": available, "updated_at": updated_at}
                r = await post(client, "shop", shopify("inventory_levels/update", level))
                assert r.json()["results"][0]["outcome"] == "queued", r.text
                [key] = [k for k in await redis.keys("arq:job:count:shop:*")
                         if k not in judged]
                judged.add(key)
                args = job_deserializer(await redis.get(key))["a"]
                _, _, sku, loc, avail, fingerprint, received_ms = args
                return await judge_channel_count(redis, engine, store, settings, "acme",
                                                 "shop", sku, loc, avail, fingerprint,
                                                 received_ms)

            judged: set[bytes] = set()
            await receive(client, "SKU-1", 10)
            await record_push(redis, "acme", "shop", ref, 10)
            await asyncio.sleep(0.05)
            t1, t2 = _iso(-120), _iso(-60)
            assert await deliver_and_judge(20, t2) == "applied"  # the newer edit, first
            assert (await cell(client, "SKU-1"))["on_hand"] == 20
            await asyncio.sleep(0.05)
            await deliver_and_judge(25, t1)  # the older edit, delivered late
            state = await cell(client, "SKU-1")
            # The channel shows 20, the person's last word: 20 on hand.
            assert state["on_hand"] == 20, state
    finally:
        await store.close()


# ---- R2 (oversell): an older cancel after a newer same-lines body cancels a paid order -------

async def test_older_failed_body_after_newer_processing_body_cancels_the_order(
        client: httpx.AsyncClient) -> None:
    """Rule (docs/order-lifecycle.md, Later states): "an older body, or an older cancel,
    changes nothing."

    WooCommerce: pending (T1) -> failed (T2, card declined) -> processing (T3, the shopper
    paid on retry). Woo's async deliveries arrive T1, T3, T2. The T3 body has the same lines as
    T1, so order.lua answers it as a byte-for-byte replay (`rec_fp == req.fp`) *before* it
    looks at state_ms, and the record's state_ms stays T1. The late T2 `failed` body is then
    "newer" than the record (T2 > T1) and cancel.lua frees the paid order's unit: the last
    unit is back on sale while it is sold (and an attacker holding the old `failed` body can
    do the same after the 3-day dedupe TTL).
    Fix: in order.lua's replay branch, raise the record's state_ms to max(state_ms, rec)."""
    await receive(client, "SKU-1", 1)
    order = woo_order(6201, "pending", [("SKU-1", 0, 1)])
    await wc(client, "order.created", _woo_at(order, "pending", "2026-11-30T10:00:00"))
    await wc(client, "order.updated", _woo_at(order, "processing", "2026-11-30T10:05:00"))
    assert (await cell(client, "SKU-1"))["committed"] == 1
    await wc(client, "order.updated", _woo_at(order, "failed", "2026-11-30T10:02:00"))
    state = await cell(client, "SKU-1")
    assert (state["committed"], state["available"]) == (1, 0), state


# ---- R3 (oversell): a newer body with fewer units than shipped releases other orders' units --

async def test_newer_body_with_fewer_units_than_shipped_uncommits_another_orders_units(
        client: httpx.AsyncClient) -> None:
    """Rule (docs/order-lifecycle.md, Later states): a newer body is merged, "shipped units are
    never given back"; no field is changed for units that are not this order's.

    A WooCommerce order of 2 is completed (both shipped); another order commits the third
    unit. The shop later edits the completed order to 1 unit (an on-hold body, newer). The
    merge counts open + shipped = 2 as the sale's, matches 1 and "gives back" the other as if
    it were open: `committed -= min(1, c.committed)` takes the *other* order's committed
    unit and the record's line goes to open = -1. That unit is now on sale twice.
    Fix: order.lua leftover branch may release at most the record line's open units
    (x = min(s.qty, s.open, c.committed)); shipped units are never released."""
    await receive(client, "SKU-1", 3)
    order = woo_order(6301, "processing", [("SKU-1", 0, 2)])
    await wc(client, "order.created", _woo_at(order, "processing", "2026-11-30T10:00:00"))
    await wc(client, "order.updated", _woo_at(order, "completed", "2026-11-30T11:00:00"))
    r = await post(client, "std", standard("order.created", {
        "order_id": "mk-6301", "lines": [{"sku": "SKU-1", "qty": 1}]}))
    assert r.status_code == 200, r.text
    assert (await cell(client, "SKU-1"))["committed"] == 1
    await wc(client, "order.updated", _woo_at(order, "on-hold", "2026-11-30T12:00:00",
                                              [("SKU-1", 0, 1)]))
    state = await cell(client, "SKU-1")
    # 3 received, 2 shipped, 1 committed to mk-6301: nothing available.
    assert (state["on_hand"], state["committed"], state["available"]) == (1, 1, 0), state


# ---- R4 (silent loss -> webhook disabled): a completed order with no stocked line is 409 ----

async def test_woo_completed_order_without_stocked_lines_is_answered_409(
        client: httpx.AsyncClient) -> None:
    """Rule (README Webhooks): "A change a retry cannot fix (...) is answered 2xx (...) because
    an error status would make the channel retry for days and then disable the subscription";
    the 409 is only for a fulfilment of an order "not seen yet".

    WooCommerce auto-completes orders of virtual/downloadable products, which typically have no
    SKU (an `unmapped_line`). woocommerce.py turns status `completed` into OrderPlaced +
    OrderFulfilled(":completed", every open unit) unconditionally; the OrderPlaced has no
    stocked line ("no_stocked_lines", no record), so the fulfil hits order_not_found and the
    gateway answers 409 order_not_yet_known - for an order whose create is in this very body
    and will never exist. WooCommerce does not retry and disables a webhook after 5 failed
    deliveries: five such orders and every later order webhook of the shop is lost.
    Fix: woocommerce.py only adds the OrderFulfilled when `lines` is non-empty (as it does for
    `refunded`); same for shopify.py's `ref:fulfilled`."""
    order = woo_order(6401, "completed", [("", 0, 1)])  # a virtual product without SKU
    r = await post(client, "woo", woo("order.created", order))
    assert r.status_code == 200, r.text


# ---- R5 (silent loss): an edit reverted to the original lines is taken for a replay --------

async def test_newer_body_back_to_the_original_lines_is_a_replay(
        client: httpx.AsyncClient) -> None:
    """Rule (docs/order-lifecycle.md, Later states): "a newer body with other lines is merged
    like the explicit link (...) releases open units it does not have".

    A WooCommerce on-hold order of SKU-1 (T1) is edited to add SKU-2 (T2: merged, SKU-2
    committed) and edited back (T3: SKU-2 removed). The T3 body's lines equal the *first*
    body's, and order.lua compares the fingerprint with the record's original `fp` before it
    looks at state_ms: T3 is answered as a replay, SKU-2 stays committed with no expiry (the
    record is PERSISTed while a unit is open) and never ships. Nothing is alerted.
    Fix: a replay is a match with the latest applied state's fingerprint only (channel_fp
    when set); a newer body with another fp than that is merged."""
    await receive(client, "SKU-1", 5)
    await receive(client, "SKU-2", 5)
    order = woo_order(6501, "on-hold", [("SKU-1", 0, 1)])
    await wc(client, "order.created", _woo_at(order, "on-hold", "2026-11-30T10:00:00"))
    await wc(client, "order.updated", _woo_at(order, "on-hold", "2026-11-30T10:10:00",
                                              [("SKU-1", 0, 1), ("SKU-2", 0, 1)]))
    assert (await cell(client, "SKU-2"))["committed"] == 1
    await wc(client, "order.updated", _woo_at(order, "on-hold", "2026-11-30T10:20:00",
                                              [("SKU-1", 0, 1)]))
    state = await cell(client, "SKU-2")
    assert (state["committed"], state["available"]) == (0, 5), state


# ---- R6 (silent loss): a second hold linked to the same order commits the refusal twice ----

async def test_second_hold_linked_to_the_same_order_commits_the_refused_units_again(
        client: httpx.AsyncClient) -> None:
    """Rule (docs/order-lifecycle.md, Explicit link): a storefront commit naming a channel
    order's reference "moves the hold's units that the order asked for but was refused (...)
    into that order, releases the rest of the hold (the order counted it already)".

    Two carts (a retried checkout) hold the last 2 units; the channel order for 1 unit lands
    first and is oversell_rejected. Hold A is committed under shop:6601: its unit moves into
    the order. Hold B is committed under shop:6601 too: commit.lua reads the refusals from the
    record's *reply*, which the first link never updated, and moves B's unit in as well. The
    order of 1 unit now holds 2 committed units; the extra one never ships and the record,
    with a unit open, never expires: a unit lost to sale for good, without an alert.
    Fix: commit.lua counts refused units minus units already linked (record them, or rewrite
    the reply's oversell_rejected lines to `held` when it moves them)."""
    await receive(client, "SKU-1", 2)
    await hold(client, "cart-6601-a", "SKU-1", 1)
    await hold(client, "cart-6601-b", "SKU-1", 1)
    r = await shop(client, "orders/create", shopify_order(6601, [("SKU-1", 111, 1)]))
    assert r.json()["results"][0]["lines"][0]["status"] == "oversell_rejected", r.text
    assert (await commit(client, "cart-6601-a", "shop:6601")).status_code == 200
    r = await commit(client, "cart-6601-b", "shop:6601")
    state = await cell(client, "SKU-1")
    # One unit sold: committed 1, the other cart's unit back on sale.
    assert (state["committed"], state["available"]) == (1, 1), (state, r.text)


# ---- R7 (silent loss): the cancel's `cancelled` credit survives a re-open ------------------

async def test_refund_of_a_reopened_order_is_swallowed_by_the_old_cancel(
        woo_restock_client: httpx.AsyncClient) -> None:
    """Rule (docs/order-lifecycle.md): a newer body re-opens a cancelled order; a refund
    restocks the units the channel says came back (restock_refunds = true: all of them);
    units a cancel freed count only for the *cancel-type refund of that cancel*.

    WooCommerce: processing (T1) -> failed (T2: cancel.lua frees the unit, line.cancelled = 1)
    -> processing (T3: re-opened, the unit committed again on a new record line) -> refunded
    (T4, restock_refunds). restock.lua consumes the old line's `cancelled` credit first
    ("already back on sale, changes nothing") and never reaches the re-opened line: the reply
    says restocked 1 (no refund_not_restocked alert), the unit stays committed for ever.
    (Shipped then refunded: the returned unit never comes back to on_hand.)
    Fix: order.lua's re-open (and any merge) clears `cancelled` on the record's lines."""
    client = woo_restock_client
    await receive(client, "SKU-1", 1)
    order = woo_order(6701, "processing", [("SKU-1", 0, 1)])
    await wc(client, "order.created", _woo_at(order, "processing", "2026-11-30T10:00:00"))
    await wc(client, "order.updated", _woo_at(order, "failed", "2026-11-30T10:01:00"))
    await wc(client, "order.updated", _woo_at(order, "processing", "2026-11-30T10:02:00"))
    assert (await cell(client, "SKU-1"))["committed"] == 1
    r = await wc(client, "order.updated", _woo_at(order, "refunded", "2026-11-30T10:03:00"))
    state = await cell(client, "SKU-1")
    assert (state["committed"], state["available"]) == (0, 1), (state, r.text)


# ---- R8 (silent loss): a later merge re-commits units a cancel-type refund took back --------

async def test_edit_after_a_cancel_refund_commits_the_refunded_unit_again(
        client: httpx.AsyncClient) -> None:
    """Rule (docs/order-lifecycle.md, Later states): a newer body "commits only the units
    beyond the record's open and shipped units"; a refund's units stay back on sale.

    Shopify: an order of 2 x SKU-1 (T1); one unit is refunded before shipping (refunds/create,
    restock_type cancel: open 2 -> 1). Shopify's line_items[].quantity stays 2 (the removal is
    in current_quantity), so the next edit (T2, a SKU-2 line added) carries SKU-1 x 2. The
    merge counts open + shipped - restocked = 1 as the sale's and commits the refunded unit
    again from available: it never ships, the record stays open for ever, no alert.
    Fix: count units a refund took from open as the sale's in the merge (keep a per-line
    `refunded_open` and add it to `kept`), or merge on current quantities."""
    await receive(client, "SKU-1", 5)
    await receive(client, "SKU-2", 5)
    created = {**shopify_order(6801, [("SKU-1", 111, 2)]), "updated_at": _iso(-600)}
    await shop(client, "orders/create", created)
    await shop(client, "refunds/create", refund(8801, 6801, [("SKU-1", 1, "cancel")]))
    assert (await cell(client, "SKU-1"))["committed"] == 1
    edited = {**shopify_order(6801, [("SKU-1", 111, 2), ("SKU-2", 112, 1)]),
              "updated_at": _iso(-60)}
    await shop(client, "orders/updated", edited)
    assert (await cell(client, "SKU-2"))["committed"] == 1  # the edit was merged
    state = await cell(client, "SKU-1")
    assert (state["committed"], state["available"]) == (1, 4), state


# ---- R9 (silent loss under attack): the unsigned delivery id pre-seeds the 409 clock --------

async def test_unsigned_delivery_id_preseeds_the_not_yet_known_clock(
        client: httpx.AsyncClient) -> None:
    """Rule (docs/order-lifecycle.md, stale deliveries): "A fulfilment or refund of an order not
    seen yet is answered 409 with Retry-After: 60 (...) for an hour after its first delivery";
    unsigned headers never change what a body does.

    The first-seen clock is stored as webhook_seen(channel, "first-" + fulfilment ref), in the
    same namespace as delivery ids, which Shopify does not sign. Any signed body under a topic
    that means nothing (its digest is then not marked, so it can be reused at will) marks its
    delivery id seen with the value "1": an attacker sends it with X-Shopify-Webhook-Id
    "first-shop:fulfillment-<id>" for upcoming (sequential) fulfilment ids. The real shipment
    arriving before its order (create still being retried) reads "first seen at epoch 1" and
    is acknowledged at once: never redelivered, its units stay committed for ever.
    Fix: a key namespace delivery ids cannot reach (e.g. keys.not_yet_known(ref)), or prefix
    every delivery id key (`id:` / `body:`)."""
    await receive(client, "SKU-1", 5)
    any_signed = shopify_order(1, [("SKU-1", 111, 1)])
    raw, headers = shopify("orders/create", any_signed)
    r = await client.post("/webhooks/shop", content=raw, headers={
        **headers, "X-Shopify-Topic": "app/uninstalled",
        "X-Shopify-Webhook-Id": "first-shop:fulfillment-7901"})
    assert r.status_code == 200, r.text
    # Order 6901's create is still being retried by Shopify; its shipment lands first.
    r = await post(client, "shop", shopify("fulfillments/create",
                                           fulfillment(7901, 6901, [("SKU-1", 2)])))
    assert r.status_code == 409, r.text


# ---- R10 (oversell, low): a re-open with the cancel's own timestamp is dropped silently ------

async def test_reopen_in_the_same_second_as_the_cancel_is_dropped_silently(
        client: httpx.AsyncClient) -> None:
    """Rule (docs/order-lifecycle.md, Later states): only "an older body, or an older cancel,
    changes nothing"; a body that cannot be ordered against the record "is not applied and
    raises a webhook_not_applied alert".

    date_modified_gmt has one-second resolution. WooCommerce: failed (T) then processing (T,
    a payment retried by the gateway within the second). order.lua's cancelled branch
    requires a strictly newer body and answers an equal one `unchanged` (replayed, no alert),
    whereas an equal-time edit of an open order is an idempotency_conflict with an alert. The
    paid order is never counted and nobody is told.
    Fix: an equal-state body that differs from a cancelled record raises webhook_not_applied
    (or re-opens: the cancel was applied at equal time too)."""
    await receive(client, "SKU-1", 1)
    order = woo_order(7001, "pending", [("SKU-1", 0, 1)])
    await wc(client, "order.created", _woo_at(order, "pending", "2026-11-30T10:00:00"))
    await wc(client, "order.updated", _woo_at(order, "failed", "2026-11-30T10:00:07"))
    r = await wc(client, "order.updated", _woo_at(order, "processing", "2026-11-30T10:00:07"))
    state = await cell(client, "SKU-1")
    assert state["committed"] == 1 or await alerts_for(client, "woo:7001"), (state, r.text)

