"""The one interface every channel adapter implements: set the available count of a SKU at a
location, read the count back, and (where the channel's webhooks carry only ids) fetch an
order. Errors come out as PushError so propagation can tell "wait and retry" from "broken"."""

from __future__ import annotations

from typing import Any, Literal

import httpx
import msgspec

from stockgate.settings import Channel


class PushError(Exception):
    """A call to the channel failed. `retry_after` is set when the channel asked us to slow
    down (429 / Retry-After): that is back-pressure, not a failure of the delivery."""

    def __init__(self, detail: str, *, retry_after: float | None = None,
                 status: int = 0) -> None:
        super().__init__(detail)
        self.retry_after = retry_after
        self.status = status


class OrderLine(msgspec.Struct, frozen=True):
    sku: str
    qty: int


# What a fetched order's channel status means for its units; each adapter maps its channel's
# own statuses onto these and workers/queue.py applies them:
#   incomplete         checkout never finished: nothing was sold
#   open               sold, not shipped: the units are committed
#   shipped            every unit left: fulfil every open unit
#   partially_shipped  some units left: fulfil what `shipments` lists
#   cancelled          the sale is off: open units go back on sale
#   refunded           money went back, which goods came back is unknown: review
OrderState = Literal["incomplete", "open", "shipped", "partially_shipped", "cancelled",
                     "refunded"]


class Shipment(msgspec.Struct, frozen=True):
    """One of a partially shipped order's shipments: its channel id (the fulfilment's
    idempotency key) and the lines it took."""

    shipment_id: str
    lines: list[OrderLine]


class ChannelOrder(msgspec.Struct, frozen=True):
    order_id: str
    state: OrderState
    lines: list[OrderLine]
    # The channel's own status, for fulfilment ids, alerts and logs.
    status_id: int = 0
    status: str = ""
    # Read only for a partially shipped order: the other states need no shipment detail.
    shipments: list[Shipment] = []

    @property
    def cancelled(self) -> bool:
        return self.state == "cancelled"


def _retry_after(response: httpx.Response) -> float:
    value = response.headers.get("Retry-After", "")
    try:
        return max(float(value), 0.05)
    except ValueError:
        # BigCommerce sends its window in milliseconds in its own header.
        ms = response.headers.get("X-Rate-Limit-Time-Reset-Ms", "")
        return max(float(ms) / 1000, 0.05) if ms.isdigit() else 1.0


class ChannelAdapter:
    """Base for the HTTP adapters: id mapping and the error handling they share."""

    def __init__(self, name: str, channel: Channel, client: httpx.AsyncClient) -> None:
        self.name = name
        self.channel = channel
        self.client = client
        self.base = channel.api_url.rstrip("/")
        self._item_ids = {sku: vid for vid, sku in channel.variant_skus.items()}
        self._location_ids = {loc: cid for cid, loc in channel.location_map.items()}

    def item_id(self, sku: str) -> str:
        """The channel's id for a SKU: the variant mapped to it in the config, else the SKU."""
        return self._item_ids.get(sku, sku)

    def location_id(self, location: str) -> str:
        return self._location_ids.get(location, location)

    def headers(self) -> dict[str, str]:
        return {}

    async def call(self, method: str, path: str, *, json: Any = None,
                   params: dict[str, str] | None = None) -> Any:
        try:
            response = await self.client.request(method, self.base + path, json=json,
                                                 params=params, headers=self.headers())
        except httpx.HTTPError as exc:
            raise PushError(f"{self.name}: {type(exc).__name__}: {exc}") from exc
        if response.status_code == 429:
            raise PushError(f"{self.name}: rate limited", status=429,
                            retry_after=_retry_after(response))
        if response.status_code >= 400:
            raise PushError(f"{self.name}: HTTP {response.status_code} "
                            f"{response.text[:200]}", status=response.status_code)
        return response.json() if response.content else None

    async def set_available(self, sku: str, location: str, available: int) -> None:
        raise NotImplementedError

    async def get_available(self, sku: str, location: str) -> int | None:
        """The channel's count, or None when it does not track the item."""
        raise NotImplementedError

    async def fetch_order(self, order_id: str) -> ChannelOrder:
        raise NotImplementedError(f"{self.channel.kind} orders arrive in full by webhook")
