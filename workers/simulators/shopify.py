"""Simulated Shopify GraphQL Admin API: POST /admin/api/{version}/graphql.json answering the
three operations the adapter sends (inventorySetQuantities, nodes(ids) of inventory items,
inventoryItems(query) by SKU) with Shopify's rules: compare-and-set through
changeFromQuantity, the @idempotent directive, at most 250 quantities a call, a cost bucket
answering THROTTLED, and extensions.cost on every response.

It is not a GraphQL engine: it recognises the operation by its root field and reads the
variables. Item ids are kept numeric (state.counts[(item, location)]); an item made up for an
unknown SKU keeps its counts under the SKU (state.aliases), as the other simulators do."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from workers.simulators.state import ChannelState, recorded

# https://shopify.dev/docs/api/usage/limits: "Input arguments that accept an array have a
# maximum size of 250"; connections take at most first: 250.
MAX_INPUT = 250
# https://shopify.dev/docs/apps/build/apis/graphql-admin/rate-limits: a single query may not
# cost more than 1,000 points; a mutation costs 10, an object 1, a scalar 0, a connection 2
# plus one per object it may return.
MAX_QUERY_COST = 1000
MUTATION_COST = 10
RATE_LIMITS_DOC = "https://shopify.dev/api/usage/rate-limits"
# The inventory reasons Shopify accepts (InventorySetQuantitiesInput.reason links them):
# https://shopify.dev/docs/apps/build/inventory-management-apps/manage-quantities-states
REASONS = frozenset({
    "correction", "cycle_count_available", "damaged", "movement_canceled", "movement_created",
    "movement_received", "movement_updated", "other", "promotion", "quality_control",
    "received", "reservation_created", "reservation_deleted", "reservation_updated",
    "restock", "safety_stock", "shrinkage"})
QUANTITY_BOUND = 1_000_000_000
# Version rules of inventorySetQuantities:
# https://shopify.dev/changelog/compare-and-swap-redesign-for-inventory-set-quantities
#   2026-01 adds changeFromQuantity (null skips the check) beside compareQuantity;
# https://shopify.dev/changelog/finalizing-compare-and-swap-redesign-for-inventory-set-quantities
#   2026-04 requires it on every quantity and removes compareQuantity/ignoreCompareQuantity;
# https://shopify.dev/changelog/making-idempotency-mandatory-for-inventory-adjustments-and-refund-mutations
#   @idempotent is optional from 2026-01 and required from 2026-04.
CHANGE_FROM_SINCE = "2026-01"
STRICT_SINCE = "2026-04"

_VERSION = re.compile(r"^(\d{4}-\d{2}|unstable)$")
_IDEMPOTENT = re.compile(
    r'@idempotent\s*\(\s*key\s*:\s*(?:"((?:[^"\\]|\\.)*)"|\$(\w+))\s*\)')
_GID = re.compile(r"^gid://shopify/(\w+)/([^/?]+)")

Body = dict[str, Any]


def at_least(version: str, since: str) -> bool:
    return version == "unstable" or version >= since


def routes(state: ChannelState) -> list[Route]:
    # Idempotency key -> (the input it was first sent with, the payload then answered).
    replays: dict[str, tuple[str, Body]] = {}
    groups = iter(range(1, 1 << 62))

    async def graphql(request: Request) -> Response:
        if refused := await state.gate():
            return refused
        if state.canned_response is not None:
            status, text = state.canned_response
            return Response(text, status_code=status, media_type="text/html")
        if not request.headers.get("X-Shopify-Access-Token"):
            return JSONResponse({"errors": "[API] Invalid API key or access token "
                                           "(unrecognized login or wrong password)"},
                                status_code=401)
        version = request.path_params["version"]
        if not _VERSION.match(version):
            return JSONResponse({"errors": "Not Found"}, status_code=404)
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("query"), str):
            return JSONResponse({"errors": {"query": "Required parameter missing or invalid"}},
                                status_code=400)
        document: str = body["query"]
        variables = body.get("variables") or {}
        if not isinstance(variables, dict):
            return _errors([_error("Variables must be an object", "INVALID_VARIABLE")], 0)
        operation = _operation(document)
        if operation is None:
            return _errors([_error("The simulator answers inventorySetQuantities, nodes and "
                                   "inventoryItems only", "undefinedField")], 0)
        handler, pricing = operation
        try:
            requested = pricing(variables)
        except _Refusal as refusal:
            return _errors([refusal.error], 0)
        if requested > MAX_QUERY_COST:
            return _errors([_error(
                f"Query cost is {requested}, which exceeds the single query max cost limit "
                f"({MAX_QUERY_COST}).", "MAX_COST_EXCEEDED", cost=requested,
                maxCost=MAX_QUERY_COST)], requested)
        if not state.take_points(requested):
            state.throttled += 1
            return _errors([_error("Throttled", "THROTTLED")], requested)
        try:
            data, actual = handler(version, document, variables)
        except _Refusal as refusal:
            state.refund_points(requested)
            return _errors([refusal.error], requested)
        state.refund_points(max(requested - actual, 0))
        return _answer({"data": data}, requested, actual)

    def _answer(body: Body, requested: int, actual: int | None) -> JSONResponse:
        body["extensions"] = {"cost": {"requestedQueryCost": requested,
                                       "actualQueryCost": actual,
                                       "throttleStatus": state.throttle_status()}}
        return JSONResponse(body)

    def _errors(errors: list[Body], requested: int) -> JSONResponse:
        # GraphQL errors travel with HTTP 200; THROTTLED too (its cost says when to retry).
        return _answer({"errors": errors}, requested, None)

    def _operation(document: str) -> tuple[Handler, Pricing] | None:
        if "inventorySetQuantities" in document:
            return set_quantities, lambda _variables: MUTATION_COST
        if re.search(r"\bnodes\s*\(", document):
            return read_levels, _nodes_cost
        if re.search(r"\binventoryItems\s*\(", document):
            return find_items, _find_cost
        return None

    def set_quantities(version: str, document: str, variables: Body) -> tuple[Body, int]:
        given = variables.get("input")
        if not isinstance(given, dict) or not isinstance(given.get("quantities"), list):
            raise _Refusal(_error("Variable $input of type InventorySetQuantitiesInput! was "
                                  "provided invalid value", "INVALID_VARIABLE"))
        quantities: list[Any] = given["quantities"]
        _check_size("quantities", len(quantities))
        strict = at_least(version, STRICT_SINCE)
        legacy = [f for f in ("compareQuantity", "ignoreCompareQuantity")
                  if f in given or any(isinstance(q, dict) and f in q for q in quantities)]
        if strict and legacy:
            raise _Refusal(_error(f"{legacy[0]} is not defined on the input as of "
                                  f"{STRICT_SINCE}", "INVALID_VARIABLE"))
        if not at_least(version, CHANGE_FROM_SINCE) and any(
                isinstance(q, dict) and "changeFromQuantity" in q for q in quantities):
            raise _Refusal(_error("Field is not defined on InventoryQuantityInput: "
                                  "changeFromQuantity", "INVALID_VARIABLE"))
        key = _idempotency_key(document, variables)
        if strict and key is None:
            raise _Refusal(_error("The @idempotent directive is required for "
                                  f"inventorySetQuantities as of {STRICT_SINCE}",
                                  "BAD_REQUEST"))
        fingerprint = json.dumps(given, sort_keys=True)
        if key is not None and key in replays:
            first_input, first_payload = replays[key]
            if first_input != fingerprint:
                return _payload([_user_error(
                    "IDEMPOTENCY_KEY_PARAMETER_MISMATCH", None,
                    "The same idempotency key cannot be used with different operation "
                    "parameters.")]), MUTATION_COST
            if first_payload["inventorySetQuantities"]["userErrors"]:
                return _payload([_user_error(
                    "IDEMPOTENCY_PREVIOUS_ATTEMPT_FAILED", None,
                    "A previous request with this idempotency key failed. Retry with a new "
                    "idempotency key.")]), MUTATION_COST
            state.replayed += 1
            return first_payload, MUTATION_COST
        payload = _apply(given, quantities, strict)
        if key is not None:
            replays[key] = (fingerprint, payload)
        return payload, MUTATION_COST

    def _apply(given: Body, quantities: list[Any], strict: bool) -> Body:
        """Validate every quantity, then compare every one, then write them all: one refused
        quantity refuses the call (the docs: the mutation "fails" with the error)."""
        errors = []
        if given.get("name") != "available":
            errors.append(_user_error("INVALID_NAME", ["input", "name"],
                                      "The simulator sets the 'available' quantity only."))
        if given.get("reason") not in REASONS:
            errors.append(_user_error("INVALID_REASON", ["input", "reason"],
                                      "The specified reason is invalid."))
        targets: list[tuple[int, tuple[str, str], int, Any]] = []
        seen: set[tuple[str, str]] = set()
        for i, q in enumerate(quantities):
            path = ["input", "quantities", str(i)]
            q = q if isinstance(q, dict) else {}
            item = _gid_id(q.get("inventoryItemId"), "InventoryItem")
            location = _gid_id(q.get("locationId"), "Location")
            value = q.get("quantity")
            if item is None or not state.knows(item):
                errors.append(_user_error("INVALID_INVENTORY_ITEM", [*path, "inventoryItemId"],
                                          "The specified inventory item could not be found."))
                continue
            if location is None or (state.known_locations is not None
                                    and location not in state.known_locations):
                errors.append(_user_error("INVALID_LOCATION", [*path, "locationId"],
                                          "The specified location could not be found."))
                continue
            if not isinstance(value, int) or isinstance(value, bool):
                errors.append(_user_error(None, [*path, "quantity"], "quantity is required"))
                continue
            if value > QUANTITY_BOUND:
                errors.append(_user_error("INVALID_QUANTITY_TOO_HIGH", [*path, "quantity"],
                                          "The total quantity can't be higher than "
                                          "1,000,000,000."))
                continue
            if value < -QUANTITY_BOUND:
                errors.append(_user_error("INVALID_QUANTITY_TOO_LOW", [*path, "quantity"],
                                          "The total quantity can't be lower than "
                                          "-1,000,000,000."))
                continue
            target = (state.key(item), state.location_key(location))
            if target in seen:
                errors.append(_user_error(
                    "NO_DUPLICATE_INVENTORY_ITEM_ID_GROUP_ID_PAIR", path,
                    "The combination of inventoryItemId and locationId must be unique."))
                continue
            seen.add(target)
            compare = _compare(q, given, path, strict, errors)
            targets.append((i, target, value, compare))
        with state.counts_lock:
            if not errors:
                for i, target, _value, compare in targets:
                    if compare is _NO_COMPARE:
                        continue
                    # A level never set is shown as 0 (the simulator stocks items anywhere).
                    if state.counts.get(target, 0) != compare:
                        state.stale += 1
                        errors.append(_user_error(
                            "CHANGE_FROM_QUANTITY_STALE",
                            ["input", "quantities", str(i), "changeFromQuantity"],
                            "The changeFromQuantity value does not match persisted value."))
            if errors:
                return _payload(errors)
            for _i, target, value, compare in targets:
                state.store(*target, value, blind=compare is _NO_COMPARE)
            state.writes += 1
        return _payload([], {
            "id": f"gid://shopify/InventoryAdjustmentGroup/{next(groups)}",
            "createdAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "reason": given.get("reason"),
            "referenceDocumentUri": given.get("referenceDocumentUri")})

    def _compare(q: Body, given: Body, path: list[str], strict: bool,
                 errors: list[Body]) -> Any:
        """The count this quantity must find, or _NO_COMPARE."""
        if "changeFromQuantity" in q:
            return _NO_COMPARE if q["changeFromQuantity"] is None else q["changeFromQuantity"]
        if strict:
            # The docs say only that omitting it "returns an error"; no code is documented.
            errors.append(_user_error(
                None, [*path, "changeFromQuantity"],
                f"changeFromQuantity is required as of {STRICT_SINCE}: pass the quantity "
                "you expect, or null to skip the check."))
            return _NO_COMPARE
        if given.get("ignoreCompareQuantity") is True:
            return _NO_COMPARE
        if "compareQuantity" in q:
            return q["compareQuantity"]
        errors.append(_user_error(
            "COMPARE_QUANTITY_REQUIRED", [*path, "compareQuantity"],
            "The compareQuantity argument must be given to each quantity or ignored using "
            "ignoreCompareQuantity."))
        return _NO_COMPARE

    def read_levels(_version: str, _document: str, variables: Body) -> tuple[Body, int]:
        location = _gid_id(variables.get("locationId"), "Location")
        nodes: list[Body | None] = []
        actual = 0
        for gid in variables["ids"]:
            item = _gid_id(gid, "InventoryItem")
            if item is None or not state.knows(item):
                nodes.append(None)
                continue
            level = None
            if location is not None:
                shown = state.counts.get((state.key(item), state.location_key(location)))
                if shown is not None:
                    level = {"quantities": [{"name": "available", "quantity": shown}]}
            nodes.append({"id": gid, "tracked": True, "inventoryLevel": level})
            actual += 3 if level else 2
        return {"nodes": nodes}, actual

    def find_items(_version: str, _document: str, variables: Body) -> tuple[Body, int]:
        first = int(variables.get("first") or 0)
        terms = parse_search(str(variables.get("query") or ""))
        catalogue = [(sku, item) for sku, item in state.sku_items.items()]
        catalogue += [(sku, item) for sku, items in state.shared_skus.items() for item in items]
        if state.mint_unknown_skus and terms:
            named = {value for group in terms for field, value in group if field == "sku"}
            for sku in sorted(named - {sku for sku, _ in catalogue}):
                catalogue.append((sku, state.mint(sku)))
        hits = [(sku, item) for sku, item in catalogue
                if terms and any(all(_matches(field, value, sku, item)
                                     for field, value in group) for group in terms)]
        nodes = [{"id": f"gid://shopify/InventoryItem/{item}", "sku": sku}
                 for sku, item in hits[:first]]
        return ({"inventoryItems": {"nodes": nodes,
                                    "pageInfo": {"hasNextPage": len(hits) > first}}},
                2 + len(nodes))

    return [Route("/admin/api/{version}/graphql.json", recorded(state, graphql),
                  methods=["POST"])]


Handler = Callable[[str, str, Body], tuple[Body, int]]
Pricing = Callable[[Body], int]
_NO_COMPARE = object()


class _Refusal(Exception):
    """A top-level GraphQL error: the operation did not run."""

    def __init__(self, error: Body) -> None:
        super().__init__(error["message"])
        self.error = error


def _error(message: str, code: str, **extra: Any) -> Body:
    extensions: Body = {"code": code, **extra}
    if code in ("THROTTLED", "MAX_COST_EXCEEDED"):
        extensions["documentation"] = RATE_LIMITS_DOC
    return {"message": message, "extensions": extensions}


def _user_error(code: str | None, field: list[str] | None, message: str) -> Body:
    return {"code": code, "field": field, "message": message}


def _payload(user_errors: list[Body], group: Body | None = None) -> Body:
    return {"inventorySetQuantities": {"inventoryAdjustmentGroup": None if user_errors else group,
                                       "userErrors": user_errors}}


def _check_size(name: str, size: int) -> None:
    if size > MAX_INPUT:
        raise _Refusal(_error(f"The input array size of {size} is greater than the maximum "
                              f"allowed of {MAX_INPUT}.", "MAX_INPUT_SIZE_EXCEEDED",
                              argument=name))


def _nodes_cost(variables: Body) -> int:
    ids = variables.get("ids")
    if not isinstance(ids, list):
        raise _Refusal(_error("Variable $ids of type [ID!]! was provided invalid value",
                              "INVALID_VARIABLE"))
    _check_size("ids", len(ids))
    # Per id: the item, its inventoryLevel and the one quantity asked for (objects, 1 each).
    return max(3 * len(ids), 1)


def _find_cost(variables: Body) -> int:
    first = variables.get("first")
    if not isinstance(first, int) or not 0 < first <= MAX_INPUT:
        raise _Refusal(_error(f"first must be between 1 and {MAX_INPUT}", "BAD_REQUEST"))
    return 2 + first


def _idempotency_key(document: str, variables: Body) -> str | None:
    found = _IDEMPOTENT.search(document)
    if found is None:
        return None
    if found.group(2) is not None:
        value = variables.get(found.group(2))
        return value if isinstance(value, str) and value else None
    return json.loads(f'"{found.group(1)}"') or None


def _gid_id(value: object, kind: str) -> str | None:
    """The id inside `gid://shopify/<kind>/<id>`, else None."""
    found = _GID.match(value) if isinstance(value, str) else None
    return found.group(2) if found and found.group(1) == kind else None


def _matches(field: str | None, value: str, sku: str, item: str) -> bool:
    if field in (None, "sku"):
        return sku == value
    if field == "id":
        return item == value
    return False


def parse_search(query: str) -> list[list[tuple[str | None, str]]]:
    """Shopify's search syntax, as much as SKU lookups use: terms `field:value` (a value bare
    or quoted in '…' or "…", a backslash escaping the next character), joined by whitespace or
    AND, groups of them joined by OR. Returns the OR-groups of (field, value) terms; [] for a
    query it cannot read (which then matches nothing).
    https://shopify.dev/docs/api/usage/search-syntax"""
    groups: list[list[tuple[str | None, str]]] = [[]]
    i, n = 0, len(query)
    while i < n:
        if query[i].isspace():
            i += 1
            continue
        field: str | None = None
        name = re.match(r"[A-Za-z_][\w.]*:", query[i:])
        if name:
            field = name.group(0)[:-1]
            i += len(name.group(0))
        value, i = _value(query, i)
        if value is None:
            return []
        if field is None and value in ("OR", "AND"):
            if value == "OR":
                groups.append([])
            continue
        groups[-1].append((field, value))
    return [group for group in groups if group] if all(groups) else []


def _value(query: str, i: int) -> tuple[str | None, int]:
    """One value from `i`: its text and where the next term starts; None if unreadable."""
    out: list[str] = []
    quote = query[i] if i < len(query) and query[i] in "'\"" else ""
    i += 1 if quote else 0
    while i < len(query):
        ch = query[i]
        if ch == "\\":
            if i + 1 >= len(query):
                return None, i
            out.append(query[i + 1])
            i += 2
            continue
        if quote and ch == quote:
            return "".join(out), i + 1
        if not quote and ch.isspace():
            break
        if not quote and ch in "()":
            return None, i  # grouping is not simulated
        out.append(ch)
        i += 1
    if quote:
        return None, i  # unterminated quote
    return "".join(out), i
