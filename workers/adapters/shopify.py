"""Shopify GraphQL Admin API: `inventorySetQuantities` sets the available count of up to 250
(inventory item, location) pairs per call, each compared with the count Stockgate last knew
(changeFromQuantity); `nodes(ids:)` reads counts back. Items are inventory item GIDs from
inventory_item_skus, else found once by SKU; locations are GIDs from location_map. The API is
limited by query cost: the adapter keeps the shop's point bucket as the responses report it
and waits, briefly, before a call the bucket cannot pay."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import msgspec

from stockgate.settings import Channel
from workers.adapters.base import (
    OK,
    ChannelAdapter,
    ItemResult,
    PushError,
    PushItem,
    channel_wide,
)

log = logging.getLogger(__name__)

# https://shopify.dev/docs/api/usage/limits: "Input arguments that accept an array have a
# maximum size of 250 for all APIs" (inventorySetQuantities documents no lower limit).
MAX_QUANTITIES = 250
# https://shopify.dev/docs/apps/build/apis/graphql-admin/rate-limits: a mutation costs 10
# points; an object 1, a scalar 0; a connection 2 plus one per object it may return.
MUTATION_COST = 10
# nodes(ids:) answers an item, its inventoryLevel and one quantity per id: 3 points each, so
# 100 ids cost 300, well under the 1,000-point single-query limit.
READ_COST_PER_ID = 3
READ_IDS_PER_QUERY = 100
# SKUs looked up per inventoryItems query (OR-ed terms; room for two matches each).
SKUS_PER_LOOKUP = 25
# A wait for the bucket up to this long happens inside the call; a longer one is the
# channel's back-pressure (PushError with retry_after), so a push never outlives its timeout.
BUCKET_WAIT_MAX_S = 2.0
# The reason every set is recorded under in the shop's inventory history: Stockgate corrects
# the channel's count to the canonical one. https://shopify.dev/docs/apps/build/
# inventory-management-apps/manage-quantities-states lists the reasons.
REASON = "correction"
# https://shopify.dev/changelog/compare-and-swap-redesign-for-inventory-set-quantities:
# changeFromQuantity exists from 2026-01 (null skips the check); from 2026-04 every quantity
# must carry it, explicitly null to opt out, or the call fails, and a mismatch fails with
# CHANGE_FROM_QUANTITY_STALE (https://shopify.dev/changelog/
# finalizing-compare-and-swap-redesign-for-inventory-set-quantities).
CHANGE_FROM_SINCE = "2026-01"
# https://shopify.dev/changelog/making-idempotency-mandatory-for-inventory-adjustments-and-
# refund-mutations: inventorySetQuantities takes @idempotent(key:) from 2026-01 and requires it
# from 2026-04; a replayed key answers the first result without applying again.
IDEMPOTENT_SINCE = "2026-01"
# Retries of one batch (a timeout, a lost answer, another worker taking over a lapsed lease)
# reuse its key and replay. The same contents pushed again as a new operation (identical
# variables meant as a separate operation need a new key:
# https://shopify.dev/docs/api/usage/implementing-idempotency) get a new one: the key covers
# each item's attempt (its delivery version, new with every change or re-push), so a re-push
# of the value a hand edit overwrote is applied, not answered with the first result; and it
# changes with this window. A retry that straddles a window edge is applied again: under
# compare-and-set it comes back stale at the value it set, which counts as done; a blind set
# is just set again.
IDEMPOTENCY_WINDOW_S = 300
# Fresh keys tried for one batch after keys whose earlier attempt failed.
IDEMPOTENCY_SALTS = 4
# Namespace of the keys: uuid5 of the batch's contents, so any worker derives the same key.
_KEYS = uuid.UUID("0b3c2f4e-5d1a-4c55-9a57-53746f636b67")

STALE = "CHANGE_FROM_QUANTITY_STALE"
# Codes of top-level GraphQL errors that say the shop, not the request, failed.
_SERVER_CODES = frozenset({"INTERNAL_SERVER_ERROR", "SERVICE_UNAVAILABLE", "TIMEOUT"})

SET_QUANTITIES = """\
mutation StockgateSetAvailable($input: InventorySetQuantitiesInput!) {
  inventorySetQuantities(input: $input)%s {
    inventoryAdjustmentGroup { createdAt reason referenceDocumentUri }
    userErrors { code field message }
  }
}"""

READ_AVAILABLE = """\
query StockgateAvailable($ids: [ID!]!, $locationId: ID!) {
  nodes(ids: $ids) {
    ... on InventoryItem {
      id
      tracked
      inventoryLevel(locationId: $locationId) {
        quantities(names: ["available"]) { name quantity }
      }
    }
  }
}"""

FIND_BY_SKU = """\
query StockgateItemsBySku($query: String!, $first: Int!) {
  inventoryItems(first: $first, query: $query) {
    nodes { id sku }
    pageInfo { hasNextPage }
  }
}"""


class ThrottleStatus(msgspec.Struct, frozen=True, rename="camel"):
    maximum_available: float
    currently_available: float
    restore_rate: float


class Cost(msgspec.Struct, frozen=True, rename="camel"):
    requested_query_cost: float | None = None
    actual_query_cost: float | None = None
    throttle_status: ThrottleStatus | None = None


class Extensions(msgspec.Struct, frozen=True):
    cost: Cost | None = None


class ErrorExtensions(msgspec.Struct, frozen=True):
    code: str = ""


class GraphQLError(msgspec.Struct, frozen=True):
    message: str = ""
    extensions: ErrorExtensions | None = None

    @property
    def code(self) -> str:
        return self.extensions.code if self.extensions else ""


class Envelope(msgspec.Struct, frozen=True):
    data: dict[str, Any] | None = None
    errors: list[GraphQLError] | str | None = None
    extensions: Extensions | None = None


class UserError(msgspec.Struct, frozen=True):
    message: str = ""
    code: str | None = None
    field: list[str] | None = None


class SetPayload(msgspec.Struct, frozen=True, rename="camel"):
    user_errors: list[UserError] = []


class Quantity(msgspec.Struct, frozen=True):
    name: str
    quantity: int


class Level(msgspec.Struct, frozen=True):
    quantities: list[Quantity] = []


class ItemNode(msgspec.Struct, frozen=True, rename="camel"):
    # A node of another type answers {} through the inline fragment: no id.
    id: str = ""
    tracked: bool = True
    inventory_level: Level | None = None


class Nodes(msgspec.Struct, frozen=True):
    nodes: list[ItemNode | None] = []


class SkuNode(msgspec.Struct, frozen=True):
    id: str
    sku: str | None = None


class PageInfo(msgspec.Struct, frozen=True, rename="camel"):
    has_next_page: bool = False


class SkuMatches(msgspec.Struct, frozen=True, rename="camel"):
    nodes: list[SkuNode] = []
    page_info: PageInfo = PageInfo()


class CostBucket:
    """The shop's point bucket as the last response reported it, refilled at its restore rate.
    A call reserves its expected cost before it leaves, so concurrent calls queue behind each
    other instead of all being throttled."""

    def __init__(self) -> None:
        self.known = False
        self.maximum = 0.0
        self.available = 0.0
        self.restore_rate = 0.0
        self.at = 0.0
        self.in_flight = 0.0

    def level(self, now: float) -> float:
        return min(self.maximum, self.available + (now - self.at) * self.restore_rate)

    def wait_s(self, cost: float, now: float) -> float:
        """Seconds until the bucket holds `cost` points (0: now, or nothing known yet)."""
        if not self.known or cost > self.maximum:
            # Nothing to go by, or more than the bucket ever holds: the shop decides.
            return 0.0
        short = cost - self.level(now)
        if short <= 0:
            return 0.0
        return short / self.restore_rate if self.restore_rate > 0 else math.inf

    def reserve(self, cost: float, now: float) -> None:
        if self.known:
            self.available, self.at = self.level(now) - cost, now
        self.in_flight += cost

    def settle(self, cost: float, status: ThrottleStatus | None, now: float) -> None:
        self.in_flight = max(self.in_flight - cost, 0.0)
        if status is None:
            return
        # What the shop reports has not yet been charged for the calls still in flight.
        self.known = True
        self.maximum = status.maximum_available
        self.restore_rate = status.restore_rate
        self.available, self.at = status.currently_available - self.in_flight, now


def search_value(value: str) -> str:
    """`value` as one quoted value of Shopify's search syntax: inside double quotes a
    backslash escapes the next character, so quotes, colons, spaces, parentheses or OR in a
    SKU stay part of the value (https://shopify.dev/docs/api/usage/search-syntax)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def gid(kind: str, value: str) -> str:
    return f"gid://shopify/{kind}/{value}"


def gid_tail(value: str) -> str:
    """The id inside a GID (gid://shopify/InventoryItem/30322695 -> 30322695)."""
    return value.rsplit("/", 1)[-1].split("?", 1)[0]


def at_least(version: str, since: str) -> bool:
    return version == "unstable" or version >= since


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _quantity_index(field: list[str] | None) -> int | None:
    """The position in input.quantities a userError's field path names, if any."""
    if not field:
        return None
    for n, part in enumerate(field[:-1]):
        if part == "quantities" and field[n + 1].isdigit():
            return int(field[n + 1])
    return None


class ShopifyAdapter(ChannelAdapter):
    """Inventory is set per inventory item (not variant) and location, as absolute
    `available` counts compared with what Stockgate last knew the shop to hold."""

    batch_limit = MAX_QUANTITIES
    read_limit = READ_IDS_PER_QUERY
    compare_and_set = True

    def __init__(self, name: str, channel: Channel, client: httpx.AsyncClient) -> None:
        super().__init__(name, channel, client)
        # api_url is the shop's address; an old REST base (…/admin/api/2025-10) also works,
        # its version ignored in favour of api_version.
        root = re.sub(r"/admin/api/[^/]+$", "", self.base)
        self.version = channel.api_version
        self.endpoint = f"{root}/admin/api/{self.version}/graphql.json"
        self._items: dict[str, str] = {sku: item
                                       for item, sku in channel.inventory_item_skus.items()}
        self._lookup = asyncio.Lock()
        self._bucket = CostBucket()
        # Idempotency keys whose attempt failed: never sent again (_mutate).
        self._burned: set[str] = set()

    def item_id(self, sku: str) -> str:
        """The SKU's inventory item id: configured or found so far, else the SKU itself (a
        variant id is not an inventory item id, so variant_skus is no fallback here)."""
        return self._items.get(sku, sku)

    def headers(self) -> dict[str, str]:
        return {"X-Shopify-Access-Token": self.channel.access_token}

    # -- pushing ---------------------------------------------------------------------------

    async def set_available(self, sku: str, location: str, available: int) -> None:
        """One blind set (no compare): a push_batch of one item. An item the shop refused is
        a PushError about the item (422 when retrying cannot help, else 409), never about
        the channel."""
        [result] = await self.push_batch([PushItem(sku, location, available)])
        if result.status != "ok":
            raise PushError(result.error or f"{self.name}: {result.status}",
                            status=409 if result.retryable else 422)

    async def push_batch(self, items: Sequence[PushItem]) -> list[ItemResult]:
        if not items:
            return []
        if not at_least(self.version, CHANGE_FROM_SINCE):
            raise PushError(f"{self.name}: api_version {self.version} predates "
                            f"changeFromQuantity ({CHANGE_FROM_SINCE}); use 2026-04 or later",
                            status=400)
        found = await self._resolve([item.sku for item in items])
        results: list[ItemResult | None] = [None] * len(items)
        quantities: dict[int, dict[str, Any]] = {}
        for n, item in enumerate(items):
            item_id = found[item.sku]
            if isinstance(item_id, ItemResult):
                results[n] = item_id
                continue
            quantities[n] = {
                "inventoryItemId": gid("InventoryItem", item_id),
                "locationId": gid("Location", self.location_id(item.location)),
                "quantity": item.value,
                # Always present: from 2026-04 a missing key fails the call; null opts out.
                "changeFromQuantity": item.expected,
            }
        stale: list[int] = []
        for chunk in _chunks(list(quantities), self.batch_limit):
            for n, result in (await self._apply(chunk, quantities, items)).items():
                if result is None:
                    stale.append(n)
                else:
                    results[n] = result
        if stale:
            actual = await self._read_stale([quantities[n] for n in stale])
            for n, count in zip(stale, actual, strict=True):
                # Stale even when the channel holds the value we meant to set: it got there by
                # its own sales as much as by an earlier attempt of ours (those replay under
                # their idempotency key instead), and only propagation can tell them apart.
                results[n] = ItemResult("stale", actual=count)
        return [r if r is not None else ItemResult("failed", error=f"{self.name}: no result")
                for r in results]

    async def _apply(self, batch: Sequence[int], quantities: dict[int, dict[str, Any]],
                     items: Sequence[PushItem]) -> dict[int, ItemResult | None]:
        """Send `batch`; None marks a stale item. A refused quantity refuses the whole call
        (the docs: the mutation "fails" with the error, and its adjustment group is null),
        so the others are sent once more without the refused ones."""
        results: dict[int, ItemResult | None] = {}
        remaining = list(batch)
        for _attempt in range(2):
            payload = await self._mutate([quantities[n] for n in remaining],
                                         [items[n].attempt for n in remaining])
            if not payload.user_errors:
                results.update(dict.fromkeys(remaining, OK))
                return results
            refused: set[int] = set()
            general: list[UserError] = []
            for error in payload.user_errors:
                pos = _quantity_index(error.field)
                if pos is None or pos >= len(remaining):
                    general.append(error)
                    continue
                n = remaining[pos]
                refused.add(n)
                if error.code == STALE:
                    results[n] = None
                else:
                    # Bad item, location or quantity: the same call will fail again.
                    results[n] = ItemResult("failed", retryable=False,
                                            error=f"{self.name}: {_describe(error)}")
            if general:
                detail = "; ".join(_describe(e) for e in general)
                for n in remaining:
                    if n not in refused:
                        results[n] = ItemResult("failed", error=f"{self.name}: {detail}")
                return results
            remaining = [n for n in remaining if n not in refused]
            if not remaining:
                return results
        for n in remaining:
            results[n] = ItemResult("failed", error=f"{self.name}: not applied: the call was "
                                                    "refused twice for other items in it")
        return results

    async def _mutate(self, quantities: list[dict[str, Any]], attempts: list[str]
                      ) -> SetPayload:
        """One inventorySetQuantities call. A key whose first attempt failed cannot be used
        again: such a refusal is retried once under a fresh key."""
        salt = 0
        while True:
            key = self._idempotency_key(quantities, attempts, salt)
            if key in self._burned and salt < IDEMPOTENCY_SALTS:
                salt += 1
                continue
            variables = {"input": {
                "name": "available",
                "reason": REASON,
                # Shown in the shop's inventory history next to each change.
                "referenceDocumentUri": f"gid://stockgate/ChannelPush/{key}",
                "quantities": quantities,
            }}
            directive = (f" @idempotent(key: {json.dumps(key)})"
                         if at_least(self.version, IDEMPOTENT_SINCE) else "")
            data = await self._graphql(SET_QUANTITIES % directive, variables, MUTATION_COST)
            try:
                payload = msgspec.convert(data.get("inventorySetQuantities"), SetPayload)
            except msgspec.ValidationError as exc:
                raise PushError(f"{self.name}: unreadable inventorySetQuantities answer: {exc}",
                                status=502) from None
            if payload.user_errors:
                # A key whose attempt failed (stale, refused) answers every later use with
                # that failure: the same batch sent again (its counts read, a retry) needs a
                # new one. Another worker that does not know it finds out from Shopify.
                if len(self._burned) > 10_000:
                    self._burned.clear()
                self._burned.add(key)
                if salt < IDEMPOTENCY_SALTS and any(
                        e.code == "IDEMPOTENCY_PREVIOUS_ATTEMPT_FAILED"
                        for e in payload.user_errors):
                    salt += 1
                    continue
            return payload

    def _idempotency_key(self, quantities: list[dict[str, Any]], attempts: list[str],
                         salt: int) -> str:
        window = int(time.time() // IDEMPOTENCY_WINDOW_S)
        contents = json.dumps([self.endpoint, self.name, REASON, window, salt, quantities,
                               attempts],
                              sort_keys=True, separators=(",", ":"))
        return str(uuid.uuid5(_KEYS, contents))

    async def _read_stale(self, quantities: list[dict[str, Any]]) -> list[int | None]:
        """Counts the shop holds for refused quantities; None for any it would not give."""
        by_location: dict[str, list[int]] = {}
        for n, q in enumerate(quantities):
            by_location.setdefault(q["locationId"], []).append(n)
        counts: list[int | None] = [None] * len(quantities)
        try:
            for location, members in by_location.items():
                for chunk in _chunks(members, READ_IDS_PER_QUERY):
                    read = await self._levels(location,
                                              [quantities[n]["inventoryItemId"] for n in chunk])
                    for n, count in zip(chunk, read, strict=True):
                        counts[n] = count
        except PushError as exc:
            if channel_wide(exc):
                # Back-pressure or an outage: the batch is retried whole (its applied part
                # replays under the same idempotency key), no item is charged a failure.
                raise
            # Stale without a count: propagation retries rather than pushing blind.
            log.warning("%s: refused counts unreadable: %s", self.name, exc)
        return counts

    # -- reading ---------------------------------------------------------------------------

    async def get_available(self, sku: str, location: str) -> int | None:
        return (await self.read_batch([(sku, location)]))[0]

    async def read_batch(self, items: Sequence[tuple[str, str]]) -> list[int | None]:
        if not items:
            return []
        found = await self._resolve([sku for sku, _ in items])
        counts: list[int | None] = [None] * len(items)
        by_location: dict[str, list[tuple[int, str]]] = {}
        for n, (sku, location) in enumerate(items):
            item_id = found[sku]
            if isinstance(item_id, ItemResult):
                continue  # no such item in the shop: it tracks nothing under this SKU
            by_location.setdefault(gid("Location", self.location_id(location)), []).append(
                (n, gid("InventoryItem", item_id)))
        for location, members in by_location.items():
            for chunk in _chunks(members, READ_IDS_PER_QUERY):
                read = await self._levels(location, [item for _, item in chunk])
                for (n, _), count in zip(chunk, read, strict=True):
                    counts[n] = count
        return counts

    async def _levels(self, location: str, items: Sequence[str]) -> list[int | None]:
        data = await self._graphql(READ_AVAILABLE, {"ids": list(items), "locationId": location},
                                   READ_COST_PER_ID * len(items))
        try:
            nodes = msgspec.convert(data, Nodes).nodes
        except msgspec.ValidationError as exc:
            raise PushError(f"{self.name}: unreadable nodes answer: {exc}", status=502) from None
        if len(nodes) != len(items):
            raise PushError(f"{self.name}: {len(nodes)} nodes for {len(items)} ids", status=502)
        return [_available(node) for node in nodes]

    # -- finding items by SKU --------------------------------------------------------------

    async def _resolve(self, skus: Sequence[str]) -> dict[str, str | ItemResult]:
        """Each SKU's inventory item id, or the failed result for an item not found (yet) or
        not one. Found ids are kept for the adapter's life; misses are asked again next time
        (the product may be created meanwhile)."""
        wanted = list(dict.fromkeys(skus))
        answer: dict[str, str | ItemResult] = {}
        missing = [sku for sku in wanted if sku not in self._items]
        if missing:
            async with self._lookup:  # one lookup per SKU, however many pushes want it
                missing = [sku for sku in missing if sku not in self._items]
                for chunk in _chunks(missing, SKUS_PER_LOOKUP):
                    for sku, ids in (await self._find(chunk)).items():
                        if len(ids) == 1:
                            self._items[sku] = ids[0]
                        elif not ids:
                            answer[sku] = ItemResult("failed", retryable=True, error=(
                                f"{self.name}: no inventory item has SKU {sku!r}; map it in "
                                "inventory_item_skus or create it in Shopify"))
                        else:
                            answer[sku] = ItemResult("failed", retryable=False, error=(
                                f"{self.name}: SKU {sku!r} is on {len(ids)} inventory items "
                                f"({', '.join(ids[:5])}); map the right one in "
                                "inventory_item_skus"))
        for sku in wanted:
            if sku in self._items:
                answer[sku] = self._items[sku]
        return answer

    async def _find(self, skus: Sequence[str]) -> dict[str, list[str]]:
        """Inventory items carrying each SKU exactly (the search may also match others)."""
        first = min(2 * len(skus), MAX_QUANTITIES)  # two matches are enough to see ambiguity
        query = " OR ".join(f"sku:{search_value(sku)}" for sku in skus)
        data = await self._graphql(FIND_BY_SKU, {"query": query, "first": first}, 2 + first)
        try:
            matches = msgspec.convert(data.get("inventoryItems") or {}, SkuMatches)
        except msgspec.ValidationError as exc:
            raise PushError(f"{self.name}: unreadable inventoryItems answer: {exc}",
                            status=502) from None
        found: dict[str, list[str]] = {sku: [] for sku in skus}
        for node in matches.nodes:
            if node.sku in found:
                found[node.sku].append(gid_tail(node.id))
        if matches.page_info.has_next_page and len(skus) > 1:
            # The page was full: a SKU short of two matches may have more; ask for it alone.
            for sku in skus:
                if len(found[sku]) < 2:
                    found[sku] = (await self._find([sku]))[sku]
        return found

    # -- the call --------------------------------------------------------------------------

    async def _graphql(self, query: str, variables: dict[str, Any], cost: float
                       ) -> dict[str, Any]:
        """The `data` of one GraphQL call; every failure of the call is a PushError."""
        now = time.monotonic()
        wait = self._bucket.wait_s(cost, now)
        if wait > BUCKET_WAIT_MAX_S:
            raise PushError(f"{self.name}: the GraphQL cost bucket cannot pay {cost:.0f} "
                            f"points for {wait:.1f}s", status=429, retry_after=wait)
        self._bucket.reserve(cost, now)
        status: ThrottleStatus | None = None
        try:
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                response = await self.client.post(self.endpoint, headers=self.headers(),
                                                  json={"query": query, "variables": variables})
            except httpx.HTTPError as exc:
                raise PushError(f"{self.name}: {type(exc).__name__}: {exc}") from exc
            envelope = self._envelope(response)
            spent = envelope.extensions.cost if envelope.extensions else None
            status = spent.throttle_status if spent else None
        finally:
            self._bucket.settle(cost, status, time.monotonic())
        self._raise_for_errors(envelope, cost)
        if envelope.data is None:
            raise PushError(f"{self.name}: GraphQL answer without data", status=502)
        return envelope.data

    def _envelope(self, response: httpx.Response) -> Envelope:
        body = self.decode(response)  # 4xx, 5xx and non-JSON bodies raise here
        try:
            return msgspec.convert(body, Envelope)
        except msgspec.ValidationError as exc:
            raise PushError(f"{self.name}: not a GraphQL answer: {exc}", status=502) from None

    def _raise_for_errors(self, envelope: Envelope, cost: float) -> None:
        """Top-level errors: THROTTLED is back-pressure (429 with the seconds until the bucket
        holds the requested cost); an error of the shop is 502 (retry); any other means the
        request itself is wrong (400: retrying the same call cannot help)."""
        errors = envelope.errors
        if not errors:
            return
        if isinstance(errors, str):
            raise PushError(f"{self.name}: {errors[:200]}", status=502)
        codes = {e.code for e in errors}
        detail = "; ".join(f"{e.code or 'ERROR'}: {e.message}" for e in errors)[:300]
        if "THROTTLED" in codes:
            raise PushError(f"{self.name}: throttled: {detail}", status=429,
                            retry_after=self._refill_s(envelope, cost))
        if codes & _SERVER_CODES:
            raise PushError(f"{self.name}: {detail}", status=502)
        if "ACCESS_DENIED" in codes:
            raise PushError(f"{self.name}: {detail}", status=403)
        raise PushError(f"{self.name}: {detail}", status=400)

    @staticmethod
    def _refill_s(envelope: Envelope, cost: float) -> float:
        spent = envelope.extensions.cost if envelope.extensions else None
        status = spent.throttle_status if spent else None
        if status is None or status.restore_rate <= 0:
            return 1.0
        requested = spent.requested_query_cost if spent and spent.requested_query_cost else cost
        return max((requested - status.currently_available) / status.restore_rate, 0.05)


def _available(node: ItemNode | None) -> int | None:
    if node is None or not node.id or not node.tracked or node.inventory_level is None:
        return None
    for quantity in node.inventory_level.quantities:
        if quantity.name == "available":
            return quantity.quantity
    return None


def _describe(error: UserError) -> str:
    where = ".".join(error.field) if error.field else ""
    return " ".join(part for part in (error.code or "", where, error.message) if part)
