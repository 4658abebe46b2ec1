"""Shared fixtures: a private Redis-compatible server on a free port for the whole session."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from stockgate.embedded import EmbeddedRedis
from stockgate.settings import Settings
from stockgate.stock import StockEngine
from workers.simulators import SimulatorServer


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    # everysec keeps the shared server fast; durability tests start strict servers of their own.
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), durability="everysec")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def redis(redis_server: EmbeddedRedis) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url, max_connections=2000)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=str(tmp_path))


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
    redis = Redis.from_url(redis_server.url)
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
    clients = [Redis.from_url(redis_server.url, max_connections=50) for _ in range(CLIENTS)]
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
