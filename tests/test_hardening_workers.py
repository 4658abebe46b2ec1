"""Workers on a bad night (issue 15): a frozen Redis, a PostgreSQL outage, a count job that
meets a transient error, the per-second cron's log lines, and consumer names that pile up.
Each runs the real arq worker (`build_worker`, as `stockgate worker` does) against a real
server; the audit store's outage is a real PostgreSQL behind a port the test opens and closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec
import psycopg
import pytest
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from test_workers_audit import PG_BASE, _pg_or_skip
from workers_helpers import (
    FAST,
    audit_ids,
    channel_for,
    gateway_client,
    settings_with,
    stop_worker,
    wait_for,
)

from stockgate.alerts import list_alerts
from stockgate.audit import RECONNECT_EVERY_S
from stockgate.cluster import connect
from stockgate.deliveries import failed_deliveries
from stockgate.embedded import EmbeddedRedis, free_port
from stockgate.errors import StoreUnavailable
from stockgate.jobs import enqueue_channel_count
from stockgate.keys import CONSUMER_GROUP, tenant_keys
from stockgate.models import Line
from stockgate.settings import Channel, Settings
from stockgate.stock import StockEngine
from workers import runtime as runtime_module
from workers import settings as worker_settings
from workers.outbox import OutboxConfig, OutboxConsumer, pending_entries, unread_entries
from workers.propagation import Propagator
from workers.queue import RetryConfig
from workers.runtime import (
    FAILURES_BEFORE_ALERT,
    RedisTimeouts,
    WorkerConfig,
    WorkerRuntime,
    supervised,
)
from workers.settings import StockgateWorker, build_worker, worker_redis

T = "default"
# The count job's retries, shortened: 2 tries a second or so.
QUICK_RETRIES = RetryConfig(max_tries=30, backoff_base_s=0.1, backoff_max_s=0.3,
                            attempt_timeout_s=5.0)


@contextlib.asynccontextmanager
async def worker_running(settings: Settings, redis_url: str, config: WorkerConfig = FAST,
                         **overrides: object
                         ) -> AsyncIterator[tuple[StockgateWorker, asyncio.Task[None]]]:
    """The worker `stockgate worker` runs, in this event loop; closed cleanly (on_shutdown)
    at the end, as on SIGTERM."""
    worker = build_worker(settings, redis_url, config, handle_signals=False, **overrides)
    task = asyncio.create_task(worker.async_run())
    try:
        async def started() -> bool:
            if task.done():
                task.result()  # a start-up that failed fails the test with its error
            return "runtime" in worker.ctx

        await wait_for(started, 15)
        yield worker, task
    finally:
        # Cancelled until it ends, then closed, each within a bound (a lost cancel hung a
        # run of this file on a bare `await task`).
        await stop_worker(worker, task)


def runtime_of(worker: StockgateWorker) -> WorkerRuntime:
    return worker.ctx["runtime"]  # type: ignore[no-any-return]


async def consumers(redis: Redis, tenant: str = T) -> dict[str, int]:
    """Consumer name -> pending entries, in the outbox's group."""
    found = await redis.xinfo_consumers(tenant_keys(tenant).outbox, CONSUMER_GROUP)
    return {c["name"].decode(): int(c["pending"]) for c in found}


async def reserved(engine: StockEngine, sku: str) -> int:
    return (await engine.stock(T, sku)).locations["main"].reserved


async def on_hand(engine: StockEngine, sku: str) -> int:
    return (await engine.stock(T, sku)).locations["main"].on_hand


def closed_channel() -> Channel:
    """A channel whose API is not there: its pushes fail and park, which these tests ignore."""
    return Channel(kind="standard", secret="s3cret", api_url=f"http://127.0.0.1:{free_port()}",
                   access_token="t", rate_limit_per_s=50)


# ---- a PostgreSQL that is down, then back ------------------------------------------------

