"""stockgate/activity.py against the test server: counters flushed and summed per step, a
flush that fails keeping its counts, lag samples from dirty-since to a landed push, channel
sync states built from real keys, and the whole path with a running worker and a simulator."""

from __future__ import annotations

import base64
import logging
import socket
from pathlib import Path

import msgspec
import pytest
from redis.asyncio import Redis
from workers_helpers import channel_for, running_worker, settings_with, settled, wait_for

from stockgate import activity
from stockgate.activity import ChannelSync, Tally, channel_sync, last_seconds, series
from stockgate.alerts import raise_alert
from stockgate.deliveries import (
    FailedDelivery,
    encode_failed,
    failed_deliveries,
    mark_dirty,
    member_of,
    retry_delivery,
)
from stockgate.embedded import EmbeddedRedis
from stockgate.keys import worker_keys
from stockgate.models import Line
from stockgate.settings import Channel, Settings
from stockgate.stock import StockEngine
from workers.simulators import SimulatorServer

T = "default"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def redis_now(redis: Redis) -> int:
    return await activity.redis_now_ms(redis)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- Tally, series, last_seconds ------------------------------------------------------------

async def test_tally_flush_lands_in_minute_hashes_and_steps(redis: Redis) -> None:
    now_ms = await redis_now(redis)
    now_s = now_ms // 1000
    clock = Clock(now_s)
    tally = Tally(clock)
    tally.count(T, "holds")
    tally.count(T, "holds", 2)
    tally.count(T, "refusals")
    clock.now = now_s - 61  # the minute before, and another step
    tally.count(T, "holds", 5)
    clock.now = now_s - 700  # outside a 10-minute window
    tally.count(T, "holds", 100)
    tally.count("other", "holds", 7)  # another tenant
    await tally.flush(redis)
    assert tally.pending() == {}

    key = activity.activity_key(T, now_s // 60)
    assert key == f"sg:{{{T}}}:activity:{now_s // 60}"
    assert int(await redis.hget(key, f"holds|{now_s}")) == 3
    assert 0 < await redis.ttl(key) <= activity.RETENTION_S

    got = await series(redis, T, ["holds", "refusals", "changes"], now_ms=now_ms)
    assert got.step_s == 10 and got.window_s == 600 and len(got.values["holds"]) == 60
    assert got.start_ms == ((now_s // 10) - 59) * 10 * 1000
    assert got.values["holds"][-1] == 3  # the current step is the last
    assert got.values["holds"][(now_s - 61 - got.start_ms // 1000) // 10] == 5
    assert sum(got.values["holds"]) == 8  # the 700 s old count is outside the window
    assert sum(got.values["refusals"]) == 1 and sum(got.values["changes"]) == 0

    assert await last_seconds(redis, T, ["holds", "refusals"], 60, now_ms=now_ms) == {
        "holds": 3, "refusals": 1}
    assert (await last_seconds(redis, T, ["holds"], 62, now_ms=now_ms))["holds"] == 8
    assert (await last_seconds(redis, "other", ["holds"], 60, now_ms=now_ms))["holds"] == 0

    # A second flush adds to what is there (HINCRBY), it does not overwrite.
    clock.now = now_s
    tally.count(T, "holds", 4)
    await tally.flush(redis)
    assert (await last_seconds(redis, T, ["holds"], 60, now_ms=now_ms))["holds"] == 7
    # Without now_ms, Redis's clock: the counts of this second are in the last minute.
    assert (await last_seconds(redis, T, ["holds"], 120))["holds"] >= 7


async def test_failed_flush_keeps_counts_for_the_next(redis: Redis,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    dead = Redis(port=closed_port(), socket_connect_timeout=0.5, socket_timeout=0.5)
    now_s = (await redis_now(redis)) // 1000
    clock = Clock(now_s)
    tally = Tally(clock)
    tally.count(T, "changes", 3)
    clock.now = now_s - activity.RETENTION_S - 5  # would be dropped: no reader sees it
    tally.count(T, "changes", 50)
    clock.now = now_s
    with caplog.at_level(logging.INFO, logger="stockgate.activity"):
        await tally.flush(dead)  # never raises
        tally.count(T, "changes", 2)
        await tally.flush(dead)
        assert tally.pending() == {(T, now_s, "changes"): 5}
        assert [r.levelname for r in caplog.records] == ["WARNING"]  # once, not per flush
        await tally.flush(redis)
    assert tally.pending() == {}
    assert (await last_seconds(redis, T, ["changes"], 60, now_ms=now_s * 1000)
            )["changes"] == 5
    assert "flushed again" in caplog.records[-1].getMessage()
    await dead.aclose()


# ---- dirty-since and lag samples ------------------------------------------------------------

async def test_mark_keeps_first_dirty_time_and_done_records_lag(redis: Redis) -> None:
    keys = worker_keys(T)
    a, b = member_of("shop", "main", "A"), member_of("shop", "main", "B")
    await mark_dirty(redis, T, [a, b])
    first = {k.decode(): int(v) for k, v in (await redis.hgetall(keys.dirty_since)).items()}
    assert set(first) == {a, b}
    await mark_dirty(redis, T, [a])  # a second mark keeps the first time (HSETNX)
    assert int(await redis.hget(keys.dirty_since, a)) == first[a]

    # `a` landed (the finish forgot its version); `b` was re-marked during the push (its
    # version is still there): a sample each, `b` stays dirty from the claim's time.
    await redis.hdel(keys.versions, a)
    claim_ms = first[b] + 1
    assert await activity.record_done(redis, T, "shop", [a, b], claim_ms) == 2
    assert await redis.hget(keys.dirty_since, a) is None
    assert int(await redis.hget(keys.dirty_since, b)) == claim_ms
    samples = activity._lag_samples(await redis.lrange(activity.lag_key(T, "shop"), 0, -1))
    assert len(samples) == 2
    assert all(0 <= lag < 5000 and at >= first[a] for at, lag in samples)
    assert 0 < await redis.pttl(activity.lag_key(T, "shop")) <= activity.LAG_TTL_MS
    # A target without a dirty-since time (marked before this release) gives no sample.
    assert await activity.record_done(redis, T, "shop", [a], claim_ms) == 0
    state = await redis.hgetall(activity.channel_state_key(T))
    assert int(state[b"shop|ok"]) >= first[a]


def test_nearest_rank_percentiles() -> None:
    values = list(range(1, 101))
    assert activity.nearest_rank(values, 50) == 50.0
    assert activity.nearest_rank(values, 99) == 99.0
    assert activity.nearest_rank([7], 99) == 7.0
    assert activity.nearest_rank([], 50) is None
    assert activity.nearest_rank([1, 2, 3, 4], 50) == 2.0


def test_scrub_removes_credentials_and_bounds() -> None:
    woo = Channel(kind="woocommerce", secret="hook-secret-1", access_token="ck_abc123:cs_def456",
                  api_url="https://user:pw-9@shop.example/wp-json")
    basic = base64.b64encode(b"ck_abc123:cs_def456").decode()
    text = activity.scrub(f"woo: HTTP 401 echo ck_abc123 cs_def456 {basic} hook-secret-1 "
                          f"pw-9 " + "x" * 600, woo)
    for secret in ("ck_abc123", "cs_def456", basic, "hook-secret-1", "pw-9"):
        assert secret not in text
    assert len(text) == activity.ERROR_TEXT_MAX


# ---- channel_sync ---------------------------------------------------------------------------

def four_channels(tmp_path: Path) -> Settings:
    def ch(kind: str, tenant: str = T) -> Channel:
        return Channel(kind=kind, secret="s", tenant=tenant, api_url="http://127.0.0.1:9",
                       access_token="tok-SECRET", rate_limit_per_s=2.0)
    return settings_with(tmp_path, {"sync": ch("shopify"), "wait": ch("woocommerce"),
                                    "broken": ch("bigcommerce"), "drift": ch("generic"),
                                    "elsewhere": ch("generic", "acme")})


def by_name(rows: list[ChannelSync]) -> dict[str, ChannelSync]:
    return {r.channel: r for r in rows}


async def test_channel_sync_states_from_real_keys(redis: Redis, tmp_path: Path) -> None:
    settings = four_channels(tmp_path)
    keys = worker_keys(T)
    now = await redis_now(redis)
    rows = await channel_sync(redis, settings, T, now_ms=now)
    assert [r.channel for r in rows] == ["broken", "drift", "sync", "wait"]  # sorted, own
    assert {r.state for r in rows} == {"in_sync"}
    assert rows[0].kind == "bigcommerce" and rows[0].last_error is None
    assert rows[0].lag_p50_ms is None and len(rows[0].lag_series) == 60

    await mark_dirty(redis, T, [member_of("wait", "main", "A"), member_of("wait", "main", "B")])
    await redis.hset(keys.failed, "d1", encode_failed(FailedDelivery(
        id="d1", tenant=T, channel="broken", sku="A", location="main", attempts=6,
        last_error="HTTP 500", failed_at=now)))
    await raise_alert(redis, T, "drift", "shows 3", channel="drift", sku="A")
    await raise_alert(redis, T, "delivery_failing", "not drift", channel="sync", sku="A")
    await redis.set(keys.rate("wait"), now + 45_000)  # a Retry-After hold
    await redis.set(keys.rate("sync"), now + 300)  # the pace alone (500 ms per call)
    rows = await channel_sync(redis, settings, T)
    got = by_name(rows)
    assert got["wait"].state == "pending" and got["wait"].pending == 2
    assert got["wait"].throttled_until_ms == now + 45_000
    assert got["sync"].throttled_until_ms == 0
    assert got["broken"].state == "failing" and got["broken"].failed == 1
    assert got["drift"].state == "drifting" and got["drift"].last_drift_ms > 0
    assert got["sync"].state == "in_sync" and got["sync"].last_drift_ms == 0

    # A push error with no later success fails the channel; a later success clears it.
    await activity.record_error(redis, T, "sync", "sync: HTTP 502 tok-SECRET " + "y" * 900,
                                settings.channels["sync"])
    got = by_name(await channel_sync(redis, settings, T))
    assert got["sync"].state == "failing"
    error = got["sync"].last_error
    assert error is not None and "tok-SECRET" not in error.error
    assert len(error.error) <= 500 and error.error.startswith("sync: HTTP 502")
    assert error.ts >= now
    await activity.record_done(redis, T, "sync", [], now)
    got = by_name(await channel_sync(redis, settings, T))
    assert got["sync"].state == "in_sync" and got["sync"].last_error == error
    # An error older than two minutes no longer fails a channel (its pushes may be idle).
    await activity.record_error(redis, T, "sync", "again", settings.channels["sync"])
    later = by_name(await channel_sync(redis, settings, T, now_ms=now + 3 * 60_000))
    assert later["sync"].state == "in_sync"
    # Drift older than ten minutes is no longer drifting.
    later = by_name(await channel_sync(redis, settings, T, now_ms=now + 11 * 60_000))
    assert later["drift"].state == "in_sync"
    # A count the channel dropped on its own is drift too (over pending).
    await raise_alert(redis, T, "channel_moved_unexplained", "fell by 2", channel="wait")
    assert by_name(await channel_sync(redis, settings, T))["wait"].state == "drifting"

    # Lag: nearest-rank over the last five minutes, per 10 s step over the last ten.
    lag = activity.lag_key(T, "sync")
    await redis.lpush(lag, f"{now - 8 * 60_000}:99999",
                      *(f"{now - 1000}:{v}" for v in range(1, 101)))
    tally = Tally(Clock(now / 1000))
    tally.count(T, "push_ok:sync", 4)
    tally.count(T, "push_fail:sync", 1)
    await tally.flush(redis)
    got = by_name(await channel_sync(redis, settings, T, now_ms=now))
    assert got["sync"].lag_p50_ms == 50.0 and got["sync"].lag_p99_ms == 99.0
    assert got["sync"].pushes_last_minute == 4 and got["sync"].push_errors_last_minute == 1
    series_rows = got["sync"].lag_series
    assert series_rows[-1][0] <= now < series_rows[-1][0] + 10_000  # the current step last
    for at, p50 in ((now - 1000, 50.0), (now - 8 * 60_000, 99999.0)):
        row = next(r for r in series_rows if r[0] <= at < r[0] + 10_000)
        assert row[1] == p50, (at, row)
    assert sum(1 for row in series_rows if row[1] is None) == 58
    # The contract's JSON shape, field for field.
    shape = msgspec.json.decode(msgspec.json.encode(got["sync"]))
    assert list(shape) == ["channel", "kind", "state", "pending", "failed", "lag_p50_ms",
                           "lag_p99_ms", "lag_series", "pushes_last_minute",
                           "push_errors_last_minute", "throttled_until_ms", "last_error",
                           "last_drift_ms"]
    assert shape["last_error"]["error"] == "again" and shape["last_error"]["ts"] >= error.ts


# ---- the whole path -------------------------------------------------------------------------

async def test_worker_records_lag_and_tallies(redis: Redis, redis_server: EmbeddedRedis,
                                              tmp_path: Path) -> None:
    sim = SimulatorServer("woocommerce").start()
    try:
        # T, not the default tenant: in Cluster mode T is one of the shards' tenants.
        settings = settings_with(tmp_path, {"woo": msgspec.structs.replace(
            channel_for("woocommerce", sim), tenant=T)})
        engine = StockEngine(redis, settings)
        await engine.load_scripts()
        async with running_worker(settings, redis_server.url):
            for n in range(5):
                await engine.adjust(T, f"SKU-{n}", reason="receipt", idempotency_key=f"r{n}",
                                    delta=10)
            # More than there is: refused, an oversell_rejected event.
            await engine.order(T, "o-1", [Line(sku="SKU-0", qty=50)], channel="woo")

            async def counted() -> bool:
                got = await last_seconds(redis, T, ["changes", "oversell_attempts",
                                                    "push_ok:woo"], 120)
                return all(got.values()) and await settled(redis, T)
            await wait_for(counted, 15)
        rows = await channel_sync(redis, settings, T)
        engine.scripts.close()
    finally:
        sim.stop()
    assert len(rows) == 1
    woo = rows[0]
    assert woo.state == "in_sync" and woo.pending == 0 and woo.failed == 0
    samples = activity._lag_samples(await redis.lrange(activity.lag_key(T, "woo"), 0, -1))
    assert len(samples) >= 5
    assert woo.lag_p50_ms is not None and woo.lag_p99_ms is not None
    assert 0 <= woo.lag_p50_ms <= woo.lag_p99_ms < 10_000
    assert woo.pushes_last_minute >= 5
    assert await redis.hlen(worker_keys(T).dirty_since) == 0  # every landed target timed
    got = await last_seconds(redis, T, ["changes", "oversell_attempts"], 120)
    assert got["changes"] >= 6 and got["oversell_attempts"] == 1


async def test_worker_failing_channel_then_recovered(redis: Redis, redis_server: EmbeddedRedis,
                                                     tmp_path: Path) -> None:
    sim = SimulatorServer("woocommerce").start()
    sim.state.fail_ratio = 1.0  # every call answers 500
    try:
        channel = msgspec.structs.replace(channel_for("woocommerce", sim), tenant=T,
                                          access_token="ck_live_1:cs_live_2")
        settings = settings_with(tmp_path, {"woo": channel})
        engine = StockEngine(redis, settings)
        await engine.load_scripts()
        async with running_worker(settings, redis_server.url):
            await engine.adjust(T, "SKU-F", reason="receipt", idempotency_key="f1", delta=3)

            async def parked() -> bool:
                row = (await channel_sync(redis, settings, T))[0]
                return row.failed == 1 and row.push_errors_last_minute >= 3
            await wait_for(parked, 15)
            row = (await channel_sync(redis, settings, T))[0]
            assert row.state == "failing" and row.pending == 0
            assert row.last_error is not None and "HTTP 500" in row.last_error.error
            assert "cs_live_2" not in row.last_error.error
            assert row.lag_p50_ms is None  # nothing landed
            # Parked: its dirty-since is forgotten, a retry is timed from its own mark.
            assert await redis.hlen(worker_keys(T).dirty_since) == 0

            sim.state.fail_ratio = 0.0
            [delivery] = await failed_deliveries(redis, T)
            await retry_delivery(redis, T, delivery.id)

            async def recovered() -> bool:
                row = (await channel_sync(redis, settings, T))[0]
                return row.state == "in_sync" and row.lag_p50_ms is not None
            await wait_for(recovered, 15)
        engine.scripts.close()
    finally:
        sim.stop()
    row = (await channel_sync(redis, settings, T))[0]
    assert row.failed == 0 and row.pushes_last_minute >= 1
    assert row.lag_p99_ms is not None and 0 <= row.lag_p99_ms < 10_000
