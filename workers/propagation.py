"""Channel propagation: every stock change reaches every channel that sells the location.

Bookkeeping lives in Redis, per tenant (see workers.keys):
- the outbox consumer marks a delivery target "<channel>|<location>|<sku>" dirty (bumps its
  version, adds it to the due zset); that is all it does per event, so a flash sale of
  thousands of changes per second to one SKU stays one entry: coalescing;
- the pusher claims due targets with a lease, reads the canonical value *at push time* (the
  newest one, whatever number of events led to it), pushes it, and removes the target only
  if no event bumped its version meanwhile; otherwise it goes round again;
- a per-channel slot in Redis spaces calls at the channel's rate limit across all workers:
  each claimed target books its own call time (the next free one, then +interval for the
  next target, and so on), so targets waiting for a busy channel are served in turn instead
  of racing for the same next slot round after round; a 429 moves the slot to the channel's
  Retry-After (book_slot, hold_channel: reconciliation's reads go through them too);
- failures retry with exponential backoff and jitter; after the last try the target is
  parked in the failed hash (GET /v1/deliveries?status=failed) and an alert is raised.
A worker that dies mid-push leaves its targets leased; the lease runs out and another worker
pushes them. Pushing twice is harmless: the value is absolute, not a delta.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import Iterable

import httpx
import msgspec
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from stockgate.errors import StockgateError, UnknownSku
from stockgate.keys import tenant_keys
from stockgate.models import Event, StockView
from stockgate.settings import Channel, Settings
from stockgate.stock import StockEngine
from workers.adapters import ChannelAdapter, PushError, adapter_for
from workers.alerts import raise_alert
from workers.keys import worker_keys

log = logging.getLogger("stockgate.propagation")


class PropagationConfig(msgspec.Struct, frozen=True):
    max_attempts: int = 6
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    # A claimed target is invisible to other workers for this long (longer than a push).
    lease_ms: int = 15_000
    claim_batch: int = 200
    concurrency: int = 32
    idle_sleep_s: float = 0.02
    http_timeout_s: float = 5.0
    # How far ahead a target may book its channel's call slot and wait for it (well under
    # lease_ms); a target whose slot would be later goes back to the queue until then.
    slot_horizon_ms: int = 2_000


class FailedDelivery(msgspec.Struct, frozen=True):
    id: str
    tenant: str
    channel: str
    sku: str
    location: str
    attempts: int
    last_error: str
    failed_at: int
    status: str = "failed"


_failed_encode = msgspec.json.Encoder().encode
_failed_decode = msgspec.json.Decoder(FailedDelivery).decode

# Claim due targets: lease them (score = now + lease) and return them with their versions.
_CLAIM = """
local due, versions = KEYS[1], KEYS[2]
local now, lease, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local members = redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, limit)
local out = {}
for _, m in ipairs(members) do
  redis.call('ZADD', due, now + lease, m)
  out[#out + 1] = m
  out[#out + 1] = redis.call('HGET', versions, m) or '0'
end
return out
"""

# Done with a target: forget it if no event bumped its version since the claim, else put it
# back for its next slot.
_COMPLETE = """
local due, versions, attempts = KEYS[1], KEYS[2], KEYS[3]
local member, seen, next_ms = ARGV[1], ARGV[2], tonumber(ARGV[3])
redis.call('HDEL', attempts, member)
if (redis.call('HGET', versions, member) or '0') == seen then
  redis.call('ZREM', due, member)
  redis.call('HDEL', versions, member)
  return 1
end
redis.call('ZADD', due, next_ms, member)
return 0
"""

# Book a call slot on a channel: the key holds the channel's next free call time. The caller
# gets the next free time if it is at most `horizon` ms away, and the one after it is then
# next free: {1, at}. Otherwise nothing is booked: {0, next free time}.
_SLOT = """
local key = KEYS[1]
local now, interval, horizon = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local at = math.max(tonumber(redis.call('GET', key) or '0'), now)
if at - now > horizon then return {0, at} end
redis.call('SET', key, at + interval, 'PX', at + interval - now + 60000)
return {1, at}
"""


def now_ms() -> int:
    return int(time.time() * 1000)


def call_interval_ms(channel: Channel) -> int:
    """Milliseconds between two calls to the channel; 0 when it sets no rate limit."""
    return max(int(1000 / channel.rate_limit_per_s), 1) if channel.rate_limit_per_s else 0


async def book_slot(redis: Redis, tenant: str, channel: str, interval: int,
                    horizon: int) -> tuple[bool, int]:
    """Book the channel's next free call time if it is at most `horizon` ms away: (True, the
    booked time). Otherwise (False, the next free time), nothing booked. Every caller of the
    channel (pushes, reconciliation) goes through here, so together they keep its rate."""
    booked, at = await redis.register_script(_SLOT)(
        keys=[worker_keys(tenant).rate(channel)], args=[now_ms(), interval, horizon])
    return bool(booked), int(at)


# Moves the channel's next free time to ARGV[1] unless it is already later: slots that pushes
# booked beyond a Retry-After must stay booked, or their callers would collide.
_HOLD = """
local key, free_at, ttl = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])
local at = tonumber(redis.call('GET', key) or '0')
if at >= free_at then return at end
redis.call('SET', key, free_at, 'PX', ttl)
return free_at
"""


async def hold_channel(redis: Redis, tenant: str, channel: str, retry_after_s: float) -> int:
    """The channel answered 429: nobody calls it before its Retry-After. Returns the channel's
    next free time (the Retry-After, or a later slot already booked)."""
    wait_ms = int(retry_after_s * 1000)
    until = await redis.register_script(_HOLD)(
        keys=[worker_keys(tenant).rate(channel)], args=[now_ms() + wait_ms, wait_ms + 60_000])
    return int(until)


def member_of(channel: str, location: str, sku: str) -> str:
    return f"{channel}|{location}|{sku}"


def parse_member(member: str) -> tuple[str, str, str]:
    channel, location, sku = member.split("|", 2)
    return channel, location, sku


def delivery_id(member: str) -> str:
    """A URL-safe id for a target (SKUs may hold any character)."""
    return hashlib.blake2b(member.encode(), digest_size=10).hexdigest()


def selling_locations(settings: Settings, channel: Channel) -> tuple[str, ...]:
    return channel.locations or (settings.tenant(channel.tenant).default_location,)


def push_location(settings: Settings, channel: Channel, location: str) -> str:
    """Where a change at `location` lands on the channel: its own location when the config
    maps it to a channel location id, else the channel's one stock figure, kept under the
    channel's first selling location."""
    if location in channel.location_map.values():
        return location
    return selling_locations(settings, channel)[0]