class PgGate:
    """A local port in front of the test PostgreSQL: refused until `open()`, then forwarded;
    one audit DSN that is unreachable and later reachable, as in an outage."""

    def __init__(self) -> None:
        target = urlsplit(PG_BASE)
        self.target = (target.hostname or "127.0.0.1", target.port or 5432)
        self.port = free_port()
        userinfo = target.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        self.base_dsn = urlunsplit(target._replace(netloc=netloc))
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in self._writers:
                writer.close()
            await self._server.wait_closed()
            self._server = None

    async def _forward(self, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers += [writer, up_writer]

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            finally:
                dst.close()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer),
                             return_exceptions=True)


@pytest.fixture
async def pg_gate() -> AsyncIterator[tuple[PgGate, str]]:
    """The gate (closed) and an audit DSN through it, on a schema of this test's own."""
    await _pg_or_skip()
    schema = f"sg_hard_{uuid.uuid4().hex[:12]}"
    async with await psycopg.AsyncConnection.connect(PG_BASE, autocommit=True) as conn:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
    gate = PgGate()
    try:
        yield gate, f"{gate.base_dsn}?options=-csearch_path%3D{schema}"
    finally:
        await gate.close()
        async with await psycopg.AsyncConnection.connect(PG_BASE, autocommit=True) as conn:
            await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


# ---- item 6: a frozen Redis ----------------------------------------------------------------

@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path / "redis", durability="everysec")
    server.start()
    try:
        yield server
    finally:
        if server.process is not None:
            os.kill(server.process.pid, signal.SIGCONT)
        server.stop()


def test_a_blocking_outbox_read_must_stay_below_the_read_timeout() -> None:
    """XREADGROUP BLOCK holds its reply back for block_ms: at the read timeout every quiet
    read would end as a timeout (and drop its connection)."""
    with pytest.raises(ValueError, match="block_ms"):
        WorkerConfig(outbox=OutboxConfig(block_ms=5000), redis=RedisTimeouts(read_s=5.0))
    WorkerConfig(outbox=OutboxConfig(block_ms=200), redis=RedisTimeouts(read_s=5.0))


async def fails_within(call: Awaitable[object], guard_s: float) -> float:
    """Seconds until `call` failed as a Redis outage; the test fails if it hangs instead."""
    start = time.monotonic()
    try:
        await asyncio.wait_for(call, guard_s)
    except (RedisConnectionError, RedisTimeoutError, StoreUnavailable):
        return time.monotonic() - start
    except TimeoutError:
        pytest.fail(f"the call still hung after {guard_s}s: no Redis timeout")
    pytest.fail("the call succeeded against a frozen Redis")


