"""Per-tenant activity for the operator console: counters of what happened each second (holds,
refusals, changes, pushes...), each channel's propagation lag, and each channel's sync state.

Counters are counted in process (Tally.count: a dict increment on the hot path, no I/O) and
flushed about once a second, one pipeline of HINCRBY per flush, into per-minute hashes
`sg:{t}:activity:<epoch minute>` with fields `<name>|<epoch second>`, kept 15 minutes. Readers
(series, last_seconds) sum the seconds they cover. A second is stamped by the counting host's
clock: hosts are NTP-synced within milliseconds, and a counter that lands in the neighbouring
second moves a chart by one bar, which is not worth a Redis call per count.

Propagation lag is the time from a target's first mark dirty (stockgate.deliveries._MARK
writes WorkerKeys.dirty_since) to the push that made the channel hold it (record_done, from
workers/propagation.py), one sample per target per push, kept in a capped list per channel
`sg:{t}:lag:<channel>` of "<Redis ms>:<lag ms>". Channel errors and successes go into one hash
`sg:{t}:chan-error` (field <channel>: the newest error as JSON {ts, error}; field
"<channel>|ok": Redis ms of the newest accepted push), so that a channel's state can tell a
failure that still stands from one that a later push got past.

Every key is under the tenant's hash tag, so a pipeline or script of one tenant is one slot on
a Cluster (stockgate.cluster.StockCluster) too.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import msgspec
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from stockgate.alerts import MAX_ALERTS, Alert
from stockgate.deliveries import REDIS_NOW, FailedDelivery
from stockgate.keys import tenant_keys, worker_keys
from stockgate.settings import Channel, Settings

log = logging.getLogger("stockgate.activity")

Store = Redis | RedisCluster

# Per-minute counter hashes live this long: the console's longest window (10 minutes) plus
# room for a flush that was late. Counts a failing flush keeps are dropped past it too (no
# reader could see them any more).
RETENTION_S = 15 * 60
# Lag samples: enough for a busy channel's last minutes (the console reads 10), an hour at
# most for a quiet one.
LAG_KEPT = 2000
LAG_TTL_MS = 60 * 60 * 1000
ERROR_TEXT_MAX = 500
SECRET_MIN = 4
PART_MIN = 8  # a user name of user:password, redacted alone (see redact)
# channel_sync windows.
LAG_WINDOW_MS = 5 * 60 * 1000
LAG_SERIES_WINDOW_S = 600
LAG_SERIES_STEP_S = 10
FAILING_RECENT_MS = 2 * 60 * 1000
DRIFT_RECENT_MS = 10 * 60 * 1000
DRIFT_ALERTS = ("drift", "channel_moved_unexplained")


def activity_key(tenant: str, minute: int) -> str:
    return f"{tenant_keys(tenant).prefix}activity:{minute}"


def lag_key(tenant: str, channel: str) -> str:
    return f"{tenant_keys(tenant).prefix}lag:{channel}"


def channel_state_key(tenant: str) -> str:
    return tenant_keys(tenant).prefix + "chan-error"


def _ok_field(channel: str) -> str:
    # Channel names never hold "|" (settings.NAME_PATTERN): no clash with an error field.
    return channel + "|ok"


class Tally:
    """In-process counters keyed (tenant, second, name), written to Redis by flush()."""

    __slots__ = ("_clock", "_counts", "_failing")

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock  # epoch seconds; tests pass their own
        self._counts: dict[tuple[str, int, str], int] = {}
        self._failing = False

    def count(self, tenant: str, name: str, n: int = 1) -> None:
        """O(1), no I/O: runs on every hold of a flash sale."""
        key = (tenant, int(self._clock()), name)
        counts = self._counts
        counts[key] = counts.get(key, 0) + n

    def pending(self) -> dict[tuple[str, int, str], int]:
        """A copy of the counts not flushed yet (tests, diagnostics)."""
        return dict(self._counts)

    async def flush(self, redis: Store) -> None:
        """Write every pending count in one non-transactional pipeline (one slot per tenant on
        a Cluster: no MULTI needed, and none exists there). Never raises for Redis: on an
        error the counts are kept for the next flush, those past RETENTION_S dropped."""
        if not self._counts:
            return
        # Swapped, not copied and cleared: counts made while the pipeline is in flight (and a
        # concurrent flush, the final one at shutdown) go to the new dict and are not lost.
        batch, self._counts = self._counts, {}
        minutes: set[tuple[str, int]] = set()
        try:
            async with redis.pipeline(transaction=False) as pipe:
                for (tenant, second, name), n in batch.items():
                    key = activity_key(tenant, second // 60)
                    pipe.hincrby(key, f"{name}|{second}", n)
                    minutes.add((tenant, second // 60))
                for tenant, minute in minutes:
                    pipe.expire(activity_key(tenant, minute), RETENTION_S)
                await pipe.execute()
        except Exception as exc:  # Redis down, a Cluster moving: counters must not break
            # A reply lost after the server applied part of the pipeline counts those twice
            # on the retry: these are console charts, not stock, and a gap would be worse.
            oldest = int(self._clock()) - RETENTION_S
            for key, n in batch.items():
                if key[1] >= oldest:
                    self._counts[key] = self._counts.get(key, 0) + n
            if not self._failing:
                log.warning("activity counters not flushed (kept for the next try): %s: %s",
                            type(exc).__name__, exc)
            self._failing = True
            return
        if self._failing:
            log.info("activity counters flushed again")
        self._failing = False

    async def run(self, redis: Store, stop: asyncio.Event, interval_s: float = 1.0) -> None:
        """Flush every `interval_s` until `stop` is set, then once more."""
        while not stop.is_set():
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
            # cancellation that lands as its inner wait finishes, and this task would then
            # outlive the worker that cancelled it.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval_s):
                    await stop.wait()
            await self.flush(redis)
        await self.flush(redis)


class Series(msgspec.Struct, frozen=True):
    start_ms: int  # start of the first step (aligned to step_s)
    step_s: int
    window_s: int
    values: dict[str, list[int]]  # name -> one count per step, oldest first


async def redis_now_ms(redis: Store) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


def _queue_minutes(pipe: Any, tenant: str, first_s: int, last_s: int) -> list[int]:
    minutes = list(range(first_s // 60, last_s // 60 + 1))
    for minute in minutes:
        pipe.hgetall(activity_key(tenant, minute))
    return minutes


def _per_second(raws: Iterable[dict[bytes, bytes]], names: set[str], first_s: int,
                last_s: int) -> Iterable[tuple[str, int, int]]:
    """(name, second, count) of the wanted names within [first_s, last_s]."""
    for raw in raws:
        for field, value in raw.items():
            name, _, second = field.decode().rpartition("|")
            if name in names and second.isdigit() and first_s <= int(second) <= last_s:
                yield name, int(second), int(value)


async def series(redis: Store, tenant: str, names: Sequence[str], *, window_s: int = 600,
                 step_s: int = 10, now_ms: int | None = None) -> Series:
    """Counts per step over the last `window_s`, oldest first, zeros where nothing. Steps are
    aligned to multiples of step_s; the last one is the current (partial) step."""
    now_s = (now_ms if now_ms is not None else await redis_now_ms(redis)) // 1000
    steps = max(window_s // step_s, 1)
    start_s = (now_s // step_s - steps + 1) * step_s
    values = {name: [0] * steps for name in names}
    async with redis.pipeline(transaction=False) as pipe:
        _queue_minutes(pipe, tenant, start_s, now_s)
        raws = await pipe.execute()
    for name, second, n in _per_second(raws, set(names), start_s, now_s):
        values[name][(second - start_s) // step_s] += n
    return Series(start_ms=start_s * 1000, step_s=step_s, window_s=steps * step_s,
                  values=values)


async def last_seconds(redis: Store, tenant: str, names: Sequence[str], seconds: int,
                       now_ms: int | None = None) -> dict[str, int]:
    """Each name's total over the last `seconds` seconds, the current one included."""
    now_s = (now_ms if now_ms is not None else await redis_now_ms(redis)) // 1000
    first_s = now_s - seconds + 1
    async with redis.pipeline(transaction=False) as pipe:
        _queue_minutes(pipe, tenant, first_s, now_s)
        raws = await pipe.execute()
    totals = dict.fromkeys(names, 0)
    for name, _, n in _per_second(raws, set(names), first_s, now_s):
        totals[name] += n
    return totals


