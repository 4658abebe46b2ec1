"""BigCommerce: v3 inventory absolute adjustments set many (location, variant) quantities in
one call; v3 inventory items read them back; v2 orders give the order a webhook only names
by id (with its products and, once partly shipped, its shipments).

Ids that reach a request are integers: a mapped variant or location id that is not one
fails its item unsent, an order id that is not one fails the fetch unsent. A SKU without a
mapped variant (Channel.variant_skus) is looked up, as a query parameter, and cached; a SKU
the store does not have fails alone. A location without a mapped id (Channel.location_map)
is the channel's one stock figure: the store's default location, id 1.

BigCommerce facts this relies on:
- "By default, all BigCommerce stores have at least one location (id = 1)"
  (https://developer.bigcommerce.com/docs/rest-management/locations);
- absolute adjustments take up to 2,000 items per request, best grouped by location; the
  quantity tops out at 2,147,483,647 (reference/inventory.v3.yml and
  docs/store-operations/catalog/inventory-adjustments.mdx in bigcommerce/docs,
  https://developer.bigcommerce.com/docs/store-operations/catalog/inventory-adjustments);
- one invalid item refuses the whole request with 422 {"status", "title", "type",
  "errors"}, nothing applied; the title names what was refused ("[Item with variant_id 106
  is tracked by product, please update stock by product id]" in the reference; "Location
  not found, identities: [3,2]" as integrators report it). The adapter drops the items a
  title names and sends the rest again; a title that names none is bisected, within
  ISOLATE_CALLS_MAX calls;
- GET /v3/inventory/items filters by sku:in, variant_id:in, location_id:in (comma lists)
  and answers {"data": [{"identity": {"sku", "variant_id", ...}, "locations":
  [{"location_id", "available_to_sell", "total_inventory_onhand", ...}]}], "meta"};
  GET /v3/catalog/variants?sku= finds one variant by SKU
  (https://developer.bigcommerce.com/api-reference/store-management/catalog/variants/getvariants);
- every response carries X-Rate-Limit-Requests-Left and X-Rate-Limit-Time-Reset-Ms (also
  -Requests-Quota, -Time-Window-Ms); a 429 says how long in X-Rate-Limit-Time-Reset-Ms
  (https://developer.bigcommerce.com/docs/start/best-practices/api-rate-limits). The store's
  quota is shared by every app: when a reply says none is left, the next call waits for the
  reset (or, past QUOTA_WAIT_MAX_S, gives the wait back as back-pressure)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterable, Sequence
from typing import Any

import httpx
import msgspec

from workers.adapters.base import (
    OK,
    RETRY_AFTER_DEFAULT_S,
    RETRY_AFTER_MAX_S,
    ChannelAdapter,
    ChannelOrder,
    ItemResult,
    OrderLine,
    OrderState,
    PushError,
    PushItem,
    Shipment,
    seconds,
)

ABSOLUTE = "/v3/inventory/adjustments/absolute"
ITEMS = "/v3/inventory/items"
BATCH_ITEMS_LIMIT = 2000
DEFAULT_LOCATION_ID = 1
QUANTITY_MAX = 2_147_483_647
ID_MAX = 2_147_483_647
REASON = "stockgate sync"
# Calls one batch may spend (the first included) to find which items a 422 refused.
ISOLATE_CALLS_MAX = 16
# A reset this close is waited for in the adapter; a later one is handed back as a PushError
# with retry_after, so propagation holds the channel instead of a lane sleeping.
QUOTA_WAIT_MAX_S = 2.0
# SKUs per sku:in lookup and variants per variant_id:in read: keeps URLs short.
LOOKUP_SKUS = 50
READ_VARIANTS = 100
READ_PAGES_MAX = 20
_DIGITS = re.compile(r"[0-9]{1,10}")
_VARIANT_NAMED = re.compile(r"variant_id\D{0,3}(\d+)")
_LOCATIONS_NAMED = re.compile(r"identities:\s*\[([\d,\s]+)\]")

# BigCommerce's order status ids, as documented in its Orders v2 API reference ("Order Status
# Descriptions" under GET /v2/order_statuses/{status_id}):
# https://docs.bigcommerce.com/developer/api-reference/rest/admin/management/orders/order-status/get-order-statuses-status
STATUS_NAMES = {
    0: "Incomplete", 1: "Pending", 2: "Shipped", 3: "Partially Shipped", 4: "Refunded",
    5: "Cancelled", 6: "Declined", 7: "Awaiting Payment", 8: "Awaiting Pickup",
    9: "Awaiting Shipment", 10: "Completed", 11: "Awaiting Fulfillment",
    12: "Manual Verification Required", 13: "Disputed", 14: "Partially Refunded",
}
# What each status means for the order's units. A refund or dispute is money, not goods: the
# status cannot say which units came back, so it asks for review (docs/order-lifecycle.md).
# Every other id (pending, awaiting payment/fulfilment/shipment/pickup, manual verification,
# ids BigCommerce may add) is a sale whose units are still in the building: "open".
STATUS_STATES: dict[int, OrderState] = {
    0: "incomplete",
    2: "shipped", 10: "shipped",
    3: "partially_shipped",
    5: "cancelled", 6: "cancelled",
    4: "refunded", 13: "refunded", 14: "refunded",
}


def parse_id(text: str) -> int | None:
    """A mapped or given id as BigCommerce's positive integer; None unless it is exactly one
    (ASCII digits: str.isdigit also takes other scripts' digits and superscripts)."""
    if not _DIGITS.fullmatch(text) or not 0 < int(text) <= ID_MAX:
        return None
    return int(text)


def _id(value: object) -> int | None:
    """A positive integer id from a reply, else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _data(body: Any) -> list[dict[str, Any]]:
    rows = body.get("data") if isinstance(body, dict) else None
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


Target = tuple[int, int]  # (location id, variant id)


class Refused(Exception):
    """A 422 for an absolute adjustment: nothing was applied. `title` is BigCommerce's."""

    def __init__(self, title: str) -> None:
        super().__init__(title)
        self.title = title
        self.variants = {int(v) for v in _VARIANT_NAMED.findall(title)}
        found = _LOCATIONS_NAMED.search(title) if "location" in title.lower() else None
        self.locations = {int(v) for v in re.findall(r"\d+", found.group(1))} if found else set()

    def names(self, target: Target) -> bool:
        location, variant = target
        return variant in self.variants or location in self.locations


class BigCommerceAdapter(ChannelAdapter):
    batch_limit = BATCH_ITEMS_LIMIT
    read_limit = READ_VARIANTS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._variants: dict[str, int] = {}
        # monotonic time the store's request quota resets at, once a reply said none is left
        self._quota_resets_at = 0.0

    def headers(self) -> dict[str, str]:
        return {"X-Auth-Token": self.channel.access_token, "Accept": "application/json"}

    # ---- calls and the store's quota ------------------------------------------------------

    async def send(self, method: str, path: str, *, json: Any = None,
                   params: dict[str, str] | None = None) -> httpx.Response:
        """One request, after the quota's reset if the last reply said none was left."""
        wait = self._quota_resets_at - time.monotonic()
        if wait > QUOTA_WAIT_MAX_S:
            raise PushError(f"{self.name}: request quota used up, resets in {wait:.1f}s",
                            retry_after=wait, status=429)
        if wait > 0:
            await asyncio.sleep(wait)
        try:
            response = await self.client.request(method, self.base + path, json=json,
                                                 params=params, headers=self.headers())
        except httpx.HTTPError as exc:
            raise PushError(f"{self.name}: {type(exc).__name__}: {exc}") from exc
        if response.headers.get("X-Rate-Limit-Requests-Left", "").strip() == "0":
            reset = seconds(response.headers.get("X-Rate-Limit-Time-Reset-Ms", ""), 0.001)
            self._quota_resets_at = time.monotonic() + min(
                reset if reset is not None else RETRY_AFTER_DEFAULT_S, RETRY_AFTER_MAX_S)
        return response

    async def call(self, method: str, path: str, *, json: Any = None,
                   params: dict[str, str] | None = None) -> Any:
        return self.decode(await self.send(method, path, json=json, params=params))

    # ---- ids ------------------------------------------------------------------------------

    async def resolve(self, skus: Iterable[str]) -> dict[str, int | str]:
        """Each SKU's variant id, or why it has none."""
        found: dict[str, int | str] = {}
        missing = []
        for sku in dict.fromkeys(skus):
            mapped = self._item_ids.get(sku)
            if mapped is not None:
                found[sku] = parse_id(mapped) or (
                    f"mapped variant id {mapped[:40]!r} is not a BigCommerce id (decimal)")
            elif sku in self._variants:
                found[sku] = self._variants[sku]
            elif not sku:
                found[sku] = "an empty SKU names no BigCommerce variant"
            else:
                missing.append(sku)
        if missing:
            looked_up = await self._look_up(missing)
            self._variants |= looked_up
            for sku in missing:
                found[sku] = looked_up.get(sku) or (
                    f"no BigCommerce variant has SKU {sku[:80]!r}")
        return found

    async def _look_up(self, skus: list[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        # sku:in is a comma list: a SKU holding a comma is asked for alone, by exact sku.
        for chunk in _chunks([s for s in skus if "," not in s], LOOKUP_SKUS):
            body = await self.call("GET", ITEMS, params={"sku:in": ",".join(chunk),
                                                         "limit": str(len(chunk))})
            for row in _data(body):
                identity = row.get("identity")
                if isinstance(identity, dict) and identity.get("sku") in chunk and (
                        variant := _id(identity.get("variant_id"))):
                    found[identity["sku"]] = variant
        for sku in (s for s in skus if "," in s):
            body = await self.call("GET", "/v3/catalog/variants",
                                   params={"sku": sku, "include_fields": "sku"})
            for row in _data(body):
                if row.get("sku") == sku and (variant := _id(row.get("id"))):
                    found[sku] = variant
        return found

    def location(self, location: str) -> int | str:
        """The location's BigCommerce id, or why it has none."""
        mapped = self._location_ids.get(location)
        if mapped is None:
            return DEFAULT_LOCATION_ID
        return parse_id(mapped) or (
            f"mapped location id {mapped[:40]!r} is not a BigCommerce id (decimal)")

    # ---- writes ---------------------------------------------------------------------------

    async def push_batch(self, items: Sequence[PushItem]) -> list[ItemResult]:
        results: list[ItemResult] = [OK] * len(items)
        variants = await self.resolve(item.sku for item in items)
        quantities: dict[Target, int] = {}  # a later item for the same target wins
        members: dict[Target, list[int]] = {}
        for n, item in enumerate(items):
            variant, location = variants[item.sku], self.location(item.location)
            if isinstance(variant, str):
                why = variant
            elif isinstance(location, str):
                why = location
            elif not 0 <= item.value <= QUANTITY_MAX:
                why = f"{item.value} is outside BigCommerce's 0..{QUANTITY_MAX}"
            else:
                quantities[location, variant] = item.value
                members.setdefault((location, variant), []).append(n)
                continue
            results[n] = ItemResult("failed", error=why, retryable=False)
        for chunk in _chunks(list(quantities), self.batch_limit):
            done = await self._set({t: quantities[t] for t in chunk}, [ISOLATE_CALLS_MAX])
            for target, result in done.items():
                for n in members[target]:
                    results[n] = result
        return results

    async def _set(self, quantities: dict[Target, int], budget: list[int]
                   ) -> dict[Target, ItemResult]:
        """Set `quantities` in one call; when BigCommerce refuses the call, set the others
        and fail the refused items alone. `budget` counts the calls left for that."""
        if not quantities:
            return {}
        if budget[0] <= 0:
            return dict.fromkeys(quantities, ItemResult(
                "failed", error=f"not sent: finding the item BigCommerce refused in this "
                                f"batch took its {ISOLATE_CALLS_MAX} calls"))
        budget[0] -= 1
        try:
            await self._absolute(quantities)
        except Refused as exc:
            refused = ItemResult("failed", error=f"BigCommerce refused: {exc.title}"[:300],
                                 retryable=False)
            named = [t for t in quantities if exc.names(t)]
            if len(quantities) == 1 or len(named) == len(quantities):
                return dict.fromkeys(quantities, refused)
            if named:
                rest = {t: q for t, q in quantities.items() if t not in named}
                return dict.fromkeys(named, refused) | await self._set(rest, budget)
            targets = list(quantities)
            half = len(targets) // 2
            first = await self._set({t: quantities[t] for t in targets[:half]}, budget)
            return first | await self._set({t: quantities[t] for t in targets[half:]}, budget)
        return dict.fromkeys(quantities, OK)

    async def _absolute(self, quantities: dict[Target, int]) -> None:
        # Sorted by location: BigCommerce asks bulk adjustments to be grouped by location.
        body = {"reason": REASON, "items": [
            {"location_id": location, "variant_id": variant, "quantity": quantity}
            for (location, variant), quantity in sorted(quantities.items())]}
        response = await self.send("PUT", ABSOLUTE, json=body)
        if response.status_code == 422:
            raise Refused(_title(response))
        self.decode(response)

    async def set_available(self, sku: str, location: str, available: int) -> None:
        [result] = await self.push_batch([PushItem(sku, location, available)])
        if result.status != "ok":
            raise PushError(f"{self.name}: {result.error}",
                            status=502 if result.retryable else 422)

    # ---- reads ----------------------------------------------------------------------------

    async def read_batch(self, items: Sequence[tuple[str, str]]) -> list[int | None]:
        variants = await self.resolve(sku for sku, _ in items)
        targets: list[Target | None] = []
        for sku, location in items:
            variant, location_id = variants[sku], self.location(location)
            targets.append((location_id, variant) if isinstance(variant, int)
                           and isinstance(location_id, int) else None)
        wanted = [t for t in targets if t is not None]
        locations = ",".join(map(str, sorted({t[0] for t in wanted})))
        counts: dict[Target, int | None] = {}
        for chunk in _chunks(sorted({t[1] for t in wanted}), READ_VARIANTS):
            page, pages = 1, 1
            while page <= min(pages, READ_PAGES_MAX):
                body = await self.call("GET", ITEMS, params={
                    "variant_id:in": ",".join(map(str, chunk)), "location_id:in": locations,
                    "limit": str(len(chunk)), "page": str(page)})
                for row in _data(body):
                    identity = row.get("identity")
                    variant = _id(identity.get("variant_id")) if isinstance(
                        identity, dict) else None
                    for at in row.get("locations") or []:
                        if variant and isinstance(at, dict) and (
                                location_id := _id(at.get("location_id"))):
                            counts[location_id, variant] = _on_hand(at)
                pages = _pages(body)
                page += 1
        return [counts.get(t) if t is not None else None for t in targets]

    async def get_available(self, sku: str, location: str) -> int | None:
        [count] = await self.read_batch([(sku, location)])
        return count

    # ---- orders ---------------------------------------------------------------------------

    def _order_path(self, order_id: str) -> str:
        if parse_id(order_id) is None:
            raise PushError(f"{self.name}: order id {order_id[:40]!r} is not a BigCommerce "
                            "order id (decimal)", status=400)
        return f"/v2/orders/{order_id}"

    def _sku(self, product: dict[str, Any]) -> str:
        return product.get("sku") or self.channel.variant_skus.get(
            str(product.get("variant_id")), "")

    async def fetch_order(self, order_id: str) -> ChannelOrder:
        path = self._order_path(order_id)
        order = await self.call("GET", path) or {}
        products = await self.call("GET", f"{path}/products") or []
        lines = [OrderLine(sku=self._sku(p), qty=int(p["quantity"])) for p in products]
        # An order without a readable status is still a sale: -1 maps to "open".
        status_id = _int(order.get("status_id"), -1)
        state = STATUS_STATES.get(status_id, "open")
        shipments = (await self.fetch_shipments(order_id, products)
                     if state == "partially_shipped" else [])
        return ChannelOrder(order_id=str(order_id), state=state,
                            # SKU-less products stay: the worker alerts on a sale it
                            # cannot count instead of dropping it unseen.
                            lines=[ln for ln in lines if ln.qty > 0],
                            status_id=status_id,
                            status=STATUS_NAMES.get(status_id, f"status {status_id}"),
                            shipments=shipments)

    async def fetch_shipments(self, order_id: str, products: list[dict[str, Any]]
                              ) -> list[Shipment]:
        """The order's shipments (GET /v2/orders/{id}/shipments; 204 when there are none).
        A shipment's `items` name the order's products by `order_product_id`, the `id` of
        an entry of /v2/orders/{id}/products, which is where the SKU is."""
        body = await self.call("GET", f"{self._order_path(order_id)}/shipments",
                               params={"limit": "250"}) or []
        sku_of = {str(p.get("id")): self._sku(p) for p in products if p.get("id") is not None}
        shipments = []
        for shipment in body:
            lines = [OrderLine(sku=sku_of.get(str(item.get("order_product_id")), ""),
                               qty=_int(item.get("quantity")))
                     for item in shipment.get("items") or []]
            shipments.append(Shipment(shipment_id=str(shipment.get("id", "")),
                                      lines=[ln for ln in lines if ln.sku and ln.qty > 0]))
        return [s for s in shipments if s.shipment_id]


def _int(value: object, default: int = 0) -> int:
    """An id or quantity as BigCommerce sends it (int, numeric string, a float for shipment
    quantities); anything else is `default`."""
    try:
        return int(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return default


def _title(response: httpx.Response) -> str:
    """A problem body's title (one line, bounded), else the start of the body."""
    try:
        title = msgspec.json.decode(response.content).get("title")
    except (msgspec.DecodeError, AttributeError):
        title = None
    text = title if isinstance(title, str) else response.text[:200]
    return " ".join(text.split())[:300]


def _on_hand(at: dict[str, Any]) -> int | None:
    """The level an absolute adjustment sets (on hand); available_to_sell is that less the
    safety stock, so reading it back would show drift on every item with a safety stock."""
    for field in ("total_inventory_onhand", "available_to_sell"):
        value = at.get(field)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _pages(body: Any) -> int:
    """meta.pagination.total_pages of a list reply; 1 when it does not say."""
    meta = body.get("meta") if isinstance(body, dict) else None
    pagination = meta.get("pagination") if isinstance(meta, dict) else None
    return _int(pagination.get("total_pages"), 1) if isinstance(pagination, dict) else 1
