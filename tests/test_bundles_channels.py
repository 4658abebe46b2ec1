"""Bundles on channels, end to end: gateway + worker + a simulator channel. A component's
sale re-pushes every bundle that contains it with its derived count; a definition change
pushes the bundle; the HTTP API defines, reads and deletes bundles."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from redis.asyncio import Redis
from workers_helpers import (
    channel_for,
    gateway_client,
    running_worker,
    settings_with,
    settled,
    wait_for,
)

from loadtests.invariants import check, collect
from stockgate.embedded import EmbeddedRedis
from stockgate.stock import StockEngine
from workers.reconcile import reconcile
from workers.simulators import SimulatorServer


async def test_a_component_sale_repushes_the_bundle(
        redis: Redis, redis_server: EmbeddedRedis, tmp_path: Path,
        sim_factory: Callable[[str], SimulatorServer]) -> None:
    sim = sim_factory("shopify")
    settings = settings_with(tmp_path, {"shop": channel_for("shopify", sim)})
    engine = StockEngine(redis, settings)
    async with running_worker(settings, redis_server.url) as worker, \
            gateway_client(settings, redis) as client:
        for sku, n in (("MUG", 9), ("LID", 20)):
            reply = await client.post(f"/v1/stock/{sku}/adjust", json={
                "delta": n, "reason": "receipt", "idempotency_key": f"rcv-{sku}"})
            assert reply.status_code in (200, 201), reply.text
        reply = await client.put("/v1/bundles/MUG-SET", json={
            "components": [{"sku": "MUG", "qty": 2}, {"sku": "LID", "qty": 1}]})
        assert reply.status_code == 200, reply.text
        # The definition alone pushes the bundle: floor(9 / 2) = 4.
        await wait_for(lambda: _shows(sim, "MUG-SET", 4), 10)

        # A cart with the set and a loose mug: 3 mugs, from 9 to 6: the set shows 3.
        reply = await client.post("/v1/holds", json={"hold_id": "h1", "lines": [
            {"sku": "MUG-SET", "qty": 1}, {"sku": "MUG", "qty": 1}]})
        assert reply.status_code == 201, reply.text
        await wait_for(lambda: _shows(sim, "MUG-SET", 3), 10)
        await wait_for(lambda: _shows(sim, "MUG", 6), 10)

        view = (await client.get("/v1/bundles/MUG-SET")).json()
        assert view["available"] == 3 and view["channels"] == {"shop": 3}
        assert view["components"] == [{"sku": "MUG", "qty": 2}, {"sku": "LID", "qty": 1}]
        assert (await client.get("/v1/stock/MUG-SET")).json()["available"] == 3
        # A bundle has no stock of its own.
        reply = await client.post("/v1/stock/MUG-SET/adjust", json={
            "delta": 1, "reason": "x", "idempotency_key": "x"})
        assert reply.status_code == 409 and reply.json()["error"] == "bundle_conflict"

        await wait_for(lambda: settled(redis), 10)
        shown = {"shop": {sku: sim.state.count(sku, "main") for sku in ("MUG", "LID",
                                                                       "MUG-SET")}}
        report = check(await collect(redis, engine, "default", channel_counts=shown))
        assert report.violations == [], report.violations

        # Reconciliation reads bundle listings too, against the derived count.
        sim.state.counts["MUG-SET", "main"] = 40  # someone edited the listing by hand
        runtime = worker.ctx["runtime"]  # type: ignore[attr-defined]
        drifts = await reconcile(redis, engine, settings, runtime.propagator.adapters)
        assert [(d.sku, d.channel_count, d.canonical) for d in drifts] == [("MUG-SET", 40, 3)]
        await wait_for(lambda: _shows(sim, "MUG-SET", 3), 10)
        await wait_for(lambda: settled(redis), 10)

        # Deleting it: the hold stays valid (component lines), the listing goes to 0.
        assert (await client.delete("/v1/bundles/MUG-SET")).status_code == 200
        await wait_for(lambda: _shows(sim, "MUG-SET", 0), 10)
        assert (await client.delete("/v1/holds/h1")).status_code in (200, 204)
        await wait_for(lambda: _shows(sim, "MUG", 9), 10)
        assert (await client.get("/v1/bundles/MUG-SET")).status_code == 404


async def _shows(sim: SimulatorServer, sku: str, n: int) -> bool:
    return sim.state.count(sku, "main") == n
