"""Bundles against models: 1,000 concurrent carts mixing bundles and their components never
take a component below its limit, and a state machine of every operation on bundle lines
mixed with component lines agrees with tests/test_property.py's model of the same rules
applied to the expanded lines."""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import multiple, rule
from redis.asyncio import Redis
from test_property import (
    Model,
    Order,
    ScriptLine,
    StockMachine,
    customers,
    hold_ids,
    locations,
    order_ids,
    qtys,
)

from stockgate import errors
from stockgate.bundles import Bundles
from stockgate.keys import tenant_keys
from stockgate.models import BundleComponent, Line, event_decoder
from stockgate.stock import StockEngine

T = "default"
# KIT and DUO share component A: a cart of both, or of either with A, sums A.
BUNDLES = {"KIT": [("A", 2), ("B", 1)], "DUO": [("A", 1)]}


def expand(lines: list[ScriptLine]) -> list[ScriptLine]:
    return [(c, loc, q * per) for sku, loc, q in lines
            for c, per in BUNDLES.get(sku, [(sku, 1)])]


async def define_all(engine: StockEngine) -> None:
    for sku, parts in BUNDLES.items():
        await Bundles(engine).put(T, sku, [BundleComponent(c, q) for c, q in parts])


# ---- 1,000 concurrent carts ---------------------------------------------------------------

SHOPPERS = 1_000
LIMITS = {"A": 4, "B": 0}  # A may go 4 below zero (backorder), B not at all
UNITS = {"A": 150, "B": 60}


async def test_thousand_mixed_carts_never_take_a_component_below_its_limit(
        engines: list[StockEngine], redis: Redis) -> None:
    engine = engines[0]
    for sku, n in UNITS.items():
        await engine.adjust(T, sku, reason="drop", idempotency_key=f"drop-{sku}", delta=n)
        await engine.set_policy(T, sku, backorder_limit=LIMITS[sku])
    await define_all(engine)
    rng = random.Random(16502)
    carts = [[(rng.choice(["KIT", "DUO", "A", "B"]), "main", rng.randint(1, 3))
              for _ in range(rng.randint(1, 3))] for _ in range(SHOPPERS)]

    async def shopper(n: int) -> bool:
        try:
            await engines[n % len(engines)].hold(T, [Line(s, q, loc) for s, loc, q in carts[n]],
                                            hold_id=f"cart-{n}")
        except errors.InsufficientStock:
            return False
        return True

    held = await asyncio.gather(*(shopper(n) for n in range(SHOPPERS)))
    assert 0 < sum(held) < SHOPPERS  # sold out: the limit was what stopped the carts

    # The model: every accepted cart's expanded units, nothing for a refused one.
    want: Counter[str] = Counter()
    for cart, ok in zip(carts, held, strict=True):
        for sku, _, q in expand(cart) if ok else []:
            want[sku] += q
    for sku in UNITS:
        c = (await engine.stock(T, sku)).locations["main"]
        assert c.reserved == want[sku]
        assert c.available == UNITS[sku] - want[sku]
        assert c.available >= -LIMITS[sku]
    # Nothing in between broke it either: every event's state, in the order applied.
    entries = await redis.xrange(tenant_keys(T).outbox)
    evs = [event_decoder.decode(f[b"e"]) for _, f in entries]
    per_hold: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for ev in evs:
        if ev.type == "hold":
            assert ev.after is not None and ev.after.available >= -LIMITS[ev.sku]
            per_hold[ev.source.ref][ev.sku] += ev.delta["reserved"]
    accepted = {f"cart-{n}" for n, ok in enumerate(held) if ok}
    assert set(per_hold) == accepted
    for n, ok in enumerate(held):
        if ok:
            assert per_hold[f"cart-{n}"] == Counter(
                {s: q for s, q in _summed(expand(carts[n])).items()})
    # A refused cart fits no better than its sum: with the final stock it still cannot.
    left = {sku: UNITS[sku] - want[sku] + LIMITS[sku] for sku in UNITS}
    for cart, ok in zip(carts, held, strict=True):
        if not ok:
            need = _summed(expand(cart))
            assert any(need[s] > left[s] for s in need)


