"""Per-channel allocation rules: the rule function against a model, the config default, the
script (one event per change, none for a repeat), and a property test of the push path: random
rules x random stock changes x rule changes, with every value a channel simulator receives
checked against a model of the pool and the rule. The pushed value never exceeds the rule or
the pool, and every channel converges to its rule's value."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from loadtests import invariants
from stockgate import errors
from stockgate.allocation import AllocationRule, figure_pool, shown
from stockgate.audit import audit_store
from stockgate.keys import tenant_keys, worker_keys
from stockgate.models import Line, event_decoder
from stockgate.settings import Channel, ConfigError, Settings, load_settings
from stockgate.stock import StockEngine
from workers.adapters import adapter_for
from workers.channel_counts import judge_channel_count
from workers.propagation import (
    PropagationConfig,
    Propagator,
    mark_events,
    now_ms,
    record_push,
)
from workers.reconcile import reconcile
from workers.simulators import SimulatorServer

T = "default"

rules = st.one_of(
    st.builds(AllocationRule, fixed=st.integers(0, 30),
              hide_below=st.none() | st.integers(0, 12)),
    st.builds(AllocationRule, percent=st.integers(0, 100),
              max=st.none() | st.integers(0, 30), hide_below=st.none() | st.integers(0, 12)),
    st.builds(AllocationRule, max=st.integers(0, 30)),
    st.builds(AllocationRule, hide_below=st.integers(0, 12)),
)


def model(rule: AllocationRule | None, pool: int) -> int:
    """The rule read literally: the smallest of everything it allows, nothing when hidden."""
    if pool <= 0:
        return 0
    if rule is None:
        return pool
    if rule.hide_below is not None and pool < rule.hide_below:
        return 0
    caps = [pool]
    if rule.fixed is not None:
        caps.append(rule.fixed)
    if rule.percent is not None:
        caps.append(int(pool * rule.percent / 100))  # pools here are small: exact
    if rule.max is not None:
        caps.append(rule.max)
    return min(caps)


def within(rule: AllocationRule | None, pool: int, value: int) -> bool:
    """The bar: never above the pool or the rule, never negative, 0 below the threshold."""
    pool = max(pool, 0)
    if not 0 <= value <= pool:
        return False
    if rule is None:
        return True
    if rule.hide_below is not None and pool < rule.hide_below and value:
        return False
    bounds = [rule.fixed, rule.max,
              None if rule.percent is None else pool * rule.percent // 100]
    return all(value <= b for b in bounds if b is not None)


@given(rule=st.none() | rules, pool=st.integers(-50, 10_000))
def test_the_rule_function_matches_the_model_and_stays_in_bounds(
        rule: AllocationRule | None, pool: int) -> None:
    assert shown(rule, pool) == model(rule, pool)
    assert within(rule, pool, shown(rule, pool))


def test_a_fixed_allocation_is_clamped_to_the_pool() -> None:
    assert shown(AllocationRule(fixed=10), 4) == 4  # never units that do not exist
    assert shown(AllocationRule(fixed=10), -3) == 0
    assert shown(AllocationRule(percent=33), 10) == 3  # rounded down
    assert shown(AllocationRule(hide_below=5, fixed=2), 4) == 0
    assert shown(AllocationRule(hide_below=5, fixed=2), 5) == 2


def test_a_location_below_zero_takes_nothing_from_another() -> None:
    """A count that leaves one location's available negative shows 0 there, and never eats
    the units of another location in a channel's one figure."""
    both = ("main", "east")
    assert figure_pool({"main": -2, "east": 5}, both, (), "main") == 5
    assert figure_pool({"main": -2, "east": 5}, both, both, "main") == 0
    assert figure_pool({"main": -2, "east": 5}, both, both, "east") == 5
    assert figure_pool({}, both, (), "main") == 0


def test_the_channel_default_is_typed_and_validated_at_load(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[channels.mkt]\nkind = "standard"\nsecret = "s"\n'
                    'allocation = {percent = 50, max = 20, hide_below = 5}\n')
    channel = load_settings(str(path), env={}).channels["mkt"]
    assert channel.allocation == AllocationRule(percent=50, max=20, hide_below=5)
    for bad in ("{fixed = 3, percent = 50}", "{percent = 150}", "{}", "{share = 1}",
                "{max = -1}"):
        path.write_text(f'[channels.mkt]\nkind = "standard"\nsecret = "s"\nallocation = {bad}\n')
        with pytest.raises(ConfigError, match="allocation"):
            load_settings(str(path), env={})


