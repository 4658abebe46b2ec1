"""Helpers for tests/test_lifecycle.py: the app's settings, the four channels' signing and
payload shapes, a fake BigCommerce order API, and the reference model's records.

Payload shapes follow the channels' documentation (see tests/test_gateway_webhooks.py and
tests/test_lifecycle_regressions.py for the sources): Shopify's Order, Fulfillment and Refund
resources (`cancelled_at`, `fulfillment_status`, `fulfillments[]`, `refunds[]`,
`refund_line_items[].restock_type`); WooCommerce's order with `status` and `meta_data`;
Standard Webhooks' `{type, timestamp, data}`; BigCommerce's hook `{scope, hash, data}` and its
v2 order, products and shipments endpoints.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import msgspec

from stockgate.settings import ApiKey, Channel, Settings

TENANT = "acme"
STOREFRONT = "sf-secret-lifecycle-0123456789"
OPERATOR = "op-secret-lifecycle-0123456789"
SHOPIFY_SECRET = "shpss_lifecycle_0123456789"
WOO_SECRET = "wc-lifecycle-0123456789"
BC_SECRET = "bc-lifecycle-0123456789"
STD_KEY = bytes(range(1, 33))
STD_SECRET = "whsec_" + base64.b64encode(STD_KEY).decode()
BC_API = "http://bc.test/stores/lifecycle"
IDEMPOTENCY_TTL_S = 1
JSON = {"Content-Type": "application/json"}

# Three SKUs, one of them non-ASCII (valid: 7 UTF-8 bytes), small stock so that the last
# units are reached constantly. SKU-B may be backordered.
SKUS = ("SKU-A", "SKU-B", "ŠKU-Č")
BACKORDER_SKU = "SKU-B"
VARIANTS = {"SKU-A": 111, "SKU-B": 112, "ŠKU-Č": 113}
SHOP_VARIANT_ONLY = 4455  # Shopify variant without a SKU, mapped to SKU-B in the config
WOO_VARIANT_ONLY = 88  # WooCommerce variation without a SKU, mapped to SKU-B
UNMAPPED_VARIANT = 999
# SKUs no stock line may have (docs/order-lifecycle.md, "One definition of a valid line"):
# 130 UTF-8 bytes in 65 characters, 129 bytes, a control character.
INVALID_SKUS = ("é" * 65, "X" * 129, "BAD\tSKU")
INVALID_QTY = 2_000_000

CHANNEL_KINDS = {"shop": "shopify", "woo": "woocommerce", "std": "standard",
                 "bc": "bigcommerce"}
SHOP_TOPICS = ("orders/create", "orders/updated", "orders/cancelled", "orders/fulfilled",
               "fulfillments/create", "refunds/create")
WOO_TOPICS = ("order.created", "order.updated")


def lifecycle_settings(data_dir: str) -> Settings:
    base = Settings(
        data_dir=data_dir,
        api_keys={
            "sf": ApiKey(secret=STOREFRONT, tenant=TENANT, scopes=("storefront",)),
            "op": ApiKey(secret=OPERATOR, tenant=TENANT, scopes=("operator",)),
        },
        channels={
            "shop": Channel(kind="shopify", secret=SHOPIFY_SECRET, tenant=TENANT,
                            variant_skus={str(SHOP_VARIANT_ONLY): "SKU-B"},
                            location_map={"9001": "main"}),
            "woo": Channel(kind="woocommerce", secret=WOO_SECRET, tenant=TENANT,
                           variant_skus={str(WOO_VARIANT_ONLY): "SKU-B"}),
            "bc": Channel(kind="bigcommerce", secret=BC_SECRET, tenant=TENANT, api_url=BC_API,
                          access_token="bc-token"),
            "std": Channel(kind="standard", secret=STD_SECRET, tenant=TENANT),
        },
    )
    # A short idempotency TTL (validation requires a day; replace() bypasses it) so that a
    # rare 1.1 s sleep takes orders past it (their stock state must outlive it) as well as
    # past the 1 s hold TTLs.
    return msgspec.structs.replace(base, idempotency_ttl_s=IDEMPOTENCY_TTL_S)


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def now_ms() -> float:
    return time.time() * 1000


def iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def valid_sku(sku: str | None) -> bool:
    """The one definition of a valid SKU: 1 to 128 UTF-8 bytes, no control characters."""
    return (isinstance(sku, str) and 0 < len(sku.encode()) <= 128
            and not any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in sku))


# ---- signing, per the channels' documentation -----------------------------------------------

@dataclass
class Signed:
    """One signed delivery as it went out: kept so that the replay rule can resend it."""

    channel: str
    body: bytes
    headers: dict[str, str]
    ref: str  # the channel order it is about


def sign_shopify(topic: str, payload: dict[str, Any], ref: str) -> Signed:
    body = json.dumps(payload).encode()
    digest = hmac.new(SHOPIFY_SECRET.encode(), body, hashlib.sha256).digest()
    headers = {**JSON, "X-Shopify-Topic": topic, "X-Shopify-Shop-Domain": "acme.myshopify.com",
               "X-Shopify-Hmac-Sha256": base64.b64encode(digest).decode(),
               "X-Shopify-API-Version": "2025-10"}
    return Signed("shop", body, shopify_ids(headers), ref)


def shopify_ids(headers: dict[str, str], topic: str | None = None) -> dict[str, str]:
    """Fresh unsigned ids (and optionally another topic): what anyone holding the body sets."""
    out = {**headers, "X-Shopify-Webhook-Id": str(uuid.uuid4()),
           "X-Shopify-Event-Id": str(uuid.uuid4()), "X-Shopify-Triggered-At": iso_now()}
    if topic is not None:
        out["X-Shopify-Topic"] = topic
    return out


def sign_woo(topic: str, payload: dict[str, Any], ref: str) -> Signed:
    body = json.dumps(payload).encode()
    digest = hmac.new(WOO_SECRET.encode(), body, hashlib.sha256).digest()
    headers = {**JSON, "X-WC-Webhook-Source": "https://shop.example/",
               "X-WC-Webhook-ID": "12",
               "X-WC-Webhook-Signature": base64.b64encode(digest).decode()}
    return Signed("woo", body, woo_ids(headers, topic), ref)


def woo_ids(headers: dict[str, str], topic: str) -> dict[str, str]:
    resource, event = topic.split(".")
    return {**headers, "X-WC-Webhook-Topic": topic, "X-WC-Webhook-Resource": resource,
            "X-WC-Webhook-Event": event, "X-WC-Webhook-Delivery-ID": uuid.uuid4().hex}


def sign_standard(event_type: str, data: dict[str, Any], ref: str) -> Signed:
    msg_id = f"msg_{uuid.uuid4().hex}"
    stamp = int(time.time())
    body = json.dumps({"type": event_type, "timestamp": iso_now(), "data": data}).encode()
    signed = f"{msg_id}.{stamp}.".encode() + body
    sig = base64.b64encode(hmac.new(STD_KEY, signed, hashlib.sha256).digest()).decode()
    return Signed("std", body, {**JSON, "webhook-id": msg_id, "webhook-timestamp": str(stamp),
                                "webhook-signature": f"v1,{sig}"}, ref)


def sign_bigcommerce(scope: str, order_id: int, ref: str, status: tuple[int, int] | None = None
                     ) -> Signed:
    created = int(time.time())
    # BigCommerce's hash identifies the event: a re-fired event carries the same one.
    event_hash = hashlib.sha1(f"{scope}{order_id}{created}{uuid.uuid4()}".encode()).hexdigest()
    data: dict[str, Any] = {"type": "order", "id": order_id}
    if status is not None:
        data["status"] = {"previous_status_id": status[0], "new_status_id": status[1]}
    body = json.dumps({"created_at": created, "store_id": "1025646",
                       "producer": "stores/lifecycle", "scope": scope, "hash": event_hash,
                       "data": data}).encode()
    return Signed("bc", body, {**JSON, "X-Stockgate-Secret": BC_SECRET}, ref)


# ---- the channels' view of an order ---------------------------------------------------------

@dataclass
class OrderLine:
    """A line as the channel sends it, and what Stockgate should make of it."""

    line_id: int
    kind: str  # plain, variant (no SKU, mapped variant), unmapped, invalid_sku, invalid_qty
    sku: str  # the SKU the line is about (for plain/variant/invalid_qty)
    qty: int
    odd_sku: str = ""  # the invalid SKU sent for invalid_sku lines
    shipped: int = 0  # the channel's view
    refunded: int = 0

    @property
    def resolved(self) -> str | None:
        """The valid SKU Stockgate must stock for this line, or None when it must skip it
        (and alert)."""
        if self.kind in ("plain", "variant"):
            return self.sku
        return None

    @property
    def unshipped(self) -> int:
        return self.qty - self.shipped


@dataclass
class ChannelOrder:
    channel: str  # shop, woo, std, bc
    number: int
    lines: list[OrderLine]
    hint: str | None = None
    hint_key: str = "stockgate_hold_id"
    created_at: str = field(default_factory=iso_now)
    cancelled_at: str | None = None
    closed: bool = False  # refunded (Woo, BigCommerce): no further changes
    fulfillments: list[dict[str, Any]] = field(default_factory=list)  # Shopify
    refunds: list[dict[str, Any]] = field(default_factory=list)  # Shopify
    shipments: list[dict[str, Any]] = field(default_factory=list)  # BigCommerce
    bc_status: int = 11
    woo_status: str = "processing"
    delivered: bool = False  # its create went out

    @property
    def ref(self) -> str:
        return f"{self.channel}:{self.number}"

    def sent(self) -> Counter[str]:
        """Units per SKU of its valid lines: what Stockgate may commit for it."""
        out: Counter[str] = Counter()
        for ln in self.lines:
            if ln.resolved:
                out[ln.resolved] += ln.qty
        return out

    def shipped(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for ln in self.lines:
            if ln.resolved:
                out[ln.resolved] += ln.shipped
        return out

    @property
    def fully_shipped(self) -> bool:
        return all(ln.unshipped == 0 for ln in self.lines)

    @property
    def open_for_changes(self) -> bool:
        return self.delivered and self.cancelled_at is None and not self.closed


# ---- Shopify bodies ---------------------------------------------------------------------------

def _shop_item(ln: OrderLine) -> dict[str, Any]:
    sku: str | None
    variant: int | None
    if ln.kind == "plain" or ln.kind == "invalid_qty":
        sku, variant = ln.sku, VARIANTS[ln.sku]
    elif ln.kind == "variant":
        sku, variant = None, SHOP_VARIANT_ONLY
    elif ln.kind == "unmapped":
        sku, variant = None, UNMAPPED_VARIANT
    else:
        sku, variant = ln.odd_sku, 7000 + ln.line_id % 1000
    return {"id": ln.line_id, "variant_id": variant, "product_id": 632910392, "sku": sku,
            "title": "Sneaker", "price": "19.00", "requires_shipping": True, "gift_card": False,
            "grams": 500, "properties": [], "tax_lines": []}


def shop_line_item(ln: OrderLine, qty: int) -> dict[str, Any]:
    return {**_shop_item(ln), "quantity": qty}


def shop_order_body(o: ChannelOrder) -> dict[str, Any]:
    """The order as Shopify would send it now (any order topic): its lines, cancellation,
    fulfilments and refunds so far."""
    notes: list[dict[str, Any]] = [{"name": "gift_wrap", "value": "no"}]
    if o.hint is not None:
        notes.append({"name": o.hint_key, "value": o.hint})
    if o.fully_shipped and o.fulfillments:
        status: str | None = "fulfilled"
    elif o.fulfillments:
        status = "partial"
    else:
        status = None
    return {
        "id": o.number, "admin_graphql_api_id": f"gid://shopify/Order/{o.number}",
        "name": f"#{o.number}", "email": "jon@example.com", "currency": "EUR",
        "created_at": o.created_at, "updated_at": iso_now(), "processed_at": o.created_at,
        "cancelled_at": o.cancelled_at, "cancel_reason": "customer" if o.cancelled_at else None,
        "financial_status": "refunded" if o.refunds else "paid",
        "fulfillment_status": status, "location_id": None,
        "cart_token": "Z2NwLXVzLWVhc3QxOjAxSjk3", "note_attributes": notes,
        "line_items": [{**shop_line_item(ln, ln.qty),
                        "fulfillable_quantity": max(ln.unshipped, 0)} for ln in o.lines],
        "fulfillments": list(o.fulfillments), "refunds": list(o.refunds),
        "shipping_lines": [],
    }


def shop_fulfillment(o: ChannelOrder, fid: int, items: list[tuple[OrderLine, int]]
                     ) -> dict[str, Any]:
    return {"id": fid, "order_id": o.number, "status": "success", "created_at": iso_now(),
            "location_id": 9001, "tracking_company": "UPS",
            "tracking_number": f"1Z{uuid.uuid4().hex[:10]}", "name": f"#{o.number}.{fid}",
            "line_items": [shop_line_item(ln, q) for ln, q in items]}


def shop_refund(o: ChannelOrder, rid: int, items: list[tuple[OrderLine, int, str | None]],
                legacy_restock: bool | None) -> dict[str, Any]:
    return {"id": rid, "order_id": o.number, "created_at": iso_now(), "note": "refund",
            "restock": legacy_restock, "transactions": [],
            "refund_line_items": [
                {"id": rid * 10 + i, "line_item_id": ln.line_id, "quantity": q,
                 "restock_type": rtype, "location_id": 9001 if rtype else None,
                 "subtotal": 19.0 * q, "line_item": shop_line_item(ln, ln.qty)}
                for i, (ln, q, rtype) in enumerate(items)]}


# ---- WooCommerce, Standard Webhooks ---------------------------------------------------------

def woo_order_body(o: ChannelOrder) -> dict[str, Any]:
    meta: list[dict[str, Any]] = [{"id": 1, "key": "_billing_vat", "value": ""}]
    if o.hint is not None:
        meta.append({"id": 2, "key": o.hint_key, "value": o.hint})
    items = []
    for ln in o.lines:
        sku, variation, product = ln.sku, 0, 93
        if ln.kind == "variant":
            sku, variation = "", WOO_VARIANT_ONLY
        elif ln.kind == "unmapped":
            sku, variation, product = "", 4242, 4242
        elif ln.kind == "invalid_sku":
            sku = ln.odd_sku
        items.append({"id": ln.line_id, "name": "Woo Single", "product_id": product,
                      "variation_id": variation, "quantity": ln.qty, "sku": sku, "price": 3,
                      "meta_data": []})
    return {"id": o.number, "parent_id": 0, "status": o.woo_status, "currency": "EUR",
            "date_created_gmt": o.created_at, "date_modified_gmt": iso_now(),
            "order_key": f"wc_order_{o.number}", "total": "29.35",
            "billing": {"first_name": "John", "email": "john@example.com"},
            "meta_data": meta, "line_items": items, "refunds": []}


def std_line(ln: OrderLine, qty: int | None = None) -> dict[str, Any]:
    sku = ln.odd_sku if ln.kind == "invalid_sku" else ln.sku
    return {"sku": sku, "qty": ln.qty if qty is None else qty}


# ---- a fake BigCommerce order API (v2 orders, products, shipments) ---------------------------

class FakeBigCommerce:
    """What BigCommerce's API answers about an order right now (the test decides)."""

    def __init__(self) -> None:
        self.orders: dict[int, ChannelOrder] = {}

    def handler(self, request: httpx.Request) -> httpx.Response:
        parts = request.url.path.split("/v2/orders/", 1)[1].split("/")
        o = self.orders.get(int(parts[0]))
        if o is None:
            return httpx.Response(404, json=[{"status": 404, "title": "not found"}])
        if len(parts) == 1:
            return httpx.Response(200, json={"id": o.number, "status_id": o.bc_status,
                                             "date_created": o.created_at,
                                             "items_total": sum(ln.qty for ln in o.lines)})
        if parts[1] == "products":
            return httpx.Response(200, json=[bc_product(o, ln) for ln in o.lines])
        if o.shipments:
            return httpx.Response(200, json=o.shipments)
        return httpx.Response(204)


