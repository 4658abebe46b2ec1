"""Incoming stock: purchase orders and transfers expected at locations, their receipts and
cancellation (lua/incoming.lua, receive.lua, incoming_cancel.lua), and what the stock view
shows of them. Pre-order selling against incoming units is a rule of can_take
(lua/_common.lua): a take may go past the backorder limit by min(open incoming units at the
location, preorder_limit minus what the SKU's other locations have pre-sold): the limit is
one budget per SKU."""

from __future__ import annotations

import calendar
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import msgspec

from stockgate.keys import tenant_keys
from stockgate.models import (
    MAX_INCOMING_LINES,
    MAX_RECEIPTS,
    CellState,
    IncomingAt,
    IncomingList,
    IncomingRecord,
    IncomingRequest,
    ReceiptReply,
    ReceiptRequest,
)

if TYPE_CHECKING:
    from stockgate.stock import StockEngine

_record = msgspec.json.Decoder(IncomingRecord).decode


def _fingerprint(payload: object) -> str:
    from stockgate.stock import fingerprint  # stock imports this module for the view
    return fingerprint(payload)


async def create(engine: StockEngine, tenant: str, body: IncomingRequest
                 ) -> tuple[IncomingRecord, bool]:
    k = tenant_keys(tenant)
    lines = engine._lines(tenant, body.lines, body.location)
    expected = body.expected_date
    expected_ms = calendar.timegm(expected.timetuple()) * 1000  # midnight UTC of that day
    request = {"incoming_id": body.incoming_id, "kind": body.kind, "reference": body.reference,
               "expected_ms": expected_ms, "expected_date": expected.isoformat(),
               "max_lines": MAX_INCOMING_LINES, "lines": lines,
               "fp": _fingerprint([body.kind, body.reference, expected_ms, lines])}
    return await engine._run("incoming", tenant,
                             [k.outbox, k.incoming(body.incoming_id), k.incoming_index],
                             request, "", IncomingRecord)


async def receive(engine: StockEngine, tenant: str, incoming_id: str, body: ReceiptRequest
                  ) -> tuple[ReceiptReply, bool]:
    k = tenant_keys(tenant)
    lines = engine._lines(tenant, body.lines)
    request = {"incoming_id": incoming_id, "receipt_id": body.receipt_id, "close": body.close,
               "lines": lines, "max_lines": MAX_INCOMING_LINES, "max_receipts": MAX_RECEIPTS,
               "fp": _fingerprint([lines, body.close])}
    return await engine._run("receive", tenant, [k.outbox, k.incoming(incoming_id)], request,
                             "", ReceiptReply)


async def cancel(engine: StockEngine, tenant: str, incoming_id: str
                 ) -> tuple[IncomingRecord, bool]:
    k = tenant_keys(tenant)
    return await engine._run("incoming_cancel", tenant, [k.outbox, k.incoming(incoming_id)],
                             {"incoming_id": incoming_id}, "", IncomingRecord)


async def get(engine: StockEngine, tenant: str, incoming_id: str) -> IncomingRecord | None:
    raw = await engine.redis.hget(tenant_keys(tenant).incoming(incoming_id), "record")
    return _record(raw) if raw else None


async def listing(engine: StockEngine, tenant: str, *, sku: str | None = None,
                  status: str | None = None, limit: int = 100) -> IncomingList:
    """Newest first. Filters run over the newest records, scanning at most 20 times `limit`
    records, so a call stays bounded however many there are."""
    k = tenant_keys(tenant)
    ids = await engine.redis.zrevrange(k.incoming_index, 0, limit * 20 - 1)
    found: list[IncomingRecord] = []
    for start in range(0, len(ids), 200):
        chunk = ids[start:start + 200]
        pipe = engine.redis.pipeline(transaction=False)
        for incoming_id in chunk:
            pipe.hget(k.incoming(incoming_id.decode()), "record")
        for raw in await pipe.execute():
            if not raw:
                continue
            rec = _record(raw)
            if status and rec.status != status:
                continue
            if sku and all(ln.sku != sku for ln in rec.lines):
                continue
            found.append(rec)
            if len(found) >= limit:
                return IncomingList(found)
    return IncomingList(found)


def view(raw: Mapping[bytes, bytes], locations: Mapping[str, CellState],
         preorder_limit: int) -> dict[str, IncomingAt]:
    """Per location: open incoming units, the earliest expected date, and the units
    pre-order selling may still take there (what opted-in channels are shown on top of
    available). `raw` is the SKU's incoming hash (TenantKeys.incoming_sku)."""
    expected: dict[str, int] = {}
    earliest: dict[str, int] = {}
    for field, value in raw.items():
        loc = field.decode().partition("|")[0]
        units, _, when = value.decode().partition("|")
        expected[loc] = expected.get(loc, 0) + int(units)
        earliest[loc] = min(earliest.get(loc, int(when)), int(when))
    # Pre-sold units per location, as lua presold() counts them: beyond available and the
    # backorder limit. The limit is the SKU's, so each location's room is what the others
    # have left of it (never more than its own incoming units).
    sold = {loc: presold(c) for loc, c in locations.items()}
    total = sum(sold.values())
    out = {}
    for loc, units in sorted(expected.items()):
        cell = locations.get(loc)
        avail = cell.available if cell else 0
        room = max(0, min(units, preorder_limit - (total - sold.get(loc, 0))))
        out[loc] = IncomingAt(expected=units, next_expected_at_ms=earliest[loc],
                              preorderable=max(avail + room, 0) - max(avail, 0))
    return out


def presold(cell: CellState) -> int:
    """Units of a cell sold beyond its stock and backorder limit (lua presold()): what it took
    of the SKU's pre-order budget."""
    return max(0, -(cell.available + cell.backorder_limit))


def sellable(locations: Mapping[str, CellState], expected: Mapping[str, IncomingAt],
             preorder_limit: int, among: Sequence[str]) -> dict[str, int]:
    """Per location, what a channel that shows pre-orders and sells from the locations
    `among` may be shown: available (never below zero) plus pre-order room against incoming
    stock there. The budget is the SKU's, shared by its locations (lua preorder_room), so it
    is shared out over the channel's locations in its order: a channel that sums several
    locations (or lists each) is never shown more of it than is left."""
    budget = max(0, preorder_limit - sum(presold(c) for c in locations.values()))
    out = {loc: max(cell.available, 0) for loc, cell in locations.items()}
    for loc in among:
        if loc in out and loc in expected:
            extra = min(expected[loc].preorderable, budget)
            budget -= extra
            out[loc] += extra
    return out
