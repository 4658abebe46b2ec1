"""Review 5, bundles: a kit is acted on as it was sold (fulfilment, refund, edit, cancel),
whatever its definition became; kit and loose units are never confused; a kit line commits
whole or not at all; a compare-and-set channel's kit sales are its bundle listing's."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from stockgate import errors
from stockgate.bundles import Bundles
from stockgate.keys import tenant_keys
from stockgate.models import BundleComponent, Line
from stockgate.stock import StockEngine

T = "default"


async def stock(engine: StockEngine, **units: int) -> None:
    for sku, n in units.items():
        await engine.adjust(T, sku, reason="seed", idempotency_key=f"seed-{sku}", delta=n)


async def define(engine: StockEngine, sku: str, **parts: int) -> None:
    await Bundles(engine).put(T, sku, [BundleComponent(s, q) for s, q in parts.items()])


async def ecell(engine: StockEngine, sku: str, loc: str = "main") -> tuple[int, int, int, int]:
    c = (await engine.stock(T, sku)).locations[loc]
    return c.on_hand, c.reserved, c.committed, c.available


# ---- a kit is acted on as it was sold ------------------------------------------------------

async def test_a_refund_of_a_redefined_bundle_restocks_the_kit_as_sold_never_loose_units(
        engine: StockEngine) -> None:
    """Order: 1 KIT (= 1 A + 1 B) and 2 loose B, all shipped. The kit is then redefined
    (1 A + 3 B). The customer returns the kit: the refund restocks the kit's units as the
    order's record tagged them (1 A, 1 B), never today's definition, never the loose B the
    customer kept (a phantom unit would be sold twice)."""
    await stock(engine, A=10, B=10)
    await define(engine, "KIT", A=1, B=1)
    await engine.order(T, "shop:1", [Line("KIT", 1), Line("B", 2)], channel="shop")
    await engine.fulfil(T, "shop:1", "f1")
    assert await ecell(engine, "B") == (7, 0, 0, 7)
    await define(engine, "KIT", A=1, B=3)
    reply, _ = await engine.restock(T, "r1", [Line("KIT", 1)], order_id="shop:1",
                                    take_from="shipped", channel="shop")
    # Physically: 1 A and 1 B came back.
    assert await ecell(engine, "A") == (10, 0, 0, 10)
    assert await ecell(engine, "B") == (8, 0, 0, 8), reply


async def test_a_refund_naming_a_deleted_bundle_restocks_the_kit_as_sold(
        engine: StockEngine) -> None:
    """A retired gift set (definition deleted) still gets returns for the return window:
    the refund naming it restocks the components its order's kit took."""
    await stock(engine, A=10, B=10)
    await define(engine, "KIT", A=1, B=2)
    await engine.order(T, "shop:1", [Line("KIT", 1)], channel="shop")
    await engine.fulfil(T, "shop:1", "f1")
    await Bundles(engine).delete(T, "KIT")
    reply, _ = await engine.restock(T, "r1", [Line("KIT", 1)], order_id="shop:1",
                                    take_from="shipped", channel="shop")
    assert await ecell(engine, "A") == (10, 0, 0, 10), reply
    assert await ecell(engine, "B") == (10, 0, 0, 10), reply


async def test_a_fulfilment_naming_a_redefined_bundle_ships_the_kit_as_sold(
        engine: StockEngine) -> None:
    """Order of KIT (= A + B) still open; the kit is redefined (A + C): the fulfilment
    naming the kit ships A and B (what the order took), never C, and is not refused."""
    await stock(engine, A=10, B=10, C=10)
    await define(engine, "KIT", A=1, B=1)
    await engine.order(T, "shop:1", [Line("KIT", 1)], channel="shop")
    await define(engine, "KIT", A=1, C=1)
    await engine.fulfil(T, "shop:1", "f1", [Line("KIT", 1)], channel="shop")
    assert await ecell(engine, "A") == (9, 0, 0, 9)
    assert await ecell(engine, "B") == (9, 0, 0, 9)
    assert await ecell(engine, "C") == (10, 0, 0, 10)


