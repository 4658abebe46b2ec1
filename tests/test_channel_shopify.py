"""The Shopify adapter against the Shopify simulator over real HTTP: batched
inventorySetQuantities with compare-and-set, the cost bucket, idempotent replays, SKU lookups
and reads; the simulator's own rules; and the request checked against Shopify's documented
examples (tests/fixtures/shopify, each naming its source)."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from stockgate.settings import Channel
from workers.adapters.base import PushError, PushItem
from workers.adapters.shopify import ShopifyAdapter, search_value
from workers.simulators import SimulatorServer

FIXTURES = Path(__file__).parent / "fixtures" / "shopify"
GRAPHQL = "/admin/api/2026-10/graphql.json"


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    server = SimulatorServer("shopify").start()
    yield server
    server.stop()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as http:
        yield http


def shop(sim: SimulatorServer, client: httpx.AsyncClient, **config: Any) -> ShopifyAdapter:
    config.setdefault("inventory_item_skus", {"101": "A", "102": "B", "103": "C"})
    config.setdefault("location_map", {"1": "main", "2": "outlet"})
    config.setdefault("api_url", sim.url)
    return ShopifyAdapter("shop", Channel(kind="shopify", secret="s", access_token="token",
                                          **config), client)


def calls(sim: SimulatorServer) -> int:
    return len(sim.state.requests)


async def post(client: httpx.AsyncClient, sim: SimulatorServer, query: str,
               variables: dict[str, Any], version: str = "2026-10") -> dict[str, Any]:
    reply = await client.post(f"{sim.url}/admin/api/{version}/graphql.json",
                              json={"query": query, "variables": variables},
                              headers={"X-Shopify-Access-Token": "token"})
    assert reply.status_code == 200, reply.text
    return reply.json()


SET = ("mutation Set($input: InventorySetQuantitiesInput!) { inventorySetQuantities(input: "
       "$input)%s { userErrors { code field message } } }")


def quantity(item: str, value: int, **extra: Any) -> dict[str, Any]:
    return {"inventoryItemId": f"gid://shopify/InventoryItem/{item}",
            "locationId": "gid://shopify/Location/1", "quantity": value, **extra}


# -- the request, against Shopify's documented examples --------------------------------------


async def test_request_matches_the_documented_examples(sim: SimulatorServer) -> None:
    graphql = pytest.importorskip("graphql")
    sent: list[dict[str, Any]] = []

    async def capture(request: httpx.Request) -> None:
        sent.append({"path": request.url.path, "headers": request.headers,
                     "body": json.loads(request.content)})

    async with httpx.AsyncClient(event_hooks={"request": [capture]}) as http:
        adapter = shop(sim, http, api_url=f"{sim.url}/admin/api/2025-10")  # old REST base
        [result] = await adapter.push_batch([PushItem("A", "main", 12, expected=5)])
    assert result.status == "stale"  # nothing at 5 there: the call went out and was compared
    [request] = [s for s in sent if "inventorySetQuantities" in s["body"]["query"]][:1]
    documented = fixture("inventory_set_quantities_request.json")["body"]

    # The envelope: POST <shop>/admin/api/<api_version>/graphql.json, token header, query and
    # variables only.
    assert request["path"] == GRAPHQL
    assert request["headers"]["X-Shopify-Access-Token"] == "token"
    assert set(request["body"]) == set(documented) == {"query", "variables"}

    def operation(document: str) -> Any:
        [op] = graphql.parse(document).definitions
        return op

    ours, doc = operation(request["body"]["query"]), operation(documented["query"])
    assert ours.operation == doc.operation == graphql.OperationType.MUTATION

    def declared(op: Any) -> list[tuple[str, str]]:
        return [(v.variable.name.value, graphql.print_ast(v.type))
                for v in op.variable_definitions]

    assert declared(ours) == declared(doc) == [("input", "InventorySetQuantitiesInput!")]
    [our_field], [doc_field] = ours.selection_set.selections, doc.selection_set.selections
    assert our_field.name.value == doc_field.name.value == "inventorySetQuantities"
    assert ([(a.name.value, a.value.name.value) for a in our_field.arguments]
            == [(a.name.value, a.value.name.value) for a in doc_field.arguments])

    def fields(node: Any) -> dict[str, Any]:
        return {s.name.value: s for s in node.selection_set.selections}

    assert set(fields(our_field)) == set(fields(doc_field)) == {"inventoryAdjustmentGroup",
                                                                "userErrors"}
    assert set(fields(fields(doc_field)["userErrors"])) <= set(
        fields(fields(our_field)["userErrors"]))

    # The input: the same fields as documented; each quantity the 2026-04 shape, where
    # changeFromQuantity replaced compareQuantity.
    our_input, doc_input = request["body"]["variables"]["input"], documented["variables"]["input"]
    assert set(our_input) == set(doc_input)
    assert (our_input["name"], our_input["reason"]) == (doc_input["name"], doc_input["reason"])
    [example] = operation(fixture("inventory_set_quantities_2026_04.json")["document"]
                          ).selection_set.selections
    [example_input] = example.arguments
    example_quantity = next(f for f in example_input.value.fields
                            if f.name.value == "quantities").value.values[0]
    example_keys = {f.name.value for f in example_quantity.fields}
    [our_quantity], [doc_quantity] = our_input["quantities"], doc_input["quantities"]
    assert set(our_quantity) == example_keys
    assert set(doc_quantity) - {"compareQuantity"} | {"changeFromQuantity"} == example_keys
    for key in ("inventoryItemId", "locationId"):
        kind = re.escape(doc_quantity[key].rsplit("/", 1)[0])
        assert re.fullmatch(kind + r"/\d+", our_quantity[key]), our_quantity[key]
    assert (our_quantity["quantity"], our_quantity["changeFromQuantity"]) == (12, 5)

    # @idempotent(key: "...") on the mutation field, as the 2026-04 changelog places it.
    [idempotent_example] = operation(fixture("idempotent_directive_2026_04.json")["document"]
                                     ).selection_set.selections

    def directives(field: Any) -> list[tuple[str, list[str], type]]:
        return [(d.name.value, [a.name.value for a in d.arguments], type(d.arguments[0].value))
                for d in field.directives]

    assert directives(our_field) == directives(idempotent_example) == [
        ("idempotent", ["key"], graphql.StringValueNode)]


async def test_throttled_answer_is_shaped_like_shopifys(sim: SimulatorServer,
                                                        client: httpx.AsyncClient) -> None:
    sim.state.set_points(0)
    answer = await post(client, sim, SET % ' @idempotent(key: "k")',
                        {"input": {"name": "available", "reason": "correction",
                                   "quantities": [quantity("101", 1, changeFromQuantity=None)]}})
    documented = fixture("throttled_response.json")["body"]

    def shape(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: shape(v) for k, v in value.items()}
        if isinstance(value, list):
            return [shape(v) for v in value]
        return value if isinstance(value, str) and value.isupper() else type(value) in (
            int, float)

    assert shape(answer) == shape(documented)
    assert answer["extensions"]["cost"]["requestedQueryCost"] == 10


# -- pushing -------------------------------------------------------------------------------


async def test_batches_hold_at_most_the_documented_250(sim: SimulatorServer,
                                                       client: httpx.AsyncClient) -> None:
    skus = {str(1000 + n): f"S{n}" for n in range(600)}
    adapter = shop(sim, client, inventory_item_skus=skus)
    assert adapter.batch_limit == 250
    results = await adapter.push_batch([PushItem(sku, "main", n) for n, sku in
                                        enumerate(skus.values())])
    assert [r.status for r in results] == ["ok"] * 600
    assert (calls(sim), sim.state.writes) == (math.ceil(600 / 250), 3)
    assert [sim.state.count(item, "1") for item in skus] == list(range(600))


async def test_simulator_refuses_more_than_250_quantities(sim: SimulatorServer,
                                                          client: httpx.AsyncClient) -> None:
    answer = await post(client, sim, SET % ' @idempotent(key: "k")', {"input": {
        "name": "available", "reason": "correction",
        "quantities": [quantity(str(n), 1, changeFromQuantity=None) for n in range(251)]}})
    assert answer["errors"][0]["extensions"]["code"] == "MAX_INPUT_SIZE_EXCEEDED"
    assert sim.state.writes == 0


async def test_stale_item_reports_the_count_and_siblings_are_applied(
        sim: SimulatorServer, client: httpx.AsyncClient) -> None:
    for item in ("101", "102", "103"):
        sim.state.counts[item, "1"] = 5
    adapter = shop(sim, client)
    results = await adapter.push_batch([
        PushItem("A", "main", 3, expected=5),
        PushItem("B", "main", 2, expected=4),  # the shop sold one Stockgate has not heard of
        PushItem("C", "main", 1, expected=5),
    ])
    assert [(r.status, r.actual) for r in results] == [("ok", None), ("stale", 5), ("ok", None)]
    assert [sim.state.count(i, "1") for i in ("101", "102", "103")] == [3, 5, 1]
    # The whole first call was refused (one stale quantity fails the mutation); the re-send
    # without B applied A and C; one read fetched B's count.
    assert sim.state.writes == 1
    assert calls(sim) == 3


async def test_stale_item_already_at_its_value_is_still_stale(
        sim: SimulatorServer, client: httpx.AsyncClient) -> None:
    """The channel may hold our value because it sold down to it on its own: the adapter
    reports what it found and propagation decides (lua/moved.lua counts the drop)."""
    sim.state.counts["101", "1"] = 7
    [result] = await shop(sim, client).push_batch([PushItem("A", "main", 7, expected=9)])
    assert (result.status, result.actual) == ("stale", 7)


async def test_refused_item_fails_alone(sim: SimulatorServer, client: httpx.AsyncClient) -> None:
    sim.state.known_items = {"101", "103"}
    adapter = shop(sim, client, inventory_item_skus={"101": "A", "999": "GONE", "103": "C"})
    results = await adapter.push_batch([PushItem("A", "main", 4), PushItem("GONE", "main", 4),
                                        PushItem("C", "main", 4)])
    assert [r.status for r in results] == ["ok", "failed", "ok"]
    assert not results[1].retryable and "INVALID_INVENTORY_ITEM" in results[1].error
    assert [sim.state.count(i, "1") for i in ("101", "103")] == [4, 4]


async def test_blind_set_sends_an_explicit_null(sim: SimulatorServer,
                                                client: httpx.AsyncClient) -> None:
    # 2026-10 refuses a quantity without changeFromQuantity: the set lands only because the
    # adapter sends null; set_available (propagation's single push) rides on it.
    sim.state.counts["101", "1"] = 40
    await shop(sim, client).set_available("A", "main", 12)
    assert sim.state.count("101", "1") == 12


# -- the simulator's version rules -----------------------------------------------------------


async def test_change_from_quantity_is_required_from_2026_04(
        sim: SimulatorServer, client: httpx.AsyncClient) -> None:
    body = {"input": {"name": "available", "reason": "correction",
                      "quantities": [quantity("101", 3), quantity("102", 3)]}}
    for version in ("2026-04", "2026-10", "unstable"):
        answer = await post(client, sim, SET % ' @idempotent(key: "k-%s")' % version, body,
                            version)
        errors = answer["data"]["inventorySetQuantities"]["userErrors"]
        assert [e["field"] for e in errors] == [
            ["input", "quantities", "0", "changeFromQuantity"],
            ["input", "quantities", "1", "changeFromQuantity"]], version
    assert sim.state.writes == 0
    # 2026-01: optional; without it the old compareQuantity rules apply.
    answer = await post(client, sim, SET % "", body, "2026-01")
    assert [e["code"] for e in answer["data"]["inventorySetQuantities"]["userErrors"]] == [
        "COMPARE_QUANTITY_REQUIRED"] * 2
    body["input"]["ignoreCompareQuantity"] = True
    answer = await post(client, sim, SET % "", body, "2026-01")
    assert answer["data"]["inventorySetQuantities"]["userErrors"] == []
    assert sim.state.count("101", "1") == 3


async def test_idempotent_directive_is_required_from_2026_04(
        sim: SimulatorServer, client: httpx.AsyncClient) -> None:
    body = {"input": {"name": "available", "reason": "correction",
                      "quantities": [quantity("101", 3, changeFromQuantity=None)]}}
    answer = await post(client, sim, SET % "", body, "2026-04")
    assert "@idempotent" in answer["errors"][0]["message"]
    assert answer["extensions"]["cost"]["throttleStatus"]["maximumAvailable"] == 2000
    assert sim.state.writes == 0


async def test_a_replayed_key_answers_the_first_result_without_applying(
        sim: SimulatorServer, client: httpx.AsyncClient) -> None:
    adapter = shop(sim, client)
    batch = [PushItem("A", "main", 7), PushItem("B", "main", 7)]
    assert [r.status for r in await adapter.push_batch(batch)] == ["ok", "ok"]
    assert sim.state.sell("101", "1", 2)  # a checkout on Shopify meanwhile
    # The same batch again (a retry after a lost answer): replayed, the sale not clobbered.
    assert [r.status for r in await adapter.push_batch(batch)] == ["ok", "ok"]
    assert (sim.state.count("101", "1"), sim.state.writes, sim.state.replayed) == (5, 1, 1)
    # Other contents are another operation.
    await adapter.push_batch([PushItem("A", "main", 6, expected=5)])
    assert (sim.state.count("101", "1"), sim.state.writes) == (6, 2)


async def test_a_new_push_of_the_same_contents_is_applied_not_replayed(
        sim: SimulatorServer, client: httpx.AsyncClient) -> None:
    """Someone sets the listing by hand and reconciliation pushes the same value again within
    minutes: that is a new operation (a new delivery version), which Shopify must apply; only
    a retry of the same attempt replays."""
    adapter = shop(sim, client)
    first = PushItem("A", "main", 3, expected=None, attempt="7")
    assert [r.status for r in await adapter.push_batch([first])] == ["ok"]
    sim.state.counts["101", "1"] = 40  # a hand edit in Shopify's admin
    assert [r.status for r in await adapter.push_batch([first])] == ["ok"]  # a retry
    assert (sim.state.count("101", "1"), sim.state.replayed) == (40, 1)
    again = PushItem("A", "main", 3, expected=None, attempt="9")  # the re-push
    assert [r.status for r in await adapter.push_batch([again])] == ["ok"]
    assert (sim.state.count("101", "1"), sim.state.replayed) == (3, 1)


async def test_sell_refuses_more_than_the_channel_shows(sim: SimulatorServer) -> None:
    sim.state.counts["101", "1"] = 1
    assert not sim.state.sell("101", "1", 2)
    assert sim.state.sell("101", "1", 1)
    assert sim.state.count("101", "1") == 0
    assert [(item, location, qty) for _, item, location, qty in sim.state.sales] == [
        ("101", "1", 1)]


# -- the cost bucket -------------------------------------------------------------------------


async def test_throttled_call_is_back_pressure_until_the_bucket_refills(
        sim: SimulatorServer, client: httpx.AsyncClient) -> None:
    sim.state.cost_restore_rate = 2.0
    sim.state.set_points(4)  # another app of this shop spent the bucket
    adapter = shop(sim, client)
    with pytest.raises(PushError) as caught:
        await adapter.push_batch([PushItem("A", "main", 1)])
    # A mutation costs 10; 4 points at 2 a second hold 10 in 3 s.
    assert caught.value.status == 429
    assert caught.value.retry_after == pytest.approx(3.0, abs=0.1)
    assert (sim.state.throttled, sim.state.count("101", "1")) == (1, None)
    # The adapter now knows the bucket: it does not call before it has refilled.
    before = calls(sim)
    with pytest.raises(PushError) as again:
        await adapter.push_batch([PushItem("A", "main", 1)])
    assert again.value.status == 429 and 2.0 < again.value.retry_after <= 3.0
    assert calls(sim) == before


async def test_adapter_waits_for_the_bucket_instead_of_being_throttled(
        sim: SimulatorServer, client: httpx.AsyncClient) -> None:
    sim.state.cost_maximum, sim.state.cost_restore_rate = 20.0, 10.0
    adapter = shop(sim, client)
    for value in (1, 2):  # two mutations empty the 20-point bucket
        await adapter.push_batch([PushItem("A", "main", value)])
    started = time.monotonic()
    [result] = await adapter.push_batch([PushItem("A", "main", 3)])
    waited = time.monotonic() - started
    assert result.status == "ok" and sim.state.count("101", "1") == 3
    assert sim.state.throttled == 0
    assert 0.8 < waited < 2.0, waited  # ~1 s for 10 points at 10 a second


# -- HTTP-level failures ---------------------------------------------------------------------


@pytest.mark.parametrize(("status", "body", "expected"), [
    (200, "<html><body>Down for maintenance</body></html>", 502),
    (503, "<html>Service Unavailable</html>", 503),
    (401, '{"errors":"[API] Invalid API key or access token"}', 401),
])
async def test_http_failures_are_push_errors(sim: SimulatorServer, client: httpx.AsyncClient,
                                             status: int, body: str, expected: int) -> None:
    sim.state.canned_response = (status, body)
    with pytest.raises(PushError) as caught:
        await shop(sim, client).push_batch([PushItem("A", "main", 1)])
    assert caught.value.status == expected


# -- SKUs without a configured inventory item ------------------------------------------------


async def test_unmapped_sku_is_looked_up_once(sim: SimulatorServer,
                                              client: httpx.AsyncClient) -> None:
    sim.state.mint_unknown_skus = False
    sim.state.sku_items = {"TEE": "555"}
    adapter = shop(sim, client, inventory_item_skus={})
    assert adapter.item_id("TEE") == "TEE"  # not known yet
    await adapter.push_batch([PushItem("TEE", "main", 4)])
    assert calls(sim) == 2  # the lookup, the mutation
    await adapter.push_batch([PushItem("TEE", "main", 5)])
    assert calls(sim) == 3
    assert (adapter.item_id("TEE"), sim.state.count("555", "1")) == ("555", 5)


async def test_a_sku_cannot_change_the_search(sim: SimulatorServer,
                                              client: httpx.AsyncClient) -> None:
    sneaky, odd = 'X" OR sku:"Y', "A:B (C) \\D 'E'"
    sim.state.mint_unknown_skus = False
    sim.state.sku_items = {sneaky: "8", "Y": "7", odd: "9"}
    adapter = shop(sim, client, inventory_item_skus={})
    results = await adapter.push_batch([PushItem(sneaky, "main", 1), PushItem(odd, "main", 2)])
    assert [r.status for r in results] == ["ok", "ok"]
    assert [sim.state.count(i, "1") for i in ("8", "7", "9")] == [1, None, 2]
    assert search_value(sneaky) == '"X\\" OR sku:\\"Y"'


async def test_unknown_and_ambiguous_skus_fail_with_a_reason(
        sim: SimulatorServer, client: httpx.AsyncClient) -> None:
    sim.state.mint_unknown_skus = False
    sim.state.shared_skus = {"TWIN": ["31", "32"]}
    adapter = shop(sim, client, inventory_item_skus={"101": "A"})
    ghost, twin, known = await adapter.push_batch([
        PushItem("GHOST", "main", 1), PushItem("TWIN", "main", 1), PushItem("A", "main", 1)])
    assert ghost.status == "failed" and ghost.retryable and "no inventory item" in ghost.error
    assert twin.status == "failed" and not twin.retryable and "2 inventory items" in twin.error
    assert known.status == "ok"
    # A miss is asked again later (the product may have been created meanwhile).
    sim.state.sku_items = {"GHOST": "44"}
    [later] = await adapter.push_batch([PushItem("GHOST", "main", 2)])
    assert later.status == "ok" and sim.state.count("44", "1") == 2


# -- reading ---------------------------------------------------------------------------------


async def test_reads_one_query_per_location(sim: SimulatorServer,
                                            client: httpx.AsyncClient) -> None:
    sim.state.counts.update({("101", "1"): 4, ("102", "1"): 0, ("101", "2"): 9})
    sim.state.known_items = {"101", "102", "103"}
    adapter = shop(sim, client)
    counts = await adapter.read_batch([("A", "main"), ("B", "main"), ("C", "main"),
                                       ("A", "outlet"), ("B", "outlet")])
    # C and B at the outlet are not stocked there: untracked, None.
    assert counts == [4, 0, None, 9, None]
    assert calls(sim) == 2
    assert await adapter.get_available("A", "outlet") == 9