def _summed(lines: list[ScriptLine]) -> Counter[str]:
    out: Counter[str] = Counter()
    for sku, _, q in lines:
        out[sku] += q
    return out


# ---- the state machine --------------------------------------------------------------------

bundle_skus = st.sampled_from(["A", "A", "B", "C", "KIT", "KIT", "DUO"])
bundle_lines = st.lists(st.tuples(bundle_skus, locations, qtys), min_size=1, max_size=3)
wanted_line = st.tuples(bundle_skus, st.sampled_from(["", "main", "east"]), qtys)
wanted_lines = st.lists(wanted_line, max_size=2)


def tagged(lines: list[ScriptLine]) -> list[ScriptLine]:
    """Expanded lines whose component SKUs carry their kit ("A#KIT"): the model's way of
    keeping an order's kit units apart from its loose units (the engine's bundle tags)."""
    return [(f"{c}#{sku}" if sku in BUNDLES else c, loc, q * per) for sku, loc, q in lines
            for c, per in BUNDLES.get(sku, [(sku, 1)])]


def untag(sku: str) -> str:
    return sku.partition("#")[0]


class Cells(dict[tuple[str, str], Any]):
    """Cells keyed by the plain SKU whatever kit tag a line carries."""

    def __getitem__(self, key: tuple[str, str]) -> Any:
        return super().__getitem__((untag(key[0]), key[1]))

    def __setitem__(self, key: tuple[str, str], value: Any) -> None:
        super().__setitem__((untag(key[0]), key[1]), value)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, tuple) and super().__contains__((untag(key[0]), key[1]))

    def get(self, key: tuple[str, str], default: Any = None) -> Any:
        return super().get((untag(key[0]), key[1]), default)


