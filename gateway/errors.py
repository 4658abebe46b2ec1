"""HTTP-level errors of the gateway, in the same `{"error", "detail", ...}` shape as the stock
errors, so one handler turns every failure into a reply."""

from __future__ import annotations

from stockgate.errors import StockgateError


class MalformedRequest(StockgateError):
    """Not JSON, or JSON that does not fit the schema (the detail names the field)."""

    code = "malformed_request"
    status = 400


class Unauthorized(StockgateError):
    code = "unauthorized"
    status = 401


class Forbidden(StockgateError):
    code = "forbidden"
    status = 403


class NotFound(StockgateError):
    code = "not_found"
    status = 404


class MethodNotAllowed(StockgateError):
    code = "method_not_allowed"
    status = 405


class BodyTooLarge(StockgateError):
    code = "body_too_large"
    status = 413


class BodyTimeout(StockgateError):
    """The body did not arrive in full within `body_timeout_s`: answered 408 and the
    connection closed (the rest of the body may still be on its way)."""

    code = "body_timeout"
    status = 408


class UnsupportedMediaType(StockgateError):
    code = "unsupported_media_type"
    status = 415


class OrderNotYetKnown(StockgateError):
    """A fulfilment or refund of an order Stockgate has not seen yet (its create is still on
    the way): answered 409 with Retry-After so the channel delivers it again, for a bounded
    time (gateway/webhooks.py), instead of acknowledging a shipment that changed nothing."""

    code = "order_not_yet_known"
    status = 409
    retry_after = 60


class RateLimited(StockgateError):
    code = "rate_limited"
    status = 429

    def __init__(self, retry_after_s: float) -> None:
        super().__init__("too many requests for this API key")
        # Whole seconds, at least 1: what the Retry-After header can carry.
        self.retry_after = max(1, int(retry_after_s + 0.999))
