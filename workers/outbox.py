"""The outbox consumer: reads every tenant's outbox stream through one consumer group.

For each batch: write the events to the audit store (durable), mark the delivery targets in
Redis, raise event-derived alerts, and only then XACK. A worker killed anywhere before the ack
leaves its entries pending; after `claim_min_idle_ms` any worker takes them over with
XAUTOCLAIM and redoes the batch, which is idempotent (audit rows are keyed on the event id,
delivery marks only bump versions, alerts carry the event id as a once-marker).

While the audit store is unreachable (a PostgreSQL outage) pushes and alerts go on, since they
need only Redis, but the entries are not acknowledged: they stay pending, and once the store
answers again a claim redoes them and writes their rows. Claims wait for the store meanwhile,
so those entries are not redone (and pushed again) every claim interval.

Each process reads under its own consumer name. A clean shutdown deletes it from the group,
and a start deletes consumers idle longer than `forget_idle_s` that hold nothing pending, so
names of past processes do not pile up.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, PipelineCommand
from redis.exceptions import ResponseError

from stockgate.activity import Tally
from stockgate.alerts import raise_alert
from stockgate.audit import AuditStore, audit_unreachable
from stockgate.cluster import StockCluster, is_cluster
from stockgate.keys import CONSUMER_GROUP, tenant_keys
from stockgate.models import Event, event_decoder
from stockgate.settings import Settings
from workers import preorders
from workers.propagation import mark_events

log = logging.getLogger("stockgate.outbox")

# A node that cannot be read is said so at most this often (a round runs every 20 ms).
NODE_TROUBLE_LOG_S = 5.0

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
    # A consumer idle this long with nothing pending is a past process: deleted at start. A
    # live one reads every block_ms, and one deleted by mistake costs nothing (XREADGROUP
    # makes it again); only pending entries make a consumer worth keeping.
    forget_idle_s: float = 600.0
    # On a Redis Cluster, where reads cannot block (see _read_cluster): the pause after a
    # round that found nothing, which is the most it adds to propagation lag.
    cluster_idle_ms: int = 20


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
                 config: OutboxConfig | None = None, name: str | None = None,
                 tally: Tally | None = None) -> None:
        self.redis = redis
        # "changes" and "oversell_attempts" per tenant (the worker flushes it).
        self.tally = tally if tally is not None else Tally()
        self.settings = settings
        self.audit = audit
        self.config = config or OutboxConfig()
        self.name = name or consumer_name()
        self.tenants = settings.tenant_names()
        self.streams = {tenant_keys(t).outbox: t for t in self.tenants}
        self._trouble_logged: dict[str, float] = {}

    async def ensure_groups(self) -> None:
        """The consumer group on every stream. On a Cluster a stream whose shard is down is
        skipped (its reads fail until it is back, and NOGROUP makes it then): one shard must
        not keep a worker from starting for every tenant, holds expiring included."""
        for stream in self.streams:
            try:
                await self._ensure_group(stream)
            except Exception as exc:  # CancelledError is no Exception
                if not is_cluster(self.redis):
                    raise
                log.warning("outbox group of %s not made yet: %s", self.streams[stream],
                            type(exc).__name__)

    async def _ensure_group(self, stream: str) -> None:
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
                    # Entries left pending for an unreachable audit store were pushed
                    # already; claim them (and a dead worker's) once it is back.
                    if await self.audit.reachable():
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
        if is_cluster(self.redis):
            return await self._read_cluster()
        reply = await self.redis.xreadgroup(
            CONSUMER_GROUP, self.name, dict.fromkeys(self.streams, ">"),
            count=self.config.batch, block=self.config.block_ms)
        done = 0
        for stream, entries in reply or []:
            name = stream.decode() if isinstance(stream, bytes) else stream
            await self.process(self.streams[name], entries)
            done += len(entries)
        return done

    async def _read_cluster(self) -> int:
        """A Cluster refuses one XREADGROUP over streams in different slots, and each tenant's
        stream has a slot of its own; a blocking read per tenant would hold a connection per
        tenant. So: one non-blocking read per stream, one pipeline per node, and a pause of
        cluster_idle_ms when every stream was empty. Each node's pipeline stands alone (not
        redis-py's ClusterPipeline, which fails the whole round when one node is down): a
        shard that is down or failing over delays its own tenants only."""
        cluster: StockCluster = self.redis  # type: ignore[assignment]
        await cluster.initialize()
        by_node: dict[str, tuple[ClusterNode, list[str]]] = {}
        for stream in self.streams:
            node = cluster.get_node_from_key(stream)
            by_node.setdefault(node.name, (node, []))[1].append(stream)

        async def read(node: ClusterNode, streams: list[str]) -> list[Any]:
            commands = [PipelineCommand(i, "XREADGROUP", "GROUP", CONSUMER_GROUP, self.name,
                                        "COUNT", self.config.batch, "STREAMS", stream, ">")
                        for i, stream in enumerate(streams)]
            await node.execute_pipeline(commands)
            return [c.result for c in commands]

        streams_of = {name: streams for name, (_, streams) in by_node.items()}
        rounds = await asyncio.gather(*(read(node, streams) for node, streams in by_node.values()),
                                      return_exceptions=True)
        done = 0
        for (node, _), replies in zip(by_node.values(), rounds, strict=True):
            if isinstance(replies, BaseException):
                if isinstance(replies, asyncio.CancelledError):
                    raise replies
                self._node_trouble(node.name, replies)
                cluster.refresh_slots()  # a failover or a move: read the topology again
                continue
            for stream, reply in zip(streams_of[node.name], replies, strict=True):
                if isinstance(reply, ResponseError) and str(reply).startswith("NOGROUP"):
                    await self._ensure_group(stream)  # skipped at start: its shard was down
                    continue
                if isinstance(reply, Exception):  # MOVED, ASK, TRYAGAIN, a lost reply
                    self._node_trouble(node.name, reply)
                    cluster.refresh_slots()
                    continue
                for stream, entries in reply or []:
                    name = stream.decode() if isinstance(stream, bytes) else stream
                    await self.process(self.streams[name], entries)
                    done += len(entries)
        if not done:
            await asyncio.sleep(self.config.cluster_idle_ms / 1000)
        return done

    def _node_trouble(self, node: str, error: BaseException) -> None:
        """Logged once per node per NODE_TROUBLE_LOG_S: a round runs every cluster_idle_ms."""
        now = time.monotonic()
        if now - self._trouble_logged.get(node, -NODE_TROUBLE_LOG_S) >= NODE_TROUBLE_LOG_S:
            self._trouble_logged[node] = now
            log.warning("outbox streams on node %s not read: %s (its tenants wait; the others "
                        "go on)", node, type(error).__name__)

    async def claim_abandoned(self) -> int:
        """Take over entries a dead consumer left pending, and redo them. A stream that
        cannot be claimed now (its shard down) is left for the next claim, not the rest."""
        done = 0
        for stream, tenant in self.streams.items():
            try:
                done += await self._claim(stream, tenant)
            except Exception as exc:  # CancelledError is no Exception: it still stops us
                log.warning("outbox of %s not claimed: %s", tenant, type(exc).__name__)
        return done

    async def _claim(self, stream: str, tenant: str) -> int:
        done = 0
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
        audited = True
        try:
            await self.audit.write(events)
        except Exception as exc:
            if not audit_unreachable(exc):
                raise
            # Channels must not wait for the trail: push and alert now, and keep the entries
            # pending (unacknowledged) until their rows are written.
            audited = False
            log.debug("audit store unreachable: %d entries of %s stay pending", len(events),
                      tenant)
        await mark_events(self.redis, self.settings, tenant, events)
        await self.alerts(tenant, events)
        if audited:  # else the entries come round again, and are counted then
            self.tally.count(tenant, "changes", len(events))
            refused = sum(1 for e in events if e.type == "oversell_rejected")
            if refused:
                self.tally.count(tenant, "oversell_attempts", refused)
        ids = ([e.id for e in events] if audited else []) + bad
        if ids:
            await self.redis.xack(tenant_keys(tenant).outbox, CONSUMER_GROUP, *ids)

    async def forget_idle_consumers(self) -> list[str]:
        """Delete consumers of past processes: idle longer than forget_idle_s, nothing
        pending. One with pending entries stays until a claim takes them over."""
        bound_ms = int(self.config.forget_idle_s * 1000)
        forgotten = []
        for stream in self.streams:
            try:
                consumers = await self.redis.xinfo_consumers(stream, CONSUMER_GROUP)
            except ResponseError:  # no stream or group yet
                continue
            except Exception as exc:  # a Cluster shard down: its consumers wait a start
                if not is_cluster(self.redis):
                    raise
                log.warning("outbox consumers of %s not checked: %s", self.streams[stream],
                            type(exc).__name__)
                continue
            for consumer in consumers:
                name = _text(consumer["name"])
                if (name == self.name or int(consumer["pending"])
                        or int(consumer["idle"]) <= bound_ms):
                    continue
                dropped = await self.redis.xgroup_delconsumer(stream, CONSUMER_GROUP, name)
                if dropped:
                    # It woke and read between the two calls: those entries are no longer
                    # pending anywhere, though it will most likely finish them itself.
                    log.error("consumer %s read %d entries of %s while being deleted", name,
                              dropped, stream)
                forgotten.append(name)
        if forgotten:
            log.info("deleted %d idle outbox consumer(s) of past workers", len(forgotten))
        return forgotten

    async def leave(self) -> bool:
        """On a clean shutdown, after the last batch: delete this consumer from the group.
        With entries still pending (their audit rows could not be written) it stays, so
        that nothing is lost: another worker claims them, and a later start deletes it."""
        left = True
        for stream in self.streams:
            try:
                mine = await self.redis.xpending_range(stream, CONSUMER_GROUP, min="-",
                                                       max="+", count=1,
                                                       consumername=self.name)
            except ResponseError:
                continue
            if mine:
                log.info("outbox consumer %s keeps its pending entries of %s for a claim",
                         self.name, stream)
                left = False
                continue
            await self.redis.xgroup_delconsumer(stream, CONSUMER_GROUP, self.name)
        return left

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
                await preorders.check_event(self.redis, tenant, event)

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


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _stream_id(raw: bytes | str) -> tuple[int, int]:
    ms, _, seq = _text(raw).partition("-")
    return int(ms), int(seq or 0)


async def audited_through(redis: Redis, tenant: str, upto_ms: int) -> bool:
    """Every outbox entry written up to `upto_ms` is acknowledged, so its audit row exists
    (an entry is acknowledged only after its row is written). False while entries of that
    time are unread, or pending (a worker mid-batch, or the audit store down)."""
    stream = tenant_keys(tenant).outbox
    try:
        pending = await redis.xpending(stream, CONSUMER_GROUP)
        groups = await redis.xinfo_groups(stream)
    except ResponseError:  # no outbox or no group yet: no worker reads it, nothing to await
        return True
    if pending["pending"] and _stream_id(pending["min"])[0] <= upto_ms:
        return False
    for group in groups:
        if _text(group["name"]) == CONSUMER_GROUP:
            last = _text(group["last-delivered-id"])
            unread = await redis.xrange(stream, min=f"({last}", max=str(upto_ms), count=1)
            return not unread
    return True


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
