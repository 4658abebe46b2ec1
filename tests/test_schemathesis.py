"""schemathesis against the gateway's own /openapi.json, in process over ASGI: every operation,
with requests that fit the document (positive) and requests that break it (negative), sent
with an operator key. No response may be a server error, and every response must be one the
document declares: its status code, its content type and its body, validated against the
reply's schema, so the document cannot drift from the app.

Webhook cases are signed, round-robin, as each test channel's scheme wants (shop, woo, bc,
std) over the exact bytes sent, with every fifth left as generated (unsigned): so the 2xx
replies of the webhook route are validated too, not only its 401s.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import redis
import schemathesis
from gateway_support import OPERATOR, bearer, gateway_settings
from hostile_support import sign
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.applications import Starlette

from gateway.app import create_app
from stockgate.deliveries import FailedDelivery
from stockgate.embedded import EmbeddedRedis
from stockgate.keys import worker_keys
from stockgate.settings import Settings

EXAMPLES = 60  # per operation and mode: 15 operations positive, 12 negative:
#                1,620 cases
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
NOTHING_TO_BREAK = {"/healthz", "/readyz", "/metrics"}
client: Any = None  # a client to the app under test, for set-up calls between cases
parked: Any = None  # a Redis client, to park failed deliveries for the retry route
cases: Counter[str] = Counter()
statuses: Counter[str] = Counter()
# The test config's channels (gateway_support), each with a topic its kind reads.
SIGNED = [("shop", "shopify", "X-Shopify-Topic", ["orders/create", "orders/cancelled",
                                                   "fulfillments/create", "refunds/create",
                                                   "inventory_levels/update"]),
          ("woo", "woocommerce", "X-WC-Webhook-Topic", ["order.created", "order.updated"]),
          ("bc", "bigcommerce", None, []), ("std", "standard", None, []), None]


@pytest.fixture(scope="module")
def app(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Starlette]:
    # No Redis client passed in: schemathesis runs the app (and its lifespan, which opens the
    # client) on an event loop of its own.
    data_dir = tmp_path_factory.mktemp("schemathesis")
    application = create_app(gateway_settings(Settings(data_dir=str(data_dir),
                                                       redis_url=redis_server.url)))
    global client, parked
    parked = redis.Redis.from_url(redis_server.url)
    with asgi.get_client(application) as client:
        client.post("/v1/stock/SKU-1/adjust", headers=bearer(OPERATOR), json={
            "delta": 100_000, "reason": "receipt", "idempotency_key": "st-seed"}
        ).raise_for_status()
        yield application
    asgi.shutdown_lifespans()
    parked.close()


def _steer(case: schemathesis.Case) -> None:
    """Points every other positive case at stock that exists (SKU-1 at main, a live hold), so
    that the success replies are validated too and not only the 404s of random names."""
    params = case.path_parameters or {}
    if "sku" in params:
        params["sku"] = "SKU-1"
        if "channel_id" in params:  # an allocation rule: a channel of the key's tenant
            params["channel_id"] = "shop"
    if "delivery_id" in params:
        # A push the workers parked as failed, so that the retry answers its 202.
        parked.hset(worker_keys("acme").failed, params["delivery_id"], msgspec.json.encode(
            FailedDelivery(id=params["delivery_id"], tenant="acme", channel="shop",
                           sku="SKU-1", location="main", attempts=5, last_error="timeout",
                           failed_at=1)))
    if "hold_id" in params:
        client.post("/v1/holds", headers=bearer(OPERATOR), json={
            "hold_id": params["hold_id"], "lines": [{"sku": "SKU-1", "qty": 1}]})
    body = case.body
    if isinstance(body, dict):
        body.pop("location", None)
        for line in body.get("lines", []) if isinstance(body.get("lines"), list) else []:
            if isinstance(line, dict) and "sku" in line:
                line["sku"] = "SKU-1"
                line.pop("location", None)
                if isinstance(line.get("qty"), int):
                    line["qty"] = min(line["qty"], 3)


def _operations(app: Starlette) -> list[Any]:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    return [result.ok() for result in schema.get_all_operations()]


def _exercise(operation: Any, mode: GenerationMode) -> int:
    """Sends EXAMPLES generated cases of one operation; returns how many were sent."""
    sent = 0

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def call(case: schemathesis.Case) -> None:
        nonlocal sent
        extra: dict[str, Any] = {}
        headers = bearer(OPERATOR)
        signing = SIGNED[sent % len(SIGNED)]
        if mode is GenerationMode.POSITIVE and sent % 2 == 0:
            _steer(case)
        if operation.path == "/webhooks/{channel_id}" and signing is not None and \
                isinstance(case.body, dict | list):
            channel, kind, topic_header, topics = signing
            case.path_parameters = {"channel_id": channel}
            raw = json.dumps(case.body).encode()
            extra["data"] = raw  # sent as is: the signature covers these exact bytes
            headers = {**headers, "Content-Type": "application/json",
                       **sign(kind, raw, f"st-{mode.value}-{sent}", str(int(time.time())))}
            if topic_header:
                headers[topic_header] = topics[sent % len(topics)]
        response = case.call_and_validate(headers=headers, checks=CHECKS, **extra)
        statuses[f"{operation.label} {response.status_code}"] += 1
        sent += 1

    call()
    return sent


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_openapi_document_holds_for_every_operation(app: Starlette, mode: GenerationMode
                                                    ) -> None:
    operations = _operations(app)
    assert len(operations) >= 15
    if mode is GenerationMode.NEGATIVE:
        # Nothing in a request to /healthz, /readyz or /metrics can break the document.
        operations = [op for op in operations if op.path not in NOTHING_TO_BREAK]
    for operation in operations:
        cases[f"{mode.value} {operation.label}"] = _exercise(operation, mode)
    # Hypothesis stops early when it runs out of distinct inputs: still a real workout.
    assert sum(cases[f"{mode.value} {op.label}"] for op in operations) >= \
        len(operations) * EXAMPLES // 2, cases


def test_replies_with_bodies_were_validated() -> None:
    """Body validation is worth only the 2xx bodies it saw: every route answered 2xx at least
    once (the webhook route applied signed deliveries, not only refused unsigned ones)."""
    if len(cases) < 2:
        pytest.skip("run with both modes of test_openapi_document_holds_for_every_operation")
    print(dict(sorted(statuses.items())))
    ok = {label.rsplit(" ", 1)[0] for label in statuses if label.endswith((" 200", " 201",
                                                                           " 202"))}
    assert {"POST /v1/holds", "POST /v1/holds/{hold_id}/commit", "DELETE /v1/holds/{hold_id}",
            "GET /v1/stock/{sku}", "POST /v1/stock/{sku}/adjust", "PUT /v1/stock/{sku}/policy",
            "POST /v1/stock/bulk", "GET /v1/events", "GET /v1/alerts", "GET /v1/deliveries",
            "POST /v1/deliveries/{delivery_id}/retry", "POST /webhooks/{channel_id}",
            "PUT /v1/stock/{sku}/channels/{channel_id}",
            "DELETE /v1/stock/{sku}/channels/{channel_id}"} <= ok, \
        statuses
