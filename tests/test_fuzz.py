"""Hostile input through the whole ASGI app: raw bytes, wrong types, huge numbers, deep nesting,
unicode SKUs, 10,000-line carts and garbage headers on every storefront, operator and webhook
route. The bar: no response is ever a 5xx, and a refused (4xx) request changes nothing at all
(no key, no outbox event, no stock field).

Webhook bodies are signed correctly about half of the time, so the fuzz reaches each channel's
decoder and mapping to stock operations, not only the signature check.

A model oracle (test_fuzz_model_oracle) checks every answer on low stock against a small
reference model: the last units are contended, and every 2xx must be one the model allows.

Seeds: CI (CI set) runs one fixed seed, so it sends the same requests every time; any other
run draws a fresh seed (STOCKGATE_FUZZ_SEED replays one). The seed is printed.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import httpx
import msgspec
import pytest
from gateway_support import LIMITED, OPERATOR, OTHER_TENANT, STOREFRONT, gateway_settings
from hostile_support import SyncGateway, sign, snapshot
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from stockgate.embedded import EmbeddedRedis
from stockgate.settings import Settings

SKUS = ("SKU-1", "SKU-2", "SKU-V", "Ünïcødé-👟")
# Requests per test; the three together are the >= 10,000 the issue asks of CI.
HOLD_EXAMPLES = 4000
OPERATOR_EXAMPLES = 2500
WEBHOOK_EXAMPLES = 4000

# CI (CI set) replays one known seed; any other run draws a fresh one unless
# STOCKGATE_FUZZ_SEED names one. Every test here prints the seed it ran with.
CI_SEED = 20261130
RUN_SEED = int(os.environ.get("STOCKGATE_FUZZ_SEED") or (
    CI_SEED if os.environ.get("CI", "").lower() not in ("", "0", "false")
    else random.SystemRandom().randrange(2**32)))


def fuzz(examples: int) -> Callable[[Callable[..., None]], Callable[..., None]]:
    def apply(test: Callable[..., None]) -> Callable[..., None]:
        return hypothesis_seed(RUN_SEED)(settings(
            max_examples=examples, deadline=None, database=None, print_blob=False,
            suppress_health_check=list(HealthCheck))(test))
    return apply


@pytest.fixture(scope="module", autouse=True)
def _print_seed() -> Iterator[None]:
    print(f"\nfuzz seed {RUN_SEED} (rerun with STOCKGATE_FUZZ_SEED={RUN_SEED})")
    yield

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


# ---- model oracle: the last units -----------------------------------------------------------
#
# A few SKUs with 0-5 units each and carts of 1-4 units, so the last units are contended and
# most sequences run a SKU dry. A small model (on_hand, reserved, committed per SKU; each hold's
# lines, status and order) predicts every answer: a hold gets 201 exactly when the model had
# the units (summed per SKU, all lines or none), a commit or release exactly when the hold's
# state allows it, an adjust exactly when on_hand stays >= 0; after every step the stock view
# equals the model, and a refused request changes nothing at all.
#
# Seeded like the rest of the file (RUN_SEED). STOCKGATE_FUZZ_EXAMPLES sets the number of
# sequences (the long opt-in run: e.g. STOCKGATE_FUZZ_EXAMPLES=5000, a fresh seed each run).

MODEL_EXAMPLES = int(os.environ.get("STOCKGATE_FUZZ_EXAMPLES", "200"))
MODEL_SKUS = 3
model_figures: Counter[str] = Counter()

def _one_unknown_alone(lines: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """A cart names the unknown SKU only alone, so the model's 404 is not a guess about which
    check the script runs first."""
    known = [(i, q) for i, q in lines if i < MODEL_SKUS]
    return known or lines[:1]


hold_step = st.tuples(
    st.just("hold"),
    # SKU index MODEL_SKUS is a SKU that does not exist (404, nothing moves).
    st.lists(st.tuples(st.integers(0, MODEL_SKUS), st.integers(1, 4)), min_size=1, max_size=3)
    .map(_one_unknown_alone),
    st.booleans())  # replay the previous hold's request instead (same hold_id, same body)
model_step = st.one_of(
    hold_step, hold_step, hold_step, hold_step, hold_step, hold_step,
    st.tuples(st.just("commit"), st.integers(0, 7), st.integers(0, 3)),
    st.tuples(st.just("release"), st.integers(0, 7), st.just(0)),
    st.tuples(st.just("adjust"), st.integers(0, MODEL_SKUS - 1), st.integers(-3, 3)),
    st.tuples(st.just("bad_hold"), st.integers(0, MODEL_SKUS - 1),
              st.sampled_from([0, -1, 1_000_001, "1", 1.5])))


class StockModel:
    """What the stock of one sequence's SKUs must be, and which answers it allows."""

    def __init__(self, skus: list[str], units: list[int]) -> None:
        self.skus = skus
        self.on_hand = dict(zip(skus, units, strict=True))
        self.reserved = dict.fromkeys(skus, 0)
        self.committed = dict.fromkeys(skus, 0)
        self.holds: dict[str, dict[str, Any]] = {}  # hold_id -> body, lines, status, order
        self.orders: dict[str, str] = {}  # order_id -> hold_id

    def available(self, sku: str) -> int:
        return self.on_hand[sku] - self.reserved[sku] - self.committed[sku]

    def move(self, lines: dict[str, int], field_from: str | None, field_to: str | None) -> None:
        for sku, qty in lines.items():
            if field_from:
                getattr(self, field_from)[sku] -= qty
            if field_to:
                getattr(self, field_to)[sku] += qty


