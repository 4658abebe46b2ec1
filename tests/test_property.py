"""Random sequences of every stock operation, run against the Lua scripts and against a plain
Python model of the same rules (DESIGN.md, stock model), compared after every step.

Ids come from small pools on purpose: a drawn id often names an existing hold, order or
refund, so repeats (which must replay) and conflicting reuse (which must be refused) happen
as often as fresh calls. Expiry is forced by moving a hold's score in the expiry index into
the past, so no step sleeps.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    rule,
)
from redis.asyncio import Redis

from stockgate import errors
from stockgate.keys import tenant_keys
from stockgate.models import Line, event_decoder
from stockgate.stock import StockEngine

T = "default"
K = tenant_keys(T)
FIELDS = ("on_hand", "reserved", "committed", "unavailable", "safety", "backorder_limit")
MAX_QTY = 1_000_000_000
R = TypeVar("R")

# Weighted towards cells that exist, so most calls get past the unknown-SKU check; "C" and
# B at "east" exist only once an adjust creates them.
skus = st.sampled_from(["A", "A", "A", "B", "B", "C"])
locations = st.sampled_from(["main", "main", "main", "east"])
qtys = st.integers(1, 4)
lines = st.lists(st.tuples(skus, locations, qtys), min_size=1, max_size=3)
hold_ids = st.sampled_from(["h0", "h1", "h2", "h3"])
order_ids = st.sampled_from(["o0", "o1", "o2"])
customers = st.sampled_from(["", "c1", "c2"])

Cell = dict[str, int]
ScriptLine = tuple[str, str, int]


@dataclass
class Hold:
    lines: list[ScriptLine]
    customer: str
    status: str = "held"
    order_id: str = ""


@dataclass
class Order:
    fp: tuple[Any, ...]
    lines: list[dict[str, Any]]
    status: str = "open"
    channel_fp: tuple[Any, ...] | None = None  # a channel order merged into a commit's record


@dataclass
class Model:
    """The stock rules in plain Python. Each operation returns the name of the error it
    expects ("" for success) and the number of outbox events it writes."""

    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)
    max_per_customer: dict[str, int] = field(default_factory=dict)
    customer_counts: dict[tuple[str, str], int] = field(default_factory=dict)
    holds: dict[str, Hold] = field(default_factory=dict)
    orders: dict[str, Order] = field(default_factory=dict)
    idem: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    def cell_id(self, sku: str, loc: str) -> tuple[str, str]:
        """The cell a line's units are in (a subclass may tag line SKUs)."""
        return sku, loc

    @staticmethod
    def available(c: Cell) -> int:
        return c["on_hand"] - c["reserved"] - c["committed"] - c["unavailable"] - c["safety"]

    def can_take(self, c: Cell, qty: int) -> bool:
        return self.available(c) - qty >= -c["backorder_limit"]

    def hold(self, hold_id: str, hold_lines: list[ScriptLine], customer: str) -> tuple[str, int]:
        if hold_id in self.holds:
            h = self.holds[hold_id]
            return ("" if (h.lines, h.customer) == (hold_lines, customer)
                    else "IdempotencyConflict"), 0
        wanted: dict[tuple[str, str], int] = {}
        per_sku: Counter[str] = Counter()
        for sku, loc, qty in hold_lines:
            if (sku, loc) not in self.cells:
                return "UnknownSku", 0
            wanted[(sku, loc)] = wanted.get((sku, loc), 0) + qty
            per_sku[sku] += qty
        if any(not self.can_take(self.cells[cid], q) for cid, q in wanted.items()):
            return "InsufficientStock", 0
        if customer:
            for sku, qty in per_sku.items():
                limit = self.max_per_customer.get(sku, 0)
                if limit and self.customer_counts.get((customer, sku), 0) + qty > limit:
                    return "LimitExceeded", 0
            for sku, qty in per_sku.items():
                self.customer_counts[(customer, sku)] = (
                    self.customer_counts.get((customer, sku), 0) + qty)
        for cid, q in wanted.items():
            self.cells[cid]["reserved"] += q
        self.holds[hold_id] = Hold(hold_lines, customer)
        return "", len(wanted)

    def _give_back(self, h: Hold, status: str) -> int:
        for sku, loc, qty in h.lines:
            c = self.cells[(sku, loc)]
            c["reserved"] -= min(qty, c["reserved"])
            if h.customer:
                key = (h.customer, sku)
                left = self.customer_counts.get(key, 0) - qty
                if left <= 0:
                    self.customer_counts.pop(key, None)
                else:
                    self.customer_counts[key] = left
        h.status = status
        return len(h.lines)

    def release(self, hold_id: str) -> tuple[str, int]:
        h = self.holds.get(hold_id)
        if h is None:
            return "HoldNotFound", 0
        if h.status == "committed":
            return "HoldCommitted", 0
        if h.status != "held":
            return "", 0
        return "", self._give_back(h, "released")

    def expire(self, hold_id: str) -> tuple[str, int]:
        h = self.holds.get(hold_id)
        if h is None or h.status != "held":
            return "", 0
        return "", self._give_back(h, "expired")

    def commit(self, hold_id: str, order_id: str) -> tuple[str, int]:
        h = self.holds.get(hold_id)
        if h is not None and h.status == "committed":
            return ("" if h.order_id == order_id else "IdempotencyConflict"), 0
        if h is None or h.status != "held":
            return "HoldNotFound", 0
        if order_id in self.orders:
            return "IdempotencyConflict", 0
        order_lines = []
        for sku, loc, qty in h.lines:
            c = self.cells[(sku, loc)]
            c["reserved"] -= min(qty, c["reserved"])
            c["committed"] += qty
            order_lines.append({"sku": sku, "location": loc, "qty": qty, "open": qty,
                                "fulfilled": 0, "restocked": 0})
        self.orders[order_id] = Order(("hold", hold_id), order_lines)
        h.status, h.order_id = "committed", order_id
        return "", len({self.cell_id(sku, loc) for sku, loc, _ in h.lines})

    def order(self, order_id: str, order_lines: list[ScriptLine]) -> tuple[str, int]:
        fp = ("order", order_lines)
        record = self.orders.get(order_id)
        sources: list[dict[str, Any]] = []
        if record is not None:
            if fp in (record.fp, record.channel_fp) or record.status == "cancelled":
                return "", 0
            if record.fp[0] != "hold" or record.channel_fp is not None:
                return "IdempotencyConflict", 0
            # The storefront committed a hold under this id: the same sale (explicit link).
            # Every unit of its lines is this sale's; units not open are matched first.
            sources = [ol for ol in record.lines if ol["qty"] > 0]
        left = [ol["qty"] for ol in sources]
        # One event per changed cell (lines of one cell summed), one per refused line.
        kept, changed, refused = [], set(), 0
        for sku, loc, qty in order_lines:
            for i, ol in enumerate(sources):
                if qty and ol["sku"] == sku and left[i] > 0:
                    x = min(qty, left[i])
                    left[i] -= x
                    qty -= x
            c = self.cells.get((sku, loc))
            if qty == 0 or c is None:
                continue
            if self.can_take(c, qty):
                changed.add(self.cell_id(sku, loc))
                c["committed"] += qty
                kept.append({"sku": sku, "location": loc, "qty": qty, "open": qty,
                             "fulfilled": 0, "restocked": 0})
            else:
                refused += 1
        for i, ol in enumerate(sources):
            unmatched_open = min(left[i], ol["open"])
            if unmatched_open > 0:
                c = self.cells[(ol["sku"], ol["location"])]
                c["committed"] -= min(unmatched_open, c["committed"])
                ol["open"] -= unmatched_open
                ol["qty"] -= unmatched_open
                changed.add(self.cell_id(ol["sku"], ol["location"]))
        if record is not None:
            record.lines += kept
            record.channel_fp = fp
        else:
            self.orders[order_id] = Order(fp, kept)
        return "", len(changed) + refused

    def fulfil(self, order_id: str, fulfilment_id: str,
               wanted: list[ScriptLine]) -> tuple[str, int]:
        fp = ("fulfil", order_id, wanted)
        if fulfilment_id in self.idem:
            return ("" if self.idem[fulfilment_id] == fp else "IdempotencyConflict"), 0
        order = self.orders.get(order_id)
        if order is None:
            return "OrderNotFound", 0
        takes: list[tuple[int, int]] = []
        if not wanted:
            takes = [(i, ol["open"]) for i, ol in enumerate(order.lines) if ol["open"] > 0]
        else:
            open_ = [ol["open"] for ol in order.lines]
            for sku, loc, q in wanted:
                for i, ol in enumerate(order.lines):
                    if q == 0:
                        break
                    if ol["sku"] == sku and loc in ("", ol["location"]) and open_[i] > 0:
                        x = min(q, open_[i])
                        open_[i] -= x
                        q -= x
                        takes.append((i, x))
                if q > 0:
                    return "InvalidRequest", 0
        for i, x in takes:
            ol = order.lines[i]
            c = self.cells[(ol["sku"], ol["location"])]
            c["committed"] -= min(x, c["committed"])
            c["on_hand"] = max(c["on_hand"] - x, 0)
            ol["open"] -= x
            ol["fulfilled"] += x
        self.idem[fulfilment_id] = fp
        # One event per changed cell: entries of one cell are summed.
        return "", len({self.cell_id(order.lines[i]["sku"], order.lines[i]["location"])
                        for i, _ in takes})

    def cancel(self, order_id: str) -> tuple[str, int]:
        order = self.orders.get(order_id)
        if order is None:
            return "OrderNotFound", 0
        if order.status == "cancelled":
            return "", 0
        changed = set()
        for ol in order.lines:
            if ol["open"] > 0:
                c = self.cells[(ol["sku"], ol["location"])]
                c["committed"] -= min(ol["open"], c["committed"])
                ol["cancelled"] = ol.get("cancelled", 0) + ol["open"]
                ol["open"] = 0
                changed.add(self.cell_id(ol["sku"], ol["location"]))
        order.status = "cancelled"
        return "", len(changed)

    def restock(self, refund_id: str, order_id: str,
                wanted: list[ScriptLine]) -> tuple[str, int]:
        fp = ("restock", order_id, wanted)
        if refund_id in self.idem:
            return ("" if self.idem[refund_id] == fp else "IdempotencyConflict"), 0
        plan: list[tuple[str, str, int, int]] = []
        order_lines = None
        if order_id:
            if order_id not in self.orders:
                return "OrderNotFound", 0
            # Planned on a copy: a refused request must leave the order as it was.
            order_lines = copy.deepcopy(self.orders[order_id].lines)
        for sku, loc, q in wanted:
            if order_lines is None:
                if (sku, loc) not in self.cells:
                    return "UnknownSku", 0
                plan.append((sku, loc, 0, q))
                continue
            left = q
            for ol in order_lines:
                if ol["sku"] == sku and loc in ("", ol["location"]) and left > 0:
                    from_open = min(left, ol["open"])
                    # Units the order's cancel already freed count first, changing nothing.
                    from_cancelled = min(left - from_open, ol.get("cancelled", 0))
                    if from_cancelled:
                        ol["cancelled"] -= from_cancelled
                        left -= from_cancelled
                    from_shipped = min(left - from_open, ol["fulfilled"] - ol["restocked"])
                    if from_open + from_shipped > 0:
                        ol["open"] -= from_open
                        ol["restocked"] += from_shipped
                        left -= from_open + from_shipped
                        plan.append((sku, ol["location"], from_open, from_shipped))
        for sku, loc, from_open, shipped in plan:
            c = self.cells[(sku, loc)]
            c["committed"] -= min(from_open, c["committed"])
            c["on_hand"] += shipped
        if order_lines is not None:
            self.orders[order_id].lines = order_lines
        self.idem[refund_id] = fp
        return "", len({self.cell_id(sku, loc) for sku, loc, _, _ in plan})

    def adjust(self, key: str, sku: str, loc: str, delta: int | None, set_on_hand: int | None,
               unavailable_delta: int | None) -> tuple[str, int]:
        fp = ("adjust", sku, loc, delta, set_on_hand, unavailable_delta)
        if key in self.idem:
            return ("" if self.idem[key] == fp else "IdempotencyConflict"), 0
        if (delta is None and set_on_hand is None and unavailable_delta is None) or (
                delta is not None and set_on_hand is not None):
            return "InvalidRequest", 0
        c = self.cells.get((sku, loc)) or dict.fromkeys(FIELDS, 0)
        on_hand = c["on_hand"] + (delta or 0) if set_on_hand is None else set_on_hand
        unavailable = c["unavailable"] + (unavailable_delta or 0)
        if not (0 <= on_hand <= MAX_QTY and 0 <= unavailable <= on_hand):
            return "InvalidRequest", 0
        c["on_hand"], c["unavailable"] = on_hand, unavailable
        self.cells[(sku, loc)] = c
        self.idem[key] = fp
        return "", 1

    def policy(self, sku: str, loc: str, safety: int | None, backorder_limit: int | None,
               max_per_customer: int | None) -> tuple[str, int]:
        c = self.cells.get((sku, loc))
        if c is None:
            return "UnknownSku", 0
        changed = False
        for name, value in (("safety", safety), ("backorder_limit", backorder_limit)):
            if value is not None and value != c[name]:
                c[name] = value
                changed = True
        if max_per_customer is not None:
            self.max_per_customer[sku] = max_per_customer
        return "", int(changed)