# Targets a push made the channel hold (finished "done" under their claim, workers/
# propagation.py): one lag sample each whose dirty-since time is known. A target re-marked
# during the push (its version moved: still in the versions hash) stays dirty; its newer
# change came after the claim read the version, so it is timed from the claim (ARGV[1]): an
# upper bound, late by at most one push, instead of a lost sample or a lag counted from a
# change this push already carried. Also stamps the channel's newest accepted push.
# KEYS: dirty-since hash, versions hash, the channel's lag list, the channel-state hash.
# ARGV: claim ms, list bound, list TTL ms, ok field, members...
_DONE = REDIS_NOW + """
local since_key, versions, lags, state = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local claim = tonumber(ARGV[1])
local n = 0
for i = 5, #ARGV do
  local m = ARGV[i]
  local since = redis.call('HGET', since_key, m)
  if since then
    if redis.call('HEXISTS', versions, m) == 1 then
      redis.call('HSET', since_key, m, claim)
    else
      redis.call('HDEL', since_key, m)
    end
    redis.call('LPUSH', lags, now .. ':' .. math.max(now - tonumber(since), 0))
    n = n + 1
  end
end
if n > 0 then
  redis.call('LTRIM', lags, 0, tonumber(ARGV[2]) - 1)
  redis.call('PEXPIRE', lags, ARGV[3])
end
redis.call('HSET', state, ARGV[4], now)
return n
"""