class BundleModel(Model):
    """The same rules on expanded lines, a kit's units tagged with their kit: a fulfilment,
    refund or edit naming a kit acts on the order's kit units only, never its loose ones, and
    a kit line of a channel order commits whole or not at all. Replays and conflicts judged
    on the lines as asked (the engine fingerprints the request, not its expansion)."""

    def __init__(self) -> None:
        super().__init__()
        self.cells = Cells()
        self.asked: dict[tuple[str, str], Any] = {}
        self.hold_tagged: dict[str, list[ScriptLine]] = {}

    def cell_id(self, sku: str, loc: str) -> tuple[str, str]:
        return untag(sku), loc

    def _from_record(self, order_id: str, lines: list[ScriptLine]) -> list[ScriptLine]:
        """A kit line of a known order expands to the order's kit units; a kit the order
        never sold stays a line of that SKU (matching nothing)."""
        order = self.orders.get(order_id)
        if order is None:
            return expand(lines)
        sold = {ol["sku"].partition("#")[2] for ol in order.lines}
        out: list[ScriptLine] = []
        for sku, loc, q in lines:
            out += tagged([(sku, loc, q)]) if sku in BUNDLES and sku in sold else [(sku, loc, q)]
        return out

    def commit(self, hold_id: str, order_id: str) -> tuple[str, int]:
        h = self.holds.get(hold_id)
        fresh = h is not None and h.status == "held"
        out = super().commit(hold_id, order_id)
        if fresh and out[0] == "" and h is not None and h.status == "committed":
            for ol, line in zip(self.orders[order_id].lines, self.hold_tagged[hold_id],
                                strict=True):
                ol["sku"] = line[0]
        return out

    def _order(self, order_id: str, order_lines: list[ScriptLine]) -> tuple[str, int]:
        """lua/order.lua with kits: kits the record holds expand from it first (whole kits,
        by the record's units), then every other line in order; a kit chunk is judged whole."""
        record = self.orders.get(order_id)
        sources = [ol for ol in record.lines if ol["qty"] > 0] if record is not None else []
        left = [ol["qty"] for ol in sources]
        first: list[tuple[bool, list[ScriptLine]]] = []
        rest: list[tuple[bool, list[ScriptLine]]] = []
        used: Counter[str] = Counter()
        for sku, loc, q in order_lines:
            if sku not in BUNDLES:
                rest.append((False, [(sku, loc, q)]))
                continue
            have: Counter[str] = Counter()
            for ol in sources:
                if ol["location"] == loc:
                    have[ol["sku"]] += ol["qty"]
            cap = 0
            if any(ol["sku"].endswith(f"#{sku}") for ol in sources):
                cap = min(have[f"{c}#{sku}"] // per for c, per in BUNDLES[sku])
            k = max(min(q, cap - used[sku]), 0)
            used[sku] += k
            if k:
                first.append((True, tagged([(sku, loc, k)])))
            if q - k:
                rest.append((True, tagged([(sku, loc, q - k)])))
        changed: set[tuple[str, str]] = set()
        refused = 0
        kept: list[dict[str, Any]] = []

        def take_sources(sku: str, qty: int) -> int:
            for i, ol in enumerate(sources):
                if qty and ol["sku"] == sku and left[i] > 0:
                    x = min(qty, left[i])
                    left[i] -= x
                    qty -= x
            return qty

        def commit(sku: str, loc: str, qty: int) -> None:
            self.cells[(sku, loc)]["committed"] += qty
            changed.add(self.cell_id(sku, loc))
            kept.append({"sku": sku, "location": loc, "qty": qty, "open": qty,
                         "fulfilled": 0, "restocked": 0})

        for kit, lines in first + rest:
            if not kit:
                [(sku, loc, qty)] = lines
                qty = take_sources(sku, qty)
                c = self.cells.get((sku, loc))
                if qty and c is not None:
                    if self.can_take(c, qty):
                        commit(sku, loc, qty)
                    else:
                        refused += 1
                continue
            rems = []
            for sku, _, qty in lines:
                room = sum(left[i] for i, ol in enumerate(sources) if ol["sku"] == sku)
                rems.append(qty - min(qty, room))
            ok = all(rem == 0 or (self.cells.get((sku, loc)) is not None
                                  and self.can_take(self.cells[(sku, loc)], rem))
                     for (sku, loc, _), rem in zip(lines, rems, strict=True))
            if not ok:
                refused += sum(1 for sku, loc, _ in lines if (sku, loc) in self.cells)
                continue
            for sku, loc, qty in lines:
                qty = take_sources(sku, qty)
                if qty:
                    commit(sku, loc, qty)
        for i, ol in enumerate(sources):
            unmatched_open = min(left[i], ol["open"])
            if unmatched_open > 0:
                c = self.cells[(ol["sku"], ol["location"])]
                c["committed"] -= min(unmatched_open, c["committed"])
                ol["open"] -= unmatched_open
                ol["qty"] -= unmatched_open
                changed.add(self.cell_id(ol["sku"], ol["location"]))
        fp = ("order", order_lines)
        if record is not None:
            record.lines += kept
            record.channel_fp = fp
        else:
            self.orders[order_id] = Order(fp, kept)
        return "", len(changed) + refused

    def _replay(self, kind: str, ident: str, fp: Any) -> tuple[str, int] | None:
        seen = self.asked.get((kind, ident))
        if seen is None:
            return None
        return ("" if seen == fp else "IdempotencyConflict"), 0

    def hold(self, hold_id: str, hold_lines: list[ScriptLine], customer: str
             ) -> tuple[str, int]:
        if hold_id in self.holds:
            return self._replay("hold", hold_id, (hold_lines, customer)) or ("", 0)
        out = super().hold(hold_id, expand(hold_lines), customer)
        if hold_id in self.holds:
            self.asked[("hold", hold_id)] = (hold_lines, customer)
            self.hold_tagged[hold_id] = tagged(hold_lines)
        return out

    def order(self, order_id: str, order_lines: list[ScriptLine]) -> tuple[str, int]:
        record = self.orders.get(order_id)
        if record is not None:
            if (record.status == "cancelled"
                    or order_lines in self.asked.get(("order", order_id), [])):
                return "", 0
            if record.fp[0] != "hold" or record.channel_fp is not None:
                return "IdempotencyConflict", 0
        out = self._order(order_id, order_lines)
        self.asked.setdefault(("order", order_id), []).append(order_lines)
        return out

    def fulfil(self, order_id: str, fulfilment_id: str, wanted: list[ScriptLine]
               ) -> tuple[str, int]:
        fp = (order_id, wanted)
        replay = self._replay("fulfil", fulfilment_id, fp)
        if replay:
            return replay
        out = super().fulfil(order_id, fulfilment_id, self._from_record(order_id, wanted))
        if out[0] == "":
            self.asked[("fulfil", fulfilment_id)] = fp
        return out

    def restock(self, refund_id: str, order_id: str, wanted: list[ScriptLine]
                ) -> tuple[str, int]:
        fp = (order_id, wanted)
        replay = self._replay("restock", refund_id, fp)
        if replay:
            return replay
        out = super().restock(refund_id, order_id, self._from_record(order_id, wanted))
        if out[0] == "":
            self.asked[("restock", refund_id)] = fp
        return out


class BundleMachine(StockMachine):
    def __init__(self) -> None:
        super().__init__()
        self.model = BundleModel()
        self.run(define_all(self.engine))

    def record_lines(self, lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # The engine tags a kit's entries (bundle, per-bundle qty, definition); the model
        # tags the SKU.
        out = []
        for e in lines:
            e = dict(e)
            bundle = e.pop("bundle", None)
            e.pop("per", None)
            e.pop("def", None)
            if bundle:
                e["sku"] = f"{e['sku']}#{bundle}"
            out.append(e)
        return out

    @rule(target=StockMachine.made_holds, hold_id=hold_ids, hold_lines=bundle_lines,
          customer=customers)
    def hold(self, hold_id: str, hold_lines: list[ScriptLine], customer: str) -> Any:
        expected = self.model.hold(hold_id, hold_lines, customer)
        self.call(self.engine.hold(T, [Line(s, q, loc) for s, loc, q in hold_lines],
                                   hold_id=hold_id, customer=customer), expected)
        if not expected[1]:
            return multiple()
        for sku, loc, _ in expand(hold_lines):
            c = self.model.cells[(sku, loc)]
            assert Model.available(c) >= -c["backorder_limit"]
        return hold_id

    @rule(target=StockMachine.made_orders, order_id=order_ids, order_lines=bundle_lines)
    def order(self, order_id: str, order_lines: list[ScriptLine]) -> Any:
        expected = self.model.order(order_id, order_lines)
        self.call(self.engine.order(T, order_id, [Line(s, q, loc) for s, loc, q in order_lines]),
                  expected)
        return order_id if expected[1] else multiple()

    @rule(order_id=StockMachine.made_orders | order_ids,
          fulfilment_id=st.sampled_from(["f0", "f1", "f2"]), wanted=wanted_lines)
    def fulfil(self, order_id: str, fulfilment_id: str, wanted: list[ScriptLine]) -> None:
        self.call(self.engine.fulfil(T, order_id, fulfilment_id,
                                     [Line(s, q, loc or None) for s, loc, q in wanted]),
                  self.model.fulfil(order_id, f"fulfil:{fulfilment_id}", wanted))

    @rule(refund_id=st.sampled_from(["r0", "r1", "r2"]),
          order_id=st.just("") | StockMachine.made_orders | order_ids,
          wanted=st.lists(wanted_line, min_size=1, max_size=2))
    def restock(self, refund_id: str, order_id: str, wanted: list[ScriptLine]) -> None:
        script_lines = [(s, loc or ("" if order_id else "main"), q) for s, loc, q in wanted]
        self.call(self.engine.restock(T, refund_id, [Line(s, q, loc or None)
                                                     for s, loc, q in wanted],
                                      order_id=order_id),
                  self.model.restock(f"restock:{refund_id}", order_id, script_lines))


def test_bundle_lines_agree_with_the_model(
        machine_engine: tuple[asyncio.AbstractEventLoop, StockEngine]) -> None:
    BundleMachine.loop, BundleMachine.engine = machine_engine
    BundleMachine.TestCase.settings = settings(
        max_examples=100, stateful_step_count=40, deadline=None,
        suppress_health_check=[HealthCheck.too_slow])
    BundleMachine.TestCase().runTest()