async def test_an_order_edit_after_a_redefinition_merges_the_kit_as_sold(
        engine: StockEngine) -> None:
    """KIT (= A + B) ordered and shipped; the kit is redefined (A + C); the customer adds
    a D (a newer state of the same order). The kit already on the record merges from the
    record's own units: nothing of C is committed, A and B are not taken again; only the
    added D commits. A kit the edit adds takes today's definition."""
    await stock(engine, A=10, B=10, C=10, D=10)
    await define(engine, "KIT", A=1, B=1)
    await engine.order(T, "shop:1", [Line("KIT", 1)], channel="shop", state_ms=1000)
    await engine.fulfil(T, "shop:1", "f1")
    await define(engine, "KIT", A=1, C=1)
    await engine.order(T, "shop:1", [Line("KIT", 1), Line("D", 1)], channel="shop",
                       state_ms=2000)
    assert await ecell(engine, "D") == (10, 0, 1, 9)
    assert await ecell(engine, "C") == (10, 0, 0, 10)
    assert await ecell(engine, "A") == (9, 0, 0, 9)
    assert await ecell(engine, "B") == (9, 0, 0, 9)
    # A second kit added by a later edit is today's kit (A + C).
    await engine.order(T, "shop:1", [Line("KIT", 2), Line("D", 1)], channel="shop",
                       state_ms=3000)
    assert await ecell(engine, "A") == (9, 0, 1, 8)
    assert await ecell(engine, "B") == (9, 0, 0, 9)
    assert await ecell(engine, "C") == (10, 0, 1, 9)


async def test_a_bundle_order_is_the_channels_own_sale_of_the_bundle_listing_not_its_components(
        engine: StockEngine, redis: Redis) -> None:
    """A compare-and-set channel lists KIT (= 2 A) and A. Its KIT order moved its KIT
    listing, not its A listing: the order books one KIT as the channel's own sale, nothing
    on A; so its own later sale of 1 A (count 10 -> 9, order not landed) is set aside."""
    from stockgate.keys import worker_keys

    await stock(engine, A=20)
    await define(engine, "KIT", A=2)
    cas = worker_keys(T).cas("shop")
    await redis.hset(cas, mapping={"k|A|main": 10, "k|KIT|main": 5})
    await engine.order(T, "shop:1", [Line("KIT", 1)], channel="shop")
    assert await redis.hget(cas, "o|A|main") is None
    assert await redis.hget(cas, "o|KIT|main") == b"1"
    reply = await engine.channel_moved(T, "shop", cas, [("A", "main", 9, [], ["main"])])
    assert [(ln.sku, ln.pending) for ln in reply.lines] == [("A", 1)]


async def test_a_channel_cancel_of_a_bundle_order_books_no_component_restock(
        engine: StockEngine, redis: Redis) -> None:
    """The other direction: the channel's cancel of its KIT order is its own restock of the
    KIT listing (o|KIT -1), never of A: its own later sale of 1 A sets exactly 1 A aside
    (booking -2 on A would set 3 aside and withhold 2 units from every channel)."""
    from stockgate.keys import worker_keys

    await stock(engine, A=20)
    await define(engine, "KIT", A=2)
    cas = worker_keys(T).cas("shop")
    await redis.hset(cas, mapping={"k|A|main": 10, "k|KIT|main": 5})
    await engine.order(T, "shop:1", [Line("KIT", 1)], channel="shop")
    await redis.hdel(cas, "o|A|main")  # the push of A finished: o| - own == 0 (see above)
    await engine.cancel(T, "shop:1", channel="shop")
    assert await redis.hget(cas, "o|KIT|main") == b"0"
    reply = await engine.channel_moved(T, "shop", cas, [("A", "main", 9, [], ["main"])])
    assert [(ln.sku, ln.pending) for ln in reply.lines] == [("A", 1)]
    assert await ecell(engine, "A") == (20, 1, 0, 19)