# The channel's newest push error, stamped with Redis's clock (the one its successes carry).
# KEYS: the channel-state hash; ARGV: channel, the error as a JSON string.
_ERROR = REDIS_NOW + """
redis.call('HSET', KEYS[1], ARGV[1], '{"ts":' .. now .. ',"error":' .. ARGV[2] .. '}')
return now
"""


async def record_done(redis: Store, tenant: str, channel: str, members: Sequence[str],
                      claim_ms: int) -> int:
    """After targets of one claim were finished "done": record their lag samples and the
    channel's success. One script call per pushed batch. Returns the samples recorded."""
    keys = worker_keys(tenant)
    return int(await redis.register_script(_DONE)(
        keys=[keys.dirty_since, keys.versions, lag_key(tenant, channel),
              channel_state_key(tenant)],
        args=[claim_ms, LAG_KEPT, LAG_TTL_MS, _ok_field(channel), *members]))


async def forget_dirty(redis: Store, tenant: str, members: Sequence[str]) -> None:
    """Targets parked after their last try: a retry marks them afresh, and their lag then
    counts from that mark, not from before the parking."""
    if members:
        await redis.hdel(worker_keys(tenant).dirty_since, *members)


def scrub(text: str, channel: Channel | None) -> str:
    """redact(), bounded to ERROR_TEXT_MAX: for an error about to be kept."""
    return redact(text, channel)[:ERROR_TEXT_MAX]


def redact(text: str, channel: Channel | None) -> str:
    """An adapter's error text without the channel's credentials, bounded. Adapters send the
    token in headers, never in URLs or messages, but an error can carry a response body (a
    channel echoing a request) or an exception's text: whatever it holds, the console (and
    Redis) never get the token, the webhook secret, or the forms they are sent in."""
    if channel is not None:
        userinfo = channel.api_url.partition("://")[2].partition("/")[0].rpartition("@")[0]
        # httpx sends api_url's user:password (percent-decoded) as a Basic auth header.
        plain = urllib.parse.unquote(userinfo)
        whole = {channel.access_token, channel.secret, userinfo, plain}
        for pair in (channel.access_token, plain):  # Basic auth: base64 of user:password
            if pair:
                whole.add(base64.b64encode(pair.encode()).decode())
        # A pair's password alone is a secret; its user name alone only when long: a short
        # one ("shop") would blank that word in every message about the channel.
        users, passwords = set(), set()
        for pair in (channel.access_token, userinfo, plain):
            user, _, password = pair.partition(":")
            users.add(user)
            passwords.add(password)
        secrets = ({s for s in whole | passwords | _marketplace_secrets(channel)
                    if len(s) >= SECRET_MIN}
                   | {s for s in users if len(s) >= PART_MIN})
        for secret in sorted(secrets, key=len, reverse=True):
            text = text.replace(secret, "[redacted]")
    return text