async def test_the_script_writes_once_and_refuses_what_python_would(
        redis: Redis, tmp_path: Path) -> None:
    engine = StockEngine(redis, Settings(data_dir=str(tmp_path), channels={
        "mkt": Channel(kind="standard", secret="s")}))
    await engine.load_scripts()
    try:
        await engine.adjust(T, "A", reason="r", idempotency_key="r", delta=10)
        reply = await engine.set_allocation(T, "A", "mkt", AllocationRule(percent=50))
        assert reply.changed and reply.allocation.value == 5
        again = await engine.set_allocation(T, "A", "mkt", AllocationRule(percent=50))
        assert not again.changed
        events = [event_decoder.decode(f[b"e"])
                  for _, f in await redis.xrange(tenant_keys(T).outbox)]
        rule_events = [e for e in events if e.type == "allocation"]
        assert len(rule_events) == 1
        ev = rule_events[0]
        assert (ev.sku, ev.location, ev.delta, ev.after, ev.source.channel) == (
            "A", "", {}, None, "mkt")
        with pytest.raises(errors.UnknownSku):
            await engine.set_allocation(T, "NOPE", "mkt", AllocationRule(max=1))
        with pytest.raises(errors.UnknownChannel):
            await engine.set_allocation(T, "A", "nope", AllocationRule(max=1))
        # Straight to the script, past Python's checks: it refuses them too, writing nothing.
        k = tenant_keys(T)
        for bad in ['{"fixed":1,"percent":2}', '{"percent":101}', "{}", '{"x":1}', "[1]",
                    '{"max":-1}', '{"max":1.5}', "nope", 7]:
            with pytest.raises(errors.InvalidRequest):
                await engine._run("allocation", T, [k.outbox, k.stock("A"), k.allocation("A")],
                                  {"sku": "A", "channel": "mkt", "rule": bad}, "",
                                  msgspec.Raw)
        assert await redis.hget(k.allocation("A"), "mkt") == b'{"percent":50}'
        assert await redis.xlen(k.outbox) == len(events)
        # The checker sees rule events as moving nothing, and the view within its rules...
        observed = await invariants.collect(redis, engine, T)
        report = invariants.check(observed)
        assert report.ok, report.violations
        # ...and catches a channel shown more than its rule gives, or a channel not shown it.
        view = observed.views["A"]
        alloc = view.allocation["mkt"]
        bad = msgspec.structs.replace(alloc, figures={"main": msgspec.structs.replace(
            alloc.figures["main"], value=alloc.figures["main"].value + 1)})
        observed.views["A"] = msgspec.structs.replace(view, allocation={"mkt": bad})
        assert [v.check for v in invariants.check(observed).violations] == ["allocation"]
        observed.views["A"] = view
        observed.channel_counts = {"mkt": {"A": 10}}  # the pool, not the rule's 5
        assert [(v.check, v.channel) for v in invariants.check(observed).violations] == [
            ("channel", "mkt")]
    finally:
        engine.scripts.close()


# ---- the push path -----------------------------------------------------------------------

LOCS = ("main", "east")
# std shows one figure summed over both locations, with a default rule of its own; mkt keeps a
# figure per location (two channel locations), each ruled alone; woo and bc sell main only.
DEFAULT_STD = AllocationRule(percent=50, hide_below=3)


def _channels(sims: dict[str, SimulatorServer]) -> dict[str, Channel]:
    def ch(kind: str, name: str, **extra: object) -> Channel:
        return Channel(kind=kind, secret="s3cret", api_url=sims[name].url,  # type: ignore
                       access_token="token", rate_limit_per_s=0.0, **extra)
    return {"std": ch("standard", "std", locations=LOCS, allocation=DEFAULT_STD),
            "mkt": ch("standard", "mkt", locations=LOCS,
                      location_map={"L1": "main", "L2": "east"}),
            "woo": ch("woocommerce", "woo"), "bc": ch("bigcommerce", "bc")}