async def test_a_kit_line_commits_whole_or_not_at_all(
        engine: StockEngine, redis: Redis) -> None:
    """A channel order of 1 KIT (= 1 A + 2 B) with only 1 B: the kit line is judged whole,
    so nothing of it commits (no A locked to a kit that cannot be built), each component is
    reported oversell_rejected with one event per component cell; a loose line next to it
    is judged on its own."""
    await stock(engine, A=5, B=1)
    await define(engine, "KIT", A=1, B=2)
    order, _ = await engine.order(T, "shop:1", [Line("KIT", 1), Line("A", 1)],
                                  channel="shop")
    assert [(ln.sku, ln.qty, ln.status) for ln in order.lines] == [
        ("A", 1, "oversell_rejected"), ("B", 2, "oversell_rejected"), ("A", 1, "committed")]
    assert await ecell(engine, "A") == (5, 0, 1, 4)
    assert await ecell(engine, "B") == (1, 0, 0, 1)
    from stockgate.models import event_decoder
    evs = [event_decoder.decode(f[b"e"]) for _, f in
           await redis.xrange(tenant_keys(T).outbox)]
    assert sorted((e.type, e.sku) for e in evs if e.source.ref == "shop:1") == [
        ("commit", "A"), ("oversell_rejected", "A"), ("oversell_rejected", "B")]


async def test_bundle_overflow_and_bad_definitions_are_refused(engine: StockEngine) -> None:
    await stock(engine, A=10, B=10)
    await define(engine, "KIT", A=1_000_000)
    with pytest.raises(errors.InvalidRequest):  # 1e6 * 1e6 units: refused, not wrapped
        await engine.hold(T, [Line("KIT", 1_000_000)], hold_id="big")
    order, _ = await engine.order(T, "shop:big", [Line("KIT", 1_000_000), Line("B", 1)],
                                  channel="shop")
    assert [ln.status for ln in order.lines] == ["invalid", "committed"]
    assert await ecell(engine, "A") == (10, 0, 0, 10)
    with pytest.raises(errors.InvalidRequest):  # a bundle of itself
        await define(engine, "SELF", SELF=1)
    with pytest.raises(errors.BundleConflict):
        await define(engine, "KIT2", KIT=1)
    with pytest.raises(errors.BundleConflict):
        await define(engine, "A", B=1)


async def test_cancel_and_partial_fulfil_of_a_bundle_give_back_what_was_sold(
        engine: StockEngine) -> None:
    await stock(engine, A=10, B=10)
    await define(engine, "KIT", A=1, B=2)
    await engine.order(T, "shop:1", [Line("KIT", 3)], channel="shop")
    await engine.fulfil(T, "shop:1", "f1", [Line("KIT", 1)])
    with pytest.raises(errors.InvalidRequest):
        await engine.fulfil(T, "shop:1", "f2", [Line("KIT", 3)])
    await engine.cancel(T, "shop:1", channel="shop")
    assert await ecell(engine, "A") == (9, 0, 0, 9)
    assert await ecell(engine, "B") == (8, 0, 0, 8)
    # refund of more kits than were sold restocks only what was shipped
    reply, _ = await engine.restock(T, "r1", [Line("KIT", 5)], order_id="shop:1")
    assert [(ln.sku, ln.restocked) for ln in reply.lines] == [("A", 3), ("B", 6)]
    assert await ecell(engine, "A") == (10, 0, 0, 10)
    assert await ecell(engine, "B") == (10, 0, 0, 10)


async def test_a_customer_limit_counts_units_through_bundles(engine: StockEngine) -> None:
    await stock(engine, A=10)
    await engine.set_policy(T, "A", max_per_customer=2)
    await define(engine, "KIT", A=2)
    await engine.hold(T, [Line("KIT", 1)], hold_id="h1", customer="c1")
    with pytest.raises(errors.LimitExceeded):
        await engine.hold(T, [Line("KIT", 1)], hold_id="h2", customer="c1")
    with pytest.raises(errors.LimitExceeded):
        await engine.hold(T, [Line("A", 1)], hold_id="h3", customer="c1")


