"""The outbox consumer: reads every tenant's outbox stream through one consumer group.

For each batch: write the events to the audit store (durable), mark the delivery targets in
Redis, raise event-derived alerts, and only then XACK. A worker killed anywhere before the ack
leaves its entries pending; after `claim_min_idle_ms` any worker takes them over with
XAUTOCLAIM and redoes the batch, which is idempotent (audit rows are keyed on the event id,
delivery marks only bump versions, alerts carry the event id as a once-marker).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid

import msgspec
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from stockgate.keys import tenant_keys
from stockgate.models import Event, event_decoder
from stockgate.settings import Settings
from workers.alerts import raise_alert
from workers.audit import AuditStore
from workers.keys import CONSUMER_GROUP
from workers.propagation import mark_events

log = logging.getLogger("stockgate.outbox")

Entry = tuple[bytes, dict[bytes, bytes]]


class OutboxConfig(msgspec.Struct, frozen=True):
    batch: int = 500
    block_ms: int = 200
    # A pending entry idle this long belongs to a dead (or stuck) consumer.
    claim_min_idle_ms: int = 10_000
    claim_every_s: float = 1.0
    # Acknowledged entries stay this long in Redis (for debugging and replays); the audit
    # store keeps them for good. Without trimming the stream would grow without bound.
    retention_s: float = 3600.0
    trim_every_s: float = 30.0


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def decode_entries(entries: list[Entry]) -> tuple[list[Event], list[str]]:
    """Events with their stream ids; ids of entries that cannot be decoded (acked and logged,
    since retrying a malformed entry would block the stream forever)."""
    events, bad = [], []
    for raw_id, fields in entries:
        entry_id = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
        try:
            event = event_decoder.decode(fields[b"e"])
        except (KeyError, msgspec.DecodeError, TypeError) as exc:
            log.error("outbox entry %s is not an event: %s", entry_id, exc)
            bad.append(entry_id)
            continue
        events.append(msgspec.structs.replace(event, id=entry_id))
    return events, bad


class OutboxConsumer:
    def __init__(self, redis: Redis, settings: Settings, audit: AuditStore,
                 config: OutboxConfig | None = None, name: str | None = None) -> None:
        self.redis = redis
        self.settings = settings
        self.audit = audit
        self.config = config or OutboxConfig()
        self.name = name or consumer_name()
        self.tenants = settings.tenant_names()
        self.streams = {tenant_keys(t).outbox: t for t in self.tenants}

    async def ensure_groups(self) -> None:
        for stream in self.streams:
            try:
                await self.redis.xgroup_create(stream, CONSUMER_GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def run(self, stop: asyncio.Event) -> None:
        await self.ensure_groups()
        loop = asyncio.get_running_loop()
        next_claim = 0.0
        next_trim = loop.time() + self.config.trim_every_s
        while not stop.is_set():
            try:
                if loop.time() >= next_claim:
                    next_claim = loop.time() + self.config.claim_every_s
                    await self.claim_abandoned()
                if loop.time() >= next_trim:
                    next_trim = loop.time() + self.config.trim_every_s
                    await self.trim()
                await self.read_new()
            except asyncio.CancelledError:
                raise
            except Exception:
                # Entries stay pending and are claimed again later: nothing is lost.
                log.exception("outbox batch failed; will retry")
                await asyncio.sleep(0.5)

    async def read_new(self) -> int:
        reply = await self.redis.xreadgroup(
            CONSUMER_GROUP, self.name, dict.fromkeys(self.streams, ">"),
            count=self.config.batch, block=self.config.block_ms)
        done = 0
        for stream, entries in reply or []:
            name = stream.decode() if isinstance(stream, bytes) else stream
            await self.process(self.streams[name], entries)
            done += len(entries)
        return done

    async def claim_abandoned(self) -> int:
        """Take over entries a dead consumer left pending, and redo them."""
        done = 0
        for stream, tenant in self.streams.items():
            start = "0-0"
            while True:
                reply = await self.redis.xautoclaim(
                    stream, CONSUMER_GROUP, self.name, self.config.claim_min_idle_ms,
                    start_id=start, count=self.config.batch)
                start, entries = reply[0], reply[1]
                # Entries deleted from the stream while pending: nothing to redo, just ack.
                deleted = reply[2] if len(reply) > 2 else []
                if deleted:
                    await self.redis.xack(stream, CONSUMER_GROUP, *deleted)
                live = [e for e in entries if e[1]]
                if live:
                    log.info("claimed %d abandoned outbox entries of %s", len(live), tenant)
                    await self.process(tenant, live)
                    done += len(live)
                if start in (b"0-0", "0-0"):
                    break
        return done

    async def trim(self) -> int:
        """Drop entries older than the retention that every consumer is done with: never one
        that is unread or pending (unacknowledged), so trimming cannot lose work."""
        now_s, now_us = await self.redis.time()
        cutoff = now_s * 1000 + now_us // 1000 - int(self.config.retention_s * 1000)
        trimmed = 0
        for stream in self.streams:
            keep_from = _stream_id(f"{cutoff}-0")
            try:
                pending = await self.redis.xpending(stream, CONSUMER_GROUP)
                groups = await self.redis.xinfo_groups(stream)
            except ResponseError:  # no stream or group yet
                continue
            if pending["pending"]:
                keep_from = min(keep_from, _stream_id(pending["min"]))
            for group in groups:
                # Everything after a group's last-delivered id is still unread by it.
                last = _stream_id(group["last-delivered-id"])
                keep_from = min(keep_from, (last[0], last[1] + 1))
            trimmed += await self.redis.xtrim(
                stream, minid=f"{keep_from[0]}-{keep_from[1]}", approximate=False)
        return trimmed

    async def process(self, tenant: str, entries: list[Entry]) -> None:
        events, bad = decode_entries(entries)
        await self.audit.write(events)
        await mark_events(self.redis, self.settings, tenant, events)
        await self.alerts(tenant, events)
        ids = [e.id for e in events] + bad
        if ids:
            await self.redis.xack(tenant_keys(tenant).outbox, CONSUMER_GROUP, *ids)

    async def alerts(self, tenant: str, events: list[Event]) -> None:
        for event in events:
            if event.type == "oversell_rejected":
                await raise_alert(self.redis, tenant, "oversell",
                                  f"order {event.source.ref} refused: {event.reason}",
                                  sku=event.sku, location=event.location,
                                  channel=event.source.channel, ref=event.id,
                                  once=f"ev:{event.id}")
            elif event.after is not None:
                await self._low_stock(tenant, event)

    async def _low_stock(self, tenant: str, event: Event) -> None:
        after = event.after
        assert after is not None
        d = event.delta
        moved = (d.get("on_hand", 0) - d.get("reserved", 0) - d.get("committed", 0)
                 - d.get("unavailable", 0) - d.get("safety", 0))
        before = after.available - moved
        # Only a change that takes available downwards can cross the threshold.
        if moved >= 0:
            return
        raw = await self.redis.hget(tenant_keys(tenant).stock(event.sku), "low_stock_threshold")
        threshold = int(raw or 0)
        if threshold and after.available < threshold <= before:
            await raise_alert(self.redis, tenant, "low_stock",
                              f"available {after.available} fell under {threshold}",
                              sku=event.sku, location=event.location,
                              channel=event.source.channel, ref=event.id,
                              once=f"ev:{event.id}")


def _stream_id(raw: bytes | str) -> tuple[int, int]:
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


async def pending_entries(redis: Redis, tenant: str) -> int:
    """Entries delivered to a consumer and not yet acknowledged."""
    try:
        info = await redis.xpending(tenant_keys(tenant).outbox, CONSUMER_GROUP)
    except ResponseError:
        return 0
    return int(info["pending"])


async def unread_entries(redis: Redis, tenant: str) -> int:
    """Entries not yet delivered to any consumer (the group's lag)."""
    try:
        groups = await redis.xinfo_groups(tenant_keys(tenant).outbox)
    except ResponseError:
        return 0
    for g in groups:
        if g["name"] in (CONSUMER_GROUP, CONSUMER_GROUP.encode()):
            return int(g.get("lag") or 0)
    return 0
