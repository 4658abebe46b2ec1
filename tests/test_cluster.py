"""Stockgate on a real local Redis Cluster (3 primaries, 3 replicas), with one tenant on each
primary: the gateway's holds and signed webhooks, 1,000 concurrent holds over all shards, the
worker propagating every tenant, a tenant moved to another shard under load (MOVED and ASK
followed, the slot map refreshed), and scripts reloaded on a node that lost them.

The rest of the Cluster suite runs the ordinary tests against a Cluster (STOCKGATE_TEST_CLUSTER,
see tests/conftest.py and the Makefile); this module starts a Cluster of its own."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import msgspec
import pytest
from redis.asyncio import Redis
from redis.crc import key_slot
from workers_helpers import channel_for, running_worker, settled, wait_for

from gateway.app import create_app
from stockgate.cluster import Store, cluster_seeds, connect, is_cluster_url
from stockgate.embedded import EmbeddedRedis
from stockgate.keys import tenant_keys
from stockgate.local_cluster import LocalCluster, spread_tenants
from stockgate.models import Line
from stockgate.settings import ApiKey, Channel, ConfigError, Settings
from stockgate.stock import StockEngine
from workers.settings import worker_kwargs
from workers.simulators import SimulatorServer

TENANTS = spread_tenants(3)
SHOP_SECRET = "shpss_cluster_0123456789"


def operator_key(tenant: str) -> str:
    return f"op-{tenant}-0123456789"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("cluster")) as local:
        yield local


@pytest.fixture(scope="module")
def queue_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path_factory.mktemp("queue"), durability="everysec") as server:
        yield server


@pytest.fixture
async def store(cluster: LocalCluster) -> AsyncIterator[Store]:
    client = connect(cluster.url, max_connections=500)
    await client.flushall()
    yield client
    await client.aclose()


def cluster_settings(tmp_path: Path, cluster: LocalCluster, queue: EmbeddedRedis,
                     channels: dict[str, Channel] | None = None) -> Settings:
    keys = {f"op-{t}": ApiKey(secret=operator_key(t), tenant=t, scopes=("operator",))
            for t in TENANTS}
    return Settings(data_dir=str(tmp_path), redis_url=cluster.url, queue_redis_url=queue.url,
                    api_keys=keys, channels=channels or {})


@pytest.fixture
async def gateway(tmp_path: Path, cluster: LocalCluster, queue_server: EmbeddedRedis,
                  store: Store) -> AsyncIterator[httpx.AsyncClient]:
    channels = {f"shop-{t}": Channel(kind="shopify", secret=SHOP_SECRET, tenant=t)
                for t in TENANTS}
    app = create_app(cluster_settings(tmp_path, cluster, queue_server, channels))
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        yield client


def auth(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {operator_key(tenant)}"}


async def receive(client: httpx.AsyncClient, tenant: str, sku: str, qty: int) -> None:
    r = await client.post(f"/v1/stock/{sku}/adjust", headers=auth(tenant), json={
        "delta": qty, "reason": "receipt", "idempotency_key": f"rcv-{sku}-{qty}"})
    assert r.status_code == 200, r.text


async def stock(client: httpx.AsyncClient, tenant: str, sku: str) -> dict[str, int]:
    r = await client.get(f"/v1/stock/{sku}", headers=auth(tenant))
    assert r.status_code == 200, r.text
    return r.json()["locations"]["main"]


def shopify_order(order_id: int, sku: str, qty: int) -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"id": order_id, "line_items": [{"sku": sku, "quantity": qty}]}).encode()
    digest = base64.b64encode(hmac.new(SHOP_SECRET.encode(), body, hashlib.sha256).digest())
    return body, {"Content-Type": "application/json", "X-Shopify-Topic": "orders/create",
                  "X-Shopify-Hmac-Sha256": digest.decode(),
                  "X-Shopify-Webhook-Id": f"wh-{order_id}"}


def test_the_tenants_live_on_three_different_primaries(cluster: LocalCluster) -> None:
    owners = {cluster.primary_for(tenant_keys(t).stock("X")).port for t in TENANTS}
    assert len(owners) == 3


async def test_holds_and_webhooks_on_every_shard(gateway: httpx.AsyncClient,
                                                 store: Store) -> None:
    """1,000 shoppers over three tenants on three shards, 100 units each: exactly 100 holds
    per tenant; then signed Shopify orders commit on each tenant's own shard, and a replay of
    one changes nothing."""
    for t in TENANTS:
        await receive(gateway, t, "DROP", 100)
        await receive(gateway, t, "TEE", 10)

    async def shopper(n: int) -> tuple[str, int]:
        t = TENANTS[n % 3]
        r = await gateway.post("/v1/holds", headers=auth(t), json={
            "hold_id": f"h{n}", "lines": [{"sku": "DROP", "qty": 1}]})
        return t, r.status_code

    outcomes = Counter(await asyncio.gather(*(shopper(n) for n in range(1000))))
    shoppers = Counter(TENANTS[n % 3] for n in range(1000))
    for t in TENANTS:
        assert outcomes[(t, 201)] == 100 and outcomes[(t, 409)] == shoppers[t] - 100
        cell = await stock(gateway, t, "DROP")
        assert (cell["on_hand"], cell["reserved"], cell["available"]) == (100, 100, 0)
    assert sum(outcomes.values()) == 1000

    for i, t in enumerate(TENANTS):
        body, headers = shopify_order(7000 + i, "TEE", 3)
        for _ in range(2):  # the second is a replay: same delivery, nothing changes
            r = await gateway.post(f"/webhooks/shop-{t}", content=body, headers=headers)
            assert r.status_code in (200, 202), r.text
        cell = await stock(gateway, t, "TEE")
        assert (cell["committed"], cell["available"]) == (3, 7)
    # Each tenant's events are in its own outbox, on its own shard.
    for t in TENANTS:
        kinds = Counter(msgspec.json.decode(f[b"e"])["type"]
                        for _, f in await store.xrange(tenant_keys(t).outbox))
        assert kinds == {"adjust": 2, "hold": 100, "commit": 1}


async def test_the_worker_serves_every_shard(tmp_path: Path, cluster: LocalCluster,
                                             queue_server: EmbeddedRedis, store: Store) -> None:
    """One worker, three tenants on three shards, a Shopify simulator each: every outbox is
    read and every channel shows its tenant's canonical count, before and after a tenant
    moves to another shard under the running worker."""
    sims = {t: SimulatorServer("shopify").start() for t in TENANTS}
    try:
        settings = cluster_settings(tmp_path, cluster, queue_server, {
            f"shop-{t}": msgspec.structs.replace(channel_for("shopify", sims[t]), tenant=t)
            for t in TENANTS})
        engine = StockEngine(store, settings)
        await engine.load_scripts()
        async with running_worker(settings, cluster.url):
            for n, t in enumerate(TENANTS):
                await engine.adjust(t, "SKU-A", reason="receipt", idempotency_key="r",
                                    delta=20 + n)
                await engine.hold(t, [Line("SKU-A", 2 + n)], hold_id="h")

            async def converged() -> bool:
                for t in TENANTS:
                    view = await engine.stock(t, "SKU-A")
                    if sims[t].state.count("SKU-A", "main") != view.channels[f"shop-{t}"]:
                        return False
                    if not await settled(store, t):  # type: ignore[arg-type]
                        return False
                return True

            await wait_for(converged, 20)
            for t in TENANTS:
                assert sims[t].state.count("SKU-A", "main") == 18  # 20+n on hand, 2+n held
            # A resharding under the running worker: the first tenant moves to the second's
            # shard, and its outbox is read there from then on.
            key = tenant_keys(TENANTS[0]).outbox
            new_home = cluster.primary_for(tenant_keys(TENANTS[1]).outbox)
            await asyncio.to_thread(cluster.move_slot, key_slot(key.encode()), new_home)
            for t in TENANTS:
                await engine.hold(t, [Line("SKU-A", 1)], hold_id="h2")
            await wait_for(converged, 20)
            for t in TENANTS:
                assert sims[t].state.count("SKU-A", "main") == 17
    finally:
        for sim in sims.values():
            sim.stop()


async def test_a_tenant_moves_to_another_shard_under_load(gateway: httpx.AsyncClient,
                                                          cluster: LocalCluster,
                                                          store: Store) -> None:
    """Holds keep coming while the tenant's slot moves to another primary. Answers are 201,
    409 (sold out) or 503 (the move in progress, retried), never a 500; every acknowledged
    hold is on the new shard; units are never oversold; the client follows the move (MOVED,
    slot map refreshed) with no restart."""
    t = TENANTS[0]
    await receive(gateway, t, "DROP", 300)
    key = tenant_keys(t).stock("DROP")
    source = cluster.primary_for(key)
    target = next(n for n in cluster.nodes[:3] if n.port != source.port)
    statuses: list[int] = []
    acknowledged: set[str] = set()

    async def shopper(n: int) -> None:
        await asyncio.sleep(n / 1000)  # arrivals spread over 0.4 s, the move in the middle
        for _ in range(50):
            r = await gateway.post("/v1/holds", headers=auth(t), json={
                "hold_id": f"m{n}", "lines": [{"sku": "DROP", "qty": 1}]})
            statuses.append(r.status_code)
            if r.status_code != 503:
                break
            assert "retry-after" in r.headers
            await asyncio.sleep(0.05)
        if r.status_code == 201:
            acknowledged.add(f"m{n}")

    async def move() -> int:
        await asyncio.sleep(0.15)
        return await asyncio.to_thread(cluster.move_slot, key_slot(key.encode()), target)

    moved, *_ = await asyncio.gather(move(), *(shopper(n) for n in range(400)))
    assert moved > 0
    assert cluster.primary_for(key).port == target.port
    assert set(statuses) <= {201, 409, 503}, Counter(statuses)
    cell = await stock(gateway, t, "DROP")
    assert cell["reserved"] == len(acknowledged) == 300
    assert cell["available"] == 0
    for hold_id in acknowledged:
        assert await store.hget(tenant_keys(t).hold(hold_id), "status") == b"held"
    # After the move: served by the new owner, no redirection left to follow.
    r = await gateway.post("/v1/holds", headers=auth(t), json={
        "hold_id": "after", "lines": [{"sku": "DROP", "qty": 1}]})
    assert r.status_code == 409  # sold out, answered by the shard that now owns the tenant


async def test_scripts_are_loaded_again_on_a_node_that_lost_them(gateway: httpx.AsyncClient,
                                                                cluster: LocalCluster) -> None:
    """A promoted replica or a new node has no script cache: NOSCRIPT makes the gateway load
    the scripts there and retry, and the caller sees a normal answer."""
    for t in TENANTS:
        await receive(gateway, t, "SKU-N", 5)
    for node in cluster.nodes:
        direct = Redis(host="127.0.0.1", port=node.port)
        await direct.script_flush()
        await direct.aclose()
    for t in TENANTS:
        r = await gateway.post("/v1/holds", headers=auth(t), json={
            "hold_id": "after-flush", "lines": [{"sku": "SKU-N", "qty": 2}]})
        assert r.status_code == 201, r.text


async def test_a_cluster_that_does_not_answer_is_a_503(tmp_path: Path,
                                                       queue_server: EmbeddedRedis) -> None:
    """No seed node answers (all down, or a wrong address): the gateway still starts, calls
    answer 503 with Retry-After, and /readyz says not ready; never a 500."""
    from stockgate.embedded import free_port

    settings = Settings(data_dir=str(tmp_path), queue_redis_url=queue_server.url,
                        redis_url=f"redis+cluster://127.0.0.1:{free_port()}",
                        api_keys={"op": ApiKey(secret=operator_key("x"), tenant="x",
                                               scopes=("operator",))})
    app = create_app(settings)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        r = await client.post("/v1/holds", headers=auth("x"), json={
            "hold_id": "h", "lines": [{"sku": "A", "qty": 1}]})
        assert r.status_code == 503 and "retry-after" in r.headers, r.text
        r = await client.get("/v1/stock/A", headers=auth("x"))
        assert r.status_code == 503, r.text
        assert (await client.get("/readyz")).status_code == 503


# ---- configuration -----------------------------------------------------------------------

def test_cluster_urls() -> None:
    assert is_cluster_url("redis+cluster://a:7000") and not is_cluster_url("redis://a:7000")
    seeds, options = cluster_seeds("redis+cluster://user:p%40ss@h1:7000,h2:7001/")
    assert seeds == [("h1", 7000), ("h2", 7001)]
    assert options == {"username": "user", "password": "p@ss"}
    assert cluster_seeds("rediss+cluster://:pw@h1:7000")[1] == {"ssl": True, "password": "pw"}
    # A lone name is a user, as in redis-py's redis:// URLs: never a password shown in logs.
    assert cluster_seeds("redis+cluster://ops@h1:7000")[1] == {"username": "ops"}
    for bad in ("redis+cluster://", "redis+cluster://h1", "redis+cluster://h1:7000/2"):
        with pytest.raises(ValueError):
            cluster_seeds(bad)


def test_a_cluster_needs_a_plain_redis_for_the_queue(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path), redis_url="redis+cluster://127.0.0.1:7000")
    assert settings.queue_url() == ""
    with pytest.raises(ConfigError, match="queue_redis_url"):
        worker_kwargs(settings, settings.redis_url)
    plain = Settings(redis_url="redis://127.0.0.1:6379/0")
    assert plain.queue_url() == "redis://127.0.0.1:6379/0"


async def test_the_gateway_refuses_to_start_on_a_cluster_without_a_queue(
        tmp_path: Path, cluster: LocalCluster) -> None:
    app = create_app(Settings(data_dir=str(tmp_path), redis_url=cluster.url))
    with pytest.raises(ConfigError, match="queue_redis_url"):
        async with app.router.lifespan_context(app):
            pass

