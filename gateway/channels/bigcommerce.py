"""BigCommerce: authenticity is a shared secret in a custom header set when the hook was
created (POST /v3/hooks `headers`); the payload's `hash` is an unkeyed SHA-1 of the event, good
for dedupe (a re-fired event carries the same hash) but not for authenticity.

The payload names the order only by id, so the gateway acknowledges at once and queues a
fetch; the worker reads the order from the channel's API, which is the authoritative data.
"""

from __future__ import annotations

import msgspec
from starlette.datastructures import Headers

from gateway.channels.base import Delivery, FetchOrder, Operation, equal, parse
from gateway.errors import Unauthorized
from stockgate.settings import Channel

TOPICS = frozenset({"store/order/created", "store/order/updated", "store/order/statusUpdated"})


class Data(msgspec.Struct, frozen=True):
    type: str = ""
    id: int | str = 0


class Hook(msgspec.Struct, frozen=True):
    scope: str
    data: Data
    hash: str = ""
    created_at: int = 0


_HOOK = msgspec.json.Decoder(Hook)


def verify(channel: Channel, headers: Headers, body: bytes, now: float,
           tolerance_s: int) -> Delivery:
    given = headers.get(channel.secret_header)
    if not given:
        raise Unauthorized(f"missing {channel.secret_header}")
    if not equal(channel.secret.encode(), given.encode("latin-1")):
        raise Unauthorized("secret mismatch")
    return Delivery("", "")


def decode(channel_id: str, channel: Channel, delivery: Delivery, body: bytes
           ) -> tuple[Delivery, list[Operation]]:
    hook = parse(_HOOK, body, "hook")
    # The id and topic are known only now that the (authenticated) body is parsed.
    delivery = Delivery(hook.hash or f"{hook.scope}:{hook.data.id}:{hook.created_at}",
                        hook.scope)
    if hook.scope not in TOPICS or not hook.data.id:
        return delivery, []
    return delivery, [FetchOrder(str(hook.data.id))]
