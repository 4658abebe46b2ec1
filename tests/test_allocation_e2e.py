"""End to end with allocation rules: the gateway, a real arq worker and four channel
simulators. Shopify (compare-and-set) is shown half of the pool by its channel default, the
standard channel a fixed 5 hidden below 3 set through the API, WooCommerce and BigCommerce the
whole pool. Rule changes, storefront sales, Shopify selling on its own with its order webhook
late, and orders beyond what a channel shows all take from the one pool; every channel ends on
its rule's value, nothing Shopify sold is overwritten, and the invariants hold."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import msgspec
from redis.asyncio import Redis
from test_workers_e2e import shopify_order
from workers_helpers import (
    audit_ids,
    channel_for,
    gateway_client,
    running_worker,
    settings_with,
    settled,
    wait_for,
)

from loadtests import invariants
from stockgate.allocation import AllocationRule
from stockgate.embedded import EmbeddedRedis
from stockgate.keys import worker_keys
from stockgate.models import Line
from stockgate.stock import StockEngine
from workers.propagation import pending_drops
from workers.simulators import SimulatorServer

T = "default"
SKUS = ["A", "B"]


async def showing(engine: StockEngine, sims: dict[str, SimulatorServer],
                  want: dict[str, dict[str, int]]) -> bool:
    """Every simulator shows `want` (sku -> channel -> count), and so does Stockgate's view."""
    for sku, by_channel in want.items():
        view = await engine.stock(T, sku)
        for name, count in by_channel.items():
            if sims[name].state.count(sku, "main") != count or view.channels[name] != count:
                return False
    return True


async def test_rules_and_sales_converge_every_channel_to_its_rules_value(
        redis: Redis, redis_server: EmbeddedRedis, tmp_path: Path,
        sim_factory: Callable[[str], SimulatorServer]) -> None:
    sims = {name: sim_factory(kind) for name, kind in (
        ("shop", "shopify"), ("std", "standard"), ("woo", "woocommerce"), ("bc", "bigcommerce"))}
    shop = msgspec.structs.replace(channel_for("shopify", sims["shop"]),
                                   allocation=AllocationRule(percent=50))
    settings = settings_with(tmp_path, {
        "shop": shop, "std": channel_for("standard", sims["std"]),
        "woo": channel_for("woocommerce", sims["woo"]),
        "bc": channel_for("bigcommerce", sims["bc"])})
    engine = StockEngine(redis, settings)
    async with running_worker(settings, redis_server.url), \
            gateway_client(settings, redis) as client:
        for sku in SKUS:
            r = await client.post(f"/v1/stock/{sku}/adjust", json={
                "delta": 20, "reason": "receipt", "idempotency_key": f"rcv-{sku}"})
            assert r.status_code == 200, r.text
        await wait_for(lambda: showing(engine, sims, {
            s: {"shop": 10, "std": 20, "woo": 20, "bc": 20} for s in SKUS}), 10)

        # A rule change propagates like a stock change, to its channel only.
        writes = {name: sim.state.writes for name, sim in sims.items()}
        r = await client.put("/v1/stock/A/channels/std", json={"fixed": 5, "hide_below": 3})
        assert r.status_code == 200 and r.json()["allocation"]["value"] == 5
        r = await client.put("/v1/stock/B/channels/woo", json={"max": 4})
        assert r.status_code == 200, r.text
        await wait_for(lambda: showing(engine, sims, {
            "A": {"shop": 10, "std": 5, "woo": 20, "bc": 20},
            "B": {"shop": 10, "std": 20, "woo": 4, "bc": 20}}), 10)
        await wait_for(lambda: settled(redis), 10)
        assert sims["shop"].state.writes == writes["shop"]
        assert sims["bc"].state.writes == writes["bc"]

        # Shopify sells 2 of the 10 it shows on its own; before its order webhook lands, a
        # storefront sale of 3 is pushed to it. The compare against the 10 we pushed comes
        # back stale: its 2 are set aside, not overwritten, and its late order explains them.
        assert sims["shop"].state.sell("A", "main", 2)
        r = await client.post("/v1/holds", json={"hold_id": "h1",
                                                 "lines": [{"sku": "A", "qty": 3}]})
        assert r.status_code == 201, r.text
        r = await client.post("/v1/holds/h1/commit", json={"order_id": "o1"})
        assert r.status_code == 200, r.text
        await wait_for(lambda: _stale_seen(sims["shop"]), 10)
        body, headers = shopify_order(7001, "A", 2, "s3cret")
        r = await client.post("/webhooks/shop", content=body, headers=headers)
        assert r.status_code in (200, 202), r.text
        # Pool 20 - 2 - 3 = 15: Shopify half of it (7), std its fixed 5, the others 15.
        await wait_for(lambda: showing(engine, sims, {
            "A": {"shop": 7, "std": 5, "woo": 15, "bc": 15}}), 10)

        # 7 on hand, 5 of them ordered: 2 left, and std is hidden (fewer than 3 remain). An
        # order it accepts anyway takes from the one pool by the usual rules; one beyond the
        # pool is refused.
        r = await client.post("/v1/stock/A/adjust", json={
            "set_on_hand": 7, "reason": "count", "idempotency_key": "count-A"})
        assert r.status_code == 200 and r.json()["after"]["available"] == 2
        reply, _ = await engine.order(T, "std:1", [Line("A", 1)], channel="std")
        assert reply.lines[0].status == "committed"
        reply, _ = await engine.order(T, "woo:1", [Line("A", 5)], channel="woo")
        assert reply.lines[0].status == "oversell_rejected"
        await wait_for(lambda: showing(engine, sims, {
            "A": {"shop": 0, "std": 0, "woo": 1, "bc": 1}}), 10)
        r = await client.delete("/v1/stock/A/channels/std")
        assert r.status_code == 200 and r.json()["changed"] is True
        await wait_for(lambda: showing(engine, sims, {
            "A": {"shop": 0, "std": 1, "woo": 1, "bc": 1}}), 10)
        await wait_for(lambda: settled(redis), 10)

        assert sims["shop"].state.clobbered == 0  # no push overwrote Shopify's own sale
        assert await pending_drops(redis, T, "shop") == {}
        assert await redis.hlen(worker_keys(T).failed) == 0
        counts = {name: {sku: sim.state.count(sku, "main") or 0 for sku in SKUS}
                  for name, sim in sims.items()}
        observed = await invariants.collect(redis, engine, T,
                                            audit_ids=await audit_ids(settings),
                                            channel_counts=counts)
        report = invariants.check(observed)
        assert report.ok, report.violations
        assert report.oversold_units == 0
        assert any(e.type == "allocation" for e in observed.events)


async def _stale_seen(sim: SimulatorServer) -> bool:
    return sim.state.stale > 0