async def _model_call(gw: SyncGateway, model: StockModel, method: str, path: str,
                      body: Any = None) -> httpx.Response:
    """One request; a refused (4xx) one must change nothing at all, and nothing is 5xx."""
    skus = tuple(model.skus)
    before = await snapshot(gw.redis, skus)
    key = OPERATOR if "/stock/" in path else STOREFRONT
    r = await gw.client.request(method, path, json=body, headers={
        "authorization": f"Bearer {key}"})
    assert r.status_code < 500, f"{method} {path} -> {r.status_code} {r.text[:300]}"
    if r.status_code >= 400:
        assert await snapshot(gw.redis, skus) == before, \
            f"refused {method} {path} {body} ({r.status_code} {r.text[:200]}) changed stock"
    return r


async def _agrees(gw: SyncGateway, model: StockModel, after: str) -> None:
    for sku in model.skus:
        r = await gw.client.get(f"/v1/stock/{sku}", headers={"authorization":
                                                              f"Bearer {OPERATOR}"})
        assert r.status_code == 200, r.text
        view = r.json()
        cell = view["locations"]["main"]
        want = {"on_hand": model.on_hand[sku], "reserved": model.reserved[sku],
                "committed": model.committed[sku], "available": model.available(sku)}
        assert {k: cell[k] for k in want} == want, f"{sku} after {after}: {cell} != {want}"
        shown = max(model.available(sku), 0)
        assert view["available"] == shown and set(view["channels"].values()) == {shown}, view