def channel_value(settings: Settings, channel_name: str, channel: Channel, location: str,
                  view: StockView) -> int:
    """The count the channel should show: a mapped location shows its own available; the
    channel's single figure is the sum over its locations (StockView.channels)."""
    if location in channel.location_map.values():
        cell = view.locations.get(location)
        return max(cell.available, 0) if cell else 0
    return view.channels.get(channel_name, 0)


def targets(settings: Settings, event: Event) -> list[str]:
    """Delivery targets touched by one event. The channel that caused the change is included:
    its own count moved by its own rule (a Shopify order decremented Shopify's figure), which
    may differ from the canonical value (another channel sold, a line was refused); pushing
    the canonical value is correct, and coalescing makes it cheap."""
    if event.type == "oversell_rejected" or not any(event.delta.values()):
        return []
    found = []
    for name, channel in settings.channels.items():
        if channel.tenant != event.tenant or not channel.api_url:
            continue
        if event.location in selling_locations(settings, channel):
            found.append(member_of(name, push_location(settings, channel, event.location),
                                   event.sku))
    return found


# How many recent pushes still count as echoes of ours, and for how long they are kept.
RECENT_PUSHES = 16
RECENT_PUSH_TTL_MS = 10 * 60 * 1000


# What a channel showed over time (TenantKeys.pushed_log): entries enough to span a flash
# sale's pushes during a count's settle time, kept long enough for a quiet SKU's last push.
SHOWN_PUSH = "p"  # a value we pushed, from the moment we were about to push it
SHOWN_REPORT = "r"  # a count the channel reported, from the moment the gateway received it
SHOWN_LOG_LEN = 64
SHOWN_LOG_TTL_MS = 24 * 60 * 60 * 1000