def _marketplace_secrets(channel: Channel) -> set[str]:
    """The credentials in the channel's marketplace table, in the forms they are sent in: a
    token endpoint echoing its request (or an exception quoting it) must not put an LWA or
    eBay refresh token, a client secret or the Basic auth of client_id:client_secret into an
    error. Form bodies carry them percent-encoded (eBay's refresh tokens hold ^ and #)."""
    raw: set[str] = set()
    pairs: list[tuple[str, str]] = []
    if channel.amazon is not None:
        raw |= {channel.amazon.lwa_client_secret, channel.amazon.lwa_refresh_token}
        pairs.append((channel.amazon.lwa_client_id, channel.amazon.lwa_client_secret))
    if channel.ebay is not None:
        raw |= {channel.ebay.client_secret, channel.ebay.refresh_token}
        pairs.append((channel.ebay.client_id, channel.ebay.client_secret))
    if channel.tiktok is not None:
        raw.add(channel.tiktok.refresh_token)
    found = set(raw)
    for secret in raw:
        found |= {urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)}
    for user, password in pairs:
        if password:  # eBay's token call sends this as its Basic auth header
            found.add(base64.b64encode(f"{user}:{password}".encode()).decode())
    return {s for s in found if s}


async def record_error(redis: Store, tenant: str, channel: str, error: str,
                       config: Channel | None = None) -> None:
    """The channel's newest push failure (scrubbed of its credentials, bounded)."""
    text = msgspec.json.encode(scrub(error, config)).decode()
    await redis.register_script(_ERROR)(keys=[channel_state_key(tenant)], args=[channel, text])


class LastError(msgspec.Struct, frozen=True):
    ts: int
    error: str


LagRow = tuple[int, float | None, float | None]  # [start_ms, p50_ms, p99_ms] of one step


SyncState = Literal["in_sync", "pending", "drifting", "failing"]


class ChannelSync(msgspec.Struct, frozen=True):
    channel: str
    kind: str
    state: SyncState
    pending: int  # targets waiting for a push (leased, in flight, included)
    failed: int  # parked deliveries
    lag_p50_ms: float | None  # over the last 5 minutes; None without samples
    lag_p99_ms: float | None
    lag_series: list[LagRow]  # 10 s steps over the last 10 minutes, oldest first
    pushes_last_minute: int
    push_errors_last_minute: int
    throttled_until_ms: int  # 0 when not throttled
    last_error: LastError | None
    last_drift_ms: int  # 0 when never


def nearest_rank(ordered: Sequence[int], p: float) -> float | None:
    """The nearest-rank percentile of sorted values; None for none."""
    if not ordered:
        return None
    return float(ordered[max(math.ceil(p / 100 * len(ordered)), 1) - 1])


def _lag_samples(raw: Iterable[bytes]) -> list[tuple[int, int]]:
    samples = []
    for entry in raw:
        at, _, lag = entry.decode().partition(":")
        if at.isdigit() and lag.isdigit():
            samples.append((int(at), int(lag)))
    return samples


