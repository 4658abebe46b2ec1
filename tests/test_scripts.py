"""The Lua stock scripts, one test class per script, against the real embedded server.

Every rejection is checked twice: the typed error the engine raises, and that Redis is
byte-for-byte what it was before (a script that failed half-way would leave a trace there).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis

from stockgate import errors
from stockgate.keys import tenant_keys
from stockgate.models import CellState, Event, Line, event_decoder
from stockgate.stock import StockEngine

T = "default"
K = tenant_keys(T)


# ---- helpers ----------------------------------------------------------------------------------

async def receive(engine: StockEngine, sku: str, qty: int, location: str | None = None) -> None:
    """Goods in: the first adjust of a SKU or location creates it."""
    await engine.adjust(T, sku, reason="receipt", idempotency_key=f"recv-{sku}-{location}-{qty}",
                        location=location, delta=qty)


async def cell(engine: StockEngine, sku: str, location: str = "main") -> CellState:
    return (await engine.stock(T, sku)).locations[location]


async def events(redis: Redis) -> list[Event]:
    """The tenant's outbox, decoded the way workers decode it (id = stream entry id)."""
    out = []
    for entry_id, fields in await redis.xrange(K.outbox):
        ev = event_decoder.decode(fields[b"e"])
        out.append(msgspec.structs.replace(ev, id=entry_id.decode()))
    return out


async def xlen(redis: Redis) -> int:
    return await redis.xlen(K.outbox)


async def snapshot(redis: Redis) -> dict[bytes, Any]:
    """Every key and its whole value, to prove that a refused call wrote nothing."""
    state: dict[bytes, Any] = {}
    async for key in redis.scan_iter(count=1000):
        kind = (await redis.type(key)).decode()
        if kind == "hash":
            state[key] = await redis.hgetall(key)
        elif kind == "string":
            state[key] = await redis.get(key)
        elif kind == "zset":
            state[key] = await redis.zrange(key, 0, -1, withscores=True)
        elif kind == "set":
            state[key] = await redis.smembers(key)
        elif kind == "stream":
            state[key] = await redis.xrange(key)
        else:
            raise AssertionError(f"unexpected key type {kind} for {key!r}")
    return state


async def raw_call(engine: StockEngine, op: str, keys: list[str], request: Any,
                   channel: str = "") -> list[Any]:
    """Call a script directly, past the engine's Python-side shaping, as a buggy or hostile
    client of the scripts could."""
    body = request if isinstance(request, str) else json.dumps(request)
    return await engine.scripts.call(op, keys, [T, K.prefix, body, channel])


def check_after(ev: Event, state: CellState) -> None:
    """An event's `after` is the cell as it is now, with available as the design defines it."""
    assert ev.after == state
    assert state.available == (state.on_hand - state.reserved - state.committed
                                - state.unavailable - state.safety)


# ---- hold ---------------------------------------------------------------------------------------

