"""Bundles (kits) in the engine: a bundle line acts on its components inside the same
script, summed with every other line that needs the same component."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from stockgate import errors
from stockgate.bundles import Bundles
from stockgate.keys import tenant_keys
from stockgate.models import BundleComponent, Line, event_decoder
from stockgate.stock import StockEngine

T = "default"


async def stock(engine: StockEngine, **units: int) -> None:
    for sku, n in units.items():
        await engine.adjust(T, sku, reason="seed", idempotency_key=f"seed-{sku}", delta=n)


async def define(engine: StockEngine, sku: str, **parts: int) -> None:
    await Bundles(engine).put(T, sku, [BundleComponent(s, q) for s, q in parts.items()])


async def cell(engine: StockEngine, sku: str) -> tuple[int, int, int, int]:
    c = (await engine.stock(T, sku)).locations["main"]
    return c.on_hand, c.reserved, c.committed, c.available


async def events(redis: Redis) -> list[str]:
    entries = await redis.xrange(tenant_keys(T).outbox)
    return [event_decoder.decode(f[b"e"]).type for _, f in entries]


async def test_medusa_16502_two_lines_sharing_a_component_are_judged_together(
        engine: StockEngine, redis: Redis) -> None:
    """Each line fits alone (3 of 5 units), together they need 6: refused, nothing written."""
    await stock(engine, A=5, B=10)
    await define(engine, "KIT", A=3, B=1)
    await define(engine, "KIT2", A=3)
    before = await events(redis)
    for cart in ([Line("KIT", 1), Line("A", 3)], [Line("KIT", 1), Line("KIT2", 1)]):
        with pytest.raises(errors.InsufficientStock) as info:
            await engine.hold(T, cart, hold_id="cart")
        assert info.value.fields["sku"] == "A"
    assert await events(redis) == before
    assert await cell(engine, "A") == (5, 0, 0, 5)
    assert await cell(engine, "B") == (10, 0, 0, 10)
    assert not await redis.exists(tenant_keys(T).hold("cart"))
    # One of them alone fits, and takes its components.
    await engine.hold(T, [Line("KIT", 1), Line("A", 2)], hold_id="ok")
    assert await cell(engine, "A") == (5, 5, 0, 0)
    assert await cell(engine, "B") == (10, 1, 0, 9)


async def test_derived_view_and_lifecycle(engine: StockEngine, redis: Redis) -> None:
    await stock(engine, A=10, B=7)
    await define(engine, "KIT", A=2, B=3)
    bundles = Bundles(engine)
    view = await bundles.view(T, "KIT")
    assert (view.available, view.locations) == (2, {"main": 2})
    held, _ = await engine.hold(T, [Line("KIT", 1), Line("A", 1)], hold_id="h1")
    record = await engine.hold_lines(T, "h1")
    assert record is not None
    assert [(ln.sku, ln.location, ln.qty) for ln in record.lines] == [
        ("A", "main", 2), ("B", "main", 3), ("A", "main", 1)]
    assert held.lines[0].sku == "KIT"
    assert (await bundles.view(T, "KIT")).available == 1
    await engine.commit(T, "h1", "o1")
    assert await cell(engine, "A") == (10, 0, 3, 7)
    # A fulfilment naming the bundle ships its components.
    await engine.fulfil(T, "o1", "f1", [Line("KIT", 1)])
    assert await cell(engine, "A") == (8, 0, 1, 7)
    assert await cell(engine, "B") == (4, 0, 0, 4)
    # A refund naming the bundle restocks its components (shipped, so back to on_hand).
    reply, _ = await engine.restock(T, "r1", [Line("KIT", 1)], order_id="o1",
                                    take_from="shipped")
    assert [(ln.sku, ln.restocked) for ln in reply.lines] == [("A", 2), ("B", 3)]
    assert await cell(engine, "B") == (7, 0, 0, 7)
    # A channel order of the bundle, then its cancel.
    order, _ = await engine.order(T, "shop:9", [Line("KIT", 2)], channel="shop")
    assert [(ln.sku, ln.qty, ln.status) for ln in order.lines] == [
        ("A", 4, "committed"), ("B", 6, "committed")]
    await engine.cancel(T, "shop:9", channel="shop")
    assert await cell(engine, "A") == (10, 0, 1, 9)
    assert await cell(engine, "B") == (7, 0, 0, 7)
    # Reasons name the bundle.
    entries = await redis.xrange(tenant_keys(T).outbox)
    reasons = {event_decoder.decode(f[b"e"]).reason for _, f in entries}
    assert "cart hold (bundles KIT)" in reasons


async def test_a_channel_order_beyond_a_component_is_refused_per_component(
        engine: StockEngine) -> None:
    await stock(engine, A=3, B=10)
    await define(engine, "KIT", A=2, B=1)
    order, _ = await engine.order(T, "shop:1", [Line("KIT", 1), Line("A", 2)], channel="shop")
    assert [ln.status for ln in order.lines] == ["committed", "committed", "oversell_rejected"]
    assert await cell(engine, "A") == (3, 0, 2, 1)


async def test_definition_rules(engine: StockEngine) -> None:
    await stock(engine, A=5, B=5, C=5)
    await define(engine, "KIT", A=1, B=1)
    with pytest.raises(errors.BundleConflict):  # a SKU with cells
        await define(engine, "C", A=1)
    with pytest.raises(errors.BundleConflict):  # a bundle as a component: one level only
        await define(engine, "KIT2", KIT=1)
    with pytest.raises(errors.BundleConflict):  # a component cannot become a bundle
        await define(engine, "A", C=1)
    with pytest.raises(errors.BundleConflict):  # no stock of its own
        await engine.adjust(T, "KIT", reason="x", idempotency_key="x", delta=1)
    with pytest.raises(errors.BundleConflict):
        await engine.set_policy(T, "KIT", safety=1)
    with pytest.raises(errors.InvalidRequest):
        await Bundles(engine)._write(T, "BIG", [[f"P{i}", 1] for i in range(21)])
    # Redefining replaces the reverse index; deleting keeps live holds valid.
    await define(engine, "KIT", A=1, C=2)
    await engine.hold(T, [Line("KIT", 2)], hold_id="h")
    deleted = await Bundles(engine).delete(T, "KIT")
    assert deleted.components == []
    with pytest.raises(errors.UnknownSku):
        await Bundles(engine).view(T, "KIT")
    assert await cell(engine, "C") == (5, 4, 0, 1)
    await engine.release(T, "h")
    assert await cell(engine, "C") == (5, 0, 0, 5)
    with pytest.raises(errors.UnknownSku):
        await engine.hold(T, [Line("KIT", 1)], hold_id="h2")


async def test_a_channel_count_for_a_bundle_moves_no_stock(engine: StockEngine,
                                                           redis: Redis) -> None:
    """A count set on a bundle listing cannot say which component changed: it is ignored,
    alerted, and the derived count pushed back over it."""
    from gateway_support import gateway_settings

    from stockgate.alerts import list_alerts
    from stockgate.audit import audit_store
    from stockgate.keys import worker_keys
    from workers.channel_counts import judge_channel_count

    await stock(engine, A=10)
    await define(engine, "KIT", A=2)
    before = await events(redis)
    audit = audit_store(engine.settings)
    await audit.open()
    try:
        outcome = await judge_channel_count(
            redis, engine, audit, gateway_settings(engine.settings), T, "shop", "KIT", "main",
            50, "report-1", 0)
    finally:
        await audit.close()
    assert outcome == "bundle"
    assert await events(redis) == before
    assert await cell(engine, "A") == (10, 0, 0, 10)
    assert not await redis.exists(tenant_keys(T).stock("KIT"))
    assert [a.type for a in await list_alerts(redis, T)] == ["channel_count_ignored"]
    assert await redis.zscore(worker_keys(T).due("shop"), "shop|main|KIT") is not None


async def test_a_bundle_line_past_the_first_thousand_lines_expands(engine: StockEngine) -> None:
    """The bundle lookup is sliced (Lua's unpack has a limit): line 1,001 still expands."""
    await stock(engine, A=2000, B=10)
    await define(engine, "KIT", B=3)
    order, _ = await engine.order(T, "shop:big", [Line("A", 1)] * 1000 + [Line("KIT", 1)],
                                  channel="shop")
    assert order.lines[-1].sku == "B" and order.lines[-1].qty == 3
    assert await cell(engine, "B") == (10, 0, 3, 7)


async def test_a_stale_compare_on_a_bundle_listing_sets_its_components_aside(
        engine: StockEngine, redis: Redis) -> None:
    """A compare-and-set channel's bundle listing dropped on its own (a sale whose order has
    not landed): the kits it dropped are set aside as their components (whole kits, from
    available), so another channel cannot sell them; the kit's order, when it lands, takes
    them back and commits."""
    from stockgate.keys import worker_keys

    await stock(engine, A=4)
    await define(engine, "KIT", A=2)
    cas = worker_keys(T).cas("shop")
    await redis.hset(cas, "k|KIT|main", 2)  # the channel was known to show 2
    reply = await engine.channel_moved(T, "shop", cas, [("KIT", "main", 1, [], ["main"])])
    assert [(ln.sku, ln.pending) for ln in reply.lines] == [("KIT", 1)]
    assert await cell(engine, "A") == (4, 2, 0, 2)
    # Meanwhile another channel tries to sell all four A: the two set aside are not for sale.
    other, _ = await engine.order(T, "other:1", [Line("A", 4)], channel="other")
    assert [ln.status for ln in other.lines] == ["oversell_rejected"]
    order, _ = await engine.order(T, "shop:1", [Line("KIT", 1)], channel="shop")
    assert [ln.status for ln in order.lines] == ["committed"]
    assert await cell(engine, "A") == (4, 0, 2, 2)
