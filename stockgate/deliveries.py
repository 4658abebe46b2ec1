"""Delivery bookkeeping both sides read: the targets waiting for a push, the ones parked
after their last try (GET /v1/deliveries, and its retry), and the values last pushed to a
channel (an inventory webhook that echoes one is dropped).

The workers' propagation (workers/propagation.py) writes all of it; the gateway reads it and
puts a parked delivery back in the queue. Keys: stockgate.keys.WorkerKeys and
TenantKeys.pushed_recent.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable

import msgspec
from redis.asyncio import Redis

from stockgate.keys import tenant_keys, worker_keys


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


encode_failed = msgspec.json.Encoder().encode
_decode_failed = msgspec.json.Decoder(FailedDelivery).decode

# Redis's clock in ms: the one clock every worker host shares.
REDIS_NOW = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"

# Mark targets dirty: each gets the tenant sequence's next number as its version (a version
# number is never reused, even after its target was finished and forgotten) and enters its
# channel's due zset. NX keeps a later score: a channel's backoff or slot is not cut short.
# HSETNX keeps when the target first went dirty (until a push lands it: stockgate/activity.py
# record_done), for the channel's propagation lag.
# KEYS: seq, versions, dirty-since, then one due zset per member; ARGV: the members.
_MARK = REDIS_NOW + """
for i, m in ipairs(ARGV) do
  redis.call('HSET', KEYS[2], m, redis.call('INCR', KEYS[1]))
  redis.call('HSETNX', KEYS[3], m, now)
  redis.call('ZADD', KEYS[i + 3], 'NX', now, m)
end
return now
"""

def member_of(channel: str, location: str, sku: str) -> str:
    return f"{channel}|{location}|{sku}"


def parse_member(member: str) -> tuple[str, str, str]:
    channel, location, sku = member.split("|", 2)
    return channel, location, sku


def delivery_id(member: str) -> str:
    """A URL-safe id for a target (SKUs may hold any character)."""
    return hashlib.blake2b(member.encode(), digest_size=10).hexdigest()


# The lanes of this process, by (tenant, channel): marking a target dirty here wakes its lane
# at once instead of at its next look (lanes of other processes look every idle_sleep_s).
lane_wakers: dict[tuple[str, str], set[asyncio.Event]] = {}


async def mark_dirty(redis: Redis, tenant: str, members: Iterable[str]) -> None:
    """Record that targets need a push. Idempotent in effect: redoing it after a crash only
    gives new versions, which at worst costs one more push of the same value."""
    keys = worker_keys(tenant)
    unique = sorted(set(members))
    if unique:
        await redis.register_script(_MARK)(
            keys=[keys.seq, keys.versions, keys.dirty_since,
                  *(keys.due(parse_member(m)[0]) for m in unique)],
            args=unique)
        for channel in {parse_member(m)[0] for m in unique}:
            for wake in lane_wakers.get((tenant, channel), ()):
                wake.set()


async def failed_deliveries(redis: Redis, tenant: str) -> list[FailedDelivery]:
    raw = await redis.hvals(worker_keys(tenant).failed)
    return sorted((_decode_failed(r) for r in raw), key=lambda d: d.failed_at)


_FORGET = """
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[2])
"""


async def retry_delivery(redis: Redis, tenant: str, delivery: str) -> FailedDelivery | None:
    """Put a parked delivery back in the queue; the pusher sends the value current then."""
    keys = worker_keys(tenant)
    raw = await redis.hget(keys.failed, delivery)
    if raw is None:
        return None
    record = _decode_failed(raw)
    member = member_of(record.channel, record.location, record.sku)
    # Both or neither (a script: a Cluster client has no MULTI).
    await redis.register_script(_FORGET)(keys=[keys.failed, keys.attempts],
                                         args=[delivery, member])
    await mark_dirty(redis, tenant, [member])
    return record


async def pending_deliveries(redis: Redis, tenant: str) -> int:
    """Targets waiting for a push, over every channel of the tenant (in flight included)."""
    keys = worker_keys(tenant)
    return int(await redis.hlen(keys.versions))


async def is_echo(redis: Redis, tenant: str, channel: str, ref: str, value: int) -> bool:
    recent = await redis.lrange(tenant_keys(tenant).pushed_recent(channel, ref), 0, -1)
    return str(value).encode() in recent