class TestHold:
    async def test_reserves_and_emits_one_event(self, engine: StockEngine, redis: Redis) -> None:
        await receive(engine, "A", 10)
        before = await xlen(redis)
        t0 = int(time.time() * 1000)
        reply, replayed = await engine.hold(T, [Line("A", 3)], hold_id="h1", ttl_s=60,
                                            channel="web")
        assert not replayed
        assert reply.hold_id == "h1"
        assert [tuple(msgspec.structs.astuple(ln)) for ln in reply.lines] == [("A", "main", 3)]
        assert t0 + 60_000 <= reply.expires_at_ms <= int(time.time() * 1000) + 60_000 + 1
        state = await cell(engine, "A")
        assert (state.on_hand, state.reserved, state.available) == (10, 3, 7)
        assert await xlen(redis) == before + 1
        ev = (await events(redis))[-1]
        assert ev.id and ev.type == "hold" and ev.tenant == T
        assert (ev.sku, ev.location, ev.delta) == ("A", "main", {"reserved": 3})
        assert (ev.source.channel, ev.source.ref, ev.idempotency_key) == ("web", "h1", "hold:h1")
        check_after(ev, state)

    async def test_multi_line_one_event_per_cell(self, engine: StockEngine, redis: Redis) -> None:
        await receive(engine, "A", 10)
        await receive(engine, "B", 10)
        await receive(engine, "A", 5, location="east")
        before = await xlen(redis)
        # "A" at main twice: the script must judge and reserve the sum as one change.
        await engine.hold(T, [Line("A", 2), Line("B", 1), Line("A", 3), Line("A", 4, "east")],
                          hold_id="cart")
        assert (await cell(engine, "A")).reserved == 5
        assert (await cell(engine, "B")).reserved == 1
        assert (await cell(engine, "A", "east")).reserved == 4
        evs = (await events(redis))[before:]
        assert [(e.sku, e.location, e.delta) for e in evs] == [
            ("A", "main", {"reserved": 5}), ("B", "main", {"reserved": 1}),
            ("A", "east", {"reserved": 4})]

    async def test_insufficient_stock_changes_nothing(self, engine: StockEngine,
                                                      redis: Redis) -> None:
        await receive(engine, "A", 2)
        before = await snapshot(redis)
        with pytest.raises(errors.InsufficientStock) as exc:
            await engine.hold(T, [Line("A", 3)], hold_id="h1")
        assert exc.value.fields == {"sku": "A", "location": "main", "available": 2}
        assert await snapshot(redis) == before

    async def test_same_cell_twice_is_judged_on_the_sum(self, engine: StockEngine,
                                                        redis: Redis) -> None:
        await receive(engine, "A", 4)
        before = await snapshot(redis)
        with pytest.raises(errors.InsufficientStock):
            await engine.hold(T, [Line("A", 3), Line("A", 2)], hold_id="h1")
        assert await snapshot(redis) == before

    @pytest.mark.parametrize("bad_line", [
        Line("B", 99),                 # not enough
        Line("NOPE", 1),               # unknown SKU
        Line("B", 1, "nowhere"),       # known SKU, unknown location
        Line("B", 0),                  # invalid quantity
    ])
    async def test_one_bad_line_reserves_no_line(self, engine: StockEngine, redis: Redis,
                                                 bad_line: Line) -> None:
        await receive(engine, "A", 10)
        await receive(engine, "B", 10)
        before = await snapshot(redis)
        with pytest.raises((errors.InsufficientStock, errors.UnknownSku, errors.InvalidRequest)):
            await engine.hold(T, [Line("A", 1), bad_line, Line("A", 1, None)], hold_id="cart")
        assert await snapshot(redis) == before
        assert (await cell(engine, "A")).reserved == 0

    async def test_unknown_sku(self, engine: StockEngine, redis: Redis) -> None:
        before = await snapshot(redis)
        with pytest.raises(errors.UnknownSku) as exc:
            await engine.hold(T, [Line("NOPE", 1)], hold_id="h1")
        assert exc.value.fields == {"sku": "NOPE", "location": "main"}
        assert await snapshot(redis) == before

    # msgspec validates only when decoding, so a Struct built in code can carry a bad qty:
    # the script is the last line of defence and must refuse it.
    @pytest.mark.parametrize("qty", [0, -1, 1.5, "1", 10**10])
    async def test_invalid_qty_via_engine(self, engine: StockEngine, redis: Redis,
                                          qty: Any) -> None:
        await receive(engine, "A", 10)
        before = await snapshot(redis)
        with pytest.raises(errors.InvalidRequest):
            await engine.hold(T, [Line("A", qty)], hold_id="h1")
        assert await snapshot(redis) == before

    @pytest.mark.parametrize("request_", [
        {"ttl_ms": 1000, "lines": [["A", "main", 1]]},                      # no hold_id
        {"hold_id": "h", "ttl_ms": 0, "lines": [["A", "main", 1]]},          # ttl 0
        {"hold_id": "h", "ttl_ms": 1.5, "lines": [["A", "main", 1]]},        # fractional ttl
        {"hold_id": "h", "ttl_ms": 1000, "lines": []},                       # no lines
        {"hold_id": "h", "ttl_ms": 1000, "lines": {"A": 1}},                 # not a list
        {"hold_id": "h", "ttl_ms": 1000, "lines": [5]},                      # line not a list
        {"hold_id": "h", "ttl_ms": 1000, "lines": [["A", "main"]]},          # no qty
        {"hold_id": "h", "ttl_ms": 1000, "lines": [["", "main", 1]]},        # empty sku
        {"hold_id": "h", "ttl_ms": 1000, "lines": [["A", 7, 1]]},            # location not text
        {"hold_id": "h", "ttl_ms": 1000, "lines": [["A", "main", -2]]},      # negative
    ])
    async def test_invalid_request_direct(self, engine: StockEngine, redis: Redis,
                                          request_: dict[str, Any]) -> None:
        await receive(engine, "A", 10)
        before = await snapshot(redis)
        request_ = {"fp": "f", "idem_ttl_ms": 60_000, **request_}
        reply = await raw_call(engine, "hold", [K.outbox, K.hold("h"), K.expiry], request_)
        assert reply[0] == b"invalid"
        assert await snapshot(redis) == before

    async def test_repeat_returns_first_reply_and_changes_nothing(self, engine: StockEngine,
                                                                  redis: Redis) -> None:
        await receive(engine, "A", 10)
        first, replayed_first = await engine.hold(T, [Line("A", 2)], hold_id="h1")
        before = await snapshot(redis)
        again, replayed = await engine.hold(T, [Line("A", 2)], hold_id="h1")
        assert (replayed_first, replayed) == (False, True)
        assert again == first
        assert await snapshot(redis) == before

    async def test_repeat_after_stock_ran_out_still_answers_first_reply(
            self, engine: StockEngine, redis: Redis) -> None:
        await receive(engine, "A", 2)
        first, _ = await engine.hold(T, [Line("A", 2)], hold_id="h1")
        # A retried request must not be judged again against today's stock.
        again, replayed = await engine.hold(T, [Line("A", 2)], hold_id="h1")
        assert replayed and again == first
        assert (await cell(engine, "A")).reserved == 2

    @pytest.mark.parametrize("change", [
        {"lines": [Line("A", 3)]},
        {"lines": [Line("A", 2)], "ttl_s": 5},
        {"lines": [Line("A", 2)], "customer": "c9"},
        {"lines": [Line("A", 2)], "channel": "other"},
    ])
    async def test_reused_hold_id_with_other_request_conflicts(
            self, engine: StockEngine, redis: Redis, change: dict[str, Any]) -> None:
        await receive(engine, "A", 10)
        await engine.hold(T, [Line("A", 2)], hold_id="h1")
        before = await snapshot(redis)
        with pytest.raises(errors.IdempotencyConflict):
            await engine.hold(T, hold_id="h1", **change)
        assert await snapshot(redis) == before

    async def test_backorder_limit(self, engine: StockEngine, redis: Redis) -> None:
        await receive(engine, "A", 2)
        await engine.set_policy(T, "A", backorder_limit=3)
        await engine.hold(T, [Line("A", 5)], hold_id="h1")
        assert (await cell(engine, "A")).available == -3
        before = await snapshot(redis)
        with pytest.raises(errors.InsufficientStock) as exc:
            await engine.hold(T, [Line("A", 1)], hold_id="h2")
        # Channels are never shown a negative count.
        assert exc.value.fields["available"] == 0
        assert await snapshot(redis) == before
        view = await engine.stock(T, "A")
        assert view.available == 0 and view.locations["main"].reserved == 5

    async def test_safety_buffer_is_not_sold(self, engine: StockEngine, redis: Redis) -> None:
        await receive(engine, "A", 10)
        await engine.set_policy(T, "A", safety=4)
        with pytest.raises(errors.InsufficientStock) as exc:
            await engine.hold(T, [Line("A", 7)], hold_id="h1")
        assert exc.value.fields["available"] == 6
        await engine.hold(T, [Line("A", 6)], hold_id="h2")
        state = await cell(engine, "A")
        assert (state.reserved, state.safety, state.available) == (6, 4, 0)

    async def test_unavailable_units_are_not_sold(self, engine: StockEngine) -> None:
        await receive(engine, "A", 10)
        await engine.adjust(T, "A", reason="damaged", idempotency_key="dmg",
                            unavailable_delta=8)
        with pytest.raises(errors.InsufficientStock):
            await engine.hold(T, [Line("A", 3)], hold_id="h1")
        await engine.hold(T, [Line("A", 2)], hold_id="h2")
        assert (await cell(engine, "A")).available == 0

    async def test_max_per_customer(self, engine: StockEngine, redis: Redis) -> None:
        await receive(engine, "A", 10)
        await engine.set_policy(T, "A", max_per_customer=2)
        await engine.hold(T, [Line("A", 2)], hold_id="h1", customer="c1")
        before = await snapshot(redis)
        with pytest.raises(errors.LimitExceeded) as exc:
            await engine.hold(T, [Line("A", 1)], hold_id="h2", customer="c1")
        assert exc.value.fields == {"sku": "A", "limit": 2, "already": 2}
        # Two lines of one SKU in one cart count together.
        with pytest.raises(errors.LimitExceeded):
            await engine.hold(T, [Line("A", 2), Line("A", 1)], hold_id="h3", customer="c2")
        assert await snapshot(redis) == before
        await engine.hold(T, [Line("A", 2)], hold_id="h4", customer="c2")
        # Without a customer id there is nothing to count against.
        await engine.hold(T, [Line("A", 3)], hold_id="h5")
        # Releasing a hold gives the customer's allowance back.
        await engine.release(T, "h1")
        await engine.hold(T, [Line("A", 1)], hold_id="h6", customer="c1")
        assert (await cell(engine, "A")).reserved == 2 + 3 + 1

    async def test_ttl_expiry(self, engine: StockEngine, redis: Redis) -> None:
        await receive(engine, "A", 5)
        await engine.hold(T, [Line("A", 2)], hold_id="short", ttl_s=1, channel="web")
        await engine.hold(T, [Line("A", 1)], hold_id="long", ttl_s=60)
        assert (await engine.expire(T)).expired == 0
        await asyncio.sleep(1.1)
        before = await xlen(redis)
        reply = await engine.expire(T)
        assert (reply.expired, reply.remaining_due) == (1, 0)
        state = await cell(engine, "A")
        assert (state.reserved, state.available) == (1, 4)
        evs = (await events(redis))[before:]
        assert [(e.type, e.delta, e.source.ref, e.idempotency_key) for e in evs] == [
            ("expire", {"reserved": -2}, "short", "expire:short")]
        check_after(evs[0], state)
        with pytest.raises(errors.HoldNotFound):
            await engine.commit(T, "short", "o1")
        assert (await engine.expire(T)).expired == 0