async def _run_model(gw: SyncGateway, units: list[int], steps: list[tuple[Any, ...]]) -> None:
    run = model_figures["sequences"] = model_figures["sequences"] + 1
    skus = [f"M{run}-{chr(65 + i)}" for i in range(MODEL_SKUS)]
    model = StockModel(skus, units)
    for sku, n in zip(skus, units, strict=True):
        r = await _model_call(gw, model, "POST", f"/v1/stock/{sku}/adjust", {
            "set_on_hand": n, "reason": "receipt", "idempotency_key": f"seed-{sku}"})
        assert r.status_code == 200, r.text
    await _agrees(gw, model, "seeding")
    hold_ids: list[str] = []
    last_hold: dict[str, Any] | None = None
    for n, step in enumerate(steps):
        kind = step[0]
        if kind == "hold":
            _, lines, replay = step
            if replay and last_hold is not None:
                body = last_hold
            else:
                body = {"hold_id": f"h{run}-{n}", "lines": [
                    {"sku": skus[i] if i < MODEL_SKUS else f"NOPE-{run}", "qty": q}
                    for i, q in lines]}
            last_hold = body
            hold_id = body["hold_id"]
            want: Counter[str] = Counter()
            for line in body["lines"]:
                want[line["sku"]] += line["qty"]
            first = model.holds.get(hold_id)
            r = await _model_call(gw, model, "POST", "/v1/holds", body)
            if first is not None:
                # Same hold_id, same body: the first answer again, nothing moves.
                assert r.status_code == 201 and r.json() == first["reply"], r.text
                model_figures["hold replayed"] += 1
            elif any(sku not in model.on_hand for sku in want):
                assert r.status_code == 404 and r.json()["error"] == "unknown_sku", r.text
            elif all(model.available(sku) >= q for sku, q in want.items()):
                assert r.status_code == 201, f"model had {want} available: {r.text}"
                model.move(want, None, "reserved")
                model.holds[hold_id] = {"lines": dict(want), "status": "held", "order": None,
                                        "reply": r.json()}
                hold_ids.append(hold_id)
                model_figures["hold 201"] += 1
                if any(model.available(sku) == 0 for sku in want):
                    model_figures["hold took the last unit"] += 1
            else:
                assert r.status_code == 409, f"model lacked {want}, got {r.text}"
                refused = r.json()
                assert refused["error"] == "insufficient_stock", refused
                sku = refused["sku"]
                assert want[sku] > model.available(sku), refused
                assert refused["available"] == max(model.available(sku), 0), refused
                model_figures["hold 409"] += 1
        elif kind in ("commit", "release"):
            _, pick, order_pick = step
            # Mostly a hold of this sequence; sometimes one that never existed.
            hold_id = hold_ids[pick % len(hold_ids)] if hold_ids and pick < 7 else f"x{run}-{n}"
            hold = model.holds.get(hold_id)
            status = hold["status"] if hold else None
            if kind == "commit":
                order_id = f"o{run}-{order_pick}"
                r = await _model_call(gw, model, "POST", f"/v1/holds/{hold_id}/commit",
                                      {"order_id": order_id})
                if hold is None or status == "released":
                    expected = 404
                elif status == "committed":
                    expected = 200 if hold["order"] == order_id else 409
                else:
                    expected = 409 if order_id in model.orders else 200
                assert r.status_code == expected, (step, status, r.text)
                if expected == 200 and status == "held":
                    model.move(hold["lines"], "reserved", "committed")
                    hold["status"], hold["order"] = "committed", order_id
                    model.orders[order_id] = hold_id
            else:
                r = await _model_call(gw, model, "DELETE", f"/v1/holds/{hold_id}")
                expected = {None: 404, "committed": 409}.get(status, 200)
                assert r.status_code == expected, (step, status, r.text)
                if status == "held":
                    model.move(hold["lines"], "reserved", None)
                    hold["status"] = "released"
            model_figures[f"{kind} {r.status_code}"] += 1
        elif kind == "adjust":
            _, i, delta = step
            sku = skus[i]
            r = await _model_call(gw, model, "POST", f"/v1/stock/{sku}/adjust", {
                "delta": delta, "reason": "count", "idempotency_key": f"a{run}-{n}"})
            # Shrinkage may leave available below zero (units already sold are gone), but
            # never on_hand.
            assert (r.status_code == 200) == (model.on_hand[sku] + delta >= 0), (step, r.text)
            if r.status_code == 200:
                model.on_hand[sku] += delta
                assert r.json()["after"]["available"] == model.available(sku), r.text
            model_figures[f"adjust {r.status_code}"] += 1
        else:
            _, i, qty = step
            r = await _model_call(gw, model, "POST", "/v1/holds", {
                "hold_id": f"b{run}-{n}", "lines": [{"sku": skus[i], "qty": qty}]})
            assert r.status_code in (400, 422), r.text
        await _agrees(gw, model, f"step {n} {step}")
    model_figures["steps"] += len(steps)
    model_figures["sequences ending with a SKU sold out"] += any(
        model.available(sku) <= 0 for sku in skus)


def test_fuzz_model_oracle(gw: SyncGateway) -> None:
    print(f"\nmodel fuzz: seed {RUN_SEED}, {MODEL_EXAMPLES} sequences (rerun with "
          f"STOCKGATE_FUZZ_SEED={RUN_SEED})")
    started = time.monotonic()

    @hypothesis_seed(RUN_SEED)
    @settings(max_examples=MODEL_EXAMPLES, deadline=None, database=None, derandomize=False,
              print_blob=False, suppress_health_check=list(HealthCheck))
    @given(units=st.lists(st.integers(0, 5), min_size=MODEL_SKUS, max_size=MODEL_SKUS),
           steps=st.lists(model_step, min_size=2, max_size=16))
    def sequence(units: list[int], steps: list[tuple[Any, ...]]) -> None:
        gw.run(_run_model(gw, units, steps))

    try:
        sequence()
    except BaseException as exc:
        exc.add_note(f"rerun with STOCKGATE_FUZZ_SEED={RUN_SEED}")
        raise
    finally:
        gw.last_snapshot = None  # these requests changed the store the other tests snapshot
    print(f"model fuzz: {time.monotonic() - started:.1f} s, {dict(sorted(model_figures.items()))}")
    # The point of low stock: the last units were reached, and refusals were judged too.
    assert model_figures["hold took the last unit"] > 0, model_figures
    assert all(model_figures[f] > 0 for f in (
        "hold 201", "hold 409", "commit 200", "release 200", "adjust 422")), \
        model_figures
