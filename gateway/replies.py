"""Reply bodies of the storefront API that differ from the engine's own Structs."""

from __future__ import annotations

import time

import msgspec

from stockgate.models import ExtendReply, HoldReply, MovedLine


class HoldCreated(msgspec.Struct, frozen=True):
    hold_id: str
    expires_at: str  # ISO 8601, UTC
    expires_at_ms: int
    lines: list[MovedLine]

    @classmethod
    def of(cls, reply: HoldReply) -> HoldCreated:
        ms = reply.expires_at_ms
        return cls(reply.hold_id, iso_ms(ms), ms,
                   [MovedLine(ln.sku, ln.location, ln.qty) for ln in reply.lines])


class HoldExtended(msgspec.Struct, frozen=True):
    hold_id: str
    expires_at: str  # ISO 8601, UTC: the real expiry, clamped or not
    expires_at_ms: int
    max_expires_at: str  # the latest any extension can reach (creation + hold_max_total_s)
    capped: bool  # the asked ttl_s reached past max_expires_at and was clamped to it

    @classmethod
    def of(cls, reply: ExtendReply) -> HoldExtended:
        return cls(reply.hold_id, iso_ms(reply.expires_at_ms), reply.expires_at_ms,
                   iso_ms(reply.max_expires_at_ms), reply.capped)


def iso_ms(ms: int) -> str:
    """Epoch milliseconds as ISO 8601 UTC with milliseconds, e.g. 2026-05-01T12:00:00.250Z.

    Integer arithmetic and `time.strftime` instead of a timezone-aware datetime: exact for
    every millisecond, and cheaper on the path of every hold.
    """
    second, milli = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)) + f".{milli:03d}Z"


def replay_headers(replayed: bool) -> dict[str, str] | None:
    """Marks a repeat of an idempotent call in a header, as Stripe does, not in the body: the
    body of a repeat must be the first answer byte for byte."""
    return {"Idempotent-Replayed": "true"} if replayed else None


class BulkLineResult(msgspec.Struct, frozen=True, omit_defaults=True):
    index: int
    sku: str
    status: int
    result: msgspec.Raw | None = None
    error: dict | None = None


class BulkReply(msgspec.Struct, frozen=True):
    applied: int
    failed: int
    results: list[BulkLineResult]