# ---- release ------------------------------------------------------------------------------------

class TestRelease:
    async def test_gives_units_back(self, engine: StockEngine, redis: Redis) -> None:
        await receive(engine, "A", 10)
        await receive(engine, "B", 10)
        await engine.hold(T, [Line("A", 3), Line("B", 2)], hold_id="h1")
        before = await xlen(redis)
        reply, replayed = await engine.release(T, "h1", channel="web")
        assert not replayed and (reply.hold_id, reply.status) == ("h1", "released")
        a, b = await cell(engine, "A"), await cell(engine, "B")
        assert (a.reserved, a.available, b.reserved, b.available) == (0, 10, 0, 10)
        evs = (await events(redis))[before:]
        assert [(e.type, e.sku, e.delta, e.source.channel, e.source.ref, e.idempotency_key)
                for e in evs] == [("release", "A", {"reserved": -3}, "web", "h1", "release:h1"),
                                  ("release", "B", {"reserved": -2}, "web", "h1", "release:h1")]
        check_after(evs[1], b)
        # A released hold never expires later.
        assert await redis.zscore(K.expiry, "h1") is None

    async def test_repeat_changes_nothing(self, engine: StockEngine, redis: Redis) -> None:
        await receive(engine, "A", 10)
        await engine.hold(T, [Line("A", 3)], hold_id="h1")
        first, _ = await engine.release(T, "h1")
        before = await snapshot(redis)
        again, replayed = await engine.release(T, "h1")
        assert replayed and again == first
        assert await snapshot(redis) == before

    async def test_unknown_hold(self, engine: StockEngine, redis: Redis) -> None:
        before = await snapshot(redis)
        with pytest.raises(errors.HoldNotFound):
            await engine.release(T, "nope")
        assert await snapshot(redis) == before

    async def test_committed_hold_is_refused(self, engine: StockEngine, redis: Redis) -> None:
        await receive(engine, "A", 10)
        await engine.hold(T, [Line("A", 3)], hold_id="h1")
        await engine.commit(T, "h1", "o1")
        before = await snapshot(redis)
        with pytest.raises(errors.HoldCommitted) as exc:
            await engine.release(T, "h1")
        assert exc.value.fields["order_id"] == "o1"
        assert await snapshot(redis) == before

    async def test_expired_hold_answers_expired(self, engine: StockEngine, redis: Redis) -> None:
        await receive(engine, "A", 10)
        await engine.hold(T, [Line("A", 3)], hold_id="h1", ttl_s=1)
        await asyncio.sleep(1.1)
        await engine.expire(T)
        before = await snapshot(redis)
        reply, replayed = await engine.release(T, "h1")
        assert replayed and reply.status == "expired"
        assert await snapshot(redis) == before


# ---- commit -------------------------------------------------------------------------------------