def redis_cells(raw: dict[bytes, dict[bytes, bytes]]) -> dict[tuple[str, str], Cell]:
    cells: dict[tuple[str, str], Cell] = {}
    for key, fields in raw.items():
        sku = key.decode().removeprefix(K.prefix + "stock:")
        for name, value in fields.items():
            loc, sep, attr = name.decode().partition("|")
            if sep:
                cells.setdefault((sku, loc), {})[attr] = int(value)
    return cells


class StockMachine(RuleBasedStateMachine):
    # Set by the test: one loop and one client for the whole run, flushed per example.
    loop: ClassVar[asyncio.AbstractEventLoop]
    engine: ClassVar[StockEngine]
    # Ids that a step of this example created, so that later steps mostly act on real holds
    # and orders; the plain pools still supply unknown ids.
    made_holds = Bundle("made_holds")
    made_orders = Bundle("made_orders")

    def __init__(self) -> None:
        super().__init__()
        self.model = Model()
        self.outcome = ""
        self.last_event_id = "0-0"
        self.events_expected = 0
        self.run(self.engine.redis.flushall())

    def run(self, coro: Coroutine[Any, Any, R]) -> R:
        return self.loop.run_until_complete(coro)

    def call(self, coro: Coroutine[Any, Any, Any], expected: tuple[str, int]) -> Any:
        """Run one operation, compare its outcome with the model's, and check its events."""
        try:
            result = self.run(coro)
            got = ""
        except errors.StockgateError as exc:
            result, got = None, type(exc).__name__
        want, emitted = expected
        assert got == want, f"redis says {got or 'ok'}, the model says {want or 'ok'}"
        self.check_new_events(emitted)
        return result

    def record_lines(self, lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """An order record's entries as the model keeps them."""
        return lines

    def check_new_events(self, expected: int) -> None:
        entries = self.run(self.engine.redis.xrange(K.outbox, min=f"({self.last_event_id}"))
        assert len(entries) == expected, "one event per changed line, none for a refusal"
        for entry_id, fields in entries:
            ev = event_decoder.decode(fields[b"e"])
            assert ev.after is not None
            a = ev.after
            assert a.available == (a.on_hand - a.reserved - a.committed - a.unavailable
                                   - a.safety)
            self.last_event_id = entry_id.decode()

    @initialize(a=st.integers(0, 12), b=st.integers(0, 12), a_east=st.integers(0, 12))
    def receive(self, a: int, b: int, a_east: int) -> None:
        for sku, loc, qty in (("A", "main", a), ("B", "main", b), ("A", "east", a_east)):
            key = f"init-{sku}-{loc}"
            self.call(self.engine.adjust(T, sku, reason="prop", idempotency_key=key,
                                         location=loc, delta=qty),
                      self.model.adjust(f"adjust:{key}", sku, loc, qty, None, None))

    # ---- operations ------------------------------------------------------------------------

    @rule(target=made_holds, hold_id=hold_ids, hold_lines=lines, customer=customers)
    def hold(self, hold_id: str, hold_lines: list[ScriptLine], customer: str) -> Any:
        expected = self.model.hold(hold_id, hold_lines, customer)
        self.call(self.engine.hold(T, [Line(s, q, loc) for s, loc, q in hold_lines],
                                   hold_id=hold_id, customer=customer), expected)
        if expected != ("", len({(s, loc) for s, loc, _ in hold_lines})):
            return multiple()
        # A fresh hold never takes a cell past its backorder limit.
        for sku, loc, _ in hold_lines:
            c = self.model.cells[(sku, loc)]
            assert Model.available(c) >= -c["backorder_limit"]
        return hold_id

    @rule(hold_id=made_holds | hold_ids)
    def release(self, hold_id: str) -> None:
        self.call(self.engine.release(T, hold_id), self.model.release(hold_id))

    @rule(target=made_orders, hold_id=made_holds | hold_ids, order_id=order_ids)
    def commit(self, hold_id: str, order_id: str) -> Any:
        expected = self.model.commit(hold_id, order_id)
        self.call(self.engine.commit(T, hold_id, order_id), expected)
        return order_id if expected[1] else multiple()

    @rule(hold_id=made_holds | hold_ids)
    def expire(self, hold_id: str) -> None:
        # Only a live hold is in the index (XX): move its deadline into the past.
        self.run(self.engine.redis.zadd(K.expiry, {hold_id: 0}, xx=True))
        reply = self.call(self.engine.expire(T), self.model.expire(hold_id))
        assert reply.remaining_due == 0

    @rule(target=made_orders, order_id=order_ids, order_lines=lines)
    def order(self, order_id: str, order_lines: list[ScriptLine]) -> Any:
        record = self.model.orders.get(order_id)
        cancelled = record is not None and record.status == "cancelled"
        expected = self.model.order(order_id, order_lines)
        reply = self.call(self.engine.order(T, order_id,
                                            [Line(s, q, loc) for s, loc, q in order_lines]),
                          expected)
        # Every unit the order names is answered for (a line the existing record covers in
        # part is answered in two parts); a cancelled order takes no create: no line.
        if expected[0] == "" and not cancelled:
            assert sum(ln.qty for ln in reply[0].lines) == sum(q for _, _, q in order_lines)
        return order_id if expected[1] else multiple()

    @rule(order_id=made_orders | order_ids, fulfilment_id=st.sampled_from(["f0", "f1", "f2", "f3"]),
          wanted=st.lists(st.tuples(skus, st.sampled_from(["", "main", "east"]), qtys),
                          max_size=2))
    def fulfil(self, order_id: str, fulfilment_id: str, wanted: list[ScriptLine]) -> None:
        self.call(self.engine.fulfil(T, order_id, fulfilment_id,
                                     [Line(s, q, loc or None) for s, loc, q in wanted]),
                  self.model.fulfil(order_id, f"fulfil:{fulfilment_id}", wanted))

    @rule(order_id=made_orders | order_ids)
    def cancel(self, order_id: str) -> None:
        self.call(self.engine.cancel(T, order_id), self.model.cancel(order_id))

    @rule(refund_id=st.sampled_from(["r0", "r1", "r2", "r3"]),
          order_id=st.just("") | made_orders | order_ids,
          wanted=st.lists(st.tuples(skus, st.sampled_from(["", "main", "east"]), qtys),
                          min_size=1, max_size=2))
    def restock(self, refund_id: str, order_id: str, wanted: list[ScriptLine]) -> None:
        # Without an order the engine fills the tenant's default location.
        script_lines = [(s, loc or ("" if order_id else "main"), q) for s, loc, q in wanted]
        self.call(self.engine.restock(T, refund_id, [Line(s, q, loc or None)
                                                     for s, loc, q in wanted],
                                      order_id=order_id),
                  self.model.restock(f"restock:{refund_id}", order_id, script_lines))

    @rule(key=st.sampled_from(["k0", "k1", "k2", "k3"]), sku=skus, loc=locations,
          delta=st.none() | st.integers(-6, 8), set_on_hand=st.none() | st.integers(0, 10),
          unavailable_delta=st.none() | st.integers(-2, 3))
    def adjust(self, key: str, sku: str, loc: str, delta: int | None, set_on_hand: int | None,
               unavailable_delta: int | None) -> None:
        self.call(self.engine.adjust(T, sku, reason="prop", idempotency_key=key, location=loc,
                                     delta=delta, set_on_hand=set_on_hand,
                                     unavailable_delta=unavailable_delta),
                  self.model.adjust(f"adjust:{key}", sku, loc, delta, set_on_hand,
                                    unavailable_delta))

    @rule(sku=skus, loc=locations, safety=st.none() | st.integers(0, 3),
          backorder_limit=st.none() | st.integers(0, 3),
          max_per_customer=st.none() | st.integers(0, 3))
    def policy(self, sku: str, loc: str, safety: int | None, backorder_limit: int | None,
               max_per_customer: int | None) -> None:
        self.call(self.engine.set_policy(T, sku, location=loc, safety=safety,
                                         backorder_limit=backorder_limit,
                                         max_per_customer=max_per_customer),
                  self.model.policy(sku, loc, safety, backorder_limit, max_per_customer))

    # ---- checked after every step -------------------------------------------------------------

    @invariant()
    def redis_matches_model(self) -> None:
        redis = self.engine.redis
        stock = self.run(self._read_all(redis, K.prefix + "stock:*"))
        cells = redis_cells(stock)
        for cid, c in cells.items():
            assert all(c[f] >= 0 for f in FIELDS), f"a field of {cid} went below zero: {c}"
        assert cells == self.model.cells

        views = {sku: self.run(self.engine.stock(T, sku)) for sku in {s for s, _ in cells}}
        for (sku, loc), c in cells.items():
            assert views[sku].locations[loc].available == Model.available(c)
        for sku, view in views.items():
            assert view.available == sum(max(Model.available(c), 0)
                                         for (s, _), c in cells.items() if s == sku)

        holds = self.run(self._read_all(redis, K.prefix + "hold:*"))
        live: Counter[tuple[str, str]] = Counter()
        statuses = {}
        for key, record in holds.items():
            hold_id = key.decode().removeprefix(K.prefix + "hold:")
            statuses[hold_id] = record[b"status"].decode()
            if statuses[hold_id] == "held":
                for sku, loc, qty in json.loads(record[b"lines"]):
                    live[(sku, loc)] += qty
        for cid, c in cells.items():
            assert c["reserved"] == live[cid], f"live holds of {cid} != reserved"
        assert statuses == {h: m.status for h, m in self.model.holds.items()}
        assert set(self.run(redis.zrange(K.expiry, 0, -1))) == {
            h.encode() for h, m in self.model.holds.items() if m.status == "held"}

        orders = self.run(self._read_all(redis, K.prefix + "order:*"))
        assert {key.decode().removeprefix(K.prefix + "order:"):
                (r[b"status"].decode(), self.record_lines(json.loads(r[b"lines"]) or []))
                for key, r in orders.items()} == {
            o: (m.status, m.lines) for o, m in self.model.orders.items()}

        counts = {}
        for key in self.run(self._keys(redis, K.prefix + "cust:*")):
            customer, sku = key.decode().removeprefix(K.prefix + "cust:").split(":")
            counts[(customer, sku)] = int(self.run(redis.get(key)))
        assert counts == self.model.customer_counts

    @staticmethod
    async def _keys(redis: Redis, pattern: str) -> list[bytes]:
        return [key async for key in redis.scan_iter(match=pattern, count=1000)]

    async def _read_all(self, redis: Redis, pattern: str) -> dict[bytes, dict[bytes, bytes]]:
        return {key: await redis.hgetall(key) for key in await self._keys(redis, pattern)}


def test_scripts_agree_with_the_model(
        machine_engine: tuple[asyncio.AbstractEventLoop, StockEngine]) -> None:
    StockMachine.loop, StockMachine.engine = machine_engine
    StockMachine.TestCase.settings = settings(
        max_examples=100, stateful_step_count=40, deadline=None,
        suppress_health_check=[HealthCheck.too_slow])
    StockMachine.TestCase().runTest()
