"""TikTok Shop: the `Authorization` header is the lowercase hex HMAC-SHA256, keyed with the app
secret (the channel's `secret`), of the app key followed by the raw body.

Sources (the Partner Center pages are a JavaScript app; their text was read through SDKs that
quote them, each named here):
- https://partner.tiktokshop.com/docv2/page/tts-webhooks-overview: the signature scheme and the
  official vector (app key "abcdef", secret "123", the type 1 body below ->
  5dec0f11...ac05), quoted in rymndcs/tiktok_shop_rb_api test/conformance_adapter.rb and
  implemented the same way in EcomPHP/tiktokshop-php src/Webhook.php
  (hash_hmac('sha256', app_key . raw body, app_secret) against the Authorization header).
- The envelope {type, tts_notification_id, shop_id, timestamp (Unix seconds), data}; type 1
  ORDER_STATUS_CHANGE carries data {order_id, order_status, update_time, is_on_hold_order}
  (the same official example). Types 11 CANCELLATION_STATUS_CHANGE and 12
  RETURN_STATUS_CHANGE are from the SDK enumerations (Laraditz/Matheusm821 tiktok EventType,
  phamkhanhminhman97/shopee-tiktok-lazada-api webhook.response.ts for the return fields
  order_id, return_id, return_type, return_status): not read on TikTok's own page.

The signature covers the body only; the body names the notification (`tts_notification_id`,
the delivery id for dedupe) and its time (`timestamp`). An ORDER_STATUS_CHANGE names the order
and its new status but no line items, so (as for BigCommerce) the gateway acknowledges and
queues a fetch of the order (Get Order Detail, workers/adapters/tiktok.py), whose status
decides order / fulfil / cancel. A CANCELLED status is applied at once: the signed body says
so, and the order's units go back on sale without waiting for the fetch (which then replays
the cancel). A cancellation event queues a fetch (the request may be rejected: only the
order's status says). A return event names no lines: one whose status says the refund went
through (RETURN_OR_REFUND_REQUEST_SUCCESS or _COMPLETE) queues a fetch, which reads the
order's returns (Search Returns) and restocks those whose goods came back to the seller
(RETURN_AND_REFUND), once per return id; the other statuses change nothing.

Shops: one app (one app key and secret) signs the webhooks of every shop it is authorised
for, so a signature proves the app, not the shop. A channel's `tiktok.shop_id` (required at
load) makes it ignore a body whose `shop_id` differs: it belongs to another shop's channel,
or to another merchant of a partner app.

Replays: a notification id seen before is a duplicate (and so is the same body under any id);
the body's `timestamp` may not be ahead of the clock by more than the webhook tolerance. There
is no bound on the past: TikTok retries a failed delivery with its original timestamp, for
longer than a day when the gateway was down, and a refused retry was lost without a word.
An old body is harmless: a CANCELLED is a cancel (idempotent; TikTok never re-opens a
cancelled order) ordered by its update_time, every other event queues a fetch, which reads the
order's current state and refuses an order placed before the return window with a
`stale_delivery` alert (workers/queue.py apply_channel_order).
"""

from __future__ import annotations

import hashlib
import hmac

import msgspec
from starlette.datastructures import Headers

from gateway.channels.base import (
    Delivery,
    FetchOrder,
    Operation,
    OrderCancelled,
    equal,
    order_ref,
    parse,
)
from gateway.errors import Unauthorized
from stockgate.settings import Channel

ORDER_STATUS_CHANGE = 1
CANCELLATION_STATUS_CHANGE = 11
RETURN_STATUS_CHANGE = 12
TOPICS = {ORDER_STATUS_CHANGE: "ORDER_STATUS_CHANGE",
          CANCELLATION_STATUS_CHANGE: "CANCELLATION_STATUS_CHANGE",
          RETURN_STATUS_CHANGE: "RETURN_STATUS_CHANGE"}
# Return statuses after which a return's refund went through (Search Returns' descriptions,
# workers/adapters/tiktok.py): whether its goods came back is the return's type, read then.
REFUNDED = frozenset({"RETURN_OR_REFUND_REQUEST_SUCCESS", "RETURN_OR_REFUND_REQUEST_COMPLETE"})


class EventData(msgspec.Struct, frozen=True):
    order_id: str | int = ""
    order_status: str = ""
    update_time: int = 0
    return_id: str | int = ""
    return_type: str = ""
    return_status: str = ""
    cancel_id: str | int = ""


class Event(msgspec.Struct, frozen=True):
    type: int
    tts_notification_id: str | int = ""
    shop_id: str | int = ""
    timestamp: int = 0
    data: EventData = EventData()


class Stamp(msgspec.Struct, frozen=True):
    timestamp: int = 0


_EVENT = msgspec.json.Decoder(Event)
_STAMP = msgspec.json.Decoder(Stamp)


def signature(app_key: str, app_secret: str, body: bytes) -> str:
    """What TikTok sends in `Authorization`: hex HMAC-SHA256(app secret, app key + raw body)."""
    return hmac.new(app_secret.encode(), app_key.encode() + body, hashlib.sha256).hexdigest()


def verify(channel: Channel, headers: Headers, body: bytes, now: float,
           tolerance_s: int) -> Delivery:
    if channel.tiktok is None:
        raise Unauthorized("channel has no tiktok app key configured")
    given = headers.get("authorization")
    if not given:
        raise Unauthorized("missing Authorization")
    expected = signature(channel.tiktok.app_key, channel.secret, body).encode()
    if not equal(expected, given.strip().lower().encode("latin-1")):
        raise Unauthorized("signature mismatch")
    # Authentic: now the signed time can be read. Only the future is bounded (module
    # docstring: a retry keeps its original, possibly days-old, timestamp).
    stamp = parse(_STAMP, body, "event").timestamp
    if stamp and stamp > now + tolerance_s:
        raise Unauthorized("timestamp ahead of the clock")
    return Delivery("", "")


def decode(channel_id: str, channel: Channel, delivery: Delivery, body: bytes
           ) -> tuple[Delivery, list[Operation]]:
    event = parse(_EVENT, body, "event")
    topic = TOPICS.get(event.type, f"type-{event.type}")
    delivery = Delivery(str(event.tts_notification_id)
                        or "sha256-" + hashlib.sha256(body).hexdigest(), topic)
    data = event.data
    order_id = str(data.order_id)
    if event.type not in TOPICS or not order_id:
        return delivery, []  # product, address, package, authorization events: no stock
    shop = channel.tiktok.shop_id if channel.tiktok is not None else ""
    if shop and str(event.shop_id) != shop:
        # Signed by the app for another of its shops: that shop's channel applies it.
        return delivery, []
    ref = order_ref(channel_id, order_id)
    if event.type == ORDER_STATUS_CHANGE and data.order_status == "CANCELLED":
        return delivery, [OrderCancelled(ref, 0, data.update_time * 1000)]
    if event.type == RETURN_STATUS_CHANGE and data.return_status not in REFUNDED:
        return delivery, []
    return delivery, [FetchOrder(order_id)]