class TestCommit:
    async def test_reserved_becomes_committed(self, engine: StockEngine, redis: Redis) -> None:
        await receive(engine, "A", 10)
        await receive(engine, "B", 10)
        await engine.hold(T, [Line("A", 3), Line("B", 1)], hold_id="h1")
        before = await xlen(redis)
        reply, replayed = await engine.commit(T, "h1", "o1", channel="web")
        assert not replayed and (reply.order_id, reply.hold_id) == ("o1", "h1")
        assert [(ln.sku, ln.qty) for ln in reply.lines] == [("A", 3), ("B", 1)]
        a = await cell(engine, "A")
        assert (a.reserved, a.committed, a.available) == (0, 3, 7)
        evs = (await events(redis))[before:]
        assert [(e.type, e.sku, e.delta, e.source.ref, e.idempotency_key) for e in evs] == [
            ("commit", "A", {"reserved": -3, "committed": 3}, "o1", "commit:h1"),
            ("commit", "B", {"reserved": -1, "committed": 1}, "o1", "commit:h1")]
        check_after(evs[0], a)
        # A committed hold leaves the expiry index: the sweep must never give its units back.
        assert await redis.zscore(K.expiry, "h1") is None

    async def test_repeat_changes_nothing(self, engine: StockEngine, redis: Redis) -> None:
        await receive(engine, "A", 10)
        await engine.hold(T, [Line("A", 3)], hold_id="h1")
        first, _ = await engine.commit(T, "h1", "o1")
        before = await snapshot(redis)
        again, replayed = await engine.commit(T, "h1", "o1")
        assert replayed and again == first
        assert await snapshot(redis) == before

    async def test_hold_committed_to_another_order_conflicts(self, engine: StockEngine,
                                                             redis: Redis) -> None:
        await receive(engine, "A", 10)
        await engine.hold(T, [Line("A", 3)], hold_id="h1")
        await engine.commit(T, "h1", "o1")
        before = await snapshot(redis)
        with pytest.raises(errors.IdempotencyConflict):
            await engine.commit(T, "h1", "o2")
        assert await snapshot(redis) == before

    async def test_order_id_already_used_conflicts(self, engine: StockEngine,
                                                   redis: Redis) -> None:
        await receive(engine, "A", 10)
        await engine.order(T, "o1", [Line("A", 1)])
        await engine.hold(T, [Line("A", 3)], hold_id="h1")
        before = await snapshot(redis)
        with pytest.raises(errors.IdempotencyConflict):
            await engine.commit(T, "h1", "o1")
        assert await snapshot(redis) == before

    async def test_unknown_or_released_hold(self, engine: StockEngine, redis: Redis) -> None:
        await receive(engine, "A", 10)
        await engine.hold(T, [Line("A", 3)], hold_id="h1")
        await engine.release(T, "h1")
        before = await snapshot(redis)
        for hold_id in ("nope", "h1"):
            with pytest.raises(errors.HoldNotFound):
                await engine.commit(T, hold_id, "o1")
        assert await snapshot(redis) == before

    async def test_past_ttl_is_dead_before_the_sweep(self, engine: StockEngine,
                                                     redis: Redis) -> None:
        await receive(engine, "A", 10)
        await engine.hold(T, [Line("A", 3)], hold_id="h1", ttl_s=1)
        await asyncio.sleep(1.1)
        with pytest.raises(errors.HoldNotFound):
            await engine.commit(T, "h1", "o1")
        # The commit that meets a dead hold expires it at once: its units are back on sale
        # (not reserved until the sweep) and the sweep finds nothing left to do.
        view = await engine.stock(T, "A")
        assert (view.locations["main"].reserved, view.locations["main"].committed) == (0, 0)
        assert (await engine.hold_lines(T, "h1")).status == "expired"
        assert not await redis.exists(K.order("o1"))
        assert (await engine.expire(T)).expired == 0
        types = [e.type for e in await events(redis)]
        assert types.count("expire") == 1

    @pytest.mark.parametrize("order_id", ["", None, 5])
    async def test_invalid_order_id(self, engine: StockEngine, redis: Redis,
                                    order_id: Any) -> None:
        await receive(engine, "A", 10)
        await engine.hold(T, [Line("A", 3)], hold_id="h1")
        before = await snapshot(redis)
        reply = await raw_call(engine, "commit",
                               [K.outbox, K.hold("h1"), K.expiry, K.order(str(order_id))],
                               {"hold_id": "h1", "order_id": order_id, "idem_ttl_ms": 60_000})
        assert reply[0] == b"invalid"
        assert await snapshot(redis) == before


# ---- order (channel order without a hold) --------------------------------------------------------

