"""Shared fixtures: a private Redis-compatible server on a free port for the whole session.

With STOCKGATE_TEST_CLUSTER=1 the same fixtures give a local Redis Cluster instead (3
primaries, 3 replicas; `make test` runs the Cluster suite that way, see CLUSTER_SUITE in the
Makefile): `redis` is a RedisCluster client, `redis_server.url` a Cluster URL, arq's queue a
plain server of its own, and test modules' tenant `T` rotates over one tenant per primary.
"""

from __future__ import annotations

import asyncio
import os
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from stockgate.cluster import Store, connect
from stockgate.embedded import EmbeddedRedis
from stockgate.keys import TenantKeys, tenant_keys
from stockgate.local_cluster import LocalCluster, spread_tenants
from stockgate.settings import Settings
from stockgate.stock import StockEngine
from workers.simulators import SimulatorServer

CLUSTER_MODE = os.environ.get("STOCKGATE_TEST_CLUSTER") == "1"
# One tenant per primary of the local Cluster (a tenant lives on the shard its name hashes to).
CLUSTER_TENANTS = spread_tenants(3)
QUEUE_URL_VAR = "STOCKGATE_TEST_QUEUE_URL"


class ClusterServer:
    """What the tests see as `redis_server` in Cluster mode."""

    def __init__(self, cluster: LocalCluster, queue: EmbeddedRedis) -> None:
        self.cluster = cluster
        self.queue = queue
        self.url = cluster.url


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[EmbeddedRedis | ClusterServer]:
    # everysec keeps the shared server fast; durability tests start strict servers of their own.
    if CLUSTER_MODE:
        with LocalCluster(tmp_path_factory.mktemp("cluster")) as cluster, \
                EmbeddedRedis(tmp_path_factory.mktemp("queue"), durability="everysec") as queue:
            os.environ[QUEUE_URL_VAR] = queue.url
            yield ClusterServer(cluster, queue)
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), durability="everysec")
    server.start()
    yield server
    server.stop()


def store_client(redis_server: EmbeddedRedis | ClusterServer, **options: object) -> Store:
    """A client of the session's store: Redis, or RedisCluster in Cluster mode."""
    return connect(redis_server.url, **options)


@pytest.fixture
async def redis(redis_server: EmbeddedRedis | ClusterServer) -> AsyncIterator[Redis]:
    client = store_client(redis_server, max_connections=2000)
    await client.flushall()
    if isinstance(redis_server, ClusterServer):
        queue = Redis.from_url(redis_server.queue.url)
        await queue.flushall()
        await queue.aclose()
    yield client  # type: ignore[misc]
    await client.aclose()


@pytest.fixture
async def queue_redis(redis: Redis, redis_server: EmbeddedRedis | ClusterServer
                      ) -> AsyncIterator[Redis]:
    """Where arq's queue lives: the store itself, or in Cluster mode a plain server."""
    if not isinstance(redis_server, ClusterServer):
        yield redis
        return
    client = Redis.from_url(redis_server.queue.url)
    yield client
    await client.aclose()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=str(tmp_path), queue_redis_url=os.environ.get(QUEUE_URL_VAR, "")
                    if CLUSTER_MODE else "")


@pytest.fixture(autouse=True)
def cluster_tenant(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """In Cluster mode, a test module's tenant `T` is one of three tenants, each on its own
    primary, chosen by the test's name: a module's tests load all three shards."""
    if CLUSTER_MODE and isinstance(getattr(request.module, "T", None), str):
        tenant = CLUSTER_TENANTS[zlib.crc32(request.node.nodeid.encode()) % 3]
        monkeypatch.setattr(request.module, "T", tenant)
        if isinstance(getattr(request.module, "K", None), TenantKeys):
            monkeypatch.setattr(request.module, "K", tenant_keys(tenant))


@pytest.fixture
async def engine(redis: Redis, settings: Settings) -> AsyncIterator[StockEngine]:
    engine = StockEngine(redis, settings)
    await engine.load_scripts()
    yield engine
    engine.scripts.close()


@pytest.fixture
def machine_engine(redis_server: EmbeddedRedis, tmp_path: Path
                   ) -> Iterator[tuple[asyncio.AbstractEventLoop, StockEngine]]:
    """An engine for a hypothesis state machine: its steps are synchronous, so it drives its
    own loop rather than the session loop that pytest-asyncio runs async tests on."""
    loop = asyncio.new_event_loop()
    redis = store_client(redis_server)
    engine = StockEngine(redis, Settings(data_dir=str(tmp_path)))
    loop.run_until_complete(engine.load_scripts())
    yield loop, engine
    loop.run_until_complete(redis.flushall())
    loop.run_until_complete(redis.aclose())
    loop.close()


# Gateway processes each have their own pool; 50 clients make 50 separate connections at least.
CLIENTS = 50


@pytest.fixture
async def engines(redis: Redis, redis_server: EmbeddedRedis,
                  settings: Settings) -> AsyncIterator[list[StockEngine]]:
    """One engine per simulated gateway process, each with its own connection pool (the
    concurrency tests' 1,000 shoppers)."""
    clients = [store_client(redis_server, max_connections=50) for _ in range(CLIENTS)]
    engines = [StockEngine(client, settings) for client in clients]
    await engines[0].load_scripts()
    yield engines
    for engine in engines:
        engine.scripts.close()
    for client in clients:
        await client.aclose()


@pytest.fixture
def sim_factory() -> Iterator[Callable[[str], SimulatorServer]]:
    """Starts channel simulators of the kinds asked for; stops them all after the test."""
    started: list[SimulatorServer] = []

    def make(kind: str) -> SimulatorServer:
        sim = SimulatorServer(kind).start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()