def bc_product(o: ChannelOrder, ln: OrderLine) -> dict[str, Any]:
    sku = ln.sku
    variant = VARIANTS.get(ln.sku, 0)
    if ln.kind == "unmapped":
        sku, variant = "", UNMAPPED_VARIANT
    elif ln.kind == "invalid_sku":
        sku = ln.odd_sku
    return {"id": ln.line_id, "order_id": o.number, "product_id": 77, "variant_id": variant,
            "sku": sku, "name": "Cap", "quantity": ln.qty, "quantity_shipped": ln.shipped}


def bc_shipment(o: ChannelOrder, sid: int, items: list[tuple[OrderLine, int]]) -> dict[str, Any]:
    return {"id": sid, "order_id": o.number, "tracking_number": f"1Z{sid}",
            "items": [{"order_product_id": ln.line_id, "product_id": 77, "quantity": q}
                      for ln, q in items]}


# ---- the reference model's records ----------------------------------------------------------

MARGIN_MS = 40  # clock and rounding slack around a hold's expiry


@dataclass
class Hold:
    hold_id: str
    lines: Counter[str]
    channel: str | None
    ttl_s: int
    created_ms: float  # local time just before the create call
    expires_at_ms: int  # as the gateway answered
    status: str = "held"  # held, committed (storefront), claimed (channel order), released,
    #                       expired
    owner: str = ""  # the order it was committed to or claimed by

    def dead_at(self, t: float) -> bool:
        """Certainly past its TTL at local time t."""
        return t > self.expires_at_ms + MARGIN_MS

    def alive_through(self, t: float) -> bool:
        """Certainly within its TTL until local time t."""
        return self.expires_at_ms > t + MARGIN_MS

    def record_kept_through(self, t: float) -> bool:
        """Its record certainly still exists: it has no expiry while held, and lives the
        idempotency TTL after it leaves `held` (which is no earlier than its creation)."""
        return ((self.status == "held" and self.alive_through(t))
                or t + MARGIN_MS < self.created_ms + IDEMPOTENCY_TTL_S * 1000)


@dataclass
class Sale:
    """One order id in Stockgate (a channel order's reference, or a storefront order id):
    units it may still have open (an upper bound), and the units the model accepted as
    shipped and returned."""

    ref: str
    open: Counter[str] = field(default_factory=Counter)
    shipped: Counter[str] = field(default_factory=Counter)
    returned: Counter[str] = field(default_factory=Counter)
    # Units the channel says came back (Shopify `return`/`legacy_restock`, Standard `restock`):
    # the most a refund may add to on_hand, with what the order shipped.
    restock_claimed: Counter[str] = field(default_factory=Counter)
    storefront_record: bool = False  # a storefront commit created it
    channel_record: bool = False  # the channel order's script ran