class TestOrder:
    async def test_commits_from_available(self, engine: StockEngine, redis: Redis) -> None:
        await receive(engine, "A", 10)
        before = await xlen(redis)
        reply, replayed = await engine.order(T, "o1", [Line("A", 4)], channel="shopify-main")
        assert not replayed
        assert [(ln.sku, ln.location, ln.qty, ln.status) for ln in reply.lines] == [
            ("A", "main", 4, "committed")]
        a = await cell(engine, "A")
        assert (a.committed, a.available) == (4, 6)
        evs = (await events(redis))[before:]
        assert len(evs) == 1
        ev = evs[0]
        assert (ev.type, ev.delta, ev.source.channel, ev.source.ref, ev.idempotency_key) == (
            "commit", {"committed": 4}, "shopify-main", "o1", "order:o1")
        check_after(ev, a)

    async def test_each_line_judged_alone(self, engine: StockEngine, redis: Redis) -> None:
        # The sale already happened on the channel: good lines commit, a short line is
        # recorded as oversell_rejected (never negative stock), an unknown SKU emits nothing.
        await receive(engine, "A", 10)
        await receive(engine, "B", 1)
        before = await xlen(redis)
        reply, _ = await engine.order(T, "o1", [Line("A", 2), Line("B", 5), Line("X", 1)])
        assert [ln.status for ln in reply.lines] == ["committed", "oversell_rejected",
                                                     "unknown_sku"]
        b = await cell(engine, "B")
        assert (b.committed, b.available) == (0, 1)
        evs = (await events(redis))[before:]
        assert [(e.type, e.sku, e.delta) for e in evs] == [
            ("commit", "A", {"committed": 2}), ("oversell_rejected", "B", {})]
        assert evs[1].reason == "requested 5, available 1"

    async def test_repeat_and_conflict(self, engine: StockEngine, redis: Redis) -> None:
        await receive(engine, "A", 10)
        first, _ = await engine.order(T, "o1", [Line("A", 2)])
        before = await snapshot(redis)
        again, replayed = await engine.order(T, "o1", [Line("A", 2)])
        assert replayed and again == first
        with pytest.raises(errors.IdempotencyConflict):
            await engine.order(T, "o1", [Line("A", 3)])
        assert await snapshot(redis) == before

    async def test_order_id_of_a_committed_hold_is_the_same_sale(self, engine: StockEngine,
                                                                 redis: Redis) -> None:
        # The storefront committed its hold under the channel order's id (the explicit
        # link): the channel order adds only its units beyond the hold and gives back the
        # committed units it does not have.
        await receive(engine, "A", 10)
        await receive(engine, "B", 10)
        await engine.hold(T, [Line("A", 2), Line("B", 1)], hold_id="h1")
        await engine.commit(T, "h1", "o1")
        reply, replayed = await engine.order(T, "o1", [Line("A", 3)])
        assert not replayed
        assert [(ln.sku, ln.qty, ln.status) for ln in reply.lines] == [
            ("A", 2, "held"), ("A", 1, "committed")]
        assert (await cell(engine, "A")).committed == 3
        assert (await cell(engine, "B")).committed == 0
        before = await snapshot(redis)
        assert (await engine.order(T, "o1", [Line("A", 3)]))[1]
        with pytest.raises(errors.IdempotencyConflict):
            await engine.order(T, "o1", [Line("A", 4)])
        assert await snapshot(redis) == before

    @pytest.mark.parametrize("qty", [0, -3, 2.5])
    async def test_invalid_line_never_voids_the_others(self, engine: StockEngine,
                                                       qty: Any) -> None:
        await receive(engine, "A", 10)
        reply, _ = await engine.order(T, "o1", [Line("A", 1), Line("A", qty)])
        assert [ln.status for ln in reply.lines] == ["committed", "invalid"]
        assert (await cell(engine, "A")).committed == 1

    async def test_backorder_limit(self, engine: StockEngine) -> None:
        await receive(engine, "A", 1)
        await engine.set_policy(T, "A", backorder_limit=2)
        reply, _ = await engine.order(T, "o1", [Line("A", 3), Line("A", 1)])
        assert [ln.status for ln in reply.lines] == ["committed", "oversell_rejected"]
        assert (await cell(engine, "A")).available == -2


# ---- fulfil -------------------------------------------------------------------------------------

class TestFulfil:
    async def test_ships_every_open_unit(self, engine: StockEngine, redis: Redis) -> None:
        await receive(engine, "A", 10)
        await engine.order(T, "o1", [Line("A", 4)])
        before = await xlen(redis)
        reply, replayed = await engine.fulfil(T, "o1", "f1", channel="shopify-main")
        assert not replayed
        assert [(ln.sku, ln.location, ln.qty) for ln in reply.lines] == [("A", "main", 4)]
        a = await cell(engine, "A")
        assert (a.on_hand, a.committed, a.available) == (6, 0, 6)
        evs = (await events(redis))[before:]
        assert [(e.type, e.delta, e.source.ref, e.idempotency_key) for e in evs] == [
            ("fulfil", {"committed": -4, "on_hand": -4}, "o1", "fulfil:f1")]
        check_after(evs[0], a)

    async def test_partial_then_rest(self, engine: StockEngine) -> None:
        await receive(engine, "A", 10)
        await receive(engine, "B", 10)
        await engine.order(T, "o1", [Line("A", 3), Line("B", 2)])
        await engine.fulfil(T, "o1", "f1", [Line("A", 1)])
        a = await cell(engine, "A")
        assert (a.on_hand, a.committed) == (9, 2)
        reply, _ = await engine.fulfil(T, "o1", "f2")
        assert [(ln.sku, ln.qty) for ln in reply.lines] == [("A", 2), ("B", 2)]
        a, b = await cell(engine, "A"), await cell(engine, "B")
        assert (a.on_hand, a.committed, b.on_hand, b.committed) == (7, 0, 8, 0)
        # Nothing left open: a third fulfilment ships nothing.
        reply, _ = await engine.fulfil(T, "o1", "f3")
        assert reply.lines == []

    async def test_more_than_open_is_refused(self, engine: StockEngine, redis: Redis) -> None:
        await receive(engine, "A", 10)
        await receive(engine, "B", 10)
        await engine.order(T, "o1", [Line("A", 3), Line("B", 1)])
        before = await snapshot(redis)
        # The first line alone would be fine: the second must stop both.
        with pytest.raises(errors.InvalidRequest):
            await engine.fulfil(T, "o1", "f1", [Line("A", 1), Line("B", 2)])
        with pytest.raises(errors.InvalidRequest):
            await engine.fulfil(T, "o1", "f1", [Line("A", 0)])
        with pytest.raises(errors.InvalidRequest):
            await engine.fulfil(T, "o1", "f1", [Line("C", 1)])
        assert await snapshot(redis) == before

    async def test_repeat_and_conflict(self, engine: StockEngine, redis: Redis) -> None:
        await receive(engine, "A", 10)
        await engine.order(T, "o1", [Line("A", 3)])
        first, _ = await engine.fulfil(T, "o1", "f1", [Line("A", 1)])
        before = await snapshot(redis)
        again, replayed = await engine.fulfil(T, "o1", "f1", [Line("A", 1)])
        assert replayed and again == first
        with pytest.raises(errors.IdempotencyConflict):
            await engine.fulfil(T, "o1", "f1", [Line("A", 2)])
        assert await snapshot(redis) == before

    async def test_unknown_order(self, engine: StockEngine, redis: Redis) -> None:
        before = await snapshot(redis)
        with pytest.raises(errors.OrderNotFound):
            await engine.fulfil(T, "nope", "f1")
        assert await snapshot(redis) == before

    async def test_order_from_a_hold(self, engine: StockEngine) -> None:
        await receive(engine, "A", 10)
        await engine.hold(T, [Line("A", 2)], hold_id="h1")
        await engine.commit(T, "h1", "o1")
        await engine.fulfil(T, "o1", "f1")
        a = await cell(engine, "A")
        assert (a.on_hand, a.reserved, a.committed, a.available) == (8, 0, 0, 8)