async def test_a_hold_of_many_bundle_lines_is_bounded(engine: StockEngine, redis: Redis) -> None:
    """max_lines (1000) bounds a hold before expansion: 1000 lines of a 20-component bundle
    are 20,000 component lines in one script (about 50 ms when measured, a 330 KB record;
    not asserted here: a timing bound would flake on a busy machine), and a line more is
    refused."""
    parts = {f"P{i}": 1 for i in range(20)}
    await stock(engine, **{p: 1_000_000 for p in parts})
    await define(engine, "BIG", **parts)
    await engine.hold(T, [Line("BIG", 1)] * 1000, hold_id="flood")
    # Each part was taken once per line, summed into one change per cell.
    assert (await engine.stock(T, "P0")).locations["main"].reserved == 1000
    with pytest.raises(errors.InvalidRequest):
        await engine.hold(T, [Line("BIG", 1)] * 1001, hold_id="flood2")


async def test_concurrent_carts_sharing_components_never_pass_a_limit(engine: StockEngine) -> None:
    import asyncio
    import random

    rng = random.Random(5)
    await stock(engine, A=50, B=30)
    await engine.set_policy(T, "A", backorder_limit=3)
    await define(engine, "K1", A=2, B=1)
    await define(engine, "K2", A=1, B=3)

    async def cart(i: int) -> None:
        lines = [Line(rng.choice(["K1", "K2", "A", "B"]), rng.randint(1, 3))
                 for _ in range(rng.randint(1, 4))]
        try:
            if i % 2:
                await engine.hold(T, lines, hold_id=f"c{i}")
            else:
                await engine.order(T, f"shop:{i}", lines, channel="shop")
        except (errors.InsufficientStock, errors.InvalidRequest):
            pass

    await asyncio.gather(*(cart(i) for i in range(400)))
    a, b = await ecell(engine, "A"), await ecell(engine, "B")
    assert a[3] >= -3 and b[3] >= 0, (a, b)
    # A hold of a bundle commits the components it took, whatever the definition is now.
    await stock(engine, C=5)
    await define(engine, "K3", C=2)
    await engine.hold(T, [Line("K3", 1)], hold_id="k3")
    await define(engine, "K3", C=1)
    reply, _ = await engine.commit(T, "k3", "web:k3")
    assert [(ln.sku, ln.qty) for ln in reply.lines] == [("C", 2)]
    assert await ecell(engine, "C") == (5, 0, 2, 3)


async def test_an_order_with_a_kit_and_its_loose_part_emits_one_event_per_cell(
        engine: StockEngine, redis: Redis) -> None:
    """Issue 11's rule: one outbox event per changed cell. A channel order of a KIT (= 1 A)
    and a loose A writes one `commit` event for cell A|main (summed, as hold.lua does); the
    reply keeps one result per line, and its fulfilment is one event too."""
    from stockgate.models import event_decoder

    await stock(engine, A=10)
    await define(engine, "KIT", A=1)
    mark = (await redis.xrevrange(tenant_keys(T).outbox, count=1))[0][0]
    await engine.order(T, "shop:1", [Line("KIT", 1), Line("A", 1)], channel="shop")
    evs = [event_decoder.decode(f[b"e"]) for _, f in
           await redis.xrange(tenant_keys(T).outbox, min=b"(" + mark)]
    assert [(e.type, e.sku, e.delta) for e in evs] == [("commit", "A", {"committed": 2})]
    mark = (await redis.xrevrange(tenant_keys(T).outbox, count=1))[0][0]
    await engine.fulfil(T, "shop:1", "f1")
    evs = [event_decoder.decode(f[b"e"]) for _, f in
           await redis.xrange(tenant_keys(T).outbox, min=b"(" + mark)]
    assert [(e.type, e.sku) for e in evs] == [("fulfil", "A")]