# Where each channel keeps each figure: (figure location, the simulator's key for it).
FIGURES = {"std": [("main", "main")], "mkt": [("main", "L1"), ("east", "L2")],
           "woo": [("main", "main")], "bc": [("main", "main")]}

ops = st.lists(st.one_of(
    st.tuples(st.just("receive"), st.sampled_from(LOCS), st.integers(1, 15)),
    st.tuples(st.just("hold"), st.sampled_from(LOCS), st.integers(1, 6)),
    st.tuples(st.just("order"), st.sampled_from(LOCS), st.integers(1, 6)),
    st.tuples(st.just("release"), st.just(""), st.just(0)),
    st.tuples(st.just("rule"), st.sampled_from(sorted(FIGURES)), st.none() | rules),
), min_size=1, max_size=10)

_example = itertools.count()


class Pusher:
    """The workers' path for one step, in order and without timing: the outbox's new events
    mark their targets (workers.propagation.targets), each lane pushes until nothing is due."""

    def __init__(self, redis: Redis, engine: StockEngine, cfg: Settings) -> None:
        self.redis, self.settings, self.last = redis, cfg, "0-0"
        self.propagator = Propagator(redis, engine, cfg, PropagationConfig(lease_ms=3000))

    async def run(self) -> None:
        entries = await self.redis.xrange(tenant_keys(T).outbox, min=f"({self.last}")
        if entries:
            self.last = entries[-1][0].decode()
            events = [event_decoder.decode(f[b"e"]) for _, f in entries]
            await mark_events(self.redis, self.settings, T, events)
        for name in FIGURES:
            for _ in range(20):
                if not await self.redis.zcard(worker_keys(T).due(name)):
                    break
                await self.propagator.push_due(T, name)
            assert not await self.redis.zcard(worker_keys(T).due(name)), name


@pytest.fixture
def push_env(redis: Redis, tmp_path: Path, sim_factory: Callable[[str], SimulatorServer]
             ) -> tuple[Settings, dict[str, SimulatorServer]]:
    sims = {"std": sim_factory("standard"), "mkt": sim_factory("standard"),
            "woo": sim_factory("woocommerce"), "bc": sim_factory("bigcommerce")}
    return Settings(data_dir=str(tmp_path), channels=_channels(sims)), sims