# ---- cancel -------------------------------------------------------------------------------------

class TestCancel:
    async def test_open_units_return(self, engine: StockEngine, redis: Redis) -> None:
        await receive(engine, "A", 10)
        await engine.order(T, "o1", [Line("A", 4)])
        await engine.fulfil(T, "o1", "f1", [Line("A", 1)])
        before = await xlen(redis)
        reply, replayed = await engine.cancel(T, "o1", channel="shopify-main")
        assert not replayed
        assert [(ln.sku, ln.qty) for ln in reply.lines] == [("A", 3)]
        a = await cell(engine, "A")
        # The shipped unit stays shipped; only the 3 open ones come back.
        assert (a.on_hand, a.committed, a.available) == (9, 0, 9)
        evs = (await events(redis))[before:]
        assert [(e.type, e.delta, e.source.ref, e.idempotency_key) for e in evs] == [
            ("cancel", {"committed": -3}, "o1", "cancel:o1")]
        check_after(evs[0], a)

    async def test_repeat_changes_nothing(self, engine: StockEngine, redis: Redis) -> None:
        await receive(engine, "A", 10)
        await engine.order(T, "o1", [Line("A", 4)])
        first, _ = await engine.cancel(T, "o1")
        before = await snapshot(redis)
        again, replayed = await engine.cancel(T, "o1")
        assert replayed and again == first
        assert await snapshot(redis) == before

    async def test_unknown_order(self, engine: StockEngine, redis: Redis) -> None:
        before = await snapshot(redis)
        with pytest.raises(errors.OrderNotFound):
            await engine.cancel(T, "nope")
        assert await snapshot(redis) == before

    async def test_cancelled_order_cannot_ship(self, engine: StockEngine, redis: Redis) -> None:
        await receive(engine, "A", 10)
        await engine.order(T, "o1", [Line("A", 4)])
        await engine.cancel(T, "o1")
        with pytest.raises(errors.InvalidRequest):
            await engine.fulfil(T, "o1", "f1", [Line("A", 1)])
        assert (await cell(engine, "A")).on_hand == 10


# ---- restock ------------------------------------------------------------------------------------

class TestRestock:
    async def test_returned_units_rejoin_on_hand(self, engine: StockEngine,
                                                 redis: Redis) -> None:
        await receive(engine, "A", 10)
        await engine.order(T, "o1", [Line("A", 3)])
        await engine.fulfil(T, "o1", "f1")
        before = await xlen(redis)
        # 5 asked back, only 3 were shipped: never restock more than left the building.
        reply, replayed = await engine.restock(T, "r1", [Line("A", 5)], order_id="o1",
                                               channel="shopify-main")
        assert not replayed
        assert [(ln.qty, ln.restocked) for ln in reply.lines] == [(5, 3)]
        a = await cell(engine, "A")
        assert (a.on_hand, a.committed, a.available) == (10, 0, 10)
        evs = (await events(redis))[before:]
        assert [(e.type, e.delta, e.source.ref, e.idempotency_key) for e in evs] == [
            ("restock", {"committed": 0, "on_hand": 3}, "r1", "restock:r1")]
        check_after(evs[0], a)
        reply, _ = await engine.restock(T, "r2", [Line("A", 1)], order_id="o1")
        assert reply.lines[0].restocked == 0
        assert (await cell(engine, "A")).on_hand == 10

    async def test_refund_before_shipping_releases_committed(self, engine: StockEngine) -> None:
        await receive(engine, "A", 10)
        await engine.order(T, "o1", [Line("A", 3)])
        await engine.restock(T, "r1", [Line("A", 2)], order_id="o1")
        a = await cell(engine, "A")
        assert (a.on_hand, a.committed, a.available) == (10, 1, 9)

    async def test_without_order(self, engine: StockEngine, redis: Redis) -> None:
        await receive(engine, "A", 10)
        reply, _ = await engine.restock(T, "r1", [Line("A", 2)])
        assert [(ln.location, ln.restocked) for ln in reply.lines] == [("main", 2)]
        assert (await cell(engine, "A")).on_hand == 12
        before = await snapshot(redis)
        with pytest.raises(errors.UnknownSku):
            await engine.restock(T, "r2", [Line("A", 1), Line("X", 1)])
        assert await snapshot(redis) == before

    async def test_repeat_and_conflict(self, engine: StockEngine, redis: Redis) -> None:
        await receive(engine, "A", 10)
        first, _ = await engine.restock(T, "r1", [Line("A", 2)])
        before = await snapshot(redis)
        again, replayed = await engine.restock(T, "r1", [Line("A", 2)])
        assert replayed and again == first
        with pytest.raises(errors.IdempotencyConflict):
            await engine.restock(T, "r1", [Line("A", 3)])
        assert await snapshot(redis) == before

    async def test_rejections_change_nothing(self, engine: StockEngine, redis: Redis) -> None:
        await receive(engine, "A", 10)
        before = await snapshot(redis)
        with pytest.raises(errors.OrderNotFound):
            await engine.restock(T, "r1", [Line("A", 1)], order_id="nope")
        for qty in (0, -1, 1.5):
            with pytest.raises(errors.InvalidRequest):
                await engine.restock(T, "r1", [Line("A", 1), Line("A", qty)])
        with pytest.raises(errors.InvalidRequest):
            await engine.restock(T, "r1", [])
        assert await snapshot(redis) == before


# ---- adjust -------------------------------------------------------------------------------------