def log_shown(pipe: Pipeline, tenant: str, channel: str, ref: str, kind: str, ms: int,
              value: int) -> None:
    """Queue on `pipe` one entry of what the channel showed for `ref` from `ms` on."""
    log_key = tenant_keys(tenant).pushed_log(channel, ref)
    pipe.lpush(log_key, f"{ms}:{kind}:{value}")
    pipe.ltrim(log_key, 0, SHOWN_LOG_LEN - 1)
    pipe.pexpire(log_key, SHOWN_LOG_TTL_MS)


async def record_push(redis: Redis, tenant: str, channel: str, ref: str, value: int) -> None:
    """Remember a value about to be pushed (before the push: its echo can beat the reply)."""
    keys = tenant_keys(tenant)
    recent = keys.pushed_recent(channel, ref)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hset(keys.pushed(channel), ref, value)
        pipe.lpush(recent, value)
        pipe.ltrim(recent, 0, RECENT_PUSHES - 1)
        pipe.pexpire(recent, RECENT_PUSH_TTL_MS)
        log_shown(pipe, tenant, channel, ref, SHOWN_PUSH, now_ms(), value)
        await pipe.execute()


async def mark_dirty(redis: Redis, tenant: str, members: Iterable[str]) -> None:
    """Record that targets need a push. Idempotent in effect: redoing it after a crash only
    bumps versions, which at worst costs one more push of the same value."""
    keys = worker_keys(tenant)
    unique = set(members)
    if not unique:
        return
    now = now_ms()
    async with redis.pipeline(transaction=False) as pipe:
        for m in unique:
            pipe.hincrby(keys.versions, m, 1)
        # NX keeps a later score: a channel's backoff or rate-limit slot is not cut short.
        pipe.zadd(keys.due, dict.fromkeys(unique, now), nx=True)
        await pipe.execute()


async def mark_events(redis: Redis, settings: Settings, tenant: str,
                      events: Iterable[Event]) -> None:
    """Mark every target the events touch dirty."""
    await mark_dirty(redis, tenant, [m for e in events for m in targets(settings, e)])


def backoff_s(attempt: int, config: PropagationConfig) -> float:
    """Exponential with full jitter, so retries of many targets do not arrive together."""
    cap = min(config.backoff_max_s, config.backoff_base_s * 2 ** (attempt - 1))
    return cap / 2 + random.uniform(0, cap / 2)


