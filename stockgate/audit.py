"""The audit trail: every outbox event in a durable, queryable store.

SQLite in the data directory by default, PostgreSQL when `audit_dsn` is a postgresql:// URL.
Writes are batched (one transaction per outbox batch) and idempotent on (tenant, event id):
an entry redone after a worker crash is ignored, so the trail has no duplicates.

PostgreSQL is opened lazily: holds, commits, webhooks, pushes and expiry need only Redis, so
neither the gateway nor the worker waits for it to start. While it is unreachable every call
fails fast with AuditUnavailable (the outbox keeps its entries unacknowledged, GET /v1/events
answers 503) and a connect is tried again at most every RECONNECT_EVERY_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import msgspec

from stockgate.errors import InvalidRequest, StoreUnavailable
from stockgate.models import Event
from stockgate.settings import Settings

log = logging.getLogger("stockgate.audit")

# psycopg's connect_timeout (whole seconds, at least 2): a host that drops packets fails the
# connect in this long instead of the kernel's two minutes.
CONNECT_TIMEOUT_S = 3
# After a failed connect, calls fail at once for this long instead of each waiting on a connect
# that would fail again; also the Retry-After of GET /v1/events while the store is down.
RECONNECT_EVERY_S = 2.0
_encode = msgspec.json.Encoder().encode
_event_decoder = msgspec.json.Decoder(Event)


class EventQuery(msgspec.Struct, frozen=True):
    tenant: str
    sku: str | None = None
    type: str | None = None
    # Any of these types (None: no filter). A reader after a few types among many (a channel's
    # sales among its carts' holds) filters in the query, so other rows cannot fill its page.
    types: tuple[str, ...] | None = None
    channel: str | None = None
    # The order, refund, hold or fulfilment id the event came from (its source ref): an
    # order's whole story in one query.
    ref: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    # Stream id of the last event of the previous page.
    cursor: str | None = None
    limit: int = 100
    # The console reads the latest first; the cursor then pages back in time.
    newest_first: bool = False


class EventPage(msgspec.Struct, frozen=True):
    events: list[Event]
    next_cursor: str | None = None


class AuditUnavailable(StoreUnavailable):
    """The audit store cannot be reached now; the same call succeeds once it is back."""

    def __init__(self, detail: str = "audit store unreachable",
                 retry_after: float = RECONNECT_EVERY_S) -> None:
        super().__init__(detail)
        self.retry_after = max(1, math.ceil(retry_after))


def audit_unreachable(exc: BaseException) -> bool:
    """The store is down or its connection broke (not a bad query): worth another try later.
    psycopg's OperationalError is exactly that class of error (disconnects, shutdown, too many
    connections, disk full); it is looked up only if the PostgreSQL store imported psycopg."""
    if isinstance(exc, AuditUnavailable):
        return True
    psycopg = sys.modules.get("psycopg")
    return psycopg is not None and isinstance(exc, psycopg.OperationalError)


def split_id(event_id: str) -> tuple[int, int]:
    """Stream ids "<ms>-<seq>" order numerically, not as text."""
    try:
        ms, seq = event_id.split("-", 1)
        return int(ms), int(seq)
    except ValueError:
        raise InvalidRequest("cursor is not an event id", cursor=event_id) from None


def _row(event: Event) -> tuple[Any, ...]:
    ms, seq = split_id(event.id)
    return (event.tenant, ms, seq, event.ts, event.type, event.sku, event.location,
            event.source.channel, event.source.ref, _encode(event).decode())


def _where(q: EventQuery, mark: str) -> tuple[str, list[Any]]:
    """WHERE clause shared by both stores; `mark` is the driver's placeholder."""
    clauses, args = [f"tenant = {mark}"], [q.tenant]
    for column, value in (("sku", q.sku), ("type", q.type), ("channel", q.channel),
                          ("ref", q.ref)):
        if value is not None:
            clauses.append(f"{column} = {mark}")
            args.append(value)
    if q.types is not None:
        if q.types:
            clauses.append(f"type IN ({', '.join([mark] * len(q.types))})")
            args += list(q.types)
        else:
            clauses.append("1 = 0")  # none of no types
    if q.since_ms is not None:
        clauses.append(f"ts >= {mark}")
        args.append(q.since_ms)
    if q.until_ms is not None:
        clauses.append(f"ts < {mark}")
        args.append(q.until_ms)
    if q.cursor:
        ms, seq = split_id(q.cursor)
        after = "<" if q.newest_first else ">"
        clauses.append(f"(id_ms {after} {mark} OR (id_ms = {mark} AND id_seq {after} {mark}))")
        args += [ms, ms, seq]
    return " AND ".join(clauses), args