class TestAdjust:
    async def test_first_adjust_creates_the_sku(self, engine: StockEngine, redis: Redis) -> None:
        with pytest.raises(errors.UnknownSku):
            await engine.stock(T, "A")
        reply, replayed = await engine.adjust(T, "A", reason="receipt", idempotency_key="k1",
                                              delta=7, channel="wms")
        assert not replayed
        assert (reply.sku, reply.location, reply.after.on_hand, reply.after.available) == (
            "A", "main", 7, 7)
        assert await engine.skus(T) == ["A"]
        evs = await events(redis)
        assert len(evs) == 1
        ev = evs[0]
        assert (ev.type, ev.delta, ev.reason, ev.source.channel, ev.source.ref,
                ev.idempotency_key) == ("adjust", {"on_hand": 7, "unavailable": 0}, "receipt",
                                        "wms", "k1", "adjust:k1")
        check_after(ev, await cell(engine, "A"))

    async def test_set_on_hand_and_unavailable(self, engine: StockEngine, redis: Redis) -> None:
        await receive(engine, "A", 10)
        await engine.adjust(T, "A", reason="count", idempotency_key="k1", set_on_hand=4)
        await engine.adjust(T, "A", reason="damaged", idempotency_key="k2", unavailable_delta=3)
        a = await cell(engine, "A")
        assert (a.on_hand, a.unavailable, a.available) == (4, 3, 1)
        evs = await events(redis)
        assert [e.delta for e in evs[-2:]] == [{"on_hand": -6, "unavailable": 0},
                                               {"on_hand": 0, "unavailable": 3}]

    @pytest.mark.parametrize("change", [
        {"delta": -11},                                  # on_hand below zero
        {"set_on_hand": -1},
        {"unavailable_delta": -1},                       # unavailable below zero
        {"unavailable_delta": 11},                       # more unavailable than on hand
        {"delta": 1, "set_on_hand": 5},                  # both
        {},                                              # nothing
        {"delta": 1.5},
        {"delta": "5"},
        {"set_on_hand": 10**10},
    ])
    async def test_invalid(self, engine: StockEngine, redis: Redis,
                           change: dict[str, Any]) -> None:
        await receive(engine, "A", 10)
        before = await snapshot(redis)
        with pytest.raises(errors.InvalidRequest):
            await engine.adjust(T, "A", reason="x", idempotency_key="bad", **change)
        assert await snapshot(redis) == before

    async def test_repeat_and_conflict(self, engine: StockEngine, redis: Redis) -> None:
        first, _ = await engine.adjust(T, "A", reason="receipt", idempotency_key="k1", delta=5)
        before = await snapshot(redis)
        again, replayed = await engine.adjust(T, "A", reason="receipt", idempotency_key="k1",
                                              delta=5)
        assert replayed and again == first
        with pytest.raises(errors.IdempotencyConflict):
            await engine.adjust(T, "A", reason="receipt", idempotency_key="k1", delta=6)
        assert await snapshot(redis) == before

    async def test_shrinkage_is_recorded_even_when_units_are_held(
            self, engine: StockEngine) -> None:
        # Lost units are a fact, not a request: the count is accepted, and channels see 0.
        await receive(engine, "A", 10)
        await engine.hold(T, [Line("A", 8)], hold_id="h1")
        await engine.adjust(T, "A", reason="count", idempotency_key="k1", set_on_hand=5)
        view = await engine.stock(T, "A")
        assert view.locations["main"].available == -3 and view.available == 0
        with pytest.raises(errors.InsufficientStock):
            await engine.hold(T, [Line("A", 1)], hold_id="h2")


# ---- policy -------------------------------------------------------------------------------------

class TestPolicy:
    async def test_sets_rules_and_emits_on_change(self, engine: StockEngine,
                                                  redis: Redis) -> None:
        await receive(engine, "A", 10)
        before = await xlen(redis)
        reply = await engine.set_policy(T, "A", safety=2, backorder_limit=5,
                                        low_stock_threshold=3, max_per_customer=1)
        assert (reply.safety, reply.backorder_limit, reply.low_stock_threshold,
                reply.max_per_customer) == (2, 5, 3, 1)
        view = await engine.stock(T, "A")
        assert (view.locations["main"].available, view.low_stock_threshold,
                view.max_per_customer) == (8, 3, 1)
        evs = (await events(redis))[before:]
        assert [(e.type, e.delta, e.reason) for e in evs] == [
            ("adjust", {"safety": 2, "backorder_limit": 5}, "policy")]
        check_after(evs[0], view.locations["main"])
        # The same rules again change no cell and so write no event.
        snap = await snapshot(redis)
        assert await engine.set_policy(T, "A", safety=2, backorder_limit=5) == reply
        assert await snapshot(redis) == snap

    async def test_unknown_sku(self, engine: StockEngine, redis: Redis) -> None:
        await receive(engine, "A", 10)
        before = await snapshot(redis)
        with pytest.raises(errors.UnknownSku):
            await engine.set_policy(T, "X", safety=1)
        with pytest.raises(errors.UnknownSku):
            await engine.set_policy(T, "A", location="east", safety=1)
        assert await snapshot(redis) == before

    @pytest.mark.parametrize("rule", [{"safety": -1}, {"backorder_limit": 1.5},
                                      {"max_per_customer": "2"}])
    async def test_invalid(self, engine: StockEngine, redis: Redis,
                           rule: dict[str, Any]) -> None:
        await receive(engine, "A", 10)
        before = await snapshot(redis)
        with pytest.raises(errors.InvalidRequest):
            await engine.set_policy(T, "A", **rule)
        assert await snapshot(redis) == before


# ---- expire -------------------------------------------------------------------------------------

