"""Hostile input through the whole ASGI app: raw bytes, wrong types, huge numbers, deep nesting,
unicode SKUs, 10,000-line carts and garbage headers on every storefront, operator and webhook
route. The bar: no response is ever a 5xx, and a refused (4xx) request changes nothing at all
(no key, no outbox event, no stock field).

Webhook bodies are signed correctly about half of the time, so the fuzz reaches each channel's
decoder and mapping to stock operations, not only the signature check. Examples are
derandomized: CI runs the same requests every time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import msgspec
import pytest
from gateway_support import LIMITED, OPERATOR, OTHER_TENANT, STOREFRONT, gateway_settings
from hostile_support import SyncGateway, sign, snapshot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stockgate.embedded import EmbeddedRedis
from stockgate.settings import Settings

SKUS = ("SKU-1", "SKU-2", "SKU-V", "Ünïcødé-👟")
# Requests per test; the three together are the >= 10,000 the issue asks of CI.
HOLD_EXAMPLES = 4000
OPERATOR_EXAMPLES = 2500
WEBHOOK_EXAMPLES = 4000

def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    print_blob=False, suppress_health_check=list(HealthCheck))

sent: dict[str, int] = {}


@pytest.fixture(scope="module")
def gw(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
       ) -> Iterator[SyncGateway]:
    # 1 MiB bodies (the production default), so a 10,000-line cart reaches the line limit
    # instead of stopping at the test settings' 64 KiB.
    base = Settings(data_dir=str(tmp_path_factory.mktemp("fuzz")), redis_url=redis_server.url)
    gateway = SyncGateway(msgspec.structs.replace(gateway_settings(base),
                                                  max_body_bytes=1024 * 1024), redis_server.url)
    gateway.run(gateway.redis.flushall())
    gateway.run(gateway.seed(SKUS, 10_000_000))
    yield gateway
    gateway.close()


# ---- values ------------------------------------------------------------------------------

HUGE = st.sampled_from([0, -1, 2**31, 2**53 + 1, 2**63, 2**64, -(2**63) - 1, 10**30, 10**400])
numbers = st.one_of(st.integers(-3, 5), st.integers(), HUGE,
                    st.floats(allow_nan=False, allow_infinity=False))
text = st.one_of(st.text(max_size=40), st.text(alphabet=st.characters(codec="utf-8"),
                                                max_size=200),
                 st.sampled_from(["", " ", "a" * 129, "main", "../x", "%00", "\u202e", "\x00"]))
json_value = st.recursive(
    st.none() | st.booleans() | numbers | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12)
# A field gets a plausible value, a value of the wrong type, or anything.
sku = st.one_of(st.sampled_from(SKUS), text)
qty = st.one_of(st.integers(1, 3), numbers, json_value)
ident = st.one_of(st.from_regex(r"[A-Za-z0-9_.:\-]{1,20}", fullmatch=True), text, json_value)
name = st.one_of(st.sampled_from(["main", "east", "shop"]), text, json_value)


def _nested(depth: int) -> bytes:
    return b'{"lines":' + b"[" * depth + b"]" * depth + b"}"


def _many_lines(n: int) -> bytes:
    return json.dumps({"lines": [{"sku": "SKU-1", "qty": 1}] * n}).encode()


def encoded(structured: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """A body: the structured value as JSON, any JSON, raw bytes, or a pathological shape."""
    return st.one_of(
        structured.map(lambda v: json.dumps(v).encode()),
        structured.map(lambda v: json.dumps(v).encode()),
        json_value.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=200),
        # Pathological shapes share one branch: a 10,000-line body costs ~100 small ones.
        st.one_of(st.integers(1, 50_000).map(_nested), st.integers(1, 50_000).map(_nested),
                  st.integers(1, 50_000).map(_nested), st.sampled_from([1001, 10_000]).map(
                      _many_lines)),
    )


line = st.fixed_dictionaries({"sku": sku, "qty": qty},
                             optional={"location": name, "x": json_value})
hold_body = st.fixed_dictionaries(
    {"lines": st.one_of(st.lists(line, max_size=4), json_value)},
    optional={"hold_id": ident, "channel": name, "location": name, "customer": name,
              "ttl_s": numbers, "extra": json_value})
adjust_body = st.fixed_dictionaries(
    {"reason": st.one_of(st.just("count"), text), "idempotency_key": ident},
    optional={"location": name, "delta": numbers, "set_on_hand": numbers,
              "unavailable_delta": numbers, "sku": sku})
policy_body = st.fixed_dictionaries({}, optional={
    "location": name, "safety": numbers, "backorder_limit": numbers,
    "low_stock_threshold": numbers, "max_per_customer": numbers, "x": json_value})
bulk_body = st.fixed_dictionaries({"lines": st.one_of(
    st.lists(st.fixed_dictionaries({"sku": sku, "reason": text, "idempotency_key": ident},
                                   optional={"delta": numbers, "set_on_hand": numbers,
                                             "location": name}), max_size=5),
    json_value)})

header_value = st.binary(max_size=60).map(lambda b: b.translate(None, b"\r\n\x00"))
content_type = st.sampled_from([b"application/json", b"application/json; charset=utf-8",
                                b"APPLICATION/JSON", b"application/vnd.x+json", b"text/plain",
                                b"", None]) | header_value


def auth(*secrets: str) -> st.SearchStrategy[bytes | None]:
    # Mostly a valid key so the body is what gets tested, else every kind of bad credential.
    valid = st.sampled_from([f"Bearer {s}".encode() for s in secrets])
    return st.one_of(valid, valid, valid, st.none(), header_value,
                     header_value.map(lambda b: b"Bearer " + b),
                     st.sampled_from([f"Bearer {LIMITED}".encode(), b"Bearer ", b"Basic Zm9v",
                                      f"bearer  {STOREFRONT} ".encode(),
                                      f"Bearer {OTHER_TENANT}".encode()]))


# ---- the check every request goes through --------------------------------------------------

async def _send(gw: SyncGateway, method: str, path: str, body: bytes | None,
                headers: dict[bytes, bytes | None]) -> int:
    # Only these requests write to this Redis, so the state after one request is the state
    # before the next: one snapshot per request instead of two.
    before = gw.last_snapshot or await snapshot(gw.redis, SKUS)
    r = await gw.client.request(method, path, content=body,
                                headers={k: v for k, v in headers.items() if v is not None})
    gw.sent += 1
    gw.last_snapshot = after = await snapshot(gw.redis, SKUS)
    assert r.status_code < 500, f"{method} {path} -> {r.status_code} {r.text[:300]}"
    if r.status_code >= 400:
        assert after == before, \
            f"refused {method} {path} ({r.status_code} {r.text[:200]}) changed the store"
        assert r.json()["error"], r.text  # the one error shape, even for garbage
    return r.status_code


def check(gw: SyncGateway, method: str, path: str, body: bytes | None,
          headers: dict[bytes, bytes | None]) -> int:
    return gw.run(_send(gw, method, path, body, headers))


def _path_segment(value: str) -> str:
    return quote(value, safe="")


# ---- storefront routes ---------------------------------------------------------------------

@fuzz(HOLD_EXAMPLES)
@given(route=st.sampled_from(["hold", "hold", "commit", "release"]), body=st.data(),
       hold_id=st.one_of(ident.map(str), text), authorization=auth(STOREFRONT, OPERATOR),
       ctype=content_type)
def test_fuzz_storefront_routes(gw: SyncGateway, route: str, body: st.DataObject, hold_id: str,
                                authorization: bytes | None, ctype: bytes | None) -> None:
    headers = {b"authorization": authorization, b"content-type": ctype}
    if route == "hold":
        check(gw, "POST", "/v1/holds", body.draw(encoded(hold_body)), headers)
    elif route == "commit":
        raw = body.draw(encoded(st.fixed_dictionaries({"order_id": ident})))
        check(gw, "POST", f"/v1/holds/{_path_segment(hold_id)}/commit", raw, headers)
    else:
        check(gw, "DELETE", f"/v1/holds/{_path_segment(hold_id)}", None, headers)
    sent["storefront"] = sent.get("storefront", 0) + 1


# ---- operator routes -----------------------------------------------------------------------

@fuzz(OPERATOR_EXAMPLES)
@given(route=st.sampled_from(["adjust", "policy", "bulk", "read"]), body=st.data(),
       path_sku=sku.map(str), authorization=auth(OPERATOR), ctype=content_type)
def test_fuzz_operator_routes(gw: SyncGateway, route: str, body: st.DataObject, path_sku: str,
                              authorization: bytes | None, ctype: bytes | None) -> None:
    headers = {b"authorization": authorization, b"content-type": ctype}
    target = _path_segment(path_sku)
    if route == "adjust":
        check(gw, "POST", f"/v1/stock/{target}/adjust", body.draw(encoded(adjust_body)), headers)
    elif route == "policy":
        check(gw, "PUT", f"/v1/stock/{target}/policy", body.draw(encoded(policy_body)), headers)
    elif route == "bulk":
        check(gw, "POST", "/v1/stock/bulk", body.draw(encoded(bulk_body)), headers)
    else:
        check(gw, "GET", f"/v1/stock/{target}", None, headers)
    sent["operator"] = sent.get("operator", 0) + 1


# ---- webhooks ------------------------------------------------------------------------------

shopify_line = st.fixed_dictionaries(
    {"quantity": qty}, optional={"sku": st.one_of(sku, json_value),
                                 "variant_id": st.one_of(st.just(4455), numbers, json_value),
                                 "id": numbers})
shopify_payload = st.fixed_dictionaries(
    {"id": st.one_of(st.integers(1, 10**6), numbers, json_value)},
    optional={"line_items": st.one_of(st.lists(shopify_line, max_size=3), json_value),
              "note_attributes": st.lists(st.fixed_dictionaries(
                  {"name": st.sampled_from(["_stockgate_hold_id", "stockgate_hold_id", "x"]),
                   "value": json_value})),
              "location_id": numbers, "order_id": numbers,
              "refund_line_items": st.lists(st.fixed_dictionaries(
                  {"quantity": qty, "restock_type": st.one_of(
                      st.sampled_from(["return", "cancel", "no_restock"]), json_value),
                   "line_item": st.one_of(shopify_line, json_value)}), max_size=3),
              "inventory_item_id": st.one_of(st.just(7001), numbers),
              "available": numbers, "restock": json_value})
woo_payload = st.fixed_dictionaries(
    {"id": st.one_of(st.integers(1, 10**6), numbers, json_value)},
    optional={"status": st.one_of(st.sampled_from(
                  ["processing", "cancelled", "completed", "refunded", "failed"]), json_value),
              "line_items": st.lists(st.fixed_dictionaries(
                  {"quantity": qty}, optional={"sku": sku, "variation_id": numbers,
                                               "product_id": st.one_of(st.just(88), numbers)}),
                  max_size=3),
              "meta_data": st.lists(st.fixed_dictionaries(
                  {"key": st.sampled_from(["_stockgate_hold_id", "x"]), "value": json_value}),
                  max_size=2)})
bc_payload = st.fixed_dictionaries(
    {"scope": st.one_of(st.sampled_from(["store/order/created", "store/order/statusUpdated"]),
                        text),
     "data": st.one_of(st.fixed_dictionaries({"type": text, "id": st.one_of(numbers, text)}),
                       json_value)},
    optional={"hash": text, "created_at": numbers})
std_lines = st.lists(st.fixed_dictionaries({"sku": sku, "qty": qty},
                                           optional={"location": name, "restock": json_value}),
                     max_size=3)
std_payload = st.fixed_dictionaries(
    {"type": st.one_of(st.sampled_from(["order.created", "order.cancelled", "order.fulfilled",
                                        "refund.created", "inventory.updated"]), text),
     "data": st.fixed_dictionaries({}, optional={
         "order_id": ident, "hold_id": ident, "fulfilment_id": ident, "refund_id": ident,
         "lines": std_lines, "sku": sku, "available": numbers, "location": name})})
TOPICS = {"shopify": ["orders/create", "orders/cancelled", "orders/fulfilled",
                      "fulfillments/create", "refunds/create", "inventory_levels/update"],
          "woocommerce": ["order.created", "order.updated"]}
CHANNELS = {"shop": ("shopify", shopify_payload), "woo": ("woocommerce", woo_payload),
            "bc": ("bigcommerce", bc_payload), "std": ("standard", std_payload)}


@fuzz(WEBHOOK_EXAMPLES)
@given(channel=st.sampled_from([*CHANNELS, "nope"]), data=st.data(),
       signing=st.sampled_from(["valid", "valid", "wrong", "missing"]),
       delivery_id=st.one_of(st.uuids().map(str), text.filter(lambda s: s.isprintable())),
       ctype=content_type, topic=st.one_of(st.none(), header_value))
def test_fuzz_webhooks(gw: SyncGateway, channel: str, data: st.DataObject, signing: str,
                       delivery_id: str, ctype: bytes | None, topic: bytes | None) -> None:
    kind, payload = CHANNELS.get(channel, ("shopify", shopify_payload))
    body = data.draw(encoded(payload))
    try:
        delivery_id.encode("latin-1")
    except UnicodeEncodeError:
        delivery_id = delivery_id.encode("utf-8").decode("latin-1")  # what a server would see
    headers: dict[bytes, bytes | None] = {b"content-type": ctype}
    if kind in TOPICS:
        topic = data.draw(st.sampled_from(TOPICS[kind]).map(str.encode)) if topic is None \
            else topic
        headers[b"x-shopify-topic" if kind == "shopify" else b"x-wc-webhook-topic"] = topic
    if signing != "missing":
        stamp = data.draw(st.one_of(st.none(), st.none(), header_value.map(
            lambda b: b.decode("latin-1")), st.sampled_from(["0", "9" * 40, "²", "-5"])))
        signed = sign(kind, body, delivery_id, stamp)
        if signing == "wrong":
            # Signed over other bytes: right shape, wrong value.
            signed = sign(kind, body + b" ", delivery_id, stamp)
            if kind == "bigcommerce":
                signed = {"X-Stockgate-Secret": "not-the-secret"}
        headers.update({k.lower().encode(): v.encode("latin-1") for k, v in signed.items()})
    before = gw.last_snapshot
    status = check(gw, "POST", f"/webhooks/{channel}", body, headers)
    if signing != "valid" and channel != "nope":
        assert status in (200, 401, 413), status  # only a set-up ping passes unsigned
        # Whatever the status, a webhook without a valid signature changes nothing.
        assert before is None or gw.last_snapshot == before, "unsigned webhook changed stock"
    sent["webhooks"] = sent.get("webhooks", 0) + 1


def test_fuzz_request_count(gw: SyncGateway) -> None:
    """The issue's bar is a count of generated requests: make sure hypothesis did not stop
    short (it stops early when it believes the search space is exhausted)."""
    if set(sent) != {"storefront", "operator", "webhooks"}:
        pytest.skip("run with the three fuzz tests")
    assert sum(sent.values()) >= 10_000, sent
    assert gw.sent >= 10_000


def test_ten_thousand_line_cart_is_refused_whole(gw: SyncGateway) -> None:
    headers = {b"authorization": f"Bearer {STOREFRONT}".encode(),
               b"content-type": b"application/json"}
    assert check(gw, "POST", "/v1/holds", _many_lines(10_000), headers) in (413, 422)
    assert check(gw, "POST", "/v1/holds", _nested(100_000), headers) == 400