def lag_figures(samples: Sequence[tuple[int, int]], now: int
                ) -> tuple[float | None, float | None, list[LagRow]]:
    """p50 and p99 over the last LAG_WINDOW_MS, and per LAG_SERIES_STEP_S step over the last
    LAG_SERIES_WINDOW_S (steps aligned like series(), oldest first)."""
    recent = sorted(lag for at, lag in samples if now - LAG_WINDOW_MS < at <= now)
    step_ms = LAG_SERIES_STEP_S * 1000
    steps = LAG_SERIES_WINDOW_S // LAG_SERIES_STEP_S
    start = (now // step_ms - steps + 1) * step_ms
    buckets: list[list[int]] = [[] for _ in range(steps)]
    for at, lag in samples:
        if start <= at <= now:
            buckets[(at - start) // step_ms].append(lag)
    rows = []
    for i, bucket in enumerate(buckets):
        bucket.sort()
        rows.append((start + i * step_ms, nearest_rank(bucket, 50), nearest_rank(bucket, 99)))
    return nearest_rank(recent, 50), nearest_rank(recent, 99), rows


_decode_failed = msgspec.json.Decoder(FailedDelivery).decode
_decode_alert = msgspec.json.Decoder(Alert).decode
_decode_error = msgspec.json.Decoder(LastError).decode


def call_interval_ms(channel: Channel) -> int:
    """workers.propagation.call_interval_ms (the gateway does not import workers)."""
    return max(int(1000 / channel.rate_limit_per_s), 1) if channel.rate_limit_per_s else 0


def sync_state(*, failed: int, pending: int, last_error: LastError | None, last_ok: int,
               last_drift_ms: int, now: int) -> SyncState:
    if failed > 0 or (last_error is not None and last_error.ts > last_ok
                      and now - last_error.ts <= FAILING_RECENT_MS):
        return "failing"
    if last_drift_ms and now - last_drift_ms <= DRIFT_RECENT_MS:
        return "drifting"
    return "pending" if pending > 0 else "in_sync"


async def channel_sync(redis: Store, settings: Settings, tenant: str,
                       now_ms: int | None = None) -> list[ChannelSync]:
    """The sync state of each of the tenant's channels, sorted by name: one pipeline of
    reads (one slot: every key is the tenant's)."""
    names = sorted(n for n, ch in settings.channels.items() if ch.tenant == tenant)
    if not names:
        return []
    now = now_ms if now_ms is not None else await redis_now_ms(redis)
    keys = worker_keys(tenant)
    now_s = now // 1000
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hvals(keys.failed)
        pipe.lrange(keys.alerts, 0, MAX_ALERTS - 1)
        pipe.hgetall(channel_state_key(tenant))
        minutes = _queue_minutes(pipe, tenant, now_s - 59, now_s)
        for name in names:
            pipe.zcard(keys.due(name))
            pipe.get(keys.rate(name))
            pipe.lrange(lag_key(tenant, name), 0, -1)
        reads = await pipe.execute()
    failed_raw, alerts_raw, state_raw = reads[0], reads[1], reads[2]
    activity_raw = reads[3:3 + len(minutes)]
    per_channel = reads[3 + len(minutes):]
    failed: dict[str, int] = {}
    for raw in failed_raw:
        record = _decode_failed(raw)
        failed[record.channel] = failed.get(record.channel, 0) + 1
    drift: dict[str, int] = {}
    for raw in alerts_raw:  # newest first: the first one of a channel is its newest
        alert = _decode_alert(raw)
        if alert.type in DRIFT_ALERTS and alert.channel and alert.channel not in drift:
            drift[alert.channel] = alert.ts
    state = {k.decode(): v for k, v in state_raw.items()}
    counted = {f"push_{kind}:{n}" for n in names for kind in ("ok", "fail")}
    last_minute = dict.fromkeys(counted, 0)
    for counter, _, n in _per_second(activity_raw, counted, now_s - 59, now_s):
        last_minute[counter] += n
    out = []
    for i, name in enumerate(names):
        channel = settings.channels[name]
        pending_raw, rate_raw, lags_raw = per_channel[3 * i:3 * i + 3]
        error_raw = state.get(name)
        last_error = _decode_error(error_raw) if error_raw else None
        last_ok = int(state.get(_ok_field(name), 0))
        # The rate key always holds the channel's next free call time: one call interval
        # ahead is the pace itself (every push books it), beyond that a 429's Retry-After
        # (hold_channel) or calls booked ahead hold the channel.
        free_at = int(rate_raw or 0)
        throttled = free_at if free_at > now + call_interval_ms(channel) else 0
        p50, p99, rows = lag_figures(_lag_samples(lags_raw), now)
        pending = int(pending_raw)
        out.append(ChannelSync(
            channel=name, kind=channel.kind,
            state=sync_state(failed=failed.get(name, 0), pending=pending,
                             last_error=last_error, last_ok=last_ok,
                             last_drift_ms=drift.get(name, 0), now=now),
            pending=pending, failed=failed.get(name, 0), lag_p50_ms=p50, lag_p99_ms=p99,
            lag_series=rows, pushes_last_minute=last_minute[f"push_ok:{name}"],
            push_errors_last_minute=last_minute[f"push_fail:{name}"],
            throttled_until_ms=throttled, last_error=last_error,
            last_drift_ms=drift.get(name, 0)))
    return out
