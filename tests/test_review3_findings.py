"""Third independent review (issues 10 and 15): compare-and-set, set-aside units and the
propagation lanes, attacked as a bad night and a merchant's month of orders would.

Every test here fails on the code under review: each is a finding, reproduced against a real
server (the session's embedded Redis), the real Shopify simulator and the real Propagator /
Lua scripts. Where the network has to misbehave at one exact moment (an answer lost after
Shopify applied the write, a slow answer, an order landing while an answer is on its way), an
httpx transport wraps the real one and does it there; nothing is mocked beyond that.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis
from workers_helpers import wait_for

from stockgate.alerts import list_alerts
from stockgate.deliveries import failed_deliveries, mark_dirty, member_of
from stockgate.keys import worker_keys
from stockgate.models import Line
from stockgate.settings import Channel, Settings
from stockgate.stock import StockEngine
from workers.propagation import PropagationConfig, Propagator, pending_drops
from workers.simulators import SimulatorServer

SKU = "TEE"
MEMBER = member_of("shop", "main", SKU)
CONFIG = PropagationConfig(max_attempts=6, backoff_base_s=0.01, backoff_max_s=0.02,
                           lease_ms=3000, idle_sleep_s=0.01)


# -- harness ---------------------------------------------------------------------------------

class Hook(httpx.AsyncBaseTransport):
    """The real transport, with two knobs for inventorySetQuantities calls: `lose` drops the
    next answer after Shopify applied the call (a timeout / reset on the way back), `after`
    runs a coroutine after Shopify answered and before the worker reads the answer, `hold`
    keeps the answer back until the event is set, and `fail_reads` answers that many count
    reads (nodes) with a 503."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.lose = 0
        self.after: Callable[[], Awaitable[None]] | None = None
        self.hold: asyncio.Event | None = None
        self.applied = asyncio.Event()
        self.fail_reads = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.fail_reads and b"StockgateAvailable" in request.content:
            self.fail_reads -= 1
            return httpx.Response(503, text="Service Unavailable", request=request)
        response = await self.inner.handle_async_request(request)
        if b"inventorySetQuantities" not in request.content:
            return response
        await response.aread()
        self.applied.set()
        if self.after is not None:
            after, self.after = self.after, None
            await after()
        if self.hold is not None:
            hold, self.hold = self.hold, None
            await hold.wait()
        if self.lose:
            self.lose -= 1
            raise httpx.ReadTimeout("answer lost on the way back", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture
def sim() -> AsyncIterator[SimulatorServer]:
    server = SimulatorServer("shopify").start()
    yield server  # type: ignore[misc]
    server.stop()


def shop_settings(tmp_path: Path, sim: SimulatorServer, **channel: object) -> Settings:
    return Settings(data_dir=str(tmp_path), channels={"shop": Channel(
        kind="shopify", secret="s", api_url=sim.url, access_token="t", rate_limit_per_s=0,
        **channel)})  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def world(redis: Redis, tmp_path: Path, sim: SimulatorServer, stock: dict[str, int],
                config: PropagationConfig = CONFIG, **channel: object
                ) -> AsyncIterator[tuple[StockEngine, Propagator, Hook]]:
    settings = shop_settings(tmp_path, sim, **channel)
    engine = StockEngine(redis, settings)
    await engine.load_scripts()
    for location, units in stock.items():
        await engine.adjust("default", SKU, location=location, reason="receipt",
                            idempotency_key=f"r-{location}", delta=units)
    propagator = propagator_for(redis, engine, settings, config)
    hook = hook_of(propagator)
    try:
        yield engine, propagator, hook
    finally:
        await propagator.close()


def propagator_for(redis: Redis, engine: StockEngine, settings: Settings,
                   config: PropagationConfig = CONFIG) -> Propagator:
    return Propagator(redis, engine, settings, config)


def hook_of(propagator: Propagator) -> Hook:
    hook = Hook()
    propagator.adapters["shop"].client = httpx.AsyncClient(transport=hook, timeout=5)
    return hook


async def push(redis: Redis, propagator: Propagator, member: str = MEMBER,
               mark: bool = True) -> None:
    """What the outbox consumer and a lane do after a change, run until the target is
    pushed (retries and re-pushes included)."""
    if mark:
        await mark_dirty(redis, "default", [member])
    due = worker_keys("default").due("shop")
    for _ in range(40):
        await propagator.push_due("default", "shop")
        if await redis.zscore(due, member) is None:
            return
        await asyncio.sleep(0.03)
    raise AssertionError("the push did not settle")


async def cell(engine: StockEngine, location: str = "main") -> tuple[int, int, int]:
    c = (await engine.stock("default", SKU)).locations[location]
    return c.available, c.reserved, c.committed


async def _async(value: bool) -> bool:
    return value


def shown(sim: SimulatorServer, location: str = "main") -> int | None:
    return sim.state.count(SKU, location)


# -- findings --------------------------------------------------------------------------------

async def test_a_lost_push_answer_is_misread_as_the_channels_own_sale(
        redis: Redis, tmp_path: Path, sim: SimulatorServer) -> None:
    """A push whose answer is lost (Shopify applied it; the reply timed out) is retried. In a
    busy shop the retry carries a newer value, so it is a new idempotency key, and its
    compare (the count before our first attempt) comes back stale: Shopify now holds *our
    own* value. propagation._stale hands that count to lua/moved.lua as if Shopify had sold
    on its own, and moved.lua sets `known - actual` units aside for an order that will never
    come. Here 3 units that exist are taken off sale on every channel, for good (only a
    judged count report or a Shopify order can give them back; neither comes), and Shopify
    shows 3 fewer than exist. Every lost answer during a sale does it again.

    At fault: workers/propagation.py Propagator._stale (and lua/moved.lua) cannot tell our
    own in-doubt write from the channel's move; shopify.py's comment says such a retry
    "counts as done", propagation does not do that."""
    async with world(redis, tmp_path, sim, {"main": 10}) as (engine, propagator, hook):
        await push(redis, propagator)
        assert shown(sim) == 10
        await engine.order("default", "web:1", [Line(SKU, 3)])  # canonical 7
        await mark_dirty(redis, "default", [MEMBER])
        hook.lose = 1
        await propagator.push_due("default", "shop")  # Shopify holds 7; the answer is lost
        assert shown(sim) == 7
        await engine.order("default", "web:2", [Line(SKU, 1)])  # canonical 6
        await push(redis, propagator)
        available, reserved, committed = await cell(engine)
        assert committed == 4
        # Nothing was sold on Shopify: nothing may be set aside, and Shopify shows all 6.
        assert (reserved, available, shown(sim)) == (0, 6, 6), (
            f"reserved {reserved}, available {available}, Shopify shows {shown(sim)}; "
            f"pending {await pending_drops(redis, 'default', 'shop')}")


async def test_a_lost_push_answer_gives_back_units_kept_for_a_shopify_sale(
        redis: Redis, tmp_path: Path, sim: SimulatorServer) -> None:
    """The same misreading in the other direction sells a unit twice. Shopify sold 2 on its
    own (order webhook late): both are set aside. A restock raises the count; that push is
    applied but its answer lost; its retry (a newer value) is stale against our own write,
    moved.lua reads the rise as "a restock on Shopify's side" and gives a set-aside unit
    back. Shopify is then told one unit more than exists, and the web sells it too: when
    Shopify's order lands it is refused as an oversell. The set-aside was the whole point.

    At fault: workers/propagation.py Propagator._stale / lua/moved.lua (`target < pending`
    branch releases units on a rise that was our own in-doubt push)."""
    async with world(redis, tmp_path, sim, {"main": 2}) as (engine, propagator, hook):
        await push(redis, propagator)
        assert sim.state.sell(SKU, "main", 2)  # Shopify's order webhook is late
        await push(redis, propagator)
        assert await cell(engine) == (0, 2, 0)
        await engine.adjust("default", SKU, reason="receipt", idempotency_key="r2", delta=1)
        await mark_dirty(redis, "default", [MEMBER])
        hook.lose = 1
        await propagator.push_due("default", "shop")  # Shopify holds 1; the answer is lost
        await engine.adjust("default", SKU, reason="receipt", idempotency_key="r3", delta=1)
        await push(redis, propagator)
        # 4 received, 2 sold on Shopify: 2 exist. Shopify must not show more, and the 2
        # units kept for Shopify's sale must still be kept.
        exist = 2
        available, reserved, _ = await cell(engine)
        await engine.order("default", "web:1", [Line(SKU, available)])
        late, _ = await engine.order("default", "shop:1001", [Line(SKU, 2)], channel="shop")
        assert shown(sim) <= exist and reserved == 2, (
            f"Shopify shows {shown(sim)} with {exist} in existence; {reserved} of 2 kept")
        assert "oversell_rejected" not in [ln.status for ln in late.lines], (
            f"web sold {available}, then Shopify's own sale was refused: {late.lines}")


async def test_a_lapsed_claims_late_answer_rewrites_the_known_count(
        redis: Redis, tmp_path: Path, sim: SimulatorServer) -> None:
    """Worker A's push outlives its lease; worker B claims the target and pushes a newer
    value. A's late "ok" then runs `_CAS_SET` although its claim lapsed (only `_FINISH` checks
    the token): the known count goes back to A's older value while Shopify holds B's. The next
    Shopify sale is then measured against the wrong count, is not set aside, and the push
    after it overwrites it: Shopify shows units that do not exist (a clobber, the very thing
    compare-and-set is for).

    At fault: workers/propagation.py Propagator._results: `self._cas_set(...)` runs before
    and independently of the token check in `_finish_all(..., "done")`; it also wipes the
    `o|` own-order count of a target another worker owns."""
    async with world(redis, tmp_path, sim, {"main": 5}) as (engine, b, _hook):
        await push(redis, b)
        a = propagator_for(redis, engine, engine.settings,
                           PropagationConfig(lease_ms=200, backoff_base_s=0.01))
        a_hook = hook_of(a)
        try:
            await engine.adjust("default", SKU, reason="receipt", idempotency_key="r2",
                                delta=5)  # canonical 10
            await mark_dirty(redis, "default", [MEMBER])
            a_hook.hold = asyncio.Event()
            release = a_hook.hold
            slow = asyncio.create_task(a.push_due("default", "shop"))
            await asyncio.wait_for(a_hook.applied.wait(), 5)  # Shopify holds 10
            await asyncio.sleep(0.3)  # A's lease lapses while its answer is on the way
            await engine.adjust("default", SKU, reason="receipt", idempotency_key="r3",
                                delta=3)  # canonical 13
            await push(redis, b)
            assert shown(sim) == 13
            release.set()
            await asyncio.wait_for(slow, 5)
        finally:
            await a.close()
        known = await redis.hget(worker_keys("default").cas("shop"), f"k|{SKU}|main")
        assert sim.state.sell(SKU, "main", 2)  # Shopify sells 2; order webhook late
        await engine.order("default", "web:1", [Line(SKU, 1)])
        await push(redis, b)
        exist = 13 - 1 - 2
        assert shown(sim) <= exist, (
            f"Shopify shows {shown(sim)} with {exist} in existence (known count was "
            f"rewritten to {known!r} by the lapsed claim; reserved "
            f"{(await cell(engine))[1]})")


async def test_an_own_order_landing_while_an_accepted_push_answers_is_counted_twice(
        redis: Redis, tmp_path: Path, sim: SimulatorServer) -> None:
    """Shopify accepts a push, then sells a unit and its order webhook lands before the
    worker has read the push's answer (webhooks are fast; answers cross the internet).
    order.lua counts the sale in `o|` (an own sale since the known count); then `_CAS_SET`
    records the pushed value and deletes `o|`, forgetting that sale. The next compare sees
    Shopify one below the known count, and moved.lua sets a unit aside for a sale whose
    order already committed it: one unit off sale for good, per occurrence.

    At fault: workers/propagation.py `_CAS_SET` (`HDEL o|ref` wipes own orders applied after
    the push landed; it should subtract only what was counted when the value was read)."""
    async with world(redis, tmp_path, sim, {"main": 10}) as (engine, propagator, hook):
        await push(redis, propagator)
        await engine.order("default", "web:1", [Line(SKU, 2)])  # canonical 8

        async def shopify_sells_and_its_order_lands() -> None:
            assert sim.state.sell(SKU, "main", 1)
            await engine.order("default", "shop:1", [Line(SKU, 1)], channel="shop")
            await mark_dirty(redis, "default", [MEMBER])

        hook.after = shopify_sells_and_its_order_lands
        await push(redis, propagator)
        await push(redis, propagator)
        available, reserved, committed = await cell(engine)
        assert committed == 3
        assert (reserved, available, shown(sim)) == (0, 7, 7), (
            f"reserved {reserved}, available {available}, Shopify shows {shown(sim)}")


async def test_a_cancelled_shopify_order_releases_another_sales_set_aside_unit(
        redis: Redis, tmp_path: Path, sim: SimulatorServer) -> None:
    """Shopify sells A (2 units) and B (1 unit) on its own; the compare sets all 3 aside. A's
    order lands and takes its 2. A is cancelled with restock: Shopify puts 2 back on its
    count, cancel.lua puts them back on sale here. The next compare sees Shopify 2 above the
    known count and moved.lua reads it as "a restock on its side", giving back B's set-aside
    unit: Shopify is then told 5 while 4 exist, and the web can sell B's unit a second time.
    cancel.lua and restock.lua never tell the compare-and-set bookkeeping about units the
    channel itself put back (order.lua's count_own does so only for sales).

    At fault: lua/moved.lua `target = pending + (known - own) - actual` with `own` counting
    only orders, not the channel's cancels/restocks (lua/cancel.lua, lua/restock.lua)."""
    async with world(redis, tmp_path, sim, {"main": 5}) as (engine, propagator, _hook):
        await push(redis, propagator)
        assert sim.state.sell(SKU, "main", 2)  # order A
        assert sim.state.sell(SKU, "main", 1)  # order B, webhooks late
        await push(redis, propagator)
        assert await cell(engine) == (2, 3, 0)
        await engine.order("default", "shop:A", [Line(SKU, 2)], channel="shop")
        sim.state.counts[SKU, "main"] += 2  # A cancelled in Shopify, restocked there
        await engine.cancel("default", "shop:A", channel="shop")
        await push(redis, propagator)
        exist = 5 - 1  # B's unit is sold
        _, reserved, _ = await cell(engine)
        assert shown(sim) <= exist and reserved == 1, (
            f"Shopify shows {shown(sim)} with {exist} in existence; B's unit kept: "
            f"{reserved == 1}")


async def test_a_negative_shopify_count_can_never_be_corrected(
        redis: Redis, tmp_path: Path, sim: SimulatorServer) -> None:
    """Shopify counts go below zero (a product set to "continue selling when out of stock",
    or an oversell there). The stale path hands the negative count to lua/moved.lua, which
    refuses it (`is_count(actual, 0)`), so engine.channel_moved raises InvalidRequest out of
    Propagator._results: nothing is counted (the lane logs "propagation ... failed" and the
    lease has to lapse), and the batch's `failed` items after it are never counted either.
    Once the lease lapses the same batch is sent again, now replayed as
    IDEMPOTENCY_PREVIOUS_ATTEMPT_FAILED (see the next test), and the target is parked with
    that misleading error. Shopify keeps -2 although Stockgate has 6 to sell; every retry
    within 5 minutes does the same, and after that the InvalidRequest loop starts again.

    At fault: lua/moved.lua line validation (`is_count(actual, 0)`) and
    workers/propagation.py Propagator._stale (a refused moved call escapes `_results`)."""
    config = PropagationConfig(max_attempts=3, backoff_base_s=0.01, backoff_max_s=0.02,
                               lease_ms=300, idle_sleep_s=0.01)
    async with world(redis, tmp_path, sim, {"main": 5}, config) as (engine, propagator, _):
        await push(redis, propagator)
        sim.state.counts[SKU, "main"] = -2
        await engine.adjust("default", SKU, reason="receipt", idempotency_key="r2", delta=1)
        await mark_dirty(redis, "default", [MEMBER])
        stop = asyncio.Event()
        lane = asyncio.create_task(propagator.run(stop))
        try:
            with contextlib.suppress(AssertionError):
                await wait_for(lambda: _async(shown(sim) != -2), 3.0, 0.05)
        finally:
            stop.set()
            await asyncio.wait_for(lane, 5)
        parked = [d.last_error for d in await failed_deliveries(redis, "default")]
        assert shown(sim) != -2, (
            f"after 3 s (10 leases) Shopify still shows -2 while 6 are available; parked "
            f"with {parked}")


async def test_a_stale_batch_whose_read_failed_twice_is_poisoned_for_the_window(
        redis: Redis, tmp_path: Path, sim: SimulatorServer) -> None:
    """A stale compare makes the adapter read Shopify's counts. If that read fails twice
    (503, THROTTLED while the cost bucket is drained in a sale: channel-wide errors, so the
    whole batch is retried as it was), the batch's contents are unchanged, so its
    idempotency key is too: both the key and its salted twin (`_mutate`, salt 1) now belong
    to failed attempts, and every further try is answered IDEMPOTENCY_PREVIOUS_ATTEMPT_FAILED
    without being applied or compared: counted as a failure of every item in the batch (up to
    250 targets), parked after max_attempts, for the rest of the 5-minute window, while the
    channel is healthy again. Here Shopify keeps showing 9 while 7 exist (its own sale not
    set aside, the web's not pushed): two units that can be sold twice.

    At fault: workers/adapters/shopify.py ShopifyAdapter._mutate / _idempotency_key: a
    key is reused for a retry of an attempt known to have *failed* (stale), and only one
    fresh salt is ever tried."""
    async with world(redis, tmp_path, sim, {"main": 10}) as (engine, propagator, hook):
        await push(redis, propagator)
        assert sim.state.sell(SKU, "main", 1)  # Shopify's own sale; its webhook is late
        await engine.order("default", "web:1", [Line(SKU, 2)])
        hook.fail_reads = 2  # Shopify busy for two reads, healthy afterwards
        await mark_dirty(redis, "default", [MEMBER])
        for _ in range(30):
            await propagator.push_due("default", "shop")
            await asyncio.sleep(0.03)
        parked = [d.last_error for d in await failed_deliveries(redis, "default")]
        exist = 10 - 1 - 2
        assert shown(sim) <= exist and not parked, (
            f"Shopify shows {shown(sim)} with {exist} in existence; parked: {parked}")


async def test_a_target_left_by_the_old_queue_drops_a_new_change_after_migration(
        redis: Redis, tmp_path: Path, sim: SimulatorServer) -> None:
    """Upgrading while pushes are pending: _MIGRATE moves the old due zset's members to the
    per-channel zsets but keeps their old per-target versions ("1", "2": the old code
    counted per target), while the new tenant sequence starts at 0. A migrated target
    claimed with version "1" whose SKU changes during the push gets version INCR(seq) = 1
    again; the push's finish sees "1" == "1" and forgets the target: the change is never
    pushed and Shopify shows the old count until reconciliation. This is issue 15 #1
    (versions reused), back for the first deploy.

    At fault: workers/propagation.py `_MIGRATE` (leaves `deliv:ver` values from the old
    scheme next to a `deliv:seq` that restarts at 0)."""
    async with world(redis, tmp_path, sim, {"main": 10}) as (engine, propagator, _):
        keys = worker_keys("default")
        # What the old workers left: the target due, its per-target version 1.
        await redis.zadd(keys.legacy_due, {MEMBER: 0})
        await redis.hset(keys.versions, MEMBER, "1")
        stop = asyncio.Event()
        stop.set()
        await propagator.run(stop)  # the migration on start
        adapter = propagator.adapters["shop"]
        original = adapter.push_batch

        async def sale_during_push(items):  # type: ignore[no-untyped-def]
            adapter.push_batch = original  # type: ignore[method-assign]
            await engine.order("default", "web:1", [Line(SKU, 4)])
            await mark_dirty(redis, "default", [MEMBER])  # what the outbox consumer does
            return await original(items)

        adapter.push_batch = sale_during_push  # type: ignore[method-assign]
        for _ in range(10):
            await propagator.push_due("default", "shop")
            await asyncio.sleep(0.02)
        assert shown(sim) == 6, f"Shopify shows {shown(sim)}; 6 are available"


async def test_a_single_figure_channel_over_two_locations_is_clobbered(
        redis: Redis, tmp_path: Path, sim: SimulatorServer) -> None:
    """A Shopify channel that sells two locations as one figure (locations = main, east; no
    location_map) is pushed the sum of both, under its first location. When Shopify sells on
    its own, moved.lua sets the drop aside from the *first* location's available only; once
    that location is empty nothing is set aside, the known count moves to Shopify's, and the
    push that follows writes the old sum over Shopify's sale: Shopify shows 2 units that do
    not exist, exactly the clobber compare-and-set exists to prevent.

    At fault: lua/moved.lua sets aside from the one cell of the target's location, while
    workers/propagation.channel_value pushes the sum over every location of the channel."""
    async with world(redis, tmp_path, sim, {"main": 1, "east": 5},
                     locations=("main", "east")) as (engine, propagator, _):
        await push(redis, propagator)
        assert shown(sim) == 6
        await engine.order("default", "web:1", [Line(SKU, 1, "main")])  # main is empty
        assert sim.state.sell(SKU, "main", 2)  # Shopify sells 2 (order webhook late)
        await push(redis, propagator)
        exist = 6 - 1 - 2
        assert shown(sim) <= exist, f"Shopify shows {shown(sim)} with {exist} in existence"


async def test_an_order_claiming_a_hold_leaves_a_phantom_set_aside(
        redis: Redis, tmp_path: Path, sim: SimulatorServer) -> None:
    """A Shopify storefront holds 2 units in Stockgate (cart), Shopify is told the count
    without them, the shopper checks out in Shopify (Shopify's count drops by 2 more) and the
    order names the hold. order.lua moves the hold's units to committed, but counts them in
    `o|` only for units that came from available (count_own is not called for held units).
    The next compare sees Shopify 2 below the known count, and moved.lua sets 2 *more* units
    aside for a sale that is already committed. Every checkout through a hold takes its units
    off sale twice, permanently: a month of orders empties the shelf.

    At fault: lua/order.lua, the `s.state == 'reserved'` branch (held units) never calls
    count_own, so moved.lua's `known - own - actual` counts the sale as unexplained."""
    async with world(redis, tmp_path, sim, {"main": 10}) as (engine, propagator, _):
        await push(redis, propagator)
        await engine.hold("default", [Line(SKU, 2)], hold_id="cart-1", channel="shop")
        await push(redis, propagator)
        assert shown(sim) == 8
        assert sim.state.sell(SKU, "main", 2)  # the shopper checks out in Shopify
        reply, _ = await engine.order("default", "shop:5001", [Line(SKU, 2)],
                                      hold_id="cart-1", channel="shop")
        assert [ln.status for ln in reply.lines] == ["held"]
        await push(redis, propagator)
        available, reserved, committed = await cell(engine)
        assert committed == 2
        assert (reserved, available) == (0, 8), (
            f"reserved {reserved} (phantom set-aside), available {available}, Shopify shows "
            f"{shown(sim)}")


async def test_units_set_aside_for_a_removed_channel_stay_off_sale_silently(
        redis: Redis, tmp_path: Path, sim: SimulatorServer) -> None:
    """Units set aside for Shopify's unexplained drop stay in `reserved` until Shopify's
    order or a judged count report. When the merchant removes (or disables) the Shopify
    channel, neither can come: the units stay reserved for ever, and nothing says so:
    reconcile's alert_unexplained only walks channels still configured as compare-and-set,
    so even the `channel_moved_unexplained` alert is never raised again.

    At fault: workers/reconcile.py reconcile(): `for name in sorted(cas_channels(settings))`
    (no sweep of `deliv:cas:*` hashes of channels no longer configured)."""
    async with world(redis, tmp_path, sim, {"main": 4}) as (engine, propagator, _):
        await push(redis, propagator)
        assert sim.state.sell(SKU, "main", 1)
        await push(redis, propagator)
        assert (await cell(engine))[1] == 1
    # The merchant drops Shopify; reconciliation runs long after pending_alert_s.
    from workers.reconcile import ReconcileConfig, reconcile

    settings = Settings(data_dir=str(tmp_path))
    engine = StockEngine(redis, settings)
    await engine.load_scripts()
    await reconcile(redis, engine, settings, {},
                    ReconcileConfig(pending_alert_s=0, budget_s=1))
    reserved = (await cell(engine))[1]
    alerts = [a.type for a in await list_alerts(redis, "default")]
    assert reserved == 0 or "channel_moved_unexplained" in alerts, (
        f"{reserved} unit(s) reserved for a channel that no longer exists; alerts {alerts}")
async def test_a_judged_restock_in_shopify_gives_back_units_of_pending_sales(
        redis: Redis, tmp_path: Path, sim: SimulatorServer) -> None:
    """Shopify sold 2 on its own; the compare set them aside until its order lands. A person
    then receives 5 units in Shopify's admin; its count report is judged a person's edit
    (+5, correctly) and applied. judge_channel_count then clears *every* unit set aside for
    that target, on the theory that the report measured the drop, but this report measured
    a rise that has nothing to do with the pending sale. The 2 units kept for Shopify's
    orders go back on sale: Shopify is told 15 while 13 exist, and the web can sell them too.

    At fault: workers/channel_counts.py judge_channel_count, the
    `engine.channel_moved(..., [(sku, location, None)])` clear after any non-zero delta
    (it should give back at most the part of a *negative* edit that the set-aside covers)."""
    from stockgate.audit import audit_store
    from workers.channel_counts import judge_channel_count

    async with world(redis, tmp_path, sim, {"main": 10}) as (engine, propagator, _):
        await push(redis, propagator)
        assert sim.state.sell(SKU, "main", 2)  # Shopify's order webhook is late
        await push(redis, propagator)
        assert await cell(engine) == (8, 2, 0)
        sim.state.counts[SKU, "main"] += 5  # a person receives 5 in Shopify's admin
        seconds, micros = await redis.time()
        reported_at = seconds * 1000 + micros // 1000
        audit = audit_store(engine.settings)
        await audit.open()
        try:
            outcome = await judge_channel_count(
                redis, engine, audit, engine.settings, "default", "shop", SKU, "main",
                shown(sim), "edit-1", reported_at, in_flight_ms=0)
        finally:
            await audit.close()
        assert outcome == "applied"
        await push(redis, propagator)
        exist = 10 + 5 - 2
        _, reserved, _ = await cell(engine)
        assert shown(sim) <= exist and reserved == 2, (
            f"Shopify shows {shown(sim)} with {exist} in existence; {reserved} of the 2 "
            "units of its pending sale still kept")


async def test_a_shopify_sale_at_its_second_location_is_taken_off_sale_twice(
        redis: Redis, tmp_path: Path, sim: SimulatorServer) -> None:
    """A Shopify channel with two mapped locations (main, east). Shopify sells a unit from
    east; the compare of the east target is stale and sets a unit aside at east. The order
    webhook of an online order carries no location (location_id is set for POS only), so the
    gateway commits it at the channel's first location, main: order.lua's take_set_aside
    looks for set-aside units at main, finds none, and commits a second unit. East's unit
    stays reserved for ever (no order of this channel will ever land at east): one unit
    off sale per sale from the second location, a month of orders empties the shelf.

    At fault: lua/order.lua take_set_aside matches set-aside units by (sku, the order line's
    location) only; the channel's set-aside at its other locations is never consumed."""
    async with world(redis, tmp_path, sim, {"main": 5, "east": 5},
                     locations=("main", "east"),
                     location_map={"1": "main", "2": "east"}) as (engine, propagator, _):
        east = member_of("shop", "east", SKU)
        await push(redis, propagator)
        await push(redis, propagator, east)
        assert (shown(sim, "1"), shown(sim, "2")) == (5, 5)
        assert sim.state.sell(SKU, "2", 1)  # Shopify ships the online order from east
        await push(redis, propagator, east)
        # The order webhook lands (online order: no location_id -> the channel's first).
        location = engine.settings.channels["shop"].location_for(None)
        reply, _ = await engine.order("default", "shop:9001", [Line(SKU, 1, location)],
                                      channel="shop")
        assert [ln.status for ln in reply.lines] == ["committed"]
        main, east_cell = await cell(engine, "main"), await cell(engine, "east")
        removed = (5 - main[0]) + (5 - east_cell[0])
        assert removed == 1, (
            f"one unit sold, {removed} taken off sale (main {main}, east {east_cell}; "
            f"pending {await pending_drops(redis, 'default', 'shop')})")
