"""Reply bodies of the storefront API that differ from the engine's own Structs."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from stockgate.models import HoldReply, MovedLine


class HoldCreated(msgspec.Struct, frozen=True):
    hold_id: str
    expires_at: str  # ISO 8601, UTC
    expires_at_ms: int
    lines: list[MovedLine]

    @classmethod
    def of(cls, reply: HoldReply) -> HoldCreated:
        when = datetime.fromtimestamp(reply.expires_at_ms / 1000, UTC)
        return cls(
            hold_id=reply.hold_id,
            expires_at=when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            expires_at_ms=reply.expires_at_ms,
            lines=[MovedLine(ln.sku, ln.location, ln.qty) for ln in reply.lines],
        )


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