async def test_a_stale_compare_on_a_bundle_listing_sets_its_components_aside(
        engine: StockEngine, redis: Redis) -> None:
    """A compare-and-set channel sold a KIT (= 2 A) on its own; its order has not landed.
    The drop of its KIT listing sets the kit's components aside (2 A, under the bundle's own
    p|/S| bookkeeping), so another channel cannot sell them, and the kit's order takes them
    back when it lands."""
    from stockgate.keys import worker_keys

    await stock(engine, A=4)
    await define(engine, "KIT", A=2)
    cas = worker_keys(T).cas("shop")
    await redis.hset(cas, "k|KIT|main", 2)
    reply = await engine.channel_moved(T, "shop", cas, [("KIT", "main", 1, [], ["main"])])
    assert [(ln.sku, ln.pending) for ln in reply.lines] == [("KIT", 1)]
    assert await ecell(engine, "A") == (4, 2, 0, 2)
    assert await redis.hget(cas, "p|KIT|main") == b"1"
    other, _ = await engine.order(T, "other:1", [Line("A", 4)], channel="other")
    assert [ln.status for ln in other.lines] == ["oversell_rejected"]
    order, _ = await engine.order(T, "shop:1", [Line("KIT", 1)], channel="shop")
    assert [(ln.sku, ln.qty, ln.status) for ln in order.lines] == [("A", 2, "committed")]
    assert await ecell(engine, "A") == (4, 0, 2, 2)
    assert await redis.hget(cas, "p|KIT|main") is None
    assert await redis.hget(cas, "S|KIT") is None
    # Units taken back from the set-aside are no new own sale of the listing.
    assert await redis.hget(cas, "o|KIT|main") is None


async def test_a_bundle_listing_whose_drop_is_explained_gives_its_components_back(
        engine: StockEngine, redis: Redis) -> None:
    """Only whole kits, only what is available, are set aside; a count report judged for
    the kit listing (a give-back) releases its components."""
    from stockgate.keys import worker_keys

    await stock(engine, A=5, B=1)
    await define(engine, "KIT", A=2, B=1)
    cas = worker_keys(T).cas("shop")
    await redis.hset(cas, "k|KIT|main", 3)
    reply = await engine.channel_moved(T, "shop", cas, [("KIT", "main", 0, [], ["main"])])
    # 3 kits dropped, B covers one: one whole kit set aside, never a lone A.
    assert [(ln.sku, ln.pending) for ln in reply.lines] == [("KIT", 1)]
    assert await ecell(engine, "A") == (5, 2, 0, 3)
    assert await ecell(engine, "B") == (1, 1, 0, 0)
    await engine.channel_explained(T, "shop", cas, "KIT", "main", 1)
    assert await ecell(engine, "A") == (5, 0, 0, 5)
    assert await ecell(engine, "B") == (1, 0, 0, 1)
    assert await redis.hget(cas, "S|KIT") is None


async def test_a_refund_of_more_kits_than_were_sold_never_takes_loose_parts(
        engine: StockEngine) -> None:
    """KIT (= A + B) x1 and loose A x2, all shipped: a refund naming 3 kits restocks the one
    kit sold (1 A, 1 B), never the loose A the customer kept; a refund naming plain A
    takes loose units only."""
    await stock(engine, A=10, B=10)
    await define(engine, "KIT", A=1, B=1)
    await engine.order(T, "shop:1", [Line("KIT", 1), Line("A", 2)], channel="shop")
    await engine.fulfil(T, "shop:1", "f1")
    reply, _ = await engine.restock(T, "r1", [Line("KIT", 3)], order_id="shop:1")
    assert [(ln.sku, ln.restocked) for ln in reply.lines] == [("A", 1), ("B", 1)]
    assert await ecell(engine, "A") == (8, 0, 0, 8)
    assert await ecell(engine, "B") == (10, 0, 0, 10)
    reply, _ = await engine.restock(T, "r2", [Line("A", 5)], order_id="shop:1")
    assert [(ln.sku, ln.restocked) for ln in reply.lines] == [("A", 2)]
    assert await ecell(engine, "A") == (10, 0, 0, 10)