@settings(max_examples=100, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(steps=ops, start=st.tuples(st.integers(0, 12), st.integers(0, 12)))
async def test_every_pushed_value_is_within_the_rule_and_the_pool(
        redis: Redis, push_env: tuple[Settings, dict[str, SimulatorServer]],
        steps: list[tuple[str, str, object]], start: tuple[int, int]) -> None:
    cfg, sims = push_env
    n = next(_example)
    sku = f"P{n}"
    await redis.flushall()  # an example that failed must not leave targets to the next one
    engine = StockEngine(redis, cfg)
    await engine.load_scripts()
    pusher = Pusher(redis, engine, cfg)
    # The model: on hand and held units per location, each channel's own rule for the SKU.
    on_hand = dict(zip(LOCS, start, strict=True))
    held = dict.fromkeys(LOCS, 0)
    holds: list[tuple[str, str, int]] = []
    own: dict[str, AllocationRule | None] = {}
    try:
        for loc in LOCS:
            await engine.adjust(T, sku, reason="seed", idempotency_key=f"{sku}-{loc}",
                                location=loc, set_on_hand=on_hand[loc])
        await pusher.run()
        for i, (kind, loc, arg) in enumerate(steps):
            seen = {name: len(sim.state.received) for name, sim in sims.items()}
            if kind == "receive":
                await engine.adjust(T, sku, reason="r", idempotency_key=f"{sku}-r{i}",
                                    location=loc, delta=arg)
                on_hand[loc] += arg
            elif kind in ("hold", "order"):
                fits = on_hand[loc] - held[loc] >= arg
                if kind == "hold":
                    try:
                        await engine.hold(T, [Line(sku, arg, loc)], hold_id=f"{sku}-h{i}")
                    except errors.InsufficientStock:
                        assert not fits
                    else:
                        assert fits
                        held[loc] += arg
                        holds.append((f"{sku}-h{i}", loc, arg))
                else:  # a channel's order, beyond what it shows or not: the one pool
                    reply, _ = await engine.order(T, f"{sku}-o{i}", [Line(sku, arg, loc)],
                                                  channel="woo")
                    assert (reply.lines[0].status == "committed") == fits
                    if fits:
                        on_hand[loc] -= arg  # committed: out of the pool, as if shipped
            elif kind == "release" and holds:
                hold_id, hloc, qty = holds.pop(0)
                await engine.release(T, hold_id)
                held[hloc] -= qty
            elif kind == "rule":
                await engine.set_allocation(T, sku, loc, arg)  # type: ignore[arg-type]
                own[loc] = arg  # type: ignore[assignment]
            await pusher.run()
            avail = {loc: on_hand[loc] - held[loc] for loc in LOCS}
            for name, figures in FIGURES.items():
                rule = own.get(name) or (DEFAULT_STD if name == "std" else None)
                sells = LOCS if name in ("std", "mkt") else ("main",)
                for figure, key in figures:
                    pool = (avail[figure] if name == "mkt"
                            else sum(max(avail[x], 0) for x in sells))
                    expected = model(rule, pool)
                    state = sims[name].state
                    pushed = [v for _, item, where, v in state.received[seen[name]:]
                              if item == sku and where in (key, "", "1")]
                    assert all(within(rule, pool, v) for v in pushed), (name, pushed, pool)
                    count = state.count(sku, key) or 0  # never pushed: the channel shows none
                    assert count == expected, (name, figure, count, expected, rule, pool)
        view = await engine.stock(T, sku)
        assert {name: view.channels[name] for name in FIGURES} == {
            name: sum(sims[name].state.count(sku, key) or 0 for _, key in FIGURES[name])
            for name in FIGURES}
    finally:
        await pusher.propagator.close()
        engine.scripts.close()


async def test_reconciliation_judges_a_channel_against_its_rules_value(
        redis: Redis, tmp_path: Path, sim_factory: Callable[[str], SimulatorServer]) -> None:
    """A channel showing the whole pool under a 50% rule has drifted (alerted, re-pushed to
    the rule's value); one showing the rule's value has not."""
    sim = sim_factory("standard")
    cfg = Settings(data_dir=str(tmp_path), channels={"mkt": Channel(
        kind="standard", secret="s", api_url=sim.url, rate_limit_per_s=0,
        allocation=AllocationRule(percent=50))})
    engine = StockEngine(redis, cfg)
    await engine.load_scripts()
    try:
        for sku in ("A", "B"):
            await engine.adjust(T, sku, reason="r", idempotency_key=sku, delta=10)
        sim.state.counts["A", "main"] = 10  # the pool, not the rule's value
        sim.state.counts["B", "main"] = 5  # the rule's value
        async with httpx.AsyncClient() as client:
            adapters = {"mkt": adapter_for("mkt", cfg.channels["mkt"], client)}
            drifts = await reconcile(redis, engine, cfg, adapters)
        assert [(d.sku, d.channel_count, d.canonical) for d in drifts] == [("A", 10, 5)]
        pusher = Pusher(redis, engine, cfg)
        try:
            await pusher.propagator.push_due(T, "mkt")
        finally:
            await pusher.propagator.close()
        assert sim.state.count("A", "main") == 5
    finally:
        engine.scripts.close()


async def test_an_admin_edit_under_a_rule_is_measured_from_the_rules_value(
        redis: Redis, tmp_path: Path) -> None:
    """The marketplace is shown 5 of 10 (50%); a person sets it to 8 in its admin: 3 more
    units, not -2 (8 against the pool), and the rule then shows half of the new 13."""
    cfg = Settings(data_dir=str(tmp_path), channels={"mkt": Channel(
        kind="standard", secret="s", allocation=AllocationRule(percent=50))})
    engine = StockEngine(redis, cfg)
    await engine.load_scripts()
    audit = audit_store(cfg)
    await audit.open()
    try:
        await engine.adjust(T, "A", reason="r", idempotency_key="r", delta=10)
        await record_push(redis, T, "mkt", "A|main", 5)
        outcome = await judge_channel_count(redis, engine, audit, cfg, T, "mkt", "A", "main",
                                            8, "f1", now_ms() + 1)
        assert outcome == "applied"
        view = await engine.stock(T, "A")
        assert (view.locations["main"].on_hand, view.channels["mkt"]) == (13, 6)
    finally:
        await audit.close()
        engine.scripts.close()