class TestExpire:
    async def test_units_come_back_however_late_the_sweep(self, engine: StockEngine,
                                                         redis: Redis) -> None:
        """The hold record is what gives the units back: it must not expire while held,
        even when the sweep is down for longer than the idempotency TTL."""
        short = StockEngine(redis, msgspec.structs.replace(engine.settings,
                                                            idempotency_ttl_s=1))
        await short.load_scripts()
        try:
            await receive(engine, "A", 2)
            await short.hold(T, [Line("A", 2)], hold_id="h-late", ttl_s=1)
            await asyncio.sleep(2.2)  # hold TTL + idempotency TTL, and no sweep ran
            assert (await short.expire(T)).expired == 1
            assert (await cell(engine, "A")).reserved == 0
            assert (await short.hold(T, [Line("A", 2)], hold_id="h-next"))[0].lines
        finally:
            short.scripts.close()

    async def test_bounded_batch(self, engine: StockEngine, redis: Redis) -> None:
        await receive(engine, "A", 10)
        for i in range(3):
            await engine.hold(T, [Line("A", 1)], hold_id=f"h{i}", ttl_s=1)
        await asyncio.sleep(1.1)
        first = await engine.expire(T, limit=2)
        assert (first.expired, first.remaining_due) == (2, 1)
        assert (await cell(engine, "A")).reserved == 1
        second = await engine.expire(T, limit=2)
        assert (second.expired, second.remaining_due) == (1, 0)
        assert (await cell(engine, "A")).reserved == 0
        assert [e.type for e in await events(redis)].count("expire") == 3

    async def test_committed_and_released_holds_are_left_alone(
            self, engine: StockEngine, redis: Redis) -> None:
        await receive(engine, "A", 10)
        await engine.hold(T, [Line("A", 2)], hold_id="c", ttl_s=1)
        await engine.hold(T, [Line("A", 3)], hold_id="r", ttl_s=1)
        await engine.commit(T, "c", "o1")
        await engine.release(T, "r")
        await asyncio.sleep(1.1)
        before = await snapshot(redis)
        reply = await engine.expire(T)
        assert (reply.expired, reply.remaining_due) == (0, 0)
        assert await snapshot(redis) == before
        a = await cell(engine, "A")
        assert (a.reserved, a.committed) == (0, 2)

    async def test_expiry_gives_customer_allowance_back(self, engine: StockEngine) -> None:
        await receive(engine, "A", 10)
        await engine.set_policy(T, "A", max_per_customer=1)
        await engine.hold(T, [Line("A", 1)], hold_id="h1", customer="c1", ttl_s=1)
        await asyncio.sleep(1.1)
        await engine.expire(T)
        await engine.hold(T, [Line("A", 1)], hold_id="h2", customer="c1")
        assert (await cell(engine, "A")).reserved == 1

    @pytest.mark.parametrize("limit", [0, -1, 2.5])
    async def test_invalid_limit(self, engine: StockEngine, redis: Redis, limit: Any) -> None:
        before = await snapshot(redis)
        with pytest.raises(errors.InvalidRequest):
            await engine.expire(T, limit=limit)
        assert await snapshot(redis) == before


# ---- loading and bad requests for every script -------------------------------------------------

class TestLoading:
    async def test_reloads_after_script_flush(self, engine: StockEngine, redis: Redis) -> None:
        await receive(engine, "A", 10)
        # What a restart or failover does to the script cache.
        await redis.script_flush()
        assert not await engine.scripts.loaded()
        await engine.hold(T, [Line("A", 1)], hold_id="h1")
        assert await engine.scripts.loaded()
        await redis.script_flush()
        # Several calls in one tick go as one pipeline: every one must be retried once.
        replies = await asyncio.gather(
            *(engine.hold(T, [Line("A", 1)], hold_id=f"p{i}") for i in range(5)))
        assert [replayed for _, replayed in replies] == [False] * 5
        assert (await cell(engine, "A")).reserved == 6
        assert await xlen(redis) == 1 + 6

    # A request of the wrong shape for each script: refused, or failing in Lua before any write.
    @pytest.mark.parametrize(("op", "keys", "request_"), [
        ("hold", [K.outbox, K.hold("new"), K.expiry], "{not json"),
        ("hold", [K.outbox, K.hold("new"), K.expiry], [1, 2]),
        ("release", [K.outbox, K.hold("h"), K.expiry], "{not json"),
        ("commit", [K.outbox, K.hold("h"), K.expiry, K.order("o")], {"hold_id": "h"}),
        ("order", [K.outbox, K.order("new")], {"order_id": "new", "fp": "f", "lines": [["A"]]}),
        ("order", [K.outbox, K.order("new")], {"order_id": "new", "fp": "f", "lines": ["A"]}),
        ("fulfil", [K.outbox, K.order("o"), K.idempotency("fulfil", "f")],
         {"order_id": "o", "fp": "f", "lines": [7]}),
        ("cancel", [K.outbox, K.order("o")], "{not json"),
        ("restock", [K.outbox, K.idempotency("restock", "r"), K.order("")],
         {"refund_id": "r", "order_id": "", "fp": "f", "lines": [["A", "main", 0]]}),
        ("restock", [K.outbox, K.idempotency("restock", "r"), K.order("")],
         {"refund_id": "r", "order_id": "", "fp": "f", "lines": "A"}),
        ("adjust", [K.outbox, K.idempotency("adjust", "k"), K.stock("A")],
         {"sku": "A", "location": "main", "delta": "abc", "fp": "f", "idempotency_key": "k"}),
        ("adjust", [K.outbox, K.idempotency("adjust", "k"), K.stock("")],
         {"sku": "", "location": "main", "delta": 1, "fp": "f", "idempotency_key": "k"}),
        ("policy", [K.outbox, K.stock("A")], {"location": "main", "safety": 1}),
        ("expire", [K.outbox, K.expiry], {}),
    ])
    async def test_bad_request_changes_nothing(self, engine: StockEngine, redis: Redis,
                                               op: str, keys: list[str], request_: Any) -> None:
        await receive(engine, "A", 10)
        await engine.hold(T, [Line("A", 1)], hold_id="h")
        await engine.order(T, "o", [Line("A", 1)])
        before = await snapshot(redis)
        try:
            reply = await raw_call(engine, op, keys, request_)
        except Exception as exc:  # a Lua error is acceptable, a write is not
            assert "script" in str(exc)
        else:
            assert reply[0] in (b"invalid", b"hold_not_found", b"order_not_found",
                                b"unknown_sku")
        assert await snapshot(redis) == before


async def test_commit_repeat_answers_after_the_order_record_expired(engine: StockEngine) -> None:
    await engine.adjust("default", "LATE", reason="receipt", idempotency_key="late", delta=3)
    await engine.hold("default", [Line("LATE", 2)], hold_id="h-late")
    first, _ = await engine.commit("default", "h-late", "o-late")
    await engine.redis.delete(tenant_keys("default").order("o-late"))
    again, replayed = await engine.commit("default", "h-late", "o-late")
    assert replayed and again == first