def _order(q: EventQuery) -> str:
    return "id_ms DESC, id_seq DESC" if q.newest_first else "id_ms, id_seq"


def _page(bodies: list[str], limit: int) -> EventPage:
    events = [_event_decoder.decode(b) for b in bodies[:limit]]
    more = len(bodies) > limit
    return EventPage(events=events, next_cursor=events[-1].id if more and events else None)


_COLUMNS = "tenant, id_ms, id_seq, ts, type, sku, location, channel, ref, body"


class AuditStore(Protocol):
    async def open(self) -> None: ...
    async def reachable(self) -> bool: ...
    async def close(self) -> None: ...
    async def write(self, events: Sequence[Event]) -> None: ...
    async def query(self, q: EventQuery) -> EventPage: ...
    async def count(self, tenant: str) -> int: ...


class SqliteAuditStore:
    """One file in the data directory; calls run in a thread so the event loop never blocks."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await asyncio.to_thread(self._connect)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        # WAL lets the API read while a worker writes; a second worker waits instead of failing.
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=10000")
        db.executescript("""
            CREATE TABLE IF NOT EXISTS audit_events (
              tenant TEXT NOT NULL, id_ms INTEGER NOT NULL, id_seq INTEGER NOT NULL,
              ts INTEGER NOT NULL, type TEXT NOT NULL, sku TEXT NOT NULL,
              location TEXT NOT NULL, channel TEXT NOT NULL, ref TEXT NOT NULL,
              body TEXT NOT NULL, PRIMARY KEY (tenant, id_ms, id_seq));
            CREATE INDEX IF NOT EXISTS audit_events_sku ON audit_events (tenant, sku, id_ms);
            CREATE INDEX IF NOT EXISTS audit_events_ts ON audit_events (tenant, ts);
            CREATE INDEX IF NOT EXISTS audit_events_ref ON audit_events (tenant, ref, id_ms);
        """)
        return db

    async def reachable(self) -> bool:
        return self._db is not None

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await asyncio.to_thread(db.close)

    def _write(self, rows: list[tuple[Any, ...]]) -> None:
        assert self._db is not None
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(
                f"INSERT OR IGNORE INTO audit_events ({_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    async def write(self, events: Sequence[Event]) -> None:
        if events:
            rows = [_row(e) for e in events]
            async with self._lock:
                await asyncio.to_thread(self._write, rows)

    async def query(self, q: EventQuery) -> EventPage:
        where, args = _where(q, "?")
        sql = f"SELECT body FROM audit_events WHERE {where} ORDER BY {_order(q)} LIMIT ?"
        assert self._db is not None
        async with self._lock:
            rows = await asyncio.to_thread(
                lambda: self._db.execute(sql, [*args, q.limit + 1]).fetchall())  # type: ignore[union-attr]
        return _page([r[0] for r in rows], q.limit)

    async def count(self, tenant: str) -> int:
        assert self._db is not None
        async with self._lock:
            rows = await asyncio.to_thread(lambda: self._db.execute(  # type: ignore[union-attr]
                "SELECT count(*) FROM audit_events WHERE tenant = ?", [tenant]).fetchall())
        return int(rows[0][0])


class PostgresAuditStore:
    """PostgreSQL through psycopg 3's async connection. The DSN may set a schema with
    `?options=-csearch_path%3D<schema>`; the table is created there if missing."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn: Any = None
        self._lock = asyncio.Lock()
        self._retry_at = 0.0  # time.monotonic() before which no connect is tried
        self._down = False  # logged as unreachable, not yet as back

    async def open(self) -> None:
        """Connect if PostgreSQL is up; if it is not, the first call after it is back does."""
        async with self._lock:
            try:
                await self._live()
            except AuditUnavailable:
                pass  # logged by _live; holds, pushes and expiry do not need the trail

    async def reachable(self) -> bool:
        """Connected, or connected now (at most one try per RECONNECT_EVERY_S)."""
        async with self._lock:
            try:
                await self._live()
            except AuditUnavailable:
                return False
        return True

    async def _connect(self) -> Any:
        import psycopg

        conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True,
                                                     connect_timeout=CONNECT_TIMEOUT_S)
        try:
            async with conn.transaction():
                await conn.execute("""
                    CREATE TABLE IF NOT EXISTS audit_events (
                      tenant TEXT NOT NULL, id_ms BIGINT NOT NULL, id_seq BIGINT NOT NULL,
                      ts BIGINT NOT NULL, type TEXT NOT NULL, sku TEXT NOT NULL,
                      location TEXT NOT NULL, channel TEXT NOT NULL, ref TEXT NOT NULL,
                      body TEXT NOT NULL, PRIMARY KEY (tenant, id_ms, id_seq))""")
                await conn.execute("CREATE INDEX IF NOT EXISTS audit_events_sku "
                                   "ON audit_events (tenant, sku, id_ms)")
                await conn.execute("CREATE INDEX IF NOT EXISTS audit_events_ts "
                                   "ON audit_events (tenant, ts)")
                await conn.execute("CREATE INDEX IF NOT EXISTS audit_events_ref "
                                   "ON audit_events (tenant, ref, id_ms)")
        except BaseException:
            await conn.close()
            raise
        return conn

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()

    async def _live(self) -> Any:
        """The connection, made again after PostgreSQL restarted or dropped it: psycopg marks
        such a connection broken and it never recovers by itself. The call that found it
        broken has failed (and is retried by its caller); the next one reconnects. Called
        with the lock held."""
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        now = time.monotonic()
        if now < self._retry_at:
            raise AuditUnavailable(retry_after=self._retry_at - now)
        import psycopg

        try:
            fresh = await self._connect()
        except (psycopg.OperationalError, OSError) as exc:
            self._retry_at = time.monotonic() + RECONNECT_EVERY_S
            if not self._down:
                self._down = True
                # psycopg's message runs over several lines (libpq's hints); the first says why.
                reason = (str(exc).strip().splitlines() or [""])[0]
                log.warning("audit store unreachable (%s: %s); trying again every %.0fs",
                            type(exc).__name__, reason, RECONNECT_EVERY_S)
            raise AuditUnavailable() from exc
        if self._down:
            self._down = False
            log.warning("audit store reachable again")
        if conn is not None:
            with contextlib.suppress(Exception):  # broken already: closing only frees it
                await conn.close()
        self._conn = fresh
        return fresh

    async def write(self, events: Sequence[Event]) -> None:
        if not events:
            return
        rows = [_row(e) for e in events]
        async with self._lock:
            conn = await self._live()
            async with conn.transaction(), conn.cursor() as cur:
                await cur.executemany(
                    f"INSERT INTO audit_events ({_COLUMNS}) VALUES "
                    "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING", rows)

    async def query(self, q: EventQuery) -> EventPage:
        where, args = _where(q, "%s")
        sql = f"SELECT body FROM audit_events WHERE {where} ORDER BY {_order(q)} LIMIT %s"
        async with self._lock:
            cur = await (await self._live()).execute(sql, [*args, q.limit + 1])
            rows = await cur.fetchall()
        return _page([r[0] for r in rows], q.limit)

    async def count(self, tenant: str) -> int:
        async with self._lock:
            cur = await (await self._live()).execute(
                "SELECT count(*) FROM audit_events WHERE tenant = %s", [tenant])
            row = await cur.fetchone()
        return int(row[0])


def audit_store(settings: Settings) -> AuditStore:
    """The store the settings ask for (not yet opened)."""
    dsn = settings.audit_dsn
    if dsn.startswith(("postgresql://", "postgres://")):
        return PostgresAuditStore(dsn)
    return SqliteAuditStore(Path(settings.data_dir) / "audit.sqlite3")
