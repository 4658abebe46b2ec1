"""WooCommerce, BigCommerce and generic push adapters against their simulators over real HTTP:
batched pushes within each channel's item limit, one bad item failing alone, ids that never
leave their endpoint, SKU lookups, BigCommerce's request quota, and the request bodies
checked against the channels' documented examples (tests/fixtures/<channel>/)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from stockgate.settings import Channel
from workers.adapters import ChannelAdapter, PushError, adapter_for
from workers.adapters.base import PushItem
from workers.adapters.bigcommerce import ISOLATE_CALLS_MAX, QUOTA_WAIT_MAX_S
from workers.simulators import SimulatorServer

FIXTURES = Path(__file__).parent / "fixtures"
Sims = Callable[[str], SimulatorServer]
Sent = list[httpx.Request]

WOO_PATHS = {"/products", "/products/batch"}
WOO_PARENT_PATHS = ("/products/{}/variations", "/products/{}/variations/batch")
BC_PATHS = {"/v3/inventory/items", "/v3/inventory/adjustments/absolute", "/v3/catalog/variants"}
# "12" in fullwidth digits: str.isdigit() says yes, int() reads 12, a URL would carry UTF-8.
WIDE_DIGITS = "\uff11\uff12"
UNSAFE_SKUS = ["123/456", "../orders/1", "..", ".", "?status=any#x", "%2e%2e%2forders",
               "12/../../orders"]


@pytest.fixture
def sims(sim_factory: Sims) -> Sims:
    return sim_factory


@contextlib.asynccontextmanager
async def connected(kind: str, url: str, transport: httpx.AsyncBaseTransport | None = None,
                    **config: Any) -> AsyncIterator[tuple[ChannelAdapter, Sent]]:
    """An adapter for a channel at `url`, and every request it sends, as sent."""
    sent: Sent = []

    async def keep(request: httpx.Request) -> None:
        sent.append(request)

    channel = Channel(kind=kind, secret="s3cret", api_url=url,  # type: ignore[arg-type]
                      access_token="ck_key:cs_secret", **config)
    async with httpx.AsyncClient(transport=transport, event_hooks={"request": [keep]}) as client:
        yield adapter_for(kind, channel, client), sent


def calls(sent: Sent) -> list[tuple[str, str]]:
    return [(r.method, r.url.path) for r in sent]


def query(request: httpx.Request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(request.url.query.decode()).items()}


def body(request: httpx.Request) -> Any:
    return json.loads(request.content)


def sim_paths(sim: SimulatorServer) -> set[str]:
    return {urlsplit(target).path for _, target in sim.state.requests}


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def items(values: dict[str, int], location: str = "main") -> list[PushItem]:
    return [PushItem(sku, location, value) for sku, value in values.items()]


# ---- WooCommerce ------------------------------------------------------------------------------


async def test_woo_pushes_products_in_one_call_and_variations_per_parent(sims: Sims) -> None:
    sim = sims("woocommerce")
    mapped = {str(10 + i): f"P{i}" for i in range(95)}
    mapped |= {"500/501": "VA1", "500/502": "VA2", "500/503": "VA3", "600/601": "VB1",
               "600/602": "VB2"}
    sim.state.known_items = set(mapped)
    values = {sku: n for n, sku in enumerate(mapped.values())}
    async with connected("woocommerce", sim.url, variant_skus=mapped) as (adapter, sent):
        assert adapter.batch_limit == 100
        results = await adapter.push_batch(items(values))
    assert [r.status for r in results] == ["ok"] * 100
    assert sorted(calls(sent)) == [("POST", "/products/500/variations/batch"),
                                   ("POST", "/products/600/variations/batch"),
                                   ("POST", "/products/batch")]
    assert [len(body(r)["update"]) for r in sent] == [95, 3, 2]
    assert sim.state.writes == 3
    assert (sim.state.count("10"), sim.state.count("104")) == (0, 94)
    assert (sim.state.count("500/502"), sim.state.count("600/602")) == (96, 99)


async def test_woo_keeps_to_the_item_limit_and_to_a_lowered_one(sims: Sims) -> None:
    sim = sims("woocommerce")
    mapped = {str(10 + i): f"P{i}" for i in range(250)}
    values = {sku: 7 for sku in mapped.values()}
    async with connected("woocommerce", sim.url, variant_skus=mapped) as (adapter, sent):
        assert all(r.status == "ok" for r in await adapter.push_batch(items(values)))
        assert [len(body(r)["update"]) for r in sent] == [100, 100, 50]

        # The merchant set woocommerce_rest_batch_items_limit to 40: 413s halve the calls
        # until they fit, and the adapter keeps the smaller size.
        sim.state.batch_items_limit = 40
        sent.clear()
        hundred = dict(list(values.items())[:100])
        assert all(r.status == "ok" for r in await adapter.push_batch(items(hundred, "eu")))
        assert [len(body(r)["update"]) for r in sent] == [100, 50, 25, 25, 50, 25, 25]
        assert adapter.batch_limit == 25
        sent.clear()
        assert all(r.status == "ok" for r in await adapter.push_batch(items(hundred)))
        assert [len(body(r)["update"]) for r in sent] == [25, 25, 25, 25]
    assert sim.state.count("10") == 7


async def test_woo_batch_endpoint_refuses_past_its_limit(sims: Sims) -> None:
    sim = sims("woocommerce")
    documented = fixture("woocommerce/batch_reply_with_errors.json")["too_large"]
    update = [{"id": 10 + i, "stock_quantity": 1} for i in range(101)]
    async with httpx.AsyncClient() as client:
        reply = await client.post(f"{sim.url}/products/batch", json={"update": update})
    assert reply.status_code == 413
    assert reply.json() == documented
    assert sim.state.counts == {} and sim.state.writes == 0


async def test_woo_unknown_id_fails_alone(sims: Sims) -> None:
    sim = sims("woocommerce")
    mapped = {"10": "P0", "11": "P1", "13": "GONE", "12": "P2", "500/501": "V1",
              "500/999": "VGONE"}
    sim.state.known_items = {"10", "11", "12", "500/501"}
    async with connected("woocommerce", sim.url, variant_skus=mapped) as (adapter, sent):
        results = await adapter.push_batch(items({"P0": 1, "P1": 2, "GONE": 3, "P2": 4,
                                                  "V1": 5, "VGONE": 6}))
    assert [r.status for r in results] == ["ok", "ok", "failed", "ok", "ok", "failed"]
    assert results[2].error == "woocommerce_rest_product_invalid_id: Invalid ID."
    assert results[5].error.startswith("woocommerce_rest_product_variation_invalid_id")
    assert not results[2].retryable and not results[5].retryable
    assert len(sent) == 2
    assert [sim.state.count(i) for i in ("10", "11", "13", "12", "500/501")] == [
        1, 2, None, 4, 5]


async def test_woo_maps_the_documented_per_item_error_shape() -> None:
    reply = fixture("woocommerce/batch_reply_with_errors.json")["reply"]

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=reply)

    async with connected("woocommerce", "https://shop.test/wp-json/wc/v3",
                         httpx.MockTransport(answer),
                         variant_skus={"10": "P0", "11": "P1", "13": "GONE"}) as (adapter, _):
        results = await adapter.push_batch(items({"P0": 3, "GONE": 9, "P1": 4}))
    assert [r.status for r in results] == ["ok", "failed", "ok"]
    assert "woocommerce_rest_product_invalid_id" in results[1].error


async def test_woo_unsafe_skus_never_leave_the_product_endpoints(sims: Sims) -> None:
    sim = sims("woocommerce")
    # SKU "123/456" is product 77; variation 456 of product 123 is another product's stock.
    sim.state.sku_items = {"123/456": "77", "OTHER": "123/456"}
    sim.state.mint_unknown_skus = False
    bad_ids = {"../orders/1": "EVIL", "12/../../orders": "EVIL2", WIDE_DIGITS: "WIDE",
               "0": "ZERO", "12/": "SLASH"}
    async with connected("woocommerce", sim.url, variant_skus=bad_ids) as (adapter, sent):
        results = await adapter.push_batch(items({sku: 5 for sku in UNSAFE_SKUS}))
        mapped = await adapter.push_batch(items({sku: 5 for sku in bad_ids.values()}))
        counts = await adapter.read_batch([(sku, "main") for sku in [*UNSAFE_SKUS, "OTHER"]])
    assert [r.status for r in results] == ["ok"] + ["failed"] * (len(UNSAFE_SKUS) - 1)
    assert all("no WooCommerce product or variation has SKU" in r.error for r in results[1:])
    assert all(r.status == "failed" and "is not a WooCommerce id" in r.error for r in mapped)
    assert sim.state.count("77") == 5 and sim.state.count("123/456") is None
    assert counts == [5] + [None] * (len(UNSAFE_SKUS) - 1) + [None]
    allowed = WOO_PATHS | {p.format(123) for p in WOO_PARENT_PATHS}
    assert {r.url.path for r in sent} <= allowed, calls(sent)
    assert sim_paths(sim) <= allowed, sim.state.requests
    lookups = [query(r)["sku"] for r in sent if r.url.path == "/products" and "sku" in query(r)]
    assert "../orders/1" in ",".join(lookups)  # asked for as a query value, escaped by httpx


async def test_woo_unmapped_skus_are_looked_up_once_then_cached(sims: Sims) -> None:
    sim = sims("woocommerce")
    sim.state.sku_items = {"MUG": "42", "TEE-S": "50/51", "A,B": "60", "A": "61"}
    sim.state.mint_unknown_skus = False
    async with connected("woocommerce", sim.url) as (adapter, sent):
        results = await adapter.push_batch(items({"MUG": 3, "TEE-S": 4, "A,B": 5}))
        assert [r.status for r in results] == ["ok"] * 3
        lookups = [query(r) for r in sent if r.method == "GET"]
        # Comma-free SKUs in one lookup; a SKU holding a comma alone (WooCommerce splits the
        # value on commas), and only an exact `sku` match counts.
        assert [q["sku"] for q in lookups] == ["MUG,TEE-S", "A,B"]
        assert sorted(calls(sent)[2:]) == [("POST", "/products/50/variations/batch"),
                                           ("POST", "/products/batch")]
        sent.clear()
        await adapter.push_batch(items({"MUG": 6, "TEE-S": 7, "A,B": 8}))
        assert [m for m, _ in calls(sent)] == ["POST", "POST"]
    assert [sim.state.count(i) for i in ("42", "50/51", "60", "61")] == [6, 7, 8, None]


async def test_woo_reads_in_batches(sims: Sims) -> None:
    sim = sims("woocommerce")
    sim.state.sku_items = {"MUG": "42", "CAP": "43", "TEE-S": "50/51", "TEE-M": "50/52"}
    sim.state.counts |= {("42", ""): 1, ("43", ""): 2, ("50/51", ""): 3, ("50/52", ""): 4}
    sim.state.mint_unknown_skus = False
    wanted = [(sku, "main") for sku in ("MUG", "CAP", "TEE-S", "TEE-M", "NOPE")]
    async with connected("woocommerce", sim.url) as (adapter, sent):
        assert await adapter.read_batch(wanted) == [1, 2, 3, 4, None]
        assert len(sent) == 1  # the lookup shows the counts too
        sent.clear()
        assert await adapter.read_batch(wanted) == [1, 2, 3, 4, None]
        reads = {r.url.path: query(r) for r in sent if "include" in query(r)}
    assert reads["/products"]["include"] == "42,43"
    assert reads["/products/50/variations"]["include"] == "51,52"


async def test_woo_deleted_product_is_looked_up_again(sims: Sims) -> None:
    sim = sims("woocommerce")
    sim.state.sku_items = {"MUG": "42"}
    sim.state.mint_unknown_skus = False
    async with connected("woocommerce", sim.url) as (adapter, _):
        assert (await adapter.push_batch(items({"MUG": 1})))[0].status == "ok"
        sim.state.sku_items = {"MUG": "43"}  # deleted, created again under a new id
        sim.state.known_items = {"43"}
        [refused] = await adapter.push_batch(items({"MUG": 2}))
        assert refused.status == "failed" and "invalid_id" in refused.error
        assert (await adapter.push_batch(items({"MUG": 3})))[0].status == "ok"
    assert (sim.state.count("42"), sim.state.count("43")) == (1, 3)


async def test_woo_request_body_matches_the_documented_batch_example(sims: Sims) -> None:
    sim = sims("woocommerce")
    async with connected("woocommerce", sim.url,
                         variant_skus={"799": "P", "22/733": "V"}) as (adapter, sent):
        await adapter.push_batch(items({"P": 5, "V": 6}))
    bodies = {r.url.path: body(r) for r in sent}
    for path, name in (("/products/batch", "batch_update_products.json"),
                       ("/products/22/variations/batch", "batch_update_product_variations.json")):
        doc, ours = fixture(f"woocommerce/{name}"), bodies[path]
        assert set(ours) <= set(doc["request"])
        [item] = ours["update"]
        assert "id" in item and {"id"} <= set(doc["request"]["update"][0])
        types = {"integer": int, "boolean": bool}
        assert set(item) <= set(doc["properties"])
        for field, value in item.items():
            assert type(value) is types[doc["properties"][field]], (field, value)


# ---- BigCommerce ------------------------------------------------------------------------------


async def test_bc_pushes_a_batch_in_one_call_grouped_by_location(sims: Sims) -> None:
    sim = sims("bigcommerce")
    mapped = {str(1000 + i): f"S{i}" for i in range(150)}
    async with connected("bigcommerce", sim.url, variant_skus=mapped,
                         location_map={"7": "eu"}) as (adapter, sent):
        assert adapter.batch_limit == 2000
        pushed = [PushItem(sku, loc, i) for i, sku in enumerate(mapped.values())
                  for loc in ("eu", "main")]
        results = await adapter.push_batch(pushed)
    assert [r.status for r in results] == ["ok"] * 300
    [put] = sent
    assert put.url.path == "/v3/inventory/adjustments/absolute"
    locations = [i["location_id"] for i in body(put)["items"]]
    assert locations == [1] * 150 + [7] * 150  # grouped by location, as BigCommerce asks
    assert (sim.state.count("1000", "main"), sim.state.count("1149", "7")) == (0, 149)


async def test_bc_keeps_to_the_item_limit(sims: Sims) -> None:
    sim = sims("bigcommerce")
    mapped = {str(1000 + i): f"S{i}" for i in range(2500)}
    async with connected("bigcommerce", sim.url, variant_skus=mapped) as (adapter, sent):
        results = await adapter.push_batch(items({sku: 3 for sku in mapped.values()}))
    assert all(r.status == "ok" for r in results)
    assert [len(body(r)["items"]) for r in sent] == [2000, 500]
    async with httpx.AsyncClient() as client:  # the simulator refuses more
        reply = await client.put(f"{sim.url}/v3/inventory/adjustments/absolute", json={
            "items": [{"location_id": 1, "variant_id": 1, "quantity": 1}] * 2001})
    assert reply.status_code == 422


async def test_bc_refused_variant_or_location_fails_alone(sims: Sims) -> None:
    sim = sims("bigcommerce")
    mapped = {str(1000 + i): f"S{i}" for i in range(20)}
    sim.state.known_items = set(mapped) - {"1007"}
    sim.state.known_locations = {"1"}
    async with connected("bigcommerce", sim.url, variant_skus=mapped,
                         location_map={"9": "far"}) as (adapter, sent):
        pushed = [*items({sku: 4 for sku in mapped.values()}), PushItem("S3", "far", 8)]
        results = await adapter.push_batch(pushed)
    failed = {pushed[n].sku + "@" + pushed[n].location: r for n, r in enumerate(results)
              if r.status == "failed"}
    assert set(failed) == {"S7@main", "S3@far"}
    assert "Location not found" in failed["S3@far"].error
    assert "variant_id 1007" in failed["S7@main"].error
    assert not any(r.retryable for r in failed.values())
    assert len(sent) == 3  # each 422 names what it refused: dropped, the rest sent again
    assert sim.state.count("1007", "main") is None
    assert [sim.state.count(v, "main") for v in mapped if v != "1007"] == [4] * 19


async def test_bc_refused_item_found_by_bisection_when_the_title_names_none(
        sims: Sims) -> None:
    sim = sims("bigcommerce")
    sim.state.name_refused_items = False
    mapped = {str(1000 + i): f"S{i}" for i in range(16)}
    sim.state.known_items = set(mapped) - {"1011"}
    async with connected("bigcommerce", sim.url, variant_skus=mapped) as (adapter, sent):
        results = await adapter.push_batch(items({sku: 2 for sku in mapped.values()}))
    assert [n for n, r in enumerate(results) if r.status == "failed"] == [11]
    assert len(sent) <= 1 + 2 * 4  # log2(16) halvings, two calls each
    assert [sim.state.count(v, "main") for v in mapped if v != "1011"] == [2] * 15

    # Many refused items: the search stops at its call budget; what it could not clear is
    # failed as retryable, never applied blind and never reported ok.
    sim.state.known_items = {v for i, v in enumerate(mapped) if i % 3}
    sim.state.counts.clear()
    async with connected("bigcommerce", sim.url, variant_skus=mapped) as (adapter, sent):
        results = await adapter.push_batch(items({sku: 9 for sku in mapped.values()}))
    assert len(sent) <= ISOLATE_CALLS_MAX
    for n, (variant, result) in enumerate(zip(mapped, results, strict=True)):
        if n % 3 == 0:
            assert result.status == "failed", n
        assert (result.status == "ok") == (sim.state.count(variant, "main") == 9), n


async def test_bc_parses_the_documented_422_titles() -> None:
    errors = fixture("bigcommerce/absolute_adjustment.json")["errors"]
    for documented in errors:
        named = documented["names"]
        puts: list[Any] = []

        def answer(request: httpx.Request, documented: Any = documented,
                   puts: list[Any] = puts) -> httpx.Response:
            puts.append(body(request))
            if len(puts) == 1:
                return httpx.Response(422, json=documented["body"])
            return httpx.Response(200, json={"transaction_id": "t"})

        async with connected("bigcommerce", "https://api.bigcommerce.com/stores/x",
                             httpx.MockTransport(answer),
                             variant_skus={"105": "A", "106": "B"},
                             location_map={"2": "two", "3": "three"}) as (adapter, _):
            pushed = [PushItem("A", "main", 1), PushItem("B", "main", 2),
                      PushItem("A", "two", 3)]
            results = await adapter.push_batch(pushed)
        refused = [(item.location, item.sku) for item, r in zip(pushed, results, strict=True)
                   if r.status == "failed"]
        if "variant_id" in named:
            assert refused == [("main", "B")]
        else:
            assert refused == [("two", "A")]
        assert len(puts) == 2 and len(puts[1]["items"]) == 2


async def test_bc_ids_are_integers_or_never_sent(sims: Sims) -> None:
    sim = sims("bigcommerce")
    sim.state.mint_unknown_skus = False
    sim.state.sku_items = {"HAT": "77"}
    bad_ids = {"x/1": "BAD1", "1 OR 1": "BAD2", WIDE_DIGITS: "BAD3", "0": "BAD4", "12/../3": "BAD5"}
    async with connected("bigcommerce", sim.url, variant_skus=bad_ids,
                         location_map={"1/../2": "weird"}) as (adapter, sent):
        mapped = await adapter.push_batch(items({sku: 1 for sku in bad_ids.values()}))
        assert sent == []
        assert all("is not a BigCommerce id" in r.error for r in mapped)
        [weird] = await adapter.push_batch([PushItem("HAT", "weird", 1)])
        assert "mapped location id" in weird.error
        unsafe = await adapter.push_batch(items({sku: 2 for sku in UNSAFE_SKUS}))
        assert all(r.status == "failed" and "no BigCommerce variant" in r.error
                   for r in unsafe)
        assert await adapter.read_batch([(s, "main") for s in UNSAFE_SKUS]) == [None] * 7
        for order_id in ("1/../../v3/inventory/items", WIDE_DIGITS, "12?x=1", "-1", ""):
            with pytest.raises(PushError) as refused:
                await adapter.fetch_order(order_id)
            assert refused.value.status == 400
    assert {r.url.path for r in sent} <= BC_PATHS, calls(sent)
    assert sim_paths(sim) <= BC_PATHS, sim.state.requests
    assert not any(r.method == "PUT" for r in sent)
    assert sim.state.counts == {}


async def test_bc_unmapped_skus_are_looked_up_once_then_cached(sims: Sims) -> None:
    sim = sims("bigcommerce")
    sim.state.sku_items = {"HAT": "77", "CAP": "78", "A,B": "79", "A": "80"}
    sim.state.mint_unknown_skus = False
    async with connected("bigcommerce", sim.url) as (adapter, sent):
        results = await adapter.push_batch(items({"HAT": 1, "CAP": 2, "A,B": 3}))
        assert [r.status for r in results] == ["ok"] * 3
        assert calls(sent) == [("GET", "/v3/inventory/items"),
                               ("GET", "/v3/catalog/variants"),
                               ("PUT", "/v3/inventory/adjustments/absolute")]
        assert query(sent[0])["sku:in"] == "HAT,CAP"
        assert query(sent[1])["sku"] == "A,B"
        sent.clear()
        await adapter.push_batch(items({"HAT": 4, "CAP": 5, "A,B": 6}))
        assert calls(sent) == [("PUT", "/v3/inventory/adjustments/absolute")]
    assert [sim.state.count(v, "main") for v in ("77", "78", "79", "80")] == [4, 5, 6, None]


async def test_bc_reads_in_one_call(sims: Sims) -> None:
    sim = sims("bigcommerce")
    sim.state.counts |= {("77", "main"): 1, ("78", "main"): 2, ("77", "7"): 3}
    async with connected("bigcommerce", sim.url, variant_skus={"77": "HAT", "78": "CAP"},
                         location_map={"7": "eu"}) as (adapter, sent):
        counts = await adapter.read_batch([("HAT", "main"), ("CAP", "main"), ("HAT", "eu"),
                                           ("CAP", "eu")])
    assert counts == [1, 2, 3, None]
    [read] = sent
    assert query(read)["variant_id:in"] == "77,78" and query(read)["location_id:in"] == "1,7"


async def test_bc_every_reply_carries_the_documented_quota_headers(sims: Sims) -> None:
    sim = sims("bigcommerce")
    documented = fixture("bigcommerce/rate_limit_headers.json")["headers"]
    async with httpx.AsyncClient() as client:
        for path in ("/v3/inventory/items", "/v2/orders/1", "/elsewhere"):
            reply = await client.get(sim.url + path)
            assert all(name in reply.headers for name in documented), path


async def test_bc_waits_for_the_quota_reset_once_none_is_left(sims: Sims) -> None:
    sim = sims("bigcommerce")
    sim.state.window_quota, sim.state.window_ms = 3, 1000
    async with connected("bigcommerce", sim.url, variant_skus={"77": "HAT"}) as (adapter, _):
        started = time.monotonic()
        for n in range(7):
            [result] = await adapter.push_batch(items({"HAT": n}))
            assert result.status == "ok"
        took = time.monotonic() - started
    # Seven calls at three per second: two resets waited for, no call refused.
    assert sim.state.limited == 0
    assert took >= 1.0, took
    assert sim.state.count("77", "main") == 6


async def test_bc_long_quota_reset_is_back_pressure_without_a_call(sims: Sims) -> None:
    sim = sims("bigcommerce")
    sim.state.window_quota, sim.state.window_ms = 1, 20_000
    async with connected("bigcommerce", sim.url, variant_skus={"77": "HAT"}) as (adapter, _):
        await adapter.push_batch(items({"HAT": 1}))  # the reply says none is left
        before = len(sim.state.requests)
        with pytest.raises(PushError) as held:
            await adapter.push_batch(items({"HAT": 2}))
        assert held.value.retry_after is not None
        assert QUOTA_WAIT_MAX_S < held.value.retry_after <= 20.0
        assert len(sim.state.requests) == before

    # Another app used the store's quota up: the store's 429 says how long to wait.
    sim.state.window_quota = 0
    async with connected("bigcommerce", sim.url, variant_skus={"77": "HAT"}) as (adapter, _):
        with pytest.raises(PushError) as limited:
            await adapter.push_batch(items({"HAT": 3}))
    assert limited.value.status == 429
    assert limited.value.retry_after is not None and 0 < limited.value.retry_after <= 20.0
    assert sim.state.count("77", "main") == 1


async def test_bc_request_body_matches_the_documented_example(sims: Sims) -> None:
    sim = sims("bigcommerce")
    doc = fixture("bigcommerce/absolute_adjustment.json")
    async with connected("bigcommerce", sim.url, variant_skus={"1": "A", "3": "B"},
                         location_map={"2": "two"}) as (adapter, sent):
        await adapter.push_batch([PushItem("A", "main", 1), PushItem("B", "two", 1)])
    [put] = sent
    ours = body(put)
    assert set(ours) == set(doc["request"]) and isinstance(ours["reason"], str)
    spec = doc["item_by_variant_id"]
    by_variant = [i for i in doc["request"]["items"] if "variant_id" in i]
    for item in ours["items"]:
        assert set(item) == set(spec["required"]) == set(by_variant[0])
        assert all(type(v) is int for v in item.values()), item
    assert sorted(ours["items"], key=lambda i: i["variant_id"]) == by_variant


async def test_non_json_200_is_a_push_error() -> None:
    def maintenance(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html>Down for maintenance</html>",
                              headers={"Content-Type": "text/html"})

    for kind, mapped in (("woocommerce", {"10": "P"}), ("bigcommerce", {"77": "P"})):
        async with connected(kind, "https://shop.test", httpx.MockTransport(maintenance),
                             variant_skus=mapped) as (adapter, _):
            with pytest.raises(PushError) as broken:
                await adapter.push_batch(items({"P": 1}))
            assert broken.value.status == 502 and "not JSON" in str(broken.value)
            with pytest.raises(PushError):
                await adapter.read_batch([("P", "main")])


# ---- generic ----------------------------------------------------------------------------------


async def test_generic_sku_is_one_escaped_path_segment(sims: Sims) -> None:
    sim = sims("standard")
    skus = ["a/b", "../orders/1", "?x=1#y", "%41", "é x", "..x"]
    async with connected("standard", sim.url) as (adapter, sent):
        results = await adapter.push_batch(items({sku: n for n, sku in enumerate(skus)}))
        assert [r.status for r in results] == ["ok"] * len(skus)
        assert await adapter.read_batch([(s, "main") for s in skus]) == list(range(len(skus)))
        refused = await adapter.push_batch(items({"..": 1, ".": 2, "": 3}))
        assert [r.status for r in refused] == ["failed"] * 3
        with pytest.raises(PushError):
            await adapter.get_available("..", "main")
    assert [sim.state.count(s, "main") for s in skus] == list(range(len(skus)))
    for request in sent:
        segment = request.url.raw_path.decode().split("?")[0].removeprefix("/inventory/")
        assert segment and "/" not in segment and segment not in (".", ".."), request.url
    assert len(sent) == 2 * len(skus)
