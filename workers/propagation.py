"""Channel propagation: every stock change reaches every channel that sells the location.

Bookkeeping lives in Redis, per tenant (see stockgate.keys.WorkerKeys; what the gateway reads
of it, stockgate.deliveries):
- the outbox consumer marks a delivery target "<channel>|<location>|<sku>" dirty: it gives the
  target a new version from the tenant's sequence (versions only ever rise, so a version seen
  by a lapsed claim is never seen again) and adds it to its channel's due zset. That is all it
  does per event, so a flash sale of thousands of changes to one SKU stays one entry;
- one lane per (tenant, channel) in every worker claims that channel's due targets, up to the
  adapter's items per call, with a lease and a claim token; reads the canonical values *at
  push time*; pushes them in one batched call; and finishes each target under its token: a
  finish whose lease lapsed (another worker claimed the target since) changes nothing, and a
  target whose version moved during the push goes round again. Lanes are independent tasks,
  so a slow or dead channel only holds its own lane; other channels and tenants go on;
- "now" comes from Redis TIME wherever workers compare times (leases, due times, call
  slots), so a worker host's clock skew cannot lapse a lease or skip a slot;
- a per-channel slot in Redis spaces calls at the channel's rate limit across all workers; a
  429 moves the slot to the channel's Retry-After, capped at RETRY_AFTER_MAX_S with an alert
  when the channel asked for longer (book_slot, hold_channel: reconciliation's reads go
  through them too);
- every failure (a PushError, or anything else an adapter raises: an HTML page, a bug) is
  counted per target, retried with exponential backoff and jitter, and after the last try
  parked in the failed hash (GET /v1/deliveries?status=failed) with an alert. An item the
  channel refused alone fails alone; its batch siblings are done;
- compare-and-set channels (Shopify's changeFromQuantity) get the count Stockgate last knew
  them to hold. A stale compare means the channel moved on its own (a sale whose order
  webhook has not landed, a person's edit): the unexplained drop is kept as pending on that
  target and subtracted from what is pushed, until the channel's own order events explain it
  (pending_explained) or a count report is judged; reconciliation alerts on pending that stays
  unexplained past ReconcileConfig.pending_alert_s.
A worker that dies mid-push leaves its targets leased; the lease runs out and another worker
pushes them. Pushing twice is harmless: the value is absolute, not a delta.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import traceback
import uuid
from collections.abc import Iterable, Sequence

import httpx
import msgspec
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from stockgate import activity, allocation, incoming
from stockgate.alerts import raise_alert
from stockgate.bundles import Bundles, bundles_using
from stockgate.deliveries import (
    REDIS_NOW,
    FailedDelivery,
    delivery_id,
    encode_failed,
    lane_wakers,
    mark_dirty,
    member_of,
    parse_member,
)
from stockgate.errors import StockgateError
from stockgate.keys import tenant_keys, worker_keys
from stockgate.models import Event, StockView
from stockgate.settings import Channel, Settings
from stockgate.stock import StockEngine
from workers.adapters import ADAPTERS, ChannelAdapter, PushError, adapter_for
from workers.adapters.base import RETRY_AFTER_MAX_S, ItemResult, PushItem

log = logging.getLogger("stockgate.propagation")


class PropagationConfig(msgspec.Struct, frozen=True):
    max_attempts: int = 6
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    # A claimed target is invisible to other workers for this long: longer than the wait for
    # a call slot (slot_horizon_ms) plus one whole push (push_timeout_s).
    lease_ms: int = 15_000
    # Most targets one call carries, whatever the adapter allows (BigCommerce takes 2,000).
    claim_batch: int = 2000
    # A lane with nothing due looks again after this long at most (sooner when the next due
    # target is sooner).
    idle_sleep_s: float = 0.02
    http_timeout_s: float = 5.0
    # One batched push, whatever the adapter does inside it (several HTTP calls, a wait for
    # its cost bucket): past this the lane gives up on it and the targets are retried.
    push_timeout_s: float = 10.0
    # How far ahead a call may book its channel's slot and wait for it (well under lease_ms);
    # a batch whose slot would be later goes back to the queue until then.
    slot_horizon_ms: int = 2_000
    # A channel that asks for a Retry-After longer than this gets an alert.
    retry_after_alert_s: float = 60.0


# Claim due targets of one channel: lease them (score = now + lease) under a claim token.
# Returns {now, next due ms or -1, member, version, member, version, ...}.
_CLAIM = REDIS_NOW + """
local due, versions, leases = KEYS[1], KEYS[2], KEYS[3]
local lease, limit, token = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local members = redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, limit)
local out = {now, -1}
for _, m in ipairs(members) do
  redis.call('ZADD', due, now + lease, m)
  redis.call('HSET', leases, m, token)
  out[#out + 1] = m
  out[#out + 1] = redis.call('HGET', versions, m) or '0'
end
if #members == 0 then
  local first = redis.call('ZRANGE', due, 0, 0, 'WITHSCORES')
  if first[2] then out[2] = math.floor(tonumber(first[2])) end
end
return out
"""

# Finish claimed targets, each only while the claim token still holds its lease (a lapsed
# claim changes nothing: the target is another worker's now). ARGV: token, after_ms, then
# (member, version, mode, known, own): mode "done" forgets the target unless its version
# moved since the claim (then it is due again after_ms from now: the channel's next slot);
# mode "again" puts it back due after_ms from now, its attempts untouched; mode "fail"
# counts an attempt and returns the count (the caller then requeues or parks). For a
# compare-and-set channel a "done" with `known` records that the channel holds it now, and
# takes `own` (its own moves seen when the push was prepared, already in the value) off
# its own moves since (KEYS[5], lua/moved.lua). Returns one number per member: the attempt
# count for "fail", 1 for a finished "done"/"again", 0 for a lapsed claim.
_FINISH = REDIS_NOW + """
local due, versions, leases, attempts, cas = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local token, after = ARGV[1], tonumber(ARGV[2])
local out = {}
for i = 3, #ARGV, 5 do
  local m, seen, mode, known, own = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  if redis.call('HGET', leases, m) ~= token then
    out[#out + 1] = 0
  elseif mode == 'fail' then
    out[#out + 1] = redis.call('HINCRBY', attempts, m, 1)
  else
    redis.call('HDEL', leases, m)
    if mode == 'done' then
      redis.call('HDEL', attempts, m)
      if known ~= '' then
        local a = string.find(m, '|', 1, true)
        local b = string.find(m, '|', a + 1, true)
        local ref = string.sub(m, b + 1) .. '|' .. string.sub(m, a + 1, b - 1)
        local left = tonumber(redis.call('HGET', cas, 'o|' .. ref) or '0') - tonumber(own)
        redis.call('HSET', cas, 'k|' .. ref, known)
        if left ~= 0 then
          redis.call('HSET', cas, 'o|' .. ref, left)
        else
          redis.call('HDEL', cas, 'o|' .. ref)
        end
        redis.call('HDEL', cas, 'd|' .. ref)
      end
      if (redis.call('HGET', versions, m) or '0') == seen then
        redis.call('ZREM', due, m)
        redis.call('HDEL', versions, m)
      else
        redis.call('ZADD', due, now + after, m)
      end
    else
      redis.call('ZADD', due, now + after, m)
    end
    out[#out + 1] = 1
  end
end
return out
"""

# After a counted failure: requeue (mode "retry", ARGV after_ms) or park the target (mode
# "park", ARGV the FailedDelivery JSON and its id), while the token holds the lease.
_SETTLE = """
local due, leases, attempts, failed, versions = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local token, m, mode = ARGV[1], ARGV[2], ARGV[3]
if redis.call('HGET', leases, m) ~= token then return 0 end
redis.call('HDEL', leases, m)
if mode == 'park' then
  redis.call('HSET', failed, ARGV[5], ARGV[4])
  redis.call('ZREM', due, m)
  redis.call('HDEL', attempts, m)
  redis.call('HDEL', versions, m)
else
  local t = redis.call('TIME')
  redis.call('ZADD', due, t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[4]), m)
end
return 1
"""

# Book a call slot on a channel: the key holds the channel's next free call time. The caller
# gets the next free time if it is at most `horizon` ms away, and the one after it is then
# next free: {1, at, now}. Otherwise nothing is booked: {0, next free time, now}.
_SLOT = REDIS_NOW + """
local key = KEYS[1]
local interval, horizon = tonumber(ARGV[1]), tonumber(ARGV[2])
local at = math.max(tonumber(redis.call('GET', key) or '0'), now)
if at - now > horizon then return {0, at, now} end
redis.call('SET', key, at + interval, 'PX', at + interval - now + 60000)
return {1, at, now}
"""

# Moves the channel's next free time to now + ARGV[1] ms unless it is already later: slots
# that pushes booked beyond a Retry-After must stay booked, or their callers would collide.
# Returns {next free time, now}.
_HOLD = REDIS_NOW + """
local key, wait = KEYS[1], tonumber(ARGV[1])
local at = tonumber(redis.call('GET', key) or '0')
if at >= now + wait then return {at, now} end
redis.call('SET', key, now + wait, 'PX', wait + 60000)
return {now + wait, now}
"""

# Which of the members a claim still holds the lease of (ARGV token, members): 1 or 0 each.
_HOLDS = """
local out = {}
for i = 2, #ARGV do
  out[#out + 1] = redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[1] and 1 or 0
end
return out
"""

# Members written before per-channel due zsets: move each to its channel's zset, with a
# version from the sequence (the old versions counted per target from 1, so the sequence's
# first numbers would meet them again and a change could be taken as pushed).
_MIGRATE = """
local old, seq, versions, prefix = KEYS[1], KEYS[2], KEYS[3], ARGV[1]
local rows = redis.call('ZRANGE', old, 0, -1, 'WITHSCORES')
for i = 1, #rows, 2 do
  local m = rows[i]
  local channel = string.sub(m, 1, string.find(m, '|', 1, true) - 1)
  redis.call('ZADD', prefix .. channel, 'NX', rows[i + 1], m)
  redis.call('HSET', versions, m, redis.call('INCR', seq))
end
redis.call('DEL', old)
return #rows / 2
"""


# Values of unanswered pushes kept per target (a stale compare that finds one of them is our
# own push having landed, not the channel's sale).
IN_DOUBT_KEPT = 8


def now_ms() -> int:
    """This host's clock, for what only this host compares (log lines, alert stamps)."""
    return int(time.time() * 1000)


def call_interval_ms(channel: Channel) -> int:
    """Milliseconds between two calls to the channel; 0 when it sets no rate limit."""
    return max(int(1000 / channel.rate_limit_per_s), 1) if channel.rate_limit_per_s else 0


class Slot(msgspec.Struct, frozen=True, array_like=True):
    booked: bool
    at: int  # the booked time, else the channel's next free time (Redis ms)
    now: int  # Redis's clock when the slot was looked at


async def book_slot(redis: Redis, tenant: str, channel: str, interval: int,
                    horizon: int) -> Slot:
    """Book the channel's next free call time if it is at most `horizon` ms away. Every caller
    of the channel (pushes, reconciliation) goes through here, so together they keep its
    rate; times are Redis's, so the caller waits `at - now` whatever its own clock says."""
    booked, at, now = await redis.register_script(_SLOT)(
        keys=[worker_keys(tenant).rate(channel)], args=[interval, horizon])
    return Slot(bool(booked), int(at), int(now))


async def hold_channel(redis: Redis, tenant: str, channel: str, retry_after_s: float) -> Slot:
    """The channel answered 429: nobody calls it before its Retry-After (capped at
    RETRY_AFTER_MAX_S). Returns when the channel is next free (`at`: the Retry-After, or a
    later slot already booked) and Redis's `now`."""
    wait_ms = int(min(max(retry_after_s, 0.0), RETRY_AFTER_MAX_S) * 1000)
    until, now = await redis.register_script(_HOLD)(
        keys=[worker_keys(tenant).rate(channel)], args=[wait_ms])
    return Slot(True, int(until), int(now))


def selling_locations(settings: Settings, channel: Channel) -> tuple[str, ...]:
    return channel.locations or (settings.tenant(channel.tenant).default_location,)


def push_location(settings: Settings, channel: Channel, location: str) -> str:
    """Where a change at `location` lands on the channel: its own location when the config
    maps it to a channel location id, else the channel's one stock figure, kept under the
    channel's first unmapped selling location."""
    mapped = tuple(channel.location_map.values())
    if location in mapped:
        return location
    return allocation.one_figure_spot(selling_locations(settings, channel), mapped)


def channel_value(settings: Settings, channel_name: str, channel: Channel, location: str,
                  view: StockView) -> int:
    """The count the channel should show at `location` (a push spot, push_location): the
    figure the view resolved there, the channel's allocation rule (the SKU's, else the
    channel's default) applied to a mapped location's own available or to the channel's one
    figure summed over its locations, pre-order units included for channels that show them
    (StockEngine.view)."""
    detail = view.allocation.get(channel_name)
    figure = detail.figures.get(location) if detail else None
    if figure is not None:
        return figure.value
    # A view built under other settings (a tool's, a test's) has no figure for this channel:
    # resolved here the same way, with the channel's default rule.
    sells_from = selling_locations(settings, channel)
    available = ({loc: c.available for loc, c in view.locations.items()}
                 if not channel.show_preorders else
                 incoming.sellable(view.locations, view.incoming, view.preorder_limit,
                                   sells_from))
    pool = allocation.figure_pool(available, sells_from, tuple(channel.location_map.values()),
                                  location)
    return allocation.shown(channel.allocation, pool)


def shown_change(delta: dict[str, int]) -> int:
    """How much a change moves available, the only figure channels show: a commit (reserved
    to committed) or a shipment (on hand and committed together) moves none, and pushing
    for it would resend the count the channel already shows."""
    return (delta.get("on_hand", 0) - delta.get("reserved", 0) - delta.get("committed", 0)
            - delta.get("unavailable", 0) - delta.get("safety", 0))


def targets(settings: Settings, event: Event) -> list[str]:
    """Delivery targets touched by one event that moves available. The channel that caused
    the change is included:
    its own count moved by its own rule (a Shopify order decremented Shopify's figure), which
    may differ from the canonical value (another channel sold, a line was refused); pushing
    the canonical value is correct, and coalescing makes it cheap."""
    if event.type == "bundle":
        # A definition changed (lua/bundle.lua): every channel selling there re-pushes it.
        return [member_of(name, push_location(settings, channel, event.location), event.sku)
                for name, channel in settings.channels.items()
                if channel.tenant == event.tenant and channel.api_url
                and event.location in selling_locations(settings, channel)]
    if event.type == "allocation":
        return allocation_targets(settings, event)
    if event.type == "oversell_rejected" or not any(event.delta.values()):
        return []
    # A change that moves no available (its order took units held for it) still moved the
    # figure of the channel that sold them, by its own rule: that channel alone is pushed.
    only = None if shown_change(event.delta) else event.source.channel
    # Expected units opened or closed: the pre-order room that opted-in channels show moved.
    preorders = bool(event.delta.get("incoming"))
    if only == "" and not preorders:
        return []
    found = []
    for name, channel in settings.channels.items():
        if channel.tenant != event.tenant or not channel.api_url:
            continue
        if only not in (None, name) and not (preorders and channel.show_preorders):
            continue
        if event.location in selling_locations(settings, channel):
            found.append(member_of(name, push_location(settings, channel, event.location),
                                   event.sku))
    return found


def allocation_targets(settings: Settings, event: Event) -> list[str]:
    """A rule change (lua/allocation.lua) moves no cell, only what one channel is shown: every
    figure that channel keeps of the SKU is pushed, and no other channel."""
    name = event.source.channel
    channel = settings.channels.get(name)
    if channel is None or channel.tenant != event.tenant or not channel.api_url:
        return []
    spots = {push_location(settings, channel, loc) for loc in selling_locations(settings, channel)}
    return [member_of(name, spot, event.sku) for spot in sorted(spots)]


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


def queue_push_record(pipe: Pipeline, tenant: str, channel: str, ref: str, value: int,
                      ms: int) -> None:
    keys = tenant_keys(tenant)
    recent = keys.pushed_recent(channel, ref)
    pipe.hset(keys.pushed(channel), ref, value)
    pipe.lpush(recent, value)
    pipe.ltrim(recent, 0, RECENT_PUSHES - 1)
    pipe.pexpire(recent, RECENT_PUSH_TTL_MS)
    log_shown(pipe, tenant, channel, ref, SHOWN_PUSH, ms, value)


async def record_push(redis: Redis, tenant: str, channel: str, ref: str, value: int) -> None:
    """Remember a value about to be pushed (before the push: its echo can beat the reply)."""
    async with redis.pipeline(transaction=False) as pipe:
        queue_push_record(pipe, tenant, channel, ref, value, now_ms())
        await pipe.execute()


def cas_channels(settings: Settings, adapters: dict[str, ChannelAdapter] | None = None
                 ) -> set[str]:
    """Channels whose pushes compare-and-set (and so keep pending bookkeeping)."""
    return {name for name, ch in settings.channels.items()
            if ch.api_url and ADAPTERS[ch.kind].compare_and_set}


async def mark_events(redis: Redis, settings: Settings, tenant: str,
                      events: Iterable[Event]) -> None:
    """Mark every target the events touch dirty, and the same targets of every bundle that
    uses a changed SKU as a component (its derived count may have moved)."""
    members = [m for e in events for m in targets(settings, e)]
    if members:
        used = await bundles_using(redis, tenant, sorted({parse_member(m)[2] for m in members}))
        for m in list(members) if used else ():
            channel, location, sku = parse_member(m)
            members.extend(member_of(channel, location, b) for b in used.get(sku, ()))
    await mark_dirty(redis, tenant, members)


async def pending_drops(redis: Redis, tenant: str, channel: str) -> dict[str, tuple[int, int]]:
    """Units set aside for a compare-and-set channel's sales that no order explains yet:
    ref "<sku>|<location>" -> (units, since ms)."""
    raw = await redis.hgetall(worker_keys(tenant).cas(channel))
    fields = {k.decode(): v for k, v in raw.items()}
    return {f[2:]: (int(units), int(fields.get("t|" + f[2:], 0)))
            for f, units in fields.items() if f.startswith("p|") and int(units) > 0}


def backoff_s(attempt: int, config: PropagationConfig) -> float:
    """Exponential with full jitter, so retries of many targets do not arrive together."""
    cap = min(config.backoff_max_s, config.backoff_base_s * 2 ** (attempt - 1))
    return cap / 2 + random.uniform(0, cap / 2)


class Claimed(msgspec.Struct):
    member: str
    version: str
    sku: str
    location: str
    item: PushItem | None = None
    # Compare-and-set channels, read when the push was prepared: the channel's own moves
    # since its known count (already in the canonical value pushed), and the value of an
    # earlier pushes whose answers never came.
    own: int = 0
    doubts: list[int] = []
    # Redis ms of the claim: a target re-marked during its push is timed from it (activity).
    claimed_at: int = 0


class Propagator:
    """Runs one lane per (tenant, channel): pushes that channel's due targets in batches."""

    def __init__(self, redis: Redis, engine: StockEngine, settings: Settings,
                 config: PropagationConfig | None = None,
                 tally: activity.Tally | None = None) -> None:
        self.redis = redis
        self.engine = engine
        self.settings = settings
        self.config = config or PropagationConfig()
        # push_ok:<channel> / push_fail:<channel> per target (the worker flushes it).
        self.tally = tally if tally is not None else activity.Tally()
        self.client = httpx.AsyncClient(timeout=self.config.http_timeout_s)
        self.adapters: dict[str, ChannelAdapter] = {
            name: adapter_for(name, ch, self.client) for name, ch in settings.channels.items()}
        self.cas = cas_channels(settings)
        self._claim = redis.register_script(_CLAIM)
        self._finish = redis.register_script(_FINISH)
        self._settle = redis.register_script(_SETTLE)
        self._holds = redis.register_script(_HOLDS)

    async def close(self) -> None:
        await self.client.aclose()

    def lanes(self) -> list[tuple[str, str]]:
        tenants = set(self.settings.tenant_names())
        return sorted((ch.tenant, name) for name, ch in self.settings.channels.items()
                      if ch.api_url and ch.tenant in tenants)

    async def run(self, stop: asyncio.Event) -> None:
        for tenant in self.settings.tenant_names():
            keys = worker_keys(tenant)
            await self.redis.register_script(_MIGRATE)(
                keys=[keys.legacy_due, keys.seq, keys.versions], args=[keys.due("")])
        await asyncio.gather(*(self._lane(tenant, name, stop)
                               for tenant, name in self.lanes()))

    async def _lane(self, tenant: str, channel: str, stop: asyncio.Event) -> None:
        wake = asyncio.Event()
        wakers = lane_wakers.setdefault((tenant, channel), set())
        wakers.add(wake)
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                wake.clear()
                try:
                    wait = await self.push_due(tenant, channel)
                except Exception:
                    log.exception("propagation to %s (tenant %s) failed; retrying", channel,
                                  tenant)
                    wait = 0.5
                if wait > 0 and not wake.is_set():
                    woken = asyncio.ensure_future(wake.wait())
                    await asyncio.wait((stopping, woken), timeout=wait,
                                       return_when=asyncio.FIRST_COMPLETED)
                    woken.cancel()
        finally:
            wakers.discard(wake)
            stopping.cancel()

    async def push_due(self, tenant: str, channel_name: str) -> float:
        """Claim and push one batch of the channel's due targets. Returns how long the lane
        may rest before it looks again (0: more may be due now)."""
        keys = worker_keys(tenant)
        channel = self.settings.channels[channel_name]
        adapter = self.adapters[channel_name]
        limit = max(1, min(adapter.batch_limit, self.config.claim_batch))
        token = uuid.uuid4().hex
        raw = await self._claim(keys=[keys.due(channel_name), keys.versions, keys.leases],
                                args=[self.config.lease_ms, limit, token])
        now, next_due = int(raw[0]), int(raw[1])
        claimed = []
        for i in range(2, len(raw), 2):
            member = raw[i].decode()
            _, location, sku = parse_member(member)
            claimed.append(Claimed(member, raw[i + 1].decode(), sku, location, claimed_at=now))
        if not claimed:
            if next_due < 0:
                return self.config.idle_sleep_s
            return min(max((next_due - now) / 1000, 0.001), self.config.idle_sleep_s)
        interval = call_interval_ms(channel)
        if interval:
            horizon = min(self.config.slot_horizon_ms, self.config.lease_ms // 3)
            slot = await book_slot(self.redis, tenant, channel_name, interval, horizon)
            if not slot.booked:
                # Booked beyond the horizon: back to the queue until its next free slot is in
                # reach (events arriving meanwhile only bump versions: one push carries them).
                back = slot.at - horizon - slot.now + random.randint(0, 50)
                await self._finish_all(tenant, channel_name, token, claimed, "again", back)
                return min(back / 1000, self.config.idle_sleep_s)
            if slot.at > slot.now:  # our own slot, booked: nobody else calls the channel then
                await asyncio.sleep((slot.at - slot.now) / 1000)
        try:
            await self._prepare(tenant, channel_name, channel, claimed)
        except StockgateError as exc:  # Redis unreachable: the lease brings them back
            log.warning("push to %s deferred: %s", channel_name, exc)
            return 0.5
        items = [c.item for c in claimed if c.item is not None]
        try:
            results = await asyncio.wait_for(adapter.push_batch(items),
                                             self.config.push_timeout_s)
            if len(results) != len(items):
                raise PushError(f"{channel_name}: {len(results)} results for "
                                f"{len(items)} items")
        except PushError as exc:
            await self._channel_failed(tenant, channel_name, token, claimed, exc)
            return 0
        except TimeoutError:
            error = PushError(f"{channel_name}: no answer within {self.config.push_timeout_s}s"
                              f" for a batch of {len(items)}")
            log.warning("push to %s: %s", channel_name, error)
            await self._channel_failed(tenant, channel_name, token, claimed, error)
            return 0
        except Exception as exc:  # a bug or a body the adapter could not read: count it
            text = activity.scrub(f"{channel_name}: {type(exc).__name__}: {exc}", channel)
            # Not log.exception: the traceback's last line is the raw message.
            log.error("push to %s: the adapter raised %s\n%s", channel_name, text,
                      "".join(traceback.format_tb(exc.__traceback__)))
            error = PushError(text)
            await self._channel_failed(tenant, channel_name, token, claimed, error)
            return 0
        await self._results(tenant, channel_name, token, claimed, results, interval)
        return 0

    async def _prepare(self, tenant: str, channel_name: str, channel: Channel,
                       claimed: list[Claimed]) -> None:
        """Each claimed target's PushItem: the canonical value now (units set aside for a
        channel's own unexplained sales are in `reserved` already), compared against the
        count the channel is known to hold."""
        refs = [f"{c.sku}|{c.location}" for c in claimed]
        known: list[int | None] = [None] * len(claimed)
        cas = channel_name in self.cas
        if cas:
            raw = await self.redis.hmget(worker_keys(tenant).cas(channel_name),
                                         [f for ref in refs
                                          for f in (f"k|{ref}", f"o|{ref}", f"d|{ref}")])
            known = [int(v) if v is not None else None for v in raw[0::3]]
            for c, own, doubts in zip(claimed, raw[1::3], raw[2::3], strict=True):
                c.own = int(own or 0)
                c.doubts = [int(v) for v in doubts.split(b",")] if doubts else []
        skus = sorted({c.sku for c in claimed})
        # Not one MULTI: a rule or a cell that changes after this read has its own event, whose
        # new version sends the target round again.
        async with self.redis.pipeline(transaction=False) as pipe:
            for sku in skus:
                pipe.hgetall(tenant_keys(tenant).stock(sku))
                pipe.hgetall(tenant_keys(tenant).allocation(sku))
                pipe.hgetall(tenant_keys(tenant).incoming_sku(sku))
            reads = await pipe.execute()
            cells = dict(zip(skus, reads[0::3], strict=True))
            rules = dict(zip(skus, reads[1::3], strict=True))
            expected = dict(zip(skus, reads[2::3], strict=True))
        # A bundle has no cells: its value is derived from its components' cells now.
        derived = await Bundles(self.engine).views(tenant, [s for s in skus if not cells[s]])
        stamp = now_ms()
        async with self.redis.pipeline(transaction=False) as pipe:
            for i, c in enumerate(claimed):
                raw_cell = cells[c.sku]
                view = (self.engine.view(tenant, c.sku, raw_cell, rules=rules[c.sku],
                                         incoming_raw=expected[c.sku])
                        if raw_cell else derived.get(c.sku))
                value = (channel_value(self.settings, channel_name, channel, c.location, view)
                         if view else 0)
                c.item = PushItem(sku=c.sku, location=c.location, value=value,
                                  expected=known[i], attempt=c.version)
                # Before the push: the echo webhook can arrive before our call returns.
                queue_push_record(pipe, tenant, channel_name, refs[i], value, stamp)
                if cas:  # in doubt until an answer comes (lua/moved.lua), with earlier ones
                    doubts = [*claimed[i].doubts, value][-IN_DOUBT_KEPT:]
                    pipe.hset(worker_keys(tenant).cas(channel_name), f"d|{refs[i]}",
                              ",".join(map(str, doubts)))
            await pipe.execute()

    async def _finish_all(self, tenant: str, channel: str, token: str,
                          claimed: Sequence[Claimed], mode: str, after_ms: int) -> list[int]:
        keys = worker_keys(tenant)
        args: list[str | int] = [token, max(int(after_ms), 0)]
        cas = mode == "done" and channel in self.cas
        for c in claimed:
            known = c.item.value if cas and c.item is not None else ""
            args.extend((c.member, c.version, mode, known, c.own))
        return [int(x) for x in await self._finish(
            keys=[keys.due(channel), keys.versions, keys.leases, keys.attempts,
                  keys.cas(channel)], args=args)]

    async def _results(self, tenant: str, channel: str, token: str, claimed: list[Claimed],
                       results: list[ItemResult], interval: int) -> None:
        keys = worker_keys(tenant)
        done = [c for c, r in zip(claimed, results, strict=True) if r.status == "ok"]
        stale = [(c, r) for c, r in zip(claimed, results, strict=True) if r.status == "stale"]
        failed = [(c, r) for c, r in zip(claimed, results, strict=True)
                  if r.status == "failed"]
        if done:
            finished = await self._finish_all(tenant, channel, token, done, "done", interval)
            await self.redis.hdel(keys.failed, *(delivery_id(c.member) for c in done))
            self.tally.count(tenant, f"push_ok:{channel}", len(done))
            # Only targets still under our claim: a lapsed one is another worker's to time.
            landed = [c.member for c, ok in zip(done, finished, strict=True) if ok]
            if landed:
                try:
                    await activity.record_done(self.redis, tenant, channel, landed,
                                               min(c.claimed_at for c in done))
                except Exception as exc:  # console figures must never fail a push
                    log.warning("push lag of %s not recorded: %s", channel, exc)
        if stale:
            await self._stale(tenant, channel, token, stale)
        for c, r in failed:
            await self._count_failures(tenant, channel, token, [c], r.error or "refused")

    async def _stale(self, tenant: str, channel: str, token: str,
                     stale: list[tuple[Claimed, ItemResult]]) -> None:
        """The channel moved on its own: set aside what it dropped (lua/moved.lua: no other
        channel sells those units until its order for them lands) and push again, now,
        against the count it holds. A stale item whose count the adapter could not read is
        retried as a failure: pushing blind could overwrite a sale."""
        keys = worker_keys(tenant)
        # Only under a lease still ours: a lapsed claim's old count must not be recorded over
        # what the worker that holds the target now has seen (the lease outlasts this call).
        read = [(c, r.actual) for c, r in stale if r.actual is not None]
        held = await self._holds(keys=[keys.leases], args=[token, *(c.member for c, _ in read)]
                                 ) if read else []
        known = [(c, actual) for (c, actual), ours in zip(read, held, strict=True) if ours]
        if known:
            try:
                reply = await self.engine.channel_moved(
                    tenant, channel, keys.cas(channel),
                    [(c.sku, c.location, actual, c.doubts, self._spread(channel, c.location))
                     for c, actual in known])
            except Exception as exc:  # a count the script refuses, Redis: count, never lose
                log.exception("push to %s: recording its own moves failed", channel)
                await self._count_failures(tenant, channel, token, [c for c, _ in known],
                                           f"{channel}: stale compare not recorded: {exc}")
            else:
                for (c, actual), line in zip(known, reply.lines, strict=True):
                    log.info("push %s: %s holds %s, not %s; %d unit(s) set aside for it",
                             c.member, channel, actual, c.item.expected if c.item else None,
                             line.pending)
                await self._finish_all(tenant, channel, token, [c for c, _ in known],
                                       "again", 0)
        unread = [c for c, r in stale if r.actual is None]
        if unread:
            await self._count_failures(tenant, channel, token, unread,
                                       "compare-and-set refused and the count is unreadable")

    def _spread(self, channel_name: str, location: str) -> list[str]:
        """The locations a target's figure sums: its own when the channel maps it, else every
        unmapped location the channel sells (its one figure), this one first."""
        channel = self.settings.channels[channel_name]
        mapped = channel.location_map.values()
        if location in mapped:
            return [location]
        return [location, *(loc for loc in selling_locations(self.settings, channel)
                            if loc != location and loc not in mapped)]

    async def _channel_failed(self, tenant: str, channel: str, token: str,
                              claimed: list[Claimed], exc: PushError) -> None:
        if exc.retry_after is not None:
            # Back-pressure, not failure: the whole channel waits, attempts are not counted.
            held = await hold_channel(self.redis, tenant, channel, exc.retry_after)
            if exc.retry_after > self.config.retry_after_alert_s:
                await raise_alert(
                    self.redis, tenant, "channel_throttled",
                    f"{channel} asked to wait {exc.retry_after:.0f}s (Retry-After); pushes "
                    f"wait {min(exc.retry_after, RETRY_AFTER_MAX_S):.0f}s and then ask again",
                    channel=channel, once=f"throttled:{channel}", once_ttl_s=3600)
            await self._finish_all(tenant, channel, token, claimed, "again",
                                   held.at - held.now)
            return
        await self._count_failures(tenant, channel, token, claimed, str(exc))

    async def _count_failures(self, tenant: str, channel: str, token: str,
                              claimed: Sequence[Claimed], error: str) -> None:
        keys = worker_keys(tenant)
        # Before anything keeps or prints it: a channel's error page may echo the request,
        # token included, into the parked delivery, the alert and the log.
        error = activity.scrub(error, self.settings.channels.get(channel))
        self.tally.count(tenant, f"push_fail:{channel}", len(claimed))
        try:
            await activity.record_error(self.redis, tenant, channel, error,
                                        self.settings.channels.get(channel))
        except Exception as exc:  # console figures must never stop the retry below
            log.warning("push error of %s not recorded: %s", channel, exc)
        counts = await self._finish_all(tenant, channel, token, claimed, "fail", 0)
        parked = []
        for c, attempt in zip(claimed, counts, strict=True):
            if attempt == 0:
                continue  # our lease lapsed: the target is another worker's now
            scripts_keys = [keys.due(channel), keys.leases, keys.attempts, keys.failed,
                            keys.versions]
            if attempt < self.config.max_attempts:
                delay = backoff_s(attempt, self.config)
                log.info("push %s failed (try %d): %s; retry in %.2fs", c.member, attempt,
                         error, delay)
                await self._settle(keys=scripts_keys,
                                   args=[token, c.member, "retry", int(delay * 1000)])
                continue
            record = FailedDelivery(id=delivery_id(c.member), tenant=tenant, channel=channel,
                                    sku=c.sku, location=c.location, attempts=attempt,
                                    last_error=error[:500], failed_at=now_ms())
            if await self._settle(keys=scripts_keys, args=[
                    token, c.member, "park", encode_failed(record), record.id]):
                parked.append(record)
        if parked:
            try:
                await activity.forget_dirty(self.redis, tenant, [
                    member_of(channel, r.location, r.sku) for r in parked])
            except Exception as exc:  # the alerts below matter more than a lag sample
                log.warning("dirty-since of parked targets not cleared: %s", exc)
        for record in parked:
            log.warning("push %s|%s|%s parked after %d tries: %s", channel, record.location,
                        record.sku, record.attempts, record.last_error)
            await raise_alert(self.redis, tenant, "delivery_failing",
                              f"push to {channel} failed {record.attempts} times: "
                              f"{record.last_error}", sku=record.sku,
                              location=record.location, channel=channel, ref=record.id,
                              once=f"delivery_failing:{channel}", once_ttl_s=60)


