"""Incoming stock against a model of physical units: random purchase orders, partial, full,
over- and repeated receipts, short closes, cancels, pre-order sales against what is expected
and cancelled orders. After every step Redis agrees with the model: receipts are idempotent
(a repeat changes nothing, a reused receipt id with another body is refused), units are
conserved (on_hand == seeded + received - shipped, with nothing shipped here; open incoming
== opened - received against it - closed), and a promise left uncovered by a close raises
preorder_at_risk naming a live order. The invariant checker runs over the whole outbox too.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import date
from typing import Any, ClassVar, TypeVar

import msgspec
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule

from loadtests.invariants import check as check_invariants
from loadtests.invariants import collect
from stockgate import errors, incoming
from stockgate.alerts import list_alerts
from stockgate.keys import tenant_keys
from stockgate.models import IncomingRequest, Line, ReceiptRequest, event_decoder
from stockgate.stock import StockEngine
from workers import preorders

T = "default"
K = tenant_keys(T)
R = TypeVar("R")
CELLS = [("P", "main"), ("P", "east"), ("Q", "main")]
Cell = tuple[str, str]

incoming_ids = st.sampled_from(["i0", "i1", "i2"])
receipt_ids = st.sampled_from(["r0", "r1", "r2"])
po_lines = st.lists(st.tuples(st.sampled_from(CELLS), st.integers(1, 5)), min_size=1,
                    max_size=3)
receipt_lines = st.lists(st.tuples(st.sampled_from(CELLS), st.integers(1, 6)), max_size=3)


@dataclass
class Record:
    fp: tuple[Any, ...]
    qty: dict[Cell, int]
    received: dict[Cell, int]
    open: dict[Cell, int]
    status: str = "open"
    receipts: dict[str, tuple[Any, ...]] = field(default_factory=dict)


@dataclass
class Model:
    seeded: dict[Cell, int] = field(default_factory=dict)
    committed: dict[Cell, int] = field(default_factory=dict)
    records: dict[str, Record] = field(default_factory=dict)
    orders: dict[str, tuple[Cell, int, str]] = field(default_factory=dict)  # cell, qty, status
    preorder_limit: int = 0

    def received(self, cell: Cell) -> int:
        return sum(r.received.get(cell, 0) for r in self.records.values())

    def on_hand(self, cell: Cell) -> int:
        return self.seeded.get(cell, 0) + self.received(cell)

    def expected(self, cell: Cell) -> int:
        return sum(r.open.get(cell, 0) for r in self.records.values())

    def short(self, cell: Cell) -> int:
        """Units sold beyond what is physically there."""
        return self.committed.get(cell, 0) - self.on_hand(cell)


def merged(lines: list[tuple[Cell, int]]) -> dict[Cell, int]:
    out: dict[Cell, int] = {}
    for cell, qty in lines:
        out[cell] = out.get(cell, 0) + qty
    return out


class IncomingMachine(RuleBasedStateMachine):
    loop: ClassVar[asyncio.AbstractEventLoop]
    engine: ClassVar[StockEngine]
    made_orders = Bundle("made_orders")
    # What the examples exercised, over the whole run: the test fails if a case never came up.
    seen: ClassVar[Counter[str]] = Counter()

    def __init__(self) -> None:
        super().__init__()
        self.model = Model()
        self.order_ids = itertools.count()
        self.last_event_id = "0-0"
        self.ever_uncovered = False
        self.run(self.engine.redis.flushall())

    def run(self, coro: Coroutine[Any, Any, R]) -> R:
        return self.loop.run_until_complete(coro)

    def call(self, coro: Coroutine[Any, Any, Any], want: str) -> Any:
        try:
            result, got = self.run(coro), ""
        except errors.StockgateError as exc:
            result, got = None, type(exc).__name__
        assert got == want, f"redis says {got or 'ok'}, the model says {want or 'ok'}"
        return result

    def new_events(self) -> list[Any]:
        entries = self.run(self.engine.redis.xrange(K.outbox, min=f"({self.last_event_id}"))
        out = []
        for entry_id, fields in entries:
            self.last_event_id = entry_id.decode()
            out.append(msgspec.structs.replace(event_decoder.decode(fields[b"e"]),
                                               id=entry_id.decode()))
        return out

    def expect_events(self, n: int) -> list[Any]:
        events = self.new_events()
        assert len(events) == n, f"{len(events)} events, the model expects {n}"
        return events

    # Little stock and a generous limit, so pre-order sales (and closes that strand them)
    # come up in most runs; a limit of 0 still tests that none happen without one.
    @initialize(p=st.integers(0, 3), q=st.integers(0, 6),
                limit=st.sampled_from([0, 2, 4, 6, 6]))
    def seed(self, p: int, q: int, limit: int) -> None:
        for (sku, loc), qty in ((("P", "main"), p), (("Q", "main"), q)):
            self.run(self.engine.adjust(T, sku, reason="seed", idempotency_key=f"seed-{sku}",
                                        location=loc, delta=qty))
            self.model.seeded[(sku, loc)] = qty
        self.run(self.engine.set_policy(T, "P", preorder_limit=limit))
        self.model.preorder_limit = limit
        self.new_events()

    # ---- incoming --------------------------------------------------------------------------

    @rule(incoming_id=incoming_ids, lines=po_lines, day=st.integers(1, 3))
    def create(self, incoming_id: str, lines: list[tuple[Cell, int]], day: int) -> None:
        body = IncomingRequest(incoming_id=incoming_id, expected_date=date(2027, 1, day),
                               reference="PO-" + incoming_id,
                               lines=[Line(sku=s, qty=q, location=loc) for (s, loc), q in lines])
        qty = merged(lines)
        rec = self.model.records.get(incoming_id)
        fp = (tuple(lines), day)  # the body as sent is what a repeat must match
        if rec is not None:
            self.call(incoming.create(self.engine, T, body),
                      "" if rec.fp == fp else "IdempotencyConflict")
            self.expect_events(0)
            return
        self.call(incoming.create(self.engine, T, body), "")
        self.model.records[incoming_id] = Record(fp, qty, dict.fromkeys(qty, 0), dict(qty))
        self.expect_events(len(qty))

    @rule(incoming_id=incoming_ids, receipt_id=receipt_ids, lines=receipt_lines,
          close=st.booleans())
    def receive_anything(self, incoming_id: str, receipt_id: str,
                         lines: list[tuple[Cell, int]], close: bool) -> None:
        self.receive(incoming_id, receipt_id, lines, close)

    @rule(data=st.data(), receipt_id=receipt_ids, close=st.booleans())
    def receive_its_lines(self, data: st.DataObject, receipt_id: str, close: bool) -> None:
        """A receipt naming the record's own lines: partial, full or over."""
        if self.model.records:
            incoming_id = data.draw(st.sampled_from(sorted(self.model.records)))
            cells = sorted(self.model.records[incoming_id].qty)
            lines = data.draw(st.lists(st.tuples(st.sampled_from(cells), st.integers(1, 6)),
                                       min_size=1, max_size=3))
            self.receive(incoming_id, receipt_id, lines, close)

    def receive(self, incoming_id: str, receipt_id: str, lines: list[tuple[Cell, int]],
                close: bool) -> None:
        body = ReceiptRequest(receipt_id=receipt_id, close=close,
                              lines=[Line(sku=s, qty=q, location=loc) for (s, loc), q in lines])
        fp = (tuple(lines), close)
        rec = self.model.records.get(incoming_id)
        if rec is None:
            self.call(incoming.receive(self.engine, T, incoming_id, body), "IncomingNotFound")
            self.expect_events(0)
            return
        if receipt_id in rec.receipts:
            same = rec.receipts[receipt_id] == fp
            self.seen["a receipt repeated" if same else "a receipt id reused"] += 1
            self.call(incoming.receive(self.engine, T, incoming_id, body),
                      "" if same else "IdempotencyConflict")
            self.expect_events(0)  # a repeat changes nothing
            return
        wanted = merged(lines)
        if rec.status != "open":
            want = "IncomingClosed"
        elif (not wanted and not close) or any(c not in rec.qty for c in wanted):
            want = "InvalidRequest"
        else:
            want = ""
        self.call(incoming.receive(self.engine, T, incoming_id, body), want)
        if want:
            self.expect_events(0)
            return
        changed = 0
        closed_any = False
        for cell in rec.qty:
            q = wanted.get(cell, 0)
            covered = min(q, rec.open[cell])
            closed = rec.open[cell] - covered if close else 0
            rec.received[cell] += q
            rec.open[cell] -= covered + closed
            closed_any = closed_any or closed > 0
            changed += 1 if q > 0 or closed > 0 else 0
        if not any(rec.open.values()):
            rec.status = "closed" if closed_any else "received"
        rec.receipts[receipt_id] = fp
        self.after_close(self.expect_events(changed))

    @rule(data=st.data())
    def repeat_receipt(self, data: st.DataObject) -> None:
        """A receipt sent again as it was (a scanner retrying): the first answer, no change."""
        done = [(i, r) for i, rec in self.model.records.items() for r in rec.receipts]
        if done:
            incoming_id, receipt_id = data.draw(st.sampled_from(done))
            lines, close = self.model.records[incoming_id].receipts[receipt_id]
            self.receive(incoming_id, receipt_id, list(lines), close)

    @rule(incoming_id=incoming_ids)
    def cancel(self, incoming_id: str) -> None:
        rec = self.model.records.get(incoming_id)
        if rec is None:
            self.call(incoming.cancel(self.engine, T, incoming_id), "IncomingNotFound")
            self.expect_events(0)
            return
        if rec.status not in ("open", "cancelled"):
            self.call(incoming.cancel(self.engine, T, incoming_id), "IncomingClosed")
            self.expect_events(0)
            return
        self.call(incoming.cancel(self.engine, T, incoming_id), "")
        changed = sum(1 for v in rec.open.values() if v > 0)
        rec.open = dict.fromkeys(rec.open, 0)
        rec.status = "cancelled"
        self.after_close(self.expect_events(changed))

    def after_close(self, events: list[Any]) -> None:
        """What the workers do with these events: a promise no longer covered by what is
        still expected raises preorder_at_risk naming a live order."""
        before = len(self.run(list_alerts(self.engine.redis, T, type="preorder_at_risk")))
        for ev in events:
            self.run(preorders.check_event(self.engine.redis, T, ev))
        alerts = self.run(list_alerts(self.engine.redis, T, type="preorder_at_risk"))
        at_risk = [c for c in CELLS if any(preorders.closes_incoming(e) for e in events
                                           if (e.sku, e.location) == c)
                   and self.model.short(c) > self.model.expected(c)]
        if at_risk:
            self.ever_uncovered = True
            self.seen["a close left promises uncovered"] += 1
        assert len(alerts) - before == len(at_risk), (at_risk, alerts)
        for alert in alerts[:len(at_risk)]:
            live = [o for o, (cell, _, st_) in self.model.orders.items()
                    if st_ == "open" and cell == (alert.sku, alert.location)]
            assert any(f"order {o}" in alert.detail for o in live), alert.detail

    # ---- pre-order sales -------------------------------------------------------------------

    @rule(target=made_orders, qty=st.integers(1, 4), cell=st.sampled_from(CELLS[:2]))
    def order(self, qty: int, cell: Cell) -> str:
        order_id = f"o{next(self.order_ids)}"
        m = self.model
        available = m.on_hand(cell) - m.committed.get(cell, 0)
        # The limit is one budget per SKU: what its other locations pre-sold is spent.
        others = sum(max(0, m.short(o)) for o in CELLS if o[0] == cell[0] and o != cell)
        room = max(0, min(m.expected(cell), m.preorder_limit - others))
        known = cell in m.seeded or any(cell in r.qty for r in m.records.values())
        reply = self.call(self.engine.order(T, order_id, [Line(cell[0], qty, cell[1])]), "")
        status = reply[0].lines[0].status
        if not known:
            assert status == "unknown_sku"
        elif available - qty + room >= 0:
            assert status == "committed", (available, qty, room)
            if available - qty < 0:
                self.seen["a pre-order sale"] += 1
            m.committed[cell] = m.committed.get(cell, 0) + qty
            m.orders[order_id] = (cell, qty, "open")
        else:
            assert status == "oversell_rejected", (available, qty, room)
        self.new_events()
        return order_id

    @rule(order_id=made_orders)
    def cancel_order(self, order_id: str) -> None:
        self.run(self.engine.cancel(T, order_id))
        found = self.model.orders.get(order_id)
        if found and found[2] == "open":
            cell, qty, _ = found
            self.model.committed[cell] -= qty
            self.model.orders[order_id] = (cell, qty, "cancelled")
        self.new_events()

    # ---- the checks ------------------------------------------------------------------------

    @invariant()
    def redis_matches_model(self) -> None:
        m = self.model
        for sku in ("P", "Q"):
            try:
                view = self.run(self.engine.stock(T, sku))
            except errors.UnknownSku:
                assert all(m.on_hand((sku, loc)) == 0 for s, loc in CELLS if s == sku)
                continue
            for s, loc in CELLS:
                if s != sku:
                    continue
                cell = view.locations.get(loc)
                # Units are conserved: nothing but receipts brings them in here.
                assert (cell.on_hand if cell else 0) == m.on_hand((s, loc))
                assert (cell.committed if cell else 0) == m.committed.get((s, loc), 0)
                expected = view.incoming.get(loc)
                assert (expected.expected if expected else 0) == m.expected((s, loc))
        for incoming_id, rec in m.records.items():
            got = self.run(incoming.get(self.engine, T, incoming_id))
            assert got is not None and got.status == rec.status
            assert {(ln.sku, ln.location): (ln.qty, ln.received, ln.open) for ln in got.lines} \
                == {c: (rec.qty[c], rec.received[c], rec.open[c]) for c in rec.qty}

    @invariant()
    def invariant_checker_agrees(self) -> None:
        obs = self.run(collect(self.engine.redis, self.engine, T))
        report = check_invariants(obs)
        problems = [v for v in report.violations if v.check != "oversell"]
        assert not problems, problems
        if not self.ever_uncovered:
            assert report.ok, report.violations


def test_incoming_agrees_with_the_model(
        machine_engine: tuple[asyncio.AbstractEventLoop, StockEngine]) -> None:
    IncomingMachine.loop, IncomingMachine.engine = machine_engine
    IncomingMachine.TestCase.settings = settings(
        max_examples=100, stateful_step_count=40, deadline=None,
        suppress_health_check=[HealthCheck.too_slow])
    IncomingMachine.TestCase().runTest()
    # A close that strands promises needs a pre-order sale and then a close at that cell:
    # it comes up in most runs but not all, so tests/test_gateway_incoming.py proves its
    # alert deterministically; these three come up in every run.
    for case in ("a pre-order sale", "a receipt repeated", "a receipt id reused"):
        assert IncomingMachine.seen[case] > 0, (case, IncomingMachine.seen)