async def test_a_committed_bundle_hold_keeps_its_kit_through_redefinition(
        engine: StockEngine, redis: Redis) -> None:
    """A storefront hold of KIT (= A + B), committed after the kit became A + C: its order's
    fulfilment and refund naming the kit act on A and B."""
    await stock(engine, A=10, B=10, C=10)
    await define(engine, "KIT", A=1, B=1)
    await engine.hold(T, [Line("KIT", 1), Line("B", 1)], hold_id="h1")
    await define(engine, "KIT", A=1, C=1)
    from stockgate.models import event_decoder
    mark = (await redis.xrevrange(tenant_keys(T).outbox, count=1))[0][0]
    await engine.commit(T, "h1", "web:1")
    evs = [event_decoder.decode(f[b"e"]) for _, f in
           await redis.xrange(tenant_keys(T).outbox, min=b"(" + mark)]
    # The kit's B and the loose B are one cell: one event.
    assert sorted((e.type, e.sku) for e in evs) == [("commit", "A"), ("commit", "B")]
    await engine.fulfil(T, "web:1", "f1", [Line("KIT", 1)])
    assert await ecell(engine, "B") == (9, 0, 1, 8)
    await engine.restock(T, "r1", [Line("KIT", 1)], order_id="web:1")
    assert await ecell(engine, "A") == (10, 0, 0, 10)
    assert await ecell(engine, "B") == (10, 0, 1, 9)
    assert await ecell(engine, "C") == (10, 0, 0, 10)


async def test_an_order_record_without_tags_keeps_working(
        engine: StockEngine, redis: Redis) -> None:
    """A record written before entries carried bundle tags (no "kits" field): a refund
    naming the kit expands with today's definition against its untagged entries, as before."""
    import json

    await stock(engine, A=10, B=10)
    await define(engine, "KIT", A=1, B=1)
    await engine.order(T, "shop:1", [Line("KIT", 1)], channel="shop")
    key = tenant_keys(T).order("shop:1")
    entries = json.loads(await redis.hget(key, "lines"))
    for e in entries:
        for f in ("bundle", "per", "def"):
            e.pop(f, None)
    await redis.hset(key, "lines", json.dumps(entries))
    await redis.hdel(key, "kits")
    await engine.fulfil(T, "shop:1", "f1", [Line("KIT", 1)])
    assert await ecell(engine, "A") == (9, 0, 0, 9)
    await engine.restock(T, "r1", [Line("KIT", 1)], order_id="shop:1")
    assert await ecell(engine, "A") == (10, 0, 0, 10)
    assert await ecell(engine, "B") == (10, 0, 0, 10)


async def test_a_channel_order_claiming_a_bundle_hold_takes_the_kit_the_hold_took(
        engine: StockEngine) -> None:
    """A hold of KIT (= A + B), the kit redefined (A + C), then the channel order naming the
    hold: the kit commits from the hold's units (A and B), C is untouched, nothing is left
    reserved; a second kit in the order is today's kit."""
    await stock(engine, A=10, B=10, C=10)
    await define(engine, "KIT", A=1, B=1)
    await engine.hold(T, [Line("KIT", 1)], hold_id="h1")
    await define(engine, "KIT", A=1, C=1)
    order, _ = await engine.order(T, "shop:1", [Line("KIT", 2)], hold_id="h1",
                                  channel="shop")
    assert sorted((ln.sku, ln.qty, ln.status) for ln in order.lines) == [
        ("A", 1, "committed"), ("A", 1, "held"), ("B", 1, "held"), ("C", 1, "committed")]
    assert await ecell(engine, "A") == (10, 0, 2, 8)
    assert await ecell(engine, "B") == (10, 0, 1, 9)
    assert await ecell(engine, "C") == (10, 0, 1, 9)
