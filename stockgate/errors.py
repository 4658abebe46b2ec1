"""Typed stock errors. Each carries the wire code and HTTP status of the one error shape
`{"error": code, "detail": ..., **fields}` used everywhere."""

from __future__ import annotations

from typing import Any, ClassVar


class StockgateError(Exception):
    code: ClassVar[str] = "error"
    status: ClassVar[int] = 500

    def __init__(self, detail: str = "", **fields: Any) -> None:
        super().__init__(detail or self.code)
        self.detail = detail or self.code.replace("_", " ")
        self.fields = fields

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "detail": self.detail, **self.fields}


class InvalidRequest(StockgateError):
    code = "invalid_request"
    status = 422


class InsufficientStock(StockgateError):
    code = "insufficient_stock"
    status = 409


class LimitExceeded(StockgateError):
    code = "limit_exceeded"
    status = 409


class IdempotencyConflict(StockgateError):
    code = "idempotency_conflict"
    status = 409


class HoldCommitted(StockgateError):
    code = "hold_committed"
    status = 409


class UnknownSku(StockgateError):
    code = "unknown_sku"
    status = 404


class HoldNotFound(StockgateError):
    code = "hold_not_found"
    status = 404


class OrderNotFound(StockgateError):
    code = "order_not_found"
    status = 404


class BundleConflict(StockgateError):
    """A bundle definition the stock model refuses: the SKU has cells or is a component, or
    a component is itself a bundle (nesting is one level); or stock changes aimed at a
    bundle, which has none of its own."""

    code = "bundle_conflict"
    status = 409


class IncomingNotFound(StockgateError):
    code = "incoming_not_found"
    status = 404


class IncomingClosed(StockgateError):
    code = "incoming_closed"
    status = 409


class UnknownChannel(StockgateError):
    """No channel of this name, or one of another tenant (never told apart)."""

    code = "unknown_channel"
    status = 404


class StoreUnavailable(StockgateError):
    """Redis is unreachable: callers should retry (webhooks get 503 + Retry-After)."""

    code = "unavailable"
    status = 503


_BY_SCRIPT_CODE: dict[str, type[StockgateError]] = {
    "invalid": InvalidRequest,
    "insufficient_stock": InsufficientStock,
    "limit_exceeded": LimitExceeded,
    "idempotency_conflict": IdempotencyConflict,
    "hold_committed": HoldCommitted,
    "unknown_sku": UnknownSku,
    "hold_not_found": HoldNotFound,
    "order_not_found": OrderNotFound,
    "bundle_conflict": BundleConflict,
    "incoming_not_found": IncomingNotFound,
    "incoming_closed": IncomingClosed,
}


def from_script(code: str, info: dict[str, Any]) -> StockgateError:
    cls = _BY_SCRIPT_CODE.get(code, StockgateError)
    detail = str(info.pop("detail", ""))
    return cls(detail, **info)