class Propagator:
    """Pushes due targets of every tenant to its channels."""

    def __init__(self, redis: Redis, engine: StockEngine, settings: Settings,
                 config: PropagationConfig | None = None) -> None:
        self.redis = redis
        self.engine = engine
        self.settings = settings
        self.config = config or PropagationConfig()
        self.client = httpx.AsyncClient(timeout=self.config.http_timeout_s)
        self.adapters: dict[str, ChannelAdapter] = {
            name: adapter_for(name, ch, self.client) for name, ch in settings.channels.items()}
        self._claim = redis.register_script(_CLAIM)
        self._complete = redis.register_script(_COMPLETE)
        self._sem = asyncio.Semaphore(self.config.concurrency)

    async def close(self) -> None:
        await self.client.aclose()

    async def run(self, stop: asyncio.Event) -> None:
        tenants = self.settings.tenant_names()
        while not stop.is_set():
            try:
                worked = 0
                for tenant in tenants:
                    worked += await self.push_due(tenant)
            except Exception:
                log.exception("propagation pass failed; retrying")
                worked = 0
                await asyncio.sleep(0.5)
            if not worked:
                await asyncio.sleep(self.config.idle_sleep_s)

    async def push_due(self, tenant: str) -> int:
        keys = worker_keys(tenant)
        raw = await self._claim(keys=[keys.due, keys.versions],
                                args=[now_ms(), self.config.lease_ms, self.config.claim_batch])
        claimed = [(raw[i].decode(), raw[i + 1].decode()) for i in range(0, len(raw), 2)]
        if claimed:
            await asyncio.gather(*(self._deliver(tenant, m, v) for m, v in claimed))
        return len(claimed)

    async def _deliver(self, tenant: str, member: str, version: str) -> None:
        keys = worker_keys(tenant)
        channel_name, location, sku = parse_member(member)
        channel = self.settings.channels.get(channel_name)
        if channel is None:  # removed from the config since the event
            await self._complete(keys=[keys.due, keys.versions, keys.attempts],
                                 args=[member, version, now_ms()])
            return
        interval = call_interval_ms(channel)
        if interval:
            now = now_ms()
            horizon = min(self.config.slot_horizon_ms, self.config.lease_ms // 2)
            booked, at = await book_slot(self.redis, tenant, channel_name, interval, horizon)
            if not booked:
                # The channel is booked beyond the horizon: come back when its next free slot
                # is within reach (jittered, so the order among waiting targets is not always
                # the same). Events arriving meanwhile only bump the version, so this one push
                # will carry them all.
                back = at - horizon + random.randint(0, 50)
                await self.redis.zadd(keys.due, {member: max(back, now)})
                return
            if at > now:  # our own slot, booked: nobody else calls the channel then
                await asyncio.sleep((at - now) / 1000)
        async with self._sem:
            try:
                try:
                    view = await self.engine.stock(tenant, sku)
                except UnknownSku:
                    value = 0
                else:
                    value = channel_value(self.settings, channel_name, channel, location, view)
                # Before the push: the echo webhook can arrive before our call returns.
                await record_push(self.redis, tenant, channel_name, f"{sku}|{location}", value)
                await self.adapters[channel_name].set_available(sku, location, value)
            except PushError as exc:
                await self._failed(tenant, member, exc, interval)
                return
            except StockgateError as exc:  # Redis unreachable: keep the lease, retry later
                log.warning("push %s deferred: %s", member, exc)
                return
        next_ms = now_ms() + interval
        await self._complete(keys=[keys.due, keys.versions, keys.attempts],
                             args=[member, version, next_ms])
        await self.redis.hdel(keys.failed, delivery_id(member))

    async def _failed(self, tenant: str, member: str, exc: PushError, interval: int) -> None:
        keys = worker_keys(tenant)
        channel_name, location, sku = parse_member(member)
        if exc.retry_after is not None:
            # Back-pressure, not failure: the whole channel waits, the attempt is not counted.
            until = await hold_channel(self.redis, tenant, channel_name, exc.retry_after)
            await self.redis.zadd(keys.due, {member: until})
            return
        attempt = int(await self.redis.hincrby(keys.attempts, member, 1))
        if attempt < self.config.max_attempts:
            delay = backoff_s(attempt, self.config)
            log.info("push %s failed (try %d): %s; retry in %.2fs", member, attempt, exc, delay)
            await self.redis.zadd(keys.due, {member: now_ms() + int(delay * 1000)})
            return
        record = FailedDelivery(id=delivery_id(member), tenant=tenant, channel=channel_name,
                                sku=sku, location=location, attempts=attempt,
                                last_error=str(exc)[:500], failed_at=now_ms())
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.failed, record.id, _failed_encode(record))
            pipe.zrem(keys.due, member)
            pipe.hdel(keys.attempts, member)
            await pipe.execute()
        await raise_alert(self.redis, tenant, "delivery_failing",
                          f"push to {channel_name} failed {attempt} times: {exc}",
                          sku=sku, location=location, channel=channel_name,
                          ref=record.id, once=f"delivery_failing:{channel_name}",
                          once_ttl_s=60)


async def failed_deliveries(redis: Redis, tenant: str) -> list[FailedDelivery]:
    raw = await redis.hvals(worker_keys(tenant).failed)
    return sorted((_failed_decode(r) for r in raw), key=lambda d: d.failed_at)


async def retry_delivery(redis: Redis, tenant: str, delivery: str) -> FailedDelivery | None:
    """Put a parked delivery back in the queue; the pusher sends the value current then."""
    keys = worker_keys(tenant)
    raw = await redis.hget(keys.failed, delivery)
    if raw is None:
        return None
    record = _failed_decode(raw)
    member = member_of(record.channel, record.location, record.sku)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hdel(keys.failed, delivery)
        pipe.hdel(keys.attempts, member)
        pipe.hincrby(keys.versions, member, 1)
        pipe.zadd(keys.due, {member: now_ms()})
        await pipe.execute()
    return record


async def pending_deliveries(redis: Redis, tenant: str) -> int:
    return int(await redis.zcard(worker_keys(tenant).due))