async def test_outbox_and_push_tasks_that_fail_at_start_are_started_again(
    redis: Redis, redis_server: EmbeddedRedis, tmp_path: Path, sim_factory: object,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Each task retries its own batches, but a Redis that froze as the worker started failed
    the steps before their loops (the outbox's group check, the pusher's migration): the
    task ended, said so only at shutdown, and nothing was read or pushed until a restart."""
    sim = sim_factory("standard")  # type: ignore[operator]
    settings = settings_with(tmp_path, {"market": channel_for("standard", sim)})
    failed: list[str] = []

    def failing_once(name: str, run: Callable[..., Awaitable[None]]) -> Callable[..., Any]:
        async def first_call_fails(self: object, stop: asyncio.Event) -> None:
            if name not in failed:
                failed.append(name)
                raise RedisTimeoutError("Timeout reading from 127.0.0.1 (as on a frozen Redis)")
            await run(self, stop)
        return first_call_fails

    monkeypatch.setattr(OutboxConsumer, "run", failing_once("outbox", OutboxConsumer.run))
    monkeypatch.setattr(Propagator, "run", failing_once("propagation", Propagator.run))
    engine = StockEngine(redis, settings)
    await engine.load_scripts()
    caplog.set_level(logging.ERROR, logger="stockgate.worker")
    async with worker_running(settings, redis_server.url) as (worker, _):
        await engine.adjust(T, "TEE", reason="receipt", idempotency_key="r", delta=7)

        async def pushed() -> bool:
            return sim.state.count("TEE", "main") == 7

        await wait_for(pushed, 10)  # read from the outbox and pushed: both tasks run again
        assert sorted(failed) == ["outbox", "propagation"]
        assert runtime_of(worker).restarts == {"outbox": 1, "propagation": 1}
        # Said when it happened, with the error, not at shutdown.
        assert sum("failed; starting it again" in r.getMessage() for r in caplog.records) == 2


@pytest.mark.parametrize("make_pool", [worker_redis, lambda url, t: connect(
    url, socket_connect_timeout=t.connect_s, socket_timeout=t.read_s)], ids=["worker", "engine"])
async def test_calls_on_a_frozen_redis_fail_together_not_one_connect_after_another(
    private_redis: EmbeddedRedis, make_pool: Callable[[str, RedisTimeouts], Redis]
) -> None:
    """redis-py 5's pool connects new connections one at a time under its lock: against a
    frozen Redis (the kernel still accepts the connection; the handshake's reply never
    comes) the sixth caller waited for five read timeouts before its own."""
    timeouts = RedisTimeouts(connect_s=0.5, read_s=0.5)
    client = make_pool(private_redis.url, timeouts)
    assert private_redis.process is not None
    os.kill(private_redis.process.pid, signal.SIGSTOP)
    try:
        took = await asyncio.gather(*(fails_within(client.get(f"k{i}"), 30) for i in range(6)))
        # Every failed connect gave its slot back: a long outage does not fill the pool.
        assert not client.connection_pool._in_use_connections
    finally:
        os.kill(private_redis.process.pid, signal.SIGCONT)
        await client.aclose()
    # Each call is one handshake's read timeout (0.5 s); serialised, the last took 3 s.
    assert max(took) < 4 * timeouts.read_s, took


async def test_a_burst_on_an_empty_pool_reuses_connections_instead_of_running_out(
        redis_server: EmbeddedRedis) -> None:
    """Connects outside the pool's lock, unbounded, made one connection per concurrent
    caller: a burst past max_connections on an empty pool (a gateway at start, or after a
    Redis restart) failed as "Too many connections" (503s) where the lock had needed 19.
    Bounded, 1,000 callers made 24-32 connections here: 200 allowed leaves room for a slow
    machine, and unbounded fails 800 of them."""
    client = connect(redis_server.url, max_connections=200)
    try:
        replies = await asyncio.gather(*(client.get("k") for _ in range(1000)),
                                       return_exceptions=True)
        pool = client.connection_pool
        made = len(pool._available_connections) + len(pool._in_use_connections)
    finally:
        await client.aclose()
    assert [r for r in replies if isinstance(r, Exception)] == [], f"{made} connections"


async def test_a_task_that_keeps_failing_backs_off_and_raises_one_alert(
        redis: Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A task that fails every time it starts (a bug, say) is started again with a growing
    pause, not in a loop of tracebacks, and the operator is told: the worker reads no
    outbox, or pushes nothing, for every tenant it serves."""
    monkeypatch.setattr(runtime_module, "RESTART_MIN_S", 0.05)
    stop = asyncio.Event()
    calls: list[float] = []
    rows: list[int] = []

    async def broken(stop: asyncio.Event) -> None:
        calls.append(time.monotonic())
        raise TypeError("a bug")

    async def failed(name: str, in_a_row: int, exc: Exception) -> None:
        rows.append(in_a_row)

    task = asyncio.create_task(supervised("outbox", broken, stop, failed))
    await asyncio.sleep(1.0)
    stop.set()
    await asyncio.wait_for(task, 5)
    # 0.05 s doubling: starts at about 0, 0.05, 0.15, 0.35, 0.75 s; at no pause, hundreds.
    assert 2 <= len(calls) <= 6, len(calls)
    assert rows == list(range(1, len(calls) + 1))
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    # Each pause at least its doubling step (a busy machine only lengthens them).
    assert all(gap >= 0.9 * 0.05 * 2**i for i, gap in enumerate(gaps)), gaps

    settings = settings_with(tmp_path, {})
    runtime = WorkerRuntime(settings, redis, FAST)
    for in_a_row in range(1, FAILURES_BEFORE_ALERT + 3):
        await runtime._task_failed("outbox", in_a_row, TypeError("a bug"))
    [alert] = await list_alerts(redis, T, type="worker_failing")
    assert "outbox task failed 5 times in a row" in alert.detail and "TypeError" in alert.detail
    assert runtime.restarts == {"outbox": FAILURES_BEFORE_ALERT + 2}
    runtime.engine.scripts.close()


async def test_a_frozen_redis_fails_worker_calls_within_the_budget_and_the_worker_recovers(
    private_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    timeouts = RedisTimeouts(connect_s=0.5, read_s=1.0)
    config = msgspec.structs.replace(FAST, redis=timeouts)
    settings = settings_with(tmp_path, {})
    redis = Redis.from_url(private_redis.url, socket_timeout=10)
    engine = StockEngine(redis, settings)
    await engine.load_scripts()
    await engine.adjust(T, "TEE", reason="receipt", idempotency_key="r", delta=10)
    assert private_redis.process is not None
    pid = private_redis.process.pid
    try:
        async with worker_running(settings, private_redis.url, config) as (worker, task):
            runtime = runtime_of(worker)
            os.kill(pid, signal.SIGSTOP)  # frozen: connections open, nothing answers
            try:
                budget = timeouts.read_s + 1.5  # slack for a loaded machine
                # arq's pool (the outbox consumer, the pusher, alerts, arq's own polling)...
                assert await fails_within(runtime.redis.get("k"), 8 * budget) < budget
                # ...and the stock engine's own connection (expiry's script calls).
                assert await fails_within(runtime.engine.expire(T), 8 * budget) < budget
                await asyncio.sleep(2 * timeouts.read_s)  # several failed polls
                assert not task.done(), "the worker stopped on a Redis timeout"
            finally:
                os.kill(pid, signal.SIGCONT)

            # Recovered by itself: expiry runs again, the outbox is read and acknowledged.
            await engine.hold(T, [Line("TEE", 2)], hold_id="h-after", ttl_s=1)
            assert await reserved(engine, "TEE") == 2

            async def expired() -> bool:
                return await reserved(engine, "TEE") == 0

            await wait_for(expired, 10)

            async def outbox_done() -> bool:
                return (await unread_entries(redis, T) == 0
                        and await pending_entries(redis, T) == 0)

            await wait_for(outbox_done, 10)
            assert not task.done()
    finally:
        engine.scripts.close()
        await redis.aclose()


# ---- item 7: a count job that meets a transient error --------------------------------------

async def test_a_count_job_is_retried_through_an_audit_outage_and_applied(
    redis: Redis, redis_server: EmbeddedRedis, tmp_path: Path, pg_gate: tuple[PgGate, str],
    caplog: pytest.LogCaptureFixture
) -> None:
    """A person set SKU-1 to 30 in the channel's admin; the webhook was answered 202. The job
    judging it needs the audit trail, which is down for a while: the edit must still land."""
    gate, dsn = pg_gate
    caplog.set_level(logging.INFO)
    settings = settings_with(tmp_path, {"shop": closed_channel()}, audit_dsn=dsn)
    config = msgspec.structs.replace(FAST, count=QUICK_RETRIES)
    engine = StockEngine(redis, settings)
    await engine.load_scripts()
    await engine.adjust(T, "SKU-1", reason="receipt", idempotency_key="r", delta=10)
    async with worker_running(settings, redis_server.url, config):
        now_s, now_us = await redis.time()
        await enqueue_channel_count(redis, T, "shop", "SKU-1", "main", 30, "fp-1",
                                    now_s * 1000 + now_us // 1000, settle_s=0)

        async def retried() -> bool:
            return any("report fp-1): try 2/" in r.getMessage() for r in caplog.records)

        await wait_for(retried, 10)
        assert await on_hand(engine, "SKU-1") == 10
        await gate.open()  # PostgreSQL is reachable again

        async def applied() -> bool:
            return await on_hand(engine, "SKU-1") == 30

        await wait_for(applied, 15)
    assert await on_hand(engine, "SKU-1") == 30  # once: +20, the edit
    assert await list_alerts(redis, T, type="webhook_not_applied") == []


async def test_a_count_job_that_keeps_failing_alerts_after_bounded_tries(
    redis: Redis, redis_server: EmbeddedRedis, tmp_path: Path, pg_gate: tuple[PgGate, str]
) -> None:
    _gate, dsn = pg_gate  # never opened
    settings = settings_with(tmp_path, {"shop": closed_channel()}, audit_dsn=dsn)
    config = msgspec.structs.replace(
        FAST, count=msgspec.structs.replace(QUICK_RETRIES, max_tries=3))
    engine = StockEngine(redis, settings)
    await engine.load_scripts()
    await engine.adjust(T, "SKU-1", reason="receipt", idempotency_key="r", delta=10)
    async with worker_running(settings, redis_server.url, config):
        await enqueue_channel_count(redis, T, "shop", "SKU-1", "main", 30, "fp-2", 1, 0)

        async def alerted() -> bool:
            return bool(await list_alerts(redis, T, type="webhook_not_applied"))

        await wait_for(alerted, 15)
    [alert] = await list_alerts(redis, T, type="webhook_not_applied")
    assert (alert.channel, alert.ref) == ("shop", "fp-2")
    assert "SKU-1" in alert.detail and "3 tries" in alert.detail, alert.detail
    assert await on_hand(engine, "SKU-1") == 10


# ---- item 8: PostgreSQL down at start ------------------------------------------------------

async def test_worker_starts_without_postgres_and_loses_no_audit_event(
    redis: Redis, redis_server: EmbeddedRedis, tmp_path: Path, pg_gate: tuple[PgGate, str]
) -> None:
    gate, dsn = pg_gate
    settings = settings_with(tmp_path, {"shop": closed_channel()}, audit_dsn=dsn)
    engine = StockEngine(redis, settings)
    await engine.load_scripts()
    await engine.adjust(T, "TEE", reason="receipt", idempotency_key="r", delta=10)
    await engine.hold(T, [Line("TEE", 3)], hold_id="h-1", ttl_s=1)
    async with worker_running(settings, redis_server.url) as (worker, _):
        first = runtime_of(worker).consumer.name

        async def expired() -> bool:  # expiry needs only Redis
            return await reserved(engine, "TEE") == 0

        await wait_for(expired, 10)

        async def pushed() -> bool:  # so do pushes: tried (and parked, the channel is away)
            return bool(await failed_deliveries(redis, T))

        await wait_for(pushed, 10)

        async def all_read() -> bool:
            return await unread_entries(redis, T) == 0

        await wait_for(all_read, 5)
        # Read and acted on, but not acknowledged: their audit rows are not written yet.
        assert await pending_entries(redis, T) == 3  # adjust, hold, expire
    # A clean shutdown keeps a consumer that still holds entries (deleting it would drop them
    # from the group's pending list).
    assert (await consumers(redis)).get(first) == 3

    await gate.open()
    async with worker_running(settings, redis_server.url):
        async def audited() -> bool:
            return await pending_entries(redis, T) == 0

        await wait_for(audited, 15)
    stream_ids = [e[0].decode() for e in await redis.xrange(tenant_keys(T).outbox)]
    assert await audit_ids(settings) == stream_ids  # every event, once


async def test_events_route_answers_503_until_postgres_is_reachable(
    redis: Redis, tmp_path: Path, pg_gate: tuple[PgGate, str]
) -> None:
    gate, dsn = pg_gate
    settings = settings_with(tmp_path, {}, audit_dsn=dsn)
    async with gateway_client(settings, redis) as client:  # starts without PostgreSQL
        r = await client.post("/v1/stock/TEE/adjust", json={
            "delta": 4, "reason": "receipt", "idempotency_key": "r"})
        assert r.status_code == 200, r.text  # stock needs only Redis
        r = await client.get("/v1/events")
        assert r.status_code == 503, r.text
        assert r.json()["error"] == "unavailable"
        assert int(r.headers["Retry-After"]) >= 1
        await gate.open()
        await asyncio.sleep(RECONNECT_EVERY_S)

        async def answered() -> bool:
            return (await client.get("/v1/events")).status_code == 200

        await wait_for(answered, 10, interval=0.2)
        assert (await client.get("/v1/events")).json()["events"] == []  # no worker ran

        # Down again while connected (the server went away mid-session): 503, not a 500.
        await gate.close()
        r = await client.get("/v1/events")
        assert r.status_code == 503, r.text
        assert int(r.headers["Retry-After"]) >= 1
        await gate.open()
        await wait_for(answered, 10, interval=0.2)


# ---- item 12: the per-second cron is quiet -------------------------------------------------

async def test_per_second_expiry_is_not_logged_at_info_but_other_jobs_are(
    redis: Redis, redis_server: EmbeddedRedis, tmp_path: Path,
    caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    settings = settings_with(tmp_path, {"shop": closed_channel()})
    engine = StockEngine(redis, settings)
    await engine.load_scripts()
    await engine.adjust(T, "TEE", reason="receipt", idempotency_key="r", delta=10)
    await engine.hold(T, [Line("TEE", 1)], hold_id="h-1", ttl_s=1)
    async with worker_running(settings, redis_server.url):
        await enqueue_channel_count(redis, T, "shop", "TEE", "main", 10, "fp-3", 1, 0)

        async def expired() -> bool:  # the expiry cron ran, more than once
            return await reserved(engine, "TEE") == 0

        await wait_for(expired, 10)
        await asyncio.sleep(1.5)
        # arq's job lines: "→ <job>(args)" at the start, "← <job> ● result" at the end.
        job_lines = [r.getMessage() for r in caplog.records if r.name == "arq.worker"
                     and r.levelno == logging.INFO and ("→" in r.msg or "←" in r.msg)]
        assert any("apply_channel_count" in m for m in job_lines), job_lines
        assert not [m for m in job_lines if "expire_job" in m]

        # With arq's logger at DEBUG the lines are there, at DEBUG.
        caplog.clear()
        caplog.set_level(logging.DEBUG, logger="arq.worker")
        await asyncio.sleep(1.5)
        quiet = [r for r in caplog.records if "expire_job" in r.getMessage()]
        assert quiet and {r.levelno for r in quiet} == {logging.DEBUG}


# ---- item 10: consumer names do not pile up ------------------------------------------------

async def test_a_stop_signal_ends_the_worker_even_when_one_cancel_is_lost(
        redis_server: EmbeddedRedis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On SIGTERM arq cancels its main task once. redis-py 5 sends every command under
    asyncio.wait_for, which on Python 3.11 returns the command's result when the cancel lands
    as the command completes: the cancel is lost and the worker polled on, until killed. The
    loss is made certain here: one poll swallows the cancel, as wait_for does."""
    monkeypatch.setattr(worker_settings, "RECANCEL_S", 0.2)
    armed, inside, lost = asyncio.Event(), asyncio.Event(), asyncio.Event()
    original = StockgateWorker._poll_iteration

    async def poll_losing_one_cancel(self: StockgateWorker) -> None:
        if not armed.is_set() or lost.is_set():
            return await original(self)
        inside.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            lost.set()  # returned as if the command had completed: the loop goes on

    monkeypatch.setattr(StockgateWorker, "_poll_iteration", poll_losing_one_cancel)
    async with worker_running(settings_with(tmp_path, {}), redis_server.url) as (worker, _):
        armed.set()
        await asyncio.wait_for(inside.wait(), 5)
        worker.handle_sig(signal.SIGTERM)
        done, _ = await asyncio.wait({worker.main_task}, timeout=5)
        assert lost.is_set(), "the first cancel was not the one lost"
        assert done, "the worker kept running after its stop signal"


async def test_consumers_are_deleted_at_shutdown_and_idle_ones_at_start(
    redis: Redis, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    settings = settings_with(tmp_path, {})
    config = msgspec.structs.replace(
        FAST, outbox=msgspec.structs.replace(FAST.outbox, forget_idle_s=0.2))
    engine = StockEngine(redis, settings)
    await engine.load_scripts()
    outbox = tenant_keys(T).outbox
    await redis.xgroup_create(outbox, CONSUMER_GROUP, id="0", mkstream=True)
    await engine.adjust(T, "TEE", reason="receipt", idempotency_key="r", delta=10)
    # Two consumers of past processes: one died holding an entry, one holding nothing.
    await redis.xreadgroup(CONSUMER_GROUP, "ghost-pending", {outbox: ">"}, count=1)
    await redis.xreadgroup(CONSUMER_GROUP, "ghost-idle", {outbox: ">"}, count=1)
    assert await consumers(redis) == {"ghost-pending": 1, "ghost-idle": 0}
    await asyncio.sleep(0.3)

    async with worker_running(settings, redis_server.url, config) as (worker, _):
        first = runtime_of(worker).consumer.name
        found = await consumers(redis)
        assert "ghost-idle" not in found  # idle, nothing pending: deleted at start
        assert "ghost-pending" in found  # its entry is not dropped...

        async def claimed() -> bool:  # ...but claimed and finished by the live worker
            return (await consumers(redis))["ghost-pending"] == 0

        await wait_for(claimed, 10)
        await engine.hold(T, [Line("TEE", 1)], hold_id="h-1")

        async def acked() -> bool:
            return await pending_entries(redis, T) == 0 and await unread_entries(redis, T) == 0

        await wait_for(acked, 5)
    assert await consumers(redis) == {"ghost-pending": 0}  # its own name went at shutdown
    assert first not in await consumers(redis)

    await asyncio.sleep(0.3)
    async with worker_running(settings, redis_server.url, config):
        pass
    assert await consumers(redis) == {}
    assert len(await audit_ids(settings)) == 2  # the adjust and the hold, once each


async def test_redis_errors_while_starting_jobs_do_not_use_up_the_job_slots(
    redis: Redis, redis_server: EmbeddedRedis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis failing at the moment arq starts a job (more times than the worker has job
    slots) must not leave the worker unable to run jobs once Redis answers again."""
    settings = settings_with(tmp_path, {"shop": closed_channel()})
    engine = StockEngine(redis, settings)
    await engine.load_scripts()
    await engine.adjust(T, "SKU-1", reason="receipt", idempotency_key="r", delta=10)
    await enqueue_channel_count(redis, T, "shop", "SKU-1", "main", 12, "fp-4", 1, 0)
    failures = 0
    real_watch = Pipeline.watch

    async def flaky_watch(self: Pipeline, *names: object) -> object:
        # arq WATCHes a job's in-progress key as it starts the job: time out there 5 times.
        nonlocal failures
        if failures < 5:
            failures += 1
            raise RedisTimeoutError("Timeout reading from Redis")
        return await real_watch(self, *names)

    monkeypatch.setattr(Pipeline, "watch", flaky_watch)
    async with worker_running(settings, redis_server.url, FAST,
                              max_jobs=2, cron_jobs=[]) as (_, task):
        async def applied() -> bool:
            return await on_hand(engine, "SKU-1") == 12

        await wait_for(applied, 10)
        assert failures == 5 and not task.done()
