"""WooCommerce REST v3: a product's (or variation's) `stock_quantity` with manage_stock on,
set through the batch endpoints and read through the product lists. WooCommerce has one
stock figure per product, no locations. access_token is "consumer_key:consumer_secret" sent
as HTTP basic auth, as WooCommerce expects over HTTPS.

An item is a product id, or "<product>/<variation>" for a variation; both are decimal
integers, so nothing but digits ever reaches a URL path. A SKU without a mapped id
(Channel.variant_skus) is looked up with GET /products?sku= (a query parameter, escaped by
httpx) and the answer cached; a SKU the store does not have fails alone, unsent.

WooCommerce facts this relies on (https://woocommerce.github.io/woocommerce-rest-api-docs/,
and woocommerce/woocommerce plugins/woocommerce/includes/rest-api/Controllers/Version3/):
- POST /products/batch and POST /products/<id>/variations/batch take at most 100 items
  (filter woocommerce_rest_batch_items_limit; past it: 413
  woocommerce_rest_request_entity_too_large, nothing applied; class-wc-rest-controller.php);
- an item of a batch that fails comes back in place as {"id", "error": {"code", "message",
  "data": {"status"}}}, the others are applied (batch_items); an unknown id is
  woocommerce_rest_<post type>_invalid_id, status 400 (class-wc-rest-crud-controller.php);
- GET /products?sku= finds variations too (post_type product and product_variation, with
  "type": "variation" and "parent_id"), and splits the value on commas, also matching the
  whole value (class-wc-rest-products-controller.php, prepare_objects_query): one call looks
  up many comma-free SKUs, and only an exact `sku` match counts;
- GET /products?include= lists products only, never variations: variations are read per
  parent, GET /products/<id>/variations?include=; per_page is at most 100."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from workers.adapters.base import OK, ChannelAdapter, ItemResult, PushError, PushItem

BATCH_ITEMS_LIMIT = 100
PER_PAGE_MAX = 100
# SKUs per comma-joined lookup: keeps the URL short; a full page means "maybe truncated".
LOOKUP_SKUS = 40
_DIGITS = re.compile(r"[0-9]{1,18}")


class WooItem(msgspec.Struct, frozen=True):
    """A product (variation None) or a variation of `product`."""

    product: int
    variation: int | None = None

    @property
    def leaf(self) -> int:
        return self.variation if self.variation is not None else self.product

    @property
    def parent(self) -> int | None:
        """The product whose variations endpoint holds this item; None: a product."""
        return self.product if self.variation is not None else None


def parse_item(raw: str) -> WooItem | None:
    """A mapped id ("12" or "12/34") as a WooItem; None unless it is exactly that."""
    product, sep, variation = raw.partition("/")
    if not _positive(product) or (sep and not _positive(variation)):
        return None
    return WooItem(int(product), int(variation) if sep else None)


def _positive(text: str) -> bool:
    return bool(_DIGITS.fullmatch(text)) and int(text) > 0


def _id(value: object) -> int | None:
    """A positive integer id from a reply (WooCommerce sends ints), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class WooCommerceAdapter(ChannelAdapter):
    # Lowered at run time when the store answers 413 (it lowered the filter).
    batch_limit = BATCH_ITEMS_LIMIT
    read_limit = 100  # per_page limit of the include= reads

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._found: dict[str, WooItem] = {}

    def headers(self) -> dict[str, str]:
        token = base64.b64encode(self.channel.access_token.encode()).decode()
        return {"Authorization": f"Basic {token}"}

    # ---- SKU -> item ----------------------------------------------------------------------

    async def resolve(self, skus: Iterable[str]
                      ) -> tuple[dict[str, WooItem | str], dict[WooItem, int | None]]:
        """Each SKU's item, or why it has none; and the counts the lookups showed."""
        items: dict[str, WooItem | str] = {}
        missing: list[str] = []
        for sku in dict.fromkeys(skus):
            mapped = self._item_ids.get(sku)
            if mapped is not None:
                items[sku] = parse_item(mapped) or (
                    f"mapped id {mapped[:40]!r} is not a WooCommerce id "
                    "(<product> or <product>/<variation>, decimal)")
            elif sku in self._found:
                items[sku] = self._found[sku]
            elif not sku:
                # An empty sku filter is no filter: WooCommerce would list every product.
                items[sku] = "an empty SKU names no WooCommerce item"
            else:
                missing.append(sku)
        seen: dict[WooItem, int | None] = {}
        if missing:
            found = await self._look_up(missing)
            for sku in missing:
                matches = found.get(sku, [])
                items[sku] = self._item_of(sku, matches, seen)
        return items, seen

    async def _look_up(self, skus: list[str]) -> dict[str, list[dict[str, Any]]]:
        """Products and variations whose `sku` is exactly each SKU."""
        found: dict[str, list[dict[str, Any]]] = {}
        alone = [s for s in skus if "," in s]
        joined = [s for s in skus if "," not in s]
        for chunk in _chunks(joined, LOOKUP_SKUS):
            page = await self._products({"sku": ",".join(chunk)})
            self._collect(page, set(chunk), found)
            if len(page) >= PER_PAGE_MAX:  # maybe truncated: the rest one at a time
                alone += [s for s in chunk if s not in found]
        for sku in alone:
            self._collect(await self._products({"sku": sku}), {sku}, found)
        return found

    async def _products(self, params: dict[str, str]) -> list[dict[str, Any]]:
        body = await self.call("GET", "/products", params={**params,
                                                           "per_page": str(PER_PAGE_MAX)})
        return [p for p in body if isinstance(p, dict)] if isinstance(body, list) else []

    @staticmethod
    def _collect(page: list[dict[str, Any]], wanted: set[str],
                 found: dict[str, list[dict[str, Any]]]) -> None:
        for product in page:
            sku = product.get("sku")
            if isinstance(sku, str) and sku in wanted:
                found.setdefault(sku, []).append(product)

    def _item_of(self, sku: str, matches: list[dict[str, Any]],
                 seen: dict[WooItem, int | None]) -> WooItem | str:
        if not matches:
            return f"no WooCommerce product or variation has SKU {sku[:80]!r}"
        if len(matches) > 1:
            return f"{len(matches)} WooCommerce items have SKU {sku[:80]!r}"
        product = matches[0]
        leaf, parent = _id(product.get("id")), _id(product.get("parent_id"))
        if leaf is None or (product.get("type") == "variation" and parent is None):
            return f"WooCommerce answered SKU {sku[:80]!r} without a usable id"
        item = (WooItem(parent, leaf) if product.get("type") == "variation" and parent
                else WooItem(leaf))
        self._found[sku] = item
        seen[item] = _stock(product)
        return item

    def _forget(self, item: WooItem) -> None:
        """The store no longer has `item` (deleted, recreated under a new id): look it up
        again next time."""
        for sku in [s for s, found in self._found.items() if found == item]:
            del self._found[sku]

    # ---- writes ---------------------------------------------------------------------------

    async def push_batch(self, items: Sequence[PushItem]) -> list[ItemResult]:
        results: list[ItemResult] = [OK] * len(items)
        targets, _ = await self.resolve(item.sku for item in items)
        # parent (None: plain products) -> leaf id -> value; a later item for the same id wins
        groups: dict[int | None, dict[int, int]] = {}
        members: dict[WooItem, list[int]] = {}
        for n, item in enumerate(items):
            target = targets[item.sku]
            if isinstance(target, str):
                results[n] = ItemResult("failed", error=target, retryable=False)
                continue
            groups.setdefault(target.parent, {})[target.leaf] = item.value
            members.setdefault(target, []).append(n)
        for parent, values in groups.items():
            ids = list(values)
            done: dict[int, ItemResult] = {}
            for chunk in _chunks(ids, self.batch_limit):
                done |= await self._update(parent, {i: values[i] for i in chunk})
            for leaf, result in done.items():
                target = WooItem(parent, leaf) if parent is not None else WooItem(leaf)
                for n in members[target]:
                    results[n] = result
        return results

    async def _update(self, parent: int | None, values: dict[int, int]
                      ) -> dict[int, ItemResult]:
        """One batch call (split further if the store takes fewer items): each id's result."""
        path = "/products/batch" if parent is None else f"/products/{parent}/variations/batch"
        body = {"update": [{"id": leaf, "manage_stock": True, "stock_quantity": value}
                           for leaf, value in values.items()]}
        try:
            reply = await self.call("POST", path, json=body)
        except PushError as exc:
            if exc.status == 413 and len(values) > 1:
                # The store lowered woocommerce_rest_batch_items_limit: halve, remember it.
                ids = list(values)
                self.batch_limit = max(1, len(ids) // 2)
                done: dict[int, ItemResult] = {}
                for chunk in _chunks(ids, self.batch_limit):
                    done |= await self._update(parent, {i: values[i] for i in chunk})
                return done
            if parent is not None and exc.status in (400, 404):
                # The parent product is gone: its variations fail, other groups go on.
                for leaf in values:
                    self._forget(WooItem(parent, leaf))
                return {leaf: ItemResult("failed", error=str(exc)[:300], retryable=False)
                        for leaf in values}
            raise
        entries = reply.get("update") if isinstance(reply, dict) else None
        if not isinstance(entries, list):
            raise PushError(f"{self.name}: {path} answered without an update list", status=502)
        by_id = {e.get("id"): e for e in entries if isinstance(e, dict)}
        return {leaf: self._result(parent, leaf, value, by_id.get(leaf))
                for leaf, value in values.items()}

    def _result(self, parent: int | None, leaf: int, value: int,
                entry: dict[str, Any] | None) -> ItemResult:
        if entry is None:
            return ItemResult("failed", error=f"no result for id {leaf} in the batch reply")
        error = entry.get("error")
        if isinstance(error, dict):
            code, message = str(error.get("code", "")), str(error.get("message", ""))
            data = error.get("data")
            status = data.get("status") if isinstance(data, dict) else None
            if code.endswith("_invalid_id"):
                self._forget(WooItem(parent, leaf) if parent is not None else WooItem(leaf))
            return ItemResult("failed", error=f"{code}: {message}"[:300],
                              retryable=isinstance(status, int) and status >= 500)
        shown = entry.get("stock_quantity")
        if isinstance(shown, int) and shown != value:
            return ItemResult("failed", actual=shown,
                              error=f"id {leaf} holds {shown} after being set to {value}")
        return OK

    async def set_available(self, sku: str, location: str, available: int) -> None:
        [result] = await self.push_batch([PushItem(sku, location, available)])
        if result.status != "ok":
            raise PushError(f"{self.name}: {result.error}",
                            status=502 if result.retryable else 400)

    # ---- reads ----------------------------------------------------------------------------

    async def read_batch(self, items: Sequence[tuple[str, str]]) -> list[int | None]:
        targets, seen = await self.resolve(sku for sku, _ in items)
        counts = dict(seen)
        wanted: dict[int | None, set[int]] = {}
        for target in targets.values():
            if isinstance(target, WooItem) and target not in counts:
                wanted.setdefault(target.parent, set()).add(target.leaf)
        for parent, leaves in wanted.items():
            path = "/products" if parent is None else f"/products/{parent}/variations"
            for chunk in _chunks(sorted(leaves), PER_PAGE_MAX):
                body = await self.call("GET", path, params={
                    "include": ",".join(map(str, chunk)), "per_page": str(len(chunk))})
                for product in body if isinstance(body, list) else []:
                    leaf = _id(product.get("id")) if isinstance(product, dict) else None
                    if leaf in chunk:
                        item = WooItem(parent, leaf) if parent is not None else WooItem(leaf)
                        counts[item] = _stock(product)
        found: list[int | None] = []
        for sku, _ in items:
            target = targets[sku]
            found.append(counts.get(target) if isinstance(target, WooItem) else None)
        return found

    async def get_available(self, sku: str, location: str) -> int | None:
        [count] = await self.read_batch([(sku, location)])
        return count


def _stock(product: dict[str, Any]) -> int | None:
    """The count WooCommerce tracks for a product, None when it tracks none."""
    shown = product.get("stock_quantity")
    return shown if isinstance(shown, int) and not isinstance(shown, bool) else None
