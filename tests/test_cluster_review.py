"""Findings of the review of the Cluster work (issue 12), each reproduced on a real local
Cluster without replicas, so that a dead primary stays dead:

- a script run on a slot in the middle of a move was aborted by the server after its first
  write (a key it does not declare was already gone) and applied again on the retry: a
  receipt counted twice, units that do not exist put on sale;
- one dead shard stopped the outbox of every tenant (one pipeline for all streams);
- the death of the primary owning slot 0 failed every call to every shard (redis-py re-read
  the command table from that node on each topology refresh);
and of the second review, on a Cluster with replicas:
- one readiness probe during a failover (SCRIPT EXISTS / LOAD on every primary) emptied the
  client's seed list, and no call to any shard succeeded again;
- with replica_wait, the retry of a call whose WAIT timed out was a replay that wrote
  nothing, and its WAIT (on another connection) confirmed at once: acknowledged while no
  replica had the write.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import msgspec
import pytest
from redis import Redis as SyncRedis
from redis.crc import key_slot
from workers_helpers import wait_for

from gateway.app import create_app
from stockgate.audit import audit_store
from stockgate.cluster import connect
from stockgate.embedded import EmbeddedRedis
from stockgate.keys import CONSUMER_GROUP, tenant_keys
from stockgate.local_cluster import LocalCluster, spread_tenants
from stockgate.settings import ApiKey, Settings
from stockgate.stock import StockEngine
from workers.outbox import OutboxConfig, OutboxConsumer

TENANTS = spread_tenants(3)  # TENANTS[0] lives on the primary that owns slot 0


def auth(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer op-{tenant}-0123456789"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("cluster"), replicas=0) as local:
        yield local


@pytest.fixture(scope="module")
def queue(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path_factory.mktemp("queue"), durability="everysec") as server:
        yield server


def settings_for(tmp_path: Path, cluster: LocalCluster, queue: EmbeddedRedis) -> Settings:
    return Settings(data_dir=str(tmp_path), redis_url=cluster.url, queue_redis_url=queue.url,
                    api_keys={f"op-{t}": ApiKey(secret=f"op-{t}-0123456789", tenant=t,
                                                scopes=("operator",)) for t in TENANTS})


@pytest.fixture
async def gateway(tmp_path: Path, cluster: LocalCluster,
                  queue: EmbeddedRedis) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings_for(tmp_path, cluster, queue))
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        yield client


async def on_hand(client: httpx.AsyncClient, tenant: str, sku: str) -> int:
    r = await client.get(f"/v1/stock/{sku}", headers=auth(tenant))
    assert r.status_code == 200, r.text
    return int(r.json()["locations"]["main"]["on_hand"])


async def test_no_script_runs_on_a_slot_in_the_middle_of_a_move(
        gateway: httpx.AsyncClient, cluster: LocalCluster) -> None:
    """The slot in the state a move passes through (MIGRATING on the source, IMPORTING on the
    target, every key still on the source): a receipt and a release, whose declared keys all
    exist there, are refused before they run (503), change nothing, and apply once after the
    move. Without the guard key the receipt wrote on_hand, was aborted at a key it does not
    declare, answered 500, and the retry received the units a second time."""
    t = TENANTS[2]
    r = await gateway.post("/v1/stock/W/adjust", headers=auth(t), json={
        "delta": 10, "reason": "receipt", "idempotency_key": "a1"})
    assert r.status_code == 200, r.text
    r = await gateway.post("/v1/incoming", headers=auth(t), json={
        "incoming_id": "po1", "expected_date": "2027-01-01", "reference": "PO-1",
        "lines": [{"sku": "W", "qty": 5}]})
    assert r.status_code == 201, r.text
    r = await gateway.post("/v1/holds", headers=auth(t), json={
        "hold_id": "h1", "lines": [{"sku": "W", "qty": 2}]})
    assert r.status_code == 201, r.text

    key = tenant_keys(t).stock("W")
    slot = key_slot(key.encode())
    source = cluster.primary_for(key)
    target = cluster.primary_for(tenant_keys(TENANTS[1]).outbox)  # not slot 0's owner
    ids = {n.port: SyncRedis(port=n.port).execute_command("CLUSTER MYID").decode()
           for n in (source, target)}
    SyncRedis(port=target.port).execute_command("CLUSTER SETSLOT", slot, "IMPORTING",
                                                ids[source.port])
    SyncRedis(port=source.port).execute_command("CLUSTER SETSLOT", slot, "MIGRATING",
                                                ids[target.port])
    before = SyncRedis(port=source.port).hgetall(key)
    receipt = {"receipt_id": "r1", "lines": [{"sku": "W", "qty": 5}]}
    r = await gateway.post("/v1/incoming/po1/receipts", headers=auth(t), json=receipt)
    assert r.status_code == 503 and "retry-after" in r.headers, r.text
    r = await gateway.delete("/v1/holds/h1", headers=auth(t))
    assert r.status_code == 503, r.text
    assert SyncRedis(port=source.port).hgetall(key) == before  # nothing applied

    await asyncio.to_thread(cluster.move_slot, slot, target)
    r = await gateway.post("/v1/incoming/po1/receipts", headers=auth(t), json=receipt)
    assert r.status_code == 200, r.text
    r = await gateway.delete("/v1/holds/h1", headers=auth(t))
    assert r.status_code == 200, r.text
    assert await on_hand(gateway, t, "W") == 15  # 10 + 5 received once


async def test_a_dead_shard_stops_neither_the_other_shards_nor_their_outboxes(
        gateway: httpx.AsyncClient, cluster: LocalCluster, tmp_path: Path,
        queue: EmbeddedRedis) -> None:
    """The primary owning slot 0 dies for good (no replica): its tenant answers 503; the
    other tenants' holds keep succeeding at once, and their outbox events keep reaching the
    consumer."""
    settings = settings_for(tmp_path, cluster, queue)
    store = connect(cluster.url, socket_timeout=1, socket_connect_timeout=1)
    consumer = OutboxConsumer(store, settings, audit_store(settings),
                              OutboxConfig(claim_every_s=0.5))
    seen: Counter[str] = Counter()

    async def process(tenant: str, entries: list) -> None:  # type: ignore[type-arg]
        seen.update(tenant for _ in entries)
        await store.xack(tenant_keys(tenant).outbox, CONSUMER_GROUP, *[e[0] for e in entries])

    consumer.process = process  # type: ignore[method-assign]
    for t in TENANTS:
        r = await gateway.post("/v1/stock/S/adjust", headers=auth(t), json={
            "delta": 1000, "reason": "receipt", "idempotency_key": "a"})
        assert r.status_code == 200, r.text
    stop = asyncio.Event()
    reading = asyncio.create_task(consumer.run(stop))
    try:
        await wait_for(lambda: _all_seen(seen), 10)
        victim, healthy = TENANTS[0], TENANTS[1:]
        cluster.primary_for(tenant_keys(victim).outbox).kill()
        r = await gateway.post("/v1/holds", headers=auth(victim), json={
            "hold_id": "v", "lines": [{"sku": "S", "qty": 1}]})
        assert r.status_code == 503, r.text

        seen.clear()
        statuses: Counter[int] = Counter()
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < 2:
            for t in healthy:
                n += 1
                r = await gateway.post("/v1/holds", headers=auth(t), json={
                    "hold_id": f"h{n}", "lines": [{"sku": "S", "qty": 1}]})
                statuses[r.status_code] += 1
            await asyncio.sleep(0.02)
        assert set(statuses) == {201}, statuses
        # Every hold is one outbox event of its tenant, read from its live shard.
        await wait_for(lambda: _seen_all(seen, healthy, n // 2), 10)
        # A worker starting now (scripts, consumer groups, old consumers) starts: the dead
        # shard's tenant waits, the others' holds still expire and their pushes still leave.
        engine = StockEngine(store, settings)
        await engine.load_scripts()
        assert await engine.scripts.loaded()
        fresh = OutboxConsumer(store, settings, audit_store(settings))
        await fresh.ensure_groups()
        await fresh.forget_idle_consumers()
    finally:
        stop.set()
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)
        await store.aclose()


async def _all_seen(seen: Counter[str]) -> bool:
    return all(seen[t] for t in TENANTS)


async def _seen_all(seen: Counter[str], tenants: list[str], each: int) -> bool:
    return all(seen[t] >= each for t in tenants)


@pytest.fixture
def replicated(tmp_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path / "c", replicas=1) as local:
        yield local


async def test_one_readiness_probe_during_a_failover_does_not_take_every_shard_down(
        tmp_path: Path, replicated: LocalCluster, queue: EmbeddedRedis) -> None:
    app = create_app(settings_for(tmp_path, replicated, queue))
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        for t in TENANTS:
            r = await client.post("/v1/stock/S/adjust", headers=auth(t), json={
                "delta": 100, "reason": "receipt", "idempotency_key": "a"})
            assert r.status_code == 200, r.text
        replicated.primary_for(tenant_keys(TENANTS[1]).outbox).kill()
        await client.get("/readyz")  # a load balancer's probe in the failover gap
        await asyncio.to_thread(replicated.wait_healthy, 30)  # the replica is promoted
        statuses: dict[str, int] = {}
        for i in range(20):
            for t in TENANTS:
                r = await client.post("/v1/holds", headers=auth(t), json={
                    "hold_id": f"h{i}", "lines": [{"sku": "S", "qty": 1}]})
                statuses[t] = r.status_code
            if set(statuses.values()) == {201}:
                break
            await asyncio.sleep(0.5)
        assert set(statuses.values()) == {201}, statuses
        assert (await client.get("/readyz")).status_code == 200


async def test_a_retry_after_a_wait_timeout_is_not_acknowledged_unreplicated(
        tmp_path: Path, replicated: LocalCluster, queue: EmbeddedRedis) -> None:
    """The only replica stalls (SIGSTOP: the link stays up, nothing is applied). A hold
    answers 503 (WAIT timed out); the client's retry, through another gateway process, finds
    the hold's record and replays it: still 503 while the replica lags, 201 once it caught up."""
    t = TENANTS[2]
    base = settings_for(tmp_path, replicated, queue)
    durable = msgspec.structs.replace(base, replica_wait=1, replica_wait_ms=300)
    first, second = create_app(durable), create_app(durable)
    async with first.router.lifespan_context(first), second.router.lifespan_context(second), \
            httpx.AsyncClient(transport=httpx.ASGITransport(app=first),
                              base_url="http://a") as a, \
            httpx.AsyncClient(transport=httpx.ASGITransport(app=second),
                              base_url="http://b") as b:
        r = await a.post("/v1/stock/X/adjust", headers=auth(t), json={
            "delta": 1, "reason": "receipt", "idempotency_key": "a"})
        assert r.status_code == 200, r.text
        primary = replicated.primary_for(tenant_keys(t).outbox)
        replica = replicated.replicas_of(primary)[0]
        assert replica.process is not None
        body = {"hold_id": "h1", "lines": [{"sku": "X", "qty": 1}]}
        os.kill(replica.process.pid, signal.SIGSTOP)
        try:
            assert (await a.post("/v1/holds", headers=auth(t), json=body)).status_code == 503
            for gateway in (b, a):  # the retry, on another process and on the first one
                r = await gateway.post("/v1/holds", headers=auth(t), json=body)
                assert r.status_code == 503, r.text
        finally:
            os.kill(replica.process.pid, signal.SIGCONT)
        r = await b.post("/v1/holds", headers=auth(t), json=body)
        assert r.status_code == 201, r.text
